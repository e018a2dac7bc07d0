"""The task runner: local processes, their directories, their logs and their exit codes.

One task attempt = one process group started with ``start_new_session=True`` in
``<state_dir>/tasks/<job_id>/<index>.<attempt>/`` with ``stdout`` and ``stderr`` files there and a
``status.json`` rewritten (atomically) on every transition, so a restarted agent knows what it had.

Exit codes: the process's own, or 128 + N when signal N killed it. When the main process exits,
whatever it left in its process group is killed, so a task never outlives its record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from domainos.clock import Clock, SystemClock
from domainos.errors import InvalidArgument, ResourceExhausted
from domainos.model import LogChunk, TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.resources import Resources

log = logging.getLogger(__name__)

#: Largest log chunk one read returns.
MAX_LOG_CHUNK = 1 << 20
#: Chunk size when the request does not say (``max_bytes`` <= 0).
DEFAULT_LOG_CHUNK = 64 * 1024
#: Tasks the table holds at most (running plus terminal-but-unacknowledged).
DEFAULT_MAX_TASKS = 4096
STATUS_FILE = "status.json"
LOG_STREAMS = ("stdout", "stderr")
LOST_ON_RESTART = "agent restarted; task not re-adopted"
_STATUS_VERSION = 1
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OnChange = Callable[[TaskStatus], None]


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment every task starts from: PATH (the agent's, then the system's), HOME, LANG."""
    environ = os.environ if environ is None else environ
    path = [p for p in environ.get("PATH", "").split(os.pathsep) if p]
    path += [p for p in _DEFAULT_PATH.split(os.pathsep) if p not in path]
    return {
        "PATH": os.pathsep.join(path),
        "HOME": environ.get("HOME", "/"),
        "LANG": environ.get("LANG", "C.UTF-8"),
    }


