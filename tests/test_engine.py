"""The engine end to end, over real loopback HTTP against the mock OpenAI server."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from processor import JobConfig, run_job
from processor.run.runner import default_paths
from tests.conftest import FirstRequestClock, chat_line, read_jsonl, write_jsonl

KEY = "sk-test-DO-NOT-LEAK-4f9a2c"


def config(api: Any, **kw: Any) -> JobConfig:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.05)
    kw.setdefault("allow_download", False)
    return JobConfig(base_url=api.base_url, api_key=KEY, **kw)


def outputs(job: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    res, err = default_paths(job)
    return read_jsonl(res), read_jsonl(err)


def assert_exactly_once(results: list[dict[str, Any]], ids: list[str]) -> None:
    counts = Counter(r["custom_id"] for r in results)
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}
    for r in results:
        assert r["response"]["status_code"] == 200
        assert r["response"]["body"]["choices"][0]["message"]["content"]
        assert r["error"] is None


async def test_every_request_answered_exactly_once(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=5, latency_jitter_ms=10, seed=1)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(120)])
    stats = await run_job(job, config(api, max_in_flight=16))
    results, errors = outputs(job)
    assert_exactly_once(results, [f"req-{i}" for i in range(120)])
    assert errors == []
    assert stats.ok == 120 and stats.failed == 0 and stats.attempts == 120
    assert api.stats.requests == 120
    assert stats.prompt_tokens > 0 and stats.completion_tokens > 0


async def test_no_429_when_client_limits_within_servers(mock_api: Any, tmp_path: Path) -> None:
    # The server's buckets start empty (as if another client had just spent them):
    # the hardest case. A client that starts empty and never exceeds the rate gets no 429.
    api = await mock_api(rpm=3000, tpm=120_000, initial_fill=0.0)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i, max_tokens=20) for i in range(60)])
    stats = await run_job(job, config(api, rpm=3000, tpm=120_000))
    results, errors = outputs(job)
    assert_exactly_once(results, [f"req-{i}" for i in range(60)])
    assert api.stats.n_429 == 0 and stats.n_429 == 0
    # At 50 requests/s, 60 requests cannot finish much faster than 1.2 s:
    # the limiter really held them back.
    assert stats.elapsed >= 1.0


async def test_recovers_when_client_limits_exceed_servers(mock_api: Any, tmp_path: Path) -> None:
    # The server's buckets are empty at its first request (its clock starts there: a
    # client slow to start on a loaded machine would otherwise find them refilled).
    clock = FirstRequestClock()
    api = await mock_api(rpm=3000, initial_fill=0.0, clock=clock,
                         middlewares=[clock.middleware])
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(50)])
    stats = await run_job(job, config(api, rpm=30_000, max_attempts=20))
    results, errors = outputs(job)
    assert_exactly_once(results, [f"req-{i}" for i in range(50)])
    assert errors == []
    assert api.stats.n_429 > 0
    assert stats.n_429 == api.stats.n_429
    # Every call counts: attempts include the refused ones.
    assert stats.attempts == 50 + stats.n_429


async def test_transient_faults_are_retried(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(fail_500=0.15, fail_503=0.05, reset=0.1, truncate=0.1, hang=0.03,
                         seed=7)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(80)])
    stats = await run_job(job, config(api, max_attempts=12, timeout=0.3, max_in_flight=20))
    results, errors = outputs(job)
    assert_exactly_once(results, [f"req-{i}" for i in range(80)])
    assert errors == []
    assert stats.retries > 0
    assert api.stats.n_5xx > 0 and api.stats.resets > 0 and api.stats.truncated > 0


async def test_retries_give_up_after_max_attempts(mock_api: Any, tmp_path: Path) -> None:
    # A server that fails everything is down: with the outage circuit off
    # (outage_window=0) each request spends its attempts and is written off.
    api = await mock_api(fail_500=1.0)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    stats = await run_job(job, config(api, max_attempts=3, outage_window=0))
    results, errors = outputs(job)
    assert results == []
    assert len(errors) == 3 and stats.failed == 3
    for e in errors:
        assert e["error"]["code"] == "server_error"
        assert e["error"]["attempts"] == 3
        assert [h["status"] for h in e["error"]["history"]] == [500, 500, 500]
        assert e["response"]["status_code"] == 500
    assert api.stats.requests == 9


async def test_4xx_is_not_retried(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(models=frozenset({"gpt-4o-mini"}))
    lines = [chat_line(0), chat_line(1, model="no-such-model"), chat_line(2)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    stats = await run_job(job, config(api))
    results, errors = outputs(job)
    assert sorted(r["custom_id"] for r in results) == ["req-0", "req-2"]
    assert len(errors) == 1
    (err,) = errors
    assert err["custom_id"] == "req-1" and err["error"]["line"] == 2
    assert err["error"]["status"] == 404 and err["error"]["attempts"] == 1
    assert api.stats.requests == 3 and stats.failed == 1


async def test_bad_lines_reported_and_run_goes_on(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [
        b"\xef\xbb\xbf" + b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a"}]}\n',
        b"{not json\n",
        b"\n",
        b'"a string"\n',
        chat_line(5),
        b'{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}\n',
        chat_line(5),
        # A bare embeddings body, but the default endpoint is chat: wrong shape for it.
        b'{"input":"embed me","model":"text-embedding-3-small","metadata":{"k":1}}\n',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"b"}],"metadata":{"k":2}}\n',
    ])
    stats = await run_job(job, config(api))
    results, errors = outputs(job)
    assert sorted(r["custom_id"] for r in results) == ["line-1", "line-9", "req-5"]
    bare = next(r for r in results if r["custom_id"] == "line-9")
    assert bare["metadata"] == {"k": 2}
    by_line = {e["error"]["line"]: e for e in errors}
    assert sorted(by_line) == [2, 3, 4, 6, 7, 8]
    assert "invalid JSON" in by_line[2]["error"]["message"]
    assert "blank" in by_line[3]["error"]["message"]
    assert "messages" in by_line[6]["error"]["message"]
    assert "duplicate" in by_line[7]["error"]["message"]
    assert "messages" in by_line[8]["error"]["message"]
    assert all(e["error"]["code"] == "invalid_line" for e in errors)
    assert stats.bad_lines == 6 and stats.ok == 3


async def test_embeddings_endpoint_flag(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "emb.jsonl", [
        {"model": "text-embedding-3-small", "input": f"doc {i}", "metadata": {"i": i}}
        for i in range(5)
    ])
    stats = await run_job(job, config(api, endpoint="/v1/embeddings"))
    results, errors = outputs(job)
    assert errors == [] and stats.ok == 5
    for r in results:
        assert r["response"]["body"]["object"] == "list"
        assert r["metadata"]["i"] == int(r["custom_id"].split("-")[1]) - 1


async def test_key_never_written_or_logged(
    mock_api: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await mock_api(api_key=KEY, fail_500=0.3, seed=3)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(20)] + [b"oops\n"])
    stats = await run_job(job, config(api, max_attempts=2))
    assert stats.ok > 0
    for path in tmp_path.iterdir():
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in caplog.text


async def test_wrong_key_stops_the_run(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(api_key="sk-the-right-one")
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(50)])
    stats = await run_job(job, config(api, max_in_flight=2))
    results, errors = outputs(job)
    assert results == []
    assert stats.stop_reason is not None and "auth_error" in stats.stop_reason
    # It stopped early instead of sending all 50 to fail one by one.
    assert api.stats.requests < 10
    assert "refused" in stats.stop_reason and "HTTP 401" in stats.stop_reason
    # The key was at fault, not the requests: none is written off as failed, so the
    # same command with the right key does the whole job.
    assert errors == [] and stats.failed == 0
    for path in tmp_path.iterdir():
        assert KEY.encode() not in path.read_bytes()
    fixed = await run_job(job, JobConfig(base_url=api.base_url, api_key="sk-the-right-one",
                                         allow_download=False))
    assert fixed.ok == 50 and fixed.skipped == 0
    assert_exactly_once(outputs(job)[0], [f"req-{i}" for i in range(50)])


async def test_insufficient_quota_stops_cleanly(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(insufficient_quota=True)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(30)])
    stats = await run_job(job, config(api, max_in_flight=1))
    assert stats.stop_reason is not None and "insufficient_quota" in stats.stop_reason
    assert api.stats.requests == 1


async def test_request_larger_than_tpm_is_an_error_not_a_hang(
    mock_api: Any, tmp_path: Path
) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0, max_tokens=5000), chat_line(1)])
    stats = await run_job(job, config(api, tpm=1000))
    results, errors = outputs(job)
    assert [r["custom_id"] for r in results] == ["req-1"]
    assert errors[0]["custom_id"] == "req-0"
    assert errors[0]["error"]["code"] == "request_too_large"
    assert api.stats.requests == 1 and stats.failed == 1


async def test_rerun_resumes_without_duplicates(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    ids = [f"req-{i}" for i in range(30)]
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(30)])
    res, _ = default_paths(job)
    # A first run that got 10 answers, then died mid-write of the 11th.
    first = write_jsonl(tmp_path / "first.jsonl", [chat_line(i) for i in range(10)])
    await run_job(first, config(api), output=res)
    with open(res, "ab") as f:
        f.write(b'{"id":"batch_req_x","custom_id":"req-10","response":{"status_')
    stats = await run_job(job, config(api))
    results, _ = outputs(job)
    assert_exactly_once(results, ids)
    assert stats.skipped == 10 and stats.ok == 20
    assert any("torn" in note for note in stats.notes)
    torn = [p for p in tmp_path.iterdir() if ".torn-" in p.name]
    assert len(torn) == 1 and torn[0].read_bytes().startswith(b'{"id":"batch_req_x"')
    # A third run has nothing left to do.
    again = await run_job(job, config(api))
    assert again.ok == 0 and again.skipped == 30 and again.attempts == 0


async def test_rerun_notices_changed_input(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(6)])
    await run_job(job, config(api))
    write_jsonl(job, [chat_line(i, text="edited" if i in (1, 4) else None) for i in range(6)])
    stats = await run_job(job, config(api))
    assert stats.skipped == 6 and stats.attempts == 0
    assert stats.changed == 2 and stats.changed_examples == ["req-1", "req-4"]
    assert any("input changed" in n and "--fresh" in n for n in stats.notes)
    # --fresh moves the old outputs aside (never deleting them) and answers everything anew.
    fresh = await run_job(job, config(api, fresh=True))
    assert fresh.ok == 6 and fresh.skipped == 0
    backups = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".bak"))
    assert len(backups) == 2  # results and ledger (no errors file existed)
    results, _ = outputs(job)
    assert_exactly_once(results, [f"req-{i}" for i in range(6)])
