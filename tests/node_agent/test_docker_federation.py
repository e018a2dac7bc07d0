"""A ``runtime: docker`` job through the whole federation, in process (the real master, a
sub-domain and two agents over gRPC on loopback): it lands only on the node whose agent has a
Docker engine, succeeds, and its logs come back through the master."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sys
from typing import Any

import pytest
from conftest import TEST_IMAGE

from domainos.api.v1 import master_pb2, master_pb2_grpc
from domainos.jobspec import DOCKER_LABEL, parse_spec
from domainos.topology import SimInventory
from master_domain import MasterConfig, MasterDomain
from node_agent import AgentConfig, NodeAgent
from sub_domain import SubDomainConfig, SubDomainManager

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "master_domain"))
from master_helpers import bearer_channel, wait_async  # an admin's channel; polling

pytestmark = pytest.mark.docker


def test_a_docker_job_runs_through_the_federation_on_docker_nodes_only(
    tmp_path: pathlib.Path, docker_engine: str
) -> None:
    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            token_file = tmp_path / "admin.token"
            master = MasterDomain(
                MasterConfig(
                    listen="127.0.0.1:0",
                    metrics_listen="",
                    store="memory://",
                    insecure=True,
                    bootstrap_token_file=str(token_file),
                )
            )
            master_addr = (await master.start())["listen"]
            stack.push_async_callback(master.shutdown)
            channel = bearer_channel(master_addr, token_file.read_text().strip())
            stack.push_async_callback(channel.close)
            stub: Any = master_pb2_grpc.DomainControlStub(channel)
            sd = SubDomainManager(
                SubDomainConfig(
                    id="east-1",
                    region="east",
                    listen="127.0.0.1:0",
                    master=master_addr,
                    metrics_listen="",
                    dead_after_s=1.0,
                    insecure=True,
                )
            )
            sd_addr = (await sd.start())["listen"]
            stack.push_async_callback(sd.shutdown)
            agents = {}
            for node, with_docker in (("plain", False), ("dock", True)):
                agent = NodeAgent(
                    AgentConfig(
                        tasks_as_agent_user=True,
                        node_id=node,
                        subdomains=[sd_addr],
                        state_dir=str(tmp_path / node),
                        metrics_listen="",
                        simulated=True,
                        inventory=SimInventory(cpus=4, memory="8Gi"),
                        insecure=True,
                        docker_runtime=with_docker,
                        docker_host=docker_engine,
                    )
                )
                await agent.start()
                stack.push_async_callback(agent.shutdown)
                agents[node] = agent
            assert agents["dock"].inventory.labels.get(DOCKER_LABEL) == "true"
            assert DOCKER_LABEL not in agents["plain"].inventory.labels

            async def ready() -> bool:
                resp = await stub.ListDomains(master_pb2.ListDomainsRequest())
                return any(s.summary.nodes_ready == 2 for r in resp.regions for s in r.subdomains)

            await wait_async(ready, 30.0, what="2 nodes ready")
            spec = parse_spec(
                {
                    "runtime": "docker",
                    "image": TEST_IMAGE,
                    "replicas": 3,
                    "command": ["/bin/sh", "-c", "echo hi from task $DOMAINOS_TASK_INDEX"],
                    "resources": {"cpus": 1, "memory": "64Mi"},
                }
            )
            resp = await stub.SubmitJob(master_pb2.SubmitJobRequest(spec=spec.to_proto(), request_id="d-1"))
            job_id = resp.job.job_id

            async def done() -> Any:
                job = await stub.GetJob(master_pb2.GetJobRequest(job_id=job_id))
                assert job.state != master_pb2.JOB_STATE_FAILED, job
                return job if job.state == master_pb2.JOB_STATE_SUCCEEDED else None

            job = await wait_async(done, 30.0, what="the docker job succeeded")
            assert {t.node_id for t in job.tasks} == {"dock"}
            assert job.spec.container.image == TEST_IMAGE
            logs = await stub.ReadLogs(master_pb2.ReadLogsRequest(job_id=job_id, task_index=-1))
            assert sorted(lg.chunk.data for lg in logs.logs) == [
                f"hi from task {i}\n".encode() for i in range(3)
            ]

    asyncio.run(asyncio.wait_for(scenario(), 90))
