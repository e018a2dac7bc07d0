"""Task checkpoints: a task saves its state; a rescheduled attempt of the task starts from it.

Layout: ``<root>/<job_id>/<task>/<name>/<step>/`` holding the state as a dataset shard does
(:mod:`dsdk._shards`: ``object.pkl``, pickle protocol 5, plus one ``buffer-<i>`` file per large
buffer, read back memory-mapped and read-only) and a commit marker, ``checkpoint.json`` (step,
time, attempt, the size of every file). The key is the job and the task index, not the attempt,
so attempt N+1 of a task finds what attempt N saved.

Crash safety, in order: the files are written into a temporary directory and renamed into place
(``_shards.write_shard*``), flushed to disk (``fsync``: files, then directories), and only then is
the marker written (temporary file, ``fsync``, rename). A step without its marker, or whose files
do not have the sizes the marker gives, is never returned; older checkpoints beyond ``keep`` are
removed only after the new one is committed, so a crash at any point leaves the previous one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pickle
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from domainos.clock import Clock, SystemClock

from . import _shards
from ._context import context
from ._taskprogress import note_checkpoint
from .errors import (
    DomainOSError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)

#: Environment variable naming the checkpoint root (the node agent sets it for every task).
ROOT_ENV = "DOMAINOS_CHECKPOINT_DIR"
#: The commit marker: a step directory without it is not a checkpoint.
MARKER = "checkpoint.json"
_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint.

    ``state`` is the object given to :meth:`Checkpointer.save`; its numpy arrays (and other
    out-of-band buffers) are mapped from the checkpoint's files, read-only. ``saved_at`` is the
    wall-clock time of the save (seconds since the epoch), ``attempt`` the task attempt that
    saved it (``DOMAINOS_TASK_ATTEMPT``), ``path`` its directory.
    """

    step: int
    state: Any
    saved_at: float
    attempt: int
    path: str = ""


class _Corrupt(Exception):
    """A step directory that is not a complete checkpoint (internal: skipped by ``latest``)."""


