"""The stream up to the master: ``SubDomainGateway.Connect``, opened and kept open by the sub-domain.

Each session sends ``Hello`` (identity, every task held, the summary) and waits for ``Welcome``; then
a writer drains one bounded outbound queue, a flusher batches task transitions into ``TaskUpdates``
(every 50 ms or 500 statuses, latest state per task), a timer sends ``SummaryReport`` when the
summary changed (at most every ``summary_interval_s``; unchanged, every
``SUMMARY_REFRESH_INTERVALS`` intervals), and the reader hands each ``MasterCommand`` to
the manager. A broken session is retried with backoff 0.2 s doubling to 5 s, with jitter; the next
``Hello`` carries the full task table, so nothing queued for a dead session needs to survive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import grpc.aio

from domainos.api.v1 import subdomain_pb2, subdomain_pb2_grpc
from domainos.errors import ConfigError, DomainOSError, Unavailable
from domainos.model import TaskRef, TaskStatus
from domainos.rpc import TLSFiles, TLSRefusals, create_channel, error_reason, leader_hint, translate_rpc_error

from ._registry import Summary

log = logging.getLogger(__name__)

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined,unused-ignore]

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
FLUSH_INTERVAL_S = 0.05
FLUSH_MAX_ITEMS = 500
#: An unchanged summary is still sent every this many intervals (10 s at the default 1 s): the
#: master counts a power charge as metered only once two summaries have followed it, and a quiet
#: sub-domain must not leave its charges counted twice (estimate and measured draw) forever.
SUMMARY_REFRESH_INTERVALS = 10
OUTBOUND_QUEUE_SIZE = 10_000
#: How long to wait for ``Welcome`` after ``Hello``.
WELCOME_TIMEOUT_S = 30.0


class UpstreamOwner(Protocol):
    """What the upstream needs from the manager."""

    def summary(self) -> Summary: ...

    def build_hello(self, summary: Summary) -> Any: ...

    async def handle_master_command(self, command: Any) -> None: ...

    def master_lost(self) -> None:
        """The session ended (after or before Welcome): drop what only lives with the stream."""


class Upstream:
    """One logical connection to the master, reconnected forever until cancelled."""

    def __init__(
        self,
        owner: UpstreamOwner,
        address: str,
        *,
        incarnation: str,
        summary_interval_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        tls: TLSFiles | None = None,
    ) -> None:
        self._owner = owner
        #: The master's replicas ("a,b,c" for an HA master); ``address`` is the one in use.
        self.addresses = [a.strip() for a in address.split(",") if a.strip()] or [address]
        self.address = self.addresses[0]
        #: Mutual TLS files (None: plaintext). Read again for every session, so a certificate
        #: re-issued in place is used from the next reconnect on, without a restart.
        self._tls = tls
        self._refusals = TLSRefusals(tls, log, "master") if tls is not None else None
        self._incarnation = incarnation
        self._summary_interval_s = summary_interval_s
        self._sleep = sleep
        self._jitter = jitter
        self._connected = False
        self._accepting = False
        self._pending: dict[TaskRef, TaskStatus] = {}
        self._flush = asyncio.Event()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(OUTBOUND_QUEUE_SIZE)
        self._task_seq = 0
        self._summary_seq = 0
        self._last_summary: Summary | None = None
        # PlaceTask commands handled on the current stream, and the count the last summary carried.
        self._placements_applied = 0
        self._placements_reported = 0
        #: Id of the master that welcomed the current session ("" when none).
        self.master_id = ""
        #: Sessions that reached Welcome.
        self.sessions = 0

    @property
    def connected(self) -> bool:
        """True between ``Welcome`` and the end of the session."""
        return self._connected

    # -- producers -------------------------------------------------------------------------------

    def forward(self, status: TaskStatus) -> None:
        """Queue a task transition for the next ``TaskUpdates`` (dropped when no session: Hello resyncs)."""
        if not self._accepting:
            return
        self._pending[status.ref] = status
        self._flush.set()

    def send_nowait(self, message: Any) -> bool:
        """Queue a ``SubDomainMessage`` without waiting; False when there is no session or the
        queue is full (the session is stalled; the next ``Hello`` resyncs)."""
        if not self._connected:
            return False
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("outbound queue to master %s is full; a message was dropped", self.address)
            return False
        return True

    async def send(self, message: Any) -> bool:
        """Queue a ``SubDomainMessage`` for the current session; False when there is none."""
        if not self._connected:
            return False
        await self._queue.put(message)
        return True

    # -- the loop --------------------------------------------------------------------------------

    def _delay(self, backoff: float) -> float:
        return backoff * (0.5 + self._jitter())  # 0.5x .. 1.5x

    async def run(self) -> None:
        """Connect, serve the session, back off, repeat -- until cancelled."""
        backoff = BACKOFF_MIN_S
        while True:
            welcomed_before = self.sessions
            try:
                await self._session()
                log.warning("master %s ended the stream", self.address)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                err = translate_rpc_error(exc, self.address)
                if self._follow_leader(exc, welcomed_before):
                    backoff = BACKOFF_MIN_S  # a follower named the leader (or we try the next replica)
                    await self._sleep(self._delay(BACKOFF_MIN_S / 4))
                    continue
                if (
                    self._refusals is not None
                    and exc.code() == grpc.StatusCode.UNAVAILABLE
                    and self.sessions == welcomed_before
                ):
                    # A refused TLS handshake only says "Socket closed": ask why (logged once).
                    reason = await self._refusals.explain(self.address)
                    if reason:
                        err = Unavailable(f"cannot reach the master at {self.address}: {reason}")
                log.warning("stream to master %s failed (%s): %s", self.address, exc.code().name, err)
            except ConfigError as err:  # our own certificate: missing, expired (mid-rotation?)
                if self._refusals is not None:
                    self._refusals.note(self.address, str(err))
                else:
                    log.warning("stream to master %s failed: %s", self.address, err)
            except DomainOSError as err:
                log.warning("stream to master %s failed: %s", self.address, err)
            except Exception:
                log.exception("stream to master %s failed", self.address)
            if self.sessions != welcomed_before:
                backoff = BACKOFF_MIN_S
            elif len(self.addresses) > 1:
                self._next_address()
            delay = self._delay(backoff)
            log.debug("reconnecting to master %s in %.2fs", self.address, delay)
            await self._sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _next_address(self) -> None:
        i = self.addresses.index(self.address) if self.address in self.addresses else -1
        self.address = self.addresses[(i + 1) % len(self.addresses)]

    def _follow_leader(self, exc: grpc.aio.AioRpcError, welcomed_before: int) -> bool:
        """A follower refused us: go to the leader it names, else to the next replica. True when
        the refusal was a follower's (reconnect at once, no backoff)."""
        if exc.code() != grpc.StatusCode.UNAVAILABLE or error_reason(exc) != "not-leader":
            return False
        hint = leader_hint(exc)
        if hint and hint != self.address:
            log.info("master %s is a follower; following the leader at %s", self.address, hint)
            if hint not in self.addresses:
                self.addresses.append(hint)
            self.address = hint
        else:
            log.info("master %s is a follower and knows no leader yet; trying the next replica", self.address)
            self._next_address()
        return True

    async def _session(self) -> None:
        channel = create_channel(self.address, self._tls)
        workers: list[asyncio.Task[None]] = []
        call: Any = None
        try:
            call = subdomain_pb2_grpc.SubDomainGatewayStub(channel).Connect()
            # From here to the write, nothing awaits: statuses produced after the Hello snapshot
            # land in _pending and go out after Welcome.
            self._queue = asyncio.Queue(OUTBOUND_QUEUE_SIZE)
            self._pending.clear()
            self._flush.clear()
            self._task_seq = self._summary_seq = 0
            self._placements_applied = self._placements_reported = 0
            summary = self._owner.summary()
            hello = self._owner.build_hello(summary)
            self._last_summary = summary
            self._accepting = True
            await call.write(subdomain_pb2.SubDomainMessage(hello=hello))
            try:
                first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT_S)
            except TimeoutError:
                raise Unavailable(
                    f"master {self.address} sent no Welcome within {WELCOME_TIMEOUT_S:.0f}s"
                ) from None
            if first is EOF:
                raise Unavailable(f"master {self.address} closed the stream before Welcome")
            kind = first.WhichOneof("body")
            if kind != "welcome":
                raise Unavailable(f"master {self.address} answered Hello with {kind!r}, expected Welcome")
            self.master_id = first.welcome.master_id
            interval = first.welcome.summary_interval_s or self._summary_interval_s
            interval = max(interval, self._summary_interval_s)
            self._connected = True
            self.sessions += 1
            log.info(
                "connected to master %s (%s); sent %d tasks in Hello",
                self.address,
                self.master_id or "?",
                len(hello.tasks),
            )
            if self._pending:
                self._flush.set()
            workers = [
                asyncio.create_task(self._writer(call), name="upstream-writer"),
                asyncio.create_task(self._flusher(), name="upstream-flusher"),
                asyncio.create_task(self._summaries(interval), name="upstream-summaries"),
                asyncio.create_task(self._reader(call), name="upstream-reader"),
            ]
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            self._connected = False
            self._accepting = False
            self._pending.clear()
            try:
                self._owner.master_lost()
            except Exception:
                log.exception("dropping state of the lost master session failed")
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if call is not None:
                call.cancel()
            await channel.close(grace=None)

    async def _reader(self, call: Any) -> None:
        while True:
            msg = await call.read()
            if msg is EOF:
                return
            await self._owner.handle_master_command(msg)
            kind = msg.WhichOneof("body")
            if kind == "place_task":
                self._placements_applied += 1
            elif kind == "place_tasks":
                self._placements_applied += len(msg.place_tasks.tasks)
            elif kind == "reserve":  # held (or refused) at once: the next summary reflects them
                self._placements_applied += len(msg.reserve.tasks)

    async def _writer(self, call: Any) -> None:
        while True:
            msg = await self._queue.get()
            await call.write(msg)

    async def _flusher(self) -> None:
        while True:
            await self._flush.wait()
            if len(self._pending) < FLUSH_MAX_ITEMS:
                await asyncio.sleep(FLUSH_INTERVAL_S)
            self._flush.clear()
            batch = list(self._pending.values())
            self._pending.clear()
            for i in range(0, len(batch), FLUSH_MAX_ITEMS):
                chunk = batch[i : i + FLUSH_MAX_ITEMS]
                self._task_seq += 1
                msg = subdomain_pb2.SubDomainMessage(
                    task_updates=subdomain_pb2.TaskUpdates(
                        incarnation=self._incarnation,
                        seq=self._task_seq,
                        tasks=[s.to_proto() for s in chunk],
                    )
                )
                await self._queue.put(msg)

    async def _summaries(self, interval: float) -> None:
        quiet = 0
        while True:
            await asyncio.sleep(interval)
            summary = self._owner.summary()
            applied = self._placements_applied
            if summary == self._last_summary and applied == self._placements_reported:
                quiet += 1
                if quiet < SUMMARY_REFRESH_INTERVALS:
                    continue
            quiet = 0
            self._last_summary = summary
            self._placements_reported = applied
            self._summary_seq += 1
            await self._queue.put(
                subdomain_pb2.SubDomainMessage(
                    summary=subdomain_pb2.SummaryReport(
                        incarnation=self._incarnation,
                        seq=self._summary_seq,
                        summary=summary.to_proto(),
                        placements_applied=applied,
                    )
                )
            )
