"""In-process tests over real gRPC on port 0: raw test agents below, a fake master above."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from subdomain_helpers import FakeMaster, TestAgent, async_test, await_for, fake_master, status_pb

import sub_domain._manager as manager_module
from domainos.api.v1 import common_pb2, subdomain_pb2
from domainos.clock import FakeClock
from domainos.model import TaskRef, TaskState
from sub_domain import SubDomainConfig, SubDomainManager

S = common_pb2


@pytest.fixture(autouse=True)
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "TICK_INTERVAL_S", 0.02)


@contextlib.asynccontextmanager
async def running(
    master: str = "", clock: FakeClock | None = None, **kw: Any
) -> AsyncIterator[SubDomainManager]:
    cfg = SubDomainConfig(
        id="sd-1",
        region="east",
        listen=kw.pop("listen", "127.0.0.1:0"),
        metrics_listen=kw.pop("metrics_listen", ""),
        master=master,
        full_sync_interval_s=0.5,
        summary_interval_s=0.1,
        insecure=kw.pop("insecure", "tls" not in kw),  # this tier runs plaintext; TLS: tests/security
        **kw,
    )
    mgr = SubDomainManager(cfg, clock=clock)
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.shutdown()


@contextlib.asynccontextmanager
async def agent(address: str, node_id: str, **kw: Any) -> AsyncIterator[TestAgent]:
    a = TestAgent(address, node_id, **kw)
    try:
        yield a
    finally:
        await a.close()


def place_cmd(
    job: str, *, cpus: int = 1000, gpus: int = 0, model: str = "", cmd_id: str = "p1"
) -> dict[str, Any]:
    return {
        "place_task": subdomain_pb2.PlaceTask(
            command_id=cmd_id,
            spec=S.TaskSpec(
                job_id=job,
                task_index=0,
                attempt=0,
                command=["echo", "hi"],
                resources=S.Resources(cpu_millis=cpus, memory_bytes=2**28, gpus=gpus, gpu_model=model),
            ),
        )
    }


async def connected(mgr: SubDomainManager) -> None:
    await await_for(lambda: mgr.connected_to_master, what="the sub-domain to connect to the master")


# -- agents ------------------------------------------------------------------------------------------


@async_test()
async def test_register_answers_registered_and_metrics_show_it() -> None:
    async with running(metrics_listen="127.0.0.1:0") as mgr, agent(mgr.listen_address, "n1") as a:
        reg = await a.connect()
        assert (reg.node_id, reg.subdomain_id, reg.region) == ("n1", "sd-1", "east")
        assert reg.report_interval_s == 1.0 and reg.full_sync_interval_s == 0.5
        await await_for(lambda: mgr.nodes_ready == 1)
        await a.report(usage=S.NodeUsage(cpu_percent=5.0))
        await await_for(lambda: mgr.reports_received == 1)
        url = f"http://{mgr.metrics_address}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        assert 'domainos_subdomain_nodes{state="ready"} 1.0' in text
        assert "domainos_subdomain_registrations_total 1.0" in text
        assert "domainos_subdomain_reports_received_total 1.0" in text
        assert "domainos_subdomain_master_connected 0.0" in text


@async_test()
async def test_cap_refuses_the_third_node_with_the_message() -> None:
    async with (
        running(max_nodes=2) as mgr,
        agent(mgr.listen_address, "n1") as a1,
        agent(mgr.listen_address, "n2") as a2,
    ):
        await a1.connect()
        await a2.connect()
        async with agent(mgr.listen_address, "n3") as a3:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await a3.connect()
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exc.value.details() == (
            "sub-domain sd-1 is full: max_nodes=2 nodes are registered; try another sub-domain"
        )
        async with agent(mgr.listen_address, "n1", incarnation="other") as dup:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await dup.connect()
        assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert mgr.refused["full"] == 1 and mgr.refused["duplicate"] == 1
        assert mgr.nodes_ready == 2


@async_test()
async def test_bad_inventory_is_invalid_argument() -> None:
    async with running() as mgr, agent(mgr.listen_address, "bad/node") as a:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await a.connect()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inventory.node_id" in (exc.value.details() or "")


@async_test()
async def test_dropped_stream_goes_suspect_then_dead_and_tasks_are_lost() -> None:
    clock = FakeClock()
    async with fake_master() as master, running(master.address, clock=clock) as mgr:
        await connected(mgr)
        a = TestAgent(mgr.listen_address, "n1")
        await a.connect()
        await master.send(**place_cmd("j-drop"))
        start = await a.next("start_task")
        await a.report(status_pb(start, S.TASK_STATE_RUNNING, pid=7))
        await master.task_state("j-drop", S.TASK_STATE_RUNNING)
        await a.close()
        await await_for(lambda: mgr.node_state("n1") == "suspect", what="suspect")
        clock.advance(2.0)
        await asyncio.sleep(0.5)  # several ticks run; still within dead_after_s (3 s)
        assert mgr.node_state("n1") == "suspect"
        clock.advance(1.5)
        await await_for(lambda: mgr.node_state("n1") == "dead", what="dead")
        lost = await master.task_state("j-drop", S.TASK_STATE_LOST)
        assert lost.message.startswith("node n1 died: its stream ended")
        assert lost.node_id == "n1" and lost.subdomain_id == "sd-1"


@async_test()
async def test_silent_node_becomes_dead_and_its_stream_is_closed() -> None:
    clock = FakeClock()
    async with running(clock=clock) as mgr, agent(mgr.listen_address, "quiet") as a:
        await a.connect()
        await await_for(lambda: mgr.nodes_ready == 1)
        clock.advance(15.5)
        await await_for(lambda: mgr.node_state("quiet") == "suspect", what="suspect")
        clock.advance(5.5)
        await await_for(lambda: mgr.node_state("quiet") == "dead", what="dead")
        await asyncio.wait_for(a.ended.wait(), 5)
        assert a.error is not None and a.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "declared dead" in (a.error.details() or "")


# -- master ------------------------------------------------------------------------------------------


@async_test()
async def test_hello_welcome_and_summary() -> None:
    async with fake_master() as master, running(master.address, max_nodes=50) as mgr:
        await connected(mgr)
        hello = master.hellos[0]
        assert (hello.subdomain_id, hello.region, hello.max_nodes) == ("sd-1", "east", 50)
        assert hello.address == mgr.listen_address and hello.incarnation == mgr.incarnation
        assert hello.summary.nodes_total == 0
        async with agent(mgr.listen_address, "g1", gpus=8) as a:
            await a.connect()
            rep = await master.next("summary", lambda s: s.summary.nodes_ready == 1)
            assert rep.incarnation == mgr.incarnation and rep.seq >= 1
            assert rep.summary.gpus_by_model["H100"] == 8
            assert [(sh.gpu_model, sh.free_gpus, sh.count) for sh in rep.summary.shapes] == [("H100", 8, 1)]


@async_test()
async def test_an_unchanged_summary_is_still_sent_every_refresh_period() -> None:
    # Nothing changes, yet the master hears from the sub-domain every SUMMARY_REFRESH_INTERVALS
    # summary intervals (it meters power charges by summaries; a quiet sub-domain must not
    # leave them counted twice).
    from sub_domain._upstream import SUMMARY_REFRESH_INTERVALS

    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "g1", gpus=8) as a:
            await a.connect()
            first = await master.next("summary", lambda s: s.summary.nodes_ready == 1)
            started = time.monotonic()
            again = await master.next("summary", lambda s: s.seq > first.seq, timeout=10)
            assert again.summary == first.summary and again.seq == first.seq + 1  # the same, again
            # Not every interval (0.1 s here): one per refresh period.
            assert time.monotonic() - started >= (SUMMARY_REFRESH_INTERVALS - 2) * 0.1


@async_test()
async def test_place_run_succeed_ack_round_trip() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "g1", gpus=4) as a:
            await a.connect()
            await await_for(lambda: mgr.nodes_ready == 1)
            await master.send(**place_cmd("j-ok", gpus=2, model="H100", cmd_id="place-1"))
            ack = await master.next("ack")
            assert (ack.command_id, ack.ok) == ("place-1", True)
            assigned = await master.task_state("j-ok", S.TASK_STATE_ASSIGNED)
            assert (assigned.node_id, list(assigned.gpu_indexes)) == ("g1", [0, 1])
            start = await a.next("start_task")
            assert start.spec.job_id == "j-ok" and list(start.gpu_indexes) == [0, 1]
            await a.send(ack=S.CommandAck(command_id=start.command_id, ok=True))
            await a.report(status_pb(start, S.TASK_STATE_RUNNING, pid=11))
            running_status = await master.task_state("j-ok", S.TASK_STATE_RUNNING)
            assert running_status.pid == 11
            await a.report(status_pb(start, S.TASK_STATE_SUCCEEDED, exit_code=0))
            done = await master.task_state("j-ok", S.TASK_STATE_SUCCEEDED)
            assert done.exit_code == 0
            acked = await a.next("ack_tasks")  # durable, so the agent may forget it
            assert [t.job_id for t in acked.tasks] == ["j-ok"]
            key = TaskRef("j-ok", 0, 0)
            store_key = "/domainos/subdomains/sd-1/tasks/j-ok/0"
            assert mgr._store is not None and await mgr._store.get(store_key) is not None
            await master.send(ack_tasks=subdomain_pb2.AckTaskStates(tasks=[key.to_proto()]))
            await await_for(lambda: mgr.task_status(key) is None, what="the table to forget the task")
            assert await mgr._store.get(store_key) is None


@async_test()
async def test_terminal_state_reaches_the_master_when_the_agent_drops_at_once() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        a = TestAgent(mgr.listen_address, "n1")
        await a.connect()
        await master.send(**place_cmd("j-fast"))
        start = await a.next("start_task")
        await a.report(status_pb(start, S.TASK_STATE_FAILED, exit_code=3))
        await a.close()
        failed = await master.task_state("j-fast", S.TASK_STATE_FAILED)
        assert failed.exit_code == 3 and failed.node_id == "n1"


@async_test()
async def test_rejected_when_nothing_fits() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "small", cpus=2) as a:
            await a.connect()
            await await_for(lambda: mgr.nodes_ready == 1)
            await master.send(**place_cmd("j-big", cpus=4000))
            rejected = await master.task_state("j-big", S.TASK_STATE_REJECTED)
            assert (
                rejected.message
                == "no ready node has cpus=4 memory=256Mi free; largest free: cpus=2 memory=32Gi"
            )
            assert mgr.tasks.rejections == 1 and len(mgr.tasks) == 0


@async_test()
async def test_malformed_place_is_acked_not_ok() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        await master.send(place_task=subdomain_pb2.PlaceTask(command_id="bad-1", spec=S.TaskSpec(job_id="")))
        ack = await master.next("ack")
        assert (ack.command_id, ack.ok) == ("bad-1", False)
        assert "spec.job_id" in ack.error
        assert mgr.connected_to_master  # one bad command does not end the stream


@async_test()
async def test_stop_forwarded_to_the_agent_and_unknown_stop_is_cancelled() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "n1") as a:
            await a.connect()
            await master.send(**place_cmd("j-stop"))
            start = await a.next("start_task")
            ref = S.TaskRef(job_id="j-stop", task_index=0, attempt=0)
            await master.send(
                stop_task=subdomain_pb2.StopTaskCommand(command_id="s1", task=ref, grace_s=2.0, reason="user")
            )
            stop = await a.next("stop_task")
            assert stop.task == ref and stop.grace_s == 2.0 and stop.reason == "user"
            await a.report(status_pb(start, S.TASK_STATE_CANCELLED, exit_code=143))
            await master.task_state("j-stop", S.TASK_STATE_CANCELLED)
            ghost = S.TaskRef(job_id="ghost", task_index=0, attempt=0)
            await master.send(stop_task=subdomain_pb2.StopTaskCommand(command_id="s2", task=ghost))
            cancelled = await master.task_state("ghost", S.TASK_STATE_CANCELLED)
            assert "unknown task" in cancelled.message


@async_test()
async def test_list_nodes_pages() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "a1") as a1, agent(mgr.listen_address, "b1", gpus=2) as b1:
            await a1.connect()
            await b1.connect()
            await master.send(list_nodes=subdomain_pb2.ListNodes(request_id="r1", page_size=1))
            page1 = await master.next("node_list")
            assert page1.request_id == "r1" and [n.inventory.node_id for n in page1.nodes] == ["a1"]
            assert page1.next_page_token
            view = page1.nodes[0]
            assert (view.state, view.region, view.subdomain_id) == ("ready", "east", "sd-1")
            assert view.inventory.simulated and view.incarnation == "inc-1"
            assert view.free.cpu_millis == 8000 and view.last_report_at > 0
            assert view.health.status == S.HEALTH_STATUS_HEALTHY
            await master.send(
                list_nodes=subdomain_pb2.ListNodes(
                    request_id="r2", page_size=1, page_token=page1.next_page_token
                )
            )
            page2 = await master.next("node_list")
            assert [n.inventory.node_id for n in page2.nodes] == ["b1"] and page2.next_page_token == ""


@async_test()
async def test_fetch_task_log_round_trip_and_errors() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "n1") as a:
            await a.connect()
            await master.send(**place_cmd("j-log"))
            await a.next("start_task")
            req = S.LogRequest(task=S.TaskRef(job_id="j-log"), stream="stdout", max_bytes=100)
            await master.send(
                fetch_log=subdomain_pb2.FetchTaskLog(request_id="master-r1", node_id="n1", request=req)
            )
            fetch = await a.next("fetch_log")
            assert fetch.request_id != "master-r1" and fetch.request.stream == "stdout"
            await a.send(
                log_reply=S.LogReply(
                    request_id=fetch.request_id, chunk=S.LogChunk(data=b"hello\n", size=6, eof=True)
                )
            )
            reply = await master.next("log_reply")
            assert reply.request_id == "master-r1" and reply.chunk.data == b"hello\n" and reply.chunk.eof
            # no node_id: found through the task table
            await master.send(fetch_log=subdomain_pb2.FetchTaskLog(request_id="master-r2", request=req))
            fetch = await a.next("fetch_log")
            await a.send(
                log_reply=S.LogReply(request_id=fetch.request_id, chunk=S.LogChunk(size=0, eof=True))
            )
            assert (await master.next("log_reply")).request_id == "master-r2"
        await master.send(
            fetch_log=subdomain_pb2.FetchTaskLog(request_id="master-r3", node_id="nowhere", request=req)
        )
        reply = await master.next("log_reply")
        assert reply.request_id == "master-r3"
        assert reply.chunk.error == "node nowhere is not connected to sub-domain sd-1"


@async_test()
async def test_fetch_log_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "LOG_TIMEOUT_S", 0.2)
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "n1") as a:
            await a.connect()
            await master.send(
                fetch_log=subdomain_pb2.FetchTaskLog(request_id="r", node_id="n1", request=S.LogRequest())
            )
            await a.next("fetch_log")  # and never answer
            reply = await master.next("log_reply")
            assert reply.request_id == "r" and "did not answer" in reply.chunk.error


@async_test(timeout=30)
async def test_restart_with_sqlite_reloads_tasks_and_sends_them_in_hello(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'sd.db'}"
    async with fake_master() as master:
        a = TestAgent("", "n1")
        async with running(master.address, store=store) as mgr:
            await connected(mgr)
            a.address = mgr.listen_address
            await a.connect()
            await master.send(**place_cmd("j-keep"))
            start = await a.next("start_task")
            await a.report(status_pb(start, S.TASK_STATE_RUNNING, pid=99))
            await master.task_state("j-keep", S.TASK_STATE_RUNNING)
            port = mgr.listen_address.rpartition(":")[2]
        await a.close()
        assert len(master.hellos) == 1 and list(master.hellos[0].tasks) == []
        # a new process on the same store (and port) knows what was placed where
        async with running(master.address, store=store, listen=f"127.0.0.1:{port}") as mgr2:
            await await_for(lambda: len(master.hellos) == 2, what="the second Hello")
            hello = master.hellos[1]
            assert [(t.job_id, t.node_id, t.state) for t in hello.tasks] == [
                ("j-keep", "n1", S.TASK_STATE_ASSIGNED)
            ]
            assert mgr2.node_state("n1") == "suspect" and hello.incarnation != master.hellos[0].incarnation
            # the agent comes back with its task: reconciled, not lost
            b = TestAgent(mgr2.listen_address, "n1")
            await b.connect(tasks=[status_pb(start, S.TASK_STATE_RUNNING, pid=99)])
            await await_for(lambda: mgr2.node_state("n1") == "ready")
            st = await master.task_state("j-keep", S.TASK_STATE_RUNNING)
            assert st.pid == 99
            entry = mgr2.tasks.get(TaskRef("j-keep", 0, 0))
            assert entry is not None and entry.status.state == TaskState.RUNNING
            await b.close()


@async_test()
async def test_reconnects_to_the_master_with_a_fresh_hello() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "n1") as a:
            await a.connect()
            await master.send(**place_cmd("j-re"))
            await a.next("start_task")
            assert master.server is not None
            await master.server.stop(grace=None)  # the master goes away...
            await await_for(lambda: not mgr.connected_to_master, what="the disconnect")
            # ...and a new one comes up on the same port
            port = int(master.address.rpartition(":")[2])
            master2 = FakeMaster()
            master2.server = grpc.aio.server()
            from domainos.api.v1 import subdomain_pb2_grpc

            subdomain_pb2_grpc.add_SubDomainGatewayServicer_to_server(master2, master2.server)
            master2.server.add_insecure_port(f"127.0.0.1:{port}")
            await master2.server.start()
            try:
                await await_for(lambda: master2.hellos, timeout=10, what="a Hello to the new master")
                assert [t.job_id for t in master2.hellos[0].tasks] == ["j-re"]
            finally:
                await master2.stop()


@async_test()
async def test_an_agent_flooding_its_stream_is_cut_off_with_resource_exhausted() -> None:
    async with running(agent_message_rate_per_s=5, agent_message_burst=5) as mgr:
        agent = TestAgent(mgr.listen_address, "n-flood")
        await agent.connect()
        calm = TestAgent(mgr.listen_address, "n-calm")
        await calm.connect()
        for _ in range(20):
            if agent.ended.is_set():
                break
            # A grpc.aio client writing after the server ended the stream fails locally; the
            # server's status arrives on the reading side (agent.error).
            with contextlib.suppress(Exception):
                await agent.report()
            await asyncio.sleep(0.01)
        await asyncio.wait_for(agent.ended.wait(), 5)
        assert agent.error is not None and agent.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "node n-flood sent more than 5 messages/s (burst 5)" in (agent.error.details() or "")
        # The other node is unaffected.
        await calm.report()
        await await_for(lambda: mgr.node_state("n-calm") == "ready", what="calm node still ready")
        assert not calm.ended.is_set()
        await agent.close()
        await calm.close()


@async_test()
async def test_a_node_reconnecting_in_a_storm_is_refused_for_a_while() -> None:
    async with running(register_rate_per_s=0.01, register_burst=2) as mgr:
        for _ in range(2):
            agent = TestAgent(mgr.listen_address, "n-storm")
            await agent.connect()
            await agent.close()
            await await_for(lambda: mgr.node_state("n-storm") != "ready", what="stream seen closed")
        third = TestAgent(mgr.listen_address, "n-storm")
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await third.connect()
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "node n-storm registers too often: at most 0.01/s (burst 2)" in (exc.value.details() or "")
        await third.close()
        # Another node is not affected by n-storm's limit.
        other = TestAgent(mgr.listen_address, "n-other")
        await other.connect()
        await other.close()
