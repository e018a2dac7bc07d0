"""Property test: any sequence of events keeps the job table's invariants for gang jobs, and a gang
never runs partly: while a job goes on, no gang task waits while another one is placed, and every
gang task carries the gang's one attempt."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from master_helpers import spec, table

from domainos.clock import FakeClock
from domainos.jobspec import GangPolicy
from master_domain._jobs import (
    Cancel,
    Event,
    GangNotPlaced,
    Job,
    JobTable,
    Place,
    PlaceGang,
    StartGang,
    SubdomainHello,
    SubdomainLost,
    TaskReport,
    TaskState,
    TaskUpdates,
    Tick,
)

SUBDOMAINS = ("sd-a", "sd-b")
REPORTED = [
    TaskState.ASSIGNED,
    TaskState.RUNNING,
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.CANCELLED,
    TaskState.LOST,
    TaskState.REJECTED,
]


def _check_gangs(t: JobTable, jobs: dict[str, Job]) -> None:
    for job in jobs.values():
        if job.terminal or job.cancel_requested:
            continue
        gang = [job.tasks[i] for i in t.gang_indexes(job)]
        pending = [task for task in gang if task.state is TaskState.PENDING]
        live = [task for task in gang if task.live]
        assert not (pending and live), f"{job.job_id}: partial gang {[(x.index, x.state) for x in gang]}"
        assert len({task.attempt for task in gang}) == 1, f"{job.job_id}: gang attempts differ"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_event_sequences_never_leave_a_partial_gang(data: st.DataObject) -> None:
    clock = FakeClock()
    t = table(clock, timeout=5.0)
    for j in range(data.draw(st.integers(1, 3), label="jobs")):
        replicas = data.draw(st.integers(1, 4), label="replicas")
        s = spec(
            replicas,
            on_exit=data.draw(st.integers(0, 2), label="on_exit"),
            on_lost=data.draw(st.integers(0, 2), label="on_lost"),
        )
        s = dataclasses.replace(s, gang=GangPolicy(min=data.draw(st.integers(1, replicas), label="min")))
        t.add(t.new_job(f"j-{j}", s, f"r-{j}"))
    jobs = {job.job_id: job for job in t.jobs()}
    t.validate()
    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        kind = data.draw(st.sampled_from(["gang", "gang", "fail", "extra", "report", "report", "report",
                                          "cancel", "hello", "lost", "tick"]))  # fmt: skip
        events: list[Event] = []
        waiting = [job for job in jobs.values() if t.gang_waiting(job)]
        if kind in ("gang", "fail"):
            if not waiting:
                continue
            job = data.draw(st.sampled_from(waiting))
            gang = tuple(t.gang_indexes(job))
            t.handle(StartGang(job.job_id, gang))
            t.validate()
            attempt = t.gang_attempt(job)
            if kind == "fail":
                events.append(GangNotPlaced(job.job_id, attempt, "refused", data.draw(st.integers(0, 2))))
            else:
                where = {i: (data.draw(st.sampled_from(SUBDOMAINS)), "east", "") for i in gang}
                events.append(PlaceGang(job.job_id, attempt, where))
        elif kind == "extra":
            extras = [
                (job, [i for i in idx if i not in t.gang_indexes(job)])
                for job, idx in t.pending()
                if not t.gang_waiting(job)
            ]
            extras = [(job, idx) for job, idx in extras if idx]
            if not extras:
                continue
            job, idx = data.draw(st.sampled_from(extras))
            events.append(
                Place(job.job_id, data.draw(st.sampled_from(idx)), data.draw(st.sampled_from(SUBDOMAINS)))
            )
        elif kind == "report":
            job = jobs[data.draw(st.sampled_from(sorted(jobs)))]
            task = job.tasks[data.draw(st.integers(0, len(job.tasks) - 1))]
            sd = task.subdomain_id or data.draw(st.sampled_from(SUBDOMAINS))
            state = data.draw(st.sampled_from(REPORTED))
            events.append(
                TaskUpdates(sd, (TaskReport(job.job_id, task.index, task.attempt, state, exit_code=3),))
            )
        elif kind == "cancel":
            events.append(Cancel(data.draw(st.sampled_from(sorted(jobs))), "test"))
        elif kind == "hello":
            sd = data.draw(st.sampled_from(SUBDOMAINS))
            held = [
                TaskReport(job.job_id, task.index, task.attempt, TaskState.RUNNING)
                for job in jobs.values()
                for task in job.tasks
                if task.subdomain_id == sd and task.live and data.draw(st.booleans())
            ]
            events.append(SubdomainHello(sd, tuple(held)))
        elif kind == "lost":
            events.append(SubdomainLost(data.draw(st.sampled_from(SUBDOMAINS)), "gone"))
        else:
            clock.advance(data.draw(st.sampled_from([0.5, 3.0, 6.0])))
            events.append(Tick())
        for event in events:
            t.handle(event)
            t.validate()
            _check_gangs(t, jobs)
