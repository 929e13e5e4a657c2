"""Red-team findings on the features merged together (the response cache and
single-flight, --pack, --shard and merge, the run log and report, per-model limits), each
through the real CLI where a user would meet it, plus the unit test of its fix."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from processor.cli.app import app
from processor.run.config import JobConfig
from processor.run.observer import open_run_log, start_fields
from processor.stats import Stats
from processor.store import runlog
from processor.store.runlog import read_events

from .conftest import chat_line, read_jsonl, write_jsonl
from .test_cli import invoke, server_url  # noqa: F401 - the fixture

KEY = "sk-attack-MERGED-never-shown-5b1c"


def emb_line(i: int, text: str | None = None) -> dict[str, Any]:
    return {"custom_id": f"e-{i}", "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": text or f"text {i}",
                     "dimensions": 4}}


async def cli(job: Path, base_url: str, *extra: str, env: dict[str, str] | None = None
              ) -> tuple[int, str]:
    """``batchproc run JOB`` in a subprocess, as a user runs it: exit code, stdout+stderr."""
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY",
                                                               "OPENAI_BASE_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli.app", str(job), "--base-url", base_url,
        "--plain", "--rpm", "off", "--tpm", "off", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=base | (env or {}))
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


# ------------------------------------------------------------- the cache over a job's file


@pytest.mark.parametrize("name", ["job.results.jsonl.ledger", "job.run.jsonl",
                                  "job.results.jsonl.lock", "job.shard-1-of-2.results.jsonl"
                                  ".shard"])
def test_a_cache_over_one_of_the_jobs_files_is_refused(
        server_url: str, tmp_path: Path, name: str) -> None:  # noqa: F811
    """``--cache`` naming the ledger or the run log was taken: the SQLite file was made
    there first, then the ledger's hashes (or the log's events) were appended into it,
    spoiling both. Every file of the job is now checked, before anything is written."""
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    shard = ["--shard", "1/2"] if ".shard-" in name else []
    target = tmp_path / name
    code, out = invoke("run", str(job), "--base-url", server_url, "--plain", "--cache",
                       str(target), *shard)
    assert code == 2, out
    assert "the cache (--cache) and" in out and "same file" in out
    assert not target.exists() or b"SQLite" not in target.read_bytes()[:16]
    assert not (tmp_path / "job.results.jsonl").exists()  # nothing was sent


def test_a_cache_through_a_symlink_to_the_ledger_is_refused(
        server_url: str, tmp_path: Path) -> None:  # noqa: F811
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    assert invoke("run", str(job), "--base-url", server_url, "--plain")[0] == 0
    ledger = tmp_path / "job.results.jsonl.ledger"
    before = ledger.read_bytes()
    (tmp_path / "answers.sqlite").symlink_to(ledger)
    code, out = invoke("run", str(job), "--base-url", server_url, "--plain", "--cache",
                       str(tmp_path / "answers.sqlite"))
    assert code == 2 and "the ledger" in out, out
    assert ledger.read_bytes() == before


# ------------------------------------------------------------------- --pack with --cache


async def test_the_packed_note_counts_only_packs_that_were_sent(
        mock_api: Any, tmp_path: Path) -> None:
    """A rerun answered wholly from the cache said "packed: 40 lines sent in 4 requests"
    with 0 attempts: packs were counted when made, before the cache took their lines."""
    api = await mock_api()
    lines = [emb_line(i, f"text {i % 25}") for i in range(40)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    cache = str(tmp_path / "c.sqlite")
    code, out = await cli(job, api.base_url, "--pack", "10", "--cache", cache)
    assert code == 0, out
    sent = api.stats.requests
    # 25 distinct texts: 15 lines are cache hits or followers, never in a sent pack.
    packed = next(row for row in out.splitlines() if "packed:" in row)
    lines_sent = int(packed.split("packed:")[1].split()[0].replace(",", ""))
    assert lines_sent <= 25 and f"in {sent} requests" in packed, out
    code, out = await cli(job, api.base_url, "--pack", "10", "--cache", cache,
                          "-o", str(tmp_path / "again.jsonl"))
    assert code == 0 and api.stats.requests == sent, out
    assert "cached: 40" in out and "packed:" not in out, out
    assert len(read_jsonl(tmp_path / "again.jsonl")) == 40


# ------------------------------------------------------------------ secrets in the run log


def test_the_run_log_never_holds_the_redis_password(tmp_path: Path) -> None:
    """``--limiter redis://:PASS@host`` and ``$REDIS_PASSWORD`` were written as they are
    into the run log's start event (``cfg.limiter``, ``cfg.limiter_password``)."""
    password = "hunter2-redis-PASSWORD"
    for url, env_password in ((f"redis://:{password}@127.0.0.1:6390/0", None),
                              ("redis://127.0.0.1:6390/0", password),
                              ("rediss://user:hunter2-redis-PASSWORD@127.0.0.1/0", None),
                              ("redis://:hunter2-redis%2DPASSWORD@127.0.0.1/0", None)):
        cfg = JobConfig(api_key=KEY, limiter=url, limiter_password=env_password,
                        base_url=f"https://me:{KEY}@127.0.0.1:9/v1")
        path = tmp_path / "job.run.jsonl"
        log = open_run_log(path, cfg, lambda: 0.0, start_fields(
            cfg, tmp_path / "job.jsonl", tmp_path / "r", tmp_path / "e", Stats(), 0, 0))
        log.close()
        data = path.read_bytes()
        assert b"hunter2" not in data and KEY.encode() not in data, data
        start = next(read_events(path))
        assert start["cfg"]["limiter"].startswith(("redis://", "rediss://"))
        assert "127.0.0.1" in start["cfg"]["limiter"]
        assert start["cfg"]["limiter_password"] in (None, "***")
        path.unlink()


