"""Gang reservations, the sub-domain's side: a pure state machine over the real placement state.

The master reserves the tasks of a gang part (``ReserveTasks``), then commits (``CommitReservation``)
or releases (``ReleaseReservation``) it; see ``subdomain.proto``. Holds are not a second
accounting: a held task is an allocation in the :class:`NodeRegistry` marked ``held`` (its node,
GPU indexes and share, chosen by the same rules as a ``PlaceTask``), so it is gone from the
placement index and from the summary's free resources at once, and a Commit only flips the flag
and hands the task to the :class:`TaskTable`, which starts it exactly like a placed task.

Semantics (where the proto leaves room):

* **Reserve** places every task at once, largest first (whole GPUs, then shares, then CPU, then
  memory; task index on ties), with the task's own constraints (a TP group inside one NVLink
  domain when the task asks for it). The stages of one pipeline group (``placement.group``) are
  placed together inside one block when some block has room for all of them (the block the
  first stage would go to first, then the others by name, at most ``MAX_BLOCK_TRIES``); else
  task by task, later stages preferring the first one's block. Any task that does not fit undoes the
  tasks held before it and the reply is ``REFUSED`` naming the task, its request and the reason
  with numbers (``expired=false``: a capacity miss). A malformed request (no tasks, duplicate or
  already placed tasks, bad ``hold_s``) is refused the same way. Accepted: ``ACCEPTED`` with one
  ``TaskPlacement`` per task (index, node, block).
* **Commit** of a live hold: every held task becomes a placed task (``TaskSpec.reservation_id``
  set to the id when the master left it empty), is persisted, started on its agent and reported
  ``ASSIGNED`` in ``TaskUpdates``; the reply is ``COMMITTED``. A Commit after the hold expired,
  was released or dropped, or of an unknown id is ``REFUSED`` with ``expired=true`` and the reason.
* **Release** of a hold drops it; of a committed reservation stops its tasks (``StopTask`` with the
  reason, like a master stop). Release sends no reply (the proto has none) and is remembered, so
  a later Reserve of that id is refused.
* **Expiry**: a hold not committed within ``hold_s`` of the sub-domain's monotonic clock is dropped
  silently (no reply); a later Commit is refused with ``expired=true``.
* **Idempotency**: a repeated Reserve is answered as the first one was (``ACCEPTED`` with the same
  placements, even once committed; the same ``REFUSED``); a repeated Commit is ``COMMITTED``; a
  repeated Release does nothing. Finished ids are remembered as tombstones for ``tombstone_s``
  (at most ``max_tombstones``, oldest forgotten first).
* **Lost holds**: a node that dies (or re-registers too small for a held task) drops every hold
  with a task on it and sends ``REFUSED`` (``expired=true``, the reason names the node) so the master
  fails the gang whole. Committed tasks on a dead node go ``LOST`` through the task table as usual.
* **Master lost**: the stream ending drops every uncommitted hold (no reply: there is no stream;
  the master's ``SubdomainLost`` fails those gangs). ``Hello`` lists the held (none, then) and
  committed reservations; committed ones are rebuilt from the task table after a restart.

Costs: Reserve is one placement per task; the per-node map makes a node's death O(its holds);
committed records are pruned (when none of their tasks is left in the task table) at most every
``PRUNE_INTERVAL_S``, O(committed tasks).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from domainos.api.v1 import subdomain_pb2
from domainos.model import TaskRef, TaskSpec

from ._placement import Placement
from ._registry import NodeRegistry
from ._tasks import RECONCILE_STOP_GRACE_S, Effect, TaskTable

ACCEPTED = subdomain_pb2.RESERVATION_OUTCOME_ACCEPTED
REFUSED = subdomain_pb2.RESERVATION_OUTCOME_REFUSED
COMMITTED = subdomain_pb2.RESERVATION_OUTCOME_COMMITTED

#: How long a finished reservation id is remembered (seconds, sub-domain monotonic clock).
DEFAULT_TOMBSTONE_S = 600.0
DEFAULT_MAX_TOMBSTONES = 10_000
#: Most reservations held or committed at once.
DEFAULT_MAX_LIVE = 10_000
#: Most tasks in one reservation.
MAX_TASKS_PER_RESERVATION = 10_000
#: Longest hold a master may ask for (seconds).
MAX_HOLD_S = 24 * 3600.0
#: Most blocks tried to keep one pipeline group in one block.
MAX_BLOCK_TRIES = 16
#: Committed records are checked against the task table at most this often (seconds).
PRUNE_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class TaskPlacement:
    task_index: int
    node_id: str
    block: str


@dataclass(frozen=True, slots=True)
class ReplyMaster:
    """Send a ``ReservationReply`` up the master stream."""

    reservation_id: str
    outcome: int
    reason: str = ""
    expired: bool = False
    placements: tuple[TaskPlacement, ...] = ()

    def to_proto(self) -> subdomain_pb2.ReservationReply:
        return subdomain_pb2.ReservationReply(
            reservation_id=self.reservation_id,
            outcome=self.outcome,  # type: ignore[arg-type]
            reason=self.reason,
            expired=self.expired,
            placements=[
                subdomain_pb2.TaskPlacement(task_index=p.task_index, node_id=p.node_id, block=p.block)
                for p in self.placements
            ],
        )


ReservationEffect = Effect | ReplyMaster


@dataclass(slots=True)
class _Held:
    spec: TaskSpec
    node_id: str
    gpu_indexes: tuple[int, ...]


@dataclass(slots=True)
class _Reservation:
    rid: str
    tasks: list[_Held]
    placements: tuple[TaskPlacement, ...]
    expires: float
    hold_s: float
    committed: bool = False


@dataclass(frozen=True, slots=True)
class _Tomb:
    #: refused (at Reserve) | released | expired | dropped | finished (committed, tasks all gone)
    kind: str
    reply: ReplyMaster  # what a Reserve (or, unless refused/finished, a Commit) of this id gets now
    at: float


@dataclass
class Reservations:
    """Held and committed gang reservations of one sub-domain (pure; time comes in as arguments)."""

    subdomain_id: str
    registry: NodeRegistry
    tasks: TaskTable
    tombstone_s: float = DEFAULT_TOMBSTONE_S
    max_tombstones: int = DEFAULT_MAX_TOMBSTONES
    max_live: int = DEFAULT_MAX_LIVE
    _live: dict[str, _Reservation] = field(default_factory=dict)
    _tombs: OrderedDict[str, _Tomb] = field(default_factory=OrderedDict)
    _expiry: list[tuple[float, str]] = field(default_factory=list)
    _by_node: dict[str, set[str]] = field(default_factory=dict)
    _held_refs: dict[TaskRef, str] = field(default_factory=dict)
    _last_prune: float = -math.inf
    _held: int = 0
    #: Counters for metrics / tests.
    accepted: int = 0
    refused: int = 0
    committed: int = 0
    expired: int = 0

    # -- reading ---------------------------------------------------------------------------------

    @property
    def held_count(self) -> int:
        """Reservations held, not yet committed (a counter: safe to read from the metrics thread)."""
        return self._held

    def state(self, rid: str) -> str:
        """``held | committed | released | expired | refused | dropped | unknown`` (for tests and logs)."""
        r = self._live.get(rid)
        if r is not None:
            return "committed" if r.committed else "held"
        tomb = self._tombs.get(rid)
        return "unknown" if tomb is None else tomb.kind

    def holder_of(self, ref: TaskRef) -> str:
        """The reservation holding task ``ref`` ("" when none)."""
        return self._held_refs.get(ref, "")

    def hello_states(self) -> list[subdomain_pb2.ReservationState]:
        """Held and committed reservations, for ``Hello``."""
        return [
            subdomain_pb2.ReservationState(reservation_id=rid, committed=r.committed)
            for rid, r in sorted(self._live.items())
        ]

    # -- helpers ---------------------------------------------------------------------------------

    def _tomb(self, rid: str, kind: str, reply: ReplyMaster, now: float) -> None:
        self._tombs[rid] = _Tomb(kind, reply, now)
        self._tombs.move_to_end(rid)
        while len(self._tombs) > self.max_tombstones:
            self._tombs.popitem(last=False)

    def _forget_live(self, r: _Reservation) -> None:
        del self._live[r.rid]
        for h in r.tasks:
            self._held_refs.pop(h.spec.ref, None)
            rids = self._by_node.get(h.node_id)
            if rids is not None:
                rids.discard(r.rid)
                if not rids:
                    del self._by_node[h.node_id]

    def _drop_holds(self, r: _Reservation) -> None:
        assert not r.committed, f"{r.rid}: dropping the holds of a committed reservation"
        self._held -= 1
        for h in r.tasks:
            node = self.registry.get(h.node_id)
            alloc = node.allocations.get(h.spec.ref) if node is not None else None
            if alloc is not None and alloc.held:
                self.registry.release(h.node_id, h.spec.ref)
        self._forget_live(r)

    def _refuse(self, rid: str, reason: str, now: float) -> list[ReservationEffect]:
        reply = ReplyMaster(rid, REFUSED, reason)
        self.refused += 1
        self._tomb(rid, "refused", reply, now)
        return [reply]

    # -- commands from the master ----------------------------------------------------------------

    def reserve(
        self, rid: str, specs: Sequence[TaskSpec], hold_s: float, *, now: float, wall: float
    ) -> list[ReservationEffect]:
        """``ReserveTasks``: hold nodes for every task, or refuse at once holding nothing.

        ``now`` is the monotonic clock (hold expiry), ``wall`` unix seconds (locality waits).
        """
        live = self._live.get(rid)
        if live is not None:
            return [ReplyMaster(rid, ACCEPTED, placements=live.placements)]
        tomb = self._tombs.get(rid)
        if tomb is not None:
            if tomb.kind == "finished":
                return [ReplyMaster(rid, ACCEPTED, placements=tomb.reply.placements)]
            return [tomb.reply]
        problem = self._check(rid, specs, hold_s)
        if problem:
            return self._refuse(rid, problem, now)
        specs = [s if s.reservation_id else dataclasses.replace(s, reservation_id=rid) for s in specs]
        held: list[_Held] = []
        for unit in self._units(specs):
            grouped = self._place_group(unit, wall) if len(unit) > 1 else None
            got = grouped if grouped is not None else self._place_each(unit, wall)
            if isinstance(got, str):
                for h in held:
                    self.registry.release(h.node_id, h.spec.ref)
                return self._refuse(
                    rid,
                    f"{got} ({len(held)} of {len(specs)} tasks of reservation {rid} had been placed; "
                    "none is held)",
                    now,
                )
            held += got
        held.sort(key=lambda h: h.spec.ref.task_index)
        placements = tuple(
            TaskPlacement(h.spec.ref.task_index, h.node_id, self._block(h.node_id)) for h in held
        )
        r = _Reservation(rid, held, placements, now + hold_s, hold_s)
        self._live[rid] = r
        for h in held:
            self._held_refs[h.spec.ref] = rid
            self._by_node.setdefault(h.node_id, set()).add(rid)
        heapq.heappush(self._expiry, (r.expires, rid))
        self._held += 1
        if len(self._expiry) > 4 * len(self._live) + 64:  # stale entries of committed/released ones
            self._expiry = [
                (t, x) for t, x in self._expiry if (y := self._live.get(x)) is not None and not y.committed
            ]
            heapq.heapify(self._expiry)
        self.accepted += 1
        return [ReplyMaster(rid, ACCEPTED, placements=placements)]

    @staticmethod
    def _units(specs: Sequence[TaskSpec]) -> list[list[TaskSpec]]:
        """Tasks in placement order: one unit per pipeline group (placed together), one per other
        task; largest first (whole GPUs, share, CPU, memory), task index on ties."""

        def size(s: TaskSpec) -> tuple[int, int, int, int, int]:
            r = s.resources
            return (-r.gpus, -r.gpu_share, -r.cpu_millis, -r.memory_bytes, s.ref.task_index)

        groups: dict[str, list[TaskSpec]] = {}
        units: list[list[TaskSpec]] = []
        for spec in sorted(specs, key=size):
            group = spec.placement.group
            if not group:
                units.append([spec])
            elif group in groups:
                groups[group].append(spec)
            else:
                groups[group] = [spec]
                units.append(groups[group])
        return units

    def _hold(self, spec: TaskSpec, choice: Placement) -> _Held:
        self.registry.allocate(choice.node_id, spec.ref, spec.resources, choice.gpu_indexes, held=True)
        return _Held(spec, choice.node_id, choice.gpu_indexes)

    def _place_each(self, unit: Sequence[TaskSpec], wall: float) -> list[_Held] | str:
        """Each task by the ordinary rules (a group's later stages prefer its first one's block)."""
        held: list[_Held] = []
        for spec in unit:
            choice = self.tasks.choose(spec, wall)
            if not isinstance(choice, Placement):
                for h in held:
                    self.registry.release(h.node_id, h.spec.ref)
                return f"task {spec.ref.task_index} ({spec.resources.describe()}) does not fit: {choice}"
            held.append(self._hold(spec, choice))
        return held

    def _place_group(self, unit: Sequence[TaskSpec], wall: float) -> list[_Held] | None:
        """Every stage of a pipeline group inside one block, or None (then placed task by task).

        Tries the block the ordinary rules pick for the first stage, then the other blocks by
        name, at most ``MAX_BLOCK_TRIES`` of them.
        """
        blocks = self.registry.blocks
        if not blocks:
            return None
        first = self.tasks.choose(unit[0], wall)
        natural = self._block(first.node_id) if isinstance(first, Placement) else ""
        order = ([natural] if natural else []) + [b for b in blocks if b != natural]
        for block in order[:MAX_BLOCK_TRIES]:
            held: list[_Held] = []
            for spec in unit:
                choice = self.registry.place(spec.resources, spec.placement, now=wall, only_block=block)
                if not isinstance(choice, Placement):
                    break
                held.append(self._hold(spec, choice))
            else:
                return held
            for h in held:
                self.registry.release(h.node_id, h.spec.ref)
        return None

    def _block(self, node_id: str) -> str:
        node = self.registry.get(node_id)
        return node.inventory.block if node is not None else ""

    def _check(self, rid: str, specs: Sequence[TaskSpec], hold_s: float) -> str:
        if not rid:
            return "a reservation needs an id"
        if not specs:
            return f"reservation {rid} has no tasks"
        if len(specs) > MAX_TASKS_PER_RESERVATION:
            return f"reservation {rid} has {len(specs)} tasks; at most {MAX_TASKS_PER_RESERVATION}"
        if not (math.isfinite(hold_s) and 0 < hold_s <= MAX_HOLD_S):
            return f"hold_s must be > 0 and at most {MAX_HOLD_S:.0f} s, got {hold_s}"
        if len(self._live) >= self.max_live:
            return (
                f"sub-domain {self.subdomain_id} already holds {len(self._live)} reservations "
                f"(at most {self.max_live})"
            )
        seen: set[TaskRef] = set()
        for s in specs:
            if s.ref in seen:
                return f"task {s.ref} appears twice in reservation {rid}"
            seen.add(s.ref)
            if self.tasks.get(s.ref) is not None:
                return f"task {s.ref} is already placed in sub-domain {self.subdomain_id}"
            other = self._held_refs.get(s.ref)
            if other is not None:
                return f"task {s.ref} is already held by reservation {other}"
        return ""

    def refuse_invalid(self, rid: str, reason: str, now: float) -> list[ReservationEffect]:
        """A Reserve whose tasks are malformed: refused (as the first answer) unless already known."""
        if rid in self._live or rid in self._tombs:
            return self.reserve(rid, (), 1.0, now=now, wall=0.0)
        return self._refuse(rid, f"malformed reservation: {reason}", now)

    def commit(self, rid: str, *, now: float) -> list[ReservationEffect]:
        """``CommitReservation``: the held tasks become placed tasks and start."""
        r = self._live.get(rid)
        if r is None:
            tomb = self._tombs.get(rid)
            if tomb is None:
                return [
                    ReplyMaster(
                        rid, REFUSED, f"unknown reservation {rid} in sub-domain {self.subdomain_id}", True
                    )
                ]
            if tomb.kind == "refused":
                return [ReplyMaster(rid, REFUSED, f"the reservation was refused: {tomb.reply.reason}", True)]
            return [tomb.reply]
        if r.committed:
            return [ReplyMaster(rid, COMMITTED, placements=r.placements)]
        if now >= r.expires:
            return self._expire(r, now)
        effects: list[ReservationEffect] = []
        for h in r.tasks:
            effects += self.tasks.adopt_held(h.spec, h.node_id, h.gpu_indexes)
            self._held_refs.pop(h.spec.ref, None)
        r.committed = True
        self._held -= 1
        self.committed += 1
        effects.append(ReplyMaster(rid, COMMITTED, placements=r.placements))
        return effects

    def release(self, rid: str, reason: str, *, now: float, wall: float) -> list[ReservationEffect]:
        """``ReleaseReservation``: drop a hold, or stop a committed reservation's tasks. No reply."""
        why = reason or "released by the master"
        r = self._live.get(rid)
        effects: list[ReservationEffect] = []
        if r is None:
            if rid not in self._tombs:
                self._tomb(rid, "released", ReplyMaster(rid, REFUSED, f"released: {why}", True), now)
            return effects
        if r.committed:
            for h in r.tasks:
                entry = self.tasks.get(h.spec.ref)
                if entry is not None and entry.active:
                    effects += self.tasks.stop(
                        h.spec.ref, grace_s=RECONCILE_STOP_GRACE_S, reason=why, now=wall
                    )
            self._forget_live(r)
        else:
            self._drop_holds(r)
        self._tomb(rid, "released", ReplyMaster(rid, REFUSED, f"released: {why}", True), now)
        return effects

    # -- time and events -------------------------------------------------------------------------

    def _expire(self, r: _Reservation, now: float) -> list[ReservationEffect]:
        self._drop_holds(r)
        self.expired += 1
        reply = ReplyMaster(
            r.rid,
            REFUSED,
            f"expired: the hold of {r.hold_s:.1f} s ran out before the Commit arrived",
            True,
        )
        self._tomb(r.rid, "expired", reply, now)
        return [reply]

    def tick(self, now: float) -> None:
        """Drop holds whose time ran out (silently), forget old tombstones and finished commits."""
        while self._expiry and self._expiry[0][0] <= now:
            _, rid = heapq.heappop(self._expiry)
            r = self._live.get(rid)
            if r is not None and not r.committed and r.expires <= now:
                self._expire(r, now)
        while self._tombs:
            rid, tomb = next(iter(self._tombs.items()))
            if now - tomb.at < self.tombstone_s:
                break
            del self._tombs[rid]
        if now - self._last_prune >= PRUNE_INTERVAL_S:
            self._last_prune = now
            for r in [r for r in self._live.values() if r.committed]:
                if all(self.tasks.get(h.spec.ref) is None for h in r.tasks):
                    self._forget_live(r)
                    self._tomb(r.rid, "finished", ReplyMaster(r.rid, COMMITTED, placements=r.placements), now)

    def lost_holds(
        self, node_id: str, keys: Iterable[TaskRef] | None, why: str, now: float
    ) -> list[ReservationEffect]:
        """Holds on ``node_id`` are gone (the node died: ``keys`` None; or these were evicted):
        drop each affected reservation whole and tell the master (REFUSED, expired)."""
        wanted = None if keys is None else set(keys)
        out: list[ReservationEffect] = []
        for rid in sorted(self._by_node.get(node_id, ())):
            r = self._live.get(rid)
            if r is None or r.committed:
                continue
            hit = [h for h in r.tasks if h.node_id == node_id and (wanted is None or h.spec.ref in wanted)]
            if not hit:
                continue
            self._drop_holds(r)
            reply = ReplyMaster(
                rid,
                REFUSED,
                f"dropped: node {node_id} holding task {hit[0].spec.ref.task_index} of the reservation {why}",
                True,
            )
            self.refused += 1
            self._tomb(rid, "dropped", reply, now)
            out.append(reply)
        return out

    def master_lost(self, now: float) -> int:
        """The master stream ended: drop every uncommitted hold. Returns how many."""
        dropped = [r for r in self._live.values() if not r.committed]
        for r in dropped:
            self._drop_holds(r)
            self._tomb(
                r.rid,
                "dropped",
                ReplyMaster(r.rid, REFUSED, "dropped: the master stream ended while it was held", True),
                now,
            )
        return len(dropped)

    def rebuild_committed(self, now: float) -> None:
        """After a restart: committed reservations from the task table's ``reservation_id``s."""
        groups: dict[str, list[_Held]] = {}
        for entry in self.tasks.entries():
            rid = entry.spec.reservation_id
            if rid and rid not in self._live:
                groups.setdefault(rid, []).append(_Held(entry.spec, entry.node_id, entry.gpu_indexes))
        for rid, held in groups.items():
            held.sort(key=lambda h: h.spec.ref.task_index)
            placements = tuple(
                TaskPlacement(h.spec.ref.task_index, h.node_id, self._block(h.node_id)) for h in held
            )
            self._live[rid] = _Reservation(rid, held, placements, now, 0.0, committed=True)

    # -- invariants ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Every held task holds a ``held`` allocation, and every held allocation belongs to one."""
        owned: dict[TaskRef, str] = {}
        for rid, r in self._live.items():
            assert r.rid == rid
            for h in r.tasks:
                if r.committed:
                    continue
                node = self.registry.get(h.node_id)
                alloc = node.allocations.get(h.spec.ref) if node is not None else None
                assert alloc is not None and alloc.held, (
                    f"{rid}: task {h.spec.ref} holds nothing on {h.node_id}"
                )
                assert alloc.gpu_indexes == h.gpu_indexes
                assert rid in self._by_node.get(h.node_id, ()), f"{rid}: node map misses {h.node_id}"
                owned[h.spec.ref] = rid
        assert owned == self._held_refs, "held task map drifted"
        for node in self.registry:
            for key, alloc in node.allocations.items():
                if alloc.held:
                    assert key in owned, f"node {node.node_id}: held allocation {key} owned by no reservation"
        assert not (set(self._live) & set(self._tombs)), "a live reservation has a tombstone"
        assert self._held == sum(1 for r in self._live.values() if not r.committed), "held count drifted"


def reservation_specs(msg: Any) -> list[TaskSpec]:
    """The validated task specs of a ``ReserveTasks`` (raises InvalidArgument)."""
    return [TaskSpec.from_proto(t, f"reserve.tasks[{i}]") for i, t in enumerate(msg.tasks)]
