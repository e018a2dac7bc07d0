"""The task runner against real processes: exit codes, environment, stop, affinity, logs, recovery."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import psutil
import pytest
from nodeagent_helpers import PY, run, spec, until

from domainos.errors import ResourceExhausted
from domainos.model import TaskRef, TaskState, TaskStatus
from node_agent._runner import LOST_ON_RESTART, TaskRunner, base_environment


def make_runner(tmp_path: Path, changes: list[TaskStatus] | None = None, **kw: object) -> TaskRunner:
    cores = sorted(os.sched_getaffinity(0))
    return TaskRunner(
        tmp_path / "state",
        node_id="n-test",
        cores=cores,
        on_change=changes.append if changes is not None else None,
        **kw,  # type: ignore[arg-type]
    )


def status_file(runner: TaskRunner, ref: TaskRef) -> dict[str, object]:
    data: dict[str, object] = json.loads((runner.task_dir(ref) / "status.json").read_text())
    return data


def group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def test_success_captures_stdout_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NA_AGENT_SECRET", "must-not-leak")
    changes: list[TaskStatus] = []

    async def main() -> None:
        runner = make_runner(tmp_path, changes, base_env=base_environment())
        runner.subdomain_id = "sd-7"
        code = "import os, json; print(json.dumps(dict(os.environ)))"
        s = spec("job-a", 2, 1, (PY, "-c", code), env={"GREETING": "hi", "DOMAINOS_NODE_ID": "spoofed"})
        result = await runner.start(s, [0, 3])
        assert result.created and result.status.state is TaskState.RUNNING and result.status.pid > 0
        runner.validate()
        final = await runner.wait(s.ref)
        assert final is not None
        assert final.state is TaskState.SUCCEEDED and final.exit_code == 0
        assert final.finished_at >= final.started_at > 0
        runner.validate()
        env = json.loads((runner.task_dir(s.ref) / "stdout").read_text())
        assert env["CUDA_VISIBLE_DEVICES"] == "0,3" and env["NVIDIA_VISIBLE_DEVICES"] == "0,3"
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert env["DOMAINOS_JOB_ID"] == "job-a" and env["DOMAINOS_JOB_NAME"] == "job"
        assert env["DOMAINOS_TASK_INDEX"] == "2" and env["DOMAINOS_TASK_ATTEMPT"] == "1"
        assert env["DOMAINOS_REPLICAS"] == "1" and env["DOMAINOS_MASTER"] == "127.0.0.1:7000"
        assert env["DOMAINOS_NODE_ID"] == "n-test"  # the job cannot override DomainOS variables
        assert env["DOMAINOS_SUBDOMAIN"] == "sd-7"
        assert env["GREETING"] == "hi"
        assert "NA_AGENT_SECRET" not in env
        assert env["PATH"].startswith(os.environ["PATH"].split(os.pathsep)[0])
        assert status_file(runner, s.ref)["state"] == "SUCCEEDED"

    run(main())
    assert [c.state for c in changes] == [TaskState.RUNNING, TaskState.SUCCEEDED]


def test_nonzero_exit_and_signal_death(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        three = spec("job-b", 0, 0, (PY, "-c", "import sys; sys.exit(3)"))
        killed = spec("job-b", 1, 0, ("/bin/sh", "-c", "kill -9 $$"))
        await runner.start(three)
        await runner.start(killed)
        s3 = await runner.wait(three.ref)
        sk = await runner.wait(killed.ref)
        assert s3 is not None and (s3.state, s3.exit_code, s3.message) == (
            TaskState.FAILED,
            3,
            "exited with code 3",
        )
        assert sk is not None and (sk.state, sk.exit_code, sk.message) == (
            TaskState.FAILED,
            137,
            "killed by SIGKILL",
        )
        runner.validate()

    run(main())


def test_command_not_found_and_permission_denied(tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)

    async def main() -> None:
        runner = make_runner(tmp_path)
        missing = spec("job-c", 0, 0, ("definitely-not-a-program-xyz", "--flag"))
        result = await runner.start(missing)
        st = result.status
        assert (st.state, st.exit_code) == (TaskState.FAILED, 127)
        assert "definitely-not-a-program-xyz" in st.message and "not found" in st.message
        stderr = runner.read_log(missing.ref, "stderr")
        assert b"command not found: definitely-not-a-program-xyz" in stderr.data
        denied = spec("job-c", 1, 0, (str(script),))
        st2 = (await runner.start(denied)).status
        assert (st2.state, st2.exit_code) == (TaskState.FAILED, 126)
        assert str(script) in st2.message and "permission denied" in st2.message
        runner.validate()
        assert runner.started_total == 0

    run(main())


def test_stop_sigterm_then_sigkill_leaves_no_process(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        # The shell and its child both ignore SIGTERM: only the SIGKILL after the grace ends them.
        stubborn = spec("job-d", 0, 0, ("/bin/sh", "-c", "trap '' TERM; echo ready; sleep 30; echo done"))
        polite = spec("job-d", 1, 0, ("sleep", "30"))
        st = (await runner.start(stubborn)).status
        await runner.start(polite)
        await until(lambda: b"ready" in runner.read_log(stubborn.ref).data, what="trap installed")
        pgid = st.pid
        assert len(group_members(pgid)) >= 1
        runner.stop(stubborn.ref, grace_s=0.3, reason="cancelled by user")
        runner.stop(polite.ref, grace_s=5, reason="cancelled by user")
        a = await runner.wait(stubborn.ref)
        b = await runner.wait(polite.ref)
        assert a is not None and b is not None
        assert (a.state, a.exit_code) == (TaskState.CANCELLED, 137)
        assert a.message == "cancelled by user (killed by SIGKILL)"
        assert (b.state, b.exit_code) == (TaskState.CANCELLED, 143)
        assert b.message == "cancelled by user (killed by SIGTERM)"
        assert await until(lambda: not group_members(pgid), what="process group gone")
        assert b"done" not in runner.read_log(stubborn.ref).data
        runner.validate()
        # Stopping again, or stopping a finished task, changes nothing.
        assert runner.stop(stubborn.ref, grace_s=1).state is TaskState.CANCELLED
        # Stopping an unknown task records it CANCELLED so the parent hears about it.
        unknown = TaskRef("job-d", 9, 0)
        st_unknown = runner.stop(unknown, grace_s=1, reason="job cancelled")
        assert st_unknown.state is TaskState.CANCELLED and "not running on this node" in st_unknown.message
        runner.validate()

    run(main())


def test_cpu_affinity_least_used_cores(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))

    async def main() -> None:
        runner = make_runner(tmp_path)
        a = spec("job-e", 0, 0, ("sleep", "30"), cpu_millis=1000)
        b = spec("job-e", 1, 0, ("sleep", "30"), cpu_millis=1000)
        sa = (await runner.start(a)).status
        sb = (await runner.start(b)).status
        try:
            assert len(sa.cpu_set) == 1 and len(sb.cpu_set) == 1
            assert psutil.Process(sa.pid).cpu_affinity() == list(sa.cpu_set)
            assert psutil.Process(sb.pid).cpu_affinity() == list(sb.cpu_set)
            if len(cores) >= 2:
                assert sa.cpu_set != sb.cpu_set  # the second task gets the less used core
            runner.validate()
        finally:
            await runner.shutdown(stop_tasks=True, grace_s=1)
        runner.validate()  # the stopped tasks released their cores
        # A 1.5-CPU task is pinned to ceil(1.5) = 2 cores.
        c = spec("job-e", 2, 0, ("true",), cpu_millis=1500)
        runner2 = make_runner(tmp_path)
        sc = (await runner2.start(c)).status
        assert len(sc.cpu_set) == min(2, len(cores))
        await runner2.wait(c.ref)

    run(main())


def test_idempotent_start(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        s = spec("job-f", 0, 0, ("sleep", "30"))
        first = await runner.start(s)
        again = await runner.start(s)
        assert first.created and not again.created
        assert again.status.pid == first.status.pid and runner.started_total == 1
        assert len(runner) == 1
        runner.validate()
        await runner.shutdown(stop_tasks=True, grace_s=1)

    run(main())


def test_log_reads_with_offsets(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path)
        s = spec("job-g", 0, 0, (PY, "-c", "print('0123456789')"))
        await runner.start(s)
        await runner.wait(s.ref)
        c = runner.read_log(s.ref, "stdout", offset=3, max_bytes=4)
        assert (c.data, c.offset, c.size, c.eof, c.error) == (b"3456", 3, 11, False, "")
        c = runner.read_log(s.ref, "stdout", offset=7)
        assert (c.data, c.eof) == (b"789\n", True)
        c = runner.read_log(s.ref, "stdout", offset=-4)
        assert (c.data, c.offset) == (b"789\n", 7)
        c = runner.read_log(s.ref, "stdout", offset=100)
        assert (c.data, c.offset, c.eof) == (b"", 11, True)
        assert runner.read_log(s.ref, "stderr").data == b""
        assert "unknown stream" in runner.read_log(s.ref, "stdin").error
        assert "unknown task" in runner.read_log(TaskRef("job-zzz", 0, 0)).error
        # Logs outlive the acknowledgement.
        assert runner.ack([s.ref]) == [s.ref]
        assert runner.get(s.ref) is None
        assert runner.read_log(s.ref).data == b"0123456789\n"
        assert status_file(runner, s.ref)["acked"] is True
        runner.validate()

    run(main())


def test_restart_recovery_from_status_files(tmp_path: Path) -> None:
    """Terminal unacknowledged tasks come back as they were; a running one is re-adopted (more in
    test_nodeagent_adopt.py); a record of an agent from before re-adoption (no shim) is LOST."""

    async def main() -> None:
        old = make_runner(tmp_path)
        done = spec("job-h", 0, 0, ("true",))
        acked = spec("job-h", 1, 0, ("true",))
        running = spec("job-h", 2, 0, ("sleep", "30"))
        legacy = spec("job-h", 3, 0, ("sleep", "30"))
        await old.start(done)
        await old.start(acked)
        await old.wait(done.ref)
        await old.wait(acked.ref)
        old.ack([acked.ref])
        pid = (await old.start(running)).status.pid
        legacy_pid = (await old.start(legacy)).status.pid
        # The old agent stops without stopping its tasks.
        await old.shutdown(stop_tasks=False, grace_s=0)
        assert psutil.pid_exists(pid)
        # What an agent before re-adoption wrote: no shim to watch.
        record = status_file(old, legacy.ref)
        for key in ("shim_pid", "shim_start_ticks", "pid_start_ticks"):
            del record[key]
        record["version"] = 1
        (old.task_dir(legacy.ref) / "status.json").write_text(json.dumps(record))

        new = make_runner(tmp_path)
        recovered = {s.ref: s for s in new.recover()}
        assert set(recovered) == {done.ref, running.ref, legacy.ref}
        assert recovered[done.ref].state is TaskState.SUCCEEDED and recovered[done.ref].exit_code == 0
        adopted = recovered[running.ref]
        assert adopted.state is TaskState.RUNNING and adopted.pid == pid
        lost = recovered[legacy.ref]
        assert lost.state is TaskState.LOST and lost.message == LOST_ON_RESTART and lost.pid == legacy_pid

        def gone(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        assert await until(lambda: gone(legacy_pid), what="unadoptable task killed")
        assert not gone(pid)
        assert status_file(new, legacy.ref)["state"] == "LOST"
        new.validate()
        await new.shutdown(stop_tasks=True, grace_s=1)
        assert gone(pid)
        # A second restart reports the same (still unacknowledged) states, and kills nothing.
        again = make_runner(tmp_path)
        assert {s.ref: s.state for s in again.recover()} == {
            done.ref: TaskState.SUCCEEDED,
            running.ref: TaskState.CANCELLED,
            legacy.ref: TaskState.LOST,
        }

    run(main())


def test_table_is_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        runner = make_runner(tmp_path, max_tasks=2)
        await runner.start(spec("job-i", 0, 0, ("true",)))
        await runner.start(spec("job-i", 1, 0, ("true",)))
        with pytest.raises(ResourceExhausted):
            await runner.start(spec("job-i", 2, 0, ("true",)))
        await runner.wait(TaskRef("job-i", 0, 0))
        runner.ack([TaskRef("job-i", 0, 0)])
        assert (await runner.start(spec("job-i", 2, 0, ("true",)))).created
        for i in (1, 2):
            await runner.wait(TaskRef("job-i", i, 0))
        runner.validate()

    run(main())


def test_task_directory_layout_and_modes(tmp_path: Path) -> None:
    """The agent's files are the agent's (0600); the task's output and home are the task's."""
    root = os.geteuid() == 0
    code = "import os; print(os.getcwd() == os.environ['HOME'], os.path.basename(os.getcwd()))"

    async def main() -> None:
        runner = make_runner(tmp_path)
        s = spec("job-m", 0, 0, (PY, "-c", code))
        await runner.start(s)
        assert (await runner.wait(s.ref)) is not None
        assert runner.read_log(s.ref).data == b"True home\n"
        task_dir = runner.task_dir(s.ref)

        def mode(p: Path) -> int:
            return stat.S_IMODE(os.lstat(p).st_mode)

        shared = 0o711 if root else 0o700  # traversable by task users, listable by the agent only
        for d in (runner.state_dir, runner.tasks_dir, task_dir.parent, task_dir):
            assert mode(d) == shared, d
        assert mode(task_dir / "status.json") == 0o600
        assert os.lstat(task_dir / "status.json").st_uid == os.geteuid()
        assert mode(task_dir / "stdout") == mode(task_dir / "stderr") == 0o600
        assert mode(task_dir / "home") == 0o700
        task_uid = runner.users.default.uid if runner.users is not None else os.geteuid()
        assert os.lstat(task_dir / "home").st_uid == os.lstat(task_dir / "stdout").st_uid == task_uid
        assert not (root and task_uid == 0)

    run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root agent switches users (through its helper)")
def test_exec_errors_as_the_task_user(tmp_path: Path) -> None:
    """PATH entries the task user cannot search (say /root/bin) are skipped as "not found"; a
    program it may not run is "permission denied" and names the user."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    tool = locked / "tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)

    async def main() -> None:
        runner = make_runner(tmp_path, base_env={**base_environment(), "PATH": f"{locked}:/usr/bin:/bin"})
        found = spec("job-x", 0, 0, ("id", "-u"))  # after the locked directory on PATH
        await runner.start(found)
        st = await runner.wait(found.ref)
        assert st is not None and st.state is TaskState.SUCCEEDED
        assert runner.read_log(found.ref).data.strip() != b"0"
        hidden = (await runner.start(spec("job-x", 1, 0, ("tool",)))).status
        assert (hidden.state, hidden.exit_code, hidden.message) == (
            TaskState.FAILED,
            127,
            "command not found: tool",
        )
        denied = (await runner.start(spec("job-x", 2, 0, (str(tool),)))).status
        assert (denied.state, denied.exit_code) == (TaskState.FAILED, 126)
        assert runner.users is not None
        who = f"nobody (uid {runner.users.default.uid})"
        assert denied.message == f"permission denied: {tool} (the task runs as {who})"
        assert denied.message.encode() in runner.read_log(TaskRef("job-x", 2, 0), "stderr").data
        runner.validate()

    run(main())


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root agent switches users (through its helper)")
def test_the_job_env_never_reaches_anything_running_as_root(tmp_path: Path) -> None:
    """The helper that drops root starts with an empty environment and ignores PYTHON* variables:
    a job's PYTHONPATH (or LD_PRELOAD) cannot run code as root before the switch."""
    trap = tmp_path / "trap"
    trap.mkdir()
    marker = tmp_path / "ran-as-root"
    (trap / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (trap / "marshal.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    env = {"PYTHONPATH": str(trap), "PYTHONSTARTUP": str(trap / "marshal.py"), "PYTHONHOME": str(trap)}

    async def main() -> None:
        runner = make_runner(tmp_path)
        s = spec("job-y", 0, 0, ("id", "-u"), env=env)  # not Python: only the helper could import
        await runner.start(s)
        st = await runner.wait(s.ref)
        assert st is not None and st.state is TaskState.SUCCEEDED, runner.read_log(s.ref, "stderr").data
        assert not marker.exists()

    run(main())


def test_data_plane_environment(tmp_path: Path) -> None:
    """Tasks learn where to serve (DOMAINOS_NODE_HOST), their region, the agent's Python, and a
    datasets directory they can create shards in -- reached through an inherited descriptor when
    the task user cannot walk the path to it (a state directory under a 0700 directory)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    script = (
        'printf "%s|%s|%s|%s\\n" "$DOMAINOS_NODE_HOST" "$DOMAINOS_REGION" "$DOMAINOS_PYTHON" "$DOMAINOS_DATASETS_DIR";'
        ' mkdir -p "$DOMAINOS_DATASETS_DIR/corpus/0" && echo shard > "$DOMAINOS_DATASETS_DIR/corpus/0/data"'
        ' && cat "$DOMAINOS_DATASETS_DIR/corpus/0/data"'
    )

    async def main() -> None:
        runner = TaskRunner(
            locked / "state",
            node_id="n-test",
            cores=sorted(os.sched_getaffinity(0)),
            advertise_host="10.1.2.3",
        )
        runner.region = "east"
        s = spec("job-d", 0, 0, ("/bin/sh", "-c", script))
        await runner.start(s)
        st = await runner.wait(s.ref)
        assert st is not None and st.state is TaskState.SUCCEEDED, runner.read_log(s.ref, "stderr").data
        host, region, python, datasets = runner.read_log(s.ref).data.decode().splitlines()[0].split("|")
        assert (host, region) == ("10.1.2.3", "east") and python == __import__("sys").executable
        if runner.users is not None:  # root: the task is nobody and cannot walk tmp_path
            assert datasets.startswith("/proc/self/fd/")
            assert stat.S_IMODE(os.stat(runner.datasets_dir).st_mode) == 0o1733
        else:
            assert datasets == str(runner.datasets_dir)
        assert runner.read_log(s.ref).data.decode().splitlines()[1] == "shard"
        shard = runner.datasets_dir / "corpus" / "0" / "data"
        assert shard.read_text() == "shard\n"  # where the agent's dataset scan looks
        await runner.shutdown(stop_tasks=True, grace_s=1)

    run(main())
