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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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


#: Most GPU models a task may exclude / node labels it may select on (as :mod:`domainos.jobspec`).
MAX_PLACEMENT_ENTRIES = 32


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """The task runs in a container of ``image`` on its node's Docker engine (``runtime: docker``)."""

    image: str

    def validate(self, path: str = "") -> None:
        from domainos.jobspec import check_image

        check_image(self.image, field_path(path, "image"))

    @classmethod
    def from_proto(cls, msg: common_pb2.ContainerSpec) -> ContainerSpec:
        return cls(image=msg.image)

    def to_proto(self) -> common_pb2.ContainerSpec:
        return common_pb2.ContainerSpec(image=self.image)


@dataclass(frozen=True)
class PlacementConstraints:
    """Where a task may and should run, beyond its resources (``common.proto`` PlacementConstraints).

    Built by the master from the job spec (:func:`domainos.jobspec.task_constraints`); the
    sub-domain's placer reads it. The default value asks for nothing.
    """

    #: Never on a GPU of these models.
    exclude_gpu_models: tuple[str, ...] = ()
    #: Node labels that must all match.
    node_selector: Mapping[str, str] = field(default_factory=dict)
    #: A TP group: every GPU of the task in one NVLink domain.
    one_nvlink_domain: bool = False
    #: Locality: prefer a node holding shard ``shard`` of ``dataset`` ...
    dataset: str = ""
    shard: int = 0
    #: ... waiting at most this long (from ``submitted_at``) before any node will do.
    locality_wait_s: float = 0.0
    #: Tasks with one group prefer one block (the pipeline stages of one DP replica).
    group: str = ""
    #: Unix seconds the job was accepted (the locality wait starts here).
    submitted_at: float = 0.0
    #: Affinity: this node (of the sub-domain the master sent the task to) ...
    node_id: str = ""
    #: ... or, when it cannot take the task, any node (False: only that node).
    node_soft: bool = False
    #: Never on a node running another task of the same job.
    distinct_nodes: bool = False

    @property
    def empty(self) -> bool:
        """True when it asks for nothing (the tasks of a plain job)."""
        return self == PlacementConstraints()

    def allows_gpu_model(self, model: str) -> bool:
        """False when ``model`` is one of the excluded GPU models."""
        return model not in self.exclude_gpu_models

    def selects(self, labels: Mapping[str, str]) -> bool:
        """True when every ``node_selector`` entry is among ``labels``."""
        return all(labels.get(k) == v for k, v in self.node_selector.items())

    def locality_deadline(self) -> float:
        """Unix seconds after which a node without the shard will do (0 when no locality)."""
        return self.submitted_at + self.locality_wait_s if self.dataset else 0.0

    def validate(self, path: str = "") -> None:
        """Bounded lists, no NUL, shard and times in range (InvalidArgument naming the field)."""
        if len(self.exclude_gpu_models) > MAX_PLACEMENT_ENTRIES:
            raise InvalidArgument(
                f"at most {MAX_PLACEMENT_ENTRIES} GPU models, got {len(self.exclude_gpu_models)}",
                field=field_path(path, "exclude_gpu_models"),
            )
        if len(self.node_selector) > MAX_PLACEMENT_ENTRIES:
            raise InvalidArgument(
                f"at most {MAX_PLACEMENT_ENTRIES} labels, got {len(self.node_selector)}",
                field=field_path(path, "node_selector"),
            )
        texts = [("exclude_gpu_models", m) for m in self.exclude_gpu_models]
        texts += [("node_selector", f"{k}{v}") for k, v in self.node_selector.items()]
        texts += [("dataset", self.dataset), ("group", self.group)]
        for name, text in texts:
            if "\x00" in text:
                raise InvalidArgument("must not contain NUL characters", field=field_path(path, name))
        if self.shard < 0:
            raise InvalidArgument(f"must not be negative, got {self.shard}", field=field_path(path, "shard"))
        if self.node_id:
            check_node_id(self.node_id, field_path(path, "node_id"))
        for name, value in (("locality_wait_s", self.locality_wait_s), ("submitted_at", self.submitted_at)):
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(
                    f"must be a finite number >= 0, got {value}", field=field_path(path, name)
                )

    @classmethod
    def from_proto(
        cls, msg: common_pb2.PlacementConstraints, path: str = "placement"
    ) -> PlacementConstraints:
        value = cls(
            exclude_gpu_models=tuple(msg.exclude_gpu_models),
            node_selector=dict(msg.node_selector),
            one_nvlink_domain=msg.one_nvlink_domain,
            dataset=msg.dataset,
            shard=msg.shard,
            locality_wait_s=msg.locality_wait_s,
            group=msg.group,
            submitted_at=msg.submitted_at,
            node_id=msg.node_id,
            node_soft=msg.node_soft,
            distinct_nodes=msg.distinct_nodes,
        )
        value.validate(path)
        return value

    def to_proto(self) -> common_pb2.PlacementConstraints:
        return common_pb2.PlacementConstraints(
            exclude_gpu_models=list(self.exclude_gpu_models),
            node_selector=dict(self.node_selector),
            one_nvlink_domain=self.one_nvlink_domain,
            dataset=self.dataset,
            shard=self.shard,
            locality_wait_s=self.locality_wait_s,
            group=self.group,
            submitted_at=self.submitted_at,
            node_id=self.node_id,
            node_soft=self.node_soft,
            distinct_nodes=self.distinct_nodes,
        )


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
    #: Where it may and should run (empty for a plain job).
    placement: PlacementConstraints = field(default_factory=PlacementConstraints)
    #: The gang reservation it was placed by ("" when placed on its own).
    reservation_id: str = ""
    #: It resumes from a checkpoint: a drain moves it first.
    checkpointable: bool = False
    #: Its sub-domain stops it when cut off from the master this long (0 = never; fencing).
    fence_after_s: float = 0.0
    #: Set: it runs in a container (the Docker runtime); None: a local process.
    container: ContainerSpec | None = None

    @property
    def runtime(self) -> str:
        """``docker`` (a container) or ``process``."""
        return "process" if self.container is None else "docker"

    def validate(self, path: str = "") -> None:
        self.ref.validate(path)
        if self.container is not None:
            self.container.validate(field_path(path, "container"))
            if self.command and not self.command[0]:  # empty: the image's own command
                raise InvalidArgument(
                    "the program name must not be empty", field=field_path(path, "command[0]")
                )
        elif not self.command or not self.command[0]:
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
        if r.cpu_millis < 0 or r.memory_bytes < 0 or r.gpus < 0 or r.gpu_share_memory < 0:
            raise InvalidArgument(
                f"must not be negative, got {r.describe()}", field=field_path(path, "resources")
            )
        if r.gpu_share and (r.gpus or not 1 <= r.gpu_share <= 99):
            raise InvalidArgument(
                f"a GPU share is 1..99 percent of one card, instead of whole GPUs; got "
                f"gpus={r.gpus} gpu_share_percent={r.gpu_share}",
                field=field_path(path, "resources.gpu_share_percent"),
            )
        self.placement.validate(field_path(path, "placement"))

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
            placement=PlacementConstraints.from_proto(msg.placement, field_path(path, "placement")),
            reservation_id=msg.reservation_id,
            checkpointable=bool(msg.checkpointable),
            fence_after_s=max(0.0, float(msg.fence_after_s)) if math.isfinite(msg.fence_after_s) else 0.0,
            container=ContainerSpec.from_proto(msg.container) if msg.HasField("container") else None,
        )
        spec.validate(path)
        return spec

    def to_proto(self) -> common_pb2.TaskSpec:
        msg = common_pb2.TaskSpec(
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
            reservation_id=self.reservation_id,
            checkpointable=self.checkpointable,
            fence_after_s=self.fence_after_s,
        )
        if not self.placement.empty:  # a plain task's message (and JSON record) stays as it was
            msg.placement.CopyFrom(self.placement.to_proto())
        if self.container is not None:
            msg.container.CopyFrom(self.container.to_proto())
        return msg

    def to_json(self) -> dict[str, Any]:
        """The protobuf JSON form (store records)."""
        return dict(json_format.MessageToDict(self.to_proto()))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSpec:
        return cls.from_proto(json_format.ParseDict(data, common_pb2.TaskSpec()))


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """What a running task last said about itself: its step and its last checkpoint.

    ``checkpoint_step`` is -1 when the attempt saved none; times are unix seconds.
    """

    step: int = 0
    total_steps: int = 0
    step_at: float = 0.0
    checkpoint_step: int = -1
    checkpoint_at: float = 0.0

    @classmethod
    def from_proto(cls, msg: common_pb2.TaskProgress) -> TaskProgress:
        return cls(
            int(msg.step),
            int(msg.total_steps),
            float(msg.step_at),
            int(msg.checkpoint_step),
            float(msg.checkpoint_at),
        )

    def to_proto(self) -> common_pb2.TaskProgress:
        return common_pb2.TaskProgress(
            step=self.step,
            total_steps=self.total_steps,
            step_at=self.step_at,
            checkpoint_step=self.checkpoint_step,
            checkpoint_at=self.checkpoint_at,
        )


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
    #: Stopped by its sub-domain to drain the node: queued again without spending a retry.
    drained: bool = False
    #: The task's own progress report (None: it reported none).
    progress: TaskProgress | None = None

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
            drained=bool(msg.drained),
            progress=TaskProgress.from_proto(msg.progress) if msg.HasField("progress") else None,
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
            drained=self.drained,
            progress=self.progress.to_proto() if self.progress is not None else None,
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
    #: The NVLink domain: the lowest GPU index of the connected component of ``nvlink_peers``
    #: (a GPU without NVLink is its own). A node whose GPUs all say 0 (an older agent) gets them
    #: derived from ``nvlink_peers`` by :class:`NodeInventory`.
    nvlink_domain: int = 0
    #: Board power limit in watts; 0 = unknown (the master uses its model table).
    tdp_w: int = 0

    @classmethod
    def from_proto(cls, msg: common_pb2.GpuDevice) -> GpuDevice:
        return cls(
            index=msg.index,
            uuid=msg.uuid,
            model=msg.model,
            memory_bytes=msg.memory_bytes,
            nvlink_peers=tuple(msg.nvlink_peers),
            nvlink_domain=msg.nvlink_domain,
            tdp_w=msg.tdp_w,
        )

    def to_proto(self) -> common_pb2.GpuDevice:
        return common_pb2.GpuDevice(
            index=self.index,
            uuid=self.uuid,
            model=self.model,
            memory_bytes=self.memory_bytes,
            nvlink_peers=list(self.nvlink_peers),
            nvlink_domain=self.nvlink_domain,
            tdp_w=self.tdp_w,
        )


