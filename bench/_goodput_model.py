"""The goodput model: a discrete-event simulation, in virtual time, of one large gang training job
under node failures, driving the master's real job state machine.

What is real and what is modelled:

* **Real**: :class:`master_domain._jobs.JobTable`, fed the events the master would feed it, with a
  :class:`domainos.clock.FakeClock` moved to each event's time. The job is a training job of
  ``nodes`` tasks of 8 GPUs (``parallelism: {tp: 8, pp: 16, dp: nodes/16}``: a gang of all its
  tasks) with the largest retry budgets a spec allows. So the gang rules are the real ones: a
  lost or failed task requeues the *whole* gang as one new attempt (every other task is stopped),
  each such requeue spends one retry of the gang's shared budget and the job FAILS when it is
  spent, a drain (:class:`~master_domain._jobs.Preempt`) requeues it without spending one, a
  reservation that loses a node fails whole (:class:`~master_domain._jobs.GangNotPlaced`) and is
  retried after the master's ``GANG_RETRY_S``.
* **Modelled** (the sub-domain, the agents and the training processes), with the parameters of
  :class:`Restart`, :class:`Checkpointing` and :class:`Cluster`: when a failure is detected, which
  spare node replaces a failed one, how long the reservation, the process start, the framework
  and NCCL initialisation, the checkpoint load and the warm-up take, what a checkpoint costs.

Time is split, as it passes, into productive training and overheads; work done since the latest
*complete* checkpoint is moved from productive to ``lost_work`` when a failure rolls it back, so
productive + every overhead = wall time, exactly (:meth:`Result.check`). The job is in steady
state at time 0 (running, a checkpoint just taken): the first start-up is not counted.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domainos.clock import FakeClock
from domainos.jobspec import JobSpec, parse_spec
from master_domain._jobs import (
    Effect,
    Event,
    GangNotPlaced,
    Job,
    JobState,
    JobTable,
    PlaceGang,
    Preempt,
    StartGang,
    StopTask,
    TaskReport,
    TaskState,
    TaskUpdates,
    Tick,
)
from master_domain._master import GANG_RETRY_S

SUBDOMAIN = "sd-train"
REGION = "region-1"
GPU_MODEL = "H100-SXM-80GB"
DAY_S = 86_400.0

#: Failure to "dead" of a silenced node at 10,000 nodes (docs/scaling.md section 2: p50 3.25 s,
#: p99 4.16 s; the minimum follows from the 2 s heartbeat, 3 s silence and 1 s probe): a
#: piecewise-linear quantile function, (probability, seconds).
DETECT_NODE_MEASURED: tuple[tuple[float, float], ...] = ((0.0, 2.0), (0.5, 3.25), (0.99, 4.16), (1.0, 4.3))

#: The buckets time goes into besides productive training (in table order).
OVERHEADS = (
    "checkpoint",
    "lost_work",
    "detection",
    "rescheduling",
    "restart",
    "load",
    "warmup",
    "drain",
    "spare_wait",
    "resubmit",
)


# -- parameters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """A kind of interruption: how often (a weight), how it is detected and what it leaves.

    ``detect``: ``node`` (the host stops answering: the sub-domain's failure detector),
    ``process`` (the training process dies: its agent reports the exit), ``hang`` (the job
    stalls with its processes alive until a collective times out). ``replace``: the node must be
    swapped for a spare (it goes to repair); else the gang restarts on the same nodes. ``report``:
    what the sub-domain reports for the task (``LOST`` spends the gang's ``on_lost`` budget,
    ``FAILED`` its ``on_exit``). ``predictable``: may be preceded by a rising health signal;
    ``planned``: always known ahead (maintenance).
    """

    name: str
    weight: float
    detect: str
    replace: bool = True
    report: TaskState = TaskState.LOST
    predictable: bool = False
    planned: bool = False

    def __post_init__(self) -> None:
        if self.detect not in ("node", "process", "hang"):
            raise ValueError(
                f"category {self.name}: detect must be node, process or hang, not {self.detect!r}"
            )
        if self.report not in (TaskState.LOST, TaskState.FAILED):
            raise ValueError(f"category {self.name}: report must be LOST or FAILED")


#: Root causes of the 466 interruptions of Llama 3 405B pre-training (54 days, 16,384 H100s; Llama 3
#: paper, table 5: 419 unexpected, 47 planned). How each is detected and whether the node must be
#: swapped are this model's choices.
LLAMA3_CATEGORIES: tuple[Category, ...] = (
    Category("GPU (faulty GPU, NVLink)", 148, "process", predictable=True),
    Category("GPU HBM3 memory", 72, "process", predictable=True),
    Category("software bug", 54, "process", replace=False, report=TaskState.FAILED),
    Category("network switch/cable", 35, "hang", predictable=True),
    Category("host maintenance (unplanned)", 32, "node", predictable=True),
    Category("GPU SRAM memory", 19, "process", predictable=True),
    Category("GPU system processor", 17, "process", predictable=True),
    Category("NIC", 7, "hang", predictable=True),
    Category("NCCL watchdog timeout", 7, "hang", replace=False, report=TaskState.FAILED),
    Category("silent data corruption", 6, "hang"),
    Category("GPU thermal interface/sensor", 6, "process", predictable=True),
    Category("SSD", 3, "node", predictable=True),
    Category("power supply", 3, "node", predictable=True),
    Category("server chassis", 2, "node", predictable=True),
    Category("IO expansion board", 2, "node", predictable=True),
    Category("dependency", 2, "process", replace=False, report=TaskState.FAILED),
    Category("CPU", 2, "node", predictable=True),
    Category("system memory", 2, "node", predictable=True),
    Category("planned maintenance", 47, "node", planned=True),
)


@dataclass(frozen=True)
class Failures:
    """Interruptions of the whole job: a Poisson process of rate ``1 / job_mttf_s`` (the sum of one
    rate per node), each of a :class:`Category` drawn by weight."""

    name: str
    job_mttf_s: float
    source: str = ""
    categories: tuple[Category, ...] = LLAMA3_CATEGORIES

    def drainable_share(self, predictable_fraction: float) -> float:
        """The expected share of interruptions a health-driven drain sees coming."""
        total = sum(c.weight for c in self.categories)
        seen = sum(
            c.weight * (1.0 if c.planned else predictable_fraction if c.predictable else 0.0)
            for c in self.categories
        )
        return seen / total if total else 0.0


@dataclass(frozen=True)
class Checkpointing:
    """What a checkpoint costs: ``blocking_s`` of paused training per checkpoint, then
    ``persist_s`` (in the background) until it is complete -- a failure before that falls back to
    the one before --, and ``load_s`` to load it at a restart. ``interval_s``: training time
    between checkpoints; None = Young's optimum for this scenario, rounded to whole steps."""

    name: str
    blocking_s: float
    persist_s: float
    load_s: float
    interval_s: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Restart:
    """The path from a failure to training again (every figure in seconds)."""

    name: str = "standard"
    #: Host failures: the sub-domain's detector (measured; quantile function).
    detect_node: tuple[tuple[float, float], ...] = DETECT_NODE_MEASURED
    #: Process failures: the agent sees the exit; a busy node's next delta report goes within
    #: this (uniform), the sub-domain forwards it at once.
    detect_process_s: float = 1.0
    #: Hangs: the collective (NCCL) watchdog's timeout, then the process exits and is reported.
    hang_timeout_s: float = 120.0
    #: The gang's reservation: one round trip per sub-domain plus the sub-domain's work per task.
    reservation_base_s: float = 0.18
    reservation_per_task_s: float = 0.0012
    #: The task processes start and find each other (rendezvous through the master).
    process_start_s: float = 0.35
    rendezvous_s: float = 1.0
    #: The training framework: imports, model construction, allocation, CUDA context.
    framework_init_s: float = 30.0
    #: Collective communicators for every rank.
    nccl_init_s: float = 20.0
    #: First steps after a restart (allocator, autotuning, data pipeline) counted as lost.
    warmup_s: float = 15.0
    #: A FAILED job (retry budget spent) is resubmitted by a job controller after this.
    resubmit_s: float = 60.0
    #: Back-off after a reservation failed (the master's ``GANG_RETRY_S``).
    gang_retry_s: float = GANG_RETRY_S

    def reservation_s(self, tasks: int) -> float:
        return self.reservation_base_s + self.reservation_per_task_s * tasks

    def start_s(self) -> float:
        return self.process_start_s + self.rendezvous_s

    def init_s(self) -> float:
        return self.framework_init_s + self.nccl_init_s


@dataclass(frozen=True)
class Cluster:
    """The job's nodes, the hot spares, and the job itself."""

    nodes: int = 2048
    gpus_per_node: int = 8
    spares: int = 64
    #: A swapped node is back in the spare pool after this (diagnosis, RMA, burn-in).
    repair_s: float = 3 * DAY_S
    #: One training iteration (checkpoints fall on iteration boundaries).
    step_s: float = 6.0
    #: The spec's retry budgets (the largest a spec allows is ``domainos.jobspec.MAX_RETRIES``).
    retry_on_lost: int = 100
    retry_on_exit: int = 100


@dataclass(frozen=True)
class Drain:
    """Health-driven drain: a share of the predictable interruptions is signalled ``lead_s``
    ahead; the job checkpoints (at its next checkpoint when that completes in time, else at
    once), the gang is stopped and requeued (no retry spent) and the node swapped for a spare."""

    enabled: bool = False
    predictable_fraction: float = 0.3
    lead_s: float = 600.0


@dataclass(frozen=True)
class Scenario:
    name: str
    failures: Failures
    checkpointing: Checkpointing
    restart: Restart = field(default_factory=Restart)
    cluster: Cluster = field(default_factory=Cluster)
    drain: Drain = field(default_factory=Drain)
    days: float = 54.0

    @property
    def wall_s(self) -> float:
        return self.days * DAY_S

    @property
    def lossy_mttf_s(self) -> float:
        """Mean time between interruptions that roll work back (the drained ones do not)."""
        share = self.failures.drainable_share(self.drain.predictable_fraction) if self.drain.enabled else 0.0
        return self.failures.job_mttf_s / (1.0 - share) if share < 1.0 else math.inf

    @property
    def interval_s(self) -> float:
        """Training time between checkpoints: given, or Young's optimum rounded to whole steps."""
        ck = self.checkpointing
        if ck.interval_s is not None:
            return ck.interval_s
        step = self.cluster.step_s
        if math.isinf(self.lossy_mttf_s):
            return math.inf
        return max(1, round(young_interval(ck.blocking_s, self.lossy_mttf_s) / step)) * step


def young_interval(cost_s: float, mttf_s: float) -> float:
    """Young's optimal checkpoint interval: ``sqrt(2 * C * M)``."""
    return math.sqrt(2.0 * cost_s * mttf_s)


def daly_interval(cost_s: float, mttf_s: float) -> float:
    """Daly's higher-order optimum (2006): ``sqrt(2CM) * (1 + sqrt(C/2M)/3 + C/(18M)) - C`` for
    ``C < 2M``, else ``M``."""
    if cost_s >= 2.0 * mttf_s:
        return mttf_s
    x = cost_s / (2.0 * mttf_s)
    return math.sqrt(2.0 * cost_s * mttf_s) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - cost_s


def first_order_overhead(interval_s: float, cost_s: float, mttf_s: float, per_failure_s: float) -> float:
    """The share of wall time lost, to first order: ``C/(T+C) + (T/2 + R)/M`` (what Young
    minimises over ``T``; ``R`` the fixed cost of one failure)."""
    return cost_s / (interval_s + cost_s) + (interval_s / 2.0 + per_failure_s) / mttf_s


def training_spec(cluster: Cluster) -> JobSpec:
    """The simulated job, through the real spec parser: a training job of one task per node."""
    n = cluster.nodes
    pp = 16 if n % 16 == 0 else 1
    return parse_spec(
        {
            "name": "llm-pretrain",
            "command": ["python3", "train.py"],
            "parallelism": {"tp": cluster.gpus_per_node, "pp": pp, "dp": n // pp},
            "resources": {"cpus": 96, "memory": "1Ti", "gpus": cluster.gpus_per_node, "gpu_model": GPU_MODEL},
            "retry": {"on_exit": cluster.retry_on_exit, "on_lost": cluster.retry_on_lost},
        }
    )


# -- the simulation --------------------------------------------------------------------------------


class Phase(enum.StrEnum):
    TRAIN = "train"
    CHECKPOINT = "checkpoint"  # the blocking part of a periodic checkpoint
    CHECKPOINT_WAIT = "checkpoint_wait"  # the previous checkpoint is still persisting (one at a time)
    DRAIN = "drain"  # an on-demand checkpoint for a drain, or waiting for the drain's one to persist
    STALLED = "stalled"  # a node failed; not detected yet
    RESCHEDULE = "reschedule"  # the gang's reservation is in flight
    GANG_RETRY = "gang_retry"  # back-off after a failed reservation
    SPARE_WAIT = "spare_wait"  # not enough spare nodes: waiting for a repair
    START = "start"  # processes start and rendezvous
    INIT = "init"  # framework and NCCL initialisation
    LOAD = "load"  # checkpoint load
    WARMUP = "warmup"
    RESUBMIT = "resubmit"  # the job FAILED (retry budget spent); a new one is on its way


BUCKET: Mapping[Phase, str] = {
    Phase.TRAIN: "productive",
    Phase.CHECKPOINT: "checkpoint",
    Phase.CHECKPOINT_WAIT: "checkpoint",
    Phase.DRAIN: "drain",
    Phase.STALLED: "detection",
    Phase.RESCHEDULE: "rescheduling",
    Phase.GANG_RETRY: "rescheduling",
    Phase.SPARE_WAIT: "spare_wait",
    Phase.START: "restart",
    Phase.INIT: "restart",
    Phase.LOAD: "load",
    Phase.WARMUP: "warmup",
    Phase.RESUBMIT: "resubmit",
}
#: Phases in which the job's processes are placed and a failure of one of its nodes stops it.
_PLACED = frozenset(
    {
        Phase.TRAIN,
        Phase.CHECKPOINT,
        Phase.CHECKPOINT_WAIT,
        Phase.DRAIN,
        Phase.START,
        Phase.INIT,
        Phase.LOAD,
        Phase.WARMUP,
    }
)
_TRAINING = frozenset({Phase.TRAIN, Phase.CHECKPOINT, Phase.CHECKPOINT_WAIT})


@dataclass(frozen=True)
class Injected:
    """A failure put into a run by hand (tests): at ``at_s`` on task ``task``'s node, of the
    category named ``category``; ``signalled`` = its health signal comes ``Drain.lead_s`` before."""

    at_s: float
    category: str
    task: int = 0
    signalled: bool = False


@dataclass(frozen=True)
class Result:
    """One run: where the wall time went, and what happened."""

    scenario: str
    seed: int
    wall_s: float
    productive_s: float
    overheads: Mapping[str, float]
    interval_s: float
    #: Failures of the job's nodes, and how many stopped the job while it was placed.
    faults: int
    interruptions: int
    #: Failures that found their node already drained and swapped (avoided).
    faults_avoided: int
    drains: int
    #: Gang requeues by the job table (lost or failed task), jobs FAILED and resubmitted.
    requeues: int
    resubmissions: int
    gang_retries: int
    spare_waits: int
    min_free_spares: int
    lost_max_s: float
    by_category: Mapping[str, int]
    table: Mapping[str, Any]

    @property
    def ratio(self) -> float:
        """Effective training time ratio: productive time / wall time."""
        return self.productive_s / self.wall_s

    def check(self) -> None:
        """productive + every overhead == wall time (raises AssertionError otherwise)."""
        total = self.productive_s + sum(self.overheads.values())
        if abs(total - self.wall_s) > 1e-6 * max(1.0, self.wall_s):
            raise AssertionError(f"accounting: {total} s accounted for a wall time of {self.wall_s} s")
        if min(self.overheads.values(), default=0.0) < -1e-9 or self.productive_s < -1e-9:
            raise AssertionError(f"accounting: a negative bucket in {dict(self.overheads)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "wall_s": self.wall_s,
            "productive_s": self.productive_s,
            "ratio": self.ratio,
            "overheads_s": dict(self.overheads),
            "interval_s": self.interval_s,
            "faults": self.faults,
            "interruptions": self.interruptions,
            "faults_avoided": self.faults_avoided,
            "drains": self.drains,
            "requeues": self.requeues,
            "resubmissions": self.resubmissions,
            "gang_retries": self.gang_retries,
            "spare_waits": self.spare_waits,
            "min_free_spares": self.min_free_spares,
            "lost_max_s": self.lost_max_s,
            "by_category": dict(self.by_category),
            "table": dict(self.table),
        }


class Simulation:
    """One run of one scenario. :meth:`run` advances virtual time; the job table, the job and the
    node assignment can be inspected between calls (tests do)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int = 0,
        *,
        validate: bool = False,
        inject: Sequence[Injected] = (),
        random_failures: bool = True,
    ) -> None:
        self.sc = scenario
        self.seed = seed
        self.validate = validate
        cl = scenario.cluster
        self.n = cl.nodes
        self.interval = scenario.interval_s
        ck = scenario.checkpointing
        self.blocking, self.persist = ck.blocking_s, ck.persist_s
        self.spec = training_spec(cl)
        self._rng_nodes = random.Random(f"{seed}/nodes")
        self._rng_detect = random.Random(f"{seed}/detect")
        self.t = 0.0
        self.clock = FakeClock(1_750_000_000.0)
        self.table = JobTable(clock=self.clock)
        # Nodes: the job's (task i on assign[i]), the spares, those in repair.
        self.assign = [f"node-{i:05d}" for i in range(self.n)]
        self.where = {node: i for i, node in enumerate(self.assign)}
        self.spares: deque[str] = deque(f"spare-{i:04d}" for i in range(cl.spares))
        self.in_repair: set[str] = set()
        self.failed: dict[str, Category] = {}  # failed, not yet detected
        # Signalled nodes -> when they are predicted to fail: drained, or swapped at the next placement.
        self.drain_nodes: dict[str, float] = {}
        self._heap: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._seq = 0
        # Training progress (seconds of training) and checkpoints.
        self.progress = 0.0
        self.committed = 0.0  # progress of the latest complete checkpoint
        self.next_ckpt = self.interval
        # Checkpoints taken, not yet complete: (id, progress, complete at).
        self.inflight: list[tuple[int, float, float]] = []
        self._ckpt_ids = 0
        self.drain_planned = False
        # Accounting.
        self.productive = 0.0
        self.overheads = dict.fromkeys(OVERHEADS, 0.0)
        self.faults = self.interruptions = self.faults_avoided = self.drains = 0
        self.requeues = self.resubmissions = self.gang_retries = self.spare_waits = 0
        self.min_free_spares = cl.spares
        self.lost_max = 0.0
        self.by_category: dict[str, int] = {}
        self.job_failures: list[str] = []
        #: StopTask effects of the job table's requeues (every other task of the gang, each time).
        self.stops_sent = 0
        self._jobs = 0
        self._reserving: int | None = None  # the attempt being reserved
        self.job: Job | None = None
        self._submit()
        self._place_now()  # steady state at time 0: placed and running, nothing charged
        self._report(TaskState.RUNNING, range(self.n))
        self.phase: Phase = Phase.TRAIN
        self.phase_end = self.next_ckpt
        if random_failures:
            self._arrivals(scenario)
        for inj in inject:
            self._inject(inj)

    # -- public ------------------------------------------------------------------------------------

    def run(self, until_s: float | None = None) -> Result:
        """Advance to ``until_s`` (default: the scenario's end); the result so far."""
        end = self.sc.wall_s if until_s is None else min(until_s, self.sc.wall_s)
        while True:
            t_event = self._heap[0][0] if self._heap else math.inf
            t_next = min(t_event, self.phase_end, end)
            self._advance(t_next)
            if t_next >= end and t_event > end and self.phase_end > end:
                break
            if self.phase_end <= t_event:
                self._phase_done()
            else:
                _, _, kind, data = heapq.heappop(self._heap)
                if kind == "fault":
                    self._on_fault(*data)
                elif kind == "signal":
                    self._on_signal(*data)
                elif kind == "detect":
                    self._on_detect(*data)
                elif kind == "persisted":
                    self._on_persisted(*data)
                else:
                    self._on_repaired(*data)
        return self.result()

    def result(self) -> Result:
        t = self.table
        return Result(
            scenario=self.sc.name,
            seed=self.seed,
            wall_s=self.t,
            productive_s=self.productive,
            overheads=dict(self.overheads),
            interval_s=self.interval,
            faults=self.faults,
            interruptions=self.interruptions,
            faults_avoided=self.faults_avoided,
            drains=self.drains,
            requeues=self.requeues,
            resubmissions=self.resubmissions,
            gang_retries=self.gang_retries,
            spare_waits=self.spare_waits,
            min_free_spares=self.min_free_spares,
            lost_max_s=self.lost_max,
            by_category=dict(sorted(self.by_category.items(), key=lambda kv: -kv[1])),
            table={
                "jobs_submitted": self._jobs,
                "tasks_placed": t.placed_total,
                "tasks_preempted": t.preempted_total,
                "misdispatches": t.misdispatch_total,
                "last_gang_attempt": JobTable.gang_attempt(self.job) if self.job is not None else 0,
                "job_failures": self.job_failures[:3],
            },
        )

    # -- time ------------------------------------------------------------------------------------------

    def _advance(self, to: float) -> None:
        dt = to - self.t
        if dt <= 0:
            return
        bucket = BUCKET[self.phase]
        if bucket == "productive":
            self.productive += dt
            self.progress += dt
        else:
            self.overheads[bucket] += dt
        self.t = to
        self.clock.advance(dt)

    def _push(self, at: float, kind: str, *data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, data))

    def _enter(self, phase: Phase, duration: float = math.inf) -> None:
        self.phase = phase
        self.phase_end = self.t + duration

    # -- failures ------------------------------------------------------------------------------------

    def _arrivals(self, sc: Scenario) -> None:
        """Every interruption of the run, drawn up front (the same stream with and without drain)."""
        rng = random.Random(f"{self.seed}/arrivals")
        cats = sc.failures.categories
        weights = [c.weight for c in cats]
        frac = sc.drain.predictable_fraction
        t = 0.0
        while True:
            t += rng.expovariate(1.0 / sc.failures.job_mttf_s)
            if t >= sc.wall_s:
                return
            cat = rng.choices(cats, weights)[0]
            seen = cat.planned or (cat.predictable and rng.random() < frac)
            if seen:  # signal now, failure lead_s later
                self._push(t, "signal", cat, None)
            else:
                self._push(t, "fault", cat, None)

    def _inject(self, inj: Injected) -> None:
        cat = next(c for c in self.sc.failures.categories if c.name == inj.category)
        node = self.assign[inj.task]
        if inj.signalled:
            self._push(max(0.0, inj.at_s - self.sc.drain.lead_s), "signal", cat, node)
        else:
            self._push(inj.at_s, "fault", cat, node)

    def _detect_delay(self, cat: Category) -> float:
        u = self._rng_detect.random()
        r = self.sc.restart
        if cat.detect == "process":
            return u * r.detect_process_s
        if cat.detect == "hang":
            return r.hang_timeout_s + u * r.detect_process_s
        return _quantile(r.detect_node, u)

    def _on_signal(self, cat: Category, node: str | None) -> None:
        if node is None:
            node = self.assign[self._rng_nodes.randrange(self.n)]
        fails_at = self.t + self.sc.drain.lead_s
        self._push(fails_at, "fault", cat, node)
        if not self.sc.drain.enabled or node not in self.where or node in self.failed:
            return
        self.drain_nodes[node] = fails_at
        if self.phase is Phase.TRAIN:
            self._plan_drain()
        elif self.phase in (Phase.CHECKPOINT, Phase.CHECKPOINT_WAIT):
            self.drain_planned = True
        # Otherwise (down, restarting, already draining) the node is swapped at the next placement
        # or, when the job is already placed, drained as soon as it trains (see _train).

    def _plan_drain(self) -> None:
        """Training, with signalled nodes: drain at the next checkpoint when it completes before the
        first predicted failure, else take a checkpoint now (on demand)."""
        snap = self.t + (self.next_ckpt - self.progress)
        if self.inflight:
            snap = max(snap, self.inflight[-1][2])
        if snap + self.blocking + self.persist <= min(self.drain_nodes.values()):
            self.drain_planned = True
        else:
            self._enter(Phase.DRAIN, self.blocking)

    def _on_fault(self, cat: Category, node: str | None) -> None:
        delay = self._detect_delay(cat)  # drawn for every failure: paired streams across scenarios
        if node is None:
            node = self.assign[self._rng_nodes.randrange(self.n)]
        self.faults += 1
        if node not in self.where:  # drained and swapped before it failed
            self.faults_avoided += 1
            return
        if node in self.failed:
            return
        self.by_category[cat.name] = self.by_category.get(cat.name, 0) + 1
        self.failed[node] = cat
        self._push(self.t + delay, "detect", node, cat)
        if self.phase in _PLACED:
            self._rollback()
            self.interruptions += 1
            self.drain_planned = False
            self._enter(Phase.STALLED)

    def _rollback(self) -> None:
        lost = self.progress - self.committed
        self.productive -= lost
        self.overheads["lost_work"] += lost
        self.lost_max = max(self.lost_max, lost)
        self.progress = self.committed
        self.next_ckpt = self.committed + self.interval
        self.inflight.clear()

    def _on_detect(self, node: str, cat: Category) -> None:
        del self.failed[node]
        if cat.replace:
            self._to_repair(node)
        index = self.where.get(node)
        job = self.job
        if index is None or job is None or job.terminal:
            return  # not the job's (any more), or the job is being resubmitted
        task = job.tasks[index]
        if task.live:
            code = 0 if cat.report is TaskState.LOST else 134
            why = f"node {node}: {cat.name}"
            effects = self._handle(
                TaskUpdates(
                    SUBDOMAIN,
                    (TaskReport(job.job_id, index, task.attempt, cat.report, exit_code=code, message=why),),
                )
            )
            self._after_loss(effects)
        elif self.phase is Phase.RESCHEDULE and self._reserving is not None:
            # The sub-domain drops the holds of a dead node and refuses the reservation: the
            # master fails the try whole and tries again after GANG_RETRY_S.
            self._handle(
                GangNotPlaced(job.job_id, self._reserving, f"node {node} died during the reservation")
            )
            self._reserving = None
            self.gang_retries += 1
            self._enter(Phase.GANG_RETRY, self.sc.restart.gang_retry_s)

    def _after_loss(self, effects: list[Effect]) -> None:
        job = self.job
        assert job is not None
        stops = [e for e in effects if isinstance(e, StopTask)]
        self.stops_sent += len(stops)
        if job.state is JobState.FAILED:
            # The retry budget is spent: the sub-domain stops the rest and reports them; the
            # finished job leaves the table; a job controller resubmits it (same checkpoints).
            self.job_failures.append(job.message)
            self._handle(
                TaskUpdates(
                    SUBDOMAIN,
                    tuple(
                        TaskReport(
                            job.job_id, s.ref.task_index, s.ref.attempt, TaskState.CANCELLED, message=s.reason
                        )
                        for s in stops
                    ),
                )
            )
            if self.table.retire(job.job_id) is None:
                raise AssertionError(f"job {job.job_id} failed but could not be retired")
            self.job = None
            self.resubmissions += 1
            self._enter(Phase.RESUBMIT, self.sc.restart.resubmit_s)
            return
        if not self.table.gang_waiting(job):
            raise AssertionError(
                f"job {job.job_id}: a lost gang task did not requeue the gang: {job.message}"
            )
        self.requeues += 1
        self._plan()

    def _to_repair(self, node: str) -> None:
        if node in self.in_repair:
            return
        self.in_repair.add(node)
        self._push(self.t + self.sc.cluster.repair_s, "repaired", node)

    def _on_repaired(self, node: str) -> None:
        self.in_repair.discard(node)
        if node not in self.where:  # else still the job's (not swapped yet: no spare): usable in place
            self.spares.append(node)
        if self.phase is Phase.SPARE_WAIT:
            self._plan()

    # -- checkpoints ---------------------------------------------------------------------------------

    def _on_persisted(self, ckpt_id: int) -> None:
        done = [c for c in self.inflight if c[0] == ckpt_id]
        if not done:
            return  # rolled back by a failure before it completed
        self.committed = max(self.committed, done[0][1])
        self.inflight.remove(done[0])
        if self.inflight:
            return
        if self.phase is Phase.CHECKPOINT_WAIT:
            self._enter(Phase.CHECKPOINT, self.blocking)
        elif self.phase is Phase.DRAIN and self.phase_end == math.inf:
            self._drain()

    def _snapshot(self) -> None:
        """The blocking part is over: the checkpoint of the current progress is taken."""
        self.next_ckpt = self.progress + self.interval
        if self.persist <= 0:
            self.committed = self.progress
            return
        self._ckpt_ids += 1
        # Persisted one at a time: an on-demand one taken while another persists completes after it.
        done = max([self.t + self.persist] + [c[2] + self.persist for c in self.inflight])
        self.inflight.append((self._ckpt_ids, self.progress, done))
        self._push(done, "persisted", self._ckpt_ids)

    # -- the job's own transitions -------------------------------------------------------------------

    def _phase_done(self) -> None:
        ph = self.phase
        r = self.sc.restart
        if ph is Phase.TRAIN:
            if self.inflight:
                self._enter(Phase.CHECKPOINT_WAIT)
            else:
                self._enter(Phase.CHECKPOINT, self.blocking)
        elif ph is Phase.CHECKPOINT:
            self._snapshot()
            if self.drain_planned:
                if self.inflight:
                    self._enter(Phase.DRAIN)
                else:
                    self._drain()
            else:
                self._train()
        elif ph is Phase.DRAIN:  # the on-demand checkpoint's blocking part
            self._snapshot()
            if self.inflight:
                self._enter(Phase.DRAIN)
            else:
                self._drain()
        elif ph is Phase.RESCHEDULE:
            self._place_now()
            self._enter(Phase.START, r.start_s())
        elif ph is Phase.START:
            healthy = [i for i, node in enumerate(self.assign) if node not in self.failed]
            self._report(TaskState.RUNNING, healthy)
            if len(healthy) < self.n:  # a process cannot start on a dead node: stalled until detected
                self._enter(Phase.STALLED)
            else:
                self._enter(Phase.INIT, r.init_s())
        elif ph is Phase.INIT:
            self._enter(Phase.LOAD, self.sc.checkpointing.load_s)
        elif ph is Phase.LOAD:
            self._enter(Phase.WARMUP, r.warmup_s)
        elif ph is Phase.WARMUP:
            self._train()
        elif ph in (Phase.GANG_RETRY, Phase.RESUBMIT):
            if self.job is None:
                self._submit()
            self._plan()
        else:  # pragma: no cover - phases without an end
            raise AssertionError(f"phase {ph} has no end")

    def _train(self) -> None:
        self._enter(Phase.TRAIN, max(0.0, self.next_ckpt - self.progress))
        if self.drain_nodes and not self.drain_planned:
            if self.progress == self.committed and not self.inflight:
                # Signalled while the job was restarting: nothing trained since the checkpoint it
                # loaded, so it stops at once.
                self._drain()
            else:
                self._plan_drain()

    def _drain(self) -> None:
        job = self.job
        assert job is not None
        nodes = sorted(self.drain_nodes)
        self._handle(Preempt(job.job_id, f"drain: {', '.join(nodes)} predicted to fail (health signal)"))
        if not self.table.gang_waiting(job):
            raise AssertionError(f"job {job.job_id}: the drain did not requeue the gang")
        self.drains += 1
        self.drain_planned = False
        self._plan()

    # -- scheduling: the master's side through the job table, the sub-domain's modelled -----------

    def _submit(self) -> None:
        self._jobs += 1
        job = self.table.new_job(f"j-{self._jobs}", self.spec, f"req-{self._jobs}")
        self.table.add(job)
        self.job = job

    def _plan(self) -> None:
        """The scheduling pass starts the gang's reservation: keep every usable node, swap the
        others (in repair, or signalled) for spares."""
        job = self.job
        assert job is not None and self.table.gang_waiting(job)
        swap = [i for i, node in enumerate(self.assign) if node in self.in_repair or node in self.drain_nodes]
        if len(swap) > len(self.spares):
            self.table.set_waiting(
                job.job_id, f"{len(swap)} nodes to replace, {len(self.spares)} spares free"
            )
            self.spare_waits += 1
            self._enter(Phase.SPARE_WAIT)
            return
        for i in swap:
            old, new = self.assign[i], self.spares.popleft()
            if self.drain_nodes.pop(old, None) is not None:
                self._to_repair(old)
            del self.where[old]
            self.assign[i], self.where[new] = new, i
        self.min_free_spares = min(self.min_free_spares, len(self.spares))
        indexes = tuple(JobTable.gang_indexes(job))
        self._handle(StartGang(job.job_id, indexes))
        self._reserving = JobTable.gang_attempt(job)
        self._enter(Phase.RESCHEDULE, self.sc.restart.reservation_s(len(indexes)))

    def _place_now(self) -> None:
        """Every part committed: the gang is placed; the sub-domain reports every task ASSIGNED."""
        job = self.job
        assert job is not None
        if self._reserving is None:
            self._handle(StartGang(job.job_id, tuple(JobTable.gang_indexes(job))))
            self._reserving = JobTable.gang_attempt(job)
        attempt, self._reserving = self._reserving, None
        self._handle(
            PlaceGang(job.job_id, attempt, dict.fromkeys(range(self.n), (SUBDOMAIN, REGION, GPU_MODEL)))
        )
        self._report(TaskState.ASSIGNED, range(self.n))

    def _report(self, state: TaskState, indexes: Iterable[int]) -> None:
        job = self.job
        assert job is not None
        now = self.clock.time()
        reports = tuple(
            TaskReport(
                job.job_id,
                i,
                job.tasks[i].attempt,
                state,
                node_id=self.assign[i],
                started_at=now if state is TaskState.RUNNING else 0.0,
            )
            for i in indexes
        )
        if reports:
            self._handle(TaskUpdates(SUBDOMAIN, reports))

    def _handle(self, event: Event) -> list[Effect]:
        effects = self.table.handle(event)
        self.table.handle(Tick())  # placements not confirmed in time would be re-placed here
        if self.validate:
            self.table.validate()
        return effects


def _quantile(points: Sequence[tuple[float, float]], u: float) -> float:
    """The piecewise-linear quantile function through ``points`` at ``u`` in [0, 1]."""
    probs = [p for p, _ in points]
    k = bisect.bisect_right(probs, u)
    if k <= 0:
        return points[0][1]
    if k >= len(points):
        return points[-1][1]
    (p0, v0), (p1, v1) = points[k - 1], points[k]
    return v0 + (v1 - v0) * (u - p0) / (p1 - p0) if p1 > p0 else v1


def simulate(scenario: Scenario, seed: int = 0, *, validate: bool = False) -> Result:
    """Run ``scenario`` once with ``seed``; the result has passed :meth:`Result.check`."""
    result = Simulation(scenario, seed, validate=validate).run()
    result.check()
    return result
