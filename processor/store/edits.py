"""Edits to the input between runs: find the lines that changed, and retire their old records.

A rerun resumes by id. Lines with a ``custom_id`` keep their id whatever happens around
them; lines without one are named ``line-<N>`` by their position, so inserting or deleting
a line above an answered one gives every line below it the id of another request. Before
anything is sent, :func:`find_changes` compares each current line that has an earlier
answer (per the ledger) or final failure (per its error record's ``input_hash``) with the
line that was answered or failed, hashing the raw bytes (no parsing, except for lines
whose ``custom_id`` is not their first key). :func:`supersede` moves the records of
changed ids out of the output files into side files, so those lines can be sent as new;
:func:`check_edits` decides between the two (or refuses the run).

During the run, :class:`~processor.store.inputfilter.InputFilter` skips the lines found
unchanged by number, and leaves out bad lines already reported, known by content: the
hash of the raw line, kept in each error record as ``error.input_hash``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..errors import ConfigError
from ..idset import IdSet
from ..jobs import iter_raw_lines, line_hash
from .ledger import LEDGER_ENTRY, ledger_path
from .records import read_custom_id, read_error
from .resume import (
    CHECK_EVERY,
    POSITIONAL_PREFIX,
    ResumeState,
    load_state,
    stop_check,
)

__all__ = ["Changes", "check_edits", "find_changes", "supersede"]

log = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF
_CUSTOM_ID = b'"custom_id"'
# A line whose first key is custom_id (the usual Batch layout): its id without a parse.
_FIRST_KEY_ID = re.compile(rb'\s*\{\s*"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")')
#: line numbers / ids kept as examples for messages.
EXAMPLES = 5


@dataclass(slots=True)
class Changes:
    """Lines whose content differs from the one answered or failed before.

    Attributes:
        positional: such lines without a custom_id (named ``line-<N>``).
        explicit: such lines with a custom_id (only looked at when asked).
        lines: the first few line numbers of positional changes.
        examples: the first few ids of explicit changes.
        ids: every changed id (for :func:`supersede`).
        unchanged: a bitmap of the line numbers named by position whose answer is for
            the line as it is now (bit ``n`` of the array: line ``n``), so the run skips
            them without hashing them again.
    """

    positional: int = 0
    explicit: int = 0
    lines: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    ids: IdSet = field(default_factory=lambda: IdSet(values=True))
    unchanged: bytearray = field(default_factory=bytearray)

    @property
    def total(self) -> int:
        return self.positional + self.explicit


def explicit_id(raw: bytes) -> str | None:
    """The top-level ``custom_id`` of a line, or None when it has none (or is not JSON)."""
    m = _FIRST_KEY_ID.match(raw)
    if m is not None and raw.count(_CUSTOM_ID) == 1:
        try:
            value = orjson.loads(m.group(1))
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, str) and value:
            return value
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        value = obj.get("custom_id")
        if isinstance(value, str) and value:
            return value
    return None


def find_changes(
    src: Path,
    state: ResumeState,
    *,
    explicit: bool,
    failed: bool = True,
    stop: threading.Event | None = None,
) -> Changes:
    """Compare the input with what the earlier records were for.

    Args:
        src: the job file.
        state: what the earlier outputs hold (:func:`~processor.store.resume.load_state`).
        explicit: also look at lines with a custom_id (parsing those whose custom_id
            is not their first key); otherwise only positional lines are looked at.
        failed: also compare lines whose request failed for good.
        stop: set to abandon the pass (raises
            :class:`~processor.store.resume.ScanInterrupted`).
    """
    check = stop_check(stop)
    done, failures = state.done, state.failed
    seen = IdSet()
    changes = Changes()
    unchanged = changes.unchanged
    for number, raw in iter_raw_lines(src):
        if check is not None and not number % CHECK_EVERY:
            check()
        found = explicit_id(raw) if _CUSTOM_ID in raw else None
        cid = f"{POSITIONAL_PREFIX}{number}"
        # An explicit line-<N> on line N is the positional name spelt out: the same id.
        positional = found is None or found == cid
        if not positional:
            assert found is not None
            reserved = found.startswith(POSITIONAL_PREFIX) and \
                found[len(POSITIONAL_PREFIX):].isdigit()
            if not explicit or reserved:
                continue  # not asked; or a reserved id on the wrong line (a bad line)
            if not seen.add(found):
                continue  # a repeated id: only its first line is the request
            cid = found
        known = done.get(cid)
        answered = known is not None
        if known is None and failed:
            known = failures.get(cid)
        if not known or known == line_hash(raw) & _MASK32:
            if answered and known and positional:
                if number >> 3 >= len(unchanged):
                    unchanged.extend(bytes(len(unchanged) + 1024))
                unchanged[number >> 3] |= 1 << (number & 7)
            continue  # never answered, answered without a hash, or the same line
        changes.ids.add(cid)
        if positional:
            changes.positional += 1
            if len(changes.lines) < EXAMPLES:
                changes.lines.append(number)
        else:
            changes.explicit += 1
            if len(changes.examples) < EXAMPLES:
                changes.examples.append(cid)
    return changes


def _has(ids: IdSet, fp: int) -> bool:
    # IdSet has no membership test by fingerprint; with values, setting one answers it.
    return ids.update_fingerprint(fp, 1)


def supersede(results: Path, errors: Path, ids: IdSet) -> list[tuple[Path, int]]:
    """Move the records of ``ids`` out of the results, errors and ledger files.

    Each file is rewritten beside itself and swapped in with an atomic rename; the
    moved records go to ``<file>.superseded-<time>-<pid>`` (never deleted). Results go
    first: if the process dies between files, a ledger entry left for a moved result
    is ignored (only ids the results file holds are read from the ledger), and an
    error record left behind is found changed again on the next run. Bad-line records
    are never moved: they are known by content, not id.

    Returns:
        ``(side file, records moved)`` per file that had any.
    """
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    moved: list[tuple[Path, int]] = []

    def changed_result(raw: bytes) -> bool:
        cid = read_custom_id(raw)[0]
        return cid is not None and cid in ids

    def changed_failure(raw: bytes) -> bool:
        cid = _failed_id(raw)
        return cid is not None and cid in ids

    def changed_entry(entry: bytes) -> bool:
        return len(entry) == LEDGER_ENTRY.size and _has(ids, LEDGER_ENTRY.unpack(entry)[0])

    for path, leaves, record in ((results, changed_result, 0), (errors, changed_failure, 0),
                                 (ledger_path(results), changed_entry, LEDGER_ENTRY.size)):
        side = _split(path, stamp, leaves, record)
        if side is not None:
            moved.append(side)
    return moved


def _failed_id(raw: bytes) -> str | None:
    read = read_error(raw)
    if read is None:
        return None
    cid, error = read
    if error.get("code") == "invalid_line":
        return None
    return cid if isinstance(cid, str) else None


def _split(path: Path, stamp: str, leaves: Callable[[bytes], bool],
           record: int = 0) -> tuple[Path, int] | None:
    """Rewrite ``path`` without the records ``leaves`` picks, which go to a side file.
    A symlink is followed: the file it names is rewritten, the link stays a link."""
    if not path.exists():
        return None
    if os.path.islink(path):
        path = Path(os.path.realpath(path))
    side = path.with_name(f"{path.name}.superseded-{stamp}")
    tmp = path.with_name(f"{path.name}.rewrite-{stamp}")
    n = 0
    with open(path, "rb") as src, open(tmp, "wb") as keep, open(side, "ab") as out:
        records = iter(lambda: src.read(record), b"") if record else src
        for raw in records:
            if leaves(raw):
                out.write(raw)
                n += 1
            else:
                keep.write(raw)
        for f in (keep, out):
            f.flush()
            os.fsync(f.fileno())
    if not n:
        tmp.unlink()
        side.unlink()
        return None
    os.replace(tmp, path)
    log.warning("moved %d superseded records from %s to %s", n, path, side)
    return side, n


def check_edits(
    src: Path, out_path: Path, err_path: Path, notes: list[str], state: ResumeState, *,
    resend_changed: bool, retry_failed: bool, stop: threading.Event | None = None,
) -> tuple[ResumeState, int]:
    """Refuse, or retire the old records of, lines that changed since their last run.

    Args:
        notes: where the summary's note on moved records goes.

    Returns:
        The state to resume from (read again when records were moved aside), and how
        many changed lines had their records moved aside.

    Raises:
        ConfigError: lines named by position changed and ``resend_changed`` is off.
    """
    changes = find_changes(src, state, explicit=resend_changed,
                           failed=not retry_failed, stop=stop)
    if not changes.total:
        state.verified_positional = True
        state.unchanged_lines = changes.unchanged
        return state, 0
    if not resend_changed:
        lines = ", ".join(str(n) for n in changes.lines)
        more = ", ..." if changes.positional > len(changes.lines) else ""
        raise ConfigError(
            f"the input changed since the last run: {changes.positional:,} line(s) without "
            f"a custom_id differ from the ones answered or failed before (lines {lines}{more})."
            " Such lines are named by their position (line-<N>), so an edit above an "
            "answered line gives every line below it another line's id, and their old "
            "answers no longer match. Rerun with --resend-changed to send the changed lines "
            "again (their earlier records are moved to side files), or with --fresh to "
            "start over (old outputs are moved aside); give lines a custom_id to make "
            "edits safe.")
    moved = supersede(out_path, err_path, changes.ids)
    superseded = changes.ids
    examples = [f"line {n}" for n in changes.lines] + changes.examples
    notes.append(
        f"--resend-changed: {changes.total:,} changed line(s) are sent again "
        f"(e.g. {', '.join(examples[:5])}); their earlier records were moved to "
        + ", ".join(f"{side.name} ({n:,})" for side, n in moved))
    # Read the outputs again: the moved ids are no longer done or failed.
    state = load_state(out_path, err_path, stop=stop)
    if retry_failed and not len(state.failed):
        state.forget_bad_lines()
    state.verified_positional = True
    state.unchanged_lines = changes.unchanged  # the moved ids were never in it
    state.superseded = superseded
    return state, changes.total
