"""Read and validate job lines; build and write result and error records.

An input line is either an OpenAI Batch API request::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

or a bare request body, optionally with a top-level ``metadata`` object that is passed
through to the output (a ``metadata`` key *inside* a Batch line's ``body`` is a real API
parameter and is left alone)::

    {"model": "gpt-4o-mini", "messages": [...], "metadata": {"row": 7}}
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .errors import JobFormatError, OutputError
from .idset import IdSet, fingerprint
from .store.lock import lock_in_place

__all__ = [
    "DEFAULT_ENDPOINT",
    "BadLine",
    "line_hash",
    "Job",
    "ResultWriter",
    "count_lines",
    "error_record",
    "iter_jobs",
    "iter_raw_lines",
    "parse_line",
    "result_record",
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
        "error": None,
    }
    if job.metadata is not None:
        record["metadata"] = job.metadata
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
    :func:`line_hash` of the input line), ``error.input_hash`` holds it as 16 hex
    digits: a rerun knows by it whether that line is still the same.
    """
    record: dict[str, Any] = {
        "id": record_id or new_record_id(),
        "custom_id": custom_id,
        "response": (
            {"status_code": status, "request_id": request_id or "", "body": body}
            if status is not None
            else None
        ),
        "error": {
            "code": code,
            "message": message,
            "line": line,
            "status": status,
            "attempts": attempts,
            "history": history or [],
        },
    }
    if input_hash:
        record["error"]["input_hash"] = format_hash(input_hash)
    if metadata is not None:
        record["metadata"] = metadata
    return record


def format_hash(hashed_line: int) -> str:
    """A :func:`line_hash` as written in error records: 16 lowercase hex digits."""
    return f"{hashed_line:016x}"


def parse_hash(text: object) -> int:
    """The :func:`line_hash` written by :func:`format_hash`, or 0 if ``text`` is not one."""
    if isinstance(text, str) and len(text) == 16:
        try:
            return int(text, 16)
        except ValueError:
            return 0
    return 0


LEDGER_ENTRY = struct.Struct("<QQ")


def _write_all(f: IO[bytes], data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may be short)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(f"could not write to {getattr(f, 'name', 'a file')}")
        view = view[n:]


def ledger_path(results_path: Path) -> Path:
    """The ledger beside a results file: ``<results>.ledger``. A results path that is a
    symlink has its ledger beside the file it names, so every name of the results file
    reads and writes one ledger (as its lock is one, see :func:`processor.paths.lock_path`)."""
    results_path = Path(results_path)
    if os.path.islink(results_path):
        results_path = Path(os.path.realpath(results_path))
    return results_path.with_name(results_path.name + ".ledger")


def line_hash(raw: bytes) -> int:
    """A 64-bit hash of an input line (without its line ending or a BOM; never 0)."""
    raw = raw.rstrip(b"\r\n")
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") or 1


def ledger_entry(custom_id: str, hashed_line: int) -> bytes:
    """16 bytes: the id's fingerprint and the :func:`line_hash` of its input line.

    The ledger lets a rerun notice that the input changed since a request was
    answered, by hashing the raw line again (no parsing). It is advisory: the results
    file stays the record of what is done.
    """
    return LEDGER_ENTRY.pack(fingerprint(custom_id), hashed_line)


