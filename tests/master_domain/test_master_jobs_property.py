"""Property test: any sequence of events keeps the job table's invariants.

validate() runs after every event; on top of it we check what users rely on: a finished job
never changes state again, attempts never go back, commands always name the current attempt,
acks only cover final states, and a job leaves the table only once.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from master_helpers import spec, table

from domainos.clock import FakeClock
from master_domain._jobs import (
    TERMINAL_JOB_STATES,
    AckTasks,
    Cancel,
    Event,
    JobDone,
    JobState,
    Place,
    PlaceTask,
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
    TaskState.PENDING,
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_event_sequences_keep_invariants(data: st.DataObject) -> None:
    clock = FakeClock()
    t = table(clock, timeout=5.0)
    n_jobs = data.draw(st.integers(1, 3), label="jobs")
    for j in range(n_jobs):
        s = spec(
            data.draw(st.integers(1, 3), label="replicas"),
            on_exit=data.draw(st.integers(0, 2), label="on_exit"),
            on_lost=data.draw(st.integers(0, 2), label="on_lost"),
        )
        job = t.new_job(f"j-{j}", s, f"r-{j}")
        t.add(job)
    jobs = {job.job_id: job for job in t.jobs()}
    t.validate()
    finished: dict[str, JobState] = {}
    done: set[str] = set()
    attempts = {(j, i): 0 for j, job in jobs.items() for i in range(len(job.tasks))}

    for _ in range(data.draw(st.integers(1, 60), label="steps")):
        kind = data.draw(
            st.sampled_from(["place", "report", "report", "report", "cancel", "hello", "lost", "tick"])
        )
        event: Event
        if kind == "place":
            pending = t.pending()
            if not pending:
                continue
            job, idx = data.draw(st.sampled_from(pending))
            event = Place(job.job_id, data.draw(st.sampled_from(idx)), data.draw(st.sampled_from(SUBDOMAINS)))
        elif kind == "report":
            job_id = data.draw(st.sampled_from(sorted(jobs)))
            job = jobs[job_id]
            index = data.draw(st.integers(0, len(job.tasks) - 1))
            task = job.tasks[index]
            attempt = max(0, task.attempt - data.draw(st.integers(0, 1)))
            sd = (
                task.subdomain_id
                if task.subdomain_id and data.draw(st.booleans())
                else data.draw(st.sampled_from(SUBDOMAINS))
            )
            state = data.draw(st.sampled_from(REPORTED))
            event = TaskUpdates(sd, (TaskReport(job_id, index, attempt, state, exit_code=3),))
        elif kind == "cancel":
            event = Cancel(data.draw(st.sampled_from(sorted(jobs))), "test")
        elif kind == "hello":
            sd = data.draw(st.sampled_from(SUBDOMAINS))
            held = [
                TaskReport(job.job_id, task.index, task.attempt, data.draw(st.sampled_from(REPORTED)))
                for job in jobs.values()
                for task in job.tasks
                if task.subdomain_id == sd and data.draw(st.booleans())
            ]
            event = SubdomainHello(sd, tuple(held))
        elif kind == "lost":
            event = SubdomainLost(data.draw(st.sampled_from(SUBDOMAINS)), "gone")
        else:
            clock.advance(data.draw(st.sampled_from([0.5, 3.0, 6.0])))
            event = Tick()

        effects = t.handle(event)
        t.validate()

        for effect in effects:
            if isinstance(effect, PlaceTask):
                task = jobs[effect.ref.job_id].tasks[effect.ref.task_index]
                assert effect.ref.attempt == task.attempt
                assert task.subdomain_id == effect.subdomain_id
            elif isinstance(effect, AckTasks):
                assert isinstance(event, TaskUpdates | SubdomainHello)
                final = {
                    (r.job_id, r.index, r.attempt) for r in event.reports if r.state not in _LIVE_OR_PENDING
                }
                assert {(r.job_id, r.task_index, r.attempt) for r in effect.refs} <= final
            elif isinstance(effect, JobDone):
                assert effect.job_id not in done, "JobDone twice"
                done.add(effect.job_id)
        for job_id, job in jobs.items():
            if job_id in finished:
                assert job.state is finished[job_id], f"{job_id} left {finished[job_id]} for {job.state}"
            elif job.state in TERMINAL_JOB_STATES:
                finished[job_id] = job.state
            for task in job.tasks:
                key = (job_id, task.index)
                assert task.attempt >= attempts[key]
                attempts[key] = task.attempt


_LIVE_OR_PENDING = {TaskState.ASSIGNED, TaskState.RUNNING, TaskState.PENDING}
