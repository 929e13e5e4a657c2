"""The engine: admit requests under the limiter, send many at once, requeue, write.

Data flows one way. A source yields :class:`~processor.jobs.Job` (or
:class:`~processor.jobs.BadLine`) lazily; the admission loop takes the next ready
retry, else the next new job; waits for a free in-flight slot and for the limiter;
then starts one task per attempt. Each task classifies its outcome: a result is
written, a retryable failure goes back into the requeue (a heap ordered by the time
it may go again), a final failure is written to the errors file. Memory is bounded
by ``max_in_flight`` plus the requeue, whatever the size of the input.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .client import Response
from .errors import APIError, AuthError, FatalAPIError, JobFormatError, QuotaExceeded, RateLimited
from .jobs import BadLine, Job, error_record, result_record
from .limits import Limiter
from .retry import RetryPolicy

__all__ = ["Engine", "Sender", "Sink", "Stats"]

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What the engine needs from a client."""

    async def post(self, endpoint: str, payload: bytes) -> Response: ...


class Sink(Protocol):
    """Where records go (a :class:`~processor.jobs.ResultWriter`, or a pipeline's queue)."""

    def write_result(self, record: dict[str, Any], payload: bytes | None = None) -> None: ...

    def write_error(self, record: dict[str, Any]) -> None: ...

    def maybe_sync(self) -> None: ...


