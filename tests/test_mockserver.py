"""The mock OpenAI server: shapes, errors, rate limits and faults, on loopback."""

from __future__ import annotations

import asyncio
import base64
import math
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from processor.cli.app import app
from processor.testing import (
    STATS_KEY,
    MockConfig,
    MockStats,
    build_app,
    cost_of,
    format_duration,
    serve,
)
from tests.conftest import chat_line, read_jsonl, start_cli, write_jsonl

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
KEY = "sk-test-0123456789"
RATE_HEADERS = [
    f"x-ratelimit-{what}-{unit}"
    for what in ("limit", "remaining", "reset")
    for unit in ("requests", "tokens")
]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_client(clock: FakeClock) -> AsyncIterator[MakeClient]:
    clients: list[TestClient[Any, Any]] = []

    async def make(**config: Any) -> TestClient[Any, Any]:
        client = TestClient(TestServer(build_app(MockConfig(**config), clock=clock)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def post(
    client: TestClient[Any, Any],
    body: Any = CHAT,
    path: str = "/v1/chat/completions",
    **kwargs: Any,
) -> tuple[aiohttp.ClientResponse, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = await client.post(path, data=data, **kwargs)
    raw = await resp.read()
    return resp, orjson.loads(raw)


def assert_openai_error(body: Any, kind: str, code: str | None) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == kind
    assert body["error"]["code"] == code


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.1 + 0.2, "300ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (86.4, "1m26.4s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (86400, "24h0m0s"),
    ],
    ids=lambda v: str(v),
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


async def test_chat_shape_and_usage(make_client: MakeClient) -> None:
    client = await make_client(seed=1)
    body = {**CHAT, "n": 2, "max_tokens": 7}
    resp, data = await post(client, body)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert data["model"] == "gpt-4o"
    assert data["system_fingerprint"] == "fp_mock"
    assert isinstance(data["created"], int)
    assert [c["index"] for c in data["choices"]] == [0, 1]
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Mock answer to: hello there"}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    usage = data["usage"]
    assert usage["prompt_tokens"] == 3  # "hello there": 11 characters / 4, rounded up
    assert usage["completion_tokens"] % 2 == 0 and 0 < usage["completion_tokens"] <= 7 * 2
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_chat_answer_quotes_last_user_text_parts(make_client: MakeClient) -> None:
    client = await make_client()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "x" * 100}]},
        {"role": "assistant", "content": "ok"},
    ]
    _, data = await post(client, {"model": "m", "messages": messages})
    assert data["choices"][0]["message"]["content"] == "Mock answer to: " + "x" * 40


