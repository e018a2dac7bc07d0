"""SQLite-only behaviour: several processes on one file, persistence, log trimming."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from domainos.store import Compacted, SQLiteStore, WatchEvent

pytestmark = [pytest.mark.store, pytest.mark.timeout(60)]

WaitFor = Callable[..., None]
REPO_ROOT = Path(__file__).resolve().parents[2]


def run_child(snippet: str, db: Path) -> str:
    """Run ``snippet`` in a fresh interpreter with ``DB`` set to the file path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    code = f"DB = {str(db)!r}\n" + textwrap.dedent(snippet)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_watch_sees_writes_from_another_process(tmp_path: Path, wait_for: WaitFor) -> None:
    db = tmp_path / "shared.db"
    with SQLiteStore(db) as store:
        events: list[WatchEvent] = []
        store.watch_prefix("xp/", events.append)
        run_child(
            """
            from domainos.store import SQLiteStore
            with SQLiteStore(DB) as s:
                s.put("xp/a", b"from child")
                s.put("other/a", b"ignored")
                s.delete("xp/a")
                s.put("xp/b", b"2")
            """,
            db,
        )
        wait_for(lambda: len(events) >= 3, message="events written by the child process")
        assert [(e.type, e.key, e.value) for e in events] == [
            ("put", "xp/a", b"from child"),
            ("delete", "xp/a", b""),
            ("put", "xp/b", b"2"),
        ]
        assert events[-1].revision == store.revision()
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions) and len(set(revisions)) == 3


def test_lease_of_an_exited_process_is_reaped_here(tmp_path: Path, wait_for: WaitFor) -> None:
    db = tmp_path / "shared.db"
    with SQLiteStore(db) as store:
        events: list[WatchEvent] = []
        store.watch_prefix("lp/", events.append)
        out = run_child(
            """
            from domainos.store import SQLiteStore
            s = SQLiteStore(DB)
            lease = s.grant_lease(1)
            s.put("lp/owned", b"", lease=lease.id)
            s.close()  # its reaper stops; the lease stays in the file
            print(lease.id)
            """,
            db,
        )
        kv = store.get("lp/owned")
        assert kv is None or kv.lease == int(out)
        wait_for(lambda: [e.type for e in events] == ["put", "delete"], message="put then reaped")
        assert store.get("lp/owned") is None


def test_concurrent_writers_in_two_processes_get_distinct_revisions(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with SQLiteStore(db) as store:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from domainos.store import SQLiteStore\n"
                f"with SQLiteStore({str(db)!r}) as s:\n"
                f"    [s.put(f'cw/child/{{i}}', b'') for i in range(50)]\n",
            ],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        mine = [store.put(f"cw/parent/{i}", b"") for i in range(50)]
        assert child.wait(timeout=30) == 0
        assert mine == sorted(mine) and len(set(mine)) == 50
        assert store.count("cw/") == 100
        kvs = store.range("cw/")
        assert len({kv.mod_revision for kv in kvs}) == 100


def test_data_and_history_survive_reopen(tmp_path: Path, wait_for: WaitFor) -> None:
    db = tmp_path / "persist.db"
    with SQLiteStore(db) as store:
        r1 = store.put("keep/a", b"1")
        lease = store.grant_lease(60)
        store.put("keep/leased", b"2", lease=lease.id)
        rev = store.revision()
    with SQLiteStore(db) as store:
        kv = store.get("keep/a")
        assert kv is not None and kv.value == b"1" and kv.mod_revision == r1
        assert store.revision() == rev
        assert store.put("keep/b", b"3") == rev + 1
        events: list[WatchEvent] = []
        watch = store.watch_prefix("keep/", events.append, start_revision=r1)
        wait_for(lambda: len(events) == 3)
        assert [e.key for e in events] == ["keep/a", "keep/leased", "keep/b"]
        watch.cancel()
        leased = store.get("keep/leased")
        assert leased is not None and leased.lease == lease.id


def test_watch_log_is_trimmed_to_the_history_size(tmp_path: Path, wait_for: WaitFor) -> None:
    with SQLiteStore(tmp_path / "trim.db", history=5, compact_interval=0.05) as store:
        first = store.put("tr/0", b"")
        for i in range(1, 20):
            store.put(f"tr/{i}", b"")
        last = store.revision()

        def compacted() -> bool:
            try:
                store.watch_prefix("tr/", lambda e: None, start_revision=first).cancel()
            except Compacted:
                return True
            return False

        wait_for(compacted, message="old history trimmed")
        events: list[WatchEvent] = []
        watch = store.watch_prefix("tr/", events.append, start_revision=last - 4)
        wait_for(lambda: len(events) == 5, message="the newest 5 events are kept")
        watch.cancel()


def test_memory_store_is_private_and_works(wait_for: WaitFor) -> None:
    with SQLiteStore(":memory:") as a, SQLiteStore(":memory:") as b:
        a.put("k", b"v")
        assert b.get("k") is None
        events: list[WatchEvent] = []
        a.watch_prefix("", events.append)
        a.put("k2", b"")
        wait_for(lambda: len(events) == 1)
