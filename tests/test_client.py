"""The HTTP client: URLs, auth headers, header parsing and the verdict on each answer
(processor.client.http), against aioresponses."""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses
from yarl import URL

from processor.client.http import (
    OpenAIClient,
    RateLimitInfo,
    Response,
    azure_url,
    is_azure_url,
    join_url,
    parse_duration,
    parse_retry_after,
)
from processor.errors import (
    APIError,
    APITimeout,
    AuthError,
    BadRequest,
    FatalAPIError,
    QuotaExceeded,
    RateLimited,
    RetryableAPIError,
    ServerError,
)

BASE = "https://api.example.test/v1"
ENDPOINT = "/v1/chat/completions"
URL_ = f"{BASE}/chat/completions"
KEY = "sk-test-SECRET-0123456789abcdef"
PAYLOAD = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}


# aiohttp 3.14 made ``stream_writer`` a required argument of ClientResponse, and
# aioresponses (0.7.9 and earlier) does not pass it: pnuckowski/aioresponses#289. Supply
# a stand-in only where aiohttp asks for it, so this keeps working once either side moves.
_NEEDS_STREAM_WRITER = (
    "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters
)


class _CompatResponse(aiohttp.ClientResponse):
    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if _NEEDS_STREAM_WRITER:
            kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class _Mocked(aioresponses):
    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(url, method, *args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with _Mocked() as m:
        yield m


def err(message: str, code: str | None = None, type_: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message}
    if code is not None:
        error["code"] = code
    if type_ is not None:
        error["type"] = type_
    return {"error": error}


async def post_once(mocked: aioresponses, *, api_key: str | None = KEY, **reply: Any) -> Response:
    mocked.post(URL_, **reply)
    async with OpenAIClient(BASE, api_key) as client:
        return await client.post(ENDPOINT, PAYLOAD)


def sent_headers(mocked: aioresponses, url: str = URL_) -> Any:
    (call,) = mocked.requests[("POST", URL(url))]
    return call.kwargs["headers"]


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("2m", 120.0),
        ("0.5s", 0.5),
        ("1.5ms", 0.0015),
        ("1s20ms", 1.02),
        ("0s", 0.0),
        ("17", 17.0),
        ("0.25", 0.25),
        ("  3s  ", 3.0),
        ("", None),
        ("   ", None),
        ("garbage", None),
        ("ms", None),
        ("5x", None),
        ("1m30", None),
        ("s1", None),
        ("1s garbage", None),
        ("-1s", None),
    ],
    ids=[
        "20ms", "1s", "6m0s", "1h2m3.5s", "2m", "fraction-s", "fraction-ms", "s-and-ms",
        "zero", "bare-int", "bare-float", "padded", "empty", "blank", "garbage", "unit-only",
        "bad-unit", "trailing-number", "unit-first", "trailing-garbage", "negative",
    ],
)
def test_parse_duration(text: str, expected: float | None) -> None:
    result = parse_duration(text)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def _http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"retry-after-ms": "1500"}, 1.5, 1.5),
        ({"retry-after-ms": "20", "retry-after": "9"}, 0.02, 0.02),
        ({"retry-after-ms": "junk", "retry-after": "2"}, 2.0, 2.0),
        ({"retry-after": "3"}, 3.0, 3.0),
        ({"retry-after": "0.5"}, 0.5, 0.5),
        ({"retry-after": "-4"}, 0.0, 0.0),
        ({"retry-after-ms": "-10"}, 0.0, 0.0),
    ],
    ids=["ms", "ms-wins", "bad-ms-falls-back", "seconds", "fraction", "negative-seconds",
         "negative-ms"],
)
def test_parse_retry_after(headers: dict[str, str], low: float, high: float) -> None:
    value = parse_retry_after(headers)
    assert value is not None
    assert low - 1e-9 <= value <= high + 1e-9


@pytest.mark.parametrize(("offset", "low", "high"), [(30, 28.0, 31.0), (-3600, 0.0, 0.0)],
                         ids=["future", "past"])
def test_parse_retry_after_http_date(offset: int, low: float, high: float) -> None:
    # The date is made here, not at collection: a long suite would age it.
    value = parse_retry_after({"retry-after": _http_date(offset)})
    assert value is not None
    assert low - 1e-9 <= value <= high + 1e-9


