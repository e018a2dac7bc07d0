"""The CPU backend: one spawned worker process per core, arrays in POSIX shared memory.

Zero-copy: ``scatter`` copies its input once into one segment; a part is (segment, offset, shape,
dtype, strides) and every process builds a numpy view of it, so workers read and write the
parent's memory in place. Only control messages cross the pipes: the cloudpickled function
(once per worker per call), part descriptors, and results smaller than
:data:`~dsdk.intra._worker.INLINE_MAX_BYTES`.

Ownership: the parent owns every segment of the pool: the ones it creates (scatter, large
broadcast arguments, allreduce outputs) and the ones a worker creates for a returned array, which
the parent adopts when the reply names it. A segment is a :class:`_Block`; parts refer to blocks,
so a block lives while any :class:`~dsdk.intra.Sharded` (or in-flight call) uses it. When the last
reference goes, or the pool closes, the segment is unlinked, the workers are told to drop their
mappings with their next message, and the resource tracker forgets it (see :mod:`._shm`). Arrays
already handed out keep their mapping after the unlink, so they stay valid.

A worker that dies (``os._exit``, a signal) fails the call with :class:`TaskError` carrying its exit
code; segments it created and never reported are unlinked, and a fresh worker is started on the
same core at once, so the pool keeps working for later calls.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import multiprocessing
import os
import pickle
import secrets
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import cloudpickle  # type: ignore[import-untyped, unused-ignore]
import numpy as np
import numpy.typing as npt

from domainos.errors import FailedPrecondition, Internal, InvalidArgument

from . import _shm, _worker
from ._backend import OPS, Split, common_shape, concat, row_bounds
from ._errors import RemoteTraceback, TaskError, first_failure, localize
from ._types import Device, DeviceKind, PoolStats

log = logging.getLogger(__name__)

#: How long a new pool waits for its workers to import and report ready.
START_TIMEOUT_S = 120.0
#: How long close() waits for a worker to leave after "stop" before killing it.
STOP_TIMEOUT_S = 5.0

#: A function (with what it captures) or a pickled result past this size is worth a warning.
_LARGE_PAYLOAD = 1 << 20

Desc = tuple[Any, ...]


class _Block:
    """One shared-memory segment the parent owns; unlinked when the last reference goes."""

    __slots__ = ("__weakref__", "finalizer", "mm", "name", "size")

    def __init__(self, name: str, size: int, mm: mmap.mmap | None, releases: _Releases) -> None:
        self.name = name
        self.size = size
        self.mm = mm  # the parent maps worker-made segments only when someone looks at them
        self.finalizer = weakref.finalize(self, releases.drop, name)

    def array(
        self, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any], strides: tuple[int, ...]
    ) -> Any:
        if self.mm is None:
            self.mm = _shm.attach(self.name)
        return np.ndarray(shape, dtype, buffer=self.mm, offset=offset, strides=strides)


@dataclass(frozen=True, slots=True)
class _Part:
    """A part: a view of a block, or (``block is None``) a small value kept in the parent."""

    block: _Block | None
    value: Any = None
    offset: int = 0
    shape: tuple[int, ...] = ()
    dtype: np.dtype[Any] | None = None
    strides: tuple[int, ...] = ()

    def desc(self) -> Desc:
        if self.block is None:
            return ("val", self.value)
        return ("shm", self.block.name, self.offset, self.shape, self.dtype, self.strides)

    def host(self) -> Any:
        if self.block is None:
            return self.value
        assert self.dtype is not None
        return self.block.array(self.offset, self.shape, self.dtype, self.strides)

    def meta(self) -> tuple[tuple[int, ...], np.dtype[Any]]:
        if self.block is None:
            value = np.asarray(self.value)
            return value.shape, value.dtype
        assert self.dtype is not None
        return self.shape, self.dtype


class _Releases:
    """Unlinked segment names, for the resource tracker and for each worker's next message.

    ``drop`` runs from block finalizers, i.e. whenever the garbage collector decides: it unlinks,
    queues, and asks ``notify`` to tell idle workers now (so that they unmap and the memory is
    freed without waiting for the next call). The tracker is told later, at a safe point
    (:meth:`flush`), because its client is not reentrant.
    """

    def __init__(self, workers: int, notify: Callable[[], None]) -> None:
        self.untracked: list[str] = []
        self.pending: list[list[str]] = [[] for _ in range(workers)]
        self.notify = notify

    def drop(self, name: str) -> None:
        _shm.remove(name)
        self.untracked.append(name)
        for names in self.pending:
            names.append(name)
        self.notify()

    def take(self, rank: int) -> list[str]:
        names = self.pending[rank]
        self.pending[rank] = []
        return names

    def flush(self) -> None:
        names, self.untracked = self.untracked, []
        _shm.forget(names)


@dataclass(slots=True)
class _Worker:
    rank: int
    device: Device
    generation: int
    process: BaseProcess
    conn: Connection
    prefix: str
    ready: bool = False


class CpuBackend:
    """Workers pinned one per core; see the module docstring."""

    def __init__(self, cores: Sequence[int]) -> None:
        self.kind: DeviceKind = "cpu"
        self._ctx = multiprocessing.get_context("spawn")  # never fork: the parent may run gRPC threads
        self.prefix = f"dsdk-{os.getpid()}-{secrets.token_hex(3)}-"
        name = _cpu_model()
        self.devices = [Device("cpu", core, name) for core in cores]
        self._lock = threading.Lock()  # one call at a time
        self._closed = False
        self._workers: list[_Worker] = []
        self._blocks: weakref.WeakValueDictionary[str, _Block] = weakref.WeakValueDictionary()
        self._releases = _Releases(len(cores), _weak_call(self._release_now))
        self._seq = itertools.count(1)
        self._host_seq = itertools.count()
        self._calls = self._sent = self._received = self._shm_bytes = self._restarts = 0
        try:
            for rank in range(len(cores)):
                self._workers.append(self._start(rank, 0))
            self._await_ready()
        except BaseException:
            self.close()
            raise

    # -- workers -----------------------------------------------------------------------------

    def _start(self, rank: int, generation: int) -> _Worker:
        device = self.devices[rank]
        prefix = f"{self.prefix}w{rank}.{generation}-"
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker.main,
            args=(child_end, prefix, device.index),
            name=f"dsdk-intra-{device}",
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Worker(rank, device, generation, process, parent_end, prefix)

    def _await_ready(self) -> None:
        waiting = {w.rank: w for w in self._workers}
        deadline = time.monotonic() + START_TIMEOUT_S
        while waiting:
            handles: list[Any] = [w.conn for w in waiting.values()]
            handles += [w.process.sentinel for w in waiting.values()]
            if not wait(handles, timeout=max(0.0, deadline - time.monotonic())):
                raise FailedPrecondition(f"CPU workers did not start within {START_TIMEOUT_S:.0f} s")
            for worker in list(waiting.values()):
                if worker.conn.poll():
                    msg = pickle.loads(worker.conn.recv_bytes())
                    if msg[0] == "ready":
                        worker.ready = True
                        del waiting[worker.rank]
                elif worker.process.exitcode is not None:
                    raise FailedPrecondition(
                        f"the worker for {worker.device} exited with {_exit_text(worker.process.exitcode)} "
                        "while starting (its stderr says why)"
                    )

    def _release_now(self) -> None:
        """Send queued releases to idle workers; skipped while a call runs (it carries them)."""
        if self._closed or not self._lock.acquire(blocking=False):
            return
        try:
            for worker in self._workers:
                names = self._releases.take(worker.rank)
                if names:
                    with contextlib.suppress(OSError):
                        worker.conn.send_bytes(pickle.dumps(("release", 0, names), pickle.HIGHEST_PROTOCOL))
        finally:
            self._lock.release()

    def _replace(self, worker: _Worker) -> None:
        """Reap a dead or killed worker, unlink what it left unreported, start a fresh one."""
        with contextlib.suppress(Exception):
            worker.conn.close()
        worker.process.join(timeout=STOP_TIMEOUT_S)
        for name in _shm.existing(worker.prefix):
            if name not in self._blocks:
                self._releases.drop(name)
        self._releases.take(worker.rank)  # its successor starts with no mappings
        if not self._closed:
            self._workers[worker.rank] = self._start(worker.rank, worker.generation + 1)
            self._restarts += 1

    # -- calls -------------------------------------------------------------------------------

    def _run(self, what: str, messages: dict[int, tuple[Any, ...]], fn: object = None) -> dict[int, _Part]:
        """Send each worker its message, wait for every reply; raise the first failure."""
        if self._closed:
            raise FailedPrecondition("the DevicePool is closed")
        self._releases.flush()
        self._calls += 1
        seq = next(self._seq)
        for worker in self._workers:
            if worker.process.exitcode is not None:
                log.warning(
                    "CPU worker for %s died between calls (%s); restarting it",
                    worker.device,
                    _exit_text(worker.process.exitcode),
                )
                self._replace(worker)
        pending: dict[int, _Worker] = {}
        errors: dict[int, TaskError] = {}
        results: dict[int, _Part] = {}
        try:
            for rank, body in messages.items():
                worker = self._workers[rank]
                data = pickle.dumps(
                    (body[0], seq, self._releases.take(rank), *body[1:]), pickle.HIGHEST_PROTOCOL
                )
                pending[rank] = worker  # before sending: an interrupted send must kill it too
                try:
                    worker.conn.send_bytes(data)
                except OSError:
                    del pending[rank]
                    errors[rank] = self._died(worker, what)
                    continue
                self._sent += len(data)
            while pending:
                handles: list[Any] = [w.conn for w in pending.values()]
                handles += [w.process.sentinel for w in pending.values()]
                wait(handles)
                for rank, worker in list(pending.items()):
                    reply = self._receive(worker, seq)
                    if reply is None:
                        if worker.process.exitcode is not None:
                            del pending[rank]
                            errors[rank] = self._died(worker, what)
                        continue
                    if reply[0] == "ready":
                        worker.ready = True
                        continue
                    if reply[1] != seq:  # (it stays pending: the handler below replaces it)
                        raise Internal(f"{worker.device} answered call {reply[1]}, expected {seq}")
                    del pending[rank]
                    if reply[0] == "ok":
                        results[rank] = self._adopt(reply[2])
                    else:
                        errors[rank] = self._failed(worker, what, reply, fn)
        except BaseException:
            # Interrupted (Ctrl-C) or broken protocol: workers still busy would answer a call
            # nobody waits for; replace them so the next call starts clean.
            for worker in pending.values():
                worker.process.kill()
                self._replace(worker)
            raise
        if errors:
            results.clear()  # outputs of the devices that succeeded are dropped (and unlinked)
            raise first_failure(errors)
        return results

    def _receive(self, worker: _Worker, seq: int) -> tuple[Any, ...] | None:
        try:
            if not worker.conn.poll():
                return None
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            worker.process.join(timeout=STOP_TIMEOUT_S)
            return None
        self._received += len(data)
        try:
            reply: tuple[Any, ...] = pickle.loads(data)
        except Exception as exc:  # e.g. a result of a class this process cannot import
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return ("err", seq, type(exc).__qualname__, f"its result cannot be unpickled here: {exc}", text)
        if len(data) > _LARGE_PAYLOAD and reply[0] == "ok":
            log.warning(
                "%s returned %.1f MiB that are not one numpy array, so they were pickled through the "
                "pipe; return arrays (one per call) to keep results in shared memory",
                worker.device,
                len(data) / 2**20,
            )
        return reply

    def _adopt(self, desc: Desc) -> _Part:
        kind = desc[0]
        if kind == "val":
            return _Part(None, desc[1])
        if kind == "new":
            _, name, size, shape, dtype, strides = desc
            self._shm_bytes += size
            return _Part(self._own(name, size, None), None, 0, shape, dtype, strides)
        _, name, offset, shape, dtype, strides = desc
        block = self._blocks.get(name)
        if block is None:
            raise Internal(f"a worker returned a view of segment {name}, which the pool does not hold")
        return _Part(block, None, offset, shape, dtype, strides)

    def _own(self, name: str, size: int, mm: mmap.mmap | None) -> _Block:
        block = _Block(name, size, mm, self._releases)
        self._blocks[name] = block
        return block

    def _new_block(self, nbytes: int, *, fill: bool = True) -> _Block:
        name = f"{self.prefix}h{next(self._host_seq)}"
        size = max(nbytes, 1)
        mm = _shm.create(name, size, fill=fill)
        self._shm_bytes += size
        return self._own(name, size, mm)

    def _shared(self, x: npt.NDArray[Any]) -> _Part:
        """``x`` copied once into a new segment, as a C-contiguous part."""
        block = self._new_block(x.nbytes)
        view = block.array(0, x.shape, x.dtype, _c_strides(x.shape, x.dtype.itemsize))
        np.copyto(view, x)
        return _Part(block, None, 0, x.shape, x.dtype, view.strides)

    def _failed(self, worker: _Worker, what: str, reply: tuple[Any, ...], fn: object) -> TaskError:
        _, _, exc_type, message, text = reply
        text = localize(text, fn)
        error = TaskError(
            f"{what} failed on {worker.device} (rank {worker.rank}): {exc_type}: {message}",
            device=worker.device,
            rank=worker.rank,
            exc_type=exc_type,
            remote_traceback=text,
        )
        error.__cause__ = RemoteTraceback(text)
        return error

    def _died(self, worker: _Worker, what: str) -> TaskError:
        worker.process.join(timeout=STOP_TIMEOUT_S)
        code = worker.process.exitcode
        self._replace(worker)
        return TaskError(
            f"{what} failed on {worker.device} (rank {worker.rank}): the worker process died with "
            f"{_exit_text(code)}; a fresh worker was started for later calls",
            device=worker.device,
            rank=worker.rank,
            worker_exit_code=code,
        )

    # -- the operations ----------------------------------------------------------------------

    def scatter(self, x: npt.NDArray[Any]) -> list[Any]:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the DevicePool is closed")
            self._releases.flush()
            whole = self._shared(x)
            assert whole.block is not None
            row = whole.strides[0]
            return [
                _Part(whole.block, None, start * row, (end - start, *x.shape[1:]), x.dtype, whole.strides)
                for start, end in row_bounds(x.shape[0], len(self.devices))
            ]

    def map(self, fn: Callable[..., Any], args: Sequence[Any], what: str) -> list[Any]:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the DevicePool is closed")
            consts: list[Any] = []
            shared: list[tuple[int, Desc]] = []  # large broadcast arrays: one segment for all workers
            splits: list[tuple[int, Sequence[Any]]] = []
            keep: list[_Part] = []
            for position, arg in enumerate(args):
                if isinstance(arg, Split):
                    consts.append(None)
                    splits.append((position, arg.parts))
                elif _is_large_array(arg):
                    part = self._shared(arg)
                    keep.append(part)
                    consts.append(None)
                    shared.append((position, part.desc()))
                else:
                    consts.append(arg)
            payload = _dumps(fn, consts)
            if len(payload) > _LARGE_PAYLOAD:
                log.warning(
                    "%s pickles to %.1f MiB, sent to each of %d workers: it captures large objects; "
                    "pass arrays as map() arguments to share them instead",
                    what,
                    len(payload) / 2**20,
                    len(self.devices),
                )
            messages = {
                rank: ("call", payload, [(pos, parts[rank].desc()) for pos, parts in splits] + shared)
                for rank in range(len(self.devices))
            }
            results = self._run(what, messages, fn)
            return [results[rank] for rank in range(len(self.devices))]

    def reduce(self, fn: Callable[[Any, Any], Any], parts: Sequence[Any], what: str) -> Any:
        with self._lock:
            inputs = {id(p.block) for p in parts if p.block is not None}
            acc: list[_Part | None] = list(parts)
            payload = _dumps(fn, [None, None])
            stride = 1
            while stride < len(acc):
                messages: dict[int, tuple[Any, ...]] = {}
                for rank in range(0, len(acc), 2 * stride):
                    left, right = acc[rank], acc[rank + stride] if rank + stride < len(acc) else None
                    if left is not None and right is not None:
                        messages[rank] = ("call", payload, [(0, left.desc()), (1, right.desc())])
                results = self._run(f"{what} (round of stride {stride})", messages, fn)
                for rank, part in results.items():
                    acc[rank], acc[rank + stride] = part, None  # the right side's block can go now
                stride *= 2
            final = acc[0]
            assert final is not None
            value = final.host()
            aliased = final is parts[0] or (final.block is not None and id(final.block) in inputs)
            if aliased and isinstance(value, np.ndarray):
                return np.array(value, copy=True)  # never alias the caller's parts
            return value

    def allreduce(self, parts: Sequence[Any], op: str, inplace: bool) -> list[Any]:
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the DevicePool is closed")
            metas = [p.meta() for p in parts]
            shape = common_shape([m[0] for m in metas])
            dtype = np.result_type(*[m[1] for m in metas])
            if dtype.hasobject:
                raise InvalidArgument("allreduce needs numeric parts; a part has dtype object")
            if inplace:
                _check_inplace(parts, [m[1] for m in metas])
            ufunc: np.ufunc = getattr(np, OPS[op])
            n = len(parts)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes < _worker.INLINE_MAX_BYTES or any(p.block is None for p in parts):
                # Small: one round trip would cost more than reducing here.
                acc = np.array(parts[0].host(), dtype=dtype, copy=True)
                for part in parts[1:]:
                    ufunc(acc, part.host(), out=acc, casting="unsafe")
                if inplace:
                    for part in parts:
                        np.copyto(part.host(), acc)
                    return list(parts)
                return [_Part(None, acc.copy()) for _ in range(n)]
            self._releases.flush()
            if inplace:
                outs = list(parts)
            else:
                # One output segment, one part per device, each 64-byte aligned.
                stride = -(-nbytes // 64) * 64
                block = self._new_block(stride * n, fill=False)  # each worker populates its slices
                strides = _c_strides(shape, dtype.itemsize)
                outs = [_Part(block, None, rank * stride, shape, dtype, strides) for rank in range(n)]
            # Contiguous inputs split by element ranges, others by rows (axis 0).
            flat = all(p.strides == _c_strides(p.shape, p.meta()[1].itemsize) for p in parts)
            length = int(np.prod(shape, dtype=np.int64)) if flat else shape[0]
            out_descs = [o.desc() for o in outs]
            in_descs = [p.desc() for p in parts]
            messages = {
                rank: ("allreduce", ufunc.__name__, in_descs, out_descs, lo, hi, flat)
                for rank, (lo, hi) in enumerate(row_bounds(length, n))
                if hi > lo
            }
            self._run(f"allreduce(op={op!r})", messages)
            return outs

    def host(self, part: Any) -> Any:
        self._check_open()
        return part.host()

    def local(self, part: Any) -> Any:
        return self.host(part)

    def gather(self, parts: Sequence[Any]) -> npt.NDArray[Any]:
        self._check_open()
        return concat([p.host() for p in parts])

    def stats(self) -> PoolStats:
        return PoolStats(
            calls=self._calls,
            pipe_bytes_sent=self._sent,
            pipe_bytes_received=self._received,
            shm_bytes_created=self._shm_bytes,
            workers_restarted=self._restarts,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the DevicePool is closed: its parts are gone")

    def close(self) -> None:
        """Stop the workers, unlink every segment of the pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        stop = pickle.dumps(("stop",))
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send_bytes(stop)
        for worker in self._workers:
            worker.process.join(timeout=STOP_TIMEOUT_S)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            with contextlib.suppress(Exception):
                worker.conn.close()
        for block in list(self._blocks.values()):
            block.finalizer()
        for name in _shm.existing(self.prefix):  # anything a dying worker left behind
            self._releases.drop(name)
        self._releases.flush()


