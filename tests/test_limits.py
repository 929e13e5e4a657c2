"""Capacity counters and the limiter, on a fake clock that never sleeps (processor.limits).

Rates are chosen so that every wait is a binary fraction (1, 2, 4, 8, 128 units a second):
the arithmetic is then exact and the expected admission times can be compared with ``==``.
"""

from __future__ import annotations

import math

import pytest

from processor.limits import Capacity, Limiter


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


async def _never_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected sleep({seconds})")


def limiter(
    rpm: float | None, tpm: float | None, ft: FakeTime, *, burst_seconds: float = 1.0
) -> Limiter:
    return Limiter.per_minute(rpm, tpm, burst_seconds=burst_seconds, clock=ft, sleep=ft.sleep)


async def admit(lim: Limiter, ft: FakeTime, sizes: list[int]) -> list[float]:
    """Acquire each size in turn; return the admission times."""
    times = []
    for tokens in sizes:
        await lim.acquire(tokens)
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


# --------------------------------------------------------------------------- Capacity


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
def test_capacity_starts_empty(limit: float, period: float, amount: int, expected: float) -> None:
    c = Capacity("c", limit, period=period, now=100.0)
    assert c.available(100.0) == 0.0
    assert c.wait_time(amount, 100.0) == pytest.approx(expected)
    assert c.wait_time(amount, 100.0 + expected) == 0.0


@pytest.mark.parametrize(
    ("limit", "burst_seconds", "expected_capacity"),
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
def test_capacity_burst_cap(limit: float, burst_seconds: float, expected_capacity: float) -> None:
    c = Capacity("c", limit, burst_seconds=burst_seconds, now=0.0)
    assert c.capacity == pytest.approx(expected_capacity)
    # However long it idles, credit stops at the cap.
    assert c.available(10_000.0) == pytest.approx(expected_capacity)
    assert c.available(1_000_000.0) == pytest.approx(expected_capacity)


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(0.0, 0.0), (0.25, 2.5), (0.5, 5.0), (1.0, 10.0), (3.0, 10.0)],
    ids=["now", "quarter", "half", "full", "capped"],
)
def test_capacity_refills_linearly(elapsed: float, expected: float) -> None:
    c = Capacity("tokens/min", 600, now=0.0)
    assert c.available(elapsed) == pytest.approx(expected)


def test_capacity_initial_credit_is_capped() -> None:
    assert Capacity("c", 600, now=0.0, initial=4).available(0.0) == 4
    assert Capacity("c", 600, now=0.0, initial=1_000).available(0.0) == 10


