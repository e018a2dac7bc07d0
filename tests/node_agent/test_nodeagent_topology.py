"""What a node reports about its place in the topology: NVLink domains and board power (from a fake
NVML and from declared inventories), blocks, labels and dataset shards (declared and found on disk),
all the way into a real sub-domain manager's registry over real gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nodeagent_helpers import PY, run, until
from test_nodeagent_hardware import FakeNvml, FakeNVMLError, four_gpus_in_pairs

from domainos.api.v1 import common_pb2, subdomain_pb2
from domainos.errors import InvalidArgument
from domainos.model import DatasetShard, NodeInventory, TaskRef, TaskState
from domainos.topology import SimInventory
from node_agent import AgentConfig, NodeAgent
from node_agent._datasets import discover, node_datasets
from node_agent._hardware import RealHardware, SimulatedHardware
from sub_domain import SubDomainConfig, SubDomainManager
from sub_domain import _manager as manager_module

GIB = 2**30


class NvmlError(FakeNVMLError):
    """Like pynvml's NVMLError: carries the NVML return code in ``value``."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class PowerNvml(FakeNvml):
    """The fake NVML plus power limits and pynvml-style error codes for links past the last one."""

    def __init__(self, gpus: list[dict[str, Any]]) -> None:
        super().__init__(gpus)
        self.state_calls = 0

    def _link(self, h: int, link: int) -> Any:
        links = self.gpus[h].get("links")
        if links is None:
            raise NvmlError(3)  # NVML_ERROR_NOT_SUPPORTED: a PCIe card
        if link >= len(links):
            raise NvmlError(2)  # NVML_ERROR_INVALID_ARGUMENT: past the device's last link
        return links[link]

    def nvmlDeviceGetNvLinkState(self, h: int, link: int) -> int:
        self.state_calls += 1
        return super().nvmlDeviceGetNvLinkState(h, link)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        g = self.gpus[h]
        if "enforced_mw" not in g:
            raise NvmlError(3)
        return int(g["enforced_mw"])

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> list[int]:
        g = self.gpus[h]
        if "max_mw" not in g:
            raise NvmlError(3)
        return [100_000, int(g["max_mw"])]


def test_nvlink_domains_and_tdp_from_nvml() -> None:
    # 0<->1 and 2<->3 over NVLink (remote PCI ids matched to bus ids), 4 and 5 PCIe cards.
    base = four_gpus_in_pairs().gpus
    gpus: list[dict[str, Any]] = [
        {**base[0], "enforced_mw": 400_000},
        {**base[1], "enforced_mw": 350_000, "max_mw": 400_000},  # an administrator capped it
        {**base[2], "max_mw": 400_000},  # no enforced limit: the settable maximum
        {**base[3]},  # neither: unknown
        {"uuid": "GPU-4", "name": "NVIDIA L4", "memory": 24 * GIB, "bus": "0000:81:00.0"},
        {"uuid": "GPU-5", "name": "NVIDIA L4", "memory": 24 * GIB, "bus": "0000:82:00.0"},
    ]
    fake = PowerNvml(gpus)
    hw = RealHardware("n-mixed", nvml_module=fake)
    try:
        inv = hw.inventory()
        assert [g.nvlink_peers for g in inv.gpus] == [(1,), (0,), (3,), (2,), (), ()]
        assert [g.nvlink_domain for g in inv.gpus] == [0, 0, 2, 2, 4, 5]
        assert [g.tdp_w for g in inv.gpus] == [400, 350, 400, 0, 0, 0]
        assert inv.nvlink_domains() == {0: (0, 1), 2: (2, 3), 4: (4,), 5: (5,)}
        # NOT_SUPPORTED on the first link ends the PCIe cards' walk at once (not 18 calls each);
        # the NVLink cards stop at their last link (4 links + the one past it).
        assert fake.state_calls == 4 * 5 + 2
        # The domains and power travel on the wire and come back validated.
        msg = inv.to_proto()
        assert [g.nvlink_domain for g in msg.gpus] == [0, 0, 2, 2, 4, 5]
        assert [g.tdp_w for g in msg.gpus] == [400, 350, 400, 0, 0, 0]
        assert NodeInventory.from_proto(msg) == inv
    finally:
        hw.close()


