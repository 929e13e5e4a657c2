"""The engine: admit requests under the limiter, send many at once, requeue, write.

Data flows one way. A source yields :class:`~processor.jobs.Job` (or
:class:`~processor.jobs.BadLine`) lazily; the admission loop takes the next ready
retry, else the next new job; waits for a free in-flight slot and for the limiter;
then starts one task per attempt. Each task classifies its outcome: a result is
written, a retryable failure goes back into the requeue (a heap ordered by the time
it may go again), a final failure is written to the errors file. Memory is bounded
by the flags, whatever the size of the input or what the server sends: at most
``max_in_flight`` attempts on the wire, and new lines are taken only while the requeue
holds fewer than ``max_requeue`` (2 x ``max_in_flight``) retries, so at most
3 x ``max_in_flight`` requests are held at once.

Every wait the engine can enter is bounded: a wait of over :data:`LONG_PAUSE` (a
server's Retry-After, a spent budget, a limit) stops the run for a later rerun
instead, and while the server is down (:mod:`processor.run.circuit`) it probes instead of
spending attempts, for at most the outage window.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import orjson

from ..client.http import Response
from ..cost import Cost
from ..errors import APIError, APITimeout, RateLimited, ServerError
from ..jobs import BadLine, Job
from ..limits.limiter import Limiter
from ..stats import Stats, StopReason, clamp_seconds, human_duration
from .admission import Sleep, Waits, long_wait_stop
from .circuit import Circuit
from .keys import KeyPool, Lane
from .outage import OutageWatch
from .outcomes import Outcomes, Sink
from .policy import (
    LONG_PAUSE,
    NO_KEY_LEFT,
    Action,
    Attempt,
    Context,
    Fail,
    Leave,
    Requeue,
    RetireKey,
    Retry,
    Stop,
    SwitchModel,
    decide,
    refuses_model,
    rerun_later,
)
from .retry import Fallback, RetryPolicy, server_hint

__all__ = ["Engine", "Lane", "Sender", "Sink"]

#: while learning limits (``auto``), at most this many requests in flight.
PROBE_IN_FLIGHT = 4
#: seconds the server may stay down (the outage circuit open) before the run stops.
OUTAGE_WINDOW = 1800.0

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What the engine needs from a client."""

    async def post(
        self,
        endpoint: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
    ) -> Response: ...


