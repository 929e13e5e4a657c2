"""The report as one self-contained HTML file: inline CSS, static SVG charts
(:mod:`.svg`), the headline figures and the tables. No script and nothing fetched;
everything taken from the log (custom_ids, messages, key and model names) is escaped."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from ...stats import human_duration
from .aggregate import Aggregate
from .headline import headline
from .limits import limit_lines
from .svg import Chart, Series, render, si

__all__ = ["CHARTS", "render_page"]

#: the charts every report draws (``data-chart`` of each ``<svg>``).
CHARTS = ("requests", "tokens", "in_flight", "latency", "errors", "progress", "eta")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:960px;color:#1f2328;background:#fff;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:#59636e;margin-bottom:16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.card{border:1px solid #d1d9e0;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:20px}.card span{color:#59636e;font-size:12px}
svg.chart{display:block;margin:6px 0 18px;border:1px solid #eef1f4;border-radius:6px}
svg .title{font-weight:600;font-size:13px;fill:#1f2328}
svg .tick,svg .legend{font-size:11px;fill:#59636e}
svg .grid{stroke:#eef1f4}svg .axis{stroke:#8c959f}
svg .run{stroke:#8250df;stroke-dasharray:3 3}svg .span{fill:#cf222e;opacity:.08}
table{border-collapse:collapse;width:100%;margin:4px 0 12px;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef1f4;vertical-align:top}
th{color:#59636e;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;background:#f6f8fa;padding:1px 4px;border-radius:4px;word-break:break-all}
.note{color:#59636e;font-size:12px}
"""


def _rate(count: float, width: float) -> float:
    return count / width * 60.0


def charts(agg: Aggregate) -> list[Chart]:
    """The charts of ``agg``'s timeline."""
    tl = agg.timeline
    n = max(tl.used_buckets(), 1)
    b = tl.buckets[:n]
    limit = limit_lines(tl, agg.limits)
    w = tl.width
    spans = agg.spans
    runs = [(r.offset, f"run {r.number}") for r in agg.runs[1:]]

    def chart(key: str, title: str, unit: str, series: list[Series], **kw: Any) -> Chart:
        return Chart(key, title, unit, w, series, spans, runs, **kw)

    def secs(v: float) -> str:
        return f"{v:.3g}s"

    def mins(v: float) -> str:
        return human_duration(v)

    eta = [x.eta for x in b]
    progress = [100.0 * x.done / x.total if x.done is not None and x.total else None for x in b]
    lat = {q: [x.latency.quantile(q / 100) if x.latency else None for x in b]
           for q in (50, 90, 99)}
    return [
        chart("requests", "Requests per minute (achieved) against the limit", "requests/min", [
            Series("sent", "#0969da", [_rate(x.sent, w) for x in b]),
            Series("answered", "#1a7f37", [_rate(x.ok, w) for x in b]),
            Series("rpm limit", "#cf222e", limit["rpm"], "limit")]),
        chart("tokens", "Tokens per minute against the limit", "tokens/min", [
            Series("charged", "#0969da", [_rate(x.tokens, w) for x in b]),
            Series("used", "#1a7f37", [_rate(x.used, w) for x in b]),
            Series("tpm limit", "#cf222e", limit["tpm"], "limit")]),
        chart("in_flight", "Requests in flight (average)", "requests", [
            Series("in flight", "#8250df", [x.busy / w for x in b])]),
        chart("latency", "Latency percentiles of answers", "seconds", [
            Series("p50", "#1a7f37", lat[50]), Series("p90", "#bf8700", lat[90]),
            Series("p99", "#cf222e", lat[99])], fmt=secs),
        chart("errors", "Errors per minute", "errors/min", [
            Series("429", "#bf8700", [_rate(x.e429, w) for x in b], "bars"),
            Series("5xx", "#cf222e", [_rate(x.e5xx, w) for x in b], "bars"),
            Series("timeout / connection", "#8250df", [_rate(x.etimeout, w) for x in b], "bars"),
            Series("other", "#59636e", [_rate(x.eother, w) for x in b], "bars")]),
        chart("progress", "Progress (requests done, of the input)", "%", [
            Series("done", "#1a7f37", _carry(progress))], fmt=lambda v: f"{v:.0f}%"),
        chart("eta", "ETA as it stood", "time left", [
            Series("eta", "#0969da", eta)], fmt=mins),
    ]


def _carry(values: list[float | None]) -> list[float | None]:
    """Fill gaps with the last value (progress stands still between samples)."""
    out: list[float | None] = []
    last: float | None = None
    for v in values:
        last = v if v is not None else last
        out.append(last)
    return out


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _secs(v: float) -> str:
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.3g} s"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "?"


