"""The Redis limiter against a real ``redis-server``: the Lua bucket's exact waits, debt,
refunds and refill on the server's clock, atomicity under concurrent callers, shared
429s and header mirrors, key names, and failing closed while Redis is down."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from processor.errors import ConfigError
from processor.limits import DAY, Counter, Unit
from processor.limits.redis import (
    RedisBudget,
    RedisLimiter,
    check_url,
    fingerprint,
    mask_url,
    namespace_of,
)
from tests.redisfix import RedisServer

Make = Callable[..., RedisLimiter]


@pytest.fixture
async def limiters(redis_server: RedisServer) -> AsyncIterator[Make]:
    """``make(counters, budget=None)``: a limiter on the key "k" of bucket "m"; each
    call with no budget opens its own connection (another worker)."""
    budgets: list[RedisBudget] = []

    def make(*counters: Counter, budget: RedisBudget | None = None, url: str | None = None,
             **kw: Any) -> RedisLimiter:
        if budget is None:
            budget = RedisBudget(url or redis_server.url, namespace="test", **kw)
            budgets.append(budget)
        return RedisLimiter(budget, [budget.key("k", "m")], list(counters), [])

    yield make
    for budget in budgets:
        await budget.aclose()


def rpm(limit: float) -> Counter:
    return Counter(Unit.REQUESTS, limit)


def tpm(limit: float) -> Counter:
    return Counter(Unit.TOKENS, limit)


class Since:
    """Seconds on this side since it was made: more than Redis's clock moved between any
    two calls sent after it (Redis runs each call between its send and its answer). Waits
    the server works out on its clock are bounded with it, not with a guess of how fast
    this machine is (a loaded one sits long between two calls)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start + 1e-3  # the wall clock Redis reads may slew


async def settle(limiter: RedisLimiter) -> None:
    """Wait for the limiter's background feedback (refunds, 429s, mirrors) to land."""
    tasks = list(limiter.budget._tasks)
    if tasks:
        await asyncio.wait(tasks)


async def test_a_new_bucket_starts_empty_and_says_the_exact_wait(limiters: Make) -> None:
    limiter = limiters(rpm(60))  # one a second, a burst of one
    wait = await limiter.acquire(1)
    assert 0.95 < wait <= 1.0
    assert limiter.binding(1, 0.0) is limiter.counters[0]
    await asyncio.sleep(wait)
    since = Since()
    assert await limiter.acquire(1) == 0.0
    again = await limiter.acquire(1)
    assert 1.0 - since() < again <= 1.0  # spent: a whole second to the next


async def test_a_large_request_runs_into_debt_then_later_ones_wait(limiters: Make) -> None:
    limiter = limiters(tpm(600))  # 10 tokens a second, a counter of 10
    await asyncio.sleep(await limiter.acquire(50))  # waits for a full counter only
    since = Since()
    assert await limiter.acquire(50) == 0.0  # level 10 - 50 = -40
    wait = await limiter.acquire(10)
    assert 5.0 - since() < wait <= 5.0  # (10 + 40) / 10 a second


async def test_a_refund_is_a_negative_debit(limiters: Make) -> None:
    limiter = limiters(rpm(6000), tpm(600))
    await asyncio.sleep(await limiter.acquire(50))
    assert await limiter.acquire(50) == 0.0
    limiter.refund(40)  # the answer used 10 of the 50 charged
    await settle(limiter)
    assert await limiter.acquire(10) <= 1.0 + 1e-6
    limiter.refund(10_000)  # never past a full counter
    await settle(limiter)
    state = await limiter.budget.client.hgetall(limiter.keys[0])
    assert float(state[b"l:tpm"]) == pytest.approx(10.0)
    await asyncio.sleep(0.01)
    since = Since()
    assert await limiter.acquire(10) == 0.0
    assert await limiter.acquire(1) > 0.1 - since()  # the refund did not overfill it


async def test_refill_follows_the_servers_clock(limiters: Make) -> None:
    limiter = limiters(rpm(60))
    around = Since()
    first = await limiter.acquire(1)
    between = Since()
    await asyncio.sleep(0.4)
    at_least = between() - 2e-3  # the time between the two calls, less the slew allowed
    second = await limiter.acquire(1)
    # What refilled between the two calls: no less than the time between them, no more
    # than the time around them (however long this machine took over the sleep).
    assert at_least <= first - second <= around()


