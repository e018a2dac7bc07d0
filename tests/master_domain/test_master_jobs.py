"""The pure job state machine: every lifecycle path, with validate() after every step."""

from __future__ import annotations

import json

import pytest
from master_helpers import add_job, rep, spec, step, table

from domainos.clock import FakeClock
from domainos.model import TaskRef
from master_domain._jobs import (
    AckTasks,
    Cancel,
    Job,
    JobState,
    PersistJob,
    Place,
    PlaceTask,
    StopTask,
    SubdomainHello,
    SubdomainLost,
    TaskReport,
    TaskState,
    TaskUpdates,
    Tick,
)

S = TaskState


def kinds(effects: list[object]) -> list[str]:
    return [type(e).__name__ for e in effects]


def run_to(t, job_id: str, index: int, sd: str = "sd-a", state: TaskState = S.RUNNING) -> None:
    """Place a pending task on ``sd`` and drive it to ``state`` (ASSIGNED or RUNNING)."""
    step(t, Place(job_id, index, sd, "east"))
    attempt = t.get(job_id).tasks[index].attempt
    step(t, rep(sd, job_id, index, attempt, S.ASSIGNED, node_id="n-1"))
    if state is S.RUNNING:
        step(t, rep(sd, job_id, index, attempt, S.RUNNING, node_id="n-1"))


def test_success_path_states_effects_and_order() -> None:
    t = table()
    job = add_job(t, spec(2))
    assert job.state is JobState.PENDING
    effects = step(t, Place("j-1", 0, "sd-a", "east"))
    assert kinds(effects) == ["PersistJob", "PlaceTask"]
    place = effects[1]
    assert isinstance(place, PlaceTask) and place.ref == TaskRef("j-1", 0, 0) and place.subdomain_id == "sd-a"
    assert job.state is JobState.SCHEDULED
    step(t, Place("j-1", 1, "sd-b", "west"))
    assert step(t, rep("sd-a", "j-1", 0, 0, S.ASSIGNED, node_id="n-1")) == [PersistJob("j-1")]
    assert job.tasks[0].node_id == "n-1"
    step(t, rep("sd-a", "j-1", 0, 0, S.RUNNING, started_at=5.0))
    assert job.state is JobState.RUNNING and job.tasks[0].started_at == 5.0
    effects = step(t, rep("sd-a", "j-1", 0, 0, S.SUCCEEDED))
    assert kinds(effects) == ["PersistJob", "AckTasks"]  # persist first, then ack
    assert job.state is JobState.RUNNING
    step(t, rep("sd-b", "j-1", 1, 0, S.RUNNING))
    effects = step(t, rep("sd-b", "j-1", 1, 0, S.SUCCEEDED))
    assert kinds(effects) == ["PersistJob", "AckTasks", "JobDone"]
    assert effects[1] == AckTasks("sd-b", (TaskRef("j-1", 1, 0),))
    assert job.state is JobState.SUCCEEDED and job.finished_at > 0
    assert t.retire("j-1") is job
    assert "j-1" not in t
    t.validate()


def test_duplicate_reports_change_nothing() -> None:
    t = table()
    add_job(t, spec())
    run_to(t, "j-1", 0)
    assert step(t, rep("sd-a", "j-1", 0, 0, S.RUNNING)) == []
    assert step(t, rep("sd-a", "j-1", 0, 0, S.ASSIGNED)) == []


