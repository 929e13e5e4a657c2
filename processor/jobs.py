"""Read and validate job lines (records are built and written by :mod:`processor.store`).

An input line is either an OpenAI Batch API request::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

or a bare request body, optionally with a top-level ``metadata`` object that is passed
through to the output (a ``metadata`` key *inside* a Batch line's ``body`` is a real API
parameter and is left alone)::

    {"model": "gpt-4o-mini", "messages": [...], "metadata": {"row": 7}}
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import JobFormatError
from .idset import IdSet

__all__ = [
    "DEFAULT_ENDPOINT",
    "BadLine",
    "line_hash",
    "Job",
    "count_lines",
    "iter_jobs",
    "iter_raw_lines",
    "parse_line",
]

DEFAULT_ENDPOINT = "/v1/chat/completions"
_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class Job:
    """One request to send, and what happened to it so far.

    Attributes:
        custom_id: the line's ``custom_id``, else ``line-<N>``.
        line: 1-based line number in the input.
        url: endpoint path, e.g. ``/v1/chat/completions``.
        body: the JSON body to send.
        metadata: passed through to the output record, if the line had one.
        payload: ``body`` serialised once, reused on every attempt.
        line_hash: :func:`line_hash` of the input line, for the ledger.
        tokens: admission cost in tokens (set by the engine).
        attempts: attempts made so far.
        history: one short reason per failed attempt.
    """

    custom_id: str
    line: int
    url: str
    body: dict[str, Any]
    metadata: Any = None
    payload: bytes = b""
    tokens: int = 0
    attempts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    prompt_tokens: int = 0
    line_hash: int = 0
    # Per-attempt bookkeeping (set by the engine).
    lane: Any = None
    sent_at: float = 0.0
    cum_requests: float = 0.0
    cum_tokens: float = 0.0
    model_refusals: int = 0
    fallback_from: str | None = None


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that is not a valid request."""

    line: int
    reason: str
    custom_id: str | None = None
    #: :func:`line_hash` of the raw line: a rerun knows a bad line by its content, so
    #: a fixed line (or one that moved) is never taken for the bad one reported before.
    line_hash: int = 0


def iter_raw_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_bytes)`` lazily; a BOM on line 1 is dropped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            yield number, raw


def count_lines(path: str | os.PathLike[str], chunk: int = 1 << 20,
                cancel: Callable[[], None] | None = None) -> int:
    """Count the non-blank-terminated lines of a file quickly, without parsing.

    ``cancel`` is called between blocks; it raises to abandon the count (Ctrl-C).
    """
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if cancel is not None:
                cancel()
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def _check_body(body: dict[str, Any], url: str) -> str | None:
    """Why ``body`` cannot be sent to ``url``, or None if it looks right."""
    path = url.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "chat completions body needs a non-empty 'messages' list"
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message:
                return f"messages[{i}] must be an object with a 'role'"
    elif path.endswith("/embeddings"):
        if "input" not in body:
            return "embeddings body needs 'input'"
    elif path.endswith("/completions"):
        if "prompt" not in body:
            return "completions body needs 'prompt'"
    elif path.endswith("/responses"):
        if "input" not in body and "prompt" not in body:
            return "responses body needs 'input'"
    return None


# Whitespace, control characters or a fragment in a URL path: no server route has them,
# and an HTTP library may refuse to build the request at all.
_UNSAFE_URL = re.compile(r"[\s\x00-\x1f\x7f#]").search


