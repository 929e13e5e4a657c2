"""The engine on a fake clock: admission timing, requeue order, the grace period and a
stop, through the same waiting code the product runs (the engine's injected ``sleep``
and ``clock``), without sleeping for real.

:class:`FakeClock` keeps the timers; :meth:`FakeClock.drive` lets every task run until
all of them wait on a timer, then moves time to the earliest one. A test that hangs
fails instead (no timer left while the run is not done).
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import pytest

from processor.client.answers import Response
from processor.errors import APIError, ServerError
from processor.jobs import Job
from processor.limits.limiter import Limiter
from processor.run.engine import Engine
from processor.run.retry import RetryPolicy
from processor.stats import Stats, StopReason

T = TypeVar("T")


class FakeClock:
    """A monotonic clock and an ``async sleep`` that only time moved by :meth:`drive` ends."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), self._seq, future))
        await future

    async def drive(self, coro: Coroutine[Any, Any, T], *, at_most: float = 1e6) -> T:
        """Run ``coro`` to its end, moving time from timer to timer."""
        task = asyncio.ensure_future(coro)
        while not task.done():
            for _ in range(100):  # let every ready task run to its next wait
                await asyncio.sleep(0)
                if task.done():
                    return task.result()
            while self._timers and self._timers[0][2].done():  # cancelled sleeps
                heapq.heappop(self._timers)
            if not self._timers:
                task.cancel()
                raise AssertionError(f"deadlock at t={self.now}: nothing left to wake")
            when, _, future = heapq.heappop(self._timers)
            assert when <= at_most, f"time ran past {at_most}"
            self.now = max(self.now, when)
            future.set_result(None)
        return task.result()