class Engine:
    """Runs jobs through a client under a limiter.

    Args:
        client: anything with ``async post(endpoint, payload) -> Response``.
        limiter: the capacity counters.
        sink: where result and error records go.
        cost: a job's admission cost (tokens, or a :class:`~processor.cost.Cost`);
            may raise ``ValueError`` or
            :class:`~processor.errors.JobFormatError` for a request that cannot be costed.
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
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if not outage_window >= 0:
            raise ValueError(f"outage_window must be >= 0, got {outage_window}")
        self.client = client
        self.stats = stats or Stats()
        self.keys = KeyPool(lanes or [Lane(None, limiter)], self.stats)
        self.lanes = self.keys.lanes
        self.limiter = self.lanes[0].limiter
        self.fallback = fallback
        self.refund_unused = refund_unused
        self.before_admit = before_admit
        self.sink = sink
        self.outcomes = Outcomes(sink, self.stats, cost, self.limiter)
        self.policy = policy or RetryPolicy()
        self.max_in_flight = max_in_flight
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.grace = grace
        self._clock = clock
        self._wall = wall
        self._waits = Waits(sleep)
        self._requeue: list[tuple[float, int, Job]] = []
        self.stats.watch_requeue(self._requeue)
        self._seq = 0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.max_requeue = max_requeue if max_requeue is not None else 2 * max_in_flight
        if self.max_requeue < 1:
            raise ValueError(f"max_requeue must be >= 1, got {self.max_requeue}")
        # Probes back off like retries (tests shrink both).
        base = max(self.policy.base, 1e-3)
        self.circuit = Circuit(outage_window=outage_window, base=base,
                               cap=max(self.policy.cap, base)) if outage_window > 0 else None
        self._outage = OutageWatch(self.circuit, self.stats, wall) if self.circuit else None

    # -- control ---------------------------------------------------------------

    def stop(self, message: str = "interrupted", reason: StopReason = StopReason.CALLER) -> None:
        """Stop admitting; in-flight requests get ``grace`` seconds to finish.

        The first stop's ``reason`` and ``message`` are the run's (see
        :meth:`Stats.stop`); later ones only wake the waits again.
        """
        if not self._stopping:
            self._stopping = True
            log.info("stopping: %s", message)
        self.stats.stop(reason, message)
        self._waits.changed.set()
        self._waits.stopped.set()

    def abandon_in_flight(self, why: str | None = None) -> None:
        """Abandon in-flight requests now (a second Ctrl-C); files stay valid.

        Args:
            why: noted in the summary as ``<why>: in-flight requests abandoned``.
        """
        if not self._waits.abort.is_set():
            self.grace = 0.0
            self.stats.abandoned = True
            if why:
                self.stats.note(f"{why}: in-flight requests abandoned")
        self._waits.abort.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def _stop(self, stop: Stop) -> None:
        if stop.resume_in is not None:
            self.stats.resume_at = self._wall() + clamp_seconds(stop.resume_in)
        self.stop(stop.message, stop.reason)

    # -- main loop -------------------------------------------------------------

    async def run(self, source: Iterable[Job | BadLine]) -> Stats:
        """Process every job from ``source``; return the final :class:`Stats`."""
        ticker = asyncio.create_task(self._tick())
        try:
            try:
                await self._admit(iter(source))
            except BaseException:
                # Even on a bug or a cancellation, what is in flight is finished (or
                # abandoned after the grace period) before the session goes away.
                self.stop("stopped by an error", StopReason.ERROR)
                raise
            finally:
                await self._drain()
        finally:
            ticker.cancel()
            self.stats.finished = time.monotonic()
            if self.on_progress:
                try:
                    self.on_progress(self.stats)
                except Exception:  # noqa: BLE001 - the summary still follows
                    log.warning("progress display failed at the end")
        return self.stats

    async def _admit(self, source: Iterator[Job | BadLine]) -> None:
        requeue = self._requeue
        waits = self._waits
        circuit = self.circuit
        exhausted = False
        while not self._stopping:
            cap = min(self.max_in_flight, PROBE_IN_FLIGHT) if self.keys.learning \
                else self.max_in_flight
            now = self.now()
            probe = False
            if circuit is not None and not circuit.closed:
                # The server is down: nothing goes but one probe at a time, and the
                # run stops once the outage outlasts the window.
                assert self._outage is not None
                if circuit.expired(now):
                    self._stop(self._outage.expired(now))
                    return
                if not circuit.can_probe(now):
                    await waits.change(circuit.wake_at() - now)
                    continue
                if self._in_flight >= cap:
                    await waits.change(circuit.expires_at() - now)
                    continue
                probe = True
            if self._in_flight >= cap:
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
                    if self._stopping:
                        return
                item = next(source, None)
                if item is None:
                    exhausted = True
                    continue
                job = self.outcomes.prepare(item)
                if job is None:
                    continue
            elif requeue:
                wait = requeue[0][0] - now
                if wait > LONG_PAUSE:  # delays are checked when requeued; never idle here
                    self._stop(rerun_later(wait, "the next retry is due in "
                                                 f"{human_duration(wait)}"))
                    return
                await waits.change(wait)
                continue
            elif self._in_flight:
                await waits.change(None)
                continue
            else:
                return
            lane = self.lanes[0] if len(self.lanes) == 1 else None
            if lane is None or lane.limiter.try_acquire(job.tokens) > 0:
                # Not the fast path (one key, capacity available now): wait for some key.
                # Probes count against the limits like any request.
                picked = await self._wait_for_capacity(job)
                if picked is None:
                    return  # never sent: a resumed run will pick it up
                lane = picked
            if probe and self._outage is not None:
                self._outage.probing(job)
            self._send(job, lane)

    def _send(self, job: Job, lane: Lane) -> None:
        job.lane = lane
        job.sent_at = self.now()
        job.cum_requests = lane.limiter.cum_requests
        job.cum_tokens = lane.limiter.cum_tokens
        self._in_flight += 1
        self.stats.sent(job.tokens)
        task = asyncio.get_running_loop().create_task(self._attempt(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait_for_capacity(self, job: Job) -> Lane | None:
        """Sleep until some key's counters admit ``job`` and spend there; None if stopped."""
        while not self._stopping:
            lane, wait = self.keys.pick(job.tokens)
            if lane is None:
                self.stop(NO_KEY_LEFT, StopReason.KEY_REFUSED)
                return None
            if wait <= 0:
                return lane
            stop = long_wait_stop(lane, job.tokens, wait, key=self.keys.label(lane))
            if stop is not None:
                self._stop(stop)
                return None
            # Sleep exactly as long as the counters need; only a stop cuts it short.
            await self._waits.unless_stopped(wait)
        return None

    async def _attempt(self, job: Job) -> None:
        lane = job.lane
        assert lane is not None
        job.attempts += 1
        try:
            try:
                response = await self.client.post(job.url, job.payload, headers=lane.headers,
                                                  model=job.model)
            except APIError as exc:
                self._failed_attempt(job, exc)
            except Exception as exc:  # noqa: BLE001 - never lose a request to a surprise
                # Only the type: the message of an unexpected error might quote a header.
                log.error("unexpected %s sending %s; treated as a server error",
                          type(exc).__name__, job.custom_id, exc_info=log.isEnabledFor(10))
                self._failed_attempt(job, ServerError(f"unexpected {type(exc).__name__}"))
            else:
                self._answered(job, lane, response)
        except OSError as exc:
            # The disk is full or the file went away: stop before paying for answers
            # that cannot be kept. What was not written is sent again on the next run.
            self.stop(f"cannot write the output files: {exc}", StopReason.OUTPUT_ERROR)
        finally:
            self._in_flight -= 1
            self.stats.returned()
            self._waits.changed.set()

    def _learn(self, job: Job, info: Any, *, force: bool, refused: bool = False) -> None:
        assert job.lane is not None
        self.keys.learn(job.lane, info, sent_at=job.sent_at, cum_requests=job.cum_requests,
                        cum_tokens=job.cum_tokens, force=force,
                        refused_tokens=job.tokens if refused else None)

    def _answered(self, job: Job, lane: Lane, response: Response) -> None:
        if self._outage is not None:
            self._outage.alive(job, self.now())
        self.keys.answered(lane)
        try:
            self._learn(job, response.ratelimit, force=False)
        except ValueError as exc:  # nonsense rate-limit headers must not cost the answer
            log.warning("ignored rate-limit headers: %s", exc)
        used = self.outcomes.answered(job, lane, response, self.keys.label(lane))
        if used and self.refund_unused and job.tokens > used:
            lane.limiter.refund(job.tokens - used)

    def _failed_attempt(self, job: Job, exc: APIError) -> None:
        """Record what the failure says (history, headers, the key's pause, the circuit),
        :func:`~processor.run.policy.decide`, and carry the decision out."""
        lane = job.lane
        assert lane is not None
        job.history.append({"attempt": job.attempts, "status": exc.status, "error": exc.kind,
                            "message": exc.message[:300]})
        hint = server_hint(exc)
        if exc.ratelimit is not None:
            self._learn(job, exc.ratelimit, force=True, refused=isinstance(exc, RateLimited))
        insisted, told = 0, ""
        if isinstance(exc, RateLimited):
            self.stats.n_429 += 1
            # The key's pause, however long: a paused key is avoided, and when every
            # key waits over an hour, admission stops the run (long_wait_stop).
            lane.limiter.rate_limited(hint)
            insisted, told = self.keys.refused(lane)
        outage = self._weigh_outage(job, exc, hint)
        if refuses_model(exc, job.model, self.fallback, job.fallback_from is not None):
            job.model_refusals += 1
        action = decide(exc, Attempt(job.attempts, job.model, job.fallback_from is not None,
                                     job.model_refusals),
                        Context(self.policy, self.fallback, lane.name or "", len(self.lanes),
                                lane.retired, len(self.keys.working), self._stopping, outage,
                                insisted, told))
        self._carry_out(job, lane, exc, action)

    def _weigh_outage(self, job: Job, exc: APIError, hint: float | None) -> bool:
        """Feed the circuit; True if the failure was an outage's (its attempt given back)."""
        if self._outage is None:
            return False
        if not isinstance(exc, (ServerError, APITimeout)):
            self._outage.alive(job, self.now())
            return False
        if hint is not None and hint > LONG_PAUSE:
            return False  # the run stops for it (decide)
        retry = self.policy.should_retry(exc, job.attempts)
        return self._outage.failed(job, self.now(), hint, retry=retry)

    def _carry_out(self, job: Job, lane: Lane, exc: APIError, action: Action) -> None:
        match action:
            case Retry(delay):
                self._requeue_at(job, delay)
                self.stats.retries += 1
            case Requeue(retry):
                job.attempts = max(0, job.attempts - 1)  # this attempt did not count
                self._requeue_at(job, 0.0)
                if retry:
                    self.stats.retries += 1
            case SwitchModel(model):
                job.fallback_from = job.model
                job.model = model
                job.body = dict(job.body, model=model)
                job.payload = orjson.dumps(job.body)
                self.stats.fallbacks += 1
                self._requeue_at(job, 0.0)
            case Fail(code, message):
                self.outcomes.fail(job, code, message, exc)
            case Leave():
                pass  # left for a resumed run
            case Stop():
                self._stop(action)
            case RetireKey(then):
                self.keys.retire(lane, exc.message)
                self._carry_out(job, lane, exc, then)

    def _requeue_at(self, job: Job, delay: float) -> None:
        self._seq += 1
        heapq.heappush(self._requeue, (self.now() + delay, self._seq, job))

    async def _drain(self) -> None:
        """Wait for in-flight attempts; once stopping, at most ``grace`` seconds more."""
        waits = self._waits
        deadline: float | None = None
        # An attempt coming back (and a stop) sets ``changed``; the count drops first.
        while self._in_flight and not waits.abort.is_set():
            if self._stopping and deadline is None:
                deadline = self.now() + self.grace
            timeout = None if deadline is None else deadline - self.now()
            if timeout is not None and timeout <= 0:
                break
            waits.changed.clear()
            await waits.first([waits.abort, waits.changed], timeout)
        pending = {task for task in self._tasks if not task.done()}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            self.stats.note(
                f"{len(pending)} in-flight requests did not finish within the {self.grace:g}s "
                "grace period; a rerun will send them again"
            )

    async def _tick(self) -> None:
        while True:
            await self._waits.sleep(self.progress_interval)
            if self.circuit is not None:
                self.stats.outage_seconds = self.circuit.total_down(self.now())
            if self.on_progress is not None:
                try:
                    self.on_progress(self.stats)
                except Exception as exc:  # noqa: BLE001 - a broken display must not stop
                    log.warning("progress display failed (%s); continuing without it",
                                type(exc).__name__)
                    self.on_progress = None
            try:
                self.sink.maybe_sync()
            except OSError as exc:
                self.stop(f"cannot write the output files: {exc}", StopReason.OUTPUT_ERROR)

