"""``domainctl up`` as real processes: mutual TLS by default, with nothing for the user to do."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import grpc
import pytest
import yaml

from domainos.api.v1 import master_pb2, master_pb2_grpc
from domainos.config import INSECURE_WARNING
from domainos.security import CertFiles, Identity, check_usable

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TOPOLOGY = """\
version: 1
regions:
  - name: east
    subdomains:
      - id: east-1
        agents: [{count: 1, simulated: true, inventory: {cpus: 2, memory: 4Gi}}]
"""


def test_domainctl_up_runs_mutual_tls_by_default(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DOMAINOS_HOME": str(home)}
    for var in ("DOMAINOS_MASTER", "DOMAINOS_TOKEN", "DOMAINOS_INSECURE", "DOMAINOS_TLS_CA"):
        env.pop(var, None)

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "domainctl", *args],
            capture_output=True, text=True, env=env, timeout=150, cwd=str(tmp_path),
        )  # fmt: skip
        print(f"$ domainctl {' '.join(args)}  [exit {proc.returncode}]\n{proc.stdout}{proc.stderr}")
        return proc

    up = ctl("up", "--detach", "--topology", str(topology), "--timeout", "90")
    try:
        assert up.returncode == 0, up.stderr
        assert "warning" not in up.stderr
        local = home / "local"
        state = json.loads((local / "cluster.json").read_text())
        client = CertFiles(**state["tls"])
        assert check_usable(client).role == "client"  # type: ignore[union-attr]
        assert "insecure" not in state
        expected = {
            "master": Identity("master", "master-1"),
            "subdomain-east-1": Identity("subdomain", "east-1"),
            "agent-east-1-n1": Identity("agent", "east-1-n1"),
        }
        for name, who in expected.items():
            cfg = yaml.safe_load((local / "config" / f"{name}.yaml").read_text())
            assert "insecure" not in cfg, name
            assert check_usable(CertFiles(**cfg["tls"])) == who
            log = (local / "logs" / f"{name}.log").read_text()
            assert INSECURE_WARNING not in log, name

        domains = ctl("domains", "-o", "json")  # no flags: cluster.json names the files
        assert domains.returncode == 0, domains.stderr
        (region,) = json.loads(domains.stdout)
        (sd,) = region["subdomains"]
        assert sd["subdomain_id"] == "east-1" and sd["connected"]

        plain = ctl("domains", "--insecure")
        assert plain.returncode == 3
        assert plain.stderr.startswith(f"error: cannot reach the DomainOS master at {state['master']}")
        with grpc.insecure_channel(state["master"]) as channel, pytest.raises(grpc.RpcError) as info:
            master_pb2_grpc.DomainControlStub(channel).GetClusterInfo(
                master_pb2.GetClusterInfoRequest(), timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    finally:
        down = ctl("down")
        assert down.returncode == 0, down.stderr
