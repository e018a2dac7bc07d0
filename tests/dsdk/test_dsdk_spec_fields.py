"""DSDK ``submit(**fields)`` / ``run(command, **fields)``: the scheduling fields of a job spec,
validated locally by the same :func:`domainos.jobspec.parse_spec` the master runs."""

from __future__ import annotations

import pytest
from fake_master_dsdk import FakeMaster

import dsdk
from domainos.errors import InvalidArgument
from domainos.jobspec import GangPolicy, JobSpec, Locality, ModelSize, Parallelism

Fake = tuple[FakeMaster, str]


def _sent(fake: FakeMaster, job: dsdk.Job) -> JobSpec:
    return JobSpec.from_proto(fake.jobs[job.job_id].spec)


def test_submit_with_keyword_fields(fake_master: Fake) -> None:
    fake, address = fake_master
    with dsdk.connect(address) as c:
        job = c.submit(
            command=["python3", "train.py"],
            parallelism={"tp": 8, "pp": 2, "dp": 4},
            model={"parameters": "7B"},
            iteration_time="2s",
            gang={"timeout": "10m"},
            resources={"gpu_model": "H100"},
            exclude_gpu_models=["T4"],
        )
        spec = _sent(fake, job)
        assert spec.parallelism == Parallelism(8, 2, 4) and spec.replicas == 8 and spec.resources.gpus == 8
        assert spec.model == ModelSize(7_000_000_000, 2.0) and spec.iteration_time_s == 2.0
        assert spec.gang == GangPolicy(8, 600.0) and spec.exclude_gpu_models == ("T4",)
        # The job read back carries the validated spec.
        assert c.job(job.job_id).spec == spec


def test_keyword_fields_replace_those_of_a_mapping_or_yaml(fake_master: Fake) -> None:
    fake, address = fake_master
    with dsdk.connect(address) as c:
        job = c.submit({"command": ["echo"], "replicas": 2}, replicas=4, gang=True)
        spec = _sent(fake, job)
        assert spec.replicas == 4 and spec.gang == GangPolicy(4, 300.0)
        job = c.submit("command: [echo]\nreplicas: 3\n", locality={"dataset": "web", "wait": 0})
        assert _sent(fake, job).locality == Locality("web", (), 0.0)


def test_run_with_keyword_fields(fake_master: Fake) -> None:
    fake, address = fake_master
    with dsdk.connect(address) as c:
        job = c.run(["nvidia-smi"], replicas=4, resources={"gpus": 0.25, "gpu_memory": "4Gi"})
        r = _sent(fake, job).resources
        assert (r.gpus, r.gpu_share, r.gpu_share_memory) == (0, 25, 4 * 2**30)
        job = c.run("echo $HOSTNAME")
        assert list(fake.jobs[job.job_id].spec.command) == ["/bin/sh", "-c", "echo $HOSTNAME"]


def test_bad_fields_are_refused_before_sending(fake_master: Fake) -> None:
    fake, address = fake_master
    with dsdk.connect(address) as c:
        with pytest.raises(InvalidArgument) as exc:
            c.run(["echo"], resources={"gpus": 0.333})
        assert exc.value.field == "resources.gpus" and "1% steps" in exc.value.message
        with pytest.raises(InvalidArgument) as exc:
            c.submit(command=["x"], model={"parameters": "7B"})
        assert exc.value.field == "model"
        with pytest.raises(InvalidArgument) as exc:
            c.submit(command=["x"], pipeline=2)
        assert exc.value.field == "pipeline" and "allowed fields" in exc.value.message
        with pytest.raises(InvalidArgument, match="a JobSpec is already validated"):
            c.submit(dsdk.parse_spec({"command": ["x"]}), replicas=2)
        with pytest.raises(InvalidArgument) as exc:
            c.submit()
        assert exc.value.field == "command"
    assert fake.jobs == {}
