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

Calls here block (NVML, /proc); the agent runs them in a worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import socket
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Protocol

import domainos
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

#: A GPU hotter than this makes the node DEGRADED.
GPU_TEMPERATURE_LIMIT_C = 90.0
_NVLINK_DEVICE_TYPE_SWITCH = 2

#: NVML errors that mean "this GPU has no (more) NVLinks": not supported (PCIe cards), invalid
#: argument (a link index past the device's count), function not found (an old driver).
_NVML_ERROR_INVALID_ARGUMENT = 2
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_FUNCTION_NOT_FOUND = 13
_NO_MORE_LINKS = (_NVML_ERROR_INVALID_ARGUMENT, _NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_FUNCTION_NOT_FOUND)

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
    """HEALTHY unless a GPU is hotter than :data:`GPU_TEMPERATURE_LIMIT_C` or NVML reported errors."""
    conditions = [
        f"gpu{g.index}: temperature {g.temperature_c:.0f} C > {GPU_TEMPERATURE_LIMIT_C:.0f} C"
        for g in usage.gpus
        if g.temperature_c > GPU_TEMPERATURE_LIMIT_C
    ]
    conditions.extend(problems)
    if conditions:
        return NodeHealth(HealthStatus.DEGRADED, tuple(conditions))
    return NodeHealth(HealthStatus.HEALTHY, ())


class Nvml:
    """The part of NVML the agent uses, over an injectable ``pynvml``-like module."""

    def __init__(self, module: Any) -> None:
        self._m = module
        self._handles: list[Any] = []
        self.problems: dict[int, str] = {}

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
        return nvml

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
        """Per-GPU usage, plus a condition for every GPU NVML could not read."""
        m = self._m
        out: list[GpuUsage] = []
        problems: list[str] = []
        temp_sensor = getattr(m, "NVML_TEMPERATURE_GPU", 0)
        for i, h in enumerate(self._handles):
            try:
                util = float(m.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = int(m.nvmlDeviceGetMemoryInfo(h).used)
                temp = float(m.nvmlDeviceGetTemperature(h, temp_sensor))
            except Exception as exc:
                problems.append(f"gpu{i}: nvml error: {exc}")
                continue
            try:
                power = float(m.nvmlDeviceGetPowerUsage(h)) / 1000.0  # milliwatts
            except Exception:
                power = 0.0  # not every board reports power
            out.append(GpuUsage(i, util, mem, temp, power))
        return tuple(out), problems

    def close(self) -> None:
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


class SimulatedHardware:
    """A declared inventory; usage follows the running tasks' requests."""

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

    def sample(self, running: Sequence[RunningTask]) -> NodeUsage:
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
        return NodeUsage(
            cpu_percent=min(100.0, 100.0 * cpu_millis / max(1, inv.cpu_cores * 1000)),
            memory_used_bytes=min(memory, inv.memory_bytes),
            gpus=gpus,
            load1=cpu_millis / 1000.0,
        )

    def health(self, usage: NodeUsage) -> NodeHealth:
        return health_from_usage(usage)

    def cores(self) -> list[int]:
        # Simulated cores: the runner reports a cpu_set out of these but pins nothing.
        return list(range(self._inventory.cpu_cores))

    def close(self) -> None:
        pass
