"""What a pool computes on and what it counted: :class:`Device` and :class:`PoolStats`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DeviceKind = Literal["cpu", "cuda"]


@dataclass(frozen=True, slots=True)
class Device:
    """One device of a :class:`~dsdk.intra.DevicePool`.

    ``index`` is the hardware number: the CPU core a worker is pinned to, or the CUDA ordinal.
    ``str(device)`` is ``"cpu:3"`` / ``"cuda:0"``.
    """

    kind: DeviceKind
    index: int
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.index}"


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counters of one pool since it opened (:meth:`~dsdk.intra.DevicePool.stats`).

    ``pipe_bytes_sent``/``pipe_bytes_received`` are the control messages that crossed process
    boundaries (functions, part descriptors, small results); array data lives in shared memory and
    is counted in ``shm_bytes_created``. The CUDA backend has no pipes: those stay 0.
    """

    calls: int
    pipe_bytes_sent: int
    pipe_bytes_received: int
    shm_bytes_created: int
    workers_restarted: int
