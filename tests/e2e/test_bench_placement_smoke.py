"""CI keeps the placement benchmark working at smoke size (counts are asserted, never speed)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e]


def test_placement_benchmark_smoke(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.placement", "--smoke", "--out", str(tmp_path)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "placement-smoke.json").read_text())
    assert data["smoke"] is True and data["config"]["nodes"] == 200 and len(data["runs"]) == 1
    (rows,) = data["runs"]
    assert [r["workload"] for r in rows] == ["gpu1", "gpu8", "gang64"]
    for row in rows:
        # Every submitted task reached its simulated agent, and each got one latency sample.
        assert row["tasks"] > 0 and row["started"] == row["tasks"], row
        lat = row["latency_s"]
        assert lat["n"] == lat["expected"] == row["tasks"]
        assert 0 <= lat["p50_s"] <= lat["p99_s"] <= lat["max_s"]
        assert row["tasks_per_s"] > 0 and row["span_s"] > 0
        assert set(row["cpu_cores"]) == {"master", "subdomain", "fleet"}
    gang = rows[2]
    assert gang["tasks"] == 2 * 64
    assert [m["workload"] for m in data["median"]] == ["gpu1", "gpu8", "gang64"]
    assert data["problems"] == []
    assert "wrote" in proc.stdout
