"""Monitoring: the alert rules, the provisioned Grafana dashboard and the metric names.

* The dashboard and the Grafana provisioning are well formed, and every ``domainos_*`` name that the
  dashboard and the rules use is one that a component exports (no operator tools needed).
* ``promtool check rules`` and ``promtool test rules`` pass (the unit tests prove the alerts fire).
* ``promtool check metrics`` finds nothing to fix in the real ``/metrics`` of every component of a
  local federation (``domainctl up``).
* A real Prometheus scrapes that federation (jobs run, a node is killed) with the deploy config's job
  names and target labels and the rules loaded: every panel's PromQL evaluates without error and the
  key panels return data.

The last three are marked ``ops`` and skipped, with the reason, where Debian's ``prometheus``
package (promtool, prometheus) is not installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "e2e"))
from e2e_helpers import ROOT, domainctl_env, run_domainctl, wait_for

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "domainos.rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "domainos-federation.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "domainos.yml"
METRICS_MODULES = [
    ROOT / "master_domain" / "_metrics.py",
    ROOT / "sub_domain" / "_metrics.py",
    ROOT / "node_agent" / "_metrics.py",
]

#: The dashboard's rows (titles start with these).
ROWS = (
    "Capacity & free resources",
    "Power draw",
    "Jobs",
    "Scheduler decision latency",
    "Nodes",
    "Control plane",
)
#: Panels that must show data against a federation with jobs run and a node killed.
KEY_PANELS = (
    "GPUs",
    "Free GPUs",
    "CPU cores",
    "GPUs per region: capacity and free",
    "Free GPUs per sub-domain",
    "Power per region: in use, measured, budget",
    "Job throughput",
    "Queue length: jobs by state",
    "Queue wait (submission to first placement)",
    "Decision latency",
    "Decisions per second",
    "Node failures (per 10 minutes)",
    "Failure detection latency",
    "Master leader",
    "Sub-domains connected",
)
#: Of those, panels whose first query must give a finite number (a quantile, not NaN).
FINITE_PANELS = (
    "Decision latency",
    "Queue wait (submission to first placement)",
    "Failure detection latency",
)

TOPOLOGY = """\
version: 1
name: observability
regions:
  - name: east
    power_budget_kw: 5
    subdomains:
      - id: east-1
        agents:
          - count: 2
            simulated: true
            inventory: {cpus: 4, memory: 8Gi, gpus: 2, gpu_model: H100-SXM-80GB}
  - name: west
    subdomains:
      - id: west-1
        agents:
          - count: 2
"""
REGION_OF = {"east-1": "east", "west-1": "west"}
OPS_MISSING = "needs Debian's prometheus package ({}); apt-get install prometheus"


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    return [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _names(expr: str) -> set[str]:
    """Exported ``domainos_*`` names an expression reads (not recording-rule names ``a:b:c``)."""
    return {m for m in re.findall(r"(?<![:\w])domainos_[a-z_]+(?![:\w])", expr)}


def _exported_stem(name: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", name)


# -- static checks (no tools) --------------------------------------------------------------------


def test_dashboard_is_well_formed_grafana() -> None:
    dash = _dashboard()
    assert dash["uid"] == "domainos-federation" and dash["title"]
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"region", "subdomain"}
    for v in variables.values():
        assert v["type"] == "query" and v["datasource"]["uid"] == "prometheus"
        assert v["includeAll"] and v["allValue"] == ".*"
    assert "$region" in variables["subdomain"]["query"]["query"]

    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in panels if p["type"] == "row"]
    for want in ROWS:
        assert any(r.startswith(want) for r in rows), f"no row {want!r} in {rows}"
    occupied: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert {"x", "y", "w", "h"} <= set(g) and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "prometheus" and t["expr"].strip() and t["refId"]
    titles = [p["title"] for p in _panels()]
    assert len(titles) == len(set(titles)), "panel titles must be unique (the tests name panels by title)"
    assert set(KEY_PANELS) <= set(titles)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    (ds,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert ds["uid"] == "prometheus" and ds["type"] == "prometheus" and ds["url"] == "http://127.0.0.1:9090"
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_deploy_scrape_config_has_the_jobs_and_labels_the_rules_use() -> None:
    """The rules and the dashboard rely on the generated scrape config's job names and labels."""
    config_file = DEPLOY / "prometheus" / "prometheus.yml"
    if not config_file.exists():
        pytest.skip("deploy/prometheus/prometheus.yml is not generated yet (domainctl compose)")
    config = yaml.safe_load(config_file.read_text())
    assert "/etc/prometheus/rules/*.yml" in config["rule_files"]  # deploy/prometheus is /etc/prometheus
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert {"etcd", "domainos-master", "domainos-subdomain", "domainos-agent"} <= set(jobs)
    for job, labels in (
        ("domainos-subdomain", {"region", "subdomain"}),
        ("domainos-agent", {"region", "subdomain", "node"}),
    ):
        for static in jobs[job]["static_configs"]:
            assert labels <= set(static.get("labels", {})), (job, static)


