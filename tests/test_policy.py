"""decide(), row by row: the error, the request's attempt state and the run's context in,
one action out (tenacity-style table with ids). No engine, no clock, no server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from processor.errors import (
    APIError,
    APITimeout,
    AuthError,
    BadRequest,
    QuotaExceeded,
    RateLimited,
    ServerError,
)
from processor.run.policy import (
    INSIST_429,
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
)
from processor.run.retry import Fallback, RetryPolicy
from processor.stats import StopReason

#: rng 0.5: backoff of attempt n is 0.5 * min(cap, base * 2**(n-1)); a hint gets +5%.
POLICY = RetryPolicy(max_attempts=3, base=1.0, cap=60.0, rng=lambda: 0.5)
CTX = Context(POLICY, at=lambda s: f"T+{s:g}")
FB = Fallback("small", after=2)


def a(attempts: int = 1, **kw: Any) -> Attempt:
    return Attempt(attempts, **kw)


def c(**kw: Any) -> Context:
    return replace(CTX, **kw)


ROWS: list[tuple[str, APIError, Attempt, Context, Action]] = [
    # -- retryable failures: backoff, the server's hint, the attempts cap
    ("500-first-attempt-backs-off", ServerError("boom", status=500), a(1), CTX, Retry(0.5)),
    ("500-second-attempt-doubles", ServerError("boom", status=500), a(2), CTX, Retry(1.0)),
    ("500-last-attempt-fails", ServerError("boom", status=500), a(3), CTX,
     Fail("server_error", "gave up after 3 attempts: boom")),
    ("timeout-retried", APITimeout("reset"), a(1), CTX, Retry(0.5)),
    ("503-retry-after-wins", ServerError("busy", status=503, retry_after=10), a(1), CTX,
     Retry(10.5)),
    ("503-nan-retry-after-is-no-hint", ServerError("x", status=503, retry_after=float("nan")),
     a(1), CTX, Retry(0.5)),
    ("429-without-hint-waits-a-second", RateLimited("slow down", status=429), a(1), CTX,
     Retry(1.0)),
    ("429-hint", RateLimited("slow down", status=429, retry_after=2), a(1), CTX, Retry(2.1)),
    ("429-over-an-hour-goes-to-another-key-now",
     RateLimited("slow", status=429, retry_after=2 * LONG_PAUSE), a(1), CTX, Retry(0.0)),
    ("429-last-attempt-fails", RateLimited("slow", status=429), a(3), CTX,
     Fail("rate_limited", "gave up after 3 attempts: slow")),
    # -- fatal failures
    ("400-fails-at-once", BadRequest("bad", status=400), a(1), CTX, Fail("bad_request", "bad")),
    ("404-without-fallback-fails", BadRequest("no model", status=404, code="model_not_found"),
     a(1), CTX, Fail("bad_request", "no model")),
    # -- the run is stopping: nothing is retried or written off for a retryable failure
    ("stopping-leaves-a-retryable-one", ServerError("x", status=500), a(1), c(stopping=True),
     Leave()),
    ("stopping-still-writes-a-fatal-one-off", BadRequest("bad", status=400), a(1),
     c(stopping=True), Fail("bad_request", "bad")),
    # -- stops that speak for the run
    ("503-pause-over-an-hour-stops",
     ServerError("down", status=503, retry_after=LONG_PAUSE + 1), a(1), CTX,
     Stop(StopReason.RERUN_LATER, "the server asked to pause for 1h00m (HTTP 503) "
          f"(until T+{LONG_PAUSE + 1:g}); rerun the same command then to resume",
          LONG_PAUSE + 1)),
    ("503-pause-of-exactly-an-hour-is-waited",
     ServerError("down", status=503, retry_after=LONG_PAUSE), a(1), CTX,
     Retry(LONG_PAUSE * 1.05)),
    ("daily-429-stops", RateLimited("Limit reached: requests per day (RPD)", status=429,
                                    retry_after=120), a(1), CTX,
     Stop(StopReason.RERUN_LATER, "daily limit reached on the server: Limit reached: "
          "requests per day (RPD); it allows more in 2m00s (at T+120); rerun the same "
          "command then to resume", 120)),
    ("daily-429-without-hint", RateLimited("tokens per day (TPD) spent", status=429), a(1),
     CTX, Stop(StopReason.RERUN_LATER, "daily limit reached on the server: tokens per day "
               "(TPD) spent; it allows more; rerun the same command then to resume")),
    ("429-insisting-under-an-implausible-limit-stops", RateLimited("slow", status=429), a(1),
     c(insisted=INSIST_429, implausible="requests/min 0.5 (below one request)"),
     Stop(StopReason.RERUN_LATER, f"the server refused {INSIST_429} requests in a row (429) "
          "while stating a limit of requests/min 0.5 (below one request); rerun the same "
          "command once its limits are right")),
    ("429-insisting-names-the-key", RateLimited("slow", status=429), a(1),
     c(insisted=INSIST_429, implausible="x", key="K2", keys=2, keys_left=2),
     Stop(StopReason.RERUN_LATER, f"the server refused {INSIST_429} requests in a row (429) "
          "for key $K2 while stating a limit of x; rerun the same command once its limits "
          "are right")),
    ("429-one-short-of-insisting-retries", RateLimited("slow", status=429), a(1),
     c(insisted=INSIST_429 - 1, implausible="x"), Retry(1.0)),
    # -- outages: the attempt is given back
    ("outage-requeues-without-the-attempt", ServerError("x", status=502), a(3),
     c(outage=True), Requeue(retry=True)),
    ("outage-while-stopping-leaves", ServerError("x", status=502), a(1),
     c(outage=True, stopping=True), Leave()),
    # -- refused keys: the key's fault, never the request's
    ("401-only-key-stops", AuthError("Incorrect API key", status=401), a(1), CTX,
     Stop(StopReason.KEY_REFUSED,
          "auth_error: the API key was refused: Incorrect API key")),
    ("401-only-named-key-names-it", AuthError("nope", status=401), a(1), c(key="MYKEY"),
     Stop(StopReason.KEY_REFUSED, "auth_error: the API key ($MYKEY) was refused: nope")),
    ("quota-only-key-stops", QuotaExceeded("no credit", status=429), a(1), CTX,
     Stop(StopReason.KEY_REFUSED,
          "insufficient_quota: the API key has no quota left: no credit")),
    ("401-one-of-two-keys-retired-and-requeued", AuthError("nope", status=401), a(1),
     c(key="A", keys=2, keys_left=2), RetireKey(Requeue())),
    ("401-last-working-key-retired-then-stop", AuthError("nope", status=401), a(1),
     c(key="A", keys=2, keys_left=1),
     RetireKey(Stop(StopReason.KEY_REFUSED, NO_KEY_LEFT))),
    ("401-on-a-key-already-retired-requeues", AuthError("nope", status=401), a(1),
     c(key="A", keys=2, keys_left=1, key_retired=True), Requeue()),
    ("401-on-a-retired-key-none-left-stops", AuthError("nope", status=401), a(1),
     c(key="A", keys=2, keys_left=0, key_retired=True),
     Stop(StopReason.KEY_REFUSED, NO_KEY_LEFT)),
    ("401-last-attempt-is-still-not-written-off", AuthError("nope", status=401), a(3),
     c(key="A", keys=3, keys_left=3), RetireKey(Requeue())),
    # -- the fallback model
    ("429-below-fallback-threshold-retries", RateLimited("slow", status=429),
     a(1, model="big", refusals=1), c(fallback=FB), Retry(1.0)),
    ("429-at-fallback-threshold-switches", RateLimited("slow", status=429),
     a(1, model="big", refusals=2), c(fallback=FB), SwitchModel("small")),
    ("429-at-threshold-but-last-attempt-switches", RateLimited("slow", status=429),
     a(3, model="big", refusals=2), c(fallback=FB), SwitchModel("small")),
    ("model-not-found-switches-at-once",
     BadRequest("no such model", status=404, code="model_not_found"),
     a(1, model="big", refusals=1), c(fallback=FB), SwitchModel("small")),
    ("already-switched-does-not-switch-again", RateLimited("slow", status=429),
     a(1, model="small", switched=True, refusals=5), c(fallback=FB), Retry(1.0)),
    ("asking-for-the-fallback-model-already", BadRequest("gone", status=404,
                                                          code="model_not_found"),
     a(1, model="small", refusals=1), c(fallback=FB), Fail("bad_request", "gone")),
    ("a-500-never-switches", ServerError("x", status=500), a(1, model="big", refusals=9),
     c(fallback=FB), Retry(0.5)),
]


@pytest.mark.parametrize(("exc", "attempt", "ctx", "expected"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_decide(exc: APIError, attempt: Attempt, ctx: Context, expected: Action) -> None:
    assert decide(exc, attempt, ctx) == expected


def test_decide_is_pure() -> None:
    """The same question twice, the same answer; nothing in the inputs changes."""
    exc = RateLimited("slow", status=429, retry_after=3)
    attempt, ctx = a(2, model="big", refusals=1), c(fallback=FB)
    before = (attempt, ctx, exc.retry_after, exc.message)
    assert decide(exc, attempt, ctx) == decide(exc, attempt, ctx)
    assert (attempt, ctx, exc.retry_after, exc.message) == before


@pytest.mark.parametrize(
    ("exc", "model", "switched", "counts"),
    [
        (RateLimited("x", status=429), "big", False, True),
        (BadRequest("x", status=404, code="model_not_found"), "big", False, True),
        (BadRequest("x", status=404), "big", False, False),
        (ServerError("x", status=500), "big", False, False),
        (RateLimited("x", status=429), "small", False, False),
        (RateLimited("x", status=429), "big", True, False),
    ],
    ids=["429", "model-not-found", "other-404", "500", "already-on-fallback", "switched"],
)
def test_what_counts_as_a_refusal_of_the_model(exc: APIError, model: str, switched: bool,
                                               counts: bool) -> None:
    assert refuses_model(exc, model, FB, switched) is counts
    assert refuses_model(exc, model, None, switched) is False
