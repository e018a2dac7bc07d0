"""What :class:`~dsdk.intra.DevicePool` asks of a backend (CPU workers or CUDA devices)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from domainos.errors import InvalidArgument

from ._types import Device, DeviceKind, PoolStats

#: allreduce op name -> the numpy ufunc (by name) that combines two parts elementwise.
OPS: dict[str, str] = {"sum": "add", "max": "maximum", "min": "minimum", "prod": "multiply"}


@dataclass(frozen=True, slots=True)
class Split:
    """A map argument given part-wise: ``parts[rank]`` goes to the device of that rank."""

    parts: Sequence[Any]


class Backend(Protocol):
    """One pool's devices. Parts are backend objects; the pool validates before calling."""

    kind: DeviceKind
    devices: list[Device]

    def scatter(self, x: npt.NDArray[Any]) -> list[Any]: ...

    def map(self, fn: Callable[..., Any], args: Sequence[Any], what: str) -> list[Any]: ...

    def reduce(self, fn: Callable[[Any, Any], Any], parts: Sequence[Any], what: str) -> Any: ...

    def allreduce(self, parts: Sequence[Any], op: str, inplace: bool) -> list[Any]: ...

    def host(self, part: Any) -> Any: ...

    def local(self, part: Any) -> Any: ...

    def gather(self, parts: Sequence[Any]) -> npt.NDArray[Any]: ...

    def stats(self) -> PoolStats: ...

    def close(self) -> None: ...


def row_bounds(rows: int, n: int) -> list[tuple[int, int]]:
    """``[start, end)`` of ``n`` nearly equal row ranges (the first ``rows % n`` one row longer)."""
    size, extra = divmod(rows, n)
    bounds, start = [], 0
    for rank in range(n):
        end = start + size + (1 if rank < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def concat(parts: Sequence[Any]) -> npt.NDArray[Any]:
    """Host parts joined along axis 0; scalars and 0-d parts are stacked into a 1-d array."""
    arrays = [np.asarray(p) for p in parts]
    for rank, a in enumerate(arrays):
        if a.dtype.hasobject and not isinstance(parts[rank], np.ndarray):
            raise InvalidArgument(
                f"part {rank} is a {type(parts[rank]).__name__}, not an array or a number: "
                "gather joins arrays along axis 0"
            )
    if all(a.ndim == 0 for a in arrays):
        return np.stack(arrays)
    try:
        return np.concatenate(arrays, axis=0)
    except ValueError as exc:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise InvalidArgument(f"cannot join the parts along axis 0 (shapes {shapes}): {exc}") from exc


def common_shape(shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The one shape all parts of an allreduce share, or InvalidArgument."""
    if any(s != shapes[0] for s in shapes):
        listed = ", ".join(f"part {i}: {s}" for i, s in enumerate(shapes))
        raise InvalidArgument(f"allreduce needs parts of one shape; got {listed}")
    return tuple(shapes[0])
