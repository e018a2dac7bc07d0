"""The web console's HTTP server: the static page, the JSON API and the live event stream.

It runs on the master's event loop (aiohttp beside grpc.aio) on its own listen address
(``console_listen``). Every ``/api/`` route is one or two ``DomainControl`` calls made through the
gRPC service's gate (:mod:`master_domain.console._bridge`): the same authentication, rate limit,
RBAC, tenant isolation and follower refusal as over gRPC. See ``docs/console.md``.

Live updates: ``GET /api/events`` is a Server-Sent Events stream read with ``fetch()`` (so the
token travels in the ``Authorization`` header, never in a URL): a ``snapshot`` event (domains and
jobs, as the caller may see them) whenever it changed, checked every :data:`TICK_S`, and a comment
line at least every :data:`KEEPALIVE_S`. Each client has a bounded queue; a client that does not
keep up is dropped, at most :data:`MAX_CLIENTS` are served at once (more get 429), and each snapshot is
authorized again (a revoked token ends its stream with an ``error`` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from domainos.api.v1 import master_pb2
from master_domain.console._bridge import Bridge, CallFailed, to_json

if TYPE_CHECKING:
    from domainos.security import CertFiles
    from master_domain._master import MasterDomain

log = logging.getLogger(__name__)

STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
#: How often a live client's snapshot is computed (sent only when it changed).
TICK_S = 1.0
#: A comment line at least this often keeps proxies and the browser from closing an idle stream.
KEEPALIVE_S = 15.0
#: Live clients served at once; more get 503.
MAX_CLIENTS = 32
#: Events queued for one client; a client this far behind is dropped.
QUEUE_EVENTS = 4
#: Jobs in a snapshot and in a list (newest first).
JOBS_SHOWN = 200
#: Nodes fetched per sub-domain for the heat map (the page says when there are more).
NODES_PER_SUBDOMAIN = 512
#: Largest log tail one request returns.
MAX_LOG_TAIL = 256 * 1024
DEFAULT_LOG_TAIL = 16 * 1024

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_JOB_STATES = {v.name.removeprefix("JOB_STATE_") for v in master_pb2.JobState.DESCRIPTOR.values} - {
    "UNSPECIFIED"
}


def _peer(request: web.Request) -> str:
    """The browser's address in gRPC's peer form (rate-limit key of anonymous calls, audit log)."""
    info = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not info:
        return "unknown"
    host, port = str(info[0]), int(info[1])
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise CallFailed("INVALID_ARGUMENT", f"{name}: expected a whole number, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise CallFailed("INVALID_ARGUMENT", f"{name}: must be between {low} and {high}, got {value}")
    return value


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


@dataclass(eq=False)
class _Client:
    """One live stream: its queue and the connection to close when it falls behind."""

    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_EVENTS))
    transport: asyncio.BaseTransport | None = None
    dropped: bool = False


class ConsoleServer:
    """The console of one master (``async start()`` -> its URL, ``async stop()``)."""

    def __init__(self, master: MasterDomain, listen: str, tls: CertFiles | None) -> None:
        self._master = master
        self._listen = listen
        self._tls = tls
        self._bridge = Bridge(master)
        self._runner: web.AppRunner | None = None
        self._clients: set[_Client] = set()
        self._producers: set[asyncio.Task[None]] = set()
        self.url = ""
        self.port = 0
        #: Seconds the last live snapshot took to compute (for the docs' cost figures and tests).
        self.last_snapshot_s = 0.0

    # -- lifecycle --------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
        routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/api/whoami": self._whoami,
            "/api/domains": self._domains,
            "/api/nodes": self._nodes,
            "/api/jobs": self._jobs,
            "/api/jobs/{job_id}": self._job,
            "/api/jobs/{job_id}/explain": self._explain,
            "/api/jobs/{job_id}/logs": self._logs,
            "/api/tenants": self._tenants,
            "/api/quotas": self._quotas,
            "/api/events": self._events,
        }
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        return app

    async def start(self) -> str:
        """Listen; returns the console's URL (``https://`` when the master runs TLS)."""
        context: ssl.SSLContext | None = None
        if self._tls is not None:
            # The master's server certificate; no client certificate: the token is the credential.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self._tls.cert, self._tls.key)
        host, _, port = self._listen.rpartition(":")
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=context)
        await site.start()
        bound = runner.addresses[0]
        self.port = int(bound[1])
        shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
        self.url = f"{'https' if context is not None else 'http'}://{shown}:{self.port}/"
        log.info("web console listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        """End the live streams and stop listening. Idempotent."""
        for task in list(self._producers):
            task.cancel()
        for client in list(self._clients):
            self._close(client)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- plumbing ---------------------------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except CallFailed as err:
            response = web.json_response(err.to_json(), status=err.http_status)
        except web.HTTPException as exc:
            if not request.path.startswith("/api/"):
                raise
            response = web.json_response(
                {"error": {"code": "NOT_FOUND" if exc.status == 404 else "HTTP", "message": exc.reason}},
                status=exc.status,
            )
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    async def _call(self, request: web.Request, method: str, message: Any) -> Any:
        return await self._bridge.call(
            method, message, authorization=request.headers.get("Authorization"), peer=_peer(request)
        )

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    # -- the API ----------------------------------------------------------------------------------

    async def _whoami(self, request: web.Request) -> web.StreamResponse:
        me = await self._call(request, "WhoAmI", master_pb2.WhoAmIRequest())
        info = await self._call(request, "GetClusterInfo", master_pb2.GetClusterInfoRequest())
        return web.json_response({"principal": to_json(me), "cluster": to_json(info)})

    async def _domains(self, request: web.Request) -> web.StreamResponse:
        domains = await self._call(request, "ListDomains", master_pb2.ListDomainsRequest())
        return web.json_response(to_json(domains))

    async def _nodes(self, request: web.Request) -> web.StreamResponse:
        limit = _int_param(request, "limit", NODES_PER_SUBDOMAIN, 1, NODES_PER_SUBDOMAIN)
        found = await self._call(
            request,
            "ListNodes",
            master_pb2.ListNodesRequest(subdomain_id=request.query.get("subdomain", ""), page_size=limit),
        )
        return web.json_response({**to_json(found), "limit_per_subdomain": limit})

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._job_list(request, request.query.get("state", "")))

    async def _job_list(self, request: web.Request, states: str, limit: int | None = None) -> dict[str, Any]:
        wanted: list[str] = []
        for name in (s.strip().upper() for s in states.split(",") if s.strip()):
            if name not in _JOB_STATES:
                raise CallFailed(
                    "INVALID_ARGUMENT",
                    f"state: unknown job state {name!r}; allowed: {', '.join(sorted(_JOB_STATES))}",
                )
            wanted.append(f"JOB_STATE_{name}")
        limit = limit or _int_param(request, "limit", JOBS_SHOWN, 1, 500)
        jobs = await self._call(request, "ListJobs", master_pb2.ListJobsRequest(states=wanted, limit=limit))
        return to_json(jobs)

    async def _job(self, request: web.Request) -> web.StreamResponse:
        job = await self._call(
            request, "GetJob", master_pb2.GetJobRequest(job_id=request.match_info["job_id"])
        )
        return web.json_response(to_json(job))

    async def _explain(self, request: web.Request) -> web.StreamResponse:
        why = await self._call(
            request, "ExplainJob", master_pb2.ExplainJobRequest(job_id=request.match_info["job_id"])
        )
        return web.json_response(to_json(why))

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        stream = request.query.get("stream", "stdout")
        tail = _int_param(request, "tail", DEFAULT_LOG_TAIL, 1, MAX_LOG_TAIL)
        task = _int_param(request, "task", 0, -1, 1_000_000)
        found = await self._call(
            request,
            "ReadLogs",
            master_pb2.ReadLogsRequest(
                job_id=request.match_info["job_id"],
                task_index=task,
                stream=stream,
                offset=-tail,
                max_bytes=tail,
            ),
        )
        logs = [
            {
                "task_index": lg.task_index,
                "attempt": lg.attempt,
                "node_id": lg.node_id,
                "text": _text(lg.chunk.data),
                "offset": lg.chunk.offset,
                "size": lg.chunk.size,
                "error": lg.chunk.error,
            }
            for lg in found.logs
        ]
        return web.json_response({"logs": logs, "stream": stream, "tail": tail})

    async def _tenants(self, request: web.Request) -> web.StreamResponse:
        tenants = await self._call(request, "ListTenants", master_pb2.ListTenantsRequest())
        return web.json_response(to_json(tenants))

    async def _quotas(self, request: web.Request) -> web.StreamResponse:
        quotas = await self._call(
            request, "ListQuotas", master_pb2.ListQuotasRequest(tenant=request.query.get("tenant", ""))
        )
        return web.json_response(to_json(quotas))

    # -- live updates -----------------------------------------------------------------------------

    async def _snapshot(self, request: web.Request) -> dict[str, Any]:
        started = time.perf_counter()
        domains = await self._call(request, "ListDomains", master_pb2.ListDomainsRequest())
        jobs = await self._job_list(request, "", JOBS_SHOWN)
        self.last_snapshot_s = time.perf_counter() - started
        return {"domains": to_json(domains), "jobs": jobs}

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= MAX_CLIENTS:
            raise CallFailed(
                "RESOURCE_EXHAUSTED", f"this console serves at most {MAX_CLIENTS} live clients; retry later"
            )
        first = await self._snapshot(request)  # refused before the stream starts: a plain JSON error
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        client = _Client(transport=request.transport)
        self._clients.add(client)
        producer = asyncio.create_task(self._produce(client, request, first), name="console-events")
        self._producers.add(producer)
        producer.add_done_callback(self._producers.discard)
        try:
            while True:
                item = await client.queue.get()
                if item is None:
                    break
                await response.write(item)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            producer.cancel()
            self._clients.discard(client)
        return response

    async def _produce(self, client: _Client, request: web.Request, snapshot: dict[str, Any]) -> None:
        last = ""
        sent_at = time.monotonic()
        try:
            while True:
                body = json.dumps(snapshot, separators=(",", ":"), sort_keys=True)
                now = time.monotonic()
                if body != last:
                    last = body
                    sent_at = now
                    self._put(client, f"event: snapshot\ndata: {body}\n\n".encode())
                elif now - sent_at >= KEEPALIVE_S:
                    sent_at = now
                    self._put(client, b": keepalive\n\n")
                if client.dropped:
                    return
                await asyncio.sleep(TICK_S)
                try:
                    snapshot = await self._snapshot(request)
                except CallFailed as err:
                    self._put(client, f"event: error\ndata: {json.dumps(err.to_json())}\n\n".encode())
                    self._put(client, None)
                    return
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("console live stream failed")
            self._close(client)

    def _put(self, client: _Client, item: bytes | None) -> None:
        if client.dropped:
            return
        try:
            client.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning(
                "console: dropping a live client that does not keep up (%d events queued)", QUEUE_EVENTS
            )
            self._close(client)

    def _close(self, client: _Client) -> None:
        client.dropped = True
        if client.transport is not None:
            client.transport.close()
        with contextlib.suppress(asyncio.QueueFull):
            client.queue.put_nowait(None)
