"""Collectives among a job's tasks: ``allreduce``, ``broadcast``, ``barrier`` over numpy arrays.

Every task of the job calls :func:`group` (the DSDK worker's functions included); each listens on
its node's address, publishes it through the master (endpoint kind ``collective``) and waits for
the others: peers are found through the control plane, data goes task to task over the data plane
(:mod:`dsdk._wire`, authenticated with the job's secret).

Topology follows the federation:

* ranks in one sub-domain form a **ring**: ``allreduce`` is a ring reduce-scatter then all-gather
  (each rank sends ``2 (n-1)/n`` of the array, whatever ``n`` is: bandwidth-optimal);
* across sub-domains the lowest rank of each sub-domain (its *leader*) joins a **tree**: leaders
  reduce to the root leader and the result comes back down, so only one array per sub-domain
  crosses between domains each way (with two sub-domains the two leaders simply swap arrays, both
  directions at once); leaders then hand the result to their ring.

Operations are blocking, called in the same order by every rank (as in MPI and NCCL).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _wire
from ._context import TaskContext, context
from ._driver import driver_loop
from ._rendezvous import wait_endpoints
from ._types import Endpoint
from .errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

KIND = "collective"
_OPS: dict[str, Callable[..., Any]] = {
    "sum": np.add,
    "prod": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
}

_GROUPS: dict[tuple[str, int], Group] = {}
_GROUPS_LOCK = threading.Lock()


def _job_key(env: Any) -> bytes:
    """The job's data-plane secret: the DSDK's when the driver set one, else derived from the
    job's own credential (every task of a job has the same one, nobody else does)."""
    secret = env.get("DSDK_SECRET", "")
    if secret:
        return _wire.secret_key(secret)
    token = env.get("DOMAINOS_TOKEN", "")
    if not token:
        raise FailedPrecondition(
            "this task has neither DSDK_SECRET nor DOMAINOS_TOKEN: no secret to authenticate peers"
        )
    return hashlib.sha256(b"dsdk-collective\x00" + token.encode()).digest()


def group(*, timeout: float = 120.0, ctx: TaskContext | None = None) -> Group:
    """This task's collective group (all the job's tasks), formed on first use and then cached."""
    c = ctx or context()
    with _GROUPS_LOCK:
        g = _GROUPS.get((c.job_id, c.attempt))
        if g is None or g.closed:
            g = Group(c, timeout=timeout)
            _GROUPS[(c.job_id, c.attempt)] = g
        return g


