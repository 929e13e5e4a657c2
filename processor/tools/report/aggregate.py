"""Streams a run log (:mod:`processor.store.runlog`) into what the report shows, in
bounded memory: time buckets (:mod:`.timeline`), a few capped tables, one record per run.

Runs are laid end to end on one time axis (a rerun a day later follows the first run's
end directly; the runs table gives each run's wall-clock start), so the charts show the
time spent working, not the nights between.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...shown import shown
from ...store.runlog import BATCH_KEY, read_events
from .limits import LimitBook
from .timeline import Bucket, LatencySketch, Timeline

__all__ = ["MAX_ROWS", "Aggregate", "FailureRow", "RunRow", "aggregate"]

#: rows kept per table (failure reasons, key/model pairs, runs, spans); more are summed
#: into one "(other)" row or counted.
MAX_ROWS = 200
#: example custom_ids kept per failure reason.
EXAMPLES = 5


class Unreadable(list[int]):
    """The numbers of the log's unreadable lines: the first :data:`MAX_ROWS` kept, all
    counted in ``total`` (a hostile log of millions of junk lines costs no memory)."""

    total = 0

    def append(self, number: int) -> None:
        self.total += 1
        if len(self) < MAX_ROWS:
            super().append(number)


@dataclass(slots=True)
class RunRow:
    """One run of the job."""

    number: int
    started_at: float | None  # Unix time
    offset: float  # where the run begins on the report's time axis
    version: str = ""
    seconds: float = 0.0  # wall time (the end event's, else the last event's)
    reason: str | None = None  # None: no end event (killed)
    message: str | None = None
    ok: int = 0
    failed: int = 0
    attempts: int = 0
    n429: int = 0
    skipped: int = 0
    total: int | None = None
    resume_done: int = 0
    limits: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class FailureRow:
    code: str
    count: int = 0
    examples: list[str] = field(default_factory=list)
    message: str = ""


@dataclass(slots=True)
class KeyModel:
    answers: int = 0
    prompt: int = 0
    completion: int = 0
    attempts: int = 0
    errors: int = 0


@dataclass(slots=True)
class Aggregate:
    """Everything the report draws, summed from the log."""

    timeline: Timeline = field(default_factory=Timeline)
    runs: list[RunRow] = field(default_factory=list)
    runs_left_out: int = 0
    failures: dict[str, FailureRow] = field(default_factory=dict)
    by_key_model: dict[tuple[str, str], KeyModel] = field(default_factory=dict)
    pauses: Counter[str] = field(default_factory=Counter)
    #: (start, end, reason) on the time axis: outages and other open-ended pauses (an
    #: open one ends at the time axis' end).
    spans: list[tuple[float, float, str]] = field(default_factory=list)
    latency: LatencySketch = field(default_factory=LatencySketch)
    events: int = 0
    bad_lines: Unreadable = field(default_factory=Unreadable)
    attempts: int = 0
    answers: int = 0
    #: answers written without a request of their own (``s`` events): from the response
    #: cache, and shared with an identical request (single-flight); in ``answers`` too.
    cached: int = 0
    shared: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    tokens_charged: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    end: float = 0.0  # the time axis' end
    limits: LimitBook = field(default_factory=lambda: LimitBook(MAX_ROWS))

    @property
    def failed(self) -> int:
        return sum(row.count for row in self.failures.values())


#: numbers beyond this (in seconds, tokens, ...) are not a run's: read as missing.
_ABSURD = 1e12


def _number(value: Any, default: float = 0.0) -> float:
    """``value`` as a float if it is a plausible number, else ``default``."""
    if isinstance(value, (int, float)) and -_ABSURD < value < _ABSURD:
        return float(value)
    return default


def aggregate(path: str | os.PathLike[str]) -> Aggregate:
    """Read the run log at ``path`` once and sum it up."""
    agg = Aggregate()
    timeline = agg.timeline
    limits = agg.limits
    run: RunRow | None = None
    offset = 0.0
    last_t = 0.0
    open_spans: dict[str, int] = {}
    for event in read_events(path, agg.bad_lines):
        agg.events += 1
        kind = event["ev"]
        if kind == "a":
            _attempt(agg, event, offset, limits, run)
            td = _number(event.get("td"))
            if td > last_t:
                last_t = td
            continue
        t = _number(event.get("t"))
        if t > last_t:
            last_t = t
        x = offset + t
        if kind == "p":
            bucket = timeline.at(x)
            bucket.seen = True
            done, total, eta = event.get("done"), event.get("total"), event.get("eta")
            bucket.done = done if isinstance(done, int) else bucket.done
            bucket.total = total if isinstance(total, int) else bucket.total
            bucket.eta = _number(eta) if isinstance(eta, (int, float)) else None
        elif kind == "start":
            if run is not None:
                _close(run, last_t)
                offset = max(offset + last_t, agg.end)
                for index in open_spans.values():  # the pause ended with its run
                    agg.spans[index] = (agg.spans[index][0], offset, agg.spans[index][2])
            last_t = 0.0
            x = offset
            cfg = event.get("cfg")
            limits.start(event.get("limits"), cfg)
            resume = event.get("resume")
            run = RunRow(
                number=int(_number(event.get("run"), len(agg.runs) + 1)),
                started_at=_number(event.get("at")) or None, offset=offset,
                version=shown(event.get("v", ""), 40),
                total=event.get("total") if isinstance(event.get("total"), int) else None,
                resume_done=int(_number(resume.get("done"))) if isinstance(resume, dict) else 0,
                limits=dict(limits.flags))
            if len(agg.runs) < MAX_ROWS:
                agg.runs.append(run)
            else:
                agg.runs_left_out += 1
            open_spans.clear()
        elif kind == "s":
            _served(agg, event, timeline.at(x), run)
        elif kind == "fail":
            _failure(agg, event)
            timeline.at(x).failed += 1
            if run is not None:
                run.failed += 1
        elif kind == "limit":
            limits.learn(event.get("name"), event.get("value"), event.get("k", event.get("key")),
                         event.get("model"), x)
        elif kind == "key_retired":
            limits.retire(event.get("key"))
        elif kind == "pause":
            reason = shown(event.get("r"))
            if len(agg.pauses) < MAX_ROWS or reason in agg.pauses:
                agg.pauses[reason] += 1
            if event.get("until") is None and len(agg.spans) < MAX_ROWS:
                open_spans[_span_key(reason, event)] = len(agg.spans)
                agg.spans.append((x, -1.0, reason))
        elif kind == "resume":
            index = open_spans.pop(_span_key(shown(event.get("r")), event), -1)
            if index >= 0:
                agg.spans[index] = (agg.spans[index][0], x, agg.spans[index][2])
        elif kind == "end" and run is not None:
            run.seconds = _number(event.get("elapsed"), t)
            run.reason = shown(event.get("reason"))
            msg = event.get("msg")
            run.message = shown(msg, 300) if isinstance(msg, str) else None
            run.skipped = int(_number(event.get("skipped")))
        agg.end = max(agg.end, offset + last_t)
    if run is not None:
        _close(run, last_t)
    agg.end = max(agg.end, offset + last_t)
    agg.spans = [(a, b if b >= 0 else agg.end, r) for a, b, r in agg.spans]
    return agg


def _span_key(reason: str, event: dict[str, Any]) -> str:
    """Open-ended pauses of one reason may overlap when they name a part (a Batch API
    run's batches): a resume closes the pause of its own part."""
    part = event.get("part")
    return reason if part is None else f"{reason}\0{str(part)[:100]}"


def _close(run: RunRow, last_t: float) -> None:
    if run.reason is None:  # no end event: the run was killed; its last event's time
        run.seconds = last_t


def _attempt(agg: Aggregate, event: dict[str, Any], offset: float, limits: LimitBook,
             run: RunRow | None) -> None:
    timeline = agg.timeline
    # A hand-edited log's negative times and tokens read as 0 (no time before the run,
    # no tokens given back): never a span before the axis or a negative efficiency.
    ts = offset + max(0.0, _number(event.get("ts")))
    td = offset + max(0.0, _number(event.get("td"), ts - offset))
    sent = timeline.at(ts)
    sent.seen = True
    sent.sent += 1
    charged = int(max(0.0, _number(event.get("te"))))
    sent.tokens += charged
    if event.get("k") != BATCH_KEY:  # the Batch API's requests pass no limiter of ours
        limits.sent(timeline, ts, event.get("m"), charged)
    agg.attempts += 1
    agg.tokens_charged += charged
    timeline.spread(ts, td)
    back = timeline.at(td)
    back.seen = True
    status = event.get("st")
    error = event.get("er")
    row = _row(agg, event)
    row.attempts += 1
    packed = event.get("np")  # lines answered by one packed request
    lines = packed if isinstance(packed, int) and 1 <= packed <= 1_000_000 else 1
    if run is not None:
        run.attempts += 1
        if status == 429:
            run.n429 += 1
        elif error is None:
            run.ok += lines
    if error is None:  # the latency of answers (a 502 page comes back fast)
        if back.latency is None:
            back.latency = LatencySketch()
        latency = td - ts
        back.latency.add(latency)
        agg.latency.add(latency)
    if error is None:
        prompt = int(max(0.0, _number(event.get("tp"))))
        completion = int(max(0.0, _number(event.get("tc"))))
        back.ok += lines
        back.used += prompt + completion
        agg.answers += lines
        agg.prompt_tokens += prompt
        agg.completion_tokens += completion
        row.answers += lines
        row.prompt += prompt
        row.completion += completion
        return
    row.errors += 1
    kind = shown(error, 100)
    if status == 429:
        back.e429 += 1
        kind = "429"
    elif isinstance(status, int) and 500 <= status <= 599:
        back.e5xx += 1
        kind = "5xx"
    elif error == "connection_error":
        back.etimeout += 1
        kind = "timeout / connection"
    elif error == "server_error":
        back.e5xx += 1
        kind = "5xx"
    else:
        back.eother += 1
    if len(agg.errors) < MAX_ROWS or kind in agg.errors:
        agg.errors[kind] += 1


def _failure(agg: Aggregate, event: dict[str, Any]) -> None:
    code = shown(event.get("code"), 100)
    row = agg.failures.get(code)
    if row is None:
        if len(agg.failures) >= MAX_ROWS:
            code = "(other)"
        row = agg.failures.setdefault(code, FailureRow(code))
    row.count += 1
    cid = event.get("id")
    if len(row.examples) < EXAMPLES:
        line = event.get("line")
        row.examples.append(shown(cid) if cid is not None else f"line {shown(line, 20)}")
    if not row.message and isinstance(event.get("msg"), str):
        row.message = shown(event["msg"], 300)


def _served(agg: Aggregate, event: dict[str, Any], bucket: Bucket, run: RunRow | None) -> None:
    """An answer written without a request (``how``: ``cached`` or ``shared``): an answer
    of its model, which used no tokens or capacity of this run."""
    if event.get("how") == "cached":
        agg.cached += 1
    else:
        agg.shared += 1
    agg.answers += 1
    bucket.seen = True
    bucket.ok += 1
    if run is not None:
        run.ok += 1
    _row(agg, event).answers += 1


def _row(agg: Aggregate, event: dict[str, Any]) -> KeyModel:
    """The by key and model row of ``event`` (one "(other)" row past MAX_ROWS)."""
    key, model = event.get("k"), event.get("m")
    pair = (shown(key) if isinstance(key, str) else "",
            shown(model) if isinstance(model, str) else "")
    row = agg.by_key_model.get(pair)
    if row is None:
        if len(agg.by_key_model) >= MAX_ROWS:
            pair = ("(other)", "(other)")
        row = agg.by_key_model.setdefault(pair, KeyModel())
    return row
