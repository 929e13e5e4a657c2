"""A hostile OpenAI-compatible test server, and a "foreign host" that records who reached it.

``api = await hostile_api()`` (the fixture) starts two ``aiohttp.web`` apps on loopback:

- the API on 127.0.0.1, which answers like OpenAI (chat completions, completions,
  embeddings, responses; ``usage``, ``x-request-id`` and ``x-ratelimit-*`` headers) unless
  a *behaviour* takes the request over;
- a foreign host on 127.0.0.2 (stands in for another machine), which answers every
  request with a plausible 200 and records it (method, path, headers, body) in
  ``api.foreign``: a client that follows a redirect there, or leaks a key there, shows
  up in that list.

Every request that reaches the API is recorded too (``api.requests``).

A behaviour is ``async (request, api) -> web.StreamResponse | None``; None falls
through to the normal answer. Set one with ``api.use(behaviour)`` or
``hostile_api(behaviour)``. The factories below build the usual ones; to add a mode,
write another factory (no change to the server needed):

- :func:`redirect` 3xx to the foreign host, a relative path, an absolute URL, or no Location
- :func:`echo` the request's headers echoed back in JSON with every character ``\\u``-escaped
- :func:`html` a text/html page (a proxy's 200 or 502: nginx's or Cloudflare's), optionally
  echoing headers as entities
- :func:`server_error` OpenAI's JSON 500 / 503 bodies, or a proxy's HTML 502 page
- :func:`huge` a valid answer of N MB, with or without Content-Length
- :func:`bomb` a small gzip body that inflates to N MB
- :func:`endless` a chunked body that never ends (bounded by ``seconds``), or drips slowly
- :func:`outage` 502/503/500 or connection resets for a number of seconds (or for good), then OK
- :func:`limits` answers whose ``x-ratelimit-*`` headers hold given (absurd) values
- :func:`pause` 429s (or a 503) with given ``retry-after`` / ``retry-after-ms`` / other headers
- :func:`when` any of these for the requests whose body passes a test, normal for the rest:
  ``when(lambda body: b"number 7?" in body, server_error(500))`` fails one request for good

Options of the server itself (set on ``api`` while it runs, or ``hostile_api(latency=...)``):
``api.headers`` are added to every answer the API gives itself (not to 5xx pages), over the
defaults (``x-ratelimit-*`` limits, say); ``api.latency`` seconds pass before each answer, so
requests overlap. What it saw: ``api.requests`` in arrival order, ``api.answers`` in answer
order (each with its ``status`` and ``in_flight``, the requests being handled when it was
answered), ``api.statuses`` (a Counter) and ``api.peak_in_flight``.

Loopback only; every loop is bounded in time or bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

__all__ = [
    "Behaviour", "Hostile", "Seen", "bomb", "echo", "endless", "escape_json", "hostile_api", "html",
    "huge", "limits", "outage", "pause", "redirect", "server_error", "when",
]

FOREIGN_HOST = "127.0.0.2"
_JSON = "application/json"

Behaviour = Callable[[web.Request, "Hostile"], Awaitable[web.StreamResponse | None]]


@dataclass
class Seen:
    """One request as a server received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)  # repeats kept
    #: the status it was answered with (None until answered, or for a reset).
    status: int | None = None
    #: how many requests the API was handling (this one included) when it was answered.
    in_flight: int = 0


