"""Hardware discovery: real psutil numbers, a fake NVML, no NVML, and declared (simulated) nodes;
GPU health signals read from (fake) NVML: ECC, throttle reasons, Xid events."""

from __future__ import annotations

import ctypes
import logging
import operator
import os
from collections import Counter
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from domainos.model import HealthStatus
from domainos.resources import Resources
from domainos.topology import SimInventory
from node_agent._hardware import (
    MAX_EVENTS_PER_SAMPLE,
    Nvml,
    RealHardware,
    SimulatedHardware,
    normalize_bus_id,
)

GIB = 2**30
XID, DBE, SBE = 0x8, 0x2, 0x1  # nvmlEventType XidCriticalError, DoubleBitEccError, SingleBitEccError
NOT_SUPPORTED, NO_PERMISSION, TIMEOUT, FUNCTION_NOT_FOUND, GPU_IS_LOST = 3, 4, 10, 13, 15


class FakeNVMLError(Exception):
    pass


class CodedError(FakeNVMLError):
    """As pynvml's NVMLError: the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__({3: "Not Supported", 10: "Timeout"}.get(value, f"NVML error {value}"))
        self.value = value


def _ix(h: Any) -> Any:
    """A handle as a dict key: ctypes pointers (pynvml's handles) are not hashable."""
    if isinstance(h, ctypes._Pointer):
        return h.contents.value
    return operator.index(h) if hasattr(h, "__index__") else h


class FakeNvml:
    """Just the pynvml functions the agent calls, over a declared set of GPUs.

    ``links[i]`` lists (remote bus id or "switch") per NVLink of GPU i. Health signals per GPU:
    ``ecc`` (corrected, uncorrected) or "unsupported", ``throttle`` (reasons) or "unsupported",
    ``event_types`` (supported event types; default XID|DBE|SBE). Xid events are queued with
    :meth:`xid`; ``calls`` counts calls by (function, handle).
    """

    NVML_NVLINK_MAX_LINKS = 18
    NVML_FEATURE_ENABLED = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_VOLATILE_ECC = 0
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    nvmlEventTypeSingleBitEccError = SBE
    nvmlEventTypeDoubleBitEccError = DBE
    nvmlEventTypeXidCriticalError = XID
    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[dict[str, Any]], *, fail_init: bool = False) -> None:
        self.gpus = gpus
        self.fail_init = fail_init
        self.initialised = False
        self.shutdowns = 0
        self.calls: Counter[tuple[str, Any]] = Counter()
        #: Event sets created and freed; event types registered per handle.
        self.sets_created = 0
        self.sets_freed = 0
        self.registered: dict[Any, int] = {}
        self.pending: list[Any] = []
        #: NVML error codes to raise from nvmlEventSetCreate / nvmlDeviceRegisterEvents / the wait.
        self.create_error: int | None = None
        self.register_error: int | None = None
        self.wait_error: int | None = None

    # ------------------------------------------------------------------ health signals

    def xid(self, device: Any, xid: int, event_type: int = XID) -> None:
        """Queue one event (``xid`` is its eventData)."""
        self.pending.append(
            SimpleNamespace(
                device=device, eventType=event_type, eventData=xid, gpuInstanceId=0, computeInstanceId=0
            )
        )

    def nvmlDeviceGetTotalEccErrors(self, h: Any, error_type: int, counter_type: int) -> int:
        self.calls["ecc", _ix(h)] += 1
        assert counter_type == self.NVML_VOLATILE_ECC
        ecc = self.gpus[h].get("ecc", (0, 0))
        if ecc == "unsupported":
            raise CodedError(NOT_SUPPORTED)
        return int(ecc[error_type])

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        self.calls["throttle", _ix(h)] += 1
        reasons = self.gpus[h].get("throttle", 0)
        if reasons == "unsupported":
            raise CodedError(NOT_SUPPORTED)
        return int(reasons)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: Any) -> int:
        self.calls["legacy-throttle", _ix(h)] += 1
        return int(self.gpus[h].get("throttle", 0))

    def nvmlEventSetCreate(self) -> Any:
        if self.create_error is not None:
            raise CodedError(self.create_error)
        self.sets_created += 1
        return ctypes.c_void_p(0xE5E7)

    def nvmlDeviceGetSupportedEventTypes(self, h: Any) -> int:
        return int(self.gpus[h].get("event_types", XID | DBE | SBE))

    def nvmlDeviceRegisterEvents(self, h: Any, types: int, event_set: Any) -> None:
        if self.register_error is not None:
            raise CodedError(self.register_error)
        assert event_set.value == 0xE5E7
        self.registered[_ix(h)] = types

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        self.calls["wait", None] += 1
        assert timeout_ms == 0, "sampling must never block on events"
        if self.wait_error is not None:
            raise CodedError(self.wait_error)
        if not self.pending:
            raise CodedError(TIMEOUT)
        return self.pending.pop(0)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self.sets_freed += 1

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


