"""Collecting a finished batch: its output and error lines become result and error
records written exactly as the online path writes them (the same writer, ledger and
record shapes), and what is left unanswered is handed back to be resubmitted.

Each request of the part ends in one of four ways:

- answered (a 2xx in the output file): a result record;
- failed for good: the online policy (:func:`processor.run.policy.decide`) says so for
  its error (a 400, or a 5xx after ``--max-attempts``), or the batch's validation named
  its line: an error record;
- to retry: the policy says the error is worth another attempt (the attempt counts);
- not run: expired, cancelled, failed with the batch, or in no file at all: resubmitted
  as it was, each such batch counting as one attempt of the request, so that after
  ``--max-attempts`` batches that did not run it, it is written off (``batch_expired``,
  ``batch_failed`` ...) instead of being resubmitted forever. A batch the user cancelled
  (``batches --cancel``) costs no attempt.

Ids already written (by this run or an earlier one) are never written again, so
collecting the same batch twice (a crash before the state recorded it) is harmless.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..client.answers import classify, usage
from ..client.masking import Masker
from ..errors import APIError, BadRequest, ServerError
from ..idset import IdSet
from ..run.outcomes import Sink
from ..run.policy import Attempt, Context, Fail, decide
from ..run.retry import RetryPolicy
from ..stats import Stats
from ..store.records import error_record
from .plan import Meta, read_meta
from .runlog import BatchEvents
from .state import PartState

__all__ = ["Collected", "Collector"]

#: error codes of requests the batch never ran.
NOT_RUN = ("batch_expired", "batch_cancelled", "batch_failed")
#: the code of a request a batch ended without running, by the batch's status.
NOT_RUN_BY_STATUS = {"expired": "batch_expired", "cancelled": "batch_cancelled",
                     "failed": "batch_failed"}


@dataclass(slots=True)
class Collected:
    """What one batch's files said: counts, and the requests to send again."""

    answered: int = 0
    failed: int = 0
    again: dict[str, Meta] = field(default_factory=dict)
    unanswered: int = 0
    retried: int = 0


