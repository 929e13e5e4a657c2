"""Job lines in, result and error records out (processor.jobs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.errors import JobFormatError
from processor.idset import fingerprint
from processor.jobs import (
    DEFAULT_ENDPOINT,
    BadLine,
    Job,
    count_lines,
    iter_jobs,
    iter_raw_lines,
    line_hash,
    parse_line,
)
from processor.store import writer as store_writer
from processor.store.ledger import LEDGER_ENTRY
from processor.store.records import error_record, result_record
from processor.store.writer import ResultWriter

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(b"".join(x if isinstance(x, bytes) else line(x) for x in lines))
    return path


# --------------------------------------------------------------------------- parse_line: good

GOOD = [
    (
        {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": CHAT},
        {"custom_id": "r1", "url": "/v1/chat/completions", "body": CHAT, "metadata": None,
         "model": "gpt-4o-mini"},
    ),
    (
        CHAT,
        {"custom_id": "line-7", "url": DEFAULT_ENDPOINT, "body": CHAT, "metadata": None,
         "model": "gpt-4o-mini"},
    ),
    (
        {**CHAT, "custom_id": "bare-1", "metadata": {"row": 7}},
        {"custom_id": "bare-1", "url": DEFAULT_ENDPOINT, "body": CHAT, "metadata": {"row": 7},
         "model": "gpt-4o-mini"},
    ),
    (
        {"custom_id": "r2", "url": "/v1/chat/completions",
         "body": {**CHAT, "metadata": {"api": "param"}}, "metadata": {"ours": 1}},
        {"custom_id": "r2", "url": "/v1/chat/completions",
         "body": {**CHAT, "metadata": {"api": "param"}}, "metadata": {"ours": 1},
         "model": "gpt-4o-mini"},
    ),
    (
        {"custom_id": "r3", "body": CHAT},
        {"custom_id": "r3", "url": DEFAULT_ENDPOINT, "body": CHAT, "model": "gpt-4o-mini"},
    ),
    (
        {"custom_id": "r4", "method": "post", "url": "/v1/chat/completions", "body": CHAT},
        {"custom_id": "r4", "url": "/v1/chat/completions"},
    ),
    (
        {"url": "/v1/chat/completions", "body": CHAT},
        {"custom_id": "line-7", "url": "/v1/chat/completions"},
    ),
    (
        {"custom_id": "e1", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": "hello"}},
        {"custom_id": "e1", "url": "/v1/embeddings", "model": "text-embedding-3-small"},
    ),
    (
        {"custom_id": "e2", "url": "/v1/embeddings", "body": {"input": ["a", "b"]}},
        {"custom_id": "e2", "url": "/v1/embeddings", "model": None},
    ),
    (
        {"custom_id": "c1", "url": "/v1/completions",
         "body": {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}},
        {"custom_id": "c1", "url": "/v1/completions"},
    ),
    (
        {"custom_id": "x1", "url": "/v1/responses", "body": {"model": "gpt-4o", "input": "hi"}},
        {"custom_id": "x1", "url": "/v1/responses"},
    ),
    (
        {"custom_id": "x2", "url": "/v1/responses", "body": {"model": "gpt-4o", "prompt": {}}},
        {"custom_id": "x2", "url": "/v1/responses"},
    ),
    (
        {"custom_id": "q1", "url": "/v1/chat/completions?api-version=2024-06-01", "body": CHAT},
        {"custom_id": "q1", "url": "/v1/chat/completions?api-version=2024-06-01"},
    ),
    (
        {"custom_id": "m1", "url": "/v1/moderations", "body": {"input": "anything"}},
        {"custom_id": "m1", "url": "/v1/moderations"},
    ),
    (
        {"model": 5, "messages": MESSAGES},
        {"custom_id": "line-7", "model": None},
    ),
]
GOOD_IDS = [
    "batch-shape", "bare-body", "bare-metadata-and-id-popped", "batch-body-metadata-kept",
    "batch-url-default", "method-lowercase", "batch-no-custom-id", "embeddings",
    "embeddings-list-no-model", "completions", "responses-input", "responses-prompt",
    "url-with-query", "unchecked-endpoint", "model-not-a-string",
]


@pytest.mark.parametrize(("obj", "expected"), GOOD, ids=GOOD_IDS)
def test_parse_line_good(obj: dict[str, Any], expected: dict[str, Any]) -> None:
    job = parse_line(line(obj), 7)
    assert isinstance(job, Job)
    assert job.line == 7
    for attr, value in expected.items():
        assert getattr(job, attr) == value, attr
    assert "custom_id" not in job.body
    assert job.attempts == 0
    assert job.history == []


def test_parse_line_bare_body_with_default_endpoint() -> None:
    job = parse_line(line({"input": "x", "model": "m"}), 1, default_endpoint="/v1/embeddings")
    assert job.url == "/v1/embeddings"
    assert job.body == {"input": "x", "model": "m"}


def test_parse_line_accepts_crlf_and_no_newline() -> None:
    assert parse_line(orjson.dumps(CHAT) + b"\r\n", 1).body == CHAT
    assert parse_line(orjson.dumps(CHAT), 1).body == CHAT


# --------------------------------------------------------------------------- parse_line: bad

BAD = [
    (b'{"model": "gpt-4o", "messages": [', "invalid json"),
    (b"not json at all\n", "invalid json"),
    (b"\n", "blank"),
    (b"   \t \r\n", "blank"),
    (b"[1, 2, 3]\n", "list"),
    (b'"a string"\n', "str"),
    (b"42\n", "int"),
    (line({"custom_id": "a", "url": "/v1/chat/completions"}), "body"),
    (line({"custom_id": "a", "method": "POST"}), "body"),
    (line({"custom_id": "a", "body": [CHAT]}), "body"),
    (line({"custom_id": "a", "method": "GET", "body": CHAT}), "method"),
    (line({"custom_id": "a", "method": 1, "body": CHAT}), "method"),
    (line({"custom_id": "a", "url": "v1/chat/completions", "body": CHAT}), "url"),
    (line({"custom_id": "a", "url": "https://api.openai.com/v1/chat/completions",
           "body": CHAT}), "url"),
    (line({"custom_id": "a", "url": 5, "body": CHAT}), "url"),
    (line({"custom_id": "", "body": CHAT}), "custom_id"),
    (line({"custom_id": 5, "body": CHAT}), "custom_id"),
    (line({**CHAT, "custom_id": ""}), "custom_id"),
    (line({"custom_id": "a", "body": {"model": "gpt-4o"}}), "messages"),
    (line({"model": "gpt-4o", "messages": []}), "messages"),
    (line({"model": "gpt-4o", "messages": "hi"}), "messages"),
    (line({"model": "gpt-4o", "messages": [{"content": "no role"}]}), "role"),
    (line({"model": "gpt-4o", "messages": [MESSAGES[0], "hi"]}), "messages[1]"),
    (line({"custom_id": "a", "url": "/v1/embeddings", "body": {"model": "e"}}), "input"),
    (line({"custom_id": "a", "url": "/v1/completions", "body": {"model": "i"}}), "prompt"),
    (line({"custom_id": "a", "url": "/v1/responses", "body": {"model": "g"}}), "input"),
]
BAD_IDS = [
    "truncated-json", "not-json", "blank", "whitespace", "array", "string", "number",
    "no-body", "method-only", "body-not-object", "get-method", "method-not-string",
    "url-not-a-path", "url-absolute", "url-not-string", "empty-custom-id", "int-custom-id",
    "bare-empty-custom-id", "chat-without-messages", "chat-empty-messages",
    "chat-messages-not-list", "message-without-role", "message-not-object",
    "embeddings-without-input", "completions-without-prompt", "responses-without-input",
]


@pytest.mark.parametrize(("raw", "reason"), BAD, ids=BAD_IDS)
def test_parse_line_bad(raw: bytes, reason: str) -> None:
    with pytest.raises(JobFormatError) as info:
        parse_line(raw, 12)
    assert info.value.line == 12
    assert reason.lower() in info.value.message.lower()
    assert str(info.value) == info.value.message


# --------------------------------------------------------------------------- iter_jobs


def test_iter_jobs_yields_jobs_with_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"custom_id": "a", "body": CHAT},
        CHAT,
        {"custom_id": "c", "url": "/v1/embeddings", "body": {"input": "x"}},
    ])
    items = list(iter_jobs(path))
    assert [(j.line, j.custom_id, j.url) for j in items if isinstance(j, Job)] == [
        (1, "a", DEFAULT_ENDPOINT),
        (2, "line-2", DEFAULT_ENDPOINT),
        (3, "c", "/v1/embeddings"),
    ]


def test_iter_jobs_default_endpoint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"input": "x"}])
    (job,) = iter_jobs(path, default_endpoint="/v1/embeddings")
    assert isinstance(job, Job)
    assert job.url == "/v1/embeddings"


@pytest.mark.parametrize(
    "first", [line(CHAT), line({"custom_id": "a", "body": CHAT})], ids=["bare", "batch"]
)
def test_iter_jobs_bom_on_line_one_is_fine(tmp_path: Path, first: bytes) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [b"\xef\xbb\xbf" + first, CHAT])
    items = list(iter_jobs(path))
    assert all(isinstance(j, Job) for j in items), items
    assert len(items) == 2


def test_iter_raw_lines_drops_the_bom_only_on_line_one(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    path = tmp_path / "in.jsonl"
    path.write_bytes(bom + b"one\n" + bom + b"two\nthree")
    assert list(iter_raw_lines(path)) == [(1, b"one\n"), (2, bom + b"two\n"), (3, b"three")]


def test_iter_jobs_bad_lines_carry_number_reason_and_salvaged_id(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        CHAT,
        b"{oops\n",
        {"custom_id": "no-msgs", "body": {"model": "x"}},
        b"\n",
        {"custom_id": "ok", "body": CHAT},
    ])
    items = list(iter_jobs(path))
    bad = [i for i in items if isinstance(i, BadLine)]
    assert [(b.line, b.custom_id) for b in bad] == [(2, None), (3, "no-msgs"), (4, None)]
    assert "json" in bad[0].reason.lower()
    assert "messages" in bad[1].reason
    assert "blank" in bad[2].reason
    assert [j.custom_id for j in items if isinstance(j, Job)] == ["line-1", "ok"]


def test_iter_jobs_duplicate_custom_id_is_a_bad_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"custom_id": "dup", "body": CHAT},
        {"custom_id": "other", "body": CHAT},
        {**CHAT, "custom_id": "dup"},
        {"custom_id": "dup", "body": CHAT},
    ])
    items = list(iter_jobs(path))
    assert [(type(i).__name__, i.line, i.custom_id) for i in items] == [
        ("Job", 1, "dup"),
        ("Job", 2, "other"),
        ("BadLine", 3, "dup"),
        ("BadLine", 4, "dup"),
    ]
    assert all("duplicate" in i.reason for i in items if isinstance(i, BadLine))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # An explicit line-K on line K is what the line would be called anyway: fine.
        ([CHAT, CHAT, {"custom_id": "line-3", "body": CHAT}], ["Job", "Job", "Job"]),
        # line-1 on line 3 collides with line 1's automatic id.
        ([CHAT, CHAT, {"custom_id": "line-1", "body": CHAT}], ["Job", "Job", "BadLine"]),
        # ... even if line 1 is not in the file yet: line-9 is reserved for line 9.
        ([{"custom_id": "line-9", "body": CHAT}, CHAT], ["BadLine", "Job"]),
        # Not a number after "line-": an ordinary id.
        ([{"custom_id": "line-x", "body": CHAT}, CHAT], ["Job", "Job"]),
    ],
    ids=["line-K-on-line-K", "line-1-on-line-3", "future-line", "not-numeric"],
)
def test_iter_jobs_reserved_line_ids(tmp_path: Path, lines: list[Any], expected: list[str]) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    items = list(iter_jobs(path))
    assert [type(i).__name__ for i in items] == expected
    for item in items:
        if isinstance(item, BadLine):
            assert "reserved" in item.reason
            assert item.custom_id is not None


def test_iter_jobs_skip_callback(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"custom_id": "a", "body": CHAT},
        {"custom_id": "b", "body": CHAT},
        CHAT,
        {"custom_id": "b", "body": CHAT},
    ])
    done = {"b", "line-3"}
    skipped: list[tuple[str, bytes]] = []

    def skip(cid: str, raw: bytes) -> bool:
        if cid in done:
            skipped.append((cid, raw))
            return True
        return False

    items = list(iter_jobs(path, skip=skip))
    assert [(type(i).__name__, i.custom_id) for i in items] == [
        ("Job", "a"),
        ("BadLine", "b"),  # still a duplicate of the skipped line 2
    ]
    raw = path.read_bytes().splitlines(keepends=True)
    assert skipped == [("b", raw[1]), ("line-3", raw[2])]


def test_iter_jobs_skip_by_line_name(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [CHAT, CHAT, CHAT])
    items = list(iter_jobs(path, skip=lambda cid, raw: cid == "line-2"))
    assert [i.custom_id for i in items] == ["line-1", "line-3"]


# --------------------------------------------------------------------------- count_lines


COUNT_TABLE = [
    (b"", 0, "empty"),
    (b"\n", 1, "one-newline"),
    (b"a", 1, "no-newline"),
    (b"a\n", 1, "newline"),
    (b"a\nb", 2, "two-no-trailing"),
    (b"a\nb\n", 2, "two-trailing"),
    (b"a\n\n\nb\n", 4, "blank-lines"),
    (b"x\n" * 10_000, 10_000, "many"),
    (b"x\n" * 10_000 + b"tail", 10_001, "many-plus-tail"),
]
# Tiny chunks put block boundaries everywhere, including right after a newline.
COUNT_ROWS = [
    (content, expected, chunk, f"{name}-chunk{chunk}")
    for content, expected, name in COUNT_TABLE
    for chunk in (1, 3, 1 << 20)
    if chunk == 1 << 20 or len(content) < 100
]


@pytest.mark.parametrize(
    ("content", "expected", "chunk"),
    [row[:3] for row in COUNT_ROWS],
    ids=[row[3] for row in COUNT_ROWS],
)
def test_count_lines(tmp_path: Path, content: bytes, expected: int, chunk: int) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    assert count_lines(path, chunk=chunk) == expected


def test_count_lines_matches_iter_raw_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [CHAT] * 7 + [b"partial"])
    assert count_lines(path) == len(list(iter_raw_lines(path))) == 8


# --------------------------------------------------------------------------- records


def make_job(**kw: Any) -> Job:
    defaults: dict[str, Any] = {"custom_id": "r1", "line": 3, "url": DEFAULT_ENDPOINT,
                                "body": CHAT}
    defaults.update(kw)
    return Job(**defaults)


@pytest.mark.parametrize(
    ("metadata", "request_id", "expected_request_id"),
    [(None, "req_123", "req_123"), ({"row": 7}, None, ""), ([1, 2], "", "")],
    ids=["plain", "metadata-no-request-id", "list-metadata"],
)
def test_result_record_shape(
    metadata: Any, request_id: str | None, expected_request_id: str
) -> None:
    body = {"id": "chatcmpl-1", "choices": []}
    rec = result_record(make_job(metadata=metadata), 200, request_id, body)
    expected_keys = {"id", "custom_id", "response", "error"} | (
        {"metadata"} if metadata is not None else set()
    )
    assert set(rec) == expected_keys
    assert rec["id"].startswith("batch_req_")
    assert rec["custom_id"] == "r1"
    assert rec["response"] == {"status_code": 200, "request_id": expected_request_id,
                               "body": body}
    assert rec["error"] is None
    assert rec.get("metadata") == metadata
    orjson.loads(orjson.dumps(rec))


def test_record_ids_are_unique() -> None:
    job = make_job()
    ids = {result_record(job, 200, None, {})["id"] for _ in range(500)}
    ids |= {error_record(custom_id="x", line=1, code="c", message="m")["id"]
            for _ in range(500)}
    assert len(ids) == 1_000


@pytest.mark.parametrize(
    ("kwargs", "response", "error_extra"),
    [
        (
            {"custom_id": "r1", "line": 4, "code": "bad_request", "message": "HTTP 400: nope",
             "status": 400, "request_id": "req_9", "body": {"error": {"message": "nope"}},
             "attempts": 1, "history": [{"attempt": 1, "error": "bad_request"}]},
            {"status_code": 400, "request_id": "req_9", "body": {"error": {"message": "nope"}}},
            {"status": 400, "attempts": 1, "history": [{"attempt": 1, "error": "bad_request"}]},
        ),
        (
            {"custom_id": "r2", "line": 5, "code": "connection_error", "message": "timed out",
             "attempts": 5},
            None,
            {"status": None, "attempts": 5, "history": []},
        ),
        (
            {"custom_id": None, "line": 6, "code": "invalid_line", "message": "blank line"},
            None,
            {"status": None, "attempts": 0, "history": []},
        ),
        (
            {"custom_id": "r3", "line": 7, "code": "rate_limited", "message": "HTTP 429",
             "status": 429, "request_id": None, "attempts": 3, "metadata": {"row": 1}},
            {"status_code": 429, "request_id": "", "body": None},
            {"status": 429, "attempts": 3, "history": []},
        ),
    ],
    ids=["http-error", "transport-error", "invalid-line", "with-metadata"],
)
def test_error_record_shape(
    kwargs: dict[str, Any], response: dict[str, Any] | None, error_extra: dict[str, Any]
) -> None:
    rec = error_record(**kwargs)
    assert rec["id"].startswith("batch_req_")
    assert rec["custom_id"] == kwargs["custom_id"]
    assert rec["response"] == response
    assert rec["error"] == {"code": kwargs["code"], "message": kwargs["message"],
                            "line": kwargs["line"], **error_extra}
    if "metadata" in kwargs:
        assert rec["metadata"] == kwargs["metadata"]
    else:
        assert "metadata" not in rec
    orjson.loads(orjson.dumps(rec))


# --------------------------------------------------------------------------- ResultWriter


def read_jsonl(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [orjson.loads(x) for x in data.split(b"\n")[:-1]]


def test_writer_creates_files_lazily(tmp_path: Path) -> None:
    results, errors = tmp_path / "out" / "results.jsonl", tmp_path / "out" / "errors.jsonl"
    w = ResultWriter(results, errors)
    assert not results.exists() and not errors.exists()
    w.write_result({"custom_id": "a"})
    assert results.exists() and not errors.exists()
    w.close()
    assert not errors.exists()


def test_writer_close_without_writes_creates_nothing(tmp_path: Path) -> None:
    w = ResultWriter(tmp_path / "r.jsonl", tmp_path / "e.jsonl")
    w.close()
    assert list(tmp_path.iterdir()) == []


def test_writer_appends_one_valid_json_line_per_record(tmp_path: Path) -> None:
    results, errors = tmp_path / "r.jsonl", tmp_path / "e.jsonl"
    results.write_bytes(line({"custom_id": "earlier"}))
    w = ResultWriter(results, errors)
    recs: list[dict[str, Any]] = [
        {"custom_id": "a", "text": "multi\nline\r\nvalue"},
        {"custom_id": "b", "nested": {"list": [1, 2, {"x": None}]}},
        {"custom_id": "c", "unicode": "日本語 \u2028 🙂"},
    ]
    for r in recs:
        w.write_result(r)
    w.write_error({"custom_id": "z", "error": {"code": "x"}})
    # Unbuffered: each record is on disk as soon as it is written.
    assert results.read_bytes().count(b"\n") == 4
    w.close()
    assert read_jsonl(results) == [{"custom_id": "earlier"}, *recs]
    assert read_jsonl(errors) == [{"custom_id": "z", "error": {"code": "x"}}]


def test_writer_writes_each_record_with_one_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    class CountingOs:
        """``os`` as the writer sees it, noting each write (one ``os.write`` per record)."""

        def write(self, fd: int, data: bytes) -> int:
            calls.append(bytes(data))
            return os.write(fd, data)

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

    monkeypatch.setattr(store_writer, "os", CountingOs())
    w = ResultWriter(tmp_path / "r.jsonl", tmp_path / "e.jsonl")
    w.write_result({"custom_id": "big", "body": {"x": "y" * 100_000}})
    w.write_error({"custom_id": "e", "error": {"message": "a\nb"}})
    w.close()
    assert len(calls) == 2
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in calls)


def test_writer_close_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    w = ResultWriter(tmp_path / "r.jsonl", tmp_path / "e.jsonl", fsync_interval=3600)
    w.write_result({"custom_id": "a"})
    w.write_error({"custom_id": "b"})
    w.maybe_sync()  # the interval has not passed
    assert synced == []
    w.close()
    assert len(synced) == 2


def test_writer_close_after_sync_does_not_fsync_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    w = ResultWriter(tmp_path / "r.jsonl", tmp_path / "e.jsonl")
    w.write_result({"custom_id": "a"})
    w.sync()
    assert len(synced) == 1
    w.close()
    assert len(synced) == 1


def test_writer_maybe_sync_after_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    w = ResultWriter(tmp_path / "r.jsonl", tmp_path / "e.jsonl", fsync_interval=0.0)
    w.maybe_sync()  # nothing written: nothing to sync
    assert synced == []
    w.write_result({"custom_id": "a"})
    w.maybe_sync()
    assert len(synced) == 1
    w.maybe_sync()  # clean again
    assert len(synced) == 1
    w.close()


def test_writer_reopens_after_close(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    w = ResultWriter(results, tmp_path / "e.jsonl")
    w.write_result({"n": 1})
    w.close()
    w.write_result({"n": 2})
    w.close()
    assert read_jsonl(results) == [{"n": 1}, {"n": 2}]


def test_writer_ledger_only_with_payload(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    w = ResultWriter(results, tmp_path / "e.jsonl")
    w.write_result({"custom_id": "a"})
    w.close()
    assert not w.ledger_path.exists()
    assert w.ledger_path == tmp_path / "r.jsonl.ledger"


def test_writer_ledger_records_id_fingerprint_and_line_hash(tmp_path: Path) -> None:
    w = ResultWriter(tmp_path / "r.jsonl", tmp_path / "e.jsonl")
    w.write_result({"custom_id": "a"}, line_hash(b'{"x":1}'))
    w.write_result({"custom_id": "b"})
    w.write_result({"custom_id": "c"}, line_hash(b'{"x":2}'))
    w.close()
    entries = list(LEDGER_ENTRY.iter_unpack(w.ledger_path.read_bytes()))
    assert entries == [
        (fingerprint("a"), line_hash(b'{"x":1}')),
        (fingerprint("c"), line_hash(b'{"x":2}')),
    ]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [(b"{}", b"{}", True), (b'{"x":1}', b'{"x":2}', False), (b"", b" ", False),
     (b'{"x":1}\n', b'{"x":1}', True), (b'{"x":1}\r\n', b'{"x":1}', True),
     (b'\xef\xbb\xbf{"x":1}', b'{"x":1}', True)],
    ids=["equal", "different", "empty-vs-space", "newline", "crlf", "bom"],
)
def test_line_hash(a: bytes, b: bytes, same: bool) -> None:
    assert (line_hash(a) == line_hash(b)) is same
    assert 0 < line_hash(a) < 2**64


def test_parsed_job_carries_its_line_hash() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}\n'
    assert parse_line(raw, 1).line_hash == line_hash(raw)


def test_iter_jobs_skip_line_leaves_lines_out_unread(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "j.jsonl", [CHAT, b"not json\n", CHAT])
    asked: list[int] = []

    def skip_line(number: int) -> bool:
        asked.append(number)
        return number == 2

    items = list(iter_jobs(path, skip_line=skip_line))
    assert asked == [1, 2, 3]
    assert [(type(i).__name__, i.line) for i in items] == [("Job", 1), ("Job", 3)]


def test_bad_lines_and_error_records_carry_the_line_hash(tmp_path: Path) -> None:
    raw = b'{"custom_id": "a", "body": 3}\n'
    (bad,) = iter_jobs(write_jsonl(tmp_path / "j.jsonl", [raw]))
    assert isinstance(bad, BadLine) and bad.line_hash == line_hash(raw)
    rec = error_record(custom_id="a", line=1, code="invalid_line", message="m",
                       input_hash=bad.line_hash)
    assert rec["error"]["input_hash"] == f"{line_hash(raw):016x}"
    assert "input_hash" not in error_record(custom_id="a", line=1, code="c", message="m")["error"]
