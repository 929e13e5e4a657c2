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
from typing import Literal, Protocol

from ..jobs import BadLine, Job
from ..stats import StopReason, clamp_seconds, clock_at, human_duration
from .circuit import Circuit
from .events import NO_EVENTS, Events
from .held import HeldLines
from .keys import KeyPool, Lane
from .outage import OutageWatch
from .policy import LONG_PAUSE, NO_KEY_LEFT, Stop, asked_pause, rerun_later

__all__ = ["DAILY_PERIOD", "DAILY_STOP_WAIT", "PROBE_IN_FLIGHT", "Admission", "Control",
           "Sleep", "Stage", "Waits", "long_wait_stop"]

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
                   at: Callable[[float], str] = clock_at, model: str | None = None
                   ) -> Stop | None:
    """The stop for a wait too long to sit through, or None to wait.

    A spent daily budget (``--rpd`` / ``--tpd``) never comes back within the run; a
    server that asks for a pause of over an hour (a per-day limit, say) is not worth
    waiting on either, nor is any other wait over :data:`~processor.run.policy.LONG_PAUSE`.

    Args:
        lane: the key that admits soonest; ``wait``: in how many seconds.
        key: the key's name for messages ("" for the only key).
        model: the request's model (its limiter on ``lane`` is asked).
    """
    if wait <= DAILY_STOP_WAIT:
        return None
    limiter = lane.limiter_for(model)
    if limiter.unavailable:  # the shared budget's store has been down too long
        return Stop(StopReason.RERUN_LATER, f"{limiter.unavailable}; rerun the same command "
                                            "once it is back to resume", None)
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
        return rerun_later(pause, f"the server asked to pause for {asked_pause(pause)}"
                                  f"{on_key}", at)
    if wait > LONG_PAUSE:
        what = f"{counter.name} {counter.limit:g}" if counter is not None else "the limits"
        return rerun_later(wait, f"the next request would wait {human_duration(wait)} "
                                 f"under {what}{on_key}", at)
    return None


def _admits_now(lane: Lane, job: Job) -> bool:
    """The fast path: ``lane``'s local counters admit ``job`` now (and spent for it)."""
    limiter = lane.limiter_for(job.model)
    return not limiter.remote and limiter.try_acquire(job.tokens) <= 0


