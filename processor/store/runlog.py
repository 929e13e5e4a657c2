"""The run log: what happened in every run of a job, one compact JSON event per line.

``<stem>.run.jsonl`` beside the results (``--run-log PATH``; off with ``--no-run-log``).
Every run appends to it, so one log tells the whole story of a job; each run begins
with a ``start`` event that numbers it. Times are seconds since that run's start
(``t``, ``ta`` ...; milliseconds), and the start holds the absolute wall-clock time
(``at``, Unix seconds). Events (``ev``) and their short keys:

``start``  run, at, v (version), pid, input, results, errors, cfg (the settings, no
           secrets), limits {rpm, tpm, rpd, tpd}, total (input lines), resume {done,
           failed}
``a``      one attempt: id (custom_id), n (attempt number), ta / ts / td (admitted by
           the limiter / sent / came back), st (HTTP status; null: no answer), er (the
           error's kind; absent: answered), te (tokens charged at admission), tp / tc
           (prompt / completion tokens the answer says it used), k (key name), m (model),
           np (lines carried, for a pack of several: ``--pack``). A ``--via batch``
           run writes one per request line collected, ``k`` :data:`BATCH_KEY`, ``ts``
           its batch's creation, ``td`` its collection (:mod:`processor.batchapi.runlog`)
``fail``   a request (or input line) written off: id, line, code, msg
``pause``  r (reason: 429, outage, limits, daily, batch, batch_queue, ...), until
           (null: open-ended), and detail (key, scale, counter, part, batch ...)
``resume`` r: an open-ended pause is over
``limit``  name (rpm / tpm), value, key: a key's per-minute limit in force changed
           (learned from the server, or lowered to what the server states)
``p``      progress, about once a second: done, total, ok, fail, fl (in flight),
           rq (retrying), eta (seconds, as it stood)
``stopping`` reason, msg: the run was told to stop (drain follows)
``end``    reason (a StopReason value), msg, and the run's totals

The log is an observability record, not the results: lines are buffered and written
about once a second (and at exit), whole lines per write, so ``kill -9`` loses at most
the last second. A torn last line is skipped by :func:`read_events` and closed off by
the next run before it appends. A write that fails turns the log off for the run; it
never stops the run.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..client.answers import Response, usage
from ..errors import APIError
from ..jobs import Job
from ..stats import Stats

__all__ = ["BATCH_KEY", "RunLog", "is_run_log", "plain", "read_events", "run_log_path"]

log = logging.getLogger(__name__)

_LINE = orjson.OPT_APPEND_NEWLINE
_dumps = orjson.dumps
_START = b'{"ev":"start"'
#: the key name of answers collected from the Batch API (priced at its discount).
BATCH_KEY = "(batch)"
#: longest error message kept per failure.
MESSAGE_CHARS = 300
#: longest line read back (events are far shorter: the start event, the longest, holds
#: the settings): a longer line is skipped without being held in memory.
MAX_LINE = 8 << 20


def run_log_path(results: Path) -> Path:
    """``<stem>.run.jsonl`` beside the results file (``x.results.jsonl`` -> ``x.run.jsonl``)."""
    name = results.name
    for suffix in (".results.jsonl", ".jsonl"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return results.with_name(name[: -len(suffix)] + ".run.jsonl")
    return results.with_name(name + ".run.jsonl")


def is_run_log(path: Path) -> bool:
    """``path`` is missing, empty, or starts with a run-log event (it may be appended to)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 16)
    except FileNotFoundError:
        return True
    except OSError:
        return True  # the open for appending reports it
    if not first.strip():
        return True
    if len(first) == 1 << 16 and not first.endswith(b"\n"):
        return first.startswith(b'{"ev":"')  # a start event longer than that (settings)
    try:
        event = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and isinstance(event.get("ev"), str)


