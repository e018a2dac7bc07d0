"""Shared helpers for the master-domain tests: a pure-table driver and a fake sub-domain.

The fake sub-domain is a raw client of ``SubDomainGateway.Connect`` over real gRPC: it says
Hello with a summary and answers the master's commands the way a sub-domain would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc.aio

from domainos.api.v1 import common_pb2, subdomain_pb2, subdomain_pb2_grpc
from domainos.clock import FakeClock
from domainos.jobspec import JobSpec, RetryPolicy
from domainos.resources import Resources
from domainos.rpc import CHANNEL_OPTIONS, create_channel
from master_domain._jobs import Effect, Event, Job, JobTable, TaskReport, TaskState, TaskUpdates

T = TypeVar("T")
GI = 2**30


# -- pure table helpers ---------------------------------------------------------------------------


def spec(
    replicas: int = 1, *, on_exit: int = 0, on_lost: int = 3, cpus: int = 1000, gpus: int = 0, model: str = ""
) -> JobSpec:
    return JobSpec(
        command=("python3", "-c", "pass"),
        name="t",
        replicas=replicas,
        resources=Resources(cpus, 256 * 2**20, gpus, model),
        retry=RetryPolicy(on_exit, on_lost),
    )


def table(clock: FakeClock | None = None, timeout: float = 10.0) -> JobTable:
    return JobTable(clock=clock or FakeClock(), place_timeout_s=timeout)


def add_job(t: JobTable, s: JobSpec, job_id: str = "j-1") -> Job:
    job = t.new_job(job_id, s, f"req-{job_id}")
    t.add(job)
    t.validate()
    return job


def step(t: JobTable, event: Event) -> list[Effect]:
    """Apply one event and check every invariant after it."""
    effects = t.handle(event)
    t.validate()
    return effects


def rep(sd: str, job_id: str, index: int, attempt: int, state: TaskState, **kw: Any) -> TaskUpdates:
    return TaskUpdates(sd, (TaskReport(job_id, index, attempt, state, **kw),))


# -- async helpers --------------------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async test body on a fresh loop."""
    return asyncio.run(coro)


async def wait_for(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_async(
    cond: Callable[[], Awaitable[Any]], timeout: float = 5.0, what: str = "condition"
) -> Any:
    """Like :func:`wait_for` for an async condition."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# -- a loop in a thread ---------------------------------------------------------------------------


class LoopThread:
    """An event loop in a daemon thread: servers (masters) live there while blocking clients (the
    DSDK, the CLI) call them from the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"no answer within {timeout}s") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


# -- credentials ------------------------------------------------------------------------------------


async def admin_token(master: Any) -> str:
    """Mint an admin token straight into a started master's store (``dos_...``)."""
    from master_domain._auth import Role, TokenRecord

    record, token = TokenRecord.mint(Role.ADMIN, "", now=time.time(), created_by="tests")
    await master.store.txn([], [master.directory.token_op(record)])
    return token


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds ``authorization: Bearer <token>`` to every unary call of a channel."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {self._token}")
        return await continuation(details._replace(metadata=metadata), request)


