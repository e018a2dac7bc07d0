"""The task runner: local processes, their directories, their logs and their exit codes.

One task attempt = one process group (its main process leads a new session), started and watched
by a small supervisor process of its own, the *shim* (:mod:`node_agent._shim`, run with the agent's
interpreter, ``-I -S``). The shim runs in a session of its own, so it and its task outlive the agent;
it waits for the task and writes its exit code to ``exit.json``. Its directory::

    <state_dir>/tasks/<job_id>/<index>.<attempt>/   the agent's, 0711 (0700 when the agent is not root)
        status.json                                 the agent's, 0600: rewritten (atomically) on every
                                                    transition, so a restarted agent knows what it had
        exit.json                                   the agent's (written by the shim), 0600: the task's
                                                    exit code or signal, once it has ended
        stdout, stderr                              the task user's, 0600: the task's output
        home/                                       the task user's, 0700: its working directory and HOME
        tls/                                        the client certificate of ``task_client_tls`` (if any)

Agent restarts: a restarted agent re-adopts the tasks still running. ``status.json`` names the
shim (pid and start time) and the task (pid and start time); a shim that is still the same process
(not a reused pid, not a zombie) is watched again (a pidfd; polling every :data:`POLL_S` where the
kernel has none) and its task stays RUNNING under the same attempt, stoppable, with its logs, CPUs
and GPUs held as before. A task that ended while no agent ran is reported with the exit code of its
``exit.json``; when that cannot be known it is LOST (the master retries it). Records of another node
id, state or data directory, or boot are not adopted: their processes are killed and reported LOST.

Least privilege: an agent running as root never runs a task as root. A task runs as the tenant's
user (``tenant_users``) or ``task_user`` (default ``nobody``), with no supplementary groups and umask
077. It can write its own output and home but cannot list the agent's state directory, read another
task's files (when tenants have different users), or read ``status.json`` (which holds the job's
credential) -- and the agent writes nothing into a directory a task can change, so a task cannot
redirect the agent's writes or forge the records a restarted agent trusts. An agent that is not root
runs tasks as its own user. Tasks that share a user are not isolated from each other (the kernel
sees one user): give tenants different users to separate them.

GPUs: the runner is the node's last line against double booking. A whole-GPU task holds its
cards; a GPU share (``resources.gpu_share`` percent, one card) holds part of one card, and shares
on one card never add up to more than 100% of its compute or more than its memory (a share's
memory is ``gpu_share_memory``, else the same fraction of the card). A card carrying shares is
not free as a whole, and a whole-held card takes no share. A StartTask that would over-commit
is refused with the numbers (the sub-domain should never send one). A share runs with
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` (honoured when an
MPS daemon runs on the node) and ``DOMAINOS_GPU_SHARE`` / ``DOMAINOS_GPU_MEMORY_MIB``.

Exit codes: the process's own, or 128 + N when signal N killed it; 127 when the program is not
found, 126 when it cannot be executed or its directory cannot be prepared. When the main process
exits, whatever it left in its process group is killed, so a task never outlives its record.

Containers: a task whose spec has a ``container`` (``runtime: docker``) runs as one container on
the node's Docker engine instead (:mod:`node_agent._docker`), with the same directory, log files,
``status.json`` (which names the container), states, exit codes (``125``: the engine could not
create or start it; an out-of-memory kill is reported as such), stops (SIGTERM, SIGKILL after the
grace) and re-adoption. An agent without an engine refuses such a task with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import marshal
import math
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domainos.clock import Clock, SystemClock
from domainos.errors import ConfigError, InvalidArgument, ResourceExhausted, Unavailable
from domainos.model import ContainerSpec, LogChunk, TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.resources import Resources
from node_agent import _docker, _shim
from node_agent._datasets import DATASETS_DIR
from node_agent._progress import PROGRESS_FILE, ProgressFile

if TYPE_CHECKING:  # domainos.security imports cryptography: only when task_client_tls is set
    from domainos.security import CertFiles

log = logging.getLogger(__name__)

#: Largest log chunk one read returns.
MAX_LOG_CHUNK = 1 << 20
#: Chunk size when the request does not say (``max_bytes`` <= 0).
DEFAULT_LOG_CHUNK = 64 * 1024
#: Tasks the table holds at most (running plus terminal-but-unacknowledged).
DEFAULT_MAX_TASKS = 4096
MIB = 2**20
STATUS_FILE = "status.json"
LOG_STREAMS = ("stdout", "stderr")
EXIT_FILE = _shim.EXIT_FILE
LOST_ON_RESTART = "agent restarted; task not re-adopted"
#: A task whose shim ended without writing ``exit.json`` (killed): its exit code is not known.
LOST_UNSUPERVISED = "its supervisor ended without recording the task's exit code"
_STATUS_VERSION = 2
#: The task supervisor the runner starts for every task attempt (see :mod:`node_agent._shim`).
SHIM_PATH = os.path.abspath(_shim.__file__)
#: How often a re-adopted shim is checked where the kernel has no pidfd (Linux < 5.3).
POLL_S = 0.5
#: How long the shim has to end its task after FORWARD_KILL before the agent kills both itself.
SHIM_KILL_TIMEOUT_S = 5.0
#: A container's task is LOST when the Docker engine does not answer for this long.
DOCKER_LOST_AFTER_S = 60.0
#: Pause before following a container's output again (a broken stream, an unreachable engine).
DOCKER_RETRY_S = 0.2
#: Times a SIGKILLed container is inspected again for an OOM kill the engine reports late.
OOM_SETTLE_CHECKS = 30
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The task's working directory and HOME, inside its task directory.
HOME_DIR = "home"
#: ``<data_dir>/checkpoints``: the default checkpoint root (DOMAINOS_CHECKPOINT_DIR).
CHECKPOINTS_DIR = "checkpoints"
#: The variable naming the task's progress file (``dsdk.report_progress``).
PROGRESS_ENV = "DOMAINOS_PROGRESS_FILE"
#: Where the task's copy of the ``task_client_tls`` files lives, inside its task directory.
TLS_DIR = "tls"
#: The task user used for every tenant unless ``tenant_users`` maps it.
DEFAULT_TASK_USER = "nobody"
#: umask of task processes run as another user: what they create is theirs alone.
TASK_UMASK = 0o077
# Directories on a task's path (state dir, tasks/, tasks/<job>/, the task dir): traversable by
# the task users, listable only by the agent. 0700 when tasks run as the agent's own user.
_SHARED_DIR_MODE = 0o711
_PRIVATE_DIR_MODE = 0o700
_FILE_MODE = 0o600

OnChange = Callable[[TaskStatus], None]


@dataclass(frozen=True, slots=True)
class TaskUser:
    """An unprivileged account tasks run as (never uid 0, never primary group 0)."""

    name: str
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid})"


def resolve_task_user(value: str, field: str = "task_user") -> TaskUser:
    """The account named by ``value`` (a user name or a uid) from the passwd database.

    Raises :class:`ConfigError` naming ``field`` for an empty value, an unknown user, root
    (uid 0) or a user whose primary group is root (gid 0).
    """
    name = value.strip()
    if not name:
        raise ConfigError("a user name or uid is required, e.g. nobody", field=field)
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise ConfigError(
            f"no user {name!r} on this machine; name an existing unprivileged user (name or uid), "
            f"e.g. {DEFAULT_TASK_USER}",
            field=field,
        ) from None
    if entry.pw_uid == 0:
        raise ConfigError(
            f"{name!r} is root (uid 0) and tasks never run as root; name an unprivileged user, "
            f"e.g. {DEFAULT_TASK_USER}",
            field=field,
        )
    if entry.pw_gid == 0:
        raise ConfigError(
            f"the primary group of {name!r} is root (gid 0); name a user whose primary group is not root",
            field=field,
        )
    return TaskUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True, slots=True)
class TaskUsers:
    """Who a root agent runs each tenant's tasks as: the tenant's mapped user, else ``default``."""

    default: TaskUser
    tenants: Mapping[str, TaskUser] = field(default_factory=dict)

    @classmethod
    def resolve(
        cls, task_user: str = DEFAULT_TASK_USER, tenant_users: Mapping[str, str] | None = None
    ) -> TaskUsers:
        """Look every user up (:func:`resolve_task_user`); :class:`ConfigError` names the field."""
        tenants: dict[str, TaskUser] = {}
        for tenant, user in (tenant_users or {}).items():
            if not tenant.strip():
                raise ConfigError("a tenant name is required as the key", field="tenant_users")
            tenants[tenant] = resolve_task_user(user, f"tenant_users.{tenant}")
        return cls(resolve_task_user(task_user, "task_user"), tenants)

    def for_tenant(self, tenant: str) -> TaskUser:
        return self.tenants.get(tenant, self.default)

    def all(self) -> list[TaskUser]:
        """Every distinct user, the default first."""
        users = [self.default]
        users += [u for u in self.tenants.values() if u not in users]
        return users


def user_may(user: TaskUser, st: os.stat_result, bit: int) -> bool:
    """Whether ``user`` (primary group only: tasks get no supplementary groups) has permission
    ``bit`` (4 read, 2 write, 1 search/execute) on a file with status ``st``. ACLs are not read."""
    if st.st_uid == user.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid == user.gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def blocking_dir(user: TaskUser, path: str | os.PathLike[str]) -> Path | None:
    """The first directory above ``path`` that ``user`` cannot traverse (None: it can reach it)."""
    p = Path(os.path.abspath(path))
    for parent in reversed(p.parents):
        try:
            st = os.stat(parent)
        except OSError:
            return parent
        if not user_may(user, st, 1):
            return parent
    return None


def readable_by(user: TaskUser, path: str | os.PathLike[str]) -> bool:
    """Whether ``user`` can open ``path`` for reading (it exists, its directories let it through)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return blocking_dir(user, path) is None and user_may(user, st, 4)


