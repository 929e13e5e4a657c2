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
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .errors import OutputError
from .idset import IdSet
from .jobs import LEDGER_ENTRY, count_lines, ledger_path

__all__ = ["ResumeState", "load_state", "move_aside", "repair_torn_tail"]

log = logging.getLogger(__name__)

# Our own records start {"id":"batch_req_...","custom_id":"..."; read the id from the
# first bytes without parsing a possibly large response body. Other writers' lines
# fall back to a full parse.
_FAST_ID = re.compile(rb'\{"id":"[^"\\]*","custom_id":("(?:[^"\\]|\\.)*")')


@dataclass(slots=True)
class ResumeState:
    """What the output files of earlier runs hold.

    Attributes:
        done: ids with a result.
        failed: ids with a final error (not counting bad input lines).
        bad_lines: line numbers already reported as bad input.
        torn: side files holding torn last lines that were cut off.
    """

    done: IdSet = field(default_factory=IdSet)
    failed: IdSet = field(default_factory=IdSet)
    bad_lines: set[int] = field(default_factory=set)
    failed_lines: dict[str, int] = field(default_factory=dict)
    torn: list[Path] = field(default_factory=list)
    invalid_lines: int = 0
    has_ledger: bool = False

    @property
    def empty(self) -> bool:
        return not (len(self.done) or len(self.failed) or self.bad_lines)


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


def _custom_id(raw: bytes) -> tuple[str | None, dict[str, object] | None]:
    m = _FAST_ID.match(raw)
    if m is not None:
        try:
            value = orjson.loads(m.group(1))
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, str):
            return value, None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    cid = obj.get("custom_id")
    return (cid if isinstance(cid, str) else None), obj


def load_state(results: Path, errors: Path) -> ResumeState:
    """Repair both files' tails, then collect what they hold.

    When the results file has a ledger beside it, each done id also gets the hash of
    the body that was answered, so a rerun can tell when the input changed.
    """
    ledger = ledger_path(results)
    with_ledger = ledger.exists() and results.exists()
    # Sized up front (a fast newline count) so the table never grows: growing briefly
    # holds the old and the new table at once.
    expected = count_lines(results) if results.exists() else 0
    state = ResumeState(done=IdSet(capacity=expected, values=with_ledger))
    for path in (results, errors):
        side = repair_torn_tail(path)
        if side is not None:
            state.torn.append(side)
    if results.exists():
        with open(results, "rb") as f:
            for raw in f:
                cid, _ = _custom_id(raw)
                if cid is None:
                    state.invalid_lines += 1
                else:
                    state.done.add(cid)
    if with_ledger:
        _read_ledger(ledger, state)
    if errors.exists():
        with open(errors, "rb") as f:
            for raw in f:
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    state.invalid_lines += 1
                    continue
                if not isinstance(obj, dict):
                    continue
                error = obj.get("error") if isinstance(obj.get("error"), dict) else {}
                assert isinstance(error, dict)
                line = error.get("line")
                if error.get("code") == "invalid_line":
                    if isinstance(line, int):
                        state.bad_lines.add(line)
                    continue
                cid = obj.get("custom_id")
                if isinstance(cid, str):
                    state.failed.add(cid)
    return state


def _read_ledger(path: Path, state: ResumeState) -> None:
    size = LEDGER_ENTRY.size
    length = path.stat().st_size
    if length % size:
        # A torn last entry (a crash or a full disk mid-write): cut it, or every later
        # entry would be read out of step.
        with open(path, "rb+") as f:
            f.truncate(length - length % size)
    with open(path, "rb") as f:
        while chunk := f.read(size * 4096):
            whole = len(chunk) - len(chunk) % size
            for fp, digest in LEDGER_ENTRY.iter_unpack(chunk[:whole]):
                # Only ids the results file holds: an entry whose result line was torn
                # off must not make that request look done.
                state.done.update_fingerprint(fp, digest)
            if whole < len(chunk):
                break
    state.has_ledger = True


def move_aside(path: Path) -> Path | None:
    """Rename ``path`` to ``<name>.<timestamp>.bak`` (for ``--fresh``); never delete it.

    Raises:
        OutputError: the rename failed (the file is left where it was).
    """
    if not path.exists():
        return None
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
