"""Fair share: priority classes first, weighted DRF between tenants, FIFO among equals."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domainos.errors import AlreadyExists, InvalidArgument
from domainos.resources import Resources
from master_domain._sched._fairshare import (
    HIGH,
    LOW,
    NORMAL,
    SYSTEM,
    FairShareQueue,
    PendingJob,
    PriorityClass,
    PriorityClasses,
    capacity_from_summaries,
    dominant_share,
)
from master_domain._summary import Summary

GIB = 2**30
CAP = {"cpu": 100_000, "memory": 1000 * GIB, "gpu:H100": 64, "gpu:A100": 32}


def job(job_id: str, tenant: str, prio: PriorityClass = NORMAL, at: float = 0.0) -> PendingJob:
    return PendingJob(job_id, tenant, prio, at)


def ids(q: FairShareQueue) -> list[str]:
    return [j.job_id for j in q.order()]


# -- priority classes ----------------------------------------------------------------------------


def test_default_priority_classes() -> None:
    pcs = PriorityClasses()
    assert pcs.names() == ["system", "high", "normal", "low"]
    assert pcs.get(None) == NORMAL and pcs.get("") == NORMAL
    assert pcs.get("low") == PriorityClass("low", 0, True)
    assert pcs.get("system").preemptible is False
    assert [pc.preemptible for pc in (LOW, NORMAL, HIGH)] == [True, True, True]
    with pytest.raises(InvalidArgument) as err:
        pcs.get("urgent", "spec.priority")
    assert err.value.field == "spec.priority"
    assert "system=10000, never preempted, high=1000, normal=100, low=0" in err.value.message


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([{"name": "a", "value": "1"}], "priority_classes[0].value"),
        ([{"name": "a", "value": 1}, {"name": "a", "value": 2}], "priority_classes[1].name"),
        ([{"name": "A b", "value": 1}], "priority_classes[0].name"),
        ([{"name": "a", "value": 1, "preemptable": True}], "priority_classes[0].preemptable"),
        ([{"name": "a", "value": 10**12}], "priority_classes[0].value"),
        ([{"name": "a", "value": 1, "preemptible": "no"}], "priority_classes[0].preemptible"),
        ([{"name": "a", "value": 1}], "default_priority"),
    ],
)
def test_priority_classes_from_config_are_validated(data: list[dict[str, object]], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        PriorityClasses.from_list(data)
    assert err.value.field == field


def test_priority_classes_round_trip() -> None:
    pcs = PriorityClasses.from_list([*PriorityClasses().to_list(), {"name": "batch", "value": -5}])
    assert pcs.get("batch") == PriorityClass("batch", -5, True)
    assert pcs.names()[-1] == "batch"


# -- shares --------------------------------------------------------------------------------------


def test_dominant_share_picks_the_largest_resource_share() -> None:
    assert dominant_share({}, CAP) == (0.0, "")
    assert dominant_share({"cpu": 50_000, "gpu:H100": 16}, CAP) == (0.5, "cpu")
    assert dominant_share({"cpu": 1000, "gpu:H100": 48}, CAP) == (0.75, "gpu:H100")
    # Fractional shares count as hundredths of a GPU of their model.
    assert dominant_share({"gpu:A100": 8, "gpu-share:A100": 800}, CAP) == (0.5, "gpu:A100")
    # GPUs of unknown model count against all GPUs; resources without capacity are left out.
    assert dominant_share({"gpu:*": 48, "gpu:MI300X": 4}, CAP) == (52 / 96, "gpu:*")


def test_capacity_from_summaries() -> None:
    a = Summary(capacity=Resources(64_000, 512 * GIB, 16, ""), gpus_by_model={"H100": 16})
    b = Summary(capacity=Resources(32_000, 256 * GIB, 8, ""), gpus_by_model={"H100": 4, "A100": 4})
    assert capacity_from_summaries([a, b]) == {
        "cpu": 96_000,
        "memory": 768 * GIB,
        "gpu:H100": 20,
        "gpu:A100": 4,
    }


# -- order ---------------------------------------------------------------------------------------


def test_priority_first_then_share_then_fifo() -> None:
    q = FairShareQueue(CAP)
    q.set_usage("acme", {"gpu:H100": 32})  # share 0.5
    q.set_usage("beta", {"cpu": 10_000})  # share 0.1
    q.push(job("a1", "acme", at=1))
    q.push(job("b1", "beta", at=2))
    q.push(job("a2", "acme", at=0.5))
    q.push(job("c1", "gamma", LOW, at=0))
    q.push(job("s1", "acme", SYSTEM, at=9))
    q.push(job("b2", "beta", HIGH, at=9))
    q.validate()
    assert ids(q) == ["s1", "b2", "b1", "a2", "a1", "c1"]
    first = q.peek()
    assert first is not None and first.job_id == "s1"
    # acme releases its GPUs: its share drops below beta's and its normal jobs move up.
    q.set_usage("acme", {})
    q.validate()
    assert ids(q) == ["s1", "b2", "a2", "a1", "b1", "c1"]
    # Equal shares: FIFO by submission time across tenants.
    q.set_usage("beta", {})
    q.validate()
    assert ids(q) == ["s1", "b2", "a2", "a1", "b1", "c1"]
    q.push(job("b3", "beta", at=0.7))
    assert ids(q) == ["s1", "b2", "a2", "b3", "a1", "b1", "c1"]
    q.validate()


def test_weights_scale_entitlement() -> None:
    q = FairShareQueue(CAP, weights={"acme": 4})
    q.set_usage("acme", {"gpu:H100": 32})  # 0.5 / 4 = 0.125
    q.set_usage("beta", {"gpu:H100": 16})  # 0.25
    q.push(job("b", "beta", at=0))
    q.push(job("a", "acme", at=1))
    assert ids(q) == ["a", "b"]
    q.set_weight("acme", 1)
    assert ids(q) == ["b", "a"]
    assert "weighted share 0.5" in q.describe_tenant("acme")
    with pytest.raises(InvalidArgument) as err:
        q.set_weight("acme", 0)
    assert err.value.field == "weight"
    q.validate()


def test_capacity_change_rekeys() -> None:
    q = FairShareQueue({"gpu:H100": 10, "cpu": 10_000})
    q.set_usage("acme", {"gpu:H100": 5})  # 0.5
    q.set_usage("beta", {"cpu": 4_000})  # 0.4
    q.push(job("a", "acme"))
    q.push(job("b", "beta"))
    assert ids(q) == ["b", "a"]
    q.set_capacity({"gpu:H100": 20, "cpu": 10_000})  # acme 0.25
    q.validate()
    assert ids(q) == ["a", "b"]


def test_capacity_may_exceed_the_amount_bound() -> None:
    # 10,000 nodes of 2 TiB hold 2.2e16 bytes, over MAX_AMOUNT (2**53): the master's capacity
    # comes from summaries, and refusing it stopped every scheduling pass (seen at 10,000 nodes).
    memory = 10_000 * 2 * 2**40
    q = FairShareQueue({"memory": memory})
    q.set_capacity({"memory": 2 * memory, "gpu:H100": 80_000})
    q.set_usage("acme", {"memory": memory // 4})
    q.validate()
    assert q.share("acme") == pytest.approx(0.125)
    with pytest.raises(InvalidArgument, match="capacity"):
        q.set_capacity({"memory": -1})


def test_push_remove_pop_and_errors() -> None:
    q = FairShareQueue(CAP)
    q.push(job("a", "acme"))
    with pytest.raises(AlreadyExists):
        q.push(job("a", "beta"))
    with pytest.raises(InvalidArgument) as err:
        q.push(PendingJob("x", "acme", NORMAL, float("nan")))
    assert err.value.field == "submitted_at"
    with pytest.raises(InvalidArgument) as err:
        q.push(job("y", "Not A Tenant"))
    assert err.value.field == "tenant"
    q.push(job("b", "acme", at=1))
    assert q.remove("zzz") is None
    assert q.remove("a") is not None
    assert "a" not in q and len(q) == 1
    popped = q.pop()
    assert popped is not None and popped.job_id == "b"
    assert q.pop() is None and q.peek() is None and list(q.order()) == []
    q.validate()


def test_iteration_stops_after_a_change() -> None:
    q = FairShareQueue(CAP)
    for i in range(3):
        q.push(job(f"j{i}", "acme", at=i))
    it = q.order()
    assert next(it).job_id == "j0"
    q.remove("j2")
    with pytest.raises(RuntimeError):
        next(it)


def test_explain_gives_the_numbers() -> None:
    q = FairShareQueue(CAP)
    q.set_usage("acme", {"gpu:H100": 16})
    q.push(job("b", "beta"))
    q.push(job("a", "acme"))
    text = q.explain("a")
    assert text == (
        "job a is pending with 1 jobs ahead of it: tenant acme: dominant share 0.25 of gpu:H100, "
        "weight 1, weighted share 0.25; priority normal=100"
    )


# -- properties ----------------------------------------------------------------------------------

TENANTS = ("acme", "beta", "gamma", "delta")
PRIOS = (LOW, NORMAL, HIGH, SYSTEM)
usage = st.dictionaries(
    st.sampled_from(("cpu", "gpu:H100", "gpu:A100", "gpu-share:H100")), st.integers(0, 64)
)
step = st.one_of(
    st.tuples(st.just("push"), st.sampled_from(TENANTS), st.sampled_from(PRIOS), st.integers(0, 5)),
    st.tuples(st.just("remove"), st.integers(0, 100)),
    st.tuples(st.just("pop")),
    st.tuples(st.just("usage"), st.sampled_from(TENANTS), usage),
    st.tuples(st.just("weight"), st.sampled_from(TENANTS), st.sampled_from((0.5, 1.0, 2.0, 3.0))),
    st.tuples(st.just("capacity"), st.integers(1, 4)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(step, max_size=60))
def test_order_is_the_sorted_key_at_every_step(steps: list[tuple[Any, ...]]) -> None:
    q = FairShareQueue(CAP)
    weights = dict.fromkeys(TENANTS, 1.0)
    usages: dict[str, dict[str, int]] = {}
    cap = dict(CAP)
    arrival: list[str] = []
    n = 0
    for s in steps:
        if s[0] == "push":
            q.push(job(f"j{n}", s[1], s[2], at=s[3]))
            arrival.append(f"j{n}")
            n += 1
        elif s[0] == "remove":
            live = [j for j in arrival if j in q]
            if live:
                assert q.remove(live[s[1] % len(live)]) is not None
        elif s[0] == "pop":
            first = q.peek()
            assert q.pop() == first
        elif s[0] == "usage":
            q.set_usage(s[1], s[2])
            usages[s[1]] = s[2]
        elif s[0] == "weight":
            q.set_weight(s[1], s[2])
            weights[s[1]] = s[2]
        else:
            cap = {c: v * s[1] for c, v in CAP.items()}
            q.set_capacity(cap)
        q.validate()

        def share(t: str, cap: dict[str, int] = cap) -> float:
            return dominant_share(usages.get(t, {}), cap)[0] / weights[t]

        pending = [q.get(j) for j in arrival if j in q]
        expected = sorted(
            (p for p in pending if p is not None),
            key=lambda p: (-p.priority.value, share(p.tenant), p.submitted_at, arrival.index(p.job_id)),
        )
        got = list(q.order())
        assert [p.job_id for p in got] == [p.job_id for p in expected]
        assert q.peek() == (got[0] if got else None)
        # Priority classes strictly first; at equal priority and weight, more usage never first.
        for a, b in itertools.pairwise(got):
            assert a.priority.value >= b.priority.value
            if a.priority.value == b.priority.value and weights[a.tenant] == weights[b.tenant]:
                assert share(a.tenant) <= share(b.tenant)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from(("cpu", "gpu:H100", "gpu:A100")), st.integers(1, 8), min_size=1),
            st.sampled_from((1.0, 2.0, 3.0)),
        ),
        min_size=2,
        max_size=4,
    ),
    st.integers(5, 40),
)
def test_shares_converge_under_progressive_filling(
    tenants: list[tuple[dict[str, int], float]], placements: int
) -> None:
    """Every tenant has a backlog of identical jobs; placing in queue order keeps weighted shares
    within one job of each other: share(a) <= share(b) + job_share(a) for every pair."""
    cap = {"cpu": 1000, "gpu:H100": 200, "gpu:A100": 100}
    q = FairShareQueue(cap)
    names = [f"t{i}" for i in range(len(tenants))]
    job_share = {}
    for name, (demand, weight) in zip(names, tenants, strict=True):
        q.set_weight(name, weight)
        job_share[name] = dominant_share(demand, cap)[0] / weight
        for k in range(placements):
            q.push(PendingJob(f"{name}-{k}", name, NORMAL, float(k), demand))
    q.validate()
    for _ in range(placements):
        first = q.pop()
        assert first is not None
        # The job popped belongs to a tenant with the smallest weighted share.
        assert q.share(first.tenant) == min(q.share(t) for t in names)
        q.add_usage(first.tenant, first.demand)
        q.validate()
        for a in names:
            for b in names:
                assert q.share(a) <= q.share(b) + job_share[a] + 1e-9, (a, b)


def test_heavy_churn_with_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stale heap entries are dropped (compaction at every chance) without changing the order."""
    import random

    from master_domain._sched import _fairshare

    monkeypatch.setattr(_fairshare, "_COMPACT_SLACK", 0)
    rnd = random.Random(7)
    q = FairShareQueue(CAP)
    usages: dict[str, dict[str, int]] = {}
    arrival: dict[str, int] = {}
    for i in range(1500):
        r = rnd.random()
        if r < 0.45:
            t = rnd.choice(TENANTS)
            q.push(job(f"j{i}", t, rnd.choice(PRIOS), at=rnd.randrange(20)))
            arrival[f"j{i}"] = i
        elif r < 0.75 and len(q):
            q.remove(rnd.choice([j for j in arrival if j in q]))
        elif r < 0.85:
            q.pop()
        else:
            t = rnd.choice(TENANTS)
            usages[t] = {"gpu:H100": rnd.randrange(64), "cpu": rnd.randrange(100_000)}
            q.set_usage(t, usages[t])
        if i % 25 == 0:
            q.validate()
            pending = [p for p in (q.get(j) for j in arrival) if p is not None]
            expected = sorted(
                pending,
                key=lambda p: (
                    -p.priority.value,
                    dominant_share(usages.get(p.tenant, {}), CAP)[0],
                    p.submitted_at,
                    arrival[p.job_id],
                ),
            )
            assert ids(q) == [p.job_id for p in expected]
