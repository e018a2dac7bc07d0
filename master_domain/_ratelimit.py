"""Per-principal token buckets for ``DomainControl`` (pure; time from an injected clock).

Each principal (a token id, else the caller's certificate, else its address) gets a bucket of
``burst`` requests refilled at ``rate`` per second. The map is an LRU bounded to ``max_keys``
principals: memory stays bounded however many callers appear, and a principal pushed out simply
starts again with a full bucket.
"""

from __future__ import annotations

from collections import OrderedDict

from domainos.clock import Clock, SystemClock
from domainos.errors import ResourceExhausted

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