@dataclass
class Hostile:
    """The running pair of servers (see the module docstring)."""

    server: TestServer
    foreign_server: TestServer
    behaviour: Behaviour | None = None
    requests: list[Seen] = field(default_factory=list)
    foreign: list[Seen] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: added to every answer the API gives itself (below 500), over the defaults.
    headers: dict[str, str] = field(default_factory=dict)
    #: seconds each request waits before it is answered (0: at once).
    latency: float = 0.0
    #: the requests answered, in the order they were answered.
    answers: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    @property
    def statuses(self) -> Counter[int]:
        """How many answers of each status the API gave."""
        return Counter(s.status for s in self.answers if s.status is not None)

    @property
    def base_url(self) -> str:
        """The API's base URL, ``http://127.0.0.1:PORT/v1``."""
        return str(self.server.make_url("/v1"))

    @property
    def root(self) -> str:
        """The API's URL without ``/v1`` (Azure-style base URLs)."""
        return str(self.server.make_url(""))

    @property
    def foreign_root(self) -> str:
        """``http://127.0.0.2:PORT``: the foreign host."""
        return str(self.foreign_server.make_url(""))

    def use(self, behaviour: Behaviour | None) -> None:
        """Answer from now on with ``behaviour`` (None: normal answers)."""
        self.behaviour = behaviour

    def next_id(self) -> int:
        return next(self.ids)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = _seen(request, body)
        self.requests.append(seen)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            seen.in_flight = self.in_flight
            answer: web.StreamResponse | None = None
            if self.behaviour is not None:
                answer = await self.behaviour(request, self)
            if answer is None:
                answer = ok_response(request, body, self)
            if self.headers and not answer.prepared and answer.status < 500:
                answer.headers.update(self.headers)
            sent = answer.prepared or (request.transport is not None
                                       and not request.transport.is_closing())
            seen.status = answer.status if sent else None  # None: reset, nothing sent
            self.answers.append(seen)
            return answer
        finally:
            self.in_flight -= 1


def _seen(request: web.Request, body: bytes) -> Seen:
    return Seen(request.method, request.path, request.query_string,
                {k: v for k, v in request.headers.items()}, body,
                list(request.headers.items()))


# -- normal answers ------------------------------------------------------------------