class RunLog:
    """Appends one run's events to the log (an :class:`~processor.run.events.Events`).

    Args:
        path: the log file (created with its folder).
        clock: the engine's clock (monotonic seconds); times are logged relative to
            its value when the log opens.
        wall: the wall clock, for the start's absolute time.
        flush_every: seconds between writes (from :meth:`tick`); a buffer over
            ``max_buffer`` bytes is written at once.
    """

    enabled = True

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float],
                 wall: Callable[[], float] = time.time, flush_every: float = 1.0,
                 max_buffer: int = 1 << 20) -> None:
        self.path = Path(path)
        self._clock = clock
        self._wall = wall
        self._flush_every = flush_every
        self._max_buffer = max_buffer
        self._buf = bytearray()
        self._fd: int | None = None
        self._t0 = clock()
        self._last_flush = self._t0
        self._done: deque[tuple[float, int]] = deque()
        self.run = 0
        self.failure: OSError | None = None

    # -- opening and closing ---------------------------------------------------------

    def open(self, **start: Any) -> RunLog:
        """Open the log for appending and write the ``start`` event (``start``: its
        fields: cfg, limits, total, ...). A log that cannot be opened is turned off."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
        except OSError as exc:
            self._off(exc)
            return self
        self._fd = fd
        try:
            self.run = _last_run(fd) + 1
            if os.fstat(fd).st_size and os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n":
                self._buf += b"\n"  # close off a torn last line: it stays one bad line
        except OSError as exc:
            self._off(exc)
            return self
        self._t0 = self._last_flush = self._clock()
        head = {"ev": "start", "run": self.run, "at": round(self._wall(), 3), "t": 0.0}
        self._add(head | start)
        self.flush()
        return self

    def close(self) -> None:
        """Write what is buffered and close (idempotent)."""
        self.flush()
        self._close_fd()

    def _off(self, exc: OSError) -> None:
        if self.failure is None:
            self.failure = exc
            log.warning("run log %s turned off: %s", self.path, exc.strerror or exc)
        self.enabled = False
        self._buf.clear()
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    # -- writing ---------------------------------------------------------------------

    def _add(self, event: dict[str, Any]) -> None:
        if self._fd is None:
            return
        try:
            self._buf += orjson.dumps(event, option=_LINE)
        except TypeError:
            # A field that is not JSON, or an integer past 64 bits (a server's usage of
            # 2**64 - 1 tokens, summed): keep its text. Never the end of the run.
            try:
                self._buf += orjson.dumps(plain(event), option=_LINE)
            except TypeError as exc:
                log.warning("run log: an event could not be written (%s)", exc)
        if len(self._buf) >= self._max_buffer:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines now (whole lines, one ``write`` each time)."""
        self._last_flush = self._clock()
        if not self._buf or self._fd is None:
            return
        data, self._buf = bytes(self._buf), bytearray()
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            self._off(exc)

    def _t(self, at: float) -> float:
        return round(at - self._t0, 3)

    # -- the events (see :class:`processor.run.events.Events`) ------------------------

    def attempt(self, job: Job, sent: float, done: float, response: Response | None,
                error: APIError | None) -> None:
        t0 = self._t0
        event: dict[str, Any] = {
            "ev": "a", "id": job.custom_id, "n": job.attempts,
            "ta": round(job.sent_at - t0, 3), "ts": round(sent - t0, 3),
            "td": round(done - t0, 3), "te": job.tokens}
        if response is not None:
            event["st"] = response.status
            used = response.body.get("usage") if type(response.body) is dict else None
            if type(used) is dict and type(used.get("prompt_tokens")) is int:
                event["tp"] = used["prompt_tokens"]  # the common shape, read at once
                tc = used.get("completion_tokens", 0)
                event["tc"] = tc if type(tc) is int else 0
            else:
                event["tp"], event["tc"] = usage(response.body)
        else:
            assert error is not None
            event["st"] = error.status
            event["er"] = error.kind
        lane = job.lane
        if lane is not None and lane.name:
            event["k"] = lane.name
        if job.model:
            event["m"] = job.model
        parts = getattr(job, "parts", None)  # a pack (--pack): how many lines it carries
        if parts:
            event["np"] = len(parts)
        # The hot path: _add's work inline (one event per attempt).
        if self._fd is not None:
            buf = self._buf
            buf += _dumps(event, option=_LINE)
            if len(buf) >= self._max_buffer:
                self.flush()

    def add_line(self, line: bytes) -> None:
        """Buffer one event serialised by the caller (a JSON object and ``\n``): the Batch
        API collector's one per line (:mod:`processor.batchapi.runlog`)."""
        if self._fd is not None:
            self._buf += line
            if len(self._buf) >= self._max_buffer:
                self.flush()

    def failed(self, custom_id: str | None, line: int, code: str, message: str) -> None:
        self._add({"ev": "fail", "t": self._t(self._clock()), "id": custom_id, "line": line,
                   "code": code, "msg": message[:MESSAGE_CHARS]})

    def pause(self, reason: str, seconds: float | None = None, **detail: Any) -> None:
        now = self._t(self._clock())
        until = None if seconds is None else round(now + max(0.0, min(seconds, 1e9)), 3)
        self._add({"ev": "pause", "t": now, "r": reason, "until": until} | detail)

    def resume(self, reason: str, **detail: Any) -> None:
        self._add({"ev": "resume", "t": self._t(self._clock()), "r": reason} | detail)

    def emit(self, kind: str, **fields: Any) -> None:
        self._add({"ev": kind, "t": self._t(self._clock())} | fields)

    # -- the runner's calls ----------------------------------------------------------

    def tick(self, stats: Stats) -> None:
        """A progress event and a write, at most about once a second (the engine's
        progress ticks call this)."""
        now = self._clock()
        if now - self._last_flush < self._flush_every and stats.finished is None:
            return
        done = stats.done + stats.skipped
        window = self._done
        window.append((now, stats.done))
        while len(window) > 2 and now - window[0][0] > 30.0:
            window.popleft()
        eta = None
        if stats.total is not None and len(window) > 1 and now > window[0][0]:
            rate = (window[-1][1] - window[0][1]) / (now - window[0][0])
            if rate > 0:
                eta = round(max(0, stats.total - done) / rate, 1)
        self._add({"ev": "p", "t": self._t(now), "done": done, "total": stats.total,
                   "ok": stats.ok, "fail": stats.failed + stats.bad_lines,
                   "fl": stats.in_flight, "rq": stats.retrying, "eta": eta})
        self.flush()

    def end(self, stats: Stats) -> None:
        """The ``end`` event (why the run stopped, its totals), then close."""
        self._add({
            "ev": "end", "t": self._t(self._clock()), "reason": stats.reason.value,
            "msg": stats.stop_reason, "ok": stats.ok, "failed": stats.failed,
            "bad": stats.bad_lines, "skipped": stats.skipped, "attempts": stats.attempts,
            "n429": stats.n_429, "pt": stats.prompt_tokens, "ct": stats.completion_tokens,
            "charged": stats.tokens_charged, "resume_at": stats.resume_at,
            "elapsed": round(stats.elapsed, 3)})
        self.close()


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON (orjson) can hold it: mappings, sequences and dataclasses (the
    per-model limits in the settings) as what they hold, followed a few levels down;
    integers past 64 bits and anything else as text."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return value if -(1 << 63) <= value < (1 << 64) else str(value)
    if depth < 8:
        if isinstance(value, Mapping):
            return {str(k): plain(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v, depth + 1) for v in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name), depth + 1)
                    for f in dataclasses.fields(value)}
    return str(value)


