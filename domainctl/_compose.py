"""Render a docker-compose deployment from a topology file (the format ``domainctl up`` reads).

``domainctl compose --topology deploy/topology.yaml --out deploy`` writes ``docker-compose.yml``,
``prometheus/prometheus.yml`` and one YAML config per daemon under ``config/``. Every container
uses host networking (the machines this was built for only allow loopback traffic), so each
component gets its own fixed port; the table is printed in the compose file's header.

The topology's ``masters`` gives the master replicas (one leads by an etcd lease; followers
redirect clients) and its ``compose:`` section the etcd members and the first port of each kind
(:class:`~domainos.topology.ComposeSpec`). Default ports: etcd member i (from 0) client 2379+2i,
peer 2380+2i; master i gRPC 7070+i, metrics 9100+i; sub-domain i gRPC 7101+i, metrics 9111+i;
agent j metrics 9201+j; Prometheus 9090; Grafana 3000 (``--profile grafana``).

Every connection is mutual TLS: each daemon config names ``/etc/domainos/pki/ca.crt`` and its own
``<role>-<id>.crt/.key``, and every daemon mounts ``./pki`` there read-only. ``domainctl compose
--pki`` (or ``domainctl certs init --dir deploy/pki`` plus ``certs issue`` per component) fills it.

The file keeps to what docker-compose v1 (1.28+) and Compose v2 both accept: no ``version:`` key
(the Compose Specification), ``depends_on`` conditions, ``profiles``, ``init``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from domainos.errors import ConfigError
from domainos.topology import Topology

CONFIG_DIR = "/etc/domainos"
PKI_DIR = f"{CONFIG_DIR}/pki"
#: The master writes the bootstrap admin token here (``./secrets`` on the host).
SECRETS_DIR = "/var/lib/domainos/secrets"
#: Each agent's state directory is ``AGENTS_DIR/<node id>`` (one named volume for all agents).
AGENTS_DIR = "/var/lib/domainos/agents"
GRAFANA_IMAGE = "grafana/grafana-oss:11.3.0"
#: The user the image's daemons run as (``deploy/Dockerfile``); ``./pki`` and ``./secrets`` must be
#: readable (secrets: writable) by this uid.
IMAGE_UID = 10001


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)


def tls_paths(role: str, ident: str) -> dict[str, str]:
    """A daemon's ``tls:`` entry: paths inside the container (``./pki`` is mounted at PKI_DIR)."""
    return {
        "ca": f"{PKI_DIR}/ca.crt",
        "cert": f"{PKI_DIR}/{role}-{ident}.crt",
        "key": f"{PKI_DIR}/{role}-{ident}.key",
    }


def master_ids(topology: Topology) -> list[str]:
    return [f"master-{i}" for i in range(1, topology.masters + 1)]


def identities(topology: Topology) -> list[tuple[str, str]]:
    """(role, id) of every certificate the deployment needs, the clients' included (``admin``, and
    ``tasks-<node>``: what each agent gives its tasks to call the master)."""
    agents = topology.agents()
    return [
        *(("master", m) for m in master_ids(topology)),
        *(("subdomain", sd.id) for _, sd in topology.subdomains()),
        *(("agent", plan.node_id) for plan in agents),
        *(("client", f"tasks-{plan.node_id}") for plan in agents),
        ("client", "admin"),
    ]


def issue_pki(topology: Topology, directory: str) -> list[str]:
    """Create (or keep) the CA in ``directory`` and issue every component's certificate; the paths."""
    from domainos.security import Identity, init_ca, issue_files

    init_ca(directory)
    out = []
    for role, ident in identities(topology):
        files = issue_files(directory, Identity(role, ident), hosts=("127.0.0.1", "localhost"))
        out += [files.cert, files.key]
    return out


