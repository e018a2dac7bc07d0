"""One behaviour suite, run on every backend (see ``conftest.store``)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from domainos.errors import StoreError
from domainos.store import (
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
    AsyncStore,
    Compacted,
    Election,
    InvalidKey,
    InvalidStoreArgument,
    KeyValue,
    LeaseNotFound,
    Store,
    StoreClosed,
    TxnTooLarge,
    ValueTooLarge,
    WatchEvent,
    WatchOverflow,
    absent,
    delete_op,
    exists,
    mod_revision_equals,
    put_op,
    value_equals,
    version_equals,
)

pytestmark = [pytest.mark.store, pytest.mark.timeout(60)]

WaitFor = Callable[..., None]
MakeStore = Callable[[], Store]


def utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode())


def as_tuples(events: list[WatchEvent]) -> list[tuple[str, str, bytes, int]]:
    return [(e.type, e.key, e.value, e.revision) for e in events]


# -- basic key-value ------------------------------------------------------


def test_put_get_delete(store: Store) -> None:
    assert store.get("k") is None
    rev = store.put("k", b"v1")
    assert store.get("k") == KeyValue("k", b"v1", rev, rev, 1, 0)
    assert store.delete("k") is True
    assert store.get("k") is None
    assert store.delete("k") is False


def test_empty_value_and_unicode_key(store: Store) -> None:
    store.put("ключ/ü", b"")
    kv = store.get("ключ/ü")
    assert kv is not None and kv.value == b"" and kv.key == "ключ/ü"


def test_revisions_versions_create_and_mod_revisions(store: Store) -> None:
    r0 = store.revision()
    r1 = store.put("a", b"1")
    assert r1 > r0
    assert store.revision() == r1
    r2 = store.put("a", b"2")
    assert r2 == r1 + 1
    kv = store.get("a")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r1, r2, 2)

    assert store.delete("a")
    r3 = store.revision()
    assert r3 == r2 + 1
    r4 = store.put("a", b"3")
    kv = store.get("a")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r4, r4, 1)

    # Writes that change nothing take no revision.
    assert store.delete("missing") is False
    assert store.delete_prefix("missing/") == 0
    failed = store.txn([exists("missing")], [put_op("x", b"")])
    assert not failed.succeeded
    assert failed.revision == r4
    assert store.revision() == r4


def test_range_is_sorted_with_limit_and_pagination(store: Store) -> None:
    keys = ["p/b", "p/a", "p/c/2", "p/c/1", "p/é", "p/Z", "p0", "o", "q"]
    for k in keys:
        store.put(k, k.encode())
    in_prefix = utf8_sorted([k for k in keys if k.startswith("p/")])

    got = store.range("p/")
    assert [kv.key for kv in got] == in_prefix
    assert all(kv.value == kv.key.encode() for kv in got)
    assert [kv.key for kv in store.range("p/", limit=2)] == in_prefix[:2]

    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = [kv.key for kv in store.range("p/", limit=2, start_after=after)]
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert [k for page in pages for k in page] == in_prefix
    assert all(len(page) <= 2 for page in pages)

    assert [kv.key for kv in store.range("p/", start_after="p/c/1")] == in_prefix[
        in_prefix.index("p/c/1") + 1 :
    ]
    assert [kv.key for kv in store.range("p/", start_after="a")] == in_prefix
    assert store.range("p/", start_after="zzz") == []
    assert [kv.key for kv in store.range("")] == utf8_sorted(keys)
    assert store.range("nothing/") == []


def test_count_and_delete_prefix(store: Store) -> None:
    for i in range(5):
        store.put(f"d/{i}", b"x")
    store.put("d0", b"x")
    store.put("e", b"x")
    assert store.count("d/") == 5
    assert store.count("d") == 6
    assert store.count("") == 7
    assert store.delete_prefix("d/") == 5
    assert store.count("d/") == 0
    assert store.get("d0") is not None
    assert store.delete_prefix("d/") == 0
    assert store.delete_prefix("") == 2
    assert store.count("") == 0


# -- transactions ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["value", "version", "mod_revision", "absent", "exists"])
def test_txn_branches_for_each_compare_kind(store: Store, kind: str) -> None:
    rev = store.put("t/k", b"old")
    holds, fails = {
        "value": (value_equals("t/k", b"old"), value_equals("t/k", b"other")),
        "version": (version_equals("t/k", 1), version_equals("t/k", 5)),
        "mod_revision": (mod_revision_equals("t/k", rev), mod_revision_equals("t/k", rev - 1)),
        "absent": (absent("t/missing"), absent("t/k")),
        "exists": (exists("t/k"), exists("t/missing")),
    }[kind]

    ok = store.txn(
        [holds], [put_op("t/k", b"new"), put_op("t/branch", b"success")], [put_op("t/branch", b"failure")]
    )
    assert ok.succeeded
    assert ok.revision == rev + 1 == store.revision()
    kv = store.get("t/k")
    assert kv is not None and kv.value == b"new" and kv.mod_revision == ok.revision
    branch = store.get("t/branch")
    assert branch is not None and branch.value == b"success"

    bad = store.txn([fails], [put_op("t/branch", b"success-again")], [put_op("t/branch", b"failure")])
    assert not bad.succeeded
    assert bad.revision == ok.revision + 1
    branch = store.get("t/branch")
    assert branch is not None and branch.value == b"failure"


def test_txn_value_compare_on_missing_key_is_false(store: Store) -> None:
    assert not store.txn([value_equals("missing", b"")], []).succeeded
    assert store.txn([version_equals("missing", 0), mod_revision_equals("missing", 0)], []).succeeded


def test_txn_failed_compare_writes_nothing(store: Store) -> None:
    store.put("a/x", b"1")
    rev = store.revision()
    res = store.txn(
        [exists("a/x"), value_equals("a/x", b"2")],
        [put_op("a/y", b""), delete_op("a/x")],
    )
    assert not res.succeeded
    assert res.revision == rev == store.revision()
    assert store.get("a/y") is None
    assert store.get("a/x") is not None


def test_txn_is_all_or_nothing_when_an_op_fails(store: Store) -> None:
    rev = store.revision()
    with pytest.raises(LeaseNotFound):
        store.txn([], [put_op("a/z", b""), put_op("a/w", b"", lease=123456789)])
    assert store.get("a/z") is None
    assert store.revision() == rev


def test_txn_rejects_duplicate_keys_in_a_branch(store: Store) -> None:
    with pytest.raises(InvalidStoreArgument):
        store.txn([], [put_op("dup", b"1"), put_op("dup", b"2")])
    with pytest.raises(InvalidStoreArgument):
        store.txn([], [put_op("dup", b"1"), delete_op("dup")])
    assert store.get("dup") is None


def test_txn_cas_race_has_exactly_one_winner(store: Store, make_store: MakeStore) -> None:
    other = make_store()
    store.put("cas", b"start")
    for _ in range(10):
        kv = store.get("cas")
        assert kv is not None
        barrier = threading.Barrier(2)
        results: dict[str, bool] = {}

        def contend(
            client: Store,
            name: str,
            seen: KeyValue = kv,
            barrier: threading.Barrier = barrier,
            results: dict[str, bool] = results,
        ) -> None:
            barrier.wait()
            res = client.txn([mod_revision_equals("cas", seen.mod_revision)], [put_op("cas", name.encode())])
            results[name] = res.succeeded

        threads = [
            threading.Thread(target=contend, args=(store, "one")),
            threading.Thread(target=contend, args=(other, "two")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        winners = [name for name, won in results.items() if won]
        assert len(results) == 2 and len(winners) == 1, results
        after = store.get("cas")
        assert after is not None and after.value == winners[0].encode()
        assert after.version == kv.version + 1


# -- limits ---------------------------------------------------------------


def test_limits_raise_and_write_nothing(store: Store) -> None:
    rev = store.revision()
    too_big = b"x" * (MAX_VALUE_BYTES + 1)
    with pytest.raises(ValueTooLarge) as big:
        store.put("big", too_big)
    assert big.value.code == "RESOURCE_EXHAUSTED"
    with pytest.raises(ValueTooLarge):
        store.txn([], [put_op("ok", b"1"), put_op("big", too_big)])
    with pytest.raises(TxnTooLarge) as many:
        store.txn([], [put_op(f"t/{i}", b"") for i in range(MAX_TXN_OPS + 1)])
    assert many.value.code == "INVALID_ARGUMENT"
    with pytest.raises(TxnTooLarge):
        store.txn([absent(f"c/{i}") for i in range(MAX_TXN_OPS + 1)], [])
    with pytest.raises(InvalidKey) as empty:
        store.put("", b"x")
    assert empty.value.code == "INVALID_ARGUMENT"
    for call in (
        lambda: store.get(""),
        lambda: store.delete(""),
        lambda: store.txn([absent("")], []),
        lambda: store.txn([], [put_op("ok", b""), put_op("", b"")]),
        lambda: store.txn([], [], [delete_op("")]),
    ):
        with pytest.raises(InvalidKey):
            call()
    with pytest.raises(InvalidStoreArgument):
        store.put("k", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidStoreArgument):
        store.grant_lease(0)
    assert isinstance(big.value, StoreError) and isinstance(many.value, StoreError)
    assert store.revision() == rev
    assert store.count("") == 0


def test_values_and_txns_at_the_limits_work(store: Store) -> None:
    rev = store.put("max", b"m" * MAX_VALUE_BYTES)
    kv = store.get("max")
    assert kv is not None and len(kv.value) == MAX_VALUE_BYTES and kv.mod_revision == rev
    res = store.txn([], [put_op(f"t/{i:03}", b"") for i in range(MAX_TXN_OPS)])
    assert res.succeeded and store.count("t/") == MAX_TXN_OPS


# -- leases ---------------------------------------------------------------


def test_lease_expiry_removes_keys_and_emits_delete_events(store: Store, wait_for: WaitFor) -> None:
    events: list[WatchEvent] = []
    watch = store.watch_prefix("l/", events.append)
    lease = store.grant_lease(1)
    assert lease.ttl >= 1 and lease.id > 0
    store.put("l/a", b"1", lease=lease.id)
    store.put("l/b", b"2", lease=lease.id)
    store.put("l/keep", b"3")
    kv = store.get("l/a")
    assert kv is not None and kv.lease == lease.id

    wait_for(lambda: store.get("l/a") is None and store.get("l/b") is None, message="leased keys gone")
    assert store.get("l/keep") is not None
    wait_for(
        lambda: sorted(e.key for e in events if e.type == "delete") == ["l/a", "l/b"],
        message="delete events for the leased keys",
    )
    assert all(e.value == b"" for e in events if e.type == "delete")
    assert lease.remaining() is None
    with pytest.raises(LeaseNotFound):
        lease.refresh()
    with pytest.raises(LeaseNotFound):
        store.put("l/c", b"", lease=lease.id)
    watch.cancel()


def test_lease_revoke_deletes_keys_at_once(store: Store) -> None:
    lease = store.grant_lease(30)
    left = lease.remaining()
    assert left is not None and 0 < left <= 30
    store.put("r/a", b"1", lease=lease.id)
    store.put("r/b", b"1", lease=lease.id)
    rev = store.revision()
    lease.revoke()
    assert store.count("r/") == 0
    assert store.revision() > rev
    assert lease.remaining() is None
    lease.revoke()  # idempotent


def test_lease_refresh_keeps_keys_alive_past_the_ttl(store: Store) -> None:
    lease = store.grant_lease(1)
    store.put("alive", b"1", lease=lease.id)
    pause = threading.Event()
    end = time.monotonic() + 2.2
    while time.monotonic() < end:
        lease.refresh()
        assert store.get("alive") is not None
        pause.wait(0.25)  # the keep-alive cadence, not a wait for a condition
    lease.refresh()
    assert store.get("alive") is not None
    lease.revoke()
    assert store.get("alive") is None


def test_overwriting_without_lease_detaches_the_key(store: Store) -> None:
    lease = store.grant_lease(30)
    store.put("d", b"1", lease=lease.id)
    store.put("d", b"2")
    lease.revoke()
    kv = store.get("d")
    assert kv is not None and kv.lease == 0


# -- watches --------------------------------------------------------------


def test_watch_prefix_delivers_events_in_order_for_the_prefix_only(store: Store, wait_for: WaitFor) -> None:
    events: list[WatchEvent] = []
    watch = store.watch_prefix("w/", events.append)
    r1 = store.put("w/a", b"1")
    store.put("x/a", b"other prefix")
    store.put("w0", b"sibling, not under w/")
    r2 = store.put("w/b", b"2")
    assert store.delete("w/a")
    r3 = store.revision()
    r4 = store.txn([], [put_op("w/c", b"3"), delete_op("w/b")]).revision
    r5 = store.put("w/end", b"")
    expected = [
        ("put", "w/a", b"1", r1),
        ("put", "w/b", b"2", r2),
        ("delete", "w/a", b"", r3),
        ("put", "w/c", b"3", r4),
        ("delete", "w/b", b"", r4),
        ("put", "w/end", b"", r5),
    ]
    wait_for(lambda: len(events) >= len(expected), message="all events")
    assert as_tuples(events) == expected
    watch.cancel()


def test_watch_start_revision_replays_history(store: Store, wait_for: WaitFor) -> None:
    r1 = store.put("h/a", b"1")
    r2 = store.put("h/b", b"2")
    assert store.delete("h/a")
    r3 = store.revision()

    replay: list[WatchEvent] = []
    watch = store.watch_prefix("h/", replay.append, start_revision=r1)
    wait_for(lambda: len(replay) >= 3, message="replayed events")
    r4 = store.put("h/c", b"3")
    wait_for(lambda: len(replay) >= 4, message="live event after replay")
    assert as_tuples(replay) == [
        ("put", "h/a", b"1", r1),
        ("put", "h/b", b"2", r2),
        ("delete", "h/a", b"", r3),
        ("put", "h/c", b"3", r4),
    ]
    watch.cancel()

    later: list[WatchEvent] = []
    watch = store.watch_prefix("h/", later.append, start_revision=r3)
    wait_for(lambda: len(later) >= 2, message="replay from r3")
    assert [e.revision for e in later] == [r3, r4]
    watch.cancel()


def test_watch_from_a_future_revision_waits_for_it(store: Store, wait_for: WaitFor) -> None:
    start = store.revision() + 2
    events: list[WatchEvent] = []
    watch = store.watch_prefix("f/", events.append, start_revision=start)
    store.put("f/1", b"")
    r2 = store.put("f/2", b"")
    wait_for(lambda: len(events) >= 1)
    assert [(e.key, e.revision) for e in events] == [("f/2", r2)] == [("f/2", start)]
    watch.cancel()


def test_watch_cancel_stops_delivery(store: Store, wait_for: WaitFor) -> None:
    first: list[WatchEvent] = []
    watch = store.watch_prefix("c/", first.append)
    store.put("c/1", b"")
    wait_for(lambda: len(first) == 1)
    watch.cancel()
    watch.cancel()  # idempotent

    second: list[WatchEvent] = []
    other = store.watch_prefix("c/", second.append)
    store.put("c/2", b"")
    store.put("c/3", b"")
    wait_for(lambda: len(second) == 2, message="second watch sees the later writes")
    assert [e.key for e in first] == ["c/1"]
    other.cancel()


def test_watch_cancel_from_inside_the_callback(store: Store, wait_for: WaitFor) -> None:
    seen: list[WatchEvent] = []
    holder: list[object] = []

    def once(event: WatchEvent) -> None:
        seen.append(event)
        holder[0].cancel()  # type: ignore[attr-defined]

    holder.append(store.watch_prefix("cc/", once))
    store.put("cc/1", b"")
    store.put("cc/2", b"")
    wait_for(lambda: len(seen) >= 1)
    marker: list[WatchEvent] = []
    probe = store.watch_prefix("cc/", marker.append)
    store.put("cc/3", b"")
    wait_for(lambda: len(marker) == 1)
    assert [e.key for e in seen] == ["cc/1"]
    probe.cancel()


def test_failing_callback_does_not_stop_the_watch(store: Store, wait_for: WaitFor) -> None:
    seen: list[str] = []

    def flaky(event: WatchEvent) -> None:
        seen.append(event.key)
        if event.key == "fc/1":
            raise RuntimeError("boom")

    watch = store.watch_prefix("fc/", flaky)
    store.put("fc/1", b"")
    store.put("fc/2", b"")
    wait_for(lambda: seen == ["fc/1", "fc/2"])
    watch.cancel()


def test_watch_start_revision_before_compaction_raises_compacted(store: Store, wait_for: WaitFor) -> None:
    r1 = store.put("cp/a", b"1")
    store.put("cp/a", b"2")
    r3 = store.put("cp/a", b"3")
    store.compact(r3)
    with pytest.raises(Compacted) as exc:
        store.watch_prefix("cp/", lambda e: None, start_revision=r1)
    assert exc.value.code == "OUT_OF_RANGE"
    with pytest.raises(Compacted):
        store.compact(r1)
    events: list[WatchEvent] = []
    watch = store.watch_prefix("cp/", events.append, start_revision=r3)
    wait_for(lambda: len(events) == 1)
    assert events[0].value == b"3"
    watch.cancel()


def test_close_is_idempotent_and_ends_watches(store: Store, wait_for: WaitFor) -> None:
    errors: list[StoreError] = []
    store.watch_prefix("z/", lambda e: None, on_error=errors.append)
    store.close()
    store.close()
    wait_for(lambda: len(errors) == 1, message="on_error after close")
    assert isinstance(errors[0], StoreClosed)
    with pytest.raises(StoreClosed):
        store.get("k")
    with pytest.raises(StoreClosed):
        store.put("k", b"")


# -- election -------------------------------------------------------------


def election_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_election_one_leader_and_resign_hands_over(store: Store, make_store: MakeStore) -> None:
    name = election_name()
    alice = Election(store, name, "alice", ttl=2)
    bob = Election(make_store(), name, "bob", ttl=2)
    assert alice.leader() is None
    assert alice.campaign(timeout=5)
    assert alice.is_leader
    assert not bob.campaign(timeout=0.2)
    assert not bob.is_leader
    assert alice.leader() == bob.leader() == "alice"

    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(bob.campaign(timeout=10)))
    waiter.start()
    alice.resign()
    alice.resign()  # idempotent
    waiter.join(timeout=15)
    assert result == [True]
    assert bob.is_leader and not alice.is_leader
    assert alice.leader() == "bob"
    bob.resign()
    assert alice.leader() is None


def test_resign_interrupts_a_waiting_campaign(store: Store, wait_for: WaitFor) -> None:
    name = election_name()
    alice = Election(store, name, "alice", ttl=2)
    bob = Election(store, name, "bob", ttl=2)
    assert alice.campaign(timeout=5)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(bob.campaign(timeout=30)))
    waiter.start()

    def resigned() -> bool:
        bob.resign()  # repeated: the first may land before the campaign starts
        return not waiter.is_alive()

    wait_for(resigned, timeout=5, message="campaign returned after resign()")
    assert result == [False]
    assert alice.is_leader and alice.leader() == "alice"
    alice.resign()


def test_election_concurrent_candidates_elect_exactly_one(store: Store, make_store: MakeStore) -> None:
    name = election_name()
    candidates = [Election(store if i % 2 else make_store(), name, f"c{i}", ttl=2) for i in range(4)]
    results: dict[str, bool] = {}
    barrier = threading.Barrier(len(candidates))

    def run(e: Election) -> None:
        barrier.wait()
        results[e.candidate_id] = e.campaign(timeout=0.5)

    threads = [threading.Thread(target=run, args=(e,)) for e in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    winners = [c for c, won in results.items() if won]
    assert len(winners) == 1, results
    assert candidates[0].leader() == winners[0]
    for e in candidates:
        e.resign()


def test_election_lease_loss_fires_on_lost_and_other_takes_over(
    store: Store, make_store: MakeStore, wait_for: WaitFor
) -> None:
    name = election_name()
    lost = threading.Event()
    alice = Election(store, name, "alice", ttl=2, on_lost=lost.set)
    bob = Election(make_store(), name, "bob", ttl=2)
    assert alice.campaign(timeout=5)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(bob.campaign(timeout=10)))
    waiter.start()

    assert alice.lease is not None
    alice.lease.revoke()  # what an expiry does, without waiting for it
    wait_for(lost.is_set, message="on_lost called")
    assert not alice.is_leader
    waiter.join(timeout=15)
    assert result == [True]
    assert bob.leader() == "bob"
    bob.resign()
    alice.resign()


def test_election_key_deleted_fires_on_lost(store: Store, wait_for: WaitFor) -> None:
    lost = threading.Event()
    leader = Election(store, election_name(), "solo", ttl=2, on_lost=lost.set)
    assert leader.campaign(timeout=5)
    store.delete(leader.key)
    wait_for(lost.is_set, message="on_lost called")
    assert not leader.is_leader
    assert leader.campaign(timeout=5)  # can campaign again
    leader.resign()
    assert store.get(leader.key) is None


def test_election_keeps_leadership_past_the_ttl(store: Store) -> None:
    lost = threading.Event()
    leader = Election(store, election_name(), "steady", ttl=1, on_lost=lost.set)
    assert leader.campaign(timeout=5)
    assert not lost.wait(2.2)  # three TTLs: the keep-alive must hold the lease
    assert leader.is_leader and leader.leader() == "steady"
    leader.resign()


# -- asyncio facade -------------------------------------------------------


async def anext_within(events: object, timeout: float = 10.0) -> WatchEvent:
    result: WatchEvent = await asyncio.wait_for(events.__anext__(), timeout)  # type: ignore[attr-defined]
    return result


def test_async_store_basics(store: Store) -> None:
    async def main() -> None:
        astore = AsyncStore(store)
        assert astore.store is store
        rev = await astore.put("as/1", b"x")
        kv = await astore.get("as/1")
        assert kv is not None and kv.value == b"x" and kv.mod_revision == rev
        await astore.put("as/2", b"y")
        assert [kv.key for kv in await astore.range("as/", limit=1, start_after="as/1")] == ["as/2"]
        assert await astore.count("as/") == 2
        res = await astore.txn([value_equals("as/1", b"x")], [put_op("as/3", b"z")])
        assert res.succeeded and await astore.revision() == res.revision
        assert await astore.delete("as/1")
        lease = await astore.grant_lease(10)
        await astore.put("as/l", b"", lease=lease.id)
        await astore.refresh_lease(lease)
        await astore.revoke_lease(lease)
        assert await astore.get("as/l") is None
        assert await astore.delete_prefix("as/") == 2
        await astore.close()
        await astore.close()
        with pytest.raises(StoreClosed):
            await astore.get("as/1")

    asyncio.run(main())


def test_async_watch_iterator(store: Store) -> None:
    async def main() -> None:
        async with AsyncStore(store) as astore:
            async with astore.watch("aw/") as events:
                await astore.put("aw/1", b"1")
                await astore.put("zz", b"")
                await astore.delete("aw/1")
                got = [await anext_within(events), await anext_within(events)]
            assert [(e.type, e.key) for e in got] == [("put", "aw/1"), ("delete", "aw/1")]

            replay: list[WatchEvent] = []
            async for event in astore.watch("aw/", start_revision=got[0].revision):
                replay.append(event)
                if len(replay) == 2:
                    break
            assert replay == got

            watch = await astore.watch("aw/")
            await astore.put("aw/2", b"2")
            event = await anext_within(watch)
            assert event.key == "aw/2"
            await watch.aclose()
            with pytest.raises(StopAsyncIteration):
                await watch.__anext__()

    asyncio.run(main())


def test_async_watch_overflow_raises(store: Store) -> None:
    async def main() -> None:
        async with AsyncStore(store, watch_queue_size=5) as astore, astore.watch("ov/") as events:
            await astore.txn([], [put_op(f"ov/{i:02}", b"") for i in range(20)])
            deadline = time.monotonic() + 10
            while not events.overflowed:
                assert time.monotonic() < deadline, "watch did not overflow"
                await asyncio.sleep(0.01)
            with pytest.raises(WatchOverflow):
                await anext_within(events)

    asyncio.run(main())


def test_async_watch_raises_the_store_error(store: Store) -> None:
    async def main() -> None:
        astore = AsyncStore(store)
        first = await astore.put("ae/1", b"")
        await astore.put("ae/1", b"")
        await astore.compact(await astore.revision())
        with pytest.raises(Compacted):
            await astore.watch("ae/", start_revision=first)
        events = await astore.watch("ae/")
        await astore.close()
        with pytest.raises(StoreClosed):
            await anext_within(events)

    asyncio.run(main())