def nvlink_components(peers: Mapping[int, Sequence[int]]) -> dict[int, int]:
    """GPU index -> its NVLink domain: the lowest index of its connected component.

    ``peers`` maps each GPU index to the indexes it reaches over NVLink; links are taken as
    undirected and peers that are not keys are ignored. A GPU without links is its own domain.
    """
    parent = {i: i for i in peers}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, linked in peers.items():
        for j in linked:
            if j in parent:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {i: find(i) for i in peers}


#: Most dataset shards one node may report (the inventory travels whole on every full report).
MAX_NODE_DATASET_SHARDS = 4096
#: Most power one GPU board may declare (W).
MAX_GPU_TDP_W = 10_000
_BLOCK_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
#: A dataset name (the same form as a job id).
DATASET_NAME_RE = _JOB_ID_RE


@dataclass(frozen=True, slots=True)
class DatasetShard:
    """A shard of a dataset a node holds on local storage."""

    dataset: str
    shard: int
    size_bytes: int = 0

    @classmethod
    def from_proto(cls, msg: common_pb2.DatasetShard) -> DatasetShard:
        return cls(dataset=msg.dataset, shard=msg.shard, size_bytes=msg.size_bytes)

    def to_proto(self) -> common_pb2.DatasetShard:
        return common_pb2.DatasetShard(dataset=self.dataset, shard=self.shard, size_bytes=self.size_bytes)


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
    #: The switch tier (block) the node sits under; "" = none declared.
    block: str = ""
    #: Dataset shards held on local storage, sorted by (dataset, shard).
    datasets: tuple[DatasetShard, ...] = ()

    def __post_init__(self) -> None:
        if len(self.gpus) > 1 and all(g.nvlink_domain == 0 for g in self.gpus):
            # No domains sent (an older agent, or none computed): derive them from the links.
            domains = nvlink_components({g.index: g.nvlink_peers for g in self.gpus})
            if any(domains[g.index] != g.nvlink_domain for g in self.gpus):
                gpus = tuple(replace(g, nvlink_domain=domains[g.index]) for g in self.gpus)
                object.__setattr__(self, "gpus", gpus)
        elif len(self.gpus) == 1 and self.gpus[0].nvlink_domain != self.gpus[0].index:
            object.__setattr__(self, "gpus", (replace(self.gpus[0], nvlink_domain=self.gpus[0].index),))
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

    def nvlink_domains(self) -> dict[int, tuple[int, ...]]:
        """NVLink domain (its lowest GPU index) -> the sorted GPU indexes in it."""
        out: dict[int, list[int]] = {}
        for g in sorted(self.gpus, key=lambda g: g.index):
            out.setdefault(g.nvlink_domain, []).append(g.index)
        return {d: tuple(members) for d, members in out.items()}

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
        self._validate_topology(path)

    def _validate_topology(self, path: str) -> None:
        """NVLink domains, board power, block and dataset shards."""
        by_index = {g.index: g for g in self.gpus}
        for g in self.gpus:
            where = field_path(path, f"gpus[{g.index}]")
            home = by_index.get(g.nvlink_domain)
            if home is None or home.nvlink_domain != g.nvlink_domain or g.nvlink_domain > g.index:
                raise InvalidArgument(
                    f"must be the lowest GPU index of the GPU's NVLink domain (a GPU of this node whose "
                    f"own domain is itself), got {g.nvlink_domain}; GPU indexes: {sorted(by_index)}",
                    field=field_path(where, "nvlink_domain"),
                )
            if not 0 <= g.tdp_w <= MAX_GPU_TDP_W:
                raise InvalidArgument(
                    f"must be between 0 (unknown) and {MAX_GPU_TDP_W} W, got {g.tdp_w}",
                    field=field_path(where, "tdp_w"),
                )
        if self.block and not _BLOCK_RE.fullmatch(self.block):
            raise InvalidArgument(
                f"{self.block!r} is not a valid block name: 1-63 letters, digits, '_', '.', '-', "
                "starting and ending with a letter or digit",
                field=field_path(path, "block"),
            )
        if len(self.datasets) > MAX_NODE_DATASET_SHARDS:
            raise InvalidArgument(
                f"at most {MAX_NODE_DATASET_SHARDS} dataset shards per node, got {len(self.datasets)}",
                field=field_path(path, "datasets"),
            )
        seen: set[tuple[str, int]] = set()
        for i, d in enumerate(self.datasets):
            where = field_path(path, f"datasets[{i}]")
            if not DATASET_NAME_RE.fullmatch(d.dataset):
                raise InvalidArgument(
                    f"{d.dataset!r} is not a valid dataset name: 1-128 letters, digits, '_', '.', '-'",
                    field=field_path(where, "dataset"),
                )
            if d.shard < 0 or d.size_bytes < 0:
                raise InvalidArgument(
                    f"shard and size_bytes must be >= 0, got shard={d.shard} size_bytes={d.size_bytes}",
                    field=where,
                )
            if (d.dataset, d.shard) in seen:
                raise InvalidArgument(f"duplicate shard {d.dataset}/{d.shard}", field=where)
            seen.add((d.dataset, d.shard))

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
            block=msg.block,
            datasets=tuple(DatasetShard.from_proto(d) for d in msg.datasets),
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
            block=self.block,
            datasets=[d.to_proto() for d in self.datasets],
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
    #: Health signals: volatile ECC counts, the last Xid seen and how many, throttle reasons.
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    last_xid: int = 0
    xid_count: int = 0
    throttle_reasons: int = 0

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
        for name in ("ecc_corrected", "ecc_uncorrected", "last_xid", "xid_count"):
            if getattr(msg, name) < 0:
                raise InvalidArgument(f"must be >= 0, got {getattr(msg, name)}", field=field_path(path, name))
        return cls(
            msg.index,
            msg.utilization_percent,
            msg.memory_used_bytes,
            msg.temperature_c,
            msg.power_w,
            int(msg.ecc_corrected),
            int(msg.ecc_uncorrected),
            int(msg.last_xid),
            int(msg.xid_count),
            int(msg.throttle_reasons),
        )

    def to_proto(self) -> common_pb2.GpuUsage:
        return common_pb2.GpuUsage(
            index=self.index,
            utilization_percent=self.utilization_percent,
            memory_used_bytes=self.memory_used_bytes,
            temperature_c=self.temperature_c,
            power_w=self.power_w,
            ecc_corrected=self.ecc_corrected,
            ecc_uncorrected=self.ecc_uncorrected,
            last_xid=self.last_xid,
            xid_count=self.xid_count,
            throttle_reasons=self.throttle_reasons,
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
