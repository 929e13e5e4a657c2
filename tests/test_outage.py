"""The engine under a hostile server, through the real CLI and run_job: long and absurd
pauses, limits that cannot be real, outages, a fast-failing server (issue 9)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from processor import Engine, JobConfig, Limiter, run_job
from processor.client.http import RateLimitInfo, Response
from processor.errors import RateLimited, ServerError
from processor.jobs import iter_jobs
from processor.run.retry import RetryPolicy
from processor.run.runner import default_paths
from tests.conftest import chat_line, read_jsonl, start_cli, write_jsonl
from tests.hostile import Behaviour, Hostile, outage, pause, server_error, when

EXIT_LATER = 75
#: the errors of an outage, in turn: Cloudflare's 502 page, OpenAI's JSON 503 and 500.
DOWN = (502, 503, 500)


@pytest.fixture
async def hostile(hostile_api: Any) -> Hostile:
    """The hostile API, each answer 5 ms late so that requests overlap."""
    api: Hostile = await hostile_api(latency=0.005)
    return api


def asking(text: str) -> Callable[[bytes], bool]:
    """The requests whose body holds ``text`` (``"number 2?"``: line 2's question)."""
    return lambda body: text.encode() in body


def down(seconds: float = math.inf, failing: int = 0) -> Behaviour:
    """An outage of ``seconds`` from the first request (default: until changed), and of
    at least ``failing`` requests."""
    return outage(seconds, DOWN, proxy="cloudflare", failing=failing)


def job_file(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])


def answered(job: Path) -> Counter[str]:
    return Counter(r["custom_id"] for r in read_jsonl(default_paths(job)[0]))


def written_off(job: Path) -> list[dict[str, Any]]:
    return read_jsonl(default_paths(job)[1])


async def cli(job: Path, base_url: str, *extra: str, bound: float = 60.0) -> tuple[int, str]:
    proc = await start_cli(job, base_url, *extra)
    _, err = await asyncio.wait_for(proc.communicate(), bound)  # a hang fails, not blocks
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def config(base_url: str, **kw: Any) -> JobConfig:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_cap", 0.05)
    kw.setdefault("allow_download", False)
    kw.setdefault("max_in_flight", 4)
    return JobConfig(base_url=base_url, **kw)


# --------------------------------------------------------------------------- A: long pauses


async def test_cli_long_retry_after_with_only_retries_left_exits_75(
    hostile: Hostile, tmp_path: Path
) -> None:
    # Every line is read at once; the one request left is a retry the server wants in
    # 5,000 s. Before: the run idled for 83 minutes. Now: exit 75 with the time to rerun.
    api = hostile
    api.use(when(asking("number 2?"), pause(retry_after="5000", times=1)))
    job = job_file(tmp_path, 3)
    code, err = await cli(job, hostile.base_url)
    assert code == EXIT_LATER, err
    assert "pause for 1h23m" in err and "rerun the same command" in err
    assert "Traceback" not in err
    assert answered(job) == Counter({"req-0": 1, "req-1": 1})
    assert written_off(job) == []
    # Rerun once the server is willing: only the one left is sent.
    api.use(None)
    code, err = await cli(job, hostile.base_url)
    assert code == 0, err
    assert answered(job) == Counter({"req-0": 1, "req-1": 1, "req-2": 1})


async def test_cli_absurd_retry_after_exits_75_without_a_traceback(
    hostile: Hostile, tmp_path: Path
) -> None:
    api = hostile
    api.use(when(asking("number 0?"), pause(retry_after="1e17", times=1)))
    job = job_file(tmp_path, 2)
    code, err = await cli(job, hostile.base_url)
    assert code == EXIT_LATER, err
    for crash in ("Traceback", "OverflowError", "OSError", "Value too large"):
        assert crash not in err
    # The client reads any wait over a week as a week (headers.py); the rule stops on it.
    assert "the server asked to pause for 7d00h" in err
    assert written_off(job) == []


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, {"retry-after": "1e17"}),
        (429, {"retry-after-ms": "1e20"}),
        (429, {"retry-after": "1e308"}),
        (429, {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}),
        (429, {"retry-after": "5000"}),
        (503, {"retry-after": "5000"}),
        (503, {"retry-after": "1e17"}),
    ],
    ids=["429-1e17", "429-ms-1e20", "429-1e308", "429-year-9999", "429-5000", "503-5000",
         "503-1e17"],
)
async def test_any_long_server_pause_stops_for_a_rerun(
    hostile: Hostile, tmp_path: Path, status: int, headers: dict[str, str]
) -> None:
    api = hostile
    api.use(when(asking("number 4?"), pause(status=status, headers=headers, times=1)))
    job = job_file(tmp_path, 5)
    stats = await asyncio.wait_for(run_job(job, config(hostile.base_url)), 30)
    assert stats.rerun_later and stats.failed == 0
    assert stats.stop_reason is not None and "pause for" in stats.stop_reason
    assert written_off(job) == []
    assert "req-4" not in answered(job)