def render_page(agg: Aggregate, title: str) -> str:
    """The whole report as HTML (``title``: the log's name, escaped here)."""
    h = headline(agg)
    eff = h["efficiency"]
    lat = h["latency_s"]
    cost = "-" if h["cost_usd"] is None else f"${h['cost_usd']:,.2f}"
    cards = [
        _card(f"{h['answered']:,}", "answered" + (
            f" ({h['cached']:,} from the cache, {h['shared']:,} shared)"
            if h["cached"] or h["shared"] else "")),
        _card(f"{h['failed']:,}", "failed for good"),
        _card(f"{h['attempts']:,}", f"attempts ({h['n429']:,} refused with 429)"),
        _card(_pct(eff["rpm"]), "of the RPM limit used"),
        _card(_pct(eff["tpm"]), "of the TPM limit used"),
        _card(si(h["tokens"]["prompt"] + h["tokens"]["completion"]),
              f"tokens used ({si(h['tokens']['charged'])} charged)"),
        _card(cost, f"estimated cost ({h['cost_note']})"),
        _card(human_duration(h["wall_seconds"]), f"wall time over {h['runs']} run(s)"),
        _card("-" if lat["p50"] is None else f"{_secs(lat['p50'])} / {_secs(lat['p99'])}",
              "latency p50 / p99"),
    ]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'style-src \'unsafe-inline\'; img-src data:">',
        f"<title>batchproc report: {escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>batchproc report</h1><div class=\"sub\"><code>{escape(title)}</code> &middot; "
        f"{h['runs']} run(s) &middot; last stop: {escape(str(h['last_stop'] or 'none'))}"
        + (f" ({escape(h['last_stop_message'])})" if h["last_stop_message"] else "")
        + "</div>",
        f'<div class="cards">{"".join(cards)}</div>',
        f"<h2>Over time</h2><p class=\"note\">Runs laid end to end; each bucket "
        f"{escape(human_duration(agg.timeline.width))}"
        + _shaded(agg) + ".</p>",
    ]
    parts += [render(c) for c in charts(agg)]
    parts.append(_failures(agg))
    parts.append(_limit_groups(h["by_model"]))
    parts.append(_key_models(agg))
    parts.append(_runs(agg))
    parts.append(_pauses(agg))
    if agg.bad_lines.total:
        parts.append(f'<p class="note">{agg.bad_lines.total:,} unreadable line(s) in the log '
                     "were skipped (a torn last line after a kill, say).</p>")
    parts.append(f'<p class="note">{agg.events:,} events; written by batchproc report at '
                 f"{escape(_when(time.time()))}.</p></body></html>")
    return "\n".join(parts)


_SHADED = {"outage": "the server was down (outage)", "batch": "a batch ran (one shade each)",
           "batch_queue": "a part waited for room in the Batch API's queue",
           "redis": "admission waited for the shared limiter's Redis"}


def _shaded(agg: Aggregate) -> str:
    reasons = sorted({r for _, _, r in agg.spans})
    return ("; shaded: " + escape("; ".join(_SHADED.get(r, r) for r in reasons))
            if reasons else "")


def _table(head: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    th = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _failures(agg: Aggregate) -> str:
    rows = [[f"<code>{escape(r.code)}</code>", f"{r.count:,}",
             " ".join(f"<code>{escape(e)}</code>" for e in r.examples), escape(r.message)]
            for r in sorted(agg.failures.values(), key=lambda r: -r.count)]
    if not rows:
        return "<h2>Failures by reason</h2><p>None: nothing was written off.</p>"
    return "<h2>Failures by reason</h2>" + _table(
        ["reason", "requests", "examples (custom_id)", "message (first)"], rows, {1})


def _limit_groups(groups: dict[str, dict[str, Any]]) -> str:
    if not groups:
        return ""

    def limit(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    rows = [[escape(name or "(all models)"), f"{g['sent']:,}", limit(g["rpm_limit"]),
             _pct(g["efficiency"]["rpm"]), f"{g['tokens_charged']:,}", limit(g["tpm_limit"]),
             _pct(g["efficiency"]["tpm"])] for name, g in groups.items()]
    return ("<h2>Limits by model</h2><p class=\"note\">Each model (or shared bucket) against "
            "its own limits, summed over the keys, while it was sending; with "
            "<code>--limit-scope key</code> a key's models are one row (all models), and "
            "a model with a <code>--limit</code> of its own has its own row too: its "
            "requests passed both.</p>" + _table(
                ["model", "requests sent", "rpm limit", "of it used", "tokens charged",
                 "tpm limit", "of it used"], rows, {1, 2, 3, 4, 5, 6}))


def _key_models(agg: Aggregate) -> str:
    rows = [[escape(k or "(the key)"), escape(m or "?"), f"{r.answers:,}", f"{r.attempts:,}",
             f"{r.errors:,}", f"{r.prompt:,}", f"{r.completion:,}"]
            for (k, m), r in sorted(agg.by_key_model.items(), key=lambda kv: -kv[1].answers)]
    return "<h2>Answers by key and model</h2>" + _table(
        ["key", "model", "answered", "attempts", "errors", "prompt tokens",
         "completion tokens"], rows, {2, 3, 4, 5, 6})


def _runs(agg: Aggregate) -> str:
    rows = [[str(r.number), escape(_when(r.started_at)), escape(human_duration(r.seconds)),
             escape(r.reason or "no end recorded (killed?)"), escape(r.message or ""),
             f"{r.ok:,}", f"{r.failed:,}", f"{r.attempts:,}", f"{r.n429:,}",
             escape(", ".join(f"{k} {v:g}" for k, v in r.limits.items()) or "none")]
            for r in agg.runs]
    more = (f'<p class="note">{agg.runs_left_out:,} more runs not listed.</p>'
            if agg.runs_left_out else "")
    return "<h2>Runs</h2>" + _table(
        ["run", "started", "wall time", "stop", "message", "ok", "failed", "attempts", "429s",
         "limits (flags)"], rows, {0, 5, 6, 7, 8}) + more


def _pauses(agg: Aggregate) -> str:
    if not agg.pauses:
        return ""
    rows = [[escape(reason), f"{count:,}"] for reason, count in agg.pauses.most_common()]
    return "<h2>Pauses</h2>" + _table(["reason", "times"], rows, {1})
