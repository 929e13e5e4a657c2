"""The report's limits per model: each model (or shared bucket) against its own limits
while it was sending, summed over keys; the limit line follows the models at work."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.limits.models import ModelLimit
from processor.run.config import JobConfig
from processor.run.observer import safe_config
from processor.store.runlog import BATCH_KEY
from processor.tools.report import aggregate, headline, render_page
from processor.tools.report.headline import format_headline
from processor.tools.report.limits import limit_lines
from tests.conftest import chat_line, start_cli, write_jsonl
from tests.test_report import attempt, write_log


def start(flags: dict[str, float], **cfg: Any) -> dict[str, Any]:
    return {"ev": "start", "run": 1, "at": 1.7e9, "t": 0.0, "limits": flags,
            "cfg": {"keys": ["(one key)"], "limit_scope": "model", **cfg}}


def steady(model: str, per_second: float, first: float, last: float,
           **kw: Any) -> list[dict[str, Any]]:
    """Requests for ``model`` at ``per_second`` from ``first`` to ``last`` seconds."""
    n = round((last - first) * per_second)
    return [attempt(f"{model}-{i}", first + i / per_second, first + i / per_second + 0.05,
                    m=model, **kw) for i in range(n)]


def ordered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return events[:1] + sorted(events[1:], key=lambda e: e.get("ts", e.get("t", 0.0)))


def test_two_models_each_at_the_bare_flag_are_each_at_their_limit(tmp_path: Path) -> None:
    # --rpm 60 in model scope: each model may send 60 a minute. Model a works for the
    # first minute, b for two: both at their limit, so the run is too (it said 150%).
    events = ordered([start({"rpm": 60})] + steady("a", 1.0, 0.0, 60.0)
                     + steady("b", 1.0, 0.0, 120.0))
    agg = aggregate(write_log(tmp_path / "x.run.jsonl", events))
    h = headline(agg)
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.03)
    by = h["by_model"]
    assert set(by) == {"a", "b"} and by["b"]["sent"] == 120 and by["a"]["sent"] == 60
    assert by["a"]["rpm_limit"] == by["b"]["rpm_limit"] == 60
    for name in "ab":
        assert by[name]["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.03)
    # The limit line: both models' limits while both send, then b's alone.
    line = limit_lines(agg.timeline, agg.limits)["rpm"]
    width = agg.timeline.width
    assert line[int(30 / width)] == 120 and line[int(90 / width)] == 60
    text = format_headline(h)
    assert "  a: 60 sent, rpm " in text and "  b: 120 sent, rpm " in text and "of 60," in text
    page = render_page(agg, "x")
    assert "Limits by model" in page and "<td>a</td>" in page


def test_own_limits_learned_limits_and_keys(tmp_path: Path) -> None:
    # Two keys; model a has --limit a=120 (per key: 240 in all), b the bare flag 60 (120
    # in all) until the server says key B may send b only 30 a minute (90 in all).
    events = [start({"rpm": 60}, keys=["A", "B"],
                    limits={"a": {"rpm": 120, "tpm": None, "rpd": None, "tpd": None}})]
    events += steady("a", 4.0, 0.0, 30.0, k="A") + steady("b", 2.0, 0.0, 30.0, k="B")
    events.append({"ev": "limit", "t": 30.0, "name": "rpm b", "value": 30, "key": "B",
                   "model": "b"})
    events += steady("b", 1.5, 30.0, 60.0, k="A")
    agg = aggregate(write_log(tmp_path / "x.run.jsonl", ordered(events)))
    by = headline(agg)["by_model"]
    assert by["a"]["rpm_limit"] == 240 and by["b"]["rpm_limit"] == 90
    for name in "ab":
        assert by[name]["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.04), (name, by)


def test_key_scope_counts_a_keys_models_together(tmp_path: Path) -> None:
    # --limit-scope key, --rpm 60: a and b share 60 a minute (30 each here: 100%).
    events = [start({"rpm": 60}, limit_scope="key")]
    events += steady("a", 0.5, 0.0, 60.0) + steady("b", 0.5, 0.25, 60.25)
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", ordered(events))))
    assert set(h["by_model"]) == {""} and h["by_model"][""]["sent"] == 60
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.03)


def test_shared_buckets_count_as_one_model(tmp_path: Path) -> None:
    events = [start({"rpm": 60}, shared_buckets=[["gpt-4o", "gpt-4o-2024-08-06"]])]
    events += steady("gpt-4o", 0.5, 0.0, 60.0) + steady("gpt-4o-2024-08-06", 0.5, 0.25, 60.25)
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", ordered(events))))
    assert set(h["by_model"]) == {"gpt-4o"}
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.03)


def test_batch_api_requests_are_not_held_to_the_limits(tmp_path: Path) -> None:
    # A Batch API part of 500 requests, collected at once: no limit of ours applies.
    events = [start({"rpm": 60})] + steady("a", 1.0, 0.0, 60.0)
    events += [attempt(f"b{i}", 10.0, 50.0, m="a", k=BATCH_KEY) for i in range(500)]
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", ordered(events))))
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.03)
    assert h["by_model"]["a"]["sent"] == 60


def test_the_start_event_holds_the_limits_per_model_as_data() -> None:
    cfg = JobConfig(limits={"a": ModelLimit(rpm=600.0, tpm=None)},
                    shared_buckets=[["x", "y"]])
    shown = safe_config(cfg)
    assert shown["limits"] == {"a": {"rpm": 600.0, "tpm": None, "rpd": None, "tpd": None}}
    assert shown["shared_buckets"] == [["x", "y"]]
    orjson.dumps(shown)  # JSON as it stands


async def test_a_real_run_of_two_models_reports_each_at_its_limit(
        tmp_path: Path, mock_api: Any) -> None:
    """Through the CLI: two models in the default scope, one with a --limit of its own.
    The bare --rpm holds each model apart, so the run sends 1,800 a minute in all; the
    report had it at 150% of the 1,200 flag."""
    api = await mock_api(latency_ms=5)
    lines = [chat_line(i, model="model-a" if i % 2 else "model-b") for i in range(120)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    proc = await start_cli(job, api.base_url, "--rpm", "1200", "--tpm", "off", "--limit",
                           "model-a=600/-", max_in_flight=16)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    h = headline(aggregate(tmp_path / "job.run.jsonl"))
    by = h["by_model"]
    assert by["model-a"]["rpm_limit"] == 600 and by["model-b"]["rpm_limit"] == 1200
    assert by["model-a"]["sent"] == by["model-b"]["sent"] == 60
    # Counters start empty and hold a second's burst: each model ran at its limit.
    for name in ("model-a", "model-b"):
        assert 0.8 <= by[name]["efficiency"]["rpm"] <= 1.1, (name, by)
    assert 0.8 <= h["efficiency"]["rpm"] <= 1.1, h


def test_hostile_limit_settings_never_break_the_report(tmp_path: Path) -> None:
    import random

    weird: list[Any] = [None, "x", -1, 0, 1e308, float("inf"), [], {}, [[1, 2]], [["a"]],
                        {"a": 1}, {"a": {"rpm": "9"}}, {"a": {"rpm": -5, "tpm": 1e20}},
                        {"": {"rpm": 60}}, [["a", "b"], ["b", "c"]], True, 2**70, "model"]
    rng = random.Random(7)
    events: list[dict[str, Any]] = []
    for i in range(400):
        cfg = {k: rng.choice(weird) for k in ("keys", "limit_scope", "limits", "shared_buckets")}
        events.append({"ev": "start", "run": i, "t": 0.0, "limits": rng.choice(weird),
                       "cfg": rng.choice([cfg, cfg, rng.choice(weird)])})
        for j in range(5):
            events.append({"ev": "limit", "t": j, "name": rng.choice(weird + ["rpm a", "tpm"]),
                           "value": rng.choice(weird), "key": rng.choice(weird),
                           "model": rng.choice(weird)})
            events.append(attempt(f"r{i}-{j}", j * 0.3, j * 0.3 + 0.1,
                                  m=rng.choice(weird + ["a", "b"]), k=rng.choice(weird)))
    path = tmp_path / "x.run.jsonl"
    # json, not orjson: it writes 2**70 and inf (read back as a number / a bad line).
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    agg = aggregate(path)
    h = headline(agg)
    orjson.dumps(h)
    assert "Limits by model" in render_page(agg, "x")
    assert len(agg.limits.spans) <= 200



def test_a_short_run_at_its_limit_is_not_over_it(tmp_path: Path) -> None:
    # --tpm 6000 (100 a second), requests of 100 tokens: the counters start empty, so the
    # first goes at 1 s, then one a second. Measured from the first send, five requests
    # in four seconds looked like 118% of the limit.
    events = [start({"tpm": 6000})]
    events += [attempt(f"r{i}", 1.0 + i, 1.1 + i, m="a", te=100) for i in range(5)]
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", events)))
    assert 0.9 <= h["efficiency"]["tpm"] <= 1.0, h["efficiency"]
    assert 0.9 <= h["by_model"]["a"]["efficiency"]["tpm"] <= 1.0
