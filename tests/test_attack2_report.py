"""Red team: the report's limits per model against runs of odd shapes.

``--limit-scope key`` with a model's own ``--limit``: that model's requests pass both its
own counters and the key's (README: "each model is then also held to its own --limit").
The report counted them in the model's group only, so the key's group looked idle and the
run's efficiency was measured against the model's limit alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from processor.tools.report import aggregate, headline, render_page
from processor.tools.report.limits import limit_lines
from tests.conftest import chat_line, start_cli, write_jsonl
from tests.test_report import write_log
from tests.test_report_limits import ordered, start, steady

_OWN = {"rpm": 120, "tpm": None, "rpd": None, "tpd": None}


def test_key_scope_counts_a_model_with_its_own_limit_in_the_key_too(tmp_path: Path) -> None:
    # --limit-scope key --rpm 60 --limit big=120: only big sends, at the key's 60 a
    # minute (the key binds). The run is at 100% of what it was allowed; it said 50%.
    events = [start({"rpm": 60}, limit_scope="key", limits={"big": _OWN})]
    events += steady("big", 1.0, 0.0, 60.0)
    agg = aggregate(write_log(tmp_path / "x.run.jsonl", ordered(events)))
    h = headline(agg)
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.03), h["efficiency"]
    by = h["by_model"]
    assert by[""]["sent"] == 60 and by[""]["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.03)
    assert by["big"]["sent"] == 60 and by["big"]["efficiency"]["rpm"] == pytest.approx(
        0.5, abs=0.03)
    line = limit_lines(agg.timeline, agg.limits)["rpm"]
    assert line[int(30 / agg.timeline.width)] == 60  # the key's cap, not 60 + 120


def test_key_scope_with_a_model_below_the_key_limit_and_others(tmp_path: Path) -> None:
    # --rpm 120 for the key, small=30 of its own: small at 30 and free at 90 (the key's
    # rest) fill the key: 100%. Then small alone, at its 30: still 100%.
    events = [start({"rpm": 120}, limit_scope="key",
                    limits={"small": {"rpm": 30, "tpm": None}})]
    events += steady("small", 0.5, 0.0, 120.0) + steady("free", 1.5, 0.1, 60.1)
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", ordered(events))))
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.04), h
    by = h["by_model"]
    assert by[""]["sent"] == 150 and by["small"]["sent"] == 60
    assert by["small"]["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.04)


async def test_a_real_key_scope_run_with_an_own_limit(tmp_path: Path, mock_api: Any) -> None:
    """Through the CLI: --limit-scope key --rpm 600, model-a has its own 1,200 (above the
    key's): the key binds both models; the run is at its limit."""
    api = await mock_api(latency_ms=5)
    lines = [chat_line(i, model="model-a" if i % 2 else "model-b") for i in range(40)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    proc = await start_cli(job, api.base_url, "--rpm", "600", "--tpm", "off",
                           "--limit-scope", "key", "--limit", "model-a=1200/-",
                           max_in_flight=16)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    h = headline(aggregate(tmp_path / "job.run.jsonl"))
    by = h["by_model"]
    assert by[""]["sent"] == 40 and by[""]["rpm_limit"] == 600
    assert by["model-a"]["sent"] == 20 and by["model-a"]["rpm_limit"] == 1200
    assert 0.8 <= by[""]["efficiency"]["rpm"] <= 1.1, by
    assert 0.8 <= h["efficiency"]["rpm"] <= 1.1, h


def test_a_log_of_junk_lines_is_read_in_bounded_memory(tmp_path: Path) -> None:
    # Every unreadable line's number was kept: a hand-edited log of millions of junk
    # lines grew the report's memory with it (120,000 lines: about 5 MB).
    import tracemalloc

    events = [start({"rpm": 60})] + steady("a", 1.0, 0.0, 5.0)
    path = write_log(tmp_path / "x.run.jsonl", events)
    with path.open("ab") as f:
        f.write(b"junk\n" * 120_000)
    tracemalloc.start()
    try:
        agg = aggregate(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    h = headline(agg)
    assert h["unreadable_lines"] == 120_000 and h["answered"] == 5
    assert len(agg.bad_lines) <= 200
    assert peak < 2_000_000, peak


def test_a_hand_edited_log_with_negative_times_and_tokens(tmp_path: Path) -> None:
    # An attempt sent at -5 s crashed the report (IndexError: its limit group's span
    # began before the time axis); negative tokens made a negative efficiency.
    events = [start({"rpm": 60, "tpm": 6000})] + steady("a", 1.0, 0.0, 30.0, te=100)
    events.append({**steady("a", 1.0, 0.0, 1.0)[0], "ts": -5.0, "te": -3000})
    events.append({**steady("b", 1.0, 0.0, 1.0)[0], "ts": -1e11, "tp": -7, "tc": -9})
    agg = aggregate(write_log(tmp_path / "x.run.jsonl", events))
    h = headline(agg)
    for value in list(h["efficiency"].values()) + [h["tokens"][k] for k in h["tokens"]]:
        assert value is None or value >= 0, h
    for use in h["by_model"].values():
        assert all(v is None or v >= 0 for v in use["efficiency"].values()), h["by_model"]
    assert "Limits by model" in render_page(agg, "x")


def test_killed_reruns_that_learn_their_limits_are_not_over_them(tmp_path: Path) -> None:
    # Five runs killed after a second, then one that finishes, each learning --rpm auto
    # anew: 4 requests go out before the server's limit (300 a minute) is known, then
    # 5 a second. The report had them at 129% of the limit (reproduced through the CLI
    # against the mock server: `timeout -s KILL 2.5 batchproc run ...` five times).
    events: list[dict[str, Any]] = []
    for run, seconds in enumerate([0.8] * 5 + [6.0], 1):
        events.append({**start({}), "run": run})
        events += [{**steady("gpt-4o", 1.0, 0.0, 1.0)[0], "id": f"{run}-l{i}", "ts": 0.003,
                    "td": 0.03} for i in range(4)]
        events.append({"ev": "limit", "t": 0.03, "name": "rpm", "value": 300, "key": None,
                       "model": "gpt-4o"})
        events += [{**e, "id": f"{run}-{e['id']}"}
                   for e in steady("gpt-4o", 5.0, 0.2, 0.2 + seconds)]
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", events)))
    assert 0.7 <= h["efficiency"]["rpm"] <= 1.02, h["efficiency"]
    assert h["by_model"]["gpt-4o"]["sent"] == 6 * 4 + 5 * 4 + 30


async def test_a_key_refused_at_once_no_longer_counts_as_capacity(
        tmp_path: Path, mock_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI: two keys at --rpm 600 each, the second revoked (401): from its
    retirement the run may send 600 a minute, not 1,200. The report said 50%."""
    monkeypatch.setenv("ATTACK2_KEY_A", "sk-attack2-good-1")
    monkeypatch.setenv("ATTACK2_KEY_B", "sk-attack2-revoked-2")
    api = await mock_api(latency_ms=5, revoked_keys=frozenset({"sk-attack2-revoked-2"}))
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(40)])
    proc = await start_cli(job, api.base_url, "--rpm", "600", "--tpm", "off",
                           "--api-key-env", "ATTACK2_KEY_A,ATTACK2_KEY_B", max_in_flight=8)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    h = headline(aggregate(tmp_path / "job.run.jsonl"))
    use = h["by_model"]["gpt-4o-mini"]
    assert use["rpm_limit"] == 600, use
    assert 0.8 <= use["efficiency"]["rpm"] <= 1.1 and 0.8 <= h["efficiency"]["rpm"] <= 1.1, h


def test_a_limit_learned_after_a_key_was_retired_still_counts(tmp_path: Path) -> None:
    events = [start({"rpm": 60}, keys=["A", "B"])]
    events.append({"ev": "key_retired", "t": 0.0, "key": "B", "why": "401"})
    events.append({"ev": "limit", "t": 0.0, "name": "rpm", "value": 30, "key": "A",
                   "model": "a"})
    events += steady("a", 0.5, 0.5, 60.5, k="A")
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", ordered(events))))
    assert h["by_model"]["a"]["rpm_limit"] == 30, h["by_model"]
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.04)


def test_key_scope_limits_learned_per_model_are_measured(tmp_path: Path) -> None:
    # --limit-scope key --limit big=120/- with --rpm auto: the other models learn their
    # own limits from the server (a counter each, as in model scope); the report left
    # them in the key's row, with no limit, and measured only big.
    events = [start({}, limit_scope="key", limits={"big": _OWN})]
    events.append({"ev": "limit", "t": 0.0, "name": "rpm", "value": 60, "key": None,
                   "model": "small"})
    events += steady("big", 2.0, 0.0, 60.0) + steady("small", 0.5, 0.1, 60.1)
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", ordered(events))))
    by = h["by_model"]
    assert by["small"]["rpm_limit"] == 60 and by["small"]["sent"] == 30, by
    assert by["small"]["efficiency"]["rpm"] == pytest.approx(0.5, abs=0.04)
    # big at 100% of 120, small at 50% of 60: 150 of 180.
    assert h["efficiency"]["rpm"] == pytest.approx(150 / 180, abs=0.04), h["efficiency"]


def test_a_model_that_starts_late_in_a_rerun_is_measured_while_it_sends(
        tmp_path: Path) -> None:
    # Input sorted by model, killed and rerun: in run 2 model a waits a minute behind
    # b's lines. Its span ran from run 1's first send to run 2's last, so that minute
    # counted as a's capacity left unused (67%).
    events = [start({"rpm": 60})] + steady("a", 1.0, 0.0, 60.0)
    events.append({"ev": "end", "t": 60.0, "reason": "SIGINT", "elapsed": 60.0})
    events.append({**start({"rpm": 60}), "run": 2})
    events += ordered([{"ev": "x"}] + steady("b", 1.0, 0.0, 60.0)
                      + steady("a", 1.0, 60.0, 120.0))[1:]
    h = headline(aggregate(write_log(tmp_path / "x.run.jsonl", events)))
    assert h["by_model"]["a"]["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.04), h
    assert h["efficiency"]["rpm"] == pytest.approx(1.0, abs=0.04)
