"""The real CLI against the hostile server: redirects, echoed credentials, huge and
endless answers (issue 9, items 4, 10 and 12)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from processor.cli.app import app
from processor.client.http import MAX_WAIT, OpenAIClient
from processor.errors import APITimeout, FatalAPIError, RateLimited, Redirected, ServerError
from processor.run.runner import JobConfig
from tests.conftest import chat_line, read_jsonl, write_jsonl
from tests.hostile import (
    Hostile,
    bomb,
    echo,
    endless,
    escape_json,
    html,
    huge,
    limits,
    outage,
    pause,
    redirect,
    server_error,
    when,
)

KEY = "sk-hostile-SECRET-0123456789abcdef"
TOKEN = "tok-header-SECRET-fedcba9876543210"
CUSTOM = "custom-SECRET-value-5555"


async def cli(job: Path, base_url: str, *args: str, key: str | None = KEY) -> Result:
    """``batchproc run JOB`` through typer's CliRunner, in a thread so that the server on
    this test's loop keeps answering."""
    env: dict[str, str | None] = {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": None}
    argv = ["run", str(job), "--base-url", base_url, "--plain", "--loop", "asyncio",
            "--max-in-flight", "4", *args]
    return await asyncio.to_thread(CliRunner().invoke, app, argv, env=env)


def job_of(tmp_path: Path, n: int = 3, **kw: Any) -> Path:
    return write_jsonl(tmp_path / "job.jsonl", [chat_line(i, **kw) for i in range(n)])


def outputs(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (read_jsonl(tmp_path / "job.results.jsonl"), read_jsonl(tmp_path / "job.errors.jsonl"))


def assert_hidden(tmp_path: Path, output: str, *secrets: str) -> None:
    """No secret, raw or JSON-escaped, in any file the run wrote or in its output."""
    texts = {"output": output}
    for path in tmp_path.iterdir():
        if path.is_file() and path.name != "job.jsonl":
            texts[path.name] = path.read_bytes().decode("utf-8", "replace")
    for secret in secrets:
        for name, text in texts.items():
            assert secret not in text, f"{secret[:6]}... in {name}"
            assert escape_json(secret)[1:-1] not in text, f"escaped {secret[:6]}... in {name}"


# -- A. redirects --------------------------------------------------------------------

AUTH_MODES = {
    # name: (extra CLI args, base URL suffix, key in the environment, secrets in play)
    "bearer": ((), "/v1", KEY, (KEY,)),
    "azure": (("--azure",), "", KEY, (KEY,)),
    "header": (("--header", f"Authorization: Bearer {TOKEN}", "--header", f"X-Custom: {CUSTOM}",
                "--secret-header", "X-Custom"), "/v1", None, (TOKEN, CUSTOM)),
}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("auth", list(AUTH_MODES))
async def test_redirect_is_never_followed(hostile_api: Any, tmp_path: Path, status: int,
                                          auth: str) -> None:
    args, suffix, key, secrets = AUTH_MODES[auth]
    api: Hostile = await hostile_api(redirect(status, "foreign"))
    job = job_of(tmp_path)
    result = await cli(job, api.root + suffix, "--max-attempts", "3", *args, key=key)
    assert result.exit_code == 1, result.output
    assert api.foreign == []  # no request, no credential reached the other host
    assert len(api.requests) == 3  # one attempt each: a redirect is not retried
    results, errors = outputs(tmp_path)
    assert results == []
    assert sorted(e["custom_id"] for e in errors) == ["req-0", "req-1", "req-2"]
    for record in errors:
        assert record["error"]["code"] == "redirect"
        assert record["error"]["attempts"] == 1
        assert f"HTTP {status} redirect to {api.foreign_root}" in record["error"]["message"]
        assert record["response"]["status_code"] == status
    assert "redirect" in result.output  # the summary's failures by reason
    assert_hidden(tmp_path, result.output, *secrets)


@pytest.mark.parametrize("target", ["relative", "none"])
async def test_relative_or_missing_location(hostile_api: Any, tmp_path: Path,
                                            target: str) -> None:
    api: Hostile = await hostile_api(redirect(307, target))
    result = await cli(job_of(tmp_path, 2), api.base_url)
    assert result.exit_code == 1
    assert [r.path for r in api.requests] == ["/v1/chat/completions"] * 2  # no /moved/...
    _, errors = outputs(tmp_path)
    assert len(errors) == 2
    message = errors[0]["error"]["message"]
    assert errors[0]["error"]["code"] == "redirect"
    if target == "relative":  # shown absolute, resolved against the request's URL
        assert f"to {api.root.rstrip('/')}/moved/v1/chat/completions:" in message
    else:
        assert "with no Location" in message


async def test_a_key_in_the_location_is_masked(hostile_api: Any, tmp_path: Path) -> None:
    api: Hostile = await hostile_api(
        redirect(302, f"http://user:{CUSTOM}@127.0.0.2:9/{KEY}/x?api-key={KEY}&v=1#{KEY}"))
    result = await cli(job_of(tmp_path, 1), api.base_url)
    assert result.exit_code == 1
    _, errors = outputs(tmp_path)
    message = errors[0]["error"]["message"]
    assert "redirect to http://***@127.0.0.2:9/***/x?api-key=***&v=***#***:" in message
    assert_hidden(tmp_path, result.output, KEY, CUSTOM)


async def test_redirect_then_rerun_sends_again_only_with_retry_failed(
        hostile_api: Any, tmp_path: Path) -> None:
    # A redirect is a final failure of that request, like a 400: --retry-failed, once the
    # base URL is fixed, sends it again.
    api: Hostile = await hostile_api(redirect(301))
    job = job_of(tmp_path, 2)
    assert (await cli(job, api.base_url)).exit_code == 1
    api.use(None)
    result = await cli(job, api.base_url, "--retry-failed")
    assert result.exit_code == 0, result.output
    results, _ = outputs(tmp_path)
    assert sorted(r["custom_id"] for r in results) == ["req-0", "req-1"]


# -- B. echoed credentials -----------------------------------------------------------

@pytest.mark.parametrize("status", [200, 400])
@pytest.mark.parametrize("auth", list(AUTH_MODES))
async def test_escaped_echo_never_reaches_a_file(hostile_api: Any, tmp_path: Path, status: int,
                                                 auth: str) -> None:
    args, suffix, key, secrets = AUTH_MODES[auth]
    api: Hostile = await hostile_api(echo(status))
    result = await cli(job_of(tmp_path, 2), api.root + suffix, *args, key=key)
    results, errors = outputs(tmp_path)
    if status == 200:
        assert result.exit_code == 0, result.output
        assert len(results) == 2
        body = results[0]["response"]["body"]
        # The echo arrived (decoded) and was masked, keys of objects included.
        assert "***" in body["choices"][0]["message"]["content"]
        assert any("***" in name for name in body["seen"])
        assert "***" in results[0]["response"]["request_id"]
    else:
        assert result.exit_code == 1
        assert len(errors) == 2 and "***" in errors[0]["error"]["message"]
    # The server really got the secrets (else this test proves nothing).
    sent = " ".join(v for seen in api.requests for v in seen.headers.values())
    assert all(s in sent for s in secrets)
    assert_hidden(tmp_path, result.output, *secrets)


async def test_html_page_echoing_entities(hostile_api: Any, tmp_path: Path) -> None:
    api: Hostile = await hostile_api(html(502, echo_headers=True))
    result = await cli(job_of(tmp_path, 1), api.base_url, "--max-attempts", "1")
    assert result.exit_code == 1
    _, errors = outputs(tmp_path)
    assert errors[0]["error"]["code"] == "server_error"
    assert "***" in errors[0]["response"]["body"]
    entity_key = "".join(f"&#{ord(c)};" for c in KEY)
    assert entity_key not in (tmp_path / "job.errors.jsonl").read_text()
    assert_hidden(tmp_path, result.output, KEY)


async def test_html_200_is_retried_then_a_server_error(hostile_api: Any, tmp_path: Path) -> None:
    api: Hostile = await hostile_api(html(200))
    result = await cli(job_of(tmp_path, 1), api.base_url, "--max-attempts", "2")
    assert result.exit_code == 1
    assert len(api.requests) == 2
    _, errors = outputs(tmp_path)
    assert "text/html" in errors[0]["error"]["message"]
    assert "502 Bad Gateway" in errors[0]["response"]["body"]


# -- C. answer size ------------------------------------------------------------------

def big_request(body: bytes) -> bool:
    return b"BIG" in body


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "chunked"])
async def test_huge_answers_become_error_records(hostile_api: Any, tmp_path: Path,
                                                 content_length: bool) -> None:
    api: Hostile = await hostile_api(when(big_request, huge(30, content_length=content_length)))
    lines = [chat_line(i, text="BIG please" if i % 2 else None) for i in range(4)]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    result = await cli(job, api.base_url, "--max-response-mb", "2", "--max-attempts", "3")
    assert result.exit_code == 1, result.output
    results, errors = outputs(tmp_path)
    assert sorted(r["custom_id"] for r in results) == ["req-0", "req-2"]  # the run went on
    assert sorted(e["custom_id"] for e in errors) == ["req-1", "req-3"]
    for record in errors:
        assert record["error"]["code"] == "response_too_large"
        assert record["error"]["attempts"] == 1  # not retried
        assert "--max-response-mb (2 MiB)" in record["error"]["message"]
        assert ("Content-Length" in record["error"]["message"]) == content_length