@pytest.mark.parametrize(
    "headers",
    [{}, {"retry-after": "soon"}, {"retry-after": ""}, {"x-other": "1"}],
    ids=["absent", "garbage", "empty", "unrelated"],
)
def test_parse_retry_after_none(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"x-ratelimit-remaining-requests": "5"}, None),
        (
            {
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-remaining-tokens": "29950",
                "x-ratelimit-reset-requests": "120ms",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            RateLimitInfo(500, 30000, 499, 29950, 0.12, 360.0),
        ),
        (
            {"x-ratelimit-limit-tokens": "90000", "x-ratelimit-reset-tokens": "1s"},
            RateLimitInfo(None, 90000, None, None, None, 1.0),
        ),
        (
            {"x-ratelimit-limit-requests": "lots", "x-ratelimit-reset-requests": "soon",
             "x-ratelimit-remaining-requests": "7"},
            RateLimitInfo(None, None, 7, None, None, None),
        ),
    ],
    ids=["none", "remaining-only", "all-six", "tokens-only", "unparseable"],
)
def test_rate_limit_info_from_headers(
    headers: dict[str, str], expected: RateLimitInfo | None
) -> None:
    info = RateLimitInfo.from_headers(headers)
    if expected is None:
        assert info is None
        return
    assert info is not None
    for field in ("limit_requests", "limit_tokens", "remaining_requests", "remaining_tokens",
                  "reset_requests", "reset_tokens"):
        want = getattr(expected, field)
        got = getattr(info, field)
        assert got == (pytest.approx(want) if want is not None else None), field


@pytest.mark.parametrize(
    ("base", "endpoint", "expected"),
    [
        ("https://api.openai.com/v1", "/v1/chat/completions",
         "https://api.openai.com/v1/chat/completions"),
        ("https://api.openai.com/v1", "/chat/completions",
         "https://api.openai.com/v1/chat/completions"),
        ("https://api.openai.com/v1/", "/v1/embeddings", "https://api.openai.com/v1/embeddings"),
        ("https://api.openai.com/v1/", "chat/completions",
         "https://api.openai.com/v1/chat/completions"),
        ("http://127.0.0.1:8000/v1", "/v1/chat/completions",
         "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000", "/v1/chat/completions",
         "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8000/", "/v1/responses", "http://127.0.0.1:8000/v1/responses"),
        ("http://host/openai/v1", "/v1/embeddings", "http://host/openai/v1/embeddings"),
        ("http://host/api", "/v1/chat/completions", "http://host/api/v1/chat/completions"),
        ("http://host/v1", "/v10/models", "http://host/v1/v10/models"),
        ("http://host/v1", "/v1", "http://host/v1"),
        ("http://host/v1?token=abc", "/v1/chat/completions",
         "http://host/v1/chat/completions?token=abc"),
        ("http://host/v1/?a=1&b=2", "/embeddings", "http://host/v1/embeddings?a=1&b=2"),
        ("http://host/v1?token=abc", "/v1/files?purpose=batch",
         "http://host/v1/files?purpose=batch&token=abc"),
    ],
    ids=["no-doubled-v1", "versionless-endpoint", "trailing-slash", "no-leading-slash",
         "local-server", "base-without-version", "base-slash-only", "prefixed-base",
         "other-base-path", "v10-is-not-v1", "endpoint-is-the-version", "base-query-kept",
         "base-query-trailing-slash", "both-queries"],
)
def test_join_url(base: str, endpoint: str, expected: str) -> None:
    assert join_url(base, endpoint) == expected


# --------------------------------------------------------------------------- status verdicts


async def test_200_json_is_a_response(mocked: aioresponses) -> None:
    resp = await post_once(
        mocked, status=200, payload=COMPLETION,
        headers={"x-request-id": "req_abc", "x-ratelimit-limit-requests": "60",
                 "x-ratelimit-reset-tokens": "20ms"},
    )
    assert isinstance(resp, Response)
    assert resp.status == 200
    assert resp.body == COMPLETION
    assert resp.request_id == "req_abc"
    assert resp.ratelimit is not None
    assert resp.ratelimit.limit_requests == 60
    assert resp.ratelimit.reset_tokens == pytest.approx(0.02)


async def test_200_without_rate_headers_or_request_id(mocked: aioresponses) -> None:
    resp = await post_once(mocked, status=200, payload=COMPLETION)
    assert resp.ratelimit is None
    assert resp.request_id is None


