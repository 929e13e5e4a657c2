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
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ..client.http import Response
from ..cost import Cost
from ..errors import (
    APIError,
    APITimeout,
    AuthError,
    FatalAPIError,
    JobFormatError,
    QuotaExceeded,
    RateLimited,
    ServerError,
)
from ..jobs import BadLine, Job
from ..limits import Limiter, Unit
from ..stats import Stats, clamp_seconds, clock_at, human_duration
from ..store.records import RecordIds, error_record, result_record
from .circuit import Circuit
from .retry import Fallback, RetryPolicy, is_daily_limit, server_hint

__all__ = ["Engine", "Lane", "Sender", "Sink"]

#: while learning limits (``auto``), at most this many requests in flight.
PROBE_IN_FLIGHT = 4
#: answers without rate-limit headers after which ``auto`` gives up learning.
PROBE_ANSWERS = 3
#: a counter whose window is at least this long is a daily budget: when it makes
#: admission wait longer than DAILY_STOP_WAIT seconds, the run stops (resumable).
DAILY_PERIOD = 3600.0
DAILY_STOP_WAIT = 60.0
#: any wait longer than this (a server-requested pause, a spent budget, a limit) stops
#: the run (resumable) instead.
LONG_PAUSE = 3600.0
#: 429s in a row, while the server states a limit that cannot be real, that stop the run.
INSIST_429 = 5
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


@dataclass(slots=True)
class Lane:
    """One API key with its own capacity counters.

    Attributes:
        name: how the key is named in messages and results (its environment variable).
        limiter: this key's counters.
        headers: auth headers for this key (None: the client's default).
        retired: set once the server refused the key (401/403).
    """

    name: str | None
    limiter: Limiter
    headers: Mapping[str, str] | None = None
    retired: bool = False
    answered: int = 0


class Sink(Protocol):
    """Where records go (a :class:`~processor.store.writer.ResultWriter`, or a pipeline's queue)."""

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None: ...

    def write_error(self, record: dict[str, Any]) -> None: ...

    def maybe_sync(self) -> None: ...


def _implausible(limiter: Limiter, name: str, value: float) -> str:
    """``tokens/min 0.001 (below the smallest request, 37 tokens)``: why it cannot be real."""
    if name == Unit.REQUESTS.per_minute:
        return f"{name} {value:g} (below one request)"
    smallest = limiter.smallest_tokens
    if value < 1 or not math.isfinite(smallest):
        return f"{name} {value:g} (below one token)"
    return f"{name} {value:g} (below the smallest request, {smallest:g} tokens)"


