"""Domain types the client hands out: frozen dataclasses built from protobuf at the boundary.

Nothing outside :mod:`dsdk._client` and this module sees a protobuf message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domainos.errors import InvalidArgument
from domainos.jobspec import JobSpec
from domainos.resources import Resources


class JobState(enum.StrEnum):
    """Where a job is in its life (``master.proto`` ``JobState`` without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED: the job will not change again."""
        return self in _TERMINAL_JOB_STATES

    @classmethod
    def parse(cls, text: str) -> JobState:
        """``"running"``/``"RUNNING"``/``"JOB_STATE_RUNNING"`` -> :attr:`RUNNING`."""
        name = text.strip().upper().removeprefix("JOB_STATE_")
        try:
            return cls[name]
        except KeyError:
            allowed = ", ".join(s.value.lower() for s in cls if s is not cls.UNSPECIFIED)
            raise InvalidArgument(f"unknown job state {text!r}; allowed: {allowed}", field="state") from None


_TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class TaskState(enum.StrEnum):
    """Where one task (replica) is (``common.proto`` ``TaskState`` without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"
    REJECTED = "REJECTED"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.LOST)


def _job_state(value: int) -> JobState:
    from domainos.api.v1 import master_pb2

    try:
        name = master_pb2.JobState.Name(value).removeprefix("JOB_STATE_")
    except ValueError:  # a state added by a newer master
        return JobState.UNSPECIFIED
    return JobState.__members__.get(name, JobState.UNSPECIFIED)


def _task_state(value: int) -> TaskState:
    from domainos import model

    return TaskState[model.TaskState.from_proto(value).name]  # a newer master's state: UNSPECIFIED


def _health(value: int) -> str:
    from domainos import model

    return model.HealthStatus.from_proto(value).name


def _resources(msg: Any) -> Resources:
    return Resources.from_proto(msg)


@dataclass(frozen=True)
class Task:
    """One replica of a job at its current attempt."""

    index: int
    attempt: int
    state: TaskState
    node_id: str = ""
    subdomain_id: str = ""
    region: str = ""
    exit_code: int = 0
    message: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_retries: int = 0
    lost_retries: int = 0
    #: Attempts moved off draining nodes (no retry spent).
    drains: int = 0
    #: The step the current attempt last reported (``dsdk.report_progress``; -1 = none), of
    #: ``total_steps`` (0 = unknown), and its last checkpoint's step (-1 = none).
    step: int = -1
    total_steps: int = 0
    checkpoint_step: int = -1
    #: Running well behind the rest of its gang.
    straggler: bool = False

    @classmethod
    def from_proto(cls, msg: Any) -> Task:
        return cls(
            index=msg.index,
            attempt=msg.attempt,
            state=_task_state(msg.state),
            node_id=msg.node_id,
            subdomain_id=msg.subdomain_id,
            region=msg.region,
            exit_code=msg.exit_code,
            message=msg.message,
            started_at=msg.started_at,
            finished_at=msg.finished_at,
            exit_retries=msg.exit_retries,
            lost_retries=msg.lost_retries,
            drains=msg.drains,
            step=msg.progress.step if msg.HasField("progress") else -1,
            total_steps=msg.progress.total_steps if msg.HasField("progress") else 0,
            checkpoint_step=msg.progress.checkpoint_step if msg.HasField("progress") else -1,
            straggler=msg.straggler,
        )


@dataclass(frozen=True)
class Goodput:
    """Where a job's time went, in seconds per task, from its first task start to now (or its
    end): productive = wall - lost - recovery; ``effective_ratio`` = productive / wall."""

    wall_s: float = 0.0
    productive_s: float = 0.0
    lost_s: float = 0.0
    recovery_s: float = 0.0
    effective_ratio: float = 0.0
    interruptions: int = 0

    @classmethod
    def from_proto(cls, msg: Any) -> Goodput:
        return cls(
            msg.wall_s, msg.productive_s, msg.lost_s, msg.recovery_s, msg.effective_ratio, msg.interruptions
        )


@dataclass(frozen=True)
class JobStats:
    """What a job's data plane moved (DSDK jobs; zero otherwise), in bytes by distance."""

    bytes_intra_node: int = 0
    bytes_inter_node: int = 0
    bytes_inter_subdomain: int = 0
    bytes_inter_region: int = 0
    bytes_client: int = 0
    calls: int = 0
    local_calls: int = 0
    updated_at: float = 0.0

    @property
    def bytes_between_nodes(self) -> int:
        """Bytes that crossed a network between two nodes (any distance)."""
        return self.bytes_inter_node + self.bytes_inter_subdomain + self.bytes_inter_region

    @property
    def bytes_between_domains(self) -> int:
        """Bytes that crossed from one sub-domain to another (same region or not)."""
        return self.bytes_inter_subdomain + self.bytes_inter_region

    @property
    def empty(self) -> bool:
        return not (self.calls or self.bytes_client or self.bytes_between_nodes or self.bytes_intra_node)

    @classmethod
    def from_proto(cls, msg: Any) -> JobStats:
        return cls(
            bytes_intra_node=msg.bytes_intra_node,
            bytes_inter_node=msg.bytes_inter_node,
            bytes_inter_subdomain=msg.bytes_inter_subdomain,
            bytes_inter_region=msg.bytes_inter_region,
            bytes_client=msg.bytes_client,
            calls=msg.calls,
            local_calls=msg.local_calls,
            updated_at=msg.updated_at,
        )

    def to_proto(self) -> Any:
        from domainos.api.v1 import master_pb2

        return master_pb2.JobStats(
            bytes_intra_node=self.bytes_intra_node,
            bytes_inter_node=self.bytes_inter_node,
            bytes_inter_subdomain=self.bytes_inter_subdomain,
            bytes_inter_region=self.bytes_inter_region,
            bytes_client=self.bytes_client,
            calls=self.calls,
            local_calls=self.local_calls,
        )


@dataclass(frozen=True)
class Endpoint:
    """Where one task of a job serves (found through the master's rendezvous)."""

    task_index: int
    attempt: int
    address: str
    kind: str = "dsdk-worker"
    node_id: str = ""
    subdomain_id: str = ""
    region: str = ""

    @classmethod
    def from_proto(cls, msg: Any) -> Endpoint:
        return cls(
            task_index=msg.task_index,
            attempt=msg.attempt,
            address=msg.address,
            kind=msg.kind,
            node_id=msg.node_id,
            subdomain_id=msg.subdomain_id,
            region=msg.region,
        )


@dataclass(frozen=True)
class ShardReplica:
    """One copy of a dataset shard: the node holding it, its sub-domain and region."""

    node_id: str
    subdomain_id: str
    region: str = ""


@dataclass(frozen=True)
class ShardInfo:
    shard: int
    size_bytes: int
    replicas: tuple[ShardReplica, ...] = ()


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's registry record: its shards and where their copies live."""

    name: str
    tenant: str = ""
    num_shards: int = 0
    replicas: int = 1
    size_bytes: int = 0
    shards: tuple[ShardInfo, ...] = ()
    created_at: float = 0.0
    created_by: str = ""
    job_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, msg: Any) -> DatasetInfo:
        return cls(
            name=msg.name,
            tenant=msg.tenant,
            num_shards=msg.num_shards,
            replicas=msg.replicas,
            size_bytes=msg.size_bytes,
            created_at=msg.created_at,
            created_by=msg.created_by,
            job_id=msg.job_id,
            labels=dict(msg.labels),
            shards=tuple(
                ShardInfo(
                    s.shard,
                    s.size_bytes,
                    tuple(ShardReplica(r.node_id, r.subdomain_id, r.region) for r in s.replicas),
                )
                for s in msg.shards
            ),
        )

    def to_proto(self) -> Any:
        from domainos.api.v1 import master_pb2

        return master_pb2.Dataset(
            name=self.name,
            tenant=self.tenant,
            num_shards=self.num_shards,
            replicas=self.replicas,
            job_id=self.job_id,
            labels=dict(self.labels),
            shards=[
                master_pb2.DatasetShardInfo(
                    shard=s.shard,
                    size_bytes=s.size_bytes,
                    replicas=[
                        master_pb2.ShardReplica(
                            node_id=r.node_id, subdomain_id=r.subdomain_id, region=r.region
                        )
                        for r in s.replicas
                    ],
                )
                for s in self.shards
            ],
        )


