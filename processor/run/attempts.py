"""One attempt: send a request, then record the answer, or record what the failure says
and carry out what :func:`~processor.run.policy.decide` makes of it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from ..client.http import Response
from ..errors import APIError, APITimeout, RateLimited, ServerError
from ..jobs import Job
from ..stats import StopReason
from .admission import Control
from .events import NO_EVENTS, Events
from .keys import KeyPool, Lane
from .outage import OutageWatch
from .outcomes import Outcomes
from .packing import PackedJob, UnmappedAnswer, parts_of, split_pack
from .policy import (
    LONG_PAUSE,
    Action,
    Attempt,
    Context,
    Fail,
    Leave,
    Requeue,
    RetireKey,
    Retry,
    Stop,
    SwitchModel,
    decide,
    refuses_model,
)
from .retry import Fallback, RetryPolicy, server_hint
from .unpacking import unpack

__all__ = ["Attempts", "Sender"]

log = logging.getLogger(__name__)

#: a server's pause longer than this is told on the progress line (Stats).
NOTICE_PAUSE = 60.0


class Sender(Protocol):
    """What the engine needs from a client."""

    async def post(
        self,
        endpoint: str,
        payload: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        model: str | None = None,
    ) -> Response: ...


class Attempts:
    """Sends one attempt at a time (one task each) and deals with what comes back.

    Args:
        run: the engine; ``client``: where requests go.
        keys / outcomes / outage: the keys, the records, the circuit's watch (or None).
        requeue_at: ``requeue_at(job, delay)`` sends a job again later.
        policy / fallback: see :class:`~processor.run.policy.Context`.
        refund_unused: give back to the token counters what an answer did not use.
    """

    events: Events = NO_EVENTS

    def __init__(self, run: Control, client: Sender, keys: KeyPool, outcomes: Outcomes,
                 outage: OutageWatch | None, requeue_at: Callable[[Job, float], None], *,
                 policy: RetryPolicy, fallback: Fallback | None, refund_unused: bool) -> None:
        self.run = run
        self.client = client
        self.keys = keys
        self.outcomes = outcomes
        self.outage = outage
        self.requeue_at = requeue_at
        self.policy = policy
        self.fallback = fallback
        self.refund_unused = refund_unused
        self.stats = outcomes.stats

    async def attempt(self, job: Job) -> None:
        """Send ``job`` once on its key and deal with the outcome (never raises but for a
        cancellation; an output that cannot be written stops the run); then tell the
        engine it came back (:meth:`Control.returned`), cancelled or not."""
        try:
            lane = job.lane
            assert lane is not None
            job.attempts += 1
            try:
                events, now = self.events, self.run.now
                sent = now() if events.enabled else 0.0
                try:
                    response = await self.client.post(job.url, job.payload,
                                                      headers=lane.headers, model=job.model)
                except APIError as exc:
                    events.attempt(job, sent, now(), None, exc)
                    self.failed(job, exc)
                except Exception as exc:  # noqa: BLE001 - never lose a request to a surprise
                    # Only the type: the message of an unexpected error might quote a header.
                    log.error("unexpected %s sending %s; treated as a server error",
                              type(exc).__name__, job.custom_id, exc_info=log.isEnabledFor(10))
                    error = ServerError(f"unexpected {type(exc).__name__}")
                    events.attempt(job, sent, now(), None, error)
                    self.failed(job, error)
                else:
                    events.attempt(job, sent, now(), response, None)
                    self.answered(job, lane, response)
            except OSError as exc:
                # The disk is full or the file went away: stop before paying for answers
                # that cannot be kept. What was not written is sent again on the next run.
                self.run.halt(Stop(StopReason.OUTPUT_ERROR,
                                   f"cannot write the output files: {exc}"))
        finally:
            self.run.returned()  # the engine's count of attempts in flight

    def _learn(self, job: Job, info: Any, *, force: bool, refused: bool = False) -> None:
        assert job.lane is not None
        self.keys.learn(job.lane, info, sent_at=job.sent_at, cum_requests=job.cum_requests,
                        cum_tokens=job.cum_tokens, force=force,
                        refused_tokens=job.tokens if refused else None, model=job.model)

    def answered(self, job: Job, lane: Lane, response: Response) -> None:
        if self.outage is not None:
            self.outage.alive(job, self.run.now())
        self.keys.answered(lane)
        if response.ratelimit is not None or self.keys.learning:
            # (No headers and nothing to learn: nothing to do, the usual case at speed.)
            try:
                self._learn(job, response.ratelimit, force=False)
            except ValueError as exc:  # nonsense rate-limit headers must not cost the answer
                log.warning("ignored rate-limit headers: %s", exc)
        key = self.keys.label(lane)
        if isinstance(job, PackedJob):  # one answer per line (--pack)
            try:
                pieces = unpack(job, response)
            except UnmappedAnswer as exc:
                self.failed(job, exc)
                return
            used = sum(self.outcomes.answered(part, lane, piece, key, packed=len(pieces))
                       for part, piece in pieces)
        else:
            used = self.outcomes.answered(job, lane, response, key)
        if used and self.refund_unused and job.tokens > used:
            lane.limiter_for(job.model).refund(job.tokens - used)

    def failed(self, job: Job, exc: APIError) -> None:
        """Record what the failure says (history, headers, the key's pause, the circuit),
        :func:`~processor.run.policy.decide`, and carry the decision out."""
        lane = job.lane
        assert lane is not None
        job.history.append({"attempt": job.attempts, "status": exc.status, "error": exc.kind,
                            "message": exc.message[:300]})
        hint = server_hint(exc)
        if exc.ratelimit is not None:
            self._learn(job, exc.ratelimit, force=True, refused=isinstance(exc, RateLimited))
        if split_pack(job, exc, self.requeue_at):  # one input's fault: its halves go again
            if self.outage is not None and not isinstance(exc, ServerError):
                self.outage.alive(job, self.run.now())  # (an unmapped 2xx was counted)
            return
        insisted, told = 0, ""
        if isinstance(exc, RateLimited):
            self.stats.refused()
            # The key's pause, however long: a paused key is avoided, and when every
            # key waits over an hour, admission stops the run (long_wait_stop).
            limiter = lane.limiter_for(job.model)
            limiter.rate_limited(hint)
            pause = limiter.paused_until - self.run.now()
            if pause > NOTICE_PAUSE:  # told on the progress line (not a minute's silence)
                self.stats.server_pause_until = time.time() + pause
                self.stats.server_pause_key = self.keys.label(lane)
            if self.events.enabled:
                self.events.pause("429", pause,
                                  key=lane.name, model=lane.bucket(job.model) or None,
                                  scale=round(limiter.backoff.scale, 3))
            insisted, told = self.keys.refused(lane, job.model)
        outage = self._weigh_outage(job, exc, hint)
        switched = job.fallback_from is not None
        if refuses_model(exc, job.model, self.fallback, switched):
            job.model_refusals += 1
        action = decide(exc, Attempt(job.attempts, job.model, switched, job.model_refusals),
                        Context(self.policy, self.fallback, lane.name or "", len(self.keys.lanes),
                                lane.retired, len(self.keys.working), self.run.stopping, outage,
                                insisted, told))
        self.carry_out(job, lane, exc, action)

    def _weigh_outage(self, job: Job, exc: APIError, hint: float | None) -> bool:
        """Feed the circuit; True if the failure was an outage's (its attempt given back)."""
        if self.outage is None:
            return False
        if not isinstance(exc, (ServerError, APITimeout)):
            self.outage.alive(job, self.run.now())
            return False
        if hint is not None and hint > LONG_PAUSE:
            return False  # the run stops for it (decide)
        retry = self.policy.should_retry(exc, job.attempts)
        return self.outage.failed(job, self.run.now(), hint, retry=retry)

    def carry_out(self, job: Job, lane: Lane, exc: APIError, action: Action) -> None:
        """Do what ``action`` says about ``job`` (whose last attempt failed with ``exc``)."""
        match action:
            case Retry(delay):
                self.requeue_at(job, delay)
                self.stats.retried()
            case Requeue(retry):
                job.attempts = max(0, job.attempts - 1)  # this attempt did not count
                self.requeue_at(job, 0.0)
                if retry:
                    self.stats.retried()
            case SwitchModel(model):
                job.fallback_from = job.model
                job.model = model
                job.body = dict(job.body, model=model)
                job.payload = orjson.dumps(job.body)
                self.stats.fell_back()
                self.requeue_at(job, 0.0)
            case Fail(code, message):
                for part in parts_of(job):  # a pack's lines each get their record
                    self.outcomes.fail(part, code, message, exc)
            case Leave():
                pass  # left for a resumed run
            case Stop():
                self.run.halt(action)
            case RetireKey(then):
                self.keys.retire(lane, exc.message)
                self.carry_out(job, lane, exc, then)
