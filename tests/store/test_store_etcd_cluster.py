"""etcd member loss: a store on ``etcd://a,b,c`` keeps working when one member dies or hangs.

A 3-member cluster (``etcd_cluster``, three real ``etcd`` processes); the member killed is the one
the store is connected to, or the etcd leader (a write in flight then waits for etcd's own request
timeout, ~5.5 s, whatever the client does: new calls go through once the survivors elected a
leader). What must hold: reads and lease keep-alives do not fail at all (they are repeated on
another member), a write fails at most once (it is not repeated: whether it was applied is
unknown), watches move to another member by themselves, and an election's leader keeps its seat.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from domainos.store import Election, EtcdStore, StoreError, StoreUnavailable, WatchEvent

pytestmark = [pytest.mark.store, pytest.mark.timeout(90)]

WaitFor = Callable[..., None]


def _connected(store: EtcdStore) -> str:
    return str(store._conn.endpoint)


def _store_on(cluster: Any, first: int, **kw: Any) -> EtcdStore:
    """A store given every member, member ``first`` first (so it connects there)."""
    eps = cluster.endpoints
    order = eps[first:] + eps[:first]
    store = EtcdStore(order, **kw)
    assert _connected(store) == eps[first]
    return store


def _puts_until(store: EtcdStore, prefix: str, seconds: float) -> tuple[int, int]:
    """Put a key every 50 ms for ``seconds``; (succeeded, failed)."""
    ok = failed = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            store.put(f"{prefix}{ok + failed}", b"v")
            ok += 1
        except StoreUnavailable:
            failed += 1
        time.sleep(0.05)
    return ok, failed


def test_killing_the_connected_member_costs_reads_nothing_and_writes_at_most_one_error(
    etcd_cluster: Any, wait_for: WaitFor
) -> None:
    with _store_on(etcd_cluster, 0) as store, EtcdStore(etcd_cluster.endpoints[1]) as other:
        store.put("kc/seed", b"1")
        events: list[WatchEvent] = []
        store.watch_prefix("kc/", events.append)
        lease = store.grant_lease(3)
        wait_for(lambda: store.get("kc/seed") is not None)

        etcd_cluster.kill(0)
        assert store.get("kc/seed") is not None  # repeated on another member: no error at all
        assert _connected(store) != etcd_cluster.endpoints[0]
        lease.refresh()
        ok, failed = _puts_until(store, "kc/after-", 1.0)
        assert ok > 5 and failed <= 1
        other.put("kc/from-other", b"2")
        wait_for(lambda: any(e.key == "kc/from-other" for e in events), timeout=10, message="watch moved")
        keys = [e.key for e in events]
        assert len(keys) == len(set(keys))  # resumed from the next revision: no duplicates
        assert lease.remaining() is not None


def test_a_watch_alone_moves_off_a_dead_member(etcd_cluster: Any, wait_for: WaitFor) -> None:
    """A process that only watches (no other call would notice the member is gone)."""
    # The member killed is a follower, so the writer's put does not wait out an etcd election.
    victim = (etcd_cluster.leader() + 1) % 3
    writer_on = (victim + 1) % 3
    with _store_on(etcd_cluster, victim) as watcher, EtcdStore(etcd_cluster.endpoints[writer_on]) as writer:
        events: list[WatchEvent] = []
        watcher.watch_prefix("wa/", events.append)
        writer.put("wa/1", b"")
        wait_for(lambda: len(events) == 1)
        etcd_cluster.kill(victim)
        writer.put("wa/2", b"")
        wait_for(lambda: [e.key for e in events] == ["wa/1", "wa/2"], timeout=10, message="watch resumed")


@pytest.mark.parametrize("where", ["on-the-etcd-leader", "on-a-follower"])
def test_election_leader_keeps_its_seat_when_the_etcd_leader_dies(
    etcd_cluster: Any, wait_for: WaitFor, where: str
) -> None:
    """Killing the etcd leader leaves a keep-alive in flight hanging for etcd's request timeout
    (~5.5 s, longer than the 3 s lease): it must give up in time and go to another member."""
    etcd_leader = etcd_cluster.leader()
    first = etcd_leader if where == "on-the-etcd-leader" else (etcd_leader + 1) % 3
    lost: list[float] = []
    with (
        _store_on(etcd_cluster, first) as store,
        EtcdStore(etcd_cluster.endpoints[(etcd_leader + 2) % 3]) as rival_store,
    ):
        election = Election(store, "ek", "a", ttl=3, on_lost=lambda: lost.append(time.monotonic()))
        assert election.campaign(timeout=5)
        time.sleep(0.5)  # a keep-alive round may be in flight when the leader dies
        etcd_cluster.kill(etcd_leader)
        rival = Election(rival_store, "ek", "b", ttl=3)
        won: list[bool] = []

        def campaign() -> None:  # as the master's Leadership does: store errors, try again
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                try:
                    if rival.campaign(timeout=max(0.1, deadline - time.monotonic())):
                        won.append(True)
                        return
                except StoreError:
                    time.sleep(0.2)
            won.append(False)

        thread = threading.Thread(target=campaign, daemon=True)
        thread.start()
        thread.join(12)
        assert won == [False]  # the seat was never free
        assert lost == [] and election.is_leader
        assert election.leader() == "a"
        election.resign()
        rival.resign()


def test_calls_in_flight_when_the_etcd_leader_dies_end_within_two_seconds(etcd_cluster: Any) -> None:
    """etcd answers a request its member forwarded to the dead leader only at its own timeout
    (~5.5 s): the store gives up once the survivors elected a new leader, reads are repeated."""
    leader = etcd_cluster.leader()
    follower = (leader + 1) % 3
    with _store_on(etcd_cluster, follower) as store:
        store.put("lf/seed", b"1")
        results: dict[str, Any] = {}

        def write() -> None:
            t0 = time.monotonic()
            for i in range(20):  # a stream of writes, so that some are in flight at the kill
                try:
                    store.put(f"lf/w{i}", b"x")
                except StoreUnavailable as exc:
                    results.setdefault("write_errors", []).append(str(exc))
                results.setdefault("write_s", []).append(time.monotonic() - t0)
                t0 = time.monotonic()

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        etcd_cluster.kill(leader)
        t0 = time.monotonic()
        assert store.get("lf/seed") is not None  # a read: repeated until the new leader answers
        read_s = time.monotonic() - t0
        thread.join(30)
        assert read_s < 2.5, read_s
        assert max(results["write_s"]) < 2.5, results  # not etcd's 5.5 s
        assert len(results.get("write_errors", [])) <= 2, results


def test_election_survives_a_hung_member(etcd_cluster: Any, wait_for: WaitFor) -> None:
    """SIGSTOP the member the leader's store uses: calls to it hang (no connection error)."""
    lost: list[float] = []
    with _store_on(etcd_cluster, 0) as store:
        election = Election(store, "hung", "a", ttl=3, on_lost=lambda: lost.append(time.monotonic()))
        assert election.campaign(timeout=5)
        etcd_cluster.pause(0)
        try:
            time.sleep(6)  # two lease lengths
            assert lost == [] and election.is_leader
            assert _connected(store) != etcd_cluster.endpoints[0]
            assert store.get("/domainos/election/hung") is not None
        finally:
            etcd_cluster.resume(0)
        election.resign()


