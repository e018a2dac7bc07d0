"""gRPC plumbing shared by every tier: options, servers, channels, TLS, and error mapping.

Domain errors become gRPC status codes in exactly one place (:func:`rpc_method` /
:func:`abort_with`) and gRPC errors become domain errors in exactly one place
(:func:`translate_rpc_error`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from domainos.errors import (
    REASON_KEY,
    DeadlineExceeded,
    DomainOSError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    clip,
    error_from_status,
)
from domainos.security._pki import CertFiles, Identity, check_usable

log = logging.getLogger(__name__)

#: Largest message any DomainOS service accepts or sends. Larger requests get RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# Liveness of long-lived streams is carried by HTTP/2 keepalive pings, handled in C core
# with no Python work per ping: a dead peer is noticed within time + timeout (10 s).
KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 5_000

_COMMON_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # The ack of a keepalive ping is also bounded by the HTTP/2 ping timeout (60 s by default):
    # without this a blackholed peer (bytes held, nothing closed) was noticed only after ~65 s.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS: list[tuple[str, Any]] = [
    *_COMMON_OPTIONS,
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1_000),
    ("grpc.so_reuseport", 0),
    # gRPC core refuses new calls with RESOURCE_EXHAUSTED "Too many pending requests" once more than
    # 3,000 (default hard limit) have arrived that the Python server has not picked up yet. A
    # sub-domain restart brings up to max_nodes (10,000) agent streams back at once: without these
    # limits a third of them were refused (seen by grpc.aio clients as INTERNAL, grpc/grpc#36066).
    ("grpc.server.max_pending_requests", 12_000),
    ("grpc.server.max_pending_requests_hard_limit", 25_000),
]
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *_COMMON_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 0),
]


#: PEM files for mutual TLS: the cluster CA, this component's certificate and key.
TLSFiles = CertFiles


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _ReloadingServerCerts:
    """Serves the current certificate files; called by gRPC core on every TLS handshake.

    Rotation without a restart: when the files' modification times change, the next handshake
    uses the new certificate, key and CA (existing connections keep theirs).
    """

    def __init__(self, files: CertFiles) -> None:
        self.files = files
        self._stamp = self._mtimes()

    def _mtimes(self) -> tuple[float, ...]:
        out = []
        for path in (self.files.ca, self.files.cert, self.files.key):
            try:
                out.append(os.stat(path).st_mtime_ns)
            except OSError:
                out.append(-1)
        return tuple(out)

    def config(self) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.files.key), _read(self.files.cert))], root_certificates=_read(self.files.ca)
        )

    def __call__(self) -> Any:
        stamp = self._mtimes()
        if stamp == self._stamp:
            return None
        try:
            cfg = self.config()
        except OSError as exc:  # mid-rotation or removed: keep serving the old one
            log.warning("cannot reload certificates %s: %s", self.files.cert, exc)
            return None
        self._stamp = stamp
        log.info("reloaded TLS certificate %s", self.files.cert)
        return cfg


class _Malformed:
    """Stands in for a request whose bytes did not parse (corrupt wire format, a string that is
    not UTF-8), so that it is refused with INVALID_ARGUMENT; gRPC itself would answer UNKNOWN
    "Unexpected DecodeError"."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # protobuf's DecodeError
            return _Malformed(str(exc))

    return deserialize


async def _refuse(context: Any, bad: _Malformed) -> NoReturn:
    await abort_with(context, InvalidArgument(f"the request is not a valid message: {bad.error}"))


