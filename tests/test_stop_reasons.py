"""Why a run stopped, seen through the real CLI: the exit code follows the first reason,
and a signal while the run already winds down by itself abandons what is in flight."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import chat_line, read_until, start_cli, until, write_jsonl


def lines(path: Path) -> list[Any]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


async def _in_flight(api: Any, n: int) -> None:
    await until(lambda: api.stats.requests >= n, f"{n} requests at the server")


async def test_a_signal_during_the_runs_own_stop_abandons_in_flight_and_keeps_exit_75(
    mock_api: Any, tmp_path: Path
) -> None:
    """--rpd 4 is spent by the first four requests: the run stops for a rerun tomorrow
    and waits (up to --grace 60 s) for the four answers, which take 30 s each. Ctrl-C then
    used to be ignored (the engine was already stopping); now it abandons them, and the
    exit code stays the first reason's: 75, rerun later."""
    api = await mock_api(latency_ms=30_000)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(12)])
    proc = await start_cli(job, api.base_url, "--rpd", "4", "--rpm", "1000", "--tpm", "1000000",
                           "--grace", "60", "--verbose", max_in_flight=8)
    await _in_flight(api, 4)
    seen = await read_until(proc, "stopping: daily budget spent")  # it winds down itself
    proc.send_signal(signal.SIGINT)
    _, err = await proc.communicate()
    text = " ".join((seen + err).decode().split())
    assert proc.returncode == 75, text
    assert "daily budget spent" in text, text
    assert "SIGINT while stopping: 4 in-flight requests abandoned" in text, text
    # Abandoned, not waited for: the four 30 s answers were not written.
    assert lines(tmp_path / "job.results.jsonl") == [], text
    assert lines(tmp_path / "job.errors.jsonl") == []  # nothing written off


async def test_a_second_sigint_is_recorded_and_exits_130(mock_api: Any, tmp_path: Path) -> None:
    """The second Ctrl-C path runs: it abandons what is in flight and says so; the exit
    code is the first signal's."""
    api = await mock_api(latency_ms=30_000)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(8)])
    proc = await start_cli(job, api.base_url, "--grace", "60", "--verbose")
    await _in_flight(api, 4)
    proc.send_signal(signal.SIGINT)
    seen = await read_until(proc, "stopping: SIGINT received")  # handled: now the second
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    text = " ".join((seen + err).decode().split())
    assert proc.returncode == 130, text  # the first signal's code, not SIGTERM's 143
    assert "stopped early: SIGINT received" in text, text
    assert "second SIGTERM: 4 in-flight requests abandoned" in text, text
