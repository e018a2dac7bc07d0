"""Helpers shared by the process-tier tests that drive a real ``domainctl up`` federation (tests/e2e,
and tests/deploy and tests/cli, which import this module by path): polling, and ``domainctl`` run as
a subprocess of this checkout in a private ``DOMAINOS_HOME``."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]


def wait_for(cond: Any, timeout: float, what: str = "", interval: float = 0.1) -> Any:
    """Poll ``cond`` until it is truthy (returns its value); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or cond}")
        time.sleep(interval)


def domainctl_env(home: pathlib.Path, *unset: str) -> dict[str, str]:
    """The environment of ``domainctl`` run on this checkout with ``home`` as its DOMAINOS_HOME: the
    caller's, less DOMAINOS_MASTER (so the home's federation is the one used) and ``unset``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DOMAINOS_HOME": str(home)}
    for name in ("DOMAINOS_MASTER", *unset):
        env.pop(name, None)
    return env


def run_domainctl(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m domainctl ARGS`` from the checkout's root, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "domainctl", *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT),
    )  # fmt: skip
