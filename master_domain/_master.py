"""The master domain: job table, sub-domain registry, scheduling loop, store and gRPC server.

All state lives on one event loop and is changed only by synchronous calls into the pure
:class:`~master_domain._jobs.JobTable`; the effects those calls return are carried out by
:meth:`MasterDomain._commit` under one FIFO lock, in order: write the changed jobs to the store,
then send commands and acks. So an ack never precedes the durable write, and commands reach a
sub-domain in the order they were decided.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import json
import logging
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import grpc.aio

import domainos
from domainos.api.v1 import common_pb2, master_pb2, master_pb2_grpc, subdomain_pb2, subdomain_pb2_grpc
from domainos.clock import Clock, SystemClock
from domainos.config import open_transport
from domainos.errors import (
    AlreadyExists,
    DomainOSError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StoreError,
    Unavailable,
)
from domainos.ids import new_job_id, new_request_id
from domainos.jobspec import NODE_ID_RE, JobSpec
from domainos.model import TaskRef
from domainos.ratelimit import RateLimiter
from domainos.resources import Resources
from domainos.rpc import bind, create_server
from domainos.store import MAX_VALUE_BYTES, AsyncStore, Op, absent, open_store, put_op
from domainos.topology import check_name
from master_domain._admission import NO_REGION, Admission, Admitted, QuotaRow, Refused, allocation_id
from master_domain._audit import AuditLog
from master_domain._auth import Principal, Role, TokenRecord, contains_token
from master_domain._config import MasterConfig
from master_domain._convert import (
    TOKEN_ENV,
    ack_tasks_command,
    commit_command,
    parse_place_command_id,
    place_task_command,
    release_command,
    reservation_event,
    reserve_command,
    resync_event,
    stop_task_command,
    task_report_from_proto,
    task_spec,
)
from master_domain._datasets import DatasetRegistry
from master_domain._jobs import (
    STRAGGLER_CHECK_S,
    TERMINAL_JOB_STATES,
    AckTasks,
    Cancel,
    Effect,
    GangNotPlaced,
    Job,
    JobDone,
    JobState,
    JobTable,
    PersistJob,
    Place,
    PlaceGang,
    PlaceTask,
    Preempt,
    ReleaseGang,
    SendCommand,
    StartGang,
    StopTask,
    SubdomainHello,
    SubdomainLost,
    TaskReport,
    TaskState,
    TaskUpdates,
    Tick,
)
from master_domain._leader import Candidate, FencedStore, Leadership
from master_domain._metrics import (
    MAX_GOODPUT_JOBS,
    MasterMetrics,
    MasterStats,
    QuotaStat,
    RegionPowerStat,
    SubdomainStat,
)
from master_domain._placement import Placer, Want, check_fits_federation
from master_domain._preemption import Decision, Preemptions
from master_domain._registry import Registry, Session, SubdomainRecord
from master_domain._rendezvous import Endpoint, Rendezvous, check_kind
from master_domain._sched import _reserve
from master_domain._sched._fairshare import capacity_from_summaries
from master_domain._sched._gang import GangPlan, LimitsFn, consume, consume_requests, plan_gang
from master_domain._sched._loss import Link, LinkTable
from master_domain._sched._power import Fits, RegionPower, format_kw
from master_domain._sched._quota import ANY, GPU_ANY, Admit, Quota, demand_of, gpu_class, validated_quota
from master_domain._sched._topology import BlockView, GpuLimit, SubDomainView, Unplaceable
from master_domain._summary import MAX_NODES, Summary
from master_domain._tenants import SYSTEM_TENANT, Directory, token_key

if TYPE_CHECKING:
    from master_domain.console import ConsoleServer

log = logging.getLogger(__name__)

JOBS_PREFIX = "/domainos/master/jobs/"
REQUESTS_PREFIX = "/domainos/master/requests/"
SUBDOMAINS_PREFIX = "/domainos/master/subdomains/"
QUOTAS_PREFIX = "/domainos/master/quotas/"

#: Waiting tasks of one job tried per pass when they differ (other shards, other rejections).
LOCALITY_TRIES = 64
#: How often the scheduling loop wakes without an event (placement and grace timeouts).
TICK_S = 1.0
#: Job records changed only by task updates are written at most this often (one write per burst).
LAZY_FLUSH_S = 0.5
#: Flow control: no new placement while this many are sent and not yet confirmed. Without it a
#: burst of submits outruns the sub-domains, placements wait past ``place_timeout_s`` in their
#: queues and are placed again, which adds work: throughput collapses (measured at 10,000 nodes).
MAX_UNCONFIRMED = 1_000
#: Most placements in one ``PlaceTasks`` message (a task spec is well under 2 KiB; the stream's
#: limit is 8 MiB).
PLACE_BATCH = 500
LOG_TIMEOUT_S = 10.0
NODES_TIMEOUT_S = 5.0
MAX_LOG_BYTES = 1024 * 1024
DEFAULT_NODE_PAGE = 1000
#: Finished jobs kept in memory for GetJob/ListJobs (the rest are read from the store).
FINISHED_CACHE = 10_000
#: A gang that could not be placed (or whose reservation failed) is tried again after this long.
GANG_RETRY_S = 3.0
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _key(prefix: str, name: str) -> str:
    return prefix + name


def job_tenant(job: Job) -> str:
    """The tenant a job belongs to (records from before tenants belong to ``system``)."""
    return job.spec.tenant or SYSTEM_TENANT


def _quota_key(quota: Quota) -> str:
    return f"{QUOTAS_PREFIX}{quota.tenant}/{quota.region}/{quota.subdomain}"


def _indexes(indexes: list[int], most: int = 8) -> str:
    shown = ", ".join(str(i) for i in indexes[:most])
    return shown + (f" and {len(indexes) - most} more" if len(indexes) > most else "")


def _job_not_found(job_id: str) -> NotFound:
    # The same words whether the job does not exist or belongs to someone the caller may not see.
    return NotFound(f"job {job_id} not found", field="job_id")


@dataclasses.dataclass(slots=True)
class _GangTry:
    """A gang between its Start and GangPlaced/GangFailed: the plan and what was charged."""

    attempt: int
    plan: GangPlan
    tenant: str
    #: Every part was accepted and the tasks are recorded ASSIGNED where they go (commit phase).
    recorded: bool = False


class MasterDomain:
    """The cross-region master: accepts jobs, places their tasks on sub-domains, tracks them.

    Use as ``async with MasterDomain(config) as master:`` or call :meth:`start` and
    :meth:`shutdown`. ``clock`` is injectable so tests can move time.
    """

    def __init__(self, config: MasterConfig, *, clock: Clock | None = None) -> None:
        config.validate()
        self.config = config
        self._clock: Clock = clock or SystemClock()
        self._jobs = JobTable(clock=self._clock, place_timeout_s=config.place_timeout_s)
        self._jobs.subdomain_connected = lambda sd: self._registry.session(sd) is not None
        self._placer = Placer()
        # Gang-aware preemption for jobs that wait for room (see master_domain/_preemption.py).
        self._preemptions = Preemptions()
        # Quotas, region power budgets and the pending order; budgets come from the topology
        # file at start. Charges are released when the job table unplaces an attempt.
        self._admission = Admission()
        self._jobs.on_unplace = self._on_unplace
        # Gangs: the two-phase reservations across sub-domains, the inter-region links (from the
        # topology) for the loss model, the gangs in flight, the last plan or wait reason of each
        # gang job (for explain) and when a gang that failed may be tried again (all bounded by
        # the active jobs; dropped when a job retires).
        self._coordinator = _reserve.Coordinator()
        self._links = LinkTable()
        self._gangs: dict[str, _GangTry] = {}
        self._gang_notes: dict[str, str] = {}
        self._gang_retry_at: dict[str, float] = {}
        # A sub-domain that refused a gang's reservation is not asked again for that gang until it
        # has sent a newer summary (job -> sub-domain -> summaries seen from it at the refusal).
        self._gang_refused: dict[str, dict[str, int]] = {}
        self._summaries_seen: dict[str, int] = {}
        self._registry = Registry(self._clock)
        self._metrics = MasterMetrics(self.stats)
        # Every job id ever seen, sorted (ids sort by creation time), and the state of the
        # finished ones; full finished records are cached, the rest read from the store.
        self._ids: list[str] = []
        self._finished_state: dict[str, JobState] = {}
        self._finished_counts: Counter[JobState] = Counter()
        self._finished_cache: OrderedDict[str, Job] = OrderedDict()
        self._dirty: dict[str, None] = {}
        # Jobs changed by task updates that nothing waits on are written at most this often.
        self._lazy_flush_due = 0.0
        self._stragglers_due = 0.0
        # job id -> (tenant, submitted by) of every job ever seen: ListJobs filters by it.
        self._owners: dict[str, tuple[str, str]] = {}
        self._store: AsyncStore | None = None
        #: Where the tasks of active jobs serve (DSDK workers, collective ranks): memory only.
        self.rendezvous = Rendezvous()
        self._datasets: DatasetRegistry | None = None
        self._directory: Directory | None = None
        self._audit: AuditLog | None = None
        #: Requests per principal on DomainControl (checked by the service's gate).
        self.limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst, clock=self._clock)
        self._server: grpc.aio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.Event | None = None
        self._commit_lock: asyncio.Lock | None = None
        self._started = False
        self._stopping = False
        self._started_at = 0.0
        self._started_mono = 0.0
        self.address = ""
        self.advertise = ""
        self.metrics_port = 0
        #: The web console (``console_listen``; docs/console.md), None when off.
        self.console: ConsoleServer | None = None
        #: follower (until elected) | leader | deposed (its term ended: the process exits).
        self.role = "follower"
        self.exit_code = 0
        #: Set when this master's run is over without a signal (deposed): the daemon then exits.
        self.ended = asyncio.Event()
        self._led = asyncio.Event()
        self._lead_error: Exception | None = None
        self._leadership: Leadership | None = None
        self._leader_hint: Candidate | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def start(self) -> dict[str, Any]:
        """Open the store, listen, campaign for the leader's seat; returns the ready-file facts.

        The winner loads jobs and the registry and schedules (with one master it wins at once,
        before this returns); the others serve as followers (every call refused with the
        leader's address) and take over when the leader's lease expires.
        """
        if self._started:
            raise RuntimeError("master already started")
        self._started = True
        self._wake = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._started_at = self._clock.time()
        self._started_mono = self._clock.monotonic()
        loop = asyncio.get_running_loop()
        try:
            tls = open_transport(self.config.tls, role="master", ident=None, log=log)
            store = await asyncio.to_thread(open_store, self.config.store)
            self._store = FencedStore(store)
            self._store.on_fenced = lambda: self._depose("a write was refused: another master leads")
            self._datasets = DatasetRegistry(self._store)
            # Imported here: the servicers call back into this class.
            from master_domain._service import (
                DomainControlGate,
                DomainControlServicer,
                SubDomainGatewayServicer,
            )

            server = create_server([DomainControlGate(self)])
            subdomain_pb2_grpc.add_SubDomainGatewayServicer_to_server(
                SubDomainGatewayServicer(
                    self,
                    RateLimiter(
                        self.config.subdomain_message_rate_per_s,
                        self.config.subdomain_message_burst,
                        clock=self._clock,
                    ),
                ),
                server,
            )
            master_pb2_grpc.add_DomainControlServicer_to_server(DomainControlServicer(self), server)
            port = bind(server, self.config.listen, tls)
            self._server = server
            await server.start()
            host = self.config.listen.rpartition(":")[0]
            self.address = f"{host}:{port}"
            self.advertise = self.config.advertise or self.address
            metrics = ""
            if self.config.metrics_listen:
                self.metrics_port = self._metrics.start(self.config.metrics_listen)
                metrics = f"{self.config.metrics_listen.rpartition(':')[0]}:{self.metrics_port}"
            console = ""
            if self.config.console_listen:
                # Imported here: aiohttp is loaded only by a master that serves the console.
                from master_domain.console import ConsoleServer

                self.console = ConsoleServer(self, self.config.console_listen, tls)
                console = await self.console.start()
            self._leadership = Leadership(
                store,
                Candidate(self.config.id, self.advertise),
                ttl=self.config.leader_lease_s,
                on_won=lambda revision: loop.call_soon_threadsafe(self._won, revision),
                on_lost=lambda why: loop.call_soon_threadsafe(self._depose, why),
            )
            self._leadership.start()
            self._spawn(self._follow(), "master-follow")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._led.wait(), self.config.leader_wait_s)
            if self._lead_error is not None:
                raise self._lead_error
        except BaseException:
            await self.shutdown()
            raise
        log.info(
            "master %s listening on %s as %s (store %s, %d active jobs, %d known sub-domains)",
            self.config.id,
            self.address,
            self.role,
            self.config.store,
            len(self._jobs),
            len(self._registry),
        )
        return {
            "id": self.config.id,
            "listen": self.address,
            "advertise": self.advertise,
            "metrics": metrics,
            "console": console,
            "store": self.config.store,
            "role": self.role,
        }

    # -- leadership (master_domain/_leader.py) -----------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    @property
    def cluster_addresses(self) -> str:
        """Every master replica's client address, comma-separated (tasks get it as DOMAINOS_MASTER)."""
        return ",".join(self.config.cluster) if self.config.cluster else self.advertise

    def leader_hint(self) -> Candidate | None:
        """The leader as last seen from here (None: none elected, or not known yet)."""
        if self.is_leader:
            return Candidate(self.config.id, self.advertise)
        return self._leader_hint

    def _won(self, revision: int) -> None:
        if self.role != "follower" or self._stopping:
            return
        self._spawn(self._lead(revision), "master-lead")

    async def _lead(self, revision: int) -> None:
        """This master won the election: arm the fence, load the state, schedule."""
        assert isinstance(self._store, FencedStore)
        self._store.arm(revision)
        try:
            await self._load()
            await self._open_auth()
        except BaseException as exc:
            log.error("master %s won the election but could not load its state: %s", self.config.id, exc)
            self._lead_error = exc if isinstance(exc, Exception) else None
            self._led.set()
            self._depose(f"could not load the state: {exc}")
            raise
        self.role = "leader"
        self._spawn(self._schedule_loop(), "master-scheduler")
        self._led.set()
        log.info(
            "master %s leads (term from store revision %d): %d active jobs, %d known sub-domains",
            self.config.id,
            revision,
            len(self._jobs),
            len(self._registry),
        )

    async def _follow(self) -> None:
        """While a follower: keep the leader's address at hand for the refusals."""
        while self.role == "follower" and not self._stopping:
            leader = (
                await asyncio.to_thread(self._leadership.leader) if self._leadership is not None else None
            )
            self._leader_hint = leader if leader is not None and leader.id != self.config.id else None
            await asyncio.sleep(0.5)

    def _depose(self, why: str) -> None:
        """Leadership is over (lease lost, a fenced write): stop acting as the master. The process
        exits (code 75) so its supervisor restarts it as a follower; in-process it stays deposed,
        refusing every call."""
        if self.role == "deposed" or self._stopping:
            return
        was = self.role
        self.role = "deposed"
        if isinstance(self._store, FencedStore):
            self._store.disarm()
        log.error("master %s steps down (was %s): %s", self.config.id, was, why)
        for rec in self._registry:
            if rec.session is not None:
                rec.session.close("this master no longer leads")
        for task in list(self._tasks):
            if task.get_name() in ("master-scheduler", "master-lead"):
                task.cancel()
        self.exit_code = 75
        self.ended.set()

    async def shutdown(self) -> None:
        """Stop serving, cancel background work, flush, hand the seat over, close the store.
        Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        for rec in self._registry:  # ends the sub-domain streams cleanly (their writers stop)
            if rec.session is not None:
                rec.session.close("master shutting down")
        if self.console is not None:
            await self.console.stop()
        if self._server is not None:
            await self._server.stop(grace=0.5)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._store is not None:
            if self._dirty and self.is_leader:
                with contextlib.suppress(StoreError):
                    await self._flush()
            if self._leadership is not None:
                await asyncio.to_thread(self._leadership.stop)  # a follower takes over at once
            await self._store.close()
        self._metrics.stop()
        log.info("master %s stopped", self.config.id)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def track(self, task: asyncio.Task[Any]) -> None:
        """Own a task started elsewhere (a stream reader): shutdown cancels it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wake(self) -> None:
        """Ask the scheduling loop for a pass now."""
        if self._wake is not None:
            self._wake.set()

    @property
    def secure(self) -> bool:
        """True when callers are authenticated by mutual TLS (False only with ``insecure: true``)."""
        return self.config.tls is not None

    @property
    def store(self) -> AsyncStore:
        if self._store is None:
            raise Unavailable("the master's store is not open")
        return self._store

    @property
    def directory(self) -> Directory:
        """Tenants and tokens."""
        if self._directory is None:
            raise Unavailable("the master's store is not open")
        return self._directory

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            raise Unavailable("the master's store is not open")
        return self._audit

    async def _open_auth(self) -> None:
        """Tenants, tokens and the audit log; the bootstrap admin token when configured."""
        self._directory = Directory(self.store, self._clock)
        self._audit = AuditLog(
            self.store, self._clock, max_entries=self.config.audit_max_entries, spawn=self._spawn
        )
        await self._audit.load()
        await self._directory.ensure_tenant(SYSTEM_TENANT, "master")
        path = self.config.bootstrap_token_file
        if path:
            token_id = await self._directory.bootstrap(path)
            if token_id is None:
                log.info("an admin token exists already; %s was not written", path)
            else:
                log.info(
                    "created the bootstrap admin token %s and wrote it to %s (mode 0600)", token_id, path
                )

    def job_active(self, job_id: str) -> bool:
        """A job-scoped token is good only while its job is in the active table."""
        return job_id in self._jobs

    async def _load(self) -> None:
        """Rebuild memory from the store: registry, quotas, then every job (active ones in full)."""
        topology = await asyncio.to_thread(self.config.load_topology)
        if topology is not None:
            self._admission = Admission([RegionPower.from_topology(r) for r in topology.regions])
            self._links = LinkTable(
                {
                    (ln.between[0], ln.between[1]): Link(ln.bandwidth_gbps, ln.distance_km)
                    for ln in topology.links
                }
            )
        for kv in await self.store.range(QUOTAS_PREFIX):
            try:
                self._admission.put_quota(Quota.from_dict(json.loads(kv.value)))
            except (ValueError, DomainOSError) as exc:
                log.error("skipping unreadable quota record %s: %s", kv.key, exc)
        for kv in await self.store.range(SUBDOMAINS_PREFIX):
            try:
                rec = SubdomainRecord.from_dict(json.loads(kv.value))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("skipping unreadable sub-domain record %s: %s", kv.key, exc)
                continue
            self._registry.load(rec)
        active = 0
        for kv in await self.store.range(JOBS_PREFIX):
            try:
                job = Job.from_dict(json.loads(kv.value))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("skipping unreadable job record %s: %s", kv.key, exc)
                continue
            self._ids.append(job.job_id)
            self._owners[job.job_id] = (job_tenant(job), job.created_by)
            if job.state in TERMINAL_JOB_STATES:
                self._finished_state[job.job_id] = job.state
                self._finished_counts[job.state] += 1
            else:
                self._jobs.add(job)
                self._charge_live(job)
                active += 1
        self._ids.sort()
        if active:
            log.info("loaded %d active jobs; their tasks are reconciled as sub-domains reconnect", active)

    # -- effects ---------------------------------------------------------------------------------

    async def _commit(self, effects: Iterable[Effect]) -> bool:
        """Persist changed jobs, then send commands and acks. False if the store failed."""
        effects = list(effects)
        assert self._commit_lock is not None
        async with self._commit_lock:
            done: list[str] = []
            for e in effects:
                if isinstance(e, PersistJob):
                    self._dirty[e.job_id] = None
                elif isinstance(e, JobDone):
                    done.append(e.job_id)
            ok = True
            try:
                await self._flush()
            except StoreError as exc:
                ok = False
                log.error("cannot persist %d jobs: %s; will retry", len(self._dirty), exc)
            # Placements go out batched per sub-domain (PlaceTasks); any other command to that
            # sub-domain first sends the batch before it, so each stream keeps the effects' order.
            places: dict[str, list[subdomain_pb2.PlaceTask]] = {}

            def send(subdomain_id: str, command: Any) -> None:
                self._send_places(subdomain_id, places.pop(subdomain_id, []))
                self._send(subdomain_id, command)

            for e in effects:
                if isinstance(e, PlaceTask):
                    if ok:  # else: the placement times out and is redone
                        job = self._jobs.get(e.ref.job_id)
                        token = job.token if job is not None else ""
                        submitted = job.created_at if job is not None else 0.0
                        places.setdefault(e.subdomain_id, []).append(
                            place_task_command(
                                e.ref,
                                e.spec,
                                self.cluster_addresses,
                                token,
                                submitted_at=submitted,
                                lost_grace_s=self.config.subdomain_lost_grace_s,
                            ).place_task
                        )
                elif isinstance(e, StopTask):
                    send(e.subdomain_id, stop_task_command(e.ref, e.reason))
                elif isinstance(e, ReleaseGang):
                    send(e.subdomain_id, release_command(e.reservation_id, e.reason))
                elif isinstance(e, SendCommand):
                    # A Reserve goes out only once its attempt is stored (a restarted master must
                    # never reuse a reservation id); unsent, the coordinator times the gang out.
                    if ok or e.command.WhichOneof("body") != "reserve":
                        send(e.subdomain_id, e.command)
                elif isinstance(e, AckTasks) and ok:  # else: the sub-domain re-sends them
                    send(e.subdomain_id, ack_tasks_command(e.refs))
            for subdomain_id, batch in places.items():
                self._send_places(subdomain_id, batch)
            if ok:
                for job_id in done:
                    self._retire(job_id)
            return ok

    async def _revoke_job_token(self, job: Job) -> None:
        """The job is over: its credential stops working (it already did: see job_active)."""
        if not job.token_id or self._directory is None:
            return
        try:
            await self._directory.revoke(job.token_id)
        except DomainOSError as exc:
            log.warning("could not revoke token %s of finished job %s: %s", job.token_id, job.job_id, exc)

    async def _flush(self) -> None:
        """Write every dirty job's current record (one writer at a time: the commit lock)."""
        for job_id in list(self._dirty):
            job = self._jobs.get(job_id)
            if job is None:
                self._dirty.pop(job_id, None)
                continue
            version = job.version
            value = json.dumps(job.to_dict(), separators=(",", ":")).encode()
            if len(value) > MAX_VALUE_BYTES:
                log.warning("job %s record is %d bytes; storing it without task messages", job_id, len(value))
                value = json.dumps(job.to_dict(task_messages=False), separators=(",", ":")).encode()
            await self.store.put(_key(JOBS_PREFIX, job_id), value)
            if job.version == version:
                self._dirty.pop(job_id, None)

    def _retire(self, job_id: str) -> None:
        job = self._jobs.retire(job_id)
        if job is None:
            return
        self._gang_notes.pop(job_id, None)
        self._gang_retry_at.pop(job_id, None)
        self._gang_refused.pop(job_id, None)
        self._preemptions.forget(job_id)
        self.rendezvous.forget(job_id)
        if job.token_id:
            self._spawn(self._revoke_job_token(job), f"revoke-token-{job_id}")
        self._finished_state[job_id] = job.state
        self._finished_counts[job.state] += 1
        self._metrics.job_finished(job.state.value)
        self._cache_finished(job)
        log.info("job %s finished: %s %s", job_id, job.state.value, job.message)

    def _cache_finished(self, job: Job) -> None:
        self._finished_cache[job.job_id] = job
        self._finished_cache.move_to_end(job.job_id)
        while len(self._finished_cache) > FINISHED_CACHE:
            self._finished_cache.popitem(last=False)

    def _send_places(self, subdomain_id: str, batch: list[subdomain_pb2.PlaceTask]) -> None:
        """Placements for one sub-domain: one ``PlaceTask`` alone, more in ``PlaceTasks`` of at most
        :data:`PLACE_BATCH` (one stream message per batch, not per task)."""
        if len(batch) == 1:
            self._send(subdomain_id, subdomain_pb2.MasterCommand(place_task=batch[0]))
            return
        for i in range(0, len(batch), PLACE_BATCH):
            chunk = subdomain_pb2.PlaceTasks(tasks=batch[i : i + PLACE_BATCH])
            self._send(subdomain_id, subdomain_pb2.MasterCommand(place_tasks=chunk))

    def _send(self, subdomain_id: str, command: Any) -> None:
        session = self._registry.session(subdomain_id)
        if session is None:
            log.debug("sub-domain %s is not connected; dropping %s", subdomain_id, command.WhichOneof("body"))
            return
        if not session.send(command):
            log.warning(
                "cannot send %s to sub-domain %s: %s",
                command.WhichOneof("body"),
                subdomain_id,
                session.close_reason or "stream closed",
            )

    # -- scheduling ------------------------------------------------------------------------------

    async def _schedule_loop(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            # asyncio.timeout, not wait_for: wait_for can swallow a cancel (Python 3.11).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.schedule_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed")

    async def schedule_once(self) -> None:
        """One pass: timeouts, sub-domains past their grace, then placement of PENDING tasks."""
        effects: list[Effect] = list(self._jobs.handle(Tick()))
        effects.extend(self._carry(self._coordinator.handle(_reserve.Tick(self._clock.monotonic()))))
        effects.extend(self._expire_absent_subdomains())
        now = self._clock.monotonic()
        if now >= self._stragglers_due:
            self._stragglers_due = now + STRAGGLER_CHECK_S
            self._jobs.check_stragglers(now)
        effects.extend(self._place_pending())
        if effects or (self._dirty and self._clock.monotonic() >= self._lazy_flush_due):
            await self._commit(effects)
            self._lazy_flush_due = self._clock.monotonic() + LAZY_FLUSH_S

    def _expire_absent_subdomains(self) -> list[Effect]:
        now = self._clock.monotonic()
        grace = self.config.subdomain_lost_grace_s
        effects: list[Effect] = []
        for sd in self._jobs.subdomains_with_tasks():
            rec = self._registry.get(sd)
            if rec is not None and rec.connected:
                continue
            since = (
                rec.absent_since if rec is not None and rec.absent_since is not None else self._started_mono
            )
            away = now - since
            if away >= self._jobs.away_due(sd, grace):
                before = self._jobs.tasks_on(sd)
                effects.extend(
                    self._jobs.handle(
                        SubdomainLost(
                            sd, f"sub-domain {sd} unreachable for {away:.0f}s", away_s=away, grace_s=grace
                        )
                    )
                )
                log.warning(
                    "sub-domain %s has been away for %.0fs: %d of its %d tasks lost (their jobs' "
                    "disconnect.lost_after passed), %d left to wait",
                    sd,
                    away,
                    before - self._jobs.tasks_on(sd),
                    before,
                    self._jobs.tasks_on(sd),
                )
        return effects

    def _place_pending(self) -> list[Effect]:
        """Place PENDING tasks in fair-share order, each through quota, power, then the placer."""
        effects: list[Effect] = []
        adm = self._admission
        pending = {job.job_id: (job, indexes) for job, indexes in self._jobs.pending()}
        adm.sync_pending(
            (job_id, job_tenant(job), job.spec.priority, job.created_at)
            for job_id, (job, _) in pending.items()
        )
        if not pending:
            return effects
        adm.set_capacity(capacity_from_summaries(r.summary for r in self._registry.connected()))
        # The first job in fair-share order that waits for room (preemption may make it some).
        short: tuple[Job, list[int]] | None = None
        gang_views: list[SubDomainView] | None = None  # built for the first gang of the pass
        for job_id in adm.order():
            if self._jobs.unconfirmed >= MAX_UNCONFIRMED:
                break  # the next pass goes on (confirmations wake it)
            job, indexes = pending[job_id]
            if job.spec.is_gang:
                if self._jobs.gang_waiting(job):
                    gang_effects: list[Effect] = []
                    if self._gang_due(job.job_id):  # not while reserving or backing off
                        if gang_views is None:
                            gang_views = self._gang_views()  # O(sub-domains): only when planned
                        gang_effects, gang_views = self._place_gang(job, gang_views)
                    effects.extend(gang_effects)
                    wait = adm.last_wait(job_id)
                    if (
                        short is None
                        and not gang_effects
                        and wait is not None
                        and wait.kind == "capacity"
                        and not wait.reason.startswith("scheduler error")
                    ):
                        short = (job, list(self._jobs.gang_indexes(job)))  # a gang may preempt too
                    continue
                # The gang is placed: the tasks past gang.min are placed one by one.
                indexes = [i for i in indexes if i >= job.spec.gang_min]
                if not indexes:
                    continue
            request = job.spec.resources
            tenant = job_tenant(job)
            misses = 0  # tasks of this job that waited in this pass
            for index in indexes:
                if self._jobs.unconfirmed >= MAX_UNCONFIRMED:
                    break
                task = job.tasks[index]
                started = time.perf_counter()
                # Per-task constraints (excluded models, node labels, data locality) from the spec.
                want = Want.for_task(job.spec, index, job.created_at, self._clock.time())
                choose = self._placer.choose if want is None else partial(self._placer.choose, want=want)
                try:
                    decision = adm.decide(tenant, request, choose, self._placer.slot_model, task.rejected_by)
                except DomainOSError as exc:  # one bad record must not stop every other job
                    log.error("cannot decide for job %s task %s: %s", job_id, index, exc)
                    self._jobs.set_waiting(job_id, f"scheduler error: {exc}")
                    break
                self._metrics.observe_decision(time.perf_counter() - started)
                if not isinstance(decision, Admitted):
                    self._jobs.set_waiting(job_id, decision.reason)
                    adm.note_wait(job_id, decision)
                    if short is None and decision.kind == "capacity":
                        short = (job, [i for i in indexes if job.tasks[i].state is TaskState.PENDING])
                    misses += 1
                    if not task.rejected_by and (want is None or not (want.dataset or want.subdomain)):
                        break  # the job's other tasks are the same size: they would wait too
                    if misses >= LOCALITY_TRIES:
                        break  # tasks of other shards may fit, but a pass tries a bounded number
                    continue
                if task.attempt == 0 and not task.rejected_by:  # a first placement
                    self._metrics.observe_queue_wait(self._clock.time() - job.created_at)
                effects.extend(
                    self._jobs.handle(
                        Place(job_id, index, decision.subdomain_id, decision.region, decision.gpu_model)
                    )
                )
                adm.charge(
                    allocation_id(job_id, index, task.attempt),
                    tenant,
                    decision.region,
                    decision.subdomain_id,
                    decision.demand,
                    decision.watts,
                    decision.why,
                )
                self._placer.commit(
                    decision.subdomain_id, request, self._clock.monotonic(), decision.gpu_model
                )
        if short is not None:
            effects.extend(self._preempt_for(*short))
        return effects

    def _preempt_for(self, job: Job, indexes: list[int]) -> list[Effect]:
        """Stop lower-priority jobs whole so ``job`` (waiting for room) fits; requeue them."""
        adm = self._admission
        decision = self._preemptions.plan(
            job,
            indexes,
            self._jobs.jobs(),
            self._placer,
            adm.demand_and_watts,
            adm.priority,
            job_tenant,
            now=self._clock.time(),
            mono=self._clock.monotonic(),
        )
        if decision is None:
            return []
        effects: list[Effect] = []
        for victim in decision.victims:
            effects.extend(self._jobs.handle(Preempt(victim, decision.stop_reason)))
        self._preemptions.applied(decision, now=self._clock.time(), mono=self._clock.monotonic())
        log.info("job %s preempts %s: %s", job.job_id, ", ".join(decision.victims), decision.reason)
        self._audit_preemption(decision)
        return effects

    def _audit_preemption(self, decision: Decision) -> None:
        """One audit entry per stopped job (written in the background: the pass must not wait)."""
        if self._audit is None:
            return
        for victim in decision.victims:
            owner = self._owners.get(victim, ("", ""))[0]
            entry = self._audit.entry(
                principal="master",
                tenant=owner,
                role="",
                method="Preempt",
                target=victim,
                request_id="",
                code="OK",
                message=f"{decision.stop_reason}: {decision.victim_reasons.get(victim, decision.reason)}",
                peer="",
            )
            self._spawn(self._write_audit(entry), f"audit-preempt-{victim}")

    async def _write_audit(self, entry: Any) -> None:
        try:
            await self.audit.write(entry)
        except DomainOSError as exc:
            log.warning("audit entry for %s not written: %s", entry.target, exc)

    def _on_unplace(self, job_id: str, index: int, attempt: int) -> None:
        self._admission.release(allocation_id(job_id, index, attempt))

    def _charge_live(self, job: Job) -> None:
        """A loaded job's placed tasks count against quotas and power again (after a restart)."""
        tenant = job_tenant(job)
        for task in job.tasks:
            if not task.live:
                continue
            rec = self._registry.get(task.subdomain_id)
            region = task.region or (rec.region if rec is not None else "")
            demand, watts = self._admission.demand_and_watts(job.spec.resources, task.gpu_model)
            try:
                self._admission.charge(
                    allocation_id(job.job_id, task.index, task.attempt),
                    tenant,
                    region,
                    task.subdomain_id,
                    demand,
                    watts,
                )
            except DomainOSError as exc:
                log.error("charges of task %s/%s not restored: %s", job.job_id, task.index, exc)

    # -- gangs: all-or-nothing placement across sub-domains ---------------------------------------

    def _gang_views(self) -> list[SubDomainView]:
        """Every connected sub-domain as the gang planner sees it (shapes, blocks when known)."""
        views: list[SubDomainView] = []
        for rec in sorted(self._registry.connected(), key=lambda r: r.subdomain_id):
            summary = rec.summary
            # Blocks are a preference only: a summary without them plans the same way.
            blocks = tuple(BlockView(b.block, b.shapes) for b in summary.blocks)
            view = SubDomainView.from_summary(rec.subdomain_id, rec.region or NO_REGION, summary, blocks)
            # Minus what was placed or reserved there since that summary (tasks and gangs alike).
            views.append(consume_requests(view, self._placer.inflight_requests(rec.subdomain_id)))
        return views

    def _gang_limits(self, tenant: str) -> tuple[LimitsFn, LimitsFn]:
        """GPU limits per region and per sub-domain, by GPU model: power and quota headroom."""
        adm = self._admission
        power = adm.power
        quotas = adm.quotas
        cache: dict[str, tuple[dict[str, GpuLimit], dict[str, GpuLimit]]] = {}

        def tighten(table: dict[str, GpuLimit], key: str, limit: GpuLimit) -> None:
            old = table.get(key)
            if old is None or limit.gpus < old.gpus:
                table[key] = limit

        def compute(model: str) -> tuple[dict[str, GpuLimit], dict[str, GpuLimit]]:
            if model not in cache:
                regions: dict[str, GpuLimit] = {}
                subdomains: dict[str, GpuLimit] = {}
                tdp = power.model.tdp(model)
                for region in power.regions():
                    room = power.headroom_w(region)
                    if math.isinf(room) or tdp <= 0:
                        continue
                    tighten(
                        regions,
                        region,
                        GpuLimit(
                            int(room // tdp),
                            f"power: {format_kw(room)} kW headroom / {tdp} W per {model or 'GPU'}",
                        ),
                    )
                for q in quotas.quotas(tenant):
                    if q.region == ANY and q.subdomain == ANY:
                        continue  # a total over every region: checked on the whole plan
                    used = quotas.used(tenant, q.region, q.subdomain)
                    for cls in (gpu_class(model), GPU_ANY):
                        if cls not in q.limits:
                            continue
                        left = max(0, q.limits[cls] - used.get(cls, 0))
                        limit = GpuLimit(left, f"quota {q.name}: {left} {cls} left")
                        if q.subdomain != ANY:
                            tighten(subdomains, q.subdomain, limit)
                        else:
                            tighten(regions, q.region, limit)
                cache[model] = (regions, subdomains)
            return cache[model]

        return (lambda m: compute(m)[0]), (lambda m: compute(m)[1])

    def _has_labels(self, subdomain_id: str, pairs: Iterable[str]) -> bool:
        rec = self._registry.get(subdomain_id)
        return rec is not None and all(rec.summary.label_nodes.get(p, 0) > 0 for p in pairs)

    def _gang_wait(self, job: Job, kind: str, reason: str) -> None:
        self._jobs.set_waiting(job.job_id, reason)
        self._admission.note_wait(job.job_id, Refused(kind, reason))
        self._gang_retry_at[job.job_id] = self._clock.monotonic() + GANG_RETRY_S

    def _gang_due(self, job_id: str) -> bool:
        """The gang may be planned now: it is not reserving and not backing off after a failed try."""
        if self._coordinator.phase(job_id) is not None:
            return False
        return self._gang_retry_at.get(job_id, 0.0) <= self._clock.monotonic()

    def _place_gang(self, job: Job, views: list[SubDomainView]) -> tuple[list[Effect], list[SubDomainView]]:
        """Plan, admit, charge and start reserving a gang's tasks (all or nothing).

        Returns the effects and the views minus what this gang takes (for the next gang of the
        pass). A gang that cannot go waits with the reason; nothing is reserved or charged.
        """
        now = self._clock.monotonic()
        job_id = job.job_id
        if not self._gang_due(job_id):
            return [], views
        indexes = tuple(self._jobs.gang_indexes(job))
        tenant = job_tenant(job)
        adm = self._admission
        refused = self._gang_refused.get(job_id, {})
        candidates = [v for v in views if refused.get(v.id, -1) != self._summaries_seen.get(v.id, 0)]
        skipped = sorted(v.id for v in views if v not in candidates)
        if skipped and not candidates:
            self._gang_wait(job, "capacity", f"waiting for new summaries from {', '.join(skipped)}")
            return [], views
        if job.spec.node_selector:
            # Labels are known per sub-domain (label_nodes); the sub-domain picks the nodes.
            pairs = [f"{k}={v}" for k, v in sorted(job.spec.node_selector.items())]
            candidates = [v for v in candidates if self._has_labels(v.id, pairs)]
            if not candidates:
                reason = (
                    f"node_selector {', '.join(pairs)}: none of the {len(views)} connected "
                    "sub-domain(s) has ready nodes with every label"
                )
                self._gang_notes[job_id] = f"unplaceable (node_selector): {reason}"
                self._gang_wait(job, "node_selector", reason)  # no preemption makes labels
                return [], views
        region_limits, subdomain_limits = self._gang_limits(tenant)
        started = time.perf_counter()
        try:
            plan = plan_gang(
                job.spec,
                indexes,
                candidates,
                self._links,
                region_limits=region_limits,
                subdomain_limits=subdomain_limits,
            )
        except DomainOSError as exc:
            log.error("cannot plan the gang of job %s: %s", job_id, exc)
            self._gang_wait(job, "capacity", f"scheduler error: {exc}")
            return [], views
        self._metrics.observe_decision(time.perf_counter() - started)
        if isinstance(plan, Unplaceable):
            reason = plan.reason
            if skipped:
                reason += (
                    f"; waiting for new summaries from {', '.join(skipped)} "
                    "(refused this gang; not asked again before its next summary)"
                )
            self._gang_notes[job_id] = f"unplaceable ({plan.rule}): {reason}" + (
                "\nloss model: " + plan.loss.explain() if plan.loss is not None else ""
            )
            kind = {"limit": "quota+power", "loss": "loss"}.get(plan.rule, "capacity")
            self._gang_wait(job, kind, reason)
            return [], views
        # Admission of the whole gang: quota over the split, power per region.
        demands: dict[tuple[str, str], dict[str, int]] = {}
        watts_by_region: dict[str, int] = {}
        per_task: dict[str, tuple[dict[str, int], int]] = {}
        for sd, idx in plan.parts.items():
            region = plan.regions[sd]
            request = plan.task_request(sd)
            demand, watts = adm.demand_and_watts(request, request.gpu_model)
            per_task[sd] = (demand, watts)
            demands[(region, sd)] = demand_of(
                Resources(request.cpu_millis, request.memory_bytes, request.gpus, request.gpu_model or ANY),
                len(idx),
            )
            watts_by_region[region] = watts_by_region.get(region, 0) + watts * len(idx)
        verdict = adm.quotas.admit_split(tenant, demands)
        if not isinstance(verdict, Admit):
            self._gang_notes[job_id] = plan.describe() + f"\nquota: refused: {verdict.reason}"
            self._gang_wait(job, "quota", f"quota: {verdict.reason}")
            return [], views
        power_notes: list[str] = []
        for region, watts in sorted(watts_by_region.items()):
            if not watts or region not in adm.power.regions():
                continue
            check = adm.power.check(region, watts)
            if not isinstance(check, Fits):
                self._gang_notes[job_id] = plan.describe() + f"\npower: refused: {check.reason}"
                self._gang_wait(job, "power", f"power: {check.reason}")
                return [], views
            if not math.isinf(check.budget_w):
                power_notes.append(
                    f"region {region} {format_kw(check.in_use_w + watts)} kW of "
                    f"{format_kw(check.budget_w)} kW with this gang ({format_kw(watts)} kW)"
                )
        quota_note = (
            "quota: within " + ", ".join(q.name for q in verdict.quotas)
            if verdict.quotas
            else f"quota: tenant {tenant} has no quota here (not limited)"
        )
        power_note = "power: " + ("; ".join(power_notes) if power_notes else "no budget applies")
        # Go: one fresh attempt (persisted before any Reserve), charges, then the coordinator.
        effects: list[Effect] = list(self._jobs.handle(StartGang(job_id, indexes)))
        attempt = self._jobs.gang_attempt(job)
        why = f"gang attempt {attempt}: {plan.reasons[0] if plan.reasons else 'planned'}; {quota_note}; {power_note}"
        for sd, idx in plan.parts.items():
            demand, watts = per_task[sd]
            for i in idx:
                adm.charge(
                    allocation_id(job_id, i, attempt), tenant, plan.regions[sd], sd, demand, watts, why
                )
        self._gangs[job_id] = _GangTry(attempt, plan, tenant)
        self._gang_notes[job_id] = "\n".join([plan.describe(), quota_note, power_note])
        timeout = job.spec.gang_timeout_s
        parts = {sd: _reserve.Demand.of(plan.task_request(sd), len(idx)) for sd, idx in plan.parts.items()}
        effects.extend(
            self._carry(
                self._coordinator.handle(
                    _reserve.Start(
                        job_id, attempt, parts, now, timeout, adm.priority(job.spec.priority).value
                    )
                )
            )
        )
        log.info("gang of job %s attempt %s reserving: %s", job_id, attempt, plan.describe().splitlines()[0])
        return effects, consume(views, plan)

    def _carry(self, commands: Iterable[_reserve.MasterCommand]) -> list[Effect]:
        """Turn the coordinator's commands into effects (messages, job table events, charges)."""
        effects: list[Effect] = []
        for c in commands:
            if isinstance(c, _reserve.Reserve):
                gang = self._gangs.get(c.job_id)
                job = self._jobs.get(c.job_id)
                if gang is None or job is None or gang.attempt != c.attempt:
                    log.warning("no gang for reservation %s; not sent", c.reservation_id)
                    continue
                model = gang.plan.models.get(c.subdomain, "")
                specs = [
                    task_spec(
                        TaskRef(c.job_id, i, c.attempt),
                        job.spec,
                        self.cluster_addresses,
                        job.token,
                        submitted_at=job.created_at,
                        reservation_id=c.reservation_id,
                        gpu_model=model,
                        lost_grace_s=self.config.subdomain_lost_grace_s,
                    )
                    for i in gang.plan.parts.get(c.subdomain, ())
                ]
                effects.append(SendCommand(c.subdomain, reserve_command(c.reservation_id, specs, c.hold_s)))
                # Held at once by the sub-domain: deducted until a summary counts them applied
                # (placements_applied counts a reservation's tasks), for tasks and later gangs.
                request = gang.plan.task_request(c.subdomain)
                now = self._clock.monotonic()
                for _ in specs:
                    self._placer.commit(c.subdomain, request, now, model)
            elif isinstance(c, _reserve.Commit):
                # The tasks are recorded where they go before the first Commit leaves: a
                # sub-domain starts (and reports) its part's tasks as soon as it commits, maybe
                # before the other parts have answered.
                effects.extend(self._gang_committing(c.reservation_id))
                effects.append(SendCommand(c.subdomain, commit_command(c.reservation_id)))
            elif isinstance(c, _reserve.Release):
                effects.append(SendCommand(c.subdomain, release_command(c.reservation_id, c.reason)))
            elif isinstance(c, _reserve.GangPlaced):
                effects.extend(self._gang_placed(c))
            elif isinstance(c, _reserve.GangFailed):
                effects.extend(self._gang_failed(c))
        return effects

    def _gang_committing(self, reservation_id: str) -> list[Effect]:
        """Every part is accepted: record the gang's tasks ASSIGNED on their sub-domains (once)."""
        job_id, attempt, _ = reservation_id.rsplit("/", 2)
        gang = self._gangs.get(job_id)
        if gang is None or str(gang.attempt) != attempt or gang.recorded:
            return []
        assignments = {
            i: (sd, "" if region == NO_REGION else region, model)
            for i, (sd, region, model) in gang.plan.assignments().items()
        }
        if not self._jobs.gang_placeable(job_id, gang.attempt, assignments):
            return []  # cancelled or superseded meanwhile: undone when the gang is placed
        gang.recorded = True
        return list(self._jobs.handle(PlaceGang(job_id, gang.attempt, assignments)))

    def _gang_placed(self, c: _reserve.GangPlaced) -> list[Effect]:
        gang = self._gangs.pop(c.job_id, None)
        if gang is None or gang.attempt != c.attempt or gang.recorded:
            return []  # recorded when the commit phase began; the tasks report as they start
        # Cancelled (or superseded) before the commit phase recorded it: undo every part.
        self._release_charges(c.job_id, gang)
        return [
            SendCommand(sd, release_command(rid, "the job no longer wants this gang"))
            for sd, rid in c.reservations.items()
        ]

    def _gang_failed(self, c: _reserve.GangFailed) -> list[Effect]:
        gang = self._gangs.pop(c.job_id, None)
        if gang is not None and gang.attempt == c.attempt:
            self._release_charges(c.job_id, gang)
        self._gang_retry_at[c.job_id] = self._clock.monotonic() + GANG_RETRY_S
        if c.refused_by:  # ask them again only once their summaries have changed
            avoid = self._gang_refused.setdefault(c.job_id, {})
            for sd, _ in c.refused_by:
                avoid[sd] = self._summaries_seen.get(sd, 0)
        reason = f"gang attempt {c.attempt} not placed: {c.reason}"
        previous = self._gang_notes.get(c.job_id, "")
        self._gang_notes[c.job_id] = f"{reason}\nlast plan:\n{previous}" if previous else reason
        job = self._jobs.get(c.job_id)
        if job is not None and not job.terminal and not job.cancel_requested:
            self._admission.note_wait(c.job_id, Refused("capacity", reason))
        return list(self._jobs.handle(GangNotPlaced(c.job_id, c.attempt, reason, c.misdispatches)))

    def _release_charges(self, job_id: str, gang: _GangTry) -> None:
        for idx in gang.plan.parts.values():
            for i in idx:
                self._admission.release(allocation_id(job_id, i, gang.attempt))

    def _explain_gang(self, job: Job) -> list[str]:
        lines: list[str] = []
        spec = job.spec
        if spec.parallelism is not None:
            par = spec.parallelism
            size = (
                f", model {spec.model.parameters:,} params × {spec.model.bytes_per_parameter:g} B"
                if spec.model is not None
                else ""
            )
            it = f", iteration {spec.iteration_time_s:g} s" if spec.iteration_time_s else ""
            lines.append(
                f"training job: TP {par.tp} × PP {par.pp} × DP {par.dp} ({spec.replicas} tasks of "
                f"{par.tp} GPUs){size}{it}, loss budget {spec.max_cross_domain_loss * 100:g}%; placed all or nothing"
            )
        else:
            lines.append(
                f"gang: the first {spec.gang_min} of {spec.replicas} tasks are placed all or nothing"
            )
        phase = self._coordinator.explain(job.job_id)
        if phase:
            lines.append(f"  reservation: {phase}")
        note = self._gang_notes.get(job.job_id)
        if note:
            lines.extend(f"  {line}" for line in note.splitlines())
        return lines

    # -- sub-domain streams ----------------------------------------------------------------------

    async def attach(self, hello: subdomain_pb2.Hello, peer: str = "") -> Session:
        """A sub-domain said Hello: register its stream, welcome it, reconcile its tasks."""
        sd = hello.subdomain_id
        if not sd:
            raise InvalidArgument("is required", field="hello.subdomain_id")
        check_name(sd, "hello.subdomain_id")
        if hello.region:
            check_name(hello.region, "hello.region")
        # Kept in the registry (and the store) after the stream ends, and shown by ListDomains.
        if not 0 <= hello.max_nodes <= MAX_NODES:
            raise InvalidArgument(
                f"must be between 0 and {MAX_NODES}, got {hello.max_nodes}", field="hello.max_nodes"
            )
        for name, most in (("address", 255), ("incarnation", 128)):
            if len(getattr(hello, name)) > most:
                raise InvalidArgument(
                    f"must be at most {most} characters, got {len(getattr(hello, name))}",
                    field=f"hello.{name}",
                )
        summary = Summary.from_proto(hello.summary, "hello.summary")
        session = Session(sd, hello.incarnation, peer)
        rec = self._registry.connect(
            session, region=hello.region, address=hello.address, max_nodes=hello.max_nodes, summary=summary
        )
        try:
            await self._welcome(session, rec, hello, summary)
        except BaseException:
            await self.detach(session)  # never leave a half-attached stream holding the id
            raise
        return session

    async def _welcome(
        self, session: Session, rec: SubdomainRecord, hello: subdomain_pb2.Hello, summary: Summary
    ) -> None:
        sd = session.subdomain_id
        session.send(
            subdomain_pb2.MasterCommand(
                welcome=subdomain_pb2.Welcome(
                    master_id=self.config.id, summary_interval_s=self.config.summary_interval_s
                )
            )
        )
        self._placer.update(sd, rec.region, summary, self._clock.monotonic())
        self._admission.observe(rec.region, sd, summary.power_draw_w)
        reports = [r for r in (task_report_from_proto(t) for t in hello.tasks) if r is not None]
        log.info(
            "sub-domain %s connected (region %s, incarnation %s, %d tasks, %d ready nodes) from %s",
            sd,
            rec.region,
            hello.incarnation,
            len(reports),
            summary.nodes_ready,
            session.peer,
        )
        effects = list(self._jobs.handle(SubdomainHello(sd, tuple(reports))))
        # Gang reservations it holds: those of failed or unknown gangs are released.
        effects.extend(self._carry(self._coordinator.handle(resync_event(sd, list(hello.reservations)))))
        await self._persist_subdomain(rec)
        await self._commit(effects)
        self.wake()

    async def detach(self, session: Session) -> None:
        """The stream ended; its tasks stay for the grace period."""
        session.close()
        rec = self._registry.disconnect(session)
        if rec is None:
            return
        self._placer.remove(session.subdomain_id)
        self._admission.observe(rec.region, session.subdomain_id, 0)
        log.warning(
            "sub-domain %s disconnected%s; its %d tasks are kept for %gs",
            session.subdomain_id,
            f" ({session.close_reason})" if session.close_reason else "",
            self._jobs.tasks_on(session.subdomain_id),
            self.config.subdomain_lost_grace_s,
        )
        if not self._stopping:
            # Gangs reserving or committing there fail whole (every other part is released).
            lost = self._carry(self._coordinator.handle(_reserve.SubdomainLost(session.subdomain_id)))
            await self._persist_subdomain(rec)
            if lost:
                await self._commit(lost)
            self.wake()

    async def _persist_subdomain(self, rec: SubdomainRecord) -> None:
        try:
            await self.store.put(
                _key(SUBDOMAINS_PREFIX, rec.subdomain_id), json.dumps(rec.to_dict()).encode()
            )
        except StoreError as exc:
            log.error("cannot persist sub-domain %s: %s", rec.subdomain_id, exc)

    async def on_message(self, session: Session, msg: subdomain_pb2.SubDomainMessage) -> None:
        """One message from a connected sub-domain."""
        sd = session.subdomain_id
        kind = msg.WhichOneof("body")
        if kind == "summary":
            if msg.summary.incarnation and msg.summary.incarnation != session.incarnation:
                log.warning("ignoring summary from sub-domain %s with a wrong incarnation", sd)
                return
            summary = Summary.from_proto(msg.summary.summary, "summary.summary")
            rec = self._registry.get(sd)
            if self._registry.update_summary(sd, summary) and rec is not None:
                await self._persist_subdomain(rec)
            self._summaries_seen[sd] = self._summaries_seen.get(sd, 0) + 1
            if rec is not None:
                self._placer.update(
                    sd, rec.region, summary, self._clock.monotonic(), applied=msg.summary.placements_applied
                )
                self._admission.observe(rec.region, sd, summary.power_draw_w)
            self.wake()
        elif kind == "task_updates":
            if msg.task_updates.incarnation and msg.task_updates.incarnation != session.incarnation:
                log.warning("ignoring task updates from sub-domain %s with a wrong incarnation", sd)
                return
            self._registry.touch(sd)
            reports = [
                r for r in (task_report_from_proto(t) for t in msg.task_updates.tasks) if r is not None
            ]
            effects = list(self._jobs.handle(TaskUpdates(sd, tuple(reports))))
            if all(isinstance(e, PersistJob) for e in effects):
                # Only records changed (RUNNING and the like; no ack or command waits on them):
                # the scheduling pass writes them, at most every LAZY_FLUSH_S, so a burst of
                # updates costs one write per job rather than one per message and job. A crash
                # in between loses nothing: the sub-domain's Hello reports its tasks again.
                self._dirty.update((e.job_id, None) for e in effects if isinstance(e, PersistJob))
            else:
                await self._commit(effects)
            self.wake()
        elif kind == "ack":
            ack = msg.ack
            if not ack.ok:
                ref = parse_place_command_id(ack.command_id)
                log.warning("sub-domain %s refused command %s: %s", sd, ack.command_id, ack.error)
                if ref is not None:
                    report = TaskReport(
                        ref.job_id, ref.task_index, ref.attempt, TaskState.REJECTED, message=ack.error
                    )
                    await self._commit(self._jobs.handle(TaskUpdates(sd, (report,))))
                    self.wake()
        elif kind == "reservation":
            event = reservation_event(sd, msg.reservation)
            if event is not None:
                self._registry.touch(sd)
                await self._commit(self._carry(self._coordinator.handle(event)))
                self.wake()
        elif kind == "node_admin":
            if not session.resolve(msg.node_admin.request_id, msg.node_admin):
                log.debug("late node admin reply %s from sub-domain %s", msg.node_admin.request_id, sd)
        elif kind == "node_list":
            if not session.resolve(msg.node_list.request_id, msg.node_list):
                log.debug("late node list %s from sub-domain %s", msg.node_list.request_id, sd)
        elif kind == "log_reply":
            if not session.resolve(msg.log_reply.request_id, msg.log_reply):
                log.debug("late log reply %s from sub-domain %s", msg.log_reply.request_id, sd)
        elif kind == "hello":
            log.warning("sub-domain %s sent a second Hello on one stream; ignored", sd)
        else:
            log.debug("ignoring an empty or unknown message from sub-domain %s", sd)

    # -- the client API --------------------------------------------------------------------------

    async def submit(
        self,
        spec_msg: master_pb2.JobSpec,
        request_id: str,
        *,
        principal: Principal | None = None,
        audit: Callable[[Job], Op] | None = None,
    ) -> tuple[Job, bool]:
        """Validate and store a job (idempotent by ``request_id``); returns (job, duplicate).

        The job belongs to ``principal``'s tenant (admins: ``spec.tenant``, default ``system``)
        and gets its own job-scoped token, stored in the same transaction as the job and, when
        given, the ``audit`` entry. ``principal`` None is the master itself (no restriction).
        """
        spec = JobSpec.from_proto(spec_msg)
        if request_id and not _REQUEST_ID_RE.match(request_id):
            raise InvalidArgument("must be 1-128 letters, digits, '.', '_', ':' or '-'", field="request_id")
        if TOKEN_ENV in spec.env:
            raise InvalidArgument(
                "is reserved: the master gives every job its own credential in DOMAINOS_TOKEN",
                field=f"env.{TOKEN_ENV}",
            )
        for var, text in spec.env.items():
            if contains_token(text):  # a person's token must never reach a task
                raise InvalidArgument(
                    "holds a DomainOS token; tasks get a credential of their own in DOMAINOS_TOKEN",
                    field=f"env.{var}",
                )
        tenant = await self._submit_tenant(spec.tenant, principal)
        spec = dataclasses.replace(spec, tenant=tenant)
        rid = request_id or new_request_id()
        req_key = _key(REQUESTS_PREFIX, rid)
        first = await self._job_for_request(req_key)
        if first is not None:
            return self._duplicate(first, principal), True
        check_fits_federation(spec.resources, self._registry.summaries())
        job = self._jobs.new_job(new_job_id(), spec, rid)
        job.created_by = principal.name if principal is not None else ""
        record, job.token = TokenRecord.mint(
            Role.JOB,
            tenant,
            now=self._clock.time(),
            created_by=job.created_by,
            description=f"credential of job {job.job_id}",
            job_id=job.job_id,
        )
        job.token_id = record.token_id
        job_key = _key(JOBS_PREFIX, job.job_id)
        value = json.dumps(job.to_dict(), separators=(",", ":")).encode()
        pointer = json.dumps({"job_id": job.job_id}).encode()
        ops = [put_op(job_key, value), put_op(req_key, pointer), self.directory.token_op(record)]
        if audit is not None:
            ops.append(audit(job))
        result = await self.store.txn(
            [absent(req_key), absent(job_key), absent(token_key(record.token_id))], ops
        )
        if not result.succeeded:  # a concurrent retry with the same request id won
            first = await self._job_for_request(req_key)
            if first is None:
                raise Unavailable("job id collision; retry the request")
            return self._duplicate(first, principal), True
        if audit is not None:
            self.audit.added()
        self._jobs.add(job)
        self._metrics.job_submitted()
        bisect.insort(self._ids, job.job_id)
        self._owners[job.job_id] = (tenant, job.created_by)
        log.info(
            "job %s submitted (request %s): %d x %s",
            job.job_id,
            rid,
            spec.replicas,
            spec.resources.describe(),
        )
        self.wake()
        return job, False

    async def _submit_tenant(self, wanted: str, principal: Principal | None) -> str:
        if principal is None or principal.is_admin:
            tenant = wanted or SYSTEM_TENANT
            await self.directory.require_tenant(tenant, "tenant")
            return tenant
        if wanted and wanted != principal.tenant:
            raise PermissionDenied(
                f"{principal.name} (role {principal.role.value}, tenant {principal.tenant!r}) cannot "
                f"submit jobs for tenant {wanted!r}; leave tenant empty or set it to {principal.tenant!r}",
                field="tenant",
            )
        return principal.tenant

    def _duplicate(self, first: Job, principal: Principal | None) -> Job:
        """A retried submit gets its first job, unless that job is not the caller's to see."""
        if principal is not None and not principal.can_see_job(
            job_tenant(first), first.job_id, first.created_by
        ):
            raise AlreadyExists(
                "this request id was already used by another request; use a new request id",
                field="request_id",
            )
        return first

    async def _job_for_request(self, req_key: str) -> Job | None:
        kv = await self.store.get(req_key)
        if kv is None:
            return None
        job_id = json.loads(kv.value)["job_id"]
        return await self.get_job(job_id)

    def visible(self, job_id: str, principal: Principal | None) -> bool:
        """Whether ``principal`` may know that ``job_id`` exists (None: the master itself)."""
        if principal is None or principal.is_admin:
            return True
        owner = self._owners.get(job_id)
        return owner is not None and principal.can_see_job(owner[0], job_id, owner[1])

    async def get_job(self, job_id: str, principal: Principal | None = None) -> Job:
        """The job, active or finished; NotFound if no such job or ``principal`` may not see it."""
        job = await self._find_job(job_id)
        if principal is not None and not principal.can_see_job(job_tenant(job), job.job_id, job.created_by):
            raise _job_not_found(job_id)
        return job

    async def _find_job(self, job_id: str) -> Job:
        if not job_id:
            raise InvalidArgument("is required", field="job_id")
        job = self._jobs.get(job_id) or self._finished_cache.get(job_id)
        if job is not None:
            return job
        if job_id and "/" not in job_id:
            kv = await self.store.get(_key(JOBS_PREFIX, job_id))
            if kv is not None:
                job = Job.from_dict(json.loads(kv.value))
                if job.job_id not in self._jobs:
                    self._cache_finished(job)
                return job
        raise _job_not_found(job_id)

    async def list_jobs(
        self, states: Iterable[JobState], limit: int, page_token: str, principal: Principal | None = None
    ) -> tuple[list[Job], str]:
        """Newest first, optionally filtered by state, only jobs ``principal`` may see; returns
        (jobs, next page token)."""
        wanted = set(states)
        if limit < 0:
            raise InvalidArgument(f"must not be negative, got {limit}", field="limit")
        limit = min(limit or self.config.max_jobs_listed, self.config.max_jobs_listed)
        pos = bisect.bisect_left(self._ids, page_token) if page_token else len(self._ids)
        ids: list[str] = []
        while pos > 0 and len(ids) < limit:
            pos -= 1
            job_id = self._ids[pos]
            active = self._jobs.get(job_id)
            state = active.state if active is not None else self._finished_state.get(job_id)
            if state is None or (wanted and state not in wanted) or not self.visible(job_id, principal):
                continue
            ids.append(job_id)
        more = False
        while pos > 0 and not more:  # is there anything after this page?
            pos -= 1
            job_id = self._ids[pos]
            active = self._jobs.get(job_id)
            state = active.state if active is not None else self._finished_state.get(job_id)
            more = state is not None and (not wanted or state in wanted) and self.visible(job_id, principal)
        jobs: list[Job] = []
        for job_id in ids:
            with contextlib.suppress(NotFound):
                jobs.append(await self.get_job(job_id))
        return jobs, (ids[-1] if more and ids else "")

    async def cancel_job(self, job_id: str, reason: str, principal: Principal | None = None) -> Job:
        """Stop every task of a job (idempotent; a finished job is returned unchanged)."""
        found = await self.get_job(job_id, principal)
        job = self._jobs.get(job_id)
        if job is None:
            return found
        # A gang still reserving is released first (its charges with it).
        effects = self._carry(self._coordinator.handle(_reserve.Cancel(job_id, reason or "cancelled")))
        effects.extend(self._jobs.handle(Cancel(job_id, reason)))
        ok = await self._commit(effects)
        if not ok:
            raise Unavailable("the cancel could not be recorded (store unavailable); retry")
        return job

    async def read_logs(
        self,
        job_id: str,
        task_index: int,
        stream: str,
        offset: int,
        max_bytes: int,
        principal: Principal | None = None,
    ) -> list[master_pb2.TaskLog]:
        """Fetch a chunk of one task's (or every task's) output from the nodes that ran them."""
        stream = stream or "stdout"
        if stream not in ("stdout", "stderr"):
            raise InvalidArgument(f"unknown stream {stream!r}; allowed: stdout, stderr", field="stream")
        if max_bytes < 0:
            raise InvalidArgument(f"must not be negative, got {max_bytes}", field="max_bytes")
        max_bytes = min(max_bytes or MAX_LOG_BYTES, MAX_LOG_BYTES)
        job = await self.get_job(job_id, principal)
        n = len(job.tasks)
        if task_index == -1:
            indexes = list(range(n))
        elif 0 <= task_index < n:
            indexes = [task_index]
        else:
            raise InvalidArgument(
                f"job {job_id} has tasks 0..{n - 1}, got {task_index}; use -1 for every task",
                field="task_index",
            )
        return list(
            await asyncio.gather(*(self._read_task_log(job, i, stream, offset, max_bytes) for i in indexes))
        )

    async def _read_task_log(
        self, job: Job, index: int, stream: str, offset: int, max_bytes: int
    ) -> master_pb2.TaskLog:
        task = job.tasks[index]
        attempt, node, sd = task.attempt, task.node_id, task.subdomain_id
        if not node and task.last_run is not None:
            attempt, node, sd = task.last_run
        out = master_pb2.TaskLog(task_index=index, attempt=attempt, node_id=node)
        if not node or not sd:
            out.chunk.error = f"task {index} has not started on a node yet (state {task.state.value})"
            return out
        session = self._registry.session(sd)
        if session is None:
            out.chunk.error = f"sub-domain {sd} holding task {index} is not connected"
            return out
        ref = TaskRef(job.job_id, index, attempt).to_proto()
        rid, fut = session.request(
            lambda rid: subdomain_pb2.MasterCommand(
                fetch_log=subdomain_pb2.FetchTaskLog(
                    request_id=rid,
                    node_id=node,
                    request=common_pb2.LogRequest(
                        task=ref, stream=stream, offset=offset, max_bytes=max_bytes
                    ),
                )
            )
        )
        try:
            async with asyncio.timeout(LOG_TIMEOUT_S):
                reply = await fut
        except TimeoutError:
            session.forget(rid)
            out.chunk.error = f"no answer from sub-domain {sd} within {LOG_TIMEOUT_S:g}s"
            return out
        except DomainOSError as exc:
            out.chunk.error = str(exc)
            return out
        out.chunk.CopyFrom(reply.chunk)
        return out

    async def list_nodes(self, subdomain_id: str, page_size: int) -> tuple[list[Any], list[str]]:
        """Ask connected sub-domains for their nodes in parallel; returns (nodes, unreachable)."""
        if page_size < 0:
            raise InvalidArgument(f"must not be negative, got {page_size}", field="page_size")
        page_size = page_size or DEFAULT_NODE_PAGE
        if subdomain_id:
            rec = self._registry.get(subdomain_id)
            if rec is None:
                raise NotFound(f"sub-domain {subdomain_id} is not known", field="subdomain_id")
            records = [rec]
        else:
            records = sorted(self._registry, key=lambda r: r.subdomain_id)

        async def ask(rec: SubdomainRecord) -> list[Any] | None:
            session = rec.session if rec.connected else None
            if session is None:
                return None
            rid, fut = session.request(
                lambda rid: subdomain_pb2.MasterCommand(
                    list_nodes=subdomain_pb2.ListNodes(request_id=rid, page_size=page_size)
                )
            )
            try:
                async with asyncio.timeout(NODES_TIMEOUT_S):
                    reply = await fut
            except TimeoutError:
                session.forget(rid)
                log.warning("sub-domain %s did not answer ListNodes %s in time", rec.subdomain_id, rid)
                return None
            except DomainOSError:
                return None
            if reply.error:
                log.warning("sub-domain %s could not list nodes: %s", rec.subdomain_id, reply.error)
                return None
            nodes = list(reply.nodes)
            for node in nodes:
                if not node.subdomain_id:
                    node.subdomain_id = rec.subdomain_id
                if not node.region:
                    node.region = rec.region
            return nodes

        answers = await asyncio.gather(*(ask(r) for r in records))
        nodes: list[Any] = []
        unreachable: list[str] = []
        for rec, answer in zip(records, answers, strict=True):
            if answer is None:
                unreachable.append(rec.subdomain_id)
            else:
                nodes.extend(answer)
        return nodes, unreachable

    async def admin_node(
        self, node: str, subdomain_id: str, action: int, reason: str, grace_s: float, *, by: str = ""
    ) -> master_pb2.AdminNodeResponse:
        """Cordon, drain or uncordon one node: asked of its sub-domain (or of every connected one
        when it is not named) over the sub-domain streams; the first that holds it answers.

        InvalidArgument for a bad node or action, NotFound when no sub-domain that answered holds
        the node, Unavailable when the named sub-domain is not connected, FailedPrecondition when
        the sub-domain refuses (an uncordon of a node that still reports itself unhealthy).
        """
        if "/" in node:
            named, _, node = node.partition("/")
            if subdomain_id and subdomain_id != named:
                raise InvalidArgument(
                    f"names sub-domain {named!r} but subdomain_id is {subdomain_id!r}", field="node_id"
                )
            subdomain_id = named
        if not node or not NODE_ID_RE.match(node):
            raise InvalidArgument(
                f"expected a node id (or <sub-domain>/<node>), got {node!r:.80}", field="node_id"
            )
        if action not in (
            common_pb2.NODE_ACTION_CORDON,
            common_pb2.NODE_ACTION_DRAIN,
            common_pb2.NODE_ACTION_UNCORDON,
        ):
            raise InvalidArgument(f"expected cordon, drain or uncordon, got {action}", field="action")
        if not 0 <= grace_s <= 3600 or grace_s != grace_s:
            raise InvalidArgument(f"must be between 0 and 3600 seconds, got {grace_s}", field="grace_s")
        if len(reason) > 300:
            raise InvalidArgument(f"at most 300 characters, got {len(reason)}", field="reason")
        if subdomain_id:
            rec = self._registry.get(subdomain_id)
            if rec is None:
                raise NotFound(f"sub-domain {subdomain_id} is not known", field="subdomain_id")
            if not rec.connected or rec.session is None:
                raise Unavailable(f"sub-domain {subdomain_id} is not connected; try again when it is")
            records = [rec]
        else:
            records = sorted((r for r in self._registry if r.connected), key=lambda r: r.subdomain_id)

        async def ask(rec: SubdomainRecord) -> Any:
            session = rec.session if rec.connected else None
            if session is None:
                return None
            rid, fut = session.request(
                lambda rid: subdomain_pb2.MasterCommand(
                    node_admin=subdomain_pb2.NodeAdmin(
                        request_id=rid,
                        node_id=node,
                        action=cast(Any, action),
                        reason=reason,
                        grace_s=grace_s,
                        by=by,
                    )
                )
            )
            try:
                async with asyncio.timeout(NODES_TIMEOUT_S):
                    return await fut
            except TimeoutError:
                session.forget(rid)
                log.warning("sub-domain %s did not answer NodeAdmin %s in time", rec.subdomain_id, rid)
                return None
            except DomainOSError as exc:
                log.warning("sub-domain %s could not be asked NodeAdmin %s: %s", rec.subdomain_id, rid, exc)
                return None

        answers = await asyncio.gather(*(ask(r) for r in records))
        unreachable = [r.subdomain_id for r, a in zip(records, answers, strict=True) if a is None]
        found = [(r, a) for r, a in zip(records, answers, strict=True) if a is not None and a.found]
        if not found:
            where = (
                f"sub-domain {subdomain_id}"
                if subdomain_id
                else f"{len(records) - len(unreachable)} sub-domains"
            )
            missing = f" ({', '.join(unreachable)} did not answer)" if unreachable else ""
            raise NotFound(f"node {node} is not a node of {where}{missing}", field="node_id")
        if len(found) > 1:
            names = ", ".join(f"{r.subdomain_id}/{node}" for r, _ in found)
            log.warning("node id %s is in several sub-domains (%s): acted on in each", node, names)
        rec, reply = found[0]
        if reply.error:
            raise FailedPrecondition(reply.error)
        view = reply.node
        if not view.subdomain_id:
            view.subdomain_id = rec.subdomain_id
        return master_pb2.AdminNodeResponse(
            node=view, tasks_stopped=sum(a.tasks_stopped for _, a in found), unreachable=unreachable
        )

    def list_domains(self) -> master_pb2.ListDomainsResponse:
        """Regions and their sub-domains, from memory (no per-node data)."""
        regions: dict[str, list[master_pb2.SubDomainView]] = {}
        for rec in sorted(self._registry, key=lambda r: r.subdomain_id):
            regions.setdefault(rec.region, []).append(
                master_pb2.SubDomainView(
                    subdomain_id=rec.subdomain_id,
                    region=rec.region,
                    address=rec.address,
                    connected=rec.connected,
                    last_seen_at=rec.last_seen_at,
                    summary=rec.summary.to_proto(),
                    incarnation=rec.incarnation,
                )
            )
        return master_pb2.ListDomainsResponse(
            regions=[
                master_pb2.RegionView(name=name, subdomains=sds) for name, sds in sorted(regions.items())
            ]
        )

    def cluster_info(self) -> master_pb2.ClusterInfo:
        connected = self._registry.connected()
        return master_pb2.ClusterInfo(
            master_id=self.config.id,
            version=domainos.__version__,
            store=self.config.store,
            started_at=self._started_at,
            subdomains_connected=len(connected),
            subdomains_known=len(self._registry),
            nodes_ready=sum(r.summary.nodes_ready for r in connected),
            jobs_active=len(self._jobs),
        )

    # -- the DSDK's data plane: rendezvous, job statistics, datasets ------------------------------

    @property
    def datasets(self) -> DatasetRegistry:
        if self._datasets is None:
            raise Unavailable("the master is not started")
        return self._datasets

    def _own_active_job(self, job_id: str, principal: Principal | None, what: str) -> Job:
        """The active job ``principal`` may act on (a job credential: only its own job)."""
        if not job_id:
            raise InvalidArgument("is required", field="job_id")
        job = self._jobs.get(job_id)
        if job is None or not self.visible(job_id, principal):
            if self.visible(job_id, principal) and job_id in self._finished_state:
                raise FailedPrecondition(f"job {job_id} has finished; nothing more can be {what}")
            raise _job_not_found(job_id)
        if principal is not None and principal.role is Role.JOB and principal.job_id != job_id:
            raise PermissionDenied(
                f"a job credential acts only for its own job ({principal.job_id}), not {job_id}",
                field="job_id",
            )
        return job

    def publish_endpoint(
        self, job_id: str, endpoint: Endpoint, principal: Principal | None = None
    ) -> Endpoint:
        """Record where a task of an active job serves. Where the task runs (node, sub-domain,
        region) is taken from the job record, not from the request; a stale attempt is refused."""
        job = self._own_active_job(job_id, principal, "published")
        index = endpoint.task_index
        if 0 <= index < len(job.tasks):
            task = job.tasks[index]
            if endpoint.attempt != task.attempt:
                raise FailedPrecondition(
                    f"task {index} of job {job_id} is at attempt {task.attempt}, not {endpoint.attempt}",
                    field="endpoint.attempt",
                )
            endpoint = dataclasses.replace(
                endpoint,
                node_id=task.node_id or endpoint.node_id,
                subdomain_id=task.subdomain_id or endpoint.subdomain_id,
                region=task.region or endpoint.region,
                published_at=self._clock.time(),
            )
        self.rendezvous.publish(job_id, endpoint, replicas=job.spec.replicas)
        log.info(
            "job %s task %d.%d serves %s at %s (node %s)",
            job_id,
            endpoint.task_index,
            endpoint.attempt,
            endpoint.kind,
            endpoint.address,
            endpoint.node_id,
        )
        return endpoint

    async def list_endpoints(
        self, job_id: str, *, kind: str, min_count: int, wait_s: float, principal: Principal | None = None
    ) -> tuple[list[Endpoint], JobState]:
        """The current attempts' endpoints of a job, waiting (bounded) for ``min_count``."""
        job = await self.get_job(job_id, principal)
        check_kind(kind)
        if min_count < 0:
            raise InvalidArgument(f"must not be negative, got {min_count}", field="min_count")

        def current() -> list[Endpoint]:
            live = self._jobs.get(job_id)
            if live is None:
                return []
            return [
                e
                for e in self.rendezvous.endpoints(job_id, kind)
                if e.task_index < len(live.tasks) and live.tasks[e.task_index].attempt == e.attempt
            ]

        def done() -> bool:
            live = self._jobs.get(job_id)
            return live is None or live.terminal or len(current()) >= min_count

        await self.rendezvous.wait(job_id, done, wait_s)
        live = self._jobs.get(job_id)
        return current(), (live or job).state

    async def report_job_stats(
        self, job_id: str, stats: Mapping[str, float], principal: Principal | None = None
    ) -> dict[str, float]:
        """Replace the job's data-plane totals (the driver reports running totals)."""
        job = await self.get_job(job_id, principal)
        if principal is not None and principal.role is Role.JOB and principal.job_id != job_id:
            raise PermissionDenied(
                f"a job credential reports only for its own job ({principal.job_id}), not {job_id}",
                field="job_id",
            )
        values = {**stats, "updated_at": self._clock.time()}
        live = self._jobs.get(job_id)
        if live is not None:
            live.stats = values
            live.version += 1
            self._dirty[job_id] = None  # written with the next commit (no extra write per report)
            self.wake()
            return values
        # A finished job: update its stored record (the driver's last report may come after the end).
        assert self._commit_lock is not None
        async with self._commit_lock:
            kv = await self.store.get(_key(JOBS_PREFIX, job_id))
            if kv is None:
                raise _job_not_found(job_id)
            data = json.loads(kv.value)
            data["stats"] = values
            await self.store.put(_key(JOBS_PREFIX, job_id), json.dumps(data, separators=(",", ":")).encode())
        job.stats = values
        return values

    # -- quotas and explain (the scheduler's client API) ----------------------------------------

    async def set_quota(self, tenant: str, region: str, subdomain: str, limits: Mapping[str, int]) -> Quota:
        """Create or replace ``tenant``'s quota in ``region/subdomain`` (empty or ``*``: all).

        InvalidArgument names the bad field; an unknown tenant is NotFound. Stored under
        ``/domainos/master/quotas/<tenant>/<region>/<subdomain>``; applies from the next pass.
        """
        quota = validated_quota(tenant, region or ANY, subdomain or ANY, limits)
        await self.directory.require_tenant(quota.tenant, "tenant")
        await self.store.put(_quota_key(quota), json.dumps(quota.to_dict(), separators=(",", ":")).encode())
        self._admission.put_quota(quota)
        log.info("quota of tenant %s in %s set: %s", quota.tenant, quota.name, dict(quota.limits))
        self.wake()
        return quota

    async def delete_quota(self, tenant: str, region: str, subdomain: str) -> Quota:
        """Remove one quota (NotFound names it); usage stays with the allocations that hold it."""
        region, subdomain = region or ANY, subdomain or ANY
        quota = self._admission.quotas.quota(tenant, region, subdomain)
        if quota is None:
            self._admission.remove_quota(tenant, region, subdomain)  # raises NotFound with the words
            raise AssertionError("unreachable")
        await self.store.delete(_quota_key(quota))
        self._admission.remove_quota(tenant, region, subdomain)
        log.info("quota of tenant %s in %s removed", tenant, quota.name)
        self.wake()
        return quota

    async def list_quotas(self, tenant: str = "") -> list[QuotaRow]:
        """Every quota (of ``tenant``) with what the tenant uses inside its scope, per class."""
        return self._admission.quota_rows(tenant)

    async def explain(self, job_id: str, principal: Principal | None = None) -> str:
        """Why the job is where it is, or why it waits: quota, power, capacity, queue position."""
        job = await self.get_job(job_id, principal)
        adm = self._admission
        tenant = job_tenant(job)
        pc = adm.priority(job.spec.priority)
        lines = [
            f"job {job.job_id} (tenant {tenant}, priority {pc.describe()}, {job.spec.replicas} x "
            f"{job.spec.resources.describe()}): {job.state.value}"
            + (f" - {job.message}" if job.message else "")
        ]
        lines.extend(
            f"  {line}"
            for line in self._preemptions.explain(
                job.job_id,
                lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
                waiting=any(t.state is TaskState.PENDING for t in job.tasks),
            )
        )
        if job.spec.is_gang and job.job_id in self._jobs:
            lines.extend(self._explain_gang(job))
        pending = [t.index for t in job.tasks if t.state is TaskState.PENDING]
        if pending and job.job_id in self._jobs:
            lines.append(f"{len(pending)} task(s) pending: {_indexes(pending)}")
            wait = adm.last_wait(job.job_id)
            if wait is not None:
                why = wait.reason if wait.kind != "capacity" else f"capacity: {wait.reason}"
                lines.append(f"  why it waits: {why}")
            elif job.message.startswith("waiting:"):
                lines.append(f"  {job.message}")
            else:
                lines.append("  not tried yet: the next scheduling pass will")
            position = adm.queue_position(job.job_id)
            if position:
                lines.append(f"  queue: {position}")
            for row in adm.quota_rows(tenant):
                lines.append(f"  quota {row.describe()}")
        groups: dict[tuple[str, str, str, str], list[int]] = {}
        for t in job.tasks:
            if t.live:
                why = adm.why_placed(allocation_id(job.job_id, t.index, t.attempt))
                groups.setdefault((t.subdomain_id, t.region, t.state.value, why), []).append(t.index)
        for (sd, region, state, why), idx in groups.items():
            lines.append(f"task(s) {_indexes(idx)} {state} on sub-domain {sd} (region {region}): {why}")
            lines.append(f"  {adm.describe_power(region)}")
        done = Counter(t.state.value for t in job.tasks if t.terminal)
        if done:
            lines.append("finished tasks: " + ", ".join(f"{n} {s}" for s, n in sorted(done.items())))
        return "\n".join(lines)

    # -- introspection ---------------------------------------------------------------------------

    def stats(self) -> MasterStats:
        """A snapshot for metrics (called from the scrape thread; tolerates concurrent changes)."""
        for _ in range(3):
            try:
                jobs = Counter(dict(self._jobs.state_counts))
                jobs.update(dict(self._finished_counts))
                records = list(self._registry)
                connected = [r for r in records if r.connected]
                rs = self._coordinator.stats
                return MasterStats(
                    jobs_by_state={s.value: jobs.get(s, 0) for s in JobState},
                    subdomains_connected=len(connected),
                    subdomains_disconnected=len(records) - len(connected),
                    tasks_placed_total=self._jobs.placed_total,
                    misdispatch_total=self._jobs.misdispatch_total,
                    nodes_ready=sum(r.summary.nodes_ready for r in connected),
                    reservations_sent=rs.reserves_sent,
                    reservations_accepted=rs.accepted,
                    reservations_refused=rs.refused,
                    reservations_expired=rs.expired,
                    gangs_placed=rs.gangs_placed,
                    gangs_failed=rs.gangs_failed,
                    tasks_drained_total=self._jobs.drained_total,
                    tasks_preempted_total=self._jobs.preempted_total,
                    goodput_lost_task_s=self._jobs.lost_task_s,
                    goodput_recovery_task_s=self._jobs.recovery_task_s,
                    stragglers=sum(len(j.stragglers) for j in self._jobs.progress_jobs()),
                    job_goodput=[
                        (j.job_id, job_tenant(j), j.goodput(time.time()))
                        for j in self._jobs.goodput_jobs(MAX_GOODPUT_JOBS)
                    ],
                    is_leader=self.is_leader,
                    **self._capacity_stats(records),
                )
            except RuntimeError:  # a dict changed size while being copied: try again
                continue
        return MasterStats()

    def _capacity_stats(self, records: list[SubdomainRecord]) -> dict[str, Any]:
        """Per sub-domain, per region and per quota figures for metrics: O(sub-domains + quotas)
        at scrape time, from the summaries and the admission books (nothing per node)."""
        subdomains = [
            SubdomainStat(
                subdomain=r.subdomain_id,
                region=r.region,
                connected=r.connected,
                nodes_ready=r.summary.nodes_ready,
                nodes_suspect=r.summary.nodes_suspect,
                nodes_dead=r.summary.nodes_dead,
                capacity_gpus=r.summary.capacity.gpus,
                free_gpus=r.summary.free.gpus,
                capacity_cpu_cores=r.summary.capacity.cpu_millis / 1000,
                free_cpu_cores=r.summary.free.cpu_millis / 1000,
                capacity_memory_bytes=r.summary.capacity.memory_bytes,
                free_memory_bytes=r.summary.free.memory_bytes,
                running_tasks=r.summary.running_tasks,
                power_draw_w=r.summary.power_draw_w,
            )
            for r in records
        ]
        power = self._admission.power
        region_power = [
            RegionPowerStat(
                region=region,
                budget_w=power.budget_w(region),
                charged_w=power.charged_w(region),
                measured_w=power.measured_w(region),
                in_use_w=power.in_use_w(region),
            )
            for region in power.regions()
        ]
        quotas = [
            QuotaStat(
                row.quota.tenant, row.quota.region, row.quota.subdomain, cls, limit, row.used.get(cls, 0)
            )
            for row in self._admission.quota_rows()
            for cls, limit in row.quota.limits.items()
        ]
        return {"subdomains": subdomains, "region_power": region_power, "quotas": quotas}

    @property
    def jobs(self) -> JobTable:
        """The active job table (read-only use: tests and diagnostics)."""
        return self._jobs
