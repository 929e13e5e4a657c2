"""``run --shard K/N``: N workers share one job through the real CLI against the mock
server; each line is taken by exactly one shard, reruns resume, and other splits of the
same files are refused. ``batchproc merge`` then gives one answer per id."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from processor.cli.app import app
from processor.errors import ConfigError
from processor.run.runner import JobConfig, run_job
from processor.shards import Shard, line_id, parse_shard, shard_of
from processor.store.lock import JobLock
from processor.store.paths import job_locks
from tests.conftest import Turnstile, chat_line, read_jsonl, start_cli, until, write_jsonl

pytestmark = pytest.mark.slow

N = 4


def bare(i: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"bare {i}"}],
            "max_tokens": 8}


def mixed_job(path: Path, n: int) -> tuple[Path, list[str], list[str]]:
    """A job of Batch lines, bare lines, lines whose custom_id is not first, requests the
    server refuses (404), a line that is not JSON and a repeated custom_id.

    Returns the job, the ids of its requests in input order, and the id each bad line
    is reported under (its shard reports it).
    """
    lines: list[dict[str, Any] | bytes] = []
    ids: list[str] = []
    bad: list[str] = []
    for i in range(n):
        if i == 10:  # not JSON, but its first key is readable: reported by "torn"'s shard
            lines.append(b'{"custom_id": "torn", "body": {\n')
            bad.append("torn")
        if i == 20:  # repeats req-1: a bad line in req-1's shard
            lines.append(chat_line(1))
            bad.append("req-1")
        number = len(lines) + 1
        if i % 5 == 0:
            lines.append(bare(i))
            ids.append(f"line-{number}")
        elif i % 7 == 0:  # custom_id last: found by a full parse
            body = chat_line(i)
            lines.append({"body": body["body"], "url": body["url"], "custom_id": f"late-{i}"})
            ids.append(f"late-{i}")
        elif i % 11 == 0:  # a model the server does not have: an error record
            lines.append(chat_line(i, model="no-such-model"))
            ids.append(f"req-{i}")
        else:
            lines.append(chat_line(i))
            ids.append(f"req-{i}")
    return write_jsonl(path, lines), ids, bad


def shard_files(job: Path, k: int, n: int = N) -> tuple[Path, Path]:
    base = job.with_name(f"{job.name[:-6]}.shard-{k}-of-{n}")
    return Path(f"{base}.results.jsonl"), Path(f"{base}.errors.jsonl")


async def run_cli(job: Path, base_url: str, *extra: str) -> tuple[int, str]:
    proc = await start_cli(job, base_url, *extra)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def merge_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["merge", *args])
    return result.exit_code, result.output


def valid_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path} ends in a partial line"
    return [orjson.loads(line)["custom_id"] for line in data.splitlines()]


async def test_four_workers_split_the_job_and_merge_answers_each_id_once(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(models=["gpt-4o-mini"], latency_ms=5)
    job, ids, bad = mixed_job(tmp_path / "job.jsonl", 160)
    runs = await asyncio.gather(*(run_cli(job, api.base_url, "--shard", f"{k}/{N}")
                                  for k in range(1, N + 1)))
    for k, (code, err) in enumerate(runs, 1):
        # Exit 1 where a bad line or a refused request fell; every shard went to its end.
        assert code == (1 if shard_files(job, k)[1].exists() else 0), err
        assert f"shard {k}/{N}: " in err and "lines of the input are its share" in err
    answered: dict[int, list[str]] = {}
    bad_reports = 0
    for k in range(1, N + 1):
        results, errors = shard_files(job, k)
        answered[k] = valid_ids(results)
        failed = [r for r in read_jsonl(errors)]
        bad_reports += sum(r["error"]["code"] == "invalid_line" for r in failed)
        # Every id a shard answered or failed is its own: its hash says so.
        for cid in answered[k] + [r["custom_id"] for r in failed if r["custom_id"]]:
            assert shard_of(cid, N) == k, (cid, k)
        assert 0 < len(answered[k])
    assert bad_reports == len(bad)  # each bad line reported by exactly one shard
    # The server saw each request once: the shards took disjoint shares of the lines.
    assert api.stats.requests == len(ids)
    refused = {cid for cid in ids if cid.startswith("req-") and int(cid[4:]) % 11 == 0
               and int(cid[4:]) % 5 and int(cid[4:]) % 7}
    everything = Counter(cid for k in answered for cid in answered[k])
    assert set(everything) == set(ids) - refused and max(everything.values()) == 1

    code, out = merge_cli("--job", str(job))
    assert code == 0, out
    merged = tmp_path / "job.merged.results.jsonl"
    assert valid_ids(merged) == [cid for cid in ids if cid not in refused]  # input order
    merged_errors = read_jsonl(tmp_path / "job.merged.errors.jsonl")
    assert sorted(r["custom_id"] for r in merged_errors if r["custom_id"] in refused) == \
        sorted(refused)
    lines = [r["error"]["line"] for r in merged_errors]
    assert lines == sorted(lines)  # errors in input order too
    assert f"merged {len(ids) - len(refused):,} results" in out

    # Explicit files, no order asked: the same set; a rerun of any shard sends nothing.
    files = [str(shard_files(job, k)[0]) for k in range(1, N + 1)]
    errs = [a for k in range(1, N + 1) for a in ("--errors", str(shard_files(job, k)[1]))]
    code, out = merge_cli(*files, *errs, "-o", str(tmp_path / "all.jsonl"))
    assert code == 0, out
    assert sorted(valid_ids(tmp_path / "all.jsonl")) == sorted(everything)
    assert len(read_jsonl(tmp_path / "all.errors.jsonl")) == len(merged_errors)
    before = api.stats.requests
    code, err = await run_cli(job, api.base_url, "--shard", f"2/{N}")
    assert api.stats.requests == before, err
    assert f"{len(answered[2]):,} skipped" in err


async def test_shard_killed_then_rerun_then_merged_exactly_once(
        mock_api: Any, tmp_path: Path, turnstile: Turnstile) -> None:
    # 30 answers at most: the kill comes before the shard's end
    api = await mock_api(latency_ms=30, latency_jitter_ms=30, seed=3,
                         middlewares=[turnstile.middleware])
    n = 240
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    results, _ = shard_files(job, 1, 2)
    turnstile.allow(30)
    proc = await start_cli(job, api.base_url, "--shard", "1/2")
    await until(lambda: results.exists() and results.stat().st_size > 2000,
                "answers being written", alive=proc)
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    turnstile.open()
    # What a kill mid-write leaves: a partial last line. Merge reports it, never copies it.
    with open(results, "ab") as f:
        f.write(b'{"id":"batch_req_x","custom_id":"req-')
    code, err = await run_cli(job, api.base_url, "--shard", "2/2")
    assert code == 0, err
    code, out = merge_cli("--job", str(job))
    assert code == 1 and "partial last line" in out and "rerun that shard" in out
    # The rerun repairs the torn tail and finishes; then the merge is whole.
    code, err = await run_cli(job, api.base_url, "--shard", "1/2")
    assert code == 0, err
    assert "repaired a torn last line" in err
    code, out = merge_cli("--job", str(job))
    assert code == 0, out
    assert valid_ids(tmp_path / "job.merged.results.jsonl") == [f"req-{i}" for i in range(n)]


async def test_other_splits_of_the_same_files_are_refused(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(20)])
    out, err_file = tmp_path / "w.results.jsonl", tmp_path / "w.errors.jsonl"
    named = ["-o", str(out), "--errors", str(err_file)]
    code, err = await run_cli(job, api.base_url, "--shard", "2/4", *named)
    assert code == 0, err
    code, err = await run_cli(job, api.base_url, "--shard", "1/2")
    assert code == 0, err
    code, err = await run_cli(job, api.base_url, "-o", str(tmp_path / "plain.jsonl"),
                              "--errors", str(tmp_path / "plain.errors.jsonl"))
    assert code == 0, err
    sent = api.stats.requests

    code, err = await run_cli(job, api.base_url, "--shard", "2/3", *named)
    assert code == 2 and "written by shard 2/4, and this is shard 2/3" in err, err
    for shard, output, errors, words in (
        (Shard(3, 4), out, err_file, "written by shard 2/4, and this is shard 3/4"),
        (None, out, err_file, "was written by shard 2/4"),
        # Default names carry K and N; another N beside them is refused too.
        (Shard(1, 3), None, None, "split into another number of workers before"),
        # An unsharded run's outputs are not taken over by a shard.
        (Shard(1, 1), tmp_path / "plain.jsonl", tmp_path / "plain.errors.jsonl",
         "run without --shard"),
    ):
        config = JobConfig(base_url=api.base_url, shard=shard)
        with pytest.raises(ConfigError, match=words):
            await run_job(job, config, output=output, errors=errors)
    assert api.stats.requests == sent
    # --fresh starts the shard over (old outputs moved aside, never deleted).
    code, err = await run_cli(job, api.base_url, "--shard", "2/3", *named, "--fresh")
    assert code == 0, err
    assert all(shard_of(cid, 3) == 2 for cid in valid_ids(out))
    assert list(tmp_path.glob("w.results.jsonl.shard.*.bak"))


async def test_the_same_shard_twice_is_refused_by_the_lock(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(10)])
    results, errors = shard_files(job, 3)
    with JobLock(job_locks(results, errors)):
        code, err = await run_cli(job, api.base_url, "--shard", f"3/{N}")
        assert code == 75 and "another batchproc run" in err
        code, err = await run_cli(job, api.base_url, "--shard", f"2/{N}")
        assert code == 0, err  # another K: other files, other locks
    # merge refuses a shard still being written.
    results, errors = shard_files(job, 2)
    with JobLock(job_locks(results, errors)):
        code, out = merge_cli(str(results), "-o", str(tmp_path / "m.jsonl"))
        assert code == 75 and "another batchproc run" in out, out
    assert not (tmp_path / "m.jsonl").exists()
    code, out = merge_cli(str(results), "-o", str(tmp_path / "m.jsonl"))
    assert code == 1 and "shard(s) 1, 3, 4 of 4 are missing" in out, out  # by the markers
    assert len(read_jsonl(tmp_path / "m.jsonl")) == len(read_jsonl(results))


async def test_bare_lines_keep_their_shard_across_reruns_and_edits(
        mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [bare(i) for i in range(60)])
    results = shard_files(job, 2, 3)[0]
    mine = [f"line-{n}" for n in range(1, 61) if shard_of(f"line-{n}", 3) == 2]
    code, err = await run_cli(job, api.base_url, "--shard", "2/3")
    assert code == 0, err
    assert sorted(valid_ids(results)) == sorted(mine) and api.stats.requests == len(mine)
    # Rerun: the same share, all done, nothing sent.
    code, err = await run_cli(job, api.base_url, "--shard", "2/3")
    assert code == 0 and f"{len(mine):,} skipped" in err, err
    assert api.stats.requests == len(mine)
    # Edit a bare line of another shard: not this shard's business. Edit one of its
    # own: it stays in this shard (named by position), which notices the edit, as an
    # unsharded run does, and refuses to resume blindly.
    other = next(n for n in range(1, 61) if f"line-{n}" not in mine)
    own = int(mine[3][5:])
    lines = job.read_bytes().splitlines(keepends=True)
    lines[other - 1] = orjson.dumps(bare(1000)) + b"\n"
    job.write_bytes(b"".join(lines))
    code, err = await run_cli(job, api.base_url, "--shard", "2/3")
    assert code == 0, err
    lines[own - 1] = orjson.dumps(bare(1001)) + b"\n"
    job.write_bytes(b"".join(lines))
    code, err = await run_cli(job, api.base_url, "--shard", "2/3")
    assert code == 2 and f"lines {own})" in err, err
    code, err = await run_cli(job, api.base_url, "--shard", "2/3", "--resend-changed")
    assert code == 0, err
    assert sorted(valid_ids(results)) == sorted(mine)
    assert api.stats.requests == len(mine) + 1


def test_shard_option_is_checked(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    runner = CliRunner()
    for value, words in (("0/4", "K must be from 1 to N"), ("5/4", "K must be from 1 to N"),
                         ("1/0", "at least 1"), ("x", "must be K/N"), ("1/2/3", "must be K/N"),
                         ("-1/4", "must be K/N"), ("", "must be K/N"), ("\u00b2/4", "must be K/N"),
                         ("1/99999999999", "must be K/N")):
        for extra in (["run", "--base-url", "http://127.0.0.1:9/v1"], ["estimate"]):
            command = extra[0]
            result = runner.invoke(app, [*extra, str(job), "--shard", value])
            assert result.exit_code == 2, (command, value, result.output)
            text = " ".join(re.sub("[\u2500-\u257f]", " ", result.output).split())
            assert words in text, (value, result.output)


def test_estimate_counts_the_shards_share(tmp_path: Path) -> None:
    job, ids, bad = mixed_job(tmp_path / "job.jsonl", 80)
    runner = CliRunner()
    for k in range(1, N + 1):
        result = runner.invoke(app, ["estimate", str(job), "--shard", f"{k}/{N}", "--json",
                                     "--offline"])
        assert result.exit_code == 0, result.output
        data = orjson.loads(result.stdout)
        assert data["requests"] == sum(shard_of(cid, N) == k for cid in ids)
        assert data["bad_lines"] == sum(shard_of(cid, N) == k for cid in bad)


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.text(min_size=1, max_size=40), max_size=60, unique=True),
       n=st.integers(min_value=1, max_value=9))
def test_shards_partition_any_set_of_ids(ids: list[str], n: int) -> None:
    owners = {cid: [k for k in range(1, n + 1) if Shard(k, n).owns(cid)] for cid in ids}
    assert all(len(found) == 1 for found in owners.values())
    # As lines: every Batch line and every bare line is kept by exactly one shard, the
    # one of the id its answer carries.
    filters = [Shard(k, n).line_filter() for k in range(1, n + 1)]
    for number, cid in enumerate(ids, 1):
        for raw in (orjson.dumps({"custom_id": cid, "body": {}}),
                    orjson.dumps({"body": {"custom_id": "inner"}, "custom_id": cid}),
                    orjson.dumps({"messages": [], "metadata": {"custom_id": cid}})):
            keepers = [k for k, keep in enumerate(filters, 1) if keep(number, raw)]
            assert keepers == [shard_of(line_id(number, raw), n)]
        assert line_id(number, orjson.dumps({"custom_id": cid})) == cid
        assert line_id(number, orjson.dumps({"messages": [], "metadata": {"custom_id": cid}})
                       ) == f"line-{number}"


def test_shard_hash_is_stable_and_balanced() -> None:
    # Pinned values: a change of the hash would move the lines of every split in progress.
    assert [shard_of(f"req-{i}", 4) for i in range(12)] == [2, 3, 1, 1, 2, 4, 2, 4, 2, 1, 4, 4]
    assert str(parse_shard(" 2/4 ")) == "2/4" and parse_shard("1/1").tag == "shard-1-of-1"
    counts = Counter(shard_of(f"req-{i}", 8) for i in range(80_000))
    assert set(counts) == set(range(1, 9))
    assert max(counts.values()) < 10_000 * 1.05 and min(counts.values()) > 10_000 * 0.95