async def test_secrets_in_the_url_a_header_and_the_answer_reach_no_file(
        hostile_api: Any, tmp_path: Path) -> None:
    """A key in the base URL (user info, query), in a gateway's own header, and a server
    that echoes every header: with cache, single-flight and the run log on, no file of
    the job (results, errors, cache, run log) nor any output (summary, report, cache
    stats) holds any of them."""
    from tests.hostile import echo

    api = await hostile_api(echo())
    gateway = "gw-TOKEN-for-the-gateway-71f0"
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i % 3) | {"custom_id": f"c{i}"}
                                               for i in range(6)])
    cache = tmp_path / "c.sqlite"
    # user:pass@ beside a key: every request failed locally (aiohttp refuses Basic auth
    # beside an Authorization header), taken for an outage without end. Refused now.
    code, out = await cli(job, api.base_url.replace("http://", f"http://me:{KEY}@"),
                          "--cache", str(cache), env={"OPENAI_API_KEY": KEY})
    assert code == 2 and "user name or password" in out and KEY not in out, out
    assert not api.requests and not (tmp_path / "job.results.jsonl").exists()
    url = api.base_url + f"?token={KEY}-query"
    code, out = await cli(job, url, "--cache", str(cache), "--api-key-env", "K",
                          "--header", f"X-Portkey-Api-Key: {gateway}",
                          "--header", f"Helicone-Auth: Bearer {gateway}", env={"K": KEY})
    records = read_jsonl(tmp_path / "job.results.jsonl")
    assert code == 0 and len(records) == 6, out
    assert sum(1 for r in records if "shared_from" in r.get("batchproc", {})) == 3
    report = CliRunner().invoke(app, ["report", str(tmp_path / "job.run.jsonl"),
                                      "--summary"])
    stats = CliRunner().invoke(app, ["cache", "stats", str(cache), "--json"])
    assert report.exit_code == 0 and stats.exit_code == 0, report.output + stats.output
    texts = {"output": out.encode(), "report": report.output.encode(),
             "stats": stats.output.encode()}
    for path in tmp_path.iterdir():
        texts[path.name] = path.read_bytes()
    assert any(b"Authorization" in t or b"authorization" in t for t in texts.values())
    for name, data in texts.items():
        for secret in (KEY, gateway):
            assert secret.encode() not in data, name


# ---------------------------------------------------------------------- hostile run logs