def test_exit_3_without_retries_fails_job_and_stops_siblings() -> None:
    t = table()
    job = add_job(t, spec(3))
    run_to(t, "j-1", 0)
    run_to(t, "j-1", 1)  # task 2 stays PENDING
    effects = step(t, rep("sd-a", "j-1", 0, 0, S.FAILED, exit_code=3))
    assert job.state is JobState.FAILED
    assert job.message == "task 0 exited with code 3"
    assert StopTask("sd-a", TaskRef("j-1", 1, 0), "job failed: task 0 exited with code 3") in effects
    assert job.tasks[0].state is S.FAILED and job.tasks[0].exit_code == 3
    assert job.tasks[2].state is S.CANCELLED  # never placed: cancelled at once
    assert "JobDone" not in kinds(effects)  # task 1 is still being stopped
    effects = step(t, rep("sd-a", "j-1", 1, 0, S.CANCELLED, exit_code=143))
    assert job.state is JobState.FAILED and job.tasks[1].state is S.CANCELLED
    assert kinds(effects) == ["PersistJob", "AckTasks", "JobDone"]


def test_exit_3_with_retries_retries_then_fails() -> None:
    t = table()
    job = add_job(t, spec(on_exit=1))
    run_to(t, "j-1", 0)
    effects = step(t, rep("sd-a", "j-1", 0, 0, S.FAILED, exit_code=3))
    task = job.tasks[0]
    assert task.state is S.PENDING and task.attempt == 1 and task.exit_retries == 1
    assert "exited with code 3; retrying" in task.message
    assert kinds(effects) == ["PersistJob", "AckTasks"]
    assert job.state is JobState.PENDING
    run_to(t, "j-1", 0)
    assert task.attempt == 1
    step(t, rep("sd-a", "j-1", 0, 1, S.FAILED, exit_code=3))
    assert job.state is JobState.FAILED
    assert job.message == "task 0 exited with code 3 after 1 retries"


def test_start_failure_message() -> None:
    t = table()
    job = add_job(t, spec())
    run_to(t, "j-1", 0, state=S.ASSIGNED)
    step(t, rep("sd-a", "j-1", 0, 0, S.FAILED, exit_code=0, message="exec: no such file"))
    assert job.state is JobState.FAILED
    assert job.message == "task 0 failed to start: exec: no such file"


def test_lost_is_retried_with_next_attempt_then_fails_past_policy() -> None:
    t = table()
    job = add_job(t, spec(on_lost=1))
    run_to(t, "j-1", 0)
    step(t, rep("sd-a", "j-1", 0, 0, S.LOST, message="node n-1 died"))
    task = job.tasks[0]
    assert task.state is S.PENDING and task.attempt == 1 and task.lost_retries == 1 and task.exit_retries == 0
    assert task.last_run == (0, "n-1", "sd-a")
    run_to(t, "j-1", 0, sd="sd-b")
    step(t, rep("sd-b", "j-1", 0, 1, S.LOST, message="node n-1 died"))
    assert job.state is JobState.FAILED
    assert job.message == "task 0 was lost (node n-1 died) after 1 retries"


def test_rejected_goes_back_to_pending_without_spending_a_retry() -> None:
    clock = FakeClock()
    t = table(clock)
    job = add_job(t, spec(on_exit=0, on_lost=0))
    step(t, Place("j-1", 0, "sd-a", "east"))
    effects = step(t, rep("sd-a", "j-1", 0, 0, S.REJECTED, message="no node has room"))
    task = job.tasks[0]
    assert task.state is S.PENDING and task.attempt == 1
    assert task.exit_retries == task.lost_retries == 0
    assert job.misdispatches == 1 and t.misdispatch_total == 1
    assert task.rejected_by == {"sd-a": clock.monotonic()}
    assert "rejected by sd-a" in task.message
    assert AckTasks("sd-a", (TaskRef("j-1", 0, 0),)) in effects
    assert job.state is JobState.PENDING
    run_to(t, "j-1", 0, sd="sd-b")
    assert job.tasks[0].attempt == 1 and job.state is JobState.RUNNING


def test_cancel_pending_job_is_immediate() -> None:
    t = table()
    job = add_job(t, spec(2))
    effects = step(t, Cancel("j-1", "not needed"))
    assert job.state is JobState.CANCELLED
    assert job.message == "cancelled: not needed"
    assert kinds(effects) == ["PersistJob", "JobDone"]
    assert all(task.state is S.CANCELLED for task in job.tasks)


