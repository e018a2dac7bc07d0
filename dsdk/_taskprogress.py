"""A task tells the control plane how far it got: its step and its last checkpoint.

The task writes a small JSON file (``$DOMAINOS_PROGRESS_FILE``, set by the node agent); the agent
reads it when it samples the node and sends what changed up with the task's status, no RPC from
the task and nothing on the task's hot path but a rename every ``min_interval_s``. The master
uses it to spot stragglers in a gang (:func:`report_progress`) and to count the work a failure
loses (since the last checkpoint, :func:`note_checkpoint`, which
:class:`dsdk.checkpoint.Checkpointer` calls on every save).

Outside a task (no ``$DOMAINOS_PROGRESS_FILE``) both are no-ops.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time

from .errors import InvalidArgument

#: Environment variable naming the file (the node agent sets it for every task).
PROGRESS_ENV = "DOMAINOS_PROGRESS_FILE"
#: Steps are written at most this often (the agent samples every few seconds anyway).
MIN_INTERVAL_S = 1.0

_lock = threading.Lock()
_state: dict[str, float] = {
    "step": 0,
    "total_steps": 0,
    "step_at": 0.0,
    "checkpoint_step": -1,
    "checkpoint_at": 0.0,
}
_last_write = 0.0


def _check_step(value: object, fld: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"must be a whole number >= 0, got {value!r:.80}", field=fld)
    return value


def _write(path: str) -> None:
    global _last_write
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_state, f)
    os.replace(tmp, path)
    _last_write = time.monotonic()


def report_progress(step: int, total: int = 0, *, force: bool = False) -> bool:
    """This task reached ``step`` (of ``total``, 0 = unknown). Written at most every
    :data:`MIN_INTERVAL_S` unless ``force``; True when it was written now."""
    _check_step(step, "step")
    _check_step(total, "total")
    path = os.environ.get(PROGRESS_ENV)
    with _lock:
        _state["step"], _state["total_steps"], _state["step_at"] = step, total, time.time()
        if not path or (not force and time.monotonic() - _last_write < MIN_INTERVAL_S):
            return False
        try:
            _write(path)
        except OSError:
            return False  # progress is advisory: never fail the task for it
        return True


def note_checkpoint(step: int, saved_at: float | None = None) -> None:
    """A checkpoint of ``step`` was committed (at ``saved_at``, unix seconds): written at once."""
    _check_step(step, "step")
    at = time.time() if saved_at is None else float(saved_at)
    if not math.isfinite(at) or at < 0:
        raise InvalidArgument(f"must be a time in unix seconds, got {saved_at!r}", field="saved_at")
    path = os.environ.get(PROGRESS_ENV)
    with _lock:
        _state["checkpoint_step"], _state["checkpoint_at"] = step, at
        if path:
            with contextlib.suppress(OSError):
                _write(path)