def base_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment every task starts from: PATH (the agent's, then the system's), HOME
    (replaced by the task's own home when it starts), LANG. Nothing else of the agent's."""
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
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Base, then the job's ``env``, then the DomainOS variables and ``extra`` (which the job cannot
    override).

    Nothing else of the agent's environment reaches the task: the job-scoped credential
    (``DOMAINOS_TOKEN``) comes in the job's ``env`` from the master, never from the agent.
    """
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
    env.update(extra or {})
    return env


def share_memory_bytes(resources: Resources, card_memory: int) -> int:
    """GPU memory of a share: as asked, else the share's fraction of the card (whole MiB)."""
    if resources.gpu_share_memory:
        return resources.gpu_share_memory
    return card_memory * resources.gpu_share // 100 // MIB * MIB


def gpu_share_environment(percent: int, memory_bytes: int) -> dict[str, str]:
    """The variables of a task running on a share of its one visible GPU.

    The MPS memory limit names device 0: with ``CUDA_VISIBLE_DEVICES`` naming one card, that card
    is the task's device 0 (the MPS client numbers devices after ``CUDA_VISIBLE_DEVICES``).
    """
    env = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percent), "DOMAINOS_GPU_SHARE": str(percent)}
    mib = memory_bytes // MIB
    if mib:
        env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={mib}M"
        env["DOMAINOS_GPU_MEMORY_MIB"] = str(mib)
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
    #: Start time of the task's main process (``status.pid``) in clock ticks after boot (exact, and
    #: not moved by clock steps): with the pid (and the boot id), its identity.
    start_ticks: int = 0
    #: The same as unix time (psutil's; what agents before re-adoption recorded and compared).
    create_time: float = 0.0
    #: The task's supervisor, from the spawn (or the re-adoption) until it has ended.
    shim: _Shim | None = None
    waiter: asyncio.Task[None] | None = None
    stopper: asyncio.Task[None] | None = None
    stop_reason: str = ""
    stop_grace_s: float = 0.0
    #: Holds its CPU cores and GPUs (or GPU share): from start until terminal.
    holds_cores: bool = False
    #: (percent, memory bytes) of the one GPU when the task runs on a GPU share.
    gpu_share: tuple[int, int] | None = None
    #: Its progress file (``dsdk.report_progress``), read when the node is sampled.
    progress: ProgressFile | None = None
    #: The id of its container (runtime docker), from the start until the agent forgets the task.
    container_id: str = ""
    #: The thread copying the container's output into the log files (while it runs).
    pump: _docker.LogPump | None = None


