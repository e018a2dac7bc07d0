"""Gang-aware preemption: whole gangs of strictly lower, preemptible priority, cheapest first."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domainos.errors import InvalidArgument
from domainos.resources import Resources
from master_domain._sched._fairshare import HIGH, LOW, NORMAL, SYSTEM, FairShareQueue, PriorityClass
from master_domain._sched._preempt import (
    EXACT_LIMIT,
    NoPreemption,
    Preemption,
    PreemptionRequest,
    RequeueGang,
    RunningGang,
    StopGang,
    cheapest,
    free_of,
    plan_preemption,
    shortfall,
)
from master_domain._sched._quota import expand
from master_domain._summary import Summary

NOW = 10_000.0


def gang(
    name: str,
    prio: PriorityClass,
    held: Mapping[str, int],
    started: float = 0.0,
    sd: str = "east-1",
    tasks: int = 2,
    **kw: object,
) -> RunningGang:
    return RunningGang(
        gang_id=name,
        job_id=f"job-{name}",
        tenant="acme",
        priority=prio,
        started_at=started,
        allocations={sd: dict(held)},
        tasks=tuple(range(tasks)),
        **kw,  # type: ignore[arg-type]
    )


def request(
    demand: Mapping[str, int], free: Mapping[str, int] | None = None, prio: PriorityClass = HIGH
) -> PreemptionRequest:
    return PreemptionRequest("urgent", "beta", prio, "east-1", dict(demand), dict(free or {}))


def plan(req: PreemptionRequest, gangs: Sequence[RunningGang]) -> Preemption:
    result = plan_preemption(req, gangs, NOW)
    assert isinstance(result, Preemption), result
    return result


def no(req: PreemptionRequest, gangs: Sequence[RunningGang]) -> NoPreemption:
    result = plan_preemption(req, gangs, NOW)
    assert isinstance(result, NoPreemption), result
    return result


def test_stops_the_gang_that_loses_least_progress_and_requeues_it() -> None:
    old = gang("old", LOW, {"gpu:H100": 8, "cpu": 8000}, started=0)
    new = gang("new", LOW, {"gpu:H100": 8, "cpu": 8000}, started=NOW - 100, tasks=4)
    p = plan(request({"gpu:H100": 8}, {"gpu:H100": 0}), [old, new])
    assert [v.gang.gang_id for v in p.victims] == ["new"]
    assert p.freed == {"gpu:H100": 8, "cpu": 8000}
    assert p.needed == {"gpu:H100": 8}
    assert p.victims[0].gpu_seconds_lost == 800
    assert p.reason == (
        "job urgent (high=1000) needs 8 gpu:H100 more in sub-domain east-1 (8 gpu:H100 asked, nothing free); "
        "stopping 1 whole gang(s) of lower, preemptible priority frees 8 cpu, 8 gpu:H100: "
        "job job-new gang new (low=0, 8 GPUs, 800 GPU-seconds lost)"
    )
    stop, requeue = p.commands
    assert stop == StopGang("job-new", "new", ("east-1",), (0, 1, 2, 3), p.victims[0].reason)
    assert isinstance(requeue, RequeueGang)
    assert (requeue.job_id, requeue.tasks, requeue.submitted_at) == ("job-new", (0, 1, 2, 3), NOW - 100)
    assert "preempted by job urgent (high=1000) in sub-domain east-1" in requeue.reason
    # The requeued gang goes back on the fair-share queue at its old place.
    q = FairShareQueue({"gpu:H100": 8})
    q.push(requeue.pending())
    q.validate()
    back = q.get("new")
    assert back is not None and back.demand == {"gpu:H100": 8, "cpu": 8000}


def test_lower_priority_tier_first_even_if_it_loses_more() -> None:
    low = gang("low", LOW, {"gpu:H100": 8}, started=0)  # 80,000 GPU-s
    normal = gang("normal", NORMAL, {"gpu:H100": 8}, started=NOW - 1)  # 8 GPU-s
    p = plan(request({"gpu:H100": 8}), [normal, low])
    assert [v.gang.gang_id for v in p.victims] == ["low"]
    # Only when the low tier is not enough, the normal one is used too.
    p = plan(request({"gpu:H100": 12}), [normal, low])
    assert sorted(v.gang.gang_id for v in p.victims) == ["low", "normal"]
    assert p.cost[0] == NORMAL.value


def test_checkpoints_bound_the_progress_lost() -> None:
    a = gang("a", LOW, {"gpu:H100": 4}, started=0, checkpointed_at=NOW - 10)  # 40 GPU-s
    b = gang("b", LOW, {"gpu:H100": 4}, started=NOW - 100)  # 400 GPU-s
    p = plan(request({"gpu:H100": 4}), [a, b])
    assert [v.gang.gang_id for v in p.victims] == ["a"]
    assert p.victims[0].gpu_seconds_lost == 40


def test_newest_first_when_no_gpus_are_lost() -> None:
    a = gang("a", LOW, {"cpu": 4000}, started=100)
    b = gang("b", LOW, {"cpu": 4000}, started=200)
    p = plan(request({"cpu": 4000}), [a, b])
    assert [v.gang.gang_id for v in p.victims] == ["b"]


def test_never_equal_higher_or_non_preemptible_and_says_why() -> None:
    gangs = [
        gang("same", HIGH, {"gpu:H100": 8}),
        gang("sys", PriorityClass("batch-sys", 0, False), {"gpu:H100": 8}),
        gang("top", SYSTEM, {"gpu:H100": 8}),
        gang("cpu", LOW, {"cpu": 1000}),
    ]
    n = no(request({"gpu:H100": 8}), gangs)
    assert n.reason == (
        "job urgent (high=1000) needs 8 gpu:H100 more in sub-domain east-1 (8 gpu:H100 asked, nothing free); "
        "no running gang there has a lower, preemptible priority and holds any of it (other gangs there: "
        "2 at priority 1000 or higher, 1 never preempted, 1 holding none of what is needed)"
    )


def test_not_enough_even_with_every_candidate() -> None:
    gangs = [gang("a", LOW, {"gpu:H100": 2}), gang("b", NORMAL, {"gpu:H100": 2})]
    n = no(request({"gpu:H100": 16, "cpu": 1000}, {"gpu:H100": 8, "cpu": 64_000}), gangs)
    assert n.needed == {"gpu:H100": 8}
    assert n.reason.endswith(
        "stopping all 2 running gangs of lower, preemptible priority there would free only "
        "4 of the 8 gpu:H100"
    )


def test_nothing_to_preempt_when_the_demand_fits() -> None:
    n = no(request({"gpu:H100": 4}, {"gpu:H100": 4, "gpu:A100": 2}), [gang("a", LOW, {"gpu:H100": 8})])
    assert n.needed == {}
    assert "nothing to preempt" in n.reason


def test_a_gang_spread_over_sub_domains_is_stopped_everywhere() -> None:
    spread = RunningGang(
        "dp",
        "job-dp",
        "acme",
        LOW,
        NOW - 10,
        {"east-1": {"gpu:H100": 4}, "west-1": {"gpu:H100": 12}},
        tasks=(0, 1, 2, 3),
    )
    local = gang("local", LOW, {"gpu:H100": 4}, started=NOW - 30)  # 120 GPU-s < dp's 160
    p = plan(request({"gpu:H100": 4}), [spread, local])
    assert [v.gang.gang_id for v in p.victims] == ["local"]
    p = plan(request({"gpu:H100": 8}), [spread, local])
    assert {v.gang.gang_id for v in p.victims} == {"dp", "local"}
    stop = next(c for c in p.commands if isinstance(c, StopGang) and c.gang_id == "dp")
    assert stop.subdomains == ("east-1", "west-1")
    assert p.freed == {"gpu:H100": 8}  # only what is freed here counts for the need


def test_any_model_need_and_fractional_shares() -> None:
    gangs = [gang("a", LOW, {"gpu:A100": 2}, started=NOW - 1), gang("s", LOW, {"gpu-share:H100": 150})]
    p = plan(request({"gpu:*": 2}), gangs)
    assert [v.gang.gang_id for v in p.victims] == ["a"]
    assert shortfall({"gpu:H100": 8}, {"gpu:H100": 2, "gpu:A100": 3}) == {"gpu:H100": 6}
    assert gangs[1].gpus() == 1.5


def test_cheapest_plan_over_sub_domains() -> None:
    r1 = request({"gpu:H100": 4})
    r2 = PreemptionRequest("urgent", "beta", HIGH, "west-1", {"gpu:H100": 4}, {})
    p1 = plan_preemption(r1, [gang("a", NORMAL, {"gpu:H100": 4})], NOW)
    p2 = plan_preemption(r2, [gang("b", LOW, {"gpu:H100": 4}, sd="west-1")], NOW)
    p3 = plan_preemption(request({"gpu:H100": 4}), [], NOW)
    best = cheapest([p1, p2, p3])
    assert best is not None and best.subdomain == "west-1"
    assert cheapest([p3]) is None


def test_free_of_a_summary() -> None:
    s = Summary(free=Resources(4000, 2**30, 6, ""), free_gpus_by_model={"H100": 4, "A100": 2})
    assert free_of(s) == {"cpu": 4000, "memory": 2**30, "gpu:H100": 4, "gpu:A100": 2}
    assert free_of(Summary(free=Resources(0, 0, 2, "H100"))) == {"gpu:H100": 2}
    p = plan(request({"gpu:H100": 6}, free_of(s)), [gang("a", LOW, {"gpu:H100": 2})])
    assert p.needed == {"gpu:H100": 2}


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_preemption(request({"gpu:H100": -1}), [], NOW)
    assert err.value.field == "demand['gpu:H100']"
    with pytest.raises(InvalidArgument) as err:
        plan_preemption(request({"gpu:H100": 1}), [], float("inf"))
    assert err.value.field == "now"


def test_many_candidates_use_the_greedy_pass_and_stay_minimal() -> None:
    gangs = [
        gang(f"g{i:02d}", LOW, {"gpu:H100": 1 + i % 3, "cpu": 1000}, started=NOW - 7 * i) for i in range(40)
    ]
    p = plan(request({"gpu:H100": 9, "cpu": 3000}), gangs)
    freed = expand(p.freed)
    assert freed["gpu:H100"] >= 9 and freed["cpu"] >= 3000
    for v in p.victims:
        rest = expand({"gpu:H100": freed["gpu:H100"] - v.freed["gpu:H100"], "cpu": freed["cpu"] - 1000})
        assert rest["gpu:H100"] < 9 or rest["cpu"] < 3000, f"{v.gang.gang_id} is not needed"


# -- properties ----------------------------------------------------------------------------------

PRIOS = (LOW, LOW, NORMAL, NORMAL, PriorityClass("normal-np", 100, False), HIGH, SYSTEM)
CLASSES = ("cpu", "gpu:H100", "gpu:A100", "gpu-share:H100")
vec = st.dictionaries(st.sampled_from(CLASSES), st.integers(0, 8), max_size=3)
held = st.dictionaries(st.sampled_from(CLASSES), st.integers(1, 4), min_size=1, max_size=3)
demands = st.dictionaries(st.sampled_from(CLASSES), st.integers(1, 6), min_size=1, max_size=2)
# Many gangs that all hold what is needed: the lowest tier often has more than EXACT_LIMIT.
big_demands = st.dictionaries(st.sampled_from(("cpu", "gpu:H100")), st.integers(10, 40), min_size=1)
big_held = st.dictionaries(st.sampled_from(("cpu", "gpu:H100", "gpu:A100")), st.integers(1, 4), min_size=1)


def gang_lists(
    min_size: int,
    max_size: int,
    prios: Sequence[PriorityClass] = PRIOS,
    holds: st.SearchStrategy[dict[str, int]] = held,
) -> st.SearchStrategy[list[RunningGang]]:
    one = st.tuples(
        holds,
        st.none() | holds,
        st.sampled_from(prios),
        st.integers(0, int(NOW) + 5),
        st.none() | st.integers(0, int(NOW)),
        st.integers(1, 4),
        st.integers(0, 9).map(lambda x: x == 0),  # now and then a gang of the requesting job
    )

    def build(rows: list[tuple[Any, ...]]) -> list[RunningGang]:
        out = []
        for i, (here, there, prio, started, ckpt, ntasks, own) in enumerate(rows):
            allocations = {"east-1": here} if there is None else {"east-1": here, "west-1": there}
            out.append(
                RunningGang(
                    f"g{i}",
                    "urgent" if own else f"job{i}",
                    "acme",
                    prio,
                    float(started),
                    allocations,
                    tuple(range(ntasks)),
                    None if ckpt is None else float(ckpt),
                )
            )
        return out

    return st.lists(one, min_size=min_size, max_size=max_size).map(build)


def _covers(freed: Mapping[str, int], need: Mapping[str, int]) -> bool:
    x = expand(freed)
    return all(x.get(c, 0) >= n for c, n in need.items())


def _check_plan(req: PreemptionRequest, gangs: list[RunningGang], result: Preemption | NoPreemption) -> None:
    eligible = [
        g
        for g in gangs
        if g.priority.preemptible
        and g.priority.value < req.priority.value
        and g.job_id != req.job_id
        and any(g.held("east-1").values())
    ]
    need = shortfall(req.demand, req.free)
    if isinstance(result, NoPreemption):
        total: dict[str, int] = {}
        for g in eligible:
            for c, n in g.held("east-1").items():
                total[c] = total.get(c, 0) + n
        assert not need or not _covers(total, need), "a cover existed"
        return
    ids = [v.gang.gang_id for v in result.victims]
    assert len(ids) == len(set(ids)) and ids
    freed: dict[str, int] = {}
    for v in result.victims:
        g = v.gang
        assert g.priority.preemptible and g.priority.value < req.priority.value and g.job_id != req.job_id
        assert g in gangs and v.freed == g.held("east-1")  # a whole gang, never a part
        for c, n in g.held("east-1").items():
            freed[c] = freed.get(c, 0) + n
    assert {c: n for c, n in freed.items() if n} == {c: n for c, n in result.freed.items() if n}
    # Freed plus free covers the demand in every class.
    have = expand({c: freed.get(c, 0) + req.free.get(c, 0) for c in set(freed) | set(req.free)})
    assert all(have.get(c, 0) >= n for c, n in expand(req.demand).items())
    # Irreducible: every victim is needed.
    for v in result.victims:
        rest = {c: n - v.freed.get(c, 0) for c, n in freed.items()}
        assert not _covers(rest, need), f"victim {v.gang.gang_id} is not needed"
    # Stops and requeues name exactly the victims, stops first.
    kinds = [type(c) for c in result.commands]
    assert kinds == [StopGang] * len(ids) + [RequeueGang] * len(ids)
    assert [c.gang_id for c in result.commands] == ids + ids
    for cmd in result.commands:
        g = next(v.gang for v in result.victims if v.gang.gang_id == cmd.gang_id)
        assert cmd.tasks == g.tasks
    return None


def _approx(cost: tuple[int, float, float, int]) -> tuple[int, float, float, int]:
    return (cost[0], round(cost[1], 3), round(cost[2], 3), cost[3])


def requests(demand: st.SearchStrategy[dict[str, int]]) -> st.SearchStrategy[PreemptionRequest]:
    return st.builds(
        lambda demand, free, prio: PreemptionRequest("urgent", "beta", prio, "east-1", demand, free),
        demand,
        st.dictionaries(st.sampled_from(CLASSES), st.integers(0, 3), max_size=2),
        st.sampled_from((NORMAL, HIGH, HIGH, SYSTEM)),
    )


@settings(max_examples=200, deadline=None)
@given(requests(demands), gang_lists(2, 8))
def test_small_plans_are_valid_and_cheapest(req: PreemptionRequest, gangs: list[RunningGang]) -> None:
    result = plan_preemption(req, gangs, NOW)
    _check_plan(req, gangs, result)
    if isinstance(result, Preemption):
        # Brute force over every subset of the eligible gangs.
        need = shortfall(req.demand, req.free)
        eligible = [
            g
            for g in gangs
            if g.priority.preemptible
            and g.priority.value < req.priority.value
            and g.job_id != req.job_id
            and any(g.held("east-1").values())
        ]
        best = None
        for k in range(1, len(eligible) + 1):
            for subset in itertools.combinations(eligible, k):
                freed: dict[str, int] = {}
                for g in subset:
                    for c, n in g.held("east-1").items():
                        freed[c] = freed.get(c, 0) + n
                if _covers(freed, need):
                    cost = _approx(
                        (
                            max(g.priority.value for g in subset),
                            sum(g.progress_lost(NOW) for g in subset),
                            sum(g.age(NOW) for g in subset),
                            len(subset),
                        )
                    )
                    best = cost if best is None or cost < best else best
        assert best is not None and _approx(result.cost) == best


@settings(max_examples=200, deadline=None)
@given(
    requests(big_demands),
    gang_lists(EXACT_LIMIT + 1, 3 * EXACT_LIMIT, (LOW, LOW, LOW, NORMAL, SYSTEM), big_held),
)
def test_large_plans_are_valid(req: PreemptionRequest, gangs: list[RunningGang]) -> None:
    _check_plan(req, gangs, plan_preemption(req, gangs, NOW))
