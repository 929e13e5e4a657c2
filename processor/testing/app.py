"""The mock server's routes: one handler per endpoint, the checks in OpenAI's order.

A request meets, in turn: the outage (a load balancer in front answers first), the key,
the body, the model, quota, pricing and the rate limiter, then a random fault, the
latency, and the answer.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .._types import Clock
from . import bodies
from .batchjobs import BatchMockConfig, BatchStore
from .batchroutes import add_batch_routes
from .bodies import Answers, error_body
from .config import STATS_KEY, MockConfig, MockStats, OutageMode
from .faults import Fault, Faults, abort, hang, send_truncated
from .inputs import embeddings_problem
from .limiter import Limiter
from .pricing import price

__all__ = ["build_app", "run", "serve"]

_JSON = "application/json"
#: kind -> (path under /v1, the body's required field)
ENDPOINTS = {
    "chat": ("/chat/completions", "messages"),
    "completions": ("/completions", "prompt"),
    "embeddings": ("/embeddings", "input"),
    "responses": ("/responses", "input"),
}
_DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Server:
    """The server's state and handlers; one per application."""

    def __init__(self, config: MockConfig, clock: Clock) -> None:
        self.config = config
        self.stats = MockStats()
        self.clock = clock
        rng = random.Random(config.seed)
        self.rng = rng
        now = clock()
        self.limiter = Limiter(config.rpm, config.tpm, config.rpd, config.tpd,
                               initial_fill=config.initial_fill,
                               count_rejected=config.count_rejected, now=now)
        # Each model named in model_limits has buckets of its own, as OpenAI counts.
        self.limiters = {model: Limiter(*limits, initial_fill=config.initial_fill,
                                        count_rejected=config.count_rejected, now=now)
                         for model, limits in config.model_limits.items()}
        # The faults draw from a stream of their own: the n-th request judged meets the
        # same fault whatever was drawn in between (the jitter and answer lengths of
        # requests that finished first), so a seed's faults do not depend on timing.
        seed = None if config.seed is None else f"faults:{config.seed}"
        self.faults = Faults(config, random.Random(seed), now)
        self.answers = Answers(rng, config.embedding_dim)

    def _reply(self, status: int, body: bytes, headers: dict[str, str],
               start: float) -> web.Response:
        self.stats.count_status(status)
        headers["openai-processing-ms"] = str(int((self.clock() - start) * 1000))
        headers["Content-Type"] = _JSON
        return web.Response(status=status, body=body, headers=headers)

    def _auth(self, request: web.Request, azure: bool) -> bytes | None:
        """The 401 body for a missing, wrong or revoked key (Bearer, or Azure ``api-key``)."""
        cfg = self.config
        if cfg.api_key is None and not cfg.revoked_keys:
            return None
        if azure:
            key = request.headers.get("api-key")
        else:
            auth = request.headers.get("Authorization", "")
            key = auth[7:] if auth.startswith("Bearer ") else None
        if key not in cfg.revoked_keys and cfg.api_key in (None, key):
            return None
        return error_body(bodies.BAD_KEY, "invalid_request_error", "invalid_api_key")

    def _outage(self, request: web.Request, now: float, count: bool = True
                ) -> web.Response | None:
        """During the outage: the load balancer's 502, or a reset; else ``None``.

        ``count``: count it in the stats (API requests; not ``GET /v1/models``).
        """
        action = self.faults.outage_action(now)
        if action is None:
            return None
        if count:
            self.stats.outage += 1
            if action is OutageMode.BAD_GATEWAY:
                self.stats.count_status(502)
        if action is OutageMode.RESET:
            return abort(request)
        return web.Response(status=502, body=bodies.BAD_GATEWAY_HTML,
                            content_type="text/html", charset="utf-8")

    async def _parse(self, request: web.Request, azure: bool, required: str
                     ) -> tuple[dict[str, Any], str] | tuple[int, bytes]:
        """The body and model; or the status and error body of a request to refuse."""
        problem = self._auth(request, azure)
        if problem is not None:
            return 401, problem
        if azure and "api-version" not in request.query:
            message = "Missing required query parameter: 'api-version'."
            return 400, error_body(message, "invalid_request_error", None, "api-version")
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            return 400, error_body(bodies.BAD_JSON, "invalid_request_error", None)
        model = request.match_info["deployment"] if azure else data.get("model")
        for name, value in ((required, data.get(required)), ("model", model)):
            if value is None or value == [] or value == "":
                message = f"Missing required parameter: '{name}'."
                code = "missing_required_parameter"
                return 400, error_body(message, "invalid_request_error", code, name)
        model = str(model)
        cfg = self.config
        if cfg.models is not None and model not in cfg.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return 404, error_body(message, "invalid_request_error", "model_not_found")
        if cfg.insufficient_quota:
            return 429, error_body(bodies.QUOTA, "insufficient_quota", "insufficient_quota")
        return data, model

    def handler(self, kind: str, azure: bool) -> _Handler:
        """The request handler of one endpoint (``kind`` keys ``ENDPOINTS``)."""
        required = ENDPOINTS[kind][1]
        answer = self.answers.builder(kind)
        cfg = self.config

        async def handle(request: web.Request) -> web.StreamResponse:
            start = self.clock()
            self.stats.requests += 1
            down = self._outage(request, start)
            if down is not None:
                return down
            headers = {"x-request-id": self.answers.request_id()}
            parsed = await self._parse(request, azure, required)
            if isinstance(parsed[0], int):
                status, problem = parsed
                return self._reply(status, problem, headers, start)
            data, model = parsed
            if model in cfg.overloaded_models:
                message = f"The model `{model}` is currently overloaded. Please try again later."
                body = error_body(message, "requests", "rate_limit_exceeded")
                headers |= {"retry-after-ms": "20", "retry-after": "1"}
                return self._reply(429, body, headers, start)
            if kind == "embeddings":
                refused_input = embeddings_problem(data, cfg.embedding_limits)
                if refused_input is not None:
                    return self._reply(400, refused_input, headers, start)
            try:
                cost = price(data, kind)
            except ValueError as exc:  # an unreadable image, say
                body = error_body(f"Invalid image: {exc}.", "invalid_request_error",
                                  "invalid_image_format")
                return self._reply(400, body, headers, start)
            refused = self.limiters.get(model, self.limiter).admit(model, cost.total, start,
                                                                   headers)
            self.stats.by_model(model, start, refused is None, cost.total)
            if refused is not None:
                return self._reply(429, refused, headers, start)
            self.stats.tokens_charged += cost.total
            fault = self.faults.draw()
            delay = cfg.latency_ms + (
                cfg.latency_jitter_ms and self.rng.random() * cfg.latency_jitter_ms)
            if delay > 0:
                await asyncio.sleep(delay / 1000)
            if fault is Fault.RESET:
                self.stats.resets += 1
                return abort(request)
            if fault is Fault.HANG:
                self.stats.hangs += 1
                return await hang(request)
            if fault in (Fault.FAIL_500, Fault.FAIL_503):
                body = error_body(bodies.SERVER_ERROR, "server_error", None)
                return self._reply(500 if fault is Fault.FAIL_500 else 503, body, headers, start)
            body = orjson.dumps(answer(data, model, cost.prompt))
            if fault is Fault.TRUNCATE:
                self.stats.truncated += 1
                reply = self._reply(200, b"", headers, start)
                return await send_truncated(request, 200, body, dict(reply.headers))
            self.stats.ok += 1
            return self._reply(200, body, headers, start)

        return handle

    async def models(self, request: web.Request) -> web.StreamResponse:
        down = self._outage(request, self.clock(), count=False)
        if down is not None:
            return down
        problem = self._auth(request, False)
        if problem is not None:
            return web.Response(status=401, body=problem, content_type=_JSON)
        names = sorted(self.config.models) if self.config.models is not None else _DEFAULT_MODELS
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in names]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def get_stats(self, request: web.Request) -> web.Response:
        body = orjson.dumps(self.stats.to_dict(), option=orjson.OPT_NON_STR_KEYS)
        return web.Response(body=body, content_type=_JSON)

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats.clear()
        return await self.get_stats(request)


