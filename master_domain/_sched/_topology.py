"""Topology-aware placement of a training job onto sub-domains, from their summaries (pure; no I/O).

The model
---------
A training job has ``tp · pp · dp`` ranks, one GPU each (``TrainingShape``). Its units:

* a **TP group** = ``tp`` GPUs of one model on **one node** (tensor parallelism needs NVLink),
  with ``tp · cpu_millis_per_gpu`` CPU and ``tp · memory_bytes_per_gpu`` memory on that node;
* a **DP replica** = ``pp`` TP groups (one per pipeline stage) inside **one sub-domain**;
* the job = ``dp`` replicas, in one sub-domain or — only along data parallelism — several, when
  the cross-link loss estimate (:mod:`._loss`) of every link involved stays within
  ``max_cross_domain_loss``.

The master sees no nodes, only each sub-domain's *shapes* (ready nodes grouped by GPU model, free
GPUs and CPU/memory buckets, with a count and the free vector of the roomiest node). Capacity is
counted per shape, never per node:

* a node of a shape with ``f`` free GPUs and ``c``/``m`` free CPU/memory (the shape's roomiest
  node's vector) hosts ``g = min(⌊f / tp⌋, ⌊c / (tp · cpu)⌋, ⌊m / (tp · mem)⌋)`` TP groups (a
  dimension the job does not ask for is not a limit), none when its largest free NVLink domain
  (``free_nvlink_gpus``) holds fewer than ``tp``; the shape's ``n`` nodes host ``n · g``.
  GPUs are exact (free GPUs are part of the shape's key); CPU and memory are the roomiest node's,
  so another node of the shape may have up to one bucket (2^¼, ~19%) less — the sub-domain's
  reservation answer is the final check, as for every placement from summaries;
* a sub-domain holds ``replicas = ⌊Σ_shapes n · g / pp⌋`` DP replicas (stages of one replica may
  sit on different nodes of the sub-domain, never in another one), capped by the GPU limits the
  caller passes (quota or power headroom: ``⌊limit / (tp · pp)⌋`` replicas);
* a job uses **one GPU model** throughout (``gpu_model`` when set, else the model chosen for the
  plan): synchronous training runs at the pace of its slowest rank, and ``t_iter_s`` is one
  model's iteration time. ``exclude_models`` are never used.

Rules, checked in this order; the first that blocks every model is what :class:`Unplaceable`
says, with its numbers: ``gpu_model`` (no node of an allowed model), ``tp`` (no node with room
for a TP group), ``pipeline`` (no sub-domain with room for one replica), ``capacity`` / ``limit``
(the federation, or the limits, hold fewer than ``dp`` replicas), ``loss`` (room exists only
split over links whose loss exceeds the budget: the job waits for room in one domain).

Preference among feasible plans: one sub-domain (the tightest that fits, preferring one where
every pipeline fits inside one block when blocks are known); else the fewest sub-domains; then
the fewest regions; then the lowest worst-link loss; then ids. Across GPU models (a job that
accepts several) the same order, then the least room left over, then the model's name.
Two chosen sub-domains in regions ``a`` and ``b`` cross ``links.link(a, b)`` (the intra-region
link when ``a == b``); the loss that must stay within budget is the worst over all chosen pairs.

Cost: O(models × sub-domains × shapes) to count capacity; a job that must split adds a search
over groups of *regions* (branch and bound over maximal groups of mutually compatible regions,
then region sets of growing size), each bounded (``MAX_SEARCH_STEPS``, ``MAX_REGION_SETS``);
never O(nodes). Measured on one core with 100 sub-domains × 18 shapes × 2 models: ~1 ms for a
job that fits one sub-domain or cannot fit at all; a split 2–4 ms over 10 regions, 4–10 ms over
30; the worst seen, a refused split over 100 regions, ~60 ms (the bound cut the search).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from domainos.errors import InvalidArgument
from domainos.resources import Resources, format_cpus, format_memory
from master_domain._sched._loss import (
    DEFAULT_ALPHA_LB,
    DEFAULT_K,
    DEFAULT_MAX_CROSS_DOMAIN_LOSS,
    LinkTable,
    LossEstimate,
    _finite,
    _positive_int,
    estimate_cross_loss,
    format_fraction,
    loss_terms,
)
from master_domain._summary import Shape, Summary

#: Rule names (``Unplaceable.rule``), in the order they are checked.
RULE_GPU_MODEL = "gpu_model"
RULE_TP = "tp"
RULE_PIPELINE = "pipeline"
RULE_CAPACITY = "capacity"
RULE_LIMIT = "limit"
RULE_LOSS = "loss"
_STAGE = {RULE_GPU_MODEL: 0, RULE_TP: 1, RULE_PIPELINE: 2, RULE_CAPACITY: 3, RULE_LIMIT: 3, RULE_LOSS: 4}

#: Most steps of a search over groups of mutually compatible regions, per model. The worst case is
#: exponential in regions; federations have few, and branches that cannot beat the best are cut.
MAX_SEARCH_STEPS = 2048
#: Most region sets examined when looking for the fewest regions at the fewest sub-domains.
MAX_REGION_SETS = 2048


@dataclass(frozen=True, slots=True)
class TrainingShape:
    """What placement needs to know of a training job.

    ``tp``, ``pp``, ``dp``: tensor, pipeline and data parallel degrees (one GPU per rank);
    ``params``: model parameters (count); ``bytes_per_param``: bytes per gradient element
    all-reduced (2 for bf16); ``t_iter_s``: one iteration's compute time (s); ``gpu_model``:
    the model required ("" = any allowed model, one for the whole job); ``exclude_models``:
    never used; ``max_cross_domain_loss``: the largest per-iteration loss (fraction, 0.02 = 2%)
    a split over sub-domains may cost; ``cpu_millis_per_gpu`` / ``memory_bytes_per_gpu``: what
    each rank's task needs besides its GPU (millicores, bytes; 0 = nothing).
    """

    tp: int
    pp: int
    dp: int
    params: int
    bytes_per_param: float
    t_iter_s: float
    gpu_model: str = ""
    exclude_models: frozenset[str] = frozenset()
    max_cross_domain_loss: float = DEFAULT_MAX_CROSS_DOMAIN_LOSS
    cpu_millis_per_gpu: int = 0
    memory_bytes_per_gpu: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp", "params"):
            _positive_int(getattr(self, name), name)
        _finite(self.bytes_per_param, "bytes_per_param", low=0, low_inclusive=False)
        _finite(self.t_iter_s, "t_iter_s", low=0, low_inclusive=False)
        _finite(self.max_cross_domain_loss, "max_cross_domain_loss", low=0, low_inclusive=True, high=1.0)
        for name in ("cpu_millis_per_gpu", "memory_bytes_per_gpu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"must be a whole number >= 0, got {value!r}", field=name)
        if not isinstance(self.exclude_models, frozenset):
            raise InvalidArgument("must be a frozenset of model names", field="exclude_models")
        if self.gpu_model and self.gpu_model in self.exclude_models:
            raise InvalidArgument(
                f"{self.gpu_model!r} is both required (gpu_model) and excluded", field="exclude_models"
            )

    @property
    def gpus_per_node_needed(self) -> int:
        """GPUs one node must have free for a TP group: always ``tp``."""
        return self.tp

    @property
    def gpus_per_replica(self) -> int:
        """GPUs of one DP replica (``tp · pp``), all inside one sub-domain."""
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        """GPUs of the whole job (``tp · pp · dp``)."""
        return self.tp * self.pp * self.dp

    def allows(self, model: str) -> bool:
        """True when a GPU of ``model`` may run this job's ranks."""
        if not model or model in self.exclude_models:
            return False
        return not self.gpu_model or model == self.gpu_model

    def tp_group_request(self, model: str) -> Resources:
        """One TP group as one request that must fit on one node (``tp`` GPUs of ``model``)."""
        return Resources(
            self.tp * self.cpu_millis_per_gpu, self.tp * self.memory_bytes_per_gpu, self.tp, model
        )

    def groups_per_node(self, shape: Shape) -> int:
        """TP groups one node of ``shape`` hosts (0 when its model is not allowed)."""
        if shape.count <= 0 or not self.allows(shape.gpu_model):
            return 0
        if shape.free_nvlink_gpus < self.tp:
            return 0  # a TP group needs its GPUs inside one NVLink domain
        g = shape.free_gpus // self.tp
        if self.cpu_millis_per_gpu:
            g = min(g, shape.best.cpu_millis // (self.tp * self.cpu_millis_per_gpu))
        if self.memory_bytes_per_gpu:
            g = min(g, shape.best.memory_bytes // (self.tp * self.memory_bytes_per_gpu))
        return max(g, 0)

    def describe(self) -> str:
        model = self.gpu_model or "any"
        extra = f", excluding {', '.join(sorted(self.exclude_models))}" if self.exclude_models else ""
        return f"TP {self.tp} × PP {self.pp} × DP {self.dp} = {self.gpus} GPUs ({model}{extra})"


@dataclass(frozen=True, slots=True)
class BlockView:
    """The shapes of one block (a switch tier) of a sub-domain; used only as a preference."""

    id: str
    shapes: tuple[Shape, ...] = ()


@dataclass(frozen=True, slots=True)
class SubDomainView:
    """A sub-domain as the planner sees it: its id, region and node shapes (from its summary).

    ``blocks`` (optional) split the same nodes by block; pipelines that fit inside one block are
    preferred, capacity is always counted from ``shapes``.
    """

    id: str
    region: str
    shapes: tuple[Shape, ...] = ()
    blocks: tuple[BlockView, ...] = ()

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidArgument("must not be empty", field="subdomain.id")
        if not self.region:
            raise InvalidArgument(f"sub-domain {self.id} has no region", field="subdomain.region")
        for i, s in enumerate(self.shapes + tuple(s for b in self.blocks for s in b.shapes)):
            if s.count < 0 or s.free_gpus < 0:
                raise InvalidArgument(
                    f"count and free_gpus must be >= 0, got {s.count} and {s.free_gpus}",
                    field=f"subdomain[{self.id}].shapes[{i}]",
                )

    @classmethod
    def from_summary(
        cls, subdomain_id: str, region: str, summary: Summary, blocks: tuple[BlockView, ...] = ()
    ) -> SubDomainView:
        """The view of a sub-domain's last summary."""
        return cls(subdomain_id, region, summary.shapes, blocks)


@dataclass(frozen=True, slots=True)
class GpuLimit:
    """At most ``gpus`` GPUs of this job in a region or sub-domain; ``reason`` says why (quota, power)."""

    gpus: int
    reason: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise InvalidArgument(f"must be a whole number >= 0, got {self.gpus!r}", field="limit.gpus")

    def describe(self, where: str) -> str:
        return f"{where} ≤ {self.gpus} GPUs" + (f" ({self.reason})" if self.reason else "")


#: GPU limits by region or sub-domain id: one mapping for every model, or a function of the GPU
#: model (quotas and power headroom are per model: a 700 W H100 and a 400 W A100 differ).
Limits = Mapping[str, GpuLimit] | Callable[[str], Mapping[str, GpuLimit]]


def _resolve(limits: Limits | None, model: str) -> Mapping[str, GpuLimit]:
    if limits is None:
        return {}
    return limits(model) if callable(limits) else limits


@dataclass(frozen=True, slots=True)
class ShapeUse:
    """TP groups a placement takes from one shape of one sub-domain (in-flight accounting).

    ``shape_index`` indexes the view's ``shapes``; ``nodes`` of the shape host ``tp_groups``
    groups, each group whole on one node (at most ``groups_per_node`` per node).
    """

    subdomain_id: str
    shape_index: int
    gpu_model: str
    free_gpus: int
    groups_per_node: int
    nodes: int
    tp_groups: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a training job goes: ``per_subdomain`` maps sub-domain ids to DP replicas.

    ``gpu_model``: the one model of every rank; ``loss``: the worst link's estimate when the job
    spans sub-domains (``None`` in one), ``worst_link`` its two regions; ``reasons``: why, in
    words with numbers; ``shape_use``: the TP groups taken per shape (for in-flight accounting
    until the next summaries). Replicas are listed in DP-rank order: sub-domain by sub-domain.
    """

    per_subdomain: Mapping[str, int]
    gpu_model: str
    loss: LossEstimate | None
    worst_link: tuple[str, str] | None
    regions: tuple[str, ...]
    reasons: tuple[str, ...]
    shape_use: tuple[ShapeUse, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_subdomain", MappingProxyType(dict(self.per_subdomain)))

    @property
    def subdomains(self) -> tuple[str, ...]:
        return tuple(self.per_subdomain)

    def dp_ranks(self) -> dict[str, range]:
        """DP replica indexes per sub-domain, contiguous so the all-reduce crosses each link once."""
        out: dict[str, range] = {}
        start = 0
        for sd, n in self.per_subdomain.items():
            out[sd] = range(start, start + n)
            start += n
        return out

    def explain(self) -> str:
        lines = list(self.reasons)
        if self.loss is not None:
            lines.append("loss model: " + self.loss.explain())
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """The job cannot be placed now; ``reason`` names the rule that blocked it, with numbers."""

    reason: str
    rule: str
    #: The estimate that blocked it (rule ``loss``), for ``explain``.
    loss: LossEstimate | None = None


# -- capacity ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cap:
    """One sub-domain's room for this job on one GPU model."""

    view: SubDomainView
    uses: list[tuple[int, int, int]]  # (shape index, groups per node, nodes), tightest first
    slots: int
    raw: int  # replicas by capacity alone
    replicas: int  # after the sub-domain's and its region's limits
    block_replicas: int
    limited_by: str  # the limit that lowered ``replicas``, "" when none did


def _slots(job: TrainingShape, model: str, shapes: Iterable[Shape]) -> int:
    return sum(s.count * job.groups_per_node(s) for s in shapes if s.gpu_model == model)


def _capacity(
    job: TrainingShape,
    model: str,
    view: SubDomainView,
    sd_limit: GpuLimit | None,
    region_limit: GpuLimit | None,
) -> _Cap:
    uses: list[tuple[int, int, int]] = []
    for i, s in enumerate(view.shapes):
        if s.gpu_model != model:
            continue
        g = job.groups_per_node(s)
        if g > 0:
            uses.append((i, g, s.count))
    # Tightest first (fewest free GPUs, then least CPU/memory), as the sub-domain packs: the
    # roomy nodes stay whole for larger groups.
    uses.sort(
        key=lambda u: (
            view.shapes[u[0]].free_gpus,
            view.shapes[u[0]].best.cpu_millis,
            view.shapes[u[0]].best.memory_bytes,
            u[0],
        )
    )
    slots = sum(g * n for _, g, n in uses)
    raw = slots // job.pp
    replicas, limited_by = raw, ""
    for where, limit in ((f"sub-domain {view.id}", sd_limit), (f"region {view.region}", region_limit)):
        if limit is not None and limit.gpus // job.gpus_per_replica < replicas:
            replicas, limited_by = limit.gpus // job.gpus_per_replica, limit.describe(where)
    block_replicas = sum(_slots(job, model, b.shapes) // job.pp for b in view.blocks)
    return _Cap(view, uses, slots, raw, replicas, min(block_replicas, raw), limited_by)


def _fill(job: TrainingShape, cap: _Cap, replicas: int) -> list[ShapeUse]:
    groups = replicas * job.pp
    out: list[ShapeUse] = []
    for i, g, n in cap.uses:
        if groups <= 0:
            break
        take = min(groups, g * n)
        s = cap.view.shapes[i]
        out.append(ShapeUse(cap.view.id, i, s.gpu_model, s.free_gpus, g, -(-take // g), take))
        groups -= take
    assert groups <= 0, f"{cap.view.id}: {groups} TP groups left over"
    return out


# -- the search over sub-domain sets -------------------------------------------------------------


class _Search:
    """Sets of sub-domains for one model; region-pair losses are computed when first needed."""

    def __init__(
        self,
        job: TrainingShape,
        caps: list[_Cap],
        links: LinkTable,
        region_limits: Mapping[str, GpuLimit],
        k: float,
        alpha_lb: float,
    ) -> None:
        self.job, self.links, self.k, self.alpha_lb = job, links, k, alpha_lb
        self.budget = job.max_cross_domain_loss
        by_region: dict[str, list[_Cap]] = {}
        for c in sorted(caps, key=lambda c: (-c.replicas, c.view.id)):
            if c.replicas > 0:
                by_region.setdefault(c.view.region, []).append(c)
        self.regions = sorted(by_region)
        self._loss: dict[tuple[str, str], float | None] = {}
        # Replicas each sub-domain can add, region caps applied, largest first. ``tight``: a
        # region whose own link is over budget adds one sub-domain (two of its sub-domains would
        # cross that link); ``loose`` ignores the loss rule. Per region a sequence never
        # increases, so the first n entries of a merge are the most any n sub-domains hold.
        self.tight: dict[str, list[tuple[int, _Cap]]] = {}
        self.loose: dict[str, list[tuple[int, _Cap]]] = {}
        for r, items in by_region.items():
            cap = region_limits[r].gpus // job.gpus_per_replica if r in region_limits else math.inf
            self.loose[r] = self._capped(items, cap)
            self.tight[r] = self.loose[r] if self.ok(r, r) else self._capped(items[:1], cap)
        self.weight = {r: sum(t for t, _ in self.tight[r]) for r in self.regions}

    @staticmethod
    def _capped(items: list[_Cap], cap: float) -> list[tuple[int, _Cap]]:
        out: list[tuple[int, _Cap]] = []
        for c in items:
            take = int(min(c.replicas, cap))
            if take <= 0:
                break
            out.append((take, c))
            cap -= take
        return out

    def loss(self, a: str, b: str) -> float | None:
        """The loss fraction over the ``a``–``b`` link (``None``: no link)."""
        key = (a, b) if a <= b else (b, a)
        if key not in self._loss:
            link = self.links.link(a, b)
            j = self.job
            self._loss[key] = (
                None
                if link is None
                else loss_terms(
                    j.params, j.bytes_per_param, j.tp, j.pp, link, j.t_iter_s, self.k, self.alpha_lb
                )[-1]
            )
        return self._loss[key]

    def ok(self, a: str, b: str) -> bool:
        value = self.loss(a, b)
        return value is not None and value <= self.budget

    def estimate(self, a: str, b: str) -> LossEstimate | None:
        link = self.links.link(a, b)
        if link is None:
            return None
        j = self.job
        return estimate_cross_loss(
            params=j.params,
            bytes_per_param=j.bytes_per_param,
            tp=j.tp,
            pp=j.pp,
            link=link,
            t_iter_s=j.t_iter_s,
            k=self.k,
            alpha_lb=self.alpha_lb,
        )

    def fewest(self, regions: Iterable[str], *, loose: bool = False) -> list[tuple[int, _Cap]] | None:
        """The fewest sub-domains of ``regions`` that hold ``dp`` replicas, with their shares."""
        table = self.loose if loose else self.tight
        merged = sorted((e for r in regions for e in table[r]), key=lambda e: (-e[0], e[1].view.id))
        chosen: list[tuple[int, _Cap]] = []
        need = self.job.dp
        for take, c in merged:
            chosen.append((min(take, need), c))
            need -= take
            if need <= 0:
                return chosen
        return None

    def total(self, regions: Iterable[str], *, loose: bool = False) -> int:
        table = self.loose if loose else self.tight
        return sum(t for r in regions for t, _ in table[r])

    def worst(self, chosen: Sequence[tuple[int, _Cap]]) -> tuple[float, tuple[str, str]]:
        """The worst link among the chosen sub-domains (``inf`` when a pair has no link)."""
        regions = [c.view.region for _, c in chosen]
        pairs = sorted({(a, b) if a <= b else (b, a) for a, b in itertools.combinations(regions, 2)})
        assert pairs, "a split has at least two sub-domains"
        values = [(v if (v := self.loss(a, b)) is not None else math.inf, (a, b)) for a, b in pairs]
        return max(values, key=lambda t: t[0])

    def adjacency(self) -> dict[str, set[str]]:
        return {r: {o for o in self.regions if o != r and self.ok(r, o)} for r in self.regions}

    def best_split(self) -> tuple[list[tuple[int, _Cap]] | None, bool]:
        """The fewest sub-domains over every group of mutually compatible regions.

        Bron–Kerbosch over the regions (with pivot) enumerates the maximal groups; a branch is
        cut when even all the regions it could still include need as many sub-domains as the
        best found (or cannot hold ``dp``). Fewer sub-domains never come from a smaller group,
        so maximal groups suffice. Returns the set and whether the search ran to the end.
        """
        adj = self.adjacency()
        best: list[tuple[int, _Cap]] | None = None
        steps = 0

        def expand(group: set[str], cand: set[str], done: set[str]) -> None:
            nonlocal best, steps
            steps += 1
            if steps > MAX_SEARCH_STEPS:
                return
            union = group | cand
            if sum(self.weight[r] for r in union) < self.job.dp:
                return  # cheaper than ``fewest`` and often enough
            bound = self.fewest(union)
            if bound is None or (best is not None and len(bound) >= len(best)):
                return
            if not cand:
                if not done:  # a maximal group: ``bound`` is its own answer
                    best = bound
                return
            pivot = max(sorted(cand | done), key=lambda u: len(adj[u] & cand))
            for v in sorted(cand - adj[pivot]):
                expand(group | {v}, cand & adj[v], done & adj[v])
                cand = cand - {v}
                done = done | {v}

        expand(set(), set(self.regions), set())
        return best, steps <= MAX_SEARCH_STEPS

    def most_within_budget(self) -> tuple[int, bool]:
        """The most replicas any group of mutually compatible regions holds (branch and bound)."""
        adj = self.adjacency()
        order = sorted(self.regions, key=lambda r: (-self.weight[r], r))
        best, steps = 0, 0

        def expand(held: int, cand: set[str]) -> None:
            nonlocal best, steps
            steps += 1
            if steps > MAX_SEARCH_STEPS:
                return
            best = max(best, held)
            left = sum(self.weight[r] for r in cand)
            for v in order:
                if v not in cand:
                    continue
                if held + left <= best:
                    return
                expand(held + self.weight[v], cand & adj[v])
                cand = cand - {v}
                left -= self.weight[v]

        expand(0, set(self.regions))
        return best, steps <= MAX_SEARCH_STEPS


# -- planning ------------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True, slots=True)
class _Planned:
    key: tuple[int, int, int, float, int, str]
    placement: Placement


@dataclass(frozen=True, slots=True)
class _Blocked:
    stage: int
    unplaceable: Unplaceable


def _blocked(rule: str, text: str, loss: LossEstimate | None = None) -> _Blocked:
    return _Blocked(_STAGE[rule], Unplaceable(text, rule, loss))


def _tp_reason(job: TrainingShape, model: str, views: Sequence[SubDomainView]) -> str:
    need = f"{job.tp} {model} GPUs"
    extras = []
    if job.cpu_millis_per_gpu:
        extras.append(f"{format_cpus(job.tp * job.cpu_millis_per_gpu)} cpus")
    if job.memory_bytes_per_gpu:
        extras.append(f"{format_memory(job.tp * job.memory_bytes_per_gpu)} memory")
    if extras:
        need += " with " + " and ".join(extras)
    most, where = -1, ""
    most_nvl, where_nvl = -1, ""
    roomy: list[tuple[int, int, str]] = []
    for v in views:
        for s in v.shapes:
            if s.gpu_model != model or s.count <= 0:
                continue
            if s.free_gpus > most:
                most, where = s.free_gpus, v.id
            if s.free_gpus >= job.tp and s.free_nvlink_gpus > most_nvl:
                most_nvl, where_nvl = s.free_nvlink_gpus, v.id
            if s.free_gpus >= job.tp and s.free_nvlink_gpus >= job.tp:
                roomy.append((s.best.cpu_millis, s.best.memory_bytes, v.id))
    head = f"a TP group needs {need} free on one node, in one NVLink domain (TP never spans either)"
    if not roomy:
        if most >= job.tp:
            return (
                f"{head}; {model} nodes with {job.tp}+ free GPUs have at most {most_nvl} free in one "
                f"NVLink domain ({where_nvl})"
            )
        return f"{head}; the most free on one {model} node is {max(most, 0)} ({where or 'none ready'})"
    cpu, mem, sd = max(roomy)
    return (
        f"{head}; nodes with {job.tp}+ free {model} GPUs have at most {format_cpus(cpu)} cpus and "
        f"{format_memory(mem)} memory free ({sd})"
    )


def _limit_notes(caps: Iterable[_Cap]) -> list[str]:
    return sorted({c.limited_by for c in caps if c.limited_by})


def _plan_model(
    job: TrainingShape,
    model: str,
    views: Sequence[SubDomainView],
    links: LinkTable,
    region_limits: Mapping[str, GpuLimit],
    subdomain_limits: Mapping[str, GpuLimit],
    k: float,
    alpha_lb: float,
) -> _Planned | _Blocked:
    gpr = job.gpus_per_replica
    unit = f"{_plural(job.dp, 'DP replica')} of PP {job.pp} × TP {job.tp} = {gpr} {model} GPUs"
    caps = [_capacity(job, model, v, subdomain_limits.get(v.id), region_limits.get(v.region)) for v in views]
    if not any(c.slots for c in caps):
        return _blocked(RULE_TP, _tp_reason(job, model, views))
    by_id = sorted(caps, key=lambda c: c.view.id)
    most = max(by_id, key=lambda c: c.slots)
    if not any(c.raw for c in caps):
        return _blocked(
            RULE_PIPELINE,
            f"a DP replica (PP {job.pp} stages × TP {job.tp} = {gpr} {model} GPUs) must sit in one "
            f"sub-domain (PP never spans sub-domains); the most any holds is "
            f"{_plural(most.slots, 'TP group')} of {job.tp} ({most.view.id}), "
            f"{job.pp - most.slots} short",
        )
    notes = _limit_notes(caps)
    limits_text = f"; limits: {', '.join(notes)}" if notes else ""
    tp_line = (
        f"each TP group ({job.tp} {model} GPUs) on one node, each replica's {job.pp} "
        f"pipeline stages in one sub-domain"
    )

    # One sub-domain: the tightest that fits (blocks first), no cross link at all.
    single = [c for c in caps if c.replicas >= job.dp]
    if single:

        def single_key(c: _Cap) -> tuple[int, int, str]:
            miss = max(0, job.dp - c.block_replicas) if c.view.blocks else 0
            return (miss, c.replicas - job.dp, c.view.id)

        best = min(single, key=single_key)
        miss, left, _ = single_key(best)
        reasons = [
            f"{unit} in one sub-domain: {best.view.id} ({best.view.region}) has room for "
            f"{_plural(best.replicas, 'replica')} ({best.slots} TP-group node slots)",
            tp_line,
        ]
        if best.view.blocks:
            reasons.append(
                f"{min(job.dp, best.block_replicas)} of {job.dp} pipelines fit inside one block of {best.view.id}"
            )
        reasons.extend(f"limit: {n}" for n in notes if best.limited_by == n)
        placement = Placement(
            per_subdomain={best.view.id: job.dp},
            gpu_model=model,
            loss=None,
            worst_link=None,
            regions=(best.view.region,),
            reasons=tuple(reasons),
            shape_use=tuple(_fill(job, best, job.dp)),
        )
        return _Planned((1, 1, miss, 0.0, left, model), placement)

    search = _Search(job, caps, links, region_limits, k, alpha_lb)
    largest = max(by_id, key=lambda c: c.replicas)
    one = f"the most in one sub-domain is {largest.view.id} with {largest.replicas} of {job.dp}"
    room = search.total(search.regions, loose=True)
    if room < job.dp:
        per = ", ".join(f"{c.view.id}: {c.replicas}" for c in caps if c.replicas)
        rule = RULE_LIMIT if notes and sum(c.raw for c in caps) >= job.dp else RULE_CAPACITY
        return _blocked(
            rule,
            f"needs {unit}; the federation has room for {_plural(room, 'replica')}"
            + (f" ({per})" if per else "")
            + f"{limits_text}: waiting for capacity",
        )

    best_set, complete = search.best_split()
    if best_set is None:
        return _loss_blocked(job, search, one, limits_text, complete)

    # The fewest regions at the fewest sub-domains, then the lowest worst-link loss: region sets
    # of growing size, the roomiest regions first, a bounded number in all.
    chosen = best_set
    ordered = sorted(search.regions, key=lambda r: (-search.weight[r], r))
    tried = 0
    for m in range(1, min(len(best_set), len(ordered)) + 1):
        found_m: tuple[tuple[float, tuple[str, ...]], list[tuple[int, _Cap]]] | None = None
        for combo in itertools.combinations(ordered, m):
            tried += 1
            if tried > MAX_REGION_SETS:
                break
            if sum(search.weight[r] for r in combo) < job.dp:
                continue
            if not all(search.ok(a, b) for a, b in itertools.combinations(combo, 2)):
                continue
            found = search.fewest(combo)
            if found is None or len(found) != len(best_set):
                continue
            fk = (search.worst(found)[0], tuple(sorted(c.view.id for _, c in found)))
            if found_m is None or fk < found_m[0]:
                found_m = (fk, found)
        if found_m is not None:
            chosen = found_m[1]
            break
        if tried > MAX_REGION_SETS:
            break
    worst, link = search.worst(chosen)
    est = search.estimate(*link)
    assert est is not None and est.loss == worst <= job.max_cross_domain_loss, "split within budget"
    regions = tuple(sorted({c.view.region for _, c in chosen}))
    shares = ", ".join(f"{c.view.id} ({c.view.region}) {n}" for n, c in chosen)
    reasons = [
        f"{unit}: no single sub-domain has room ({one}{limits_text})",
        f"DP split over {_plural(len(chosen), 'sub-domain')} in {_plural(len(regions), 'region')}: {shares}",
        f"worst link {link[0]}–{link[1]} ({est.link.describe()}): loss {est.brief()} ≤ budget "
        f"{format_fraction(job.max_cross_domain_loss)}",
        tp_line,
    ]
    placement = Placement(
        per_subdomain={c.view.id: n for n, c in chosen},
        gpu_model=model,
        loss=est,
        worst_link=link,
        regions=regions,
        reasons=tuple(reasons),
        shape_use=tuple(u for n, c in chosen for u in _fill(job, c, n)),
    )
    left = sum(c.replicas for _, c in chosen) - job.dp
    return _Planned((len(chosen), len(regions), 0, est.loss, left, model), placement)


def _loss_blocked(
    job: TrainingShape, search: _Search, one: str, limits_text: str, complete: bool
) -> _Blocked:
    """Room exists only split over links over budget: name the split it would take, with numbers."""
    loose = search.fewest(search.regions, loose=True)
    assert loose is not None, "room was checked before"
    _, (a, b) = search.worst(loose)
    sd_a = next(c.view.id for _, c in loose if c.view.region == a)
    sd_b = next(c.view.id for _, c in loose if c.view.region == b and c.view.id != sd_a)
    within, exact = search.most_within_budget()
    cut = "" if complete and exact else f" (search stopped after {MAX_SEARCH_STEPS} steps)"
    tail = (
        f"; {one}; the largest split within budget holds {min(within, job.dp)} of {job.dp}{limits_text}{cut}"
    )
    est = search.estimate(a, b)
    if est is not None and est.loss <= job.max_cross_domain_loss:  # only when the search was cut
        text = (
            f"no split within budget was found in {MAX_SEARCH_STEPS} search steps over "
            f"{len(search.regions)} regions: waiting for room in one domain{tail}"
        )
    elif est is None:
        text = (
            f"DP across {sd_a} ({a}) and {sd_b} ({b}) needs a link between {a} and {b}, and none is "
            f"declared: waiting for room in one domain{tail}"
        )
    else:
        text = (
            f"DP across {sd_a} and {sd_b} would lose {est.brief()} over the {a}–{b} link "
            f"({est.link.describe()}) > budget {format_fraction(job.max_cross_domain_loss)}: "
            f"waiting for room in one domain{tail}"
        )
    return _blocked(RULE_LOSS, text, est)


def plan_training(
    job: TrainingShape,
    subdomains: Sequence[SubDomainView],
    links: LinkTable,
    *,
    k: float = DEFAULT_K,
    alpha_lb: float = DEFAULT_ALPHA_LB,
    region_limits: Limits | None = None,
    subdomain_limits: Limits | None = None,
) -> Placement | Unplaceable:
    """Place ``job`` on ``subdomains`` by the rules of this module, or say which rule blocks it.

    ``links``: the inter-region links; ``k``, ``alpha_lb``: the loss model's factors;
    ``region_limits`` / ``subdomain_limits``: the most GPUs of this job each region / sub-domain
    may take (quota or power headroom computed by the caller; absent = no limit), as one mapping
    or as a function of the GPU model (called once per candidate model). Pure: the same
    inputs give the same answer. Raises :class:`InvalidArgument` for duplicate sub-domain ids.
    """
    seen: set[str] = set()
    for v in subdomains:
        if v.id in seen:
            raise InvalidArgument(f"duplicate sub-domain {v.id!r}", field="subdomains")
        seen.add(v.id)
    present = sorted({s.gpu_model for v in subdomains for s in v.shapes if s.gpu_model and s.count > 0})
    models = [m for m in present if job.allows(m)]
    if not models:
        seen_text = ", ".join(present) or "none"
        if job.gpu_model:
            text = f"no ready node has {job.gpu_model} GPUs (models ready: {seen_text})"
        else:
            excluded = ", ".join(sorted(job.exclude_models)) or "none"
            text = f"no ready node has a GPU model this job accepts (excluded: {excluded}; models ready: {seen_text})"
        return Unplaceable(text, RULE_GPU_MODEL)
    placed: list[_Planned] = []
    blocked: list[tuple[str, _Blocked]] = []
    for model in models:
        out = _plan_model(
            job,
            model,
            subdomains,
            links,
            _resolve(region_limits, model),
            _resolve(subdomain_limits, model),
            k,
            alpha_lb,
        )
        if isinstance(out, _Planned):
            placed.append(out)
        else:
            blocked.append((model, out))
    if placed:
        return min(placed, key=lambda p: p.key).placement
    top = max(b.stage for _, b in blocked)
    worst = [(model, b.unplaceable) for model, b in blocked if b.stage == top]
    if len(worst) == 1:
        return worst[0][1]
    return Unplaceable("; ".join(f"{model}: {u.reason}" for model, u in worst), worst[0][1].rule)


# -- invariants ----------------------------------------------------------------------------------


def check_placement(
    job: TrainingShape,
    subdomains: Sequence[SubDomainView],
    links: LinkTable,
    placement: Placement,
    *,
    k: float = DEFAULT_K,
    alpha_lb: float = DEFAULT_ALPHA_LB,
    region_limits: Limits | None = None,
    subdomain_limits: Limits | None = None,
) -> None:
    """Check a placement against the rules; raise ``AssertionError`` naming the first broken one.

    Every replica placed, one allowed model, no shape over-committed, every TP group on one node,
    every pipeline inside one sub-domain, limits kept, and a split only within the loss budget.
    """
    views = {v.id: v for v in subdomains}
    per = placement.per_subdomain
    assert sum(per.values()) == job.dp, f"{sum(per.values())} replicas placed, job has {job.dp}"
    assert all(n > 0 for n in per.values()), f"empty share in {dict(per)}"
    assert set(per) <= set(views), f"unknown sub-domains {set(per) - set(views)}"
    assert job.allows(placement.gpu_model), f"model {placement.gpu_model!r} is not allowed"
    groups: dict[str, int] = dict.fromkeys(per, 0)
    taken: dict[tuple[str, int], int] = {}
    for u in placement.shape_use:
        assert u.subdomain_id in per, f"shape use in {u.subdomain_id}, which has no replica"
        shape = views[u.subdomain_id].shapes[u.shape_index]
        g = job.groups_per_node(shape)
        assert shape.gpu_model == placement.gpu_model, f"{u}: model {shape.gpu_model}"
        assert g >= 1 and u.groups_per_node == g, f"{u}: a node of this shape hosts {g} TP groups"
        assert 1 <= u.nodes <= shape.count, f"{u}: {u.nodes} nodes of {shape.count}"
        assert u.tp_groups <= u.nodes * g, f"{u}: {u.tp_groups} TP groups on {u.nodes} nodes × {g}"
        key = (u.subdomain_id, u.shape_index)
        taken[key] = taken.get(key, 0) + u.tp_groups
        assert taken[key] <= shape.count * g, f"shape {key} over-committed"
        groups[u.subdomain_id] += u.tp_groups
    for sd, n in per.items():
        assert groups[sd] == n * job.pp, f"{sd}: {groups[sd]} TP groups for {n} replicas × PP {job.pp}"
        limit = _resolve(subdomain_limits, placement.gpu_model).get(sd)
        assert limit is None or n * job.gpus_per_replica <= limit.gpus, f"{sd}: over its limit"
    for region, limit in _resolve(region_limits, placement.gpu_model).items():
        used = sum(n for sd, n in per.items() if views[sd].region == region) * job.gpus_per_replica
        assert used <= limit.gpus, f"region {region}: {used} GPUs > limit {limit.gpus}"
    assert placement.regions == tuple(sorted({views[sd].region for sd in per})), "regions mismatch"
    if len(per) == 1:
        assert placement.loss is None, "one sub-domain crosses no link"
        return
    assert placement.loss is not None, "a split must carry its loss estimate"
    regions = [views[sd].region for sd in per]
    for a, b in itertools.combinations(regions, 2):
        link = links.link(a, b)
        assert link is not None, f"split across {a} and {b}, which have no link"
        est = estimate_cross_loss(
            params=job.params,
            bytes_per_param=job.bytes_per_param,
            tp=job.tp,
            pp=job.pp,
            link=link,
            t_iter_s=job.t_iter_s,
            k=k,
            alpha_lb=alpha_lb,
        )
        assert est.loss <= job.max_cross_domain_loss, f"{a}–{b} loses {est.loss:.4f} > budget"
        assert est.loss <= placement.loss.loss, f"{a}–{b} is worse than the reported worst link"