async def test_azure_request_id_header(mocked: aioresponses) -> None:
    resp = await post_once(mocked, status=200, payload=COMPLETION,
                           headers={"apim-request-id": "azure-1"})
    assert resp.request_id == "azure-1"


@pytest.mark.parametrize(
    "body",
    [b'{"id": "chatcmpl-1", "choi', b"", b"<html>ok</html>", b'{"a": 1}{'],
    ids=["truncated", "empty", "html", "trailing-garbage"],
)
async def test_2xx_without_valid_json_is_a_server_error(mocked: aioresponses, body: bytes) -> None:
    with pytest.raises(ServerError) as info:
        await post_once(mocked, status=200, body=body, headers={"x-request-id": "req_t"})
    assert info.value.status == 200
    assert info.value.request_id == "req_t"
    assert ("not valid JSON" if body else "an empty body") in info.value.message


STATUS_TABLE = [
    (429, err("Rate limit reached", "rate_limit_exceeded", "requests"), {}, RateLimited, None),
    (429, err("slow down"), {"retry-after-ms": "250"}, RateLimited, 0.25),
    (429, err("slow down"), {"retry-after": "7"}, RateLimited, 7.0),
    (429, err("slow down"), {"retry-after-ms": "1500", "retry-after": "2"}, RateLimited, 1.5),
    (429, err("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
     {}, QuotaExceeded, None),
    (429, err("out of credit", None, "insufficient_quota"), {}, QuotaExceeded, None),
    (408, err("timeout"), {}, ServerError, None),
    (409, err("conflict"), {}, ServerError, None),
    (500, err("The server had an error"), {}, ServerError, None),
    (502, err("bad gateway"), {}, ServerError, None),
    (503, err("overloaded"), {"retry-after": "4"}, ServerError, 4.0),
    (504, err("gateway timeout"), {}, ServerError, None),
    (401, err("Incorrect API key provided", "invalid_api_key"), {}, AuthError, None),
    (403, err("forbidden"), {}, AuthError, None),
    (400, err("bad param", "invalid_request_error"), {}, BadRequest, None),
    (404, err("The model does not exist", "model_not_found"), {}, BadRequest, None),
    (422, err("unprocessable"), {}, BadRequest, None),
    (413, err("too large"), {}, BadRequest, None),
]
STATUS_IDS = [
    "429", "429-retry-after-ms", "429-retry-after-s", "429-ms-wins", "429-quota-code",
    "429-quota-type", "408", "409", "500", "502", "503-retry-after", "504", "401", "403",
    "400", "404", "422", "413",
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "exc_type", "retry_after"), STATUS_TABLE, ids=STATUS_IDS
)
async def test_status_to_exception(
    mocked: aioresponses,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    exc_type: type[APIError],
    retry_after: float | None,
) -> None:
    with pytest.raises(APIError) as info:
        await post_once(mocked, status=status, payload=body,
                        headers={"x-request-id": "req_e", **headers})
    exc = info.value
    assert type(exc) is exc_type
    assert exc.status == status
    assert exc.body == body
    assert exc.request_id == "req_e"
    assert exc.message == f"HTTP {status}: {body['error']['message']}"
    if retry_after is None:
        assert exc.retry_after is None
    else:
        assert exc.retry_after == pytest.approx(retry_after)


async def test_429_with_http_date_retry_after(mocked: aioresponses) -> None:
    with pytest.raises(RateLimited) as info:
        await post_once(mocked, status=429, payload=err("slow"),
                        headers={"retry-after": _http_date(20)})
    assert info.value.retry_after is not None
    assert 18.0 <= info.value.retry_after <= 21.0


@pytest.mark.parametrize(
    ("status", "body", "exc_type", "message", "parsed"),
    [
        (500, b"", ServerError, "HTTP 500: no message", None),
        (502, b"<html>Bad Gateway</html>", ServerError, "HTTP 502: <html>Bad Gateway</html>",
         "<html>Bad Gateway</html>"),
        (400, b'{"error": "plain string"}', BadRequest, "HTTP 400: plain string",
         {"error": "plain string"}),
        (404, b'{"detail": "Not Found"}', BadRequest, "HTTP 404: no message",
         {"detail": "Not Found"}),
        (429, b"", RateLimited, "HTTP 429: no message", None),
    ],
    ids=["empty", "html", "string-error", "fastapi-detail", "429-empty"],
)
async def test_error_bodies_that_are_not_openai_shaped(
    mocked: aioresponses,
    status: int,
    body: bytes,
    exc_type: type[APIError],
    message: str,
    parsed: Any,
) -> None:
    with pytest.raises(exc_type) as info:
        await post_once(mocked, status=status, body=body)
    assert info.value.message == message
    assert info.value.body == parsed


