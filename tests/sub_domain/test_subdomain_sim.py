"""The summary simulator against a real master in process, over real gRPC on loopback.

A :class:`SubDomainFleet` of simulated sub-domains speaks the real ``SubDomainGateway`` protocol to
a real :class:`MasterDomain`; jobs go in through the master's client API (an admin's channel).
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from domainctl.__main__ import main
from domainos.api.v1 import common_pb2, master_pb2, master_pb2_grpc
from domainos.config import TLSConfig
from domainos.model import NodeInventory, TaskSpec
from domainos.resources import Resources
from domainos.security import Identity, init_ca, issue_files
from master_domain import MasterConfig, MasterDomain
from node_agent._hardware import SimulatedHardware
from node_agent._sim import profile
from sub_domain._sim import SubDomainFleet

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "master_domain"))
from master_helpers import admin_token, bearer_channel

pytestmark = pytest.mark.timeout(60)

JS = master_pb2
GI = 2**30
H100 = "H100-SXM-80GB"


def template(name: str = "h100x8") -> NodeInventory:
    return SimulatedHardware("template", profile(name)).inventory()


async def until(cond: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


class Federation:
    """A real master in this loop, a fleet of simulated sub-domains, and an admin's client."""

    def __init__(self, master: MasterDomain, fleet: SubDomainFleet, api: Any) -> None:
        self.master = master
        self.fleet = fleet
        self.api = api
        self.placed: list[tuple[str, TaskSpec, bool]] = []

    async def submit(self, replicas: int = 1, gpus: int = 1, duration: float = 0.2, **kw: Any) -> str:
        spec = JS.JobSpec(
            name="sim",
            replicas=replicas,
            command=["simulated"],
            env={"DOMAINOS_SIM_DURATION": str(duration)},
            resources=common_pb2.Resources(cpu_millis=4000, memory_bytes=16 * GI, gpus=gpus),
            **kw,
        )
        resp = await self.api.SubmitJob(JS.SubmitJobRequest(spec=spec))
        return str(resp.job.job_id)

    async def job(self, job_id: str) -> Any:
        return await self.api.GetJob(JS.GetJobRequest(job_id=job_id))

    async def wait_state(self, job_id: str, state: int, timeout: float = 20.0) -> Any:
        async def check() -> Any:
            job = await self.job(job_id)
            return job if job.state == state else None

        return await until(check, timeout, f"job {job_id} {JS.JobState.Name(state)}")


@asynccontextmanager
async def federation(subdomains: int, nodes: int, **kw: Any) -> AsyncIterator[Federation]:
    cfg = MasterConfig(listen="127.0.0.1:0", metrics_listen="", store="memory://", insecure=True)
    master = MasterDomain(cfg)
    info = await master.start()
    channel = bearer_channel(info["listen"], await admin_token(master))
    placed: list[tuple[str, TaskSpec, bool]] = []
    fleet = SubDomainFleet(
        info["listen"],
        subdomains,
        nodes,
        template(),
        on_place=lambda sd, spec, at, ok: placed.append((sd, spec, ok)),
        **kw,
    )
    fed = Federation(master, fleet, master_pb2_grpc.DomainControlStub(channel))
    fed.placed = placed
    try:
        await fleet.start()
        yield fed
    finally:
        await fleet.shutdown()
        await channel.close()
        await master.shutdown()


async def _all_connected(fed: Federation, nodes: int) -> bool:
    stats = fed.master.stats()
    return stats.subdomains_connected == len(fed.fleet.subdomains) and stats.nodes_ready == nodes


def test_master_sees_every_simulated_subdomain_with_all_its_nodes_ready() -> None:
    async def body() -> None:
        async with federation(4, 250, regions=2) as fed:
            await until(lambda: _all_connected(fed, 1000), what="4 sub-domains with 1000 nodes")
            info = await fed.api.GetClusterInfo(JS.GetClusterInfoRequest())
            assert info.nodes_ready == 1000
            domains = await fed.api.ListDomains(JS.ListDomainsRequest())
            regions = {r.name for r in domains.regions}
            assert regions == {"simsd-region-0", "simsd-region-1"}
            sd = next(iter(fed.fleet.subdomains.values()))
            s = sd.summary()
            assert s.nodes_ready == 250 and s.free.gpus == 2000 and s.gpus_by_model == {H100: 2000}
            # One shape: every node idle (8 free GPUs, 2 NVLink domains of 4: 4 free in one domain).
            assert [(x.free_gpus, x.free_nvlink_gpus, x.count) for x in s.shapes] == [(8, 4, 250)]
            assert fed.fleet.stats().connected == 4

    asyncio.run(body())