def test_dashboard_and_rules_use_only_exported_metric_names() -> None:
    """A renamed metric breaks its panels silently: every name must be one a component defines."""
    source = "\n".join(m.read_text() for m in METRICS_MODULES)
    used: dict[str, str] = {}
    for title, expr in _exprs():
        used.update({n: f"panel {title!r}" for n in _names(expr)})
    for rule in _rules():
        used.update({n: f"rule {rule.get('alert') or rule.get('record')}" for n in _names(rule["expr"])})
    assert used
    missing = {n: where for n, where in used.items() if f'"{_exported_stem(n)}"' not in source}
    assert not missing, f"names no component exports: {missing}"


def test_master_exports_capacity_power_quota_and_leader_aggregates() -> None:
    from prometheus_client import generate_latest

    from master_domain._metrics import MasterMetrics, MasterStats, QuotaStat, RegionPowerStat, SubdomainStat

    stats = MasterStats(
        is_leader=True,
        subdomains=[
            SubdomainStat(
                "east-1",
                "east",
                True,
                nodes_ready=2,
                capacity_gpus=16,
                free_gpus=4,
                capacity_cpu_cores=64.0,
                free_cpu_cores=10.5,
                power_draw_w=1200.0,
            ),
            SubdomainStat("west-1", "west", False),
        ],
        region_power=[
            RegionPowerStat("east", 5000.0, 1000.0, 1200.0, 1200.0),
            RegionPowerStat("west", math.inf, 0.0, 0.0, 0.0),
        ],
        quotas=[QuotaStat("acme", "east", "*", "gpu:*", 8, 8)],
    )
    metrics = MasterMetrics(lambda: stats)
    metrics.observe_queue_wait(0.2)
    metrics.job_submitted()
    metrics.job_finished("SUCCEEDED")
    text = generate_latest(metrics.registry).decode()
    for line in (
        "domainos_master_is_leader 1.0",
        'domainos_master_subdomain_connected{region="west",subdomain="west-1"} 0.0',
        'domainos_master_subdomain_free_gpus{region="east",subdomain="east-1"} 4.0',
        'domainos_master_subdomain_free_cpu_cores{region="east",subdomain="east-1"} 10.5',
        'domainos_master_subdomain_nodes{region="east",state="ready",subdomain="east-1"} 2.0',
        'domainos_master_subdomain_power_draw_watts{region="east",subdomain="east-1"} 1200.0',
        'domainos_master_region_power_budget_watts{region="east"} 5000.0',
        'domainos_master_region_power_in_use_watts{region="west"} 0.0',
        'domainos_master_quota_used{region="east",resource_class="gpu:*",subdomain="*",tenant="acme"} 8.0',
        "domainos_master_task_queue_wait_seconds_count 1.0",
        "domainos_master_jobs_submitted_total 1.0",
        'domainos_master_jobs_finished_total{state="succeeded"} 1.0',
        'domainos_master_jobs_finished_total{state="failed"} 0.0',
    ):
        assert line in text, line
    assert 'domainos_master_region_power_budget_watts{region="west"}' not in text  # no cap: absent


def test_subdomain_exports_node_failures_and_detection_latency() -> None:
    from prometheus_client import generate_latest

    from sub_domain._metrics import DETECTION_BUCKETS, LagHistogram, MetricsServer, MetricsSnapshot

    detection = LagHistogram(DETECTION_BUCKETS)
    detection.observe(4.2)
    buckets, total = detection.snapshot()
    snap = MetricsSnapshot("east-1", {"ready": 1}, {}, 0, node_failures=1, detection_buckets=buckets,
                           detection_sum=total)  # fmt: skip
    text = generate_latest(MetricsServer(lambda: snap).registry).decode()
    assert "domainos_subdomain_node_failures_total 1.0" in text
    assert 'domainos_subdomain_node_failure_detection_seconds_bucket{le="4"} 0.0' in text
    assert 'domainos_subdomain_node_failure_detection_seconds_bucket{le="5"} 1.0' in text
    assert "domainos_subdomain_node_failure_detection_seconds_sum 4.2" in text


