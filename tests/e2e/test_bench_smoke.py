"""CI keeps the benchmarks working by running them at smoke size (figures are not asserted)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

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
