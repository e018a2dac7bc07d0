"""The node registry: a pure state machine (no I/O; time comes in as ``now`` arguments).

Nodes are ``ready`` → ``suspect`` → ``dead``. A ready node turns suspect when its stream ends or when it
has not reported for ``silent_after_s``; a suspect node that neither reconnects nor reports within
``dead_after_s`` is dead. Deadlines live in a heap of ``(deadline, node_id, generation)``: a state
change bumps the node's generation so older entries are skipped when popped, and a report only
updates ``last_report`` -- the entry is pushed again, later, when it comes due. :meth:`tick` therefore
costs O(log n) per due entry and O(1) when nothing is due, never a scan of all nodes.

Aggregates for the summary (counts, capacity, free, GPUs by model, running tasks, power) are
maintained incrementally: every mutation of a node removes its contribution, changes it, and adds it
back. Only the shape grouping is recomputed, and only when something changed (``dirty``).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from domainos.api.v1 import common_pb2
from domainos.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from domainos.model import NodeHealth, NodeInventory, NodeUsage, TaskRef
from domainos.resources import Resources

from ._placement import Placement, PlacementIndex, pick_gpus, reject_reason

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
    resources: Resources
    gpu_indexes: tuple[int, ...]


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
    usage: NodeUsage = field(default_factory=NodeUsage)
    health: NodeHealth = field(default_factory=NodeHealth)
    allocated: Resources = field(default_factory=Resources)
    gpus_used: set[int] = field(default_factory=set)
    allocations: dict[TaskRef, Allocation] = field(default_factory=dict)

    @property
    def allocatable(self) -> Resources:
        return self.inventory.allocatable

    @property
    def free(self) -> Resources:
        """``allocatable - sum(requests of tasks placed here)``, with the node's GPU model."""
        a = self.inventory.allocatable
        u = self.allocated
        return Resources(
            a.cpu_millis - u.cpu_millis, a.memory_bytes - u.memory_bytes, a.gpus - u.gpus, a.gpu_model
        )

    @property
    def free_gpu_indexes(self) -> list[int]:
        return [i for i in self.inventory.gpu_indexes if i not in self.gpus_used]

    @property
    def placeable(self) -> bool:
        return self.state == READY and not self.health.cordoned

    @property
    def view_state(self) -> str:
        """``ready | suspect | dead | cordoned`` as people see it."""
        if self.state == READY and self.health.cordoned:
            return "cordoned"
        return self.state


@dataclass(frozen=True, slots=True)
class NodeShape:
    gpu_model: str
    free_gpus: int
    count: int
    best: Resources

    def to_proto(self) -> common_pb2.NodeShape:
        return common_pb2.NodeShape(
            gpu_model=self.gpu_model, free_gpus=self.free_gpus, count=self.count, best=self.best.to_proto()
        )


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
        )


