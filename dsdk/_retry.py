"""Retry with backoff for calls that are safe to repeat (reads, and writes carrying a request id)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from domainos.errors import DomainOSError, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How often and how patiently to retry a call the master could not take (UNAVAILABLE).

    ``attempts`` counts every try, the first included; the pause before try ``n + 1`` is
    ``backoff * multiplier**(n - 1)``, capped at ``max_backoff``.
    """

    attempts: int = 3
    backoff: float = 0.25
    multiplier: float = 2.0
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def delays(self) -> Iterator[float]:
        """The pauses between tries (``attempts - 1`` of them)."""
        delay = self.backoff
        for _ in range(self.attempts - 1):
            yield min(delay, self.max_backoff)
            delay *= self.multiplier


NO_RETRY = Retry(attempts=1)


def call_with_retry(
    fn: Callable[[], T],
    policy: Retry,
    sleep: Callable[[float], None],
    *,
    what: str = "call",
    retry_on: tuple[type[DomainOSError], ...] = (Unavailable,),
) -> T:
    """Call ``fn`` until it succeeds, raises a non-retryable error, or the tries run out."""
    delays = policy.delays()
    while True:
        try:
            return fn()
        except retry_on as exc:
            delay = next(delays, None)
            if delay is None:
                raise
            log.info("%s failed (%s); retrying in %.2fs", what, exc, delay)
            sleep(delay)
