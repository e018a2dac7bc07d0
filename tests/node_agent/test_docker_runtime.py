"""The Docker task runtime against a real local engine (the ``docker_engine`` fixture): a
``runtime: docker`` task runs as a container with the task's limits, its output reaches the same
log files as a process task's, exit codes, cancels and OOM kills are reported as for processes,
a restarted agent re-adopts its container, and a job reaches only nodes with an engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import TEST_IMAGE

from domainos.errors import InvalidArgument
from domainos.jobspec import DOCKER_GPU_LABEL, DOCKER_LABEL, JobSpec, parse_spec
from domainos.model import ContainerSpec, TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.resources import Resources
from node_agent._docker import DockerRuntime
from node_agent._runner import TaskRunner

MIB = 2**20
pytestmark = pytest.mark.docker


def container_spec(
    job: str, command: list[str], *, cpus: int = 500, memory: int = 64 * MIB, gpus: int = 0, attempt: int = 0
) -> TaskSpec:
    return TaskSpec(
        ref=TaskRef(job, 0, attempt),
        command=tuple(command),
        resources=Resources(cpus, memory, gpus),
        job_name=job,
        container=ContainerSpec(TEST_IMAGE),
    )


@contextlib.asynccontextmanager
async def docker_runner(
    tmp_path: Path, host: str | None, changes: list[TaskStatus] | None = None, *, stop: bool = True
) -> AsyncIterator[TaskRunner]:
    rt = None
    if host is not None:
        rt = DockerRuntime(host)
        await rt.connect()
    runner = TaskRunner(
        tmp_path / "state",
        node_id="n-docker",
        cores=sorted(os.sched_getaffinity(0)),
        on_change=changes.append if changes is not None else None,
        docker=rt,
        docker_note="" if rt is not None else "no Docker engine answers at unix:///nowhere.sock",
    )
    try:
        yield runner
    finally:
        await runner.shutdown(stop_tasks=stop, grace_s=1.0)
        if rt is not None:
            rt.close()


def log_of(runner: TaskRunner, ref: TaskRef, stream: str = "stdout") -> bytes:
    return runner.read_log(ref, stream, 0, 1 << 20).data


def engine(host: str) -> Any:
    return docker.DockerClient(base_url=host, version="auto", timeout=30)


def gone(host: str, container_id: str) -> bool:
    client = engine(host)
    try:
        client.api.inspect_container(container_id)
        return False
    except docker.errors.NotFound:
        return True
    finally:
        client.close()


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ------------------------------------------------------------------ runs, logs, exit codes


def test_a_container_task_runs_and_its_output_reaches_the_log_files(
    tmp_path: Path, docker_engine: str
) -> None:
    async def scenario() -> None:
        changes: list[TaskStatus] = []
        async with docker_runner(tmp_path, docker_engine, changes) as runner:
            spec = container_spec("j-hello", ["/bin/sh", "-c", "echo hello; echo oops >&2; env"])
            result = await runner.start(spec)
            assert result.created and result.status.state is TaskState.RUNNING
            record = json.loads((runner.task_dir(spec.ref) / "status.json").read_text())
            cid = record["container_id"]
            assert cid and record["spec"]["image"] == TEST_IMAGE
            final = await runner.wait(spec.ref)
            assert final is not None and final.state is TaskState.SUCCEEDED, final
            assert final.exit_code == 0
            out = log_of(runner, spec.ref).decode()
            assert out.startswith("hello\n")
            env = dict(line.split("=", 1) for line in out.splitlines()[1:])
            assert env["DOMAINOS_JOB_ID"] == "j-hello" and env["DOMAINOS_TASK_ATTEMPT"] == "0"
            assert env["DOMAINOS_NODE_ID"] == "n-docker" and env["DOMAINOS_RUNTIME"] == "docker"
            assert env["DOMAINOS_PROGRESS_FILE"] == "/domainos/home/progress.json"
            assert env["DOMAINOS_CHECKPOINT_DIR"] == "/domainos/checkpoints"
            assert env["HOME"] == "/domainos/home"
            assert log_of(runner, spec.ref, "stderr") == b"oops\n"
            assert [s.state for s in changes] == [TaskState.RUNNING, TaskState.SUCCEEDED]
            # Removed only after its end was recorded.
            await asyncio.sleep(0.2)
            assert gone(docker_engine, cid)
            runner.validate()

    run(scenario())


def test_an_exit_code_fails_the_task_with_that_code(tmp_path: Path, docker_engine: str) -> None:
    async def scenario() -> None:
        async with docker_runner(tmp_path, docker_engine) as runner:
            spec = container_spec("j-exit", ["/bin/sh", "-c", "echo bye; exit 3"])
            await runner.start(spec)
            final = await runner.wait(spec.ref)
            assert final is not None and final.state is TaskState.FAILED
            assert (final.exit_code, final.message) == (3, "exited with code 3")
            assert log_of(runner, spec.ref) == b"bye\n"

            missing = container_spec("j-missing", ["no-such-program"])
            await runner.start(missing)
            final = await runner.wait(missing.ref)
            assert final is not None and final.state is TaskState.FAILED and final.exit_code == 127
            runner.validate()

    run(scenario())


def test_a_stop_ends_the_container_within_the_grace(tmp_path: Path, docker_engine: str) -> None:
    async def scenario() -> None:
        async with docker_runner(tmp_path, docker_engine) as runner:
            polite = container_spec("j-polite", ["sleep", "60"])
            stubborn = container_spec(
                "j-stubborn", ["/bin/sh", "-c", "trap '' TERM; echo ready; sleep 60 & wait"]
            )
            await runner.start(polite)
            await runner.start(stubborn)
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            runner.stop(polite.ref, grace_s=10.0, reason="cancelled by test")
            final = await runner.wait(polite.ref)
            assert final is not None and final.state is TaskState.CANCELLED
            assert final.exit_code == 143 and "SIGTERM" in final.message
            assert time.monotonic() - t0 < 5.0  # SIGTERM reached the task: no waiting out the grace

            t0 = time.monotonic()
            runner.stop(stubborn.ref, grace_s=1.0, reason="cancelled by test")
            final = await runner.wait(stubborn.ref)
            took = time.monotonic() - t0
            assert final is not None and final.state is TaskState.CANCELLED
            assert final.exit_code == 137 and "SIGKILL" in final.message
            assert 1.0 <= took < 6.0, took
            runner.validate()

    run(scenario())


def test_limits_are_the_tasks_resources_inside_the_container(tmp_path: Path, docker_engine: str) -> None:
    probe = (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max; /bin/busybox id -u; "
        "cat /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || cat /sys/fs/cgroup/cpuset.cpus.effective"
    )

    async def scenario() -> None:
        async with docker_runner(tmp_path, docker_engine) as runner:
            spec = container_spec("j-limits", ["/bin/sh", "-c", probe], cpus=500, memory=96 * MIB)
            await runner.start(spec)
            final = await runner.wait(spec.ref)
            assert final is not None and final.state is TaskState.SUCCEEDED, final
            memory, cpu, uid, cpuset = log_of(runner, spec.ref).decode().split("\n")[:4]
            assert int(memory) == 96 * MIB
            assert cpu.split()[0] == "50000"  # 500 millis: 50 ms per 100 ms period
            assert final.cpu_set and cpuset == ",".join(str(c) for c in final.cpu_set)  # its one core
            # As process tasks: the task user (root agent), else the agent's own user.
            assert int(uid) == (runner.users.default.uid if runner.users is not None else os.geteuid())

    run(scenario())


def test_an_oom_kill_is_reported_as_such(tmp_path: Path, docker_engine: str) -> None:
    async def scenario() -> None:
        async with docker_runner(tmp_path, docker_engine) as runner:
            spec = container_spec(
                "j-oom",
                ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"],
                memory=32 * MIB,
            )
            await runner.start(spec)
            final = await runner.wait(spec.ref)
            assert final is not None and final.state is TaskState.FAILED, final
            assert final.exit_code == 137
            assert "out of memory" in final.message and "32 MiB" in final.message

    run(scenario())


# ------------------------------------------------------------------ agent restarts


def test_a_restarted_agent_re_adopts_a_running_container(tmp_path: Path, docker_engine: str) -> None:
    script = "echo before; while [ ! -e /domainos/home/go ]; do sleep 0.1; done; echo after; exit 5"
    spec = container_spec("j-adopt", ["/bin/sh", "-c", script])

    async def first() -> str:
        # The agent goes away leaving its task running (stop_tasks_on_shutdown: false).
        async with docker_runner(tmp_path, docker_engine, stop=False) as runner:
            await runner.start(spec)
            for _ in range(100):
                if log_of(runner, spec.ref):
                    break
                await asyncio.sleep(0.05)
            assert log_of(runner, spec.ref) == b"before\n"
            return str(json.loads((runner.task_dir(spec.ref) / "status.json").read_text())["container_id"])

    async def second(cid: str) -> None:
        changes: list[TaskStatus] = []
        async with docker_runner(tmp_path, docker_engine, changes) as runner:
            [recovered] = runner.recover()
            assert recovered.state is TaskState.RUNNING and recovered.ref == spec.ref  # the same attempt
            assert runner.adopted_total == 1
            (runner.task_dir(spec.ref) / "home" / "go").touch()
            final = await runner.wait(spec.ref)
            assert final is not None and final.state is TaskState.FAILED and final.exit_code == 5
            assert log_of(runner, spec.ref) == b"before\nafter\n"  # nothing lost, nothing twice
            await asyncio.sleep(0.2)
            assert gone(docker_engine, cid)
            runner.validate()

    cid = run(first())
    assert not gone(docker_engine, cid)
    run(second(cid))


def test_a_container_that_ended_while_no_agent_ran_reports_its_exit_code(
    tmp_path: Path, docker_engine: str
) -> None:
    script = "echo before; while [ ! -e /domainos/home/go ]; do sleep 0.1; done; echo after; exit 4"
    spec = container_spec("j-away", ["/bin/sh", "-c", script])

    async def first() -> Path:
        async with docker_runner(tmp_path, docker_engine, stop=False) as runner:
            await runner.start(spec)
            await asyncio.sleep(0.5)
            return runner.task_dir(spec.ref)

    task_dir = run(first())
    cid = json.loads((task_dir / "status.json").read_text())["container_id"]
    (task_dir / "home" / "go").touch()
    client = engine(docker_engine)
    try:
        assert client.api.wait(cid, timeout=20)["StatusCode"] == 4
    finally:
        client.close()

    async def second() -> None:
        async with docker_runner(tmp_path, docker_engine) as runner:
            runner.recover()
            final = await runner.wait(spec.ref)
            assert final is not None and final.state is TaskState.FAILED and final.exit_code == 4
            assert log_of(runner, spec.ref) == b"before\nafter\n"
            await asyncio.sleep(0.2)
            assert gone(docker_engine, cid)

    run(second())


def test_an_orphan_container_of_this_node_is_removed_on_restart(tmp_path: Path, docker_engine: str) -> None:
    async def scenario() -> None:
        async with docker_runner(tmp_path, docker_engine, stop=False) as runner:
            spec = container_spec("j-orphan", ["sleep", "60"])
            await runner.start(spec)
            cid = runner.statuses()[0]
            record = runner.task_dir(spec.ref) / "status.json"
        cid = json.loads(record.read_text())["container_id"]
        record.unlink()  # the agent died before it recorded the container
        async with docker_runner(tmp_path, docker_engine) as runner:
            assert runner.recover() == []
            for _ in range(100):
                if gone(docker_engine, cid):
                    break
                await asyncio.sleep(0.1)
            assert gone(docker_engine, cid)

    run(scenario())


# ------------------------------------------------------------------ refusals


def test_an_agent_without_an_engine_refuses_a_docker_task_clearly(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with docker_runner(tmp_path, None) as runner:
            spec = container_spec("j-noengine", ["echo", "hi"])
            result = await runner.start(spec)
            assert result.status.state is TaskState.FAILED and result.status.exit_code == 125
            assert "cannot run a runtime: docker task" in result.status.message
            assert "no Docker engine answers" in result.status.message
            assert b"cannot run a runtime: docker task" in log_of(runner, spec.ref, "stderr")
            runner.validate()

    run(scenario())


def test_a_gpu_task_is_refused_by_an_engine_without_the_nvidia_runtime(
    tmp_path: Path, docker_engine: str
) -> None:
    async def scenario() -> None:
        async with docker_runner(tmp_path, docker_engine) as runner:
            assert runner.docker is not None and runner.docker.info is not None
            if runner.docker.info.nvidia:
                pytest.skip("this engine has the nvidia runtime")
            spec = container_spec("j-gpu", ["echo", "hi"], gpus=1)
            result = await runner.start(spec, [0])
            assert result.status.state is TaskState.FAILED
            assert "has no nvidia runtime" in result.status.message
            runner.validate()

    run(scenario())


@pytest.mark.parametrize(
    ("data", "fld", "words"),
    [
        ({"runtime": "kvm", "command": "x"}, "runtime", "allowed: process|docker"),
        ({"runtime": "docker", "command": "x"}, "image", "is required with runtime: docker"),
        ({"runtime": "docker", "image": "Not An Image"}, "image", "is not a Docker image reference"),
        ({"image": "busybox", "command": "x"}, "image", "only used with runtime: docker"),
        (
            {"runtime": "docker", "image": "busybox", "node_selector": {DOCKER_LABEL: "false"}},
            f"node_selector.{DOCKER_LABEL}",
            "contradicts runtime: docker",
        ),
        ({"command": []}, "command", "is required"),
    ],
)
def test_a_bad_runtime_spec_is_refused_naming_the_field(data: dict[str, Any], fld: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_spec(data)
    assert err.value.field == fld and words in str(err.value)


def test_a_docker_spec_round_trips_and_asks_for_docker_nodes() -> None:
    spec = parse_spec({"runtime": "docker", "image": "ghcr.io/org/app:v1", "resources": {"gpus": 1}})
    assert spec.command == ()  # the image's own command
    assert spec.node_selector == {DOCKER_LABEL: "true", DOCKER_GPU_LABEL: "true"}
    assert JobSpec.from_proto(spec.to_proto()) == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec
    plain = parse_spec({"command": "true"})
    assert "runtime" not in plain.to_dict() and not plain.to_proto().HasField("container")
    task = TaskSpec(ref=TaskRef("j", 0, 0), container=ContainerSpec("busybox"))
    assert TaskSpec.from_proto(task.to_proto()) == task
    with pytest.raises(InvalidArgument) as err:
        TaskSpec(ref=TaskRef("j", 0, 0), container=ContainerSpec("BAD IMAGE")).validate("spec")
    assert err.value.field == "spec.container.image"


# ------------------------------------------------------------------ start latency


def test_container_start_latency(tmp_path: Path, docker_engine: str) -> None:
    """StartTask -> RUNNING (create + start of a container), median of several; printed."""

    async def scenario() -> list[float]:
        took: list[float] = []
        async with docker_runner(tmp_path, docker_engine) as runner:
            for i in range(7):
                spec = container_spec(f"j-lat{i}", ["/bin/sh", "-c", "exit 0"])
                t0 = time.perf_counter()
                result = await runner.start(spec)
                took.append(time.perf_counter() - t0)
                assert result.status.state is TaskState.RUNNING
                await runner.wait(spec.ref)
        return took

    took = run(scenario(), timeout=120)
    median = statistics.median(took)
    print(
        f"container start latency: median {median * 1000:.0f} ms over {len(took)} ({[round(t * 1000) for t in took]})"
    )
    assert median < 10.0
