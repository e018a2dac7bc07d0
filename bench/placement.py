"""Placement throughput per sub-domain (issue 5, measurement 3): submit -> the agent's start ack.

One real master (``python -m master_domain``, memory store, insecure), one real sub-domain
(``python -m sub_domain``, :class:`bench.scale.SubDomain`) connected to it, and a
:class:`node_agent._sim.Fleet` of N simulated 8 × H100 nodes on the sub-domain
(:class:`bench.scale.FleetThread`, in this process). Jobs are submitted through the DSDK (the
master's ``DomainControl.SubmitJob``), back to back, as a user with a batch would; three workloads,
each on a drained fleet:

* ``gpu1``: 1-GPU tasks (8 CPUs each), in jobs of ``replicas`` tasks;
* ``gpu8``: 8-GPU whole-node tasks (96 CPUs each), in jobs of ``replicas`` tasks;
* ``gang64``: gangs of 64 × 8-GPU tasks (``gang.min`` = 64: a 512-GPU job placed all or nothing,
  what a user training across 64 nodes submits), one job per gang.

Every task runs for an hour (``DOMAINOS_SIM_DURATION``), so none ends during the measurement. The
fleet records the monotonic time each task's ``StartTask`` reached its simulated agent
(``Fleet.start_times``; the agent answers it with RUNNING at once), so per task the latency is
that time minus the time its job's ``SubmitJob`` call began (same process, same clock). Reported
per workload and run: tasks/s = tasks / (last start - first submit), latency p50/p99/max, the submit
span, and CPU cores (CPU seconds / wall seconds over the same window) of the master, the
sub-domain and this process (the fleet and the client; psutil). After a workload every job is
cancelled and the run waits until the fleet runs nothing and a fresh summary reached the master.

Full size: 10,000 nodes; 20,000 1-GPU tasks (20 jobs × 1,000), 5,000 8-GPU tasks (5 × 1,000),
50 gangs of 64; 3 runs, the JSON's ``median`` is the per-workload median over them. Smoke: 200
nodes, small counts, one run. ``--py-spy DIR`` records a speedscope profile of the master and of
the sub-domain for each workload of the first run (needs ``py-spy`` and ptrace rights).

Run it with ``python -m bench --only placement`` or ``python -m bench.placement --help``. Results
go to ``placement.json`` (``placement-smoke.json`` for ``--smoke``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.scale import ROOT, FleetThread, SubDomain, _cpu_s, _lat, _wait_ready

#: Seconds every simulated task runs (longer than any measurement).
TASK_SECONDS = 3600
#: The fleet is polled this often for start acks.
POLL_S = 0.1
#: Given to the sub-domain: a node is suspected only after this long unheard (a placement burst
#: may stall its loop for seconds; false suspicions would turn into REJECTED placements).
DETECTION = {"silent_after_s": 15.0}


@dataclass(frozen=True)
class Workload:
    """One kind of submission: ``jobs`` jobs of ``replicas`` tasks of ``gpus`` GPUs each."""

    name: str
    gpus: int
    cpus: int
    jobs: int
    replicas: int
    gang: bool = False

    @property
    def tasks(self) -> int:
        return self.jobs * self.replicas

    def spec(self, j: int) -> dict[str, Any]:
        """The job spec a user would submit (the command is not run by the simulated agents)."""
        spec: dict[str, Any] = {
            "name": f"{self.name}-{j}",
            "command": ["sleep", str(TASK_SECONDS)],
            "replicas": self.replicas,
            "resources": {"cpus": self.cpus, "gpus": self.gpus},
            "env": {"DOMAINOS_SIM_DURATION": str(TASK_SECONDS)},
        }
        if self.gang:
            spec["gang"] = {"min": self.replicas}
        return spec


@dataclass(frozen=True)
class Size:
    """How big one benchmark is."""

    nodes: int
    workloads: tuple[Workload, ...]
    runs: int
    #: Longest wait for every task of a workload to start, and for a drain.
    place_timeout_s: float
    ready_timeout_s: float = 600.0
    seed: int = 5


SMOKE = Size(
    nodes=200,
    workloads=(
        Workload("gpu1", gpus=1, cpus=8, jobs=2, replicas=200),
        Workload("gpu8", gpus=8, cpus=96, jobs=2, replicas=50),
        Workload("gang64", gpus=8, cpus=96, jobs=2, replicas=64, gang=True),
    ),
    runs=1,
    place_timeout_s=30.0,
    ready_timeout_s=60.0,
)
FULL = Size(
    nodes=10_000,
    workloads=(
        Workload("gpu1", gpus=1, cpus=8, jobs=20, replicas=1_000),
        Workload("gpu8", gpus=8, cpus=96, jobs=5, replicas=1_000),
        Workload("gang64", gpus=8, cpus=96, jobs=50, replicas=64, gang=True),
    ),
    runs=3,
    place_timeout_s=600.0,
)


# -- the master process ----------------------------------------------------------------------------


class Master:
    """``python -m master_domain`` in its own process: memory store, insecure, an admin token file."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.ready_file = workdir / "master-ready.json"
        self.token_file = workdir / "admin.token"
        self.log_path = workdir / "master.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.listen = ""
        self.metrics = ""

    def start(self, timeout: float = 30.0) -> None:
        argv = [
            sys.executable, "-m", "master_domain", "--listen", "127.0.0.1:0", "--store", "memory://",
            "--metrics-listen", "127.0.0.1:0", "--log-level", "warning", "--log-format", "json",
            "--ready-file", str(self.ready_file), "--insecure",
            "--set", f"bootstrap_token_file={self.token_file}",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"master exited {self.proc.returncode}: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"master not ready after {timeout:.0f} s: {self.log_path.read_text()}")
            time.sleep(0.05)
        info = json.loads(self.ready_file.read_text())
        self.listen, self.metrics = info["listen"], info["metrics"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def metric(self, prefix: str) -> float:
        """The sum of the ``/metrics`` samples whose name (with labels) starts with ``prefix``."""
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(prefix):
                with contextlib.suppress(ValueError):
                    total += float(line.rpartition(" ")[2])
        return total

    def problems(self) -> list[str]:
        """Error lines and tracebacks in its log (the first 20)."""
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("level") in ("error", "critical") or "exc" in rec:
                    out.append(str(rec.get("msg", ""))[:300])
                continue
            if line.strip():
                out.append(line[:300])
        return out[:20]


@contextlib.contextmanager
def _profiled(pids: dict[str, int], out_dir: pathlib.Path | None, tag: str) -> Iterator[None]:
    """``py-spy record`` of each pid while the block runs (nothing when ``out_dir`` is None)."""
    if out_dir is None:
        yield
        return
    procs = []
    for name, pid in pids.items():
        path = out_dir / f"{name}-{tag}.speedscope.json"
        argv = ["py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "speedscope",
                "--output", str(path), "--nonblocking"]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)  # attached before the first submit
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


# -- one workload ----------------------------------------------------------------------------------


def _running(ft: FleetThread) -> int:
    return int(ft.run(lambda: sum(a.running for a in ft.fleet.agents.values())))


def _place(
    client: Any, master: Master, sd: SubDomain, ft: FleetThread, wl: Workload, size: Size
) -> tuple[dict[str, Any], list[str]]:
    """Submit ``wl``, wait until every task started; the figures and the job ids."""
    ft.run(lambda: setattr(ft.fleet, "start_times", {}))
    procs = {
        "master": psutil.Process(master.pid),
        "subdomain": psutil.Process(sd.pid),
        "fleet": psutil.Process(),
    }
    misdispatch0 = master.metric("domainos_master_misdispatch_total")
    cpu0 = {k: _cpu_s(p) for k, p in procs.items()}
    submitted: dict[str, float] = {}
    first = time.monotonic()
    for j in range(wl.jobs):
        at = time.monotonic()
        submitted[client.submit(wl.spec(j)).job_id] = at
    submit_span = time.monotonic() - first
    deadline = first + size.place_timeout_s
    starts: dict[tuple[str, int], float] = {}
    while time.monotonic() < deadline:
        got: dict[Any, float] = ft.run(lambda: dict(ft.fleet.start_times))
        for ref, t in got.items():
            if ref.job_id in submitted:
                key = (ref.job_id, ref.task_index)
                starts[key] = min(t, starts.get(key, t))
        if len(starts) >= wl.tasks:
            break
        time.sleep(POLL_S)
    end = time.monotonic()
    cpu1 = {k: _cpu_s(p) for k, p in procs.items()}
    last = max(starts.values(), default=first)
    span = last - first
    latencies = [t - submitted[job_id] for (job_id, _), t in starts.items()]
    row: dict[str, Any] = {
        "workload": wl.name,
        "tasks": wl.tasks,
        "started": len(starts),
        "submit_span_s": round(submit_span, 3),
        "span_s": round(span, 3),
        "tasks_per_s": round(len(starts) / span, 1) if span > 0 else 0.0,
        "latency_s": _lat(latencies, wl.tasks),
        "cpu_cores": {k: round((cpu1[k] - cpu0[k]) / (end - first), 3) for k in procs},
        "misdispatch": round(master.metric("domainos_master_misdispatch_total") - misdispatch0),
    }
    return row, list(submitted)


def _drain(client: Any, ft: FleetThread, job_ids: Sequence[str], timeout: float) -> float:
    """Cancel the jobs, wait until they are finished and the fleet runs nothing; seconds taken."""
    started = time.monotonic()
    for job_id in job_ids:
        client.cancel(job_id, reason="placement benchmark: next workload")
    deadline = started + timeout
    pending = set(job_ids)
    while time.monotonic() < deadline:
        pending = {j for j in pending if not client.job(j).terminal}
        if not pending and _running(ft) == 0:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"drain: {len(pending)} jobs not finished, {_running(ft)} tasks running")
    took = time.monotonic() - started
    time.sleep(2.5)  # a summary with the freed capacity reaches the master (1 s interval)
    return took


