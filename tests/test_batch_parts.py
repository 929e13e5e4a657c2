"""The Batch API path's pure parts: splitting a job into parts, the state file, and what
collecting makes of output and error lines (row by row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.batchapi.collect import Collector
from processor.batchapi.plan import Limits, iter_requests, plan_parts, read_meta, resubmit_part
from processor.batchapi.state import BatchState, PartState, work_dir
from processor.client.masking import Masker
from processor.errors import ConfigError
from processor.idset import IdSet
from processor.jobs import Job, iter_jobs
from processor.run.retry import RetryPolicy
from processor.stats import Stats
from tests.batchkit import job_lines


def _prepare(item: Any) -> Job | None:
    if not isinstance(item, Job):
        return None
    item.payload = orjson.dumps(item.body)
    item.prompt_tokens = 10
    return item


def _plan(tmp_path: Path, data: bytes, limits: Limits,
          covered: frozenset[str] = frozenset()) -> tuple[BatchState, list[PartState]]:
    job = tmp_path / "job.jsonl"
    job.write_bytes(data)
    state = BatchState(job="job.jsonl")
    parts = plan_parts(iter_jobs(job), state, tmp_path, _prepare, limits, covered.__contains__)
    return state, parts


def test_parts_hold_one_model_and_endpoint_within_the_limits(tmp_path: Path) -> None:
    data = job_lines(25, models=["a", "b"]) + (
        b'{"custom_id":"e1","url":"/v1/embeddings","body":{"model":"a","input":"x"}}\n')
    _, parts = _plan(tmp_path, data, Limits(requests=5))
    assert [(p.model, p.url, p.requests) for p in parts] == [
        ("a", "/v1/chat/completions", 5), ("b", "/v1/chat/completions", 5),
        ("a", "/v1/chat/completions", 5), ("b", "/v1/chat/completions", 5),
        ("a", "/v1/chat/completions", 3), ("b", "/v1/chat/completions", 2),
        ("a", "/v1/embeddings", 1)]
    assert [p.key for p in parts] == [f"p{i:04d}" for i in range(1, 8)]
    # Each line is a Batch input line; its meta knows its input line.
    first = list(iter_requests(tmp_path, parts[0]))
    assert [cid for cid, _ in first] == ["r0", "r2", "r4", "r6", "r8"]
    line = orjson.loads(first[1][1])
    assert (line["custom_id"], line["method"], line["url"]) == (
        "r2", "POST", "/v1/chat/completions")
    assert line["body"]["model"] == "a" and line["body"]["messages"][0]["content"] == (
        "Question 2?")
    assert read_meta(tmp_path, parts[0])["r2"].line == 3


@pytest.mark.parametrize(("limits", "sizes"), [
    (Limits(bytes=600), [3, 3, 3, 1]),
    (Limits(tokens=25), [2, 2, 2, 2, 2]),
    (Limits(requests=4, tokens=1), [1] * 10),  # a part holds at least one request
], ids=["bytes", "tokens", "one-at-least"])
def test_parts_are_cut_by_bytes_and_tokens(tmp_path: Path, limits: Limits,
                                           sizes: list[int]) -> None:
    _, parts = _plan(tmp_path, job_lines(10), limits)
    assert [p.requests for p in parts] == sizes
    assert all(p.bytes <= limits.bytes or p.requests == 1 for p in parts)
    assert sum(p.tokens for p in parts) == 100


def test_covered_ids_are_not_planned_again(tmp_path: Path) -> None:
    _, parts = _plan(tmp_path, job_lines(6), Limits(), frozenset({"r1", "r4"}))
    assert [cid for cid, _ in iter_requests(tmp_path, parts[0])] == ["r0", "r2", "r3", "r5"]


def test_state_round_trips_and_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    state = BatchState(job="j.jsonl")
    state.parts.append(PartState("p0001", "p0001.jsonl", "/v1/chat/completions", "m", 3, 9, 30,
                                 step="submitted", batch_id="batch_1"))
    path = tmp_path / "state.json"
    state.save(path)
    assert BatchState.load(path) == state
    assert not list(tmp_path.glob(".*tmp"))
    odd = orjson.loads(path.read_bytes())
    odd["parts"][0]["file"] = "../../secret.jsonl"
    path.write_bytes(orjson.dumps(odd))
    with pytest.raises(ConfigError, match="not a batchproc batch state file"):
        BatchState.load(path)
    path.write_bytes(orjson.dumps({"version": 99, "parts": []}))
    with pytest.raises(ConfigError):
        BatchState.load(path)
    assert BatchState.load(tmp_path / "none.json") is None


@pytest.mark.parametrize(("name", "folder"), [
    ("job.results.jsonl", "job.batch"), ("out.jsonl", "out.batch"), ("res", "res.batch"),
    (".jsonl", ".jsonl.batch")])
def test_work_folder_sits_beside_the_results(name: str, folder: str) -> None:
    assert work_dir(Path("/x") / name) == Path("/x") / folder


class _Sink:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None:
        self.results.append(record)

    def write_error(self, record: dict[str, Any]) -> None:
        self.errors.append(record)

    def maybe_sync(self) -> None:
        pass


def _out(cid: str, status: int | None, body: Any = None, code: str | None = None) -> bytes:
    response = None if status is None else {"status_code": status, "request_id": "req_1",
                                            "body": body}
    error = None if code is None else {"code": code, "message": "m"}
    return orjson.dumps({"id": "batch_req_1", "custom_id": cid, "response": response,
                         "error": error}) + b"\n"


def test_collect_row_by_row(tmp_path: Path) -> None:
    state, (part,) = _plan(tmp_path, job_lines(7), Limits())
    server_error = {"error": {"message": "boom", "type": "server_error", "code": None}}
    bad = {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}
    (tmp_path / "out.jsonl").write_bytes(
        _out("r0", 200, {"usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        + _out("r0", 200, {}) + _out("stranger", 200, {}) + b"{cut")
    (tmp_path / "err.jsonl").write_bytes(
        _out("r1", 500, server_error) + _out("r2", 400, bad) + _out("r3", None, None,
                                                                     "batch_expired")
        + _out("r4", 429, server_error))
    sink, stats = _Sink(), Stats()
    done, failed = IdSet(), IdSet(values=True)
    done.add("r6")  # answered by an earlier run
    got = Collector(tmp_path, sink, stats, Masker(), RetryPolicy(2), done, failed).collect(
        part, {"id": "batch_9", "status": "expired"},
        [tmp_path / "out.jsonl", tmp_path / "err.jsonl"])
    assert [r["custom_id"] for r in sink.results] == ["r0"]  # once, and only ours
    assert sink.results[0]["batchproc"] == {"batch": "batch_9"}
    assert [(e["custom_id"], e["error"]["status"]) for e in sink.errors] == [("r2", 400)]
    assert sorted(got.again) == ["r1", "r3", "r4", "r5"]
    # A request the expired batch never ran (r3, r5) spent an attempt too.
    assert got.again["r1"].attempts == 1 and got.again["r3"].attempts == 1
    assert (got.answered, got.failed, got.retried, got.unanswered) == (1, 1, 2, 2)
    assert stats.ok == 1 and stats.prompt_tokens == 3
    # The next part holds exactly those, their attempts carried; r1 fails again at its
    # last attempt: written off, with its history.
    again = resubmit_part(tmp_path, state, part, got.again)
    assert (again.key, again.origin, again.requests) == ("p0002", "p0001", 4)
    (tmp_path / "err2.jsonl").write_bytes(_out("r1", 500, server_error) + _out("r3", 200, {}))
    sink2 = _Sink()
    got2 = Collector(tmp_path, sink2, Stats(), Masker(), RetryPolicy(2), done, failed).collect(
        again, {"id": "batch_10", "status": "completed"}, [tmp_path / "err2.jsonl"])
    record, *unrun = sink2.errors
    assert record["custom_id"] == "r1" and record["error"]["attempts"] == 2
    assert "gave up after 2 attempts" in record["error"]["message"]
    assert [h["batch"] for h in record["error"]["history"]] == ["batch_9", "batch_10"]
    assert [r["custom_id"] for r in sink2.results] == ["r3"]
    # In no file of their second batch: not run twice, so written off (--max-attempts 2).
    assert sorted(e["custom_id"] for e in unrun) == ["r4", "r5"] and not got2.again
    assert {e["error"]["code"] for e in unrun} == {"batch_no_answer"}


def test_collect_masks_what_a_server_echoes_in_codes_and_logs_each_line(
        tmp_path: Path) -> None:
    import time

    from processor.batchapi.runlog import BatchEvents
    from processor.store.runlog import BATCH_KEY, RunLog, read_events

    secret = "sk-echoed-0123456789abcdef"
    _, (part,) = _plan(tmp_path, job_lines(3), Limits())
    part.intent_at = time.time()
    (tmp_path / "err.jsonl").write_bytes(_out("r1", None, None, f"odd_{secret}"))
    log = RunLog(tmp_path / "j.run.jsonl", clock=time.monotonic).open()
    collector = Collector(tmp_path, _Sink(), Stats(), Masker([secret]), RetryPolicy(1),
                          IdSet(), IdSet(values=True))
    collector.events = BatchEvents(log)
    batch = {"id": "batch_1", "status": "failed", "errors": {"data": [
        {"code": f"bad_{secret}", "message": f"no {secret}", "line": 1}]}}
    collector.collect(part, batch, [tmp_path / "err.jsonl"])
    log.close()
    sink = collector.sink
    assert isinstance(sink, _Sink) and len(sink.errors) == 3  # r0 named, r1 and r2 not run
    raw = (tmp_path / "j.run.jsonl").read_bytes() + orjson.dumps(sink.errors)
    assert secret.encode() not in raw
    events = list(read_events(tmp_path / "j.run.jsonl"))
    lines = [e for e in events if e["ev"] == "a"]
    assert sorted(e["id"] for e in lines) == ["r0", "r1", "r2"]
    assert all(e["k"] == BATCH_KEY and e["n"] == 1 and e["td"] >= e["ts"] >= 0 for e in lines)
    assert sorted(e["id"] for e in events if e["ev"] == "fail") == ["r0", "r1", "r2"]
