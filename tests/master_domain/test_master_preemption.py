"""Gang-aware preemption in the master: the job table's ``Preempt`` event (stop whole, requeue
without spending a retry) and the planner wiring (``Preemptions``) over a real JobTable, Placer
and Admission: who may be stopped, anti-thrash, backoff, and the explain lines."""

from __future__ import annotations

import dataclasses

import pytest
from master_helpers import GI, add_job, rep, spec, step, summary, table

from domainos.clock import FakeClock
from master_domain._admission import Admission
from master_domain._jobs import Job, JobState, JobTable, Place, Preempt, StopTask, TaskState
from master_domain._master import job_tenant
from master_domain._placement import Placer
from master_domain._preemption import Decision, Preemptions
from master_domain._sched._fairshare import PriorityClass, PriorityClasses
from master_domain._summary import Summary

pytestmark = pytest.mark.timeout(30)


def run_job(t: JobTable, job_id: str, replicas: int, gpus: int, priority: str, sd: str = "a") -> Job:
    job = add_job(t, dataclasses.replace(spec(replicas, gpus=gpus, model="H100"), priority=priority), job_id)
    for i in range(replicas):
        step(t, Place(job_id, i, sd, "r", "H100"))
        step(t, rep(sd, job_id, i, 0, TaskState.RUNNING, started_at=100.0))
    return job


# -- the job table's event -----------------------------------------------------------------------


def test_preempt_stops_every_live_task_and_requeues_without_spending_a_retry() -> None:
    t = table()
    job = run_job(t, "low", 2, 4, "low")
    job.tasks[0].lost_retries = 1  # spent earlier: must stay as it is
    effects = step(t, Preempt("low", "preempted by job hi (priority high)"))
    stops = [e for e in effects if isinstance(e, StopTask)]
    assert [(s.subdomain_id, s.ref.task_index, s.ref.attempt, s.reason) for s in stops] == [
        ("a", 0, 0, "preempted by job hi (priority high)"),
        ("a", 1, 0, "preempted by job hi (priority high)"),
    ]
    assert [(x.state, x.attempt, x.exit_retries, x.lost_retries) for x in job.tasks] == [
        (TaskState.PENDING, 1, 0, 1),
        (TaskState.PENDING, 1, 0, 0),
    ]
    assert job.state is JobState.PENDING and job.message == "preempted by job hi (priority high)"
    assert t.preempted_total == 2
    # The stopped old attempts report CANCELLED: acknowledged, nothing else changes.
    effects = step(t, rep("a", "low", 0, 0, TaskState.CANCELLED))
    assert job.tasks[0].state is TaskState.PENDING and job.tasks[0].attempt == 1
    # A finished job is left alone.
    assert step(t, Preempt("nope", "x")) == []


# -- the planner ---------------------------------------------------------------------------------


def full_placer(sd: str = "a", gpus: int = 8) -> Placer:
    msg = summary(1, 64, gpus, "H100")
    msg.free.gpus = 0
    msg.free_gpus_by_model["H100"] = 0
    msg.shapes[0].best.gpus = 0
    msg.shapes[0].free_gpus = 0
    p = Placer()
    p.update(sd, "r", Summary.from_proto(msg), now=0.0)
    return p


def plan(
    pre: Preemptions, t: JobTable, job: Job, p: Placer, adm: Admission, mono: float = 0.0
) -> Decision | None:
    pending = [x.index for x in job.tasks if x.state is TaskState.PENDING]
    return pre.plan(
        job, pending, t.jobs(), p, adm.demand_and_watts, adm.priority, job_tenant, now=200.0, mono=mono
    )


def test_high_job_preempts_the_cheapest_lower_job_whole() -> None:
    t, adm, p, pre = table(), Admission(), full_placer(), Preemptions()
    run_job(t, "low-a", 2, 2, "low")  # 4 GPUs
    run_job(t, "low-b", 1, 4, "low")  # 4 GPUs
    hi = add_job(t, dataclasses.replace(spec(1, gpus=4, model="H100"), priority="high"), "hi")
    got = plan(pre, t, hi, p, adm)
    assert got is not None and got.subdomain == "a" and len(got.victims) == 1
    assert got.stop_reason == "preempted by job hi (priority high)"
    assert "needs 4 gpu:H100 more in sub-domain a" in got.reason
    pre.applied(got, now=200.0, mono=0.0)
    victim = got.victims[0]
    lines = pre.explain(victim, str)
    assert lines and lines[0].startswith("preempted by job hi (high=1000) in sub-domain a: priority low=0")
    assert lines[0].endswith("tasks are requeued (at 200.0)")
    assert pre.explain("hi", str)[0].startswith(f"preempting job {victim} in sub-domain a (at 200.0): job hi")
    # Held: the freed room has HOLD_S to show up before hi plans again.
    assert plan(pre, t, hi, p, adm, mono=1.0) is None


def test_never_same_or_higher_priority_nor_system() -> None:
    t, adm, p, pre = table(), Admission(), full_placer(), Preemptions()
    run_job(t, "peer", 1, 4, "high")
    run_job(t, "sys", 1, 4, "system")
    hi = add_job(t, dataclasses.replace(spec(1, gpus=4, model="H100"), priority="high"), "hi")
    assert plan(pre, t, hi, p, adm) is None
    note = pre.explain("hi", str)[-1]
    assert note == (
        "no preemption: no running job may be stopped for job hi (high=1000): "
        "2 running job(s) at priority 1000 or higher"
    )
    # A system job may preempt the high one, never the other system job.
    sysjob = add_job(t, dataclasses.replace(spec(1, gpus=4, model="H100"), priority="system"), "sys2")
    got = plan(pre, t, sysjob, p, adm)
    assert got is not None and got.victims == ("peer",)


