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
        # placement and federation have their own smoke tests (test_bench_placement_smoke.py,
        # test_bench_federation_smoke.py); `python -m bench --smoke` runs them all.
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path), "--only", "foundation",
         "--only", "scheduler", "--only", "gang", "--only", "scale"],
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
    _check_scale_smoke(json.loads((tmp_path / "scale-smoke.json").read_text()))


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


def _check_scale_smoke(scale: dict[str, Any]) -> None:
    """One real sub-domain took a simulated fleet, detected every injected fault with no false
    positive, and two sub-domains split a fleet one node over the cap (counts and codes only)."""
    assert scale["smoke"] is True and scale["config"]["nodes"] == [200]
    assert scale["config"]["runs_per_size"] == 1
    settings = scale["detection_settings"]
    assert settings["silent_after_s"] > settings["heartbeat_interval_s"] > 0
    assert settings["probe_timeout_s"] > 0 and settings["dead_after_s"] > 0
    (row,) = scale["ingest"]
    assert row["nodes"] == 200 and row["runs"] == 1 and row["states_at_end"]["ready"] == 200
    assert 0 < row["subdomain_cpu_cores"] < 2.5 and 10 < row["subdomain_rss_mib"] < 4096
    assert row["reports_per_s"] > 0 and row["transitions_before_faults"] == 0
    assert row["report_lag_p50_ms"] is not None and row["report_lag_p99_ms"] >= row["report_lag_p50_ms"] >= 0
    det = scale["detection"]
    assert det["nodes"] == 200 and det["killed"] == 2 and det["silenced"] == 2
    assert det["false_positives"] == det["false_suspects"] == det["false_dead"] == 0
    assert det["false_positive_nodes"] == [] and det["metrics_excess_suspect_or_dead"] == 0
    assert det["states_at_end"]["dead"] == 4 and det["all_dead_after_s"] is not None
    for key in ("killed_to_suspect_s", "killed_to_dead_s", "silenced_to_suspect_s", "silenced_to_dead_s"):
        lat = det[key]
        assert lat["n"] == lat["expected"] == 2, key
        assert 0 <= lat["p50_s"] <= lat["p99_s"] <= lat["max_s"], key
    assert det["all_to_dead_s"]["n"] == 4
    # Only the silenced nodes were probed (a killed node has no stream), and none answered.
    assert det["probes_sent"] == 2 and det["probes_answered"] == 0
    cap = scale["admission_cap"]
    assert (cap["max_nodes"], cap["fleet_nodes"]) == (100, 101)
    assert (cap["first_ready"], cap["second_ready"], cap["first_refused_full"]) == (100, 1, 1)
    (refusal,) = cap["refusals"]
    assert (refusal["by"], refusal["code"], refusal["registered_in"]) == (
        "cap-1",
        "RESOURCE_EXHAUSTED",
        "cap-2",
    )
    assert refusal["message"] == cap["expected_message"] and cap["message_matches"] is True
    assert cap["exact"] is True
    assert scale["problems"] == []
