"""Protobuf <-> domain types, in one place (the service boundary)."""

from __future__ import annotations

import logging
from typing import cast

from domainos import model
from domainos.api.v1 import common_pb2, master_pb2, subdomain_pb2
from domainos.errors import InvalidArgument
from domainos.jobspec import JobSpec
from master_domain._jobs import Job, JobState, Task, TaskReport, TaskState

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
    )


def job_to_proto(job: Job, *, with_tasks: bool = True) -> master_pb2.Job:
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


def place_task_command(
    ref: model.TaskRef, spec: JobSpec, master_address: str, token: str = ""
) -> subdomain_pb2.MasterCommand:
    """``token`` is the job's own credential; it becomes the task's ``DOMAINOS_TOKEN``."""
    env = dict(spec.env)
    env.pop(TOKEN_ENV, None)
    if token:
        env[TOKEN_ENV] = token
    return subdomain_pb2.MasterCommand(
        place_task=subdomain_pb2.PlaceTask(
            command_id=place_command_id(ref),
            spec=model.TaskSpec(
                ref=ref,
                command=tuple(spec.command),
                env=env,
                resources=spec.resources,
                tenant=spec.tenant,
                master_address=master_address,
                job_name=spec.name,
                replicas=spec.replicas,
            ).to_proto(),
        )
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
