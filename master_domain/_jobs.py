"""The job state machine: pure decisions, no I/O, time from an injected clock.

:class:`JobTable` holds every *active* job (not yet finished, or finished with tasks still being
stopped). Callers feed it events with :meth:`JobTable.handle` and carry out the effects it
returns, in order: persist the listed jobs, *then* send the commands and the acks (an ack tells a
sub-domain it may forget a terminal state, so it must follow the durable write).

Task identity is a :class:`domainos.model.TaskRef` ``(job_id, task_index, attempt)``. Every new
placement of a task index gets a fresh attempt number, so a late message about an older placement
can never be mistaken for the current one: updates for an old attempt are ignored (a still-running
old attempt is told to stop).

Retry policy: a FAILED attempt is retried while ``exit_retries < spec.retry.on_exit``, a LOST one
while ``lost_retries < spec.retry.on_lost``; otherwise the job FAILS and its other tasks are
stopped. A REJECTED attempt (the sub-domain had no room: a mis-dispatch) and a placement not
confirmed in time go back to PENDING without spending a retry.

Gangs (``spec.is_gang``): the first ``spec.gang_min`` tasks (every task of a training job) are the
*gang*; they are placed together by a reservation (:class:`StartGang` gives them one fresh attempt,
:class:`PlaceGang` marks them ASSIGNED once every part is committed, without a ``PlaceTask``: the
sub-domains start them at the commit; :class:`GangNotPlaced` records a failed try). A gang never
runs partly: when one of its tasks fails, is lost, rejected or not confirmed and the job may go on,
*every* gang task is stopped and queued again as one new attempt (the retry is charged to the
task that caused it, as for a single task), and the gang's reservations are released.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from domainos.clock import Clock, SystemClock
from domainos.jobspec import JobSpec
from domainos.model import TaskProgress, TaskRef
from master_domain._sched._reserve import reservation_id

log = logging.getLogger(__name__)


class TaskState(enum.StrEnum):
    """State of a task's current attempt (``common.proto`` ``TaskState`` without the prefix)."""

    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"
    REJECTED = "REJECTED"


class JobState(enum.StrEnum):
    """State of a job (``master.proto`` ``JobState`` without the prefix)."""

    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


#: Task states the master keeps as final for an attempt.
TERMINAL_TASK_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST})
#: Reported states a sub-domain keeps until acknowledged (REJECTED is final for its attempt).
ACKED_TASK_STATES = TERMINAL_TASK_STATES | {TaskState.REJECTED}
LIVE_TASK_STATES = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})
#: Longest task message kept from a report (records of big jobs must fit in one store value).
MAX_MESSAGE = 300
TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: Straggler checks: how often, below what share of the gang's median rate a task is slow (two
#: checks in a row make it a straggler), and above what share it is normal again.
STRAGGLER_CHECK_S = 15.0
STRAGGLER_RATIO = 0.5
STRAGGLER_CLEAR = 0.8


def lost_after(spec: JobSpec, grace_s: float) -> float:
    """How long a job's tasks in an unreachable sub-domain are left alone: its
    ``disconnect.lost_after``, else the master's ``grace_s``."""
    pol = spec.disconnect
    return pol.lost_after_s if pol is not None and pol.lost_after_s else grace_s


@dataclass(slots=True)
class Task:
    """One replica of a job at its current attempt."""

    index: int
    attempt: int = 0
    state: TaskState = TaskState.PENDING
    node_id: str = ""
    subdomain_id: str = ""
    region: str = ""
    exit_code: int = 0
    message: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_retries: int = 0
    lost_retries: int = 0
    #: Attempts moved off a draining node (no retry spent).
    drains: int = 0
    #: The sub-domain has reported this attempt (ASSIGNED or later).
    confirmed: bool = False
    #: A stop was sent for this attempt; whatever it ends in is final.
    stopping: bool = False
    #: GPU model of the node shape the attempt was placed on (quota and power charges use it).
    gpu_model: str = ""
    # Not persisted: where the previous attempt ran (for its logs) and which sub-domains
    # rejected this task, with the monotonic time (skip them until a newer summary).
    last_run: tuple[int, str, str] | None = None
    rejected_by: dict[str, float] = field(default_factory=dict)
    #: What the current attempt last said about its progress (from its sub-domain).
    progress: TaskProgress | None = None
    #: Running well behind the rest of its gang (see :meth:`JobTable.check_stragglers`).
    straggler: bool = False
    #: Wall time its last attempt was interrupted, until the next one runs (0 = not down).
    down_since: float = 0.0
    #: (step, step_at) at the last straggler check, and checks in a row it was slow.
    rate_mark: tuple[int, float] | None = None
    slow_checks: int = 0

    @property
    def live(self) -> bool:
        """Placed and not finished."""
        return self.state in LIVE_TASK_STATES

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_TASK_STATES

    def to_list(self, *, with_message: bool = True) -> list[Any]:
        return [
            self.index,
            self.attempt,
            self.state.value,
            self.node_id,
            self.subdomain_id,
            self.region,
            self.exit_code,
            self.message if with_message else "",
            round(self.started_at, 3),
            round(self.finished_at, 3),
            self.exit_retries,
            self.lost_retries,
            int(self.confirmed) | (int(self.stopping) << 1),
        ] + ([self.gpu_model, self.drains] if self.drains else [self.gpu_model] if self.gpu_model else [])

    @classmethod
    def from_list(cls, row: list[Any]) -> Task:
        flags = int(row[12])
        return cls(
            index=int(row[0]),
            attempt=int(row[1]),
            state=TaskState(row[2]),
            node_id=str(row[3]),
            subdomain_id=str(row[4]),
            region=str(row[5]),
            exit_code=int(row[6]),
            message=str(row[7]),
            started_at=float(row[8]),
            finished_at=float(row[9]),
            exit_retries=int(row[10]),
            lost_retries=int(row[11]),
            confirmed=bool(flags & 1),
            stopping=bool(flags & 2),
            gpu_model=str(row[13]) if len(row) > 13 else "",
            drains=int(row[14]) if len(row) > 14 else 0,
        )


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """A validated spec as plain JSON-able data (the store form): :meth:`JobSpec.to_dict`."""
    return spec.to_dict()


def spec_from_dict(data: Mapping[str, Any]) -> JobSpec:
    """Inverse of :func:`spec_to_dict` (trusted input: it was validated before it was stored).

    Records written before gangs, training and locality existed load with those fields unset.
    """
    return JobSpec.from_dict(data)


