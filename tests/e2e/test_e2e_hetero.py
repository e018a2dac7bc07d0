"""Real processes end to end: per-task constraints on a heterogeneous federation.

Two sub-domains of simulated agents: ``hop-1`` holds one H100 node (labelled ``zone=a``), ``mix-1`` one
A100 node and one H100 node. ``gpu_model: H100`` lands only on H100 nodes, ``exclude_gpu_models: [H100]``
only on the A100 node, ``node_selector: {zone: a}`` only in hop-1, and a job reading shards 0 and 1 of
``corpus`` lands on hop-1's node, which holds them, although mix-1 has more room — the master choosing the sub-domain from
summaries, the sub-domain the node.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_e2e_jobs import Federation, wait_for

pytestmark = [pytest.mark.e2e]

TOPOLOGY = """\
version: 1
name: hetero
regions:
  - name: r
    subdomains:
      - id: hop-1
        agents:
          - count: 1
            simulated: true
            labels: {zone: a}
            datasets: {corpus: [0, 1]}
            inventory: {cpus: 8, memory: 32Gi, gpus: 4, gpu_model: H100}
      - id: mix-1
        agents:
          - count: 1
            simulated: true
            inventory: {cpus: 8, memory: 32Gi, gpus: 4, gpu_model: A100}
          - count: 1
            simulated: true
            inventory: {cpus: 8, memory: 32Gi, gpus: 4, gpu_model: H100}
"""
H100_NODES = {"hop-1-n1", "mix-1-n2"}
A100_NODES = {"mix-1-n1"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("hetero")
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


def _nodes_when_done(f: Federation, job_id: str) -> set[str]:
    wait_for(lambda: _job(f, job_id)["state"] == "SUCCEEDED", 60, f"job {job_id} to succeed")
    return {t["node_id"] for t in _job(f, job_id)["tasks"]}


def _submit(f: Federation, spec: dict[str, Any]) -> str:
    with f.client() as c:
        return str(c.submit({"command": ["python3", "-c", "import time; time.sleep(1)"], **spec}).job_id)


def test_gpu_model_h100_lands_only_on_h100_nodes(fed: Federation) -> None:
    # 4 tasks x 2 GPUs: the H100 nodes have 8 GPUs between them, the A100 node must stay unused.
    job = _submit(
        fed, {"name": "hopper", "replicas": 4, "resources": {"cpus": 1, "gpus": 2, "gpu_model": "H100"}}
    )
    nodes = _nodes_when_done(fed, job)
    assert nodes and nodes <= H100_NODES, nodes


def test_exclude_h100_lands_only_on_the_a100_node(fed: Federation) -> None:
    job = _submit(fed, {"name": "no-hopper", "replicas": 3, "resources": {"cpus": 1, "gpus": 2},
                        "exclude_gpu_models": ["H100"]})  # fmt: skip
    assert _nodes_when_done(fed, job) == A100_NODES


def test_node_selector_lands_only_in_the_labelled_subdomain(fed: Federation) -> None:
    job = _submit(
        fed, {"name": "zoned", "replicas": 2, "resources": {"cpus": 1}, "node_selector": {"zone": "a"}}
    )
    assert _nodes_when_done(fed, job) == {"hop-1-n1"}


def test_a_selector_nobody_matches_waits_with_the_reason(fed: Federation) -> None:
    job = _submit(fed, {"name": "nowhere", "resources": {"cpus": 1}, "node_selector": {"zone": "b"}})
    try:
        wanted = "node_selector zone=b: none of the 2 sub-domain(s) tried has ready nodes with every label"
        wait_for(lambda: wanted in fed.ctl("explain", job).stdout, 30, "the node_selector reason in explain")
        assert _job(fed, job)["state"] == "PENDING"
    finally:
        fed.ctl("cancel", job)


def test_locality_lands_where_the_shards_are(fed: Federation) -> None:
    job = _submit(fed, {"name": "reader", "replicas": 2, "resources": {"cpus": 1},
                        "locality": {"dataset": "corpus", "shards": [0, 1], "wait": "60s"}})  # fmt: skip
    assert _nodes_when_done(fed, job) == {"hop-1-n1"}  # spreading alone would use mix-1 (more room)
    explained = fed.ctl("explain", job, check=True).stdout
    assert "finished tasks: 2 SUCCEEDED" in explained
