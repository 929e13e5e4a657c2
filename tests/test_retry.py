"""Retry policy: what is retried, backoff with full jitter, Retry-After (processor.run.retry)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from processor.errors import (
    APIError,
    APITimeout,
    AuthError,
    BadRequest,
    BatchProcError,
    QuotaExceeded,
    RateLimited,
    RetryableAPIError,
    ServerError,
)
from processor.run.retry import RetryPolicy, backoff, should_retry

Rng = Callable[[], float]


def one() -> float:
    return 1.0


def zero() -> float:
    return 0.0


def half() -> float:
    return 0.5


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "expected"),
    [
        (1, 1.0, 60.0, 1.0),
        (2, 1.0, 60.0, 2.0),
        (3, 1.0, 60.0, 4.0),
        (4, 1.0, 60.0, 8.0),
        (5, 1.0, 60.0, 16.0),
        (6, 1.0, 60.0, 32.0),
        (7, 1.0, 60.0, 60.0),
        (20, 1.0, 60.0, 60.0),
        (200, 1.0, 60.0, 60.0),
        (1, 0.5, 60.0, 0.5),
        (3, 0.5, 60.0, 2.0),
        (4, 0.25, 1.0, 1.0),
        (3, 2.0, 5.0, 5.0),
    ],
    ids=[
        "a1", "a2", "a3", "a4", "a5", "a6", "a7-capped", "a20-capped", "a200-capped",
        "base0.5-a1", "base0.5-a3", "cap1", "base2-cap5",
    ],
)
def test_backoff_with_rng_one_is_the_cap_sequence(
    attempt: int, base: float, cap: float, expected: float
) -> None:
    assert backoff(attempt, base=base, cap=cap, rng=one) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("rng", "attempt", "expected"),
    [(zero, 1, 0.0), (zero, 9, 0.0), (half, 1, 0.5), (half, 4, 4.0), (half, 30, 30.0)],
    ids=["zero-a1", "zero-a9", "half-a1", "half-a4", "half-capped"],
)
def test_backoff_scales_the_ceiling_by_the_rng(
    rng: Rng, attempt: int, expected: float
) -> None:
    assert backoff(attempt, rng=rng) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", list(range(1, 12)), ids=[f"a{n}" for n in range(1, 12)])
def test_backoff_full_jitter_stays_within_bounds(attempt: int) -> None:
    rng = random.Random(attempt).random
    ceiling = min(30.0, 2 ** (attempt - 1))
    samples = [backoff(attempt, cap=30.0, rng=rng) for _ in range(300)]
    assert all(0.0 <= s <= ceiling for s in samples)
    # Full jitter: spread over the whole range, not bunched at the top.
    assert min(samples) < 0.1 * ceiling
    assert max(samples) > 0.9 * ceiling


@pytest.mark.parametrize("attempt", [0, -1, -10], ids=["zero", "minus-one", "minus-ten"])
def test_backoff_rejects_attempts_below_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff(attempt, rng=one)


# --------------------------------------------------------------------------- should_retry

RETRY_TABLE = [
    (RateLimited("429"), True),
    (ServerError("500", status=500), True),
    (ServerError("408", status=408), True),
    (APITimeout("timed out"), True),
    (RetryableAPIError("generic retryable"), True),
    (AuthError("401", status=401), False),
    (BadRequest("400", status=400), False),
    (QuotaExceeded("429 quota", status=429), False),
    (APIError("base api error"), False),
    (BatchProcError("not an api error"), False),
    (ValueError("not ours"), False),
]
RETRY_IDS = [
    "rate-limited", "server-500", "server-408", "timeout", "retryable-base", "auth",
    "bad-request", "quota", "api-error-base", "batchproc-base", "value-error",
]


@pytest.mark.parametrize(("exc", "expected"), RETRY_TABLE, ids=RETRY_IDS)
def test_should_retry_per_error_class(exc: BaseException, expected: bool) -> None:
    assert should_retry(exc) is expected


API_ROWS = [
    (row, name)
    for row, name in zip(RETRY_TABLE, RETRY_IDS, strict=True)
    if isinstance(row[0], APIError)
]


@pytest.mark.parametrize(
    ("exc", "expected"), [row for row, _ in API_ROWS], ids=[name for _, name in API_ROWS]
)
def test_policy_should_retry_follows_the_error_class(exc: APIError, expected: bool) -> None:
    assert RetryPolicy(max_attempts=5).should_retry(exc, 1) is expected


# --------------------------------------------------------------------------- max_attempts


@pytest.mark.parametrize(
    ("max_attempts", "attempts", "expected"),
    [
        (1, 1, False),
        (2, 1, True),
        (2, 2, False),
        (5, 4, True),
        (5, 5, False),
        (5, 6, False),
    ],
    ids=["1-of-1", "1-of-2", "2-of-2", "4-of-5", "5-of-5", "over"],
)
def test_policy_stops_after_max_attempts(max_attempts: int, attempts: int, expected: bool) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)
    assert policy.should_retry(ServerError("503", status=503), attempts) is expected


@pytest.mark.parametrize("max_attempts", [0, -3], ids=["zero", "negative"])
def test_policy_rejects_max_attempts_below_one(max_attempts: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=max_attempts)


def test_policy_defaults() -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == 5
    assert policy.should_retry(ServerError("x"), 4)
    assert not policy.should_retry(ServerError("x"), 5)


# --------------------------------------------------------------------------- delay


@pytest.mark.parametrize(
    ("retry_after", "rng", "expected"),
    [
        (2.0, zero, 2.0),
        (2.0, one, 2.2),
        (2.0, half, 2.1),
        (30.0, one, 33.0),
        (0.0, one, 0.0),
        (0.25, zero, 0.25),
    ],
    ids=["no-jitter", "full-jitter", "half-jitter", "long", "zero", "sub-second"],
)
def test_delay_uses_retry_after_plus_at_most_ten_percent(
    retry_after: float, rng: Rng, expected: float
) -> None:
    policy = RetryPolicy(rng=rng)
    exc = RateLimited("429", status=429, retry_after=retry_after)
    assert policy.delay(exc, 1) == pytest.approx(expected)


@pytest.mark.parametrize("retry_after", [0.5, 1.0, 7.0, 120.0], ids=["0.5", "1", "7", "120"])
def test_delay_retry_after_jitter_bounds_with_real_rng(retry_after: float) -> None:
    policy = RetryPolicy(rng=random.Random(42).random)
    exc = RateLimited("429", status=429, retry_after=retry_after)
    samples = [policy.delay(exc, attempts) for attempts in range(1, 200)]
    assert all(retry_after <= s <= retry_after * 1.1 for s in samples)
    # The attempt count does not matter when the server said how long to wait.
    assert max(samples) > retry_after * 1.05


def test_delay_retry_after_wins_over_backoff_for_any_error_class() -> None:
    policy = RetryPolicy(rng=zero)
    exc = ServerError("503", status=503, retry_after=3.0)
    # Backoff at attempt 10 would be up to 60 s; the server's hint wins.
    assert policy.delay(exc, 10) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("exc", "attempts", "rng", "expected"),
    [
        (ServerError("500"), 1, one, 1.0),
        (ServerError("500"), 3, one, 4.0),
        (ServerError("500"), 3, zero, 0.0),
        (APITimeout("t"), 10, one, 60.0),
        # A 429 without a hint waits at least a second.
        (RateLimited("429"), 1, zero, 1.0),
        (RateLimited("429"), 1, half, 1.0),
        (RateLimited("429"), 4, one, 8.0),
        (RateLimited("429", retry_after=-1.0), 1, zero, 1.0),
    ],
    ids=[
        "server-a1", "server-a3", "server-a3-zero", "timeout-capped", "429-floor-zero",
        "429-floor-half", "429-a4", "429-negative-hint-ignored",
    ],
)
def test_delay_without_retry_after_is_backoff(
    exc: APIError, attempts: int, rng: Rng, expected: float
) -> None:
    assert RetryPolicy(rng=rng).delay(exc, attempts) == pytest.approx(expected)


def test_delay_respects_policy_base_and_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=3.0, rng=one)
    delays = [policy.delay(ServerError("x"), n) for n in range(1, 6)]
    assert delays == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0])


def test_backoff_is_a_float_even_with_an_int_rng() -> None:
    value = backoff(3, rng=lambda: 1)
    assert type(value) is float
    assert value == 4.0


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (None, None),
        (float("nan"), None),
        (-3.0, None),
        (0.0, 0.0),
        (20.0, 20.0),
        (1e17, 100 * 365 * 86_400.0),
        (float("inf"), 100 * 365 * 86_400.0),
    ],
    ids=["none", "nan", "negative", "zero", "20s", "1e17", "inf"],
)
def test_server_hint_is_finite_or_none(hint: float | None, expected: float | None) -> None:
    from processor.run.retry import server_hint

    assert server_hint(RateLimited("429", retry_after=hint)) == expected


def test_delay_with_an_absurd_hint_is_finite() -> None:
    import math

    delay = RetryPolicy(rng=one).delay(RateLimited("429", retry_after=1e300), 1)
    assert math.isfinite(delay) and delay == pytest.approx(1.1 * 100 * 365 * 86_400.0)
