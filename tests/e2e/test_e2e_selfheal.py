"""Self-healing with real processes: a GPU fault injected into a running (simulated) node agent
cordons and drains its node; the checkpointing task on it moves to another node, as a new attempt
with no retry spent, and resumes from its last checkpoint; the master counts the job's goodput."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
from e2e_helpers import ROOT
from test_e2e_jobs import Federation, wait_for

import dsdk

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TOPOLOGY = """\
version: 1
regions:
  - name: east
    subdomains:
      - id: east-1
        agents:
          - count: 2
            simulated: true
            inventory: {cpus: 4, memory: 8Gi, gpus: 2, gpu_model: H100}
"""

# Steps 0..59, 0.1 s each; a checkpoint every 5 steps; the step it started from goes to a file.
TRAIN = """
import os, sys, time, dsdk
from dsdk.checkpoint import Checkpointer
out = sys.argv[1]
ck = Checkpointer(fsync=False)
last = ck.latest()
start = last.step + 1 if last else 0
with open(out, "a") as f:
    f.write(f"{os.environ['DOMAINOS_TASK_ATTEMPT']} {os.environ['DOMAINOS_NODE_ID']} {start}\\n")
for step in range(start, 60):
    time.sleep(0.1)
    dsdk.report_progress(step, 60)
    if step % 5 == 4:
        ck.save(step, {"step": step})
"""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("heal") / "home", topology=TOPOLOGY)
    f.up()
    try:
        yield f
    finally:
        f.down()


def test_an_xid_drains_the_node_and_the_job_resumes_from_its_checkpoint_elsewhere(
    fed: Federation, shared_dir: pathlib.Path
) -> None:
    script = shared_dir / "train.py"
    script.write_text(TRAIN)
    script.chmod(0o644)
    starts = shared_dir / "starts"
    python = fed.state.get("python") or sys.executable
    spec = {
        "command": [python, str(script), str(starts)],
        "resources": {"cpus": 1, "gpus": 1},
        "checkpoint": True,
        "retry": {"on_lost": 0, "on_exit": 0},
        "name": "heal",
    }
    with fed.client() as c:
        job_id = c.submit(spec).job_id

        def checkpointed() -> dsdk.Job | None:
            job = c.job(job_id)
            t = job.tasks[0]
            return job if t.state.value == "RUNNING" and t.checkpoint_step >= 9 else None

        job = wait_for(checkpointed, 90, "a checkpoint of step 9 reported to the master")
        node = job.tasks[0].node_id
        state_dir = next(a for a in (fed.home / "local" / "agents").iterdir() if a.name == node)
        proc = subprocess.run(
            [sys.executable, "-m", "node_agent", "inject", "--state-dir", str(state_dir), "--gpu", "0", "--xid", "79"],
            capture_output=True, text=True, cwd=str(ROOT), timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

        final = c.wait(job_id, timeout=150)
        nodes = {n.node_id: n for n in c.nodes()}
    assert final.state.value == "SUCCEEDED", final.message
    t = final.tasks[0]
    assert t.attempt == 1 and t.drains == 1 and t.lost_retries == 0 and t.exit_retries == 0
    assert t.node_id != node
    runs = [line.split() for line in starts.read_text().splitlines()]
    assert [r[0] for r in runs] == ["0", "1"] and runs[0][2] == "0"
    assert int(runs[1][2]) >= 10 and runs[1][1] != node  # resumed after its checkpoint, elsewhere
    bad = nodes[node]
    assert bad.state == "cordoned" and bad.cordoned_by == "health"
    assert "gpu0: xid 79 (GPU has fallen off the bus)" in bad.cordon_reason
    g = final.goodput
    assert g.interruptions == 1 and 0 < g.effective_ratio < 1 and g.lost_s < 3.0, g
    print(json.dumps({"goodput": g.__dict__, "runs": runs}))
