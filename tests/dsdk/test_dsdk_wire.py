"""The DSDK data-plane wire (:mod:`dsdk._wire`): authentication before unpickling, framing,
out-of-band numpy buffers, size limits, traffic accounting and closing under a blocked reader.

Every test runs one scenario on a loop of its own (``asyncio.run``) over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mmap
import pathlib
import pickle
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from dsdk import _wire
from dsdk._wire import AuthError, Connection, Place, Traffic, WireError

pytestmark = pytest.mark.timeout(60)

SECRET = _wire.new_secret()
KEY = _wire.secret_key(SECRET)
OTHER_KEY = _wire.secret_key(_wire.new_secret())


class _Marker:
    """Unpickling this object creates the file at ``path`` (what a hostile pickle could do)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def _frame(obj: Any) -> bytes:
    """A well-formed data-plane frame carrying ``obj`` (no out-of-band buffers)."""
    header = pickle.dumps(obj, protocol=5)
    return struct.pack("!II", 0, len(header)) + header


async def _until(cond: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.005)


class _Server:
    """A listening socket whose accepted connections run ``server_handshake`` with ``key``."""

    def __init__(self, key: bytes = KEY) -> None:
        self.key = key
        self.sock = _wire.listen("127.0.0.1")
        self.address = _wire.address_of(self.sock, "127.0.0.1")

    async def accept(self, handshake: bool = True) -> Connection:
        loop = asyncio.get_running_loop()
        sock, _ = await loop.sock_accept(self.sock)
        conn = Connection(sock)
        if handshake:
            try:
                await _wire.server_handshake(conn, self.key)
            except BaseException:
                conn.close()
                raise
        return conn

    def close(self) -> None:
        self.sock.close()


async def _pair(server_key: bytes = KEY, client_key: bytes = KEY) -> tuple[Connection, Connection]:
    """(client, server) connections after a successful handshake."""
    server = _Server(server_key)
    try:
        srv, cli = await asyncio.gather(server.accept(), _wire.connect(server.address, client_key))
    finally:
        server.close()
    return cli, srv


def _run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 30))  # type: ignore[arg-type]


# -- authentication ------------------------------------------------------------------------------


def test_handshake_with_the_same_secret_connects_and_messages_flow() -> None:
    async def scenario() -> None:
        cli, srv = await _pair()
        try:
            await cli.send({"op": "hello", "n": 1})
            assert await srv.recv() == {"op": "hello", "n": 1}
            await srv.send(["reply", 2])
            assert await cli.recv() == ["reply", 2]
            assert cli.peer_address == f"127.0.0.1:{srv.sock.getsockname()[1]}"
        finally:
            cli.close()
            srv.close()

    _run(scenario)


def test_wrong_secret_fails_the_server_with_auth_error() -> None:
    async def scenario() -> tuple[BaseException | Connection, BaseException | Connection]:
        server = _Server(KEY)
        try:
            srv, cli = await asyncio.gather(
                server.accept(), _wire.connect(server.address, OTHER_KEY), return_exceptions=True
            )
        finally:
            server.close()
        return srv, cli

    srv, cli = _run(scenario)
    assert isinstance(srv, AuthError), srv
    assert "does not hold this job's secret" in str(srv)
    assert isinstance(cli, WireError), cli  # the client does not get a connection


def test_wrong_secret_fails_the_client_with_auth_error() -> None:
    async def scenario() -> BaseException | Connection:
        server = _Server(KEY)
        try:
            _, cli = await asyncio.gather(
                server.accept(), _wire.connect(server.address, OTHER_KEY), return_exceptions=True
            )
        finally:
            server.close()
        return cli

    assert isinstance(_run(scenario), AuthError)


