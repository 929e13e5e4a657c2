"""Appending records to the results, errors and ledger files, whole lines only."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError
from .ledger import ledger_entry, ledger_path
from .lock import lock_in_place
from .records import dump_record

__all__ = ["ResultWriter"]


class ResultWriter:
    """Appends records to the results and errors files.

    Each record is serialised to one line and written with a single ``write`` then
    flushed, so a crash leaves at most one partial last line. ``fsync`` runs at most
    every ``fsync_interval`` seconds (from :meth:`maybe_sync`) and at :meth:`close`:
    flushing hands the bytes to the OS, which survives a killed process; fsync makes
    them survive a power cut, at a cost of milliseconds each, hence the timer.

    A write that fails (disk full, file too large, I/O error) is cut back off the
    file, so the files stay whole lines, and raises :class:`OutputError` naming the
    file; the first such error is kept in :attr:`failure`.
    """

    __slots__ = ("results_path", "errors_path", "ledger_path", "_results", "_errors", "_ledger",
                 "_last_sync", "_interval", "_dirty", "failure")

    def __init__(
        self,
        results_path: str | os.PathLike[str],
        errors_path: str | os.PathLike[str],
        *,
        fsync_interval: float = 1.0,
    ) -> None:
        self.results_path = Path(results_path)
        self.errors_path = Path(errors_path)
        self.ledger_path = ledger_path(self.results_path)
        self._results: _Appender | None = None
        self._errors: _Appender | None = None
        self._ledger: _Appender | None = None
        self._interval = fsync_interval
        self._last_sync = time.monotonic()
        self._dirty = False
        self.failure: OutputError | None = None

    def _open(self, path: Path) -> IO[bytes]:
        """Open ``path`` for appending, unbuffered (creating its folder). A file this
        opening creates is locked in place (see :mod:`processor.store.lock`): an existing one
        was, by the run's :class:`~processor.store.lock.JobLock`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not os.path.lexists(path)
        f = open(path, "ab", buffering=0)
        if new and not lock_in_place(f.fileno()):
            f.close()
            raise OSError(errno.EBUSY, "another run is writing this file under another "
                          "name (a hard link)")
        return f

    def _appender(self, path: Path) -> _Appender:
        try:
            return _Appender(path, self._open(path))
        except OSError as exc:
            raise OutputError(path, exc) from exc

    def _fail(self, exc: OutputError) -> OutputError:
        if self.failure is None:
            self.failure = exc
        return exc

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None:
        """Append a result; with ``hashed_line`` (its input line's hash), note it in the ledger."""
        line = dump_record(record)
        try:
            if hashed_line:
                # The ledger entry goes first, unbuffered: a kill between the two writes
                # leaves an entry without a result (ignored on resume), never a result
                # whose input line is unknown (an edit to it could not be noticed).
                if self._ledger is None:
                    self._ledger = self._appender(self.ledger_path)
                self._ledger.write(ledger_entry(record["custom_id"], hashed_line))
            if self._results is None:
                self._results = self._appender(self.results_path)
            self._results.write(line)
        except OutputError as exc:
            raise self._fail(exc) from exc.__cause__
        self._dirty = True

    def write_error(self, record: dict[str, Any]) -> None:
        try:
            if self._errors is None:
                self._errors = self._appender(self.errors_path)
            self._errors.write(dump_record(record))
        except OutputError as exc:
            raise self._fail(exc) from exc.__cause__
        self._dirty = True

    def sync(self) -> None:
        """fsync the files now."""
        try:
            for f in (self._results, self._errors, self._ledger):
                if f is not None:
                    f.sync()
        except OutputError as exc:
            raise self._fail(exc) from exc.__cause__
        self._last_sync = time.monotonic()
        self._dirty = False

    def maybe_sync(self) -> None:
        """fsync if there are new records and the interval has passed."""
        if self._dirty and time.monotonic() - self._last_sync >= self._interval:
            self.sync()

    def close(self) -> None:
        """Sync and close every file (all of them, even when one fails).

        Raises:
            OutputError: the final sync failed (the files stay whole lines).
        """
        try:
            if self._dirty:
                self.sync()
        finally:
            for f in (self._results, self._errors, self._ledger):
                if f is not None:
                    f.close()
            self._results = self._errors = self._ledger = None


class _Appender:
    """One output file opened for appending, unbuffered; a failed write is cut back off."""

    __slots__ = ("path", "_f", "_size")

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path = path
        self._f = f
        self._size = os.fstat(f.fileno()).st_size

    def write(self, data: bytes) -> None:
        try:
            _write_all(self._f, data)
        except OSError as exc:
            try:  # a short write left part of a line: cut it (needs no space)
                os.ftruncate(self._f.fileno(), self._size)
            except OSError:
                pass
            raise OutputError(self.path, exc) from exc
        self._size += len(data)

    def sync(self) -> None:
        try:
            os.fsync(self._f.fileno())
        except OSError as exc:
            raise OutputError(self.path, exc, "fsync") from exc

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass


def _write_all(f: IO[bytes], data: bytes) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may be short)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(f"could not write to {getattr(f, 'name', 'a file')}")
        view = view[n:]
