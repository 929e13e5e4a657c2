"""Refuse paths that would destroy data, before anything is read or written.

A run reads its input and writes results, errors, a ledger and lock files (plus side
files such as ``.torn-*`` and ``.bak``, which are created exclusively and so never
overwrite anything). Files are compared by identity, not by name: the device and
inode of an existing file (hard links, symlinks, ``./x`` vs ``x``, ``/proc/self/fd``
paths all meet there), else the nearest existing folder's identity plus the rest of
the resolved path. Outputs must be regular files (or not exist yet) in a folder:
never a terminal, pipe, FIFO, socket, device, folder, or this process's own stdin /
stdout / stderr.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .ledger import ledger_path

__all__ = ["check_distinct", "check_input", "check_job_paths", "check_output", "identity",
           "job_locks", "lock_path"]

Identity = tuple[object, ...]

# Paths that name a process's stream, whatever it is connected to now.
_STREAM = re.compile(r"^/(dev/(stdin|stdout|stderr|fd/\d+|tty)|proc/[^/]+/fd/\d+)$")


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file of an output: ``<real path>.lock`` (symlinks resolved, so every
    name of the file meets at one lock)."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".lock")


def identity(path: str | os.PathLike[str]) -> Identity:
    """What two paths share when they name the same file, existing or not yet."""
    try:
        st = os.stat(path)
    except OSError:
        pass
    else:
        return ("inode", st.st_dev, st.st_ino)
    real = os.path.realpath(path)
    rest: list[str] = []
    head = real
    while True:
        head, name = os.path.split(head)
        rest.append(name)
        try:
            st = os.stat(head)
        except OSError:
            if head in ("/", ""):
                return ("path", real)
            continue
        return ("new", st.st_dev, st.st_ino, *reversed(rest))


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a terminal or character device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def _std_streams() -> dict[Identity, str]:
    names: dict[Identity, str] = {}
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        names[("inode", st.st_dev, st.st_ino)] = name
    return names


def check_input(path: Path, what: str = "input") -> None:
    """The job file must be a regular file: it is read more than once (line count,
    run, resume by line number), which a pipe or stdin cannot give.

    Raises:
        ConfigError: with an accurate reason (missing, folder, pipe, ...).
    """
    if _STREAM.match(os.path.abspath(path)):
        raise ConfigError(f"the {what} {path} is a process's stream: a job is read more than "
                          "once (count, run, resume), so it must be a regular file; save it to "
                          "a file first")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if str(path) == "-":
            raise ConfigError(
                f"{what} '-': reading the job from stdin is not supported (it is read more "
                "than once); save it to a file first") from None
        raise ConfigError(f"no such file: {path} (the {what})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    kind = _kind(st.st_mode)
    if kind == "a folder":
        raise ConfigError(f"the {what} {path} is a folder, not a JSONL file")
    if kind is not None:
        raise ConfigError(
            f"the {what} {path} is {kind}: a job is read more than once (count, run, "
            "resume), so it must be a regular file; save it to a file first")


_RUN_HINT = "outputs are appended to and read back on resume; give a file"


# Names batchproc gives its own files beside an output: a ledger (binary hashes, read
# on every resume) and a lock (deleted when its run ends). Never a user's output.
_OWN_SUFFIXES = {".ledger": "the ledger of a results file (binary; read to resume that job)",
                 ".lock": "a lock file (deleted when the run holding it ends)",
                 ".shard": "the marker of a shard's results file (which --shard wrote it)"}


def check_output(path: Path, what: str, hint: str = _RUN_HINT, *,
                 own_file: bool = False) -> None:
    """An output must be a regular file, or not exist yet in a folder that can hold it.

    Args:
        path: the output.
        what: its role in messages, e.g. ``--output``.
        hint: what the user should do instead, for a stream or a non-file.
        own_file: a ledger or lock of this run; else a name (or symlink target) ending
            in ``.ledger`` or ``.lock`` is refused: it is another job's ledger or lock,
            which writing to would destroy (a lock file is even deleted at its run's end).

    Raises:
        ConfigError: naming ``what`` (e.g. ``--output``) and the reason.
    """
    if _STREAM.match(os.path.abspath(path)):
        raise ConfigError(f"{what} {path} is a process's stream, not a file: {hint}")
    if not own_file:
        _check_not_own(path, what)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _check_parent(path, what)
        return
    except NotADirectoryError:
        _check_parent(path, what)
        raise ConfigError(f"cannot create {what} {path}: a part of its path is not a folder"
                          ) from None
    except OSError as exc:
        raise ConfigError(f"cannot use {what} {path}: {exc.strerror}") from None
    kind = _kind(st.st_mode)
    if kind is not None:
        raise ConfigError(f"{what} {path} is {kind}, not a file: {hint}")
    stream = _std_streams().get(("inode", st.st_dev, st.st_ino))
    if stream is not None:
        raise ConfigError(f"{what} {path} is this process's {stream}; give another file")


def _check_not_own(path: Path, what: str) -> None:
    for name in {Path(path).name, Path(os.path.realpath(path)).name}:
        for suffix, kind in _OWN_SUFFIXES.items():
            if name.endswith(suffix):
                raise ConfigError(f"{what} {path} is named like {kind}: batchproc keeps "
                                  f"the names ending in {suffix} for its own files; give "
                                  "another name")


def _check_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor of a file to create must be a folder."""
    head = Path(os.path.abspath(path)).parent
    while True:
        try:
            st = os.stat(head)
        except FileNotFoundError:
            if head.parent == head:
                return
            head = head.parent
            continue
        except NotADirectoryError:
            head = head.parent
            continue
        except OSError:
            return  # cannot tell; opening the file will say why
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"cannot create {what} {path}: {head} is a file, not a folder")
        return


def check_distinct(reads: Sequence[tuple[str, Path]], writes: Sequence[tuple[str, Path]]) -> None:
    """No written file may be a read file or another written file.

    Args:
        reads: ``(role, path)`` of the files read (the input, ...).
        writes: ``(role, path)`` of every file written.

    Raises:
        ConfigError: naming both roles and paths.
    """
    seen: dict[Identity, tuple[str, Path, bool]] = {}
    for role, path in reads:
        seen.setdefault(identity(path), (role, path, True))
    for role, path in writes:
        key = identity(path)
        other = seen.get(key)
        if other is not None:
            o_role, o_path, o_read = other
            why = ("it is being read, and writing it would destroy it"
                   if o_read else "both would be written into one file")
            same = f"{path}" if str(path) == str(o_path) else f"{path} and {o_path}"
            raise ConfigError(f"{role} and {o_role} are the same file ({same}): {why}; "
                              "give different files")
        seen[key] = (role, path, False)


def job_locks(results: Path, errors: Path) -> list[Path]:
    """The lock files of a run: one per file it writes (results, errors, ledger), so two
    runs that share any of them never run at once."""
    return [lock_path(results), lock_path(errors), lock_path(ledger_path(results))]


def check_job_paths(src: Path, results: Path, errors: Path) -> None:
    """Every check for a run, before anything is read or written.

    Raises:
        ConfigError: the input is not a readable job file, an output cannot be a file,
            or two of the files are one.
    """
    check_input(src)
    writes = [("results (--output)", results), ("errors (--errors)", errors),
              ("the ledger", ledger_path(results)), ("the results lock", lock_path(results)),
              ("the errors lock", lock_path(errors)),
              ("the ledger lock", lock_path(ledger_path(results)))]
    for role, path in writes:
        check_output(path, role, own_file=True)
    check_distinct([("the input", src)], writes)
    for role, path in writes[:2]:
        _check_not_own(path, role)
