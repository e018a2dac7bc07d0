"""The node registry: a pure state machine (no I/O; time comes in as ``now`` arguments).

Nodes are ``ready`` → ``suspect`` → ``dead``. Agents send something (an empty delta, a heartbeat) at
least every ``heartbeat_interval_s``. A ready node heard nothing from for ``silent_after_s`` turns
suspect *and is probed* on its open stream (:class:`NodeSuspect` with ``probe=True``: the owner sends
the ``Probe``); any message from it on that stream revives it, and no answer within
``probe_timeout_s`` makes it dead. A ready node whose stream ends turns suspect at once and is dead
unless it registers again within ``dead_after_s`` (the reconnect grace). So a slow-but-alive node
costs a probe, never a false death, while a silent or vanished node is dead within
``silent_after_s + probe_timeout_s`` (plus the caller's tick). Time the owner could not listen (its
event loop stalled, :meth:`NodeRegistry.stalled`) does not count against any node: an overloaded
sub-domain detects more slowly instead of declaring healthy nodes dead. Deadlines live in a heap of ``(deadline, node_id, generation)``: a state
change bumps the node's generation so older entries are skipped when popped, and a report only
updates ``last_report`` -- the entry is pushed again, later, when it comes due. :meth:`tick` therefore
costs O(log n) per due entry and O(1) when nothing is due, never a scan of all nodes.

Aggregates for the summary (counts, capacity, free, GPUs by model, running tasks, power) are
maintained incrementally: every mutation of a node removes its contribution, changes it, and adds it
back. Only the shape grouping (with blocks, labels, datasets and share slots) is recomputed, in one
pass over the nodes, and only when something changed (``dirty``); its size depends on shapes and
caps, never on the number of nodes.

Allocations are whole resources plus either whole GPU indexes or a share of one card
(:class:`CardUse` per shared card: summed percent and memory, never over 100% or the card's
memory; a card carrying a share is not a free whole GPU until its last share leaves). An
allocation may be *held* for a gang reservation (``sub_domain._reservations``): used, not running.
Placement (:meth:`NodeRegistry.place`) honours the task's constraints: GPU model and exclusions,
node selector, one NVLink domain, shares, dataset locality with its wait, and a pipeline group's
block.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from domainos.api.v1 import common_pb2
from domainos.errors import AlreadyExists, FailedPrecondition, NotFound, SubDomainFull
from domainos.model import NodeHealth, NodeInventory, NodeUsage, PlacementConstraints, TaskRef
from domainos.resources import Resources

from ._placement import (
    NO_CONSTRAINTS,
    CardRoom,
    Placement,
    PlacementIndex,
    pick_gpus,
    pick_gpus_in_domain,
    reject_reason,
    share_fits,
    share_memory,
)

NodeState = Literal["ready", "suspect", "dead"]
READY: NodeState = "ready"
SUSPECT: NodeState = "suspect"
DEAD: NodeState = "dead"
STATES: tuple[NodeState, ...] = (READY, SUSPECT, DEAD)


@dataclass(frozen=True, slots=True)
class NodeReady:
    """A node is ready: it joined, re-registered, or reported again after silence."""

    node_id: str
    incarnation: str
    #: True when the node was unknown (or dead) before: a join to record durably.
    joined: bool
    #: True when a known node came back with a different inventory.
    inventory_changed: bool = False
    #: Tasks whose allocation no longer fits a shrunk inventory; they were released.
    evicted: tuple[TaskRef, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeSuspect:
    node_id: str
    why: str
    #: True when the node went silent on an open stream: the owner sends it a ``Probe`` now.
    probe: bool = False


@dataclass(frozen=True, slots=True)
class NodeDead:
    node_id: str
    why: str
    #: True when the node's stream was still open (a silent node): the owner should close it.
    had_connection: bool = False


@dataclass(frozen=True, slots=True)
class NodeForgotten:
    """A dead node's record was dropped (beyond ``dead_retention``)."""

    node_id: str


NodeEvent = NodeReady | NodeSuspect | NodeDead | NodeForgotten


@dataclass(slots=True)
class Allocation:
    """What one task holds on a node: whole resources, GPU indexes and, for a share, its part of
    one card (``gpu_indexes`` is then that one card and ``resources.gpus`` is 0)."""

    resources: Resources
    gpu_indexes: tuple[int, ...]
    share_percent: int = 0
    share_memory: int = 0
    #: Held for a gang reservation, not started (see ``_reservations``).
    held: bool = False


@dataclass(slots=True)
class CardUse:
    """The shares placed on one GPU card: summed percent and memory, and how many."""

    percent: int = 0
    memory: int = 0
    tasks: int = 0


@dataclass(frozen=True, slots=True)
class Cordon:
    """Why a node takes no new tasks: ``by`` is ``"health"`` (the policy) or ``"admin"``.

    ``draining``: its tasks are being moved off (when a graceful drain moves the rest is kept by
    the manager, not here). ``at`` is wall-clock time.
    """

    reason: str
    by: str
    at: float
    draining: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "by": self.by, "at": self.at, "draining": self.draining}

    @classmethod
    def from_json(cls, data: Any) -> Cordon | None:
        if not isinstance(data, dict):
            return None
        return cls(
            str(data.get("reason", "")),
            str(data.get("by", "")),
            float(data.get("at", 0.0)),
            bool(data.get("draining", False)),
        )