@dataclass(slots=True)
class Stats:
    """Live counters of a run; the progress display reads them.

    Attributes:
        total: requests expected (from a line count), or None when unknown.
        ok: requests answered and written to the results file.
        failed: requests that failed for good (not counting bad lines).
        bad_lines: input lines that could not be parsed or validated.
        skipped: requests skipped because a previous run already answered them.
        in_flight: attempts on the wire now.
        retrying: requests waiting in the requeue.
        attempts: HTTP attempts made (retries included).
        n_429: responses with HTTP 429.
        prompt_tokens / completion_tokens: from the responses' ``usage``.
        tokens_charged: tokens charged at admission (estimates).
        failures: final failures by reason.
        stop_reason: why the run stopped early, if it did.
    """

    total: int | None = None
    ok: int = 0
    failed: int = 0
    bad_lines: int = 0
    skipped: int = 0
    retried_failed: int = 0
    changed: int = 0
    changed_examples: list[str] = field(default_factory=list)
    in_flight: int = 0
    retrying: int = 0
    attempts: int = 0
    retries: int = 0
    n_429: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_charged: int = 0
    estimated_prompt: int = 0
    actual_prompt: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    failures: Counter[str] = field(default_factory=Counter)
    stop_reason: str | None = None
    limits: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        """Requests finished this run, one way or another."""
        return self.ok + self.failed + self.bad_lines

    @property
    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return end - self.started

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["failures"] = dict(self.failures)
        out["elapsed_s"] = round(self.elapsed, 3)
        out.pop("started")
        out.pop("finished")
        return out


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
        cost: a job's admission cost in tokens; may raise ``ValueError`` or
            :class:`~processor.errors.JobFormatError` for a request that cannot be costed.
        policy: retry policy.
        max_in_flight: most attempts on the wire at once.
        on_progress: called with the live :class:`Stats` every ``progress_interval`` s.
        grace: seconds in-flight requests get to finish after a stop.
    """

    def __init__(
        self,
        client: Sender,
        limiter: Limiter,
        sink: Sink,
        *,
        cost: Callable[[Job], int],
        policy: RetryPolicy | None = None,
        max_in_flight: int = 100,
        on_progress: Callable[[Stats], None] | None = None,
        progress_interval: float = 0.25,
        grace: float = 30.0,
        stats: Stats | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.client = client
        self.limiter = limiter
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
            await self._admit(iter(source))
            await self._drain()
        finally:
            ticker.cancel()
            self.stats.finished = time.monotonic()
            self.stats.retrying = len(self._requeue)
            if self.on_progress:
                self.on_progress(self.stats)
        return self.stats

    async def _admit(self, source: Any) -> None:
        stats = self.stats
        limiter = self.limiter
        requeue = self._requeue
        loop = self._loop
        assert loop is not None
        exhausted = False
        while not self._stopping:
            if stats.in_flight >= self.max_in_flight:
                await self._wait_change(None)
                continue
            job: Job | None = None
            if requeue and requeue[0][0] <= loop.time():
                job = heapq.heappop(requeue)[2]
                stats.retrying = len(requeue)
            elif not exhausted:
                item = next(source, None)
                if item is None:
                    exhausted = True
                    continue
                job = self._prepare(item)
                if job is None:
                    continue
            elif requeue:
                await self._wait_change(requeue[0][0] - loop.time())
                continue
            elif stats.in_flight:
                await self._wait_change(None)
                continue
            else:
                return
            while (wait := limiter.try_acquire(job.tokens)) > 0:
                # Sleep exactly as long as the counters need; only a stop cuts it short.
                await self._sleep_unless_stopped(wait)
                if self._stopping:
                    return  # never sent: a resumed run will pick it up
            stats.in_flight += 1
            stats.attempts += 1
            stats.tokens_charged += job.tokens
            task = loop.create_task(self._attempt(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        """Cost and serialise a new job; report it as a bad line if that fails."""
        if isinstance(item, BadLine):
            self._bad(item.line, item.reason, item.custom_id)
            return None
        try:
            item.tokens = self.cost(item)
        except (JobFormatError, ValueError) as exc:
            self._bad(item.line, f"cannot cost request: {exc}", item.custom_id, item.metadata)
            return None
        too_large = self.limiter.too_large(item.tokens)
        if too_large is not None:
            self._fail(item, "request_too_large",
                       f"request needs {item.tokens} tokens, more than the whole "
                       f"{too_large.name} limit of {too_large.limit:g}; it can never be admitted")
            return None
        item.payload = orjson.dumps(item.body)
        return item

    async def _attempt(self, job: Job) -> None:
        stats = self.stats
        job.attempts += 1
        try:
            response = await self.client.post(job.url, job.payload)
        except APIError as exc:
            self._failed_attempt(job, exc)
        else:
            if response.ratelimit is not None:
                info = response.ratelimit
                self.limiter.observe(info.limit_requests, info.limit_tokens)
            prompt, completion = _usage(response.body)
            stats.prompt_tokens += prompt
            stats.completion_tokens += completion
            stats.ok += 1
            self.sink.write_result(
                result_record(job, response.status, response.request_id, response.body),
                job.payload,
            )
        finally:
            stats.in_flight -= 1
            self._changed.set()

    def _failed_attempt(self, job: Job, exc: APIError) -> None:
        stats = self.stats
        job.history.append({"attempt": job.attempts, "status": exc.status, "error": exc.kind,
                            "message": exc.message[:300]})
        info = exc.ratelimit
        if info is not None:
            self.limiter.observe(info.limit_requests, info.limit_tokens)
        if isinstance(exc, RateLimited):
            stats.n_429 += 1
            self.limiter.rate_limited(exc.retry_after)
        if isinstance(exc, FatalAPIError):
            self._fail(job, exc.kind, exc.message, exc)
            if isinstance(exc, (AuthError, QuotaExceeded)) and not (
                isinstance(exc, AuthError) and exc.status == 403
            ):
                self.stop(f"{exc.kind}: {exc.message}")
            return
        if not self.policy.should_retry(exc, job.attempts) or self._stopping:
            if self._stopping:
                return  # left for a resumed run
            self._fail(job, exc.kind, f"gave up after {job.attempts} attempts: {exc.message}",
                       exc)
            return
        assert self._loop is not None
        ready = self._loop.time() + self.policy.delay(exc, job.attempts)
        self._seq += 1
        heapq.heappush(self._requeue, (ready, self._seq, job))
        stats.retries += 1
        stats.retrying = len(self._requeue)

    def _fail(self, job: Job, code: str, message: str, exc: APIError | None = None) -> None:
        self.stats.failed += 1
        self.stats.failures[code] += 1
        self.sink.write_error(error_record(
            custom_id=job.custom_id, line=job.line, code=code, message=message,
            status=exc.status if exc else None, request_id=exc.request_id if exc else None,
            body=exc.body if exc else None, attempts=job.attempts, history=job.history,
            metadata=job.metadata,
        ))

    def _bad(self, line: int, reason: str, custom_id: str | None = None,
             metadata: Any = None) -> None:
        self.stats.bad_lines += 1
        self.stats.failures["invalid_line"] += 1
        self.sink.write_error(error_record(custom_id=custom_id, line=line, code="invalid_line",
                                           message=reason, metadata=metadata))

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
            if self.on_progress is not None:
                self.on_progress(self.stats)
            self.sink.maybe_sync()

