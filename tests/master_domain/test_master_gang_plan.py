"""The gang planner (pure): plain gangs in one sub-domain or split, training jobs by topology."""

from __future__ import annotations

import dataclasses

from domainos.jobspec import GangPolicy, JobSpec, ModelSize, Parallelism, RetryPolicy
from domainos.resources import Resources
from master_domain._sched._gang import (
    GangPlan,
    consume,
    plan_gang,
    plan_plain_gang,
    tasks_per_node,
    training_shape,
)
from master_domain._sched._loss import Link, LinkTable
from master_domain._sched._topology import GpuLimit, SubDomainView, Unplaceable
from master_domain._summary import Shape

GI = 2**30
H100 = "H100"


def shape(count: int, free_gpus: int = 8, model: str = H100, cpus: int = 64) -> Shape:
    return Shape(model, free_gpus, count, Resources(cpus * 1000, 512 * GI, free_gpus, model))


def view(sd: str, region: str, *shapes: Shape) -> SubDomainView:
    return SubDomainView(sd, region, tuple(shapes))


def task(gpus: int = 2, cpus: int = 1) -> Resources:
    return Resources(cpus * 1000, GI, gpus, H100)


def plan(out: GangPlan | Unplaceable) -> GangPlan:
    assert isinstance(out, GangPlan), out
    return out


def test_tasks_per_node_takes_the_tightest_dimension() -> None:
    assert tasks_per_node(task(2), shape(1, 8)) == 4
    assert tasks_per_node(task(2, cpus=40), shape(1, 8)) == 1
    assert tasks_per_node(task(2), shape(0, 8)) == 0
    assert tasks_per_node(Resources(1000, GI, 0), shape(1, 0)) == 64


def test_a_plain_gang_goes_to_the_tightest_single_sub_domain_that_holds_it() -> None:
    views = [view("a", "east", shape(2)), view("b", "east", shape(1)), view("c", "west", shape(4))]
    p = plan(plan_plain_gang(task(2), range(4), views))
    assert dict(p.parts) == {"b": (0, 1, 2, 3)}
    assert p.assignments()[3] == ("b", "east", H100)
    assert "in one sub-domain: b (east) has room for 4 tasks" in p.describe()


def test_a_plain_gang_splits_over_the_fewest_sub_domains_largest_first() -> None:
    views = [view("a", "east", shape(1)), view("b", "east", shape(2)), view("c", "west", shape(1))]
    p = plan(plan_plain_gang(task(8), range(3), views))
    assert dict(p.parts) == {"b": (0, 1), "a": (2,)}
    assert "split over 2 sub-domains" in p.describe()


def test_a_gang_that_does_not_fit_says_how_much_room_there_is() -> None:
    views = [view("a", "east", shape(1)), view("b", "west", shape(1))]
    out = plan_plain_gang(task(8), range(4), views)
    assert isinstance(out, Unplaceable) and out.rule == "capacity"
    assert "room for 2 of 4 (a: 1, b: 1)" in out.reason and "must start together" in out.reason
    out = plan_plain_gang(Resources(1000, GI, 2, "A100"), range(1), views)
    assert isinstance(out, Unplaceable) and out.rule == "gpu_model"
    assert "no ready node has A100 GPUs; models ready: H100" in out.reason


def test_region_limits_spill_a_plain_gang_into_another_region() -> None:
    views = [view("a", "east", shape(2)), view("b", "west", shape(2))]

    def east_power(model: str) -> dict[str, GpuLimit]:
        return {"east": GpuLimit(9, "power: 6.3 kW headroom / 700 W")}

    p = plan(plan_plain_gang(task(8), range(3), views, region_limits=east_power))
    assert {sd: len(i) for sd, i in p.parts.items()} == {"b": 2, "a": 1}
    out = plan_plain_gang(task(8), range(4), views, region_limits=east_power)
    assert isinstance(out, Unplaceable) and out.rule == "limit"
    assert "region east ≤ 9 GPUs (power: 6.3 kW headroom / 700 W)" in out.reason


