"""The record format both ways (processor.store.records): every record shape the writer
produces is read back by the fast reader, without a full parse of the line."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from processor.cli.app import app
from processor.jobs import Job, line_hash
from processor.store import records
from processor.store.records import (
    dump_record,
    error_record,
    fast_read,
    parse_hash,
    read_custom_id,
    read_error,
    result_record,
)
from processor.store.resume import load_state
from processor.store.writer import ResultWriter
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import server_url  # noqa: F401 - the fixture, served from a thread

ODD_IDS = [
    "r1",
    'say "hi"',
    "back\\slash\\",
    "\\",
    '\\"',
    "caf\u00e9 \u6f22\u5b57 \U0001f600",
    "line\u2028sep\u2029",
    "tab\tnew\nline\x01\x7f",
    '","response":{"status_code":200,',
    ',"error":null}',
    "line-3",
]
# Bodies and metadata a hostile server or user could send: the reader's markers inside.
ODD_BODY = {"choices": [{"message": {"content": ',"error":null}'}}],
            "error": {"code": "x"}, "nested": [{"x": ',"error":{"code":"'}]}
ODD_METADATA = {"error": {"code": "not ours"}, "text": ',"error":null}', "n": [1, {}]}


def _job(custom_id: str, metadata: Any = None, line: int = 1) -> Job:
    raw = orjson.dumps({"custom_id": custom_id, "body": {"messages": []}, "metadata": metadata})
    return Job(custom_id=custom_id, line=line, url="/v1/chat/completions", body={},
               metadata=metadata, line_hash=line_hash(raw))


def _shapes() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(kind, what, record)`` for every shape the engine writes; kind is the file."""
    ids = records.RecordIds()
    for cid in ODD_IDS:
        yield "result", "plain", result_record(_job(cid), 200, "req_1", {"ok": 1}, ids())
        yield "result", "no request id", result_record(_job(cid), 201, None, None)
        for metadata in ({"row": 7}, "text", 0, [], ODD_METADATA):
            yield "result", f"metadata {metadata!r}", result_record(
                _job(cid, metadata), 200, "req_2", ODD_BODY, ids())
        # As the engine adds them: after the record was built, so after "error".
        for extra in ({"key": "k2"}, {"model": "m2", "fallback_from": "m1"}, {"cached": True},
                      {"shared_from": cid},
                      {"shared_from": cid, "model": "m2", "fallback_from": "m1"}):
            plain = result_record(_job(cid), 200, "req_3", ODD_BODY, ids())
            plain["batchproc"] = dict(extra)
            yield "result", f"extras {extra}", plain
            both = result_record(_job(cid, ODD_METADATA), 200, "req_4", {}, ids())
            both["batchproc"] = dict(extra)
            yield "result", f"metadata and extras {extra}", both
        history = [{"attempt": 1, "status": 429, "error": "rate_limited", "message": "slow"},
                   {"attempt": 2, "status": None, "error": {"code": "x"}}]
        yield "error", "with response", error_record(
            custom_id=cid, line=3, code="server_error", message='boom "quoted"', status=500,
            request_id="req_5", body=ODD_BODY, attempts=2, history=history,
            record_id=ids(), input_hash=line_hash(b"x"))
        yield "error", "without response", error_record(
            custom_id=cid, line=4, code="timeout", message="timed out", attempts=5,
            history=history, metadata=ODD_METADATA, record_id=ids(), input_hash=12345)
        yield "error", "with response and metadata, no hash", error_record(
            custom_id=cid, line=5, code="bad_request", message="no", status=400,
            body={"error": {"message": "x", "code": None}}, metadata={"row": 1})
        # A single-flight follower failed with its leader: marked after it was built.
        shared = error_record(
            custom_id=cid, line=8, code="server_error", message="boom", status=500,
            request_id="req_6", body=ODD_BODY, attempts=5, history=history,
            metadata=ODD_METADATA, record_id=ids(), input_hash=line_hash(b"y"))
        shared["batchproc"] = {"shared_from": cid}
        yield "error", "shared failure", shared
        yield "error", "invalid line with an id", error_record(
            custom_id=cid, line=6, code="invalid_line", message="blank line",
            input_hash=line_hash(b"{}"), record_id=ids())
    yield "error", "invalid line without an id", error_record(
        custom_id=None, line=7, code="invalid_line", message="invalid JSON",
        input_hash=line_hash(b"{"), record_id=ids())


