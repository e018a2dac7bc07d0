"""The job table's gang rules: one attempt for the whole gang, placed whole, requeued whole."""

from __future__ import annotations

import dataclasses

from master_helpers import add_job, rep, spec, step, table

from domainos.clock import FakeClock
from domainos.jobspec import GangPolicy, JobSpec
from domainos.model import TaskRef
from master_domain._jobs import (
    Cancel,
    GangNotPlaced,
    Job,
    JobState,
    JobTable,
    PersistJob,
    PlaceGang,
    ReleaseGang,
    StartGang,
    StopTask,
    SubdomainLost,
    TaskState,
    Tick,
)

S = TaskState


def gang_spec(replicas: int = 4, gang_min: int | None = None, on_exit: int = 0) -> JobSpec:
    return dataclasses.replace(
        spec(replicas, on_exit=on_exit), gang=GangPolicy(min=gang_min or replicas, timeout_s=30.0)
    )


def state(job: Job) -> JobState:
    return job.state


def place_gang(t: JobTable, job_id: str = "j-1", split: int = 2) -> int:
    """Start and place the gang: tasks below ``split`` on sd-a (east), the rest on sd-b (west)."""
    job = t.get(job_id)
    assert job is not None
    gang = tuple(t.gang_indexes(job))
    assert t.gang_waiting(job)
    effects = step(t, StartGang(job_id, gang))
    assert effects == [PersistJob(job_id)]  # the new attempt is stored before any Reserve
    attempt = t.gang_attempt(job)
    assert all(job.tasks[i].attempt == attempt for i in gang)
    where = {i: ("sd-a", "east", "") if i < split else ("sd-b", "west", "") for i in gang}
    effects = step(t, PlaceGang(job_id, attempt, where))
    assert effects == [PersistJob(job_id)]  # no PlaceTask: the sub-domains start them at commit
    return attempt


def run_all(t: JobTable, job_id: str, attempt: int, split: int = 2, n: int = 4) -> None:
    for i in range(n):
        sd = "sd-a" if i < split else "sd-b"
        step(t, rep(sd, job_id, i, attempt, S.RUNNING, node_id=f"{sd}-n"))


def test_start_gives_every_gang_task_one_fresh_attempt_and_place_marks_them_assigned() -> None:
    t = table()
    job = add_job(t, gang_spec(4))
    attempt = place_gang(t)
    assert attempt == 1
    assert [task.state for task in job.tasks] == [S.ASSIGNED] * 4
    assert [task.subdomain_id for task in job.tasks] == ["sd-a", "sd-a", "sd-b", "sd-b"]
    assert state(job) is JobState.SCHEDULED
    assert t.placed_total == 4
    assert not t.gang_waiting(job)
    run_all(t, "j-1", attempt)
    assert state(job) is JobState.RUNNING


def test_a_failed_try_keeps_the_tasks_pending_counts_misdispatches_and_the_next_try_is_a_new_attempt() -> (
    None
):
    t = table()
    job = add_job(t, gang_spec(4))
    step(t, StartGang("j-1", (0, 1, 2, 3)))
    effects = step(t, GangNotPlaced("j-1", 1, "sub-domain sd-a refused the reservation: no room", 1))
    assert effects == [PersistJob("j-1")]
    assert job.message.startswith("waiting: sub-domain sd-a refused")
    assert t.misdispatch_total == 1 and job.misdispatches == 1
    assert all(task.state is S.PENDING for task in job.tasks)
    assert t.gang_waiting(job)
    step(t, StartGang("j-1", (0, 1, 2, 3)))
    assert t.gang_attempt(job) == 2
    # A stale PlaceGang of the old attempt is not placeable.
    assert not t.gang_placeable("j-1", 1, range(4))
    assert t.gang_placeable("j-1", 2, range(4))


