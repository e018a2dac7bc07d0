"""Rendering is pure: tables, formatters and views from plain dsdk values."""

from __future__ import annotations

import json

from domainctl import _render
from domainos.resources import Resources
from dsdk import Job, JobState, Node, Region, SubDomain, Task, TaskLog, TaskState

GiB = 2**30


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    out = _render.table(["NAME", "N", "NOTE"], [["a", 1, "x"], ["longer", 123, None]], right=(1,))
    assert out.splitlines() == [
        "NAME      N  NOTE",
        "a         1  x",
        "longer  123  -",
    ]


def test_table_truncates_the_widest_column_to_fit() -> None:
    rows = [["j-1", "a" * 60, "ok"], ["j-2", "short", "ok"]]
    out = _render.table(["JOB", "MESSAGE", "STATE"], rows, max_width=30)
    lines = out.splitlines()
    assert all(len(line) <= 30 for line in lines)
    assert lines[1].split()[1].endswith("…") and lines[1].endswith("ok")
    assert _render.table(["JOB", "MESSAGE", "STATE"], rows).splitlines()[1].count("a") == 60


def test_table_never_shrinks_below_the_header_and_flattens_newlines() -> None:
    out = _render.table(["HEADER", "B"], [["x" * 20, "multi\nline"]], max_width=5)
    head, row = out.splitlines()
    assert head == "HEADER  B" and row == "xxxxx…  mul…"  # floors: the header, or 4 characters
    assert _render.table(["A"], [["multi\nline"]]).splitlines()[1] == "multi line"


def test_table_rejects_ragged_rows() -> None:
    try:
        _render.table(["A", "B"], [["only one"]])
    except ValueError as exc:
        assert "expected 2" in str(exc)
    else:
        raise AssertionError("ragged row accepted")


def test_formatters() -> None:
    assert _render.fmt_duration(0.42) == "0.4s"
    assert _render.fmt_duration(75) == "1m15s"
    assert _render.fmt_duration(7300) == "2h01m"
    assert _render.fmt_duration(7300, coarse=True) == "2h"
    assert _render.fmt_age(0, 100) == "-" and _render.fmt_age(40, 100) == "1m"
    assert _render.fmt_cpus(500) == "0.5" and _render.fmt_cpus(0) == "0" and _render.fmt_cpus(4000) == "4"
    assert _render.fmt_mem(16 * GiB) == "16Gi" and _render.fmt_mem(0) == "0"
    assert _render.fmt_gpus(0, 0) == "-" and _render.fmt_gpus(6, 8, {"H100": 8}) == "6/8 H100"
    assert _render.fmt_command(["python3", "-c", "print(42)"]) == "python3 -c 'print(42)'"
    assert _render.fmt_resources(500, 128 * 2**20, 1, "A100") == "cpus=0.5 memory=128Mi gpus=1 (A100)"


def _regions() -> list[Region]:
    east = SubDomain(
        "east-1",
        "east",
        connected=True,
        nodes_total=2,
        nodes_ready=2,
        capacity=Resources(8000, 32 * GiB),
        free=Resources(7000, 30 * GiB),
        running_tasks=2,
    )
    west = SubDomain(
        "west-1",
        "west",
        connected=False,
        nodes_total=3,
        nodes_ready=1,
        nodes_simulated=3,
        nodes_dead=2,
        capacity=Resources(16000, 64 * GiB, 8),
        free=Resources(16000, 64 * GiB, 6),
        gpus_by_model={"H100-SXM-80GB": 8},
    )
    return [Region("east", (east,)), Region("west", (west,)), Region("north", ())]


def test_domain_rows_read_as_a_tree_and_label_simulated_nodes() -> None:
    rows = _render.domain_rows(_regions())
    assert rows[0][:5] == ["east", "east-1", "connected", "2/2 ready", "7/8"]
    assert rows[0][5] == "30Gi/32Gi" and rows[0][6] == "-" and rows[0][7] == "2"
    assert rows[1][:4] == ["west", "west-1", "disconnected", "1/3 ready"]
    assert rows[1][6] == "6/8 H100-SXM-80GB" and rows[1][8] == "3 simulated, 2 dead"
    assert rows[2][:3] == ["north", "-", "no sub-domains"]
    text = _render.render_domains(_regions())
    assert text.splitlines()[0].startswith("REGION  SUB-DOMAIN") and "free/total" in text
    assert _render.render_domains([]) == "no sub-domains have registered with the master yet"


