"""Processes of the local federation: liveness (pid + start time), log tails, and stopping.

A component record is a mapping with ``pid``, ``create_time`` and ``kind`` (as in ``cluster.json``);
a recorded pid only counts as alive while its start time matches, so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

LOG_TAIL_LINES = 20
_POLL_S = 0.05


def log_tail(path: str | os.PathLike[str], lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - 64 * 1024, 0))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def process_start_time(pid: int) -> float:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def is_alive(pid: int, create_time: float = 0.0) -> bool:
    """True when ``pid`` runs and is the process we started (same start time), not a zombie."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time and abs(proc.create_time() - create_time) > 1.0:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _handle(record: Mapping[str, Any]) -> Any:
    """A psutil handle for a recorded component, or None if it is gone (or the pid was reused)."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    pid = int(record.get("pid") or 0)
    if not is_alive(pid, float(record.get("create_time") or 0.0)):
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _kill_group(proc: Any, sig: int) -> None:
    """Signal ``proc``'s process group when it leads one (daemons and tasks do), else the process."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError, psutil.Error):
        pass


def _running(proc: Any) -> bool:
    """Still there and not a zombie (a zombie has exited; its reaper may be slow)."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _wait_gone(procs: Sequence[Any], timeout: float) -> list[Any]:
    """Poll until every process has exited or ``timeout`` passes; returns those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        left = [p for p in left if _running(p)]
    return left


def stop_components(
    components: Sequence[Mapping[str, Any]], timeout: float, *, say: Callable[[str], None] = lambda _m: None
) -> tuple[int, int]:
    """SIGTERM agents, then sub-domains, then the master; SIGKILL what outlives ``timeout``.

    Processes the components started (tasks) that are still there afterwards are stopped too
    (SIGTERM, then SIGKILL). Returns (components stopped, components killed).
    """
    import psutil  # type: ignore[import-untyped,unused-ignore]

    stopped = killed = 0
    for kind in ("agent", "subdomain", "master"):
        handles = [h for c in components if c.get("kind") == kind and (h := _handle(c)) is not None]
        if not handles:
            continue
        descendants: list[Any] = []
        for h in handles:
            with contextlib.suppress(psutil.Error):
                descendants.extend(h.children(recursive=True))
        for h in handles:
            with contextlib.suppress(psutil.Error):
                h.send_signal(signal.SIGTERM)
        left = _wait_gone(handles, timeout)
        for h in left:
            say(f"{kind} pid {h.pid} did not stop within {timeout:g}s: killing it")
            _kill_group(h, signal.SIGKILL)
        _wait_gone(left, 5.0)
        stopped += len(handles)
        killed += len(left)
        strays = [d for d in descendants if _running(d)]
        for d in strays:
            _kill_group(d, signal.SIGTERM)
        for d in _wait_gone(strays, 2.0):
            _kill_group(d, signal.SIGKILL)
    return stopped, killed