def test_nvswitch_board_is_one_domain() -> None:
    fake = PowerNvml(
        [
            {
                "uuid": f"GPU-{i}",
                "name": "NVIDIA H100 80GB HBM3",
                "memory": 80 * GIB,
                "bus": f"0000:{i + 1:02x}:00.0",
                "links": ["switch"] * 18,
                "enforced_mw": 700_000,
            }
            for i in range(8)
        ]
    )
    inv = RealHardware("n-hgx", nvml_module=fake).inventory()
    assert {g.nvlink_domain for g in inv.gpus} == {0}
    assert {g.tdp_w for g in inv.gpus} == {700}


def test_inventory_from_an_old_agent_gets_domains_from_its_peers() -> None:
    # An agent that sends no nvlink_domain (all 0): the sub-domain derives them from nvlink_peers.
    msg = common_pb2.NodeInventory(
        node_id="old",
        cpu_cores=8,
        memory_bytes=GIB,
        gpus=[
            common_pb2.GpuDevice(index=0, nvlink_peers=[1]),
            common_pb2.GpuDevice(index=1, nvlink_peers=[0]),
            common_pb2.GpuDevice(index=2),
        ],
    )
    inv = NodeInventory.from_proto(msg)
    assert [g.nvlink_domain for g in inv.gpus] == [0, 0, 2]
    bad = common_pb2.NodeInventory(
        node_id="bad",
        gpus=[common_pb2.GpuDevice(index=0), common_pb2.GpuDevice(index=1, nvlink_domain=7)],
    )
    with pytest.raises(InvalidArgument, match=r"gpus\[1\]\.nvlink_domain.*got 7"):
        NodeInventory.from_proto(bad)


@pytest.mark.parametrize(
    ("size", "domains"),
    [(0, [0] * 8), (4, [0, 0, 0, 0, 4, 4, 4, 4]), (2, [0, 0, 2, 2, 4, 4, 6, 6]), (1, list(range(8)))],
)
def test_simulated_nvlink_domains(size: int, domains: list[int]) -> None:
    sim = SimInventory(gpus=8, gpu_model="H100-SXM-80GB", nvlink_domain_size=size)
    sim.validate()
    inv = SimulatedHardware("n-sim", sim).inventory()
    assert [g.nvlink_domain for g in inv.gpus] == domains
    for g in inv.gpus:  # peers: exactly the other members of its domain
        assert set(g.nvlink_peers) == {i for i, d in enumerate(domains) if d == g.nvlink_domain} - {g.index}
    NodeInventory.from_proto(inv.to_proto())  # valid on the wire


@pytest.mark.parametrize(
    ("model", "declared", "tdp"),
    [
        ("H100-SXM-80GB", 0, 700),
        ("NVIDIA H200", 0, 700),
        ("A100-40GB", 0, 400),
        ("L40S", 0, 350),
        ("Tesla T4", 0, 70),
        ("MI300X", 0, 750),
        ("RTX-6000", 0, 300),
        ("H100-SXM-80GB", 500, 500),
    ],
)
def test_simulated_tdp_by_model_or_declared(model: str, declared: int, tdp: int) -> None:
    sim = SimInventory(gpus=2, gpu_model=model, gpu_memory="48Gi", gpu_tdp_w=declared)
    inv = SimulatedHardware("n-sim", sim).inventory()
    assert [g.tdp_w for g in inv.gpus] == [tdp, tdp]
    assert [g.memory_bytes for g in inv.gpus] == [48 * GIB, 48 * GIB]


