"""Health-driven self-healing in the sub-domain: the policy (pure), the task table's drain, and the
manager end to end over real gRPC (a raw agent reporting GPU signals, a fake master receiving the
drained task states and sending admin commands)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from subdomain_helpers import (
    FakeMaster,
    TestAgent,
    async_test,
    await_for,
    fake_master,
    inventory,
    make_state,
    spec,
    status_pb,
)

import sub_domain._manager as manager_module
from domainos.api.v1 import agent_pb2, subdomain_pb2
from domainos.api.v1 import common_pb2 as S
from domainos.model import GpuUsage, NodeUsage, TaskState
from sub_domain import SubDomainConfig, SubDomainManager
from sub_domain._health import HealthConfig, HealthPolicy


def usage(*gpus: GpuUsage) -> NodeUsage:
    return NodeUsage(cpu_percent=1.0, gpus=gpus)


def gpu(i: int = 0, **kw: Any) -> GpuUsage:
    return GpuUsage(i, temperature_c=kw.pop("temperature_c", 50.0), **kw)


# -- the policy ----------------------------------------------------------------------------------


def test_a_critical_xid_cordons_at_once_and_only_once() -> None:
    p = HealthPolicy()
    assert p.observe("n1", usage(gpu(0), gpu(1)), 0.0, cordoned=False) is None
    v = p.observe("n1", usage(gpu(0), gpu(1, last_xid=79, xid_count=1)), 1.0, cordoned=False)
    assert v is not None and v.critical
    assert v.reason == "critical: gpu1: xid 79 (GPU has fallen off the bus)"
    # The same counters again (the next report): acted on already.
    assert p.observe("n1", usage(gpu(0), gpu(1, last_xid=79, xid_count=1)), 2.0, cordoned=False) is None
    # A new critical event on another GPU counts.
    v2 = p.observe(
        "n1", usage(gpu(0, ecc_uncorrected=2), gpu(1, last_xid=79, xid_count=1)), 3.0, cordoned=False
    )
    assert v2 is not None and v2.critical and "gpu0: 2 uncorrectable (double-bit) ECC errors" in v2.reason


def test_an_uncordoned_node_is_cordoned_again_only_for_new_events() -> None:
    p = HealthPolicy()
    bad = usage(gpu(0, last_xid=48, xid_count=1, ecc_uncorrected=1))
    assert p.observe("n1", bad, 0.0, cordoned=False) is not None
    p.uncordoned("n1", bad, 10.0)
    assert p.observe("n1", bad, 11.0, cordoned=False) is None
    worse = usage(gpu(0, last_xid=48, xid_count=2, ecc_uncorrected=1))
    assert p.observe("n1", worse, 12.0, cordoned=False) is not None


def test_an_agent_restart_resets_the_counters_without_a_false_alarm() -> None:
    p = HealthPolicy()
    assert p.observe("n1", usage(gpu(0, last_xid=79, xid_count=3)), 0.0, cordoned=False) is not None
    # The agent restarted: its counters start from 0; nothing new happened.
    assert p.observe("n1", usage(gpu(0)), 5.0, cordoned=True) is None
    # A new critical Xid after the restart counts.
    assert p.observe("n1", usage(gpu(0, last_xid=79, xid_count=1)), 6.0, cordoned=False) is not None


def test_warning_signs_add_up_to_a_graceful_drain() -> None:
    p = HealthPolicy(HealthConfig(window_s=600.0, ecc_rate_per_h=1000.0))
    assert p.observe("n1", usage(gpu(0, ecc_corrected=10)), 0.0, cordoned=False) is None
    hot = usage(gpu(0, ecc_corrected=10, temperature_c=95.0))
    assert p.observe("n1", hot, 1.0, cordoned=False) is None  # heat alone: 0.3
    assert p.risk("n1") == 0.3
    # 200 corrected errors in the window: 1200/h -> the ECC part is full (0.4): 0.7 in all.
    v = p.observe("n1", usage(gpu(0, ecc_corrected=210, temperature_c=95.0)), 2.0, cordoned=False)
    assert v is not None and not v.critical and v.risk == 0.7
    assert v.reason.startswith("at risk (0.70): 200 corrected ECC errors in 600s; GPU temperature")
    # Still at risk on the next report: no second verdict.
    assert p.observe("n1", usage(gpu(0, ecc_corrected=211, temperature_c=95.0)), 3.0, cordoned=False) is None


def test_task_failures_of_several_jobs_and_throttling_drain_a_node() -> None:
    p = HealthPolicy(HealthConfig(failures_for_risk=3))
    for i, job in enumerate(("j-1", "j-1", "j-2", "j-3", "j-4")):
        assert p.task_failed("n0", job, float(i), cordoned=False) is None  # failures alone: at most 0.6
    assert p.risk("n0") == 0.6
    throttled = usage(gpu(0, throttle_reasons=0x40))  # hw thermal slowdown: 0.3
    assert p.observe("n1", throttled, 0.0, cordoned=False) is None
    assert p.task_failed("n1", "j-1", 1.0, cordoned=False) is None
    assert p.task_failed("n1", "j-1", 2.0, cordoned=False) is None  # the same job: still one (0.5)
    v = p.task_failed("n1", "j-2", 3.0, cordoned=False)  # two jobs: 0.3 + 0.4
    assert v is not None and not v.critical and v.risk == 0.7
    assert v.reasons == ("gpu0 throttled (hw thermal slowdown)", "tasks of 2 jobs failed here in 600s")


def test_old_signs_leave_the_window() -> None:
    p = HealthPolicy(HealthConfig(window_s=60.0, failures_for_risk=2))
    p.task_failed("n1", "j-1", 0.0, cordoned=False)
    assert p.risk("n1") == 0.3
    p.task_failed("n1", "j-2", 100.0, cordoned=False)  # j-1 is out of the window by now
    assert p.risk("n1") == 0.3


# -- the task table --------------------------------------------------------------------------------


def test_drain_moves_checkpointable_tasks_first_and_marks_their_final_state() -> None:
    reg, table = make_state()
    reg.register(inventory("n1", cpus=8), "inc", 0.0, conn_token=1)
    ck = dataclasses.replace(spec("j-ck"), checkpointable=True)
    plain = spec("j-plain")
    table.place(ck, 0.0)
    table.place(plain, 0.0)
    effects = table.drain("n1", "at risk", grace_s=30.0, now=1.0, checkpointable_only=True)
    stops = [e for e in effects if type(e).__name__ == "StopOnAgent"]
    assert [s.key.job_id for s in stops] == ["j-ck"] and stops[0].grace_s == 30.0
    assert table.draining_left("n1") == 1
    # The stopped task's final state carries the drained flag up to the master.
    out = table.agent_status(
        "n1", dataclasses.replace(table.get(ck.ref).status, state=TaskState.CANCELLED), 2.0
    )  # type: ignore[union-attr]
    forwarded = [e.status for e in out if type(e).__name__ == "Forward"]
    assert forwarded and forwarded[0].drained and forwarded[0].state == TaskState.CANCELLED
    # Draining again moves the rest, not the one already moving.
    effects = table.drain("n1", "timeout", grace_s=5.0, now=3.0)
    assert [e.key.job_id for e in effects if type(e).__name__ == "StopOnAgent"] == ["j-plain"]
    assert table.drained == 2
    table.validate()


# -- the manager, over gRPC -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "TICK_INTERVAL_S", 0.02)


@contextlib.asynccontextmanager
async def running(master: str, **kw: Any) -> AsyncIterator[SubDomainManager]:
    cfg = SubDomainConfig(
        id="sd-1",
        region="east",
        listen="127.0.0.1:0",
        metrics_listen="",
        master=master,
        summary_interval_s=0.1,
        insecure=True,
        **kw,
    )
    mgr = SubDomainManager(cfg)
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.shutdown()


def place(job: str, *, checkpointable: bool = False, cmd_id: str = "") -> dict[str, Any]:
    return {
        "place_task": subdomain_pb2.PlaceTask(
            command_id=cmd_id or f"p-{job}",
            spec=S.TaskSpec(
                job_id=job,
                task_index=0,
                attempt=0,
                command=["sleep", "100"],
                resources=S.Resources(cpu_millis=1000, memory_bytes=2**28, gpus=1, gpu_model="H100"),
                checkpointable=checkpointable,
            ),
        )
    }


def gpu_usage(**kw: Any) -> Any:
    gpus = [S.GpuUsage(index=i, temperature_c=50.0) for i in range(2)]
    for k, v in kw.items():
        setattr(gpus[0], k, v)
    return S.NodeUsage(cpu_percent=1.0, gpus=gpus)


async def start_two(master: FakeMaster, a: TestAgent) -> tuple[Any, Any]:
    await master.send(**place("j-ck", checkpointable=True))
    s1 = await a.next("start_task")
    await master.send(**place("j-plain"))
    s2 = await a.next("start_task")
    await a.report(
        status_pb(s1, S.TASK_STATE_RUNNING, pid=11),
        status_pb(s2, S.TASK_STATE_RUNNING, pid=12),
        usage=gpu_usage(),
    )
    await master.task_state("j-plain", S.TASK_STATE_RUNNING)
    return s1, s2


async def admin(master: FakeMaster, action: int, node: str = "n1", **kw: Any) -> Any:
    rid = f"r-{action}-{node}"
    await master.send(node_admin=subdomain_pb2.NodeAdmin(request_id=rid, node_id=node, action=action, **kw))
    return await master.next("node_admin", lambda r: r.request_id == rid)


@async_test(timeout=30)
async def test_a_critical_xid_cordons_and_drains_the_node_and_survives_a_restart(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'sd.db'}"
    async with fake_master() as master:
        async with running(master.address, store=store, drain_grace_s=7.0) as mgr:
            a = TestAgent(mgr.listen_address, "n1", gpus=2)
            await a.connect()
            await await_for(lambda: master.hellos)
            s1, s2 = await start_two(master, a)
            await a.report(usage=gpu_usage(last_xid=79, xid_count=1))
            stops = [await a.next("stop_task"), await a.next("stop_task")]
            assert {s.task.job_id for s in stops} == {"j-ck", "j-plain"}
            assert all(
                s.grace_s == 7.0 and "gpu0: xid 79 (GPU has fallen off the bus)" in s.reason for s in stops
            )
            node = mgr.registry.get("n1")
            assert node is not None and node.cordon is not None and not node.placeable
            assert node.cordon.by == "health" and node.cordon.reason.startswith("critical: gpu0: xid 79")
            # The agent stops them; the master learns they were drained (requeued for free there).
            await a.report(
                status_pb(s1, S.TASK_STATE_CANCELLED, exit_code=-15),
                status_pb(s2, S.TASK_STATE_CANCELLED, exit_code=-15),
            )
            done = await master.task_state("j-plain", S.TASK_STATE_CANCELLED)
            assert done.drained
            # Nothing new is placed on a cordoned node.
            await master.send(**place("j-new"))
            rejected = await master.task_state("j-new", S.TASK_STATE_REJECTED)
            assert rejected.message
            assert mgr.cordons["critical"] == 1 and mgr.metrics_snapshot().nodes_cordoned == 1
            await a.close()
        # A restarted sub-domain still knows the node is cordoned (the Xid will not be seen again).
        async with running(master.address, store=store) as mgr2:
            a2 = TestAgent(mgr2.listen_address, "n1", gpus=2, incarnation="inc-2")
            await a2.connect()
            await a2.report(usage=gpu_usage())
            await await_for(lambda: mgr2.nodes_ready == 1)
            await await_for(lambda: len(master.hellos) == 2)  # its stream to the master is up too
            node = mgr2.registry.get("n1")
            assert node is not None and node.cordon is not None and node.view_state == "cordoned"
            view = (await admin(master, S.NODE_ACTION_UNCORDON, reason="GPU replaced")).node
            assert view.state == "ready" and not view.cordon_reason
            assert mgr2.registry.get("n1").placeable  # type: ignore[union-attr]
            await a2.close()


@async_test(timeout=30)
async def test_a_node_at_risk_moves_checkpointing_work_first_then_the_rest(tmp_path: Path) -> None:
    async with fake_master() as master, running(master.address, drain_timeout_s=0.5) as mgr:
        a = TestAgent(mgr.listen_address, "n1", gpus=2)
        await a.connect()
        await await_for(lambda: master.hellos)
        await start_two(master, a)
        # Hot, throttled and a burst of corrected ECC errors: risk 1.0 -> a graceful drain.
        await a.report(usage=gpu_usage(temperature_c=96.0, throttle_reasons=0x40, ecc_corrected=5000))
        await a.report(usage=gpu_usage(temperature_c=97.0, throttle_reasons=0x40, ecc_corrected=9000))
        first = await a.next("stop_task")
        assert first.task.job_id == "j-ck" and first.reason.startswith("draining node n1: at risk (1.00)")
        # The job that cannot checkpoint may run until drain_timeout_s, then it moves too.
        second = await a.next("stop_task", timeout=5.0)
        assert second.task.job_id == "j-plain" and "drain timeout" in second.reason
        assert mgr.cordons["risk"] == 1
        view = mgr.node_view(mgr.registry.get("n1"))  # type: ignore[arg-type]
        assert view.risk == 1.0 and view.cordoned_by == "health" and view.draining
        await a.close()


@async_test(timeout=30)
async def test_admin_cordon_drain_uncordon(tmp_path: Path) -> None:
    async with fake_master() as master, running(master.address) as mgr:
        a = TestAgent(mgr.listen_address, "n1", gpus=2)
        await a.connect()
        await await_for(lambda: master.hellos)
        await start_two(master, a)
        reply = await admin(master, S.NODE_ACTION_CORDON, reason="maintenance", by="token:admin")
        assert reply.found and reply.node.state == "cordoned" and reply.node.cordoned_by == "admin"
        assert reply.node.cordon_reason == "maintenance" and reply.tasks_stopped == 0
        reply = await admin(master, S.NODE_ACTION_DRAIN, reason="maintenance", grace_s=2.0)
        assert reply.tasks_stopped == 2 and reply.node.draining
        stops = [await a.next("stop_task"), await a.next("stop_task")]
        assert all(s.grace_s == 2.0 for s in stops)
        missing = await admin(master, S.NODE_ACTION_DRAIN, node="nope")
        assert not missing.found
        # An agent that reports itself UNHEALTHY cannot be uncordoned.
        await a.send(
            report=agent_pb2.AgentReport(
                incarnation="inc-1",
                seq=9,
                health=S.NodeHealth(status=S.HEALTH_STATUS_UNHEALTHY, conditions=["gpu0: xid 79"]),
            )
        )
        await await_for(lambda: mgr.registry.get("n1").health.cordoned)  # type: ignore[union-attr]
        refused = await admin(master, S.NODE_ACTION_UNCORDON)
        assert refused.error.startswith("node n1 still reports UNHEALTHY (gpu0: xid 79)")
        assert refused.node.state == "cordoned"
        await a.close()


def test_progress_is_forwarded_at_most_every_ten_seconds_and_checkpoints_at_once() -> None:
    from domainos.model import TaskProgress

    reg, table = make_state()
    reg.register(inventory("n1", cpus=8), "inc", 0.0, conn_token=1)
    s = spec("j-1")
    table.place(s, 0.0)
    running = dataclasses.replace(table.get(s.ref).status, state=TaskState.RUNNING)  # type: ignore[union-attr]
    table.agent_status("n1", running, 1.0)

    def report(step: int, at: float, ck: float = 0.0) -> list[Any]:
        p = TaskProgress(step=step, step_at=at, checkpoint_step=step if ck else -1, checkpoint_at=ck)
        out = table.agent_status("n1", dataclasses.replace(running, progress=p), at)
        return [e.status.progress.step for e in out if type(e).__name__ == "Forward"]

    assert report(1, 20.0) == [1]  # the first report of this attempt
    assert report(2, 25.0) == []  # within 10 s: kept, not sent
    assert report(3, 27.0, ck=26.0) == [3]  # a new checkpoint: at once
    assert report(4, 31.0, ck=26.0) == []  # the same checkpoint
    assert report(5, 38.0, ck=26.0) == [5]
    assert table.get(s.ref).status.progress.step == 5  # type: ignore[union-attr]
    table.validate()


# -- fencing: a sub-domain cut off from the master ------------------------------------------------


def test_the_master_fences_replaceable_tasks_a_little_before_it_replaces_them() -> None:
    from domainos.jobspec import parse_spec
    from master_domain._convert import fence_after

    plain = parse_spec({"command": ["x"]})
    assert fence_after(plain, 30.0) == 25.0  # the default grace, 5 s early
    assert fence_after(plain, 6.0) == 3.0  # half of a short one
    assert fence_after(parse_spec({"command": ["x"], "disconnect": {"lost_after": "10m"}}), 30.0) == 595.0
    assert fence_after(parse_spec({"command": ["x"], "disconnect": {"replace": False}}), 30.0) == 0.0
    assert fence_after(plain, 0.0) == 0.0


@async_test(timeout=30)
async def test_cut_off_from_the_master_it_stops_only_what_the_master_will_replace() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        a = TestAgent(mgr.listen_address, "n1", gpus=2)
        await a.connect()
        await await_for(lambda: master.hellos)
        fenced = place("j-fenced")
        fenced["place_task"].spec.fence_after_s = 0.5
        await master.send(**fenced)
        s1 = await a.next("start_task")
        await master.send(**place("j-waits"))  # disconnect.replace: false -> fence_after_s 0
        s2 = await a.next("start_task")
        await a.report(status_pb(s1, S.TASK_STATE_RUNNING, pid=1), status_pb(s2, S.TASK_STATE_RUNNING, pid=2))
        await master.task_state("j-waits", S.TASK_STATE_RUNNING)
        assert master.server is not None
        await master.server.stop(grace=None)  # the partition
        await await_for(lambda: not mgr.connected_to_master, what="the disconnect")
        stop = await a.next("stop_task", timeout=5.0)
        assert stop.task.job_id == "j-fenced" and "cut off from the master" in stop.reason
        await a.report(status_pb(s1, S.TASK_STATE_CANCELLED, exit_code=-15))
        await await_for(lambda: mgr.tasks.count(TaskState.CANCELLED) == 1)
        entry = mgr.tasks.get(next(e.key for e in mgr.tasks.entries() if e.key.job_id == "j-fenced"))
        assert entry is not None and entry.status.drained  # the master requeues it for free if it can
        with pytest.raises((AssertionError, TimeoutError)):
            await a.next("stop_task", timeout=1.0)  # the other one keeps running
        assert mgr.tasks.fenced == 1
        await a.close()
