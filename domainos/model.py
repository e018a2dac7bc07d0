"""Domain types at the protobuf boundary, shared by the node agent and the sub-domain.

Frozen dataclasses and int enums for what travels in ``common.proto``: task identity, spec and
status, node inventory, usage and health, log chunks. Protobuf stops here: ``from_proto`` builds a
value and validates it on the way in, ``to_proto`` builds the message on the way out. The pure state
machines of the server packages only see these types.

Validation raises :class:`domainos.errors.InvalidArgument` naming the field by its path in the
message that carries it: ``from_proto`` takes that path (``"spec"`` for a ``TaskSpec``, ``"task"``
for a ``TaskRef``/``TaskStatus``, ``"inventory"`` for a ``NodeInventory``), so an error reads
``spec.command: is empty: nothing to run`` or ``task.job_id: '../x' is not a valid job id ...``.

This module imports no server package (``master_domain``, ``sub_domain``, ``node_agent``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self, cast

from google.protobuf import json_format

from domainos.api.v1 import common_pb2
from domainos.errors import InvalidArgument
from domainos.resources import MAX_CPUS, MAX_GPUS, MAX_MEMORY, Resources, format_memory

MAX_TASK_INDEX = 1_000_000
MAX_ATTEMPT = 1_000_000
# A job id names a directory on every node (``tasks/<job_id>/``) and a store key: no separators.
_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Node ids end up in store keys and log lines: no '/', no spaces, bounded length.
_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")


def field_path(prefix: str, name: str) -> str:
    """``"spec"`` + ``"job_id"`` -> ``"spec.job_id"``; an empty prefix leaves ``name`` alone."""
    return f"{prefix}.{name}" if prefix else name


def check_job_id(job_id: str, field: str = "job_id") -> None:
    """1-128 letters, digits, '-', '_' or '.', starting with a letter or digit, never ``..``."""
    if not _JOB_ID_RE.fullmatch(job_id) or ".." in job_id:
        raise InvalidArgument(
            f"{job_id!r} is not a valid job id: 1-128 letters, digits, '-', '_' or '.' (no '..')",
            field=field,
        )


def check_node_id(node_id: str, field: str = "node_id") -> None:
    """1-253 letters, digits, '-', '_' or '.', starting with a letter or digit."""
    if not _NODE_ID_RE.fullmatch(node_id):
        raise InvalidArgument(
            f"{node_id!r} is not a valid node id: 1-253 letters, digits, '-', '_' or '.'", field=field
        )


# ---------------------------------------------------------------------------------------------
# Enums (the numbers are those of ``common.proto``).


class _ProtoEnum(enum.IntEnum):
    @classmethod
    def from_proto(cls, value: int) -> Self:
        """The member for a wire number; ``UNSPECIFIED`` (0) for one this version does not know."""
        try:
            return cls(value)
        except ValueError:
            return cls(0)


class TaskState(_ProtoEnum):
    """``domainos.api.v1.TaskState`` without the ``TASK_STATE_`` prefix."""

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
        """True for states a task attempt never leaves (SUCCEEDED, FAILED, CANCELLED, LOST, REJECTED)."""
        return self >= TaskState.SUCCEEDED

    @property
    def label(self) -> str:
        """``"running"``: the name as logs and metric labels show it."""
        return self.name.lower()


class HealthStatus(_ProtoEnum):
    """``domainos.api.v1.HealthStatus`` without the ``HEALTH_STATUS_`` prefix."""

    UNSPECIFIED = 0
    HEALTHY = 1
    DEGRADED = 2
    UNHEALTHY = 3


# ---------------------------------------------------------------------------------------------
# Tasks.


@dataclass(frozen=True, slots=True, order=True)
class TaskRef:
    """One attempt of one task: ``(job_id, task_index, attempt)``; the key of every task command."""

    job_id: str
    task_index: int
    attempt: int

    def __str__(self) -> str:
        return f"{self.job_id}/{self.task_index}#{self.attempt}"

    def validate(self, path: str = "") -> None:
        """Reject ids that cannot name a directory or store key safely, and out-of-range numbers."""
        check_job_id(self.job_id, field_path(path, "job_id"))
        if not 0 <= self.task_index <= MAX_TASK_INDEX:
            raise InvalidArgument(
                f"must be between 0 and {MAX_TASK_INDEX}, got {self.task_index}",
                field=field_path(path, "task_index"),
            )
        if not 0 <= self.attempt <= MAX_ATTEMPT:
            raise InvalidArgument(
                f"must be between 0 and {MAX_ATTEMPT}, got {self.attempt}", field=field_path(path, "attempt")
            )

    @classmethod
    def of(cls, msg: Any) -> TaskRef:
        """The three identity fields of a ``TaskRef``, ``TaskSpec`` or ``TaskStatus`` (not validated)."""
        return cls(msg.job_id, int(msg.task_index), int(msg.attempt))

    @classmethod
    def from_proto(cls, msg: Any, path: str = "task") -> TaskRef:
        """From a ``TaskRef``, ``TaskSpec`` or ``TaskStatus`` message (all carry the three fields)."""
        ref = cls.of(msg)
        ref.validate(path)
        return ref

    def to_proto(self) -> common_pb2.TaskRef:
        return common_pb2.TaskRef(job_id=self.job_id, task_index=self.task_index, attempt=self.attempt)


@dataclass(frozen=True)
class TaskSpec:
    """What to run for one task attempt (sent down by the master, through the sub-domain)."""

    ref: TaskRef
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    tenant: str = ""
    master_address: str = ""
    job_name: str = ""
    replicas: int = 1

    def validate(self, path: str = "") -> None:
        self.ref.validate(path)
        if not self.command or not self.command[0]:
            raise InvalidArgument("is empty: nothing to run", field=field_path(path, "command"))
        for i, arg in enumerate(self.command):
            if "\x00" in arg:
                raise InvalidArgument(
                    "must not contain NUL characters", field=field_path(path, f"command[{i}]")
                )
        for k, v in self.env.items():
            if not k or "=" in k or "\x00" in k or "\x00" in v:
                raise InvalidArgument(
                    f"{k!r} is not a valid environment variable", field=field_path(path, "env")
                )
        r = self.resources
        if r.cpu_millis < 0 or r.memory_bytes < 0 or r.gpus < 0:
            raise InvalidArgument(
                f"must not be negative, got {r.describe()}", field=field_path(path, "resources")
            )

    @classmethod
    def from_proto(cls, msg: common_pb2.TaskSpec, path: str = "spec") -> TaskSpec:
        """Build and validate a spec from a ``TaskSpec`` message (raises InvalidArgument)."""
        spec = cls(
            ref=TaskRef.of(msg),
            command=tuple(msg.command),
            env=dict(msg.env),
            resources=Resources.from_proto(msg.resources),
            tenant=msg.tenant,
            master_address=msg.master_address,
            job_name=msg.job_name,
            replicas=int(msg.replicas) or 1,
        )
        spec.validate(path)
        return spec

    def to_proto(self) -> common_pb2.TaskSpec:
        return common_pb2.TaskSpec(
            job_id=self.ref.job_id,
            task_index=self.ref.task_index,
            attempt=self.ref.attempt,
            command=list(self.command),
            env=dict(self.env),
            resources=self.resources.to_proto(),
            tenant=self.tenant,
            master_address=self.master_address,
            job_name=self.job_name,
            replicas=self.replicas,
        )

    def to_json(self) -> dict[str, Any]:
        """The protobuf JSON form (store records)."""
        return dict(json_format.MessageToDict(self.to_proto()))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSpec:
        return cls.from_proto(json_format.ParseDict(data, common_pb2.TaskSpec()))


@dataclass(frozen=True)
class TaskStatus:
    """The state of one task attempt, as reported upward (agent -> sub-domain -> master)."""

    ref: TaskRef
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
    def terminal(self) -> bool:
        return self.state.terminal

    @classmethod
    def from_proto(cls, msg: common_pb2.TaskStatus, path: str = "task") -> TaskStatus:
        """Validate the identity and the state (a number this version does not know is refused)."""
        ref = TaskRef.from_proto(msg, path)
        try:
            state = TaskState(msg.state)
        except ValueError:
            raise InvalidArgument(
                f"unknown task state {msg.state}", field=field_path(path, "state")
            ) from None
        return cls(
            ref=ref,
            state=state,
            exit_code=int(msg.exit_code),
            message=msg.message,
            node_id=msg.node_id,
            subdomain_id=msg.subdomain_id,
            started_at=float(msg.started_at),
            finished_at=float(msg.finished_at),
            pid=int(msg.pid),
            gpu_indexes=tuple(msg.gpu_indexes),
            cpu_set=tuple(msg.cpu_set),
        )

    def to_proto(self) -> common_pb2.TaskStatus:
        return common_pb2.TaskStatus(
            job_id=self.ref.job_id,
            task_index=self.ref.task_index,
            attempt=self.ref.attempt,
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
        """The protobuf JSON form (store records)."""
        return dict(json_format.MessageToDict(self.to_proto()))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskStatus:
        return cls.from_proto(json_format.ParseDict(data, common_pb2.TaskStatus()))


@dataclass(frozen=True, slots=True)
class LogChunk:
    """A piece of a task's stdout/stderr file; ``error`` non-empty when there is none."""

    data: bytes = b""
    offset: int = 0
    size: int = 0
    eof: bool = False
    error: str = ""

    @classmethod
    def from_proto(cls, msg: common_pb2.LogChunk) -> LogChunk:
        return cls(bytes(msg.data), int(msg.offset), int(msg.size), bool(msg.eof), msg.error)

    def to_proto(self) -> common_pb2.LogChunk:
        return common_pb2.LogChunk(
            data=self.data, offset=self.offset, size=self.size, eof=self.eof, error=self.error
        )