# -- promtool ------------------------------------------------------------------------------------


def _need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/bin/{tool}" if os.access(f"/usr/bin/{tool}", os.X_OK) else None)
    if path is None:
        pytest.skip(OPS_MISSING.format(f"{tool} is not on PATH"))
    return path


@pytest.mark.ops
def test_promtool_check_and_test_rules() -> None:
    promtool = _need("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    assert RULE_TESTS
    test = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert test.returncode == 0, test.stdout + test.stderr
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert {"SubdomainLost", "MasterWithoutLeader", "NodeFailureRateHigh", "QuotaExhausted"} <= alerts
    tested = {
        t["alertname"]
        for f in RULE_TESTS
        for case in yaml.safe_load(f.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert alerts <= tested, f"alerts without a unit test: {alerts - tested}"
    for rule in _rules():
        if "alert" in rule:
            assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


# -- a real federation ---------------------------------------------------------------------------


class LocalFederation:
    """``domainctl up --detach`` in a private home (as tests/e2e does), with a topology of its own."""

    def __init__(self, base: pathlib.Path) -> None:
        self.home = base / "home"
        self.topology = base / "topology.yaml"
        self.topology.write_text(TOPOLOGY)
        self.env = domainctl_env(self.home)

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_domainctl(*args, env=self.env, timeout=timeout)

    def up(self) -> None:
        proc = self.ctl(
            "up", "--detach", "--home", str(self.home), "--topology", str(self.topology), "--timeout", "90"
        )
        if proc.returncode != 0:
            for log in sorted((self.home / "local" / "logs").glob("*.log")):
                print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def down(self) -> None:
        self.ctl("down", "--home", str(self.home))

    @property
    def components(self) -> list[dict[str, Any]]:
        state = json.loads((self.home / "local" / "cluster.json").read_text())
        return list(state["components"])

    @property
    def master(self) -> str:
        return str(json.loads((self.home / "local" / "cluster.json").read_text())["master"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return bytes(reply.read())


def _wait(cond: Any, timeout: float, what: str) -> Any:
    return wait_for(cond, timeout, what, interval=0.25)


def scrape_config(components: list[dict[str, Any]], rules: pathlib.Path) -> dict[str, Any]:
    """The deploy config's jobs and target labels, for a local federation (1 s scrapes)."""
    masters, subs, agents = [], [], []
    for c in components:
        if not c.get("metrics"):
            continue
        if c["kind"] == "master":
            masters.append({"targets": [c["metrics"]]})
        elif c["kind"] == "subdomain":
            sd = c["subdomain"]
            subs.append({"targets": [c["metrics"]], "labels": {"subdomain": sd, "region": REGION_OF[sd]}})
        elif c["kind"] == "agent":
            sd = c["subdomain"]
            node = c["name"].removeprefix("agent-")
            labels = {"subdomain": sd, "region": REGION_OF[sd], "node": node}
            agents.append({"targets": [c["metrics"]], "labels": labels})
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "domainos-master", "static_configs": masters},
            {"job_name": "domainos-subdomain", "static_configs": subs},
            {"job_name": "domainos-agent", "static_configs": agents},
        ],
    }


class Prometheus:
    def __init__(self, binary: str, workdir: pathlib.Path, config: dict[str, Any]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(workdir),
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        with contextlib.suppress(OSError):
            return _get(f"{self.url}/-/ready").startswith(b"Prometheus")
        return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = json.loads(_get(url, timeout=10))
        except urllib.error.HTTPError as exc:  # a bad query is a 400 with the error in the body
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}\n-> {body.get('errorType')}: {body.get('error')}"
        result = body["data"]["result"]
        return result if isinstance(result, list) else [{"value": result}]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture(scope="module")
def federation() -> Iterator[LocalFederation]:
    _need("promtool")
    base = pathlib.Path(tempfile.mkdtemp(prefix="domainos-obs-"))
    fed = LocalFederation(base)
    try:
        fed.up()
        yield fed
    finally:
        fed.down()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.ops
@pytest.mark.e2e
def test_promtool_check_metrics_of_every_component(federation: LocalFederation) -> None:
    promtool = _need("promtool")
    kinds: set[str] = set()
    for c in federation.components:
        exposition = _get(f"http://{c['metrics']}/metrics")
        assert b"domainos_" in exposition, c["name"]
        check = subprocess.run(
            [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30
        )
        problems = (check.stdout + check.stderr).decode(errors="replace").strip()
        assert check.returncode == 0 and not problems, f"{c['name']}: {problems}"
        kinds.add(c["kind"])
    assert kinds == {"master", "subdomain", "agent"}


def _run_jobs(fed: LocalFederation) -> None:
    """Through the CLI, as a user would: a quota, a GPU job, a spread job and a failing one."""
    quota = fed.ctl("quota", "set", "--tenant", "system", "--gpus", "2")  # quota vs usage on the table
    assert quota.returncode == 0, quota.stderr
    py = ["--", "python3", "-c"]
    runs = [
        ("gpu", ["--cpus", "0.5", "--gpus", "1", *py, "print(1)"], 0),
        ("spread", ["--cpus", "0.25", "--replicas", "3", *py, "print(2)"], 0),
        ("fails", ["--cpus", "0.25", *py, "raise SystemExit(3)"], 1),
    ]
    for name, args, code in runs:
        run = fed.ctl("run", "--wait", "--timeout", "60", "--name", name, *args)
        assert run.returncode == code, f"{name}: {run.stdout}{run.stderr}"


def _substitute(expr: str, region: str, subdomain: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$region", region).replace("$subdomain", subdomain)


@pytest.mark.ops
@pytest.mark.e2e
def test_real_prometheus_evaluates_every_panel(federation: LocalFederation) -> None:
    binary = _need("prometheus")
    work = pathlib.Path(tempfile.mkdtemp(prefix="domainos-prom-"))
    prom = Prometheus(binary, work, scrape_config(federation.components, RULES))
    try:
        _wait(prom.ready, 30, "prometheus ready")
        targets = len([c for c in federation.components if c.get("metrics")])
        _wait(lambda: len(prom.query("up == 1")) == targets, 30, "every target scraped")

        _run_jobs(federation)
        # A node failure: SIGKILL one real agent; its sub-domain declares it dead within ~5 s.
        victim = next(c for c in federation.components if c["name"] == "agent-west-1-n2")
        os.kill(victim["pid"], signal.SIGKILL)
        _wait(
            lambda: prom.query("sum(domainos_subdomain_node_failures_total) >= 1"),
            30,
            "the killed node counted as a failure",
        )
        time.sleep(2)  # two more scrapes after the failure for rate()

        # Rules load and their expressions evaluate.
        groups = prom.api("rules")["data"]["groups"]
        assert {g["name"] for g in groups} == {"domainos.recording", "domainos.alerts"}
        for g in groups:
            for rule in g["rules"]:
                assert rule["health"] != "err", rule
        for rule in _rules():
            prom.query(rule["expr"])

        # Template variables (Grafana's label_values(metric, label)).
        regions = prom.api("label/region/values", **{"match[]": "domainos_master_subdomain_connected"})[
            "data"
        ]
        assert sorted(regions) == ["east", "west"]
        subs = prom.api(
            "label/subdomain/values", **{"match[]": 'domainos_master_subdomain_connected{region=~"east"}'}
        )["data"]
        assert subs == ["east-1"]

        # Every panel's queries, for all regions and for one sub-domain.
        with_data: dict[str, int] = {}
        for title, expr in _exprs():
            result = prom.query(_substitute(expr, ".*", ".*"))
            prom.query(_substitute(expr, "east", "east-1"))
            if result:
                with_data[title] = max(with_data.get(title, 0), len(result))
        print("panels with data:", json.dumps(with_data, indent=1))
        missing = [t for t in KEY_PANELS if t not in with_data]
        assert not missing, f"key panels without data: {missing}"
        first = {p["title"]: p["targets"][0]["expr"] for p in _panels()}
        for title in FINITE_PANELS:
            values = [float(r["value"][1]) for r in prom.query(_substitute(first[title], ".*", ".*"))]
            assert values and all(math.isfinite(v) for v in values), f"{title}: {values}"

        # What the panels show is right for this federation.
        gpus = prom.query(_substitute(first["GPUs"], ".*", ".*"))
        assert float(gpus[0]["value"][1]) == 4.0  # 2 simulated agents x 2 GPUs in east-1
        assert float(prom.query("max(domainos_master_is_leader)")[0]["value"][1]) == 1.0
        failed = prom.query('sum(domainos_master_jobs_finished_total{state="failed"})')
        assert float(failed[0]["value"][1]) == 1.0
        budget = prom.query('domainos_master_region_power_budget_watts{region="east"}')
        assert float(budget[0]["value"][1]) == 5000.0
    finally:
        prom.stop()
        shutil.rmtree(work, ignore_errors=True)