@pytest.mark.slow
def test_a_watch_alone_moves_off_a_hung_member(etcd_cluster: Any, wait_for: WaitFor) -> None:
    """Only HTTP/2 pings can tell a watch that its member hangs (10 s + 5 s)."""
    victim = (etcd_cluster.leader() + 1) % 3  # a follower: the writer's put needs no election
    writer_on = (victim + 1) % 3
    with _store_on(etcd_cluster, victim) as watcher, EtcdStore(etcd_cluster.endpoints[writer_on]) as writer:
        events: list[WatchEvent] = []
        watcher.watch_prefix("wh/", events.append)
        writer.put("wh/1", b"")
        wait_for(lambda: len(events) == 1)
        etcd_cluster.pause(victim)
        try:
            writer.put("wh/2", b"")
            wait_for(lambda: len(events) == 2, timeout=30, message="watch resumed on another member")
        finally:
            etcd_cluster.resume(victim)


def test_a_restarted_member_rejoins_and_a_second_loss_is_survived(etcd_cluster: Any) -> None:
    eps = etcd_cluster.endpoints
    with _store_on(etcd_cluster, 0) as store:
        store.put("rj/a", b"1")
        etcd_cluster.kill(0)
        assert store.get("rj/a") is not None
        assert _connected(store) == eps[1]  # the member after the lost one
        etcd_cluster.restart(0)
        etcd_cluster.kill(1)
        assert store.get("rj/a") is not None
        assert _connected(store) == eps[2]
        ok, failed = _puts_until(store, "rj/p", 1.0)
        assert ok > 5 and failed <= 1
