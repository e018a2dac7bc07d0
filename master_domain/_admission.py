"""Admission for the live master: quotas, region power budgets and the fair-share order, composed.

Pure: no I/O, no clock, no event loop. The master feeds it what it knows (quotas loaded from the
store, region budgets from the topology file, summaries, placements and releases) and asks it, for
each PENDING task, where the task may go. The decision for one task, in order:

1. **Candidates** come from the first placement policy (:class:`~master_domain._placement.Placer`),
   best first; each is a sub-domain whose summary shows a node the task fits in, under the task's
   constraints (the master passes ``choose`` bound to them: excluded GPU models, node selector,
   locality); the choice names the GPU model it would land on and why.
2. **Quota**: :meth:`QuotaBook.admit` for the tenant at the candidate's ``(region, sub-domain)``,
   with the GPU model of the node shape the task would land on (``gpu:*`` when not known). A
   refusal moves on to the next candidate.
3. **Power**: the region's budget (:meth:`PowerBook.check` with ``TDP × GPUs``, or ``TDP × share%``
   for a fractional GPU share, which quota counts as ``gpu-share:<model>``). Over budget moves on
   to the next candidate (another region's sub-domain, since every sub-domain of the region is
   over too).
4. The first candidate that passes both is the placement (:class:`Admitted`); when none does, the
   task waits (:class:`Refused`) with every reason and its numbers.

Charges are per allocation ``<job>/<index>/<attempt>`` (quota and power alike), released when the
attempt ends or is re-placed. Pending jobs are visited in :class:`FairShareQueue` order (priority
class, then the tenant's weighted dominant share, then FIFO). Every call costs O(quotas of the
tenant + sub-domains tried + log pending jobs); nothing here is per node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from domainos.errors import InvalidArgument
from domainos.resources import Resources
from master_domain._placement import Choice, NoFit
from master_domain._sched._fairshare import (
    FairShareQueue,
    PendingJob,
    PriorityClass,
    PriorityClasses,
)
from master_domain._sched._power import Fits, PowerBook, PowerModel, RegionPower, format_kw
from master_domain._sched._quota import (
    ANY,
    Admit,
    Quota,
    QuotaBook,
    demand_of,
    format_amount,
)

#: The region quotas and charges use for a sub-domain that declared none.
NO_REGION = "no-region"
#: At most this many candidate sub-domains are tried for one task (each try is O(sub-domains)).
MAX_CANDIDATES = 32


def allocation_id(job_id: str, index: int, attempt: int) -> str:
    """The id of one placed attempt's charges: ``<job>/<index>/<attempt>``."""
    return f"{job_id}/{index}/{attempt}"


