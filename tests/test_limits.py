"""Counters and the limiter, on a fake clock that never sleeps (processor.limits).

Rates are chosen so that every wait is a binary fraction (1, 2, 4, 8, 128 units a second):
the arithmetic is then exact and the expected admission times can be compared with ``==``.
"""

from __future__ import annotations

import math

import pytest

from processor.limits import DAY, Counter, Limiter, Unit


class FakeTime:
    """A clock and a sleep that advances it by exactly the time asked for."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"slept for {seconds!r}"
        assert self.t + seconds != self.t, f"sleep of {seconds!r} at t={self.t!r} cannot advance"
        self.sleeps.append(seconds)
        self.t += seconds


def limiter(
    rpm: float | None, tpm: float | None, ft: FakeTime, *, burst_seconds: float = 1.0
) -> Limiter:
    return Limiter.per_minute(rpm, tpm, burst_seconds=burst_seconds, clock=ft)


async def take(lim: Limiter, ft: FakeTime, tokens: int) -> None:
    """Admit one request as the engine does: try, sleep exactly the wait returned, retry."""
    while (wait := lim.try_acquire(tokens)) > 0:
        await ft.sleep(wait)


async def admit(lim: Limiter, ft: FakeTime, sizes: list[int]) -> list[float]:
    """Admit each size in turn; return the admission times."""
    times = []
    for tokens in sizes:
        await take(lim, ft, tokens)
        times.append(ft.t)
    return times


def max_in_window(times: list[float], weights: list[int], width: float) -> float:
    """The largest total weight admitted in any half-open window [t_i, t_i + width)."""
    best = 0.0
    j = 0
    total = 0.0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + width:
            total += weights[j]
            j += 1
        best = max(best, total)
        total -= weights[i]
    return best


# --------------------------------------------------------------------------- Counter


@pytest.mark.parametrize(
    ("limit", "period", "amount", "expected"),
    [
        (60, 60.0, 1, 1.0),
        (240, 60.0, 1, 0.25),
        (120, 60.0, 1, 0.5),
        (6, 60.0, 1, 10.0),
        (480, 60.0, 8, 1.0),
        (480, 60.0, 4, 0.5),
        (86_400, 86_400.0, 1, 1.0),
    ],
    ids=["60rpm", "240rpm", "120rpm", "6rpm", "480tpm-full", "480tpm-half", "per-day"],
)
def test_counter_starts_empty(limit: float, period: float, amount: int, expected: float) -> None:
    c = Counter(Unit.TOKENS, limit, period=period, now=100.0)
    assert c.available(100.0) == 0.0
    assert c.wait_time(amount, 100.0) == pytest.approx(expected)
    assert c.wait_time(amount, 100.0 + expected) == 0.0


@pytest.mark.parametrize(
    ("limit", "burst_seconds", "expected_size"),
    [
        (600, 1.0, 10.0),
        (600, 5.0, 50.0),
        (600, 0.5, 5.0),
        (6, 1.0, 1.0),  # a tenth of a unit a second still holds one whole unit
        (60, 0.0, 1.0),
        (90_000, 1.0, 1_500.0),
    ],
    ids=["1s", "5s", "half-s", "floor-of-one", "no-burst", "90k-tpm"],
)
def test_counter_burst_cap(limit: float, burst_seconds: float, expected_size: float) -> None:
    c = Counter(Unit.TOKENS, limit, burst_seconds=burst_seconds, now=0.0)
    assert c.size == pytest.approx(expected_size)
    # However long it idles, credit stops at the cap.
    assert c.available(10_000.0) == pytest.approx(expected_size)
    assert c.available(1_000_000.0) == pytest.approx(expected_size)


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(0.0, 0.0), (0.25, 2.5), (0.5, 5.0), (1.0, 10.0), (3.0, 10.0)],
    ids=["now", "quarter", "half", "full", "capped"],
)
def test_counter_refills_linearly(elapsed: float, expected: float) -> None:
    c = Counter(Unit.TOKENS, 600, now=0.0)
    assert c.available(elapsed) == pytest.approx(expected)


def test_counter_initial_credit_is_capped() -> None:
    assert Counter(Unit.TOKENS, 600, now=0.0, initial=4).available(0.0) == 4
    assert Counter(Unit.TOKENS, 600, now=0.0, initial=1_000).available(0.0) == 10


def test_counter_without_now_starts_its_clock_at_first_use() -> None:
    c = Counter(Unit.TOKENS, 60)
    assert c.wait_time(1, 5_000.0) == 1.0
    assert c.available(5_000.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("limit", "period"),
    [(0, 60.0), (-5, 60.0), (60, 0.0), (60, -1.0), (math.nan, 60.0)],
    ids=["zero-limit", "negative-limit", "zero-period", "negative-period", "nan-limit"],
)
def test_counter_rejects_bad_limits(limit: float, period: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Counter(Unit.TOKENS, limit, period=period)


def test_counter_oversize_amount_waits_for_a_full_counter_then_runs_into_debt() -> None:
    c = Counter(Unit.TOKENS, 480, now=0.0)  # 8 a second, size 8
    assert c.wait_time(40, 0.0) == 1.0  # waits only for a full counter, not 5 s
    assert c.wait_time(40, 1.0) == 0.0
    c.spend(40, 1.0)
    assert c.available(1.0) == -32.0
    # The debt is repaid before anything else goes: (1 + 32) / 8 s.
    assert c.wait_time(1, 1.0) == 4.125


def test_counter_drain_drops_credit_but_keeps_debt() -> None:
    c = Counter(Unit.TOKENS, 600, now=0.0, initial=10)
    c.drain(0.0)
    assert c.available(0.0) == 0.0
    c.spend(5, 0.0)
    c.drain(0.0)
    assert c.available(0.0) == -5.0


@pytest.mark.parametrize(
    ("new_limit", "at", "expected_rate", "expected_size", "expected_level"),
    [
        # Refilled at the old rate (1/s) up to the change, then the new rate applies.
        (600, 2.0, 10.0, 100.0, 2.0),
        # Lowered: saved credit is cut to the new, smaller size.
        (6, 8.0, 0.1, 1.0, 1.0),
        # Same limit: nothing changes but the refill.
        (60, 4.0, 1.0, 10.0, 4.0),
    ],
    ids=["raised", "lowered-caps-credit", "unchanged"],
)
def test_counter_set_limit(
    new_limit: float,
    at: float,
    expected_rate: float,
    expected_size: float,
    expected_level: float,
) -> None:
    c = Counter(Unit.TOKENS, 60, burst_seconds=10.0, now=0.0)
    c.set_limit(new_limit, at)
    assert c.limit == new_limit
    assert c.rate == pytest.approx(expected_rate)
    assert c.size == pytest.approx(expected_size)
    assert c.available(at) == pytest.approx(expected_level)


def test_counter_set_limit_new_rate_applies_after_the_change() -> None:
    c = Counter(Unit.TOKENS, 60, burst_seconds=10.0, now=0.0)
    c.set_limit(600, 2.0)
    assert c.available(3.0) == pytest.approx(12.0)  # 2 at 1/s, then 10 at 10/s


@pytest.mark.parametrize("limit", [0, -1], ids=["zero", "negative"])
def test_counter_set_limit_rejects_non_positive(limit: float) -> None:
    c = Counter(Unit.TOKENS, 60, now=0.0)
    with pytest.raises(ValueError, match="positive"):
        c.set_limit(limit, 1.0)
    assert c.limit == 60


# --------------------------------------------------------------------------- Limiter basics


@pytest.mark.parametrize(
    ("rpm", "tpm", "tokens", "first_at"),
    [
        (60, None, 1, 1.0),
        (240, None, 500, 0.25),
        (None, 480, 4, 0.5),
        (None, 480, 8, 1.0),
        (None, 480, 400, 1.0),  # oversize: waits for a full counter only
        (120, 240, 4, 1.0),  # tokens are the slower counter
        (60, 480, 4, 1.0),  # requests are the slower counter
    ],
    ids=["rpm60", "rpm240", "tpm-half", "tpm-full", "tpm-oversize", "tpm-slower",
         "rpm-slower"],
)
async def test_first_request_waits_for_the_first_credit(
    rpm: float | None, tpm: float | None, tokens: int, first_at: float
) -> None:
    ft = FakeTime()
    lim = limiter(rpm, tpm, ft)
    await take(lim, ft, tokens)
    assert ft.t == first_at
    assert ft.sleeps == [first_at]


async def test_no_counters_never_waits() -> None:
    lim = Limiter.per_minute(None, None, clock=lambda: 0.0)
    assert lim.counters == []
    for _ in range(1_000):
        assert lim.try_acquire(10**9) == 0.0
    assert lim.cum_requests == 1_000 and lim.cum_tokens == 1_000 * 10**9


async def test_default_clock_is_the_running_loop() -> None:
    import asyncio

    lim = Limiter([Counter(Unit.REQUESTS, 6_000, initial=100)])
    assert lim.now() == pytest.approx(asyncio.get_running_loop().time(), abs=1.0)
    assert lim.try_acquire(1) == 0.0  # credit was there: no wait
    assert lim.counters[0].available(lim.now()) == pytest.approx(99, abs=0.5)


def test_try_acquire_spends_only_when_admitted() -> None:
    ft = FakeTime()
    lim = limiter(60, 480, ft)
    assert lim.try_acquire(4) == 1.0  # requests counter: 1 s
    assert [c.available(0.0) for c in lim.counters] == [0.0, 0.0]
    ft.t = 1.0
    assert lim.try_acquire(4) == 0.0
    assert [c.available(1.0) for c in lim.counters] == [0.0, 4.0]


def test_add_counter_joins_the_right_group() -> None:
    ft = FakeTime()
    lim = Limiter(clock=ft)
    lim.add(Counter(Unit.REQUESTS, 86_400, period=DAY, now=0.0))
    lim.add(Counter(Unit.TOKENS, 480, now=0.0))
    assert lim.too_large(481) is lim.counters[1]
    assert lim.wait_time(8, 0.0) == 1.0
    assert lim.wait_time(1, 0.0) == 1.0  # the request counter still needs its 1 s


# --------------------------------------------------------------------------- oversize


@pytest.mark.parametrize(
    ("tpm", "tokens", "expected"),
    [(480, 481, "tokens/min"), (480, 10**6, "tokens/min"), (480, 480, None), (480, 9, None)],
    ids=["one-over", "far-over", "exactly-the-limit", "over-size-under-limit"],
)
def test_too_large(tpm: float, tokens: int, expected: str | None) -> None:
    lim = limiter(None, tpm, FakeTime())
    found = lim.too_large(tokens)
    assert (found.name if found else None) == expected


def test_too_large_ignores_request_counters() -> None:
    assert limiter(60, None, FakeTime()).too_large(10**9) is None


def test_too_large_names_the_flag_it_exceeds() -> None:
    # What the engine's request_too_large message says: the counter's name and its flag.
    lim = limiter(60, 480, FakeTime())
    found = lim.too_large(481)
    assert found is not None and (found.name, found.ceiling) == ("tokens/min", 480)
    assert [c.available(0.0) for c in lim.counters] == [0.0, 0.0]


async def test_oversize_request_runs_into_debt_and_later_ones_wait() -> None:
    ft = FakeTime()
    lim = limiter(None, 480, ft)  # 8 tokens a second, size 8
    await take(lim, ft, 40)
    assert ft.t == 1.0  # a full counter, then into debt
    await take(lim, ft, 1)
    assert ft.t == 1.0 + 33 / 8  # repays 32 of debt plus its own 1 token
    await take(lim, ft, 8)
    assert ft.t == 1.0 + 33 / 8 + 1.0


async def test_whole_limit_request_goes_once_then_blocks_for_the_window() -> None:
    ft = FakeTime()
    lim = limiter(None, 480, ft)
    await take(lim, ft, 480)
    assert ft.t == 1.0
    await take(lim, ft, 1)
    # 472 of debt plus one token at 8 a second: the minute's budget really was spent.
    assert ft.t == 1.0 + 473 / 8


# --------------------------------------------------------------------------- steady rate

RATE_CASES = [
    (240, None, [1] * 400, 4.0),
    (480, None, [1] * 400, 8.0),
    (60, None, [1] * 130, 1.0),
]
RATE_IDS = ["rpm240", "rpm480", "rpm60"]


@pytest.mark.parametrize(("rpm", "tpm", "sizes", "rate"), RATE_CASES, ids=RATE_IDS)
@pytest.mark.parametrize("burst_seconds", [1.0, 4.0], ids=["burst1", "burst4"])
async def test_steady_rate_never_exceeds_the_limit_in_any_window(
    rpm: float, tpm: float | None, sizes: list[int], rate: float, burst_seconds: float
) -> None:
    ft = FakeTime()
    lim = limiter(rpm, tpm, ft, burst_seconds=burst_seconds)
    times = await admit(lim, ft, sizes)
    assert times == sorted(times)
    ones = [1] * len(times)
    for width in (burst_seconds, 2.0, 7.5, 60.0):
        # Starting empty and always busy, no credit is ever saved: at most the rate times
        # the window (rounded up, as admissions are whole requests), with no burst on top.
        assert max_in_window(times, ones, width) <= math.ceil(rate * width), f"window {width}s"
    # ... and it is not slower than the limit either: no time is wasted.
    assert times[-1] == len(sizes) / rate
    # It never polls: each admission sleeps once, exactly as long as needed.
    assert len(ft.sleeps) == len(sizes)


async def test_idle_credit_allows_one_burst_then_the_rate() -> None:
    ft = FakeTime()
    lim = limiter(240, None, ft, burst_seconds=2.0)  # 4 a second, size 8
    ft.t = 100.0  # idle long enough to fill the counter
    times = await admit(lim, ft, [1] * 300)
    assert times[:8] == [100.0] * 8  # the saved-up burst goes at once
    assert times[8] == 100.25
    ones = [1] * len(times)
    for width in (2.0, 5.0, 60.0):
        # Token bucket bound: the rate over the window plus one counter's size of saved credit.
        assert max_in_window(times, ones, width) <= 4 * width + 8
    assert times[-1] == 100.0 + (300 - 8) / 4


async def test_token_counter_rate_with_mixed_sizes() -> None:
    ft = FakeTime()
    rate = 128.0
    lim = limiter(None, rate * 60, ft)  # size 128 tokens
    sizes = [1, 50, 128, 7, 100, 64, 3] * 60
    times = await admit(lim, ft, sizes)
    for width in (1.0, 3.0, 10.0, 60.0):
        assert max_in_window(times, sizes, width) <= rate * width + 128
    # Starting empty and always busy, the counter is spent exactly as fast as it refills.
    assert times[-1] == sum(sizes) / rate
    assert len(ft.sleeps) == len(sizes)


async def test_requests_and_tokens_both_hold() -> None:
    ft = FakeTime()
    lim = limiter(240, 128 * 60, ft)  # 4 requests/s and 128 tokens/s
    sizes = [8, 8, 8, 100, 100, 100, 2, 2] * 40
    times = await admit(lim, ft, sizes)
    ones = [1] * len(sizes)
    for width in (1.0, 5.0, 60.0):
        # Request credit saved while big requests wait for tokens is the one burst allowed.
        assert max_in_window(times, ones, width) <= 4 * width + 4
        assert max_in_window(times, sizes, width) <= 128 * width + 128
    assert times[-1] == sum(sizes) / 128  # tokens are the binding counter here


# --------------------------------------------------------------------------- pause


async def test_pause_holds_admissions_and_drains_credit() -> None:
    ft = FakeTime()
    lim = Limiter([Counter(Unit.REQUESTS, 60, now=0.0, initial=1)],
                  clock=ft)
    assert lim.wait_time(1, 0.0) == 0.0  # the saved credit would let one go now
    lim.pause(0.25)
    assert lim.paused_until == 0.25
    assert lim.counters[0].available(0.0) == 0.0
    await take(lim, ft, 1)
    # Not at 0.25 when the pause ends: the saved credit is gone, so a full second.
    assert ft.t == 1.0


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(5.0, 5.0), (0.5, 1.0), (0.0, 1.0)],
    ids=["longer-than-refill", "shorter-than-refill", "zero"],
)
async def test_pause_then_acquire(seconds: float, expected: float) -> None:
    ft = FakeTime()
    lim = Limiter([Counter(Unit.REQUESTS, 60, now=0.0, initial=1)],
                  clock=ft)
    lim.pause(seconds)
    await take(lim, ft, 1)
    assert ft.t == expected


def test_pause_never_shortens_an_earlier_pause() -> None:
    ft = FakeTime()
    lim = limiter(60, None, ft)
    lim.pause(5.0)
    ft.t = 1.0
    lim.pause(2.0)
    assert lim.paused_until == 5.0
    lim.pause(10.0)
    assert lim.paused_until == 11.0


async def test_pause_holds_a_limiter_without_counters() -> None:
    ft = FakeTime(start=10.0)
    lim = Limiter(clock=ft)
    lim.pause(3.0)
    assert lim.try_acquire(1) == 3.0
    await take(lim, ft, 1)
    assert ft.t == 13.0


async def test_pause_keeps_debt() -> None:
    ft = FakeTime()
    lim = limiter(None, 480, ft)
    await take(lim, ft, 40)  # t=1, 32 tokens of debt
    lim.pause(1.0)
    assert lim.counters[0].available(1.0) == -32.0
    await take(lim, ft, 1)
    assert ft.t == 1.0 + 33 / 8  # the debt, not the pause, decides


# --------------------------------------------------------------------------- server hints


@pytest.mark.parametrize(
    ("scale", "expected_rate", "expected_size"),
    [(1.0, 10.0, 10.0), (0.5, 5.0, 5.0), (0.05, 0.5, 1.0)],
    ids=["full", "half", "floor-of-one"],
)
def test_counter_set_scale(scale: float, expected_rate: float, expected_size: float) -> None:
    c = Counter(Unit.TOKENS, 600, now=0.0, initial=10)
    c.set_scale(scale, 0.0)
    assert c.rate == pytest.approx(expected_rate)
    assert c.size == pytest.approx(expected_size)
    assert c.available(0.0) == pytest.approx(min(10.0, expected_size))
    assert c.limit == 600  # the limit itself is unchanged


def test_counter_scale_survives_set_limit() -> None:
    c = Counter(Unit.TOKENS, 600, now=0.0)
    c.set_scale(0.5, 0.0)
    c.set_limit(240, 0.0)
    assert c.rate == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("flags", "server", "expected"),
    [
        ((600, 60_000), (300, 30_000), (300, 30_000)),  # lower: adopted
        ((600, 60_000), (6_000, 600_000), (600, 60_000)),  # higher: the flags are a ceiling
        ((600, 60_000), (None, 30_000), (600, 30_000)),  # only what the server said
        ((600, 60_000), (0, -1), (600, 60_000)),  # nonsense ignored
        ((600, None), (300, 30_000), (300, None)),  # no token counter to adjust
    ],
    ids=["lower", "higher", "tokens-only", "nonsense", "rpm-only"],
)
def test_observe_adopts_lower_server_limits(
    flags: tuple[float | None, float | None],
    server: tuple[float | None, float | None],
    expected: tuple[float | None, float | None],
) -> None:
    ft = FakeTime()
    lim = limiter(*flags, ft)
    lim.observe(*server)
    got = (
        next((c.limit for c in lim.counters if c.unit is Unit.REQUESTS), None),
        next((c.limit for c in lim.counters if c.unit is Unit.TOKENS), None),
    )
    assert got == expected


def test_observe_goes_back_up_to_the_flag_but_not_past_it() -> None:
    ft = FakeTime()
    lim = limiter(600, None, ft)
    lim.observe(300, None)
    assert lim.counters[0].limit == 300
    lim.observe(450, None)
    assert lim.counters[0].limit == 450
    lim.observe(10_000, None)
    assert lim.counters[0].limit == 600


def test_observe_leaves_non_minute_counters_alone() -> None:
    ft = FakeTime()
    lim = Limiter([Counter(Unit.REQUESTS, 10_000, period=DAY, now=0.0)],
                  clock=ft)
    lim.observe(5, None)
    assert lim.counters[0].limit == 10_000


def test_rate_limited_pauses_and_slows_down() -> None:
    ft = FakeTime()
    lim = limiter(240, None, ft)
    lim.rate_limited(2.0)
    assert lim.paused_until == 2.0
    assert lim.backoff.scale == pytest.approx(0.9)
    assert lim.counters[0].rate == pytest.approx(4 * 0.9)


def test_rate_limited_without_hint_pauses_one_second() -> None:
    ft = FakeTime(start=5.0)
    lim = limiter(240, None, ft)
    lim.rate_limited(None)
    assert lim.paused_until == 6.0


def test_rate_limited_decreases_at_most_once_per_cooldown() -> None:
    ft = FakeTime()
    lim = limiter(240, None, ft)
    for _ in range(20):  # a burst of in-flight 429s coming back together
        lim.rate_limited(0.5)
    assert lim.backoff.scale == pytest.approx(0.9)
    ft.t = 1.0
    lim.rate_limited(0.5)
    # Recovered 1 s x 0.01 first, then decreased again.
    assert lim.backoff.scale == pytest.approx(0.91 * 0.9)


def test_rate_limited_never_goes_below_min_scale() -> None:
    ft = FakeTime()
    lim = limiter(240, None, ft)
    lim.backoff.recovery_per_s = 0.0  # isolate the floor from the recovery
    for i in range(200):
        ft.t = float(i)
        lim.rate_limited(0.0)
    assert lim.backoff.scale == pytest.approx(lim.backoff.min_scale)
    assert lim.counters[0].rate == pytest.approx(4 * lim.backoff.min_scale)


def test_repeated_429s_settle_where_recovery_balances_the_decrease() -> None:
    ft = FakeTime()
    lim = limiter(240, None, ft)
    for i in range(300):  # one 429 a second, for five minutes
        ft.t = float(i)
        lim.rate_limited(0.0)
    # s = (s + 0.01) * 0.9  =>  s = 0.09
    assert lim.backoff.scale == pytest.approx(0.09, rel=1e-3)


@pytest.mark.parametrize(
    ("later", "expected"),
    [(0.0, 0.9), (5.0, 0.95), (10.0, 1.0), (1_000.0, 1.0)],
    ids=["at-once", "halfway", "fully", "long-after"],
)
def test_scale_recovers_linearly(later: float, expected: float) -> None:
    ft = FakeTime()
    lim = limiter(240, None, ft)
    lim.rate_limited(0.0)
    lim.wait_time(1, later)
    assert lim.backoff.scale == pytest.approx(expected)
    assert lim.counters[0].rate == pytest.approx(4 * expected)


def test_rate_limited_on_a_limiter_without_counters_only_pauses() -> None:
    ft = FakeTime()
    lim = Limiter(clock=ft)
    lim.rate_limited(3.0)
    assert lim.paused_until == 3.0
    assert lim.backoff.scale == 1.0


# -- float rounding, server sync, auto limits, daily budgets, refunds ------------------


@pytest.mark.parametrize("rpm", [600, 300, 1200, 3000, 7], ids=lambda r: f"rpm{r}")
async def test_awkward_rates_take_one_sleep_per_request(rpm: float) -> None:
    ft = FakeTime()
    lim = limiter(rpm, None, ft)
    times = await admit(lim, ft, [1] * 50)
    assert len(ft.sleeps) <= 50
    assert times[-1] == pytest.approx(50 * 60 / rpm, rel=1e-6)


def synced(lim: Limiter, ft: FakeTime, *, limit: float, remaining: float) -> None:
    """Sync as if the request admitted last had been answered just now."""
    lim.sync(limit, remaining, None, None, sent_at=ft.t, cum_requests=lim.cum_requests,
             cum_tokens=lim.cum_tokens, force=True)


async def test_server_remaining_below_ours_slows_us_down() -> None:
    ft = FakeTime()
    lim = limiter(600, None, ft)  # 10/s
    await admit(lim, ft, [1] * 10)
    # The server says only 2 requests remain of 600: someone else spends the budget.
    synced(lim, ft, limit=600, remaining=2)
    start = ft.t
    await admit(lim, ft, [1] * 5)
    # Our own counter alone would allow these 5 in 0.5 s; the mirror of the server's
    # counter has 2 and refills at 10/s, so the 5th waits until 3 more refilled.
    assert ft.t - start >= 0.3 - 1e-9


async def test_server_with_room_does_not_slow_us() -> None:
    ft = FakeTime()
    lim = limiter(600, None, ft)
    await admit(lim, ft, [1] * 10)
    synced(lim, ft, limit=600, remaining=590)
    start = ft.t
    await admit(lim, ft, [1] * 10)
    assert ft.t - start == pytest.approx(1.0)


async def test_foreign_spending_is_learned_and_slows_the_refill() -> None:
    """Another client spends half of a shared 10/s budget; we converge to the rest."""
    ft = FakeTime()
    lim = limiter(600, None, ft)
    server, last, refused = 0.0, 0.0, 0
    admitted: list[float] = []
    for _ in range(400):
        await take(lim, ft, 1)
        # The server's counter: refills 10/s, the other client takes 5/s of it.
        server = min(600.0, server + (ft.t - last) * (10 - 5))
        last = ft.t
        if server < 1:
            # A 429: not counted by the server; sync at once and back off.
            refused += 1
            lim.sync(600, server, None, None, sent_at=ft.t, cum_requests=lim.cum_requests,
                     cum_tokens=lim.cum_tokens, force=True, refused_tokens=1)
            lim.rate_limited((1 - server) / 5)
        else:
            server -= 1
            admitted.append(ft.t)
            lim.sync(600, server, None, None, sent_at=ft.t, cum_requests=lim.cum_requests,
                     cum_tokens=lim.cum_tokens)
    foreign = lim.server.foreign_rates["requests/min"]
    assert foreign == pytest.approx(300, rel=0.1)  # the other client's 5/s
    late = [t for t in admitted if t > admitted[-1] - 10]
    assert len(late) / 10 == pytest.approx(5, rel=0.15)  # our share: ~5/s
    assert refused < 60


async def test_auto_learns_limits_from_headers() -> None:
    ft = FakeTime()
    lim = Limiter.per_minute(None, None, clock=ft, auto_requests=True,
                             auto_tokens=True)
    assert lim.learning
    lim.observe(120, 60_000)
    assert not lim.learning
    assert lim.learned == {"requests/min": 120, "tokens/min": 60_000}
    times = await admit(lim, ft, [10] * 4)
    assert times[-1] == pytest.approx(4 * 0.5)  # 2 requests/s


def test_observe_never_goes_above_the_flags() -> None:
    ft = FakeTime()
    lim = limiter(600, 1000, ft)
    lim.observe(6000, 500)
    assert [c.limit for c in lim.counters] == [600, 500]
    lim.observe(6000, 100_000)
    assert [c.limit for c in lim.counters] == [600, 1000]


async def test_daily_budget_starts_full_and_binds_when_spent() -> None:
    ft = FakeTime()
    lim = Limiter.per_minute(6000, None, rpd=5, clock=ft)
    await admit(lim, ft, [1] * 5)
    assert ft.t < 1.0  # the day's budget was there to spend at the per-minute rate
    now = ft.t
    assert lim.wait_time(1, now) == math.inf  # a budget does not refill within the run
    assert lim.wait_time(1, now + 86_400) == math.inf
    binding = lim.binding(1, now)
    assert binding is not None and binding.name == "requests/day"


def test_429_back_off_leaves_the_daily_budget_alone() -> None:
    ft = FakeTime()
    lim = Limiter.per_minute(6000, 60_000, rpd=100, tpd=1_000_000, clock=ft)
    ft.t = 1.0
    assert lim.try_acquire(100) == 0.0
    lim.rate_limited(2.0)
    daily = {c.name: c for c in lim.counters if not c.refill}
    assert daily["requests/day"].available(ft.t) == 99
    assert daily["tokens/day"].available(ft.t) == 1_000_000 - 100
    assert daily["requests/day"].scale == 1.0 and lim.backoff.scale < 1.0


def test_refund_gives_back_unused_tokens_up_to_the_size() -> None:
    ft = FakeTime()
    lim = limiter(None, 6000, ft)  # 100 tokens/s, size 100
    ft.t = 1.0
    assert lim.try_acquire(100) == 0.0
    assert lim.wait_time(100, ft.t) == pytest.approx(1.0)
    lim.refund(60)
    assert lim.wait_time(100, ft.t) == pytest.approx(0.4)
    lim.refund(10_000)
    assert lim.counters[0].available(ft.t) == pytest.approx(100)


# --------------------------------------------------------------------------- implausible limits


@pytest.mark.parametrize(
    ("kind", "limit", "smallest", "expected"),
    [
        (Unit.REQUESTS, 0.001, None, False),
        (Unit.REQUESTS, 0.999, None, False),
        (Unit.REQUESTS, 1.0, None, True),  # one a minute can be real (free tiers: 3)
        (Unit.TOKENS, 0.5, None, False),
        (Unit.TOKENS, 1e-300, None, False),
        (Unit.TOKENS, 5.0, None, True),  # nothing admitted yet to compare with
        (Unit.TOKENS, 5.0, 37, False),
        (Unit.TOKENS, 36.0, 37, False),
        (Unit.TOKENS, 37.0, 37, True),
        (Unit.TOKENS, 30_000.0, 37, True),
    ],
    ids=["rpm-0.001", "rpm-0.999", "rpm-1", "tpm-0.5", "tpm-1e-300", "tpm-5-unseen",
         "tpm-5-below-37", "tpm-36-below-37", "tpm-37", "tpm-30k"],
)
def test_plausible_limits(kind: Unit, limit: float, smallest: int | None, expected: bool) -> None:
    lim = Limiter(clock=FakeTime())
    if smallest is not None:
        assert lim.try_acquire(smallest) == 0.0
        lim.try_acquire(smallest + 100)  # larger ones do not move the bar
    assert lim.server.plausible(kind, limit) is expected


def test_sync_ignores_an_implausible_limit_and_its_mirror() -> None:
    ft = FakeTime()
    lim = Limiter(clock=ft, auto_requests=True, auto_tokens=True)
    lim.spend(40, ft.t)
    lim.sync(0.001, 0.0, 5.0, 0.0, sent_at=0.0, cum_requests=1, cum_tokens=40)
    assert lim.ignored == {"requests/min": 0.001, "tokens/min": 5.0}
    assert lim.counters == [] and lim.learned == {}
    assert lim.wait_time(40, ft.t) <= 0.0  # no mirror holds it back either
    assert not lim.learning  # not stuck learning what it will not adopt
    # The server comes to its senses: learned as usual, and no longer ignored.
    lim.sync(600.0, 599.0, 60_000.0, 59_000.0, sent_at=0.0, cum_requests=1, cum_tokens=40)
    assert lim.ignored == {}
    assert lim.learned == {"requests/min": 600.0, "tokens/min": 60_000.0}


def test_only_a_flag_makes_a_request_too_large() -> None:
    ft = FakeTime()
    lim = limiter(None, 1000, ft)
    lim.observe(None, 500)  # the server says less: adopted as a rate...
    assert next(c.limit for c in lim.counters) == 500
    assert lim.too_large(800) is None  # ...but not as a verdict on a request
    too = lim.too_large(1001)
    assert too is not None and too.ceiling == 1000
    auto = Limiter(clock=ft, auto_tokens=True)
    auto.observe(None, 500)
    assert auto.too_large(10**9) is None  # a learned limit never writes one off


async def test_a_request_larger_than_an_adopted_limit_still_goes() -> None:
    ft = FakeTime()
    lim = Limiter(clock=ft, auto_tokens=True)
    lim.observe(None, 120.0)  # 2 tokens a second, 2 of burst
    await take(lim, ft, 500)  # waits for a full counter, then runs into debt
    assert ft.t == 1.0
    await take(lim, ft, 10)
    assert ft.t == pytest.approx(1.0 + (500 - 2 + 2) / 2.0)  # the debt is repaid first


@pytest.mark.parametrize("seconds", [float("nan"), -1.0, 1e17, float("inf")],
                         ids=["nan", "negative", "1e17", "inf"])
def test_pause_stays_finite(seconds: float) -> None:
    ft = FakeTime(5.0)
    lim = Limiter(clock=ft)
    lim.pause(seconds)
    assert math.isfinite(lim.paused_until)
    assert math.isfinite(lim.wait_time(1, ft.t))
