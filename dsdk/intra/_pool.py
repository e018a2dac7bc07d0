"""The public face of intra-node compute: :class:`DevicePool` and :class:`Sharded`."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from domainos.errors import FailedPrecondition, InvalidArgument

from ._backend import OPS, Backend, Split
from ._types import Device, DeviceKind, PoolStats

KINDS = ("auto", "cpu", "cuda")


class DevicePool:
    """Compute across the devices of this machine: its GPUs (CUDA) or its CPU cores.

    >>> import numpy as np
    >>> from dsdk.intra import DevicePool
    >>> with DevicePool("cpu") as pool:                       # doctest: +SKIP
    ...     parts = pool.scatter(np.arange(10.0))             # one part per device
    ...     doubled = pool.map(lambda p: p * 2, parts)        # in parallel, one call per device
    ...     total = pool.reduce(np.add, pool.map(np.sum, doubled))
    ...     summed = pool.allreduce(doubled, op="sum")        # needs parts of one shape

    ``kind="auto"`` picks CUDA when PyTorch imports and sees a device, else the CPU. ``devices``
    limits the pool: a count (the first *n* cores or GPUs) or the hardware indices to use.

    **CPU**: one worker process per core this process may use (``os.sched_getaffinity(0)``), started
    with the ``spawn`` method (so, as with :mod:`multiprocessing`, a script must guard its entry with
    ``if __name__ == "__main__":``) and pinned to its core, with BLAS limited to one thread. Arrays
    live in POSIX shared memory (``/dev/shm/dsdk-<pid>-...``) and are never copied through pipes:
    workers receive views. Functions travel with cloudpickle, so lambdas and closures work (what a
    closure captures is pickled with it: pass large arrays as arguments instead, where arrays of
    64 KiB and more go through shared memory as well). A worker that dies fails the call with
    :class:`~dsdk.intra.TaskError` and is replaced by a fresh one on the same core.

    **CUDA**: parts are ``torch.Tensor`` on ``cuda:i``; functions run in one thread per device.

    One call runs at a time; calls from several threads are serialised. :meth:`close` (or leaving
    the ``with`` block) stops the workers and unlinks every shared-memory segment; arrays already
    obtained from the pool stay valid, :class:`Sharded` objects do not.
    """

    def __init__(self, kind: str = "auto", devices: int | Sequence[int] | None = None) -> None:
        if kind not in KINDS:
            raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}; got {kind!r}", field="kind")
        backend: Backend
        if kind in ("auto", "cuda"):
            from . import _cuda

            count, why = _cuda.device_count()
            if count == 0 and kind == "cuda":
                raise FailedPrecondition(f"kind='cuda' but no CUDA device can be used: {why}")
            if count > 0:
                backend = _cuda.CudaBackend(_select(list(range(count)), devices, "CUDA devices"))
            else:
                kind = "cpu"
        if kind == "cpu":
            from ._cpu import CpuBackend

            cores = sorted(os.sched_getaffinity(0))
            backend = CpuBackend(_select(cores, devices, "CPU cores this process may use"))
        self._backend = backend
        self._finalizer = weakref.finalize(self, backend.close)

    # -- what it is --------------------------------------------------------------------------

    @property
    def kind(self) -> DeviceKind:
        """``"cpu"`` or ``"cuda"``: what ``kind="auto"`` resolved to."""
        return self._backend.kind

    @property
    def devices(self) -> list[Device]:
        """The devices, in rank order: part ``i`` of every :class:`Sharded` lives on ``devices[i]``."""
        return list(self._backend.devices)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return not self._finalizer.alive

    def __len__(self) -> int:
        return len(self._backend.devices)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<DevicePool {self.kind} x{len(self)} [{', '.join(map(str, self.devices))}] {state}>"

    def stats(self) -> PoolStats:
        """What crossed process boundaries and how much shared memory was created so far."""
        return self._backend.stats()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers and release every part (unlinks all shared memory). Idempotent."""
        self._finalizer()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> Backend:
        if self.closed:
            raise FailedPrecondition("the DevicePool is closed")
        return self._backend

    def _parts(self, sharded: object, what: str) -> Sequence[Any]:
        if not isinstance(sharded, Sharded):
            raise InvalidArgument(
                f"{what} must be a Sharded (from scatter, map or allreduce); got {type(sharded).__name__}"
            )
        if sharded._pool is not self:
            raise InvalidArgument(
                f"{what} is a Sharded of another DevicePool; parts live in the pool that made them"
            )
        return sharded._parts

    # -- operations --------------------------------------------------------------------------

    def scatter(self, x: npt.ArrayLike) -> Sharded:
        """Split ``x`` along axis 0 into ``len(pool)`` nearly equal parts, one per device.

        The first ``rows % len(pool)`` parts get one row more (as :func:`numpy.array_split`); with
        fewer rows than devices some parts are empty. On CPU the data is copied once, into one
        shared-memory segment that the parts view.
        """
        backend = self._open()
        array = np.asarray(x)
        if array.ndim == 0:
            raise InvalidArgument(
                "scatter needs an array with at least one dimension (it splits axis 0); got a 0-d array",
                field="x",
            )
        if array.dtype.hasobject:
            raise InvalidArgument(
                "scatter needs a numeric array; dtype object cannot live in device memory", field="x"
            )
        return Sharded(self, backend.scatter(array))

    def map(self, fn: Callable[..., Any], /, *args: Any) -> Sharded:
        """Run ``fn`` on every device in parallel and return its results as a :class:`Sharded`.

        A :class:`Sharded` argument is passed part-wise (device ``i`` gets part ``i``); any other
        argument is passed to every device as is. On CPU a returned array stays in shared memory
        (a view of an argument is returned without any copy); other results are pickled.
        Raises :class:`~dsdk.intra.TaskError` if ``fn`` raised (or its worker died) on a device.
        """
        backend = self._open()
        if not callable(fn):
            raise InvalidArgument(f"map needs a callable; got {type(fn).__name__}", field="fn")
        converted = [
            Split(self._parts(a, f"argument {i + 1}")) if isinstance(a, Sharded) else a
            for i, a in enumerate(args)
        ]
        return Sharded(self, backend.map(fn, converted, f"map({_name(fn)})"))

    def reduce(self, fn: Callable[[Any, Any], Any], sharded: Sharded) -> Any:
        """Combine the parts with ``fn(left, right)`` in a pairwise tree on the devices.

        Rounds run in parallel: in the round of stride ``s``, device ``i`` combines its value with
        that of device ``i + s``. ``fn`` must be associative; the order of parts is kept, so it
        need not be commutative. Returns one host value (a numpy array for array results).
        """
        backend = self._open()
        if not callable(fn):
            raise InvalidArgument(f"reduce needs a callable; got {type(fn).__name__}", field="fn")
        return backend.reduce(fn, self._parts(sharded, "sharded"), f"reduce({_name(fn)})")

    def allreduce(self, sharded: Sharded, op: str = "sum", *, inplace: bool = False) -> Sharded:
        """Reduce the parts elementwise so every device ends with the result.

        ``op`` is ``"sum"``, ``"max"``, ``"min"`` or ``"prod"``; all parts need one shape and the
        result has their common dtype (integer sums wrap as numpy's do). By default the input is
        left as it was and the result is new memory; ``inplace=True`` writes the result into the
        parts themselves (which must be arrays of one dtype that share no memory) and returns
        ``sharded``: no allocation, as for gradients. On CPU each worker reduces one slice of the
        element range across all parts and writes it into every output part, all in shared memory
        (reduce-scatter + all-gather).
        """
        backend = self._open()
        if op not in OPS:
            raise InvalidArgument(f"op must be one of {', '.join(OPS)}; got {op!r}", field="op")
        parts = self._parts(sharded, "sharded")
        reduced = backend.allreduce(parts, op, inplace)
        return sharded if inplace else Sharded(self, reduced)

    def gather(self, sharded: Sharded) -> npt.NDArray[Any]:
        """Concatenate the parts along axis 0 into one host numpy array (see :meth:`Sharded.gather`)."""
        return self._open().gather(self._parts(sharded, "sharded"))


