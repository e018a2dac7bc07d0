"""The cross-region loss model: its equation with concrete numbers, its invariants, its inputs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domainos.errors import InvalidArgument
from master_domain._sched._loss import (
    INTRA_REGION_LINK,
    Link,
    LinkTable,
    LossEstimate,
    estimate_cross_loss,
    format_fraction,
    format_seconds,
)

FAST = Link(3200, 50)  # 3.2 Tbit/s, 50 km
SLOW = Link(100, 1000)  # 100 Gbit/s, 1000 km
SEVEN_B = 7_000_000_000


def est(link: Link, **kw: object) -> LossEstimate:
    args: dict[str, object] = {"params": SEVEN_B, "bytes_per_param": 2, "tp": 8, "pp": 2, "t_iter_s": 3.0}
    args.update(kw)
    return estimate_cross_loss(link=link, **args)  # type: ignore[arg-type]


def test_fast_link_numbers() -> None:
    e = est(FAST)
    # msg_bytes = 7e9 params × 2 B / (8 × 2) = 875 MB per DP rank; 16 pairs share 400 GB/s.
    assert e.msg_bytes == pytest.approx(875e6)
    assert e.pairs == 16
    assert e.bw_per_pair_bytes_s == pytest.approx(400e9 / 16)
    assert e.t_transfer_s == pytest.approx(1.2 * 875e6 / 25e9)  # 42 ms
    assert e.rtt_s == pytest.approx(0.5e-3)  # 50 km at 1 ms per 100 km
    assert e.t_cross_s == pytest.approx(0.0425)
    assert e.loss == pytest.approx(0.0425 / 3.0)  # 1.42%
    assert e.within(0.02)


def test_slow_link_numbers() -> None:
    e = est(SLOW)
    assert e.bw_per_pair_bytes_s == pytest.approx(12.5e9 / 16)
    assert e.t_transfer_s == pytest.approx(1.2 * 875e6 / (12.5e9 / 16))  # 1.344 s
    assert e.rtt_s == pytest.approx(0.010)
    assert e.t_cross_s == pytest.approx(1.354)
    assert e.loss == pytest.approx(1.354 / 3.0)  # 45.1%
    assert not e.within(0.02)


def test_k_and_alpha_are_applied_exactly() -> None:
    base = est(SLOW, k=1.0, alpha_lb=1.0)
    assert est(SLOW, k=2.4).t_transfer_s == pytest.approx(2.4 * base.t_transfer_s)
    assert est(SLOW, k=1.0, alpha_lb=0.5).t_transfer_s == pytest.approx(2 * base.t_transfer_s)
    assert est(SLOW, k=2.4).rtt_s == base.rtt_s


def test_explain_shows_every_number() -> None:
    text = est(SLOW).explain()
    for piece in (
        "100 Gbit/s, 1000 km",
        "7,000,000,000 params × 2 B / (TP 8 × PP 2) = 875 MB per DP rank",
        "pairs = TP × PP = 16",
        "12.5 GB/s / 16 = 781 MB/s",
        "k 1.2",
        "α_LB 1",
        "RTT = 1000 km × 1 ms/100 km = 10 ms",
        "t_cross = 1.35 s",
        "= 45.1% per iteration",
    ):
        assert piece in text, (piece, text)
    assert est(FAST).brief() == "1.4% per iteration (t_cross 42.5 ms / t_iter 3.0 s)"


def test_formatting() -> None:
    assert format_seconds(0.073) == "73 ms"
    assert format_seconds(1.0) == "1.0 s"
    assert format_seconds(1.354) == "1.35 s"
    assert format_fraction(0.073) == "7.3%"
    assert format_fraction(0.0065) == "0.65%"
    assert format_fraction(0.02) == "2.0%"


@pytest.mark.parametrize(
    ("kw", "fld"),
    [
        ({"params": 0}, "params"),
        ({"params": True}, "params"),
        ({"bytes_per_param": 0}, "bytes_per_param"),
        ({"tp": 0}, "tp"),
        ({"pp": -1}, "pp"),
        ({"t_iter_s": 0.0}, "t_iter_s"),
        ({"t_iter_s": math.nan}, "t_iter_s"),
        ({"k": 0.0}, "k"),
        ({"alpha_lb": 0.0}, "alpha_lb"),
        ({"alpha_lb": 1.5}, "alpha_lb"),
    ],
)
def test_bad_inputs_name_the_field(kw: dict[str, object], fld: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        est(FAST, **kw)
    assert info.value.field == fld


@pytest.mark.parametrize(
    ("bw", "km", "fld"),
    [(0, 10, "link.bandwidth_gbps"), (math.inf, 10, "link.bandwidth_gbps"), (100, -1, "link.distance_km")],
)
def test_bad_links(bw: float, km: float, fld: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Link(bw, km)
    assert info.value.field == fld


def test_link_table_is_symmetric_with_an_intra_region_default() -> None:
    table = LinkTable({("west", "east"): FAST})
    assert table.link("east", "west") == FAST == table.link("west", "east")
    assert table.link("east", "east") == INTRA_REGION_LINK == Link(400, 0)
    assert table.link("east", "north") is None
    assert LinkTable(default=SLOW).link("east", "north") == SLOW
    custom = LinkTable({("east", "east"): Link(800, 0)}, intra_region=Link(200, 1))
    assert custom.link("east", "east") == Link(800, 0)
    assert custom.link("west", "west") == Link(200, 1)
    changed = table.with_link("east", "west", SLOW)
    assert changed.link("west", "east") == SLOW and table.link("west", "east") == FAST
    assert LinkTable({("a", "b"): FAST, ("b", "a"): FAST}).link("a", "b") == FAST


def test_link_table_refuses_contradictions() -> None:
    with pytest.raises(InvalidArgument, match="declared twice"):
        LinkTable({("a", "b"): FAST, ("b", "a"): SLOW})
    with pytest.raises(InvalidArgument, match="must not be empty"):
        LinkTable({("", "b"): FAST})


links = st.builds(
    Link,
    st.floats(min_value=1, max_value=100_000, allow_nan=False),
    st.floats(min_value=0, max_value=20_000, allow_nan=False),
)
jobs = st.fixed_dictionaries(
    {
        "params": st.integers(1, 10**12),
        "bytes_per_param": st.sampled_from([1, 2, 4]),
        "tp": st.integers(1, 16),
        "pp": st.integers(1, 64),
        "t_iter_s": st.floats(min_value=0.01, max_value=100),
        "k": st.floats(min_value=0.5, max_value=3),
        "alpha_lb": st.floats(min_value=0.05, max_value=1),
    }
)


@settings(max_examples=200, deadline=None)
@given(jobs, links)
def test_equation_holds(job: dict[str, float], link: Link) -> None:
    e = estimate_cross_loss(link=link, **job)  # type: ignore[arg-type]
    pairs = job["tp"] * job["pp"]
    msg = job["params"] * job["bytes_per_param"] / pairs
    expected = (
        job["k"] * msg / (link.bandwidth_gbps * 1e9 / 8 / pairs) / job["alpha_lb"] + link.distance_km / 1e5
    )
    assert e.pairs == pairs
    assert e.msg_bytes == pytest.approx(msg)
    assert e.t_cross_s == pytest.approx(expected)
    assert e.t_cross_s == pytest.approx(e.t_transfer_s + e.rtt_s)
    assert e.loss == pytest.approx(expected / job["t_iter_s"])
    # The tp·pp shards cross in parallel: the transfer time is the whole gradient over the link.
    whole = job["k"] * job["params"] * job["bytes_per_param"] / link.bytes_per_s / job["alpha_lb"]
    assert e.t_transfer_s == pytest.approx(whole)


@settings(max_examples=200, deadline=None)
@given(jobs, links, st.floats(min_value=1.01, max_value=100))
def test_slower_or_farther_never_loses_less(job: dict[str, float], link: Link, factor: float) -> None:
    base = estimate_cross_loss(link=link, **job)  # type: ignore[arg-type]
    slower = estimate_cross_loss(link=Link(link.bandwidth_gbps / factor, link.distance_km), **job)  # type: ignore[arg-type]
    farther = estimate_cross_loss(link=Link(link.bandwidth_gbps, link.distance_km * factor + 1), **job)  # type: ignore[arg-type]
    assert slower.loss > base.loss
    assert farther.loss > base.loss
    longer = dict(job, t_iter_s=job["t_iter_s"] * factor)
    assert estimate_cross_loss(link=link, **longer).loss < base.loss  # type: ignore[arg-type]
