"""CI keeps the benchmarks working by running them at smoke size (figures are not asserted)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e]


def test_foundation_benchmark_smoke(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "foundation.json").read_text())
    for key in (
        "cli_help",
        "cli_jobs",
        "job_round_trip_1_task",
        "job_round_trip_4_task",
        "up_detach",
        "down",
    ):
        assert data[key]["n"] >= 1 and data[key]["median_s"] > 0
    assert "wrote" in proc.stdout
    sched = json.loads((tmp_path / "scheduler-smoke.json").read_text())
    assert sched["smoke"] is True
    for row in sched["master_latency"]:
        assert row["task_p50_us"] > 0 and row["train_64gpu_p50_us"] > 0
    assert {r["task"] for r in sched["index_throughput"]} == {"gpu1", "gpu8", "cpu"}
    assert all(r["fill_per_s"] > 0 and r["steady_per_s"] > 0 for r in sched["index_throughput"])
    assert {r["policy"] for r in sched["fragmentation"]} == {"best_fit_index", "first_fit_baseline"}
    assert {r["summary_every"] for r in sched["misdispatch"]} == {1, 10, 100}
    assert all(0 <= r["refused_per_decision"] <= 1 for r in sched["misdispatch"])
    _check_gang_smoke(json.loads((tmp_path / "gang-smoke.json").read_text()))


def _check_gang_smoke(gang: dict[str, Any]) -> None:
    """The gang benchmark ran its stream through real daemons and counted sane figures."""
    assert gang["smoke"] is True and gang["config"]["subdomains"] == 4 and len(gang["runs"]) == 1
    run = gang["runs"][0]
    jobs = run["jobs"]
    assert jobs["submitted"] == gang["config"]["jobs"] > 0
    assert jobs["succeeded"] + jobs["failed"] + jobs["cancelled"] + jobs["stuck"] == jobs["submitted"]
    assert jobs["succeeded"] >= 1
    res = run["reservations"]
    assert res["sent"] >= 1
    assert res["sent"] >= res["accepted"] and res["sent"] >= res["refused"] and res["sent"] >= res["expired"]
    assert 0.0 <= run["misdispatch_rate"] <= 1.0 and 0.0 <= run["expired_rate"] <= 1.0
    assert run["misdispatch_rate"] == round(res["refused"] / res["sent"], 4)
    assert run["gangs"]["placed"] >= 1 and run["gangs"]["placed"] <= res["accepted"]
    for key in ("gang_latency_s", "plain_task_latency_s"):
        lat = run[key]
        if lat["n"]:
            assert 0 <= lat["p50_s"] <= lat["p99_s"] <= lat["max_s"] < run["wall_s"]
    assert run["gang_latency_s"]["n"] >= 1
    assert run["wall_s"] > 0 and run["cpu_s"]["master"] > 0
    assert gang["median"]["reservations"] == res
    assert isinstance(gang["logs"]["errors"], list) and isinstance(gang["stuck_jobs"], list)