def test_cancel_assigned_and_running_tasks_waits_for_their_end() -> None:
    t = table()
    job = add_job(t, spec(3))
    step(t, Place("j-1", 0, "sd-a", "east"))  # placed, not confirmed
    run_to(t, "j-1", 1)  # running
    effects = step(t, Cancel("j-1"))  # task 2 pending: cancelled at once
    stops = [e for e in effects if isinstance(e, StopTask)]
    assert {s.ref for s in stops} == {TaskRef("j-1", 0, 0), TaskRef("j-1", 1, 0)}
    assert job.state is not JobState.CANCELLED and job.cancel_requested
    assert job.message.startswith("cancelling:")
    assert step(t, Cancel("j-1")) == []  # idempotent
    step(t, rep("sd-a", "j-1", 1, 0, S.CANCELLED))
    assert job.state is not JobState.CANCELLED
    effects = step(t, rep("sd-a", "j-1", 0, 0, S.CANCELLED))
    assert job.state is JobState.CANCELLED and "JobDone" in kinds(effects)


def test_cancel_of_a_finished_job_changes_nothing() -> None:
    t = table()
    job = add_job(t, spec())
    run_to(t, "j-1", 0)
    step(t, rep("sd-a", "j-1", 0, 0, S.SUCCEEDED))
    assert step(t, Cancel("j-1")) == []
    assert job.state is JobState.SUCCEEDED


def test_task_that_succeeds_while_being_cancelled() -> None:
    t = table()
    job = add_job(t, spec(2))
    run_to(t, "j-1", 0)
    run_to(t, "j-1", 1)
    step(t, Cancel("j-1"))
    step(t, rep("sd-a", "j-1", 0, 0, S.SUCCEEDED))
    step(t, rep("sd-a", "j-1", 1, 0, S.FAILED, exit_code=143))  # no retry while cancelling
    assert job.state is JobState.CANCELLED
    assert job.tasks[1].attempt == 0


def test_stale_attempt_updates_are_ignored_but_a_running_one_is_stopped() -> None:
    t = table()
    job = add_job(t, spec())
    run_to(t, "j-1", 0)
    step(t, rep("sd-a", "j-1", 0, 0, S.LOST))
    run_to(t, "j-1", 0, sd="sd-b")
    before = job.to_dict()
    effects = step(t, rep("sd-a", "j-1", 0, 0, S.RUNNING))
    assert effects == [StopTask("sd-a", TaskRef("j-1", 0, 0), "not the current attempt")]
    effects = step(t, rep("sd-a", "j-1", 0, 0, S.SUCCEEDED))
    assert effects == [AckTasks("sd-a", (TaskRef("j-1", 0, 0),))]
    # The current attempt reported by the wrong sub-domain is stale too.
    assert kinds(step(t, rep("sd-a", "j-1", 0, 1, S.RUNNING))) == ["StopTask"]
    assert job.to_dict() == before


def test_reports_for_unknown_jobs_are_stopped_or_acked() -> None:
    t = table()
    assert kinds(step(t, rep("sd-a", "j-x", 0, 0, S.RUNNING))) == ["StopTask"]
    assert kinds(step(t, rep("sd-a", "j-x", 0, 0, S.FAILED))) == ["AckTasks"]
    assert step(t, rep("sd-a", "j-x", 0, 0, S.PENDING)) == []


def test_running_report_for_a_task_already_finished_stops_it() -> None:
    t = table()
    job = add_job(t, spec(2))
    run_to(t, "j-1", 0)
    run_to(t, "j-1", 1)
    step(t, rep("sd-a", "j-1", 0, 0, S.FAILED, exit_code=1))
    assert job.state is JobState.FAILED
    effects = step(t, rep("sd-a", "j-1", 0, 0, S.RUNNING))
    assert kinds(effects) == ["StopTask"]


