"""Resume: find what earlier runs already wrote, and repair what a crash left behind.

Rerunning the same command resumes. Before anything is sent, the results file is
scanned for ``custom_id``s already answered (held in a compact
:class:`~processor.idset.IdSet`, 12-24 bytes per id), the errors file for requests
that failed for good and for bad input lines already reported. A torn last line
(a crash mid-write) is moved to a side file and cut off, so the outputs stay
valid JSONL.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputError
from ..idset import IdSet
from ..jobs import count_lines
from .ledger import ledger_path, read_ledger
from .records import parse_hash, read_custom_id, read_error

__all__ = ["ResumeState", "ScanInterrupted", "load_state", "move_aside", "repair_torn_tail",
           "stop_check"]

#: lines read between two looks at the stop flag (Ctrl-C during a long scan).
CHECK_EVERY = 4096
#: ids named by their line (lines without a custom_id).
POSITIONAL_PREFIX = "line-"


class ScanInterrupted(Exception):
    """A start-up scan was abandoned because the run is stopping (Ctrl-C, SIGTERM)."""


def stop_check(flag: threading.Event | None) -> Callable[[], None] | None:
    """A callable that raises :class:`ScanInterrupted` once ``flag`` is set."""
    if flag is None:
        return None

    def check() -> None:
        if flag.is_set():
            raise ScanInterrupted

    return check

log = logging.getLogger(__name__)

@dataclass(slots=True)
class ResumeState:
    """What the output files of earlier runs hold.

    Attributes:
        done: ids with a result; with a ledger, each with the low 32 bits of the hash
            of the input line that was answered (0: unknown).
        failed: ids with a final error (not counting bad input lines), each with the low
            32 bits of the hash of the line that failed (0: an older record without one).
        bad_hashes: hashes of the bad input lines already reported, with how many times
            each was (two blank lines are two reports).
        bad_lines: line numbers of bad lines reported by older versions, whose records
            carry no hash (those are matched by line number, bad lines only).
        reported_lines: line numbers of every bad line reported (for the summary).
        positional: how many done or failed ids are ``line-<N>`` (named by position).
        torn: side files holding torn last lines that were cut off.
    """

    done: IdSet = field(default_factory=IdSet)
    failed: IdSet = field(default_factory=lambda: IdSet(values=True))
    bad_hashes: Counter[int] = field(default_factory=Counter)
    bad_lines: set[int] = field(default_factory=set)
    reported_lines: set[int] = field(default_factory=set)
    positional: int = 0
    failed_hashes: bool = False
    torn: list[Path] = field(default_factory=list)
    invalid_lines: int = 0
    has_ledger: bool = False
    #: lines named by position were compared with their earlier records before the run.
    verified_positional: bool = False
    #: bitmap of line numbers found answered and unchanged by that comparison.
    unchanged_lines: bytearray = field(default_factory=bytearray)
    #: ids whose earlier records were moved aside (--resend-changed): sent as new.
    superseded: IdSet = field(default_factory=IdSet)

    @property
    def empty(self) -> bool:
        return not (len(self.done) or len(self.failed) or self.bad_lines or self.bad_hashes)

    @property
    def comparable(self) -> bool:
        """Whether any earlier answer or failure knows the input line it was for."""
        return (self.has_ledger and len(self.done) > 0) or self.failed_hashes

    def forget_bad_lines(self) -> None:
        """Report every bad line again (the errors file was moved aside)."""
        self.bad_hashes.clear()
        self.bad_lines.clear()


def repair_torn_tail(path: Path) -> Path | None:
    """Cut a partial last line off ``path``, saving its bytes beside it.

    The side file is written in full and fsynced before the file is cut, so the bytes
    are never lost; if it cannot be written, it is removed and nothing is cut.

    Returns:
        The side file holding the cut bytes, or None if the file was whole.

    Raises:
        OutputError: the side file could not be written, or the file not cut.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        # Walk back to the last newline.
        pos = size
        block = 1 << 16
        cut = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            pos = start
        f.seek(cut)
        tail = f.read()
        stamp = f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        side = _save_new(path, stamp, tail)
        try:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            raise OutputError(path, exc, f"cutting its torn last line, saved in {side}"
                              ) from exc
    log.warning("%s ended in a partial line (%d bytes, a crash mid-write); moved it to %s",
                path, len(tail), side)
    return side


