from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import pytest

HERE = str(pathlib.Path(__file__).resolve().parent)
if HERE not in sys.path:  # the shared fake master module, whatever pytest's import mode
    sys.path.insert(0, HERE)

from fake_master_dsdk import FakeMaster, running_fake_master  # noqa: E402


@pytest.fixture
def fake_master() -> Iterator[tuple[FakeMaster, str]]:
    with running_fake_master() as (fake, address):
        yield fake, address


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """No test sees the developer's DOMAINOS_MASTER or ~/.domainos."""
    monkeypatch.delenv("DOMAINOS_MASTER", raising=False)
    monkeypatch.setenv("DOMAINOS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOMAINOS_INSECURE", "1")  # the fake master is plaintext; TLS: tests/security
