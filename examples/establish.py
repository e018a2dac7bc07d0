"""Rebuild a dataset into a new one where the data is -- Laxcus's ESTABLISH, in the DSDK.

    python examples/establish.py

A log of events (8 shards, in arrival order) is re-sharded by user: ``scan`` reads each shard
into records on a node holding it, ``sift`` gives every record its new shard (a hash of the
user), records travel worker to worker to the new shard's owner, where ``rise`` sorts them into
the new shard, stored there and copied to a second node. The client never holds the records.
"""

from __future__ import annotations

import random
import sys
import zlib

import dsdk

USERS = [f"user{i:02d}" for i in range(24)]


def make_log(i: int) -> list[tuple[int, str, str]]:
    """Runs on a node: shard i of the event log, (time, user, action) records."""
    rng = random.Random(i)
    return [(i * 1000 + t, rng.choice(USERS), rng.choice(["read", "write", "train"])) for t in range(500)]


def by_user(record: tuple[int, str, str]) -> int:
    return zlib.crc32(record[1].encode()) % 4


def main() -> int:
    with dsdk.connect() as client:
        log = dsdk.Dataset.create("events", make_log, 8, replicas=2, client=client, replace=True, cpus="250m")
        users = dsdk.establish(
            log,
            "events-by-user",
            scan=lambda shard: shard,  # records of one shard
            sift=by_user,  # -> the new shard of a record
            rise=lambda records: sorted(records, key=lambda r: (r[1], r[0])),  # the new shard, sorted
            num_shards=4,
            replicas=2,
            cpus="250m",
            replace=True,
        )
        stats = dsdk.last_stats()
        per_shard = users.map(lambda recs: (len(recs), sorted({r[1] for r in recs})), cpus="250m").collect()
        print(
            f"{log.name}: {log.num_shards} shards -> {users.name}: {users.num_shards} shards x {users.replicas} copies"
        )
        for i, (n, who) in enumerate(per_shard):
            print(f"  shard {i}: {n} records of {len(who)} users ({', '.join(who[:4])}, ...)")
        total = sum(n for n, _ in per_shard)
        every_user_once = sorted(u for _, who in per_shard for u in who) == sorted(USERS)
        assert stats is not None
        print(
            f"bytes moved: between nodes {stats.bytes_between_nodes}, between domains "
            f"{stats.bytes_between_domains}, with the client {stats.bytes_client}"
        )
        users.delete()
        log.delete()
    ok = total == 8 * 500 and every_user_once
    print("every record kept, each user in exactly one shard:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