def test_report_summary_never_passes_a_control_sequence_to_the_terminal(
        tmp_path: Path) -> None:
    """A custom_id, code or stop reason in a (hand-edited) log holding ESC sequences
    was printed as it is by ``report --summary``: an OSC sequence retitles the terminal,
    others clear it or hide text."""
    log = write_jsonl(tmp_path / "job.run.jsonl", [
        {"ev": "start", "run": 1, "at": 1.7e9, "t": 0},
        {"ev": "a", "id": "x", "n": 1, "ta": 0, "ts": 0, "td": 0.1, "st": 200,
         "m": "\x1b[8mhidden", "k": "\u202egnp.exe"},
        {"ev": "fail", "id": "\x1b]0;PWNED\x07", "line": 1, "code": "\x1b[2Jcode",
         "msg": "\x9b31m"},
        {"ev": "end", "reason": "\x1b[31mred", "msg": "\x00", "t": 1}])
    for args in (["--summary"], ["--json"], ["-o", str(tmp_path / "r.html")]):
        result = CliRunner().invoke(app, ["report", str(log), *args])
        assert result.exit_code == 0, result.output
        shown = result.output + ((tmp_path / "r.html").read_text() if "-o" in args else "")
        for char in ("\x1b", "\x07", "\x9b", "\x00", "\u202e"):
            assert char not in shown, (args, char)
    assert "\\u001b[2Jcode" in CliRunner().invoke(app, ["report", str(log),
                                                        "--summary"]).output


def test_a_huge_line_in_a_run_log_is_passed_over_in_bounded_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line of hundreds of MB (a hostile or broken log) was read whole: `report` took
    1.9 GB for a 600 MB line. Lines are read at most MAX_LINE bytes at a time now."""
    monkeypatch.setattr(runlog, "MAX_LINE", 4096)
    path = tmp_path / "job.run.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"ev":"start","run":1,"at":1,"t":0}\n')
        f.write(b'{"ev":"a","id":"' + b"x" * 5_000_000 + b'"}\n')
        f.write(b'{"ev":"end","reason":"done","t":1}\n')
        f.write(b'{"ev":"p","id":"' + b"y" * 10_000)  # an over-long torn tail
    longest = 0
    real = runlog._lines

    def spy(f: Any) -> Any:
        nonlocal longest
        for line in real(f):
            longest = max(longest, len(line))
            yield line

    monkeypatch.setattr(runlog, "_lines", spy)
    bad: list[int] = []
    assert [e["ev"] for e in read_events(path, bad)] == ["start", "end"]
    assert bad == [2, 4] and longest <= 4097


# ----------------------------------------------------------------------------- merge


def test_merge_refuses_shards_of_two_jobs(server_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Shard 1/2 of one job and shard 2/2 of another merged without a word (exit 0): the
    markers said which shard, not of which job."""
    a = write_jsonl(tmp_path / "a.jsonl", [chat_line(i) for i in range(8)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat_line(i) | {"custom_id": f"b{i}"}
                                           for i in range(8)])
    for job, k in ((a, 1), (a, 2), (b, 2)):
        code, out = invoke("run", str(job), "--base-url", server_url, "--plain",
                           "--shard", f"{k}/2")
        assert code == 0, out
    marker = orjson.loads((tmp_path / "a.shard-1-of-2.results.jsonl.shard").read_bytes())
    assert marker["job"] == "a.jsonl"
    mixed = CliRunner().invoke(app, ["merge", str(tmp_path / "a.shard-1-of-2.results.jsonl"),
                                     str(tmp_path / "b.shard-2-of-2.results.jsonl"),
                                     "-o", str(tmp_path / "m.results.jsonl")])
    assert mixed.exit_code == 1 and "shards of different jobs" in mixed.output, mixed.output
    whole = CliRunner().invoke(app, ["merge", "--job", str(a)])
    assert whole.exit_code == 0, whole.output
    assert len(read_jsonl(tmp_path / "a.merged.results.jsonl")) == 8