# ----------------------------------------------------------------------------- GPU health signals


def plain_gpus(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "uuid": f"GPU-{i}",
            "name": "NVIDIA H100 80GB HBM3",
            "memory": 80 * GIB,
            "bus": f"0000:{i + 1:02x}:00.0",
        }
        | extra
        for i in range(n)
    ]


def test_ecc_and_throttle_reasons_are_read_and_not_supported_is_asked_once() -> None:
    fake = FakeNvml(plain_gpus(3))
    fake.gpus[0].update(ecc=(3, 0), throttle=0x40 | 0x1)  # hw thermal slowdown + gpu idle
    fake.gpus[1].update(ecc="unsupported", throttle="unsupported")  # a board without ECC
    hw = RealHardware("n-ecc", nvml_module=fake)
    usage = hw.sample([])
    g0, g1, g2 = usage.gpus
    assert (g0.ecc_corrected, g0.ecc_uncorrected, g0.throttle_reasons) == (3, 0, 0x41)
    assert (g1.ecc_corrected, g1.ecc_uncorrected, g1.throttle_reasons) == (0, 0, 0)
    assert (g2.ecc_corrected, g2.ecc_uncorrected, g2.throttle_reasons) == (0, 0, 0)
    health = hw.health(usage)
    assert health.status is HealthStatus.DEGRADED
    assert health.conditions == ("gpu0: throttled (hw thermal slowdown)",)
    for _ in range(3):
        hw.sample([])
    # NOT_SUPPORTED: asked once (the first of the two ECC reads), never again; others every sample.
    assert fake.calls["ecc", 1] == 1 and fake.calls["throttle", 1] == 1
    assert fake.calls["ecc", 0] == 2 * 4 and fake.calls["throttle", 0] == 4
    # A double-bit error: the node is unhealthy.
    fake.gpus[0]["ecc"] = (5, 2)
    usage = hw.sample([])
    assert (usage.gpus[0].ecc_corrected, usage.gpus[0].ecc_uncorrected) == (5, 2)
    health = hw.health(usage)
    assert health.status is HealthStatus.UNHEALTHY
    assert health.conditions[0] == "gpu0: 2 uncorrectable (double-bit) ECC errors"
    hw.close()


def test_legacy_throttle_binding_and_old_driver_fall_back() -> None:
    class OldBinding(FakeNvml):
        nvmlDeviceGetCurrentClocksEventReasons = None  # type: ignore[assignment]  # nvidia-ml-py < 12.535

    old = OldBinding(plain_gpus(1, throttle=0x20))
    assert RealHardware("n-old", nvml_module=old).sample([]).gpus[0].throttle_reasons == 0x20
    assert old.calls["legacy-throttle", 0] == 1

    class OldDriver(FakeNvml):  # a new binding over a driver without the new symbol
        def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
            self.calls["throttle", _ix(h)] += 1
            raise CodedError(FUNCTION_NOT_FOUND)

    fake = OldDriver(plain_gpus(2, throttle=0x80))
    hw = RealHardware("n-old-driver", nvml_module=fake)
    for _ in range(3):
        assert [g.throttle_reasons for g in hw.sample([]).gpus] == [0x80, 0x80]
    assert fake.calls["throttle", 0] == 1 and fake.calls["throttle", 1] == 0
    assert fake.calls["legacy-throttle", 0] == fake.calls["legacy-throttle", 1] == 3


