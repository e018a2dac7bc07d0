"""Test helpers for the node agent: polling waits, specs, and a fake sub-domain over real gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from domainos.api.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from domainos.errors import DomainOSError
from domainos.model import TaskRef, TaskSpec, TaskState
from domainos.rpc import abort_with, bind, create_server
from node_agent._runner import DEFAULT_TASK_USER, blocking_dir, resolve_task_user, user_may

T = TypeVar("T")


def task_python() -> str:
    """A Python interpreter that tasks can run.

    Run as root, the agent runs tasks as ``nobody``, and this interpreter (a virtual environment's
    python linked to e.g. ``/root/.pyenv/...``) may sit under a directory ``nobody`` cannot enter:
    then a system ``python3`` does (task code in these tests uses the standard library only).
    """
    if os.geteuid() != 0:
        return sys.executable
    user = resolve_task_user(DEFAULT_TASK_USER)
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    for candidate in (sys.executable, system):
        if not candidate:
            continue
        real = os.path.realpath(candidate)
        if blocking_dir(user, real) is None and user_may(user, os.stat(real), 1):
            return candidate
    return sys.executable  # tasks will fail with "permission denied: <it> (the task runs as nobody ...)"


#: The interpreter of task commands (see :func:`task_python`).
PY = task_python()


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it is truthy (returns its value) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Async :func:`wait_for`: poll ``cond`` on the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run one test coroutine in a fresh event loop, with a hard deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def spec(
    job_id: str = "j-1",
    index: int = 0,
    attempt: int = 0,
    command: Sequence[str] = (PY, "-c", "print('hello')"),
    *,
    cpu_millis: int = 1000,
    env: dict[str, str] | None = None,
) -> TaskSpec:
    from domainos.resources import Resources

    return TaskSpec(
        ref=TaskRef(job_id, index, attempt),
        command=tuple(command),
        env=env or {},
        resources=Resources(cpu_millis, 64 * 2**20, 0, ""),
        job_name="job",
        replicas=1,
        master_address="127.0.0.1:7000",
    )


def spec_proto(
    job_id: str = "j-1",
    index: int = 0,
    attempt: int = 0,
    command: Sequence[str] = (PY, "-c", "print('hello')"),
    *,
    cpu_millis: int = 100,
    env: dict[str, str] | None = None,
) -> Any:
    return common_pb2.TaskSpec(
        job_id=job_id,
        task_index=index,
        attempt=attempt,
        command=list(command),
        env=env or {},
        resources=common_pb2.Resources(cpu_millis=cpu_millis, memory_bytes=64 * 2**20),
        job_name="job",
        replicas=1,
        master_address="127.0.0.1:7000",
    )


def start_cmd(command_id: str, spec_msg: Any, gpus: Sequence[int] = ()) -> Any:
    return agent_pb2.AgentCommand(
        start_task=agent_pb2.StartTask(command_id=command_id, spec=spec_msg, gpu_indexes=list(gpus))
    )


def stop_cmd(command_id: str, ref: TaskRef, grace_s: float = 0.5, reason: str = "test stop") -> Any:
    return agent_pb2.AgentCommand(
        stop_task=agent_pb2.StopTask(
            command_id=command_id, task=ref.to_proto(), grace_s=grace_s, reason=reason
        )
    )


def ack_cmd(*refs: TaskRef) -> Any:
    return agent_pb2.AgentCommand(ack_tasks=agent_pb2.AckTasks(tasks=[r.to_proto() for r in refs]))


def fetch_log_cmd(
    request_id: str, ref: TaskRef, stream: str = "stdout", offset: int = 0, max_bytes: int = 0
) -> Any:
    return agent_pb2.AgentCommand(
        fetch_log=agent_pb2.FetchLog(
            request_id=request_id,
            request=common_pb2.LogRequest(
                task=ref.to_proto(), stream=stream, offset=offset, max_bytes=max_bytes
            ),
        )
    )


class Conn:
    """One agent stream as the fake sub-domain sees it."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.ended = False

    @property
    def register(self) -> Any:
        return self.messages[0].register if self.messages else None

    def of(self, kind: str) -> list[Any]:
        return [getattr(m, kind) for m in self.messages if m.WhichOneof("body") == kind]

    @property
    def reports(self) -> list[Any]:
        return self.of("report")

    @property
    def acks(self) -> list[Any]:
        return self.of("ack")

    def ack(self, command_id: str) -> Any:
        return next((a for a in self.acks if a.command_id == command_id), None)

    def log_reply(self, request_id: str) -> Any:
        return next((r for r in self.of("log_reply") if r.request_id == request_id), None)

    def task_states(self, ref: TaskRef) -> list[TaskState]:
        """Every state of ``ref`` this stream carried, in order (Register included)."""
        out: list[TaskState] = []
        for m in self.messages:
            kind = m.WhichOneof("body")
            tasks = m.register.tasks if kind == "register" else m.report.tasks if kind == "report" else []
            for t in tasks:
                if (t.job_id, t.task_index, t.attempt) == (ref.job_id, ref.task_index, ref.attempt):
                    out.append(TaskState(t.state))
        return out

    def last_status(self, ref: TaskRef) -> Any:
        found = None
        for m in self.messages:
            kind = m.WhichOneof("body")
            tasks = m.register.tasks if kind == "register" else m.report.tasks if kind == "report" else []
            for t in tasks:
                if (t.job_id, t.task_index, t.attempt) == (ref.job_id, ref.task_index, ref.attempt):
                    found = t
        return found

    def send(self, command: Any) -> None:
        self.outbox.put_nowait(command)

    def close(self) -> None:
        """End the stream from the sub-domain's side (status OK)."""
        self.outbox.put_nowait(None)