class Control(Protocol):
    """What admission (and an attempt) needs from the engine that runs it."""

    @property
    def stopping(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    #: monotonic seconds (the engine's clock).
    now: Callable[[], float]

    def halt(self, stop: Stop) -> None: ...

    def send(self, job: Job, lane: Lane) -> None: ...

    def returned(self) -> None: ...


class Stage(Protocol):
    """Between reading a line and admitting it: answers some lines without a request
    (:class:`~processor.run.singleflight.SharedAnswers`)."""

    def take(self, job: Job) -> Job | None:
        """What of ``job`` is to be admitted: ``job``, a smaller request (the lines of a
        pack that still need one), or None (it is dealt with)."""
        ...

    def room(self) -> bool:
        """Whether another line may be read now."""
        ...


class Admission:
    """The admission loop and the requeue.

    Args:
        run: the engine (stop state, in-flight count, clock, sending).
        keys: the keys; ``waits``: the engine's waits.
        prepare: readies a new line for the wire (None: it was reported bad).
        max_in_flight / max_requeue: see :class:`~processor.run.engine.Engine`.
        before_admit: awaited before each new line is taken (a consumer's back-pressure).
        circuit / outage: the outage circuit and its watch (None: turned off).
        stage: answers some new lines without a request (None: every line is admitted).
    """

    #: waits of at least this many seconds for capacity are reported as pauses.
    PAUSE_REPORTED = 1.0
    events: Events = NO_EVENTS

    def __init__(self, run: Control, keys: KeyPool, waits: Waits,
                 prepare: Callable[[Job | BadLine], Job | None], *, max_in_flight: int,
                 max_requeue: int, before_admit: Callable[[], Awaitable[None]] | None,
                 circuit: Circuit | None, outage: OutageWatch | None,
                 stage: Stage | None = None) -> None:
        self.run = run
        self.keys = keys
        self.waits = waits
        self.prepare = prepare
        self.max_in_flight = max_in_flight
        self.max_requeue = max_requeue
        self.before_admit = before_admit
        self.circuit = circuit
        self.outage = outage
        self.stage = stage
        self._taken = 0  # lines the stage dealt with (the loop yields every 8)
        #: (time it may go again, sequence, job): retries waiting, soonest first.
        self.requeue: list[tuple[float, int, Job]] = []
        self._seq = 0
        #: requests waiting for their model's counters, one line per bucket.
        self.held = HeldLines(run, waits, self._capacity, self._cap, circuit)

    def _cap(self) -> int:
        return min(self.max_in_flight, PROBE_IN_FLIGHT) if self.keys.learning \
            else self.max_in_flight

    def requeue_at(self, job: Job, delay: float) -> None:
        """Send ``job`` again ``delay`` seconds from now (in order of due time, then of
        requeueing)."""
        self._seq += 1
        heapq.heappush(self.requeue, (self.run.now() + delay, self._seq, job))

    async def admit(self, source: Iterator[Job | BadLine]) -> None:
        """Admit requests until ``source``, the requeue and the held lines are empty, or
        the run stops."""
        try:
            await self._admit(source)
        finally:
            await self.held.close()

    async def _admit(self, source: Iterator[Job | BadLine]) -> None:
        run, requeue, waits, circuit = self.run, self.requeue, self.waits, self.circuit
        held = self.held
        exhausted = False
        stage = self.stage
        early: Job | None = None  # read while the wire was full; goes at the next free slot
        while not run.stopping:
            cap = self._cap()
            # The clock is read only when a retry waits or the server is down.
            now = run.now() if requeue or (circuit is not None and not circuit.closed) \
                else -math.inf
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
            # New lines pause while the requeue or the held lines are full: what is held
            # stays bounded however fast the server fails.
            may_read = not exhausted and len(requeue) < self.max_requeue \
                and len(held) < self.max_requeue and (stage is None or stage.room())
            if run.in_flight >= cap:
                if stage is not None and early is None and may_read:
                    # The wire is full, but the next line may need no request (a cache
                    # hit, an identical request's follower): read on. One that needs a
                    # request is held for the next free slot.
                    read = await self._read(source)
                    if read is False:
                        exhausted = True
                        continue
                    if read is None:
                        continue
                    early = read
                await waits.change(None)
                continue
            job: Job | None = None
            if requeue and (probe or requeue[0][0] <= now):
                job = heapq.heappop(requeue)[2]
            elif early is not None:
                job, early = early, None
            elif may_read:
                read = await self._read(source)
                if read is False:
                    exhausted = True
                    continue
                if read is None:
                    continue
                job = read
            elif requeue:
                wait = requeue[0][0] - now
                if wait > LONG_PAUSE:  # delays are checked when requeued; never idle here
                    run.halt(rerun_later(wait, "the next retry is due in "
                                               f"{human_duration(wait)}"))
                    return
                await waits.change(wait)
                continue
            elif run.in_flight or held:
                await waits.change(None)
                continue
            else:
                return
            lanes = self.keys.lanes
            lane = lanes[0] if len(lanes) == 1 else None
            bucket = lanes[0].bucket(job.model)
            if probe:
                # The server is down: the one probe waits for capacity here (it counts
                # against the limits like any request); nothing else goes meanwhile.
                lane = await self._capacity(job)
                if lane is None:
                    return  # never sent: a resumed run will pick it up
                if self.outage is not None:
                    self.outage.probing(job)
            elif lane is None or held.waiting(bucket) or not _admits_now(lane, job):
                # Not the fast path (one key, capacity available now): the request waits
                # in its model's line, and the loop goes on with the next one.
                held.hold(bucket, job)
                # Let its line's task ask for it now, before the next line is read.
                await asyncio.sleep(0)
                continue
            run.send(job, lane)

    async def _read(self, source: Iterator[Job | BadLine]) -> Job | None | Literal[False]:
        """The next line that needs a request, read after the consumer's back-pressure:
        a job; None when the line needed none (a bad line, a cache hit, an identical
        request's follower); False when ``source`` is empty or the run stopped."""
        if self.before_admit is not None:
            await self.before_admit()
            if self.run.stopping:
                return False
        item = next(source, None)
        if item is None:
            return False
        job = self.prepare(item)
        if job is not None and self.stage is not None:
            job = self.stage.take(job)
            if job is None:
                self._taken += 1
                if self._taken % 8 == 0:  # a long run of cache hits must not hold the loop
                    await asyncio.sleep(0)
        return job

    async def _capacity(self, job: Job) -> Lane | None:
        """Sleep until some key's counters admit ``job`` and spend there; None if stopped."""
        run = self.run
        while not run.stopping:
            lane, wait = await self.keys.acquire(job)
            if lane is None:
                run.halt(Stop(StopReason.KEY_REFUSED, NO_KEY_LEFT))
                return None
            if wait <= 0:
                return lane
            stop = long_wait_stop(lane, job.tokens, wait, key=self.keys.label(lane),
                                  model=job.model)
            if stop is not None:
                run.halt(stop)
                return None
            if wait >= self.PAUSE_REPORTED and self.events.enabled:
                self._report_wait(lane, job, wait)
            # Sleep exactly as long as the counters need; only a stop cuts it short.
            await self.waits.unless_stopped(wait)
        return None

    def _report_wait(self, lane: Lane, job: Job, wait: float) -> None:
        limiter = lane.limiter_for(job.model)
        now = limiter.now()
        counter = limiter.binding(job.tokens, now)
        if limiter.paused_until - now >= wait - 1e-6:
            return  # a 429's pause: reported when it came
        daily = counter is not None and counter.period >= DAILY_PERIOD
        self.events.pause("daily" if daily else "limits", wait, key=lane.name,
                          model=lane.bucket(job.model) or None,
                          counter=counter.name if counter is not None else None)
