"""The DomainOS exception tree, as the client raises it.

Every error the client raises on purpose is a :class:`DomainOSError`; gRPC status codes map to
the subclasses one to one (``NOT_FOUND`` -> :class:`NotFound`, ``UNAVAILABLE`` ->
:class:`Unavailable`, ...). :class:`WaitTimeout` is the client's own leaf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from domainos.errors import (
    AlreadyExists,
    ConfigError,
    DeadlineExceeded,
    DomainOSError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from ._types import Job


class RemoteError(DomainOSError):
    """A function raised an exception where it ran (a DSDK worker on some node).

    ``type_name`` and ``remote_message`` are the original exception's; ``remote_traceback`` its
    traceback as formatted there; ``where`` names the worker (node, task). The message carries all
    of them, so a printed error shows the remote traceback.
    """

    code = "ABORTED"

    def __init__(self, type_name: str, message: str, remote_traceback: str = "", where: str = "") -> None:
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback
        self.where = where
        text = f"{type_name}: {message}" + (f" (raised {where})" if where else "")
        if remote_traceback:
            text += "\n\nRemote traceback:\n" + remote_traceback.rstrip()
        super().__init__(text)

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str, str]]:
        return RemoteError, (self.type_name, self.remote_message, self.remote_traceback, self.where)


class WorkerLost(Unavailable):
    """The worker running a call went away (its node died, or its process) and the call could not
    be retried elsewhere (retries spent, or nowhere else holds its data)."""


class WaitTimeout(DeadlineExceeded):
    """``Client.wait`` gave up before the job finished; the job itself goes on."""

    exit_code = 1

    def __init__(self, message: str, job: Job) -> None:
        super().__init__(message)
        self.job = job


__all__ = [
    "AlreadyExists",
    "ConfigError",
    "DeadlineExceeded",
    "DomainOSError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "WaitTimeout",
    "WorkerLost",
]