def test_client_refuses_a_server_that_cannot_prove_the_secret() -> None:
    """A server that skips checking and answers with a made-up proof: the client's AuthError."""

    async def scenario() -> BaseException | Connection:
        server = _Server()
        loop = asyncio.get_running_loop()

        async def impostor() -> None:
            sock, _ = await loop.sock_accept(server.sock)
            conn = Connection(sock)
            await conn.send_raw(b"DSDK1" + bytes(16))
            await conn.recv_raw(48)
            await conn.send_raw(bytes(32))  # not the HMAC of anything we know
            with contextlib.suppress(WireError):
                await conn.recv_raw(1)
            conn.close()

        task = asyncio.ensure_future(impostor())
        try:
            return await _wire.connect(server.address, KEY)
        except BaseException as exc:
            return exc
        finally:
            await asyncio.wait_for(task, 5)
            server.close()

    err = _run(scenario)
    assert isinstance(err, AuthError), err
    assert "does not hold this job's secret" in str(err)


def test_client_refuses_an_endpoint_that_is_not_a_data_plane() -> None:
    async def scenario() -> BaseException | Connection:
        server = _Server()
        loop = asyncio.get_running_loop()

        async def http() -> None:
            sock, _ = await loop.sock_accept(server.sock)
            await loop.sock_sendall(sock, b"HTTP/1.1 400 Bad Request\r\n\r\n")
            sock.close()

        task = asyncio.ensure_future(http())
        try:
            return await _wire.connect(server.address, KEY)
        except BaseException as exc:
            return exc
        finally:
            await task
            server.close()

    err = _run(scenario)
    assert type(err) is WireError, err
    assert "is not a DSDK data-plane endpoint" in str(err)


def test_the_marker_payload_really_runs_code_when_an_authenticated_peer_sends_it(
    tmp_path: pathlib.Path,
) -> None:
    """Control for the next tests: the hostile payload does create its marker once unpickled."""
    marker = tmp_path / "control"

    async def scenario() -> None:
        cli, srv = await _pair()
        try:
            await cli.send(_Marker(marker))
            f = await srv.recv()
            f.close()
        finally:
            cli.close()
            srv.close()

    _run(scenario)
    assert marker.exists()


@pytest.mark.parametrize("reads_hello", [False, True], ids=["ignores-handshake", "forges-proof"])
def test_an_unauthenticated_peers_bytes_are_never_unpickled(
    tmp_path: pathlib.Path, reads_hello: bool
) -> None:
    marker = tmp_path / "pwned"
    frame = _frame(_Marker(marker))
    assert len(frame) > 48  # enough bytes to fill the whole proof the server reads

    async def scenario() -> tuple[BaseException | None, bytes | BaseException]:
        server = _Server()
        loop = asyncio.get_running_loop()
        accepted = asyncio.ensure_future(server.accept())
        raw = socket.socket()
        raw.setblocking(False)
        try:
            await loop.sock_connect(raw, ("127.0.0.1", server.sock.getsockname()[1]))
            if reads_hello:
                hello = b""
                while len(hello) < 21:
                    hello += await loop.sock_recv(raw, 21 - len(hello))
                assert hello.startswith(b"DSDK1")
                await loop.sock_sendall(raw, bytes(48) + frame + frame)
            else:
                await loop.sock_sendall(raw, frame + frame)
            server_error: BaseException | None = None
            try:
                conn = await asyncio.wait_for(accepted, 5)
            except BaseException as exc:
                server_error = exc
            else:  # it must not have authenticated: read what it would, to be sure
                with contextlib.suppress(WireError):
                    await asyncio.wait_for(conn.recv(), 2)
                conn.close()
            # The server has hung up on us: the raw peer reads EOF (or a reset) after the hello.
            rest: bytes | BaseException = b""
            try:
                while True:
                    got = await asyncio.wait_for(loop.sock_recv(raw, 4096), 5)
                    if not got:
                        break
                    rest += got
            except OSError as exc:
                rest = exc
            return server_error, rest
        finally:
            raw.close()
            server.close()

    server_error, rest = _run(scenario)
    assert not marker.exists(), "an unauthenticated peer's pickle was loaded"
    assert isinstance(server_error, AuthError), server_error
    assert isinstance(rest, (bytes, ConnectionResetError))
    if isinstance(rest, bytes):
        # At most the server's hello and a refusal the size of a proof; never a message.
        assert len(rest) <= 21 + 32


