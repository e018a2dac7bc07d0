"""The audit log: every mutating ``DomainControl`` call, allowed or denied, in the master's store.

Entries live at ``/domainos/master/audit/<entry_id>``. An entry id is the *inverted* time in
microseconds (16 digits) plus a random suffix, so the store's ascending key order is newest
first: ``ReadAudit`` pages with a plain prefix range and ``start_after``, with no reverse scan
(the store interface has none). Retention is bounded (``audit_max_entries``): once the log holds
10% more than that, one background pass drops the oldest entries in batched transactions. That
pass walks the log once, so its cost is amortised over the tens of thousands of writes between
two passes; no single call ever pays O(entries).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from domainos.api.v1 import master_pb2
from domainos.clock import Clock
from domainos.errors import InvalidArgument, StoreError
from domainos.store import MAX_TXN_OPS, AsyncStore, Op, delete_op, put_op
from master_domain._auth import Role

log = logging.getLogger(__name__)

AUDIT_PREFIX = "/domainos/master/audit/"
DEFAULT_READ = 100
MAX_READ = 1000
_MAX_MICROS = 10**16 - 1  # inverted timestamps stay 16 digits until the year 2286
_ENTRY_ID_RE = re.compile(r"^[0-9]{16}-[0-9a-f]{8}$")
_MAX_MESSAGE = 500
_PRUNE_PAGE = 1000


def new_entry_id(t: float) -> str:
    """Sorts newest first (ascending key order = descending time)."""
    micros = min(max(int(t * 1_000_000), 0), _MAX_MICROS)
    return f"{_MAX_MICROS - micros:016d}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Who did what, when, and how it ended (``master.proto`` ``AuditEntry``)."""

    entry_id: str
    time: float
    #: ``token:<id>``, or ``cert:<role>/<id>`` when no token was presented, or ``anonymous``.
    principal: str
    tenant: str
    #: The token's role (``user``/``admin``/``job``); empty when the caller was not authenticated.
    role: str
    method: str
    target: str
    request_id: str
    #: gRPC status name: OK, PERMISSION_DENIED, ...
    code: str
    message: str
    peer: str
    #: The caller's TLS certificate identity (``client/<id>``); empty on an insecure master.
    cert: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "time": self.time,
            "principal": self.principal,
            "tenant": self.tenant,
            "role": self.role,
            "method": self.method,
            "target": self.target,
            "request_id": self.request_id,
            "code": self.code,
            "message": self.message,
            "peer": self.peer,
            "cert": self.cert,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        return cls(**{k: data.get(k, "") for k in cls.__slots__ if k != "time"}, time=float(data["time"]))

    def to_proto(self) -> master_pb2.AuditEntry:
        role = (
            Role(self.role).to_proto()
            if self.role in {r.value for r in Role}
            else master_pb2.ROLE_UNSPECIFIED
        )
        return master_pb2.AuditEntry(
            entry_id=self.entry_id,
            time=self.time,
            principal=self.principal,
            tenant=self.tenant,
            role=role,
            method=self.method,
            target=self.target,
            request_id=self.request_id,
            code=self.code,
            message=self.message,
            peer=self.peer,
            cert=self.cert,
        )


