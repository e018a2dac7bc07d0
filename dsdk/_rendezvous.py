"""Finding a job's tasks through the control plane (the master's rendezvous)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .errors import DeadlineExceeded, FailedPrecondition

if TYPE_CHECKING:
    from ._client import Client
    from ._types import Endpoint

#: Longest single ListEndpoints wait (the master caps it at 30 s).
_WAIT_STEP_S = 10.0


def wait_endpoints(client: Client, job_id: str, *, kind: str, count: int, timeout: float) -> list[Endpoint]:
    """The job's ``kind`` endpoints once ``count`` are published; DeadlineExceeded after
    ``timeout`` seconds (saying how many came), FailedPrecondition when the job has ended."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        eps, state = client.endpoints(
            job_id, kind=kind, min_count=count, wait=max(0.0, min(left, _WAIT_STEP_S))
        )
        if len(eps) >= count:
            return eps
        if state.terminal:
            raise FailedPrecondition(
                f"job {job_id} ended ({state.value}) with {len(eps)} of {count} {kind} endpoints published"
            )
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(
                f"only {len(eps)} of {count} tasks of job {job_id} published a {kind} endpoint within {timeout:g}s"
            )
