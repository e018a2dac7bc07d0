"""What this node is and how busy it is: real discovery (psutil + NVML) or a declared inventory.

Two probes share one shape (:class:`HardwareProbe`):

* :class:`RealHardware` discovers CPUs and memory with psutil and GPUs through NVML (the
  ``pynvml`` module of ``nvidia-ml-py``). The NVML module is injectable so the GPU path is
  testable without a GPU; when NVML cannot start (no driver) the node simply has no GPUs.
* :class:`SimulatedHardware` declares an inventory (:class:`~domainos.topology.SimInventory`),
  labels the node ``domainos.io/simulated=true`` and derives usage from the running tasks'
  requests, never from this machine's psutil numbers.

Both report the node's block (declared) and the dataset shards it holds (declared, plus the
directories under ``<data_dir>/datasets/``; :meth:`HardwareProbe.refresh` rescans them). A GPU's
NVLink domain is the connected component of its NVLink peers, numbered by its lowest index.

GPU health signals (:mod:`domainos.health` says what they mean) come with every sample:

* real GPUs: volatile ECC totals and the clocks-event (throttle) reasons, read per sample, and Xid
  errors from an NVML event set drained without blocking at each sample (:class:`Nvml`). A board
  without ECC, an old driver or a binding without the event API simply reports none of them;
* simulated GPUs: faults injected with :meth:`SimulatedHardware.inject` (the fleet simulator), or
  through the fault file ``<data_dir>/inject-faults.json`` of a running simulated agent
  (:data:`FAULT_FILE`; ``python -m node_agent inject`` writes it).

Per GPU, ``last_xid`` is the worst Xid seen since the agent started (critical, then warning, then
any other; within one class the latest) and ``xid_count`` counts them all (:func:`worse_xid`).

Calls here block (NVML, /proc); the agent runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import platform
import socket
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, Protocol

import domainos
from domainos.errors import InvalidArgument
from domainos.health import CRITICAL_XIDS, WARNING_XIDS, critical_conditions, warning_conditions
from domainos.model import (
    MAX_GPU_TDP_W,
    DatasetShard,
    GpuDevice,
    GpuUsage,
    HealthStatus,
    NodeHealth,
    NodeInventory,
    NodeUsage,
    nvlink_components,
)
from domainos.resources import Resources
from domainos.topology import SimInventory
from node_agent._config import SIMULATED_LABEL
from node_agent._datasets import node_datasets

log = logging.getLogger(__name__)

_NVLINK_DEVICE_TYPE_SWITCH = 2

#: NVML errors that mean "this GPU has no (more) NVLinks": not supported (PCIe cards), invalid
#: argument (a link index past the device's count), function not found (an old driver).
_NVML_ERROR_INVALID_ARGUMENT = 2
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_FUNCTION_NOT_FOUND = 13
_NO_MORE_LINKS = (_NVML_ERROR_INVALID_ARGUMENT, _NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_FUNCTION_NOT_FOUND)
_NVML_ERROR_UNINITIALIZED = 1
_NVML_ERROR_NO_PERMISSION = 4
_NVML_ERROR_TIMEOUT = 10
#: "This GPU (or driver) will never answer this call": stop asking.
_NEVER_SUPPORTED = (_NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_FUNCTION_NOT_FOUND)
#: Event-wait errors after which the event set is given up (others are retried next sample).
_EVENTS_BROKEN = (
    _NVML_ERROR_UNINITIALIZED,
    _NVML_ERROR_NOT_SUPPORTED,
    _NVML_ERROR_NO_PERMISSION,
    _NVML_ERROR_FUNCTION_NOT_FOUND,
)

#: NVML constants (pynvml names them the same; these are the fallbacks for older bindings).
_NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
_NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
_NVML_VOLATILE_ECC = 0
_EVENT_DOUBLE_BIT_ECC = 0x2  # nvmlEventTypeDoubleBitEccError
_EVENT_XID_CRITICAL = 0x8  # nvmlEventTypeXidCriticalError
#: The Xid NVML gives an Xid event it cannot name.
XID_UNKNOWN = 999
#: A double-bit ECC event carries no Xid (its eventData is 0): it counts as this one.
XID_DOUBLE_BIT_ECC = 48
#: At most this many events are read per sample: an event storm must not stall sampling (the
#: rest are read at the next samples).
MAX_EVENTS_PER_SAMPLE = 256

#: The fault file of a running simulated agent, under its ``data_dir`` (see :func:`parse_faults`).
FAULT_FILE = "inject-faults.json"
#: Where an applied (or rejected) fault file is moved, next to it (the last one is kept).
FAULT_FILE_APPLIED = FAULT_FILE + ".applied"
FAULT_FILE_REJECTED = FAULT_FILE + ".rejected"
#: Largest fault file read (a list of a few objects; anything bigger is a mistake).
MAX_FAULT_FILE_BYTES = 1 << 20
#: Bounds of injected values (the wire format's: ``last_xid`` is int32, ECC counts int64,
#: ``throttle_reasons`` uint64); temperatures a GPU can plausibly report.
MAX_XID = 2**31 - 1
MAX_ECC_COUNT = 2**62
MAX_THROTTLE_REASONS = 2**64 - 1
MIN_TEMPERATURE_C = -50.0
MAX_TEMPERATURE_C = 200.0
MAX_GPU_INDEX = 2**31 - 1

#: (resources requested, GPU indexes assigned) of one running task.
RunningTask = tuple[Resources, Sequence[int]]


class HardwareProbe(Protocol):
    """Inventory, usage and health of one node."""

    simulated: bool

    def inventory(self) -> NodeInventory: ...

    def refresh(self) -> bool:
        """Rescan what can change while the node runs (dataset shards on disk); True when the
        inventory changed. Blocks (reads directories)."""
        ...

    def sample(self, running: Sequence[RunningTask]) -> NodeUsage: ...

    def health(self, usage: NodeUsage) -> NodeHealth: ...

    def cores(self) -> list[int]:
        """CPU indexes tasks may be pinned to."""
        ...

    def close(self) -> None: ...


def _os_name() -> str:
    return f"{platform.system()} {platform.release()} {platform.machine()}".strip()


def _node_labels(base: Mapping[str, str], region: str, simulated: bool) -> dict[str, str]:
    labels = dict(base)
    if region:
        labels.setdefault("domainos.io/region", region)
    if simulated:
        labels[SIMULATED_LABEL] = "true"
    return labels


def _text(value: Any) -> str:
    """NVML strings arrive as ``str`` or ``bytes`` depending on the binding's version."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").strip("\x00 ")
    return str(value).strip()