@dataclass(frozen=True)
class Job:
    """A job as the master last reported it. ``tasks`` is empty in listings."""

    job_id: str
    state: JobState
    name: str = ""
    message: str = ""
    replicas: int = 1
    command: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0
    tasks: tuple[Task, ...] = ()
    request_id: str = ""
    spec: JobSpec | None = field(default=None, compare=False, repr=False)
    #: What the job's data plane moved (DSDK jobs).
    stats: JobStats = field(default_factory=JobStats, compare=False)
    #: Where its time went (see :class:`Goodput`).
    goodput: Goodput = field(default_factory=Goodput, compare=False)
    #: Indexes of gang tasks running well behind the others.
    stragglers: tuple[int, ...] = ()

    @property
    def terminal(self) -> bool:
        """True once the job SUCCEEDED, FAILED or was CANCELLED."""
        return self.state.terminal

    @property
    def succeeded(self) -> bool:
        return self.state is JobState.SUCCEEDED

    def task_counts(self) -> dict[str, int]:
        """Number of tasks per state (only states that occur)."""
        out: dict[str, int] = {}
        for t in self.tasks:
            out[t.state.value] = out.get(t.state.value, 0) + 1
        return out

    @classmethod
    def from_proto(cls, msg: Any) -> Job:
        spec_msg = msg.spec
        try:
            spec: JobSpec | None = JobSpec.from_proto(spec_msg) if spec_msg.command else None
        except InvalidArgument:
            spec = None  # the master validated it; an odd spec must not make a job unreadable
        return cls(
            job_id=msg.job_id,
            state=_job_state(msg.state),
            name=spec_msg.name,
            message=msg.message,
            replicas=spec_msg.replicas or 1,
            command=tuple(spec_msg.command),
            resources=_resources(spec_msg.resources),
            created_at=msg.created_at,
            updated_at=msg.updated_at,
            finished_at=msg.finished_at,
            tasks=tuple(sorted((Task.from_proto(t) for t in msg.tasks), key=lambda t: t.index)),
            request_id=msg.request_id,
            spec=spec,
            stats=JobStats.from_proto(msg.stats),
            goodput=Goodput.from_proto(msg.goodput),
            stragglers=tuple(msg.stragglers),
        )


