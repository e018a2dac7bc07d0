"""`domainctl` as a real process: startup time, lazy imports, exit statuses, no tracebacks."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def domainctl(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("DOMAINOS_MASTER", None)
    return subprocess.run(
        [sys.executable, "-m", "domainctl", *args],
        capture_output=True, text=True, env=full_env, timeout=60, cwd=str(ROOT), input=stdin,
    )  # fmt: skip


def test_help_startup_time_is_measured() -> None:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        proc = domainctl("--help")
        best = min(best, time.perf_counter() - started)
        assert proc.returncode == 0 and "usage: domainctl" in proc.stdout and proc.stderr == ""
    print(f"\n`python -m domainctl --help`: {best * 1000:.0f} ms (best of 3)")


def test_help_imports_no_grpc_yaml_or_generated_code() -> None:
    code = (
        "import sys\n"
        "from domainctl.__main__ import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'yaml', 'google', 'dsdk', 'psutil')"
        " or m.startswith('domainos.api'))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_unreachable_master_exits_3_with_one_line(tmp_path: pathlib.Path) -> None:
    started = time.perf_counter()
    proc = domainctl("jobs", "--master", "127.0.0.1:1", "--insecure", env={"DOMAINOS_HOME": str(tmp_path)})
    took = time.perf_counter() - started
    print(f"\n`domainctl jobs` against a closed port: {took * 1000:.0f} ms (3 tries with backoff)")
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: cannot reach the DomainOS master at 127.0.0.1:1: ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_no_master_configured_exits_3(tmp_path: pathlib.Path) -> None:
    proc = domainctl("domains", env={"DOMAINOS_HOME": str(tmp_path)})
    assert proc.returncode == 3
    assert proc.stderr == (
        "error: no DomainOS master found: pass --master ADDR, set DOMAINOS_MASTER, or start one with `domainctl up`\n"
    )


def test_invalid_job_from_stdin_exits_2(tmp_path: pathlib.Path) -> None:
    proc = domainctl(
        "submit", "-", stdin="command: [echo]\nresources: {cpus: -1}\n", env={"DOMAINOS_HOME": str(tmp_path)}
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: <stdin>: resources.cpus: must be greater than 0, got -1\n"


def test_down_with_nothing_running(tmp_path: pathlib.Path) -> None:
    proc = domainctl("down", "--home", str(tmp_path / "nothing"))
    assert proc.returncode == 0 and proc.stdout.startswith("no local federation is running")


@pytest.mark.parametrize("daemon", ["master", "subdomain", "agent"])
def test_daemon_subcommands_exec_the_daemon_module(daemon: str, tmp_path: pathlib.Path) -> None:
    # The daemons are built by other engineers; `--help` proves the pass-through when they exist.
    module = {"master": "master_domain", "subdomain": "sub_domain", "agent": "node_agent"}[daemon]
    if not (ROOT / module / "__main__.py").exists():
        pytest.skip(f"{module} has no __main__ yet")
    proc = domainctl(daemon, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout
