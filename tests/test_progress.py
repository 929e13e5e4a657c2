"""What the progress display and the summary say about an outage (processor.cli.progress)."""

from __future__ import annotations

import io
import time

from processor.cli.progress import (
    PlainReporter,
    format_summary,
    outage_line,
    status_line,
    summary_dict,
)
from processor.stats import InputTally, Stats


def test_outage_line_while_the_server_is_down() -> None:
    stats = Stats()
    assert outage_line(stats) == ""
    since = time.mktime((2026, 1, 2, 14, 2, 0, 0, 0, -1))
    stats.outage_since, stats.probe_every = since, 8.0
    assert outage_line(stats) == "server down since 14:02, probing every 8s"
    assert status_line(stats, (0.0, 0.0, 0.0)).endswith(
        "| server down since 14:02, probing every 8s")


def test_plain_reporter_shows_the_outage() -> None:
    stream = io.StringIO()
    stats = Stats(outage_since=time.time(), probe_every=2.0)
    PlainReporter(stream, every=0.0)(stats)
    assert "probing every 2s" in stream.getvalue()


def test_summary_says_how_long_the_server_was_down() -> None:
    stats = Stats(outage_seconds=192.4, outages=1)
    stats.finished = stats.started + 600
    text = format_summary(stats)
    assert "outage: 3m13s: the server was down" in text
    assert summary_dict(stats)["outage_s"] == 192.4
    stats.outages = 3
    assert "outage: 3m13s (3 times)" in format_summary(stats)
    assert "outage" not in format_summary(Stats())


def test_the_summary_names_why_the_run_stopped() -> None:
    from processor.stats import StopReason

    stats = Stats(input=InputTally(still_bad=2))
    assert summary_dict(stats)["stopped"] == "completed"
    stats.stop(StopReason.RERUN_LATER, "daily budget spent")
    s = summary_dict(stats)
    assert s["stopped"] == "rerun_later" and s["stop_reason"] == "daily budget spent"
    assert s["still_bad_lines"] == 2
