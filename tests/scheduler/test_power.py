"""Region power budgets: draw estimates, admission with the numbers, spill and split across regions.

The scenario test is the problem that motivates the system: a data-parallel job that no single
region can power goes to two.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domainos.errors import InvalidArgument, NotFound
from domainos.resources import Resources
from domainos.topology import Region
from master_domain._sched._power import (
    DEFAULT_TDP_W,
    UNKNOWN_GPU_W,
    Fits,
    Over,
    PowerBook,
    PowerModel,
    RegionPower,
    Split,
    format_kw,
)

H100 = "H100-SXM-80GB"


def book(**budgets_kw: float) -> PowerBook:
    b = PowerBook([RegionPower(r, kw) for r, kw in budgets_kw.items()])
    b.validate()
    return b


# -- the draw model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "watts"),
    [
        ("H100-SXM-80GB", 700),
        ("NVIDIA H100 80GB HBM3", 700),
        ("H100-PCIe-80GB", 350),
        ("NVIDIA A100 80GB PCIe", 250),
        ("A100-SXM4-40GB", 400),
        ("NVIDIA A10G", 150),
        ("L40S", 350),
        ("NVIDIA L4", 72),
        ("H200", 700),
        ("AMD Instinct MI300X", 750),
        ("some-future-accelerator", UNKNOWN_GPU_W),
        ("", UNKNOWN_GPU_W),
    ],
)
def test_tdp_by_model_with_sane_defaults(model: str, watts: int) -> None:
    assert PowerModel().tdp(model) == watts


def test_draw_is_tdp_times_count_plus_an_optional_node_baseline() -> None:
    m = PowerModel()
    assert m.draw_w({H100: 8, "A100": 4}) == 8 * 700 + 4 * 400
    assert m.task_w(Resources(8000, 0, 8, H100)) == 5600
    assert m.task_w(Resources(8000, 0, 0)) == 0
    with_host = PowerModel(node_baseline_w=1500)
    assert with_host.draw_w({H100: 8}, nodes=1) == 5600 + 1500
    assert with_host.task_w(Resources(gpus=2, gpu_model=H100), nodes=0.25) == 1400 + 375
    custom = PowerModel(tdp_w={**DEFAULT_TDP_W, "H100": 600}, unknown_gpu_w=300)
    assert custom.tdp(H100) == 600 and custom.tdp("X1") == 300
    with pytest.raises(InvalidArgument):
        PowerModel(tdp_w={"H100": -1})
    with pytest.raises(InvalidArgument):
        m.draw_w({H100: -1})


def test_region_budgets_from_the_topology_file() -> None:
    assert RegionPower.from_topology(Region("east", power_budget_kw=2000)).budget_w == 2_000_000
    assert math.isinf(RegionPower.from_topology(Region("west")).budget_kw)  # 0 = not declared: no cap
    with pytest.raises(InvalidArgument):
        RegionPower("east", -1)
    with pytest.raises(InvalidArgument):
        RegionPower("east", math.nan)


# -- admission --------------------------------------------------------------------------------


def test_check_says_over_with_the_numbers() -> None:
    b = book(east=2000)
    assert isinstance(b.charge("running", "east", 1_960_000), Fits)
    over = b.check("east", 448_000)
    assert isinstance(over, Over)
    assert over.reason == "region east: 1,960 kW in use + 448 kW asked > budget 2,000 kW"
    assert (over.in_use_w, over.added_w, over.budget_w) == (1_960_000, 448_000, 2_000_000)
    fits = b.check("east", 40_000)  # exactly at the budget fits
    assert isinstance(fits, Fits) and fits.headroom_w == 0
    assert isinstance(b.check("south", 1), Over)
    assert b.check("south", 1).reason == "region south has no power budget declared"  # type: ignore[union-attr]


def test_measured_draw_counts_when_larger() -> None:
    b = book(east=2000)
    b.charge("a", "east", 1_000_000)
    b.observe("east", "east-1", 1_500_000)
    b.observe("east", "east-2", 400_000)
    assert b.in_use_w("east") == 1_900_000
    over = b.check("east", 200_000)
    assert isinstance(over, Over)
    assert over.reason == (
        "region east: 1,900 kW in use + 200 kW asked > budget 2,000 kW "
        "(measured 1,900 kW; placements charge 1,000 kW)"
    )
    b.observe("east", "east-1", 500_000)  # a newer summary replaces the last one
    assert b.in_use_w("east") == 1_000_000  # the charges are larger now
    b.forget("east", "east-2")
    assert b.measured_w("east") == 500_000
    assert (
        b.describe("east") == "region east: 1,000 kW in use (charged 1,000 kW, measured 500 kW) of 2,000 kW"
    )
    b.validate()


def test_a_placement_made_between_two_summaries_is_never_hidden_by_the_meters() -> None:
    b = book(east=2000)
    b.observe("east", "east-1", 1_900_000)
    assert isinstance(b.charge("new", "east", 100_000, subdomain="east-1"), Fits)
    # The summaries have not seen it yet: it counts on top of the measured draw.
    assert b.in_use_w("east") == 2_000_000 and b.unmetered_w("east") == 100_000
    over = b.check("east", 1)
    assert isinstance(over, Over)
    assert over.reason == (
        "region east: 2,000 kW in use + 0 kW asked > budget 2,000 kW "
        "(measured 1,900 kW + 100 kW placed since the last summaries; placements charge 100 kW)"
    )
    b.observe("east", "east-2", 0)  # another sub-domain's summary does not meter it
    assert b.unmetered_w("east") == 100_000
    b.observe("east", "east-1", 1_900_000)  # may predate the tasks' start
    assert b.unmetered_w("east") == 100_000
    b.observe("east", "east-1", 2_000_000)  # now the meters show it
    assert b.unmetered_w("east") == 0 and b.in_use_w("east") == 2_000_000
    assert (
        b.describe("east") == "region east: 2,000 kW in use (charged 100 kW, measured 2,000 kW) of 2,000 kW"
    )
    b.validate()
    # Releasing a metered charge frees nothing the meters still show, until the next summary.
    b.release("new")
    assert b.in_use_w("east") == 2_000_000
    b.observe("east", "east-1", 1_900_000)
    assert b.headroom_w("east") == 100_000
    b.validate()


def test_charge_and_release_are_idempotent_and_release_restores() -> None:
    b = book(east=100)
    before = b.check("east", 60_000)
    assert isinstance(b.charge("j1/1/east-1", "east", 50_000), Fits)
    assert isinstance(b.charge("j1/1/east-1", "east", 50_000), Fits)  # a repeat
    assert b.charged_w("east") == 50_000
    assert isinstance(b.check("east", 60_000), Over)
    assert isinstance(b.charge("j2", "east", 60_000), Over)  # refused: nothing charged
    assert b.charge_of("j2") is None
    assert isinstance(b.charge("j1/1/east-1", "east", 90_000), Fits)  # replaced, not added
    assert b.charged_w("east") == 90_000
    assert b.release("j1/1/east-1") == 90_000
    assert b.release("j1/1/east-1") == 0
    assert b.check("east", 60_000) == before
    b.validate()
    with pytest.raises(NotFound):
        b.charge("x", "south", 1)


def test_forced_charges_and_lowered_budgets_stop_new_admissions_only() -> None:
    b = book(east=100)
    b.charge("a", "east", 80_000)
    # A placement that already runs (a master restart) is recorded whatever the budget says.
    assert isinstance(b.charge("b", "east", 40_000, force=True), Fits)
    assert b.charged_w("east") == 120_000 and b.headroom_w("east") == 0
    assert isinstance(b.check("east", 1), Over)
    b.validate()
    b.release("b")
    b.set_budget("east", 50)
    assert isinstance(b.check("east", 1), Over)
    b.validate()
    b.release("a")
    assert isinstance(b.check("east", 50_000), Fits)
    b.set_budget("north", math.inf)
    assert isinstance(b.check("north", 10**12), Fits)
    b.validate()


# -- spill and split --------------------------------------------------------------------------


def test_spill_goes_to_the_first_region_with_room() -> None:
    b = book(east=2000, west=600, north=1000)
    b.charge("base-east", "east", 1_960_000)
    b.charge("base-west", "west", 100_000)
    assert b.spill(448_000, ["east", "west", "north"]) == "west"
    assert b.spill(448_000, ["east", "north", "west"]) == "north"
    assert b.spill(5_000_000, ["east", "west", "north"]) is None
    assert b.why_not(5_000_000, ["east", "west"]) == [
        "region east: 1,960 kW in use + 5,000 kW asked > budget 2,000 kW",
        "region west: 100 kW in use + 5,000 kW asked > budget 600 kW",
    ]
    assert b.why_not(1, ["east"]) == []


def test_scenario_a_job_that_cannot_fit_one_regions_power_goes_to_two() -> None:
    # East and west are both nearly full. A 16-replica DP job, each replica one HGX node of
    # 8 H100 (5.6 kW of GPUs + a 1.5 kW host), needs 113.6 kW: neither region alone has that.
    model = PowerModel(node_baseline_w=1500)
    b = PowerBook([RegionPower("east", 2000), RegionPower("west", 1000)], model)
    b.charge("other-east", "east", 1_950_000)  # 50 kW headroom: 7 replicas
    b.observe("west", "west-1", 920_000)  # measured: 80 kW headroom: 11 replicas
    replica_w = model.draw_w({H100: 8}, nodes=1)
    assert replica_w == 7100
    job_w = 16 * replica_w
    assert b.spill(job_w, ["east", "west"]) is None
    assert b.why_not(job_w, ["east", "west"]) == [
        "region east: 1,950 kW in use + 113.6 kW asked > budget 2,000 kW",
        "region west: 920 kW in use + 113.6 kW asked > budget 1,000 kW "
        "(measured 920 kW; placements charge 0 kW)",
    ]
    split = b.split_by_power(replica_w, 16, ["east", "west"])
    assert isinstance(split, Split)
    assert split.parts == (("east", 7), ("west", 9))
    assert split.replicas == 16 and split.total_w == job_w
    assert split.reason == (
        "16 replicas × 7.1 kW = 113.6 kW split by power headroom: east 7 (49.7 kW), west 9 (63.9 kW)"
    )
    # Placing it charges each part; both regions stay under their budgets.
    for region, n in split.parts:
        assert isinstance(b.charge(f"dp/1/{region}", region, n * replica_w), Fits)
    assert b.in_use_w("east") <= b.budget_w("east") and b.in_use_w("west") <= b.budget_w("west")
    assert b.in_use_w("east") == 1_999_700 and b.in_use_w("west") == 920_000 + 9 * 7100
    b.validate()
    # A second such job fits nowhere, and says so with every region's headroom.
    again = b.split_by_power(replica_w, 16, ["east", "west"])
    assert isinstance(again, Over)
    assert again.reason == (
        "16 replicas × 7.1 kW = 113.6 kW do not fit: 2 of 16 placed; east: 0.3 kW headroom holds 0; "
        "west: 16.1 kW headroom holds 2"
    )
    # When the job ends, releasing its parts restores both regions.
    for region, _ in split.parts:
        b.release(f"dp/1/{region}")
    assert b.headroom_w("east") == 50_000 and b.headroom_w("west") == 80_000
    b.validate()


def test_split_prefers_fewer_regions_and_honours_max_regions() -> None:
    b = book(a=100, b=100, c=100)
    whole = b.split_by_power(10_000, 8, ["a", "b", "c"])
    assert isinstance(whole, Split) and whole.parts == (("a", 8),)
    b.charge("x", "a", 70_000)
    b.charge("y", "b", 70_000)
    three = b.split_by_power(10_000, 8, ["a", "b", "c"])
    assert isinstance(three, Split) and three.parts == (("a", 3), ("b", 3), ("c", 2))
    capped = b.split_by_power(10_000, 8, ["a", "b", "c"], max_regions=2)
    assert isinstance(capped, Over) and "in at most 2 region(s)" in capped.reason
    with pytest.raises(InvalidArgument):
        b.split_by_power(10_000, 0, ["a"])


def test_format_kw() -> None:
    assert [format_kw(w) for w in (1_960_000, 448_000, 5_600, 72, 0, math.inf)] == [
        "1,960",
        "448",
        "5.6",
        "0.07",
        "0",
        "unlimited",
    ]


# -- properties -------------------------------------------------------------------------------

REGIONS = ("east", "west", "north")
watts = st.sampled_from([0, 10_000, 20_000, 30_000, 40_000, 60_000, 100_000]) | st.integers(0, 120_000)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_charges_never_exceed_a_budget_and_release_restores(data: st.DataObject) -> None:
    budgets = {r: data.draw(st.sampled_from([0, 50, 100, 250, math.inf]), label=f"{r} kW") for r in REGIONS}
    b = PowerBook([RegionPower(r, kw) for r, kw in budgets.items()])
    ids = [f"alloc-{i}" for i in range(6)]
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        kind = data.draw(st.sampled_from(["charge", "charge", "release", "observe", "spill", "split"]))
        region = data.draw(st.sampled_from(REGIONS))
        if kind == "charge":
            aid = data.draw(st.sampled_from(ids))
            w = data.draw(watts)
            old = b.charge_of(aid)
            predicted = b.check(region, w) if old is None else None
            before = b.charged_w(region)
            result = b.charge(aid, region, w)
            if predicted is not None:
                # charge admits exactly what check admits.
                assert type(result) is type(predicted)
            if isinstance(result, Fits):
                assert b.charge_of(aid) == (region, w)
                assert b.charged_w(region) <= b.budget_w(region)
                if old is None:
                    # A new charge is never hidden under the measured draw, and admitting it keeps
                    # the region's draw in use within its budget. (A repeated charge of the same
                    # allocation may already be inside a later measurement: nothing is added.)
                    assert b.in_use_w(region) >= b.measured_w(region) + w
                    assert b.in_use_w(region) <= b.budget_w(region)
            else:
                assert b.charge_of(aid) == old and b.charged_w(region) == before
        elif kind == "release":
            aid = data.draw(st.sampled_from(ids))
            charge = b.charge_of(aid)
            if charge is not None:
                r, w = charge
                used, checked = b.charged_w(r), b.check(r, 1000)
                assert b.release(aid) == w
                assert b.charged_w(r) == used - w
                # Charging it again and releasing it restores the region exactly.
                if isinstance(b.charge(aid, r, w), Fits):
                    assert b.charged_w(r) == used
                    b.release(aid)
                if isinstance(checked, Fits):
                    assert isinstance(b.check(r, 1000), Fits)
            else:
                assert b.release(aid) == 0
        elif kind == "observe":
            b.observe(region, data.draw(st.sampled_from(["s1", "s2"])), data.draw(watts))
        elif kind == "spill":
            w = data.draw(watts)
            order = data.draw(st.permutations(REGIONS))
            chosen = b.spill(w, order)
            fitting = [r for r in order if isinstance(b.check(r, w), Fits)]
            assert chosen == (fitting[0] if fitting else None)
        else:
            per = data.draw(st.integers(1, 50_000))
            n = data.draw(st.integers(1, 12))
            order = data.draw(st.permutations(REGIONS))
            split = b.split_by_power(per, n, order)
            if isinstance(split, Split):
                assert split.replicas == n
                for r, k in split.parts:
                    assert k > 0 and isinstance(b.check(r, k * per), Fits)
            else:
                assert (
                    sum(min(n, int(b.headroom_w(r) // per)) for r in order if not math.isinf(b.headroom_w(r)))
                    < n
                )
                assert not any(math.isinf(b.headroom_w(r)) for r in order)
        b.validate()
        for r in REGIONS:
            assert b.charged_w(r) <= b.budget_w(r)  # no forced charges here: never past a budget
