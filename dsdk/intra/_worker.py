"""The CPU worker process: one per core, pinned to it, serving its pool's parent over one pipe.

Messages are pickled tuples. Parent to worker::

    ("call", seq, releases, payload, refs)      payload = cloudpickle((fn, args)); refs = [(position, desc)]
    ("allreduce", seq, releases, ufunc, ins, outs, lo, hi, flat)
    ("release", 0, releases)                    between calls; not answered
    ("stop",)

``releases`` names segments the parent has unlinked: the worker drops its mappings of them. A
``desc`` is ``("shm", name, offset, shape, dtype, strides)`` (a numpy view of a segment) or
``("val", value)``. Worker to parent::

    ("ready", pid)
    ("ok", seq, result)        result: ("val", value) | ("new", name, size, shape, dtype, strides)
                                       | ("ref", name, offset, shape, dtype, strides)
    ("err", seq, exc_type, message, traceback_text)

A returned array is written into a new segment the worker creates (``"new"``; the parent owns it
from then on), unless it is a view of a segment that was an argument of this call (``"ref"``: no
copy at all) or smaller than :data:`INLINE_MAX_BYTES` (pickled: cheaper than a segment).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import mmap
import os
import pickle
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle  # type: ignore[import-untyped, unused-ignore]
import numpy as np

from . import _shm

#: Arrays smaller than this travel pickled through the pipe instead of through a new segment.
INLINE_MAX_BYTES = 64 * 1024
#: Elements an allreduce handles at a time: the accumulator stays in cache while every part is read.
_CHUNK_BYTES = 256 * 1024
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
_BLAS_SETTERS = (
    "openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
)

Desc = tuple[Any, ...]


def main(conn: Connection, prefix: str, core: int | None) -> None:
    """Entry point of a worker process (the ``target`` of its ``multiprocessing`` process)."""
    # Ctrl-C reaches the whole process group: the parent decides what an interrupt means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if core is not None:
        _pin(core)
    _one_thread()
    worker = _Worker(conn, prefix)
    conn.send_bytes(pickle.dumps(("ready", os.getpid()), pickle.HIGHEST_PROTOCOL))
    worker.serve()


def _pin(core: int) -> None:
    # sched_setaffinity(0) binds only the calling thread; threads a library already started when
    # the parent's __main__ was re-imported here (OpenBLAS's pool) are bound one by one.
    os.sched_setaffinity(0, {core})
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            os.sched_setaffinity(int(tid), {core})


def _one_thread() -> None:
    # Each worker owns one core: a BLAS thread pool per worker would oversubscribe the machine.
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    try:
        with open("/proc/self/maps") as maps:
            libraries = {line.split()[-1] for line in maps if "openblas" in line and "/" in line}
    except OSError:
        return
    for path in libraries:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _BLAS_SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(1)
                break


class _Worker:
    def __init__(self, conn: Connection, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self.seq = itertools.count()
        # segment name -> (mapping, start address): attached once, dropped when the parent releases
        self.maps: dict[str, tuple[mmap.mmap, int]] = {}

    def serve(self) -> None:
        while True:
            try:
                msg = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                return  # the parent is gone
            if msg[0] == "stop":
                return
            seq = msg[1]
            for name in msg[2]:
                self.maps.pop(name, None)
            if msg[0] == "release":  # the parent unlinked these segments; no answer expected
                continue
            try:
                result = self.call(*msg[3:]) if msg[0] == "call" else self.allreduce(*msg[3:])
                data = _reply(seq, result)
            except BaseException as exc:
                data = _error(seq, exc)
            try:
                self.conn.send_bytes(data)
            except OSError:
                return

    # -- parts -------------------------------------------------------------------------------

    def view(self, desc: Desc) -> Any:
        if desc[0] == "val":
            return desc[1]
        _, name, offset, shape, dtype, strides = desc
        entry = self.maps.get(name)
        if entry is None:
            mm = _shm.attach(name)
            entry = self.maps[name] = (mm, _shm.address(mm))
        return np.ndarray(shape, dtype, buffer=entry[0], offset=offset, strides=strides)

    def export(self, result: Any, arguments: dict[int, str]) -> Desc:
        if type(result) is not np.ndarray or result.dtype.hasobject or result.nbytes < INLINE_MAX_BYTES:
            return ("val", result)
        base: Any = result
        while isinstance(base, np.ndarray):
            base = base.base
        name = arguments.get(id(base))
        if name is not None and all(s >= 0 for s in result.strides):
            offset = result.ctypes.data - self.maps[name][1]
            return ("ref", name, offset, result.shape, result.dtype, result.strides)
        name, out = self.new(result.shape, result.dtype)
        np.copyto(out, result)
        return ("new", name, max(out.nbytes, 1), out.shape, out.dtype, out.strides)

    def new(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[str, np.ndarray[Any, Any]]:
        name = f"{self.prefix}{next(self.seq)}"
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        mm = _shm.create(name, nbytes)
        self.maps[name] = (mm, _shm.address(mm))
        return name, np.ndarray(shape, dtype, buffer=mm)

    # -- operations --------------------------------------------------------------------------

    def call(self, payload: bytes, refs: list[tuple[int, Desc]]) -> Desc:
        fn, args = cloudpickle.loads(payload)
        arguments: dict[int, str] = {}
        for position, desc in refs:
            args[position] = self.view(desc)
            if desc[0] == "shm":
                arguments[id(self.maps[desc[1]][0])] = desc[1]
        if _is_binary_ufunc(fn, args):
            written = self.ufunc_into_segment(fn, args[0], args[1])
            if written is not None:
                return written
        return self.export(fn(*args), arguments)

    def ufunc_into_segment(
        self, fn: np.ufunc, a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]
    ) -> Desc | None:
        # np.add(a, b) written straight into a new segment: saves the copy export() would make.
        shape = np.broadcast_shapes(a.shape, b.shape)
        dtype = fn(a.flat[:1], b.flat[:1]).dtype  # 1-element arrays: no value-based casting
        if dtype.hasobject or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize < INLINE_MAX_BYTES:
            return None
        name, out = self.new(shape, dtype)
        fn(a, b, out=out)
        return ("new", name, max(out.nbytes, 1), out.shape, out.dtype, out.strides)

    def allreduce(self, ufunc: str, ins: list[Desc], outs: list[Desc], lo: int, hi: int, flat: bool) -> Desc:
        # This worker's slice [lo, hi) of every part: reduce it across the inputs into the first
        # output (reduce-scatter), then copy it into every other output (all-gather).
        op: np.ufunc = getattr(np, ufunc)
        sources = [self.view(d) for d in ins]
        targets = [self.view(d) for d in outs]
        if flat:
            sources = [s.reshape(-1) for s in sources]
            targets = [t.reshape(-1) for t in targets]
        inplace = outs[0] == ins[0]  # then every output is its input: the first copy is not needed
        if not inplace:  # new outputs: fault in this worker's slices, one system call each
            for desc, target in zip(outs, targets, strict=True):
                mm, address = self.maps[desc[1]]
                mine = target[lo:hi]
                _shm.populate(mm, mine.ctypes.data - address, mine.nbytes)
        row_bytes = max(1, targets[0][:1].nbytes)
        step = max(1, _CHUNK_BYTES // row_bytes)
        for start in range(lo, hi, step):
            end = min(hi, start + step)
            acc = targets[0][start:end]
            if not inplace:
                np.copyto(acc, sources[0][start:end], casting="unsafe")
            for source in sources[1:]:
                op(acc, source[start:end], out=acc, casting="unsafe")
            for target in targets[1:]:
                np.copyto(target[start:end], acc)
        return ("val", None)


def _is_binary_ufunc(fn: Any, args: list[Any]) -> bool:
    return (
        isinstance(fn, np.ufunc)
        and fn.nin == 2
        and fn.nout == 1
        and len(args) == 2
        and all(type(a) is np.ndarray and a.size > 0 and not a.dtype.hasobject for a in args)
    )


def _reply(seq: int, result: Desc) -> bytes:
    try:
        return pickle.dumps(("ok", seq, result), pickle.HIGHEST_PROTOCOL)
    except Exception:
        if result[0] != "val":
            raise
    # lambdas, closures, local classes: cloudpickle's bytes load with plain pickle in the parent
    wrapped = _Cloudpickled(cloudpickle.dumps(result[1], pickle.HIGHEST_PROTOCOL))
    return pickle.dumps(("ok", seq, ("val", wrapped)), pickle.HIGHEST_PROTOCOL)


class _Cloudpickled:
    """A result plain pickle refused; unpickles to the value itself in the parent."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (self.data,)


def _error(seq: int, exc: BaseException) -> bytes:
    # Drop this module's frame: the traceback starts in the user's function.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is None:  # the worker itself failed: keep all of it
        tb = exc.__traceback__
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    exc_type = type(exc).__qualname__
    module = type(exc).__module__
    if module not in ("builtins", "__main__"):
        exc_type = f"{module}.{exc_type}"
    return pickle.dumps(("err", seq, exc_type, str(exc), text), pickle.HIGHEST_PROTOCOL)
