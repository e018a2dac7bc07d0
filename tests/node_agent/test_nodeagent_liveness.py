"""Liveness from the agent's side: heartbeats (planner), probe answers (real agent and simulator),
and, against a real sub-domain, that alive-but-quiet nodes are probed and never die while silenced
and killed ones do."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from nodeagent_helpers import FakeSubDomain, run, serve, until

from domainos.api.v1 import agent_pb2
from domainos.clock import FakeClock
from domainos.model import HealthStatus, NodeHealth, NodeUsage, TaskRef, TaskState, TaskStatus
from domainos.topology import SimInventory
from node_agent import AgentConfig, NodeAgent
from node_agent._sim import Fleet
from node_agent._state import Connected, IntervalsChanged, ReportPlanner, TaskChanged, Tick
from sub_domain import SubDomainConfig, SubDomainManager

HEALTHY = NodeHealth(HealthStatus.HEALTHY)


def _planner(clock: FakeClock, heartbeat: float) -> ReportPlanner:
    p = ReportPlanner(clock=clock, report_interval_s=1.0, full_sync_interval_s=30.0)
    p.handle(Connected(NodeUsage(), HEALTHY))
    p.handle(IntervalsChanged(1.0, 30.0, heartbeat))
    return p


def test_a_heartbeat_goes_out_only_when_nothing_else_did() -> None:
    clock = FakeClock()
    p = _planner(clock, 2.0)
    assert p.next_deadline() == clock.monotonic() + 2.0
    clock.advance(1.9)
    assert p.handle(Tick()) == []
    clock.advance(0.1)
    (beat,) = p.handle(Tick())
    assert (beat.seq, beat.full, beat.tasks, beat.usage, beat.health) == (1, False, (), None, None)
    p.validate()
    # A task transition is a report too: the next heartbeat is due 2 s after it.
    clock.advance(1.5)
    p.handle(TaskChanged(TaskStatus(TaskRef("j", 0, 0), TaskState.RUNNING)))
    clock.advance(0.05)
    (delta,) = p.handle(Tick())
    assert delta.tasks and p.next_deadline() == clock.monotonic() + 2.0
    clock.advance(1.99)
    assert p.handle(Tick()) == []
    p.validate()


def test_no_heartbeat_when_the_subdomain_asks_for_none() -> None:
    clock = FakeClock()
    p = _planner(clock, 0.0)  # an older sub-domain: liveness rides on full reports
    assert p.next_deadline() == clock.monotonic() + 30.0
    clock.advance(29.0)
    assert p.handle(Tick()) == []
    clock.advance(1.0)
    assert [r.full for r in p.handle(Tick())] == [True]


def _agent_config(tmp_path: Path, address: str) -> AgentConfig:
    cfg = AgentConfig(
        node_id="node-a",
        subdomains=[address],
        state_dir=str(tmp_path / "agent"),
        metrics_listen="",
        simulated=True,
        inventory=SimInventory(cpus=4, memory="16Gi"),
        insecure=True,
    )
    cfg.validate()
    return cfg


def test_the_agent_heartbeats_and_answers_a_probe_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeSubDomain(heartbeat_interval_s=0.1, full_sync_interval_s=60.0)
        server, port = await serve(fake)
        agent = NodeAgent(_agent_config(tmp_path, f"127.0.0.1:{port}"))
        try:
            await agent.start()
            conn = await until(lambda: fake.conns and fake.conn, what="registered")
            empty = await until(
                lambda: [r for r in conn.reports if not (r.tasks or r.HasField("usage") or r.full)],
                what="heartbeats",
            )
            assert empty[0].sent_at > 0 and empty[0].incarnation == agent.incarnation
            conn.outbox.put_nowait(agent_pb2.AgentCommand(probe=agent_pb2.Probe(nonce=42)))
            reply = await until(lambda: conn.of("probe_reply"), what="the probe's answer")
            assert [r.nonce for r in reply] == [42]
        finally:
            await agent.shutdown()
            await server.stop(None)

    run(main())


# -- the simulator against a real sub-domain ---------------------------------------------------------


@contextlib.asynccontextmanager
async def subdomain() -> AsyncIterator[SubDomainManager]:
    cfg = SubDomainConfig(
        id="sd-1",
        region="east",
        listen="127.0.0.1:0",
        metrics_listen="",
        heartbeat_interval_s=0.2,
        silent_after_s=0.5,
        probe_timeout_s=0.5,
        dead_after_s=0.5,
        insecure=True,
    )
    mgr = SubDomainManager(cfg)
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.shutdown()


def test_quiet_but_alive_nodes_are_probed_and_never_die_silenced_and_killed_ones_do() -> None:
    async def main() -> None:
        async with subdomain() as mgr, Fleet([mgr.listen_address], 60, "cpu", seed=3) as fleet:
            await until(lambda: fleet.stats().connected == 60, timeout=15, what="60 registered")
            quiet, silenced, killed = fleet.pick(0.05), [], []
            rest = sorted(set(fleet.agents) - set(quiet))
            silenced, killed = rest[:2], rest[2:4]
            for node_id in quiet:  # alive, but sends nothing unasked: every silence ends in a probe
                fleet.agents[node_id]._planner.heartbeat_interval_s = 0.0
            fleet.silence(silenced)
            fleet.kill(killed)
            alive = set(fleet.agents) - set(silenced) - set(killed)

            def none_alive_dead() -> None:
                for node_id in alive:
                    assert mgr.node_state(node_id) != "dead", f"{node_id} died: it was alive"

            def faulted_dead() -> bool:
                none_alive_dead()
                return all(mgr.node_state(n) == "dead" for n in silenced + killed)

            await until(faulted_dead, timeout=15, what="silenced and killed nodes dead")
            # The quiet nodes go on being probed, and answering, for several silences more.
            answered = mgr.probes_answered
            await until(lambda: none_alive_dead() or mgr.probes_answered >= answered + 3 * len(quiet),
                        timeout=15, what="more probes answered")  # fmt: skip
            none_alive_dead()
            assert mgr.probes_sent >= mgr.probes_answered >= 3 * len(quiet)

    run(main(), timeout=60)


def test_a_stalled_subdomain_loop_does_not_kill_healthy_nodes() -> None:
    async def main() -> None:
        async with subdomain() as mgr, Fleet([mgr.listen_address], 40, "cpu", seed=4) as fleet:
            await until(lambda: fleet.stats().connected == 40, timeout=15, what="40 registered")
            time.sleep(1.5)  # blocks the loop (sub-domain and fleet): longer than silence + probe
            await until(lambda: mgr.stalls > 0, what="the stall noticed")
            for _ in range(10):  # a few silence-and-probe rounds
                await asyncio.sleep(0.2)
                for node_id in fleet.agents:
                    assert mgr.node_state(node_id) != "dead", node_id
            assert mgr.nodes_dead == 0

    run(main(), timeout=60)
