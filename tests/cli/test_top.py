"""``domainctl top``: the pure renderer on synthetic snapshots, and one frame of a real federation."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from domainctl import _top
from domainctl.__main__ import main
from domainos.resources import Resources
from dsdk import ClusterInfo, Goodput, Job, JobSpec, JobState, Node, Region, SubDomain

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "e2e"))
from e2e_helpers import domainctl_env, run_domainctl

GiB = 2**30
NOW = 1_800_000_000.0


def subdomain(
    sid: str,
    region: str,
    *,
    connected: bool = True,
    gpus: int = 16,
    free_gpus: int = 4,
    cpu: int = 64_000,
    free_cpu: int = 16_000,
    nodes: int = 4,
    power_w: float = 0.0,
) -> SubDomain:
    return SubDomain(
        subdomain_id=sid,
        region=region,
        connected=connected,
        last_seen_at=NOW - 30,
        nodes_total=nodes,
        nodes_ready=nodes if connected else 0,
        capacity=Resources(cpu, 256 * GiB, gpus),
        free=Resources(free_cpu, 128 * GiB, free_gpus),
        running_tasks=3,
        gpus_by_model={"H100": gpus} if gpus else {},
        power_draw_w=power_w,
    )


def node(
    nid: str, *, gpu_util: float = 0.0, cpu_util: float = 0.0, gpus: int = 8, sd: str = "east-1"
) -> Node:
    return Node(
        node_id=nid,
        subdomain_id=sd,
        region="east",
        state="ready",
        gpus=gpus,
        gpu_model="H100" if gpus else "",
        allocatable=Resources(32_000, 128 * GiB, gpus),
        free=Resources(16_000, 64 * GiB, gpus // 2),
        running_tasks=1,
        cpu_percent=cpu_util,
        gpu_utilization_percent=gpu_util,
        memory_used_bytes=4 * GiB,
    )


def job(
    jid: str, *, gpus: int = 0, replicas: int = 1, name: str = "", age: float = 60, tenant: str = ""
) -> Job:
    spec = JobSpec(command=("sleep", "60"), tenant=tenant) if tenant else None
    return Job(
        job_id=jid,
        state=JobState.RUNNING,
        name=name,
        replicas=replicas,
        command=("sleep", "60"),
        resources=Resources(1000, GiB, gpus),
        created_at=NOW - age,
        spec=spec,
    )


def snapshot(**kw: object) -> _top.Snapshot:
    base: dict[str, object] = {
        "taken_at": NOW,
        "master_address": "10.0.0.1:7070",
        "info": ClusterInfo(
            master_id="master-2", version="0.1.0", store="etcd://10.0.0.9:2379", started_at=NOW - 7200
        ),
        "regions": (
            Region(
                "east",
                (subdomain("east-1", "east", power_w=4200), subdomain("east-2", "east", connected=False)),
            ),
            Region("west", (subdomain("west-1", "west", gpus=0, free_gpus=0),)),
        ),
        "nodes": (
            node("n-idle", gpu_util=5),
            node("n-hot", gpu_util=97, cpu_util=20),
            node("n-cpu", gpus=0, cpu_util=99),
        ),
        "running": (
            job("j-small", name="small", tenant="acme"),
            job("j-big", gpus=8, replicas=4, name="train-llm"),
        ),
        "pending": 3,
    }
    base.update(kw)
    return _top.Snapshot(**base)  # type: ignore[arg-type]


def text(snap: _top.Snapshot, view: _top.View | None = None, width: int = 160) -> str:
    return _top.render_text(snap, view, width=width)


# -- the pure renderer ------------------------------------------------------------------------


def test_header_totals_leader_and_jobs() -> None:
    out = text(snapshot())
    head = out.split("Regions and sub-domains")[0]
    assert "leader master-2 at 10.0.0.1:7070" in head and "up 2h" in head and "store etcd" in head
    # GPUs: 12 used of 32 (east-1 16 - 4 free; east-2 the same; west-1 none): 37%.
    assert "GPUs" in head and "24/32 used" in head and "(32 H100)" in head
    assert "Nodes   8/12 ready" in head and "Sub-domains 2/3 connected" in head and "Regions 2" in head
    assert "Power 4.2 kW" in head
    assert "Jobs    2 running, 3 pending" in head
    assert "q quits" not in head  # only the live display says how to quit
    assert "q quits" in text(snapshot(), _top.View(live=True))


def test_regions_and_subdomains_table_columns_bars_and_lost_subdomain() -> None:
    out = text(snapshot())
    table = out.split("Regions and sub-domains")[1].split("Busiest nodes")[0]
    header = table.splitlines()[1].split()
    assert header[:2] == ["REGION/SUB-DOMAIN", "STATUS"]
    assert [h for h in ("NODES", "GPU", "CPU", "MEMORY", "FREE", "TASKS", "POWER") if h in header] == [
        "NODES",
        "GPU",
        "CPU",
        "MEMORY",
        "FREE",
        "TASKS",
        "POWER",
    ]
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert "1/2 connected" in rows["east"] and "24/32" in rows["east"]
    assert "connected" in rows["east-1"] and "██████░░ 12/16" in rows["east-1"]  # 75% of 8 cells
    assert "LOST 30s" in rows["east-2"]  # a lost sub-domain is marked, with how long ago it was seen
    assert "4 GPU 16 CPU 128Gi" in rows["east-1"] and "4.2 kW" in rows["east-1"]
    assert "1/1 connected" in rows["west"]
    # No GPUs at all: a dash, not an empty bar.
    assert rows["west-1"].split()[3] == "-"


def test_bar_levels_and_bounds() -> None:
    assert _top.bar(0).plain == "░" * 10
    assert _top.bar(100).plain == "█" * 10
    assert _top.bar(250).plain == "█" * 10 and _top.bar(-5).plain == "░" * 10
    assert _top.bar(50).plain == "█" * 5 + "░" * 5
    assert _top.bar(0.1).plain.startswith("█")  # any use shows
    assert (
        _top.level_style(10) == "green" and _top.level_style(70) == "yellow" and _top.level_style(95) == "red"
    )
    assert _top.meter(1, 0, "x").plain == "-"


def test_busiest_nodes_sorted_by_gpu_then_cpu_utilisation() -> None:
    nodes = [
        node("a", gpu_util=10, cpu_util=90),
        node("b", gpu_util=90, cpu_util=10),
        node("c", gpu_util=90, cpu_util=50),
        node("cpu-only", gpus=0, cpu_util=100),
    ]
    assert [n.node_id for n in _top.busiest(nodes, 10)] == ["c", "b", "a", "cpu-only"]
    assert [n.node_id for n in _top.busiest(nodes, 2)] == ["c", "b"]
    out = text(snapshot())
    section = out.split("Busiest nodes")[1].split("Running jobs")[0]
    order = [line.split()[0] for line in section.splitlines()[3:] if line.startswith("n-")]
    assert order == ["n-hot", "n-idle", "n-cpu"]
    assert "top 3 of 3 fetched" in section
    hot = next(line for line in section.splitlines() if line.startswith("n-hot"))
    assert "97%" in hot and "4/8 H100" in hot


def test_busiest_nodes_truncated_and_partial_fetch_said() -> None:
    many = tuple(node(f"n{i:02d}", gpu_util=i) for i in range(40))
    regions = (Region("east", (subdomain("east-1", "east", nodes=10_000),)),)
    out = text(snapshot(nodes=many, regions=regions), _top.View(nodes=5))
    section = out.split("Busiest nodes")[1].split("Running jobs")[0]
    assert "top 5 of 40 fetched" in section
    assert [line.split()[0] for line in section.splitlines()[3:8]] == ["n39", "n38", "n37", "n36", "n35"]
    assert "n34" not in section
    assert "no server-side sort" in section and "east-1 40 of 10000" in section
    # --nodes 0: no node section at all (and nothing was fetched).
    assert "Busiest nodes" not in text(snapshot(nodes_fetched=False, nodes=()), _top.View(nodes=0))


def test_unreachable_subdomains_named() -> None:
    out = text(snapshot(unreachable=("east-2",)))
    assert "no answer from sub-domain(s): east-2" in out


def test_subdomain_rows_truncated_lost_ones_kept() -> None:
    busy = [subdomain(f"sd-{i:02d}", "east", free_gpus=16 - i % 16) for i in range(30)]
    subs = (*busy, subdomain("sd-lost", "east", connected=False))
    out = text(snapshot(regions=(Region("east", subs),)), _top.View(subdomains=5))
    assert "LOST" in out and "sd-lost" in out
    assert "… and 26 more sub-domains" in out
    shown = [s for s in (f"sd-{i:02d}" for i in range(30)) if f"  {s} " in out]
    assert shown == ["sd-13", "sd-14", "sd-15", "sd-29"]  # the lost one, then the busiest 4 (GPU share)


def test_running_jobs_largest_first_with_tenant_tasks_age_goodput() -> None:
    jobs = (
        job("j-small", name="small", tenant="acme", age=30),
        job("j-big", gpus=8, replicas=4, name="train-llm", age=7200),
        Job(
            job_id="j-good",
            state=JobState.RUNNING,
            replicas=2,
            resources=Resources(1000, GiB, 1),
            created_at=NOW - 600,
            goodput=Goodput(wall_s=100, productive_s=93, effective_ratio=0.93),
        ),
    )
    out = text(snapshot(running=jobs))
    section = out.split("Running jobs")[1]
    assert "top 3 of 3, largest first" in section
    header = section.splitlines()[1].split()
    assert header == ["JOB", "NAME", "TENANT", "TASKS", "PER", "TASK", "AGE", "GOODPUT"]
    rows = [line.split() for line in section.splitlines()[3:] if line.strip()]
    assert [r[0] for r in rows] == ["j-big", "j-good", "j-small"]
    assert rows[0][1:4] == ["train-llm", "-", "4"] and rows[0][-2:] == ["2h", "-"]
    assert rows[1][-2:] == ["10m", "93%"]
    assert rows[2][2] == "acme" and rows[2][-2] == "30s"
    limited = text(snapshot(running=jobs, running_capped=True), _top.View(jobs=1))
    assert "top 1 of 3+" in limited and "j-small" not in limited
    assert "no running jobs" in text(snapshot(running=()))


def test_empty_federation_and_refresh_error() -> None:
    out = text(snapshot(regions=(), nodes=(), running=(), pending=0))
    assert "no sub-domains have registered with the master yet" in out
    assert "no nodes" in out
    failed = text(snapshot(error="cannot reach the DomainOS master at 10.0.0.1:7070"))
    assert "refresh failed: cannot reach the DomainOS master" in failed


def test_no_color_has_no_escapes_and_color_has() -> None:
    assert "\x1b[" not in text(snapshot())
    assert "\x1b[" in _top.render_text(snapshot(), width=160, color=True)


def test_json_snapshot_is_plain() -> None:
    from domainctl import _render

    data = json.loads(_render.to_json(snapshot()))
    assert data["info"]["master_id"] == "master-2" and data["pending"] == 3
    assert {r["name"] for r in data["regions"]} == {"east", "west"}


@pytest.mark.parametrize(
    "args",
    [["top", "--interval", "0"], ["top", "--nodes", "-1"], ["top", "--jobs", "x"]],
)
def test_bad_flags_exit_2_before_contacting_a_master(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--master", "127.0.0.1:1", "--insecure"]) == 2


def test_unreachable_master_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--once", "--master", "127.0.0.1:1", "--insecure"]) == 3
    assert "cannot reach the DomainOS master" in capsys.readouterr().err


# -- one frame of a real local federation ---------------------------------------------------------

TOPOLOGY = """\
version: 1
name: top-test
regions:
  - name: east
    subdomains:
      - id: east-1
        agents:
          - count: 1
  - name: west
    subdomains:
      - id: west-1
        agents:
          - count: 1
            simulated: true
            inventory: {cpus: 16, memory: 64Gi, gpus: 8, gpu_model: H100-SXM-80GB}
