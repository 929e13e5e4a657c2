"""The headline figures of a job's run log: what people ask first (did it run at the
limit, how many failed, what did it cost, how long did each run take), as a dict for
``--json`` and as lines for ``--summary``."""

from __future__ import annotations

import time
from typing import Any

from ...stats import human_duration
from ...store.runlog import BATCH_KEY
from ..estimate import BATCH_DISCOUNT, PRICES_AS_OF, price_for
from .aggregate import Aggregate
from .limits import GroupUse, usage

__all__ = ["by_model", "efficiency", "format_headline", "headline"]


def efficiency(agg: Aggregate) -> dict[str, float | None]:
    """Requests and tokens sent as a share of what the limits allowed while each limit
    group (a model, with ``--limit-scope model``) was sending (``None``: no such limit);
    see :mod:`.limits`."""
    return usage(agg.timeline, agg.limits)[0]


def by_model(groups: dict[str, GroupUse]) -> dict[str, dict[str, Any]]:
    """Per limit group (a model or shared bucket; "" for a key's requests counted
    together): what it sent, its last limits in force, and its efficiency."""
    return {group: {"sent": use.sent, "tokens_charged": use.tokens, "rpm_limit": use.rpm,
                    "tpm_limit": use.tpm, "efficiency": use.efficiency}
            for group, use in sorted(groups.items(), key=lambda kv: -kv[1].sent)}


def _cost(agg: Aggregate) -> tuple[float | None, list[str]]:
    total = 0.0
    unpriced: list[str] = []
    for (key, model), row in agg.by_key_model.items():
        if not (row.prompt or row.completion):
            continue
        price = price_for(model) if model else None
        if price is None:
            if model not in unpriced:
                unpriced.append(model or "(no model)")
            continue
        share = BATCH_DISCOUNT if key == BATCH_KEY else 1.0  # answered by the Batch API
        total += share * (row.prompt * price.input + row.completion * price.output) / 1e6
    priced = any(row.prompt or row.completion for row in agg.by_key_model.values())
    return (round(total, 4) if priced and len(unpriced) < len(agg.by_key_model) else None,
            unpriced)


def headline(agg: Aggregate) -> dict[str, Any]:
    """The headline figures as a JSON-able dict."""
    cost, unpriced = _cost(agg)
    eff, groups = usage(agg.timeline, agg.limits)
    binding = max((k for k in eff if eff[k] is not None), key=lambda k: eff[k] or 0.0,
                  default=None)
    last = agg.runs[-1] if agg.runs else None
    done = total = None
    eta = None
    for bucket in agg.timeline.buckets:
        if bucket.done is not None:
            done, total, eta = bucket.done, bucket.total, bucket.eta
    return {
        "runs": len(agg.runs) + agg.runs_left_out,
        "wall_seconds": round(sum(r.seconds for r in agg.runs), 3),
        "answered": agg.answers,
        "cached": agg.cached,
        "shared": agg.shared,
        "failed": agg.failed,
        "attempts": agg.attempts,
        "errors": dict(agg.errors.most_common()),
        "n429": agg.errors.get("429", 0),
        "tokens": {"prompt": agg.prompt_tokens, "completion": agg.completion_tokens,
                   "charged": agg.tokens_charged},
        "cost_usd": cost,
        "cost_note": f"list prices as of {PRICES_AS_OF}" + (
            f"; no price for {', '.join(unpriced[:5])}" if unpriced else ""),
        "efficiency": eff,
        "by_model": by_model(groups),
        "binding": binding,
        "latency_s": {f"p{q}": _round(agg.latency.quantile(q / 100)) for q in (50, 90, 99)},
        "progress": {"done": done, "total": total, "eta_s": eta},
        "last_stop": last.reason if last else None,
        "last_stop_message": last.message if last else None,
        "per_run": [{"run": r.number, "started_at": r.started_at,
                     "wall_seconds": round(r.seconds, 3), "stop": r.reason, "ok": r.ok,
                     "failed": r.failed, "attempts": r.attempts, "n429": r.n429}
                    for r in agg.runs],
        "failures": {row.code: row.count for row in sorted(
            agg.failures.values(), key=lambda r: -r.count)},
        "unreadable_lines": len(agg.bad_lines),
        "pauses": dict(agg.pauses.most_common()),
        "open_pauses": [{"reason": r, "at_s": round(a, 3), "seconds": round(b - a, 3)}
                        for a, b, r in agg.spans],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else "?"


def _model_lines(groups: dict[str, dict[str, Any]]) -> list[str]:
    """A line of each limit group's use when there are several (one: the line above)."""
    if len(groups) < 2:
        return []
    return [f"  {name or '(all models)'}: {g['sent']:,} sent, rpm {_pct(g['efficiency']['rpm'])}"
            f" of {_limit(g['rpm_limit'])}, tpm {_pct(g['efficiency']['tpm'])} of "
            f"{_limit(g['tpm_limit'])}" for name, g in list(groups.items())[:20]]


def _limit(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_headline(h: dict[str, Any]) -> str:
    """The headline figures as lines for a terminal."""
    eff = h["efficiency"]
    lines = [
        f"runs: {h['runs']}, wall time {human_duration(h['wall_seconds'])}; last stop: "
        f"{h['last_stop'] or 'none recorded (killed?)'}",
        f"answered {h['answered']:,}" + (
            f" (cached {h['cached']:,}, shared {h['shared']:,})"
            if h["cached"] or h["shared"] else "")
        + f", failed for good {h['failed']:,}, attempts {h['attempts']:,}, "
        f"429s {h['n429']:,}",
        f"efficiency against the limits: rpm {_pct(eff['rpm'])}, tpm {_pct(eff['tpm'])}"
        + (f" (binding: {h['binding']})" if h["binding"] else ""),
        *_model_lines(h["by_model"]),
        f"tokens: {h['tokens']['prompt']:,} prompt + {h['tokens']['completion']:,} "
        f"completion ({h['tokens']['charged']:,} charged at admission)",
        "estimated cost: " + ("-" if h["cost_usd"] is None else f"${h['cost_usd']:,.4f}")
        + f" ({h['cost_note']})",
    ]
    lat = h["latency_s"]
    if lat["p50"] is not None:
        lines.append(f"latency: p50 {lat['p50']:.3f}s, p90 {lat['p90']:.3f}s, "
                     f"p99 {lat['p99']:.3f}s")
    prog = h["progress"]
    if prog["total"]:
        lines.append(f"progress: {prog['done']:,}/{prog['total']:,}")
    for r in h["per_run"]:
        lines.append(f"  run {r['run']}: {_when(r['started_at'])}, "
                     f"{human_duration(r['wall_seconds'])}, {r['stop'] or 'killed?'}: "
                     f"{r['ok']:,} ok, {r['failed']:,} failed, {r['attempts']:,} attempts")
    if h["failures"]:
        lines.append("failures: " + ", ".join(f"{k} {v:,}" for k, v in
                                               list(h["failures"].items())[:8]))
    return "\n".join(lines)
