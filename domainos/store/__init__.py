"""Key-value store abstraction with an embedded SQLite and an etcd backend.

See :class:`Store` for the interface, :func:`open_store` to get one,
:class:`Election` for leader election and :class:`AsyncStore` for asyncio.
"""

from domainos.errors import StoreError
from domainos.store._async import AsyncStore, AsyncWatch
from domainos.store._base import (
    MAX_LEASE_TTL,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
    Compare,
    DeleteOp,
    KeyValue,
    Lease,
    Op,
    PutOp,
    Store,
    TxnResult,
    Watch,
    WatchCallback,
    WatchErrorCallback,
    WatchEvent,
    absent,
    create_revision_equals,
    delete_op,
    exists,
    mod_revision_equals,
    put_op,
    value_equals,
    version_equals,
)
from domainos.store._election import ELECTION_PREFIX, Election
from domainos.store._errors import (
    Compacted,
    InvalidKey,
    InvalidStoreArgument,
    LeaseNotFound,
    StoreClosed,
    StoreUnavailable,
    TxnTooLarge,
    ValueTooLarge,
    WatchOverflow,
)
from domainos.store._etcd import EtcdStore
from domainos.store._open import ALLOWED_SCHEMES, open_store
from domainos.store._sqlite import SQLiteStore

__all__ = [
    "ALLOWED_SCHEMES",
    "ELECTION_PREFIX",
    "MAX_LEASE_TTL",
    "MAX_REQUEST_BYTES",
    "MAX_TXN_OPS",
    "MAX_VALUE_BYTES",
    "AsyncStore",
    "AsyncWatch",
    "Compacted",
    "Compare",
    "DeleteOp",
    "Election",
    "EtcdStore",
    "InvalidKey",
    "InvalidStoreArgument",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "Op",
    "PutOp",
    "SQLiteStore",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "TxnResult",
    "TxnTooLarge",
    "ValueTooLarge",
    "Watch",
    "WatchCallback",
    "WatchErrorCallback",
    "WatchEvent",
    "WatchOverflow",
    "absent",
    "create_revision_equals",
    "delete_op",
    "exists",
    "mod_revision_equals",
    "open_store",
    "put_op",
    "value_equals",
    "version_equals",
]