def test_capacity_without_now_starts_its_clock_at_first_use() -> None:
    c = Capacity("c", 60)
    assert c.wait_time(1, 5_000.0) == 1.0
    assert c.available(5_000.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("limit", "period"),
    [(0, 60.0), (-5, 60.0), (60, 0.0), (60, -1.0), (math.nan, 60.0)],
    ids=["zero-limit", "negative-limit", "zero-period", "negative-period", "nan-limit"],
)
def test_capacity_rejects_bad_limits(limit: float, period: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Capacity("c", limit, period=period)


def test_capacity_oversize_amount_waits_for_a_full_bucket_then_runs_into_debt() -> None:
    c = Capacity("tokens/min", 480, now=0.0)  # 8 a second, bucket of 8
    assert c.wait_time(40, 0.0) == 1.0  # waits only for a full bucket, not 5 s
    assert c.wait_time(40, 1.0) == 0.0
    c.spend(40, 1.0)
    assert c.available(1.0) == -32.0
    # The debt is repaid before anything else goes: (1 + 32) / 8 s.
    assert c.wait_time(1, 1.0) == 4.125


def test_capacity_drain_drops_credit_but_keeps_debt() -> None:
    c = Capacity("c", 600, now=0.0, initial=10)
    c.drain(0.0)
    assert c.available(0.0) == 0.0
    c.spend(5, 0.0)
    c.drain(0.0)
    assert c.available(0.0) == -5.0


@pytest.mark.parametrize(
    ("new_limit", "at", "expected_rate", "expected_capacity", "expected_level"),
    [
        # Refilled at the old rate (1/s) up to the change, then the new rate applies.
        (600, 2.0, 10.0, 100.0, 2.0),
        # Lowered: saved credit is cut to the new, smaller bucket.
        (6, 8.0, 0.1, 1.0, 1.0),
        # Same limit: nothing changes but the refill.
        (60, 4.0, 1.0, 10.0, 4.0),
    ],
    ids=["raised", "lowered-caps-credit", "unchanged"],
)
def test_capacity_set_limit(
    new_limit: float,
    at: float,
    expected_rate: float,
    expected_capacity: float,
    expected_level: float,
) -> None:
    c = Capacity("c", 60, burst_seconds=10.0, now=0.0)
    c.set_limit(new_limit, at)
    assert c.limit == new_limit
    assert c.rate == pytest.approx(expected_rate)
    assert c.capacity == pytest.approx(expected_capacity)
    assert c.available(at) == pytest.approx(expected_level)


def test_capacity_set_limit_new_rate_applies_after_the_change() -> None:
    c = Capacity("c", 60, burst_seconds=10.0, now=0.0)
    c.set_limit(600, 2.0)
    assert c.available(3.0) == pytest.approx(12.0)  # 2 at 1/s, then 10 at 10/s


@pytest.mark.parametrize("limit", [0, -1], ids=["zero", "negative"])
def test_capacity_set_limit_rejects_non_positive(limit: float) -> None:
    c = Capacity("c", 60, now=0.0)
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
        (None, 480, 400, 1.0),  # oversize: waits for a full bucket only
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
    await lim.acquire(tokens)
    assert ft.t == first_at
    assert ft.sleeps == [first_at]


async def test_no_counters_never_waits() -> None:
    lim = Limiter.per_minute(None, None, clock=lambda: 0.0, sleep=_never_sleep)
    assert lim.counters == []
    for _ in range(1_000):
        await lim.acquire(10**9)
    assert lim.try_acquire(5) == 0.0


async def test_default_clock_is_the_running_loop() -> None:
    import asyncio

    lim = Limiter([Capacity("requests/min", 6_000, initial=100, unit_cost=True)],
                  sleep=_never_sleep)
    assert lim.now() == pytest.approx(asyncio.get_running_loop().time(), abs=1.0)
    await lim.acquire(1)  # credit was there: no sleep
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
    lim = Limiter(clock=ft, sleep=ft.sleep)
    lim.add(Capacity("requests/day", 86_400, period=86_400, now=0.0, unit_cost=True))
    lim.add(Capacity("tokens/min", 480, now=0.0))
    assert lim.too_large(481) is lim.counters[1]
    assert lim.wait_time(8, 0.0) == 1.0
    assert lim.wait_time(1, 0.0) == 1.0  # the request counter still needs its 1 s


# --------------------------------------------------------------------------- oversize


@pytest.mark.parametrize(
    ("tpm", "tokens", "expected"),
    [(480, 481, "tokens/min"), (480, 10**6, "tokens/min"), (480, 480, None), (480, 9, None)],
    ids=["one-over", "far-over", "exactly-the-limit", "over-bucket-under-limit"],
)
def test_too_large(tpm: float, tokens: int, expected: str | None) -> None:
    lim = limiter(None, tpm, FakeTime())
    found = lim.too_large(tokens)
    assert (found.name if found else None) == expected


def test_too_large_ignores_request_counters() -> None:
    assert limiter(60, None, FakeTime()).too_large(10**9) is None


async def test_acquire_over_the_whole_limit_raises_without_spending() -> None:
    ft = FakeTime()
    lim = limiter(60, 480, ft)
    with pytest.raises(ValueError, match=r"481 tokens.*tokens/min.*480"):
        await lim.acquire(481)
    assert ft.sleeps == []
    assert [c.available(0.0) for c in lim.counters] == [0.0, 0.0]


async def test_oversize_request_runs_into_debt_and_later_ones_wait() -> None:
    ft = FakeTime()
    lim = limiter(None, 480, ft)  # 8 tokens a second, bucket of 8
    await lim.acquire(40)
    assert ft.t == 1.0  # a full bucket, then into debt
    await lim.acquire(1)
    assert ft.t == 1.0 + 33 / 8  # repays 32 of debt plus its own 1 token
    await lim.acquire(8)
    assert ft.t == 1.0 + 33 / 8 + 1.0


async def test_whole_limit_request_goes_once_then_blocks_for_the_window() -> None:
    ft = FakeTime()
    lim = limiter(None, 480, ft)
    await lim.acquire(480)
    assert ft.t == 1.0
    await lim.acquire(1)
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
    lim = limiter(240, None, ft, burst_seconds=2.0)  # 4 a second, bucket of 8
    ft.t = 100.0  # idle long enough to fill the bucket
    times = await admit(lim, ft, [1] * 300)
    assert times[:8] == [100.0] * 8  # the saved-up burst goes at once
    assert times[8] == 100.25
    ones = [1] * len(times)
    for width in (2.0, 5.0, 60.0):
        # Token bucket bound: the rate over the window plus one bucket of saved credit.
        assert max_in_window(times, ones, width) <= 4 * width + 8
    assert times[-1] == 100.0 + (300 - 8) / 4


async def test_token_counter_rate_with_mixed_sizes() -> None:
    ft = FakeTime()
    rate = 128.0
    lim = limiter(None, rate * 60, ft)  # bucket of 128 tokens
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
    lim = Limiter([Capacity("requests/min", 60, now=0.0, initial=1, unit_cost=True)],
                  clock=ft, sleep=ft.sleep)
    assert lim.wait_time(1, 0.0) == 0.0  # the saved credit would let one go now
    lim.pause(0.25)
    assert lim.paused_until == 0.25
    assert lim.counters[0].available(0.0) == 0.0
    await lim.acquire(1)
    # Not at 0.25 when the pause ends: the saved credit is gone, so a full second.
    assert ft.t == 1.0


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(5.0, 5.0), (0.5, 1.0), (0.0, 1.0)],
    ids=["longer-than-refill", "shorter-than-refill", "zero"],
)
async def test_pause_then_acquire(seconds: float, expected: float) -> None:
    ft = FakeTime()
    lim = Limiter([Capacity("requests/min", 60, now=0.0, initial=1, unit_cost=True)],
                  clock=ft, sleep=ft.sleep)
    lim.pause(seconds)
    await lim.acquire(1)
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
    lim = Limiter(clock=ft, sleep=ft.sleep)
    lim.pause(3.0)
    assert lim.try_acquire(1) == 3.0
    await lim.acquire(1)
    assert ft.t == 13.0


async def test_pause_keeps_debt() -> None:
    ft = FakeTime()
    lim = limiter(None, 480, ft)
    await lim.acquire(40)  # t=1, 32 tokens of debt
    lim.pause(1.0)
    assert lim.counters[0].available(1.0) == -32.0
    await lim.acquire(1)
    assert ft.t == 1.0 + 33 / 8  # the debt, not the pause, decides
