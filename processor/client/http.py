"""The HTTP client: one aiohttp session, auth, URLs, and reading answers safely.

This is the only module that sees aiohttp's exceptions; it maps them to
:mod:`processor.errors` with ``raise ... from exc``. The verdict on an answer is
:func:`processor.client.answers.classify`; header parsing is :mod:`processor.client.headers` (both
re-exported here, where they used to live).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from types import TracebackType
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from ..errors import APIError, APITimeout, BadRequest, Redirected, ResponseTooLarge, ServerError
from .answers import Response, classify
from .headers import MAX_WAIT, RateLimitInfo, parse_duration, parse_retry_after
from .masking import Masker, header_secrets, is_credential_header

__all__ = ["AZURE_API_VERSION", "DEFAULT_BASE_URL", "DEFAULT_MAX_RESPONSE_MB", "MAX_WAIT",
           "OpenAIClient", "RateLimitInfo", "Response", "azure_url", "classify", "is_azure_url",
           "join_url", "parse_duration", "parse_retry_after"]

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The largest answer kept, in MiB. A full embeddings batch (2,048 inputs x 3,072 dims)
#: is 6,291,456 floats; OpenAI pretty-prints them one per line, 8 spaces of indent, at
#: most 24 characters ("-2.2250738585072014e-308") and ",\n": 34 bytes each, 214 MB
#: (204 MiB) in all, plus the envelope. 256 MiB holds that with room to spare.
DEFAULT_MAX_RESPONSE_MB = 256.0
#: The most of an error (non-2xx) body that is read: the message is in the first bytes.
_ERROR_BODY_LIMIT = 1 << 20


def join_url(base_url: str, endpoint: str) -> str:
    """Join a base URL and an endpoint path without doubling the version segment.

    ``http://host:8000/v1`` + ``/v1/chat/completions`` gives
    ``http://host:8000/v1/chat/completions``; ``https://api.openai.com/v1`` +
    ``/chat/completions`` gives ``https://api.openai.com/v1/chat/completions``. A query
    of the base URL (a gateway's ``?token=...``) stays a query, after the endpoint's own.
    """
    parts = urlsplit(base_url)
    endpoint, _, endpoint_query = endpoint.partition("?")
    base_path = parts.path.rstrip("/")
    path = "/" + endpoint.lstrip("/")
    if base_path:
        last = "/" + base_path.rsplit("/", 1)[-1]
        if path == last or path.startswith(last + "/"):
            path = path[len(last) :]
    query = "&".join(q for q in (endpoint_query, parts.query) if q)
    return urlunsplit((parts.scheme, parts.netloc, base_path + path, query, ""))


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


class OpenAIClient:
    """An OpenAI-compatible HTTP client that owns one ``aiohttp.ClientSession``.

    Redirects are never followed (a 3xx is a :class:`~processor.errors.Redirected`): the
    key must not reach the host a redirect names. The environment's proxy settings and
    ``~/.netrc`` are not read (``trust_env=False``).

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        api_key: sent as ``Authorization: Bearer ...`` (or ``api-key`` for Azure);
            never logged, never part of an error message.
        timeout: seconds for one whole request, reading the answer included.
        max_connections: connection pool size (match the in-flight cap).
        headers: extra headers sent with every request; the values of credential headers
            (see :func:`processor.client.masking.is_credential_header`) are masked like keys.
        azure: Azure OpenAI: the key goes in the ``api-key`` header, and unless the
            base URL already names a deployment (``.../openai/deployments/NAME``) or is
            Azure's v1 API (``.../openai/v1``), each request goes to the deployment
            named by its ``model``, with ``?api-version=``.
        api_version: Azure's ``api-version`` query parameter.
        secrets: other keys (sent per request) to mask wherever they might be echoed.
        secret_headers: headers sent with every request whose values are masked too,
            whatever their names.
        max_response_mb: the largest answer read, in MiB; a larger one is a
            :class:`~processor.errors.ResponseTooLarge`.
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
        secret_headers: Mapping[str, str] | None = None,
        max_response_mb: float = DEFAULT_MAX_RESPONSE_MB,
    ) -> None:
        for setting, number in (("max_response_mb", max_response_mb), ("timeout", timeout)):
            if not 0 < number < math.inf:  # nan and inf too
                raise ValueError(f"{setting} must be a positive finite number, got {number}")
        self.base_url = base_url
        self.azure = azure
        self.api_version = api_version
        self.max_response = int(max_response_mb * (1 << 20))
        #: answers up to this size, of known length, are read in one call.
        self._small_body = min(_SMALL_BODY, self.max_response)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        extra = {**(headers or {}), **(secret_headers or {})}
        # Header names are case-insensitive: a user's "authorization" replaces ours
        # rather than going out as a second Authorization header.
        for name, value in extra.items():
            _set_header(h, name, value)
        if api_key:
            if azure:
                _set_header(h, "api-key", api_key)
            else:
                _set_header(h, "Authorization", f"Bearer {api_key}")
        self._headers = h
        hidden: list[str | None] = [api_key, *(secrets or []), urlsplit(base_url).password]
        for name, value in extra.items():
            if name in (secret_headers or {}) or is_credential_header(name):
                parts = header_secrets(name, value)
                hidden += parts
                # The part that matters: the token after "Bearer", else the whole value.
                scheme = name.lower() in ("authorization", "proxy-authorization")
                main = parts[1] if scheme and len(parts) > 1 else (parts or [""])[0]
                if len(main) < 8:
                    log.warning("the value of header %s is shorter than 8 characters: an echo "
                                "of it in an answer cannot be masked", name)
        self._masker = Masker(hidden)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str | None], str] = {}

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(base_url={self.base_url!r})"

    @property
    def masker(self) -> Masker:
        """What this client masks (its keys and credential headers)."""
        return self._masker

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
                # No HTTP(S)_PROXY, no ~/.netrc credentials: only what we were given.
                trust_env=False,
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
        return self._masker.text(text)

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
            The :class:`Response` for a 2xx with a JSON object body.

        Raises:
            RateLimited, ServerError, APITimeout: worth retrying.
            AuthError, BadRequest, QuotaExceeded, Redirected, ResponseTooLarge: not
            worth retrying.
        """
        session = self._session or self._ensure_session()
        url = self.url_for(endpoint, model)
        try:
            async with session.post(url, data=payload, headers=headers,
                                    allow_redirects=False) as resp:
                status = resp.status
                if 300 <= status < 400:
                    raise self._redirected(status, url, resp.headers)
                raw: bytes | bytearray | None
                if 200 <= status < 300:
                    length = resp.content_length
                    if length is not None and length <= self._small_body and \
                            "content-encoding" not in resp.headers:
                        # The usual answer: small, its length known and within the cap
                        # (the parser reads no further than Content-Length): aiohttp's
                        # own read, at once.
                        raw = await resp.read()
                    else:
                        raw = await _read_capped(resp, self.max_response)
                    if raw is None:
                        raise self._too_large(status, resp)
                else:
                    # The message is in the first bytes; an endless error page is cut.
                    raw = await _read_capped(resp, _ERROR_BODY_LIMIT, cut=True)
                    assert raw is not None
                return classify(status, raw, resp.headers, self._masker)
        except APIError:
            raise
        except asyncio.TimeoutError as exc:
            raise APITimeout("request timed out") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ServerError(self._redact(f"response body cut short: {exc}")) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise APITimeout(self._redact(f"{type(exc).__name__}: {exc}")) from exc

    def _redirected(self, status: int, url: str, headers: Mapping[str, str]) -> Redirected:
        location = headers.get("location")
        shown = self._masker.url(location, url) if location else None
        request_id = headers.get("x-request-id") or headers.get("apim-request-id")
        where = f"to {shown}" if shown else "with no Location"
        return Redirected(
            f"HTTP {status} redirect {where}: not followed (the credentials stay with "
            "the host they are for, and a redirected POST would not be the request sent); "
            "if the API moved, give the new address as --base-url",
            status=status, location=shown, code="redirect",
            request_id=self._redact(request_id) if request_id else None,
        )

    def _too_large(self, status: int, resp: aiohttp.ClientResponse) -> ResponseTooLarge:
        length = resp.content_length
        size = (f"Content-Length {length:,} bytes" if length is not None and length >
                self.max_response else "the body ran past it and was not read further")
        request_id = resp.headers.get("x-request-id") or resp.headers.get("apim-request-id")
        resp.close()  # the rest is not wanted: drop the connection, do not drain it
        return ResponseTooLarge(
            f"HTTP {status} answer larger than --max-response-mb "
            f"({self.max_response / (1 << 20):g} MiB): {size}",
            status=status, code="response_too_large",
            request_id=self._redact(request_id) if request_id else None,
        )


def _set_header(headers: dict[str, str], name: str, value: str) -> None:
    """Set ``name`` in ``headers``, replacing any spelling of it (names ignore case)."""
    for existing in [k for k in headers if k.lower() == name.lower()]:
        del headers[existing]
    headers[name] = value


#: bodies up to this size are read in one call (a chat or a small embeddings answer).
_SMALL_BODY = 1 << 20


async def _read_capped(resp: aiohttp.ClientResponse, cap: int,
                       cut: bool = False) -> bytes | bytearray | None:
    """The body, read piece by piece into one buffer, never more than ``cap`` bytes.

    Returns None when the body is larger (``cut``: its first ``cap`` bytes instead). A
    Content-Length over the cap is refused before reading; a body without one (chunked,
    compressed, endless) is stopped at the cap; the total timeout bounds a slow one.
    """
    length = resp.content_length
    if length is not None and length > cap and not cut:
        return None
    exact = length is not None and "content-encoding" not in resp.headers
    if exact and not cut and length is not None and length <= _SMALL_BODY:
        # The usual answer: small, its length known and within the cap (the parser
        # reads no further than Content-Length): aiohttp's own read, the fastest. Larger
        # ones go into one buffer sized up front, never a second copy.
        return await resp.read()
    # Sized up front when the length is known (and not compressed): no regrowth, no
    # slack; otherwise grown as pieces come (bytearray over-allocates by ~1/8).
    buf = bytearray(min(length, cap) if exact and length else 0)
    size = 0
    content = resp.content
    while True:
        chunk = await content.readany()
        if not chunk:
            break
        end = size + len(chunk)
        if end > cap:
            if not cut:
                return None
            chunk = chunk[: cap - size]
            end = cap
        buf[size:end] = chunk
        size = end
        if size == cap and cut:
            resp.close()
            break
    if size < len(buf):
        del buf[size:]
    return buf