"""


class Ctl:
    def __init__(self, home: pathlib.Path) -> None:
        self.home = home
        self.env = domainctl_env(home, "NO_COLOR")

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = run_domainctl(*args, env=self.env, timeout=timeout)
        print(f"$ domainctl {' '.join(args)}  [exit {proc.returncode}]\n{proc.stdout}{proc.stderr}")
        return proc


@pytest.fixture
def federation(tmp_path: pathlib.Path) -> Iterator[Ctl]:
    """Two regions, one sub-domain each, one agent each (one real, one simulated with 8 GPUs)."""
    home = tmp_path / "home"
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    ctl = Ctl(home)
    up = ctl("up", "--detach", "--home", str(home), "--topology", str(topology), "--timeout", "60")
    try:
        assert up.returncode == 0, up.stderr
        yield ctl
    finally:
        ctl("down", "--home", str(home), "--timeout", "5")


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_top_once_against_a_real_federation(federation: Ctl) -> None:
    ctl = federation
    run = ctl(
        "run", "--name", "top-e2e", "--cpus", "0.1", "--", "python3", "-c", "import time; time.sleep(60)"
    )
    assert run.returncode == 0, run.stderr
    job_id = run.stdout.strip()
    deadline = time.monotonic() + 30
    while True:
        jobs = json.loads(ctl("jobs", "--state", "running", "-o", "json").stdout)
        if any(j["job_id"] == job_id for j in jobs):
            break
        assert time.monotonic() < deadline, "the job did not start within 30s"
        time.sleep(0.3)

    top = ctl("top", "--once", "--no-color")
    assert top.returncode == 0, top.stderr
    out = top.stdout
    assert "\x1b[" not in out
    assert "leader master-1" in out
    assert "Nodes   2/2 ready" in out and "Sub-domains 2/2 connected" in out and "Regions 2" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "connected" in lines["east-1"] and "connected" in lines["west-1"]
    assert lines["east"].split()[1:3] == ["1/1", "connected"] and lines["west"].split()[1:3] == [
        "1/1",
        "connected",
    ]
    assert "8 H100-SXM-80GB" in out  # the simulated agent's GPUs in the totals
    assert "top 2 of 2 fetched" in out and "east-1-n1" in out and "west-1-n1 (sim)" in out
    assert "Jobs    1 running" in out
    assert job_id in lines and "top-e2e" in lines[job_id]
    ctl("cancel", job_id)


def test_narrow_terminal_drops_columns_instead_of_squeezing_them() -> None:
    wide = text(snapshot(), width=160)
    assert "FREE" in wide and "POWER" in wide and "MEM USED" in wide and "PER TASK" in wide
    narrow = text(snapshot(), width=80)
    assert all(len(line.rstrip()) <= 80 for line in narrow.splitlines())
    assert "FREE" not in narrow and "MEM USED" not in narrow
    assert "PER TASK" in narrow and "PER TASK" not in text(snapshot(), width=70)
    # What is left is whole: names, states and numbers, not `…`.
    table = narrow.split("Regions and sub-domains")[1].split("Busiest nodes")[0]
    assert "…" not in table and "LOST 30s" in table and "1/2 connected" in table
    assert "n-hot" in narrow and "j-big" in narrow
