"""Run-wide request limits: requests per minute, tokens per minute, and a spending budget.

Why these hold for the whole run and not per Dask worker: every request of a run is issued
from one asyncio event loop in the process that runs the stage (the Dask workers only build
prompts, look up the cache and parse answers). One :class:`RateLimiter` and one :class:`Budget`
object therefore see every request, whatever the number of workers or partitions, and need no
cross-process coordination. A 429 from the server pauses every request of the run, not just
the one that got it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """A continuously refilling bucket: ``rate_per_minute`` units, bursts of one second's worth."""

    def __init__(self, rate_per_minute: float, clock: Callable[[], float]):
        self.rate_per_second = rate_per_minute / 60.0
        self.capacity = max(1.0, self.rate_per_second)
        self.level = self.capacity
        self._clock = clock
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate_per_second)
        self._updated = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` units are available (0 if they are now)."""
        self._refill()
        # A request larger than the burst may go once the bucket is full (and drives it negative).
        needed = min(amount, self.capacity)
        return 0.0 if self.level >= needed else (needed - self.level) / self.rate_per_second

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits for one event loop (``None``: no limit)."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self._clock = clock
        self._sleep = sleep
        self._requests = TokenBucket(requests_per_minute, clock) if requests_per_minute else None
        self._tokens = TokenBucket(tokens_per_minute, clock) if tokens_per_minute else None
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (a server's Retry-After applies to the whole run)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def acquire(self, tokens: int) -> None:
        """Wait until one more request of ``tokens`` tokens fits both limits, then count it."""
        # One waiter at a time keeps the order fair and the accounting exact.
        async with self._lock:
            while True:
                delay = max(0.0, self._paused_until - self._clock())
                if self._requests is not None:
                    delay = max(delay, self._requests.wait_time(1))
                if self._tokens is not None:
                    delay = max(delay, self._tokens.wait_time(tokens))
                if delay <= 0:
                    break
                await self._sleep(delay)
            if self._requests is not None:
                self._requests.take(1)
            if self._tokens is not None:
                self._tokens.take(tokens)


class Budget:
    """A spending cap in USD: each request reserves its worst-case cost before it is sent.

    The worst case (estimated input tokens plus the ``max_tokens`` cap on output) is reserved
    up front and replaced by the real cost when the answer arrives, so concurrent requests can
    never together spend more than the cap.
    """

    def __init__(self, max_usd: float | None):
        self.max_usd = max_usd
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.exhausted = False

    def reserve(self, usd: float) -> bool:
        """Reserve ``usd``; False (and the budget counts as exhausted) if it would exceed the cap."""
        if self.max_usd is not None and self.spent_usd + self.reserved_usd + usd > self.max_usd:
            self.exhausted = True
            return False
        self.reserved_usd += usd
        return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """Replace a reservation by what the request really cost (0 if it failed)."""
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += actual_usd
