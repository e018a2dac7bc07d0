"""Domain types of the node agent; protobuf stops here (``from_proto`` / ``to_proto``).

Everything inside the agent (runner, report planner, hardware probes) speaks these frozen
dataclasses; only :mod:`node_agent._agent` touches ``AgentMessage`` / ``AgentCommand``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from domainos.errors import InvalidArgument
from domainos.resources import Resources

# A job id becomes a directory name under the state dir: no separators, no "..".
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_TASK_INDEX = 1_000_000
MAX_ATTEMPT = 1_000_000


class TaskState(enum.IntEnum):
    """Task states; the numbers are those of ``domainos.api.v1.TaskState``."""

    UNSPECIFIED = 0
    PENDING = 1
    ASSIGNED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6
    LOST = 7
    REJECTED = 8

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST, TaskState.REJECTED}
)


@dataclass(frozen=True, slots=True, order=True)
class TaskRef:
    """One attempt of one task: ``(job_id, task_index, attempt)``; the key of every task command."""

    job_id: str
    task_index: int
    attempt: int

    def validate(self) -> None:
        """Reject ids that cannot name a directory safely and out-of-range numbers."""
        if not _JOB_ID_RE.match(self.job_id) or ".." in self.job_id:
            raise InvalidArgument(
                f"{self.job_id!r} is not a valid job id: 1-128 letters, digits, '-', '_' or '.'",
                field="job_id",
            )
        if not 0 <= self.task_index <= MAX_TASK_INDEX:
            raise InvalidArgument(
                f"must be between 0 and {MAX_TASK_INDEX}, got {self.task_index}", field="task_index"
            )
        if not 0 <= self.attempt <= MAX_ATTEMPT:
            raise InvalidArgument(f"must be between 0 and {MAX_ATTEMPT}, got {self.attempt}", field="attempt")

    def __str__(self) -> str:
        return f"{self.job_id}/{self.task_index}.{self.attempt}"

    @classmethod
    def from_proto(cls, msg: Any) -> TaskRef:
        """From a ``TaskRef``, ``TaskSpec`` or ``TaskStatus`` message (all carry the three fields)."""
        ref = cls(msg.job_id, int(msg.task_index), int(msg.attempt))
        ref.validate()
        return ref

    def to_proto(self) -> Any:
        from domainos.api.v1 import common_pb2

        return common_pb2.TaskRef(job_id=self.job_id, task_index=self.task_index, attempt=self.attempt)


@dataclass(frozen=True)
class TaskSpec:
    """What to run for one task attempt, as the sub-domain sent it."""

    ref: TaskRef
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    tenant: str = ""
    master_address: str = ""
    job_name: str = ""
    replicas: int = 1

    def validate(self) -> None:
        self.ref.validate()
        if not self.command or not self.command[0]:
            raise InvalidArgument("is empty: nothing to run", field="command")
        for i, arg in enumerate(self.command):
            if "\x00" in arg:
                raise InvalidArgument("must not contain NUL characters", field=f"command[{i}]")
        for k, v in self.env.items():
            if not k or "=" in k or "\x00" in k or "\x00" in v:
                raise InvalidArgument(f"{k!r} is not a valid environment variable", field="env")
        r = self.resources
        if r.cpu_millis < 0 or r.memory_bytes < 0 or r.gpus < 0:
            raise InvalidArgument("must not be negative", field="resources")

    @classmethod
    def from_proto(cls, msg: Any) -> TaskSpec:
        """Build and validate a spec from a ``TaskSpec`` message (raises InvalidArgument)."""
        spec = cls(
            ref=TaskRef(msg.job_id, int(msg.task_index), int(msg.attempt)),
            command=tuple(msg.command),
            env=dict(msg.env),
            resources=Resources.from_proto(msg.resources),
            tenant=msg.tenant,
            master_address=msg.master_address,
            job_name=msg.job_name,
            replicas=int(msg.replicas) or 1,
        )
        spec.validate()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in ``status.json``)."""
        r = self.resources
        return {
            "command": list(self.command),
            "env": dict(self.env),
            "resources": {
                "cpu_millis": r.cpu_millis,
                "memory_bytes": r.memory_bytes,
                "gpus": r.gpus,
                "gpu_model": r.gpu_model,
            },
            "tenant": self.tenant,
            "master_address": self.master_address,
            "job_name": self.job_name,
            "replicas": self.replicas,
        }

    @classmethod
    def from_dict(cls, ref: TaskRef, data: Mapping[str, Any]) -> TaskSpec:
        r = data.get("resources") or {}
        return cls(
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


@dataclass(frozen=True)
class TaskStatus:
    """What the agent knows about one task attempt; sent upward in reports."""

    ref: TaskRef
    state: TaskState
    exit_code: int = 0
    message: str = ""
    node_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    pid: int = 0
    gpu_indexes: tuple[int, ...] = ()
    cpu_set: tuple[int, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def to_proto(self) -> Any:
        from domainos.api.v1 import common_pb2

        return common_pb2.TaskStatus(
            job_id=self.ref.job_id,
            task_index=self.ref.task_index,
            attempt=self.ref.attempt,
            state=cast(Any, int(self.state)),
            exit_code=self.exit_code,
            message=self.message,
            node_id=self.node_id,
            started_at=self.started_at,
            finished_at=self.finished_at,
            pid=self.pid,
            gpu_indexes=list(self.gpu_indexes),
            cpu_set=list(self.cpu_set),
        )

    @classmethod
    def from_proto(cls, msg: Any) -> TaskStatus:
        return cls(
            ref=TaskRef(msg.job_id, int(msg.task_index), int(msg.attempt)),
            state=TaskState(int(msg.state)),
            exit_code=int(msg.exit_code),
            message=msg.message,
            node_id=msg.node_id,
            started_at=float(msg.started_at),
            finished_at=float(msg.finished_at),
            pid=int(msg.pid),
            gpu_indexes=tuple(msg.gpu_indexes),
            cpu_set=tuple(msg.cpu_set),
        )


@dataclass(frozen=True, slots=True)
class LogChunk:
    """A piece of a task's stdout/stderr file; ``error`` non-empty when there is none."""

    data: bytes = b""
    offset: int = 0
    size: int = 0
    eof: bool = False
    error: str = ""

    def to_proto(self) -> Any:
        from domainos.api.v1 import common_pb2

        return common_pb2.LogChunk(
            data=self.data, offset=self.offset, size=self.size, eof=self.eof, error=self.error
        )


# ---------------------------------------------------------------------------------------------
# Node description and measurements.


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int
    uuid: str
    model: str
    memory_bytes: int
    nvlink_peers: tuple[int, ...] = ()

    def to_proto(self) -> Any:
        from domainos.api.v1 import common_pb2

        return common_pb2.GpuDevice(
            index=self.index,
            uuid=self.uuid,
            model=self.model,
            memory_bytes=self.memory_bytes,
            nvlink_peers=list(self.nvlink_peers),
        )


@dataclass(frozen=True)
class NodeInventory:
    """What this node is; sent in full with every ``Register``."""

    node_id: str
    hostname: str
    simulated: bool
    cpu_cores: int
    memory_bytes: int
    gpus: tuple[GpuDevice, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    agent_version: str = ""
    os: str = ""

    @property
    def allocatable(self) -> Resources:
        """What the scheduler may hand out: every core, all memory, every GPU."""
        model = self.gpus[0].model if self.gpus else ""
        return Resources(self.cpu_cores * 1000, self.memory_bytes, len(self.gpus), model)

    def to_proto(self) -> Any:
        from domainos.api.v1 import common_pb2

        return common_pb2.NodeInventory(
            node_id=self.node_id,
            hostname=self.hostname,
            simulated=self.simulated,
            cpu_cores=self.cpu_cores,
            memory_bytes=self.memory_bytes,
            gpus=[g.to_proto() for g in self.gpus],
            labels=dict(self.labels),
            agent_version=self.agent_version,
            os=self.os,
            allocatable=self.allocatable.to_proto(),
        )


@dataclass(frozen=True, slots=True)
class GpuUsage:
    index: int
    utilization_percent: float = 0.0
    memory_used_bytes: int = 0
    temperature_c: float = 0.0
    power_w: float = 0.0

    def to_proto(self) -> Any:
        from domainos.api.v1 import common_pb2

        return common_pb2.GpuUsage(
            index=self.index,
            utilization_percent=self.utilization_percent,
            memory_used_bytes=self.memory_used_bytes,
            temperature_c=self.temperature_c,
            power_w=self.power_w,
        )


@dataclass(frozen=True, slots=True)
class NodeUsage:
    cpu_percent: float = 0.0
    memory_used_bytes: int = 0
    gpus: tuple[GpuUsage, ...] = ()
    load1: float = 0.0

    def to_proto(self) -> Any:
        from domainos.api.v1 import common_pb2

        return common_pb2.NodeUsage(
            cpu_percent=self.cpu_percent,
            memory_used_bytes=self.memory_used_bytes,
            gpus=[g.to_proto() for g in self.gpus],
            load1=self.load1,
        )


class HealthStatus(enum.IntEnum):
    """Numbers are those of ``domainos.api.v1.HealthStatus``."""

    UNSPECIFIED = 0
    HEALTHY = 1
    DEGRADED = 2
    UNHEALTHY = 3


@dataclass(frozen=True, slots=True)
class NodeHealth:
    status: HealthStatus = HealthStatus.HEALTHY
    conditions: tuple[str, ...] = ()

    def to_proto(self) -> Any:
        from domainos.api.v1 import common_pb2

        return common_pb2.NodeHealth(status=cast(Any, int(self.status)), conditions=list(self.conditions))