def test_jobs_are_placed_run_and_finish_and_capacity_comes_back() -> None:
    async def body() -> None:
        async with federation(3, 20) as fed:
            await until(lambda: _all_connected(fed, 60), what="3 sub-domains")
            ones = await fed.submit(replicas=30, gpus=1)
            eights = await fed.submit(replicas=6, gpus=8)
            for job_id in (ones, eights):
                job = await fed.wait_state(job_id, JS.JOB_STATE_SUCCEEDED)
                assert all(t.state == common_pb2.TASK_STATE_SUCCEEDED for t in job.tasks)
                assert all(t.node_id.startswith(t.subdomain_id + "-n") for t in job.tasks)
            assert len(fed.placed) == 36 and all(ok for _, _, ok in fed.placed)
            assert {sd for sd, _, _ in fed.placed} == set(fed.fleet.subdomains)  # spread
            stats = fed.fleet.stats()
            assert stats.placed == 36 and stats.rejected == 0 and stats.tasks_running == 0
            for sd in fed.fleet.subdomains.values():
                assert sd.summary().free.gpus == 160 and sd.summary().running_tasks == 0
            # The master acknowledged every terminal state: the sub-domains forgot them.
            await until(
                lambda: _async(all(not sd.tasks for sd in fed.fleet.subdomains.values())), what="acks"
            )

    asyncio.run(body())


async def _async(value: Any) -> Any:
    return value


def test_placement_on_a_stale_summary_is_refused_and_the_master_places_it_elsewhere() -> None:
    async def body() -> None:
        async with federation(2, 1) as fed:
            await until(lambda: _all_connected(fed, 2), what="2 sub-domains")
            first, second = fed.fleet.subdomains.values()
            # Something else took every GPU of the first sub-domain's only node; its summary (the
            # one the master holds) still shows the node idle: a stale summary.
            first.summary()
            first.nodes.take(0, Resources(1000, GI, 8), tuple(range(8)))
            job_id = await fed.submit(replicas=1, gpus=8, duration=0.1)
            job = await fed.wait_state(job_id, JS.JOB_STATE_SUCCEEDED)
            assert job.tasks[0].subdomain_id == second.id
            assert [(sd, ok) for sd, _, ok in fed.placed] == [(first.id, False), (second.id, True)]
            assert first.rejected == 1 and second.placed == 1
            assert fed.master.stats().misdispatch_total == 1

    asyncio.run(body())


def test_refusal_says_why_with_the_subdomains_words() -> None:
    async def body() -> None:
        async with federation(1, 1) as fed:
            await until(lambda: _all_connected(fed, 1), what="1 sub-domain")
            (sd,) = fed.fleet.subdomains.values()
            sd.nodes.take(0, Resources(1000, GI, 6), tuple(range(6)))
            spec = TaskSpec.from_proto(
                common_pb2.TaskSpec(
                    job_id="j", task_index=0, command=["x"], resources=common_pb2.Resources(gpus=4)
                )
            )
            why = sd._choose(spec, 0.0)
            assert why == (
                "no ready node has cpus=0 memory=0B gpus=4 free; "
                "largest free: cpus=191 memory=2.0Ti gpus=2 (H100-SXM-80GB)"
            )
            share = TaskSpec.from_proto(
                common_pb2.TaskSpec(
                    job_id="j",
                    task_index=1,
                    command=["x"],
                    resources=common_pb2.Resources(gpu_share_percent=50),
                )
            )
            assert "GPU shares are not simulated" in str(sd._choose(share, 0.0))

    asyncio.run(body())


def test_gangs_are_reserved_committed_and_run() -> None:
    async def body() -> None:
        async with federation(2, 2) as fed:
            await until(lambda: _all_connected(fed, 4), what="2 sub-domains")
            job_id = await fed.submit(replicas=4, gpus=8, duration=0.3, gang=JS.GangPolicy(min=4))
            job = await fed.wait_state(job_id, JS.JOB_STATE_SUCCEEDED)
            assert {t.subdomain_id for t in job.tasks} == set(fed.fleet.subdomains)
            stats = fed.fleet.stats()
            assert stats.reservations_committed >= 2 and stats.reservations_held == 0
            # A gang larger than the federation's free GPUs waits; nothing is held for it.
            big = await fed.submit(replicas=5, gpus=8, gang=JS.GangPolicy(min=5))
            await asyncio.sleep(0.5)
            assert (await fed.job(big)).state == JS.JOB_STATE_PENDING
            assert fed.fleet.stats().reservations_held == 0
            await fed.api.CancelJob(JS.CancelJobRequest(job_id=big))

    asyncio.run(body())