def test_a_failed_gang_task_requeues_the_whole_gang_as_one_new_attempt_charging_one_retry() -> None:
    unplaced: list[tuple[str, int, int]] = []
    t = table()
    t.on_unplace = lambda j, i, a: unplaced.append((j, i, a))
    job = add_job(t, gang_spec(4, on_exit=1))
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    effects = step(t, rep("sd-b", "j-1", 3, attempt, S.FAILED, exit_code=3))
    stops = [e for e in effects if isinstance(e, StopTask)]
    releases = [e for e in effects if isinstance(e, ReleaseGang)]
    # Every other gang task is stopped (the failed one has ended), both reservations released.
    assert sorted(e.ref.task_index for e in stops) == [0, 1, 2]
    assert all(e.ref.attempt == attempt for e in stops)
    assert sorted((e.subdomain_id, e.reservation_id) for e in releases) == [
        ("sd-a", f"j-1/{attempt}/sd-a"),
        ("sd-b", f"j-1/{attempt}/sd-b"),
    ]
    assert isinstance(effects[0], PersistJob)
    assert all(task.state is S.PENDING and task.attempt == attempt + 1 for task in job.tasks)
    assert job.tasks[3].exit_retries == 1 and sum(task.exit_retries for task in job.tasks) == 1
    assert state(job) is JobState.PENDING and t.gang_waiting(job)
    assert sorted(unplaced) == [("j-1", i, attempt) for i in range(4)]  # every charge released
    # Late reports of the old attempt are stopped, never taken as the new one.
    effects = step(t, rep("sd-a", "j-1", 0, attempt, S.RUNNING))
    assert effects == [StopTask("sd-a", TaskRef("j-1", 0, attempt), "not the current attempt")]
    # The second failure has no retry left: the job fails and every task stops.
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    effects = step(t, rep("sd-a", "j-1", 1, attempt, S.FAILED, exit_code=3))
    assert state(job) is JobState.FAILED
    assert sorted(e.ref.task_index for e in effects if isinstance(e, StopTask)) == [0, 2, 3]
    assert {e.subdomain_id for e in effects if isinstance(e, ReleaseGang)} == {"sd-a", "sd-b"}


def test_a_lost_sub_domain_requeues_the_gang_whole_charging_one_lost_retry() -> None:
    t = table()
    job = add_job(t, gang_spec(4))
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    effects = step(t, SubdomainLost("sd-a", "sd-a did not reconnect within 60s"))
    # The tasks on sd-b are told to stop; sd-a's are gone with it.
    assert sorted(e.ref.task_index for e in effects if isinstance(e, StopTask)) == [1, 2, 3]
    assert all(task.state is S.PENDING and task.attempt == attempt + 1 for task in job.tasks)
    assert sum(task.lost_retries for task in job.tasks) == 1
    assert t.tasks_on("sd-a") == 0 and t.tasks_on("sd-b") == 0


def test_a_rejected_or_unconfirmed_gang_task_requeues_the_gang_without_a_retry() -> None:
    clock = FakeClock()
    t = table(clock, timeout=5.0)
    job = add_job(t, gang_spec(2))
    attempt = place_gang(t, split=1)
    step(t, rep("sd-a", "j-1", 0, attempt, S.REJECTED, message="no room"))
    assert all(task.state is S.PENDING and task.attempt == attempt + 1 for task in job.tasks)
    assert t.misdispatch_total == 1
    assert sum(task.exit_retries + task.lost_retries for task in job.tasks) == 0
    # Placed again; neither task is confirmed in time: one requeue for the pair.
    attempt = place_gang(t, split=1)
    clock.advance(6.0)
    effects = step(t, Tick())
    assert all(task.state is S.PENDING and task.attempt == attempt + 1 for task in job.tasks)
    assert len([e for e in effects if isinstance(e, ReleaseGang)]) == 2
    assert t.misdispatch_total == 2


def test_tasks_past_gang_min_are_not_part_of_the_gang() -> None:
    t = table()
    job = add_job(t, gang_spec(5, gang_min=4, on_exit=1))
    assert list(t.gang_indexes(job)) == [0, 1, 2, 3]
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    assert not t.gang_waiting(job)
    pending = dict((j.job_id, idx) for j, idx in t.pending())
    assert pending == {"j-1": [4]}


