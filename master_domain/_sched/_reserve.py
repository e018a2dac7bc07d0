"""Two-phase gang reservations across sub-domains: the master's side and the sub-domain's side.

A gang (``gang: {min: N, timeout: S}``) is placed all or nothing. The placer splits it into *parts*,
one per chosen sub-domain; a part is a :class:`Demand` (one :class:`~domainos.resources.Resources`
per task: CPU in millicores, memory in bytes, whole GPUs of ``gpu_model``). Both sides are pure
state machines, ``handle(event) -> list[command]``; the commands of one are the events of the
other, so the service layer only carries messages::

    master: Coordinator                   sub-domain: sub_domain/_reservations.py (live),
                                                   SubdomainReservations (the pure model below)
    Start ─▶ Reserve(rid, demand, expires_at, hold_s) ─▶ hold if it fits in capacity − allocated − held
         ◀─ Accepted(rid)  |  Refused(rid, reason)   ◀─
    every part accepted ─▶ Commit(rid) ─────────────▶ the hold becomes an allocation
         ◀─ Committed(rid) |  Refused(rid, expired)  ◀─
    every part committed ─▶ GangPlaced
    a refusal, a lost sub-domain, the deadline, Cancel ─▶ Release(rid) to *every* part ─▶ GangFailed

Reservation ids are ``"<job>/<attempt>/<sub-domain>"`` (:func:`reservation_id`): unique because
every new placement of a job gets a new attempt, and usable as the allocation id of the quota and
power books. Every message is idempotent by that id: a repeated Reserve is answered as the first
one was, a repeated Commit is answered Committed, a repeated Release does nothing, and a Reserve
that arrives after its Release (or after it expired) is refused, never held (the sub-domain keeps a
tombstone of every finished id for ``tombstone_s``).

**No partial gang.** The coordinator sends Commit only once every part is Accepted, and reports
:class:`GangPlaced` only once every part is Committed (so a placed gang has an allocation in every
one of its sub-domains). Any refusal, a lost sub-domain, the deadline or a cancel releases every
part — pending, accepted or already committed — and reports :class:`GangFailed`.

**No deadlock: the reservation rule.** Two gangs that each hold half of what both need and wait for
the rest would deadlock (or, with timeouts, both fail and retry forever). The coordinator prevents
it with three rules:

1. *One reserving gang per sub-domain.* At most one gang has uncommitted reservations at a
   sub-domain at a time (the sub-domain's *reservation lock*, held from the first Reserve to
   GangPlaced/GangFailed). A gang takes the locks of all its sub-domains at once or none, and a
   sub-domain never waits (it accepts or refuses at once), so no gang holds one lock while waiting
   for another: there is no wait-for cycle, hence no deadlock. As a bonus, two gangs of this master
   never compete for the same free capacity, so a refusal is always a real capacity miss (a stale
   summary, a node gone): the mis-dispatch count measures summary staleness, not contention.
2. *Rank order, no overtaking.* Waiting gangs are ranked by ``(-priority, start time, arrival)``.
   In rank order, a waiting gang starts when none of its sub-domains is locked *or wanted by a
   higher-ranked waiting gang*. So the head of the queue starts as soon as the gangs in flight on its
   sub-domains end, and no later gang can take them first: no starvation within a priority.
3. *Deadlines.* A gang's deadline is ``start + timeout_s`` (time in the queue included); the commit
   phase gets ``commit_grace_s`` more. After the first :class:`Tick` at or past them the gang has
   ended (placed or failed with the reason): liveness, checked by :meth:`Coordinator.validate`.

For two gangs A and B that each need more than half of sub-domains X and Y: they never reserve at
the same time; the higher-ranked (say A) reserves both and commits — one wins — then B reserves and
is refused for capacity (failing with the numbers) or fits if A has left.

Cost: gangs at one sub-domain are serialized, two round trips each (reserve, commit), so at most
about ``1 / (2 · RTT)`` gang starts per second per sub-domain (500/s at 1 ms, 10/s across 50 ms);
gangs on disjoint sub-domains proceed in parallel, and plain (non-gang) tasks do not use this path.
The coordinator's work per event is O(parts of the gang) plus, when a lock is freed, O(waiting
gangs × parts) to start the next ones; nothing is per node.

**Holds are leases.** A sub-domain holds a reservation for ``hold_s`` seconds of its own monotonic
clock (``expires_at`` is the master's clock, for people; clocks of two machines are never compared).
``hold_s`` covers the gang's deadline plus ``commit_grace_s``, so a Commit the master sends in time
finds its hold; a late one is refused (``expired=True``) and the gang fails whole. A sub-domain that
loses its master drops its holds (:class:`MasterLost`); on reconnecting it sends :class:`Resync`
(what it holds and what it has committed) and the master releases what belongs to failed gangs.

**Accounting at the sub-domain.** ``SubdomainReservations`` owns, per node, a schedulable capacity
(:class:`SetNode`), the holds and the committed allocations placed on it; a Reserve is packed task
by task (largest first, best fit on the node with the least room left) and refused when any task
does not fit in ``capacity − allocated − held`` of some node. Packing costs
O(nodes + tasks × distinct free vectors), not O(tasks × nodes).
"""

