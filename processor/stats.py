"""The live counters of a run, shared by the engine (which updates them) and the
progress display and summary (which read them)."""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any

from .durations import MAX_SHOWN, clamp_seconds, clock_at, human_duration

__all__ = ["MAX_SHOWN", "InputTally", "Stats", "StopReason", "clamp_seconds", "clock_at",
           "human_duration"]


class StopReason(enum.Enum):
    """Why a run ended; the exit code follows from it (:mod:`processor.cli.exits`)."""

    COMPLETED = "completed"
    """Every line was taken from the input and every request finished one way or another."""
    SIGINT = "SIGINT"
    """Interrupted (Ctrl-C): resumable."""
    SIGTERM = "SIGTERM"
    SIGHUP = "SIGHUP"
    RERUN_LATER = "rerun_later"
    """A wait of over an hour, a spent daily budget, an outage longer than the window, or
    a server that keeps refusing: nothing written off, rerun the same command later."""
    KEY_REFUSED = "key_refused"
    """The (every) API key was refused (401/403) or has no quota left."""
    OUTPUT_ERROR = "output_error"
    """An output file could not be written."""
    CALLER = "caller"
    """The program driving the engine stopped it (the pipeline's reader went away)."""
    ERROR = "error"
    """Stopped by an unexpected error or a cancellation."""

    @property
    def signal(self) -> bool:
        return self in (StopReason.SIGINT, StopReason.SIGTERM, StopReason.SIGHUP)


@dataclass(slots=True)
class InputTally:
    """What the input holds against the earlier runs' records, as read so far.

    One writer: the resume/edit filter, :class:`processor.store.inputfilter.InputFilter`
    (``tests/test_one_writer.py`` checks that no other module writes these). Everyone
    else reads them through the run's :class:`Stats` (``stats.skipped``, ...).

    Attributes:
        total: lines in the input (from a line count), or None when not counted.
        skipped: requests skipped because a previous run already answered them.
        changed: of those, lines that differ from the one answered (old answer kept).
        retried_failed: requests that failed for good before, sent again (--retry-failed).
        changed_failed: requests that failed for good before whose line changed: sent again.
        skipped_failed: requests that failed for good before, not sent again.
        superseded: changed lines whose earlier records --resend-changed moved aside.
        still_bad: lines reported bad in an earlier run, still bad (not written again).
        fixed_lines: earlier bad lines no longer in the input (fixed or removed).
        fixed_sent: requests sent from line numbers reported bad before.
    """

    total: int | None = None
    skipped: int = 0
    changed: int = 0
    changed_examples: list[str] = field(default_factory=list)
    retried_failed: int = 0
    changed_failed: int = 0
    changed_failed_examples: list[str] = field(default_factory=list)
    skipped_failed: int = 0
    superseded: int = 0
    still_bad: int = 0
    fixed_lines: int = 0
    fixed_sent: int = 0
    fixed_examples: list[int] = field(default_factory=list)


#: the facts of :class:`InputTally`, which :class:`Stats` shows read-only.
INPUT_FACTS = tuple(InputTally.__dataclass_fields__)


class _InputFacts:
    """The facts of :class:`InputTally` as read-only attributes of :class:`Stats`: their
    one writer is the resume/edit filter, everyone else reads them here."""

    __slots__ = ()
    input: InputTally

    @property
    def total(self) -> int | None:
        return self.input.total

    @property
    def skipped(self) -> int:
        return self.input.skipped

    @property
    def changed(self) -> int:
        return self.input.changed

    @property
    def changed_examples(self) -> list[str]:
        return self.input.changed_examples

    @property
    def retried_failed(self) -> int:
        return self.input.retried_failed

    @property
    def changed_failed(self) -> int:
        return self.input.changed_failed

    @property
    def changed_failed_examples(self) -> list[str]:
        return self.input.changed_failed_examples

    @property
    def skipped_failed(self) -> int:
        return self.input.skipped_failed

    @property
    def superseded(self) -> int:
        return self.input.superseded

    @property
    def still_bad(self) -> int:
        return self.input.still_bad

    @property
    def fixed_lines(self) -> int:
        return self.input.fixed_lines

    @property
    def fixed_sent(self) -> int:
        return self.input.fixed_sent

    @property
    def fixed_examples(self) -> list[int]:
        return self.input.fixed_examples


