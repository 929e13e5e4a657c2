"""The run log of ``run --via batch`` (issue 14 for the Batch API), and what happens when
batches keep ending without running their requests: the real CLI in subprocesses
against the mock server's Batch API."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.store.runlog import BATCH_KEY, read_events
from processor.tools.report.aggregate import aggregate
from tests.batchkit import (
    batch_api,  # noqa: F401 - fixture
    cli,
    ids_of,
    records,
    run_batch,
    state_of,
    write_job,
)

pytestmark = pytest.mark.slow  # the CLI in subprocesses

KEY = "sk-batchlog-0123456789abcdefSECRET"


def runs_of(log: Path) -> list[list[dict[str, Any]]]:
    """The log's events, run by run."""
    runs: list[list[dict[str, Any]]] = []
    for event in read_events(log):
        if event["ev"] == "start":
            runs.append([])
        runs[-1].append(event)
    return runs


async def test_detach_then_collect_tells_the_whole_story_in_one_log(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 0.5, "error_every": 7,
                                 "reject_ids": frozenset({"r3"})}, api_key=KEY)
    job = write_job(tmp_path / "j.jsonl", 30)
    env = {"OPENAI_API_KEY": KEY}
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10", "--detach", env=env)
    assert code == 0, err
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10", env=env)
    assert code == 1, err  # r3 failed for good (a 400)
    log = tmp_path / "j.run.jsonl"
    raw = log.read_bytes()
    assert KEY.encode() not in raw
    runs = runs_of(log)
    assert [r[0]["run"] for r in runs] == [1, 2]
    parts = state_of(job)["parts"]
    batches = {p["key"]: p["batch_id"] for p in parts}  # the resubmitted 500s' parts too
    firsts = {p["key"]: p["batch_id"] for p in parts if p["origin"] is None}
    first, second = runs
    # Run 1: the start (a batch run's settings, no secret), each part's batch waited for
    # from its creation, nothing collected; it ends completed (detached).
    start = first[0]
    assert start["via"] == "batch" and start["batch"]["detach"] is True
    assert start["batch"]["part_requests"] == 10 and start["total"] == 30
    assert start["cfg"]["keys"] == ["(one key)"]
    paused = {(e["part"], e["batch"]) for e in first if e["ev"] == "pause"}
    assert paused == set(firsts.items()) and len(firsts) == 3 and len(batches) > 3
    assert all(e["r"] == "batch" and e["until"] is None for e in first if e["ev"] == "pause")
    assert not [e for e in first if e["ev"] == "a"]
    assert first[-1]["ev"] == "end" and first[-1]["reason"] == "completed"
    # Run 2: the resume counts, the same batches waited for again until they end.
    assert second[0]["resume"] == {"done": 0, "failed": 0}
    waits = [(e["part"], e["batch"]) for e in second if e["ev"] == "pause"]
    ends = {(e["part"], e["batch"]): e["status"] for e in second if e["ev"] == "resume"}
    assert set(waits) == set(batches.items()) and len(waits) == len(batches)
    assert ends == dict.fromkeys(batches.items(), "completed")
    # One attempt event per line collected, answered or not; r3's 400 and the 500s too.
    attempts = [e for e in second if e["ev"] == "a"]
    results = records(tmp_path / "j.results.jsonl")
    answered = [e for e in attempts if "er" not in e]
    assert sorted(e["id"] for e in answered) == sorted(r["custom_id"] for r in results)
    assert len(answered) == 29 and all(e["st"] == 200 and e["k"] == BATCH_KEY
                                       and e["m"] == "gpt-4o-mini" for e in answered)
    usage = {r["custom_id"]: r["response"]["body"]["usage"] for r in results}
    assert all((e["tp"], e["tc"]) == (usage[e["id"]]["prompt_tokens"],
                                      usage[e["id"]]["completion_tokens"]) for e in answered)
    errors = Counter((e["id"], e["st"]) for e in attempts if "er" in e)
    assert errors[("r3", 400)] == 1 and {s for _, s in errors} == {400, 500}
    assert all(0 <= e["ts"] <= e["td"] for e in attempts)
    fails = [e for e in second if e["ev"] == "fail"]
    assert [(e["id"], e["line"]) for e in fails] == [("r3", 4)]
    assert [e for e in second if e["ev"] == "p"][-1]["done"] == 30
    end = second[-1]
    assert end["ev"] == "end" and end["reason"] == "completed" and end["ok"] == 29
    # The report: the runs, every answer by model at half price, each batch a span.
    agg = aggregate(log)
    assert len(agg.runs) == 2 and agg.answers == 29 and agg.failed == 1
    row = agg.by_key_model[(BATCH_KEY, "gpt-4o-mini")]
    assert row.answers == 29 and row.prompt == sum(u["prompt_tokens"] for u in usage.values())
    assert agg.pauses["batch"] == 3 + len(batches)
    spans = [(a, b) for a, b, r in agg.spans if r == "batch"]
    assert len(spans) == 3 + len(batches) and all(b >= a >= 0 for a, b in spans)
    assert max(b - a for a, b in spans) > 0.05
    html = tmp_path / "r.html"
    code, out, err = await cli("report", str(job), "-o", str(html))
    assert code == 0, err
    page = html.read_text()
    assert "a batch ran" in page and "(batch)" in page and KEY not in page
    code, out, err = await cli("report", str(log), "--json")
    assert code == 0, err
    figures = orjson.loads(out)
    assert figures["answered"] == 29 and figures["cost_usd"] is not None
    assert figures["failures"] == {"invalid_request_error": 1} or len(figures["failures"]) == 1


