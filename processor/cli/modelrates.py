"""Each model's achieved rate against its own limits, when a job has several model
buckets (:mod:`processor.limits.models`): ``gpt-4o 498/500 rpm, gpt-4o-mini 1.9M/2M tpm``.

The engine counts attempts and tokens per bucket (``Stats.by_model``, one counter a
request) and publishes each bucket's per-minute limits at its progress ticks
(``Stats.model_limits``); the rates here come from samples taken at the display's ticks,
nothing per request. Each model shows the unit nearer its limit (the one that binds).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ..stats import Stats

__all__ = ["ModelRates", "models_line", "models_summary", "models_summary_line"]

#: models shown on one line (the busiest); the rest are counted.
SHOWN = 6
#: beyond this many buckets (an input naming models by the thousand), no per-model
#: figures at all: the display's ticks stay cheap and the summary short.
MAX_MODELS = 100


class ModelRates:
    """Requests and tokens per minute of each model bucket over a sliding window."""

    __slots__ = ("_samples", "window")

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()

    def update(self, stats: Stats, now: float | None = None) -> dict[str, tuple[float, float]]:
        """Record a sample; return each bucket's (requests/min, tokens/min), or {} while
        the job has fewer than two buckets (or more than :data:`MAX_MODELS`)."""
        if not 2 <= len(stats.by_model) <= MAX_MODELS:
            return {}
        now = time.monotonic() if now is None else now
        self._samples.append((now, {b: (r[0], r[1]) for b, r in stats.by_model.items()}))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.popleft()
        t0, first = self._samples[0]
        dt = now - t0
        if dt <= 0:
            return {b: (0.0, 0.0) for b in stats.by_model}
        return {b: ((r - first.get(b, (0, 0))[0]) / dt * 60,
                    (k - first.get(b, (0, 0))[1]) / dt * 60)
                for b, (r, k) in self._samples[-1][1].items()}


def _num(value: float) -> str:
    """``2,990``; ``450k``; ``1.95M``: short enough for a line of several models."""
    if value < 100_000:
        return f"{value:,.0f}"
    if value < 1_000_000:
        return f"{value / 1e3:,.0f}k"
    return f"{value / 1e6:,.3g}M"


def _name(bucket: str) -> str:
    """A model's name fit for a terminal line: printable, at most 40 characters."""
    if not bucket:
        return "(no model)"
    return "".join(c if c.isprintable() else "?" for c in bucket[:40])


def _one(bucket: str, rpm: float, tpm: float,
         limits: tuple[float | None, float | None] | None) -> str:
    name = _name(bucket)
    r_limit, t_limit = limits or (None, None)
    r_share = rpm / r_limit if r_limit else -1.0
    t_share = tpm / t_limit if t_limit else -1.0
    if t_limit and t_share > r_share:
        return f"{name} {_num(tpm)}/{_num(t_limit)} tpm"
    return f"{name} {_num(rpm)}" + (f"/{_num(r_limit)}" if r_limit else "") + " rpm"


def models_line(stats: Stats, rates: dict[str, tuple[float, float]]) -> str:
    """``gpt-4o 498/500 rpm, gpt-4o-mini 2,990/3,000 rpm`` ("" for one bucket)."""
    if len(rates) < 2:
        return ""
    busiest = sorted(rates, key=lambda b: -stats.by_model.get(b, [0])[0])
    shown = sorted(busiest[:SHOWN])
    text = ", ".join(_one(b, *rates[b], stats.model_limits.get(b)) for b in shown)
    more = len(rates) - len(shown)
    return text + (f" (+{more} more)" if more else "")


def models_summary(stats: Stats) -> dict[str, dict[str, Any]]:
    """Per model bucket over the run: attempts, tokens charged, achieved rates and the
    limits ({} for a job of one bucket, or of more than :data:`MAX_MODELS`)."""
    if not 2 <= len(stats.by_model) <= MAX_MODELS:
        return {}
    minutes = max(stats.elapsed, 1e-9) / 60
    out: dict[str, dict[str, Any]] = {}
    for bucket in sorted(stats.by_model):
        attempts, tokens = stats.by_model[bucket]
        rpm_limit, tpm_limit = stats.model_limits.get(bucket, (None, None))
        out[_name(bucket)] = {
            "attempts": attempts, "tokens_charged": tokens,
            "achieved_rpm": round(attempts / minutes, 1),
            "achieved_tpm": round(tokens / minutes, 1),
            "rpm_limit": rpm_limit, "tpm_limit": tpm_limit}
    return out


def models_summary_line(stats: Stats) -> str | None:
    """``by model: gpt-4o 498/500 rpm, ...`` over the whole run (None: one bucket)."""
    if not 2 <= len(stats.by_model) <= MAX_MODELS:
        return None
    rates = {b: (r[0], r[1]) for b, r in stats.by_model.items()}
    minutes = max(stats.elapsed, 1e-9) / 60
    line = models_line(stats, {b: (r / minutes, k / minutes) for b, (r, k) in rates.items()})
    return f"by model (achieved over the run / limit): {line}" if line else None
