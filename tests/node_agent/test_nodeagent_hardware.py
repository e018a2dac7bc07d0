"""Hardware discovery: real psutil numbers, a fake NVML, no NVML, and declared (simulated) nodes."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from domainos.model import HealthStatus
from domainos.resources import Resources
from domainos.topology import SimInventory
from node_agent._hardware import RealHardware, SimulatedHardware, normalize_bus_id

GIB = 2**30


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """Just the pynvml functions the agent calls, over a declared set of GPUs.

    ``links[i]`` lists (remote bus id or "switch") per NVLink of GPU i.
    """

    NVML_NVLINK_MAX_LINKS = 18
    NVML_FEATURE_ENABLED = 1
    NVML_TEMPERATURE_GPU = 0
    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[dict[str, Any]], *, fail_init: bool = False) -> None:
        self.gpus = gpus
        self.fail_init = fail_init
        self.initialised = False
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> Any:
        return self.gpus[h]["uuid"]

    def nvmlDeviceGetName(self, h: int) -> Any:
        return self.gpus[h]["name"]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        g = self.gpus[h]
        return SimpleNamespace(total=g["memory"], used=g.get("used", 0), free=g["memory"] - g.get("used", 0))

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=self.gpus[h]["bus"])

    def _link(self, h: int, link: int) -> Any:
        links = self.gpus[h].get("links", [])
        if link >= len(links):
            raise FakeNVMLError("Not Supported")
        return links[link]

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        remote = self._link(h, link)
        return 0 if remote == "down" else 1

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h: int, link: int) -> int:
        return 2 if self._link(h, link) == "switch" else 0

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h: int, link: int) -> Any:
        return SimpleNamespace(busId=self._link(h, link))

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        g = self.gpus[h]
        if g.get("broken"):
            raise FakeNVMLError("GPU is lost")
        return SimpleNamespace(gpu=g.get("util", 0), memory=0)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return int(self.gpus[h].get("temp", 40))

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self.gpus[h].get("power_mw", 100_000))


def four_gpus_in_pairs() -> FakeNvml:
    # NVLink pairs 0<->1 and 2<->3; remote bus ids in the short (legacy) form, local in the long one;
    # bytes and str names mixed as different nvidia-ml-py versions return.
    buses = ["00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:5D:00.0"]
    legacy = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0"]
    pair = {0: 1, 1: 0, 2: 3, 3: 2}
    return FakeNvml(
        [
            {
                "uuid": f"GPU-{i}".encode() if i % 2 else f"GPU-{i}",
                "name": b"NVIDIA A100-SXM4-40GB" if i % 2 else "NVIDIA A100-SXM4-40GB",
                "memory": 40 * GIB,
                "bus": buses[i].encode(),
                "links": [legacy[pair[i]], legacy[pair[i]], "down", "0000:99:00.0"],
                "util": 10 * i,
                "used": GIB * i,
                "temp": 95 if i == 1 else 50,
                "power_mw": 250_000,
            }
            for i in range(4)
        ]
    )


def test_real_psutil_numbers_are_sane() -> None:
    hw = RealHardware(
        "n-real", labels={"team": "ml"}, region="east", nvml_module=FakeNvml([], fail_init=True)
    )
    try:
        inv = hw.inventory()
        assert inv.node_id == "n-real" and not inv.simulated
        assert inv.cpu_cores == psutil.cpu_count(logical=True)
        assert inv.memory_bytes == psutil.virtual_memory().total > 0
        assert inv.gpus == ()
        assert inv.hostname and inv.os and inv.agent_version
        assert inv.labels == {"team": "ml", "domainos.io/region": "east"}
        assert inv.allocatable == Resources(inv.cpu_cores * 1000, inv.memory_bytes, 0, "")
        usage = hw.sample([])
        assert 0 <= usage.cpu_percent <= 100
        assert 0 < usage.memory_used_bytes <= inv.memory_bytes
        assert usage.load1 >= 0 and usage.gpus == ()
        assert hw.health(usage).status is HealthStatus.HEALTHY
        assert hw.cores() == sorted(os.sched_getaffinity(0))
        msg = inv.to_proto()
        assert msg.allocatable.cpu_millis == inv.cpu_cores * 1000
    finally:
        hw.close()


def test_no_nvml_means_no_gpus_logged_once_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="node_agent._hardware")
    hw = RealHardware("n-plain", nvml_module=FakeNvml([], fail_init=True))
    hw.sample([])
    hw.sample([])
    assert hw.inventory().gpus == ()
    records = [r for r in caplog.records if "NVML not available" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO


def test_nvml_discovery_with_nvlink_peers_mapped_by_pci_bus() -> None:
    fake = four_gpus_in_pairs()
    hw = RealHardware("n-gpu", nvml_module=fake)
    inv = hw.inventory()
    assert [g.index for g in inv.gpus] == [0, 1, 2, 3]
    assert [g.uuid for g in inv.gpus] == ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]
    assert {g.model for g in inv.gpus} == {"NVIDIA A100-SXM4-40GB"}
    assert [g.nvlink_peers for g in inv.gpus] == [(1,), (0,), (3,), (2,)]
    assert inv.allocatable.gpus == 4 and inv.allocatable.gpu_model == "NVIDIA A100-SXM4-40GB"
    assert inv.gpus[0].memory_bytes == 40 * GIB
    usage = hw.sample([])
    assert [(g.index, g.utilization_percent, g.memory_used_bytes, g.power_w) for g in usage.gpus] == [
        (i, 10.0 * i, GIB * i, 250.0) for i in range(4)
    ]
    health = hw.health(usage)
    assert health.status is HealthStatus.DEGRADED
    assert health.conditions == ("gpu1: temperature 95 C > 90 C",)
    # A GPU NVML cannot read any more is a condition too.
    fake.gpus[2]["broken"] = True
    usage = hw.sample([])
    assert [g.index for g in usage.gpus] == [0, 1, 3]
    assert "gpu2: nvml error: GPU is lost" in hw.health(usage).conditions
    hw.close()
    assert fake.shutdowns == 1


def test_nvswitch_boards_are_all_to_all() -> None:
    fake = FakeNvml(
        [
            {
                "uuid": f"GPU-{i}",
                "name": "NVIDIA H100 80GB HBM3",
                "memory": 80 * GIB,
                "bus": f"0000:{i + 1:02x}:00.0",
            }
            | {"links": ["switch"] * 18}
            for i in range(4)
        ]
    )
    inv = RealHardware("n-hgx", nvml_module=fake).inventory()
    assert [g.nvlink_peers for g in inv.gpus] == [(1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2)]


def test_bus_id_normalisation() -> None:
    assert normalize_bus_id(b"00000000:18:00.0") == normalize_bus_id("0000:18:00.0") == (0, 0x18, 0, 0)
    assert normalize_bus_id("garbage") is None


def test_simulated_inventory_and_usage_from_task_requests() -> None:
    sim = SimInventory(cpus=16, memory="64Gi", gpus=8, gpu_model="H100-SXM-80GB", labels={"rack": "r1"})
    hw = SimulatedHardware("sim-1", sim, labels={"team": "ml"}, region="west")
    inv = hw.inventory()
    assert inv.simulated and inv.cpu_cores == 16 and inv.memory_bytes == 64 * GIB
    assert [g.uuid for g in inv.gpus] == [f"SIM-sim-1-{i}" for i in range(8)]
    assert {g.model for g in inv.gpus} == {"H100-SXM-80GB"}
    assert inv.gpus[3].nvlink_peers == (0, 1, 2, 4, 5, 6, 7)
    assert inv.labels == {
        "rack": "r1",
        "team": "ml",
        "domainos.io/region": "west",
        "domainos.io/simulated": "true",
    }
    assert inv.allocatable == Resources(16_000, 64 * GIB, 8, "H100-SXM-80GB")
    assert inv.to_proto().simulated
    idle = hw.sample([])
    assert idle.cpu_percent == 0 and idle.memory_used_bytes == 0
    busy = hw.sample([(Resources(4000, 8 * GIB, 2, ""), (0, 1)), (Resources(2000, 8 * GIB, 0, ""), ())])
    assert busy.cpu_percent == pytest.approx(37.5) and busy.memory_used_bytes == 16 * GIB
    assert [g.utilization_percent for g in busy.gpus] == [100.0, 100.0] + [0.0] * 6
    assert busy.load1 == 6.0
    assert hw.health(busy).status is HealthStatus.HEALTHY
    assert hw.cores() == list(range(16))
    no_link = SimulatedHardware("sim-2", SimInventory(gpus=2, gpu_model="X", nvlink=False)).inventory()
    assert [g.nvlink_peers for g in no_link.gpus] == [(), ()]