def test_node_rows_mark_simulated_nodes_and_show_usage() -> None:
    sim = Node(
        "west-1-n1",
        "west-1",
        "west",
        "ready",
        simulated=True,
        gpus=8,
        gpu_model="H100",
        allocatable=Resources(16000, 64 * GiB, 8, "H100"),
        free=Resources(12000, 60 * GiB, 6),
        cpu_percent=25.4,
        memory_used_bytes=4 * GiB,
        gpu_utilization_percent=50,
        running_tasks=3,
        block="west-b1",
        nvlink_domains=((0, 1, 2, 3), (4, 5, 6, 7)),
        datasets=("corpus:0", "corpus:1"),
    )
    real = Node(
        "east-1-n1",
        "east-1",
        "east",
        "suspect",
        health="DEGRADED",
        allocatable=Resources(2000, 8 * GiB),
        free=Resources(2000, 8 * GiB),
    )
    rows = _render.node_rows([sim, real])
    assert rows[0] == [
        "west-1-n1 (simulated)",
        "west-1",
        "west",
        "ready",
        "12/16",
        "25%",
        "60Gi/64Gi",
        "4Gi",
        "6/8 H100",
        "50%",
        "3",
        "block west-b1, nvlink 4+4, 2 shards",
    ]
    assert rows[1][0] == "east-1-n1" and rows[1][3] == "suspect (degraded)" and rows[1][8] == "-"
    assert rows[1][11] == "-"  # no block, no NVLink, no data


def _job(state: JobState = JobState.FAILED) -> Job:
    tasks = (
        Task(
            0,
            1,
            TaskState.FAILED,
            "n1",
            "east-1",
            "east",
            exit_code=3,
            message="exited with 3",
            started_at=1000.0,
            finished_at=1002.5,
        ),
        Task(1, 0, TaskState.RUNNING, "n2", "west-1", "west", started_at=1000.0),
        Task(2, 0, TaskState.LOST, "n3", "west-1", "west", exit_code=0),
    )
    return Job(
        "j-1",
        state,
        name="train",
        message="task 0 exited with code 3",
        replicas=3,
        command=("python3", "train.py"),
        resources=Resources(500, 2**30),
        created_at=990.0,
        finished_at=1003.0,
        tasks=tasks,
    )


def test_job_view_lists_facts_then_tasks() -> None:
    text = _render.render_job(_job(), now=1010.0)
    facts, tasks = text.split("\n\n")
    assert "state:      FAILED" in facts and "command:    python3 train.py" in facts
    assert "resources:  cpus=0.5 memory=1Gi per task" in facts and "(took 13s)" in facts
    lines = tasks.splitlines()
    assert lines[0].split() == [
        "TASK",
        "ATTEMPT",
        "STATE",
        "NODE",
        "SUB-DOMAIN",
        "REGION",
        "EXIT",
        "STARTED",
        "TOOK",
        "MESSAGE",
    ]
    assert lines[1].split()[:7] == ["0", "1", "FAILED", "n1", "east-1", "east", "3"] and "2.5s" in lines[1]
    assert lines[2].split()[6] == "-" and "10s" in lines[2]  # running: no exit code, took so far
    assert lines[3].split()[2:7] == ["LOST", "n3", "west-1", "west", "-"]


def test_jobs_and_job_line_and_progress() -> None:
    text = _render.render_jobs([_job()], now=1010.0)
    header, row = text.splitlines()
    assert header.split()[:3] == ["JOB", "NAME", "STATE"] and row.split()[:4] == [
        "j-1",
        "train",
        "FAILED",
        "3",
    ]
    assert _render.render_jobs([], 0) == "no jobs"
    assert _render.job_line(_job()) == "job j-1 FAILED: task 0 exited with code 3"
    line = _render.progress_line(_job(JobState.RUNNING), now=1010.0)
    assert line.endswith("job j-1 RUNNING (1 failed, 1 lost, 1 running)")


def test_logs_headers_only_for_several_tasks() -> None:
    one = [TaskLog(0, node_id="n1", data=b"42\n")]
    two = [TaskLog(0, node_id="n1", data=b"a"), TaskLog(1, node_id="n2", data=b"")]
    assert _render.render_logs(one) == "42\n"
    assert _render.render_logs(two) == "==> task 0 (node n1) <==\na\n==> task 1 (node n2) <==\n"
    assert _render.render_logs(one, headers=True).startswith("==> task 0 (node n1) <==\n")
    assert _render.render_logs([TaskLog(0, data=b"\xff\xfebad\n")]) == "\ufffd\ufffdbad\n"


def test_json_is_plain_data() -> None:
    data = json.loads(_render.to_json({"job": _job(), "logs": [TaskLog(0, data=b"hi\n")]}))
    assert data["job"]["state"] == "FAILED" and data["job"]["tasks"][0]["state"] == "FAILED"
    assert data["job"]["resources"] == {"cpu_millis": 500, "memory_bytes": 2**30, "gpus": 0, "gpu_model": ""}
    assert data["job"]["command"] == ["python3", "train.py"] and "spec" not in data["job"]
    assert data["logs"][0]["text"] == "hi\n" and "data" not in data["logs"][0]


def test_components_view() -> None:
    comps = [
        {
            "name": "master",
            "kind": "master",
            "pid": 10,
            "listen": "127.0.0.1:1",
            "metrics": "",
            "log": "m.log",
        }
    ]
    out = _render.render_components(comps, {"master": False})
    assert out.splitlines()[1].split() == ["master", "master", "10", "stopped", "127.0.0.1:1", "-", "m.log"]
