"""Domain types of the sub-domain: frozen dataclasses with ``from_proto`` / ``to_proto``.

Protobuf stops here: the pure state machines (:mod:`._registry`, :mod:`._placement`,
:mod:`._tasks`) only see these types. ``from_proto`` validates on the way in and raises
:class:`domainos.errors.InvalidArgument` naming the field.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from google.protobuf import json_format

from domainos.api.v1 import common_pb2
from domainos.errors import InvalidArgument
from domainos.resources import Resources

# Node ids end up in store keys and log lines: no '/', no spaces, bounded length.
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TaskState(enum.IntEnum):
    """Mirror of ``domainos.api.v1.TaskState`` (same numbers)."""

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
        """True for states a task never leaves."""
        return self >= TaskState.SUCCEEDED

    @property
    def label(self) -> str:
        return self.name.lower()


class HealthStatus(enum.IntEnum):
    """Mirror of ``domainos.api.v1.HealthStatus``."""

    UNSPECIFIED = 0
    HEALTHY = 1
    DEGRADED = 2
    UNHEALTHY = 3


class TaskKey(NamedTuple):
    """Identity of one attempt of one task."""

    job_id: str
    task_index: int
    attempt: int

    def __str__(self) -> str:
        return f"{self.job_id}/{self.task_index}#{self.attempt}"

    @classmethod
    def from_proto(cls, msg: Any) -> TaskKey:
        """From anything with ``job_id``, ``task_index``, ``attempt`` (TaskRef, TaskSpec, TaskStatus)."""
        check_task_ref(msg.job_id, msg.task_index, msg.attempt)
        return cls(msg.job_id, int(msg.task_index), int(msg.attempt))

    def to_proto(self) -> common_pb2.TaskRef:
        return common_pb2.TaskRef(job_id=self.job_id, task_index=self.task_index, attempt=self.attempt)


def check_task_ref(job_id: str, task_index: int, attempt: int, prefix: str = "task") -> None:
    """Validate the identity fields of a task (they become store keys)."""
    if not _JOB_ID_RE.match(job_id):
        raise InvalidArgument(
            f"expected a job id of 1-128 characters [A-Za-z0-9._-], got {job_id!r}", field=f"{prefix}.job_id"
        )
    if task_index < 0:
        raise InvalidArgument(f"must be >= 0, got {task_index}", field=f"{prefix}.task_index")
    if attempt < 0:
        raise InvalidArgument(f"must be >= 0, got {attempt}", field=f"{prefix}.attempt")


def check_node_id(node_id: str, field_path: str = "inventory.node_id") -> None:
    if not _NODE_ID_RE.match(node_id):
        raise InvalidArgument(
            f"expected a node id of 1-253 characters [A-Za-z0-9._-], got {node_id!r}", field=field_path
        )


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One GPU of a node."""

    index: int
    uuid: str = ""
    model: str = ""
    memory_bytes: int = 0
    nvlink_peers: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, msg: common_pb2.GpuDevice) -> GpuDevice:
        return cls(
            index=msg.index,
            uuid=msg.uuid,
            model=msg.model,
            memory_bytes=msg.memory_bytes,
            nvlink_peers=tuple(msg.nvlink_peers),
        )

    def to_proto(self) -> common_pb2.GpuDevice:
        return common_pb2.GpuDevice(
            index=self.index,
            uuid=self.uuid,
            model=self.model,
            memory_bytes=self.memory_bytes,
            nvlink_peers=list(self.nvlink_peers),
        )


