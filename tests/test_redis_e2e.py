"""The shared budget end to end: the real CLI in subprocesses, the mock server (whose
limits equal the flags, per model) and a real redis-server.

- four workers (``--shard K/4``) share one Redis limiter: every request answered exactly
  once across the merged shards, a handful of 429s at most, the combined rate at the limit;
- a two-model job against different limits per model, with ``auto`` limits and with the
  bigger model's flags: each model near its own limit at the same time, few 429s;
- Redis stopped mid-run and restarted: nothing is sent while it is down, the run says so,
  then completes.

Timing figures (the 3% of the limit) are measured in bench/redis_limiter.py; the bounds
here are loose on purpose (two cores shared by many processes).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import chat_line, read_jsonl, start_cli, write_jsonl
from tests.redisfix import RedisServer

pytestmark = pytest.mark.slow


def rate(model: dict[str, float]) -> float:
    """Requests per minute the server admitted for one model, first to last."""
    return (model["admitted"] - 1) / (model["last"] - model["first"]) * 60


def paced(model: dict[str, float], limit: float) -> float:
    """The rate of :func:`rate` less one burst: a client's counters hold a second of
    credit (``limit / 60`` requests), which it may spend at once after a stall (a loaded
    machine's): never above the limit is the rest of the run at or below it."""
    burst = max(limit / 60, 1.0)
    return (model["admitted"] - 1 - burst) / (model["last"] - model["first"]) * 60


async def finish(proc: asyncio.subprocess.Process, timeout: float = 90) -> tuple[int, str]:
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_four_workers_share_one_redis_budget(mock_api: Any, redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    limit = 2400  # requests/min: 40 a second (scaled down from real limits for speed)
    api = await mock_api(rpm=limit, tpm=1_000_000, initial_fill=0.0)
    n = 120
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    flags = ["--rpm", str(limit), "--tpm", "1000000", "--limiter", redis_server.url]
    procs = [await start_cli(job, api.base_url, *flags, "--shard", f"{k}/4",
                             max_in_flight=16) for k in range(1, 5)]
    for proc in procs:
        code, err = await finish(proc)
        assert code == 0, err
    merged = tmp_path / "merged.results.jsonl"
    merge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli.app", "merge", "--job", str(job), "-o",
        str(merged), stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    code, err = await finish(merge)
    assert code == 0, err
    ids = [r["custom_id"] for r in read_jsonl(merged)]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(n))  # each exactly once
    stats = api.stats
    assert stats.ok == n and stats.requests == n + stats.n_429
    assert stats.n_429 <= 5, stats.to_dict()  # a handful at most (typically 0)
    combined = rate(stats.models["gpt-4o-mini"])
    assert paced(stats.models["gpt-4o-mini"], limit) <= limit * 1.10, combined  # never faster
    assert combined >= limit * 0.60, combined  # and not idling (loose: a loaded machine)


@pytest.mark.parametrize("how", ["auto", "flags", "flags+redis"])
async def test_two_models_each_at_its_own_limit(how: str, mock_api: Any,
                                                redis_server: RedisServer,
                                                tmp_path: Path) -> None:
    big, small = 1800, 360  # per minute: 30 and 6 a second (the 3,000 / 600 of a real tier)
    api = await mock_api(initial_fill=0.02, model_limits={
        "gpt-4o-mini": (big, 2_000_000), "gpt-4o": (small, 400_000)})
    n = 120
    lines = [chat_line(i, model="gpt-4o" if i % 6 == 0 else "gpt-4o-mini") for i in range(n)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    extra = [] if how == "auto" else ["--rpm", str(big), "--tpm", "2000000"]
    if how.endswith("redis"):
        extra += ["--limiter", redis_server.url]
    code, err = await finish(await start_cli(job, api.base_url, *extra, max_in_flight=32))
    assert code == 0, err
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "job.results.jsonl")) == \
        sorted(f"req-{i}" for i in range(n))
    models = api.stats.models
    fast, slow = models["gpt-4o-mini"], models["gpt-4o"]
    assert api.stats.n_429 <= 8, api.stats.to_dict()
    # Each near its own limit, never above it (loose bounds: a loaded machine)...
    assert big * 0.55 <= rate(fast) and paced(fast, big) <= big * 1.15, \
        (rate(fast), api.stats.to_dict())
    assert small * 0.55 <= rate(slow) and paced(slow, small) <= small * 1.15, \
        (rate(slow), api.stats.to_dict())
    # ...at the same time: the small model did not wait for the big one, nor held it up.
    span = max(fast["last"], slow["last"]) - min(fast["first"], slow["first"])
    overlap = min(fast["last"], slow["last"]) - max(fast["first"], slow["first"])
    assert overlap >= 0.6 * span, (fast, slow)


