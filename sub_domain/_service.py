"""gRPC translation for agents: ``AgentGateway.Connect``, one long-lived bidi stream per node.

The servicer only moves messages: it reads the first ``Register`` and hands it to the manager,
then runs two loops per stream -- a reader that passes every ``AgentMessage`` to the manager, and
the handler itself, which writes the node's bounded command queue to the stream. Domain errors
end the stream with their status code through :func:`domainos.rpc.abort_with`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio

from domainos.api.v1 import agent_pb2_grpc
from domainos.errors import DomainOSError, Internal, InvalidArgument, ResourceExhausted
from domainos.ratelimit import RateLimiter, stream_limit
from domainos.rpc import abort_with, require_peer

log = logging.getLogger(__name__)

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined,unused-ignore]

#: Bound of each node's outbound command queue; a node that does not drain it is disconnected.
COMMAND_QUEUE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class _Close:
    error: DomainOSError | None


class AgentConn:
    """One agent stream: the node it registered as, and its bounded command queue."""

    def __init__(
        self, node_id: str, token: int, incarnation: str, peer: str, maxsize: int = COMMAND_QUEUE_SIZE
    ) -> None:
        self.node_id = node_id
        self.token = token
        self.incarnation = incarnation
        self.peer = peer
        self.last_seq = 0
        self.closed = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def send(self, command: Any) -> bool:
        """Queue an ``AgentCommand``; False when the stream is closed or its queue overflowed."""
        if self.closed:
            return False
        try:
            self._queue.put_nowait(command)
        except asyncio.QueueFull:
            log.warning(
                "node %s does not drain its commands (%d queued); closing its stream",
                self.node_id,
                self._queue.qsize(),
            )
            self.close(
                ResourceExhausted(
                    f"command queue of node {self.node_id} overflowed; reconnect and register again"
                )
            )
            return False
        return True

    def close(self, error: DomainOSError | None = None) -> None:
        """End the stream (with ``error`` as its status, or OK). Idempotent."""
        if self.closed:
            return
        self.closed = True
        while self._queue.full():  # make room for the sentinel; the stream is ending anyway
            self._queue.get_nowait()
        self._queue.put_nowait(_Close(error))

    async def next(self) -> Any:
        return await self._queue.get()


class AgentHandler(Protocol):
    """What the servicer needs from the manager."""

    async def agent_register(self, register: Any, peer: str, conn: AgentConn | None) -> AgentConn: ...

    async def agent_message(self, conn: AgentConn, message: Any) -> None: ...

    def agent_disconnected(self, conn: AgentConn) -> None: ...


class AgentGatewayService(agent_pb2_grpc.AgentGatewayServicer):  # type: ignore[misc]
    """The sub-domain side of ``agent.proto``."""

    def __init__(
        self,
        handler: AgentHandler,
        *,
        secure: bool = True,
        messages: RateLimiter | None = None,
        registrations: RateLimiter | None = None,
    ) -> None:
        self._handler = handler
        #: False only on a sub-domain that runs ``insecure: true`` (no certificates to check).
        self._secure = secure
        # Per node id: stream messages, and registrations (a reconnect storm must not cost a
        # registry update per attempt). Both maps are bounded LRUs.
        self._messages = messages if messages is not None else RateLimiter(0, 1)
        self._registrations = registrations if registrations is not None else RateLimiter(0, 1)

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        peer = context.peer()
        first = await context.read()
        if first is EOF:
            return
        if first.WhichOneof("body") != "register":
            await abort_with(
                context, InvalidArgument("the first message on AgentGateway.Connect must be a Register")
            )
        try:
            # Only an agent certificate naming this very node may register it.
            require_peer(context, "agent", first.register.inventory.node_id, secure=self._secure)
        except DomainOSError as err:
            log.warning("registration from %s refused: %s", peer, err)
            await abort_with(context, err)
        node_id = first.register.inventory.node_id
        wait = self._registrations.check(node_id)
        if wait:
            await abort_with(
                context,
                ResourceExhausted(
                    f"node {node_id} registers too often: at most {self._registrations.rate:g}/s "
                    f"(burst {self._registrations.burst}); retry in {max(wait, 0.01):.2f} s"
                ),
            )
        try:
            conn = await self._handler.agent_register(first.register, peer, None)
        except DomainOSError as err:
            log.info("registration from %s refused: %s", peer, err)
            await abort_with(context, err)
        except Exception:
            log.exception("registration from %s failed", peer)
            await abort_with(context, Internal("internal error while registering"))
        reader = asyncio.create_task(self._read(context, conn), name=f"agent-reader-{conn.node_id}")
        try:
            while True:
                item = await conn.next()
                if isinstance(item, _Close):
                    if item.error is not None:
                        await abort_with(context, item.error)
                    return
                await context.write(item)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._handler.agent_disconnected(conn)

    async def _read(self, context: grpc.aio.ServicerContext[Any, Any], conn: AgentConn) -> None:
        try:
            while True:
                msg = await context.read()
                if msg is EOF:
                    log.info("node %s closed its stream", conn.node_id)
                    conn.close()
                    return
                over = stream_limit(self._messages, conn.node_id, f"node {conn.node_id}")
                if over is not None:
                    raise over
                await self._handler.agent_message(conn, msg)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:  # the handler ended the stream (shutdown, dead node)
            conn.close()
        except DomainOSError as err:
            log.warning("closing the stream of node %s: %s", conn.node_id, err)
            conn.close(err)
        except grpc.RpcError as exc:
            log.info("stream of node %s broke: %s", conn.node_id, exc)
            conn.close()
        except Exception:
            log.exception("error handling a message from node %s", conn.node_id)
            conn.close(Internal(f"internal error handling a message from node {conn.node_id}"))
