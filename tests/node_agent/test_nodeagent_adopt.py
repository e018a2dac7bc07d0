"""Agent restarts with real processes: a restarted runner (and a restarted ``python -m node_agent``
after SIGKILL) re-adopts the task processes still running -- same attempt, same pid, real exit code,
stoppable, logs, resources -- and never adopts (or kills) a process that only shares a pid.

A crash is simulated at the runner level by ending the event loop that ran the runner without
stopping anything (what remains of the agent is garbage), and at the process level by SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from nodeagent_helpers import (
    PY,
    FakeSubDomain,
    fetch_log_cmd,
    run,
    serve,
    spec,
    spec_proto,
    start_cmd,
    stop_cmd,
    until,
    wait_for,
)

from domainos.errors import ResourceExhausted
from domainos.model import TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.resources import Resources
from node_agent._runner import EXIT_FILE, LOST_ON_RESTART, LOST_UNSUPERVISED, TaskRunner

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30
#: Prints "up", then waits; SIGUSR1 makes it print "bye" and exit 7.
EXITS_7_ON_USR1 = (
    "import signal, sys, time\n"
    "def bye(*_):\n"
    "    print('bye', flush=True)\n"
    "    sys.exit(7)\n"
    "signal.signal(signal.SIGUSR1, bye)\n"
    "print('up', flush=True)\n"
    "while True:\n"
    "    time.sleep(60)\n"
)
#: A process group of two (the shell and its sleep) that ignores SIGTERM.
STUBBORN = "trap '' TERM; sleep 60 & echo ready; wait"


def make_runner(tmp_path: Path, changes: list[TaskStatus] | None = None, **kw: Any) -> TaskRunner:
    kw.setdefault("node_id", "n-test")
    return TaskRunner(
        tmp_path / "state",
        cores=sorted(os.sched_getaffinity(0)),
        on_change=changes.append if changes is not None else None,
        gpus={0: 40 * GIB, 1: 40 * GIB},
        **kw,
    )


def status_file(runner: TaskRunner, ref: TaskRef) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((runner.task_dir(ref) / "status.json").read_text())
    return data


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def start_then_crash(tmp_path: Path, *specs: tuple[TaskSpec, tuple[int, ...]]) -> list[TaskStatus]:
    """Start tasks in a runner on an event loop of its own, then end that loop without stopping
    them (the agent process died): their statuses as the first runner saw them."""

    async def first() -> list[TaskStatus]:
        runner = make_runner(tmp_path)
        out = []
        for s, gpus in specs:
            st = (await runner.start(s, gpus)).status
            assert st.state is TaskState.RUNNING, st
            out.append(st)
        return out

    statuses = run(first())
    for st in statuses:
        assert running(st.pid), f"task {st.ref} did not outlive its agent"
    return statuses


def test_a_restarted_runner_readopts_its_running_task_and_reports_its_exit_code(tmp_path: Path) -> None:
    s = spec("job-a", 0, 3, (PY, "-c", EXITS_7_ON_USR1))
    share = TaskSpec(
        ref=TaskRef("job-a", 1, 0),
        command=("sleep", "60"),
        resources=Resources(100, 64 * 2**20, 0, "", gpu_share=30),
        job_name="job",
        replicas=1,
    )
    before, _ = start_then_crash(tmp_path, (s, (1,)), (share, (0,)))
    wait_for(lambda: b"up" in (tmp_path / "state/tasks/job-a/0.3/stdout").read_bytes(), what="task up")
    shim_pid = status_file(make_runner(tmp_path), s.ref)["shim_pid"]
    assert shim_pid > 0 and shim_pid != before.pid and running(shim_pid)
    changes: list[TaskStatus] = []

    async def second() -> None:
        runner = make_runner(tmp_path, changes)
        recovered = {st.ref: st for st in runner.recover()}
        st = recovered[s.ref]
        # The same attempt, the same process, still RUNNING: nothing was started or killed.
        assert (st.state, st.ref.attempt, st.pid, st.started_at) == (
            TaskState.RUNNING,
            3,
            before.pid,
            before.started_at,
        )
        assert (st.cpu_set, st.gpu_indexes) == (before.cpu_set, (1,))
        assert recovered[share.ref].state is TaskState.RUNNING
        assert runner.adopted_total == 2 and runner.started_total == 0
        runner.validate()
        # Its resources are held as before: GPU 1 whole, 30% of GPU 0.
        assert runner.gpus_held_whole() == {1: s.ref}
        assert runner.gpu_shares() == {0: (30, 12 * GIB)}
        with pytest.raises(ResourceExhausted, match="GPU 1"):
            await runner.start(spec("job-b", 0, 0, ("true",)), [1])
        # Its log is still served, and grows.
        assert runner.read_log(s.ref).data == b"up\n"
        os.kill(before.pid, signal.SIGUSR1)
        final = await runner.wait(s.ref)
        assert final is not None
        assert (final.state, final.exit_code, final.message) == (TaskState.FAILED, 7, "exited with code 7")
        assert final.pid == before.pid and final.finished_at >= final.started_at
        assert runner.read_log(s.ref).data == b"up\nbye\n"
        assert status_file(runner, s.ref)["state"] == "FAILED"
        assert runner.gpus_held_whole() == {}  # released on the end, as for a task it started
        runner.validate()
        assert await until(lambda: not running(shim_pid), what="the shim gone")
        await runner.shutdown(stop_tasks=True, grace_s=1)
        stopped = runner.get(share.ref)
        assert stopped is not None and stopped.state is TaskState.CANCELLED
        runner.validate()

    run(second())
    assert [(c.ref, c.state) for c in changes] == [
        (s.ref, TaskState.FAILED),
        (share.ref, TaskState.CANCELLED),
    ]


def test_a_task_that_ended_while_no_agent_ran_gets_its_exit_code_or_is_lost(tmp_path: Path) -> None:
    ended = spec("job-c", 0, 0, (PY, "-c", EXITS_7_ON_USR1))
    orphaned = spec("job-c", 1, 0, ("sleep", "60"))
    a, b = start_then_crash(tmp_path, (ended, ()), (orphaned, ()))
    wait_for(lambda: b"up" in (tmp_path / "state/tasks/job-c/0.0/stdout").read_bytes(), what="task up")
    os.kill(a.pid, signal.SIGUSR1)  # ends while no agent runs: its shim records the exit code
    wait_for(lambda: (tmp_path / "state/tasks/job-c/0.0" / EXIT_FILE).exists(), what="exit.json")
    # The other's shim is killed outright: nobody can know how its task ends.
    shim_b = status_file(make_runner(tmp_path), orphaned.ref)["shim_pid"]
    os.kill(shim_b, signal.SIGKILL)
    wait_for(lambda: not running(shim_b), what="shim killed")
    assert running(b.pid)
    changes: list[TaskStatus] = []

    async def second() -> None:
        runner = make_runner(tmp_path, changes)
        recovered = {st.ref: st for st in runner.recover()}
        st = recovered[ended.ref]
        assert (st.state, st.exit_code, st.message, st.pid) == (
            TaskState.FAILED,
            7,
            "exited with code 7",
            a.pid,
        )
        assert a.started_at <= st.finished_at <= time.time()
        lost = recovered[orphaned.ref]
        assert lost.state is TaskState.LOST and LOST_UNSUPERVISED in lost.message, lost.message
        assert "the task was killed" in lost.message  # an unsupervised task is not left running
        assert await until(lambda: not running(b.pid), what="the unsupervised task killed")
        assert runner.adopted_total == 0 and runner.gpus_held_whole() == {}
        runner.validate()

    run(second())
    assert changes == []  # recovered states travel in the Register, not as transitions


def test_a_reused_pid_is_neither_adopted_nor_killed(tmp_path: Path) -> None:
    s = spec("job-d", 0, 0, ("sleep", "60"))
    (st,) = start_then_crash(tmp_path, (s, ()))
    record = status_file(make_runner(tmp_path), s.ref)
    # The shim and its task die with the machine; "after the reboot" other processes have their pids.
    os.kill(record["shim_pid"], signal.SIGKILL)
    os.killpg(st.pid, signal.SIGKILL)
    wait_for(lambda: not running(st.pid) and not running(record["shim_pid"]), what="old processes gone")
    time.sleep(0.05)  # a later process: another start time (the clock ticks every 10 ms)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        path = make_runner(tmp_path).task_dir(s.ref) / "status.json"
        record.update(pid=stranger.pid, shim_pid=stranger.pid)  # the create times stay the old ones
        path.write_text(json.dumps(record))

        async def second() -> None:
            runner = make_runner(tmp_path)
            (lost,) = runner.recover()
            assert lost.state is TaskState.LOST and runner.adopted_total == 0
            runner.validate()

        run(second())
        time.sleep(0.2)
        assert stranger.poll() is None and running(stranger.pid)  # not signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_task_on_an_adopted_task_stops_its_process_group(tmp_path: Path) -> None:
    stubborn = spec("job-e", 0, 0, ("/bin/sh", "-c", STUBBORN))
    polite = spec("job-e", 1, 0, ("sleep", "60"))
    a, b = start_then_crash(tmp_path, (stubborn, ()), (polite, ()))
    wait_for(lambda: len(group_members(a.pid)) == 2, what="the stubborn group (shell and sleep)")

    async def second() -> None:
        runner = make_runner(tmp_path)
        assert {st.state for st in runner.recover()} == {TaskState.RUNNING}
        runner.stop(stubborn.ref, grace_s=0.3, reason="cancelled by user")
        runner.stop(polite.ref, grace_s=5, reason="cancelled by user")
        x, y = await runner.wait(stubborn.ref), await runner.wait(polite.ref)
        assert x is not None and y is not None
        assert (x.state, x.exit_code, x.message) == (
            TaskState.CANCELLED,
            137,
            "cancelled by user (killed by SIGKILL)",
        )
        assert (y.state, y.exit_code, y.message) == (
            TaskState.CANCELLED,
            143,
            "cancelled by user (killed by SIGTERM)",
        )
        assert await until(lambda: not group_members(a.pid), what="the stubborn group gone")
        assert not running(b.pid)
        runner.validate()

    run(second())


def test_a_stop_begun_before_the_crash_is_finished_after_it(tmp_path: Path) -> None:
    stubborn = spec("job-f", 0, 0, ("/bin/sh", "-c", STUBBORN))

    async def first() -> TaskStatus:
        runner = make_runner(tmp_path)
        st = (await runner.start(stubborn)).status
        await until(lambda: b"ready" in runner.read_log(stubborn.ref).data, what="trap installed")
        runner.stop(stubborn.ref, grace_s=0.5, reason="job cancelled")
        return st  # the agent dies inside the grace: SIGTERM sent (and ignored), no SIGKILL yet

    st = run(first())
    assert running(st.pid)

    async def second() -> None:
        runner = make_runner(tmp_path)
        runner.recover()
        final = await runner.wait(stubborn.ref)
        assert final is not None
        assert (final.state, final.exit_code) == (TaskState.CANCELLED, 137), final
        assert final.message == "job cancelled (killed by SIGKILL)"
        assert await until(lambda: not group_members(st.pid), what="group gone")

    run(second())


def test_records_of_another_node_id_data_dir_or_boot_are_not_adopted(tmp_path: Path) -> None:
    s = spec("job-g", 0, 0, ("sleep", "60"))
    (st,) = start_then_crash(tmp_path, (s, ()))

    async def other_node() -> None:
        runner = make_runner(tmp_path, node_id="n-other")
        (lost,) = runner.recover()
        assert lost.state is TaskState.LOST and lost.message.startswith(LOST_ON_RESTART)
        assert "'n-test'" in lost.message and runner.adopted_total == 0
        assert await until(lambda: not running(st.pid), what="the task killed")
        runner.validate()

    run(other_node())

    t = spec("job-g", 1, 0, ("sleep", "60"))
    (st2,) = start_then_crash(tmp_path, (t, ()))

    async def other_data_dir() -> None:
        runner = make_runner(tmp_path, data_dir=tmp_path / "elsewhere")
        recovered = {x.ref: x for x in runner.recover()}
        lost = recovered[t.ref]
        assert lost.state is TaskState.LOST and "data directory" in lost.message, lost.message
        assert await until(lambda: not running(st2.pid), what="the task killed")
        runner.validate()

    run(other_data_dir())

    u = spec("job-g", 2, 0, ("sleep", "60"))
    (st3,) = start_then_crash(tmp_path, (u, ()))
    record = status_file(make_runner(tmp_path), u.ref)
    record["boot_id"] = "another-boot"
    (make_runner(tmp_path).task_dir(u.ref) / "status.json").write_text(json.dumps(record))

    async def other_boot() -> None:
        runner = make_runner(tmp_path)
        recovered = {x.ref: x for x in runner.recover()}
        lost = recovered[u.ref]
        assert lost.state is TaskState.LOST and "boot" in lost.message, lost.message
        runner.validate()

    try:
        run(other_boot())
        # Pids of another boot name other processes: nothing is signalled.
        time.sleep(0.2)
        assert running(st3.pid) and running(record["shim_pid"])
    finally:
        os.kill(record["shim_pid"], signal.SIGKILL)
        os.killpg(st3.pid, signal.SIGKILL)


def test_graceful_shutdown_without_stopping_then_restart(tmp_path: Path) -> None:
    """``stop_tasks_on_shutdown: false``: the tasks keep running and the next agent re-adopts them."""
    s = spec("job-h", 0, 0, ("sleep", "60"))

    async def first() -> TaskStatus:
        runner = make_runner(tmp_path)
        st = (await runner.start(s)).status
        await runner.shutdown(stop_tasks=False, grace_s=0)
        return st

    st = run(first())
    assert running(st.pid)

    async def second() -> None:
        runner = make_runner(tmp_path)
        (again,) = runner.recover()
        assert (again.state, again.pid) == (TaskState.RUNNING, st.pid)
        await runner.shutdown(stop_tasks=True, grace_s=1)
        final = runner.get(s.ref)
        assert final is not None and (final.state, final.exit_code) == (TaskState.CANCELLED, 143)
        assert not running(st.pid)

    run(second())


# ----------------------------------------------------------------------------- a real agent process


def _agent_argv(port: int, state: Path, ready: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "node_agent",
        "--node-id",
        "adopt-1",
        "--subdomain",
        f"127.0.0.1:{port}",
        "--simulated",
        "--state-dir",
        str(state),
        "--metrics-listen",
        "",
        "--log-format",
        "text",
        "--ready-file",
        str(ready),
        "--set",
        "stop_grace_s=2",
        "--insecure",
    ]


def test_a_sigkilled_agent_process_readopts_its_tasks_when_it_comes_back(tmp_path: Path) -> None:
    """``python -m node_agent`` killed with SIGKILL and started again on its state directory: the
    new process registers the tasks RUNNING (same attempt and pid), serves their logs, stops one,
    and reports the other's real exit code."""

    async def main_() -> None:
        fake = FakeSubDomain("sd-adopt")
        server, port = await serve(fake)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs: list[asyncio.subprocess.Process] = []

        async def agent(n: int) -> asyncio.subprocess.Process:
            ready = tmp_path / f"ready-{n}.json"
            log = open(tmp_path / f"agent-{n}.log", "wb")  # noqa: SIM115 - closed with the test
            proc = await asyncio.create_subprocess_exec(
                *_agent_argv(port, tmp_path / "state", ready), cwd=str(REPO), env=env, stdout=log, stderr=log
            )
            log.close()
            procs.append(proc)
            await until(ready.exists, timeout=20, what=f"agent {n} ready")
            await until(lambda: len(fake.conns) == n, timeout=20, what=f"agent {n} registered")
            return proc

        exits = TaskRef("job-x", 0, 2)
        stops = TaskRef("job-x", 1, 0)
        try:
            first = await agent(1)
            conn = fake.conn
            conn.send(start_cmd("c-1", spec_proto("job-x", 0, 2, command=(PY, "-c", EXITS_7_ON_USR1))))
            conn.send(start_cmd("c-2", spec_proto("job-x", 1, 0, command=("/bin/sh", "-c", STUBBORN))))
            await until(
                lambda: (
                    TaskState.RUNNING in conn.task_states(exits)
                    and TaskState.RUNNING in conn.task_states(stops)
                ),
                what="both tasks running",
            )
            pid, stop_pid = conn.last_status(exits).pid, conn.last_status(stops).pid
            attempt_started = conn.last_status(exits).started_at
            first.send_signal(signal.SIGKILL)
            await first.wait()
            assert running(pid) and running(stop_pid)

            await agent(2)
            conn = fake.conn
            registered = {(t.job_id, t.task_index, t.attempt): t for t in conn.register.tasks}
            mine = registered[("job-x", 0, 2)]
            assert (TaskState(mine.state), mine.pid, mine.started_at) == (
                TaskState.RUNNING,
                pid,
                attempt_started,
            )
            assert TaskState(registered[("job-x", 1, 0)].state) is TaskState.RUNNING

            conn.send(fetch_log_cmd("log-1", exits))
            await until(lambda: conn.log_reply("log-1"), what="log reply")
            assert conn.log_reply("log-1").chunk.data == b"up\n"

            conn.send(stop_cmd("s-1", stops, grace_s=0.3, reason="stopped by the test"))
            await until(lambda: TaskState.CANCELLED in conn.task_states(stops), what="stop")
            assert conn.last_status(stops).exit_code == 137
            assert await until(lambda: not group_members(stop_pid), what="stopped group gone")

            os.kill(pid, signal.SIGUSR1)
            await until(lambda: TaskState.FAILED in conn.task_states(exits), what="exit reported")
            done = conn.last_status(exits)
            assert (done.exit_code, done.message, done.pid, done.attempt) == (7, "exited with code 7", pid, 2)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 20)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
            await server.stop(None)
        assert procs[-1].returncode == 0, (tmp_path / "agent-2.log").read_text()[-3000:]

    run(main_(), timeout=90)