def build_app(config: MockConfig, *, clock: Clock | None = None,
              batch: BatchMockConfig | None = None) -> web.Application:
    """Build the mock server's application.

    Args:
        config: how it behaves.
        clock: monotonic seconds for the rate-limit buckets and the outage window;
            ``time.monotonic`` by default. Tests pass a fake one to move time without
            sleeping. The outage counts from the clock's reading here.
        batch: how the Files and Batches API behaves (:mod:`.batchroutes`).

    Returns:
        The application; ``app["stats"]`` (also ``app[STATS_KEY]``) is its :class:`MockStats`.
    """
    server = _Server(config, clock or time.monotonic)
    app = web.Application()
    app[STATS_KEY] = server.stats
    with warnings.catch_warnings():
        # The documented string key; aiohttp prefers AppKey and warns about plain strings.
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["stats"] = server.stats
    for kind, (suffix, _) in ENDPOINTS.items():
        app.router.add_post("/v1" + suffix, server.handler(kind, azure=False))
        if kind != "responses":
            path = "/openai/deployments/{deployment}" + suffix
            app.router.add_post(path, server.handler(kind, azure=True))
    app.router.add_get("/v1/models", server.models)
    add_batch_routes(app, BatchStore(batch or BatchMockConfig(), server.clock, server.answers),
                     server._auth)
    app.router.add_get("/stats", server.get_stats)
    app.router.add_post("/reset-stats", server.reset_stats)
    return app


async def _serve(config: MockConfig, host: str, port: int, announce: bool,
                 batch: BatchMockConfig | None = None) -> None:
    # No access log (a line per request would cost more than the handler) and a short
    # shutdown, so hanging requests do not hold Ctrl-C for a minute.
    app = build_app(config, batch=batch)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        if announce:
            bound = runner.addresses[0][1] if runner.addresses else port
            print(f"mock server listening on http://{host}:{bound}/v1", file=sys.stderr)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def serve(config: MockConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the mock API until cancelled.

    Args:
        config: how the server behaves.
        host: interface to bind.
        port: TCP port to bind (0 picks a free one).
    """
    await _serve(config, host, port, announce=False)


def run(config: MockConfig, host: str = "127.0.0.1", port: int = 8000,
        batch: BatchMockConfig | None = None) -> None:
    """Serve the mock API until Ctrl-C (blocking; for the CLI).

    Prints ``mock server listening on http://HOST:PORT/v1`` to stderr once bound.

    Args:
        config: how the server behaves.
        host: interface to bind.
        port: TCP port to bind (0 picks a free one; the printed URL shows the real one).
    """
    try:
        asyncio.run(_serve(config, host, port, announce=True, batch=batch))
    except KeyboardInterrupt:
        pass
