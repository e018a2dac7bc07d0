"""Federation: one real master, 10 then 100 simulated sub-domains × 10,000 nodes (issue 5, measurement 4).

The master runs as its own process (``python -m master_domain``, memory store, insecure, its own
``/metrics``). The sub-domains are the summary simulator (:class:`sub_domain._sim.SubDomainFleet`)
in this process, on the background loop of :mod:`bench.scale` (``FleetThread``): every simulated
sub-domain speaks the real sub-domain → master protocol on its own stream, stands for 10,000
8 × H100 nodes whose capacity it accounts (a placement that no longer fits is REJECTED: a
mis-dispatch), and runs its tasks for their ``DOMAINOS_SIM_DURATION``.

A seeded, open-loop stream of jobs goes in through the master's client API (the DSDK, an admin
token from the master's bootstrap file) at a fixed rate, the same for both sizes: plain jobs of
1-GPU tasks, plain jobs of 8-GPU tasks, and gangs of 8-GPU tasks (all or nothing, placed by
two-phase reservations). Per size, after all sub-domains are connected and every node is counted
ready, each run is a warm-up then a window over which it measures:

* **decision latency** p50/p99: the master's ``domainos_master_schedule_decision_seconds``
  histogram, from the bucket deltas over the window (linear inside a bucket; the bucket bound is
  reported beside it);
* **dispatch throughput**: tasks placed per second (``domainos_master_tasks_placed`` delta), and
  ``PlaceTask`` commands the sub-domains accepted per second;
* **submit → accepted by the sub-domain** p50/p99: from just before ``SubmitJob`` left this process
  to the ``PlaceTask`` arriving at the simulated sub-domain that accepted it (first accepted
  attempt; plain tasks only, gang tasks are placed by reservations);
* **master CPU cores** (user + system seconds / wall) and **RSS** (psutil on its pid);
* **mis-dispatch rate**: placements the sub-domains refused / placements they were sent (their
  count, ``PlaceTask`` alone or batched); for gangs apart, reservations refused / sent (the
  master's ``domainos_master_reservations``), with ``domainos_master_misdispatch`` beside them.

Figures in the JSON are medians over the runs (``runs`` per size; each run's own figures are kept
too). Full size: 10 × 1,000, 10 × 10,000 and 100 × 10,000 nodes (the master's cost against node
count, then against sub-domain count), 3 runs each, at 40 jobs/s (~230 tasks/s, 5 s tasks: the big
federations stay almost empty, so mis-dispatch there says little); then ``tight``: 10 × 34 nodes
(2,720 GPUs) that the same stream keeps ~95% busy, where placements race stale summaries and tasks
queue. ``--smoke``: 3 × 200 nodes, one run, a short window (CI runs it; timings are not asserted).

Run it with ``python -m bench.federation`` (``--smoke``; ``--subdomains M [--nodes N]`` to pick
sizes). Results go to ``federation.json`` (``federation-smoke.json`` for ``--smoke``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.gang import scrape
from bench.scale import PROFILE, FleetThread, SubDomain, _cpu_s, _lat, _pct

DECISION = "domainos_master_schedule_decision_seconds"
_BUCKET = re.compile(rf'^{DECISION}_bucket\{{le="([^"]+)"\}}$')
#: The stream's mix (share of jobs): kind -> (replicas, GPUs per task, gang).
MIX: dict[str, tuple[float, int, int, bool]] = {
    "gpu1": (0.6, 8, 1, False),
    "gpu8": (0.3, 2, 8, False),
    "gang": (0.1, 4, 8, True),
}


@dataclass(frozen=True)
class Size:
    """How big one benchmark is."""

    #: The federations measured, (sub-domains, nodes each), one master each.
    federations: tuple[tuple[int, int], ...]
    runs: int
    #: An extra federation of (sub-domains, nodes each) small enough for the same stream to fill
    #: it (~95% of its GPUs): the mis-dispatch rate under pressure (None: not run).
    tight: tuple[int, int] | None
    jobs_per_s: float
    task_s: float
    warmup_s: float
    window_s: float
    ready_timeout_s: float = 300.0
    seed: int = 4


SMOKE = Size(
    federations=((3, 200),), runs=1, tight=None, jobs_per_s=10.0, task_s=1.0, warmup_s=1.0, window_s=4.0
)
FULL = Size(
    federations=((10, 1_000), (10, 10_000), (100, 10_000)),
    runs=3,
    tight=(10, 34),
    jobs_per_s=40.0,
    task_s=5.0,
    warmup_s=5.0,
    window_s=20.0,
)


# -- the master process ----------------------------------------------------------------------------


class Master(SubDomain):
    """``python -m master_domain`` in its own process (memory store, insecure), JSON logs to a file."""

    module = "master_domain"

    def __init__(self, workdir: pathlib.Path) -> None:
        super().__init__(workdir, 1, {})
        self.config = workdir / "master.yaml"
        self.token_file = workdir / "admin.token"
        self.log_path = workdir / "master.log"
        lines = [
            "id: bench-master",
            "listen: 127.0.0.1:0",
            "metrics_listen: 127.0.0.1:0",
            "store: memory://",
            "insecure: true",
            "log_level: warning",
            "log_format: json",
            f"bootstrap_token_file: {self.token_file}",
        ]
        self.config.write_text("\n".join(lines) + "\n")

    def metrics_now(self) -> dict[str, float]:
        return scrape(f"http://{self.metrics}/metrics")


class SimThread(FleetThread):
    """The summary simulator on :mod:`bench.scale`'s fleet loop; records every ``PlaceTask``."""

    def __init__(self, master: str, subdomains: int, nodes: int) -> None:
        super().__init__(master, nodes, 0)
        self._subdomains = subdomains
        #: (job id, task index, attempt, unix time the PlaceTask arrived, accepted)
        self.placements: list[tuple[str, int, int, float, bool]] = []

    async def _start(self) -> None:
        from node_agent._hardware import SimulatedHardware
        from node_agent._sim import profile
        from sub_domain._sim import SubDomainFleet

        def on_place(sd: str, spec: Any, at: float, ok: bool) -> None:
            ref = spec.ref
            self.placements.append((ref.job_id, ref.task_index, ref.attempt, at, ok))

        template = SimulatedHardware("template", profile(PROFILE)).inventory()
        self.fleet = SubDomainFleet(
            self._address, self._subdomains, self._nodes, template, prefix="fed", on_place=on_place
        )
        await self.fleet.start()