@pytest.mark.parametrize(
    ("exc_type", "retryable"),
    [(RateLimited, True), (ServerError, True), (APITimeout, True), (AuthError, False),
     (BadRequest, False), (QuotaExceeded, False)],
    ids=["rate-limited", "server", "timeout", "auth", "bad-request", "quota"],
)
def test_error_tree(exc_type: type[APIError], retryable: bool) -> None:
    assert issubclass(exc_type, RetryableAPIError if retryable else FatalAPIError)


# --------------------------------------------------------------------------- transport errors


@pytest.mark.parametrize(
    ("raised", "exc_type"),
    [
        (aiohttp.ClientConnectionError("connection refused"), APITimeout),
        (aiohttp.ServerDisconnectedError(), APITimeout),
        (asyncio.TimeoutError(), APITimeout),
        (aiohttp.ServerTimeoutError("read timeout"), APITimeout),
        (ConnectionResetError(104, "reset by peer"), APITimeout),
        (aiohttp.ClientPayloadError("response payload is not completed"), ServerError),
    ],
    ids=["connection-error", "disconnected", "timeout", "server-timeout", "reset",
         "payload-cut"],
)
async def test_transport_errors_are_mapped(
    mocked: aioresponses, raised: Exception, exc_type: type[APIError]
) -> None:
    with pytest.raises(APIError) as info:
        await post_once(mocked, exception=raised)
    assert type(info.value) is exc_type
    assert info.value.status is None
    assert info.value.__cause__ is raised


# --------------------------------------------------------------------------- the key


async def test_key_echoed_in_an_error_body_is_redacted(mocked: aioresponses) -> None:
    body = err(f"Incorrect API key provided: {KEY}. Find your key at ...", "invalid_api_key")
    with pytest.raises(AuthError) as info:
        await post_once(mocked, status=401, payload=body)
    exc = info.value
    assert KEY not in str(exc)
    assert KEY not in exc.message
    assert KEY not in repr(exc.body)
    assert "***" in exc.message


@pytest.mark.parametrize(
    ("status", "body", "exc_type"),
    [
        (500, f"proxy error; request had Authorization: Bearer {KEY}", ServerError),
        (400, f'{{"error": {{"message": "bad header {KEY}"}}}}', BadRequest),
        (200, f'{{"echo": "{KEY}", "trunc', ServerError),
    ],
    ids=["text-500", "json-400", "truncated-200"],
)
async def test_key_never_appears_in_any_error(
    mocked: aioresponses, status: int, body: str, exc_type: type[APIError]
) -> None:
    with pytest.raises(exc_type) as info:
        await post_once(mocked, status=status, body=body)
    exc = info.value
    assert KEY not in str(exc)
    assert KEY not in repr(exc.body)
    assert KEY not in repr(vars(exc))


async def test_key_echoed_in_a_success_body_is_redacted(mocked: aioresponses) -> None:
    resp = await post_once(mocked, status=200, payload={"echo": KEY, **COMPLETION})
    assert KEY not in orjson.dumps(resp.body).decode()
    assert resp.body["echo"] == "***"


@pytest.mark.parametrize(
    "raised",
    [
        aiohttp.ClientConnectionError(f"cannot connect, key={KEY}"),
        aiohttp.ClientPayloadError(f"cut short for {KEY}"),
        OSError(f"socket error {KEY}"),
    ],
    ids=["connection", "payload", "oserror"],
)
async def test_key_in_a_transport_error_is_redacted(
    mocked: aioresponses, raised: Exception
) -> None:
    with pytest.raises(APIError) as info:
        await post_once(mocked, exception=raised)
    assert KEY not in str(info.value)
    assert "***" in str(info.value)


def test_repr_hides_the_key() -> None:
    client = OpenAIClient(BASE, KEY)
    assert KEY not in repr(client)
    assert BASE in repr(client)


# --------------------------------------------------------------------------- headers


async def test_bearer_auth_and_payload_are_sent(mocked: aioresponses) -> None:
    await post_once(mocked, status=200, payload=COMPLETION)
    (call,) = mocked.requests[("POST", URL(URL_))]
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert "api-key" not in headers
    assert headers["Content-Type"] == "application/json"
    assert call.kwargs["data"] == PAYLOAD


