"""Pure tests of the task table with its registry; ``validate()`` after every step."""

from __future__ import annotations

import dataclasses

import pytest
from subdomain_helpers import inventory, make_state, spec

from domainos.errors import AlreadyExists
from domainos.model import TaskRef, TaskState, TaskStatus
from sub_domain._registry import NodeRegistry
from sub_domain._tasks import AckAgent, Forward, Persist, StartOnAgent, StopOnAgent, TaskTable

K0 = TaskRef("j-1", 0, 0)


def status(key: TaskRef, state: TaskState, **kw: object) -> TaskStatus:
    return TaskStatus(key, state, **kw)  # type: ignore[arg-type]


def placed(gpus: int = 0) -> tuple[NodeRegistry, TaskTable]:
    reg, table = make_state()
    reg.register(inventory("n1", gpus=4), "i1", 0.0, conn_token=1)
    effects = table.place(spec(gpus=gpus), 100.0)
    table.validate()
    assert [type(e) for e in effects] == [Persist, StartOnAgent, Forward]
    return reg, table


def test_place_persists_starts_and_reports_assigned() -> None:
    reg, table = make_state()
    reg.register(inventory("n1", gpus=4), "i1", 0.0, conn_token=1)
    effects = table.place(spec(gpus=2), 100.0)
    table.validate()
    persist, start, fwd = effects
    assert isinstance(persist, Persist) and persist.record is not None
    assert (persist.job_id, persist.task_index) == ("j-1", 0)
    assert set(persist.record["attempts"]) == {"0"}
    assert start == StartOnAgent("n1", "c1", spec(gpus=2), (0, 1))
    assert isinstance(fwd, Forward)
    assert fwd.status.state == TaskState.ASSIGNED
    assert (fwd.status.node_id, fwd.status.subdomain_id, fwd.status.gpu_indexes) == ("n1", "sd-1", (0, 1))
    assert table.placements == 1
    assert reg.get("n1").free.gpus == 2  # type: ignore[union-attr]


def test_place_is_idempotent() -> None:
    reg, table = placed()
    again = table.place(spec(), 101.0)
    table.validate()
    assert len(again) == 1 and isinstance(again[0], Forward) and again[0].status.state == TaskState.ASSIGNED
    assert table.placements == 1 and len(reg.get("n1").allocations) == 1  # type: ignore[union-attr]


def test_rejected_with_reason_when_nothing_fits() -> None:
    reg, table = make_state()
    reg.register(inventory("n1", cpus=2), "i1", 0.0, conn_token=1)
    (fwd,) = table.place(spec(cpus=4), 100.0)
    table.validate()
    assert isinstance(fwd, Forward)
    assert fwd.status.state == TaskState.REJECTED
    assert fwd.status.message == "no ready node has cpus=4 memory=1Gi free; largest free: cpus=2 memory=32Gi"
    assert len(table) == 0 and table.rejections == 1


def test_running_then_succeeded_then_master_ack() -> None:
    reg, table = placed(gpus=1)
    fx = table.agent_status("n1", status(K0, TaskState.RUNNING, pid=42), 101.0)
    table.validate()
    assert len(fx) == 1 and isinstance(fx[0], Forward) and fx[0].status.pid == 42
    assert fx[0].status.gpu_indexes == (0,)  # filled in from the placement
    assert table.agent_status("n1", status(K0, TaskState.RUNNING, pid=42), 102.0) == []  # full-report repeat
    fx = table.agent_status("n1", status(K0, TaskState.SUCCEEDED, exit_code=0), 103.0)
    table.validate()
    assert [type(e) for e in fx] == [Persist, Forward, AckAgent]  # durable before the agent may forget
    assert fx[2] == AckAgent("n1", (K0,))
    assert reg.get("n1").allocations == {}  # type: ignore[union-attr]
    # the agent re-sends the terminal state (it missed our ack): ack again, nothing forwarded
    assert table.agent_status("n1", status(K0, TaskState.SUCCEEDED), 104.0) == [AckAgent("n1", (K0,))]
    assert table.hello_tasks()[0].state == TaskState.SUCCEEDED
    fx = table.master_ack([K0, TaskRef("other", 0, 0)])
    table.validate()
    assert fx == [Persist("j-1", 0, None)]
    assert len(table) == 0 and table.hello_tasks() == []