async def test_completions_shape(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": ["one", "two"], "max_tokens": 3}
    resp, data = await post(client, body, "/v1/completions")
    assert resp.status == 200
    assert data["object"] == "text_completion"
    assert [c["text"] for c in data["choices"]] == [
        "Mock completion of: one",
        "Mock completion of: two",
    ]
    assert data["usage"]["prompt_tokens"] == 2  # one token per 3-character prompt
    assert cost_of(body, "/v1/completions") == 2 + 3 * 2  # max_tokens per prompt
    assert data["usage"]["completion_tokens"] <= 3 * 2


async def test_embeddings_shape(make_client: MakeClient) -> None:
    client = await make_client(embedding_dim=6)
    body = {"model": "text-embedding-3-small", "input": ["a", "bb", "ccc"]}
    resp, data = await post(client, body, "/v1/embeddings")
    assert resp.status == 200
    assert data["object"] == "list" and data["model"] == "text-embedding-3-small"
    assert [d["index"] for d in data["data"]] == [0, 1, 2]
    vectors = [d["embedding"] for d in data["data"]]
    assert all(len(v) == 6 and math.isclose(sum(x * x for x in v), 1.0) for v in vectors)
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


async def test_embeddings_base64_and_dimensions(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"model": "e", "input": "hi", "encoding_format": "base64", "dimensions": 4}
    _, data = await post(client, body, "/v1/embeddings")
    raw = base64.b64decode(data["data"][0]["embedding"])
    assert len(struct.unpack("<4f", raw)) == 4


async def test_responses_shape(make_client: MakeClient) -> None:
    client = await make_client()
    body = {"model": "gpt-4o", "input": "what is up", "max_output_tokens": 4}
    resp, data = await post(client, body, "/v1/responses")
    assert resp.status == 200
    assert data["object"] == "response" and data["status"] == "completed"
    assert data["id"].startswith("resp_")
    (message,) = data["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "output_text"
    assert message["content"][0]["text"] == "Mock answer to: what is up"
    usage = data["usage"]
    assert usage["input_tokens"] == 3  # "what is up": 10 characters / 4, rounded up
    assert 0 < usage["output_tokens"] <= 4
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_models_list(make_client: MakeClient) -> None:
    client = await make_client(models=frozenset({"b", "a"}))
    resp = await client.get("/v1/models")
    data = await resp.json()
    assert [m["id"] for m in data["data"]] == ["a", "b"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Bearer sk-revoked"}],
    ids=["missing", "wrong", "revoked"],
)
async def test_401(make_client: MakeClient, headers: dict[str, str]) -> None:
    client = await make_client(api_key=KEY, revoked_keys=frozenset({"sk-revoked"}))
    resp, data = await post(client, headers=headers)
    assert resp.status == 401
    assert_openai_error(data, "invalid_request_error", "invalid_api_key")
    assert "sk-" not in orjson.dumps(data).decode()
    assert "x-request-id" in resp.headers
    ok, _ = await post(client, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status == 200


async def test_revoked_key_without_api_key(make_client: MakeClient) -> None:
    client = await make_client(revoked_keys=frozenset({"sk-old"}))
    bad, _ = await post(client, headers={"Authorization": "Bearer sk-old"})
    good, _ = await post(client, headers={"Authorization": "Bearer sk-any"})
    assert (bad.status, good.status) == (401, 200)


async def test_429_when_rpm_spent_then_refills(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(rpm=2, tpm=100_000, initial_fill=0.5)
    first, _ = await post(client)
    assert first.status == 200
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] == "1m0s"
    resp, data = await post(client)
    assert resp.status == 429
    assert_openai_error(data, "requests", "rate_limit_exceeded")
    message = data["error"]["message"]
    assert message.startswith(
        "Rate limit reached for gpt-4o in organization org-mock on "
        "requests per min (RPM): Limit 2, Used 2, Requested 1."
    )
    assert "Please try again in 30s." in message
    assert resp.headers["retry-after"] == "30"
    assert resp.headers["retry-after-ms"] == "30000"
    assert all(h in resp.headers for h in RATE_HEADERS)
    clock.now += 29.9
    assert (await post(client))[0].headers["retry-after-ms"] == "100"
    clock.now += 0.1
    assert (await post(client))[0].status == 200


async def test_429_does_not_consume_unless_count_rejected(
    make_client: MakeClient, clock: FakeClock
) -> None:
    lenient = await make_client(rpm=60, initial_fill=0.0)
    strict = await make_client(rpm=60, initial_fill=0.0, count_rejected=True)
    clock.now += 0.5
    for client in (lenient, strict):
        assert (await post(client))[0].headers["retry-after-ms"] == "500"
    clock.now += 0.5
    # lenient kept its half request of refill; strict lost it to the refused attempt.
    assert (await post(lenient))[0].status == 200
    assert (await post(strict))[0].headers["retry-after-ms"] == "500"


async def test_remaining_tokens_decrease_by_cost(make_client: MakeClient) -> None:
    client = await make_client(rpm=100, tpm=10_000)
    seen = []
    for _ in range(3):
        resp, _ = await post(client)
        seen.append(int(resp.headers["x-ratelimit-remaining-tokens"]))
        assert resp.headers["x-ratelimit-limit-tokens"] == "10000"
    cost = cost_of(CHAT, "/v1/chat/completions")
    assert seen == [10_000 - cost, 10_000 - 2 * cost, 10_000 - 3 * cost]
    assert resp.headers["x-ratelimit-remaining-requests"] == "97"
    stats = await (await client.get("/stats")).json()
    assert stats["tokens_charged"] == 3 * cost


async def test_tpm_429_reports_tokens(make_client: MakeClient) -> None:
    cost = cost_of(CHAT, "/v1/chat/completions")
    client = await make_client(tpm=cost * 1.5)
    assert (await post(client))[0].status == 200
    resp, data = await post(client)
    assert resp.status == 429
    assert_openai_error(data, "tokens", "rate_limit_exceeded")
    assert "on tokens per min (TPM)" in data["error"]["message"]
    wait = (cost - cost * 0.5) / (cost * 1.5 / 60)
    assert resp.headers["retry-after-ms"] == str(math.ceil(wait * 1000 - 1e-6))
    assert resp.headers["retry-after"] == str(math.ceil(wait))


async def test_request_too_large(make_client: MakeClient) -> None:
    client = await make_client(tpm=100)
    resp, data = await post(client, {**CHAT, "max_tokens": 98})  # 3 + 98 tokens
    assert resp.status == 429
    assert_openai_error(data, "tokens", "rate_limit_exceeded")
    assert data["error"]["message"].startswith("Request too large for gpt-4o")
    assert "retry-after" not in resp.headers


async def test_daily_limit(make_client: MakeClient) -> None:
    client = await make_client(rpd=1)
    assert (await post(client))[0].status == 200
    resp, data = await post(client)
    assert resp.status == 429
    assert "on requests per day (RPD)" in data["error"]["message"]
    assert resp.headers["retry-after"] == "86400"
    assert not any(h in resp.headers for h in RATE_HEADERS)


async def test_unlimited_has_no_rate_headers(make_client: MakeClient) -> None:
    client = await make_client(rpm=10)
    resp, _ = await post(client)
    assert resp.headers["x-ratelimit-limit-requests"] == "10"
    assert "x-ratelimit-limit-tokens" not in resp.headers
    assert resp.headers["x-request-id"].startswith("req_")
    assert "openai-processing-ms" in resp.headers


async def test_request_ids_are_unique(make_client: MakeClient) -> None:
    client = await make_client()
    ids = {(await post(client))[0].headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


async def test_insufficient_quota(make_client: MakeClient) -> None:
    client = await make_client(insufficient_quota=True)
    resp, data = await post(client)
    assert resp.status == 429
    assert_openai_error(data, "insufficient_quota", "insufficient_quota")
    assert data["error"]["message"].startswith("You exceeded your current quota")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"model": "gpt-4o"}, "messages"),
        ({"messages": CHAT["messages"]}, "model"),
    ],
    ids=["bad-json", "not-an-object", "no-messages", "no-model"],
)
async def test_400(make_client: MakeClient, body: Any, param: str | None) -> None:
    client = await make_client()
    resp, data = await post(client, body)
    assert resp.status == 400
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["param"] == param