def bearer_channel(address: str, token: str) -> grpc.aio.Channel:
    """A plaintext channel whose every unary call carries ``token``."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=[_Bearer(token)])


# -- a fake sub-domain ----------------------------------------------------------------------------


def summary(nodes: int = 1, cpus: int = 4, gpus: int = 0, model: str = "") -> common_pb2.SubDomainSummary:
    node = common_pb2.Resources(cpu_millis=cpus * 1000, memory_bytes=8 * GI, gpus=gpus, gpu_model=model)
    total = common_pb2.Resources(
        cpu_millis=cpus * 1000 * nodes, memory_bytes=8 * GI * nodes, gpus=gpus * nodes
    )
    return common_pb2.SubDomainSummary(
        nodes_total=nodes,
        nodes_ready=nodes,
        capacity=total,
        free=total,
        shapes=[common_pb2.NodeShape(gpu_model=model, free_gpus=gpus, count=nodes, best=node)]
        if nodes
        else [],
        max_nodes=100,
        gpus_by_model={model: gpus * nodes} if gpus else {},
        free_gpus_by_model={model: gpus * nodes} if gpus else {},
        largest_node=node if nodes else common_pb2.Resources(),
    )


class FakeSubdomain:
    """A scripted sub-domain.

    ``behaviour`` says what a placed task does: ``"succeed"`` (ASSIGNED, RUNNING, SUCCEEDED),
    ``"run"`` (ASSIGNED, RUNNING, then keeps running), ``"exit3"`` (runs, exits with code 3),
    ``"reject"`` (REJECTED), or ``"silent"`` (no answer at all). Stops are answered CANCELLED.
    """

    def __init__(
        self,
        address: str,
        subdomain_id: str,
        region: str = "east",
        *,
        behaviour: str = "succeed",
        nodes: int = 1,
        cpus: int = 4,
        gpus: int = 0,
        model: str = "",
        answer_lists: bool = True,
    ) -> None:
        self.address = address
        self.id = subdomain_id
        self.region = region
        self.behaviour = behaviour
        self.summary = summary(nodes, cpus, gpus, model)
        self.answer_lists = answer_lists
        self.incarnation = f"inc-{subdomain_id}-{time.monotonic_ns()}"
        self.commands: list[subdomain_pb2.MasterCommand] = []
        self.placed: list[common_pb2.TaskSpec] = []
        self.stopped: list[common_pb2.TaskRef] = []
        self.acked: list[common_pb2.TaskRef] = []
        self.running: dict[tuple[str, int, int], common_pb2.TaskStatus] = {}
        self.welcome: subdomain_pb2.Welcome | None = None
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._seq = 0

    async def connect(self, tasks: list[common_pb2.TaskStatus] | None = None) -> None:
        """Open the stream and say Hello (with ``tasks``, default: every task still running)."""
        self._channel = create_channel(self.address)
        stub = subdomain_pb2_grpc.SubDomainGatewayStub(self._channel)
        self._call = stub.Connect()
        self.ended = asyncio.Event()
        self.error = None
        held = list(self.running.values()) if tasks is None else tasks
        await self._call.write(
            subdomain_pb2.SubDomainMessage(
                hello=subdomain_pb2.Hello(
                    subdomain_id=self.id,
                    region=self.region,
                    incarnation=self.incarnation,
                    address=f"{self.id}.local:7100",
                    max_nodes=100,
                    tasks=held,
                    summary=self.summary,
                )
            )
        )
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        """Drop the stream (as a crashed or partitioned sub-domain would)."""
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
        self._call = self._channel = self._reader = None

    async def send(self, msg: subdomain_pb2.SubDomainMessage) -> None:
        await self._call.write(msg)

    async def report(self, *statuses: common_pb2.TaskStatus) -> None:
        self._seq += 1
        for s in statuses:
            key = (s.job_id, s.task_index, s.attempt)
            if s.state in (common_pb2.TASK_STATE_ASSIGNED, common_pb2.TASK_STATE_RUNNING):
                self.running[key] = s
            else:
                self.running.pop(key, None)
        await self.send(
            subdomain_pb2.SubDomainMessage(
                task_updates=subdomain_pb2.TaskUpdates(
                    incarnation=self.incarnation, seq=self._seq, tasks=statuses
                )
            )
        )

    def status(self, ref: Any, state: int, exit_code: int = 0, node: str = "n-1") -> common_pb2.TaskStatus:
        return common_pb2.TaskStatus(
            job_id=ref.job_id,
            task_index=ref.task_index,
            attempt=ref.attempt,
            state=state,
            exit_code=exit_code,
            node_id=f"{self.id}-{node}",
            subdomain_id=self.id,
            started_at=time.time(),
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

    async def _handle(self, cmd: subdomain_pb2.MasterCommand) -> None:
        kind = cmd.WhichOneof("body")
        if kind == "place_tasks":  # a batch: each as if it came alone
            for place in cmd.place_tasks.tasks:
                await self._handle(subdomain_pb2.MasterCommand(place_task=place))
        elif kind == "welcome":
            self.welcome = cmd.welcome
        elif kind == "place_task":
            spec = cmd.place_task.spec
            self.placed.append(spec)
            b = self.behaviour
            if b == "silent":
                return
            if b == "reject":
                st = self.status(spec, common_pb2.TASK_STATE_REJECTED)
                st.message = "no node has room"
                await self.report(st)
                return
            await self.report(self.status(spec, common_pb2.TASK_STATE_ASSIGNED))
            await self.report(self.status(spec, common_pb2.TASK_STATE_RUNNING))
            if b == "succeed":
                await self.report(self.status(spec, common_pb2.TASK_STATE_SUCCEEDED))
            elif b == "exit3":
                await self.report(self.status(spec, common_pb2.TASK_STATE_FAILED, exit_code=3))
        elif kind == "stop_task":
            ref = cmd.stop_task.task
            self.stopped.append(ref)
            await self.report(self.status(ref, common_pb2.TASK_STATE_CANCELLED, exit_code=143))
        elif kind == "ack_tasks":
            self.acked.extend(cmd.ack_tasks.tasks)
        elif kind == "list_nodes":
            if not self.answer_lists:
                return
            req = cmd.list_nodes
            nodes = [
                common_pb2.NodeView(
                    inventory=common_pb2.NodeInventory(node_id=f"{self.id}-n-{i}", cpu_cores=4),
                    state="ready",
                )
                for i in range(self.summary.nodes_total)
            ]
            await self.send(
                subdomain_pb2.SubDomainMessage(
                    node_list=subdomain_pb2.NodeListReply(request_id=req.request_id, nodes=nodes)
                )
            )
        elif kind == "fetch_log":
            req = cmd.fetch_log
            data = (
                f"log of {req.request.task.job_id}/{req.request.task.task_index} on {req.node_id}\n".encode()
            )
            await self.send(
                subdomain_pb2.SubDomainMessage(
                    log_reply=common_pb2.LogReply(
                        request_id=req.request_id,
                        chunk=common_pb2.LogChunk(data=data, offset=0, size=len(data), eof=True),
                    )
                )
            )