from __future__ import annotations

import enum
import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from domainos.clock import Clock
from domainos.errors import InvalidArgument
from domainos.resources import Resources

log = logging.getLogger(__name__)

#: How long the master waits after a gang's deadline for the commit acknowledgements (seconds).
DEFAULT_COMMIT_GRACE_S = 10.0
#: How long a finished reservation id is remembered, so late duplicates stay harmless (seconds).
DEFAULT_TOMBSTONE_S = 600.0


def reservation_id(job_id: str, attempt: int, subdomain: str) -> str:
    """The id of a gang part: ``"<job>/<attempt>/<sub-domain>"``."""
    return f"{job_id}/{attempt}/{subdomain}"


def _within(used: Resources, capacity: Resources) -> bool:
    return (
        used.cpu_millis <= capacity.cpu_millis
        and used.memory_bytes <= capacity.memory_bytes
        and used.gpus <= capacity.gpus
    )


def _non_negative(r: Resources) -> bool:
    return r.cpu_millis >= 0 and r.memory_bytes >= 0 and r.gpus >= 0


def _sum(items: Iterable[Resources]) -> Resources:
    cpu = mem = gpus = 0
    for r in items:
        cpu += r.cpu_millis
        mem += r.memory_bytes
        gpus += r.gpus
    return Resources(cpu, mem, gpus)


def _seconds(t: float) -> str:
    return f"{t:.1f} s" if t >= 1 else f"{t * 1000:.0f} ms"


def _room_key(r: Resources) -> tuple[int, int, int, str]:
    return (r.gpus, r.cpu_millis, r.memory_bytes, r.gpu_model)


def _names(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "none"


@dataclass(frozen=True, slots=True)
class Demand:
    """What one part of a gang needs in one sub-domain: one request per task.

    Each task is a :class:`Resources` (CPU millicores, memory bytes, whole GPUs of ``gpu_model``)
    and must fit on one node.
    """

    tasks: tuple[Resources, ...]

    def __post_init__(self) -> None:
        if not self.tasks:
            raise InvalidArgument("a gang part needs at least one task", field="demand.tasks")
        for i, t in enumerate(self.tasks):
            if not _non_negative(t):
                raise InvalidArgument(f"must not be negative, got {t.describe()}", field=f"demand.tasks[{i}]")

    @classmethod
    def of(cls, task: Resources, count: int = 1) -> Demand:
        """``count`` identical tasks."""
        if count < 1:
            raise InvalidArgument(f"must be at least 1, got {count}", field="demand.count")
        return cls((task,) * count)

    @property
    def total(self) -> Resources:
        """The sum over the tasks (``gpu_model`` set when every GPU task asks for the same one)."""
        models = {t.gpu_model for t in self.tasks if t.gpus}
        s = _sum(self.tasks)
        return Resources(s.cpu_millis, s.memory_bytes, s.gpus, models.pop() if len(models) == 1 else "")

    def gpus_by_model(self) -> dict[str, int]:
        """Whole GPUs asked per model (``""``: any model)."""
        out: dict[str, int] = {}
        for t in self.tasks:
            if t.gpus:
                out[t.gpu_model] = out.get(t.gpu_model, 0) + t.gpus
        return out

    def describe(self) -> str:
        """E.g. ``4 × (cpus=8 memory=64Gi gpus=8 (H100))``."""
        counts = Counter(self.tasks)
        return " + ".join(f"{n} × ({r.describe()})" for r, n in counts.items())


# -- the master's events and commands ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Place a gang: reserve ``parts`` (sub-domain → demand) within ``timeout_s`` seconds of ``now``.

    ``now`` is the master's monotonic clock in seconds. A repeated Start of the same attempt is a
    no-op; a newer attempt supersedes the older one (which fails and is released).
    """

    job_id: str
    attempt: int
    parts: Mapping[str, Demand]
    now: float
    timeout_s: float
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    """The sub-domain holds the reservation (it fits in its free capacity minus other holds)."""

    reservation_id: str
    subdomain: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The sub-domain refused a Reserve (no room: a mis-dispatch) or a Commit.

    ``expired`` is set when the refusal is not about capacity: the hold expired, was released, or
    the id is unknown.
    """

    reservation_id: str
    subdomain: str
    reason: str
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Committed:
    """The sub-domain turned the hold into an allocation."""

    reservation_id: str
    subdomain: str


@dataclass(frozen=True, slots=True)
class SubdomainLost:
    """The sub-domain's stream ended: every gang with a part there fails."""

    subdomain: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes (master monotonic seconds): deadlines and tombstones expire."""

    now: float


@dataclass(frozen=True, slots=True)
class Cancel:
    """The job was cancelled (or no longer wants its gang): release every part."""

    job_id: str
    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class Resync:
    """What a (re)connected sub-domain holds and has committed, by reservation id."""

    subdomain: str
    held: tuple[str, ...] = ()
    committed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reserve:
    """Hold ``demand`` for the reservation until it is committed or released.

    ``expires_at`` is when the master stops waiting for the commit (its monotonic clock, shown to
    people); the sub-domain holds for ``hold_s`` seconds of its own clock from receipt.
    """

    reservation_id: str
    subdomain: str
    demand: Demand
    expires_at: float
    hold_s: float
    job_id: str = ""
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Commit:
    """Every part was accepted: turn the hold into an allocation (start the tasks)."""

    reservation_id: str
    subdomain: str


@dataclass(frozen=True, slots=True)
class Release:
    """Drop the hold or the allocation (idempotent; no answer)."""

    reservation_id: str
    subdomain: str
    reason: str


@dataclass(frozen=True, slots=True)
class GangPlaced:
    """Every part is committed: ``reservations`` maps each sub-domain to its reservation id."""

    job_id: str
    attempt: int
    reservations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class GangFailed:
    """The gang was not placed; every part has been released.

    ``refused_by`` lists the (sub-domain, reason) refusals known when it failed; their number is
    the gang's mis-dispatch count (later refusals of the same attempt are counted in
    :attr:`Coordinator.stats`).
    """

    job_id: str
    attempt: int
    reason: str
    refused_by: tuple[tuple[str, str], ...] = ()
    timed_out: bool = False

    @property
    def misdispatches(self) -> int:
        return len(self.refused_by)


MasterEvent = Start | Accepted | Refused | Committed | SubdomainLost | Tick | Cancel | Resync
MasterCommand = Reserve | Commit | Release | GangPlaced | GangFailed


class Phase(enum.StrEnum):
    """Where a gang is: waiting for its sub-domains' locks, reserving, or committing."""

    QUEUED = "QUEUED"
    RESERVING = "RESERVING"
    COMMITTING = "COMMITTING"


