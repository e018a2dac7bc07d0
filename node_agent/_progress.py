"""Read what a task says about its progress (``dsdk.report_progress`` / checkpoints).

The task writes ``<task dir>/progress.json`` (``$DOMAINOS_PROGRESS_FILE``); the agent reads it
when it samples the node: one ``stat`` per running task, and a read only when the file changed.
A file the task mangled is ignored (the task's progress is advisory, never trusted for more).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from domainos.model import TaskProgress

#: The file name in the task's directory.
PROGRESS_FILE = "progress.json"
#: A bigger file is not a progress report.
MAX_BYTES = 4096
#: Larger steps are refused (they must fit the proto's int64 and make sense).
MAX_STEP = 2**62


def _count(data: dict[str, object], key: str, lo: int) -> int:
    value = data.get(key, lo)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= MAX_STEP:
        raise ValueError(f"{key}: {value!r:.40}")
    return value


def _time(data: dict[str, object], key: str) -> float:
    value = data.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}: {value!r:.40}")
    return float(value)


def parse(text: bytes) -> TaskProgress:
    """ValueError when it is not a well-formed report."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return TaskProgress(
        step=_count(data, "step", 0),
        total_steps=_count(data, "total_steps", 0),
        step_at=_time(data, "step_at"),
        checkpoint_step=_count(data, "checkpoint_step", -1),
        checkpoint_at=_time(data, "checkpoint_at"),
    )


class ProgressFile:
    """One task's file; :meth:`poll` returns a new :class:`TaskProgress` when it changed.

    The file lives in the task's home, which the task owns: it is opened without following a
    symbolic link, must be a regular file of the home's owner (not a hard link to someone else's
    file) and at most :data:`MAX_BYTES`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._owner: int | None = None
        self.last: TaskProgress | None = None

    def poll(self) -> TaskProgress | None:
        try:
            st = os.lstat(self.path)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return None
        self._seen = key
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            return None
        try:
            if self._owner is None:
                self._owner = os.stat(self.path.parent).st_uid
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != self._owner or st.st_nlink != 1:
                    return None
                progress = parse(os.read(fd, MAX_BYTES + 1))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            return None
        if progress == self.last:
            return None
        self.last = progress
        return progress
