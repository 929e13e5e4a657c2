"""Crash safety: batchproc killed mid-run (SIGKILL, SIGINT) and rerun loses and repeats nothing.

These run the real CLI in a subprocess against the mock server on loopback.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Turnstile, chat_line, read_until, start_cli, until, write_jsonl

pytestmark = pytest.mark.slow


def valid_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` parsed; fails the test on any line that is not JSON."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends in a partial line"
    return [orjson.loads(line) for line in data.splitlines()]


def _written(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def test_sigkill_at_random_points_then_rerun(mock_api: Any, tmp_path: Path,
                                                   turnstile: Turnstile) -> None:
    api = await mock_api(latency_ms=20, latency_jitter_ms=30, seed=5,
                         middlewares=[turnstile.middleware])
    n = 400
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    results = tmp_path / "job.results.jsonl"
    rng = random.Random(1234)
    # Kill points chosen by progress, not by time: each kill lands mid-run (after the
    # answer count passes a random mark), however fast or loaded the machine.
    marks = sorted(rng.sample(range(10, n - 40), 4))
    kills = 0
    for mark in marks:
        # Up to 40 requests past the mark, then held: each kill lands mid-run, never
        # after a run that finished while this test waited for its turn on the CPU.
        turnstile.hold()
        turnstile.allow(mark + 40 - _written(results))
        proc = await start_cli(job, api.base_url, max_in_flight=16)
        for _ in range(12_000):  # bounded (a minute)
            if proc.returncode is not None or _written(results) >= mark:
                break
            await asyncio.sleep(0.005)
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        await proc.communicate()
    assert kills >= 2, "the job finished before it could be killed: make it longer"
    # Not yet done (a torn last line is allowed here: the rerun repairs it).
    done_before = results.read_bytes().count(b"\n") if results.exists() else 0
    assert done_before < n
    turnstile.open()
    proc = await start_cli(job, api.base_url)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = valid_lines(results)
    counts = Counter(r["custom_id"] for r in lines)
    assert sorted(counts) == sorted(f"req-{i}" for i in range(n))
    assert max(counts.values()) == 1
    assert all(r["response"]["status_code"] == 200 and r["response"]["body"]["choices"]
               for r in lines)
    valid_lines(tmp_path / "job.errors.jsonl")
    # A request in flight at a kill is sent again, so the server may see a few more
    # than n requests, but never fewer.
    assert api.stats.requests >= n


async def test_sigint_drains_then_resume_completes(mock_api: Any, tmp_path: Path,
                                                   turnstile: Turnstile) -> None:
    # 20 answers at most before Ctrl-C: it comes mid-run
    api = await mock_api(latency_ms=40, seed=2, middlewares=[turnstile.middleware])
    turnstile.allow(20)
    n = 200
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    results = tmp_path / "job.results.jsonl"
    proc = await start_cli(job, api.base_url, "--grace", "10")
    # Wait until some answers are written, then press Ctrl-C.
    await until(lambda: results.exists() and results.stat().st_size > 0, "answer written",
                alive=proc)
    proc.send_signal(signal.SIGINT)
    turnstile.open()  # what is in flight is answered in the drain
    _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Stopped" in text and "SIGINT" in text
    first = valid_lines(results)
    assert 0 < len(first) < n
    # In-flight requests were allowed to finish: every request the server answered
    # before the stop is in the file (none lost in the drain).
    assert api.stats.ok == len(first)
    proc = await start_cli(job, api.base_url, max_in_flight=16)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert f"{len(first):,} skipped" in err.decode()
    counts = Counter(r["custom_id"] for r in valid_lines(results))
    assert len(counts) == n and max(counts.values()) == 1


async def test_second_sigint_exits_at_once_with_valid_files(
    mock_api: Any, tmp_path: Path
) -> None:
    api = await mock_api(latency_ms=30_000)  # every answer takes 30 s: a wait shows
    n = 12
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    proc = await start_cli(job, api.base_url, "--grace", "60", "--verbose")
    await until(lambda: api.stats.requests >= 4, "4 requests in flight", alive=proc)
    proc.send_signal(signal.SIGINT)
    # The first is handled before the second is sent (two SIGINTs pending at once, as on a
    # loaded machine that has not run the process in between, are one).
    seen = await read_until(proc, "stopping: SIGINT received")
    proc.send_signal(signal.SIGINT)
    _, rest = await proc.communicate()
    text = " ".join((seen + rest).decode().split())
    assert proc.returncode == 130, text
    assert "second SIGINT: 4 in-flight requests abandoned" in text, text
    # It did not sit out the 60 s grace, nor one 30 s answer: none was written.
    assert valid_lines(tmp_path / "job.results.jsonl") == []
    valid_lines(tmp_path / "job.errors.jsonl")
