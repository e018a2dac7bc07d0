"""When to report what: the agent's report planner, a pure state machine (no I/O, injected clock).

Rules (docs/protocol.md, agent -> sub-domain, step 3):

* task transitions go out at once, batched over at most :data:`BATCH_WINDOW_S` -- every
  transition, in order (a task that started and finished inside one window appears twice:
  RUNNING, then SUCCEEDED);
* usage at most every ``report_interval_s`` and only when it changed meaningfully
  (CPU +-5 points, memory +-1 % of the node's memory, a GPU's utilisation +-5 points, memory
  +-1 % of that GPU, temperature +-5 C or power +-10 %);
* health as soon as it changes;
* a full report (every known task, usage, health) every ``full_sync_interval_s``;
* a heartbeat (an empty delta: no tasks, usage or health) when nothing at all went out for
  ``heartbeat_interval_s`` (0: never; a sub-domain that does not set it relies on full reports).

``seq`` restarts with every stream: the first report after a ``Register`` has ``seq`` 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from domainos.clock import Clock
from domainos.model import NodeHealth, NodeUsage, TaskRef, TaskStatus

#: Task transitions wait at most this long to travel together.
BATCH_WINDOW_S = 0.05
CPU_DELTA_POINTS = 5.0
MEMORY_DELTA_FRACTION = 0.01
GPU_UTIL_DELTA_POINTS = 5.0
GPU_TEMPERATURE_DELTA_C = 5.0
GPU_POWER_DELTA_FRACTION = 0.10


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Connected:
    """A ``Register`` carrying every task, this usage and this health was just queued."""

    usage: NodeUsage
    health: NodeHealth


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The stream ended; the next ``Register`` will carry everything again."""


@dataclass(frozen=True, slots=True)
class IntervalsChanged:
    """The sub-domain's ``Registered`` set the damping, full-sync and heartbeat intervals (0: it
    did not say, except for the heartbeat, where 0 means none)."""

    report_interval_s: float
    full_sync_interval_s: float
    heartbeat_interval_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskChanged:
    status: TaskStatus


@dataclass(frozen=True, slots=True)
class TasksForgotten:
    refs: tuple[TaskRef, ...]