@dataclass(slots=True, eq=False)
class NodeRecord:
    """One node as the registry knows it. Read it; change it only through the registry."""

    node_id: str
    inventory: NodeInventory
    incarnation: str
    state: NodeState
    conn_token: int | None
    last_report: float
    state_since: float
    generation: int = 0
    suspect_why: str = ""
    #: How long (s, stalls not counted) a suspect node has to be heard from before it is dead.
    suspect_for: float = 0.0
    usage: NodeUsage = field(default_factory=NodeUsage)
    health: NodeHealth = field(default_factory=NodeHealth)
    allocated: Resources = field(default_factory=Resources)
    gpus_used: set[int] = field(default_factory=set)
    allocations: dict[TaskRef, Allocation] = field(default_factory=dict)
    #: Cards carrying shares (fractional GPUs): not free as whole GPUs while any share is on them.
    shares: dict[int, CardUse] = field(default_factory=dict)
    #: Set while the node is cordoned (by the health policy or an admin).
    cordon: Cordon | None = None

    @property
    def allocatable(self) -> Resources:
        return self.inventory.allocatable

    @property
    def free(self) -> Resources:
        """``allocatable - sum(requests of tasks placed here)``, with the node's GPU model.

        GPUs count whole free cards only: a card carrying a share is not free.
        """
        a = self.inventory.allocatable
        u = self.allocated
        return Resources(
            a.cpu_millis - u.cpu_millis,
            a.memory_bytes - u.memory_bytes,
            a.gpus - u.gpus - len(self.shares),
            a.gpu_model,
        )

    @property
    def free_gpu_indexes(self) -> list[int]:
        return [i for i in self.inventory.gpu_indexes if i not in self.gpus_used and i not in self.shares]

    @property
    def domain_of(self) -> dict[int, int]:
        """GPU index -> its NVLink domain."""
        return {g.index: g.nvlink_domain for g in self.inventory.gpus}

    @property
    def free_nvlink(self) -> int:
        """Most free whole GPUs inside one NVLink domain."""
        domain = self.domain_of
        counts: Counter[int] = Counter(domain.get(g, g) for g in self.free_gpu_indexes)
        return max(counts.values(), default=0)

    def card_memory(self, card: int) -> int:
        return next((g.memory_bytes for g in self.inventory.gpus if g.index == card), 0)

    def card_rooms(self) -> list[CardRoom]:
        """Partly used cards with room left."""
        out = []
        for card, use in sorted(self.shares.items()):
            mem = self.card_memory(card)
            if use.percent < 100:
                out.append(CardRoom(card, 100 - use.percent, max(mem - use.memory, 0), mem))
        return out

    @property
    def held_count(self) -> int:
        return sum(1 for a in self.allocations.values() if a.held)

    @property
    def placeable(self) -> bool:
        return self.state == READY and not self.health.cordoned and self.cordon is None

    @property
    def view_state(self) -> str:
        """``ready | suspect | dead | cordoned`` as people see it."""
        if self.state == READY and (self.health.cordoned or self.cordon is not None):
            return "cordoned"
        return self.state


@dataclass(frozen=True, slots=True)
class NodeShape:
    gpu_model: str
    free_gpus: int
    count: int
    best: Resources
    #: Most free GPUs in one NVLink domain of the shape's roomiest node (part of the shape key).
    free_nvlink_gpus: int = 0

    def to_proto(self) -> common_pb2.NodeShape:
        return common_pb2.NodeShape(
            gpu_model=self.gpu_model,
            free_gpus=self.free_gpus,
            count=self.count,
            best=self.best.to_proto(),
            free_nvlink_gpus=self.free_nvlink_gpus,
        )


@dataclass(frozen=True, slots=True)
class BlockShapes:
    """The placeable nodes under one block, by shape."""

    block: str
    shapes: tuple[NodeShape, ...]

    def to_proto(self) -> common_pb2.BlockSummary:
        return common_pb2.BlockSummary(block=self.block, shapes=[s.to_proto() for s in self.shapes])


@dataclass(frozen=True, slots=True)
class ShareSlot:
    """``count`` partly used cards of ``gpu_model`` with at least ``free_percent`` (10% steps,
    rounded down) and ``free_memory_bytes`` left."""

    gpu_model: str
    free_percent: int
    free_memory_bytes: int
    count: int

    def to_proto(self) -> common_pb2.GpuShareSlot:
        return common_pb2.GpuShareSlot(
            gpu_model=self.gpu_model,
            free_percent=self.free_percent,
            free_memory_bytes=self.free_memory_bytes,
            count=self.count,
        )


#: Stalls remembered for the stall credit (older ones fold into a base).
STALL_MEMORY_S = 120.0
#: A deadline is extended by stalls by at most this much: a sub-domain that stays overloaded still
#: declares dead nodes dead, only later.
MAX_STALL_CREDIT_S = 30.0
#: A node reloaded after a sub-domain restart has at least this long to register again: longer
#: than an agent's longest reconnect backoff (5 s, ``node_agent._agent.BACKOFF_MAX_S``) twice over,
#: since its agent may have backed off all the while the sub-domain was down.
RESTART_GRACE_S = 15.0
#: Summary caps: label pairs, datasets, shards per dataset (sizes independent of node count).
MAX_SUMMARY_LABELS = 256
MAX_SUMMARY_DATASETS = 256
MAX_SUMMARY_SHARDS = 4096
#: Groups (pipelines) whose block is remembered for their later stages.
MAX_GROUP_BLOCKS = 4096
#: A candidate set this small (label, shard holders, block members) is scanned exactly instead
#: of walking the index with a filter.
EXACT_SCAN_MAX = 1024


@dataclass(frozen=True)
class Summary:
    """Shape-aware summary of the sub-domain; its size depends on shapes, never on nodes.

    ``capacity`` and ``gpus_by_model`` cover ready nodes; ``free``, ``free_gpus_by_model`` and
    ``shapes`` cover placeable nodes (ready and not cordoned), i.e. what the master may place on.
    """

    nodes_total: int
    nodes_ready: int
    nodes_suspect: int
    nodes_dead: int
    nodes_simulated: int
    capacity: Resources
    free: Resources
    shapes: tuple[NodeShape, ...]
    running_tasks: int
    max_nodes: int
    gpus_by_model: dict[str, int]
    free_gpus_by_model: dict[str, int]
    largest_node: Resources
    power_draw_w: float
    blocks: tuple[BlockShapes, ...] = ()
    label_nodes: dict[str, int] = field(default_factory=dict)
    datasets: tuple[tuple[str, tuple[int, ...]], ...] = ()
    share_slots: tuple[ShareSlot, ...] = ()
    reservations_held: int = 0

    def to_proto(self) -> common_pb2.SubDomainSummary:
        return common_pb2.SubDomainSummary(
            nodes_total=self.nodes_total,
            nodes_ready=self.nodes_ready,
            nodes_suspect=self.nodes_suspect,
            nodes_dead=self.nodes_dead,
            nodes_simulated=self.nodes_simulated,
            capacity=self.capacity.to_proto(),
            free=self.free.to_proto(),
            shapes=[s.to_proto() for s in self.shapes],
            running_tasks=self.running_tasks,
            max_nodes=self.max_nodes,
            gpus_by_model=self.gpus_by_model,
            free_gpus_by_model=self.free_gpus_by_model,
            largest_node=self.largest_node.to_proto(),
            power_draw_w=self.power_draw_w,
            blocks=[b.to_proto() for b in self.blocks],
            label_nodes=self.label_nodes,
            datasets=[common_pb2.DatasetPresence(dataset=d, shards=list(s)) for d, s in self.datasets],
            share_slots=[s.to_proto() for s in self.share_slots],
            reservations_held=self.reservations_held,
        )


def bucket(value: int) -> int:
    """Log2-ish bucket with 4 steps per doubling (0 for nothing)."""
    return 0 if value <= 0 else 1 + math.floor(4 * math.log2(value))


def _add_shape(
    groups: dict[tuple[str, int, int, int, int], tuple[int, Resources]],
    key: tuple[str, int, int, int, int],
    free: Resources,
) -> None:
    prev = groups.get(key)
    if prev is None:
        groups[key] = (1, free)
    else:
        count, best = prev
        if (free.cpu_millis, free.memory_bytes) > (best.cpu_millis, best.memory_bytes):
            best = free
        groups[key] = (count + 1, best)


