"""Topology-aware placement of training jobs: scenarios with numbers, then properties.

The properties check the planner against rules recomputed here from first principles and against
a brute-force oracle over every set of sub-domains (small federations), so a planner that
over-commits, splits a TP group or a pipeline, splits over a lossy link, or misses a feasible or
a smaller plan fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domainos.errors import InvalidArgument
from domainos.resources import Resources
from master_domain._sched._loss import Link, LinkTable, estimate_cross_loss, format_fraction
from master_domain._sched._topology import (
    RULE_CAPACITY,
    RULE_GPU_MODEL,
    RULE_LIMIT,
    RULE_LOSS,
    RULE_PIPELINE,
    RULE_TP,
    BlockView,
    GpuLimit,
    Placement,
    SubDomainView,
    TrainingShape,
    Unplaceable,
    check_placement,
    plan_training,
)
from master_domain._summary import Shape, Summary

GI = 2**30
FAST = Link(3200, 50)  # 3.2 Tbit/s, 50 km
SLOW = Link(100, 1000)  # 100 Gbit/s, 1000 km
PROPS = settings(max_examples=200, deadline=None)


def shape(model: str, free: int, count: int, cpus: int = 96, mem_gi: int = 1024) -> Shape:
    return Shape(model, free, count, Resources(cpus * 1000, mem_gi * GI, free, model))


def view(sd: str, region: str, *shapes: Shape, blocks: tuple[BlockView, ...] = ()) -> SubDomainView:
    return SubDomainView(sd, region, tuple(shapes), blocks)


def job7b(**kw: object) -> TrainingShape:
    """A 7B-parameter model, bf16 gradients, 3 s iterations, TP 8 × PP 2 × DP 4 = 64 GPUs."""
    args: dict[str, object] = {
        "tp": 8,
        "pp": 2,
        "dp": 4,
        "params": 7_000_000_000,
        "bytes_per_param": 2,
        "t_iter_s": 3.0,
        "gpu_model": "H100",
    }
    args.update(kw)
    return TrainingShape(**args)  # type: ignore[arg-type]


def plan(
    job: TrainingShape, views: Sequence[SubDomainView], links: LinkTable, **kw: object
) -> Placement | Unplaceable:
    out = plan_training(job, views, links, **kw)  # type: ignore[arg-type]
    if isinstance(out, Placement):
        check_placement(job, views, links, out, **kw)  # type: ignore[arg-type]
    return out


def placed(out: Placement | Unplaceable) -> Placement:
    assert isinstance(out, Placement), out
    return out


def refused(out: Placement | Unplaceable, rule: str) -> Unplaceable:
    assert isinstance(out, Unplaceable), out
    assert out.rule == rule, out
    return out


TWO_DOMAINS = [view("east-1", "east", shape("H100", 8, 4)), view("west-1", "west", shape("H100", 8, 4))]


# -- scenarios -----------------------------------------------------------------------------------


def test_two_domain_dp_job_accepted_under_a_fast_link_refused_under_a_slow_one() -> None:
    # Each domain has 4 free 8-GPU nodes = 2 replicas of 16 GPUs; the job needs 4 replicas.
    fast = placed(plan(job7b(), TWO_DOMAINS, LinkTable({("east", "west"): FAST})))
    assert dict(fast.per_subdomain) == {"east-1": 2, "west-1": 2}
    assert fast.worst_link == ("east", "west")
    assert fast.loss is not None
    assert fast.loss.t_cross_s == pytest.approx(0.0425)  # 42 ms transfer + 0.5 ms RTT
    assert fast.loss.loss == pytest.approx(0.014167, rel=1e-3)  # 1.42% <= 2%
    assert "loss 1.4% per iteration (t_cross 42.5 ms / t_iter 3.0 s) ≤ budget 2.0%" in fast.explain()
    assert fast.dp_ranks() == {"east-1": range(0, 2), "west-1": range(2, 4)}

    slow = refused(plan(job7b(), TWO_DOMAINS, LinkTable({("east", "west"): SLOW})), RULE_LOSS)
    assert slow.loss is not None and slow.loss.loss == pytest.approx(0.4513, rel=1e-3)  # 45.1% > 2%
    assert slow.reason.startswith(
        "DP across east-1 and west-1 would lose 45.1% per iteration (t_cross 1.35 s / t_iter 3.0 s) "
        "over the east–west link (100 Gbit/s, 1000 km) > budget 2.0%: waiting for room in one domain"
    ), slow.reason
    assert "the most in one sub-domain is east-1 with 2 of 4" in slow.reason


def test_a_larger_budget_or_longer_iteration_admits_the_slow_split() -> None:
    links = LinkTable({("east", "west"): SLOW})
    assert isinstance(plan(job7b(max_cross_domain_loss=0.5), TWO_DOMAINS, links), Placement)
    # 1.354 s over a 100 s iteration = 1.35%.
    p = placed(plan(job7b(t_iter_s=100.0), TWO_DOMAINS, links))
    assert p.loss is not None and format_fraction(p.loss.loss) == "1.4%"


def test_one_domain_is_preferred_and_needs_no_link() -> None:
    views = [*TWO_DOMAINS, view("north-1", "north", shape("H100", 8, 9))]
    p = placed(plan(job7b(), views, LinkTable()))
    assert dict(p.per_subdomain) == {"north-1": 4}
    assert p.loss is None and p.regions == ("north",)


def test_the_tightest_single_domain_is_chosen() -> None:
    views = [view("big", "east", shape("H100", 8, 20)), view("snug", "east", shape("H100", 8, 8))]
    assert placed(plan(job7b(), views, LinkTable())).subdomains == ("snug",)


def test_fewest_subdomains_then_same_region() -> None:
    # 6 replicas: east-1 (4) + west-1 (2) = 2 sub-domains across regions beats
    # east-2 + east-3 (2 each) in one region; at 2 sub-domains, one region wins when the
    # intra-region link is within budget (12.8 Tbit/s: 0.35%; the 400 Gbit/s default loses 11.2%).
    links = LinkTable({("east", "west"): FAST}, intra_region=Link(12800, 0))
    views = [
        view("east-1", "east", shape("H100", 8, 8)),
        view("west-1", "west", shape("H100", 8, 4)),
        view("east-2", "east", shape("H100", 8, 4)),
        view("east-3", "east", shape("H100", 8, 4)),
    ]
    p = placed(plan(job7b(dp=6), views, links))
    assert len(p.per_subdomain) == 2 and p.regions == ("east",)
    assert p.per_subdomain["east-1"] == 4
    assert p.worst_link == ("east", "east") and p.loss is not None
    assert p.loss.link == Link(12800, 0) and p.loss.loss == pytest.approx(0.0035)
    # Under the default intra-region link, or without the other east sub-domains, it goes west.
    for p2 in (
        placed(plan(job7b(dp=6), views, LinkTable({("east", "west"): FAST}))),
        placed(plan(job7b(dp=6), views[:2], links)),
    ):
        assert dict(p2.per_subdomain) == {"east-1": 4, "west-1": 2} and p2.regions == ("east", "west")


def test_fewer_regions_win_over_the_largest_shares() -> None:
    # 6 replicas: the two largest (east-1 4 + west-1 3) span two regions; east-1 + east-2 (4 + 2)
    # are as few sub-domains in one region.
    links = LinkTable({("east", "west"): FAST}, intra_region=Link(12800, 0))
    views = [
        view("east-1", "east", shape("H100", 8, 8)),
        view("west-1", "west", shape("H100", 8, 6)),
        view("east-2", "east", shape("H100", 8, 4)),
    ]
    p = placed(plan(job7b(dp=6), views, links))
    assert dict(p.per_subdomain) == {"east-1": 4, "east-2": 2}


@pytest.mark.parametrize("names", [("east", "west", "north"), ("north", "west", "east")])
def test_the_group_of_regions_needing_fewest_subdomains_wins(names: tuple[str, str, str]) -> None:
    # a–b and b–c are fast, a–c is slow: the compatible groups are {a, b} and {b, c}.
    # 7 replicas: a-1 + a-2 + b-1 (3 + 3 + 1) in the first, c-1 + b-1 (6 + 1) in the second.
    a, b, c = names
    links = LinkTable({(a, b): FAST, (b, c): FAST, (a, c): SLOW}, intra_region=Link(12800, 0))
    views = [
        view(f"{a}-1", a, shape("H100", 8, 6)),
        view(f"{a}-2", a, shape("H100", 8, 6)),
        view(f"{b}-1", b, shape("H100", 8, 2)),
        view(f"{c}-1", c, shape("H100", 8, 12)),
    ]
    p = placed(plan(job7b(dp=7), views, links))
    assert dict(p.per_subdomain) == {f"{c}-1": 6, f"{b}-1": 1}


def test_an_intra_region_split_also_obeys_the_budget() -> None:
    views = [view("east-1", "east", shape("H100", 8, 4)), view("east-2", "east", shape("H100", 8, 4))]
    # The 400 Gbit/s default: 1B params × 2 B = 2 GB, 1.2 × 2 GB / 50 GB/s = 48 ms of 3 s = 1.6%.
    p = placed(plan(job7b(params=10**9), views, LinkTable()))
    assert p.loss is not None and p.loss.loss == pytest.approx(0.016) and p.worst_link == ("east", "east")
    # 7B: 336 ms of 3 s = 11.2% > 2%.
    u = refused(plan(job7b(), views, LinkTable()), RULE_LOSS)
    assert "DP across east-1 and east-2 would lose 11.2% per iteration" in u.reason
    assert "east–east link (400 Gbit/s, 0 km)" in u.reason


def test_no_declared_link_means_no_split() -> None:
    u = refused(plan(job7b(), TWO_DOMAINS, LinkTable()), RULE_LOSS)
    assert "needs a link between east and west, and none is declared" in u.reason
    assert isinstance(plan(job7b(), TWO_DOMAINS, LinkTable(default=FAST)), Placement)


def test_heterogeneous_models_are_never_mixed() -> None:
    views = [
        view("east-1", "east", shape("A100", 8, 16)),
        view("west-1", "west", shape("H100", 8, 2), shape("MI300", 8, 16)),
    ]
    links = LinkTable({("east", "west"): FAST})
    # H100 only: one replica of room, the 32 A100 slots never count.
    u = refused(plan(job7b(), views, links), RULE_CAPACITY)
    assert "room for 1 replica (west-1: 1)" in u.reason
    any_model = placed(plan(job7b(gpu_model=""), views, links))
    assert any_model.gpu_model == "A100" and any_model.subdomains == ("east-1",)
    no_a100 = placed(plan(job7b(gpu_model="", exclude_models=frozenset({"A100"})), views, links))
    assert no_a100.gpu_model == "MI300" and all(u.gpu_model == "MI300" for u in no_a100.shape_use)
    none = refused(plan(job7b(gpu_model="B200"), views, links), RULE_GPU_MODEL)
    assert none.reason == "no ready node has B200 GPUs (models ready: A100, H100, MI300)"
    excl = frozenset({"A100", "H100", "MI300"})
    assert refused(plan(job7b(gpu_model="", exclude_models=excl), views, links), RULE_GPU_MODEL)


def test_tp_group_never_spans_nodes() -> None:
    # 64 free H100s, but on nodes with 4 free each: no TP-8 group fits on one node.
    views = [view("east-1", "east", shape("H100", 4, 16))]
    u = refused(plan(job7b(dp=1), views, LinkTable()), RULE_TP)
    assert u.reason == (
        "a TP group needs 8 H100 GPUs free on one node, in one NVLink domain (TP never spans either); "
        "the most free on one H100 node is 4 (east-1)"
    )
    # 8 free GPUs on a node, but in two NVLink domains of 4: still no TP-8 group, and the reason
    # names the NVLink domain.
    split = Shape("H100", 8, 16, Resources(96_000, 1024 * GI, 8, "H100"), free_nvlink_gpus=4)
    u = refused(plan(job7b(dp=1), [view("east-1", "east", split)], LinkTable()), RULE_TP)
    assert u.reason.endswith("H100 nodes with 8+ free GPUs have at most 4 free in one NVLink domain (east-1)")
    # Each node hosts floor(free / tp) groups: 6 free GPUs host one TP-4 group, not 1.5.
    six = [view("east-1", "east", shape("H100", 6, 2))]
    assert placed(plan(job7b(tp=4, pp=2, dp=1), six, LinkTable())).shape_use[0].nodes == 2
    refused(plan(job7b(tp=4, pp=3, dp=1), six, LinkTable()), RULE_PIPELINE)


def test_cpu_and_memory_per_gpu_limit_groups_per_node() -> None:
    views = [view("east-1", "east", shape("H100", 8, 4, cpus=64, mem_gi=512))]
    job = job7b(dp=1, cpu_millis_per_gpu=16_000)  # a TP group needs 128 cpus: none fits
    u = refused(plan(job, views, LinkTable()), RULE_TP)
    assert "8 H100 GPUs with 128 cpus" in u.reason and "at most 64 cpus and 512Gi memory" in u.reason
    ok = job7b(dp=2, tp=4, cpu_millis_per_gpu=16_000, memory_bytes_per_gpu=64 * GI)  # 1 group per node
    p = placed(plan(ok, views, LinkTable()))
    assert [(s.groups_per_node, s.nodes, s.tp_groups) for s in p.shape_use] == [(1, 4, 4)]


def test_pipeline_never_spans_subdomains() -> None:
    # 3 TP groups in each domain; one replica needs 4 stages: 6 groups in total are not enough.
    views = [view("east-1", "east", shape("H100", 8, 3)), view("east-2", "east", shape("H100", 8, 3))]
    u = refused(plan(job7b(pp=4, dp=1), views, LinkTable(default=FAST)), RULE_PIPELINE)
    assert u.reason == (
        "a DP replica (PP 4 stages × TP 8 = 32 H100 GPUs) must sit in one sub-domain (PP never spans "
        "sub-domains); the most any holds is 3 TP groups of 8 (east-1), 1 short"
    )


def test_stages_of_one_replica_may_use_several_shapes_of_one_subdomain() -> None:
    views = [view("east-1", "east", shape("H100", 8, 1), shape("H100", 4, 3))]
    p = placed(plan(job7b(tp=4, pp=5, dp=1), views, LinkTable()))
    # Tightest nodes first: three 4-free nodes, then the 8-free node for the last 2 groups.
    assert [(s.free_gpus, s.nodes, s.tp_groups) for s in p.shape_use] == [(4, 3, 3), (8, 1, 2)]


def test_limits_cap_replicas_with_their_reason() -> None:
    power = {"east": GpuLimit(40, "power budget 28 kW")}
    views = [view("east-1", "east", shape("H100", 8, 8)), view("west-1", "west", shape("H100", 8, 8))]
    links = LinkTable({("east", "west"): FAST})
    # East alone could take all 4 replicas (64 GPUs) but may take only 40: 2 replicas there.
    p = placed(plan(job7b(), views, links, region_limits=power))
    assert dict(p.per_subdomain) == {"west-1": 4}
    u = refused(
        plan(job7b(), views, links, region_limits=power, subdomain_limits={"west-1": GpuLimit(16, "quota")}),
        RULE_LIMIT,
    )
    assert "room for 3 replicas (east-1: 2, west-1: 1)" in u.reason
    assert "region east ≤ 40 GPUs (power budget 28 kW)" in u.reason
    assert "sub-domain west-1 ≤ 16 GPUs (quota)" in u.reason
    # A power-capped region spills into another: 2 replicas in east (32 GPUs ≤ 40), 2 in west.
    spill = placed(
        plan(job7b(), views, links, region_limits=power, subdomain_limits={"west-1": GpuLimit(32, "quota")})
    )
    assert dict(spill.per_subdomain) == {"east-1": 2, "west-1": 2}


def test_limits_may_depend_on_the_gpu_model() -> None:
    # A quota of 0 A100s in east sends an any-model job to its H100s in west.
    views = [view("east-1", "east", shape("A100", 8, 8)), view("west-1", "west", shape("H100", 8, 8))]

    def quota(model: str) -> dict[str, GpuLimit]:
        return {"east": GpuLimit(0, "tenant quota")} if model == "A100" else {}

    p = placed(plan(job7b(gpu_model=""), views, LinkTable(), region_limits=quota))
    assert (p.gpu_model, p.subdomains) == ("H100", ("west-1",))
    assert placed(plan(job7b(gpu_model=""), views, LinkTable())).gpu_model == "A100"
    assert job7b(cpu_millis_per_gpu=4000, memory_bytes_per_gpu=GI).tp_group_request("H100") == Resources(
        32_000, 8 * GI, 8, "H100"
    )


def test_capacity_reason_lists_the_room() -> None:
    u = refused(plan(job7b(dp=5), TWO_DOMAINS, LinkTable(default=FAST)), RULE_CAPACITY)
    assert u.reason == (
        "needs 5 DP replicas of PP 2 × TP 8 = 16 H100 GPUs; the federation has room for 4 replicas "
        "(east-1: 2, west-1: 2): waiting for capacity"
    )


def test_blocks_prefer_a_domain_whose_pipelines_fit_in_one_block() -> None:
    split = (BlockView("b1", (shape("H100", 8, 2),)), BlockView("b2", (shape("H100", 8, 2),)))
    whole = (BlockView("b1", (shape("H100", 8, 4),)),)
    views = [
        view("a", "east", shape("H100", 8, 4), blocks=split),
        view("b", "east", shape("H100", 8, 4), blocks=whole),
    ]
    p = placed(plan(job7b(pp=4, dp=1), views, LinkTable()))
    assert p.subdomains == ("b",)
    assert "1 of 1 pipelines fit inside one block of b" in p.reasons


def test_inputs_are_validated() -> None:
    with pytest.raises(InvalidArgument) as info:
        job7b(tp=0)
    assert info.value.field == "tp"
    with pytest.raises(InvalidArgument, match="both required"):
        job7b(exclude_models=frozenset({"H100"}))
    with pytest.raises(InvalidArgument) as info:
        job7b(max_cross_domain_loss=-0.1)
    assert info.value.field == "max_cross_domain_loss"
    with pytest.raises(InvalidArgument, match="duplicate sub-domain"):
        plan_training(job7b(), [TWO_DOMAINS[0], TWO_DOMAINS[0]], LinkTable())
    with pytest.raises(InvalidArgument):
        view("x", "east", shape("H100", 8, -1))
    with pytest.raises(InvalidArgument):
        GpuLimit(-1)


def test_view_from_summary() -> None:
    s = Summary(shapes=(shape("H100", 8, 4),))
    v = SubDomainView.from_summary("east-1", "east", s)
    assert v == view("east-1", "east", shape("H100", 8, 4))


def test_check_placement_catches_broken_plans() -> None:
    links = LinkTable({("east", "west"): FAST})
    good = placed(plan(job7b(), TWO_DOMAINS, links))
    with pytest.raises(AssertionError, match="replicas placed"):
        check_placement(job7b(dp=5), TWO_DOMAINS, links, good)
    over = replace(good, shape_use=tuple(replace(u, tp_groups=u.tp_groups + 1) for u in good.shape_use))
    with pytest.raises(AssertionError):
        check_placement(job7b(), TWO_DOMAINS, links, over)
    with pytest.raises(AssertionError, match="budget"):
        check_placement(job7b(), TWO_DOMAINS, LinkTable({("east", "west"): SLOW}), good)


# -- properties ----------------------------------------------------------------------------------

MODELS = ("H100", "A100", "MI300")
REGIONS = ("east", "west", "north")
link_st = st.builds(
    Link,
    st.sampled_from([10.0, 100.0, 400.0, 800.0, 3200.0, 12800.0]),
    st.sampled_from([0.0, 50.0, 500.0, 2000.0]),
)
# Biased to H100 and to a few nodes per sub-domain, so that splits and every rule occur often.
shape_st = st.builds(
    shape,
    st.sampled_from(("H100", "H100", "H100", "A100", "MI300")),
    st.integers(0, 8),
    st.integers(0, 4),
    st.sampled_from([32, 128]),
    st.sampled_from([256, 1024]),
)


@st.composite
def views_st(draw: st.DrawFn) -> list[SubDomainView]:
    n = draw(st.integers(1, 6))
    out = []
    for i in range(n):
        region = draw(st.sampled_from(REGIONS))
        out.append(view(f"{region}-{i}", region, *draw(st.lists(shape_st, max_size=4))))
    return out


@st.composite
def links_st(draw: st.DrawFn) -> LinkTable:
    table: dict[tuple[str, str], Link] = {}
    for a, b in itertools.combinations_with_replacement(REGIONS, 2):
        link = draw(st.none() | link_st)
        if link is not None:
            table[(a, b)] = link
    return LinkTable(table, intra_region=draw(link_st), default=draw(st.none() | link_st))


@st.composite
def jobs_st(draw: st.DrawFn) -> TrainingShape:
    model = draw(st.sampled_from(("", "", "H100", "H100", "A100")))
    exclude = draw(
        st.sampled_from([frozenset(), frozenset(), frozenset({"A100"}), frozenset({"MI300", "H100"})])
    )
    return TrainingShape(
        tp=draw(st.sampled_from([1, 2, 4, 8])),
        pp=draw(st.integers(1, 3)),
        dp=draw(st.integers(1, 10)),
        params=draw(st.sampled_from([10**8, 10**9, 7 * 10**9, 7 * 10**10])),
        bytes_per_param=draw(st.sampled_from([2, 4])),
        t_iter_s=draw(st.sampled_from([0.5, 1.0, 3.0, 10.0])),
        gpu_model=model,
        exclude_models=exclude - {model},
        max_cross_domain_loss=draw(st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0])),
        cpu_millis_per_gpu=draw(st.sampled_from([0, 0, 4000, 16000])),
        memory_bytes_per_gpu=draw(st.sampled_from([0, 0, 64 * GI])),
    )


@st.composite
def limits_st(draw: st.DrawFn, views: Sequence[SubDomainView]) -> dict[str, object]:
    gpus = st.sampled_from([0, 8, 16, 32, 64, 128, 256])
    some = st.sampled_from([False, False, True])
    regions = sorted({v.region for v in views})
    return {
        "region_limits": {r: GpuLimit(draw(gpus), "power") for r in regions if draw(some)},
        "subdomain_limits": {v.id: GpuLimit(draw(gpus), "quota") for v in views if draw(some)},
    }


def groups_per_node(job: TrainingShape, s: Shape, model: str) -> int:
    """Recomputed here: TP groups one node of ``s`` hosts for ``job`` on ``model``."""
    if s.gpu_model != model or s.count <= 0 or model in job.exclude_models:
        return 0
    dims = [s.free_gpus // job.tp]
    if job.cpu_millis_per_gpu:
        dims.append(s.best.cpu_millis // (job.tp * job.cpu_millis_per_gpu))
    if job.memory_bytes_per_gpu:
        dims.append(s.best.memory_bytes // (job.tp * job.memory_bytes_per_gpu))
    return min(dims)


def oracle(
    job: TrainingShape,
    views: Sequence[SubDomainView],
    links: LinkTable,
    region_limits: Mapping[str, GpuLimit],
    subdomain_limits: Mapping[str, GpuLimit],
) -> tuple[int, int] | None:
    """Brute force over every model and every set of sub-domains: the best (sub-domains, regions)."""
    gpr = job.tp * job.pp
    best: tuple[int, int] | None = None
    models = {s.gpu_model for v in views for s in v.shapes if s.count > 0 and s.gpu_model}
    for model in models:
        if model in job.exclude_models or (job.gpu_model and model != job.gpu_model):
            continue
        room = {}
        for v in views:
            replicas = sum(s.count * groups_per_node(job, s, model) for s in v.shapes) // job.pp
            for limit in (subdomain_limits.get(v.id), region_limits.get(v.region)):
                if limit is not None:
                    replicas = min(replicas, limit.gpus // gpr)
            room[v.id] = replicas
        for n in range(1, len(views) + 1):
            for chosen in itertools.combinations(views, n):
                ok = True
                for a, b in itertools.combinations(chosen, 2):
                    link = links.link(a.region, b.region)
                    if link is None or loss(job, link) > job.max_cross_domain_loss:
                        ok = False
                if not ok or any(room[v.id] == 0 for v in chosen):
                    continue
                by_region: dict[str, int] = {}
                for v in chosen:
                    by_region[v.region] = by_region.get(v.region, 0) + room[v.id]
                total = sum(
                    min(t, region_limits[r].gpus // gpr) if r in region_limits else t
                    for r, t in by_region.items()
                )
                if total >= job.dp:
                    cand = (n, len(by_region))
                    best = cand if best is None or cand < best else best
    return best


def loss(job: TrainingShape, link: Link) -> float:
    return estimate_cross_loss(
        params=job.params,
        bytes_per_param=job.bytes_per_param,
        tp=job.tp,
        pp=job.pp,
        link=link,
        t_iter_s=job.t_iter_s,
    ).loss


@st.composite
def cases(draw: st.DrawFn) -> tuple[TrainingShape, list[SubDomainView], LinkTable, dict[str, object]]:
    views = draw(views_st())
    return draw(jobs_st()), views, draw(links_st()), draw(limits_st(views))


@st.composite
def split_cases(draw: st.DrawFn) -> tuple[TrainingShape, list[SubDomainView], LinkTable, dict[str, object]]:
    """Small sub-domains of one model and a job larger than most of them: splits are common."""
    views = []
    for i in range(draw(st.integers(2, 6))):
        region = draw(st.sampled_from(REGIONS))
        shapes = draw(
            st.lists(
                st.builds(shape, st.just("H100"), st.sampled_from([4, 8]), st.integers(1, 3)),
                min_size=1,
                max_size=2,
            )
        )
        views.append(view(f"{region}-{i}", region, *shapes))
    tp, pp = draw(st.sampled_from([2, 4, 8])), draw(st.integers(1, 2))
    total = sum(s.count * (s.free_gpus // tp) for v in views for s in v.shapes) // pp
    job = TrainingShape(
        tp=tp,
        pp=pp,
        dp=draw(st.integers(1, max(1, total + 1))),
        params=draw(st.sampled_from([10**8, 10**9, 7 * 10**9])),
        bytes_per_param=2,
        t_iter_s=draw(st.sampled_from([1.0, 3.0, 10.0])),
        gpu_model=draw(st.sampled_from(["", "H100"])),
        max_cross_domain_loss=draw(st.sampled_from([0.02, 0.1, 0.5])),
    )
    return job, views, draw(links_st()), draw(limits_st(views))


@PROPS
@given(st.one_of(cases(), split_cases()))
def test_placement_obeys_every_rule_and_matches_the_oracle(
    case: tuple[TrainingShape, list[SubDomainView], LinkTable, dict[str, object]],
) -> None:
    job, views, links, limits = case
    out = plan(job, views, links, **limits)
    best = oracle(job, views, links, **limits)  # type: ignore[arg-type]
    if isinstance(out, Unplaceable):
        assert best is None, (best, out.reason)
        assert out.reason and out.rule in {
            RULE_GPU_MODEL,
            RULE_TP,
            RULE_PIPELINE,
            RULE_CAPACITY,
            RULE_LIMIT,
            RULE_LOSS,
        }
        return
    assert best == (len(out.per_subdomain), len(out.regions)), (best, out.reasons)
    by_id = {v.id: v for v in views}
    # The model: the one asked for, never an excluded one, on every shape used.
    assert out.gpu_model not in job.exclude_models
    assert not job.gpu_model or out.gpu_model == job.gpu_model
    used: dict[tuple[str, int], int] = {}
    groups: dict[str, int] = {}
    for u in out.shape_use:
        s = by_id[u.subdomain_id].shapes[u.shape_index]
        assert s.gpu_model == out.gpu_model
        # TP never split: each group is a node slot of tp free GPUs (and its CPU/memory).
        g = groups_per_node(job, s, out.gpu_model)
        assert s.free_gpus >= job.tp and g >= 1
        assert u.tp_groups <= u.nodes * g and u.nodes <= s.count
        used[(u.subdomain_id, u.shape_index)] = used.get((u.subdomain_id, u.shape_index), 0) + u.tp_groups
        groups[u.subdomain_id] = groups.get(u.subdomain_id, 0) + u.tp_groups
    # Never over-commit a shape: groups taken <= count × groups per node, GPUs <= free GPUs.
    for (sd, i), n in used.items():
        s = by_id[sd].shapes[i]
        assert n <= s.count * groups_per_node(job, s, out.gpu_model)
        assert n * job.tp <= s.count * s.free_gpus
    # PP never across sub-domains: each sub-domain holds whole pipelines.
    assert groups == {sd: n * job.pp for sd, n in out.per_subdomain.items()}
    assert sum(out.per_subdomain.values()) == job.dp
    # A split only within the loss budget, on every pair of chosen sub-domains.
    chosen = [by_id[sd] for sd in out.per_subdomain]
    if len(chosen) == 1:
        assert out.loss is None
    for a, b in itertools.combinations(chosen, 2):
        link = links.link(a.region, b.region)
        assert link is not None and loss(job, link) <= job.max_cross_domain_loss
        assert out.loss is not None and loss(job, link) <= out.loss.loss + 1e-12


@PROPS
@given(
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(2, 10),
    link_st,
    st.sampled_from([0.01, 0.02, 0.05]),
    st.sampled_from([10**9, 7 * 10**9, 7 * 10**10]),
)
def test_a_split_happens_exactly_when_the_link_is_within_budget(
    east: int, west: int, dp: int, link: Link, budget: float, params: int
) -> None:
    # Neither domain alone holds dp replicas, both together do: only the link decides.
    east, west = min(east, dp - 1), min(west, dp - 1)
    west = max(west, dp - east)
    views = [view("east-1", "east", shape("H100", 8, east)), view("west-1", "west", shape("H100", 8, west))]
    job = job7b(pp=1, dp=dp, params=params, max_cross_domain_loss=budget)
    out = plan(job, views, LinkTable({("east", "west"): link}))
    expected = loss(job, link)
    if expected <= budget:
        p = placed(out)
        assert set(p.per_subdomain) == {"east-1", "west-1"}
        assert p.loss is not None and p.loss.loss == pytest.approx(expected)
        # The same job under a slower and farther link is refused, with the numbers.
        slow = Link(link.bandwidth_gbps / 1000, link.distance_km + 100_000)
        out = plan(job, views, LinkTable({("east", "west"): slow}))
        expected = loss(job, slow)
    u = refused(out, RULE_LOSS)
    assert u.loss is not None and u.loss.loss == pytest.approx(expected)
    assert f"lose {format_fraction(expected)} per iteration" in u.reason
    assert f"> budget {format_fraction(budget)}" in u.reason
    assert "waiting for room in one domain" in u.reason


def _grow(views: list[SubDomainView], data: st.DataObject) -> list[SubDomainView]:
    kind = data.draw(st.sampled_from(["count", "shape", "subdomain", "roomier"]))
    if kind == "subdomain":
        region = data.draw(st.sampled_from(REGIONS))
        return [*views, view(f"{region}-new", region, *data.draw(st.lists(shape_st, max_size=3)))]
    i = data.draw(st.integers(0, len(views) - 1))
    v = views[i]
    shapes = list(v.shapes)
    if kind == "shape" or not shapes:
        shapes.append(data.draw(shape_st))
    else:
        j = data.draw(st.integers(0, len(shapes) - 1))
        s = shapes[j]
        if kind == "count":
            shapes[j] = replace(s, count=s.count + data.draw(st.integers(1, 4)))
        else:
            more = data.draw(st.integers(1, 8))
            shapes[j] = Shape(
                s.gpu_model,
                s.free_gpus + more,
                s.count,
                Resources(s.best.cpu_millis * 2, s.best.memory_bytes * 2, s.free_gpus + more, s.gpu_model),
            )
    return [*views[:i], replace(v, shapes=tuple(shapes)), *views[i + 1 :]]


@PROPS
@given(st.one_of(cases(), split_cases()), st.data())
def test_more_capacity_never_makes_a_placeable_job_unplaceable(
    case: tuple[TrainingShape, list[SubDomainView], LinkTable, dict[str, object]], data: st.DataObject
) -> None:
    job, views, links, limits = case
    before = plan(job, views, links, **limits)
    grown = _grow(views, data)
    after = plan(job, grown, links, **limits)
    if isinstance(before, Placement):
        assert isinstance(after, Placement), (after, before.reasons)
        # More room never makes the plan need more sub-domains.
        assert len(after.per_subdomain) <= len(before.per_subdomain)
    # Raising or dropping every limit, or a faster link everywhere, also never hurts.
    freer = plan(job, grown, LinkTable(default=Link(12800, 0), intra_region=Link(12800, 0)))
    if isinstance(after, Placement):
        assert isinstance(freer, Placement), freer