# -- measurements ----------------------------------------------------------------------------------


def _buckets(metrics: Mapping[str, float]) -> list[tuple[float, float]]:
    """The decision histogram's cumulative buckets, ``(upper bound, count)`` sorted."""
    out = []
    for key, value in metrics.items():
        m = _BUCKET.match(key)
        if m is not None:
            out.append((float(m.group(1)), value))
    return sorted(out)


def hist_quantile(before: Mapping[str, float], after: Mapping[str, float], q: float) -> tuple[float, float]:
    """Quantile ``q`` of the observations between two scrapes: (linear inside its bucket, the bucket's
    upper bound). ``(nan, nan)`` without observations."""
    b0 = dict(_buckets(before))
    rows = [(le, n - b0.get(le, 0.0)) for le, n in _buckets(after)]
    total = rows[-1][1] if rows else 0.0
    if total <= 0:
        return math.nan, math.nan
    want = q * total
    lo, below = 0.0, 0.0
    for le, cum in rows:
        if cum >= want:
            if le == float("inf"):
                return lo, le
            inside = cum - below
            frac = (want - below) / inside if inside > 0 else 1.0
            return lo + frac * (le - lo), le
        lo, below = le, cum
    return lo, float("inf")


class Stream:
    """The open-loop job stream (a thread submitting through the DSDK at ``jobs_per_s``)."""

    def __init__(self, client: Any, size: Size) -> None:
        self._client = client
        self._size = size
        self._rng = random.Random(size.seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-stream", daemon=True)
        #: job id -> (unix time before SubmitJob, kind)
        self.submitted: dict[str, tuple[float, str]] = {}
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _kind(self) -> str:
        x = self._rng.random()
        for kind, (share, *_rest) in MIX.items():
            if x < share:
                return kind
            x -= share
        return next(iter(MIX))

    def _run(self) -> None:
        period = 1.0 / self._size.jobs_per_s
        due = time.monotonic()
        env = {"DOMAINOS_SIM_DURATION": f"{self._size.task_s:g}"}
        while not self._stop.is_set():
            kind = self._kind()
            _, replicas, gpus, gang = MIX[kind]
            fields: dict[str, Any] = {
                "name": f"fed-{kind}",
                "replicas": replicas,
                "resources": {"cpus": 4 * gpus, "memory": f"{32 * gpus}Gi", "gpus": gpus},
                "env": env,
            }
            if gang:
                fields["gang"] = True
            at = time.time()
            try:
                job = self._client.run(["simulated-task"], **fields)
                self.submitted[job.job_id] = (at, kind)
            except Exception as exc:  # counted and shown; the stream goes on
                self.errors.append(str(exc)[:200])
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                due = time.monotonic()  # behind: do not burst to catch up


def _counter(metrics: Mapping[str, float], name: str, outcome: str | None = None) -> float:
    key = f"{name}_total" if outcome is None else f'{name}_total{{outcome="{outcome}"}}'
    return metrics.get(key, 0.0)


def _window(master: Master, sim: SimThread, stream: Stream, size: Size) -> dict[str, Any]:
    time.sleep(size.warmup_s)
    proc = psutil.Process(master.pid)
    me = psutil.Process()
    m0 = master.metrics_now()
    p0 = len(sim.placements)
    t_start = time.time()
    cpu0, mine0, t0 = _cpu_s(proc), _cpu_s(me), time.monotonic()
    rss_max = 0
    while time.monotonic() - t0 < size.window_s:
        rss_max = max(rss_max, proc.memory_info().rss)
        time.sleep(min(0.5, max(0.0, size.window_s - (time.monotonic() - t0))))
    cpu1, mine1, t1 = _cpu_s(proc), _cpu_s(me), time.monotonic()
    t_end = time.time()
    m1 = master.metrics_now()
    rss = proc.memory_info().rss
    wall = t1 - t0
    window_placements = sim.placements[p0:]
    refused = sum(1 for p in window_placements if not p[4])
    accepted = len(window_placements) - refused
    # Submit -> accepted: tasks of jobs submitted inside the window, first accepted attempt.
    first: dict[tuple[str, int], float] = {}
    for job_id, index, _attempt, at, ok in sim.placements:
        if ok:
            first.setdefault((job_id, index), at)
    latencies = []
    expected = 0
    submitted = list(stream.submitted.items())
    for job_id, (at, kind) in submitted:
        if not t_start <= at < t_end or MIX[kind][3]:
            continue
        replicas = MIX[kind][1]
        expected += replicas
        latencies += [first[(job_id, i)] - at for i in range(replicas) if (job_id, i) in first]
    p50, p50_le = hist_quantile(m0, m1, 0.50)
    p99, p99_le = hist_quantile(m0, m1, 0.99)
    decisions = m1.get(f"{DECISION}_count", 0.0) - m0.get(f"{DECISION}_count", 0.0)
    placed = _counter(m1, "domainos_master_tasks_placed") - _counter(m0, "domainos_master_tasks_placed")
    res = {
        o: _counter(m1, "domainos_master_reservations", o) - _counter(m0, "domainos_master_reservations", o)
        for o in ("sent", "accepted", "refused", "expired")
    }
    return {
        "window_s": round(wall, 2),
        "jobs_submitted": sum(1 for _, (at, _) in submitted if t_start <= at < t_end),
        "decisions": int(decisions),
        "decision_p50_ms": round(p50 * 1e3, 4),
        "decision_p50_bucket_le_ms": p50_le * 1e3,
        "decision_p99_ms": round(p99 * 1e3, 4),
        "decision_p99_bucket_le_ms": p99_le * 1e3,
        "tasks_placed_per_s": round(placed / wall, 1),
        "placetask_accepted_per_s": round(accepted / wall, 1),
        "accepted_latency_s": _lat(latencies, expected) | _ms(latencies),
        "master_cpu_cores": round((cpu1 - cpu0) / wall, 3),
        "master_rss_mib": round(rss / 2**20, 1),
        "master_rss_max_mib": round(max(rss, rss_max) / 2**20, 1),
        "bench_process_cpu_cores": round((mine1 - mine0) / wall, 3),
        "placetask_commands": len(window_placements),
        "placetask_refused": refused,
        "misdispatch_rate": round(refused / len(window_placements), 4) if window_placements else 0.0,
        "reservation_misdispatch_rate": round(res["refused"] / res["sent"], 4) if res["sent"] else 0.0,
        "master_misdispatch": int(
            _counter(m1, "domainos_master_misdispatch") - _counter(m0, "domainos_master_misdispatch")
        ),
        "reservations": {k: int(v) for k, v in res.items()},
    }


def _ms(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50_ms": round(_pct(values, 0.5) * 1e3, 2), "p99_ms": round(_pct(values, 0.99) * 1e3, 2)}


def _wait_ready(master: Master, subdomains: int, nodes: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        m = master.metrics_now()
        if (
            m.get('domainos_master_subdomains{connected="true"}', 0) >= subdomains
            and m.get("domainos_master_nodes_ready", 0) >= subdomains * nodes
        ):
            return time.monotonic() - started
        if master.proc is not None and master.proc.poll() is not None:
            raise RuntimeError(f"master exited {master.proc.returncode}")
        time.sleep(0.25)
    raise RuntimeError(f"{subdomains} sub-domains x {nodes} nodes not ready after {timeout:.0f} s")


def _wait_detached(master: Master, timeout: float = 10.0) -> None:
    """Until the master has handled every stream's end (stopping it sooner races its store writes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if master.metrics_now().get('domainos_master_subdomains{connected="true"}', 0) == 0:
            return
        time.sleep(0.1)


_MEDIAN_KEYS = (
    "decision_p50_ms",
    "decision_p99_ms",
    "tasks_placed_per_s",
    "placetask_accepted_per_s",
    "master_cpu_cores",
    "master_rss_mib",
    "master_rss_max_mib",
    "bench_process_cpu_cores",
    "misdispatch_rate",
    "reservation_misdispatch_rate",
)


def _median(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 4) for k in _MEDIAN_KEYS}
    for k in ("p50_ms", "p99_ms"):
        vals = [r["accepted_latency_s"][k] for r in runs if k in r["accepted_latency_s"]]
        out[f"accepted_{k}"] = round(statistics.median(vals), 2) if vals else None
    return out


def _size_run(tmp: pathlib.Path, subdomains: int, nodes: int, size: Size) -> dict[str, Any]:
    import dsdk

    workdir = tmp / f"m{subdomains}-n{nodes}"
    workdir.mkdir()
    master = Master(workdir)
    master.start()
    row: dict[str, Any] = {"subdomains": subdomains, "nodes_per_subdomain": nodes}
    try:
        token = master.token_file.read_text().strip()
        sim = SimThread(master.listen, subdomains, nodes)
        with sim:
            row["ready_after_s"] = round(_wait_ready(master, subdomains, nodes, size.ready_timeout_s), 2)
            idle = psutil.Process(master.pid)
            c0, w0 = _cpu_s(idle), time.monotonic()
            time.sleep(min(3.0, size.window_s))
            row["idle_master_cpu_cores"] = round((_cpu_s(idle) - c0) / (time.monotonic() - w0), 3)
            row["idle_master_rss_mib"] = round(idle.memory_info().rss / 2**20, 1)
            with dsdk.connect(master.listen, insecure=True, token=token) as client:
                stream = Stream(client, size)
                stream.start()
                try:
                    row["runs"] = []
                    for i in range(size.runs):
                        r = _window(master, sim, stream, size)
                        row["runs"].append(r)
                        lat = r["accepted_latency_s"]
                        print(
                            f"M={subdomains:>3} N={nodes} run {i + 1}: decision p50 {r['decision_p50_ms']:.3f} ms "
                            f"p99 {r['decision_p99_ms']:.3f} ms (≤{r['decision_p99_bucket_le_ms']:g}), "
                            f"{r['tasks_placed_per_s']:.0f} tasks/s, accepted p50 {lat.get('p50_ms')} ms "
                            f"p99 {lat.get('p99_ms')} ms, master {r['master_cpu_cores']:.2f} cores "
                            f"{r['master_rss_mib']:.0f} MiB, mis-dispatch {r['misdispatch_rate']:.4f}",
                            flush=True,
                        )
                finally:
                    stream.stop()
            row["stream_errors"] = stream.errors[:20]
            row["stream_error_count"] = len(stream.errors)
            row["fleet"] = asdict(sim.run(lambda: sim.fleet.stats()))
        _wait_detached(master)
        row["median"] = _median(row["runs"])
    finally:
        master.stop()
        row["problems"] = master.problems()
    return row


def run(*, smoke: bool, out: pathlib.Path, size: Size | None = None) -> dict[str, Any]:
    size = size or (SMOKE if smoke else FULL)
    results: dict[str, Any] = {
        "benchmark": "federation",
        "smoke": smoke,
        "config": {**asdict(size), "profile": PROFILE, "mix": {k: list(v) for k, v in MIX.items()}},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "sizes": [],
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="domainos-federation-") as tmpdir:
        for m, n in size.federations:
            results["sizes"].append(_size_run(pathlib.Path(tmpdir), m, n, size))
        if size.tight is not None:
            results["tight"] = _size_run(pathlib.Path(tmpdir), *size.tight, size)
    results["wall_s"] = round(time.monotonic() - started, 1)
    path = out / ("federation-smoke.json" if smoke else "federation.json")
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.federation", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    p.add_argument("--subdomains", type=int, action="append", help="sub-domains of a federation (repeatable)")
    p.add_argument("--nodes", type=int, default=10_000, help="nodes per sub-domain with --subdomains")
    p.add_argument("--runs", type=int, help="runs per size (default 3)")
    p.add_argument("--window", type=float, help="measurement window (s)")
    p.add_argument("--rate", type=float, help="jobs submitted per second")
    p.add_argument("--no-tight", action="store_true", help="skip the small federation the stream fills")
    ns = p.parse_args(argv)
    base = SMOKE if ns.smoke else FULL
    size = Size(
        federations=tuple((m, ns.nodes) for m in ns.subdomains) if ns.subdomains else base.federations,
        runs=ns.runs or base.runs,
        tight=None if ns.no_tight else base.tight,
        jobs_per_s=ns.rate or base.jobs_per_s,
        task_s=base.task_s,
        warmup_s=base.warmup_s,
        window_s=ns.window or base.window_s,
        ready_timeout_s=base.ready_timeout_s,
        seed=base.seed,
    )
    ns.out.mkdir(parents=True, exist_ok=True)
    run(smoke=ns.smoke, out=ns.out, size=size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