def test_hello_reconciles_missing_unexpected_and_terminal_tasks() -> None:
    t = table()
    job = add_job(t, spec(3))
    run_to(t, "j-1", 0)
    run_to(t, "j-1", 1)
    step(t, Place("j-1", 2, "sd-a", "east"))  # not confirmed yet
    hello = SubdomainHello(
        "sd-a",
        (
            TaskReport("j-1", 1, 0, S.SUCCEEDED),  # terminal state while away: applied
            TaskReport("j-9", 0, 0, S.RUNNING),  # unknown job: stopped
        ),
    )
    effects = step(t, hello)
    assert job.tasks[0].state is S.PENDING and job.tasks[0].lost_retries == 1  # missing: LOST, retried
    assert job.tasks[0].attempt == 1
    assert job.tasks[1].state is S.SUCCEEDED
    assert job.tasks[2].state is S.PENDING and job.tasks[2].lost_retries == 0  # placement never arrived
    assert StopTask("sd-a", TaskRef("j-9", 0, 0), "unknown or finished job") in effects
    assert AckTasks("sd-a", (TaskRef("j-1", 1, 0),)) in effects


def test_subdomain_lost_loses_confirmed_tasks_and_replaces_unconfirmed() -> None:
    t = table()
    job = add_job(t, spec(2, on_lost=0))
    run_to(t, "j-1", 0)
    step(t, Place("j-1", 1, "sd-a", "east"))
    step(t, SubdomainLost("sd-a", "sub-domain sd-a did not reconnect within 30s"))
    assert job.state is JobState.FAILED
    assert job.message == "task 0 was lost (sub-domain sd-a did not reconnect within 30s)"
    assert job.tasks[0].state is S.LOST
    assert job.tasks[1].state is S.LOST  # stopped with the job; its end is final
    assert t.subdomains_with_tasks() == []


def test_unconfirmed_placement_times_out_and_is_placed_again() -> None:
    clock = FakeClock()
    t = table(clock, timeout=10.0)
    job = add_job(t, spec())
    step(t, Place("j-1", 0, "sd-a", "east"))
    clock.advance(9.0)
    assert step(t, Tick()) == []
    clock.advance(2.0)
    effects = step(t, Tick())
    assert StopTask("sd-a", TaskRef("j-1", 0, 0), "placement not confirmed in time") in effects
    assert job.tasks[0].state is S.PENDING and job.tasks[0].attempt == 1
    assert job.misdispatches == 1
    # A confirmed placement never times out.
    run_to(t, "j-1", 0, state=S.ASSIGNED)
    clock.advance(60.0)
    assert step(t, Tick()) == []


def test_an_unconfirmed_placement_on_a_disconnected_subdomain_waits_for_its_disconnect_policy() -> None:
    """A partition may have held only the confirmation: the sub-domain can be running the task.
    Placing it again at the timeout would run it twice; it is left to the disconnect policy."""
    clock = FakeClock()
    t = table(clock, timeout=10.0)
    job = add_job(t, spec(2))
    step(t, Place("j-1", 0, "sd-a", "east"))
    step(t, Place("j-1", 1, "sd-b", "east"))
    t.subdomain_connected = lambda sd: sd != "sd-a"
    clock.advance(11.0)
    effects = step(t, Tick())
    assert StopTask("sd-b", TaskRef("j-1", 1, 0), "placement not confirmed in time") in effects
    assert all(getattr(e, "subdomain_id", None) != "sd-a" for e in effects)
    assert job.tasks[0].state is S.ASSIGNED and job.tasks[0].attempt == 0
    clock.advance(25.0)
    assert step(t, Tick()) == []  # still away: still waiting
    # Reconnected and still silent about it: now the timeout applies again.
    t.subdomain_connected = lambda sd: True
    clock.advance(11.0)
    effects = step(t, Tick())
    assert StopTask("sd-a", TaskRef("j-1", 0, 0), "placement not confirmed in time") in effects
    assert job.tasks[0].state is S.PENDING and job.tasks[0].attempt == 1


