"""Each model's rate against its own limits in the progress line and the summary
(processor.cli.modelrates), when a job has several model buckets; nothing for one."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest

from processor.cli.modelrates import ModelRates, models_line, models_summary
from processor.cli.progress import PlainReporter, format_summary, status_line, summary_dict
from processor.stats import Stats
from tests.conftest import chat_line, read_jsonl, start_cli, write_jsonl


def two_models(minutes: float = 1.0) -> Stats:
    stats = Stats()
    for _ in range(498):
        stats.sent(60, "gpt-4o")
    for _ in range(2990):
        stats.sent(600, "gpt-4o-mini")
    stats.set_model_limits({"gpt-4o": (500, 30_000), "gpt-4o-mini": (3000, 2_000_000)})
    stats.finished = stats.started + 60 * minutes
    return stats


def test_the_line_shows_each_model_against_its_limit() -> None:
    stats = two_models()
    rates = {"gpt-4o": (498.0, 29_950.0), "gpt-4o-mini": (2990.0, 1_794_000.0)}
    # gpt-4o: tokens are nearer their limit (29,950 of 30,000) than requests (498 of 500)
    assert models_line(stats, rates) == ("gpt-4o 29,950/30,000 tpm, "
                                         "gpt-4o-mini 2,990/3,000 rpm")
    assert status_line(stats, (0.0, 0.0, 0.0), models_line(stats, rates)).endswith(
        "| gpt-4o 29,950/30,000 tpm, gpt-4o-mini 2,990/3,000 rpm")
    rates["gpt-4o-mini"] = (2000.0, 1_950_000.0)
    assert models_line(stats, rates).endswith("gpt-4o-mini 1.95M/2M tpm")
    stats.set_model_limits({})  # limits unknown (auto, not learned yet): the rates alone
    assert models_line(stats, rates) == "gpt-4o 498 rpm, gpt-4o-mini 2,000 rpm"


def test_one_model_shows_nothing_more() -> None:
    stats = Stats()
    stats.sent(10, "gpt-4o")
    assert ModelRates().update(stats) == {} and models_summary(stats) == {}
    assert "by model" not in format_summary(stats)
    stream = io.StringIO()
    PlainReporter(stream, every=0.0)(stats)
    assert "gpt-4o" not in stream.getvalue()


def test_rates_over_the_window_come_from_samples_not_requests() -> None:
    stats = Stats()
    stats.sent(100, "a")
    stats.sent(100, "b")
    rates = ModelRates(window=10.0)
    assert rates.update(stats, now=0.0) == {"a": (0.0, 0.0), "b": (0.0, 0.0)}
    for _ in range(10):
        stats.sent(100, "a")
    stats.sent(50, "c")  # a model first seen since the first sample
    got = rates.update(stats, now=6.0)
    assert got == {"a": pytest.approx((100.0, 10_000.0)), "b": (0.0, 0.0),
                   "c": pytest.approx((10.0, 500.0))}


def test_the_summary_per_model() -> None:
    stats = two_models(minutes=2.0)
    by = summary_dict(stats)["by_model"]
    assert by["gpt-4o"] == {"attempts": 498, "tokens_charged": 29_880, "achieved_rpm": 249.0,
                            "achieved_tpm": 14_940.0, "rpm_limit": 500, "tpm_limit": 30_000}
    assert "by model (achieved over the run / limit): gpt-4o 249/500 rpm, gpt-4o-mini " \
           "1,495/3,000 rpm" in format_summary(stats)


def test_names_are_printable_and_short() -> None:
    stats = Stats()
    stats.sent(1, "\x1b[2Jevil" + "x" * 100)
    stats.sent(1, "")
    line = models_line(stats, ModelRates().update(stats, now=0.0))
    assert "\x1b" not in line and "?[2Jevil" in line and "(no model)" in line
    assert len(line) < 120


def test_many_models_are_cut_short() -> None:
    stats = Stats()
    for i in range(9):
        for _ in range(i + 1):
            stats.sent(1, f"m{i}")
    line = models_line(stats, ModelRates().update(stats, now=0.0))
    assert line.endswith("(+3 more)") and "m8" in line and "m0" not in line


async def test_a_two_model_run_shows_each_model(mock_api: Any, tmp_path: Path) -> None:
    """Through the CLI: per-model limits given, the summary names each model's."""
    api = await mock_api(model_limits={"gpt-4o": (600, 400_000),
                                       "gpt-4o-mini": (3000, 2_000_000)})
    lines = [chat_line(i, model="gpt-4o" if i % 3 == 0 else "gpt-4o-mini") for i in range(30)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    proc = await start_cli(job, api.base_url, "--limit", "gpt-4o=600/400_000", "--limit",
                           "gpt-4o-mini=3000/2_000_000", max_in_flight=8)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 0, text
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 30
    summary = [line for line in text.splitlines() if "by model" in line]
    assert len(summary) == 1, text
    assert "/600 rpm" in summary[0] and "/3,000 rpm" in summary[0], summary
    assert "gpt-4o " in summary[0] and "gpt-4o-mini " in summary[0], summary
    # the plain progress line (--plain) has them too
    assert any(" | gpt-4o " in line and "gpt-4o-mini" in line for line in text.splitlines()
               if line[:2].isdigit()), text


def test_a_job_of_very_many_models_shows_none() -> None:
    stats = Stats()
    for i in range(101):
        stats.sent(1, f"m{i}")
    assert ModelRates().update(stats, now=0.0) == {} and models_summary(stats) == {}
    assert "by model" not in format_summary(stats)


def test_the_live_display_shows_each_model() -> None:
    from rich.console import Console

    from processor.cli.progress import LiveReporter

    stats = two_models()
    stats.sent(1, "[bold]odd")  # a model name is not markup
    out = io.StringIO()
    with LiveReporter(Console(file=out, force_terminal=True, width=300)) as live:
        live(stats)
        live(stats)
    text = out.getvalue()
    assert "by model: [bold]odd 0 rpm, gpt-4o 0/500 rpm, gpt-4o-mini 0/3,000 rpm" in text