def bucket(value: int) -> int:
    """Log2-ish bucket with 4 steps per doubling (0 for nothing)."""
    return 0 if value <= 0 else 1 + math.floor(4 * math.log2(value))


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
            self.running += sign * len(node.allocations)
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
        dead_retention: int | None = None,
    ) -> None:
        self.subdomain_id = subdomain_id
        self.max_nodes = max_nodes
        self.silent_after_s = silent_after_s
        self.dead_after_s = dead_after_s
        #: How many dead node records to keep for views (oldest forgotten first).
        self.dead_retention = max_nodes if dead_retention is None else dead_retention
        self._nodes: dict[str, NodeRecord] = {}
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._heap: list[tuple[float, str, int]] = []
        self._index = PlacementIndex()
        self._totals = _Totals()
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
            self._index.put(node.node_id, node.allocatable.gpu_model, node.free)
        else:
            self._index.remove(node.node_id)
        self._dirty = True

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

    def _set_state(self, node: NodeRecord, state: NodeState, now: float) -> None:
        node.state = state
        node.state_since = now
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

        Raises :class:`ResourceExhausted` when ``max_nodes`` live nodes are registered (a known live
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
            raise ResourceExhausted(
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
            self._end(node)
            self._schedule(node, now + self.silent_after_s)
            return [NodeReady(node_id, incarnation, joined=True)]
        joined = node.state == DEAD
        changed = node.inventory != inventory
        self._begin(node)
        evicted = self._refit(node, inventory) if changed else ()
        node.inventory = inventory
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
        alloc = inventory.allocatable
        kept: dict[TaskRef, Allocation] = {}
        used = Resources()
        gpus: set[int] = set()
        evicted: list[TaskRef] = []
        for key in sorted(node.allocations):
            a = node.allocations[key]
            total = used + a.resources
            ok = (
                total.cpu_millis <= alloc.cpu_millis
                and total.memory_bytes <= alloc.memory_bytes
                and total.gpus <= alloc.gpus
                and set(a.gpu_indexes) <= valid_gpus
                and not (set(a.gpu_indexes) & gpus)
            )
            if ok:
                kept[key] = a
                used = Resources(total.cpu_millis, total.memory_bytes, total.gpus)
                gpus |= set(a.gpu_indexes)
            else:
                evicted.append(key)
        node.allocations = kept
        node.allocated = used
        node.gpus_used = gpus
        return tuple(evicted)

    def restore(self, inventory: NodeInventory, incarnation: str, *, dead: bool, now: float) -> None:
        """Reload a node record from the store after a restart.

        A node that was alive comes back ``suspect`` with no connection and a grace of
        ``max(silent_after_s, dead_after_s)`` to re-register before it is declared dead.
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
        )
        self._nodes[node.node_id] = node
        if dead:
            self._dead[node.node_id] = None
        self._end(node)
        if not dead:
            self._schedule(node, now + max(self.silent_after_s, self.dead_after_s))

    def report(
        self,
        node_id: str,
        now: float,
        *,
        conn_token: int | None = None,
        usage: NodeUsage | None = None,
        health: NodeHealth | None = None,
    ) -> list[NodeEvent]:
        """A report arrived: refresh liveness (no heap push), apply usage/health if present.

        Reports on a connection that is not the node's live one are ignored. A suspect node whose
        stream stayed open comes back to ready.
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
            node.suspect_why = "its stream ended"
            self._set_state(node, SUSPECT, now)
            self._schedule(node, now + self.dead_after_s)
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
                due = node.last_report + self.silent_after_s
                if due > now:
                    heapq.heappush(heap, (due, node_id, gen))
                    continue
                self._begin(node)
                node.suspect_why = f"no report for {now - node.last_report:.1f}s"
                self._set_state(node, SUSPECT, now)
                self._end(node)
                self._schedule(node, now + self.dead_after_s)
                events.append(NodeSuspect(node_id, node.suspect_why))
            else:  # SUSPECT, and nothing revived it in time
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
        self, node_id: str, key: TaskRef, resources: Resources, gpu_indexes: tuple[int, ...]
    ) -> None:
        """Charge a task's request (and its GPUs) to a node. Raises when it does not fit."""
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} is not registered in sub-domain {self.subdomain_id}")
        if key in node.allocations:
            return
        free = node.free
        if len(gpu_indexes) != resources.gpus:
            raise FailedPrecondition(
                f"task {key} asks for {resources.gpus} GPUs but got indexes {gpu_indexes}"
            )
        if not (
            resources.cpu_millis <= free.cpu_millis
            and resources.memory_bytes <= free.memory_bytes
            and resources.gpus <= free.gpus
        ):
            raise FailedPrecondition(
                f"task {key} ({resources.describe()}) does not fit node {node_id}: free {free.describe()}"
            )
        bad = [g for g in gpu_indexes if g in node.gpus_used or g not in node.inventory.gpu_indexes]
        if bad or len(set(gpu_indexes)) != len(gpu_indexes):
            raise FailedPrecondition(
                f"GPU indexes {gpu_indexes} of task {key} are not free on node {node_id}"
            )
        self._begin(node)
        node.allocations[key] = Allocation(
            Resources(resources.cpu_millis, resources.memory_bytes, resources.gpus), gpu_indexes
        )
        node.allocated = node.allocated + Resources(
            resources.cpu_millis, resources.memory_bytes, resources.gpus
        )
        node.gpus_used.update(gpu_indexes)
        self._end(node)

    def release(self, node_id: str, key: TaskRef) -> bool:
        """Give a task's resources back; False when it held none there."""
        node = self._nodes.get(node_id)
        if node is None or key not in node.allocations:
            return False
        self._begin(node)
        a = node.allocations.pop(key)
        node.allocated = node.allocated - a.resources
        node.gpus_used.difference_update(a.gpu_indexes)
        self._end(node)
        return True

    def place(self, request: Resources) -> Placement | str:
        """Best-fit node and GPU indexes for ``request``, or the reason nothing fits."""
        node_id = self._index.choose(request)
        if node_id is None:
            return reject_reason(
                request,
                self._index.largest(request),
                ready=self._totals.by_state[READY],
                registered=len(self._nodes),
            )
        node = self._nodes[node_id]
        gpus = pick_gpus(node.free_gpu_indexes, node.inventory.nvlink, request.gpus)
        assert gpus is not None, f"index says node {node_id} has {request.gpus} free GPUs"
        return Placement(node_id, gpus)

    # -- summary ---------------------------------------------------------------------------------

    def summary(self) -> Summary:
        """The current summary; recomputes shapes only when something changed since last time."""
        if self._summary is not None and not self._dirty:
            return self._summary
        t = self._totals
        groups: dict[tuple[str, int, int, int], tuple[int, Resources]] = {}
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
            if not node.placeable:
                continue
            f = node.free
            key = (a.gpu_model, f.gpus, bucket(f.cpu_millis), bucket(f.memory_bytes))
            prev = groups.get(key)
            if prev is None:
                groups[key] = (1, f)
            else:
                count, best = prev
                if (f.cpu_millis, f.memory_bytes) > (best.cpu_millis, best.memory_bytes):
                    best = f
                groups[key] = (count + 1, best)
        shapes = tuple(
            NodeShape(gpu_model=k[0], free_gpus=k[1], count=c, best=b) for k, (c, b) in sorted(groups.items())
        )
        self._summary = Summary(
            nodes_total=len(self._nodes),
            nodes_ready=t.by_state[READY],
            nodes_suspect=t.by_state[SUSPECT],
            nodes_dead=t.by_state[DEAD],
            nodes_simulated=t.simulated,
            capacity=Resources(t.cap_cpu, t.cap_mem, t.cap_gpus),
            free=Resources(t.free_cpu, t.free_mem, t.free_gpus),
            shapes=shapes,
            running_tasks=t.running,
            max_nodes=self.max_nodes,
            gpus_by_model={k: v for k, v in sorted(t.gpus_by_model.items()) if v},
            free_gpus_by_model={
                k: v for k, v in sorted(t.free_gpus_by_model.items()) if t.gpus_by_model.get(k)
            },
            largest_node=largest,
            power_draw_w=round(t.power / 10) * 10.0,
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
            for a in node.allocations.values():
                total = total + a.resources
                gpus.extend(a.gpu_indexes)
                assert len(a.gpu_indexes) == a.resources.gpus, f"{node_id}: gpu count mismatch"
            assert (total.cpu_millis, total.memory_bytes, total.gpus) == (
                node.allocated.cpu_millis,
                node.allocated.memory_bytes,
                node.allocated.gpus,
            ), f"{node_id}: allocated {node.allocated} != sum of allocations {total}"
            alloc = node.allocatable
            assert node.allocated.cpu_millis <= alloc.cpu_millis, f"{node_id}: CPU over-allocated"
            assert node.allocated.memory_bytes <= alloc.memory_bytes, f"{node_id}: memory over-allocated"
            assert node.allocated.gpus <= alloc.gpus, f"{node_id}: GPUs over-allocated"
            assert len(gpus) == len(set(gpus)), f"{node_id}: a GPU index is assigned twice: {sorted(gpus)}"
            assert set(gpus) == node.gpus_used, f"{node_id}: gpus_used out of sync"
            assert set(gpus) <= set(node.inventory.gpu_indexes), f"{node_id}: unknown GPU index assigned"
            if node.state == DEAD:
                assert node.conn_token is None, f"{node_id}: dead node holds a connection"
                assert node_id in self._dead
            else:
                assert node_id not in self._dead
                assert (node_id, node.generation) in live_entries, f"{node_id}: no live deadline"
            if node.placeable:
                assert self._index.free(node_id) == node.free, f"{node_id}: index out of date"
            else:
                assert node_id not in self._index, f"{node_id}: not placeable but indexed"
        assert fresh.snapshot() == self._totals.snapshot(), (
            f"aggregates drifted: {self._totals.snapshot()} != {fresh.snapshot()}"
        )
        assert len(self._dead) == self._totals.by_state[DEAD]
        self._index.validate()
