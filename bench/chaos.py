"""Chaos: a 1,000-job workload on a real multi-process federation while one fault is injected (issue 7).

The federation is three master replicas, two sub-domains with three real node agents each, all
on a 3-member etcd (``etcd://a,b,c``); each run is one fault kind, injected after 30 % of the jobs
were submitted (``bench/_chaos_harness.py`` has the details):

==================  =============================================================================
case                fault
==================  =============================================================================
baseline            none
master-leader       SIGKILL the leading master (restarted 5 s later as a follower)
subdomain           SIGKILL a sub-domain manager, restarted on the same address after 1 s
agents              SIGKILL 2 agents with their tasks (a machine failure), restarted after 1 s
agents-crash        SIGKILL 2 agents only (their tasks keep running), restarted after 1 s
etcd-leader         SIGKILL the etcd leader (not the member the daemons use; restarted after 10 s)
etcd-connected      SIGKILL the member every daemon uses, made etcd leader first (restarted after 10 s)
partition           a sub-domain cut off from every master for 8 s (blackhole), then healed
partition-20s       the same for 20 s (still below the masters' 30 s subdomain_lost_grace_s)
==================  =============================================================================

Each run reports jobs submitted / succeeded / failed, **lost** (not terminal by the deadline,
failed, or never accepted: must be 0), **twice** (a job's task whose completion line -- written by
the task itself into a shared log -- appears more than once: must be 0), the tasks retried, the
**recovery** time (fault -> serving again; what that means per fault is in the JSON's
``recovery.what``), **false node-downs** (nodes the sub-domains declared dead that were never
killed; suspects and what ``domainctl nodes`` showed are in the JSON), wall time and throughput.

Run it with ``python -m bench.chaos`` (every case, 1,000 jobs each, a few minutes per case on 2
cores), ``--only CASE`` (repeatable), ``--jobs N``, ``--rate R``, ``--partition-s S``, ``--keep DIR``
(keep each run's logs), ``--merge`` (replace only the cases run in an existing ``chaos.json``);
``--smoke``: the ``master-leader`` case with 40 jobs (what CI runs). Results go to ``chaos.json``
(``chaos-smoke.json``); each run records the commit it measured (``git_commit``; ``git.dirty``
lists what differed from it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from bench._chaos_harness import Scenario, run_scenario

#: case -> the scenario's changes from :data:`BASE`.
CASES: dict[str, dict[str, Any]] = {
    "baseline": {"fault": "none"},
    "master-leader": {"fault": "master-leader"},
    "subdomain": {"fault": "subdomain"},
    "agents": {"fault": "agents"},
    "agents-crash": {"fault": "agents-crash"},
    "etcd-leader": {"fault": "etcd-leader"},
    "etcd-connected": {"fault": "etcd-connected"},
    "partition": {"fault": "partition", "partition_s": 8.0},
    "partition-20s": {"fault": "partition", "partition_s": 20.0},
}
#: The full size: 1,000 one-task jobs at 10 jobs/s over 2 sub-domains x 3 agents.
BASE = Scenario(jobs=1000, jobs_per_s=10.0, subdomains=2, agents_per_subdomain=3, drain_timeout_s=180.0)
SMOKE_BASE = Scenario(jobs=40, jobs_per_s=10.0, subdomains=2, agents_per_subdomain=2, drain_timeout_s=60.0)
SMOKE_CASES = ("master-leader",)

#: The columns of the printed table: (header, key, format).
_COLUMNS = (
    ("case", "case", "{:<15}"),
    ("jobs", "jobs_submitted", "{:>5}"),
    ("ok", "succeeded", "{:>5}"),
    ("failed", "failed", "{:>6}"),
    ("lost", "lost", "{:>4}"),
    ("twice", "twice", "{:>5}"),
    ("retried", "tasks_retried", "{:>7}"),
    ("recovery s", "recovery_s", "{:>10}"),
    ("false downs", "false_node_downs", "{:>11}"),
    ("wall s", "wall_s", "{:>6}"),
    ("jobs/s", "throughput_jobs_per_s", "{:>6}"),
)

#: Kept out of the JSON (long lists; the counts and the first examples stay).
_DROP = ("node_events",)


def _cell(fmt: str, value: Any) -> str:
    if value is None:
        value = "-"
    elif isinstance(value, float):
        value = f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"
    return fmt.format(value)


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = " ".join(fmt.format(h)[: max(len(h), len(fmt.format("")))] for h, _k, fmt in _COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" ".join(_cell(fmt, r.get(k)) for _h, k, fmt in _COLUMNS))
    return "\n".join(lines)


def _git() -> dict[str, Any]:
    """The commit measured, and the paths that differed from it (others edit the tree too)."""
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if len(line) > 3]
    return {"commit": git("rev-parse", "HEAD").strip(), "dirty": dirty}


def run(
    *,
    smoke: bool,
    out: pathlib.Path,
    cases: Sequence[str] | None = None,
    base: Scenario | None = None,
    keep: pathlib.Path | None = None,
    merge: bool = False,
) -> dict[str, Any]:
    import json

    base = base or (SMOKE_BASE if smoke else BASE)
    names = list(cases or (SMOKE_CASES if smoke else CASES))
    results: dict[str, Any] = {
        "benchmark": "chaos",
        "smoke": smoke,
        "config": asdict(base),
        "cases": {n: CASES[n] for n in names},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "git": _git(),
        "runs": [],
    }
    started = time.monotonic()
    rows = []
    for name in names:
        scenario = replace(base, **CASES[name])
        workdir = None if keep is None else keep / name
        t0 = time.monotonic()
        try:
            report = run_scenario(scenario, workdir, say=lambda m: print(m, flush=True))
        except Exception as exc:  # one broken run does not hide the others
            report = {"fault": scenario.fault, "error": repr(exc)}
        report = {"case": name, **{k: v for k, v in report.items() if k not in _DROP}}
        report["run_s"] = round(time.monotonic() - t0, 1)
        report["git_commit"] = _git()["commit"]
        results["runs"].append(report)
        rows.append(report)
        rec = report.get("recovery") or {}
        print(
            f"{name}: {report.get('succeeded')}/{report.get('jobs_submitted')} succeeded, "
            f"lost {report.get('lost')}, twice {report.get('twice')}, retried {report.get('tasks_retried')}, "
            f"recovery {report.get('recovery_s')} s ({rec.get('what', '-')}), "
            f"false node-downs {report.get('false_node_downs')}, wall {report.get('wall_s')} s"
            + (f", ERROR {report['error']}" if "error" in report else ""),
            flush=True,
        )
    results["wall_s"] = round(time.monotonic() - started, 1)
    path = out / ("chaos-smoke.json" if smoke else "chaos.json")
    if merge and path.exists():
        # Keep the other cases of the earlier file, in their order; this run's replace theirs.
        earlier = json.loads(path.read_text())
        ran = {r["case"] for r in results["runs"]}
        kept = [r for r in earlier.get("runs", []) if r.get("case") not in ran]
        results["runs"] = [*kept, *results["runs"]]
        results["runs"].sort(key=lambda r: list(CASES).index(r["case"]) if r.get("case") in CASES else 99)
        results["cases"] = {r["case"]: CASES.get(r["case"], {}) for r in results["runs"]}
        results["merged"] = {"replaced": sorted(ran), "earlier_git": earlier.get("git")}
        rows = results["runs"]
    print(table(rows), flush=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--smoke", action="store_true", help=f"{', '.join(SMOKE_CASES)} with {SMOKE_BASE.jobs} jobs"
    )
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    p.add_argument("--only", action="append", choices=sorted(CASES), help="run only this case (repeatable)")
    p.add_argument("--jobs", type=int, help="jobs per run")
    p.add_argument("--rate", type=float, help="jobs submitted per second")
    p.add_argument("--partition-s", type=float, help="length of the 'partition' case's partition (s)")
    p.add_argument("--keep", type=pathlib.Path, help="keep every run's logs and configs under DIR/<case>/")
    p.add_argument("--merge", action="store_true", help="replace only these cases in an existing chaos.json")
    ns = p.parse_args(argv)
    base = SMOKE_BASE if ns.smoke else BASE
    if ns.jobs:
        base = replace(base, jobs=ns.jobs)
    if ns.rate:
        base = replace(base, jobs_per_s=ns.rate)
    if ns.partition_s:
        CASES["partition"] = {**CASES["partition"], "partition_s": ns.partition_s}
    ns.out.mkdir(parents=True, exist_ok=True)
    if ns.keep is not None:
        ns.keep.mkdir(parents=True, exist_ok=True)
    run(smoke=ns.smoke, out=ns.out, cases=ns.only, base=base, keep=ns.keep, merge=ns.merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