async def test_requests_and_tokens_are_taken_together_or_not_at_all(limiters: Make) -> None:
    """A request the token counter refuses spends no request either (one atomic call)."""
    limiter = limiters(rpm(6000), tpm(600))
    await limiter.acquire(1)  # starts the counters' clocks (empty)
    await asyncio.sleep(1.0)  # both full: 100 requests, 10 tokens
    assert await limiter.acquire(10) == 0.0
    for _ in range(5):
        assert await limiter.acquire(10) > 0  # tokens short: nothing spent
    client = limiter.budget.client
    state = await client.hgetall(limiter.keys[0])
    # The request counter was charged for the one admitted request only.
    assert float(state[b"cum:q"]) == 1.0
    assert float(state[b"l:rpm"]) >= 100 - 1 - 1e-6


async def test_concurrent_workers_never_overspend(limiters: Make) -> None:
    """Eight workers, each its own connection, race for a counter of 20 requests: the
    atomic script admits 20 (give or take what refills during the race), never more."""
    workers = [limiters(rpm(1200)) for _ in range(8)]  # 20 a second, a burst of 20
    await workers[0].acquire(1)
    await asyncio.sleep(1.2)  # full: 20
    start = time.monotonic()
    waits = await asyncio.gather(*(w.acquire(1) for w in workers for _ in range(10)))
    took = time.monotonic() - start
    admitted = sum(1 for w in waits if w == 0.0)
    assert 20 <= admitted <= 20 + 20 * took + 1
    refused = [w for w in waits if w > 0]
    assert refused and all(0 < w <= 1 / 20 + 1e-6 for w in refused[-5:])


async def test_a_429_pauses_and_drains_every_worker(limiters: Make) -> None:
    one, other = limiters(rpm(6000)), limiters(rpm(6000))
    await one.acquire(1)
    await asyncio.sleep(0.5)
    since = Since()
    one.rate_limited(2.0)
    await settle(one)
    wait = await other.acquire(1)  # another worker, another connection
    assert 2.0 - since() < wait <= 2.0
    state = {k.decode(): float(v) for k, v in
             (await other.budget.client.hgetall(other.keys[0])).items()}
    # Paused 2 s from the 429 (on Redis's clock); the wait was what was left of it.
    assert state["pause"] - state["hit_at"] == pytest.approx(2.0)
    assert wait == pytest.approx(state["pause"] - state["t:rpm"], abs=1e-6)
    # Drained (it held 50 of 100), refilling from empty since, at 0.9 x the rate: the
    # level when `other` asked, from the server's own times (however long that took).
    assert state["scale"] == pytest.approx(0.9)
    since_hit = state["t:rpm"] - state["hit_at"]
    refilled = since_hit * 100 * (0.9 + since_hit * 0.01)  # the scale recovers 1%/s
    assert state["l:rpm"] == pytest.approx(refilled, rel=1e-6, abs=1e-6)
    assert state["l:rpm"] < 50


async def test_the_servers_remaining_sets_the_shared_mirror(limiters: Make) -> None:
    one, other = limiters(rpm(6000)), limiters(rpm(6000))
    await asyncio.sleep(await one.acquire(1))
    assert await one.acquire(1) == 0.0
    # The server says: 60/min, nothing left (another client spent it).
    since = Since()
    one.sync(60, 0, None, None, sent_at=one.now(), cum_requests=one.cum_requests,
             cum_tokens=one.cum_tokens, force=True)
    await settle(one)
    other.server.mirrors.update(one.server.mirrors)  # it heard the headers too
    wait = await other.acquire(1)
    assert 1.0 - since() < wait <= 1.0  # one request at the server's 1/s


async def test_daily_budget_is_shared(limiters: Make) -> None:
    day = Counter(Unit.REQUESTS, 3, period=DAY, burst_seconds=DAY, initial=3, refill=False)
    one = limiters(day)
    other = limiters(Counter(Unit.REQUESTS, 3, period=DAY, burst_seconds=DAY, initial=3,
                             refill=False))
    assert [await one.acquire(1), await other.acquire(1), await one.acquire(1)] == [0, 0, 0]
    wait = await other.acquire(1)
    assert wait > DAY / 3 * 0.99 and other.binding(1, 0).period == DAY