async def _guarded(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for msg in requests:
        if isinstance(msg, _Malformed):
            await _refuse(context, msg)
        yield msg


class _GuardedContext:
    """A stream's servicer context whose ``read()`` refuses a message that did not parse."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def read(self) -> Any:
        msg = await self._context.read()
        if isinstance(msg, _Malformed):
            await _refuse(self._context, msg)
        return msg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


# grpcio ships no type information (a stub package may add it): one alias, usable either way.
_Interceptor: Any = grpc.aio.ServerInterceptor


class _MalformedRequests(_Interceptor):  # type: ignore[misc]
    """Outermost interceptor of every DomainOS server: unparsable requests get INVALID_ARGUMENT."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            unary_inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                if isinstance(request, _Malformed):
                    await _refuse(context, request)
                return await unary_inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=parse, response_serializer=handler.response_serializer
            )
        if handler.stream_stream is not None:
            stream_inner = handler.stream_stream

            async def bidi(requests: AsyncIterator[Any], context: Any) -> Any:
                return await stream_inner(_guarded(requests, context), _GuardedContext(context))

            return grpc.stream_stream_rpc_method_handler(
                bidi, request_deserializer=parse, response_serializer=handler.response_serializer
            )
        return handler  # DomainOS has no unary-stream or stream-unary methods


def create_server(interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] | None = None) -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS, interceptors=[_MalformedRequests(), *(interceptors or [])])


def bind(server: grpc.aio.Server, address: str, tls: CertFiles | None = None) -> int:
    """Listen on ``address`` (port 0 picks one); returns the bound port.

    With ``tls``, clients must present a certificate signed by ``tls.ca`` (mutual TLS), and the
    certificate files are reloaded when they change.
    """
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        check_usable(tls)
        fetcher = _ReloadingServerCerts(tls)
        creds = grpc.dynamic_ssl_server_credentials(
            fetcher.config(), fetcher, require_client_authentication=True
        )
        port = server.add_secure_port(address, creds)
    if port == 0:
        raise Unavailable(f"cannot listen on {address}: address in use or not local")
    return int(port)


def channel_credentials(tls: CertFiles) -> grpc.ChannelCredentials:
    """Client credentials read fresh from the files (call again after a rotation)."""
    check_usable(tls)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca), private_key=_read(tls.key), certificate_chain=_read(tls.cert)
    )


def create_channel(address: str, tls: CertFiles | None = None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=CHANNEL_OPTIONS)


def create_sync_channel(address: str, tls: CertFiles | None = None) -> grpc.Channel:
    """A blocking channel (the DSDK and the CLI)."""
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, channel_credentials(tls), options=CHANNEL_OPTIONS)


class TLSRefusals:
    """Why TLS peers refuse this component: :func:`~domainos.security.diagnose_tls`, logged once per reason.

    A refused handshake reaches gRPC callers only as UNAVAILABLE ("Socket closed"); a daemon that
    keeps reconnecting calls :meth:`explain` after such a failure, so an expired or foreign
    certificate shows in its log as a sentence (once, not on every retry).
    """

    _MAX_REMEMBERED = 64

    def __init__(self, files: CertFiles, logger: logging.Logger, what: str = "peer") -> None:
        self.files = files
        self._log = logger
        self._what = what
        self._seen: dict[str, None] = {}

    def note(self, address: str, reason: str) -> None:
        """Log ``reason`` (a WARNING) unless it was logged before."""
        if reason in self._seen:
            return
        if len(self._seen) >= self._MAX_REMEMBERED:
            self._seen.pop(next(iter(self._seen)))
        self._seen[reason] = None
        self._log.warning("TLS connection to %s %s refused: %s", self._what, address, reason)

    async def explain(self, address: str) -> str | None:
        """Diagnose ``address`` (a short TLS handshake, in a thread); the reason, logged once, or None."""
        from domainos.security import diagnose_tls

        try:
            reason = await asyncio.to_thread(diagnose_tls, address, self.files)
        except (OSError, ValueError) as exc:  # unreadable files mid-rotation, bad address
            reason = f"cannot check the TLS files: {exc}"
        if reason:
            self.note(address, reason)
        return reason


