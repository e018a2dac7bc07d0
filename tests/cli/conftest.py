from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

HERE = pathlib.Path(__file__).resolve().parent
for path in (HERE.parent / "dsdk", HERE):  # the shared fake master and the fake daemon
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fake_master_dsdk import FakeMaster, running_fake_master  # noqa: E402

import dsdk  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    """No test sees the developer's DOMAINOS_MASTER or ~/.domainos."""
    home = tmp_path / "home"
    monkeypatch.delenv("DOMAINOS_MASTER", raising=False)
    monkeypatch.setenv("DOMAINOS_HOME", str(home))
    return home


@pytest.fixture
def fake_master(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeMaster, str]]:
    """A fake master; the CLI's clients get a no-op sleep so --wait polls without pausing."""
    real = dsdk.connect

    def fast_connect(address: str | None = None, **kw: Any) -> dsdk.Client:
        kw.setdefault("sleep", lambda _s: None)
        return real(address, **kw)

    monkeypatch.setattr(dsdk, "connect", fast_connect)
    with running_fake_master() as (fake, address):
        monkeypatch.setenv("DOMAINOS_MASTER", address)
        monkeypatch.setenv("DOMAINOS_INSECURE", "1")  # the fake master is plaintext
        yield fake, address


@pytest.fixture
def fake_daemons(monkeypatch: pytest.MonkeyPatch) -> None:
    """`domainctl up` starts tests/cli/fake_daemon_cli.py instead of the real daemons."""
    from domainctl import _local

    monkeypatch.setattr(_local, "MODULES", {k: "fake_daemon_cli" for k in _local.MODULES})
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    )