def test_xid_events_keep_the_worst_xid_and_count_them() -> None:
    fake = FakeNvml(plain_gpus(4))
    fake.gpus[2]["event_types"] = XID | SBE  # no double-bit ECC events on this one
    fake.gpus[3]["event_types"] = SBE  # nothing we want
    hw = RealHardware("n-xid", nvml_module=fake)
    assert fake.sets_created == 1
    # Only the types each GPU supports, never the single-bit ones.
    assert fake.registered == {0: XID | DBE, 1: XID | DBE, 2: XID}

    def last(i: int = 0) -> tuple[int, int]:
        g = next(g for g in hw.sample([]).gpus if g.index == i)
        return g.last_xid, g.xid_count

    assert last() == (0, 0) and fake.calls["wait", None] == 1  # nothing waiting: one call
    fake.xid(0, 13)  # an application's fault: other
    assert last() == (13, 1)
    fake.xid(0, 94)  # warning beats other
    fake.xid(0, 31)  # other: does not replace a warning
    assert last() == (94, 3)
    usage = hw.sample([])
    assert hw.health(usage).status is HealthStatus.DEGRADED
    assert hw.health(usage).conditions == ("gpu0: xid 94 (contained ECC error)",)
    fake.xid(0, 79)  # critical beats warning
    fake.xid(0, 63)  # warning: does not replace a critical
    fake.xid(99, 48)  # a device that is not ours: ignored
    assert last() == (79, 5)
    health = hw.health(hw.sample([]))
    assert health.status is HealthStatus.UNHEALTHY
    assert health.conditions == ("gpu0: xid 79 (GPU has fallen off the bus)",)
    fake.xid(0, 48)  # within one class the latest
    assert last() == (48, 6)
    # A double-bit ECC event (eventData 0) counts as Xid 48; an unnamed Xid arrives as 999.
    fake.xid(1, 0, DBE)
    assert last(1) == (48, 1)
    fake.xid(2, 999)
    fake.xid(2, 0)
    assert last(2) == (999, 2)
    assert last(3) == (0, 0)
    hw.close()
    assert fake.sets_freed == 1 and fake.shutdowns == 1


def test_an_event_storm_is_read_in_bounded_batches() -> None:
    fake = FakeNvml(plain_gpus(1))
    hw = RealHardware("n-storm", nvml_module=fake)
    for _ in range(MAX_EVENTS_PER_SAMPLE + 10):
        fake.xid(0, 43)
    assert hw.sample([]).gpus[0].xid_count == MAX_EVENTS_PER_SAMPLE
    assert hw.sample([]).gpus[0].xid_count == MAX_EVENTS_PER_SAMPLE + 10


def test_event_devices_match_by_pointer_address_or_uuid() -> None:
    # pynvml handles are ctypes pointers: an event's device is a new pointer object, equal only by
    # the address it points at.
    class ByPointer(list):  # type: ignore[type-arg]
        def __getitem__(self, h: Any) -> Any:
            return super().__getitem__(_ix(h))

    class PointerNvml(FakeNvml):
        def __init__(self, gpus: list[dict[str, Any]]) -> None:
            super().__init__(ByPointer(gpus))
            self.cells = [ctypes.c_int(i) for i in range(len(gpus))]

        def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:
            return ctypes.pointer(self.cells[i])

    fake = PointerNvml(plain_gpus(2))
    hw = RealHardware("n-ptr", nvml_module=fake)
    fresh = ctypes.pointer(fake.cells[1])  # a new object, the same address as the handle
    fake.xid(fresh, 79)
    fake.xid(ctypes.pointer(ctypes.c_int(7)), 79)  # not ours
    assert [(g.last_xid, g.xid_count) for g in hw.sample([]).gpus] == [(0, 0), (79, 1)]

    # Handles that are neither hashable nor pointers: matched by UUID.
    class Opaque:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self, i: int) -> None:
            self.i = i

        def __index__(self) -> int:
            return self.i

        def __eq__(self, other: object) -> bool:
            return self is other

    class OpaqueNvml(FakeNvml):
        def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:
            return Opaque(i)

    fake2 = OpaqueNvml(plain_gpus(2))
    hw2 = RealHardware("n-opaque", nvml_module=fake2)
    fake2.xid(Opaque(0), 74)
    fake2.xid(Opaque(5), 79)  # no such GPU: its UUID cannot be read, ignored
    assert [(g.last_xid, g.xid_count) for g in hw2.sample([]).gpus] == [(74, 1), (0, 0)]


