"""A small scriptable OpenAI-like server on loopback for the engine's hostile cases.

It answers chat completions the way the real API and the proxies in front of it do:
Cloudflare's HTML 502 page, OpenAI's JSON 500 / 503 bodies, 429 with OpenAI's
rate-limit body and ``retry-after`` / ``x-ratelimit-*`` headers, and 200 with a chat
completion and ``usage``. What it does is set on the object while it runs (down until
a time, refuse some requests, state some limits); it counts what it saw.

(The engine helper's own fixture; the lead may fold it into a shared hostile server.)
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

CLOUDFLARE_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)
OPENAI_503 = {"error": {"message": "The server is overloaded or not ready yet.",
                        "type": "server_error", "param": None, "code": None}}
OPENAI_500 = {"error": {"message": "The server had an error while processing your request. "
                        "Sorry about that!", "type": "server_error", "param": None, "code": None}}


def rate_limit_body(kind: str = "requests") -> dict[str, object]:
    return {"error": {
        "message": f"Rate limit reached for gpt-4o-mini in organization org-test on {kind} per "
                   "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
                   "https://platform.openai.com/account/rate-limits to learn more.",
        "type": kind, "param": None, "code": "rate_limit_exceeded"}}


@dataclass
class Hostile:
    """What the server does; change the fields while it runs."""

    #: answer 502 / 503 / 500 (in turn) while the loop's time is below this.
    down_until: float = 0.0
    #: answer every request (even after down_until) with an outage error.
    down: bool = False
    #: requests whose body contains this text get a 429 (with the headers below).
    refuse_text: str | None = None
    #: how many times each such request is refused (0: always).
    refuse_times: int = 1
    #: the status of those refusals (429, or 503 for a maintenance Retry-After).
    refuse_status: int = 429
    #: headers sent with each refusal (retry-after, x-ratelimit-*, ...).
    refuse_headers: dict[str, str] = field(default_factory=dict)
    #: headers sent with every answer (x-ratelimit-* limits, say).
    headers: dict[str, str] = field(default_factory=dict)
    #: requests whose body contains this text always get a 500 (a request-specific bug).
    poison_text: str | None = None
    # -- what it saw
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    refused: Counter[bytes] = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    in_flight_while_down: list[int] = field(default_factory=list)
    _errors: itertools.cycle[int] = field(default_factory=lambda: itertools.cycle((502, 503, 500)))

    def _outage_answer(self) -> web.Response:
        status = next(self._errors)
        self.statuses[status] += 1
        if status == 502:
            return web.Response(status=502, text=CLOUDFLARE_502, content_type="text/html",
                                headers={"server": "cloudflare"})
        body = OPENAI_503 if status == 503 else OPENAI_500
        return web.json_response(body, status=status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.005)
            loop = asyncio.get_running_loop()
            if self.down or loop.time() < self.down_until:
                self.in_flight_while_down.append(self.in_flight)
                return self._outage_answer()
            if self.poison_text is not None and self.poison_text.encode() in raw:
                self.statuses[500] += 1
                return web.json_response(OPENAI_500, status=500)
            if self.refuse_text is not None and self.refuse_text.encode() in raw and (
                self.refuse_times == 0 or self.refused[raw] < self.refuse_times
            ):
                self.refused[raw] += 1
                self.statuses[self.refuse_status] += 1
                body = rate_limit_body() if self.refuse_status == 429 else OPENAI_503
                return web.json_response(body, status=self.refuse_status,
                                         headers={**self.headers, **self.refuse_headers})
            body = orjson.loads(raw)
            text = body["messages"][-1]["content"]
            self.statuses[200] += 1
            return web.json_response({
                "id": f"chatcmpl-{self.requests}", "object": "chat.completion",
                "created": 1700000000, "model": body.get("model", "gpt-4o-mini"),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": f"answer to {text}"}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            }, headers={"x-request-id": f"req_{self.requests}", **self.headers})
        finally:
            self.in_flight -= 1


@dataclass
class Running:
    server: TestServer
    api: Hostile

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/v1"))


@pytest.fixture
async def hostile() -> AsyncIterator[Running]:
    api = Hostile()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", api.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Running(server, api)
    await server.close()
