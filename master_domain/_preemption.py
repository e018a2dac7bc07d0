"""Gang-aware preemption in the live master: when to plan, whom to stop, and what to remember.

The pure planner is :func:`master_domain._sched._preempt.plan_preemption`; this module feeds it
from the master's own state and turns its answer into job-table events:

* **When.** Only for a PENDING job that waits for *capacity* (not quota, power, topology or a
  locality wait), at most once per :data:`PLAN_BACKOFF_S` per job, and not again while the room
  freed by its last preemption has not had :data:`HOLD_S` to show up in the summaries.
* **What it needs.** Its pending tasks' demand (``demand_and_watts`` classes; a fractional share
  is asked as one whole card), first all of them, then a single task, in every connected
  sub-domain that could ever take the task (labels, allowed models, largest node). ``free`` is the
  placer's view: the summary minus what is in flight.
* **Who may be stopped.** One :class:`RunningGang` per running job (a plain job's live tasks
  together, a gang job's gang: both are stopped whole), built from the job table in O(live tasks
  of active jobs) — never per node — and only when there is such a waiting job. Strictly lower,
  preemptible classes only (``system`` never); a job preempted :data:`PREEMPT_LIMIT` times within
  :data:`PREEMPT_WINDOW_S` is not preempted again (anti-thrash).
* **Doing it.** :class:`~master_domain._jobs.Preempt` for each victim: every live task is stopped
  with ``preempted by job <id> (priority <class>)`` and requeued as a new attempt without spending
  a retry. The preemptor is placed by the normal pass once the next summaries show the room.

Everything kept here is bounded (:data:`MAX_REMEMBERED` jobs, :data:`MAX_EVENTS` per job).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from domainos.resources import Resources
from master_domain._jobs import Job
from master_domain._placement import Placer, Want
from master_domain._sched._fairshare import PriorityClass
from master_domain._sched._preempt import NoPreemption, Preemption, PreemptionRequest, RunningGang, cheapest
from master_domain._sched._preempt import plan_preemption as _plan
from master_domain._sched._quota import CPU, MEMORY, add_vectors, gpu_class

#: A job is not preempted more than this many times within :data:`PREEMPT_WINDOW_S`.
PREEMPT_LIMIT = 3
PREEMPT_WINDOW_S = 3600.0
#: A waiting job is planned for at most once per this many seconds (a plan walks running jobs).
PLAN_BACKOFF_S = 5.0
#: After a preemption, its preemptor waits this long for the freed room before planning again.
HOLD_S = 30.0
#: Jobs whose preemption history is kept (oldest forgotten first), and events kept per job.
MAX_REMEMBERED = 10_000
MAX_EVENTS = 5

#: ``(request, gpu model it lands on) -> (demand by class, watts)`` (``Admission.demand_and_watts``).
DemandFn = Callable[[Resources, str], tuple[dict[str, int], int]]
#: Job priority class name -> class (``Admission.priority``).
PriorityFn = Callable[[str], PriorityClass]


@dataclass(frozen=True, slots=True)
class Event:
    """One preemption as one side saw it (``at``: wall-clock seconds)."""

    at: float
    other: str  # the other job: the preemptor for a victim, the victims for a preemptor
    subdomain: str
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The plan chosen for ``job_id``: stop ``victims`` (job ids) whole, each with ``stop_reason``."""

    job_id: str
    subdomain: str
    victims: tuple[str, ...]
    stop_reason: str
    reason: str
    victim_reasons: Mapping[str, str]