def test_simulated_usage_of_gpu_shares() -> None:
    from domainos.resources import Resources

    hw = SimulatedHardware("n-sim", SimInventory(gpus=2, gpu_model="L4", gpu_memory="24Gi"))
    share = Resources(100, GIB, 0, "", gpu_share=25)
    usage = hw.sample([(share, (0,)), (share, (0,)), (Resources(100, GIB, 1, ""), (1,))])
    assert [g.utilization_percent for g in usage.gpus] == [50.0, 100.0]
    assert [g.memory_used_bytes for g in usage.gpus] == [12 * GIB, 24 * GIB]


def make_shard(data_dir: Path, dataset: str, shard: str, sizes: list[int]) -> Path:
    path = data_dir / "datasets" / dataset / shard
    (path / "sub").mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(sizes):
        target = path / ("sub" if i % 2 else ".") / f"part-{i}"
        target.write_bytes(b"x" * n)
    return path


def test_dataset_directories_are_discovered_with_sizes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_shard(data, "corpus", "0", [1000, 24])
    make_shard(data, "corpus", "3", [7])
    make_shard(data, "images.v2", "12", [5, 5, 5])
    make_shard(data, "corpus", "not-a-shard", [1])  # not an integer: skipped
    make_shard(data, "-bad name", "0", [1])  # not a dataset name: skipped
    (data / "datasets" / "corpus" / "4").write_text("a file, not a directory")  # skipped
    # A link inside a shard is not followed (no loops, no double counting).
    os.symlink(data / "datasets" / "corpus" / "0", data / "datasets" / "corpus" / "3" / "loop")
    assert discover(data) == {("corpus", 0): 1024, ("corpus", 3): 7, ("images.v2", 12): 15}
    # Declared shards join them (size 0 unless on disk), sorted.
    got = node_datasets({"corpus": [3, 9], "wiki": [0]}, data)
    assert got == (
        DatasetShard("corpus", 0, 1024),
        DatasetShard("corpus", 3, 7),
        DatasetShard("corpus", 9, 0),
        DatasetShard("images.v2", 12, 15),
        DatasetShard("wiki", 0, 0),
    )
    # No data directory: just the declared ones.
    assert node_datasets({"wiki": [1]}, tmp_path / "missing") == (DatasetShard("wiki", 1, 0),)


def test_dataset_walk_is_capped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_shard(data, "big", "0", [10] * 50)
    make_shard(data, "big", "1", [10])
    full = discover(data)
    assert full == {("big", 0): 500, ("big", 1): 10}
    capped = discover(data, max_entries=10)
    # Every shard is still listed; sizes past the cap are lower bounds.
    assert set(capped) == {("big", 0), ("big", 1)} and capped[("big", 0)] < 500


# -- a real agent against a real sub-domain manager over gRPC -----------------------------------------


@pytest.fixture(autouse=True)
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "TICK_INTERVAL_S", 0.02)


@contextlib.asynccontextmanager
async def subdomain(**kw: Any) -> AsyncIterator[SubDomainManager]:
    mgr = SubDomainManager(
        SubDomainConfig(
            id="sd-1",
            region="east",
            listen="127.0.0.1:0",
            metrics_listen="",
            report_interval_s=0.1,
            full_sync_interval_s=kw.pop("full_sync_interval_s", 5.0),
            insecure=True,
            **kw,
        )
    )
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.shutdown()