async def test_the_report_counts_answers_from_the_cache_and_single_flight(
        mock_api: Any, tmp_path: Path) -> None:
    """A rerun answered from the cache showed "answered 0 ... run 2: 0 ok" in the report
    (cache hits and followers had no event; main now logs them as 's' events): with a
    pack and --fresh, the report's counts match the results files."""
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [emb_line(i, f"text {i % 4}") for i in range(12)])
    cache = str(tmp_path / "c.sqlite")
    assert (await cli(job, api.base_url, "--cache", cache, "--pack", "3"))[0] == 0
    assert (await cli(job, api.base_url, "--cache", cache, "--fresh"))[0] == 0
    result = CliRunner().invoke(app, ["report", str(tmp_path / "job.run.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    figures = orjson.loads(result.output)
    assert [r["ok"] for r in figures["per_run"]] == [12, 12]
    assert figures["answered"] == 24 and figures["cached"] + figures["shared"] == 24 - 4
    assert figures["attempts"] == api.stats.requests


# ------------------------------------------------------------- one cache, two rule sets


async def test_runs_with_other_cache_ignore_lists_never_answer_each_other(
        mock_api: Any, tmp_path: Path) -> None:
    """Run A said ``--cache-ignore temperature`` and stored answers to temperature-2
    requests; run B (default rules) sharing the file got them for its requests without a
    temperature, which B never said did not matter. Each list of left-out fields now
    keys its own answers; runs with the same list still share."""
    api = await mock_api()
    hot = [chat_line(i) for i in range(4)]
    for record in hot:
        record["body"]["temperature"] = 2
    cold = [chat_line(i) for i in range(4)]
    cache = str(tmp_path / "shared.sqlite")
    a = write_jsonl(tmp_path / "a.jsonl", hot)
    b = write_jsonl(tmp_path / "b.jsonl", cold)
    code, out = await cli(a, api.base_url, "--cache", cache, "--cache-ignore", "temperature")
    assert code == 0 and api.stats.requests == 4, out
    code, out = await cli(b, api.base_url, "--cache", cache)
    assert code == 0 and api.stats.requests == 8, out  # sent: not A's answers
    assert not any("cached" in r.get("batchproc", {})
                   for r in read_jsonl(tmp_path / "b.results.jsonl"))
    # The same rules, in another order, share; and B's own answers serve B again.
    code, out = await cli(b, api.base_url, "--cache", cache, "--cache-ignore",
                          "temperature", "-o", str(tmp_path / "b2.jsonl"))
    assert code == 0 and api.stats.requests == 8 and "cached: 4" in out, out
    code, out = await cli(b, api.base_url, "--cache", cache, "-o", str(tmp_path / "b3.jsonl"))
    assert code == 0 and api.stats.requests == 8 and "cached: 4" in out, out


# ------------------------------------------- a pack split, with followers and the cache


async def test_followers_of_a_line_in_a_split_pack_get_its_answer(
        hostile_api: Any, tmp_path: Path) -> None:
    """A pack that fails for one poisoned input is split; lines of it that lead
    followers (identical lines read while the pack was out) still answer them, the
    poisoned line's followers get its error, and a rerun (cache on) sends nothing again."""
    from tests.hostile import openai_error, when

    async def refuse(request: Any, api: Any) -> Any:
        return openai_error(400, "Invalid input: poison", "invalid_request_error", None)

    api = await hostile_api(when(lambda body: b"poison" in body, refuse), latency=0.2)
    texts = ["alpha", "beta", "poison", "gamma", "alpha", "poison", "beta", "delta"]
    job = write_jsonl(tmp_path / "job.jsonl", [emb_line(i, t) for i, t in enumerate(texts)])
    cache = str(tmp_path / "c.sqlite")
    code, out = await cli(job, api.base_url, "--pack", "4", "--cache", cache,
                          "--max-attempts", "2")
    assert code == 1, out  # the poisoned lines failed for good
    results = {r["custom_id"]: r for r in read_jsonl(tmp_path / "job.results.jsonl")}
    errors = {r["custom_id"]: r for r in read_jsonl(tmp_path / "job.errors.jsonl")}
    assert sorted(errors) == ["e-2", "e-5"] and len(results) == 6, out
    assert all(e["response"]["status_code"] == 400 for e in errors.values())
    by_text: dict[str, list[float]] = {}
    for cid, record in results.items():
        vector = record["response"]["body"]["data"][0]["embedding"]
        text = texts[int(cid.split("-")[1])]
        assert by_text.setdefault(text, vector) == vector, cid  # one answer per text
    sent = len(api.requests)
    code, out = await cli(job, api.base_url, "--pack", "4", "--cache", cache)
    assert code == 1 and len(api.requests) == sent, out  # nothing sent again
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 6


# ------------------------------------------------------------ a hand-edited cache file


def test_cache_stats_of_a_hand_edited_cache_neither_crashes_nor_passes_escapes(
        tmp_path: Path) -> None:
    """Rows of other types than batchproc writes (a text time, a huge time, a blob or
    ESC-laden model, text hits) crashed ``cache stats`` with a traceback (OverflowError;
    "Dict key must be str" with --json) or put the ESC sequence on the terminal."""
    import sqlite3

    from processor.store.cache import ResponseCache

    path = tmp_path / "c.sqlite"
    with ResponseCache(path, interval=0.01) as cache:
        cache.put(b"k" * 16, 200, "req_1", {"id": "x"}, "gpt-4o-mini", 3, 4)
    conn = sqlite3.connect(path)
    rows = [(b"\x01", "x'ff00'", "'yesterday'", "0", "NULL"),
            (b"\x02", "char(27) || ']0;PWNED' || char(7)", "1e300", "'many'", "-1e308"),
            (b"\x03", "x'00'", "-5", "9e99", "'now'")]
    for key, model, created, hits, last in rows:
        conn.execute(f"INSERT INTO responses (key, status, request_id, model, created, body, "
                     f"hits, last_hit) VALUES (?, 200, 'r', {model}, {created}, x'7b7d', "
                     f"{hits}, {last})", (key,))
    conn.commit()
    conn.close()
    for args in ([], ["--json"]):
        result = CliRunner().invoke(app, ["cache", "stats", str(path), *args])
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
    figures = orjson.loads(CliRunner().invoke(app, ["cache", "stats", str(path),
                                                    "--json"]).output)
    assert figures["entries"] == 4 and figures["hits"] == 0
    assert figures["oldest"] == figures["newest"] and figures["oldest"] > 1.7e9
    assert figures["models"]["gpt-4o-mini"] == 1


def test_long_first_lines_neither_block_the_log_nor_load_a_huge_job_line(
        tmp_path: Path) -> None:
    """A start event over 64 KiB (long --header values, a long limits file) made the
    next run refuse its own log ("not a run log"); and `report JOB` read the job's first
    line whole to see whether it was a log (a vision job's line can be hundreds of MB)."""
    from processor.store.runlog import is_run_log

    log = write_jsonl(tmp_path / "job.run.jsonl", [
        {"ev": "start", "run": 1, "at": 1.7e9, "t": 0, "cfg": {"headers": {"X": "v" * 200_000}}},
        {"ev": "end", "reason": "completed", "t": 1, "ok": 3}])
    assert is_run_log(log)
    result = CliRunner().invoke(app, ["report", str(log), "--summary"])
    assert result.exit_code == 0 and "last stop: completed" in result.output, result.output
    job = tmp_path / "big.jsonl"
    job.write_bytes(b'{"custom_id": "a", "body": {"x": "' + b"y" * (3 << 20) + b'"}}\n')
    assert not is_run_log(job)
    result = CliRunner().invoke(app, ["report", str(job), "--summary"])
    assert result.exit_code == 2 and "not a run log" in result.output, result.output


def test_a_hostile_log_cannot_grow_the_reports_limit_tables() -> None:
    """``limit`` events under endless made-up names, and a start naming 50,000 keys,
    were all kept (and every key summed at each limit event): memory and time grew with
    the log. Only rpm / tpm are kept now, over at most MAX_ROWS keys."""
    from processor.tools.report.aggregate import MAX_ROWS
    from processor.tools.report.limits import LimitBook

    limits = LimitBook(MAX_ROWS)
    limits.start({"rpm": 100, "tpm": 1000}, {"keys": [f"k{i}" for i in range(50_000)]})
    assert len(limits.keys) == MAX_ROWS
    for i in range(5_000):
        limits.learn(f"name-{i}", 5, f"k{i}", None)
    limits.learn("rpm", 50, "k0", None)
    for i in range(5_000):  # endless models and keys: at most MAX_ROWS of each kept
        limits.learn("rpm", 5, f"k{i}", f"model-{i}")
    assert set(limits.learned) == {"rpm"} and len(limits.learned["rpm"]) <= MAX_ROWS
    assert limits.in_force("")[0] == 100 * (MAX_ROWS - 1) + 50


def test_a_setting_kept_out_of_the_configs_repr_is_kept_out_of_the_run_log() -> None:
    """The run log's settings were a hand-kept deny list (the Redis password slipped
    through it); now every JobConfig field declared ``repr=False`` is left out too."""
    import dataclasses

    from processor.run.observer import safe_config

    cfg = JobConfig(api_key=KEY, limiter="redis://:pw-secret-123@127.0.0.1/0",
                    limiter_password="pw-secret-123", headers={"X-Api-Key": KEY})
    shown = orjson.dumps(safe_config(cfg))
    assert b"pw-secret-123" not in shown and KEY.encode() not in shown
    hidden = {f.name for f in dataclasses.fields(JobConfig) if not f.repr}
    assert {"api_key", "api_keys", "limiter_password"} <= hidden
    assert not hidden & {k for k, v in safe_config(cfg).items()
                         if v not in (None, "***") and k not in ("limiter", "headers")}


async def test_a_servers_absurd_usage_does_not_end_the_cache_writer(
        hostile_api: Any, tmp_path: Path) -> None:
    """A 200 whose usage says 2**64 - 1 tokens (orjson reads it, SQLite's INTEGER cannot
    hold it) raised OverflowError on the cache's writer thread, which died: a traceback
    on stderr, and no answer of the run stored from then on, with no warning. And the
    run log's end event (usage summed past 64 bits) crashed the run itself."""
    from aiohttp import web

    async def absurd(request: Any, api: Any) -> Any:
        body = await request.json()
        text = body["messages"][-1]["content"]
        raw = ('{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":'
               '"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant",'
               '"content":' + orjson.dumps("re: " + text).decode() + '},"finish_reason":'
               '"stop"}],"usage":{"prompt_tokens":18446744073709551615,'
               '"completion_tokens":-7,"total_tokens":3}}')
        return web.Response(body=raw.encode(), content_type="application/json")

    api = await hostile_api(absurd)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(5)])
    cache = str(tmp_path / "c.sqlite")
    code, out = await cli(job, api.base_url, "--cache", cache)
    assert code == 0 and "Traceback" not in out and "OverflowError" not in out, out
    assert "5 answers stored" in out, out
    # The run log summed the usage past 64 bits (orjson refused it, and the fallback
    # raised again: the whole run crashed with exit 1). The number is kept as text now.
    end = [e for e in read_events(tmp_path / "job.run.jsonl") if e["ev"] == "end"]
    assert end and end[0]["pt"] == str(5 * (2**64 - 1)) and end[0]["ok"] == 5
    report = CliRunner().invoke(app, ["report", str(tmp_path / "job.run.jsonl"), "--json"])
    assert report.exit_code == 0, report.output
    code, out = await cli(job, api.base_url, "--cache", cache, "-o", str(tmp_path / "b.jsonl"))
    assert code == 0 and "cached: 5" in out and len(api.requests) == 5, out
    texts = [r["response"]["body"]["choices"][0]["message"]["content"]
             for r in read_jsonl(tmp_path / "b.jsonl")]
    assert texts == [f"re: Question number {i}?" for i in range(5)]


async def test_shared_failures_retried_with_cache_and_pack_once_each(
        hostile_api: Any, tmp_path: Path) -> None:
    """Identical lines whose leader failed for good (followers got its error), rerun
    with --retry-failed once the server answers, with cache and --pack: each line gets
    one answer, the identical ones one request between them, and a third run sends
    nothing (held)."""
    from tests.hostile import openai_error, when

    state = {"broken": True}

    async def refuse(request: Any, api: Any) -> Any:
        if state["broken"]:
            return openai_error(400, "Invalid input: flaky", "invalid_request_error", None)
        return None

    api = await hostile_api(when(lambda body: b"flaky" in body, refuse), latency=0.1)
    texts = ["flaky", "ok-1", "flaky", "ok-2", "flaky", "ok-3"]
    job = write_jsonl(tmp_path / "job.jsonl", [emb_line(i, t) for i, t in enumerate(texts)])
    cache = str(tmp_path / "c.sqlite")
    code, out = await cli(job, api.base_url, "--pack", "3", "--cache", cache)
    assert code == 1, out
    assert sorted(r["custom_id"] for r in read_jsonl(tmp_path / "job.errors.jsonl")) == \
        ["e-0", "e-2", "e-4"]
    state["broken"] = False
    before = len(api.requests)
    code, out = await cli(job, api.base_url, "--pack", "3", "--cache", cache, "--retry-failed")
    assert code == 0, out
    assert len(api.requests) == before + 1, out  # the three identical lines: one request
    ids = [r["custom_id"] for r in read_jsonl(tmp_path / "job.results.jsonl")]
    assert sorted(ids) == [f"e-{i}" for i in range(6)], ids
    code, out = await cli(job, api.base_url, "--pack", "3", "--cache", cache)
    assert code == 0 and len(api.requests) == before + 1, out
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 6
