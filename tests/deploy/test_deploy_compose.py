"""The docker-compose deployment, for real: a private engine, the images built here, the committed
``deploy/docker-compose.yml`` up, jobs through ``domainctl``, the leading master and a sub-domain
killed, and every job still SUCCEEDED exactly once. ``make test-deploy``; needs root (dockerd,
debootstrap) or ``DOCKER_HOST`` naming an engine to reuse.

The engine: ``DOCKER_HOST`` when set (reused, left running), else a private ``dockerd`` rooted at
``$DOMAINOS_DEPLOY_DOCKER_ROOT`` (default /var/tmp/domainos-deploy-docker; its images stay there
between runs, so only the first run builds the base) started here and stopped at the end.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from domainctl._compose import plan_ports
from domainos.topology import load_topology

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(ROOT / "scripts"))

import build_images  # noqa: E402
from docker_engine import Engine, EngineError, docker_cli  # noqa: E402

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(1800)]

PROJECT = "domainos-deploytest"
DOMAINCTL = str(pathlib.Path(sys.executable).with_name("domainctl"))
#: Each task appends "<job> <task> <attempt>" here (one volume shared by every agent container).
LEDGER = "/var/lib/domainos/agents/ledger"
TASK = f'echo "$DOMAINOS_JOB_ID $DOMAINOS_TASK_INDEX $DOMAINOS_TASK_ATTEMPT" >> {LEDGER}; sleep {{sleep}}'


def _log(msg: str) -> None:
    print(f"[deploy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Deployment:
    env: dict[str, str]
    directory: pathlib.Path
    client_env: dict[str, str]
    submitted: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # -- domainctl, as an operator runs it -------------------------------------------------------
    def domainctl(
        self, *args: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [DOMAINCTL, *args], env=self.client_env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"domainctl {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str, timeout: float = 60.0) -> Any:
        return json.loads(self.domainctl("-o", "json", *args, timeout=timeout).stdout)

    def submit(self, name: str, *, replicas: int = 2, sleep: float = 6) -> str:
        out = self.domainctl(
            "run", "--name", name, "--cpus", "0.25", "--replicas", str(replicas),
            "--", "sh", "-c", TASK.format(sleep=sleep),
        ).stdout  # fmt: skip
        job_id = next(w for w in out.split() if w.startswith("j-"))
        self.submitted.append(job_id)
        return job_id

    def wait_job(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.json("job", job_id)
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return job
            time.sleep(1)
        raise AssertionError(
            f"job {job_id} still {job.get('state')} after {timeout:.0f} s: {job.get('tasks')}"
        )

    def leader(self) -> str:
        return str(self.json("info", timeout=30)["master_id"])

    # -- the engine ------------------------------------------------------------------------------
    def compose(self, *args: str, check: bool = True) -> str:
        return build_images.compose(self.env, self.directory, PROJECT, *args, check=check)

    def container(self, service: str) -> str:
        out = subprocess.run(
            [docker_cli(), "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}",
             "--filter", f"label=com.docker.compose.service={service}"],
            env=self.env, capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(out) == 1, f"{service}: containers {out}"
        return out[0]

    def kill(self, service: str) -> None:
        subprocess.run(
            [docker_cli(), "kill", self.container(service)], env=self.env, check=True, capture_output=True
        )

    def restart_killed(self, service: str) -> None:
        """Bring a killed service back (``restart: unless-stopped`` may have done it already)."""
        self.compose("start", service)
        build_images.wait_healthy(self.env, PROJECT, [service], timeout=120)

    def ledger(self) -> list[tuple[str, int, int]]:
        out = subprocess.run(
            [docker_cli(), "exec", self.container("agent-east-1-n1"), "cat", LEDGER],
            env=self.env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        rows = [line.split() for line in out.splitlines() if line.strip()]
        return [(r[0], int(r[1]), int(r[2])) for r in rows]


def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last})")


def _taken_ports() -> list[int]:
    ports = plan_ports(load_topology(str(DEPLOY / "topology.yaml")))
    wanted = [
        *ports.etcd_client, *ports.etcd_peer, *ports.master, *ports.master_metrics, *ports.subdomain,
        *ports.subdomain_metrics, *ports.agent_metrics, ports.prometheus,
    ]  # fmt: skip
    taken = []
    for port in wanted:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    return taken


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    t_start = time.monotonic()
    engine: Engine | None = None
    if os.environ.get("DOCKER_HOST"):
        env = dict(os.environ)
        _log(f"reusing the engine at {env['DOCKER_HOST']}")
    else:
        if os.geteuid() != 0 or shutil.which("dockerd") is None:
            pytest.skip("needs root and dockerd (python3 scripts/docker_engine.py install), or DOCKER_HOST")
        root = os.environ.get("DOMAINOS_DEPLOY_DOCKER_ROOT", "/var/tmp/domainos-deploy-docker")
        engine = Engine(root)
        try:
            engine.start()
        except EngineError as exc:
            pytest.fail(f"could not start a private engine: {exc}")
        env = engine.env()
        _log(f"private engine at {engine.host} (started here: {engine.started_here})")
    timings: dict[str, float] = {"engine": time.monotonic() - t_start}
    directory = tmp_path_factory.mktemp("compose")
    try:
        taken = _taken_ports()
        assert not taken, (
            f"ports of the compose deployment are in use: {taken} (is `make deploy-up` running?)"
        )
        t0 = time.monotonic()
        had_base = build_images.image_exists(build_images.BASE_TAG, env)
        build_images.build_image(env)
        timings["images" if had_base else "images (base built)"] = time.monotonic() - t0
        # The committed deployment files (tests/deploy/test_compose.py checks they match the
        # topology), in a directory of their own with fresh certificates and secrets.
        for name in ("docker-compose.yml", "topology.yaml"):
            shutil.copy(DEPLOY / name, directory / name)
        shutil.copytree(DEPLOY / "config", directory / "config")
        shutil.copytree(DEPLOY / "prometheus", directory / "prometheus")
        build_images.make_pki(directory)
        t0 = time.monotonic()
        build_images.compose(env, directory, PROJECT, "up", "-d")
        services = [
            s
            for s in build_images.compose(env, directory, PROJECT, "config", "--services").split()
            if s != "grafana"
        ]
        build_images.wait_healthy(env, PROJECT, services, timeout=240)
        timings["compose up (healthy)"] = time.monotonic() - t0
        ports = plan_ports(load_topology(str(directory / "topology.yaml")))
        home = directory / "home"
        home.mkdir()
        client_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DOMAINOS_")},
            "DOMAINOS_HOME": str(home),
            "DOMAINOS_MASTER": ",".join(f"127.0.0.1:{p}" for p in ports.master),
            "DOMAINOS_TLS_CA": str(directory / "pki" / "ca.crt"),
            "DOMAINOS_TLS_CERT": str(directory / "pki" / "client-admin.crt"),
            "DOMAINOS_TLS_KEY": str(directory / "pki" / "client-admin.key"),
        }
        token = _until(
            "the admin token in secrets/", lambda: (directory / "secrets" / "admin.token").exists(), 60
        )
        assert token
        client_env["DOMAINOS_TOKEN"] = (directory / "secrets" / "admin.token").read_text().strip()
        dep = Deployment(env, directory, client_env, timings=timings)
        _log(f"up: {timings}")
        yield dep
    except BaseException:
        logs = build_images.compose(
            env, directory, PROJECT, "logs", "--no-color", "--tail", "30", check=False
        )
        _log(f"compose logs (tail):\n{logs[-20000:]}")
        raise
    finally:
        t0 = time.monotonic()
        if (directory / "docker-compose.yml").exists():
            build_images.compose(
                env,
                directory,
                PROJECT,
                "down",
                "--volumes",
                "--remove-orphans",
                "--timeout",
                "10",
                check=False,
            )
        timings["down"] = time.monotonic() - t0
        if engine is not None and engine.started_here:
            engine.stop()
        timings["total"] = time.monotonic() - t_start
        _log(f"timings (s): { {k: round(v, 1) for k, v in timings.items()} }")


def test_the_federation_is_up_and_runs_jobs(deployment: Deployment) -> None:
    info = deployment.json("info")
    assert info["subdomains_connected"] == 2 and info["nodes_ready"] == 4, info
    assert info["store"].count(",") == 2, info["store"]  # three etcd members
    jobs = [deployment.submit(f"warmup-{i}", sleep=1) for i in range(2)]
    for job_id in jobs:
        job = deployment.wait_job(job_id)
        assert job["state"] == "SUCCEEDED", job
        assert {t["region"] for t in job["tasks"]} <= {"east", "west"}


def test_killing_the_leading_master_loses_no_job(deployment: Deployment) -> None:
    before = deployment.leader()
    running = [deployment.submit(f"leader-kill-{i}", replicas=2, sleep=10) for i in range(3)]
    _until(
        "the jobs to run", lambda: all(deployment.json("job", j)["state"] == "RUNNING" for j in running), 60
    )
    t0 = time.monotonic()
    deployment.kill(before)
    _log(f"killed the leading master {before}")
    after = _until("another master to lead", lambda: (lead := deployment.leader()) != before and lead, 60)
    deployment.timings["leader failover"] = time.monotonic() - t0
    _log(f"{after} leads after {deployment.timings['leader failover']:.1f} s")
    # The new leader takes new jobs, and the sub-domains follow it.
    during = [deployment.submit(f"after-failover-{i}", sleep=2) for i in range(2)]
    _until(
        "both sub-domains connected to the new leader",
        lambda: deployment.json("info")["subdomains_connected"] == 2,
        60,
    )
    for job_id in running + during:
        job = deployment.wait_job(job_id, timeout=180)
        assert job["state"] == "SUCCEEDED", job
    deployment.restart_killed(before)
    assert deployment.leader() == after  # the returning master follows


def test_killing_a_subdomain_loses_no_job(deployment: Deployment) -> None:
    running = [deployment.submit(f"subdomain-kill-{i}", replicas=4, sleep=12) for i in range(2)]
    _until(
        "the jobs to run", lambda: all(deployment.json("job", j)["state"] == "RUNNING" for j in running), 60
    )
    on_east = sum(t["subdomain_id"] == "east-1" for j in running for t in deployment.json("job", j)["tasks"])
    assert on_east > 0, "no task landed on east-1"
    t0 = time.monotonic()
    deployment.kill("subdomain-east-1")
    _log(f"killed subdomain-east-1 ({on_east} tasks running there)")
    _until(
        "the master to see east-1 disconnected",
        lambda: deployment.json("info")["subdomains_connected"] == 1,
        30,
    )
    deployment.restart_killed("subdomain-east-1")
    _until(
        "east-1 back with both nodes",
        lambda: (
            deployment.json("info")["subdomains_connected"] == 2
            and deployment.json("info")["nodes_ready"] == 4
        ),
        60,
    )
    deployment.timings["sub-domain recovery"] = time.monotonic() - t0
    for job_id in running:
        job = deployment.wait_job(job_id, timeout=180)
        assert job["state"] == "SUCCEEDED", job
    after = deployment.submit("after-subdomain-restart", replicas=4, sleep=1)
    assert deployment.wait_job(after)["state"] == "SUCCEEDED"


def test_every_job_succeeded_exactly_once(deployment: Deployment) -> None:
    assert len(deployment.submitted) >= 10
    expected: Counter[tuple[str, int]] = Counter()
    for job_id in deployment.submitted:
        job = deployment.json("job", job_id)
        assert job["state"] == "SUCCEEDED", job
        for task in job["tasks"]:
            assert task["state"] == "SUCCEEDED", (job_id, task)
            assert task["attempt"] == 0 and task["lost_retries"] == 0, (job_id, task)
            expected[(job_id, task["index"])] = 1
    listed = {j["job_id"]: j["state"] for j in deployment.json("jobs")}
    assert all(listed.get(j) == "SUCCEEDED" for j in deployment.submitted), listed
    runs = Counter((job, task) for job, task, _ in deployment.ledger())
    assert runs == expected, (
        f"tasks run other than exactly once: {runs - expected} / missing {expected - runs}"
    )


def test_prometheus_scrapes_every_component_after_the_kills(deployment: Deployment) -> None:
    ports = plan_ports(load_topology(str(deployment.directory / "topology.yaml")))
    api = f"http://127.0.0.1:{ports.prometheus}/api/v1"

    def targets() -> dict[str, str]:
        with urllib.request.urlopen(f"{api}/targets?state=active", timeout=5) as resp:
            active = json.load(resp)["data"]["activeTargets"]
        return {f"{t['labels']['job']} {t['labels']['instance']}": t["health"] for t in active}

    def all_up() -> dict[str, str]:
        try:
            seen = targets()
        except OSError as exc:
            raise AssertionError(f"Prometheus API: {exc}") from None
        assert len(seen) == 13 and set(seen.values()) == {"up"}, seen
        return seen

    seen = _until("every scrape target up", all_up, 90)
    jobs = Counter(key.split()[0] for key in seen)
    assert jobs == {
        "etcd": 3,
        "domainos-master": 3,
        "domainos-subdomain": 2,
        "domainos-agent": 4,
        "prometheus": 1,
    }
    with urllib.request.urlopen(f"{api}/rules", timeout=5) as resp:
        groups = json.load(resp)["data"]["groups"]
    rule_files = list((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    assert bool(groups) == bool(rule_files), (groups, rule_files)
