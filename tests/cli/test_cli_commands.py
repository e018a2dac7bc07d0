from __future__ import annotations

import io
import json
import pathlib

import grpc
import pytest
from fake_master_dsdk import FakeMaster

from domainctl.__main__ import main

Fake = tuple[FakeMaster, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- job-spec errors: exit 2, a message naming the field, nothing sent ------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--cpus", "-1", "--", "echo"], "error: resources.cpus: must be greater than 0, got '-1'"),
        (["run", "--cpus", "lots", "--", "echo"], "error: resources.cpus: expected a number of CPUs"),
        (["run", "--mem", "twelve", "--", "echo"], "error: resources.memory: expected a size such as 512Mi"),
        (["run", "--replicas", "many", "--", "echo"], "error: replicas: expected a whole number, got 'many'"),
        (["run", "--replicas", "0", "--", "echo"], "error: replicas: must be between 1 and 10000, got 0"),
        (["run", "--env", "NOVALUE", "--", "echo"], "error: env: expected KEY=VALUE, got 'NOVALUE'"),
        (["run", "--"], "error: command: is required"),
        (["run"], "error: command: is required"),
    ],
)
def test_bad_run_flags_exit_2_before_contacting_a_master(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "--master", "127.0.0.1:1", *argv)
    assert code == 2
    assert err.startswith(message), err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "command: [echo]\ncolour: red\n",
            "error: {path}: colour: unknown field; allowed fields: name, replicas",
        ),
        (
            "command: [echo]\nresources:\n  cpus: -1\n",
            "error: {path}: resources.cpus: must be greater than 0",
        ),
        (
            "command: [echo]\nresources: {memory: 12 parsecs}\n",
            "error: {path}: resources.memory: expected a size",
        ),
        ("name: empty\ncommand: []\n", "error: {path}: command: is required"),
        ("name: x\ncommand: [echo, hi\nreplicas: 2\n", "error: malformed YAML at {path}:3:"),
        ("- just\n- a list\n", "error: a job spec must be a mapping"),
    ],
)
def test_bad_job_files_exit_2_with_file_and_field_or_line(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, text: str, message: str
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    code, _out, err = run(capsys, "--master", "127.0.0.1:1", "submit", str(path))
    assert code == 2
    assert err.startswith(message.format(path=path)), err
    assert "Traceback" not in err


def test_missing_job_file_and_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    code, _out, err = run(capsys, "submit", str(tmp_path / "nope.yaml"))
    assert code == 2 and err.startswith("error: file not found:")
    monkeypatch.setattr("sys.stdin", io.StringIO("command: [echo]\nreplicas: -3\n"))
    code, _out, err = run(capsys, "submit", "-")
    assert code == 2 and err.startswith("error: <stdin>: replicas: must be between 1 and 10000")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "jobs", "--limit", "x")[0] == 2
    code, _out, err = run(capsys, "jobs", "--output", "yaml")
    assert code == 2 and "invalid choice" in err
    code, _out, err = run(capsys, "jobs", "--", "x")
    assert code == 2 and "unrecognized arguments" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys, "--help")
    assert code == 0 and "domainctl" in out and "run" in out and "demo" in out
    code, out, _err = run(capsys, "run", "--help")
    assert code == 0 and "--replicas" in out and "--master" in out


# -- errors from the master -------------------------------------------------------------------


def test_unknown_job_exits_1_with_the_masters_message(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    for argv in (["job", "j-x"], ["logs", "j-x"], ["cancel", "j-x"], ["wait", "j-x"]):
        code, out, err = run(capsys, *argv)
        assert (code, out, err) == (1, "", "error: job j-x not found\n"), argv


def test_no_master_found_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "jobs")
    assert code == 3
    assert err == (
        "error: no DomainOS master found: pass --master ADDR, set DOMAINOS_MASTER, or start one with `domainctl up`\n"
    )


