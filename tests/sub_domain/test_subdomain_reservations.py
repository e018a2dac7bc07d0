"""Gang reservations on the sub-domain: the pure state machine, then a real SubDomainManager over
gRPC with raw test agents below and a fake master above."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from subdomain_helpers import GI, FakeMaster, TestAgent, async_test, await_for, inventory, status_pb

import sub_domain._manager as manager_module
from domainos.api.v1 import common_pb2, subdomain_pb2
from domainos.clock import FakeClock
from domainos.model import PlacementConstraints, TaskRef, TaskSpec, TaskState
from domainos.resources import Resources
from sub_domain import SubDomainConfig, SubDomainManager
from sub_domain._registry import NodeRegistry
from sub_domain._reservations import ACCEPTED, COMMITTED, REFUSED, ReplyMaster, Reservations
from sub_domain._tasks import Forward, StartOnAgent, StopOnAgent, TaskTable

S = common_pb2


def make() -> tuple[NodeRegistry, TaskTable, Reservations]:
    reg = NodeRegistry("sd-1", max_nodes=100, silent_after_s=15.0, dead_after_s=5.0)
    ids = itertools.count(1)
    table = TaskTable("sd-1", reg, new_id=lambda: f"c{next(ids)}")
    return reg, table, Reservations("sd-1", reg, table, tombstone_s=100.0)


def add(reg: NodeRegistry, node_id: str, **kw: Any) -> None:
    reg.register(inventory(node_id, **kw), "i", 0.0, conn_token=len(reg.nodes) + 1)


def tspec(job: str, i: int, *, gpus: int = 0, cpus: float = 1, group: str = "", tp: bool = False) -> TaskSpec:
    return TaskSpec(
        TaskRef(job, i, 0),
        ("true",),
        resources=Resources(int(cpus * 1000), GI, gpus, "H100" if gpus else ""),
        placement=PlacementConstraints(group=group, one_nvlink_domain=tp),
        replicas=4,
    )


def reply(effects: list[Any]) -> ReplyMaster:
    (r,) = [e for e in effects if isinstance(e, ReplyMaster)]
    return r


def check(reg: NodeRegistry, table: TaskTable, res: Reservations) -> None:
    table.validate()
    res.validate()


# -- the pure state machine -----------------------------------------------------------------------


def test_accept_holds_everything_and_commit_starts_every_task() -> None:
    reg, table, res = make()
    add(reg, "n1", gpus=8, cpus=16)
    add(reg, "n2", gpus=8, cpus=16)
    specs = [tspec("j", i, gpus=4, tp=True) for i in range(4)]
    r = reply(res.reserve("j/0/sd-1", specs, 30.0, now=0.0, wall=0.0))
    assert r.outcome == ACCEPTED and [p.task_index for p in r.placements] == [0, 1, 2, 3]
    assert sorted(p.node_id for p in r.placements) == ["n1", "n1", "n2", "n2"]
    assert res.held_count == 1 and len(table) == 0
    s = reg.summary()
    assert s.free.gpus == 0 and s.running_tasks == 0  # held: gone from free, not running
    check(reg, table, res)
    effects = res.commit("j/0/sd-1", now=1.0)
    starts = [e for e in effects if isinstance(e, StartOnAgent)]
    assert sorted(e.spec.ref.task_index for e in starts) == [0, 1, 2, 3]
    assert all(e.spec.reservation_id == "j/0/sd-1" for e in starts)
    assert all(len(e.gpu_indexes) == 4 for e in starts)
    assigned = [e.status for e in effects if isinstance(e, Forward)]
    assert {s.state for s in assigned} == {TaskState.ASSIGNED} and len(assigned) == 4
    assert reply(effects).outcome == COMMITTED
    assert res.held_count == 0 and reg.summary().running_tasks == 4
    check(reg, table, res)
    # idempotent: a repeated Commit and a repeated Reserve are answered as the first ones were
    again = res.commit("j/0/sd-1", now=2.0)
    assert [type(e) for e in again] == [ReplyMaster] and reply(again).outcome == COMMITTED
    rep = reply(res.reserve("j/0/sd-1", specs, 30.0, now=2.0, wall=0.0))
    assert rep.outcome == ACCEPTED and rep.placements == r.placements
    assert res.hello_states() == [subdomain_pb2.ReservationState(reservation_id="j/0/sd-1", committed=True)]


def test_refusal_holds_nothing_and_says_why_with_numbers() -> None:
    reg, table, res = make()
    add(reg, "n1", gpus=8, domain_size=4)
    before = reg.summary()
    specs = [tspec("j", 0, gpus=4, tp=True), tspec("j", 1, gpus=4, tp=True), tspec("j", 2, gpus=4, tp=True)]
    r = reply(res.reserve("j/0/sd-1", specs, 30.0, now=0.0, wall=0.0))
    assert r.outcome == REFUSED and not r.expired
    assert r.reason.startswith("task 2 (cpus=1 memory=1Gi gpus=4 (H100)) does not fit: ")
    assert "2 of 3 tasks of reservation j/0/sd-1 had been placed; none is held" in r.reason
    assert reg.summary() == before and res.held_count == 0
    check(reg, table, res)
    # the refusal is remembered: a repeat gets the same answer, a Commit is refused
    assert reply(res.reserve("j/0/sd-1", specs, 30.0, now=1.0, wall=0.0)) == r
    c = reply(res.commit("j/0/sd-1", now=1.0))
    assert c.outcome == REFUSED and c.expired and c.reason.startswith("the reservation was refused: task 2")


def test_a_tp_group_per_nvlink_domain() -> None:
    reg, table, res = make()
    add(reg, "n1", gpus=8, domain_size=4)
    specs = [tspec("j", 0, gpus=4, tp=True), tspec("j", 1, gpus=4, tp=True)]
    res.reserve("r", specs, 30.0, now=0.0, wall=0.0)
    node = reg.get("n1")
    assert node is not None
    groups = sorted(a.gpu_indexes for a in node.allocations.values())
    assert groups == [(0, 1, 2, 3), (4, 5, 6, 7)]
    check(reg, table, res)


def test_pipeline_stages_land_in_one_block_when_possible() -> None:
    reg, table, res = make()
    for b in ("A", "B"):
        for i in range(2):
            add(reg, f"{b}{i}", gpus=2, cpus=8, block=b)
    # two DP replicas of two stages each: every stage of one replica in one block
    specs = [tspec("j", i, gpus=2, group=f"dp{i // 2}") for i in range(4)]
    r = reply(res.reserve("r", specs, 30.0, now=0.0, wall=0.0))
    assert r.outcome == ACCEPTED
    blocks = {p.task_index: p.block for p in r.placements}
    assert blocks[0] == blocks[1] and blocks[2] == blocks[3]
    check(reg, table, res)


def test_a_pipeline_goes_to_a_block_that_holds_it_whole() -> None:
    reg, table, res = make()
    add(reg, "a0", gpus=2, cpus=4, block="A")  # the best fit for one stage, but room for one only
    add(reg, "b0", gpus=2, cpus=8, block="B")
    add(reg, "b1", gpus=2, cpus=8, block="B")
    specs = [tspec("j", i, gpus=2, group="dp0") for i in range(2)]
    r = reply(res.reserve("r", specs, 30.0, now=0.0, wall=0.0))
    assert r.outcome == ACCEPTED and {p.block for p in r.placements} == {"B"}
    check(reg, table, res)


def test_a_pipeline_no_block_holds_whole_is_split_over_blocks() -> None:
    reg, table, res = make()
    add(reg, "a0", gpus=2, block="A")
    add(reg, "b0", gpus=2, block="B")
    specs = [tspec("j", i, gpus=2, group="dp0") for i in range(2)]
    r = reply(res.reserve("r", specs, 30.0, now=0.0, wall=0.0))
    assert r.outcome == ACCEPTED and sorted(p.block for p in r.placements) == ["A", "B"]
    check(reg, table, res)


def test_expiry_drops_the_hold_and_a_late_commit_is_refused_expired() -> None:
    reg, table, res = make()
    add(reg, "n1", cpus=4)
    before = reg.summary().free
    assert reply(res.reserve("r", [tspec("j", 0)], 5.0, now=100.0, wall=0.0)).outcome == ACCEPTED
    res.tick(104.9)
    assert res.held_count == 1
    res.tick(105.0)
    assert res.held_count == 0 and reg.summary().free == before and res.state("r") == "expired"
    c = reply(res.commit("r", now=106.0))
    assert c.outcome == REFUSED and c.expired and "hold of 5.0 s ran out" in c.reason
    # a Reserve after expiry is refused, never held again
    again = reply(res.reserve("r", [tspec("j", 0)], 5.0, now=107.0, wall=0.0))
    assert again.outcome == REFUSED and res.held_count == 0
    check(reg, table, res)


def test_commit_racing_the_expiry_is_refused() -> None:
    reg, table, res = make()
    add(reg, "n1", cpus=4)
    res.reserve("r", [tspec("j", 0)], 5.0, now=0.0, wall=0.0)
    c = reply(res.commit("r", now=5.0))  # no tick ran yet
    assert c.outcome == REFUSED and c.expired and len(table) == 0
    check(reg, table, res)


def test_release_of_a_hold_and_of_a_committed_reservation() -> None:
    reg, table, res = make()
    add(reg, "n1", cpus=4)
    res.reserve("held", [tspec("a", 0)], 30.0, now=0.0, wall=0.0)
    assert res.release("held", "gang failed elsewhere", now=1.0, wall=1.0) == []
    assert res.held_count == 0 and reg.summary().free.cpu_millis == 4000
    assert reply(res.reserve("held", [tspec("a", 0)], 30.0, now=2.0, wall=0.0)).reason == (
        "released: gang failed elsewhere"
    )
    res.reserve("done", [tspec("b", 0), tspec("b", 1)], 30.0, now=0.0, wall=0.0)
    res.commit("done", now=1.0)
    effects = res.release("done", "the gang failed", now=2.0, wall=2.0)
    stops = [e for e in effects if isinstance(e, StopOnAgent)]
    assert sorted(e.key.task_index for e in stops) == [0, 1] and {e.reason for e in stops} == {
        "the gang failed"
    }
    res.release("done", "again", now=3.0, wall=3.0)  # a repeat does nothing
    # a Release of an id never seen is remembered: its late Reserve is refused
    res.release("ghost", "the master gave up", now=3.0, wall=3.0)
    assert reply(res.reserve("ghost", [tspec("c", 0)], 30.0, now=4.0, wall=0.0)).outcome == REFUSED
    check(reg, table, res)


def test_malformed_reservations_are_refused() -> None:
    reg, table, res = make()
    add(reg, "n1", cpus=4)
    assert "has no tasks" in reply(res.reserve("r1", [], 30.0, now=0.0, wall=0.0)).reason
    assert "hold_s must be > 0" in reply(res.reserve("r2", [tspec("j", 0)], 0.0, now=0.0, wall=0.0)).reason
    dup = reply(res.reserve("r3", [tspec("j", 0), tspec("j", 0)], 30.0, now=0.0, wall=0.0))
    assert "appears twice" in dup.reason
    res.reserve("r4", [tspec("k", 0)], 30.0, now=0.0, wall=0.0)
    assert (
        "already held by reservation r4"
        in reply(res.reserve("r5", [tspec("k", 0)], 30.0, now=0.0, wall=0.0)).reason
    )
    check(reg, table, res)


def test_node_death_drops_the_whole_reservation_and_tells_the_master() -> None:
    reg, table, res = make()
    add(reg, "n1", cpus=2)
    add(reg, "n2", cpus=2)
    res.reserve("r", [tspec("j", 0, cpus=2), tspec("j", 1, cpus=2)], 30.0, now=0.0, wall=0.0)
    out = res.lost_holds("n2", None, "died (its stream ended)", 1.0)
    r = reply(out)
    assert r.outcome == REFUSED and r.expired
    assert r.reason.startswith("dropped: node n2 holding task") and r.reason.endswith(
        "died (its stream ended)"
    )
    assert res.held_count == 0 and reg.summary().free.cpu_millis == 4000
    assert reply(res.commit("r", now=2.0)).outcome == REFUSED
    check(reg, table, res)


def test_master_lost_drops_uncommitted_holds_only() -> None:
    reg, table, res = make()
    add(reg, "n1", cpus=4)
    res.reserve("held", [tspec("a", 0)], 30.0, now=0.0, wall=0.0)
    res.reserve("done", [tspec("b", 0)], 30.0, now=0.0, wall=0.0)
    res.commit("done", now=0.0)
    assert res.master_lost(1.0) == 1
    assert [s.reservation_id for s in res.hello_states()] == ["done"]
    check(reg, table, res)


def test_committed_reservations_are_rebuilt_from_the_task_table_after_a_restart() -> None:
    reg, table, res = make()
    add(reg, "n1", cpus=4)
    res.reserve("r", [tspec("j", 0), tspec("j", 1)], 30.0, now=0.0, wall=0.0)
    res.commit("r", now=0.0)
    fresh = Reservations("sd-1", reg, table)
    fresh.rebuild_committed(0.0)
    assert fresh.hello_states() == [subdomain_pb2.ReservationState(reservation_id="r", committed=True)]
    assert reply(fresh.commit("r", now=1.0)).outcome == COMMITTED
    stops = [e for e in fresh.release("r", "gone", now=1.0, wall=1.0) if isinstance(e, StopOnAgent)]
    assert len(stops) == 2
    fresh.validate()


def test_finished_commits_and_tombstones_are_forgotten() -> None:
    reg, table, res = make()
    add(reg, "n1", cpus=4)
    res.reserve("r", [tspec("j", 0)], 30.0, now=0.0, wall=0.0)
    res.commit("r", now=0.0)
    key = TaskRef("j", 0, 0)
    table.agent_status("n1", table.get(key).status.__class__(key, TaskState.SUCCEEDED), 1.0)  # type: ignore[union-attr]
    table.master_ack([key])
    res.tick(10.0)
    assert res.hello_states() == [] and res.state("r") == "finished"
    assert reply(res.commit("r", now=11.0)).outcome == COMMITTED
    res.tick(200.0)
    assert res.state("r") == "unknown"
    check(reg, table, res)


# -- through a real manager over gRPC ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "TICK_INTERVAL_S", 0.02)


@contextlib.asynccontextmanager
async def federation(
    clock: FakeClock | None = None, nodes: int = 2, **inv: Any
) -> AsyncIterator[tuple[FakeMaster, SubDomainManager, list[TestAgent]]]:
    master = FakeMaster()
    await master.start()
    cfg = SubDomainConfig(
        id="sd-1",
        region="east",
        listen="127.0.0.1:0",
        master=master.address,
        full_sync_interval_s=0.5,
        summary_interval_s=0.1,
        insecure=True,
    )
    mgr = SubDomainManager(cfg, clock=clock)
    agents: list[TestAgent] = []
    try:
        await mgr.start()
        await await_for(lambda: mgr.connected_to_master, what="connected to the master")
        for i in range(nodes):
            a = TestAgent(mgr.listen_address, f"n{i}", **inv)
            await a.connect()
            agents.append(a)
        await await_for(lambda: mgr.nodes_ready == nodes, what="nodes ready")
        yield master, mgr, agents
    finally:
        for a in agents:
            await a.close()
        await mgr.shutdown()
        await master.stop()


def reserve_cmd(
    rid: str, job: str, n: int, *, gpus: int = 0, cpus: int = 1000, hold_s: float = 30.0
) -> dict[str, Any]:
    return {
        "reserve": subdomain_pb2.ReserveTasks(
            reservation_id=rid,
            hold_s=hold_s,
            tasks=[
                S.TaskSpec(
                    job_id=job,
                    task_index=i,
                    attempt=0,
                    command=["echo", "hi"],
                    resources=S.Resources(cpu_millis=cpus, memory_bytes=2**28, gpus=gpus),
                    reservation_id=rid,
                    replicas=n,
                )
                for i in range(n)
            ],
        )
    }


async def reservation(master: FakeMaster, rid: str) -> Any:
    return await master.next("reservation", lambda r: r.reservation_id == rid)


def mgr_valid(mgr: SubDomainManager) -> None:
    mgr.tasks.validate()
    mgr.reservations.validate()


@async_test(30.0)
async def test_grpc_accept_then_commit_starts_every_task_on_its_agent() -> None:
    async with federation(gpus=4) as (master, mgr, agents):
        await master.send(**reserve_cmd("g/0/sd-1", "g", 4, gpus=2))
        r = await reservation(master, "g/0/sd-1")
        assert r.outcome == ACCEPTED and len(r.placements) == 4
        assert {p.node_id for p in r.placements} == {"n0", "n1"}
        # the next summary shows the holds as used
        await master.next("summary", lambda s: s.summary.reservations_held == 1 and s.summary.free.gpus == 0)
        for a in agents:
            assert a.commands.empty()  # nothing started while held
        await master.send(commit=subdomain_pb2.CommitReservation(reservation_id="g/0/sd-1"))
        c = await reservation(master, "g/0/sd-1")
        assert c.outcome == COMMITTED
        snap = mgr.metrics_snapshot()
        assert snap.reservations == {"accepted": 1, "refused": 0, "committed": 1, "expired": 0}
        assert snap.reservations_held == 0
        starts = [await a.next("start_task") for a in agents for _ in range(2)]
        assert sorted(s.spec.task_index for s in starts) == [0, 1, 2, 3]
        assert {s.spec.reservation_id for s in starts} == {"g/0/sd-1"}
        for a, s in zip([a for a in agents for _ in range(2)], starts, strict=True):
            await a.report(status_pb(s, S.TASK_STATE_RUNNING, pid=1))
        seen: set[int] = set()
        while len(seen) < 4:
            upd = await master.next("task_updates")
            seen |= {t.task_index for t in upd.tasks if t.job_id == "g" and t.state == S.TASK_STATE_RUNNING}
        mgr_valid(mgr)
        # a repeated Commit is answered COMMITTED and starts nothing more
        await master.send(commit=subdomain_pb2.CommitReservation(reservation_id="g/0/sd-1"))
        assert (await reservation(master, "g/0/sd-1")).outcome == COMMITTED
        # Release after commit stops the tasks with the reason
        await master.send(
            release=subdomain_pb2.ReleaseReservation(reservation_id="g/0/sd-1", reason="gang failed")
        )
        stops = [await a.next("stop_task") for a in agents for _ in range(2)]
        assert {s.reason for s in stops} == {"gang failed"}
        mgr_valid(mgr)


@async_test(30.0)
async def test_grpc_refusal_holds_nothing() -> None:
    async with federation(gpus=2) as (master, mgr, agents):
        await master.send(**reserve_cmd("big/0/sd-1", "big", 3, gpus=2))
        r = await reservation(master, "big/0/sd-1")
        assert r.outcome == REFUSED and not r.expired and "task 2" in r.reason and "none is held" in r.reason
        assert mgr.summary().free.gpus == 4 and mgr.reservations.held_count == 0
        await master.send(commit=subdomain_pb2.CommitReservation(reservation_id="big/0/sd-1"))
        c = await reservation(master, "big/0/sd-1")
        assert c.outcome == REFUSED and c.expired
        for a in agents:
            assert a.commands.empty()
        mgr_valid(mgr)


@async_test(30.0)
async def test_grpc_hold_expires_and_late_commit_is_refused() -> None:
    clock = FakeClock()
    async with federation(clock, nodes=1) as (master, mgr, agents):
        await master.send(**reserve_cmd("e/0/sd-1", "e", 1, hold_s=5.0))
        assert (await reservation(master, "e/0/sd-1")).outcome == ACCEPTED
        clock.advance(6.0)
        await await_for(lambda: mgr.reservations.held_count == 0, what="the hold to expire")
        await master.send(commit=subdomain_pb2.CommitReservation(reservation_id="e/0/sd-1"))
        c = await reservation(master, "e/0/sd-1")
        assert c.outcome == REFUSED and c.expired
        # Nothing was started; the 6 s without a heartbeat only cost the node a liveness Probe.
        while not agents[0].commands.empty():
            assert agents[0].commands.get_nowait().WhichOneof("body") == "probe"
        await master.send(**reserve_cmd("e/0/sd-1", "e", 1))
        assert (await reservation(master, "e/0/sd-1")).outcome == REFUSED
        mgr_valid(mgr)


@async_test(30.0)
async def test_grpc_node_death_while_held_refuses_the_reservation() -> None:
    clock = FakeClock()
    async with federation(clock, nodes=2, cpus=2) as (master, mgr, agents):
        await master.send(**reserve_cmd("d/0/sd-1", "d", 2, cpus=2000))
        r = await reservation(master, "d/0/sd-1")
        assert r.outcome == ACCEPTED
        await agents[1].close()
        await await_for(lambda: mgr.node_state("n1") == "suspect", what="suspect")
        clock.advance(6.0)
        await await_for(lambda: mgr.node_state("n1") == "dead", what="dead")
        refused = await reservation(master, "d/0/sd-1")
        assert refused.outcome == REFUSED and refused.expired and "node n1" in refused.reason
        assert mgr.reservations.held_count == 0
        mgr_valid(mgr)


@async_test(30.0)
async def test_grpc_idempotent_reserve_and_hello_resync() -> None:
    async with federation(nodes=1) as (master, mgr, _agents):
        await master.send(**reserve_cmd("i/0/sd-1", "i", 2))
        first = await reservation(master, "i/0/sd-1")
        await master.send(**reserve_cmd("i/0/sd-1", "i", 2))
        second = await reservation(master, "i/0/sd-1")
        assert first == second and first.outcome == ACCEPTED
        await master.send(**reserve_cmd("c/0/sd-1", "c", 1))
        await reservation(master, "c/0/sd-1")
        await master.send(commit=subdomain_pb2.CommitReservation(reservation_id="c/0/sd-1"))
        assert (await reservation(master, "c/0/sd-1")).outcome == COMMITTED
        # the master goes away and comes back: the hold is dropped, the commit is listed
        await master.stop()
        await await_for(lambda: not mgr.connected_to_master, what="the stream to end")
        await await_for(lambda: mgr.reservations.held_count == 0, what="holds dropped")
        again = FakeMaster()
        await again.start(master.address)
        try:
            await await_for(lambda: again.hellos, timeout=15.0, what="a new Hello")
            states = list(again.hellos[0].reservations)
            assert [(s.reservation_id, s.committed) for s in states] == [("c/0/sd-1", True)]
        finally:
            await again.stop()
        mgr_valid(mgr)
