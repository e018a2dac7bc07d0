"""The report planner: a pure state machine run in fake time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from domainos.clock import FakeClock
from domainos.model import GpuUsage, HealthStatus, NodeHealth, NodeUsage, TaskRef, TaskState, TaskStatus
from node_agent._state import (
    BATCH_WINDOW_S,
    Connected,
    Disconnected,
    Event,
    IntervalsChanged,
    ReportPlanner,
    SendReport,
    TaskChanged,
    TasksForgotten,
    Tick,
    UsageSampled,
)

GIB = 2**30
HEALTHY = NodeHealth(HealthStatus.HEALTHY)


def planner(clock: FakeClock, report: float = 1.0, full: float = 5.0) -> ReportPlanner:
    return ReportPlanner(
        clock=clock,
        report_interval_s=report,
        full_sync_interval_s=full,
        memory_total=100 * GIB,
        gpu_memory_totals={0: 80 * GIB},
    )


def step(p: ReportPlanner, event: Event) -> list[SendReport]:
    out = p.handle(event)
    p.validate()
    return out


def status(job: str, state: TaskState = TaskState.RUNNING, index: int = 0) -> TaskStatus:
    return TaskStatus(TaskRef(job, index, 0), state)


def test_transitions_are_batched_within_the_window() -> None:
    clock = FakeClock()
    p = planner(clock)
    step(p, Connected(NodeUsage(), HEALTHY))
    assert step(p, TaskChanged(status("a"))) == []
    clock.advance(0.01)
    step(p, TaskChanged(status("b")))
    step(p, TaskChanged(status("a", TaskState.SUCCEEDED)))
    assert p.next_deadline() == clock.monotonic() - 0.01 + BATCH_WINDOW_S
    assert step(p, Tick()) == []  # window not over yet
    clock.advance(BATCH_WINDOW_S)
    (report,) = step(p, Tick())
    assert (report.seq, report.full) == (1, False)
    # Every transition, in order: "a" started and finished inside the window.
    assert [(t.ref.job_id, t.state) for t in report.tasks] == [
        ("a", TaskState.RUNNING),
        ("b", TaskState.RUNNING),
        ("a", TaskState.SUCCEEDED),
    ]
    assert report.usage is None and report.health is None
    assert step(p, Tick()) == []


def test_usage_is_damped_and_sent_only_on_meaningful_change() -> None:
    clock = FakeClock()
    p = planner(clock, report=1.0)
    step(p, Connected(NodeUsage(cpu_percent=10, memory_used_bytes=10 * GIB), HEALTHY))
    # Small changes: never sent as a delta.
    step(p, UsageSampled(NodeUsage(cpu_percent=13, memory_used_bytes=10 * GIB + GIB // 2), HEALTHY))
    clock.advance(2)
    assert step(p, Tick()) == []
    # A big change right after the last usage report waits for report_interval_s.
    step(p, UsageSampled(NodeUsage(cpu_percent=50, memory_used_bytes=10 * GIB), HEALTHY))
    (r,) = step(p, Tick())
    assert r.usage is not None and r.usage.cpu_percent == 50
    step(p, UsageSampled(NodeUsage(cpu_percent=90, memory_used_bytes=10 * GIB), HEALTHY))
    clock.advance(0.5)
    assert step(p, Tick()) == []
    clock.advance(0.5)
    (r,) = step(p, Tick())
    assert r.usage is not None and r.usage.cpu_percent == 90 and r.tasks == ()
    # Memory: 1 % of the node's memory; GPU utilisation: 5 points.
    clock.advance(1)
    step(p, UsageSampled(NodeUsage(cpu_percent=90, memory_used_bytes=12 * GIB), HEALTHY))
    assert len(step(p, Tick())) == 1
    clock.advance(1)
    gpu = (GpuUsage(0, utilization_percent=40, memory_used_bytes=GIB, temperature_c=50, power_w=300),)
    step(p, UsageSampled(NodeUsage(cpu_percent=90, memory_used_bytes=12 * GIB, gpus=gpu), HEALTHY))
    assert len(step(p, Tick())) == 1
    clock.advance(1)
    gpu2 = (GpuUsage(0, utilization_percent=42, memory_used_bytes=GIB, temperature_c=52, power_w=310),)
    step(p, UsageSampled(NodeUsage(cpu_percent=90, memory_used_bytes=12 * GIB, gpus=gpu2), HEALTHY))
    assert step(p, Tick()) == []


def test_health_change_is_sent_at_once() -> None:
    clock = FakeClock()
    p = planner(clock)
    step(p, Connected(NodeUsage(), HEALTHY))
    hot = NodeHealth(HealthStatus.DEGRADED, ("gpu0: temperature 95 C > 90 C",))
    step(p, UsageSampled(NodeUsage(), hot))
    assert p.next_deadline() == clock.monotonic()
    (r,) = step(p, Tick())
    assert r.health == hot and r.usage is None
    assert step(p, Tick()) == []


def test_full_report_every_interval_with_every_known_task() -> None:
    clock = FakeClock()
    p = planner(clock, full=5.0)
    step(p, TaskChanged(status("old", TaskState.SUCCEEDED)))  # recovered before connecting
    step(p, Connected(NodeUsage(cpu_percent=1), HEALTHY))
    step(p, TaskChanged(status("new")))
    clock.advance(BATCH_WINDOW_S)
    (delta,) = step(p, Tick())
    assert [t.ref.job_id for t in delta.tasks] == ["new"]
    assert p.next_deadline() == clock.monotonic() - BATCH_WINDOW_S + 5.0
    clock.advance(5.0)
    (full,) = step(p, Tick())
    assert full.full and full.seq == 2
    assert sorted(t.ref.job_id for t in full.tasks) == ["new", "old"]
    assert full.usage is not None and full.health == HEALTHY
    # Acknowledged tasks leave the full report.
    step(p, TasksForgotten((TaskRef("old", 0, 0),)))
    step(p, IntervalsChanged(0.5, 2.0))
    clock.advance(2.0)
    (full2,) = step(p, Tick())
    assert [t.ref.job_id for t in full2.tasks] == ["new"] and full2.seq == 3


def test_seq_restarts_per_stream_and_nothing_is_sent_while_disconnected() -> None:
    clock = FakeClock()
    p = planner(clock, full=1.0)
    step(p, Connected(NodeUsage(), HEALTHY))
    clock.advance(1.0)
    assert step(p, Tick())[0].seq == 1
    step(p, Disconnected())
    step(p, TaskChanged(status("x")))
    clock.advance(10)
    assert step(p, Tick()) == [] and p.next_deadline() is None
    step(p, Connected(NodeUsage(), HEALTHY))  # the Register carried "x"
    clock.advance(BATCH_WINDOW_S)
    assert step(p, Tick()) == []
    clock.advance(1.0)
    (r,) = step(p, Tick())
    assert r.seq == 1 and r.full and [t.ref.job_id for t in r.tasks] == ["x"]


_jobs = st.sampled_from(["a", "b", "c", "d"])
_states = st.sampled_from([TaskState.RUNNING, TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED])
_events = st.one_of(
    st.tuples(st.just("change"), _jobs, _states),
    st.tuples(st.just("forget"), _jobs),
    st.tuples(st.just("usage"), st.floats(0, 100)),
    st.tuples(st.just("hot"), st.booleans()),
    st.tuples(st.just("advance"), st.floats(0, 3)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("connect")),
    st.tuples(st.just("disconnect")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_events, max_size=60))
def test_planner_properties(ops: list[tuple[object, ...]]) -> None:
    """Invariants hold after every step; seq counts up by one per stream; every transition made
    while connected reaches the parent (delta or full) once its deadline passes; a full report
    holds exactly the known tasks."""
    clock = FakeClock()
    p = planner(clock, report=0.5, full=2.0)
    truth: dict[TaskRef, TaskStatus] = {}
    seen: dict[TaskRef, TaskStatus] = {}
    last_seq = 0
    for op in ops:
        kind = op[0]
        reports: list[SendReport] = []
        if kind == "change":
            s = status(str(op[1]), op[2])  # type: ignore[arg-type]
            truth[s.ref] = s
            step(p, TaskChanged(s))
        elif kind == "forget":
            ref = TaskRef(str(op[1]), 0, 0)
            truth.pop(ref, None)
            seen.pop(ref, None)
            step(p, TasksForgotten((ref,)))
        elif kind == "usage":
            step(p, UsageSampled(NodeUsage(cpu_percent=float(op[1])), HEALTHY))  # type: ignore[arg-type]
        elif kind == "hot":
            h = NodeHealth(HealthStatus.DEGRADED, ("hot",)) if op[1] else HEALTHY
            step(p, UsageSampled(NodeUsage(), h))
        elif kind == "advance":
            clock.advance(float(op[1]))  # type: ignore[arg-type]
        elif kind == "tick":
            reports = step(p, Tick())
        elif kind == "connect":
            step(p, Connected(NodeUsage(), HEALTHY))
            last_seq = 0
            seen = dict(truth)  # the Register carries every known task
        else:
            step(p, Disconnected())
        for r in reports:
            assert r.seq == last_seq + 1
            last_seq = r.seq
            if r.full:
                assert {t.ref for t in r.tasks} == set(truth)
            for t in r.tasks:
                seen[t.ref] = t
        assert dict(p.known) == truth
    # Drain: once every deadline has passed, the parent's view equals the truth.
    if p.connected:
        deadline = p.next_deadline()
        assert deadline is not None
        clock.advance(max(0.0, deadline - clock.monotonic()) + BATCH_WINDOW_S)
        for r in step(p, Tick()):
            for t in r.tasks:
                seen[t.ref] = t
        assert seen == truth
        assert not p.pending