class TaskRunner:
    """Runs task processes for one node and remembers them until the sub-domain acknowledges.

    ``on_change`` is called (on the event loop, synchronously) after every state transition,
    once ``status.json`` has been written.

    When the agent runs as root, each task runs as its tenant's user from ``tenant_users``, else
    as ``task_user``; both are checked here (:class:`ConfigError`: unknown user, root).
    ``task_client_tls`` (a certificate of role ``client``) is copied into each task's directory,
    readable by the task, and named by ``DOMAINOS_TLS_CA/CERT/KEY``. ``private_files`` (the
    agent's own keys) must not be readable by any task user, or the runner refuses to start.
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
        task_user: str = DEFAULT_TASK_USER,
        tenant_users: Mapping[str, str] | None = None,
        task_client_tls: CertFiles | None = None,
        private_files: Sequence[str] = (),
        gpus: Mapping[int, int] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        advertise_host: str = "127.0.0.1",
        as_agent_user: bool = False,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        docker: _docker.DockerRuntime | None = None,
        docker_note: str = "",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.tasks_dir = self.state_dir / "tasks"
        #: ``<data_dir>/datasets``: dataset shards on this node, written and read by tasks.
        self.datasets_dir = Path(data_dir if data_dir is not None else self.state_dir / "data") / DATASETS_DIR
        #: Task checkpoints (``dsdk.checkpoint``; DOMAINOS_CHECKPOINT_DIR): on this node, or shared
        #: storage so that an attempt rescheduled elsewhere finds what the last one saved.
        self.checkpoint_dir = (
            Path(checkpoint_dir) if checkpoint_dir else self.datasets_dir.parent / CHECKPOINTS_DIR
        )
        #: The address tasks serve on and publish (DOMAINOS_NODE_HOST).
        self.advertise_host = advertise_host
        #: Who tasks run as (the agent is root); None: they run as the agent's own user.
        self.users: TaskUsers | None = None
        if as_agent_user:
            log.log(
                logging.WARNING if os.geteuid() == 0 else logging.INFO,
                "tasks run as the agent's own user (uid %d, tasks_as_agent_user): only for a one-user "
                "federation; tenants are not separated",
                os.geteuid(),
            )
        elif os.geteuid() == 0:
            self.users = TaskUsers.resolve(task_user, tenant_users)
        else:
            # Logged once, when the agent starts: nothing can be done about it but running as root.
            log.log(
                logging.WARNING if tenant_users else logging.INFO,
                "the agent is not root: tasks run as its own user (uid %d) and can read what it can; "
                "tenants are not separated by uid (run the agent as root to use task_user/tenant_users)",
                os.geteuid(),
            )
        self._dir_mode = _SHARED_DIR_MODE if self.users is not None else _PRIVATE_DIR_MODE
        self._task_tls = task_client_tls
        self._check_task_tls(private_files)
        self._prepare_dirs()
        self._check_isolation(private_files)
        self._datasets_fd = self._open_datasets_dir()
        self._checkpoint_fd = self._open_shared_dir(
            self.checkpoint_dir, "checkpoint", "DOMAINOS_CHECKPOINT_DIR"
        )
        self.node_id = node_id
        #: Sub-domain id given to tasks as DOMAINOS_SUBDOMAIN (set when the agent registers).
        self.subdomain_id = ""
        #: Region given to tasks as DOMAINOS_REGION (set when the agent registers).
        self.region = ""
        self._cores = list(cores)
        self._apply_affinity = apply_affinity
        self._clock: Clock = clock or SystemClock()
        self._on_change = on_change
        self._max_tasks = max_tasks
        self._base_env = dict(base_env) if base_env is not None else base_environment()
        self._tasks: dict[TaskRef, _Task] = {}
        self._core_load: dict[int, int] = {c: 0 for c in self._cores}
        #: GPU index -> its memory in bytes (0 or missing: unknown, memory of shares not checked).
        self._gpu_memory = dict(gpus or {})
        #: GPU index -> the task holding it whole.
        self._gpu_whole: dict[int, TaskRef] = {}
        #: GPU index -> {task: (percent, memory bytes)} of the shares on it.
        self._gpu_shares: dict[int, dict[TaskRef, tuple[int, int]]] = {}
        # Pre-filled so a metrics scrape from another thread never sees the dict change size.
        self._counts: dict[TaskState, int] = {s: 0 for s in TaskState}
        self.started_total = 0
        #: Tasks of a previous agent process re-adopted by :meth:`recover`.
        self.adopted_total = 0
        #: What a task record must name for this runner to re-adopt its task.
        self._identity = {
            "state_dir": os.path.realpath(self.state_dir),
            "data_dir": os.path.realpath(self.datasets_dir),
            "boot_id": _boot_id(),
        }
        self._closed = False
        #: The node's Docker engine (connected), for tasks with a container; None: none here, and
        #: ``docker_note`` says why (disabled, or no engine answered).
        self.docker = docker
        self.docker_note = docker_note or "the Docker runtime is not enabled on this agent"
        self._sweeper: asyncio.Task[None] | None = None
        self._cleanups: set[asyncio.Future[Any]] = set()

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

    def gpu_shares(self) -> dict[int, tuple[int, int]]:
        """GPU index -> (percent, memory bytes) used by the shares on it (cards carrying shares)."""
        return {
            i: (sum(p for p, _ in held.values()), sum(m for _, m in held.values()))
            for i, held in self._gpu_shares.items()
        }

    def gpus_held_whole(self) -> dict[int, TaskRef]:
        """GPU index -> the task holding it whole."""
        return dict(self._gpu_whole)

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
        share = self._check_gpus(spec, gpu_indexes)
        task_dir = self._make_task_dir(ref)
        user = self.users.for_tenant(spec.tenant) if self.users is not None else None
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
            gpu_share=share,
        )
        self._tasks[ref] = t
        self._counts[TaskState.ASSIGNED] += 1
        self._reserve(t)
        self._persist(t)
        if spec.container is not None:
            return await self._start_container(t, spec, user, cores, share)

        program = spec.command[0]
        home = task_dir / HOME_DIR
        failure: tuple[int, str] | None = None
        spawned: tuple[subprocess.Popen[bytes], int, str] | None = None
        fds: list[int] = []  # directories the task reaches through /proc/self/fd (closed after the spawn)
        with _open_output(task_dir / "stdout", user) as out, _open_output(task_dir / "stderr", user) as err:
            try:
                with contextlib.suppress(FileNotFoundError):  # an earlier run of this attempt (acked)
                    os.unlink(task_dir / EXIT_FILE)
                extra = self._prepare_task(task_dir, home, user, fds)
                extra.update(self._data_plane_env(user, fds))
                extra.update(self._progress_env(home, user, fds))
                extra.update(
                    self._shared_dir_env(
                        "DOMAINOS_CHECKPOINT_DIR", self.checkpoint_dir, self._checkpoint_fd, user, fds
                    )
                )
                if share is not None:
                    extra.update(gpu_share_environment(*share))
            except OSError as exc:
                for fd in fds:
                    if fd not in (self._datasets_fd, self._checkpoint_fd):
                        os.close(fd)
                fds = []
                failure = (126, f"cannot prepare the task's files in {task_dir}: {exc.strerror or exc}")
            else:
                env = task_environment(
                    spec,
                    gpu_indexes,
                    node_id=self.node_id,
                    subdomain_id=self.subdomain_id,
                    base={**self._base_env, "HOME": str(home)},
                    extra=extra,
                )
                orders = {
                    "argv": list(spec.command),
                    "env": env,
                    "cwd": str(home),
                    "uid": user.uid if user is not None else None,
                    "gid": user.gid if user is not None else None,
                    "umask": TASK_UMASK if user is not None else None,
                    "cores": list(cores) if self._apply_affinity else [],
                    "exit_path": str(task_dir / EXIT_FILE),
                    "exit_tmp": str(task_dir / f".{EXIT_FILE}.tmp"),
                    "pass_fds": list(fds),
                }
                try:
                    spawned = await _spawn_shim(orders, stdout=out, stderr=err, pass_fds=fds)
                except OSError as exc:
                    failure = _spawn_failure(exc, program, str(home), user)
                finally:
                    for fd in fds:
                        if fd not in (self._datasets_fd, self._checkpoint_fd):
                            os.close(fd)
            if failure is not None:
                err.write(f"domainos-agent: {failure[1]}\n".encode())
        if failure is not None or spawned is None:
            code, message = failure or (126, f"cannot execute {program}")
            log.warning("task %s failed to start: %s", ref, message)
            now = self._clock.time()
            self._transition(t, state=TaskState.FAILED, exit_code=code, message=message, finished_at=now)
            return StartResult(t.status, False)

        proc, pid, warning = spawned
        if warning:
            log.warning("task %s: %s (pid %d)", ref, warning, pid)
        t.shim = _Shim.of_child(proc)
        t.start_ticks = _start_ticks(pid)
        t.create_time = _create_time(pid)
        self.started_total += 1
        self._transition(t, state=TaskState.RUNNING, pid=pid, started_at=self._clock.time())
        log.info(
            "task %s started: pid %d (supervisor pid %d), user %s, gpus %s, cpus %s",
            ref,
            pid,
            proc.pid,
            user if user is not None else f"uid {os.geteuid()} (the agent's)",
            list(gpu_indexes),
            cores,
        )
        t.waiter = asyncio.create_task(self._wait(t), name=f"task-wait-{ref}")
        if t.stop_reason:  # a stop (shutdown) arrived while the process was being spawned
            t.stopper = asyncio.create_task(self._stop(t, t.stop_grace_s), name=f"task-stop-{ref}")
        return StartResult(t.status, True)

    def _pick_cores(self, cpu_millis: int) -> list[int]:
        """The ceil(cpu/1000) least-used cores (ties: lowest index); none for a 0-CPU request."""
        n = min(len(self._cores), math.ceil(max(0, cpu_millis) / 1000))
        ranked = sorted(self._cores, key=lambda c: (self._core_load[c], c))
        return sorted(ranked[:n])

    def _check_gpus(self, spec: TaskSpec, gpu_indexes: Sequence[int]) -> tuple[int, int] | None:
        """Refuse a start that would over-commit a GPU; the share's (percent, memory) if it is one.

        :class:`InvalidArgument` for a share not on exactly one GPU; :class:`ResourceExhausted`
        (with the numbers) for a card already held whole, or a share that does not fit its card.
        """
        r = spec.resources
        if r.gpu_share <= 0:
            for i in gpu_indexes:
                holder = self._gpu_whole.get(i)
                if holder is not None:
                    raise ResourceExhausted(f"GPU {i} of node {self.node_id} is held by task {holder}")
                shares = self._gpu_shares.get(i)
                if shares:
                    percent = sum(p for p, _ in shares.values())
                    raise ResourceExhausted(
                        f"GPU {i} of node {self.node_id} carries GPU shares ({len(shares)} tasks, "
                        f"{percent}% of it): it is not free as a whole"
                    )
            return None
        if len(gpu_indexes) != 1:
            raise InvalidArgument(
                f"a GPU share ({r.gpu_share}%) runs on exactly one GPU, got indexes {list(gpu_indexes)}",
                field="gpu_indexes",
            )
        i = gpu_indexes[0]
        card = self._gpu_memory.get(i, 0)
        memory = share_memory_bytes(r, card)
        holder = self._gpu_whole.get(i)
        if holder is not None:
            raise ResourceExhausted(
                f"GPU {i} of node {self.node_id} is held whole by task {holder}: no room for a "
                f"{r.gpu_share}% share"
            )
        shares = self._gpu_shares.get(i, {})
        used = sum(p for p, _ in shares.values())
        if used + r.gpu_share > 100:
            raise ResourceExhausted(
                f"GPU {i} of node {self.node_id} cannot take a {r.gpu_share}% share: {used}% of it is "
                f"shared already ({len(shares)} tasks), {used + r.gpu_share}% > 100%"
            )
        used_memory = sum(m for _, m in shares.values())
        if card and used_memory + memory > card:
            raise ResourceExhausted(
                f"GPU {i} of node {self.node_id} cannot take a share of {memory // MIB} MiB of memory: "
                f"{used_memory // MIB} MiB of its {card // MIB} MiB are shared already"
            )
        return (r.gpu_share, memory)

    def _reserve(self, t: _Task) -> None:
        for c in t.status.cpu_set:
            if c in self._core_load:
                self._core_load[c] += 1
        if t.gpu_share is not None:
            self._gpu_shares.setdefault(t.status.gpu_indexes[0], {})[t.ref] = t.gpu_share
        else:
            for i in t.status.gpu_indexes:
                self._gpu_whole[i] = t.ref
        t.holds_cores = True

    def _release(self, t: _Task) -> None:
        if not t.holds_cores:
            return
        for c in t.status.cpu_set:
            if c in self._core_load:
                self._core_load[c] -= 1
        if t.gpu_share is not None:
            i = t.status.gpu_indexes[0]
            shares = self._gpu_shares.get(i, {})
            shares.pop(t.ref, None)
            if not shares:
                self._gpu_shares.pop(i, None)
        else:
            for i in t.status.gpu_indexes:
                if self._gpu_whole.get(i) == t.ref:
                    del self._gpu_whole[i]
        t.holds_cores = False

    async def _wait(self, t: _Task) -> None:
        """Until the task's shim ends; then the task's end as its ``exit.json`` says."""
        shim = t.shim
        assert shim is not None
        await shim.wait()
        ended = _read_exit(t.dir, t.status.pid)
        if ended is not None:
            self._ended(t, ended[0], self._clock.time())
            return
        # The shim was killed (or could not write): whatever is left of the task is unsupervised.
        killed = self._kill_task_group(t)
        gone = f"{LOST_UNSUPERVISED} (supervisor pid {shim.pid})"
        if killed:
            gone += "; the task was killed"
        self._task_gone(t, gone)

    def _ended(self, t: _Task, returncode: int, finished_at: float, *, notify: bool = True) -> None:
        """The task's main process ended with ``returncode`` (asyncio's: -N for signal N)."""
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
        self._transition(
            t, state=state, exit_code=code, message=message, finished_at=finished_at, notify=notify
        )

    def _kill_task_group(self, t: _Task) -> bool:
        """SIGKILL the task's process group when its main process is still the recorded one."""
        pid = t.status.pid
        # Records of agents before re-adoption have the psutil create time only.
        same = _same_start(pid, t.start_ticks) if t.start_ticks else _same_process(pid, t.create_time)
        if pid and same:
            _signal_group(pid, signal.SIGKILL)
            return True
        return False

    # ------------------------------------------------------------------ containers

    async def _start_container(
        self,
        t: _Task,
        spec: TaskSpec,
        user: TaskUser | None,
        cores: Sequence[int],
        share: tuple[int, int] | None,
    ) -> StartResult:
        """Start a task's container (runtime docker); FAILED with the reason when it cannot be."""
        ref, task_dir = t.ref, t.dir
        home = task_dir / HOME_DIR
        failure: tuple[int, str] | None = None
        cid = ""
        tls_env: dict[str, str] = {}
        try:
            # Empty, the task user's (as a process task's); the log pump appends to them.
            for stream in LOG_STREAMS:
                _open_output(task_dir / stream, user).close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(task_dir / EXIT_FILE)
            tls_env = self._prepare_task(task_dir, home, user)
        except OSError as exc:
            failure = (126, f"cannot prepare the task's files in {task_dir}: {exc.strerror or exc}")
        docker = self.docker
        if failure is None and docker is None:
            failure = (
                _docker.ENGINE_FAILURE_CODE,
                f"node {self.node_id} cannot run a runtime: docker task: {self.docker_note}",
            )
        if failure is None and docker is not None:
            run = self._container_run(spec, t.status.gpu_indexes, user, cores, share, home, tls_env)
            try:
                cid = await docker.run(run)
            except _docker.ContainerStartError as exc:
                failure = (exc.code, str(exc))
            except _docker.DockerError as exc:
                failure = (_docker.ENGINE_FAILURE_CODE, str(exc))
        if failure is not None:
            code, message = failure
            log.warning("task %s failed to start: %s", ref, message)
            with contextlib.suppress(OSError), open(task_dir / "stderr", "ab") as err:
                err.write(f"domainos-agent: {message}\n".encode())
            self._transition(
                t, state=TaskState.FAILED, exit_code=code, message=message, finished_at=self._clock.time()
            )
            return StartResult(t.status, False)
        t.container_id = cid
        self.started_total += 1
        self._transition(t, state=TaskState.RUNNING, started_at=self._clock.time())
        log.info(
            "task %s started: container %s of %s, gpus %s, cpus %s",
            ref,
            cid[:12],
            spec.container.image if spec.container is not None else "",
            list(t.status.gpu_indexes),
            list(cores),
        )
        t.waiter = asyncio.create_task(self._wait_container(t), name=f"task-wait-{ref}")
        if t.stop_reason:  # a stop (shutdown) arrived while the container was being started
            t.stopper = asyncio.create_task(self._stop_container(t, t.stop_grace_s), name=f"task-stop-{ref}")
        return StartResult(t.status, True)

    def _container_run(
        self,
        spec: TaskSpec,
        gpu_indexes: Sequence[int],
        user: TaskUser | None,
        cores: Sequence[int],
        share: tuple[int, int] | None,
        home: Path,
        tls_env: Mapping[str, str],
    ) -> _docker.ContainerRun:
        """The container of a task: its environment (the DomainOS variables naming the paths
        mounted into it), mounts, limits, labels and user."""
        assert spec.container is not None
        ref = spec.ref
        mounts: dict[str, tuple[str, bool]] = {str(home): (_docker.CONTAINER_HOME, False)}
        extra = {
            "DOMAINOS_RUNTIME": "docker",
            "DOMAINOS_NODE_HOST": self.advertise_host,
            "DOMAINOS_REGION": self.region,
            PROGRESS_ENV: f"{_docker.CONTAINER_HOME}/{PROGRESS_FILE}",
            # Inside, the container's GPUs are numbered from 0; the nvidia runtime reads this one
            # (so a job's env cannot widen it), "void" when the task has none.
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(gpu_indexes))),
            "NVIDIA_VISIBLE_DEVICES": ",".join(str(i) for i in gpu_indexes) or "void",
        }
        if self._checkpoint_fd is not None:
            mounts[str(self.checkpoint_dir)] = (_docker.CONTAINER_CHECKPOINTS, False)
            extra["DOMAINOS_CHECKPOINT_DIR"] = _docker.CONTAINER_CHECKPOINTS
        if self._datasets_fd is not None:
            mounts[str(self.datasets_dir)] = (_docker.CONTAINER_DATASETS, False)
            extra["DOMAINOS_DATASETS_DIR"] = _docker.CONTAINER_DATASETS
        if tls_env:
            mounts[str(self.task_dir(ref) / TLS_DIR)] = (_docker.CONTAINER_TLS, True)
            extra.update({k: f"{_docker.CONTAINER_TLS}/{os.path.basename(v)}" for k, v in tls_env.items()})
        if share is not None:
            extra.update(gpu_share_environment(*share))
        env = task_environment(
            spec,
            gpu_indexes,
            node_id=self.node_id,
            subdomain_id=self.subdomain_id,
            base={"HOME": _docker.CONTAINER_HOME},  # not the agent's PATH: the image has its own
            extra=extra,
        )
        uid, gid = (user.uid, user.gid) if user is not None else (os.geteuid(), os.getegid())
        return _docker.ContainerRun(
            name=f"domainos-{self.node_id}-{ref.job_id}-{ref.task_index}.{ref.attempt}",
            image=spec.container.image,
            command=spec.command,
            env=env,
            labels={
                _docker.LABEL_JOB: ref.job_id,
                _docker.LABEL_INDEX: str(ref.task_index),
                _docker.LABEL_ATTEMPT: str(ref.attempt),
                _docker.LABEL_NODE: self.node_id,
                _docker.LABEL_STATE_DIR: self._identity["state_dir"],
            },
            user=f"{uid}:{gid}",
            memory_bytes=spec.resources.memory_bytes,
            cpu_millis=spec.resources.cpu_millis,
            cpuset=list(cores) if self._apply_affinity else [],
            gpu_indexes=list(gpu_indexes),
            mounts=mounts,
        )

    async def _wait_container(self, t: _Task) -> None:
        """Follow the container's output until it ends; record how it ended, then remove it."""
        docker = self.docker
        assert docker is not None and t.container_id
        cid = t.container_id
        end: _docker.ContainerEnd | None = None
        unreachable_since = 0.0
        try:
            while end is None:
                t.pump = docker.follow_logs(cid, str(t.dir / "stdout"), str(t.dir / "stderr"))
                broke = await t.pump.done
                t.pump = None
                try:
                    inspected = await docker.inspect(cid)
                except _docker.DockerError as exc:
                    now = self._clock.monotonic()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since < DOCKER_LOST_AFTER_S:
                        await asyncio.sleep(DOCKER_RETRY_S)
                        continue
                    self._task_gone(t, f"the Docker engine stopped answering: {exc}")
                    return
                unreachable_since = 0.0
                if inspected is None:
                    self._task_gone(t, f"its container {cid[:12]} is gone")
                    return
                end = _docker.container_end(inspected)
                if end is not None and end.exit_code == 137 and not end.oom_killed and not t.stop_reason:
                    end = await self._oom_of(cid, end)
                if end is None:  # the stream broke while the container runs: follow it again
                    if broke:
                        log.warning("task %s: log stream of container %s broke: %s", t.ref, cid[:12], broke)
                    await asyncio.sleep(DOCKER_RETRY_S)
        finally:
            if t.pump is not None:  # the agent leaves the container running (shutdown)
                t.pump.close()
                t.pump = None
        self._container_ended(t, end, end.finished_at or self._clock.time())
        await docker.remove(cid)  # only once its end is recorded

    async def _oom_of(self, cid: str, end: _docker.ContainerEnd) -> _docker.ContainerEnd:
        """A container SIGKILLed by nobody here: the engine may hear of its OOM kill just after its
        exit (they are separate events), so it is asked again a few times before being believed."""
        docker = self.docker
        assert docker is not None
        for _ in range(OOM_SETTLE_CHECKS):
            await asyncio.sleep(DOCKER_RETRY_S / 2)
            with contextlib.suppress(_docker.DockerError):
                inspected = await docker.inspect(cid)
                again = _docker.container_end(inspected) if inspected is not None else None
                if again is not None and again.oom_killed:
                    return again
        return end

    def _task_gone(self, t: _Task, why: str) -> None:
        """A task whose process or container went without an exit status: CANCELLED when a stop was
        under way, else LOST."""
        log.warning("task %s: %s", t.ref, why)
        now = self._clock.time()
        if t.stop_reason:
            self._transition(
                t, state=TaskState.CANCELLED, message=f"{t.stop_reason} ({why})", finished_at=now
            )
        else:
            self._transition(t, state=TaskState.LOST, message=why, finished_at=now)

    def _container_ended(self, t: _Task, end: _docker.ContainerEnd, finished_at: float) -> None:
        """The container ended: its exit code as a process's (128 + N after signal N)."""
        code = end.exit_code
        killed = exit_code_of(128 - code)[1] if 128 < code < 128 + 65 else ""
        if end.oom_killed:
            limit = t.spec.resources.memory_bytes // MIB if t.spec is not None else 0
            killed = f"killed: out of memory (memory limit {limit} MiB)"
        if t.stop_reason:
            state = TaskState.CANCELLED
            message = f"{t.stop_reason} ({killed})" if killed else t.stop_reason
        elif code == 0:
            state, message = TaskState.SUCCEEDED, killed
        else:
            state = TaskState.FAILED
            message = killed or f"exited with code {code}"
        if end.error:
            message = f"{message}; {end.error}" if message else end.error
        log.info("task %s %s: exit code %d %s", t.ref, state.name.lower(), code, message)
        self._transition(t, state=state, exit_code=code, message=message, finished_at=finished_at)

    async def _stop_container(self, t: _Task, grace_s: float) -> None:
        """SIGTERM to the container now (its init passes it on), SIGKILL after ``grace_s``."""
        docker, waiter = self.docker, t.waiter
        assert docker is not None and waiter is not None
        await docker.kill(t.container_id, "SIGTERM")
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=max(0.0, grace_s))
            return
        except TimeoutError:
            log.info("task %s: container still running %.1fs after SIGTERM; sending SIGKILL", t.ref, grace_s)
        await docker.kill(t.container_id, "SIGKILL")
        await asyncio.shield(waiter)

    def _recover_container(self, t: _Task, data: Mapping[str, Any]) -> None:
        """Re-adopt a task's container (followed again under the same attempt; an ended one is
        recorded with its exit code), or report the task LOST and remove its container."""
        foreign = self._foreign(data)
        docker = self.docker
        if foreign or not t.container_id or t.status.state is not TaskState.RUNNING:
            if docker is not None and t.container_id and not foreign:
                self._background(docker.remove(t.container_id, force=True))
            message = f"{LOST_ON_RESTART}: {foreign}" if foreign else LOST_ON_RESTART
            self._lost_on_restart(t, message)
            return
        if docker is None:
            message = (
                f"{LOST_ON_RESTART}: its container {t.container_id[:12]} cannot be followed: "
                f"{self.docker_note}"
            )
            self._lost_on_restart(t, message)
            return
        self._readopt(t, self._wait_container(t))
        log.info("task %s re-adopted: container %s", t.ref, t.container_id[:12])
        if t.stop_reason:
            t.stopper = asyncio.create_task(
                self._stop_container(t, t.stop_grace_s), name=f"task-stop-{t.ref}"
            )

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _sweep_containers(self) -> None:
        """Remove the containers of this node and state directory that no running task owns
        (left by an agent that died between creating one and recording it, or before removing
        one whose end it had recorded)."""
        docker = self.docker
        assert docker is not None
        try:
            found = await docker.task_containers(self.node_id, self._identity["state_dir"])
        except Exception as exc:
            log.warning("cannot list this node's containers: %s", exc)
            return
        for c in found:
            labels = c.get("Labels") or {}
            try:
                ref = TaskRef(
                    str(labels[_docker.LABEL_JOB]),
                    int(labels[_docker.LABEL_INDEX]),
                    int(labels[_docker.LABEL_ATTEMPT]),
                )
            except (KeyError, ValueError):
                continue
            t = self._tasks.get(ref)
            if t is not None and not t.status.terminal and t.container_id in ("", c.get("Id")):
                continue  # running (or being started)
            log.warning(
                "removing container %s of task %s: no running task owns it", str(c.get("Id"))[:12], ref
            )
            await docker.remove(str(c.get("Id")), force=True)

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
        if t.shim is not None:
            self._persist(t)  # an agent restarted before the task ends finishes the stop
            log.info("task %s: stopping (%s), grace %.1fs", ref, reason, grace_s)
            t.stopper = asyncio.create_task(self._stop(t, grace_s), name=f"task-stop-{ref}")
        elif t.container_id and t.waiter is not None:
            self._persist(t)
            log.info("task %s: stopping its container (%s), grace %.1fs", ref, reason, grace_s)
            t.stopper = asyncio.create_task(self._stop_container(t, grace_s), name=f"task-stop-{ref}")
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
        task_dir = self._make_task_dir(ref)
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
        """SIGTERM to the task's group now, SIGKILL after ``grace_s`` -- sent by its shim, which
        alone knows whether the task is still unreaped (so the group is still the task's)."""
        shim, waiter = t.shim, t.waiter
        assert shim is not None and waiter is not None
        shim.signal(_shim.FORWARD_TERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=max(0.0, grace_s))
            return
        except TimeoutError:
            log.info("task %s: still running %.1fs after SIGTERM; sending SIGKILL", t.ref, grace_s)
        shim.signal(_shim.FORWARD_KILL)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=SHIM_KILL_TIMEOUT_S)
            return
        except TimeoutError:
            log.warning(
                "task %s: its supervisor (pid %d) did not end it within %.0fs; killing both",
                t.ref,
                shim.pid,
                SHIM_KILL_TIMEOUT_S,
            )
        self._kill_task_group(t)
        shim.signal(signal.SIGKILL)
        await asyncio.shield(waiter)

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
        """Load the ``status.json`` files a previous agent process left; call it on the event loop.

        Terminal, unacknowledged tasks come back as they were. A running task whose shim is still
        the same process (pid and start time) is re-adopted: RUNNING under the same attempt, its
        resources held, its end awaited (and a stop the previous agent began is finished). A task
        whose shim is gone ended while no agent ran: it gets the exit code of its ``exit.json``, or
        is LOST when there is none. A task that cannot be re-adopted (never reached RUNNING, a
        record of another node id, state or data directory, or boot) is killed (through its shim,
        and its process group when the recorded pid is still the same process) and reported LOST.
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
                create_time = float(data.get("pid_create_time") or 0.0)
                start_ticks = int(data.get("pid_start_ticks") or 0)
                shim_pid = int(data.get("shim_pid") or 0)
                shim_start = int(data.get("shim_start_ticks") or 0)
                share = data.get("gpu_share")
                gpu_share = (int(share[0]), int(share[1])) if share else None
                container_id = str(data.get("container_id") or "")
            except (OSError, ValueError, KeyError, TypeError, IndexError, InvalidArgument) as exc:
                log.warning("ignoring unreadable task record %s: %s", path, exc)
                continue
            if ref in self._tasks:
                continue
            t = _Task(ref=ref, spec=spec, status=status, dir=path.parent, create_time=create_time)
            t.start_ticks = start_ticks
            t.stop_reason = str(data.get("stop_reason") or "")
            t.stop_grace_s = float(data.get("stop_grace_s") or 0.0)
            t.gpu_share = gpu_share
            t.container_id = container_id
            self._tasks[ref] = t
            self._counts[status.state] += 1
            if not status.terminal:
                if container_id or (spec is not None and spec.container is not None):
                    self._recover_container(t, data)
                else:
                    self._recover_running(t, data, shim_pid, shim_start)
            recovered.append(t.status)
        if recovered:
            log.info("recovered %d unacknowledged tasks from %s", len(recovered), self.tasks_dir)
        if self.docker is not None:
            self._sweeper = asyncio.create_task(self._sweep_containers(), name="docker-sweep")
        return recovered

    def _recover_running(self, t: _Task, data: Mapping[str, Any], shim_pid: int, shim_start: int) -> None:
        ref, pid = t.ref, t.status.pid
        foreign = self._foreign(data)
        # Pids and start ticks name processes of one boot only (a record without a boot id has the
        # wall-clock create time only, which no process of another boot shares).
        same_boot = data.get("boot_id", self._identity["boot_id"]) == self._identity["boot_id"]
        shim = _Shim.find(shim_pid, shim_start) if shim_pid and same_boot else None
        if foreign or shim_pid == 0 or t.status.state is not TaskState.RUNNING:
            # Not ours to re-adopt (or never started): nothing may run unrecorded, so it is killed.
            if shim is not None:
                log.warning("task %s: killing the task of supervisor pid %d (not re-adopted)", ref, shim_pid)
                shim.signal(_shim.FORWARD_KILL)
                shim.close()
            if same_boot and self._kill_task_group(t):
                log.warning("task %s: killed pid %d left by the previous agent process", ref, pid)
            message = f"{LOST_ON_RESTART}: {foreign}" if foreign else LOST_ON_RESTART
            self._lost_on_restart(t, message)
            return
        if shim is None:
            ended = _read_exit(t.dir, pid)
            if ended is not None:
                log.info("task %s ended while no agent ran", ref)
                self._ended(t, ended[0], ended[1], notify=False)
                return
            killed = self._kill_task_group(t)
            message = f"agent restarted; {LOST_UNSUPERVISED} (supervisor pid {shim_pid})"
            if killed:
                message += "; the task was killed"
            log.warning("task %s: %s", ref, message)
            self._lost_on_restart(t, message)
            return
        t.shim = shim
        self._readopt(t, self._wait(t))
        log.info("task %s re-adopted: pid %d, supervisor pid %d", ref, pid, shim.pid)
        if t.stop_reason:
            log.info("task %s: finishing the stop the previous agent began (%s)", ref, t.stop_reason)
            t.stopper = asyncio.create_task(self._stop(t, t.stop_grace_s), name=f"task-stop-{ref}")

    def _lost_on_restart(self, t: _Task, message: str) -> None:
        """Record a recovered task LOST (the master hears of it with the recovered statuses)."""
        self._transition(
            t, state=TaskState.LOST, message=message, finished_at=self._clock.time(), notify=False
        )

    def _readopt(self, t: _Task, wait: Coroutine[Any, Any, None]) -> None:
        """Follow a recovered running task again, a process or a container alike: its GPU share
        (worked out again for a record written without one), its reservation and its waiter."""
        if (
            t.gpu_share is None
            and t.spec is not None
            and t.spec.resources.gpu_share > 0
            and t.status.gpu_indexes
        ):
            card = self._gpu_memory.get(t.status.gpu_indexes[0], 0)
            t.gpu_share = (t.spec.resources.gpu_share, share_memory_bytes(t.spec.resources, card))
        self._reserve(t)
        self.adopted_total += 1
        t.waiter = asyncio.create_task(wait, name=f"task-wait-{t.ref}")

    def _foreign(self, data: Mapping[str, Any]) -> str:
        """Why a record was not this agent's to re-adopt ("" when it was)."""
        node = str(data.get("node_id", ""))
        if node != self.node_id:
            return f"it ran for node {node!r}, this agent is node {self.node_id!r}"
        for key, what in (
            ("state_dir", "state directory"),
            ("data_dir", "data directory"),
            ("boot_id", "boot of the machine"),
        ):
            then, now = data.get(key), self._identity[key]
            if then != now:
                return f"it ran under another {what} ({then!r}, now {now!r})"
        return ""

    # ------------------------------------------------------------------ shutdown

    async def shutdown(
        self, *, stop_tasks: bool, grace_s: float, reason: str = "agent shutting down"
    ) -> None:
        """Stop every running task (or, with ``stop_tasks=False``, leave them running)."""
        self._closed = True
        if self._sweeper is not None:
            await asyncio.gather(self._sweeper, *self._cleanups, return_exceptions=True)
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
        if self._datasets_fd is not None:
            os.close(self._datasets_fd)
            self._datasets_fd = None
        if self._checkpoint_fd is not None:
            os.close(self._checkpoint_fd)
            self._checkpoint_fd = None

    # ------------------------------------------------------------------ invariants

    def validate(self) -> None:
        """Check the runner's invariants (tests call this after every step)."""
        load = {c: 0 for c in self._cores}
        counts = {s: 0 for s in TaskState}
        whole: dict[int, TaskRef] = {}
        shares: dict[int, dict[TaskRef, tuple[int, int]]] = {}
        for ref, t in self._tasks.items():
            assert t.ref == ref == t.status.ref, f"task key {ref} does not match {t.status.ref}"
            counts[t.status.state] += 1
            assert t.holds_cores == (not t.status.terminal), f"task {ref}: cores held while {t.status.state}"
            if t.holds_cores:
                for c in t.status.cpu_set:
                    load[c] += 1
                if t.gpu_share is not None:
                    shares.setdefault(t.status.gpu_indexes[0], {})[ref] = t.gpu_share
                else:
                    for i in t.status.gpu_indexes:
                        assert i not in whole, f"GPU {i} held whole by {whole[i]} and {ref}"
                        whole[i] = ref
            if t.status.state is TaskState.RUNNING:
                assert (t.shim is not None and t.status.pid > 0) or t.container_id, (
                    f"task {ref}: running without a process or container"
                )
            if t.status.terminal and t.shim is not None:
                assert t.shim.exited, f"task {ref}: terminal with a live supervisor"
        assert load == self._core_load, f"core load {self._core_load} != {load}"
        assert whole == self._gpu_whole, f"whole GPUs {self._gpu_whole} != {whole}"
        assert shares == self._gpu_shares, f"GPU shares {self._gpu_shares} != {shares}"
        for i, held in shares.items():
            assert i not in whole, f"GPU {i} held whole and shared"
            assert sum(p for p, _ in held.values()) <= 100, f"GPU {i} shared over 100%: {held}"
            card = self._gpu_memory.get(i, 0)
            assert not card or sum(m for _, m in held.values()) <= card, f"GPU {i} memory over-shared"
        assert counts == self._counts, f"state counts {self._counts} != {counts}"

    # ------------------------------------------------------------------ isolation

    def _check_task_tls(self, private_files: Sequence[str]) -> None:
        files = self._task_tls
        if files is None:
            return
        from domainos.security import check_usable

        ident = check_usable(files)
        if ident is None or ident.role != "client":
            raise ConfigError(
                f"{files.cert} names {ident or 'no DomainOS identity'}; tasks get a certificate of "
                "role client, never a component's",
                field="task_client_tls.cert",
            )
        key = os.path.realpath(files.key)
        if any(os.path.realpath(p) == key for p in private_files):
            raise ConfigError(
                f"{files.key} is the agent's own key; tasks get a client key of their own",
                field="task_client_tls.key",
            )

    def _prepare_dirs(self) -> None:
        try:
            _make_dir(self.state_dir, self._dir_mode, None, parents=True, follow=True)
            _make_dir(self.tasks_dir, self._dir_mode, None)
        except OSError as exc:
            raise Unavailable(
                f"cannot prepare the state directory {self.state_dir}: {exc.strerror or exc}"
            ) from exc

    def _check_isolation(self, private_files: Sequence[str]) -> None:
        if self.users is None:
            return
        for user in self.users.all():
            for path in private_files:
                if readable_by(user, path):
                    raise ConfigError(
                        f"the agent's key {path} is readable by the task user {user}; tasks must "
                        "never read a component key: make it mode 0600 (or its directory 0700)"
                    )
            blocked = blocking_dir(user, self.tasks_dir / "job")
            if blocked is not None:
                mode = _mode_of(blocked)
                log.warning(
                    "task user %s cannot traverse %s (%s): its tasks start in their directory but "
                    "cannot reach it by path ($HOME, DOMAINOS_TLS_* files); put state_dir under "
                    "directories it can traverse, e.g. /var/lib/domainos/agent",
                    user,
                    blocked,
                    mode,
                )
        log.info(
            "tasks run as %s%s, never as root",
            self.users.default,
            "".join(f"; tenant {t} as {u}" for t, u in sorted(self.users.tenants.items())),
        )

    def _make_task_dir(self, ref: TaskRef) -> Path:
        """``tasks/<job>/<index>.<attempt>/``: the agent's, traversable (not listable) by task users."""
        _make_dir(self.tasks_dir, self._dir_mode, None)
        _make_dir(self.tasks_dir / ref.job_id, self._dir_mode, None)
        task_dir = self.task_dir(ref)
        _make_dir(task_dir, self._dir_mode, None)
        return task_dir

    def _prepare_task(
        self, task_dir: Path, home: Path, user: TaskUser | None, fds: list[int] | None = None
    ) -> dict[str, str]:
        """The task's home (its own, 0700) and its copy of the client TLS files; the env naming them.

        When the task user cannot reach the task's directory by path (a state directory under
        ``/root``), the files are named through an open descriptor of their directory that the
        task inherits (``/proc/self/fd/N/ca.crt``), appended to ``fds``.
        """
        _make_dir(home, _PRIVATE_DIR_MODE, user)
        files = self._task_tls
        if files is None:
            return {}
        tls = task_dir / TLS_DIR
        _make_dir(tls, self._dir_mode, None)
        base = str(tls)
        if user is not None and fds is not None and blocking_dir(user, tls / "x") is not None:
            fd = os.open(tls, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(fd)
            base = f"/proc/self/fd/{fd}"
        env: dict[str, str] = {}
        # Read at every start: a rotated client certificate reaches the next tasks.
        for var, src, name, mode in (
            ("DOMAINOS_TLS_CA", files.ca, "ca.crt", 0o444),
            ("DOMAINOS_TLS_CERT", files.cert, "client.crt", 0o444),
            ("DOMAINOS_TLS_KEY", files.key, "client.key", 0o400),
        ):
            dst = tls / name
            _write_file(dst, Path(src).read_bytes(), mode, user)
            env[var] = f"{base}/{name}"
        return env

    def _open_datasets_dir(self) -> int | None:
        """``<data_dir>/datasets``, created if missing, held open for the agent's lifetime.

        Tasks create dataset directories in it and keep shards there (the agent reports what it
        finds). When tasks run as other users it is ``1733``: any task user may create a dataset
        directory (its own, 0700 by the task umask) and enter it, none may list the directory or
        remove another's (sticky), as with ``/tmp``. None (logged) when it cannot be prepared.
        """
        mode = 0o1733 if self.users is not None else _PRIVATE_DIR_MODE
        try:
            self.datasets_dir.parent.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            _make_dir(self.datasets_dir, mode, None, follow=True)
            return os.open(self.datasets_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning(
                "cannot prepare the datasets directory %s (%s): tasks get no DOMAINOS_DATASETS_DIR",
                self.datasets_dir,
                exc.strerror or exc,
            )
            return None

    def _open_shared_dir(self, path: Path, what: str, var: str) -> int | None:
        """A directory every task writes its own subdirectory in (``1733`` with task users, as
        the datasets directory), created if missing and held open; None (logged) when it cannot be."""
        mode = 0o1733 if self.users is not None else _PRIVATE_DIR_MODE
        try:
            path.parent.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            _make_dir(path, mode, None, follow=True)
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning(
                "cannot prepare the %s directory %s (%s): tasks get no %s",
                what,
                path,
                exc.strerror or exc,
                var,
            )
            return None

    def _shared_dir_env(
        self, var: str, path: Path, fd: int | None, user: TaskUser | None, fds: list[int]
    ) -> dict[str, str]:
        if fd is None:
            return {}
        if user is not None and blocking_dir(user, path / "x") is not None:
            fds.append(fd)
            return {var: f"/proc/self/fd/{fd}"}
        return {var: str(path)}

    def _progress_env(self, home: Path, user: TaskUser | None, fds: list[int]) -> dict[str, str]:
        """Where the task writes its progress (``dsdk.report_progress``): in its own home."""
        if user is not None and blocking_dir(user, home / "x") is not None:
            fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(fd)
            return {PROGRESS_ENV: f"/proc/self/fd/{fd}/{PROGRESS_FILE}"}
        return {PROGRESS_ENV: str(home / PROGRESS_FILE)}

    def poll_progress(self) -> list[TaskStatus]:
        """Running tasks whose progress file changed, with the new progress (one ``stat`` per
        running task; the file is read only when it changed). Kept in memory, not in status.json."""
        changed: list[TaskStatus] = []
        for t in self._tasks.values():
            if t.status.state is not TaskState.RUNNING:
                continue
            if t.progress is None:
                t.progress = ProgressFile(t.dir / HOME_DIR / PROGRESS_FILE)
            p = t.progress.poll()
            if p is not None:
                t.status = replace(t.status, progress=p)
                changed.append(t.status)
        return changed

    def _data_plane_env(self, user: TaskUser | None, fds: list[int]) -> dict[str, str]:
        """What a task needs to serve peers and keep data on this node (see ``dsdk``)."""
        env = {
            "DOMAINOS_NODE_HOST": self.advertise_host,
            "DOMAINOS_REGION": self.region,
            # The agent's interpreter: it has DomainOS (and the DSDK) installed.
            "DOMAINOS_PYTHON": sys.executable,
        }
        if self._datasets_fd is not None:
            if user is not None and blocking_dir(user, self.datasets_dir / "x") is not None:
                fds.append(self._datasets_fd)
                env["DOMAINOS_DATASETS_DIR"] = f"/proc/self/fd/{self._datasets_fd}"
            else:
                env["DOMAINOS_DATASETS_DIR"] = str(self.datasets_dir)
        return env

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
            "pid_start_ticks": t.start_ticks,
            "shim_pid": t.shim.pid if t.shim is not None else 0,
            "shim_start_ticks": t.shim.start_ticks if t.shim is not None else 0,
            "container_id": t.container_id,
            **self._identity,
            "gpu_indexes": list(s.gpu_indexes),
            "cpu_set": list(s.cpu_set),
            "gpu_share": list(t.gpu_share) if t.gpu_share is not None else None,
            "stop_reason": t.stop_reason,
            "stop_grace_s": t.stop_grace_s,
            "acked": acked,
            "spec": _spec_to_dict(t.spec) if t.spec is not None else None,
        }
        path = t.dir / STATUS_FILE
        tmp = t.dir / f".{STATUS_FILE}.tmp"
        try:
            # 0600: the record holds the job's env (its DOMAINOS_TOKEN included).
            _write_file(tmp, json.dumps(data).encode(), _FILE_MODE, None)
            os.replace(tmp, path)
        except OSError as exc:  # a full disk must not take the agent down; the parent still hears
            log.error("task %s: cannot write %s: %s", t.ref, path, exc)


def _spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """The spec as ``status.json`` stores it (the identity is stored beside it)."""
    r = spec.resources
    return {
        "command": list(spec.command),
        "env": dict(spec.env),
        "resources": r.to_dict(),
        "tenant": spec.tenant,
        "master_address": spec.master_address,
        "job_name": spec.job_name,
        "replicas": spec.replicas,
        "image": spec.container.image if spec.container is not None else "",
    }


def _spec_from_dict(ref: TaskRef, data: Mapping[str, Any]) -> TaskSpec:
    r = data.get("resources") or {}
    return TaskSpec(
        ref=ref,
        command=tuple(str(a) for a in data.get("command") or ()),
        env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
        resources=Resources.from_dict(r),
        tenant=str(data.get("tenant", "")),
        master_address=str(data.get("master_address", "")),
        job_name=str(data.get("job_name", "")),
        replicas=int(data.get("replicas", 1)),
        container=ContainerSpec(str(data["image"])) if data.get("image") else None,
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


def _make_dir(
    path: Path, mode: int, owner: TaskUser | None, *, parents: bool = False, follow: bool = False
) -> None:
    """Create ``path`` (if missing) with exactly ``mode``, owned by ``owner`` (None: the agent).

    Only used inside directories the agent owns, so nothing can swap ``path`` between the checks;
    ``follow`` (the configured state directory only) accepts a symlink to a directory.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=_PRIVATE_DIR_MODE, parents=parents)
    st = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(20, "not a directory", str(path))
    if owner is not None and (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def _open_fd(path: Path, mode: int, owner: TaskUser | None) -> int:
    """Open ``path`` for writing (truncated; never through a symlink) with ``mode`` and ``owner``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
    try:
        if owner is not None:
            os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_output(path: Path, owner: TaskUser | None) -> Any:
    """A task's stdout or stderr file: 0600 and the task user's (so ``/dev/stdout`` reopens work)."""
    return os.fdopen(_open_fd(path, _FILE_MODE, owner), "wb")


def _write_file(path: Path, data: bytes, mode: int, owner: TaskUser | None) -> None:
    with os.fdopen(_open_fd(path, mode, owner), "wb") as f:
        f.write(data)


def _mode_of(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}"


class _Shim:
    """A task's supervisor (:mod:`node_agent._shim`) as the agent holds it: its identity, a pidfd
    (signals through it never reach a process that reused the pid; it polls readable when the
    shim ends), and the :class:`subprocess.Popen` when this agent started it.

    Not asyncio's subprocess transport: one that is garbage-collected (an agent that shuts down
    leaving its tasks running) kills its process. A ``Popen`` left behind is only reaped.
    """

    def __init__(
        self,
        pid: int,
        start_ticks: int,
        *,
        pidfd: int | None,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        self.pidfd = pidfd
        self.popen = popen
        #: True once it has been seen to end.
        self.exited = False

    @classmethod
    def of_child(cls, popen: subprocess.Popen[bytes]) -> _Shim:
        # Our unreaped child: its pid cannot be reused before we reap it.
        return cls(popen.pid, _start_ticks(popen.pid), pidfd=_pidfd_open(popen.pid), popen=popen)

    @classmethod
    def find(cls, pid: int, start_ticks: int) -> _Shim | None:
        """The shim ``pid`` when it still runs and started at ``start_ticks``; None when it ended
        (a zombie has ended) or the pid now names another process."""
        if not _alive(pid, start_ticks):
            return None
        pidfd = _pidfd_open(pid)
        if not _alive(pid, start_ticks):  # it ended, or the pid was reused, before the pidfd
            if pidfd is not None:
                os.close(pidfd)
            return None
        return cls(pid, start_ticks, pidfd=pidfd)

    def signal(self, sig: int) -> None:
        if self.exited:
            return
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.popen is not None:
                if self.popen.poll() is None:
                    os.kill(self.pid, sig)
            elif _alive(self.pid, self.start_ticks):
                os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait(self) -> None:
        """Until it ends (its pidfd polls readable; without one, checked every :data:`POLL_S`)."""
        try:
            if self.pidfd is not None:
                await _readable(self.pidfd)
            else:
                while self._running():
                    await asyncio.sleep(POLL_S)
            if self.popen is not None:
                self.popen.wait()  # it has ended: only reaps it
            self.exited = True
        finally:
            self.close()

    def _running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _alive(self.pid, self.start_ticks)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


async def _readable(fd: int) -> None:
    """Until ``fd`` polls readable (a pidfd: its process has ended)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _pidfd_open(pid: int) -> int | None:
    """A pidfd of ``pid`` (close-on-exec); None where the kernel has none, or ``pid`` is gone."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


async def _spawn_shim(
    orders: Mapping[str, Any], *, stdout: Any, stderr: Any, pass_fds: Sequence[int] = ()
) -> tuple[subprocess.Popen[bytes], int, str]:
    """Start a task through its shim; (the shim's process, the task's pid, a warning or "").

    The shim is started the usual (vfork) way -- never ``fork()`` here: in a process with gRPC's
    threads that runs gRPC's fork handlers, which crash the child now and then -- in a session of
    its own, with an empty environment and ``-I -S``: the job's ``LD_PRELOAD`` or ``PYTHONPATH``
    must not reach anything that runs as root. Its orders (the job's environment, its token
    included) travel in an anonymous memory file, not argv. Raises :class:`OSError` (the
    program's, the directory's, or the user switch's) when the task could not be started, after
    reaping the shim.
    """
    data = _orders_fd(marshal.dumps(dict(orders)))
    read_end, write_end = os.pipe()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", SHIM_PATH, str(data), str(write_end)],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env={},
            cwd="/",
            start_new_session=True,
            pass_fds=(data, write_end, *pass_fds),
        )
    except OSError as exc:
        os.close(read_end)
        raise _ShimError(
            exc.errno or 0, f"cannot start the task supervisor {sys.executable}: {exc.strerror or exc}"
        ) from exc
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
        os.close(data)
    report = await asyncio.to_thread(_read_to_end, read_end)
    if not report:
        code = await asyncio.to_thread(popen.wait)
        raise _ShimError(0, f"the task supervisor exited with code {code} before starting the task")
    message = marshal.loads(report)
    if message[0] == "ok":
        return popen, int(message[1]), str(message[2])
    await asyncio.to_thread(popen.wait)
    _, stage, errno, text, filename = message
    if stage == "exec":
        raise OSError(errno, text, filename or orders["argv"][0])
    if stage == "chdir":
        raise OSError(errno, text, orders["cwd"])
    if stage == "setuid":
        raise _UserSwitchError(errno, f"cannot switch to the task user: {text}")
    raise _ShimError(errno, f"cannot start the task ({stage}): {text}")


def _orders_fd(payload: bytes) -> int:
    """A descriptor (close-on-exec, at offset 0) of an anonymous file holding ``payload``."""
    try:
        fd = os.memfd_create("domainos-task", os.MFD_CLOEXEC)
    except (OSError, AttributeError):  # no memfd: an unlinked file
        fd = os.dup(tempfile.TemporaryFile().fileno())  # noqa: SIM115 - closed when it is unlinked
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_exit(task_dir: Path, pid: int) -> tuple[int, float] | None:
    """(returncode, finished_at) from the shim's ``exit.json`` of task ``pid``; None when there is
    none (or it names another pid: an earlier run of the attempt)."""
    try:
        data = json.loads((task_dir / EXIT_FILE).read_text(encoding="utf-8"))
        if int(data["pid"]) != pid:
            return None
        return int(data["returncode"]), float(data["finished_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


class _ShimError(OSError):
    """The shim could not be started, or failed before starting the task."""


class _UserSwitchError(OSError):
    """The helper could not read its orders or become the task user (nothing of the task ran)."""


def _read_to_end(fd: int) -> bytes:
    """Everything until end-of-file; closes ``fd`` (the reading thread owns it)."""
    chunks: list[bytes] = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _spawn_failure(exc: OSError, program: str, cwd: str, user: TaskUser | None) -> tuple[int, str]:
    """(exit code, message) for a task whose process could not be started."""
    as_user = f" (the task runs as {user})" if user is not None else ""
    if isinstance(exc, _ShimError):
        return 126, f"cannot start {program}: {exc.strerror}"
    if isinstance(exc, _UserSwitchError):
        return 126, f"cannot start {program}{as_user}: {exc.strerror}"
    if exc.filename == cwd:
        return 126, f"cannot enter the task's directory {cwd}{as_user}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return 127, f"command not found: {program}"
    if isinstance(exc, PermissionError):
        return 126, f"permission denied: {program}{as_user}"
    return 126, f"cannot execute {program}{as_user}: {exc.strerror or exc}"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _create_time(pid: int) -> float:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) of ``pid`` from ``/proc``; None: gone."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2 :].split()  # the name (in parentheses) may hold spaces
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks after boot (0: gone)."""
    st = _proc_stat(pid)
    return st[1] if st is not None else 0


def _same_start(pid: int, start_ticks: int) -> bool:
    """True when ``pid`` (even a zombie) started at ``start_ticks``: not a reused pid."""
    st = _proc_stat(pid)
    return bool(start_ticks) and st is not None and st[1] == start_ticks


def _alive(pid: int, start_ticks: int) -> bool:
    """True when ``pid`` started at ``start_ticks`` and has not ended (a zombie has)."""
    st = _proc_stat(pid)
    return bool(start_ticks) and st is not None and st[1] == start_ticks and st[0] not in ("Z", "X")


def _same_process(pid: int, create_time: float) -> bool:
    """True when ``pid`` is alive and started at ``create_time`` (not a reused pid)."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    if not create_time:
        return False
    try:
        return abs(float(psutil.Process(pid).create_time()) - create_time) < 0.05
    except psutil.Error:
        return False
