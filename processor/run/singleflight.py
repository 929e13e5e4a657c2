"""Answers that need no request of their own: cache hits and single-flight.

A stage between reading a line and admitting it (:meth:`SharedAnswers.take`):

1. A request identical to one in flight or waiting for a retry (the same key, see
   :mod:`processor.store.cachekey`) is a *follower*: it waits, holding no in-flight
   slot and no capacity, for its *leader*'s outcome.
2. Else, with ``--cache``, a stored answer is written at once as its result, marked
   ``"batchproc": {"cached": true}``; it never reaches the limiter.
3. Else the request becomes a leader and is admitted as usual.

When the leader is answered (:meth:`SharedAnswers.answered`), its result is written
first, then the answer is stored in the cache and written for each follower, each
under its own ``custom_id`` and marked ``"batchproc": {"shared_from": <leader's
custom_id>}``. A leader that is retried keeps its followers waiting; one that fails for
good gives each follower the same failure (an error record of its own, same mark): an
identical request would fail the same way, and sending it again would spend attempts
and capacity on a known outcome (``--retry-failed`` on a rerun sends them again).

A follower is written only after its leader's result is, each in its own write: a kill
between them leaves the follower without a record, and a rerun sends it (or serves it
from the cache). Memory stays bounded: only the keys of leaders in flight or waiting
are kept, and at most ``max_waiting`` followers; while that many wait, no new line is
read. An identical request read after its leader was answered is sent again unless
the cache holds the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..client.http import Response
from ..errors import APIError
from ..jobs import Job
from ..stats import Stats
from ..store.cache import ResponseCache
from ..store.cachekey import CacheMode, KeyMaker, Share, repeatable
from ..store.records import RecordIds, error_record, result_record
from .events import NO_EVENTS, Events
from .outcomes import Sink
from .packing import PackedJob, packed_job

__all__ = ["Dedupe", "SharedAnswers"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Dedupe:
    """What may be answered without a request of its own.

    Attributes:
        keys: makes a request's key.
        share: which requests are sent once while identical ones wait.
        cache: the response cache (None: no ``--cache``).
        mode: what the cache may do.
    """

    keys: KeyMaker
    share: Share = Share.ALL
    cache: ResponseCache | None = None
    mode: CacheMode = CacheMode.ALL

    @property
    def active(self) -> bool:
        return self.cache is not None or self.share is not Share.OFF


@dataclass(slots=True)
class _Flight:
    leader: Job
    followers: list[Job] = field(default_factory=list)


class SharedAnswers:
    """The stage: see the module's docstring.

    Args:
        sink / stats: where records go; the run's counters.
        dedupe: keys, cache and modes.
        max_waiting: followers waiting at most before reading pauses.
    """

    #: told of each answer written without a request, and each follower's failure.
    events: Events = NO_EVENTS

    def __init__(self, sink: Sink, stats: Stats, dedupe: Dedupe, *, max_waiting: int) -> None:
        self.sink = sink
        self.stats = stats
        self.dedupe = dedupe
        self.max_waiting = max(1, max_waiting)
        self._flights: dict[bytes, _Flight] = {}
        self._waiting = 0
        self._ids = RecordIds()
        self._warned = False

    @property
    def waiting(self) -> int:
        """Followers waiting for their leader."""
        return self._waiting

    @property
    def leaders(self) -> int:
        """Requests tracked as leaders (in flight or waiting for a retry)."""
        return len(self._flights)

    def room(self) -> bool:
        """Whether another line may be read (fewer than ``max_waiting`` followers wait)."""
        return self._waiting < self.max_waiting

    def _uses(self, job: Job) -> tuple[bool, bool, bool]:
        """``(share, look up, store)`` for ``job``."""
        d = self.dedupe
        fixed: bool | None = None
        if d.share is Share.DETERMINISTIC or d.mode is CacheMode.DETERMINISTIC:
            fixed = repeatable(job.url, job.body)
        share = d.share is Share.ALL or (d.share is Share.DETERMINISTIC and bool(fixed))
        if d.cache is None or (d.mode is CacheMode.DETERMINISTIC and not fixed):
            return share, False, False
        return share, d.mode.reads, d.mode.writes

    def take(self, job: Job) -> Job | None:
        """What of ``job`` needs a request: None if it follows a leader or was answered
        from the cache, else ``job`` (a leader, if it may lead). Of a pack
        (``--pack``), each line is taken on its own: the pack goes with the lines left."""
        if isinstance(job, PackedJob):
            keep = [part for part in job.parts if not self._take(part)]
            if len(keep) == len(job.parts):
                return job
            if len(keep) < 2:
                return keep[0] if keep else None
            kept = {id(part) for part in keep}
            return packed_job(keep, [count for part, count in zip(job.parts, job.counts,
                                                                   strict=True)
                                     if id(part) in kept])
        return None if self._take(job) else job

    def _take(self, job: Job) -> bool:
        """True if ``job`` needs no request of its own."""
        share, look, store = self._uses(job)
        job.request_key = None
        if not (share or look or store):
            return False
        try:
            key = self.dedupe.keys(job.url, job.body)
        except (orjson.JSONEncodeError, TypeError, ValueError):
            return False  # the engine reports an unsendable body itself
        if share:
            flight = self._flights.get(key)
            if flight is not None:
                flight.followers.append(job)
                self._waiting += 1
                return True
        if look:
            assert self.dedupe.cache is not None
            hit = self.dedupe.cache.get(key)
            body = _object(hit.body) if hit is not None else None
            if hit is not None and body is not None:
                record = result_record(job, hit.status, hit.request_id, body, self._ids())
                record["batchproc"] = {"cached": True}
                self.sink.write_result(record, job.line_hash)
                self.stats.served(cached=True, model=hit.model or job.model,
                                  prompt=hit.prompt_tokens, completion=hit.completion_tokens)
                if self.events.enabled:
                    self.events.emit("s", id=job.custom_id, how="cached",
                                     m=hit.model or job.model)
                return True
        job.request_key = key
        if share:
            self._flights[key] = _Flight(job)
        return False

    def _flight(self, job: Job) -> _Flight | None:
        key = job.request_key
        if key is None:
            return None
        flight = self._flights.get(key)
        if flight is None or flight.leader is not job:
            return None
        del self._flights[key]
        self._waiting -= len(flight.followers)
        return flight

    def answered(self, job: Job, response: Response, prompt: int, completion: int) -> None:
        """``job`` (a leader, or a request the cache may store) was answered and its
        result written: store the answer, then write it for each follower.

        Raises:
            OSError: a follower's result could not be written (the run stops; the
                followers not written are sent on a rerun).
        """
        flight = self._flight(job)
        cache = self.dedupe.cache
        if cache is not None and job.fallback_from is None and self._uses(job)[2]:
            # An answer from a fallback model is not the answer to the request as asked.
            assert job.request_key is not None
            try:
                cache.put(job.request_key, response.status, response.request_id,
                          response.body, job.model, prompt, completion)
            except (orjson.JSONEncodeError, TypeError) as exc:
                self._warn(f"an answer could not be stored in the cache: {exc}")
        if flight is None or not flight.followers:
            return
        extra: dict[str, Any] = {"shared_from": job.custom_id}
        if job.fallback_from is not None:
            extra |= {"model": job.model, "fallback_from": job.fallback_from}
        data = orjson.dumps(response.body)
        for follower in flight.followers:
            # Each record gets its own copy of the body: a pipeline's reader may change one.
            record = result_record(follower, response.status, response.request_id,
                                   orjson.loads(data), self._ids())
            record["batchproc"] = dict(extra)
            self.sink.write_result(record, follower.line_hash)
            self.stats.served(cached=False, model=job.model, prompt=prompt,
                              completion=completion)
            if self.events.enabled:
                self.events.emit("s", id=follower.custom_id, how="shared", m=job.model)

    def failed(self, job: Job, code: str, message: str, exc: APIError | None) -> None:
        """``job`` failed for good and its error was written: its followers fail alike."""
        flight = self._flight(job)
        if flight is None:
            return
        for follower in flight.followers:
            record = error_record(
                record_id=self._ids(), custom_id=follower.custom_id, line=follower.line,
                code=code, message=message, status=exc.status if exc else None,
                request_id=exc.request_id if exc else None, body=exc.body if exc else None,
                attempts=job.attempts, history=job.history, metadata=follower.metadata,
                input_hash=follower.line_hash)
            record["batchproc"] = {"shared_from": job.custom_id}
            self.stats.failed_for_good(code)
            self.sink.write_error(record)
            self.events.failed(follower.custom_id, follower.line, code, message)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message)


def _object(data: bytes) -> dict[str, Any] | None:
    """A stored body, parsed; None if it is not a JSON object (a damaged row: a miss)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
