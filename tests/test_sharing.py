"""Single-flight and the cache inside one run (run_job and stream_results, in process):
failures, retries, fallbacks, modes, and what a pipeline's reader gets."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from processor import JobConfig, run_job
from processor.run.pipeline import stream_results
from processor.store.cacheadmin import cache_stats
from tests.conftest import chat_line, read_jsonl, write_jsonl


def config(api: Any, **kw: Any) -> JobConfig:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.05)
    kw.setdefault("allow_download", False)
    kw.setdefault("max_in_flight", 64)
    return JobConfig(base_url=api.base_url, auto_rpm=False, auto_tpm=False, **kw)


def same(i: int, text: str, **body: Any) -> dict[str, Any]:
    record = chat_line(i, text=text)
    record["body"].update(body)
    return record


async def test_followers_fail_as_their_leader_did(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=50, models=frozenset({"gpt-4o-mini"}))
    job = write_jsonl(tmp_path / "job.jsonl", [same(i, "x", model="gone") for i in range(4)])
    stats = await run_job(job, config(api))
    assert api.stats.requests == 1
    errors = read_jsonl(tmp_path / "job.errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == [f"req-{i}" for i in range(4)]
    assert {e["error"]["status"] for e in errors} == {404}
    marks = Counter(e.get("batchproc", {}).get("shared_from") for e in errors)
    assert marks == {None: 1, "req-0": 3}
    assert stats.failed == 4 and stats.ok == 0
    # A rerun skips them all (failed for good); --retry-failed sends one again.
    await run_job(job, config(api, retry_failed=True))
    assert api.stats.requests == 2


async def test_followers_wait_through_their_leaders_retries(mock_api: Any,
                                                            tmp_path: Path) -> None:
    api = await mock_api(latency_ms=30, fail_500=0.5, seed=4)
    job = write_jsonl(tmp_path / "job.jsonl", [same(i, f"group {i // 5}") for i in range(25)])
    stats = await run_job(job, config(api, max_attempts=20))
    results = read_jsonl(tmp_path / "job.results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(25))
    assert api.stats.n_5xx > 0
    assert api.stats.requests == 5 + api.stats.n_5xx  # one answer per group, retries aside
    assert stats.shared == 20 and stats.attempts == api.stats.requests


async def test_a_fallback_answer_is_shared_but_never_cached(mock_api: Any,
                                                            tmp_path: Path) -> None:
    api = await mock_api(latency_ms=30, overloaded_models=frozenset({"gpt-4o"}))
    job = write_jsonl(tmp_path / "job.jsonl", [same(i, "q", model="gpt-4o") for i in range(3)])
    cache = tmp_path / "c.sqlite"
    await run_job(job, config(api, fallback_model="gpt-4o-mini", fallback_after=1,
                              cache_path=str(cache)))
    results = read_jsonl(tmp_path / "job.results.jsonl")
    followers = [r["batchproc"] for r in results if "shared_from" in r.get("batchproc", {})]
    assert followers == [{"shared_from": "req-0", "model": "gpt-4o-mini",
                          "fallback_from": "gpt-4o"}] * 2
    assert cache_stats(cache).entries == 0  # not the answer to the request as asked


async def test_deterministic_modes_leave_sampled_requests_alone(mock_api: Any,
                                                                tmp_path: Path) -> None:
    api = await mock_api(latency_ms=50)
    lines = [same(i, "sampled", temperature=0.7) for i in range(3)] + \
        [same(i, "fixed", temperature=0) for i in range(3, 6)] + \
        [same(i, "seeded", seed=7, n=2) for i in range(6, 9)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    cache = tmp_path / "c.sqlite"
    await run_job(job, config(api, single_flight="deterministic", cache_path=str(cache),
                              cache_mode="deterministic"))
    assert api.stats.requests == 3 + 1 + 1
    assert cache_stats(cache).entries == 2
    # The default ("all") shares and stores sampled requests too.
    await run_job(job, config(api, cache_path=str(cache), fresh=True))
    assert api.stats.requests == 5 + 1


async def test_a_pipeline_reader_gets_each_record_with_its_own_body(mock_api: Any,
                                                                    tmp_path: Path) -> None:
    api = await mock_api(latency_ms=50)
    requests = [same(i, f"g{i % 2}") for i in range(6)]
    records = [r async for r in stream_results(requests, config(api))]
    assert sorted(r["custom_id"] for r in records) == sorted(f"req-{i}" for i in range(6))
    assert api.stats.requests == 2
    bodies = [r["response"]["body"] for r in records]
    assert len({id(b) for b in bodies}) == 6  # changing one changes no other
    # With a cache: the same requests again are all answered from it.
    cache = tmp_path / "c.sqlite"
    _ = [r async for r in stream_results(requests, config(api, cache_path=str(cache)))]
    again = [r async for r in stream_results(requests, config(api, cache_path=str(cache)))]
    assert api.stats.requests == 4
    assert all(r["batchproc"] == {"cached": True} for r in again)


async def test_a_damaged_cache_row_is_a_miss(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [same(i, f"q{i}") for i in range(4)])
    cache = tmp_path / "c.sqlite"
    await run_job(job, config(api, cache_path=str(cache)))
    conn = sqlite3.connect(cache)
    conn.execute("UPDATE responses SET body = CAST('{not json' AS BLOB) WHERE rowid = 1")
    conn.execute("UPDATE responses SET body = CAST('[1, 2]' AS BLOB) WHERE rowid = 2")
    conn.execute("UPDATE responses SET status = 'ok' WHERE rowid = 3")
    conn.commit()
    conn.close()
    stats = await run_job(job, config(api, cache_path=str(cache), fresh=True))
    assert api.stats.requests == 4 + 3 and stats.cached == 1 and stats.ok == 4


async def test_followers_are_read_while_the_wire_is_full_and_their_number_is_bounded(
        mock_api: Any, tmp_path: Path) -> None:
    """One request in flight at most, 45 identical lines: the followers are read while the
    leader is on the wire, at most 10 x max_in_flight of them wait, and then reading pauses
    until the leader answers (without a cache, the next copy leads again)."""
    api = await mock_api(latency_ms=100)
    job = write_jsonl(tmp_path / "job.jsonl", [same(i, "the same") for i in range(45)])
    stats = await run_job(job, config(api, max_in_flight=1))
    results = read_jsonl(tmp_path / "job.results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(45))
    assert api.stats.requests == 5  # groups of 1 leader + 10 followers: 11 + 11 + 11 + 11 + 1
    leaders = Counter(r.get("batchproc", {}).get("shared_from") for r in results)
    assert leaders == {None: 5, "req-0": 10, "req-11": 10, "req-22": 10, "req-33": 10}
    assert stats.shared == 40


async def test_packed_lines_are_cached_and_shared_one_by_one(mock_api: Any,
                                                             tmp_path: Path) -> None:
    """With --pack, each line of a pack is looked up and shared on its own: the pack goes
    with the lines that still need a request; each answer stored is one line's."""
    from processor.testing.bodies import text_vector

    api = await mock_api(latency_ms=20)
    texts = [f"text {i % 30}" for i in range(40)]  # 10 repeat an earlier line's text
    job = write_jsonl(tmp_path / "job.jsonl", [
        {"custom_id": f"e-{i}", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": t}} for i, t in enumerate(texts)])
    cache = tmp_path / "c.sqlite"
    first = await run_job(job, config(api, pack=10, cache_path=str(cache)))
    assert first.ok == 40 and cache_stats(cache).entries == 30
    sent = api.stats.requests
    assert sent <= 4  # 30 distinct lines in packs of at most 10
    again = tmp_path / "again.jsonl"
    stats = await run_job(job, config(api, pack=10, cache_path=str(cache)), output=again,
                          errors=tmp_path / "again.errors.jsonl")
    assert api.stats.requests == sent and stats.cached == 40
    for record in read_jsonl(again):
        i = int(record["custom_id"].split("-")[1])
        data = record["response"]["body"]["data"]
        assert len(data) == 1 and data[0]["embedding"] == pytest.approx(
            text_vector(texts[i], 8), rel=1e-6)
    # Half the lines new: only they are sent, packed.
    job2 = write_jsonl(tmp_path / "job2.jsonl", [
        {"custom_id": f"n-{i}", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": f"text {i}"}}
        for i in range(15, 45)])
    stats = await run_job(job2, config(api, pack=10, cache_path=str(cache)))
    assert stats.cached == 15 and api.stats.requests == sent + 2