def task_environment(
    spec: TaskSpec,
    gpu_indexes: Sequence[int],
    *,
    node_id: str,
    subdomain_id: str,
    base: Mapping[str, str],
) -> dict[str, str]:
    """Base, then the job's ``env``, then the DomainOS variables (which the job cannot override)."""
    env = dict(base)
    env.update(spec.env)
    gpus = ",".join(str(i) for i in gpu_indexes)
    env.update(
        {
            "DOMAINOS_JOB_ID": spec.ref.job_id,
            "DOMAINOS_JOB_NAME": spec.job_name,
            "DOMAINOS_TASK_INDEX": str(spec.ref.task_index),
            "DOMAINOS_TASK_ATTEMPT": str(spec.ref.attempt),
            "DOMAINOS_REPLICAS": str(spec.replicas),
            "DOMAINOS_NODE_ID": node_id,
            "DOMAINOS_SUBDOMAIN": subdomain_id,
            "DOMAINOS_MASTER": spec.master_address,
            "CUDA_VISIBLE_DEVICES": gpus,
            "NVIDIA_VISIBLE_DEVICES": gpus,
            # CUDA numbers devices fastest-first by default; NVML (and our indexes) by PCI bus.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
    )
    return env


def exit_code_of(returncode: int) -> tuple[int, str]:
    """(exit code, "killed by SIGx" or "") from an asyncio return code (negative = signal)."""
    if returncode >= 0:
        return returncode, ""
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return 128 + signum, f"killed by {name}"


@dataclass(frozen=True, slots=True)
class StartResult:
    """Outcome of :meth:`TaskRunner.start`: the task's status and whether a process was started."""

    status: TaskStatus
    created: bool


@dataclass(eq=False)
class _Task:
    ref: TaskRef
    spec: TaskSpec | None
    status: TaskStatus
    dir: Path
    create_time: float = 0.0
    proc: asyncio.subprocess.Process | None = None
    waiter: asyncio.Task[None] | None = None
    stopper: asyncio.Task[None] | None = None
    stop_reason: str = ""
    stop_grace_s: float = 0.0
    holds_cores: bool = False


class TaskRunner:
    """Runs task processes for one node and remembers them until the sub-domain acknowledges.

    ``on_change`` is called (on the event loop, synchronously) after every state transition,
    once ``status.json`` has been written.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        node_id: str,
        cores: Sequence[int],
        apply_affinity: bool = True,
        clock: Clock | None = None,
        on_change: OnChange | None = None,
        max_tasks: int = DEFAULT_MAX_TASKS,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.tasks_dir = self.state_dir / "tasks"
        self.node_id = node_id
        #: Sub-domain id given to tasks as DOMAINOS_SUBDOMAIN (set when the agent registers).
        self.subdomain_id = ""
        self._cores = list(cores)
        self._apply_affinity = apply_affinity
        self._clock: Clock = clock or SystemClock()
        self._on_change = on_change
        self._max_tasks = max_tasks
        self._base_env = dict(base_env) if base_env is not None else base_environment()
        self._tasks: dict[TaskRef, _Task] = {}
        self._core_load: dict[int, int] = {c: 0 for c in self._cores}
        # Pre-filled so a metrics scrape from another thread never sees the dict change size.
        self._counts: dict[TaskState, int] = {s: 0 for s in TaskState}
        self.started_total = 0
        self._closed = False

    # ------------------------------------------------------------------ queries

    def task_dir(self, ref: TaskRef) -> Path:
        return self.tasks_dir / ref.job_id / f"{ref.task_index}.{ref.attempt}"

    def get(self, ref: TaskRef) -> TaskStatus | None:
        t = self._tasks.get(ref)
        return t.status if t is not None else None

    def statuses(self) -> list[TaskStatus]:
        """Every task the runner knows: running, or terminal and not yet acknowledged."""
        return [t.status for t in self._tasks.values()]

    def running(self) -> list[tuple[Resources, tuple[int, ...]]]:
        """(requested resources, GPU indexes) of each non-terminal task (for simulated usage)."""
        return [
            (t.spec.resources, t.status.gpu_indexes)
            for t in self._tasks.values()
            if t.spec is not None and not t.status.terminal
        ]

    def state_counts(self) -> Mapping[TaskState, int]:
        return self._counts

    def __len__(self) -> int:
        return len(self._tasks)

    # ------------------------------------------------------------------ start

    async def start(self, spec: TaskSpec, gpu_indexes: Sequence[int] = ()) -> StartResult:
        """Start one task attempt; a known ``(job_id, index, attempt)`` starts nothing new.

        A program that cannot be executed ends FAILED at once (127 not found, 126 permission
        denied or not executable) with a message naming it; that message is also written to the
        task's stderr file.
        """
        spec.validate()
        ref = spec.ref
        known = self._tasks.get(ref)
        if known is not None:
            return StartResult(known.status, False)
        if self._closed:
            raise ResourceExhausted("the agent is shutting down")
        if len(self._tasks) >= self._max_tasks:
            raise ResourceExhausted(
                f"the agent holds {len(self._tasks)} tasks (max {self._max_tasks}); "
                "acknowledge terminal tasks first"
            )
        task_dir = self.task_dir(ref)
        task_dir.mkdir(parents=True, exist_ok=True)
        cores = self._pick_cores(spec.resources.cpu_millis)
        t = _Task(
            ref=ref,
            spec=spec,
            dir=task_dir,
            status=TaskStatus(
                ref,
                TaskState.ASSIGNED,
                node_id=self.node_id,
                gpu_indexes=tuple(gpu_indexes),
                cpu_set=tuple(cores),
            ),
        )
        self._tasks[ref] = t
        self._counts[TaskState.ASSIGNED] += 1
        self._reserve(t)
        self._persist(t)

        env = task_environment(
            spec, gpu_indexes, node_id=self.node_id, subdomain_id=self.subdomain_id, base=self._base_env
        )
        program = spec.command[0]
        failure: tuple[int, str] | None = None
        proc: asyncio.subprocess.Process | None = None
        with open(task_dir / "stdout", "wb") as out, open(task_dir / "stderr", "wb") as err:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *spec.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=env,
                    cwd=str(task_dir),
                    start_new_session=True,
                )
            except FileNotFoundError:
                failure = (127, f"command not found: {program}")
            except PermissionError:
                failure = (126, f"permission denied: {program}")
            except OSError as exc:
                failure = (126, f"cannot execute {program}: {exc.strerror or exc}")
            if failure is not None:
                err.write(f"domainos-agent: {failure[1]}\n".encode())
        if failure is not None or proc is None:
            code, message = failure or (126, f"cannot execute {program}")
            log.warning("task %s failed to start: %s", ref, message)
            now = self._clock.time()
            self._transition(t, state=TaskState.FAILED, exit_code=code, message=message, finished_at=now)
            return StartResult(t.status, False)

        # The affinity is applied right after the spawn returns (the program has exec'd by then):
        # for that moment the task runs on the agent's cores, and a child it forks in that window
        # keeps them. A preexec_fn would close the window but is unsafe in a threaded process.
        if self._apply_affinity and cores:
            try:
                os.sched_setaffinity(proc.pid, cores)
            except ProcessLookupError:
                log.debug("task %s: exited before its CPU affinity could be set", ref)
            except (OSError, AttributeError) as exc:
                log.warning("task %s: cannot set CPU affinity %s on pid %d: %s", ref, cores, proc.pid, exc)
        t.proc = proc
        t.create_time = _create_time(proc.pid)
        self.started_total += 1
        self._transition(t, state=TaskState.RUNNING, pid=proc.pid, started_at=self._clock.time())
        log.info("task %s started: pid %d, gpus %s, cpus %s", ref, proc.pid, list(gpu_indexes), cores)
        t.waiter = asyncio.create_task(self._wait(t), name=f"task-wait-{ref}")
        if t.stop_reason:  # a stop (shutdown) arrived while the process was being spawned
            t.stopper = asyncio.create_task(self._stop(t, t.stop_grace_s), name=f"task-stop-{ref}")
        return StartResult(t.status, True)

    def _pick_cores(self, cpu_millis: int) -> list[int]:
        """The ceil(cpu/1000) least-used cores (ties: lowest index); none for a 0-CPU request."""
        n = min(len(self._cores), math.ceil(max(0, cpu_millis) / 1000))
        ranked = sorted(self._cores, key=lambda c: (self._core_load[c], c))
        return sorted(ranked[:n])

    def _reserve(self, t: _Task) -> None:
        for c in t.status.cpu_set:
            if c in self._core_load:
                self._core_load[c] += 1
        t.holds_cores = True

    def _release(self, t: _Task) -> None:
        if not t.holds_cores:
            return
        for c in t.status.cpu_set:
            if c in self._core_load:
                self._core_load[c] -= 1
        t.holds_cores = False

    async def _wait(self, t: _Task) -> None:
        assert t.proc is not None
        pid = t.proc.pid
        returncode = await t.proc.wait()
        # The main process is gone: kill whatever it left behind in its process group. While any
        # member lives the group id cannot be reused; once the group is empty this fails (ESRCH).
        _signal_group(pid, signal.SIGKILL)
        code, killed = exit_code_of(returncode)
        if t.stop_reason:
            state = TaskState.CANCELLED
            message = f"{t.stop_reason} ({killed})" if killed else t.stop_reason
        elif code == 0:
            state, message = TaskState.SUCCEEDED, ""
        else:
            state = TaskState.FAILED
            message = killed or f"exited with code {code}"
        log.info("task %s %s: exit code %d %s", t.ref, state.name.lower(), code, message)
        self._transition(t, state=state, exit_code=code, message=message, finished_at=self._clock.time())

    # ------------------------------------------------------------------ stop

    def stop(self, ref: TaskRef, *, grace_s: float, reason: str = "") -> TaskStatus:
        """Begin stopping a task: SIGTERM to its group now, SIGKILL after ``grace_s``.

        Returns at once with the current status; the CANCELLED transition follows through
        ``on_change``. A terminal task is left as it is; an unknown task is recorded CANCELLED
        (so the parent hears about it) without running anything.
        """
        reason = reason or "stopped"
        t = self._tasks.get(ref)
        if t is None:
            log.info("task %s: stop for a task this node does not run; recorded cancelled", ref)
            return self._record_terminal(
                ref, TaskState.CANCELLED, f"{reason} (the task was not running on this node)"
            )
        if t.status.terminal or t.stop_reason:
            return t.status
        t.stop_reason = reason
        t.stop_grace_s = grace_s
        if t.proc is not None:
            log.info("task %s: stopping (%s), grace %.1fs", ref, reason, grace_s)
            t.stopper = asyncio.create_task(self._stop(t, grace_s), name=f"task-stop-{ref}")
        return t.status

    def reject(self, ref: TaskRef, message: str, gpu_indexes: Sequence[int] = ()) -> TaskStatus:
        """Record a task this agent refuses to run as FAILED (no process), so it is reported and acked
        like any other terminal task. A known task is left as it is."""
        known = self._tasks.get(ref)
        if known is not None:
            return known.status
        log.warning("task %s rejected: %s", ref, message)
        return self._record_terminal(ref, TaskState.FAILED, message, gpu_indexes)

    def _record_terminal(
        self, ref: TaskRef, state: TaskState, message: str, gpu_indexes: Sequence[int] = ()
    ) -> TaskStatus:
        ref.validate()
        task_dir = self.task_dir(ref)
        task_dir.mkdir(parents=True, exist_ok=True)
        status = TaskStatus(
            ref,
            state,
            node_id=self.node_id,
            message=message,
            finished_at=self._clock.time(),
            gpu_indexes=tuple(gpu_indexes),
        )
        t = _Task(ref=ref, spec=None, dir=task_dir, status=status)
        self._tasks[ref] = t
        self._counts[state] += 1
        self._persist(t)
        self._notify(status)
        return status

    async def _stop(self, t: _Task, grace_s: float) -> None:
        assert t.proc is not None and t.waiter is not None
        pid = t.proc.pid
        _signal_group(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(t.waiter), timeout=max(0.0, grace_s))
        except TimeoutError:
            log.info("task %s: still running %.1fs after SIGTERM; sending SIGKILL", t.ref, grace_s)
            _signal_group(pid, signal.SIGKILL)
            await asyncio.shield(t.waiter)

    async def wait(self, ref: TaskRef) -> TaskStatus | None:
        """Wait until a known task is terminal; its last status (``None`` if unknown)."""
        t = self._tasks.get(ref)
        if t is None:
            return None
        for job in (t.waiter, t.stopper):
            if job is not None:
                await asyncio.shield(job)
        return t.status

    # ------------------------------------------------------------------ ack / forget

    def ack(self, refs: Iterable[TaskRef]) -> list[TaskRef]:
        """Forget terminal tasks the parent stored durably; their logs stay on disk.

        Non-terminal or unknown refs are ignored. Returns the refs actually forgotten.
        """
        forgotten: list[TaskRef] = []
        for ref in refs:
            t = self._tasks.get(ref)
            if t is None:
                continue
            if not t.status.terminal:
                log.warning("task %s: ack for a task still %s ignored", ref, t.status.state.name.lower())
                continue
            self._persist(t, acked=True)
            del self._tasks[ref]
            self._counts[t.status.state] -= 1
            forgotten.append(ref)
        if forgotten:
            log.debug("forgot %d acknowledged tasks", len(forgotten))
        return forgotten

    # ------------------------------------------------------------------ logs

    def read_log(self, ref: TaskRef, stream: str = "stdout", offset: int = 0, max_bytes: int = 0) -> LogChunk:
        """Read a task's stdout or stderr from ``offset`` (negative: from the end).

        At most 1 MiB per call. Works after the task was acknowledged (logs stay on disk);
        ``error`` says why there is no data (unknown task or stream). ``eof`` is true when the
        chunk reaches the current end of the file.
        """
        stream = stream or "stdout"
        if stream not in LOG_STREAMS:
            return LogChunk(error=f"unknown stream {stream!r}; expected stdout or stderr")
        try:
            ref.validate()
        except InvalidArgument as exc:
            return LogChunk(error=f"unknown task {ref}: {exc}")
        task_dir = self.task_dir(ref)
        path = task_dir / stream
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = offset if offset >= 0 else max(0, size + offset)
                start = min(start, size)
                n = min(max_bytes if max_bytes > 0 else DEFAULT_LOG_CHUNK, MAX_LOG_CHUNK)
                f.seek(start)
                data = f.read(n)
        except FileNotFoundError:
            if task_dir.is_dir():
                return LogChunk(error=f"task {ref} has no {stream} (it never started on node {self.node_id})")
            return LogChunk(error=f"unknown task {ref} on node {self.node_id}")
        except OSError as exc:
            return LogChunk(error=f"cannot read {stream} of task {ref}: {exc.strerror or exc}")
        return LogChunk(data=data, offset=start, size=size, eof=start + len(data) >= size)

    # ------------------------------------------------------------------ restart recovery

    def recover(self) -> list[TaskStatus]:
        """Load the ``status.json`` files a previous agent process left.

        Terminal, unacknowledged tasks come back as they were. Tasks that were running become
        LOST ("agent restarted; task not re-adopted") after their process group is killed when
        the recorded pid is still the same process (same create time).
        """
        recovered: list[TaskStatus] = []
        if not self.tasks_dir.is_dir():
            return recovered
        for path in sorted(self.tasks_dir.glob(f"*/*/{STATUS_FILE}")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("acked"):
                    continue
                ref = TaskRef(str(data["job_id"]), int(data["task_index"]), int(data["attempt"]))
                ref.validate()
                status = _status_from_dict(ref, data)
                spec = _spec_from_dict(ref, data["spec"]) if data.get("spec") else None
            except (OSError, ValueError, KeyError, TypeError, InvalidArgument) as exc:
                log.warning("ignoring unreadable task record %s: %s", path, exc)
                continue
            if ref in self._tasks:
                continue
            t = _Task(ref=ref, spec=spec, status=status, dir=path.parent)
            self._tasks[ref] = t
            self._counts[status.state] += 1
            if not status.terminal:
                pid, create_time = status.pid, float(data.get("pid_create_time") or 0.0)
                if pid and _same_process(pid, create_time):
                    log.warning("task %s: killing pid %d left by the previous agent process", ref, pid)
                    _signal_group(pid, signal.SIGKILL)
                self._transition(
                    t,
                    state=TaskState.LOST,
                    message=LOST_ON_RESTART,
                    finished_at=self._clock.time(),
                    notify=False,
                )
            recovered.append(t.status)
        if recovered:
            log.info("recovered %d unacknowledged tasks from %s", len(recovered), self.tasks_dir)
        return recovered

    # ------------------------------------------------------------------ shutdown

    async def shutdown(
        self, *, stop_tasks: bool, grace_s: float, reason: str = "agent shutting down"
    ) -> None:
        """Stop every running task (or, with ``stop_tasks=False``, leave them running)."""
        self._closed = True
        if stop_tasks:
            for t in list(self._tasks.values()):
                if not t.status.terminal:
                    self.stop(t.ref, grace_s=grace_s, reason=reason)
            jobs = [j for t in self._tasks.values() for j in (t.waiter, t.stopper) if j is not None]
            await asyncio.gather(*jobs, return_exceptions=True)
        else:
            jobs = [j for t in self._tasks.values() for j in (t.waiter, t.stopper) if j is not None]
            for j in jobs:
                j.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    # ------------------------------------------------------------------ invariants

    def validate(self) -> None:
        """Check the runner's invariants (tests call this after every step)."""
        load = {c: 0 for c in self._cores}
        counts = {s: 0 for s in TaskState}
        for ref, t in self._tasks.items():
            assert t.ref == ref == t.status.ref, f"task key {ref} does not match {t.status.ref}"
            counts[t.status.state] += 1
            assert t.holds_cores == (not t.status.terminal), f"task {ref}: cores held while {t.status.state}"
            if t.holds_cores:
                for c in t.status.cpu_set:
                    load[c] += 1
            if t.status.state is TaskState.RUNNING:
                assert t.proc is not None and t.status.pid == t.proc.pid, (
                    f"task {ref}: running without a process"
                )
            if t.status.terminal and t.proc is not None:
                assert t.proc.returncode is not None, f"task {ref}: terminal with a live process"
        assert load == self._core_load, f"core load {self._core_load} != {load}"
        assert counts == self._counts, f"state counts {self._counts} != {counts}"

    # ------------------------------------------------------------------ internals

    def _transition(self, t: _Task, *, state: TaskState, notify: bool = True, **changes: Any) -> None:
        old = t.status.state
        assert not old.terminal, f"task {t.ref}: transition out of terminal state {old.name}"
        t.status = replace(t.status, state=state, **changes)
        self._counts[old] -= 1
        self._counts[state] += 1
        if state.terminal:
            self._release(t)
        self._persist(t)
        if notify:
            self._notify(t.status)

    def _notify(self, status: TaskStatus) -> None:
        if self._on_change is not None:
            try:
                self._on_change(status)
            except Exception:
                log.exception("task %s: on_change callback failed", status.ref)

    def _persist(self, t: _Task, *, acked: bool = False) -> None:
        s = t.status
        data: dict[str, Any] = {
            "version": _STATUS_VERSION,
            "job_id": s.ref.job_id,
            "task_index": s.ref.task_index,
            "attempt": s.ref.attempt,
            "state": s.state.name,
            "exit_code": s.exit_code,
            "message": s.message,
            "node_id": s.node_id,
            "started_at": s.started_at,
            "finished_at": s.finished_at,
            "pid": s.pid,
            "pid_create_time": t.create_time,
            "gpu_indexes": list(s.gpu_indexes),
            "cpu_set": list(s.cpu_set),
            "acked": acked,
            "spec": _spec_to_dict(t.spec) if t.spec is not None else None,
        }
        path = t.dir / STATUS_FILE
        tmp = t.dir / f".{STATUS_FILE}.tmp"
        try:
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:  # a full disk must not take the agent down; the parent still hears
            log.error("task %s: cannot write %s: %s", t.ref, path, exc)


def _spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """The spec as ``status.json`` stores it (the identity is stored beside it)."""
    r = spec.resources
    return {
        "command": list(spec.command),
        "env": dict(spec.env),
        "resources": {
            "cpu_millis": r.cpu_millis,
            "memory_bytes": r.memory_bytes,
            "gpus": r.gpus,
            "gpu_model": r.gpu_model,
        },
        "tenant": spec.tenant,
        "master_address": spec.master_address,
        "job_name": spec.job_name,
        "replicas": spec.replicas,
    }


def _spec_from_dict(ref: TaskRef, data: Mapping[str, Any]) -> TaskSpec:
    r = data.get("resources") or {}
    return TaskSpec(
        ref=ref,
        command=tuple(str(a) for a in data.get("command") or ()),
        env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
        resources=Resources(
            int(r.get("cpu_millis", 0)),
            int(r.get("memory_bytes", 0)),
            int(r.get("gpus", 0)),
            str(r.get("gpu_model", "")),
        ),
        tenant=str(data.get("tenant", "")),
        master_address=str(data.get("master_address", "")),
        job_name=str(data.get("job_name", "")),
        replicas=int(data.get("replicas", 1)),
    )


def _status_from_dict(ref: TaskRef, data: Mapping[str, Any]) -> TaskStatus:
    return TaskStatus(
        ref=ref,
        state=TaskState[str(data["state"])],
        exit_code=int(data.get("exit_code", 0)),
        message=str(data.get("message", "")),
        node_id=str(data.get("node_id", "")),
        started_at=float(data.get("started_at", 0.0)),
        finished_at=float(data.get("finished_at", 0.0)),
        pid=int(data.get("pid", 0)),
        gpu_indexes=tuple(int(i) for i in data.get("gpu_indexes", ())),
        cpu_set=tuple(int(i) for i in data.get("cpu_set", ())),
    )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _create_time(pid: int) -> float:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _same_process(pid: int, create_time: float) -> bool:
    """True when ``pid`` is alive and started at ``create_time`` (not a reused pid)."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    if not create_time:
        return False
    try:
        return abs(float(psutil.Process(pid).create_time()) - create_time) < 0.05
    except psutil.Error:
        return False
