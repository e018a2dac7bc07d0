"""The key-value store interface shared by every backend.

Keys are ``str`` (stored as UTF-8 and ordered by their UTF-8 bytes, like
etcd), values are ``bytes``. Every write transaction that changes something
gets exactly one new store *revision*; revisions strictly increase.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, TypeAlias

from domainos.errors import StoreError

__all__ = [
    "MAX_LEASE_TTL",
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "MAX_VALUE_BYTES",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteOp",
    "KeyValue",
    "Lease",
    "Op",
    "PutOp",
    "Store",
    "TxnResult",
    "Watch",
    "WatchCallback",
    "WatchErrorCallback",
    "WatchEvent",
    "absent",
    "create_revision_equals",
    "delete_op",
    "exists",
    "mod_revision_equals",
    "put_op",
    "value_equals",
    "version_equals",
]

logger = logging.getLogger(__name__)

#: Largest value either backend accepts (etcd's default request limit).
MAX_VALUE_BYTES = 1_572_864
#: Largest number of compares, or of operations per branch, in one txn
#: (etcd's default ``--max-txn-ops``).
MAX_TXN_OPS = 128
#: Largest total of key and value bytes in one request (a txn counts all
#: compares and both branches). etcd servers must run with
#: ``--max-request-bytes`` somewhat above this (e.g. 3 MiB).
MAX_REQUEST_BYTES = 2 * 1024 * 1024
#: Longest lease etcd grants.
MAX_LEASE_TTL = 9_000_000_000


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key with its value and metadata (etcd's ``mvccpb.KeyValue``)."""

    key: str
    value: bytes
    #: Revision of the write that created the key (since its last deletion).
    create_revision: int
    #: Revision of the last write to the key.
    mod_revision: int
    #: Number of writes since creation (1 after the first put).
    version: int
    #: Lease the key is attached to; 0 for none.
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to one key, as delivered to watchers."""

    type: Literal["put", "delete"]
    key: str
    #: The new value; ``b""`` for deletes.
    value: bytes
    #: Revision of the write that produced the event.
    revision: int


CompareTarget: TypeAlias = Literal["value", "version", "mod", "create"]
CompareOp: TypeAlias = Literal["==", "!=", ">", "<"]


@dataclass(frozen=True, slots=True)
class Compare:
    """A txn guard: ``<target of key> <op> <operand>``.

    Semantics follow etcd: a missing key has version, mod and create
    revision 0, and *every* value compare against a missing key is false.
    Build these with :func:`value_equals`, :func:`version_equals`,
    :func:`mod_revision_equals`, :func:`absent` and :func:`exists`.
    """

    key: str
    target: CompareTarget
    op: CompareOp
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class PutOp:
    """Txn operation: put ``value`` at ``key`` (attached to ``lease`` if not 0)."""

    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class DeleteOp:
    """Txn operation: delete ``key`` (no error if it is missing)."""

    key: str


Op: TypeAlias = PutOp | DeleteOp


def value_equals(key: str, value: bytes) -> Compare:
    """Compare that holds when ``key`` exists and its value is ``value``."""
    return Compare(key, "value", "==", value)


def version_equals(key: str, version: int) -> Compare:
    """Compare that holds when ``key``'s version is ``version`` (0 = absent)."""
    return Compare(key, "version", "==", version)


def mod_revision_equals(key: str, rev: int) -> Compare:
    """Compare that holds when ``key`` was last written at revision ``rev``."""
    return Compare(key, "mod", "==", rev)


def create_revision_equals(key: str, rev: int) -> Compare:
    """Compare that holds when ``key`` was created at revision ``rev``."""
    return Compare(key, "create", "==", rev)


def absent(key: str) -> Compare:
    """Compare that holds when ``key`` does not exist (version 0)."""
    return Compare(key, "version", "==", 0)


def exists(key: str) -> Compare:
    """Compare that holds when ``key`` exists (version > 0)."""
    return Compare(key, "version", ">", 0)


def put_op(key: str, value: bytes, lease: int = 0) -> PutOp:
    """Txn operation putting ``value`` at ``key``."""
    return PutOp(key, value, lease)


def delete_op(key: str) -> DeleteOp:
    """Txn operation deleting ``key``."""
    return DeleteOp(key)


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Outcome of :meth:`Store.txn`."""

    #: True when every compare held and the success branch ran.
    succeeded: bool
    #: Store revision after the txn (unchanged if it wrote nothing).
    revision: int


WatchCallback: TypeAlias = Callable[[WatchEvent], None]
WatchErrorCallback: TypeAlias = Callable[[StoreError], None]


class Lease(abc.ABC):
    """A time-to-live grant; keys put with it vanish when it ends."""

    def __init__(self, lease_id: int, ttl: int) -> None:
        #: Lease id, as passed to ``put(..., lease=...)``.
        self.id = lease_id
        #: Granted time to live in seconds.
        self.ttl = ttl

    @abc.abstractmethod
    def refresh(self) -> None:
        """Reset the time to live to :attr:`ttl`.

        Raises :class:`~domainos.store.LeaseNotFound` when the lease already
        expired or was revoked.
        """

    @abc.abstractmethod
    def revoke(self) -> None:
        """End the lease now, deleting its keys. Idempotent."""

    @abc.abstractmethod
    def remaining(self) -> float | None:
        """Seconds left before expiry, or None when expired or unknown."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id}, ttl={self.ttl})"


class Watch(abc.ABC):
    """Handle of a running watch."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop delivery. Idempotent.

        Once it returns no further callback starts (unless called from the
        watch's own callback, where the current call simply finishes).
        """


class Store(abc.ABC):
    """A thread-safe, revisioned key-value store (etcd's data model)."""

    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        """Return ``key``'s entry, or None when it does not exist."""

    @abc.abstractmethod
    def range(self, prefix: str, *, limit: int = 0, start_after: str | None = None) -> list[KeyValue]:
        """Return entries whose key starts with ``prefix``, sorted by key.

        ``limit`` 0 means all; ``start_after`` skips keys up to and including
        it (pass the last key of the previous page to paginate).
        """

    @abc.abstractmethod
    def count(self, prefix: str) -> int:
        """Return how many keys start with ``prefix``."""

    @abc.abstractmethod
    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write ``value`` at ``key`` and return the new store revision."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; return how many."""

    @abc.abstractmethod
    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomically run ``success`` if all ``compares`` hold, else ``failure``."""

    @abc.abstractmethod
    def grant_lease(self, ttl: int) -> Lease:
        """Grant a lease of ``ttl`` seconds (an int >= 1)."""

    @abc.abstractmethod
    def watch_prefix(
        self,
        prefix: str,
        callback: WatchCallback,
        *,
        start_revision: int | None = None,
        on_error: WatchErrorCallback | None = None,
    ) -> Watch:
        """Call ``callback`` for every change under ``prefix``, in revision order.

        Callbacks run on a background thread. Without ``start_revision`` the
        watch sees every write after this call returns; with it, history
        from that revision is replayed first (raises
        :class:`~domainos.store.Compacted` when it is no longer retained).
        ``on_error`` is called once if the watch ends on its own (history
        compacted while reconnecting, store closed); the watch is then dead.
        """

    @abc.abstractmethod
    def revision(self) -> int:
        """Return the current store revision."""

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Discard watch history older than ``revision``.

        Watches may then start at ``revision`` or later. Raises
        :class:`~domainos.store.Compacted` if history is already compacted at
        or past ``revision`` and :class:`~domainos.store.InvalidStoreArgument`
        for a revision that does not exist yet (etcd's behaviour).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources and stop background threads. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