def _vector(free: Resources, by_model: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    if free.cpu_millis > 0:
        out[CPU] = free.cpu_millis
    if free.memory_bytes > 0:
        out[MEMORY] = free.memory_bytes
    for model, n in by_model.items():
        if n > 0:
            out[gpu_class(model)] = out.get(gpu_class(model), 0) + n
    if not by_model and free.gpus > 0:
        out[gpu_class(free.gpu_model)] = free.gpus
    return out


class Preemptions:
    """Plans preemptions for waiting jobs and remembers them for explain (see the module doc)."""

    def __init__(
        self,
        *,
        limit: int = PREEMPT_LIMIT,
        window_s: float = PREEMPT_WINDOW_S,
        backoff_s: float = PLAN_BACKOFF_S,
        hold_s: float = HOLD_S,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.hold_s = hold_s
        # job id -> monotonic time before which it is not planned for again.
        self._not_before: dict[str, float] = {}
        # job id -> the last outcome of planning for it (why it could or could not preempt).
        self._planned: OrderedDict[str, str] = OrderedDict()
        # job id -> preemptions it suffered / caused (newest last), bounded.
        self._suffered: OrderedDict[str, deque[Event]] = OrderedDict()
        self._caused: OrderedDict[str, deque[Event]] = OrderedDict()
        # job id -> monotonic times it was preempted (the last ``limit``): anti-thrash.
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        #: Preemptions carried out (plans applied) since start.
        self.total = 0

    # -- planning ------------------------------------------------------------------------------

    def due(self, job_id: str, mono: float) -> bool:
        """May ``job_id`` be planned for now (backoff and hold over)?"""
        return mono >= self._not_before.get(job_id, -math.inf)

    def plan(
        self,
        job: Job,
        indexes: list[int],
        jobs: Iterable[Job],
        placer: Placer,
        demand_of: DemandFn,
        priority_of: PriorityFn,
        tenant_of: Callable[[Job], str],
        *,
        now: float,
        mono: float,
    ) -> Decision | None:
        """Victims for ``job`` (waiting for capacity with ``indexes`` pending), or None (the reason kept).

        ``now`` is wall-clock seconds (task start times are), ``mono`` the monotonic clock (backoff).
        """
        if not indexes or not self.due(job.job_id, mono):
            return None
        self._not_before[job.job_id] = mono + self.backoff_s
        prio = priority_of(job.spec.priority)
        request = job.spec.resources
        want = Want.for_task(job.spec, indexes[0], job.created_at, now)
        if want is not None and want.strict:
            self._note(job.job_id, "no preemption: the job waits for data locality, not for room")
            return None
        sds = [sd for sd in placer.subdomains() if placer.qualifies(sd, request, want)]
        if not sds:
            self._note(
                job.job_id,
                f"no preemption: no connected sub-domain could ever take {request.describe()} "
                "(labels, GPU models or node size)",
            )
            return None
        running, left_out = self._running(job, prio, jobs, demand_of, priority_of, tenant_of, mono)
        if not running:
            self._note(
                job.job_id,
                f"no preemption: no running job may be stopped for job {job.job_id} ({prio.describe()})"
                + (f": {', '.join(left_out)}" if left_out else ": nothing else runs"),
            )
            return None
        model = request.gpu_model
        one = request
        if not request.gpus and request.gpu_share > 0:  # a share is asked as one whole card
            one = Resources(request.cpu_millis, request.memory_bytes, 1, model)
        per_task, _ = demand_of(Resources(one.cpu_millis, one.memory_bytes, one.gpus, model), model)
        # A gang needs all its tasks at once; a plain job's tasks are independent: all, else one.
        counts = [len(indexes)] if job.spec.is_gang or len(indexes) == 1 else [len(indexes), 1]
        best: Preemption | None = None
        last: NoPreemption | None = None
        for count in counts:
            demand: dict[str, int] = {}
            for _ in range(count):
                demand = add_vectors(demand, per_task)
            plans: list[Preemption | NoPreemption] = []
            for sd in sds:
                free = placer.free_now(sd)
                if free is None:
                    continue
                req = PreemptionRequest(
                    job.job_id, tenant_of(job), prio, sd, demand, _vector(free[0], free[1])
                )
                out = _plan(req, running, now)
                plans.append(out)
                if isinstance(out, NoPreemption) and out.needed:
                    last = out
            best = cheapest(plans)
            if best is not None:
                break
        if best is None:
            why = last.reason if last is not None else "no sub-domain is short of anything it asks"
            if left_out:
                why += f"; not considered: {', '.join(left_out)}"
            self._note(job.job_id, f"no preemption: {why}")
            return None
        victims = tuple(dict.fromkeys(v.gang.job_id for v in best.victims))
        stop_reason = f"preempted by job {job.job_id} (priority {prio.name})"
        self._not_before[job.job_id] = mono + self.hold_s
        return Decision(
            job.job_id,
            best.subdomain,
            victims,
            stop_reason,
            best.reason,
            {v.gang.job_id: v.reason for v in best.victims},
        )

    def _running(
        self,
        preemptor: Job,
        prio: PriorityClass,
        jobs: Iterable[Job],
        demand_of: DemandFn,
        priority_of: PriorityFn,
        tenant_of: Callable[[Job], str],
        mono: float,
    ) -> tuple[list[RunningGang], list[str]]:
        """One gang per running job that may be preempted (its live tasks, by sub-domain).

        Jobs of the same or a higher class, of a never-preempted class, or preempted too often
        lately are only counted (their tasks are not walked): returns (gangs, what was left out).
        """
        gangs: list[RunningGang] = []
        thrashed = not_lower = never = 0
        for job in jobs:
            if job.job_id == preemptor.job_id or job.terminal or job.cancel_requested or not job.live_tasks:
                continue
            pc = priority_of(job.spec.priority)
            if pc.value >= prio.value:
                not_lower += 1
                continue
            if not pc.preemptible:
                never += 1
                continue
            if self.recent(job.job_id, mono) >= self.limit:
                thrashed += 1
                continue
            alloc: dict[str, dict[str, int]] = {}
            tasks: list[int] = []
            started = math.inf
            for task in job.tasks:
                if not task.live or task.stopping:
                    continue
                demand, _ = demand_of(job.spec.resources, task.gpu_model)
                alloc[task.subdomain_id] = add_vectors(alloc.get(task.subdomain_id, {}), demand)
                tasks.append(task.index)
                started = min(started, task.started_at or job.created_at)
            if not tasks:
                continue
            gangs.append(
                RunningGang(
                    gang_id=job.job_id,
                    job_id=job.job_id,
                    tenant=tenant_of(job),
                    priority=pc,
                    started_at=started if math.isfinite(started) else job.created_at,
                    allocations=alloc,
                    tasks=tuple(tasks),
                    submitted_at=job.created_at,
                )
            )
        left_out: list[str] = []
        if not_lower:
            left_out.append(f"{not_lower} running job(s) at priority {prio.value} or higher")
        if never:
            left_out.append(f"{never} of a class never preempted")
        if thrashed:
            left_out.append(
                f"{thrashed} preempted {self.limit} times in the last {self.window_s:g}s (anti-thrash)"
            )
        return gangs, left_out

    # -- bookkeeping ---------------------------------------------------------------------------

    def applied(self, decision: Decision, *, now: float, mono: float) -> None:
        """The decision's victims were stopped: remember both sides (explain, anti-thrash)."""
        self.total += 1
        names = ", ".join(f"job {v}" for v in decision.victims)
        self._push(self._caused, decision.job_id, Event(now, names, decision.subdomain, decision.reason))
        for v in decision.victims:
            reason = decision.victim_reasons.get(v, decision.reason)
            self._push(self._suffered, v, Event(now, decision.job_id, decision.subdomain, reason), mono)
        self._note(decision.job_id, f"preempting {names} in sub-domain {decision.subdomain}")

    def recent(self, job_id: str, mono: float) -> int:
        """How many times ``job_id`` was preempted within the window."""
        return sum(1 for t in self._times.get(job_id, ()) if mono - t < self.window_s)

    def _push(
        self, book: OrderedDict[str, deque[Event]], job_id: str, event: Event, mono: float | None = None
    ) -> None:
        events = book.get(job_id)
        if events is None:
            events = book[job_id] = deque(maxlen=MAX_EVENTS)
        book.move_to_end(job_id)
        events.append(event)
        while len(book) > MAX_REMEMBERED:
            book.popitem(last=False)
        if mono is not None:
            times = self._times.get(job_id)
            if times is None:
                times = self._times[job_id] = deque(maxlen=max(self.limit, 1))
            self._times.move_to_end(job_id)
            times.append(mono)
            while len(self._times) > MAX_REMEMBERED:
                self._times.popitem(last=False)

    def _note(self, job_id: str, text: str) -> None:
        self._planned[job_id] = text
        self._planned.move_to_end(job_id)
        while len(self._planned) > MAX_REMEMBERED:
            self._planned.popitem(last=False)

    def forget(self, job_id: str) -> None:
        """The job left the active table: drop what only mattered while it ran or waited."""
        self._not_before.pop(job_id, None)
        self._planned.pop(job_id, None)
        self._times.pop(job_id, None)

    # -- explain -------------------------------------------------------------------------------

    def explain(self, job_id: str, fmt_time: Callable[[float], str], *, waiting: bool = True) -> list[str]:
        """``preempted by ...`` / ``preempting ...`` lines for ``job_id`` (empty when none); the last
        "no preemption" verdict only while the job still ``waiting`` for room."""
        lines: list[str] = []
        for e in self._suffered.get(job_id, ()):  # the planner's reason starts "preempted by job ..."
            lines.append(f"{e.reason} (at {fmt_time(e.at)})")
        for e in self._caused.get(job_id, ()):
            lines.append(
                f"preempting {e.other} in sub-domain {e.subdomain} (at {fmt_time(e.at)}): {e.reason}"
            )
        note = self._planned.get(job_id)
        if note and note.startswith("no preemption") and waiting:
            lines.append(note)
        return lines
