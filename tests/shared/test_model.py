"""The shared protobuf-boundary types: round trips, and validation errors that name the field path."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from domainos.api.v1 import common_pb2
from domainos.errors import InvalidArgument
from domainos.model import (
    MAX_ATTEMPT,
    MAX_TASK_INDEX,
    GpuDevice,
    GpuUsage,
    HealthStatus,
    LogChunk,
    NodeHealth,
    NodeInventory,
    NodeUsage,
    TaskRef,
    TaskSpec,
    TaskState,
    TaskStatus,
    check_job_id,
    check_node_id,
)
from domainos.resources import Resources

GIB = 2**30
REF = TaskRef("j-1", 2, 3)


def _spec(**kw: Any) -> TaskSpec:
    base: dict[str, Any] = {
        "ref": REF,
        "command": ("python3", "-c", "print(1)"),
        "env": {"A": "1"},
        "resources": Resources(1500, GIB, 1, "H100"),
        "tenant": "ml",
        "master_address": "m:7000",
        "job_name": "train",
        "replicas": 4,
    }
    base.update(kw)
    return TaskSpec(**base)


def _field(exc: pytest.ExceptionInfo[InvalidArgument]) -> str | None:
    return exc.value.field


# -- enums -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enum", "proto", "prefix"),
    [
        (TaskState, common_pb2.TaskState, "TASK_STATE_"),
        (HealthStatus, common_pb2.HealthStatus, "HEALTH_STATUS_"),
    ],
)
def test_enums_have_the_wire_numbers(enum: Any, proto: Any, prefix: str) -> None:
    assert {m.name: int(m) for m in enum} == {n.removeprefix(prefix): v for n, v in proto.items()}


def test_task_state_terminal_label_and_unknown_numbers() -> None:
    assert {s for s in TaskState if s.terminal} == {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.LOST,
        TaskState.REJECTED,
    }
    assert TaskState.RUNNING.label == "running"
    assert TaskState.from_proto(3) is TaskState.RUNNING
    assert TaskState.from_proto(99) is TaskState.UNSPECIFIED  # a newer peer's state
    assert HealthStatus.from_proto(99) is HealthStatus.UNSPECIFIED


# -- ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["j-1", "J_2.x", "a" * 128])
def test_valid_job_ids(job_id: str) -> None:
    check_job_id(job_id)


@pytest.mark.parametrize("job_id", ["", "../etc", "a..b", "a/b", ".hidden", "-x", "a b", "a" * 129, "j-1\n"])
def test_invalid_job_ids(job_id: str) -> None:
    with pytest.raises(InvalidArgument, match="not a valid job id") as exc:
        check_job_id(job_id, "spec.job_id")
    assert _field(exc) == "spec.job_id"


def test_node_ids() -> None:
    check_node_id("gpu-01.rack_2")
    check_node_id("n" * 253)
    for bad in ("", "bad/node", "a b", "n" * 254, "-n", "n\n"):
        with pytest.raises(InvalidArgument, match="not a valid node id") as exc:
            check_node_id(bad)
        assert _field(exc) == "node_id"


# -- tasks -----------------------------------------------------------------------------------------


def test_task_ref_round_trip_order_and_text() -> None:
    assert TaskRef.from_proto(REF.to_proto()) == REF
    assert str(REF) == "j-1/2#3"
    assert sorted([TaskRef("b", 0, 0), TaskRef("a", 1, 0), TaskRef("a", 0, 1)]) == [
        TaskRef("a", 0, 1),
        TaskRef("a", 1, 0),
        TaskRef("b", 0, 0),
    ]
    # Any message with the three identity fields will do.
    assert TaskRef.from_proto(common_pb2.TaskStatus(job_id="j-1", task_index=2, attempt=3)) == REF


@pytest.mark.parametrize(
    ("ref", "field"),
    [
        (TaskRef("../x", 0, 0), "task.job_id"),
        (TaskRef("j", -1, 0), "task.task_index"),
        (TaskRef("j", MAX_TASK_INDEX + 1, 0), "task.task_index"),
        (TaskRef("j", 0, -1), "task.attempt"),
        (TaskRef("j", 0, MAX_ATTEMPT + 1), "task.attempt"),
    ],
)
def test_task_ref_errors_name_the_field(ref: TaskRef, field: str) -> None:
    msg = common_pb2.TaskRef(job_id=ref.job_id, task_index=ref.task_index, attempt=ref.attempt)
    with pytest.raises(InvalidArgument) as exc:
        TaskRef.from_proto(msg)
    assert _field(exc) == field
    with pytest.raises(InvalidArgument) as exc:
        ref.validate()  # no prefix: the bare field name
    assert _field(exc) == field.removeprefix("task.")


def test_task_spec_round_trips() -> None:
    spec = _spec()
    assert TaskSpec.from_proto(spec.to_proto()) == spec
    assert TaskSpec.from_json(spec.to_json()) == spec
    # An unset replicas field means one replica.
    assert TaskSpec.from_proto(dataclasses.replace(spec, replicas=0).to_proto()).replicas == 1


@pytest.mark.parametrize(
    ("changes", "field", "text"),
    [
        ({"ref": TaskRef("", 0, 0)}, "spec.job_id", "not a valid job id"),
        ({"command": ()}, "spec.command", "nothing to run"),
        ({"command": ("",)}, "spec.command", "nothing to run"),
        ({"command": ("sh", "a\x00b")}, "spec.command[1]", "NUL"),
        ({"env": {"A=B": "1"}}, "spec.env", "not a valid environment variable"),
        ({"env": {"A": "x\x00"}}, "spec.env", "not a valid environment variable"),
        ({"resources": Resources(-1, 0, 0)}, "spec.resources", "must not be negative"),
        ({"resources": Resources(0, 0, -2)}, "spec.resources", "must not be negative"),
    ],
)
def test_task_spec_errors_name_the_field(changes: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(InvalidArgument, match=text) as exc:
        TaskSpec.from_proto(_spec(**changes).to_proto())
    assert _field(exc) == field


def test_task_status_round_trips_and_rejects_unknown_states() -> None:
    status = TaskStatus(
        REF,
        TaskState.FAILED,
        exit_code=137,
        message="killed by SIGKILL",
        node_id="n1",
        subdomain_id="sd-1",
        started_at=10.5,
        finished_at=12.25,
        pid=4242,
        gpu_indexes=(0, 3),
        cpu_set=(4, 5),
    )
    assert status.terminal
    assert TaskStatus.from_proto(status.to_proto()) == status
    assert TaskStatus.from_json(status.to_json()) == status

    msg = status.to_proto()
    msg.state = 42  # type: ignore[assignment]
    with pytest.raises(InvalidArgument, match="unknown task state 42") as exc:
        TaskStatus.from_proto(msg)
    assert _field(exc) == "task.state"
    msg = dataclasses.replace(status, ref=TaskRef("a/b", 0, 0)).to_proto()
    with pytest.raises(InvalidArgument) as exc:
        TaskStatus.from_proto(msg)
    assert _field(exc) == "task.job_id"


def test_log_chunk_round_trip() -> None:
    chunk = LogChunk(data=b"hello\n", offset=6, size=12, eof=True)
    assert LogChunk.from_proto(chunk.to_proto()) == chunk
    assert LogChunk.from_proto(LogChunk(error="unknown task").to_proto()).error == "unknown task"


# -- nodes -----------------------------------------------------------------------------------------


def _inventory(**kw: Any) -> NodeInventory:
    gpus = tuple(
        GpuDevice(i, uuid=f"GPU-{i}", model="H100", memory_bytes=80 * GIB, nvlink_peers=(1 - i,))
        for i in (0, 1)
    )
    base: dict[str, Any] = {
        "node_id": "n1",
        "hostname": "n1.test",
        "simulated": True,
        "cpu_cores": 16,
        "memory_bytes": 64 * GIB,
        "gpus": gpus,
        "labels": {"zone": "a"},
        "agent_version": "0.1.0",
        "os": "linux",
    }
    base.update(kw)
    return NodeInventory(**base)


def test_inventory_defaults_allocatable_to_the_whole_machine() -> None:
    inv = _inventory()
    assert inv.allocatable == Resources(16_000, 64 * GIB, 2, "H100")
    assert inv.gpu_indexes == (0, 1) and inv.nvlink == {0: frozenset({1}), 1: frozenset({0})}
    # An unset allocatable on the wire means the same.
    msg = inv.to_proto()
    msg.ClearField("allocatable")
    assert NodeInventory.from_proto(msg) == inv
    # A partial allocatable: a GPU count takes the first GPU's model; no GPUs, no model.
    assert _inventory(allocatable=Resources(8000, GIB, 1)).allocatable == Resources(8000, GIB, 1, "H100")
    assert _inventory(allocatable=Resources(8000, GIB, 0, "H100")).allocatable == Resources(8000, GIB)
    assert _inventory(allocatable=Resources(8000, GIB, 1)).gpu_indexes == (0,)


def test_inventory_round_trips() -> None:
    inv = _inventory(allocatable=Resources(12_000, 32 * GIB, 1, "H100"))
    assert NodeInventory.from_proto(inv.to_proto()) == inv
    assert NodeInventory.from_json(inv.to_json()) == inv


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"node_id": "bad/node"}, "inventory.node_id"),
        ({"gpus": (GpuDevice(0), GpuDevice(0))}, "inventory.gpus"),
        ({"gpus": (GpuDevice(-1),)}, "inventory.gpus"),
        ({"cpu_cores": -1}, "inventory.cpu_cores"),
        ({"allocatable": Resources(-1000, GIB)}, "inventory.allocatable"),
        ({"allocatable": Resources(1000, GIB, 3)}, "inventory.allocatable.gpus"),
    ],
)
def test_inventory_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        NodeInventory.from_proto(_inventory(**changes).to_proto())
    assert _field(exc) == field


def test_usage_and_health_round_trip() -> None:
    usage = NodeUsage(
        cpu_percent=12.5,
        memory_used_bytes=3 * GIB,
        gpus=(GpuUsage(0, 90.0, GIB, 70.0, 400.0), GpuUsage(1, power_w=75.0)),
        load1=2.0,
    )
    assert NodeUsage.from_proto(usage.to_proto()) == usage
    assert usage.power_w == 475.0

    assert NodeHealth().status is HealthStatus.UNSPECIFIED  # nothing reported yet
    sick = NodeHealth(HealthStatus.UNHEALTHY, ("gpu0: xid 79",))
    assert NodeHealth.from_proto(sick.to_proto()) == sick and sick.cordoned
    assert not NodeHealth(HealthStatus.DEGRADED).cordoned
    assert NodeHealth.from_proto(common_pb2.NodeHealth(status=9)).status is HealthStatus.UNSPECIFIED  # type: ignore[arg-type]
