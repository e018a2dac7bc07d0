"""Real processes end to end: gang-aware preemption, and fractional GPU shares.

Preemption: a low-priority job fills the only GPU node with long-running tasks; a high-priority job
that needs the room stops the low job WHOLE (every task, ``preempted by job ...``), requeues it as new
attempts without spending a retry, runs, and when it is done the low job runs again and succeeds.

Shares: four tasks of a quarter GPU run at once on a 1-GPU node; a fifth waits for a quarter card.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_e2e_jobs import Federation, wait_for

pytestmark = [pytest.mark.e2e]

TOPOLOGY = """\
version: 1
name: preempt
regions:
  - name: r
    subdomains:
      - id: gpu-1
        agents:
          - count: 1
            simulated: true
            inventory: {cpus: 8, memory: 32Gi, gpus: 4, gpu_model: H100}
      - id: share-1
        agents:
          - count: 1
            simulated: true
            labels: {pool: shared}
            inventory: {cpus: 8, memory: 32Gi, gpus: 1, gpu_model: L4}
"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("preempt")
    topo = tmp / "topology.yaml"
    topo.write_text(TOPOLOGY)
    f = Federation(tmp / "home")
    proc = f.ctl("up", "--detach", "--home", str(f.home), "--topology", str(topo), "--timeout", "90")
    assert proc.returncode == 0, proc.stderr
    try:
        yield f
    finally:
        f.down()


def _job(f: Federation, job_id: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(f.ctl("job", job_id, "-o", "json", check=True).stdout)
    return out


def test_high_priority_job_preempts_a_low_one_whole_and_the_low_one_runs_again(fed: Federation) -> None:
    with fed.client() as c:
        low = c.submit(
            {"name": "filler", "priority": "low", "replicas": 2,
             "command": ["python3", "-c", "import time; time.sleep(12); print('low done')"],
             "resources": {"cpus": 1, "gpus": 2, "gpu_model": "H100"}}
        )  # fmt: skip
        wait_for(
            lambda: [t["state"] for t in _job(fed, low.job_id)["tasks"]] == ["RUNNING", "RUNNING"],
            60,
            "both low tasks to run",
        )
        high = c.submit(
            {"name": "urgent", "priority": "high",
             "command": ["python3", "-c", "import time; time.sleep(2); print('high done')"],
             "resources": {"cpus": 1, "gpus": 4, "gpu_model": "H100"}}
        )  # fmt: skip

    def preempted() -> bool:
        tasks = _job(fed, low.job_id)["tasks"]
        return all(t["attempt"] >= 1 for t in tasks)

    wait_for(preempted, 30, "the low job to be preempted (new attempts of every task)")
    low_job = _job(fed, low.job_id)
    reason = f"preempted by job {high.job_id} (priority high)"
    for t in low_job["tasks"]:
        assert t["exit_retries"] == 0 and t["lost_retries"] == 0, t  # no retry spent
        if t["state"] == "PENDING":  # requeued, waiting for the high job to finish
            assert t["message"] == reason, t
    if any(t["state"] == "PENDING" for t in low_job["tasks"]):
        assert reason in fed.ctl("job", low.job_id, check=True).stdout
    explained = fed.ctl("explain", low.job_id, check=True).stdout
    assert f"preempted by job {high.job_id}" in explained, explained
    assert f"preempting job {low.job_id}" in fed.ctl("explain", high.job_id, check=True).stdout

    wait_for(lambda: _job(fed, high.job_id)["state"] == "SUCCEEDED", 60, "the high job to run and succeed")
    wait_for(
        lambda: _job(fed, low.job_id)["state"] == "SUCCEEDED", 90, "the low job to run again and succeed"
    )
    final = _job(fed, low.job_id)
    assert all(t["attempt"] == 1 for t in final["tasks"]), final["tasks"]
    assert "low done" in fed.ctl("logs", low.job_id, check=True).stdout
    audit = fed.ctl("audit", "-o", "json").stdout
    assert "Preempt" in audit and low.job_id in audit


def test_same_priority_never_preempts(fed: Federation) -> None:
    with fed.client() as c:
        first = c.submit(
            {"name": "first", "command": ["python3", "-c", "import time; time.sleep(8)"],
             "resources": {"cpus": 1, "gpus": 4, "gpu_model": "H100"}}
        )  # fmt: skip
        wait_for(lambda: _job(fed, first.job_id)["state"] == "RUNNING", 60, "the first job to run")
        second = c.submit(
            {"name": "second", "command": ["python3", "-c", "print('second')"],
             "resources": {"cpus": 1, "gpus": 4, "gpu_model": "H100"}}
        )  # fmt: skip
    try:
        wait_for(lambda: "why it waits" in fed.ctl("explain", second.job_id).stdout, 30, "the second to wait")
        time.sleep(2)
        assert all(t["attempt"] == 0 for t in _job(fed, first.job_id)["tasks"])
        assert _job(fed, first.job_id)["state"] == "RUNNING"
    finally:
        fed.ctl("cancel", first.job_id)
    wait_for(lambda: _job(fed, second.job_id)["state"] == "SUCCEEDED", 60, "the second job to run after")


def test_four_quarter_gpu_tasks_share_one_card_and_a_fifth_waits(fed: Federation) -> None:
    # Task 0 ends early: the quarter it frees (25%, which the summary rounds down to a 20% slot)
    # takes the fifth while the other three still run.
    code = "import os, time; time.sleep(3 if os.environ['DOMAINOS_TASK_INDEX'] == '0' else 15)"
    with fed.client() as c:
        job = c.submit(
            {"name": "quarters", "replicas": 5, "node_selector": {"pool": "shared"},
             "command": ["python3", "-c", code], "resources": {"cpus": 1, "gpus": 0.25}}
        )  # fmt: skip

    def states() -> list[str]:
        return [t["state"] for t in _job(fed, job.job_id)["tasks"]]

    wait_for(
        lambda: sorted(states()) == ["PENDING"] + ["RUNNING"] * 4, 60, "four quarters running, one pending"
    )
    assert {t["node_id"] for t in _job(fed, job.job_id)["tasks"] if t["state"] == "RUNNING"} == {"share-1-n1"}
    assert "25% of its compute" in fed.ctl("explain", job.job_id, check=True).stdout
    wait_for(
        lambda: states() == ["SUCCEEDED", "RUNNING", "RUNNING", "RUNNING", "RUNNING"],
        30,
        "the fifth to take the quarter task 0 freed while the other three still run",
    )
    wait_for(lambda: _job(fed, job.job_id)["state"] == "SUCCEEDED", 90, "every quarter to finish")
