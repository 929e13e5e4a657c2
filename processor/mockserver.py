"""An OpenAI-compatible mock server (aiohttp.web) for the demo, end-to-end tests and benchmarks.

It answers like the real API: the same JSON shapes, the same error bodies, rate limits
enforced with token buckets (``x-ratelimit-*``, ``retry-after``, ``retry-after-ms``
headers), plus injectable faults (500/503, transport resets, hangs, truncated bodies).
The request path is kept lean: orjson, no per-request logging, counters not lists.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import functools
import itertools
import math
import random
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web

from processor._types import Clock
from processor.tokens import estimate_request_cost

__all__ = [
    "STATS_KEY",
    "MockConfig",
    "MockStats",
    "build_app",
    "cost_of",
    "format_duration",
    "run",
    "serve",
]

_JSON = "application/json"
_HANG_SECONDS = 3600.0
_HANG_POLL = 0.5
_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."
_BAD_JSON = "We could not parse the JSON body of your request: it is not valid JSON."
# The real message quotes the key, masked; this one quotes no part of it.
_BAD_KEY = (
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
_ENDPOINTS = {
    "chat": ("/chat/completions", "messages"),
    "completions": ("/completions", "prompt"),
    "embeddings": ("/embeddings", "input"),
    "responses": ("/responses", "input"),
}
_DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small")


@dataclass(slots=True)
class MockConfig:
    """How the mock server behaves; each field maps to one CLI option.

    Attributes:
        rpm, tpm: requests / tokens per minute enforced (``None``: unlimited).
        rpd, tpd: requests / tokens per day enforced (``None``: unlimited).
        initial_fill: share of each per-minute bucket available at start (1.0 like OpenAI;
            0.0 as if another process had just spent it). Daily buckets start full.
        count_rejected: charge refused (429) requests against RPM/RPD, as OpenAI does.
        latency_ms, latency_jitter_ms: answer after ``latency_ms + U(0, jitter)``.
        fail_500, fail_503, reset, hang, truncate: per-request fault probabilities, mutually
            exclusive (one ``random.Random(seed)`` draw), summing to at most 1.
        seed: seeds the faults, jitter and completion lengths.
        api_key: when set, other keys (``Authorization: Bearer``, Azure ``api-key``) get 401.
        revoked_keys: keys that get 401.
        insufficient_quota: every request gets 429 ``insufficient_quota``.
        models: when set, any other model (or Azure deployment) gets 404.
        overloaded_models: models that always answer 429 (to exercise a fallback model).
        embedding_dim: length of the embedding vectors (unless the body sets ``dimensions``).

    Raises:
        ValueError: a limit below 1 request / not positive, a probability outside [0, 1].
    """

    rpm: float | None = None
    tpm: float | None = None
    rpd: float | None = None
    tpd: float | None = None
    initial_fill: float = 1.0
    count_rejected: bool = False
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_500: float = 0.0
    fail_503: float = 0.0
    reset: float = 0.0
    hang: float = 0.0
    truncate: float = 0.0
    seed: int | None = None
    api_key: str | None = None
    revoked_keys: frozenset[str] = frozenset()
    insufficient_quota: bool = False
    models: frozenset[str] | None = None
    overloaded_models: frozenset[str] = frozenset()
    embedding_dim: int = 8

    def __post_init__(self) -> None:
        faults = (self.fail_500, self.fail_503, self.reset, self.hang, self.truncate)
        if any(v is not None and v < 1 for v in (self.rpm, self.rpd)):
            raise ValueError("rpm and rpd must be at least 1")
        if any(v is not None and v <= 0 for v in (self.tpm, self.tpd)):
            raise ValueError("tpm and tpd must be positive")
        if not all(0 <= p <= 1 for p in (*faults, self.initial_fill)) or sum(faults) > 1:
            raise ValueError("fault probabilities and initial_fill must lie in [0, 1], sum <= 1")
        if min(self.latency_ms, self.latency_jitter_ms) < 0 or self.embedding_dim < 1:
            raise ValueError("latencies must be >= 0 and embedding_dim >= 1")


@dataclass(slots=True)
class MockStats:
    """Counters of what the server did (bounded memory: no per-request records).

    ``requests`` counts every POST to an API endpoint, whatever became of it. ``ok`` counts
    complete 200s; a truncated 200 counts in ``truncated`` and ``by_status[200]`` only.
    ``tokens_charged`` sums the token cost of every admitted request.
    """

    requests: int = 0
    ok: int = 0
    n_429: int = 0
    n_5xx: int = 0
    resets: int = 0
    hangs: int = 0
    truncated: int = 0
    tokens_charged: int = 0
    by_status: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the counters as a new plain dict (``by_status`` keyed by int)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return out | {"by_status": dict(self.by_status)}


#: typed key of the application's :class:`MockStats` (``app["stats"]`` holds the same object).
STATS_KEY = web.AppKey("stats", MockStats)


def cost_of(body: Mapping[str, Any], endpoint: str) -> int:
    """The tokens the server charges a request: the same formula the client estimates with.

    Args:
        body: the JSON request body.
        endpoint: the URL path, e.g. ``/v1/chat/completions``.

    Returns:
        ``estimate_request_cost(body, endpoint).total``.
    """
    return estimate_request_cost(body, endpoint).total


def format_duration(seconds: float) -> str:
    """Format a wait the way OpenAI's ``x-ratelimit-reset-*`` headers do (Go durations).

    Args:
        seconds: the duration; rounded *up* to whole milliseconds, negatives become 0.

    Returns:
        e.g. ``"0s"``, ``"20ms"``, ``"1s"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3.5s"``.
    """
    # ceil so a client that waits exactly this long finds the capacity there; the epsilon
    # keeps float noise (0.1 + 0.2) from adding a millisecond.
    total_ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if total_ms == 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) + (f".{rest % 1000:03d}".rstrip("0") if rest % 1000 else "")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class _Bucket:
    """A token bucket refilled continuously at ``capacity / period`` per second."""

    __slots__ = ("capacity", "rate", "level", "last", "unit", "label")

    def __init__(self, capacity: float, period: float, fill: float, now: float, label: str):
        self.capacity = capacity
        self.rate = capacity / period
        self.level = capacity * fill
        self.last = now
        self.unit = "tokens" if label[0] == "t" else "requests"
        self.label = label  # e.g. "tokens per min (TPM)"

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
        self.last = now

    def wait(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now); call after refill."""
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