def test_master_ack_of_an_active_task_is_ignored() -> None:
    _, table = placed()
    assert table.master_ack([K0]) == []
    assert len(table) == 1
    table.validate()


def test_two_attempts_share_one_store_slot() -> None:
    _, table = placed()
    table.agent_status("n1", status(K0, TaskState.FAILED, exit_code=1), 101.0)
    fx = table.place(spec(attempt=1), 102.0)
    table.validate()
    persist = fx[0]
    assert isinstance(persist, Persist) and persist.record is not None
    assert set(persist.record["attempts"]) == {"0", "1"}
    fx = table.master_ack([K0])
    assert isinstance(fx[0], Persist) and fx[0].record is not None  # attempt 1 still held
    assert set(fx[0].record["attempts"]) == {"1"}
    table.validate()


def test_node_dead_makes_active_tasks_lost() -> None:
    reg, table = placed()
    table.place(spec(index=1), 100.0)
    table.agent_status("n1", status(TaskRef("j-1", 1, 0), TaskState.SUCCEEDED), 101.0)
    reg.disconnect("n1", 1, 1.0)
    events = reg.tick(10.0)
    assert events and events[0].node_id == "n1"
    fx = table.node_dead("n1", "its stream ended, then nothing for 9.0s", 110.0)
    table.validate()
    forwards = [e for e in fx if isinstance(e, Forward)]
    assert len(forwards) == 1
    assert forwards[0].status.state == TaskState.LOST
    assert forwards[0].status.message == "node n1 died: its stream ended, then nothing for 9.0s"
    assert table.count(TaskState.LOST) == 1 and table.count(TaskState.SUCCEEDED) == 1


def test_reconcile_on_register() -> None:
    reg, table = make_state()
    reg.register(inventory("n1"), "i1", 0.0, conn_token=1)
    running, assigned = TaskRef("run", 0, 0), TaskRef("asg", 0, 0)
    table.place(spec("run"), 100.0)
    table.agent_status("n1", status(running, TaskState.RUNNING), 100.0)
    table.place(spec("asg"), 100.0)
    table.place(spec("kept"), 100.0)
    table.agent_status("n1", status(TaskRef("kept", 0, 0), TaskState.RUNNING), 100.0)
    table.validate()
    reg.disconnect("n1", 1, 1.0)
    reg.register(inventory("n1"), "i2", 2.0, conn_token=2)
    reported = [
        status(TaskRef("kept", 0, 0), TaskState.RUNNING),
        status(TaskRef("stray", 0, 0), TaskState.RUNNING),  # not expected here: stop it
        status(TaskRef("old", 0, 0), TaskState.SUCCEEDED),  # unknown terminal: let the agent forget it
    ]
    fx = table.reconcile("n1", reported, 120.0, incarnation="i2")
    table.validate()
    stops = [e for e in fx if isinstance(e, StopOnAgent)]
    assert [s.key for s in stops] == [TaskRef("stray", 0, 0)]
    assert AckAgent("n1", (TaskRef("old", 0, 0),)) in fx
    starts = [e for e in fx if isinstance(e, StartOnAgent)]
    assert [s.spec.ref for s in starts] == [assigned]  # never started: start again (idempotent)
    lost = [e.status for e in fx if isinstance(e, Forward)]
    assert [(s.ref, s.state) for s in lost] == [(running, TaskState.LOST)]
    assert lost[0].message == "node n1 no longer runs it (agent incarnation i2)"
    assert table.get(TaskRef("kept", 0, 0)).status.state == TaskState.RUNNING  # type: ignore[union-attr]


def test_reconcile_stops_what_we_gave_up_on() -> None:
    reg, table = placed()
    table.agent_status("n1", status(K0, TaskState.RUNNING), 100.0)
    reg.disconnect("n1", 1, 1.0)
    table.node_dead("n1", "gone", 101.0)  # LOST while the agent was away
    reg.register(inventory("n1", gpus=4), "i1", 2.0, conn_token=2)
    fx = table.reconcile("n1", [status(K0, TaskState.RUNNING)], 102.0)
    table.validate()
    assert [type(e) for e in fx] == [StopOnAgent]
    assert "already lost" in fx[0].reason  # type: ignore[union-attr]


