"""The response cache's file and key (processor.store.cache, cachekey, cacheadmin)."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from processor.cli.app import app
from processor.errors import ConfigError
from processor.store.cache import ResponseCache
from processor.store.cacheadmin import cache_stats, parse_age, parse_size, prune
from processor.store.cachekey import KeyMaker, parse_ignore, repeatable

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5}
ANSWER = {"id": "chatcmpl-1", "choices": [{"message": {"content": "caf\u00e9 1.5e-7"}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 2}, "x": 1.0000000000000002}


def key(body: dict[str, object], base: str = "https://api.openai.com/v1",
        endpoint: str = "/v1/chat/completions", ignore: tuple[str, ...] = ("metadata", "user")
        ) -> bytes:
    return KeyMaker(base, ignore)(endpoint, body)


# -- the key ----------------------------------------------------------------------------


def test_key_ignores_key_order_at_every_depth() -> None:
    shuffled = {"max_tokens": 5, "messages": [{"content": "hi", "role": "user"}],
                "model": "gpt-4o-mini"}
    assert key(BODY) == key(shuffled)
    assert len(key(BODY)) == 16


@pytest.mark.parametrize(("other", "same"), [
    ({**BODY, "user": "u1"}, True),
    ({**BODY, "metadata": {"run": 2}}, True),
    ({**BODY, "temperature": 0}, False),
    ({**BODY, "max_tokens": 5.0}, False),  # numbers as written
    ({**BODY, "messages": [{"role": "user", "content": "hi "}]}, False),
    ({**BODY, "model": "gpt-4o"}, False),
], ids=["user", "metadata", "temperature", "5.0", "content", "model"])
def test_key_leaves_out_only_the_ignored_fields(other: dict[str, object], same: bool) -> None:
    assert (key(other) == key(BODY)) is same


def test_key_covers_host_and_path_but_never_credentials() -> None:
    base = key(BODY)
    assert key(BODY, "https://API.openai.com/v1") == base  # host names are case-blind
    assert key(BODY, "https://user:sk-secret@api.openai.com/v1") == base
    assert key(BODY, "https://gw.example.com/v1") != base
    assert key(BODY, "http://127.0.0.1:8001/v1") != key(BODY, "http://127.0.0.1:8002/v1")
    assert key(BODY, endpoint="/v1/completions") != base
    assert key(BODY, "https://gw.example.com/openai/v1") != key(BODY, "https://gw.example.com/v1")
    # The same request however the endpoint is spelled against the base URL.
    assert key(BODY, endpoint="/chat/completions") == base


def test_ignoring_nothing_keys_every_field() -> None:
    assert key({**BODY, "user": "a"}, ignore=()) != key({**BODY, "user": "b"}, ignore=())


@pytest.mark.parametrize(("text", "expected"), [
    ("user,metadata", ("user", "metadata")), (" user , user ", ("user",)), ("none", ()),
    ("", ()), ("NONE", ()),
])
def test_parse_ignore(text: str, expected: tuple[str, ...]) -> None:
    assert parse_ignore(text) == expected


@pytest.mark.parametrize("text", ["user,,metadata", "a b", "metadata.run", ","])
def test_parse_ignore_refuses_what_is_no_field(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ignore(text)


@pytest.mark.parametrize(("path", "body", "expected"), [
    ("/v1/embeddings", {"input": "x", "temperature": 1}, True),
    ("/v1/moderations", {"input": "x"}, True),
    ("/v1/chat/completions", {"temperature": 0}, True),
    ("/v1/chat/completions", {"temperature": 0.0, "n": 3}, True),
    ("/v1/chat/completions", {"temperature": 0.7, "seed": 1}, True),
    ("/v1/chat/completions", {}, False),  # the default temperature is 1
    ("/v1/chat/completions", {"temperature": 0.7, "n": 2}, False),
    ("/v1/chat/completions", {"temperature": False}, False),
    ("/v1/chat/completions", {"temperature": 0, "seed": None}, True),
    ("/v1/completions", {"temperature": 1, "seed": None}, False),
], ids=["embeddings", "moderations", "t0", "t0-n3", "seed", "default-t", "n2", "bool",
        "seed-null", "completions"])
def test_repeatable(path: str, body: dict[str, object], expected: bool) -> None:
    assert repeatable(path, body) is expected


# -- the file -----------------------------------------------------------------------------


def test_stored_answers_come_back_byte_for_byte_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.sqlite"
    cache = ResponseCache(path, interval=10.0)  # nothing committed on the timer
    cache.put(b"k" * 16, 200, "req_1", ANSWER, "gpt-4o-mini", 3, 2)
    hit = cache.get(b"k" * 16)  # served from memory before the commit
    assert hit is not None and hit.body == orjson.dumps(ANSWER)
    cache.close()
    assert cache.stored == 1
    again = ResponseCache(path, writes=False)
    hit = again.get(b"k" * 16)
    assert hit is not None
    assert (hit.status, hit.request_id, hit.model, hit.prompt_tokens, hit.completion_tokens) \
        == (200, "req_1", "gpt-4o-mini", 3, 2)
    assert hit.body == orjson.dumps(ANSWER) and orjson.loads(hit.body) == ANSWER
    assert again.get(b"x" * 16) is None
    again.close()
    # The user's alone: the answers may be private.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_only_successful_answers_are_stored(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        for status in (400, 404, 429, 500, 503, 302):
            cache.put(bytes([status % 256]) * 16, status, "r", {"error": "x"}, "m", 0, 0)
        cache.put(b"o" * 16, 201, "r", {"ok": 1}, "m", 0, 0)
    assert cache_stats(tmp_path / "c.sqlite").entries == 1


def test_the_first_answer_stays_unless_refreshing(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    for replace, expected in ((False, {"n": 1}), (True, {"n": 3})):
        path.unlink(missing_ok=True)
        with ResponseCache(path, replace=replace, interval=0.0, batch=1) as cache:
            cache.put(b"k" * 16, 200, "a", {"n": 1}, "m", 0, 0)
            time.sleep(0.05)
        with ResponseCache(path, replace=replace) as cache:
            cache.put(b"k" * 16, 200, "b", {"n": 3}, "m", 0, 0)
        with ResponseCache(path, writes=False) as cache:
            hit = cache.get(b"k" * 16)
            assert hit is not None and orjson.loads(hit.body) == expected


def test_hits_are_counted_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with ResponseCache(path) as cache:
        cache.put(b"k" * 16, 200, "a", {"n": 1}, "m", 0, 0)
    with ResponseCache(path) as cache:
        for _ in range(3):
            assert cache.get(b"k" * 16) is not None
    stats = cache_stats(path)
    assert stats.hits == 3 and stats.last_hit is not None


def test_a_file_that_is_not_a_cache_is_refused_and_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not a database at all, but long enough to have a header" * 10)
    before = {p: p.read_bytes() for p in (other, text)}
    for path in (other, text, tmp_path):
        with pytest.raises(ConfigError):
            ResponseCache(path)
    assert {p: p.read_bytes() for p in (other, text)} == before
    newer = tmp_path / "newer.sqlite"
    ResponseCache(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ConfigError, match="newer"):
        ResponseCache(newer)


def test_read_only_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    with pytest.raises(ConfigError, match="does not exist"):
        ResponseCache(path, writes=False)
    with ResponseCache(path) as cache:
        cache.put(b"k" * 16, 200, "a", {"n": 1}, "m", 0, 0)
    before = path.read_bytes()
    with ResponseCache(path, writes=False) as cache:
        assert cache.get(b"k" * 16) is not None
        cache.put(b"j" * 16, 200, "a", {"n": 2}, "m", 0, 0)
    assert path.read_bytes() == before and cache_stats(path).entries == 1


def test_an_unwritable_cache_costs_only_its_savings(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.sqlite"
    ResponseCache(path).close()
    # Another process holds the write lock longer than the writer waits.
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        cache = ResponseCache(path, interval=0.0, batch=1, busy_timeout=0.05)
        cache.put(b"k" * 16, 200, "a", {"n": 1}, "m", 0, 0)
        cache.close()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (cache.stored, cache.dropped) == (0, 1)
    assert "some answers are not stored" in caplog.text
    assert cache_stats(path).entries == 0
    # A lookup on a file that cannot be read is a miss, never an exception.
    broken = ResponseCache(path, writes=False)
    broken._read.close()
    assert broken.get(b"z" * 16) is None
    assert "treated as a miss" in caplog.text


# -- stats, prune, durations ---------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86_400), ("12h", 43_200), ("90m", 5400), ("45s", 45), ("2w", 1_209_600),
    ("1d12h", 129_600), ("0s", 0), ("1w2d3h4m5s", 788_645),
])
def test_parse_age(text: str, seconds: int) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["30", "", "-1d", "1.5d", "30 d", " 30d", "1d1d", "12h1d",
                                  "d", "30days", "1e3d", "99999999w", "３０d"])
def test_parse_age_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        parse_age(text)


@pytest.mark.parametrize(("text", "size"), [
    ("500M", 500 << 20), ("2G", 2 << 30), ("1024K", 1 << 20), ("10", 10), ("1MiB", 1 << 20),
    ("3MB", 3 << 20),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1M", "1.5G", "2 G", "2g", "2X", "M"])
def test_parse_size_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def _filled(path: Path, n: int, *, created: float) -> None:
    with ResponseCache(path) as cache:
        for i in range(n):
            cache.put(i.to_bytes(16, "big"), 200, "r", {"i": i, "pad": "x" * 1000}, "m", 1, 1)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE responses SET created = ? + rowid", (created,))
    conn.commit()
    conn.close()


def test_prune_older_than_and_max_size(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    now = time.time()
    _filled(path, 40, created=now)
    conn = sqlite3.connect(path)  # row N stored 40 - N days ago: rows 1-9 over 30 days
    conn.execute("UPDATE responses SET created = ? - (40 - rowid) * 86400", (now,))
    conn.commit()
    conn.close()
    done = prune(path, older_than=parse_age("30d"), now=now)
    assert done.deleted == 9 and done.left == 31
    done = prune(path, max_bytes=10 * 1100)
    assert done.left <= 10 and done.left >= 9
    assert done.bytes_after < done.bytes_before  # --max-size vacuums
    assert cache_stats(path).entries == done.left


def test_cache_commands(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    _filled(path, 5, created=time.time() - 3 * 86_400)
    runner = CliRunner()
    out = runner.invoke(app, ["cache", "stats", str(path)])
    assert out.exit_code == 0, out.output
    assert "entries:  5" in out.output and "models:   m: 5" in out.output
    as_json = runner.invoke(app, ["cache", "stats", str(path), "--json"])
    assert orjson.loads(as_json.stdout)["entries"] == 5
    out = runner.invoke(app, ["cache", "prune", str(path), "--older-than", "30d"])
    assert out.exit_code == 0 and "deleted 0 answers, 5 left" in out.output
    for bad in (["--older-than", "30"], ["--older-than", "-1d"], ["--max-size", "lots"], []):
        out = runner.invoke(app, ["cache", "prune", str(path), *bad])
        assert out.exit_code == 2, (bad, out.output)
    out = runner.invoke(app, ["cache", "prune", str(path), "--older-than", "1d"])
    assert out.exit_code == 0 and "deleted 5 answers, 0 left" in out.output
    missing = runner.invoke(app, ["cache", "stats", str(tmp_path / "nothing.sqlite")])
    assert missing.exit_code == 2 and "no cache at" in missing.output
    # BATCHPROC_CACHE names the file when no PATH is given.
    env = runner.invoke(app, ["cache", "stats"], env={"BATCHPROC_CACHE": str(path)})
    assert env.exit_code == 0 and "entries:  0" in env.output
    assert os.path.exists(path)


def _open_and_close(path: str) -> str:
    """A process's first open of a cache file: "ok" or the error it gave."""
    from processor.errors import ConfigError
    from processor.store.cache import ResponseCache as Cache

    try:
        Cache(path).close()
    except ConfigError as exc:
        return str(exc)
    return "ok"


def test_processes_opening_one_new_cache_at_once_all_succeed(tmp_path: Path) -> None:
    # Several runs started together on a new cache file: each sets it up or finds it set
    # up, never "database is locked" nor "another program's database" half way through.
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for round_ in range(8):
            path = str(tmp_path / f"new-{round_}.sqlite")
            assert pool.map(_open_and_close, [path] * 4) == ["ok"] * 4
