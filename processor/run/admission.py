"""Admission: which request goes next, and when; the engine's waits, timed by an
injected clock and sleep; and when a wait is too long to sit through (the run stops for
a rerun instead).

:class:`Admission` takes the next ready retry from the requeue (a heap ordered by the
time each may go again), else the next new line; waits for a free in-flight slot and for
some key's capacity; and hands the request to the engine to send. New lines pause while
the requeue holds ``max_requeue`` retries, so what is held stays bounded.

Every wait of the engine goes through :class:`Waits`: an event (something changed, the
run stops) raced against the injected ``sleep``. With the defaults (the loop's clock,
:func:`asyncio.sleep`) that is real time; a test passes a fake clock and sleep and
drives the same code without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from ..jobs import BadLine, Job
from ..stats import StopReason, clamp_seconds, clock_at, human_duration
from .circuit import Circuit
from .events import NO_EVENTS, Events
from .keys import KeyPool, Lane
from .outage import OutageWatch
from .policy import LONG_PAUSE, NO_KEY_LEFT, Stop, rerun_later

__all__ = ["DAILY_PERIOD", "DAILY_STOP_WAIT", "PROBE_IN_FLIGHT", "Admission", "Control",
           "Sleep", "Waits", "long_wait_stop"]

#: while learning limits (``auto``), at most this many requests in flight.
PROBE_IN_FLIGHT = 4

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


class Control(Protocol):
    """What admission (and an attempt) needs from the engine that runs it."""

    @property
    def stopping(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    def now(self) -> float: ...

    def halt(self, stop: Stop) -> None: ...

    def send(self, job: Job, lane: Lane) -> None: ...


class Admission:
    """The admission loop and the requeue.

    Args:
        run: the engine (stop state, in-flight count, clock, sending).
        keys: the keys; ``waits``: the engine's waits.
        prepare: readies a new line for the wire (None: it was reported bad).
        max_in_flight / max_requeue: see :class:`~processor.run.engine.Engine`.
        before_admit: awaited before each new line is taken (a consumer's back-pressure).
        circuit / outage: the outage circuit and its watch (None: turned off).
    """

    #: waits of at least this many seconds for capacity are reported as pauses.
    PAUSE_REPORTED = 1.0
    events: Events = NO_EVENTS

    def __init__(self, run: Control, keys: KeyPool, waits: Waits,
                 prepare: Callable[[Job | BadLine], Job | None], *, max_in_flight: int,
                 max_requeue: int, before_admit: Callable[[], Awaitable[None]] | None,
                 circuit: Circuit | None, outage: OutageWatch | None) -> None:
        self.run = run
        self.keys = keys
        self.waits = waits
        self.prepare = prepare
        self.max_in_flight = max_in_flight
        self.max_requeue = max_requeue
        self.before_admit = before_admit
        self.circuit = circuit
        self.outage = outage
        #: (time it may go again, sequence, job): retries waiting, soonest first.
        self.requeue: list[tuple[float, int, Job]] = []
        self._seq = 0

    def requeue_at(self, job: Job, delay: float) -> None:
        """Send ``job`` again ``delay`` seconds from now (in order of due time, then of
        requeueing)."""
        self._seq += 1
        heapq.heappush(self.requeue, (self.run.now() + delay, self._seq, job))

    async def admit(self, source: Iterator[Job | BadLine]) -> None:
        """Admit requests until ``source`` and the requeue are empty, or the run stops."""
        run, requeue, waits, circuit = self.run, self.requeue, self.waits, self.circuit
        exhausted = False
        while not run.stopping:
            cap = min(self.max_in_flight, PROBE_IN_FLIGHT) if self.keys.learning \
                else self.max_in_flight
            now = run.now()
            probe = False
            if circuit is not None and not circuit.closed:
                # The server is down: nothing goes but one probe at a time, and the
                # run stops once the outage outlasts the window.
                assert self.outage is not None
                if circuit.expired(now):
                    run.halt(self.outage.expired(now))
                    return
                if not circuit.can_probe(now):
                    await waits.change(circuit.wake_at() - now)
                    continue
                if run.in_flight >= cap:
                    await waits.change(circuit.expires_at() - now)
                    continue
                probe = True
            if run.in_flight >= cap:
                await waits.change(None)
                continue
            job: Job | None = None
            if requeue and (probe or requeue[0][0] <= now):
                job = heapq.heappop(requeue)[2]
            elif not exhausted and len(requeue) < self.max_requeue:
                # New lines pause while the requeue is full: what is held stays bounded
                # however fast the server fails.
                if self.before_admit is not None:
                    await self.before_admit()
                    if run.stopping:
                        return
                item = next(source, None)
                if item is None:
                    exhausted = True
                    continue
                job = self.prepare(item)
                if job is None:
                    continue
            elif requeue:
                wait = requeue[0][0] - now
                if wait > LONG_PAUSE:  # delays are checked when requeued; never idle here
                    run.halt(rerun_later(wait, "the next retry is due in "
                                               f"{human_duration(wait)}"))
                    return
                await waits.change(wait)
                continue
            elif run.in_flight:
                await waits.change(None)
                continue
            else:
                return
            lanes = self.keys.lanes
            lane = lanes[0] if len(lanes) == 1 else None
            if lane is None or lane.limiter.try_acquire(job.tokens) > 0:
                # Not the fast path (one key, capacity available now): wait for some key.
                # Probes count against the limits like any request.
                lane = await self._capacity(job)
                if lane is None:
                    return  # never sent: a resumed run will pick it up
            if probe and self.outage is not None:
                self.outage.probing(job)
            run.send(job, lane)

    async def _capacity(self, job: Job) -> Lane | None:
        """Sleep until some key's counters admit ``job`` and spend there; None if stopped."""
        run = self.run
        while not run.stopping:
            lane, wait = self.keys.pick(job.tokens)
            if lane is None:
                run.halt(Stop(StopReason.KEY_REFUSED, NO_KEY_LEFT))
                return None
            if wait <= 0:
                return lane
            stop = long_wait_stop(lane, job.tokens, wait, key=self.keys.label(lane))
            if stop is not None:
                run.halt(stop)
                return None
            if wait >= self.PAUSE_REPORTED and self.events.enabled:
                self._report_wait(lane, job.tokens, wait)
            # Sleep exactly as long as the counters need; only a stop cuts it short.
            await self.waits.unless_stopped(wait)
        return None

    def _report_wait(self, lane: Lane, tokens: int, wait: float) -> None:
        limiter = lane.limiter
        now = limiter.now()
        counter = limiter.binding(tokens, now)
        if limiter.paused_until - now >= wait - 1e-6:
            return  # a 429's pause: reported when it came
        daily = counter is not None and counter.period >= DAILY_PERIOD
        self.events.pause("daily" if daily else "limits", wait, key=lane.name,
                          counter=counter.name if counter is not None else None)
