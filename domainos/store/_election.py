"""Leader election on top of any :class:`Store` (txn + lease + watch).

The leader owns the key ``/domainos/election/<name>``, whose value is its
candidate id and which is attached to the leader's lease. Candidates create
it with ``txn(absent(key) -> put(key, id, lease))``; losers watch the key and
try again when it is deleted. The leader refreshes its lease every ``ttl/3``
seconds and gives up leadership (calling ``on_lost``) as soon as the lease
cannot be refreshed, expires, or the key is deleted or overwritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from domainos.errors import StoreError
from domainos.store._base import (
    Lease,
    Store,
    Watch,
    WatchEvent,
    absent,
    delete_op,
    mod_revision_equals,
    put_op,
)
from domainos.store._errors import Compacted, InvalidStoreArgument, LeaseNotFound

__all__ = ["ELECTION_PREFIX", "Election"]

logger = logging.getLogger(__name__)

#: Every election key lives under this prefix.
ELECTION_PREFIX = "/domainos/election/"
#: Losers re-check the key at least this often, in case a watch event is late.
_RECHECK_INTERVAL = 1.0
#: A leader whose keep-alive failed tries again after this long (or its interval, if shorter).
_RETRY_AFTER_FAILURE = 0.2


@dataclass(eq=False)
class _Term:
    """One period of leadership."""

    lease: Lease
    revision: int
    valid_until: float
    stop: threading.Event = field(default_factory=threading.Event)
    watch: Watch | None = None


class Election:
    """Campaign for, hold and give up leadership of ``name``.

    ``on_lost`` is called (from a background thread) when leadership ends
    without :meth:`resign`: the lease could not be refreshed for ``ttl``
    seconds, it expired or was revoked, or the key was deleted or replaced.
    One :class:`Election` object runs one campaign at a time.
    """

    def __init__(
        self,
        store: Store,
        name: str,
        candidate_id: str,
        ttl: int = 5,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidStoreArgument("election name must be a non-empty str", field="name")
        if not isinstance(candidate_id, str) or not candidate_id:
            raise InvalidStoreArgument("candidate id must be a non-empty str", field="candidate_id")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            raise InvalidStoreArgument(f"ttl must be an int >= 1, got {ttl!r}", field="ttl")
        self._store = store
        self.name = name
        self.candidate_id = candidate_id
        self.ttl = ttl
        #: The key the leader holds.
        self.key = ELECTION_PREFIX + name
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._term: _Term | None = None
        self._abort = threading.Event()
        self._wakeup = threading.Event()  # set by resign() to interrupt a waiting campaign

    # -- queries ----------------------------------------------------------

    def leader(self) -> str | None:
        """Candidate id of the current leader, or None when there is none."""
        kv = self._store.get(self.key)
        return None if kv is None else kv.value.decode("utf-8", errors="replace")

    @property
    def is_leader(self) -> bool:
        """Whether this candidate leads (and its lease cannot have expired yet)."""
        term = self._term
        return term is not None and time.monotonic() < term.valid_until

    @property
    def term_revision(self) -> int | None:
        """The store revision at which this term began (the election key's mod revision): a write
        conditioned on it succeeds only while this term lasts. None when not leader."""
        term = self._term
        return None if term is None else term.revision

    @property
    def lease(self) -> Lease | None:
        """The lease backing the current term, or None when not leader."""
        term = self._term
        return None if term is None else term.lease

    # -- campaign ---------------------------------------------------------

    def campaign(self, timeout: float | None = None) -> bool:
        """Block until this candidate leads (True) or ``timeout`` passes (False).

        Returns False early if :meth:`resign` is called meanwhile. Store
        errors (e.g. :class:`~domainos.store.StoreUnavailable`) propagate.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._term is not None:
            return True
        self._abort.clear()
        changed = threading.Event()
        self._wakeup = changed

        def on_event(event: WatchEvent) -> None:
            if event.key == self.key and event.type == "delete":
                changed.set()

        while not self._abort.is_set():
            started = time.monotonic()
            lease = self._store.grant_lease(self.ttl)
            try:
                result = self._store.txn(
                    [absent(self.key)],
                    [put_op(self.key, self.candidate_id.encode("utf-8"), lease.id)],
                )
            except BaseException:
                self._revoke_quietly(lease)
                raise
            if result.succeeded:
                return self._become_leader(lease, result.revision, started)
            self._revoke_quietly(lease)
            changed.clear()
            try:
                watch: Watch | None = self._store.watch_prefix(
                    self.key, on_event, start_revision=result.revision + 1
                )
            except Compacted:
                watch = None  # history moved on already: just try again
                changed.set()
            try:
                if not self._wait_for_vacancy(changed, deadline):
                    return False
            finally:
                if watch is not None:
                    watch.cancel()
        return False

    def _wait_for_vacancy(self, changed: threading.Event, deadline: float | None) -> bool:
        """Wait until the key is (probably) free; False on timeout or abort."""
        while not self._abort.is_set():
            wait = _RECHECK_INTERVAL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, left)
            if changed.wait(wait) or self._store.get(self.key) is None:
                return True
        return False

    def _become_leader(self, lease: Lease, revision: int, started: float) -> bool:
        term = _Term(lease, revision, valid_until=started + lease.ttl)
        with self._lock:
            aborted = self._abort.is_set()
            if not aborted:
                self._term = term
        if aborted:  # resign() raced with the winning txn: give the key back
            self._release(term)
            return False
        logger.info("%s is now leader of %s", self.candidate_id, self.name)
        threading.Thread(
            target=self._keep_alive,
            args=(term,),
            name=f"election-keepalive:{self.name}",
            daemon=True,
        ).start()
        try:
            term.watch = self._store.watch_prefix(
                self.key, lambda ev: self._on_key_event(term, ev), start_revision=revision + 1
            )
        except StoreError as exc:
            # The keep-alive still notices a lost key, only later.
            logger.warning("election %s: cannot watch own key: %s", self.name, exc)
            return True
        if term.stop.is_set():
            term.watch.cancel()
        return True

    def _on_key_event(self, term: _Term, event: WatchEvent) -> None:
        if event.key == self.key and event.revision > term.revision:
            self._lose(term, f"key {event.type} at revision {event.revision}")

    def _keep_alive(self, term: _Term) -> None:
        interval = max(self.ttl / 3, 0.05)
        # After a failure (a store member died under the call) the next try comes soon, not a
        # whole interval later: the store has moved to another member meanwhile, and the lease
        # may have less than an interval left.
        retry = min(interval, _RETRY_AFTER_FAILURE)
        wait = interval
        while not term.stop.wait(wait):
            started = time.monotonic()
            try:
                term.lease.refresh()
            except LeaseNotFound:
                self._lose(term, "lease expired or was revoked")
                return
            except StoreError as exc:
                if time.monotonic() >= term.valid_until:
                    self._lose(term, f"lease not refreshed for {self.ttl}s ({exc})")
                    return
                logger.warning("election %s: refresh failed, retrying: %s", self.name, exc)
                wait = retry
                continue
            # The lease was refreshed: the term holds for another TTL whatever the check below
            # finds out about the store's health (it only looks for a key that is no longer ours).
            term.valid_until = started + term.lease.ttl
            wait = interval
            try:
                kv = self._store.get(self.key)
            except StoreError as exc:
                logger.warning("election %s: cannot read own key, checking again: %s", self.name, exc)
                wait = retry
                continue
            if kv is None or kv.lease != term.lease.id or kv.mod_revision != term.revision:
                self._lose(term, "key no longer ours")
                return

    def _lose(self, term: _Term, reason: str) -> None:
        with self._lock:
            if self._term is not term:
                return  # resigned or already lost
            self._term = None
        term.stop.set()
        logger.warning("%s lost leadership of %s: %s", self.candidate_id, self.name, reason)
        if term.watch is not None:
            term.watch.cancel()
        self._revoke_quietly(term.lease)
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                logger.exception("election %s: on_lost callback failed", self.name)

    # -- resign -----------------------------------------------------------

    def resign(self) -> None:
        """Give up leadership (or stop a pending campaign). Idempotent."""
        with self._lock:
            self._abort.set()
            term, self._term = self._term, None
        self._wakeup.set()
        if term is None:
            return
        self._release(term)
        logger.info("%s resigned leadership of %s", self.candidate_id, self.name)

    def _release(self, term: _Term) -> None:
        """Stop the term's helpers, delete the key if still ours, end the lease."""
        term.stop.set()
        if term.watch is not None:
            term.watch.cancel()
        try:
            self._store.txn([mod_revision_equals(self.key, term.revision)], [delete_op(self.key)])
        except StoreError as exc:
            logger.warning("election %s: could not delete key on resign: %s", self.name, exc)
        self._revoke_quietly(term.lease)

    def _revoke_quietly(self, lease: Lease) -> None:
        try:
            lease.revoke()
        except StoreError as exc:
            logger.debug("election %s: revoking lease %s failed: %s", self.name, lease.id, exc)

    def __repr__(self) -> str:
        return f"Election(name={self.name!r}, candidate_id={self.candidate_id!r})"