def normalize_bus_id(bus_id: Any) -> tuple[int, int, int, int] | None:
    """``00000000:18:00.0`` and ``0000:18:00.0`` both become ``(0, 0x18, 0, 0)``."""
    text = _text(bus_id).lower()
    parts = text.split(":")
    if len(parts) < 3:
        return None
    domain, bus, devfn = parts[-3], parts[-2], parts[-1]
    dev, _, fn = devfn.partition(".")
    try:
        return (int(domain, 16), int(bus, 16), int(dev, 16), int(fn or "0", 16))
    except ValueError:
        return None


def _nvml_error_code(exc: BaseException) -> int | None:
    """The NVML return code an ``NVMLError`` carries (``value``), if any."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


class _Datasets:
    """Declared shards plus the ones under ``data_dir``: the inventory's ``datasets``."""

    def __init__(self, declared: Mapping[str, Sequence[int]] | None, data_dir: str | None) -> None:
        self.declared = {k: tuple(v) for k, v in (declared or {}).items()}
        self.data_dir = data_dir

    def scan(self) -> tuple[DatasetShard, ...]:
        return node_datasets(self.declared, self.data_dir)

    def rescanned(self, inventory: NodeInventory) -> NodeInventory | None:
        """``inventory`` with the shards found now, or None when they did not change."""
        datasets = self.scan()
        if datasets == inventory.datasets:
            return None
        return dataclasses.replace(inventory, datasets=datasets)


def health_from_usage(usage: NodeUsage, problems: Sequence[str] = ()) -> NodeHealth:
    """UNHEALTHY on a critical Xid or an uncorrectable ECC error (:mod:`domainos.health`);
    DEGRADED when a GPU is too hot, throttled for trouble, showed a warning Xid, or NVML reported
    errors; else HEALTHY."""
    critical = critical_conditions(usage.gpus)
    conditions = critical + warning_conditions(usage.gpus) + list(problems)
    if critical:
        return NodeHealth(HealthStatus.UNHEALTHY, tuple(conditions))
    if conditions:
        return NodeHealth(HealthStatus.DEGRADED, tuple(conditions))
    return NodeHealth(HealthStatus.HEALTHY, ())


def _xid_class(xid: int) -> int:
    """2 critical, 1 warning, 0 any other Xid (:mod:`domainos.health`)."""
    return 2 if xid in CRITICAL_XIDS else 1 if xid in WARNING_XIDS else 0


def worse_xid(current: int, new: int) -> int:
    """The ``last_xid`` to report once ``new`` arrived after ``current`` (0: none yet): the worse
    class wins (critical > warning > any other); within one class the latest."""
    if current and _xid_class(new) < _xid_class(current):
        return current
    return new


