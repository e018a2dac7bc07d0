"""Fixtures for the store conformance suite.

``store`` runs each test on SQLite (a file under ``tmp_path``) and on a real etcd (the session's
``etcd_server`` from ``tests/conftest.py``), emptied before and after every test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domainos.store import EtcdStore, SQLiteStore, Store


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which backend the test runs on."""
    name: str = request.param
    return name


@pytest.fixture
def make_store(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Open another client of the same backend data (same file, same etcd)."""
    opened: list[Store] = []

    def make() -> Store:
        store: Store
        if backend == "sqlite":
            store = SQLiteStore(tmp_path / "store.db")
        else:
            store = EtcdStore(request.getfixturevalue("etcd_server"))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(request: pytest.FixtureRequest, backend: str, make_store: Callable[[], Store]) -> Iterator[Store]:
    """An empty store of each backend."""
    if backend == "etcd":
        endpoint = request.getfixturevalue("etcd_server")
        with EtcdStore(endpoint) as cleaner:
            cleaner.delete_prefix("")
    yield make_store()
    if backend == "etcd":
        with EtcdStore(endpoint) as cleaner:
            cleaner.delete_prefix("")