def test_a_class_marked_never_preempted_is_left_alone_even_when_lower() -> None:
    classes = PriorityClasses(
        [PriorityClass("low", 0), PriorityClass("pinned", 50, False), PriorityClass("high", 1000)], "low"
    )
    t, adm, p, pre = table(), Admission(classes=classes), full_placer(), Preemptions()
    run_job(t, "pinned", 1, 8, "pinned")
    hi = add_job(t, dataclasses.replace(spec(1, gpus=4, model="H100"), priority="high"), "hi")
    assert plan(pre, t, hi, p, adm) is None
    assert pre.explain("hi", str)[-1].endswith(": 1 of a class never preempted")


def test_anti_thrash_a_job_preempted_too_often_is_left_alone() -> None:
    t, adm, p = table(), Admission(), full_placer()
    pre = Preemptions(limit=2, window_s=100.0, backoff_s=0.0, hold_s=0.0)
    run_job(t, "low", 1, 8, "low")
    for i in range(2):
        hi = add_job(t, dataclasses.replace(spec(1, gpus=8, model="H100"), priority="high"), f"hi{i}")
        got = plan(pre, t, hi, p, adm, mono=float(i))
        assert got is not None and got.victims == ("low",)
        pre.applied(got, now=200.0, mono=float(i))
    hi = add_job(t, dataclasses.replace(spec(1, gpus=8, model="H100"), priority="high"), "hi9")
    assert plan(pre, t, hi, p, adm, mono=5.0) is None
    assert pre.explain("hi9", str)[-1] == (
        "no preemption: no running job may be stopped for job hi9 (high=1000): "
        "1 preempted 2 times in the last 100s (anti-thrash)"
    )
    # Once the window has passed it may be preempted again.
    got = plan(pre, t, hi, p, adm, mono=200.0)
    assert got is not None and got.victims == ("low",)


def test_backoff_between_plans_and_nothing_for_unplaceable_jobs() -> None:
    t, adm, p = table(), Admission(), full_placer()
    pre = Preemptions(backoff_s=5.0)
    hi = add_job(t, dataclasses.replace(spec(1, gpus=4, model="H100"), priority="high"), "hi")
    assert plan(pre, t, hi, p, adm, mono=0.0) is None
    assert not pre.due("hi", 4.0) and pre.due("hi", 5.0)
    huge = add_job(t, dataclasses.replace(spec(1, gpus=16, model="H100"), priority="high"), "huge")
    assert plan(pre, t, huge, p, adm) is None
    assert "could ever take" in pre.explain("huge", str)[-1]


def test_a_plain_job_on_two_subdomains_is_stopped_everywhere() -> None:
    clock = FakeClock()
    t = table(clock)
    adm = Admission()
    p = full_placer("a")
    low = add_job(t, dataclasses.replace(spec(2, gpus=8, model="H100"), priority="low"), "low")
    for i, sd in enumerate(("a", "b")):
        step(t, Place("low", i, sd, "r", "H100"))
        step(t, rep(sd, "low", i, 0, TaskState.RUNNING))
    hi = add_job(t, dataclasses.replace(spec(1, gpus=8, model="H100"), priority="high"), "hi")
    got = Preemptions().plan(
        hi, [0], t.jobs(), p, adm.demand_and_watts, adm.priority, job_tenant, now=10.0, mono=0.0
    )
    assert got is not None and got.victims == ("low",)
    effects = step(t, Preempt("low", got.stop_reason))
    assert sorted(e.subdomain_id for e in effects if isinstance(e, StopTask)) == ["a", "b"]
    assert all(x.state is TaskState.PENDING for x in low.tasks)
    assert GI  # keeps the helper import meaningful for readers of the sizes above


def test_a_gang_spread_over_two_subdomains_is_a_single_victim_stopped_whole() -> None:
    from domainos.jobspec import GangPolicy
    from master_domain._jobs import PlaceGang, StartGang

    t, adm, p = table(), Admission(), full_placer("a")
    gang_spec = dataclasses.replace(spec(4, gpus=4, model="H100"), priority="low", gang=GangPolicy(4))
    gang = add_job(t, gang_spec, "gang")
    step(t, StartGang("gang", (0, 1, 2, 3)))
    where = {0: ("a", "r", "H100"), 1: ("a", "r", "H100"), 2: ("b", "r", "H100"), 3: ("b", "r", "H100")}
    step(t, PlaceGang("gang", 1, where))
    for i, (sd, _, _) in where.items():
        step(t, rep(sd, "gang", i, 1, TaskState.RUNNING))
    hi = add_job(t, dataclasses.replace(spec(1, gpus=4, model="H100"), priority="high"), "hi")
    got = Preemptions().plan(
        hi, [0], t.jobs(), p, adm.demand_and_watts, adm.priority, job_tenant, now=10.0, mono=0.0
    )
    # 4 GPUs are needed in a; the gang holds 8 there and 8 in b: it goes whole, everywhere.
    assert got is not None and got.victims == ("gang",)
    assert "frees 2 cpu, 8 gpu:H100, 512Mi memory there" in got.victim_reasons["gang"]
    effects = step(t, Preempt("gang", got.stop_reason))
    assert sorted((e.subdomain_id, e.ref.task_index) for e in effects if isinstance(e, StopTask)) == [
        ("a", 0), ("a", 1), ("b", 2), ("b", 3)
    ]  # fmt: skip
    assert t.gang_waiting(gang) and {x.attempt for x in gang.tasks} == {2}
