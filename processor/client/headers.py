"""Reading the server's headers: Retry-After, x-ratelimit-*, OpenAI's durations.

Every parser here takes any string a server may send (1e308, "inf", " 5", an HTTP date
in year 9999, garbage) and returns a finite, non-negative number or None; none raises.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = ["MAX_WAIT", "RateLimitInfo", "parse_duration", "parse_retry_after",
           "retry_after_in_words"]

#: The longest wait any header can ask for: a week. A server asking for more (1e17 s, an
#: HTTP date in year 9999) is broken; the value stays finite, and the engine decides what
#: a long pause means (it stops the run, to be rerun later).
MAX_WAIT = 7 * 86400.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|\u00b5s|\u03bcs|ns|h|m|s)")
#: seconds per unit of a Go duration (Go prints under a millisecond in µs or ns).
_UNITS = {"ms": 0.001, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ns": 1e-9, "s": 1.0,
          "m": 60.0, "h": 3600.0}
_RETRY_IN_WORDS = re.compile(
    r"(?:retry after|try again in)\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+|\d+(?:\.\d+)?)"
    r"(?:\s*(ms|s|sec|seconds?)\b)?", re.I)


def _wait(seconds: float) -> float | None:
    """A wait fit to use: None for nan, at least 0, at most :data:`MAX_WAIT`."""
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_WAIT)


def parse_duration(text: str) -> float | None:
    """Parse OpenAI's reset durations ("20ms", "1s", "6m0s", "1h2m3.5s", "1.5") into
    seconds, at most :data:`MAX_WAIT`; None for anything else (negative, nan, garbage)."""
    text = text.strip()
    if not text or len(text) > 100:  # no real duration is longer; garbage is not parsed
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return _wait(value) if math.isfinite(value) and value >= 0 else None
    total = 0.0
    pos = 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        value = float(m.group(1))
        total += value * _UNITS[m.group(2)]
        pos = m.end()
    return _wait(total) if pos == len(text) and pos else None


def _finite(text: str) -> float | None:
    """A finite number (a wait may be negative: :func:`_wait` makes it 0), else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``retry-after``
    (seconds or an HTTP date), else None. Never negative, never over :data:`MAX_WAIT`."""
    # A proxy repeating a header ("2, 3", or on two lines): the longest wait.
    ms = _joined(headers, "retry-after-ms", _finite, max)
    if ms is not None:
        return _wait(ms / 1000.0)
    if "retry-after" not in headers:
        return None
    seconds = _joined(headers, "retry-after", _finite, max)
    if seconds is not None:
        return _wait(seconds)
    value = headers.get("retry-after", "")  # an HTTP date: the first line's
    if len(value) > 100:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        # email.utils raises all of these on garbage ("Mon, 99999999999 Jan 1 ...").
        return None
    if when.tzinfo is None:  # "-0000": the RFC says such dates are UTC
        when = when.replace(tzinfo=timezone.utc)
    # Arithmetic on aware datetimes, not .timestamp(): that needs the platform's
    # time_t and fails for year 1 or 9999 on some systems.
    try:
        delta = when - datetime.fromtimestamp(time.time(), timezone.utc)
    except OverflowError:  # year 1 with a negative offset: before datetime.min in UTC
        return 0.0
    return _wait(delta.total_seconds())


def retry_after_in_words(message: str) -> float | None:
    """The wait a 429's message asks for when no header says it: Azure (and some proxies)
    write "Please retry after 6 seconds."; OpenAI "try again in 1.2s" / "20ms" / "8m38.4s"."""
    hint = _RETRY_IN_WORDS.search(message)
    if not hint:
        return None
    seconds = parse_duration(hint.group(1))
    if seconds is not None and hint.group(2) and hint.group(2).lower() == "ms":
        seconds /= 1000.0
    return seconds


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What the server's ``x-ratelimit-*`` headers said (None where absent)."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo | None:
        """The headers' figures; None when no limit header was sent.

        A proxy that forwards the upstream's headers beside its own may join them
        ("600, 500"): limits and what is left read as the smaller, resets as the longer.
        """
        if "x-ratelimit-limit-requests" not in headers and (
            "x-ratelimit-limit-tokens" not in headers
        ):
            return None
        return cls(
            _joined(headers, "x-ratelimit-limit-requests", _count, min),
            _joined(headers, "x-ratelimit-limit-tokens", _count, min),
            _joined(headers, "x-ratelimit-remaining-requests", _count, min),
            _joined(headers, "x-ratelimit-remaining-tokens", _count, min),
            _joined(headers, "x-ratelimit-reset-requests", parse_duration, max),
            _joined(headers, "x-ratelimit-reset-tokens", parse_duration, max),
        )


def _count(text: str) -> float | None:
    """A count from a header: nonsense (negative, inf, nan, garbage) is as good as none."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _all(headers: Mapping[str, str], key: str) -> str | None:
    """``key``'s value; a header sent on several lines (aiohttp's multidict) as their
    values joined by commas, as a proxy joining them would send it."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        return headers.get(key)
    values = getall(key, [])
    return ", ".join(values[:8]) if values else None


def _joined(headers: Mapping[str, str], key: str, parse: Callable[[str], float | None],
            pick: Callable[[list[float]], float]) -> float | None:
    """``key``'s value, read by ``parse``; of values joined by commas (or sent on several
    lines), ``pick``'s choice among the readable ones (at most 8 looked at)."""
    value = _all(headers, key)
    if value is None or len(value) > 200:
        return None
    values = [v for part in value.split(",")[:8] if (v := parse(part)) is not None]
    return pick(values) if values else None
