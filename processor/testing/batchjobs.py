"""The mock Batch API's state: uploaded files, batches and their life, in OpenAI's shapes.

A batch goes ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed`` over
:attr:`BatchMockConfig.seconds` (the time scale: seconds here stand for the real API's
hours), or ends ``failed`` (validation), ``expired`` (a fault: part of its work done) or
``cancelling`` -> ``cancelled``. Its status is worked out from the clock whenever it is
read, so nothing runs in the background. Output and error files are written when a
batch ends, in the Batch output shape, with the answers of the online endpoints.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .._types import Clock
from .bodies import Answers
from .pricing import price

__all__ = ["ACTIVE", "BatchMockConfig", "BatchStats", "BatchStore", "MockBatch", "MockFile"]

#: statuses whose batches hold enqueued tokens.
ACTIVE = ("validating", "in_progress", "finalizing")
#: endpoint path -> the answer builder's kind.
KINDS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings",
         "/v1/completions": "completions", "/v1/responses": "responses"}
MAX_FILE_BYTES = 200 * 1000 * 1000
MAX_REQUESTS = 50_000


@dataclass(slots=True)
class BatchMockConfig:
    """How the mock Batch API behaves.

    Attributes:
        seconds: how long a batch takes from creation to ``completed`` (the time scale).
        expire: the first ``expire`` batches created expire instead, with
            ``expire_done`` of their requests answered.
        fail: the first ``fail`` batches created fail at validation with no error
            listed (``errors`` null), as the real API now and then does.
        error_every: the k-th request of a batch with ``k % error_every == 0`` fails
            with a 500 in the error file, the first time its custom_id is seen.
        reject_ids: custom_ids that fail with a 400 in the error file, every time.
        queue_tokens: enqueued (prompt) tokens per model; a create that would pass it
            is refused with ``token_limit_exceeded``.
        queue_fail: instead of refusing the create, make the batch and fail it at
            validation with that error (what OpenAI's API does).
        models: when set, a line naming another model fails the batch's validation.
    """

    seconds: float = 2.0
    expire: int = 0
    expire_done: float = 0.5
    fail: int = 0
    error_every: int = 0
    reject_ids: frozenset[str] = frozenset()
    queue_tokens: int | None = None
    queue_fail: bool = False
    models: frozenset[str] | None = None


@dataclass(slots=True)
class BatchStats:
    """What the Batch API was asked: the tests read these."""

    uploads: int = 0
    creates: int = 0
    creates_refused: int = 0
    polls: int = 0
    lists: int = 0
    cancels: int = 0
    downloads: dict[str, int] = field(default_factory=dict)
    #: monotonic time of every Files / Batches call, in order.
    call_times: list[float] = field(default_factory=list)
    #: custom_id -> how many batches it was submitted in.
    submitted: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"uploads": self.uploads, "creates": self.creates,
                "creates_refused": self.creates_refused, "polls": self.polls,
                "lists": self.lists, "cancels": self.cancels,
                "downloads": dict(self.downloads), "calls": len(self.call_times),
                "call_times": list(self.call_times)}


@dataclass(slots=True)
class MockFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def shape(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None}


@dataclass(slots=True)
class MockBatch:
    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    created: float  # on the clock
    created_at: int  # wall time, as shown
    lines: list[dict[str, Any]]
    model: str
    tokens: int
    expire: bool
    errors: list[dict[str, Any]] | None = None
    fail: bool = False
    status: str = "validating"
    cancel_at: float | None = None
    stamps: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0,
                                                            "failed": 0})


class BatchStore:
    """Files and batches, and what becomes of them as the clock moves."""

    def __init__(self, config: BatchMockConfig, clock: Clock, answers: Answers) -> None:
        self.config = config
        self.clock = clock
        self.answers = answers
        self.stats = BatchStats()
        self.files: dict[str, MockFile] = {}
        self.batches: dict[str, MockBatch] = {}
        self._ids = itertools.count(1)
        self._failed_once: set[str] = set()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):024x}"

    def add_file(self, filename: str, purpose: str, data: bytes) -> MockFile:
        f = MockFile(self.new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[f.id] = f
        return f

    def enqueued(self, model: str) -> int:
        return sum(b.tokens for b in self.batches.values()
                   if b.model == model and self.advance(b).status in ACTIVE)

    def create(self, f: MockFile, endpoint: str,
               metadata: dict[str, str] | None) -> MockBatch | tuple[str, str]:
        """A new batch of ``f``; or ``(code, message)`` for a refused create."""
        lines, model, tokens, errors = self._validate(f.data, endpoint)
        quota = self.config.queue_tokens
        if quota is not None and not errors and self.enqueued(model) + tokens > quota:
            message = (f"Enqueued token limit reached for {model} in organization org-mock. "
                       f"Limit: {quota:,} enqueued tokens. Please try again once some "
                       "in_progress batches have been completed.")
            if not self.config.queue_fail:
                return "token_limit_exceeded", message
            errors, tokens = [{"code": "token_limit_exceeded", "message": message,
                               "param": None, "line": None}], 0
        ordinal = len(self.batches) + 1
        batch = MockBatch(self.new_id("batch_"), endpoint, f.id, metadata, self.clock(),
                          int(time.time()), lines, model, tokens,
                          expire=ordinal <= self.config.expire, errors=errors or None,
                          fail=ordinal <= self.config.fail)
        batch.counts["total"] = len(lines)
        for line in lines:
            cid = line["custom_id"]
            self.stats.submitted[cid] = self.stats.submitted.get(cid, 0) + 1
        self.batches[batch.id] = batch
        return batch

    def _validate(self, data: bytes, endpoint: str
                  ) -> tuple[list[dict[str, Any]], str, int, list[dict[str, Any]]]:
        """The file's lines, model, prompt tokens and validation errors (OpenAI's shape)."""
        errors: list[dict[str, Any]] = []
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        tokens = 0

        def bad(n: int, code: str, message: str, param: str | None = None) -> None:
            if len(errors) < 1000:
                errors.append({"code": code, "message": message, "param": param, "line": n})

        if len(data) > MAX_FILE_BYTES:
            bad(0, "file_too_large", "The input file is larger than 200 MB.")
        for n, raw in enumerate(data.splitlines(), 1):
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad(n, "invalid_json_line", "This line is not parseable as valid JSON.")
                continue
            body = line.get("body") if isinstance(line, dict) else None
            cid = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(body, dict) or not isinstance(cid, str):
                bad(n, "invalid_request", "Each line needs a custom_id and a body.")
                continue
            if cid in seen:
                bad(n, "duplicate_custom_id", f"The custom_id '{cid}' is not unique.",
                    "custom_id")
            seen.add(cid)
            if line.get("url") != endpoint or line.get("method") != "POST":
                bad(n, "mismatched_endpoint", "The url of this line does not match the "
                    "batch's endpoint.", "url")
            model = str(body.get("model"))
            allowed = self.config.models
            if allowed is not None and model not in allowed:
                bad(n, "model_not_found", f"The model `{model}` does not exist or you do "
                    "not have access to it.", "body.model")
            models.add(model)
            if self.config.queue_tokens is not None:  # counted only where it matters
                tokens += price(body, KINDS.get(endpoint, "chat")).prompt
            lines.append(line)
        if len(models) > 1:
            bad(0, "mismatched_model", "All requests of a batch must use the same model.")
        if len(lines) > MAX_REQUESTS:
            bad(0, "too_many_requests", f"A batch holds at most {MAX_REQUESTS:,} requests.")
        if not lines and not errors:
            bad(0, "empty_file", "The input file is empty.")
        return lines, next(iter(models), ""), tokens, errors

    def cancel(self, batch: MockBatch) -> None:
        self.advance(batch)
        if batch.status in ACTIVE:
            batch.status = "cancelling"
            batch.cancel_at = self.clock()
            batch.stamps["cancelling_at"] = int(time.time())

    def advance(self, b: MockBatch) -> MockBatch:
        """Bring ``b``'s status up to the clock."""
        if b.status not in (*ACTIVE, "cancelling"):
            return b
        t = (self.clock() - b.created) / max(self.config.seconds, 1e-9)
        if b.status == "cancelling":
            if self.clock() - (b.cancel_at or 0) >= 0.1 * self.config.seconds:
                done = self._share_done(b.cancel_at or b.created, b)
                self._finish(b, "cancelled", done, "batch_cancelled",
                             "This request was cancelled before it ran.")
            return b
        if t >= 0.1 and b.status == "validating":
            if b.errors or b.fail:
                b.status = "failed"
                b.stamps["failed_at"] = int(time.time())
                return b
            b.status = "in_progress"
            b.stamps["in_progress_at"] = int(time.time())
        if b.status == "in_progress":
            b.counts["completed"] = int(len(b.lines) * self._share_done(self.clock(), b))
        if b.expire and t >= 0.8:
            self._finish(b, "expired", self.config.expire_done, "batch_expired",
                         "This request could not be executed before the completion window "
                         "expired.")
        elif t >= 0.8 and b.status == "in_progress":
            b.status = "finalizing"
            b.stamps["finalizing_at"] = int(time.time())
        if t >= 1.0 and b.status == "finalizing":
            self._finish(b, "completed", 1.0, "", "")
        return b

    def _share_done(self, at: float, b: MockBatch) -> float:
        """The share of ``b``'s requests run by ``at`` (evenly over in_progress)."""
        t = (at - b.created) / max(self.config.seconds, 1e-9)
        return max(0.0, min(1.0, (t - 0.1) / 0.7))

    def _finish(self, b: MockBatch, status: str, share: float, code: str,
                message: str) -> None:
        """Write the output and error files; ``share`` of the lines were run."""
        ran = int(len(b.lines) * share)
        out: list[bytes] = []
        err: list[bytes] = []
        kind = KINDS.get(b.endpoint, "chat")
        build: Callable[[dict[str, Any], str, int], dict[str, Any]]
        build = self.answers.builder(kind)
        every = self.config.error_every
        for k, line in enumerate(b.lines, 1):
            cid = line["custom_id"]
            rid = self.new_id("batch_req_")
            if k > ran:
                err.append(orjson.dumps({"id": rid, "custom_id": cid, "response": None,
                                         "error": {"code": code, "message": message}}))
                continue
            status_code, body = 200, None
            if cid in self.config.reject_ids:
                status_code, body = 400, {"error": {
                    "message": "Invalid value for 'messages'.", "type":
                    "invalid_request_error", "param": "messages", "code": None}}
            elif every and k % every == 0 and cid not in self._failed_once:
                self._failed_once.add(cid)
                status_code, body = 500, {"error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error", "param": None, "code": None}}
            else:
                data = line["body"]
                body = build(data, str(data.get("model")), price(data, kind).prompt)
            record = orjson.dumps({"id": rid, "custom_id": cid, "response": {
                "status_code": status_code, "request_id": self.answers.request_id(),
                "body": body}, "error": None})
            (out if status_code == 200 else err).append(record)
        b.counts = {"total": len(b.lines), "completed": len(out), "failed": len(err)}
        name = re.sub(r"[^\w.-]", "_", b.id)
        if out:
            b.output_file_id = self.add_file(f"{name}_output.jsonl", "batch_output",
                                             b"\n".join(out) + b"\n").id
        if err:
            b.error_file_id = self.add_file(f"{name}_error.jsonl", "batch_output",
                                            b"\n".join(err) + b"\n").id
        b.status = status
        b.stamps[f"{status}_at"] = int(time.time())
        b.lines = []  # the work is done: keep memory bounded

    def shape(self, b: MockBatch) -> dict[str, Any]:
        """The batch object, as ``GET /v1/batches/{id}`` returns it."""
        self.advance(b)
        stamps = {f"{s}_at": b.stamps.get(f"{s}_at") for s in (
            "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
            "cancelled")}
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint,
            "errors": {"object": "list", "data": b.errors} if b.errors else None,
            "input_file_id": b.input_file_id, "completion_window": "24h",
            "status": b.status, "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id, "created_at": b.created_at,
            "expires_at": b.created_at + 86_400, **stamps,
            "request_counts": dict(b.counts), "metadata": b.metadata,
        }