class NoEventApi(FakeNvml):
    nvmlEventSetCreate = None  # type: ignore[assignment]  # a binding without the event API


def failing(**errors: int) -> FakeNvml:
    fake = FakeNvml(plain_gpus(2))
    for name, code in errors.items():
        setattr(fake, name, code)
    return fake


@pytest.mark.parametrize(
    ("make", "when"),
    [
        (lambda: NoEventApi(plain_gpus(2)), "open"),
        (lambda: failing(create_error=NO_PERMISSION), "open"),
        (lambda: failing(register_error=NOT_SUPPORTED), "open"),
        (lambda: FakeNvml(plain_gpus(2, event_types=SBE)), "open"),
        (lambda: failing(wait_error=FUNCTION_NOT_FOUND), "sample"),
    ],
    ids=["no-api", "create-no-permission", "register-not-supported", "no-types", "wait-not-found"],
)
def test_a_failing_event_api_never_breaks_sampling(
    make: Any, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="node_agent._hardware")
    fake = make()
    hw = RealHardware("n-noevents", nvml_module=fake)
    fake.gpus[0]["ecc"] = (0, 1)
    for _ in range(3):
        usage = hw.sample([])
        assert [g.index for g in usage.gpus] == [0, 1]
        assert usage.gpus[0].ecc_uncorrected == 1 and usage.gpus[0].xid_count == 0
    assert hw.health(usage).status is HealthStatus.UNHEALTHY  # the other signals still count
    notes = [r for r in caplog.records if "Xid" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO, [r.getMessage() for r in notes]
    assert fake.calls["wait", None] == (1 if when == "sample" else 0)
    hw.close()
    assert fake.sets_freed == fake.sets_created  # whatever was created is freed


def test_a_transient_wait_error_is_retried_next_sample() -> None:
    fake = FakeNvml(plain_gpus(1))
    hw = RealHardware("n-lost", nvml_module=fake)
    fake.wait_error = GPU_IS_LOST
    hw.sample([])
    fake.wait_error = None
    fake.xid(0, 79)
    assert hw.sample([]).gpus[0].last_xid == 79


def test_a_gpu_nvml_cannot_read_keeps_its_xid() -> None:
    fake = FakeNvml(plain_gpus(2))
    hw = RealHardware("n-gone", nvml_module=fake)
    fake.xid(1, 79)
    fake.gpus[1]["broken"] = True  # fell off the bus: nothing reads any more
    usage = hw.sample([])
    assert [(g.index, g.last_xid, g.xid_count) for g in usage.gpus] == [(0, 0, 0), (1, 79, 1)]
    health = hw.health(usage)
    assert health.status is HealthStatus.UNHEALTHY
    assert health.conditions == ("gpu1: xid 79 (GPU has fallen off the bus)", "gpu1: nvml error: GPU is lost")
    # Without any Xid or ECC history, an unreadable GPU is left out (as before).
    fake.gpus[0]["broken"] = True
    assert [g.index for g in hw.sample([]).gpus] == [1]


def test_nvml_without_gpus_opens_no_event_set() -> None:
    fake = FakeNvml([])
    nvml = Nvml.open(fake)
    assert nvml is not None and nvml.sample() == ((), [])
    nvml.close()
    assert fake.sets_created == 0 and fake.shutdowns == 1
