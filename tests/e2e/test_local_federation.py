"""End to end: `domainctl up` starts the real daemons as processes; jobs run; `down` leaves nothing.

Marked ``e2e`` (real processes, ~10-30 s on two cores). Skipped only while a daemon package has
no ``__main__`` yet.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
from e2e_helpers import ROOT, domainctl_env, run_domainctl, wait_for

pytestmark: list[pytest.MarkDecorator] = [pytest.mark.e2e]

for _module in ("master_domain", "sub_domain", "node_agent"):
    if not (ROOT / _module / "__main__.py").exists():
        pytestmark = [pytest.mark.e2e, pytest.mark.skip(reason=f"{_module} has no __main__ yet")]


class Ctl:
    def __init__(self, home: pathlib.Path) -> None:
        self.home = home
        self.env = domainctl_env(home)

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        started = time.perf_counter()
        proc = run_domainctl(*args, env=self.env, timeout=timeout)
        print(f"$ domainctl {' '.join(args)}  [{time.perf_counter() - started:.2f}s, exit {proc.returncode}]")
        print(proc.stdout, end="")
        print(proc.stderr, end="", file=sys.stderr)
        return proc


@pytest.fixture
def federation(tmp_path: pathlib.Path) -> Iterator[tuple[Ctl, dict[str, Any]]]:
    home = tmp_path / "home"
    ctl = Ctl(home)
    up = ctl("up", "--detach", "--home", str(home), "--timeout", "90")
    if up.returncode != 0:
        logs = home / "local" / "logs"
        for log in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    assert up.returncode == 0, up.stderr
    state = json.loads((home / "local" / "cluster.json").read_text())
    try:
        yield ctl, state
    finally:
        ctl("down", "--home", str(home))


def _running(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)  # a zombie has exited
    except psutil.Error:
        return False


def _pids_and_descendants(state: dict[str, Any]) -> list[psutil.Process]:
    procs = []
    for c in state["components"]:
        try:
            p = psutil.Process(c["pid"])
        except psutil.NoSuchProcess:
            continue
        procs.append(p)
        procs.extend(p.children(recursive=True))
    return procs


def test_up_run_down(federation: tuple[Ctl, dict[str, Any]]) -> None:
    ctl, state = federation
    assert [c["kind"] for c in state["components"]].count("agent") == 4
    assert state["master"].startswith("127.0.0.1:")

    domains = ctl("domains", "-o", "json")
    assert domains.returncode == 0
    regions = json.loads(domains.stdout)
    assert sorted(r["name"] for r in regions) == ["east", "west"]
    subs = [sd for r in regions for sd in r["subdomains"]]
    assert all(sd["connected"] and sd["nodes_ready"] == 2 for sd in subs)
    assert ctl("domains").returncode == 0

    nodes = ctl("nodes", "-o", "json")
    assert nodes.returncode == 0
    assert sorted(n["node_id"] for n in json.loads(nodes.stdout)) == [
        "east-1-n1",
        "east-1-n2",
        "west-1-n1",
        "west-1-n2",
    ]

    started = time.perf_counter()
    jobs = ctl("jobs")
    print(f"`domainctl jobs` against the running master: {time.perf_counter() - started:.2f}s")
    assert jobs.returncode == 0

    run = ctl("run", "--wait", "--timeout", "60", "--", "python3", "-c", "print(42)")
    assert run.returncode == 0, run.stderr
    job_id, final, *output = run.stdout.splitlines()
    assert final == f"job {job_id} SUCCEEDED"
    assert output == ["42"]

    logs = ctl("logs", job_id)
    assert logs.returncode == 0 and logs.stdout == "42\n"

    fail = ctl("run", "--wait", "--timeout", "60", "--", "python3", "-c", "import sys; sys.exit(3)")
    assert fail.returncode == 1 and "FAILED" in fail.stdout

    procs = _pids_and_descendants(state)
    assert procs
    down = ctl("down", "--home", str(ctl.home))
    assert down.returncode == 0 and "stopped the local federation" in down.stdout
    wait_for(lambda: not [p for p in procs if _running(p)], timeout=10)
    assert not (ctl.home / "local" / "cluster.json").exists()
    assert ctl("down", "--home", str(ctl.home)).stdout.startswith("no local federation is running")
