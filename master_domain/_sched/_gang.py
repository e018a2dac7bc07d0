"""Where a gang's tasks go, from summaries (pure; no I/O): plain gangs and training jobs.

A *gang* is placed all or nothing (the reservation :class:`~._reserve.Coordinator` makes it so);
this module only chooses the parts, sub-domain by sub-domain, from the shapes the master sees.

**Plain gangs** (``gang: {min: N}``, no ``parallelism``): N identical tasks. A node of a shape
whose roomiest node has ``f`` free GPUs and ``c``/``m`` free CPU/memory hosts
``min(⌊f / gpus⌋, ⌊c / cpu⌋, ⌊m / memory⌋)`` tasks (dimensions the task does not ask for are not
limits); a sub-domain hosts the sum over its shapes of one GPU model (a part uses one model, so its
charges and power are exact). One sub-domain that holds every task is preferred (the tightest,
then the id); else the fewest sub-domains, largest first. ``limits`` cap the tasks of a region or a
sub-domain (quota and power headroom, computed by the caller). A plain gang may be split freely:
only training jobs have the loss rule.

**Training jobs** (``parallelism``): :func:`~._topology.plan_training` with the job's shape; a job
that declares no model size or iteration time has no loss estimate, so it goes in one sub-domain.
Task ``i`` is pipeline stage ``i % pp`` of DP replica ``i // pp``; the replicas a sub-domain gets
(contiguous DP ranks) bring their ``pp`` tasks.

Cost: O(sub-domains × shapes) for a plain gang; a training job costs what ``plan_training`` costs.
Never O(nodes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from domainos.jobspec import JobSpec
from domainos.resources import Resources
from master_domain._sched._loss import LinkTable, LossEstimate, format_fraction
from master_domain._sched._topology import (
    RULE_CAPACITY,
    RULE_GPU_MODEL,
    RULE_LIMIT,
    RULE_LOSS,
    RULE_TP,
    GpuLimit,
    Placement,
    SubDomainView,
    TrainingShape,
    Unplaceable,
    plan_training,
)
from master_domain._summary import Shape

#: The GPU limits of one model (region or sub-domain id -> limit), from quota and power headroom.
LimitsFn = Callable[[str], Mapping[str, GpuLimit]]


@dataclass(frozen=True, slots=True)
class GangPlan:
    """The parts of a gang: ``parts`` maps sub-domain ids to the task indexes placed there.

    ``models``: the GPU model of each part ("" for tasks without GPUs); ``regions``: each part's
    region; ``reasons``: why, with numbers; ``placement``: the training plan (training jobs only);
    ``loss``: the worst link's estimate when a training job spans sub-domains.
    """

    parts: Mapping[str, tuple[int, ...]]
    models: Mapping[str, str]
    regions: Mapping[str, str]
    reasons: tuple[str, ...]
    placement: Placement | None = None
    loss: LossEstimate | None = None
    request: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", MappingProxyType(dict(self.parts)))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "regions", MappingProxyType(dict(self.regions)))

    def task_request(self, subdomain: str) -> Resources:
        """One task's request in ``subdomain``, with the part's GPU model."""
        r = self.request
        model = self.models.get(subdomain, "") if r.gpus else r.gpu_model
        return Resources(
            r.cpu_millis, r.memory_bytes, r.gpus, model or r.gpu_model, r.gpu_share, r.gpu_share_memory
        )

    def assignments(self) -> dict[int, tuple[str, str, str]]:
        """Task index -> (sub-domain, region, GPU model)."""
        return {
            i: (sd, self.regions[sd], self.models.get(sd, ""))
            for sd, indexes in self.parts.items()
            for i in indexes
        }

    def describe(self) -> str:
        """``east-1 (east): tasks 0-3; west-1 (west): tasks 4-7`` and the reasons, one per line."""
        parts = "; ".join(
            f"{sd} ({self.regions[sd]}): {_span(idx)}"
            + (f" on {self.models[sd]}" if self.models.get(sd) else "")
            for sd, idx in self.parts.items()
        )
        lines = [f"plan: {parts}"]
        if self.placement is not None:
            ranks = "; ".join(
                f"{sd}: DP ranks {r.start}-{r.stop - 1}" if len(r) > 1 else f"{sd}: DP rank {r.start}"
                for sd, r in self.placement.dp_ranks().items()
            )
            lines.append(f"data-parallel ranks: {ranks}")
        lines.extend(self.reasons)
        if self.loss is not None:
            lines.append("loss model: " + self.loss.explain())
        return "\n".join(lines)


def _span(indexes: Sequence[int]) -> str:
    if not indexes:
        return "no tasks"
    lo, hi = min(indexes), max(indexes)
    if len(indexes) == hi - lo + 1:
        return f"task {lo}" if lo == hi else f"tasks {lo}-{hi}"
    return "tasks " + ", ".join(str(i) for i in indexes)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# -- plain gangs ----------------------------------------------------------------------------------


def tasks_per_node(request: Resources, shape: Shape) -> int:
    """How many tasks of ``request`` one node of ``shape`` hosts (its roomiest node's free vector)."""
    if shape.count <= 0:
        return 0
    counts: list[int] = []
    if request.gpus:
        counts.append(shape.free_gpus // request.gpus)
    if request.cpu_millis:
        counts.append(shape.best.cpu_millis // request.cpu_millis)
    if request.memory_bytes:
        counts.append(shape.best.memory_bytes // request.memory_bytes)
    return max(0, min(counts)) if counts else 1_000_000


def _allows(request: Resources, exclude: frozenset[str], model: str) -> bool:
    if not request.gpus:
        return True
    if not model or model in exclude:
        return False
    return not request.gpu_model or model == request.gpu_model


@dataclass(slots=True)
class _Room:
    view: SubDomainView
    model: str
    raw: int
    tasks: int
    limited_by: str


def _room(
    request: Resources,
    exclude: frozenset[str],
    view: SubDomainView,
    region_limits: LimitsFn | None,
    subdomain_limits: LimitsFn | None,
) -> _Room | None:
    by_model: dict[str, int] = {}
    for s in view.shapes:
        key = s.gpu_model if request.gpus else ""
        if not _allows(request, exclude, s.gpu_model):
            continue
        n = s.count * tasks_per_node(request, s)
        if n:
            by_model[key] = by_model.get(key, 0) + n
    best: _Room | None = None
    for model, raw in sorted(by_model.items()):
        tasks, limited_by = raw, ""
        if request.gpus:
            for where, fn, key in (
                (f"sub-domain {view.id}", subdomain_limits, view.id),
                (f"region {view.region}", region_limits, view.region),
            ):
                limit = fn(model).get(key) if fn is not None else None
                if limit is not None and limit.gpus // request.gpus < tasks:
                    tasks, limited_by = limit.gpus // request.gpus, limit.describe(where)
        room = _Room(view, model, raw, tasks, limited_by)
        if best is None or room.tasks > best.tasks:
            best = room
    return best


def plan_plain_gang(
    request: Resources,
    indexes: Sequence[int],
    views: Sequence[SubDomainView],
    *,
    exclude_models: frozenset[str] = frozenset(),
    region_limits: LimitsFn | None = None,
    subdomain_limits: LimitsFn | None = None,
) -> GangPlan | Unplaceable:
    """Place ``len(indexes)`` identical tasks of ``request`` together (see the module docstring)."""
    n = len(indexes)
    what = f"gang of {n} × ({request.describe()})"
    if n == 0:
        return Unplaceable(f"{what}: no tasks to place", RULE_CAPACITY)
    if request.gpus and not any(
        _allows(request, exclude_models, s.gpu_model) for v in views for s in v.shapes if s.count > 0
    ):
        present = sorted({s.gpu_model for v in views for s in v.shapes if s.count > 0 and s.gpu_model})
        wanted = request.gpu_model or "any model"
        excluded = f" (excluding {', '.join(sorted(exclude_models))})" if exclude_models else ""
        return Unplaceable(
            f"{what}: no ready node has {wanted} GPUs{excluded}; models ready: {', '.join(present) or 'none'}",
            RULE_GPU_MODEL,
        )
    rooms = [
        r
        for r in (_room(request, exclude_models, v, region_limits, subdomain_limits) for v in views)
        if r is not None
    ]
    if not any(r.raw for r in rooms):
        return Unplaceable(f"{what}: no node of any connected sub-domain has room for one task", RULE_TP)
    notes = sorted({r.limited_by for r in rooms if r.limited_by})
    single = [r for r in rooms if r.tasks >= n]
    if single:
        best = min(single, key=lambda r: (r.tasks - n, r.view.id))
        reasons = [
            f"{what} in one sub-domain: {best.view.id} ({best.view.region}) has room for "
            f"{_plural(best.tasks, 'task')}"
            + (f" on {best.model}" if best.model else "")
            + (f" ({best.limited_by})" if best.limited_by else "")
        ]
        return GangPlan(
            {best.view.id: tuple(indexes)},
            {best.view.id: best.model},
            {best.view.id: best.view.region},
            tuple(reasons),
            request=request,
        )
    # Split over the fewest sub-domains: largest first; region limits are shared by its sub-domains.
    region_left: dict[str, float] = {}
    if region_limits is not None and request.gpus:
        for r in rooms:
            lim = region_limits(r.model).get(r.view.region)
            if lim is not None:
                region_left.setdefault(f"{r.view.region}/{r.model}", lim.gpus // request.gpus)
    chosen: list[tuple[_Room, int]] = []
    need = n
    for r in sorted(rooms, key=lambda r: (-r.tasks, r.view.id)):
        if need <= 0:
            break
        key = f"{r.view.region}/{r.model}"
        take = int(min(r.tasks, need, region_left.get(key, math.inf)))
        if take <= 0:
            continue
        chosen.append((r, take))
        need -= take
        if key in region_left:
            region_left[key] -= take
    if need > 0:
        per = ", ".join(f"{r.view.id}: {r.tasks}" for r in sorted(rooms, key=lambda r: r.view.id) if r.tasks)
        total = n - need
        rule = RULE_LIMIT if notes and sum(r.raw for r in rooms) >= n else RULE_CAPACITY
        limits_text = f"; limits: {', '.join(notes)}" if notes else ""
        return Unplaceable(
            f"{what} must start together; the federation has room for {total} of {n} "
            f"({per or 'none'}){limits_text}: waiting for capacity",
            rule,
        )
    parts: dict[str, tuple[int, ...]] = {}
    pos = 0
    for r, take in chosen:
        parts[r.view.id] = tuple(indexes[pos : pos + take])
        pos += take
    largest = max(rooms, key=lambda r: (r.tasks, r.view.id))
    shares = ", ".join(f"{r.view.id} ({r.view.region}) {take}" for r, take in chosen)
    reasons = [
        f"{what}: no single sub-domain has room (the most in one is {largest.view.id} with "
        f"{largest.tasks} of {n})" + (f"; limits: {', '.join(notes)}" if notes else ""),
        f"split over {_plural(len(chosen), 'sub-domain')}: {shares}",
    ]
    return GangPlan(
        parts,
        {r.view.id: r.model for r, _ in chosen},
        {r.view.id: r.view.region for r, _ in chosen},
        tuple(reasons),
        request=request,
    )


# -- training jobs --------------------------------------------------------------------------------


def training_shape(spec: JobSpec) -> TrainingShape:
    """The planner's view of a training job (``spec.parallelism`` must be set).

    A job without ``model.parameters`` or ``iteration_time_s`` gets a zero loss budget: it cannot
    be split over sub-domains (there is nothing to estimate the loss with).
    """
    par = spec.parallelism
    assert par is not None, "not a training job"
    r = spec.resources
    has_loss = spec.model is not None and spec.iteration_time_s > 0
    return TrainingShape(
        tp=par.tp,
        pp=par.pp,
        dp=par.dp,
        params=spec.model.parameters if spec.model is not None and spec.model.parameters > 0 else 1,
        bytes_per_param=(
            spec.model.bytes_per_parameter
            if spec.model is not None and spec.model.bytes_per_parameter > 0
            else 2.0
        ),
        t_iter_s=spec.iteration_time_s if spec.iteration_time_s > 0 else 1.0,
        gpu_model=r.gpu_model,
        exclude_models=frozenset(m for m in spec.exclude_gpu_models if m != r.gpu_model),
        max_cross_domain_loss=spec.max_cross_domain_loss if has_loss else 0.0,
        cpu_millis_per_gpu=-(-r.cpu_millis // par.tp),
        memory_bytes_per_gpu=-(-r.memory_bytes // par.tp),
    )


def plan_training_gang(
    spec: JobSpec,
    views: Sequence[SubDomainView],
    links: LinkTable,
    *,
    region_limits: LimitsFn | None = None,
    subdomain_limits: LimitsFn | None = None,
) -> GangPlan | Unplaceable:
    """Every task of a training job, by :func:`plan_training` (see the module docstring)."""
    par = spec.parallelism
    assert par is not None, "not a training job"
    if spec.replicas != par.pp * par.dp:
        return Unplaceable(
            f"a training job has one task per TP group: PP {par.pp} × DP {par.dp} = {par.pp * par.dp} "
            f"tasks, but the job has {spec.replicas}",
            RULE_CAPACITY,
        )
    shape = training_shape(spec)
    out = plan_training(shape, views, links, region_limits=region_limits, subdomain_limits=subdomain_limits)
    if isinstance(out, Unplaceable):
        if out.rule == RULE_LOSS and shape.max_cross_domain_loss == 0.0:
            return Unplaceable(
                "the job declares no model size and iteration time, so there is no loss estimate and "
                f"its DP replicas must stay in one sub-domain; {out.reason}",
                out.rule,
                out.loss,
            )
        return out
    parts: dict[str, tuple[int, ...]] = {}
    for sd, ranks in out.dp_ranks().items():
        parts[sd] = tuple(i for rank in ranks for i in range(rank * par.pp, (rank + 1) * par.pp))
    views_by_id = {v.id: v for v in views}
    reasons = list(out.reasons)
    if out.loss is not None:
        reasons.append(
            f"loss estimate {format_fraction(out.loss.loss)} ≤ budget {format_fraction(spec.max_cross_domain_loss)}"
        )
    return GangPlan(
        parts,
        dict.fromkeys(parts, out.gpu_model),
        {sd: views_by_id[sd].region for sd in parts},
        tuple(reasons),
        placement=out,
        loss=out.loss,
        request=Resources(
            spec.resources.cpu_millis, spec.resources.memory_bytes, spec.resources.gpus, out.gpu_model
        ),
    )


def plan_gang(
    spec: JobSpec,
    indexes: Sequence[int],
    views: Sequence[SubDomainView],
    links: LinkTable,
    *,
    region_limits: LimitsFn | None = None,
    subdomain_limits: LimitsFn | None = None,
) -> GangPlan | Unplaceable:
    """The parts of a gang job's first ``gang_min`` tasks (``indexes``), or why it cannot go now."""
    if spec.parallelism is not None:
        return plan_training_gang(
            spec, views, links, region_limits=region_limits, subdomain_limits=subdomain_limits
        )
    return plan_plain_gang(
        spec.resources,
        indexes,
        views,
        exclude_models=frozenset(spec.exclude_gpu_models),
        region_limits=region_limits,
        subdomain_limits=subdomain_limits,
    )


def consume(views: Sequence[SubDomainView], plan: GangPlan) -> list[SubDomainView]:
    """``views`` minus what ``plan`` takes (so two gangs planned in one pass do not count the same
    room twice): each task takes one node's worth from the tightest shape it fits in."""
    out: list[SubDomainView] = []
    for v in views:
        idx = plan.parts.get(v.id)
        out.append(consume_requests(v, [plan.task_request(v.id)] * len(idx)) if idx else v)
    return out


def consume_requests(view: SubDomainView, requests: Iterable[Resources]) -> SubDomainView:
    """``view`` minus ``requests`` (placements its summary does not show yet), each from the
    tightest shape it fits in; a request that fits nowhere is skipped. O(requests × shapes)."""
    shapes = list(view.shapes)
    taken = False
    for request in requests:
        fits = [
            (s.free_gpus, s.best.cpu_millis, s.best.memory_bytes, i)
            for i, s in enumerate(shapes)
            if s.count > 0
            and tasks_per_node(request, s) > 0
            and (not request.gpus or not request.gpu_model or s.gpu_model == request.gpu_model)
        ]
        if not fits:
            continue
        taken = True
        i = min(fits)[3]
        s = shapes[i]
        left = s.free_gpus - request.gpus
        rest = Shape(
            s.gpu_model,
            left,
            1,
            Resources(
                max(0, s.best.cpu_millis - request.cpu_millis),
                max(0, s.best.memory_bytes - request.memory_bytes),
                max(0, s.best.gpus - request.gpus),
                s.best.gpu_model,
            ),
            free_nvlink_gpus=max(0, min(s.free_nvlink_gpus, left)),
        )
        shapes[i] = Shape(s.gpu_model, s.free_gpus, s.count - 1, s.best, free_nvlink_gpus=s.free_nvlink_gpus)
        shapes.append(rest)
    if not taken:
        return view
    return SubDomainView(view.id, view.region, tuple(s for s in shapes if s.count > 0), view.blocks)
