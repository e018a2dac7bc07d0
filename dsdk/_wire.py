"""The DSDK data plane's wire: authenticated, framed pickle messages over plain TCP sockets.

Why not gRPC here: the control plane (jobs, placement, rendezvous) is gRPC; the data plane moves
arrays between a job's own processes, and Python gRPC costs a copy into a protobuf ``bytes`` field
and a Python-level message per call. Frames here are pickle protocol 5 with *out-of-band buffers*:
a numpy array's memory goes to the socket as it is (``sock_sendall`` of a memoryview) and arrives
in a ``bytearray`` the received array is built on, so a 64 MiB array costs one kernel copy each way.

Frame::

    u32 n_buffers | u32 header_len | n_buffers x u64 buffer_len | header (pickle) | buffers

Authentication happens before anything is unpickled (unpickling runs code): both sides prove they
hold the job's secret with HMAC-SHA256 over fresh nonces (:func:`server_handshake`,
:func:`client_handshake`). The secret reaches the job's tasks in their environment
(``DSDK_SECRET``, set by the driver that submitted the job) and never travels on this wire.
Traffic is not encrypted: run the data plane on a trusted network (as NCCL and Gloo do).

Every :class:`Connection` counts the bytes it moves; :class:`Traffic` adds them up by how far they
travelled (same node, same sub-domain, across sub-domains, across regions, to the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import pickle
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from .errors import DomainOSError

_HEAD = struct.Struct("!II")
_MAGIC = b"DSDK1"
_NONCE = 16
_MAC = 32
#: Largest header a peer may announce (the pickled message without its out-of-band buffers).
MAX_HEADER_BYTES = 256 * 2**20
#: Largest single out-of-band buffer and most buffers per message.
MAX_BUFFER_BYTES = 16 * 2**30
MAX_BUFFERS = 65_536
#: Largest message in all (header and buffers together).
MAX_MESSAGE_BYTES = 16 * 2**30
#: Socket buffer sizes asked for (the kernel caps them).
SOCKET_BUFFER_BYTES = 4 * 2**20


class WireError(DomainOSError):
    """The data-plane connection failed: the peer went away, refused us, or spoke nonsense."""

    code = "UNAVAILABLE"


class AuthError(WireError):
    """The peer does not hold the job's secret (or we do not hold its)."""

    code = "PERMISSION_DENIED"


# -- where a process runs, and how far bytes travel ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """Where a process runs. The client (a DSDK driver) has ``node == ""``."""

    node: str = ""
    subdomain: str = ""
    region: str = ""

    @property
    def is_client(self) -> bool:
        return not self.node


#: Traffic categories, in :class:`Traffic` and ``JobStats``.
CATEGORIES = ("intra_node", "inter_node", "inter_subdomain", "inter_region", "client")


def category(a: Place, b: Place) -> str:
    """How far bytes between ``a`` and ``b`` travel."""
    if a.is_client or b.is_client:
        return "client"
    if a.node == b.node:
        return "intra_node"
    if a.subdomain == b.subdomain:
        return "inter_node"
    if a.region == b.region:
        return "inter_subdomain"
    return "inter_region"


@dataclass
class Traffic:
    """Bytes moved, by category (both directions of every connection counted once, by its sender)."""

    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    def add(self, cat: str, n: int) -> None:
        self.bytes[cat] += n

    def merge(self, other: dict[str, int]) -> None:
        for k, v in other.items():
            if k in self.bytes:
                self.bytes[k] += int(v)

    @property
    def between_nodes(self) -> int:
        b = self.bytes
        return b["inter_node"] + b["inter_subdomain"] + b["inter_region"]

    @property
    def between_domains(self) -> int:
        return self.bytes["inter_subdomain"] + self.bytes["inter_region"]


_PROCESS_TRAFFIC: list[Traffic] = []


def process_traffic() -> Traffic:
    """The traffic counters of this process's data plane (a DSDK worker's, when one runs here):
    collectives started inside a worker's calls count into the worker's statistics."""
    if not _PROCESS_TRAFFIC:
        _PROCESS_TRAFFIC.append(Traffic())
    return _PROCESS_TRAFFIC[0]


