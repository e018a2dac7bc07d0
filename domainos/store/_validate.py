"""Argument checks and encodings shared by both backends.

Both backends call these before touching their storage, so limits and error
types are identical whichever backend runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from domainos.store._base import (
    MAX_LEASE_TTL,
    MAX_REQUEST_BYTES,
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteOp,
    Op,
    PutOp,
)
from domainos.store._errors import (
    InvalidKey,
    InvalidStoreArgument,
    TxnTooLarge,
    ValueTooLarge,
)

_TARGETS: frozenset[str] = frozenset({"value", "version", "mod", "create"})
_OPS: frozenset[str] = frozenset({"==", "!=", ">", "<"})


@dataclass(frozen=True, slots=True)
class EncodedCompare:
    """A checked :class:`Compare` with its key as UTF-8 bytes."""

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: bytes | int


@dataclass(frozen=True, slots=True)
class EncodedPut:
    """A checked :class:`PutOp`."""

    key: bytes
    value: bytes
    lease: int


@dataclass(frozen=True, slots=True)
class EncodedDelete:
    """A checked :class:`DeleteOp`."""

    key: bytes


EncodedOp = EncodedPut | EncodedDelete


@dataclass(frozen=True, slots=True)
class EncodedTxn:
    """A checked transaction."""

    compares: list[EncodedCompare]
    success: list[EncodedOp]
    failure: list[EncodedOp]


def encode_key(key: object) -> bytes:
    """Return ``key`` as UTF-8; raise :class:`InvalidKey` if unusable."""
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a str, not {type(key).__name__}", field="key")
    if not key:
        raise InvalidKey("key must not be empty", field="key")
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"key is not valid UTF-8: {exc}", field="key") from exc


def encode_prefix(prefix: object) -> bytes:
    """Return ``prefix`` (may be empty) as UTF-8."""
    if not isinstance(prefix, str):
        raise InvalidKey(f"prefix must be a str, not {type(prefix).__name__}", field="prefix")
    try:
        return prefix.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"prefix is not valid UTF-8: {exc}", field="prefix") from exc


def check_value(value: object) -> bytes:
    """Return ``value`` as ``bytes``; enforce :data:`MAX_VALUE_BYTES`."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, bytearray | memoryview):
        data = bytes(value)
    else:
        raise InvalidStoreArgument(f"value must be bytes, not {type(value).__name__}", field="value")
    if len(data) > MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"value is {len(data)} bytes; the limit is {MAX_VALUE_BYTES}",
            field="value",
        )
    return data


def check_int(value: object, field: str, *, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int (not bool) in range, else raise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidStoreArgument(f"must be an int, not {type(value).__name__}", field=field)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InvalidStoreArgument(f"must be {bound}, got {value}", field=field)
    return value


def check_lease_id(lease: object) -> int:
    """Return a lease id (0 = none)."""
    return check_int(lease, "lease", minimum=0)


def check_ttl(ttl: object) -> int:
    """Return a lease TTL in seconds."""
    return check_int(ttl, "ttl", minimum=1, maximum=MAX_LEASE_TTL)


def check_limit(limit: object) -> int:
    """Return a range limit (0 = no limit)."""
    return check_int(limit, "limit", minimum=0)


def check_revision(revision: object, field: str = "revision") -> int:
    """Return a revision (>= 1)."""
    return check_int(revision, field, minimum=1)


def check_request_size(size: int) -> None:
    """Enforce :data:`MAX_REQUEST_BYTES` on a whole request."""
    if size > MAX_REQUEST_BYTES:
        raise ValueTooLarge(
            f"request carries {size} bytes of keys and values; the limit is {MAX_REQUEST_BYTES}"
        )


def prefix_end(prefix: bytes) -> bytes | None:
    """Smallest key greater than every key starting with ``prefix``.

    None means "no upper bound" (empty prefix, or all ``0xff`` bytes).
    """
    data = bytearray(prefix)
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        data.pop()
    return None


def range_start(prefix: bytes, start_after: str | None) -> bytes:
    """First key a paginated range over ``prefix`` may return."""
    if start_after is None:
        return prefix
    after = encode_prefix(start_after) + b"\x00"
    return max(prefix, after)


def _encode_compare(compare: object) -> EncodedCompare:
    if not isinstance(compare, Compare):
        raise InvalidStoreArgument(
            f"compares must be Compare objects, not {type(compare).__name__}",
            field="compares",
        )
    if compare.target not in _TARGETS or compare.op not in _OPS:
        raise InvalidStoreArgument(f"unsupported compare {compare.target!r} {compare.op!r}", field="compares")
    key = encode_key(compare.key)
    operand: bytes | int
    if compare.target == "value":
        operand = check_value(compare.operand)
    else:
        operand = check_int(compare.operand, "compares", minimum=0)
    return EncodedCompare(key, compare.target, compare.op, operand)


def _encode_ops(ops: Sequence[Op], field: str) -> list[EncodedOp]:
    if len(ops) > MAX_TXN_OPS:
        raise TxnTooLarge(f"{len(ops)} operations; the limit is {MAX_TXN_OPS}", field=field)
    out: list[EncodedOp] = []
    put_keys: set[bytes] = set()
    delete_keys: set[bytes] = set()
    for op in ops:
        if isinstance(op, PutOp):
            put = EncodedPut(encode_key(op.key), check_value(op.value), check_lease_id(op.lease))
            if put.key in put_keys or put.key in delete_keys:
                raise InvalidStoreArgument(f"duplicate key {op.key!r} in one txn branch", field=field)
            put_keys.add(put.key)
            out.append(put)
        elif isinstance(op, DeleteOp):
            delete = EncodedDelete(encode_key(op.key))
            if delete.key in put_keys:
                raise InvalidStoreArgument(f"duplicate key {op.key!r} in one txn branch", field=field)
            delete_keys.add(delete.key)
            out.append(delete)
        else:
            raise InvalidStoreArgument(f"ops must be PutOp or DeleteOp, not {type(op).__name__}", field=field)
    return out


def encode_txn(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> EncodedTxn:
    """Check a transaction against every limit and encode it."""
    if len(compares) > MAX_TXN_OPS:
        raise TxnTooLarge(f"{len(compares)} compares; the limit is {MAX_TXN_OPS}", field="compares")
    txn = EncodedTxn(
        [_encode_compare(c) for c in compares],
        _encode_ops(success, "success"),
        _encode_ops(failure, "failure"),
    )
    size = sum(len(c.key) + (len(c.operand) if isinstance(c.operand, bytes) else 0) for c in txn.compares)
    for op in (*txn.success, *txn.failure):
        size += len(op.key) + (len(op.value) if isinstance(op, EncodedPut) else 0)
    check_request_size(size)
    return txn