def agent_config(tmp_path: Path, address: str, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = {
        "node_id": "node-a",
        "subdomains": [address],
        "state_dir": str(tmp_path / "agent"),
        "metrics_listen": "",
        "simulated": True,
        "inventory": SimInventory(
            cpus=8, memory="32Gi", gpus=8, gpu_model="H100-SXM-80GB", nvlink_domain_size=4, gpu_tdp_w=650
        ),
        "labels": {"zone": "a", "rack": "r7"},
        "block": "east-b3",
        "datasets": {"corpus": [0, 1]},
        "insecure": True,
    }
    base.update(kw)
    cfg = AgentConfig(**base)
    cfg.validate()
    return cfg


def test_registered_inventory_carries_domains_block_labels_and_datasets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_shard(data, "corpus", "1", [300])
    make_shard(data, "wiki", "5", [42])

    async def main() -> None:
        async with subdomain() as mgr:
            cfg = agent_config(tmp_path, mgr.listen_address, data_dir=str(data))
            async with NodeAgent(cfg) as agent:
                await asyncio.wait_for(agent.registered.wait(), 10)
                node = await until(lambda: mgr.registry.get("node-a"), what="node-a registered")
                inv = node.inventory
                assert [g.nvlink_domain for g in inv.gpus] == [0, 0, 0, 0, 4, 4, 4, 4]
                assert {g.tdp_w for g in inv.gpus} == {650}
                assert inv.block == "east-b3"
                assert inv.labels["zone"] == "a" and inv.labels["rack"] == "r7"
                assert inv.labels["domainos.io/simulated"] == "true"
                assert inv.datasets == (
                    DatasetShard("corpus", 0, 0),
                    DatasetShard("corpus", 1, 300),
                    DatasetShard("wiki", 5, 42),
                )

    run(main())


def test_a_shard_appearing_later_reaches_the_subdomain_within_a_full_report(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def main() -> None:
        async with subdomain(full_sync_interval_s=0.3) as mgr:
            cfg = agent_config(tmp_path, mgr.listen_address, data_dir=str(data), datasets={})
            async with NodeAgent(cfg) as agent:
                await asyncio.wait_for(agent.registered.wait(), 10)
                node = await until(lambda: mgr.registry.get("node-a"), what="node-a registered")
                assert node.inventory.datasets == ()
                # A task runs across the re-registration.
                spec = common_pb2.TaskSpec(
                    job_id="j-keep",
                    command=[PY, "-c", "import time; time.sleep(30)"],
                    resources=common_pb2.Resources(cpu_millis=500, memory_bytes=2**28),
                    replicas=1,
                )
                await mgr.handle_master_command(
                    subdomain_pb2.MasterCommand(
                        place_task=subdomain_pb2.PlaceTask(command_id="p-1", spec=spec)
                    )
                )
                ref = TaskRef("j-keep", 0, 0)
                await until(
                    lambda: (s := agent.runner.get(ref)) is not None and s.state is TaskState.RUNNING,
                    what="the task running",
                )
                registrations = agent.registrations_total
                reconnects = agent.reconnects_total
                since = mgr.registry.get("node-a").state_since  # type: ignore[union-attr]
                make_shard(data, "corpus", "7", [1234])
                # The agent rescans every full-sync interval (0.3 s, from the sub-domain).
                await until(
                    lambda: (
                        mgr.registry.get("node-a").inventory.datasets  # type: ignore[union-attr]
                        == (DatasetShard("corpus", 7, 1234),)
                    ),
                    timeout=5,
                    what="the new shard in the sub-domain's registry",
                )
                await until(
                    lambda: agent.registrations_total == registrations + 1 and agent.connected,
                    what="the agent registered again",
                )
                # Registered again on the same stream: no reconnect, never suspect.
                assert agent.reconnects_total == reconnects
                node = mgr.registry.get("node-a")
                assert node is not None and node.state == "ready" and node.state_since == since
                status = agent.runner.get(ref)
                assert status is not None and status.state is TaskState.RUNNING
                entry = mgr.tasks.get(ref)
                assert entry is not None and entry.status.state is TaskState.RUNNING
                # Nothing changed: no more re-registrations.
                await asyncio.sleep(0.8)
                assert agent.registrations_total == registrations + 1

    run(main(), timeout=60)


def test_fake_nvml_module_shape_matches_pynvml() -> None:
    # The functions the fake stands in for exist in the installed binding with these names.
    pynvml = pytest.importorskip("pynvml")
    for name in (
        "nvmlDeviceGetNvLinkState",
        "nvmlDeviceGetNvLinkRemotePciInfo",
        "nvmlDeviceGetNvLinkRemoteDeviceType",
        "nvmlDeviceGetEnforcedPowerLimit",
        "nvmlDeviceGetPowerManagementLimitConstraints",
    ):
        assert callable(getattr(pynvml, name)), name
    err = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert isinstance(err, pynvml.NVMLError_NotSupported) and err.value == 3
