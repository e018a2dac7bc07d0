"""etcd v3 backend, on the ``etcd3`` client (python3-etcd3).

``etcd3.client`` provides the gRPC channel; requests are built from its
``etcdrpc`` messages and sent on its stubs directly, because the convenience
methods drop response headers (revisions) and its watcher cannot resume a
broken stream. Every gRPC error is translated in :meth:`EtcdStore._translate`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import etcd3
import grpc
from etcd3 import etcdrpc

from domainos.errors import ConfigError, StoreError
from domainos.store._base import (
    Compare,
    KeyValue,
    Lease,
    Op,
    Store,
    TxnResult,
    Watch,
    WatchCallback,
    WatchErrorCallback,
    WatchEvent,
)
from domainos.store._dispatch import EventDelivery
from domainos.store._errors import (
    Compacted,
    InvalidKey,
    InvalidStoreArgument,
    LeaseNotFound,
    StoreClosed,
    StoreUnavailable,
    TxnTooLarge,
    ValueTooLarge,
)
from domainos.store._validate import (
    EncodedCompare,
    EncodedOp,
    EncodedPut,
    check_lease_id,
    check_limit,
    check_request_size,
    check_revision,
    check_ttl,
    check_value,
    encode_key,
    encode_prefix,
    encode_txn,
    prefix_end,
    range_start,
)

__all__ = ["DEFAULT_PORT", "EtcdStore", "parse_endpoints"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 2379

#: Channel options: ranges of large values must come back whole, a
#: restarted etcd must be found again within seconds, not minutes, and a
#: member that hangs with its connection open (a watch would wait on it
#: forever) is found out by HTTP/2 pings while a call is open (etcd refuses
#: pings more often than every 5 s, and pings with no call open).
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
]

_COMPARE_RESULT = {"==": 0, ">": 1, "<": 2, "!=": 3}  # etcdrpc.Compare.CompareResult
_COMPARE_TARGET = {"version": 0, "create": 1, "mod": 2, "value": 3}  # CompareTarget
_EVENT_DELETE = 1  # mvccpb.Event.DELETE

#: Watch streams carry etcd's "require leader" metadata: a member that loses its leader (cut off
#: from the quorum) ends the stream with "no leader" instead of going silent, and the watch
#: resumes on another member.
_REQUIRE_LEADER = (("hasleader", "true"),)

#: A lease keep-alive never waits longer than this share of the lease's TTL: a call stuck on a
#: member that cannot answer (the etcd leader died with the request in flight, a hung member)
#: must fail in time for a retry on another member while the lease still holds.
_KEEPALIVE_TIMEOUT_SHARE = 1 / 3
_KEEPALIVE_TIMEOUT_MIN = 0.5

#: Error details of a live member's answer that passes by itself (etcd's rpctypes): the call may be
#: repeated, but there is no reason to leave the member.
_TRANSIENT_MEMBER_ANSWERS = (
    "etcdserver: leader changed",
    "etcdserver: request timed out",
    "etcdserver: too many requests",
)

#: A unary call still pending after this long asks its member whether it can still be answered
#: (see :meth:`EtcdStore._await`); that question waits at most :data:`_STALL_STATUS_TIMEOUT_S`.
_STALL_CHECK_S = 1.0
_STALL_STATUS_TIMEOUT_S = 1.0

#: grpc codes that mean "the cluster cannot be reached or cannot answer now".
_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, int]]:
    """Parse ``"h1:p1,h2:p2"`` (or a list of ``"host[:port]"``) to pairs.

    IPv6 hosts are written in brackets (``[::1]:2379``); the port defaults
    to 2379. Raises :class:`ConfigError` on malformed input.
    """
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[tuple[str, int]] = []
    for raw in items:
        item = raw.strip()
        if not item:
            raise ConfigError(f"empty etcd endpoint in {endpoints!r}", field="endpoints")
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or not host or (rest and not rest.startswith(":")):
                raise ConfigError(f"bad etcd endpoint {item!r}", field="endpoints")
            host = f"[{host}]"
            port_text = rest[1:] if rest else ""
        else:
            host, _, port_text = item.partition(":")
            if not host or ":" in port_text:
                raise ConfigError(f"bad etcd endpoint {item!r}: expected host[:port]", field="endpoints")
        if not port_text:
            port = DEFAULT_PORT
        elif port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise ConfigError(f"bad port {port_text!r} in etcd endpoint {item!r}", field="endpoints")
        out.append((host, port))
    if not out:
        raise ConfigError("no etcd endpoints given", field="endpoints")
    return out


@dataclass(slots=True)
class _Conn:
    """One connected endpoint: the etcd3 client and its stubs."""

    endpoint: str
    client: Any
    kv: Any
    lease: Any
    watch: Any
    maintenance: Any
    #: The highest raft term this member's answers carried (every response header has it): a
    #: higher one means the etcd cluster elected a leader since.
    term: int = 0


def _to_kv(kv: Any) -> KeyValue:
    return KeyValue(
        bytes(kv.key).decode("utf-8"),
        bytes(kv.value),
        int(kv.create_revision),
        int(kv.mod_revision),
        int(kv.version),
        int(kv.lease),
    )


def _range_key(start: bytes) -> bytes:
    # etcd rejects an empty key; b"\0" is below every non-empty key.
    return start or b"\x00"


def _range_end(end: bytes | None) -> bytes:
    # etcd reads range_end b"\0" as "every key >= key".
    return b"\x00" if end is None else end


def _compare_message(c: EncodedCompare) -> Any:
    msg = etcdrpc.Compare(key=c.key, result=_COMPARE_RESULT[c.op], target=_COMPARE_TARGET[c.target])
    if c.target == "value":
        msg.value = c.operand
    elif c.target == "version":
        msg.version = c.operand
    elif c.target == "mod":
        msg.mod_revision = c.operand
    else:
        msg.create_revision = c.operand
    return msg


def _op_message(op: EncodedOp) -> Any:
    if isinstance(op, EncodedPut):
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=op.key))


class _EtcdLease(Lease):
    def __init__(self, store: EtcdStore, lease_id: int, ttl: int, granted_at: float) -> None:
        super().__init__(lease_id, ttl)
        self._store = store
        # Local estimate of the expiry; etcd reports whole seconds only.
        self._deadline = granted_at + ttl

    def refresh(self) -> None:
        started = time.monotonic()
        self._store._refresh_lease(self.id, max(_KEEPALIVE_TIMEOUT_MIN, self.ttl * _KEEPALIVE_TIMEOUT_SHARE))
        self._deadline = started + self.ttl

    def revoke(self) -> None:
        self._store._revoke_lease(self.id)

    def remaining(self) -> float | None:
        seconds = self._store._lease_remaining(self.id)
        if seconds is None:
            return None
        # etcd truncates to whole seconds: the truth lies in [seconds, seconds + 1).
        estimate = self._deadline - time.monotonic()
        return min(max(estimate, float(seconds)), float(seconds + 1))


class _EtcdWatch:
    """One watch stream, resumed from the next revision when it breaks."""

    def __init__(
        self,
        store: EtcdStore,
        key: bytes,
        range_end: bytes,
        start_revision: int | None,
        delivery: EventDelivery,
    ) -> None:
        self._store = store
        self._key = key
        self._range_end = range_end
        self._next_rev = start_revision
        self._delivery = delivery
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._created = threading.Event()
        self._create_error: StoreError | None = None
        self._call: Any = None
        self._requests: queue.SimpleQueue[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="etcd-store-watch", daemon=True)

    def start(self, timeout: float) -> None:
        """Open the stream; return once etcd confirmed the watch."""
        self._thread.start()
        if not self._created.wait(timeout):
            self.stop()
            raise StoreUnavailable("etcd did not confirm the watch in time")
        if self._create_error is not None:
            self.stop()
            raise self._create_error

    def stop(self) -> None:
        """Close the stream; the thread exits soon after."""
        self._stopped.set()
        with self._lock:
            call, requests = self._call, self._requests
        if requests is not None:
            requests.put(None)
        if call is not None:
            call.cancel()

    def close(self, error: StoreError) -> None:
        """Stop the stream and end the watch with ``error``."""
        self.stop()
        self._delivery.fail(error)

    def _fail(self, error: StoreError) -> None:
        if not self._created.is_set():
            self._create_error = error
            self._created.set()
        else:
            self._delivery.fail(error)
        self._stopped.set()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopped.is_set():
            requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
            conn: _Conn | None = None
            try:
                conn = self._store._current()
                create = etcdrpc.WatchCreateRequest(
                    key=self._key,
                    range_end=self._range_end,
                    start_revision=self._next_rev or 0,
                    progress_notify=True,
                )
                requests.put(etcdrpc.WatchRequest(create_request=create))
                call = conn.watch.Watch(iter(requests.get, None), metadata=_REQUIRE_LEADER)
                with self._lock:
                    self._call, self._requests = call, requests
                if self._stopped.is_set():
                    call.cancel()
                    return
                for resp in call:
                    if not self._handle(resp):
                        return
                    backoff = 0.1
            except grpc.RpcError as exc:
                if self._stopped.is_set():
                    return
                error = self._store._translate(exc, "watch")
                if not isinstance(error, StoreUnavailable) or not self._created.is_set():
                    self._fail(error)
                    return
                # The member may be gone: the next try (of this watch and of every call) goes to
                # another one rather than waiting for something else to notice.
                if conn is not None and not self._store._member_answered(exc):
                    self._store._mark_stale(conn)
                logger.info("etcd watch on %r broke (%s); resuming", self._key, error)
            except StoreUnavailable as exc:
                if not self._created.is_set() or isinstance(exc, StoreClosed):
                    self._fail(exc)
                    return
                logger.info("etcd watch on %r cannot reconnect yet: %s", self._key, exc)
            except ValueError as exc:  # grpc: the channel was closed under us (reconnect)
                if self._stopped.is_set():
                    return
                logger.info("etcd watch on %r lost its channel (%s); resuming", self._key, exc)
            except Exception as exc:
                logger.exception("etcd watch on %r failed", self._key)
                self._fail(StoreError(f"etcd watch failed: {exc}"))
                return
            finally:
                requests.put(None)
            self._stopped.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _handle(self, resp: Any) -> bool:
        """Process one response; return False when the watch is over."""
        if resp.compact_revision:
            self._fail(
                Compacted(
                    f"revision {self._next_rev} is compacted; history starts at {resp.compact_revision}",
                    compact_revision=int(resp.compact_revision),
                )
            )
            return False
        if resp.canceled:
            self._fail(StoreError(f"etcd cancelled the watch: {resp.cancel_reason}"))
            return False
        if resp.created:
            if self._next_rev is None:
                self._next_rev = int(resp.header.revision) + 1
            self._created.set()
        if resp.events:
            events = [
                WatchEvent(
                    "delete" if ev.type == _EVENT_DELETE else "put",
                    bytes(ev.kv.key).decode("utf-8"),
                    b"" if ev.type == _EVENT_DELETE else bytes(ev.kv.value),
                    int(ev.kv.mod_revision),
                )
                for ev in resp.events
            ]
            self._delivery.push(events)
            self._next_rev = events[-1].revision + 1
        elif not resp.created and self._next_rev is not None:
            # Progress notification: nothing at or below header.revision is pending.
            self._next_rev = max(self._next_rev, int(resp.header.revision) + 1)
        return True


class EtcdStore(Store):
    """:class:`Store` on an etcd v3 cluster.

    ``endpoints`` is ``"host:port,host:port"`` or a list of ``"host:port"``;
    the first that answers is used, and after a transport error the next
    call tries them again in order. ``timeout`` bounds every request.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self._endpoints = parse_endpoints(endpoints)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._stale = False
        self._watches: set[_EtcdWatch] = set()
        #: Connections replaced by another member's, closed once calls in flight on them are over
        #: (a live member's answers are not cut off by the switch): (when to close, connection).
        self._retired: list[tuple[float, _Conn]] = []
        self._conn = self._connect()
        logger.debug("connected to etcd at %s", self._conn.endpoint)

    # -- plumbing ---------------------------------------------------------

    def _connect(self, after: str | None = None) -> _Conn:
        """Connect to the first endpoint that answers, starting with the one after ``after`` (the
        member just given up on, tried last): a cluster that lost a member is not asked to wait
        on that member again first."""
        errors: list[str] = []
        order = list(self._endpoints)
        labels = [f"{h}:{p}" for h, p in order]
        if after in labels:
            i = labels.index(after) + 1
            order = order[i:] + order[:i]
        for host, port in order:
            label = f"{host}:{port}"
            client = etcd3.client(host=host, port=port, timeout=self._timeout, grpc_options=_GRPC_OPTIONS)
            conn = _Conn(
                label,
                client,
                etcdrpc.KVStub(client.channel),
                etcdrpc.LeaseStub(client.channel),
                etcdrpc.WatchStub(client.channel),
                etcdrpc.MaintenanceStub(client.channel),
            )
            try:
                status = conn.maintenance.Status(etcdrpc.StatusRequest(), self._connect_timeout)
                conn.term = int(status.header.raft_term)
            except grpc.RpcError as exc:
                client.close()
                errors.append(f"{label}: {self._translate(exc, 'status')}")
                continue
            return conn
        raise StoreUnavailable(f"no etcd endpoint reachable ({'; '.join(errors)})")

    def _current(self) -> _Conn:
        """The connection to use, reconnecting after a transport failure."""
        with self._lock:
            if self._closed:
                raise StoreClosed("etcd store is closed")
            if self._stale:
                old = self._conn
                self._conn = self._connect(after=old.endpoint)
                self._stale = False
                if old is not self._conn:
                    self._retired.append((time.monotonic() + self._timeout + 1.0, old))
                    logger.info("etcd store now uses %s (was %s)", self._conn.endpoint, old.endpoint)
            while self._retired and self._retired[0][0] <= time.monotonic():
                # Watches still on it resume on the current member.
                self._retired.pop(0)[1].client.close()
            return self._conn

    def _translate(self, exc: grpc.RpcError, what: str) -> StoreError:
        """The one place gRPC errors become store errors."""
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
        message = f"etcd {what}: {details or code.name}"
        if code in _UNAVAILABLE_CODES:
            return StoreUnavailable(message)
        if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
            return LeaseNotFound(message)
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            return Compacted(message)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if "larger than max" in details:
                return ValueTooLarge(message)
            return StoreUnavailable(message)  # "too many requests": overloaded
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
            if "too large" in details:
                return ValueTooLarge(message)
            if "too many operations" in details:
                return TxnTooLarge(message)
            if "key is not provided" in details:
                return InvalidKey(message)
            return InvalidStoreArgument(message)
        return StoreError(message)

    @staticmethod
    def _member_answered(exc: grpc.RpcError) -> bool:
        """Whether the failure is an answer of a live member that will pass without moving to
        another (an election under way, its own request timeout, overload): no reason to switch."""
        details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
        return details.startswith(_TRANSIENT_MEMBER_ANSWERS)

    def _mark_stale(self, conn: _Conn) -> None:
        """``conn`` failed as if its member were gone: the next call reconnects (to another member
        first). A late failure of a connection already replaced changes nothing, so calls in flight
        on the new one are not cut off by a second switch."""
        if len(self._endpoints) < 2:
            return  # one endpoint: gRPC reconnects the channel by itself
        with self._lock:
            if conn is self._conn:
                self._stale = True

    def _call(
        self, what: str, fn: Callable[[_Conn], Any], *, idempotent: bool = False, budget: float | None = None
    ) -> Any:
        """Run ``fn`` on the current connection, translating errors.

        When the cluster has several members and the call failed as if its member were gone, the
        connection is marked stale (the next call goes to another member). An ``idempotent`` call
        (a read, a lease keep-alive) is then tried again -- at once on the new member, else with a
        short backoff while the cluster elects a leader -- for up to ``budget`` seconds (default:
        the store's timeout), so that losing a member costs its caller nothing. Writes are not
        repeated: whether the first one was applied is unknown, and the caller decides (request
        ids, compare-and-swap)."""
        conn = self._current()
        if not idempotent or len(self._endpoints) < 2:
            return self._call_on(what, fn, conn)
        deadline = time.monotonic() + (self._timeout if budget is None else budget)
        delay = 0.05
        moved = False
        while True:
            try:
                return self._call_on(what, fn, conn)
            except StoreClosed:
                raise
            except StoreUnavailable as exc:
                error = exc
            try:
                nxt = self._current()
            except StoreClosed:
                raise
            except StoreUnavailable as exc:  # no member answered the reconnection
                error, nxt = exc, conn
            if nxt is not conn and not moved:
                moved = True  # the first move to another member is always tried
            elif time.monotonic() + delay >= deadline:
                raise error
            else:
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                nxt = self._current()
            if nxt is not conn:
                logger.info("etcd %s failed on %s (%s); trying %s", what, conn.endpoint, error, nxt.endpoint)
            conn = nxt

    def _call_on(self, what: str, fn: Callable[[_Conn], Any], conn: _Conn) -> Any:
        term = conn.term  # before the request leaves: a later leader cannot have answered it
        try:
            result = fn(conn)
            if isinstance(result, grpc.Future):
                result = self._await(what, result, conn, term)
            header = getattr(result, "header", None)
            if header is not None and header.raft_term > conn.term:
                conn.term = int(header.raft_term)
            return result
        except grpc.RpcError as exc:
            if self._closed:
                raise StoreClosed("etcd store is closed") from exc
            error = self._translate(exc, what)
            if isinstance(error, StoreUnavailable) and not self._member_answered(exc):
                self._mark_stale(conn)
            raise error from exc
        except etcd3.exceptions.Etcd3Exception as exc:
            raise StoreUnavailable(f"etcd {what}: {exc}") from exc
        except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
            if self._closed:
                raise StoreClosed("etcd store is closed") from exc
            raise StoreUnavailable(f"etcd {what}: {exc}") from exc

    def _await(self, what: str, future: Any, conn: _Conn, term: int) -> Any:
        """The result of a unary call, given up early when it cannot come any more.

        A request a member forwarded to the etcd leader is lost with that leader, and etcd answers
        it only at its own request timeout (~5 s, or the client's deadline): writes in flight when
        the etcd leader dies -- and reads, which need the leader too -- would stall every caller
        that long (a sub-domain that stalls 4 s takes its nodes for dead). So a call still pending
        after :data:`_STALL_CHECK_S` asks its member how things are: a raft term above ``term`` (a
        leader was elected since the request left) or no answer at all ends the call now with
        :class:`StoreUnavailable`. As after any timeout, a write's outcome is then unknown.
        """
        while True:
            try:
                return future.result(timeout=_STALL_CHECK_S)
            except grpc.FutureTimeoutError:
                pass
            if self._closed:
                future.cancel()
                raise StoreClosed("etcd store is closed")
            why = self._stall_reason(conn, term)
            if why:
                future.cancel()
                raise StoreUnavailable(f"etcd {what}: {why}; gave up on the request (its outcome is unknown)")

    def _stall_reason(self, conn: _Conn, since: int) -> str:
        """Why a call sent to ``conn`` in raft term ``since`` and still pending cannot be answered
        any more ("" = keep waiting)."""
        try:
            status = conn.maintenance.Status(etcdrpc.StatusRequest(), _STALL_STATUS_TIMEOUT_S)
        except grpc.RpcError:
            if len(self._endpoints) < 2:
                return ""  # nowhere else to go: the call's own deadline decides
            self._mark_stale(conn)  # hung or gone: the next calls go to another member
            return f"member {conn.endpoint} does not answer"
        term = int(status.header.raft_term)
        conn.term = max(conn.term, term)
        if term > since:
            return f"the etcd cluster elected a leader (raft term {term}) while the request was pending"
        if not status.leader:
            return "the etcd cluster has no leader (an election is under way)"
        return ""

    # -- key-value --------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        """See :meth:`Store.get`."""
        req = etcdrpc.RangeRequest(key=encode_key(key))
        resp = self._call("get", lambda c: c.kv.Range.future(req, self._timeout), idempotent=True)
        return _to_kv(resp.kvs[0]) if resp.kvs else None

    def range(self, prefix: str, *, limit: int = 0, start_after: str | None = None) -> list[KeyValue]:
        """See :meth:`Store.range`."""
        p = encode_prefix(prefix)
        req = etcdrpc.RangeRequest(
            key=_range_key(range_start(p, start_after)),
            range_end=_range_end(prefix_end(p)),
            limit=check_limit(limit),
            sort_order=etcdrpc.RangeRequest.ASCEND,
            sort_target=etcdrpc.RangeRequest.KEY,
        )
        resp = self._call("range", lambda c: c.kv.Range.future(req, self._timeout), idempotent=True)
        return [_to_kv(kv) for kv in resp.kvs]

    def count(self, prefix: str) -> int:
        """See :meth:`Store.count`."""
        p = encode_prefix(prefix)
        req = etcdrpc.RangeRequest(key=_range_key(p), range_end=_range_end(prefix_end(p)), count_only=True)
        resp = self._call("count", lambda c: c.kv.Range.future(req, self._timeout), idempotent=True)
        return int(resp.count)

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """See :meth:`Store.put`."""
        k = encode_key(key)
        v = check_value(value)
        check_request_size(len(k) + len(v))
        req = etcdrpc.PutRequest(key=k, value=v, lease=check_lease_id(lease))
        resp = self._call("put", lambda c: c.kv.Put.future(req, self._timeout))
        return int(resp.header.revision)

    def delete(self, key: str) -> bool:
        """See :meth:`Store.delete`."""
        req = etcdrpc.DeleteRangeRequest(key=encode_key(key))
        resp = self._call("delete", lambda c: c.kv.DeleteRange.future(req, self._timeout))
        return int(resp.deleted) > 0

    def delete_prefix(self, prefix: str) -> int:
        """See :meth:`Store.delete_prefix`."""
        p = encode_prefix(prefix)
        req = etcdrpc.DeleteRangeRequest(key=_range_key(p), range_end=_range_end(prefix_end(p)))
        resp = self._call("delete_prefix", lambda c: c.kv.DeleteRange.future(req, self._timeout))
        return int(resp.deleted)

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """See :meth:`Store.txn`."""
        t = encode_txn(compares, success, failure)
        req = etcdrpc.TxnRequest(
            compare=[_compare_message(c) for c in t.compares],
            success=[_op_message(op) for op in t.success],
            failure=[_op_message(op) for op in t.failure],
        )
        resp = self._call("txn", lambda c: c.kv.Txn.future(req, self._timeout))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    def revision(self) -> int:
        """See :meth:`Store.revision`."""
        req = etcdrpc.RangeRequest(key=b"\x00", count_only=True)
        resp = self._call("revision", lambda c: c.kv.Range.future(req, self._timeout), idempotent=True)
        return int(resp.header.revision)

    def compact(self, revision: int) -> None:
        """See :meth:`Store.compact`."""
        req = etcdrpc.CompactionRequest(revision=check_revision(revision))
        self._call("compact", lambda c: c.kv.Compact.future(req, self._timeout))

    # -- leases -----------------------------------------------------------

    def grant_lease(self, ttl: int) -> Lease:
        """See :meth:`Store.grant_lease`."""
        req = etcdrpc.LeaseGrantRequest(TTL=check_ttl(ttl))
        started = time.monotonic()
        resp = self._call("grant_lease", lambda c: c.lease.LeaseGrant.future(req, self._timeout))
        if resp.error:
            raise StoreError(f"etcd grant_lease: {resp.error}")
        return _EtcdLease(self, int(resp.ID), int(resp.TTL), started)

    def _refresh_lease(self, lease_id: int, timeout: float | None = None) -> None:
        req = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
        wait = self._timeout if timeout is None else min(timeout, self._timeout)

        def keep_alive(c: _Conn) -> Any:
            for resp in c.lease.LeaseKeepAlive(iter([req]), wait):
                return resp
            return None

        # A keep-alive is safe to repeat: one that failed on a dead member is retried at once on
        # another (the lease's TTL is short; waiting for the caller's next round may be too late).
        resp = self._call("refresh_lease", keep_alive, idempotent=True, budget=wait)
        if resp is None or resp.TTL <= 0:
            raise LeaseNotFound(f"lease {lease_id} not found (expired or revoked)")

    def _revoke_lease(self, lease_id: int) -> None:
        req = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        with contextlib.suppress(LeaseNotFound):  # already gone: revoke is idempotent
            self._call(
                "revoke_lease", lambda c: c.lease.LeaseRevoke.future(req, self._timeout), idempotent=True
            )

    def _lease_remaining(self, lease_id: int) -> int | None:
        """Whole seconds left as etcd reports them; None when gone."""
        req = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = self._call(
            "lease_remaining", lambda c: c.lease.LeaseTimeToLive.future(req, self._timeout), idempotent=True
        )
        ttl = int(resp.TTL)
        return ttl if ttl >= 0 else None

    # -- watches ----------------------------------------------------------

    def watch_prefix(
        self,
        prefix: str,
        callback: WatchCallback,
        *,
        start_revision: int | None = None,
        on_error: WatchErrorCallback | None = None,
    ) -> Watch:
        """See :meth:`Store.watch_prefix`."""
        p = encode_prefix(prefix)
        key, end = _range_key(p), _range_end(prefix_end(p))
        if start_revision is not None:
            start_revision = check_revision(start_revision, "start_revision")
            self._check_not_compacted(key, end, start_revision)
        holder: list[_EtcdWatch] = []

        def on_cancel() -> None:
            for w in holder:
                w.stop()
                with self._lock:
                    self._watches.discard(w)

        delivery = EventDelivery(callback, on_error=on_error, on_cancel=on_cancel, name="etcd-store-watch-cb")
        watch = _EtcdWatch(self, key, end, start_revision, delivery)
        holder.append(watch)
        with self._lock:
            if self._closed:
                raise StoreClosed("etcd store is closed")
            self._watches.add(watch)
        try:
            watch.start(self._timeout)
        except StoreError:
            with self._lock:
                self._watches.discard(watch)
            raise
        delivery.start()
        return delivery

    def _check_not_compacted(self, key: bytes, end: bytes, revision: int) -> None:
        """Raise :class:`Compacted` now rather than from the stream later."""
        req = etcdrpc.RangeRequest(key=key, range_end=end, revision=revision, count_only=True)
        with contextlib.suppress(InvalidStoreArgument):  # a future revision: the watch waits
            self._call("watch", lambda c: c.kv.Range.future(req, self._timeout))

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """See :meth:`Store.close`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._watches)
            self._watches.clear()
            conn = self._conn
            retired = [c for _, c in self._retired]
            self._retired.clear()
        for watch in watches:
            watch.close(StoreClosed("etcd store closed"))
        for old in retired:
            old.client.close()
        conn.client.close()
        logger.debug("closed etcd store (%s)", conn.endpoint)

    def __repr__(self) -> str:
        endpoints = ",".join(f"{h}:{p}" for h, p in self._endpoints)
        return f"EtcdStore({endpoints!r})"
