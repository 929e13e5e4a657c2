"""One run per job at a time: an exclusive lock beside each output file.

The lock is ``flock`` on an open file (``<output>.lock``), so the kernel releases it
on any exit, ``kill -9`` included; a lock file left by a killed run is simply taken
over. The file holds the holder's PID, host and start time, for the message a second
run prints. It is removed on release (after checking, on acquiring, that the file
locked is still the one at the path, so a removal never lets two runs in).

Lock files are named after the output's (real) name, so a hard link, another name of
the same file, has its own: the outputs themselves are also locked in place (``flock``
on the file), when the run starts if they exist, else when the run creates them.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ..errors import JobLocked, OutputError

__all__ = ["JobLock", "lock_in_place"]

log = logging.getLogger(__name__)

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class JobLock:
    """Exclusive locks on a set of lock files, taken together or not at all.

    Args:
        paths: the lock files (e.g. from :func:`processor.store.paths.lock_path`).

    Raises (from :meth:`acquire`):
        JobLocked: another process holds one of them.
        OutputError: a lock file cannot be created or written.
    """

    __slots__ = ("paths", "files", "_held", "_files")

    def __init__(self, paths: Sequence[Path], files: Sequence[Path] = ()) -> None:
        self.paths = list(dict.fromkeys(paths))
        #: outputs locked in place when they exist (their other names, hard links, have
        #: other lock files); :func:`lock_in_place` covers the ones created later.
        self.files = list(dict.fromkeys(files))
        self._held: list[tuple[Path, int]] = []
        self._files: list[int] = []

    def acquire(self) -> None:
        try:
            for path in self.paths:
                self._held.append((path, _lock_one(path)))
            for path in self.files:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue  # not there yet (or unreadable: opening it later says why)
                self._files.append(fd)
                if not lock_in_place(fd):
                    raise JobLocked(f"{path} (locked in place: another name of this file, "
                                    "a hard link, is being written)")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Remove the lock files and let go (also safe when nothing is held)."""
        while self._files:
            os.close(self._files.pop())
        while self._held:
            path, fd = self._held.pop()
            try:
                os.unlink(path)  # still ours: removed before it is unlocked
            except OSError:
                pass
            os.close(fd)

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lock_in_place(fd: int) -> bool:
    """``flock`` an output file itself (every name of it, hard links included, meets
    there); False if another process holds it. A file system without locks: True."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def _lock_one(path: Path) -> int:
    for _ in range(100):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OutputError(path, exc, "cannot create the lock file") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise JobLocked(str(path), *holder) from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                os.close(fd)
                raise OutputError(path, exc, "cannot lock") from exc
            # A file system without locks: run unguarded rather than not at all.
            log.warning("%s: this file system cannot lock files (%s); make sure no other "
                        "run of this job is going on", path, exc.strerror)
        # The run that held it may have removed the file between our open and flock:
        # then we hold a lock nobody else will look at; try again with the new file.
        try:
            now = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        info = (f"{os.getpid()} {socket.gethostname()} "
                f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except OSError as exc:
            os.close(fd)
            raise OutputError(path, exc, "cannot write the lock file") from exc
        return fd
    raise OutputError(path, "the lock file keeps being replaced", "cannot lock")


def _read_holder(fd: int) -> tuple[int | None, str | None, str | None]:
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    except OSError:
        return None, None, None
    pid = int(text[0]) if text and text[0].isdigit() else None
    host = text[1] if len(text) > 1 else None
    since = text[2] if len(text) > 2 else None
    return pid, host, since