def peer_identity(context: Any) -> Identity | None:
    """The DomainOS identity of the caller's verified TLS certificate (None on an insecure port)."""
    props = context.auth_context()
    for uri in props.get("peer_spiffe_id", ()):
        text = uri.decode() if isinstance(uri, bytes) else str(uri)
        role, _, ident = text.removeprefix("spiffe://domainos/").partition("/")
        if text.startswith("spiffe://domainos/") and ident:
            return Identity(role, ident)
    return None


def require_peer(
    context: Any, role: str, ident: str | None = None, *, secure: bool = True
) -> Identity | None:
    """Check the caller's certificate names ``role`` (and ``ident`` when given).

    On a server that runs insecure (an explicit flag), there is no certificate to check.
    """
    if not secure:
        return None
    who = peer_identity(context)
    if who is None:
        raise Unauthenticated("no DomainOS identity in the client certificate")
    if who.role != role:
        raise PermissionDenied(
            f"a {who.role} certificate ({who}) cannot call this; it needs a {role} certificate"
        )
    if ident is not None and who.id != ident:
        raise PermissionDenied(
            f"certificate {who} cannot act as {role} {ident!r}: the certificate names {who.id!r}"
        )
    return who


def translate_rpc_error(
    exc: grpc.RpcError, target: str = "", peer: str = "the DomainOS master"
) -> DomainOSError:
    """The one client-side choke point from gRPC errors to DomainOS errors.

    ``peer`` names what was being called (the master for clients and sub-domains).
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        where = f" at {target}" if target else ""
        return Unavailable(f"cannot reach {peer}{where}: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"no answer from {target or 'the server'} in time")
    name = code.name if code is not None else "UNKNOWN"
    return error_from_status(name, details)


def _trailer(exc: grpc.RpcError, name: str) -> str:
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


def error_reason(exc: grpc.RpcError) -> str:
    """The server's :attr:`~domainos.errors.DomainOSError.reason` sent with a status ("" = none)."""
    return _trailer(exc, REASON_KEY)


#: Trailing metadata naming the leader's client address on a follower master's refusal.
LEADER_KEY = "domainos-leader"


def leader_hint(exc: grpc.RpcError) -> str:
    """The leader a follower master named when it refused a call ("" = none known)."""
    return _trailer(exc, LEADER_KEY)


#: Most bytes of a status message on the wire. gRPC percent-encodes it (a 4-byte character becomes
#: 12 bytes) and a client drops a response whose trailers pass 8 KiB (soft limit, at random) or
#: 16 KiB, reporting RESOURCE_EXHAUSTED "metadata size exceeds ..." instead of the real status.
MAX_STATUS_DETAILS_BYTES = 4096


def _wire_size(text: str) -> int:
    """Length of ``text`` as gRPC sends it in ``grpc-message`` (percent-encoded UTF-8)."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode("utf-8", "replace"))


def status_details(text: str) -> str:
    """``text`` clipped (start and end kept) to fit :data:`MAX_STATUS_DETAILS_BYTES` on the wire."""
    limit = len(text)
    clipped = text
    while _wire_size(clipped) > MAX_STATUS_DETAILS_BYTES and limit > 0:
        limit = limit * 3 // 4
        clipped = clip(text, limit, "cut to fit a gRPC status")
    return clipped


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], err: DomainOSError) -> NoReturn:
    """The one server-side choke point from DomainOS errors to gRPC status codes."""
    if err.reason:  # added to whatever trailing metadata the caller set
        context.set_trailing_metadata((*(context.trailing_metadata() or ()), (REASON_KEY, err.reason)))
    await context.abort(grpc.StatusCode[err.code], status_details(str(err)))
    raise AssertionError("unreachable")  # context.abort raises


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc_method(fn: F) -> F:
    """Wrap a unary servicer method: domain errors -> status codes; bugs -> INTERNAL, logged."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(self, request, context)
        except DomainOSError as err:
            await abort_with(context, err)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error in %s", fn.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}")

    return wrapper  # type: ignore[return-value]
