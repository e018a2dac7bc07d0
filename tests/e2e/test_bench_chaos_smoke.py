"""CI keeps the chaos benchmark working by running it at smoke size (the master leader SIGKILLed
under 40 jobs); the figures are not asserted, the invariants are."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e]


def test_chaos_benchmark_smoke(tmp_path: pathlib.Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--smoke", "--out", str(tmp_path)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "master-leader" in proc.stdout
    data = json.loads((tmp_path / "chaos-smoke.json").read_text())
    assert data["smoke"] is True and data["config"]["jobs"] == 40
    (run,) = data["runs"]
    assert run["case"] == "master-leader" and "error" not in run, run.get("error")
    assert run["jobs_submitted"] == 40 and run["lost"] == 0 and run["twice"] == 0
    assert run["recovery"]["new_leader"] != run["recovery"]["old_leader"]
    assert run["recovery_s"] is not None and run["wall_s"] > 0
