"""Protobuf <-> domain types, in one place (the service boundary)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import cast

from domainos import model
from domainos.api.v1 import common_pb2, master_pb2, subdomain_pb2
from domainos.errors import InvalidArgument
from domainos.jobspec import JobSpec, task_constraints
from master_domain._datasets import DatasetRecord, ShardInfo, ShardReplica
from master_domain._jobs import Job, JobState, Task, TaskReport, TaskState, lost_after
from master_domain._rendezvous import Endpoint
from master_domain._sched import _reserve

log = logging.getLogger(__name__)

#: Seconds a stopped task gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 10.0


def task_state_from_proto(value: int) -> TaskState | None:
    """None for UNSPECIFIED or a state this master does not know."""
    return TaskState.__members__.get(model.TaskState.from_proto(value).name)


def task_state_to_proto(state: TaskState) -> common_pb2.TaskState:
    """The wire number of a master task state (the master's enum is its stored vocabulary)."""
    return cast(common_pb2.TaskState, int(model.TaskState[state.value]))


def job_state_to_proto(state: JobState) -> str:
    """The enum value's name (protobuf constructors accept names)."""
    return f"JOB_STATE_{state.value}"


def job_state_from_proto(value: int) -> JobState | None:
    try:
        name = master_pb2.JobState.Name(value).removeprefix("JOB_STATE_")
    except ValueError:
        return None
    return JobState.__members__.get(name)


def task_report_from_proto(msg: common_pb2.TaskStatus) -> TaskReport | None:
    """A ``TaskStatus`` from a sub-domain; None (logged) when it cannot be used."""
    try:
        status = model.TaskStatus.from_proto(msg)
    except InvalidArgument as exc:
        log.warning("ignoring malformed task status %s: %s", model.TaskRef.of(msg), exc)
        return None
    state = task_state_from_proto(status.state)
    if state is None:
        log.warning("ignoring task status %s without a state", status.ref)
        return None
    return TaskReport(
        job_id=status.ref.job_id,
        index=status.ref.task_index,
        attempt=status.ref.attempt,
        state=state,
        exit_code=status.exit_code,
        message=status.message,
        node_id=status.node_id,
        started_at=status.started_at,
        finished_at=status.finished_at,
        drained=status.drained,
        progress=status.progress,
    )


def task_to_proto(task: Task) -> master_pb2.TaskInfo:
    return master_pb2.TaskInfo(
        index=task.index,
        attempt=task.attempt,
        state=task_state_to_proto(task.state),
        node_id=task.node_id,
        subdomain_id=task.subdomain_id,
        region=task.region,
        exit_code=task.exit_code,
        message=task.message,
        started_at=task.started_at,
        finished_at=task.finished_at,
        exit_retries=task.exit_retries,
        lost_retries=task.lost_retries,
        drains=task.drains,
        progress=task.progress.to_proto() if task.progress is not None else None,
        straggler=task.straggler,
    )


def job_to_proto(job: Job, *, with_tasks: bool = True, now: float | None = None) -> master_pb2.Job:
    good = job.goodput(time.time() if now is None else now)
    return master_pb2.Job(
        job_id=job.job_id,
        spec=job.spec.to_proto(),
        state=job_state_to_proto(job.state),
        message=job.message,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        tasks=[task_to_proto(t) for t in job.tasks] if with_tasks else [],
        request_id=job.request_id,
        stats=stats_to_proto(job.stats),
        goodput=master_pb2.Goodput(**good),  # type: ignore[arg-type]
        stragglers=list(job.stragglers),
    )


#: ``JobStats`` fields a report may set, each a running total that only grows.
STATS_FIELDS = (
    "bytes_intra_node",
    "bytes_inter_node",
    "bytes_inter_subdomain",
    "bytes_inter_region",
    "bytes_client",
    "calls",
    "local_calls",
)


def stats_to_proto(stats: dict[str, float]) -> master_pb2.JobStats:
    return master_pb2.JobStats(
        **{k: int(stats.get(k, 0)) for k in STATS_FIELDS}, updated_at=float(stats.get("updated_at", 0.0))
    )


def stats_from_proto(msg: master_pb2.JobStats) -> dict[str, float]:
    """Validated running totals (InvalidArgument naming a negative field)."""
    out: dict[str, float] = {}
    for k in STATS_FIELDS:
        value = int(getattr(msg, k))
        if value < 0:
            raise InvalidArgument(f"must not be negative, got {value}", field=f"stats.{k}")
        out[k] = value
    if out["local_calls"] > out["calls"]:
        raise InvalidArgument(
            f"cannot exceed stats.calls ({out['calls']}), got {out['local_calls']}", field="stats.local_calls"
        )
    return out


def endpoint_to_proto(ep: Endpoint) -> master_pb2.Endpoint:
    return master_pb2.Endpoint(
        task_index=ep.task_index,
        attempt=ep.attempt,
        address=ep.address,
        node_id=ep.node_id,
        subdomain_id=ep.subdomain_id,
        region=ep.region,
        kind=ep.kind,
        published_at=ep.published_at,
    )


def endpoint_from_proto(msg: master_pb2.Endpoint) -> Endpoint:
    return Endpoint(
        task_index=msg.task_index,
        attempt=msg.attempt,
        address=msg.address,
        kind=msg.kind or "dsdk-worker",
        node_id=msg.node_id,
        subdomain_id=msg.subdomain_id,
        region=msg.region,
    )


def dataset_to_proto(record: DatasetRecord, *, with_shards: bool = True) -> master_pb2.Dataset:
    return master_pb2.Dataset(
        name=record.name,
        tenant=record.tenant,
        num_shards=record.num_shards,
        replicas=record.replicas,
        size_bytes=record.size_bytes,
        created_at=record.created_at,
        created_by=record.created_by,
        job_id=record.job_id,
        labels=dict(record.labels),
        shards=[
            master_pb2.DatasetShardInfo(
                shard=s.shard,
                size_bytes=s.size_bytes,
                replicas=[
                    master_pb2.ShardReplica(node_id=r.node_id, subdomain_id=r.subdomain_id, region=r.region)
                    for r in s.replicas
                ],
            )
            for s in record.shards
        ]
        if with_shards
        else [],
    )


def dataset_from_proto(msg: master_pb2.Dataset) -> DatasetRecord:
    """The record as sent (validated by the registry)."""
    return DatasetRecord(
        name=msg.name,
        tenant=msg.tenant,
        num_shards=msg.num_shards,
        replicas=msg.replicas,
        labels=dict(msg.labels),
        job_id=msg.job_id,
        shards=tuple(
            ShardInfo(
                s.shard,
                s.size_bytes,
                tuple(ShardReplica(r.node_id, r.subdomain_id, r.region) for r in s.replicas),
            )
            for s in msg.shards
        ),
    )


def place_command_id(ref: model.TaskRef) -> str:
    """Deterministic, so a resent command has the same id and its ack names the task."""
    return f"place/{ref.job_id}/{ref.task_index}/{ref.attempt}"


def parse_place_command_id(command_id: str) -> model.TaskRef | None:
    kind, _, rest = command_id.partition("/")
    parts = rest.split("/")
    if kind != "place" or len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return model.TaskRef(parts[0], int(parts[1]), int(parts[2]))


#: The variable that carries a task's job-scoped credential (set by the master only).
TOKEN_ENV = "DOMAINOS_TOKEN"


#: A cut-off sub-domain stops a replaceable task this long before the master replaces it (or at
#: half the job's ``disconnect.lost_after`` when that is shorter than twice this).
FENCE_MARGIN_S = 5.0


def fence_after(spec: JobSpec, grace_s: float) -> float:
    """When a sub-domain cut off from the master stops the job's tasks (0: never): a little
    before the master declares them lost and runs them elsewhere, so that one copy runs. Jobs with
    ``disconnect.replace: false`` are never replaced, so never fenced."""
    pol = spec.disconnect
    if pol is not None and not pol.replace:
        return 0.0
    after = lost_after(spec, grace_s)
    if after <= 0:
        return 0.0
    return max(after / 2, after - FENCE_MARGIN_S)


def task_spec(
    ref: model.TaskRef,
    spec: JobSpec,
    master_address: str,
    token: str = "",
    *,
    submitted_at: float = 0.0,
    reservation_id: str = "",
    gpu_model: str = "",
    lost_grace_s: float = 0.0,
) -> model.TaskSpec:
    """What task ``ref`` of a job runs, with its placement constraints from the spec.

    ``token`` is the job's own credential; it becomes the task's ``DOMAINOS_TOKEN``.
    ``gpu_model``: the model the plan chose (a gang part), when the spec leaves it open.
    """
    env = dict(spec.env)
    env.pop(TOKEN_ENV, None)
    if token:
        env[TOKEN_ENV] = token
    resources = spec.resources
    if gpu_model and resources.gpus and not resources.gpu_model:
        resources = dataclasses.replace(resources, gpu_model=gpu_model)
    return model.TaskSpec(
        ref=ref,
        command=tuple(spec.command),
        env=env,
        resources=resources,
        tenant=spec.tenant,
        master_address=master_address,
        job_name=spec.name,
        replicas=spec.replicas,
        placement=task_constraints(spec, ref.task_index, submitted_at),
        reservation_id=reservation_id,
        checkpointable=spec.checkpoint is not None,
        fence_after_s=fence_after(spec, lost_grace_s),
        container=model.ContainerSpec(spec.image) if spec.runtime == "docker" else None,
    )


def place_task_command(
    ref: model.TaskRef,
    spec: JobSpec,
    master_address: str,
    token: str = "",
    submitted_at: float = 0.0,
    lost_grace_s: float = 0.0,
) -> subdomain_pb2.MasterCommand:
    """``token`` is the job's own credential; it becomes the task's ``DOMAINOS_TOKEN``."""
    return subdomain_pb2.MasterCommand(
        place_task=subdomain_pb2.PlaceTask(
            command_id=place_command_id(ref),
            spec=task_spec(
                ref, spec, master_address, token, submitted_at=submitted_at, lost_grace_s=lost_grace_s
            ).to_proto(),
        )
    )


# -- gang reservations ----------------------------------------------------------------------------


def reserve_command(
    reservation_id: str, tasks: list[model.TaskSpec], hold_s: float
) -> subdomain_pb2.MasterCommand:
    """``ReserveTasks``: hold every task of one gang part (the full specs: they start at commit)."""
    return subdomain_pb2.MasterCommand(
        reserve=subdomain_pb2.ReserveTasks(
            reservation_id=reservation_id, tasks=[t.to_proto() for t in tasks], hold_s=hold_s
        )
    )


def commit_command(reservation_id: str) -> subdomain_pb2.MasterCommand:
    return subdomain_pb2.MasterCommand(commit=subdomain_pb2.CommitReservation(reservation_id=reservation_id))


def release_command(reservation_id: str, reason: str) -> subdomain_pb2.MasterCommand:
    return subdomain_pb2.MasterCommand(
        release=subdomain_pb2.ReleaseReservation(reservation_id=reservation_id, reason=reason[:1000])
    )


def reservation_event(
    subdomain_id: str, msg: subdomain_pb2.ReservationReply
) -> _reserve.Accepted | _reserve.Refused | _reserve.Committed | None:
    """A sub-domain's answer as a :class:`~master_domain._sched._reserve.Coordinator` event.

    None (logged) for a reply without an id or an outcome.
    """
    rid = msg.reservation_id
    if not rid:
        log.warning("ignoring a reservation reply without an id from sub-domain %s", subdomain_id)
        return None
    outcome = msg.outcome
    if outcome == subdomain_pb2.RESERVATION_OUTCOME_ACCEPTED:
        return _reserve.Accepted(rid, subdomain_id)
    if outcome == subdomain_pb2.RESERVATION_OUTCOME_COMMITTED:
        return _reserve.Committed(rid, subdomain_id)
    if outcome == subdomain_pb2.RESERVATION_OUTCOME_REFUSED:
        return _reserve.Refused(rid, subdomain_id, msg.reason or "no reason given", bool(msg.expired))
    log.warning("ignoring reservation reply %s from sub-domain %s without an outcome", rid, subdomain_id)
    return None


def resync_event(subdomain_id: str, states: list[subdomain_pb2.ReservationState]) -> _reserve.Resync:
    """A Hello's held and committed reservations."""
    return _reserve.Resync(
        subdomain_id,
        held=tuple(s.reservation_id for s in states if s.reservation_id and not s.committed),
        committed=tuple(s.reservation_id for s in states if s.reservation_id and s.committed),
    )


def stop_task_command(ref: model.TaskRef, reason: str) -> subdomain_pb2.MasterCommand:
    return subdomain_pb2.MasterCommand(
        stop_task=subdomain_pb2.StopTaskCommand(
            command_id=f"stop/{ref.job_id}/{ref.task_index}/{ref.attempt}",
            task=ref.to_proto(),
            grace_s=STOP_GRACE_S,
            reason=reason,
        )
    )


def ack_tasks_command(refs: tuple[model.TaskRef, ...]) -> subdomain_pb2.MasterCommand:
    return subdomain_pb2.MasterCommand(
        ack_tasks=subdomain_pb2.AckTaskStates(tasks=[r.to_proto() for r in refs])
    )
