"""Foundation figures on a real local federation (``domainctl up``: 1 master, 2 sub-domains, 4 agents).

* ``domainctl`` latency: ``--help`` (no federation needed) and reads against a running master
  (``jobs``, ``domains``, ``nodes``), wall time of the whole command, median and p90 of N runs.
* Job round trip: submit → SUCCEEDED for a 1-task and a 4-replica job (DSDK, polling every 50 ms),
  median and p90 of N jobs.
* ``up --detach`` and ``down`` wall time.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _ctl(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "domainctl", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"domainctl {' '.join(args)} failed: {proc.stderr}")
    return elapsed


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_s": round(statistics.median(ordered), 4),
        "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
        "min_s": round(ordered[0], 4),
    }


def run(*, smoke: bool, out: pathlib.Path) -> dict[str, Any]:
    import dsdk

    reps = 3 if smoke else 15
    jobs = 2 if smoke else 20
    results: dict[str, Any] = {
        "benchmark": "foundation",
        "smoke": smoke,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    with tempfile.TemporaryDirectory(prefix="domainos-bench-") as tmp:
        home = pathlib.Path(tmp) / "home"
        env = {**os.environ, "DOMAINOS_HOME": str(home), "PYTHONPATH": str(ROOT)}
        env.pop("DOMAINOS_MASTER", None)
        results["cli_help"] = _stats([_ctl(env, "--help") for _ in range(reps)])
        results["up_detach"] = _stats([_ctl(env, "up", "--detach", "--home", str(home))])
        try:
            for cmd in ("jobs", "domains", "nodes"):
                results[f"cli_{cmd}"] = _stats([_ctl(env, cmd) for _ in range(reps)])
            master = json.loads((home / "local" / "cluster.json").read_text())["master"]
            with dsdk.connect(master, home=home) as client:
                for replicas in (1, 4):
                    samples = []
                    for _ in range(jobs):
                        started = time.perf_counter()
                        job = client.submit(
                            {"command": ["true"], "replicas": replicas, "resources": {"cpus": 0.1}}
                        )
                        final = client.wait(job.job_id, timeout=60, poll=0.05)
                        if final.state != "SUCCEEDED":
                            raise RuntimeError(f"job {job.job_id} ended {final.state}: {final.message}")
                        samples.append(time.perf_counter() - started)
                    results[f"job_round_trip_{replicas}_task"] = _stats(samples)
        finally:
            results["down"] = _stats([_ctl(env, "down", "--home", str(home))])
    path = out / "foundation.json"
    path.write_text(json.dumps(results, indent=2))
    width = max(len(k) for k in results)
    for key, value in results.items():
        if isinstance(value, dict) and "median_s" in value:
            print(
                f"{key:<{width}}  median {value['median_s'] * 1000:7.1f} ms   p90 {value['p90_s'] * 1000:7.1f} ms   n={value['n']}"
            )
    print(f"wrote {path}")
    return results