@dataclass(frozen=True)
class PortPlan:
    """Every fixed port of the deployment (host networking: all on one machine's loopback)."""

    etcd_client: list[int]
    etcd_peer: list[int]
    master: list[int]
    master_metrics: list[int]
    subdomain: list[int]
    subdomain_metrics: list[int]
    agent_metrics: list[int]
    prometheus: int
    grafana: int

    def table(self) -> list[tuple[str, str]]:
        """(what, ports) rows, for the compose file's header and the README."""

        def span(ports: list[int]) -> str:
            return ", ".join(str(p) for p in ports)

        return [
            ("etcd clients", span(self.etcd_client)),
            ("etcd peers", span(self.etcd_peer)),
            ("masters gRPC", span(self.master)),
            ("masters metrics", span(self.master_metrics)),
            ("sub-domains gRPC", span(self.subdomain)),
            ("sub-domains metrics", span(self.subdomain_metrics)),
            ("agents metrics", span(self.agent_metrics)),
            ("Prometheus", str(self.prometheus)),
            ("Grafana (profile grafana)", str(self.grafana)),
        ]


def plan_ports(topology: Topology) -> PortPlan:
    """The ports of every component; :class:`ConfigError` naming the ``compose.*`` field when two
    components would share a port or one falls outside 1-65535."""
    c = topology.compose
    n_sub = len(topology.subdomains())
    n_agents = len(topology.agents())
    plan = PortPlan(
        etcd_client=[c.etcd_client_port + 2 * i for i in range(c.etcd_members)],
        etcd_peer=[c.etcd_peer_port + 2 * i for i in range(c.etcd_members)],
        master=[c.master_port + i for i in range(topology.masters)],
        master_metrics=[c.master_metrics_port + i for i in range(topology.masters)],
        subdomain=[c.subdomain_port + i for i in range(n_sub)],
        subdomain_metrics=[c.subdomain_metrics_port + i for i in range(n_sub)],
        agent_metrics=[c.agent_metrics_port + i for i in range(n_agents)],
        prometheus=c.prometheus_port,
        grafana=c.grafana_port,
    )
    used: dict[int, str] = {}
    for name, ports in (
        ("etcd_client_port", plan.etcd_client),
        ("etcd_peer_port", plan.etcd_peer),
        ("master_port", plan.master),
        ("master_metrics_port", plan.master_metrics),
        ("subdomain_port", plan.subdomain),
        ("subdomain_metrics_port", plan.subdomain_metrics),
        ("agent_metrics_port", plan.agent_metrics),
        ("prometheus_port", [plan.prometheus]),
        ("grafana_port", [plan.grafana]),
    ):
        for port in ports:
            if port > 65535:
                raise ConfigError(
                    f"{name} {getattr(c, name)} leaves port {port} (one of {len(ports)}) above 65535",
                    field=f"compose.{name}",
                )
            if port in used:
                raise ConfigError(
                    f"port {port} from {name} clashes with {used[port]} (host networking: every "
                    "component needs its own port); move one of them",
                    field=f"compose.{name}",
                )
            used[port] = name
    return plan