async def test_redis_down_fails_closed_then_recovers(redis_server: RedisServer,
                                                     limiters: Make) -> None:
    limiter = limiters(rpm(60_000))
    await limiter.acquire(1)
    redis_server.stop()
    waits = [await limiter.acquire(1) for _ in range(4)]
    assert all(w > 0 for w in waits) and waits == sorted(waits)  # backing off
    assert limiter.trouble is not None and "waiting for Redis" in limiter.trouble
    assert limiter.unavailable is None
    redis_server.start()
    for _ in range(50):
        if await limiter.acquire(1) == 0.0:
            break
        await asyncio.sleep(0.05)
    assert limiter.trouble is None


async def test_redis_down_too_long_is_unavailable(redis_server: RedisServer,
                                                  limiters: Make) -> None:
    limiter = limiters(rpm(60_000), give_up_after=0.2, timeout=0.5)
    redis_server.stop()
    await limiter.acquire(1)
    await asyncio.sleep(0.25)
    assert await limiter.acquire(1) == float("inf")
    assert limiter.unavailable is not None and "unreachable" in limiter.unavailable


async def test_the_password_never_shows(tmp_path: Any) -> None:
    from tests.redisfix import BINARY
    if BINARY is None:
        pytest.skip("no redis-server binary")
    server = RedisServer.on_free_port(tmp_path, password="s3cret-pass-word")
    try:
        url = f"redis://:s3cret-pass-word@127.0.0.1:{server.port}/0"
        budget = RedisBudget(url, namespace="t")
        limiter = RedisLimiter(budget, [budget.key("k", "m")], [rpm(60_000)], [])
        await budget.check()
        await asyncio.sleep(await limiter.acquire(1))
        assert await limiter.acquire(1) == 0.0
        server.stop()
        await limiter.acquire(1)
        assert limiter.trouble and "s3cret" not in limiter.trouble and "***" in limiter.trouble
        await budget.aclose()
        wrong = RedisBudget(url.replace("s3cret", "wrong"), namespace="t")
        server.start()
        with pytest.raises(ConfigError) as info:
            await wrong.check()
        assert "wrong-pass" not in str(info.value) and "***" in str(info.value)
        await wrong.aclose()
    finally:
        server.stop()


def test_names_and_urls() -> None:
    assert mask_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("rediss://user:pw@h/2") == "rediss://user:***@h/2"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert namespace_of("https://user:pw@api.openai.com/v1/") == "api.openai.com/v1"
    fp = fingerprint("sk-secret-key-123456")
    assert len(fp) == 16 and "secret" not in fp and fp == fingerprint("sk-secret-key-123456")
    assert fp != fingerprint("sk-secret-key-123457") and fingerprint(None) == "nokey"
    for bad in ("http://h:1/0", "redis://h:1/x", "redis:///0", "redis://h:99999/0"):
        with pytest.raises(ConfigError):
            check_url(bad)


def test_redis_py_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigError, match="pip install 'batchproc\\[redis\\]'"):
        RedisBudget("redis://127.0.0.1:1/0", namespace="t")


async def test_scope_key_counters_are_shared_by_the_keys_models(redis_server: RedisServer
                                                               ) -> None:
    """--limit-scope key: the key-wide counter lives in one hash every model passes."""
    budget = RedisBudget(redis_server.url, namespace="scope")
    key_wide = rpm(1200)  # 20 a second for the whole key
    a = RedisLimiter(budget, [budget.key("k", "a"), budget.key("k", None)], [rpm(60_000)],
                     [key_wide])
    b = RedisLimiter(budget, [budget.key("k", "b"), budget.key("k", None)], [rpm(60_000)],
                     [key_wide])
    await a.acquire(1)
    await b.acquire(1)
    await asyncio.sleep(1.1)  # the key-wide counter is full: 20
    since = Since()
    waits = [await (a if i % 2 else b).acquire(1) for i in range(40)]
    # 20, and what refilled at 20 a second while the 40 calls ran (not 40: one counter).
    assert 20 <= sum(1 for w in waits if w == 0) <= 20 + 20 * since() + 1
    assert a.binding(1, 0) is key_wide or b.binding(1, 0) is key_wide
    await budget.aclose()


async def test_nonsense_remaining_headers_stay_bounded(limiters: Make) -> None:
    limiter = limiters(rpm(6000))
    await asyncio.sleep(await limiter.acquire(1))
    assert await limiter.acquire(1) == 0.0
    limiter.sync(6000, -1e300, None, None, sent_at=limiter.now(),
                 cum_requests=limiter.cum_requests, cum_tokens=limiter.cum_tokens, force=True)
    await settle(limiter)
    assert await limiter.acquire(1) < 1.0  # at worst one request's wait, not forever
