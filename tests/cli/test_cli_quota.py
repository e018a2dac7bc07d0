"""``domainctl quota set | ls | rm``, ``explain`` and ``--priority``: parsing, rendering, errors."""

from __future__ import annotations

import json
import pathlib

import grpc
import pytest
from fake_master_dsdk import FakeMaster

import dsdk
from domainctl import _render
from domainctl.__main__ import main

Fake = tuple[FakeMaster, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- quota set: flags -> limits ---------------------------------------------------------------


def test_quota_set_sends_each_flag_in_its_class_unit(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    fake, _ = fake_master
    code, out, err = run(
        capsys,
        "quota", "set", "--tenant", "acme", "--region", "east",
        "--cpus", "64", "--memory", "512Gi", "--gpus", "8", "--gpu-model", "H100",
        "--limit", "gpu:*=16",
    )  # fmt: skip
    assert code == 0, err
    req = fake.last_set_quota
    assert req is not None
    assert (req.tenant, req.region, req.subdomain) == ("acme", "east", "*")
    assert dict(req.limits) == {"cpu": 64_000, "memory": 512 * 2**30, "gpu:H100": 8, "gpu:*": 16}
    assert req.request_id
    assert out.strip() == "quota of tenant acme in east/* set: cpu=64, gpu:*=16, gpu:H100=8, memory=512Gi"


def test_quota_set_gpus_without_a_model_is_any_model(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    fake, _ = fake_master
    code, _out, err = run(capsys, "quota", "set", "--tenant", "acme", "--subdomain", "west-1", "--gpus", "0")
    assert code == 0, err
    assert fake.last_set_quota is not None
    assert dict(fake.last_set_quota.limits) == {"gpu:*": 0}
    assert fake.last_set_quota.subdomain == "west-1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tenant", "acme"], "error: quota set: nothing to set: give --cpus, --memory, --gpus or --limit"),
        (["--tenant", "acme", "--gpus", "two"], "error: --gpus: expected a whole number, got 'two'"),
        (["--tenant", "acme", "--gpus", "-1"], "error: --gpus: must not be negative, got -1"),
        (
            ["--tenant", "acme", "--gpu-model", "H100"],
            "error: --gpu-model: --gpu-model names the model of --gpus N",
        ),
        (["--tenant", "acme", "--cpus", "lots"], "error: --cpus: expected a number of CPUs"),
        (["--tenant", "acme", "--memory", "huge"], "error: --memory: expected a size"),
        (
            ["--tenant", "acme", "--limit", "gpu:A100"],
            "error: --limit: expected CLASS=AMOUNT (e.g. gpu:H100=8)",
        ),
        (["--tenant", "acme", "--limit", "gpu:A100=x"], "error: --limit gpu:A100: expected a whole number"),
        (["--tenant", "acme", "--gpus", "1", "--limit", "gpu:*=2"], "error: --limit: gpu:* is limited twice"),
    ],
)
def test_bad_quota_flags_exit_2_before_contacting_a_master(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "--master", "127.0.0.1:1", "quota", "set", *argv)
    assert code == 2
    assert err.startswith(message), err
    assert out == "" and "Traceback" not in err


def test_quota_set_needs_a_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "--master", "127.0.0.1:1", "quota", "set", "--gpus", "1")
    assert code == 2
    assert "--tenant" in err


def test_a_refused_quota_exits_1_or_2_with_the_masters_words(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    fake, _ = fake_master
    fake.fail_next(
        "SetQuota", grpc.StatusCode.PERMISSION_DENIED, "role user cannot call SetQuota; it needs admin"
    )
    code, _out, err = run(capsys, "quota", "set", "--tenant", "acme", "--gpus", "1")
    assert code == 1
    assert err.strip() == "error: role user cannot call SetQuota; it needs admin"
    fake.fail_next(
        "SetQuota", grpc.StatusCode.INVALID_ARGUMENT, "quota.limits['gpu:??']: not a valid GPU model"
    )
    code, _out, err = run(capsys, "quota", "set", "--tenant", "acme", "--limit", "gpu:??=1")
    assert code == 2
    assert "not a valid GPU model" in err
    fake.fail_next("SetQuota", grpc.StatusCode.NOT_FOUND, "tenant: tenant nobody not found")
    code, _out, err = run(capsys, "quota", "set", "--tenant", "nobody", "--gpus", "1")
    assert code == 1 and "tenant nobody not found" in err


def test_unreachable_master_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "--master", "127.0.0.1:1", "--insecure", "quota", "ls")
    assert code == 3, err