class Group:
    """The job's tasks as ranks ``0..size-1`` (rank = task index). See the module docstring."""

    def __init__(self, ctx: TaskContext, *, timeout: float = 120.0) -> None:
        self.ctx = ctx
        self.rank = ctx.task_index
        self.size = ctx.replicas
        self.closed = False
        self._key = _job_key(ctx.env)
        self._loop = driver_loop()
        self.place = _wire.Place(ctx.node_id, ctx.subdomain_id, ctx.region)
        self.traffic = _wire.process_traffic()
        self._conns: dict[int, _wire.Connection] = {}
        self._inbox: dict[tuple[int, Any], asyncio.Future[Any]] = {}
        self._seq = 0
        self.peers: dict[int, Endpoint] = {}
        self._sock = _wire.listen(ctx.node_host)
        self.address = _wire.address_of(self._sock, ctx.node_host)
        self._accepting = asyncio.run_coroutine_threadsafe(self._accept(), self._loop)
        with ctx.client() as client:
            client.publish_endpoint(
                ctx.job_id, Endpoint(ctx.task_index, ctx.attempt, self.address, KIND, ctx.node_id)
            )
            eps = wait_endpoints(client, ctx.job_id, kind=KIND, count=self.size, timeout=timeout)
        self.peers = {e.task_index: e for e in eps}  # set at once: _serve waits for it
        # The topology: rings per sub-domain, a tree of their leaders.
        by_sd: dict[str, list[int]] = {}
        for r in sorted(self.peers):
            by_sd.setdefault(self.peers[r].subdomain_id, []).append(r)
        root_sd = self.peers[0].subdomain_id
        self.rings = sorted(
            by_sd.values(), key=lambda ranks: (self.peers[ranks[0]].subdomain_id != root_sd, ranks[0])
        )
        self.ring = next(r for r in self.rings if self.rank in r)
        self.leaders = [r[0] for r in self.rings]
        self._run(self._connect_all(), timeout)
        log.info(
            "collective group of job %s: rank %d of %d, ring %s, leaders %s",
            ctx.job_id,
            self.rank,
            self.size,
            self.ring,
            self.leaders,
        )

    # -- plumbing ------------------------------------------------------------------------------------

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        if self.closed:
            coro.close()
            raise FailedPrecondition("the collective group is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._sock)
            _wire.spawn(self._serve(sock))

    async def _serve(self, sock: Any) -> None:
        conn = _wire.Connection(sock, traffic=self.traffic, local=self.place)
        try:
            await asyncio.wait_for(_wire.server_handshake(conn, self._key), 30)
            hello = await conn.recv()
            peer = int(hello["rank"])
            self._conns[peer] = conn
            # A faster peer may connect while this rank still waits for the endpoint list.
            for _ in range(12_000):
                if self.peers:
                    break
                await asyncio.sleep(0.005)
            conn.peer = self._place_of(peer)
            await self._read(conn)
        except _wire.WireError as exc:
            log.debug("collective connection ended: %s", exc)
        finally:
            conn.close()

    def _place_of(self, rank: int) -> _wire.Place:
        e = self.peers[rank]
        return _wire.Place(e.node_id, e.subdomain_id, e.region)

    async def _connect_all(self) -> None:
        """Connect to every peer this rank talks to with a higher rank (lower ranks connect to us)."""
        need: set[int] = set()
        for ring in self.rings:
            if self.rank in ring and len(ring) > 1:
                i = ring.index(self.rank)
                need |= {ring[(i + 1) % len(ring)], ring[(i - 1) % len(ring)]}
                if self.rank == ring[0]:
                    need |= set(ring[1:])
        if self.rank in self.leaders:
            need |= set(self.leaders) - {self.rank}
        if self.rank == 0:
            need |= set(self.leaders)
        need.discard(self.rank)
        for peer in sorted(need):
            if peer > self.rank:
                conn = await _wire.connect(
                    self.peers[peer].address, self._key, traffic=self.traffic, local=self.place
                )
                conn.peer = self._place_of(peer)
                await conn.send({"rank": self.rank})
                self._conns[peer] = conn
                _wire.spawn(self._read(conn))
        deadline = asyncio.get_running_loop().time() + 60
        while any(p < self.rank and p not in self._conns for p in need):
            if asyncio.get_running_loop().time() > deadline:
                missing = sorted(p for p in need if p < self.rank and p not in self._conns)
                raise FailedPrecondition(f"ranks {missing} did not connect to rank {self.rank}")
            await asyncio.sleep(0.01)

    async def _read(self, conn: _wire.Connection) -> None:
        try:
            while True:
                msg = await conn.recv()
                key = (msg["src"], msg["tag"])
                fut = self._inbox.get(key)
                if fut is None:
                    fut = self._inbox[key] = asyncio.get_running_loop().create_future()
                fut.set_result(msg["data"])
        except _wire.WireError:
            for fut in self._inbox.values():
                if not fut.done():
                    fut.set_exception(
                        FailedPrecondition(f"a collective peer ({conn.peer_address}) went away")
                    )

    async def _send(self, peer: int, tag: Any, data: Any) -> None:
        conn = self._conns.get(peer)
        if conn is None:
            raise FailedPrecondition(f"rank {self.rank} has no connection to rank {peer}")
        await conn.send({"src": self.rank, "tag": tag, "data": data})

    async def _recv(self, peer: int, tag: Any) -> Any:
        key = (peer, tag)
        fut = self._inbox.get(key)
        if fut is None:
            fut = self._inbox[key] = asyncio.get_running_loop().create_future()
        try:
            return await fut
        finally:
            self._inbox.pop(key, None)

    # -- algorithms ----------------------------------------------------------------------------------

    async def _ring_allreduce(
        self, ring: list[int], flat: np.ndarray, op: Callable[..., Any], seq: int
    ) -> np.ndarray:
        """Reduce-scatter then all-gather around ``ring``, in place on a copy of ``flat``: each rank
        sends ``2 (n-1)/n`` of the array and allocates nothing more than what it receives."""
        n = len(ring)
        if n == 1:
            return flat
        i = ring.index(self.rank)
        nxt, prv = ring[(i + 1) % n], ring[(i - 1) % n]
        out = flat.copy()
        chunks = np.array_split(out, n)  # views into ``out``
        for step in range(n - 1):  # reduce-scatter
            send_i, recv_i = (i - step) % n, (i - step - 1) % n
            _, got = await asyncio.gather(
                self._send(nxt, (seq, "rs", step), chunks[send_i]), self._recv(prv, (seq, "rs", step))
            )
            op(chunks[recv_i], got, out=chunks[recv_i])
        for step in range(n - 1):  # all-gather
            send_i, recv_i = (i - step + 1) % n, (i - step) % n
            _, got = await asyncio.gather(
                self._send(nxt, (seq, "ag", step), chunks[send_i]), self._recv(prv, (seq, "ag", step))
            )
            chunks[recv_i][...] = got
        return out

    async def _tree_allreduce(self, flat: np.ndarray, op: Callable[..., Any], seq: int) -> np.ndarray:
        """Among the leaders: a binary tree rooted at the first leader, up then down."""
        leaders = self.leaders
        if len(leaders) == 1:
            return flat
        if len(leaders) == 2:
            # Two domains: one exchange both ways at once (same bytes across as up-then-down,
            # half the time); IEEE addition is commutative, so both sides get the same bits.
            other = leaders[1] if self.rank == leaders[0] else leaders[0]
            _, got = await asyncio.gather(self._send(other, (seq, "x"), flat), self._recv(other, (seq, "x")))
            both: np.ndarray = op(flat, got) if self.rank == leaders[0] else op(got, flat)
            return both
        i = leaders.index(self.rank)
        children = [leaders[c] for c in (2 * i + 1, 2 * i + 2) if c < len(leaders)]
        acc = flat
        for child in children:
            acc = op(acc, await self._recv(child, (seq, "up")))
        if i > 0:
            parent = leaders[(i - 1) // 2]
            await self._send(parent, (seq, "up"), acc)
            acc = await self._recv(parent, (seq, "down"))
        await asyncio.gather(*(self._send(child, (seq, "down"), acc) for child in children))
        return acc

    async def _ring_bcast(self, ring: list[int], flat: np.ndarray | None, seq: int, tag: str) -> np.ndarray:
        """The ring's first rank hands ``flat`` to the others (directly: one hop each)."""
        if self.rank == ring[0]:
            assert flat is not None
            await asyncio.gather(*(self._send(r, (seq, tag), flat) for r in ring[1:]))
            return flat
        got: np.ndarray = await self._recv(ring[0], (seq, tag))
        return got

    async def _allreduce(self, flat: np.ndarray, op: Callable[..., Any], seq: int) -> np.ndarray:
        acc = await self._ring_allreduce(self.ring, flat, op, seq)
        if len(self.leaders) == 1:
            return acc
        out: np.ndarray | None = None
        if self.rank in self.leaders:
            out = await self._tree_allreduce(acc, op, seq)
        return await self._ring_bcast(self.ring, out, seq, "result")

    # -- the API -------------------------------------------------------------------------------------

    def allreduce(self, array: Any, op: str = "sum", *, timeout: float | None = 600.0) -> np.ndarray:
        """Every rank's ``array`` combined elementwise (``op``: sum, prod, max, min); every rank
        gets the result (a new array of the input's shape and dtype)."""
        fn = _OPS.get(op)
        if fn is None:
            raise InvalidArgument(f"unknown op {op!r}; allowed: {', '.join(_OPS)}", field="op")
        arr = np.ascontiguousarray(array)
        self._seq += 1
        flat = arr.reshape(-1)
        out: np.ndarray = self._run(self._allreduce(flat, fn, self._seq), timeout)
        return out.reshape(arr.shape).astype(arr.dtype, copy=False)

    def broadcast(self, array: Any = None, root: int = 0, *, timeout: float | None = 600.0) -> np.ndarray:
        """``array`` of rank ``root`` on every rank (other ranks may pass None)."""
        if not 0 <= root < self.size:
            raise InvalidArgument(f"must be a rank between 0 and {self.size - 1}, got {root}", field="root")
        self._seq += 1
        seq = self._seq
        value = np.ascontiguousarray(array) if self.rank == root else None
        if self.rank == root and value is None:
            raise InvalidArgument("the root must pass the array to broadcast", field="array")

        async def go() -> np.ndarray:
            root_leader = next(r[0] for r in self.rings if root in r)
            v = value
            if root != root_leader:  # to the root's sub-domain leader first
                if self.rank == root:
                    await self._send(root_leader, (seq, "b0"), v)
                elif self.rank == root_leader:
                    v = await self._recv(root, (seq, "b0"))
            if self.rank == root_leader:
                await asyncio.gather(
                    *(self._send(ld, (seq, "b1"), v) for ld in self.leaders if ld != root_leader)
                )
            elif self.rank in self.leaders:
                v = await self._recv(root_leader, (seq, "b1"))
            if self.rank in self.leaders:
                assert v is not None
                await asyncio.gather(*(self._send(r, (seq, "b2"), v) for r in self.ring[1:] if r != root))
                return v
            if self.rank == root:
                assert v is not None
                return v
            got: np.ndarray = await self._recv(self.ring[0], (seq, "b2"))
            return got

        out: np.ndarray = self._run(go(), timeout)
        return out

    def barrier(self, *, timeout: float | None = 600.0) -> None:
        """Return once every rank has called it."""
        self.allreduce(np.zeros(1, dtype=np.int8), timeout=timeout)

    def stats(self) -> dict[str, int]:
        """Bytes this process's data plane sent so far, by distance (collectives and, in a DSDK
        worker, its other traffic too)."""
        return dict(self.traffic.bytes)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True

        async def shut() -> None:
            for conn in self._conns.values():
                conn.close()
            self._sock.close()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._accepting.cancel()


def allreduce(array: Any, op: str = "sum") -> np.ndarray:
    """:meth:`Group.allreduce` on this task's :func:`group`."""
    return group().allreduce(array, op)


def broadcast(array: Any = None, root: int = 0) -> np.ndarray:
    """:meth:`Group.broadcast` on this task's :func:`group`."""
    return group().broadcast(array, root)


def barrier() -> None:
    """:meth:`Group.barrier` on this task's :func:`group`."""
    group().barrier()
