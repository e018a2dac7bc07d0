"""The summary simulator: many simulated sub-domains in one process, each a real master client.

A simulated sub-domain stands for ``nodes`` identical nodes (one :class:`NodeInventory` template,
e.g. 8 × H100) without any agent: it speaks the real sub-domain → master protocol
(``SubDomainGateway.Connect``) through the real upstream client (:class:`~sub_domain._upstream.Upstream`:
Hello and Welcome, batched ``TaskUpdates``, a ``SummaryReport`` when the summary changed at the
master's ``summary_interval_s`` with ``placements_applied``, reconnects with backoff), so a real
master sees what it would see from real sub-domains. Operators use it for capacity planning of
the master (``domainctl sim-subdomains``); the federation benchmark uses it to reach 100
sub-domains × 10,000 nodes on one machine.

Capacity is accounted honestly on an aggregate model: every node has an index and a state
``(free GPU indexes, free CPU, free memory)``; nodes in the same state are kept together, so a
placement costs O(distinct states) (a handful under a steady mix), never O(nodes), and the
summary is built from the states with the real sub-domain's shape grouping (``_registry.bucket``,
``_registry._shapes``): free GPUs by shape, with the largest free NVLink domain. Placement is the
real best fit (least leftover GPUs, then least leftover CPU) and takes GPU indexes with the real
``pick_gpus`` / ``pick_gpus_in_domain``; a task that fits nowhere is answered ``REJECTED`` with the
real reason text (``reject_reason``): that is a mis-dispatch, and the master places it again.

What a simulated task does: ``PlaceTask`` (alone or in a ``PlaceTasks`` batch) is RUNNING at once,
then SUCCEEDED (exit 0) or FAILED (exit ``DOMAINOS_SIM_EXIT``) after ``DOMAINOS_SIM_DURATION``
seconds of its environment (the variables ``domainctl sim``'s simulated agents read; default
:attr:`SubDomainFleet.default_duration_s`).
``StopTask`` makes it CANCELLED. Terminal states are kept until the master acknowledges them and
re-sent in every Hello. Gang reservations are supported: ``ReserveTasks`` holds nodes for every
task at once (largest first) or refuses holding nothing, ``CommitReservation`` starts the held
tasks, ``ReleaseReservation`` drops the hold (or stops a committed gang's tasks), a hold expires
silently after ``hold_s``; replies are idempotent by reservation id. ``ListNodes`` answers a
synthetic page (one view per node index); ``FetchTaskLog`` a one-line chunk.

Not simulated (refused or left out, never faked): GPU shares (a share request is REJECTED saying
so, and summaries carry no share slots), blocks, dataset shards (no node holds any: a task in its
locality wait is REJECTED with the real "waiting for a node holding" reason), node failures.
Labels are the template's, on every node.

Layering: this module imports only ``domainos`` and ``sub_domain``; callers resolve a hardware
profile into the template (``domainctl`` and the benchmark use ``node_agent._sim.profile`` and
``SimulatedHardware``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from domainos.api.v1 import common_pb2, subdomain_pb2
from domainos.clock import Clock, SystemClock
from domainos.errors import ConfigError, DomainOSError, FailedPrecondition, InvalidArgument
from domainos.ids import new_incarnation
from domainos.model import NodeInventory, TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.resources import Resources
from domainos.rpc import TLSFiles

from ._manager import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from ._placement import pick_gpus, pick_gpus_in_domain, reject_reason
from ._registry import MAX_SUMMARY_LABELS, Summary, _shapes, bucket
from ._reservations import (
    ACCEPTED,
    COMMITTED,
    DEFAULT_MAX_TOMBSTONES,
    MAX_HOLD_S,
    MAX_TASKS_PER_RESERVATION,
    REFUSED,
    ReplyMaster,
    TaskPlacement,
    reservation_specs,
)
from ._tasks import request_problem
from ._upstream import Upstream

log = logging.getLogger(__name__)

#: Task environment variables read by the simulated runner (the same as ``domainctl sim``'s agents).
DURATION_ENV = "DOMAINOS_SIM_DURATION"
EXIT_ENV = "DOMAINOS_SIM_EXIT"
#: Simulated per-GPU power draw, idle and busy (the simulated agents' figures).
IDLE_GPU_W = 70.0
BUSY_GPU_W = 500.0
#: The sub-domain's own lower bound of the summary interval (the master's Welcome sets it).
MIN_SUMMARY_INTERVAL_S = 0.1
#: Memoised GPU picks per (free GPUs, count, one NVLink domain), at most.
MAX_PICKS = 4096
#: Committed reservations remembered for Release and Hello (oldest forgotten first).
MAX_COMMITTED = 10_000

_Key = tuple[tuple[int, ...], int, int]  # (free GPU indexes, free CPU millis, free memory bytes)
#: ``on_place(subdomain_id, spec, unix time the PlaceTask arrived, accepted)``.
PlaceHook = Callable[[str, TaskSpec, float, bool], None]


def task_outcome(spec: TaskSpec, default_duration_s: float) -> tuple[float, int]:
    """Duration (s) and exit code of a simulated task, from its environment."""
    duration, exit_code = default_duration_s, 0
    raw = spec.env.get(DURATION_ENV)
    if raw is not None:
        try:
            duration = float(raw)
        except ValueError:
            duration = -1.0
        if not (math.isfinite(duration) and duration >= 0):
            raise InvalidArgument(f"{DURATION_ENV} must be seconds >= 0, got {raw!r}", field="env")
    raw = spec.env.get(EXIT_ENV)
    if raw is not None:
        try:
            exit_code = int(raw)
        except ValueError:
            raise InvalidArgument(f"{EXIT_ENV} must be an integer, got {raw!r}", field="env") from None
    return duration, exit_code


# ----------------------------------------------------------------------------- capacity


class NodeStates:
    """``count`` identical nodes as groups of equal free state; placement is best fit over the groups."""

    def __init__(self, template: NodeInventory, count: int) -> None:
        a = template.allocatable
        self.allocatable = a
        self.model = a.gpu_model
        self.count = count
        self._nvlink = template.nvlink
        self._domain_of = {g.index: g.nvlink_domain for g in template.gpus}
        full: _Key = (template.gpu_indexes, a.cpu_millis, a.memory_bytes)
        self._of: list[_Key] = [full] * count
        self._members: dict[_Key, dict[int, None]] = {full: dict.fromkeys(range(count))} if count else {}
        self.tasks_on: list[int] = [0] * count
        self.free = Resources(a.cpu_millis * count, a.memory_bytes * count, a.gpus * count)
        self._picks: dict[tuple[tuple[int, ...], int, bool], tuple[int, ...] | None] = {}

    def __len__(self) -> int:
        """Distinct states."""
        return len(self._members)

    def state(self, node: int) -> _Key:
        return self._of[node]

    def free_nvlink(self, gpus: tuple[int, ...]) -> int:
        """Most free GPUs inside one NVLink domain."""
        return max(Counter(self._domain_of.get(g, g) for g in gpus).values(), default=0)

    def _pick(self, free: tuple[int, ...], n: int, one_domain: bool) -> tuple[int, ...] | None:
        key = (free, n, one_domain)
        if key not in self._picks:
            if len(self._picks) >= MAX_PICKS:  # many-GPU nodes: bound the memo, do not grow it
                self._picks.clear()
            self._picks[key] = (
                pick_gpus_in_domain(free, self._domain_of, self._nvlink, n)
                if one_domain
                else pick_gpus(free, self._nvlink, n)
            )
        return self._picks[key]

    def fit(self, request: Resources, one_domain: bool) -> tuple[int, tuple[int, ...]] | None:
        """Best fit (least leftover GPUs, then least leftover CPU: the sub-domain's order): a node
        and its GPU indexes, or None."""
        best: tuple[tuple[int, int], _Key] | None = None
        n = request.gpus
        one_domain = one_domain and n > 1
        for key in self._members:
            gpus, cpu, mem = key
            if cpu < request.cpu_millis or mem < request.memory_bytes or len(gpus) < n:
                continue
            rank = (len(gpus) - n, cpu - request.cpu_millis)
            if best is not None and rank >= best[0]:
                continue
            if n and self._pick(gpus, n, one_domain) is None:
                continue
            best = (rank, key)
        if best is None:
            return None
        key = best[1]
        picked = self._pick(key[0], n, one_domain) if n else ()
        assert picked is not None
        return next(iter(self._members[key])), picked

    def largest(self) -> Resources | None:
        """The roomiest free node (for reason texts), None without nodes."""
        best = max(self._members, key=lambda k: (len(k[0]), k[1], k[2]), default=None)
        return None if best is None else Resources(best[1], best[2], len(best[0]), self.model)

    def _move(self, node: int, new: _Key) -> None:
        old = self._of[node]
        members = self._members[old]
        del members[node]
        if not members:
            del self._members[old]
        group = self._members.get(new)
        if group is None:
            group = self._members[new] = {}
        group[node] = None
        self._of[node] = new

    def take(self, node: int, request: Resources, gpus: tuple[int, ...]) -> None:
        free, cpu, mem = self._of[node]
        self._move(
            node,
            (tuple(g for g in free if g not in gpus), cpu - request.cpu_millis, mem - request.memory_bytes),
        )
        self.tasks_on[node] += 1
        self.free = Resources(
            self.free.cpu_millis - request.cpu_millis,
            self.free.memory_bytes - request.memory_bytes,
            self.free.gpus - len(gpus),
        )

    def give(self, node: int, request: Resources, gpus: tuple[int, ...]) -> None:
        free, cpu, mem = self._of[node]
        self._move(node, (tuple(sorted(free + gpus)), cpu + request.cpu_millis, mem + request.memory_bytes))
        self.tasks_on[node] -= 1
        self.free = Resources(
            self.free.cpu_millis + request.cpu_millis,
            self.free.memory_bytes + request.memory_bytes,
            self.free.gpus + len(gpus),
        )

    def shapes(self) -> tuple[Any, ...]:
        """The summary's shapes, grouped exactly as the sub-domain's registry groups nodes."""
        groups: dict[tuple[str, int, int, int, int], tuple[int, Resources]] = {}
        for (gpus, cpu, mem), members in self._members.items():
            free = Resources(cpu, mem, len(gpus), self.model)
            key = (self.model, len(gpus), self.free_nvlink(gpus), bucket(cpu), bucket(mem))
            prev = groups.get(key)
            if prev is None:
                groups[key] = (len(members), free)
            else:
                best = free if (cpu, mem) > (prev[1].cpu_millis, prev[1].memory_bytes) else prev[1]
                groups[key] = (prev[0] + len(members), best)
        return _shapes(groups)


# ----------------------------------------------------------------------------- one sub-domain


@dataclass(slots=True)
class _Task:
    spec: TaskSpec
    node: int
    gpus: tuple[int, ...]
    status: TaskStatus
    exit_code: int = 0
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Reservation:
    rid: str
    tasks: list[_Task]
    placements: tuple[TaskPlacement, ...]
    hold_s: float
    timer: asyncio.TimerHandle | None = None


class SimSubDomain:
    """One simulated sub-domain: its upstream stream, its nodes' states, its tasks and holds."""

    def __init__(self, fleet: SubDomainFleet, subdomain_id: str, region: str) -> None:
        self.fleet = fleet
        self.id = subdomain_id
        self.region = region
        self.incarnation = new_incarnation()
        self.nodes = NodeStates(fleet.template, fleet.nodes)
        self._tasks: dict[TaskRef, _Task] = {}
        self._running_gpus = 0
        self._running = 0
        self._live: dict[str, _Reservation] = {}
        self._held_refs: dict[TaskRef, str] = {}
        self._committed: OrderedDict[str, _Reservation] = OrderedDict()
        self._tombs: OrderedDict[str, ReplyMaster] = OrderedDict()
        self._summary: Summary | None = None
        self.upstream = self._new_upstream()
        self._runner: asyncio.Task[None] | None = None
        # counters
        self.placed = 0
        self.rejected = 0
        self.reservations_accepted = 0
        self.reservations_refused = 0
        self.reservations_committed = 0
        self.reservations_expired = 0

    # ------------------------------------------------------------------ queries

    @property
    def connected(self) -> bool:
        return self.upstream.connected

    @property
    def running(self) -> int:
        return self._running

    @property
    def held(self) -> int:
        """Gang reservations held, not yet committed."""
        return len(self._live)

    @property
    def tasks(self) -> Mapping[TaskRef, TaskStatus]:
        """Every task held (running, and terminal ones the master has not acknowledged)."""
        return {ref: t.status for ref, t in self._tasks.items()}

    def node_id(self, node: int) -> str:
        return f"{self.id}-n{node:05d}"

    # ------------------------------------------------------------------ lifecycle

    def _new_upstream(self) -> Upstream:
        fleet = self.fleet
        return Upstream(
            self,
            fleet.master,
            incarnation=self.incarnation,
            summary_interval_s=fleet.summary_interval_s,
            tls=fleet.tls_for(self.id) if fleet.tls_for is not None else None,
        )

    def start(self) -> None:
        """Open the stream (its certificate files are looked up now: they may be issued after the
        fleet was made)."""
        if self._runner is None or self._runner.done():
            self.upstream = self._new_upstream()
            self._runner = asyncio.create_task(self.upstream.run(), name=f"sim-subdomain-{self.id}")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for t in self._tasks.values():
            if t.timer is not None:
                t.timer.cancel()
        for r in self._live.values():
            if r.timer is not None:
                r.timer.cancel()

    # ------------------------------------------------------------------ UpstreamOwner

    def summary(self) -> Summary:
        """The current summary (rebuilt from the node states after a change, O(states))."""
        if self._summary is not None:
            return self._summary
        n = self.nodes
        a = n.allocatable
        labels = sorted(f"{k}={v}" for k, v in self.fleet.template.labels.items())[:MAX_SUMMARY_LABELS]
        gpus = a.gpus * n.count
        self._summary = Summary(
            nodes_total=n.count,
            nodes_ready=n.count,
            nodes_suspect=0,
            nodes_dead=0,
            nodes_simulated=n.count,
            capacity=Resources(a.cpu_millis * n.count, a.memory_bytes * n.count, gpus),
            free=n.free,
            shapes=n.shapes() if n.count else (),
            running_tasks=self._running,
            max_nodes=n.count,
            gpus_by_model={a.gpu_model: gpus} if gpus else {},
            free_gpus_by_model={a.gpu_model: n.free.gpus} if gpus else {},
            largest_node=a if n.count else Resources(),
            power_draw_w=round(
                (IDLE_GPU_W * (gpus - self._running_gpus) + BUSY_GPU_W * self._running_gpus) / 10
            )
            * 10.0,
            label_nodes={k: n.count for k in labels} if n.count else {},
            reservations_held=len(self._live),
        )
        return self._summary

    def build_hello(self, summary: Summary) -> Any:
        states = [subdomain_pb2.ReservationState(reservation_id=rid) for rid in self._live]
        states += [
            subdomain_pb2.ReservationState(reservation_id=rid, committed=True) for rid in self._committed
        ]
        return subdomain_pb2.Hello(
            subdomain_id=self.id,
            region=self.region,
            incarnation=self.incarnation,
            address="",
            max_nodes=self.nodes.count,
            tasks=[self._tasks[k].status.to_proto() for k in sorted(self._tasks)],
            summary=summary.to_proto(),
            reservations=states,
        )

    def master_lost(self) -> None:
        """Uncommitted holds go with the stream (as in the real sub-domain)."""
        for r in list(self._live.values()):
            self._drop_hold(r)

    async def handle_master_command(self, command: Any) -> None:
        kind = command.WhichOneof("body")
        try:
            if kind == "place_task":
                await self._place(command.place_task)
            elif kind == "place_tasks":  # a batch: each as if alone, acked only when refused
                for place in command.place_tasks.tasks:
                    try:
                        await self._place(place, ack=False)
                    except DomainOSError as exc:
                        await self._ack(place.command_id, False, str(exc))
            elif kind == "stop_task":
                await self._stop(command.stop_task)
            elif kind == "ack_tasks":
                self._forget(command.ack_tasks)
            elif kind == "list_nodes":
                await self._list_nodes(command.list_nodes)
            elif kind == "fetch_log":
                await self._fetch_log(command.fetch_log)
            elif kind == "reserve":
                await self._reply(self._reserve(command.reserve))
            elif kind == "commit":
                await self._reply(self._commit(command.commit.reservation_id))
            elif kind == "release":
                self._release(command.release.reservation_id, command.release.reason)
            elif kind != "welcome":
                log.warning("sim sub-domain %s: ignoring an unknown master command %r", self.id, kind)
        except DomainOSError as exc:
            body = getattr(command, kind, None) if kind else None
            await self._ack(str(getattr(body, "command_id", "")), False, str(exc))

    # ------------------------------------------------------------------ helpers

    def _changed(self) -> None:
        self._summary = None

    def _forward(self, status: TaskStatus) -> None:
        self.upstream.forward(status)

    async def _ack(self, command_id: str, ok: bool = True, error: str = "") -> None:
        if command_id:
            await self.upstream.send(
                subdomain_pb2.SubDomainMessage(
                    ack=common_pb2.CommandAck(command_id=command_id, ok=ok, error=error)
                )
            )

    async def _reply(self, reply: ReplyMaster | None) -> None:
        if reply is not None:
            await self.upstream.send(subdomain_pb2.SubDomainMessage(reservation=reply.to_proto()))

    def _choose(self, spec: TaskSpec, now: float) -> tuple[int, tuple[int, ...]] | str:
        """A node and GPU indexes for ``spec``, or why nothing fits (the sub-domain's words)."""
        r = spec.resources
        problem = request_problem(r)
        if problem:
            return problem
        n = self.nodes.count
        if r.gpus == 0 and r.gpu_share > 0:
            return (
                f"GPU shares are not simulated: simulated sub-domain {self.id} has no partly used "
                f"cards; ask for whole GPUs"
            )
        c = spec.placement
        if r.gpus:
            model = self.nodes.model
            excluded = set(c.exclude_gpu_models)
            if not model or (r.gpu_model and model != r.gpu_model) or model in excluded:
                excl = f" (excluding {', '.join(sorted(excluded))})" if excluded else ""
                return (
                    f"no ready node has {r.describe()} free; no ready node with {r.gpu_model or 'any'} "
                    f"GPUs{excl} ({n} ready)"
                )
        labels = self.fleet.template.labels
        if any(labels.get(k) != v for k, v in c.node_selector.items()):
            sel = ",".join(f"{k}={v}" for k, v in sorted(c.node_selector.items()))
            return f"no ready node with labels {sel} ({n} placeable nodes, none carries them all)"
        if c.dataset and now < c.submitted_at + c.locality_wait_s:
            left = c.submitted_at + c.locality_wait_s - now
            return (
                f"waiting for a node holding {c.dataset} shard {c.shard} ({left:.0f} s left); "
                f"nodes holding it: 0, none with room for {r.describe()}"
            )
        fit = self.nodes.fit(r, c.one_nvlink_domain)
        if fit is None:
            return reject_reason(r, self.nodes.largest(), ready=n, registered=n)
        return fit

    def _take(self, spec: TaskSpec, node: int, gpus: tuple[int, ...], state: TaskState) -> _Task:
        self.nodes.take(node, spec.resources, gpus)
        self._changed()
        status = TaskStatus(
            spec.ref, state, node_id=self.node_id(node), subdomain_id=self.id, gpu_indexes=gpus
        )
        return _Task(spec, node, gpus, status)

    def _start(self, task: _Task) -> None:
        """Run a placed (or committed) task: RUNNING now, its outcome after its duration.

        A malformed ``DOMAINOS_SIM_*`` variable fails the task at once (the simulated agent refuses
        to start it) and gives its capacity back.
        """
        self._tasks[task.spec.ref] = task
        now = self.fleet.clock.time()
        try:
            duration, task.exit_code = task_outcome(task.spec, self.fleet.default_duration_s)
        except InvalidArgument as exc:
            self.nodes.give(task.node, task.spec.resources, task.gpus)
            self._changed()
            task.status = dataclasses.replace(
                task.status, state=TaskState.FAILED, message=f"invalid StartTask: {exc}", finished_at=now
            )
            self._forward(task.status)
            return
        task.status = dataclasses.replace(
            task.status,
            state=TaskState.RUNNING,
            started_at=now,
            message=f"simulated: runs {duration:g}s, exits {task.exit_code}",
        )
        self._running += 1
        self._running_gpus += len(task.gpus)
        self._changed()
        self._forward(task.status)
        task.timer = asyncio.get_running_loop().call_later(duration, self._finish, task.spec.ref, task.status)

    def _end(self, task: _Task, state: TaskState, message: str) -> None:
        """A running task ends: its capacity comes back and its terminal state goes up."""
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        self.nodes.give(task.node, task.spec.resources, task.gpus)
        self._running -= 1
        self._running_gpus -= len(task.gpus)
        self._changed()
        task.status = dataclasses.replace(
            task.status,
            state=state,
            exit_code=task.exit_code if state is not TaskState.CANCELLED else 0,
            message=message,
            finished_at=self.fleet.clock.time(),
        )
        self._forward(task.status)

    def _finish(self, ref: TaskRef, started: TaskStatus) -> None:
        task = self._tasks.get(ref)
        if task is None or task.status is not started:
            return
        task.timer = None
        state = TaskState.SUCCEEDED if task.exit_code == 0 else TaskState.FAILED
        self._end(task, state, f"simulated: exited {task.exit_code}")

    # ------------------------------------------------------------------ commands

    async def _place(self, cmd: Any, *, ack: bool = True) -> None:
        arrived = self.fleet.clock.time()
        spec = TaskSpec.from_proto(cmd.spec)
        holder = self._held_refs.get(spec.ref)
        if holder:
            raise FailedPrecondition(
                f"task {spec.ref} is held by gang reservation {holder}; commit or release it instead"
            )
        known = self._tasks.get(spec.ref)
        if known is not None:
            self._forward(known.status)
        else:
            choice = self._choose(spec, arrived)
            if isinstance(choice, str):
                self.rejected += 1
                self._forward(
                    TaskStatus(
                        spec.ref,
                        TaskState.REJECTED,
                        message=choice,
                        subdomain_id=self.id,
                        finished_at=arrived,
                    )
                )
            else:
                self.placed += 1
                self._start(self._take(spec, choice[0], choice[1], TaskState.ASSIGNED))
            if self.fleet.on_place is not None:
                self.fleet.on_place(self.id, spec, arrived, not isinstance(choice, str))
        if ack:
            await self._ack(cmd.command_id)

    async def _stop(self, cmd: Any) -> None:
        ref = TaskRef.from_proto(cmd.task)
        reason = cmd.reason or "stopped by the master"
        task = self._tasks.get(ref)
        if task is None:
            self._forward(
                TaskStatus(
                    ref,
                    TaskState.CANCELLED,
                    message=f"unknown task in sub-domain {self.id}: nothing to stop",
                    subdomain_id=self.id,
                    finished_at=self.fleet.clock.time(),
                )
            )
        elif task.status.terminal:
            self._forward(task.status)
        else:
            self._end(task, TaskState.CANCELLED, f"simulated: {reason}")
        await self._ack(cmd.command_id)

    def _forget(self, msg: Any) -> None:
        """``AckTaskStates``: forget acknowledged terminal tasks."""
        for r in msg.tasks:
            with contextlib.suppress(InvalidArgument):
                ref = TaskRef.from_proto(r)
                task = self._tasks.get(ref)
                if task is not None and task.status.terminal:
                    del self._tasks[ref]

    async def _list_nodes(self, cmd: Any) -> None:
        """A synthetic page: one view per node index, with its free resources and task count."""
        size = min(cmd.page_size if cmd.page_size > 0 else DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        start = int(cmd.page_token) if cmd.page_token.isdigit() else 0
        end = min(start + size, self.nodes.count)
        template = self.fleet.template
        now = self.fleet.clock.time()
        views = []
        for i in range(start, end):
            gpus, cpu, mem = self.nodes.state(i)
            node_id = self.node_id(i)
            views.append(
                common_pb2.NodeView(
                    inventory=dataclasses.replace(template, node_id=node_id, hostname=node_id).to_proto(),
                    state="ready",
                    free=Resources(cpu, mem, len(gpus), self.nodes.model).to_proto(),
                    running_tasks=self.nodes.tasks_on[i],
                    subdomain_id=self.id,
                    region=self.region,
                    last_report_at=now,
                    incarnation=self.incarnation,
                )
            )
        reply = subdomain_pb2.NodeListReply(
            request_id=cmd.request_id, nodes=views, next_page_token=str(end) if end < self.nodes.count else ""
        )
        await self.upstream.send(subdomain_pb2.SubDomainMessage(node_list=reply))

    async def _fetch_log(self, cmd: Any) -> None:
        ref = TaskRef.from_proto(cmd.request.task) if cmd.request.HasField("task") else None
        if ref is not None and ref in self._tasks:
            chunk = common_pb2.LogChunk(data=b"simulated task: no output\n", eof=True)
        else:
            chunk = common_pb2.LogChunk(error=f"no node known for this task in sub-domain {self.id}")
        reply = common_pb2.LogReply(request_id=cmd.request_id, chunk=chunk)
        await self.upstream.send(subdomain_pb2.SubDomainMessage(log_reply=reply))

    # ------------------------------------------------------------------ gang reservations

    def _tomb(self, rid: str, reply: ReplyMaster) -> None:
        self._tombs[rid] = reply
        self._tombs.move_to_end(rid)
        while len(self._tombs) > DEFAULT_MAX_TOMBSTONES:
            self._tombs.popitem(last=False)

    def _refuse(self, rid: str, reason: str) -> ReplyMaster:
        reply = ReplyMaster(rid, REFUSED, reason)
        self.reservations_refused += 1
        self._tomb(rid, reply)
        return reply

    def _check(self, rid: str, specs: list[TaskSpec], hold_s: float) -> str:
        """Why a Reserve is malformed ("" when it is not): the sub-domain's checks and words."""
        if not rid:
            return "a reservation needs an id"
        if not specs:
            return f"reservation {rid} has no tasks"
        if len(specs) > MAX_TASKS_PER_RESERVATION:
            return f"reservation {rid} has {len(specs)} tasks; at most {MAX_TASKS_PER_RESERVATION}"
        if not (math.isfinite(hold_s) and 0 < hold_s <= MAX_HOLD_S):
            return f"hold_s must be > 0 and at most {MAX_HOLD_S:.0f} s, got {hold_s}"
        seen: set[TaskRef] = set()
        for s in specs:
            if s.ref in seen:
                return f"task {s.ref} appears twice in reservation {rid}"
            seen.add(s.ref)
            if s.ref in self._tasks:
                return f"task {s.ref} is already placed in sub-domain {self.id}"
            other = self._held_refs.get(s.ref)
            if other is not None:
                return f"task {s.ref} is already held by reservation {other}"
        return ""

    def _reserve(self, cmd: Any) -> ReplyMaster:
        """Hold a node for every task (largest first) or refuse holding nothing."""
        rid = cmd.reservation_id
        live = self._live.get(rid) or self._committed.get(rid)
        if live is not None:
            return ReplyMaster(rid, ACCEPTED, placements=live.placements)
        tomb = self._tombs.get(rid)
        if tomb is not None:
            return tomb
        try:
            specs = reservation_specs(cmd)
        except InvalidArgument as exc:
            return self._refuse(rid, str(exc))
        problem = self._check(rid, specs, cmd.hold_s)
        if problem:
            return self._refuse(rid, problem)
        wall = self.fleet.clock.time()
        held: list[_Task] = []

        def size(s: TaskSpec) -> tuple[int, int, int, int]:
            r = s.resources
            return (-r.gpus, -r.cpu_millis, -r.memory_bytes, s.ref.task_index)

        for spec in sorted(specs, key=size):
            choice = self._choose(spec, wall)
            if isinstance(choice, str):
                for t in held:
                    self.nodes.give(t.node, t.spec.resources, t.gpus)
                self._changed()
                return self._refuse(
                    rid,
                    f"task {spec.ref.task_index} ({spec.resources.describe()}) does not fit: {choice} "
                    f"({len(held)} of {len(specs)} tasks of reservation {rid} had been placed; none is held)",
                )
            if not spec.reservation_id:
                spec = dataclasses.replace(spec, reservation_id=rid)
            held.append(self._take(spec, choice[0], choice[1], TaskState.ASSIGNED))
        held.sort(key=lambda t: t.spec.ref.task_index)
        placements = tuple(TaskPlacement(t.spec.ref.task_index, t.status.node_id, "") for t in held)
        r = _Reservation(rid, held, placements, cmd.hold_s)
        r.timer = asyncio.get_running_loop().call_later(cmd.hold_s, self._expire, rid)
        self._live[rid] = r
        for t in held:
            self._held_refs[t.spec.ref] = rid
        self.reservations_accepted += 1
        return ReplyMaster(rid, ACCEPTED, placements=placements)

    def _drop_hold(self, r: _Reservation) -> None:
        if r.timer is not None:
            r.timer.cancel()
        del self._live[r.rid]
        for t in r.tasks:
            self._held_refs.pop(t.spec.ref, None)
            self.nodes.give(t.node, t.spec.resources, t.gpus)
        self._changed()

    def _expire(self, rid: str) -> None:
        """A hold not committed in time is dropped silently; a later Commit is refused."""
        r = self._live.get(rid)
        if r is None:
            return
        r.timer = None
        self._drop_hold(r)
        self.reservations_expired += 1
        reason = f"expired: the hold of {r.hold_s:.1f} s ran out before the Commit arrived"
        self._tomb(rid, ReplyMaster(rid, REFUSED, reason, True))

    def _commit(self, rid: str) -> ReplyMaster:
        r = self._live.pop(rid, None)
        if r is None:
            if rid in self._committed:
                return ReplyMaster(rid, COMMITTED, placements=self._committed[rid].placements)
            tomb = self._tombs.get(rid)
            if tomb is None:
                return ReplyMaster(rid, REFUSED, f"unknown reservation {rid} in sub-domain {self.id}", True)
            if not tomb.expired:
                return ReplyMaster(rid, REFUSED, f"the reservation was refused: {tomb.reason}", True)
            return tomb
        if r.timer is not None:
            r.timer.cancel()
            r.timer = None
        for t in r.tasks:
            self._held_refs.pop(t.spec.ref, None)
            self._start(t)
        self._committed[rid] = r
        while len(self._committed) > MAX_COMMITTED:
            self._committed.popitem(last=False)
        self.reservations_committed += 1
        return ReplyMaster(rid, COMMITTED, placements=r.placements)

    def _release(self, rid: str, reason: str) -> None:
        """Drop a hold, or stop a committed reservation's tasks; no reply (as the proto says)."""
        why = reason or "released by the master"
        r = self._live.get(rid)
        if r is not None:
            self._drop_hold(r)
        committed = self._committed.pop(rid, None)
        if committed is not None:
            for t in committed.tasks:
                task = self._tasks.get(t.spec.ref)
                if task is not None and not task.status.terminal:
                    self._end(task, TaskState.CANCELLED, f"simulated: {why}")
        self._tomb(rid, ReplyMaster(rid, REFUSED, f"released: {why}", True))


# ----------------------------------------------------------------------------- the fleet


@dataclass(frozen=True, slots=True)
class SubDomainFleetStats:
    """One line of progress (``domainctl sim-subdomains`` prints it every second)."""

    subdomains: int
    connected: int
    nodes: int
    tasks_running: int
    placed: int
    rejected: int
    reservations_held: int
    reservations_committed: int
    reservations_refused: int

    def line(self) -> str:
        return (
            f"{self.connected}/{self.subdomains} sub-domains connected ({self.nodes} nodes), "
            f"{self.tasks_running} tasks running, {self.placed} placed, {self.rejected} rejected, "
            f"reservations: {self.reservations_held} held, {self.reservations_committed} committed, "
            f"{self.reservations_refused} refused"
        )


class SubDomainFleet:
    """M simulated sub-domains of N nodes each in this process, on one asyncio loop.

    ``async with SubDomainFleet(...) as fleet:`` or :meth:`start` / :meth:`shutdown`. Sub-domain
    ids are ``<prefix>-<i>`` (zero-padded), in regions ``<prefix>-region-<k>`` (k = i mod
    ``regions``). ``template``: the inventory every node has (its node id is ignored).
    ``tls_for(subdomain_id)``: that sub-domain's certificate files (role ``subdomain``), or None
    for plaintext; asked when the sub-domain starts. ``on_place`` is called for every placement
    handled (``PlaceTask``, or one of a ``PlaceTasks`` batch; the benchmark measures dispatch
    latency with it).
    """

    def __init__(
        self,
        master: str,
        subdomains: int,
        nodes: int,
        template: NodeInventory,
        *,
        prefix: str = "simsd",
        regions: int = 1,
        summary_interval_s: float = MIN_SUMMARY_INTERVAL_S,
        default_duration_s: float = 1.0,
        tls_for: Callable[[str], TLSFiles | None] | None = None,
        on_place: PlaceHook | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not master:
            raise ConfigError("the master's address is required", field="master")
        if subdomains < 1:
            raise ConfigError(f"must be 1 or more, got {subdomains}", field="subdomains")
        if nodes < 0:
            raise ConfigError(f"must be 0 or more, got {nodes}", field="nodes")
        if not 1 <= regions <= subdomains:
            raise ConfigError(
                f"must be between 1 and {subdomains} (sub-domains), got {regions}", field="regions"
            )
        if not (math.isfinite(default_duration_s) and default_duration_s >= 0):
            raise ConfigError(f"must be seconds >= 0, got {default_duration_s:g}", field="default_duration_s")
        self.master = master
        self.nodes = nodes
        self.template = template
        self.summary_interval_s = max(summary_interval_s, MIN_SUMMARY_INTERVAL_S)
        self.default_duration_s = default_duration_s
        self.tls_for = tls_for
        self.on_place = on_place
        self.clock: Clock = clock or SystemClock()
        width = max(3, len(str(subdomains - 1)))
        self.subdomains: dict[str, SimSubDomain] = {}
        for i in range(subdomains):
            sd = f"{prefix}-{i:0{width}d}"
            self.subdomains[sd] = SimSubDomain(self, sd, f"{prefix}-region-{i % regions}")

    async def __aenter__(self) -> SubDomainFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Open every sub-domain's stream (they connect concurrently)."""
        for sd in self.subdomains.values():
            sd.start()

    async def shutdown(self) -> None:
        """Close every stream; pending task timers are cancelled."""
        await asyncio.gather(*(sd.stop() for sd in self.subdomains.values()), return_exceptions=True)

    def stats(self) -> SubDomainFleetStats:
        sds = self.subdomains.values()
        return SubDomainFleetStats(
            subdomains=len(self.subdomains),
            connected=sum(1 for s in sds if s.connected),
            nodes=self.nodes * len(self.subdomains),
            tasks_running=sum(s.running for s in sds),
            placed=sum(s.placed for s in sds),
            rejected=sum(s.rejected for s in sds),
            reservations_held=sum(s.held for s in sds),
            reservations_committed=sum(s.reservations_committed for s in sds),
            reservations_refused=sum(s.reservations_refused for s in sds),
        )