def training(
    tp: int, pp: int, dp: int, *, params: int = 0, t_iter: float = 0.0, loss: float = 0.02
) -> JobSpec:
    return JobSpec(
        command=("train",),
        replicas=pp * dp,
        resources=Resources(4000, 16 * GI, tp, H100),
        retry=RetryPolicy(0, 0),
        parallelism=Parallelism(tp, pp, dp),
        model=ModelSize(params) if params else None,
        iteration_time_s=t_iter,
        max_cross_domain_loss=loss,
    )


def test_a_training_job_maps_dp_ranks_to_its_tasks_stage_by_stage() -> None:
    views = [view("a", "east", shape(1)), view("b", "east", shape(1))]
    spec = training(4, 2, 2, params=10**8, t_iter=1.0)
    p = plan(plan_gang(spec, range(4), views, LinkTable()))
    # One replica = 2 stages x 4 GPUs = one 8-GPU node; replica 0 (tasks 0, 1) and 1 (tasks 2, 3).
    assert sorted(p.parts.values()) == [(0, 1), (2, 3)]
    assert p.loss is not None and "loss model: link 400 Gbit/s, 0 km" in p.describe()
    assert "data-parallel ranks:" in p.describe()
    assert p.task_request("a") == Resources(4000, 16 * GI, 4, H100)
    shape_ = training_shape(spec)
    assert (shape_.cpu_millis_per_gpu, shape_.memory_bytes_per_gpu) == (1000, 4 * GI)


def test_a_training_job_without_a_model_size_stays_in_one_sub_domain() -> None:
    views = [view("a", "east", shape(1)), view("b", "east", shape(1))]
    out = plan_gang(training(8, 1, 2), range(2), views, LinkTable())
    assert isinstance(out, Unplaceable) and out.rule == "loss"
    assert out.reason.startswith("the job declares no model size and iteration time")
    p = plan(plan_gang(training(8, 1, 1), range(1), views, LinkTable()))
    assert len(p.parts) == 1


def test_a_training_split_needs_a_link_within_the_loss_budget() -> None:
    views = [view("a", "east", shape(1)), view("b", "west", shape(1))]
    spec = training(8, 1, 2, params=10**8, t_iter=1.0)
    fast = LinkTable({("east", "west"): Link(400, 100)})
    slow = LinkTable({("east", "west"): Link(10, 1000)})
    p = plan(plan_gang(spec, range(2), views, fast))
    assert set(p.parts) == {"a", "b"} and p.loss is not None and p.loss.loss < 0.02
    out = plan_gang(spec, range(2), views, slow)
    assert isinstance(out, Unplaceable) and out.rule == "loss" and out.loss is not None
    assert "20.2% per iteration" in out.reason


def test_a_plain_gang_spec_is_planned_from_its_first_gang_min_tasks() -> None:
    spec = JobSpec(command=("x",), replicas=6, resources=task(2), gang=GangPolicy(min=4))
    p = plan(plan_gang(spec, range(4), [view("a", "east", shape(1))], LinkTable()))
    assert dict(p.parts) == {"a": (0, 1, 2, 3)}
    spec = dataclasses.replace(spec, exclude_gpu_models=(H100,))
    out = plan_gang(spec, range(4), [view("a", "east", shape(1))], LinkTable())
    assert isinstance(out, Unplaceable) and "excluding H100" in out.reason


def test_consume_takes_what_a_plan_uses_so_a_second_gang_does_not_count_it_again() -> None:
    views = [view("a", "east", shape(1))]
    first = plan(plan_plain_gang(task(2), range(3), views))
    left = consume(views, first)
    assert sum(s.count * tasks_per_node(task(2), s) for s in left[0].shapes) == 1
    second = plan_plain_gang(task(2), range(2), left)
    assert isinstance(second, Unplaceable) and "room for 1 of 2" in second.reason


def test_a_tp_group_needs_its_gpus_inside_one_nvlink_domain() -> None:
    split_node = Shape(H100, 8, 1, Resources(64_000, 512 * GI, 8, H100), free_nvlink_gpus=4)
    spec = training(8, 1, 1)
    out = plan_gang(spec, range(1), [view("a", "east", split_node)], LinkTable())
    assert isinstance(out, Unplaceable) and out.rule == "tp"
    p = plan(plan_gang(training(4, 1, 2), range(2), [view("a", "east", split_node)], LinkTable()))
    assert dict(p.parts) == {"a": (0, 1)}
