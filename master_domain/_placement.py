"""The per-task placement policy: pure, O(sub-domains) per decision, never O(nodes).

For each PENDING task it picks a connected sub-domain whose summary has a node shape the request
fits in, spreading replicas: among those it picks the sub-domain with the most room left for this
request after subtracting what this master has placed there since its last summary (optimistic
local accounting, reset by every new summary). The sub-domain chooses the node; if it has no room
after all it answers REJECTED and the task is placed again.

Per-task constraints (:class:`Want`), all read from summaries:

* ``gpu_model`` (in the request): only node shapes of that model.
* ``exclude_gpu_models``: GPU (and GPU share) requests skip shapes and share slots of those
  models (exact names, as the sub-domain compares them); a request without GPUs is not affected.
* ``node_selector``: a sub-domain qualifies only if its summary's ``label_nodes`` counts ready
  nodes for every ``key=value`` (the sub-domain then picks a node carrying all of them).
* Fractional shares (``gpu_share`` 1..99 with ``gpus == 0``): a share slot (a partly used card) of
  an allowed model with at least that much compute (and memory) free, best fit first, else a free
  whole GPU of an allowed model (which then becomes a share slot in the in-flight accounting).
* Locality (``dataset``/``shard``): sub-domains whose summary lists the shard are preferred; until
  the job's locality wait is over they are the only candidates, then any will do (and the choice
  says so).
* Node affinity (``subdomain``/``node``): the task goes to its node's sub-domain when that one is
  connected and has room (the sub-domain then pins it to the node); a soft affinity falls back to
  any sub-domain, a hard one waits.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from domainos.errors import InvalidArgument
from domainos.resources import Resources, format_cpus, format_memory
from master_domain._summary import Summary

if TYPE_CHECKING:
    from domainos.jobspec import JobSpec

#: One card in share units (1% steps).
CARD = 100
#: Free memory of a share slot the summary did not give (a whole card just split by this master).
UNKNOWN_MEMORY = -1
#: A summary's share slots give free percent rounded down to this step.
SHARE_STEP = 10


@dataclass(frozen=True, slots=True)
class Choice:
    """Place the task on this sub-domain.

    ``gpu_model``: the model of the node shape or share slot it should land on ("" when none or
    unknown); ``why``: what the constraints made of it (empty when nothing to say). Neither takes
    part in equality: a choice is a sub-domain.
    """

    subdomain_id: str
    region: str
    gpu_model: str = field(default="", compare=False)
    why: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class NoFit:
    """Nothing fits now; ``reason`` says why (shown in the job's message)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Want:
    """What one task asks of a sub-domain beyond its resources (see the module docstring).

    ``locality_until`` and ``now`` are wall-clock seconds: before ``locality_until`` only
    sub-domains holding ``shard`` of ``dataset`` are candidates.
    """

    exclude_gpu_models: frozenset[str] = frozenset()
    node_selector: tuple[tuple[str, str], ...] = ()
    dataset: str = ""
    shard: int = 0
    locality_until: float = 0.0
    locality_wait_s: float = 0.0
    now: float = 0.0
    #: Node affinity: the sub-domain of the node the task is pinned to, the node, and whether
    #: any other place will do when that one cannot take it.
    subdomain: str = ""
    node: str = ""
    node_soft: bool = True

    @classmethod
    def for_task(cls, spec: JobSpec, index: int, created_at: float, now: float) -> Want | None:
        """The constraints of task ``index`` of ``spec`` (None when it has none)."""
        exclude = frozenset(m for m in spec.exclude_gpu_models if m)
        selector = tuple(sorted(spec.node_selector.items()))
        loc = spec.locality
        aff = spec.affinity
        if not exclude and not selector and loc is None and aff is None:
            return None
        if aff is not None:
            ref = aff.node_of(index)
            return cls(
                exclude, selector, now=now, subdomain=ref.subdomain_id, node=ref.node_id, node_soft=aff.soft
            )
        if loc is None:
            return cls(exclude, selector, now=now)
        wait = float(loc.wait_s)
        return cls(exclude, selector, loc.dataset, loc.shard_of(index), created_at + wait, wait, now)

    @property
    def strict(self) -> bool:
        """Still inside the locality wait: only holders of the shard will do."""
        return bool(self.dataset) and self.now < self.locality_until

    def excluded(self, model: str) -> bool:
        return bool(model) and model in self.exclude_gpu_models

    def selector_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.node_selector)

    def shard_text(self) -> str:
        return f"shard {self.shard} of dataset {self.dataset}"