def test_invalid_argument_from_the_master_exits_2(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    fake, _address = fake_master
    fake.fail_next(
        "SubmitJob", grpc.StatusCode.INVALID_ARGUMENT, "resources.cpus: 64 exceeds the largest node"
    )
    code, _out, err = run(capsys, "run", "--cpus", "64", "--", "echo")
    assert code == 2 and err == "error: resources.cpus: 64 exceeds the largest node\n"


# -- commands against the fake master ---------------------------------------------------------


def test_run_prints_the_job_id_and_sends_the_spec(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    fake, _address = fake_master
    code, out, _err = run(
        capsys, "run", "--name", "demo", "--cpus", "0.5", "--mem", "64Mi", "--replicas", "3",
        "--env", "A=1", "--env", "B=x=y", "--retries", "2", "--", "python3", "-c", "print(42)",
    )  # fmt: skip
    assert code == 0
    (job,) = fake.jobs.values()
    assert out == f"{job.job_id}\n"
    spec = job.spec
    assert list(spec.command) == ["python3", "-c", "print(42)"] and spec.name == "demo" and spec.replicas == 3
    assert spec.resources.cpu_millis == 500 and spec.resources.memory_bytes == 64 * 2**20
    assert dict(spec.env) == {"A": "1", "B": "x=y"} and spec.retry.on_exit == 2


def test_run_wait_success_prints_state_and_output(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    code, out, err = run(capsys, "run", "--wait", "--", "python3", "-c", "print(42)")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("j-") and lines[1] == f"job {lines[0]} SUCCEEDED"
    assert lines[2:] == ["hello from task 0"]  # one task: no header
    assert "RUNNING" in err  # progress goes to stderr


def test_run_wait_failure_exits_1_and_shows_stderr(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    fake, _address = fake_master
    fake.outcome = "FAILED"
    code, out, err = run(capsys, "run", "--replicas", "2", "--wait", "--", "false")
    assert code == 1
    assert "FAILED: task 0 exited with code 3" in out
    assert "==> task 0 (node east-1-n1) <==" in out and "==> task 1 (node east-1-n2) <==" in out
    assert "boom: exiting with 3" in err


def test_submit_file_wait(
    capsys: pytest.CaptureFixture[str], fake_master: Fake, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: hello\nreplicas: 2\ncommand: [echo, hi]\nresources: {cpus: 0.25}\n")
    code, out, _err = run(capsys, "submit", str(path), "--wait")
    assert code == 0 and "SUCCEEDED" in out and "hello from task 1" in out


def test_logs_headers_only_with_more_than_one_task(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    fake, _address = fake_master
    code, out, _ = run(capsys, "run", "--replicas", "2", "--", "echo")
    job_id = out.strip()
    code, out, _ = run(capsys, "logs", job_id)
    assert code == 0
    assert (
        out
        == "==> task 0 (node east-1-n1) <==\nhello from task 0\n==> task 1 (node east-1-n2) <==\nhello from task 1\n"
    )
    code, out, _ = run(capsys, "logs", job_id, "--task", "1")
    assert out == "hello from task 1\n"
    fake.logs[(job_id, 0, "stderr")] = b"warning: low disk\n"
    code, out, _ = run(capsys, "logs", job_id, "--task", "0", "--stderr")
    assert out == "warning: low disk\n"


def test_jobs_job_cancel_wait(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    first = run(capsys, "run", "--name", "first", "--", "echo")[1].strip()
    second = run(capsys, "run", "--name", "second", "--replicas", "2", "--", "sleep", "60")[1].strip()
    code, out, _ = run(capsys, "jobs")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["JOB", "NAME", "STATE", "REPLICAS"]
    assert [r.split()[0] for r in rows] == [second, first]
    code, out, _ = run(capsys, "job", second)
    facts = dict(line.split(":", 1) for line in out.split("\n\n")[0].splitlines())
    assert code == 0 and facts["job"].strip() == second and facts["state"].strip() == "RUNNING"
    assert facts["command"].strip() == "sleep 60" and facts["replicas"].strip() == "2"
    assert "TASK  ATTEMPT  STATE" in out and "east-1-n2" in out
    code, out, _ = run(capsys, "cancel", second)
    assert code == 0 and out == f"job {second} CANCELLED: domainctl cancel\n"
    code, out, _ = run(capsys, "wait", second)
    assert code == 1 and out.startswith(f"job {second} CANCELLED")
    code, out, _ = run(capsys, "wait", first)
    assert code == 0 and out == f"job {first} SUCCEEDED\n"
    code, out, _ = run(capsys, "jobs", "--state", "cancelled,succeeded", "-o", "json")
    assert {j["job_id"] for j in json.loads(out)} == {first, second}
    code, _out, err = run(capsys, "jobs", "--state", "napping")
    assert code == 2 and err.startswith("error: state: unknown job state 'napping'")


def test_domains_and_nodes_tables(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    fake, _address = fake_master
    code, out, _ = run(capsys, "domains")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["REGION", "SUB-DOMAIN", "STATUS", "NODES"]
    assert lines[1].split()[:3] == ["east", "east-1", "connected"]
    assert "west-1" in lines[2] and "2 simulated" in lines[2] and "16/16 H100-SXM-80GB" in lines[2]
    code, out, err = run(capsys, "nodes")
    assert code == 0 and err == ""
    assert "west-1-n1 (simulated)" in out and "east-1-n1 " in out
    fake.unreachable = ["south-1"]
    code, out, err = run(capsys, "nodes", "--subdomain", "east-1")
    assert "west-1-n1" not in out and err == "warning: no answer from sub-domain(s): south-1\n"


def test_json_output_shapes(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    code, out, _ = run(capsys, "-o", "json", "run", "--replicas", "2", "--", "echo")
    job = json.loads(out)
    assert code == 0 and job["state"] == "PENDING" and len(job["tasks"]) == 2
    assert set(job) >= {
        "job_id",
        "name",
        "state",
        "message",
        "replicas",
        "command",
        "resources",
        "tasks",
        "created_at",
    }
    assert "spec" not in job and job["resources"]["cpu_millis"] == 1000

    job_id = job["job_id"]
    detail = json.loads(run(capsys, "job", job_id, "--output", "json")[1])
    assert detail["tasks"][0]["state"] == "RUNNING" and detail["tasks"][0]["node_id"] == "east-1-n1"
    assert set(detail["tasks"][0]) >= {
        "index",
        "attempt",
        "state",
        "node_id",
        "subdomain_id",
        "region",
        "exit_code",
    }

    logs = json.loads(run(capsys, "logs", job_id, "-o", "json")[1])
    assert [(lg["task_index"], lg["text"]) for lg in logs] == [
        (0, "hello from task 0\n"),
        (1, "hello from task 1\n"),
    ]
    assert "data" not in logs[0]

    regions = json.loads(run(capsys, "domains", "-o", "json")[1])
    assert [r["name"] for r in regions] == ["east", "west"]
    sd = regions[1]["subdomains"][0]
    assert sd["subdomain_id"] == "west-1" and sd["connected"] is True and sd["nodes_simulated"] == 2
    assert sd["free"] == {"cpu_millis": 7000, "memory_bytes": 24 * 2**30, "gpus": 16, "gpu_model": ""}

    nodes = json.loads(run(capsys, "nodes", "-o", "json")[1])
    assert [n["node_id"] for n in nodes] == ["east-1-n1", "east-1-n2", "west-1-n1"]
    assert nodes[2]["simulated"] is True and nodes[2]["gpus"] == 8

    info = json.loads(run(capsys, "info", "-o", "json")[1])
    assert info["master_id"] == "master-1" and info["nodes_ready"] == 4

    waited = json.loads(run(capsys, "wait", job_id, "-o", "json")[1])
    assert waited["state"] == "SUCCEEDED"

    code, out, _ = run(capsys, "run", "-o", "json", "--wait", "--", "echo")
    result = json.loads(out)
    assert (
        code == 0
        and result["job"]["state"] == "SUCCEEDED"
        and result["logs"][0]["text"] == "hello from task 0\n"
    )


def test_info_table(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    _fake, address = fake_master
    code, out, _ = run(capsys, "info")
    facts = {k: v.strip() for k, v in (line.split(":", 1) for line in out.splitlines())}
    assert code == 0 and facts["master"] == address and facts["sub-domains"] == "2/2 connected"


def test_master_flag_before_or_after_the_command(
    capsys: pytest.CaptureFixture[str], fake_master: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake, address = fake_master
    monkeypatch.delenv("DOMAINOS_MASTER")
    assert run(capsys, "--master", address, "info")[0] == 0
    assert run(capsys, "info", "--master", address)[0] == 0
    assert run(capsys, "info")[0] == 3
