"""Node affinity (a task pinned to a node, hard or soft) and distinct nodes (no two tasks of a job
on one node) in the sub-domain's placement: pure, through the registry and the task table."""

from __future__ import annotations

from typing import Any

from subdomain_helpers import GI, inventory

from domainos.model import PlacementConstraints, TaskRef, TaskSpec, TaskState
from domainos.resources import Resources
from sub_domain._placement import Placement
from sub_domain._registry import NodeRegistry
from sub_domain._tasks import Forward, TaskTable


def reg() -> NodeRegistry:
    r = NodeRegistry("sd-1", max_nodes=100, silent_after_s=15.0, dead_after_s=5.0)
    for name, cpus in (("small", 2), ("mid", 4), ("big", 8)):
        r.register(inventory(name, cpus=cpus), "i", 0.0, conn_token=len(r.nodes) + 1)
    return r


def spec(i: int, cpus: float = 1, job: str = "j", **placement: Any) -> TaskSpec:
    return TaskSpec(
        TaskRef(job, i, 0),
        ("true",),
        resources=Resources(int(cpus * 1000), GI),
        placement=PlacementConstraints(**placement),
    )


def status(t: TaskTable, s: TaskSpec) -> Any:
    (fwd,) = [e for e in t.place(s, 0.0) if isinstance(e, Forward)]
    t.validate()
    return fwd.status


def test_a_pinned_task_goes_to_its_node_not_the_best_fit() -> None:
    r = reg()
    p = r.place(Resources(1000, GI), PlacementConstraints(node_id="big"))
    assert isinstance(p, Placement) and p.node_id == "big" and p.note == ""
    # without the pin, best fit takes the smallest node
    p = r.place(Resources(1000, GI), PlacementConstraints())
    assert isinstance(p, Placement) and p.node_id == "small"


def test_hard_affinity_waits_and_says_why() -> None:
    r = reg()
    assert r.place(Resources(6000, GI), PlacementConstraints(node_id="mid")) == (
        "affinity: node mid has cpus=4 memory=32Gi free, not cpus=6 memory=1Gi"
    )
    assert r.place(Resources(1000, GI), PlacementConstraints(node_id="gone")) == (
        "affinity: node gone is not registered in sub-domain sd-1"
    )


def test_soft_affinity_falls_back_to_any_node_and_says_so() -> None:
    r = reg()
    p = r.place(Resources(6000, GI), PlacementConstraints(node_id="mid", node_soft=True))
    assert isinstance(p, Placement) and p.node_id == "big"
    assert p.note == (
        "affinity for node mid is soft and node mid has cpus=4 memory=32Gi free, not "
        "cpus=6 memory=1Gi: placed on node big"
    )


def test_distinct_nodes_spreads_a_job_and_then_waits() -> None:
    r = reg()
    t = TaskTable("sd-1", r)
    nodes = [status(t, spec(i, distinct_nodes=True)).node_id for i in range(3)]
    assert sorted(nodes) == ["big", "mid", "small"]  # best fit alone would pack all three on "small"
    fourth = status(t, spec(3, distinct_nodes=True))
    assert fourth.state == TaskState.REJECTED
    # another job is not kept apart from this one
    assert status(t, spec(0, job="other", distinct_nodes=True)).state == TaskState.ASSIGNED


def test_distinct_nodes_frees_a_node_when_the_task_there_ends() -> None:
    r = reg()
    t = TaskTable("sd-1", r)
    first = status(t, spec(0, distinct_nodes=True))
    assert first.node_id == "small"
    t.stop(TaskRef("j", 0, 0), grace_s=0, reason="test", now=1.0)
    ref = TaskRef("j", 0, 0)
    from domainos.model import TaskStatus

    t.agent_status("small", TaskStatus(ref, TaskState.CANCELLED, node_id="small"), 2.0)
    t.validate()
    assert status(t, spec(1, distinct_nodes=True)).node_id == "small"


def test_pinned_and_distinct_refuses_a_node_the_job_already_uses() -> None:
    r = reg()
    t = TaskTable("sd-1", r)
    assert status(t, spec(0, node_id="mid", distinct_nodes=True)).node_id == "mid"
    again = status(t, spec(1, node_id="mid", distinct_nodes=True))
    assert again.state == TaskState.REJECTED
    assert again.message == "affinity: node mid already runs a task of this job (distinct_nodes)"