def test_stop_paths() -> None:
    reg, table = placed()
    (stop,) = table.stop(K0, grace_s=3.0, reason="user cancel", now=101.0)
    assert stop == StopOnAgent("n1", "c2", K0, 3.0, "user cancel")
    (unknown,) = table.stop(TaskRef("nope", 0, 0), grace_s=1.0, reason="", now=101.0)
    assert isinstance(unknown, Forward) and unknown.status.state == TaskState.CANCELLED
    reg.disconnect("n1", 1, 1.0)
    fx = table.stop(K0, grace_s=3.0, reason="user cancel", now=102.0)
    table.validate()
    assert [type(e) for e in fx] == [Persist, Forward]
    assert fx[1].status.state == TaskState.CANCELLED  # type: ignore[union-attr]
    assert fx[1].status.message == "cancelled (user cancel); node n1 is not connected"  # type: ignore[union-attr]
    assert table.stop(K0, grace_s=3.0, reason="again", now=103.0) == [Forward(table.get(K0).status)]  # type: ignore[union-attr]


def test_refused_start_fails_the_task() -> None:
    _, table = placed()
    fx = table.agent_ack("n1", "c1", False, "command not found: nope", 101.0)
    table.validate()
    assert [type(e) for e in fx] == [Persist, Forward]
    assert fx[1].status.state == TaskState.FAILED  # type: ignore[union-attr]
    assert "command not found" in fx[1].status.message  # type: ignore[union-attr]
    assert table.agent_ack("n1", "c1", False, "again", 102.0) == []


def test_restore_round_trip() -> None:
    _, table = placed(gpus=2)
    table.agent_status("n1", status(K0, TaskState.RUNNING), 100.0)
    fx = table.agent_status("n1", status(TaskRef("zz", 0, 0), TaskState.RUNNING), 100.0)  # stray
    assert isinstance(fx[0], StopOnAgent)
    table.place(spec("gone"), 100.0)
    records = {
        (e.job_id, e.task_index): e.record
        for e in [table._persist("j-1", 0), table._persist("gone", 0)]
        if isinstance(e, Persist)
    }
    # a fresh process: n1 is restored, the node of "gone" was moved to another record
    reg2, table2 = make_state()
    reg2.restore(inventory("n1", gpus=4), "i1", dead=False, now=0.0)
    fx = table2.restore(records[("j-1", 0)], 200.0)  # type: ignore[arg-type]
    table2.validate()
    assert fx == []
    entry = table2.get(K0)
    assert entry is not None and entry.status.state == TaskState.RUNNING and entry.gpu_indexes == (0, 1)
    assert reg2.get("n1").gpus_used == {0, 1}  # type: ignore[union-attr]
    rec = dict(records[("gone", 0)])  # type: ignore[arg-type]
    rec["attempts"] = {"0": {**rec["attempts"]["0"], "node_id": "vanished"}}
    fx = table2.restore(rec, 200.0)
    table2.validate()
    lost = [e.status for e in fx if isinstance(e, Forward)]
    assert lost and lost[0].state == TaskState.LOST and "vanished" in lost[0].message


def test_duplicate_connection_keeps_tasks_untouched() -> None:
    reg, table = placed()
    with pytest.raises(AlreadyExists):
        reg.register(inventory("n1", gpus=4), "other", 5.0, conn_token=9)
    table.validate()
    assert table.get(K0).status.state == TaskState.ASSIGNED  # type: ignore[union-attr]


def test_status_fields_are_filled_in_for_the_master() -> None:
    _, table = placed()
    reported = dataclasses.replace(status(K0, TaskState.RUNNING), node_id="", subdomain_id="")
    (fwd,) = table.agent_status("n1", reported, 100.0)
    assert isinstance(fwd, Forward)
    assert (fwd.status.node_id, fwd.status.subdomain_id) == ("n1", "sd-1")