def _last_run(fd: int) -> int:
    """The number of the last run in the log open at ``fd`` (0: none): its last
    ``start`` event, found from the end (a torn or foreign one is passed over)."""
    size = os.fstat(fd).st_size
    if not size:
        return 0
    with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mm:
        end = size
        while True:
            at = mm.rfind(_START, 0, end)
            if at < 0:
                return 0
            stop = mm.find(b"\n", at)
            try:
                event = orjson.loads(mm[at: stop if stop >= 0 else size])
                run = event.get("run")
                if isinstance(run, int) and run >= 0:
                    return run
            except (orjson.JSONDecodeError, AttributeError):
                pass
            end = at


def read_events(path: str | os.PathLike[str],
                bad: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """The events of a run log, in order, streamed; a line that is not a whole event (a
    torn tail after ``kill -9``, foreign text) is skipped and its number appended to
    ``bad`` if given."""
    with open(path, "rb") as f:
        for number, line in enumerate(_lines(f), 1):
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict) and isinstance(event.get("ev"), str):
                yield event
            elif bad is not None and line.strip():
                bad.append(number)


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """The lines of ``f``, each at most :data:`MAX_LINE` bytes read into memory: a longer
    one (no event is; a hand-edited or hostile log) is passed over in pieces and given
    as an empty placeholder, so the reader's memory stays bounded."""
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            line = b"-\n"  # not an event: counted as unreadable
        yield line
