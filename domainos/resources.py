"""Schedulable resources: parsing, arithmetic and the protobuf boundary."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from domainos.errors import InvalidArgument

if TYPE_CHECKING:
    from domainos.api.v1 import common_pb2

_MEM_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEM_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
MAX_CPUS = 4096
MAX_MEMORY = 64 * 2**40
MAX_GPUS = 1024


def parse_cpus(value: object, field: str = "cpus") -> int:
    """Parse a CPU amount (``2``, ``0.5``, ``"500m"``) into millicores."""
    if isinstance(value, bool):
        raise InvalidArgument(f"expected a number of CPUs, got {value!r}", field=field)
    if isinstance(value, str):
        text = value.strip()
        try:
            millis = float(text[:-1]) if text.endswith("m") else float(text) * 1000
        except ValueError:
            raise InvalidArgument(
                f"expected a number of CPUs such as 2, 0.5 or '500m', got {value!r}", field=field
            ) from None
    elif isinstance(value, (int, float)):
        millis = float(value) * 1000
    else:
        raise InvalidArgument(f"expected a number of CPUs, got {type(value).__name__}", field=field)
    if not math.isfinite(millis) or millis <= 0:
        raise InvalidArgument(f"must be greater than 0, got {value!r}", field=field)
    if millis > MAX_CPUS * 1000:
        raise InvalidArgument(f"must be at most {MAX_CPUS}, got {value!r}", field=field)
    return max(1, round(millis))


def parse_memory(value: object, field: str = "memory") -> int:
    """Parse a memory size (``1073741824``, ``"512Mi"``, ``"2G"``, ``"1.5GiB"``) into bytes."""
    if isinstance(value, bool):
        raise InvalidArgument(f"expected a size, got {value!r}", field=field)
    if isinstance(value, (int, float)):
        amount: float = float(value)
    elif isinstance(value, str):
        m = _MEM_RE.match(value)
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _MEM_UNITS:
            raise InvalidArgument(
                f"expected a size such as 512Mi, 2Gi, 1G or a number of bytes, got {value!r}",
                field=field,
            )
        amount = float(m.group(1)) * _MEM_UNITS[unit]
    else:
        raise InvalidArgument(f"expected a size, got {type(value).__name__}", field=field)
    if not math.isfinite(amount) or amount <= 0:
        raise InvalidArgument(f"must be greater than 0, got {value!r}", field=field)
    if amount > MAX_MEMORY:
        raise InvalidArgument(f"must be at most 64Ti, got {value!r}", field=field)
    return int(amount)


def parse_gpus(value: object, field: str = "gpus") -> int:
    """Parse a whole number of GPUs (0 allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgument(f"expected a whole number of GPUs, got {value!r}", field=field)
    try:
        n = int(value)
    except ValueError:
        raise InvalidArgument(f"expected a whole number of GPUs, got {value!r}", field=field) from None
    if n < 0 or n > MAX_GPUS:
        raise InvalidArgument(f"must be between 0 and {MAX_GPUS}, got {value!r}", field=field)
    return n


def format_memory(n: int) -> str:
    """Human form of a byte count, binary units (``1.5Gi``)."""
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            v = n / size
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"


def format_cpus(millis: int) -> str:
    """Cores as people write them: ``2``, ``0.5``, ``0.001`` (exact to the millicore)."""
    whole, frac = divmod(millis, 1000)
    return str(whole) if not frac else f"{whole}.{frac:03d}".rstrip("0")


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU in millicores, memory in bytes, whole GPUs (of ``gpu_model`` if set).

    A *request* may ask for a fraction of one GPU instead (``gpus == 0``): ``gpu_share`` percent of
    its compute (1..99) and ``gpu_share_memory`` bytes of its memory (0 = the same fraction of the
    card). Capacity and free vectors never carry shares (partly used cards are counted apart), so
    the arithmetic below keeps ``self``'s share fields and ignores ``other``'s.
    """

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    gpu_model: str = ""
    gpu_share: int = 0
    gpu_share_memory: int = 0

    def fits_in(self, free: Resources) -> bool:
        """True when this request fits in ``free`` (GPU model must match when one is asked for)."""
        if self.gpus and self.gpu_model and free.gpu_model and self.gpu_model != free.gpu_model:
            return False
        return (
            self.cpu_millis <= free.cpu_millis
            and self.memory_bytes <= free.memory_bytes
            and self.gpus <= free.gpus
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.gpus + other.gpus,
            self.gpu_model or other.gpu_model,
            self.gpu_share,
            self.gpu_share_memory,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.gpus - other.gpus,
            self.gpu_model,
            self.gpu_share,
            self.gpu_share_memory,
        )

    def describe(self) -> str:
        parts = [f"cpus={format_cpus(self.cpu_millis)}", f"memory={format_memory(self.memory_bytes)}"]
        if self.gpus:
            parts.append(f"gpus={self.gpus}" + (f" ({self.gpu_model})" if self.gpu_model else ""))
        elif self.gpu_share:
            share = f"gpus=0.{self.gpu_share:02d}".rstrip("0")
            if self.gpu_share_memory:
                share += f" gpu_memory={format_memory(self.gpu_share_memory)}"
            parts.append(share + (f" ({self.gpu_model})" if self.gpu_model else ""))
        return " ".join(parts)

    def to_dict(self) -> dict[str, int | str]:
        """The JSON form the stores and state files keep (share fields only on a share request)."""
        out: dict[str, int | str] = {
            "cpu_millis": self.cpu_millis,
            "memory_bytes": self.memory_bytes,
            "gpus": self.gpus,
            "gpu_model": self.gpu_model,
        }
        if self.gpu_share:
            out["gpu_share"] = self.gpu_share
            out["gpu_share_memory"] = self.gpu_share_memory
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Resources:
        """Inverse of :meth:`to_dict`; missing keys are zero (records written by older versions)."""
        if not data:
            return cls()
        return cls(
            int(data.get("cpu_millis", 0)),
            int(data.get("memory_bytes", 0)),
            int(data.get("gpus", 0)),
            str(data.get("gpu_model", "")),
            int(data.get("gpu_share", 0)),
            int(data.get("gpu_share_memory", 0)),
        )

    def to_proto(self) -> common_pb2.Resources:
        from domainos.api.v1 import common_pb2

        return common_pb2.Resources(
            cpu_millis=self.cpu_millis,
            memory_bytes=self.memory_bytes,
            gpus=self.gpus,
            gpu_model=self.gpu_model,
            gpu_share_percent=self.gpu_share,
            gpu_share_memory_bytes=self.gpu_share_memory,
        )

    @classmethod
    def from_proto(cls, msg: common_pb2.Resources) -> Resources:
        return cls(
            msg.cpu_millis,
            msg.memory_bytes,
            msg.gpus,
            msg.gpu_model,
            msg.gpu_share_percent,
            msg.gpu_share_memory_bytes,
        )
