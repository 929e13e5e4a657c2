"""Counters: requests or tokens per minute (or per day), refilled continuously.

A :class:`Counter` holds *credit*. Credit grows at ``rate`` per second up to ``size``
(a short burst, one second's worth by default) and each admitted request spends from
it. It starts empty, so a run never sends a whole minute's quota in its first second:
servers enforce their limits over sub-minute windows too. A request larger than the
counter may still go once the counter is full; the credit then goes negative and later
requests wait until the debt is repaid, so the long-run rate never exceeds ``rate``.

What a counter counts is its :class:`Unit`, and its window is its ``period``; its name
("tokens/min", "requests/day") is derived from the two, for messages only.
"""

from __future__ import annotations

import math
from enum import Enum

__all__ = ["DAY", "MINUTE", "Counter", "Unit", "counter_name", "flag_counters"]

MINUTE = 60.0
DAY = 86_400.0

_WINDOWS = {MINUTE: "min", DAY: "day"}


class Unit(Enum):
    """What a counter counts: whole requests, or the tokens each request costs."""

    REQUESTS = "requests"
    TOKENS = "tokens"

    def amount(self, tokens: float) -> float:
        """What one request of ``tokens`` spends from a counter of this unit."""
        return 1 if self is Unit.REQUESTS else tokens

    @property
    def per_minute(self) -> str:
        """The name of this unit's per-minute counter ("requests/min"), the one servers state."""
        return counter_name(self, MINUTE)


def counter_name(unit: Unit, period: float, *, server: bool = False) -> str:
    """``requests/min``, ``tokens/day``, ``tokens/30s``; `` (server)`` for a server's counter."""
    window = _WINDOWS.get(period) or f"{period:g}s"
    return f"{unit.value}/{window}" + (" (server)" if server else "")


class Counter:
    """One continuously refilled counter.

    Args:
        unit: what it counts (:attr:`Unit.REQUESTS` are charged one per request).
        limit: units allowed per ``period`` seconds.
        period: the limit's window in seconds (:data:`MINUTE` for per-minute limits).
        burst_seconds: how many seconds of credit may build up while idle.
        now: the clock's current time; None to start the clock at first use.
        initial: starting credit, in units (0: start empty).
        refill: False for a budget (``--rpd`` / ``--tpd``): it starts full, is only spent,
            and once short the wait is infinite.
        server: our mirror of one of the server's own counters (only its name shows it).
    """

    __slots__ = ("unit", "name", "limit", "period", "rate", "size", "level", "_last",
                 "_burst", "scale", "ceiling", "refill")

    def __init__(
        self,
        unit: Unit,
        limit: float,
        *,
        period: float = MINUTE,
        burst_seconds: float = 1.0,
        now: float | None = None,
        initial: float = 0.0,
        refill: bool = True,
        server: bool = False,
    ) -> None:
        if not isinstance(unit, Unit):  # the old Capacity("requests/min", ...) signature
            raise TypeError(f"a counter's unit is a Unit, not {unit!r}")
        self.unit = unit
        self.name = counter_name(unit, period, server=server)
        if not limit > 0 or not period > 0:
            raise ValueError(f"{self.name}: limit and period must be positive, "
                             f"got {limit}/{period}")
        self.refill = refill
        self.period = period
        self._burst = burst_seconds
        self.limit = limit
        #: the most this counter may ever allow (the user's flag); server hints only lower it.
        self.ceiling = limit
        self.scale = 1.0
        self.rate = limit / period
        #: the most credit it holds (``burst_seconds`` of the rate, at least one unit).
        self.size = max(self.rate * burst_seconds, 1.0)
        self.level = min(initial, self.size)
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

    def set_level(self, level: float, now: float) -> None:
        """Set the credit to ``level`` (at most :attr:`size`; a debt is kept as said)."""
        self._refill(now)
        self.level = min(level, self.size)

    def _rescale(self) -> None:
        self.rate = self.limit * self.scale / self.period
        self.size = max(self.rate * self._burst, 1.0)
        self.level = min(self.level, self.size)

    def _refill(self, now: float) -> None:
        if self._last is None or not self.refill:
            self._last = now
            return
        elapsed = now - self._last
        if elapsed > 0:
            self.level = min(self.size, self.level + elapsed * self.rate)
        self._last = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` may be spent (0 if it may be spent now)."""
        self._refill(now)
        # A request larger than the counter waits for a full counter, then runs into debt.
        need = min(amount, self.size)
        # A shortfall within float rounding counts as none: waiting 1e-17 s on a clock
        # that cannot advance that little would never end.
        if self.level >= need - 1e-9:
            return 0.0
        if not self.refill:
            return math.inf
        return (need - self.level) / self.rate

    def spend(self, amount: float, now: float) -> None:
        """Spend ``amount`` (may take the credit below zero; negative gives back, uncapped)."""
        self._refill(now)
        self.level -= amount

    def refund(self, amount: float, now: float) -> None:
        """Give back ``amount`` charged but not used, up to :attr:`size`."""
        self._refill(now)
        self.level = min(self.level + amount, self.size)

    def drain(self, now: float) -> None:
        """Drop any saved-up credit (after a 429: the server saw less than we thought)."""
        self._refill(now)
        self.level = min(self.level, 0.0)

    def available(self, now: float) -> float:
        """Credit available now (negative while in debt)."""
        self._refill(now)
        return self.level


def flag_counters(
    rpm: float | None,
    tpm: float | None,
    rpd: float | None = None,
    tpd: float | None = None,
    *,
    burst_seconds: float = 1.0,
    now: float | None = None,
) -> list[Counter]:
    """The counters for the usual flags (None means no limit), per minute then per day.

    Daily counters (``rpd``, ``tpd``) are budgets for the run: they start full, are
    spent at no more than the per-minute rates, and never refill within the run
    (the server's day does not restart when we do; rerun when it has).
    """
    counters = []
    for unit, limit in ((Unit.REQUESTS, rpm), (Unit.TOKENS, tpm)):
        if limit:
            counters.append(Counter(unit, limit, burst_seconds=burst_seconds, now=now))
    for unit, budget in ((Unit.REQUESTS, rpd), (Unit.TOKENS, tpd)):
        if budget:
            counters.append(Counter(unit, budget, period=DAY, burst_seconds=DAY, now=now,
                                    initial=budget, refill=False))
    return counters
