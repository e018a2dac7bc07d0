"""etcd-only behaviour: outages, resumed watch streams, lease TTL rounding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from domainos.store import EtcdStore, StoreUnavailable, WatchEvent

pytestmark = [pytest.mark.store, pytest.mark.timeout(60)]

WaitFor = Callable[..., None]


def test_broken_watch_stream_resumes_without_gaps_or_duplicates(etcd_server: str, wait_for: WaitFor) -> None:
    with EtcdStore(etcd_server) as store:
        store.delete_prefix("rs/")
        events: list[WatchEvent] = []
        store.watch_prefix("rs/", events.append)
        store.put("rs/1", b"")
        wait_for(lambda: len(events) == 1)
        (stream,) = list(store._watches)
        stream._call.cancel()  # what a dropped connection looks like to the watch thread
        store.put("rs/2", b"")
        store.put("rs/3", b"")
        wait_for(lambda: len(events) >= 3, message="events after the stream broke")
        assert [e.key for e in events] == ["rs/1", "rs/2", "rs/3"]
        store.delete_prefix("rs/")


def test_outage_raises_unavailable_and_everything_recovers(etcd_process: Any, wait_for: WaitFor) -> None:
    with EtcdStore(etcd_process.endpoint, timeout=2) as store:
        events: list[WatchEvent] = []
        store.watch_prefix("o/", events.append)
        store.put("o/1", b"")
        wait_for(lambda: len(events) == 1)

        etcd_process.stop()
        with pytest.raises(StoreUnavailable) as exc:
            store.put("o/x", b"")
        assert exc.value.code == "UNAVAILABLE"
        with pytest.raises(StoreUnavailable):
            store.get("o/1")

        etcd_process.start()

        def put_works() -> bool:
            try:
                store.put("o/2", b"")
            except StoreUnavailable:
                return False
            return True

        wait_for(put_works, timeout=15, message="store usable after restart")
        wait_for(lambda: [e.key for e in events] == ["o/1", "o/2"], timeout=15, message="watch resumed")
        kv = store.get("o/1")
        assert kv is not None


def test_lease_ttl_and_remaining_are_whole_seconds_or_better(etcd_server: str) -> None:
    with EtcdStore(etcd_server) as store:
        lease = store.grant_lease(5)
        left = lease.remaining()
        assert lease.ttl == 5
        assert left is not None and 4 <= left <= 5
        lease.revoke()
        assert lease.remaining() is None