def ratelimit_headers(limit_requests: str = "10000", limit_tokens: str = "1000000",
                      remaining_requests: str = "9999", remaining_tokens: str = "999000",
                      reset_requests: str = "6ms", reset_tokens: str = "60ms") -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, as strings (absurd values welcome)."""
    return {
        "x-ratelimit-limit-requests": limit_requests,
        "x-ratelimit-limit-tokens": limit_tokens,
        "x-ratelimit-remaining-requests": remaining_requests,
        "x-ratelimit-remaining-tokens": remaining_tokens,
        "x-ratelimit-reset-requests": reset_requests,
        "x-ratelimit-reset-tokens": reset_tokens,
    }


def answer_body(path: str, request_body: bytes, n: int, content: str = "Hello!") -> dict[str, Any]:
    """An OpenAI-shaped success body for ``path`` (chat by default)."""
    try:
        data = orjson.loads(request_body) if request_body else {}
    except orjson.JSONDecodeError:
        data = {}
    model = data.get("model", "gpt-4o-mini") if isinstance(data, dict) else "gpt-4o-mini"
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    created = int(time.time())
    if path.endswith("/embeddings"):
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
                "usage": {"prompt_tokens": 9, "total_tokens": 9}}
    if path.endswith("/responses"):
        return {"id": f"resp_{n}", "object": "response", "created_at": created, "model": model,
                "status": "completed", "error": None,
                "output": [{"type": "message", "id": f"msg_{n}", "status": "completed",
                            "role": "assistant",
                            "content": [{"type": "output_text", "text": content,
                                         "annotations": []}]}],
                "usage": {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}}
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return {"id": f"cmpl-{n}", "object": "text_completion", "created": created,
                "model": model, "usage": usage,
                "choices": [{"index": 0, "text": content, "finish_reason": "stop",
                             "logprobs": None}]}
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": created,
            "model": model, "usage": usage, "system_fingerprint": "fp_hostile",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}]}


def ok_response(request: web.Request, body: bytes, api: Hostile,
                headers: dict[str, str] | None = None) -> web.Response:
    n = api.next_id()
    h = {"x-request-id": f"req_{n}", "openai-processing-ms": "5", **ratelimit_headers()}
    h.update(headers or {})
    return web.Response(body=orjson.dumps(answer_body(request.path, body, n)),
                        content_type=_JSON, headers=h)


def openai_error(status: int, message: str, type_: str, code: str | None,
                 headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON,
                        headers=headers)


OPENAI_500 = "The server had an error while processing your request. Sorry about that!"
OPENAI_503 = "The server is overloaded or not ready yet."
PROXY_502 = {
    "nginx": ("<html><head><title>502 Bad Gateway</title></head><body><center>"
              "<h1>502 Bad Gateway</h1></center><hr><center>nginx</center>{extra}"
              "</body></html>"),
    "cloudflare": ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                   "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare"
                   "</center>\r\n{extra}</body>\r\n</html>\r\n"),
}


def escape_json(text: str) -> str:
    """A JSON string literal for ``text`` with EVERY character as a ``\\uXXXX`` escape
    (surrogate pairs above the BMP): the same string once decoded, no byte of it raw."""
    out = []
    for ch in text:
        code = ord(ch)
        if code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return '"' + "".join(out) + '"'


# -- behaviours ----------------------------------------------------------------------

def redirect(status: int = 302, to: str = "foreign", *, keep_path: bool = True,
             query: str = "") -> Behaviour:
    """Answer ``status`` with a Location: ``to`` is ``"foreign"`` (the foreign host,
    absolute), ``"relative"`` (``/moved`` + the path on this host), ``"none"`` (no
    Location at all) or any URL. ``query`` (e.g. ``"api-key=sk-..."``) is appended."""

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse:
        path = request.path if keep_path else "/"
        if to == "foreign":
            location: str | None = api.foreign_root.rstrip("/") + path
        elif to == "relative":
            location = "/moved" + path
        elif to == "none":
            location = None
        else:
            location = to
        if location is not None and query:
            location += ("&" if "?" in location else "?") + query
        headers = {"x-request-id": f"req_redirect_{api.next_id()}"}
        if location is not None:
            headers["Location"] = location
        return web.Response(status=status, headers=headers, content_type="text/html",
                            text=f"<html><body>Moved: {location}</body></html>")

    return behaviour


def echo(status: int = 200) -> Behaviour:
    """The request's headers echoed in the answer, every character ``\\u``-escaped: in the
    message content, as an object of name -> value, and as value -> name (keys too).
    ``status`` >= 400 puts them in an OpenAI error body instead."""

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse:
        headers = dict(request.headers)
        listing = "; ".join(f"{k}: {v}" for k, v in headers.items())
        by_name = ",".join(f"{escape_json(k)}:{escape_json(v)}" for k, v in headers.items())
        by_value = ",".join(f"{escape_json(v)}:{escape_json(k)}" for k, v in headers.items())
        n = api.next_id()
        if status >= 400:
            raw = ('{"error":{"message":' + escape_json("You sent " + listing)
                   + ',"type":"invalid_request_error","param":null,"code":null},'
                   '"echo":{' + by_name + '},"seen":{' + by_value + "}}")
        else:
            raw = ('{"id":"chatcmpl-' + str(n) + '","object":"chat.completion","created":'
                   + str(int(time.time())) + ',"model":"gpt-4o-mini","choices":[{"index":0,'
                   '"message":{"role":"assistant","content":' + escape_json(listing)
                   + '},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":9,'
                   '"completion_tokens":3,"total_tokens":12},"echo":{' + by_name
                   + '},"seen":{' + by_value + "}}")
        # The request id echoes the auth header too (escaped headers cannot; raw can).
        rid = "req_" + headers.get("Authorization", headers.get("api-key", str(n)))[-40:]
        return web.Response(status=status, body=raw.encode(), content_type=_JSON,
                            headers={"x-request-id": rid, **ratelimit_headers()})

    return behaviour


def html(status: int = 200, *, echo_headers: bool = False, proxy: str = "nginx") -> Behaviour:
    """A text/html page as proxies send (``status`` 200, 502, ...); ``echo_headers`` puts
    the request's headers in it as HTML character references (``&#115;k-...``). ``proxy``
    is whose 502 page it is: ``"nginx"`` or ``"cloudflare"`` (with ``server: cloudflare``)."""
    page = PROXY_502[proxy]
    headers = {"server": "cloudflare"} if proxy == "cloudflare" else None

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse:
        extra = ""
        if echo_headers:
            listing = "; ".join(f"{k}: {v}" for k, v in request.headers.items())
            extra = "<pre>" + "".join(f"&#{ord(c)};" for c in listing) + "</pre>"
        # The proxy's 502 page, whatever the status (a proxy passes its error page on with 200).
        return web.Response(status=status, text=page.format(extra=extra),
                            content_type="text/html", headers=headers)

    return behaviour


def huge(mb: float, *, content_length: bool = True) -> Behaviour:
    """A valid chat answer of about ``mb`` MB (a long content string), sent in 1 MiB
    pieces, with a Content-Length or chunked. The server never holds it whole."""
    size = int(mb * 1_000_000)

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse:
        head = orjson.dumps(answer_body(request.path, b"", api.next_id(), content="@"))
        before, _, after = head.partition(b'"@"')
        before += b'"'
        after = b'"' + after
        pad = max(0, size - len(before) - len(after))
        resp = web.StreamResponse(headers={"Content-Type": _JSON, **ratelimit_headers()})
        if content_length:
            resp.content_length = len(before) + pad + len(after)
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"a" * (1 << 20)
        try:
            await resp.write(before)
            while pad > 0:
                piece = block[: min(pad, len(block))]
                await resp.write(piece)
                pad -= len(piece)
            await resp.write(after)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: that is what a capped client does
        return resp

    return behaviour


def bomb(mb: float) -> Behaviour:
    """A 200 whose gzip body is tiny on the wire (a Content-Length of some KB) but
    inflates to ``mb`` MB: the cap must count decoded bytes, not the header."""
    import gzip

    inflated = int(mb * 1_000_000)
    head = b'{"id":"chatcmpl-bomb","object":"chat.completion","pad":"'
    packed = gzip.compress(head + b"a" * inflated + b'"}', compresslevel=9)

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse:
        return web.Response(body=packed, headers={
            "Content-Type": _JSON, "Content-Encoding": "gzip", **ratelimit_headers()})

    return behaviour


def endless(*, chunk: int = 1 << 16, interval: float = 0.0, seconds: float = 30.0) -> Behaviour:
    """A 200 whose chunked JSON body never ends: ``chunk`` bytes every ``interval``
    seconds until the client hangs up or ``seconds`` pass (the bound of the test)."""

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": _JSON, **ratelimit_headers()})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"a" * chunk
        deadline = time.monotonic() + seconds
        try:
            await resp.write(b'{"id":"chatcmpl-endless","object":"chat.completion","pad":"')
            while time.monotonic() < deadline:
                await resp.write(block)
                await asyncio.sleep(interval)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    return behaviour


def server_error(status: int = 500, *, proxy: str = "nginx") -> Behaviour:
    """A server error: 502 as the ``proxy``'s HTML page (see :func:`html`), others as
    OpenAI's JSON error body (500: "The server had an error...", 503: "overloaded")."""
    page = html(502, proxy=proxy)

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse:
        if status == 502:
            return await page(request, api)
        message = OPENAI_500 if status == 500 else OPENAI_503
        return openai_error(status, message, "server_error", None)

    return behaviour


