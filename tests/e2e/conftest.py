"""Fixtures of the process tier."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def shared_dir() -> Iterator[pathlib.Path]:
    """A directory tasks can write: agents running as root run tasks as ``nobody``, which cannot
    enter pytest's tmp_path (under a 0700 directory of root's)."""
    path = pathlib.Path(
        tempfile.mkdtemp(prefix="domainos-e2e-", dir="/tmp" if os.path.isdir("/tmp") else None)
    )
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
