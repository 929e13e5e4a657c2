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

from .._types import Clock, Sleep
from ..stats import clamp_seconds

__all__ = ["DAY", "Capacity", "Limiter"]

DAY = 86_400.0


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
        refill: False for a budget (``--rpd`` / ``--tpd``): it starts full, is only spent,
            and once short the wait is infinite.
    """

    __slots__ = ("name", "limit", "period", "rate", "capacity", "level", "_last", "unit_cost",
                 "_burst", "scale", "ceiling", "refill")

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
        refill: bool = True,
    ) -> None:
        if not limit > 0 or not period > 0:
            raise ValueError(f"{name}: limit and period must be positive, got {limit}/{period}")
        self.name = name
        self.unit_cost = unit_cost
        self.refill = refill
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
        if self._last is None or not self.refill:
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
        # A shortfall within float rounding counts as none: waiting 1e-17 s on a clock
        # that cannot advance that little would never end.
        if self.level >= need - 1e-9:
            return 0.0
        if not self.refill:
            return math.inf
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


class _Mirror:
    """Our model of one of the server's own buckets, kept in step with its headers.

    OpenAI-style servers report ``x-ratelimit-remaining-*`` with every answer: what was
    left right after that request was counted. From that, the time the request was
    sent and what we have spent since, the server's level now is
    ``remaining + refill since sending - our spending since``. Between two syncs the
    mirror refills at the server's rate less what *other* clients of the same key
    spend; that foreign rate is learned from how far each prediction missed.
    """

    __slots__ = ("bucket", "foreign", "_synced_at")

    def __init__(self, name: str, limit: float, level: float, now: float) -> None:
        self.bucket = Capacity(name, limit, burst_seconds=60.0, now=now, initial=limit,
                               unit_cost=name.startswith("requests"))
        self.bucket.level = min(level, limit)
        self.foreign = 0.0
        self._synced_at = now

    def sync(self, limit: float, level: float, now: float, min_interval: float,
             force: bool = False) -> None:
        bucket = self.bucket
        dt = now - self._synced_at
        if dt < min_interval and not force:
            return
        if abs(limit - bucket.limit) > 1e-9:
            bucket.set_limit(limit, now)
            bucket.capacity = limit  # a full minute, like the server's own bucket
        predicted = bucket.available(now)
        full_rate = bucket.limit / bucket.period
        # Integral control: each missed prediction nudges the foreign-spend estimate. The
        # miss is spread over at least ``min_interval``: a burst of forced syncs (429s)
        # milliseconds apart must not blow a small miss up into a huge rate.
        error = (predicted - level) / max(dt, min_interval)
        self.foreign = min(0.95 * full_rate, max(0.0, self.foreign + 0.5 * error))
        bucket.set_scale(max(0.05, 1.0 - self.foreign / full_rate), now)
        self._synced_at = now
        bucket.level = min(level, bucket.capacity)


class Limiter:
    """Admission under several counters at once.

    Besides the user's counters (flags), a limiter may learn from the server:
    :meth:`sync` adopts lower limits from ``x-ratelimit-limit-*`` headers, learns the
    limits outright in ``auto`` mode, and mirrors the server's buckets from
    ``x-ratelimit-remaining-*`` so that budget spent by other clients of the same key
    slows us down too. It never goes faster than the user's flags.

    Args:
        counters: the capacity counters every request must pass.
        clock: monotonic time in seconds; defaults to the running loop's ``time``.
        sleep: awaitable sleep; injectable for tests.
        auto_requests / auto_tokens: learn requests / tokens per minute from the server.
        sync_interval: least seconds between two mirror syncs (429s always sync).
    """

    __slots__ = ("counters", "_clock", "_sleep", "paused_until", "_requests", "_tokens", "scale",
                 "min_scale", "decrease", "recovery_per_s", "_scaled_at", "_last_decrease",
                 "auto_requests", "auto_tokens", "learned", "cum_requests", "cum_tokens",
                 "_mirrors", "sync_interval", "_all", "burst_seconds", "smallest_tokens",
                 "ignored")

    def __init__(
        self,
        counters: Iterable[Capacity] = (),
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        auto_requests: bool = False,
        auto_tokens: bool = False,
        sync_interval: float = 0.2,
        burst_seconds: float = 1.0,
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
        self.auto_requests = auto_requests
        self.auto_tokens = auto_tokens
        #: limits learned from the server's headers, by counter name.
        self.learned: dict[str, float] = {}
        #: totals spent so far, to tell what was spent after a given request.
        self.cum_requests = 0.0
        self.cum_tokens = 0.0
        self._mirrors: dict[str, _Mirror] = {}
        #: the smallest token cost admitted so far (a stated token limit below it cannot be
        #: real: the server answered that request).
        self.smallest_tokens = math.inf
        #: limits the server stated that cannot be real, by counter name (the latest
        #: value said); they are ignored until it states a plausible one again.
        self.ignored: dict[str, float] = {}
        self.sync_interval = sync_interval
        self.burst_seconds = burst_seconds
        self._split()

    def _split(self) -> None:
        mirrors = [m.bucket for m in self._mirrors.values()] if hasattr(self, "_mirrors") else []
        self._all = self.counters + mirrors
        self._requests = [c for c in self._all if c.unit_cost]
        self._tokens = [c for c in self._all if not c.unit_cost]

    @classmethod
    def per_minute(
        cls,
        rpm: float | None,
        tpm: float | None,
        *,
        burst_seconds: float = 1.0,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        auto_requests: bool = False,
        auto_tokens: bool = False,
        rpd: float | None = None,
        tpd: float | None = None,
    ) -> Limiter:
        """A limiter for the usual flags (None means no limit).

        Daily counters (``rpd``, ``tpd``) are budgets for the run: they start full, are
        spent at no more than the per-minute rates, and never refill within the run
        (the server's day does not restart when we do; rerun when it has).
        """
        now = clock() if clock else None
        counters = []
        if rpm:
            counters.append(
                Capacity("requests/min", rpm, burst_seconds=burst_seconds, now=now, unit_cost=True)
            )
        if tpm:
            counters.append(Capacity("tokens/min", tpm, burst_seconds=burst_seconds, now=now))
        if rpd:
            counters.append(Capacity("requests/day", rpd, period=DAY, burst_seconds=DAY, now=now,
                                     initial=rpd, unit_cost=True, refill=False))
        if tpd:
            counters.append(Capacity("tokens/day", tpd, period=DAY, burst_seconds=DAY, now=now,
                                     initial=tpd, refill=False))
        return cls(counters, clock=clock, sleep=sleep, auto_requests=auto_requests,
                   auto_tokens=auto_tokens, burst_seconds=burst_seconds)

    def add(self, counter: Capacity) -> None:
        self.counters.append(counter)
        self._split()

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    @property
    def learning(self) -> bool:
        """True while an ``auto`` limit has not been learned yet (admit cautiously)."""
        # A kind whose stated limit is ignored is not waited for: it runs without one.
        learned, ignored = self.learned, self.ignored
        return (self.auto_requests and "requests/min" not in learned
                and "requests/min" not in ignored) or (
            self.auto_tokens and "tokens/min" not in learned and "tokens/min" not in ignored)

    def stop_learning(self) -> None:
        """The server sends no limit headers: give up on learning (run unlimited)."""
        self.auto_requests = self.auto_tokens = False

    def too_large(self, tokens: int) -> Capacity | None:
        """The user-given token counter that ``tokens`` can never fit in, if any.

        Only the flags (each counter's ``ceiling``) can make a request too large: a
        limit learned from headers may be wrong, and a request larger than a counter's
        burst still goes once the counter is full (then runs it into debt).
        """
        for c in self.counters:
            if not c.unit_cost and math.isfinite(c.ceiling) and tokens > c.ceiling:
                return c
        return None

    def plausible(self, kind: str, limit: float) -> bool:
        """Whether a stated per-minute ``limit`` of ``kind`` can be real.

        A requests limit below one request, or a tokens limit below the smallest
        request already admitted (which the server then answered), cannot be.
        """
        if kind == "requests/min":
            return limit >= 1.0
        smallest = self.smallest_tokens  # inf until a request was admitted
        return limit >= 1.0 and (math.isinf(smallest) or limit >= smallest)

    def _screen(self, kind: str, limit: float | None) -> float | None:
        """``limit`` if plausible (noting or clearing :attr:`ignored`), else None."""
        if limit is None or not limit > 0 or not math.isfinite(limit):
            return None
        if self.plausible(kind, limit):
            self.ignored.pop(kind, None)
            return limit
        self.ignored[kind] = limit
        return None

    def _recover(self, now: float) -> None:
        if self.scale < 1.0:
            scale = min(1.0, self.scale + (now - self._scaled_at) * self.recovery_per_s)
            self._set_scale(scale, now)

    def _set_scale(self, scale: float, now: float) -> None:
        self.scale = scale
        self._scaled_at = now
        for c in self.counters:
            if c.refill:  # a budget is not a rate: back-off does not shrink it
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

    def binding(self, tokens: int, now: float) -> Capacity | None:
        """The counter that makes a request of ``tokens`` wait longest now, if any."""
        best: Capacity | None = None
        longest = 0.0
        for c in self._all:
            w = c.wait_time(1 if c.unit_cost else tokens, now)
            if w > longest:
                best, longest = c, w
        return best

    def spend(self, tokens: int, now: float) -> None:
        if tokens < self.smallest_tokens:
            self.smallest_tokens = tokens
        self.cum_requests += 1
        self.cum_tokens += tokens
        for c in self._requests:
            c.spend(1, now)
        for c in self._tokens:
            c.spend(tokens, now)

    def refund(self, tokens: float) -> None:
        """Give back tokens charged but not used (for servers that count real usage)."""
        if tokens <= 0:
            return
        now = self.now()
        for c in self.counters:
            if not c.unit_cost:
                c.spend(-tokens, now)
                c.level = min(c.level, c.capacity)

    def try_acquire(self, tokens: int) -> float:
        """Spend now and return 0 if the counters allow, else return the wait (spend nothing)."""
        if not self._all and self.paused_until == -math.inf:
            if tokens < self.smallest_tokens:
                self.smallest_tokens = tokens
            self.cum_requests += 1
            self.cum_tokens += tokens
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
        # Clamped: a server's 1e17 or NaN must neither overflow the clock nor vanish.
        self.paused_until = max(self.paused_until, now + clamp_seconds(seconds))
        for c in self.counters:
            if c.refill:  # saved-up credit, not a day's budget
                c.drain(now)

    def observe(self, limit_requests: float | None, limit_tokens: float | None) -> None:
        """Adopt the server's per-minute limits where they are lower than ours.

        Never goes above the user's flags (each counter's ``ceiling``). In ``auto``
        mode a missing per-minute counter is created from the server's limit. A limit
        that cannot be real (:meth:`plausible`) is noted in :attr:`ignored` and treated
        as absent.
        """
        now: float | None = None
        limit_requests = self._screen("requests/min", limit_requests)
        limit_tokens = self._screen("tokens/min", limit_tokens)
        if limit_requests or limit_tokens:
            # The server sends limit headers: a kind it leaves out has nothing to learn.
            if not limit_requests and "requests/min" not in self.ignored:
                self.auto_requests = False
            if not limit_tokens and "tokens/min" not in self.ignored:
                self.auto_tokens = False
        for kind, server in (("requests/min", limit_requests), ("tokens/min", limit_tokens)):
            if not server or server <= 0 or not math.isfinite(server):
                continue
            auto = self.auto_requests if kind == "requests/min" else self.auto_tokens
            counter = next((c for c in self.counters if c.name == kind), None)
            now = self.now() if now is None else now
            if counter is None:
                if auto:
                    counter = Capacity(kind, server, burst_seconds=self.burst_seconds, now=now,
                                       unit_cost=kind == "requests/min")
                    counter.ceiling = math.inf
                    counter.set_scale(self.scale, now)
                    self.add(counter)
                    self.learned[kind] = server
                continue
            if abs(counter.limit - min(server, counter.ceiling)) > 1e-9:
                counter.set_limit(min(server, counter.ceiling), now)
                if auto:
                    self.learned[kind] = server

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
        limit_requests = self._screen("requests/min", limit_requests)
        limit_tokens = self._screen("tokens/min", limit_tokens)
        self.observe(limit_requests, limit_tokens)
        now = self.now()
        changed = False
        for kind, limit, remaining, spent in (
            ("requests/min", limit_requests, remaining_requests, self.cum_requests - cum_requests),
            ("tokens/min", limit_tokens, remaining_tokens, self.cum_tokens - cum_tokens),
        ):
            if not limit or remaining is None:
                continue
            level = remaining + max(0.0, now - sent_at) * limit / 60.0 - spent
            mirror = self._mirrors.get(kind)
            if mirror is not None and refused_tokens is not None:
                amount = 1.0 if kind == "requests/min" else float(refused_tokens)
                mirror.bucket.spend(-amount, now)
            if mirror is None:
                self._mirrors[kind] = _Mirror(f"{kind} (server)", limit, level, now)
                changed = True
            else:
                mirror.sync(limit, level, now, self.sync_interval, force)
        if changed:
            self._split()

    @property
    def foreign_rates(self) -> dict[str, float]:
        """Per-minute rates other clients of the key seem to spend, by counter."""
        return {k: m.foreign * 60.0 for k, m in self._mirrors.items()}

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
