"""The fleet simulator against a real sub-domain manager over real gRPC (insecure, in process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nodeagent_helpers import run, until

from domainos.api.v1 import common_pb2, subdomain_pb2
from domainos.errors import ConfigError, InvalidArgument
from domainos.model import TaskRef, TaskState
from domainos.topology import SimInventory
from node_agent._sim import PROFILES, Fleet, profile
from sub_domain import SubDomainConfig, SubDomainManager
from sub_domain import _manager as manager_module


@pytest.fixture(autouse=True)
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "TICK_INTERVAL_S", 0.02)


@contextlib.asynccontextmanager
async def subdomain(ident: str = "sd-1", **kw: Any) -> AsyncIterator[SubDomainManager]:
    base: dict[str, Any] = {
        "id": ident,
        "region": "east",
        "listen": "127.0.0.1:0",
        "metrics_listen": "",
        "report_interval_s": 0.1,
        "full_sync_interval_s": 0.5,
        "heartbeat_interval_s": 0.3,
        "silent_after_s": 1.0,
        "probe_timeout_s": 0.5,
        "dead_after_s": 0.5,
        "insecure": True,
    }
    base.update(kw)
    mgr = SubDomainManager(SubDomainConfig(**base))
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.shutdown()


_seq = iter(range(1_000_000))


async def place(
    mgr: SubDomainManager, job: str, *, gpus: int = 0, env: dict[str, str] | None = None
) -> TaskRef:
    spec = common_pb2.TaskSpec(
        job_id=job,
        command=["simulated"],
        env=env or {},
        resources=common_pb2.Resources(cpu_millis=1000, memory_bytes=2**30, gpus=gpus),
        replicas=1,
    )
    await mgr.handle_master_command(
        subdomain_pb2.MasterCommand(
            place_task=subdomain_pb2.PlaceTask(command_id=f"p-{next(_seq)}", spec=spec)
        )
    )
    return TaskRef(job, 0, 0)


def state_of(mgr: SubDomainManager, ref: TaskRef) -> TaskState | None:
    status = mgr.task_status(ref)
    return status.state if status is not None else None


def test_profiles_and_bad_input() -> None:
    inv = profile("h100x8")
    assert inv.gpus == 8 and inv.nvlink_domain_size == 4 and inv.cpus == 192
    for p in PROFILES.values():
        p.validate()
    with pytest.raises(ConfigError, match="unknown profile 'tpu'; known: "):
        profile("tpu")
    with pytest.raises(ConfigError, match="at least one sub-domain"):
        Fleet([], 1)
    fleet = Fleet(["127.0.0.1:1"], 10, "cpu", seed=1)
    assert len(fleet.pick(0.1)) == 1 and fleet.pick(0.0) == []
    assert sorted(fleet.agents)[0] == "sim-0000"
    with pytest.raises(InvalidArgument, match="no simulated node 'x'"):
        fleet.kill(["x"])


def test_fleet_registers_runs_tasks_and_detects_failures() -> None:
    async def main() -> None:
        async with subdomain() as mgr, Fleet([mgr.listen_address], 200, "h100x8", seed=7) as fleet:
            await until(lambda: mgr.nodes_ready == 200, timeout=15, what="200 ready nodes")
            await until(lambda: fleet.stats().connected == 200, what="200 agents told Registered")
            node = mgr.registry.get("sim-0000")
            assert node is not None and node.inventory.simulated
            assert len(node.inventory.gpus) == 8
            assert [g.nvlink_domain for g in node.inventory.gpus] == [0, 0, 0, 0, 4, 4, 4, 4]

            # A task succeeds after its simulated duration; a failing one fails with its exit code.
            ok = await place(mgr, "j-ok", gpus=8, env={"DOMAINOS_SIM_DURATION": "0.3"})
            bad = await place(mgr, "j-bad", env={"DOMAINOS_SIM_DURATION": "0.2", "DOMAINOS_SIM_EXIT": "3"})
            await until(lambda: state_of(mgr, ok) is TaskState.RUNNING, what="j-ok running")
            started = asyncio.get_running_loop().time()
            await until(lambda: state_of(mgr, ok) is TaskState.SUCCEEDED, what="j-ok succeeded")
            assert asyncio.get_running_loop().time() - started >= 0.15
            await until(lambda: state_of(mgr, bad) is TaskState.FAILED, what="j-bad failed")
            status = mgr.task_status(bad)
            assert status is not None and status.exit_code == 3 and "simulated" in status.message
            ok_status = mgr.task_status(ok)
            assert ok_status is not None and len(ok_status.gpu_indexes) == 8

            # Long tasks; kill 1% of the nodes (those running two of them), silence 1% more.
            long_refs = [
                await place(mgr, f"j-long-{i}", gpus=8, env={"DOMAINOS_SIM_DURATION": "600"})
                for i in range(4)
            ]
            await until(
                lambda: all(state_of(mgr, r) is TaskState.RUNNING for r in long_refs),
                what="long tasks running",
            )
            hosts = [mgr.task_status(r).node_id for r in long_refs]  # type: ignore[union-attr]
            killed = hosts[:2]
            silenced = fleet.pick(0.01, among=set(fleet.agents) - set(hosts))
            assert len(killed) == 2 and len(silenced) == 2
            healthy = set(fleet.agents) - set(killed) - set(silenced)
            fleet.kill(killed)
            fleet.silence(silenced)
            seen: set[str] = set()

            def detected() -> bool:
                for n in healthy:  # no false positives, at any moment
                    assert mgr.node_state(n) == "ready", f"{n} is {mgr.node_state(n)}"
                for n in killed + silenced:
                    if mgr.node_state(n) == "suspect":
                        seen.add(n)
                return all(mgr.node_state(n) == "dead" for n in killed + silenced)

            await until(detected, timeout=8, what="killed and silenced nodes dead")
            assert set(killed) <= seen | set(killed)  # a dropped stream may pass suspect between polls
            for ref, host in zip(long_refs, hosts, strict=True):
                want = TaskState.LOST if host in killed else TaskState.RUNNING
                assert state_of(mgr, ref) is want, (ref, host)
            assert mgr.nodes_ready == 196

            # Revived nodes come back ready.
            fleet.revive(killed + silenced)
            await until(lambda: mgr.nodes_ready == 200, timeout=10, what="revived nodes ready")
            await until(lambda: fleet.stats().connected == 200, what="revived agents told Registered")
            stats = fleet.stats()
            assert stats.killed == 0 and stats.silent == 0
            assert "200/200 connected" in stats.line()

    run(main(), timeout=60)


def test_stop_task_cancels_and_flap_reconnects() -> None:
    async def main() -> None:
        async with subdomain() as mgr, Fleet([mgr.listen_address], 3, "cpu", seed=1) as fleet:
            await until(lambda: mgr.nodes_ready == 3, what="3 ready")
            ref = await place(mgr, "j-stop", env={"DOMAINOS_SIM_DURATION": "600"})
            await until(lambda: state_of(mgr, ref) is TaskState.RUNNING, what="running")
            host = mgr.task_status(ref).node_id  # type: ignore[union-attr]
            agent = fleet.agents[host]
            assert agent.running == 1
            await mgr.handle_master_command(
                subdomain_pb2.MasterCommand(
                    stop_task=subdomain_pb2.StopTaskCommand(
                        command_id="s-1", task=common_pb2.TaskRef(job_id="j-stop"), reason="test"
                    )
                )
            )
            await until(lambda: state_of(mgr, ref) is TaskState.CANCELLED, what="cancelled")
            status = mgr.task_status(ref)
            assert status is not None and "simulated" in status.message
            # The master's ack reaches the node through the sub-domain: the simulated node forgets it.
            await mgr.handle_master_command(
                subdomain_pb2.MasterCommand(
                    ack_tasks=subdomain_pb2.AckTaskStates(tasks=[common_pb2.TaskRef(job_id="j-stop")])
                )
            )
            await until(lambda: ref not in agent.tasks, what="acked and forgotten")

            other = next(n for n in fleet.agents if n != host)
            before = fleet.agents[other].registrations_total
            fleet.flap([other], 0.3)
            await until(
                lambda: fleet.agents[other].registrations_total >= before + 2, timeout=5, what="two flaps"
            )
            fleet.revive([other])
            await until(lambda: mgr.nodes_ready == 3, what="all ready again")

    run(main(), timeout=30)


def test_max_nodes_refuses_and_the_next_subdomain_takes_the_rest() -> None:
    async def main() -> None:
        inv = SimInventory(cpus=4, memory="8Gi")
        async with subdomain(max_nodes=150) as first:
            async with Fleet([first.listen_address], 160, inv) as fleet:
                await until(lambda: first.nodes_ready == 150, timeout=15, what="150 ready")
                refused = await until(
                    lambda: (
                        [a for a in fleet.agents.values() if a.last_error == "RESOURCE_EXHAUSTED"]
                        if sum(1 for a in fleet.agents.values() if a.refused_total) >= 10
                        else None
                    ),
                    timeout=10,
                    what="10 refused",
                )
                assert len(refused) == 10
                assert "150" in refused[0].last_message, refused[0].last_message
                await asyncio.sleep(0.2)
                assert first.nodes_ready == 150
            async with subdomain("sd-2") as second:
                await until(lambda: first.registry.live_count == 0, timeout=10, what="the first fleet gone")
                addresses = [first.listen_address, second.listen_address]
                async with Fleet(addresses, 200, inv, prefix="b") as fleet:
                    await until(
                        lambda: first.nodes_ready == 150 and second.nodes_ready == 50,
                        timeout=15,
                        what="150 + 50 ready",
                    )
                    await until(
                        lambda: (
                            sum(1 for a in fleet.agents.values() if a.connected and a.subdomain_id == "sd-2")
                            == 50
                        ),
                        what="50 agents registered with sd-2",
                    )
                    refused = [a for a in fleet.agents.values() if a.subdomain_id == "sd-2"]
                    assert all(a.refused_total >= 1 for a in refused)

    run(main(), timeout=60)
