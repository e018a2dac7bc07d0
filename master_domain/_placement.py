"""The first placement policy: pure, O(sub-domains) per decision, never O(nodes).

For each PENDING task it picks a connected sub-domain whose summary has a node shape the request
fits in (honouring ``gpu_model``), spreading replicas: among those it picks the sub-domain with
the most room left for this request after subtracting what this master has placed there since
its last summary (optimistic local accounting, reset by every new summary). The sub-domain
chooses the node; if it has no room after all it answers REJECTED and the task is placed again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from domainos.errors import InvalidArgument
from domainos.resources import Resources, format_cpus, format_memory
from master_domain._summary import Summary


@dataclass(frozen=True, slots=True)
class Choice:
    """Place the task on this sub-domain."""

    subdomain_id: str
    region: str


@dataclass(frozen=True, slots=True)
class NoFit:
    """Nothing fits now; ``reason`` says why (shown in the job's message)."""

    reason: str


#: An in-flight placement no summary has confirmed after this long is forgotten (it was never sent,
#: or the sub-domain never handled it: its rejection or the placement timeout re-places the task).
INFLIGHT_TTL_S = 30.0


class _View:
    """One sub-domain as the placer sees it: its last summary minus what was placed since."""

    __slots__ = ("free", "free_by_model", "pending", "region", "sent", "slots", "summary_at")

    def __init__(self, region: str, summary: Summary, now: float) -> None:
        self.region = region
        self.free = summary.free
        self.free_by_model = dict(summary.free_gpus_by_model)
        # Free space of a node -> how many nodes (at best) have that much free.
        self.slots: dict[Resources, int] = {}
        for shape in summary.shapes:
            if shape.count <= 0:
                continue
            b = shape.best
            key = Resources(b.cpu_millis, b.memory_bytes, b.gpus, shape.gpu_model or b.gpu_model)
            self.slots[key] = self.slots.get(key, 0) + shape.count
        self.summary_at = now
        #: Placements committed on the current stream (their sequence numbers), and those a summary
        #: has not reflected yet: (sequence, request, monotonic time of the decision).
        self.sent = 0
        self.pending: list[tuple[int, Resources, float]] = []

    def apply(self, request: Resources) -> None:
        """Deduct one placement of ``request`` (best-fit slot, totals, per-model GPUs)."""
        slot = self.fitting_slot(request)
        model = request.gpu_model
        if slot is not None:
            model = model or slot.gpu_model
            left = self.slots[slot] - 1
            if left:
                self.slots[slot] = left
            else:
                del self.slots[slot]
            rest = slot - request
            self.slots[rest] = self.slots.get(rest, 0) + 1
        self.free = Resources(
            self.free.cpu_millis - request.cpu_millis,
            self.free.memory_bytes - request.memory_bytes,
            self.free.gpus - request.gpus,
            self.free.gpu_model,
        )
        if request.gpus and model:
            self.free_by_model[model] = self.free_by_model.get(model, 0) - request.gpus

    @property
    def inflight(self) -> int:
        """Placements this view still deducts (no summary has reflected them yet)."""
        return len(self.pending)

    def free_gpus(self, model: str) -> int:
        return self.free_by_model.get(model, 0) if model else self.free.gpus

    def fitting_slot(self, request: Resources) -> Resources | None:
        """The tightest node slot the request fits in (best fit, as the sub-domain packs)."""
        best: Resources | None = None
        for slot, count in self.slots.items():
            if count > 0 and request.fits_in(slot):
                if request.gpus and request.gpu_model and slot.gpu_model != request.gpu_model:
                    continue
                if best is None or (slot.gpus, slot.cpu_millis, slot.memory_bytes) < (
                    best.gpus,
                    best.cpu_millis,
                    best.memory_bytes,
                ):
                    best = slot
        return best

    def units(self, request: Resources) -> float:
        """How many more copies of ``request`` the free totals hold (the spreading score)."""
        parts: list[float] = []
        if request.cpu_millis:
            parts.append(self.free.cpu_millis // request.cpu_millis)
        if request.memory_bytes:
            parts.append(self.free.memory_bytes // request.memory_bytes)
        if request.gpus:
            parts.append(self.free_gpus(request.gpu_model) // request.gpus)
        return min(parts) if parts else math.inf


class Placer:
    """Chooses sub-domains for tasks from summaries; keeps in-flight accounting between them."""

    def __init__(self) -> None:
        self._views: dict[str, _View] = {}

    def __len__(self) -> int:
        return len(self._views)

    def update(
        self, subdomain_id: str, region: str, summary: Summary, now: float, *, applied: int | None = None
    ) -> None:
        """A new summary from a connected sub-domain.

        ``applied`` is how many placements of this stream the summary already reflects: the ones
        after it stay deducted (re-applied to the new view). ``None`` (a Hello, a new stream)
        starts the count afresh. In-flight placements older than ``INFLIGHT_TTL_S`` are dropped
        whatever the count says, so a placement that was never sent cannot hide capacity forever.
        """
        old = self._views.get(subdomain_id)
        view = _View(region, summary, now)
        if applied is not None and old is not None:
            view.sent = old.sent
            for seq, request, at in old.pending:
                if seq > applied and now - at < INFLIGHT_TTL_S:
                    view.apply(request)
                    view.pending.append((seq, request, at))
        self._views[subdomain_id] = view

    def remove(self, subdomain_id: str) -> None:
        """The sub-domain disconnected: place nothing there."""
        self._views.pop(subdomain_id, None)

    def inflight(self, subdomain_id: str) -> int:
        view = self._views.get(subdomain_id)
        return view.inflight if view is not None else 0

    def choose(self, request: Resources, avoid: Mapping[str, float] | None = None) -> Choice | NoFit:
        """Pick a sub-domain for one task of ``request`` size.

        ``avoid`` maps sub-domains that rejected this task to when they did: they are skipped
        until they send a newer summary.
        """
        if not self._views:
            return NoFit("no sub-domain is connected")
        best: tuple[float, int, str] | None = None
        for sd, view in self._views.items():
            if avoid and avoid.get(sd, -math.inf) >= view.summary_at:
                continue
            if view.fitting_slot(request) is None:
                continue
            units = view.units(request)
            if units < 1:
                continue
            # Most room for this request first; then fewer placements in flight; then the id.
            key = (-units, view.inflight, sd)
            if best is None or key < best:
                best = key
        if best is None:
            return NoFit(f"no sub-domain has a node with {request.describe()} free")
        return Choice(best[2], self._views[best[2]].region)

    def slot_model(self, subdomain_id: str, request: Resources) -> str:
        """GPU model of the node shape ``request`` would land on there ("" when none or unknown)."""
        view = self._views.get(subdomain_id)
        slot = view.fitting_slot(request) if view is not None else None
        return slot.gpu_model if slot is not None else ""

    def commit(self, subdomain_id: str, request: Resources, now: float = 0.0) -> None:
        """Account for a placement on ``subdomain_id`` until a summary says it has applied it."""
        view = self._views.get(subdomain_id)
        if view is None:
            return
        view.sent += 1
        view.pending.append((view.sent, request, now))
        view.apply(request)


_Dimension = tuple[str, Callable[[Resources], int], Callable[[int], str], str]
_DIMENSIONS: tuple[_Dimension, ...] = (
    ("resources.cpus", lambda r: r.cpu_millis, format_cpus, "cpus"),
    ("resources.memory", lambda r: r.memory_bytes, format_memory, "memory"),
    ("resources.gpus", lambda r: r.gpus, str, "gpus"),
)


def check_fits_federation(request: Resources, summaries: Mapping[str, Summary]) -> None:
    """Refuse a request larger than the largest node of every known sub-domain.

    Raises :class:`InvalidArgument` naming the field that is too big. Sub-domains with no ready
    node say nothing about what fits and are skipped; with none known, anything is accepted
    (the job waits).
    """
    known = {sd: s.largest_node for sd, s in summaries.items() if s.nodes_ready > 0}
    if not known:
        return
    for fld, get, fmt, unit in _DIMENSIONS:
        wanted = get(request)
        if not wanted:
            continue
        where, most = min(known.items(), key=lambda kv: (-get(kv[1]), kv[0]))
        biggest = get(most)
        if wanted > biggest:
            raise InvalidArgument(
                f"{fmt(wanted)} exceeds the largest node in the federation ({fmt(biggest)} {unit}, "
                f"node shape in sub-domain {where}); allowed: at most {fmt(biggest)}",
                field=fld,
            )
