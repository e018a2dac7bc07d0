"""Quotas: validation, admission with every matching quota, idempotent accounting, persistence."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domainos.errors import FailedPrecondition, InvalidArgument, NotFound
from domainos.resources import Resources
from master_domain._sched._quota import (
    Admit,
    DefaultPolicy,
    Quota,
    QuotaBook,
    Wait,
    demand_of,
    demand_of_tasks,
    expand,
    format_amount,
)

GIB = 2**30


def _wait(result: Admit | Wait) -> Wait:
    assert isinstance(result, Wait), result
    return result


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "field", "words"),
    [
        ({"gpux": 1}, "quota.limits['gpux']", "unknown resource class 'gpux'"),
        ({"gpu:H100": -1}, "quota.limits['gpu:H100']", "must not be negative, got -1"),
        ({"cpu": 1.5}, "quota.limits['cpu']", "expected a whole number"),
        ({"memory": True}, "quota.limits['memory']", "expected a whole number"),
        ({"gpu:": 1}, "quota.limits['gpu:']", "not a valid GPU model"),
        ({"gpu-share:-bad": 1}, "quota.limits['gpu-share:-bad']", "not a valid GPU model"),
        ({"gpu:H100": 2**60}, "quota.limits['gpu:H100']", "must be at most"),
    ],
)
def test_set_quota_refuses_bad_limits_naming_the_field(
    limits: dict[str, object], field: str, words: str
) -> None:
    book = QuotaBook()
    with pytest.raises(InvalidArgument) as err:
        book.set_quota("acme", limits, region="east")  # type: ignore[arg-type]
    assert err.value.field == field
    assert words in err.value.message
    assert book.quotas() == []
    book.validate()


@pytest.mark.parametrize(
    ("tenant", "region", "subdomain", "field"),
    [
        ("*", "east", "*", "quota.tenant"),
        ("Acme!", "east", "*", "quota.tenant"),
        ("acme", "East", "*", "quota.region"),
        ("acme", "east", "", "quota.subdomain"),
    ],
)
def test_set_quota_refuses_bad_names(tenant: str, region: str, subdomain: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        QuotaBook().set_quota(tenant, {"cpu": 1}, region=region, subdomain=subdomain)
    assert err.value.field == field


def test_unknown_default_policy_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        QuotaBook("maybe")
    assert err.value.field == "default_policy"


def test_remove_quota() -> None:
    book = QuotaBook()
    book.set_quota("acme", {"gpu:H100": 8}, region="east")
    with pytest.raises(NotFound) as err:
        book.remove_quota("acme", "west")
    assert "west/*" in err.value.message
    removed = book.remove_quota("acme", "east")
    assert removed.limits == {"gpu:H100": 8}
    assert book.quotas() == []
    book.validate()


# -- admission -----------------------------------------------------------------------------------


def test_over_quota_waits_with_the_numbers() -> None:
    book = QuotaBook()
    book.set_quota("acme", {"gpu:H100": 64}, region="east")
    book.charge("j1/east-1", "acme", "east", "east-1", {"gpu:H100": 64})
    w = _wait(book.admit("acme", {"gpu:H100": 8}, "east", "east-2"))
    assert w.reason == (
        "tenant acme would use 72 of 64 gpu:H100 in region east (quota east/*: 64 in use, 8 requested)"
    )
    (v,) = w.violations
    assert (v.resource_class, v.used, v.requested, v.limit) == ("gpu:H100", 64, 8, 64)
    assert v.quota is not None and v.quota.name == "east/*"
    # Another region is not limited by the east quota.
    assert isinstance(book.admit("acme", {"gpu:H100": 8}, "west", "west-1"), Admit)
    book.validate()


def test_every_matching_quota_applies_most_specific_first() -> None:
    book = QuotaBook()
    book.set_quota("acme", {"gpu:*": 16}, region="*")
    book.set_quota("acme", {"gpu:H100": 8, "cpu": 64_000}, region="east", subdomain="east-1")
    book.set_quota("acme", {"memory": 100 * GIB}, region="east")
    book.charge("a", "acme", "west", "west-1", {"gpu:A100": 10})
    ok = book.admit("acme", {"gpu:H100": 6, "cpu": 8000}, "east", "east-1")
    assert isinstance(ok, Admit)
    assert [q.name for q in ok.quotas] == ["east/east-1", "east/*", "*/*"]
    w = _wait(book.admit("acme", {"gpu:H100": 9, "memory": 200 * GIB}, "east", "east-1"))
    assert [(x.quota.name if x.quota else None, x.resource_class) for x in w.violations] == [
        ("east/east-1", "gpu:H100"),
        ("east/*", "memory"),
        ("*/*", "gpu:*"),
    ]
    assert w.reason.startswith("tenant acme would use 9 of 8 gpu:H100 in sub-domain east-1 of region east")
    assert "would use 200Gi of 100Gi memory in region east" in w.violations[1].message
    assert (
        "would use 19 of 16 gpu:* in all regions (quota */*: 10 in use, 9 requested)"
        in w.violations[2].message
    )


def test_gpu_any_caps_all_models_together_and_unlisted_classes_are_free() -> None:
    book = QuotaBook()
    book.set_quota("acme", {"gpu:*": 10})
    book.charge("a", "acme", "east", "east-1", {"gpu:H100": 6})
    book.charge("b", "acme", "west", "west-1", {"gpu:A100": 3})
    assert isinstance(book.admit("acme", {"gpu:MI300X": 1, "cpu": 10**9}, "west", "west-2"), Admit)
    w = _wait(book.admit("acme", {"gpu:MI300X": 2}, "west", "west-2"))
    assert "would use 11 of 10 gpu:*" in w.reason
    # A model not yet chosen (gpu:*) is checked against gpu:* limits.
    assert isinstance(_wait(book.admit("acme", {"gpu:*": 2}, "west", "west-2")), Wait)


def test_fractional_shares_are_counted_in_percent_units() -> None:
    book = QuotaBook()
    book.set_quota("acme", {"gpu-share:H100": 150})
    book.charge("a", "acme", "east", "east-1", demand_of(Resources(500, GIB, 0, "H100"), 2, gpu_share=50))
    assert book.used("acme")["gpu-share:H100"] == 100
    w = _wait(book.admit("acme", {"gpu-share:H100": 60}, "east", "east-1"))
    assert w.reason == (
        "tenant acme would use 160% of 150% gpu-share:H100 in all regions "
        "(quota */*: 100% in use, 60% requested)"
    )


def test_cpu_and_memory_reasons_use_human_units() -> None:
    book = QuotaBook()
    book.set_quota("acme", {"cpu": 4000, "memory": 8 * GIB}, region="east", subdomain="east-1")
    w = _wait(book.admit("acme", {"cpu": 4500, "memory": 9 * GIB}, "east", "east-1"))
    assert w.violations[0].message.startswith("tenant acme would use 4.5 of 4 cpu")
    assert w.violations[1].message.startswith("tenant acme would use 9Gi of 8Gi memory")


def test_split_gang_is_checked_as_a_whole() -> None:
    book = QuotaBook()
    book.set_quota("acme", {"gpu:H100": 16}, region="east")
    part = {"gpu:H100": 10}
    assert isinstance(book.admit("acme", part, "east", "east-1"), Admit)
    assert isinstance(book.admit("acme", part, "east", "east-2"), Admit)
    w = _wait(book.admit_split("acme", {("east", "east-1"): part, ("east", "east-2"): part}))
    assert "would use 20 of 16 gpu:H100 in region east" in w.reason


def test_default_unlimited_and_deny() -> None:
    free = QuotaBook()
    assert free.default_policy is DefaultPolicy.UNLIMITED
    assert isinstance(free.admit("acme", {"gpu:H100": 1000}, "east", "east-1"), Admit)

    strict = QuotaBook(DefaultPolicy.DENY)
    w = _wait(strict.admit("acme", {"gpu:H100": 8, "cpu": 1000}, "east", "east-1"))
    assert w.reason == (
        "tenant acme has no quota for cpu in sub-domain east-1 of region east and tenants without one "
        "are denied (default policy: deny); 1 requested"
    )
    assert {v.resource_class for v in w.violations} == {"cpu", "gpu:H100"}
    strict.set_quota("acme", {"gpu:*": 8, "cpu": 1000}, region="east")
    assert isinstance(strict.admit("acme", {"gpu:H100": 8, "cpu": 1000}, "east", "east-1"), Admit)
    # Covered in east only.
    assert isinstance(strict.admit("acme", {"cpu": 1}, "west", "west-1"), Wait)


def test_a_lowered_quota_stops_new_work_in_that_class_only() -> None:
    book = QuotaBook()
    book.set_quota("acme", {"gpu:H100": 8, "cpu": 10_000})
    book.charge("a", "acme", "east", "east-1", {"gpu:H100": 8, "cpu": 1000})
    book.set_quota("acme", {"gpu:H100": 4, "cpu": 10_000})
    assert isinstance(book.admit("acme", {"gpu:H100": 1}, "east", "east-1"), Wait)
    assert isinstance(book.admit("acme", {"cpu": 1000}, "east", "east-1"), Admit)
    assert [u.describe() for u in book.report("acme")] == [
        "acme */* cpu: 1 of 10",
        "acme */* gpu:H100: 8 of 4",
    ]


# -- accounting ----------------------------------------------------------------------------------


def test_charge_and_release_are_idempotent() -> None:
    book = QuotaBook()
    d = {"gpu:H100": 8, "cpu": 8000}
    assert book.charge("j/east-1", "acme", "east", "east-1", d) is True
    assert book.charge("j/east-1", "acme", "east", "east-1", dict(d)) is False
    assert book.used("acme", "east") == {"gpu:H100": 8, "gpu:*": 8, "cpu": 8000}
    with pytest.raises(FailedPrecondition) as err:
        book.charge("j/east-1", "acme", "east", "east-1", {"gpu:H100": 4})
    assert "already charged" in err.value.message
    book.validate()
    assert book.release("j/east-1") is not None
    assert book.release("j/east-1") is None
    assert book.used("acme") == {} and book.tenant_usage("acme") == {}
    book.validate()


def test_charge_refuses_bad_input() -> None:
    book = QuotaBook()
    with pytest.raises(InvalidArgument) as err:
        book.charge("a", "acme", "*", "east-1", {"cpu": 1})
    assert err.value.field == "region"
    with pytest.raises(InvalidArgument) as err:
        book.charge("a", "acme", "east", "east-1", {"cpu": -1})
    assert err.value.field == "demand['cpu']"
    with pytest.raises(InvalidArgument) as err:
        book.charge("", "acme", "east", "east-1", {"cpu": 1})
    assert err.value.field == "allocation_id"
    book.validate()


def test_json_round_trip_and_precise_load_errors() -> None:
    book = QuotaBook(DefaultPolicy.DENY)
    book.set_quota("acme", {"gpu:H100": 64, "cpu": 10**6}, region="east")
    book.set_quota("beta", {"memory": 10 * GIB})
    book.charge("j1/east-1", "acme", "east", "east-1", {"gpu:H100": 8})
    data = json.loads(json.dumps(book.to_dict()))
    again = QuotaBook.from_dict(data)
    again.validate()
    assert again.to_dict() == book.to_dict()
    assert again.default_policy is DefaultPolicy.DENY
    assert again.used("acme", "east") == book.used("acme", "east")

    bad = json.loads(json.dumps(data))
    bad["quotas"][1]["limits"]["gpu:H100"] = -3
    with pytest.raises(InvalidArgument) as err:
        QuotaBook.from_dict(bad)
    assert err.value.field == "quotas[1].limits['gpu:H100']"
    bad = json.loads(json.dumps(data))
    bad["allocations"][0]["demand"] = {"tpu": 1}
    with pytest.raises(InvalidArgument) as err:
        QuotaBook.from_dict(bad)
    assert err.value.field == "allocations[0].demand['tpu']"
    bad = json.loads(json.dumps(data))
    bad["quotas"].append(bad["quotas"][0])
    with pytest.raises(InvalidArgument) as err:
        QuotaBook.from_dict(bad)
    assert err.value.field == "quotas[2]"
    with pytest.raises(InvalidArgument) as err:
        Quota.from_dict({"tenant": "acme", "limit": {}}, "q")
    assert err.value.field == "q.limit"


def test_demand_of_converts_task_resources() -> None:
    assert demand_of(Resources(2000, 4 * GIB, 8, "H100"), 4) == {
        "cpu": 8000,
        "memory": 16 * GIB,
        "gpu:H100": 32,
    }
    assert demand_of(Resources(1000, GIB, 1, ""), 2) == {"cpu": 2000, "memory": 2 * GIB, "gpu:*": 2}
    assert demand_of_tasks([Resources(1000, GIB, 1, "H100"), Resources(500, GIB, 0, "")]) == {
        "cpu": 1500,
        "memory": 2 * GIB,
        "gpu:H100": 1,
    }
    assert expand({"gpu:A": 2, "gpu:B": 1, "gpu-share:A": 30}) == {
        "gpu:A": 2,
        "gpu:B": 1,
        "gpu:*": 3,
        "gpu-share:A": 30,
        "gpu-share:*": 30,
    }


# -- properties ----------------------------------------------------------------------------------

TENANTS = ("acme", "beta")
PLACES = (("east", "east-1"), ("east", "east-2"), ("west", "west-1"))
CLASSES = ("cpu", "gpu:H100", "gpu:A100", "gpu:*", "gpu-share:H100")
SCOPES = (("*", "*"), ("east", "*"), ("west", "*"), ("east", "east-1"), ("*", "east-2"))

vectors = st.dictionaries(st.sampled_from(CLASSES), st.integers(0, 12), max_size=3)
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("quota"),
            st.sampled_from(TENANTS),
            st.sampled_from(SCOPES),
            st.dictionaries(st.sampled_from(CLASSES), st.integers(0, 20), max_size=3),
        ),
        st.tuples(st.just("admit"), st.sampled_from(TENANTS), st.sampled_from(PLACES), vectors),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("unquota"), st.sampled_from(TENANTS), st.sampled_from(SCOPES)),
    ),
    max_size=40,
)


def _oracle_used(
    allocs: Mapping[str, tuple[str, tuple[str, str], dict[str, int]]], tenant: str, q: Quota
) -> dict[str, int]:
    """Usage inside a quota's scope, recomputed from the allocations (independent of the book)."""
    out: dict[str, int] = {}
    for t, (r, s), d in allocs.values():
        if t == tenant and q.region in ("*", r) and q.subdomain in ("*", s):
            for c, n in expand(d).items():
                out[c] = out.get(c, 0) + n
    return out