SHAPES = list(_shapes())


def _written(tmp_path: Path) -> tuple[list[bytes], list[bytes]]:
    """Every shape written through the real writer; the raw lines of both files."""
    writer = ResultWriter(tmp_path / "r.jsonl", tmp_path / "e.jsonl", fsync_interval=1e9)
    for kind, _, record in SHAPES:
        if kind == "result":
            writer.write_result(record, line_hash(b"line"))
        else:
            writer.write_error(record)
    writer.close()
    with open(tmp_path / "r.jsonl", "rb") as r, open(tmp_path / "e.jsonl", "rb") as e:
        return list(r), list(e)


def _no_full_parse(monkeypatch: pytest.MonkeyPatch, lines: list[bytes]) -> None:
    """Make a full parse of any of ``lines`` (with or without its newline) fail the test."""
    whole = set(lines) | {line.rstrip(b"\n") for line in lines}
    real = orjson.loads

    def loads(data: Any) -> Any:
        assert data not in whole, "the reader fell back to parsing the whole line"
        return real(data)

    # The records module's own view of orjson (the test keeps the real one).
    monkeypatch.setattr(records, "orjson", SimpleNamespace(
        loads=loads, dumps=orjson.dumps, JSONDecodeError=orjson.JSONDecodeError))


def _check_fast(raw: bytes, record: dict[str, Any]) -> None:
    expected = (record["custom_id"], record["error"] is None, record["error"])
    assert fast_read(raw) == expected
    assert read_custom_id(raw) == expected[:2]
    assert read_error(raw) == (record["custom_id"], record["error"] or {})


