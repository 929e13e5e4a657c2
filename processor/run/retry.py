"""Retry policy: which failures to retry, and how long to wait before the next attempt."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import APIError, RateLimited, RetryableAPIError
from ..stats import clamp_seconds

__all__ = ["Fallback", "RetryPolicy", "backoff", "is_daily_limit", "server_hint",
           "should_retry"]


def server_hint(exc: APIError) -> float | None:
    """The server's Retry-After in seconds, made safe for arithmetic and timers.

    Any value is possible from a hostile or broken server (or from a custom client):
    NaN and negatives count as no hint, and anything beyond
    :data:`~processor.stats.MAX_SHOWN` (a century) as a century. The engine stops the
    run on any pause over an hour, so the clamp only keeps the numbers finite.
    """
    value = exc.retry_after
    try:
        seconds = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return None
    if not seconds >= 0:  # None, NaN, negative
        return None
    return clamp_seconds(seconds)


def should_retry(exc: BaseException) -> bool:
    """True for failures another attempt may fix (429, 408, 409, 5xx, transport errors)."""
    return isinstance(exc, RetryableAPIError)


def backoff(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 60.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads retries of a burst of failures evenly instead of sending them
    back together (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    return float(rng() * min(cap, base * 2.0 ** (attempt - 1)))


@dataclass(slots=True)
class RetryPolicy:
    """How many attempts a request gets and how long it waits between them.

    Args:
        max_attempts: attempts per request, the first included.
        base: backoff base in seconds.
        cap: longest backoff in seconds.
        rng: uniform [0, 1) source, injectable for tests.
    """

    max_attempts: int = 5
    base: float = 1.0
    cap: float = 60.0
    rng: Callable[[], float] = field(default=random.random)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def should_retry(self, exc: APIError, attempts: int) -> bool:
        return should_retry(exc) and attempts < self.max_attempts

    def delay(self, exc: APIError, attempts: int) -> float:
        """Seconds to wait before attempt ``attempts + 1``.

        The server's Retry-After wins when it gave one (plus up to 10% jitter so a
        crowd of 429s does not come back in the same millisecond); otherwise
        exponential backoff with full jitter.
        """
        hint = server_hint(exc)
        if hint is not None:
            return hint * (1.0 + 0.1 * self.rng())
        if isinstance(exc, RateLimited):
            # A 429 without a hint: at least a second, the usual refill step.
            return max(1.0, backoff(attempts, base=self.base, cap=self.cap, rng=self.rng))
        return backoff(attempts, base=self.base, cap=self.cap, rng=self.rng)


def is_daily_limit(exc: APIError) -> bool:
    """A 429 about a per-day limit (OpenAI says "requests per day (RPD)" / "tokens per day").

    Waiting it out inside a run would mean hours of idling: the engine stops instead.
    """
    text = exc.message.lower()
    return "per day" in text or "(rpd)" in text or "(tpd)" in text


@dataclass(frozen=True, slots=True)
class Fallback:
    """Send a request with ``model`` once its own model was refused ``after`` times (429/404)."""

    model: str
    after: int = 3
