"""Waiting for capacity: the engine's waits, timed by an injected clock and sleep, and
when a wait is too long to sit through (the run stops for a rerun instead).

Every wait of the engine goes through :class:`Waits`: an event (something changed, the
run stops) raced against the injected ``sleep``. With the defaults (the loop's clock,
:func:`asyncio.sleep`) that is real time; a test passes a fake clock and sleep and
drives the same code without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable

from ..stats import StopReason, clamp_seconds, clock_at, human_duration
from .keys import Lane
from .policy import LONG_PAUSE, Stop, rerun_later

__all__ = ["DAILY_PERIOD", "DAILY_STOP_WAIT", "Sleep", "Waits", "long_wait_stop"]

#: a counter whose window is at least this long is a daily budget: when it makes
#: admission wait longer than DAILY_STOP_WAIT seconds, the run stops (resumable).
DAILY_PERIOD = 3600.0
DAILY_STOP_WAIT = 60.0

Sleep = Callable[[float], Awaitable[object]]


class Waits:
    """The events the engine waits on, and the sleep that bounds each wait.

    Args:
        sleep: ``await sleep(seconds)``; default :func:`asyncio.sleep`.
    """

    def __init__(self, sleep: Sleep | None = None) -> None:
        self.sleep: Sleep = sleep or asyncio.sleep
        #: set whenever an attempt comes back or the run stops.
        self.changed = asyncio.Event()
        #: set once the run stops.
        self.stopped = asyncio.Event()
        #: set to abandon what is in flight.
        self.abort = asyncio.Event()

    async def first(self, events: list[asyncio.Event], timeout: float | None) -> None:
        """Return once one of ``events`` is set, or after ``timeout`` seconds (None: no
        limit; <= 0: at once)."""
        if any(event.is_set() for event in events) or (timeout is not None and timeout <= 0):
            return
        if timeout is None and len(events) == 1:
            await events[0].wait()
            return
        waiters: list[asyncio.Future[object]] = [
            asyncio.ensure_future(event.wait()) for event in events]
        if timeout is not None:
            waiters.append(asyncio.ensure_future(self.sleep(timeout)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            for waiter in waiters:
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    async def change(self, timeout: float | None) -> None:
        """Wait for the next change (an attempt back, a stop), at most ``timeout`` s."""
        self.changed.clear()
        await self.first([self.changed], timeout)

    async def unless_stopped(self, seconds: float) -> None:
        """Sleep ``seconds``; only a stop cuts it short."""
        await self.first([self.stopped], seconds)


def long_wait_stop(lane: Lane, tokens: int, wait: float, *, key: str = "",
                   at: Callable[[float], str] = clock_at) -> Stop | None:
    """The stop for a wait too long to sit through, or None to wait.

    A spent daily budget (``--rpd`` / ``--tpd``) never comes back within the run; a
    server that asks for a pause of over an hour (a per-day limit, say) is not worth
    waiting on either, nor is any other wait over :data:`~processor.run.policy.LONG_PAUSE`.

    Args:
        lane: the key that admits soonest; ``wait``: in how many seconds.
        key: the key's name for messages ("" for the only key).
    """
    if wait <= DAILY_STOP_WAIT:
        return None
    limiter = lane.limiter
    now = limiter.now()
    on_key = f" for key ${key}" if key else ""
    counter = limiter.binding(tokens, now)
    if counter is not None and counter.period >= DAILY_PERIOD:
        if math.isfinite(wait):
            resume: float | None = clamp_seconds(wait)
            when = f"the next request fits in {human_duration(wait)} (at {at(wait)})"
        else:
            resume, when = None, "it does not refill within a run"
        return Stop(StopReason.RERUN_LATER,
                    f"daily budget spent ({counter.name} {counter.limit:g}{on_key}): {when}; "
                    "rerun the same command when the day's limit has reset to resume", resume)
    pause = limiter.paused_until - now
    if pause > LONG_PAUSE:
        return rerun_later(pause, f"the server asked to pause for {human_duration(pause)}"
                                  f"{on_key}", at)
    if wait > LONG_PAUSE:
        what = f"{counter.name} {counter.limit:g}" if counter is not None else "the limits"
        return rerun_later(wait, f"the next request would wait {human_duration(wait)} "
                                 f"under {what}{on_key}", at)
    return None
