"""The sub-domain manager: wires the pure state machines to gRPC, the store and timers.

Decisions are made by :class:`NodeRegistry` and :class:`TaskTable` (pure); this module turns
messages into their events and runs the effects they return, in order: store writes first (batched
into transactions), then commands to agents, statuses to the master, and acks that depend on the
writes. Effect lists run one at a time in the order they were computed, so the store never sees a
newer record overwritten by an older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc.aio

from domainos.api.v1 import agent_pb2, agent_pb2_grpc, common_pb2, subdomain_pb2
from domainos.clock import Clock, SystemClock
from domainos.config import open_transport
from domainos.errors import DomainOSError, FailedPrecondition, InvalidArgument, StoreError, Unavailable
from domainos.ids import new_incarnation, new_request_id
from domainos.model import NodeHealth, NodeInventory, NodeUsage, TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.ratelimit import RateLimiter
from domainos.rpc import bind, create_server
from domainos.store import AsyncStore, Op, delete_op, open_store, put_op

from ._config import SubDomainConfig
from ._health import HealthConfig, HealthPolicy, Verdict
from ._metrics import DETECTION_BUCKETS, LagHistogram, MetricsServer, MetricsSnapshot
from ._registry import (
    DEAD,
    READY,
    STATES,
    Cordon,
    NodeDead,
    NodeEvent,
    NodeForgotten,
    NodeReady,
    NodeRecord,
    NodeRegistry,
    NodeSuspect,
    Summary,
)
from ._reservations import ReplyMaster, Reservations, reservation_specs
from ._service import AgentConn, AgentGatewayService
from ._tasks import AckAgent, Effect, Forward, Persist, StartOnAgent, StopOnAgent, TaskTable
from ._upstream import Upstream

log = logging.getLogger(__name__)

#: How often deadlines (silent / probed / disconnected nodes) are checked; a detection takes up to
#: two ticks more than ``silent_after_s + probe_timeout_s``. A tick costs O(due entries).
TICK_INTERVAL_S = 0.2
#: A tick later than this (the event loop was blocked, so messages waited unread) gives every node
#: that much more time (``NodeRegistry.stalled``) ...
STALL_TOLERANCE_S = 0.1
#: ... and so does a tick interval in which the process used this much CPU (of one core), after
#: another such interval: the loop has not idled for two ticks, so messages may have waited unread
#: (behind a burst of registrations, say).
SATURATED_CPU = 0.9
#: How long a FetchTaskLog waits for the node's answer.
LOG_TIMEOUT_S = 10.0
#: Most log fetches in flight at once.
MAX_PENDING_LOGS = 1024
#: Store operations per transaction when writing a batch of transitions.
TXN_BATCH = 100
#: A ``PlaceTask`` does not wait for its effects while fewer than this many effect lists are
#: queued (the master's commands then run as groups: one store write for many placements).
MAX_QUEUED_EFFECT_LISTS = 256
#: Most effect lists run as one group (their leading store writes in one write).
EFFECT_GROUP_MAX = 256
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000


@dataclass(frozen=True, slots=True)
class PersistNode:
    """Write (or, when ``record`` is None, delete) a node's store record."""

    node_id: str
    record: dict[str, Any] | None


_AnyEffect = Effect | PersistNode | ReplyMaster


@dataclass(slots=True)
class _PendingLog:
    master_request_id: str
    node_id: str
    future: asyncio.Future[Any]


