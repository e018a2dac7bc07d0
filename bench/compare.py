"""The DSDK beside Ray and Dask: the same two workloads, on this machine, in one run.

Workloads (every framework does exactly the same work, with the functions of
``bench/_compare_tasks.py``, and two worker processes of one CPU each):

1. **Trivial tasks**: ``x + 1`` over ``range(1000)``, every result gathered on the client.

   * *warm* -- the workers are up and have run the workload once (untimed): Ray after
     ``ray.init()``, Dask once its ``LocalCluster`` is up, the DSDK on a ready pool
     (``pool = client.pool(2, cpus=1); pool.wait_ready()``), timing
     ``dsdk.gather(pool.map(f, range(1000)))``;
   * *cold* (DSDK only) -- ``dsdk.gather(client.map(f, range(1000), workers=2, cpus=1))``: the job
     is submitted, scheduled, its two worker processes start (once per job, never per call),
     connect, run every call; the timing ends when the last result is in (the job ends after).

2. **Map-reduce over 64 shards of 4 MiB made on the workers**: shard ``i`` is
   ``np.random.default_rng(i).random(512 * 1024)`` (float64), made by a task on a worker; each
   shard is then mapped where it is to (elements, sum, sum of squares), and the 64 results are
   reduced to one value. Only results cross to the client. Timed as *create* (every shard made),
   *map+reduce*, and both together (*create+map*, one after the other in the same run).

   * Ray: remote tasks make the shards (object-store refs; ``ray.wait(..., fetch_local=False)``
     ends *create*), remote ``moments`` over the refs, ``ray.get`` of the 64 small results and
     the reduce on the client. Also *pipelined*: ``ray.get([moments.remote(make.remote(i))])``
     without the barrier between the two.
   * Dask: ``client.map(make, ...)`` (``pure=False``), ``distributed.wait``, ``client.map(moments,
     shards)``, ``client.gather`` and the reduce on the client; *pipelined* likewise.
   * DSDK *warm*: the dataset API on a warm pool of 2 workers on distinct nodes --
     ``Dataset.create(name, fn, 64, replicas=1, pool=warm)`` (shards made on the workers and
     stored on their nodes' disks, persistent) then ``ds.map(moments, pool=warm).reduce(combine)``:
     no job is started. The JSON also has ``mapreduce_warm_memory``: the same with the shards kept
     in the workers' memory only (``pool.call(make, i, keep=KEY, worker=w)`` then
     ``pool.call(moments, ObjArg(KEY), worker=w)``), the building blocks underneath.
   * DSDK *cold*, the dataset API: ``dsdk.Dataset.create(name, fn, 64, replicas=1, client=c)`` --
     starts a job of writer workers (one per node, at most one per shard), each makes its shards
     and **stores them on its node's disk** (the datasets are persistent: they outlive the job and
     an agent restart; written through the page cache, no fsync) and the master registers the
     dataset -- then ``ds.map(moments).reduce(combine)``, which starts another job with a worker
     on every node holding shards and reduces per node, per sub-domain, then across regions.
     Each operation thus includes its job's start; the dataset is deleted after each run (untimed).
     Its ``DatasetMap.stats`` (a ``JobStats``) gives the bytes moved by distance.

   The reduce is exact (``fractions.Fraction`` sums of each shard's float64 sums), so every
   framework's result must equal the client's own computation bit for bit; the benchmark fails
   (exit 1, after writing the JSON) otherwise, or when any framework raised.

The DSDK runs on a federation this benchmark starts (``domainctl up --detach`` in a temporary
home: 1 master, 2 regions x 1 sub-domain x 2 agents on loopback, each agent reporting this machine's
CPUs) and stops (``domainctl down``). With that default topology ``Dataset.create``/``map`` put one
worker on each of the 4 nodes (4 processes on the machine's cores); the full run therefore also runs
the DSDK on a second federation of 2 agents (one per region, ``--topology two-node``) whose dataset
jobs get exactly 2 worker processes, as Ray and Dask do.

The frameworks run one after the other (never at once), each torn down before the next; every
figure is the median of ``--runs`` runs (default 5; smoke 1), and every run's figure is in the JSON
(``bench/results/compare.json``; ``compare-smoke.json`` with ``--smoke``), with the machine, the
versions, the start-up times and the load average around each framework (others' processes on
the machine distort the figures: check it). Bytes moved: the DSDK's ``JobStats``; Dask's
worker-to-worker transfer counter (``Worker.transfer_outgoing_bytes_total``); Ray's are not
measured (no cheap API).

Ray and Dask are *not* dependencies of DomainOS: they are imported lazily and, when missing, their
columns say so ("ray not installed (pip install ray)"); the DSDK part needs only the project.
To run all three (no ``make`` needed)::

    python3 -m venv /tmp/venv-bench
    /tmp/venv-bench/bin/pip install -e . ray "dask[distributed]"   # from the repository root
    /tmp/venv-bench/bin/python -m bench.compare                    # full size, about 2 minutes
    /tmp/venv-bench/bin/python -m bench.compare --smoke            # 100 tasks, 8 x 256 KiB, 1 run

``python -m bench.compare --help`` lists the options (``--runs N``, ``--out DIR``, ``--only
dsdk|ray|dask``, ``--topology default|two-node``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from bench import _compare_tasks as tasks

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKERS = 2
FRAMEWORKS = ("dsdk", "ray", "dask")
#: ``--topology`` name -> topology file text (None: ``domainctl up``'s built-in default).
TOPOLOGIES: dict[str, str | None] = {
    "default": None,
    "two-node": """\
