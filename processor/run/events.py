"""What a run tells an observer: each attempt, each final failure, pauses, limits, stops.

The engine and its parts call an :class:`Events` sink at the moments worth recording
(the run log, :class:`~processor.store.runlog.RunLog`, is one implementation). The
default, :data:`NO_EVENTS`, does nothing: calls from the hot path pass the objects at
hand (the job, the response or the error) and never build a dict, so a run without a
log pays one method call per attempt.

Every component that reports holds ``events`` as a class attribute defaulting to
:data:`NO_EVENTS`; the engine sets the run's sink on each, so no constructor changes.
Times are the engine's clock (``Engine.now()``).

Rare events go through the generic calls, one line each wherever they happen::

    events.pause("429", seconds=2.0, key="A")     # a wait with a known end
    events.pause("outage")                        # ... or an open-ended one
    events.resume("outage", down=31.5)            # the open-ended pause is over
    events.emit("limit", name="rpm", value=500)   # anything else: a kind and fields
"""

from __future__ import annotations

from typing import Any, Protocol

from ..client.answers import Response
from ..errors import APIError
from ..jobs import Job

__all__ = ["NO_EVENTS", "Events", "NoEvents"]


class Events(Protocol):
    """An observer of a run."""

    #: False for the no-op sink: a caller may skip work done only to report.
    enabled: bool

    def attempt(self, job: Job, sent: float, done: float, response: Response | None,
                error: APIError | None) -> None:
        """One attempt of ``job`` came back: answered (``response``) or failed
        (``error``); ``sent`` / ``done``: when it went on the wire and came back
        (``job.sent_at``: when the limiter admitted it)."""

    def failed(self, custom_id: str | None, line: int, code: str, message: str) -> None:
        """A request (or an input line) written off: an error record."""

    def pause(self, reason: str, seconds: float | None = None, **detail: Any) -> None:
        """Admission holds for ``seconds`` (None: until :meth:`resume`) because of
        ``reason`` (``429``, ``outage``, ``limits``, ``daily``, a Redis or Batch wait ...)."""

    def resume(self, reason: str, **detail: Any) -> None:
        """An open-ended pause is over."""

    def emit(self, kind: str, **fields: Any) -> None:
        """Any other event: ``kind`` and a few JSON-able fields."""


class NoEvents:
    """The default sink: every call does nothing."""

    __slots__ = ()

    enabled = False

    def attempt(self, job: Job, sent: float, done: float, response: Response | None,
                error: APIError | None) -> None:
        pass

    def failed(self, custom_id: str | None, line: int, code: str, message: str) -> None:
        pass

    def pause(self, reason: str, seconds: float | None = None, **detail: Any) -> None:
        pass

    def resume(self, reason: str, **detail: Any) -> None:
        pass

    def emit(self, kind: str, **fields: Any) -> None:
        pass


NO_EVENTS: Events = NoEvents()

