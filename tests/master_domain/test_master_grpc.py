"""The master in-process over real gRPC on port 0, with fake sub-domains as raw stream clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from master_helpers import FakeSubdomain, admin_token, bearer_channel, run, wait_async, wait_for

from domainos.api.v1 import common_pb2, master_pb2, master_pb2_grpc, subdomain_pb2, subdomain_pb2_grpc
from domainos.rpc import create_channel
from master_domain import MasterConfig, MasterDomain
from master_domain import _master as master_module

pytestmark = pytest.mark.timeout(60)

JS = master_pb2


def config(**kw: Any) -> MasterConfig:
    base: dict[str, Any] = {"listen": "127.0.0.1:0", "metrics_listen": "", "store": "memory://"}
    base.update(kw)
    base.setdefault("insecure", "tls" not in base)  # this tier runs plaintext; TLS: tests/security
    return MasterConfig(**base)


class Cluster:
    """A started master plus a DomainControl client."""

    def __init__(self, master: MasterDomain, info: dict[str, Any], token: str) -> None:
        self.master = master
        self.info = info
        self.address = info["listen"]
        self.channel = bearer_channel(self.address, token)  # an admin's
        self.api = master_pb2_grpc.DomainControlStub(self.channel)
        self.fakes: list[FakeSubdomain] = []

    async def subdomain(self, sd: str, region: str = "east", **kw: Any) -> FakeSubdomain:
        fake = FakeSubdomain(self.address, sd, region, **kw)
        self.fakes.append(fake)
        await fake.connect()
        await wait_for(lambda: fake.welcome is not None or fake.ended.is_set(), what=f"{sd} welcomed")
        return fake

    async def submit(self, replicas: int = 1, cpus: int = 1000, request_id: str = "", **kw: Any) -> JS.Job:
        spec = JS.JobSpec(
            name="t",
            replicas=replicas,
            command=["python3", "-c", "pass"],
            resources=common_pb2.Resources(cpu_millis=cpus, memory_bytes=256 * 2**20),
            **kw,
        )
        resp = await self.api.SubmitJob(JS.SubmitJobRequest(spec=spec, request_id=request_id))
        return resp.job

    async def job(self, job_id: str) -> JS.Job:
        return await self.api.GetJob(JS.GetJobRequest(job_id=job_id))

    async def wait_state(self, job_id: str, state: int, timeout: float = 10.0) -> JS.Job:
        async def check() -> JS.Job | None:
            job = await self.job(job_id)
            return job if job.state == state else None

        return await wait_async(check, timeout, f"job {job_id} in {JS.JobState.Name(state)}")

    async def close(self) -> None:
        for fake in self.fakes:
            await fake.close()
        await self.channel.close()
        await self.master.shutdown()


@asynccontextmanager
async def cluster(**kw: Any) -> AsyncIterator[Cluster]:
    master = MasterDomain(config(**kw))
    info = await master.start()
    c = Cluster(master, info, await admin_token(master))
    try:
        yield c
    finally:
        await c.close()


async def store_keys(master: MasterDomain, prefix: str) -> list[str]:
    return [kv.key for kv in await master.store.range(prefix)]


def test_start_returns_ready_facts_and_welcome() -> None:
    async def body() -> None:
        async with cluster(id="m-test", metrics_listen="127.0.0.1:0", summary_interval_s=2.5) as c:
            assert c.info["id"] == "m-test"
            assert c.info["listen"].startswith("127.0.0.1:") and not c.info["listen"].endswith(":0")
            assert c.info["advertise"] == c.info["listen"]
            assert c.info["store"] == "memory://"
            fake = await c.subdomain("east-1")
            assert fake.welcome is not None
            assert fake.welcome.master_id == "m-test" and fake.welcome.summary_interval_s == 2.5
            info = await c.api.GetClusterInfo(JS.GetClusterInfoRequest())
            assert (info.master_id, info.subdomains_connected, info.subdomains_known, info.nodes_ready) == (
                "m-test",
                1,
                1,
                1,
            )
            with urllib.request.urlopen(f"http://{c.info['metrics']}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert 'domainos_master_subdomains{connected="true"} 1.0' in text
            assert "domainos_master_nodes_ready 1.0" in text
            assert "domainos_master_tasks_placed_total 0.0" in text
            assert "domainos_master_schedule_decision_seconds_bucket" in text
            assert 'domainos_master_jobs{state="pending"} 0.0' in text
            assert "domainos_master_misdispatch_total 0.0" in text

    run(body())


def test_job_runs_to_success_and_terminal_states_are_acked() -> None:
    async def body() -> None:
        async with cluster() as c:
            fake = await c.subdomain("east-1", behaviour="succeed")
            job = await c.submit(replicas=2)
            assert job.state == JS.JOB_STATE_PENDING and job.job_id.startswith("j-")
            done = await c.wait_state(job.job_id, JS.JOB_STATE_SUCCEEDED)
            assert [t.state for t in done.tasks] == [common_pb2.TASK_STATE_SUCCEEDED] * 2
            assert all(t.subdomain_id == "east-1" and t.region == "east" for t in done.tasks)
            assert done.tasks[0].node_id == "east-1-n-1" and done.finished_at > 0
            await wait_for(lambda: len(fake.acked) == 2, what="acks")
            spec = fake.placed[0]
            assert spec.master_address == c.address and spec.replicas == 2 and spec.job_name == "t"
            stored = json.loads((await c.master.store.get(f"/domainos/master/jobs/{job.job_id}")).value)
            assert stored["state"] == "SUCCEEDED"
            listed = await c.api.ListJobs(JS.ListJobsRequest())
            assert [j.job_id for j in listed.jobs] == [job.job_id] and not listed.jobs[0].tasks

    run(body())


def test_four_replicas_spread_over_two_subdomains() -> None:
    async def body() -> None:
        async with cluster() as c:
            await c.subdomain("east-1", behaviour="run", nodes=2, cpus=4)
            await c.subdomain("west-1", "west", behaviour="run", nodes=2, cpus=4)
            job = await c.submit(replicas=4)
            running = await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)

            async def all_running() -> JS.Job | None:
                j = await c.job(job.job_id)
                ok = all(t.state == common_pb2.TASK_STATE_RUNNING for t in j.tasks)
                return j if ok else None

            running = await wait_async(all_running, what="4 running tasks")
            assert Counter(t.subdomain_id for t in running.tasks) == {"east-1": 2, "west-1": 2}
            assert {t.region for t in running.tasks} == {"east", "west"}

    run(body())


def test_exit_3_fails_the_job_with_the_message() -> None:
    async def body() -> None:
        async with cluster() as c:
            await c.subdomain("east-1", behaviour="exit3")
            job = await c.submit()
            failed = await c.wait_state(job.job_id, JS.JOB_STATE_FAILED)
            assert failed.message == "task 0 exited with code 3"
            assert failed.tasks[0].exit_code == 3 and failed.tasks[0].state == common_pb2.TASK_STATE_FAILED

    run(body())


def test_exit_3_is_retried_by_policy() -> None:
    async def body() -> None:
        async with cluster() as c:
            fake = await c.subdomain("east-1", behaviour="exit3")
            job = await c.submit(retry=JS.RetryPolicy(on_exit=2, on_lost=0), has_retry=True)
            failed = await c.wait_state(job.job_id, JS.JOB_STATE_FAILED)
            assert [p.attempt for p in fake.placed] == [0, 1, 2]
            assert failed.tasks[0].exit_retries == 2 and failed.tasks[0].attempt == 2
            assert failed.message == "task 0 exited with code 3 after 2 retries"

    run(body())


def test_cancel_stops_running_tasks_and_is_idempotent() -> None:
    async def body() -> None:
        async with cluster() as c:
            fake = await c.subdomain("east-1", behaviour="run")
            job = await c.submit(replicas=2)
            await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)
            await c.api.CancelJob(JS.CancelJobRequest(job_id=job.job_id, reason="test over"))
            cancelled = await c.wait_state(job.job_id, JS.JOB_STATE_CANCELLED)
            assert cancelled.message == "cancelled: test over"
            assert {(r.job_id, r.task_index) for r in fake.stopped} == {(job.job_id, 0), (job.job_id, 1)}
            again = await c.api.CancelJob(JS.CancelJobRequest(job_id=job.job_id))
            assert again.state == JS.JOB_STATE_CANCELLED and again.finished_at == cancelled.finished_at
            # A job still waiting for room is cancelled at once.
            big = await c.submit(cpus=4000, replicas=3)
            await c.api.CancelJob(JS.CancelJobRequest(job_id=big.job_id))
            await c.wait_state(big.job_id, JS.JOB_STATE_CANCELLED)

    run(body())


def test_submit_is_idempotent_by_request_id() -> None:
    async def body() -> None:
        async with cluster() as c:
            spec = JS.JobSpec(command=["true"])
            first = await c.api.SubmitJob(JS.SubmitJobRequest(spec=spec, request_id="req-42"))
            second = await c.api.SubmitJob(JS.SubmitJobRequest(spec=spec, request_id="req-42"))
            assert not first.duplicate and second.duplicate
            assert second.job.job_id == first.job.job_id and second.job.request_id == "req-42"
            assert len(await store_keys(c.master, "/domainos/master/jobs/")) == 1
            anon = await c.api.SubmitJob(JS.SubmitJobRequest(spec=spec))
            assert anon.job.request_id and anon.job.job_id != first.job.job_id
            listed = await c.api.ListJobs(JS.ListJobsRequest())
            assert [j.job_id for j in listed.jobs] == [anon.job.job_id, first.job.job_id]  # newest first

    run(body())


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JS.JobSpec(), "command"),
        (JS.JobSpec(command=["true"], replicas=-1), "replicas"),
        (JS.JobSpec(command=["true"], env={"1BAD": "x"}), "env"),
        (JS.JobSpec(command=["true"], resources=common_pb2.Resources(cpu_millis=64000)), "resources.cpus"),
        (JS.JobSpec(command=["true"], has_retry=True, retry=JS.RetryPolicy(on_exit=-1)), "retry.on_exit"),
    ],
)
def test_bad_specs_are_invalid_argument_and_write_nothing(spec: JS.JobSpec, field: str) -> None:
    async def body() -> None:
        async with cluster() as c:
            await c.subdomain("east-1", cpus=2)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.api.SubmitJob(JS.SubmitJobRequest(spec=spec, request_id="bad-1"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(f"{field}: ")
            assert await store_keys(c.master, "/domainos/master/jobs/") == []
            assert await store_keys(c.master, "/domainos/master/requests/") == []

    run(body())


def test_too_large_request_names_the_largest_node() -> None:
    async def body() -> None:
        async with cluster() as c:
            await c.subdomain("east-1", cpus=2)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.submit(cpus=64000)
            assert err.value.details() == (
                "resources.cpus: 64 exceeds the largest node in the federation "
                "(2 cpus, node shape in sub-domain east-1); allowed: at most 2"
            )

    run(body())


def test_unknown_job_is_not_found() -> None:
    async def body() -> None:
        async with cluster() as c:
            for call in (
                c.api.GetJob(JS.GetJobRequest(job_id="j-nope")),
                c.api.CancelJob(JS.CancelJobRequest(job_id="j-nope")),
                c.api.ReadLogs(JS.ReadLogsRequest(job_id="j-nope")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                assert "job j-nope not found" in err.value.details()

    run(body())


def test_reconnect_without_a_task_makes_it_lost_and_retried() -> None:
    async def body() -> None:
        async with cluster() as c:
            fake = await c.subdomain("east-1", behaviour="run")
            job = await c.submit()
            await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)
            await fake.close()
            await wait_for(lambda: not c.master._registry.get("east-1").connected, what="disconnect seen")
            fake.running.clear()  # it restarted and forgot the task
            await fake.connect()

            async def retried() -> JS.Job | None:
                j = await c.job(job.job_id)
                t = j.tasks[0]
                return j if t.attempt == 1 and t.state == common_pb2.TASK_STATE_RUNNING else None

            j = await wait_async(retried, what="attempt 1 running")
            assert j.tasks[0].lost_retries == 1
            assert [p.attempt for p in fake.placed] == [0, 1]

    run(body())


def test_subdomain_gone_past_grace_loses_tasks_to_another() -> None:
    async def body() -> None:
        async with cluster(subdomain_lost_grace_s=0.2) as c:
            east = await c.subdomain("east-1", behaviour="run")
            job = await c.submit()
            await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)
            west = await c.subdomain("west-1", "west", behaviour="run")
            await east.close()

            async def moved() -> JS.Job | None:
                j = await c.job(job.job_id)
                t = j.tasks[0]
                return j if t.subdomain_id == "west-1" and t.state == common_pb2.TASK_STATE_RUNNING else None

            j = await wait_async(moved, what="task moved to west-1")
            assert j.tasks[0].attempt == 1 and j.tasks[0].lost_retries == 1
            assert west.placed[0].attempt == 1

    run(body())


def test_second_connection_with_same_id_is_refused_and_first_message_must_be_hello() -> None:
    async def body() -> None:
        async with cluster() as c:
            await c.subdomain("east-1")
            dup = FakeSubdomain(c.address, "east-1")
            c.fakes.append(dup)
            await dup.connect()
            await wait_for(dup.ended.is_set, what="refusal")
            assert dup.error is not None and dup.error.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "east-1 is already connected" in dup.error.details()

            channel = create_channel(c.address)
            call = subdomain_pb2_grpc.SubDomainGatewayStub(channel).Connect()
            await call.write(subdomain_pb2.SubDomainMessage(summary=subdomain_pb2.SummaryReport()))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "must be a Hello" in err.value.details()
            await channel.close()

    run(body())


def test_restart_on_the_same_sqlite_file_keeps_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/master.db"

    async def body() -> None:
        async with cluster(store=url) as c:
            fake = await c.subdomain("east-1", behaviour="run")
            running = await c.submit(request_id="r-run")
            await c.wait_state(running.job_id, JS.JOB_STATE_RUNNING)
            pending = await c.submit(cpus=4000, replicas=2, request_id="r-wait")
            done = await c.submit(request_id="r-done")
            await c.api.CancelJob(JS.CancelJobRequest(job_id=done.job_id))
            await c.wait_state(done.job_id, JS.JOB_STATE_CANCELLED)
            await fake.close()
        async with cluster(store=url) as c:
            assert (await c.job(pending.job_id)).state == JS.JOB_STATE_PENDING
            assert (await c.job(done.job_id)).state == JS.JOB_STATE_CANCELLED
            again = await c.api.SubmitJob(
                JS.SubmitJobRequest(spec=JS.JobSpec(command=["true"]), request_id="r-run")
            )
            assert again.duplicate and again.job.job_id == running.job_id
            listed = await c.api.ListJobs(JS.ListJobsRequest(limit=2))
            assert [j.job_id for j in listed.jobs] == [done.job_id, pending.job_id]
            rest = await c.api.ListJobs(JS.ListJobsRequest(limit=2, page_token=listed.next_page_token))
            assert [j.job_id for j in rest.jobs] == [running.job_id] and not rest.next_page_token
            only = await c.api.ListJobs(JS.ListJobsRequest(states=[JS.JOB_STATE_CANCELLED]))
            assert [j.job_id for j in only.jobs] == [done.job_id]
            # The sub-domain comes back still running the task: it is adopted, not restarted.
            fake.address = c.address
            fake.placed.clear()
            fake.welcome = None
            c.fakes.append(fake)
            await fake.connect()
            await wait_for(lambda: fake.welcome is not None, what="welcome after restart")
            j = await c.wait_state(running.job_id, JS.JOB_STATE_RUNNING)
            assert j.tasks[0].attempt == 0 and j.tasks[0].lost_retries == 0
            assert all(p.job_id != running.job_id for p in fake.placed)
            assert all(r.job_id != running.job_id for r in fake.stopped)

    run(body())


def test_restarted_master_loses_tasks_of_subdomains_that_do_not_come_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/master.db"

    async def body() -> None:
        async with cluster(store=url) as c:
            fake = await c.subdomain("east-1", behaviour="run")
            job = await c.submit()
            await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)
            await fake.close()
        async with cluster(store=url, subdomain_lost_grace_s=0.2) as c:
            domains = await c.api.ListDomains(JS.ListDomainsRequest())
            (region,) = domains.regions
            assert region.name == "east" and not region.subdomains[0].connected

            async def lost() -> JS.Job | None:
                j = await c.job(job.job_id)
                return j if j.tasks[0].lost_retries == 1 else None

            j = await wait_async(lost, what="task lost after the grace period")
            assert j.state == JS.JOB_STATE_PENDING and j.tasks[0].attempt == 1
            assert j.tasks[0].state == common_pb2.TASK_STATE_PENDING
            assert "did not reconnect within 0.2s" in j.tasks[0].message
            await wait_async(
                lambda: _message(c, job.job_id, "waiting: no sub-domain is connected"), what="waiting message"
            )

    run(body())


async def _message(c: Cluster, job_id: str, text: str) -> bool:
    return (await c.job(job_id)).message == text


def test_read_logs_is_routed_through_the_subdomain() -> None:
    async def body() -> None:
        async with cluster() as c:
            fake = await c.subdomain("east-1", behaviour="run")
            job = await c.submit(replicas=2)
            await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)
            await wait_async(lambda: _all_running(c, job.job_id), what="both tasks running")
            resp = await c.api.ReadLogs(JS.ReadLogsRequest(job_id=job.job_id, task_index=1))
            (log,) = resp.logs
            assert log.task_index == 1 and log.node_id == "east-1-n-1"
            assert log.chunk.data == f"log of {job.job_id}/1 on east-1-n-1\n".encode() and not log.chunk.error
            every = await c.api.ReadLogs(JS.ReadLogsRequest(job_id=job.job_id, task_index=-1))
            assert [entry.task_index for entry in every.logs] == [0, 1]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.api.ReadLogs(JS.ReadLogsRequest(job_id=job.job_id, task_index=5))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("task_index: ")
            await fake.close()
            await wait_for(lambda: not c.master._registry.get("east-1").connected, what="disconnect seen")
            resp = await c.api.ReadLogs(JS.ReadLogsRequest(job_id=job.job_id))
            assert resp.logs[0].chunk.error == "sub-domain east-1 holding task 0 is not connected"

    run(body())


async def _all_running(c: Cluster, job_id: str) -> bool:
    j = await c.job(job_id)
    return all(t.state == common_pb2.TASK_STATE_RUNNING for t in j.tasks)


def test_list_nodes_fans_out_and_reports_the_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(master_module, "NODES_TIMEOUT_S", 0.3)

    async def body() -> None:
        async with cluster() as c:
            await c.subdomain("east-1", nodes=2)
            await c.subdomain("west-1", "west", nodes=3)
            await c.subdomain("mute-1", "west", answer_lists=False)
            resp = await c.api.ListNodes(JS.ListNodesRequest())
            ids = sorted(n.inventory.node_id for n in resp.nodes)
            assert ids == ["east-1-n-0", "east-1-n-1", "west-1-n-0", "west-1-n-1", "west-1-n-2"]
            assert {n.subdomain_id for n in resp.nodes} == {"east-1", "west-1"}
            assert list(resp.unreachable) == ["mute-1"]
            one = await c.api.ListNodes(JS.ListNodesRequest(subdomain_id="west-1"))
            assert len(one.nodes) == 3 and not one.unreachable
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.api.ListNodes(JS.ListNodesRequest(subdomain_id="nowhere"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            domains = await c.api.ListDomains(JS.ListDomainsRequest())
            view = {r.name: [s.subdomain_id for s in r.subdomains] for r in domains.regions}
            assert view == {"east": ["east-1"], "west": ["mute-1", "west-1"]}
            assert all(s.connected for r in domains.regions for s in r.subdomains)
            assert domains.regions[1].subdomains[1].summary.nodes_ready == 3

    run(body())


def test_rejected_placement_is_placed_elsewhere() -> None:
    async def body() -> None:
        async with cluster() as c:
            full = await c.subdomain("east-1", behaviour="reject", nodes=4)
            await c.subdomain("west-1", "west", behaviour="run", nodes=1)
            job = await c.submit()
            j = await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)
            assert full.placed and full.placed[0].attempt == 0
            assert j.tasks[0].subdomain_id == "west-1" and j.tasks[0].attempt == 1
            assert j.tasks[0].exit_retries == j.tasks[0].lost_retries == 0
            assert c.master.stats().misdispatch_total == 1

    run(body())


def test_unconfirmed_placement_is_redone_after_the_timeout() -> None:
    async def body() -> None:
        async with cluster(place_timeout_s=0.3) as c:
            mute = await c.subdomain("east-1", behaviour="silent", nodes=4)
            job = await c.submit()
            await wait_for(lambda: mute.placed, what="first placement")
            await c.subdomain("west-1", "west", behaviour="run", nodes=1)

            async def moved() -> JS.Job | None:
                j = await c.job(job.job_id)
                return j if j.tasks[0].subdomain_id == "west-1" else None

            await wait_async(moved, what="placement redone on west-1")
            await wait_for(lambda: mute.stopped, what="stop of the stale placement")
            assert mute.stopped[0].attempt == 0

    run(body())


def test_a_subdomain_flooding_its_stream_is_cut_off_and_others_are_unaffected() -> None:
    async def body() -> None:
        async with cluster(subdomain_message_rate_per_s=5, subdomain_message_burst=5) as c:
            noisy = await c.subdomain("noisy-1")
            calm = await c.subdomain("calm-1", "west")
            report = subdomain_pb2.SubDomainMessage(
                summary=subdomain_pb2.SummaryReport(
                    incarnation=noisy.incarnation, seq=1, summary=noisy.summary
                )
            )
            for _ in range(20):
                if noisy.ended.is_set():
                    break
                # Writing after the server ended the stream fails on the client side; the status
                # arrives on the reading side.
                with contextlib.suppress(Exception):
                    await noisy.send(report)
                await asyncio.sleep(0.01)
            await asyncio.wait_for(noisy.ended.wait(), 5)
            assert noisy.error is not None and noisy.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "sub-domain noisy-1 sent more than 5 messages/s (burst 5)" in (noisy.error.details() or "")
            assert not calm.ended.is_set()
            job = await c.submit()
            assert job.job_id

    run(body())