def _check_inplace(parts: Sequence[_Part], dtypes: Sequence[np.dtype[Any]]) -> None:
    """An in-place allreduce writes into the parts: they must be arrays of one dtype, apart."""
    if any(d != dtypes[0] for d in dtypes):
        raise InvalidArgument(
            f"allreduce(inplace=True) needs parts of one dtype; got {sorted({str(d) for d in dtypes})}"
        )
    extents: list[tuple[str, int, int, int]] = []
    for rank, part in enumerate(parts):
        if part.block is not None:
            assert part.dtype is not None
            low, high = _extent(part.offset, part.shape, part.strides, part.dtype.itemsize)
            extents.append((part.block.name, low, high, rank))
        elif isinstance(part.value, np.ndarray):
            value = part.value
            low, high = _extent(value.ctypes.data, value.shape, value.strides, value.itemsize)
            extents.append(("", low, high, rank))
        else:
            raise InvalidArgument(
                f"allreduce(inplace=True) needs array parts; part {rank} is a {type(part.value).__name__}"
            )
    extents.sort()
    for (where, _, high, rank), (other, low, _, next_rank) in itertools.pairwise(extents):
        if where == other and low < high:
            raise InvalidArgument(
                f"allreduce(inplace=True) needs parts that do not share memory; parts {rank} and {next_rank} do"
            )


def _extent(start: int, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """``[low, high)``: the bytes an array view touches, from the address of its first element."""
    low = high = start
    for dim, stride in zip(shape, strides, strict=True):
        if dim == 0:
            return start, start
        if stride >= 0:
            high += (dim - 1) * stride
        else:
            low += (dim - 1) * stride
    return low, high + itemsize


def _weak_call(method: Callable[[], None]) -> Callable[[], None]:
    """``method()`` while its object lives: block finalizers must not keep the backend alive."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


def _dumps(fn: Callable[..., Any], consts: list[Any]) -> bytes:
    try:
        data: bytes = cloudpickle.dumps((fn, consts), pickle.HIGHEST_PROTOCOL)
        return data
    except Exception as exc:
        raise InvalidArgument(f"the function or its arguments cannot be pickled: {exc}") from exc


def _is_large_array(value: Any) -> bool:
    return (
        type(value) is np.ndarray and not value.dtype.hasobject and value.nbytes >= _worker.INLINE_MAX_BYTES
    )


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"exit code {code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"exit code {code}"
    return f"exit code {code}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