def test_every_shape_reads_back_on_the_fast_path(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    results, errors = _written(tmp_path)
    kinds = [kind for kind, _, _ in SHAPES]
    assert len(results) == kinds.count("result") and len(errors) == kinds.count("error")
    written = iter(results), iter(errors)
    _no_full_parse(monkeypatch, results + errors)
    for kind, what, record in SHAPES:
        raw = next(written[kind == "error"])
        assert orjson.loads(raw) == record, what  # what was written is the record
        assert next(reversed(orjson.loads(raw))) == "error", what
        try:
            _check_fast(raw, record)
        except AssertionError as exc:  # pragma: no cover - the message names the shape
            raise AssertionError(f"{kind} {what} {record['custom_id']!r}: {exc}") from exc


def test_error_records_carry_what_a_rerun_needs(tmp_path: Path) -> None:
    _, errors = _written(tmp_path)
    shapes = [(what, record) for kind, what, record in SHAPES if kind == "error"]
    for raw, (what, record) in zip(errors, shapes, strict=True):
        found = fast_read(raw)
        assert found is not None, what
        error = found[2]
        assert error is not None and error["line"] == record["error"]["line"]
        assert parse_hash(error.get("input_hash")) == parse_hash(
            record["error"].get("input_hash"))


def test_written_files_resume(tmp_path: Path) -> None:
    """The same files through load_state: every answer done, every failure failed."""
    _written(tmp_path)
    state = load_state(tmp_path / "r.jsonl", tmp_path / "e.jsonl")
    for cid in ODD_IDS:
        assert cid in state.done and state.done.get(cid) == line_hash(b"line") & 0xFFFFFFFF
        assert state.failed.get(cid) is not None
    assert state.invalid_lines == 0 and not state.torn
    assert state.bad_hashes[line_hash(b"{")] == 1


def _reordered(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    keys = list(record)
    for order in itertools.permutations(keys):
        if list(order) != keys:
            yield {key: record[key] for key in order}


def test_reordering_the_writers_keys_leaves_the_fast_path(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A writer with another key order (an older version's: metadata after error; or
    any other) would fail the round trip above; the reader stays right, parsing fully."""
    picked = [(what, record) for _, what, record in SHAPES[:40]]
    moved = 0
    for what, record in picked:
        for other in _reordered(record):
            raw = orjson.dumps(other) + b"\n"
            expected = (record["custom_id"], record["error"] is None, record["error"])
            fast = fast_read(raw)
            if fast is None:
                moved += 1
                with pytest.raises(AssertionError):
                    _check_fast(raw, record)
            else:  # only orders that keep the head and "error" last
                assert fast == expected, what
                assert list(other)[:3] == ["id", "custom_id", "response"]
                assert list(other)[-1] == "error"
            # The full parse is always right.
            answered = record["error"] is None and record["custom_id"] is not None
            assert read_custom_id(raw) == (
                (record["custom_id"], answered) if record["custom_id"] is not None
                else (None, False))
    assert moved > len(picked)


def test_dump_record_moves_error_last_in_place() -> None:
    """The engine adds ``batchproc`` after the record is built: the line still ends
    with ``error``, and the caller's dict is the one reordered (no copy)."""
    record = result_record(_job("a", {"m": 1}), 200, "r", {})
    record["batchproc"] = {"key": "k"}
    line = dump_record(record)
    order = ["id", "custom_id", "response", "metadata", "batchproc", "error"]
    assert list(orjson.loads(line)) == order and list(record) == order
    assert line.endswith(b',"error":null}\n')


@pytest.mark.parametrize("raw", [
    b'{"id":"x","custom_id":"a","response":{"status_code":200,"body":{}},"error":{}}\n',
    b'{"id":"x","custom_id":"a","response":{"status_code":200,"body":{}},"error":false}',
    b'{"id":"x","custom_id":"a","response":{"status_code":200,"body":{}},"error":null,'
    b'"metadata":{"error":{"code":"x"}}}\n',
    b'{"id":"x","custom_id":"a","response":{"status_code":200,"body":{"error":{"code":"x"}}},'
    b'"error":null,"metadata":1}\n',
])
def test_other_orders_are_answers_by_the_full_parse(raw: bytes) -> None:
    """Lines another writer (or an older version) wrote: an empty or false error, and an
    error-like object nested in metadata or the body, are not taken for a failure."""
    assert fast_read(raw) is None
    assert read_custom_id(raw) == ("a", True)


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"id":"x","custom_id":"a","response":{"status_code":503,"body":{}},"error":null}\n',
     ("a", False, None)),
    (b'{"id":"x","custom_id":"a","response":null,"error":null}', ("a", False, None)),
    (b'{"id":"x","custom_id":null,"response":{"status_code":200,"body":{}},"error":null}\n',
     (None, False, None)),
])
def test_fast_path_agrees_with_the_full_parse_on_failures(
        raw: bytes, expected: tuple[Any, ...]) -> None:
    assert fast_read(raw) == expected
    obj = orjson.loads(raw)
    assert read_custom_id(raw) == (obj["custom_id"], False)


def test_cut_or_unbalanced_error_falls_back() -> None:
    good = dump_record(error_record(custom_id="a", line=1, code="x", message="m"))
    for cut in (good[:-2] + b"\n", good[:-3] + b"}\n", good.replace(b'"history":[]', b'"h":]')):
        assert fast_read(cut) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["error", "code", "status_code", "x", ""]), inner,
                      max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cid=st.text(max_size=12), metadata=json_values, body=json_values,
       extras=st.booleans(), status=st.sampled_from([200, 299, 400, 500, None]))