AZURE = "https://res.openai.azure.com"
AZURE_URL = f"{AZURE}/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


async def test_azure_sends_api_key_header_to_the_deployment(mocked: aioresponses) -> None:
    mocked.post(AZURE_URL, status=200, payload=COMPLETION)
    async with OpenAIClient(AZURE, KEY, azure=True) as client:
        await client.post(ENDPOINT, PAYLOAD, model="gpt-4o")
    headers = sent_headers(mocked, AZURE_URL)
    assert headers["api-key"] == KEY
    assert "Authorization" not in headers


@pytest.mark.parametrize(
    ("base", "endpoint", "model", "expected"),
    [
        (AZURE, "/v1/chat/completions", "gpt-4o", AZURE_URL),
        (AZURE + "/", "/v1/embeddings", "emb 3",
         f"{AZURE}/openai/deployments/emb%203/embeddings?api-version=V"),
        (f"{AZURE}/openai/deployments/mine", "/v1/chat/completions", "ignored",
         f"{AZURE}/openai/deployments/mine/chat/completions?api-version=V"),
        (f"{AZURE}/openai/v1", "/v1/chat/completions", "gpt-4o",
         f"{AZURE}/openai/v1/chat/completions"),
        (f"{AZURE}/openai/deployments/d?api-version=X", "/v1/chat/completions", "m",
         f"{AZURE}/openai/deployments/d/chat/completions?api-version=X"),
        (f"{AZURE}/openai/deployments/d/chat/completions?api-version=X", "/v1/chat/completions",
         "m", f"{AZURE}/openai/deployments/d/chat/completions?api-version=X"),
        (f"{AZURE}/openai", "/v1/chat/completions", "m",
         f"{AZURE}/openai/deployments/m/chat/completions?api-version=V"),
    ],
    ids=["deployment-from-model", "quoted-deployment", "deployment-in-base", "azure-v1-api",
         "base-with-query", "portal-target-uri", "base-ends-in-openai"],
)
def test_azure_url(base: str, endpoint: str, model: str, expected: str) -> None:
    version = "2024-10-21" if expected == AZURE_URL else "V"
    assert azure_url(base, endpoint, model, version) == expected


def test_azure_without_deployment_or_model_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="deployment"):
        azure_url(AZURE, "/v1/chat/completions", None, "V")


@pytest.mark.parametrize(
    ("url", "expected"),
    [("https://x.openai.azure.com", True), ("https://x.cognitiveservices.azure.com/", True),
     ("https://api.openai.com/v1", False), ("http://127.0.0.1:8000/v1", False)],
    ids=["openai-azure", "cognitiveservices", "openai", "local"],
)
def test_is_azure_url(url: str, expected: bool) -> None:
    assert is_azure_url(url) is expected


async def test_no_key_sends_no_auth(mocked: aioresponses) -> None:
    await post_once(mocked, api_key=None, status=200, payload=COMPLETION)
    headers = sent_headers(mocked)
    assert "Authorization" not in headers
    assert "api-key" not in headers


async def test_extra_headers_are_sent(mocked: aioresponses) -> None:
    mocked.post(URL_, status=200, payload=COMPLETION)
    async with OpenAIClient(BASE, KEY, headers={"OpenAI-Organization": "org-1"}) as client:
        await client.post(ENDPOINT, PAYLOAD)
    headers = sent_headers(mocked)
    assert headers["OpenAI-Organization"] == "org-1"
    assert headers["Authorization"] == f"Bearer {KEY}"


async def test_requests_go_to_the_joined_url(mocked: aioresponses) -> None:
    mocked.post("http://127.0.0.1:8000/v1/embeddings", status=200, payload={"data": []},
                repeat=2)
    async with OpenAIClient("http://127.0.0.1:8000/v1/", KEY) as client:
        assert client.url_for("/v1/embeddings") == "http://127.0.0.1:8000/v1/embeddings"
        await client.post("/v1/embeddings", b"{}")
        await client.post("embeddings", b"{}")
    assert len(mocked.requests[("POST", URL("http://127.0.0.1:8000/v1/embeddings"))]) == 2


