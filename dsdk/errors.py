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
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "WaitTimeout",
]