class Sharded:
    """The per-device parts of one value; valid while its :class:`DevicePool` is open.

    ``len(s)`` is the number of parts; ``s[i]`` is part ``i`` as a host value: on CPU a numpy view of
    shared memory (writable, no copy), on CUDA a numpy copy (``s.local(i)`` is the tensor). Parts
    that are not arrays (a function may return numbers or anything picklable) come back as they are.
    """

    __slots__ = ("__weakref__", "_parts", "_pool")

    def __init__(self, pool: DevicePool, parts: Sequence[Any]) -> None:
        self._pool = pool
        self._parts = parts

    @property
    def pool(self) -> DevicePool:
        """The pool that holds the parts."""
        return self._pool

    def __len__(self) -> int:
        return len(self._parts)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        backend = self._pool._open()
        if isinstance(index, slice):
            return [backend.host(p) for p in self._parts[index]]
        return backend.host(self._parts[index])

    def __iter__(self) -> Iterator[Any]:
        backend = self._pool._open()
        for part in self._parts:
            yield backend.host(part)

    def local(self, index: int) -> Any:
        """Part ``index`` as its device holds it: a ``torch.Tensor`` on CUDA, the numpy view on CPU."""
        return self._pool._open().local(self._parts[index])

    def device_of(self, index: int) -> Device:
        """The device that holds part ``index``."""
        return self._pool._backend.devices[range(len(self._parts))[index]]

    def gather(self) -> npt.NDArray[Any]:
        """Concatenate the parts along axis 0 into one new host array (numbers are stacked)."""
        return self._pool._open().gather(self._parts)

    def __repr__(self) -> str:
        return f"<Sharded: {len(self)} parts on {self._pool.kind}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Sharded cannot be pickled (a function shipped to the devices must not capture one): "
            "pass it to map() as an argument, and each device gets its own part"
        )


def _select(available: list[int], devices: int | Sequence[int] | None, what: str) -> list[int]:
    """The indices a pool uses: all, the first ``devices``, or exactly those listed."""
    listed = ", ".join(map(str, available))
    if devices is None:
        return available
    if isinstance(devices, bool) or not isinstance(devices, int | Sequence):
        raise InvalidArgument(
            f"devices must be a count or a list of indices; got {devices!r}", field="devices"
        )
    if isinstance(devices, int):
        if devices < 1:
            raise InvalidArgument(f"devices must be at least 1; got {devices}", field="devices")
        if devices > len(available):
            raise InvalidArgument(
                f"asked for {devices} devices but there are {len(available)} {what} ({listed})",
                field="devices",
            )
        return available[:devices]
    chosen = list(devices)
    if not chosen:
        raise InvalidArgument("devices is an empty list; name at least one device", field="devices")
    for index in chosen:
        if isinstance(index, bool) or not isinstance(index, int) or index not in available:
            raise InvalidArgument(f"device {index!r} is not one of the {what} ({listed})", field="devices")
    if len(set(chosen)) != len(chosen):
        raise InvalidArgument(f"devices lists an index twice: {chosen}", field="devices")
    return chosen


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)