async def admitted_then_stop(server: RedisServer) -> int:
    """Stop Redis as a crash would, knowing how many requests it had admitted until then
    (not guessing how long those take to reach the server on a loaded machine): writes
    are paused first (no bucket script runs after that), the counts read, then it dies."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(server.url)
    await client.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
    admitted = 0
    async for key in client.scan_iter(match="batchproc:*:m:*"):
        admitted += int(float(await client.hget(key, "cum:q") or 0))
    await client.aclose()
    server.stop()
    return admitted


async def test_redis_stopped_mid_run_then_restarted(mock_api: Any, redis_server: RedisServer,
                                                    tmp_path: Path) -> None:
    api = await mock_api(rpm=1200, tpm=1_000_000, initial_fill=0.0)
    n = 40
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    proc = await start_cli(job, api.base_url, "--rpm", "1200", "--tpm", "1000000",
                           "--limiter", redis_server.url, max_in_flight=8)
    for _ in range(3000):  # until 10 are answered (the server's counters are polled)
        if api.stats.ok >= 10:
            break
        await asyncio.sleep(0.02)
    admitted = await admitted_then_stop(redis_server)
    await asyncio.sleep(1.5)  # Redis down: 30 requests' worth of time at 20 a second
    while_down = api.stats.requests - admitted  # what reached the server unadmitted
    redis_server.start()
    code, err = await finish(proc)
    assert while_down <= 0, while_down  # nothing without the shared budget's consent
    assert code == 0, err
    assert "waiting for Redis" in err and "back after" in err
    ids = sorted(r["custom_id"] for r in read_jsonl(tmp_path / "job.results.jsonl"))
    assert ids == sorted(f"req-{i}" for i in range(n))
    assert api.stats.ok == n and api.stats.n_429 <= 2
    # The run log has the wait for Redis as an open-ended pause, then its end...
    events = read_jsonl(tmp_path / "job.run.jsonl")
    waits = [e for e in events if e["ev"] in ("pause", "resume") and e["r"] == "redis"]
    assert [e["ev"] for e in waits] == ["pause", "resume"], waits
    pause, resume = waits
    assert pause["until"] is None and pause["url"] == redis_server.url
    assert pause["error"] in ("ConnectionError", "TimeoutError"), pause
    assert 1.0 <= resume["down"] <= resume["t"] - pause["t"] + 0.01, waits
    # ...and the report shows it.
    report = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli.app", "report", str(job), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    out, err_ = await asyncio.wait_for(report.communicate(), 60)
    assert report.returncode == 0, err_
    figures = json.loads(out)
    assert figures["pauses"].get("redis") == 1, figures
    span, = [p for p in figures["open_pauses"] if p["reason"] == "redis"]
    assert 1.0 <= span["seconds"] < 30, span


async def test_redis_that_never_comes_back_stops_the_run_resumable(
        mock_api: Any, redis_server: RedisServer, tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(5)])
    redis_server.stop()
    code, err = await finish(await start_cli(job, api.base_url, "--rpm", "600", "--limiter",
                                             redis_server.url, "--outage-window", "1"))
    assert code == 75, err
    assert "unreachable" in err and "rerun" in err
    assert api.stats.requests == 0
    waits = [e for e in read_jsonl(tmp_path / "job.run.jsonl") if e.get("r") == "redis"]
    assert [e["ev"] for e in waits] == ["pause"], waits  # open: it ended with the run


async def test_kill_9_and_rerun_with_redis_answers_each_once(
        mock_api: Any, redis_server: RedisServer, tmp_path: Path) -> None:
    api = await mock_api(rpm=1200, tpm=1_000_000, initial_fill=0.0)
    n = 40
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    flags = ["--rpm", "1200", "--tpm", "1000000", "--limiter", redis_server.url]
    proc = await start_cli(job, api.base_url, *flags, max_in_flight=8)
    for _ in range(3000):
        if api.stats.ok >= 10:
            break
        await asyncio.sleep(0.02)
    proc.kill()  # SIGKILL: no grace, no summary
    await proc.wait()
    code, err = await finish(await start_cli(job, api.base_url, *flags, max_in_flight=8))
    assert code == 0, err
    ids = [r["custom_id"] for r in read_jsonl(tmp_path / "job.results.jsonl")]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(n))  # each exactly once