def test_secret_key_refuses_short_or_malformed_secrets() -> None:
    assert _wire.secret_key("ab" * 16) == bytes.fromhex("ab" * 16)
    assert len(_wire.secret_key(_wire.new_secret())) == 32
    for bad in ("", "abcd", "zz" * 32):
        with pytest.raises(AuthError, match="DSDK_SECRET must be at least 32 hex digits"):
            _wire.secret_key(bad)


# -- numpy arrays and out-of-band buffers ---------------------------------------------------------


def _owner(arr: Any) -> Any:
    """The object at the end of an array's ``base`` chain (through memoryviews)."""
    obj = arr
    for _ in range(20):
        if isinstance(obj, np.ndarray):
            if obj.base is None:
                return obj
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return obj
    return obj


def test_numpy_arrays_round_trip_equal_and_large_ones_land_writable_in_the_received_buffer() -> None:
    rng = np.random.default_rng(7)
    big = np.arange(8 * 2**20, dtype=np.float64)  # 64 MiB
    grid = np.arange(600, dtype=np.int32).reshape(20, 30)
    arrays: dict[str, np.ndarray] = {
        "f64": rng.standard_normal(1000),
        "f32": rng.standard_normal((7, 9)).astype(np.float32),
        "i8": np.arange(-100, 100, dtype=np.int8),
        "u16": np.arange(5000, dtype=np.uint16),
        "c64": (rng.standard_normal(64) + 1j * rng.standard_normal(64)).astype(np.complex64),
        "bool": rng.standard_normal(333) > 0,
        "record": np.array([(1, 2.5), (3, -1.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "scalar": np.array(3.25),
        "empty": np.zeros((0, 4)),
        "strided": grid[::3, 1::2],
        "fortran": np.asfortranarray(grid),
        "big": big,
    }
    assert not arrays["strided"].flags.c_contiguous and not arrays["strided"].flags.f_contiguous

    async def scenario() -> tuple[dict[str, np.ndarray], int, int, int]:
        cli, srv = await _pair()
        try:
            sent, got = await asyncio.gather(cli.send({"arrays": arrays}), srv.recv())
            return got["arrays"], sent, cli.bytes_sent, srv.bytes_received
        finally:
            cli.close()
            srv.close()

    got, size, bytes_sent, bytes_received = _run(scenario)
    assert set(got) == set(arrays)
    for name, arr in arrays.items():
        out = got[name]
        assert out.dtype == arr.dtype, name
        assert out.shape == arr.shape, name
        assert np.array_equal(out, arr), name
    assert size == bytes_sent == bytes_received
    assert big.nbytes < size < big.nbytes + 64 * 1024  # the array's memory went out of band, once
    out = got["big"]
    assert out.flags.writeable
    assert isinstance(_owner(out), bytearray)
    assert len(_owner(out)) == big.nbytes
    out[0] = -1.0  # it is the receiver's own memory
    assert out[0] == -1.0 and big[0] == 0.0
    assert got["fortran"].flags.f_contiguous


# -- size limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (struct.pack("!II", 0, _wire.MAX_HEADER_BYTES + 1), "oversize message"),
        (struct.pack("!II", 0, 0xFFFFFFFF), "oversize message"),
        (struct.pack("!II", _wire.MAX_BUFFERS + 1, 10), "oversize message"),
        (struct.pack("!II", 1, 10) + struct.pack("!Q", _wire.MAX_BUFFER_BYTES + 1), "oversize buffer"),
        (
            struct.pack("!II", 2, 10) + struct.pack("!2Q", 100, 2**63),
            "oversize buffer",
        ),
    ],
    ids=["header", "header-u32-max", "buffer-count", "buffer", "second-buffer"],
)
def test_oversize_announcements_are_refused_before_allocating(raw: bytes, expect: str) -> None:
    async def scenario() -> tuple[BaseException | None, list[int]]:
        cli, srv = await _pair()
        sizes: list[int] = []
        real_recv_raw = srv.recv_raw

        async def spy(n: int) -> bytearray:  # every allocation recv makes goes through here
            sizes.append(n)
            return await real_recv_raw(n)

        srv.recv_raw = spy  # type: ignore[method-assign]
        try:
            await cli.send_raw(raw)
            try:
                await asyncio.wait_for(srv.recv(), 5)
            except BaseException as exc:
                return exc, sizes
            return None, sizes
        finally:
            cli.close()
            srv.close()

    err, sizes = _run(scenario)
    assert isinstance(err, WireError), err
    assert expect in str(err)
    assert max(sizes) <= 16, sizes  # the 8-byte head and the buffer lengths, nothing announced


# -- places and traffic -------------------------------------------------------------------------------


def test_category_of_every_distance() -> None:
    a = Place("n1", "sd1", "east")
    assert _wire.category(a, Place("n1", "sd1", "east")) == "intra_node"
    assert _wire.category(a, Place("n2", "sd1", "east")) == "inter_node"
    assert _wire.category(a, Place("n3", "sd2", "east")) == "inter_subdomain"
    assert _wire.category(a, Place("n4", "sd3", "west")) == "inter_region"
    assert _wire.category(a, Place()) == "client"
    assert _wire.category(Place(), a) == "client"
    assert Place().is_client and not a.is_client
    assert set(_wire.CATEGORIES) == {"intra_node", "inter_node", "inter_subdomain", "inter_region", "client"}


@pytest.mark.parametrize(
    ("peer", "cat"),
    [
        (Place("n1", "sd1", "east"), "intra_node"),
        (Place("n2", "sd1", "east"), "inter_node"),
        (Place("n3", "sd2", "east"), "inter_subdomain"),
        (Place("n4", "sd3", "west"), "inter_region"),
        (Place(), "client"),
    ],
)
def test_traffic_counts_sent_bytes_by_the_senders_category(peer: Place, cat: str) -> None:
    payload = np.ones(100_000)  # 800 KB: the sizes are not small by accident

    async def scenario() -> tuple[int, Traffic, Traffic, int]:
        cli, srv = await _pair()
        sent_traffic = Traffic()
        recv_traffic = Traffic()
        cli.traffic, cli.local, cli.peer = sent_traffic, Place("n1", "sd1", "east"), peer
        srv.traffic, srv.local, srv.peer = recv_traffic, peer, Place("n1", "sd1", "east")
        try:
            n1, _ = await asyncio.gather(cli.send(payload), srv.recv())
            n2, _ = await asyncio.gather(cli.send({"small": 1}), srv.recv())
            return n1 + n2, sent_traffic, recv_traffic, cli.bytes_sent
        finally:
            cli.close()
            srv.close()

    size, sent, received, bytes_sent = _run(scenario)
    assert size == bytes_sent
    assert payload.nbytes < size < payload.nbytes + 4096
    assert sent.bytes == {c: (size if c == cat else 0) for c in _wire.CATEGORIES}
    assert sum(received.bytes.values()) == 0  # the receiver counts nothing: the sender did
    assert sent.between_nodes == (size if cat in ("inter_node", "inter_subdomain", "inter_region") else 0)
    assert sent.between_domains == (size if cat in ("inter_subdomain", "inter_region") else 0)


def test_traffic_merge_adds_known_categories_only() -> None:
    t = Traffic()
    t.add("client", 5)
    t.merge({"client": 10, "inter_region": 7, "bogus": 99})
    assert t.bytes["client"] == 15 and t.bytes["inter_region"] == 7
    assert "bogus" not in t.bytes


# -- closing --------------------------------------------------------------------------------------------


def test_close_wakes_a_blocked_reader_with_wire_error_and_the_fd_can_be_reused() -> None:
    """Regression: the loop's selector kept a closed socket's registration, so a new socket that got
    the same descriptor number failed to connect (ENOENT from epoll) or never saw its data."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = _Server()
        cli, srv = await _pair()
        try:
            reader = asyncio.ensure_future(srv.recv())
            await _until(lambda: srv._waiting, what="the reader blocks in recv")
            old_fd = srv.sock.fileno()
            srv.close()
            # Synchronously, before the loop runs again (no stale callback may tidy up first): a
            # new socket gets the freed number and starts a non-blocking connect on it.
            spare: list[socket.socket] = []
            new = socket.socket()
            while new.fileno() != old_fd and len(spare) < 50:
                spare.append(new)
                new = socket.socket()
            for s in spare:
                s.close()
            assert new.fileno() == old_fd, "the test needs the closed descriptor number back"
            new.setblocking(False)
            assert new.connect_ex(("127.0.0.1", server.sock.getsockname()[1])) in (0, errno.EINPROGRESS)
            connected: asyncio.Future[None] = loop.create_future()

            def on_writable() -> None:
                loop.remove_writer(old_fd)
                if not connected.done():
                    connected.set_result(None)

            loop.add_writer(old_fd, on_writable)  # what loop.sock_connect does on EINPROGRESS
            with pytest.raises(WireError, match=r"(was|is) closed"):
                await asyncio.wait_for(reader, 5)
            await asyncio.wait_for(connected, 5)
            assert new.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            other, _ = await asyncio.wait_for(loop.sock_accept(server.sock), 5)
            a, b = Connection(new), Connection(other)
            try:
                got = asyncio.ensure_future(a.recv())  # blocks first, on the reused descriptor
                await _until(lambda: a._waiting, what="the new reader blocks")
                await b.send({"after": "reuse"})
                assert await asyncio.wait_for(got, 5) == {"after": "reuse"}
                await a.send(np.arange(10))
                assert np.array_equal(await asyncio.wait_for(b.recv(), 5), np.arange(10))
            finally:
                a.close()
                b.close()
        finally:
            server.close()
            cli.close()

    _run(scenario)


def test_peer_closing_ends_recv_and_send_after_close_raises() -> None:
    async def scenario() -> None:
        cli, srv = await _pair()
        reader = asyncio.ensure_future(srv.recv())
        cli.close()
        with pytest.raises(WireError, match="closed the connection"):
            await asyncio.wait_for(reader, 5)
        with pytest.raises(WireError, match="is closed"):
            await cli.send({"x": 1})
        srv.close()
        srv.close()  # idempotent
        assert srv.closed and cli.closed

    _run(scenario)


def test_connect_to_a_closed_port_is_a_wire_error() -> None:
    sock = _wire.listen("127.0.0.1")
    address = _wire.address_of(sock, "127.0.0.1")
    sock.close()

    async def scenario() -> BaseException | Connection:
        try:
            return await _wire.connect(address, KEY, timeout=5)
        except BaseException as exc:
            return exc

    err = _run(scenario)
    assert isinstance(err, WireError), err
    assert f"cannot connect to data-plane endpoint {address}" in str(err)


def test_address_of_brackets_ipv6_hosts() -> None:
    sock = _wire.listen("127.0.0.1")
    try:
        port = sock.getsockname()[1]
        assert _wire.address_of(sock, "127.0.0.1") == f"127.0.0.1:{port}"
        assert _wire.address_of(sock, "::1") == f"[::1]:{port}"
    finally:
        sock.close()


def test_mmap_buffers_can_be_sent() -> None:
    """A read-only mapped buffer (as a stored shard is) goes out of band like any other."""
    data = np.arange(50_000, dtype=np.int64)

    async def scenario() -> Any:
        m = mmap.mmap(-1, data.nbytes)
        m[:] = data.tobytes()
        arr = np.frombuffer(m, dtype=np.int64)
        cli, srv = await _pair()
        try:
            _, got = await asyncio.gather(cli.send(arr), srv.recv())
            return got
        finally:
            cli.close()
            srv.close()
            del arr
            m.close()

    got = _run(scenario)
    assert np.array_equal(got, data)
