"""Exit codes: one table from why a run stopped (and its counts) to the process's code.

====  ==============================================================================
code  meaning
====  ==============================================================================
0     every request answered (nothing failed, no bad line, none left for later)
1     some requests failed for good, lines are bad (this run or still, from an earlier
      one), failed requests were skipped, or the run stopped on a refused key / an error
2     usage error (bad options, no API key)
74    an output file could not be written (sysexits' EX_IOERR)
75    rerun later: a long pause, a spent daily budget, an outage, a locked job
      (sysexits' EX_TEMPFAIL)
129   SIGHUP, 130 SIGINT (Ctrl-C), 143 SIGTERM: stopped, resumable
====  ==============================================================================
"""

from __future__ import annotations

from ..errors import BatchProcError, ConfigError, JobLocked, OutputError
from ..stats import Stats, StopReason

__all__ = ["EXIT_FAILED", "EXIT_IOERR", "EXIT_LATER", "EXIT_OK", "EXIT_USAGE", "error_exit",
           "exit_code"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: an output file could not be written (disk full, read-only, I/O error): sysexits' EX_IOERR.
EXIT_IOERR = 74
#: stopped on a spent daily budget, or another run holds the job: rerun later
#: (sysexits' EX_TEMPFAIL).
EXIT_LATER = 75
EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM = 129, 130, 143

#: the code for a run that stopped for ``reason`` (COMPLETED: see :func:`exit_code`).
BY_REASON: dict[StopReason, int] = {
    StopReason.OUTPUT_ERROR: EXIT_IOERR,
    StopReason.SIGINT: EXIT_SIGINT,
    StopReason.SIGTERM: EXIT_SIGTERM,
    StopReason.SIGHUP: EXIT_SIGHUP,
    StopReason.RERUN_LATER: EXIT_LATER,
    StopReason.KEY_REFUSED: EXIT_FAILED,
    StopReason.CALLER: EXIT_FAILED,
    StopReason.ERROR: EXIT_FAILED,
}


def exit_code(stats: Stats) -> int:
    """The exit code of a finished ``run``.

    An output that could not be written wins (whatever stopped the run, what it wrote
    is in doubt); then why it stopped; a run that went to the end exits 0 only if every
    request of the input was answered.
    """
    if stats.output_error:
        return EXIT_IOERR
    if stats.stopped in BY_REASON:  # COMPLETED (or None): by the counts
        return BY_REASON[stats.stopped]
    unanswered = stats.failed or stats.bad_lines or stats.skipped_failed or stats.still_bad
    return EXIT_FAILED if unanswered or stats.stop_reason else EXIT_OK


def error_exit(exc: BatchProcError) -> tuple[str, int]:
    """The message and exit code of a run that could not start (nothing was sent)."""
    if isinstance(exc, JobLocked):  # a ConfigError: checked first
        return f"error: {exc}", EXIT_LATER
    if isinstance(exc, ConfigError):
        return f"error: {exc}", EXIT_USAGE
    if isinstance(exc, OutputError):
        return f"error: cannot write the output files: {exc}; nothing was sent", EXIT_IOERR
    return f"error: {exc}", EXIT_FAILED
