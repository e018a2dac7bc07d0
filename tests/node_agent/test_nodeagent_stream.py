"""The agent over REAL gRPC against a fake sub-domain (grpc.aio server on 127.0.0.1:0)."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from nodeagent_helpers import (
    PY,
    FakeSubDomain,
    ack_cmd,
    fetch_log_cmd,
    run,
    serve,
    spec_proto,
    start_cmd,
    stop_cmd,
    until,
)

import node_agent._agent
from domainos.errors import FailedPrecondition, SubDomainFull
from domainos.model import TaskRef, TaskState
from domainos.topology import SimInventory
from node_agent import AgentConfig, NodeAgent
from node_agent._agent import backoff_delay

GIB = 2**30


class Sleeps:
    """Injected reconnect sleep: records the delays, waits only a moment."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.02)


def config(tmp_path: Path, *addresses: str, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = {
        "node_id": "node-a",
        "subdomains": list(addresses),
        "state_dir": str(tmp_path / "agent"),
        "metrics_listen": "",
        "simulated": True,
        "inventory": SimInventory(cpus=4, memory="16Gi", gpus=2, gpu_model="H100-SIM"),
        "report_interval_s": 0.1,
        "full_sync_interval_s": 5.0,
        "stop_grace_s": 1.0,
    }
    base.update(kw)
    base.setdefault("insecure", "tls" not in base)  # this tier runs plaintext; TLS: tests/security
    cfg = AgentConfig(**base)
    cfg.validate()
    return cfg


def test_registers_runs_a_task_acks_and_serves_logs(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeSubDomain("sd-east-1", region="east")
        server, port = await serve(fake)
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{port}", metrics_listen="127.0.0.1:0"), sleep=Sleeps())
        try:
            info = await agent.start()
            assert info["node_id"] == "node-a" and info["state_dir"] == str(tmp_path / "agent")
            assert info["metrics"].startswith("127.0.0.1:")
            await asyncio.wait_for(agent.registered.wait(), 10)
            assert agent.connected and agent.subdomain_id == "sd-east-1" and agent.region == "east"
            reg = fake.conn.register
            inv = reg.inventory
            assert reg.incarnation == agent.incarnation and len(reg.incarnation) == 16
            assert inv.node_id == "node-a" and inv.simulated and inv.cpu_cores == 4
            assert inv.labels["domainos.io/simulated"] == "true"
            assert [g.uuid for g in inv.gpus] == ["SIM-node-a-0", "SIM-node-a-1"]
            assert (inv.allocatable.cpu_millis, inv.allocatable.memory_bytes) == (4000, 16 * GIB)
            assert (inv.allocatable.gpus, inv.allocatable.gpu_model) == (2, "H100-SIM")
            assert reg.health.status == 1 and list(reg.tasks) == []

            ok = TaskRef("job-1", 0, 0)
            code = "import os; print('hello from', os.environ['DOMAINOS_SUBDOMAIN'], os.environ['CUDA_VISIBLE_DEVICES'])"
            fake.conn.send(start_cmd("c-1", spec_proto("job-1", command=(PY, "-c", code)), gpus=[1]))
            bad = TaskRef("job-1", 1, 0)
            fake.conn.send(
                start_cmd("c-2", spec_proto("job-1", 1, command=(PY, "-c", "raise SystemExit(3)")))
            )
            conn = fake.conn
            await until(lambda: conn.ack("c-1") and conn.ack("c-2"), what="command acks")
            assert conn.ack("c-1").ok and conn.ack("c-2").ok
            await until(lambda: TaskState.SUCCEEDED in conn.task_states(ok), what="task succeeded")
            await until(lambda: TaskState.FAILED in conn.task_states(bad), what="task failed")
            assert conn.task_states(ok) == [TaskState.RUNNING, TaskState.SUCCEEDED]
            done = conn.last_status(ok)
            assert done.exit_code == 0 and done.node_id == "node-a" and list(done.gpu_indexes) == [1]
            assert done.pid > 0 and done.finished_at >= done.started_at > 0
            failed = conn.last_status(bad)
            assert (failed.exit_code, failed.message) == (3, "exited with code 3")
            assert all(r.incarnation == agent.incarnation for r in conn.reports)
            seqs = [r.seq for r in conn.reports]
            assert seqs == list(range(1, len(seqs) + 1))

            conn.send(fetch_log_cmd("log-1", ok, offset=6))
            conn.send(fetch_log_cmd("log-2", TaskRef("job-404", 0, 0)))
            await until(lambda: conn.log_reply("log-1") and conn.log_reply("log-2"), what="log replies")
            chunk = conn.log_reply("log-1").chunk
            assert chunk.data == b"from sd-east-1 1\n" and chunk.offset == 6 and chunk.eof and not chunk.error
            assert "unknown task" in conn.log_reply("log-2").chunk.error

            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{info['metrics']}/metrics", timeout=5).read().decode()
            )
            assert "domainos_agent_connected 1.0" in text
            assert "domainos_agent_tasks_started_total 2.0" in text
            assert 'domainos_agent_tasks{state="succeeded"} 1.0' in text
            assert 'domainos_agent_tasks{state="failed"} 1.0' in text
            assert (
                "domainos_agent_reports_sent_total" in text and "domainos_agent_reconnects_total 0.0" in text
            )
        finally:
            await agent.shutdown()
            await agent.shutdown()  # idempotent
            await server.stop(None)

    run(main())


def test_real_node_registers_discovered_inventory_and_pins_tasks(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeSubDomain()
        server, port = await serve(fake)
        cfg = config(tmp_path, f"127.0.0.1:{port}", simulated=False, inventory=None, region="east")
        agent = NodeAgent(cfg, sleep=Sleeps())
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            inv = fake.conn.register.inventory
            assert not inv.simulated and "domainos.io/simulated" not in inv.labels
            assert inv.cpu_cores == psutil.cpu_count() and inv.memory_bytes == psutil.virtual_memory().total
            assert inv.labels["domainos.io/region"] == "east"
            ref = TaskRef("job-r", 0, 0)
            fake.conn.send(start_cmd("c-1", spec_proto("job-r", command=("sleep", "30"), cpu_millis=1000)))
            conn = fake.conn
            await until(lambda: TaskState.RUNNING in conn.task_states(ref), what="running")
            st = conn.last_status(ref)
            assert len(st.cpu_set) == 1
            assert psutil.Process(st.pid).cpu_affinity() == list(st.cpu_set)
        finally:
            await agent.shutdown()
            await server.stop(None)
        assert conn.task_states(ref)[-1] == TaskState.CANCELLED

    run(main())


def test_idempotent_start_invalid_start_and_stops(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeSubDomain()
        server, port = await serve(fake)
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{port}"), sleep=Sleeps())
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            conn = fake.conn
            long = TaskRef("job-2", 0, 0)
            sleeper = spec_proto("job-2", command=("sleep", "30"))
            conn.send(start_cmd("s-1", sleeper))
            conn.send(start_cmd("s-2", sleeper))  # the same task again: no second process
            conn.send(start_cmd("s-3", spec_proto("job-2", 1), gpus=[7]))  # this node has GPUs 0 and 1
            conn.send(start_cmd("s-4", spec_proto("../etc", 0)))
            await until(lambda: all(conn.ack(c) for c in ("s-1", "s-2", "s-3", "s-4")), what="acks")
            assert conn.ack("s-1").ok and conn.ack("s-2").ok
            assert not conn.ack("s-3").ok and "GPU 7 is not on node node-a" in conn.ack("s-3").error
            assert not conn.ack("s-4").ok and "job id" in conn.ack("s-4").error
            assert agent.runner.started_total == 1
            rejected = TaskRef("job-2", 1, 0)
            await until(
                lambda: conn.task_states(rejected) == [TaskState.FAILED], what="rejected task reported"
            )
            await until(lambda: conn.task_states(long).count(TaskState.RUNNING) >= 2, what="re-reported")
            pid = conn.last_status(long).pid

            conn.send(stop_cmd("k-1", long, grace_s=2, reason="job cancelled"))
            unknown = TaskRef("job-2", 5, 0)
            conn.send(stop_cmd("k-2", unknown))
            await until(lambda: conn.ack("k-1") and conn.ack("k-2"), what="stop acks")
            await until(lambda: TaskState.CANCELLED in conn.task_states(long), what="cancelled")
            st = conn.last_status(long)
            assert (st.exit_code, st.message) == (143, "job cancelled (killed by SIGTERM)")
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            await until(
                lambda: TaskState.CANCELLED in conn.task_states(unknown), what="unknown stop reported"
            )
            agent.runner.validate()
        finally:
            await agent.shutdown()
            await server.stop(None)

    run(main())


def test_unacked_terminal_tasks_resent_until_acked(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeSubDomain(full_sync_interval_s=0.3)
        server, port = await serve(fake)
        sleeps = Sleeps()
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{port}"), sleep=sleeps)
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            ref = TaskRef("job-3", 0, 0)
            fake.conn.send(start_cmd("c-1", spec_proto("job-3", command=("true",))))
            first = fake.conn
            await until(lambda: TaskState.SUCCEEDED in first.task_states(ref), what="succeeded")
            # The sub-domain drops the stream before acknowledging: the next Register carries the task.
            first.close()
            await until(lambda: len(fake.conns) == 2, what="reconnect")
            second = fake.conn
            assert second.register.incarnation == agent.incarnation
            assert [(t.job_id, t.state) for t in second.register.tasks] == [("job-3", TaskState.SUCCEEDED)]
            assert sleeps.delays and sleeps.delays[0] <= 0.2
            # ... and every full report, until the ack.
            await until(lambda: any(r.full for r in second.reports), what="full report")
            assert [t.job_id for t in next(r for r in second.reports if r.full).tasks] == ["job-3"]
            second.send(ack_cmd(ref))
            await until(lambda: agent.runner.get(ref) is None, what="forgotten")
            n = len(second.reports)
            await until(lambda: any(r.full for r in second.reports[n:]), what="full report after ack")
            assert all(not r.tasks for r in second.reports[n:])
            second.close()
            await until(
                lambda: len(fake.conns) >= 3 and fake.conn.register is not None, what="second reconnect"
            )
            assert list(fake.conn.register.tasks) == []
            assert agent.reconnects_total >= 2
        finally:
            await agent.shutdown()
            await server.stop(None)

    run(main())


def test_full_reports_are_periodic(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeSubDomain(full_sync_interval_s=0.2)
        server, port = await serve(fake)
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{port}", full_sync_interval_s=30.0), sleep=Sleeps())
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            ref = TaskRef("job-4", 0, 0)
            fake.conn.send(start_cmd("c-1", spec_proto("job-4", command=("sleep", "30"))))
            conn = fake.conn
            await until(lambda: sum(r.full for r in conn.reports) >= 3, what="three full reports")
            fulls = [r for r in conn.reports if r.full]
            assert all(r.HasField("usage") and r.HasField("health") for r in fulls)
            assert [t.job_id for t in fulls[-1].tasks] == [ref.job_id]
            assert fulls[-1].tasks[0].state == TaskState.RUNNING
        finally:
            await agent.shutdown()
            await server.stop(None)
        # Shutdown stopped the task and the last report said so before the stream closed.
        assert conn.task_states(ref)[-1] == TaskState.CANCELLED
        assert conn.last_status(ref).message.startswith("agent shutting down")
        assert conn.ended

    run(main())


def test_a_full_sub_domain_moves_the_node_to_the_next_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="node_agent._agent")
    message = "sub-domain full-1 is full: max_nodes=1 nodes are registered; try another sub-domain"

    async def main() -> None:
        full = FakeSubDomain("full-1", refuse=SubDomainFull(message))
        free = FakeSubDomain("free-2")
        s1, p1 = await serve(full)
        s2, p2 = await serve(free)
        sleeps = Sleeps()
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"), sleep=sleeps)
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            assert agent.subdomain_id == "free-2" and agent.address == f"127.0.0.1:{p2}"
            assert full.refused == 1 and len(free.conns) == 1
            assert sleeps.delays == []  # moved on at once
        finally:
            await agent.shutdown()
            await s1.stop(None)
            await s2.stop(None)

    run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(message in w for w in warnings), warnings


def test_other_resource_exhausted_is_retried_on_the_same_address(tmp_path: Path) -> None:
    """A rate limit or gRPC core's "Too many pending requests" (a reconnect storm) is not "full":
    the node keeps its home sub-domain for SAME_ADDRESS_TRIES streams before moving on."""

    async def main() -> None:
        busy = FakeSubDomain(
            "busy-1", refuse=(grpc.StatusCode.RESOURCE_EXHAUSTED, "Too many pending requests")
        )
        free = FakeSubDomain("free-2")
        s1, p1 = await serve(busy)
        s2, p2 = await serve(free)
        sleeps = Sleeps()
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"), sleep=sleeps)
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            tries = node_agent._agent.SAME_ADDRESS_TRIES
            assert busy.refused == tries and agent.subdomain_id == "free-2"
            assert len(sleeps.delays) == tries  # backed off before every retry
        finally:
            await agent.shutdown()
            await s1.stop(None)
            await s2.stop(None)

    run(main())


def test_all_full_backs_off_between_rounds(tmp_path: Path) -> None:
    async def main() -> None:
        full = FakeSubDomain("full-1", refuse=SubDomainFull("full"))
        s1, p1 = await serve(full)
        sleeps = Sleeps()
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{p1}"), sleep=sleeps)
        try:
            await agent.start()
            await until(lambda: len(sleeps.delays) >= 4, what="backoff")
            d = sleeps.delays
            assert 0.1 <= d[0] <= 0.2 and 0.2 <= d[1] <= 0.4 and 0.4 <= d[2] <= 0.8
            assert not agent.connected
        finally:
            await agent.shutdown()
            await s1.stop(None)

    run(main())


def test_gives_up_on_a_sub_domain_that_never_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("node_agent._agent.REGISTER_TIMEOUT_S", 0.2)

    async def main() -> None:
        mute = FakeSubDomain("mute", silent=True)
        good = FakeSubDomain("good")
        s1, p1 = await serve(mute)
        s2, p2 = await serve(good)
        sleeps = Sleeps()
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"), sleep=sleeps)
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            # It tries its first sub-domain SAME_ADDRESS_TRIES times (a transient failure must not
            # move a node off its home sub-domain), then moves on.
            tries = node_agent._agent.SAME_ADDRESS_TRIES
            assert mute.accepted == tries and agent.subdomain_id == "good" and len(sleeps.delays) == tries
        finally:
            await agent.shutdown()
            await s1.stop(None)
            await s2.stop(None)

    run(main())


def test_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeSubDomain()
        server, port = await serve(fake)
        sleeps = Sleeps()
        agent = NodeAgent(config(tmp_path, f"127.0.0.1:{port}"), sleep=sleeps)
        try:
            await agent.start()
            await asyncio.wait_for(agent.registered.wait(), 10)
            await server.stop(None)
            await until(lambda: not agent.connected, what="disconnect noticed")
            await until(lambda: len(sleeps.delays) >= 2, what="a failed reconnect")
            fake2 = FakeSubDomain("sd-test")
            server, _ = await serve(fake2, port)
            await until(lambda: agent.connected and fake2.conns, what="re-registered", timeout=15)
            assert fake2.conn.register.incarnation == agent.incarnation
            assert agent.registrations_total == 2 and agent.reconnects_total >= 2
        finally:
            await agent.shutdown()
            await server.stop(None)

    run(main())


def test_a_state_dir_serves_one_agent_at_a_time(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = config(tmp_path, "127.0.0.1:1")
        first = NodeAgent(cfg, sleep=Sleeps())
        await first.start()
        try:
            second = NodeAgent(cfg, sleep=Sleeps())
            with pytest.raises(FailedPrecondition, match="in use by another node agent"):
                await second.start()
            await second.shutdown()
        finally:
            await first.shutdown()
        third = NodeAgent(cfg, sleep=Sleeps())
        await third.start()
        await third.shutdown()

    run(main())


def test_backoff_schedule() -> None:
    assert [backoff_delay(n, 1.0) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff_delay(0, 0.0) == 0.1 and backoff_delay(30, 0.5) == 3.75
