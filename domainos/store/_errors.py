"""Store error classes.

Every error either backend raises is a subclass of
:class:`domainos.errors.StoreError`; each names the gRPC status code it maps
to, so callers can translate them uniformly.
"""

from __future__ import annotations

from domainos.errors import StoreError

__all__ = [
    "Compacted",
    "InvalidKey",
    "InvalidStoreArgument",
    "LeaseNotFound",
    "StoreClosed",
    "StoreError",
    "StoreUnavailable",
    "TxnTooLarge",
    "ValueTooLarge",
    "WatchOverflow",
]


class StoreUnavailable(StoreError):
    """The backend cannot be reached (or answered with a transport error)."""

    code = "UNAVAILABLE"
    exit_code = 3


class StoreClosed(StoreUnavailable):
    """The store was closed by this process; it will not come back."""


class InvalidStoreArgument(StoreError):
    """A request was malformed (bad type, negative limit, duplicate txn key...)."""

    code = "INVALID_ARGUMENT"
    exit_code = 2


class InvalidKey(InvalidStoreArgument):
    """A key was empty, not a ``str``, or not encodable as UTF-8."""


class TxnTooLarge(InvalidStoreArgument):
    """A transaction had more operations (or compares) than allowed."""


class ValueTooLarge(StoreError):
    """A value (or a whole request) exceeded the size limit."""

    code = "RESOURCE_EXHAUSTED"


class LeaseNotFound(StoreError):
    """The lease does not exist: it expired, was revoked or never existed."""

    code = "NOT_FOUND"


class Compacted(StoreError):
    """The requested revision is older than the retained history."""

    code = "OUT_OF_RANGE"

    def __init__(self, message: str, *, compact_revision: int = 0) -> None:
        super().__init__(message)
        #: The oldest revision still available (0 when unknown).
        self.compact_revision = compact_revision


class WatchOverflow(StoreError):
    """A watch consumer fell too far behind; it must re-list and re-watch."""

    code = "RESOURCE_EXHAUSTED"
