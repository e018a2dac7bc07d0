"""``domainctl run`` flags for GPU shares, exclusions, selectors, gangs, training and locality:
the spec they send (through the one validation path, :func:`domainos.jobspec.parse_spec`), the
refusals (exit 2, nothing sent), and how ``domainctl job`` shows the fields."""

from __future__ import annotations

import json

import pytest
from fake_master_dsdk import FakeMaster

from domainctl.__main__ import main
from domainos.jobspec import GangPolicy, JobSpec, Locality, ModelSize, Parallelism

Fake = tuple[FakeMaster, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sent(fake: FakeMaster, out: str) -> JobSpec:
    return JobSpec.from_proto(fake.jobs[out.strip()].spec)


def test_fractional_gpus_exclusions_and_selector(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    fake, _ = fake_master
    code, out, err = run(
        capsys, "run", "--gpus", "0.5", "--gpu-memory", "8Gi", "--exclude-gpu-model", "T4",
        "--exclude-gpu-model", "V100,K80", "--node-selector", "zone=a", "--node-selector", "disk=nvme",
        "--", "nvidia-smi",
    )  # fmt: skip
    assert code == 0, err
    spec = sent(fake, out)
    r = spec.resources
    assert (r.gpus, r.gpu_share, r.gpu_share_memory) == (0, 50, 8 * 2**30)
    assert spec.exclude_gpu_models == ("T4", "V100", "K80")
    assert dict(spec.node_selector) == {"zone": "a", "disk": "nvme"}


def test_gang_flags(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    fake, _ = fake_master
    code, out, _ = run(capsys, "run", "--replicas", "4", "--gang", "--", "echo")
    assert code == 0 and sent(fake, out).gang == GangPolicy(4, 300.0)
    code, out, _ = run(capsys, "run", "--replicas", "4", "--gang", "3", "--gang-timeout", "90s", "--", "echo")
    assert code == 0 and sent(fake, out).gang == GangPolicy(3, 90.0)
    code, out, _ = run(capsys, "run", "--replicas", "2", "--gang-timeout", "1m", "--", "echo")
    assert code == 0 and sent(fake, out).gang == GangPolicy(2, 60.0)
    code, out, _ = run(capsys, "run", "--replicas", "2", "--", "echo")
    assert code == 0 and sent(fake, out).gang is None


def test_training_flags(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    fake, _ = fake_master
    code, out, err = run(
        capsys, "run", "--tp", "8", "--pp", "2", "--dp", "4", "--gpu-model", "H100", "--model-params", "7B",
        "--bytes-per-param", "2", "--iteration-time", "1500ms", "--max-cross-domain-loss", "0.05",
        "--", "python3", "train.py",
    )  # fmt: skip
    assert code == 0, err
    spec = sent(fake, out)
    assert spec.parallelism == Parallelism(8, 2, 4) and spec.replicas == 8 and spec.resources.gpus == 8
    assert spec.model == ModelSize(7_000_000_000, 2.0) and spec.iteration_time_s == 1.5
    assert spec.max_cross_domain_loss == 0.05 and spec.is_gang and spec.gang_min == 8


def test_locality_flags(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    fake, _ = fake_master
    code, out, err = run(
        capsys, "run", "--replicas", "4", "--dataset", "web-text", "--shards", "8-11", "--locality-wait", "2m",
        "--", "echo",
    )  # fmt: skip
    assert code == 0, err
    assert sent(fake, out).locality == Locality("web-text", (8, 9, 10, 11), 120.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--gpus", "0.333"],
            "error: resources.gpus: fractions of a GPU go in 1% steps (0.01 to 0.99), got '0.333'",
        ),
        (["--gpus", "1.5"], "error: resources.gpus: whole GPUs, or a fraction below 1"),
        (
            ["--gpus", "2", "--gpu-memory", "4Gi"],
            "error: resources.gpu_memory: only with a fraction of a GPU",
        ),
        (
            ["--gpus", "1", "--gpu-model", "T4", "--exclude-gpu-model", "T4"],
            "error: exclude_gpu_models: 'T4' is both required",
        ),
        (["--exclude-gpu-model", "T4,"], "error: exclude_gpu_models[1]: expected a GPU model name"),
        (["--node-selector", "zone"], "error: node_selector: expected KEY=VALUE, got 'zone'"),
        (["--node-selector", "bad key=x"], "error: node_selector: 'bad key' is not a valid label key"),
        (
            ["--replicas", "2", "--gang", "3"],
            "error: gang.min: must be between 1 and 2 (the job's replicas are 2), got 3",
        ),
        (["--gang", "all-of-them"], "error: gang.min: expected a whole number, got 'all-of-them'"),
        (["--gang-timeout", "2d"], "error: gang.timeout: expected a duration"),
        (
            ["--tp", "128"],
            "error: parallelism.tp: must be between 1 and 64 (GPUs of one TP group, on one node), got 128",
        ),
        (["--tp", "eight"], "error: parallelism.tp: expected a whole number, got 'eight'"),
        (
            ["--pp", "2", "--dp", "2", "--replicas", "3"],
            "error: replicas: a training job has one task per TP group: replicas must equal pp * dp = 4",
        ),
        (
            ["--tp", "4", "--gpus", "2"],
            "error: resources.gpus: a training job has one task per TP group: resources.gpus must equal tp = 4",
        ),
        (
            ["--model-params", "7B"],
            "error: model: is only allowed for a training job (with parallelism: {tp, pp, dp})",
        ),
        (["--iteration-time", "2s"], "error: iteration_time: is only allowed for a training job"),
        (
            ["--tp", "2", "--model-params", "lots"],
            "error: model.parameters: expected a whole number of parameters",
        ),
        (["--tp", "2", "--bytes-per-param", "2"], "error: model.parameters: is required"),
        (
            ["--tp", "2", "--max-cross-domain-loss", "1.5"],
            "error: max_cross_domain_loss: must be >= 0 and < 1, got '1.5'",
        ),
        (["--shards", "0-3"], "error: locality.dataset: is required"),
        (
            ["--replicas", "2", "--dataset", "d", "--shards", "0-3"],
            "error: locality.shards: one shard per task: the job has 2 replicas, got 4 shards",
        ),
        (
            ["--dataset", "d", "--locality-wait", "2h"],
            "error: locality.wait: must be >= 0 and <= 3600 seconds, got '2h'",
        ),
    ],
)
def test_bad_scheduling_flags_exit_2_before_contacting_a_master(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "--master", "127.0.0.1:1", "run", *argv, "--", "echo")
    assert code == 2
    assert err.startswith(message), err
    assert "Traceback" not in err and out == ""


def test_job_shows_the_scheduling_fields(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    code, out, _ = run(
        capsys, "run", "--tp", "8", "--pp", "2", "--dp", "4", "--model-params", "7B", "--iteration-time", "2s",
        "--exclude-gpu-model", "T4", "--node-selector", "zone=a", "--dataset", "web", "--shards", "0-7",
        "--gang-timeout", "10m", "--", "python3", "train.py",
    )  # fmt: skip
    assert code == 0
    job_id = out.strip()
    code, out, _ = run(capsys, "job", job_id)
    assert code == 0
    lines = out.splitlines()

    def fact(key: str) -> str:
        (line,) = [ln for ln in lines if ln.startswith(f"{key}:")]
        return line.split(":", 1)[1].strip()

    assert fact("resources") == "cpus=1 memory=256Mi gpus=8 per task"
    assert fact("not on") == "T4" and fact("nodes") == "zone=a"
    assert fact("gang") == "all 8 tasks together (timeout 10m00s)"
    assert fact("training") == "tp 8 x pp 2 x dp 4 = 64 GPUs"
    assert fact("model") == "7B parameters x 2 bytes (14GB of gradients per iteration)"
    assert fact("iteration") == "2.0s"
    assert fact("spanning") == "at most 2% of an iteration lost across sub-domains"
    assert fact("locality") == "dataset web, shards 0-7, wait 30s"

    data = json.loads(run(capsys, "job", job_id, "-o", "json")[1])
    assert data["parallelism"] == {"tp": 8, "pp": 2, "dp": 4} and data["gang"] == {
        "min": 8,
        "timeout_s": 600.0,
    }
    assert data["model"] == {"parameters": 7_000_000_000, "bytes_per_parameter": 2.0}
    assert data["locality"] == {"dataset": "web", "shards": list(range(8)), "wait_s": 30.0}
    assert data["exclude_gpu_models"] == ["T4"] and data["node_selector"] == {"zone": "a"}
    assert data["iteration_time_s"] == 2.0 and data["max_cross_domain_loss"] == 0.02 and "spec" not in data


def test_job_shows_shares_and_partial_gangs(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    _code, out, _ = run(
        capsys, "run", "--replicas", "4", "--gpus", "0.25", "--gpu-memory", "4Gi", "--gang", "2", "--", "echo"
    )
    _code, text, _ = run(capsys, "job", out.strip())
    assert "resources:  cpus=1 memory=256Mi gpus=0.25 gpu_memory=4Gi per task" in text
    assert "gang:       the first 2 of 4 tasks together (timeout 5m00s)" in text
    data = json.loads(run(capsys, "-o", "json", "job", out.strip())[1])
    assert data["resources"]["gpu_share"] == 25 and data["resources"]["gpu_share_memory"] == 4 * 2**30
    assert data["gang"] == {"min": 2, "timeout_s": 300.0} and "parallelism" not in data


def test_training_job_without_model_is_shown_as_one_sub_domain(
    capsys: pytest.CaptureFixture[str], fake_master: Fake
) -> None:
    _code, out, _ = run(capsys, "run", "--tp", "2", "--", "echo")
    text = run(capsys, "job", out.strip())[1]
    assert "spanning:   one sub-domain (no model size and iteration time to weigh spanning)" in text


def test_a_plain_job_shows_none_of_them(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    _code, out, _ = run(capsys, "run", "--", "echo")
    text = run(capsys, "job", out.strip())[1]
    for key in ("gang:", "training:", "locality:", "not on:", "nodes:"):
        assert key not in text
    data = json.loads(run(capsys, "-o", "json", "job", out.strip())[1])
    assert not {"gang", "parallelism", "locality", "model", "exclude_gpu_models"} & set(data)


def test_run_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", "--help")
    assert code == 0
    for flag in (
        "--gpu-memory", "--exclude-gpu-model", "--node-selector", "--gang", "--gang-timeout", "--tp", "--pp",
        "--dp", "--model-params", "--bytes-per-param", "--iteration-time", "--max-cross-domain-loss",
        "--dataset", "--shards", "--locality-wait",
    ):  # fmt: skip
        assert flag in out, flag


def test_submit_train_llm_example(capsys: pytest.CaptureFixture[str], fake_master: Fake) -> None:
    import pathlib

    fake, _ = fake_master
    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "train-llm.yaml"
    code, out, err = run(capsys, "submit", str(path))
    assert code == 0, err
    spec = sent(fake, out)
    assert spec.parallelism == Parallelism(8, 2, 4) and spec.resources.gpu_model == "H100"