async def test_a_gzip_bomb_is_stopped_at_the_cap(hostile_api: Any, tmp_path: Path) -> None:
    # ~100 KB on the wire, 100 MB once inflated: the cap counts what aiohttp decodes.
    api: Hostile = await hostile_api(bomb(100))
    result = await cli(job_of(tmp_path, 1), api.base_url, "--max-response-mb", "4")
    assert result.exit_code == 1
    _, errors = outputs(tmp_path)
    assert errors[0]["error"]["code"] == "response_too_large"
    assert "ran past it" in errors[0]["error"]["message"]


async def test_an_answer_under_the_cap_is_kept(hostile_api: Any, tmp_path: Path) -> None:
    api: Hostile = await hostile_api(huge(1.5, content_length=False))
    result = await cli(job_of(tmp_path, 1), api.base_url, "--max-response-mb", "2")
    assert result.exit_code == 0, result.output
    results, _ = outputs(tmp_path)
    assert len(results[0]["response"]["body"]["choices"][0]["message"]["content"]) > 1_400_000


async def test_an_endless_body_stops_at_the_cap(hostile_api: Any, tmp_path: Path) -> None:
    api: Hostile = await hostile_api(endless(seconds=20))
    result = await cli(job_of(tmp_path, 2), api.base_url, "--max-response-mb", "1")
    assert result.exit_code == 1
    _, errors = outputs(tmp_path)
    assert [e["error"]["code"] for e in errors] == ["response_too_large"] * 2


