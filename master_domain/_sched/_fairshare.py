"""Priority classes and the fair-share order of pending jobs across tenants (weighted DRF).

Order (smallest key first)::

    key(job) = (-priority.value, weighted_share(job.tenant), job.submitted_at, arrival)

* **Priority classes first**: every pending job of a higher class goes before every job of a lower
  one, whatever the shares.
* **Weighted dominant resource fairness** inside a class: a tenant's dominant share is its largest
  share of any resource of the federation,

      share(t) = max_r used(t, r) / capacity(r)

  over ``cpu`` (millicores), ``memory`` (bytes), each GPU model ``gpu:<m>`` (whole GPUs plus
  ``gpu-share:<m>`` / 100) and all GPUs together (which also counts ``gpu:*`` charges of unknown
  model); resources with no capacity are left out. ``weighted_share(t) = share(t) / weight(t)``
  (weight > 0, default 1): a tenant of weight 2 is entitled to twice the resources. The tenant
  furthest below its entitlement goes first, so placing its job raises its share and lets the
  others catch up: shares converge.
* **FIFO** among equal keys: by ``submitted_at`` (seconds, the caller's clock), then arrival order.

``used`` is what the tenant holds now (its quota charges: :meth:`QuotaBook.tenant_usage`), not what it
waits for. The structure is incremental: a level (priority value) keeps a heap of tenants keyed by
(share, their oldest job), each tenant a heap of its jobs; push, remove, pop and a usage change cost
O(levels x log n) with lazily dropped stale entries, never a re-sort. :meth:`FairShareQueue.order`
walks the order lazily (the scheduler tries jobs in turn and stops when it has placed enough), at
O(log n) per job yielded. A capacity change re-keys every tenant (O(tenants x log n)).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from domainos.errors import AlreadyExists, InvalidArgument
from domainos.topology import check_name
from master_domain._sched._quota import (
    CPU,
    GPU_ANY,
    GPU_PREFIX,
    MEMORY,
    SHARE_PREFIX,
    SHARE_UNITS_PER_GPU,
    check_class,
    check_vector,
)
from master_domain._summary import Summary

#: Bounds of a priority value.
MIN_PRIORITY = -1_000_000_000
MAX_PRIORITY = 1_000_000_000
#: Bounds of a tenant weight.
MAX_WEIGHT = 1_000_000.0
# Rebuild a heap when it holds this many stale entries more than live ones.
_COMPACT_SLACK = 64


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """A named priority: higher ``value`` goes first and may preempt lower, ``preemptible`` ones.

    A job of a class with ``preemptible=False`` is never stopped to make room for another.
    """

    name: str
    value: int
    preemptible: bool = True

    def describe(self) -> str:
        """``high=1000`` (and ``, never preempted`` when it is not preemptible)."""
        return f"{self.name}={self.value}" + ("" if self.preemptible else ", never preempted")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "preemptible": self.preemptible}


LOW = PriorityClass("low", 0, True)
NORMAL = PriorityClass("normal", 100, True)
HIGH = PriorityClass("high", 1000, True)
SYSTEM = PriorityClass("system", 10000, False)
DEFAULT_PRIORITY_CLASSES = (LOW, NORMAL, HIGH, SYSTEM)
DEFAULT_PRIORITY = "normal"


class PriorityClasses:
    """The federation's priority classes (validated), and the one a job without a class gets.

    Defaults: ``low=0``, ``normal=100`` (the default), ``high=1000`` — all preemptible by a strictly
    higher class — and ``system=10000``, never preempted.
    """

    def __init__(
        self, classes: Iterable[PriorityClass] = DEFAULT_PRIORITY_CLASSES, default: str = DEFAULT_PRIORITY
    ) -> None:
        self._by_name: dict[str, PriorityClass] = {}
        for i, pc in enumerate(classes):
            fld = f"priority_classes[{i}]"
            check_name(pc.name, f"{fld}.name")
            if isinstance(pc.value, bool) or not isinstance(pc.value, int):
                raise InvalidArgument(f"expected a whole number, got {pc.value!r}", field=f"{fld}.value")
            if not MIN_PRIORITY <= pc.value <= MAX_PRIORITY:
                raise InvalidArgument(
                    f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {pc.value}", field=f"{fld}.value"
                )
            if not isinstance(pc.preemptible, bool):
                raise InvalidArgument(
                    f"expected true or false, got {pc.preemptible!r}", field=f"{fld}.preemptible"
                )
            if pc.name in self._by_name:
                raise InvalidArgument(f"priority class {pc.name!r} is defined twice", field=f"{fld}.name")
            self._by_name[pc.name] = pc
        if default not in self._by_name:
            raise InvalidArgument(
                f"{default!r} is not one of the classes: {', '.join(self.names())}", field="default_priority"
            )
        self.default = self._by_name[default]

    def names(self) -> list[str]:
        """Class names, highest value first."""
        return [pc.name for pc in sorted(self._by_name.values(), key=lambda p: (-p.value, p.name))]

    def get(self, name: str | None, fld: str = "priority") -> PriorityClass:
        """The class named ``name`` (empty or None: the default); InvalidArgument lists the choices."""
        if not name:
            return self.default
        pc = self._by_name.get(name)
        if pc is None:
            listed = ", ".join(self._by_name[n].describe() for n in self.names())
            raise InvalidArgument(f"unknown priority class {name[:80]!r}; choose one of {listed}", field=fld)
        return pc

    def __iter__(self) -> Iterator[PriorityClass]:
        return iter(self._by_name.values())

    def to_list(self) -> list[dict[str, Any]]:
        return [self._by_name[n].to_dict() for n in self.names()]

    @classmethod
    def from_list(cls, data: object, default: str = DEFAULT_PRIORITY) -> PriorityClasses:
        """From config: ``[{name, value, preemptible}]``, each field checked."""
        if not isinstance(data, list):
            raise InvalidArgument(f"expected a list, got {type(data).__name__}", field="priority_classes")
        out: list[PriorityClass] = []
        for i, item in enumerate(data):
            fld = f"priority_classes[{i}]"
            if not isinstance(item, Mapping):
                raise InvalidArgument(f"expected a mapping, got {type(item).__name__}", field=fld)
            unknown = sorted(str(k) for k in item if k not in ("name", "value", "preemptible"))
            if unknown:
                raise InvalidArgument(
                    "unknown field; allowed: name, value, preemptible", field=f"{fld}.{unknown[0]}"
                )
            name = item.get("name")
            if not isinstance(name, str):
                raise InvalidArgument(f"expected a name, got {name!r}", field=f"{fld}.name")
            value = item.get("value")
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"expected a whole number, got {value!r}", field=f"{fld}.value")
            preemptible = item.get("preemptible", True)
            if not isinstance(preemptible, bool):
                raise InvalidArgument(
                    f"expected true or false, got {preemptible!r}", field=f"{fld}.preemptible"
                )
            out.append(PriorityClass(name, value, preemptible))
        return cls(out, default)


# -- shares --------------------------------------------------------------------------------------


def check_capacity(amounts: Mapping[str, int], fld: str) -> dict[str, int]:
    """Validate a capacity ``{class: amount}`` (zero amounts dropped) like :func:`check_vector`, but
    with no upper bound: a capacity is summed from summaries, not typed by a person, and 10,000
    nodes of 2 TiB already hold 2.2e16 bytes (over ``MAX_AMOUNT`` = 2**53); it only divides."""
    out: dict[str, int] = {}
    for cls, amount in amounts.items():
        name = check_class(cls, f"{fld}[{str(cls)[:80]!r}]")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise InvalidArgument(f"expected a whole number >= 0, got {amount!r}", field=f"{fld}[{name!r}]")
        if amount:
            out[name] = amount
    return out


def capacity_from_summaries(summaries: Iterable[Summary]) -> dict[str, int]:
    """The federation's capacity by class (``cpu``, ``memory``, ``gpu:<model>``) from summaries.

    O(sub-domains x GPU models). Pass the ready sub-domains' summaries.
    """
    out: dict[str, int] = {}
    for s in summaries:
        if s.capacity.cpu_millis:
            out[CPU] = out.get(CPU, 0) + s.capacity.cpu_millis
        if s.capacity.memory_bytes:
            out[MEMORY] = out.get(MEMORY, 0) + s.capacity.memory_bytes
        for model, n in s.gpus_by_model.items():
            if n > 0:
                key = GPU_PREFIX + (model or "*")
                out[key] = out.get(key, 0) + n
    return out


def dominant_share(usage: Mapping[str, int], capacity: Mapping[str, int]) -> tuple[float, str]:
    """``(max_r used(r) / capacity(r), r)``: the dominant share and its resource (0.0, ``""`` if none).

    GPU resources are counted in GPUs: ``gpu:<m>`` plus ``gpu-share:<m>`` / 100 against the
    capacity ``gpu:<m>``; all GPUs (``gpu:*`` charges included) against ``capacity["gpu:*"]`` or,
    when absent, the sum of the models. Resources with no capacity are left out.
    """
    best, best_cls = 0.0, ""
    for cls in (CPU, MEMORY):
        cap = capacity.get(cls, 0)
        if cap > 0 and usage.get(cls, 0) > 0:
            share = usage[cls] / cap
            if share > best:
                best, best_cls = share, cls
    by_model: dict[str, float] = {}
    for cls, n in usage.items():
        if cls.startswith(GPU_PREFIX):
            model = cls[len(GPU_PREFIX) :]
            by_model[model] = by_model.get(model, 0.0) + n
        elif cls.startswith(SHARE_PREFIX):
            model = cls[len(SHARE_PREFIX) :]
            by_model[model] = by_model.get(model, 0.0) + n / SHARE_UNITS_PER_GPU
    total_used = 0.0
    for model, used in sorted(by_model.items()):
        total_used += used
        if model == "*":
            continue
        cap = capacity.get(GPU_PREFIX + model, 0)
        if cap > 0 and used / cap > best:
            best, best_cls = used / cap, GPU_PREFIX + model
    total_cap = capacity.get(GPU_ANY) or sum(
        n for c, n in capacity.items() if c.startswith(GPU_PREFIX) and c != GPU_ANY
    )
    if total_cap > 0 and total_used / total_cap > best:
        best, best_cls = total_used / total_cap, GPU_ANY
    return best, best_cls


# -- the queue -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job (or a requeued gang) waiting for placement.

    ``submitted_at``: seconds on the caller's clock (a requeued gang keeps its original time, so it
    goes back to its old place in line); ``demand``: what it asks for, by resource class (carried for
    the caller, not used by the order).
    """

    job_id: str
    tenant: str
    priority: PriorityClass
    submitted_at: float
    demand: Mapping[str, int] = field(default_factory=dict)