async def test_unreadable_image_is_400(make_client: MakeClient) -> None:
    client = await make_client(tpm=1_000_000)
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [part]}]}
    resp, data = await post(client, body)
    assert resp.status == 400
    assert_openai_error(data, "invalid_request_error", "invalid_image_format")
    stats = await (await client.get("/stats")).json()
    assert stats["tokens_charged"] == 0


async def test_404_unknown_model(make_client: MakeClient) -> None:
    client = await make_client(models=frozenset({"gpt-4o-mini"}))
    resp, data = await post(client)
    assert resp.status == 404
    assert_openai_error(data, "invalid_request_error", "model_not_found")


async def test_azure_route(make_client: MakeClient) -> None:
    client = await make_client(api_key=KEY)
    path = "/openai/deployments/my-gpt/chat/completions"
    body = {"messages": CHAT["messages"]}
    versioned = path + "?api-version=2024-06-01"
    resp, data = await post(client, body, versioned, headers={"api-key": KEY})
    assert resp.status == 200 and data["model"] == "my-gpt"
    resp, _ = await post(client, body, path, headers={"api-key": KEY})
    assert resp.status == 400
    bearer = {"Authorization": f"Bearer {KEY}"}
    resp, data = await post(client, body, versioned, headers=bearer)
    assert resp.status == 401 and KEY not in orjson.dumps(data).decode()
    emb = "/openai/deployments/emb/embeddings?api-version=2024-06-01"
    resp, _ = await post(client, {"input": "x"}, emb, headers={"api-key": KEY})
    assert resp.status == 200


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors(make_client: MakeClient, status: int) -> None:
    client = await make_client(**{f"fail_{status}": 1.0})
    resp, data = await post(client)
    assert resp.status == status
    assert_openai_error(data, "server_error", None)
    assert data["error"]["message"].startswith("The server had an error")


async def test_truncate_cuts_the_stream(make_client: MakeClient) -> None:
    # The headers promise the whole body; half of it arrives, then the connection closes.
    client = await make_client(truncate=1.0)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200 and int(resp.headers["Content-Length"]) > 100
    with pytest.raises(aiohttp.ClientPayloadError, match="content length"):
        await resp.read()
    stats = await (await client.get("/stats")).json()
    assert stats["truncated"] == 1 and stats["ok"] == 0 and stats["by_status"] == {"200": 1}


async def test_truncate_at_the_socket(make_client: MakeClient) -> None:
    # Below aiohttp: fewer body bytes than Content-Length, then EOF (not a reset).
    client = await make_client(truncate=1.0)
    body = orjson.dumps(CHAT)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)  # to EOF
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    assert head.startswith(b"HTTP/1.1 200") and 0 < len(rest) < length


async def test_reset_drops_connection(make_client: MakeClient) -> None:
    client = await make_client(reset=1.0)
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post("/v1/chat/completions", json=CHAT)
    stats = await (await client.get("/stats")).json()
    assert stats["resets"] == 1 and stats["requests"] == 1 and stats["by_status"] == {}


