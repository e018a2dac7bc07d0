"""Token buckets per key (pure; time from an injected clock): client calls, stream messages, registrations.

Each key (a token id, a certificate, a node or sub-domain id) gets a bucket of
``burst`` requests refilled at ``rate`` per second. The map is an LRU bounded to ``max_keys``
principals: memory stays bounded however many callers appear, and a principal pushed out simply
starts again with a full bucket.
"""

from __future__ import annotations

from collections import OrderedDict

from domainos.clock import Clock, SystemClock
from domainos.errors import ConfigError, ResourceExhausted

DEFAULT_MAX_KEYS = 100_000


class RateLimiter:
    """``check(key)`` spends one request of ``key``'s bucket, or says how long to wait."""

    def __init__(
        self, rate: float, burst: int, *, clock: Clock | None = None, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if rate < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be >= 0 (0 = unlimited), burst and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock: Clock = clock or SystemClock()
        # key -> (tokens left, monotonic time of the last refill)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str) -> float:
        """0.0 when the request may go ahead (and is counted), else seconds until it could."""
        if not self.rate:
            return 0.0
        now = self._clock.monotonic()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)  # (re)inserted last: most recently used
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def admit(self, key: str) -> None:
        """Like :meth:`check`, raising ResourceExhausted when over the limit."""
        wait = self.check(key)
        if wait:
            raise ResourceExhausted(
                f"rate limit exceeded for {key}: {self.rate:g} requests/s (burst {self.burst}); "
                f"retry in {max(wait, 0.01):.2f} s"
            )


def check_rate(rate: float, burst: int, rate_field: str, burst_field: str) -> None:
    """Config validation shared by every limit: ``rate`` 0 (unlimited) .. 1e6 per second, ``burst`` >= 1."""
    if not 0 <= rate <= 1_000_000:
        raise ConfigError(f"must be between 0 (unlimited) and 1000000, got {rate}", field=rate_field)
    if not 1 <= burst <= 10_000_000:
        raise ConfigError(f"must be between 1 and 10000000, got {burst}", field=burst_field)


def stream_limit(limiter: RateLimiter, key: str, what: str) -> ResourceExhausted | None:
    """Count one stream message from ``key``; the error that ends its stream when it sent too many."""
    if not limiter.check(key):
        return None
    return ResourceExhausted(
        f"{what} sent more than {limiter.rate:g} messages/s (burst {limiter.burst}); "
        "its stream is closed: reconnect after a backoff and send less"
    )
