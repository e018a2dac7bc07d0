"""The node agent: one long-lived stream to a sub-domain, the task runner, reports and metrics.

Connection loop: dial the sub-domains of ``config.subdomains`` in order over
``AgentGateway.Connect``; send ``Register`` (inventory, incarnation, every known task, usage,
health); on ``Registered`` start reporting; execute ``StartTask`` / ``StopTask`` / ``AckTasks`` /
``FetchLog``. When the stream ends, reconnect with backoff (0.2 s doubling to 5 s, jittered,
through the injected ``sleep``), cycling through the addresses. A sub-domain that refuses the node for being full
(``RESOURCE_EXHAUSTED`` marked ``subdomain-full``) sends it to the next address at once; any other
failed stream is retried on the same address :data:`SAME_ADDRESS_TRIES` times before moving on.

The inventory travels only in ``Register``. What can change while the node runs (dataset shards
appearing on local storage) is rescanned once per full-report interval, in a worker thread; when it
changed, the agent sends ``Register`` again *on the same stream* with the new inventory: the
sub-domain updates the node in place (its indexes and summary; the node stays ready, its tasks keep
running and are reconciled from the Register's task list) and answers ``Registered`` again.

All protobuf translation of the agent happens in this module; the runner, the report planner and
the hardware probes speak the dataclasses of :mod:`domainos.model`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import grpc
import grpc.aio

from domainos.api.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from domainos.clock import Clock, SystemClock
from domainos.config import open_transport
from domainos.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    SubDomainFull,
    Unavailable,
)
from domainos.ids import new_incarnation
from domainos.jobspec import DOCKER_GPU_LABEL, DOCKER_LABEL
from domainos.model import HealthStatus, NodeHealth, NodeInventory, NodeUsage, TaskRef, TaskSpec, TaskStatus
from domainos.rpc import TLSFiles, TLSRefusals, create_channel, error_reason
from domainos.topology import SimInventory
from node_agent import _metrics
from node_agent._config import AgentConfig
from node_agent._docker import DockerError, DockerRuntime
from node_agent._hardware import HardwareProbe, RealHardware, SimulatedHardware
from node_agent._runner import TaskRunner
from node_agent._state import (
    Connected,
    Disconnected,
    IntervalsChanged,
    ReportPlanner,
    SendReport,
    TaskChanged,
    TasksForgotten,
    Tick,
    UsageSampled,
)

log = logging.getLogger(__name__)

#: Messages waiting for the stream; a full queue makes the command reader wait (backpressure).
OUTBOUND_QUEUE_SIZE = 256
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0
#: A registered stream that lasted this long resets the reconnect backoff.
STABLE_SESSION_S = 10.0
#: A sub-domain that accepts the stream but does not answer Register in this time is given up on.
REGISTER_TIMEOUT_S = 30.0
#: On shutdown, how long the agent waits for the last reports to leave.
FLUSH_TIMEOUT_S = 1.0

Sleep = Callable[[float], Awaitable[Any]]
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined,unused-ignore]  # missing from grpc-stubs


#: A stream that fails before registering (not a refusal) is retried on the same sub-domain this
#: many times in all before the agent moves to the next address: one transient error (a connection
#: reset in a registration storm) must not move a node away from its home sub-domain.
SAME_ADDRESS_TRIES = 3
#: Least time between two inventory rescans asked for by ending tasks.
RESCAN_MIN_S = 0.5


def backoff_delay(failures: int, rand: float) -> float:
    """0.2 s doubling to 5 s; "equal jitter": uniformly in the upper half of that step."""
    base = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2.0 ** min(failures, 16))
    return base / 2 + rand * base / 2


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one stream ended."""

    registered: bool
    code: str  # gRPC status code name; "OK" when the sub-domain closed the stream
    message: str


