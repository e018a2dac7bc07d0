"""One exception tree for the whole of DomainOS.

Every package raises subclasses of :class:`DomainOSError`. Each error class
names the gRPC status code it maps to, so servers translate domain errors to
status codes in exactly one place (:func:`domainos.rpc.abort_with`) and
clients translate status codes back in exactly one place
(:func:`error_from_status`).
"""

from __future__ import annotations

from typing import ClassVar

#: Longest message an error carries. Messages quote the offending value, which a hostile request
#: can make megabytes long; the message becomes a gRPC status (whose trailer a client refuses past
#: 16 KiB, hiding the real status behind "metadata size exceeds hard limit") and a log line.
MAX_MESSAGE_CHARS = 1000
#: Trailing metadata key carrying :attr:`DomainOSError.reason` with the status.
REASON_KEY = "domainos-reason"


def clip(text: str, limit: int = MAX_MESSAGE_CHARS, note: str = "") -> str:
    """``text`` itself, or its start and end around ``note`` (default: how much was cut)."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    head = max(0, limit - tail - 40)
    end = text[len(text) - tail :]
    return f"{text[:head]} ...[{note or f'{len(text) - head - tail} characters cut'}]... {end}"


class DomainOSError(Exception):
    """Root of every error DomainOS raises on purpose."""

    #: Name of the gRPC status code (``grpc.StatusCode`` member) this maps to.
    code: ClassVar[str] = "INTERNAL"
    #: Process exit status the CLI uses for this error.
    exit_code: ClassVar[int] = 1
    #: A finer reason than the status code, sent as trailing metadata (:data:`REASON_KEY`); "" = none.
    reason: ClassVar[str] = ""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        message = clip(message)
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArgument(DomainOSError):
    """Bad input: which field, why, what is allowed."""

    code = "INVALID_ARGUMENT"
    exit_code = 2


class NotFound(DomainOSError):
    code = "NOT_FOUND"


class AlreadyExists(DomainOSError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(DomainOSError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(DomainOSError):
    """A cap or quota was hit (e.g. a sub-domain's ``max_nodes``)."""

    code = "RESOURCE_EXHAUSTED"


class SubDomainFull(ResourceExhausted):
    """A sub-domain refuses a node because ``max_nodes`` live nodes are registered: the one refusal
    that sends an agent to its next sub-domain. Marked on the wire (:data:`REASON_KEY`), since
    RESOURCE_EXHAUSTED alone also means a rate limit or gRPC core's own overload refusal."""

    reason = "subdomain-full"


class Unavailable(DomainOSError):
    """The peer (master, sub-domain, store) cannot be reached right now."""

    code = "UNAVAILABLE"
    exit_code = 3


class DeadlineExceeded(DomainOSError):
    code = "DEADLINE_EXCEEDED"
    exit_code = 3


class Unauthenticated(DomainOSError):
    code = "UNAUTHENTICATED"


class PermissionDenied(DomainOSError):
    code = "PERMISSION_DENIED"


class Internal(DomainOSError):
    code = "INTERNAL"


class ConfigError(InvalidArgument):
    """A configuration or topology file is wrong."""


class StoreError(DomainOSError):
    """Root of store errors (both backends raise only these)."""

    code = "UNAVAILABLE"


_BY_CODE: dict[str, type[DomainOSError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        Internal,
    )
}


def error_from_status(code_name: str, message: str) -> DomainOSError:
    """Build the DomainOS error for a gRPC status code name and details."""
    cls = _BY_CODE.get(code_name, DomainOSError)
    return cls(message)
