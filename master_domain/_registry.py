"""The sub-domain registry: who is known, who is connected now, and their last summary.

The registry lives in memory; the master persists a record to ``/domainos/master/subdomains/<id>``
only when a sub-domain connects, disconnects or its capacity changes -- never per summary.
Each connected sub-domain has one :class:`Session`: its stream's bounded outbound queue and the
requests (node lists, log chunks) waiting for its answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from domainos.clock import Clock
from domainos.errors import AlreadyExists, Unavailable
from domainos.ids import new_request_id
from master_domain._summary import Summary

log = logging.getLogger(__name__)

#: Commands queued for one sub-domain before its stream is dropped as too slow (it reconnects
#: and resyncs with a Hello, which is cheaper than unbounded memory).
OUTBOUND_QUEUE_LIMIT = 50_000


class Session:
    """One live ``SubDomainGateway.Connect`` stream."""

    def __init__(
        self,
        subdomain_id: str,
        incarnation: str,
        peer: str = "",
        *,
        queue_limit: int = OUTBOUND_QUEUE_LIMIT,
    ) -> None:
        self.subdomain_id = subdomain_id
        self.incarnation = incarnation
        self.peer = peer
        self._limit = queue_limit
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self.closed = False
        #: Why the stream ended from this side ("" = the peer ended it).
        self.close_reason = ""
        self.overflowed = False
        #: True when the sub-domain sent more messages than its rate limit allows.
        self.limited = False

    def send(self, command: Any) -> bool:
        """Queue a command without waiting; False when the session is closed or overflowed."""
        if self.closed:
            return False
        if self._queue.qsize() >= self._limit:
            self.overflowed = True
            self.close(
                f"outbound queue to sub-domain {self.subdomain_id} overflowed ({self._limit} commands)"
            )
            return False
        self._queue.put_nowait(command)
        return True

    async def next(self) -> Any | None:
        """The next command to write; None once the session is closed."""
        if self.closed:
            return None
        return await self._queue.get()

    def close(self, reason: str = "") -> None:
        """End the session: the writer stops and every waiting request fails."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._queue.put_nowait(None)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Unavailable(f"sub-domain {self.subdomain_id} disconnected"))
        self._waiting.clear()

    def request(self, make: Callable[[str], Any]) -> tuple[str, asyncio.Future[Any]]:
        """Send ``make(request_id)`` and return a future for the answer with that id."""
        rid = new_request_id()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        if not self.send(make(rid)):
            self._waiting.pop(rid, None)
            if not fut.done():
                fut.set_exception(Unavailable(f"sub-domain {self.subdomain_id} is not connected"))
        return rid, fut

    def forget(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (it timed out)."""
        self._waiting.pop(request_id, None)

    def resolve(self, request_id: str, answer: Any) -> bool:
        """Hand an answer to whoever waits for ``request_id``; False if nobody does."""
        fut = self._waiting.pop(request_id, None)
        if fut is None or fut.done():
            return False
        fut.set_result(answer)
        return True


@dataclass
class SubdomainRecord:
    """What the master knows about one sub-domain."""

    subdomain_id: str
    region: str = ""
    address: str = ""
    incarnation: str = ""
    max_nodes: int = 0
    summary: Summary = field(default_factory=Summary)
    connected: bool = False
    #: Wall-clock time of the last message (or of the disconnect).
    last_seen_at: float = 0.0
    #: Monotonic time it went away (None while connected).
    absent_since: float | None = None
    session: Session | None = None

    def to_dict(self) -> dict[str, Any]:
        """The store form (totals only: no shapes, no free space)."""
        return {
            "subdomain_id": self.subdomain_id,
            "region": self.region,
            "address": self.address,
            "incarnation": self.incarnation,
            "max_nodes": self.max_nodes,
            "connected": self.connected,
            "last_seen_at": self.last_seen_at,
            "summary": self.summary.totals_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubdomainRecord:
        return cls(
            subdomain_id=str(data["subdomain_id"]),
            region=str(data.get("region", "")),
            address=str(data.get("address", "")),
            incarnation=str(data.get("incarnation", "")),
            max_nodes=int(data.get("max_nodes", 0)),
            summary=Summary.from_totals(data.get("summary", {})),
            last_seen_at=float(data.get("last_seen_at", 0.0)),
        )


class Registry:
    """Every known sub-domain; at most one live session each."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._records: dict[str, SubdomainRecord] = {}

    def __iter__(self) -> Iterator[SubdomainRecord]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def get(self, subdomain_id: str) -> SubdomainRecord | None:
        return self._records.get(subdomain_id)

    def load(self, record: SubdomainRecord) -> None:
        """A record read from the store at start: known, not connected (absent since now)."""
        record.connected = False
        record.session = None
        record.absent_since = self._clock.monotonic()
        self._records[record.subdomain_id] = record

    def connect(
        self,
        session: Session,
        *,
        region: str,
        address: str,
        max_nodes: int,
        summary: Summary,
    ) -> SubdomainRecord:
        """Bind a new stream to its sub-domain; refuses a second live one."""
        sd = session.subdomain_id
        rec = self._records.get(sd)
        if rec is not None and rec.connected and rec.session is not None and not rec.session.closed:
            raise AlreadyExists(
                f"sub-domain {sd} is already connected (incarnation {rec.incarnation or '?'}"
                f"{', from ' + rec.session.peer if rec.session.peer else ''}); "
                "a second live connection with the same id is refused"
            )
        if rec is None:
            rec = SubdomainRecord(subdomain_id=sd)
            self._records[sd] = rec
        rec.region = region
        rec.address = address
        rec.incarnation = session.incarnation
        rec.max_nodes = max_nodes
        rec.summary = summary
        rec.connected = True
        rec.session = session
        rec.absent_since = None
        rec.last_seen_at = self._clock.time()
        return rec

    def disconnect(self, session: Session) -> SubdomainRecord | None:
        """The stream ended; returns the record if this session was the current one."""
        rec = self._records.get(session.subdomain_id)
        if rec is None or rec.session is not session:
            return None
        rec.connected = False
        rec.session = None
        rec.absent_since = self._clock.monotonic()
        rec.last_seen_at = self._clock.time()
        return rec

    def update_summary(self, subdomain_id: str, summary: Summary) -> bool:
        """Store a new summary; True when its capacity changed (worth persisting)."""
        rec = self._records.get(subdomain_id)
        if rec is None:
            return False
        changed = rec.summary.capacity_key() != summary.capacity_key()
        rec.summary = summary
        rec.last_seen_at = self._clock.time()
        return changed

    def touch(self, subdomain_id: str) -> None:
        rec = self._records.get(subdomain_id)
        if rec is not None:
            rec.last_seen_at = self._clock.time()

    def session(self, subdomain_id: str) -> Session | None:
        rec = self._records.get(subdomain_id)
        return rec.session if rec is not None and rec.connected else None

    def connected(self) -> list[SubdomainRecord]:
        return [r for r in self._records.values() if r.connected]

    def summaries(self) -> dict[str, Summary]:
        """Last summary of every known sub-domain (connected or not)."""
        return {sd: r.summary for sd, r in self._records.items()}