def test_cancel_stops_every_gang_task_and_releases_its_reservations() -> None:
    t = table()
    job = add_job(t, gang_spec(4))
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    effects = step(t, Cancel("j-1", "user"))
    assert sorted(e.ref.task_index for e in effects if isinstance(e, StopTask)) == [0, 1, 2, 3]
    assert {e.reservation_id for e in effects if isinstance(e, ReleaseGang)} == {
        f"j-1/{attempt}/sd-a",
        f"j-1/{attempt}/sd-b",
    }
    for i in range(4):
        step(t, rep("sd-a" if i < 2 else "sd-b", "j-1", i, attempt, S.CANCELLED))
    assert state(job) is JobState.CANCELLED


def test_a_cancelled_job_ignores_a_late_failed_try_and_cannot_be_placed() -> None:
    t = table()
    job = add_job(t, gang_spec(2))
    step(t, StartGang("j-1", (0, 1)))
    step(t, Cancel("j-1", "user"))
    assert state(job) is JobState.CANCELLED
    assert not t.gang_placeable("j-1", 1, (0, 1))
    assert step(t, GangNotPlaced("j-1", 1, "cancelled", 0)) == []


def test_a_succeeded_gang_releases_its_allocations() -> None:
    t = table()
    job = add_job(t, gang_spec(2))
    attempt = place_gang(t, split=1)
    run_all(t, "j-1", attempt, split=1, n=2)
    step(t, rep("sd-a", "j-1", 0, attempt, S.SUCCEEDED))
    effects = step(t, rep("sd-b", "j-1", 1, attempt, S.SUCCEEDED))
    assert state(job) is JobState.SUCCEEDED
    assert sorted(e.subdomain_id for e in effects if isinstance(e, ReleaseGang)) == ["sd-a", "sd-b"]


def test_gang_attempts_survive_the_store_round_trip() -> None:
    t = table()
    job = add_job(t, gang_spec(2))
    step(t, StartGang("j-1", (0, 1)))
    again = Job.from_dict(job.to_dict())
    assert [task.attempt for task in again.tasks] == [1, 1]
    assert again.spec.gang == GangPolicy(min=2, timeout_s=30.0)


def test_a_gang_task_that_finished_while_the_rest_was_preempted_rejoins_the_gang() -> None:
    from master_domain._jobs import Preempt

    t = table()
    job = add_job(t, gang_spec(2))
    attempt = place_gang(t, split=1)
    run_all(t, "j-1", attempt, split=1, n=2)
    step(t, rep("sd-a", "j-1", 0, attempt, S.SUCCEEDED))
    step(t, Preempt("j-1", "preempted by job j-9 (priority high)"))
    assert [task.state for task in job.tasks] == [S.SUCCEEDED, S.PENDING]
    assert t.gang_waiting(job)
    step(t, StartGang("j-1", (0, 1)))
    assert [task.state for task in job.tasks] == [S.PENDING, S.PENDING]
    assert len({task.attempt for task in job.tasks}) == 1 and t.gang_attempt(job) > attempt


def test_a_gang_whose_commit_fails_after_it_was_recorded_goes_back_whole_without_spending_a_retry() -> None:
    # The master records the gang ASSIGNED when the commit phase begins; then one part cannot
    # commit (its hold expired): every task, started or not, is stopped and goes back as one new
    # attempt, and no retry is charged (a placement failure, not the job's).
    t = table()
    job = add_job(t, gang_spec(4))
    attempt = place_gang(t)
    step(t, rep("sd-a", "j-1", 0, attempt, S.RUNNING, node_id="sd-a-n"))  # part a committed first
    effects = step(t, GangNotPlaced("j-1", attempt, "sub-domain sd-b refused the commit: expired"))
    stops = sorted((e.subdomain_id, e.ref.task_index) for e in effects if isinstance(e, StopTask))
    assert stops == [("sd-a", 0), ("sd-a", 1), ("sd-b", 2), ("sd-b", 3)]
    assert [task.state for task in job.tasks] == [S.PENDING] * 4
    assert {task.attempt for task in job.tasks} == {attempt + 1}
    assert all(task.lost_retries == 0 and task.exit_retries == 0 for task in job.tasks)
    assert t.gang_waiting(job) and state(job) is JobState.PENDING
    assert "refused the commit" in job.tasks[3].message
    # A late report of the old attempt is stopped, not mistaken for the new one.
    late = step(t, rep("sd-b", "j-1", 2, attempt, S.RUNNING, node_id="sd-b-n"))
    assert [e for e in late if isinstance(e, StopTask)]


