"""The fleet simulator: many simulated node agents in one process, on one asyncio loop.

Every simulated agent speaks the real agent protocol (``AgentGateway.Connect``: ``Register``,
``AgentReport`` deltas, ``CommandAck``, ``StartTask`` / ``StopTask`` / ``AckTasks``) over its own
gRPC stream to a real sub-domain manager. What it shares with the real agent: the report planner
(:class:`~node_agent._state.ReportPlanner`), the simulated hardware
(:class:`~node_agent._hardware.SimulatedHardware`: inventory and usage), the model dataclasses and
the protobuf helpers of :mod:`node_agent._agent`. What it does not have: a state directory, task
processes, metrics, a thread or timer of its own.

Scale by design:

* streams share channels: one ``grpc.aio`` channel per :data:`AGENTS_PER_CHANNEL` agents and
  sub-domain address (one HTTP/2 connection, one stream per agent; heartbeats and probe answers
  carry liveness, as for real agents). With mutual TLS every agent needs its own certificate (the
  sub-domain checks that it names the node), so each agent then has its own channel;
* one scheduler (a heap of deadlines) drives every agent's reports, simulated task completions and
  flaps; an agent sends a report only when its planner says one is due (task transitions, usage
  deltas, health changes, full syncs, heartbeats); a ``Probe`` is answered at once;
* one asyncio task per agent reads its stream (commands are handled inline).

Simulated tasks: ``StartTask`` is RUNNING at once, then SUCCEEDED (exit 0) or FAILED (exit code
``DOMAINOS_SIM_EXIT``) after ``DOMAINOS_SIM_DURATION`` seconds of the task's environment (defaults:
:attr:`Fleet.default_duration_s`, exit 0). ``StopTask`` makes it CANCELLED. Messages say
"simulated".

Faults (:meth:`Fleet.kill`, :meth:`Fleet.silence`, :meth:`Fleet.flap`, :meth:`Fleet.revive`):
``kill`` cancels the node's stream and keeps it down; ``silence`` keeps the stream open but sends
and answers nothing (not even a ``Probe``); ``flap`` kills and reconnects the stream every period; ``revive`` clears any
fault (a killed node reconnects with the same incarnation: a cut link, not a reboot).

GPU faults (:meth:`Fleet.inject`, :meth:`Fleet.clear_faults`): Xid errors, ECC errors, heat and
throttling injected into the nodes' simulated GPUs (:meth:`SimulatedHardware.inject`). Each agent's
health is its hardware's verdict on its usage (:func:`~node_agent._hardware.health_from_usage`),
re-evaluated at every usage change; an injection re-samples at once, so the health reaches the
sub-domain in the next report (a health change is due immediately).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from domainos.api.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from domainos.clock import Clock, SystemClock
from domainos.errors import ConfigError, InvalidArgument
from domainos.ids import new_incarnation
from domainos.model import NodeHealth, TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.resources import Resources
from domainos.rpc import TLSFiles, create_channel
from domainos.topology import SimInventory
from node_agent._agent import (
    _EOF,
    FULL,
    OUTBOUND_QUEUE_SIZE,
    SAME_ADDRESS_TRIES,
    _code_name,
    _end_requests,
    _outbound,
    _report_message,
    backoff_delay,
    probe_reply,
    stream_end_code,
)
from node_agent._hardware import GpuFault, SimulatedHardware
from node_agent._state import (
    Connected,
    Disconnected,
    IntervalsChanged,
    ReportPlanner,
    TaskChanged,
    TasksForgotten,
    Tick,
    UsageSampled,
)

log = logging.getLogger(__name__)

#: Streams per shared channel (insecure fleets).
AGENTS_PER_CHANNEL = 64
#: Task environment variables read by the simulated runner.
DURATION_ENV = "DOMAINOS_SIM_DURATION"
EXIT_ENV = "DOMAINOS_SIM_EXIT"
#: Report intervals until the sub-domain's ``Registered`` sets them.
DEFAULT_REPORT_INTERVAL_S = 5.0
DEFAULT_FULL_SYNC_INTERVAL_S = 60.0

#: Hardware presets for ``--profile`` (the :class:`SimInventory` format of topology files).
PROFILES: dict[str, SimInventory] = {
    "h100x8": SimInventory(
        cpus=192, memory="2Ti", gpus=8, gpu_model="H100-SXM-80GB", gpu_memory="80Gi", nvlink_domain_size=4
    ),
    "h200x8": SimInventory(
        cpus=192, memory="2Ti", gpus=8, gpu_model="H200-SXM-141GB", gpu_memory="141Gi", nvlink_domain_size=8
    ),
    "a100x8": SimInventory(
        cpus=128, memory="1Ti", gpus=8, gpu_model="A100-SXM-80GB", gpu_memory="80Gi", nvlink_domain_size=8
    ),
    "l40sx4": SimInventory(
        cpus=64,
        memory="512Gi",
        gpus=4,
        gpu_model="L40S",
        gpu_memory="48Gi",
        nvlink=False,
        nvlink_domain_size=1,
    ),
    "cpu": SimInventory(cpus=64, memory="256Gi"),
}


def profile(name: str) -> SimInventory:
    """A preset by name (:data:`PROFILES`); ConfigError names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(
            f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}", field="profile"
        ) from None


