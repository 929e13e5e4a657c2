"""The mock server's rate limiter: OpenAI-style token buckets, 429 bodies and headers."""

from __future__ import annotations

import enum
import math

from .bodies import RATE_LIMIT_DOCS, error_body

__all__ = ["Bucket", "Limiter", "Unit", "format_duration"]


def format_duration(seconds: float) -> str:
    """Format a wait the way OpenAI's ``x-ratelimit-reset-*`` headers do (Go durations).

    Args:
        seconds: the duration; rounded *up* to whole milliseconds, negatives become 0.

    Returns:
        e.g. ``"0s"``, ``"20ms"``, ``"1s"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3.5s"``.
    """
    # ceil so a client that waits exactly this long finds the capacity there; the epsilon
    # keeps float noise (0.1 + 0.2) from adding a millisecond.
    total_ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) + (f".{rest % 1000:03d}".rstrip("0") if rest % 1000 else "")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class Unit(str, enum.Enum):
    """What a bucket counts (the word OpenAI uses in headers and error types)."""

    REQUESTS = "requests"
    TOKENS = "tokens"


class Bucket:
    """A token bucket refilled continuously at ``capacity / period`` per second."""

    __slots__ = ("capacity", "rate", "level", "last", "unit", "label", "per_minute")

    def __init__(self, capacity: float, period: float, fill: float, now: float,
                 unit: Unit, label: str) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self.level = capacity * fill
        self.last = now
        self.unit = unit
        self.label = label  # e.g. "tokens per min (TPM)"
        self.per_minute = period == 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
        self.last = now

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now); call after refill."""
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


class Limiter:
    """RPM / TPM / RPD / TPD buckets that admit or refuse a request, as OpenAI does.

    Args:
        rpm, tpm, rpd, tpd: the limits (``None``: none).
        initial_fill: share of the per-minute buckets available at ``now``.
        count_rejected: a refused request still spends one request (floored at 0).
        now: the clock's reading at start.
    """

    def __init__(self, rpm: float | None, tpm: float | None, rpd: float | None,
                 tpd: float | None, *, initial_fill: float, count_rejected: bool,
                 now: float) -> None:
        specs = (
            (rpm, 60.0, initial_fill, Unit.REQUESTS, "requests per min (RPM)"),
            (tpm, 60.0, initial_fill, Unit.TOKENS, "tokens per min (TPM)"),
            (rpd, 86400.0, 1.0, Unit.REQUESTS, "requests per day (RPD)"),
            (tpd, 86400.0, 1.0, Unit.TOKENS, "tokens per day (TPD)"),
        )
        self.buckets = [Bucket(lim, per, fill, now, unit, label)
                        for lim, per, fill, unit, label in specs if lim]
        self.count_rejected = count_rejected

    def admit(self, model: str, cost: int, now: float, headers: dict[str, str]) -> bytes | None:
        """Charge every bucket and add the rate-limit headers; or return the 429 body."""
        worst: tuple[float, Bucket, int] | None = None
        refused: bytes | None = None
        for b in self.buckets:
            b.refill(now)
            amount = cost if b.unit is Unit.TOKENS else 1
            if amount > b.capacity:
                refused = error_body(
                    f"Request too large for {model} in organization org-mock on {b.label}: "
                    f"Limit {int(b.capacity)}, Requested {amount}. The input or output tokens "
                    f"must be reduced in order to run successfully. {RATE_LIMIT_DOCS}",
                    b.unit.value, "rate_limit_exceeded")
                break
            wait = b.wait(amount)
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, b, amount)
        if refused is None and worst is not None:
            # Report the limit that takes longest to free up: after that wait, all have room.
            wait, b, amount = worst
            refused = error_body(
                f"Rate limit reached for {model} in organization org-mock on {b.label}: "
                f"Limit {int(b.capacity)}, Used {math.ceil(b.capacity - b.level)}, "
                f"Requested {amount}. "
                f"Please try again in {format_duration(wait)}. {RATE_LIMIT_DOCS}",
                b.unit.value, "rate_limit_exceeded")
            headers["retry-after"] = str(math.ceil(wait - 1e-9))
            headers["retry-after-ms"] = str(math.ceil(wait * 1000 - 1e-6))
        if refused is None:
            for b in self.buckets:
                b.level -= cost if b.unit is Unit.TOKENS else 1
        elif self.count_rejected:
            for b in self.buckets:
                if b.unit is Unit.REQUESTS:  # floored at 0: hammering delays, never locks out
                    b.level = max(0.0, b.level - 1)
        # OpenAI's x-ratelimit-* headers describe the per-minute limits only.
        for b in self.buckets:
            if b.per_minute:
                unit = b.unit.value
                headers[f"x-ratelimit-limit-{unit}"] = str(int(b.capacity))
                headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, int(b.level)))
                headers[f"x-ratelimit-reset-{unit}"] = format_duration(
                    (b.capacity - b.level) / b.rate)
        return refused