# -- authentication ---------------------------------------------------------------------------------


def _mac(key: bytes, *parts: bytes | bytearray) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


async def server_handshake(conn: Connection, key: bytes) -> None:
    """Prove the client holds ``key``, then prove we do (mutual)."""
    mine = os.urandom(_NONCE)
    await conn.send_raw(_MAGIC + mine)
    reply = await conn.recv_raw(_MAC + _NONCE)
    theirs = reply[_MAC:]
    if not hmac.compare_digest(reply[:_MAC], _mac(key, b"c", mine, theirs)):
        # A proof that cannot be right: the client's check fails with AuthError too (not a
        # bare "connection closed"), and nothing it sent is ever unpickled.
        with contextlib.suppress(WireError):
            await conn.send_raw(bytes(_MAC))
        raise AuthError(f"data-plane peer {conn.peer_address} does not hold this job's secret")
    await conn.send_raw(_mac(key, b"s", theirs, mine))


async def client_handshake(conn: Connection, key: bytes) -> None:
    hello = await conn.recv_raw(len(_MAGIC) + _NONCE)
    if hello[: len(_MAGIC)] != _MAGIC:
        raise WireError(f"{conn.peer_address} is not a DSDK data-plane endpoint")
    theirs = hello[len(_MAGIC) :]
    mine = os.urandom(_NONCE)
    await conn.send_raw(_mac(key, b"c", theirs, mine) + mine)
    proof = await conn.recv_raw(_MAC)
    if not hmac.compare_digest(proof, _mac(key, b"s", mine, theirs)):
        raise AuthError(f"data-plane endpoint {conn.peer_address} does not hold this job's secret")


# -- connections ---------------------------------------------------------------------------------------


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)


