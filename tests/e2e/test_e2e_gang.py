"""Real processes end to end: gangs and training jobs placed all or nothing across sub-domains.

A `domainctl up` federation of simulated 8-GPU agents: gang reservations go from the master to the
real sub-domain managers (hold, commit, start), and a user sees the outcome through `domainctl` and
the DSDK: every task of a gang starts together or none does; a gang that cannot fit waits with the
numbers; a training job is planned by topology, its DP replicas spill into a second region when the
first region's power budget cannot feed them all and the inter-region link is fast enough, and it
waits with the loss model's numbers when the link is too slow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_e2e_jobs import Federation, wait_for

pytestmark = [pytest.mark.e2e]

MODEL = "H100-SXM-80GB"
NODE = f"{{cpus: 16, memory: 64Gi, gpus: 8, gpu_model: {MODEL}}}"


def topology(*, east_nodes: int, budget_kw: float, bandwidth_gbps: float, distance_km: float) -> str:
    budget = f"    power_budget_kw: {budget_kw}\n" if budget_kw else ""
    return f"""\
version: 1
name: gang
regions:
  - name: east
{budget}    subdomains:
      - id: east-1
        agents:
          - count: {east_nodes}
            simulated: true
            inventory: {NODE}
  - name: west
    subdomains:
      - id: west-1
        agents:
          - count: 1
            simulated: true
            inventory: {NODE}
links:
  - between: [east, west]
    bandwidth_gbps: {bandwidth_gbps}
    distance_km: {distance_km}