@dataclass(slots=True)
class Job:
    """A job: its spec, its state and one :class:`Task` per replica."""

    job_id: str
    spec: JobSpec
    request_id: str = ""
    state: JobState = JobState.PENDING
    message: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    tasks: list[Task] = field(default_factory=list)
    cancel_requested: bool = False
    misdispatches: int = 0
    #: Who submitted it (``token:<id>``, see :class:`master_domain._auth.Principal`).
    created_by: str = ""
    #: The job-scoped credential (``dos_...``) its tasks get as ``DOMAINOS_TOKEN``, and its id.
    #: Kept in the record so tasks placed after a master restart get it too; as sensitive as the
    #: job itself. Dropped from the record once the job is finished (the token is revoked then).
    token: str = ""
    token_id: str = ""
    #: Data-plane totals reported by the job's DSDK driver (``JobStats`` field -> value).
    stats: dict[str, float] = field(default_factory=dict)
    #: Goodput: when its first task started; task-seconds lost (work since the last checkpoint
    #: of interrupted attempts) and spent recovering (interruption -> running again); how many
    #: attempts were interrupted.
    first_started_at: float = 0.0
    lost_s: float = 0.0
    recovery_s: float = 0.0
    interruptions: int = 0
    #: Task indexes currently flagged as stragglers (not stored).
    stragglers: tuple[int, ...] = ()
    #: Bumped on every change that must be persisted (not stored).
    version: int = 0
    #: Number of tasks in each state, kept in step with ``tasks`` (not stored).
    counts: Counter[TaskState] = field(default_factory=Counter)
    done: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES

    @property
    def live_tasks(self) -> int:
        return self.counts[TaskState.ASSIGNED] + self.counts[TaskState.RUNNING]

    def to_dict(self, *, task_messages: bool = True) -> dict[str, Any]:
        """The JSON form stored at ``/domainos/master/jobs/<job_id>``.

        Tasks are stored as positional rows to keep a 10,000-replica job under the store's
        value limit: ``[index, attempt, state, node, subdomain, region, exit_code, message,
        started_at, finished_at, exit_retries, lost_retries, flags]``. ``task_messages=False``
        leaves out the per-task messages (the fallback when a record would be too large).
        """
        return {
            "job_id": self.job_id,
            "request_id": self.request_id,
            "spec": spec_to_dict(self.spec),
            "state": self.state.value,
            "message": self.message,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "cancel_requested": self.cancel_requested,
            "misdispatches": self.misdispatches,
            "created_by": self.created_by,
            "token": "" if self.terminal else self.token,
            "token_id": self.token_id,
            "tasks": [t.to_list(with_message=task_messages) for t in self.tasks],
            **({"stats": dict(self.stats)} if self.stats else {}),
            **(
                {
                    "goodput": {
                        "first_started_at": self.first_started_at,
                        "lost_s": round(self.lost_s, 3),
                        "recovery_s": round(self.recovery_s, 3),
                        "interruptions": self.interruptions,
                    }
                }
                if self.first_started_at
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        tasks = [Task.from_list(row) for row in data["tasks"]]
        job = cls(
            job_id=data["job_id"],
            spec=spec_from_dict(data["spec"]),
            request_id=data.get("request_id", ""),
            state=JobState(data["state"]),
            message=data.get("message", ""),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            finished_at=float(data.get("finished_at", 0.0)),
            tasks=tasks,
            cancel_requested=bool(data.get("cancel_requested", False)),
            misdispatches=int(data.get("misdispatches", 0)),
            created_by=str(data.get("created_by", "")),
            token=str(data.get("token", "")),
            token_id=str(data.get("token_id", "")),
            stats={str(k): float(v) for k, v in (data.get("stats") or {}).items()},
        )
        goodput = data.get("goodput") or {}
        job.first_started_at = float(goodput.get("first_started_at", 0.0))
        job.lost_s = float(goodput.get("lost_s", 0.0))
        job.recovery_s = float(goodput.get("recovery_s", 0.0))
        job.interruptions = int(goodput.get("interruptions", 0))
        job.counts = Counter(t.state for t in tasks)
        return job

    def goodput(self, now: float) -> dict[str, float]:
        """Where the job's time went, per task: wall, productive, lost, recovery (seconds), the
        effective ratio (productive / wall) and the interruptions (the ``Goodput`` message)."""
        if not self.first_started_at:
            return {
                "wall_s": 0.0,
                "productive_s": 0.0,
                "lost_s": 0.0,
                "recovery_s": 0.0,
                "effective_ratio": 0.0,
                "interruptions": 0,
            }
        end = self.finished_at or now
        n = max(1, len(self.tasks))
        wall = max(0.0, end - self.first_started_at)
        down = sum(max(0.0, end - t.down_since) for t in self.tasks if t.down_since)
        lost = self.lost_s / n
        recovery = (self.recovery_s + down) / n
        productive = max(0.0, wall - lost - recovery)
        return {
            "wall_s": wall,
            "productive_s": productive,
            "lost_s": lost,
            "recovery_s": recovery,
            "effective_ratio": productive / wall if wall > 0 else 0.0,
            "interruptions": self.interruptions,
        }


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class TaskReport:
    """A sub-domain's report of one task attempt (from ``TaskStatus``)."""

    job_id: str
    index: int
    attempt: int
    state: TaskState
    exit_code: int = 0
    message: str = ""
    node_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    #: Stopped by its sub-domain to drain the node (requeued without spending a retry).
    drained: bool = False
    #: What the task last said about its progress (None: nothing new).
    progress: TaskProgress | None = None

    def __post_init__(self) -> None:
        if len(self.message) > MAX_MESSAGE:  # a report's text is kept, but bounded
            object.__setattr__(self, "message", self.message[: MAX_MESSAGE - 3] + "...")

    @property
    def ref(self) -> TaskRef:
        return TaskRef(self.job_id, self.index, self.attempt)


@dataclass(frozen=True, slots=True)
class TaskUpdates:
    """A batch of reports from one sub-domain."""

    subdomain_id: str
    reports: tuple[TaskReport, ...]


@dataclass(frozen=True, slots=True)
class SubdomainHello:
    """A sub-domain (re)connected and listed every task it holds: reconcile against it."""

    subdomain_id: str
    reports: tuple[TaskReport, ...]


@dataclass(frozen=True, slots=True)
class SubdomainLost:
    """A sub-domain has been away ``away_s``: each of its tasks whose job's ``disconnect.lost_after``
    (``grace_s`` when the job sets none) has passed is LOST (and runs elsewhere) -- unless the job
    says ``disconnect.replace: false``, then it waits for the sub-domain."""

    subdomain_id: str
    reason: str
    away_s: float = math.inf
    grace_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Place:
    """The placement policy chose ``subdomain_id`` for a PENDING task."""

    job_id: str
    index: int
    subdomain_id: str
    region: str = ""
    #: GPU model of the node shape chosen (recorded on the task for its charges).
    gpu_model: str = ""


@dataclass(frozen=True, slots=True)
class Cancel:
    """A user asked to cancel a job."""

    job_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: re-place placements that were not confirmed in time."""


# -- preemption (MASTER-TASK helper; master_domain/_preemption.py decides, this only applies) ----


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop every live task of the job whole and requeue it: each goes back to PENDING as a new
    attempt *without* spending a retry (the stop is not the task's fault). ``reason`` becomes the
    stop reason and the tasks' message (``preempted by job <id> (priority <class>)``)."""

    job_id: str
    reason: str


# -- end of preemption ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartGang:
    """The gang tasks ``indexes`` (all PENDING) are about to be reserved: one fresh attempt for all.

    Persisted before any Reserve is sent, so a restarted master never reuses a reservation id.
    """

    job_id: str
    indexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PlaceGang:
    """Every part of the gang's reservation is committed: the tasks are ASSIGNED where they are.

    ``assignments`` maps task index -> (sub-domain, region, GPU model); ``attempt`` is the gang's.
    """

    job_id: str
    attempt: int
    assignments: Mapping[int, tuple[str, str, str]]


@dataclass(frozen=True, slots=True)
class GangNotPlaced:
    """A try to place the gang failed (every part released); its tasks stay PENDING with ``reason``.

    ``misdispatches``: reservations refused for capacity (counted like rejected placements).
    """

    job_id: str
    attempt: int
    reason: str
    misdispatches: int = 0


Event = (
    TaskUpdates
    | SubdomainHello
    | SubdomainLost
    | Place
    | Cancel
    | Tick
    | Preempt
    | StartGang
    | PlaceGang
    | GangNotPlaced
)


# ---------------------------------------------------------------------------------------------
# Effects


@dataclass(frozen=True, slots=True)
class PersistJob:
    """Write the job's current record to the store (before any command that follows)."""

    job_id: str


@dataclass(frozen=True, slots=True)
class PlaceTask:
    """Send ``PlaceTask`` for ``ref`` to ``subdomain_id``."""

    subdomain_id: str
    ref: TaskRef
    spec: JobSpec


@dataclass(frozen=True, slots=True)
class StopTask:
    """Send ``StopTaskCommand`` for ``ref`` to ``subdomain_id``."""

    subdomain_id: str
    ref: TaskRef
    reason: str


@dataclass(frozen=True, slots=True)
class AckTasks:
    """Tell ``subdomain_id`` these terminal states are stored (send after persisting)."""

    subdomain_id: str
    refs: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class JobDone:
    """The job is finished and has no task left running: it may leave the active table."""

    job_id: str


@dataclass(frozen=True, slots=True)
class ReleaseGang:
    """Send ``ReleaseReservation`` for a placed gang's part (its tasks are stopped or finished)."""

    subdomain_id: str
    reservation_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Send ``command`` (a ``MasterCommand``) to ``subdomain_id`` after the persists before it.

    Not produced by the job table: the master uses it for the reservation messages it decides.
    """

    subdomain_id: str
    command: Any


Effect = PersistJob | PlaceTask | StopTask | AckTasks | JobDone | ReleaseGang | SendCommand


class _Out:
    """Collects the effects of one event, deduplicated and in a safe order."""

    def __init__(self) -> None:
        self.persist: dict[str, None] = {}
        self.commands: list[PlaceTask | StopTask | ReleaseGang] = []
        self.acks: dict[str, list[TaskRef]] = {}
        self.done: list[str] = []

    def ack(self, subdomain_id: str, ref: TaskRef) -> None:
        self.acks.setdefault(subdomain_id, []).append(ref)

    def effects(self) -> list[Effect]:
        out: list[Effect] = [PersistJob(j) for j in self.persist]
        out.extend(self.commands)
        out.extend(AckTasks(sd, tuple(refs)) for sd, refs in self.acks.items())
        out.extend(JobDone(j) for j in self.done)
        return out


# ---------------------------------------------------------------------------------------------


class JobTable:
    """Every active job, the indexes the master needs, and the rules that move them."""

    def __init__(self, *, clock: Clock | None = None, place_timeout_s: float = 10.0) -> None:
        self._clock: Clock = clock or SystemClock()
        self._place_timeout_s = place_timeout_s
        #: Whether a sub-domain's stream is up now (set by the master). An unconfirmed placement on
        #: a sub-domain that is not is left to its jobs' disconnect policy (``SubdomainLost``), not
        #: re-placed at the placement timeout: the sub-domain may hold it and run it (a partition
        #: that lost only the confirmation), and it fences its own tasks before that policy is due.
        self.subdomain_connected: Callable[[str], bool] = lambda _sd: True
        self._jobs: dict[str, Job] = {}
        # job id -> pending task indexes, jobs in the order they (re)entered the queue.
        self._pending: dict[str, dict[int, None]] = {}
        # sub-domain id -> live tasks (job id, index) placed there.
        self._by_subdomain: dict[str, dict[tuple[str, int], None]] = {}
        #: Sub-domain away -> the absence (s) at which its next task's disconnect policy is due.
        self._away_next: dict[str, float] = {}
        # (job id, index) -> monotonic deadline; insertion order is deadline order.
        self._unconfirmed: dict[tuple[str, int], float] = {}
        # Filled by validate() only: the attempt of every task at the previous check.
        self._seen_attempts: dict[tuple[str, int], int] = {}
        #: Tasks placed since this table was created.
        self.placed_total = 0
        #: Placements that did not land (REJECTED, or not confirmed in time).
        self.misdispatch_total = 0
        #: Live tasks stopped and requeued by preemption (:class:`Preempt`).
        self.preempted_total = 0
        #: Task-seconds lost to interruptions and spent recovering from them (goodput).
        self.lost_task_s = 0.0
        self.recovery_task_s = 0.0
        #: Gang jobs whose tasks report progress (straggler checks), in insertion order.
        self._progress_jobs: dict[str, None] = {}
        #: Running gang or checkpointing jobs (their goodput is exported per job).
        self._goodput_jobs: dict[str, None] = {}
        #: Task attempts moved off draining nodes.
        self.drained_total = 0
        #: Active jobs per state (kept in step, read by metrics at scrape time).
        self.state_counts: Counter[JobState] = Counter()
        #: Called with ``(job id, index, attempt)`` when a placed attempt stops holding its place
        #: (finished, lost, rejected, re-placed): the master releases its quota and power charges.
        self.on_unplace: Callable[[str, int, int], None] | None = None

    # -- queries ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def jobs(self) -> Iterator[Job]:
        return iter(self._jobs.values())

    def pending(self) -> list[tuple[Job, list[int]]]:
        """A snapshot of the PENDING tasks, oldest job first."""
        return [(self._jobs[j], sorted(idx)) for j, idx in self._pending.items() if idx]

    @staticmethod
    def gang_indexes(job: Job) -> range:
        """The gang's task indexes (empty when the job is not a gang)."""
        return range(min(job.spec.gang_min, len(job.tasks))) if job.spec.is_gang else range(0)

    def gang_waiting(self, job: Job) -> bool:
        """True when the job's gang is to be placed: some gang task PENDING and none live.

        (Normally every gang task is PENDING; one that finished while the rest were preempted
        rejoins the gang at :class:`StartGang`.)
        """
        gang = self.gang_indexes(job)
        pending = self._pending.get(job.job_id, {})
        return any(i in pending for i in gang) and not any(job.tasks[i].live for i in gang)

    @staticmethod
    def gang_attempt(job: Job) -> int:
        """The attempt of the gang's tasks (they share one; the highest if they do not)."""
        gang = JobTable.gang_indexes(job)
        return max((job.tasks[i].attempt for i in gang), default=0)

    def gang_placeable(self, job_id: str, attempt: int, indexes: Iterable[int]) -> bool:
        """True when every task of ``indexes`` is PENDING at ``attempt`` in an active job."""
        job = self._jobs.get(job_id)
        if job is None or job.terminal or job.cancel_requested:
            return False
        pending = self._pending.get(job_id, {})
        return all(
            0 <= i < len(job.tasks) and i in pending and job.tasks[i].attempt == attempt for i in indexes
        )

    def subdomains_with_tasks(self) -> list[str]:
        """Sub-domains that hold at least one live task."""
        return [sd for sd, tasks in self._by_subdomain.items() if tasks]

    def tasks_on(self, subdomain_id: str) -> int:
        return len(self._by_subdomain.get(subdomain_id, ()))

    @property
    def unconfirmed(self) -> int:
        """Placements sent and not yet confirmed by their sub-domain (O(1))."""
        return len(self._unconfirmed)

    # -- jobs in and out -------------------------------------------------------------------------

    def new_job(self, job_id: str, spec: JobSpec, request_id: str) -> Job:
        """A fresh PENDING job (not yet in the table: the caller stores it, then :meth:`add`)."""
        now = self._clock.time()
        job = Job(
            job_id=job_id,
            spec=spec,
            request_id=request_id,
            created_at=now,
            updated_at=now,
            tasks=[Task(index=i) for i in range(spec.replicas)],
        )
        job.counts[TaskState.PENDING] = spec.replicas
        return job

    def add(self, job: Job) -> None:
        """Admit a job (new, or loaded from the store by a restarted master)."""
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is already in the table")
        job.counts = Counter(t.state for t in job.tasks)
        self._jobs[job.job_id] = job
        self.state_counts[job.state] += 1
        deadline = self._clock.monotonic() + self._place_timeout_s
        for task in job.tasks:
            key = (job.job_id, task.index)
            if task.state is TaskState.PENDING:
                self._pending.setdefault(job.job_id, {})[task.index] = None
            elif task.live:
                self._by_subdomain.setdefault(task.subdomain_id, {})[key] = None
                if not task.confirmed:
                    self._unconfirmed[key] = deadline

    def retire(self, job_id: str) -> Job | None:
        """Remove a finished job with no live task; returns it (None if it is not retirable)."""
        job = self._jobs.get(job_id)
        if job is None or not job.terminal or job.live_tasks:
            return None
        del self._jobs[job_id]
        self._pending.pop(job_id, None)
        self.state_counts[job.state] -= 1
        for task in job.tasks:
            self._seen_attempts.pop((job_id, task.index), None)
        return job

    def set_waiting(self, job_id: str, reason: str) -> None:
        """Say why a job's tasks stay PENDING (in memory only: not a transition)."""
        job = self._jobs.get(job_id)
        if job is not None and not job.terminal and not job.cancel_requested:
            job.message = f"waiting: {reason}"

    # -- events ----------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Effect]:
        """Apply one event; returns the effects to carry out, in order."""
        out = _Out()
        match event:
            case TaskUpdates(subdomain_id=sd, reports=reports):
                for report in reports:
                    self._report(sd, report, out)
            case SubdomainHello():
                self._hello(event, out)
            case SubdomainLost():
                self._subdomain_lost(event, out)
            case Place():
                self._place(event, out)
            case Cancel(job_id=job_id, reason=reason):
                self._cancel(job_id, reason, out)
            case Tick():
                self._tick(out)
            case StartGang():
                self._start_gang(event, out)
            case PlaceGang():
                self._place_gang(event, out)
            case GangNotPlaced():
                self._gang_not_placed(event, out)
            case Preempt():
                self._preempt(event, out)
        return out.effects()

    # -- event handlers --------------------------------------------------------------------------

    def _place(self, ev: Place, out: _Out) -> None:
        job = self._jobs.get(ev.job_id)
        if job is None or job.terminal or job.cancel_requested:
            raise ValueError(f"cannot place a task of job {ev.job_id}: it is not active")
        task = job.tasks[ev.index]
        if task.state is not TaskState.PENDING:
            raise ValueError(f"cannot place task {ev.job_id}/{ev.index}: it is {task.state}")
        key = (job.job_id, task.index)
        self._pending[job.job_id].pop(task.index, None)
        if not self._pending[job.job_id]:
            del self._pending[job.job_id]
        self._set_state(job, task, TaskState.ASSIGNED)
        task.subdomain_id = ev.subdomain_id
        task.region = ev.region
        task.gpu_model = ev.gpu_model
        task.confirmed = False
        task.stopping = False
        task.message = ""
        self._by_subdomain.setdefault(ev.subdomain_id, {})[key] = None
        self._unconfirmed[key] = self._clock.monotonic() + self._place_timeout_s
        self.placed_total += 1
        if job.message.startswith("waiting:"):
            job.message = ""
        ref = TaskRef(job.job_id, task.index, task.attempt)
        log.debug("placing task %s on sub-domain %s", ref, ev.subdomain_id)
        out.commands.append(PlaceTask(ev.subdomain_id, ref, job.spec))
        self._changed(job, out)

    def _start_gang(self, ev: StartGang, out: _Out) -> None:
        job = self._jobs.get(ev.job_id)
        if job is None or job.terminal or job.cancel_requested:
            raise ValueError(f"cannot start a gang of job {ev.job_id}: it is not active")
        if not ev.indexes or any(job.tasks[i].live for i in ev.indexes):
            raise ValueError(
                f"cannot start a gang of job {ev.job_id}: tasks {ev.indexes} are not all pending"
            )
        for i in ev.indexes:
            task = job.tasks[i]
            if task.state is not TaskState.PENDING:  # finished alone: runs again with its gang
                self._repend(job, task, "rejoins its gang")
        attempt = max(job.tasks[i].attempt for i in ev.indexes) + 1
        for i in ev.indexes:
            job.tasks[i].attempt = attempt
        self._changed(job, out)

    def _place_gang(self, ev: PlaceGang, out: _Out) -> None:
        if not self.gang_placeable(ev.job_id, ev.attempt, ev.assignments):
            raise ValueError(f"cannot place the gang of job {ev.job_id} attempt {ev.attempt}: not pending")
        job = self._jobs[ev.job_id]
        deadline = self._clock.monotonic() + self._place_timeout_s
        pending = self._pending[job.job_id]
        for index, (sd, region, model) in sorted(ev.assignments.items()):
            task = job.tasks[index]
            pending.pop(index, None)
            self._set_state(job, task, TaskState.ASSIGNED)
            task.subdomain_id = sd
            task.region = region
            task.gpu_model = model
            task.confirmed = task.stopping = False
            task.message = ""
            self._by_subdomain.setdefault(sd, {})[(job.job_id, index)] = None
            self._unconfirmed[(job.job_id, index)] = deadline
            self.placed_total += 1
        if not pending:
            del self._pending[job.job_id]
        if job.message.startswith("waiting:"):
            job.message = ""
        log.info(
            "gang of job %s attempt %s placed: %d tasks on %s",
            job.job_id,
            ev.attempt,
            len(ev.assignments),
            ", ".join(sorted({sd for sd, _, _ in ev.assignments.values()})),
        )
        self._changed(job, out)

    def _gang_not_placed(self, ev: GangNotPlaced, out: _Out) -> None:
        job = self._jobs.get(ev.job_id)
        if job is None or job.terminal or job.cancel_requested:
            return
        job.message = f"waiting: {ev.reason}"
        why = f"gang attempt {ev.attempt} not placed: {ev.reason}"[:MAX_MESSAGE]
        requeued = False
        for i in self.gang_indexes(job):
            task = job.tasks[i]
            if task.attempt != ev.attempt:
                continue
            if task.live:
                # Recorded when the commit phase began, then a part failed to commit: every part
                # is released (its started tasks stopped); all go back as a new attempt, no retry
                # spent (a placement failure, not the job's).
                if not task.stopping:
                    out.commands.append(
                        StopTask(task.subdomain_id, TaskRef(job.job_id, i, task.attempt), why)
                    )
                self._repend(job, task, why)
                requeued = True
            elif task.state is TaskState.PENDING:
                task.message = why
        if requeued:
            self._changed(job, out)
        if ev.misdispatches:
            self.misdispatch_total += ev.misdispatches
            job.misdispatches += ev.misdispatches
            self._changed(job, out)

    def _cancel(self, job_id: str, reason: str, out: _Out) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.terminal or job.cancel_requested:
            return  # idempotent: unknown here, finished, or already being cancelled
        job.cancel_requested = True
        why = reason or "requested by user"
        job.message = f"cancelling: {why}"
        log.info("cancelling job %s: %s", job_id, why)
        self._stop_all(job, f"job cancelled: {why}", out)
        self._changed(job, out)

    def _tick(self, out: _Out) -> None:
        now = self._clock.monotonic()
        expired: list[tuple[str, int]] = []
        for key, deadline in self._unconfirmed.items():
            if deadline > now:
                break
            expired.append(key)
        for job_id, index in expired:
            if (job_id, index) not in self._unconfirmed:
                continue  # its gang was requeued by an earlier one of this tick
            job = self._jobs[job_id]
            task = job.tasks[index]
            sd = task.subdomain_id
            ref = TaskRef(job_id, index, task.attempt)
            if not task.stopping and not self.subdomain_connected(sd):
                # Deadlines stay in insertion order: every later one is at most now + timeout.
                del self._unconfirmed[(job_id, index)]
                self._unconfirmed[(job_id, index)] = now + self._place_timeout_s
                continue
            log.warning(
                "placement of task %s on sub-domain %s not confirmed in %.0fs; placing it again",
                ref,
                sd,
                self._place_timeout_s,
            )
            out.commands.append(StopTask(sd, ref, "placement not confirmed in time"))
            if task.stopping:
                self._finish(job, task, TaskState.CANCELLED, message="stopped before it was confirmed")
            else:
                self.misdispatch_total += 1
                job.misdispatches += 1
                task.rejected_by[sd] = now
                self._requeue(job, task, f"placement on {sd} not confirmed in time", out)
            self._changed(job, out)

    @staticmethod
    def lost_after(job: Job, grace_s: float) -> float:
        """How long the job's tasks in an unreachable sub-domain are left alone."""
        return lost_after(job.spec, grace_s)

    def away_due(self, sd: str, grace_s: float) -> float:
        """Seconds of absence after which :class:`SubdomainLost` has something to do for ``sd``
        (``inf``: nothing, every task left there waits for it). O(tasks there) once per absence."""
        due = self._away_next.get(sd)
        if due is None:
            due = min(
                (self.lost_after(self._jobs[j], grace_s) for j, _ in self._by_subdomain.get(sd, {})),
                default=math.inf,
            )
            self._away_next[sd] = due
        return due

    def _subdomain_lost(self, ev: SubdomainLost, out: _Out) -> None:
        sd, reason = ev.subdomain_id, ev.reason
        later = math.inf  # the next policy due
        for job_id, index in list(self._by_subdomain.get(sd, {})):
            if (job_id, index) not in self._by_subdomain.get(sd, {}):
                continue  # its gang was requeued by an earlier one of this loop
            job = self._jobs[job_id]
            task = job.tasks[index]
            after = self.lost_after(job, ev.grace_s)
            if ev.away_s < after:
                later = min(later, after)
                continue
            pol = job.spec.disconnect
            if pol is not None and not pol.replace and (task.confirmed or task.stopping):
                waiting = f"sub-domain {sd} unreachable; waiting for it (disconnect.replace: false)"
                if task.message != waiting:
                    task.message = waiting
                    self._changed(job, out)
                continue
            why = reason if ev.away_s == math.inf else f"sub-domain {sd} did not reconnect within {after:g}s"
            if task.confirmed or task.stopping:
                self._lost(job, task, why, out)
            else:
                self._requeue(job, task, f"placement on {sd} not confirmed: {why}", out)
            self._changed(job, out)
        self._away_next[sd] = later
        if not self._by_subdomain.get(sd):
            self._by_subdomain.pop(sd, None)

    def _hello(self, ev: SubdomainHello, out: _Out) -> None:
        sd = ev.subdomain_id
        self._away_next.pop(sd, None)
        reported: set[tuple[str, int]] = set()
        for report in ev.reports:
            job = self._jobs.get(report.job_id)
            if job is not None and 0 <= report.index < len(job.tasks):
                task = job.tasks[report.index]
                if task.attempt == report.attempt and task.subdomain_id == sd:
                    reported.add((report.job_id, report.index))
            self._report(sd, report, out)
        for key in list(self._by_subdomain.get(sd, {})):
            if key not in self._by_subdomain.get(sd, {}):
                continue  # its gang was requeued by an earlier one of this loop
            if key in reported:
                task = self._jobs[key[0]].tasks[key[1]]
                if task.stopping:  # the stop may have been lost with the old stream: say it again
                    ref = TaskRef(key[0], key[1], task.attempt)
                    out.commands.append(StopTask(sd, ref, "stop requested before the reconnect"))
                continue
            job = self._jobs[key[0]]
            task = job.tasks[key[1]]
            if task.confirmed or task.stopping:
                self._lost(job, task, f"sub-domain {sd} no longer knows it (reconnected without it)", out)
            else:
                self._requeue(job, task, f"placement on {sd} was not received", out)
            self._changed(job, out)

    def _report(self, sd: str, r: TaskReport, out: _Out) -> None:
        ref = r.ref
        final = r.state in ACKED_TASK_STATES
        job = self._jobs.get(r.job_id)
        task = job.tasks[r.index] if job is not None and 0 <= r.index < len(job.tasks) else None
        if job is None or task is None or task.attempt != r.attempt or task.subdomain_id != sd:
            # Not the current attempt here: an unknown or finished job, an older attempt, or
            # a placement this master does not know. Forget it if final, else stop it.
            if final:
                out.ack(sd, ref)
            elif r.state in LIVE_TASK_STATES:
                why = "unknown or finished job" if job is None else "not the current attempt"
                log.info("stopping task %s on sub-domain %s: %s", ref, sd, why)
                out.commands.append(StopTask(sd, ref, why))
            return
        if not task.live:
            if final:
                out.ack(sd, ref)
            elif r.state in LIVE_TASK_STATES:
                out.commands.append(StopTask(sd, ref, f"task already {task.state.value.lower()}"))
            return
        if final:
            out.ack(sd, ref)
        if r.node_id:
            task.node_id = r.node_id
        state = r.state
        if state is TaskState.ASSIGNED:
            if task.confirmed:
                return
            self._confirm(job, task)
        elif state is TaskState.RUNNING:
            if task.state is TaskState.RUNNING:
                if r.progress is not None:
                    self._progressed(job, task, r.progress)
                return  # progress is kept in memory, not stored
            self._confirm(job, task)
            self._set_state(job, task, TaskState.RUNNING)
            task.started_at = r.started_at or self._clock.time()
            self._started(job, task, r)
        elif state is TaskState.SUCCEEDED:
            self._finish(job, task, TaskState.SUCCEEDED, exit_code=0, message=r.message, report=r)
        elif (
            r.drained
            and state in (TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST)
            and not (task.stopping or job.cancel_requested or job.terminal)
        ):
            self._drained(job, task, sd, r, out)
        elif state is TaskState.FAILED:
            self._failed(job, task, r, out)
        elif state is TaskState.CANCELLED:
            if task.stopping or job.cancel_requested or job.terminal:
                self._finish(
                    job, task, TaskState.CANCELLED, exit_code=r.exit_code, message=r.message, report=r
                )
            else:  # stopped by someone else (its node, an operator): like a lost task
                self._lost(job, task, f"cancelled by sub-domain {sd}: {r.message or 'no reason given'}", out)
        elif state is TaskState.LOST:
            self._lost(job, task, r.message or f"its node in sub-domain {sd} was lost", out, report=r)
        elif state is TaskState.REJECTED:
            self._rejected(job, task, sd, r.message, out)
        else:
            return  # PENDING / unspecified: nothing to learn
        self._changed(job, out)

    # -- preemption (MASTER-TASK helper) ----------------------------------------------------------

    def _preempt(self, ev: Preempt, out: _Out) -> None:
        """Stop the job's live tasks (every one, in every sub-domain) and requeue them, no retry spent.

        A job that is finished, being cancelled or unknown is left alone (the planner decided on
        a view this event may no longer match). Tasks already being stopped are not touched.
        """
        job = self._jobs.get(ev.job_id)
        if job is None or job.terminal or job.cancel_requested:
            return
        stopped = 0
        for task in job.tasks:
            if not task.live or task.stopping:
                continue
            ref = TaskRef(job.job_id, task.index, task.attempt)
            log.info("preempting task %s on sub-domain %s: %s", ref, task.subdomain_id, ev.reason)
            out.commands.append(StopTask(task.subdomain_id, ref, ev.reason))
            self._repend(job, task, ev.reason)
            stopped += 1
        if stopped:
            self.preempted_total += stopped
            job.message = ev.reason
            self._changed(job, out)

    # -- transitions -----------------------------------------------------------------------------

    def _confirm(self, job: Job, task: Task) -> None:
        task.confirmed = True
        self._unconfirmed.pop((job.job_id, task.index), None)

    def _drained(self, job: Job, task: Task, sd: str, r: TaskReport, out: _Out) -> None:
        """Its sub-domain moved it off a draining node: a new attempt, no retry spent."""
        task.drains += 1
        self.drained_total += 1
        node = task.node_id or r.node_id
        log.info(
            "task %s/%s attempt %s moved off node %s: %s",
            job.job_id,
            task.index,
            task.attempt,
            node,
            r.message,
        )
        self._requeue(job, task, f"attempt {task.attempt} moved off node {node} ({sd}): {r.message}", out)

    def _failed(self, job: Job, task: Task, r: TaskReport, out: _Out) -> None:
        code = r.exit_code
        what = f"exited with code {code}" if code else f"failed to start: {r.message or 'no reason given'}"
        if task.stopping or job.cancel_requested or job.terminal:
            self._finish(job, task, TaskState.FAILED, exit_code=code, message=r.message, report=r)
        elif self._spent(job, task, exit_=True) < job.spec.retry.on_exit:
            task.exit_retries += 1
            log.info("task %s/%s attempt %s %s; retrying", job.job_id, task.index, task.attempt, what)
            self._requeue(job, task, f"attempt {task.attempt} {what}; retrying", out)
        else:
            self._finish(job, task, TaskState.FAILED, exit_code=code, message=r.message, report=r)
            spent = self._spent(job, task, exit_=True)
            retries = f" after {spent} retries" if spent else ""
            self._fail_job(job, f"task {task.index} {what}{retries}", out)

    def _lost(self, job: Job, task: Task, reason: str, out: _Out, report: TaskReport | None = None) -> None:
        if task.stopping or job.cancel_requested or job.terminal:
            self._finish(job, task, TaskState.LOST, message=reason, report=report)
        elif self._spent(job, task, exit_=False) < job.spec.retry.on_lost:
            task.lost_retries += 1
            log.info(
                "task %s/%s attempt %s lost (%s); retrying", job.job_id, task.index, task.attempt, reason
            )
            self._requeue(job, task, f"attempt {task.attempt} lost: {reason}; retrying", out)
        else:
            self._finish(job, task, TaskState.LOST, message=reason, report=report)
            spent = self._spent(job, task, exit_=False)
            retries = f" after {spent} retries" if spent else ""
            self._fail_job(job, f"task {task.index} was lost ({reason}){retries}", out)

    def _rejected(self, job: Job, task: Task, sd: str, reason: str, out: _Out) -> None:
        if task.stopping or job.cancel_requested or job.terminal:
            self._finish(job, task, TaskState.CANCELLED, message=f"rejected by {sd}: {reason}")
            return
        self.misdispatch_total += 1
        job.misdispatches += 1
        task.rejected_by[sd] = self._clock.monotonic()
        log.info("task %s/%s attempt %s rejected by %s: %s", job.job_id, task.index, task.attempt, sd, reason)
        self._requeue(job, task, f"rejected by {sd}: {reason or 'no room'}", out)

    def _finish(
        self,
        job: Job,
        task: Task,
        state: TaskState,
        *,
        exit_code: int = 0,
        message: str = "",
        report: TaskReport | None = None,
    ) -> None:
        self._unplace(job, task)
        self._set_state(job, task, state)
        task.exit_code = exit_code
        task.message = message
        if report is not None and report.started_at:
            task.started_at = report.started_at
            self._ran(job, task)
        task.finished_at = (report.finished_at if report is not None else 0.0) or self._clock.time()

    # -- goodput and stragglers ------------------------------------------------------------------

    def _ran(self, job: Job, task: Task) -> None:
        """An attempt ran (from ``task.started_at``): the job's clock starts with its first task;
        the task's recovery ends."""
        if not job.first_started_at or task.started_at < job.first_started_at:
            job.first_started_at = task.started_at
        if (job.spec.is_gang or job.spec.checkpoint is not None) and not job.terminal:
            self._goodput_jobs[job.job_id] = None
        if task.down_since:
            took = max(0.0, task.started_at - task.down_since)
            job.recovery_s += took
            self.recovery_task_s += took
            task.down_since = 0.0

    def _started(self, job: Job, task: Task, r: TaskReport) -> None:
        self._ran(job, task)
        task.progress = r.progress
        task.rate_mark = None
        task.slow_checks = 0
        task.straggler = False
        if r.progress is not None:
            self._progressed(job, task, r.progress)

    def _progressed(self, job: Job, task: Task, progress: TaskProgress) -> None:
        task.progress = progress
        if job.spec.is_gang and len(job.tasks) >= 3:
            self._progress_jobs[job.job_id] = None

    def _interrupted(self, job: Job, task: Task) -> None:
        """The running attempt ends and another will follow: the work since its last checkpoint
        (all of it without one; half the declared interval when the job only declares one) is
        lost, and the task is down until the next attempt runs."""
        end = self._clock.time()
        start = task.started_at or end
        p = task.progress
        policy = job.spec.checkpoint
        if p is not None and p.checkpoint_at >= start and p.checkpoint_step >= 0:
            lost = end - p.checkpoint_at
        elif policy is not None and policy.interval_s:
            lost = min(end - start, policy.interval_s / 2)
        else:
            lost = end - start
        lost = max(0.0, lost)
        job.lost_s += lost
        job.interruptions += 1
        self.lost_task_s += lost
        task.down_since = end

    def goodput_jobs(self, limit: int) -> list[Job]:
        """Running gang or checkpointing jobs, at most ``limit`` (the oldest); for metrics."""
        out = []
        for k in list(self._goodput_jobs)[:limit]:
            job = self._jobs.get(k)
            if job is not None:
                out.append(job)
        return out

    def progress_jobs(self) -> list[Job]:
        """Gang jobs whose tasks report progress (metrics; a copy, safe from another thread)."""
        return [j for j in (self._jobs.get(k) for k in list(self._progress_jobs)) if j is not None]

    def check_stragglers(self, now: float) -> list[tuple[str, int]]:
        """Compare each gang task's progress rate with its gang's median (gangs of 3+ tasks that
        report progress); a task below :data:`STRAGGLER_RATIO` of it on two checks in a row is a
        straggler (back to normal above :data:`STRAGGLER_CLEAR`). O(tasks of such gangs); the
        caller runs it every :data:`STRAGGLER_CHECK_S`. Returns the (job, task) newly flagged."""
        flagged: list[tuple[str, int]] = []
        for job_id in list(self._progress_jobs):
            job = self._jobs.get(job_id)
            if job is None or job.terminal:
                self._progress_jobs.pop(job_id, None)
                continue
            rates: dict[int, float] = {}
            for t in job.tasks:
                p = t.progress
                if t.state is not TaskState.RUNNING or p is None:
                    continue
                mark = t.rate_mark
                if mark is not None and now > mark[1]:
                    rates[t.index] = max(0.0, p.step - mark[0]) / (now - mark[1])
                t.rate_mark = (p.step, now)
            if len(rates) < 3:
                continue
            median = sorted(rates.values())[len(rates) // 2]
            if median <= 0:
                continue
            stragglers = []
            for index, rate in rates.items():
                t = job.tasks[index]
                if rate < STRAGGLER_RATIO * median:
                    t.slow_checks += 1
                    if t.slow_checks >= 2 and not t.straggler:
                        t.straggler = True
                        flagged.append((job_id, index))
                        log.warning(
                            "job %s task %d on node %s is a straggler: %.3g steps/s, the gang's median %.3g",
                            job_id,
                            index,
                            t.node_id,
                            rate,
                            median,
                        )
                elif rate >= STRAGGLER_CLEAR * median:
                    t.slow_checks = 0
                    t.straggler = False
                if t.straggler:
                    stragglers.append(index)
            job.stragglers = tuple(sorted(stragglers))
        return flagged

    def _repend(self, job: Job, task: Task, message: str) -> None:
        """Back to PENDING as a new attempt (the old one, if it still runs, gets stopped by id)."""
        if task.state is TaskState.RUNNING:
            self._interrupted(job, task)
        task.progress = None
        task.straggler = False
        task.rate_mark = None
        self._unplace(job, task)
        if task.subdomain_id:
            task.last_run = (task.attempt, task.node_id, task.subdomain_id)
        task.attempt += 1
        self._set_state(job, task, TaskState.PENDING)
        task.node_id = task.subdomain_id = task.region = task.gpu_model = ""
        task.exit_code = 0
        task.message = message
        task.started_at = task.finished_at = 0.0
        task.confirmed = task.stopping = False
        self._pending.setdefault(job.job_id, {})[task.index] = None

    def _spent(self, job: Job, task: Task, *, exit_: bool) -> int:
        """Retries spent: the task's own, or for a gang task the whole gang's (one budget)."""
        if task.index not in self.gang_indexes(job):
            return task.exit_retries if exit_ else task.lost_retries
        tasks = (job.tasks[i] for i in self.gang_indexes(job))
        return sum(t.exit_retries if exit_ else t.lost_retries for t in tasks)

    def _requeue(self, job: Job, task: Task, message: str, out: _Out) -> None:
        """Back to PENDING as a new attempt: the task alone, or its whole gang."""
        if task.index in self.gang_indexes(job):
            self._requeue_gang(job, task, message, out)
        else:
            self._repend(job, task, message)

    def _requeue_gang(self, job: Job, cause: Task, message: str, out: _Out) -> None:
        """Stop every gang task and queue them all again as one new attempt (never a partial gang).

        ``cause`` (the task that failed, was lost, rejected or not confirmed) is not told to stop:
        it has ended or never started. The gang's reservations are released.
        """
        gang = self.gang_indexes(job)
        old = self.gang_attempt(job)
        why = f"gang of job {job.job_id} requeued: task {cause.index} {message}"
        for i in gang:
            task = job.tasks[i]
            if task.live and not task.stopping and task is not cause:
                out.commands.append(StopTask(task.subdomain_id, TaskRef(job.job_id, i, task.attempt), why))
        self._release_gang(job, why, out)
        new = old + 1
        for i in gang:
            task = job.tasks[i]
            if task.state is not TaskState.PENDING:
                self._repend(job, task, message if task is cause else why)
            task.attempt = new
        log.info("gang of job %s attempt %s requeued as attempt %s: %s", job.job_id, old, new, why)

    def _release_gang(self, job: Job, reason: str, out: _Out) -> None:
        """Release the reservation of every sub-domain holding a live task of the gang."""
        sds: dict[tuple[str, int], None] = {}
        for i in self.gang_indexes(job):
            task = job.tasks[i]
            if task.live and task.subdomain_id:
                sds[(task.subdomain_id, task.attempt)] = None
        for sd, attempt in sds:
            out.commands.append(ReleaseGang(sd, reservation_id(job.job_id, attempt, sd), reason))

    def _unplace(self, job: Job, task: Task) -> None:
        key = (job.job_id, task.index)
        if task.subdomain_id and self.on_unplace is not None:
            self.on_unplace(job.job_id, task.index, task.attempt)
        placed = self._by_subdomain.get(task.subdomain_id)
        if placed is not None:
            placed.pop(key, None)
            if not placed:
                del self._by_subdomain[task.subdomain_id]
        self._unconfirmed.pop(key, None)

    def _stop_all(self, job: Job, reason: str, out: _Out) -> None:
        """Stop every live task (and release a gang's reservations); unplaced ones are CANCELLED."""
        self._release_gang(job, reason, out)
        pending = self._pending.pop(job.job_id, {})
        for index in pending:
            task = job.tasks[index]
            self._set_state(job, task, TaskState.CANCELLED)
            task.message = reason
            task.finished_at = self._clock.time()
        for task in job.tasks:
            if task.live and not task.stopping:
                task.stopping = True
                out.commands.append(
                    StopTask(task.subdomain_id, TaskRef(job.job_id, task.index, task.attempt), reason)
                )

    def _fail_job(self, job: Job, message: str, out: _Out) -> None:
        log.info("job %s failed: %s", job.job_id, message)
        self._set_job_state(job, JobState.FAILED)
        job.message = message
        job.finished_at = self._clock.time()
        self._stop_all(job, f"job failed: {message}", out)

    def _close_recoveries(self, job: Job) -> None:
        """A finished job's tasks are not down any more (the time they were counts as recovery)."""
        end = job.finished_at or self._clock.time()
        for t in job.tasks:
            if t.down_since:
                took = max(0.0, end - t.down_since)
                job.recovery_s += took
                self.recovery_task_s += took
                t.down_since = 0.0
        job.stragglers = ()
        self._progress_jobs.pop(job.job_id, None)
        self._goodput_jobs.pop(job.job_id, None)

    def _set_state(self, job: Job, task: Task, state: TaskState) -> None:
        job.counts[task.state] -= 1
        job.counts[state] += 1
        task.state = state

    def _set_job_state(self, job: Job, state: JobState) -> None:
        if job.state is not state:
            self.state_counts[job.state] -= 1
            self.state_counts[state] += 1
            job.state = state

    def _changed(self, job: Job, out: _Out) -> None:
        """Recompute the job's state after its tasks changed; mark it for persisting."""
        n = len(job.tasks)
        c = job.counts
        if not job.terminal:
            if c[TaskState.SUCCEEDED] == n:
                self._set_job_state(job, JobState.SUCCEEDED)
                job.message = ""
                job.finished_at = self._clock.time()
                log.info("job %s succeeded", job.job_id)
                if job.spec.is_gang:  # the sub-domains may forget the gang's allocations
                    parts = {
                        (job.tasks[i].subdomain_id, job.tasks[i].attempt) for i in self.gang_indexes(job)
                    }
                    for sd, attempt in sorted(parts):
                        if sd:
                            rid = reservation_id(job.job_id, attempt, sd)
                            out.commands.append(ReleaseGang(sd, rid, "the gang's job succeeded"))
            elif job.cancel_requested and not job.live_tasks and not c[TaskState.PENDING]:
                self._set_job_state(job, JobState.CANCELLED)
                job.message = job.message.replace("cancelling:", "cancelled:", 1)
                job.finished_at = self._clock.time()
                log.info("job %s cancelled", job.job_id)
            else:
                self._set_job_state(job, _derive(c))
        if job.terminal:
            self._close_recoveries(job)
        job.version += 1
        job.updated_at = self._clock.time()
        out.persist[job.job_id] = None
        if job.terminal and not job.live_tasks and not job.done:
            job.done = True
            out.done.append(job.job_id)

    # -- invariants ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every invariant; raises AssertionError naming the first one broken."""
        pending_seen = 0
        placed_seen = 0
        unconfirmed_seen = 0
        states: Counter[JobState] = Counter()
        for job_id, job in self._jobs.items():
            states[job.state] += 1
            _check(
                len(job.tasks) == job.spec.replicas,
                f"{job_id}: {len(job.tasks)} tasks for {job.spec.replicas} replicas",
            )
            counts = Counter(t.state for t in job.tasks)
            _check(+counts == +job.counts, f"{job_id}: counts {dict(job.counts)} != {dict(counts)}")
            for i, task in enumerate(job.tasks):
                key = (job_id, i)
                name = f"task {job_id}/{i}#{task.attempt}"
                _check(task.index == i, f"{name}: index {task.index}")
                _check(
                    task.attempt >= task.exit_retries + task.lost_retries,
                    f"{name}: attempt below retries spent",
                )
                seen = self._seen_attempts.get(key, 0)
                _check(task.attempt >= seen, f"{name}: attempt went back from {seen}")
                self._seen_attempts[key] = task.attempt
                in_pending = i in self._pending.get(job_id, {})
                in_placed = key in self._by_subdomain.get(task.subdomain_id, {})
                if task.state is TaskState.PENDING:
                    pending_seen += 1
                    _check(in_pending, f"{name}: PENDING but not queued")
                    _check(not task.subdomain_id, f"{name}: PENDING but on {task.subdomain_id}")
                    _check(
                        not job.terminal and not job.cancel_requested, f"{name}: PENDING in a stopping job"
                    )
                elif task.live:
                    placed_seen += 1
                    _check(bool(task.subdomain_id), f"{name}: live without a sub-domain")
                    _check(in_placed, f"{name}: live but not indexed under {task.subdomain_id}")
                    _check(not in_pending, f"{name}: live but queued")
                    unconfirmed = key in self._unconfirmed
                    unconfirmed_seen += unconfirmed
                    _check(
                        unconfirmed == (task.state is TaskState.ASSIGNED and not task.confirmed),
                        f"{name}: confirmation index out of step",
                    )
                    if task.state is TaskState.RUNNING:
                        _check(task.confirmed, f"{name}: RUNNING but not confirmed")
                    if job.terminal or job.cancel_requested:
                        _check(
                            task.stopping, f"{name}: live in a finished or cancelled job, not being stopped"
                        )
                else:
                    _check(task.terminal, f"{name}: state {task.state} is not kept by the master")
                    _check(not in_pending and not in_placed, f"{name}: terminal but indexed")
            live = job.live_tasks
            if job.state is JobState.SUCCEEDED:
                _check(
                    counts[TaskState.SUCCEEDED] == len(job.tasks),
                    f"{job_id}: SUCCEEDED with unfinished tasks",
                )
            elif job.state is JobState.CANCELLED:
                _check(job.cancel_requested, f"{job_id}: CANCELLED without a request")
                _check(not live and not counts[TaskState.PENDING], f"{job_id}: CANCELLED with live tasks")
            elif job.state is JobState.FAILED:
                _check(not counts[TaskState.PENDING], f"{job_id}: FAILED with queued tasks")
            else:
                expected = _derive(counts)
                _check(job.state is expected, f"{job_id}: state {job.state} but tasks say {expected}")
                _check(
                    counts[TaskState.SUCCEEDED] < len(job.tasks),
                    f"{job_id}: all tasks succeeded but {job.state}",
                )
            if job.terminal:
                _check(job.finished_at > 0, f"{job_id}: finished without finished_at")
                _check(job.done == (live == 0), f"{job_id}: done flag out of step")
        _check(pending_seen == sum(len(v) for v in self._pending.values()), "pending index has strays")
        _check(all(self._pending.values()), "empty pending entry")
        _check(placed_seen == sum(len(v) for v in self._by_subdomain.values()), "placement index has strays")
        _check(unconfirmed_seen == len(self._unconfirmed), "confirmation index has strays")
        _check(+states == +self.state_counts, f"state counts {dict(self.state_counts)} != {dict(states)}")


def _derive(c: Mapping[TaskState, int]) -> JobState:
    if c.get(TaskState.RUNNING, 0) or c.get(TaskState.SUCCEEDED, 0):
        return JobState.RUNNING
    if c.get(TaskState.ASSIGNED, 0):
        return JobState.SCHEDULED
    return JobState.PENDING


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)