class Connection:
    """One authenticated data-plane connection, used from one asyncio loop.

    ``send`` may be called by several coroutines: frames never interleave (a lock). ``recv`` is
    for one reader. ``local``/``peer`` are where each end runs (set after the hello), which
    decides how the bytes are counted in ``traffic``.
    """

    def __init__(
        self, sock: socket.socket, *, traffic: Traffic | None = None, local: Place | None = None
    ) -> None:
        _tune(sock)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self.traffic = traffic if traffic is not None else Traffic()
        self.local = local or Place()
        self.peer = Place()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.closed = False
        #: Tasks blocked on this socket right now (cancelled by :meth:`close`).
        self._waiting: set[asyncio.Task[Any]] = set()
        try:
            host, port = sock.getpeername()[:2]
            self.peer_address = f"{host}:{port}"
        except OSError:
            self.peer_address = "?"

    # raw bytes (the handshake) ------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        try:
            await self._io(self._loop.sock_sendall(self.sock, data))
        except OSError as exc:
            raise WireError(f"data-plane connection to {self.peer_address} broke: {exc}") from exc

    async def _io(self, aw: Any) -> Any:
        """Await one socket operation, cancellable by :meth:`close`."""
        if self.closed:
            aw.close()
            raise WireError(f"data-plane connection to {self.peer_address} is closed")
        task = asyncio.current_task()
        if task is not None:
            self._waiting.add(task)
        try:
            return await aw
        except asyncio.CancelledError:
            if self.closed:
                raise WireError(f"data-plane connection to {self.peer_address} was closed") from None
            raise
        finally:
            if task is not None:
                self._waiting.discard(task)

    async def recv_raw(self, n: int) -> bytearray:
        buf = bytearray(n)
        await self._recv_into(memoryview(buf))
        return buf

    async def _recv_into(self, view: memoryview) -> None:
        got = 0
        n = len(view)
        while got < n:
            try:
                k = await self._io(self._loop.sock_recv_into(self.sock, view[got:]))
            except OSError as exc:
                raise WireError(f"data-plane connection to {self.peer_address} broke: {exc}") from exc
            if k == 0:
                raise WireError(f"data-plane peer {self.peer_address} closed the connection")
            got += k

    # messages -----------------------------------------------------------------------------------

    async def send(self, obj: Any) -> int:
        """Send one message; returns its size on the wire."""
        raws: list[pickle.PickleBuffer] = []
        header = pickle.dumps(obj, protocol=5, buffer_callback=raws.append)
        views: list[memoryview] = []
        for pb in raws:
            try:
                views.append(pb.raw())
            except BufferError:  # not contiguous: send a contiguous copy
                views.append(memoryview(bytes(pb)))
        head = _HEAD.pack(len(views), len(header)) + struct.pack(
            f"!{len(views)}Q", *(v.nbytes for v in views)
        )
        size = len(head) + len(header) + sum(v.nbytes for v in views)
        async with self._send_lock:
            try:
                if size <= 65536:  # one system call for the small messages that dominate counts
                    await self._io(self._loop.sock_sendall(self.sock, b"".join([head, header, *views])))
                else:
                    await self._io(self._loop.sock_sendall(self.sock, head + header))
                    for v in views:
                        await self._io(self._loop.sock_sendall(self.sock, v))
            except OSError as exc:
                raise WireError(f"data-plane connection to {self.peer_address} broke: {exc}") from exc
        self.bytes_sent += size
        self.traffic.add(category(self.local, self.peer), size)
        return size

    async def recv(self) -> Any:
        """The next message (WireError when the connection ends)."""
        head = await self.recv_raw(_HEAD.size)
        nbuf, hlen = _HEAD.unpack(head)
        if nbuf > MAX_BUFFERS or hlen > MAX_HEADER_BYTES:
            raise WireError(f"data-plane peer {self.peer_address} announced an oversize message")
        lens: tuple[int, ...] = ()
        if nbuf:
            lens = struct.unpack(f"!{nbuf}Q", await self.recv_raw(8 * nbuf))
            if any(n > MAX_BUFFER_BYTES for n in lens) or hlen + sum(lens) > MAX_MESSAGE_BYTES:
                raise WireError(f"data-plane peer {self.peer_address} announced an oversize buffer")
        header = await self.recv_raw(hlen)
        buffers = []
        for n in lens:
            buffers.append(await self.recv_raw(n))
        self.bytes_received += _HEAD.size + 8 * nbuf + hlen + sum(lens)
        return pickle.loads(header, buffers=buffers)

    def close(self) -> None:
        """Close the socket; tasks blocked on it get WireError. The loop's interest in the file
        descriptor is dropped *before* it is closed: a new socket may get the same number, and
        the selector must not believe that one is already registered."""
        if self.closed:
            return
        self.closed = True
        current = asyncio.current_task() if self._loop.is_running() else None
        for task in list(self._waiting):
            if task is not current:
                task.cancel()
        with contextlib.suppress(OSError, ValueError):
            fd = self.sock.fileno()
            if fd >= 0:
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
        with contextlib.suppress(OSError):
            self.sock.close()


async def connect(
    address: str,
    key: bytes,
    *,
    traffic: Traffic | None = None,
    local: Place | None = None,
    timeout: float = 10.0,
) -> Connection:
    """Open an authenticated connection to ``host:port``."""
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise WireError(f"cannot resolve data-plane endpoint {address}: {exc}") from exc
    last: Exception | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, sockaddr), timeout)
        except (OSError, TimeoutError) as exc:
            sock.close()
            last = exc
            continue
        conn = Connection(sock, traffic=traffic, local=local)
        try:
            await asyncio.wait_for(client_handshake(conn, key), timeout)
        except BaseException:
            conn.close()
            raise
        return conn
    raise WireError(f"cannot connect to data-plane endpoint {address}: {last}")


_BACKGROUND: set[asyncio.Task[Any]] = set()


def spawn(coro: Any, name: str | None = None) -> asyncio.Task[Any]:
    """Start a background task and keep a reference to it until it ends (asyncio holds only weak
    references: an unreferenced task can be garbage-collected mid-flight)."""
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    if name:
        task.set_name(name)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


def listen(host: str, port: int = 0) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: the kernel picks one)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(sockaddr)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def address_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def secret_key(text: str) -> bytes:
    """The HMAC key of a job's secret (hex text, as in ``DSDK_SECRET``)."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise AuthError("DSDK_SECRET must be at least 32 hex digits (the job's data-plane secret)")
    return key


def new_secret() -> str:
    return os.urandom(32).hex()
