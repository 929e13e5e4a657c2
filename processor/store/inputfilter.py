"""The resume/edit filter: which input lines a rerun sends, and its tally of what it left out.

:class:`InputFilter` is the one writer of the run's :class:`~processor.stats.InputTally`
(lines counted, skipped, changed, still bad, ...); the engine's
:class:`~processor.stats.Stats` shows those facts read-only, and nothing else writes them
(``tests/test_one_writer.py``). What it decides comes from the earlier runs' records
(:mod:`processor.store.resume`) and the edits found before the run
(:mod:`processor.store.edits`):

- :meth:`InputFilter.skip`: done ids (and failed ones unless retried) are left out;
- :meth:`InputFilter.skip_line`: lines found answered and unchanged, by number alone;
- :meth:`InputFilter.unreported`: bad lines reported before (known by content) are not
  reported again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..jobs import BadLine, Job, count_lines, line_hash
from ..stats import InputTally
from .resume import POSITIONAL_PREFIX, ResumeState, stop_check

__all__ = ["InputFilter"]

log = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF
#: ids / line numbers kept as examples for messages.
EXAMPLES = 5


class InputFilter:
    """Decides which lines of a rerun are sent, and tallies the rest.

    Args:
        tally: the tally to write (a fresh one by default); hand it to the run's
            :class:`~processor.stats.Stats` (``Stats(input=...)``) to publish it.
    """

    def __init__(self, tally: InputTally | None = None) -> None:
        self.tally = tally or InputTally()

    # -- before the run ---------------------------------------------------------

    def count(self, src: Path, stop: threading.Event | None = None) -> None:
        """Count the input's lines (``total``: progress and ETA)."""
        self.tally.total = count_lines(src, cancel=stop_check(stop))

    def share(self, lines: int) -> None:
        """This run sends only a share of the input (a shard's): ``lines`` is its total
        (an estimate until the input was read through)."""
        self.tally.total = lines

    def superseded(self, lines: int) -> None:
        """``lines`` changed lines had their old records moved aside (``--resend-changed``)."""
        self.tally.superseded = lines

    # -- during the run: the job reader's tests ---------------------------------

    def skip(self, state: ResumeState, retry_failed: bool) -> Callable[[str, bytes], bool] | None:
        """The ``skip`` test of :func:`~processor.jobs.iter_jobs` for a rerun.

        A done id whose input line hashes differently from the one answered (per the
        ledger) is counted as changed; its old answer is kept. A failed id whose line
        changed since it failed is a new request: it is sent again. Lines named by their
        position were compared before the run (:func:`~processor.store.edits.check_edits`),
        so they are not hashed again here.
        """
        if state.empty:
            return None
        done, failed = state.done, state.failed
        check_changes = state.has_ledger
        verified = state.verified_positional
        tally = self.tally

        def skip(custom_id: str, raw: bytes) -> bool:
            # One lookup: None, or the low 32 bits of the answered line's hash (0: unknown).
            answered = done.get(custom_id)
            if answered is not None:
                tally.skipped += 1
                if check_changes and answered and not (
                    verified and custom_id.startswith(POSITIONAL_PREFIX)
                    and custom_id[len(POSITIONAL_PREFIX):].isdigit()
                ) and answered != line_hash(raw) & _MASK32:
                    tally.changed += 1
                    if len(tally.changed_examples) < EXAMPLES:
                        tally.changed_examples.append(custom_id)
                return True
            failed_for = failed.get(custom_id)
            if failed_for is not None:
                if retry_failed:
                    tally.retried_failed += 1
                    return False
                if failed_for and failed_for != line_hash(raw) & _MASK32:
                    tally.changed_failed += 1
                    if len(tally.changed_failed_examples) < EXAMPLES:
                        tally.changed_failed_examples.append(custom_id)
                    return False
                tally.skipped_failed += 1
                return True
            return False

        return skip

    def skip_line(self, state: ResumeState) -> Callable[[int], bool] | None:
        """Skip lines found answered and unchanged before the run, by number alone."""
        bits = state.unchanged_lines
        if not bits:
            return None
        size = len(bits)
        tally = self.tally

        def skip_line(number: int) -> bool:
            if number >> 3 < size and bits[number >> 3] >> (number & 7) & 1:
                tally.skipped += 1
                return True
            return False

        return skip_line

    def unreported(
        self, items: Iterable[Job | BadLine], state: ResumeState,
        sendable: Callable[[Job], bool], note: Callable[[str], None],
    ) -> Iterator[Job | BadLine]:
        """Leave out bad lines reported before (named in a ``note``: the job is not
        complete); count earlier bad lines that are now valid.

        A bad line is known by its content: the k-th occurrence of the same bad bytes is
        left out only if at least k were reported. A valid request is never left out
        because its line number was once bad; one whose bytes were reported bad is left
        out only if it still cannot be sent (``sendable``: the engine's own checks), since
        a repeated or misplaced custom_id makes a line bad by where it is, not by what it
        holds. Records of older versions carry no hash and are matched by line number, for
        bad lines only.
        """
        counts, legacy, reported = state.bad_hashes, state.bad_lines, state.reported_lines
        if not (counts or legacy or reported):
            yield from items
            return
        resent = state.superseded
        tally = self.tally
        # Lines still bad, reported before (not written again): how many, the first ten.
        still_lines: list[int] = []

        for item in items:
            if counts.get(item.line_hash, 0) > 0:
                counts[item.line_hash] -= 1
                if isinstance(item, BadLine) or not sendable(item):
                    tally.still_bad += 1  # counted as read: a stopped run knows it too
                    if tally.still_bad <= 10:
                        still_lines.append(item.line)
                    continue
            elif isinstance(item, BadLine):
                if item.line in legacy:
                    legacy.discard(item.line)
                    tally.still_bad += 1
                    if tally.still_bad <= 10:
                        still_lines.append(item.line)
                    continue
            if isinstance(item, Job) and item.line in reported and item.custom_id not in resent:
                tally.fixed_sent += 1
                if len(tally.fixed_examples) < 10:
                    tally.fixed_examples.append(item.line)
            yield item
        # The whole input was read: reports whose bytes are nowhere in it now were fixed or
        # removed (known by content, so right even when lines moved).
        tally.fixed_lines = sum(n for n in counts.values() if n > 0) + len(legacy)
        if still := tally.still_bad:
            more = ", ..." if still > 10 else ""
            note(f"{still:,} bad line(s) reported in an earlier run are still bad (lines "
                 f"{', '.join(str(n) for n in still_lines)}{more}); their records are in the "
                 "errors file already, not written again: fix them and rerun")

    # -- after the run ----------------------------------------------------------

    def notes(self) -> list[str]:
        """The summary's notes on what was left out or sent again, in order."""
        tally, notes = self.tally, []
        if tally.skipped_failed:
            notes.append(
                f"{tally.skipped_failed:,} requests failed for good in an earlier run and "
                "were not sent again (--retry-failed sends them)")
        if tally.changed:
            notes.append(_changed_note(tally.changed, tally.changed_examples))
            log.warning("%s", notes[-1])
        if tally.fixed_lines:
            note = (f"{tally.fixed_lines:,} line(s) reported bad before are no longer in the "
                    "input (fixed or removed)")
            if tally.fixed_sent:
                more = ", ..." if tally.fixed_sent > len(tally.fixed_examples) else ""
                note += (f"; {tally.fixed_sent:,} request(s) now valid were sent from lines "
                         f"reported bad before (lines "
                         f"{', '.join(str(n) for n in tally.fixed_examples)}{more})")
            notes.append(note)
        if tally.changed_failed:
            notes.append(
                f"{tally.changed_failed:,} request(s) that failed for good before have "
                f"changed in the input and were sent again (e.g. "
                f"{', '.join(tally.changed_failed_examples)}); their old error records are "
                "stale")
        return notes


def _changed_note(n: int, examples: list[str]) -> str:
    return (
        f"input changed: {n} line(s) differ from the ones answered before "
        f"(e.g. {', '.join(examples)}); their old answers are kept. "
        "Use --resend-changed to send them again (old answers moved to side files), or "
        "--fresh to start over (old outputs are moved aside)."
    )
