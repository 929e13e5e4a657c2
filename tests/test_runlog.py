"""The run log: written in whole lines, numbered runs, torn tails skipped, a failed write
turning it off, no secret in it, and the path and option checks of a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.client.answers import Response
from processor.errors import ConfigError, RateLimited
from processor.jobs import Job
from processor.run.config import JobConfig
from processor.run.observer import plan_run_log, safe_config
from processor.run.runner import run_job
from processor.stats import Stats, StopReason
from processor.store.inputfilter import InputTally
from processor.store.runlog import RunLog, read_events, run_log_path
from tests.conftest import chat_line, write_jsonl


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job(cid: str = "r1", attempts: int = 1) -> Job:
    j = Job(cid, 1, "/v1/chat/completions", {"model": "gpt-4o-mini"}, tokens=40,
            attempts=attempts, model="gpt-4o-mini")
    j.sent_at = 100.5
    return j


def lines(path: Path) -> list[dict[str, Any]]:
    return list(read_events(path))


def test_events_round_trip(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "x.run.jsonl"
    log = RunLog(path, clock=clock, wall=lambda: 1_700_000_000.0).open(total=3)
    clock.now = 101.0
    answer = Response(200, {"usage": {"prompt_tokens": 9, "completion_tokens": 4}}, "rid")
    log.attempt(job(), 100.6, 101.0, answer, None)
    log.attempt(job("r2"), 100.7, 101.0, None, RateLimited("slow down", status=429))
    log.failed("r3", 3, "server_error", "x" * 1000)
    log.pause("429", 2.0, key="A")
    log.pause("outage")
    log.resume("outage", down=3.5)
    log.emit("limit", name="rpm", value=500.0, key=None)
    stats = Stats(input=InputTally(total=3), ok=1)
    stats.finish(stats.started + 1.0)
    log.end(stats)
    events = lines(path)
    assert [e["ev"] for e in events] == ["start", "a", "a", "fail", "pause", "pause", "resume",
                                         "limit", "end"]
    start, ok, refused, fail, pause, outage = events[:6]
    assert start["run"] == 1 and start["at"] == 1_700_000_000.0 and start["total"] == 3
    assert ok == {"ev": "a", "id": "r1", "n": 1, "ta": 0.5, "ts": 0.6, "td": 1.0, "te": 40,
                  "st": 200, "tp": 9, "tc": 4, "m": "gpt-4o-mini"}
    assert refused["st"] == 429 and refused["er"] == "rate_limited" and "tp" not in refused
    assert len(fail["msg"]) == 300
    assert pause["until"] == 3.0 and pause["key"] == "A"
    assert outage["until"] is None
    assert events[-1]["reason"] == "completed" and events[-1]["ok"] == 1


def test_reruns_append_and_number_runs(tmp_path: Path) -> None:
    path = tmp_path / "x.run.jsonl"
    for _ in range(3):
        RunLog(path, clock=Clock()).open().close()
    assert [e["run"] for e in lines(path)] == [1, 2, 3]


def test_torn_tail_is_skipped_and_closed_off(tmp_path: Path) -> None:
    path = tmp_path / "x.run.jsonl"
    log = RunLog(path, clock=Clock()).open()
    log.failed("r1", 1, "bad_request", "no")
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"ev":"a","id":"torn","n":1,"ta":0.1')  # kill -9 mid-write
    bad: list[int] = []
    assert [e["ev"] for e in read_events(path, bad)] == ["start", "fail"]
    assert bad == [3]
    # The next run closes the torn line off: it stays one bad line, the start is whole.
    RunLog(path, clock=Clock()).open().close()
    bad = []
    events = list(read_events(path, bad))
    assert [(e["ev"], e.get("run")) for e in events] == [("start", 1), ("fail", None),
                                                         ("start", 2)]
    assert bad == [3]


def test_buffered_about_once_a_second(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "x.run.jsonl"
    log = RunLog(path, clock=clock).open()
    size = path.stat().st_size
    stats = Stats(input=InputTally(total=10))
    log.attempt(job(), 100.1, 100.2, Response(200, {}, None), None)
    clock.now += 0.5
    log.tick(stats)
    assert path.stat().st_size == size  # still buffered
    clock.now += 0.6
    log.tick(stats)
    events = lines(path)
    assert [e["ev"] for e in events] == ["start", "a", "p"]
    assert events[-1]["total"] == 10
    log.close()


def test_a_full_buffer_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "x.run.jsonl"
    log = RunLog(path, clock=Clock(), max_buffer=4096).open()
    for i in range(200):
        log.failed(f"r{i}", i, "bad_request", "m")
    assert len(lines(path)) > 50  # written before any tick or close
    log.close()
    assert len(lines(path)) == 201


def test_a_failed_write_turns_the_log_off(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    log = RunLog("/dev/full", clock=Clock()).open()
    assert not log.enabled and log.failure is not None  # ENOSPC, no exception
    log.failed("r1", 1, "x", "y")  # later calls do nothing
    log.close()


def test_safe_config_never_shows_a_secret() -> None:
    cfg = JobConfig(base_url="https://user:hunter2-password@api.example/v1?sig=abc123secret",
                    api_key="sk-live-0123456789abcdef",
                    api_keys=[("A", "sk-a-0123456789abcdef"), ("B", "sk-b-0123456789abcdef")],
                    headers={"X-Api-Key": "hdr-0123456789abcdef", "X-Trace": "visible"},
                    secret_headers={"X-Tenant": "tenant-0123456789abcdef"})
    shown = orjson.dumps(safe_config(cfg)).decode()
    for secret in ("sk-live-0123456789abcdef", "sk-a-0123456789abcdef", "hunter2",
                   "hdr-0123456789abcdef", "tenant-0123456789abcdef", "abc123secret"):
        assert secret not in shown
    cfg_shown = safe_config(cfg)
    assert cfg_shown["keys"] == ["A", "B"]
    assert cfg_shown["headers"] == {"X-Api-Key": "***", "X-Trace": "visible",
                                    "X-Tenant": "***"}
    assert cfg_shown["base_url"].startswith("https://***@api.example/v1")


def test_paths(tmp_path: Path) -> None:
    src, res, err = tmp_path / "in.jsonl", tmp_path / "in.results.jsonl", tmp_path / "e.jsonl"
    led = tmp_path / "in.results.jsonl.ledger"
    assert run_log_path(res) == tmp_path / "in.run.jsonl"
    assert run_log_path(tmp_path / "out.jsonl") == tmp_path / "out.run.jsonl"
    assert run_log_path(tmp_path / "out") == tmp_path / "out.run.jsonl"
    assert plan_run_log(JobConfig(), src, res, err, led) == tmp_path / "in.run.jsonl"
    assert plan_run_log(JobConfig(run_log=False), src, res, err, led) is None
    # The default that would be another of the job's files moves aside; a flag refuses.
    clash = tmp_path / "x.run.jsonl"
    assert plan_run_log(JobConfig(), src, tmp_path / "x.results.jsonl", clash,
                        led) == tmp_path / "x.results.jsonl.run.jsonl"
    for bad in (src, res, err, led):
        with pytest.raises(ConfigError):
            plan_run_log(JobConfig(run_log=str(bad)), src, res, err, led)
    with pytest.raises(ConfigError):
        plan_run_log(JobConfig(run_log=str(tmp_path)), src, res, err, led)
    # Another job's results are never appended to; a log (or an empty file) is.
    other = write_jsonl(tmp_path / "other.results.jsonl", [{"custom_id": "x"}])
    with pytest.raises(ConfigError, match="not a run log"):
        plan_run_log(JobConfig(run_log=str(other)), src, res, err, led)
    RunLog(tmp_path / "ok.jsonl", clock=Clock()).open().close()
    (tmp_path / "empty.jsonl").write_text("")
    for fine in ("ok.jsonl", "empty.jsonl"):
        assert plan_run_log(JobConfig(run_log=str(tmp_path / fine)), src, res, err, led)


async def test_a_run_writes_its_log_beside_the_results(tmp_path: Path, mock_api: Any) -> None:
    api = await mock_api(fail_500=0.3, seed=2, overloaded_models=frozenset({"busy"}))
    src = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(12)]
                      + [chat_line(99, model="busy"), b"not json\n"])
    cfg = JobConfig(base_url=api.base_url, api_key="sk-test-0123456789abcdef", max_attempts=2,
                    backoff_base=0.001, backoff_cap=0.01, outage_window=0)
    stats = await run_job(src, cfg)
    assert stats.reason is StopReason.COMPLETED
    await run_job(src, cfg)  # a rerun appends
    log_path = tmp_path / "job.run.jsonl"
    raw = log_path.read_bytes()
    assert b"sk-test-0123456789abcdef" not in raw
    events = lines(log_path)
    starts = [e for e in events if e["ev"] == "start"]
    assert [s["run"] for s in starts] == [1, 2]
    assert starts[1]["resume"]["done"] == stats.ok
    run1 = events[: events.index(starts[1])]
    attempts = [e for e in run1 if e["ev"] == "a"]
    assert len(attempts) == stats.attempts
    assert sum(1 for e in attempts if "er" not in e) == stats.ok >= 8
    assert {e["st"] for e in attempts if e.get("er") == "rate_limited"} == {429}
    fails = [e["code"] for e in run1 if e["ev"] == "fail"]
    assert {"invalid_line", "rate_limited"} <= set(fails)
    assert len(fails) == stats.failed + stats.bad_lines
    assert any(e["ev"] == "pause" and e["r"] == "429" for e in run1)
    assert [e["reason"] for e in events if e["ev"] == "end"] == ["completed", "completed"]


async def test_no_run_log(tmp_path: Path, mock_api: Any) -> None:
    api = await mock_api()
    src = write_jsonl(tmp_path / "job.jsonl", [chat_line(1)])
    await run_job(src, JobConfig(base_url=api.base_url, run_log=False))
    assert not (tmp_path / "job.run.jsonl").exists()
    custom = tmp_path / "logs" / "mine.jsonl"
    await run_job(src, JobConfig(base_url=api.base_url, run_log=str(custom), fresh=True))
    assert [e["ev"] for e in lines(custom)][0] == "start"


async def test_two_jobs_never_share_a_run_log_at_once(tmp_path: Path, mock_api: Any) -> None:
    from processor.errors import JobLocked
    from processor.store.lock import JobLock
    from processor.store.paths import lock_path

    api = await mock_api()
    shared = tmp_path / "shared.run.jsonl"
    src = write_jsonl(tmp_path / "b.jsonl", [chat_line(1)])
    with JobLock([lock_path(shared)]), pytest.raises(JobLocked):  # as another run holds it
        await run_job(src, JobConfig(base_url=api.base_url, run_log=str(shared)))
    assert not (tmp_path / "b.results.jsonl").exists()


async def test_kill_9_then_rerun_tells_the_whole_story(tmp_path: Path, mock_api: Any) -> None:
    import asyncio
    import signal

    from tests.conftest import read_jsonl, start_cli

    api = await mock_api(latency_ms=40)
    src = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(200)])
    proc = await start_cli(src, api.base_url, "--rpm", "1200", max_in_flight=4)
    results = tmp_path / "job.results.jsonl"
    log = tmp_path / "job.run.jsonl"
    for _ in range(600):  # until a few answers are in and the log has been flushed
        await asyncio.sleep(0.05)
        if (results.exists() and len(results.read_bytes().splitlines()) >= 30
                and log.exists() and b'"ev":"p"' in log.read_bytes()):
            break
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    first = list(read_events(log))
    assert first[0]["ev"] == "start" and not any(e["ev"] == "end" for e in first)
    proc = await start_cli(src, api.base_url, max_in_flight=16)
    await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    bad: list[int] = []
    events = list(read_events(log, bad))
    assert len(bad) <= 1  # at most the torn line the kill left
    assert [e["run"] for e in events if e["ev"] == "start"] == [1, 2]
    assert [e["reason"] for e in events if e["ev"] == "end"] == ["completed"]
    ids = {r["custom_id"] for r in read_jsonl(results)}
    assert len(ids) == len(read_jsonl(results)) == 200  # exactly once, log or no log
    answered = {e["id"] for e in events if e["ev"] == "a" and "er" not in e}
    assert answered <= ids and len(answered) >= 170  # at most the last second lost


async def test_a_pack_is_one_attempt_answering_its_lines(tmp_path: Path, mock_api: Any) -> None:
    from processor.tools.report import aggregate

    api = await mock_api()
    src = write_jsonl(tmp_path / "emb.jsonl", [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": f"text {i}"}} for i in range(10)])
    stats = await run_job(src, JobConfig(base_url=api.base_url, pack=5))
    assert stats.ok == 10
    attempts = [e for e in lines(tmp_path / "emb.run.jsonl") if e["ev"] == "a"]
    assert len(attempts) == 2 and [e["np"] for e in attempts] == [5, 5]
    assert aggregate(tmp_path / "emb.run.jsonl").answers == 10


async def test_each_shard_has_its_own_log(tmp_path: Path, mock_api: Any) -> None:
    from tests.conftest import start_cli

    api = await mock_api()
    src = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(20)])
    for k in (1, 2):
        proc = await start_cli(src, api.base_url, "--shard", f"{k}/2")
        await proc.communicate()
        assert proc.returncode == 0
    ids = []
    for k in (1, 2):
        events = lines(tmp_path / f"job.shard-{k}-of-2.run.jsonl")
        ids += [e["id"] for e in events if e["ev"] == "a"]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(20))
    assert not (tmp_path / "job.run.jsonl").exists()
