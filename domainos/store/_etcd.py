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
from typing import Any, TypeVar

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
_T = TypeVar("_T")

#: Channel options: ranges of large values must come back whole, and a
#: restarted etcd must be found again within seconds, not minutes.
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_COMPARE_RESULT = {"==": 0, ">": 1, "<": 2, "!=": 3}  # etcdrpc.Compare.CompareResult
_COMPARE_TARGET = {"version": 0, "create": 1, "mod": 2, "value": 3}  # CompareTarget
_EVENT_DELETE = 1  # mvccpb.Event.DELETE

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
        self._store._refresh_lease(self.id)
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
            try:
                conn = self._store._current()
                create = etcdrpc.WatchCreateRequest(
                    key=self._key,
                    range_end=self._range_end,
                    start_revision=self._next_rev or 0,
                    progress_notify=True,
                )
                requests.put(etcdrpc.WatchRequest(create_request=create))
                call = conn.watch.Watch(iter(requests.get, None))
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
        self._conn = self._connect()
        logger.debug("connected to etcd at %s", self._conn.endpoint)

    # -- plumbing ---------------------------------------------------------

    def _connect(self) -> _Conn:
        errors: list[str] = []
        for host, port in self._endpoints:
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
                conn.maintenance.Status(etcdrpc.StatusRequest(), self._connect_timeout)
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
                self._conn = self._connect()
                self._stale = False
                if old is not self._conn:
                    old.client.close()
                    logger.info("etcd store now uses %s", self._conn.endpoint)
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

    def _call(self, what: str, fn: Callable[[_Conn], _T]) -> _T:
        conn = self._current()
        try:
            return fn(conn)
        except grpc.RpcError as exc:
            if self._closed:
                raise StoreClosed("etcd store is closed") from exc
            error = self._translate(exc, what)
            if isinstance(error, StoreUnavailable) and len(self._endpoints) > 1:
                with self._lock:
                    self._stale = True
            raise error from exc
        except etcd3.exceptions.Etcd3Exception as exc:
            raise StoreUnavailable(f"etcd {what}: {exc}") from exc
        except ValueError as exc:  # grpc: "Cannot invoke RPC on closed channel!"
            if self._closed:
                raise StoreClosed("etcd store is closed") from exc
            raise StoreUnavailable(f"etcd {what}: {exc}") from exc

    # -- key-value --------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        """See :meth:`Store.get`."""
        req = etcdrpc.RangeRequest(key=encode_key(key))
        resp = self._call("get", lambda c: c.kv.Range(req, self._timeout))
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
        resp = self._call("range", lambda c: c.kv.Range(req, self._timeout))
        return [_to_kv(kv) for kv in resp.kvs]

    def count(self, prefix: str) -> int:
        """See :meth:`Store.count`."""
        p = encode_prefix(prefix)
        req = etcdrpc.RangeRequest(key=_range_key(p), range_end=_range_end(prefix_end(p)), count_only=True)
        resp = self._call("count", lambda c: c.kv.Range(req, self._timeout))
        return int(resp.count)

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """See :meth:`Store.put`."""
        k = encode_key(key)
        v = check_value(value)
        check_request_size(len(k) + len(v))
        req = etcdrpc.PutRequest(key=k, value=v, lease=check_lease_id(lease))
        resp = self._call("put", lambda c: c.kv.Put(req, self._timeout))
        return int(resp.header.revision)

    def delete(self, key: str) -> bool:
        """See :meth:`Store.delete`."""
        req = etcdrpc.DeleteRangeRequest(key=encode_key(key))
        resp = self._call("delete", lambda c: c.kv.DeleteRange(req, self._timeout))
        return int(resp.deleted) > 0

    def delete_prefix(self, prefix: str) -> int:
        """See :meth:`Store.delete_prefix`."""
        p = encode_prefix(prefix)
        req = etcdrpc.DeleteRangeRequest(key=_range_key(p), range_end=_range_end(prefix_end(p)))
        resp = self._call("delete_prefix", lambda c: c.kv.DeleteRange(req, self._timeout))
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
        resp = self._call("txn", lambda c: c.kv.Txn(req, self._timeout))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    def revision(self) -> int:
        """See :meth:`Store.revision`."""
        req = etcdrpc.RangeRequest(key=b"\x00", count_only=True)
        resp = self._call("revision", lambda c: c.kv.Range(req, self._timeout))
        return int(resp.header.revision)

    def compact(self, revision: int) -> None:
        """See :meth:`Store.compact`."""
        req = etcdrpc.CompactionRequest(revision=check_revision(revision))
        self._call("compact", lambda c: c.kv.Compact(req, self._timeout))

    # -- leases -----------------------------------------------------------

    def grant_lease(self, ttl: int) -> Lease:
        """See :meth:`Store.grant_lease`."""
        req = etcdrpc.LeaseGrantRequest(TTL=check_ttl(ttl))
        started = time.monotonic()
        resp = self._call("grant_lease", lambda c: c.lease.LeaseGrant(req, self._timeout))
        if resp.error:
            raise StoreError(f"etcd grant_lease: {resp.error}")
        return _EtcdLease(self, int(resp.ID), int(resp.TTL), started)

    def _refresh_lease(self, lease_id: int) -> None:
        req = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)

        def keep_alive(c: _Conn) -> Any:
            for resp in c.lease.LeaseKeepAlive(iter([req]), self._timeout):
                return resp
            return None

        resp = self._call("refresh_lease", keep_alive)
        if resp is None or resp.TTL <= 0:
            raise LeaseNotFound(f"lease {lease_id} not found (expired or revoked)")

    def _revoke_lease(self, lease_id: int) -> None:
        req = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        with contextlib.suppress(LeaseNotFound):  # already gone: revoke is idempotent
            self._call("revoke_lease", lambda c: c.lease.LeaseRevoke(req, self._timeout))

    def _lease_remaining(self, lease_id: int) -> int | None:
        """Whole seconds left as etcd reports them; None when gone."""
        req = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        resp = self._call("lease_remaining", lambda c: c.lease.LeaseTimeToLive(req, self._timeout))
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
            self._call("watch", lambda c: c.kv.Range(req, self._timeout))

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
        for watch in watches:
            watch.close(StoreClosed("etcd store closed"))
        conn.client.close()
        logger.debug("closed etcd store (%s)", conn.endpoint)

    def __repr__(self) -> str:
        endpoints = ",".join(f"{h}:{p}" for h, p in self._endpoints)
        return f"EtcdStore({endpoints!r})"