@pytest.mark.parametrize("hint", [float("nan"), float("inf"), -5.0, 1e17, 1e300],
                         ids=["nan", "inf", "negative", "1e17", "1e300"])
async def test_a_custom_sender_with_any_retry_after_never_crashes(
    tmp_path: Path, hint: float
) -> None:
    # A Sender other than ours may put anything in retry_after.
    class Sender:
        calls = 0

        async def post(self, endpoint: str, payload: bytes, *,
                       headers: Mapping[str, str] | None = None,
                       model: str | None = None) -> Response:
            Sender.calls += 1
            if Sender.calls == 1:
                raise RateLimited("HTTP 429", status=429, retry_after=hint)
            return Response(200, {"choices": [{"message": {"content": "hi"}}]}, "r")

    sink = ListSink()
    engine = Engine(Sender(), Limiter(), sink, cost=lambda job: 10, max_in_flight=1,
                    policy=RetryPolicy(5, base=0.001, cap=0.01))
    stats = await asyncio.wait_for(engine.run(list(iter_jobs(job_file(tmp_path, 2)))), 10)
    assert sink.errors == []
    if hint >= 3600:
        assert stats.rerun_later and stats.stop_reason is not None
    else:  # NaN and negatives are no hint (a second's pause); inf is a century: stop
        assert stats.ok == 2 or (hint == float("inf") and stats.rerun_later)


# --------------------------------------------------------------------------- B: absurd limits


async def test_cli_limit_header_of_a_thousandth_is_ignored_with_one_warning(
    hostile: Hostile, tmp_path: Path
) -> None:
    hostile.headers = {
        "x-ratelimit-limit-requests": "0.001", "x-ratelimit-limit-tokens": "0.001",
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"}
    job = job_file(tmp_path, 12)
    code, err = await cli(job, hostile.base_url)
    assert code == 0, err
    assert answered(job) == Counter({f"req-{i}": 1 for i in range(12)})
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert len([w for w in warnings if "requests/min 0.001 (below one request)" in w]) == 1
    assert len([w for w in warnings if "tokens/min 0.001" in w]) == 1
    assert "ignored the server's stated limit" in err.split("Finished")[1]  # and in the summary


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"x-ratelimit-limit-tokens": "0.001"}, "tokens/min 0.001"),
        ({"x-ratelimit-limit-tokens": "1e-300"}, "tokens/min 1e-300"),
        ({"x-ratelimit-limit-tokens": "1"}, "tokens/min 1 (below the smallest request"),
        ({"x-ratelimit-limit-tokens": " 5"}, "tokens/min 5 (below the smallest request"),
        ({"x-ratelimit-limit-requests": "0.5"}, "requests/min 0.5 (below one request)"),
        ({"x-ratelimit-limit-requests": "1e-300", "x-ratelimit-limit-tokens": "1"},
         "requests/min 1e-300"),
    ],
    ids=["tokens-0.001", "tokens-1e-300", "tokens-1", "tokens-space-5", "requests-0.5",
         "both"],
)
async def test_limits_that_cannot_be_real_never_write_off_or_stall(
    hostile: Hostile, tmp_path: Path, headers: dict[str, str], said: str
) -> None:
    hostile.headers = {**headers, "x-ratelimit-remaining-tokens": "0",
                       "x-ratelimit-remaining-requests": "0"}
    job = job_file(tmp_path, 10)
    stats = await asyncio.wait_for(run_job(job, config(hostile.base_url)), 30)
    assert stats.ok == 10 and stats.failed == 0 and stats.stop_reason is None
    assert written_off(job) == []
    notes = [n for n in stats.notes if n.startswith("ignored the server's stated limit")]
    assert any(said in n for n in notes), notes
    assert len(notes) == len({n.split(" of ")[1].split(" ")[0] for n in notes})  # once each