version: 1
name: local
regions:
  - name: east
    subdomains:
      - id: east-1
        agents:
          - count: 1
  - name: west
    subdomains:
      - id: west-1
        agents:
          - count: 1
""",
}
#: Figures published for this machine (the brief of this benchmark), for the record.
REFERENCE = {
    "tasks_1000_warm_s": {"ray": 1.2, "dask": 2.8},
    "mapreduce_64x4MiB_s": {"ray": "0.75-1.05", "dask": 0.8},
}
MISSING = {
    "ray": "ray not installed (pip install ray)",
    "dask": 'dask not installed (pip install "dask[distributed]")',
}


@dataclass(frozen=True)
class Size:
    tasks: int
    shards: int
    #: float64 elements per shard.
    shard_elems: int
    runs: int

    @property
    def shard_bytes(self) -> int:
        return self.shard_elems * 8

    def label(self) -> str:
        size = self.shard_bytes
        unit = f"{size // 2**20} MiB" if size >= 2**20 else f"{size // 2**10} KiB"
        return f"{self.shards}x{unit}"


FULL = Size(tasks=1000, shards=64, shard_elems=512 * 1024, runs=5)
SMOKE = Size(tasks=100, shards=8, shard_elems=32 * 1024, runs=1)


# -- helpers ---------------------------------------------------------------------------------------


class Mismatch(AssertionError):
    """A framework's result differs from the expected one."""


def _series(samples: Sequence[float]) -> dict[str, Any]:
    return {
        "runs_s": [round(s, 4) for s in samples],
        "median_s": round(statistics.median(samples), 4) if samples else None,
        "min_s": round(min(samples), 4) if samples else None,
        "max_s": round(max(samples), 4) if samples else None,
    }


def _exact_json(m: tasks.Moments) -> dict[str, Any]:
    n, s, q = tasks.exact(m)
    return {"elements": n, "sum": float(s), "sum_sq": float(q), "sum_exact": str(s), "sum_sq_exact": str(q)}


@dataclass
class Expected:
    tasks: list[int]
    moments: tuple[int, Fraction, Fraction]


def _expected(size: Size) -> Expected:
    """The right answers, computed here on the client (one shard at a time)."""
    parts = [tasks.moments(tasks.make_shard(i, size.shard_elems)) for i in range(size.shards)]
    return Expected([tasks.inc(x) for x in range(size.tasks)], tasks.exact(tasks.reduce_all(parts)))


def _check_tasks(what: str, got: list[Any], want: Expected) -> None:
    if list(got) != want.tasks:
        bad = next(i for i, (a, b) in enumerate(zip(got, want.tasks, strict=False)) if a != b) if got else 0
        raise Mismatch(f"{what}: {len(got)} results, first wrong at {bad}: {got[bad : bad + 3]!r}")


def _check_moments(what: str, got: tasks.Moments, want: Expected) -> None:
    if tasks.exact(got) != want.moments:
        raise Mismatch(
            f"{what}: reduced to {_exact_json(got)}, expected {_exact_json(want.moments)} "
            f"(difference in sum {float(Fraction(got[1]) - want.moments[1])!r})"
        )


