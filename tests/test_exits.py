"""The exit-code table: why a run stopped and its counts -> the process's exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from processor.cli.exits import BY_REASON, error_exit, exit_code
from processor.errors import BatchProcError, ConfigError, JobLocked, OutputError
from processor.stats import INPUT_FACTS, InputTally, Stats, StopReason


def stats(stopped: StopReason | None = None, **counts: Any) -> Stats:
    found = {k: counts.pop(k) for k in INPUT_FACTS if k in counts}
    s = Stats(input=InputTally(**found), **counts)
    if stopped is StopReason.COMPLETED:
        s.stopped = stopped
    elif stopped is not None:
        s.stop(stopped, f"stopped: {stopped.value}")
    return s


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (stats(ok=5), 0),
        (stats(), 0),
        (stats(ok=5, failed=1), 1),
        (stats(ok=5, bad_lines=1), 1),
        (stats(ok=5, skipped_failed=2), 1),
        (stats(ok=5, still_bad=1), 1),  # bad lines of an earlier run, still bad
        (stats(StopReason.KEY_REFUSED), 1),
        (stats(StopReason.CALLER), 1),
        (stats(StopReason.ERROR), 1),
        (stats(StopReason.RERUN_LATER, failed=3), 75),
        (stats(StopReason.SIGINT, failed=3), 130),
        (stats(StopReason.SIGTERM), 143),
        (stats(StopReason.SIGHUP), 129),
        (stats(StopReason.OUTPUT_ERROR), 74),
        (stats(StopReason.SIGINT, output_error="disk full"), 74),  # what it wrote is in doubt
        (stats(StopReason.RERUN_LATER, output_error="disk full"), 74),
        (stats(stop_reason="a message without a reason"), 1),
        (stats(stopped=StopReason.COMPLETED, ok=3), 0),
    ],
    ids=["all-answered", "empty-input", "failed", "bad-lines", "skipped-failed", "still-bad",
         "key-refused", "caller", "error", "rerun-later", "sigint", "sigterm", "sighup",
         "output-error", "sigint-and-output-error", "later-and-output-error",
         "message-only", "completed"],
)
def test_exit_code(case: Stats, code: int) -> None:
    assert exit_code(case) == code


def test_every_reason_but_completed_has_a_code() -> None:
    assert set(BY_REASON) == set(StopReason) - {StopReason.COMPLETED}


def test_the_first_stop_stays() -> None:
    s = Stats()
    s.stop(StopReason.RERUN_LATER, "daily budget spent")
    s.stop(StopReason.SIGINT, "SIGINT received")
    assert s.stopped is StopReason.RERUN_LATER and s.stop_reason == "daily budget spent"
    assert s.rerun_later and exit_code(s) == 75
    assert s.as_dict()["stopped"] == "rerun_later" and s.as_dict()["rerun_later"] is True


def test_retrying_is_the_length_of_the_requeue() -> None:
    s = Stats()
    assert s.retrying == 0
    held: list[int] = []
    s.watch_requeue(held)
    held.extend([1, 2, 3])
    assert s.retrying == 3 and s.as_dict()["retrying"] == 3


@pytest.mark.parametrize(("exc", "code", "says"), [
    (JobLocked("job.results.jsonl.lock", pid=7, host="h"), 75, "PID 7 on h"),
    (ConfigError("no such file: x"), 2, "no such file"),
    (OutputError(Path("r.jsonl"), OSError(28, "No space left on device")), 74,
     "nothing was sent"),
    (BatchProcError("something else"), 1, "something else"),
], ids=["locked", "usage", "output", "other"])
def test_errors_before_the_run_map_to_one_code(exc: BatchProcError, code: int,
                                                says: str) -> None:
    message, got = error_exit(exc)
    assert got == code and says in message and message.startswith("error: ")
