"""asyncio facade over a synchronous :class:`Store`.

Every call runs on the facade's own thread pool (4 workers), so the event
loop never blocks on the backend. Watches feed a bounded :class:`asyncio.Queue`
through ``loop.call_soon_threadsafe``; the store's threads never wait for the
consumer. When the consumer falls 10,000 events behind, the iterator raises
:class:`WatchOverflow` and the consumer must re-list and watch again from the
listed revision (the Kubernetes "resource version too old" lesson).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar

from domainos.errors import StoreError
from domainos.store._base import (
    Compare,
    KeyValue,
    Lease,
    Op,
    Store,
    TxnResult,
    Watch,
    WatchEvent,
)
from domainos.store._errors import StoreClosed, WatchOverflow

__all__ = ["AsyncStore", "AsyncWatch"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Default bound of a watch's event queue.
WATCH_QUEUE_SIZE = 10_000


class _Wake:
    """Queue sentinel: look at the watch's state."""


_WAKE = _Wake()


class AsyncStore:
    """Async methods mirroring :class:`Store`, run on a dedicated thread pool."""

    def __init__(self, store: Store, *, watch_queue_size: int = WATCH_QUEUE_SIZE) -> None:
        self._store = store
        self._watch_queue_size = watch_queue_size
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="async-store")
        self._closed = False

    @property
    def store(self) -> Store:
        """The wrapped synchronous store."""
        return self._store

    async def _run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self._closed:
            raise StoreClosed("async store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def get(self, key: str) -> KeyValue | None:
        """See :meth:`Store.get`."""
        return await self._run(self._store.get, key)

    async def range(self, prefix: str, *, limit: int = 0, start_after: str | None = None) -> list[KeyValue]:
        """See :meth:`Store.range`."""
        return await self._run(self._store.range, prefix, limit=limit, start_after=start_after)

    async def count(self, prefix: str) -> int:
        """See :meth:`Store.count`."""
        return await self._run(self._store.count, prefix)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """See :meth:`Store.put`."""
        return await self._run(self._store.put, key, value, lease=lease)

    async def delete(self, key: str) -> bool:
        """See :meth:`Store.delete`."""
        return await self._run(self._store.delete, key)

    async def delete_prefix(self, prefix: str) -> int:
        """See :meth:`Store.delete_prefix`."""
        return await self._run(self._store.delete_prefix, prefix)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """See :meth:`Store.txn`."""
        return await self._run(self._store.txn, compares, success, failure)

    async def grant_lease(self, ttl: int) -> Lease:
        """See :meth:`Store.grant_lease`.

        The returned :class:`Lease`'s methods block; use :meth:`refresh_lease`
        and :meth:`revoke_lease` from async code.
        """
        return await self._run(self._store.grant_lease, ttl)

    async def refresh_lease(self, lease: Lease) -> None:
        """Run :meth:`Lease.refresh` on the pool."""
        await self._run(lease.refresh)

    async def revoke_lease(self, lease: Lease) -> None:
        """Run :meth:`Lease.revoke` on the pool."""
        await self._run(lease.revoke)

    async def revision(self) -> int:
        """See :meth:`Store.revision`."""
        return await self._run(self._store.revision)

    async def compact(self, revision: int) -> None:
        """See :meth:`Store.compact`."""
        await self._run(self._store.compact, revision)

    def watch(self, prefix: str, start_revision: int | None = None) -> AsyncWatch:
        """Watch ``prefix``; use as ``async with`` / ``async for`` / ``await``.

        ``async for ev in astore.watch(p)`` starts the watch on first
        iteration; ``async with astore.watch(p) as events`` starts it on entry
        (so writes after entry are seen) and cancels it on exit.
        """
        return AsyncWatch(self, prefix, start_revision, self._watch_queue_size)

    async def close(self) -> None:
        """Close the wrapped store and the thread pool. Idempotent."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._store.close)
        self._closed = True
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncWatch:
    """An async iterator of :class:`WatchEvent` (also an async context manager).

    Raises :class:`WatchOverflow` once more than the queue bound of events
    are pending, and the watch's error (e.g. :class:`Compacted`,
    :class:`StoreClosed`) after delivering the events queued before it.
    """

    def __init__(self, owner: AsyncStore, prefix: str, start_revision: int | None, maxsize: int) -> None:
        self._owner = owner
        self._prefix = prefix
        self._start_revision = start_revision
        self._maxsize = maxsize
        self._queue: asyncio.Queue[WatchEvent | _Wake] | None = None
        self._watch: Watch | None = None
        self._start_lock = asyncio.Lock()
        self._error: StoreError | None = None
        self._overflowed = False
        self._closed = False

    @property
    def overflowed(self) -> bool:
        """True once events were dropped (the next iteration raises)."""
        return self._overflowed

    async def start(self) -> Self:
        """Register the watch with the store (idempotent)."""
        async with self._start_lock:
            if self._queue is not None:
                return self
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[WatchEvent | _Wake] = asyncio.Queue(self._maxsize)

            def post(fn: Callable[..., None], arg: Any) -> None:
                with contextlib.suppress(RuntimeError):  # loop closed: nobody listens
                    loop.call_soon_threadsafe(fn, arg)

            def on_event(event: WatchEvent) -> None:
                post(self._push, event)

            def on_error(error: StoreError) -> None:
                post(self._fail, error)

            self._queue = queue
            self._watch = await self._owner._run(
                self._owner.store.watch_prefix,
                self._prefix,
                on_event,
                start_revision=self._start_revision,
                on_error=on_error,
            )
            return self

    def _push(self, event: WatchEvent) -> None:
        if self._queue is None or self._closed or self._overflowed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._overflowed = True
            logger.warning(
                "watch on %r overflowed (%s events pending); the consumer must re-list",
                self._prefix,
                self._maxsize,
            )
            self._cancel_in_background()

    def _fail(self, error: StoreError) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._queue is not None:
            # A full queue means the consumer is not waiting; it checks the state next time.
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_WAKE)

    def _cancel_in_background(self) -> None:
        watch = self._watch
        if watch is None:
            return
        loop = asyncio.get_running_loop()
        try:
            loop.run_in_executor(self._owner._executor, watch.cancel)
        except RuntimeError:  # executor shut down: the store is closed anyway
            watch.cancel()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchEvent:
        await self.start()
        assert self._queue is not None
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._overflowed:
                raise WatchOverflow(
                    f"watch on {self._prefix!r} fell more than {self._maxsize} events "
                    "behind; re-list and watch again"
                )
            if self._error is not None and self._queue.empty():
                raise self._error
            item = await self._queue.get()
            if not isinstance(item, _Wake):
                return item

    async def aclose(self) -> None:
        """Cancel the watch; iteration then stops. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                await self._owner._run(watch.cancel)
            except StoreClosed:
                watch.cancel()

    def __await__(self) -> Generator[Any, None, Self]:
        return self.start().__await__()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
