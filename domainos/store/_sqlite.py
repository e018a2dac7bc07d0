"""Embedded SQLite backend (the default, like k3s's kine).

One connection per :class:`SQLiteStore`, guarded by a lock; writes run in
``BEGIN IMMEDIATE`` transactions so several processes can share one database
file (WAL mode). Every write transaction that changes something takes one new
revision and appends its changes to the ``events`` table, which is the watch
log: each process polls it (every 50 ms, or at once after a local write), so
watches see writes from every process. Every process with the file open also
runs a reaper that deletes the keys of expired leases.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from domainos.errors import StoreError
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
    InvalidStoreArgument,
    LeaseNotFound,
    StoreClosed,
    StoreUnavailable,
)
from domainos.store._validate import (
    EncodedCompare,
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

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

#: Watch poll period; local writes wake the poller at once.
POLL_INTERVAL = 0.05
#: Lease reaper period.
REAP_INTERVAL = 0.1
#: How often the watch log is trimmed.
COMPACT_INTERVAL = 5.0
#: Revisions fetched per poll round.
_POLL_BATCH_REVS = 1000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kv (
        key BLOB PRIMARY KEY,
        value BLOB NOT NULL,
        create_rev INTEGER NOT NULL,
        mod_rev INTEGER NOT NULL,
        version INTEGER NOT NULL,
        lease INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease) WHERE lease != 0",
    """CREATE TABLE IF NOT EXISTS meta (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    """INSERT OR IGNORE INTO meta(name, value)
       VALUES ('revision', 1), ('compact_revision', 0), ('schema_version', 1)""",
    """CREATE TABLE IF NOT EXISTS leases (
        id INTEGER PRIMARY KEY,
        ttl INTEGER NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases(expires_at)",
    """CREATE TABLE IF NOT EXISTS events (
        rev INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (rev, seq)
    ) WITHOUT ROWID""",
)

_KV_COLUMNS = "key, value, create_rev, mod_rev, version, lease"

_Row = tuple[bytes, bytes, int, int, int, int]
_EventRow = tuple[int, int, str, bytes, bytes]


def _to_kv(row: _Row) -> KeyValue:
    key, value, create_rev, mod_rev, version, lease = row
    return KeyValue(key.decode("utf-8"), bytes(value), create_rev, mod_rev, version, lease)


def _to_event(row: _EventRow) -> WatchEvent:
    rev, _seq, kind, key, value = row
    event_type: Literal["put", "delete"] = "put" if kind == "put" else "delete"
    return WatchEvent(event_type, key.decode("utf-8"), bytes(value), rev)


def _in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    return key >= start and (end is None or key < end)


def _compare_holds(row: tuple[bytes, int, int, int] | None, c: EncodedCompare) -> bool:
    """Evaluate one compare with etcd's semantics."""
    if row is None:
        if c.target == "value":
            return False  # etcd: value compares on a missing key always fail
        actual: bytes | int = 0
    else:
        value, version, mod_rev, create_rev = row
        if c.target == "value":
            actual = bytes(value)
        elif c.target == "version":
            actual = version
        elif c.target == "mod":
            actual = mod_rev
        else:
            actual = create_rev
    operand = c.operand
    if isinstance(actual, bytes) != isinstance(operand, bytes):
        return False
    if c.op == "==":
        return actual == operand
    if c.op == "!=":
        return actual != operand
    if c.op == ">":
        return actual > operand  # type: ignore[operator]
    return actual < operand  # type: ignore[operator]


class _Writer:
    """Applies changes inside one write transaction, at one new revision."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.now = time.time()
        self.revision = _meta(conn, "revision")
        self._new_rev = self.revision + 1
        self._seq = 0
        self.changed = False

    def _event(self, kind: str, key: bytes, value: bytes) -> None:
        self._conn.execute(
            "INSERT INTO events(rev, seq, type, key, value) VALUES (?, ?, ?, ?, ?)",
            (self._new_rev, self._seq, kind, key, value),
        )
        self._seq += 1
        self.changed = True

    def check_lease(self, lease: int) -> None:
        if lease == 0:
            return
        row = self._conn.execute("SELECT expires_at FROM leases WHERE id = ?", (lease,)).fetchone()
        if row is None or row[0] <= self.now:
            raise LeaseNotFound(f"lease {lease} not found", field="lease")

    def put(self, key: bytes, value: bytes, lease: int) -> None:
        self.check_lease(lease)
        row = self._conn.execute("SELECT create_rev, version FROM kv WHERE key = ?", (key,)).fetchone()
        create_rev, version = (self._new_rev, 1) if row is None else (row[0], row[1] + 1)
        self._conn.execute(
            "INSERT OR REPLACE INTO kv(key, value, create_rev, mod_rev, version, lease)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, value, create_rev, self._new_rev, version, lease),
        )
        self._event("put", key, value)

    def delete_keys(self, keys: Sequence[bytes]) -> int:
        for key in keys:
            self._conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._event("delete", key, b"")
        return len(keys)

    def delete(self, key: bytes) -> bool:
        found = self._conn.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone()
        return found is not None and self.delete_keys([key]) == 1

    def delete_range(self, start: bytes, end: bytes | None) -> int:
        if end is None:
            rows = self._conn.execute("SELECT key FROM kv WHERE key >= ? ORDER BY key", (start,)).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (start, end),
            ).fetchall()
        return self.delete_keys([bytes(r[0]) for r in rows])

    def revoke(self, lease_ids: Sequence[int]) -> None:
        for lease_id in lease_ids:
            rows = self._conn.execute(
                "SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease_id,)
            ).fetchall()
            self.delete_keys([bytes(r[0]) for r in rows])
            self._conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def finish(self) -> int:
        """Record the new revision if anything changed; return the revision."""
        if not self.changed:
            return self.revision
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (self._new_rev,))
        return self._new_rev


def _meta(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return int(row[0])


@dataclass(slots=True)
class _Watcher:
    start: bytes
    end: bytes | None
    min_rev: int
    delivery: EventDelivery


class _SQLiteLease(Lease):
    def __init__(self, store: SQLiteStore, lease_id: int, ttl: int) -> None:
        super().__init__(lease_id, ttl)
        self._store = store

    def refresh(self) -> None:
        self._store._refresh_lease(self.id)

    def revoke(self) -> None:
        self._store._revoke_lease(self.id)

    def remaining(self) -> float | None:
        return self._store._lease_remaining(self.id)


class SQLiteStore(Store):
    """:class:`Store` on a SQLite file (or ``":memory:"``).

    ``history`` is how many watch-log events are kept for ``start_revision``
    replays (trimmed every ``compact_interval`` seconds); ``busy_timeout`` is
    how long a write waits for another process's write lock before raising
    :class:`StoreUnavailable`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history: int = 10_000,
        busy_timeout: float = 5.0,
        compact_interval: float = COMPACT_INTERVAL,
    ) -> None:
        self.path = os.fspath(path)
        self._history = max(1, history)
        self._compact_interval = compact_interval
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout,
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            raise
        # Watch plumbing: the poller fans events out to registered watchers.
        self._wake = threading.Condition()
        self._write_seq = 0
        self._stop = threading.Event()
        self._watch_lock = threading.Lock()
        self._watchers: dict[int, _Watcher] = {}
        self._next_watch_id = 0
        self._dispatched = self.revision()
        self._poller = threading.Thread(
            target=self._poll_loop, name=f"sqlite-store-watch:{self.path}", daemon=True
        )
        self._reaper = threading.Thread(
            target=self._reap_loop, name=f"sqlite-store-reaper:{self.path}", daemon=True
        )
        self._poller.start()
        self._reaper.start()
        logger.debug("opened SQLite store %s", self.path)

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """The one place SQLite errors become :class:`StoreUnavailable`."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc

    def _init_schema(self) -> None:
        with self._translate():
            if self.path != ":memory:" and not self.path.startswith("file::memory:"):
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"SQLite store {self.path!r} is closed")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot."""
        with self._lock:
            self._check_open()
            with self._translate():
                self._conn.execute("BEGIN")
                try:
                    yield self._conn
                finally:
                    self._conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[_Writer]:
        """One write transaction; commits on success, rolls back on error."""
        with self._lock:
            self._check_open()
            with self._translate():
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    writer = _Writer(self._conn)
                    yield writer
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
        if writer.changed:
            with self._wake:
                self._write_seq += 1
                self._wake.notify_all()

    # -- key-value --------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        """See :meth:`Store.get`."""
        k = encode_key(key)
        with self._read() as conn:
            row = conn.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key = ?", (k,)).fetchone()
        return None if row is None else _to_kv(row)

    def range(self, prefix: str, *, limit: int = 0, start_after: str | None = None) -> list[KeyValue]:
        """See :meth:`Store.range`."""
        p = encode_prefix(prefix)
        limit = check_limit(limit)
        start = range_start(p, start_after)
        end = prefix_end(p)
        sql = f"SELECT {_KV_COLUMNS} FROM kv WHERE key >= ?"
        params: list[bytes | int] = [start]
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
        sql += " ORDER BY key"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_to_kv(r) for r in rows]

    def count(self, prefix: str) -> int:
        """See :meth:`Store.count`."""
        p = encode_prefix(prefix)
        end = prefix_end(p)
        with self._read() as conn:
            if end is None:
                row = conn.execute("SELECT COUNT(*) FROM kv WHERE key >= ?", (p,)).fetchone()
            else:
                row = conn.execute("SELECT COUNT(*) FROM kv WHERE key >= ? AND key < ?", (p, end)).fetchone()
        return int(row[0])

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """See :meth:`Store.put`."""
        k = encode_key(key)
        v = check_value(value)
        lease = check_lease_id(lease)
        check_request_size(len(k) + len(v))
        with self._write() as w:
            w.put(k, v, lease)
            return w.finish()

    def delete(self, key: str) -> bool:
        """See :meth:`Store.delete`."""
        k = encode_key(key)
        with self._write() as w:
            deleted = w.delete(k)
            w.finish()
        return deleted

    def delete_prefix(self, prefix: str) -> int:
        """See :meth:`Store.delete_prefix`."""
        p = encode_prefix(prefix)
        with self._write() as w:
            n = w.delete_range(p, prefix_end(p))
            w.finish()
        return n

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """See :meth:`Store.txn`."""
        t = encode_txn(compares, success, failure)
        with self._write() as w:
            ok = True
            for c in t.compares:
                row = self._conn.execute(
                    "SELECT value, version, mod_rev, create_rev FROM kv WHERE key = ?",
                    (c.key,),
                ).fetchone()
                if not _compare_holds(row, c):
                    ok = False
                    break
            ops = t.success if ok else t.failure
            # Check every lease first so a bad one fails the whole txn.
            for op in ops:
                if isinstance(op, EncodedPut):
                    w.check_lease(op.lease)
            for op in ops:
                if isinstance(op, EncodedPut):
                    w.put(op.key, op.value, op.lease)
                else:
                    w.delete(op.key)
            return TxnResult(ok, w.finish())

    def revision(self) -> int:
        """See :meth:`Store.revision`."""
        with self._read() as conn:
            return _meta(conn, "revision")

    def compact(self, revision: int) -> None:
        """See :meth:`Store.compact`."""
        revision = check_revision(revision)
        with self._write() as w:
            if revision > w.revision:
                raise InvalidStoreArgument(
                    f"cannot compact to future revision {revision} (current {w.revision})",
                    field="revision",
                )
            current = _meta(self._conn, "compact_revision")
            if revision <= current:
                raise Compacted(
                    f"revision {revision} is already compacted (at {current})",
                    compact_revision=current,
                )
            self._compact_locked(revision)

    def _compact_locked(self, revision: int) -> None:
        self._conn.execute("DELETE FROM events WHERE rev < ?", (revision,))
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (revision,))

    # -- leases -----------------------------------------------------------

    def grant_lease(self, ttl: int) -> Lease:
        """See :meth:`Store.grant_lease`."""
        ttl = check_ttl(ttl)
        with self._write() as w:
            while True:
                lease_id = secrets.randbits(62) + 1
                taken = self._conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease_id,)).fetchone()
                if taken is None:
                    break
            self._conn.execute(
                "INSERT INTO leases(id, ttl, expires_at) VALUES (?, ?, ?)",
                (lease_id, ttl, w.now + ttl),
            )
        return _SQLiteLease(self, lease_id, ttl)

    def _refresh_lease(self, lease_id: int) -> None:
        with self._write() as w:
            cur = self._conn.execute(
                "UPDATE leases SET expires_at = ? + ttl WHERE id = ? AND expires_at > ?",
                (w.now, lease_id, w.now),
            )
            found = cur.rowcount > 0
        if not found:
            raise LeaseNotFound(f"lease {lease_id} not found (expired or revoked)")

    def _revoke_lease(self, lease_id: int) -> None:
        with self._write() as w:
            w.revoke([lease_id])
            w.finish()

    def _lease_remaining(self, lease_id: int) -> float | None:
        with self._read() as conn:
            row = conn.execute("SELECT expires_at FROM leases WHERE id = ?", (lease_id,)).fetchone()
        if row is None:
            return None
        left = float(row[0]) - time.time()
        return left if left > 0 else None

    def _reap_expired(self) -> int:
        """Revoke expired leases (one transaction); return how many."""
        now = time.time()
        with self._read() as conn:
            due = conn.execute("SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1", (now,)).fetchone()
        if due is None:
            return 0
        with self._write() as w:
            ids = [
                int(r[0])
                for r in self._conn.execute(
                    "SELECT id FROM leases WHERE expires_at <= ?", (w.now,)
                ).fetchall()
            ]
            w.revoke(ids)
            w.finish()
        if ids:
            logger.debug("revoked %s expired lease(s) in %s", len(ids), self.path)
        return len(ids)

    def _auto_compact(self) -> None:
        """Keep only the newest ``history`` events in the watch log."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT rev FROM events ORDER BY rev DESC, seq DESC LIMIT 1 OFFSET ?",
                (self._history - 1,),
            ).fetchone()
            current = _meta(conn, "compact_revision")
        if row is None or int(row[0]) <= current:
            return
        with self._write():
            if int(row[0]) > _meta(self._conn, "compact_revision"):
                self._compact_locked(int(row[0]))
                logger.debug("compacted watch log of %s to %s", self.path, row[0])

    def _reap_loop(self) -> None:
        last_compact = time.monotonic()
        while not self._stop.wait(REAP_INTERVAL):
            try:
                self._reap_expired()
                if time.monotonic() - last_compact >= self._compact_interval:
                    last_compact = time.monotonic()
                    self._auto_compact()
            except StoreClosed:
                return
            except StoreError as exc:
                logger.warning("lease reaper for %s: %s", self.path, exc)

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
        start = encode_prefix(prefix)
        end = prefix_end(start)
        if start_revision is not None:
            start_revision = check_revision(start_revision, "start_revision")
        with self._watch_lock:
            watch_id = self._next_watch_id
            self._next_watch_id += 1
            delivery = EventDelivery(
                callback,
                on_error=on_error,
                on_cancel=lambda: self._unregister(watch_id),
                name=f"sqlite-store-watch-{watch_id}",
            )
            with self._read() as conn:
                current = _meta(conn, "revision")
                compacted = _meta(conn, "compact_revision")
                if start_revision is not None and start_revision < compacted:
                    raise Compacted(
                        f"revision {start_revision} is compacted; history starts at {compacted}",
                        compact_revision=compacted,
                    )
                min_rev = current + 1 if start_revision is None else start_revision
                backlog: list[WatchEvent] = []
                if min_rev <= self._dispatched:
                    rows = conn.execute(
                        "SELECT rev, seq, type, key, value FROM events"
                        " WHERE rev >= ? AND rev <= ? ORDER BY rev, seq",
                        (min_rev, self._dispatched),
                    ).fetchall()
                    backlog = [_to_event(r) for r in rows if _in_range(bytes(r[3]), start, end)]
            delivery.push(backlog)
            self._watchers[watch_id] = _Watcher(start, end, min_rev, delivery)
        delivery.start()
        return delivery

    def _unregister(self, watch_id: int) -> None:
        with self._watch_lock:
            self._watchers.pop(watch_id, None)

    def _poll_loop(self) -> None:
        seen = 0
        while not self._stop.is_set():
            with self._wake:
                if self._write_seq == seen:
                    self._wake.wait(POLL_INTERVAL)
                seen = self._write_seq
            if self._stop.is_set():
                return
            try:
                self._dispatch_once()
            except StoreClosed:
                return
            except StoreError as exc:
                logger.warning("watch poller for %s: %s", self.path, exc)

    def _dispatch_once(self) -> None:
        """Fetch new events and hand them to matching watchers."""
        while True:
            with self._watch_lock:
                idle = not self._watchers
            after = self._dispatched
            with self._read() as conn:
                current = _meta(conn, "revision")
                if current <= after:
                    return
                upto = min(current, after + _POLL_BATCH_REVS)
                compacted = _meta(conn, "compact_revision")
                rows: list[_EventRow] = []
                if not idle and after + 1 >= compacted:
                    rows = conn.execute(
                        "SELECT rev, seq, type, key, value FROM events"
                        " WHERE rev > ? AND rev <= ? ORDER BY rev, seq",
                        (after, upto),
                    ).fetchall()
            with self._watch_lock:
                if idle and self._watchers:
                    continue  # a watcher registered meanwhile: fetch its events
                self._dispatched = upto
                watchers = list(self._watchers.values())
                if not idle and after + 1 < compacted:
                    # Events this process had not seen yet are gone.
                    self._dispatched = max(upto, compacted - 1)
                    self._watchers.clear()
                    self._fail_watchers(
                        watchers,
                        Compacted(
                            f"watch fell behind compaction at {compacted}",
                            compact_revision=compacted,
                        ),
                    )
                    continue
                events = [_to_event(r) for r in rows]
                for watcher in watchers:
                    watcher.delivery.push(
                        e
                        for e, r in zip(events, rows, strict=True)
                        if e.revision >= watcher.min_rev
                        and _in_range(bytes(r[3]), watcher.start, watcher.end)
                    )

    def _fail_watchers(self, watchers: list[_Watcher], error: StoreError) -> None:
        for watcher in watchers:
            watcher.delivery.fail(error)

    # -- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """See :meth:`Store.close`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        current = threading.current_thread()
        for thread in (self._poller, self._reaper):
            if thread is not current:
                thread.join(timeout=5)
        with self._watch_lock:
            watchers = list(self._watchers.values())
            self._watchers.clear()
        self._fail_watchers(watchers, StoreClosed(f"SQLite store {self.path!r} closed"))
        with self._lock:
            self._conn.close()
        logger.debug("closed SQLite store %s", self.path)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"