@dataclass(frozen=True)
class SubDomain:
    """One site-local cluster as the master sees it: a shape-aware summary, never per-node data."""

    subdomain_id: str
    region: str
    address: str = ""
    connected: bool = False
    last_seen_at: float = 0.0
    incarnation: str = ""
    nodes_total: int = 0
    nodes_ready: int = 0
    nodes_suspect: int = 0
    nodes_dead: int = 0
    nodes_simulated: int = 0
    capacity: Resources = field(default_factory=Resources)
    free: Resources = field(default_factory=Resources)
    running_tasks: int = 0
    max_nodes: int = 0
    gpus_by_model: Mapping[str, int] = field(default_factory=dict)
    free_gpus_by_model: Mapping[str, int] = field(default_factory=dict)
    power_draw_w: float = 0.0

    @classmethod
    def from_proto(cls, msg: Any) -> SubDomain:
        s = msg.summary
        return cls(
            subdomain_id=msg.subdomain_id,
            region=msg.region,
            address=msg.address,
            connected=msg.connected,
            last_seen_at=msg.last_seen_at,
            incarnation=msg.incarnation,
            nodes_total=s.nodes_total,
            nodes_ready=s.nodes_ready,
            nodes_suspect=s.nodes_suspect,
            nodes_dead=s.nodes_dead,
            nodes_simulated=s.nodes_simulated,
            capacity=_resources(s.capacity),
            free=_resources(s.free),
            running_tasks=s.running_tasks,
            max_nodes=s.max_nodes,
            gpus_by_model=dict(s.gpus_by_model),
            free_gpus_by_model=dict(s.free_gpus_by_model),
            power_draw_w=s.power_draw_w,
        )


@dataclass(frozen=True)
class Region:
    """A region and its sub-domains."""

    name: str
    subdomains: tuple[SubDomain, ...] = ()

    @classmethod
    def from_proto(cls, msg: Any) -> Region:
        subs = sorted((SubDomain.from_proto(s) for s in msg.subdomains), key=lambda s: s.subdomain_id)
        return cls(name=msg.name, subdomains=tuple(subs))


