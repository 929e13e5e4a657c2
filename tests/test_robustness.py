"""Failure modes found in review: each must neither lose a request nor hang nor lie."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor import Engine, JobConfig, Limiter, run_job
from processor.client.http import Response
from processor.errors import RateLimited
from processor.jobs import iter_jobs
from processor.run.runner import default_paths
from tests.conftest import chat_line, read_jsonl, write_jsonl

OK_BODY = {"id": "x", "object": "chat.completion", "choices": [{"message": {"content": "hi"}}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


class ListSink:
    def __init__(self, fail_writes: bool = False) -> None:
        self.results: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.fail_writes = fail_writes

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None:
        if self.fail_writes:
            raise OSError(28, "No space left on device")
        self.results.append(record)

    def write_error(self, record: dict[str, Any]) -> None:
        self.errors.append(record)

    def maybe_sync(self) -> None:
        pass


class ScriptedSender:
    """Answers from a script of outcomes (exceptions to raise, else a 200)."""

    def __init__(self, script: list[BaseException | None]) -> None:
        self.script = script
        self.calls = 0

    async def post(self, endpoint: str, payload: bytes, *,
                   headers: Mapping[str, str] | None = None,
                   model: str | None = None) -> Response:
        self.calls += 1
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return Response(200, OK_BODY, "req_1")


def jobs(tmp_path: Path, n: int) -> list[Any]:
    return list(iter_jobs(write_jsonl(tmp_path / "j.jsonl", [chat_line(i) for i in range(n)])))


def engine(sender: ScriptedSender, sink: ListSink, **kw: Any) -> Engine:
    from processor.run.retry import RetryPolicy

    return Engine(sender, Limiter(), sink, cost=lambda job: 10,
                  policy=RetryPolicy(5, base=0.001, cap=0.01), **kw)


async def test_an_unexpected_exception_is_retried_not_lost(tmp_path: Path) -> None:
    sink = ListSink()
    sender = ScriptedSender([RuntimeError("a bug in a library"), None])
    stats = await engine(sender, sink).run(jobs(tmp_path, 1))
    assert [r["custom_id"] for r in sink.results] == ["req-0"]
    assert stats.ok == 1 and stats.retries == 1 and sender.calls == 2


async def test_a_full_disk_stops_the_run_and_counts_nothing_as_done(tmp_path: Path) -> None:
    sink = ListSink(fail_writes=True)
    stats = await engine(ScriptedSender([]), sink, max_in_flight=1).run(jobs(tmp_path, 20))
    assert stats.ok == 0
    assert stats.stop_reason is not None and "cannot write" in stats.stop_reason
    assert stats.attempts < 20  # it stopped paying for answers it could not keep


async def test_a_very_long_retry_after_stops_instead_of_idling(tmp_path: Path) -> None:
    sink = ListSink()
    limited = RateLimited("HTTP 429: Please retry after 86400 seconds.", status=429,
                          retry_after=86_400.0)
    stats = await engine(ScriptedSender([limited]), sink, max_in_flight=1).run(
        jobs(tmp_path, 3))
    assert stats.rerun_later
    assert stats.stop_reason is not None and "pause" in stats.stop_reason
    assert sink.errors == []  # nothing written off: a rerun sends them


async def test_a_bad_key_among_good_ones_never_stops_the_run(
    mock_api: Any, tmp_path: Path
) -> None:
    api = await mock_api(api_key="sk-good-key-123456")
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(60)])
    stats = await run_job(job, JobConfig(
        base_url=api.base_url, allow_download=False, max_in_flight=20,
        api_keys=[("BAD", "sk-bad-key-0000000"), ("GOOD", "sk-good-key-123456")]))
    assert stats.ok == 60 and stats.failed == 0 and stats.stop_reason is None
    assert stats.retired_keys == ["BAD"]
    assert len(read_jsonl(default_paths(job)[0])) == 60


async def test_an_uncostable_line_is_reported_once_across_reruns(
    mock_api: Any, tmp_path: Path
) -> None:
    api = await mock_api()
    broken = {"custom_id": "img", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}}
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0), broken])
    for _ in range(3):
        await run_job(job, JobConfig(base_url=api.base_url, allow_download=False))
    errors = read_jsonl(default_paths(job)[1])
    assert [e["custom_id"] for e in errors] == ["img"]
    assert errors[0]["error"]["code"] == "invalid_line" and errors[0]["error"]["line"] == 2


async def test_failed_before_is_counted_and_retried_once_each(
    mock_api: Any, tmp_path: Path
) -> None:
    api = await mock_api(models=frozenset({"gpt-4o-mini"}))
    bare = b'{"model":"nope","messages":[{"role":"user","content":"x"}]}\n'
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0), bare])
    first = await run_job(job, JobConfig(base_url=api.base_url, allow_download=False))
    assert first.failed == 1
    again = await run_job(job, JobConfig(base_url=api.base_url, allow_download=False))
    assert again.skipped == 1 and again.skipped_failed == 1  # said, and exit code 1
    retried = await run_job(job, JobConfig(base_url=api.base_url, allow_download=False,
                                           retry_failed=True))
    assert retried.retried_failed == 1  # line-2 counted once, not twice


@pytest.mark.parametrize(
    ("header", "value"),
    [("x-ratelimit-limit-requests", "-1"), ("x-ratelimit-limit-tokens", "nan"),
     ("x-ratelimit-remaining-requests", "inf")],
    ids=["negative", "nan", "inf"],
)
def test_nonsense_rate_limit_headers_are_ignored(header: str, value: str) -> None:
    from processor.client.http import RateLimitInfo

    info = RateLimitInfo.from_headers({"x-ratelimit-limit-requests": "100", header: value})
    assert info is not None
    key = header.removeprefix("x-ratelimit-").replace("-", "_")
    assert getattr(info, key) is None


def test_result_records_are_valid_json_lines(tmp_path: Path) -> None:
    from processor.store.writer import ResultWriter

    w = ResultWriter(tmp_path / "r.jsonl", tmp_path / "e.jsonl")
    for i in range(100):
        w.write_result({"custom_id": f"c{i}", "body": "x" * (i * 1000)})
    w.close()
    lines = (tmp_path / "r.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["custom_id"] for x in lines] == [f"c{i}" for i in range(100)]
