"""Intra-node compute figures: :class:`dsdk.intra.DevicePool` on this machine's CPU cores against a
plain numpy loop and ``multiprocessing.Pool`` (spawn), on the same data and the same chunks.

* ``map``: ``sum(sqrt(c) * sin(c))`` over a float64 array of 256 MiB (``--smoke``: 8 MiB) cut
  into one chunk per core. DevicePool figures: ``resident`` (the data already scattered, as it is
  for the second and later computations on it) and ``scatter+map`` (a fresh array copied into
  shared memory first, which is what ``multiprocessing.Pool`` pays in pickling every time).
* ``matmul``: ``c @ w`` per chunk (256 MiB of rows × 128 columns, w 128 × 128): the results are as
  large as the input, so they come back through shared memory (DevicePool) or pickled (Pool).
  The numpy loop uses the machine's BLAS threads; DevicePool workers run one BLAS thread per core.
* ``allreduce``: every core holds a float64 array of 256 MiB (smoke 8 MiB); each ends with the
  elementwise sum, in new memory (``resident``) or written over its own array (``inplace``,
  no allocation). Baselines: the loop sums and copies the result once per core; the Pool sums
  one slice of the range per worker (the slices of all arrays pickled to it) and the parent
  assembles and copies the result.
* ``per_call_overhead``: a map of a function that does nothing, over small parts.

Each figure is the median of 5 runs (smoke: 1) of wall time. ``bytes_through_pipes`` is what
crossed process boundaries: measured for DevicePool (:meth:`DevicePool.stats`), computed for the
Pool (the pickled tasks and results, protocol 5). Results go to ``intra.json`` (``intra-smoke.json``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import operator
import os
import pathlib
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from dsdk.intra import DevicePool, PoolStats

MiB = 1 << 20
FULL_BYTES = 256 * MiB
SMOKE_BYTES = 8 * MiB
COLUMNS = 128


def _sqrt_sin_sum(chunk: npt.NDArray[np.float64]) -> float:
    return float(np.sum(np.sqrt(chunk) * np.sin(chunk)))


def _matmul(chunk: npt.NDArray[np.float64], w: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return chunk @ w


def _matmul_task(task: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    return task[0] @ task[1]


def _sum_slices(slices: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    acc = slices[0].copy()
    for s in slices[1:]:
        acc += s
    return acc


def _nothing(part: Any) -> None:
    return None


def _timed(fn: Callable[[], Any], runs: int) -> tuple[dict[str, float], Any]:
    samples, value = [], None
    for _ in range(runs):
        started = time.perf_counter()
        value = fn()
        samples.append(time.perf_counter() - started)
    ordered = sorted(samples)
    return {"n": runs, "median_s": round(statistics.median(ordered), 5), "min_s": round(ordered[0], 5)}, value


def _pickled(values: Sequence[Any]) -> int:
    return sum(len(pickle.dumps(v, protocol=5)) for v in values)


def _row(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    base = figures["numpy_loop"]["median_s"]
    for value in figures.values():
        if isinstance(value, dict) and "median_s" in value:
            value["speedup_vs_numpy_loop"] = round(base / value["median_s"], 2)
    figures["name"] = name
    return figures


def _moved(before: PoolStats, after: PoolStats, runs: int) -> int:
    sent = after.pipe_bytes_sent - before.pipe_bytes_sent
    return (sent + after.pipe_bytes_received - before.pipe_bytes_received) // runs


def _map_workload(pool: DevicePool, mpool: Any, size: int, runs: int) -> dict[str, Any]:
    n = len(pool)
    x = np.random.default_rng(0).random(size // 8)
    chunks = np.array_split(x, n)
    parts = pool.scatter(x)
    figures: dict[str, Any] = {}
    figures["numpy_loop"], expect = _timed(lambda: sum(_sqrt_sin_sum(c) for c in chunks), runs)
    figures["mp_pool"], got = _timed(lambda: sum(mpool.map(_sqrt_sin_sum, chunks, chunksize=1)), runs)
    assert np.isclose(got, expect)
    before = pool.stats()
    figures["devicepool_resident"], got = _timed(
        lambda: pool.reduce(operator.add, pool.map(_sqrt_sin_sum, parts)), runs
    )
    after = pool.stats()
    assert np.isclose(got, expect)
    figures["devicepool_scatter_map"], got = _timed(
        lambda: pool.reduce(operator.add, pool.map(_sqrt_sin_sum, pool.scatter(x))), runs
    )
    assert np.isclose(got, expect)
    figures["bytes_through_pipes"] = {
        "numpy_loop": 0,
        "mp_pool": _pickled(chunks) + _pickled([expect] * n),
        "devicepool": _moved(before, after, runs),
    }
    return _row(f"sum(sqrt(c)*sin(c)) over {size // MiB} MiB in {n} chunks", figures)


def _matmul_workload(pool: DevicePool, mpool: Any, size: int, runs: int) -> dict[str, Any]:
    n = len(pool)
    rng = np.random.default_rng(1)
    m = rng.random((size // 8 // COLUMNS, COLUMNS))
    w = rng.random((COLUMNS, COLUMNS))
    chunks = np.array_split(m, n)
    parts = pool.scatter(m)
    figures: dict[str, Any] = {}
    figures["numpy_loop"], expect = _timed(lambda: [c @ w for c in chunks], runs)
    figures["mp_pool"], got = _timed(
        lambda: mpool.map(_matmul_task, [(c, w) for c in chunks], chunksize=1), runs
    )
    assert all(np.allclose(a, b) for a, b in zip(got, expect, strict=True))
    before = pool.stats()
    figures["devicepool_resident"], sharded = _timed(lambda: pool.map(_matmul, parts, w), runs)
    after = pool.stats()
    assert all(np.allclose(a, b) for a, b in zip(sharded, expect, strict=True))
    figures["bytes_through_pipes"] = {
        "numpy_loop": 0,
        "mp_pool": _pickled([(c, w) for c in chunks]) + _pickled(expect),
        "devicepool": _moved(before, after, runs),
    }
    return _row(f"c @ w per chunk, {size // MiB} MiB of {COLUMNS}-column rows", figures)


def _allreduce_workload(pool: DevicePool, mpool: Any, size: int, runs: int) -> dict[str, Any]:
    n = len(pool)
    elements = size // 8
    grads = pool.map(lambda: np.random.default_rng(os.getpid()).random(elements))
    held = list(grads)  # the same arrays (views of shared memory) for the baselines
    bounds = np.linspace(0, elements, n + 1).astype(int)

    def loop() -> list[npt.NDArray[np.float64]]:
        acc = held[0].copy()
        for g in held[1:]:
            acc += g
        return [acc] + [acc.copy() for _ in range(n - 1)]

    def tasks() -> list[list[npt.NDArray[np.float64]]]:
        return [[g[bounds[k] : bounds[k + 1]] for g in held] for k in range(n)]

    def with_pool() -> list[npt.NDArray[np.float64]]:
        total = np.concatenate(mpool.map(_sum_slices, tasks(), chunksize=1))
        return [total] + [total.copy() for _ in range(n - 1)]

    figures: dict[str, Any] = {}
    figures["numpy_loop"], expect = _timed(loop, runs)
    figures["mp_pool"], got = _timed(with_pool, runs)
    assert np.array_equal(got[-1], expect[0])
    got = None
    before = pool.stats()
    figures["devicepool_resident"], reduced = _timed(lambda: pool.allreduce(grads, op="sum"), runs)
    after = pool.stats()
    assert all(np.array_equal(part, expect[0]) for part in reduced)
    reduced = None
    inplace = pool.map(lambda g: g * 1.0, grads)
    pool.allreduce(inplace, op="sum", inplace=True)
    assert all(np.array_equal(part, expect[0]) for part in inplace)
    figures["devicepool_inplace"], _ = _timed(lambda: pool.allreduce(inplace, op="sum", inplace=True), runs)
    figures["bytes_through_pipes"] = {
        "numpy_loop": 0,
        "mp_pool": _pickled(tasks()) + _pickled([expect[0]]),
        "devicepool": _moved(before, after, runs),
    }
    return _row(f"allreduce(sum), {n} x {size // MiB} MiB float64", figures)


def run(*, smoke: bool, out: pathlib.Path) -> dict[str, Any]:
    from dsdk.intra import DevicePool

    size = SMOKE_BYTES if smoke else FULL_BYTES
    runs = 1 if smoke else 5
    overhead_calls = 20 if smoke else 200
    results: dict[str, Any] = {
        "benchmark": "intra",
        "smoke": smoke,
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "array_bytes": size,
        "runs": runs,
    }
    started = time.perf_counter()
    pool = DevicePool("cpu")
    results["devicepool_start_s"] = round(time.perf_counter() - started, 3)
    n = len(pool)
    results["devices"] = [str(d) for d in pool.devices]
    started = time.perf_counter()
    mpool = multiprocessing.get_context("spawn").Pool(n)
    mpool.map(_nothing, range(n))
    results["mp_pool_start_s"] = round(time.perf_counter() - started, 3)
    try:
        results["map"] = _map_workload(pool, mpool, size, runs)
        results["matmul"] = _matmul_workload(pool, mpool, size, runs)
        results["allreduce"] = _allreduce_workload(pool, mpool, size, runs)
        small = pool.scatter(np.arange(16.0))
        pool.map(_nothing, small)
        overhead, _ = _timed(lambda: pool.map(_nothing, small), overhead_calls)
        mp_overhead, _ = _timed(lambda: mpool.map(_nothing, range(n), chunksize=1), overhead_calls)
        results["per_call_overhead"] = {"devicepool_map": overhead, "mp_pool_map": mp_overhead}
    finally:
        pool.close()
        mpool.close()
        mpool.join()

    path = out / ("intra-smoke.json" if smoke else "intra.json")
    path.write_text(json.dumps(results, indent=2))
    _print(results, path)
    return results


def _print(results: dict[str, Any], path: pathlib.Path) -> None:
    print(
        f"intra: {len(results['devices'])} CPU devices ({', '.join(results['devices'])}), "
        f"median of {results['runs']}; start: DevicePool {results['devicepool_start_s']:.2f} s, "
        f"mp.Pool {results['mp_pool_start_s']:.2f} s"
    )
    for key in ("map", "matmul", "allreduce"):
        row = results[key]
        print(f"  {row['name']}")
        for approach in (
            "numpy_loop",
            "mp_pool",
            "devicepool_resident",
            "devicepool_scatter_map",
            "devicepool_inplace",
        ):
            if approach in row:
                fig = row[approach]
                print(
                    f"    {approach:<24} {fig['median_s'] * 1000:9.1f} ms   x{fig['speedup_vs_numpy_loop']:<5} vs numpy loop"
                )
        moved = row["bytes_through_pipes"]
        print(
            "    bytes through pipes:     "
            + ", ".join(f"{k} {v / MiB:.3f} MiB" if v >= 1024 else f"{k} {v} B" for k, v in moved.items())
        )
    over = results["per_call_overhead"]
    print(
        f"  per-call overhead (empty map): DevicePool {over['devicepool_map']['median_s'] * 1e3:.3f} ms, "
        f"mp.Pool {over['mp_pool_map']['median_s'] * 1e3:.3f} ms"
    )
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.intra", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="8 MiB arrays, one run")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    ns = p.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    run(smoke=ns.smoke, out=ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