@dataclass(frozen=True, slots=True)
class UsageSampled:
    usage: NodeUsage
    health: NodeHealth


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: emit whatever is due."""


Event = Connected | Disconnected | IntervalsChanged | TaskChanged | TasksForgotten | UsageSampled | Tick


# ----------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class SendReport:
    """Send one ``AgentReport``. ``usage``/``health`` are ``None`` when unchanged (delta)."""

    seq: int
    full: bool
    tasks: tuple[TaskStatus, ...]
    usage: NodeUsage | None
    health: NodeHealth | None


def usage_changed(
    old: NodeUsage | None,
    new: NodeUsage,
    *,
    memory_total: int,
    gpu_memory_totals: Mapping[int, int],
) -> bool:
    """True when ``new`` differs meaningfully from ``old`` (the last usage sent)."""
    if old is None:
        return True
    if abs(new.cpu_percent - old.cpu_percent) >= CPU_DELTA_POINTS:
        return True
    if abs(new.memory_used_bytes - old.memory_used_bytes) >= MEMORY_DELTA_FRACTION * max(1, memory_total):
        return True
    if [g.index for g in new.gpus] != [g.index for g in old.gpus]:
        return True
    for a, b in zip(old.gpus, new.gpus, strict=True):
        total = gpu_memory_totals.get(b.index, 0)
        if (
            abs(b.utilization_percent - a.utilization_percent) >= GPU_UTIL_DELTA_POINTS
            or abs(b.memory_used_bytes - a.memory_used_bytes) >= MEMORY_DELTA_FRACTION * max(1, total)
            or abs(b.temperature_c - a.temperature_c) >= GPU_TEMPERATURE_DELTA_C
            or abs(b.power_w - a.power_w) >= GPU_POWER_DELTA_FRACTION * max(1.0, a.power_w)
            # Health signals: every change counts (the sub-domain's policy acts on them).
            or (b.ecc_corrected, b.ecc_uncorrected, b.last_xid, b.xid_count, b.throttle_reasons)
            != (a.ecc_corrected, a.ecc_uncorrected, a.last_xid, a.xid_count, a.throttle_reasons)
        ):
            return True
    return False


class ReportPlanner:
    """Decides which ``AgentReport`` to send and when; ``handle(event) -> [SendReport]``.

    It keeps a mirror of every task the agent knows (for full reports), the transitions not yet
    sent, and the usage/health last sent. The caller delivers :class:`Tick` no later than
    :meth:`next_deadline`.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        report_interval_s: float,
        full_sync_interval_s: float,
        heartbeat_interval_s: float = 0.0,
        memory_total: int = 0,
        gpu_memory_totals: Mapping[int, int] | None = None,
        batch_window_s: float = BATCH_WINDOW_S,
    ) -> None:
        self._clock = clock
        self.report_interval_s = report_interval_s
        self.full_sync_interval_s = full_sync_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.batch_window_s = batch_window_s
        self._memory_total = memory_total
        self._gpu_memory_totals = dict(gpu_memory_totals or {})
        self.connected = False
        self.seq = 0
        self._known: dict[TaskRef, TaskStatus] = {}
        self._pending: list[TaskStatus] = []
        self._pending_since: float | None = None
        self._usage: NodeUsage | None = None
        self._health: NodeHealth | None = None
        self._usage_sent: NodeUsage | None = None
        self._usage_sent_at = 0.0
        self._health_sent: NodeHealth | None = None
        self._full_at = 0.0
        #: When the last report of any kind (or the ``Register``) went out.
        self._sent_at = 0.0

    # ------------------------------------------------------------------ queries

    @property
    def known(self) -> Mapping[TaskRef, TaskStatus]:
        return self._known

    @property
    def pending(self) -> tuple[TaskStatus, ...]:
        """Transitions not yet sent, oldest first."""
        return tuple(self._pending)

    def next_deadline(self) -> float | None:
        """Monotonic time of the next report that may become due (``None``: nothing until an event)."""
        if not self.connected:
            return None
        deadlines = [self._full_at + self.full_sync_interval_s]
        if self.heartbeat_interval_s > 0:
            deadlines.append(self._sent_at + self.heartbeat_interval_s)
        if self._pending_since is not None:
            deadlines.append(self._pending_since + self.batch_window_s)
        if self._health is not None and self._health != self._health_sent:
            deadlines.append(self._clock.monotonic())
        if self._usage is not None and self._usage_differs():
            deadlines.append(self._usage_sent_at + self.report_interval_s)
        return min(deadlines)

    # ------------------------------------------------------------------ events

    def handle(self, event: Event) -> list[SendReport]:
        """Apply one event; the reports to send now, in order."""
        now = self._clock.monotonic()
        if isinstance(event, Connected):
            self.connected = True
            self.seq = 0
            self._pending.clear()
            self._pending_since = None
            self._usage = self._usage_sent = event.usage
            self._health = self._health_sent = event.health
            self._usage_sent_at = self._full_at = self._sent_at = now
            return []
        if isinstance(event, Disconnected):
            self.connected = False
            self._pending.clear()
            self._pending_since = None
            return []
        if isinstance(event, IntervalsChanged):
            if event.report_interval_s > 0:
                self.report_interval_s = event.report_interval_s
            if event.full_sync_interval_s > 0:
                self.full_sync_interval_s = event.full_sync_interval_s
            self.heartbeat_interval_s = max(event.heartbeat_interval_s, 0.0)
            return []
        if isinstance(event, TaskChanged):
            ref = event.status.ref
            self._known[ref] = event.status
            if self.connected:
                self._pending.append(event.status)
                if self._pending_since is None:
                    self._pending_since = now
            return []
        if isinstance(event, TasksForgotten):
            gone = set(event.refs)
            for ref in gone:
                self._known.pop(ref, None)
            self._pending = [s for s in self._pending if s.ref not in gone]
            if not self._pending:
                self._pending_since = None
            return []
        if isinstance(event, UsageSampled):
            self._usage = event.usage
            self._health = event.health
            return []
        return self._tick(now)

    def _usage_differs(self) -> bool:
        assert self._usage is not None
        return usage_changed(
            self._usage_sent,
            self._usage,
            memory_total=self._memory_total,
            gpu_memory_totals=self._gpu_memory_totals,
        )

    def _tick(self, now: float) -> list[SendReport]:
        if not self.connected:
            return []
        if now >= self._full_at + self.full_sync_interval_s:
            self.seq += 1
            report = SendReport(
                seq=self.seq,
                full=True,
                tasks=tuple(self._known[r] for r in sorted(self._known)),
                usage=self._usage,
                health=self._health,
            )
            self._pending.clear()
            self._pending_since = None
            self._full_at = self._usage_sent_at = self._sent_at = now
            self._usage_sent = self._usage
            self._health_sent = self._health
            return [report]
        tasks_due = self._pending_since is not None and now >= self._pending_since + self.batch_window_s
        usage_due = (
            self._usage is not None
            and now >= self._usage_sent_at + self.report_interval_s
            and self._usage_differs()
        )
        health_due = self._health is not None and self._health != self._health_sent
        heartbeat_due = self.heartbeat_interval_s > 0 and now >= self._sent_at + self.heartbeat_interval_s
        if not (tasks_due or usage_due or health_due or heartbeat_due):
            return []
        self.seq += 1
        self._sent_at = now
        tasks: tuple[TaskStatus, ...] = ()
        if tasks_due:
            tasks = tuple(self._pending)
            self._pending.clear()
            self._pending_since = None
        usage = self._usage if usage_due else None
        if usage_due:
            self._usage_sent, self._usage_sent_at = self._usage, now
        health = self._health if health_due else None
        if health_due:
            self._health_sent = self._health
        return [SendReport(seq=self.seq, full=False, tasks=tasks, usage=usage, health=health)]

    # ------------------------------------------------------------------ invariants

    def validate(self) -> None:
        """Check the planner's invariants (tests call this after every step)."""
        assert self.seq >= 0
        assert self.report_interval_s > 0 and self.full_sync_interval_s > 0
        for ref, status in self._known.items():
            assert status.ref == ref, f"known task keyed {ref} is {status.ref}"
        latest = {s.ref: s for s in self._pending}
        for ref, status in latest.items():
            assert self._known.get(ref) == status, f"last pending {ref} is not the latest known status"
        assert (self._pending_since is None) == (not self._pending), "pending_since out of step"
        if not self.connected:
            assert not self._pending, "transitions pending while disconnected"
        assert self._full_at <= self._clock.monotonic(), "full report in the future"
        assert self._full_at <= self._sent_at, "a full report went out after the last report sent"