def _usage(body: Any) -> tuple[int, int]:
    if isinstance(body, dict):
        usage = body.get("usage")
        if isinstance(usage, dict):
            p = usage.get("prompt_tokens", usage.get("input_tokens", 0))
            c = usage.get("completion_tokens", usage.get("output_tokens", 0))
            return (p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)
    return 0, 0


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
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if not outage_window >= 0:
            raise ValueError(f"outage_window must be >= 0, got {outage_window}")
        self.client = client
        self.lanes = lanes or [Lane(None, limiter)]
        self.limiter = self.lanes[0].limiter
        self.fallback = fallback
        self.refund_unused = refund_unused
        self.before_admit = before_admit
        self._answers_without_headers = 0
        self.sink = sink
        self.cost = cost
        self.policy = policy or RetryPolicy()
        self.max_in_flight = max_in_flight
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.grace = grace
        self.stats = stats or Stats()
        self._requeue: list[tuple[float, int, Job]] = []
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._abort = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._record_id = RecordIds()
        self.max_requeue = max_requeue if max_requeue is not None else 2 * max_in_flight
        if self.max_requeue < 1:
            raise ValueError(f"max_requeue must be >= 1, got {self.max_requeue}")
        # Probes back off like retries (tests shrink both).
        base = max(self.policy.base, 1e-3)
        self.circuit = Circuit(outage_window=outage_window, base=base,
                               cap=max(self.policy.cap, base)) if outage_window > 0 else None
        self._probe: Job | None = None
        #: jobs whose failure the circuit weighs (they get their attempt back if it opens).
        self._recent: deque[Job] = deque(maxlen=self.circuit.window if self.circuit else 1)
        #: (lane, counter) pairs already warned about a limit that cannot be real.
        self._warned: set[tuple[int, str]] = set()
        #: 429s in a row per lane while it states such a limit.
        self._refusals: dict[int, int] = {}

    # -- control ---------------------------------------------------------------

    def stop(self, reason: str = "interrupted") -> None:
        """Stop admitting; in-flight requests get ``grace`` seconds to finish."""
        if not self._stopping:
            self._stopping = True
            self.stats.stop_reason = self.stats.stop_reason or reason
            log.info("stopping: %s", reason)
        self._changed.set()
        self._stopped.set()

    def kick(self) -> None:
        """Abandon in-flight requests now (a second Ctrl-C); files stay valid."""
        self._abort.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- main loop -------------------------------------------------------------

    async def run(self, source: Iterable[Job | BadLine]) -> Stats:
        """Process every job from ``source``; return the final :class:`Stats`."""
        self._loop = asyncio.get_running_loop()
        ticker = asyncio.create_task(self._tick())
        try:
            try:
                await self._admit(iter(source))
            except BaseException:
                # Even on a bug or a cancellation, what is in flight is finished (or
                # abandoned after the grace period) before the session goes away.
                self.stop("stopped by an error")
                raise
            finally:
                await self._drain()
        finally:
            ticker.cancel()
            self.stats.finished = time.monotonic()
            self.stats.retrying = len(self._requeue)
            if self.on_progress:
                try:
                    self.on_progress(self.stats)
                except Exception:  # noqa: BLE001 - the summary still follows
                    log.warning("progress display failed at the end")
        return self.stats

    async def _admit(self, source: Any) -> None:
        stats = self.stats
        requeue = self._requeue
        loop = self._loop
        assert loop is not None
        circuit = self.circuit
        exhausted = False
        while not self._stopping:
            cap = self.max_in_flight
            if any(lane.limiter.learning for lane in self.lanes if not lane.retired):
                cap = min(cap, PROBE_IN_FLIGHT)
            now = loop.time()
            probe = False
            if circuit is not None and not circuit.closed:
                # The server is down: nothing goes but one probe at a time, and the
                # run stops once the outage outlasts the window.
                if circuit.expired(now):
                    self._outage_stop(now)
                    return
                if not circuit.can_probe(now):
                    await self._wait_change(circuit.wake_at() - now)
                    continue
                if stats.in_flight >= cap:
                    await self._wait_change(circuit.expires_at() - now)
                    continue
                probe = True
            if stats.in_flight >= cap:
                await self._wait_change(None)
                continue
            job: Job | None = None
            if requeue and (probe or requeue[0][0] <= now):
                job = heapq.heappop(requeue)[2]
                stats.retrying = len(requeue)
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
                job = self._prepare(item)
                if job is None:
                    continue
            elif requeue:
                wait = requeue[0][0] - now
                if wait > LONG_PAUSE:  # delays are checked when requeued; never idle here
                    self._rerun_later(wait, f"the next retry is due in {human_duration(wait)}")
                    return
                await self._wait_change(wait)
                continue
            elif stats.in_flight:
                await self._wait_change(None)
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
            if probe and circuit is not None:
                circuit.start_probe()
                self._probe = job
                stats.probe_every = circuit.interval
            job.lane = lane
            job.sent_at = loop.time()
            job.cum_requests = lane.limiter.cum_requests
            job.cum_tokens = lane.limiter.cum_tokens
            stats.in_flight += 1
            stats.attempts += 1
            stats.tokens_charged += job.tokens
            task = loop.create_task(self._attempt(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wait_for_capacity(self, job: Job) -> Lane | None:
        """Sleep until some key's counters admit ``job`` and spend there; None if stopped."""
        while not self._stopping:
            lanes = [lane for lane in self.lanes if not lane.retired]
            if not lanes:
                self.stop("every API key was refused (401/403) or has no quota left")
                return None
            best: Lane | None = None
            shortest = math.inf
            for lane in lanes:
                wait = lane.limiter.try_acquire(job.tokens)
                if wait <= 0:
                    return lane
                if wait != wait:  # NaN: no finite answer from the counters, wait a second
                    wait = 1.0
                if best is None or wait < shortest:  # inf waits too: a spent budget
                    best, shortest = lane, wait
            assert best is not None
            if shortest > DAILY_STOP_WAIT and self._too_long(best, job, shortest):
                return None
            # Sleep exactly as long as the counters need; only a stop cuts it short.
            await self._sleep_unless_stopped(shortest)
        return None

    def _too_long(self, lane: Lane, job: Job, wait: float) -> bool:
        """Stop the run (to be resumed later) rather than idle for hours.

        A spent daily budget (``--rpd`` / ``--tpd``) never comes back within the run; a
        server that asks for a pause of over an hour (a per-day limit, say) is not
        worth waiting on either, nor is any other wait over :data:`LONG_PAUSE`.
        """
        limiter = lane.limiter
        now = limiter.now()
        key = f" for key ${lane.name}" if lane.name and len(self.lanes) > 1 else ""
        counter = limiter.binding(job.tokens, now)
        if counter is not None and counter.period >= DAILY_PERIOD:
            self.stats.rerun_later = True
            if math.isfinite(wait):
                self.stats.resume_at = time.time() + clamp_seconds(wait)
                when = f"the next request fits in {human_duration(wait)} (at {clock_at(wait)})"
            else:
                when = "it does not refill within a run"
            self.stop(f"daily budget spent ({counter.name} {counter.limit:g}{key}): {when}; "
                      "rerun the same command when the day's limit has reset to resume")
            return True
        pause = limiter.paused_until - now
        if pause > LONG_PAUSE:
            self._rerun_later(pause, f"the server asked to pause for {human_duration(pause)}{key}")
            return True
        if wait > LONG_PAUSE:
            what = f"{counter.name} {counter.limit:g}" if counter is not None else "the limits"
            self._rerun_later(wait, f"the next request would wait {human_duration(wait)} "
                                    f"under {what}{key}")
            return True
        return False

    def _rerun_later(self, wait: float, what: str) -> None:
        """Stop for a wait of over an hour: exit 75, nothing written off, say when."""
        self.stats.rerun_later = True
        self.stats.resume_at = time.time() + clamp_seconds(wait)
        self.stop(f"{what} (until {clock_at(wait)}); rerun the same command then to resume")

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopped.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _wait_change(self, timeout: float | None) -> None:
        self._changed.clear()
        if timeout is None:
            await self._changed.wait()
        elif timeout > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _prepare(self, item: Job | BadLine) -> Job | None:
        """Serialise and cost a new job; report it as a bad line if either fails.

        Input that parses can still be unsendable (a body nested deeper than the JSON
        writer allows, say) or trip the cost function in any way: that line becomes
        one error record and the run goes on.
        """
        if isinstance(item, BadLine):
            self._bad(item.line, item.reason, item.custom_id, input_hash=item.line_hash)
            return None
        try:
            item.payload = orjson.dumps(item.body)
            if item.metadata is not None:
                orjson.dumps(item.metadata)  # it is copied into the output record
        except orjson.JSONEncodeError as exc:
            self._bad(item.line, f"request cannot be sent as JSON: {exc}", item.custom_id,
                      input_hash=item.line_hash)
            return None
        try:
            cost = self.cost(item)
            if isinstance(cost, int):
                item.tokens = cost
            else:
                item.tokens = cost.total
                item.prompt_tokens = cost.prompt_tokens
        except (JobFormatError, ValueError) as exc:
            self._bad(item.line, f"cannot cost request: {exc}", item.custom_id, item.metadata,
                      input_hash=item.line_hash)
            return None
        except Exception as exc:  # noqa: BLE001 - odd input must not end the run
            log.warning("line %d: costing the request raised %s", item.line, type(exc).__name__,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            self._bad(item.line, f"cannot cost request: {type(exc).__name__}: {exc}"[:300],
                      item.custom_id, item.metadata, input_hash=item.line_hash)
            return None
        # Only a flag can make a request too large: a limit from headers may be wrong.
        too_large = self.limiter.too_large(item.tokens)
        if too_large is not None:
            self._fail(item, "request_too_large",
                       f"request needs {item.tokens} tokens, more than the whole "
                       f"{too_large.name} limit of {too_large.ceiling:g}; it can never be "
                       "admitted")
            return None
        return item

    async def _attempt(self, job: Job) -> None:
        stats = self.stats
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
            self.stop(f"cannot write the output files: {exc}")
        finally:
            stats.in_flight -= 1
            self._changed.set()

    def _answered(self, job: Job, lane: Lane, response: Response) -> None:
        stats = self.stats
        self._server_alive(job)
        self._refusals.pop(id(lane), None)
        try:
            self._learn(job, response.ratelimit, force=False)
        except ValueError as exc:  # nonsense rate-limit headers must not cost the answer
            log.warning("ignored rate-limit headers: %s", exc)
        prompt, completion = _usage(response.body)
        record = result_record(job, response.status, response.request_id, response.body,
                               self._record_id())
        extra: dict[str, Any] = {}
        if len(self.lanes) > 1 and lane.name:
            extra["key"] = lane.name
        if job.fallback_from is not None:
            extra["model"] = job.model
            extra["fallback_from"] = job.fallback_from
        if extra:
            record["batchproc"] = extra
        self.sink.write_result(record, job.line_hash)
        # Counted once written: a result that could not be written is not done.
        stats.ok += 1
        if "key" in extra:
            stats.answered_by_key[extra["key"]] += 1
        stats.prompt_tokens += prompt
        stats.completion_tokens += completion
        if prompt or completion:
            used = prompt + completion
            stats.estimated_prompt += job.prompt_tokens
            stats.actual_prompt += prompt
            stats.tokens_charged_answered += job.tokens
            stats.tokens_used_answered += used
            if self.refund_unused and job.tokens > used:
                lane.limiter.refund(job.tokens - used)

    def _learn(self, job: Job, info: Any, *, force: bool, refused: bool = False) -> None:
        """Feed one answer's rate-limit headers to the key's limiter."""
        assert job.lane is not None
        limiter = job.lane.limiter
        if info is None:
            if limiter.learning:
                self._answers_without_headers += 1
                if self._answers_without_headers >= PROBE_ANSWERS:
                    limiter.stop_learning()
                    self.stats.notes.append(
                        "the server sends no x-ratelimit headers: nothing to learn limits "
                        "from, so none applied (set --rpm/--tpm)"
                    )
            return
        was_learning = limiter.learning
        limiter.sync(info.limit_requests, info.remaining_requests, info.limit_tokens,
                     info.remaining_tokens, sent_at=job.sent_at, cum_requests=job.cum_requests,
                     cum_tokens=job.cum_tokens, force=force,
                     refused_tokens=job.tokens if refused else None)
        for name, value in limiter.learned.items():
            short = "rpm" if name == Unit.REQUESTS.per_minute else "tpm"
            if self.stats.limits.get(short) != value:
                self.stats.limits[short] = value
                self.stats.learned.add(short)
                if was_learning or short not in self.stats.limits:
                    log.info("learned %s = %g from the server's headers", short, value)
        if was_learning and not limiter.learning and limiter.learned:
            learned = ", ".join(f"{k} {v:g}" for k, v in limiter.learned.items())
            self.stats.notes.append(f"limits learned from the server: {learned}")
        for name, value in limiter.ignored.items():
            if (id(job.lane), name) not in self._warned:
                self._warned.add((id(job.lane), name))
                told = _implausible(limiter, name, value)
                message = f"ignored the server's stated limit of {told}"
                if job.lane.name and len(self.lanes) > 1:
                    message += f" (key ${job.lane.name})"
                self.stats.notes.append(message)
                log.warning("%s", message)

    def _failed_attempt(self, job: Job, exc: APIError) -> None:
        stats = self.stats
        lane = job.lane
        assert lane is not None
        job.history.append({"attempt": job.attempts, "status": exc.status, "error": exc.kind,
                            "message": exc.message[:300]})
        hint = server_hint(exc)
        if exc.ratelimit is not None:
            self._learn(job, exc.ratelimit, force=True, refused=isinstance(exc, RateLimited))
        if isinstance(exc, RateLimited):
            stats.n_429 += 1
            if is_daily_limit(exc):
                self._server_daily_limit(job, exc)
                return
            # The key's pause, however long: a paused key is avoided, and when every
            # key waits over an hour, admission stops the run (_too_long).
            lane.limiter.rate_limited(hint)
            if self._insists(lane):
                return
        elif hint is not None and hint > LONG_PAUSE:
            # A 503's Retry-After speaks for the whole server, not one key.
            self._rerun_later(hint, f"the server asked to pause for {human_duration(hint)} "
                                    f"(HTTP {exc.status})")
            return
        if self._outage(job, exc, hint):
            return
        if isinstance(exc, (AuthError, QuotaExceeded)):
            # The key, not the request, is at fault: the request is never written as
            # failed, so a rerun with a working key sends it.
            job.attempts -= 1
            if len(self.lanes) > 1:
                if not lane.retired:
                    self._retire(lane, exc)
                if any(not x.retired for x in self.lanes):
                    self._requeue_at(job, 0.0)  # on another key
                else:
                    self.stop("every API key was refused (401/403) or has no quota left")
                return
            name = f" (${lane.name})" if lane.name else ""
            what = "has no quota left" if isinstance(exc, QuotaExceeded) else "was refused"
            self.stop(f"{exc.kind}: the API key{name} {what}: {exc.message}")
            return
        if self._maybe_fallback(job, exc):
            return
        if isinstance(exc, FatalAPIError):
            self._fail(job, exc.kind, exc.message, exc)
            return
        if not self.policy.should_retry(exc, job.attempts) or self._stopping:
            if self._stopping:
                return  # left for a resumed run
            self._fail(job, exc.kind, f"gave up after {job.attempts} attempts: {exc.message}",
                       exc)
            return
        delay = self.policy.delay(exc, job.attempts)
        if isinstance(exc, RateLimited) and delay > LONG_PAUSE:
            delay = 0.0  # the key's pause holds it; another key may take it now
        self._requeue_at(job, delay)
        stats.retries += 1

    def _insists(self, lane: Lane) -> bool:
        """Stop when the server keeps refusing (429) while stating limits that cannot be real."""
        limiter = lane.limiter
        if not limiter.ignored:
            self._refusals.pop(id(lane), None)
            return False
        count = self._refusals[id(lane)] = self._refusals.get(id(lane), 0) + 1
        if count < INSIST_429:
            return False
        told = "; ".join(_implausible(limiter, k, v) for k, v in limiter.ignored.items())
        key = f" for key ${lane.name}" if lane.name and len(self.lanes) > 1 else ""
        self.stats.rerun_later = True
        self.stop(f"the server refused {count} requests in a row (429){key} while stating a "
                  f"limit of {told}; rerun the same command once its limits are right")
        return True

    def _outage(self, job: Job, exc: APIError, hint: float | None) -> bool:
        """Feed the circuit one failure; True if it was an outage's (attempt given back).

        A 5xx or connection failure while the circuit is open, or one that opens it,
        does not count against the request's attempts: it is requeued (admission is
        held by the circuit), and so are, with their attempt back, the recent failures
        that opened it. Nor is a request written off while most recent attempts failed.
        """
        circuit = self.circuit
        assert self._loop is not None
        if circuit is None:
            return False
        if not isinstance(exc, (ServerError, APITimeout)):
            self._server_alive(job)
            return False
        now = self._loop.time()
        probe = job is self._probe
        if probe:
            self._probe = None
        was_open = not circuit.closed
        tripped = circuit.record(True, now, probe=probe, retry_after=hint)
        if not (was_open or tripped):
            if self.policy.should_retry(exc, job.attempts) or not circuit.looks_down(now):
                self._recent.append(job)
                return False
            circuit.trip(now, hint)  # it would be written off while the server looks down
            tripped = True
        if tripped:
            self._outage_began(now)
        else:
            self.stats.probe_every = circuit.interval
        job.attempts -= 1
        if not self._stopping:  # else left for a resumed run
            self._requeue_at(job, 0.0)
            self.stats.retries += 1
        return True

    def _server_alive(self, job: Job) -> None:
        """An answer (any but a 5xx or a connection failure): the server is up."""
        circuit = self.circuit
        if circuit is None:
            return
        assert self._loop is not None
        if job is self._probe:
            self._probe = None
        was_open = not circuit.closed
        now = self._loop.time()
        circuit.record(False, now)
        if was_open:
            stats = self.stats
            stats.outage_seconds = circuit.total_down(now)
            stats.outage_since = stats.probe_every = None
            log.warning("the server answers again; resuming")

    def _outage_began(self, now: float) -> None:
        circuit = self.circuit
        assert circuit is not None
        stats = self.stats
        stats.outages = circuit.outages
        stats.outage_since = time.time()
        stats.probe_every = circuit.interval
        # The failures that opened it did not count either.
        for job in self._recent:
            job.attempts = max(0, job.attempts - 1)
        self._recent.clear()
        log.warning("the server looks down (most recent attempts failed with 5xx or "
                    "connection errors): probing it with one request at a time")

    def _outage_stop(self, now: float) -> None:
        """The server stayed down for the whole outage window: stop, resumable."""
        circuit = self.circuit
        assert circuit is not None
        stats = self.stats
        stats.outage_seconds = circuit.total_down(now)
        stats.rerun_later = True
        since = time.strftime("%H:%M", time.localtime(stats.outage_since or time.time()))
        self.stop(f"the server has been down since {since} (5xx answers or connection "
                  f"errors for {human_duration(circuit.down_for(now))}, longer than the "
                  f"--outage-window of {human_duration(circuit.outage_window)}); nothing was "
                  "written off: rerun the same command to resume")

    def _requeue_at(self, job: Job, delay: float) -> None:
        assert self._loop is not None
        self._seq += 1
        heapq.heappush(self._requeue, (self._loop.time() + delay, self._seq, job))
        self.stats.retrying = len(self._requeue)

    def _retire(self, lane: Lane, exc: APIError) -> None:
        lane.retired = True
        name = lane.name or "?"
        self.stats.retired_keys.append(name)
        message = f"API key ${name} retired: the server refused it ({exc.message})"
        self.stats.notes.append(message)
        log.warning("%s", message)

    def _maybe_fallback(self, job: Job, exc: APIError) -> bool:
        """Switch ``job`` to the fallback model after repeated 429s / model-not-found."""
        fb = self.fallback
        model_missing = exc.status == 404 and exc.code == "model_not_found"
        if fb is None or job.fallback_from is not None or job.model == fb.model or not (
            isinstance(exc, RateLimited) or model_missing
        ):
            return False
        job.model_refusals += 1
        if job.model_refusals < fb.after and not model_missing:
            return False
        job.fallback_from = job.model
        job.model = fb.model
        job.body = dict(job.body, model=fb.model)
        job.payload = orjson.dumps(job.body)
        self.stats.fallbacks += 1
        self._requeue_at(job, 0.0)
        return True

    def _server_daily_limit(self, job: Job, exc: APIError) -> None:
        """The server says a daily limit is spent: stop cleanly (the job stays unanswered)."""
        wait = server_hint(exc)
        when = f" in {human_duration(wait)} (at {clock_at(wait)})" if wait else ""
        self.stats.rerun_later = True
        if wait:
            self.stats.resume_at = time.time() + wait
        self.stop(f"daily limit reached on the server: {exc.message}; it allows more{when}; "
                  "rerun the same command then to resume")

    def _fail(self, job: Job, code: str, message: str, exc: APIError | None = None) -> None:
        self.stats.failed += 1
        self.stats.failures[code] += 1
        self.sink.write_error(error_record(
            record_id=self._record_id(),
            custom_id=job.custom_id, line=job.line, code=code, message=message,
            status=exc.status if exc else None, request_id=exc.request_id if exc else None,
            body=exc.body if exc else None, attempts=job.attempts, history=job.history,
            metadata=job.metadata, input_hash=job.line_hash,
        ))

    def _bad(self, line: int, reason: str, custom_id: str | None = None,
             metadata: Any = None, *, input_hash: int = 0) -> None:
        self.stats.bad_lines += 1
        self.stats.failures["invalid_line"] += 1
        self.sink.write_error(error_record(custom_id=custom_id, line=line, code="invalid_line",
                                           message=reason, metadata=metadata,
                                           record_id=self._record_id(), input_hash=input_hash))

    async def _drain(self) -> None:
        """Wait for in-flight attempts; once stopping, at most ``grace`` seconds more."""
        assert self._loop is not None
        deadline: float | None = None
        stop_waiter = asyncio.ensure_future(self._stopped.wait())
        abort_waiter = asyncio.ensure_future(self._abort.wait())
        try:
            while self._tasks and not self._abort.is_set():
                if self._stopping and deadline is None:
                    deadline = self._loop.time() + self.grace
                timeout = None if deadline is None else deadline - self._loop.time()
                if timeout is not None and timeout <= 0:
                    break
                waiting: set[asyncio.Future[Any]] = set(self._tasks)
                waiting.add(abort_waiter)
                if deadline is None:
                    waiting.add(stop_waiter)
                await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_waiter.cancel()
            abort_waiter.cancel()
        pending = set(self._tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            self.stats.notes.append(
                f"{len(pending)} in-flight requests did not finish within the {self.grace:g}s "
                "grace period; a rerun will send them again"
            )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.progress_interval)
            self.stats.retrying = len(self._requeue)
            if self.circuit is not None and self._loop is not None:
                self.stats.outage_seconds = self.circuit.total_down(self._loop.time())
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
                self.stop(f"cannot write the output files: {exc}")