def test_pending_queue_and_waiting_message() -> None:
    t = table()
    add_job(t, spec(2), "j-1")
    add_job(t, spec(1), "j-2")
    assert [(j.job_id, idx) for j, idx in t.pending()] == [("j-1", [0, 1]), ("j-2", [0])]
    t.set_waiting("j-1", "no sub-domain is connected")
    assert t.get("j-1").message == "waiting: no sub-domain is connected"
    step(t, Place("j-1", 0, "sd-a", "east"))
    assert t.get("j-1").message == ""
    with pytest.raises(ValueError):
        t.handle(Place("j-1", 0, "sd-a", "east"))  # not pending any more


def test_store_round_trip_and_reload_into_a_fresh_table() -> None:
    t = table()
    job = add_job(t, spec(3, on_exit=2))
    run_to(t, "j-1", 0)
    step(t, Place("j-1", 1, "sd-b", "west"))
    data = json.loads(json.dumps(job.to_dict()))
    copy = Job.from_dict(data)
    assert copy.to_dict() == job.to_dict()
    fresh = table()
    fresh.add(copy)
    fresh.validate()
    assert fresh.subdomains_with_tasks() == ["sd-a", "sd-b"]
    assert [(j.job_id, idx) for j, idx in fresh.pending()] == [("j-1", [2])]
    # The reloaded table keeps going where the old one stopped.
    step(fresh, rep("sd-a", "j-1", 0, 0, S.SUCCEEDED))
    assert copy.tasks[0].state is S.SUCCEEDED


def test_batch_updates_give_one_persist_and_one_ack() -> None:
    t = table()
    add_job(t, spec(3))
    for i in range(3):
        run_to(t, "j-1", i)
    effects = step(
        t,
        TaskUpdates("sd-a", tuple(TaskReport("j-1", i, 0, S.SUCCEEDED) for i in range(3))),
    )
    assert kinds(effects) == ["PersistJob", "AckTasks", "JobDone"]
    assert len(effects[1].refs) == 3


def test_unsolicited_cancel_counts_as_lost() -> None:
    t = table()
    job = add_job(t, spec(on_lost=1))
    run_to(t, "j-1", 0)
    step(t, rep("sd-a", "j-1", 0, 0, S.CANCELLED, message="operator killed it"))
    assert job.tasks[0].state is S.PENDING and job.tasks[0].lost_retries == 1


def test_hello_repeats_a_stop_that_may_have_been_lost() -> None:
    t = table()
    job = add_job(t, spec())
    run_to(t, "j-1", 0)
    step(t, Cancel("j-1"))
    effects = step(t, SubdomainHello("sd-a", (TaskReport("j-1", 0, 0, S.RUNNING),)))
    assert StopTask("sd-a", TaskRef("j-1", 0, 0), "stop requested before the reconnect") in effects
    assert job.cancel_requested and job.tasks[0].state is S.RUNNING
    step(t, rep("sd-a", "j-1", 0, 0, S.CANCELLED))
    assert job.state is JobState.CANCELLED


def test_long_report_messages_are_bounded_and_can_be_left_out_of_the_record() -> None:
    t = table()
    job = add_job(t, spec(on_exit=1))
    run_to(t, "j-1", 0)
    step(t, rep("sd-a", "j-1", 0, 0, S.SUCCEEDED, message="x" * 10_000))
    assert len(job.tasks[0].message) == 300
    assert job.to_dict(task_messages=False)["tasks"][0][7] == ""


