"""Durations and times in messages: clamped (a server's ``Retry-After: 1e17`` is no date)
and said the way people read them (``3m05s``, ``at 2026-12-03 14:02 UTC``)."""

from __future__ import annotations

import math
import time

__all__ = ["MAX_SHOWN", "clamp_seconds", "clock_at", "human_duration"]


#: the longest time any message shows: beyond it, time arithmetic and ``time.localtime``
#: overflow (a ``Retry-After: 1e17`` is a server's word, not a date).
MAX_SHOWN = 100 * 365 * 86_400.0


def clamp_seconds(seconds: float) -> float:
    """``seconds`` within [0, MAX_SHOWN]; NaN counts as 0 (no wait is known)."""
    if seconds != seconds or seconds <= 0:  # NaN or not positive
        return 0.0
    return min(seconds, MAX_SHOWN)


def human_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h10m``, ``3d04h``; ``100 years or more`` from MAX_SHOWN on."""
    if seconds is None or seconds != seconds:
        return "?"
    if seconds >= MAX_SHOWN - 1:  # a clamped value, give or take rounding
        return "100 years or more"
    secs = int(math.ceil(clamp_seconds(seconds)))
    d, rem = divmod(secs, 86_400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h"
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def clock_at(seconds: float | None) -> str:
    """The local wall-clock time ``seconds`` from now, for "resumes at ..." messages."""
    if seconds is None or seconds != seconds:
        return "?"
    if seconds >= MAX_SHOWN - 1:
        return "100 years or more from now"
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(time.time() + clamp_seconds(seconds)))
