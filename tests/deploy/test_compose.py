"""The compose deployment: generated from the topology, every daemon config valid by the daemon's own rules."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

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
MASTERS = ["127.0.0.1:7070", "127.0.0.1:7071", "127.0.0.1:7072"]
ETCD_URL = "etcd://127.0.0.1:2379,127.0.0.1:2381,127.0.0.1:2383"


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
    kinds = {
        name: svc["command"][1]
        for name, svc in services.items()
        if svc.get("command", [""])[0] == "domainctl"
    }
    assert sorted(kinds.values()) == ["agent"] * 4 + ["master"] * 3 + ["subdomain"] * 2
    assert [n for n in services if n.startswith("etcd-")] == ["etcd-1", "etcd-2", "etcd-3"]
    assert "prometheus" in services and "grafana" in services
    for svc in services.values():
        assert svc["network_mode"] == "host"
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_the_file_keeps_to_what_compose_v1_and_v2_both_accept() -> None:
    compose = _compose()
    assert "version" not in compose  # the Compose Specification: v2 ignores it, v1 1.27+ reads it without
    services = compose["services"]
    # Grafana's upstream image cannot be built here: only `--profile grafana` starts it.
    assert services["grafana"]["profiles"] == ["grafana"]
    assert services["grafana"]["image"] == "grafana/grafana-oss:11.3.0"
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in services["grafana"]["volumes"]
    for name, svc in services.items():
        if name != "grafana":
            assert svc["image"] == "domainos:latest" and svc["user"] == "domainos", name
            assert svc["healthcheck"]["test"][0] == "CMD", name
    # Masters start once etcd has a quorum; sub-domains once every master listens.
    assert services["master-1"]["depends_on"] == {
        f"etcd-{i}": {"condition": "service_healthy"} for i in (1, 2, 3)
    }
    assert set(services["subdomain-east-1"]["depends_on"]) == {"master-1", "master-2", "master-3"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) is not installed")
def test_docker_compose_v1_accepts_the_file() -> None:
    proc = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
        capture_output=True, text=True, env={**os.environ, "DOCKER_HOST": "unix:///nonexistent"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_every_daemon_config_passes_its_own_validation() -> None:
    services = _compose()["services"]
    master_addrs: list[str] = []
    subdomain_addrs = set()
    for svc in services.values():
        if svc.get("command", [""])[0] != "domainctl":
            continue
        kind = svc["command"][1]
        assert svc["command"][2] == "--config"
        mount = next(v for v in svc["volumes"] if v.endswith(":ro"))
        host_path = DEPLOY / mount.split(":")[0]
        assert mount.split(":")[1] == svc["command"][3]
        cfg = dconfig.load(KIND_CONFIG[kind], str(host_path))
        if kind == "master":
            master_addrs.append(cfg.advertise)
            assert cfg.store == ETCD_URL
            assert cfg.cluster == MASTERS
            assert cfg.bootstrap_token_file == "/var/lib/domainos/secrets/admin.token"
        elif kind == "subdomain":
            subdomain_addrs.add(cfg.advertise)
            assert cfg.master == ",".join(MASTERS) and cfg.store == ETCD_URL
        else:
            assert cfg.subdomains
    assert master_addrs == MASTERS
    agents = [
        dconfig.load(AgentConfig, str(DEPLOY / "config" / f"{n}.yaml"))
        for n in services
        if n.startswith("agent-")
    ]
    assert {a for cfg in agents for a in cfg.subdomains} == subdomain_addrs


def test_prometheus_scrapes_every_component_under_the_documented_jobs() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    jobs = {job["job_name"]: job["static_configs"] for job in prom["scrape_configs"]}
    assert set(jobs) == {"etcd", "domainos-master", "domainos-subdomain", "domainos-agent", "prometheus"}

    def ports(job: str) -> set[str]:
        return {t.rsplit(":", 1)[1] for sc in jobs[job] for t in sc["targets"]}

    assert ports("etcd") == {"2379", "2381", "2383"}
    by_kind: dict[str, set[str]] = {"master": set(), "subdomain": set(), "agent": set()}
    for path in (DEPLOY / "config").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        kind = "agent" if "node_id" in data else "subdomain" if "region" in data else "master"
        by_kind[kind].add(data["metrics_listen"].rsplit(":", 1)[1])
    assert ports("domainos-master") == by_kind["master"] and len(by_kind["master"]) == 3
    assert ports("domainos-subdomain") == by_kind["subdomain"] and len(by_kind["subdomain"]) == 2
    assert ports("domainos-agent") == by_kind["agent"] and len(by_kind["agent"]) == 4
    assert {(sc["labels"]["subdomain"], sc["labels"]["region"]) for sc in jobs["domainos-subdomain"]} == {
        ("east-1", "east"),
        ("west-1", "west"),
    }
    nodes = {
        sc["labels"]["node"]: (sc["labels"]["subdomain"], sc["labels"]["region"])
        for sc in jobs["domainos-agent"]
    }
    assert nodes == {
        "east-1-n1": ("east-1", "east"),
        "east-1-n2": ("east-1", "east"),
        "west-1-n1": ("west-1", "west"),
        "west-1-n2": ("west-1", "west"),
    }
    # The compose file mounts the directory (prometheus.yml and rules/) where the config names them.
    assert "./prometheus:/etc/prometheus:ro" in _compose()["services"]["prometheus"]["volumes"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_prometheus_config(tmp_path: pathlib.Path) -> None:
    # rule_files is an absolute path inside the container: check it against the host's copy.
    text = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(
        text.replace("/etc/prometheus/rules", str(DEPLOY / "prometheus" / "rules"))
    )
    proc = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_broken_config_is_refused_by_the_daemon_validation(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "sd.yaml"
    bad.write_text("id: east-1\nregion: east\nmax_nodez: 3\n")
    with pytest.raises(ConfigError, match="unknown field max_nodez"):
        dconfig.load(SubDomainConfig, str(bad))


def test_every_daemon_runs_mutual_tls_with_its_own_certificate() -> None:
    services = _compose()["services"]
    daemons = {n: s for n, s in services.items() if s.get("command", [""])[0] == "domainctl"}
    assert len(daemons) == 9
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


def _topology(tmp_path: pathlib.Path, extra: str) -> str:
    path = tmp_path / "topology.yaml"
    path.write_text(
        "version: 1\nname: t\nregions:\n  - name: east\n    subdomains:\n      - id: east-1\n"
        "        agents:\n          - count: 2\n" + extra
    )
    return str(path)


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ("compose:\n  etcd_members: 2\n", "compose.etcd_members", "must be 1, 3 or 5"),
        ("masters: 0\n", "masters", "between 1 and 5"),
        ("masters: 6\n", "masters", "between 1 and 5"),
        ("compose:\n  prometheus_port: 70000\n", "compose.prometheus_port", "1-65535"),
        ("compose:\n  etcd_pert: 2380\n", "compose", "etcd_pert"),
    ],
)
def test_a_bad_topology_is_refused_naming_the_field(
    tmp_path: pathlib.Path, extra: str, field: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        load_topology(_topology(tmp_path, extra))
    assert field in str(err.value)


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        # master 7070..7072 runs into the sub-domains' first port
        (
            "masters: 3\ncompose:\n  subdomain_port: 7072\n",
            "compose.subdomain_port",
            "port 7072 from subdomain_port clashes with master_port",
        ),
        # three etcd members' client ports 2379, 2381, 2383 over the peers' 2380, 2382, 2384
        (
            "compose:\n  etcd_members: 3\n  etcd_peer_port: 2381\n",
            "compose.etcd_peer_port",
            "clashes with etcd_client_port",
        ),
        ("compose:\n  grafana_port: 9090\n", "compose.grafana_port", "clashes with prometheus_port"),
        ("compose:\n  agent_metrics_port: 65535\n", "compose.agent_metrics_port", "above 65535"),
    ],
)
def test_clashing_ports_are_refused_naming_the_field(
    tmp_path: pathlib.Path, extra: str, field: str, words: str
) -> None:
    topology = load_topology(_topology(tmp_path, extra))
    with pytest.raises(ConfigError, match=words) as err:
        render(topology)
    assert field in str(err.value)


def test_domainctl_compose_says_what_is_wrong(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from domainctl.__main__ import main

    path = _topology(tmp_path, "compose:\n  etcd_members: 2\n")
    assert main(["compose", "--topology", path, "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "compose.etcd_members" in err and "1, 3 or 5" in err
    assert not (tmp_path / "out").exists()


def test_a_single_member_single_master_topology_renders_one_of_each(tmp_path: pathlib.Path) -> None:
    files = render(load_topology(_topology(tmp_path, "")))
    services = yaml.safe_load(files["docker-compose.yml"])["services"]
    assert [n for n in services if n.startswith(("etcd", "master"))] == ["etcd-1", "master-1"]
    master = yaml.safe_load(files["config/master-1.yaml"])
    assert master["store"] == "etcd://127.0.0.1:2379" and "cluster" not in master