@dataclass(frozen=True)
class Node:
    """One machine as its sub-domain reports it (``domainctl nodes``)."""

    node_id: str
    subdomain_id: str
    region: str
    state: str
    simulated: bool = False
    hostname: str = ""
    cpu_cores: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    gpu_model: str = ""
    allocatable: Resources = field(default_factory=Resources)
    free: Resources = field(default_factory=Resources)
    running_tasks: int = 0
    cpu_percent: float = 0.0
    memory_used_bytes: int = 0
    gpu_utilization_percent: float = 0.0
    health: str = "UNSPECIFIED"
    conditions: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    last_report_at: float = 0.0
    incarnation: str = ""
    #: The switch tier the node sits under ("" = none declared).
    block: str = ""
    #: GPU indexes of each NVLink domain, lowest index first (one tuple per domain).
    nvlink_domains: tuple[tuple[int, ...], ...] = ()
    #: Dataset shards held on the node, as ``"name:shard"``.
    datasets: tuple[str, ...] = ()
    #: Why it takes no new tasks ("" = not cordoned), by whom (``health`` | ``admin``), since when.
    cordon_reason: str = ""
    cordoned_by: str = ""
    cordoned_at: float = 0.0
    #: Its tasks are being moved off.
    draining: bool = False
    #: The health policy's risk score, 0..1 (it drains the node at its threshold).
    risk: float = 0.0

    @classmethod
    def from_proto(cls, msg: Any) -> Node:
        inv = msg.inventory
        usage = msg.usage
        gpu_util = [g.utilization_percent for g in usage.gpus]
        model = inv.allocatable.gpu_model or (inv.gpus[0].model if len(inv.gpus) else "")
        return cls(
            node_id=inv.node_id,
            subdomain_id=msg.subdomain_id,
            region=msg.region,
            state=msg.state or "unknown",
            simulated=inv.simulated,
            hostname=inv.hostname,
            cpu_cores=inv.cpu_cores,
            memory_bytes=inv.memory_bytes,
            gpus=len(inv.gpus),
            gpu_model=model,
            allocatable=_resources(inv.allocatable),
            free=_resources(msg.free),
            running_tasks=msg.running_tasks,
            cpu_percent=usage.cpu_percent,
            memory_used_bytes=usage.memory_used_bytes,
            gpu_utilization_percent=sum(gpu_util) / len(gpu_util) if gpu_util else 0.0,
            health=_health(msg.health.status),
            conditions=tuple(msg.health.conditions),
            labels=dict(inv.labels),
            last_report_at=msg.last_report_at,
            incarnation=msg.incarnation,
            block=inv.block,
            nvlink_domains=_nvlink_domains(inv.gpus),
            datasets=tuple(f"{d.dataset}:{d.shard}" for d in inv.datasets),
            cordon_reason=msg.cordon_reason,
            cordoned_by=msg.cordoned_by,
            cordoned_at=msg.cordoned_at,
            draining=msg.draining,
            risk=msg.risk,
        )


def _nvlink_domains(gpus: Any) -> tuple[tuple[int, ...], ...]:
    domains: dict[int, list[int]] = {}
    for g in gpus:
        domains.setdefault(g.nvlink_domain, []).append(g.index)
    return tuple(tuple(sorted(v)) for _, v in sorted(domains.items()))


@dataclass(frozen=True)
class NodeList:
    """The nodes that answered, and the sub-domains that did not."""

    nodes: tuple[Node, ...]
    unreachable: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskLog:
    """The collected output of one task (one stream)."""

    task_index: int
    attempt: int = 0
    node_id: str = ""
    data: bytes = b""
    size: int = 0
    eof: bool = True
    error: str = ""

    @property
    def text(self) -> str:
        """The output decoded as UTF-8 (undecodable bytes replaced)."""
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ClusterInfo:
    """What the master says about itself and the federation."""

    master_id: str
    version: str = ""
    store: str = ""
    started_at: float = 0.0
    subdomains_connected: int = 0
    subdomains_known: int = 0
    nodes_ready: int = 0
    jobs_active: int = 0
    address: str = ""

    @classmethod
    def from_proto(cls, msg: Any, address: str = "") -> ClusterInfo:
        return cls(
            master_id=msg.master_id,
            version=msg.version,
            store=msg.store,
            started_at=msg.started_at,
            subdomains_connected=msg.subdomains_connected,
            subdomains_known=msg.subdomains_known,
            nodes_ready=msg.nodes_ready,
            jobs_active=msg.jobs_active,
            address=address,
        )
