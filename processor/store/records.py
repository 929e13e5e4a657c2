"""The record format, both ways: building result and error records, and reading their
ids back fast.

One module owns it so that the writer's key order and the fast reader's patterns
live side by side. Every record is written as::

    {"id":"batch_req_...","custom_id":...,"response":{...}|null,
     ["metadata":...,] ["batchproc":{...},] "error":null|{"code":...}}

(:func:`dump_record` keeps ``error`` last whatever was added to the record). The
reader finds an id from the first bytes and whether the record is an answer from
the last ones, without parsing a possibly large response body; any other line
(another tool's, an older version's key order) falls back to a full parse.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from ..jobs import Job

__all__ = ["RecordIds", "dump_record", "error_record", "fast_read", "format_hash",
           "new_record_id", "parse_hash", "read_custom_id", "read_error", "result_record"]


class RecordIds:
    """Record ids like OpenAI's (``batch_req_<32 hex>``): a random per-run prefix and a
    counter, unique without a uuid4 (and its os.urandom call) per record."""

    __slots__ = ("_prefix", "_next")

    def __init__(self) -> None:
        self._prefix = "batch_req_" + uuid.uuid4().hex[:20]
        self._next = 0

    def __call__(self) -> str:
        self._next += 1
        return f"{self._prefix}{self._next:012x}"


def new_record_id() -> str:
    """A fresh random record id."""
    return "batch_req_" + uuid.uuid4().hex


def result_record(
    job: Job, status: int, request_id: str | None, body: Any, record_id: str | None = None
) -> dict[str, Any]:
    """An output line in the OpenAI Batch output shape."""
    record: dict[str, Any] = {
        "id": record_id or new_record_id(),
        "custom_id": job.custom_id,
        "response": {"status_code": status, "request_id": request_id or "", "body": body},
    }
    if job.metadata is not None:
        record["metadata"] = job.metadata
    record["error"] = None
    return record


def error_record(
    *,
    custom_id: str | None,
    line: int,
    code: str,
    message: str,
    status: int | None = None,
    request_id: str | None = None,
    body: Any = None,
    attempts: int = 0,
    history: list[dict[str, Any]] | None = None,
    metadata: Any = None,
    record_id: str | None = None,
    input_hash: int = 0,
) -> dict[str, Any]:
    """An error line: OpenAI's Batch error shape, plus line, attempts and history.

    ``response`` holds the last HTTP answer when there was one (as OpenAI's error file
    does); ``error`` says why the request failed for good. With ``input_hash`` (the
    :func:`~processor.jobs.line_hash` of the input line), ``error.input_hash`` holds it
    as 16 hex digits: a rerun knows by it whether that line is still the same.
    """
    record: dict[str, Any] = {
        "id": record_id or new_record_id(),
        "custom_id": custom_id,
        "response": (
            {"status_code": status, "request_id": request_id or "", "body": body}
            if status is not None
            else None
        ),
    }
    if metadata is not None:
        record["metadata"] = metadata
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "line": line,
        "status": status,
        "attempts": attempts,
        "history": history or [],
    }
    if input_hash:
        error["input_hash"] = format_hash(input_hash)
    record["error"] = error
    return record


def format_hash(hashed_line: int) -> str:
    """A :func:`~processor.jobs.line_hash` as written in error records: 16 lowercase hex
    digits."""
    return f"{hashed_line:016x}"


def parse_hash(text: object) -> int:
    """The line hash written by :func:`format_hash`, or 0 if ``text`` is not one."""
    if isinstance(text, str) and len(text) == 16:
        try:
            return int(text, 16)
        except ValueError:
            return 0
    return 0


def dump_record(record: dict[str, Any]) -> bytes:
    """One record as one JSON line, ``error`` last (moved there in place if a caller
    added keys after it, as the engine adds ``batchproc``): :func:`fast_read` relies
    on it."""
    if "error" in record and next(reversed(record)) != "error":
        record["error"] = record.pop("error")
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)  # no second copy


# The first bytes of every record: the id, the custom_id (a JSON string, or null for a
# bad line without a readable one), then the response's status (null: no response).
_HEAD = re.compile(
    rb'\{"id":"[^"\\]*","custom_id":("(?:[^"\\]|\\.)*"|null),'
    rb'"response":(?:\{"status_code":(\d\d\d),|null,)')
#: the same head with a 2xx status: with _ANSWER_END, one of our answers (the hot path
#: of a resume scan).
_ANSWER_HEAD = re.compile(
    rb'\{"id":"[^"\\]*","custom_id":("(?:[^"\\]|\\.)*"),"response":\{"status_code":2\d\d,')
_ANSWER_END = (b',"error":null}\n', b',"error":null}')
_ERROR_KEY = b',"error":{"code":"'
#: matches of _ERROR_KEY tried before giving up on the fast path.
_ERROR_TRIES = 4


def fast_read(raw: bytes) -> tuple[str | None, bool, dict[str, Any] | None] | None:
    """``(custom_id, answered, error)`` of a line in this module's shape, read without
    parsing its response; None if the line is in another shape (parse it in full).

    ``answered``: no error and a 2xx status. ``error`` is the error object (parsed on
    its own: it is last, and small) or None for ``"error":null``. A slice that starts
    at ``,"error":{"code":"`` and parses as one JSON value up to the line's final
    brace can only be the top-level ``error``: a match nested deeper would leave
    unmatched closing brackets in it (and ``,"`` cannot occur inside a JSON string).
    """
    m = _HEAD.match(raw)
    if m is None:
        return None
    quoted, status = m.group(1), m.group(2)
    custom_id: str | None = None
    if quoted != b"null":
        try:
            value = orjson.loads(quoted)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, str):  # pragma: no cover - the pattern matches strings
            return None
        custom_id = value
    if raw.endswith(_ANSWER_END):
        return custom_id, custom_id is not None and status is not None and \
            status.startswith(b"2"), None
    end = len(raw) - 1 if raw.endswith(b"\n") else len(raw)
    if end < 1 or raw[end - 1:end] != b"}":
        return None
    # The last few matches, right to left: one inside the error's own history is cut
    # short by the brackets that close it; the top-level one parses.
    stop = end
    for _ in range(_ERROR_TRIES):
        start = raw.rfind(_ERROR_KEY, m.end() - 1, stop)  # after "response":null
        if start < 0:
            return None
        try:
            error = orjson.loads(raw[start + len(b',"error":'):end - 1])
        except orjson.JSONDecodeError:
            stop = start
            continue
        if not isinstance(error, dict):  # pragma: no cover - it starts with {"code":"
            return None
        return custom_id, False, error
    return None


def read_custom_id(raw: bytes) -> tuple[str | None, bool]:
    """The ``custom_id`` of a results line (None: not a record), and whether the line
    holds an answer: no ``error`` and, where a status is given, a 2xx one. OpenAI's
    Batch API writes failures as ``"response": null`` with an ``error``, and 4xx/5xx
    answers with their status; such a line is a failure, not an answer."""
    m = _ANSWER_HEAD.match(raw)  # the common case first: one of our answers
    if m is not None and raw.endswith(_ANSWER_END):
        try:
            return orjson.loads(m.group(1)), True  # a JSON string: str
        except orjson.JSONDecodeError:  # a bad escape, invalid UTF-8: parse in full
            pass
    fast = fast_read(raw)
    if fast is not None:
        return fast[0], fast[1]
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(obj, dict):
        return None, False
    cid = obj.get("custom_id")
    if not isinstance(cid, str):
        return None, False
    response = obj.get("response", {})
    status = response.get("status_code") if isinstance(response, dict) else None
    answered = (isinstance(response, dict) and not obj.get("error")
                and ("status_code" not in response
                     or (type(status) is int and 200 <= status < 300)))
    return cid, answered


def read_error(raw: bytes) -> tuple[object, dict[str, Any]] | None:
    """``(custom_id, error)`` of an errors-file line: the ``custom_id`` as written (check
    its type) and the error object ({} when there is none); None if the line is not JSON.
    A record in this module's shape is read without parsing its response body."""
    fast = fast_read(raw)
    if fast is not None:
        return fast[0], fast[2] or {}
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None, {}
    error = obj.get("error")
    return obj.get("custom_id"), error if isinstance(error, dict) else {}