# -- goodput and stragglers ------------------------------------------------------------------------


def _progress(step_: int, at: float, ck_step: int = -1, ck_at: float = 0.0) -> object:
    from domainos.model import TaskProgress

    return TaskProgress(
        step=step_, total_steps=1000, step_at=at, checkpoint_step=ck_step, checkpoint_at=ck_at
    )


def test_goodput_counts_work_since_the_last_checkpoint_as_lost_and_the_gap_as_recovery() -> None:
    from domainos.jobspec import CheckpointPolicy

    clock = FakeClock()
    t = table(clock)
    job = add_job(t, dataclasses.replace(gang_spec(4, on_exit=1), checkpoint=CheckpointPolicy(60.0)))
    t0 = clock.time()
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    clock.advance(50.0)
    for i in range(4):  # every rank saved a checkpoint at t0 + 40
        sd = "sd-a" if i < 2 else "sd-b"
        step(t, rep(sd, "j-1", i, attempt, S.RUNNING, progress=_progress(500, t0 + 50, 400, t0 + 40)))
    clock.advance(10.0)  # t0 + 60: rank 3 dies; the gang is requeued whole
    step(t, rep("sd-b", "j-1", 3, attempt, S.FAILED, exit_code=1))
    assert job.interruptions == 4 and job.lost_s == 4 * 20.0  # 60 - 40 per task
    clock.advance(10.0)  # t0 + 70: running again
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    clock.advance(30.0)  # t0 + 100: done
    for i in range(4):
        sd = "sd-a" if i < 2 else "sd-b"
        step(t, rep(sd, "j-1", i, attempt, S.SUCCEEDED))
    assert job.state is JobState.SUCCEEDED
    g = job.goodput(clock.time())
    assert g == {
        "wall_s": 100.0,
        "productive_s": 70.0,
        "lost_s": 20.0,
        "recovery_s": 10.0,
        "effective_ratio": 0.7,
        "interruptions": 4,
    }
    # It is stored with the job.
    copy = Job.from_dict(job.to_dict())
    assert copy.goodput(clock.time()) == g


def test_without_checkpoints_an_interruption_loses_the_whole_attempt() -> None:
    clock = FakeClock()
    t = table(clock)
    job = add_job(t, gang_spec(4, on_exit=1))
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    clock.advance(30.0)
    step(t, rep("sd-a", "j-1", 0, attempt, S.FAILED, exit_code=1))
    assert job.lost_s == 4 * 30.0
    # Still down: the recovery so far counts at read time.
    clock.advance(5.0)
    g = job.goodput(clock.time())
    assert g["lost_s"] == 30.0 and g["recovery_s"] == 5.0 and g["effective_ratio"] == 0.0


def test_a_slow_rank_is_flagged_as_a_straggler_and_cleared_when_it_catches_up() -> None:
    clock = FakeClock()
    t = table(clock)
    job = add_job(t, gang_spec(4))
    attempt = place_gang(t)
    run_all(t, "j-1", attempt)
    steps = [0, 0, 0, 0]

    def advance(rates: list[int]) -> list[tuple[str, int]]:
        clock.advance(15.0)
        for i, r in enumerate(rates):
            steps[i] += r * 15
            sd = "sd-a" if i < 2 else "sd-b"
            step(t, rep(sd, "j-1", i, attempt, S.RUNNING, progress=_progress(steps[i], clock.time())))
        return t.check_stragglers(clock.monotonic())

    assert advance([10, 10, 10, 10]) == []  # the first check only marks where each one is
    assert advance([10, 10, 10, 2]) == []  # slow once: not yet
    assert advance([10, 10, 10, 2]) == [("j-1", 3)]
    assert job.stragglers == (3,) and job.tasks[3].straggler
    assert advance([10, 10, 10, 9]) == [] and job.stragglers == ()