def _loadavg() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def _ship_by_value() -> None:
    """The workers have no ``bench`` package: ship ``_compare_tasks`` with the functions."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(tasks)


def _guard(name: str, out: dict[str, Any], fn: Callable[[dict[str, Any]], None]) -> None:
    """Run one framework's part, keeping whatever it measured should it fail."""
    out["loadavg_before"] = _loadavg()
    started = time.monotonic()
    try:
        fn(out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
        print(f"{name}: FAILED: {out['error']}\n{out['traceback']}", file=sys.stderr, flush=True)
    out["wall_s"] = round(time.monotonic() - started, 1)
    out["loadavg_after"] = _loadavg()


# -- the DSDK --------------------------------------------------------------------------------------


class Federation:
    """A ``domainctl up --detach`` federation in a private home (as ``tests/e2e``'s)."""

    def __init__(self, home: pathlib.Path, topology: str | None) -> None:
        self.home = home
        self.topology = topology
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "DOMAINOS_HOME": str(home)}
        self.env.pop("DOMAINOS_MASTER", None)

    def ctl(self, *args: str, timeout: float = 180) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "domainctl", *args],
            capture_output=True, text=True, env=self.env, timeout=timeout, cwd=str(ROOT),
        )  # fmt: skip
        if proc.returncode != 0:
            logs = ""
            for log in sorted((self.home / "local" / "logs").glob("*.log")):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                logs += f"\n--- {log.name}\n{tail}"
            raise RuntimeError(f"domainctl {' '.join(args)} exited {proc.returncode}: {proc.stderr}{logs}")

    def up(self) -> None:
        args = ["up", "--detach", "--home", str(self.home), "--timeout", "90"]
        if self.topology is not None:
            path = self.home.parent / "topology.yaml"
            path.write_text(self.topology)
            args += ["--topology", str(path)]
        self.ctl(*args)

    def down(self) -> None:
        self.ctl("down", "--home", str(self.home))

    def client(self) -> Any:
        import dsdk

        state = json.loads((self.home / "local" / "cluster.json").read_text())
        return dsdk.connect(state["master"], home=self.home)


_ACTIVE = ("PENDING", "SCHEDULED", "RUNNING")