def _shapes(groups: dict[tuple[str, int, int, int, int], tuple[int, Resources]]) -> tuple[NodeShape, ...]:
    return tuple(
        NodeShape(gpu_model=k[0], free_gpus=k[1], count=c, best=b, free_nvlink_gpus=k[2])
        for k, (c, b) in sorted(groups.items())
    )


class _Totals:
    """Aggregates kept up to date by adding/removing one node's contribution."""

    def __init__(self) -> None:
        self.by_state: Counter[str] = Counter()
        self.simulated = 0
        self.cap_cpu = self.cap_mem = self.cap_gpus = 0
        self.free_cpu = self.free_mem = self.free_gpus = 0
        self.gpus_by_model: Counter[str] = Counter()
        self.free_gpus_by_model: Counter[str] = Counter()
        self.running = 0
        self.power = 0.0

    def apply(self, node: NodeRecord, sign: int) -> None:
        self.by_state[node.state] += sign
        self.simulated += sign * node.inventory.simulated
        if node.state == READY:
            a = node.allocatable
            self.cap_cpu += sign * a.cpu_millis
            self.cap_mem += sign * a.memory_bytes
            self.cap_gpus += sign * a.gpus
            if a.gpus:
                self.gpus_by_model[a.gpu_model] += sign * a.gpus
            self.running += sign * (len(node.allocations) - node.held_count)
            self.power += sign * node.usage.power_w
        if node.placeable:
            f = node.free
            self.free_cpu += sign * f.cpu_millis
            self.free_mem += sign * f.memory_bytes
            self.free_gpus += sign * f.gpus
            if node.allocatable.gpus:
                self.free_gpus_by_model[f.gpu_model] += sign * f.gpus

    def snapshot(self) -> tuple[object, ...]:
        return (
            +self.by_state,
            self.simulated,
            (self.cap_cpu, self.cap_mem, self.cap_gpus),
            (self.free_cpu, self.free_mem, self.free_gpus),
            +self.gpus_by_model,
            +self.free_gpus_by_model,
            self.running,
            round(self.power, 3),
        )