# ---------------------------------------------------------------------------------------------
# Nodes: what they are, what they use, how they feel.


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
    """What a node is, as its agent declares it (in full) on every ``Register``.

    ``allocatable`` is what the scheduler may hand out. Left empty (all zero, as an unset proto
    field is) it is the whole machine: every core, all memory, every GPU. A GPU count without a
    model takes the first GPU's model; no GPUs means no model.
    """

    node_id: str
    hostname: str = ""
    simulated: bool = False
    cpu_cores: int = 0
    memory_bytes: int = 0
    gpus: tuple[GpuDevice, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    agent_version: str = ""
    os: str = ""
    allocatable: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        a = self.allocatable
        if not (a.cpu_millis or a.memory_bytes or a.gpus):
            a = Resources(self.cpu_cores * 1000, self.memory_bytes, len(self.gpus), a.gpu_model)
        if a.gpus and not a.gpu_model and self.gpus:
            a = Resources(a.cpu_millis, a.memory_bytes, a.gpus, self.gpus[0].model)
        if not a.gpus and a.gpu_model:
            a = Resources(a.cpu_millis, a.memory_bytes, 0, "")
        if a != self.allocatable:
            object.__setattr__(self, "allocatable", a)  # frozen: normalised once, here

    @property
    def gpu_indexes(self) -> tuple[int, ...]:
        """Indexes of the GPUs the scheduler may hand out (the first ``allocatable.gpus``)."""
        return tuple(sorted(g.index for g in self.gpus))[: self.allocatable.gpus]

    @property
    def nvlink(self) -> dict[int, frozenset[int]]:
        return {g.index: frozenset(g.nvlink_peers) for g in self.gpus}

    def validate(self, path: str = "") -> None:
        check_node_id(self.node_id, field_path(path, "node_id"))
        indexes = [g.index for g in self.gpus]
        if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
            raise InvalidArgument(
                f"GPU indexes must be distinct and >= 0, got {indexes}", field=field_path(path, "gpus")
            )
        if self.cpu_cores < 0:
            raise InvalidArgument(f"must be >= 0, got {self.cpu_cores}", field=field_path(path, "cpu_cores"))
        if self.memory_bytes < 0:
            raise InvalidArgument(
                f"must be >= 0, got {self.memory_bytes}", field=field_path(path, "memory_bytes")
            )
        a = self.allocatable
        if a.cpu_millis < 0 or a.memory_bytes < 0 or a.gpus < 0:
            raise InvalidArgument(
                f"must not be negative, got {a.describe()}", field=field_path(path, "allocatable")
            )
        # The sub-domain sums every node's into int64 summary fields: bounded per node, no sum
        # over the largest max_nodes can overflow.
        if a.cpu_millis > MAX_CPUS * 1000 or a.memory_bytes > MAX_MEMORY or a.gpus > MAX_GPUS:
            raise InvalidArgument(
                f"too large for one node: at most cpus={MAX_CPUS} memory={format_memory(MAX_MEMORY)} "
                f"gpus={MAX_GPUS}, got {a.describe()}",
                field=field_path(path, "allocatable"),
            )
        if a.gpus > len(self.gpus):
            raise InvalidArgument(
                f"allocatable.gpus={a.gpus} but the node lists {len(self.gpus)} GPU devices",
                field=field_path(path, "allocatable.gpus"),
            )

    @classmethod
    def from_proto(cls, msg: common_pb2.NodeInventory, path: str = "inventory") -> NodeInventory:
        """Validate an agent's inventory; an unset ``allocatable`` is the whole machine."""
        inv = cls(
            node_id=msg.node_id,
            hostname=msg.hostname,
            simulated=msg.simulated,
            cpu_cores=msg.cpu_cores,
            memory_bytes=msg.memory_bytes,
            gpus=tuple(GpuDevice.from_proto(g) for g in msg.gpus),
            labels=dict(msg.labels),
            agent_version=msg.agent_version,
            os=msg.os,
            allocatable=Resources.from_proto(msg.allocatable),
        )
        inv.validate(path)
        return inv

    def to_proto(self) -> common_pb2.NodeInventory:
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

    def to_json(self) -> dict[str, Any]:
        """The protobuf JSON form (store records)."""
        return dict(json_format.MessageToDict(self.to_proto()))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeInventory:
        return cls.from_proto(json_format.ParseDict(data, common_pb2.NodeInventory()))


#: Most power one GPU may report drawing (the largest draw about 1.5 kW): more is a broken sensor.
MAX_GPU_POWER_W = 100_000.0


def _reading(value: float, field: str, lowest: float, highest: float) -> None:
    if not (math.isfinite(value) and lowest <= value <= highest):
        raise InvalidArgument(
            f"must be a finite number between {lowest:g} and {highest:g}, got {value}", field=field
        )


@dataclass(frozen=True, slots=True)
class GpuUsage:
    index: int
    utilization_percent: float = 0.0
    memory_used_bytes: int = 0
    temperature_c: float = 0.0
    power_w: float = 0.0

    @classmethod
    def from_proto(cls, msg: common_pb2.GpuUsage, path: str = "gpu") -> GpuUsage:
        """Validated: readings are finite, and power and memory are not negative (they are summed
        into the sub-domain's aggregates, where one NaN would stay forever)."""
        _reading(msg.utilization_percent, field_path(path, "utilization_percent"), 0.0, 100_000.0)
        _reading(msg.temperature_c, field_path(path, "temperature_c"), -1000.0, 100_000.0)
        _reading(msg.power_w, field_path(path, "power_w"), 0.0, MAX_GPU_POWER_W)
        if msg.memory_used_bytes < 0:
            raise InvalidArgument(
                f"must be >= 0, got {msg.memory_used_bytes}", field=field_path(path, "memory_used_bytes")
            )
        return cls(msg.index, msg.utilization_percent, msg.memory_used_bytes, msg.temperature_c, msg.power_w)

    def to_proto(self) -> common_pb2.GpuUsage:
        return common_pb2.GpuUsage(
            index=self.index,
            utilization_percent=self.utilization_percent,
            memory_used_bytes=self.memory_used_bytes,
            temperature_c=self.temperature_c,
            power_w=self.power_w,
        )


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """What a node measured (or, simulated, derived from its tasks' requests)."""

    cpu_percent: float = 0.0
    memory_used_bytes: int = 0
    gpus: tuple[GpuUsage, ...] = ()
    load1: float = 0.0

    @property
    def power_w(self) -> float:
        return sum(g.power_w for g in self.gpus)

    @classmethod
    def from_proto(cls, msg: common_pb2.NodeUsage, path: str = "usage") -> NodeUsage:
        """Validated (see :meth:`GpuUsage.from_proto`)."""
        _reading(msg.cpu_percent, field_path(path, "cpu_percent"), 0.0, 100_000.0)
        _reading(msg.load1, field_path(path, "load1"), 0.0, 1e9)
        if msg.memory_used_bytes < 0:
            raise InvalidArgument(
                f"must be >= 0, got {msg.memory_used_bytes}", field=field_path(path, "memory_used_bytes")
            )
        return cls(
            cpu_percent=msg.cpu_percent,
            memory_used_bytes=msg.memory_used_bytes,
            gpus=tuple(
                GpuUsage.from_proto(g, f"{field_path(path, 'gpus')}[{i}]") for i, g in enumerate(msg.gpus)
            ),
            load1=msg.load1,
        )

    def to_proto(self) -> common_pb2.NodeUsage:
        return common_pb2.NodeUsage(
            cpu_percent=self.cpu_percent,
            memory_used_bytes=self.memory_used_bytes,
            gpus=[g.to_proto() for g in self.gpus],
            load1=self.load1,
        )


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """A node's health. ``UNHEALTHY`` cordons the node (no new placements).

    The default is UNSPECIFIED (nothing reported yet), as in the proto.
    """

    status: HealthStatus = HealthStatus.UNSPECIFIED
    conditions: tuple[str, ...] = ()

    @property
    def cordoned(self) -> bool:
        return self.status == HealthStatus.UNHEALTHY

    @classmethod
    def from_proto(cls, msg: common_pb2.NodeHealth) -> NodeHealth:
        """A status this version does not know reads as UNSPECIFIED (it never cordons)."""
        return cls(HealthStatus.from_proto(msg.status), tuple(msg.conditions))

    def to_proto(self) -> common_pb2.NodeHealth:
        return common_pb2.NodeHealth(status=cast(Any, int(self.status)), conditions=list(self.conditions))
