"""What becomes of a request: readied for the wire (or reported as a bad line), answered
(a result record), or failed for good (an error record); each counted in the stats."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from ..client.answers import usage
from ..client.http import Response
from ..cost import Cost
from ..errors import APIError, JobFormatError
from ..jobs import BadLine, Job
from ..limits.limiter import Limiter
from ..stats import Stats
from ..store.records import RecordIds, error_record, result_record
from .events import NO_EVENTS, Events
from .keys import Lane

__all__ = ["Outcomes", "Shared", "Sink"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where records go (a :class:`~processor.jobs.ResultWriter`, or a pipeline's queue)."""

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None: ...

    def write_error(self, record: dict[str, Any]) -> None: ...

    def maybe_sync(self) -> None: ...


class Shared(Protocol):
    """Told of a request's outcome once it is written (:mod:`processor.run.singleflight`)."""

    def answered(self, job: Job, response: Response, prompt: int, completion: int) -> None: ...

    def failed(self, job: Job, code: str, message: str, exc: APIError | None) -> None: ...


class Outcomes:
    """Writes each request's outcome to the sink and counts it.

    Args:
        sink: where records go; ``stats``: the run's counters.
        cost: a job's admission cost (may raise ``ValueError`` or
            :class:`~processor.errors.JobFormatError` for a request that cannot be costed).
        limiter: the first key's counters for a model (a request larger than a whole
            limit fails); a :class:`Limiter` stands for every model.
    """

    events: Events = NO_EVENTS

    def __init__(self, sink: Sink, stats: Stats, cost: Callable[[Job], int | Cost],
                 limiter: Limiter | Callable[[str | None], Limiter]) -> None:
        self.sink = sink
        self.stats = stats
        self.cost = cost
        self.limiter_for = (lambda _model: limiter) if isinstance(limiter, Limiter) \
            else limiter
        self._record_id = RecordIds()
        #: told of the outcomes of requests that others wait on, or that may be cached.
        self.shared: Shared | None = None

    def prepare(self, item: Job | BadLine) -> Job | None:
        """Serialise and cost a new job; report it as a bad line if either fails.

        Input that parses can still be unsendable (a body nested deeper than the JSON
        writer allows, say) or trip the cost function in any way: that line becomes
        one error record and the run goes on.
        """
        if isinstance(item, BadLine):
            self.bad(item.line, item.reason, item.custom_id, input_hash=item.line_hash)
            return None
        try:
            item.payload = orjson.dumps(item.body)
            if item.metadata is not None:
                orjson.dumps(item.metadata)  # it is copied into the output record
        except orjson.JSONEncodeError as exc:
            self.bad(item.line, f"request cannot be sent as JSON: {exc}", item.custom_id,
                     input_hash=item.line_hash)
            return None
        try:
            cost = self.cost(item)
            if isinstance(cost, int):
                item.tokens = cost
            else:
                item.tokens = cost.total
                item.prompt_tokens = cost.prompt_tokens
        except (JobFormatError, ValueError) as exc:
            self.bad(item.line, f"cannot cost request: {exc}", item.custom_id, item.metadata,
                     input_hash=item.line_hash)
            return None
        except Exception as exc:  # noqa: BLE001 - odd input must not end the run
            log.warning("line %d: costing the request raised %s", item.line, type(exc).__name__,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            self.bad(item.line, f"cannot cost request: {type(exc).__name__}: {exc}"[:300],
                     item.custom_id, item.metadata, input_hash=item.line_hash)
            return None
        # Only a flag can make a request too large: a limit from headers may be wrong.
        too_large = self.limiter_for(item.model).too_large(item.tokens)
        if too_large is not None:
            self.fail(item, "request_too_large",
                      f"request needs {item.tokens} tokens, more than the whole "
                      f"{too_large.name} limit of {too_large.ceiling:g}; it can never be "
                      "admitted")
            return None
        return item

    def answered(self, job: Job, lane: Lane, response: Response, key: str, *,
                 packed: int = 0) -> int:
        """Write ``job``'s result (``key``: the key's name, "" for the only key; ``packed``:
        how many lines shared its request, 0 if none); return the tokens it used (0 if
        the answer does not say)."""
        prompt, completion = usage(response.body)
        record = result_record(job, response.status, response.request_id, response.body,
                               self._record_id())
        if key or packed or job.fallback_from is not None:
            extra: dict[str, Any] = {}
            if key:
                extra["key"] = key
            if job.fallback_from is not None:
                extra["model"] = job.model
                extra["fallback_from"] = job.fallback_from
            if packed:
                extra["packed"] = packed
            record["batchproc"] = extra
        self.sink.write_result(record, job.line_hash)
        # Counted once written: a result that could not be written is not done.
        self.stats.answered(prompt, completion, charged=job.tokens,
                            estimated=job.prompt_tokens, key=key or None)
        if self.shared is not None and job.request_key is not None:
            self.shared.answered(job, response, prompt, completion)
        return prompt + completion

    def fail(self, job: Job, code: str, message: str, exc: APIError | None = None) -> None:
        """Write ``job`` off: an error record."""
        self.stats.failed_for_good(code)
        self.events.failed(job.custom_id, job.line, code, message)
        self.sink.write_error(error_record(
            record_id=self._record_id(),
            custom_id=job.custom_id, line=job.line, code=code, message=message,
            status=exc.status if exc else None, request_id=exc.request_id if exc else None,
            body=exc.body if exc else None, attempts=job.attempts, history=job.history,
            metadata=job.metadata, input_hash=job.line_hash,
        ))
        if self.shared is not None and job.request_key is not None:
            self.shared.failed(job, code, message, exc)

    def bad(self, line: int, reason: str, custom_id: str | None = None,
            metadata: Any = None, *, input_hash: int = 0) -> None:
        """Report a bad input line."""
        self.stats.bad_line()
        self.events.failed(custom_id, line, "invalid_line", reason)
        self.sink.write_error(error_record(custom_id=custom_id, line=line, code="invalid_line",
                                           message=reason, metadata=metadata,
                                           record_id=self._record_id(), input_hash=input_hash))