@settings(max_examples=200, deadline=None)
@given(ops, st.sampled_from(list(DefaultPolicy)))
def test_admit_never_lets_usage_exceed_a_matching_quota(
    script: list[tuple[Any, ...]], policy: DefaultPolicy
) -> None:
    book = QuotaBook(policy)
    allocs: dict[str, tuple[str, tuple[str, str], dict[str, int]]] = {}
    n = 0
    for op in script:
        if op[0] == "quota":
            _, tenant, (r, s), limits = op
            book.set_quota(tenant, limits, r, s)
        elif op[0] == "unquota":
            _, tenant, (r, s) = op
            if book.quota(tenant, r, s) is not None:
                book.remove_quota(tenant, r, s)
        elif op[0] == "release":
            ids = sorted(allocs)
            if ids:
                aid = ids[op[1] % len(ids)]
                assert book.release(aid) is not None
                del allocs[aid]
        else:
            _, tenant, (r, s), demand = op
            result = book.admit(tenant, demand, r, s)
            wanted = {c: v for c, v in demand.items() if v}
            # The oracle: over iff some matching quota would be exceeded in a class asked for.
            over = [
                (q.name, c)
                for q in book.matching(tenant, r, s)
                for c, lim in q.limits.items()
                if expand(wanted).get(c, 0)
                and _oracle_used(allocs, tenant, q).get(c, 0) + expand(wanted)[c] > lim
            ]
            if over:
                assert isinstance(result, Wait)
                assert {(v.quota.name, v.resource_class) for v in result.violations if v.quota} == set(over)
            elif policy is DefaultPolicy.UNLIMITED:
                assert isinstance(result, Admit)
            if isinstance(result, Admit):
                aid = f"a{n}"
                n += 1
                book.charge(aid, tenant, r, s, demand)
                allocs[aid] = (tenant, (r, s), wanted)
                for q in book.matching(tenant, r, s):
                    used = _oracle_used(allocs, tenant, q)
                    for c in expand(wanted):
                        if c in q.limits:
                            assert used.get(c, 0) <= q.limits[c], (q, c, used)
            else:
                for v in result.violations:
                    c = v.resource_class
                    assert v.quota is None or (
                        f"would use {format_amount(c, v.used + v.requested)} of {format_amount(c, v.limit)} {c}"
                        in v.message
                    )
        book.validate()
        for tenant in TENANTS:
            for q in book.quotas(tenant):
                assert book.used(tenant, q.region, q.subdomain) == _oracle_used(allocs, tenant, q)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(TENANTS), st.sampled_from(PLACES), vectors, st.booleans()),
        max_size=25,
    ),
    st.randoms(use_true_random=False),
)
def test_charge_release_round_trip_to_zero(
    charges: list[tuple[str, tuple[str, str], dict[str, int], bool]], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    book = QuotaBook()
    book.set_quota("acme", {"gpu:*": 5}, "east")
    ids = []
    for i, (tenant, (r, s), demand, retry) in enumerate(charges):
        book.charge(f"c{i}", tenant, r, s, demand)
        if retry:  # a retried reservation counts once
            assert book.charge(f"c{i}", tenant, r, s, demand) is False
        ids.append(f"c{i}")
        book.validate()
    snapshot = QuotaBook.from_dict(json.loads(json.dumps(book.to_dict())))
    snapshot.validate()
    for t in TENANTS:
        for r, s in (*PLACES, ("east", "*"), ("*", "*")):
            assert snapshot.used(t, r, s) == book.used(t, r, s)
    rnd.shuffle(ids)
    for aid in ids:
        assert book.release(aid) is not None
        book.release(aid)  # a replayed release changes nothing
        book.validate()
    for t in TENANTS:
        assert book.tenant_usage(t) == {}
        for r, s in (*PLACES, ("east", "*"), ("*", "*")):
            assert book.used(t, r, s) == {}