async def test_a_dripping_endless_body_ends_with_the_timeout(hostile_api: Any,
                                                             tmp_path: Path) -> None:
    # 100 bytes every 50 ms never reaches the cap: --timeout (the whole attempt) ends it.
    api: Hostile = await hostile_api(endless(chunk=100, interval=0.05, seconds=20))
    result = await cli(job_of(tmp_path, 1), api.base_url, "--timeout", "0.5",
                       "--max-attempts", "1")
    assert result.exit_code == 1
    _, errors = outputs(tmp_path)
    assert errors[0]["error"]["code"] == "connection_error"
    assert "timed out" in errors[0]["error"]["message"]


_RSS_CODE = (
    "import resource, sys\nfrom processor.cli.app import main\ntry:\n    main(sys.argv[1:])\n"
    "finally:\n    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
    " file=sys.stderr)\n")


async def _peak_rss_mb(job: Path, base_url: str, *args: str) -> tuple[float, int | None]:
    """Run the real CLI in a subprocess; its own peak RSS (MB) and exit code."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RSS_CODE, str(job), "--base-url", base_url, "--plain", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    _, err = await proc.communicate()
    return int(err.decode().rsplit("maxrss_kb", 1)[1].split()[0]) / 1024, proc.returncode


@pytest.mark.slow
async def test_memory_stays_bounded_with_huge_answers(hostile_api: Any, tmp_path: Path) -> None:
    # Four 150 MB answers at once with an 8 MiB cap: the process grows by a few caps at
    # most, not by whole answers (before the cap: 1,031 MB peak). Compared with the same
    # job answered normally, so the tokenizer or the interpreter do not move the bound.
    api: Hostile = await hostile_api()
    baseline, code = await _peak_rss_mb(job_of(tmp_path, 4), api.base_url)
    assert code == 0
    for path in tmp_path.glob("job.*"):
        if path.name != "job.jsonl":
            path.unlink()
    api.use(huge(150, content_length=False))
    peak, code = await _peak_rss_mb(job_of(tmp_path, 4), api.base_url, "--max-response-mb", "8")
    assert code == 1
    _, errors = outputs(tmp_path)
    assert [e["error"]["code"] for e in errors] == ["response_too_large"] * 4
    print(f"peak RSS {peak:.1f} MB, baseline {baseline:.1f} MB")
    assert peak - baseline < 4 * 8 * 2 + 20, (peak, baseline)


# -- the client on its own, against the same server ----------------------------------

@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 305, 307, 308, 399])
async def test_client_raises_redirected_for_every_3xx(hostile_api: Any, status: int) -> None:
    api: Hostile = await hostile_api(redirect(status, query=f"sig={KEY}"))
    async with OpenAIClient(api.base_url, KEY, headers={"X-Api-Key": CUSTOM}) as client:
        with pytest.raises(Redirected) as info:
            await client.post("/v1/chat/completions", b'{"model": "m"}')
    exc = info.value
    assert isinstance(exc, FatalAPIError) and exc.kind == "redirect"
    assert exc.status == status
    assert exc.location == f"{api.foreign_root}/v1/chat/completions?sig=***"
    assert api.foreign == []
    assert KEY not in str(vars(exc)) and CUSTOM not in str(vars(exc))


async def test_proxy_environment_and_netrc_are_ignored(
        hostile_api: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy would see every key; ~/.netrc would add credentials we were not given.
    api: Hostile = await hostile_api()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login me password netrc-SECRET-123\n")
    netrc.chmod(0o600)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    async with OpenAIClient(api.base_url) as client:
        response = await client.post("/v1/chat/completions", b'{"model": "m"}')
    assert response.status == 200
    assert "Authorization" not in api.requests[0].headers


async def test_one_authorization_header_whatever_the_case(hostile_api: Any) -> None:
    api: Hostile = await hostile_api()
    async with OpenAIClient(api.base_url, KEY, headers={"authorization": f"Bearer {TOKEN}"}
                            ) as client:
        await client.post("/v1/chat/completions", b'{"model": "m"}')
    sent = [v for k, v in api.requests[0].header_list if k.lower() == "authorization"]
    assert sent == [f"Bearer {KEY}"]


async def test_a_huge_error_body_is_cut_not_read_whole(hostile_api: Any) -> None:
    async def big_500(request: Any, api: Hostile) -> Any:
        return await _big_error(request)

    api: Hostile = await hostile_api(big_500)
    async with OpenAIClient(api.base_url) as client:
        with pytest.raises(ServerError) as info:
            await client.post("/v1/chat/completions", b"{}")
    assert info.value.status == 500
    assert isinstance(info.value.body, str) and len(info.value.body) <= 2000


async def _big_error(request: Any) -> Any:
    from aiohttp import web

    resp = web.StreamResponse(status=500, headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        for _ in range(40):  # 40 MiB offered, at most 1 MiB read
            await resp.write(b"e" * (1 << 20))
    except (ConnectionError, RuntimeError):
        pass
    return resp


def test_max_response_mb_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_response_mb"):
        OpenAIClient("http://127.0.0.1:1/v1", max_response_mb=0)


def test_short_secret_header_values_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    OpenAIClient("http://127.0.0.1:1/v1", secret_headers={"X-Thing": "abc"})
    assert "X-Thing" in caplog.text and "shorter than 8" in caplog.text
    assert "abc" not in caplog.text.replace("X-Thing", "")
    caplog.clear()
    OpenAIClient("http://127.0.0.1:1/v1", headers={"Cookie": "session=abcdefgh123; t=x",
                                                   "Authorization": "Bearer tok-12345678"})
    assert "shorter than 8" not in caplog.text
    OpenAIClient("http://127.0.0.1:1/v1", headers={"Authorization": "Bearer abc"})
    assert "Authorization" in caplog.text


# -- the CLI's flags -----------------------------------------------------------------

def test_secret_header_naming_no_header_is_a_usage_error(tmp_path: Path) -> None:
    job = job_of(tmp_path, 1)
    result = CliRunner().invoke(app, ["run", str(job), "--base-url", "http://127.0.0.1:9/v1",
                                      "--secret-header", "X-Nope"])
    assert result.exit_code == 2
    assert "X-Nope" in result.output and "no --header of that name" in result.output


def test_a_header_without_colon_is_not_echoed(tmp_path: Path) -> None:
    job = job_of(tmp_path, 1)
    result = CliRunner().invoke(app, ["run", str(job), "--base-url", "http://127.0.0.1:9/v1",
                                      "--header", f"Authorization Bearer {TOKEN}"])
    assert result.exit_code == 2
    assert TOKEN not in result.output and "--header wants 'Name: value'" in result.output


def test_job_config_repr_shows_no_secret() -> None:
    config = JobConfig(api_key=KEY, api_keys=[("A", TOKEN)], headers={"X-Api-Key": CUSTOM},
                       secret_headers={"X-Other": CUSTOM})
    assert not any(s in repr(config) for s in (KEY, TOKEN, CUSTOM))


# -- the hostile server's own modes (others build engine tests on them) --------------

async def test_outage_then_recovery(hostile_api: Any) -> None:
    api: Hostile = await hostile_api(outage(3600, statuses=(502, 503)))
    async with OpenAIClient(api.base_url) as client:
        errors = []
        for _ in range(3):
            with pytest.raises(ServerError) as info:
                await client.post("/v1/chat/completions", b"{}")
            errors.append(info.value)
        assert [e.status for e in errors] == [502, 503, 502]
        assert "502 Bad Gateway" in str(errors[0].body)
        assert errors[1].body["error"]["type"] == "server_error"
        api.use(outage(0))  # an outage of no length: answers at once
        assert (await client.post("/v1/chat/completions", b"{}")).status == 200


async def test_outage_by_resets(hostile_api: Any) -> None:
    api: Hostile = await hostile_api(outage(3600, reset=True))
    async with OpenAIClient(api.base_url) as client:
        with pytest.raises(APITimeout):
            await client.post("/v1/chat/completions", b"{}")


async def test_absurd_limits_reach_the_client_as_numbers(hostile_api: Any) -> None:
    api: Hostile = await hostile_api(limits(limit_requests="1e-300", limit_tokens=" 5",
                                            remaining_requests="nan", reset_tokens="1e17"))
    async with OpenAIClient(api.base_url) as client:
        info = (await client.post("/v1/embeddings", b'{"model": "e"}')).ratelimit
    assert info is not None
    assert (info.limit_requests, info.limit_tokens, info.remaining_requests) == (1e-300, 5.0, None)
    assert info.reset_tokens == MAX_WAIT


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry_after": "1e17"}, MAX_WAIT), ({"retry_after_ms": "5000"}, 5.0),
    ({"retry_after_ms": "inf", "retry_after": "nan"}, None)])
async def test_pause_mode(hostile_api: Any, headers: dict[str, str],
                          expected: float | None) -> None:
    api: Hostile = await hostile_api(pause(times=1, **headers))
    async with OpenAIClient(api.base_url) as client:
        with pytest.raises(RateLimited) as info:
            await client.post("/v1/chat/completions", b"{}")
        assert info.value.retry_after == expected
        assert (await client.post("/v1/chat/completions", b"{}")).status == 200  # times=1


async def test_cloudflare_outage_and_its_counts(hostile_api: Any) -> None:
    api: Hostile = await hostile_api(outage(3600, (502, 503, 500), proxy="cloudflare"))
    async with OpenAIClient(api.base_url) as client:
        errors = []
        for _ in range(3):
            with pytest.raises(ServerError) as info:
                await client.post("/v1/chat/completions", b"{}")
            errors.append(info.value)
        assert [e.status for e in errors] == [502, 503, 500]
        assert "cloudflare" in str(errors[0].body)
        assert "had an error" in errors[2].body["error"]["message"]
        api.use(None)
        assert (await client.post("/v1/chat/completions", b"{}")).status == 200
    assert api.statuses == {502: 1, 503: 1, 500: 1, 200: 1}
    assert [s.status for s in api.answers] == [502, 503, 500, 200]
    assert api.peak_in_flight == 1 and api.in_flight == 0


async def test_one_request_fails_for_good_and_headers_go_over_the_defaults(
        hostile_api: Any) -> None:
    api: Hostile = await hostile_api(when(lambda body: b"bad" in body, server_error(500)))
    api.headers = {"x-ratelimit-limit-requests": "0.001"}
    async with OpenAIClient(api.base_url) as client:
        for _ in range(2):
            with pytest.raises(ServerError) as info:
                await client.post("/v1/chat/completions", b'{"bad": 1}')
            assert info.value.status == 500
        answer = await client.post("/v1/chat/completions", b'{"good": 1}')
    assert answer.ratelimit is not None and answer.ratelimit.limit_requests == 0.001
    assert answer.ratelimit.limit_tokens == 1000000  # the defaults stay under api.headers
    assert [s.status for s in api.answers] == [500, 500, 200]


async def test_a_maintenance_pause_is_a_503_with_the_headers_given(hostile_api: Any) -> None:
    api: Hostile = await hostile_api(pause(status=503, headers={"retry-after": "7"}, times=1))
    async with OpenAIClient(api.base_url) as client:
        with pytest.raises(ServerError) as info:
            await client.post("/v1/chat/completions", b"{}")
        assert info.value.status == 503 and info.value.retry_after == 7.0
        assert info.value.body["error"]["type"] == "server_error"
        assert (await client.post("/v1/chat/completions", b"{}")).status == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                  "/v1/responses"])
async def test_normal_answers_are_openai_shaped(hostile_api: Any, path: str) -> None:
    api: Hostile = await hostile_api()
    async with OpenAIClient(api.base_url) as client:
        response = await client.post(path, b'{"model": "gpt-4o-mini"}')
    assert response.request_id == "req_1"
    assert response.ratelimit is not None and response.ratelimit.limit_requests == 10000
    assert "usage" in response.body and response.body.get("model") == "gpt-4o-mini"