class Collector:
    """Turns a finished batch's files into records.

    Args:
        folder: the work folder (parts, their meta, downloaded files).
        sink: the results / errors writer (ledger first, whole lines).
        stats: the run's counters.
        masker: the client's secrets, masked in anything a server wrote.
        policy: attempts and backoff, as online.
        done / failed: ids with a result / a final error (earlier runs' and this one's).
    """

    #: the run log's view of each line (set by the run; default: none).
    events: BatchEvents = BatchEvents()

    def __init__(self, folder: Path, sink: Sink, stats: Stats, masker: Masker,
                 policy: RetryPolicy, done: IdSet, failed: IdSet) -> None:
        self.folder = folder
        self.sink = sink
        self.stats = stats
        self.masker = masker
        self.policy = policy
        self.done = done
        self.failed = failed

    def collect(self, part: PartState, batch: dict[str, Any], files: list[Path],
                spend: bool = True) -> Collected:
        """Write the records of ``part``'s finished ``batch`` from its downloaded ``files``
        (``spend``: False for a batch the user cancelled: what it did not run costs no
        attempt)."""
        metas = read_meta(self.folder, part)
        out = Collected()
        batch_id = str(batch.get("id"))
        status = str(batch.get("status"))
        self.events.begin(part, batch)
        if status == "failed":
            self._validation(part, batch, metas, out)
        not_run = NOT_RUN_BY_STATUS.get(status, "batch_no_answer")
        for path in files:
            for raw in _lines(path):
                self._line(raw, metas, part, batch_id, out, spend)
        # Whatever no file spoke of (expired, cancelled, lost) goes again as it was.
        for cid, meta in metas.items():
            if cid not in out.again and cid not in self.done and not self._written_off(cid, meta):
                self._not_run(cid, meta, not_run, batch_id, status, out, spend)
        self.sink.maybe_sync()
        return out

    def _written_off(self, cid: str, meta: Meta) -> bool:
        """``cid`` has an error record for this very line (one for a line edited since
        is old news: the edited line was sent again)."""
        hashed = self.failed.get(cid)
        return hashed is not None and hashed in (0, meta.hashed & 0xFFFFFFFF)

    def _not_run(self, cid: str, meta: Meta, code: str, batch_id: str, status: str,
                 out: Collected, spend: bool) -> None:
        """A request the batch did not run: sent again, unless that makes one batch
        too many (``--max-attempts``)."""
        if spend:
            meta.attempts += 1
            meta.history.append({"attempt": meta.attempts, "status": None, "error": code,
                                 "message": f"the batch ended {status[:40]} without running it",
                                 "batch": batch_id})
            self.events.line(cid, meta.attempts, None, error=code)
            if meta.attempts >= max(self.policy.max_attempts, 1):
                self._fail(cid, meta, code, f"the Batch API did not run this request: "
                           f"{meta.attempts} batches ended without it (the last {batch_id}, "
                           f"{status[:40]}); gave up after {meta.attempts} attempts "
                           "(--max-attempts); rerun with --retry-failed to send it again",
                           None, out)
                return
        out.again[cid] = meta
        out.unanswered += 1

    def _validation(self, part: PartState, batch: dict[str, Any], metas: dict[str, Meta],
                    out: Collected) -> None:
        """A batch that failed validation: the lines it names fail for good (the same
        request would fail again); with no line named, every request does."""
        errors = batch.get("errors")
        data = errors.get("data") if isinstance(errors, dict) else None
        entries = [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
        by_line = {e["line"]: e for e in entries
                   if isinstance(e.get("line"), int) and e["line"] > 0}
        whole = [e for e in entries if e not in by_line.values()]
        order = list(metas)
        for n, cid in enumerate(order, 1):
            entry = by_line.get(n) or (whole[0] if whole else None)
            if entry is None or cid in self.done or self._written_off(cid, metas[cid]):
                continue
            message = self.masker.text(str(entry.get("message") or "validation failed"))[:1000]
            code = self.masker.text(str(entry.get("code") or "batch_validation_failed")[:100])
            meta = metas[cid]
            meta.attempts += 1
            self.events.line(cid, meta.attempts, None, error=code)
            self._fail(cid, meta, code, f"the batch's validation refused this request: "
                       f"{message}", None, out)
        # The lines it did not name (or all, if it named none) were not run: collect()
        # sends them again, each such batch an attempt.

    def _line(self, raw: bytes, metas: dict[str, Meta], part: PartState, batch_id: str,
              out: Collected, spend: bool) -> None:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return  # a line the server cut: its request counts as unanswered
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        meta = metas.get(cid) if isinstance(cid, str) else None
        if (meta is None or not isinstance(cid, str) or cid in self.done
                or self._written_off(cid, meta) or cid in out.again):
            return  # not ours, written before, or said twice
        response = obj.get("response")
        error = obj.get("error")
        status = response.get("status_code") if isinstance(response, dict) else None
        if type(status) is int and 200 <= status < 300 and not error:
            self._answered(cid, meta, obj, response, batch_id, out)
            return
        if status is None:
            code = self.masker.text(str(error.get("code"))[:100]) if isinstance(error, dict) \
                else ""
            if code in NOT_RUN:
                self._not_run(cid, meta, code, batch_id, str(code)[6:], out, spend)
                return
            message = str(error.get("message")) if isinstance(error, dict) else "no answer"
            exc: APIError = ServerError(self.masker.text(message)[:1000], code=code or None)
        else:
            exc = _error_of(status, response, self.masker)
        meta.attempts += 1
        meta.history.append({"attempt": meta.attempts, "status": exc.status,
                             "error": exc.kind, "message": exc.message[:200],
                             "batch": batch_id})
        self.events.line(cid, meta.attempts, exc.status, error=exc.kind)
        action = decide(exc, Attempt(meta.attempts, part.model), Context(self.policy))
        if isinstance(action, Fail):
            self._fail(cid, meta, action.code, action.message, exc, out)
        else:  # Retry, or anything else (a refused key...): another part sends it again
            out.again[cid] = meta
            out.retried += 1
            self.stats.retried()

    def _answered(self, cid: str, meta: Meta, obj: dict[str, Any], response: dict[str, Any],
                  batch_id: str, out: Collected) -> None:
        body = response.get("body")
        record: dict[str, Any] = {
            "id": str(obj.get("id") or ""),
            "custom_id": cid,
            "response": {"status_code": response["status_code"],
                         "request_id": str(response.get("request_id") or ""), "body": body},
        }
        if meta.metadata is not None:
            record["metadata"] = meta.metadata
        record["batchproc"] = {"batch": batch_id}
        record["error"] = None
        if self.masker:
            record = self.masker.tree(record)
        self.sink.write_result(record, meta.hashed)
        self.done.add(cid)
        prompt, completion = usage(body)
        self.stats.answered(prompt, completion, charged=0, estimated=0)
        self.events.line(cid, meta.attempts + 1, response["status_code"], prompt, completion)
        out.answered += 1

    def _fail(self, cid: str, meta: Meta, code: str, message: str, exc: APIError | None,
              out: Collected) -> None:
        self.sink.write_error(error_record(
            custom_id=cid, line=meta.line, code=code, message=message,
            status=exc.status if exc else None, request_id=exc.request_id if exc else None,
            body=exc.body if exc else None, attempts=meta.attempts, history=meta.history,
            metadata=meta.metadata, input_hash=meta.hashed))
        self.failed.add(cid, meta.hashed & 0xFFFFFFFF)
        self.stats.failed_for_good(code)
        self.events.failed(cid, meta.line, code, message)
        out.failed += 1


def _error_of(status: int, response: dict[str, Any], masker: Masker) -> APIError:
    """The APIError the online client would have raised for this answer."""
    headers = {"x-request-id": str(response.get("request_id") or "")}
    try:
        classify(status, orjson.dumps(response.get("body")), headers, masker)
    except APIError as exc:
        return exc
    return BadRequest(f"HTTP {status}", status=status)  # a 1xx or 3xx: not an answer


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                yield raw