@dataclasses.dataclass(frozen=True, slots=True)
class GpuFault:
    """One fault to inject into a simulated GPU (an entry of the fault file).

    ``xid`` adds one Xid error (``last_xid`` follows :func:`worse_xid`, ``xid_count`` + 1); the
    ECC counts are added to the GPU's; ``temperature_c`` overrides the simulated temperature and
    ``throttle_reasons`` replaces the throttle bitmask (0 clears it); None leaves either as it is.
    ``clear`` first drops every fault of ``gpu`` (of every GPU when ``gpu`` is None).
    """

    gpu: int | None
    xid: int | None = None
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    temperature_c: float | None = None
    throttle_reasons: int | None = None
    clear: bool = False

    #: The keys of one fault-file entry.
    FIELDS = ("gpu", "xid", "ecc_corrected", "ecc_uncorrected", "temperature_c", "throttle_reasons", "clear")

    @property
    def empty(self) -> bool:
        """Injects nothing (and clears nothing)."""
        return not self.clear and self == GpuFault(self.gpu)

    def validate(self, path: str = "") -> None:
        """InvalidArgument naming the field (``path.field``), why, and what is allowed."""

        def field(name: str) -> str:
            return f"{path}.{name}" if path else name

        def check_int(name: str, value: Any, low: int, high: int, what: str) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidArgument(f"must be {what} ({low} to {high}), got {value!r}", field=field(name))

        if not isinstance(self.clear, bool):
            raise InvalidArgument(f"must be true or false, got {self.clear!r}", field=field("clear"))
        if self.gpu is not None:
            check_int("gpu", self.gpu, 0, MAX_GPU_INDEX, "a GPU index")
        elif self != GpuFault(None, clear=True):
            raise InvalidArgument(
                "is required (the GPU index, 0 or more); only a clear of every GPU goes without it",
                field=field("gpu"),
            )
        if self.xid is not None:
            check_int("xid", self.xid, 1, MAX_XID, "an NVIDIA Xid number, e.g. 79")
        check_int("ecc_corrected", self.ecc_corrected, 0, MAX_ECC_COUNT, "a count of errors to add")
        check_int("ecc_uncorrected", self.ecc_uncorrected, 0, MAX_ECC_COUNT, "a count of errors to add")
        if self.throttle_reasons is not None:
            check_int(
                "throttle_reasons", self.throttle_reasons, 0, MAX_THROTTLE_REASONS, "an NVML reasons bitmask"
            )
        t = self.temperature_c
        if t is not None and (
            isinstance(t, bool)
            or not isinstance(t, int | float)
            or not math.isfinite(t)
            or not MIN_TEMPERATURE_C <= t <= MAX_TEMPERATURE_C
        ):
            raise InvalidArgument(
                f"must be degrees C from {MIN_TEMPERATURE_C:g} to {MAX_TEMPERATURE_C:g}, got {t!r}",
                field=field("temperature_c"),
            )

    def to_json(self) -> dict[str, Any]:
        """The fault-file entry: ``gpu`` and only the keys that do something."""
        out: dict[str, Any] = {} if self.gpu is None else {"gpu": self.gpu}
        if self.clear:
            out["clear"] = True
        for name in ("xid", "temperature_c", "throttle_reasons"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("ecc_corrected", "ecc_uncorrected"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, entry: Any, path: str = "") -> GpuFault:
        if not isinstance(entry, dict):
            raise InvalidArgument(f"must be an object, got {type(entry).__name__}", field=path or None)
        unknown = sorted(set(entry) - set(cls.FIELDS))
        if unknown:
            raise InvalidArgument(
                f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(cls.FIELDS)}",
                field=path or None,
            )
        fault = cls(
            gpu=entry.get("gpu"),
            xid=entry.get("xid"),
            ecc_corrected=entry.get("ecc_corrected", 0),
            ecc_uncorrected=entry.get("ecc_uncorrected", 0),
            temperature_c=entry.get("temperature_c"),
            throttle_reasons=entry.get("throttle_reasons"),
            clear=entry.get("clear", False),
        )
        fault.validate(path)
        return fault


def parse_faults(data: Any) -> list[GpuFault]:
    """The faults of a fault file, validated (InvalidArgument names ``[i].field``).

    The file (JSON) is a list of objects, applied in order::

        [{"gpu": 0, "xid": 79},
         {"gpu": 1, "ecc_uncorrected": 2, "ecc_corrected": 10},
         {"gpu": 2, "temperature_c": 95.0, "throttle_reasons": 64},
         {"clear": true}, {"gpu": 3, "clear": true}]

    Keys: ``gpu`` (index; required unless ``clear``), ``xid`` (one Xid error), ``ecc_corrected``
    and ``ecc_uncorrected`` (added), ``temperature_c`` (override), ``throttle_reasons`` (NVML
    bitmask, replaces), ``clear`` (drop the GPU's faults first; without ``gpu``: every GPU's).
    See :class:`GpuFault`.
    """
    if not isinstance(data, list):
        raise InvalidArgument(f"must be a list of fault objects, got {type(data).__name__}", field="faults")
    return [GpuFault.from_json(entry, f"[{i}]") for i, entry in enumerate(data)]


def write_faults(data_dir: str | os.PathLike[str], faults: Sequence[GpuFault]) -> str:
    """Queue ``faults`` for the simulated agent whose ``data_dir`` this is; returns the file's path.

    Safe against the agent consuming the file meanwhile: a pending file (not yet applied) is first
    claimed by renaming it away, so either the agent applied it already or its faults come first in
    the new file, never both; the new file is written aside and linked into place (which, unlike a
    rename, never replaces a file another writer published in between: then this starts over).
    """
    for fault in faults:
        fault.validate()
    directory = os.fspath(data_dir)
    path = os.path.join(directory, FAULT_FILE)
    claim = os.path.join(directory, f".{FAULT_FILE}.claim.{os.getpid()}")
    tmp = os.path.join(directory, f".{FAULT_FILE}.tmp.{os.getpid()}")
    new = [f.to_json() for f in faults]
    for _ in range(100):
        pending: list[Any] = []
        try:
            os.rename(path, claim)
        except FileNotFoundError:
            pass  # nothing pending (or the agent just took it)
        else:
            try:
                with open(claim, encoding="utf-8") as f:
                    pending = [g.to_json() for g in parse_faults(json.load(f))]
            except (OSError, ValueError, InvalidArgument) as exc:
                log.warning("dropping the unreadable pending fault file %s: %s", path, exc)
            with contextlib.suppress(OSError):
                os.unlink(claim)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(pending + new, f)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            new = pending + new  # another writer published one: claim it too and retry
            continue
        except OSError:
            os.replace(tmp, path)  # a file system without hard links
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return path
    raise OSError(f"could not publish {path}: it keeps being replaced")


def _handle_key(handle: Any) -> Any:
    """A hashable key for an NVML device handle: a ctypes pointer (which compares by identity)
    becomes the address it points at; anything else stands for itself."""
    try:
        return ("ptr", ctypes.addressof(handle.contents))
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        hash(handle)
    except TypeError:
        return None
    return ("obj", handle)


