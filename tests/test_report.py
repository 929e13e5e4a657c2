"""The report's aggregation (buckets, sketches, runs, tables, headline figures), its HTML
(escaped, self-contained) and the ``report`` command."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from processor.cli.app import app
from processor.tools.report import CHARTS, aggregate, headline, render_page
from processor.tools.report.headline import format_headline
from processor.tools.report.timeline import LatencySketch, Timeline


def write_log(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def start(run: int, at: float = 1_700_000_000.0, **kw: Any) -> dict[str, Any]:
    return {"ev": "start", "run": run, "at": at, "t": 0.0, "limits": kw.pop("limits", {}),
            "cfg": {"keys": kw.pop("keys", [])}, "total": kw.pop("total", None), **kw}


def attempt(cid: str, ts: float, td: float, status: int | None = 200, error: str | None = None,
            **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"ev": "a", "id": cid, "n": 1, "ta": ts, "ts": ts, "td": td,
                         "te": kw.pop("te", 100), "st": status, **kw}
    if error:
        e["er"] = error
    else:
        e.setdefault("tp", 60)
        e.setdefault("tc", 20)
    return e


def test_latency_sketch_quantiles_within_its_error() -> None:
    rng = random.Random(1)
    values = sorted(rng.lognormvariate(-1.5, 1.0) for _ in range(20_000))
    sketch = LatencySketch()
    for v in values:
        sketch.add(v)
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        got = sketch.quantile(q)
        assert got is not None and abs(got / exact - 1) < 0.06, (q, got, exact)
    assert LatencySketch().quantile(0.5) is None


def test_timeline_doubles_and_keeps_every_sum() -> None:
    tl = Timeline(size=8, width=1.0)
    for second in range(100):
        tl.at(second + 0.5).sent += 1
    assert len(tl.buckets) == 8 and tl.width == 16.0
    assert sum(b.sent for b in tl.buckets) == 100
    assert [b.sent for b in tl.buckets][:7] == [16] * 6 + [4]
    tl.spread(10.0, 50.0)  # 40 attempt-seconds over four buckets
    assert sum(b.busy for b in tl.buckets) == pytest.approx(40.0)
    assert tl.buckets[0].busy == pytest.approx(6.0)


def test_aggregate_runs_tables_and_limits(tmp_path: Path) -> None:
    events = [
        start(1, limits={"rpm": 60, "tpm": 10_000}, keys=["A", "B"], total=5),
        attempt("r1", 0.1, 0.4, k="A", m="gpt-4o-mini"),
        attempt("r2", 0.2, 1.2, 429, "rate_limited", k="B", m="gpt-4o-mini"),
        {"ev": "pause", "t": 1.2, "r": "429", "until": 3.2, "key": "B"},
        attempt("r2", 3.3, 3.5, 500, "server_error", k="A", m="gpt-4o-mini"),
        attempt("r3", 3.4, 4.0, None, "connection_error", k="A", m="gpt-4o-mini"),
        {"ev": "limit", "t": 4.0, "name": "rpm", "value": 30, "key": "A"},
        attempt("r4", 4.2, 4.3, 400, "bad_request", k="B", m="gpt-4o-mini"),
        {"ev": "pause", "t": 4.5, "r": "outage", "until": None},
        {"ev": "resume", "t": 9.5, "r": "outage", "down": 5.0},
        {"ev": "fail", "t": 10.0, "id": "r2", "line": 2, "code": "server_error", "msg": "boom"},
        {"ev": "fail", "t": 10.0, "id": None, "line": 7, "code": "invalid_line", "msg": "bad"},
        {"ev": "p", "t": 10.0, "done": 3, "total": 5, "eta": 20.0},
        # killed: no end event
        start(2, at=1_700_090_000.0, limits={"rpm": 60}, total=5),
        attempt("r3", 0.5, 0.7, m="text-embedding-3-small", tc=0),
        {"ev": "p", "t": 1.0, "done": 5, "total": 5, "eta": 0.0},
        {"ev": "end", "t": 1.0, "reason": "completed", "msg": None, "skipped": 3,
         "elapsed": 1.25},
    ]
    log = write_log(tmp_path / "j.run.jsonl", events)
    with open(log, "ab") as f:
        f.write(b'{"ev":"a","id":"torn"')
    agg = aggregate(log)
    assert agg.bad_lines == [len(events) + 1]
    assert [(r.number, r.reason, r.seconds, r.offset) for r in agg.runs] == [
        (1, None, 10.0, 0.0), (2, "completed", 1.25, 10.0)]
    first = agg.runs[0]
    assert (first.ok, first.attempts, first.n429, first.failed) == (1, 5, 1, 2)
    assert agg.answers == 2 and agg.attempts == 6
    assert agg.errors == {"429": 1, "5xx": 1, "timeout / connection": 1, "bad_request": 1}
    assert {r.code: (r.count, r.examples) for r in agg.failures.values()} == {
        "server_error": (1, ["r2"]), "invalid_line": (1, ["line 7"])}
    assert agg.by_key_model[("A", "gpt-4o-mini")].answers == 1
    assert agg.by_key_model[("B", "gpt-4o-mini")].errors == 2
    assert agg.pauses == {"429": 1, "outage": 1}
    assert agg.spans == [(4.5, 9.5, "outage")]
    sent = [b for b in agg.timeline.buckets if b.sent]
    # Two keys at 60 rpm each; then key A learns 30 (B keeps its flag); run 2 has one key.
    # A log without limit_scope (written before limits per model) counts a key's models
    # as one group.
    assert [(b.sent, b.groups and b.groups[""].rpm) for b in sent] == [
        (2, 120), (2, 120), (1, 90), (1, 60)]
    h = headline(agg)
    assert h["runs"] == 2 and h["answered"] == 2 and h["failed"] == 2
    assert h["progress"] == {"done": 5, "total": 5, "eta_s": 0.0}
    assert h["cost_usd"] == pytest.approx((60 * 0.15 + 20 * 0.60 + 60 * 0.02) / 1e6, abs=1e-4)
    assert "run 1" in format_headline(h) and "killed?" in format_headline(h)


def test_efficiency_at_the_limit(tmp_path: Path) -> None:
    # 60 rpm for two minutes, one request a second: the limit used in full.
    events = [start(1, limits={"rpm": 60})]
    events += [attempt(f"r{i}", i + 0.01, i + 0.02) for i in range(120)]
    events.append({"ev": "end", "t": 120.0, "reason": "completed", "elapsed": 120.0})
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", events)))
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.03)
    assert h["efficiency"]["tpm"] is None and h["binding"] == "rpm"


def test_bounded_buckets_for_a_long_log(tmp_path: Path) -> None:
    # Ten hours of attempts: still the same few hundred buckets, every attempt counted.
    events = [start(1)] + [attempt(f"r{i}", i * 1.8, i * 1.8 + 0.3) for i in range(20_000)]
    agg = aggregate(write_log(tmp_path / "x.run.jsonl", events))
    assert len(agg.timeline.buckets) == 240 and agg.timeline.width >= 36_000 / 240
    assert sum(b.sent for b in agg.timeline.buckets) == 20_000 == agg.answers


HOSTILE = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&'


def test_everything_from_the_log_is_escaped(tmp_path: Path) -> None:
    events = [start(1, keys=[HOSTILE, "B"]),
              attempt(HOSTILE, 0.1, 0.2, 400, "bad_request", k=HOSTILE, m=HOSTILE),
              attempt("ok", 0.1, 0.2, k=HOSTILE, m=HOSTILE),
              {"ev": "pause", "t": 0.3, "r": HOSTILE, "until": None},
              {"ev": "fail", "t": 0.3, "id": HOSTILE, "line": 1, "code": HOSTILE,
               "msg": HOSTILE},
              {"ev": "end", "t": 1.0, "reason": HOSTILE, "msg": HOSTILE, "elapsed": 1.0}]
    page = render_page(aggregate(write_log(tmp_path / "x.run.jsonl", events)), HOSTILE)
    assert "<script" not in page and "<img" not in page and "onerror=alert" not in page.replace(
        "onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Self-contained: nothing fetched, no script at all.
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "Content-Security-Policy" in page


def test_every_chart_is_drawn(tmp_path: Path) -> None:
    events = [start(1, limits={"rpm": 600, "tpm": 100_000}, total=40)]
    for i in range(40):
        events.append(attempt(f"r{i}", i * 0.5, i * 0.5 + 0.2))
        if i % 5 == 0:
            events.append(attempt(f"r{i}", i * 0.5, i * 0.5 + 0.1, 429, "rate_limited"))
        events.append({"ev": "p", "t": i * 0.5 + 0.3, "done": i + 1, "total": 40,
                       "eta": (39 - i) * 0.5})
    page = render_page(aggregate(write_log(tmp_path / "x.run.jsonl", events)), "x")
    for key in CHARTS:
        svg = re.search(rf'<svg class="chart" data-chart="{key}".*?</svg>', page, re.S)
        assert svg, key
        assert re.search(r'<path class="series|<g class="series bars"[^>]*><rect', svg.group(0))


runner = CliRunner()


def test_report_command(tmp_path: Path) -> None:
    job = tmp_path / "job.jsonl"
    job.write_text('{"model": "m", "messages": []}\n')
    log = write_log(tmp_path / "job.run.jsonl", [
        start(1, limits={"rpm": 60}), attempt("r1", 0.1, 0.3, m="gpt-4o-mini"),
        {"ev": "end", "t": 1.0, "reason": "completed", "elapsed": 1.0}])
    # The job file finds its log; the HTML goes beside it.
    result = runner.invoke(app, ["report", str(job)])
    assert result.exit_code == 0, result.output
    html = tmp_path / "job.report.html"
    assert html.read_text().startswith("<!DOCTYPE html>")
    result = runner.invoke(app, ["report", str(log), "--json"])
    figures = orjson.loads(result.stdout)
    assert figures["answered"] == 1 and figures["per_run"][0]["stop"] == "completed"
    result = runner.invoke(app, ["report", str(log), "--summary", "-o", str(tmp_path / "r.html")])
    assert "answered 1" in result.stdout and (tmp_path / "r.html").exists()
    # No log, an empty log, the log as the output: refused.
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")
    assert runner.invoke(app, ["report", str(other)]).exit_code == 2
    empty = tmp_path / "empty.run.jsonl"
    empty.write_text("")
    assert runner.invoke(app, ["report", str(empty)]).exit_code == 1
    assert runner.invoke(app, ["report", str(log), "-o", str(log)]).exit_code == 2
    assert log.read_bytes().startswith(b'{"ev":"start"')
    assert runner.invoke(app, ["report", str(log), "-o", str(job)]).exit_code == 2
    assert job.read_text().startswith('{"model"')


def test_a_hostile_log_never_breaks_the_report(tmp_path: Path) -> None:
    weird: list[Any] = [None, "x", -1, 1e308, -1e308, [], {}, {"a": 1}, True, 2**70]
    rng = random.Random(3)
    keys = ["ev", "t", "ts", "td", "ta", "st", "er", "te", "tp", "tc", "k", "m", "id", "code",
            "msg", "r", "until", "run", "at", "limits", "cfg", "done", "total", "eta", "name",
            "value", "key", "reason", "elapsed", "resume"]
    kinds = ["a", "start", "end", "p", "fail", "pause", "resume", "limit", "x", 3]
    events = []
    for _ in range(3000):
        e = {k: rng.choice(weird) for k in rng.sample(keys, 8)}
        e["ev"] = rng.choice(kinds)
        events.append(e)
    log = tmp_path / "x.run.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))  # 2**70: not orjson's
    with open(log, "ab") as f:
        f.write(b"[1,2]\n\xff\xfe garbage\nnull\n" + b"{" * 100_000 + b"\n")
    agg = aggregate(log)
    page = render_page(agg, "x")
    assert page.endswith("</html>") and len(agg.timeline.buckets) == 240
    headline(agg)
