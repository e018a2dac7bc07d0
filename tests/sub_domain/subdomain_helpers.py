"""Helpers for the sub-domain tests: builders, polling, a raw test agent and a fake master.

The test agent speaks ``agent.proto`` directly (not the ``node_agent`` package) and the fake master
is a small ``SubDomainGatewayServicer``, so these tests pin the wire protocol itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import grpc
import grpc.aio

from domainos.api.v1 import agent_pb2, agent_pb2_grpc, common_pb2, subdomain_pb2, subdomain_pb2_grpc
from domainos.model import DatasetShard, GpuDevice, NodeInventory, TaskRef, TaskSpec
from domainos.resources import Resources
from sub_domain._registry import NodeRegistry
from sub_domain._tasks import TaskTable

GI = 2**30
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
T = TypeVar("T")


# -- sync / async polling --------------------------------------------------------------------------


def wait_for(cond: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


async def await_for(cond: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``cond`` on the event loop until it is truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def async_test(
    timeout: float = 20.0,
) -> Callable[[Callable[..., Coroutine[Any, Any, None]]], Callable[..., None]]:
    """Run an ``async def`` test in a fresh event loop with an overall deadline."""

    def deco(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout))

        return wrapper

    return deco


# -- domain builders -------------------------------------------------------------------------------


def nvlink_pairs(n: int) -> dict[int, tuple[int, ...]]:
    """GPUs joined pairwise over NVLink: (0,1), (2,3), ..."""
    return {i: (i ^ 1,) if (i ^ 1) < n else () for i in range(n)}


def inventory(
    node_id: str,
    *,
    cpus: int = 8,
    memory_gi: int = 32,
    gpus: int = 0,
    model: str = "H100",
    peers: dict[int, tuple[int, ...]] | None = None,
    simulated: bool = True,
    domain_size: int = 0,
    gpu_memory_gi: int = 0,
    labels: dict[str, str] | None = None,
    block: str = "",
    datasets: dict[str, list[int]] | None = None,
) -> NodeInventory:
    """A node; ``domain_size`` > 0 splits its GPUs into NVLink domains of that many (all-to-all inside)."""
    if domain_size > 0:
        peers = {
            i: tuple(j for j in range(gpus) if j != i and j // domain_size == i // domain_size)
            for i in range(gpus)
        }
    if peers is None:
        peers = {i: tuple(j for j in range(gpus) if j != i) for i in range(gpus)}  # all-to-all
    devices = tuple(
        GpuDevice(index=i, model=model, nvlink_peers=peers.get(i, ()), memory_bytes=gpu_memory_gi * GI)
        for i in range(gpus)
    )
    return NodeInventory(
        node_id=node_id,
        allocatable=Resources(cpus * 1000, memory_gi * GI, gpus, model if gpus else ""),
        hostname=f"{node_id}.test",
        simulated=simulated,
        cpu_cores=cpus,
        memory_bytes=memory_gi * GI,
        gpus=devices,
        labels=labels or {},
        block=block,
        datasets=tuple(
            DatasetShard(name, shard)
            for name, shards in sorted((datasets or {}).items())
            for shard in sorted(shards)
        ),
    )


def spec(
    job: str = "j-1",
    index: int = 0,
    attempt: int = 0,
    *,
    cpus: float = 1,
    memory_gi: float = 1,
    gpus: int = 0,
    model: str = "",
) -> TaskSpec:
    return TaskSpec(
        ref=TaskRef(job, index, attempt),
        command=("true",),
        resources=Resources(int(cpus * 1000), int(memory_gi * GI), gpus, model),
        job_name="test",
        replicas=1,
    )


def make_state(
    max_nodes: int = 100, silent: float = 15.0, dead: float = 5.0, sd: str = "sd-1"
) -> tuple[NodeRegistry, TaskTable]:
    reg = NodeRegistry(sd, max_nodes=max_nodes, silent_after_s=silent, dead_after_s=dead)
    ids = itertools.count(1)
    table = TaskTable(sd, reg, new_id=lambda: f"c{next(ids)}")
    return reg, table


# -- a raw agent over gRPC -------------------------------------------------------------------------


def inventory_pb(node_id: str, **kw: Any) -> Any:
    return inventory(node_id, **kw).to_proto()


class TestAgent:
    """A minimal agent: opens ``AgentGateway.Connect``, registers, collects commands."""

    __test__ = False

    def __init__(self, address: str, node_id: str, *, incarnation: str = "inc-1", **inv: Any) -> None:
        self.address = address
        self.node_id = node_id
        self.incarnation = incarnation
        self.inv = inv
        self.commands: asyncio.Queue[Any] = asyncio.Queue()
        self.registered: Any = None
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._seq = itertools.count(1)

    async def connect(self, tasks: list[Any] | None = None) -> Any:
        """Register; returns ``Registered`` or raises the ``AioRpcError`` the sub-domain ended with."""
        self._channel = grpc.aio.insecure_channel(self.address)
        self._call = agent_pb2_grpc.AgentGatewayStub(self._channel).Connect()
        await self._call.write(
            agent_pb2.AgentMessage(
                register=agent_pb2.Register(
                    inventory=inventory_pb(self.node_id, **self.inv),
                    incarnation=self.incarnation,
                    tasks=tasks or [],
                    usage=common_pb2.NodeUsage(cpu_percent=1.0),
                    health=common_pb2.NodeHealth(status=common_pb2.HEALTH_STATUS_HEALTHY),
                )
            )
        )
        first = await self._call.read()
        assert first is not EOF, "stream ended without an answer"
        assert first.WhichOneof("body") == "registered", first
        self.registered = first.registered
        self._reader = asyncio.create_task(self._read())
        return first.registered

    async def _read(self) -> None:
        try:
            while True:
                msg = await self._call.read()
                if msg is EOF:
                    return
                await self.commands.put(msg)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    async def next(self, kind: str, timeout: float = 5.0) -> Any:
        """The next command of ``kind`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"node {self.node_id}: no {kind} within {timeout}s")
            msg = await asyncio.wait_for(self.commands.get(), left)
            if msg.WhichOneof("body") == kind:
                return getattr(msg, kind)

    async def send(self, **body: Any) -> None:
        await self._call.write(agent_pb2.AgentMessage(**body))

    async def report(self, *tasks: Any, full: bool = False, usage: Any = None) -> None:
        rep = agent_pb2.AgentReport(
            incarnation=self.incarnation, seq=next(self._seq), full=full, tasks=list(tasks)
        )
        if usage is not None:
            rep.usage.CopyFrom(usage)
        await self.send(report=rep)

    async def close(self) -> None:
        """Drop the stream (as a crashed agent would)."""
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._channel is not None:
            await self._channel.close(grace=None)


def status_pb(start: Any, state: Any, **kw: Any) -> Any:
    """A TaskStatus for the task of a ``StartTask`` command."""
    s = start.spec
    return common_pb2.TaskStatus(
        job_id=s.job_id, task_index=s.task_index, attempt=s.attempt, state=state, **kw
    )


# -- a fake master ---------------------------------------------------------------------------------


class FakeMaster(subdomain_pb2_grpc.SubDomainGatewayServicer):  # type: ignore[misc]
    """Accepts sub-domain streams: records every Hello, answers Welcome, lets a test send commands."""

    def __init__(self) -> None:
        self.hellos: list[Any] = []
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.received: list[Any] = []
        self._out: asyncio.Queue[Any] | None = None
        self.server: grpc.aio.Server | None = None
        self.address = ""
        self.streams = 0

    async def start(self, address: str = "127.0.0.1:0") -> str:
        """Listen on ``address`` (an old master's address: a master that comes back)."""
        self.server = grpc.aio.server()
        subdomain_pb2_grpc.add_SubDomainGatewayServicer_to_server(self, self.server)
        port = self.server.add_insecure_port(address)
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        first = await context.read()
        if first is EOF:
            return
        self.hellos.append(first.hello)
        self.streams += 1
        out: asyncio.Queue[Any] = asyncio.Queue()
        self._out = out
        await context.write(subdomain_pb2.MasterCommand(welcome=subdomain_pb2.Welcome(master_id="m-test")))

        async def reader() -> None:
            while True:
                msg = await context.read()
                if msg is EOF:
                    return
                self.received.append(msg)
                await self.messages.put(msg)

        task = asyncio.create_task(reader())
        try:
            while not task.done():
                getter = asyncio.create_task(out.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await context.write(getter.result())
                else:
                    getter.cancel()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if self._out is out:
                self._out = None

    async def send(self, **body: Any) -> None:
        assert self._out is not None, "no sub-domain connected"
        await self._out.put(subdomain_pb2.MasterCommand(**body))

    async def next(
        self, kind: str, pred: Callable[[Any], bool] = lambda _: True, timeout: float = 5.0
    ) -> Any:
        """The next received message of ``kind`` that satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"fake master: no {kind} within {timeout}s")
            msg = await asyncio.wait_for(self.messages.get(), left)
            if msg.WhichOneof("body") == kind and pred(getattr(msg, kind)):
                return getattr(msg, kind)

    async def task_state(self, job_id: str, state: int, timeout: float = 5.0) -> Any:
        """Wait for a TaskUpdates entry of ``job_id`` in ``state``; returns that TaskStatus."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"fake master: task {job_id} never reached state {state}")
            upd = await self.next("task_updates", timeout=left)
            for t in upd.tasks:
                if t.job_id == job_id and t.state == state:
                    return t


@contextlib.asynccontextmanager
async def fake_master() -> AsyncIterator[FakeMaster]:
    """A :class:`FakeMaster` listening on a free port for the duration of the block."""
    master = FakeMaster()
    await master.start()
    try:
        yield master
    finally:
        await master.stop()
