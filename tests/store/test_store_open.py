"""``open_store`` URL handling."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from domainos.errors import ConfigError
from domainos.store import EtcdStore, SQLiteStore, StoreUnavailable, open_store

pytestmark = [pytest.mark.store, pytest.mark.timeout(60)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_memory_url() -> None:
    with open_store("memory://") as store:
        assert isinstance(store, SQLiteStore)
        store.put("k", b"v")
        kv = store.get("k")
        assert kv is not None and kv.value == b"v"


def test_sqlite_absolute_url(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    with open_store(f"sqlite://{path}") as store:  # tmp_path is absolute: sqlite:///tmp/...
        store.put("k", b"v")
    assert path.exists()
    with open_store(f"sqlite://{path}") as store:
        assert store.get("k") is not None


def test_sqlite_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:rel.db") as store:
        store.put("k", b"v")
    assert (tmp_path / "rel.db").exists()


def test_etcd_url_uses_the_first_reachable_endpoint(etcd_server: str) -> None:
    with open_store(f"etcd://{etcd_server}") as store:
        assert isinstance(store, EtcdStore)
        assert store.revision() >= 1
    with open_store(f"etcd://127.0.0.1:{closed_port()},{etcd_server}") as store:
        assert store.revision() >= 1


def test_unreachable_etcd_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable) as exc:
        open_store(f"etcd://127.0.0.1:{closed_port()}")
    assert exc.value.code == "UNAVAILABLE"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "nonsense",
        "postgres://db:5432/x",
        "sqlite://relative.db",
        "sqlite:",
        "sqlite:///",
        "memory://somewhere",
        "etcd://",
        "etcd:host:2379",
        "etcd://host:notaport",
        "etcd://host:2379/path",
        "etcd://host:1,,host:2",
    ],
)
def test_bad_urls_name_the_allowed_schemes(url: str) -> None:
    with pytest.raises(ConfigError) as exc:
        open_store(url)
    message = str(exc.value)
    for scheme in ("sqlite:///", "sqlite:", "memory://", "etcd://"):
        assert scheme in message
    assert exc.value.code == "INVALID_ARGUMENT"
