"""The HTTP client: one aiohttp session, auth, and the verdict on each response.

This is the only module that sees aiohttp's exceptions; it maps them to
:mod:`processor.errors` with ``raise ... from exc``.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from .errors import (
    APIError,
    APITimeout,
    AuthError,
    BadRequest,
    QuotaExceeded,
    RateLimited,
    ServerError,
)

__all__ = ["AZURE_API_VERSION", "DEFAULT_BASE_URL", "OpenAIClient", "RateLimitInfo", "Response",
           "azure_url", "is_azure_url", "join_url", "parse_duration", "parse_retry_after"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_RETRY_IN_WORDS = re.compile(
    r"(?:retry after|try again in)\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+|\d+(?:\.\d+)?)"
    r"(?:\s*(ms|s|sec|seconds?)\b)?", re.I)


def parse_duration(text: str) -> float | None:
    """Parse OpenAI's reset durations ("20ms", "1s", "6m0s", "1h2m3.5s") into seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    total = 0.0
    pos = 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        value = float(m.group(1))
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos else None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``retry-after``
    (seconds or an HTTP date), else None."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            seconds = float(ms) / 1000.0
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):
                return max(0.0, seconds)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What the server's ``x-ratelimit-*`` headers said (None where absent)."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo | None:
        if "x-ratelimit-limit-requests" not in headers and (
            "x-ratelimit-limit-tokens" not in headers
        ):
            return None

        def num(key: str) -> float | None:
            value = headers.get(key)
            if value is None:
                return None
            try:
                number = float(value)
            except ValueError:
                return None
            # Nonsense (negative, inf, nan) is as good as no header.
            return number if math.isfinite(number) and number >= 0 else None

        def dur(key: str) -> float | None:
            value = headers.get(key)
            return parse_duration(value) if value is not None else None

        return cls(
            num("x-ratelimit-limit-requests"),
            num("x-ratelimit-limit-tokens"),
            num("x-ratelimit-remaining-requests"),
            num("x-ratelimit-remaining-tokens"),
            dur("x-ratelimit-reset-requests"),
            dur("x-ratelimit-reset-tokens"),
        )


@dataclass(frozen=True, slots=True)
class Response:
    """A successful answer: status, parsed JSON body, request id, rate-limit headers."""

    status: int
    body: Any
    request_id: str | None
    ratelimit: RateLimitInfo | None = None


def join_url(base_url: str, endpoint: str) -> str:
    """Join a base URL and an endpoint path without doubling the version segment.

    ``http://host:8000/v1`` + ``/v1/chat/completions`` gives
    ``http://host:8000/v1/chat/completions``; ``https://api.openai.com/v1`` +
    ``/chat/completions`` gives ``https://api.openai.com/v1/chat/completions``.
    """
    base = base_url.rstrip("/")
    path = "/" + endpoint.lstrip("/")
    base_path = urlsplit(base).path
    if base_path:
        last = "/" + base_path.rsplit("/", 1)[-1]
        if path == last or path.startswith(last + "/"):
            path = path[len(last) :]
    return base + path


AZURE_API_VERSION = "2024-10-21"
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


def is_azure_url(base_url: str) -> bool:
    """True for an Azure OpenAI resource URL."""
    host = urlsplit(base_url).hostname or ""
    return host.endswith(_AZURE_HOSTS)


def azure_url(base_url: str, endpoint: str, model: str | None, api_version: str) -> str:
    """An Azure OpenAI URL for ``endpoint``.

    ``https://R.openai.azure.com`` + ``/v1/chat/completions`` + model ``gpt-4o`` gives
    ``https://R.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=V``.
    A base URL that already names a deployment keeps it (and its own ``api-version``, if
    it has one); a portal "Target URI" that ends in the endpoint is cut back to the
    deployment; Azure's v1 API (``.../openai/v1``) takes OpenAI's paths as they are.
    """
    parts = urlsplit(base_url)
    base = parts.path.rstrip("/")
    path = "/" + endpoint.lstrip("/")
    if path.startswith("/v1/"):
        path = path[3:]
    for tail in ("/chat/completions", "/completions", "/embeddings", "/responses"):
        if base.endswith(tail):
            base = base[: -len(tail)]
            break
    query = parse_qsl(parts.query, keep_blank_values=True)
    if base.endswith("/openai/v1"):
        full = base + path
    else:
        if "/openai/deployments/" not in base:
            if not model:
                raise BadRequest("Azure needs a deployment: give the request a 'model' "
                                 "(the deployment name) or put the deployment in --base-url")
            root = base.removesuffix("/openai")
            base = f"{root}/openai/deployments/{quote(model, safe='')}"
        full = base + path
        if not any(k == "api-version" for k, _ in query):
            query.append(("api-version", api_version))
    return urlunsplit((parts.scheme, parts.netloc, full, urlencode(query), ""))


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    if isinstance(body, str):
        return body[:300]
    return ""


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        for key in ("code", "type"):
            if isinstance(error.get(key), str):
                return str(error[key])
    return None


