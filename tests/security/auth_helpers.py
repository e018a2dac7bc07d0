"""Shared helpers of the authentication tests: a master with a bootstrap admin token, and a
``DomainControl`` stub that sends one bearer token with every call."""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
import grpc.aio

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE.parent / "master_domain") not in sys.path:  # the fake sub-domain
    sys.path.insert(0, str(HERE.parent / "master_domain"))

from master_helpers import LoopThread  # noqa: E402

from domainos.api.v1 import common_pb2, master_pb2, master_pb2_grpc  # noqa: E402
from domainos.clock import Clock  # noqa: E402
from domainos.rpc import create_channel  # noqa: E402
from master_domain import MasterConfig, MasterDomain  # noqa: E402

T = TypeVar("T")
M = master_pb2


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll a sync or async condition until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class Api:
    """``DomainControl`` calls carrying ``authorization: Bearer <token>`` (none when token is None)."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        self._stub = master_pb2_grpc.DomainControlStub(channel)
        self.token = token

    def __getattr__(self, method: str) -> Callable[..., Any]:
        rpc = getattr(self._stub, method)
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token is not None else None

        def call(request: Any, **kw: Any) -> Any:
            kw.setdefault("timeout", 10)
            return rpc(request, metadata=metadata, **kw)

        return call


async def code_of(awaitable: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a call (OK and "" when it succeeds)."""
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def master_config(tmp: pathlib.Path, **kw: Any) -> MasterConfig:
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "",
        "store": "memory://",
        "bootstrap_token_file": str(tmp / "admin.token"),
    }
    base.update(kw)
    if "tls" not in base:
        base.setdefault("insecure", True)
    return MasterConfig(**base)


class Rig:
    """A started master, its admin token and a channel to it."""

    def __init__(self, master: MasterDomain, admin_token: str, channel: grpc.aio.Channel) -> None:
        self.master = master
        self.address = master.address
        self.admin_token = admin_token
        self.channel = channel
        self.admin = Api(channel, admin_token)

    def api(self, token: str | None) -> Api:
        return Api(self.channel, token)

    async def tenant(self, name: str) -> None:
        await self.admin.CreateTenant(M.CreateTenantRequest(name=name))

    async def user(self, tenant: str, role: int = M.ROLE_USER, **kw: Any) -> Api:
        """A new token of ``role`` for ``tenant`` (admins: tenant "")."""
        resp = await self.admin.CreateToken(M.CreateTokenRequest(tenant=tenant, role=role, **kw))
        return self.api(resp.token)

    async def submit(self, api: Api, name: str = "t", **kw: Any) -> M.Job:
        spec = M.JobSpec(
            name=name,
            command=["python3", "-c", "pass"],
            resources=common_pb2.Resources(cpu_millis=500, memory_bytes=256 * 2**20),
            **kw,
        )
        resp = await api.SubmitJob(M.SubmitJobRequest(spec=spec))
        return resp.job

    async def keys(self, prefix: str) -> list[str]:
        return [kv.key for kv in await self.master.store.range(prefix)]

    async def snapshot(self) -> dict[str, bytes]:
        """Every key of the store but the audit log (which denied calls do write)."""
        return {
            kv.key: kv.value
            for kv in await self.master.store.range("/")
            if not kv.key.startswith("/domainos/master/audit/")
        }


@asynccontextmanager
async def started(
    tmp: pathlib.Path, *, clock: Clock | None = None, channel_tls: Any = None, **kw: Any
) -> AsyncIterator[Rig]:
    master = MasterDomain(master_config(tmp, **kw), clock=clock)
    await master.start()
    token = (tmp / "admin.token").read_text().strip()
    channel = create_channel(master.address, channel_tls)
    try:
        yield Rig(master, token, channel)
    finally:
        await channel.close()
        await master.shutdown()


class MasterThread:
    """A real master (``master_config``) served from a :class:`LoopThread`."""

    def __init__(self, tmp: pathlib.Path, **kw: Any) -> None:
        self.loop = LoopThread()
        self.master = MasterDomain(master_config(tmp, **kw))
        self.loop.call(self.master.start())
        self.address = self.master.address
        self.admin_token = (tmp / "admin.token").read_text().strip()

    def close(self) -> None:
        try:
            self.loop.call(self.master.shutdown())
        finally:
            self.loop.close()
