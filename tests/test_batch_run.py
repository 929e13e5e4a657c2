"""``run --via batch`` end to end: the real CLI in subprocesses against the mock server's
Batch API. Exactly once, kills and reruns, expiry, validation, per-request errors, the
queue quota, polling under --rpm, and the key kept out of every file."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.batchkit import (
    FAST,
    batch_api,  # noqa: F401 - fixture
    ids_of,
    records,
    run_batch,
    start,
    state_of,
    write_job,
)
from tests.conftest import until

pytestmark = pytest.mark.slow  # the CLI in subprocesses

KEY = "sk-batchtest-0123456789abcdefSECRET"


async def test_120k_lines_three_parts_exactly_once_through_kills(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 3600.0})  # the batches run until run 1 is killed
    job = write_job(tmp_path / "big.jsonl", 120_000)
    args = ("run", str(job), "--base-url", api.base_url, "--via", "batch", "--plain", *FAST)
    # First run: killed (SIGKILL) while it polls its three batches.
    proc = await start(*args)
    await until(lambda: api.store.stats.creates == 3 and api.store.stats.polls >= 1,
                "three batches created and polled")
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert not (tmp_path / "big.results.jsonl").exists() or not ids_of(
        tmp_path / "big.results.jsonl")
    assert not api.store.stats.downloads
    api.store.config.seconds = 2.0  # the batches end: the next poll finds them completed
    # Second run: killed once it collects an output file.
    proc = await start(*args)
    await until(lambda: sum(api.store.stats.downloads.values()) >= 1, "a download")
    await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    # Third run: goes to the end.
    proc = await start(*args)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    counts = api.store.stats
    assert (counts.uploads, counts.creates) == (3, 3)  # no part uploaded or created twice
    assert sorted(p["requests"] for p in state_of(job)["parts"]) == [20_000, 50_000, 50_000]
    assert len(counts.submitted) == 120_000 and set(counts.submitted.values()) == {1}
    got = ids_of(tmp_path / "big.results.jsonl")
    assert len(got) == 120_000 and set(got) == {f"r{i}" for i in range(120_000)}
    assert not ids_of(tmp_path / "big.errors.jsonl")
    # The results are the online path's records: the resume scan reads them as done.
    first = records(tmp_path / "big.results.jsonl")[0]
    assert list(first)[:3] == ["id", "custom_id", "response"] and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["batchproc"]["batch"]
    assert (tmp_path / "big.results.jsonl.ledger").exists() or list(tmp_path.glob("*ledger*"))
    assert "polls" in err.decode()
    # One run log tells the three runs: two killed (no end), the last completed.
    from processor.store.runlog import read_events

    bad: list[int] = []
    starts, ends, collected = [], [], 0
    for event in read_events(tmp_path / "big.run.jsonl", bad):
        if event["ev"] == "start":
            starts.append(event["run"])
        elif event["ev"] == "end":
            ends.append((starts[-1], event["reason"], event["ok"]))
        elif event["ev"] == "a" and starts[-1] == 3:
            collected += 1
    assert starts == [1, 2, 3] and len(bad) <= 2  # a torn last line per killed run, at most
    assert ends == [(3, "completed", collected)] and 0 < collected <= 120_000


async def test_intents_recorded_before_steps_find_the_upload_and_the_batch(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    """A crash after an upload or create but before its id was recorded: the rerun finds
    the file by its name and the batch by its metadata instead of doing it again."""
    api = await batch_api(batch={"seconds": 1.0})
    job = write_job(tmp_path / "j.jsonl", 30)
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10", "--detach")
    assert code == 0, err
    assert (api.store.stats.uploads, api.store.stats.creates) == (3, 3)
    path = tmp_path / "j.batch" / "state.json"
    state = orjson.loads(path.read_bytes())
    state["parts"][0] |= {"step": "uploading", "file_id": None, "batch_id": None}
    state["parts"][1] |= {"step": "creating", "batch_id": None}
    path.write_bytes(orjson.dumps(state))
    code, _, err = await run_batch(job, api)
    assert code == 0, err
    # Part 1: its file found; its batch created (it had none). Part 2: its batch found.
    assert api.store.stats.uploads == 3 and api.store.stats.creates == 4
    assert sorted(ids_of(tmp_path / "j.results.jsonl")) == sorted(f"r{i}" for i in range(30))
    assert api.store.stats.lists >= 2


async def test_expired_batch_resubmits_only_the_unanswered_half(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 1.0, "expire": 1, "expire_done": 0.5})
    job = write_job(tmp_path / "e.jsonl", 40)
    code, _, err = await run_batch(job, api)
    assert code == 0, err
    submitted = api.store.stats.submitted
    assert [submitted[f"r{i}"] for i in range(40)] == [1] * 20 + [2] * 20
    assert api.store.stats.creates == 2
    parts = state_of(job)["parts"]
    assert [p["status"] for p in parts] == ["expired", "completed"]
    assert parts[1]["origin"] == parts[0]["key"] and parts[1]["requests"] == 20
    assert sorted(ids_of(tmp_path / "e.results.jsonl")) == sorted(f"r{i}" for i in range(40))


async def test_fallback_online_sends_the_unanswered_online(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 1.0, "expire": 1, "expire_done": 0.5})
    job = write_job(tmp_path / "f.jsonl", 40)
    code, _, err = await run_batch(job, api, "--fallback-online")
    assert code == 0, err
    assert api.store.stats.creates == 1 and api.stats.ok == 20
    assert sorted(ids_of(tmp_path / "f.results.jsonl")) == sorted(f"r{i}" for i in range(40))


async def test_failed_validation_fails_the_lines_it_names(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 1.0, "models": frozenset({"gpt-4o-mini"})})
    job = write_job(tmp_path / "v.jsonl", 15, models=["gpt-4o-mini", "gpt-4o-mini", "gpt-nope"])
    code, _, err = await run_batch(job, api)
    assert code == 1, err
    errors = records(tmp_path / "v.errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == sorted(f"r{i}" for i in range(2, 15, 3))
    assert {e["error"]["code"] for e in errors} == {"model_not_found"}
    assert all(e["error"]["line"] == int(e["custom_id"][1:]) + 1 for e in errors)
    assert len(ids_of(tmp_path / "v.results.jsonl")) == 10
    assert api.store.stats.creates == 2  # the failed batch's requests are not resubmitted
    # A rerun sends nothing again: the failures are final, as online.
    code, _, err = await run_batch(job, api)
    assert code == 1 and api.store.stats.creates == 2 and api.store.stats.uploads == 2


async def test_error_file_lines_follow_the_retry_policy(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 0.5, "error_every": 5,
                                 "reject_ids": frozenset({"r3"})})
    job = write_job(tmp_path / "p.jsonl", 20)
    code, _, err = await run_batch(job, api, "--max-attempts", "3")
    assert code == 1, err
    errors = records(tmp_path / "p.errors.jsonl")
    assert [e["custom_id"] for e in errors] == ["r3"]
    assert errors[0]["error"]["status"] == 400 and errors[0]["error"]["attempts"] == 1
    assert errors[0]["response"]["status_code"] == 400
    # The 500s (the 5th, 10th, ... line of the first batch) were sent once more.
    again = sorted(k for k, v in api.store.stats.submitted.items() if v == 2)
    assert again == ["r14", "r19", "r4", "r9"]
    assert len(ids_of(tmp_path / "p.results.jsonl")) == 19
    # With one attempt, the 500s are final: "gave up after 1 attempts".
    api2 = await batch_api(batch={"seconds": 0.5, "error_every": 5})
    job2 = write_job(tmp_path / "q.jsonl", 10)
    code, _, err = await run_batch(job2, api2, "--max-attempts", "1")
    assert code == 1
    failed = records(tmp_path / "q.errors.jsonl")
    assert sorted(e["custom_id"] for e in failed) == ["r4", "r9"]
    assert all(e["error"]["status"] == 500 for e in failed)
    assert api2.store.stats.creates == 1


async def test_queue_quota_refusals_make_parts_wait(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    # Each 10-request part enqueues 30 tokens (the mock's count): room for one at a time.
    api = await batch_api(batch={"seconds": 0.6, "queue_tokens": 45})
    job = write_job(tmp_path / "q.jsonl", 30)
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10")
    assert code == 0, err
    stats = api.store.stats
    assert stats.creates == 3 and stats.creates_refused >= 1
    assert sorted(ids_of(tmp_path / "q.results.jsonl")) == sorted(f"r{i}" for i in range(30))
    assert state_of(job)["queue_tokens"] == {"gpt-4o-mini": 45}  # learned from the message
    # Told the quota (in its own, larger, count), it never asks past it: parts are cut to
    # fit and wait for room.
    api2 = await batch_api(batch={"seconds": 0.6, "queue_tokens": 45})
    job2 = write_job(tmp_path / "r.jsonl", 30)
    code, _, err = await run_batch(job2, api2, "--batch-part-requests", "10",
                                   "--batch-queue-tokens", "80")
    assert code == 0, err
    parts = state_of(job2)["parts"]
    assert all(p["tokens"] <= 80 for p in parts)
    assert api2.store.stats.creates == len(parts) and api2.store.stats.creates_refused == 0
    assert len(ids_of(tmp_path / "r.results.jsonl")) == 30


async def test_queue_quota_failed_batches_are_made_again_later(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    # OpenAI's own way: the create succeeds, the batch fails validation for the quota.
    api = await batch_api(batch={"seconds": 0.6, "queue_tokens": 45, "queue_fail": True})
    job = write_job(tmp_path / "q.jsonl", 30)
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10")
    assert code == 0, err
    parts = state_of(job)["parts"]
    assert len(parts) == 3 and max(p["gen"] for p in parts) >= 2
    assert api.store.stats.creates == sum(p["gen"] for p in parts)
    assert sorted(ids_of(tmp_path / "q.results.jsonl")) == sorted(f"r{i}" for i in range(30))
    assert state_of(job)["queue_tokens"] == {"gpt-4o-mini": 45}


async def test_polling_calls_are_counted_and_stay_within_rpm(
        tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 2.0})
    job = write_job(tmp_path / "rpm.jsonl", 20)
    rpm = 120.0
    code, _, err = await run_batch(job, api, "--batch-part-requests", "10", "--rpm", "120")
    assert code == 0, err
    state = state_of(job)
    assert state["calls"]["polls"] == api.store.stats.polls > 0
    times = api.store.stats.call_times
    assert len(times) == sum(state["calls"].values())
    # Any run of calls fits the limiter's allowance: its burst (a second of the rate, at
    # least one call) plus the rate over the time between them, and one burst more for
    # what it had let go when a loaded machine held them back (they arrive together with
    # the next burst, however long the stall: not a guess of its length).
    rate = rpm / 60
    burst = max(rate, 1.0)
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            assert j - i + 1 <= 2 * burst + rate * (times[j] - times[i]), (i, j)


async def test_the_key_is_never_written(tmp_path: Path, batch_api: Any) -> None:  # noqa: F811
    api = await batch_api(batch={"seconds": 0.5, "error_every": 3}, api_key=KEY)
    job = write_job(tmp_path / "k.jsonl", 12)
    code, out, err = await run_batch(job, api, "-v", env={"OPENAI_API_KEY": KEY})
    assert code == 0, err
    assert KEY not in out and KEY not in err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    # Without the key: refused, and said so without echoing anything secret.
    code, out, err = await run_batch(write_job(tmp_path / "n.jsonl", 3), api,
                                     env={"OPENAI_API_KEY": "sk-wrong-key-123456789"})
    assert code == 1 and "sk-wrong-key-123456789" not in err + out
    assert "invalid_api_key" in err or "refused" in err