class AuditLog:
    """Writes entries (alone, or as an op inside the caller's transaction), reads, prunes."""

    def __init__(
        self,
        store: AsyncStore,
        clock: Clock,
        *,
        max_entries: int,
        spawn: Callable[[Coroutine[Any, Any, Any], str], Any] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.max_entries = max_entries
        #: Entries beyond ``max_entries`` tolerated before a pruning pass.
        self.slack = max(1, max_entries // 10)
        self._spawn = spawn
        self._count = 0
        self._pruning: asyncio.Task[Any] | None = None

    @property
    def count(self) -> int:
        """Entries in the store, as this master knows it (exact after :meth:`load` and a prune)."""
        return self._count

    async def load(self) -> None:
        self._count = await self._store.count(AUDIT_PREFIX)
        self._maybe_prune()

    def entry(
        self,
        *,
        principal: str,
        tenant: str,
        role: str,
        method: str,
        target: str,
        request_id: str,
        code: str,
        message: str,
        peer: str,
        cert: str = "",
    ) -> AuditEntry:
        now = self._clock.time()
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        return AuditEntry(
            entry_id=new_entry_id(now),
            time=now,
            principal=principal,
            tenant=tenant,
            role=role,
            method=method,
            target=target[:300],
            request_id=request_id[:128],
            code=code,
            message=message,
            peer=peer[:200],
            cert=cert,
        )

    def op(self, entry: AuditEntry) -> Op:
        """The put of ``entry``, for a transaction that also makes the change it records."""
        return put_op(AUDIT_PREFIX + entry.entry_id, json.dumps(entry.to_dict()).encode())

    def added(self, n: int = 1) -> None:
        """Say that ``n`` entries were written through :meth:`op`."""
        self._count += n
        self._maybe_prune()

    async def write(self, entry: AuditEntry) -> None:
        """Write one entry on its own (calls that were denied or changed nothing)."""
        await self._store.txn([], [self.op(entry)])
        self.added()

    def _maybe_prune(self) -> None:
        if self._count <= self.max_entries + self.slack or self._spawn is None:
            return
        if self._pruning is not None and not self._pruning.done():
            return
        self._pruning = self._spawn(self._prune_logged(), "audit-prune")

    async def _prune_logged(self) -> None:
        # Entries written while a pass runs are not seen by it, and _maybe_prune does not start a
        # second pass meanwhile: go round again until the log is back under its bound.
        while True:
            try:
                dropped = await self.prune()
            except StoreError as exc:
                log.warning("could not prune the audit log: %s; will try again later", exc)
                return
            if dropped:
                log.info("audit log pruned: dropped the %d oldest entries, %d kept", dropped, self._count)
            if self._count <= self.max_entries + self.slack:
                return

    async def prune(self) -> int:
        """Delete every entry past the newest ``max_entries``; returns how many were deleted."""
        kept = deleted = 0
        last: str | None = None
        while True:
            page = await self._store.range(AUDIT_PREFIX, limit=_PRUNE_PAGE, start_after=last)
            if not page:
                break
            doomed: list[str] = []
            for kv in page:
                if kept < self.max_entries:
                    kept += 1
                else:
                    doomed.append(kv.key)
            for i in range(0, len(doomed), MAX_TXN_OPS):
                await self._store.txn([], [delete_op(k) for k in doomed[i : i + MAX_TXN_OPS]])
            deleted += len(doomed)
            last = page[-1].key
            if len(page) < _PRUNE_PAGE:
                break
        self._count = await self._store.count(AUDIT_PREFIX)
        return deleted

    async def read(self, limit: int, page_token: str, since: float) -> tuple[list[AuditEntry], str]:
        """Newest first: up to ``limit`` entries older than ``page_token`` and not before ``since``."""
        if limit < 0:
            raise InvalidArgument(f"must not be negative, got {limit}", field="limit")
        limit = min(limit or DEFAULT_READ, MAX_READ)
        if page_token and not _ENTRY_ID_RE.match(page_token):
            raise InvalidArgument(
                "not a page token from ReadAudit (its next_page_token, or empty)", field="page_token"
            )
        if math.isnan(since) or since < 0:
            raise InvalidArgument(f"must be unix seconds (0 = any time), got {since}", field="since")
        rows = await self._store.range(
            AUDIT_PREFIX, limit=limit + 1, start_after=AUDIT_PREFIX + page_token if page_token else None
        )
        entries: list[AuditEntry] = []
        for kv in rows:
            entry = AuditEntry.from_dict(json.loads(kv.value))
            if since and entry.time < since:
                return entries, ""
            if len(entries) == limit:
                return entries, entries[-1].entry_id
            entries.append(entry)
        return entries, ""
