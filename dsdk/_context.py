"""``dsdk.context()``: what a task process knows about itself, read from the environment the
node agent gives every task (``DOMAINOS_*``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import FailedPrecondition

if TYPE_CHECKING:
    from ._client import Client
    from ._types import Endpoint


def _int(env: Mapping[str, str], name: str, default: int = 0) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class TaskContext:
    """The job context of the task this process runs as.

    ``gpus`` are the node's GPU indexes assigned to the task (``CUDA_VISIBLE_DEVICES``; CUDA
    numbers them 0..n-1 inside the task). ``node_host`` is the address the task may serve on for
    its peers; ``datasets_dir`` where this node keeps dataset shards (see :class:`dsdk.Dataset`).
    """

    job_id: str
    task_index: int
    attempt: int
    replicas: int
    job_name: str = ""
    node_id: str = ""
    subdomain_id: str = ""
    region: str = ""
    node_host: str = "127.0.0.1"
    master: str = ""
    gpus: tuple[int, ...] = ()
    datasets_dir: str = ""
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def rank(self) -> int:
        """The task's index (its rank among the job's tasks)."""
        return self.task_index

    @property
    def world_size(self) -> int:
        return self.replicas

    def client(self) -> Client:
        """A client of the master with this job's own credential (``DOMAINOS_TOKEN``)."""
        from ._client import Client

        if not self.master:
            raise FailedPrecondition(
                "DOMAINOS_MASTER is not set: this process was not started by a node agent"
            )
        return Client(self.master, token=self.env.get("DOMAINOS_TOKEN") or None)

    def peers(
        self, kind: str = "collective", *, min_count: int | None = None, wait: float = 60.0
    ) -> list[Endpoint]:
        """The endpoints the job's tasks published (``kind``), waiting until every task (or
        ``min_count``) has, at most ``wait`` seconds. Peers are found through the control plane."""
        from ._rendezvous import wait_endpoints

        with self.client() as c:
            return wait_endpoints(
                c,
                self.job_id,
                kind=kind,
                count=self.replicas if min_count is None else min_count,
                timeout=wait,
            )


def context(environ: Mapping[str, str] | None = None) -> TaskContext:
    """This task's :class:`TaskContext`; FailedPrecondition when not run as a DomainOS task."""
    env = dict(os.environ if environ is None else environ)
    job_id = env.get("DOMAINOS_JOB_ID", "")
    if not job_id:
        raise FailedPrecondition(
            "not running as a DomainOS task (DOMAINOS_JOB_ID is not set); dsdk.context() works inside "
            "a job's tasks and DSDK functions"
        )
    gpus = tuple(int(g) for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip().isdigit())
    return TaskContext(
        job_id=job_id,
        task_index=_int(env, "DOMAINOS_TASK_INDEX"),
        attempt=_int(env, "DOMAINOS_TASK_ATTEMPT"),
        replicas=_int(env, "DOMAINOS_REPLICAS", 1),
        job_name=env.get("DOMAINOS_JOB_NAME", ""),
        node_id=env.get("DOMAINOS_NODE_ID", ""),
        subdomain_id=env.get("DOMAINOS_SUBDOMAIN", ""),
        region=env.get("DOMAINOS_REGION", ""),
        node_host=env.get("DOMAINOS_NODE_HOST", "") or "127.0.0.1",
        master=env.get("DOMAINOS_MASTER", ""),
        gpus=gpus,
        datasets_dir=env.get("DOMAINOS_DATASETS_DIR", ""),
        env=env,
    )