class Server:
    """Answers like the API after ``latency`` fake seconds; ``fail`` decides per attempt.

    Records (time, custom_id) of every request it receives.
    """

    def __init__(self, clock: FakeClock, latency: float = 1.0,
                 fail: Callable[[str, int], APIError | None] | None = None) -> None:
        self.clock = clock
        self.latency = latency
        self.fail = fail
        self.sent: list[tuple[float, str]] = []
        self.tries: dict[str, int] = {}

    async def post(self, endpoint: str, payload: bytes, *,
                   headers: Mapping[str, str] | None = None,
                   model: str | None = None) -> Response:
        import orjson

        body = orjson.loads(payload)
        cid = body["messages"][0]["content"]
        self.sent.append((self.clock.now, cid))
        n = self.tries[cid] = self.tries.get(cid, 0) + 1
        await self.clock.sleep(self.latency)
        error = self.fail(cid, n) if self.fail else None
        if error is not None:
            raise error
        return Response(200, {"id": "chatcmpl-1", "object": "chat.completion",
                              "choices": [{"index": 0, "message": {"role": "assistant",
                                                                   "content": "ok"},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                        "total_tokens": 6}}, "req_1")


class Sink:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None:
        self.results.append(record)

    def write_error(self, record: dict[str, Any]) -> None:
        self.errors.append(record)

    def maybe_sync(self) -> None:
        pass


def jobs(n: int) -> list[Job]:
    return [Job(custom_id=f"r{i}", url="/v1/chat/completions", line=i + 1,
                body={"model": "m", "messages": [{"role": "user", "content": f"r{i}"}]})
            for i in range(n)]


def engine(clock: FakeClock, server: Server, *, rpm: float | None = None,
           **kw: Any) -> tuple[Engine, Sink]:
    sink = Sink()
    limiter = Limiter.per_minute(rpm, None, clock=clock)
    kw.setdefault("policy", RetryPolicy(max_attempts=5, base=1.0, cap=60.0, rng=lambda: 0.0))
    return Engine(server, limiter, sink, cost=lambda job: 10, clock=clock, sleep=clock.sleep,
                  wall=lambda: 1_000_000.0, progress_interval=5.0, **kw), sink


async def test_admission_follows_the_rate_on_the_fake_clock() -> None:
    clock = FakeClock()
    server = Server(clock, latency=0.5)
    eng, sink = engine(clock, server, rpm=60)  # one a second, a burst of one second
    stats = await clock.drive(eng.run(jobs(10)))
    assert stats.ok == 10 and len(sink.results) == 10
    times = [t for t, _ in server.sent]
    # At most one more than the seconds elapsed, at any point: never faster than 60/min.
    for k, t in enumerate(times):
        assert k + 1 <= t + 1 + 1e-9, times
    # And no idling: the last goes within a second of when the rate allows it.
    assert times[-1] <= len(times), times
    assert clock.now == pytest.approx(times[-1] + 0.5)


async def test_retries_go_in_the_order_they_are_due() -> None:
    """r0 is told to come back in 5 s, r1 in 2 s: r1 goes first, each exactly on time."""
    clock = FakeClock()
    hints = {"r0": 5.0, "r1": 2.0}

    def fail(cid: str, n: int) -> APIError | None:
        if n == 1 and cid in hints:
            return ServerError("busy", status=503, retry_after=hints[cid])
        return None

    server = Server(clock, latency=1.0, fail=fail)
    eng, sink = engine(clock, server, outage_window=0)
    stats = await clock.drive(eng.run(jobs(2)))
    assert stats.ok == 2 and stats.retries == 2 and stats.retrying == 0
    # Both sent at 0, both fail at 1; r1 is due at 1+2, r0 at 1+5 (rng 0: no jitter).
    assert server.sent == [(0.0, "r0"), (0.0, "r1"), (3.0, "r1"), (6.0, "r0")]


async def test_the_grace_period_ends_a_stop_on_the_fake_clock() -> None:
    """A stop at t=2 with answers that take 100 s: the run ends at 2 + grace (30 s)."""
    clock = FakeClock()
    server = Server(clock, latency=100.0)
    eng, sink = engine(clock, server, max_in_flight=3, grace=30.0)

    async def stop_at(t: float) -> None:
        await clock.sleep(t)
        eng.stop("SIGINT received", StopReason.SIGINT)

    async def both() -> Stats:
        stopper = asyncio.ensure_future(stop_at(2.0))
        try:
            return await eng.run(jobs(10))
        finally:
            stopper.cancel()

    stats = await clock.drive(both())
    assert clock.now == pytest.approx(32.0)
    assert len(server.sent) == 3 and stats.ok == 0 and sink.errors == []
    assert stats.stopped is StopReason.SIGINT
    assert any("did not finish within the 30s grace period" in n for n in stats.notes)


async def test_answers_within_the_grace_period_are_kept() -> None:
    clock = FakeClock()
    server = Server(clock, latency=10.0)
    eng, sink = engine(clock, server, max_in_flight=3, grace=30.0)

    async def both() -> Stats:
        async def stop_soon() -> None:
            await clock.sleep(1.0)
            eng.stop()

        stopper = asyncio.ensure_future(stop_soon())
        try:
            return await eng.run(jobs(10))
        finally:
            stopper.cancel()

    stats = await clock.drive(both())
    assert clock.now == pytest.approx(10.0)  # not a second of the grace more than needed
    assert stats.ok == 3 and len(sink.results) == 3
    assert stats.stopped is StopReason.CALLER
    assert not any("grace period" in n for n in stats.notes)


async def test_abandoning_in_flight_ends_the_grace_period_at_once() -> None:
    clock = FakeClock()
    server = Server(clock, latency=100.0)
    eng, sink = engine(clock, server, max_in_flight=2, grace=60.0)

    async def both() -> Stats:
        async def two_signals() -> None:
            await clock.sleep(1.0)
            eng.stop("SIGINT received", StopReason.SIGINT)
            await clock.sleep(4.0)
            eng.stop("SIGTERM received", StopReason.SIGTERM)
            eng.abandon_in_flight("second SIGINT")

        stopper = asyncio.ensure_future(two_signals())
        try:
            return await eng.run(jobs(5))
        finally:
            stopper.cancel()

    stats = await clock.drive(both())
    assert clock.now == pytest.approx(5.0)
    assert stats.abandoned and stats.stopped is StopReason.SIGINT  # the first stop's
    assert "second SIGINT: 2 in-flight requests abandoned" in stats.notes
    assert stats.ok == 0 and sink.results == [] and stats.in_flight == 0


async def test_a_stop_cuts_a_long_wait_for_capacity_short() -> None:
    """rpm 1 (a burst of one second's worth): the first request waits most of a minute
    for capacity; a stop at 10 s ends the wait then, and nothing was sent."""
    clock = FakeClock()
    server = Server(clock, latency=0.1)
    eng, sink = engine(clock, server, rpm=1)

    async def both() -> Stats:
        async def stop_at_10() -> None:
            await clock.sleep(10.0)
            eng.stop()

        stopper = asyncio.ensure_future(stop_at_10())
        try:
            return await eng.run(jobs(3))
        finally:
            stopper.cancel()

    stats = await clock.drive(both())
    assert clock.now == pytest.approx(10.0)
    assert server.sent == [] and stats.ok == 0 and stats.attempts == 0


async def test_a_pause_over_an_hour_stops_for_a_rerun_at_the_right_time() -> None:
    clock = FakeClock()

    def fail(cid: str, n: int) -> APIError | None:
        return ServerError("maintenance", status=503, retry_after=7200)

    server = Server(clock, latency=1.0, fail=fail)
    eng, sink = engine(clock, server, max_in_flight=1)
    stats = await clock.drive(eng.run(jobs(3)))
    assert stats.stopped is StopReason.RERUN_LATER and stats.rerun_later
    assert stats.resume_at == 1_000_000.0 + 7200
    assert stats.failed == 0 and sink.errors == [] and len(server.sent) == 1
    assert clock.now == pytest.approx(1.0)


async def test_the_in_flight_gate_is_the_engines_own_count() -> None:
    """A caller that resets ``stats.in_flight`` does not open the gate wider."""
    clock = FakeClock()
    peak = 0

    class Watching(Server):
        async def post(self, *args: Any, **kw: Any) -> Response:
            nonlocal peak
            eng.stats.in_flight = 0  # a careless caller
            peak = max(peak, eng.in_flight)
            return await super().post(*args, **kw)

    watching = Watching(clock, latency=1.0)
    eng, sink = engine(clock, watching, max_in_flight=2)
    stats = await clock.drive(eng.run(jobs(6)))
    assert stats.ok == 6 and peak == 2
    assert [t for t, _ in watching.sent] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
