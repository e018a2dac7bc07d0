"""Real servers for the fuzz tests, on an event loop in a background thread.

Hypothesis drives the examples from the test thread; every server (a master, a sub-domain) and
every well-behaved peer (a scripted sub-domain on the master, a scripted agent on the sub-domain)
lives on one event loop in a daemon thread for the whole module, so an example costs one round
trip, not a server start. :meth:`LoopThread.call` runs a coroutine there and turns "no answer in
time" into a test failure: a hang is a bug like a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from domainos.api.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    master_pb2,
    master_pb2_grpc,
    subdomain_pb2,
    subdomain_pb2_grpc,
)
from domainos.rpc import create_channel, create_sync_channel
from domainos.store import KeyValue
from master_domain import MasterConfig, MasterDomain
from master_domain._summary import Summary as MasterSummary
from sub_domain import SubDomainConfig, SubDomainManager

T = TypeVar("T")
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
GI = 2**30

#: Every call a fuzz test makes has this deadline: no answer in time is a hang, and a failure.
CALL_DEADLINE_S = 5.0

#: Status codes a hostile request may get. Anything else (INTERNAL, UNKNOWN, DEADLINE_EXCEEDED,
#: UNAVAILABLE, CANCELLED ...) is a bug: a crash, a hang, or a status that does not say why.
EXPECTED_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)

#: Store keys a refused call may still write: the audit log records refusals too (issue 3).
AUDIT_MARKER = "/audit/"


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fuzz-servers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_DEADLINE_S * 2, what: str = "") -> T:
        """Run ``coro`` on the loop; fail the test when it takes longer than ``timeout`` seconds."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise AssertionError(f"no answer within {timeout}s: {what or coro}") from None

    def close(self) -> None:
        async def cancel_rest() -> None:
            me = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not me]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_rest(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


async def poll(cond: Callable[[], Any], timeout: float = CALL_DEADLINE_S, what: str = "condition") -> Any:
    """Poll ``cond`` on the loop until it is truthy; fail after ``timeout`` seconds (never a sleep-wait)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def poll_async(
    cond: Callable[[], Awaitable[Any]], timeout: float = CALL_DEADLINE_S, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


def with_insecure(cls: type, **kw: Any) -> dict[str, Any]:
    """``kw`` plus ``insecure=True`` when the config class has that flag (mutual TLS is not under
    test), and no per-client rate limit (a fuzz run is one very busy client)."""
    names = {f.name for f in dataclasses.fields(cls)}
    if "insecure" in names:
        kw["insecure"] = True
    if "rate_limit_per_s" in names:
        kw["rate_limit_per_s"] = 0.0
    return {k: v for k, v in kw.items() if k in names}


@dataclasses.dataclass
class Outcome:
    """How a call or stream ended."""

    code: grpc.StatusCode
    details: str
    received: list[Any] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        return f"{self.code.name}: {self.details[:300]!r}"


def unary(method: Any, request: Any, metadata: Any = None) -> Outcome:
    """One unary call from the test thread (a blocking channel, as the DSDK uses)."""
    try:
        reply = method(request, timeout=CALL_DEADLINE_S, metadata=metadata)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "")
    return Outcome(grpc.StatusCode.OK, "", [reply])


def stream(
    method: Any,
    messages: Sequence[Any],
    metadata: Any = None,
    while_open: Callable[[Any], None] | None = None,
) -> Outcome:
    """Send ``messages`` on a bidi stream from the test thread, half-close, read until it ends.

    ``while_open(call)`` runs after the last message is sent and before the half-close (from
    gRPC's sending thread: it must record what it finds, not raise). A blocking channel, not
    ``grpc.aio``: an aio client that writes after the server has ended the stream reports a local
    INTERNAL ("Internal error from Core") instead of the server's status.
    """
    received: list[Any] = []
    started = threading.Event()
    calls: list[Any] = []

    def requests() -> Iterator[Any]:
        yield from messages
        if while_open is not None and started.wait(CALL_DEADLINE_S):
            while_open(calls[0])

    call = method(requests(), timeout=CALL_DEADLINE_S, metadata=metadata)
    calls.append(call)
    started.set()
    try:
        for reply in call:
            received.append(reply)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", received)
    return Outcome(grpc.StatusCode.OK, "", received)


# -- a scripted sub-domain (a well-behaved peer of the master) ----------------------------------------


def summary(nodes: int = 4, cpus: int = 8) -> common_pb2.SubDomainSummary:
    node = common_pb2.Resources(cpu_millis=cpus * 1000, memory_bytes=16 * GI)
    total = common_pb2.Resources(cpu_millis=cpus * 1000 * nodes, memory_bytes=16 * GI * nodes)
    return common_pb2.SubDomainSummary(
        nodes_total=nodes,
        nodes_ready=nodes,
        capacity=total,
        free=total,
        shapes=[common_pb2.NodeShape(count=nodes, best=node)],
        max_nodes=100,
        largest_node=node,
    )


class ScriptedSubdomain:
    """Says Hello, then answers the master: ``behaviour`` is ``run`` (ASSIGNED, RUNNING),
    ``succeed`` (... SUCCEEDED) or ``inert`` (placements and stops get no answer). Node lists and
    log fetches are always answered."""

    def __init__(self, address: str, subdomain_id: str, region: str = "east") -> None:
        self.address = address
        self.id = subdomain_id
        self.region = region
        self.incarnation = f"inc-{subdomain_id}"
        self.behaviour = "run"
        self.welcome: Any = None
        self.commands: list[Any] = []
        self.ended = asyncio.Event()
        self.error: grpc.aio.AioRpcError | None = None
        self._seq = 0
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._channel = create_channel(self.address)
        self._call = subdomain_pb2_grpc.SubDomainGatewayStub(self._channel).Connect()
        hello = subdomain_pb2.Hello(
            subdomain_id=self.id,
            region=self.region,
            incarnation=self.incarnation,
            address=f"{self.id}.local:7100",
            max_nodes=100,
            summary=summary(),
        )
        await self._call.write(subdomain_pb2.SubDomainMessage(hello=hello))
        self._reader = asyncio.create_task(self._read())
        await poll(lambda: self.welcome is not None or self.ended.is_set(), what=f"{self.id} welcomed")
        assert self.welcome is not None, f"{self.id} was refused: {self.error}"

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()

    async def _report(self, ref: Any, state: int, **kw: Any) -> None:
        self._seq += 1
        status = common_pb2.TaskStatus(
            job_id=ref.job_id,
            task_index=ref.task_index,
            attempt=ref.attempt,
            state=state,
            node_id=f"{self.id}-n-1",
            subdomain_id=self.id,
            **kw,
        )
        await self._call.write(
            subdomain_pb2.SubDomainMessage(
                task_updates=subdomain_pb2.TaskUpdates(
                    incarnation=self.incarnation, seq=self._seq, tasks=[status]
                )
            )
        )

    async def _read(self) -> None:
        try:
            async for cmd in self._call:
                self.commands.append(cmd)
                await self._handle(cmd)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        except asyncio.CancelledError:
            pass
        finally:
            self.ended.set()

    async def _handle(self, cmd: Any) -> None:
        kind = cmd.WhichOneof("body")
        if kind == "place_tasks":  # a batch: each as if it came alone
            for place in cmd.place_tasks.tasks:
                await self._handle(subdomain_pb2.MasterCommand(place_task=place))
        elif kind == "welcome":
            self.welcome = cmd.welcome
        elif kind == "place_task" and self.behaviour != "inert":
            spec = cmd.place_task.spec
            await self._report(spec, common_pb2.TASK_STATE_ASSIGNED)
            await self._report(spec, common_pb2.TASK_STATE_RUNNING)
            if self.behaviour == "succeed":
                await self._report(spec, common_pb2.TASK_STATE_SUCCEEDED)
        elif kind == "stop_task" and self.behaviour != "inert":
            await self._report(cmd.stop_task.task, common_pb2.TASK_STATE_CANCELLED, exit_code=143)
        elif kind == "list_nodes":
            nodes = [
                common_pb2.NodeView(
                    inventory=common_pb2.NodeInventory(node_id=f"{self.id}-n-{i}", cpu_cores=8), state="ready"
                )
                for i in range(4)
            ]
            reply = subdomain_pb2.NodeListReply(request_id=cmd.list_nodes.request_id, nodes=nodes)
            await self._call.write(subdomain_pb2.SubDomainMessage(node_list=reply))
        elif kind == "fetch_log":
            data = b"hello from a task\n"
            reply = common_pb2.LogReply(
                request_id=cmd.fetch_log.request_id,
                chunk=common_pb2.LogChunk(data=data, offset=0, size=len(data), eof=True),
            )
            await self._call.write(subdomain_pb2.SubDomainMessage(log_reply=reply))


# -- a master with a well-behaved sub-domain and jobs in every kind of state ------------------------------

JOBS_PREFIX = "/domainos/master/jobs/"


class MasterRig:
    """A real master on 127.0.0.1:0 (memory store), one scripted sub-domain ``good-1`` and jobs:
    ``running`` (2 tasks RUNNING on good-1), ``done`` (SUCCEEDED) and, when the scheduler is paused,
    ``pending`` (never placed)."""

    GOOD = "good-1"

    def __init__(self, master: MasterDomain) -> None:
        self.master = master
        self.address = master.address
        self.channel = create_channel(self.address)
        self.api = master_pb2_grpc.DomainControlStub(self.channel)
        # The fuzz calls come from the test thread, on a blocking channel.
        self.sync_channel = create_sync_channel(self.address)
        self.client = master_pb2_grpc.DomainControlStub(self.sync_channel)
        self.gateway = subdomain_pb2_grpc.SubDomainGatewayStub(self.sync_channel)
        self.good = ScriptedSubdomain(self.address, self.GOOD)
        self.jobs: dict[str, str] = {}
        #: name -> (token id, token) of tokens made at seeding.
        self.tokens: dict[str, tuple[str, str]] = {}
        #: Sent with every call (a bearer token, once the master asks for one).
        self.metadata: tuple[tuple[str, str], ...] | None = None

    @classmethod
    async def start(cls, *, pause_scheduler: bool) -> MasterRig:
        token_dir = tempfile.mkdtemp(prefix="fuzz-master-")
        token_file = os.path.join(token_dir, "admin.token")
        config = MasterConfig(
            **with_insecure(
                MasterConfig,
                id="m-fuzz",
                listen="127.0.0.1:0",
                metrics_listen="",
                store="memory://",
                subdomain_lost_grace_s=3600.0,
                place_timeout_s=3600.0,
                bootstrap_token_file=token_file,
            )
        )
        master = MasterDomain(config)
        await master.start()
        rig = cls(master)
        try:
            if os.path.exists(token_file):  # the master asks for a bearer token: be its admin
                with open(token_file, encoding="utf-8") as f:
                    rig.metadata = (("authorization", f"Bearer {f.read().strip()}"),)
            await rig._seed(pause_scheduler)
        except BaseException:
            await rig.close()
            raise
        finally:
            shutil.rmtree(token_dir, ignore_errors=True)
        return rig

    async def _submit(self, name: str, replicas: int) -> str:
        spec = master_pb2.JobSpec(
            name=name,
            replicas=replicas,
            command=["python3", "-c", "pass"],
            resources=common_pb2.Resources(cpu_millis=500, memory_bytes=256 * 2**20),
        )
        resp = await self.api.SubmitJob(
            master_pb2.SubmitJobRequest(spec=spec, request_id=f"seed-{name}"),
            timeout=CALL_DEADLINE_S,
            metadata=self.metadata,
        )
        return str(resp.job.job_id)

    async def stored_job(self, job_id: str) -> dict[str, Any]:
        kv = await self.master.store.get(JOBS_PREFIX + job_id)
        assert kv is not None, f"job {job_id} is not in the store"
        record: dict[str, Any] = json.loads(kv.value)
        return record

    async def _seed(self, pause_scheduler: bool) -> None:
        await self.good.connect()
        self.good.behaviour = "run"
        self.jobs["running"] = running = await self._submit("running", 2)

        async def all_running() -> bool:
            job = self.master.jobs.get(running)
            return job is not None and all(t.state.value == "RUNNING" for t in job.tasks)

        await poll_async(all_running, what="the seed job running")
        self.good.behaviour = "succeed"
        self.jobs["done"] = done = await self._submit("done", 1)
        await poll_async(lambda: self._state_is(done, "SUCCEEDED"), what="the seed job succeeded and stored")
        await self._seed_people()
        if pause_scheduler:
            # No background writes from here on: a store snapshot changes only when a call does.
            async def no_scheduling() -> None:
                return None

            self.master.schedule_once = no_scheduling  # type: ignore[method-assign]
            self.good.behaviour = "inert"
            self.jobs["pending"] = await self._submit("pending", 3)
        await poll_async(lambda: self._state_is(running, "RUNNING"), what="the running job stored")

    async def _seed_people(self) -> None:
        """Tenant ``acme`` with a user token (a second caller), and a token hostile calls may revoke."""
        if self.metadata is None:
            return
        await self.api.CreateTenant(
            master_pb2.CreateTenantRequest(name="acme"), timeout=CALL_DEADLINE_S, metadata=self.metadata
        )
        for name in ("user", "victim"):
            resp = await self.api.CreateToken(
                master_pb2.CreateTokenRequest(tenant="acme", role=master_pb2.ROLE_USER, description=name),
                timeout=CALL_DEADLINE_S,
                metadata=self.metadata,
            )
            self.tokens[name] = (str(resp.info.token_id), str(resp.token))

    def caller(self, who: str) -> tuple[tuple[str, str], ...] | None:
        """Metadata of a caller: ``admin``, ``user`` (tenant acme) or ``anonymous``."""
        if who == "admin":
            return self.metadata
        if who == "user" and "user" in self.tokens:
            return (("authorization", f"Bearer {self.tokens['user'][1]}"),)
        return None

    async def _state_is(self, job_id: str, state: str) -> bool:
        kv = await self.master.store.get(JOBS_PREFIX + job_id)
        return kv is not None and json.loads(kv.value)["state"] == state

    async def snapshot(self) -> list[KeyValue]:
        """Every key in the master's store (audit entries excepted: refusals are audited)."""
        return [kv for kv in await self.master.store.range("") if AUDIT_MARKER not in kv.key]

    async def alive(self) -> None:
        """The master still answers and its job table is consistent."""
        info = await self.api.GetClusterInfo(
            master_pb2.GetClusterInfoRequest(), timeout=CALL_DEADLINE_S, metadata=self.metadata
        )
        assert info.master_id == "m-fuzz"
        self.master.jobs.validate()

    def running_tasks(self) -> list[tuple[int, int, str, str]]:
        job = self.master.jobs.get(self.jobs["running"])
        assert job is not None, "the running seed job left the job table"
        return [(t.index, t.attempt, t.state.value, t.subdomain_id) for t in job.tasks]

    async def close(self) -> None:
        await self.good.close()
        self.sync_channel.close()
        await self.channel.close()
        await self.master.shutdown()


# -- a scripted agent (a well-behaved peer on the sub-domain) ----------------------------------------------


def inventory(node_id: str, cpus: int = 8) -> common_pb2.NodeInventory:
    return common_pb2.NodeInventory(
        node_id=node_id,
        hostname=f"{node_id}.test",
        simulated=True,
        cpu_cores=cpus,
        memory_bytes=32 * GI,
        allocatable=common_pb2.Resources(cpu_millis=cpus * 1000, memory_bytes=32 * GI),
    )


class ScriptedAgent:
    """Registers, answers ``StartTask`` with RUNNING, records every command."""

    def __init__(self, address: str, node_id: str) -> None:
        self.address = address
        self.node_id = node_id
        self.incarnation = f"inc-{node_id}"
        #: What it registers with (change it before :meth:`connect`).
        self.inventory = inventory(node_id)
        self.commands: list[Any] = []
        self.registered: Any = None
        self.ended = asyncio.Event()
        self.error: grpc.aio.AioRpcError | None = None
        self._seq = 0
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._channel = create_channel(self.address)
        self._call = agent_pb2_grpc.AgentGatewayStub(self._channel).Connect()
        register = agent_pb2.Register(
            inventory=self.inventory,
            incarnation=self.incarnation,
            usage=common_pb2.NodeUsage(cpu_percent=1.0),
            health=common_pb2.NodeHealth(status=common_pb2.HEALTH_STATUS_HEALTHY),
        )
        await self._call.write(agent_pb2.AgentMessage(register=register))
        self._reader = asyncio.create_task(self._read())
        await poll(
            lambda: self.registered is not None or self.ended.is_set(), what=f"{self.node_id} registered"
        )
        assert self.registered is not None, f"{self.node_id} was refused: {self.error}"

    async def _read(self) -> None:
        try:
            async for cmd in self._call:
                self.commands.append(cmd)
                kind = cmd.WhichOneof("body")
                if kind == "registered":
                    self.registered = cmd.registered
                elif kind == "start_task":
                    spec = cmd.start_task.spec
                    self._seq += 1
                    status = common_pb2.TaskStatus(
                        job_id=spec.job_id,
                        task_index=spec.task_index,
                        attempt=spec.attempt,
                        state=common_pb2.TASK_STATE_RUNNING,
                        node_id=self.node_id,
                        pid=4242,
                    )
                    report = agent_pb2.AgentReport(
                        incarnation=self.incarnation, seq=self._seq, tasks=[status]
                    )
                    await self._call.write(agent_pb2.AgentMessage(report=report))
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        except asyncio.CancelledError:
            pass
        finally:
            self.ended.set()

    def kinds(self) -> list[str]:
        return [str(c.WhichOneof("body")) for c in self.commands]

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()


class SubdomainRig:
    """A real standalone sub-domain on 127.0.0.1:0 with one scripted agent ``good-node`` running
    task ``j-good/0#0`` (placed as the master would, through :meth:`handle_master_command`)."""

    GOOD_NODE = "good-node"
    GOOD_JOB = "j-good"

    def __init__(self, manager: SubDomainManager) -> None:
        self.manager = manager
        self.address = manager.listen_address
        self.channel = create_channel(self.address)
        self.sync_channel = create_sync_channel(self.address)
        self.gateway = agent_pb2_grpc.AgentGatewayStub(self.sync_channel)
        self.good = ScriptedAgent(self.address, self.GOOD_NODE)

    @classmethod
    async def start(cls) -> SubdomainRig:
        config = SubDomainConfig(
            **with_insecure(
                SubDomainConfig,
                id="sd-fuzz",
                region="east",
                listen="127.0.0.1:0",
                metrics_listen="",
                store="memory://",
                silent_after_s=3600.0,
                dead_after_s=0.2,
            )
        )
        manager = SubDomainManager(config)
        await manager.start()
        rig = cls(manager)
        try:
            await rig.good.connect()
            place = subdomain_pb2.PlaceTask(
                command_id="place-good",
                spec=common_pb2.TaskSpec(
                    job_id=cls.GOOD_JOB,
                    task_index=0,
                    attempt=0,
                    command=["sleep", "3600"],
                    resources=common_pb2.Resources(cpu_millis=1000, memory_bytes=GI),
                    job_name="good",
                    replicas=1,
                ),
            )
            await manager.handle_master_command(subdomain_pb2.MasterCommand(place_task=place))
            await poll(lambda: rig.good_task_state() == "RUNNING", what="the good task running")
        except BaseException:
            await rig.close()
            raise
        return rig

    def good_task_state(self) -> str | None:
        from domainos.model import TaskRef

        status = self.manager.task_status(TaskRef(self.GOOD_JOB, 0, 0))
        if status is None:
            return None
        assert status.node_id == self.GOOD_NODE, f"the good task moved to node {status.node_id!r}"
        return status.state.name

    def check(self) -> None:
        """Invariants of the registry and task table; the good node and its task are untouched;
        the sub-domain can still describe itself to the master, and the master accepts it."""
        self.manager.registry.validate()
        self.manager.tasks.validate()
        summary = self.manager.summary().to_proto()
        self.manager.build_hello(self.manager.summary()).SerializeToString()
        MasterSummary.from_proto(summary)
        assert self.manager.node_state(self.GOOD_NODE) == "ready", self.manager.node_state(self.GOOD_NODE)
        assert not self.good.ended.is_set(), f"the good agent's stream ended: {self.good.error}"
        assert self.good_task_state() == "RUNNING"
        unexpected = [k for k in self.good.kinds() if k not in ("registered", "start_task")]
        assert not unexpected, f"the good agent got commands it should not have: {unexpected}"

    async def close(self) -> None:
        await self.good.close()
        self.sync_channel.close()
        await self.channel.close()
        await self.manager.shutdown()