def parse_line(raw: bytes, line: int, default_endpoint: str = DEFAULT_ENDPOINT) -> Job:
    """Turn one input line into a :class:`Job`.

    Args:
        raw: the line's bytes (a trailing newline is fine).
        line: its 1-based line number.
        default_endpoint: endpoint for bare bodies and Batch lines without ``url``.

    Raises:
        JobFormatError: with a clear reason and the line number.
    """
    if not raw.strip():
        raise JobFormatError("blank line", line)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise JobFormatError(f"invalid JSON: {exc}", line) from None
    if not isinstance(obj, dict):
        raise JobFormatError(f"expected a JSON object, got {type(obj).__name__}", line)

    metadata: Any = None
    if "body" in obj or "url" in obj or "method" in obj:
        body = obj.get("body")
        if not isinstance(body, dict):
            raise JobFormatError("Batch API line needs a 'body' object", line)
        method = obj.get("method", "POST")
        if not isinstance(method, str) or method.upper() != "POST":
            raise JobFormatError(f"unsupported method {method!r}: only POST", line)
        url = obj.get("url", default_endpoint)
        if not isinstance(url, str) or not url.startswith("/") or _UNSAFE_URL(url):
            raise JobFormatError(
                f"'url' must be a path like /v1/chat/completions, got {url!r}", line
            )
        custom_id = obj.get("custom_id")
        metadata = obj.get("metadata")
    else:
        # A bare body: top-level "metadata" and "custom_id" are ours, not the API's.
        body = obj
        custom_id = body.pop("custom_id", None)
        metadata = body.pop("metadata", None)
        url = default_endpoint

    if custom_id is None:
        custom_id = f"line-{line}"
    elif not isinstance(custom_id, str) or not custom_id:
        raise JobFormatError(f"'custom_id' must be a non-empty string, got {custom_id!r}", line)
    problem = _check_body(body, url)
    if problem:
        raise JobFormatError(problem, line)
    model = body.get("model")
    return Job(
        custom_id=custom_id,
        line=line,
        url=url,
        body=body,
        metadata=metadata,
        model=model if isinstance(model, str) else None,
        line_hash=line_hash(raw),
    )


def line_hash(raw: bytes) -> int:
    """A 64-bit hash of an input line (without its line ending or a BOM; never 0)."""
    raw = raw.rstrip(b"\r\n")
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") or 1


_AUTO_ID_PREFIX = "line-"


def iter_jobs(
    path: str | os.PathLike[str],
    *,
    default_endpoint: str = DEFAULT_ENDPOINT,
    skip: Callable[[str, bytes], bool] | None = None,
    skip_line: Callable[[int], bool] | None = None,
    keep: Callable[[int, bytes], bool] | None = None,
) -> Iterator[Job | BadLine]:
    """Read ``path`` lazily, yielding a :class:`Job` per good line, a :class:`BadLine` per bad one.

    A repeated ``custom_id`` is a :class:`BadLine`. Explicit ids are remembered in a
    compact :class:`~processor.idset.IdSet`; lines without one get ``line-<N>``, unique
    by construction and not stored, so a bare job costs no memory per line. An
    explicit ``line-<K>`` on another line than K would collide with that scheme and is
    reported as a bad line.

    Args:
        path: the JSONL job file.
        default_endpoint: endpoint for lines that do not name one.
        skip: called with ``(custom_id, raw line)``; True leaves the line out (already
            done in an earlier run).
        skip_line: called with the line number first; True leaves the line out unread
            (a line checked before the run: answered, and the same as then).
        keep: called with ``(line number, raw line)`` before anything else; False
            leaves the line out unparsed (another shard's, see :mod:`processor.shards`).
    """
    seen = IdSet()
    for number, raw in iter_raw_lines(path):
        if keep is not None and not keep(number, raw):
            continue
        if skip_line is not None and skip_line(number):
            continue
        asked = False
        if skip is not None and b'"custom_id"' not in raw:
            # Resume fast path: a line without a custom_id is named by its number, so a
            # done one can be skipped without parsing it.
            if skip(f"{_AUTO_ID_PREFIX}{number}", raw):
                continue
            asked = True
        try:
            job = parse_line(raw, number, default_endpoint)
        except JobFormatError as exc:
            yield BadLine(number, exc.message, _salvage_id(raw), line_hash(raw))
            continue
        cid = job.custom_id
        if cid.startswith(_AUTO_ID_PREFIX) and cid != f"{_AUTO_ID_PREFIX}{number}" and \
                cid[len(_AUTO_ID_PREFIX):].isdigit():
            yield BadLine(number, f"custom_id {cid!r} is reserved for line "
                          f"{cid[len(_AUTO_ID_PREFIX):]} (lines without a custom_id are "
                          "named line-<N>)", cid, job.line_hash)
            continue
        if cid != f"{_AUTO_ID_PREFIX}{number}" and not seen.add(cid):
            yield BadLine(number, f"duplicate custom_id {cid!r}: only its first line is sent",
                          cid, job.line_hash)
            continue
        if skip is not None and not asked and skip(cid, raw):
            continue
        yield job


def _salvage_id(raw: bytes) -> str | None:
    """The custom_id of a line that failed validation, if it has a readable one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
        return str(obj["custom_id"])
    return None