async def test_run_log_flags_and_queue_waits(tmp_path: Path,
                                             batch_api: Any) -> None:  # noqa: F811
    # Room for one 10-request part at a time: the others wait, and the log says so.
    api = await batch_api(batch={"seconds": 0.3, "queue_tokens": 45})
    job = write_job(tmp_path / "q.jsonl", 30)
    elsewhere = tmp_path / "logs" / "q.log.jsonl"
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10", "--run-log",
                                   str(elsewhere))
    assert code == 0, err
    assert not (tmp_path / "q.run.jsonl").exists()
    events = list(read_events(elsewhere))
    queued = [e for e in events if e["ev"] == "pause" and e["r"] == "batch_queue"]
    assert queued and all(e["model"] == "gpt-4o-mini" for e in queued)
    resumed = {e["part"] for e in events if e["ev"] == "resume" and e["r"] == "batch_queue"}
    assert resumed == {e["part"] for e in queued}  # each wait ended with its batch created
    assert sum(e["ev"] == "a" for e in events) == 30
    agg = aggregate(elsewhere)
    assert {r for _, _, r in agg.spans} == {"batch", "batch_queue"}
    # --no-run-log: none written.
    job2 = write_job(tmp_path / "n.jsonl", 5)
    code, _, err = await run_batch(job2, api, "--no-run-log")
    assert code == 0, err
    assert not list(tmp_path.glob("n.run*"))
    # A --run-log that is one of the job's files is refused before anything is sent.
    creates = api.store.stats.creates
    code, _, err = await run_batch(write_job(tmp_path / "m.jsonl", 3), api, "--run-log",
                                   str(tmp_path / "m.results.jsonl"))
    assert code == 2 and api.store.stats.creates == creates, err


