"""Admission under several counters at once, with a back-off after 429s.

A :class:`Limiter` holds the user's counters (the flags) and, through
:class:`~processor.limits.server.ServerLimits`, what the server says. It computes how
long admission must wait (the longest of its counters' waits, and any pause after a
429) with :meth:`Limiter.wait_time` and admits with :meth:`Limiter.try_acquire`, which
spends only when nothing needs waiting for. It never sleeps itself: the caller sleeps
exactly the wait returned (the engine, across several keys' limiters at once).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from typing import Any

from .._types import Clock
from ..stats import clamp_seconds
from .counter import Counter, Unit, flag_counters
from .server import ServerLimits

__all__ = ["Admits", "Backoff", "Limiter"]


class Backoff:
    """The slow-down after 429s, applied to a limiter's counters.

    A 429 despite our counters means the server sees less capacity than we were told
    (another client spends the same budget, or the flags are too high): the rates drop
    by ``decrease`` (to no less than ``min_scale`` x the limits), then recover linearly
    by ``recovery_per_s`` toward them. Budgets (``--rpd`` / ``--tpd``) are not rates and
    are left alone.
    """

    __slots__ = ("counters", "scale", "min_scale", "decrease", "recovery_per_s", "_scaled_at",
                 "_last_decrease")

    def __init__(self, counters: list[Counter]) -> None:
        self.counters = counters  # the limiter's own list: counters added later are included
        self.scale = 1.0
        self.min_scale = 0.05
        self.decrease = 0.9
        self.recovery_per_s = 0.01
        self._scaled_at = -math.inf
        self._last_decrease = -math.inf

    def refused(self, now: float, cooldown: float) -> None:
        """A 429 at ``now``: slow down, at most once per ``cooldown`` seconds.

        Requests already in flight when the first 429 came back would be refused too;
        counting each of their 429s would collapse the rate.
        """
        if self.counters and now - self._last_decrease >= cooldown:
            self._last_decrease = now
            self.recover(now)
            self._set(max(self.min_scale, self.scale * self.decrease), now)

    def recover(self, now: float) -> None:
        """Recover linearly toward the full rates (called before each wait is computed)."""
        if self.scale < 1.0:
            self._set(min(1.0, self.scale + (now - self._scaled_at) * self.recovery_per_s), now)

    def _set(self, scale: float, now: float) -> None:
        self.scale = scale
        self._scaled_at = now
        for c in self.counters:
            if c.refill:  # a budget is not a rate: back-off does not shrink it
                c.set_scale(scale, now)


class Admits:
    """What admission asks of a limiter besides its counters: a local one answers at
    once; a remote one (:class:`~processor.limits.redis.RedisLimiter`) must be awaited
    and can be unreachable."""

    __slots__ = ()

    #: admission asks a store elsewhere (:meth:`acquire` must be awaited; Redis).
    remote = False

    @property
    def unavailable(self) -> str | None:
        """Why admission could not be asked for too long (the run stops), else None."""
        return None

    @property
    def trouble(self) -> str | None:
        """What admission waits for besides the counters, for the display ("waiting for
        Redis ..."), else None."""
        return None

    def trouble_event(self) -> tuple[str, dict[str, Any]]:
        """What the run log records of :attr:`trouble`: a pause reason and details."""
        return "wait", {}

    def try_acquire(self, tokens: int) -> float:
        raise NotImplementedError

    async def acquire(self, tokens: int) -> float:
        """Spend now and return 0 if the counters allow, else return the wait."""
        return self.try_acquire(tokens)


class Limiter(Admits):
    """Admission under several counters at once.

    Besides the user's counters (flags), a limiter learns from the server:
    :meth:`sync` adopts lower limits from ``x-ratelimit-limit-*`` headers, learns the
    limits outright in ``auto`` mode, and mirrors the server's counters from
    ``x-ratelimit-remaining-*`` so that budget spent by other clients of the same key
    slows us down too. It never goes faster than the user's flags.

    Args:
        counters: the counters every request must pass.
        clock: monotonic time in seconds; defaults to the running loop's ``time``.
        auto_requests / auto_tokens: learn requests / tokens per minute from the server.
        sync_interval: least seconds between two mirror syncs (429s always sync).
        burst_seconds: the burst of a counter learned in ``auto`` mode.
    """

    __slots__ = ("counters", "_clock", "paused_until", "_requests", "_tokens", "backoff",
                 "server", "cum_requests", "cum_tokens", "_all", "burst_seconds")

    def __init__(
        self,
        counters: Iterable[Counter] = (),
        *,
        clock: Clock | None = None,
        auto_requests: bool = False,
        auto_tokens: bool = False,
        sync_interval: float = 0.2,
        burst_seconds: float = 1.0,
    ) -> None:
        self.counters = list(counters)
        self._clock = clock
        self.paused_until = -math.inf
        self.backoff = Backoff(self.counters)
        auto = {Unit.REQUESTS} if auto_requests else set()
        self.server = ServerLimits(auto | ({Unit.TOKENS} if auto_tokens else set()),
                                   sync_interval)
        #: totals spent so far, to tell what was spent after a given request.
        self.cum_requests = 0.0
        self.cum_tokens = 0.0
        self.burst_seconds = burst_seconds
        self._split()

    def _split(self) -> None:
        mirrors = [m.counter for m in self.server.mirrors.values()]
        self._all = self.counters + mirrors
        self._requests = [c for c in self._all if c.unit is Unit.REQUESTS]
        self._tokens = [c for c in self._all if c.unit is Unit.TOKENS]

    @classmethod
    def per_minute(
        cls,
        rpm: float | None,
        tpm: float | None,
        *,
        burst_seconds: float = 1.0,
        clock: Clock | None = None,
        auto_requests: bool = False,
        auto_tokens: bool = False,
        rpd: float | None = None,
        tpd: float | None = None,
    ) -> Limiter:
        """A limiter for the usual flags (None means no limit): see :func:`flag_counters`."""
        counters = flag_counters(rpm, tpm, rpd, tpd, burst_seconds=burst_seconds,
                                 now=clock() if clock else None)
        return cls(counters, clock=clock, auto_requests=auto_requests,
                   auto_tokens=auto_tokens, burst_seconds=burst_seconds)

    def add(self, counter: Counter) -> None:
        self.counters.append(counter)
        self._split()

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    # -- what the server says (kept in :attr:`server`) --------------------------------

    @property
    def learning(self) -> bool:
        """True while an ``auto`` limit has not been learned yet (admit cautiously)."""
        return self.server.learning

    def stop_learning(self) -> None:
        """The server sends no limit headers: give up on learning (run unlimited)."""
        self.server.auto.clear()

    @property
    def learned(self) -> dict[str, float]:
        """Limits learned from the server's headers, by counter name ("requests/min")."""
        return self.server.learned

    @property
    def ignored(self) -> dict[str, float]:
        """Stated limits that cannot be real, by counter name (:meth:`ServerLimits.plausible`)."""
        return self.server.ignored

    @property
    def smallest_tokens(self) -> float:
        """The smallest token cost admitted so far (inf before the first)."""
        return self.server.smallest_tokens

    # -- admission -------------------------------------------------------------------

    def too_large(self, tokens: int) -> Counter | None:
        """The user-given token counter that ``tokens`` can never fit in, if any.

        Only the flags (each counter's ``ceiling``) can make a request too large: a
        limit learned from headers may be wrong, and a request larger than a counter's
        burst still goes once the counter is full (then runs it into debt).
        """
        for c in self.counters:
            if c.unit is Unit.TOKENS and math.isfinite(c.ceiling) and tokens > c.ceiling:
                return c
        return None

    def wait_time(self, tokens: int, now: float) -> float:
        """Seconds until a request of ``tokens`` may go."""
        if self.backoff.scale < 1.0:
            self.backoff.recover(now)
        wait = self.paused_until - now
        for c in self._requests:
            wait = max(wait, c.wait_time(1, now))
        for c in self._tokens:
            wait = max(wait, c.wait_time(tokens, now))
        return wait

    def binding(self, tokens: int, now: float) -> Counter | None:
        """The counter that makes a request of ``tokens`` wait longest now, if any."""
        best: Counter | None = None
        longest = 0.0
        for c in self._all:
            w = c.wait_time(c.unit.amount(tokens), now)
            if w > longest:
                best, longest = c, w
        return best

    def spend(self, tokens: int, now: float) -> None:
        """Charge a request of ``tokens`` to every counter (admitted without waiting)."""
        self.server.admitted(tokens)
        self.cum_requests += 1
        self.cum_tokens += tokens
        for c in self._requests:
            c.spend(1, now)
        for c in self._tokens:
            c.spend(tokens, now)

    def try_acquire(self, tokens: int) -> float:
        """Spend now and return 0 if the counters allow, else return the wait (spend nothing).

        The one admission call: a caller sleeps the wait returned (or less, if something
        may change it) and asks again; a 429 meanwhile may have lengthened it.
        """
        if not self._all and self.paused_until == -math.inf:
            # No counter to charge (the hot path of an unlimited run): not even the clock.
            self.server.admitted(tokens)
            self.cum_requests += 1
            self.cum_tokens += tokens
            return 0.0
        now = self.now()
        wait = self.wait_time(tokens, now)
        if wait <= 0:
            self.spend(tokens, now)
            return 0.0
        return wait

    def refund(self, tokens: float) -> None:
        """Give back tokens charged but not used (for servers that count real usage)."""
        if tokens <= 0:
            return
        now = self.now()
        for c in self.counters:
            if c.unit is Unit.TOKENS:
                c.refund(tokens, now)

    # -- 429s: pause and back off ----------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold all admissions for ``seconds`` (a 429's Retry-After) and drop saved credit."""
        now = self.now()
        # Clamped: a server's 1e17 or NaN must neither overflow the clock nor vanish.
        self.paused_until = max(self.paused_until, now + clamp_seconds(seconds))
        for c in self.counters:
            if c.refill:  # saved-up credit, not a day's budget
                c.drain(now)

    def rate_limited(self, retry_after: float | None, cooldown: float = 1.0) -> None:
        """React to a 429: pause for the server's hint (1 s without one) and slow down
        (:class:`Backoff`, at most once per ``cooldown`` seconds)."""
        self.pause(retry_after if retry_after is not None else 1.0)
        self.backoff.refused(self.now(), cooldown)

    # -- learning from headers -------------------------------------------------------

    def observe(self, limit_requests: float | None, limit_tokens: float | None) -> None:
        """Adopt the server's per-minute limits where they are lower than ours.

        Never above the user's flags; in ``auto`` mode a missing per-minute counter is
        created (:meth:`ServerLimits.adopt`). A limit that cannot be real is noted in
        :attr:`ignored` and treated as absent.
        """
        self._adopt(self.server.stated({Unit.REQUESTS: limit_requests,
                                        Unit.TOKENS: limit_tokens}))

    def _adopt(self, said: dict[Unit, float]) -> None:
        if said:
            for counter in self.server.adopt(said, self.counters, self.now(),
                                             scale=self.backoff.scale,
                                             burst_seconds=self.burst_seconds):
                self.add(counter)

    def sync(
        self,
        limit_requests: float | None,
        remaining_requests: float | None,
        limit_tokens: float | None,
        remaining_tokens: float | None,
        *,
        sent_at: float,
        cum_requests: float,
        cum_tokens: float,
        force: bool = False,
        refused_tokens: int | None = None,
    ) -> None:
        """Learn from one answer's rate-limit headers.

        Args:
            limit_requests, remaining_requests, limit_tokens, remaining_tokens: the
                ``x-ratelimit-*`` values (None where absent).
            sent_at: when the answered request was admitted (this limiter's clock).
            cum_requests, cum_tokens: :attr:`cum_requests` / :attr:`cum_tokens` right
                after that request was admitted.
            force: sync even if the last sync was very recent (after a 429).
            refused_tokens: the request was refused (429) and so not counted by the
                server: its tokens (and its one request) are given back to the mirrors.
        """
        # A stated limit that cannot be real (below one request, or below a request the
        # server answered) is ignored, mirrors and all: adopting it would write requests
        # off or idle for hours. The engine warns once and watches for 429s.
        said = self.server.stated({Unit.REQUESTS: limit_requests, Unit.TOKENS: limit_tokens})
        self._adopt(said)
        remaining = {Unit.REQUESTS: remaining_requests, Unit.TOKENS: remaining_tokens}
        spent = {Unit.REQUESTS: self.cum_requests - cum_requests,
                 Unit.TOKENS: self.cum_tokens - cum_tokens}
        if self.server.sync_mirrors(said, remaining, spent, sent_at=sent_at, now=self.now(),
                                    force=force, refused_tokens=refused_tokens):
            self._split()
