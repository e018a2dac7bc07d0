"""Master high availability: one leader among the replicas, and every write fenced by its term.

Replicas of the master share one store (etcd; or one SQLite file on one machine) and campaign for
the key ``/domainos/election/master`` (:class:`domainos.store.Election`: a lease of
``leader_lease_s`` seconds, refreshed a few times a lease). The winner loads the state from the
store and serves; the others serve as *followers*: every call and every sub-domain stream they
get is refused with UNAVAILABLE and the leader's address (trailing metadata
:data:`LEADER_KEY`), so clients and sub-domains go there. When the leader dies its lease expires
and a follower takes over.

Fencing: a leader that lost its lease but has not noticed yet (a long GC pause, a partition from
the store) must not write. :class:`FencedStore` adds to every write the condition that the election
key still has the revision it had when this term began; a write that fails only because of that
raises :class:`NotLeader`, and the master steps down (its process exits, to be restarted as a
follower by whatever supervises it).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from domainos.errors import Unavailable
from domainos.rpc import LEADER_KEY as LEADER_KEY  # re-exported: the wire name lives in rpc
from domainos.store import (
    ELECTION_PREFIX,
    AsyncStore,
    Compare,
    Election,
    Op,
    Store,
    StoreError,
    TxnResult,
    delete_op,
    mod_revision_equals,
    put_op,
)

log = logging.getLogger(__name__)

#: The election every master replica takes part in.
ELECTION = "master"


class NotLeader(Unavailable):
    """This master does not lead (any more): the call must go to the leader."""

    reason = "not-leader"

    def __init__(self, message: str, *, leader: str = "") -> None:
        super().__init__(message)
        self.leader = leader


@dataclass(frozen=True, slots=True)
class Candidate:
    """Who campaigns: the master's id and the address clients should use."""

    id: str
    address: str

    def encode(self) -> str:
        return json.dumps({"id": self.id, "address": self.address}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> Candidate | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(str(data["id"]), str(data["address"]))
        except (ValueError, KeyError, TypeError):
            return cls(text, "")  # another version's plain id


class FencedStore(AsyncStore):
    """The master's store: reads as usual; every write is conditional on this master's term."""

    def __init__(self, store: Store, *, election_key: str = ELECTION_PREFIX + ELECTION) -> None:
        super().__init__(store)
        self._key = election_key
        self._revision: int | None = None
        #: Called (on the event loop) when a write found the term over.
        self.on_fenced: Callable[[], None] | None = None

    @property
    def armed(self) -> bool:
        return self._revision is not None

    def arm(self, revision: int) -> None:
        """Writes from now on require the election key at ``revision`` (this term's)."""
        self._revision = revision

    def disarm(self) -> None:
        self._revision = None

    def _fence(self) -> Compare:
        if self._revision is None:
            raise NotLeader("this master does not lead: it may not write")
        return mod_revision_equals(self._key, self._revision)

    async def _still_ours(self) -> bool:
        kv = await self.get(self._key)
        return kv is not None and kv.mod_revision == self._revision

    def _lost(self) -> NotLeader:
        self.disarm()
        if self.on_fenced is not None:
            self.on_fenced()
        return NotLeader("this master's leadership ended; its write was refused (fenced)")

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        result = await super().txn([self._fence()], [put_op(key, value, lease)])
        if not result.succeeded:
            raise self._lost()
        return result.revision

    async def delete(self, key: str) -> bool:
        existed = await self.get(key) is not None
        result = await super().txn([self._fence()], [delete_op(key)])
        if not result.succeeded:
            raise self._lost()
        return existed

    async def delete_prefix(self, prefix: str) -> int:
        raise NotImplementedError("the master never deletes by prefix (it could not be fenced)")

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        result = await super().txn([*compares, self._fence()], success)
        if result.succeeded:
            return result
        if not await self._still_ours():
            raise self._lost()
        if failure:  # the caller's own compare failed: its failure branch, fenced too
            done = await super().txn([self._fence()], failure)
            if not done.succeeded:
                raise self._lost()
            return TxnResult(False, done.revision)
        return result


class Leadership:
    """A background campaign for the master's seat (threads: :class:`Election` blocks)."""

    def __init__(
        self,
        store: Store,
        candidate: Candidate,
        *,
        ttl: int,
        on_won: Callable[[int], object],
        on_lost: Callable[[str], object],
    ) -> None:
        self.candidate = candidate
        self._store = store
        self._on_won = on_won
        self._on_lost = on_lost
        self._election = Election(store, ELECTION, candidate.encode(), ttl=ttl, on_lost=self._lost)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.won = threading.Event()

    @property
    def ttl(self) -> int:
        return self._election.ttl

    def start(self) -> None:
        self._thread = threading.Thread(target=self._campaign, name="master-campaign", daemon=True)
        self._thread.start()

    def _campaign(self) -> None:
        while not self._stop.is_set():
            try:
                if self._election.campaign(timeout=1.0):
                    revision = self._election.term_revision
                    assert revision is not None
                    self.won.set()
                    self._on_won(revision)
                    return
            except StoreError as exc:
                log.warning("campaign for the master's seat failed (store): %s; retrying", exc)
                self._stop.wait(1.0)

    def _lost(self) -> None:
        self._on_lost("the leader lease could not be kept")

    def leader(self) -> Candidate | None:
        """The current leader as the store says (None when there is none)."""
        try:
            return Candidate.decode(self._election.leader())
        except StoreError:
            return None

    def stop(self) -> None:
        """Stop campaigning; give the seat back if held (a clean shutdown hands over at once)."""
        self._stop.set()
        try:
            self._election.resign()
        except StoreError as exc:
            log.warning("could not resign the master's seat: %s", exc)


def leader_metadata(leader: Candidate | None) -> tuple[tuple[str, Any], ...]:
    """Trailing metadata of a follower's refusal."""
    return ((LEADER_KEY, leader.address),) if leader is not None and leader.address else ()