def _error(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


class _Mock:
    """The server's state and handlers; one per application."""

    def __init__(self, config: MockConfig, clock: Clock) -> None:
        self.config = config
        self.stats = MockStats()
        self.clock = clock
        self.rng = random.Random(config.seed)
        c, now = config, clock()
        specs = (
            (c.rpm, 60.0, c.initial_fill, "requests per min (RPM)"),
            (c.tpm, 60.0, c.initial_fill, "tokens per min (TPM)"),
            (c.rpd, 86400.0, 1.0, "requests per day (RPD)"),
            (c.tpd, 86400.0, 1.0, "tokens per day (TPD)"),
        )
        self.buckets = [_Bucket(lim, per, fill, now, lab) for lim, per, fill, lab in specs if lim]
        # OpenAI's x-ratelimit-* headers describe the per-minute limits only.
        self.minute = [b for b in self.buckets if "min" in b.label]
        self.faults = list(
            itertools.accumulate((c.fail_500, c.fail_503, c.reset, c.hang, c.truncate))
        )
        self.ids = itertools.count(self.rng.getrandbits(96) << 32)

    def _reply(
        self, status: int, body: bytes, headers: dict[str, str], start: float
    ) -> web.Response:
        stats = self.stats
        stats.by_status[status] = stats.by_status.get(status, 0) + 1
        if status == 429:
            stats.n_429 += 1
        elif status >= 500:
            stats.n_5xx += 1
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
        return _error(_BAD_KEY, "invalid_request_error", "invalid_api_key")

    def _admit(self, model: str, cost: int, now: float, headers: dict[str, str]) -> bytes | None:
        """Charge every bucket and add the rate-limit headers; or return the 429 body."""
        worst: tuple[float, _Bucket, int] | None = None
        refused: bytes | None = None
        for b in self.buckets:
            b.refill(now)
            amount = cost if b.unit == "tokens" else 1
            if amount > b.capacity:
                refused = _error(
                    f"Request too large for {model} in organization org-mock on {b.label}: "
                    f"Limit {int(b.capacity)}, Requested {amount}. The input or output tokens "
                    f"must be reduced in order to run successfully. {_DOCS}",
                    b.unit,
                    "rate_limit_exceeded",
                )
                break
            wait = b.wait(amount)
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, b, amount)
        if refused is None and worst is not None:
            # Report the limit that takes longest to free up: after that wait, all have room.
            wait, b, amount = worst
            refused = _error(
                f"Rate limit reached for {model} in organization org-mock on {b.label}: "
                f"Limit {int(b.capacity)}, Used {math.ceil(b.capacity - b.level)}, "
                f"Requested {amount}. "
                f"Please try again in {format_duration(wait)}. {_DOCS}",
                b.unit,
                "rate_limit_exceeded",
            )
            headers["retry-after"] = str(math.ceil(wait - 1e-9))
            headers["retry-after-ms"] = str(math.ceil(wait * 1000 - 1e-6))
        if refused is None:
            for b in self.buckets:
                b.level -= cost if b.unit == "tokens" else 1
            self.stats.tokens_charged += cost
        elif self.config.count_rejected:
            for b in self.buckets:
                if b.unit == "requests":  # floored at 0: hammering delays, never locks out
                    b.level = max(0.0, b.level - 1)
        for b in self.minute:
            headers[f"x-ratelimit-limit-{b.unit}"] = str(int(b.capacity))
            headers[f"x-ratelimit-remaining-{b.unit}"] = str(max(0, int(b.level)))
            headers[f"x-ratelimit-reset-{b.unit}"] = format_duration(
                (b.capacity - b.level) / b.rate
            )
        return refused

    def _fault(self) -> int:
        """The fault to inject: 0=500, 1=503, 2=reset, 3=hang, 4=truncate, 5=none."""
        if self.faults[-1] == 0:
            return 5
        return bisect.bisect_right(self.faults, self.rng.random())

    def handler(self, kind: str, azure: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
        """The request handler of one endpoint (``kind`` keys ``_ENDPOINTS``)."""
        suffix, required = _ENDPOINTS[kind]
        endpoint = "/v1" + suffix
        answer: Callable[[dict[str, Any], str, int], dict[str, Any]]
        answer = getattr(self, "_answer_" + kind)
        cfg = self.config

        async def handle(request: web.Request) -> web.Response:
            start = self.clock()
            self.stats.requests += 1
            headers = {"x-request-id": f"req_{next(self.ids):032x}"}
            problem = self._auth(request, azure)
            if problem is not None:
                return self._reply(401, problem, headers, start)
            if azure and "api-version" not in request.query:
                message = "Missing required query parameter: 'api-version'."
                body = _error(message, "invalid_request_error", None, "api-version")
                return self._reply(400, body, headers, start)
            try:
                data = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                body = _error(_BAD_JSON, "invalid_request_error", None)
                return self._reply(400, body, headers, start)
            model = request.match_info["deployment"] if azure else data.get("model")
            for name, value in ((required, data.get(required)), ("model", model)):
                if value is None or value == [] or value == "":
                    message = f"Missing required parameter: '{name}'."
                    code = "missing_required_parameter"
                    body = _error(message, "invalid_request_error", code, name)
                    return self._reply(400, body, headers, start)
            model = str(model)
            if cfg.models is not None and model not in cfg.models:
                message = f"The model `{model}` does not exist or you do not have access to it."
                body = _error(message, "invalid_request_error", "model_not_found")
                return self._reply(404, body, headers, start)
            if cfg.insufficient_quota:
                body = _error(_QUOTA, "insufficient_quota", "insufficient_quota")
                return self._reply(429, body, headers, start)
            if model in cfg.overloaded_models:
                message = f"The model `{model}` is currently overloaded. Please try again later."
                body = _error(message, "requests", "rate_limit_exceeded")
                return self._reply(429, body, headers | {"retry-after-ms": "20",
                                                         "retry-after": "1"}, start)
            try:
                cost = estimate_request_cost(data, endpoint)
            except ValueError as exc:  # an unreadable image, say
                body = _error(f"Invalid request: {exc}", "invalid_request_error", None)
                return self._reply(400, body, headers, start)
            refused = self._admit(model, cost.total, start, headers)
            if refused is not None:
                return self._reply(429, refused, headers, start)
            fault = self._fault()
            delay = cfg.latency_ms + (
                cfg.latency_jitter_ms and self.rng.random() * cfg.latency_jitter_ms
            )
            if delay > 0:
                await asyncio.sleep(delay / 1000)
            if fault == 2 or fault == 3:
                if fault == 2:
                    self.stats.resets += 1
                    if request.transport is not None:
                        request.transport.abort()
                else:
                    self.stats.hangs += 1
                    await _hang(request)
                # The client is gone: aiohttp fails to write this and drops it quietly.
                return web.Response(status=500)
            if fault < 2:
                body = _error(_SERVER_ERROR, "server_error", None)
                return self._reply(500 if fault == 0 else 503, body, headers, start)
            body = orjson.dumps(answer(data, model, cost.prompt_tokens))
            if fault == 4:
                self.stats.truncated += 1
                return self._reply(200, body[: len(body) // 2], headers, start)
            self.stats.ok += 1
            return self._reply(200, body, headers, start)

        return handle

    def _completion_tokens(self, data: Mapping[str, Any]) -> int:
        drawn = 5 + int(self.rng.random() * 36)
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            value = data.get(key)
            if isinstance(value, int) and value >= 0:
                return min(value, drawn)
        return drawn

    def _head(self, prefix: str, kind: str, model: str) -> dict[str, Any]:
        ident = f"{prefix}{next(self.ids):x}"
        return {"id": ident, "object": kind, "created": int(time.time()), "model": model}

    def _answer_chat(self, data: dict[str, Any], model: str, prompt: int) -> dict[str, Any]:
        n = _n(data)
        message = {"role": "assistant", "content": _reply_text(data["messages"])}
        choices = [
            {"index": i, "message": message, "finish_reason": "stop", "logprobs": None}
            for i in range(n)
        ]
        usage = _usage(prompt, self._completion_tokens(data) * n)
        head = self._head("chatcmpl-", "chat.completion", model)
        return head | {"choices": choices, "usage": usage, "system_fingerprint": "fp_mock"}

    def _answer_completions(self, data: dict[str, Any], model: str, prompt: int) -> dict[str, Any]:
        # One choice per prompt (a list of strings is a batch of prompts) per n.
        raw = data["prompt"]
        prompts = raw if isinstance(raw, list) and all(isinstance(p, str) for p in raw) else [raw]
        texts = [_reply_text(p, "Mock completion of: ") for p in prompts for _ in range(_n(data))]
        choices = [
            {"index": i, "text": t, "finish_reason": "length", "logprobs": None}
            for i, t in enumerate(texts)
        ]
        usage = _usage(prompt, self._completion_tokens(data) * len(choices))
        return self._head("cmpl-", "text_completion", model) | {"choices": choices, "usage": usage}

    def _answer_embeddings(self, data: dict[str, Any], model: str, prompt: int) -> dict[str, Any]:
        raw = data["input"]
        items = raw if isinstance(raw, list) and not isinstance(raw[0], int) else [raw]
        dim = data.get("dimensions")
        dim = dim if isinstance(dim, int) and 0 < dim <= 4096 else self.config.embedding_dim
        unit = _unit_vector(dim)
        out = []
        for i, item in enumerate(items):
            # A rotation of a fixed unit vector picked by the text's hash: deterministic,
            # distinct per text, and no per-element maths.
            shift = zlib.crc32(str(item).encode()) % dim
            vector: Any = unit[shift:] + unit[:shift]
            if data.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            out.append({"object": "embedding", "index": i, "embedding": vector})
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        return {"object": "list", "data": out, "model": model, "usage": usage}

    def _answer_responses(self, data: dict[str, Any], model: str, prompt: int) -> dict[str, Any]:
        out = self._completion_tokens(data)
        text = {"type": "output_text", "text": _reply_text(data["input"]), "annotations": []}
        rid = next(self.ids)
        message = {
            "type": "message",
            "id": f"msg_{rid:x}",
            "status": "completed",
            "role": "assistant",
        }
        usage = {"input_tokens": prompt, "output_tokens": out, "total_tokens": prompt + out}
        head = {"id": f"resp_{rid:x}", "object": "response", "created_at": int(time.time())}
        output = [message | {"content": [text]}]
        return head | {"status": "completed", "model": model, "output": output, "usage": usage}

    async def models(self, request: web.Request) -> web.Response:
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
        for f in fields(MockStats):
            setattr(self.stats, f.name, {} if f.name == "by_status" else 0)
        return await self.get_stats(request)


async def _hang(request: web.Request) -> None:
    """Wait up to an hour, or until the client goes away."""
    # serve() and TestServer cancel handlers on disconnect (handler_cancellation); polling
    # the transport covers runners that do not.
    for _ in range(int(_HANG_SECONDS / _HANG_POLL)):
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(_HANG_POLL)


def _n(data: Mapping[str, Any]) -> int:
    n = data.get("n", 1)
    return n if isinstance(n, int) and n > 0 else 1


def _usage(prompt: int, out: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


@functools.lru_cache(maxsize=8)
def _unit_vector(dim: int) -> list[float]:
    raw = [math.sin(i + 1.0) for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def _reply_text(value: Any, prefix: str = "Mock answer to: ") -> str:
    """The prefix plus the first 40 characters of the last user text in ``value``."""
    text = ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):  # messages, or responses input items
        for message in reversed(value):
            if isinstance(message, str):
                text = message
            elif isinstance(message, Mapping) and message.get("role", "user") == "user":
                content = message.get("content")
                parts = content if isinstance(content, list) else [{"text": content}]
                texts = [p["text"] for p in parts if isinstance(p, Mapping) and "text" in p]
                text = next((t for t in texts if isinstance(t, str)), "")
            else:
                continue
            break
    return prefix + text[:40]


def build_app(config: MockConfig, *, clock: Clock | None = None) -> web.Application:
    """Build the mock server's application.

    Args:
        config: how it behaves.
        clock: monotonic seconds for the rate-limit buckets; ``time.monotonic`` by default.
            Tests pass a fake one to move time without sleeping.

    Returns:
        The application; ``app["stats"]`` (also ``app[STATS_KEY]``) is its :class:`MockStats`.
    """
    mock = _Mock(config, clock or time.monotonic)
    app = web.Application()
    app[STATS_KEY] = mock.stats
    with warnings.catch_warnings():
        # The documented string key; aiohttp prefers AppKey and warns about plain strings.
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["stats"] = mock.stats
    for kind, (suffix, _) in _ENDPOINTS.items():
        app.router.add_post("/v1" + suffix, mock.handler(kind, azure=False))
        if kind != "responses":
            path = "/openai/deployments/{deployment}" + suffix
            app.router.add_post(path, mock.handler(kind, azure=True))
    app.router.add_get("/v1/models", mock.models)
    app.router.add_get("/stats", mock.get_stats)
    app.router.add_post("/reset-stats", mock.reset_stats)
    return app


async def _serve(config: MockConfig, host: str, port: int, announce: bool) -> None:
    # No access log (a line per request would cost more than the handler) and a short
    # shutdown, so hanging requests do not hold Ctrl-C for a minute.
    app = build_app(config)
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


def run(config: MockConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the mock API until Ctrl-C (blocking; for the CLI).

    Prints ``mock server listening on http://HOST:PORT/v1`` to stderr once bound.

    Args:
        config: how the server behaves.
        host: interface to bind.
        port: TCP port to bind (0 picks a free one; the printed URL shows the real one).
    """
    try:
        asyncio.run(_serve(config, host, port, announce=True))
    except KeyboardInterrupt:
        pass
