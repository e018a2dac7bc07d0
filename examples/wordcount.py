"""Word count over a corpus spread across both regions -- Laxcus's CONDUCT, in the DSDK.

    python examples/wordcount.py            # against `domainctl up` (or DOMAINOS_MASTER)

The corpus is stored as a dataset: 8 shards, 2 copies each on distinct nodes in both regions
(the scheduler picks the nodes). CONDUCT then runs `from_` on every shard on a node holding it
(words counted where the text is), moves only the per-node counts to the worker owning each word
(`balance`), adds them up there (`to`) and brings the top words to the client (`put`). It prints
the answer, checks it against a count made here, and prints the bytes that crossed between nodes
and between domains.
"""

from __future__ import annotations

import collections
import random
import sys

import dsdk

WORDS = [
    "domain",
    "node",
    "region",
    "shard",
    "worker",
    "task",
    "gpu",
    "data",
    "compute",
    "move",
    "the",
    "a",
    "of",
    "to",
]


def make_corpus(shards: int = 8, docs: int = 40, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(docs * 20)) for _ in range(shards)]


def count_words(text: str) -> list[tuple[str, int]]:
    return list(collections.Counter(text.split()).items())  # runs at the data


def main() -> int:
    corpus = make_corpus()
    with dsdk.connect() as client:
        ds = dsdk.Dataset.put("wordcount-corpus", corpus, replicas=2, client=client, replace=True)
        regions = sorted({r.region for s in ds.shards for r in s.replicas})
        print(
            f"corpus: {ds.num_shards} shards x {ds.replicas} copies, {ds.size_bytes} bytes, in regions {regions}"
        )
        top = dsdk.conduct(
            ds,
            from_=count_words,
            to=lambda word, counts: sum(counts),
            put=lambda totals: sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:5],
            cpus="250m",
        )
        stats = dsdk.last_stats()
        ds.delete()
    expected = sorted(collections.Counter(" ".join(corpus).split()).items(), key=lambda kv: (-kv[1], kv[0]))[
        :5
    ]
    print("top words:", ", ".join(f"{w}={n}" for w, n in top))
    assert stats is not None
    print(
        f"bytes moved: between nodes {stats.bytes_between_nodes}, between domains {stats.bytes_between_domains}, "
        f"with the client {stats.bytes_client} (the corpus itself: {sum(len(t) for t in corpus)} bytes, never moved)"
    )
    if top != expected:
        print(f"MISMATCH: expected {expected}", file=sys.stderr)
        return 1
    print("matches a local count: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