def test_list_nodes_answers_a_synthetic_page() -> None:
    async def body() -> None:
        async with federation(1, 3) as fed:
            await until(lambda: _all_connected(fed, 3), what="1 sub-domain")
            resp = await fed.api.ListNodes(JS.ListNodesRequest())
            ids = sorted(n.inventory.node_id for n in resp.nodes)
            assert ids == ["simsd-000-n00000", "simsd-000-n00001", "simsd-000-n00002"]
            assert all(n.inventory.simulated and n.state == "ready" for n in resp.nodes)

    asyncio.run(body())


# -- the CLI ------------------------------------------------------------------------------------


class _MasterThread:
    """A real master on its own event loop in a thread (the CLI runs its own loop)."""

    def __init__(self, tls: TLSConfig | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        transport: dict[str, Any] = {"tls": tls} if tls is not None else {"insecure": True}
        cfg = MasterConfig(listen="127.0.0.1:0", metrics_listen="", store="memory://", **transport)
        self.master = MasterDomain(cfg)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.address = ""

    def __enter__(self) -> _MasterThread:
        self.thread.start()
        info = asyncio.run_coroutine_threadsafe(self.master.start(), self.loop).result(10)
        self.address = info["listen"]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.master.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_cli_runs_simulated_subdomains_until_the_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with _MasterThread() as m:
        args = ["sim-subdomains", "--master", m.address, "--subdomains", "3", "--nodes", "100"]
        assert main([*args, "--region-count", "2", "--insecure", "--duration", "1.5"]) == 0
        assert m.master.stats().subdomains_connected + m.master.stats().subdomains_disconnected == 3
    out = capsys.readouterr().out
    assert "simulating 3 sub-domains x 100 h100x8 nodes" in out, out
    assert "3/3 sub-domains connected (300 nodes)" in out, out
    assert "stopped after" in out


def test_cli_over_mutual_tls_issues_a_certificate_per_subdomain(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    init_ca(pki)
    files = issue_files(pki, Identity("master", "master-1"))
    with _MasterThread(TLSConfig(ca=files.ca, cert=files.cert, key=files.key)) as m:
        args = ["sim-subdomains", "--master", m.address, "--subdomains", "2", "--nodes", "5"]
        assert main([*args, "--pki", str(pki), "--duration", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "mutual TLS" in out and "2/2 sub-domains connected (10 nodes)" in out, out
    assert (pki / "subdomain-simsd-000.crt").exists() and (pki / "subdomain-simsd-001.crt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subdomains", "2", "--nodes", "3", "--insecure"], "--master: is required"),
        (["--master", "127.0.0.1:1", "--nodes", "3", "--insecure"], "--subdomains: is required"),
        (
            ["--master", "127.0.0.1:1", "--subdomains", "0", "--nodes", "3", "--insecure"],
            "--subdomains: must be",
        ),
        (["--master", "127.0.0.1:1", "--subdomains", "2", "--insecure"], "--nodes: is required"),
        (
            ["--master", "127.0.0.1:1", "--subdomains", "2", "--nodes", "200000", "--insecure"],
            "--nodes: must be between 1 and 100000",
        ),
        (
            [
                "--master",
                "127.0.0.1:1",
                "--subdomains",
                "2",
                "--nodes",
                "3",
                "--region-count",
                "3",
                "--insecure",
            ],
            "--region-count: must be between 1 and 2",
        ),
        (["--master", "127.0.0.1:1", "--subdomains", "2", "--nodes", "3"], "--pki: choose the transport"),
        (
            [
                "--master",
                "127.0.0.1:1",
                "--subdomains",
                "2",
                "--nodes",
                "3",
                "--insecure",
                "--profile",
                "tpu",
            ],
            "profile: unknown profile 'tpu'",
        ),
    ],
)
def test_cli_bad_flags_exit_2_with_a_precise_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim-subdomains", *args]) == 2
    assert message in capsys.readouterr().err