@dataclass(frozen=True, slots=True)
class Admitted:
    """Place the task on ``subdomain_id``: quota and power admit it there.

    ``demand`` and ``watts`` are what :meth:`Admission.charge` will count; ``why`` says why here.
    """

    subdomain_id: str
    region: str
    gpu_model: str
    demand: Mapping[str, int]
    watts: int
    why: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The task waits. ``kind``: ``quota``, ``power``, ``capacity`` or a mix (``quota+power``)."""

    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class QuotaRow:
    """One quota and what its tenant uses inside its scope, per class it limits."""

    quota: Quota
    used: Mapping[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [
            f"{cls} {format_amount(cls, self.used.get(cls, 0))} of {format_amount(cls, limit)}"
            for cls, limit in self.quota.limits.items()
        ]
        return f"{self.quota.tenant} {self.quota.name}: " + (", ".join(parts) or "no limits")


#: Chooses a sub-domain for a request, skipping the ``avoid`` ones (``Placer.choose``).
ChooseFn = Callable[[Resources, Mapping[str, float]], Choice | NoFit]
#: The GPU model of the node shape a request would land on in a sub-domain ("" when unknown).
ModelFn = Callable[[str, Resources], str]


class Admission:
    """Quotas, power and priority order of the live master (see the module docstring)."""

    def __init__(
        self,
        regions: Iterable[RegionPower] = (),
        *,
        classes: PriorityClasses | None = None,
        power_model: PowerModel | None = None,
    ) -> None:
        self.quotas = QuotaBook()
        self.power = PowerBook(regions, power_model)
        self.classes = classes if classes is not None else PriorityClasses()
        self.queue = FairShareQueue()
        # allocation id -> why it was placed where it is (for explain; live allocations only).
        self._why: dict[str, str] = {}
        # allocation id -> tenant (to refresh the tenant's fair-share usage on release).
        self._tenant: dict[str, str] = {}
        # Jobs in the queue, and why each last waited (for explain).
        self._queued: set[str] = set()
        self._waits: dict[str, Refused] = {}

    # -- the pending queue ---------------------------------------------------------------------

    def priority(self, name: str) -> PriorityClass:
        """The job's class (unknown names, e.g. from an old record, get the default)."""
        try:
            return self.classes.get(name)
        except InvalidArgument:
            return self.classes.default

    def sync_pending(self, pending: Iterable[tuple[str, str, str, float]]) -> None:
        """Make the queue hold exactly the jobs ``(job id, tenant, priority, submitted at)`` given."""
        wanted: dict[str, tuple[str, str, float]] = {j: (t, p, s) for j, t, p, s in pending}
        for job_id in [j for j in self._queued if j not in wanted]:
            self.queue.remove(job_id)
            self._queued.discard(job_id)
            self._waits.pop(job_id, None)
        for job_id, (tenant, prio, submitted) in wanted.items():
            if job_id not in self._queued:
                self.queue.push(PendingJob(job_id, tenant, self.priority(prio), submitted))
                self._queued.add(job_id)

    def note_wait(self, job_id: str, refused: Refused) -> None:
        """Remember why a queued job waits (shown by explain until it leaves the queue)."""
        if job_id in self._queued:
            self._waits[job_id] = refused

    def last_wait(self, job_id: str) -> Refused | None:
        return self._waits.get(job_id)

    def queue_position(self, job_id: str) -> str:
        """Where the job stands in line and why (empty when it is not queued)."""
        return self.queue.explain(job_id) if job_id in self._queued else ""

    def order(self) -> Iterator[str]:
        """Pending job ids in fair-share order (priority, weighted DRF share, FIFO)."""
        for job in list(self.queue.order()):
            yield job.job_id

    def set_capacity(self, capacity: Mapping[str, int]) -> None:
        self.queue.set_capacity(capacity)

    # -- decisions -----------------------------------------------------------------------------

    def decide(
        self,
        tenant: str,
        request: Resources,
        choose: ChooseFn,
        model_of: ModelFn,
        avoid: Mapping[str, float] | None = None,
    ) -> Admitted | Refused:
        """Where one task of ``request`` may go, or why it waits (see the module docstring)."""
        skip: dict[str, float] = dict(avoid or {})
        quota_reasons: list[str] = []
        power_reasons: list[str] = []
        skipped: list[str] = []
        capacity = ""
        for _ in range(MAX_CANDIDATES):
            choice = choose(request, skip)
            if isinstance(choice, NoFit):
                capacity = choice.reason
                break
            sd, region = choice.subdomain_id, choice.region or NO_REGION
            skip[sd] = math.inf
            gpu = request.gpus > 0 or request.gpu_share > 0
            model = (choice.gpu_model or model_of(sd, request) or request.gpu_model) if gpu else ""
            demand, watts = self.demand_and_watts(request, model)
            verdict = self.quotas.admit(tenant, demand, region, sd)
            if not isinstance(verdict, Admit):
                quota_reasons.append(verdict.reason)
                skipped.append(f"{sd} (quota)")
                continue
            power_note = ""
            if watts and region in self.power.regions():
                check = self.power.check(region, watts)
                if not isinstance(check, Fits):
                    if check.reason not in power_reasons:
                        power_reasons.append(check.reason)
                    skipped.append(f"{sd} (power)")
                    continue
                power_note = (
                    f"power: region {region} {format_kw(check.in_use_w + watts)} kW of "
                    f"{format_kw(check.budget_w)} kW with this task ({format_kw(watts)} kW)"
                )
            why = [f"the placer's best fit for {request.describe()}"]
            if choice.why:
                why.append(choice.why)
            if skipped:
                why.append("after skipping " + ", ".join(skipped))
            why.append(self._quota_note(tenant, demand, region, sd, verdict))
            if power_note:
                why.append(power_note)
            return Admitted(sd, choice.region, model, demand, watts, "; ".join(why))
        return self._refused(quota_reasons, power_reasons, capacity)

    def demand_and_watts(self, request: Resources, gpu_model: str) -> tuple[dict[str, int], int]:
        """What one task placed on ``gpu_model`` GPUs charges: quota classes and watts (TDP x GPUs).

        A fractional share (``gpu_share`` percent of one card, no whole GPUs) charges
        ``gpu-share:<model>`` in 1% units and ``TDP x share%`` watts (rounded up). An unknown model
        is charged as ``gpu:*`` / ``gpu-share:*`` and the power model's unknown-GPU draw.
        """
        placed = Resources(request.cpu_millis, request.memory_bytes, request.gpus, gpu_model or ANY)
        if not request.gpus and request.gpu_share > 0:
            watts = math.ceil(self.power.model.tdp(gpu_model) * request.gpu_share / 100)
            return demand_of(placed, gpu_share=request.gpu_share), watts
        return demand_of(placed), (self.power.model.task_w(placed) if request.gpus else 0)

    def _quota_note(self, tenant: str, demand: Mapping[str, int], region: str, sd: str, ok: Admit) -> str:
        if not ok.quotas:
            return f"quota: tenant {tenant} has no quota here (not limited)"
        notes: list[str] = []
        for q in ok.quotas:
            used = self.quotas.used(tenant, q.region, q.subdomain)
            for cls, limit in q.limits.items():
                if cls in demand or (cls.endswith(ANY) and any(c.startswith(cls[:-1]) for c in demand)):
                    add = demand.get(cls, 0) or sum(n for c, n in demand.items() if c.startswith(cls[:-1]))
                    notes.append(
                        f"{cls} {format_amount(cls, used.get(cls, 0) + add)} of "
                        f"{format_amount(cls, limit)} in {q.name}"
                    )
        return "quota: " + (", ".join(notes) if notes else "within every quota") + f" (at {region}/{sd})"

    @staticmethod
    def _refused(quota: list[str], power: list[str], capacity: str) -> Refused:
        # Where some sub-domain had room, the placer's "nothing else fits" says nothing new.
        if not quota and not power:
            return Refused("capacity", capacity or "no sub-domain has room")
        parts: list[str] = []
        kinds: list[str] = []
        if quota:
            kinds.append("quota")
            parts.append("quota: " + "; ".join(dict.fromkeys(quota)))
        if power:
            kinds.append("power")
            parts.append("power: " + "; ".join(power))
        return Refused("+".join(kinds), "; ".join(parts))

    # -- charges -------------------------------------------------------------------------------

    def charge(
        self,
        alloc: str,
        tenant: str,
        region: str,
        subdomain: str,
        demand: Mapping[str, int],
        watts: int,
        why: str = "",
    ) -> None:
        """Count a placement (idempotent by ``alloc``); a restarted master charges what runs."""
        self.quotas.release(alloc)  # a re-charge with other content replaces the old one
        self.quotas.charge(alloc, tenant, region or NO_REGION, subdomain, demand)
        if watts and region in self.power.regions():
            self.power.charge(alloc, region, watts, subdomain=subdomain, force=True)
        self._tenant[alloc] = tenant
        if why:
            self._why[alloc] = why
        self._usage_changed(tenant)

    def release(self, alloc: str) -> None:
        """The attempt ended or is placed again: free its quota and power (idempotent)."""
        self.quotas.release(alloc)
        self.power.release(alloc)
        self._why.pop(alloc, None)
        tenant = self._tenant.pop(alloc, None)
        if tenant is not None:
            self._usage_changed(tenant)

    def _usage_changed(self, tenant: str) -> None:
        self.queue.set_usage(tenant, self.quotas.tenant_usage(tenant))

    def why_placed(self, alloc: str) -> str:
        return self._why.get(alloc, "placed before this master started (reasons not kept)")

    def observe(self, region: str, subdomain: str, measured_w: float) -> None:
        """A sub-domain's measured draw from its summary (regions without a budget are ignored)."""
        if region in self.power.regions():
            self.power.observe(region, subdomain, measured_w)

    # -- quotas --------------------------------------------------------------------------------

    def put_quota(self, quota: Quota) -> Quota:
        return self.quotas.put(quota)

    def remove_quota(self, tenant: str, region: str, subdomain: str) -> Quota:
        return self.quotas.remove_quota(tenant, region, subdomain)

    def quota_rows(self, tenant: str = "") -> list[QuotaRow]:
        """Every quota (of ``tenant``) with the usage inside its scope of each class it limits."""
        rows: list[QuotaRow] = []
        for q in self.quotas.quotas(tenant or None):
            used = self.quotas.used(q.tenant, q.region, q.subdomain)
            rows.append(QuotaRow(q, {cls: used.get(cls, 0) for cls in q.limits}))
        return rows

    def describe_power(self, region: str) -> str:
        if region not in self.power.regions() or math.isinf(self.power.budget_w(region)):
            return f"region {region}: no power budget (not capped)"
        return self.power.describe(region)

    # -- invariants ----------------------------------------------------------------------------

    def validate(self) -> None:
        """Every part's invariants, and the charges agree with each other."""
        self.quotas.validate()
        self.power.validate()
        self.queue.validate()
        allocs = {a.allocation_id for a in self.quotas.allocations()}
        assert set(self._tenant) == allocs, f"tenants of {set(self._tenant) ^ allocs} out of step"
        assert self._queued == {j.job_id for j in self.queue.order()}, "queued set out of step"
        assert set(self._waits) <= self._queued, "wait reasons kept for jobs not queued"
        assert set(self._why) <= allocs, f"reasons kept for released allocations {set(self._why) - allocs}"
        for alloc in allocs:
            assert self.power.charge_of(alloc) is None or alloc in self._tenant
        for tenant in self.quotas.tenants():
            assert dict(self.queue.usage(tenant)) == self.quotas.tenant_usage(tenant), tenant