def _check_int(value: Any, fld: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an int, got {type(value).__name__} {value!r:.80}", field=fld)
    if value < 0:
        raise InvalidArgument(f"{what} must be >= 0, got {value}", field=fld)
    return value


def _check_path_name(value: Any, fld: str, what: str) -> str:
    try:
        return _shards.check_dataset_name(value, fld)
    except InvalidArgument:
        raise InvalidArgument(
            f"{str(value)[:80]!r} is not a valid {what}: 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit",
            field=fld,
        ) from None


def _write_error(step: int, where: str, exc: OSError) -> DomainOSError:
    """An OSError while writing a checkpoint, as the DSDK's errors (one place)."""
    text = f"checkpoint step {step} could not be written to {where}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(text)
    return Unavailable(text)


def _fsync_path(path: str, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pickle(state: Any, *, copy: bool) -> tuple[bytes, list[Any]]:
    """The state's stored form: the pickle and its out-of-band buffers, *copied* when ``copy``
    (a snapshot: the caller may change the state as soon as this returns), else views of the
    state's own memory."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        header = pickle.dumps(state, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise InvalidArgument(
            f"the state cannot be pickled: {type(exc).__name__}: {exc}", field="state"
        ) from exc
    out: list[Any] = []
    for pb in buffers:
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: stored in logical order, as _shards does
            out.append(bytes(pb))
            continue
        out.append(bytes(raw) if copy else raw)
    return header, out


class Checkpointer:
    """Saves and finds the checkpoints of one task (inside a task: this job, this task index).

    >>> ck = Checkpointer()                                   # doctest: +SKIP
    >>> restored = ck.latest()                                # None, or the newest Checkpoint
    >>> start = restored.step + 1 if restored else 0
    >>> for step in range(start, steps):
    ...     state = train_step(state)
    ...     if step % 100 == 0:
    ...         ck.save_async(step, state)                    # copies now, writes in the background
    >>> ck.wait()

    ``root`` defaults to ``$DOMAINOS_CHECKPOINT_DIR`` (set by the node agent: a path on the node
    or on shared storage); ``job_id`` and ``task`` default to this task's (:func:`dsdk.context`):
    a rescheduled attempt of the task (same job, same index, a new ``DOMAINOS_TASK_ATTEMPT``)
    finds what the earlier attempts saved. Pass ``job_id=`` (any stable name) to keep
    checkpoints across resubmissions of a job. ``name`` tells apart several checkpoint series of
    one task; ``keep`` is how many complete checkpoints stay (older ones are removed once a new
    one is committed). ``fsync=False`` skips flushing to disk (faster; a crash of the *node* may
    then lose the newest checkpoints, never leave a half one visible).

    Steps go forward: a step must be greater than every step saved under this name. One
    background write is in flight at a time; an error of a background write is raised by the next
    :meth:`save`, :meth:`save_async` or :meth:`wait`. Thread-safe.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        job_id: str | None = None,
        task: int | None = None,
        name: str = "default",
        keep: int = 2,
        fsync: bool = True,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        if root is None:
            root = env.get(ROOT_ENV, "")
            if not root:
                raise FailedPrecondition(
                    f"no checkpoint directory: ${ROOT_ENV} is not set (the node agent sets it for "
                    f"tasks). Pass Checkpointer(root=...) or set {ROOT_ENV} to a directory on the "
                    "node or on shared storage"
                )
        attempt = 0
        if job_id is None or task is None:
            try:
                ctx = context(env)
            except FailedPrecondition as exc:
                raise FailedPrecondition(
                    f"{exc.message}; outside a task pass Checkpointer(job_id=..., task=...)"
                ) from None
            job_id = ctx.job_id if job_id is None else job_id
            task = ctx.task_index if task is None else task
            attempt = ctx.attempt
        else:
            with contextlib.suppress(ValueError):
                attempt = int(env.get("DOMAINOS_TASK_ATTEMPT", "0"))
        self.job_id = _check_path_name(job_id, "job_id", "job id for a checkpoint path")
        self.task = _check_int(task, "task", "the task index")
        self.name = _check_path_name(name, "name", "checkpoint name")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidArgument(f"keep must be an int >= 1, got {keep!r:.80}", field="keep")
        self.keep = keep
        self.attempt = attempt
        self.root = os.fspath(root)
        self._base = os.path.join(self.root, self.job_id, str(self.task))
        #: It is the running task's own (its saves go into the task's progress report).
        self._reports = env.get("DOMAINOS_JOB_ID") == self.job_id and env.get("DOMAINOS_TASK_INDEX") == str(
            self.task
        )
        self._fsync = fsync
        self._clock: Clock = clock or SystemClock()
        # _save_lock: one save/save_async at a time (a second caller waits its turn);
        # _lock: the fields the background writer changes.
        self._save_lock = threading.Lock()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._error: DomainOSError | None = None
        self._dirs_synced = False
        # Committed steps latest() found unusable: they neither block a lower step nor count as
        # kept, and the next save removes them.
        self._corrupt: set[int] = set()

    # -- where ---------------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """``<root>/<job_id>/<task>/<name>``: this series' step directories live here."""
        return os.path.join(self._base, self.name)

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    # -- reading -------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps with a commit marker, oldest first (not checked further: see :meth:`latest`)."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            int(n) for n in names if n.isdigit() and os.path.exists(os.path.join(self.directory, n, MARKER))
        )

    def latest(self) -> Checkpoint | None:
        """The checkpoint with the highest complete step, or None when there is none.

        A step whose files do not match its marker (truncated, missing, unreadable) is skipped
        with a warning in the log, and the next older one is tried.
        """
        for step in reversed(self.steps()):
            try:
                found = self._load(step)
            except _Corrupt as exc:
                log.warning("checkpoint %s is not usable (%s); trying an older one", self.step_dir(step), exc)
                with self._lock:
                    self._corrupt.add(step)
                continue
            return found
        return None

    def load(self, step: int) -> Checkpoint:
        """The checkpoint of ``step``: NotFound when there is none, Internal when it is corrupt."""
        _check_int(step, "step", "step")
        if not os.path.exists(os.path.join(self.step_dir(step), MARKER)):
            raise NotFound(f"no checkpoint of step {step} in {self.directory}", field="step")
        try:
            return self._load(step)
        except _Corrupt as exc:
            raise Internal(f"checkpoint {self.step_dir(step)} is corrupt: {exc}") from exc

    def _load(self, step: int) -> Checkpoint:
        path = self.step_dir(step)
        try:
            with open(os.path.join(path, MARKER), "rb") as f:
                meta = json.loads(f.read())
            if not isinstance(meta, dict) or meta.get("step") != step:
                raise _Corrupt(f"its marker does not name step {step}")
            files = {_shards.OBJECT_FILE: int(meta["object_bytes"])}
            files.update({f"buffer-{i}": int(n) for i, n in enumerate(meta["buffer_bytes"])})
            for fname, size in files.items():
                actual = os.stat(os.path.join(path, fname)).st_size
                if actual != size:
                    raise _Corrupt(f"{fname} has {actual} bytes, the marker says {size}")
            if os.path.exists(os.path.join(path, f"buffer-{len(meta['buffer_bytes'])}")):
                raise _Corrupt("it has more buffer files than its marker lists")
            state = _shards.read_shard(self._base, self.name, step)
            return Checkpoint(
                step=step,
                state=state,
                saved_at=float(meta["saved_at"]),
                attempt=int(meta["attempt"]),
                path=path,
            )
        except _Corrupt:
            raise
        except Exception as exc:  # a missing file, bad JSON, a pickle that does not load
            raise _Corrupt(f"{type(exc).__name__}: {exc}") from exc

    # -- writing -------------------------------------------------------------------------------

    def save(self, step: int, state: Any) -> str:
        """Write ``state`` as checkpoint ``step`` now (atomically); returns its directory.

        Waits for a background write still in flight first (and raises its error, if any).
        """
        with self._save_lock:
            self._join()
            self._check_step(step)
            saved_at = self._clock.time()
            header, buffers = _pickle(state, copy=False)
            self._write(step, saved_at, header, buffers)
            return self.step_dir(step)

    def save_async(self, step: int, state: Any) -> None:
        """Snapshot ``state`` in memory now and write it in a background thread.

        The call blocks only for the snapshot (pickling, and one copy of every array), so the
        caller may change ``state`` as soon as it returns. A write still in flight is waited for
        first (one at a time). :meth:`wait` flushes; an error of the write is raised by the next
        :meth:`save`, :meth:`save_async` or :meth:`wait`. The writer is not a daemon thread: a
        process that returns from its main function still completes its last write.
        """
        with self._save_lock:
            self._join()
            self._check_step(step)
            saved_at = self._clock.time()
            header, buffers = _pickle(state, copy=True)
            writer = threading.Thread(
                target=self._write_in_background,
                args=(step, saved_at, header, buffers),
                name=f"dsdk-checkpoint-{self.name}-{step}",
            )
            self._writer = writer
            writer.start()

    def wait(self) -> None:
        """Wait for the background write (if any); raise its error (if any)."""
        with self._save_lock:
            self._join()

    def close(self) -> None:
        """Same as :meth:`wait`."""
        self.wait()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.wait()
        else:  # do not hide the body's exception behind a write error
            with contextlib.suppress(DomainOSError):
                self.wait()

    def _join(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.join()
            self._writer = None
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _check_step(self, step: int) -> None:
        """Steps go forward. Called with no write in flight, so every earlier save of this object
        is on disk (or failed, and may be saved again)."""
        _check_int(step, "step", "step")
        done = [s for s in self.steps() if s not in self._corrupt]
        last = done[-1] if done else -1
        if step <= last:
            raise InvalidArgument(
                f"step {step} is not after step {last}, the latest checkpoint of {self.directory}: "
                "steps go forward (resume from latest(), or use another name)",
                field="step",
            )

    def _write_in_background(self, step: int, saved_at: float, header: bytes, buffers: list[Any]) -> None:
        try:
            self._write(step, saved_at, header, buffers)
        except DomainOSError as exc:
            log.warning("background checkpoint write failed: %s", exc)
            with self._lock:
                self._error = exc
        except BaseException as exc:  # never lose an error in a thread
            log.exception("background checkpoint write of step %s failed", step)
            err = Internal(f"checkpoint step {step}: {type(exc).__name__}: {exc}")
            err.__cause__ = exc  # raised later, on the caller's thread: keep what failed here
            with self._lock:
                self._error = err

    def _write(self, step: int, saved_at: float, header: bytes, buffers: list[Any]) -> None:
        """Write, flush, commit, prune (in that order: see the module's docstring)."""
        started = time.monotonic()
        path = self.step_dir(step)
        try:
            _shards.write_shard_bytes(self._base, self.name, step, header, buffers)
            sizes = self._flush(path)
            meta = {
                "format": _FORMAT,
                "step": step,
                "saved_at": saved_at,
                "attempt": self.attempt,
                "job_id": self.job_id,
                "task": self.task,
                "name": self.name,
                "object_bytes": sizes[0],
                "buffer_bytes": sizes[1:],
            }
            self._commit(path, meta)
        except OSError as exc:
            raise _write_error(step, path, exc) from exc
        log.debug("checkpoint %s committed in %.3fs", path, time.monotonic() - started)
        if self._reports:  # this task's own checkpoint: the control plane counts lost work from it
            note_checkpoint(step, saved_at)
        self._prune(step)

    def _flush(self, path: str) -> list[int]:
        """fsync the step's files and directories; the sizes of object.pkl, buffer-0, ..."""
        sizes = [os.stat(os.path.join(path, _shards.OBJECT_FILE)).st_size]
        while os.path.exists(os.path.join(path, f"buffer-{len(sizes) - 1}")):
            sizes.append(os.stat(os.path.join(path, f"buffer-{len(sizes) - 1}")).st_size)
        if self._fsync:
            _fsync_path(os.path.join(path, _shards.OBJECT_FILE))
            for i in range(len(sizes) - 1):
                _fsync_path(os.path.join(path, f"buffer-{i}"))
            _fsync_path(path, directory=True)
            _fsync_path(self.directory, directory=True)
            if not self._dirs_synced:  # the first write created <job>/<task>/<name>: their entries
                for d in (self._base, os.path.dirname(self._base), self.root):
                    # Best effort: the agent's root is 1733 (a task user may create in it, not
                    # read it), and opening a directory to fsync it needs read permission.
                    with contextlib.suppress(PermissionError):
                        _fsync_path(d, directory=True)
                self._dirs_synced = True
        return sizes

    def _commit(self, path: str, meta: dict[str, Any]) -> None:
        tmp = os.path.join(path, f".{MARKER}.tmp-{os.urandom(6).hex()}")
        with open(tmp, "w") as f:
            json.dump(meta, f)
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, MARKER))
        if self._fsync:
            _fsync_path(path, directory=True)

    def _prune(self, newest: int) -> None:
        """Remove complete checkpoints beyond ``keep``, those found corrupt, and what crashed writes
        of older steps left."""
        with self._lock:
            corrupt, self._corrupt = self._corrupt, set()
        complete = [s for s in self.steps() if s not in corrupt]
        doomed = set(complete[: max(0, len(complete) - self.keep)]) | corrupt
        if corrupt:
            log.warning("removing unusable checkpoints %s of %s", sorted(corrupt), self.directory)
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for n in names:
            if n.isdigit():
                step = int(n)
                if step in doomed or (step < newest and step not in complete):
                    shutil.rmtree(os.path.join(self.directory, n), ignore_errors=True)
            else:
                # ".<step>.tmp-<random>" (a write that died before its rename) or
                # "<step>.old-<random>" (one that died while replacing), of an older step
                head = n.lstrip(".").split(".", 1)[0]
                if (".tmp-" in n or ".old-" in n) and head.isdigit() and int(head) < newest:
                    shutil.rmtree(os.path.join(self.directory, n), ignore_errors=True)
