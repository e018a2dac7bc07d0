"""In-process federations on port 0: the real master, sub-domains and agents in one event loop,
over real gRPC on loopback, with the embedded store. Faster than the process tier, and the place to
test interactions that cross all three tiers (the sub-domain cap spilling into the next sub-domain,
summaries reaching the master, node listing fan-out)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from domainos.api.v1 import master_pb2, master_pb2_grpc
from domainos.jobspec import parse_spec
from domainos.rpc import create_channel
from domainos.topology import SimInventory
from master_domain import MasterConfig, MasterDomain
from node_agent import AgentConfig, NodeAgent
from sub_domain import SubDomainConfig, SubDomainManager

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "master_domain"))
from master_helpers import bearer_channel  # an admin's channel


async def until(cond: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


class Fed:
    def __init__(self, stack: contextlib.AsyncExitStack, tmp: pathlib.Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.master_addr = ""
        self.subdomains: dict[str, str] = {}
        self.stub: Any = None

    async def add_master(self) -> None:
        token_file = self.tmp / "admin.token"
        master = MasterDomain(
            MasterConfig(
                listen="127.0.0.1:0",
                metrics_listen="",
                store="memory://",
                insecure=True,
                bootstrap_token_file=str(token_file),
            )
        )
        info = await master.start()
        self.stack.push_async_callback(master.shutdown)
        self.master_addr = info["listen"]
        channel = bearer_channel(self.master_addr, token_file.read_text().strip())
        self.stack.push_async_callback(channel.close)
        self.stub = master_pb2_grpc.DomainControlStub(channel)

    async def add_subdomain(self, sd_id: str, region: str, max_nodes: int = 10_000) -> str:
        sd = SubDomainManager(
            SubDomainConfig(
                id=sd_id,
                region=region,
                listen="127.0.0.1:0",
                master=self.master_addr,
                metrics_listen="",
                max_nodes=max_nodes,
                dead_after_s=1.0,
                insecure=True,
            )
        )
        info = await sd.start()
        self.stack.push_async_callback(sd.shutdown)
        self.subdomains[sd_id] = info["listen"]
        return str(info["listen"])

    async def add_agent(
        self, node_id: str, subdomains: list[str], *, as_me: bool = False, **kw: Any
    ) -> NodeAgent:
        agent = NodeAgent(
            AgentConfig(
                tasks_as_agent_user=as_me,
                node_id=node_id,
                subdomains=subdomains,
                state_dir=str(self.tmp / node_id),
                metrics_listen="",
                simulated=True,
                inventory=SimInventory(cpus=4, memory="8Gi", **kw),
                insecure=True,
            )
        )
        await agent.start()
        self.stack.push_async_callback(agent.shutdown)
        return agent

    async def domains(self) -> Any:
        return await self.stub.ListDomains(master_pb2.ListDomainsRequest())

    async def ready_nodes(self) -> dict[str, int]:
        resp = await self.domains()
        return {
            sd.subdomain_id: sd.summary.nodes_ready
            for r in resp.regions
            for sd in r.subdomains
            if sd.connected
        }


@contextlib.asynccontextmanager
async def federation(tmp: pathlib.Path) -> AsyncIterator[Fed]:
    async with contextlib.AsyncExitStack() as stack:
        fed = Fed(stack, tmp)
        await fed.add_master()
        yield fed


def cli(fed: Fed, *argv: str) -> tuple[int, str, str]:
    """``domainctl`` against the federation as its admin (run in a thread: it blocks)."""
    import io
    import os
    from contextlib import redirect_stderr, redirect_stdout
    from unittest import mock

    from domainctl.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    token = (fed.tmp / "admin.token").read_text().strip()
    with mock.patch.dict(os.environ, {"DOMAINOS_TOKEN": token}), redirect_stdout(out), redirect_stderr(err):
        code = main(["--master", fed.master_addr, "--insecure", *argv])
    return code, out.getvalue(), err.getvalue()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_a_job_runs_through_all_three_tiers(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path) as fed:
            east = await fed.add_subdomain("east-1", "east")
            west = await fed.add_subdomain("west-1", "west")
            for i in range(2):
                await fed.add_agent(f"e{i}", [east])
                await fed.add_agent(f"w{i}", [west])
            await until(lambda: _eq(fed.ready_nodes(), {"east-1": 2, "west-1": 2}), what="4 nodes ready")

            spec = parse_spec(
                {"replicas": 4, "command": ["python3", "-c", "print('ok')"], "resources": {"cpus": 1}}
            )
            resp = await fed.stub.SubmitJob(
                master_pb2.SubmitJobRequest(spec=spec.to_proto(), request_id="r-1")
            )
            job_id = resp.job.job_id

            async def done() -> Any:
                job = await fed.stub.GetJob(master_pb2.GetJobRequest(job_id=job_id))
                return job if job.state == master_pb2.JOB_STATE_SUCCEEDED else None

            job = await until(done, what="job succeeded")
            assert {t.subdomain_id for t in job.tasks} == {"east-1", "west-1"}
            logs = await fed.stub.ReadLogs(master_pb2.ReadLogsRequest(job_id=job_id, task_index=-1))
            assert [lg.chunk.data for lg in logs.logs] == [b"ok\n"] * 4

            # The same request id again returns the first job, and no second job exists.
            again = await fed.stub.SubmitJob(
                master_pb2.SubmitJobRequest(spec=spec.to_proto(), request_id="r-1")
            )
            assert again.duplicate and again.job.job_id == job_id
            listed = await fed.stub.ListJobs(master_pb2.ListJobsRequest())
            assert [j.job_id for j in listed.jobs] == [job_id]

            nodes = await fed.stub.ListNodes(master_pb2.ListNodesRequest())
            assert sorted(n.inventory.node_id for n in nodes.nodes) == ["e0", "e1", "w0", "w1"]
            assert all(n.inventory.simulated for n in nodes.nodes)

    run(scenario())


def test_a_node_past_the_cap_is_refused_and_lands_in_the_next_subdomain(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path) as fed:
            small = await fed.add_subdomain("small-1", "east", max_nodes=2)
            spill = await fed.add_subdomain("spill-1", "east")
            agents = [await fed.add_agent(f"n{i}", [small, spill]) for i in range(3)]
            await until(lambda: _eq(fed.ready_nodes(), {"small-1": 2, "spill-1": 1}), what="2 + 1 nodes")
            landed = {a.config.node_id: a.subdomain_id for a in agents}
            assert sorted(landed.values()) == ["small-1", "small-1", "spill-1"]
            resp = await fed.domains()
            small_view = next(sd for r in resp.regions for sd in r.subdomains if sd.subdomain_id == "small-1")
            assert small_view.summary.max_nodes == 2 and small_view.summary.nodes_total == 2

    run(scenario())


def test_the_cap_message_names_the_cap_and_the_subdomain(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path) as fed:
            small = await fed.add_subdomain("tiny-1", "east", max_nodes=1)
            await fed.add_agent("first", [small])
            await until(lambda: _eq(fed.ready_nodes(), {"tiny-1": 1}), what="1 node")
            from domainos.api.v1 import agent_pb2, agent_pb2_grpc, common_pb2

            channel = create_channel(small)
            try:
                stub = agent_pb2_grpc.AgentGatewayStub(channel)
                register = agent_pb2.AgentMessage(
                    register=agent_pb2.Register(
                        inventory=common_pb2.NodeInventory(node_id="second", cpu_cores=1, memory_bytes=2**30),
                        incarnation="x",
                    )
                )
                call = stub.Connect(iter([register]))
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    async for _ in call:
                        pass
                assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "tiny-1" in (exc.value.details() or "") and "max_nodes=1" in (
                    exc.value.details() or ""
                )
            finally:
                await channel.close()

    run(scenario())


def test_a_request_larger_than_any_node_is_invalid_and_not_stored(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path) as fed:
            sd = await fed.add_subdomain("east-1", "east")
            await fed.add_agent("n0", [sd])
            await until(lambda: _eq(fed.ready_nodes(), {"east-1": 1}), what="1 node")
            spec = parse_spec({"command": ["true"], "resources": {"cpus": 64}})
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await fed.stub.SubmitJob(master_pb2.SubmitJobRequest(spec=spec.to_proto()))
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (exc.value.details() or "").startswith("resources.cpus: 64 exceeds the largest node")
            listed = await fed.stub.ListJobs(master_pb2.ListJobsRequest())
            assert list(listed.jobs) == []
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await fed.stub.GetJob(master_pb2.GetJobRequest(job_id="j-nope"))
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND

    run(scenario())


async def _eq(coro: Awaitable[Any], expected: Any) -> bool:
    return bool(await coro == expected)


def test_an_admin_drains_a_node_and_its_task_moves_without_spending_a_retry(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        from domainos.api.v1 import common_pb2

        async with federation(tmp_path) as fed:
            east = await fed.add_subdomain("east-1", "east")
            await fed.add_agent("a", [east])
            await until(lambda: _eq(fed.ready_nodes(), {"east-1": 1}), what="1 node")
            spec = parse_spec(
                {
                    "command": ["python3", "-c", "import time; time.sleep(60)"],
                    "resources": {"cpus": 1},
                    "retry": {"on_lost": 0},
                }
            )
            job_id = (await fed.stub.SubmitJob(master_pb2.SubmitJobRequest(spec=spec.to_proto()))).job.job_id

            async def running_on(node: str) -> Any:
                job = await fed.stub.GetJob(master_pb2.GetJobRequest(job_id=job_id))
                t = job.tasks[0]
                return job if t.state == common_pb2.TASK_STATE_RUNNING and t.node_id == node else None

            await until(lambda: running_on("a"), what="the task running on a")
            await fed.add_agent("b", [east])
            await until(lambda: _eq(fed.ready_nodes(), {"east-1": 2}), what="2 nodes")
            drain = master_pb2.AdminNodeRequest(
                node_id="east-1/a", action=common_pb2.NODE_ACTION_DRAIN, reason="bad DIMM", grace_s=1.0
            )
            reply = await fed.stub.AdminNode(drain)
            assert reply.tasks_stopped == 1 and reply.node.state == "cordoned"
            assert reply.node.cordoned_by == "admin" and reply.node.cordon_reason == "bad DIMM"
            job = await until(lambda: running_on("b"), what="the task running on b")
            t = job.tasks[0]
            assert t.attempt == 1 and t.drains == 1 and t.lost_retries == 0
            nodes = {
                n.inventory.node_id: n
                for n in (await fed.stub.ListNodes(master_pb2.ListNodesRequest())).nodes
            }
            assert nodes["a"].state == "cordoned" and nodes["b"].state == "ready"
            # Unknown nodes and bad actions are refused with the field named.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await fed.stub.AdminNode(
                    master_pb2.AdminNodeRequest(node_id="nope", action=common_pb2.NODE_ACTION_CORDON)
                )
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details().startswith("node_id: node nope is not a node of 1 sub-domains")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await fed.stub.AdminNode(master_pb2.AdminNodeRequest(node_id="a"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            undo = master_pb2.AdminNodeRequest(node_id="a", action=common_pb2.NODE_ACTION_UNCORDON)
            assert (await fed.stub.AdminNode(undo)).node.state == "ready"
            # The same through domainctl (an admin's token in $DOMAINOS_TOKEN).
            code, out, err = await asyncio.to_thread(cli, fed, "cordon", "b", "--reason", "firmware update")
            assert (code, err) == (
                0,
                "",
            ) and out == "node east-1/b cordoned: no new tasks (1 running keep running)\n"
            code, out, err = await asyncio.to_thread(cli, fed, "drain", "east-1/b", "--grace", "1s")
            assert code == 0 and out == (
                "node east-1/b draining: 1 tasks moving off (queued again elsewhere, no retry spent)\n"
            )
            await until(lambda: running_on("a"), what="the task back on a")
            code, out, _ = await asyncio.to_thread(cli, fed, "nodes")
            assert "east-1/b: cordoned by admin: firmware update" in out
            code, _, err = await asyncio.to_thread(cli, fed, "drain", "b", "--grace", "forever")
            assert code == 2 and err.startswith("error: --grace: expected a duration")
            code, _, err = await asyncio.to_thread(cli, fed, "uncordon", "ghost")
            assert code == 1 and err.startswith("error: node_id: node ghost is not a node of 1 sub-domains")
            code, out, _ = await asyncio.to_thread(cli, fed, "uncordon", "b")
            assert (code, out) == (0, "node east-1/b uncordoned: ready\n")
            await fed.stub.CancelJob(master_pb2.CancelJobRequest(job_id=job_id))

    run(scenario())


def test_a_tasks_progress_and_checkpoints_reach_the_master(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with federation(tmp_path) as fed:
            east = await fed.add_subdomain("east-1", "east")
            await fed.add_agent("a", [east], as_me=True)  # the task imports dsdk from this venv
            await until(lambda: _eq(fed.ready_nodes(), {"east-1": 1}), what="1 node")
            code = (
                "import time, dsdk\n"
                "dsdk.report_progress(7, 100, force=True)\n"
                "dsdk.note_checkpoint(5)\n"
                "time.sleep(60)\n"
            )
            spec = parse_spec(
                {"command": [sys.executable, "-c", code], "resources": {"cpus": 1}, "checkpoint": True}
            )
            job_id = (await fed.stub.SubmitJob(master_pb2.SubmitJobRequest(spec=spec.to_proto()))).job.job_id

            async def progressed() -> Any:
                job = await fed.stub.GetJob(master_pb2.GetJobRequest(job_id=job_id))
                p = job.tasks[0].progress
                return job if p.step == 7 and p.checkpoint_step == 5 else None

            job = await until(progressed, what="the task's progress at the master")
            p = job.tasks[0].progress
            assert p.total_steps == 100 and p.checkpoint_at > 0 and p.step_at > 0
            assert job.goodput.wall_s > 0 and job.goodput.interruptions == 0
            assert job.goodput.effective_ratio == pytest.approx(1.0)
            await fed.stub.CancelJob(master_pb2.CancelJobRequest(job_id=job_id))

    run(scenario())
