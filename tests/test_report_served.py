"""Answers written without a request (from the response cache, or shared with an
identical request in flight) are in the run log and the report, and so are the
failures shared by identical requests: the report's counts match the results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from processor.cli.app import app
from tests.conftest import read_jsonl, write_jsonl
from tests.test_singleflight import cli, line


def report(log: Path) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["report", str(log), "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def by_model(log: Path) -> dict[str, int]:
    served = [json.loads(raw) for raw in log.read_text().splitlines()]
    out: dict[str, int] = {}
    for event in served:
        if event["ev"] == "s":
            out[event["how"]] = out.get(event["how"], 0) + 1
    return out


async def test_shared_and_cached_answers_are_counted_in_the_report(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=20)
    # 30 lines, 10 distinct bodies, each three times in a row: two of each are followers.
    job = write_jsonl(tmp_path / "job.jsonl",
                      [line(i, f"Question {i // 3}?") for i in range(30)])
    cache = tmp_path / "answers.sqlite"
    await cli(job, api.base_url, "--cache", str(cache))
    sent = api.stats.requests
    assert sent < 30  # some were followers (the rest waited in line behind the wire)
    log = tmp_path / "job.run.jsonl"
    h = report(log)
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 30
    assert h["answered"] == 30 and h["failed"] == 0
    assert h["shared"] == 30 - sent and h["cached"] == 0 == by_model(log).get("cached", 0)
    assert h["attempts"] == sent
    assert h["per_run"][0]["ok"] == 30

    # Rerun into other files with the same cache: every answer comes from it.
    other = tmp_path / "again.results.jsonl"
    await cli(job, api.base_url, "--cache", str(cache), "-o", str(other))
    assert api.stats.requests == sent
    h = report(tmp_path / "again.run.jsonl")
    assert h["answered"] == 30 and h["cached"] == 30 and h["attempts"] == 0
    assert h["shared"] == 0


async def test_a_failure_shared_by_identical_requests_is_counted_for_each(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=20, models=["gpt-4o-mini"])
    # The same request for a model the server does not have, five times, and 5 good lines.
    job = write_jsonl(tmp_path / "job.jsonl",
                      [line(i, "Same question?", model="no-such-model") for i in range(5)]
                      + [line(i, f"Question {i}?") for i in range(5, 10)])
    proc_err = await _run_allowing_failures(job, api.base_url)
    assert "failed" in proc_err
    errors = read_jsonl(tmp_path / "job.errors.jsonl")
    assert len(errors) == 5
    h = report(tmp_path / "job.run.jsonl")
    assert h["failed"] == 5 and h["answered"] == 5
    assert sum(h["failures"].values()) == 5


async def _run_allowing_failures(job: Path, base_url: str) -> str:
    from tests.conftest import start_cli

    proc = await start_cli(job, base_url, "--rpm", "off", "--tpm", "off", max_in_flight=2)
    _, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    return err.decode()
