"""The run log of a Batch API run: the same ``<stem>.run.jsonl`` as online runs (the same
path rules, lock, secret-free ``start`` and ``end``), with what a batch run does.

What a Batch API run adds to the log (see :mod:`processor.store.runlog` for the shapes):

- ``pause`` / ``resume`` with ``r`` ``batch``: a part's batch from its creation (or, in
  a rerun, from the run's start) until it ends (``part``, ``batch``, ``requests``; the
  resume carries the batch's final ``status`` and ``counts``). ``r`` ``batch_queue``: a
  part waiting for room in the enqueued-token quota (``part``, ``model``, ``enqueued``,
  ``limit``) until its batch is created. ``r`` ``429`` / ``batch_retry``: a Batch API
  call (upload, create, poll, download) that failed and waits for its retry; ``limits``:
  one that waits a second or more for ``--rpm``.
- ``a``, one per request line collected: its ``custom_id``, attempt number, ``ts`` the
  batch's creation (clamped to this run's start), ``td`` the collection, the line's HTTP
  status (or ``er``: the error's kind; ``batch_expired`` ... for a line the batch never
  ran), prompt / completion tokens used, ``te`` its share of the part's enqueued tokens,
  ``k`` :data:`~processor.store.runlog.BATCH_KEY` (priced at the batch discount by the
  report) and ``m`` the model. A line costs one or two microseconds and about 135 bytes
  (``bench/batch_runlog.py``).
- ``batch_split``: a part that alone passes the queue's limit, split (``part``,
  ``tokens``, ``limit``, ``into``).
- ``fail``: a line written off (its error, or not run in ``--max-attempts`` batches).
- ``p`` after each round of polls; ``end`` with the stop reason (a detached run that
  left batches running ends ``completed``, its ``msg`` saying so).

The collector writes its ``a`` and ``fail`` events from a worker thread while the event
loop waits for it; nothing else writes to the log meanwhile (the signal handler only
sets flags), so the log's buffer has one writer at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..run.config import JobConfig
from ..run.events import NO_EVENTS, Events
from ..run.observer import open_run_log, start_fields
from ..stats import Stats
from ..store.runlog import BATCH_KEY, RunLog
from .state import PartState

__all__ = ["BatchEvents", "open_batch_log"]


def open_batch_log(path: Path, cfg: JobConfig, batch: dict[str, Any], src: Path,
                   results: Path, errors: Path, stats: Stats, done: int, failed: int,
                   clock: Callable[[], float]) -> RunLog:
    """Open the run log at ``path`` with the start event of a ``--via batch`` run
    (``batch``: its Batch settings, shown as ``batch`` beside ``cfg``)."""
    fields = start_fields(cfg, src, results, errors, stats, done, failed)
    fields["via"] = "batch"
    fields["batch"] = batch
    return open_run_log(path, cfg, clock, fields)


class BatchEvents:
    """What the Batch API driver and collector tell the run log.

    Args:
        events: the run log (or :data:`~processor.run.events.NO_EVENTS`: every call is
            a no-op check).
        wall: the wall clock (the state file's times are wall times).
    """

    def __init__(self, events: Events = NO_EVENTS,
                 wall: Callable[[], float] = time.time) -> None:
        self.events = events
        self.on = events.enabled
        self._wall = wall
        self._t0_wall = wall()
        #: parts whose batch wait / queue wait is open in this run's log.
        self._waiting: set[str] = set()
        self._queued: set[str] = set()
        # The fields every line of the batch being collected shares (its creation, its
        # collection, model, tokens per line), serialised once: ``,"ta":...,"m":"..."``.
        self._tail = b""
        self._log = events if isinstance(events, RunLog) else None

    def _rel(self, wall: float) -> float:
        """A wall time as seconds since this run's start (never before it)."""
        return round(max(0.0, wall - self._t0_wall), 3)

    # -- waits (the driver, on the event loop) -----------------------------------------

    def _written(self) -> None:
        # Waits are rare and may last hours: written at once, not at the next poll.
        if self._log is not None:
            self._log.flush()

    def batch_waits(self, part: PartState) -> None:
        """``part``'s batch runs: the run waits for it (once per part and run)."""
        if self.on and part.key not in self._waiting:
            self._waiting.add(part.key)
            self.events.pause("batch", part=part.key, batch=part.batch_id,
                              requests=part.requests, model=part.model)
            self._written()

    def batch_ended(self, part: PartState, status: str | None, **detail: Any) -> None:
        """``part``'s batch ended (``status``), or is gone (``not found``)."""
        if self.on:
            if part.key not in self._waiting:  # created and ended between two looks
                self.batch_waits(part)
            self._waiting.discard(part.key)
            # What the server said, cut short (a hostile one could say a lot).
            counts = {k: part.counts[k] for k in ("total", "completed", "failed")
                      if k in part.counts}
            self.events.resume("batch", part=part.key, batch=part.batch_id,
                               status=None if status is None else status[:100],
                               counts=counts, **detail)
            self._written()

    def queue_waits(self, part: PartState, enqueued: int, limit: int | None) -> None:
        """``part`` waits for room in its model's enqueued-token quota."""
        if self.on and part.key not in self._queued:
            self._queued.add(part.key)
            self.events.pause("batch_queue", part=part.key, model=part.model,
                              enqueued=enqueued, limit=limit, tokens=part.tokens)
            self._written()

    def queue_room(self, part: PartState) -> None:
        """``part``'s batch was created: its wait for room (if any) is over."""
        if self.on and part.key in self._queued:
            self._queued.discard(part.key)
            self.events.resume("batch_queue", part=part.key)
            self._written()

    def limits_wait(self, seconds: float) -> None:
        """A Batch API call waits ``seconds`` for the limiter (logged from a second on,
        as online)."""
        if self.on and seconds >= 1.0:
            self.events.pause("limits", seconds=seconds)

    def split(self, part: PartState, into: list[PartState], limit: int) -> None:
        """``part`` passed the queue's ``limit`` alone: split into the parts ``into``."""
        if self.on:
            self.events.emit("batch_split", part=part.key, tokens=part.tokens, limit=limit,
                             into=[p.key for p in into])

    def call_retry(self, kind: str, error: str, seconds: float, rate_limited: bool) -> None:
        """A Batch API call failed (``error``: its kind) and waits ``seconds`` to retry."""
        if self.on:
            self.events.pause("429" if rate_limited else "batch_retry", seconds=seconds,
                              call=kind, error=error)

    # -- lines (the collector, in its worker thread) -----------------------------------

    def begin(self, part: PartState, batch: dict[str, Any]) -> None:
        """The collector starts on ``part``'s ended ``batch``."""
        if not self.on:
            return
        created = part.intent_at
        if not created:
            server = batch.get("created_at")
            created = float(server) if isinstance(server, (int, float)) else self._wall()
        td = self._rel(self._wall())
        ts = min(self._rel(created), td)  # never after its collection (an odd clock)
        shared = {"t": td, "ta": ts, "ts": ts, "td": td,
                  "te": round(part.tokens / max(part.requests, 1)), "k": BATCH_KEY,
                  "m": part.model}
        self._tail = b"," + orjson.dumps(shared)[1:-1]

    def line(self, custom_id: str, attempt: int, status: int | None, prompt: int = 0,
             completion: int = 0, error: str | None = None) -> None:
        """One request line of the batch collected: answered (``error`` None) or not."""
        if not self.on:
            return
        # One serialisation per line: the line's own fields, then the batch's (about a
        # microsecond; the collection itself costs some 15).
        event: dict[str, Any] = {"ev": "a", "id": custom_id, "n": attempt, "st": status}
        if error is None:
            event["tp"], event["tc"] = prompt, completion
        else:
            event["er"] = error
        line = orjson.dumps(event)[:-1] + self._tail + b"}\n"
        if self._log is not None:
            self._log.add_line(line)
        else:  # another sink: the same event through its generic call
            self.events.emit("a", **orjson.loads(line))

    def failed(self, custom_id: str, line: int, code: str, message: str) -> None:
        self.events.failed(custom_id, line, code, message)