def render(topology: Topology, *, image: str = "domainos:latest") -> dict[str, str]:
    """Return {relative path: file text} for the whole deployment."""
    ports = plan_ports(topology)
    n_etcd = topology.compose.etcd_members
    etcd_names = [f"etcd-{i}" for i in range(1, n_etcd + 1)]
    etcd_url = "etcd://" + ",".join(f"127.0.0.1:{p}" for p in ports.etcd_client)
    masters = master_ids(topology)
    master_addrs = [f"127.0.0.1:{p}" for p in ports.master]
    files: dict[str, str] = {}
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    scrape: list[dict[str, Any]] = []

    def healthy(*names: str) -> dict[str, Any]:
        return {n: {"condition": "service_healthy"} for n in names}

    def tcp_check(port: int) -> list[str]:
        # A TCP check: an API call would need a client certificate and a token.
        return ["python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"]

    def http_check(port: int, path: str) -> list[str]:
        url = f"http://127.0.0.1:{port}{path}"
        return ["python3", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=2)"]

    def health(test: list[str]) -> dict[str, Any]:
        return {
            "test": ["CMD", *test],
            "interval": "5s",
            "timeout": "3s",
            "retries": 12,
            "start_period": "5s",
        }

    # -- etcd: one member per service, each with its own data volume ---------------------------------
    cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(etcd_names, ports.etcd_peer, strict=True))
    for name, client, peer in zip(etcd_names, ports.etcd_client, ports.etcd_peer, strict=True):
        volumes[f"{name}-data"] = {}
        services[name] = {
            "image": image,
            "network_mode": "host",
            "user": "domainos",
            "init": True,
            "command": [
                "etcd",
                f"--name={name}",
                "--data-dir=/var/lib/domainos/etcd",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster={cluster}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token=domainos-{topology.name}",
            ],
            "volumes": [f"{name}-data:/var/lib/domainos/etcd"],
            "healthcheck": health(["etcdctl", f"--endpoints=127.0.0.1:{client}", "endpoint", "health"]),
            "stop_grace_period": "15s",
            "restart": "unless-stopped",
        }
    scrape.append(
        {
            "job_name": "etcd",
            "static_configs": [
                {"targets": [f"127.0.0.1:{p}"], "labels": {"member": n}}
                for n, p in zip(etcd_names, ports.etcd_client, strict=True)
            ],
        }
    )

    def daemon(
        name: str,
        kind: str,
        ident: str,
        config: dict[str, Any],
        depends: dict[str, Any],
        check: list[str],
    ) -> dict[str, Any]:
        config = {**config, "tls": tls_paths(kind, ident)}
        files[f"config/{name}.yaml"] = (
            f"# Generated by `domainctl compose` from topology.yaml.\n{_dump(config)}"
        )
        services[name] = svc = {
            "image": image,
            "network_mode": "host",
            "user": "domainos",
            "init": True,
            "command": ["domainctl", kind, "--config", f"{CONFIG_DIR}/{name}.yaml"],
            "volumes": [f"./config/{name}.yaml:{CONFIG_DIR}/{name}.yaml:ro", f"./pki:{PKI_DIR}:ro"],
            "depends_on": depends,
            "healthcheck": health(check),
            "stop_signal": "SIGTERM",
            "stop_grace_period": "15s",
            "restart": "unless-stopped",
        }
        return svc

    # -- masters: one leads (etcd lease), the others redirect clients to it ----------------------
    master_targets = []
    for ident, port, mport in zip(masters, ports.master, ports.master_metrics, strict=True):
        cfg: dict[str, Any] = {
            "id": ident,
            "listen": f"0.0.0.0:{port}",
            "advertise": f"127.0.0.1:{port}",
            "store": etcd_url,
            "metrics_listen": f"0.0.0.0:{mport}",
            "log_format": "json",
            # The first admin token, minted by the first leader (0600) into ./secrets on the host.
            "bootstrap_token_file": f"{SECRETS_DIR}/admin.token",
        }
        if len(masters) > 1:
            cfg["cluster"] = master_addrs
        svc = daemon(ident, "master", ident, cfg, healthy(*etcd_names), tcp_check(port))
        svc["volumes"].append(f"./secrets:{SECRETS_DIR}")
        master_targets.append({"targets": [f"127.0.0.1:{mport}"], "labels": {"master": ident}})
    scrape.append({"job_name": "domainos-master", "static_configs": master_targets})

    # -- sub-domains and their agents ---------------------------------------------------------
    sd_targets: list[dict[str, Any]] = []
    agent_targets: list[dict[str, Any]] = []
    agent_i = 0
    for i, (region, sd) in enumerate(topology.subdomains()):
        port, mport = ports.subdomain[i], ports.subdomain_metrics[i]
        name = f"subdomain-{sd.id}"
        daemon(
            name,
            "subdomain",
            sd.id,
            {
                "id": sd.id,
                "region": region.name,
                "listen": f"0.0.0.0:{port}",
                "advertise": f"127.0.0.1:{port}",
                # Every master replica: the sub-domain follows whichever leads.
                "master": ",".join(master_addrs),
                "store": etcd_url,
                "max_nodes": sd.max_nodes,
                "metrics_listen": f"0.0.0.0:{mport}",
                "log_format": "json",
            },
            healthy(*masters),
            tcp_check(port),
        )
        sd_targets.append(
            {"targets": [f"127.0.0.1:{mport}"], "labels": {"subdomain": sd.id, "region": region.name}}
        )
        for plan in (a for a in topology.agents() if a.subdomain == sd.id):
            metrics_port = ports.agent_metrics[agent_i]
            agent_i += 1
            tasks = tls_paths("client", f"tasks-{plan.node_id}")
            acfg: dict[str, Any] = {
                "node_id": plan.node_id,
                "subdomains": [f"127.0.0.1:{port}"],
                "region": region.name,
                "state_dir": f"{AGENTS_DIR}/{plan.node_id}",
                "metrics_listen": f"0.0.0.0:{metrics_port}",
                "log_format": "json",
                # Tasks (DSDK workers) call the master with a client certificate of their own.
                "task_client_tls": tasks,
            }
            # The inventory, labels, block and dataset shards the topology declares.
            acfg.update(plan.agent_fields())
            aname = f"agent-{plan.node_id}"
            svc = daemon(
                aname, "agent", plan.node_id, acfg, healthy(name), http_check(metrics_port, "/metrics")
            )
            svc["volumes"].append(f"agent-state:{AGENTS_DIR}")
            agent_targets.append(
                {
                    "targets": [f"127.0.0.1:{metrics_port}"],
                    "labels": {"subdomain": sd.id, "region": region.name, "node": plan.node_id},
                }
            )
    scrape.append({"job_name": "domainos-subdomain", "static_configs": sd_targets})
    scrape.append({"job_name": "domainos-agent", "static_configs": agent_targets})
    volumes["agent-state"] = {}

    # -- Prometheus (Debian's, from the same image) and Grafana (upstream image, a profile) ------
    volumes["prometheus-data"] = {}
    services["prometheus"] = {
        "image": image,
        "network_mode": "host",
        "user": "domainos",
        "init": True,
        "command": [
            "prometheus",
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/var/lib/domainos/prometheus",
            f"--web.listen-address=127.0.0.1:{ports.prometheus}",
        ],
        "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus-data:/var/lib/domainos/prometheus"],
        "depends_on": healthy(*masters),
        "healthcheck": health(http_check(ports.prometheus, "/-/ready")),
        "restart": "unless-stopped",
    }
    scrape.append(
        {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{ports.prometheus}"]}]}
    )
    services["grafana"] = {
        "image": GRAFANA_IMAGE,
        "profiles": ["grafana"],
        "network_mode": "host",
        "environment": {
            "GF_SERVER_HTTP_PORT": str(ports.grafana),
            "GF_PATHS_PROVISIONING": "/etc/grafana/provisioning",
        },
        "volumes": [
            "./grafana/provisioning:/etc/grafana/provisioning:ro",
            "./grafana/dashboards:/var/lib/grafana/dashboards:ro",
        ],
        "depends_on": ["prometheus"],
        "restart": "unless-stopped",
    }
    files["prometheus/prometheus.yml"] = "# Generated by `domainctl compose` from topology.yaml.\n" + _dump(
        {
            "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
            "rule_files": ["/etc/prometheus/rules/*.yml"],
            "scrape_configs": scrape,
        }
    )
    table = "\n".join(f"#   {what:<26} {where}" for what, where in ports.table())
    header = (
        "# Generated by `domainctl compose --topology deploy/topology.yaml --out deploy`; do not edit by hand.\n"
        f"# Host networking throughout ({n_etcd} etcd members, {len(masters)} masters, one leads). Ports:\n"
        f"{table}\n"
        "# Build the image and the certificates first: `make deploy-up` (see deploy/README.md).\n"
        "# Mutual TLS everywhere: ./pki (mounted at /etc/domainos/pki) must hold ca.crt and every component's\n"
        "# certificate: `domainctl compose --pki` or `domainctl certs init/issue --dir deploy/pki`.\n"
        "# The same file runs under Compose v2 (`docker compose up -d`) and docker-compose v1 1.28+.\n"
    )
    compose = {"services": services, "volumes": volumes}
    files["docker-compose.yml"] = header + _dump(compose)
    return files