def test_a_drained_task_is_queued_again_without_spending_a_retry() -> None:
    t = table()
    job = add_job(t, spec(2, on_exit=0, on_lost=0))
    run_to(t, "j-1", 0)
    run_to(t, "j-1", 1)
    for state in (S.CANCELLED, S.FAILED):  # a drained task may end either way (SIGTERM)
        index = 0 if state is S.CANCELLED else 1
        effects = step(
            t,
            rep(
                "sd-a",
                "j-1",
                index,
                0,
                state,
                exit_code=-15,
                message="draining node n-1: critical",
                drained=True,
            ),
        )
        task = job.tasks[index]
        assert task.state is S.PENDING and task.attempt == 1 and task.drains == 1
        assert task.exit_retries == task.lost_retries == 0
        assert task.message == "attempt 0 moved off node n-1 (sd-a): draining node n-1: critical"
        assert AckTasks("sd-a", (TaskRef("j-1", index, 0),)) in effects
    assert t.drained_total == 2 and job.state is JobState.PENDING
    # The count survives the store.
    copy = Job.from_dict(json.loads(json.dumps(job.to_dict())))
    assert [x.drains for x in copy.tasks] == [1, 1]
    # Drained after a cancel was asked for: it just ends.
    run_to(t, "j-1", 0)
    step(t, Cancel("j-1", "no longer needed"))
    step(t, rep("sd-a", "j-1", 0, 1, S.CANCELLED, drained=True))
    assert job.tasks[0].state is S.CANCELLED and job.tasks[0].drains == 1


def test_disconnect_policies_decide_what_a_partition_does_to_each_job() -> None:
    import dataclasses

    from domainos.jobspec import DisconnectPolicy

    t = table()
    default = add_job(t, spec(), "j-default")  # the master's grace (30 s here)
    patient = add_job(t, dataclasses.replace(spec(), disconnect=DisconnectPolicy(120.0, True)), "j-patient")
    stay = add_job(t, dataclasses.replace(spec(), disconnect=DisconnectPolicy(10.0, False)), "j-stay")
    for job_id in ("j-default", "j-patient", "j-stay"):
        run_to(t, job_id, 0)
    assert t.away_due("sd-a", 30.0) == 10.0  # the earliest policy
    # 10 s away: only j-stay's time has come, and it waits for the sub-domain.
    step(t, SubdomainLost("sd-a", "unreachable for 10s", away_s=10.0, grace_s=30.0))
    assert stay.tasks[0].state is S.RUNNING and "waiting for it" in stay.tasks[0].message
    assert default.tasks[0].state is S.RUNNING and patient.tasks[0].state is S.RUNNING
    assert t.away_due("sd-a", 30.0) == 30.0
    # 30 s: the default job is lost and queued again (a retry on_lost spent).
    step(t, SubdomainLost("sd-a", "unreachable for 30s", away_s=30.0, grace_s=30.0))
    assert default.tasks[0].state is S.PENDING and default.tasks[0].lost_retries == 1
    assert patient.tasks[0].state is S.RUNNING and t.away_due("sd-a", 30.0) == 120.0
    step(t, SubdomainLost("sd-a", "unreachable for 120s", away_s=120.0, grace_s=30.0))
    assert patient.tasks[0].state is S.PENDING
    assert t.away_due("sd-a", 30.0) == float("inf") and t.tasks_on("sd-a") == 1
    # The sub-domain comes back: the waiting task was running all along and carries on; the
    # others' old attempts are stopped (their replacements are the current attempts).
    effects = step(
        t,
        SubdomainHello(
            "sd-a",
            (
                TaskReport("j-stay", 0, 0, S.RUNNING, node_id="n-1"),
                TaskReport("j-default", 0, 0, S.RUNNING, node_id="n-1"),
                TaskReport("j-patient", 0, 0, S.RUNNING, node_id="n-1"),
            ),
        ),
    )
    stops = {e.ref.job_id for e in effects if isinstance(e, StopTask)}
    assert stops == {"j-default", "j-patient"}
    assert stay.tasks[0].state is S.RUNNING and stay.tasks[0].attempt == 0
    assert t.away_due("sd-a", 30.0) == 10.0  # a later absence starts over