def _save_new(beside: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a new file ``name`` (``name.1``, ... if taken) beside ``beside``,
    fsynced; never overwrites. On failure the partial file is removed."""
    side = beside.with_name(name)
    n = 1
    while True:
        try:
            f = open(side, "xb")
        except FileExistsError:  # never overwrite an earlier torn piece
            side = beside.with_name(f"{name}.{n}")
            n += 1
            continue
        except OSError as exc:
            raise OutputError(side, exc, f"saving the torn last line of {beside}; "
                              "nothing was cut") from exc
        break
    try:
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        side.unlink(missing_ok=True)
        raise OutputError(side, exc, f"saving the torn last line of {beside}; the partial "
                          "copy was removed and nothing was cut") from exc
    return side


def load_state(results: Path, errors: Path, *,
               stop: threading.Event | None = None) -> ResumeState:
    """Repair both files' tails, then collect what they hold.

    When the results file has a ledger beside it, each done id also gets the hash of
    the body that was answered, so a rerun can tell when the input changed. Error
    records carry the hash of their input line (``error.input_hash``) for the same
    purpose, and bad lines are known by it.

    Raises:
        ScanInterrupted: ``stop`` was set (the scan looks every few thousand lines).
    """
    check = stop_check(stop)
    ledger = ledger_path(results)
    with_ledger = ledger.exists() and results.exists()
    # Sized up front (a fast newline count) so the table never grows: growing briefly
    # holds the old and the new table at once.
    expected = count_lines(results, cancel=check) if results.exists() else 0
    state = ResumeState(done=IdSet(capacity=expected, values=with_ledger))
    for path in (results, errors):
        side = repair_torn_tail(path)
        if side is not None:
            state.torn.append(side)
    if results.exists():
        with open(results, "rb") as f:
            for n, raw in enumerate(f):
                if check is not None and not n % CHECK_EVERY:
                    check()
                cid, answered = read_custom_id(raw)
                if cid is None:
                    state.invalid_lines += 1
                elif not answered:
                    # A failure (another tool's results file): failed for good, not done;
                    # --retry-failed sends it again.
                    if state.failed.add(cid, 0) and cid.startswith(POSITIONAL_PREFIX):
                        state.positional += 1
                elif state.done.add(cid) and cid.startswith(POSITIONAL_PREFIX):
                    state.positional += 1
    if with_ledger:
        read_ledger(ledger, state.done, check)
        state.has_ledger = True
    if errors.exists():
        with open(errors, "rb") as f:
            for n, raw in enumerate(f):
                if check is not None and not n % CHECK_EVERY:
                    check()
                _read_error(raw, state)
    return state


def _read_error(raw: bytes, state: ResumeState) -> None:
    read = read_error(raw)
    if read is None:
        state.invalid_lines += 1
        return
    cid, error = read
    line = error.get("line")
    hashed = parse_hash(error.get("input_hash"))
    if error.get("code") == "invalid_line":
        if isinstance(line, int):
            state.reported_lines.add(line)
        if hashed:
            state.bad_hashes[hashed] += 1
        elif isinstance(line, int):
            state.bad_lines.add(line)  # an older record: known by its line number only
        return
    if isinstance(cid, str):
        # A later record for the same id (it failed again) replaces the hash.
        if state.failed.add(cid, hashed) and cid.startswith(POSITIONAL_PREFIX):
            state.positional += 1
        state.failed_hashes = state.failed_hashes or bool(hashed)


def move_aside(path: Path) -> Path | None:
    """Rename ``path`` to ``<name>.<timestamp>.bak`` (for ``--fresh``); never delete it.
    A symlink is followed: the file it names is renamed beside itself, so the new run
    writes through the link to where the user keeps it.

    Raises:
        OutputError: the rename failed (the file is left where it was).
    """
    if not path.exists():
        return None
    if os.path.islink(path):  # the file a link names moves; the link is left dangling
        path = Path(os.path.realpath(path))
    stamp = time.strftime('%Y%m%dT%H%M%S')
    target = path.with_name(f"{path.name}.{stamp}.bak")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{stamp}.{n}.bak")
        n += 1
    try:
        path.rename(target)
    except OSError as exc:
        raise OutputError(path, exc, f"moving it aside to {target.name}") from exc
    return target