# -- the benchmark ---------------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return round(statistics.median(get(r) for r in rows), 3)

    return {
        "workload": rows[0]["workload"],
        "runs": len(rows),
        "tasks": rows[0]["tasks"],
        "tasks_per_s": med(lambda r: r["tasks_per_s"]),
        "latency_p50_s": med(lambda r: r["latency_s"].get("p50_s", 0.0)),
        "latency_p99_s": med(lambda r: r["latency_s"].get("p99_s", 0.0)),
        "cpu_cores": {
            k: round(statistics.median(r["cpu_cores"][k] for r in rows), 3) for k in rows[0]["cpu_cores"]
        },
    }


def run(
    *, smoke: bool, out: pathlib.Path, size: Size | None = None, py_spy: pathlib.Path | None = None
) -> dict[str, Any]:
    import dsdk

    size = size or (SMOKE if smoke else FULL)
    results: dict[str, Any] = {
        "benchmark": "placement",
        "smoke": smoke,
        "config": {
            **asdict(size),
            "profile": "h100x8",
            "task_seconds": TASK_SECONDS,
            "runs_per_workload": size.runs,
            "batch_shape": {w.name: f"{w.jobs} jobs x {w.replicas} replicas" for w in size.workloads},
            "submit": "DSDK SubmitJob, back to back, one client",
            "subdomain_detection": DETECTION,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": [],
        "median": [],
        "problems": [],
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="domainos-placement-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        master = Master(tmp)
        master.start()
        sd = SubDomain(tmp, max(size.nodes, 10_000), DETECTION, master=master.listen)
        try:
            sd.start()
            with FleetThread(sd.listen, size.nodes, size.seed) as ft:
                ready_s, _ = _wait_ready(sd, size.nodes, size.ready_timeout_s)
                results["ready_after_s"] = round(ready_s, 2)
                time.sleep(2.5)  # the master's summary shows every node
                pids = {"master": master.pid, "subdomain": sd.pid}
                with dsdk.connect(master.listen, insecure=True, token=master.token, timeout=60) as client:
                    for r in range(size.runs):
                        rows = []
                        for wl in size.workloads:
                            profile_dir = py_spy if r == 0 else None
                            with _profiled(pids, profile_dir, wl.name):
                                row, job_ids = _place(client, master, sd, ft, wl, size)
                            row["run"] = r
                            row["drain_s"] = round(_drain(client, ft, job_ids, size.place_timeout_s), 2)
                            rows.append(row)
                            lat, cpu = row["latency_s"], row["cpu_cores"]
                            print(
                                f"run {r} {wl.name:<7} {row['started']:>6}/{wl.tasks:<6} tasks "
                                f"{row['tasks_per_s']:8.1f}/s  p50 {lat.get('p50_s', float('nan')):7.3f} s  "
                                f"p99 {lat.get('p99_s', float('nan')):7.3f} s  cores: master {cpu['master']:.2f} "
                                f"sub-domain {cpu['subdomain']:.2f} fleet {cpu['fleet']:.2f}  "
                                f"(submit {row['submit_span_s']:.2f} s, drain {row['drain_s']:.1f} s)",
                                flush=True,
                            )
                        results["runs"].append(rows)
        finally:
            sd.stop()
            master.stop()
            results["problems"] = [f"master: {p}" for p in master.problems()] + [
                f"sub-domain: {p}" for p in sd.problems()
            ]
    for i in range(len(size.workloads)):
        results["median"].append(_median([rows[i] for rows in results["runs"]]))
    results["wall_s"] = round(time.monotonic() - started, 1)
    path = out / ("placement-smoke.json" if smoke else "placement.json")
    path.write_text(json.dumps(results, indent=2))
    for m in results["median"]:
        print(
            f"median of {m['runs']}: {m['workload']:<7} {m['tasks_per_s']:8.1f} tasks/s  "
            f"p50 {m['latency_p50_s']:.3f} s  p99 {m['latency_p99_s']:.3f} s  cores {m['cpu_cores']}"
        )
    print(f"wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    p.add_argument("--nodes", type=int, help="fleet size (default 10,000; smoke 200)")
    p.add_argument("--runs", type=int, help="runs per workload (default 3; smoke 1)")
    p.add_argument("--only", action="append", help="a workload: gpu1, gpu8, gang64 (repeatable)")
    p.add_argument("--jobs", type=int, help="jobs per workload (default: the size's)")
    p.add_argument("--py-spy", type=pathlib.Path, dest="py_spy", help="profile the daemons into this folder")
    ns = p.parse_args(argv)
    base = SMOKE if ns.smoke else FULL
    workloads = tuple(
        dataclasses.replace(w, jobs=ns.jobs or w.jobs)
        for w in base.workloads
        if not ns.only or w.name in ns.only
    )
    size = Size(
        nodes=ns.nodes or base.nodes,
        workloads=workloads,
        runs=ns.runs or base.runs,
        place_timeout_s=base.place_timeout_s,
        ready_timeout_s=base.ready_timeout_s,
    )
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.py_spy is not None:
        ns.py_spy.mkdir(parents=True, exist_ok=True)
    run(smoke=ns.smoke, out=ns.out, size=size, py_spy=ns.py_spy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
