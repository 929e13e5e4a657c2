"""The verdict on one HTTP answer: a :class:`Response`, or the matching APIError.

Pure (no I/O, no aiohttp): :func:`classify` takes the status, the body bytes and the
headers, masks secrets (:class:`processor.client.masking.Masker`) and decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import AuthError, BadRequest, QuotaExceeded, RateLimited, ServerError
from .headers import RateLimitInfo, parse_retry_after, retry_after_in_words
from .masking import Masker

__all__ = ["MAX_DEPTH", "Response", "classify", "usage"]


@dataclass(frozen=True, slots=True)
class Response:
    """A successful answer: status, parsed JSON body, request id, rate-limit headers."""

    status: int
    body: Any
    request_id: str | None
    ratelimit: RateLimitInfo | None = None


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:1000]
        if isinstance(error, str):
            return error[:1000]
    if isinstance(body, str):
        return body[:300]
    return ""


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        for key in ("code", "type"):
            if isinstance(error.get(key), str):
                return str(error[key])[:100]
    return None


_NO_MASK = Masker()
#: Deepest nesting of a body that is kept. orjson reads 1,024 levels but writes only
#: 254, and a record wraps the body in two more: a deeper answer could be parsed but
#: never written. No OpenAI answer nests more than about 10.
MAX_DEPTH = 200


#: a JSON text this short cannot nest deeper than MAX_DEPTH: each level opens and closes.
_SHALLOW_BYTES = 2 * MAX_DEPTH + 1
#: up to this size a body's brackets are counted (cheap) before its tree is walked.
_COUNT_BYTES = 4096


def _shallow(obj: Any, raw: bytes | bytearray = b"", limit: int = MAX_DEPTH) -> bool:
    """True when ``obj`` (parsed from ``raw``) nests at most ``limit`` containers deep."""
    n = len(raw)
    if raw and (n <= 2 * limit + 1 or (
            n < _COUNT_BYTES and raw.count(b"[") + raw.count(b"{") <= limit)):
        # Too short to nest that deep; or a small answer (most chat ones) with fewer
        # brackets than that, strings included: counting them is cheaper than a walk.
        return True
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend([(v, depth + 1) for v in node.values() if isinstance(v, (dict, list))])
        elif isinstance(node, list):
            if node and type(node[0]) is float:
                # An embedding: one C-speed pass proves it holds numbers only.
                try:
                    sum(node)
                    continue
                except TypeError:
                    pass
            stack.extend([(v, depth + 1) for v in node if isinstance(v, (dict, list))])
    return True


def _text_excerpt(raw: bytes | bytearray, mask: Masker) -> str:
    """The start of a body that is not JSON, as text, secrets masked."""
    # Masked before the cut, so a secret at the edge is not half shown.
    return mask.loose_text(raw[:65536].decode("utf-8", "replace"))[:2000]


def classify(status: int, raw: bytes | bytearray, headers: Mapping[str, str],
             masker: Masker | None = None) -> Response:
    """Turn one HTTP answer into a :class:`Response` or raise the matching APIError.

    Args:
        status: the HTTP status.
        raw: the body (bytes or bytearray).
        headers: the response headers (case-insensitive in practice).
        masker: the secrets to mask in the body, request id and messages.
    """
    mask = masker if masker is not None else _NO_MASK
    request_id = headers.get("x-request-id") or headers.get("apim-request-id")
    if mask.active:
        if request_id:
            request_id = mask.text(request_id)
        raw = mask.raw(raw)
    if 200 <= status < 300:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            kind = headers.get("content-type", "no content type").partition(";")[0].strip()
            what = "an empty body" if not raw else (
                f"a body that is not valid JSON ({mask.text(kind)[:60]}, {len(raw)} bytes: "
                "truncated, or a proxy's page?)")
            raise ServerError(
                f"HTTP {status} with {what}", status=status, request_id=request_id,
                body=_text_excerpt(raw, mask) if raw else None,
            ) from None
        if mask.active and mask.may_hide(raw):
            body = mask.tree(body)
        if len(raw) > _SHALLOW_BYTES and not _shallow(body, raw):
            raise ServerError(f"HTTP {status} with JSON nested deeper than {MAX_DEPTH} levels "
                              "(not an answer; it could not be written)",
                              status=status, request_id=request_id)
        if not isinstance(body, dict):
            # Every OpenAI endpoint answers with an object; `[]` or `"ok"` is not an answer.
            raise ServerError(f"HTTP {status} with a JSON {type(body).__name__}, not an object",
                              status=status, body=body, request_id=request_id)
        if isinstance(body.get("error"), (dict, str)) and not (
            "choices" in body or "data" in body or "output" in body
        ):
            # Some proxies answer 200 with an error body; a Responses object's
            # "error": null is not one.
            raise ServerError(f"HTTP {status} with an error body: {_error_message(body)}",
                              status=status, body=body, request_id=request_id)
        return Response(status, body, request_id, RateLimitInfo.from_headers(headers))
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = _text_excerpt(raw, mask)
    else:
        if mask.may_hide(raw):
            body = mask.tree(body)
        if not _shallow(body, raw):
            body = _text_excerpt(raw, mask)
    message = f"HTTP {status}: {_error_message(body) or 'no message'}"
    retry_after = parse_retry_after(headers)
    if retry_after is None and status == 429:
        retry_after = retry_after_in_words(message)
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


def usage(body: Any) -> tuple[int, int]:
    """``(prompt, completion)`` tokens from an answer's ``usage`` (0 when not stated)."""
    if isinstance(body, dict):
        used = body.get("usage")
        if isinstance(used, dict):
            p = used.get("prompt_tokens", used.get("input_tokens", 0))
            c = used.get("completion_tokens", used.get("output_tokens", 0))
            return (p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)
    return 0, 0
