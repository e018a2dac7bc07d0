"""A small job split, sent out, merged and finished -- Laxcus's CONTACT, in the DSDK.

    python examples/contact.py

``fork`` (at the client) splits a Monte Carlo estimate of pi into pieces; ``distant`` runs each
piece on a worker; ``merge`` adds the pieces' counts on one worker (results move worker to
worker); ``near`` (at the client) turns the merged counts into the estimate.
"""

from __future__ import annotations

import sys

import dsdk


def throw(piece: tuple[int, int]) -> tuple[int, int]:
    """Runs on a worker: darts inside the quarter circle, out of ``n``."""
    import numpy as np

    seed, n = piece
    xy = np.random.default_rng(seed).random((n, 2))
    return int(((xy**2).sum(axis=1) <= 1.0).sum()), n


def main() -> int:
    with dsdk.connect() as client:
        pi = dsdk.contact(
            fork=lambda: [(seed, 200_000) for seed in range(16)],
            distant=throw,
            merge=lambda parts: (sum(h for h, _ in parts), sum(n for _, n in parts)),
            near=lambda hn: 4.0 * hn[0] / hn[1],
            workers=2,
            client=client,
            cpus="500m",
        )
    stats = dsdk.last_stats()
    assert stats is not None
    print(f"pi ~ {pi:.4f} from 16 pieces of 200,000 darts")
    print(f"bytes moved: between nodes {stats.bytes_between_nodes}, with the client {stats.bytes_client}")
    return 0 if abs(pi - 3.1416) < 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