def outage(seconds: float, statuses: Sequence[int] = (502, 503), *,
           reset: bool = False, proxy: str = "nginx", failing: int = 0) -> Behaviour:
    """For ``seconds`` from the first request (``math.inf``: for good), and for at least
    the first ``failing`` requests however slowly they come (a loaded machine may take
    longer than a short outage between two attempts), every request fails: ``statuses``
    in turn (as :func:`server_error` answers them, 502 being the ``proxy``'s page), or a
    connection reset (``reset``); then normal answers."""
    errors = [server_error(status, proxy=proxy) for status in statuses]
    state: dict[str, float] = {}
    turn = itertools.count()

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse | None:
        start = state.setdefault("start", time.monotonic())
        failed = state.setdefault("failed", 0)
        if time.monotonic() - start >= seconds and failed >= failing:
            return None
        state["failed"] = failed + 1
        if reset:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        return await errors[next(turn) % len(errors)](request, api)

    return behaviour


def limits(**values: str) -> Behaviour:
    """Normal answers whose ``x-ratelimit-*`` headers hold the given strings, e.g.
    ``limits(limit_requests="0.001", limit_tokens="1e-300", remaining_requests=" 5")``
    (keyword names as in :func:`ratelimit_headers`)."""
    headers = ratelimit_headers(**values)

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse:
        return ok_response(request, await request.read(), api, headers)

    return behaviour


