"""The functions every framework of ``bench.compare`` runs on its workers (the same code for all).

Kept apart from ``bench/compare.py`` so that shipping them pulls nothing else along: the benchmark
registers this module with cloudpickle (and Ray's copy of it) *by value*, because the workers of
none of the three frameworks have ``bench`` on their path (it is not an installed package).

The map-reduce result is exact: each shard's map gives floats that depend only on the shard
(the same numpy on the same machine), and :func:`combine` adds them as :class:`fractions.Fraction`
values, so the reduced value is the same bit for bit whatever the order or tree of the reduction
(Ray's and Dask's client-side fold, the DSDK's per-node / per-sub-domain / cross-region tree).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

#: One shard's map result: (elements, sum, sum of squares).
Moments = tuple[int, Any, Any]


def inc(x: int) -> int:
    """The trivial task."""
    return x + 1


def make_shard(i: int, n: int) -> np.ndarray:
    """Shard ``i``: ``n`` float64 values in [0, 1), a function of ``i`` alone."""
    return np.random.default_rng(i).random(n)


class ShardMaker:
    """``make_shard(i, n)`` as a one-argument function (what ``dsdk.Dataset.create`` calls)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, i: int) -> np.ndarray:
        return make_shard(i, self.n)


def moments(a: np.ndarray) -> Moments:
    """The map: a shard to three numbers (a few dozen bytes)."""
    return (int(a.size), float(a.sum()), float((a * a).sum()))  # numpy's pairwise sums: no BLAS threads


def combine(a: Moments, b: Moments) -> Moments:
    """The reduce: exact (rational) sums, so any order gives the same value."""
    return (a[0] + b[0], Fraction(a[1]) + Fraction(b[1]), Fraction(a[2]) + Fraction(b[2]))


def reduce_all(values: list[Moments]) -> Moments:
    """``combine`` over ``values`` (at least one), as the client-side reduce of Ray and Dask."""
    out: Moments = (0, Fraction(0), Fraction(0))
    for v in values:
        out = combine(out, v)
    return out


def exact(m: Moments) -> tuple[int, Fraction, Fraction]:
    """A result in exact form, for comparing (a single shard's floats become fractions too)."""
    return (int(m[0]), Fraction(m[1]), Fraction(m[2]))
