"""The engine: admit requests under the limiter, send many at once, requeue, write.

Data flows one way. A source yields :class:`~processor.jobs.Job` (or
:class:`~processor.jobs.BadLine`) lazily; admission (:mod:`processor.run.admission`)
takes the next ready retry, else the next new job; waits for a free in-flight slot and
for the limiter; then the engine starts one task per attempt
(:mod:`processor.run.attempts`). Each task classifies its outcome: a result is written,
a failure goes to :func:`~processor.run.policy.decide` (a retry goes back into the
requeue, a final failure to the errors file). Memory is bounded by the flags, whatever
the size of the input or what the server sends: at most ``max_in_flight`` attempts on
the wire, and new lines are taken only while the requeue holds fewer than
``max_requeue`` (2 x ``max_in_flight``) retries, so at most 3 x ``max_in_flight``
requests are held at once.

Every wait the engine can enter is bounded: a wait of over
:data:`~processor.run.policy.LONG_PAUSE` (a server's Retry-After, a spent budget, a
limit) stops the run for a later rerun instead, and while the server is down
(:mod:`processor.run.circuit`) it probes instead of spending attempts, for at most the
outage window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from ..cost import Cost
from ..cost.packing import parse_pack
from ..jobs import BadLine, Job
from ..limits.limiter import Limiter
from ..stats import Stats, StopReason, clamp_seconds
from .admission import PROBE_IN_FLIGHT, Admission, Sleep, Waits
from .attempts import Attempts, Sender
from .circuit import Circuit
from .events import NO_EVENTS, Events
from .keys import KeyPool, Lane
from .outage import OutageWatch
from .outcomes import Outcomes, Sink
from .packing import Packer
from .policy import Stop
from .retry import Fallback, RetryPolicy
from .singleflight import Dedupe, SharedAnswers

__all__ = ["OUTAGE_WINDOW", "PROBE_IN_FLIGHT", "Engine", "Lane", "Sender", "Sink"]

#: seconds the server may stay down (the outage circuit open) before the run stops.
OUTAGE_WINDOW = 1800.0

log = logging.getLogger(__name__)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class Engine:
    """Runs jobs through a client under a limiter.

    Args:
        client: anything with ``async post(endpoint, payload) -> Response``.
        limiter: the capacity counters.
        sink: where result and error records go.
        cost: a job's admission cost (tokens, or a :class:`~processor.cost.Cost`); may
            raise ``ValueError`` or ``JobFormatError`` for a request that cannot be costed.
        policy: retry policy.
        max_in_flight: most attempts on the wire at once.
        on_progress: called with the live :class:`Stats` every ``progress_interval`` s.
        grace: seconds in-flight requests get to finish after a stop.
        lanes: several API keys, each with its own limiter (``limiter`` is then unused).
        fallback: a model to switch to after repeated 429s / 404s on a request's model.
        refund_unused: give back to the token counters what an answer did not use
            (for servers that count real usage; OpenAI counts max_tokens up front).
        before_admit: awaited before each new request is taken from the source: a
            consumer's back-pressure (the pipeline API waits there while its reader
            lags behind).
        outage_window: seconds the server may stay down (see :mod:`processor.run.circuit`)
            before the run stops, resumable; 0 turns the circuit off (failures then
            spend attempts whatever the server's state).
        max_requeue: retries waiting at most before new lines pause (default
            2 x ``max_in_flight``).
        clock: monotonic seconds (default: the running loop's ``time``); the limiters
            should share it.
        sleep: ``await sleep(seconds)`` (default :func:`asyncio.sleep`): every wait of
            the engine is bounded by it, so a fake clock and sleep drive it in tests.
        wall: the wall clock, for "resume at" times (default :func:`time.time`).
        pack: send consecutive packable requests as one, at most this many lines per
            request, or ``"auto"`` (see :mod:`processor.run.packing`); None: never.
        exact_tokens: a job's exact prompt tokens (None: unknown), to share a packed
            answer's usage out.
        dedupe: single-flight and the response cache (:mod:`processor.run.singleflight`);
            None: every request is sent.
        events: told of each attempt, final failure, pause, limit and stop (the run
            log); default: nothing (:data:`~processor.run.events.NO_EVENTS`).
    """

    def __init__(
        self,
        client: Sender,
        limiter: Limiter,
        sink: Sink,
        *,
        cost: Callable[[Job], int | Cost],
        policy: RetryPolicy | None = None,
        max_in_flight: int = 100,
        on_progress: Callable[[Stats], None] | None = None,
        progress_interval: float = 0.25,
        grace: float = 30.0,
        stats: Stats | None = None,
        lanes: list[Lane] | None = None,
        fallback: Fallback | None = None,
        refund_unused: bool = False,
        before_admit: Callable[[], Awaitable[None]] | None = None,
        outage_window: float = OUTAGE_WINDOW,
        max_requeue: int | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Sleep | None = None,
        wall: Callable[[], float] = time.time,
        pack: int | str | None = None,
        exact_tokens: Callable[[Job], int | None] | None = None,
        dedupe: Dedupe | None = None,
        events: Events = NO_EVENTS,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if not outage_window >= 0:
            raise ValueError(f"outage_window must be >= 0, got {outage_window}")
        max_requeue = max_requeue if max_requeue is not None else 2 * max_in_flight
        if max_requeue < 1:
            raise ValueError(f"max_requeue must be >= 1, got {max_requeue}")
        self.stats = stats or Stats()
        self.keys = KeyPool(lanes or [Lane(None, limiter)], self.stats)
        self.lanes = self.keys.lanes
        self.limiter = self.lanes[0].limiter
        self.sink = sink
        self.outcomes = Outcomes(sink, self.stats, cost, self.lanes[0].limiter_for)
        self.policy = policy or RetryPolicy()
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.grace = grace
        self._clock = clock
        #: monotonic seconds: ``clock``, or the running loop's ``time`` (bound once the
        #: run starts: asked several times per request).
        self.now: Callable[[], float] = clock if clock is not None else _loop_time
        self._wall = wall
        self._waits = Waits(sleep)
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._create_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] = \
            asyncio.ensure_future
        self._stopping = False
        self.circuit = _circuit(self.policy, outage_window)
        outage = OutageWatch(self.circuit, self.stats, wall) if self.circuit else None
        size = parse_pack(pack)  # ValueError: not a size, "auto" or "off"
        self.packer = Packer(size if isinstance(size, int) else None, self.outcomes.prepare,
                             self.lanes, self.stats, exact_tokens) if size else None
        prepare = self.packer.prepare if self.packer else self.outcomes.prepare
        # Followers wait off the wire: 10 x max_in_flight at most, then reading pauses.
        self.shared = SharedAnswers(sink, self.stats, dedupe, max_waiting=10 * max_in_flight) \
            if dedupe is not None and dedupe.active else None
        self.outcomes.shared = self.shared
        self.admission = Admission(self, self.keys, self._waits, prepare,
                                   max_in_flight=max_in_flight, max_requeue=max_requeue,
                                   before_admit=before_admit, circuit=self.circuit,
                                   outage=outage, stage=self.packer.around(self.shared)
                                   if self.packer else self.shared)
        self.stats.watch_requeue(self.admission.requeue)
        self.attempts = Attempts(self, client, self.keys, self.outcomes, outage,
                                 self.admission.requeue_at, policy=self.policy,
                                 fallback=fallback, refund_unused=refund_unused)
        self.events = events
        for part in (self.attempts, self.outcomes, self.keys, self.admission, outage,
                     self.shared):
            if part is not None:
                part.events = events

    # -- control ---------------------------------------------------------------

    def stop(self, message: str = "interrupted", reason: StopReason = StopReason.CALLER) -> None:
        """Stop admitting; in-flight requests get ``grace`` seconds to finish.

        The first stop's ``reason`` and ``message`` are the run's (see
        :meth:`Stats.stop`); later ones only wake the waits again.
        """
        if not self._stopping:
            self._stopping = True
            log.info("stopping: %s", message)
            self.events.emit("stopping", reason=reason.value, msg=message)
        self.stats.stop(reason, message)
        self._waits.changed.set()
        self._waits.stopped.set()

    def halt(self, stop: Stop) -> None:
        """Stop as the policy said (and note when a rerun can go on)."""
        if stop.resume_in is not None and not self._stopping:
            self.stats.resume_at = self._wall() + clamp_seconds(stop.resume_in)
        self.stop(stop.message, stop.reason)

    def output_failed(self, failure: str) -> None:
        """The output files could not be written when closed: :meth:`Stats.output_failed`."""
        self.stats.output_failed(failure)

    def abandon_in_flight(self, why: str | None = None) -> None:
        """Abandon in-flight requests now (a second Ctrl-C); files stay valid.

        Args:
            why: noted in the summary as ``<why>: N in-flight requests abandoned`` (if
                any were).
        """
        if not self._waits.abort.is_set():
            self.grace = 0.0
            self.stats.abandoned = True
            if why and self._in_flight:
                self.stats.note(f"{why}: {self._in_flight} in-flight requests abandoned")
        self._waits.abort.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def in_flight(self) -> int:
        """Attempts on the wire now (the engine's own count: it gates admission)."""
        return self._in_flight

    # -- main loop -------------------------------------------------------------

    async def run(self, source: Iterable[Job | BadLine]) -> Stats:
        """Process every job from ``source``; return the final :class:`Stats`."""
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self.now = loop.time
        self._create_task = loop.create_task
        ticker = asyncio.create_task(self._tick())
        try:
            try:
                jobs = iter(source)
                await self.admission.admit(self.packer.source(jobs) if self.packer else jobs)
            except BaseException:
                # Even on a bug or a cancellation, what is in flight is finished (or
                # abandoned after the grace period) before the session goes away.
                self.stop("stopped by an error", StopReason.ERROR)
                raise
            finally:
                await self._drain()
        finally:
            ticker.cancel()
            if self._clock is None:
                self.now = _loop_time
            if self.packer is not None:
                self.packer.report()
            self.stats.finish(time.monotonic())
            self.keys.publish_model_limits()
            if self.on_progress and not _show(self.on_progress, self.stats):
                log.warning("progress display failed at the end")
        return self.stats

    def send(self, job: Job, lane: Lane) -> None:
        """Start one attempt of ``job`` on ``lane`` (its capacity already spent)."""
        job.lane = lane
        job.sent_at = self.now()
        limiter = lane.limiter_for(job.model)
        job.cum_requests = limiter.cum_requests
        job.cum_tokens = limiter.cum_tokens
        self._in_flight += 1
        self.stats.sent(job.tokens, lane.bucket(job.model))
        task = self._create_task(self.attempts.attempt(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def returned(self) -> None:
        """An attempt came back (or was cancelled): called by the attempt itself, last."""
        self._in_flight -= 1
        self.stats.returned()
        self._waits.changed.set()

    async def _drain(self) -> None:
        """Wait for in-flight attempts; once stopping, at most ``grace`` seconds more."""
        await _drain(self, self._waits, self._tasks)

    async def _tick(self) -> None:
        while True:
            await self._waits.sleep(self.progress_interval)
            if self.circuit is not None:
                stats = self.stats
                stats.outage(since=stats.outage_since, probe_every=stats.probe_every,
                             seconds=self.circuit.total_down(self.now()))
            self.keys.publish_model_limits()
            if self.on_progress is not None and not _show(self.on_progress, self.stats):
                log.warning("progress display failed; continuing without it")
                self.on_progress = None
            try:
                self.sink.maybe_sync()
            except OSError as exc:
                self.stop(f"cannot write the output files: {exc}", StopReason.OUTPUT_ERROR)


def _circuit(policy: RetryPolicy, outage_window: float) -> Circuit | None:
    """The outage circuit (None: turned off); probes back off like retries (tests shrink
    both)."""
    if outage_window <= 0:
        return None
    base = max(policy.base, 1e-3)
    return Circuit(outage_window=outage_window, base=base, cap=max(policy.cap, base))


def _show(on_progress: Callable[[Stats], None], stats: Stats) -> bool:
    """Call the progress display; False when it failed (a broken display must not stop
    the run)."""
    try:
        on_progress(stats)
    except Exception as exc:  # noqa: BLE001
        log.debug("progress display failed: %s", type(exc).__name__)
        return False
    return True


async def _drain(engine: Engine, waits: Waits, tasks: set[asyncio.Task[None]]) -> None:
    """Wait for ``engine``'s attempts in flight; once it stops, at most its ``grace``
    seconds more; then cancel what is left (a rerun sends it again)."""
    deadline: float | None = None
    # An attempt coming back (and a stop) sets ``changed``; the count drops first.
    while engine.in_flight and not waits.abort.is_set():
        if engine.stopping and deadline is None:
            deadline = engine.now() + engine.grace
        timeout = None if deadline is None else deadline - engine.now()
        if timeout is not None and timeout <= 0:
            break
        waits.changed.clear()
        await waits.first([waits.abort, waits.changed], timeout)
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
        engine.stats.note(
            f"{len(pending)} in-flight requests did not finish within the {engine.grace:g}s "
            "grace period; a rerun will send them again"
        )