class ResultWriter:
    """Appends records to the results and errors files.

    Each record is serialised to one line and written with a single ``write`` then
    flushed, so a crash leaves at most one partial last line. ``fsync`` runs at most
    every ``fsync_interval`` seconds (from :meth:`maybe_sync`) and at :meth:`close`:
    flushing hands the bytes to the OS, which survives a killed process; fsync makes
    them survive a power cut, at a cost of milliseconds each, hence the timer.

    A write that fails (disk full, file too large, I/O error) is cut back off the
    file, so the files stay whole lines, and raises :class:`OutputError` naming the
    file; the first such error is kept in :attr:`failure`.
    """

    __slots__ = ("results_path", "errors_path", "ledger_path", "_results", "_errors", "_ledger",
                 "_last_sync", "_interval", "_dirty", "failure")

    def __init__(
        self,
        results_path: str | os.PathLike[str],
        errors_path: str | os.PathLike[str],
        *,
        fsync_interval: float = 1.0,
    ) -> None:
        self.results_path = Path(results_path)
        self.errors_path = Path(errors_path)
        self.ledger_path = ledger_path(self.results_path)
        self._results: _Appender | None = None
        self._errors: _Appender | None = None
        self._ledger: _Appender | None = None
        self._interval = fsync_interval
        self._last_sync = time.monotonic()
        self._dirty = False
        self.failure: OutputError | None = None

    def _open(self, path: Path) -> IO[bytes]:
        """Open ``path`` for appending, unbuffered (creating its folder). A file this
        opening creates is locked in place (see :mod:`processor.lock`): an existing one
        was, by the run's :class:`~processor.lock.JobLock`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not os.path.lexists(path)
        f = open(path, "ab", buffering=0)
        if new and not lock_in_place(f.fileno()):
            f.close()
            raise OSError(errno.EBUSY, "another run is writing this file under another "
                          "name (a hard link)")
        return f

    def _appender(self, path: Path) -> _Appender:
        try:
            return _Appender(path, self._open(path))
        except OSError as exc:
            raise OutputError(path, exc) from exc

    def _fail(self, exc: OutputError) -> OutputError:
        if self.failure is None:
            self.failure = exc
        return exc

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None:
        """Append a result; with ``hashed_line`` (its input line's hash), note it in the ledger."""
        line = orjson.dumps(record) + b"\n"
        try:
            if hashed_line:
                # The ledger entry goes first, unbuffered: a kill between the two writes
                # leaves an entry without a result (ignored on resume), never a result
                # whose input line is unknown (an edit to it could not be noticed).
                if self._ledger is None:
                    self._ledger = self._appender(self.ledger_path)
                self._ledger.write(ledger_entry(record["custom_id"], hashed_line))
            if self._results is None:
                self._results = self._appender(self.results_path)
            self._results.write(line)
        except OutputError as exc:
            raise self._fail(exc) from exc.__cause__
        self._dirty = True

    def write_error(self, record: dict[str, Any]) -> None:
        try:
            if self._errors is None:
                self._errors = self._appender(self.errors_path)
            self._errors.write(orjson.dumps(record) + b"\n")
        except OutputError as exc:
            raise self._fail(exc) from exc.__cause__
        self._dirty = True

    def sync(self) -> None:
        """fsync the files now."""
        try:
            for f in (self._results, self._errors, self._ledger):
                if f is not None:
                    f.sync()
        except OutputError as exc:
            raise self._fail(exc) from exc.__cause__
        self._last_sync = time.monotonic()
        self._dirty = False

    def maybe_sync(self) -> None:
        """fsync if there are new records and the interval has passed."""
        if self._dirty and time.monotonic() - self._last_sync >= self._interval:
            self.sync()

    def close(self) -> None:
        """Sync and close every file (all of them, even when one fails).

        Raises:
            OutputError: the final sync failed (the files stay whole lines).
        """
        try:
            if self._dirty:
                self.sync()
        finally:
            for f in (self._results, self._errors, self._ledger):
                if f is not None:
                    f.close()
            self._results = self._errors = self._ledger = None



class _Appender:
    """One output file opened for appending, unbuffered; a failed write is cut back off."""

    __slots__ = ("path", "_f", "_size")

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path = path
        self._f = f
        self._size = os.fstat(f.fileno()).st_size

    def write(self, data: bytes) -> None:
        try:
            _write_all(self._f, data)
        except OSError as exc:
            try:  # a short write left part of a line: cut it (needs no space)
                os.ftruncate(self._f.fileno(), self._size)
            except OSError:
                pass
            raise OutputError(self.path, exc) from exc
        self._size += len(data)

    def sync(self) -> None:
        try:
            os.fsync(self._f.fileno())
        except OSError as exc:
            raise OutputError(self.path, exc, "fsync") from exc

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass


_AUTO_ID_PREFIX = "line-"


def iter_jobs(
    path: str | os.PathLike[str],
    *,
    default_endpoint: str = DEFAULT_ENDPOINT,
    skip: Callable[[str, bytes], bool] | None = None,
    skip_line: Callable[[int], bool] | None = None,
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
    """
    seen = IdSet()
    for number, raw in iter_raw_lines(path):
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