@dataclass(slots=True)
class ReservationStats:
    """Counters since start (read at scrape time by the metrics collector).

    ``misdispatch_rate`` = capacity refusals / reservations sent.
    """

    reserves_sent: int = 0
    accepted: int = 0
    refused: int = 0
    expired: int = 0
    gangs_started: int = 0
    gangs_placed: int = 0
    gangs_failed: int = 0
    gangs_timed_out: int = 0

    @property
    def misdispatch_rate(self) -> float:
        return self.refused / self.reserves_sent if self.reserves_sent else 0.0


@dataclass(slots=True)
class _Gang:
    job_id: str
    attempt: int
    priority: int
    parts: dict[str, Demand]
    rids: dict[str, str]
    started_at: float
    timeout_s: float
    seq: int
    phase: Phase = Phase.QUEUED
    accepted: set[str] = field(default_factory=set)
    committed: set[str] = field(default_factory=set)

    @property
    def deadline(self) -> float:
        return self.started_at + self.timeout_s

    def rank(self) -> tuple[int, float, int]:
        return (-self.priority, self.started_at, self.seq)


class Coordinator:
    """The master's side: all-or-nothing placement of gangs across sub-domains.

    Feed it events with :meth:`handle`; carry out the commands it returns in order (send Reserve,
    Commit and Release to their sub-domains; report GangPlaced / GangFailed to the job table).
    Time comes in with :class:`Start` and :class:`Tick` (master monotonic seconds).
    """

    def __init__(
        self, *, commit_grace_s: float = DEFAULT_COMMIT_GRACE_S, tombstone_s: float = DEFAULT_TOMBSTONE_S
    ) -> None:
        if not (math.isfinite(commit_grace_s) and commit_grace_s > 0):
            raise InvalidArgument(f"must be > 0, got {commit_grace_s}", field="commit_grace_s")
        if not (math.isfinite(tombstone_s) and tombstone_s >= 0):
            raise InvalidArgument(f"must be >= 0, got {tombstone_s}", field="tombstone_s")
        self.commit_grace_s = commit_grace_s
        self.tombstone_s = tombstone_s
        self.stats = ReservationStats()
        self._now = -math.inf
        self._seq = 0
        self._gangs: dict[str, _Gang] = {}
        self._locks: dict[str, str] = {}
        self._rids: dict[str, tuple[str, str]] = {}
        # Finished reservation ids -> placed?; finished (job, attempt); expiry order of both.
        self._ended: dict[str, bool] = {}
        self._ended_jobs: dict[str, int] = {}
        self._expiry: deque[tuple[float, str, int, tuple[str, ...]]] = deque()
        self._dirty = False

    # -- reads -------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The latest time seen (master monotonic seconds)."""
        return self._now

    def phase(self, job_id: str) -> Phase | None:
        gang = self._gangs.get(job_id)
        return gang.phase if gang is not None else None

    def active(self) -> list[str]:
        """Jobs whose gang is queued, reserving or committing."""
        return list(self._gangs)

    def locks(self) -> dict[str, str]:
        """Sub-domain → the job whose reservations are in flight there."""
        return dict(self._locks)

    def explain(self, job_id: str) -> str | None:
        """Why the job's gang is where it is (for ``domainctl explain``), or None if not active."""
        g = self._gangs.get(job_id)
        if g is None:
            return None
        left = g.deadline - self._now
        parts = _names(g.parts)
        if g.phase is Phase.QUEUED:
            busy = [
                f"{sd} (reserving for job {self._locks[sd]})" for sd in sorted(g.parts) if sd in self._locks
            ]
            why = (
                f"sub-domain(s) {', '.join(busy)} busy"
                if busy
                else "a higher-ranked gang waits for the same sub-domains"
            )
            return (
                f"gang of job {job_id} attempt {g.attempt} waits to reserve in {parts}: {why}; "
                f"fails in {_seconds(max(0.0, left))} if still waiting"
            )
        if g.phase is Phase.RESERVING:
            pending = set(g.parts) - g.accepted
            return (
                f"gang of job {job_id} attempt {g.attempt} reserving: {len(g.accepted)} of {len(g.parts)} "
                f"sub-domains accepted, waiting for {_names(pending)}; times out in {_seconds(max(0.0, left))}"
            )
        pending = set(g.parts) - g.committed
        return (
            f"gang of job {job_id} attempt {g.attempt} committing: {len(g.committed)} of {len(g.parts)} "
            f"sub-domains committed, waiting for {_names(pending)}"
        )

    # -- events ------------------------------------------------------------------------------

    def handle(self, event: MasterEvent) -> list[MasterCommand]:
        """Apply one event; return the commands to carry out, in order."""
        out: list[MasterCommand] = []
        match event:
            case Start():
                out += self._advance(event.now)
                out += self._start(event)
            case Accepted():
                out += self._accepted(event)
            case Refused():
                out += self._refused(event)
            case Committed():
                out += self._committed(event.reservation_id, event.subdomain)
            case SubdomainLost():
                for g in [g for g in self._gangs.values() if event.subdomain in g.parts]:
                    out += self._fail(g, f"sub-domain {event.subdomain} was lost ({g.phase.lower()})")
            case Tick():
                out += self._advance(event.now)
            case Cancel():
                gang = self._gangs.get(event.job_id)
                if gang is not None:
                    out += self._fail(gang, event.reason)
            case Resync():
                out += self._resync(event)
        if self._dirty:
            out += self._pump()
        return out

    def _start(self, ev: Start) -> list[MasterCommand]:
        if not ev.parts:
            raise InvalidArgument("a gang needs at least one part", field="parts")
        if not (math.isfinite(ev.timeout_s) and ev.timeout_s > 0):
            raise InvalidArgument(f"must be > 0, got {ev.timeout_s}", field="timeout_s")
        out: list[MasterCommand] = []
        old = self._gangs.get(ev.job_id)
        if old is not None:
            if ev.attempt <= old.attempt:
                return out  # a repeat, or an older attempt arriving late
            out += self._fail(old, f"superseded by attempt {ev.attempt}")
        elif self._ended_jobs.get(ev.job_id, -1) >= ev.attempt:
            return out  # this attempt already ended
        self._seq += 1
        gang = _Gang(
            job_id=ev.job_id,
            attempt=ev.attempt,
            priority=ev.priority,
            parts=dict(ev.parts),
            rids={sd: reservation_id(ev.job_id, ev.attempt, sd) for sd in ev.parts},
            started_at=self._now,
            timeout_s=ev.timeout_s,
            seq=self._seq,
        )
        self._gangs[ev.job_id] = gang
        for sd, rid in gang.rids.items():
            self._rids[rid] = (ev.job_id, sd)
        self.stats.gangs_started += 1
        self._dirty = True
        return out

    def _lookup(self, rid: str, subdomain: str) -> _Gang | None:
        ref = self._rids.get(rid)
        if ref is None or ref[1] != subdomain:
            return None
        return self._gangs[ref[0]]

    def _accepted(self, ev: Accepted) -> list[MasterCommand]:
        g = self._lookup(ev.reservation_id, ev.subdomain)
        if g is None:
            if self._ended.get(ev.reservation_id):
                return []  # a duplicate for a placed gang
            if self._ended.get(ev.reservation_id) is False:
                self.stats.accepted += 1  # answered after another part failed the gang: still an answer
            # An orphan hold (its gang failed, or this master never knew it): free it.
            return [Release(ev.reservation_id, ev.subdomain, "no gang waits for this reservation")]
        if g.phase is not Phase.RESERVING or ev.subdomain in g.accepted:
            return []
        g.accepted.add(ev.subdomain)
        self.stats.accepted += 1
        if g.accepted != g.parts.keys():
            return []
        g.phase = Phase.COMMITTING
        return [Commit(g.rids[sd], sd) for sd in sorted(g.parts)]

    def _refused(self, ev: Refused) -> list[MasterCommand]:
        known = ev.reservation_id in self._rids or ev.reservation_id in self._ended
        if known:
            if ev.expired:
                self.stats.expired += 1
            else:
                self.stats.refused += 1
        g = self._lookup(ev.reservation_id, ev.subdomain)
        if g is None or g.phase is Phase.QUEUED:
            return []
        what = "the commit" if g.phase is Phase.COMMITTING else "the reservation"
        return self._fail(
            g,
            f"sub-domain {ev.subdomain} refused {what}: {ev.reason}",
            refused_by=((ev.subdomain, ev.reason),),
        )

    def _committed(self, rid: str, subdomain: str) -> list[MasterCommand]:
        g = self._lookup(rid, subdomain)
        if g is None:
            if self._ended.get(rid) is False:
                # The gang failed after this part committed: the Release already sent covers it,
                # but a duplicate is harmless and covers a Release lost with a connection.
                return [Release(rid, subdomain, "the gang failed; release the late commit")]
            return []  # placed (a duplicate) or unknown: the job table owns running allocations
        if g.phase is not Phase.COMMITTING or subdomain in g.committed:
            return []
        g.committed.add(subdomain)
        if g.committed != g.parts.keys():
            return []
        placed = GangPlaced(g.job_id, g.attempt, dict(sorted(g.rids.items())))
        self._finish(g, placed=True)
        self.stats.gangs_placed += 1
        log.info("gang of job %s attempt %s placed in %s", g.job_id, g.attempt, _names(g.parts))
        return [placed]

    def _resync(self, ev: Resync) -> list[MasterCommand]:
        out: list[MasterCommand] = []
        for rid in ev.held:
            g = self._lookup(rid, ev.subdomain)
            if g is not None:
                if g.phase is Phase.RESERVING:
                    out += self._accepted(Accepted(rid, ev.subdomain))
            elif not self._ended.get(rid):
                out.append(Release(rid, ev.subdomain, "no gang waits for this reservation"))
        for rid in ev.committed:
            g = self._lookup(rid, ev.subdomain)
            if g is not None:
                out += self._committed(rid, ev.subdomain)
            elif self._ended.get(rid) is False:
                out.append(Release(rid, ev.subdomain, "the gang of this allocation failed"))
            # Placed or unknown: left to the job table's reconciliation of running tasks.
        return out

    def _advance(self, now: float) -> list[MasterCommand]:
        if now > self._now:
            self._now = now
        while self._expiry and self._expiry[0][0] <= self._now:
            _, job_id, attempt, rids = self._expiry.popleft()
            for rid in rids:
                self._ended.pop(rid, None)
            if self._ended_jobs.get(job_id) == attempt:
                del self._ended_jobs[job_id]
        out: list[MasterCommand] = []
        for g in list(self._gangs.values()):
            if g.phase is Phase.COMMITTING:
                if self._now >= g.deadline + self.commit_grace_s:
                    missing = set(g.parts) - g.committed
                    out += self._fail(
                        g,
                        f"no commit confirmation from {_names(missing)} within "
                        f"{_seconds(self.commit_grace_s)} after the {_seconds(g.timeout_s)} gang timeout",
                        timed_out=True,
                    )
            elif self._now >= g.deadline:
                if g.phase is Phase.QUEUED:
                    busy = {sd: self._locks[sd] for sd in g.parts if sd in self._locks}
                    why = (
                        "; ".join(f"{sd} reserving for job {j}" for sd, j in sorted(busy.items()))
                        or "higher-ranked gangs waiting for the same sub-domains"
                    )
                    reason = f"waited {_seconds(g.timeout_s)} (the gang timeout) to reserve in {_names(g.parts)}: {why}"
                else:
                    pending = set(g.parts) - g.accepted
                    reason = (
                        f"no answer from {_names(pending)} within the {_seconds(g.timeout_s)} gang timeout "
                        f"({len(g.accepted)} of {len(g.parts)} sub-domains accepted)"
                    )
                out += self._fail(g, reason, timed_out=True)
        return out

    def _fail(
        self,
        g: _Gang,
        reason: str,
        *,
        refused_by: tuple[tuple[str, str], ...] = (),
        timed_out: bool = False,
    ) -> list[MasterCommand]:
        out: list[MasterCommand] = []
        if g.phase is not Phase.QUEUED:
            why = f"gang of job {g.job_id} attempt {g.attempt} failed: {reason}"
            out += [Release(g.rids[sd], sd, why) for sd in sorted(g.parts)]
        self._finish(g, placed=False)
        self.stats.gangs_failed += 1
        if timed_out:
            self.stats.gangs_timed_out += 1
        log.info("gang of job %s attempt %s failed: %s", g.job_id, g.attempt, reason)
        out.append(GangFailed(g.job_id, g.attempt, reason, refused_by, timed_out))
        return out

    def _finish(self, g: _Gang, *, placed: bool) -> None:
        del self._gangs[g.job_id]
        for sd, rid in g.rids.items():
            del self._rids[rid]
            if self._locks.get(sd) == g.job_id:
                del self._locks[sd]
            self._ended[rid] = placed
        self._ended_jobs[g.job_id] = max(g.attempt, self._ended_jobs.get(g.job_id, -1))
        # _now never decreases, so the deque stays sorted by expiry.
        self._expiry.append((self._now + self.tombstone_s, g.job_id, g.attempt, tuple(g.rids.values())))
        self._dirty = True

    def _pump(self) -> list[MasterCommand]:
        """Start waiting gangs in rank order whose sub-domains are neither locked nor wanted earlier."""
        self._dirty = False
        out: list[MasterCommand] = []
        blocked: set[str] = set()
        for g in sorted((g for g in self._gangs.values() if g.phase is Phase.QUEUED), key=_Gang.rank):
            if any(sd in self._locks or sd in blocked for sd in g.parts):
                blocked.update(g.parts)
                continue
            g.phase = Phase.RESERVING
            expires_at = g.deadline + self.commit_grace_s
            hold_s = expires_at - self._now
            for sd in sorted(g.parts):
                self._locks[sd] = g.job_id
                out.append(Reserve(g.rids[sd], sd, g.parts[sd], expires_at, hold_s, g.job_id, g.attempt))
                self.stats.reserves_sent += 1
        return out

    # -- invariants --------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant (for tests; O(active gangs × parts + tombstones))."""
        rids: dict[str, tuple[str, str]] = {}
        for job_id, g in self._gangs.items():
            assert g.job_id == job_id
            assert g.parts and g.parts.keys() == g.rids.keys()
            assert g.accepted <= g.parts.keys() and g.committed <= g.accepted
            for sd, rid in g.rids.items():
                assert rid == reservation_id(job_id, g.attempt, sd)
                assert rid not in self._ended, rid
                rids[rid] = (job_id, sd)
            if g.phase is Phase.QUEUED:
                assert not g.accepted and not g.committed
                assert all(self._locks.get(sd) != job_id for sd in g.parts)
            else:
                # A reserving or committing gang holds the lock of every one of its sub-domains.
                assert all(self._locks.get(sd) == job_id for sd in g.parts), (job_id, self._locks)
            if g.phase is Phase.RESERVING:
                # Commit is sent only once every part accepted.
                assert not g.committed and g.accepted != g.parts.keys()
            if g.phase is Phase.COMMITTING:
                assert g.accepted == g.parts.keys() and g.committed != g.parts.keys()
                assert self._now < g.deadline + self.commit_grace_s, "a committing gang outlived its grace"
            else:
                assert self._now < g.deadline, f"gang of {job_id} outlived its deadline"
            assert self._ended_jobs.get(job_id, -1) < g.attempt
        assert rids == self._rids
        for sd, job_id in self._locks.items():
            g = self._gangs[job_id]
            assert g.phase is not Phase.QUEUED and sd in g.parts
        # The queue is at its fixpoint: no waiting gang could start now.
        assert not self._dirty
        blocked: set[str] = set()
        for g in sorted((g for g in self._gangs.values() if g.phase is Phase.QUEUED), key=_Gang.rank):
            assert any(sd in self._locks or sd in blocked for sd in g.parts), f"{g.job_id} could start"
            blocked.update(g.parts)
        assert len(self._ended) <= sum(len(e[3]) for e in self._expiry)
        s = self.stats
        assert s.gangs_started == s.gangs_placed + s.gangs_failed + len(self._gangs)