# -- quota ls / rm ----------------------------------------------------------------------------


def test_quota_ls_table_and_json(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    fake, _ = fake_master
    run(capsys, "quota", "set", "--tenant", "acme", "--region", "east", "--gpus", "8", "--cpus", "16")
    run(capsys, "quota", "set", "--tenant", "beta", "--memory", "1Gi")
    fake.quotas["acme", "east", "*"].used["gpu:*"] = 6
    code, out, _ = run(capsys, "quota", "ls")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TENANT", "SCOPE", "CLASS", "USED/LIMIT", "USE"]
    assert lines[1].split() == ["acme", "east/*", "cpu", "0/16", "0%"]
    assert lines[2].split() == ["acme", "east/*", "gpu:*", "6/8", "75%"]
    assert lines[3].split() == ["beta", "*/*", "memory", "0/1Gi", "0%"]
    code, out, _ = run(capsys, "-o", "json", "quota", "ls", "--tenant", "beta")
    data = json.loads(out)
    assert data == [
        {"tenant": "beta", "region": "*", "subdomain": "*", "limits": {"memory": 2**30}, "used": {}}
    ]


def test_quota_ls_empty(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    code, out, _ = run(capsys, "quota", "ls")
    assert code == 0
    assert out.strip() == "no quotas (tenants are not limited)"


def test_quota_rm(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    fake, _ = fake_master
    run(capsys, "quota", "set", "--tenant", "acme", "--region", "east", "--gpus", "8")
    code, out, _ = run(capsys, "quota", "rm", "--tenant", "acme", "--region", "east")
    assert code == 0
    assert out.strip() == "quota of tenant acme in east/* removed"
    assert fake.quotas == {}
    code, _out, err = run(capsys, "quota", "rm", "--tenant", "acme", "--region", "east")
    assert code == 1
    assert "no quota of acme in east/*" in err


def test_render_quota_rows_units_and_over_limit() -> None:
    quotas = [
        dsdk.Quota("acme", limits={"cpu": 2500, "gpu:H100": 0}, used={"cpu": 500, "gpu:H100": 1}),
    ]
    assert _render.quota_rows(quotas) == [
        ["acme", "*/*", "cpu", "0.5/2.5", "20%"],
        ["acme", "*/*", "gpu:H100", "1/0", "over"],
    ]


# -- explain and --priority -------------------------------------------------------------------


def test_explain_prints_the_masters_reason(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    code, job_id, _ = run(capsys, "run", "--gpus", "4", "--priority", "high", "--", "train")
    assert code == 0
    code, out, _ = run(capsys, "explain", job_id.strip())
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"job {job_id.strip()} PENDING"
    assert "gpu:* 8 used + 4 requested > 8" in lines[1] and "(priority high)" in lines[1]
    code, out, _ = run(capsys, "-o", "json", "explain", job_id.strip())
    assert json.loads(out)["state"] == "PENDING"


def test_explain_unknown_job_exits_1(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    code, _out, err = run(capsys, "explain", "j-nope")
    assert code == 1
    assert "job j-nope not found" in err


def test_run_priority_is_sent_and_shown(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    fake, _ = fake_master
    code, job_id, _ = run(capsys, "run", "--priority", "low", "--", "echo")
    assert code == 0
    assert fake.jobs[job_id.strip()].spec.priority == "low"
    code, out, _ = run(capsys, "job", job_id.strip())
    assert "\npriority:   low\n" in out


def test_submit_priority_replaces_the_files(
    capsys: pytest.CaptureFixture[str], fake_master: Fake, tmp_path: pathlib.Path
) -> None:
    fake, _ = fake_master
    path = tmp_path / "job.yaml"
    path.write_text("command: [echo]\npriority: low\n")
    code, job_id, _ = run(capsys, "submit", str(path))
    assert code == 0
    assert fake.jobs[job_id.strip()].spec.priority == "low"
    code, job_id, _ = run(capsys, "submit", str(path), "--priority", "system")
    assert fake.jobs[job_id.strip()].spec.priority == "system"


@pytest.mark.parametrize(
    "command", [["run", "--priority", "urgent", "--", "echo"], ["submit", "JOB", "--priority", "urgent"]]
)
def test_unknown_priority_exits_2_listing_the_classes(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, command: list[str]
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("command: [echo]\n")
    argv = [str(path) if a == "JOB" else a for a in command]
    code, out, err = run(capsys, "--master", "127.0.0.1:1", *argv)
    assert code == 2
    assert "unknown priority class 'urgent'; allowed: low|normal|high|system (default normal)" in err
    assert out == ""
