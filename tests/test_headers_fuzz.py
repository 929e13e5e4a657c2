"""No header value may crash or hang the client's parsers (issue 9, items 6/7).

classify(), parse_retry_after, RateLimitInfo.from_headers and parse_duration are fed
arbitrary values: each returns (finite, non-negative, at most MAX_WAIT) or raises an
APIError, never anything else.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from processor.client.http import (
    MAX_WAIT,
    RateLimitInfo,
    Response,
    classify,
    parse_duration,
    parse_retry_after,
)
from processor.errors import APIError, RateLimited, ServerError

ABSURD = [
    "1e17", "1e308", "1e309", "-1e308", "inf", "-inf", "nan", "NaN", "Infinity", " 5", "5 ",
    "-5", "0", "-0", "0.001", "1e-300", "5e-324", "", " ", "9" * 400, "0x10", "1_000",
    "٣", "５", "1e17s", "1e308h", "9" * 400 + "h", "1h" * 60, "-1s", "1.5.5s", "ms",
    "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
    "Mon, 01 Jan 0001 00:00:00 -2359", "Fri, 31 Dec 9999 23:59:59 +2359",
    "Mon, 99999999999999999999 Jan 2020 00:00:00 GMT", "Mon, 32 Jan 2020 00:00:00 GMT",
    "Wed, 21 Oct 2015 07:28:00 -0000", "Thu, 01 Jan 1970 00:00:00 +9999",
    "\x00", "é", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    "x" * 100_000, "retry after 5 seconds",
]
HEADER_NAMES = [
    "retry-after", "retry-after-ms", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-request-id",
    "apim-request-id", "content-type",
]
values = st.one_of(st.sampled_from(ABSURD), st.text(max_size=60),
                   st.floats().map(str), st.integers().map(str),
                   st.from_regex(r"\A(\d{1,30}(\.\d{1,5})?(ms|h|m|s)){1,4}\Z"))
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), values, max_size=len(HEADER_NAMES))
statuses = st.sampled_from([200, 201, 204, 299, 400, 401, 403, 404, 408, 409, 422, 429, 500,
                            502, 503, 504, 599, 600, 999]) | st.integers(100, 999)
bodies = st.sampled_from([
    b"", b"null", b"[]", b"42", b'"ok"', b"<html>502</html>", b"{", b"\xff\xfe",
    orjson.dumps({"error": {"message": "Please retry after 1e308 seconds", "code": 5}}),
    orjson.dumps({"error": {"message": "try again in 9999999999h", "code": None}}),
    orjson.dumps({"error": {"message": "Request too large", "code": "x"}}),
    orjson.dumps({"error": {"message": 5, "code": "insufficient_quota"}}),
    orjson.dumps({"error": "plain"}),
    orjson.dumps({"id": "chatcmpl-1", "choices": [], "usage": {}}),
    orjson.dumps({"error": None, "choices": []}),
])


def _ok_wait(value: float | None) -> None:
    assert value is None or (math.isfinite(value) and 0.0 <= value <= MAX_WAIT)


@pytest.mark.parametrize("value", ABSURD)
def test_absurd_values_of_every_header(value: str) -> None:
    for name in ("retry-after", "retry-after-ms"):
        _ok_wait(parse_retry_after({name: value}))
    _ok_wait(parse_duration(value))
    info = RateLimitInfo.from_headers({n: value for n in HEADER_NAMES[2:8]})
    assert info is not None
    for number in (info.limit_requests, info.limit_tokens, info.remaining_requests,
                   info.remaining_tokens):
        assert number is None or (math.isfinite(number) and number >= 0)
    _ok_wait(info.reset_requests)
    _ok_wait(info.reset_tokens)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"retry-after": "1e17"}, MAX_WAIT), ({"retry-after-ms": "1e17"}, MAX_WAIT),
     ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, MAX_WAIT),
     ({"retry-after": "Mon, 01 Jan 0001 00:00:00 GMT"}, 0.0),
     ({"retry-after": "Mon, 01 Jan 0001 00:00:00 -2359"}, 0.0),
     ({"retry-after": "inf"}, None), ({"retry-after": "nan"}, None),
     ({"retry-after-ms": "nan", "retry-after": " 5"}, 5.0),
     ({"retry-after": "Mon, 99999999999999999999 Jan 2020 00:00:00 GMT"}, None)],
    ids=["1e17-s", "1e17-ms", "year-9999", "year-1", "year-1-offset", "inf", "nan",
         "nan-ms-falls-back", "huge-day"],
)
def test_absurd_pauses_are_clamped(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_absurd_durations_are_clamped() -> None:
    assert parse_duration("1e17") == MAX_WAIT
    assert parse_duration("99999999h") == MAX_WAIT
    assert parse_duration("9" * 400 + "s") is None  # longer than any real duration
    assert parse_duration("nan") is None
    assert parse_duration("inf") is None  # not a number of seconds at all


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers)
@example({"retry-after": "Mon, 01 Jan 0001 00:00:00 -2359"})
@example({"x-ratelimit-limit-requests": "1e309", "x-ratelimit-reset-tokens": "1e308h"})
def test_header_parsers_never_crash(h: dict[str, str]) -> None:
    _ok_wait(parse_retry_after(h))
    info = RateLimitInfo.from_headers(h)
    if info is not None:
        _ok_wait(info.reset_requests)
        _ok_wait(info.reset_tokens)
    for value in h.values():
        _ok_wait(parse_duration(value))


@settings(max_examples=400, deadline=None)
@given(statuses, bodies, headers)
def test_classify_returns_or_raises_an_api_error(status: int, body: bytes,
                                                 h: dict[str, str]) -> None:
    try:
        result: Any = classify(status, body, CIMultiDict(h))
    except APIError as exc:
        _ok_wait(exc.retry_after)
        assert isinstance(exc.message, str)
        orjson.dumps(exc.body)  # whatever it holds can be written to the errors file
    else:
        assert isinstance(result, Response) and 200 <= status < 300
        assert isinstance(result.body, dict)


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"", "an empty body"), (b"[]", "a JSON list, not an object"),
     (b"null", "a JSON NoneType, not an object"), (b'"ok"', "a JSON str, not an object"),
     (b"<html><body>Bad gateway</body></html>", "not valid JSON (text/html"),
     (b'{"a":' + b"[" * 300 + b"]" * 300 + b"}", "nested deeper than 200 levels")],
    ids=["empty", "list", "null", "string", "html", "too-deep"],
)
def test_2xx_bodies_that_are_not_answers(body: bytes, message: str) -> None:
    with pytest.raises(ServerError) as info:
        classify(200, body, CIMultiDict({"content-type": "text/html; charset=utf-8"}))
    assert message in info.value.message
    orjson.dumps({"response": {"body": info.value.body}})  # writable


def test_a_deep_error_body_is_kept_as_text() -> None:
    raw = b'{"error":' + b"[" * 300 + b"]" * 300 + b"}"
    with pytest.raises(ServerError) as info:
        classify(500, raw, {})
    assert isinstance(info.value.body, str)
    orjson.dumps({"response": {"body": info.value.body}})


def test_429_with_an_absurd_hint_in_words_is_clamped() -> None:
    body = orjson.dumps({"error": {"message": "Please try again in 99999999999h."}})
    with pytest.raises(RateLimited) as info:
        classify(429, body, {})
    assert info.value.retry_after == MAX_WAIT