async def test_a_flag_still_makes_a_request_too_large(
    hostile: Hostile, tmp_path: Path
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0, max_tokens=5000), chat_line(1)])
    stats = await run_job(job, config(hostile.base_url, tpm=1000))
    assert [e["error"]["code"] for e in written_off(job)] == ["request_too_large"]
    assert "tokens/min limit of 1000" in written_off(job)[0]["error"]["message"]
    assert stats.ok == 1


async def test_429s_under_a_limit_that_cannot_be_real_stop_the_run(
    hostile: Hostile, tmp_path: Path
) -> None:
    api = hostile
    api.use(when(asking("Question"), pause(  # every request, every time
        headers={"x-ratelimit-limit-requests": "0.001", "retry-after-ms": "20"})))
    job = job_file(tmp_path, 6)
    stats = await asyncio.wait_for(run_job(job, config(hostile.base_url, max_attempts=50)), 30)
    assert stats.rerun_later and stats.failed == 0
    assert stats.stop_reason is not None
    assert "requests/min 0.001 (below one request)" in stats.stop_reason
    assert "429" in stats.stop_reason
    assert written_off(job) == []
    assert api.statuses[429] < 20  # it stopped instead of retrying 50 times each


# --------------------------------------------------------------------------- C: outages


async def test_cli_short_outage_writes_nothing_off(
    hostile: Hostile, tmp_path: Path
) -> None:
    api = hostile
    api.use(down(2.0, failing=8))  # both attempts of the first four, however slow
    job = job_file(tmp_path, 12)
    # Two attempts each: without the circuit, a 2 s outage writes most of them off.
    code, err = await cli(job, hostile.base_url, "--outage-window", "60", "--max-attempts", "2")
    assert code == 0, err
    assert answered(job) == Counter({f"req-{i}": 1 for i in range(12)})
    assert written_off(job) == []
    assert "outage: " in err and "no request spent attempts" in err
    assert "server looks down" in err
    # While it was down, once the circuit had opened, one probe at a time.
    in_flight_while_down = [s.in_flight for s in api.answers if s.status in DOWN]
    assert in_flight_while_down[-1] == 1
    assert {502, 503, 500} <= set(api.statuses)


async def test_cli_outage_longer_than_the_window_exits_75_then_rerun_completes(
    hostile: Hostile, tmp_path: Path
) -> None:
    api = hostile
    api.use(down())
    job = job_file(tmp_path, 8)
    code, err = await cli(job, hostile.base_url, "--outage-window", "2", "--max-attempts", "2")
    assert code == EXIT_LATER, err
    assert "down since" in err and "--outage-window of 2s" in err
    assert "nothing was written off" in err and "Traceback" not in err
    assert written_off(job) == [] and answered(job) == Counter()
    down_requests = len(api.requests)
    assert down_requests < 8 * 2 + 10  # probing, not hammering
    api.use(None)
    code, err = await cli(job, hostile.base_url)
    assert code == 0, err
    assert answered(job) == Counter({f"req-{i}": 1 for i in range(8)})


async def test_outage_circuit_off_spends_attempts(
    hostile: Hostile, tmp_path: Path
) -> None:
    hostile.use(down())
    job = job_file(tmp_path, 3)
    stats = await run_job(job, config(hostile.base_url, max_attempts=2, outage_window=0))
    assert stats.failed == 3 and stats.outages == 0
    assert [e["error"]["attempts"] for e in written_off(job)] == [2, 2, 2]


async def test_a_request_that_always_fails_on_a_healthy_server_is_written_off(
    hostile: Hostile, tmp_path: Path
) -> None:
    # The circuit is about the server, not one request: this one fails for good.
    hostile.use(when(asking("number 7?"), server_error(500)))
    job = job_file(tmp_path, 20)
    stats = await run_job(job, config(hostile.base_url, max_attempts=3))
    errors = written_off(job)
    assert [e["custom_id"] for e in errors] == ["req-7"]
    assert errors[0]["error"]["attempts"] == 3 and errors[0]["error"]["status"] == 500
    assert stats.ok == 19 and stats.outages == 0