class NodeRegistry:
    """Nodes of one sub-domain: states, deadlines, allocations, placement and the summary."""

    def __init__(
        self,
        subdomain_id: str,
        *,
        max_nodes: int,
        silent_after_s: float,
        dead_after_s: float,
        probe_timeout_s: float = 1.0,
        dead_retention: int | None = None,
    ) -> None:
        self.subdomain_id = subdomain_id
        self.max_nodes = max_nodes
        self.silent_after_s = silent_after_s
        #: The reconnect grace of a node whose stream ended.
        self.dead_after_s = dead_after_s
        self.probe_timeout_s = probe_timeout_s
        #: How many dead node records to keep for views (oldest forgotten first).
        self.dead_retention = max_nodes if dead_retention is None else dead_retention
        self._nodes: dict[str, NodeRecord] = {}
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._heap: list[tuple[float, str, int]] = []
        #: ``(end, cumulative stalled seconds)`` of the owner's recent stalls, and the cumulative
        #: stall of those already forgotten (see :meth:`stalled`).
        self._stalls: list[tuple[float, float]] = []
        self._stall_base = 0.0
        self._index = PlacementIndex()
        # Topology lookups over registered nodes (any state; callers check ``placeable``).
        self._by_label: dict[str, set[str]] = {}
        self._by_shard: dict[tuple[str, int], set[str]] = {}
        self._by_block: dict[str, set[str]] = {}
        #: group key ("<job>/<group>") -> the block its first placed task went to (bounded LRU).
        self._group_blocks: OrderedDict[str, str] = OrderedDict()
        self._totals = _Totals()
        #: Nodes with a cordon record.
        self.cordoned = 0
        self._dirty = True
        self._summary: Summary | None = None

    # -- reading ---------------------------------------------------------------------------------

    @property
    def nodes(self) -> Mapping[str, NodeRecord]:
        return self._nodes

    def get(self, node_id: str) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def count(self, state: NodeState) -> int:
        return self._totals.by_state[state]

    @property
    def live_count(self) -> int:
        """Nodes that hold a place under ``max_nodes`` (ready or suspect; dead nodes do not)."""
        return self._totals.by_state[READY] + self._totals.by_state[SUSPECT]

    @property
    def dirty(self) -> bool:
        """True when something the summary shows changed since :meth:`summary` last ran."""
        return self._dirty

    def is_current(self, node_id: str, conn_token: int) -> bool:
        """True when ``conn_token`` is the live connection of ``node_id``."""
        node = self._nodes.get(node_id)
        return node is not None and node.conn_token == conn_token

    def page(self, after: str, limit: int) -> tuple[list[NodeRecord], str]:
        """Nodes sorted by id after ``after``; returns (page, next token or "")."""
        ids = sorted(self._nodes)
        start = 0
        if after:
            start = bisect.bisect_right(ids, after)
        chosen = ids[start : start + limit]
        nxt = chosen[-1] if chosen and start + limit < len(ids) else ""
        return [self._nodes[i] for i in chosen], nxt

    # -- mutation helpers ------------------------------------------------------------------------

    def _begin(self, node: NodeRecord) -> None:
        self._totals.apply(node, -1)

    def _end(self, node: NodeRecord) -> None:
        self._totals.apply(node, +1)
        if node.placeable:
            self._index.put(
                node.node_id,
                node.allocatable.gpu_model,
                node.free,
                node.free_nvlink,
                node.card_rooms(),
            )
        else:
            self._index.remove(node.node_id)
        self._dirty = True

    def _topo(self, node: NodeRecord, add: bool) -> None:
        """Add (or drop) a node in the label / shard / block lookups."""
        inv = node.inventory
        keys: list[tuple[dict[Any, set[str]], Any]] = [
            (self._by_label, f"{k}={v}") for k, v in inv.labels.items()
        ]
        keys += [(self._by_shard, (d.dataset, d.shard)) for d in inv.datasets]
        if inv.block:
            keys.append((self._by_block, inv.block))
        for table, key in keys:
            if add:
                table.setdefault(key, set()).add(node.node_id)
            else:
                members = table.get(key)
                if members is not None:
                    members.discard(node.node_id)
                    if not members:
                        del table[key]

    def _schedule(self, node: NodeRecord, deadline: float) -> None:
        node.generation += 1
        heapq.heappush(self._heap, (deadline, node.node_id, node.generation))
        if len(self._heap) > 4 * len(self._nodes) + 64:
            self._compact_heap()

    def _compact_heap(self) -> None:
        self._heap = [
            e
            for e in self._heap
            if (n := self._nodes.get(e[1])) is not None and n.state != DEAD and n.generation == e[2]
        ]
        heapq.heapify(self._heap)

    def stalled(self, now: float, seconds: float) -> None:
        """The owner could not process messages for ``seconds`` up to ``now`` (its loop was
        blocked or overloaded): that time is not counted against any node's deadline."""
        if seconds <= 0:
            return
        total = (self._stalls[-1][1] if self._stalls else self._stall_base) + seconds
        self._stalls.append((now, total))
        while self._stalls and self._stalls[0][0] < now - STALL_MEMORY_S:
            self._stall_base = self._stalls.pop(0)[1]

    def _stalled_by(self, t: float) -> float:
        i = bisect.bisect_right(self._stalls, (t, math.inf))
        return self._stalls[i - 1][1] if i else self._stall_base

    def _listened(self, since: float, now: float) -> float:
        """Seconds from ``since`` to ``now`` minus the stalls in between."""
        if not self._stalls or self._stalls[-1][0] <= since:
            return now - since
        credit = min(self._stalled_by(now) - self._stalled_by(since), MAX_STALL_CREDIT_S)
        return (now - since) - credit

    def _suspect(self, node: NodeRecord, why: str, span: float, now: float) -> None:
        """Make ``node`` suspect (between ``_begin`` and ``_end``); dead unless heard from within
        ``span``."""
        node.suspect_why = why
        node.suspect_for = span
        self._set_state(node, SUSPECT, now)
        self._schedule(node, now + span)

    def _set_state(self, node: NodeRecord, state: NodeState, now: float) -> None:
        if node.state != state:  # "since" is when the state began, not when it was last confirmed
            node.state_since = now
        node.state = state
        if state == DEAD:
            node.generation += 1  # invalidates any heap entry
            node.conn_token = None
            self._dead[node.node_id] = None
            self._dead.move_to_end(node.node_id)
        else:
            self._dead.pop(node.node_id, None)

    def _forget_old_dead(self) -> list[NodeEvent]:
        out: list[NodeEvent] = []
        while len(self._dead) > self.dead_retention:
            node_id = next(iter(self._dead))
            node = self._nodes[node_id]
            if node.allocations:  # its tasks are still being cleaned up; keep it for now
                break
            del self._dead[node_id]
            self._begin(node)
            self.cordoned -= node.cordon is not None
            self._topo(node, add=False)
            del self._nodes[node_id]
            self._dirty = True
            out.append(NodeForgotten(node_id))
        return out

    # -- events in ------------------------------------------------------------------------------

    def register(
        self,
        inventory: NodeInventory,
        incarnation: str,
        now: float,
        *,
        conn_token: int,
        usage: NodeUsage | None = None,
        health: NodeHealth | None = None,
    ) -> list[NodeEvent]:
        """A node's agent sent ``Register`` on connection ``conn_token``.

        Raises :class:`~domainos.errors.SubDomainFull` when ``max_nodes`` live nodes are registered (a known live
        node re-registering does not count twice) and :class:`AlreadyExists` when another live
        connection holds the node id.
        """
        node_id = inventory.node_id
        node = self._nodes.get(node_id)
        if node is not None and node.conn_token is not None and node.conn_token != conn_token:
            raise AlreadyExists(
                f"node {node_id} is already connected to sub-domain {self.subdomain_id} "
                f"(incarnation {node.incarnation}); a second live connection is refused"
            )
        if (node is None or node.state == DEAD) and self.live_count >= self.max_nodes:
            raise SubDomainFull(
                f"sub-domain {self.subdomain_id} is full: max_nodes={self.max_nodes} nodes are registered; "
                "try another sub-domain"
            )
        if node is None:
            node = NodeRecord(
                node_id=node_id,
                inventory=inventory,
                incarnation=incarnation,
                state=READY,
                conn_token=conn_token,
                last_report=now,
                state_since=now,
                usage=usage or NodeUsage(),
                health=health or NodeHealth(),
            )
            self._nodes[node_id] = node
            self._topo(node, add=True)
            self._end(node)
            self._schedule(node, now + self.silent_after_s)
            return [NodeReady(node_id, incarnation, joined=True)]
        joined = node.state == DEAD
        changed = node.inventory != inventory
        self._begin(node)
        evicted = self._refit(node, inventory) if changed else ()
        if changed:
            self._topo(node, add=False)
        node.inventory = inventory
        if changed:
            self._topo(node, add=True)
        node.incarnation = incarnation
        node.conn_token = conn_token
        node.last_report = now
        if usage is not None:
            node.usage = usage
        if health is not None:
            node.health = health
        self._set_state(node, READY, now)
        self._end(node)
        self._schedule(node, now + self.silent_after_s)
        return [NodeReady(node_id, incarnation, joined=joined, inventory_changed=changed, evicted=evicted)]

    def _refit(self, node: NodeRecord, inventory: NodeInventory) -> tuple[TaskRef, ...]:
        # Keep the allocations that still fit the new inventory (in key order); release the rest.
        valid_gpus = set(inventory.gpu_indexes)
        card_mem = {g.index: g.memory_bytes for g in inventory.gpus}
        alloc = inventory.allocatable
        kept: dict[TaskRef, Allocation] = {}
        used = Resources()
        gpus: set[int] = set()
        shares: dict[int, CardUse] = {}
        evicted: list[TaskRef] = []
        for key in sorted(node.allocations):
            a = node.allocations[key]
            total = used + a.resources
            cards = set(shares)
            ok = (
                total.cpu_millis <= alloc.cpu_millis
                and total.memory_bytes <= alloc.memory_bytes
                and set(a.gpu_indexes) <= valid_gpus
                and not (set(a.gpu_indexes) & gpus)
            )
            if ok and a.share_percent:
                card = a.gpu_indexes[0]
                use = shares.get(card, CardUse())
                mem = card_mem.get(card, 0)
                ok = (
                    use.percent + a.share_percent <= 100
                    and (mem == 0 or use.memory + a.share_memory <= mem)
                    and total.gpus + len(cards | {card}) <= alloc.gpus
                )
                if ok:
                    shares[card] = CardUse(
                        use.percent + a.share_percent, use.memory + a.share_memory, use.tasks + 1
                    )
            elif ok:
                ok = not (set(a.gpu_indexes) & cards) and total.gpus + len(cards) <= alloc.gpus
                if ok:
                    gpus |= set(a.gpu_indexes)
            if ok:
                kept[key] = a
                used = Resources(total.cpu_millis, total.memory_bytes, total.gpus)
            else:
                evicted.append(key)
        node.allocations = kept
        node.allocated = used
        node.gpus_used = gpus
        node.shares = shares
        return tuple(evicted)

    def set_cordon(self, node_id: str, cordon: Cordon | None) -> NodeRecord:
        """Cordon (or, with ``None``, uncordon) a known node; NotFound otherwise."""
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} is not known in sub-domain {self.subdomain_id}", field="node_id")
        self._begin(node)
        self.cordoned += (cordon is not None) - (node.cordon is not None)
        node.cordon = cordon
        self._end(node)
        return node

    def restore(
        self,
        inventory: NodeInventory,
        incarnation: str,
        *,
        dead: bool,
        now: float,
        cordon: Cordon | None = None,
    ) -> None:
        """Reload a node record from the store after a restart.

        A node that was alive comes back ``suspect`` with no connection and a grace of at least
        :data:`RESTART_GRACE_S` to re-register before it is declared dead.
        """
        if inventory.node_id in self._nodes:
            return
        node = NodeRecord(
            node_id=inventory.node_id,
            inventory=inventory,
            incarnation=incarnation,
            state=DEAD if dead else SUSPECT,
            conn_token=None,
            last_report=now,
            state_since=now,
            suspect_why="sub-domain restarted; waiting for the agent to re-register",
            suspect_for=max(RESTART_GRACE_S, self.silent_after_s, self.dead_after_s),
            cordon=cordon,
        )
        self.cordoned += cordon is not None
        self._nodes[node.node_id] = node
        self._topo(node, add=True)
        if dead:
            self._dead[node.node_id] = None
        self._end(node)
        if not dead:
            self._schedule(node, now + node.suspect_for)

    def report(
        self,
        node_id: str,
        now: float,
        *,
        conn_token: int | None = None,
        usage: NodeUsage | None = None,
        health: NodeHealth | None = None,
    ) -> list[NodeEvent]:
        """A report (or a probe's answer) arrived: refresh liveness (no heap push), apply
        usage/health if present.

        Reports on a connection that is not the node's live one are ignored. A suspect node whose
        stream stayed open (a probed one) comes back to ready.
        """
        node = self._nodes.get(node_id)
        if node is None or node.state == DEAD:
            return []
        if conn_token is not None and node.conn_token != conn_token:
            return []
        node.last_report = now
        events: list[NodeEvent] = []
        if usage is not None or health is not None or node.state == SUSPECT:
            self._begin(node)
            if usage is not None:
                node.usage = usage
            if health is not None:
                node.health = health
            if node.state == SUSPECT and node.conn_token is not None:
                self._set_state(node, READY, now)
                self._schedule(node, now + self.silent_after_s)
                events.append(NodeReady(node_id, node.incarnation, joined=False))
            self._end(node)
        return events

    def disconnect(self, node_id: str, conn_token: int, now: float) -> list[NodeEvent]:
        """The stream ``conn_token`` of ``node_id`` ended; a ready node becomes suspect."""
        node = self._nodes.get(node_id)
        if node is None or node.conn_token != conn_token:
            return []
        self._begin(node)
        node.conn_token = None
        events: list[NodeEvent] = []
        if node.state == READY:
            self._suspect(node, "its stream ended", self.dead_after_s, now)
            events.append(NodeSuspect(node_id, node.suspect_why))
        self._end(node)
        return events

    def tick(self, now: float) -> list[NodeEvent]:
        """Fire the deadlines that are due; O(1) when none is."""
        events: list[NodeEvent] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, node_id, gen = heapq.heappop(heap)
            node = self._nodes.get(node_id)
            if node is None or node.generation != gen or node.state == DEAD:
                continue
            if node.state == READY:
                due = now + self.silent_after_s - self._listened(node.last_report, now)
                if due > now:
                    heapq.heappush(heap, (due, node_id, gen))
                    continue
                self._begin(node)
                why = f"nothing heard for {now - node.last_report:.1f}s, probed"
                self._suspect(node, why, self.probe_timeout_s, now)
                self._end(node)
                events.append(NodeSuspect(node_id, node.suspect_why, probe=True))
            else:  # SUSPECT: dead unless it was heard from (or the owner stalled) in the meantime
                due = now + node.suspect_for - self._listened(node.state_since, now)
                if due > now:
                    heapq.heappush(heap, (due, node_id, gen))
                    continue
                self._begin(node)
                had_conn = node.conn_token is not None
                why = f"{node.suspect_why}, then nothing for {now - node.state_since:.1f}s"
                self._set_state(node, DEAD, now)
                self._end(node)
                events.append(NodeDead(node_id, why, had_connection=had_conn))
        if events:
            events += self._forget_old_dead()
        return events

    def next_deadline(self) -> float | None:
        """Earliest heap entry (may be stale); for timers that want to sleep exactly."""
        return self._heap[0][0] if self._heap else None

    # -- allocations ------------------------------------------------------------------------------

    def allocate(
        self,
        node_id: str,
        key: TaskRef,
        resources: Resources,
        gpu_indexes: tuple[int, ...],
        *,
        held: bool = False,
    ) -> None:
        """Charge a task's request (and its GPUs, or its share of one card) to a node.

        ``held``: a gang reservation's hold (counted as used, not as a running task). Raises when
        it does not fit.
        """
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} is not registered in sub-domain {self.subdomain_id}")
        if key in node.allocations:
            return
        free = node.free
        share = resources.gpus == 0 and resources.gpu_share > 0
        if len(gpu_indexes) != (1 if share else resources.gpus):
            raise FailedPrecondition(
                f"task {key} asks for {resources.describe()} but got GPU indexes {gpu_indexes}"
            )
        if not (
            resources.cpu_millis <= free.cpu_millis
            and resources.memory_bytes <= free.memory_bytes
            and resources.gpus <= free.gpus
        ):
            raise FailedPrecondition(
                f"task {key} ({resources.describe()}) does not fit node {node_id}: free {free.describe()}"
            )
        bad = [
            g
            for g in gpu_indexes
            if g in node.gpus_used or g not in node.inventory.gpu_indexes or (not share and g in node.shares)
        ]
        if bad or len(set(gpu_indexes)) != len(gpu_indexes):
            raise FailedPrecondition(
                f"GPU indexes {gpu_indexes} of task {key} are not free on node {node_id}"
            )
        share_mem = 0
        if share:
            card = gpu_indexes[0]
            use = node.shares.get(card, CardUse())
            mem = node.card_memory(card)
            if use.tasks == 0 and free.gpus < 1:
                raise FailedPrecondition(f"task {key}: node {node_id} has no whole free GPU for a new share")
            if not share_fits(resources, CardRoom(card, 100 - use.percent, max(mem - use.memory, 0), mem)):
                raise FailedPrecondition(
                    f"task {key} ({resources.describe()}) does not fit GPU {card} of node {node_id}: "
                    f"{100 - use.percent}% and {max(mem - use.memory, 0)} bytes left"
                )
            share_mem = share_memory(resources, mem)
        self._begin(node)
        whole = Resources(resources.cpu_millis, resources.memory_bytes, resources.gpus)
        node.allocations[key] = Allocation(
            whole,
            gpu_indexes,
            share_percent=resources.gpu_share if share else 0,
            share_memory=share_mem,
            held=held,
        )
        node.allocated = node.allocated + whole
        if share:
            use = node.shares.setdefault(gpu_indexes[0], CardUse())
            use.percent += resources.gpu_share
            use.memory += share_mem
            use.tasks += 1
        else:
            node.gpus_used.update(gpu_indexes)
        self._end(node)

    def set_held(self, node_id: str, key: TaskRef, held: bool) -> bool:
        """Turn a hold into a running allocation (``held=False``) or back; False when none."""
        node = self._nodes.get(node_id)
        a = node.allocations.get(key) if node is not None else None
        if node is None or a is None:
            return False
        if a.held != held:
            self._begin(node)
            a.held = held
            self._end(node)
        return True

    def release(self, node_id: str, key: TaskRef) -> bool:
        """Give a task's resources back; False when it held none there."""
        node = self._nodes.get(node_id)
        if node is None or key not in node.allocations:
            return False
        self._begin(node)
        a = node.allocations.pop(key)
        node.allocated = node.allocated - a.resources
        if a.share_percent:
            card = a.gpu_indexes[0]
            use = node.shares[card]
            use.percent -= a.share_percent
            use.memory -= a.share_memory
            use.tasks -= 1
            if use.tasks == 0:
                del node.shares[card]
        else:
            node.gpus_used.difference_update(a.gpu_indexes)
        self._end(node)
        return True

    def place(
        self,
        request: Resources,
        constraints: PlacementConstraints = NO_CONSTRAINTS,
        *,
        now: float = 0.0,
        group_key: str = "",
        only_block: str = "",
        avoid: Collection[str] = (),
    ) -> Placement | str:
        """Best-fit node and GPU indexes for ``request`` under ``constraints``, or why nothing fits.

        ``now`` is wall-clock unix seconds (the locality wait runs from ``submitted_at``);
        ``group_key`` names the task's group across jobs (``"<job>/<group>"``): its later tasks
        prefer the block its first one went to. ``only_block`` restricts the choice to one block's
        nodes (gang reservations trying to keep a pipeline in one block). ``avoid``: nodes the
        task must not go to (those running another task of its job, for ``distinct_nodes``).

        A task with node affinity (``constraints.node_id``) goes to that node, or nowhere unless
        the affinity is soft (then the tiers below). Order of preference otherwise: nodes holding the task's dataset shard (only those while the
        locality wait runs), then the group's block, then any node. Each tier is a small exact
        scan when its candidate set is at most ``EXACT_SCAN_MAX`` nodes (shard holders, a block,
        the nodes of the rarest selector label), else an index walk filtered by the tier's
        predicate (see ``_placement``).
        """
        c = constraints
        share = request.gpus == 0 and request.gpu_share > 0
        want_model = request.gpu_model if (request.gpus > 0 or share) else ""
        excluded = frozenset(c.exclude_gpu_models)

        def model_ok(m: str) -> bool:
            return bool(m) and (not want_model or m == want_model) and m not in excluded

        selector = dict(c.node_selector)
        label_sets = [self._by_label.get(f"{k}={v}", set()) for k, v in sorted(selector.items())]
        if selector and min(len(x) for x in label_sets) == 0:
            return self._reason(request, c, model_ok, selector_matches=0, now=now)

        def labels_ok(node_id: str) -> bool:
            if node_id in avoid:
                return False
            inv = self._nodes[node_id].inventory
            if only_block and inv.block != only_block:
                return False
            return all(inv.labels.get(k) == v for k, v in selector.items())

        pinned_note = ""
        if c.node_id:
            found = self._scan((c.node_id,), request, c, model_ok, labels_ok)
            if found is not None:
                return found
            why = self._pinned_reason(c.node_id, request, avoid)
            if not c.node_soft:
                return f"affinity: {why}"
            pinned_note = f"affinity for node {c.node_id} is soft and {why}: placed on node "

        rarest = min(label_sets, key=len) if selector else None
        tiers: list[tuple[set[str] | None, Callable[[str], bool]]] = []
        holders: set[str] = set()
        waiting = False
        if c.dataset:
            holders = self._by_shard.get((c.dataset, c.shard), set())
            waiting = now < c.submitted_at + c.locality_wait_s
            if len(holders) <= EXACT_SCAN_MAX:
                tiers.append((holders, labels_ok))
            else:
                tiers.append((None, lambda n: n in holders and labels_ok(n)))
        block = self._group_blocks.get(group_key, "") if group_key and not only_block else ""
        if only_block:
            members = self._by_block.get(only_block, set())
            if rarest is None or len(members) < len(rarest):
                rarest = members
        if block and not waiting:
            members = self._by_block.get(block, set())
            tiers.append(
                (members, labels_ok)
                if len(members) <= EXACT_SCAN_MAX
                else (None, lambda n: self._nodes[n].inventory.block == block and labels_ok(n))
            )
        if not waiting:
            if rarest is not None and len(rarest) <= EXACT_SCAN_MAX:
                tiers.append((rarest, labels_ok))
            else:
                tiers.append((None, labels_ok))
        for i, (candidates, ok) in enumerate(tiers):
            if candidates is not None:
                found = self._scan(candidates, request, c, model_ok, ok)
            else:
                found = self._walk(request, c, model_ok, ok)
            if found is None:
                continue
            note = ""
            if pinned_note:
                note = pinned_note + found.node_id
            elif c.dataset and i > 0:
                note = (
                    f"locality wait for {c.dataset} shard {c.shard} is over and none of the "
                    f"{len(holders)} nodes holding it had room: placed on node {found.node_id} without it"
                )
            if note:
                found = Placement(found.node_id, found.gpu_indexes, note)
            if group_key:
                got = self._nodes[found.node_id].inventory.block
                if got and group_key not in self._group_blocks:
                    self._group_blocks[group_key] = got
                    while len(self._group_blocks) > MAX_GROUP_BLOCKS:
                        self._group_blocks.popitem(last=False)
                elif group_key in self._group_blocks:
                    self._group_blocks.move_to_end(group_key)
            return found
        if waiting:
            left = c.submitted_at + c.locality_wait_s - now
            live = sum(1 for n in holders if n in self._index)
            return (
                f"waiting for a node holding {c.dataset} shard {c.shard} ({left:.0f} s left); "
                f"nodes holding it: {live}, none with room for {request.describe()}"
            )
        matches = None
        if selector:
            matches = sum(1 for n in min(label_sets, key=len) if n in self._index and labels_ok(n))
        return self._reason(request, c, model_ok, selector_matches=matches, now=now)

    def _pinned_reason(self, node_id: str, request: Resources, avoid: Collection[str]) -> str:
        """Why the node a task is pinned to cannot take it now."""
        node = self._nodes.get(node_id)
        if node is None:
            return f"node {node_id} is not registered in sub-domain {self.subdomain_id}"
        if node_id in avoid:
            return f"node {node_id} already runs a task of this job (distinct_nodes)"
        if node_id not in self._index:
            return f"node {node_id} is {node.view_state} and takes no tasks"
        return f"node {node_id} has {node.free.describe()} free, not {request.describe()}"

    @property
    def blocks(self) -> list[str]:
        """Blocks declared by registered nodes, sorted."""
        return sorted(self._by_block)

    def _node_fit(
        self, node: NodeRecord, request: Resources, c: PlacementConstraints, model_ok: Callable[[str], bool]
    ) -> tuple[tuple[int, int, int, str], tuple[int, ...]] | None:
        """(best-fit key, GPU indexes) for ``request`` on ``node``, or None when it does not fit.

        Keys order: a share on a partly used card first (fullest card first), then least
        leftover whole GPUs, then least leftover CPU.
        """
        f = node.free
        if f.cpu_millis < request.cpu_millis or f.memory_bytes < request.memory_bytes:
            return None
        cpu_left = f.cpu_millis - request.cpu_millis
        if request.gpus > 0:
            if not model_ok(node.allocatable.gpu_model) or f.gpus < request.gpus:
                return None
            if c.one_nvlink_domain:
                gpus = pick_gpus_in_domain(
                    node.free_gpu_indexes, node.domain_of, node.inventory.nvlink, request.gpus
                )
            else:
                gpus = pick_gpus(node.free_gpu_indexes, node.inventory.nvlink, request.gpus)
            if gpus is None:
                return None
            return (1, f.gpus - request.gpus, cpu_left, node.node_id), gpus
        if request.gpu_share > 0:
            if not model_ok(node.allocatable.gpu_model):
                return None
            rooms = [r for r in node.card_rooms() if share_fits(request, r)]
            if rooms:
                room = min(rooms, key=lambda r: (r.free_percent, r.free_memory, r.card))
                return (0, room.free_percent, cpu_left, node.node_id), (room.card,)
            card = self._whole_card(node, request)
            if card is None:
                return None
            return (1, f.gpus - 1, cpu_left, node.node_id), (card,)
        return (1, max(f.gpus, 0), cpu_left, node.node_id), ()

    @staticmethod
    def _whole_card(node: NodeRecord, request: Resources) -> int | None:
        """A whole free card a new share fits on (its memory known when memory is asked): in the
        NVLink domain with the fewest free GPUs, so whole domains stay whole for TP groups."""
        free = node.free_gpu_indexes
        domain = node.domain_of
        home = {g: domain.get(g, g) for g in free}
        per_domain = Counter(home.values())
        for card in sorted(free, key=lambda g: (per_domain[home[g]], g)):
            if share_fits(request, CardRoom(card, 100, node.card_memory(card), node.card_memory(card))):
                return card
        return None

    def _scan(
        self,
        candidates: Iterable[str],
        request: Resources,
        c: PlacementConstraints,
        model_ok: Callable[[str], bool],
        ok: Callable[[str], bool],
    ) -> Placement | None:
        """Exact best fit over a small candidate set."""
        best: tuple[tuple[int, int, int, str], tuple[int, ...]] | None = None
        for node_id in candidates:
            if node_id not in self._index or not ok(node_id):
                continue
            fit = self._node_fit(self._nodes[node_id], request, c, model_ok)
            if fit is not None and (best is None or fit[0] < best[0]):
                best = fit
        return None if best is None else Placement(best[0][3], best[1])

    def _walk(
        self,
        request: Resources,
        c: PlacementConstraints,
        model_ok: Callable[[str], bool],
        ok: Callable[[str], bool],
    ) -> Placement | None:
        """Best fit through the index (filtered by ``ok``)."""
        if request.gpus == 0 and request.gpu_share > 0:
            got = self._index.choose_card(request, model_ok=model_ok, node_ok=ok)
            if got is not None:
                return Placement(got[0], (got[1],))
            whole = Resources(request.cpu_millis, request.memory_bytes, 1)
            node_id = self._index.choose(
                whole,
                model_ok=model_ok,
                node_ok=lambda n: ok(n) and self._whole_card(self._nodes[n], request) is not None,
            )
            if node_id is None:
                return None
            card = self._whole_card(self._nodes[node_id], request)
            assert card is not None
            return Placement(node_id, (card,))
        nvlink = c.one_nvlink_domain and request.gpus > 1
        node_id = self._index.choose(request, model_ok=model_ok, nvlink=nvlink, node_ok=ok)
        if node_id is None:
            return None
        fit = self._node_fit(self._nodes[node_id], request, c, model_ok)
        assert fit is not None, f"index says node {node_id} fits {request.describe()}"
        return Placement(node_id, fit[1])

    def _reason(
        self,
        request: Resources,
        c: PlacementConstraints,
        model_ok: Callable[[str], bool],
        *,
        selector_matches: int | None,
        now: float,
    ) -> str:
        """Why nothing fits: the first constraint that fails, with the numbers."""
        want = request.describe()
        ready = self._totals.by_state[READY]
        if ready == 0 or not len(self._index):
            return reject_reason(request, None, ready=ready, registered=len(self._nodes))
        sel = ",".join(f"{k}={v}" for k, v in sorted(c.node_selector.items()))
        if selector_matches == 0:
            return (
                f"no ready node with labels {sel} ({len(self._index)} placeable nodes, none carries them all)"
            )
        share = request.gpus == 0 and request.gpu_share > 0
        model = request.gpu_model or "any"
        excl = f" (excluding {', '.join(sorted(c.exclude_gpu_models))})" if c.exclude_gpu_models else ""
        if (request.gpus > 0 or share) and not self._index.has_model(model_ok):
            return f"no ready node has {want} free; no ready node with {model} GPUs{excl} ({ready} ready)"
        if c.one_nvlink_domain and request.gpus > 1:
            best = self._index.best_nvlink(model_ok)
            if best is not None and best[0] < request.gpus:
                return (
                    f"no ready node with {request.gpus} free {model} GPUs in one NVLink domain{excl}: "
                    f"best has {best[0]} ({best[1]})"
                )
        scope = f" among nodes with labels {sel} ({selector_matches} match)" if sel else ""
        if share:
            room = self._index.fullest_card_room(model_ok)
            whole = self._index.largest(Resources(0, 0, 1, request.gpu_model), model_ok)
            parts = []
            if room is not None:
                node_id, r = room
                parts.append(
                    f"roomiest partly used card: {r.free_percent}% and {r.free_memory} bytes left "
                    f"(node {node_id} GPU {r.card})"
                )
            else:
                parts.append("no partly used card")
            if whole is not None and whole.gpus > 0:
                parts.append(f"largest node with a whole free card: {whole.describe()}")
            else:
                parts.append(f"no whole free {model} card{excl}")
            return f"no ready node has {want} free{scope}: " + "; ".join(parts)
        largest = self._index.largest(request, model_ok)
        return reject_reason(request, largest, ready=ready, registered=len(self._nodes)) + scope

    # -- summary ---------------------------------------------------------------------------------

    def summary(self) -> Summary:
        """The current summary; recomputed (one pass over the nodes) only when something changed."""
        if self._summary is not None and not self._dirty:
            return self._summary
        t = self._totals
        _ShapeKey = tuple[str, int, int, int, int]
        groups: dict[_ShapeKey, tuple[int, Resources]] = {}
        by_block: dict[str, dict[_ShapeKey, tuple[int, Resources]]] = {}
        labels: Counter[str] = Counter()
        shards: dict[str, set[int]] = {}
        slots: dict[tuple[str, int], tuple[int, int]] = {}
        largest = Resources()
        for node in self._nodes.values():
            if node.state != READY:
                continue
            a = node.allocatable
            if (a.gpus, a.cpu_millis, a.memory_bytes) > (
                largest.gpus,
                largest.cpu_millis,
                largest.memory_bytes,
            ):
                largest = a
            inv = node.inventory
            labels.update(f"{k}={v}" for k, v in inv.labels.items())
            for d in inv.datasets:
                shards.setdefault(d.dataset, set()).add(d.shard)
            if not node.placeable:
                continue
            f = node.free
            key = (a.gpu_model, f.gpus, node.free_nvlink, bucket(f.cpu_millis), bucket(f.memory_bytes))
            _add_shape(groups, key, f)
            if inv.block:
                _add_shape(by_block.setdefault(inv.block, {}), key, f)
            for room in node.card_rooms():
                skey = (a.gpu_model, room.free_percent // 10 * 10)
                prev = slots.get(skey)
                slots[skey] = (
                    (1, room.free_memory) if prev is None else (prev[0] + 1, min(prev[1], room.free_memory))
                )
        kept_labels = sorted(labels)[:MAX_SUMMARY_LABELS]
        self._summary = Summary(
            nodes_total=len(self._nodes),
            nodes_ready=t.by_state[READY],
            nodes_suspect=t.by_state[SUSPECT],
            nodes_dead=t.by_state[DEAD],
            nodes_simulated=t.simulated,
            capacity=Resources(t.cap_cpu, t.cap_mem, t.cap_gpus),
            free=Resources(t.free_cpu, t.free_mem, t.free_gpus),
            shapes=_shapes(groups),
            running_tasks=t.running,
            max_nodes=self.max_nodes,
            gpus_by_model={k: v for k, v in sorted(t.gpus_by_model.items()) if v},
            free_gpus_by_model={
                k: v for k, v in sorted(t.free_gpus_by_model.items()) if t.gpus_by_model.get(k)
            },
            largest_node=largest,
            power_draw_w=round(t.power / 10) * 10.0,
            blocks=tuple(BlockShapes(b, _shapes(g)) for b, g in sorted(by_block.items())),
            label_nodes={k: labels[k] for k in kept_labels},
            datasets=tuple(
                (d, tuple(sorted(shards[d])[:MAX_SUMMARY_SHARDS]))
                for d in sorted(shards)[:MAX_SUMMARY_DATASETS]
            ),
            share_slots=tuple(
                ShareSlot(m, pct, mem, n) for (m, pct), (n, mem) in sorted(slots.items(), reverse=True)
            ),
        )
        self._dirty = False
        return self._summary

    # -- invariants ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[NodeRecord]:
        return iter(self._nodes.values())

    def validate(self) -> None:
        """Check every invariant (O(nodes); for tests)."""
        fresh = _Totals()
        live_entries = {(e[1], e[2]) for e in self._heap}
        for node_id, node in self._nodes.items():
            assert node.node_id == node_id == node.inventory.node_id
            assert node.state in STATES
            fresh.apply(node, +1)
            total = Resources()
            gpus: list[int] = []
            shares: dict[int, CardUse] = {}
            for a in node.allocations.values():
                total = total + a.resources
                if a.share_percent:
                    assert len(a.gpu_indexes) == 1 and a.resources.gpus == 0, f"{node_id}: bad share"
                    use = shares.setdefault(a.gpu_indexes[0], CardUse())
                    use.percent += a.share_percent
                    use.memory += a.share_memory
                    use.tasks += 1
                    continue
                gpus.extend(a.gpu_indexes)
                assert len(a.gpu_indexes) == a.resources.gpus, f"{node_id}: gpu count mismatch"
            assert shares == node.shares, f"{node_id}: card shares {node.shares} != allocations {shares}"
            for card, use in shares.items():
                assert use.percent <= 100, f"{node_id}: GPU {card} shared over 100% ({use.percent}%)"
                mem = node.card_memory(card)
                assert mem == 0 or use.memory <= mem, f"{node_id}: GPU {card} memory over-shared"
                assert card not in gpus, f"{node_id}: GPU {card} both shared and whole"
                assert card in node.inventory.gpu_indexes, f"{node_id}: share on unknown GPU {card}"
            assert (total.cpu_millis, total.memory_bytes, total.gpus) == (
                node.allocated.cpu_millis,
                node.allocated.memory_bytes,
                node.allocated.gpus,
            ), f"{node_id}: allocated {node.allocated} != sum of allocations {total}"
            alloc = node.allocatable
            assert node.allocated.cpu_millis <= alloc.cpu_millis, f"{node_id}: CPU over-allocated"
            assert node.allocated.memory_bytes <= alloc.memory_bytes, f"{node_id}: memory over-allocated"
            assert node.allocated.gpus + len(shares) <= alloc.gpus, f"{node_id}: GPUs over-allocated"
            assert len(gpus) == len(set(gpus)), f"{node_id}: a GPU index is assigned twice: {sorted(gpus)}"
            assert set(gpus) == node.gpus_used, f"{node_id}: gpus_used out of sync"
            assert set(gpus) <= set(node.inventory.gpu_indexes), f"{node_id}: unknown GPU index assigned"
            if node.state == DEAD:
                assert node.conn_token is None, f"{node_id}: dead node holds a connection"
                assert node_id in self._dead
            else:
                assert node_id not in self._dead
                assert (node_id, node.generation) in live_entries, f"{node_id}: no live deadline"
            for key in (f"{k}={v}" for k, v in node.inventory.labels.items()):
                assert node_id in self._by_label.get(key, ()), f"{node_id}: label {key} not indexed"
            for d in node.inventory.datasets:
                assert node_id in self._by_shard.get((d.dataset, d.shard), ()), (
                    f"{node_id}: shard not indexed"
                )
            if node.placeable:
                assert self._index.free(node_id) == node.free, f"{node_id}: index out of date"
            else:
                assert node_id not in self._index, f"{node_id}: not placeable but indexed"
        assert fresh.snapshot() == self._totals.snapshot(), (
            f"aggregates drifted: {self._totals.snapshot()} != {fresh.snapshot()}"
        )
        assert len(self._dead) == self._totals.by_state[DEAD]
        self._index.validate()
