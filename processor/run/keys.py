"""API keys: each a :class:`Lane` with its own counters; the pool picks one and retires
the ones the server refuses, and feeds each key's limiter what the server says."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..jobs import Job
from ..limits import Limiter, Unit
from ..limits.counter import MINUTE
from ..limits.models import ModelLimiters
from ..limits.server import MAX_STATED
from ..stats import Stats
from .events import NO_EVENTS, Events

__all__ = ["PROBE_ANSWERS", "KeyPool", "Lane", "implausible"]

#: answers without rate-limit headers after which ``auto`` gives up learning.
PROBE_ANSWERS = 3

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Lane:
    """One API key with its own capacity counters.

    Attributes:
        name: how the key is named in messages and results (its environment variable).
        limiter: this key's counters.
        headers: auth headers for this key (None: the client's default).
        retired: set once the server refused the key (401/403).
        models: the key's limiters per model bucket (None: ``limiter`` for all models;
            else ``limiter`` holds the bare flags for calls that are no model's).
    """

    name: str | None
    limiter: Limiter
    headers: Mapping[str, str] | None = None
    retired: bool = False
    answered: int = 0
    models: ModelLimiters[Limiter] | None = None

    def limiter_for(self, model: str | None) -> Limiter:
        """The limiter that admits ``model``'s requests on this key."""
        return self.limiter if self.models is None else self.models.get(model)

    def limiters(self) -> list[Limiter]:
        """Every limiter of this key made so far."""
        return [self.limiter] if self.models is None else self.models.all()

    def bucket(self, model: str | None) -> str:
        """The counters ``model``'s requests pass ("" when all models share them)."""
        return "" if self.models is None else self.models.bucket(model)


def implausible(limiter: Limiter, name: str, value: float) -> str:
    """``tokens/min 0.001 (below the smallest request, 37 tokens)``: why it cannot be real."""
    unit = Unit.REQUESTS if name == Unit.REQUESTS.per_minute else Unit.TOKENS
    if value > MAX_STATED[unit]:
        return f"{name} {value:g} (above any real limit)"
    if name == Unit.REQUESTS.per_minute:
        return f"{name} {value:g} (below one request)"
    smallest = limiter.smallest_tokens
    if value < 1 or not math.isfinite(smallest):
        return f"{name} {value:g} (below one token)"
    return f"{name} {value:g} (below the smallest request, {smallest:g} tokens)"


class KeyPool:
    """The run's keys: which may take a request now, which the server refused.

    Args:
        lanes: one per key (at least one).
        stats: the run's counters (limits learned, notes).
    """

    events: Events = NO_EVENTS

    def __init__(self, lanes: list[Lane], stats: Stats) -> None:
        self.lanes = lanes
        self.stats = stats
        self._answers_without_headers = 0
        #: (lane, counter) pairs already warned about a limit that cannot be real.
        self._warned: set[tuple[int, str]] = set()
        #: 429s in a row per lane while it states such a limit.
        self._refusals: dict[int, int] = {}
        #: no key has an ``auto`` limit left to learn: it never gets one back, so
        #: :attr:`learning` (asked on every admission) is False from then on.
        self._settled = False
        #: no limiter made later (one per new model) would learn: once none of those made
        #: learns, :attr:`learning` is settled.
        self._no_new_learners = all(
            lane.models is None or not (lane.models.plan.auto_rpm or lane.models.plan.auto_tpm)
            for lane in lanes)
        #: per limiter (a key's, or a model's on it), the limits it last stated (for the
        #: ``limit`` events).
        self._said: dict[int, tuple[Any, ...]] = {}
        #: the open pause admission reported (Redis down): reason, limiter, since when.
        self._paused: tuple[str, Limiter, float] | None = None

    @property
    def working(self) -> list[Lane]:
        return [lane for lane in self.lanes if not lane.retired]

    @property
    def learning(self) -> bool:
        """Some working key still learns its limits from the server's headers."""
        if self._settled:
            return False
        if self._no_new_learners and not any(limiter.server.auto for lane in self.lanes
                                             for limiter in lane.limiters()):
            self._settled = True
            return False
        return any(limiter.learning for lane in self.lanes if not lane.retired
                   for limiter in lane.limiters())

    def label(self, lane: Lane) -> str:
        """The key's name for messages when the run has several, else ""."""
        return lane.name or "" if len(self.lanes) > 1 else ""

    def pick(self, tokens: int) -> tuple[Lane | None, float]:
        """A working key that admits ``tokens`` now (spent there): ``(lane, 0)``; else the
        key that admits soonest and the seconds to wait (``(None, inf)``: none left)."""
        best: Lane | None = None
        shortest = math.inf
        for lane in self.working:
            wait = lane.limiter.try_acquire(tokens)
            if wait <= 0:
                return lane, 0.0
            if wait != wait:  # NaN: no finite answer from the counters, wait a second
                wait = 1.0
            if best is None or wait < shortest:  # inf waits too: a spent budget
                best, shortest = lane, wait
        return best, shortest

    async def acquire(self, job: Job) -> tuple[Lane | None, float]:
        """:meth:`pick` for ``job``'s model, asking remote limiters too (Redis).

        The stats' :attr:`~processor.stats.Stats.waiting_for` says what admission waits
        for besides the limits (Redis down), for the display.
        """
        best: Lane | None = None
        shortest = math.inf
        trouble: tuple[Limiter, str] | None = None
        for lane in self.working:
            limiter = lane.limiter_for(job.model)
            wait = await limiter.acquire(job.tokens)
            if trouble is None and (words := limiter.trouble) is not None:
                trouble = limiter, words
            if wait <= 0:
                self._waiting(trouble)
                return lane, 0.0
            if wait != wait:  # NaN: no finite answer from the counters, wait a second
                wait = 1.0
            if best is None or wait < shortest:
                best, shortest = lane, wait
        self._waiting(trouble)
        return best, shortest

    def _waiting(self, trouble: tuple[Limiter, str] | None) -> None:
        """Publish what admission waits for besides the limits, and tell the run log
        when such a wait (Redis down) starts (a ``pause`` without end) and ends."""
        self.stats.waiting_for = None if trouble is None else trouble[1]
        if trouble is not None and self._paused is None:
            reason, detail = trouble[0].trouble_event()
            self._paused = reason, trouble[0], trouble[0].now()
            self.events.pause(reason, None, **detail)
        elif trouble is None and self._paused is not None:
            reason, limiter, since = self._paused
            self._paused = None
            self.events.resume(reason, down=round(limiter.now() - since, 3))

    def publish_model_limits(self) -> None:
        """Each model bucket's per-minute limits now, summed over the working keys, for
        the display (the ticks' work, never a request's; only while the job has several
        buckets). A unit some key does not limit is unlimited (None)."""
        if not 2 <= len(self.stats.by_model) <= 100:  # as the display (MAX_MODELS)
            return
        found: dict[str, tuple[float | None, float | None]] = {}
        for lane in self.working:
            if lane.models is None:
                continue
            for bucket, limiter in lane.models.by_bucket.items():
                here = _lowest_per_minute(limiter)
                if (had := found.get(bucket)) is not None:
                    here = _plus(had[0], here[0]), _plus(had[1], here[1])
                found[bucket] = here
        self.stats.set_model_limits(found)

    def retire(self, lane: Lane, why: str) -> None:
        lane.retired = True
        name = lane.name or "?"
        self.stats.retired_keys.append(name)
        self.events.emit("key_retired", key=name, why=why)
        message = f"API key ${name} retired: the server refused it ({why})"
        self.stats.note(message)
        log.warning("%s", message)

    def refused(self, lane: Lane, model: str | None = None) -> tuple[int, str]:
        """One more 429 on ``lane``: how many in a row while it states a limit that cannot
        be real (0 if it states none), and that limit in words."""
        limiter = lane.limiter_for(model)
        if not limiter.ignored:
            self._refusals.pop(id(lane), None)
            return 0, ""
        count = self._refusals[id(lane)] = self._refusals.get(id(lane), 0) + 1
        told = "; ".join(implausible(limiter, k, v) for k, v in limiter.ignored.items())
        return count, told

    def answered(self, lane: Lane) -> None:
        if self._refusals:
            self._refusals.pop(id(lane), None)

    def learn(self, lane: Lane, info: Any, *, sent_at: float, cum_requests: float,
              cum_tokens: float, force: bool, refused_tokens: int | None = None,
              model: str | None = None) -> None:
        """Feed one answer's rate-limit headers (``info``; None: it had none) to the
        limiter of ``model`` on the key."""
        stats = self.stats
        limiter = lane.limiter_for(model)
        bucket = lane.bucket(model)
        if info is None or info.limit_requests is None and info.limit_tokens is None:
            # No limit stated (or only garbage, "NaN", "-1"): nothing to learn from.
            if limiter.learning:
                self._answers_without_headers += 1
                if self._answers_without_headers >= PROBE_ANSWERS:
                    limiter.stop_learning()
                    stats.note("the server states no limits (no usable "
                               "x-ratelimit-limit-* headers): nothing to learn limits "
                               "from, so none applied (set --rpm/--tpm)")
            return
        was_learning = limiter.learning
        # A per-minute limit changes only with what the server states (or whether it is
        # believed): the counters are compared only then, not on every answer.
        said = (info.limit_requests, info.limit_tokens, len(limiter.ignored))
        before = None
        if self.events.enabled and self._said.get(id(limiter)) != said:
            self._said[id(limiter)] = said
            before = _per_minute(limiter)
        limiter.sync(info.limit_requests, info.remaining_requests, info.limit_tokens,
                     info.remaining_tokens, sent_at=sent_at, cum_requests=cum_requests,
                     cum_tokens=cum_tokens, force=force, refused_tokens=refused_tokens)
        for name, value in limiter.learned.items():
            short = "rpm" if name == Unit.REQUESTS.per_minute else "tpm"
            if bucket and len(lane.limiters()) > 1:
                short += f" {bucket}"
            if stats.learned_limit(short, value) and was_learning:
                log.info("learned %s = %g from the server's headers", short, value)
        if before is not None:
            for short, value in _per_minute(limiter).items():
                if before.get(short) != value:  # the limit in force changed
                    self.events.emit("limit", name=short, value=value, key=lane.name,
                                     model=bucket or None)
        if was_learning and not limiter.learning and limiter.learned:
            learned = ", ".join(f"{k} {v:g}" for k, v in limiter.learned.items())
            of = f" for {bucket}" if bucket else ""
            stats.note(f"limits learned from the server{of}: {learned}")
        for name, value in limiter.ignored.items():
            if (id(lane), name) not in self._warned:
                self._warned.add((id(lane), name))
                told = implausible(limiter, name, value)
                message = f"ignored the server's stated limit of {told}"
                if lane.name and len(self.lanes) > 1:
                    message += f" (key ${lane.name})"
                stats.note(message)
                log.warning("%s", message)


def _per_minute(limiter: Limiter) -> dict[str, float]:
    """The per-minute limits in force on a key ("rpm", "tpm")."""
    return {"rpm" if c.unit is Unit.REQUESTS else "tpm": c.limit
            for c in limiter.counters if c.period == MINUTE}


def _lowest_per_minute(limiter: Limiter) -> tuple[float | None, float | None]:
    """The lowest per-minute limit on requests and on tokens that holds ``limiter``'s
    model (its own or its key's), None where none does."""
    out: list[float | None] = []
    for unit in (Unit.REQUESTS, Unit.TOKENS):
        limits = [c.limit for c in limiter.counters
                  if c.unit is unit and c.period == MINUTE and math.isfinite(c.limit)]
        out.append(min(limits) if limits else None)
    return out[0], out[1]


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b
