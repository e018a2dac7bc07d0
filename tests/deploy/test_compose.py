"""The compose deployment: generated from the topology, every daemon config valid by the daemon's own rules."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from domainctl._compose import render
from domainos import config as dconfig
from domainos.errors import ConfigError
from domainos.topology import load_topology
from master_domain import MasterConfig
from node_agent import AgentConfig
from sub_domain import SubDomainConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KIND_CONFIG = {"master": MasterConfig, "subdomain": SubDomainConfig, "agent": AgentConfig}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_committed_files_match_the_topology() -> None:
    files = render(load_topology(str(DEPLOY / "topology.yaml")))
    for rel, text in files.items():
        assert (DEPLOY / rel).read_text() == text, (
            f"deploy/{rel} is stale: run `domainctl compose --out deploy`"
        )


def test_services_are_the_documented_topology() -> None:
    services = _compose()["services"]
    kinds = {name: svc["command"][1] for name, svc in services.items() if svc["command"][0] == "domainctl"}
    assert sorted(k for k in kinds.values()) == ["agent"] * 4 + ["master"] + ["subdomain"] * 2
    assert "etcd" in services and "prometheus" in services
    for svc in services.values():
        assert svc["network_mode"] == "host"
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_every_daemon_config_passes_its_own_validation() -> None:
    services = _compose()["services"]
    master_addr = None
    subdomain_addrs = set()
    for svc in services.values():
        if svc["command"][0] != "domainctl":
            continue
        kind = svc["command"][1]
        assert svc["command"][2] == "--config"
        mount = next(v for v in svc["volumes"] if v.endswith(":ro"))
        host_path = DEPLOY / mount.split(":")[0]
        assert mount.split(":")[1] == svc["command"][3]
        cfg = dconfig.load(KIND_CONFIG[kind], str(host_path))
        if kind == "master":
            master_addr = cfg.advertise
            assert cfg.store.startswith("etcd://")
        elif kind == "subdomain":
            subdomain_addrs.add(cfg.advertise)
            assert cfg.master == "127.0.0.1:7070"
        else:
            assert cfg.subdomains
    assert master_addr == "127.0.0.1:7070"
    agents = [
        dconfig.load(AgentConfig, str(DEPLOY / "config" / f"{n}.yaml"))
        for n in services
        if n.startswith("agent-")
    ]
    assert {a for cfg in agents for a in cfg.subdomains} == subdomain_addrs


def test_prometheus_scrapes_every_component() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = set(prom["scrape_configs"][0]["static_configs"][0]["targets"])
    ports = set()
    for path in (DEPLOY / "config").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        ports.add(data["metrics_listen"].rsplit(":", 1)[1])
    assert {t.rsplit(":", 1)[1] for t in targets} == ports
    assert len(targets) == 7


def test_a_broken_config_is_refused_by_the_daemon_validation(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "sd.yaml"
    bad.write_text("id: east-1\nregion: east\nmax_nodez: 3\n")
    with pytest.raises(ConfigError, match="unknown field max_nodez"):
        dconfig.load(SubDomainConfig, str(bad))


def test_every_daemon_runs_mutual_tls_with_its_own_certificate() -> None:
    services = _compose()["services"]
    daemons = {n: s for n, s in services.items() if s["command"][0] == "domainctl"}
    assert len(daemons) == 7
    for name, svc in daemons.items():
        kind = svc["command"][1]
        assert "./pki:/etc/domainos/pki:ro" in svc["volumes"], name
        cfg = dconfig.load(KIND_CONFIG[kind], str(DEPLOY / "config" / f"{name}.yaml"))
        ident = cfg.node_id if kind == "agent" else cfg.id
        assert cfg.tls is not None and not cfg.insecure, name
        assert (cfg.tls.ca, cfg.tls.cert, cfg.tls.key) == (
            "/etc/domainos/pki/ca.crt",
            f"/etc/domainos/pki/{kind}-{ident}.crt",
            f"/etc/domainos/pki/{kind}-{ident}.key",
        )


def test_compose_pki_issues_every_certificate_the_configs_name(tmp_path: pathlib.Path) -> None:
    from domainctl.__main__ import main
    from domainos.security import CertFiles, Identity, check_usable

    argv = ["compose", "--topology", str(DEPLOY / "topology.yaml"), "--out", str(tmp_path), "--pki"]
    assert main(argv) == 0
    for path in (tmp_path / "config").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        files = CertFiles(
            **{k: v.replace("/etc/domainos/pki", str(tmp_path / "pki")) for k, v in data["tls"].items()}
        )
        role = pathlib.Path(files.cert).stem.split("-", 1)[0]
        assert check_usable(files) == Identity(role, data.get("node_id") or data["id"])
    assert check_usable(
        CertFiles(*(str(tmp_path / "pki" / f) for f in ("ca.crt", "client-admin.crt", "client-admin.key")))
    )
