"""CI keeps the federation benchmark working by running it at smoke size (figures are not asserted)."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e]


def test_federation_benchmark_smoke(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.federation", "--smoke", "--out", str(tmp_path)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    data = json.loads((tmp_path / "federation-smoke.json").read_text())
    assert data["smoke"] is True and data["config"]["federations"] == [[3, 200]]
    assert data["config"]["runs"] == 1 and "tight" not in data
    (size,) = data["sizes"]
    assert size["subdomains"] == 3 and size["nodes_per_subdomain"] == 200
    assert size["fleet"]["connected"] == 3 and size["fleet"]["nodes"] == 600
    assert size["stream_error_count"] == 0 and size["problems"] == []
    (run,) = size["runs"]
    assert run["jobs_submitted"] > 0 and run["decisions"] > 0
    assert run["placetask_commands"] >= run["placetask_refused"] >= 0
    assert run["misdispatch_rate"] == round(run["placetask_refused"] / run["placetask_commands"], 4)
    lat = run["accepted_latency_s"]
    assert 0 < lat["n"] <= lat["expected"]
    assert lat["p50_s"] <= lat["p99_s"] <= lat["max_s"]
    # Quantiles read from the histogram lie inside their bucket.
    for q in ("p50", "p99"):
        value, bound = run[f"decision_{q}_ms"], run[f"decision_{q}_bucket_le_ms"]
        assert not math.isnan(value) and 0 <= value <= bound
    assert run["reservations"]["sent"] >= run["reservations"]["accepted"] >= 0
    assert run["master_rss_mib"] > 0 and run["master_cpu_cores"] >= 0
    assert size["median"]["decision_p99_ms"] == run["decision_p99_ms"]