"""


def _up(tmp: Any, text: str) -> Federation:
    topo = tmp / "topology.yaml"
    topo.write_text(text)
    f = Federation(tmp / "home")
    proc = f.ctl("up", "--detach", "--home", str(f.home), "--topology", str(topo), "--timeout", "90")
    if proc.returncode != 0:
        for log in sorted((f.home / "local" / "logs").glob("*.log")):
            print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    assert proc.returncode == 0, proc.stderr
    return f


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """east: 2 nodes (16 GPUs) under an 8 kW budget (idle draw 16 x 70 W: room for 9 more H100s at
    700 W, one 8-GPU replica); west: 1 node, no cap; a fast 400 Gbit/s, 100 km link between them."""
    f = _up(
        tmp_path_factory.mktemp("gang"),
        topology(east_nodes=2, budget_kw=8, bandwidth_gbps=400, distance_km=100),
    )
    try:
        yield f
    finally:
        f.down()


def _job(f: Federation, job_id: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(f.ctl("job", job_id, "-o", "json", check=True).stdout)
    return out


def _state(f: Federation, job_id: str) -> str:
    return str(_job(f, job_id)["state"])


def _tasks(job: dict[str, Any]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = job["tasks"]
    return tasks


def _sleep(seconds: float) -> list[str]:
    return [
        "python3",
        "-c",
        f"import os, time; print(os.environ['DOMAINOS_SUBDOMAIN']); time.sleep({seconds})",
    ]


def test_a_gang_of_four_starts_together_and_succeeds(fed: Federation) -> None:
    with fed.client() as c:
        job = c.submit(
            {"name": "gang4", "command": _sleep(2), "replicas": 4, "gang": {"min": 4},
             "resources": {"cpus": 1, "gpus": 2}}
        )  # fmt: skip
        done = c.wait(job.job_id, timeout=90)
    assert done.succeeded, done.message
    assert len({t.attempt for t in done.tasks}) == 1
    starts = [t.started_at for t in done.tasks]
    assert max(starts) - min(starts) < 5.0, starts  # held together, started at the commit
    assert len({t.subdomain_id for t in done.tasks}) == 1  # it fits one sub-domain: kept in one
    explained = fed.ctl("explain", job.job_id, check=True).stdout
    assert "SUCCEEDED" in explained


def test_a_gang_that_fits_nowhere_waits_with_the_reason_and_nothing_runs(fed: Federation) -> None:
    with fed.client() as c:
        job = c.submit(
            {"name": "too-big", "command": _sleep(1), "replicas": 4, "gang": {"min": 4},
             "resources": {"cpus": 1, "gpus": 8}}
        )  # fmt: skip
        wanted = "must start together; the federation has room for"
        wait_for(lambda: wanted in fed.ctl("explain", job.job_id).stdout, 30, "the gang's capacity reason")
        explained = fed.ctl("explain", job.job_id, check=True).stdout
        assert "of 4" in explained and "gang: the first 4 of 4 tasks are placed all or nothing" in explained
        job_now = _job(fed, job.job_id)
        assert job_now["state"] == "PENDING"
        assert all(t["state"] == "PENDING" and not t.get("node_id") for t in _tasks(job_now))
        c.cancel(job.job_id, reason="test over")
        wait_for(lambda: _state(fed, job.job_id) == "CANCELLED", 30, "the cancel")


def test_a_training_job_tp2_pp2_dp2_runs_in_one_sub_domain(fed: Federation) -> None:
    with fed.client() as c:
        job = c.submit(
            {"name": "train-small", "command": _sleep(1), "parallelism": {"tp": 2, "pp": 2, "dp": 2},
             "resources": {"cpus": 1, "gpus": 2}}
        )  # fmt: skip
        done = c.wait(job.job_id, timeout=90)
    assert done.succeeded, done.message
    assert len(done.tasks) == 4
    assert len({t.subdomain_id for t in done.tasks}) == 1, [t.subdomain_id for t in done.tasks]


def test_a_power_capped_region_spills_dp_replicas_over_a_fast_link(fed: Federation) -> None:
    """tp=8, dp=2: east-1 has the GPUs for both replicas but its power budget feeds one; the second
    goes to west over the 400 Gbit/s link (loss 0.58% <= 2%)."""
    with fed.client() as c:
        job = c.submit(
            {"name": "train-spill", "command": _sleep(15), "parallelism": {"tp": 8, "pp": 1, "dp": 2},
             "model": {"parameters": 100_000_000}, "iteration_time": "1s",
             "resources": {"cpus": 1, "gpus": 8}}
        )  # fmt: skip
        wait_for(lambda: _state(fed, job.job_id) in ("RUNNING", "SUCCEEDED"), 90, "the split job to run")
        explained = fed.ctl("explain", job.job_id, check=True).stdout
        running = _job(fed, job.job_id)
        assert sorted(t["subdomain_id"] for t in _tasks(running)) == ["east-1", "west-1"], explained
        assert "DP split over 2 sub-domains in 2 regions" in explained, explained
        assert "power" in explained and "loss model: link 400 Gbit/s, 100 km" in explained, explained
        done = c.wait(job.job_id, timeout=90)
    assert done.succeeded, done.message


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One node per region, joined by a slow 10 Gbit/s, 1000 km link."""
    f = _up(
        tmp_path_factory.mktemp("gang-slow"),
        topology(east_nodes=1, budget_kw=0, bandwidth_gbps=10, distance_km=1000),
    )
    try:
        yield f
    finally:
        f.down()


def test_a_dp_split_over_a_slow_link_waits_with_the_loss_numbers(slow: Federation) -> None:
    with slow.client() as c:
        job = c.submit(
            {"name": "train-slow", "command": _sleep(1), "parallelism": {"tp": 8, "pp": 1, "dp": 2},
             "model": {"parameters": 100_000_000}, "iteration_time": "1s",
             "resources": {"cpus": 1, "gpus": 8}}
        )  # fmt: skip
        wanted = "> budget 2.0%: waiting for room in one domain"
        wait_for(lambda: wanted in slow.ctl("explain", job.job_id).stdout, 30, "the loss reason")
        explained = slow.ctl("explain", job.job_id, check=True).stdout
        # t_transfer = 1.2 x 200 MB / 1.25 GB/s = 192 ms, RTT 10 ms: 20.2% of a 1 s iteration.
        assert "20.2% per iteration" in explained, explained
        assert "loss model: link 10 Gbit/s, 1000 km" in explained and "msg_bytes" in explained, explained
        assert _state(slow, job.job_id) == "PENDING"
        c.cancel(job.job_id, reason="test over")
