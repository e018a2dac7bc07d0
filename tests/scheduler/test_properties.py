"""Cross-cutting properties of the pure scheduler that the per-module tests do not already state.

* quotas: a gang split over several places (``admit_split``) never takes any quota past its limit,
  agrees with a recomputed oracle, and is never admitted when one of its parts alone would wait;
* power: a :class:`Split` is chargeable as it stands (every part fits, no budget exceeded) and an
  :class:`Over` leaves the book untouched;
* gangs: a :class:`Coordinator` fed *adversarial* event streams (duplicated, reordered, stale or
  misaddressed answers, lost sub-domains, cancels, time jumps) still ends every gang all or
  nothing: placed only after every part was accepted, committed and confirmed, failed with a
  Release for every part it reserved, and a placed gang never released;
* training placement at federation scale (10-60 sub-domains, blocks, two GPU models): every TP
  group on one node shape with room, every DP replica's pipeline inside one sub-domain, the
  worst link of a split within the loss budget, blocks only a preference; and
  :func:`check_placement` catches every single-rule break of a valid plan;
* preemption with the fair-share queue: requeued victims always line up behind the job that
  preempted them and can never preempt it back (no ping-pong); :func:`cheapest` is the minimum.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from domainos.resources import Resources
from master_domain._sched._fairshare import (
    HIGH,
    LOW,
    NORMAL,
    SYSTEM,
    FairShareQueue,
    PendingJob,
    PriorityClass,
)
from master_domain._sched._loss import Link, LinkTable, estimate_cross_loss
from master_domain._sched._power import Fits, Over, PowerBook, RegionPower, Split
from master_domain._sched._preempt import (
    NoPreemption,
    Preemption,
    PreemptionRequest,
    RequeueGang,
    RunningGang,
    cheapest,
    plan_preemption,
)
from master_domain._sched._quota import Admit, DefaultPolicy, QuotaBook, Wait, expand
from master_domain._sched._reserve import (
    Accepted,
    Cancel,
    Commit,
    Committed,
    Coordinator,
    Demand,
    GangFailed,
    GangPlaced,
    MasterCommand,
    MasterEvent,
    Refused,
    Release,
    Reserve,
    Resync,
    Start,
    SubdomainLost,
    Tick,
    reservation_id,
)
from master_domain._sched._topology import (
    BlockView,
    Placement,
    SubDomainView,
    TrainingShape,
    Unplaceable,
    check_placement,
    plan_training,
)
from master_domain._summary import Shape

GI = 2**30
# Deterministic: the same examples on every run and every machine (CI and laptops agree).
PROPS = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


# -- quotas: gangs split over places -----------------------------------------------------------

TENANTS = ("acme", "beta")
PLACES = (("east", "east-1"), ("east", "east-2"), ("west", "west-1"), ("west", "west-2"))
QUOTA_SCOPES = (("*", "*"), ("east", "*"), ("west", "*"), ("east", "east-1"), ("*", "west-2"))
QUOTA_CLASSES = ("cpu", "gpu:H100", "gpu:A100", "gpu:*", "gpu-share:H100")

quota_tables = st.lists(
    st.tuples(
        st.sampled_from(TENANTS),
        st.sampled_from(QUOTA_SCOPES),
        st.dictionaries(st.sampled_from(QUOTA_CLASSES), st.integers(0, 24), min_size=1, max_size=3),
    ),
    max_size=6,
)
part_vectors = st.dictionaries(
    st.sampled_from(("cpu", "gpu:H100", "gpu:A100", "gpu-share:H100")),
    st.integers(0, 8),
    min_size=1,
    max_size=3,
)
gang_splits = st.dictionaries(st.sampled_from(PLACES), part_vectors, min_size=1, max_size=3)


def _used_in(
    charged: Mapping[str, tuple[str, tuple[str, str], Mapping[str, int]]], tenant: str, region: str, sd: str
) -> dict[str, int]:
    out: dict[str, int] = {}
    for t, (r, s), vec in charged.values():
        if t == tenant and region in ("*", r) and sd in ("*", s):
            for c, n in expand(vec).items():
                out[c] = out.get(c, 0) + n
    return out


@PROPS
@given(
    quota_tables,
    st.lists(
        st.one_of(
            st.tuples(st.just("gang"), st.sampled_from(TENANTS), gang_splits),
            st.tuples(st.just("release"), st.integers(0, 50)),
        ),
        max_size=30,
    ),
)
def test_split_gangs_never_take_a_quota_past_its_limit(
    table: list[tuple[str, tuple[str, str], dict[str, int]]], script: list[tuple[Any, ...]]
) -> None:
    book = QuotaBook(DefaultPolicy.UNLIMITED)
    for tenant, (r, s), limits in table:
        book.set_quota(tenant, limits, r, s)
    charged: dict[str, tuple[str, tuple[str, str], Mapping[str, int]]] = {}
    gangs: dict[str, list[str]] = {}
    for n, op in enumerate(script):
        if op[0] == "release":
            if gangs:
                gid = sorted(gangs)[op[1] % len(gangs)]
                for aid in gangs.pop(gid):
                    assert book.release(aid) is not None
                    del charged[aid]
        else:
            _, tenant, parts = op
            verdict = book.admit_split(tenant, parts)
            # The oracle: each quota against the sum of the parts inside its scope.
            over = set()
            for q in book.quotas(tenant):
                asked: dict[str, int] = {}
                for (r, s), vec in parts.items():
                    if q.matches(r, s):
                        for c, k in expand(vec).items():
                            asked[c] = asked.get(c, 0) + k
                used = _used_in(charged, tenant, q.region, q.subdomain)
                over |= {
                    (q.name, c)
                    for c, lim in q.limits.items()
                    if asked.get(c, 0) and used.get(c, 0) + asked[c] > lim
                }
            if over:
                assert isinstance(verdict, Wait)
                assert {(v.quota.name, v.resource_class) for v in verdict.violations if v.quota} == over
                for v in verdict.violations:
                    assert v.used + v.requested > v.limit and v.message
            else:
                assert isinstance(verdict, Admit)
            event(f"gang over {len(parts)} place(s): {type(verdict).__name__}")
            # A gang is never admitted when one of its parts alone would wait (a part asks less).
            alone = [book.admit(tenant, vec, r, s) for (r, s), vec in parts.items()]
            if any(isinstance(a, Wait) for a in alone):
                assert isinstance(verdict, Wait)
            if isinstance(verdict, Admit):
                gid = f"g{n}"
                gangs[gid] = []
                for (r, s), vec in parts.items():
                    aid = f"{gid}/{s}"
                    book.charge(aid, tenant, r, s, vec)
                    charged[aid] = (tenant, (r, s), {c: k for c, k in vec.items() if k})
                    gangs[gid].append(aid)
        book.validate()
        # Quotas never change in this walk, so no quota is ever past its limit, in any class.
        for t in TENANTS:
            for q in book.quotas(t):
                used = book.used(t, q.region, q.subdomain)
                assert used == _used_in(charged, t, q.region, q.subdomain)
                for c, lim in q.limits.items():
                    assert used.get(c, 0) <= lim, (q, c, used)


# -- power: splits are chargeable as they stand --------------------------------------------------

POWER_REGIONS = ("east", "west", "north", "south")


@PROPS
@given(st.data())
def test_a_power_split_is_chargeable_and_an_over_changes_nothing(data: st.DataObject) -> None:
    budgets = {
        r: data.draw(st.sampled_from([0.0, 5.0, 20.0, 60.0, math.inf]), label=f"{r} kW")
        for r in POWER_REGIONS
    }
    book = PowerBook([RegionPower(r, kw) for r, kw in budgets.items()])
    for i in range(data.draw(st.integers(0, 6), label="prior charges")):
        r = data.draw(st.sampled_from(POWER_REGIONS))
        book.charge(f"prior-{i}", r, data.draw(st.integers(0, 30_000)))
    for r in POWER_REGIONS:
        if data.draw(st.booleans(), label=f"{r} metered"):
            book.observe(r, f"{r}-1", data.draw(st.integers(0, 40_000), label=f"{r} measured W"))
    for step in range(data.draw(st.integers(1, 6), label="splits")):
        # Zero-watt replicas: see test_a_zero_watt_split_agrees_with_check below.
        per = data.draw(st.integers(1, 12_000), label="replica W")
        n = data.draw(st.integers(1, 16), label="replicas")
        order = data.draw(st.permutations(POWER_REGIONS), label="order")
        max_regions = data.draw(st.none() | st.integers(1, 4), label="max regions")
        before = {r: (book.charged_w(r), book.in_use_w(r)) for r in POWER_REGIONS}
        split = book.split_by_power(per, n, order, max_regions=max_regions)
        if isinstance(split, Over):
            # All or nothing: a refused split changes nothing, and its reason has the numbers.
            assert {r: (book.charged_w(r), book.in_use_w(r)) for r in POWER_REGIONS} == before
            assert f"{n} replicas" in split.reason
            event("split refused")
            continue
        event(f"split over {len(split.parts)} region(s)")
        assert isinstance(split, Split)
        assert sum(k for _, k in split.parts) == n
        assert len({r for r, _ in split.parts}) == len(split.parts)
        assert max_regions is None or len(split.parts) <= max_regions
        assert [r for r, _ in split.parts] == [r for r in order if r in {p for p, _ in split.parts}]
        # Charging every part, one allocation per part, succeeds and keeps each region in budget.
        for r, k in split.parts:
            result = book.charge(f"split-{step}/{r}", r, k * per)
            assert isinstance(result, Fits), result
            assert book.charged_w(r) <= book.budget_w(r)
            assert book.in_use_w(r) <= book.budget_w(r) or before[r][1] > book.budget_w(r)
        book.validate()


def test_a_zero_watt_split_agrees_with_check() -> None:
    book = PowerBook([RegionPower("east", 0.0)])
    book.observe("east", "east-1", 1)  # measured 1 W > the 0 W budget
    # Found by the property above: zero-watt replicas used to be placed in a region already over
    # its budget, where check/charge refuse even 0 W.
    assert isinstance(book.check("east", 0), Over)
    assert isinstance(book.split_by_power(0, 1, ["east"]), Over)
    book.observe("east", "east-1", 0)
    split = book.split_by_power(0, 1, ["east"])
    assert isinstance(split, Split) and isinstance(book.check("east", 0), Fits)


# -- gangs: the coordinator under adversarial event streams -------------------------------------

JOBS = ("j0", "j1", "j2", "j3")
SDS = ("a", "b", "c")
ATTEMPTS = (1, 2, 3)
RIDS = [reservation_id(j, n, sd) for j in JOBS for n in ATTEMPTS for sd in SDS]
ONE_GPU = Demand.of(Resources(1000, GI, 1, "H100"))


def _rid_sd(rid: str) -> str:
    return rid.rsplit("/", 1)[1]


@dataclass
class _Attempt:
    parts: frozenset[str]
    reserved: set[str] = field(default_factory=set)  # sub-domains a Reserve went to
    commits: set[str] = field(default_factory=set)
    released: set[str] = field(default_factory=set)
    outcome: GangPlaced | GangFailed | None = None


@dataclass
class _Ledger:
    """Everything the coordinator said, per (job, attempt), and every answer it was told."""

    attempts: dict[tuple[str, int], _Attempt] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)  # rids some sub-domain said it holds
    committed: set[str] = field(default_factory=set)  # rids some sub-domain said it committed

    def attempt(self, rid: str) -> _Attempt:
        job, n, _ = rid.rsplit("/", 2)
        return self.attempts[(job, int(n))]

    def record(self, event: MasterEvent, commands: list[MasterCommand]) -> None:
        for cmd in commands:
            if isinstance(cmd, Reserve):
                a = self.attempt(cmd.reservation_id)
                assert cmd.subdomain in a.parts and cmd.subdomain not in a.reserved, cmd
                assert a.outcome is None and not a.released
                a.reserved.add(cmd.subdomain)
            elif isinstance(cmd, Commit):
                a = self.attempt(cmd.reservation_id)
                # Commit only once every part of the gang was accepted (this attempt's ids).
                job, n, _ = cmd.reservation_id.rsplit("/", 2)
                assert all(reservation_id(job, int(n), sd) in self.accepted for sd in a.parts), cmd
                assert a.reserved == a.parts and a.outcome is None
                a.commits.add(cmd.subdomain)
            elif isinstance(cmd, Release):
                key = cmd.reservation_id.rsplit("/", 2)
                a_or_none = self.attempts.get((key[0], int(key[1])))
                if a_or_none is None or cmd.subdomain != key[2] or cmd.subdomain not in a_or_none.parts:
                    # An id the coordinator never started (not a part of any gang), or an answer
                    # from the wrong sub-domain sent back where it came from: harmless.
                    continue
                a = a_or_none
                # A placed gang is never released by the coordinator (the job table owns it).
                assert not isinstance(a.outcome, GangPlaced), cmd
                a.released.add(cmd.subdomain)
            elif isinstance(cmd, GangPlaced):
                a = self.attempts[(cmd.job_id, cmd.attempt)]
                assert a.outcome is None, "two outcomes for one attempt"
                assert set(cmd.reservations) == a.parts == a.commits == a.reserved
                assert all(reservation_id(cmd.job_id, cmd.attempt, sd) in self.committed for sd in a.parts)
                assert not a.released
                a.outcome = cmd
            else:
                a = self.attempts[(cmd.job_id, cmd.attempt)]
                assert a.outcome is None, "two outcomes for one attempt"
                assert cmd.reason
                a.outcome = cmd
        # A failed gang has released every part it reserved by the end of the same batch.
        for a in self.attempts.values():
            if isinstance(a.outcome, GangFailed):
                assert a.reserved <= a.released, (a.reserved, a.released)


_gang_starts = st.tuples(
    st.just("start"),
    st.tuples(
        st.sampled_from(JOBS),
        st.sampled_from(ATTEMPTS),
        st.sets(st.sampled_from(SDS), min_size=1),
        st.sampled_from([1.0, 5.0, 30.0]),
        st.integers(0, 2),
    ),
)


def _gang_events() -> st.SearchStrategy[tuple[str, Any]]:
    rid = st.sampled_from(RIDS)
    # Answers mostly come from the sub-domain the id names; now and then from another one.
    addressed = rid.flatmap(lambda r: st.tuples(st.just(r), st.sampled_from([_rid_sd(r)] * 4 + list(SDS))))
    return st.one_of(
        _gang_starts,
        st.tuples(st.just("accepted"), addressed),
        st.tuples(st.just("committed"), addressed),
        # An honest answer to one of the Reserve/Commit messages still unanswered (index, verdict).
        st.tuples(
            st.just("answer"), st.tuples(st.integers(0, 20), st.sampled_from(["yes"] * 5 + ["no", "dup"]))
        ),
        st.tuples(
            st.just("answer"), st.tuples(st.integers(0, 20), st.sampled_from(["yes"] * 5 + ["no", "dup"]))
        ),
        st.tuples(
            st.just("answer"), st.tuples(st.integers(0, 20), st.sampled_from(["yes"] * 5 + ["no", "dup"]))
        ),
        st.tuples(st.just("refused"), st.tuples(addressed, st.booleans())),
        st.tuples(st.just("lost"), st.sampled_from(SDS)),
        st.tuples(st.just("tick"), st.sampled_from([0.1, 1.0, 4.0, 20.0])),
        st.tuples(st.just("cancel"), st.sampled_from(JOBS)),
        st.tuples(
            st.just("resync"),
            st.tuples(st.sampled_from(SDS), st.sets(rid, max_size=4), st.sets(rid, max_size=4)),
        ),
    )


@PROPS
@given(
    st.lists(_gang_starts, min_size=1, max_size=4),
    st.lists(_gang_events(), min_size=10, max_size=80),
)
def test_adversarial_answers_never_leave_a_partial_gang(
    first: list[tuple[str, Any]], rest: list[tuple[str, Any]]
) -> None:
    script = first + rest
    coord = Coordinator(commit_grace_s=5.0, tombstone_s=1e9)
    ledger = _Ledger()
    now = 0.0
    unanswered: list[Reserve | Commit] = []

    def feed(event: MasterEvent) -> None:
        if isinstance(event, (Accepted, Committed)) and _rid_sd(event.reservation_id) == event.subdomain:
            (ledger.accepted if isinstance(event, Accepted) else ledger.committed).add(event.reservation_id)
        if isinstance(event, Resync):
            ledger.accepted.update(r for r in event.held if _rid_sd(r) == event.subdomain)
            ledger.committed.update(r for r in event.committed if _rid_sd(r) == event.subdomain)
        commands = coord.handle(event)
        ledger.record(event, commands)
        unanswered.extend(c for c in commands if isinstance(c, (Reserve, Commit)))
        coord.validate()

    for kind, arg in script:
        if kind == "start":
            job, n, parts, timeout, prio = arg
            ledger.attempts.setdefault((job, n), _Attempt(frozenset(parts)))
            if ledger.attempts[(job, n)].parts != frozenset(parts):
                continue  # one attempt has one set of parts (ids are per attempt)
            feed(Start(job, n, dict.fromkeys(parts, ONE_GPU), now, timeout, prio))
        elif kind == "answer":
            i, verdict = arg
            if not unanswered:
                continue
            cmd = unanswered[i % len(unanswered)]
            if verdict != "dup":  # "dup": answered now and again later
                unanswered.remove(cmd)
            rid, sd = cmd.reservation_id, cmd.subdomain
            if verdict == "no":
                feed(Refused(rid, sd, "no room: 0 of 1 GPUs free", expired=isinstance(cmd, Commit)))
            else:
                feed(Accepted(rid, sd) if isinstance(cmd, Reserve) else Committed(rid, sd))
        elif kind in ("accepted", "committed"):
            rid, sd = arg
            feed(Accepted(rid, sd) if kind == "accepted" else Committed(rid, sd))
        elif kind == "refused":
            (rid, sd), expired = arg
            feed(Refused(rid, sd, "no room: 0 of 1 GPUs free", expired=expired))
        elif kind == "lost":
            feed(SubdomainLost(arg))
        elif kind == "tick":
            now += arg
            feed(Tick(now))
        elif kind == "cancel":
            feed(Cancel(arg))
        else:
            sd, held, committed = arg
            feed(Resync(sd, tuple(sorted(held)), tuple(sorted(committed))))
    # Every deadline passes: every gang ends, placed whole or failed with every part released.
    feed(Tick(now + 1e6))
    assert coord.active() == [] and coord.locks() == {}
    started = [a for a in ledger.attempts.values() if a.outcome is not None]
    assert len(started) == coord.stats.gangs_started
    assert coord.stats.gangs_placed == sum(isinstance(a.outcome, GangPlaced) for a in started)
    placed = sum(isinstance(a.outcome, GangPlaced) for a in started)
    event(f"gangs placed: {min(placed, 2)}{'+' if placed >= 2 else ''}")
    event(f"gangs failed: {min(len(started) - placed, 2)}{'+' if len(started) - placed >= 2 else ''}")
    for a in ledger.attempts.values():
        if isinstance(a.outcome, GangPlaced):
            assert a.commits == a.parts and not a.released
        elif isinstance(a.outcome, GangFailed):
            assert a.reserved <= a.released
        else:
            assert not a.reserved  # never started (a stale or repeated Start): nothing was sent


# -- training placement at federation scale ------------------------------------------------------

REGIONS8 = tuple(f"r{i}" for i in range(8))
SPEEDS = [Link(100, 2000), Link(400, 500), Link(3200, 50), Link(12800, 10), Link(12800, 10)]


def _shape(model: str, free: int, count: int) -> Shape:
    return Shape(model, free, count, Resources(free * 12_000, free * 128 * GI, free, model))


@st.composite
def federations(draw: st.DrawFn, most: int = 60) -> tuple[list[SubDomainView], LinkTable]:
    n = draw(st.integers(10, most), label="sub-domains")
    regions = REGIONS8[: draw(st.integers(2, 8), label="regions")]
    views = []
    for i in range(n):
        region = regions[i % len(regions)]
        shapes = []
        for model in draw(st.sets(st.sampled_from(("H100", "A100")), min_size=1), label=f"sd{i} models"):
            for free in draw(st.sets(st.sampled_from((1, 2, 4, 8)), min_size=1, max_size=3)):
                shapes.append(_shape(model, free, draw(st.integers(0, 3))))
        blocks: tuple[BlockView, ...] = ()
        if draw(st.booleans(), label=f"sd{i} blocks"):
            # Two blocks that split every shape's nodes between them.
            cut = [draw(st.integers(0, s.count)) for s in shapes]
            blocks = (
                BlockView("b0", tuple(replace(s, count=c) for s, c in zip(shapes, cut, strict=True))),
                BlockView(
                    "b1", tuple(replace(s, count=s.count - c) for s, c in zip(shapes, cut, strict=True))
                ),
            )
        views.append(SubDomainView(f"sd{i:02d}", region, tuple(shapes), blocks))
    table = {(a, b): draw(st.sampled_from(SPEEDS)) for a, b in itertools.combinations(regions, 2)}
    return views, LinkTable(table, intra_region=Link(12800, 0))


@st.composite
def training_jobs(draw: st.DrawFn, views: Sequence[SubDomainView]) -> TrainingShape:
    """A job; half the time one too large for any single sub-domain but not for the federation."""
    tp, pp = draw(st.sampled_from([1, 2, 4, 8])), draw(st.integers(1, 4))
    model = draw(st.sampled_from(["", "H100", "A100"]))
    room = [
        sum(s.count * (s.free_gpus // tp) for s in v.shapes if s.gpu_model == (model or "H100")) // pp
        for v in views
    ]
    if draw(st.booleans()) and sum(room) > max(room):
        dp = draw(st.integers(max(room) + 1, sum(room)), label="dp (split)")
    else:
        dp = draw(st.integers(1, 64), label="dp")
    return TrainingShape(
        tp=tp,
        pp=pp,
        dp=dp,
        params=draw(st.sampled_from([10**9, 7 * 10**9, 7 * 10**10])),
        bytes_per_param=2,
        t_iter_s=draw(st.sampled_from([0.5, 3.0, 10.0])),
        gpu_model=model,
        max_cross_domain_loss=draw(st.sampled_from([0.02, 0.1, 0.5])),
    )


@st.composite
def fed_cases(draw: st.DrawFn, most: int = 60) -> tuple[list[SubDomainView], LinkTable, TrainingShape]:
    views, links = draw(federations(most))
    return views, links, draw(training_jobs(views))


def _loss(job: TrainingShape, link: Link) -> float:
    return estimate_cross_loss(
        params=job.params,
        bytes_per_param=job.bytes_per_param,
        tp=job.tp,
        pp=job.pp,
        link=link,
        t_iter_s=job.t_iter_s,
    ).loss


def _check_rules(job: TrainingShape, views: Sequence[SubDomainView], links: LinkTable, p: Placement) -> None:
    """TP within a node, PP within a sub-domain, the loss rule: recomputed here, then check_placement."""
    by_id = {v.id: v for v in views}
    groups: dict[str, int] = {}
    for u in p.shape_use:
        s = by_id[u.subdomain_id].shapes[u.shape_index]
        assert s.gpu_model == p.gpu_model and s.free_gpus >= job.tp  # a TP group fits one node's free GPUs
        assert u.tp_groups <= u.nodes * (s.free_gpus // job.tp) and u.nodes <= s.count
        groups[u.subdomain_id] = groups.get(u.subdomain_id, 0) + u.tp_groups
    # Each sub-domain holds whole pipelines: pp TP groups per DP replica it was given.
    assert groups == {sd: n * job.pp for sd, n in p.per_subdomain.items()}
    assert sum(p.per_subdomain.values()) == job.dp
    chosen = sorted(p.per_subdomain)
    if len(chosen) > 1:
        pairs = [links.link(by_id[a].region, by_id[b].region) for a, b in itertools.combinations(chosen, 2)]
        assert all(link is not None for link in pairs), "a split over regions with no link"
        worst = max(_loss(job, link) for link in pairs if link is not None)
        assert p.loss is not None and worst <= job.max_cross_domain_loss
        assert worst == pytest.approx(p.loss.loss)
    check_placement(job, views, links, p)


@settings(PROPS, max_examples=40)
@given(fed_cases())
def test_federation_scale_plans_keep_tp_pp_and_the_loss_rule(
    case: tuple[list[SubDomainView], LinkTable, TrainingShape],
) -> None:
    views, links, job = case
    out = plan_training(job, views, links)
    if isinstance(out, Unplaceable):
        assert out.reason
        event(f"unplaceable: {out.rule}")
        return
    event(
        f"placed over {min(len(out.per_subdomain), 3)}{'+' if len(out.per_subdomain) >= 3 else ''} sub-domain(s)"
    )
    _check_rules(job, views, links, out)
    # Blocks are a preference only: without them the same job is placeable over as many sub-domains.
    flat = [replace(v, blocks=()) for v in views]
    bare = plan_training(job, flat, links)
    assert isinstance(bare, Placement), bare
    assert len(bare.per_subdomain) == len(out.per_subdomain)
    _check_rules(job, flat, links, bare)


@settings(PROPS, max_examples=40)
@given(fed_cases(most=25), st.data())
def test_check_placement_catches_every_single_rule_break(
    case: tuple[list[SubDomainView], LinkTable, TrainingShape], data: st.DataObject
) -> None:
    views, links, job = case
    p = plan_training(job, views, links)
    if isinstance(p, Unplaceable):
        job = replace(job, dp=1, max_cross_domain_loss=0.5)  # the smallest job of this shape
        p = plan_training(job, views, links)
    assume(isinstance(p, Placement))
    assert isinstance(p, Placement)
    check_placement(job, views, links, p)
    uses = list(p.shape_use)
    kind = data.draw(st.sampled_from(["pp", "tp", "overcommit", "model", "loss", "replicas"]), label="break")
    if kind == "pp":
        # One TP group of a pipeline moves to another sub-domain's shape: PP would span two.
        # The destination: a shape of the same model with room, in another sub-domain.
        dsts = [
            (v.id, i)
            for v in views
            if v.id != uses[0].subdomain_id
            for i, s in enumerate(v.shapes)
            if s.gpu_model == p.gpu_model and s.count and job.groups_per_node(s) >= 1
        ]
        assume(dsts)
        moved = replace(uses[0], tp_groups=uses[0].tp_groups - 1)
        sd, i = data.draw(st.sampled_from(dsts))
        extra = replace(uses[0], subdomain_id=sd, shape_index=i, nodes=1, tp_groups=1)
        broken = replace(p, shape_use=(moved, *uses[1:], extra))
    elif kind == "tp":
        # The same TP groups on one node fewer: some group would have to span two nodes.
        i = data.draw(st.integers(0, len(uses) - 1))
        u = uses[i]
        assume(u.nodes >= 1 and u.tp_groups > (u.nodes - 1) * u.groups_per_node)
        uses[i] = replace(u, nodes=u.nodes - 1)
        broken = replace(p, shape_use=tuple(uses))
    elif kind == "overcommit":
        # One more TP group than the shape's nodes have room for.
        i = data.draw(st.integers(0, len(uses) - 1))
        u = uses[i]
        shape = {v.id: v for v in views}[u.subdomain_id].shapes[u.shape_index]
        room = shape.count * u.groups_per_node
        uses[i] = replace(u, nodes=shape.count, tp_groups=room + 1)
        broken = replace(p, shape_use=tuple(uses))
    elif kind == "model":
        broken = replace(p, gpu_model="A100" if p.gpu_model == "H100" else "H100")
        job = replace(job, gpu_model=p.gpu_model)  # the job asked for the model it was given
    elif kind == "loss":
        # The same plan judged under links far too slow for any split.
        assume(len(p.per_subdomain) > 1)
        links = LinkTable(default=Link(0.001, 1e6), intra_region=Link(0.001, 1e6))
        broken = p
    else:
        # One DP replica fewer or more than the job has.
        job = replace(job, dp=job.dp + data.draw(st.sampled_from([-1, 1])))
        assume(job.dp >= 1)
        broken = p
    event(f"break: {kind}")
    with pytest.raises(AssertionError):
        check_placement(job, views, links, broken)


# -- preemption and the fair-share queue ---------------------------------------------------------

NOW = 50_000.0
PRIOS = (LOW, LOW, NORMAL, PriorityClass("batch-np", 50, False), HIGH, SYSTEM)
PRE_CLASSES = ("cpu", "gpu:H100", "gpu:A100")
pre_vectors = st.dictionaries(st.sampled_from(PRE_CLASSES), st.integers(1, 6), min_size=1, max_size=2)


@st.composite
def running_gangs(draw: st.DrawFn) -> list[RunningGang]:
    out = []
    for i in range(draw(st.integers(0, 9), label="running gangs")):
        sds = draw(st.sets(st.sampled_from(("east-1", "west-1")), min_size=1), label=f"g{i} sub-domains")
        out.append(
            RunningGang(
                gang_id=f"g{i}",
                job_id=f"job{i}",
                tenant=draw(st.sampled_from(TENANTS)),
                priority=draw(st.sampled_from(PRIOS)),
                started_at=float(draw(st.integers(0, int(NOW)))),
                allocations={sd: draw(pre_vectors) for sd in sorted(sds)},
                tasks=tuple(range(draw(st.integers(1, 4)))),
                checkpointed_at=draw(st.none() | st.floats(0, NOW)),
            )
        )
    return out


@PROPS
@given(
    running_gangs(),
    pre_vectors,
    st.sampled_from((NORMAL, HIGH, SYSTEM)),
    st.sampled_from(TENANTS),
    st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(PRIOS), st.floats(0, NOW)), max_size=6),
)
def test_requeued_victims_wait_behind_their_preemptor_and_never_preempt_it_back(
    gangs: list[RunningGang],
    demand: dict[str, int],
    prio: PriorityClass,
    tenant: str,
    waiting: list[tuple[str, PriorityClass, float]],
) -> None:
    plans = {
        sd: plan_preemption(PreemptionRequest("urgent", tenant, prio, sd, demand, {}), gangs, NOW)
        for sd in ("east-1", "west-1")
    }
    best = cheapest(plans.values())
    # cheapest: the minimum cost over every sub-domain's plan; None exactly when none is a plan.
    found = [p for p in plans.values() if isinstance(p, Preemption)]
    assert (best is None) == (not found)
    event("preemption" if best is not None else "no preemption")
    if best is None:
        for p in plans.values():
            assert isinstance(p, NoPreemption) and p.reason
        return
    assert best.cost == min(p.cost for p in found)
    for v in best.victims:
        assert v.gang.priority.preemptible and v.gang.priority.value < prio.value
    # The victims go back in line, with other waiting jobs and the preemptor itself.
    queue = FairShareQueue({"cpu": 100_000, "gpu:H100": 64, "gpu:A100": 64})
    for i, (t, pc, at) in enumerate(waiting):
        queue.push(PendingJob(f"w{i}", t, pc, at))
    requeued = [c.pending() for c in best.commands if isinstance(c, RequeueGang)]
    assert [j.job_id for j in requeued] == [v.gang.gang_id for v in best.victims]
    for job in requeued:
        queue.push(job)
    queue.push(PendingJob("urgent", tenant, prio, NOW, demand))
    queue.validate()
    order = [j.job_id for j in queue.order()]
    for job in requeued:
        assert order.index("urgent") < order.index(job.job_id), order
    # Once it runs, the preemptor is never a victim of a job it preempted.
    running = RunningGang("urgent-gang", "urgent", tenant, prio, NOW, {best.subdomain: dict(demand)}, (0,))
    for job in requeued:
        back = plan_preemption(
            PreemptionRequest(job.job_id, job.tenant, job.priority, best.subdomain, demand, {}),
            [running, *(g for g in gangs if g.gang_id != job.job_id)],
            NOW + 1,
        )
        if isinstance(back, Preemption):
            assert "urgent-gang" not in {v.gang.gang_id for v in back.victims}
            assert all(v.gang.priority.value < job.priority.value for v in back.victims)
