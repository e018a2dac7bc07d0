"""The DSDK worker: one long-lived process per task of a DSDK job, started once per job.

``python -m dsdk.worker`` runs as a job's task on a node. It listens on the node's address
(``DOMAINOS_NODE_HOST``), publishes that address through the master's rendezvous (kind
``dsdk-worker``) with the job's own credential, and then serves its driver and its peers over the
data plane (:mod:`dsdk._wire`):

* functions arrive once (cloudpickle) and calls by reference, in batches; calls run one at a time
  in an executor thread (the event loop keeps serving peers and collectives meanwhile), results
  go back in batches;
* a call's arguments may name a local dataset shard (:class:`ShardArg`) or an object this worker
  keeps (:class:`ObjArg`): computation moves to the data, the data does not move;
* results may be kept here (named objects) for later calls, for a reduction tree, or to be pushed
  to a peer worker (worker to worker, never through the driver);
* shards are stored under this node's datasets directory and copied to peers as they are stored.

Every connection counts the bytes it sends by distance (same node / sub-domain / region / client);
the driver collects the counters for the job's statistics. The worker exits when its driver says
so, or when no driver has been connected for ``DSDK_IDLE_S`` seconds (a vanished client leaves no
process behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import _shards, _wire
from ._context import TaskContext, context
from .errors import DomainOSError, FailedPrecondition

log = logging.getLogger("dsdk.worker")

KIND = "dsdk-worker"
#: Results sent back in one message at most, and how long a finished result may wait for company.
RESULT_BATCH = 256
RESULT_FLUSH_S = 0.002
DEFAULT_IDLE_S = 60.0
#: How often a worker publishes its endpoint again (for a master that took over).
REPUBLISH_S = 10.0


@dataclass(frozen=True, slots=True)
class ShardArg:
    """An argument that is a shard of a dataset on the worker's node (loaded there, mapped)."""

    dataset: str
    shard: int


@dataclass(frozen=True, slots=True)
class ObjArg:
    """An argument that is an object kept by the worker (a result of an earlier call)."""

    key: str


def error_payload(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, formatted remote traceback) of an exception raised by user code; the
    worker's own frame (the one that called the user's function) is left out."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__ and tb.tb_next is not None:
        tb = tb.tb_next
    return type(exc).__name__, str(exc), "".join(traceback.format_exception(type(exc), exc, tb))