@dataclass(frozen=True)
class NodeInventory:
    """What a node is, as its agent declared it on ``Register``."""

    node_id: str
    allocatable: Resources
    hostname: str = ""
    simulated: bool = False
    cpu_cores: int = 0
    memory_bytes: int = 0
    gpus: tuple[GpuDevice, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    agent_version: str = ""
    os: str = ""

    @property
    def gpu_indexes(self) -> tuple[int, ...]:
        """Indexes of the GPUs the scheduler may hand out (the first ``allocatable.gpus``)."""
        return tuple(sorted(g.index for g in self.gpus))[: self.allocatable.gpus]

    @property
    def nvlink(self) -> dict[int, frozenset[int]]:
        return {g.index: frozenset(g.nvlink_peers) for g in self.gpus}

    @classmethod
    def from_proto(cls, msg: common_pb2.NodeInventory) -> NodeInventory:
        """Validate an agent's inventory; an unset ``allocatable`` defaults to the whole machine."""
        check_node_id(msg.node_id)
        gpus = tuple(GpuDevice.from_proto(g) for g in msg.gpus)
        indexes = [g.index for g in gpus]
        if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
            raise InvalidArgument(
                f"GPU indexes must be distinct and >= 0, got {indexes}", field="inventory.gpus"
            )
        if msg.cpu_cores < 0 or msg.memory_bytes < 0:
            raise InvalidArgument("cpu_cores and memory_bytes must be >= 0", field="inventory")
        alloc = Resources.from_proto(msg.allocatable)
        if alloc.cpu_millis == 0 and alloc.memory_bytes == 0 and alloc.gpus == 0:
            alloc = Resources(msg.cpu_cores * 1000, msg.memory_bytes, len(gpus), alloc.gpu_model)
        if alloc.cpu_millis < 0 or alloc.memory_bytes < 0 or alloc.gpus < 0:
            raise InvalidArgument(
                f"must not be negative, got {alloc.describe()}", field="inventory.allocatable"
            )
        if alloc.gpus > len(gpus):
            raise InvalidArgument(
                f"allocatable.gpus={alloc.gpus} but the node lists {len(gpus)} GPU devices",
                field="inventory.allocatable.gpus",
            )
        if alloc.gpus and not alloc.gpu_model:
            alloc = Resources(alloc.cpu_millis, alloc.memory_bytes, alloc.gpus, gpus[0].model)
        if not alloc.gpus and alloc.gpu_model:
            alloc = Resources(alloc.cpu_millis, alloc.memory_bytes, 0, "")
        return cls(
            node_id=msg.node_id,
            allocatable=alloc,
            hostname=msg.hostname,
            simulated=msg.simulated,
            cpu_cores=msg.cpu_cores,
            memory_bytes=msg.memory_bytes,
            gpus=gpus,
            labels=dict(msg.labels),
            agent_version=msg.agent_version,
            os=msg.os,
        )

    def to_proto(self) -> common_pb2.NodeInventory:
        return common_pb2.NodeInventory(
            node_id=self.node_id,
            hostname=self.hostname,
            simulated=self.simulated,
            cpu_cores=self.cpu_cores,
            memory_bytes=self.memory_bytes,
            gpus=[g.to_proto() for g in self.gpus],
            labels=self.labels,
            agent_version=self.agent_version,
            os=self.os,
            allocatable=self.allocatable.to_proto(),
        )

    def to_json(self) -> dict[str, Any]:
        return dict(json_format.MessageToDict(self.to_proto()))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeInventory:
        return cls.from_proto(json_format.ParseDict(data, common_pb2.NodeInventory()))


@dataclass(frozen=True, slots=True)
class GpuUsage:
    index: int
    utilization_percent: float = 0.0
    memory_used_bytes: int = 0
    temperature_c: float = 0.0
    power_w: float = 0.0


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """Last usage a node reported (for views and the summary's power draw)."""

    cpu_percent: float = 0.0
    memory_used_bytes: int = 0
    load1: float = 0.0
    gpus: tuple[GpuUsage, ...] = ()

    @property
    def power_w(self) -> float:
        return sum(g.power_w for g in self.gpus)

    @classmethod
    def from_proto(cls, msg: common_pb2.NodeUsage) -> NodeUsage:
        return cls(
            cpu_percent=msg.cpu_percent,
            memory_used_bytes=msg.memory_used_bytes,
            load1=msg.load1,
            gpus=tuple(
                GpuUsage(g.index, g.utilization_percent, g.memory_used_bytes, g.temperature_c, g.power_w)
                for g in msg.gpus
            ),
        )

    def to_proto(self) -> common_pb2.NodeUsage:
        return common_pb2.NodeUsage(
            cpu_percent=self.cpu_percent,
            memory_used_bytes=self.memory_used_bytes,
            load1=self.load1,
            gpus=[
                common_pb2.GpuUsage(
                    index=g.index,
                    utilization_percent=g.utilization_percent,
                    memory_used_bytes=g.memory_used_bytes,
                    temperature_c=g.temperature_c,
                    power_w=g.power_w,
                )
                for g in self.gpus
            ],
        )


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """Last health a node reported. ``UNHEALTHY`` cordons the node (no new placements)."""

    status: HealthStatus = HealthStatus.UNSPECIFIED
    conditions: tuple[str, ...] = ()

    @property
    def cordoned(self) -> bool:
        return self.status == HealthStatus.UNHEALTHY

    @classmethod
    def from_proto(cls, msg: common_pb2.NodeHealth) -> NodeHealth:
        try:
            status = HealthStatus(msg.status)
        except ValueError:
            status = HealthStatus.UNSPECIFIED
        return cls(status, tuple(msg.conditions))

    def to_proto(self) -> common_pb2.NodeHealth:
        return common_pb2.NodeHealth(status=cast(Any, int(self.status)), conditions=list(self.conditions))


@dataclass(frozen=True)
class TaskSpec:
    """One task to run, as the master sent it."""

    job_id: str
    task_index: int
    attempt: int
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    tenant: str = ""
    master_address: str = ""
    job_name: str = ""
    replicas: int = 1

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.job_id, self.task_index, self.attempt)

    @classmethod
    def from_proto(cls, msg: common_pb2.TaskSpec) -> TaskSpec:
        check_task_ref(msg.job_id, msg.task_index, msg.attempt, "spec")
        res = Resources.from_proto(msg.resources)
        if res.cpu_millis < 0 or res.memory_bytes < 0 or res.gpus < 0:
            raise InvalidArgument(f"must not be negative, got {res.describe()}", field="spec.resources")
        return cls(
            job_id=msg.job_id,
            task_index=msg.task_index,
            attempt=msg.attempt,
            command=tuple(msg.command),
            env=dict(msg.env),
            resources=res,
            tenant=msg.tenant,
            master_address=msg.master_address,
            job_name=msg.job_name,
            replicas=msg.replicas,
        )

    def to_proto(self) -> common_pb2.TaskSpec:
        return common_pb2.TaskSpec(
            job_id=self.job_id,
            task_index=self.task_index,
            attempt=self.attempt,
            command=list(self.command),
            env=self.env,
            resources=self.resources.to_proto(),
            tenant=self.tenant,
            master_address=self.master_address,
            job_name=self.job_name,
            replicas=self.replicas,
        )

    def to_json(self) -> dict[str, Any]:
        return dict(json_format.MessageToDict(self.to_proto()))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSpec:
        return cls.from_proto(json_format.ParseDict(data, common_pb2.TaskSpec()))


