"""GPU shares on the node: the environment a share's process sees, and the runner as the last line
against over-committing a card (real task processes; the agent over real gRPC)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from nodeagent_helpers import PY, FakeSubDomain, run, serve, spec, spec_proto, start_cmd, until

from domainos.errors import InvalidArgument, ResourceExhausted
from domainos.model import TaskRef, TaskSpec, TaskState
from domainos.resources import Resources
from domainos.topology import SimInventory
from node_agent import AgentConfig, NodeAgent
from node_agent._runner import TaskRunner

GIB = 2**30
MIB = 2**20
PRINT_ENV = "import os, json; print(json.dumps(dict(os.environ)))"
SLEEP = "import time; time.sleep(30)"


def share_spec(job: str, percent: int, memory: int = 0, command: str = SLEEP, **kw: Any) -> TaskSpec:
    s = spec(job, command=(PY, "-c", command), **kw)
    return TaskSpec(
        ref=s.ref,
        command=s.command,
        env=s.env,
        resources=Resources(100, 64 * MIB, 0, "", gpu_share=percent, gpu_share_memory=memory),
        job_name=s.job_name,
        replicas=1,
    )


def whole_spec(job: str, gpus: int, command: str = SLEEP) -> TaskSpec:
    s = spec(job, command=(PY, "-c", command))
    return TaskSpec(
        ref=s.ref, command=s.command, resources=Resources(100, 64 * MIB, gpus, ""), job_name="job", replicas=1
    )


def make_runner(tmp_path: Path) -> TaskRunner:
    return TaskRunner(
        tmp_path / "state",
        node_id="n-gpu",
        cores=sorted(os.sched_getaffinity(0)),
        gpus={0: 40 * GIB, 1: 40 * GIB},
    )


def env_of(runner: TaskRunner, ref: TaskRef) -> dict[str, str]:
    data: dict[str, str] = json.loads((runner.task_dir(ref) / "stdout").read_text())
    return data


def test_share_environment_seen_by_the_task(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        # Memory not given: the same fraction of the card (30% of 40 GiB = 12288 MiB). The job's
        # env cannot override what the agent sets.
        s = share_spec("j-frac", 30, command=PRINT_ENV, env={"DOMAINOS_GPU_SHARE": "100"})
        await runner.start(s, [1])
        assert runner.gpu_shares() == {1: (30, 12288 * MIB)}
        runner.validate()
        final = await runner.wait(s.ref)
        assert final is not None and final.state is TaskState.SUCCEEDED
        env = env_of(runner, s.ref)
        assert env["CUDA_VISIBLE_DEVICES"] == "1"
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
        # The task's one visible card is its device 0.
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=12288M"
        assert env["DOMAINOS_GPU_SHARE"] == "30"
        assert env["DOMAINOS_GPU_MEMORY_MIB"] == "12288"
        assert runner.gpu_shares() == {}  # released when it ended
        # Memory given: that amount.
        s2 = share_spec("j-mem", 25, memory=5 * GIB, command=PRINT_ENV)
        await runner.start(s2, [0])
        await runner.wait(s2.ref)
        env = env_of(runner, s2.ref)
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == "0=5120M"
        assert env["DOMAINOS_GPU_MEMORY_MIB"] == "5120"
        # A whole-GPU task gets none of the share variables.
        w = whole_spec("j-whole", 1, command=PRINT_ENV)
        await runner.start(w, [0])
        await runner.wait(w.ref)
        env = env_of(runner, w.ref)
        assert env["CUDA_VISIBLE_DEVICES"] == "0"
        assert not {k for k in env if k.startswith("CUDA_MPS_") or k.startswith("DOMAINOS_GPU_")}
        runner.validate()
        await runner.shutdown(stop_tasks=True, grace_s=1)

    run(main())


def test_share_over_commit_is_refused_with_the_numbers(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        a = share_spec("j-a", 60)
        await runner.start(a, [0])
        b = share_spec("j-b", 30, memory=10 * GIB)
        await runner.start(b, [0])
        runner.validate()
        assert runner.gpu_shares() == {0: (90, 24576 * MIB + 10 * GIB)}
        # Compute: 90% + 20% > 100%.
        with pytest.raises(
            ResourceExhausted, match=r"GPU 0 of node n-gpu cannot take a 20% share: 90% .* 110% > 100%"
        ):
            await runner.start(share_spec("j-c", 20), [0])
        # Memory: 10% of compute fits, 8 GiB of memory does not (24 + 10 of 40 GiB shared).
        with pytest.raises(
            ResourceExhausted, match=r"share of 8192 MiB of memory: 34816 MiB of its 40960 MiB are shared"
        ):
            await runner.start(share_spec("j-d", 10, memory=8 * GIB), [0])
        # A card carrying shares is not free as a whole.
        with pytest.raises(ResourceExhausted, match=r"GPU 0 .* carries GPU shares \(2 tasks, 90% of it\)"):
            await runner.start(whole_spec("j-e", 2), [1, 0])
        # A card held whole takes no share.
        w = whole_spec("j-w", 1)
        await runner.start(w, [1])
        with pytest.raises(ResourceExhausted, match=r"GPU 1 .* held whole by task j-w/0#0"):
            await runner.start(share_spec("j-f", 5), [1])
        with pytest.raises(ResourceExhausted, match=r"GPU 1 of node n-gpu is held by task j-w/0#0"):
            await runner.start(whole_spec("j-g", 1), [1])
        # A share on two cards is malformed.
        with pytest.raises(InvalidArgument, match=r"exactly one GPU, got indexes \[0, 1\]"):
            await runner.start(share_spec("j-h", 5), [0, 1])
        runner.validate()
        # Nothing refused was recorded or started.
        assert {s.ref.job_id for s in runner.statuses()} == {"j-a", "j-b", "j-w"}
        # When the shares end, the card is whole-free again.
        runner.stop(a.ref, grace_s=1)
        runner.stop(b.ref, grace_s=1)
        await runner.wait(a.ref)
        await runner.wait(b.ref)
        assert runner.gpu_shares() == {}
        await runner.start(whole_spec("j-i", 1), [0])
        runner.validate()
        await runner.shutdown(stop_tasks=True, grace_s=1)
        runner.validate()
        assert runner.gpu_shares() == {} and runner.gpus_held_whole() == {}

    run(main())


def share_proto(job: str, percent: int, command: str) -> Any:
    msg = spec_proto(job, command=(PY, "-c", command))
    msg.resources.gpu_share_percent = percent
    return msg


def test_agent_runs_a_share_and_refuses_an_over_commit(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeSubDomain()
        server, port = await serve(fake)
        cfg = AgentConfig(
            node_id="node-s",
            subdomains=[f"127.0.0.1:{port}"],
            state_dir=str(tmp_path / "agent"),
            metrics_listen="",
            simulated=True,
            inventory=SimInventory(cpus=4, memory="16Gi", gpus=2, gpu_model="L4", gpu_memory="24Gi"),
            insecure=True,
        )
        cfg.validate()
        agent = NodeAgent(cfg)
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            code = "import os, json, time; print(json.dumps(dict(os.environ)), flush=True); time.sleep(30)"
            fake.conn.send(start_cmd("c-1", share_proto("j-s1", 40, code), gpus=[1]))
            ref = TaskRef("j-s1", 0, 0)
            await until(lambda: fake.conn.ack("c-1"), what="ack of c-1")
            assert fake.conn.ack("c-1").ok
            stdout = agent.runner.task_dir(ref) / "stdout"
            await until(lambda: stdout.exists() and stdout.read_text().strip(), what="the task's env")
            env = json.loads(stdout.read_text())
            assert env["CUDA_VISIBLE_DEVICES"] == "1"
            assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
            assert env["DOMAINOS_GPU_MEMORY_MIB"] == str(24 * 1024 * 40 // 100)
            # The sub-domain reports the share's one GPU as the task's gpu_indexes.
            await until(
                lambda: (s := fake.conn.last_status(ref)) is not None and list(s.gpu_indexes) == [1],
                what="the task's status with its GPU",
            )
            # 40% + 70% > 100%: refused, with the numbers, and nothing runs.
            fake.conn.send(start_cmd("c-2", share_proto("j-s2", 70, "print(1)"), gpus=[1]))
            ack = await until(lambda: fake.conn.ack("c-2"), what="ack of c-2")
            assert not ack.ok and "40% of it is shared already (1 tasks), 110% > 100%" in ack.error
            assert agent.runner.get(TaskRef("j-s2", 0, 0)) is None
            # A share on two GPUs is malformed: refused and recorded FAILED.
            fake.conn.send(start_cmd("c-3", share_proto("j-s3", 10, "print(1)"), gpus=[0, 1]))
            ack = await until(lambda: fake.conn.ack("c-3"), what="ack of c-3")
            assert not ack.ok and "exactly one GPU" in ack.error
            # What the node reports as free stays whole GPUs: the inventory lists 2 cards.
            assert agent.inventory.allocatable.gpus == 2
        finally:
            await agent.shutdown()
            await server.stop(None)

    run(main())