class Worker:
    """The worker process's state and servers (one asyncio loop, one executor thread)."""

    def __init__(self, ctx: TaskContext, key: bytes, *, idle_s: float = DEFAULT_IDLE_S) -> None:
        self.ctx = ctx
        self.key = key
        self.idle_s = idle_s
        self.place = _wire.Place(ctx.node_id, ctx.subdomain_id, ctx.region)
        self.traffic = _wire.process_traffic()
        self.functions: dict[int, Callable[..., Any]] = {}
        self.function_errors: dict[int, BaseException] = {}
        self.objects: dict[str, Any] = {}
        self.calls = 0
        self.local_calls = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="dsdk-call")
        self._drivers = 0
        self._idle_since = time.monotonic()
        self._stop = asyncio.Event()
        self._peers: dict[str, _wire.Connection] = {}
        self._peer_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._pending_conn: dict[int, _wire.Connection] = {}
        self._next_rid = 0
        self._conns: set[_wire.Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.address = ""

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        sock = _wire.listen(self.ctx.node_host)
        self.address = _wire.address_of(sock, self.ctx.node_host)
        loop = asyncio.get_running_loop()
        server = _wire.spawn(self._accept(sock), name="dsdk-accept")
        try:
            await loop.run_in_executor(None, self._publish)
        except DomainOSError as exc:
            log.error("cannot publish this worker's endpoint: %s", exc)
            server.cancel()
            sock.close()
            return 3
        log.info("DSDK worker %s.%d serving on %s", self.ctx.job_id, self.ctx.task_index, self.address)
        watchdog = _wire.spawn(self._watch_idle(), name="dsdk-idle")
        refresh = _wire.spawn(self._republish(), name="dsdk-republish")
        await self._stop.wait()
        for t in (server, watchdog, refresh):
            t.cancel()
        sock.close()
        for conn in list(self._conns) + list(self._peers.values()):
            conn.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return 0

    def _publish(self) -> None:
        from ._types import Endpoint

        with self.ctx.client() as client:
            client.publish_endpoint(
                self.ctx.job_id,
                Endpoint(self.ctx.task_index, self.ctx.attempt, self.address, KIND, self.ctx.node_id),
            )

    async def _republish(self) -> None:
        """Publish the endpoint again now and then: a master that took over after a failover keeps
        endpoints in memory only, and learns them again within this interval."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REPUBLISH_S)
            try:
                await loop.run_in_executor(None, self._publish)
            except DomainOSError as exc:
                log.debug("re-publishing the endpoint failed: %s", exc)

    async def _watch_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._drivers == 0 and time.monotonic() - self._idle_since > self.idle_s:
                log.warning("no driver connected for %.0f s: exiting", self.idle_s)
                self._stop.set()
                return

    async def _accept(self, sock: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(sock)
            _wire.spawn(self._serve(client))

    # -- one connection --------------------------------------------------------------------------

    async def _serve(self, sock: Any) -> None:
        conn = _wire.Connection(sock, traffic=self.traffic, local=self.place)
        is_driver = False
        try:
            await asyncio.wait_for(_wire.server_handshake(conn, self.key), 10.0)
            self._conns.add(conn)
            while True:
                msg = await conn.recv()
                op = msg.get("op")
                if op == "hello":
                    node, subdomain, region = msg.get("place", ("", "", ""))
                    conn.peer = _wire.Place(node, subdomain, region)
                    is_driver = conn.peer.is_client
                    if is_driver:
                        self._drivers += 1
                    await self._reply(conn, msg, self._hello(msg.get("datasets", ())))
                else:
                    await self._dispatch(conn, msg)
        except _wire.WireError as exc:
            log.debug("connection from %s ended: %s", conn.peer_address, exc)
        except Exception:
            log.exception("connection from %s failed", conn.peer_address)
        finally:
            conn.close()
            self._conns.discard(conn)
            if is_driver:
                self._drivers -= 1
                if self._drivers == 0:
                    self._idle_since = time.monotonic()

    def _hello(self, datasets: Any) -> dict[str, Any]:
        shards = {}
        if self.ctx.datasets_dir:
            for name in datasets:
                shards[name] = _shards.local_shards(self.ctx.datasets_dir, name)
        return {
            "node": self.ctx.node_id,
            "subdomain": self.ctx.subdomain_id,
            "region": self.ctx.region,
            "task_index": self.ctx.task_index,
            "attempt": self.ctx.attempt,
            "pid": os.getpid(),
            "address": self.address,
            "shards": shards,
            "gpus": list(self.ctx.gpus),
        }

    @staticmethod
    async def _reply(
        conn: _wire.Connection, msg: dict[str, Any], value: Any = None, error: Any = None
    ) -> None:
        if "rid" in msg:
            await conn.send(
                {"op": "reply", "rid": msg["rid"], "ok": error is None, "value": value, "error": error}
            )

    async def _dispatch(self, conn: _wire.Connection, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        try:
            if op == "def":
                self._define(msg["fid"], msg["fn"])
            elif op == "calls":
                asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_calls, conn, msg["calls"]
                )
            elif op == "reply":
                fut = self._pending.pop(msg["rid"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif op == "get":
                await self._reply(conn, msg, [self.objects[k] for k in msg["keys"]])
            elif op == "put":
                self.objects.update(msg["items"])
                await self._reply(conn, msg, len(msg["items"]))
            elif op == "free":
                for k in msg["keys"]:
                    self.objects.pop(k, None)
            elif op == "free_prefix":
                gone = [k for k in self.objects if k.startswith(msg["prefix"])]
                for k in gone:
                    del self.objects[k]
                await self._reply(conn, msg, len(gone))
            elif op == "rename":
                for old, new in msg["pairs"]:
                    self.objects[new] = self.objects.pop(old)
                await self._reply(conn, msg, len(msg["pairs"]))
            elif op == "split":
                # A kept mapping {part: value} becomes one object per part: "<prefix>/<part>".
                parts = self.objects[msg["key"]]
                if not isinstance(parts, dict):
                    raise TypeError(
                        f"object {msg['key']!r} is a {type(parts).__name__}, not a mapping to split"
                    )
                del self.objects[msg["key"]]
                for part, value in parts.items():
                    self.objects[f"{msg['prefix']}/{part}"] = value
                await self._reply(conn, msg, sorted(parts, key=str))
            elif op == "push":
                _wire.spawn(self._push(conn, msg))
            elif op == "store":
                _wire.spawn(self._in_executor(conn, msg, self._store, msg))
            elif op == "store_raw":
                _wire.spawn(self._in_executor(conn, msg, self._store_raw, msg))
            elif op == "replicate":
                _wire.spawn(self._replicate(conn, msg))
            elif op == "drop_dataset":
                _wire.spawn(self._in_executor(conn, msg, self._drop, msg["dataset"]))
            elif op == "shards":
                await self._reply(conn, msg, self._hello(msg.get("datasets", ()))["shards"])
            elif op == "stats":
                await self._reply(conn, msg, self.stats())
            elif op == "exit":
                await self._reply(conn, msg, self.stats())
                self._stop.set()
            else:
                await self._reply(conn, msg, error=("ValueError", f"unknown operation {op!r}", ""))
        except KeyError as exc:
            await self._reply(conn, msg, error=("KeyError", f"no object {exc} on this worker", ""))
        except _wire.WireError:
            raise
        except Exception as exc:  # a bad request fails that request, never the connection
            await self._reply(conn, msg, error=error_payload(exc))

    def stats(self) -> dict[str, Any]:
        return {"bytes": dict(self.traffic.bytes), "calls": self.calls, "local_calls": self.local_calls}

    async def _in_executor(
        self, conn: _wire.Connection, msg: dict[str, Any], fn: Callable[..., Any], *args: Any
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            value = await loop.run_in_executor(self._executor, fn, *args)
        except Exception as exc:
            await self._reply(conn, msg, error=error_payload(exc))
        else:
            await self._reply(conn, msg, value)

    # -- functions and calls ----------------------------------------------------------------------

    def _define(self, fid: int, blob: bytes) -> None:
        import cloudpickle

        try:
            self.functions[fid] = cloudpickle.loads(blob)
        except Exception as exc:
            self.function_errors[fid] = FailedPrecondition(
                f"cannot load the function on node {self.ctx.node_id}: {type(exc).__name__}: {exc} "
                "(install its module on the nodes, or ship it with dsdk.ship_module(module))"
            )

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, ShardArg):
            if not self.ctx.datasets_dir:
                raise FailedPrecondition(f"node {self.ctx.node_id} has no datasets directory")
            return _shards.read_shard(self.ctx.datasets_dir, value.dataset, value.shard)
        if isinstance(value, ObjArg):
            try:
                return self.objects[value.key]
            except KeyError:
                raise FailedPrecondition(f"object {value.key!r} is not on worker {self.address}") from None
        if isinstance(value, list) and value and isinstance(value[0], ObjArg):
            return [self._resolve(v) for v in value]
        return value

    def _run_calls(self, conn: _wire.Connection, calls: list[tuple[Any, ...]]) -> None:
        """Executor thread: run a batch of calls in order, sending results back in batches."""
        loop = self._loop
        assert loop is not None
        out: list[tuple[Any, bool, Any]] = []
        last = time.monotonic()
        for cid, fid, args, kwargs, keep in calls:
            try:
                fn = self.functions.get(fid)
                if fn is None:
                    err = self.function_errors.get(fid)
                    # A fresh exception per call: raising the stored one would pile up tracebacks.
                    raise FailedPrecondition(
                        str(err) if err is not None else f"function {fid} was never sent"
                    )
                local = any(isinstance(a, ShardArg) for a in args)
                value = fn(
                    *[self._resolve(a) for a in args], **{k: self._resolve(v) for k, v in kwargs.items()}
                )
                self.calls += 1
                self.local_calls += local
                if keep:
                    self.objects[keep] = value
                    out.append((cid, True, _summary(value)))
                else:
                    out.append((cid, True, value))
            except BaseException as exc:  # the user's code: report, never die
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.calls += 1
                out.append((cid, False, error_payload(exc)))
            now = time.monotonic()
            if len(out) >= RESULT_BATCH or now - last > RESULT_FLUSH_S:
                loop.call_soon_threadsafe(_send_soon, conn, {"op": "results", "results": out})
                out = []
                last = now
        if out:
            loop.call_soon_threadsafe(_send_soon, conn, {"op": "results", "results": out})

    # -- data -------------------------------------------------------------------------------------

    def _datasets_dir(self) -> str:
        if not self.ctx.datasets_dir:
            raise FailedPrecondition(f"node {self.ctx.node_id} gives its tasks no datasets directory")
        return self.ctx.datasets_dir

    def _store(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Write a shard: a value sent along, a kept object, or what a function makes here."""
        if "key" in msg:
            value = self.objects[msg["key"]]
        elif "fid" in msg:
            fn = self.functions.get(msg["fid"])
            if fn is None:
                raise self.function_errors.get(msg["fid"]) or FailedPrecondition("function not sent")
            value = fn(*msg.get("args", ()))
            self.calls += 1
        else:
            value = msg["value"]
        size = _shards.write_shard(self._datasets_dir(), msg["dataset"], msg["shard"], value)
        return {"size": size, "node": self.ctx.node_id}

    def _store_raw(self, msg: dict[str, Any]) -> dict[str, Any]:
        size = _shards.write_shard_bytes(
            self._datasets_dir(), msg["dataset"], msg["shard"], msg["header"], msg["buffers"]
        )
        return {"size": size, "node": self.ctx.node_id}

    def _drop(self, dataset: str) -> int:
        return _shards.delete_dataset(self._datasets_dir(), dataset)

    async def _peer(self, address: str, place: tuple[str, str, str]) -> _wire.Connection:
        async with self._peer_lock:
            conn = self._peers.get(address)
            if conn is not None and not conn.closed:
                return conn
            conn = await _wire.connect(address, self.key, traffic=self.traffic, local=self.place)
            conn.peer = _wire.Place(*place)
            self._peers[address] = conn
            _wire.spawn(self._read_peer(conn))
            await self._request(
                conn, {"op": "hello", "place": (self.place.node, self.place.subdomain, self.place.region)}
            )
            return conn

    async def _read_peer(self, conn: _wire.Connection) -> None:
        try:
            while True:
                msg = await conn.recv()
                if msg.get("op") == "reply":
                    fut = self._pending.pop(msg["rid"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except _wire.WireError:
            pass
        finally:
            conn.close()
            # Only the requests sent on this connection fail: other peers are fine.
            for rid in [r for r, c in self._pending_conn.items() if c is conn]:
                self._pending_conn.pop(rid, None)
                fut = self._pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(_wire.WireError(f"peer {conn.peer_address} went away"))

    async def _request(self, conn: _wire.Connection, msg: dict[str, Any]) -> Any:
        self._next_rid += 1
        rid = self._next_rid
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._pending_conn[rid] = conn
        try:
            await conn.send({**msg, "rid": rid})
            reply = await fut
        finally:
            self._pending.pop(rid, None)
            self._pending_conn.pop(rid, None)
        if not reply["ok"]:
            name, text, _ = reply["error"]
            raise FailedPrecondition(f"peer {conn.peer_address}: {name}: {text}")
        return reply["value"]

    async def _push(self, conn: _wire.Connection, msg: dict[str, Any]) -> None:
        """Send kept objects to a peer worker (a reduction tree's edge)."""
        try:
            peer = await self._peer(msg["to"], tuple(msg["place"]))
            items = {new: self.objects[old] for old, new in zip(msg["keys"], msg["as"], strict=True)}
            await self._request(peer, {"op": "put", "items": items})
            if msg.get("drop"):
                for k in msg["keys"]:
                    self.objects.pop(k, None)
        except Exception as exc:
            await self._reply(conn, msg, error=error_payload(exc))
        else:
            await self._reply(conn, msg, len(items))

    async def _replicate(self, conn: _wire.Connection, msg: dict[str, Any]) -> None:
        """Copy a stored shard, as it is stored, to a peer worker (which stores it)."""
        try:
            loop = asyncio.get_running_loop()
            header, buffers = await loop.run_in_executor(
                None, _shards.read_shard_bytes, self._datasets_dir(), msg["dataset"], msg["shard"]
            )
            peer = await self._peer(msg["to"], tuple(msg["place"]))
            value = await self._request(
                peer,
                {
                    "op": "store_raw",
                    "dataset": msg["dataset"],
                    "shard": msg["shard"],
                    "header": header,
                    "buffers": buffers,
                },
            )
        except Exception as exc:
            await self._reply(conn, msg, error=error_payload(exc))
        else:
            await self._reply(conn, msg, value)


#: State a job's functions keep in this worker process between calls (see :func:`worker_state`).
STATE: dict[str, Any] = {}


def worker_state() -> dict[str, Any]:
    """A dict that lives as long as this worker process: what a job's calls keep between calls
    on the same worker (a model replica, loaded data), as Ray actors keep attributes."""
    return STATE


def _summary(value: Any) -> dict[str, Any]:
    nbytes = getattr(value, "nbytes", None)
    if nbytes is None and isinstance(value, (bytes, bytearray, str)):
        nbytes = len(value)
    return {"type": type(value).__name__, "nbytes": int(nbytes) if nbytes is not None else -1}


def _send_soon(conn: _wire.Connection, msg: dict[str, Any]) -> None:
    if not conn.closed:
        _wire.spawn(_send_quietly(conn, msg))


async def _send_quietly(conn: _wire.Connection, msg: dict[str, Any]) -> None:
    with contextlib.suppress(_wire.WireError):
        try:
            await conn.send(msg)
        except _wire.WireError:
            raise
        except Exception:
            if msg.get("op") != "results":
                raise
            # Some result cannot be pickled: send each on its own, that one as an error.
            for cid, ok, value in msg["results"]:
                try:
                    await conn.send({"op": "results", "results": [(cid, ok, value)]})
                except _wire.WireError:
                    raise
                except Exception as exc:
                    why = f"the result cannot be sent back ({type(value).__name__}): {exc}"
                    await conn.send({"op": "results", "results": [(cid, False, ("PicklingError", why, ""))]})


def main() -> int:
    """Entry point of ``python -m dsdk.worker``: exit 0 when the driver ends it."""
    logging.basicConfig(
        level=os.environ.get("DSDK_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        ctx = context()
        key = _wire.secret_key(os.environ.get("DSDK_SECRET", ""))
    except DomainOSError as exc:
        print(f"dsdk.worker: {exc}", file=sys.stderr)
        return 2
    idle = float(os.environ.get("DSDK_IDLE_S", DEFAULT_IDLE_S))
    worker = Worker(ctx, key, idle_s=idle)

    code = asyncio.run(worker.run())
    # The executor thread may still run a user's call that will never be collected: do not wait.
    if threading.active_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
