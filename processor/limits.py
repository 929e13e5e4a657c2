"""Capacity counters: requests and tokens per minute (or per day), refilled continuously.

A :class:`Capacity` is a token bucket holding *credit*. Credit grows at ``rate`` per
second up to ``capacity`` (a short burst, one second's worth by default) and each
admitted request spends from it. It starts empty, so a run never sends a whole
minute's quota in its first second: servers enforce their limits over sub-minute
windows too. A request larger than the bucket may still go once the bucket is full;
the credit then goes negative and later requests wait until the debt is repaid, so
the long-run rate never exceeds ``rate``.

A :class:`Limiter` holds several counters and computes how long admission must wait
(the longest of its counters' waits, and any cool-down after a 429). It sleeps exactly
that long; it never polls.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

from ._types import Clock, Sleep

__all__ = ["Capacity", "Limiter"]


class Capacity:
    """One continuously refilled counter.

    Args:
        name: what it counts, for messages ("requests/min", "tokens/min", ...).
        limit: units allowed per ``period`` seconds.
        period: the limit's window in seconds (60 for per-minute limits).
        burst_seconds: how many seconds of credit may build up while idle.
        now: the clock's current time; None to start the clock at first use.
        initial: starting credit, in units (0: start empty).
        unit_cost: True for counters charged one unit per request.
    """

    __slots__ = ("name", "limit", "period", "rate", "capacity", "level", "_last", "unit_cost",
                 "_burst", "scale", "ceiling")

    def __init__(
        self,
        name: str,
        limit: float,
        *,
        period: float = 60.0,
        burst_seconds: float = 1.0,
        now: float | None = None,
        initial: float = 0.0,
        unit_cost: bool = False,
    ) -> None:
        if not limit > 0 or not period > 0:
            raise ValueError(f"{name}: limit and period must be positive, got {limit}/{period}")
        self.name = name
        self.unit_cost = unit_cost
        self.period = period
        self._burst = burst_seconds
        self.limit = limit
        #: the most this counter may ever allow (the user's flag); server hints only lower it.
        self.ceiling = limit
        self.scale = 1.0
        self.rate = limit / period
        self.capacity = max(self.rate * burst_seconds, 1.0)
        self.level = min(initial, self.capacity)
        self._last: float | None = now

    def set_limit(self, limit: float, now: float) -> None:
        """Change the limit (e.g. learned from the server), keeping the current credit."""
        if not limit > 0:
            raise ValueError(f"{self.name}: limit must be positive, got {limit}")
        self._refill(now)
        self.limit = limit
        self._rescale()

    def set_scale(self, scale: float, now: float) -> None:
        """Run at ``scale`` x the limit (0 < scale <= 1): the limiter's back-off after 429s."""
        self._refill(now)
        self.scale = scale
        self._rescale()

    def _rescale(self) -> None:
        self.rate = self.limit * self.scale / self.period
        self.capacity = max(self.rate * self._burst, 1.0)
        self.level = min(self.level, self.capacity)

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
            return
        elapsed = now - self._last
        if elapsed > 0:
            self.level = min(self.capacity, self.level + elapsed * self.rate)
        self._last = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` may be spent (0 if it may be spent now)."""
        self._refill(now)
        # A request larger than the bucket waits for a full bucket, then runs into debt.
        need = min(amount, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def spend(self, amount: float, now: float) -> None:
        """Spend ``amount`` (may take the credit below zero)."""
        self._refill(now)
        self.level -= amount

    def drain(self, now: float) -> None:
        """Drop any saved-up credit (after a 429: the server saw less than we thought)."""
        self._refill(now)
        self.level = min(self.level, 0.0)

    def available(self, now: float) -> float:
        """Credit available now (negative while in debt)."""
        self._refill(now)
        return self.level


class Limiter:
    """Admission under several counters at once.

    Args:
        counters: the capacity counters every request must pass.
        clock: monotonic time in seconds; defaults to the running loop's ``time``.
        sleep: awaitable sleep; injectable for tests.
    """

    __slots__ = ("counters", "_clock", "_sleep", "paused_until", "_requests", "_tokens", "scale",
                 "min_scale", "decrease", "recovery_per_s", "_scaled_at", "_last_decrease")

    def __init__(
        self,
        counters: Iterable[Capacity] = (),
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.counters = list(counters)
        self._clock = clock
        self._sleep = sleep
        self.paused_until = -math.inf
        # Back-off after 429s: multiply the rates by ``decrease`` (at most once per
        # cool-down), then recover linearly by ``recovery_per_s`` toward the limits.
        self.scale = 1.0
        self.min_scale = 0.05
        self.decrease = 0.9
        self.recovery_per_s = 0.01
        self._scaled_at = -math.inf
        self._last_decrease = -math.inf
        self._split()

    def _split(self) -> None:
        self._requests = [c for c in self.counters if c.unit_cost]
        self._tokens = [c for c in self.counters if not c.unit_cost]

    @classmethod
    def per_minute(
        cls,
        rpm: float | None,
        tpm: float | None,
        *,
        burst_seconds: float = 1.0,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> Limiter:
        """A limiter for the usual RPM and TPM flags (None means no limit)."""
        now = clock() if clock else None
        counters = []
        if rpm:
            counters.append(
                Capacity("requests/min", rpm, burst_seconds=burst_seconds, now=now, unit_cost=True)
            )
        if tpm:
            counters.append(Capacity("tokens/min", tpm, burst_seconds=burst_seconds, now=now))
        return cls(counters, clock=clock, sleep=sleep)

    def add(self, counter: Capacity) -> None:
        self.counters.append(counter)
        self._split()

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def too_large(self, tokens: int) -> Capacity | None:
        """The token counter that ``tokens`` can never fit in (its whole window), if any."""
        for c in self._tokens:
            if tokens > c.limit:
                return c
        return None

    def _recover(self, now: float) -> None:
        if self.scale < 1.0:
            scale = min(1.0, self.scale + (now - self._scaled_at) * self.recovery_per_s)
            self._set_scale(scale, now)

    def _set_scale(self, scale: float, now: float) -> None:
        self.scale = scale
        self._scaled_at = now
        for c in self.counters:
            c.set_scale(scale, now)

    def wait_time(self, tokens: int, now: float) -> float:
        """Seconds until a request of ``tokens`` may go."""
        if self.scale < 1.0:
            self._recover(now)
        wait = self.paused_until - now
        for c in self._requests:
            wait = max(wait, c.wait_time(1, now))
        for c in self._tokens:
            wait = max(wait, c.wait_time(tokens, now))
        return wait

    def spend(self, tokens: int, now: float) -> None:
        for c in self._requests:
            c.spend(1, now)
        for c in self._tokens:
            c.spend(tokens, now)

    def try_acquire(self, tokens: int) -> float:
        """Spend now and return 0 if the counters allow, else return the wait (spend nothing)."""
        if not self.counters and self.paused_until == -math.inf:
            return 0.0
        now = self.now()
        wait = self.wait_time(tokens, now)
        if wait <= 0:
            self.spend(tokens, now)
            return 0.0
        return wait

    async def acquire(self, tokens: int) -> None:
        """Wait exactly as long as the counters need, then spend.

        Raises:
            ValueError: if ``tokens`` exceeds a token counter's whole limit.
        """
        too_large = self.too_large(tokens)
        if too_large is not None:
            raise ValueError(
                f"request needs {tokens} tokens, more than the whole {too_large.name} "
                f"limit of {too_large.limit:g}"
            )
        while (wait := self.try_acquire(tokens)) > 0:
            # Re-checked after the sleep: a 429 may have extended the pause meanwhile.
            await self._sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold all admissions for ``seconds`` (a 429's Retry-After) and drop saved credit."""
        now = self.now()
        self.paused_until = max(self.paused_until, now + seconds)
        for c in self.counters:
            c.drain(now)

    def observe(self, limit_requests: float | None, limit_tokens: float | None) -> None:
        """Adopt the server's per-minute limits where they are lower than ours.

        Never goes above the user's flags (each counter's ``ceiling``).
        """
        now: float | None = None
        for counters, server in ((self._requests, limit_requests), (self._tokens, limit_tokens)):
            if not server or server <= 0:
                continue
            for c in counters:
                if c.period == 60.0 and abs(c.limit - min(server, c.ceiling)) > 1e-9:
                    now = self.now() if now is None else now
                    c.set_limit(min(server, c.ceiling), now)

    def rate_limited(self, retry_after: float | None, cooldown: float = 1.0) -> None:
        """React to a 429: pause for the server's hint and slow down.

        A 429 despite our counters means the server sees less capacity than we were
        told (another client spends the same budget, or the flags are too high), so
        the rates drop by ``decrease``. Requests already in flight when the first 429
        came back would be refused too; counting each of their 429s would collapse the
        rate, so at most one decrease happens per ``cooldown`` seconds.
        """
        self.pause(retry_after if retry_after is not None else 1.0)
        now = self.now()
        if self.counters and now - self._last_decrease >= cooldown:
            self._last_decrease = now
            self._recover(now)
            self._set_scale(max(self.min_scale, self.scale * self.decrease), now)
