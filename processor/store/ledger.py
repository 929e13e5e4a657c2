"""The ledger beside a results file: which input line each answer was for.

16 bytes per result, written just before it: the id's fingerprint and the
:func:`~processor.jobs.line_hash` of its input line. A rerun hashes the raw lines
again (no parsing) to notice edits since they were answered. It is advisory: the
results file stays the record of what is done.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

from ..idset import IdSet, fingerprint

__all__ = ["LEDGER_ENTRY", "ledger_entry", "ledger_path", "read_ledger"]

LEDGER_ENTRY = struct.Struct("<QQ")


def ledger_path(results_path: Path) -> Path:
    """The ledger beside a results file: ``<results>.ledger``. A results path that is a
    symlink has its ledger beside the file it names, so every name of the results file
    reads and writes one ledger (as its lock is one, see
    :func:`processor.store.paths.lock_path`)."""
    results_path = Path(results_path)
    if os.path.islink(results_path):
        results_path = Path(os.path.realpath(results_path))
    return results_path.with_name(results_path.name + ".ledger")


def ledger_entry(custom_id: str, hashed_line: int) -> bytes:
    """16 bytes: the id's fingerprint and the line hash of its input line."""
    return LEDGER_ENTRY.pack(fingerprint(custom_id), hashed_line)


def read_ledger(path: Path, done: IdSet, check: Callable[[], None] | None = None) -> None:
    """Give each id of ``done`` the line hash the ledger holds for it (the last entry
    wins). A torn last entry is cut off first. ``check`` is called between blocks; it
    raises to abandon the read."""
    size = LEDGER_ENTRY.size
    length = path.stat().st_size
    if length % size:
        # A torn last entry (a crash or a full disk mid-write): cut it, or every later
        # entry would be read out of step.
        with open(path, "rb+") as f:
            f.truncate(length - length % size)
    with open(path, "rb") as f:
        while chunk := f.read(size * 4096):
            if check is not None:
                check()
            whole = len(chunk) - len(chunk) % size
            for fp, digest in LEDGER_ENTRY.iter_unpack(chunk[:whole]):
                # Only ids the results file holds: an entry whose result line was torn
                # off must not make that request look done.
                done.update_fingerprint(fp, digest)
            if whole < len(chunk):
                break