def classify(status: int, raw: bytes, headers: Mapping[str, str]) -> Response:
    """Turn one HTTP answer into a :class:`Response` or raise the matching APIError."""
    request_id = headers.get("x-request-id") or headers.get("apim-request-id")
    if 200 <= status < 300:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ServerError(
                f"HTTP {status} with a body that is not valid JSON ({len(raw)} bytes, truncated?)",
                status=status, request_id=request_id,
            ) from None
        if isinstance(body, dict) and isinstance(body.get("error"), (dict, str)) and not (
            "choices" in body or "data" in body or "output" in body
        ):
            # Some proxies answer 200 with an error body; a Responses object's
            # "error": null is not one.
            raise ServerError(f"HTTP {status} with an error body: {_error_message(body)}",
                              status=status, body=body, request_id=request_id)
        return Response(status, body, request_id, RateLimitInfo.from_headers(headers))
    error_body: Any
    try:
        error_body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        error_body = raw[:2000].decode("utf-8", "replace")
    body = error_body
    message = f"HTTP {status}: {_error_message(body) or 'no message'}"
    retry_after = parse_retry_after(headers)
    if retry_after is None and status == 429:
        # Azure (and some proxies) say it only in words: "Please retry after 6 seconds."
        hint = _RETRY_IN_WORDS.search(message)
        if hint:
            # "6 seconds", "1.2s", "20ms", "8m38.4s" (OpenAI's per-day messages)
            retry_after = parse_duration(hint.group(1))
            if retry_after is not None and hint.group(2) and hint.group(2).lower() == "ms":
                retry_after /= 1000.0
    kwargs: dict[str, Any] = {"status": status, "body": body, "request_id": request_id,
                              "retry_after": retry_after,
                              "ratelimit": RateLimitInfo.from_headers(headers)}
    code = _error_code(body)
    kwargs["code"] = code
    if status == 429:
        if code == "insufficient_quota":
            raise QuotaExceeded(message, **kwargs)
        if "request too large" in message.lower():
            # Larger than the whole limit: waiting will not help.
            kwargs["code"] = "request_too_large"
            raise BadRequest(message, **kwargs)
        raise RateLimited(message, **kwargs)
    if status in (408, 409) or status >= 500:
        raise ServerError(message, **kwargs)
    if status in (401, 403):
        raise AuthError(message, **kwargs)
    raise BadRequest(message, **kwargs)


class OpenAIClient:
    """An OpenAI-compatible HTTP client that owns one ``aiohttp.ClientSession``.

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        api_key: sent as ``Authorization: Bearer ...`` (or ``api-key`` for Azure);
            never logged, never part of an error message.
        timeout: seconds for one whole request.
        max_connections: connection pool size (match the in-flight cap).
        headers: extra headers sent with every request.
        azure: Azure OpenAI: the key goes in the ``api-key`` header, and unless the
            base URL already names a deployment (``.../openai/deployments/NAME``) or is
            Azure's v1 API (``.../openai/v1``), each request goes to the deployment
            named by its ``model``, with ``?api-version=``.
        api_version: Azure's ``api-version`` query parameter.
        secrets: other keys (sent per request) to mask wherever they might be echoed.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout: float = 600.0,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
        azure: bool = False,
        api_version: str = AZURE_API_VERSION,
        secrets: list[str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.azure = azure
        self.api_version = api_version
        # Short test keys ("k") would mask every "k"; real keys are long.
        self._secrets = [k for k in [api_key, *(secrets or [])] if k and len(k) >= 8]
        self._secret_bytes = [k.encode() for k in self._secrets]  # encoded once, not per answer
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        h.update(headers or {})
        if api_key:
            if azure:
                h["api-key"] = api_key
            else:
                h["Authorization"] = f"Bearer {api_key}"
        self._headers = h
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str | None], str] = {}

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> OpenAIClient:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._max_connections,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers,
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url_for(self, endpoint: str, model: str | None = None) -> str:
        """The full URL for ``endpoint`` (and, on Azure, the deployment ``model``)."""
        key = (endpoint, model if self.azure else None)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = (
                azure_url(self.base_url, endpoint, model, self.api_version)
                if self.azure
                else join_url(self.base_url, endpoint)
            )
        return url

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    async def post(
        self,
        endpoint: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
    ) -> Response:
        """POST ``payload`` (JSON bytes) to ``endpoint``.

        Args:
            endpoint: e.g. ``/v1/chat/completions``.
            payload: the JSON body, already serialised.
            headers: per-request headers (another key's auth, say).
            model: the request's model (names the deployment on Azure).

        Returns:
            The :class:`Response` for a 2xx with a JSON body.

        Raises:
            RateLimited, ServerError, APITimeout: worth retrying.
            AuthError, BadRequest, QuotaExceeded: not worth retrying.
        """
        session = self._session or self._ensure_session()
        try:
            async with session.post(self.url_for(endpoint, model), data=payload,
                                    headers=headers) as resp:
                raw = await resp.read()
                for key in self._secret_bytes:
                    # A proxy or mock that echoes a key must not put it in our files.
                    if key in raw:
                        raw = raw.replace(key, b"***")
                return classify(resp.status, raw, resp.headers)
        except APIError:
            raise
        except asyncio.TimeoutError as exc:
            raise APITimeout("request timed out") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ServerError(self._redact(f"response body cut short: {exc}")) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise APITimeout(self._redact(f"{type(exc).__name__}: {exc}")) from exc