async def test_one_session_is_reused_and_closed(mocked: aioresponses) -> None:
    mocked.post(URL_, status=200, payload=COMPLETION, repeat=True)
    client = OpenAIClient(BASE, KEY)
    await client.post(ENDPOINT, PAYLOAD)  # opens a session lazily
    await client.post(ENDPOINT, PAYLOAD)
    await client.aclose()
    await client.aclose()  # idempotent
    assert len(mocked.requests[("POST", URL(URL_))]) == 2


async def test_errors_carry_the_rate_limit_headers(mocked: aioresponses) -> None:
    with pytest.raises(RateLimited) as info:
        await post_once(mocked, status=429, payload=err("slow"),
                        headers={"x-ratelimit-limit-requests": "100",
                                 "x-ratelimit-limit-tokens": "40000",
                                 "x-ratelimit-reset-tokens": "1m0s"})
    info_ = info.value.ratelimit
    assert isinstance(info_, RateLimitInfo)
    assert (info_.limit_requests, info_.limit_tokens) == (100, 40000)
    assert info_.reset_tokens == pytest.approx(60.0)


async def test_errors_without_rate_limit_headers(mocked: aioresponses) -> None:
    with pytest.raises(BadRequest) as info:
        await post_once(mocked, status=400, payload=err("nope"))
    assert info.value.ratelimit is None


async def test_a_short_key_is_not_masked_everywhere(mocked: aioresponses) -> None:
    # A one-letter test key would turn every "k" in every answer into "***".
    resp = await post_once(mocked, api_key="k", status=200, payload={"text": "kkk ok"})
    assert resp.body == {"text": "kkk ok"}


@pytest.mark.parametrize(
    ("message", "headers", "expected"),
    [
        ("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
         "2024-02-01 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
         "Please retry after 6 seconds.", {}, 6.0),
        ("Rate limit reached for gpt-4o. Please try again in 1.2s. Visit ...", {}, 1.2),
        ("Please try again in 20ms.", {}, 0.02),
        ("Rate limit reached for gpt-4o on requests per day (RPD): Limit 10000, Used 10000, "
         "Requested 1. Please try again in 8m38.4s. Visit ...", {}, 518.4),
        ("Please retry after 6 seconds.", {"retry-after-ms": "250"}, 0.25),
        ("Too many requests.", {}, None),
    ],
    ids=["azure-words", "openai-words", "milliseconds", "per-day-duration", "header-wins",
         "no-hint"],
)
def test_429_retry_hint_in_words(message: str, headers: dict[str, str],
                                 expected: float | None) -> None:
    from processor.client.http import classify

    body = orjson.dumps({"error": {"code": "429", "message": message}})
    with pytest.raises(RateLimited) as info:
        classify(429, body, headers)
    assert info.value.retry_after == (pytest.approx(expected) if expected else None)


def test_request_too_large_429_is_not_retried() -> None:
    from processor.client.http import classify

    body = orjson.dumps({"error": {"message": "Request too large for gpt-4o on tokens per min "
                                   "(TPM): Limit 30000, Requested 50000.", "code": None}})
    with pytest.raises(BadRequest) as info:
        classify(429, body, {"retry-after": "1"})
    assert info.value.code == "request_too_large"


@pytest.mark.parametrize(
    ("body", "error"),
    [({"error": {"message": "upstream failed"}}, True), ({"error": "boom"}, True),
     ({"object": "response", "error": None, "output": []}, False),
     ({"object": "list", "data": [], "error": {"message": "partial"}}, False)],
    ids=["error-object", "error-string", "responses-null-error", "data-wins"],
)
def test_2xx_with_an_error_body(body: Any, error: bool) -> None:
    from processor.client.http import classify

    if error:
        with pytest.raises(ServerError):
            classify(200, orjson.dumps(body), {})
    else:
        assert classify(200, orjson.dumps(body), {}).body == body


async def test_a_base_url_with_a_query_reaches_the_endpoint(mock_api: Any,
                                                            tmp_path: Path) -> None:
    # A gateway's base URL with a query (?token=...): the endpoint goes into the path, the
    # query stays a query (it was joined as ".../v1?token=x/chat/completions").
    from tests.conftest import chat_line, read_jsonl, start_cli, write_jsonl

    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    proc = await start_cli(job, api.base_url + "?gateway=batchproc-test", "--rpm", "off",
                           "--tpm", "off")
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert api.stats.requests == 3
    assert len(read_jsonl(tmp_path / "job.results.jsonl")) == 3
