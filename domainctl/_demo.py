"""``domainctl demo``: a local federation, the README's sample job, a failing job, then ``down``."""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
import time
from typing import Any

from domainos.topology import load_topology

from . import _render
from ._local import Paths, default_home, indent, resolve_paths, start_federation, summary_text

DEMO_SCRIPT = """\
import os
i = int(os.environ["DOMAINOS_TASK_INDEX"])
n = 100_000 * (i + 1)
total = sum(k * k for k in range(n))
print(f"task {i} on node {os.environ.get('DOMAINOS_NODE_ID')} in sub-domain "
      f"{os.environ.get('DOMAINOS_SUBDOMAIN')}: sum of squares below {n:,} = {total:,}")
"""
DEMO_FAIL_SCRIPT = "import sys; print('something went wrong', file=sys.stderr); sys.exit(3)"
DEMO_WAIT_S = 120.0


def demo_specs() -> tuple[dict[str, Any], dict[str, Any]]:
    """The demo's two jobs: 4 replicas computing sums of squares, and one that exits with 3."""
    squares = {
        "name": "squares",
        "replicas": 4,
        "command": ["python3", "-c", DEMO_SCRIPT],
        "resources": {"cpus": 0.5, "memory": "128Mi"},
    }
    failing = {"name": "exit-3", "command": ["python3", "-c", DEMO_FAIL_SCRIPT], "resources": {"cpus": 0.5}}
    return squares, failing


def cmd_demo(ns: argparse.Namespace) -> int:
    temp = ns.home is None
    paths = (
        Paths(pathlib.Path(tempfile.mkdtemp(prefix="domainos-demo-")).resolve())
        if temp
        else resolve_paths(ns.home)
    )
    print(f"==> starting a local federation in {paths.home}", flush=True)
    started = start_federation(paths, load_topology(None), ns, verbose=True)
    if started is None:
        return 1
    launcher, state = started
    ok = False
    width = None
    try:
        print(summary_text(state, paths), flush=True)
        squares, failing = demo_specs()
        with launcher.client() as client:  # mutual TLS with the federation's client certificate
            print("\n==> domainctl domains", flush=True)
            print(_render.render_domains(client.domains(), width))

            print("\n==> domainctl run --name squares --replicas 4 --cpus 0.5 --wait -- python3 -c SCRIPT")
            print(indent(DEMO_SCRIPT.rstrip(), "    | "), flush=True)
            job = client.submit(squares)
            job = client.wait(job.job_id, timeout=DEMO_WAIT_S, on_update=_progress)
            print(_render.render_job(job, time.time(), width, command_limit=60))
            print("\n==> domainctl logs " + job.job_id)
            print(_render.render_logs(client.logs(job.job_id), headers=True), end="")
            ok = job.succeeded

            print("\n==> a job that exits with status 3 (failure reporting)")
            bad = client.submit(failing)
            bad = client.wait(bad.job_id, timeout=DEMO_WAIT_S, on_update=_progress)
            print(_render.render_job(bad, time.time(), width))
            print(f"\n==> domainctl logs --stderr {bad.job_id}")
            print(_render.render_logs(client.logs(bad.job_id, stream="stderr"), headers=True), end="")
        print(f"\ndemo {'succeeded' if ok else 'FAILED: the squares job did not succeed'}")
    finally:
        if ns.keep:
            env = f"export DOMAINOS_HOME={paths.home}; " if paths.home != default_home() else ""
            print(
                f"\nthe federation keeps running: {env}domainctl domains; stop it with: domainctl down --home {paths.home}"
            )
        else:
            print("\n==> domainctl down", flush=True)
            stopped, killed = launcher.stop()
            print(f"stopped {stopped} components" + (f" ({killed} killed)" if killed else ""))
            if temp and ok:
                shutil.rmtree(paths.home, ignore_errors=True)
            elif temp:
                print(f"logs kept in {paths.logs}")
    return 0 if ok else 1


def _progress(job: Any) -> None:
    print(_render.progress_line(job, time.time()), flush=True)