def pause(*, retry_after: str | None = None, retry_after_ms: str | None = None,
          times: int | None = None, status: int = 429,
          headers: Mapping[str, str] | None = None,
          message: str = "Rate limit reached for gpt-4o-mini "
          "on requests per min (RPM): Limit 3, Used 3, Requested 1.") -> Behaviour:
    """429 (OpenAI's body, ``x-ratelimit-*`` with none remaining) with the given
    ``retry-after`` / ``retry-after-ms`` strings (e.g. ``"1e17"``, ``"inf"``, an HTTP date
    in year 9999) and any other ``headers``, for the first ``times`` requests (None: all),
    then normal answers. ``status=503`` is a maintenance pause instead: OpenAI's 503 body
    with the same headers (no ``x-ratelimit-*``)."""
    count = itertools.count()

    async def behaviour(request: web.Request, api: Hostile) -> web.StreamResponse | None:
        if times is not None and next(count) >= times:
            return None
        sent = ratelimit_headers(remaining_requests="0") if status == 429 else {}
        if retry_after is not None:
            sent["retry-after"] = retry_after
        if retry_after_ms is not None:
            sent["retry-after-ms"] = retry_after_ms
        sent.update(headers or {})
        if status != 429:
            return openai_error(status, OPENAI_503, "server_error", None, sent)
        return openai_error(429, message, "requests", "rate_limit_exceeded", sent)

    return behaviour


# -- servers -------------------------------------------------------------------------

async def start_hostile(behaviour: Behaviour | None = None, *, latency: float = 0.0) -> Hostile:
    """Start the API (127.0.0.1) and the foreign host (127.0.0.2); close both with
    :func:`stop_hostile`. ``latency``: see :attr:`Hostile.latency`."""
    foreign_seen: list[Seen] = []

    async def foreign(request: web.Request) -> web.Response:
        body = await request.read()
        foreign_seen.append(_seen(request, body))
        answer = answer_body(request.path, body, 0, content="ANSWER FROM THE FOREIGN HOST")
        return web.Response(body=orjson.dumps(answer), content_type=_JSON)

    foreign_app = web.Application()
    foreign_app.router.add_route("*", "/{tail:.*}", foreign)
    foreign_server = TestServer(foreign_app, host=FOREIGN_HOST)
    await foreign_server.start_server()

    holder: list[Hostile] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        return await holder[0]._handle(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api = Hostile(server, foreign_server, behaviour, foreign=foreign_seen, latency=latency)
    holder.append(api)
    return api


async def stop_hostile(api: Hostile) -> None:
    await api.server.close()
    await api.foreign_server.close()


@pytest.fixture
async def hostile_api() -> AsyncIterator[Callable[..., Awaitable[Hostile]]]:
    """``api = await hostile_api(redirect(301))``: a hostile API and its foreign host
    (``hostile_api(latency=0.005)``: each answer 5 ms late)."""
    started: list[Hostile] = []

    async def start(behaviour: Behaviour | None = None, *, latency: float = 0.0) -> Hostile:
        api = await start_hostile(behaviour, latency=latency)
        started.append(api)
        return api

    yield start
    for api in started:
        await stop_hostile(api)


def when(test: Callable[[bytes], bool], behaviour: Behaviour) -> Behaviour:
    """``behaviour`` for the requests whose body passes ``test``, normal answers for the
    rest: ``when(lambda body: b"BIG" in body, huge(20))``."""

    async def chosen(request: web.Request, api: Hostile) -> web.StreamResponse | None:
        if test(await request.read()):
            return await behaviour(request, api)
        return None

    return chosen
