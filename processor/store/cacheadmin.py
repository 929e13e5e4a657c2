"""Looking after a cache file: what it holds (:func:`cache_stats`), pruning it
(:func:`prune`), and the strict durations and sizes their options take."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..shown import shown
from .cache import connect

__all__ = ["CacheStats", "Pruned", "cache_stats", "file_bytes", "parse_age", "parse_size",
           "prune"]

_AGE = re.compile(r"([0-9]{1,9})([smhdw])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
#: the longest age accepted (100 years): beyond it, "older than" means nothing.
MAX_AGE = 100 * 365 * 86_400
_SIZE = re.compile(r"([0-9]{1,15})([KMGT]?)(?:i?B)?")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_age(text: str) -> int:
    """Seconds in a duration like ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum of
    them (``1d12h``): whole numbers, each unit at most once, in that order.

    Raises:
        ValueError: anything else (no unit, a sign, a fraction, spaces, over 100 years).
    """
    pos, total, seen = 0, 0, ""
    order = "wdhms"
    while pos < len(text):
        m = _AGE.match(text, pos)
        if m is None:
            break
        unit = m.group(2)
        if seen and order.index(unit) <= order.index(seen[-1]):
            raise ValueError(f"not a duration: {text!r} (units largest first, each once)")
        seen += unit
        total += int(m.group(1)) * _AGE_UNITS[unit]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text!r} (give e.g. 30d, 12h, 90m, 1d12h)")
    if total > MAX_AGE:
        raise ValueError(f"duration {text!r} is over 100 years")
    return total


def parse_size(text: str) -> int:
    """Bytes in a size like ``500M``, ``2G``, ``1024K``, ``1T`` (binary units; ``MB`` and
    ``MiB`` mean ``M``) or a plain number of bytes.

    Raises:
        ValueError: anything else (a sign, a fraction, spaces, an unknown unit).
    """
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (give e.g. 500M, 2G)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def file_bytes(path: Path) -> int:
    """The bytes of the cache file and its ``-wal`` and ``-shm`` companions."""
    total = 0
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(OSError):
            total += os.stat(p).st_size
    return total


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What a cache file holds."""

    path: str
    entries: int
    file_bytes: int
    body_bytes: int
    hits: int
    oldest: float | None
    newest: float | None
    last_hit: float | None
    models: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: a column's value where it is what batchproc writes: a count, a Unix time.
_COUNT = ("CASE WHEN typeof({0}) = 'integer' AND {0} BETWEEN 0 AND 1000000000000 "
          "THEN {0} END")
_TIME = ("CASE WHEN typeof({0}) IN ('integer', 'real') AND {0} BETWEEN 0 AND 100000000000 "
         "THEN {0} END")


def cache_stats(path: Path) -> CacheStats:
    """Read-only figures of the cache at ``path``.

    Raises:
        ConfigError: it does not exist or is not a batchproc cache.
    """
    conn = connect(path, read_only=True)
    try:
        # Only values of the types batchproc writes count: an edited or foreign row (a
        # text time, a blob model) must not break the figures, nor the command.
        entries, body, hits, oldest, newest, last = conn.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0), "
            f"coalesce(sum({_COUNT.format('hits')}), 0), min({_TIME.format('created')}), "
            f"max({_TIME.format('created')}), max({_TIME.format('last_hit')}) "
            "FROM responses").fetchone()
        models = {shown(name): int(count) for name, count in conn.execute(
            "SELECT CASE WHEN typeof(model) = 'text' THEN model ELSE '' END, count(*) "
            "FROM responses GROUP BY 1 ORDER BY 2 DESC LIMIT 20").fetchall()}
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read cache {path}: {exc}") from None
    finally:
        conn.close()
    return CacheStats(str(path), entries, file_bytes(path), body, hits, oldest, newest, last,
                      models)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What :func:`prune` did."""

    deleted: int
    left: int
    bytes_before: int
    bytes_after: int


def prune(path: Path, *, older_than: float | None = None, max_bytes: int | None = None,
          vacuum: bool = False, now: float | None = None) -> Pruned:
    """Delete answers stored more than ``older_than`` seconds ago, then the oldest ones
    until the bodies fit in ``max_bytes``; with ``vacuum`` (implied by ``max_bytes``),
    give the freed space back to the file system (else SQLite reuses it).

    Safe while runs use the file: deletions are one ``BEGIN IMMEDIATE`` transaction.

    Raises:
        ConfigError: not a batchproc cache, or it cannot be written (locked too long).
    """
    before = file_bytes(path)
    conn = connect(path)
    now = time.time() if now is None else now
    try:
        conn.execute("BEGIN IMMEDIATE")
        deleted = 0
        if older_than is not None:
            deleted += conn.execute("DELETE FROM responses WHERE created < ?",
                                    (now - older_than,)).rowcount
        if max_bytes is not None:
            # Walk from the newest back, keeping rows while they fit; the rest go.
            kept, cutoff = 0, None
            for created, size in conn.execute(
                    "SELECT created, length(body) FROM responses ORDER BY created DESC"):
                if kept + size > max_bytes:
                    cutoff = created
                    break
                kept += size
            if cutoff is not None:
                deleted += conn.execute("DELETE FROM responses WHERE created <= ?",
                                        (cutoff,)).rowcount
        conn.execute("COMMIT")
        left = conn.execute("SELECT count(*) FROM responses").fetchone()[0]
        if (vacuum or max_bytes is not None) and deleted:
            conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot prune cache {path}: {exc}") from None
    finally:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        conn.close()
    return Pruned(deleted, left, before, file_bytes(path))