# (weighted share, head submitted_at, head seq, tenant, version)
_TenantEntry = tuple[float, float, int, str, int]
# (submitted_at, seq, job id)
_JobEntry = tuple[float, int, str]


class _TenantJobs:
    """One tenant's jobs at one priority value: a heap whose root is always live."""

    __slots__ = ("heap", "live", "version")

    def __init__(self) -> None:
        self.heap: list[_JobEntry] = []
        self.live: dict[str, int] = {}  # job id -> seq
        self.version = -1  # version of its live entry in the level's heap (-1: none)

    def clean_top(self) -> None:
        heap, live = self.heap, self.live
        while heap and live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        if len(heap) > 2 * len(live) + _COMPACT_SLACK:
            self.heap = [e for e in heap if live.get(e[2]) == e[1]]
            heapq.heapify(self.heap)


class _Level:
    """Jobs of one priority value: a heap of tenants keyed by (weighted share, oldest job)."""

    __slots__ = ("heap", "tenants")

    def __init__(self) -> None:
        self.heap: list[_TenantEntry] = []
        self.tenants: dict[str, _TenantJobs] = {}

    def live(self, entry: _TenantEntry) -> bool:
        tj = self.tenants.get(entry[3])
        return tj is not None and tj.version == entry[4]


class FairShareQueue:
    """Pending jobs in fair-share order (see the module docstring for the key).

    Not thread-safe; owned by the master's scheduler state machine, which pushes jobs on submit and
    requeue, removes them when placed or cancelled, and reports usage changes (:meth:`set_usage`)
    and capacity changes (:meth:`set_capacity`). Call :meth:`validate` in tests after every step.
    """

    def __init__(
        self, capacity: Mapping[str, int] | None = None, weights: Mapping[str, float] | None = None
    ) -> None:
        self._capacity: dict[str, int] = check_capacity(capacity or {}, "capacity")
        self._weights: dict[str, float] = {}
        self._usage: dict[str, dict[str, int]] = {}
        self._share: dict[str, float] = {}  # tenant -> weighted dominant share (absent: 0.0)
        self._levels: dict[int, _Level] = {}
        self._values: list[int] = []  # priority values with jobs, highest first
        self._jobs: dict[str, tuple[PendingJob, int]] = {}  # job id -> (job, seq)
        self._tenant_levels: dict[str, set[int]] = {}
        self._seq = 0
        self._version = 0
        self._mutations = 0
        for tenant, weight in (weights or {}).items():
            self.set_weight(tenant, weight)

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> PendingJob | None:
        item = self._jobs.get(job_id)
        return item[0] if item is not None else None

    def share(self, tenant: str) -> float:
        """``tenant``'s weighted dominant share (its dominant share / its weight)."""
        return self._share.get(tenant, 0.0)

    def weight(self, tenant: str) -> float:
        return self._weights.get(tenant, 1.0)

    def usage(self, tenant: str) -> dict[str, int]:
        return dict(self._usage.get(tenant, {}))

    def key(self, job_id: str) -> tuple[int, float, float, int]:
        """The job's sort key ``(-priority, weighted share, submitted_at, arrival)``."""
        job, seq = self._jobs[job_id]
        return (-job.priority.value, self.share(job.tenant), job.submitted_at, seq)

    def peek(self) -> PendingJob | None:
        """The first job in order, or None."""
        for value in self._values:
            level = self._levels[value]
            while level.heap and not level.live(level.heap[0]):
                heapq.heappop(level.heap)
            entry = level.heap[0]
            tj = level.tenants[entry[3]]
            return self._jobs[tj.heap[0][2]][0]
        return None

    def order(self) -> Iterator[PendingJob]:
        """Every pending job, first to last, lazily (O(log n) per job yielded).

        The iterator is valid until the next change to the queue (RuntimeError after one).
        """
        stamp = self._mutations
        for value in list(self._values):
            for job in self._order_level(self._levels[value]):
                if self._mutations != stamp:
                    raise RuntimeError("the fair-share queue changed during iteration")
                yield job

    def _order_level(self, level: _Level) -> Iterator[PendingJob]:
        # A k-way merge over the tenant heap and each tenant's job heap: a node's children are
        # never smaller than it (stale nodes included), so visiting candidates smallest first
        # yields live jobs in key order without touching the rest.
        cand: list[tuple[float, float, int, int, int, str]] = []
        theap = level.heap

        def push_tenant_node(i: int) -> None:
            if i < len(theap):
                sh, sub, seq, _, _ = theap[i]
                heapq.heappush(cand, (sh, sub, seq, 0, i, ""))

        def push_job_node(tenant: str, share: float, jheap: list[_JobEntry], i: int) -> None:
            if i < len(jheap):
                sub, seq, _ = jheap[i]
                heapq.heappush(cand, (share, sub, seq, 1, i, tenant))

        push_tenant_node(0)
        while cand:
            share, _, _, kind, i, tenant = heapq.heappop(cand)
            if kind == 0:
                push_tenant_node(2 * i + 1)
                push_tenant_node(2 * i + 2)
                entry = theap[i]
                if level.live(entry):
                    push_job_node(entry[3], share, level.tenants[entry[3]].heap, 0)
            else:
                tj = level.tenants[tenant]
                push_job_node(tenant, share, tj.heap, 2 * i + 1)
                push_job_node(tenant, share, tj.heap, 2 * i + 2)
                _, seq, job_id = tj.heap[i]
                if tj.live.get(job_id) == seq:
                    yield self._jobs[job_id][0]

    def explain(self, job_id: str, limit: int = 10_000) -> str:
        """Why the job is where it is in line, with the numbers (for ``domainctl explain``).

        Counting the jobs ahead walks the order: O(k log n) for the first ``limit`` jobs.
        """
        job = self._jobs[job_id][0]
        ahead = 0
        for other in self.order():
            if other.job_id == job_id:
                break
            ahead += 1
            if ahead >= limit:
                break
        where = f"more than {limit}" if ahead >= limit else str(ahead)
        return f"job {job_id} is pending with {where} jobs ahead of it: {self.describe_tenant(job.tenant)}; priority {job.priority.describe()}"

    def describe_tenant(self, tenant: str) -> str:
        """``tenant acme: dominant share 0.42 (gpu:H100 27 of 64), weight 2, weighted 0.21``."""
        usage = self._usage.get(tenant, {})
        share, cls = dominant_share(usage, self._capacity)
        if not cls:
            base = f"tenant {tenant} holds nothing (dominant share 0)"
        else:
            base = f"tenant {tenant}: dominant share {share:.3g} of {cls}"
        return f"{base}, weight {self.weight(tenant):g}, weighted share {self.share(tenant):.3g}"

    # -- changing ------------------------------------------------------------------------------

    def push(self, job: PendingJob) -> None:
        """Add a pending job; AlreadyExists if its id is queued."""
        if not isinstance(job.job_id, str) or not job.job_id:
            raise InvalidArgument(f"expected a job id, got {job.job_id!r}", field="job_id")
        if job.job_id in self._jobs:
            raise AlreadyExists(f"job {job.job_id} is already pending", field="job_id")
        check_name(job.tenant, "tenant")
        if not isinstance(job.submitted_at, (int, float)) or not math.isfinite(job.submitted_at):
            raise InvalidArgument(f"must be a finite number, got {job.submitted_at!r}", field="submitted_at")
        self._mutations += 1
        self._seq += 1
        seq = self._seq
        self._jobs[job.job_id] = (job, seq)
        value = job.priority.value
        level = self._levels.get(value)
        if level is None:
            level = self._levels[value] = _Level()
            bisect.insort(self._values, value, key=lambda v: -v)
        tj = level.tenants.get(job.tenant)
        if tj is None:
            tj = level.tenants[job.tenant] = _TenantJobs()
            self._tenant_levels.setdefault(job.tenant, set()).add(value)
        entry = (float(job.submitted_at), seq, job.job_id)
        new_head = not tj.heap or entry < tj.heap[0]
        heapq.heappush(tj.heap, entry)
        tj.live[job.job_id] = seq
        if new_head:
            self._rekey(level, job.tenant)

    def remove(self, job_id: str) -> PendingJob | None:
        """Take a job out (placed or cancelled); None if it is not pending."""
        item = self._jobs.pop(job_id, None)
        if item is None:
            return None
        self._mutations += 1
        job = item[0]
        value = job.priority.value
        level = self._levels[value]
        tj = level.tenants[job.tenant]
        del tj.live[job_id]
        was_head = tj.heap[0][2] == job_id
        tj.clean_top()
        if not tj.live:
            del level.tenants[job.tenant]
            levels = self._tenant_levels[job.tenant]
            levels.discard(value)
            if not levels:
                del self._tenant_levels[job.tenant]
            if not level.tenants:
                del self._levels[value]
                self._values.remove(value)
            else:
                self._compact(level)
        elif was_head:
            self._rekey(level, job.tenant)
        return job

    def pop(self) -> PendingJob | None:
        """Remove and return the first job."""
        job = self.peek()
        if job is not None:
            self.remove(job.job_id)
        return job

    def set_usage(self, tenant: str, usage: Mapping[str, int]) -> None:
        """What ``tenant`` holds now, by class (e.g. :meth:`QuotaBook.tenant_usage`)."""
        check_name(tenant, "tenant")
        vec = check_vector(usage, "usage")
        if vec:
            self._usage[tenant] = vec
        else:
            self._usage.pop(tenant, None)
        self._refresh(tenant)

    def add_usage(self, tenant: str, delta: Mapping[str, int], sign: int = 1) -> None:
        """``usage += sign * delta`` (sign -1: released); never below zero."""
        vec = check_vector(delta, "usage")
        cur = dict(self._usage.get(tenant, {}))
        for cls, n in vec.items():
            cur[cls] = max(0, cur.get(cls, 0) + sign * n)
        self.set_usage(tenant, cur)

    def set_weight(self, tenant: str, weight: float) -> None:
        """A tenant's fair-share weight (> 0, default 1): its entitlement relative to others."""
        check_name(tenant, "tenant")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or not 0 < weight <= MAX_WEIGHT
        ):
            raise InvalidArgument(
                f"must be a number > 0 and <= {MAX_WEIGHT:g}, got {weight!r}", field="weight"
            )
        if weight == 1.0:
            self._weights.pop(tenant, None)
        else:
            self._weights[tenant] = float(weight)
        self._refresh(tenant)

    def set_capacity(self, capacity: Mapping[str, int]) -> None:
        """The federation's capacity by class (:func:`capacity_from_summaries`); re-keys every tenant."""
        vec = check_capacity(capacity, "capacity")
        if vec == self._capacity:
            return
        self._capacity = vec
        for tenant in set(self._usage) | set(self._share):
            self._refresh(tenant)

    def _weighted(self, tenant: str) -> float:
        share, _ = dominant_share(self._usage.get(tenant, {}), self._capacity)
        return share / self.weight(tenant)

    def _refresh(self, tenant: str) -> None:
        new = self._weighted(tenant)
        if new == self._share.get(tenant, 0.0):
            return
        self._mutations += 1
        if new:
            self._share[tenant] = new
        else:
            self._share.pop(tenant, None)
        for value in self._tenant_levels.get(tenant, ()):
            self._rekey(self._levels[value], tenant)

    def _rekey(self, level: _Level, tenant: str) -> None:
        tj = level.tenants[tenant]
        self._version += 1
        tj.version = self._version
        sub, seq, _ = tj.heap[0]
        heapq.heappush(level.heap, (self.share(tenant), sub, seq, tenant, tj.version))
        self._compact(level)

    @staticmethod
    def _compact(level: _Level) -> None:
        if len(level.heap) > 2 * len(level.tenants) + _COMPACT_SLACK:
            level.heap = [e for e in level.heap if level.live(e)]
            heapq.heapify(level.heap)

    # -- invariants ----------------------------------------------------------------------------

    def validate(self) -> None:
        """Invariants: indexes agree, heaps are heaps, each tenant has one live entry with its key."""
        assert self._values == sorted(self._levels, reverse=True), (
            f"levels {self._values} vs {list(self._levels)}"
        )
        seen: set[str] = set()
        tenant_levels: dict[str, set[int]] = {}
        for value, level in self._levels.items():
            assert level.tenants, f"level {value} is empty"
            _assert_heap(level.heap, f"level {value}")
            live_entries: dict[str, _TenantEntry] = {}
            for e in level.heap:
                if level.live(e):
                    assert e[3] not in live_entries, f"tenant {e[3]} has two live entries at {value}"
                    live_entries[e[3]] = e
            for tenant, tj in level.tenants.items():
                tenant_levels.setdefault(tenant, set()).add(value)
                assert tj.live, f"tenant {tenant} at {value} has no jobs"
                _assert_heap(tj.heap, f"tenant {tenant} at {value}")
                assert tj.live.get(tj.heap[0][2]) == tj.heap[0][1], f"stale root for {tenant} at {value}"
                in_heap = {(e[2], e[1]) for e in tj.heap}
                head: _JobEntry | None = None
                for job_id, seq in tj.live.items():
                    assert (job_id, seq) in in_heap, f"job {job_id} missing from its heap"
                    job, jseq = self._jobs[job_id]
                    assert jseq == seq and job.tenant == tenant and job.priority.value == value
                    seen.add(job_id)
                    mine = (float(job.submitted_at), seq, job_id)
                    head = mine if head is None or mine < head else head
                entry = live_entries.get(tenant)
                assert entry is not None and head is not None, f"tenant {tenant} at {value} has no live entry"
                assert entry[:3] == (self.share(tenant), head[0], head[1]), f"stale key for {tenant}: {entry}"
        assert seen == set(self._jobs), "job index and queues disagree"
        assert tenant_levels == self._tenant_levels, "tenant level index is wrong"
        for tenant in set(self._usage) | set(self._share):
            assert self._share.get(tenant, 0.0) == self._weighted(tenant), f"share of {tenant} is stale"
        for tenant, usage in self._usage.items():
            assert usage and all(n > 0 for n in usage.values()), f"usage of {tenant}: {usage}"


def _assert_heap(heap: list[Any], what: str) -> None:
    for i in range(1, len(heap)):
        assert heap[(i - 1) // 2] <= heap[i], f"{what}: heap order broken at {i}"