# -- the sub-domain's side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetNode:
    """A node is ready with ``capacity`` for gang reservations (replaces its previous capacity).

    Holds that no longer fit on it are dropped and refused.
    """

    node_id: str
    capacity: Resources


@dataclass(frozen=True, slots=True)
class NodeGone:
    """The node is dead or cordoned: its holds are refused; its allocations stop being counted."""

    node_id: str


@dataclass(frozen=True, slots=True)
class MasterConnected:
    """The stream to the master is (re)established: answer with :class:`Resync`."""


@dataclass(frozen=True, slots=True)
class MasterLost:
    """The stream to the master ended: its gangs fail there, so drop every hold (keep allocations)."""


@dataclass(frozen=True, slots=True)
class Expire:
    """A timer tick: drop the holds whose time is up (by the injected clock)."""


SubdomainEvent = Reserve | Commit | Release | SetNode | NodeGone | MasterConnected | MasterLost | Expire
SubdomainCommand = Accepted | Refused | Committed | Resync


class HoldState(enum.StrEnum):
    HELD = "HELD"
    COMMITTED = "COMMITTED"


@dataclass(slots=True)
class _Hold:
    rid: str
    demand: Demand
    placement: tuple[tuple[str, Resources], ...]
    expires_at: float
    hold_s: float
    state: HoldState = HoldState.HELD