class SubDomainManager:
    """One sub-domain: agents connect to it; it connects to the master.

    Use as an async context manager, or call :meth:`start` and :meth:`shutdown`.
    """

    def __init__(self, config: SubDomainConfig, *, clock: Clock | None = None) -> None:
        config.validate()
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.incarnation = new_incarnation()
        self.registry = NodeRegistry(
            config.id,
            max_nodes=config.max_nodes,
            silent_after_s=config.silent_after_s,
            dead_after_s=config.dead_after_s,
            probe_timeout_s=config.probe_timeout_s,
        )
        self.tasks = TaskTable(config.id, self.registry)
        self.reservations = Reservations(config.id, self.registry, self.tasks)
        self.health = HealthPolicy(
            HealthConfig(
                auto=config.health_auto,
                risk_threshold=config.health_risk_threshold,
                window_s=config.health_window_s,
            )
        )
        #: Nodes drained gracefully -> when the tasks let finish are moved too (monotonic).
        self._draining: dict[str, float] = {}
        #: Nodes cordoned, by cause: critical, risk, admin.
        self.cordons: Counter[str] = Counter()
        #: Since when (monotonic) the master has been unreachable, and the absence at which the
        #: next replaceable task is to be stopped (fencing; ``inf``: none).
        self._master_away_since: float | None = None
        self._fence_due = 0.0
        self._prefix = f"/domainos/subdomains/{config.id}/"
        self._store: AsyncStore | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics: MetricsServer | None = None
        self._upstream: Upstream | None = None
        self._conns: dict[str, AgentConn] = {}
        self._tokens = itertools.count(1)
        self._effects: asyncio.Queue[tuple[Sequence[_AnyEffect], asyncio.Future[None]]] = asyncio.Queue()
        self._effects_runner: asyncio.Task[Any] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._pending_logs: dict[str, _PendingLog] = {}
        self._started = False
        self._closing = False
        self._closed = False
        self.listen_address = ""
        self.advertise_address = ""
        self.metrics_address = ""
        # counters read by the metrics collector
        self.registrations = 0
        self.refused: Counter[str] = Counter()
        self.reports_received = 0
        self.probes_sent = 0
        self.probes_answered = 0
        #: Stalled or saturated tick intervals (each extended node deadlines), and their seconds.
        self.stalls = 0
        self.stalled_s = 0.0
        #: Receive time minus each report's ``sent_at``.
        self.report_lag = LagHistogram()
        #: Nodes declared dead, and from the last message heard from each to its death.
        self.node_failures = 0
        self.detection = LagHistogram(DETECTION_BUCKETS)
        self._nonces = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def start(self) -> dict[str, Any]:
        """Open the store, reload what it holds, listen for agents, connect to the master.

        Returns the ready-file facts: ``id``, ``region``, ``listen``, ``advertise``, ``metrics``,
        ``incarnation``.
        """
        if self._started:
            raise RuntimeError("SubDomainManager.start() called twice")
        self._started = True
        cfg = self.config
        try:
            tls = open_transport(cfg.tls, role="subdomain", ident=cfg.id, log=log)
            store = await asyncio.to_thread(open_store, cfg.store)
            self._store = AsyncStore(store)
            self._effects_runner = self._spawn(self._run_effect_lists(), "effects")
            await self._reload()
            self._server = create_server()
            agent_pb2_grpc.add_AgentGatewayServicer_to_server(
                AgentGatewayService(
                    self,
                    secure=tls is not None,
                    messages=RateLimiter(
                        cfg.agent_message_rate_per_s, cfg.agent_message_burst, clock=self.clock
                    ),
                    registrations=RateLimiter(cfg.register_rate_per_s, cfg.register_burst, clock=self.clock),
                ),
                self._server,
            )
            host = cfg.listen.rpartition(":")[0]
            port = bind(self._server, cfg.listen, tls)
            await self._server.start()
            shown = "127.0.0.1" if host in ("0.0.0.0", "[::]", "::", "") else host
            self.listen_address = f"{shown}:{port}"
            self.advertise_address = cfg.advertise or self.listen_address
            if cfg.metrics_listen:
                self._metrics = MetricsServer(self.metrics_snapshot)
                mport = await asyncio.to_thread(self._metrics.start, cfg.metrics_listen)
                self.metrics_address = f"{cfg.metrics_listen.rpartition(':')[0]}:{mport}"
            self._spawn(self._ticker(), "ticker")
            if cfg.master:
                self._upstream = Upstream(
                    self,
                    cfg.master,
                    incarnation=self.incarnation,
                    summary_interval_s=cfg.summary_interval_s,
                    tls=tls,
                )
                self._spawn(self._upstream.run(), "upstream")
        except BaseException:
            await self.shutdown()
            raise
        log.info(
            "sub-domain %s (region %s) listening on %s; master %s; %d nodes and %d tasks reloaded",
            cfg.id,
            cfg.region,
            self.listen_address,
            cfg.master or "none (standalone)",
            len(self.registry.nodes),
            len(self.tasks),
        )
        return {
            "id": cfg.id,
            "region": cfg.region,
            "listen": self.listen_address,
            "advertise": self.advertise_address,
            "metrics": self.metrics_address,
            "incarnation": self.incarnation,
        }

    async def shutdown(self) -> None:
        """Stop everything; idempotent. Agent streams end with UNAVAILABLE so agents reconnect."""
        if self._closed or self._closing:
            return
        self._closing = True
        for conn in list(self._conns.values()):
            conn.close(Unavailable(f"sub-domain {self.config.id} is shutting down"))
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background.clear()
        while not self._effects.empty():  # release callers waiting on lists that will not run
            _, future = self._effects.get_nowait()
            if not future.done():
                future.set_result(None)
        if self._server is not None:
            await self._server.stop(grace=0.5)
        for pending in self._pending_logs.values():
            if not pending.future.done():
                pending.future.cancel()
        self._pending_logs.clear()
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.stop)
        if self._store is not None:
            with contextlib.suppress(StoreError):
                await self._store.close()
        self._closed = True
        log.info("sub-domain %s stopped", self.config.id)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"subdomain-{self.config.id}-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- properties tests and operators poll -----------------------------------------------------

    @property
    def connected_to_master(self) -> bool:
        return self._upstream is not None and self._upstream.connected

    @property
    def nodes_ready(self) -> int:
        return self.registry.count(READY)

    @property
    def nodes_suspect(self) -> int:
        return self.registry.count("suspect")

    @property
    def nodes_dead(self) -> int:
        return self.registry.count(DEAD)

    def node_state(self, node_id: str) -> str | None:
        node = self.registry.get(node_id)
        return node.view_state if node else None

    def task_status(self, key: TaskRef) -> TaskStatus | None:
        entry = self.tasks.get(key)
        return entry.status if entry else None

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Numbers for the collector (called on the metrics thread: plain lookups only)."""
        lag_buckets, lag_sum = self.report_lag.snapshot()
        detection_buckets, detection_sum = self.detection.snapshot()
        return MetricsSnapshot(
            subdomain_id=self.config.id,
            nodes={s: self.registry.count(s) for s in STATES},
            tasks={s.label: self.tasks.count(s) for s in TaskState if s != TaskState.UNSPECIFIED},
            registrations=self.registrations,
            refused={r: self.refused.get(r, 0) for r in ("full", "duplicate", "invalid")},
            placements=self.tasks.placements,
            placements_rejected=self.tasks.rejections,
            reports_received=self.reports_received,
            master_connected=self.connected_to_master,
            reservations_held=self.reservations.held_count,
            reservations={
                "accepted": self.reservations.accepted,
                "refused": self.reservations.refused,
                "committed": self.reservations.committed,
                "expired": self.reservations.expired,
            },
            probes_sent=self.probes_sent,
            probes_answered=self.probes_answered,
            loop_stalls=self.stalls,
            loop_stalled_s=self.stalled_s,
            nodes_cordoned=self.registry.cordoned,
            cordons=dict(self.cordons),
            tasks_drained=self.tasks.drained,
            report_lag_buckets=lag_buckets,
            report_lag_sum=lag_sum,
            node_failures=self.node_failures,
            detection_buckets=detection_buckets,
            detection_sum=detection_sum,
        )

    # -- store -----------------------------------------------------------------------------------

    def _task_key(self, job_id: str, task_index: int) -> str:
        return f"{self._prefix}tasks/{job_id}/{task_index}"

    def _node_key(self, node_id: str) -> str:
        return f"{self._prefix}nodes/{node_id}"

    def _node_record(self, node: NodeRecord) -> dict[str, Any]:
        return {
            "inventory": node.inventory.to_json(),
            "incarnation": node.incarnation,
            "state": node.state,
            "since": self.clock.time(),
            **({"cordon": node.cordon.to_json()} if node.cordon is not None else {}),
        }

    async def _reload(self) -> None:
        assert self._store is not None
        now = self.clock.monotonic()
        for kv in await self._store.range(f"{self._prefix}nodes/"):
            try:
                data = json.loads(kv.value)
                inv = NodeInventory.from_json(data["inventory"])
                cordon = Cordon.from_json(data.get("cordon"))
                self.registry.restore(
                    inv,
                    str(data.get("incarnation", "")),
                    dead=data.get("state") == DEAD,
                    now=now,
                    cordon=cordon,
                )
                if cordon is not None and cordon.draining:
                    # A drain was under way: what it let run may run its timeout again.
                    self._draining[inv.node_id] = now + self.config.drain_timeout_s
            except (ValueError, KeyError, TypeError, DomainOSError) as exc:
                log.error("ignoring a corrupt node record %s: %s", kv.key, exc)
        effects: list[Effect] = []
        for kv in await self._store.range(f"{self._prefix}tasks/"):
            try:
                effects += self.tasks.restore(json.loads(kv.value), self.clock.time())
            except (ValueError, KeyError, TypeError, DomainOSError) as exc:
                log.error("ignoring a corrupt task record %s: %s", kv.key, exc)
        self.reservations.rebuild_committed(now)
        await self._run_effects(effects)

    async def _write(self, batch: Sequence[Persist | PersistNode]) -> bool:
        assert self._store is not None
        latest: dict[str, Op] = {}  # the last write of a key wins (etcd refuses a key twice per txn)
        for eff in batch:
            key = (
                self._task_key(eff.job_id, eff.task_index)
                if isinstance(eff, Persist)
                else self._node_key(eff.node_id)
            )
            latest.pop(key, None)
            if eff.record is None:
                latest[key] = delete_op(key)
            else:
                latest[key] = put_op(key, json.dumps(eff.record, separators=(",", ":")).encode())
        ops = list(latest.values())
        try:
            for i in range(0, len(ops), TXN_BATCH):
                await self._store.txn([], ops[i : i + TXN_BATCH])
        except StoreError as exc:
            log.error("store write of %d records failed: %s", len(ops), exc)
            return False
        return True

    # -- effects ---------------------------------------------------------------------------------

    async def _run_effects(self, effects: Sequence[_AnyEffect], *, wait: bool = True) -> None:
        """Hand an effect list to the runner and (``wait``) wait until it ran.

        Lists run in the order they were submitted (= computed), by one background coroutine, so
        a caller that is cancelled (its agent stream ended) does not cut a list in half: the
        statuses it carries still reach the master. ``wait=False`` (the master's ``PlaceTask``s,
        one producer) returns at once unless :data:`MAX_QUEUED_EFFECT_LISTS` lists are queued,
        which bounds the queue and lets the runner write many placements in one transaction.
        """
        if not effects or self._closing or self._effects_runner is None:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._effects.put_nowait((effects, future))
        if wait or self._effects.qsize() >= MAX_QUEUED_EFFECT_LISTS:
            await asyncio.shield(future)

    async def _run_effect_lists(self) -> None:
        while True:
            group = [await self._effects.get()]
            # Group commit: lists queued meanwhile whose store writes all come first run together,
            # those writes in one batch (a list that writes after a send runs on its own).
            if _writes_lead(group[0][0]):
                while len(group) < EFFECT_GROUP_MAX and not self._effects.empty():
                    group.append(self._effects.get_nowait())
                    if not _writes_lead(group[-1][0]):
                        break
            alone = [] if _writes_lead(group[-1][0]) else [group.pop()]
            try:
                if group:
                    await self._execute_group([effects for effects, _ in group])
                for effects, _ in alone:
                    await self._execute(effects)
            except Exception:
                log.exception("running %d effect lists failed", len(group) + len(alone))
            finally:
                for _, future in group + alone:
                    if not future.done():
                        future.set_result(None)

    async def _execute_group(self, lists: Sequence[Sequence[_AnyEffect]]) -> None:
        """Lists whose store writes all lead: every list's writes in one batch, then each list's
        other effects in order (acks only if the batch is durable, as in :meth:`_execute`)."""
        if len(lists) == 1:
            await self._execute(lists[0])
            return
        writes: list[Persist | PersistNode] = []
        rest: list[_AnyEffect] = []
        for effects in lists:
            n = _leading_writes(effects)
            writes.extend(effects[:n])  # type: ignore[arg-type]
            rest.extend(effects[n:])
        durable = True
        if writes:
            durable = self._store is not None and not self._closed and await self._write(writes)
        for eff in rest:
            self._apply(eff, durable)

    async def _execute(self, effects: Sequence[_AnyEffect]) -> None:
        """Run effects in order; consecutive store writes go in one transaction.

        Acks to agents run only if every write before them succeeded (ack once durable).
        """
        durable = True
        i = 0
        while i < len(effects):
            eff = effects[i]
            if isinstance(eff, (Persist, PersistNode)):
                j = i
                while j < len(effects) and isinstance(effects[j], (Persist, PersistNode)):
                    j += 1
                if self._store is not None and not self._closed:
                    durable = await self._write(effects[i:j]) and durable  # type: ignore[arg-type]
                else:
                    durable = False
                i = j
                continue
            self._apply(eff, durable)
            i += 1

    def _apply(self, eff: _AnyEffect, durable: bool) -> None:
        if isinstance(eff, ReplyMaster):
            sent = self._upstream is not None and self._upstream.send_nowait(
                subdomain_pb2.SubDomainMessage(reservation=eff.to_proto())
            )
            log.info(
                "reservation %s: %s%s%s",
                eff.reservation_id,
                subdomain_pb2.ReservationOutcome.Name(eff.outcome)
                .removeprefix("RESERVATION_OUTCOME_")
                .lower(),
                f" ({eff.reason})" if eff.reason else "",
                "" if sent else " [no master session: not sent]",
            )
        elif isinstance(eff, Forward):
            if self._upstream is not None:
                self._upstream.forward(eff.status)
        elif isinstance(eff, StartOnAgent):
            cmd = agent_pb2.AgentCommand(
                start_task=agent_pb2.StartTask(
                    command_id=eff.command_id, spec=eff.spec.to_proto(), gpu_indexes=list(eff.gpu_indexes)
                )
            )
            sent = self._send_agent(eff.node_id, cmd)
            log.info(
                "start task %s on node %s (command %s, gpus %s)%s",
                eff.spec.ref,
                eff.node_id,
                eff.command_id,
                list(eff.gpu_indexes),
                "" if sent else ": node not connected, will resend on reconnect",
            )
        elif isinstance(eff, StopOnAgent):
            cmd = agent_pb2.AgentCommand(
                stop_task=agent_pb2.StopTask(
                    command_id=eff.command_id, task=eff.key.to_proto(), grace_s=eff.grace_s, reason=eff.reason
                )
            )
            sent = self._send_agent(eff.node_id, cmd)
            log.info(
                "stop task %s on node %s (command %s): %s%s",
                eff.key,
                eff.node_id,
                eff.command_id,
                eff.reason,
                "" if sent else " [not delivered]",
            )
        elif isinstance(eff, AckAgent):
            if not durable:
                log.warning(
                    "not acking tasks %s to node %s: their state is not stored",
                    [str(k) for k in eff.keys],
                    eff.node_id,
                )
                return
            self._send_agent(
                eff.node_id,
                agent_pb2.AgentCommand(ack_tasks=agent_pb2.AckTasks(tasks=[k.to_proto() for k in eff.keys])),
            )

    def _send_agent(self, node_id: str, command: Any) -> bool:
        conn = self._conns.get(node_id)
        if conn is None:
            return False
        return conn.send(command)

    # -- node events -----------------------------------------------------------------------------

    def _node_effects(self, events: Sequence[NodeEvent]) -> list[_AnyEffect]:
        out: list[_AnyEffect] = []
        now = self.clock.time()
        for ev in events:
            if isinstance(ev, NodeReady):
                if ev.evicted:
                    out += self.reservations.lost_holds(
                        ev.node_id,
                        ev.evicted,
                        "re-registered with less capacity than the hold needs",
                        self.clock.monotonic(),
                    )
                node = self.registry.get(ev.node_id)
                if node is not None and (ev.joined or ev.inventory_changed):
                    out.append(PersistNode(ev.node_id, self._node_record(node)))
                log.info(
                    "node %s ready (incarnation %s%s%s)",
                    ev.node_id,
                    ev.incarnation,
                    ", joined" if ev.joined else "",
                    ", inventory changed" if ev.inventory_changed else "",
                )
            elif isinstance(ev, NodeSuspect):
                log.warning("node %s suspect: %s", ev.node_id, ev.why)
                if ev.probe:
                    self._probe(ev.node_id)
            elif isinstance(ev, NodeDead):
                log.warning("node %s dead: %s", ev.node_id, ev.why)
                node = self.registry.get(ev.node_id)
                self.node_failures += 1
                if node is not None:
                    self.detection.observe(node.state_since - node.last_report)
                    out.append(PersistNode(ev.node_id, self._node_record(node)))
                out += self.tasks.node_dead(ev.node_id, ev.why, now)
                out += self.reservations.lost_holds(
                    ev.node_id, None, f"died ({ev.why})", self.clock.monotonic()
                )
                conn = self._conns.pop(ev.node_id, None)
                if conn is not None:
                    conn.close(
                        Unavailable(
                            f"node {ev.node_id} was declared dead ({ev.why}); reconnect and register again"
                        )
                    )
                self._fail_logs(ev.node_id, f"node {ev.node_id} died")
            elif isinstance(ev, NodeForgotten):
                out.append(PersistNode(ev.node_id, None))
                self.health.forget(ev.node_id)
                self._draining.pop(ev.node_id, None)
        return out

    # -- health: cordon and drain ----------------------------------------------------------------

    def _check_health(self, node_id: str, usage: NodeUsage) -> list[_AnyEffect]:
        """Feed a usage report to the health policy; act on its verdict."""
        if not self.config.health_auto:
            return []
        node = self.registry.get(node_id)
        if node is None or node.state == DEAD:
            return []
        verdict = self.health.observe(
            node_id, usage, self.clock.monotonic(), cordoned=node.cordon is not None
        )
        return self._act_on(verdict) if verdict is not None else []

    def _task_failed(self, node_id: str, status: TaskStatus) -> list[_AnyEffect]:
        entry = self.tasks.get(status.ref)
        if not self.config.health_auto or entry is None or not entry.active or entry.node_id != node_id:
            return []  # a repeat of a failure already counted, or not ours
        node = self.registry.get(node_id)
        if node is None:
            return []
        verdict = self.health.task_failed(
            node_id, status.ref.job_id, self.clock.monotonic(), cordoned=node.cordon is not None
        )
        return self._act_on(verdict) if verdict is not None else []

    def _act_on(self, verdict: Verdict) -> list[_AnyEffect]:
        """Cordon the node; a critical verdict drains it now, a risk verdict gracefully."""
        node_id = verdict.node_id
        kind = "critical" if verdict.critical else "risk"
        self.cordons[kind] += 1
        deadline = 0.0 if verdict.critical else self.clock.monotonic() + self.config.drain_timeout_s
        cordon = Cordon(verdict.reason, "health", self.clock.time(), draining=True)
        node = self.registry.set_cordon(node_id, cordon)
        effects: list[_AnyEffect] = [PersistNode(node_id, self._node_record(node))]
        effects += self.tasks.drain(
            node_id,
            verdict.reason,
            grace_s=self.config.drain_grace_s,
            now=self.clock.time(),
            checkpointable_only=not verdict.critical,
        )
        if deadline:
            self._draining[node_id] = deadline
        log.warning(
            "node %s cordoned by the health policy and drained %s: %s (%d tasks moving)",
            node_id,
            "now" if verdict.critical else f"gracefully (the rest in {self.config.drain_timeout_s:.0f}s)",
            verdict.reason,
            sum(1 for e in effects if isinstance(e, StopOnAgent | Forward)),
        )
        return effects

    def _fence(self) -> list[_AnyEffect]:
        """While the master is unreachable, stop the tasks it is about to run elsewhere."""
        now = self.clock.monotonic()
        if self.connected_to_master:
            self._master_away_since = None
            self._fence_due = 0.0
            return []
        if self._master_away_since is None:
            self._master_away_since = now
        away = now - self._master_away_since
        if away < self._fence_due or away <= 0:
            return []
        fenced, self._fence_due = self.tasks.fence(away, self.clock.time())
        effects: list[_AnyEffect] = list(fenced)
        if effects:
            log.warning(
                "cut off from the master for %.0fs: stopped %d tasks it runs elsewhere now (fencing)",
                away,
                sum(1 for e in effects if isinstance(e, StopOnAgent | Forward)),
            )
        return effects

    def _drain_deadlines(self) -> list[_AnyEffect]:
        """Graceful drains whose time is up: move what is still running. O(draining nodes)."""
        now = self.clock.monotonic()
        effects: list[_AnyEffect] = []
        for node_id, deadline in list(self._draining.items()):
            node = self.registry.get(node_id)
            if node is None or node.cordon is None or not node.cordon.draining:
                del self._draining[node_id]
            elif deadline <= now:
                del self._draining[node_id]
                effects += self.tasks.drain(
                    node_id,
                    f"drain timeout ({self.config.drain_timeout_s:.0f}s): {node.cordon.reason}",
                    grace_s=self.config.drain_grace_s,
                    now=self.clock.time(),
                )
        return effects

    async def _node_admin(self, cmd: Any) -> None:
        """``NodeAdmin``: an admin cordons, drains or uncordons one node (answered by id)."""
        reply = subdomain_pb2.NodeAdminReply(request_id=cmd.request_id)
        node = self.registry.get(cmd.node_id)
        if node is None:
            await self._send_admin_reply(reply)
            return
        reply.found = True
        effects: list[_AnyEffect] = []
        by = f" by {cmd.by}" if cmd.by else ""
        action = cmd.action
        reason = cmd.reason or f"requested{by}"
        if action == common_pb2.NODE_ACTION_UNCORDON:
            if node.health.cordoned:
                reply.error = (
                    f"node {node.node_id} still reports UNHEALTHY ({'; '.join(node.health.conditions)}); "
                    "it stays cordoned until its agent reports it healthy (restart the agent after the repair)"
                )
            elif node.cordon is not None:
                self.registry.set_cordon(node.node_id, None)
                self._draining.pop(node.node_id, None)
                self.health.uncordoned(node.node_id, node.usage, self.clock.monotonic())
                effects.append(PersistNode(node.node_id, self._node_record(node)))
                log.warning("node %s uncordoned%s: %s", node.node_id, by, reason)
        elif action in (common_pb2.NODE_ACTION_CORDON, common_pb2.NODE_ACTION_DRAIN):
            drain = action == common_pb2.NODE_ACTION_DRAIN
            old = node.cordon
            mine = old is not None and old.by == "admin"
            if not cmd.reason and old is not None and mine:
                reason = old.reason  # a drain after a cordon keeps the cordon's reason
            draining = drain or (old is not None and old.draining)
            if old is None or not mine or old.reason != reason or old.draining != draining:
                at = old.at if old is not None and mine else self.clock.time()
                self.registry.set_cordon(node.node_id, Cordon(reason, "admin", at, draining=draining))
                self.cordons["admin"] += 1 if old is None else 0
                effects.append(PersistNode(node.node_id, self._node_record(node)))
            if drain:
                self._draining.pop(node.node_id, None)
                grace = cmd.grace_s if cmd.grace_s > 0 else self.config.drain_grace_s
                stops = self.tasks.drain(node.node_id, reason, grace_s=grace, now=self.clock.time())
                reply.tasks_stopped = sum(1 for e in stops if isinstance(e, StopOnAgent | Forward))
                effects += stops
            log.warning(
                "node %s %s%s: %s (%d tasks moving)",
                node.node_id,
                "drained" if drain else "cordoned",
                by,
                reason,
                reply.tasks_stopped,
            )
        else:
            reply.error = f"unknown node action {action}"
        if effects:
            await self._run_effects(effects)
        reply.node.CopyFrom(self.node_view(node))
        await self._send_admin_reply(reply)

    async def _send_admin_reply(self, reply: Any) -> None:
        if self._upstream is not None:
            await self._upstream.send(subdomain_pb2.SubDomainMessage(node_admin=reply))

    def _probe(self, node_id: str) -> None:
        """Ask a silent node to answer at once (``Probe``); any message from it revives it."""
        nonce = next(self._nonces)
        if self._send_agent(node_id, agent_pb2.AgentCommand(probe=agent_pb2.Probe(nonce=nonce))):
            self.probes_sent += 1

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        last, last_cpu, last_clock = loop.time(), time.process_time(), self.clock.monotonic()
        saturated = False
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            # The loop's own (real) time: a stall is real time in which nothing was read.
            now, cpu, clock_now = loop.time(), time.process_time(), self.clock.monotonic()
            wall = now - last
            was_saturated, saturated = saturated, cpu - last_cpu >= SATURATED_CPU * wall
            stall = wall if saturated and was_saturated else wall - TICK_INTERVAL_S
            # Never more than the registry's clock moved (a test's fake clock jumps, or stands still).
            stall = min(stall, clock_now - last_clock)
            last, last_cpu, last_clock = now, cpu, clock_now
            try:
                if stall > STALL_TOLERANCE_S:
                    self.stalls += 1
                    self.stalled_s += stall
                    self.registry.stalled(clock_now, stall)
                    log.log(
                        logging.WARNING if stall >= 1.0 else logging.DEBUG,
                        "event loop stalled or saturated for %.2fs; node deadlines extended by it",
                        stall,
                    )
                self.reservations.tick(self.clock.monotonic())
                events = self.registry.tick(self.clock.monotonic())
                if events:
                    await self._run_effects(self._node_effects(events))
                if self._draining:
                    await self._run_effects(self._drain_deadlines())
                if self.config.master:
                    await self._run_effects(self._fence())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("deadline check failed")

    # -- agents (called by the servicer) ---------------------------------------------------------

    async def agent_register(self, register: Any, peer: str, conn: AgentConn | None) -> AgentConn:
        """A ``Register``: admit (or refuse) the node, answer ``Registered``, reconcile its tasks."""
        if self._closing:
            raise Unavailable(f"sub-domain {self.config.id} is shutting down")
        try:
            inventory = NodeInventory.from_proto(register.inventory)
            if not register.incarnation:
                raise InvalidArgument("is required", field="register.incarnation")
            reported = [TaskStatus.from_proto(t) for t in register.tasks]
            usage = (
                NodeUsage.from_proto(register.usage, "register.usage") if register.HasField("usage") else None
            )
        except InvalidArgument:
            self.refused["invalid"] += 1
            raise
        health = NodeHealth.from_proto(register.health) if register.HasField("health") else None
        node_id = inventory.node_id
        if conn is not None and conn.node_id != node_id:
            raise InvalidArgument(
                f"this stream registered node {conn.node_id}; it cannot register {node_id}",
                field="register.inventory.node_id",
            )
        token = conn.token if conn is not None else next(self._tokens)
        try:
            events = self.registry.register(
                inventory,
                register.incarnation,
                self.clock.monotonic(),
                conn_token=token,
                usage=usage,
                health=health,
            )
        except DomainOSError as err:
            self.refused["full" if err.code == "RESOURCE_EXHAUSTED" else "duplicate"] += 1
            log.warning("refused registration of node %s from %s: %s", node_id, peer, err)
            raise
        self.registrations += 1
        if conn is None:
            conn = AgentConn(node_id, token, register.incarnation, peer)
        conn.incarnation = register.incarnation
        conn.last_seq = 0
        self._conns[node_id] = conn
        conn.send(
            agent_pb2.AgentCommand(
                registered=agent_pb2.Registered(
                    node_id=node_id,
                    subdomain_id=self.config.id,
                    region=self.config.region,
                    report_interval_s=self.config.report_interval_s,
                    full_sync_interval_s=self.config.full_sync_interval_s,
                    heartbeat_interval_s=self.config.heartbeat_interval_s,
                )
            )
        )
        evicted = next((e.evicted for e in events if isinstance(e, NodeReady)), ())
        effects: list[_AnyEffect] = self._node_effects(events)
        effects += self.tasks.reconcile(
            node_id, reported, self.clock.time(), incarnation=register.incarnation, evicted=evicted
        )
        if usage is not None:
            effects += self._check_health(node_id, usage)
        log.info(
            "node %s registered from %s (incarnation %s, %d tasks reported, %d live nodes)",
            node_id,
            peer,
            register.incarnation,
            len(reported),
            self.registry.live_count,
        )
        try:
            await self._run_effects(effects)
        except BaseException:
            # The stream died before the servicer took the connection over: release the node id
            # now, or a reconnect would be refused as a duplicate until silence is detected.
            self.agent_disconnected(conn)
            raise
        return conn

    async def agent_message(self, conn: AgentConn, message: Any) -> None:
        """Any message after ``Register`` on an agent's stream."""
        if not self.registry.is_current(conn.node_id, conn.token):
            conn.close(Unavailable(f"node {conn.node_id}: this stream is no longer the node's connection"))
            return
        kind = message.WhichOneof("body")
        if kind == "report":
            await self._on_report(conn, message.report)
        elif kind == "ack":
            ack = message.ack
            if not ack.ok:
                log.warning("node %s refused command %s: %s", conn.node_id, ack.command_id, ack.error)
            effects = self.tasks.agent_ack(conn.node_id, ack.command_id, ack.ok, ack.error, self.clock.time())
            await self._run_effects(effects)
        elif kind == "probe_reply":
            events = self.registry.report(conn.node_id, self.clock.monotonic(), conn_token=conn.token)
            if events:
                self.probes_answered += 1
                log.info("node %s answered probe %d", conn.node_id, message.probe_reply.nonce)
                await self._run_effects(self._node_effects(events))
        elif kind == "log_reply":
            pending = self._pending_logs.pop(message.log_reply.request_id, None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(message.log_reply.chunk)
        elif kind == "register":
            await self.agent_register(message.register, conn.peer, conn)
        else:
            log.debug("node %s sent an empty message", conn.node_id)

    async def _on_report(self, conn: AgentConn, report: Any) -> None:
        self.reports_received += 1
        if report.sent_at:
            self.report_lag.observe(self.clock.time() - report.sent_at)
        if report.incarnation and report.incarnation != conn.incarnation:
            log.debug(
                "node %s: report from incarnation %s ignored (registered %s)",
                conn.node_id,
                report.incarnation,
                conn.incarnation,
            )
            return
        if report.seq and conn.last_seq and report.seq != conn.last_seq + 1:
            log.debug("node %s: report seq gap %d -> %d", conn.node_id, conn.last_seq, report.seq)
        conn.last_seq = report.seq
        usage = None
        if report.HasField("usage"):
            try:
                usage = NodeUsage.from_proto(report.usage, "report.usage")
            except InvalidArgument as exc:  # keep the last good usage; the rest of the report counts
                log.warning("node %s reported a malformed usage: %s", conn.node_id, exc)
        events = self.registry.report(
            conn.node_id,
            self.clock.monotonic(),
            conn_token=conn.token,
            usage=usage,
            health=NodeHealth.from_proto(report.health) if report.HasField("health") else None,
        )
        if not events and not report.tasks and (usage is None or not usage.gpus):
            return  # a heartbeat (most reports): nothing else to do
        effects: list[_AnyEffect] = self._node_effects(events)
        if usage is not None and usage.gpus:
            effects += self._check_health(conn.node_id, usage)
        now = self.clock.time()
        for raw in report.tasks:
            try:
                status = TaskStatus.from_proto(raw)
            except InvalidArgument as exc:
                log.warning("node %s reported a malformed task status: %s", conn.node_id, exc)
                continue
            if status.state == TaskState.FAILED and status.exit_code and not status.drained:
                effects += self._task_failed(conn.node_id, status)
            effects += self.tasks.agent_status(conn.node_id, status, now)
        if effects:
            await self._run_effects(effects)

    def agent_disconnected(self, conn: AgentConn) -> None:
        """The stream ended (either side); a ready node becomes suspect."""
        conn.closed = True
        if self._conns.get(conn.node_id) is conn:
            del self._conns[conn.node_id]
        events = self.registry.disconnect(conn.node_id, conn.token, self.clock.monotonic())
        for ev in events:
            if isinstance(ev, NodeSuspect):
                log.warning("node %s suspect: %s", ev.node_id, ev.why)
        self._fail_logs(conn.node_id, f"node {conn.node_id} disconnected")

    # -- master (called by the upstream) ---------------------------------------------------------

    def summary(self) -> Summary:
        s = self.registry.summary()
        held = self.reservations.held_count
        return s if s.reservations_held == held else dataclasses.replace(s, reservations_held=held)

    def master_lost(self) -> None:
        """The master stream ended: uncommitted gang holds go with it."""
        dropped = self.reservations.master_lost(self.clock.monotonic())
        if dropped:
            log.warning("master stream lost: dropped %d uncommitted gang reservations", dropped)

    def build_hello(self, summary: Summary) -> Any:
        return subdomain_pb2.Hello(
            subdomain_id=self.config.id,
            region=self.config.region,
            incarnation=self.incarnation,
            address=self.advertise_address,
            max_nodes=self.config.max_nodes,
            tasks=[s.to_proto() for s in self.tasks.hello_tasks()],
            summary=summary.to_proto(),
            reservations=self.reservations.hello_states(),
        )

    async def _ack_master(self, command_id: str, ok: bool = True, error: str = "") -> None:
        if self._upstream is not None and command_id:
            await self._upstream.send(
                subdomain_pb2.SubDomainMessage(
                    ack=common_pb2.CommandAck(command_id=command_id, ok=ok, error=error)
                )
            )

    async def handle_master_command(self, command: Any) -> None:
        """One ``MasterCommand`` from the upstream stream."""
        kind = command.WhichOneof("body")
        try:
            if kind == "place_task":
                await self._place(command.place_task)
            elif kind == "place_tasks":
                for place in command.place_tasks.tasks:
                    await self._place_one_of_many(place)
            elif kind == "stop_task":
                await self._stop(command.stop_task)
            elif kind == "ack_tasks":
                keys = [TaskRef.from_proto(t) for t in command.ack_tasks.tasks]
                await self._run_effects(self.tasks.master_ack(keys))
                log.debug("master acked %d task states", len(keys))
            elif kind == "list_nodes":
                await self._list_nodes(command.list_nodes)
            elif kind == "node_admin":
                await self._node_admin(command.node_admin)
            elif kind == "fetch_log":
                await self._fetch_log(command.fetch_log)
            elif kind == "reserve":
                await self._reserve(command.reserve)
            elif kind == "commit":
                rid = command.commit.reservation_id
                log.info("commit reservation %s", rid)
                await self._run_effects(self.reservations.commit(rid, now=self.clock.monotonic()))
            elif kind == "release":
                rel = command.release
                log.info("release reservation %s: %s", rel.reservation_id, rel.reason or "no reason given")
                await self._run_effects(
                    self.reservations.release(
                        rel.reservation_id, rel.reason, now=self.clock.monotonic(), wall=self.clock.time()
                    )
                )
            elif kind == "welcome":
                log.debug("ignoring a repeated Welcome")
            else:
                log.warning("ignoring an unknown master command %r", kind)
        except DomainOSError as exc:
            log.warning("master command %s refused: %s", kind, exc)
            await self._ack_master(_command_id(command, kind), False, str(exc))
        except Exception:
            # A bug must not tear down the stream (every other command would suffer): log it and
            # tell the master this command failed.
            log.exception("master command %s failed", kind)
            await self._ack_master(
                _command_id(command, kind), False, f"internal error in sub-domain {self.config.id}"
            )

    async def _place_one_of_many(self, cmd: Any) -> None:
        """One task of a ``PlaceTasks``: placed like a ``PlaceTask``, acked only when refused."""
        try:
            await self._place(cmd, ack=False)
        except DomainOSError as exc:
            log.warning("place task (command %s) refused: %s", cmd.command_id, exc)
            await self._ack_master(cmd.command_id, False, str(exc))
        except Exception:
            log.exception("place task (command %s) failed", cmd.command_id)
            await self._ack_master(cmd.command_id, False, f"internal error in sub-domain {self.config.id}")

    async def _place(self, cmd: Any, *, ack: bool = True) -> None:
        spec = TaskSpec.from_proto(cmd.spec)
        holder = self.reservations.holder_of(spec.ref)
        if holder:
            raise FailedPrecondition(
                f"task {spec.ref} is held by gang reservation {holder}; commit or release it instead"
            )
        effects = self.tasks.place(spec, self.clock.time())
        status = next((e.status for e in effects if isinstance(e, Forward)), None)
        if status is not None and status.state == TaskState.REJECTED:
            log.info("place task %s (command %s) rejected: %s", spec.ref, cmd.command_id, status.message)
        elif status is not None:
            log.info(
                "place task %s (command %s) -> node %s: %s%s",
                spec.ref,
                cmd.command_id,
                status.node_id,
                status.state.label,
                f" ({status.message})" if status.message else "",
            )
        await self._run_effects(effects, wait=False)
        if ack:
            await self._ack_master(cmd.command_id)

    async def _reserve(self, cmd: Any) -> None:
        rid = cmd.reservation_id
        try:
            specs = reservation_specs(cmd)
        except InvalidArgument as exc:
            log.warning("reserve %s refused: %s", rid, exc)
            await self._run_effects(self.reservations.refuse_invalid(rid, str(exc), self.clock.monotonic()))
            return
        log.info("reserve %s: %d tasks for %.1f s", rid, len(specs), cmd.hold_s)
        await self._run_effects(
            self.reservations.reserve(
                rid, specs, cmd.hold_s, now=self.clock.monotonic(), wall=self.clock.time()
            )
        )

    async def _stop(self, cmd: Any) -> None:
        key = TaskRef.from_proto(cmd.task)
        log.info("stop task %s (command %s): %s", key, cmd.command_id, cmd.reason or "no reason given")
        effects = self.tasks.stop(key, grace_s=cmd.grace_s, reason=cmd.reason, now=self.clock.time())
        await self._run_effects(effects)
        await self._ack_master(cmd.command_id)

    def node_view(self, node: NodeRecord) -> Any:
        """The ``NodeView`` people see for one node."""
        age = self.clock.monotonic() - node.last_report
        view = common_pb2.NodeView(
            inventory=node.inventory.to_proto(),
            usage=node.usage.to_proto(),
            health=node.health.to_proto(),
            state=node.view_state,
            free=node.free.to_proto(),
            running_tasks=len(node.allocations),
            subdomain_id=self.config.id,
            region=self.config.region,
            last_report_at=self.clock.time() - age,
            incarnation=node.incarnation,
            risk=self.health.risk(node.node_id),
        )
        if node.cordon is not None:
            view.cordon_reason = node.cordon.reason
            view.cordoned_by = node.cordon.by
            view.cordoned_at = node.cordon.at
            view.draining = node.cordon.draining and bool(self.tasks.active_on(node.node_id))
        elif node.health.cordoned:
            view.cordon_reason = "unhealthy: " + "; ".join(node.health.conditions)
            view.cordoned_by = "health"
        return view

    async def _list_nodes(self, cmd: Any) -> None:
        size = cmd.page_size if cmd.page_size > 0 else DEFAULT_PAGE_SIZE
        nodes, nxt = self.registry.page(cmd.page_token, min(size, MAX_PAGE_SIZE))
        reply = subdomain_pb2.NodeListReply(
            request_id=cmd.request_id, nodes=[self.node_view(n) for n in nodes], next_page_token=nxt
        )
        if self._upstream is not None:
            await self._upstream.send(subdomain_pb2.SubDomainMessage(node_list=reply))

    async def _send_log_reply(self, request_id: str, chunk: Any) -> None:
        if self._upstream is not None:
            await self._upstream.send(
                subdomain_pb2.SubDomainMessage(
                    log_reply=common_pb2.LogReply(request_id=request_id, chunk=chunk)
                )
            )

    async def _fetch_log(self, cmd: Any) -> None:
        node_id = cmd.node_id
        if not node_id and cmd.request.HasField("task"):
            with contextlib.suppress(InvalidArgument):
                node_id = self.tasks.node_of(TaskRef.from_proto(cmd.request.task)) or ""
        conn = self._conns.get(node_id) if node_id else None
        error = ""
        if not node_id:
            error = f"no node known for this task in sub-domain {self.config.id}"
        elif conn is None or conn.closed:
            error = f"node {node_id} is not connected to sub-domain {self.config.id}"
        elif len(self._pending_logs) >= MAX_PENDING_LOGS:
            error = f"sub-domain {self.config.id} has too many log requests in flight; try again"
        if error:
            await self._send_log_reply(cmd.request_id, common_pb2.LogChunk(error=error))
            return
        local_id = new_request_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending_logs[local_id] = _PendingLog(cmd.request_id, node_id, future)
        assert conn is not None
        conn.send(
            agent_pb2.AgentCommand(fetch_log=agent_pb2.FetchLog(request_id=local_id, request=cmd.request))
        )
        log.debug("log request %s -> node %s as %s", cmd.request_id, node_id, local_id)
        self._spawn(self._await_log(local_id, cmd.request_id, node_id, future), f"log-{local_id}")

    async def _await_log(
        self, local_id: str, master_request_id: str, node_id: str, future: asyncio.Future[Any]
    ) -> None:
        try:
            chunk = await asyncio.wait_for(future, LOG_TIMEOUT_S)
        except TimeoutError:
            chunk = common_pb2.LogChunk(
                error=f"node {node_id} did not answer the log request within {LOG_TIMEOUT_S:.0f}s"
            )
        except asyncio.CancelledError:
            if self._closing:
                raise
            chunk = common_pb2.LogChunk(error=f"node {node_id} disconnected before answering")
        finally:
            self._pending_logs.pop(local_id, None)
        if isinstance(chunk, str):
            chunk = common_pb2.LogChunk(error=chunk)
        await self._send_log_reply(master_request_id, chunk)

    def _fail_logs(self, node_id: str, why: str) -> None:
        for local_id, pending in list(self._pending_logs.items()):
            if pending.node_id == node_id and not pending.future.done():
                pending.future.set_result(why)
                self._pending_logs.pop(local_id, None)


def _leading_writes(effects: Sequence[_AnyEffect]) -> int:
    """How many store writes (``Persist``/``PersistNode``) begin ``effects``."""
    n = 0
    while n < len(effects) and isinstance(effects[n], (Persist, PersistNode)):
        n += 1
    return n


def _writes_lead(effects: Sequence[_AnyEffect]) -> bool:
    """True when every store write of ``effects`` comes before its other effects (such lists may
    run as a group: moving their writes ahead of an earlier list's sends reorders no two writes)."""
    n = _leading_writes(effects)
    return not any(isinstance(e, (Persist, PersistNode)) for e in effects[n:])


def _command_id(command: Any, kind: str | None) -> str:
    body = getattr(command, kind, None) if kind else None
    return str(getattr(body, "command_id", "")) if body is not None else ""
