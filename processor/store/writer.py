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

    def _open_ledger(self) -> _Appender:
        self._ledger = self._appender(self.ledger_path)
        return self._ledger

    def _open_results(self) -> _Appender:
        self._results = self._appender(self.results_path)
        return self._results

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
                ledger = self._ledger or self._open_ledger()
                ledger.write(ledger_entry(record["custom_id"], hashed_line))
            (self._results or self._open_results()).write(line)
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
            # The ledger first: after a power cut too, no result without its entry.
            for f in (self._ledger, self._results, self._errors):
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
    """One output file opened for appending, unbuffered; a failed write is cut back off.

    Each record is one ``os.write`` on the file's descriptor (the usual case: all of it
    at once); a short write is carried on until the record is whole.
    """

    __slots__ = ("path", "_f", "_fd", "_size")

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path = path
        self._f = f
        self._fd = f.fileno()
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        size = len(data)
        try:
            n = os.write(self._fd, data)
            if n != size:
                _write_rest(self._fd, data, n)
        except OSError as exc:
            try:  # a short write left part of a line: cut it (needs no space)
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise OutputError(self.path, exc) from exc
        self._size += size

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise OutputError(self.path, exc, "fsync") from exc

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass


def _write_rest(fd: int, data: bytes, done: int) -> None:
    """Write the rest of ``data`` after a short write of ``done`` bytes."""
    view = memoryview(data)[done:]
    while view:
        n = os.write(fd, view)
        if not n:
            raise OSError(f"could not write to file descriptor {fd}")
        view = view[n:]