class SubdomainReservations:
    """A pure model of the sub-domain's side: holds with expiry and committed allocations, per node.

    The live sub-domain does not use this class: ``sub_domain/_reservations.py`` speaks the same
    protocol with holds on the manager's real placement state (NVLink domains, shares, locality,
    blocks). This model stays as the reference the coordinator is tested against (here, in the
    property tests, and as the sub-domain behind the master's gRPC gang tests, where a test must
    script refusals and losses on demand).

    Per node: ``allocated + held <= capacity`` in CPU millicores, memory bytes and GPUs, and GPU
    tasks only on nodes of their model (checked by :meth:`validate`; a node whose capacity was
    lowered below its *allocations* takes no holds until it has room again). Time is the injected
    clock's monotonic seconds; every event first expires the holds that are due.
    """

    def __init__(self, subdomain: str, clock: Clock, *, tombstone_s: float = DEFAULT_TOMBSTONE_S) -> None:
        self.subdomain = subdomain
        self._clock = clock
        self.tombstone_s = tombstone_s
        self._nodes: dict[str, Resources] = {}
        self._used: dict[str, Resources] = {}
        self._res: dict[str, _Hold] = {}
        self._gone: dict[str, str] = {}
        self._gone_order: deque[tuple[float, str]] = deque()
        self._last_now = -math.inf

    # -- reads -------------------------------------------------------------------------------

    def state(self, rid: str) -> HoldState | None:
        r = self._res.get(rid)
        return r.state if r is not None else None

    def placement(self, rid: str) -> tuple[tuple[str, Resources], ...]:
        """Where each task of the reservation goes: ``(node_id, request)`` in task order."""
        r = self._res.get(rid)
        return r.placement if r is not None else ()

    def held(self) -> list[str]:
        return sorted(rid for rid, r in self._res.items() if r.state is HoldState.HELD)

    def committed(self) -> list[str]:
        return sorted(rid for rid, r in self._res.items() if r.state is HoldState.COMMITTED)

    def capacity(self, node_id: str) -> Resources | None:
        return self._nodes.get(node_id)

    def used(self, node_id: str) -> Resources:
        """Allocated + held on the node."""
        return self._used.get(node_id, Resources())

    def available(self, node_id: str) -> Resources:
        """What plain (non-gang) placement may still use on the node: capacity − allocated − held."""
        cap = self._nodes.get(node_id)
        return Resources() if cap is None else cap - self.used(node_id)

    # -- events ------------------------------------------------------------------------------

    def handle(self, event: SubdomainEvent) -> list[SubdomainCommand]:
        """Apply one event; return the answers for the master, in order."""
        out = self._expire_due()
        match event:
            case Reserve():
                out += self._reserve(event)
            case Commit():
                out += self._commit(event)
            case Release():
                r = self._res.get(event.reservation_id)
                if r is not None:
                    self._drop(r, "released")
                elif event.reservation_id not in self._gone:
                    # Remember it, so a Reserve arriving after its Release is refused, not held.
                    self._tombstone(event.reservation_id, "released")
            case SetNode():
                out += self._set_node(event)
            case NodeGone():
                out += self._node_gone(event.node_id)
            case MasterConnected():
                out.append(Resync(self.subdomain, tuple(self.held()), tuple(self.committed())))
            case MasterLost():
                for r in [r for r in self._res.values() if r.state is HoldState.HELD]:
                    self._drop(r, "released (the master connection was lost)")
            case Expire():
                pass
        return out

    def _reserve(self, ev: Reserve) -> list[SubdomainCommand]:
        rid = ev.reservation_id
        if ev.subdomain != self.subdomain:
            return [Refused(rid, ev.subdomain, f"sent to {ev.subdomain}, received by {self.subdomain}", True)]
        if rid in self._res:
            return [Accepted(rid, self.subdomain)]
        gone = self._gone.get(rid)
        if gone is not None:
            return [Refused(rid, self.subdomain, f"reservation {rid} was already {gone}", expired=True)]
        if not (ev.hold_s > 0 and math.isfinite(ev.hold_s)):
            self._tombstone(rid, "expired")
            return [
                Refused(rid, self.subdomain, f"arrived with no time left to hold (hold_s={ev.hold_s})", True)
            ]
        placement, reason = self._pack(ev.demand)
        if placement is None:
            self._tombstone(rid, "refused")
            return [Refused(rid, self.subdomain, reason)]
        r = _Hold(rid, ev.demand, placement, self._last_now + ev.hold_s, ev.hold_s)
        self._res[rid] = r
        self._charge(r, +1)
        return [Accepted(rid, self.subdomain)]

    def _commit(self, ev: Commit) -> list[SubdomainCommand]:
        rid = ev.reservation_id
        r = self._res.get(rid)
        if r is not None:
            r.state = HoldState.COMMITTED
            return [Committed(rid, self.subdomain)]
        gone = self._gone.get(rid)
        why = (
            f"reservation {rid} was {gone} before the commit arrived"
            if gone
            else f"unknown reservation {rid}"
        )
        return [Refused(rid, self.subdomain, why, expired=True)]

    def _set_node(self, ev: SetNode) -> list[SubdomainCommand]:
        if not _non_negative(ev.capacity):
            raise InvalidArgument(f"must not be negative, got {ev.capacity.describe()}", field="capacity")
        if ev.node_id not in self._nodes:
            # A node coming back counts the allocations still recorded on it.
            self._used[ev.node_id] = _sum(
                req for r in self._res.values() for n, req in r.placement if n == ev.node_id
            )
        self._nodes[ev.node_id] = ev.capacity
        out: list[SubdomainCommand] = []
        # Newest holds go first, until what is left fits.
        holds = [r for r in self._res.values() if r.state is HoldState.HELD and self._on(r, ev.node_id)]
        for r in reversed(holds):
            if _within(self._used[ev.node_id], ev.capacity):
                break
            self._drop(r, "refused (its node shrank)")
            out.append(
                Refused(
                    r.rid,
                    self.subdomain,
                    f"node {ev.node_id} now offers {ev.capacity.describe()}, less than it held",
                )
            )
        return out

    def _node_gone(self, node_id: str) -> list[SubdomainCommand]:
        out: list[SubdomainCommand] = []
        for r in [r for r in self._res.values() if r.state is HoldState.HELD and self._on(r, node_id)]:
            self._drop(r, "refused (its node left)")
            out.append(Refused(r.rid, self.subdomain, f"node {node_id} left while the reservation was held"))
        # Allocations there stay recorded (the task path reports their tasks LOST and the master
        # releases the gang whole); they are no longer counted against any node.
        self._nodes.pop(node_id, None)
        self._used.pop(node_id, None)
        return out

    @staticmethod
    def _on(r: _Hold, node_id: str) -> bool:
        return any(n == node_id for n, _ in r.placement)

    def _expire_due(self) -> list[SubdomainCommand]:
        now = self._clock.monotonic()
        self._last_now = max(self._last_now, now)
        while self._gone_order and self._gone_order[0][0] <= self._last_now:
            _, rid = self._gone_order.popleft()
            self._gone.pop(rid, None)
        out: list[SubdomainCommand] = []
        for r in [
            r for r in self._res.values() if r.state is HoldState.HELD and r.expires_at <= self._last_now
        ]:
            self._drop(r, "expired")
            out.append(
                Refused(
                    r.rid, self.subdomain, f"hold expired after {_seconds(r.hold_s)} without a commit", True
                )
            )
        return out

    def _charge(self, r: _Hold, sign: int) -> None:
        for node_id, req in r.placement:
            if node_id not in self._nodes:
                continue  # the node left; nothing is counted there any more
            u = self._used[node_id]
            self._used[node_id] = Resources(
                u.cpu_millis + sign * req.cpu_millis,
                u.memory_bytes + sign * req.memory_bytes,
                u.gpus + sign * req.gpus,
            )

    def _drop(self, r: _Hold, outcome: str) -> None:
        del self._res[r.rid]
        self._charge(r, -1)
        self._tombstone(r.rid, outcome)

    def _tombstone(self, rid: str, outcome: str) -> None:
        self._gone[rid] = outcome
        self._gone_order.append((self._last_now + self.tombstone_s, rid))

    def _pack(self, demand: Demand) -> tuple[tuple[tuple[str, Resources], ...] | None, str]:
        """Best fit, largest task first, over groups of nodes with the same room left."""
        groups: dict[Resources, list[str]] = {}
        for node_id, cap in self._nodes.items():
            used = self._used[node_id]
            if not _within(used, cap):
                continue  # over-allocated after a shrink: no new holds
            groups.setdefault(cap - used, []).append(node_id)
        order = sorted(
            range(len(demand.tasks)),
            key=lambda i: (demand.tasks[i].gpus, demand.tasks[i].cpu_millis, demand.tasks[i].memory_bytes),
            reverse=True,
        )
        placed: list[tuple[str, Resources] | None] = [None] * len(demand.tasks)
        for count, i in enumerate(order):
            task = demand.tasks[i]
            # Best fit: the node with the least room (GPUs, then CPU, then memory) that fits.
            best: Resources | None = None
            for room, nodes in groups.items():
                if nodes and task.fits_in(room) and (best is None or _room_key(room) < _room_key(best)):
                    best = room
            if best is None:
                return None, self._no_room(demand, task, count)
            node_id = groups[best].pop()
            groups.setdefault(best - task, []).append(node_id)
            placed[i] = (node_id, task)
        return tuple(p for p in placed if p is not None), ""

    def _no_room(self, demand: Demand, task: Resources, placed: int) -> str:
        cap = _sum(self._nodes.values())
        used = _sum(self._used.values())
        holds = [r for r in self._res.values() if r.state is HoldState.HELD]
        held = _sum(req for r in holds for n, req in r.placement if n in self._nodes)
        free = cap - used
        return (
            f"sub-domain {self.subdomain} has room for {placed} of {len(demand.tasks)} tasks of "
            f"{demand.describe()}: then no node fits ({task.describe()}); free on {len(self._nodes)} "
            f"nodes: {free.gpus} GPUs, {free.cpu_millis / 1000:g} CPUs, {free.memory_bytes / 2**30:.1f} GiB "
            f"after allocations and {len(holds)} hold(s) of {held.gpus} GPUs, {held.cpu_millis / 1000:g} CPUs"
        )

    # -- invariants --------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant (for tests; O(nodes + reservations))."""
        fresh: dict[str, Resources] = {n: Resources() for n in self._nodes}
        has_hold: set[str] = set()
        for rid, r in self._res.items():
            assert r.rid == rid and rid not in self._gone, rid
            assert len(r.placement) == len(r.demand.tasks)
            assert [req for _, req in r.placement] == list(r.demand.tasks)
            if r.state is HoldState.HELD:
                assert r.expires_at > self._last_now, f"hold {rid} outlived its expiry"
            for node_id, req in r.placement:
                if node_id in fresh:
                    fresh[node_id] = fresh[node_id] + req
                    if r.state is HoldState.HELD:
                        has_hold.add(node_id)
        assert self._used.keys() == self._nodes.keys()
        for node_id, cap in self._nodes.items():
            u = self._used[node_id]
            f = fresh[node_id]
            assert (u.cpu_millis, u.memory_bytes, u.gpus) == (f.cpu_millis, f.memory_bytes, f.gpus), node_id
            assert _non_negative(u)
            if node_id in has_hold:
                # Never hold more than the node offers.
                assert _within(u, cap), f"node {node_id}: {u.describe()} used > {cap.describe()}"
        for r in self._res.values():
            for node_id, req in r.placement:
                node = self._nodes.get(node_id)
                if node is not None and req.gpus and req.gpu_model and node.gpu_model:
                    assert req.gpu_model == node.gpu_model
        assert len(self._gone) <= len(self._gone_order)