async def test_batches_that_keep_expiring_are_bounded_by_max_attempts(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    # Every batch expires with half its requests run.
    api = await batch_api(batch={"seconds": 0.3, "expire": 100, "expire_done": 0.5})
    job = write_job(tmp_path / "x.jsonl", 20)
    code, _, err = await run_batch(job, api, "--max-attempts", "3")
    assert code == 1, err
    stats = api.store.stats
    # 20 -> 10 answered, 10 again -> 5, 5 again -> 2: three batches, then written off.
    assert stats.creates == 3 and max(stats.submitted.values()) == 3
    assert len(ids_of(tmp_path / "x.results.jsonl")) == 17
    failed = records(tmp_path / "x.errors.jsonl")
    assert len(failed) == 3 and {e["error"]["code"] for e in failed} == {"batch_expired"}
    assert all(e["error"]["attempts"] == 3 for e in failed)
    assert all(len(e["error"]["history"]) == 3 for e in failed)
    assert "--retry-failed" in failed[0]["error"]["message"]
    # The log shows the expiries as attempts and the write-offs as failures.
    events = list(read_events(tmp_path / "x.run.jsonl"))
    expired = [e for e in events if e["ev"] == "a" and e.get("er") == "batch_expired"]
    assert len(expired) == 10 + 5 + 3
    assert sorted(e["id"] for e in events if e["ev"] == "fail") == sorted(
        e["custom_id"] for e in failed)
    assert [e["status"] for e in events if e["ev"] == "resume"] == ["expired"] * 3
    # A rerun sends nothing (final, as online); --retry-failed sends those three again.
    code, _, err = await run_batch(job, api, "--max-attempts", "3")
    assert code == 1 and stats.creates == 3
    api.store.config.expire = 0
    code, _, err = await run_batch(job, api, "--max-attempts", "3", "--retry-failed")
    assert code == 0, err
    assert stats.creates == 4
    assert sorted(ids_of(tmp_path / "x.results.jsonl")) == sorted(f"r{i}" for i in range(20))


async def test_batches_that_keep_failing_are_not_resubmitted_forever(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    # Every batch fails at validation without saying why (errors: null).
    api = await batch_api(batch={"seconds": 0.3, "fail": 100})
    job = write_job(tmp_path / "f.jsonl", 8)
    code, _, err = await run_batch(job, api, "--max-attempts", "2")
    assert code == 1, err
    assert api.store.stats.creates == 2
    failed = records(tmp_path / "f.errors.jsonl")
    assert sorted(e["custom_id"] for e in failed) == sorted(f"r{i}" for i in range(8))
    assert {e["error"]["code"] for e in failed} == {"batch_failed"}
    assert not ids_of(tmp_path / "f.results.jsonl")
    assert [p["status"] for p in state_of(job)["parts"]] == ["failed", "failed"]


async def test_a_batch_lost_again_and_again_stops_the_run(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 5.0})
    job = write_job(tmp_path / "l.jsonl", 4)
    for _ in range(2):  # submitted, then lost (404 when polled)
        code, _, err = await run_batch(job, api, "--detach", "--max-attempts", "2")
        assert code == 0, err
        api.store.batches.clear()
    code, _, err = await run_batch(job, api, "--detach", "--max-attempts", "2")
    assert code == 75 and "were not found when polled" in err
    assert api.store.stats.creates == 2  # not a third time
    events = list(read_events(tmp_path / "l.run.jsonl"))
    assert [e["status"] for e in events if e["ev"] == "resume"] == ["not found"] * 2
    assert events[-1]["ev"] == "end" and events[-1]["reason"] == "rerun_later"


def test_mock_server_batch_fail_flag(monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from processor.cli.app import app
    from processor.testing import BatchMockConfig

    seen: list[BatchMockConfig] = []
    monkeypatch.setattr("processor.testing.run",
                        lambda config, host, port, batch: seen.append(batch))
    result = CliRunner().invoke(app, ["mock-server", "--batch-fail", "2"])
    assert result.exit_code == 0, result.output
    assert seen[0].fail == 2


async def test_fallback_online_attempts_share_the_log(tmp_path: Path,
                                                      batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 0.4, "expire": 1, "expire_done": 0.5})
    job = write_job(tmp_path / "f.jsonl", 20)
    code, _, err = await run_batch(job, api, "--fallback-online")
    assert code == 0, err
    events = list(read_events(tmp_path / "f.run.jsonl"))
    answered = [e for e in events if e["ev"] == "a" and "er" not in e]
    by_batch = sorted(e["id"] for e in answered if e.get("k") == BATCH_KEY)
    online = sorted(e["id"] for e in answered if e.get("k") != BATCH_KEY)
    assert len(by_batch) == len(online) == 10 and api.stats.ok == 10
    assert sorted(by_batch + online) == sorted(ids_of(tmp_path / "f.results.jsonl"))
    assert events[-1]["ev"] == "end" and events[-1]["ok"] == 20


@pytest.mark.parametrize("refused", ["create", "batch"])
async def test_a_part_bigger_than_the_queue_quota_is_split_not_retried_forever(
        tmp_path: Path, batch_api: Any, refused: str) -> None:  # noqa: F811
    # 12 requests of some 3 tokens each (the mock's count) against a quota of 20: the one
    # part can never fit, refused at create or (OpenAI's way) failed at validation.
    api = await batch_api(batch={"seconds": 0.3, "queue_tokens": 20,
                                 "queue_fail": refused == "batch"})
    job = write_job(tmp_path / "s.jsonl", 12)
    code, _, err = await run_batch(job, api)
    assert code == 0, err
    parts = state_of(job)["parts"]
    first, pieces = parts[0], parts[1:]
    assert first["step"] == "done" and "split into" in first["note"]
    assert len(pieces) > 1 and all(p["origin"] == first["key"] for p in pieces)
    assert sum(p["requests"] for p in pieces) == 12
    assert sorted(ids_of(tmp_path / "s.results.jsonl")) == sorted(f"r{i}" for i in range(12))
    answered = [k for k, n in api.store.stats.submitted.items() if n]
    assert len(answered) == 12
    if refused == "create":  # refused creates never held a line
        assert set(api.store.stats.submitted.values()) == {1}
    events = list(read_events(tmp_path / "s.run.jsonl"))
    waits = [e["part"] for e in events if e["ev"] == "pause" and e["r"] == "batch_queue"]
    ends = [e["part"] for e in events if e["ev"] == "resume" and e["r"] == "batch_queue"]
    assert waits and sorted(waits) == sorted(ends)  # the pieces waited for room in turn
    (split,) = [e for e in events if e["ev"] == "batch_split"]
    assert split["part"] == first["key"] and split["into"] == [p["key"] for p in pieces]
    assert split["limit"] == 20


async def test_a_log_another_run_writes_is_locked(tmp_path: Path,
                                                  batch_api: Any) -> None:  # noqa: F811
    import asyncio

    from tests.batchkit import FAST, start
    from tests.conftest import until

    # The batch runs until the checks below are done (however slow the machine: each
    # is a CLI start), then ends at the next poll.
    api = await batch_api(batch={"seconds": 3600.0})
    log = tmp_path / "shared.run.jsonl"
    proc = await start("run", str(write_job(tmp_path / "a.jsonl", 5)), "--base-url",
                       api.base_url, "--via", "batch", "--plain", *FAST, "--run-log", str(log))
    await until(lambda: api.store.stats.creates == 1, "the batch created")
    # Another job (online, or through the Batch API) cannot write the same log meanwhile.
    for via in ("online", "batch"):
        code, _, err = await cli("run", str(write_job(tmp_path / f"{via}.jsonl", 3)),
                                 "--base-url", api.base_url, "--via", via, "--plain",
                                 "--run-log", str(log))
        assert code == 75 and "lock" in err.lower(), err
    api.store.config.seconds = 0.01
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert api.stats.requests == 0 and api.store.stats.creates == 1
    assert [e["run"] for e in read_events(log) if e["ev"] == "start"] == [1]