class NodeAgent:
    """One node's agent. Use as ``async with NodeAgent(config) as agent:`` or start()/shutdown().

    ``clock`` stamps task times and paces reports; ``sleep`` is awaited between reconnect
    attempts (tests inject a fast one); ``hardware`` replaces discovery (tests inject probes).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        hardware: HardwareProbe | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.incarnation = new_incarnation()
        #: Set while registered with a sub-domain; cleared when the stream ends.
        self.registered = asyncio.Event()
        #: Id, region and address of the sub-domain of the current (or last) registration.
        self.subdomain_id = ""
        self.region = config.region
        self.address = ""
        self.reports_sent_total = 0
        self.reconnects_total = 0
        self.registrations_total = 0
        self._clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self._rand = rand
        self._hardware = hardware
        self._inventory: NodeInventory | None = None
        self._runner: TaskRunner | None = None
        self._planner: ReportPlanner | None = None
        self._usage = NodeUsage()
        self._health = NodeHealth(HealthStatus.HEALTHY)  # until the first sample says otherwise
        self._connected = False
        self._wake = asyncio.Event()
        self._rescan = asyncio.Event()
        self._queue: asyncio.Queue[Any] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._conn_task: asyncio.Task[None] | None = None
        self._metrics_server: object | None = None
        self._metrics_address = ""
        self._started = False
        self._closing = False
        self._shutdown_task: asyncio.Task[None] | None = None
        self._lock_file: IO[str] | None = None
        #: Mutual TLS files (None: insecure). Read again on every reconnect, so certificates
        #: re-issued in place are used without restarting the agent.
        self._tls: TLSFiles | None = None
        self._refusals: TLSRefusals | None = None
        #: The inventory changed and no Register has carried it yet.
        self._inventory_unsent = False
        #: The node's Docker engine (runtime docker), when enabled and it answered; else why not.
        self._docker: DockerRuntime | None = None
        self._docker_note = ""
        #: Labels saying what the node runs besides processes (``domainos.io/docker``).
        self._runtime_labels: dict[str, str] = {}

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True between the sub-domain's ``Registered`` and the end of that stream."""
        return self._connected

    @property
    def runner(self) -> TaskRunner:
        if self._runner is None:
            raise FailedPrecondition("the agent has not started")
        return self._runner

    @property
    def inventory(self) -> NodeInventory:
        if self._inventory is None:
            raise FailedPrecondition("the agent has not started")
        return self._inventory

    async def __aenter__(self) -> NodeAgent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def start(self) -> dict[str, Any]:
        """Discover the node, recover task records, serve metrics, begin connecting.

        Returns the ready-file facts: ``node_id``, ``metrics`` (``host:port`` or ``""``) and
        ``state_dir``. If starting fails, what was started is shut down again.
        """
        if self._started:
            raise FailedPrecondition("the agent was already started")
        self._started = True
        try:
            return await self._start()
        except BaseException:
            await self.shutdown()
            raise

    async def _start(self) -> dict[str, Any]:
        cfg = self.config
        self._tls = open_transport(cfg.tls, role="agent", ident=self.node_id, log=log)
        if self._tls is not None:
            self._refusals = TLSRefusals(self._tls, log, "sub-domain")
        state_dir = Path(cfg.state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(
                f"cannot create the state directory {state_dir}: {exc.strerror or exc}"
            ) from exc
        self._lock_file = _lock_state_dir(state_dir)
        if self._hardware is None:
            self._hardware = await asyncio.to_thread(self._discover)
        hw = self._hardware
        self._runtime_labels = await self._connect_docker()
        self._inventory = self._labelled(hw.inventory())
        self._runner = TaskRunner(
            state_dir,
            node_id=self.node_id,
            cores=hw.cores(),
            apply_affinity=not hw.simulated,
            clock=self._clock,
            on_change=self._on_task_change,
            task_user=cfg.task_user,
            tenant_users=cfg.tenant_users,
            task_client_tls=cfg.task_client_tls.files() if cfg.task_client_tls is not None else None,
            private_files=[cfg.tls.files().key] if cfg.tls is not None else [],
            gpus={g.index: g.memory_bytes for g in self._inventory.gpus},
            data_dir=cfg.data_dir,
            advertise_host=cfg.advertise_host,
            as_agent_user=cfg.tasks_as_agent_user,
            checkpoint_dir=cfg.checkpoint_dir,
            docker=self._docker,
            docker_note=self._docker_note,
        )
        self._planner = ReportPlanner(
            clock=self._clock,
            report_interval_s=cfg.report_interval_s,
            full_sync_interval_s=cfg.full_sync_interval_s,
            memory_total=self._inventory.memory_bytes,
            gpu_memory_totals={g.index: g.memory_bytes for g in self._inventory.gpus},
        )
        for status in self._runner.recover():
            self._planner.handle(TaskChanged(status))
        await self._sample()
        if cfg.metrics_listen:
            host = cfg.metrics_listen.rpartition(":")[0]
            try:
                self._metrics_server, port = _metrics.serve_metrics(cfg.metrics_listen, self.metrics_snapshot)
            except OSError as exc:
                raise Unavailable(
                    f"cannot serve metrics on {cfg.metrics_listen}: {exc.strerror or exc}"
                ) from exc
            self._metrics_address = f"{host}:{port}"
        self._conn_task = self._spawn(self._connection_loop(), "agent-connection")
        self._spawn(self._sample_loop(), "agent-sampler")
        self._spawn(self._inventory_loop(), "agent-inventory")
        inv = self._inventory
        log.info(
            "node agent %s started: %d cpus, %d bytes memory, %d gpus%s, state dir %s, incarnation %s",
            self.node_id,
            inv.cpu_cores,
            inv.memory_bytes,
            len(inv.gpus),
            " (simulated)" if inv.simulated else "",
            state_dir,
            self.incarnation,
        )
        return {"node_id": self.node_id, "metrics": self._metrics_address, "state_dir": str(state_dir)}

    async def shutdown(self) -> None:
        """Stop tasks (``stop_tasks_on_shutdown``), flush the last reports, close everything.

        Idempotent; concurrent callers wait for the same shutdown.
        """
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    def metrics_snapshot(self) -> _metrics.MetricsSnapshot:
        """Counters for the metrics collector (safe to call from the scrape thread)."""
        runner = self._runner
        counts = runner.state_counts() if runner is not None else {}
        return _metrics.MetricsSnapshot(
            connected=self._connected,
            tasks_by_state={s.name.lower(): n for s, n in list(counts.items()) if s.value},
            tasks_started_total=runner.started_total if runner is not None else 0,
            reports_sent_total=self.reports_sent_total,
            reconnects_total=self.reconnects_total,
        )

    # ------------------------------------------------------------------ lifecycle internals

    def _discover(self) -> HardwareProbe:
        cfg = self.config
        if cfg.simulated:
            return SimulatedHardware(
                cfg.node_id,
                cfg.inventory or SimInventory(),
                labels=cfg.labels,
                region=cfg.region,
                block=cfg.block,
                datasets=cfg.datasets,
                data_dir=cfg.data_dir,
            )
        return RealHardware(
            cfg.node_id,
            labels=cfg.labels,
            region=cfg.region,
            block=cfg.block,
            datasets=cfg.datasets,
            data_dir=cfg.data_dir,
        )

    async def _connect_docker(self) -> dict[str, str]:
        """Connect to the Docker engine (``docker_runtime``); the node labels it earns."""
        cfg = self.config
        if not cfg.docker_runtime:
            self._docker_note = "the Docker runtime is disabled on this agent (docker_runtime: false)"
            return {}
        docker = DockerRuntime(cfg.docker_host)
        try:
            info = await docker.connect()
        except DockerError as exc:
            docker.close()
            self._docker_note = str(exc)
            log.info("node %s: no Docker runtime: %s", self.node_id, exc)
            return {}
        self._docker = docker
        log.info(
            "node %s: Docker engine %s (API %s) at %s%s",
            self.node_id,
            info.version,
            info.api_version,
            cfg.docker_host,
            ", nvidia runtime" if info.nvidia else "",
        )
        labels = {DOCKER_LABEL: "true"}
        if info.nvidia:
            labels[DOCKER_GPU_LABEL] = "true"
        return labels

    def _labelled(self, inventory: NodeInventory) -> NodeInventory:
        if not self._runtime_labels:
            return inventory
        return dataclasses.replace(inventory, labels={**self._runtime_labels, **inventory.labels})

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{name}-{self.node_id}")
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "node %s: background task %s failed", self.node_id, task.get_name(), exc_info=task.exception()
            )

    async def _shutdown(self) -> None:
        # The stream stays up (and reconnects) while tasks stop, so their CANCELLED states can leave.
        if self._runner is not None:
            await self._runner.shutdown(
                stop_tasks=self.config.stop_tasks_on_shutdown, grace_s=self.config.stop_grace_s
            )
        self._closing = True
        await self._flush_and_close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._metrics_server is not None:
            await asyncio.to_thread(_metrics.stop_metrics, self._metrics_server)
            self._metrics_server = None
        if self._hardware is not None:
            self._hardware.close()
        if self._docker is not None:
            self._docker.close()
            self._docker = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None
        self._connected = False
        self.registered.clear()
        log.info("node agent %s stopped", self.node_id)

    async def _flush_and_close(self) -> None:
        """Let the last transitions (e.g. tasks cancelled by shutdown) leave, then half-close."""
        queue, planner, conn = self._queue, self._planner, self._conn_task
        if not self._connected or queue is None or planner is None or conn is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FLUSH_TIMEOUT_S
        self._wake.set()
        while (planner.pending or not queue.empty()) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        try:
            queue.put_nowait(None)  # ends the request stream: the sub-domain sees a clean close
        except asyncio.QueueFull:
            return
        # asyncio.wait neither raises the connection's own outcome (logged by _background_done)
        # nor swallows a cancel of this shutdown; it just waits, at most until the deadline.
        await asyncio.wait({conn}, timeout=max(0.0, deadline - loop.time()))

    # ------------------------------------------------------------------ sampling

    async def _sample(self) -> None:
        hw, runner, planner = self._hardware, self._runner, self._planner
        assert hw is not None and runner is not None and planner is not None
        running = runner.running()
        if hw.simulated:
            usage = hw.sample(running)
        else:
            usage = await asyncio.to_thread(hw.sample, running)
        health = hw.health(usage)
        if health != self._health:
            log.log(
                logging.INFO if health.status.value <= 1 else logging.WARNING,
                "node %s health %s %s",
                self.node_id,
                health.status.name.lower(),
                list(health.conditions),
            )
        self._usage, self._health = usage, health
        planner.handle(UsageSampled(usage, health))
        for status in runner.poll_progress():  # what tasks said about their progress
            planner.handle(TaskChanged(status))
        self._wake.set()

    async def _sample_loop(self) -> None:
        assert self._planner is not None
        while True:
            await asyncio.sleep(self._planner.report_interval_s)
            try:
                await self._sample()
            except Exception:
                log.exception("node %s: sampling usage failed", self.node_id)

    async def refresh_inventory(self) -> bool:
        """Rescan what can change (dataset shards); when the inventory changed, register again
        with it on the current stream. True when it changed."""
        hw = self._hardware
        assert hw is not None
        if not await asyncio.to_thread(hw.refresh):
            self._send_inventory()  # one that could not be queued last time
            return False
        old, self._inventory = self._inventory, self._labelled(hw.inventory())
        log.info(
            "node %s: inventory changed (datasets %d -> %d shards); registering it",
            self.node_id,
            len(old.datasets) if old is not None else 0,
            len(self._inventory.datasets),
        )
        self._inventory_unsent = True
        self._send_inventory()
        return True

    def _send_inventory(self) -> None:
        """Queue a Register with the current inventory on the live stream (a reconnect's Register
        carries it anyway)."""
        queue = self._queue
        if not self._inventory_unsent or not self._connected or queue is None:
            return
        if queue.full():
            return  # congested: tried again at the next rescan
        queue.put_nowait(self._register_message())

    async def _inventory_loop(self) -> None:
        planner = self._planner
        assert planner is not None
        last = self._clock.monotonic()
        while True:
            # Short naps: the sub-domain's Registered may shorten the interval after we started;
            # a task that ended asks for a rescan (at most one per RESCAN_MIN_S).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rescan.wait(), min(planner.full_sync_interval_s, 1.0))
            due = self._clock.monotonic() - last >= planner.full_sync_interval_s
            if self._rescan.is_set() and self._clock.monotonic() - last >= RESCAN_MIN_S:
                self._rescan.clear()
                due = True
            if not due:
                if self._rescan.is_set():
                    await asyncio.sleep(RESCAN_MIN_S)
                continue
            last = self._clock.monotonic()
            try:
                await self.refresh_inventory()
            except Exception:
                log.exception("node %s: rescanning the inventory failed", self.node_id)

    # ------------------------------------------------------------------ connection loop

    async def _connection_loop(self) -> None:
        addresses = list(self.config.subdomains)
        index = 0
        failures = 0
        exhausted_in_a_row = 0
        tries_here = 0  # failed streams in a row on the current address
        first = True
        while not self._closing:
            address = addresses[index % len(addresses)]
            if not first:
                self.reconnects_total += 1
            first = False
            started = self._clock.monotonic()
            outcome = await self._session(address)
            if self._closing:
                return
            # A stream that lived a while resets the backoff; one that flaps right after
            # registering keeps backing off.
            if outcome.registered and self._clock.monotonic() - started >= STABLE_SESSION_S:
                failures = 0
            if outcome.code == FULL:
                log.warning(
                    "node %s: sub-domain at %s refused registration: %s",
                    self.node_id,
                    address,
                    outcome.message,
                )
                index += 1
                tries_here = 0
                exhausted_in_a_row += 1
                if exhausted_in_a_row < len(addresses):
                    continue  # the next sub-domain, at once
                exhausted_in_a_row = 0  # every one is full: wait before the next round
            else:
                exhausted_in_a_row = 0
                if outcome.code == "OK":
                    log.info("node %s: sub-domain at %s closed the stream", self.node_id, address)
                else:
                    level = (
                        logging.WARNING
                        if outcome.registered or outcome.code != "UNAVAILABLE"
                        else logging.INFO
                    )
                    log.log(
                        level,
                        "node %s: stream to sub-domain at %s ended (%s): %s",
                        self.node_id,
                        address,
                        outcome.code,
                        outcome.message,
                    )
                # A registered node retries its own sub-domain first (it expects the node back);
                # ALREADY_EXISTS means our previous stream there is not yet noticed as dead.
                if outcome.registered or outcome.code == "ALREADY_EXISTS":
                    tries_here = 0
                else:
                    tries_here += 1
                    if tries_here >= SAME_ADDRESS_TRIES:
                        tries_here = 0
                        index += 1
            delay = backoff_delay(failures, self._rand())
            failures += 1
            log.debug("node %s: reconnecting in %.2fs", self.node_id, delay)
            await self._sleep(delay)

    async def _session(self, address: str) -> _Outcome:
        """One stream: register, then serve commands until it ends. Never raises (but cancels)."""
        runner, planner = self._runner, self._planner
        assert runner is not None and planner is not None
        try:
            channel = create_channel(address, self._tls)
        except ConfigError as exc:  # our own certificate: missing or expired (mid-rotation?)
            if self._refusals is not None:
                self._refusals.note(address, str(exc))
            return _Outcome(False, "UNAVAILABLE", str(exc))
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=OUTBOUND_QUEUE_SIZE)
        reporter: asyncio.Task[None] | None = None
        call: Any = None
        registered = False
        try:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            # Snapshot and planner reset in one step: later transitions travel as deltas.
            queue.put_nowait(self._register_message())
            self._queue = queue
            call = stub.Connect(_outbound(queue))
            while True:
                if registered:
                    command = await call.read()
                else:
                    try:
                        command = await _read_within(call, REGISTER_TIMEOUT_S)
                    except TimeoutError:
                        return _Outcome(
                            False, "DEADLINE_EXCEEDED", f"no Registered within {REGISTER_TIMEOUT_S:g}s"
                        )
                if command is _EOF:
                    break
                kind = command.WhichOneof("body")
                if kind == "registered":
                    self._on_registered(command.registered, address)
                    registered = True
                    if reporter is None:
                        reporter = asyncio.create_task(
                            self._report_loop(queue), name=f"agent-reports-{self.node_id}"
                        )
                elif not registered:
                    log.warning("node %s: %s from %s before Registered; ignored", self.node_id, kind, address)
                else:
                    await self._handle_command(command, queue)
            return _Outcome(registered, "OK", "stream closed by the sub-domain")
        except grpc.RpcError as exc:
            # Only classified here (next address, or back off); nothing is raised to a caller.
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else ""
            code = stream_end_code(exc)
            if code == "UNAVAILABLE" and not registered and self._refusals is not None:
                # A refused TLS handshake only says "Socket closed": ask why (logged once).
                details = await self._refusals.explain(address) or details
            return _Outcome(registered, code, details or str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("node %s: stream to %s failed", self.node_id, address)
            return _Outcome(registered, "INTERNAL", str(exc))
        finally:
            self._queue = None
            was_connected = self._connected
            self._connected = False
            self.registered.clear()
            planner.handle(Disconnected())
            if was_connected:
                log.info("node %s: disconnected from sub-domain %s", self.node_id, self.subdomain_id)
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
            # grpc.aio leaves the task that drains our request iterator waiting after the call has
            # ended; ending the iterator lets that task finish instead of being destroyed pending.
            _end_requests(queue)
            if call is not None:
                call.cancel()
            await asyncio.sleep(0)
            await channel.close(None)

    def _register_message(self) -> Any:
        runner, planner, inv = self._runner, self._planner, self._inventory
        assert runner is not None and planner is not None and inv is not None
        tasks = runner.statuses()
        planner.handle(Connected(self._usage, self._health))
        self._inventory_unsent = False  # this Register carries the current inventory
        return agent_pb2.AgentMessage(
            register=agent_pb2.Register(
                inventory=inv.to_proto(),
                incarnation=self.incarnation,
                tasks=[s.to_proto() for s in tasks],
                usage=self._usage.to_proto(),
                health=self._health.to_proto(),
            )
        )

    def _on_registered(self, msg: Any, address: str) -> None:
        assert self._planner is not None and self._runner is not None
        if msg.node_id and msg.node_id != self.node_id:
            log.warning("node %s: sub-domain registered us as %r", self.node_id, msg.node_id)
        self.subdomain_id = msg.subdomain_id
        self.region = msg.region or self.config.region
        self.address = address
        self._runner.subdomain_id = msg.subdomain_id
        self._runner.region = self.region
        self._planner.handle(
            IntervalsChanged(msg.report_interval_s, msg.full_sync_interval_s, msg.heartbeat_interval_s)
        )
        self._connected = True
        self.registrations_total += 1
        self.registered.set()
        self._wake.set()
        log.info(
            "node %s registered with sub-domain %s (region %s) at %s, incarnation %s",
            self.node_id,
            msg.subdomain_id,
            self.region,
            address,
            self.incarnation,
        )

    async def _report_loop(self, queue: asyncio.Queue[Any]) -> None:
        planner = self._planner
        assert planner is not None
        while True:
            deadline = planner.next_deadline()
            timeout = None if deadline is None else deadline - self._clock.monotonic()
            if timeout is None or timeout > 0:
                # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel that races
                # with the wake-up, and this loop would then outlive shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            self._wake.clear()
            for report in planner.handle(Tick()):
                await queue.put(_report_message(self.incarnation, report, self._clock.time()))
                self.reports_sent_total += 1

    # ------------------------------------------------------------------ commands

    async def _handle_command(self, command: Any, queue: asyncio.Queue[Any]) -> None:
        kind = command.WhichOneof("body")
        if kind == "start_task":
            ack = await self._start_task(command.start_task)
            await queue.put(agent_pb2.AgentMessage(ack=ack))
        elif kind == "stop_task":
            ack = self._stop_task(command.stop_task)
            await queue.put(agent_pb2.AgentMessage(ack=ack))
        elif kind == "ack_tasks":
            self._ack_tasks(command.ack_tasks)
        elif kind == "fetch_log":
            reply = await self._fetch_log(command.fetch_log)
            await queue.put(agent_pb2.AgentMessage(log_reply=reply))
        elif kind == "probe":
            await queue.put(probe_reply(command.probe))
        else:
            log.debug("node %s: ignoring command %s", self.node_id, kind)

    def _rereport(self, status: TaskStatus) -> None:
        assert self._planner is not None
        self._planner.handle(TaskChanged(status))
        self._wake.set()

    async def _start_task(self, msg: Any) -> Any:
        runner = self.runner
        cid = msg.command_id
        try:
            ref = TaskRef.from_proto(msg.spec, "spec")
        except InvalidArgument as exc:
            log.warning("node %s: StartTask %s refused: %s", self.node_id, cid, exc)
            return common_pb2.CommandAck(command_id=cid, ok=False, error=f"invalid StartTask: {exc}")
        known = runner.get(ref)
        if known is not None:
            log.info(
                "task %s: StartTask %s for a known task (%s); re-reporting",
                ref,
                cid,
                known.state.name.lower(),
            )
            self._rereport(known)
            return common_pb2.CommandAck(command_id=cid, ok=True)
        gpus = tuple(msg.gpu_indexes)
        try:
            spec = TaskSpec.from_proto(msg.spec)
            self._check_gpus(gpus, spec.resources.gpu_share)
        except InvalidArgument as exc:
            error = f"invalid StartTask: {exc}"
            runner.reject(ref, error, gpus)
            return common_pb2.CommandAck(command_id=cid, ok=False, error=error)
        try:
            result = await runner.start(spec, gpus)
        except ResourceExhausted as exc:
            log.warning("task %s: StartTask %s refused: %s", ref, cid, exc)
            return common_pb2.CommandAck(command_id=cid, ok=False, error=str(exc))
        except OSError as exc:
            error = f"cannot prepare the task directory: {exc.strerror or exc}"
            log.error("task %s: StartTask %s failed: %s", ref, cid, error)
            return common_pb2.CommandAck(command_id=cid, ok=False, error=error)
        log.debug("task %s: StartTask %s -> %s", ref, cid, result.status.state.name.lower())
        return common_pb2.CommandAck(command_id=cid, ok=True)

    def _check_gpus(self, gpus: Sequence[int], share: int = 0) -> None:
        have = {g.index for g in self.inventory.gpus}
        if len(set(gpus)) != len(gpus):
            raise InvalidArgument(f"GPU indexes repeat: {list(gpus)}", field="gpu_indexes")
        if share and len(gpus) != 1:
            raise InvalidArgument(
                f"a GPU share ({share}%) runs on exactly one GPU, got indexes {list(gpus)}",
                field="gpu_indexes",
            )
        missing = sorted(set(gpus) - have)
        if missing:
            raise InvalidArgument(
                f"GPU {missing[0]} is not on node {self.node_id} (it has {len(have)} GPUs)",
                field="gpu_indexes",
            )

    def _stop_task(self, msg: Any) -> Any:
        runner = self.runner
        cid = msg.command_id
        try:
            ref = TaskRef.from_proto(msg.task)
        except InvalidArgument as exc:
            log.warning("node %s: StopTask %s refused: %s", self.node_id, cid, exc)
            return common_pb2.CommandAck(command_id=cid, ok=False, error=f"invalid StopTask: {exc}")
        grace = msg.grace_s if msg.grace_s > 0 else self.config.stop_grace_s
        before = runner.get(ref)
        try:
            status = runner.stop(ref, grace_s=grace, reason=msg.reason or "stopped by the sub-domain")
        except OSError as exc:
            error = f"cannot record the stop: {exc.strerror or exc}"
            return common_pb2.CommandAck(command_id=cid, ok=False, error=error)
        if before is not None and before.terminal:
            self._rereport(status)
        log.debug("task %s: StopTask %s (%s)", ref, cid, msg.reason)
        return common_pb2.CommandAck(command_id=cid, ok=True)

    def _ack_tasks(self, msg: Any) -> None:
        refs: list[TaskRef] = []
        for r in msg.tasks:
            try:
                refs.append(TaskRef.from_proto(r))
            except InvalidArgument:
                continue
        forgotten = self.runner.ack(refs)
        if forgotten:
            assert self._planner is not None
            self._planner.handle(TasksForgotten(tuple(forgotten)))

    async def _fetch_log(self, msg: Any) -> Any:
        req = msg.request
        ref = TaskRef.of(req.task)
        chunk = await asyncio.to_thread(
            self.runner.read_log, ref, req.stream, int(req.offset), int(req.max_bytes)
        )
        return common_pb2.LogReply(request_id=msg.request_id, chunk=chunk.to_proto())

    def _on_task_change(self, status: TaskStatus) -> None:
        if self._planner is not None:
            self._planner.handle(TaskChanged(status))
            self._wake.set()
        if status.state.terminal:
            # What is on local storage changes through tasks (DSDK workers store dataset shards):
            # rescan soon after one ends, not only at the next full-sync interval.
            self._rescan.set()


def _lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the state directory: a second agent there would take our tasks
    for those of a previous run (re-adopt them, or kill them under another node id)."""
    path = state_dir / "agent.lock"
    # 0600: the state directory is traversable by task users; what the agent keeps there is its own.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    f = open(fd, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the agent's lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise FailedPrecondition(
            f"the state directory {state_dir} is in use by another node agent (pid {holder})"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


async def _read_within(call: Any, timeout: float) -> Any:
    """``call.read()`` with a deadline. Unlike ``asyncio.wait_for`` (3.11), a read that fails
    while we are being cancelled does not leave an unretrieved exception behind."""
    read = asyncio.ensure_future(call.read())
    try:
        done, _ = await asyncio.wait({read}, timeout=timeout)
    finally:
        read.add_done_callback(_consume_outcome)
        if not read.done():
            read.cancel()
    if not done:
        raise TimeoutError
    return read.result()


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _code_name(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else "UNKNOWN"


#: How a stream ends when the sub-domain refused the node for being full (``max_nodes``): the one
#: refusal that moves an agent to its next sub-domain at once. Any other RESOURCE_EXHAUSTED (a
#: registration rate limit, gRPC core's "Too many pending requests" in a reconnect storm) is
#: transient and retried on the same sub-domain.
FULL = "FULL"


def stream_end_code(exc: grpc.RpcError) -> str:
    """:data:`FULL` for a sub-domain's full refusal (marked by its reason), else the status name."""
    code = _code_name(exc)
    if code == "RESOURCE_EXHAUSTED" and error_reason(exc) == SubDomainFull.reason:
        return FULL
    return code


def _end_requests(queue: asyncio.Queue[Any]) -> None:
    """Drop whatever was not sent and queue the end-of-stream marker."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


async def _outbound(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """The request stream: whatever the agent queues, until ``None`` half-closes it."""
    while True:
        msg = await queue.get()
        if msg is None:
            return
        yield msg


def probe_reply(probe: Any) -> Any:
    """The answer to a sub-domain's ``Probe``: proof that this agent is alive, sent at once."""
    return agent_pb2.AgentMessage(probe_reply=agent_pb2.ProbeReply(nonce=probe.nonce))


def _report_message(incarnation: str, report: SendReport, sent_at: float) -> Any:
    """``report`` as an ``AgentMessage``; ``sent_at`` (unix seconds) lets the sub-domain measure lag."""
    body = agent_pb2.AgentReport(
        incarnation=incarnation,
        seq=report.seq,
        full=report.full,
        tasks=[s.to_proto() for s in report.tasks],
        sent_at=sent_at,
    )
    if report.usage is not None:
        body.usage.CopyFrom(report.usage.to_proto())
    if report.health is not None:
        body.health.CopyFrom(report.health.to_proto())
    return agent_pb2.AgentMessage(report=body)