async def test_hang_until_client_gives_up(make_client: MakeClient) -> None:
    client = await make_client(hang=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await client.post("/v1/chat/completions", json=CHAT, timeout=aiohttp.ClientTimeout(0.05))
    assert (await (await client.get("/stats")).json())["hangs"] == 1


async def test_faults_are_seeded(make_client: MakeClient) -> None:
    async def statuses(seed: int) -> list[int]:
        client = await make_client(seed=seed, fail_500=0.3, fail_503=0.3)
        return [(await post(client))[0].status for _ in range(20)]

    first = await statuses(7)
    assert first == await statuses(7)
    assert {200, 500, 503} == set(first)


async def test_seeded_faults_do_not_depend_on_timing(make_client: MakeClient) -> None:
    """The n-th request judged meets the same fault in every run of a seed, however the
    requests interleave: the faults draw from a stream of their own, not one shared with
    the latency jitter and the answers (which finish in whatever order the clock says),
    so a test's "a reset happens" holds on a loaded machine as on an idle one."""
    config = {"seed": 5, "fail_500": 0.2, "reset": 0.2, "latency_jitter_ms": 20}

    async def faults(concurrent: bool) -> list[int]:
        client = await make_client(**config)
        if concurrent:  # 30 at once: answers draw lengths as their jitter lets them finish
            await asyncio.gather(*(status_or_reset(client) for _ in range(30)))
        else:
            for _ in range(30):
                await status_or_reset(client)
        stats = client.app[STATS_KEY]
        return [stats.by_status.get(500, 0), stats.resets, stats.ok]

    one_by_one = await faults(concurrent=False)
    assert one_by_one[0] > 0 and one_by_one[1] > 0
    for _ in range(3):
        assert await faults(concurrent=True) == one_by_one


async def status_or_reset(client: TestClient[Any, Any]) -> None:
    try:
        resp = await client.post("/v1/chat/completions", json=CHAT)
        await resp.read()
    except aiohttp.ClientError:
        pass  # a reset: counted by the server


async def test_latency(make_client: MakeClient) -> None:
    client = await make_client(latency_ms=5)
    start = time.monotonic()
    await post(client)
    assert time.monotonic() - start >= 0.005


async def test_stats_and_reset(make_client: MakeClient) -> None:
    client = await make_client(rpm=1)
    await post(client)
    await post(client)
    await post(client, b"{")
    stats = await (await client.get("/stats")).json()
    assert stats == {
        "requests": 3,
        "ok": 1,
        "n_429": 1,
        "n_5xx": 0,
        "resets": 0,
        "hangs": 0,
        "truncated": 0,
        "outage": 0,
        "tokens_charged": cost_of(CHAT, "/v1/chat/completions"),
        "by_status": {"200": 1, "429": 1, "400": 1},
        "models": {"gpt-4o": {
            "admitted": 1, "refused": 1, "tokens": cost_of(CHAT, "/v1/chat/completions"),
            "first": stats["models"]["gpt-4o"]["first"],
            "last": stats["models"]["gpt-4o"]["last"]}},
    }
    app_stats = client.app[STATS_KEY]
    assert isinstance(app_stats, MockStats) and app_stats.by_status[429] == 1
    assert client.app["stats"] is app_stats
    cleared = await (await client.post("/reset-stats")).json()
    assert cleared["requests"] == 0 and cleared["by_status"] == {} and cleared["models"] == {}


@pytest.mark.parametrize(
    "config",
    [
        {"rpm": 0.5},
        {"tpm": 0},
        {"fail_500": 1.5},
        {"reset": 0.6, "hang": 0.6},
        {"initial_fill": 2.0},
        {"embedding_dim": 0},
    ],
    ids=["rpm", "tpm", "prob", "sum", "fill", "dim"],
)
def test_config_rejects_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MockConfig(**config)


async def test_serve_until_cancelled() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    task = asyncio.create_task(serve(MockConfig(), port=port))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    resp = await session.get(f"http://127.0.0.1:{port}/v1/models")
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.01)
            assert resp.status == 200
            resp.release()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_announces_and_stops_quietly_on_ctrl_c() -> None:
    code = "from processor.testing import MockConfig, run; run(MockConfig(), '127.0.0.1', 0)"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
        assert line.startswith("mock server listening on http://127.0.0.1:")
        base = line.split()[-1]
        async with aiohttp.ClientSession() as session, session.get(base + "/models") as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stderr.read(), 10)
        await proc.wait()
    assert proc.returncode == 0 and rest == b""


