"""Per-task placement constraints: built from the job spec, carried by ``TaskSpec`` on the wire."""

from __future__ import annotations

import pytest

from domainos.errors import InvalidArgument
from domainos.jobspec import parse_spec, task_constraints
from domainos.model import PlacementConstraints, TaskRef, TaskSpec


def test_plain_job_tasks_ask_for_nothing_but_the_submit_time() -> None:
    spec = parse_spec({"command": ["x"], "replicas": 3})
    pc = task_constraints(spec, 2, 1000.0)
    assert pc == PlacementConstraints(submitted_at=1000.0)
    assert pc.group == "" and not pc.one_nvlink_domain and pc.dataset == ""
    assert pc.locality_deadline() == 0.0


def test_training_tasks_group_by_dp_replica_and_need_one_nvlink_domain() -> None:
    spec = parse_spec(
        {
            "command": ["x"],
            "parallelism": {"tp": 8, "pp": 2, "dp": 4},
            "exclude_gpu_models": ["T4"],
            "node_selector": {"zone": "a"},
            "locality": {"dataset": "web", "shards": "10-17", "wait": "45s"},
        }
    )
    got = [task_constraints(spec, i, 100.0) for i in range(spec.replicas)]
    assert [c.group for c in got] == ["dp0", "dp0", "dp1", "dp1", "dp2", "dp2", "dp3", "dp3"]
    assert [c.shard for c in got] == list(range(10, 18))
    for c in got:
        assert c.one_nvlink_domain and c.dataset == "web" and c.locality_wait_s == 45.0
        assert c.exclude_gpu_models == ("T4",) and dict(c.node_selector) == {"zone": "a"}
        assert c.locality_deadline() == 145.0
        assert not c.allows_gpu_model("T4") and c.allows_gpu_model("H100")
        assert c.selects({"zone": "a", "rack": "r1"}) and not c.selects({"zone": "b"}) and not c.selects({})


def test_tp1_training_needs_no_nvlink_and_locality_defaults_to_shard_i() -> None:
    spec = parse_spec({"command": ["x"], "parallelism": {"dp": 3}, "locality": {"dataset": "d"}})
    got = [task_constraints(spec, i, 0.0) for i in range(3)]
    assert [(c.one_nvlink_domain, c.group, c.shard, c.locality_wait_s) for c in got] == [
        (False, "dp0", 0, 30.0),
        (False, "dp1", 1, 30.0),
        (False, "dp2", 2, 30.0),
    ]


def _task(placement: PlacementConstraints, reservation_id: str = "") -> TaskSpec:
    return TaskSpec(
        ref=TaskRef("j-1", 3, 0),
        command=("echo",),
        placement=placement,
        reservation_id=reservation_id,
    )


def test_task_spec_carries_placement_and_reservation_over_the_wire() -> None:
    pc = PlacementConstraints(
        exclude_gpu_models=("T4", "V100"),
        node_selector={"zone": "a"},
        one_nvlink_domain=True,
        dataset="web",
        shard=7,
        locality_wait_s=30.0,
        group="dp1",
        submitted_at=1234.5,
    )
    task = _task(pc, "r-42")
    msg = task.to_proto()
    assert msg.reservation_id == "r-42" and msg.placement.shard == 7 and msg.placement.group == "dp1"
    assert TaskSpec.from_proto(msg) == task
    assert TaskSpec.from_json(task.to_json()) == task
    assert PlacementConstraints.from_proto(pc.to_proto()) == pc


def test_a_plain_task_message_is_unchanged() -> None:
    task = _task(PlacementConstraints())
    assert not task.to_proto().HasField("placement")
    assert "placement" not in task.to_json() and "reservationId" not in task.to_json()
    assert TaskSpec.from_proto(task.to_proto()).placement.empty


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"shard": -1}, "spec.placement.shard", "must not be negative, got -1"),
        ({"locality_wait_s": float("nan")}, "spec.placement.locality_wait_s", "finite number >= 0"),
        ({"submitted_at": -5.0}, "spec.placement.submitted_at", "finite number >= 0, got -5.0"),
        ({"dataset": "a\x00b"}, "spec.placement.dataset", "NUL"),
        (
            {"exclude_gpu_models": tuple(f"M{i}" for i in range(33))},
            "spec.placement.exclude_gpu_models",
            "at most 32",
        ),
    ],
)
def test_bad_placement_over_the_wire_names_the_field(
    change: dict[str, object], field: str, fragment: str
) -> None:
    msg = _task(PlacementConstraints(group="g")).to_proto()
    for key, value in change.items():
        target = getattr(msg.placement, key)
        if isinstance(value, tuple):
            target.extend(value)
        else:
            setattr(msg.placement, key, value)
    with pytest.raises(InvalidArgument) as exc:
        TaskSpec.from_proto(msg)
    assert exc.value.field == field and fragment in exc.value.message


@pytest.mark.parametrize(
    ("gpus", "share"),
    [(0, 100), (0, -3), (1, 50)],
)
def test_bad_gpu_shares_in_a_task_spec_are_refused(gpus: int, share: int) -> None:
    msg = _task(PlacementConstraints()).to_proto()
    msg.resources.gpus = gpus
    msg.resources.gpu_share_percent = share
    with pytest.raises(InvalidArgument) as exc:
        TaskSpec.from_proto(msg)
    assert exc.value.field == "spec.resources.gpu_share_percent"
    assert f"gpus={gpus} gpu_share_percent={share}" in exc.value.message


def test_a_share_task_spec_round_trips() -> None:
    from domainos.resources import Resources

    task = TaskSpec(
        ref=TaskRef("j-1", 0, 0), command=("x",), resources=Resources(500, 2**20, 0, "", 25, 2**30)
    )
    assert TaskSpec.from_proto(task.to_proto()) == task