class FakeSubDomain(agent_pb2_grpc.AgentGatewayServicer):  # type: ignore[misc]
    """A minimal sub-domain: answers Register with Registered (or a refusal), records everything."""

    def __init__(
        self,
        subdomain_id: str = "sd-test",
        *,
        region: str = "r-test",
        report_interval_s: float = 0.1,
        full_sync_interval_s: float = 5.0,
        heartbeat_interval_s: float = 0.0,
        refuse: tuple[grpc.StatusCode, str] | DomainOSError | None = None,
        silent: bool = False,
    ) -> None:
        self.subdomain_id = subdomain_id
        self.region = region
        self.report_interval_s = report_interval_s
        self.full_sync_interval_s = full_sync_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.refuse = refuse
        self.silent = silent  # accept the stream, never answer Register
        self.accepted = 0
        self.conns: list[Conn] = []
        self.refused = 0

    @property
    def conn(self) -> Conn:
        return self.conns[-1]

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        conn = Conn()
        first = asyncio.Event()

        async def read() -> None:
            async for msg in request_iterator:
                conn.messages.append(msg)
                first.set()

        reader = asyncio.create_task(read())
        try:
            await asyncio.wait(
                {reader, asyncio.ensure_future(first.wait())}, return_when=asyncio.FIRST_COMPLETED
            )
            if not conn.messages:
                return
            self.accepted += 1
            if self.silent:
                await reader
                return
            if self.refuse is not None:
                self.refused += 1
                if isinstance(self.refuse, DomainOSError):
                    await abort_with(context, self.refuse)  # as the real sub-domain does
                await context.abort(self.refuse[0], self.refuse[1])
            self.conns.append(conn)
            await context.write(
                agent_pb2.AgentCommand(
                    registered=agent_pb2.Registered(
                        node_id=conn.register.inventory.node_id,
                        subdomain_id=self.subdomain_id,
                        region=self.region,
                        report_interval_s=self.report_interval_s,
                        full_sync_interval_s=self.full_sync_interval_s,
                        heartbeat_interval_s=self.heartbeat_interval_s,
                    )
                )
            )
            while True:
                getter = asyncio.ensure_future(conn.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    return  # the agent half-closed its side
                command = getter.result()
                if command is None:
                    return
                await context.write(command)
        finally:
            conn.ended = True
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


async def serve(servicer: FakeSubDomain, port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Start a gRPC server on 127.0.0.1 (port 0 picks one) with the fake sub-domain."""
    server = create_server()
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(servicer, server)
    bound = bind(server, f"127.0.0.1:{port}")
    await server.start()
    return server, bound
