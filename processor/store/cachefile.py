"""The response cache's file: its format (schema, application id, version) and setting
it up, safely when several processes open one new file at once."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from ..errors import ConfigError

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "check_file"]

log = logging.getLogger("processor.store.cache")

#: ``PRAGMA application_id`` of a batchproc cache ("bpRC"): another SQLite file is
#: never taken for one (nor written to).
APPLICATION_ID = 0x62705243
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key BLOB NOT NULL UNIQUE,
    status INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    model TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    last_hit REAL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
"""

def check_file(conn: sqlite3.Connection, path: Path, read_only: bool) -> None:
    """Check that ``path`` is a batchproc cache (or new), and set it up if new. Several
    processes may open one new file at once: what the file is is read inside one
    transaction, so that none sees another half way through setting it up; another
    program's database is refused before anything is changed in it."""
    try:
        app_id = _peek(conn, path, "BEGIN")
        if read_only:
            if app_id != APPLICATION_ID:
                raise ConfigError(f"cache {path} is empty (--cache-mode read-only)")
            return
        _wal(conn, path)
        conn.execute("PRAGMA synchronous = NORMAL")
        if app_id == APPLICATION_ID:
            return
        app_id = _peek(conn, path, "BEGIN IMMEDIATE", keep=True)  # the write lock held
        try:
            if app_id != APPLICATION_ID:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot set up cache {path}: {exc}") from None


def _peek(conn: sqlite3.Connection, path: Path, begin: str, keep: bool = False) -> int:
    """The file's application id, read in one transaction (left open with ``keep``);
    raises ConfigError for a file that is not a batchproc cache."""
    conn.execute(begin)
    try:
        app_id, version, tables = (conn.execute(sql).fetchone()[0] for sql in (
            "PRAGMA application_id", "PRAGMA user_version", "SELECT count(*) FROM sqlite_master"))
        if app_id != APPLICATION_ID and (app_id or tables):
            raise ConfigError(f"cache {path} is another program's SQLite database; give a new "
                              "path (it is left alone)")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"cache {path} was written by a newer batchproc (format {version})")
    except sqlite3.DatabaseError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise ConfigError(f"cache {path} is not a batchproc cache ({exc})") from None
    except ConfigError:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if not keep:
        conn.execute("COMMIT")
    return int(app_id)


def _wal(conn: sqlite3.Connection, path: Path, tries: int = 50) -> None:
    """WAL mode (readers beside a writer). Switching needs the file to itself for a moment:
    another process setting it up at the same time makes it wait (at most ``tries`` short
    waits, then the last error is raised)."""
    for attempt in range(tries):
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError:
            if attempt == tries - 1:
                raise
            time.sleep(0.02 * (1 + attempt % 5))
            continue
        if str(mode).lower() != "wal":
            log.warning("cache %s: WAL mode unavailable (%s); sharing it is slower", path, mode)
        return