@dataclass(frozen=True)
class TaskStatus:
    """The state of one task attempt, as reported up to the master."""

    job_id: str
    task_index: int
    attempt: int
    state: TaskState
    exit_code: int = 0
    message: str = ""
    node_id: str = ""
    subdomain_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    pid: int = 0
    gpu_indexes: tuple[int, ...] = ()
    cpu_set: tuple[int, ...] = ()

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.job_id, self.task_index, self.attempt)

    @classmethod
    def from_proto(cls, msg: common_pb2.TaskStatus) -> TaskStatus:
        check_task_ref(msg.job_id, msg.task_index, msg.attempt)
        try:
            state = TaskState(msg.state)
        except ValueError:
            raise InvalidArgument(f"unknown task state {msg.state}", field="task.state") from None
        return cls(
            job_id=msg.job_id,
            task_index=msg.task_index,
            attempt=msg.attempt,
            state=state,
            exit_code=msg.exit_code,
            message=msg.message,
            node_id=msg.node_id,
            subdomain_id=msg.subdomain_id,
            started_at=msg.started_at,
            finished_at=msg.finished_at,
            pid=msg.pid,
            gpu_indexes=tuple(msg.gpu_indexes),
            cpu_set=tuple(msg.cpu_set),
        )

    def to_proto(self) -> common_pb2.TaskStatus:
        return common_pb2.TaskStatus(
            job_id=self.job_id,
            task_index=self.task_index,
            attempt=self.attempt,
            state=cast(Any, int(self.state)),
            exit_code=self.exit_code,
            message=self.message,
            node_id=self.node_id,
            subdomain_id=self.subdomain_id,
            started_at=self.started_at,
            finished_at=self.finished_at,
            pid=self.pid,
            gpu_indexes=list(self.gpu_indexes),
            cpu_set=list(self.cpu_set),
        )

    def to_json(self) -> dict[str, Any]:
        return dict(json_format.MessageToDict(self.to_proto()))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskStatus:
        return cls.from_proto(json_format.ParseDict(data, common_pb2.TaskStatus()))
