"""Rendezvous: the addresses a job's tasks serve on, so its peers and its driver can find them.

A task (a DSDK worker, a collective's rank) publishes ``(kind, task index, attempt) -> host:port``
once it listens; the job's driver and its other tasks list them, waiting for the first
``min_count``. This is how "peers are found through the control plane" without any per-node
state: the table holds at most one endpoint per task index and kind of each *active* job, lives
in memory only (a restarted master's tasks publish again when their job's driver asks them to
reconnect), and is dropped when the job finishes.

Pure state plus one asyncio condition per waited-on job; the master calls :meth:`publish`,
:meth:`wait` and :meth:`forget`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

from domainos.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

__all__ = ["MAX_WAIT_S", "Endpoint", "Rendezvous", "check_kind"]
from domainos.model import check_node_id

#: Longest wait a ListEndpoints may ask for (a client that wants longer asks again).
MAX_WAIT_S = 30.0
#: Endpoints one job may hold (one per task index and kind).
MAX_PER_JOB = 20_000
#: Kinds of endpoint a job may publish (distinct services of one task).
MAX_KINDS = 8
_KIND_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")
_ADDRESS_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]{1,253}):([0-9]{1,5})\Z")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one task of a job serves ``kind`` (``master.proto`` ``Endpoint``)."""

    task_index: int
    attempt: int
    address: str
    kind: str = "dsdk-worker"
    node_id: str = ""
    subdomain_id: str = ""
    region: str = ""
    published_at: float = 0.0

    def validate(self, replicas: int) -> None:
        """InvalidArgument naming the field that is wrong."""
        if not 0 <= self.task_index < replicas:
            raise InvalidArgument(
                f"must be between 0 and {replicas - 1} (the job has {replicas} tasks), got {self.task_index}",
                field="endpoint.task_index",
            )
        if self.attempt < 0:
            raise InvalidArgument(f"must not be negative, got {self.attempt}", field="endpoint.attempt")
        m = _ADDRESS_RE.match(self.address)
        if m is None or not 0 < int(m.group(2)) <= 65535:
            raise InvalidArgument(
                f"expected host:port (e.g. 10.0.0.7:41234), got {self.address[:100]!r}",
                field="endpoint.address",
            )
        if not _KIND_RE.match(self.kind):
            raise InvalidArgument(
                f"expected 1-32 lowercase letters, digits or '-', starting with a letter, got {self.kind[:40]!r}",
                field="endpoint.kind",
            )
        if self.node_id:
            check_node_id(self.node_id, "endpoint.node_id")
        for name, text in (("subdomain_id", self.subdomain_id), ("region", self.region)):
            if len(text) > 128 or "\x00" in text:
                raise InvalidArgument("at most 128 characters, no NUL", field=f"endpoint.{name}")


def check_kind(kind: str, fld: str = "kind") -> str:
    """An endpoint kind ("" = any), or InvalidArgument."""
    if kind and not _KIND_RE.match(kind):
        raise InvalidArgument(f"not a valid endpoint kind: {kind[:40]!r}", field=fld)
    return kind


class Rendezvous:
    """The endpoints of active jobs, by job, kind and task index (the latest attempt wins)."""

    def __init__(self, *, max_per_job: int = MAX_PER_JOB) -> None:
        self._max_per_job = max_per_job
        self._jobs: dict[str, dict[tuple[str, int], Endpoint]] = {}
        self._changed: dict[str, asyncio.Condition] = {}
        self._waiters: dict[str, int] = {}

    def __len__(self) -> int:
        """Jobs with at least one endpoint."""
        return len(self._jobs)

    def endpoints(self, job_id: str, kind: str = "") -> list[Endpoint]:
        """The job's endpoints (of ``kind``; "" = all), by kind then task index."""
        table = self._jobs.get(job_id, {})
        return [table[k] for k in sorted(table) if not kind or k[0] == kind]

    def publish(self, job_id: str, endpoint: Endpoint, *, replicas: int) -> None:
        """Record ``endpoint`` (validated against a job of ``replicas`` tasks); an older attempt of
        the same task and kind never replaces a newer one."""
        endpoint.validate(replicas)
        table = self._jobs.setdefault(job_id, {})
        key = (endpoint.kind, endpoint.task_index)
        old = table.get(key)
        if old is not None and old.attempt > endpoint.attempt:
            raise FailedPrecondition(
                f"task {endpoint.task_index} of job {job_id} already published attempt {old.attempt}; "
                f"attempt {endpoint.attempt} is superseded",
                field="endpoint.attempt",
            )
        if old is None:
            kinds = {k for k, _ in table}
            if endpoint.kind not in kinds and len(kinds) >= MAX_KINDS:
                raise ResourceExhausted(
                    f"job {job_id} already publishes {MAX_KINDS} kinds of endpoint; at most {MAX_KINDS}",
                    field="endpoint.kind",
                )
            if len(table) >= self._max_per_job:
                raise ResourceExhausted(
                    f"job {job_id} already has {len(table)} endpoints; at most {self._max_per_job}"
                )
        table[key] = endpoint
        cond = self._changed.get(job_id)
        if cond is not None:
            asyncio.get_running_loop().create_task(_notify(cond))

    async def wait(self, job_id: str, done: Callable[[], bool], wait_s: float) -> None:
        """Return once ``done()`` holds (checked at every publish and when the job is forgotten)
        or after ``wait_s`` seconds, at most :data:`MAX_WAIT_S`."""
        if not 0 <= wait_s <= 3600:
            raise InvalidArgument(
                f"must be between 0 and {MAX_WAIT_S:g} seconds, got {wait_s}", field="wait_s"
            )
        wait_s = min(wait_s, MAX_WAIT_S)
        if wait_s <= 0 or done():
            return
        cond = self._changed.setdefault(job_id, asyncio.Condition())
        self._waiters[job_id] = self._waiters.get(job_id, 0) + 1
        try:
            async with cond:
                await asyncio.wait_for(cond.wait_for(done), wait_s)
        except TimeoutError:
            pass
        finally:
            self._waiters[job_id] -= 1
            if not self._waiters[job_id]:  # the last waiter: nothing to notify any more
                del self._waiters[job_id]
                self._changed.pop(job_id, None)

    def forget(self, job_id: str) -> None:
        """The job finished: drop its endpoints and wake whoever waits on it."""
        self._jobs.pop(job_id, None)
        cond = self._changed.get(job_id)
        if cond is not None:
            asyncio.get_running_loop().create_task(_notify(cond))

    def validate(self) -> None:
        """Invariants: every endpoint is filed under its own kind and index."""
        for job_id, table in self._jobs.items():
            assert len(table) <= self._max_per_job, f"{job_id}: too many endpoints"
            for (kind, index), ep in table.items():
                assert (ep.kind, ep.task_index) == (kind, index), f"{job_id}: endpoint filed wrongly"


async def _notify(cond: asyncio.Condition) -> None:
    async with cond:
        cond.notify_all()