# --------------------------------------------------------------------------- D: bounded requeue


class ListSink:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None:
        self.results.append(record)

    def write_error(self, record: dict[str, Any]) -> None:
        self.errors.append(record)

    def maybe_sync(self) -> None:
        pass


class FailingSender:
    """Fails every request at once; notes how many requests the engine holds."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.peak_requeue = 0

    async def post(self, endpoint: str, payload: bytes, *,
                   headers: Mapping[str, str] | None = None,
                   model: str | None = None) -> Response:
        assert self.engine is not None
        self.peak_requeue = max(self.peak_requeue, len(self.engine.admission.requeue))
        await asyncio.sleep(0)
        raise ServerError("HTTP 502: no message", status=502)


@pytest.mark.parametrize("bounded", [True, False], ids=["bounded", "unbounded"])
async def test_a_fast_failing_server_cannot_grow_the_requeue(
    tmp_path: Path, bounded: bool
) -> None:
    sender = FailingSender()
    sink = ListSink()
    engine = Engine(sender, Limiter(), sink, cost=lambda job: 10, max_in_flight=10,
                    policy=RetryPolicy(3, base=0.002, cap=0.004), outage_window=0,
                    max_requeue=None if bounded else 10**9)
    sender.engine = engine
    stats = await asyncio.wait_for(engine.run(list(iter_jobs(job_file(tmp_path, 300)))), 30)
    assert stats.failed == 300 and len(sink.errors) == 300
    if bounded:  # 2 x max_in_flight waiting, plus what was in flight when it filled
        assert sender.peak_requeue <= 2 * 10 + 10
    else:  # the same run without the bound: what the bound prevents
        assert sender.peak_requeue > 30


async def test_limit_headers_never_make_a_request_too_large(tmp_path: Path) -> None:
    # A server that states a 5 tokens/min limit and answers anyway: its own answer proves
    # the limit wrong, so nothing is written off, whatever the requests cost.
    class Sender:
        async def post(self, endpoint: str, payload: bytes, *,
                       headers: Mapping[str, str] | None = None,
                       model: str | None = None) -> Response:
            return Response(200, {"choices": []}, "r",
                            RateLimitInfo(limit_tokens=5.0, remaining_tokens=0.0))

    sink = ListSink()
    engine = Engine(Sender(), Limiter(auto_tokens=True), sink, cost=lambda job: 100,
                    max_in_flight=2)
    stats = await asyncio.wait_for(engine.run(list(iter_jobs(job_file(tmp_path, 8)))), 10)
    assert stats.ok == 8 and sink.errors == []
    assert engine.limiter.ignored == {"tokens/min": 5.0}
    assert engine.limiter.too_large(10**9) is None


async def test_ignored_limits_do_not_keep_the_run_learning(
    hostile: Hostile, tmp_path: Path
) -> None:
    # While learning (auto), at most 4 requests go at once; a kind whose only stated
    # limit is ignored must not hold the run there for good.
    hostile.headers = {"x-ratelimit-limit-requests": "0.001",
                           "x-ratelimit-limit-tokens": "0.001"}
    job = job_file(tmp_path, 40)
    stats = await asyncio.wait_for(run_job(job, config(hostile.base_url, max_in_flight=12)), 30)
    assert stats.ok == 40
    assert hostile.peak_in_flight > 4


@pytest.mark.parametrize("in_flight", [1, 16], ids=["one-at-a-time", "sixteen"])
async def test_an_outage_writes_nothing_off_at_any_concurrency(
    hostile: Hostile, tmp_path: Path, in_flight: int
) -> None:
    # One request at a time never gives the circuit ten samples: it opens instead of
    # writing a request off while every recent attempt failed. Both attempts of the first
    # request fail, however long this machine takes between them.
    hostile.use(down(0.4, failing=2))
    job = job_file(tmp_path, 24)
    stats = await asyncio.wait_for(
        run_job(job, config(hostile.base_url, max_in_flight=in_flight, max_attempts=2)), 30)
    assert stats.ok == 24 and stats.failed == 0 and written_off(job) == []
    assert stats.outages >= 1 and stats.outage_seconds > 0
    assert stats.outage_since is None  # closed again