def test_fast_reader_matches_the_full_parse(cid: str, metadata: Any, body: Any,
                                            extras: bool, status: int | None) -> None:
    """Any id, metadata or body: the fast answer, when given, is the full parse's."""
    if status is not None and status < 300:
        record = result_record(_job(cid or "x", metadata), status, "r", body)
    else:
        record = error_record(custom_id=cid or None, line=1, code="c", message=cid,
                              status=status, body=body, metadata=metadata,
                              history=[{"attempt": 1, "status": status, "error": "e",
                                        "message": cid}])
    if extras:
        record["batchproc"] = {"key": cid}
    raw = dump_record(record)
    fast = fast_read(raw)
    assert fast is not None
    obj = orjson.loads(raw)
    assert fast == (obj["custom_id"], obj["error"] is None and obj["custom_id"] is not None,
                    obj["error"])
    assert read_custom_id(raw) == fast[:2]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cid=st.text(max_size=12), history=st.lists(json_values, max_size=4), body=json_values)
def test_fast_reader_is_never_wrong_on_hostile_history(cid: str, history: list[Any],
                                                       body: Any) -> None:
    """History entries holding error-like objects: the fast answer, when given, is the
    full parse's (it may give up and leave the line to the full parse)."""
    record = error_record(custom_id=cid or None, line=1, code="c", message=cid, status=500,
                          body=body, history=[{"error": h} for h in history])
    raw = dump_record(record)
    fast = fast_read(raw)
    assert fast is None or fast == (record["custom_id"], False, record["error"])
    assert read_custom_id(raw) == (record["custom_id"], False)


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"custom_id": "a", "error": {"code": "invalid_line", "line": 3}}\n',
     ("a", {"code": "invalid_line", "line": 3})),
    (b'{"error": "boom", "custom_id": 7}\n', (7, {})),
    (b'[1, 2]\n', (None, {})),
    (b'{"id":"x","custom_id":"a","response":null,"error":{"code":"x"', None),
])
def test_read_error_of_other_writers(raw: bytes, expected: Any) -> None:
    assert read_error(raw) == expected


def test_a_real_run_resumes_on_the_fast_path(server_url: str, tmp_path: Path,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI: metadata, two keys (``batchproc.key``), a bad line, odd ids. Every
    record ends with ``error``; the rerun reads both files without parsing a whole line
    and sends nothing."""
    lines: list[dict[str, Any] | bytes] = []
    for i, cid in enumerate(ODD_IDS[:-1]):  # line-3 is reserved for line 3
        line = chat_line(i)
        line["custom_id"] = cid
        line["metadata"] = ODD_METADATA if i % 2 else {"row": i}
        lines.append(line)
    lines.append(b'{"custom_id": "bad \\"one\\"", "body": 3}\n')
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    env = {"KEY_A": "sk-a-1111", "KEY_B": "sk-b-2222"}
    argv = ["run", str(job), "--base-url", server_url, "--plain", "--rpm", "6000",
            "--api-key-env", "KEY_A,KEY_B"]
    first = CliRunner().invoke(app, argv, env=env)
    assert first.exit_code == 1, first.output  # the bad line
    results = (tmp_path / "job.results.jsonl").read_bytes().splitlines(keepends=True)
    errors = (tmp_path / "job.errors.jsonl").read_bytes().splitlines(keepends=True)
    assert len(results) == len(ODD_IDS) - 1 and len(errors) == 1
    for raw in results:
        record = orjson.loads(raw)
        assert list(record)[-3:] == ["metadata", "batchproc", "error"]
        _check_fast(raw, record)
    _check_fast(errors[0], orjson.loads(errors[0]))
    _no_full_parse(monkeypatch, results + errors)
    second = CliRunner().invoke(app, argv, env=env)
    # The bad line was reported before and is still bad: exit 1, nothing sent again.
    assert second.exit_code == 1, second.output
    out = " ".join(second.output.split())
    assert f"{len(ODD_IDS) - 1} skipped (already done)" in out and "0 ok" in out
    assert "reported in an earlier run are still bad (lines 11)" in out
    assert (tmp_path / "job.results.jsonl").read_bytes().splitlines(keepends=True) == results