def _wait_idle(client: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the federation runs no job (a closed pool's job ends a moment after): how long
    it took and which jobs were still active at first."""
    started = time.monotonic()
    first = [f"{j.name} {j.state.value}" for j in client.jobs(states=_ACTIVE)]
    while client.jobs(states=_ACTIVE):
        if time.monotonic() - started > timeout:
            left = [(j.job_id, j.name, j.state.value) for j in client.jobs(states=_ACTIVE)]
            raise RuntimeError(f"jobs still active after {timeout:g}s: {left}")
        time.sleep(0.05)
    return {"s": round(time.monotonic() - started, 3), "active": first}


def _stats_json(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {
        "bytes_client": stats.bytes_client,
        "bytes_between_nodes": stats.bytes_between_nodes,
        "bytes_between_domains": stats.bytes_between_domains,
        "bytes_intra_node": stats.bytes_intra_node,
        "bytes_inter_node": stats.bytes_inter_node,
        "bytes_inter_subdomain": stats.bytes_inter_subdomain,
        "bytes_inter_region": stats.bytes_inter_region,
        "calls": stats.calls,
        "local_calls": stats.local_calls,
    }


def _stats_delta(before: Any, after: Any) -> dict[str, Any]:
    a, b = _stats_json(after) or {}, _stats_json(before) or {}
    return {k: a[k] - b.get(k, 0) for k in a}


def _dsdk(size: Size, want: Expected, topology: str, out: dict[str, Any]) -> None:
    import dsdk

    out["version"] = _version("domainos")
    out["topology"] = topology
    with tempfile.TemporaryDirectory(prefix="domainos-compare-") as tmp:
        fed = Federation(pathlib.Path(tmp) / "home", TOPOLOGIES[topology])
        started = time.perf_counter()
        fed.up()
        out["startup_s"] = round(time.perf_counter() - started, 3)  # domainctl up --detach
        try:
            with fed.client() as client:
                out["nodes"] = len(client.nodes())
                _dsdk_warm(dsdk, client, size, want, out)
                out["after_warm_pool_close"] = _wait_idle(client)
                _dsdk_cold(dsdk, client, size, want, out)
                _dsdk_dataset(dsdk, client, size, want, out)
        finally:
            started = time.perf_counter()
            fed.down()
            out["teardown_s"] = round(time.perf_counter() - started, 3)


def _dsdk_warm(dsdk: Any, client: Any, size: Size, want: Expected, out: dict[str, Any]) -> None:
    started = time.perf_counter()
    pool = client.pool(WORKERS, cpus=1, name="compare-warm")
    workers = pool.wait_ready()
    out["pool_ready_s"] = round(time.perf_counter() - started, 3)
    out["pool_workers"] = [f"{w.region}/{w.subdomain_id}/{w.node_id}" for w in workers]
    try:
        # 1. trivial tasks
        started = time.perf_counter()
        _check_tasks("dsdk warm (warm-up)", dsdk.gather(pool.map(tasks.inc, range(size.tasks))), want)
        warmup = time.perf_counter() - started
        samples, calls = [], []
        for _ in range(size.runs):
            before = pool.stats()
            started = time.perf_counter()
            got = dsdk.gather(pool.map(tasks.inc, range(size.tasks)))
            samples.append(time.perf_counter() - started)
            _check_tasks("dsdk warm", got, want)
            # the workers' own call counters: every call really ran on a worker
            calls.append(pool.stats().calls - before.calls)
        if any(c != size.tasks for c in calls):
            raise Mismatch(f"dsdk warm: the workers counted {calls} calls per run, not {size.tasks}")
        out["tasks_warm"] = {**_series(samples), "warmup_s": round(warmup, 4), "worker_calls_per_run": calls}
        # 2. map-reduce through the dataset API on warm workers (persistent shards on the nodes'
        #    disks; no job started): Dataset.create(..., pool=) then ds.map(..., pool=).reduce()
        dpool = client.pool(WORKERS, cpus=1, distinct_nodes=True, name="compare-warm-data")
        try:
            dpool.wait_ready()
            rows = []
            for run in range(size.runs + 1):  # run 0: the warm-up
                row = _dsdk_dataset_warm(dsdk, client, dpool, size, want, run)
                if run:
                    rows.append(row)
                else:
                    warmup = row["total"]
            out["mapreduce_warm"] = {
                "how": "Dataset.create(name, fn, shards, replicas=1, pool=warm) (persistent, on the nodes' "
                "disks) then ds.map(moments, pool=warm).reduce(combine); a warm pool of 2 workers on "
                "distinct nodes",
                "create": _series([r["create"] for r in rows]),
                "map": _series([r["map"] for r in rows]),
                "total": _series([r["total"] for r in rows]),
                "warmup_s": round(warmup, 4),
                "stats_per_run": [r["stats"] for r in rows],
                "stats": rows[-1]["stats"],
            }
        finally:
            dpool.close()
        # 3. the same in the warm workers' memory only (no disk): the building blocks underneath
        try:
            from dsdk._worker import ObjArg
        except ImportError as exc:  # an internal name: say so rather than fail the whole part
            out["mapreduce_warm_memory"] = {"skipped": f"dsdk._worker.ObjArg not importable: {exc}"}
            return
        rows = []
        for run in range(size.runs + 1):  # run 0: the warm-up
            row = _dsdk_pool_mapreduce(dsdk, pool, workers, ObjArg, size, want, run)
            if run:
                rows.append(row)
            else:
                warmup = row["total"]
        out["mapreduce_warm_memory"] = {
            "how": "Pool.call(make_shard, i, keep=KEY, worker=w) then Pool.call(moments, ObjArg(KEY), worker=w)",
            "create": _series([r["create"] for r in rows]),
            "map": _series([r["map"] for r in rows]),
            "total": _series([r["total"] for r in rows]),
            "warmup_s": round(warmup, 4),
            "stats_per_run": [r["stats"] for r in rows],
            "stats": rows[-1]["stats"],
        }
    finally:
        pool.close()


def _dsdk_dataset_warm(
    dsdk: Any, client: Any, pool: Any, size: Size, want: Expected, run: int
) -> dict[str, Any]:
    name = f"compare-warm-{os.getpid()}-{run}"
    maker = tasks.ShardMaker(size.shard_elems)
    started = time.perf_counter()
    ds = dsdk.Dataset.create(name, maker, size.shards, replicas=1, client=client, pool=pool)
    created = time.perf_counter()
    job = ds.map(tasks.moments, pool=pool)
    value = job.reduce(tasks.combine)
    done = time.perf_counter()
    _check_moments("dsdk warm Dataset map-reduce", value, want)
    ds.delete(pool=pool)
    return {
        "create": created - started,
        "map": done - created,
        "total": done - started,
        "stats": _stats_json(job.stats),
    }


def _dsdk_pool_mapreduce(
    dsdk: Any, pool: Any, workers: list[Any], obj_arg: Any, size: Size, want: Expected, run: int
) -> dict[str, Any]:
    keys = [f"compare/{run}/{i}" for i in range(size.shards)]
    where = [workers[i % len(workers)] for i in range(size.shards)]
    before = pool.stats()
    started = time.perf_counter()
    dsdk.gather(
        [
            pool.call(tasks.make_shard, i, size.shard_elems, keep=keys[i], worker=where[i])
            for i in range(size.shards)
        ]
    )
    created = time.perf_counter()
    parts = dsdk.gather(
        [pool.call(tasks.moments, obj_arg(keys[i]), worker=where[i]) for i in range(size.shards)]
    )
    value = tasks.reduce_all(parts)
    done = time.perf_counter()
    _check_moments("dsdk warm map-reduce", value, want)
    stats = _stats_delta(before, pool.stats())
    for w in workers:
        pool.free(w, [k for k, x in zip(keys, where, strict=True) if x is w])
    return {"create": created - started, "map": done - created, "total": done - started, "stats": stats}


def _dsdk_cold(dsdk: Any, client: Any, size: Size, want: Expected, out: dict[str, Any]) -> None:
    samples, idle, tasks_run = [], [], []
    for _ in range(size.runs):
        started = time.perf_counter()
        got = dsdk.gather(client.map(tasks.inc, range(size.tasks), workers=WORKERS, cpus=1))
        samples.append(time.perf_counter() - started)
        _check_tasks("dsdk cold", got, want)
        idle.append(_wait_idle(client))  # the job ends (untimed)
        job = client.job(client.jobs(limit=1)[0].job_id)  # the newest: this map's
        tasks_run.append(f"{job.name}: {len(job.tasks)} tasks, {job.state.value}")
    out["tasks_cold"] = {**_series(samples), "then_idle": idle, "jobs": tasks_run}


def _dsdk_dataset(dsdk: Any, client: Any, size: Size, want: Expected, out: dict[str, Any]) -> None:
    create, mapped, total, stats, create_stats, holders, deletes = [], [], [], [], [], [], []
    maker = tasks.ShardMaker(size.shard_elems)
    for run in range(size.runs):
        name = f"compare-{os.getpid()}-{run}"
        started = time.perf_counter()
        ds = dsdk.Dataset.create(name, maker, size.shards, replicas=1, client=client)
        created = time.perf_counter()
        last = getattr(dsdk, "last_stats", None)  # newer DSDKs: the writers' data-plane figures
        create_stats.append(_stats_json(last()) if callable(last) else None)
        job = ds.map(tasks.moments)
        value = job.reduce(tasks.combine)
        done = time.perf_counter()
        create.append(created - started)
        mapped.append(done - created)
        total.append(done - started)
        stats.append(_stats_json(job.stats))
        holders.append(len({r.node_id for s in ds.shards for r in s.replicas}))
        _check_moments("dsdk Dataset map-reduce", value, want)
        t = time.perf_counter()
        unreached = ds.delete()
        idle = _wait_idle(client)
        deletes.append({"delete_s": round(time.perf_counter() - t, 3), "then_idle": idle})
        if unreached:
            raise RuntimeError(f"dataset {name}: copies left on {unreached}")
    out["mapreduce_dataset"] = {
        "how": "Dataset.create(name, fn, shards, replicas=1) (persistent, on the nodes' disks) then "
        "ds.map(moments).reduce(combine)",
        "create": _series(create),
        "map": _series(mapped),
        "total": _series(total),
        "nodes_holding_shards": holders,
        "stats_per_run": stats,
        "stats": stats[-1] if stats else None,
        "create_stats_per_run": create_stats,
        "delete_untimed": deletes,
    }


# -- Ray -------------------------------------------------------------------------------------------


def _ray(size: Size, want: Expected, out: dict[str, Any]) -> None:
    import ray
    import ray.cloudpickle

    out["version"] = ray.__version__
    ray.cloudpickle.register_pickle_by_value(tasks)
    started = time.perf_counter()
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
    out["startup_s"] = round(time.perf_counter() - started, 3)  # ray.init()
    try:
        inc = ray.remote(tasks.inc)
        make = ray.remote(tasks.make_shard)
        moments = ray.remote(tasks.moments)

        def trivial() -> list[int]:
            return list(ray.get([inc.remote(x) for x in range(size.tasks)]))

        def mapreduce() -> dict[str, Any]:
            started = time.perf_counter()
            refs = [make.remote(i, size.shard_elems) for i in range(size.shards)]
            ray.wait(refs, num_returns=len(refs), fetch_local=False)
            created = time.perf_counter()
            value = tasks.reduce_all(ray.get([moments.remote(r) for r in refs]))
            done = time.perf_counter()
            _check_moments("ray map-reduce", value, want)
            del refs
            return {"create": created - started, "map": done - created, "total": done - started}

        def pipelined() -> float:
            started = time.perf_counter()
            refs = [moments.remote(make.remote(i, size.shard_elems)) for i in range(size.shards)]
            value = tasks.reduce_all(ray.get(refs))
            elapsed = time.perf_counter() - started
            _check_moments("ray pipelined map-reduce", value, want)
            return elapsed

        _framework_runs("ray", size, want, out, trivial, mapreduce, pipelined, lambda: None)
        out["mapreduce"]["bytes"] = "not measured (Ray exposes no cheap per-workload transfer counter)"
    finally:
        started = time.perf_counter()
        ray.shutdown()
        out["teardown_s"] = round(time.perf_counter() - started, 3)


# -- Dask ------------------------------------------------------------------------------------------


def _dask(size: Size, want: Expected, out: dict[str, Any]) -> None:
    import dask
    import distributed

    out["version"] = f"dask {dask.__version__}, distributed {distributed.__version__}"
    started = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    client.wait_for_workers(WORKERS)
    out["startup_s"] = round(time.perf_counter() - started, 3)  # LocalCluster + Client
    try:

        def trivial() -> list[int]:
            return list(client.gather(client.map(tasks.inc, range(size.tasks), pure=False)))

        def mapreduce() -> dict[str, Any]:
            started = time.perf_counter()
            shards = client.map(tasks.make_shard, range(size.shards), n=size.shard_elems, pure=False)
            distributed.wait(shards)
            created = time.perf_counter()
            value = tasks.reduce_all(client.gather(client.map(tasks.moments, shards, pure=False)))
            done = time.perf_counter()
            _check_moments("dask map-reduce", value, want)
            del shards
            return {"create": created - started, "map": done - created, "total": done - started}

        def pipelined() -> float:
            started = time.perf_counter()
            shards = client.map(tasks.make_shard, range(size.shards), n=size.shard_elems, pure=False)
            value = tasks.reduce_all(client.gather(client.map(tasks.moments, shards, pure=False)))
            elapsed = time.perf_counter() - started
            _check_moments("dask pipelined map-reduce", value, want)
            del shards
            return elapsed

        def transferred() -> int:
            per = client.run(lambda dask_worker: getattr(dask_worker, "transfer_outgoing_bytes_total", 0))
            return int(sum(per.values()))

        _framework_runs("dask", size, want, out, trivial, mapreduce, pipelined, transferred)
    finally:
        started = time.perf_counter()
        client.close()
        cluster.close()
        out["teardown_s"] = round(time.perf_counter() - started, 3)


def _framework_runs(
    name: str,
    size: Size,
    want: Expected,
    out: dict[str, Any],
    trivial: Callable[[], list[int]],
    mapreduce: Callable[[], dict[str, Any]],
    pipelined: Callable[[], float],
    transferred: Callable[[], int | None],
) -> None:
    """Ray's and Dask's runs: one untimed warm-up of each workload, then ``size.runs`` timed."""
    started = time.perf_counter()
    _check_tasks(f"{name} (warm-up)", trivial(), want)
    warmup = time.perf_counter() - started
    samples = []
    for _ in range(size.runs):
        started = time.perf_counter()
        got = trivial()
        samples.append(time.perf_counter() - started)
        _check_tasks(name, got, want)
    out["tasks_warm"] = {**_series(samples), "warmup_s": round(warmup, 4)}
    mr_warmup = mapreduce()["total"]
    pipelined()
    rows, piped, moved = [], [], []
    for _ in range(size.runs):
        before = transferred()
        rows.append(mapreduce())
        after = transferred()
        moved.append(None if before is None or after is None else after - before)
        piped.append(pipelined())
    out["mapreduce"] = {
        "create": _series([r["create"] for r in rows]),
        "map": _series([r["map"] for r in rows]),
        "total": _series([r["total"] for r in rows]),
        "pipelined": _series(piped),
        "warmup_s": round(mr_warmup, 4),
    }
    if any(m is not None for m in moved):
        out["mapreduce"]["bytes"] = {"between_workers_per_run": moved, "between_workers": moved[-1]}


# -- the table -------------------------------------------------------------------------------------


def _med(d: dict[str, Any] | None, *path: str) -> float | None:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    if isinstance(d, dict):
        value = d.get("median_s")
        return float(value) if value is not None else None
    return None


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _dsdk_bytes(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    return (
        f"{_bytes(stats['bytes_client'])} / {_bytes(stats['bytes_between_nodes'])} / "
        f"{_bytes(stats['bytes_between_domains'])}"
    )


def table(results: dict[str, Any]) -> str:
    """The side-by-side table of the medians (seconds), ratios DSDK / other."""
    size = Size(**results["config"])
    fw = results["frameworks"]
    d = fw.get("dsdk", {})
    d2 = fw.get("dsdk_two_node")
    r, k = fw.get("ray", {}), fw.get("dask", {})
    cols = (
        ["DSDK warm", "DSDK cold"]
        + (["cold 2 nodes"] if d2 else [])
        + ["Ray", "Dask", "DSDK/Ray", "DSDK/Dask"]
    )
    rows: list[tuple[str, list[str]]] = []

    def row(
        label: str,
        warm: float | None,
        cold: float | None,
        cold2: float | None,
        ray: float | None,
        dask: float | None,
    ) -> None:
        cells = [_fmt(warm), _fmt(cold)] + ([_fmt(cold2)] if d2 else []) + [_fmt(ray), _fmt(dask)]
        for other in (ray, dask):
            both = [_ratio(warm, other) if warm is not None else "", ""]
            both[1] = f"cold {_ratio(cold, other)}" if cold is not None else ""
            cells.append(" / ".join(c for c in both if c) if other and any(both) else "-")
        rows.append((label, cells))

    row(
        f"{size.tasks:,} trivial tasks (s)",
        _med(d, "tasks_warm"), _med(d, "tasks_cold"), _med(d2, "tasks_cold"),
        _med(r, "tasks_warm"), _med(k, "tasks_warm"),
    )  # fmt: skip
    label = f"map-reduce {size.label()}"
    for part, text in (("create", "create"), ("map", "map+reduce only"), ("total", "create+map")):
        row(
            f"{label}: {text} (s)",
            _med(d, "mapreduce_warm", part), _med(d, "mapreduce_dataset", part),
            _med(d2, "mapreduce_dataset", part),
            _med(r, "mapreduce", part), _med(k, "mapreduce", part),
        )  # fmt: skip
    row(
        f"{label}: pipelined (s)", None, None, None,
        _med(r, "mapreduce", "pipelined"), _med(k, "mapreduce", "pipelined"),
    )  # fmt: skip
    for i in range(3 if d2 else 2):
        rows[-1][1][i] = "n/a"  # DSDK: no pipelined form (create is a blocking, persistent write)
    kb = k.get("mapreduce", {}).get("bytes") if isinstance(k.get("mapreduce"), dict) else None
    byte_cells = [
        _dsdk_bytes((d.get("mapreduce_warm") or {}).get("stats")),
        _dsdk_bytes((d.get("mapreduce_dataset") or {}).get("stats")),
    ]
    if d2:
        byte_cells.append(_dsdk_bytes((d2.get("mapreduce_dataset") or {}).get("stats")))
    byte_cells += [
        "not measured" if r.get("mapreduce") else "-",
        f"- / {_bytes(kb['between_workers'])} / -" if isinstance(kb, dict) else "-",
        "",
        "",
    ]
    rows.append(("  bytes client / between nodes / domains", byte_cells))
    start = [_fmt(d.get("startup_s")), ""] + ([_fmt(d2.get("startup_s"))] if d2 else [])
    start += [_fmt(r.get("startup_s")), _fmt(k.get("startup_s")), "", ""]
    rows.append(("start-up, once (s)", start))
    widths = [max(len(c), *(len(cells[i]) for _, cells in rows)) for i, c in enumerate(cols)]
    lw = max(len(label) for label, _ in rows)
    lines = ["workload".ljust(lw) + "  " + "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    for lab, cells in rows:
        lines.append(lab.ljust(lw) + "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    notes = [
        f"medians of {size.runs} run(s), seconds; DSDK/Ray, DSDK/Dask: DSDK warm / DSDK cold (default"
        " topology) over the other; below 1 = the DSDK is faster",
        "DSDK warm: a ready 2-worker pool (map-reduce: the Dataset API with pool=, shards persistent on"
        " the nodes' disks; the in-memory variant is in the JSON as mapreduce_warm_memory);"
        " DSDK cold: job start included (tasks: client.map; map-reduce: Dataset.create, persistent"
        " on the nodes' disks, then Dataset.map().reduce(), each starting its job)",
        "start-up: DSDK domainctl up --detach"
        + (f" (then a ready pool: {d['pool_ready_s']:.2f} s)" if d.get("pool_ready_s") is not None else "")
        + "; Ray ray.init(); Dask LocalCluster + Client",
        "bytes: DSDK JobStats (client / between nodes / between domains); Dask: worker-to-worker"
        " transfers; Ray: not measured",
    ]
    if d.get("topology"):
        holders = (d.get("mapreduce_dataset") or {}).get("nodes_holding_shards") or []
        notes.append(
            f"DSDK cold ran on the {d['topology']} topology ({d.get('nodes')} nodes: Dataset jobs used "
            f"{max(holders) if holders else '?'} worker processes)"
            + ("; 'cold 2 nodes': 1 agent per region, 2 worker processes like Ray/Dask" if d2 else "")
        )
    for key, text in (("ray", "Ray"), ("dask", "Dask"), ("dsdk", "DSDK"), ("dsdk_two_node", "DSDK 2 nodes")):
        info = fw.get(key, {})
        if info.get("skipped"):
            notes.append(f"{text}: {info['skipped']}")
        if info.get("error"):
            notes.append(f"{text}: ERROR {info['error']}")
    return "\n".join(lines + ["  " + n for n in notes])


# -- running ---------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _fs_type(path: str) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts; '?' elsewhere)."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and path.startswith(fields[1]) and len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


def _memory_gib() -> float | None:
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _available(name: str) -> bool:
    import importlib.util

    module = {"ray": "ray", "dask": "distributed", "dsdk": "dsdk"}[name]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def run(
    *,
    smoke: bool,
    out: pathlib.Path,
    runs: int | None = None,
    only: Sequence[str] | None = None,
    topologies: Sequence[str] | None = None,
) -> dict[str, Any]:
    size = SMOKE if smoke else FULL
    if runs is not None:
        size = dataclasses.replace(size, runs=runs)
    chosen = list(only or FRAMEWORKS)
    topos = list(topologies or (["default"] if smoke else ["default", "two-node"]))
    started = time.monotonic()
    _ship_by_value()
    want = _expected(size)
    results: dict[str, Any] = {
        "benchmark": "compare",
        "smoke": smoke,
        "config": dataclasses.asdict(size),
        "workers_per_framework": WORKERS,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "executable": sys.executable,
            "memory_gib": _memory_gib(),
            # where the DSDK's federation (its agents' datasets directories) lives
            "tempdir": f"{tempfile.gettempdir()} ({_fs_type(os.path.realpath(tempfile.gettempdir()))})",
        },
        "versions": {
            "domainos": _version("domainos"),
            "numpy": _version("numpy"),
            "cloudpickle": _version("cloudpickle"),
            "ray": _version("ray"),
            "dask": _version("dask"),
            "distributed": _version("distributed"),
        },
        "reference_figures_this_machine": REFERENCE,
        "expected": _exact_json(want.moments),
        "frameworks": {},
    }
    fw: dict[str, Any] = results["frameworks"]
    path = out / ("compare-smoke.json" if smoke else "compare.json")
    for name in chosen:
        parts = (
            [(f"dsdk{'' if t == 'default' else '_' + t.replace('-', '_')}", t) for t in topos]
            if name == "dsdk"
            else [(name, "")]
        )
        for key, topo in parts:
            entry: dict[str, Any] = {}
            fw[key] = entry
            if not _available(name):
                entry["skipped"] = MISSING.get(name, f"{name} not installed")
                print(f"{key}: skipped: {entry['skipped']}", flush=True)
                continue
            print(f"{key}: running{f' ({topo} topology)' if topo else ''} ...", flush=True)
            if name == "dsdk":
                _guard(key, entry, functools.partial(_dsdk, size, want, topo))
            elif name == "ray":
                _guard(key, entry, lambda o: _ray(size, want, o))
            else:
                _guard(key, entry, lambda o: _dask(size, want, o))
            print(f"{key}: done in {entry.get('wall_s')} s", flush=True)
            path.write_text(json.dumps(results, indent=2))  # what is measured so far
    failed = {k: v["error"] for k, v in fw.items() if v.get("error")}
    results["ok"] = not failed
    results["failures"] = failed
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["table"] = table(results).splitlines()
    path.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    print(f"wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="100 tasks, 8 shards of 256 KiB, 1 run")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    p.add_argument("--runs", type=int, help="timed runs per figure (default 5; smoke 1)")
    p.add_argument("--only", action="append", choices=FRAMEWORKS, help="only this framework (repeatable)")
    p.add_argument(
        "--topology",
        action="append",
        choices=sorted(TOPOLOGIES),
        help="the DSDK's federation (repeatable; default: default and two-node; smoke: default)",
    )
    ns = p.parse_args(argv)
    if ns.runs is not None and ns.runs < 1:
        p.error("--runs must be at least 1")
    ns.out.mkdir(parents=True, exist_ok=True)
    results = run(smoke=ns.smoke, out=ns.out, runs=ns.runs, only=ns.only, topologies=ns.topology)
    if not results["ok"]:
        print(f"FAILED: {results['failures']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
