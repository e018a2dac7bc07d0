"""The task table: a pure state machine. Transitions in, effects out.

Keyed by ``(job_id, task_index, attempt)``; each entry knows its node, spec, GPU indexes and last
:class:`TaskStatus`. The table charges and releases allocations in the :class:`NodeRegistry` it is
given, so the two stay consistent and :meth:`TaskTable.validate` can cross-check them.

Effects are returned in the order they must run: :class:`Persist` before the :class:`AckAgent`
that lets an agent forget a terminal state (the protocol's "ack once durable" rule).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from domainos.errors import DomainOSError, FailedPrecondition
from domainos.ids import new_command_id
from domainos.model import TaskProgress, TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.resources import Resources

from ._placement import Placement
from ._registry import NodeRegistry

#: Default grace for stops the sub-domain decides on its own (reconciliation).
RECONCILE_STOP_GRACE_S = 10.0
#: A running task's progress goes up to the master at most this often (a new checkpoint: at once).
PROGRESS_FORWARD_S = 10.0


@dataclass(frozen=True, slots=True)
class StartOnAgent:
    """Send ``StartTask`` to the node's stream."""

    node_id: str
    command_id: str
    spec: TaskSpec
    gpu_indexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StopOnAgent:
    """Send ``StopTask`` to the node's stream."""

    node_id: str
    command_id: str
    key: TaskRef
    grace_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class AckAgent:
    """Send ``AckTasks``: these terminal states are durable; the agent may forget them."""

    node_id: str
    keys: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class Forward:
    """Report this status up to the master (batched in ``TaskUpdates``)."""

    status: TaskStatus


@dataclass(frozen=True, slots=True)
class Persist:
    """Write (or, when ``record`` is None, delete) the store key of one task slot."""

    job_id: str
    task_index: int
    record: dict[str, Any] | None


Effect = StartOnAgent | StopOnAgent | AckAgent | Forward | Persist


def request_problem(r: Resources) -> str:
    """Why a request cannot be placed as asked ("" when it is well formed)."""
    if r.gpu_share < 0 or r.gpu_share > 99 or r.gpu_share_memory < 0:
        return (
            f"a GPU share must be 1..99 percent with memory >= 0, got {r.gpu_share}% "
            f"and {r.gpu_share_memory} bytes"
        )
    if r.gpu_share_memory and not r.gpu_share:
        return f"gpu_share_memory={r.gpu_share_memory} bytes without a gpu_share percent"
    if r.gpu_share and r.gpus:
        return f"asks for {r.gpus} whole GPUs and a {r.gpu_share}% share at once; ask for one or the other"
    return ""


@dataclass(slots=True)
class TaskEntry:
    spec: TaskSpec
    node_id: str
    gpu_indexes: tuple[int, ...]
    status: TaskStatus
    #: Id of the StartTask not yet acknowledged by the agent ("" when none).
    start_command: str = ""
    #: Stopped to drain its node: its final status says so (the master requeues it for free).
    drained: bool = False
    #: When its progress last went up to the master (not stored).
    progress_sent_at: float = 0.0

    @property
    def key(self) -> TaskRef:
        return self.spec.ref

    @property
    def active(self) -> bool:
        return not self.status.state.terminal

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "gpu_indexes": list(self.gpu_indexes),
            "spec": self.spec.to_json(),
            "status": self.status.to_json(),
            **({"drained": True} if self.drained else {}),
        }