async def status_of(client: TestClient[Any, Any]) -> int:
    """The status of one chat request (whatever the body: JSON or a proxy's HTML)."""
    resp = await client.post("/v1/chat/completions", json=CHAT)
    resp.release()
    return resp.status


async def test_outage_window_answers_502_html(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(outage_at=10, outage_for=5)
    assert await status_of(client) == 200
    clock.now += 10
    resp = await client.post("/v1/chat/completions", json=CHAT)
    text = await resp.text()
    assert resp.status == 502 and resp.content_type == "text/html"
    assert "<title>502 Bad Gateway</title>" in text and "x-request-id" not in resp.headers
    models = await client.get("/v1/models")
    assert models.status == 502
    clock.now += 4.999
    assert await status_of(client) == 502
    clock.now += 0.001
    assert await status_of(client) == 200
    stats = await (await client.get("/stats")).json()  # /stats itself is not behind it
    # API requests only, like "requests" (GET /v1/models is not counted)
    assert stats["outage"] == 2 and stats["by_status"] == {"200": 2, "502": 2}
    assert stats["requests"] == 4 and stats["n_5xx"] == 2


async def test_outage_is_not_charged(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(rpm=2, outage_at=0, outage_for=1)
    for _ in range(5):
        assert await status_of(client) == 502
    clock.now += 1
    statuses = [await status_of(client) for _ in range(3)]
    assert statuses == [200, 200, 429]  # the full bucket of 2 was still there


async def test_outage_reset_mode(make_client: MakeClient) -> None:
    client = await make_client(outage_at=0, outage_for=3600, outage_mode="reset")
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post("/v1/chat/completions", json=CHAT)
    stats = await (await client.get("/stats")).json()
    assert stats["outage"] == 1 and stats["resets"] == 0 and stats["by_status"] == {}


async def test_outage_mixed_mode_gives_both(make_client: MakeClient) -> None:
    client = await make_client(outage_at=0, outage_for=3600, outage_mode="mixed", seed=3)
    seen = set()
    for _ in range(20):
        try:
            seen.add((await client.post("/v1/chat/completions", json=CHAT)).status)
        except aiohttp.ClientConnectionError:
            seen.add("reset")
    assert seen == {502, "reset"}


@pytest.mark.parametrize(
    "config",
    [{"outage_at": -1, "outage_for": 5}, {"outage_at": 0, "outage_for": -1},
     {"outage_mode": "down"}],
    ids=["at", "for", "mode"],
)
def test_config_rejects_bad_outage(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MockConfig(**config)


def test_cli_outage_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[MockConfig] = []
    monkeypatch.setattr("processor.testing.run",
                        lambda config, host, port, *batch: seen.append(config))
    args = ["mock-server", "--port", "0", "--outage-at", "30", "--outage-for", "5",
            "--outage-mode", "reset", "--truncate", "0.1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (config.outage_at, config.outage_for, config.outage_mode) == (30, 5, "reset")
    assert config.truncate == 0.1


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--outage-mode", "down"], "--outage-mode"), (["--outage-at", "-1"], "--outage-at"),
     (["--fail-500", "2"], "fault probabilities")],
    ids=["mode", "negative", "probability"],
)
def test_cli_refuses_bad_mock_options(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                      message: str) -> None:
    monkeypatch.setattr("processor.testing.run", lambda *a: pytest.fail("server started"))
    result = CliRunner().invoke(app, ["mock-server", *args])
    assert result.exit_code == 2 and message in result.output


async def _cli_run(api: Any, tmp_path: Path, n: int) -> tuple[int, str, Path]:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    proc = await start_cli(job, api.base_url, "--max-attempts", "8", max_in_flight=8)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode(), job


@pytest.mark.slow
async def test_cli_survives_cut_streams(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(truncate=0.1, seed=11)
    code, err, job = await _cli_run(api, tmp_path, 30)
    assert code == 0, err
    results = read_jsonl(tmp_path / "job.results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(30))
    assert all(r["response"]["status_code"] == 200 for r in results)
    assert api.stats.truncated > 0 and api.stats.ok == 30


@pytest.mark.slow
async def test_cli_rides_out_a_short_outage(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(outage_at=0, outage_for=0.5, outage_mode="mixed", seed=2,
                         outage_from_first_request=True)  # however long the CLI takes to start
    code, err, job = await _cli_run(api, tmp_path, 20)
    assert code == 0, err
    results = read_jsonl(tmp_path / "job.results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(20))
    assert api.stats.outage > 0 and api.stats.ok == 20
    assert not (tmp_path / "job.errors.jsonl").exists() or not read_jsonl(
        tmp_path / "job.errors.jsonl")
