"""The response cache and single-flight through the real CLI, against the mock server
(whose own counters say how many requests arrived)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from processor import JobConfig, run_job
from processor.store.cacheadmin import cache_stats
from processor.store.cachekey import parse_ignore
from tests.conftest import Turnstile, chat_line, read_jsonl, start_cli, until, write_jsonl

KEY = "sk-test-CACHE-NEVER-KEEPS-ME-9d2e"


async def cli(job: Path, base_url: str, *extra: str, max_in_flight: int = 8) -> str:
    """Run the CLI to the end; its stderr (the summary). Fails on a non-zero exit."""
    proc = await start_cli(job, base_url, "--rpm", "off", "--tpm", "off", *extra,
                           max_in_flight=max_in_flight)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return err.decode()


def line(i: int, text: str, **body: Any) -> dict[str, Any]:
    record = chat_line(i, text=text)
    record["body"].update(body)
    return record


def ids_once(path: Path, n: int) -> list[dict[str, Any]]:
    records = read_jsonl(path)
    counts = Counter(r["custom_id"] for r in records)
    assert counts == Counter(f"req-{i}" for i in range(n)), counts.most_common(3)
    for r in records:
        assert r["error"] is None and r["response"]["status_code"] == 200
    return records


def raw_responses(path: Path) -> dict[str, bytes]:
    """custom_id -> the ``"response":{...}`` bytes of each line, as written."""
    out = {}
    for raw in path.read_bytes().splitlines():
        cid = orjson.loads(raw)["custom_id"]
        start = raw.index(b'"response":')
        end = raw.find(b',"batchproc":', start)
        out[cid] = raw[start:end if end > 0 else raw.rindex(b',"error":')]
    return out


def question(i: int, dupes: dict[int, int]) -> str:
    return f"Question number {dupes.get(i, i)}?"


async def test_second_run_with_the_cache_sends_nothing_and_writes_the_same_bytes(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=5)
    job = write_jsonl(tmp_path / "job.jsonl", [
        line(i, f"Question {i}?", **({"metadata": {"run": 1}} if i % 2 else {}))
        for i in range(40)])
    cache = tmp_path / "cache" / "responses.sqlite"
    summary = await cli(job, api.base_url, "--cache", str(cache))
    assert api.stats.requests == 40 and "cached: " not in summary
    first = tmp_path / "job.results.jsonl"
    second = tmp_path / "second.jsonl"
    summary = await cli(job, api.base_url, "--cache", str(cache), "-o", str(second))
    assert api.stats.requests == 40  # the server's own count: nothing more arrived
    assert "cached: 40, shared (single-flight): 0; saved about $" in summary
    ids_once(second, 40)
    assert raw_responses(second) == raw_responses(first)
    for record in read_jsonl(second):
        assert record["batchproc"] == {"cached": True}
    # --fresh starts over, and the cache still answers; refresh sends all again.
    await cli(job, api.base_url, "--cache", str(cache), "--fresh")
    assert api.stats.requests == 40
    await cli(job, api.base_url, "--cache", str(cache), "--cache-mode", "refresh", "--fresh")
    assert api.stats.requests == 80
    assert cache_stats(cache).entries == 40


async def test_duplicates_anywhere_are_sent_once_with_the_cache(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=20, latency_jitter_ms=20, seed=3)
    rng = random.Random(7)
    # 70 different questions; 30 more lines repeat one of them, anywhere after it.
    order = list(range(70))
    for _ in range(30):
        j = rng.randrange(70)
        order.insert(rng.randrange(order.index(j) + 1, len(order) + 1), j)
    first = {q: order.index(q) for q in range(70)}
    dupes = {n: first[q] for n, q in enumerate(order) if first[q] != n}
    assert len(dupes) == 30
    job = write_jsonl(tmp_path / "job.jsonl", [line(n, f"Question {q}?")
                                               for n, q in enumerate(order)])
    summary = await cli(job, api.base_url, "--cache", str(tmp_path / "c.sqlite"))
    assert api.stats.requests == 100 - len(dupes)
    records = ids_once(tmp_path / "job.results.jsonl", 100)
    answers = {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"]
               for r in records}
    for i, j in dupes.items():
        assert answers[f"req-{i}"] == answers[f"req-{j}"]
    served = sum(1 for r in records if "batchproc" in r)
    assert served == len(dupes)
    assert f"cached: {summary.split('cached: ')[1].split(',')[0]}" in summary


async def test_thirty_percent_duplicates_send_seventy_percent_without_a_cache(
        mock_api: Any, tmp_path: Path) -> None:
    """Identical requests in flight at once are sent once: each copy here comes right
    behind its original, read while the original is on the wire (even when the wire is
    full: 8 in flight at most)."""
    api = await mock_api(latency_ms=50)
    lines, dupes = [], {}
    for i in range(70):
        lines.append(i)
        if i % 7 < 3:  # 30 of the 70 originals come twice
            dupes[len(lines)] = len(lines) - 1
            lines.append(-1)
    job = write_jsonl(tmp_path / "job.jsonl",
                      [line(n, question(n, dupes)) for n in range(len(lines))])
    assert len(lines) == 100 and len(dupes) == 30
    summary = await cli(job, api.base_url, max_in_flight=8)
    assert api.stats.requests == 70
    assert "cached: 0, shared (single-flight): 30" in summary
    records = ids_once(tmp_path / "job.results.jsonl", 100)
    shared = {r["custom_id"]: r["batchproc"]["shared_from"] for r in records
              if "batchproc" in r}
    assert shared == {f"req-{i}": f"req-{j}" for i, j in dupes.items()}
    # The control: without single-flight every line is a request.
    await cli(job, api.base_url, "--single-flight", "off", "-o", str(tmp_path / "off.jsonl"))
    assert api.stats.requests == 170


async def test_two_processes_share_one_cache_file(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=10, latency_jitter_ms=20, seed=5)
    cache = tmp_path / "shared.sqlite"
    a = write_jsonl(tmp_path / "a.jsonl", [line(i, f"Q{i}") for i in range(150)])
    # b asks 75 of a's questions (in another order) and 75 of its own.
    b = write_jsonl(tmp_path / "b.jsonl", [line(i, f"Q{i * 2 if i < 75 else 1000 + i}")
                                          for i in reversed(range(150))])
    procs = [await start_cli(job, api.base_url, "--rpm", "off", "--tpm", "off", "--cache",
                             str(cache), max_in_flight=16) for job in (a, b)]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err.decode()
    ids_once(tmp_path / "a.results.jsonl", 150)
    ids_once(tmp_path / "b.results.jsonl", 150)
    conn = sqlite3.connect(cache)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    entries = conn.execute("SELECT count(*), count(DISTINCT key) FROM responses").fetchone()
    conn.close()
    assert entries == (225, 225)
    assert 225 <= api.stats.requests <= 300
    # Everything either asked is in the file now: a third run sends nothing.
    before = api.stats.requests
    await cli(b, api.base_url, "--cache", str(cache), "-o", str(tmp_path / "b2.jsonl"))
    assert api.stats.requests == before


async def _run_with_key(job: Path, base_url: str, *extra: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["MY_KEY"] = KEY
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli.app", str(job), "--base-url", base_url,
        "--api-key-env", "MY_KEY", "--plain", "--rpm", "off", "--tpm", "off", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode()


async def test_the_key_is_never_in_the_cache_and_failures_are_not_stored(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(api_key=KEY, models=frozenset({"gpt-4o-mini"}))
    cache = tmp_path / "c.sqlite"
    job = write_jsonl(tmp_path / "job.jsonl", [
        line(i, f"Q{i}", **({"model": "no-such-model"} if i % 4 == 0 else {}))
        for i in range(20)])
    code, err = await _run_with_key(job, api.base_url, "--cache", str(cache))
    assert code == 1, err  # some failed for good (404)
    assert len(read_jsonl(tmp_path / "job.errors.jsonl")) == 5
    assert cache_stats(cache).entries == 15  # the 404s are not stored
    for path in tmp_path.iterdir():
        if path.name.startswith("c.sqlite"):
            data = path.read_bytes()
            assert KEY.encode() not in data and b"Bearer" not in data, path.name
            assert b"CACHE-NEVER" not in data
    # A rerun elsewhere: the 15 come from the cache, the 5 failures are asked again.
    before = api.stats.requests
    code, err = await _run_with_key(job, api.base_url, "--cache", str(cache), "--output",
                                    str(tmp_path / "again.jsonl"), "--errors",
                                    str(tmp_path / "again.errors.jsonl"))
    assert api.stats.requests == before + 5
    assert "cached: 15" in err
    # 5xx answers are not stored either.
    down = await mock_api(fail_500=1.0, seed=1)
    other = tmp_path / "down.sqlite"
    code, err = await _run_with_key(job, down.base_url, "--cache", str(other), "--fresh",
                                    "--max-attempts", "1", "--outage-window", "0")
    assert down.stats.n_5xx == 20 and cache_stats(other).entries == 0


async def test_cache_ignore_decides_which_fields_make_requests_differ(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=5)
    cache = str(tmp_path / "c.sqlite")
    run1 = write_jsonl(tmp_path / "one.jsonl", [line(0, "same", user="alice")])
    run2 = write_jsonl(tmp_path / "two.jsonl", [line(0, "same", user="bob")])

    def cfg(**kw: Any) -> JobConfig:
        return JobConfig(base_url=api.base_url, cache_path=cache, allow_download=False, **kw)

    await run_job(run1, cfg())
    await run_job(run2, cfg())  # user is left out by default
    assert api.stats.requests == 1
    await run_job(run2, cfg(cache_ignore=parse_ignore("none"), fresh=True))
    assert api.stats.requests == 2
    # Other rules key their own answers (one run's "temperature does not matter" must
    # not answer a run that never said so): sent once, then served under those rules.
    await run_job(run1, cfg(cache_ignore=parse_ignore("user,temperature"), fresh=True))
    assert api.stats.requests == 3
    await run_job(run1, cfg(cache_ignore=parse_ignore("temperature,user"), fresh=True))
    assert api.stats.requests == 3
    proc = await start_cli(run1, api.base_url, "--cache", cache, "--cache-ignore", "a b")
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"--cache-ignore" in err


async def test_followers_resume_exactly_once_after_a_kill_between_their_writes(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(latency_ms=100)
    # Groups of 4 identical requests, back to back: one leader, three followers each.
    job = write_jsonl(tmp_path / "job.jsonl", [line(i, f"group {i // 4}") for i in range(40)])
    await cli(job, api.base_url, max_in_flight=4)
    assert api.stats.requests == 10
    results = tmp_path / "job.results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    # What a kill -9 right after a leader's result leaves: none of its followers written.
    cut = next(i for i, raw in enumerate(lines) if b'"shared_from"' in raw)
    assert b'"shared_from"' not in lines[cut - 1]
    lost = {orjson.loads(raw)["custom_id"] for raw in lines[cut:]}
    results.write_bytes(b"".join(lines[:cut]))
    await cli(job, api.base_url, max_in_flight=4)
    ids_once(results, 40)
    # Each lost group is sent once more (its followers lead again); none twice.
    groups = {int(cid.split("-")[1]) // 4 for cid in lost}
    assert api.stats.requests == 10 + len(groups)


async def test_kill_9_mid_run_then_rerun_answers_every_line_once(
        mock_api: Any, tmp_path: Path, turnstile: Turnstile) -> None:
    # 30 requests (90 lines) at most: killed before the end
    api = await mock_api(latency_ms=60, latency_jitter_ms=60, seed=2,
                         middlewares=[turnstile.middleware])
    turnstile.allow(30)
    job = write_jsonl(tmp_path / "job.jsonl", [line(i, f"group {i // 3}") for i in range(300)])
    cache = tmp_path / "c.sqlite"
    results = tmp_path / "job.results.jsonl"
    proc = await start_cli(job, api.base_url, "--rpm", "off", "--tpm", "off", "--cache",
                           str(cache), max_in_flight=4)
    await until(lambda: results.exists() and results.read_bytes().count(b"\n") >= 60,
                "60 answers written", alive=proc)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    written = results.read_bytes().count(b"\n")
    assert 0 < written < 300
    turnstile.open()
    await cli(job, api.base_url, "--cache", str(cache), max_in_flight=4)
    records = ids_once(results, 300)
    answers: dict[int, set[str]] = {}
    for r in records:
        group = int(r["custom_id"].split("-")[1]) // 3
        answers.setdefault(group, set()).add(r["response"]["body"]["choices"][0]["message"]
                                             ["content"])
    assert all(len(texts) == 1 for texts in answers.values())
    # About one request per group (a kill loses the cache's last uncommitted batch).
    assert api.stats.requests < 150


async def test_batchproc_cache_default_lives_in_the_user_cache_folder(
        mock_api: Any, tmp_path: Path, monkeypatch: Any) -> None:
    api = await mock_api()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("BATCHPROC_CACHE", "default")
    job = write_jsonl(tmp_path / "job.jsonl", [line(i, f"Q{i}") for i in range(3)])
    await cli(job, api.base_url)
    assert cache_stats(tmp_path / "xdg" / "batchproc" / "responses.sqlite").entries == 3
    summary = await cli(job, api.base_url, "--cache", "off", "--fresh")
    assert api.stats.requests == 6 and "cached:" not in summary


async def test_a_server_that_echoes_the_key_leaves_it_out_of_the_cache(
        hostile_api: Any, tmp_path: Path) -> None:
    from tests.hostile import echo

    api = await hostile_api(echo())
    job = write_jsonl(tmp_path / "job.jsonl", [line(i, f"Q{i}") for i in range(3)])
    cache = tmp_path / "c.sqlite"
    code, err = await _run_with_key(job, api.base_url, "--cache", str(cache))
    assert code == 0, err
    assert cache_stats(cache).entries == 3
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir()
                      if p.name.startswith("c.sqlite"))
    assert b"Authorization" in stored or b"authorization" in stored.lower()  # it was echoed
    assert KEY.encode() not in stored and KEY[8:].encode() not in stored