_NO_WANT = Want()

#: Requests remembered per view between changes (:meth:`_View.fit_units`).
MEMO_SIZE = 64
#: An in-flight placement no summary has confirmed after this long is forgotten (it was never sent,
#: or the sub-domain never handled it: its rejection or the placement timeout re-places the task).
INFLIGHT_TTL_S = 30.0


def _is_share(request: Resources) -> bool:
    return request.gpus == 0 and request.gpu_share > 0


def _share_slots(summary: Summary) -> dict[tuple[str, int, int], int]:
    """``summary.share_slots`` as (model, free percent, free memory bytes) -> cards."""
    out: dict[tuple[str, int, int], int] = {}
    for s in summary.share_slots:
        if s.count <= 0 or s.free_percent <= 0:
            continue
        key = (s.gpu_model, s.free_percent, s.free_memory_bytes)
        out[key] = out.get(key, 0) + s.count
    return out


class _View:
    """One sub-domain as the placer sees it: its last summary minus what was placed since."""

    __slots__ = (
        "_memo",
        "datasets",
        "free",
        "free_by_model",
        "labels",
        "largest",
        "pending",
        "region",
        "sent",
        "shares",
        "slots",
        "summary_at",
    )

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
        self.largest = summary.largest_node
        self.labels = summary.label_nodes
        self.datasets = summary.datasets
        self.shares = _share_slots(summary)
        self.summary_at = now
        #: Placements committed on the current stream (their sequence numbers), and those a summary
        #: has not reflected yet: (sequence, request, monotonic time of the decision).
        self.sent = 0
        self.pending: list[tuple[int, Resources, float]] = []
        #: (request, want) -> (GPU model it would land on or None, units): what :meth:`fit_units`
        #: computed since the view last changed. A pass places many tasks of one size and changes
        #: one view per task, so the others answer from here: O(1) per view instead of a walk
        #: over its slots. Cleared by :meth:`apply` (the only change of a view after it is built).
        self._memo: dict[tuple[Resources, Want], tuple[str | None, float]] = {}

    # -- constraints ---------------------------------------------------------------------------

    def missing_labels(self, want: Want) -> list[str]:
        return [f"{k}={v}" for k, v in want.node_selector if self.labels.get(f"{k}={v}", 0) <= 0]

    def holds(self, want: Want) -> bool:
        shards = self.datasets.get(want.dataset, ())
        i = bisect.bisect_left(shards, want.shard)  # sorted and distinct (validated)
        return i < len(shards) and shards[i] == want.shard

    @staticmethod
    def _model_ok(model: str, request: Resources, want: Want) -> bool:
        if request.gpu_model and model != request.gpu_model:
            return False
        return not want.excluded(model)

    # -- fitting -------------------------------------------------------------------------------

    def fitting_slot(self, request: Resources, want: Want = _NO_WANT) -> Resources | None:
        """The tightest node slot the request fits in (best fit, as the sub-domain packs)."""
        if _is_share(request):
            request = Resources(request.cpu_millis, request.memory_bytes, 1, request.gpu_model)
        best: Resources | None = None
        for slot, count in self.slots.items():
            if count > 0 and request.fits_in(slot):
                if request.gpus and not self._model_ok(slot.gpu_model, request, want):
                    continue
                if best is None or (slot.gpus, slot.cpu_millis, slot.memory_bytes) < (
                    best.gpus,
                    best.cpu_millis,
                    best.memory_bytes,
                ):
                    best = slot
        return best

    def share_slot(
        self, request: Resources, want: Want = _NO_WANT, slack: int = 0
    ) -> tuple[str, int, int] | None:
        """The fullest partly used card that still has the share free (best fit), if any.

        ``slack``: how far below the request a slot's free percent may be (a summary's slots are
        rounded *down* to :data:`SHARE_STEP`, so a slot of 20 may hold 25 — or not).
        """
        if request.cpu_millis > self.free.cpu_millis or request.memory_bytes > self.free.memory_bytes:
            return None
        best: tuple[str, int, int] | None = None
        for key, count in self.shares.items():
            model, pct, mem = key
            if count <= 0 or pct + slack < request.gpu_share or not self._model_ok(model, request, want):
                continue
            if request.gpu_share_memory and mem != UNKNOWN_MEMORY and mem < request.gpu_share_memory:
                continue
            if best is None or (pct, mem, model) < (best[1], best[2], best[0]):
                best = key
        return best

    def share_target(
        self, request: Resources, want: Want = _NO_WANT
    ) -> tuple[tuple[str, int, int] | None, Resources | None]:
        """Where a share goes: a partly used card that surely has room, else a whole free card,
        else a partly used card whose rounded-down slot may have room (the sub-domain knows).
        Returns (share slot, None), (None, node slot) or (None, None)."""
        share = self.share_slot(request, want)
        if share is not None:
            return share, None
        slot = self.fitting_slot(request, want)
        if slot is not None:
            return None, slot
        return self.share_slot(request, want, SHARE_STEP - 1), None

    def fits(self, request: Resources, want: Want = _NO_WANT) -> str | None:
        """The GPU model the request would land on ("" for none/unknown), None when it fits nowhere."""
        if _is_share(request):
            share, card = self.share_target(request, want)
            if share is not None:
                return share[0]
            return card.gpu_model if card is not None else None
        slot = self.fitting_slot(request, want)
        if slot is None:
            return None
        return slot.gpu_model if request.gpus else ""

    def fit_units(self, request: Resources, want: Want = _NO_WANT) -> tuple[str | None, float]:
        """:meth:`fits` and, when it fits, :meth:`units` (0 when not), memoised until :meth:`apply`."""
        key = (request, want)
        got = self._memo.get(key)
        if got is None:
            model = self.fits(request, want)
            got = (model, self.units(request, want) if model is not None else 0.0)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = got
        return got

    def apply(self, request: Resources) -> None:
        """Deduct one placement of ``request`` (best-fit slot, totals, per-model GPUs, shares)."""
        self._memo.clear()
        model = request.gpu_model
        gpus = request.gpus
        if _is_share(request):
            share, _ = self.share_target(request)
            if share is not None:
                self._take_share(share, request)
                self._take_totals(request, 0, "")
                return
            gpus = 1
        whole = Resources(request.cpu_millis, request.memory_bytes, gpus, request.gpu_model)
        slot = self.fitting_slot(whole)
        if slot is not None:
            model = model or slot.gpu_model
            left = self.slots[slot] - 1
            if left:
                self.slots[slot] = left
            else:
                del self.slots[slot]
            rest = slot - whole
            self.slots[rest] = self.slots.get(rest, 0) + 1
        if _is_share(request) and gpus:
            rest_pct = CARD - request.gpu_share
            key = (model, rest_pct, UNKNOWN_MEMORY)
            self.shares[key] = self.shares.get(key, 0) + 1
        self._take_totals(request, gpus, model)

    def _take_share(self, key: tuple[str, int, int], request: Resources) -> None:
        left = self.shares[key] - 1
        if left:
            self.shares[key] = left
        else:
            del self.shares[key]
        model, pct, mem = key
        rest_pct = pct - request.gpu_share  # a lower bound still (<= 0: the card may be full)
        rest_mem = mem if mem == UNKNOWN_MEMORY else mem - request.gpu_share_memory
        if rest_pct > 0 and (mem == UNKNOWN_MEMORY or rest_mem > 0):
            rest = (model, rest_pct, rest_mem)
            self.shares[rest] = self.shares.get(rest, 0) + 1

    def _take_totals(self, request: Resources, gpus: int, model: str) -> None:
        self.free = Resources(
            self.free.cpu_millis - request.cpu_millis,
            self.free.memory_bytes - request.memory_bytes,
            self.free.gpus - gpus,
            self.free.gpu_model,
        )
        if gpus and model:
            self.free_by_model[model] = self.free_by_model.get(model, 0) - gpus

    @property
    def inflight(self) -> int:
        """Placements this view still deducts (no summary has reflected them yet)."""
        return len(self.pending)

    def free_gpus(self, model: str, want: Want = _NO_WANT) -> int:
        if model:
            return self.free_by_model.get(model, 0)
        if want.exclude_gpu_models and self.free_by_model:
            return sum(n for m, n in self.free_by_model.items() if not want.excluded(m))
        return self.free.gpus

    def units(self, request: Resources, want: Want = _NO_WANT) -> float:
        """How many more copies of ``request`` the free totals hold (the spreading score)."""
        parts: list[float] = []
        if request.cpu_millis:
            parts.append(self.free.cpu_millis // request.cpu_millis)
        if request.memory_bytes:
            parts.append(self.free.memory_bytes // request.memory_bytes)
        if request.gpus:
            parts.append(self.free_gpus(request.gpu_model, want) // request.gpus)
        elif _is_share(request):
            cards = sum(
                (pct // request.gpu_share) * n
                for (m, pct, _), n in self.shares.items()
                if self._model_ok(m, request, want)
            )
            cards += self.free_gpus(request.gpu_model, want) * (CARD // request.gpu_share)
            parts.append(cards or (1 if self.share_slot(request, want, SHARE_STEP - 1) else 0))
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

    def inflight_requests(self, subdomain_id: str) -> list[Resources]:
        """The placements there that no summary reflects yet (per task: the gang planner deducts them)."""
        view = self._views.get(subdomain_id)
        return [request for _, request, _ in view.pending] if view is not None else []

    def subdomains(self) -> list[str]:
        """Connected sub-domains the placer knows (ids)."""
        return list(self._views)

    def region_of(self, subdomain_id: str) -> str:
        view = self._views.get(subdomain_id)
        return view.region if view is not None else ""

    def free_now(self, subdomain_id: str) -> tuple[Resources, Mapping[str, int]] | None:
        """Free totals and free GPUs by model after in-flight placements (None if unknown)."""
        view = self._views.get(subdomain_id)
        return (view.free, dict(view.free_by_model)) if view is not None else None

    def qualifies(self, subdomain_id: str, request: Resources, want: Want | None) -> bool:
        """Could the request ever land there (labels, allowed GPU models, its largest node), room aside."""
        view = self._views.get(subdomain_id)
        if view is None:
            return False
        w = want or _NO_WANT
        if view.missing_labels(w):
            return False
        big = view.largest
        gpus = max(request.gpus, 1 if _is_share(request) else 0)
        known = big.cpu_millis or big.memory_bytes or big.gpus
        if known and (
            request.cpu_millis > big.cpu_millis or request.memory_bytes > big.memory_bytes or gpus > big.gpus
        ):
            return False
        if request.gpus or _is_share(request):
            models = set(view.free_by_model) | {s.gpu_model for s in view.slots}
            return any(m and view._model_ok(m, request, w) for m in models) or (
                not request.gpu_model and not w.exclude_gpu_models
            )
        return True

    def choose(
        self, request: Resources, avoid: Mapping[str, float] | None = None, want: Want | None = None
    ) -> Choice | NoFit:
        """Pick a sub-domain for one task of ``request`` size under ``want``'s constraints.

        ``avoid`` maps sub-domains that rejected this task to when they did: they are skipped
        until they send a newer summary.
        """
        if not self._views:
            return NoFit("no sub-domain is connected")
        w = want or _NO_WANT
        pinned_why = ""
        if w.subdomain:
            view = self._views.get(w.subdomain)
            if view is None:
                pinned_why = f"sub-domain {w.subdomain} (of node {w.node}) is not connected"
            elif avoid and avoid.get(w.subdomain, -math.inf) >= view.summary_at:
                pinned_why = (
                    f"sub-domain {w.subdomain} had no room on node {w.node} (waiting for its next summary)"
                )
            else:
                model, units = view.fit_units(request, w)
                if model is not None and units >= 1:
                    return Choice(w.subdomain, view.region, model, f"affinity: node {w.node}")
                pinned_why = f"sub-domain {w.subdomain} (of node {w.node}) has no {Placer._wanted(request)}"
            if not w.node_soft:
                return NoFit(f"affinity: task pinned to node {w.node}, but {pinned_why}")
        best: tuple[float, int, str] | None = None
        best_holder: tuple[float, int, str] | None = None
        models: dict[str, str] = {}
        considered = 0
        no_labels: list[tuple[str, list[str]]] = []
        holders = holders_full = 0
        for sd, view in self._views.items():
            if avoid and avoid.get(sd, -math.inf) >= view.summary_at:
                continue
            considered += 1
            if w.node_selector:
                missing = view.missing_labels(w)
                if missing:
                    no_labels.append((sd, missing))
                    continue
            holds = bool(w.dataset) and view.holds(w)
            holders += holds
            model, units = view.fit_units(request, w)
            if model is None:
                holders_full += holds
                continue
            if units < 1:
                holders_full += holds
                continue
            models[sd] = model
            # Most room for this request first; then fewer placements in flight; then the id.
            key = (-units, view.inflight, sd)
            if best is None or key < best:
                best = key
            if holds and (best_holder is None or key < best_holder):
                best_holder = key
        if w.dataset:
            if best_holder is not None:
                sd = best_holder[2]
                return Choice(sd, self._views[sd].region, models[sd], f"locality: holds {w.shard_text()}")
            if w.strict:
                return NoFit(self._locality_reason(request, w, holders, holders_full, no_labels))
            if best is not None:
                sd = best[2]
                held = (
                    f"the {holders} sub-domain(s) holding it have no room"
                    if holders
                    else "no connected sub-domain holds it"
                )
                return Choice(
                    sd,
                    self._views[sd].region,
                    models[sd],
                    f"locality: {w.shard_text()} wanted but {held}; the {w.locality_wait_s:g}s locality "
                    "wait is over, so any sub-domain will do",
                )
        if best is None:
            return NoFit(self._no_room_reason(request, w, considered, no_labels))
        sd = best[2]
        if pinned_why:
            return Choice(sd, self._views[sd].region, models[sd], f"affinity is soft and {pinned_why}")
        return Choice(sd, self._views[sd].region, models[sd])

    @staticmethod
    def _wanted(request: Resources) -> str:
        if _is_share(request):
            mem = (
                f" and {format_memory(request.gpu_share_memory)} of its memory"
                if request.gpu_share_memory
                else ""
            )
            model = f" {request.gpu_model}" if request.gpu_model else ""
            return (
                f"a{model} card with {request.gpu_share}% of its compute{mem} free (or a whole free GPU) "
                f"and cpus={format_cpus(request.cpu_millis)} memory={format_memory(request.memory_bytes)}"
            )
        return f"a node with {request.describe()} free"

    def _no_room_reason(
        self, request: Resources, w: Want, considered: int, no_labels: list[tuple[str, list[str]]]
    ) -> str:
        if no_labels and len(no_labels) == considered:
            shown = "; ".join(f"{sd} lacks {', '.join(m)}" for sd, m in no_labels[:4])
            more = f"; and {len(no_labels) - 4} more" if len(no_labels) > 4 else ""
            return (
                f"node_selector {w.selector_text()}: none of the {considered} sub-domain(s) tried has ready "
                f"nodes with every label ({shown}{more})"
            )
        notes: list[str] = []
        if w.exclude_gpu_models and (request.gpus or _is_share(request)):
            notes.append(f"GPU models {', '.join(sorted(w.exclude_gpu_models))} excluded")
        if no_labels:
            notes.append(
                f"{len(no_labels)} of {considered} sub-domain(s) lack node_selector labels {w.selector_text()}"
            )
        return f"no sub-domain has {Placer._wanted(request)}" + (f" ({'; '.join(notes)})" if notes else "")

    @staticmethod
    def _locality_reason(
        request: Resources, w: Want, holders: int, full: int, no_labels: list[tuple[str, list[str]]]
    ) -> str:
        left = max(0.0, w.locality_until - w.now)
        tail = f"any sub-domain will do in {left:.0f}s (locality wait {w.locality_wait_s:g}s)"
        if not holders:
            extra = f"; {len(no_labels)} sub-domain(s) lack node_selector labels" if no_labels else ""
            return f"locality: no connected sub-domain holds {w.shard_text()}{extra}; {tail}"
        return (
            f"locality: {holders} sub-domain(s) hold {w.shard_text()} but none has "
            f"{Placer._wanted(request)}; {tail}"
        )

    def slot_model(self, subdomain_id: str, request: Resources) -> str:
        """GPU model of the node shape ``request`` would land on there ("" when none or unknown)."""
        view = self._views.get(subdomain_id)
        model = view.fits(request) if view is not None else None
        return model or ""

    def commit(self, subdomain_id: str, request: Resources, now: float = 0.0, gpu_model: str = "") -> None:
        """Account for a placement on ``subdomain_id`` until a summary says it has applied it.

        ``gpu_model``: the model the choice named (pins the deduction to that model's shapes).
        """
        view = self._views.get(subdomain_id)
        if view is None:
            return
        if gpu_model and not request.gpu_model and (request.gpus or _is_share(request)):
            request = replace(request, gpu_model=gpu_model)
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
