"""The console's way into ``DomainControl``: every API call goes through the gRPC service's own door.

A console request becomes one ``DomainControl`` call made in-process: :class:`DomainControlGate`
(the same instance type the gRPC server uses) authenticates the bearer token, applies the rate
limit, the RBAC table, the follower refusal and the audit rules, then :class:`DomainControlServicer`
runs the method, which applies tenant isolation (``MasterDomain.get_job`` and friends). So there is
one place for authorization and one for business logic; the console only translates HTTP to a
request message and the answer (or the status the call was aborted with) to JSON.

:class:`ConsoleContext` is the ``grpc.aio.ServicerContext`` those two see: the token as
``authorization`` metadata, the browser's address as the peer, and -- on a master that runs mutual
TLS -- the transport identity ``client/console``: the browser has no client certificate (the
console is served over HTTPS with the master's server certificate and the token is the
credential), so the console vouches for the transport, as a client certificate would, and the audit
log names ``cert:client/console`` for calls made through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf import json_format
from google.protobuf.message import Message

from master_domain._leader import LEADER_KEY

if TYPE_CHECKING:
    from master_domain._master import MasterDomain

#: The transport identity console calls carry on a master with mutual TLS (see the module doc).
CONSOLE_IDENTITY = b"spiffe://domainos/client/console"
SERVICE = "/domainos.api.v1.DomainControl/"
#: The DomainControl methods the console calls (it is read-only).
METHODS = (
    "WhoAmI",
    "GetClusterInfo",
    "ListDomains",
    "ListNodes",
    "ListJobs",
    "GetJob",
    "ExplainJob",
    "ReadLogs",
    "ListTenants",
    "ListQuotas",
)

#: gRPC status -> HTTP status of the console's JSON API.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class CallFailed(Exception):
    """A console call that the gate or the servicer refused: the gRPC status and its words."""

    def __init__(self, code: str, message: str, leader: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: A follower's refusal names the leader's gRPC address.
        self.leader = leader

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.leader:
            err["leader"] = self.leader
        return {"error": err}


class ConsoleContext:
    """The ``ServicerContext`` of one console call (only what the gate and servicers use)."""

    def __init__(self, authorization: str | None, peer: str, secure: bool) -> None:
        # The request's Authorization header as is: the gate parses it (``Bearer dos_...``).
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", authorization),) if authorization is not None else ()
        )
        self._peer = peer
        self._secure = secure
        self._trailing: tuple[tuple[str, Any], ...] = ()
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"peer_spiffe_id": [CONSOLE_IDENTITY]} if self._secure else {}

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailing = (*self._trailing, *tuple(trailing_metadata))
        raise grpc.aio.AbortError()

    def failure(self) -> CallFailed:
        code = self._code.name if self._code is not None else "UNKNOWN"
        leader = next((str(v) for k, v in self._trailing if k == LEADER_KEY), "")
        return CallFailed(code, self._details or code.lower(), leader)


@dataclasses.dataclass(frozen=True)
class _Details:
    """``grpc.HandlerCallDetails`` of a console call."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class Bridge:
    """Calls ``DomainControl`` methods in-process through the gate (see the module doc)."""

    def __init__(self, master: MasterDomain) -> None:
        # Imported here: _service imports the master's module, which imports this package.
        from master_domain._service import DomainControlGate, DomainControlServicer

        self._master = master
        self._gate = DomainControlGate(master)
        servicer = DomainControlServicer(master)
        self._handlers: dict[str, Any] = {
            SERVICE + name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name)) for name in METHODS
        }

    async def call(self, method: str, request: Message, *, authorization: str | None, peer: str) -> Any:
        """Run ``method`` with the caller's ``Authorization`` header; CallFailed with the status it
        was refused with."""
        context = ConsoleContext(authorization, peer, self._master.secure)
        details = _Details(SERVICE + method, context.invocation_metadata())

        async def continuation(d: Any) -> Any:
            return self._handlers.get(d.method)

        handler = await self._gate.intercept_service(continuation, details)
        if handler is None:
            raise CallFailed("UNIMPLEMENTED", f"{method} is not served by the console")
        run: Callable[[Message, ConsoleContext], Awaitable[Any]] = handler.unary_unary
        try:
            return await run(request, context)
        except grpc.aio.AbortError:
            raise context.failure() from None


def to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON-ready data (field names as in the .proto; 64-bit numbers as
    strings, enums by name, as the protobuf JSON mapping has them)."""
    data: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return data
