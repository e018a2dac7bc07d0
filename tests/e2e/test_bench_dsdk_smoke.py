"""CI keeps the DSDK benchmarks working at smoke size: the comparison with Ray and Dask (the DSDK
part; Ray and Dask are not dependencies and are reported as skipped), the collectives' bandwidth
and the intra-node device pool. Results are checked, never speed."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def _bench(module: str, out: pathlib.Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--smoke", "--out", str(out), *extra],
        cwd=str(ROOT), capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_compare_smoke(tmp_path: pathlib.Path) -> None:
    proc = _bench("bench.compare", tmp_path)
    data = json.loads((tmp_path / "compare-smoke.json").read_text())
    assert data["smoke"] is True and data["ok"] is True and not data["failures"]
    d = data["frameworks"]["dsdk"]
    assert d["tasks_warm"]["median_s"] > 0 and d["tasks_cold"]["median_s"] > 0
    # every call ran on a worker, results were checked against the client's own computation
    assert all(c == data["config"]["tasks"] for c in d["tasks_warm"]["worker_calls_per_run"])
    for part in ("mapreduce_warm", "mapreduce_dataset"):
        assert d[part]["total"]["median_s"] > 0
        assert d[part]["stats"]["calls"] >= data["config"]["shards"]
    assert "DSDK warm" in proc.stdout and "trivial tasks" in proc.stdout


def test_collective_smoke(tmp_path: pathlib.Path) -> None:
    proc = _bench("bench.collective", tmp_path)
    data = json.loads((tmp_path / "collective-smoke.json").read_text())
    assert data["raw_socket"]["mib_per_s"] > 0 and data["dsdk_wire"]["mib_per_s"] > 0
    for n in (2, 4):
        row = data[f"ranks_{n}"]
        assert row["ranks"] == n and row["subdomains"] == 2
        assert row["allreduce_algbw_mib_s"] > 0 and row["bytes_between_domains"] > 0
    assert "allreduce 4 ranks" in proc.stdout


def test_intra_smoke(tmp_path: pathlib.Path) -> None:
    _bench("bench.intra", tmp_path)
    data = json.loads((tmp_path / "intra-smoke.json").read_text())
    assert data["smoke"] is True