class TaskTable:
    """Tasks placed in this sub-domain and not yet acknowledged as terminal by the master."""

    def __init__(
        self,
        subdomain_id: str,
        registry: NodeRegistry,
        *,
        new_id: Callable[[], str] = new_command_id,
    ) -> None:
        self.subdomain_id = subdomain_id
        self.registry = registry
        self._new_id = new_id
        self._entries: dict[TaskRef, TaskEntry] = {}
        self._active_by_node: dict[str, set[TaskRef]] = {}
        #: Job id -> node -> its active tasks there (``distinct_nodes`` keeps a job's tasks apart).
        self._job_nodes: dict[str, Counter[str]] = {}
        self._slots: dict[tuple[str, int], set[int]] = {}
        self._pending_starts: dict[str, TaskRef] = {}
        self._by_state: Counter[TaskState] = Counter()
        #: Placements made (PlaceTask answered ASSIGNED).
        self.placements = 0
        #: Tasks told to move off a draining node; tasks stopped while cut off from the master.
        self.drained = 0
        self.fenced = 0
        #: PlaceTask commands answered REJECTED (nothing fits).
        self.rejections = 0

    # -- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: TaskRef) -> TaskEntry | None:
        return self._entries.get(key)

    def count(self, state: TaskState) -> int:
        return self._by_state[state]

    def counts(self) -> dict[TaskState, int]:
        return {s: n for s, n in self._by_state.items() if n}

    def active_on(self, node_id: str) -> list[TaskRef]:
        return sorted(self._active_by_node.get(node_id, ()))

    def hello_tasks(self) -> list[TaskStatus]:
        """Every task held (running and unacknowledged terminal), for ``Hello``."""
        return [self._entries[k].status for k in sorted(self._entries)]

    def entries(self) -> Iterable[TaskEntry]:
        return self._entries.values()

    def node_of(self, key: TaskRef) -> str | None:
        entry = self._entries.get(key)
        return entry.node_id if entry else None

    # -- internals -------------------------------------------------------------------------------

    def _status(self, spec: TaskSpec, state: TaskState, **kw: Any) -> TaskStatus:
        return TaskStatus(spec.ref, state, subdomain_id=self.subdomain_id, **kw)

    def _persist(self, job_id: str, task_index: int) -> Persist:
        attempts = self._slots.get((job_id, task_index))
        if not attempts:
            return Persist(job_id, task_index, None)
        record = {
            "attempts": {
                str(a): self._entries[TaskRef(job_id, task_index, a)].to_json() for a in sorted(attempts)
            }
        }
        return Persist(job_id, task_index, record)

    def _add(self, entry: TaskEntry) -> None:
        key = entry.key
        self._entries[key] = entry
        self._slots.setdefault((key.job_id, key.task_index), set()).add(key.attempt)
        self._by_state[entry.status.state] += 1
        if entry.active:
            self._active_by_node.setdefault(entry.node_id, set()).add(key)
            self._job_nodes.setdefault(key.job_id, Counter())[entry.node_id] += 1

    def _remove(self, key: TaskRef) -> TaskEntry:
        entry = self._entries.pop(key)
        slot = self._slots[(key.job_id, key.task_index)]
        slot.discard(key.attempt)
        if not slot:
            del self._slots[(key.job_id, key.task_index)]
        self._by_state[entry.status.state] -= 1
        self._deactivate(entry)
        return entry

    def _deactivate(self, entry: TaskEntry) -> None:
        keys = self._active_by_node.get(entry.node_id)
        if keys is not None and entry.key in keys:
            keys.discard(entry.key)
            if not keys:
                del self._active_by_node[entry.node_id]
            nodes = self._job_nodes.get(entry.key.job_id)
            if nodes is not None:
                nodes[entry.node_id] -= 1
                if nodes[entry.node_id] <= 0:
                    del nodes[entry.node_id]
                if not nodes:
                    del self._job_nodes[entry.key.job_id]
        if entry.start_command:
            self._pending_starts.pop(entry.start_command, None)
            entry.start_command = ""

    def _set_status(self, entry: TaskEntry, status: TaskStatus) -> None:
        self._by_state[entry.status.state] -= 1
        self._by_state[status.state] += 1
        entry.status = status
        if status.state.terminal:
            self.registry.release(entry.node_id, entry.key)
            self._deactivate(entry)

    def _finish(self, entry: TaskEntry, state: TaskState, message: str, now: float) -> list[Effect]:
        """Move an active entry to a terminal state the sub-domain decided on."""
        status = dataclasses.replace(
            entry.status, state=state, message=message, finished_at=now, drained=entry.drained
        )
        self._set_status(entry, status)
        return [self._persist(entry.key.job_id, entry.key.task_index), Forward(status)]

    def _start(self, entry: TaskEntry) -> StartOnAgent:
        if entry.start_command:
            self._pending_starts.pop(entry.start_command, None)
        entry.start_command = self._new_id()
        self._pending_starts[entry.start_command] = entry.key
        return StartOnAgent(entry.node_id, entry.start_command, entry.spec, entry.gpu_indexes)

    def _stop(
        self, node_id: str, key: TaskRef, reason: str, grace_s: float = RECONCILE_STOP_GRACE_S
    ) -> StopOnAgent:
        return StopOnAgent(node_id, self._new_id(), key, grace_s, reason)

    def _connected(self, node_id: str) -> bool:
        node = self.registry.get(node_id)
        return node is not None and node.conn_token is not None

    # -- commands from the master ----------------------------------------------------------------

    def place(self, spec: TaskSpec, now: float) -> list[Effect]:
        """``PlaceTask``: choose a node, charge it, start the task there; or answer REJECTED.

        Idempotent: a task already known is re-reported, not placed twice.
        """
        entry = self._entries.get(spec.ref)
        if entry is not None:
            return [Forward(entry.status)]
        choice = self.choose(spec, now)
        if not isinstance(choice, Placement):
            self.rejections += 1
            return [Forward(self._status(spec, TaskState.REJECTED, message=choice, finished_at=now))]
        self.registry.allocate(choice.node_id, spec.ref, spec.resources, choice.gpu_indexes)
        return self._assigned(spec, choice.node_id, choice.gpu_indexes, choice.note)

    def choose(self, spec: TaskSpec, now: float) -> Placement | str:
        """Where ``spec`` would go (nothing charged), or why it cannot go anywhere."""
        problem = request_problem(spec.resources)
        if problem:
            return problem
        group = spec.placement.group
        avoid: Collection[str] = ()
        if spec.placement.distinct_nodes:
            avoid = self._job_nodes.get(spec.ref.job_id, {}).keys()
        return self.registry.place(
            spec.resources,
            spec.placement,
            now=now,
            group_key=f"{spec.ref.job_id}/{group}" if group else "",
            avoid=avoid,
        )

    def _assigned(
        self, spec: TaskSpec, node_id: str, gpu_indexes: tuple[int, ...], note: str
    ) -> list[Effect]:
        status = self._status(
            spec, TaskState.ASSIGNED, node_id=node_id, gpu_indexes=gpu_indexes, message=note
        )
        entry = TaskEntry(spec, node_id, gpu_indexes, status)
        self._add(entry)
        self.placements += 1
        return [self._persist(spec.ref.job_id, spec.ref.task_index), self._start(entry), Forward(status)]

    def adopt_held(self, spec: TaskSpec, node_id: str, gpu_indexes: tuple[int, ...]) -> list[Effect]:
        """A committed gang reservation: its held allocation becomes a placed task, started like a
        ``PlaceTask`` one. Idempotent (a task already known is re-reported)."""
        entry = self._entries.get(spec.ref)
        if entry is not None:
            return [Forward(entry.status)]
        if not self.registry.set_held(node_id, spec.ref, False):
            raise FailedPrecondition(f"task {spec.ref} holds nothing on node {node_id}")
        return self._assigned(spec, node_id, gpu_indexes, "")

    def stop(self, key: TaskRef, *, grace_s: float, reason: str, now: float) -> list[Effect]:
        """``StopTaskCommand``: forward to the node; answer CANCELLED at once when it cannot be reached."""
        entry = self._entries.get(key)
        if entry is None:
            return [
                Forward(
                    TaskStatus(
                        key,
                        TaskState.CANCELLED,
                        message=f"unknown task in sub-domain {self.subdomain_id}: nothing to stop",
                        subdomain_id=self.subdomain_id,
                        finished_at=now,
                    )
                )
            ]
        if not entry.active:
            return [Forward(entry.status)]
        if self._connected(entry.node_id):
            return [self._stop(entry.node_id, key, reason, grace_s)]
        why = f"cancelled ({reason})" if reason else "cancelled"
        return self._finish(entry, TaskState.CANCELLED, f"{why}; node {entry.node_id} is not connected", now)

    def drain(
        self, node_id: str, reason: str, *, grace_s: float, now: float, checkpointable_only: bool = False
    ) -> list[Effect]:
        """Move the node's active tasks off it (``checkpointable_only``: only those that resume
        from a checkpoint): each is stopped, and its final status carries ``drained`` so the
        master queues it again without spending a retry. Tasks already draining are left alone.
        """
        effects: list[Effect] = []
        connected = self._connected(node_id)
        for key in self.active_on(node_id):
            entry = self._entries[key]
            if entry.drained or (checkpointable_only and not entry.spec.checkpointable):
                continue
            entry.drained = True
            self.drained += 1
            if connected:
                effects.append(self._persist(key.job_id, key.task_index))
                effects.append(self._stop(node_id, key, f"draining node {node_id}: {reason}", grace_s))
            else:
                effects += self._finish(
                    entry, TaskState.CANCELLED, f"moved off node {node_id} (not connected): {reason}", now
                )
        return effects

    def fence(self, away_s: float, now: float) -> tuple[list[Effect], float]:
        """Cut off from the master for ``away_s``: stop every active task whose ``fence_after_s``
        has passed (the master is about to run it elsewhere; one copy must run). Each is marked
        drained: should the master come back before it replaced the task, it queues it again
        without spending a retry. Returns the effects and the next ``away_s`` at which there is
        something to fence (``inf``: nothing). O(active tasks), once per threshold crossed."""
        effects: list[Effect] = []
        later = math.inf
        for node_id, keys in list(self._active_by_node.items()):
            connected = self._connected(node_id)
            for key in sorted(keys):
                entry = self._entries[key]
                after = entry.spec.fence_after_s
                if after <= 0 or entry.drained:
                    continue
                if after > away_s:
                    later = min(later, after)
                    continue
                entry.drained = True
                self.fenced += 1
                why = f"sub-domain {self.subdomain_id} cut off from the master for {away_s:.0f}s; the master runs it elsewhere"
                if connected:
                    effects.append(self._persist(key.job_id, key.task_index))
                    effects.append(self._stop(node_id, key, why, RECONCILE_STOP_GRACE_S))
                else:
                    effects += self._finish(entry, TaskState.CANCELLED, why, now)
        return effects, later

    def draining_left(self, node_id: str) -> int:
        """Active tasks on the node not yet told to move."""
        return sum(1 for key in self.active_on(node_id) if not self._entries[key].drained)

    def master_ack(self, keys: Iterable[TaskRef]) -> list[Effect]:
        """``AckTaskStates``: forget acknowledged terminal tasks and delete their store records."""
        slots: set[tuple[str, int]] = set()
        for key in keys:
            entry = self._entries.get(key)
            if entry is None or entry.active:
                continue
            self._remove(key)
            slots.add((key.job_id, key.task_index))
        return [self._persist(j, i) for j, i in sorted(slots)]

    # -- events from agents ----------------------------------------------------------------------

    def agent_status(self, node_id: str, reported: TaskStatus, now: float) -> list[Effect]:
        """A task status in an agent's report (or ``Register``)."""
        key = reported.ref
        entry = self._entries.get(key)
        if entry is None or entry.node_id != node_id:
            if reported.state.terminal:
                return [AckAgent(node_id, (key,))]
            if reported.state in (TaskState.UNSPECIFIED, TaskState.PENDING):
                return []
            return [self._stop(node_id, key, f"task {key} is not expected on node {node_id}")]
        if not entry.active:
            if reported.state.terminal:
                return [AckAgent(node_id, (key,))]
            return [
                self._stop(
                    node_id, key, f"task {key} is already {entry.status.state.label}: {entry.status.message}"
                )
            ]
        if reported.state <= entry.status.state or reported.state in (
            TaskState.UNSPECIFIED,
            TaskState.PENDING,
        ):
            if (
                reported.state == entry.status.state == TaskState.RUNNING
                and reported.progress is not None
                and reported.progress != entry.status.progress
            ):
                return self._progressed(entry, reported.progress, now)
            return []  # a repeat (full report) or a step back: nothing new
        merged = dataclasses.replace(
            reported,
            node_id=node_id,
            subdomain_id=self.subdomain_id,
            gpu_indexes=reported.gpu_indexes or entry.gpu_indexes,
            drained=entry.drained and reported.state.terminal,
        )
        self._set_status(entry, merged)
        if entry.start_command:
            self._pending_starts.pop(entry.start_command, None)
            entry.start_command = ""
        if merged.state.terminal:
            return [self._persist(key.job_id, key.task_index), Forward(merged), AckAgent(node_id, (key,))]
        return [Forward(merged)]

    def _progressed(self, entry: TaskEntry, progress: TaskProgress, now: float) -> list[Effect]:
        """A running task reported progress: kept here (not stored); forwarded at most every
        :data:`PROGRESS_FORWARD_S`, or at once when it is a new checkpoint."""
        old = entry.status.progress
        entry.status = dataclasses.replace(entry.status, progress=progress)
        checkpoint = progress.checkpoint_at > (old.checkpoint_at if old is not None else 0.0)
        if old is not None and not checkpoint and now - entry.progress_sent_at < PROGRESS_FORWARD_S:
            return []
        entry.progress_sent_at = now
        return [Forward(entry.status)]

    def agent_ack(self, node_id: str, command_id: str, ok: bool, error: str, now: float) -> list[Effect]:
        """``CommandAck`` from an agent: a refused ``StartTask`` fails its task."""
        key = self._pending_starts.pop(command_id, None)
        if key is None:
            return []
        entry = self._entries[key]
        entry.start_command = ""
        if ok or not entry.active or entry.node_id != node_id:
            return []
        return self._finish(entry, TaskState.FAILED, f"node {node_id} could not start it: {error}", now)

    def reconcile(
        self,
        node_id: str,
        reported: Iterable[TaskStatus],
        now: float,
        *,
        incarnation: str = "",
        evicted: Iterable[TaskRef] = (),
    ) -> list[Effect]:
        """An agent (re-)registered with ``reported`` tasks: level-triggered reconciliation.

        A reported task not expected on this node is stopped (a terminal one is acked). An
        expected task not reported is started again if it never started (the StartTask may have
        been lost with the old stream), and is ``LOST`` if it was running.
        """
        effects: list[Effect] = []
        for key in evicted:
            entry = self._entries.get(key)
            if entry is not None and entry.active:
                effects += self._finish(
                    entry,
                    TaskState.LOST,
                    f"node {node_id} re-registered with less capacity; the task no longer fits",
                    now,
                )
                effects.append(self._stop(node_id, key, "the node no longer has room for it"))
        seen: set[TaskRef] = set()
        for status in reported:
            seen.add(status.ref)
            effects += self.agent_status(node_id, status, now)
            entry = self._entries.get(status.ref)
            if entry is not None and entry.active and entry.drained and entry.node_id == node_id:
                # Told to move before the reconnect: the stop may have been lost with the stream.
                effects.append(self._stop(node_id, status.ref, f"draining node {node_id}"))
        for key in self.active_on(node_id):
            if key in seen:
                continue
            entry = self._entries[key]
            if entry.status.state == TaskState.ASSIGNED:
                effects.append(self._start(entry))
            else:
                why = f" (agent incarnation {incarnation})" if incarnation else ""
                effects += self._finish(entry, TaskState.LOST, f"node {node_id} no longer runs it{why}", now)
        return effects

    def node_dead(self, node_id: str, why: str, now: float) -> list[Effect]:
        """Every non-terminal task on a dead node becomes ``LOST``."""
        effects: list[Effect] = []
        for key in self.active_on(node_id):
            effects += self._finish(self._entries[key], TaskState.LOST, f"node {node_id} died: {why}", now)
        return effects

    # -- restart ---------------------------------------------------------------------------------

    def restore(self, record: dict[str, Any], now: float) -> list[Effect]:
        """Reload one stored slot after a restart; re-charges allocations on restored nodes.

        A task whose node is unknown or cannot hold it any more becomes ``LOST``.
        """
        effects: list[Effect] = []
        for data in record.get("attempts", {}).values():
            spec = TaskSpec.from_json(data["spec"])
            if spec.ref in self._entries:
                continue
            status = TaskStatus.from_json(data["status"])
            gpus = tuple(int(g) for g in data.get("gpu_indexes", ()))
            entry = TaskEntry(spec, str(data["node_id"]), gpus, status, drained=bool(data.get("drained")))
            problem = ""
            if entry.active:
                node = self.registry.get(entry.node_id)
                if node is None or node.state == "dead":
                    problem = f"node {entry.node_id} was lost while sub-domain {self.subdomain_id} restarted"
                else:
                    try:
                        self.registry.allocate(entry.node_id, spec.ref, spec.resources, gpus)
                    except DomainOSError as exc:  # a conflicting record
                        problem = f"cannot re-adopt after restart: {exc}"
            self._add(entry)
            if problem:
                effects += self._finish(entry, TaskState.LOST, problem, now)
        return effects

    # -- invariants ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check the table against itself and against the registry's allocations."""
        counts: Counter[TaskState] = Counter()
        by_node: dict[str, set[TaskRef]] = {}
        for key, entry in self._entries.items():
            assert key == entry.key == entry.status.ref, f"{key}: key mismatch"
            counts[entry.status.state] += 1
            assert (key.job_id, key.task_index) in self._slots and key.attempt in self._slots[
                (key.job_id, key.task_index)
            ]
            node = self.registry.get(entry.node_id)
            if entry.active:
                by_node.setdefault(entry.node_id, set()).add(key)
                assert node is not None, f"{key}: active on unknown node {entry.node_id}"
                alloc = node.allocations.get(key)
                assert alloc is not None, f"{key}: active but holds no allocation on {entry.node_id}"
                assert not alloc.held, f"{key}: placed but its allocation is still a reservation's hold"
                assert alloc.gpu_indexes == entry.gpu_indexes, f"{key}: GPU indexes differ from the registry"
            else:
                assert node is None or key not in node.allocations, f"{key}: terminal but still allocated"
                assert not entry.start_command, f"{key}: terminal with a pending start"
            if entry.start_command:
                assert self._pending_starts.get(entry.start_command) == key
        assert +counts == +self._by_state, f"state counts drifted: {self._by_state} != {counts}"
        assert by_node == self._active_by_node, "per-node index drifted"
        job_nodes: dict[str, Counter[str]] = {}
        for node_id, keys in by_node.items():
            for key in keys:
                job_nodes.setdefault(key.job_id, Counter())[node_id] += 1
        assert job_nodes == self._job_nodes, "per-job node index drifted"
        assert sum(len(v) for v in self._slots.values()) == len(self._entries)
        for command, key in self._pending_starts.items():
            assert self._entries[key].start_command == command
        for node in self.registry:
            for key, alloc in node.allocations.items():
                if alloc.held:
                    continue  # a gang reservation's hold: the reservations check it
                e = self._entries.get(key)
                assert e is not None and e.active and e.node_id == node.node_id, (
                    f"node {node.node_id} holds an allocation for {key} that no active task owns"
                )
        self.registry.validate()