@dataclasses.dataclass(slots=True)
class _GpuSignals:
    """What the agent keeps per real GPU between samples."""

    ecc: bool = True  # ask for ECC counts (False after NOT_SUPPORTED: a board without ECC)
    throttle: bool = True  # ask for throttle reasons
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    last_xid: int = 0
    xid_count: int = 0


class Nvml:
    """The part of NVML the agent uses, over an injectable ``pynvml``-like module."""

    def __init__(self, module: Any) -> None:
        self._m = module
        self._handles: list[Any] = []
        self.problems: dict[int, str] = {}
        self._signals: list[_GpuSignals] = []
        #: The NVML event set Xid errors arrive on (None: not watched).
        self._events: Any = None
        self._event_wait: Callable[[Any, int], Any] | None = None
        self._handle_index: dict[Any, int] = {}
        self._uuid_index: dict[str, int] | None = None
        self._throttle_fn: Callable[[Any], Any] | None = None
        self._throttle_fallback: Callable[[Any], Any] | None = None

    @classmethod
    def open(cls, module: Any | None = None) -> Nvml | None:
        """Initialise NVML; ``None`` (logged once at info) when there is no driver or binding."""
        if module is None:
            try:
                import pynvml

                module = pynvml
            except ImportError:
                log.info("NVML binding (nvidia-ml-py) not installed: no GPUs discovered")
                return None
        try:
            module.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            log.info("NVML not available (%s): no GPUs discovered", exc)
            return None
        nvml = cls(module)
        try:
            count = int(module.nvmlDeviceGetCount())
            nvml._handles = [module.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as exc:
            log.warning("NVML initialised but listing GPUs failed (%s): no GPUs discovered", exc)
            nvml.close()
            return None
        nvml._open_signals()
        return nvml

    # ------------------------------------------------------------------ health signals

    def _open_signals(self) -> None:
        """Per-GPU signal state, the throttle call this binding has, and the Xid event set."""
        m = self._m
        self._signals = [_GpuSignals() for _ in self._handles]
        self._handle_index = {}
        for i, h in enumerate(self._handles):
            key = _handle_key(h)
            if key is not None:
                self._handle_index.setdefault(key, i)
        # nvidia-ml-py 12.535+ calls them clocks-event reasons; older bindings throttle reasons.
        current = getattr(m, "nvmlDeviceGetCurrentClocksEventReasons", None)
        legacy = getattr(m, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        self._throttle_fn = current or legacy
        self._throttle_fallback = legacy if current is not None else None
        try:
            self._open_events()
        except Exception as exc:  # never let the event API break discovery
            log.info("NVML events not available (%s): Xid errors are not watched", exc)
            self._free_events()

    def _open_events(self) -> None:
        m = self._m
        create = getattr(m, "nvmlEventSetCreate", None)
        register = getattr(m, "nvmlDeviceRegisterEvents", None)
        wait = getattr(m, "nvmlEventSetWait_v2", None) or getattr(m, "nvmlEventSetWait", None)
        if not self._handles:
            return
        if create is None or register is None or wait is None:
            log.info("the NVML binding has no event API: Xid errors are not watched")
            return
        try:
            event_set = create()
        except Exception as exc:
            log.info("NVML events not available (%s): Xid errors are not watched", exc)
            return
        self._events = event_set
        wanted = int(getattr(m, "nvmlEventTypeXidCriticalError", _EVENT_XID_CRITICAL)) | int(
            getattr(m, "nvmlEventTypeDoubleBitEccError", _EVENT_DOUBLE_BIT_ECC)
        )
        supported_fn = getattr(m, "nvmlDeviceGetSupportedEventTypes", None)
        watched: list[int] = []
        missed: list[str] = []
        for i, h in enumerate(self._handles):
            try:
                supported = int(supported_fn(h)) if supported_fn is not None else wanted
                types = wanted & supported
                if not types:
                    missed.append(f"gpu{i}: no Xid events supported")
                    continue
                register(h, types, event_set)
                watched.append(i)
            except Exception as exc:
                missed.append(f"gpu{i}: {exc}")
        if missed:
            log.info("NVML Xid events not watched on %s", "; ".join(missed))
        if not watched:
            self._free_events()
            return
        self._event_wait = wait

    def _free_events(self) -> None:
        event_set, self._events, self._event_wait = self._events, None, None
        if event_set is None:
            return
        free = getattr(self._m, "nvmlEventSetFree", None)
        if free is not None:
            try:
                free(event_set)
            except Exception as exc:
                log.debug("nvmlEventSetFree failed: %s", exc)

    def _drain_events(self) -> None:
        """Read every Xid event waiting (timeout 0: never blocks), at most
        :data:`MAX_EVENTS_PER_SAMPLE` per call."""
        wait, event_set = self._event_wait, self._events
        if wait is None or event_set is None:
            return
        for _ in range(MAX_EVENTS_PER_SAMPLE):
            try:
                event = wait(event_set, 0)
            except Exception as exc:
                code = _nvml_error_code(exc)
                if code == _NVML_ERROR_TIMEOUT:
                    return  # nothing (more) waiting
                if code is None or code in _EVENTS_BROKEN:
                    log.info("NVML event wait failed (%s): Xid errors are no longer watched", exc)
                    self._free_events()
                else:  # e.g. a GPU is lost: try again at the next sample
                    log.debug("NVML event wait failed: %s", exc)
                return
            self._on_event(event)

    def _on_event(self, event: Any) -> None:
        i = self._event_gpu(getattr(event, "device", None))
        if i is None:
            log.debug("NVML event for a device that is not ours ignored")
            return
        event_type = int(getattr(event, "eventType", 0) or 0)
        data = int(getattr(event, "eventData", 0) or 0)
        if event_type & _EVENT_XID_CRITICAL:
            xid = data or XID_UNKNOWN
        elif event_type & _EVENT_DOUBLE_BIT_ECC:
            xid = XID_DOUBLE_BIT_ECC
        else:
            return
        sig = self._signals[i]
        sig.xid_count += 1
        sig.last_xid = worse_xid(sig.last_xid, xid)
        level = logging.WARNING if _xid_class(xid) else logging.INFO  # others: the application's
        log.log(level, "gpu%d: Xid %d (%d since the agent started)", i, xid, sig.xid_count)

    def _event_gpu(self, device: Any) -> int | None:
        """Our index of an event's device: by handle, else by UUID (handles of some bindings are
        fresh objects per event); None for a device that is not ours."""
        if device is None:
            return None
        key = _handle_key(device)
        if key is not None and key in self._handle_index:
            return self._handle_index[key]
        try:
            uuid = _text(self._m.nvmlDeviceGetUUID(device))
        except Exception:
            return None
        if self._uuid_index is None:
            self._uuid_index = {}
            for i, h in enumerate(self._handles):
                try:
                    self._uuid_index[_text(self._m.nvmlDeviceGetUUID(h))] = i
                except Exception as exc:
                    log.debug("gpu%d: no UUID (%s)", i, exc)
        return self._uuid_index.get(uuid)

    def _ecc(self, i: int, h: Any) -> None:
        """Refresh GPU ``i``'s volatile ECC totals (kept as they were when a read fails)."""
        sig = self._signals[i]
        if not sig.ecc:
            return
        m = self._m
        get = getattr(m, "nvmlDeviceGetTotalEccErrors", None)
        if get is None:
            sig.ecc = False
            return
        volatile = getattr(m, "NVML_VOLATILE_ECC", _NVML_VOLATILE_ECC)
        try:
            corrected = int(
                get(
                    h,
                    getattr(m, "NVML_MEMORY_ERROR_TYPE_CORRECTED", _NVML_MEMORY_ERROR_TYPE_CORRECTED),
                    volatile,
                )
            )
            uncorrected = int(
                get(
                    h,
                    getattr(m, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", _NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
                    volatile,
                )
            )
        except Exception as exc:
            if _nvml_error_code(exc) in _NEVER_SUPPORTED:
                sig.ecc = False  # no ECC on this board (or ECC off): do not ask again
            else:
                log.debug("gpu%d: no ECC counts (%s)", i, exc)
            return
        sig.ecc_corrected, sig.ecc_uncorrected = max(0, corrected), max(0, uncorrected)

    def _throttle(self, i: int, h: Any) -> int:
        sig = self._signals[i]
        if not sig.throttle or self._throttle_fn is None:
            return 0
        try:
            return int(self._throttle_fn(h))
        except Exception as exc:
            code = _nvml_error_code(exc)
            if code == _NVML_ERROR_FUNCTION_NOT_FOUND and self._throttle_fallback is not None:
                # A new binding over an old driver: it only has the throttle-reasons name.
                self._throttle_fn, self._throttle_fallback = self._throttle_fallback, None
                return self._throttle(i, h)
            if code in _NEVER_SUPPORTED:
                sig.throttle = False
            else:
                log.debug("gpu%d: no throttle reasons (%s)", i, exc)
            return 0

    @property
    def count(self) -> int:
        return len(self._handles)

    def devices(self) -> tuple[GpuDevice, ...]:
        m = self._m
        bus_to_index: dict[tuple[int, int, int, int], int] = {}
        base: list[tuple[int, str, str, int]] = []
        for i, h in enumerate(self._handles):
            uuid = _text(m.nvmlDeviceGetUUID(h))
            name = _text(m.nvmlDeviceGetName(h))
            memory = int(m.nvmlDeviceGetMemoryInfo(h).total)
            base.append((i, uuid, name, memory))
            try:
                bus = normalize_bus_id(m.nvmlDeviceGetPciInfo(h).busId)
            except Exception as exc:
                log.info("gpu%d: no PCI info (%s)", i, exc)
                bus = None
            if bus is not None:
                bus_to_index[bus] = i
        peers, on_switch = self._nvlink_peers(bus_to_index)
        # GPUs wired to NVSwitches (HGX/DGX boards) all reach each other over NVLink.
        for i in on_switch:
            peers[i].update(j for j in on_switch if j != i)
        domains = nvlink_components({i: sorted(p) for i, p in peers.items()})
        return tuple(
            GpuDevice(
                index=i,
                uuid=uuid,
                model=name,
                memory_bytes=mem,
                nvlink_peers=tuple(sorted(peers[i])),
                nvlink_domain=domains[i],
                tdp_w=self._tdp_w(i),
            )
            for i, uuid, name, mem in base
        )

    def _tdp_w(self, i: int) -> int:
        """The board's power limit in W: the enforced limit (what the board is held to now, which
        an administrator may have lowered), else the largest settable limit; 0 when NVML has
        neither (the master then uses its model table)."""
        m, h = self._m, self._handles[i]
        milliwatts = 0
        try:
            milliwatts = int(m.nvmlDeviceGetEnforcedPowerLimit(h))
        except Exception as exc:
            log.debug("gpu%d: no enforced power limit (%s)", i, exc)
            try:
                milliwatts = int(m.nvmlDeviceGetPowerManagementLimitConstraints(h)[1])
            except Exception as exc2:
                log.info("gpu%d: no power limit from NVML (%s); tdp unknown", i, exc2)
        watts = round(milliwatts / 1000)
        if not 0 <= watts <= MAX_GPU_TDP_W:  # a broken reading must not make the inventory invalid
            log.warning("gpu%d: NVML power limit %d W is implausible; tdp unknown", i, watts)
            return 0
        return watts

    def _nvlink_peers(
        self, bus_to_index: Mapping[tuple[int, int, int, int], int]
    ) -> tuple[dict[int, set[int]], set[int]]:
        m = self._m
        max_links = int(getattr(m, "NVML_NVLINK_MAX_LINKS", 18))
        enabled = getattr(m, "NVML_FEATURE_ENABLED", 1)
        peers: dict[int, set[int]] = {i: set() for i in range(len(self._handles))}
        on_switch: set[int] = set()
        for i, h in enumerate(self._handles):
            for link in range(max_links):
                try:
                    if m.nvmlDeviceGetNvLinkState(h, link) != enabled:
                        continue
                except Exception as exc:
                    if _nvml_error_code(exc) in _NO_MORE_LINKS:
                        break  # no NVLink at all (PCIe cards), or past the device's last link
                    log.debug("gpu%d link %d: no state (%s)", i, link, exc)
                    continue
                remote_type = None
                get_type = getattr(m, "nvmlDeviceGetNvLinkRemoteDeviceType", None)
                if get_type is not None:
                    try:
                        remote_type = get_type(h, link)
                    except Exception:
                        remote_type = None
                if remote_type == _NVLINK_DEVICE_TYPE_SWITCH:
                    on_switch.add(i)
                    continue
                try:
                    remote = normalize_bus_id(m.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)
                except Exception as exc:
                    log.debug("gpu%d link %d: no remote PCI info (%s)", i, link, exc)
                    continue
                j = bus_to_index.get(remote) if remote is not None else None
                if j is not None and j != i:
                    peers[i].add(j)
        return peers, on_switch

    def sample(self) -> tuple[tuple[GpuUsage, ...], list[str]]:
        """Per-GPU usage and health signals, plus a condition for every GPU NVML could not read.

        A GPU NVML cannot read any more is still reported when it showed an Xid or uncorrectable
        ECC errors before (a GPU that fell off the bus must not hide its Xid 79)."""
        m = self._m
        out: list[GpuUsage] = []
        problems: list[str] = []
        temp_sensor = getattr(m, "NVML_TEMPERATURE_GPU", 0)
        self._drain_events()
        for i, h in enumerate(self._handles):
            sig = self._signals[i]
            try:
                util = float(m.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = int(m.nvmlDeviceGetMemoryInfo(h).used)
                temp = float(m.nvmlDeviceGetTemperature(h, temp_sensor))
            except Exception as exc:
                problems.append(f"gpu{i}: nvml error: {exc}")
                if sig.xid_count or sig.ecc_uncorrected:
                    out.append(
                        GpuUsage(
                            i,
                            ecc_corrected=sig.ecc_corrected,
                            ecc_uncorrected=sig.ecc_uncorrected,
                            last_xid=sig.last_xid,
                            xid_count=sig.xid_count,
                        )
                    )
                continue
            try:
                power = float(m.nvmlDeviceGetPowerUsage(h)) / 1000.0  # milliwatts
            except Exception:
                power = 0.0  # not every board reports power
            self._ecc(i, h)
            out.append(
                GpuUsage(
                    i,
                    util,
                    mem,
                    temp,
                    power,
                    ecc_corrected=sig.ecc_corrected,
                    ecc_uncorrected=sig.ecc_uncorrected,
                    last_xid=sig.last_xid,
                    xid_count=sig.xid_count,
                    throttle_reasons=self._throttle(i, h),
                )
            )
        return tuple(out), problems

    def close(self) -> None:
        self._free_events()
        try:
            self._m.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown failed: %s", exc)


class RealHardware:
    """Discovery and sampling on this machine."""

    simulated = False

    def __init__(
        self,
        node_id: str,
        *,
        labels: Mapping[str, str] | None = None,
        region: str = "",
        nvml_module: ModuleType | Any | None = None,
        block: str = "",
        datasets: Mapping[str, Sequence[int]] | None = None,
        data_dir: str | None = None,
    ) -> None:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        self._psutil = psutil
        self.node_id = node_id
        self._labels = _node_labels(labels or {}, region, simulated=False)
        self._block = block
        self._datasets = _Datasets(datasets, data_dir)
        self._nvml = Nvml.open(nvml_module)
        self._problems: list[str] = []
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement
        self._inventory = self._discover()

    def _discover(self) -> NodeInventory:
        ps = self._psutil
        gpus = self._nvml.devices() if self._nvml is not None else ()
        return NodeInventory(
            node_id=self.node_id,
            hostname=socket.gethostname(),
            simulated=False,
            cpu_cores=int(ps.cpu_count(logical=True) or 1),
            memory_bytes=int(ps.virtual_memory().total),
            gpus=gpus,
            labels=self._labels,
            agent_version=domainos.__version__,
            os=_os_name(),
            block=self._block,
            datasets=self._datasets.scan(),
        )

    def inventory(self) -> NodeInventory:
        return self._inventory

    def refresh(self) -> bool:
        changed = self._datasets.rescanned(self._inventory)
        if changed is None:
            return False
        self._inventory = changed
        return True

    def sample(self, running: Sequence[RunningTask]) -> NodeUsage:
        ps = self._psutil
        vm = ps.virtual_memory()
        gpus: tuple[GpuUsage, ...] = ()
        self._problems = []
        if self._nvml is not None:
            gpus, self._problems = self._nvml.sample()
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = 0.0
        return NodeUsage(
            cpu_percent=float(ps.cpu_percent(interval=None)),
            memory_used_bytes=int(vm.total - vm.available),
            gpus=gpus,
            load1=float(load1),
        )

    def health(self, usage: NodeUsage) -> NodeHealth:
        return health_from_usage(usage, self._problems)

    def cores(self) -> list[int]:
        try:
            return sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return list(range(self._inventory.cpu_cores))

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()
            self._nvml = None


@dataclasses.dataclass(slots=True)
class _SimGpuFaults:
    """The faults injected into one simulated GPU so far."""

    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    last_xid: int = 0
    xid_count: int = 0
    temperature_c: float | None = None
    throttle_reasons: int = 0


class SimulatedHardware:
    """A declared inventory; usage follows the running tasks' requests.

    Faults injected per GPU (:meth:`inject`, :meth:`clear_faults`, or the fault file
    ``<data_dir>/inject-faults.json``, :func:`parse_faults`) show in every sample as a real GPU's
    health signals would, so :meth:`health` classifies them as it does real ones.
    """

    simulated = True
    #: Simulated per-GPU figures: idle vs. busy (a task holds the GPU).
    IDLE_POWER_W = 70.0
    BUSY_POWER_W = 500.0
    IDLE_TEMPERATURE_C = 35.0
    BUSY_TEMPERATURE_C = 65.0

    def __init__(
        self,
        node_id: str,
        inventory: SimInventory,
        *,
        labels: Mapping[str, str] | None = None,
        region: str = "",
        block: str = "",
        datasets: Mapping[str, Sequence[int]] | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.node_id = node_id
        self._sim = inventory
        self._datasets = _Datasets(datasets, data_dir)
        self._faults: dict[int, _SimGpuFaults] = {}
        #: The fault file polled at each sample (None: no data_dir, nothing to poll).
        self.fault_file = os.path.join(data_dir, FAULT_FILE) if data_dir else None
        merged = {**inventory.labels, **(labels or {})}
        size = inventory.domain_size
        gpus = tuple(
            GpuDevice(
                index=i,
                uuid=f"SIM-{node_id}-{i}",
                model=inventory.gpu_model,
                memory_bytes=inventory.gpu_memory_bytes,
                # Domain k holds GPUs k*size .. (k+1)*size-1, every one linked to every other.
                nvlink_peers=tuple(j for j in range(i - i % size, i - i % size + size) if j != i),
                nvlink_domain=i - i % size,
                tdp_w=inventory.tdp_w,
            )
            for i in range(inventory.gpus)
        )
        self._inventory = NodeInventory(
            node_id=node_id,
            hostname=socket.gethostname(),
            simulated=True,
            cpu_cores=inventory.cpus,
            memory_bytes=inventory.memory_bytes,
            gpus=gpus,
            labels=_node_labels(merged, region, simulated=True),
            agent_version=domainos.__version__,
            os=_os_name(),
            block=block,
            datasets=self._datasets.scan(),
        )

    def inventory(self) -> NodeInventory:
        return self._inventory

    def refresh(self) -> bool:
        changed = self._datasets.rescanned(self._inventory)
        if changed is None:
            return False
        self._inventory = changed
        return True

    # ------------------------------------------------------------------ injected faults

    def inject(
        self,
        gpu: int,
        *,
        xid: int | None = None,
        ecc_corrected: int = 0,
        ecc_uncorrected: int = 0,
        temperature_c: float | None = None,
        throttle_reasons: int | None = None,
    ) -> None:
        """Inject faults into GPU ``gpu``: ``xid`` one Xid error (``last_xid`` keeps the worst,
        :func:`worse_xid`; ``xid_count`` + 1); ECC counts are added; ``temperature_c`` overrides
        the simulated temperature and ``throttle_reasons`` replaces the throttle bitmask (None
        leaves either as it is; :meth:`clear_faults` drops them). InvalidArgument for bad values
        or a GPU the node does not have."""
        self.apply_fault(
            GpuFault(
                gpu,
                xid=xid,
                ecc_corrected=ecc_corrected,
                ecc_uncorrected=ecc_uncorrected,
                temperature_c=temperature_c,
                throttle_reasons=throttle_reasons,
            )
        )

    def clear_faults(self, gpu: int | None = None) -> None:
        """Drop the injected faults of GPU ``gpu`` (of every GPU when None)."""
        self.apply_fault(GpuFault(gpu, clear=True))

    def check_fault(self, fault: GpuFault, path: str = "") -> None:
        """InvalidArgument unless ``fault`` is valid and names a GPU of this node."""
        fault.validate(path)
        count = len(self._inventory.gpus)
        if fault.gpu is not None and fault.gpu >= count:
            allowed = f"0 to {count - 1}" if count else "none: it has no GPUs"
            raise InvalidArgument(
                f"node {self.node_id} has no GPU {fault.gpu} (GPU indexes: {allowed})",
                field=f"{path}.gpu" if path else "gpu",
            )

    def apply_fault(self, fault: GpuFault) -> None:
        """Apply one fault (:class:`GpuFault`), checked first (:meth:`check_fault`)."""
        self.check_fault(fault)
        if fault.clear:
            if fault.gpu is None:
                self._faults.clear()
            else:
                self._faults.pop(fault.gpu, None)
        if fault.gpu is None or (fault.clear and fault == GpuFault(fault.gpu, clear=True)):
            return
        f = self._faults.setdefault(fault.gpu, _SimGpuFaults())
        if fault.xid is not None:
            f.xid_count += 1
            f.last_xid = worse_xid(f.last_xid, fault.xid)
        f.ecc_corrected += fault.ecc_corrected
        f.ecc_uncorrected += fault.ecc_uncorrected
        if fault.temperature_c is not None:
            f.temperature_c = float(fault.temperature_c)
        if fault.throttle_reasons is not None:
            f.throttle_reasons = fault.throttle_reasons

    @property
    def faults(self) -> Mapping[int, Mapping[str, Any]]:
        """The injected faults, per GPU index (only GPUs with some)."""
        return {i: dataclasses.asdict(f) for i, f in sorted(self._faults.items())}

    def poll_fault_file(self) -> bool:
        """Apply the fault file if one is waiting (one ``os.stat`` when none is): it is moved to
        :data:`FAULT_FILE_APPLIED` first, so each file is applied once; a file that cannot be read
        or parsed goes to :data:`FAULT_FILE_REJECTED` (logged). An entry naming a GPU the node
        does not have is skipped (logged). True when a file was applied."""
        path = self.fault_file
        if path is None:
            return False
        try:
            os.stat(path)
        except OSError:
            return False
        directory = os.path.dirname(path)
        applied = os.path.join(directory, FAULT_FILE_APPLIED)
        try:
            os.replace(path, applied)
        except FileNotFoundError:
            return False  # the inject command took it back to merge it into a new one
        except OSError as exc:
            log.warning("node %s: cannot take the fault file %s: %s", self.node_id, path, exc)
            return False
        try:
            with open(applied, "rb") as fh:
                raw = fh.read(MAX_FAULT_FILE_BYTES + 1)
            if len(raw) > MAX_FAULT_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FAULT_FILE_BYTES} bytes")
            faults = parse_faults(json.loads(raw))
        except (OSError, ValueError, InvalidArgument) as exc:
            log.warning("node %s: fault file %s rejected: %s", self.node_id, path, exc)
            with contextlib.suppress(OSError):
                os.replace(applied, os.path.join(directory, FAULT_FILE_REJECTED))
            return False
        for i, fault in enumerate(faults):
            try:
                self.apply_fault(fault)
            except InvalidArgument as exc:
                log.warning("node %s: fault file %s: [%d] skipped: %s", self.node_id, path, i, exc)
                continue
            log.warning("node %s: injected fault %s", self.node_id, fault.to_json())
        return True

    # ------------------------------------------------------------------ sampling

    def sample(self, running: Sequence[RunningTask]) -> NodeUsage:
        self.poll_fault_file()
        inv = self._inventory
        cpu_millis = sum(r.cpu_millis for r, _ in running)
        memory = sum(r.memory_bytes for r, _ in running)
        # Busy fraction per GPU: 1 for a whole GPU, the share's fraction for a GPU share.
        busy: dict[int, float] = {}
        for r, gpu_indexes in running:
            for i in gpu_indexes:
                busy[i] = min(1.0, busy.get(i, 0.0) + (r.gpu_share / 100.0 if r.gpu_share else 1.0))
        idle_w, busy_w = self.IDLE_POWER_W, self.BUSY_POWER_W
        idle_c, busy_c = self.IDLE_TEMPERATURE_C, self.BUSY_TEMPERATURE_C
        gpus = tuple(
            GpuUsage(
                index=g.index,
                utilization_percent=100.0 * busy.get(g.index, 0.0),
                memory_used_bytes=round(g.memory_bytes * busy.get(g.index, 0.0)),
                temperature_c=idle_c + (busy_c - idle_c) * busy.get(g.index, 0.0),
                power_w=idle_w + (busy_w - idle_w) * busy.get(g.index, 0.0),
            )
            for g in inv.gpus
        )
        if self._faults:
            gpus = tuple(self._faulty(g) for g in gpus)
        return NodeUsage(
            cpu_percent=min(100.0, 100.0 * cpu_millis / max(1, inv.cpu_cores * 1000)),
            memory_used_bytes=min(memory, inv.memory_bytes),
            gpus=gpus,
            load1=cpu_millis / 1000.0,
        )

    def _faulty(self, g: GpuUsage) -> GpuUsage:
        f = self._faults.get(g.index)
        if f is None:
            return g
        return dataclasses.replace(
            g,
            temperature_c=g.temperature_c if f.temperature_c is None else f.temperature_c,
            ecc_corrected=f.ecc_corrected,
            ecc_uncorrected=f.ecc_uncorrected,
            last_xid=f.last_xid,
            xid_count=f.xid_count,
            throttle_reasons=f.throttle_reasons,
        )

    def health(self, usage: NodeUsage) -> NodeHealth:
        return health_from_usage(usage)

    def cores(self) -> list[int]:
        # Simulated cores: the runner reports a cpu_set out of these but pins nothing.
        return list(range(self._inventory.cpu_cores))

    def close(self) -> None:
        pass