@dataclass(slots=True)
class Stats(_InputFacts):
    """Live counters of a run, published by the engine; the progress display reads them.

    One writer per fact: the engine (through the methods below) for its counters, the
    stop reason and the end; the resume/edit filter for :attr:`input`, whose facts show
    here read-only under their own names (``skipped``, ``total``, ``still_bad``...).

    Attributes:
        input: what the input holds against earlier runs (:class:`InputTally`).
        ok: requests answered and written to the results file.
        failed: requests that failed for good (not counting bad lines).
        bad_lines: input lines that could not be parsed or validated.
        in_flight: attempts on the wire now.
        retrying: requests waiting in the requeue.
        attempts: HTTP attempts made (retries included).
        n_429: responses with HTTP 429.
        prompt_tokens / completion_tokens: from the responses' ``usage``.
        tokens_charged: tokens charged at admission (estimates).
        failures: final failures by reason.
        stop_reason: why the run stopped early, if it did, for a person to read.
        stopped: why the run stopped early, as a :class:`StopReason` (None: it did not).
        abandoned: a second signal abandoned the requests in flight.
        output_error: the first output file that could not be written, and why.
    """

    input: InputTally = field(default_factory=InputTally)
    ok: int = 0
    failed: int = 0
    bad_lines: int = 0
    in_flight: int = 0
    attempts: int = 0
    retries: int = 0
    n_429: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_charged: int = 0
    estimated_prompt: int = 0
    actual_prompt: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    failures: Counter[str] = field(default_factory=Counter)
    stop_reason: str | None = None
    limits: dict[str, float] = field(default_factory=dict)
    learned: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    tokens_charged_answered: int = 0
    tokens_used_answered: int = 0
    fallbacks: int = 0
    retired_keys: list[str] = field(default_factory=list)
    answered_by_key: Counter[str] = field(default_factory=Counter)
    resume_at: float | None = None
    output_error: str | None = None
    #: wall-clock time (``time.time()``) the server went down, while the outage circuit is open.
    outage_since: float | None = None
    #: seconds between two probes while the server is down.
    probe_every: float | None = None
    #: seconds the circuit was open in all (finished outages and the current one).
    outage_seconds: float = 0.0
    #: how many times the circuit opened.
    outages: int = 0
    stopped: StopReason | None = None
    #: what admission waits for besides the limits ("waiting for Redis ..."), else None.
    waiting_for: str | None = None
    #: the latest long pause a server asked for (a 429's Retry-After over a minute):
    #: until when (Unix time, for the display) and the key's name ("" for one key).
    server_pause_until: float | None = None
    server_pause_key: str = ""
    abandoned: bool = False
    #: answers written without a request of their own: from the response cache, and
    #: shared with an identical request in flight (single-flight); both are in ``ok``.
    cached: int = 0
    shared: int = 0
    #: what those answers would have cost: model -> [requests, prompt, completion tokens].
    saved: dict[str, list[int]] = field(default_factory=dict)
    #: per model bucket ("" when all models share one): [attempts, tokens charged] ...
    by_model: dict[str, list[int]] = field(default_factory=dict)
    #: ... and its per-minute limits (requests, tokens) summed over the working keys,
    #: kept only while the job has several buckets (refreshed at the progress ticks).
    model_limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    #: the requeue the engine holds (``retrying`` is its length); set by the engine.
    _requeue: Sized = ()

    @property
    def retrying(self) -> int:
        """Requests waiting in the requeue."""
        return len(self._requeue)

    @property
    def rerun_later(self) -> bool:
        """The run stopped to be rerun later (exit 75)."""
        return self.stopped is StopReason.RERUN_LATER

    @property
    def reason(self) -> StopReason:
        """:attr:`stopped`, or COMPLETED."""
        return self.stopped or StopReason.COMPLETED

    # -- the engine's (and the runner's) updates ----------------------------------

    def stop(self, reason: StopReason, message: str) -> None:
        """Record why the run stops: the first reason (and its message) stays."""
        if self.stopped is None:
            self.stopped = reason
        if self.stop_reason is None:
            self.stop_reason = message

    def output_failed(self, failure: str) -> None:
        """The output files could not be written (``failure``: which and why): the run
        stops on it, unless it stopped for another reason than an error, which then
        stays (and this is noted)."""
        self.output_error = failure
        message = (f"cannot write the output files: {failure}; what was written is "
                   "whole lines: fix the cause (free space) and rerun the same command to "
                   "resume")
        if self.stopped in (None, StopReason.OUTPUT_ERROR, StopReason.ERROR):
            self.stopped, self.stop_reason = StopReason.OUTPUT_ERROR, message
        else:
            self.note(message)

    def watch_requeue(self, requeue: Sized) -> None:
        self._requeue = requeue

    def sent(self, tokens: int, bucket: str = "") -> None:
        """One attempt admitted, ``tokens`` charged (to the model ``bucket``)."""
        self.in_flight += 1
        self.attempts += 1
        self.tokens_charged += tokens
        row = self.by_model.get(bucket)
        if row is None:
            row = self.by_model[bucket] = [0, 0]
        row[0] += 1
        row[1] += tokens

    def set_model_limits(self, limits: dict[str, tuple[float | None, float | None]]) -> None:
        """Each model bucket's per-minute limits now (see :attr:`model_limits`)."""
        self.model_limits = limits

    def returned(self) -> None:
        """One attempt came back (or was abandoned)."""
        self.in_flight -= 1

    def answered(self, prompt: int, completion: int, *, charged: int, estimated: int,
                 key: str | None = None) -> None:
        """One request answered and its result written."""
        self.ok += 1
        if key is not None:
            self.answered_by_key[key] += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if prompt or completion:
            self.estimated_prompt += estimated
            self.actual_prompt += prompt
            self.tokens_charged_answered += charged
            self.tokens_used_answered += prompt + completion

    def served(self, *, cached: bool, model: str | None, prompt: int, completion: int) -> None:
        """One request answered without a request of its own (from the cache, or shared
        with an identical one) and its result written."""
        self.ok += 1
        if cached:
            self.cached += 1
        else:
            self.shared += 1
        row = self.saved.setdefault(model or "", [0, 0, 0])
        row[0] += 1
        row[1] += prompt
        row[2] += completion

    def retried(self) -> None:
        """One attempt failed and its request went back into the requeue."""
        self.retries += 1

    def refused(self) -> None:
        """One 429 answer."""
        self.n_429 += 1

    def fell_back(self) -> None:
        """One request moved to the fallback model."""
        self.fallbacks += 1

    def learned_limit(self, name: str, value: float) -> bool:
        """A limit learned from the server's headers; True if it is new or changed."""
        if self.limits.get(name) == value:
            return False
        self.limits[name] = value
        self.learned.add(name)
        return True

    def outage(self, *, since: float | None, probe_every: float | None,
               seconds: float | None = None, outages: int | None = None) -> None:
        """The outage circuit's state: down ``since`` (None: up), probing every
        ``probe_every`` s; ``seconds`` down in all; ``outages`` so far."""
        self.outage_since, self.probe_every = since, probe_every
        if seconds is not None:
            self.outage_seconds = seconds
        if outages is not None:
            self.outages = outages

    def finish(self, at: float) -> None:
        self.finished = at

    def failed_for_good(self, code: str) -> None:
        self.failed += 1
        self.failures[code] += 1

    def bad_line(self) -> None:
        self.bad_lines += 1
        self.failures["invalid_line"] += 1

    def note(self, message: str) -> None:
        self.notes.append(message)

    @property
    def done(self) -> int:
        """Requests finished this run, one way or another."""
        return self.ok + self.failed + self.bad_lines

    @property
    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return end - self.started

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "_requeue"}
        out.pop("input")
        out.update({k: getattr(self.input, k) for k in INPUT_FACTS})
        out["retrying"] = self.retrying
        out["rerun_later"] = self.rerun_later
        out["stopped"] = self.stopped.value if self.stopped else None
        out["failures"] = dict(self.failures)
        out["learned"] = sorted(self.learned)
        out["answered_by_key"] = dict(self.answered_by_key)
        out["elapsed_s"] = round(self.elapsed, 3)
        out.pop("started")
        out.pop("finished")
        return out
