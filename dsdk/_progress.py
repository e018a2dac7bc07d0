"""A progress bar of a job's tasks, for ``Client.wait(progress=True)``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ._types import Job

_DONE = ("SUCCEEDED", "FAILED", "CANCELLED", "LOST")


def bar_text(job: Job, width: int = 30) -> str:
    """``job j-… [#########-----] 3/8 done RUNNING (2 running, 3 pending)``."""
    counts = job.task_counts()
    total = max(job.replicas, len(job.tasks), 1)
    done = sum(n for s, n in counts.items() if s in _DONE)
    filled = int(width * done / total)
    rest = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()) if s != "SUCCEEDED")
    return (
        f"job {job.job_id} [{'#' * filled}{'-' * (width - filled)}] {done}/{total} done {job.state.value}"
        + (f" ({rest})" if rest else "")
    )


class ProgressBar:
    """Redrawn in place on a terminal; one line per change elsewhere (logs stay readable)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = ""
        self._last_bar = ""
        self._started = time.monotonic()

    def update(self, job: Job) -> None:
        bar = bar_text(job)
        text = f"{bar} {time.monotonic() - self._started:.1f}s"
        if self.tty:
            self.stream.write("\r" + text.ljust(len(self._last)))
        elif bar != self._last_bar:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last, self._last_bar = text, bar

    def close(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()
