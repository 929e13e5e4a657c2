"""The response cache: one SQLite file (WAL mode, the standard library's ``sqlite3``)
of successful answers, keyed by :mod:`processor.store.cachekey`.

One row per request key: the HTTP status, the server's request id, the response body
as first received (the very bytes the results file holds), the request's model and the
answer's token usage (for "saved about $X"), when it was stored, and how often it was
served. Nothing about credentials: no header, no key, no fingerprint of one.

Lookups run on the caller's thread (an indexed 16-byte key: microseconds). Stores go
to one writer thread, which commits them in one ``BEGIN IMMEDIATE`` transaction per
:data:`BATCH` answers or :data:`INTERVAL` seconds, whichever comes first; until then
they are served from memory, so a duplicate right behind its original is a hit. A
kill loses at most the last uncommitted batch: the cache is an optimisation, and the
results file (never the cache) says what is done.

Several processes may share one file: WAL lets readers run beside a writer, writers
wait for each other (``busy_timeout``), and the first answer stored for a key stays
(``refresh`` replaces it). A cache that cannot be read or written costs only its
savings: the error is logged once and the run goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from ..errors import ConfigError
from .cachefile import APPLICATION_ID, check_file
from .paths import check_distinct

__all__ = ["APPLICATION_ID", "BATCH", "INTERVAL", "Hit", "ResponseCache", "check_cache_path",
           "connect"]

log = logging.getLogger(__name__)

#: answers committed per transaction at most, and seconds an answer waits at most.
BATCH = 256
INTERVAL = 0.1
#: answers waiting for the writer at most (more are dropped, not queued without end).
MAX_PENDING = 10_000
MAX_PENDING_BYTES = 256 << 20

_GET = ("SELECT status, request_id, model, prompt_tokens, completion_tokens, body "
        "FROM responses WHERE key = ?")
_INSERT = ("INSERT INTO responses (key, status, request_id, model, prompt_tokens, "
           "completion_tokens, created, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ")
_KEEP = _INSERT + "ON CONFLICT (key) DO NOTHING"
_REPLACE = _INSERT + (
    "ON CONFLICT (key) DO UPDATE SET status = excluded.status, "
    "request_id = excluded.request_id, model = excluded.model, "
    "prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, "
    "created = excluded.created, body = excluded.body, hits = 0, last_hit = NULL")
_HIT = "UPDATE responses SET hits = hits + 1, last_hit = ? WHERE key = ?"


@dataclass(frozen=True, slots=True)
class Hit:
    """One stored answer."""

    status: int
    request_id: str
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    #: the response body, JSON, as the results file holds it.
    body: bytes


#: the files SQLite keeps beside a database (WAL, shared memory, rollback journal).
_SIDE_FILES = ("-wal", "-shm", "-journal")


def check_cache_path(path: Path, reads: list[tuple[str, Path]],
                     writes: list[tuple[str, Path]]) -> None:
    """The cache (and SQLite's files beside it) must be none of a run's files.

    Args:
        reads / writes: ``(role, path)`` of every file the run reads / writes: the
            input; the results, errors, ledger, locks, run log, shard marker. A cache
            made over one of them would spoil both (SQLite pages appended to as JSONL,
            or JSON lines written into the database).

    Raises:
        ConfigError: naming the two roles.
    """
    mine = [("the cache (--cache)", path)] + [
        (f"the cache's {side} file", path.with_name(path.name + side)) for side in _SIDE_FILES]
    check_distinct(reads, writes + mine)


def connect(path: Path, *, read_only: bool = False, busy_timeout: float = 10.0
            ) -> sqlite3.Connection:
    """A connection to the cache at ``path``, checked to be one (made so if new).

    Raises:
        ConfigError: not a file, not SQLite, another program's database, a newer
            format, or it cannot be opened (read-only: it does not exist).
    """
    if path.exists() and not path.is_file():
        raise ConfigError(f"cache {path} is not a file")
    if read_only and not path.exists():
        raise ConfigError(f"cache {path} does not exist (--cache-mode read-only)")
    try:
        if not read_only and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Answers can be private: the file (and SQLite's -wal and -shm beside it,
            # which copy its mode) is the user's alone.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        uri = f"file:{quote(str(path.absolute()))}" + ("?mode=ro" if read_only else "")
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open cache {path}: {exc}") from None
    try:
        check_file(conn, path, read_only)
    except BaseException:
        conn.close()
        raise
    return conn


#: token counts stored at most (a server's usage is not trusted: SQLite's INTEGER is
#: 64-bit, and a larger number ended the writer thread).
MAX_TOKENS = 1 << 40


def _tokens(value: object) -> int:
    """A server's token count fit to store: an int in ``0..MAX_TOKENS``, else 0."""
    return value if type(value) is int and 0 <= value <= MAX_TOKENS else 0


def _sound(row: tuple[Any, ...]) -> bool:
    """Whether a stored row has the types :class:`Hit` promises (a JSON object body)."""
    status, request_id, model, prompt, completion, body = row
    return (type(status) is int and 200 <= status < 300 and isinstance(request_id, str)
            and (model is None or isinstance(model, str)) and type(prompt) is int
            and type(completion) is int and isinstance(body, bytes) and body[:1] == b"{")


class ResponseCache:
    """The cache file for one run: lookups here, stores on a writer thread.

    Args:
        path: the SQLite file (made, with its folder, if missing).
        writes: store answers (False: only look up; the file is opened read-only).
        replace: a new answer replaces a stored one (``refresh``); else the first stays.
        batch / interval: a transaction per ``batch`` answers or ``interval`` seconds.
        busy_timeout: seconds the writer waits for another process's write to end.

    Raises:
        ConfigError: see :func:`connect`.
    """

    def __init__(self, path: str | os.PathLike[str], *, writes: bool = True,
                 replace: bool = False, batch: int = BATCH, interval: float = INTERVAL,
                 busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._read = connect(self.path, read_only=not writes)
        # A lookup must never hold the event loop for long: a locked file is a miss.
        self._read.execute("PRAGMA busy_timeout = 200")
        self.writes = writes
        self._sql = _REPLACE if replace else _KEEP
        self._batch = batch
        self._busy = busy_timeout
        self._interval = interval
        self._pending: dict[bytes, Hit] = {}
        self._pending_bytes = 0
        self._queued_hits = 0  # approximate across threads: a soft bound
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._warned = False
        #: answers stored (committed), served, and dropped (the writer fell behind, or
        #: the file could not be written).
        self.stored = 0
        self.served = 0
        self.dropped = 0
        #: seconds the writer thread spent committing.
        self.write_seconds = 0.0
        if writes:
            self._thread = threading.Thread(target=self._write_loop, name="batchproc-cache",
                                            daemon=True)
            self._thread.start()

    # -- the run's side --------------------------------------------------------------

    def get(self, key: bytes) -> Hit | None:
        """The answer stored under ``key`` (or waiting to be), else None."""
        hit = self._pending.get(key)
        if hit is None:
            try:
                row = self._read.execute(_GET, (key,)).fetchone()
            except sqlite3.Error as exc:
                self._warn(f"cannot read cache {self.path} ({exc}); treated as a miss")
                return None
            if row is None or not _sound(row):
                return None  # an edited or damaged row is a miss
            hit = Hit(*row)
        self.served += 1
        # Counting hits is the first thing to give up when the writer falls behind.
        if self.writes and self._queued_hits < MAX_PENDING:
            self._queued_hits += 1
            self._queue.put(("hit", key))
        return hit

    def put(self, key: bytes, status: int, request_id: str | None, body: Any,
            model: str | None, prompt_tokens: int, completion_tokens: int) -> None:
        """Store one successful answer (``body``: the parsed JSON; serialised here)."""
        if not self.writes or not 200 <= status < 300:
            return
        data = orjson.dumps(body)
        with self._lock:
            if (len(self._pending) >= MAX_PENDING
                    or self._pending_bytes + len(data) > MAX_PENDING_BYTES):
                self.dropped += 1
                return
            hit = Hit(status, request_id or "", model, _tokens(prompt_tokens),
                      _tokens(completion_tokens), data)
            old = self._pending.get(key)
            self._pending[key] = hit
            self._pending_bytes += len(data) - (len(old.body) if old else 0)
        self._queue.put(("put", (key, hit)))

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is waiting and close the file (at most ``timeout`` s for the writer)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("cache %s: the writer did not finish within %gs; its last "
                            "answers are not stored", self.path, timeout)
            self._thread = None
        with contextlib.suppress(sqlite3.Error):
            self._read.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", message)

    # -- the writer thread -----------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            conn: sqlite3.Connection | None = connect(self.path, busy_timeout=self._busy)
        except ConfigError as exc:
            self._warn(f"{exc}; answers are not stored")
            conn = None
        done = False
        while not done:
            item = self._queue.get()
            batch = [item]
            deadline = time.monotonic() + self._interval
            while item is not None and len(batch) < self._batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                batch.append(item)
            done = None in batch
            start = time.perf_counter()
            self._commit(conn, [b for b in batch if b is not None])
            self.write_seconds += time.perf_counter() - start
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _commit(self, conn: sqlite3.Connection | None, batch: list[tuple[str, Any]]) -> None:
        puts: list[tuple[bytes, Hit]] = [value for kind, value in batch if kind == "put"]
        hits = [value for kind, value in batch if kind == "hit"]
        if not batch:
            return
        self._queued_hits -= len(hits)
        ok = False
        if conn is not None:
            now = time.time()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(self._sql, [
                        (key, h.status, h.request_id, h.model, h.prompt_tokens,
                         h.completion_tokens, now, h.body) for key, h in puts])
                    conn.executemany(_HIT, [(now, key) for key in hits])
                    conn.execute("COMMIT")
                    ok = True
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except (sqlite3.Error, OverflowError, ValueError) as exc:
                # Never the end of the writer thread: the next batch is tried again.
                self._warn(f"cannot write cache {self.path} ({exc}); some answers are "
                           "not stored")
        with self._lock:
            for key, hit in puts:
                if self._pending.get(key) is hit:
                    del self._pending[key]
                    self._pending_bytes -= len(hit.body)
        if ok:
            self.stored += len(puts)
        else:
            self.dropped += len(puts)