# ----------------------------------------------------------------------------- the scheduler


class _Scheduler:
    """One heap of ``(deadline, seq, callback)`` for the whole fleet, run by one asyncio task."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def at(self, when: float, callback: Callable[[], None]) -> None:
        first = not self._heap or when < self._heap[0][0]
        heapq.heappush(self._heap, (when, next(self._seq), callback))
        if first:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = self._clock.monotonic()
            while heap and heap[0][0] <= now:
                _, _, callback = heapq.heappop(heap)
                try:
                    callback()
                except Exception:
                    log.exception("simulator: a scheduled callback failed")
            self._wake.clear()
            timeout = heap[0][0] - self._clock.monotonic() if heap else None
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()


# ----------------------------------------------------------------------------- one simulated agent


@dataclass(slots=True)
class _SimTask:
    status: TaskStatus
    resources: Resources = dataclasses.field(default_factory=Resources)
    exit_code: int = 0


class SimAgent:
    """One simulated node: its stream, its planner, its simulated tasks. Made by :class:`Fleet`."""

    def __init__(self, fleet: Fleet, node_id: str, index: int, hardware: SimulatedHardware) -> None:
        self.fleet = fleet
        self.node_id = node_id
        self.index = index
        self.incarnation = new_incarnation()
        self.hardware = hardware
        self.inventory = hardware.inventory()
        self.subdomain_id = ""
        self.address = ""
        #: Between the sub-domain's ``Registered`` and the end of that stream.
        self.connected = False
        #: The last stream ended with this gRPC code ("" before any).
        self.last_error = ""
        #: ... and this message (the sub-domain's error details).
        self.last_message = ""
        self.registrations_total = 0
        self.reports_sent_total = 0
        self.refused_total = 0
        #: Sub-domain address -> (gRPC code, message) of its last refusal because it is full
        #: (``RESOURCE_EXHAUSTED``), at most one entry per address.
        self.refusals: dict[str, tuple[str, str]] = {}
        #: Faults: killed (no stream until revived), silent (stream open, nothing sent or answered).
        self.killed = False
        self.silent = False
        self.flap_period_s = 0.0
        self._tasks: dict[TaskRef, _SimTask] = {}
        self._usage = hardware.sample(())
        self._health = hardware.health(self._usage)
        self._planner = ReportPlanner(
            clock=fleet.clock,
            report_interval_s=DEFAULT_REPORT_INTERVAL_S,
            full_sync_interval_s=DEFAULT_FULL_SYNC_INTERVAL_S,
            memory_total=self.inventory.memory_bytes,
            gpu_memory_totals={g.index: g.memory_bytes for g in self.inventory.gpus},
        )
        self._queue: asyncio.Queue[Any] | None = None
        self._conn: asyncio.Task[None] | None = None
        self._due: float | None = None
        self._gen = 0
        #: The first address tried: the first of the list (as a real agent), or spread by index.
        self._home = index % len(fleet.subdomains) if fleet.spread else 0
        self._address_index = self._home

    # ------------------------------------------------------------------ queries

    @property
    def tasks(self) -> Mapping[TaskRef, TaskStatus]:
        """Every task the node knows (not yet acknowledged by the sub-domain), by ref."""
        return {ref: t.status for ref, t in self._tasks.items()}

    @property
    def running(self) -> int:
        return sum(1 for t in self._tasks.values() if t.status.state is TaskState.RUNNING)

    # ------------------------------------------------------------------ connection

    def start(self) -> None:
        if self._conn is None or self._conn.done():
            self._conn = asyncio.create_task(self._connection_loop(), name=f"sim-agent-{self.node_id}")

    async def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.cancel()
            await asyncio.gather(conn, return_exceptions=True)

    async def _connection_loop(self) -> None:
        addresses = self.fleet.subdomains
        failures = 0
        tries_here = 0  # failed streams in a row on the current address (as the real agent)
        while True:
            outcome = await self._session(addresses[self._address_index])
            if self.silent:
                return  # a silent node does not reconnect either (until revived)
            if outcome == "registered":
                failures = 0  # a drop after registering: reconnect soon, to the same address
                tries_here = 0
            elif outcome == FULL:
                self.refused_total += 1
                self.refusals[addresses[self._address_index]] = (self.last_error, self.last_message)
                self._address_index = (self._address_index + 1) % len(addresses)
                tries_here = 0
                if self._address_index != self._home:
                    continue  # the next address at once; back off after a full cycle
            elif outcome == "ALREADY_EXISTS":
                tries_here = 0
            else:
                tries_here += 1
                if tries_here >= SAME_ADDRESS_TRIES:
                    tries_here = 0
                    self._address_index = (self._address_index + 1) % len(addresses)
            delay = backoff_delay(failures, self.fleet.rand())
            failures += 1
            await asyncio.sleep(delay)

    async def _session(self, address: str) -> str:
        """One stream; returns "registered" when it got that far, else the gRPC code name."""
        channel, own = self.fleet._channel(self, address)
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=OUTBOUND_QUEUE_SIZE)
        call: Any = None
        registered = False
        try:
            queue.put_nowait(self._register_message())
            self._queue = queue
            call = agent_pb2_grpc.AgentGatewayStub(channel).Connect(_outbound(queue))
            while True:
                command = await call.read()
                if command is _EOF:
                    self.last_error = "OK"
                    break
                if self.silent:
                    continue
                kind = command.WhichOneof("body")
                if kind == "registered":
                    self._on_registered(command.registered, address)
                    registered = True
                elif registered:
                    self._handle_command(command, queue)
            return "registered" if registered else "OK"
        except grpc.RpcError as exc:
            code = stream_end_code(exc)
            self.last_error = _code_name(exc)
            self.last_message = (exc.details() if isinstance(exc, grpc.aio.AioRpcError) else None) or str(exc)
            if not registered:
                log.debug("sim node %s: %s from %s: %s", self.node_id, code, address, exc)
            return "registered" if registered else code
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("sim node %s: stream to %s failed", self.node_id, address)
            self.last_error, self.last_message = "INTERNAL", str(exc)
            return "registered" if registered else "INTERNAL"
        finally:
            self._queue = None
            self.connected = False
            self._planner.handle(Disconnected())
            self._gen += 1  # drops the pending report deadline
            self._due = None
            _end_requests(queue)
            if call is not None:
                call.cancel()
            if own:
                await asyncio.shield(channel.close(None))

    def _register_message(self) -> Any:
        self._planner.handle(Connected(self._usage, self._health))
        return agent_pb2.AgentMessage(
            register=agent_pb2.Register(
                inventory=self.inventory.to_proto(),
                incarnation=self.incarnation,
                tasks=[t.status.to_proto() for t in self._tasks.values()],
                usage=self._usage.to_proto(),
                health=self._health.to_proto(),
            )
        )

    def _on_registered(self, msg: Any, address: str) -> None:
        self.subdomain_id = msg.subdomain_id
        self.address = address
        self._planner.handle(
            IntervalsChanged(msg.report_interval_s, msg.full_sync_interval_s, msg.heartbeat_interval_s)
        )
        self.connected = True
        self.registrations_total += 1
        self._schedule()

    # ------------------------------------------------------------------ reports

    def _schedule(self) -> None:
        """Put the planner's next deadline on the fleet's heap (unless an earlier one is there)."""
        deadline = self._planner.next_deadline()
        if deadline is None or (self._due is not None and self._due <= deadline):
            return
        self._gen += 1
        self._due = deadline
        gen = self._gen
        self.fleet._scheduler.at(deadline, lambda: self._report_due(gen))

    def _report_due(self, gen: int) -> None:
        if gen != self._gen:
            return
        self._due = None
        queue = self._queue
        if queue is None or not self.connected:
            return
        if not self.silent:
            for report in self._planner.handle(Tick()):
                try:
                    queue.put_nowait(_report_message(self.incarnation, report, self.fleet.clock.time()))
                except asyncio.QueueFull:
                    log.warning(
                        "sim node %s: outbound queue full; report %d dropped", self.node_id, report.seq
                    )
                    continue
                self.reports_sent_total += 1
                self.fleet.reports_sent_total += 1
        else:
            self._planner.handle(Tick())  # a silent node's reports are lost, not delayed
        self._schedule()

    def _changed(self, status: TaskStatus) -> None:
        self._planner.handle(TaskChanged(status))
        self.resample()

    def resample(self) -> None:
        """Sample usage and health now (the running tasks, injected faults) and tell the planner."""
        running = [
            (t.resources, t.status.gpu_indexes)
            for t in self._tasks.values()
            if t.status.state is TaskState.RUNNING
        ]
        self._usage = self.hardware.sample(running)
        health = self.hardware.health(self._usage)
        if health != self._health:
            log.debug("sim node %s: health %s %s", self.node_id, health.status.name, list(health.conditions))
        self._health = health
        self._planner.handle(UsageSampled(self._usage, self._health))
        self._schedule()

    @property
    def health(self) -> NodeHealth:
        """The health this node reports (its hardware's verdict on its last usage)."""
        return self._health

    # ------------------------------------------------------------------ commands

    def _send(self, queue: asyncio.Queue[Any], msg: Any) -> None:
        try:
            queue.put_nowait(msg)
        except asyncio.QueueFull:
            log.warning("sim node %s: outbound queue full; message dropped", self.node_id)

    def _handle_command(self, command: Any, queue: asyncio.Queue[Any]) -> None:
        kind = command.WhichOneof("body")
        if kind == "start_task":
            self._send(queue, agent_pb2.AgentMessage(ack=self._start_task(command.start_task)))
        elif kind == "stop_task":
            self._send(queue, agent_pb2.AgentMessage(ack=self._stop_task(command.stop_task)))
        elif kind == "ack_tasks":
            self._ack_tasks(command.ack_tasks)
        elif kind == "probe":
            self._send(queue, probe_reply(command.probe))
        elif kind == "fetch_log":
            chunk = common_pb2.LogChunk(data=b"simulated task: no output\n", eof=True)
            reply = common_pb2.LogReply(request_id=command.fetch_log.request_id, chunk=chunk)
            self._send(queue, agent_pb2.AgentMessage(log_reply=reply))
        else:
            log.debug("sim node %s: ignoring command %s", self.node_id, kind)

    def _start_task(self, msg: Any) -> Any:
        cid = msg.command_id
        try:
            ref = TaskRef.from_proto(msg.spec, "spec")
        except InvalidArgument as exc:
            return common_pb2.CommandAck(command_id=cid, ok=False, error=f"invalid StartTask: {exc}")
        known = self._tasks.get(ref)
        if known is not None:
            self._changed(known.status)  # re-report, as the real agent does
            return common_pb2.CommandAck(command_id=cid, ok=True)
        gpus = tuple(msg.gpu_indexes)
        now = self.fleet.clock.time()
        try:
            spec = TaskSpec.from_proto(msg.spec)
            duration, exit_code = self.fleet.task_outcome(spec)
            have = {g.index for g in self.inventory.gpus}
            if len(set(gpus)) != len(gpus) or not set(gpus) <= have:
                raise InvalidArgument(
                    f"GPU indexes {list(gpus)} are not on node {self.node_id}", field="gpu_indexes"
                )
        except InvalidArgument as exc:
            error = f"invalid StartTask: {exc}"
            status = TaskStatus(ref, TaskState.FAILED, node_id=self.node_id, message=error, finished_at=now)
            self._tasks[ref] = _SimTask(status)
            self._changed(status)
            return common_pb2.CommandAck(command_id=cid, ok=False, error=error)
        status = TaskStatus(
            ref,
            TaskState.RUNNING,
            node_id=self.node_id,
            subdomain_id=self.subdomain_id,
            message=f"simulated: runs {duration:g}s, exits {exit_code}",
            started_at=now,
            pid=0,
            gpu_indexes=gpus,
        )
        self._tasks[ref] = _SimTask(status, spec.resources, exit_code)
        self.fleet.tasks_started_total += 1
        if self.fleet.start_times is not None:
            self.fleet.start_times.setdefault(ref, self.fleet.clock.monotonic())
        self._changed(status)
        self.fleet._scheduler.at(self.fleet.clock.monotonic() + duration, lambda: self._finish(ref, status))
        return common_pb2.CommandAck(command_id=cid, ok=True)

    def _finish(
        self, ref: TaskRef, started: TaskStatus, state: TaskState | None = None, message: str = ""
    ) -> None:
        t = self._tasks.get(ref)
        if t is None or t.status is not started:
            return  # stopped, or acknowledged and forgotten
        if state is None:
            state = TaskState.SUCCEEDED if t.exit_code == 0 else TaskState.FAILED
            message = f"simulated: exited {t.exit_code}"
        status = dataclasses.replace(
            t.status,
            state=state,
            exit_code=t.exit_code if state is not TaskState.CANCELLED else 0,
            message=message,
            finished_at=self.fleet.clock.time(),
        )
        t.status = status
        self._changed(status)

    def _stop_task(self, msg: Any) -> Any:
        cid = msg.command_id
        try:
            ref = TaskRef.from_proto(msg.task)
        except InvalidArgument as exc:
            return common_pb2.CommandAck(command_id=cid, ok=False, error=f"invalid StopTask: {exc}")
        reason = msg.reason or "stopped by the sub-domain"
        t = self._tasks.get(ref)
        if t is None:
            status = TaskStatus(
                ref,
                TaskState.CANCELLED,
                node_id=self.node_id,
                message=f"{reason} (the task was not running on this node; simulated)",
                finished_at=self.fleet.clock.time(),
            )
            self._tasks[ref] = _SimTask(status)
            self._changed(status)
        elif t.status.terminal:
            self._changed(t.status)
        else:
            self._finish(ref, t.status, TaskState.CANCELLED, f"simulated: {reason}")
        return common_pb2.CommandAck(command_id=cid, ok=True)

    def _ack_tasks(self, msg: Any) -> None:
        forgotten: list[TaskRef] = []
        for r in msg.tasks:
            try:
                ref = TaskRef.from_proto(r)
            except InvalidArgument:
                continue
            t = self._tasks.get(ref)
            if t is not None and t.status.terminal:
                del self._tasks[ref]
                forgotten.append(ref)
        if forgotten:
            self._planner.handle(TasksForgotten(tuple(forgotten)))

    # ------------------------------------------------------------------ faults

    def kill(self) -> None:
        self.killed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.cancel()
            self.fleet._reap(conn)

    def revive(self) -> None:
        self.killed = False
        self.silent = False
        self.flap_period_s = 0.0
        self.start()

    def _flap(self, period: float) -> None:
        if self.flap_period_s != period or self.fleet.closing:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.cancel()
            self.fleet._reap(conn)
        self.start()
        self.fleet._scheduler.at(self.fleet.clock.monotonic() + period, lambda: self._flap(period))


# ----------------------------------------------------------------------------- the fleet


@dataclass(frozen=True, slots=True)
class FleetStats:
    """One line of progress (``domainctl sim`` prints it every second)."""

    nodes: int
    connected: int
    registrations: int
    refused: int
    tasks_running: int
    tasks_started: int
    reports_sent: int
    killed: int
    silent: int
    flapping: int

    def line(self) -> str:
        faults = f", {self.killed} killed, {self.silent} silent, {self.flapping} flapping"
        return (
            f"{self.connected}/{self.nodes} connected, {self.registrations} registrations, "
            f"{self.refused} refused, {self.tasks_running} tasks running ({self.tasks_started} started), "
            f"{self.reports_sent} reports" + (faults if self.killed or self.silent or self.flapping else "")
        )


class Fleet:
    """N simulated node agents in this process. ``async with Fleet(...) as fleet:`` or start()/shutdown().

    ``subdomains``: the sub-domain addresses, tried in order as a real agent does (``spread``:
    node *i* starts with address *i* mod their number); a node moves on to the next address when
    one is full (``RESOURCE_EXHAUSTED``).
    ``inventory``: a :class:`SimInventory` or a :data:`PROFILES` name. Node ids are
    ``<prefix>-<i>`` (zero-padded). ``tls_for(node_id)``: the node's certificate files (None:
    insecure, shared channels).
    """

    def __init__(
        self,
        subdomains: Sequence[str],
        nodes: int,
        inventory: SimInventory | str = "cpu",
        *,
        prefix: str = "sim",
        seed: int | None = None,
        labels: Mapping[str, str] | None = None,
        region: str = "",
        tls_for: Callable[[str], TLSFiles | None] | None = None,
        agents_per_channel: int = AGENTS_PER_CHANNEL,
        default_duration_s: float = 1.0,
        spread: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if not subdomains:
            raise ConfigError("at least one sub-domain address is required", field="subdomains")
        if nodes < 0:
            raise ConfigError(f"must be 0 or more, got {nodes}", field="nodes")
        if agents_per_channel < 1:
            raise ConfigError(f"must be 1 or more, got {agents_per_channel}", field="agents_per_channel")
        sim = profile(inventory) if isinstance(inventory, str) else inventory
        sim.validate()
        self.subdomains = list(subdomains)
        self.clock: Clock = clock or SystemClock()
        self.default_duration_s = default_duration_s
        self.spread = spread
        self.closing = False
        self.tasks_started_total = 0
        self.reports_sent_total = 0
        #: When a dict (benchmarks set one): the ``clock.monotonic()`` at which each task's first
        #: ``StartTask`` arrived, by ref, to time placements end to end. None records nothing.
        self.start_times: dict[TaskRef, float] | None = None
        self._random = random.Random(seed)
        self._tls_for = tls_for
        self._per_channel = agents_per_channel
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self._scheduler = _Scheduler(self.clock)
        self._runner: asyncio.Task[None] | None = None
        self._reaping: set[asyncio.Task[Any]] = set()
        width = max(4, len(str(max(0, nodes - 1))))
        self.agents: dict[str, SimAgent] = {}
        for i in range(nodes):
            node_id = f"{prefix}-{i:0{width}d}"
            hw = SimulatedHardware(node_id, sim, labels=labels, region=region)
            self.agents[node_id] = SimAgent(self, node_id, i, hw)

    def rand(self) -> float:
        return self._random.random()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Start every agent's stream (they connect concurrently) and the scheduler."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._scheduler.run(), name="sim-scheduler")
        for agent in self.agents.values():
            if not agent.killed:
                agent.start()

    async def shutdown(self) -> None:
        """Close every stream and channel."""
        self.closing = True
        await asyncio.gather(*(a.stop() for a in self.agents.values()), return_exceptions=True)
        if self._reaping:
            await asyncio.gather(*self._reaping, return_exceptions=True)
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close(None) for c in channels), return_exceptions=True)

    def _channel(self, agent: SimAgent, address: str) -> tuple[grpc.aio.Channel, bool]:
        """The channel for ``agent``'s stream, and whether it is the agent's own (closed after)."""
        tls = self._tls_for(agent.node_id) if self._tls_for is not None else None
        if tls is not None:
            return create_channel(address, tls), True
        key = (address, agent.index // self._per_channel)
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = create_channel(address)
        return channel, False

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    # ------------------------------------------------------------------ simulated tasks

    def task_outcome(self, spec: TaskSpec) -> tuple[float, int]:
        """Duration (s) and exit code of a simulated task, from its environment."""
        duration, exit_code = self.default_duration_s, 0
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

    # ------------------------------------------------------------------ faults

    def pick(self, fraction: float, *, among: Iterable[str] | None = None) -> list[str]:
        """A random ``fraction`` of the nodes (seeded), at least one when ``fraction`` > 0."""
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"must be between 0 and 1, got {fraction:g}", field="fraction")
        pool = sorted(self.agents if among is None else among)
        if fraction == 0 or not pool:
            return []
        n = max(1, round(fraction * len(pool)))
        return sorted(self._random.sample(pool, min(n, len(pool))))

    def _agents(self, node_ids: Iterable[str]) -> list[SimAgent]:
        out = []
        for node_id in node_ids:
            agent = self.agents.get(node_id)
            if agent is None:
                raise InvalidArgument(f"no simulated node {node_id!r}", field="node_ids")
            out.append(agent)
        return out

    def kill(self, node_ids: Iterable[str]) -> None:
        """Drop these nodes' streams (the call is cancelled); they stay down until :meth:`revive`."""
        for agent in self._agents(node_ids):
            agent.kill()

    def silence(self, node_ids: Iterable[str]) -> None:
        """Keep these nodes' streams open but send and answer nothing."""
        for agent in self._agents(node_ids):
            agent.silent = True

    def flap(self, node_ids: Iterable[str], period_s: float) -> None:
        """Drop and reconnect these nodes' streams every ``period_s`` seconds."""
        if not period_s > 0:
            raise ConfigError(f"must be greater than 0, got {period_s:g}", field="period")
        when = self.clock.monotonic() + period_s
        for agent in self._agents(node_ids):
            agent.killed = False
            agent.flap_period_s = period_s
            self._scheduler.at(when, functools.partial(agent._flap, period_s))

    def revive(self, node_ids: Iterable[str]) -> None:
        """Clear every connection fault of these nodes; killed ones reconnect (GPU faults stay:
        :meth:`clear_faults`)."""
        for agent in self._agents(node_ids):
            agent.revive()

    def inject(
        self,
        node_ids: Iterable[str],
        *,
        gpu: int,
        xid: int | None = None,
        ecc_corrected: int = 0,
        ecc_uncorrected: int = 0,
        temperature_c: float | None = None,
        throttle_reasons: int | None = None,
    ) -> None:
        """Inject a GPU fault into GPU ``gpu`` of these nodes (:meth:`SimulatedHardware.inject`:
        ``xid`` one Xid error, ECC counts added, ``temperature_c`` / ``throttle_reasons``
        overridden); each re-samples at once, so its new usage and health go out in its next
        report. Checked on every node before any is changed (InvalidArgument: an unknown node, a
        GPU it lacks, a bad value, or nothing to inject)."""
        fault = GpuFault(
            gpu,
            xid=xid,
            ecc_corrected=ecc_corrected,
            ecc_uncorrected=ecc_uncorrected,
            temperature_c=temperature_c,
            throttle_reasons=throttle_reasons,
        )
        if fault.empty:
            raise InvalidArgument(
                "nothing to inject: give xid, ecc_corrected, ecc_uncorrected, temperature_c or "
                "throttle_reasons",
                field="fault",
            )
        self._apply(node_ids, fault)

    def clear_faults(self, node_ids: Iterable[str], gpu: int | None = None) -> None:
        """Drop the injected GPU faults of these nodes (of GPU ``gpu`` only, when given)."""
        self._apply(node_ids, GpuFault(gpu, clear=True))

    def _apply(self, node_ids: Iterable[str], fault: GpuFault) -> None:
        agents = self._agents(node_ids)
        for agent in agents:
            agent.hardware.check_fault(fault)
        for agent in agents:
            agent.hardware.apply_fault(fault)
            agent.resample()

    # ------------------------------------------------------------------ progress

    def stats(self) -> FleetStats:
        agents = self.agents.values()
        return FleetStats(
            nodes=len(self.agents),
            connected=sum(1 for a in agents if a.connected),
            registrations=sum(a.registrations_total for a in agents),
            refused=sum(a.refused_total for a in agents),
            tasks_running=sum(a.running for a in agents),
            tasks_started=self.tasks_started_total,
            reports_sent=self.reports_sent_total,
            killed=sum(1 for a in agents if a.killed),
            silent=sum(1 for a in agents if a.silent),
            flapping=sum(1 for a in agents if a.flap_period_s > 0),
        )
