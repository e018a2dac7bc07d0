"""Real processes end to end: the master's admission path on simulated GPU agents.

A tenant over its GPU quota waits with the reason (``domainctl job``, ``domainctl explain``) and never
runs; ``domainctl quota set`` raises the quota and the job runs. A job that would push a region past
its power budget goes to the other region's sub-domain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from test_e2e_jobs import Federation, wait_for

pytestmark = [pytest.mark.e2e]

MODEL = "H100-SXM-80GB"
# One 8-GPU node per region. East's budget is 3 kW: its idle GPUs draw 8 x 70 W = 0.56 kW, so a
# 4-GPU job (4 x 700 W = 2.8 kW) does not fit there; west has no budget.
TOPOLOGY = f"""\
version: 1
name: sched
regions:
  - name: east
    power_budget_kw: 3
    subdomains:
      - id: east-1
        agents:
          - count: 1
            simulated: true
            inventory: {{cpus: 16, memory: 64Gi, gpus: 8, gpu_model: {MODEL}}}
  - name: west
    subdomains:
      - id: west-1
        agents:
          - count: 1
            simulated: true
            inventory: {{cpus: 16, memory: 64Gi, gpus: 8, gpu_model: {MODEL}}}
"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("sched")
    topo = tmp / "topology.yaml"
    topo.write_text(TOPOLOGY)
    f = Federation(tmp / "home")
    proc = f.ctl("up", "--detach", "--home", str(f.home), "--topology", str(topo), "--timeout", "90")
    assert proc.returncode == 0, proc.stderr
    try:
        yield f
    finally:
        f.down()


def _job(f: Federation, job_id: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(f.ctl("job", job_id, "-o", "json", check=True).stdout)
    return out


def test_quota_blocked_tenant_waits_then_runs_when_the_quota_is_raised(fed: Federation) -> None:
    fed.ctl("tenant", "create", "acme", check=True)
    fed.ctl("quota", "set", "--tenant", "acme", "--gpus", "1", "--gpu-model", MODEL, check=True)
    with fed.client() as c:
        job = c.submit(
            {
                "name": "blocked",
                "tenant": "acme",
                "command": ["python3", "-c", "print('ran')"],
                "resources": {"cpus": 1, "gpus": 2},
            }
        )
    wanted = f"tenant acme would use 2 of 1 gpu:{MODEL} in all regions"
    wait_for(lambda: wanted in fed.ctl("job", job.job_id).stdout, 30, "the quota reason in `domainctl job`")
    assert _job(fed, job.job_id)["state"] == "PENDING"
    explained = fed.ctl("explain", job.job_id, check=True).stdout
    assert wanted in explained and "why it waits: quota: " in explained
    listed = fed.ctl("quota", "ls", "--tenant", "acme", check=True).stdout
    assert f"gpu:{MODEL}" in listed

    fed.ctl("quota", "set", "--tenant", "acme", "--gpus", "2", "--gpu-model", MODEL, check=True)
    wait_for(
        lambda: _job(fed, job.job_id)["state"] == "SUCCEEDED", 60, "the job to run once the quota allows"
    )
    assert "ran" in fed.ctl("logs", job.job_id, check=True).stdout


def test_a_job_over_a_regions_power_budget_runs_in_the_other_region(fed: Federation) -> None:
    with fed.client() as c:
        job = c.submit(
            {
                "name": "hot",
                "command": ["python3", "-c", "import os; print(os.environ['DOMAINOS_SUBDOMAIN'])"],
                "resources": {"cpus": 1, "gpus": 4},
            }
        )
    wait_for(lambda: _job(fed, job.job_id)["state"] == "SUCCEEDED", 60, "the power-capped job to run")
    assert fed.ctl("logs", job.job_id, check=True).stdout.strip().splitlines()[-1] == "west-1"


def test_explain_names_the_power_reason(fed: Federation) -> None:
    """Deterministic: west is full (an 8-GPU job that east's budget refuses), so a 4-GPU job waits, and
    explain says east was refused for power; when west frees up, the job runs there."""
    with fed.client() as c:
        big = c.submit(
            {"name": "west-filler", "command": ["python3", "-c", "import time; time.sleep(120)"],
             "resources": {"cpus": 1, "gpus": 8}}
        )  # fmt: skip
        wait_for(lambda: _job(fed, big.job_id)["state"] == "RUNNING", 60, "the 8-GPU job to run")
        assert fed.ctl("job", big.job_id, "-o", "json", check=True).stdout.count('"west-1"') >= 1
        small = c.submit(
            {"name": "waits-for-power", "command": ["python3", "-c", "print('ok')"],
             "resources": {"cpus": 1, "gpus": 4}}
        )  # fmt: skip
    try:
        wait_for(
            lambda: "power: region east" in fed.ctl("explain", small.job_id).stdout, 30, "the power reason"
        )
        explained = fed.ctl("explain", small.job_id, check=True).stdout
        assert "why it waits" in explained
        assert _job(fed, small.job_id)["state"] == "PENDING"
    finally:
        fed.ctl("cancel", big.job_id)
    wait_for(lambda: _job(fed, small.job_id)["state"] == "SUCCEEDED", 60, "the job to run once west is free")
