"""Per-watch delivery thread shared by both backends.

A backend's producer (the SQLite poller, an etcd watch stream) pushes events
into an :class:`EventDelivery`; a dedicated thread calls the user's callback
in order, so a slow callback only delays its own watch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

from domainos.errors import StoreError
from domainos.store._base import Watch, WatchCallback, WatchErrorCallback, WatchEvent

logger = logging.getLogger(__name__)


class _Stop:
    """Queue sentinel: the watch was cancelled."""


_STOP = _Stop()


class EventDelivery(Watch):
    """A :class:`Watch` whose events are delivered by its own thread."""

    def __init__(
        self,
        callback: WatchCallback,
        *,
        on_error: WatchErrorCallback | None = None,
        on_cancel: Callable[[], None] | None = None,
        name: str = "store-watch",
    ) -> None:
        self._callback = callback
        self._on_error = on_error
        self._on_cancel = on_cancel
        self._queue: queue.SimpleQueue[WatchEvent | StoreError | _Stop] = queue.SimpleQueue()
        # Held while a callback runs, so cancel() can wait for it to finish.
        self._running = threading.Lock()
        self._state_lock = threading.Lock()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the delivery thread."""
        self._thread.start()

    @property
    def cancelled(self) -> bool:
        """Whether the watch was cancelled or failed."""
        return self._cancelled

    def push(self, events: Iterable[WatchEvent]) -> None:
        """Queue events for delivery (ignored once cancelled)."""
        if self._cancelled:
            return
        for event in events:
            self._queue.put(event)

    def fail(self, error: StoreError) -> None:
        """End the watch with ``error`` after the events already queued."""
        if not self._cancelled:
            self._queue.put(error)

    def cancel(self) -> None:
        """Stop delivery; idempotent. See :meth:`Watch.cancel`."""
        if not self._mark_cancelled():
            return
        self._queue.put(_STOP)
        if self._on_cancel is not None:
            try:
                self._on_cancel()
            except StoreError as exc:
                logger.debug("ignoring error while cancelling a watch: %s", exc)
        if threading.current_thread() is not self._thread:
            with self._running:
                pass

    def _mark_cancelled(self) -> bool:
        with self._state_lock:
            if self._cancelled:
                return False
            self._cancelled = True
            return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                return
            with self._running:
                if self._cancelled:
                    return
                if isinstance(item, StoreError):
                    self._finish_with_error(item)
                    return
                try:
                    self._callback(item)
                except Exception:
                    logger.exception("watch callback failed for %s", item.key)

    def _finish_with_error(self, error: StoreError) -> None:
        if not self._mark_cancelled():
            return
        logger.debug("watch ended: %s", error)
        if self._on_cancel is not None:
            try:
                self._on_cancel()
            except StoreError as exc:
                logger.debug("ignoring error while cancelling a watch: %s", exc)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception("watch error callback failed")
