"""Red team: rate-limit headers as servers we have not seen send them (proxies joining
duplicated headers, garbage values, absurd limits), through the real engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from processor import JobConfig, run_job
from processor.client.headers import RateLimitInfo
from tests.conftest import chat_line, write_jsonl
from tests.hostile import pause, when

KEY = "sk-test-attack2-3b7e1d"
_LIMITS = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")


def _rewrite(change: Callable[[str, str], str | None]) -> Any:
    """A middleware that rewrites (or drops: None) the mock's x-ratelimit-* headers."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        for name in [n for n in response.headers if n.lower().startswith("x-ratelimit-")]:
            value = change(name.lower(), response.headers[name])
            del response.headers[name]
            if value is not None:
                response.headers[name] = value
        return response

    return middleware


def _config(api: Any) -> JobConfig:
    return JobConfig(base_url=api.base_url, api_key=KEY, allow_download=False,
                     backoff_base=0.01, backoff_cap=0.05)


def test_proxy_joined_duplicates_read_as_the_stricter_value() -> None:
    # A proxy forwarding the upstream's headers beside its own joins them with ", ".
    info = RateLimitInfo.from_headers({
        "x-ratelimit-limit-requests": "600, 500", "x-ratelimit-remaining-requests": "7,9",
        "x-ratelimit-limit-tokens": "90000 , junk", "x-ratelimit-reset-requests": "1s, 2.5s"})
    assert info is not None
    assert info.limit_requests == 500 and info.remaining_requests == 7
    assert info.limit_tokens == 90000
    assert info.reset_requests == 2.5


@pytest.mark.parametrize("junk", ["NaN", "None", "-1"])
async def test_garbage_limit_headers_do_not_keep_the_run_learning_silently(
        mock_api: Any, tmp_path: Path, junk: str) -> None:
    # Limit headers present but unreadable (LiteLLM's proxy documents the value None
    # when the backend sent none): before, the run stayed "learning" (4 in flight) to
    # the end without a word.
    api = await mock_api(rpm=6000, middlewares=[_rewrite(
        lambda name, value: junk if name in _LIMITS else value)])
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(12)])
    stats = await run_job(job, _config(api))
    assert stats.ok == 12
    assert any("none applied" in note for note in stats.notes), stats.notes


async def test_joined_duplicate_headers_are_learned(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(rpm=6000, tpm=1_000_000, middlewares=[_rewrite(
        lambda name, value: f"{value}, {value}")])
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(12)])
    stats = await run_job(job, _config(api))
    assert stats.ok == 12
    assert stats.limits.get("rpm") == 6000 and stats.limits.get("tpm") == 1_000_000


async def test_absurd_stated_limits_are_ignored_with_a_note(mock_api: Any,
                                                            tmp_path: Path) -> None:
    # 1e308 requests a minute is no server's limit: it was learned and printed as a
    # 309-digit number in the summary.
    api = await mock_api(rpm=6000, middlewares=[_rewrite(
        lambda name, value: "1e308" if "-limit-" in name or "-remaining-" in name
        else value)])
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(12)])
    stats = await run_job(job, _config(api))
    assert stats.ok == 12
    assert all(v < 1e13 for v in stats.limits.values()), stats.limits
    assert any("ignored the server's stated limit" in note and "above any real limit" in note
               for note in stats.notes), stats.notes


async def test_a_ten_year_retry_after_is_not_told_as_a_week(hostile_api: Any,
                                                            tmp_path: Path) -> None:
    # Retry-After of ten years is read as a week (the cap); the stop said "the server
    # asked to pause for 7d00h (until <a week on>)": a wait the server never asked for.
    from tests.test_outage import EXIT_LATER, asking, cli, job_file, written_off

    api = await hostile_api(latency=0.005)
    api.use(when(asking("number 0?"), pause(retry_after="315360000", times=1)))
    job = job_file(tmp_path, 2)
    code, err = await cli(job, api.base_url)
    assert code == EXIT_LATER, err
    assert "the server asked to pause for 7d00h or more" in " ".join(err.split()), err
    assert written_off(job) == []


def test_joined_retry_after_and_go_durations_below_a_millisecond() -> None:
    from processor.client.headers import parse_duration, parse_retry_after

    # A proxy that joins the upstream's Retry-After with its own: the longer is asked.
    assert parse_retry_after({"retry-after": "2, 3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "20,20"}) == pytest.approx(0.02)
    assert parse_retry_after({"retry-after": "1, nan"}) == 1.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    # Go prints durations under a millisecond in µs / us / ns (OpenAI's resets are Go's).
    assert parse_duration("857µs") == pytest.approx(857e-6)
    assert parse_duration("1.5us") == pytest.approx(1.5e-6)
    assert parse_duration("500ns") == pytest.approx(5e-7)
    assert parse_duration("1m0.5µs") == pytest.approx(60.0000005)


async def test_a_long_server_pause_is_told_on_the_progress_line(hostile_api: Any,
                                                                tmp_path: Path) -> None:
    # A 429 asking for 50 minutes (under the hour that stops the run): the run waited
    # with "retrying 1 ... eta ?" on its progress line and not a word of why.
    import asyncio

    from processor.cli.progress import status_line
    from processor.stats import Stats
    from tests.test_outage import asking, job_file

    api = await hostile_api(latency=0.005)
    api.use(when(asking("number 0?"), pause(retry_after="3000", times=1)))
    job = job_file(tmp_path, 1)
    lines: list[str] = []

    def tick(stats: Stats) -> None:
        lines.append(status_line(stats, (0.0, 0.0, 0.0)))

    task = asyncio.create_task(run_job(job, JobConfig(
        base_url=api.base_url, api_key=KEY, allow_download=False, rpm=600, tpm=None,
        auto_rpm=False, auto_tpm=False), on_progress=tick))
    try:
        for _ in range(100):
            if any("paused by the server" in line for line in lines):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    told = [line for line in lines if "paused by the server" in line]
    assert told, lines[-3:]
    assert "(429) until " in told[-1] and ("49m" in told[-1] or "50m" in told[-1]), told[-1]


async def test_a_limit_header_sent_twice_is_read_as_the_stricter(mock_api: Any,
                                                                 tmp_path: Path) -> None:
    # Two header lines (a proxy adding its own limit beside the upstream's): the first
    # was read alone, here the upstream's 6,000 a minute, not the proxy's 60.
    @web.middleware
    async def twice(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if "x-ratelimit-limit-requests" in response.headers:
            response.headers.add("x-ratelimit-limit-requests", "60")
            response.headers.add("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")
        return response

    api = await mock_api(rpm=6000, middlewares=[twice])
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    stats = await run_job(job, _config(api))
    assert stats.ok == 3
    assert stats.limits.get("rpm") == 60, stats.limits
