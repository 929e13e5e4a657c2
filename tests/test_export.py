"""export: one row per request, CSV or JSONL, in file or input order."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from processor.cli.commands import register
from processor.jobs import Job
from processor.store.records import error_record, result_record
from processor.tools import ordering
from processor.tools.export import COLUMNS, error_row, iter_rows, result_row
from tests.conftest import chat_line, write_jsonl

CHAT = "/v1/chat/completions"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def chat_body(text: Any, *, finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"object": "chat.completion", "model": "gpt-4o-mini", "usage": usage(10, 5),
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": text, **message}}]}


def result(custom_id: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    job = Job(custom_id=custom_id, line=0, url=CHAT, body={})
    return result_record(job, status, "req_1", body)


def failure(custom_id: str | None, line: int, message: str = "Bad request",
            code: str = "bad_request", status: int | None = 400) -> dict[str, Any]:
    return error_record(custom_id=custom_id, line=line, code=code, message=message,
                        status=status)


def cli(args: list[str]) -> Any:
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, args)


def read_csv(data: bytes) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[0] == list(COLUMNS)
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows[1:]]


# --------------------------------------------------------------------------- row shapes

ANSWERS = [
    ("chat", chat_body("Paris."), ("Paris.", "stop", 10, 5, 15)),
    ("chat, content parts", chat_body([{"type": "text", "text": "a"}, {"type": "text",
                                                                       "text": "b"}]),
     ("ab", "stop", 10, 5, 15)),
    ("chat, refusal", chat_body(None, refusal="I can't help."), ("I can't help.", "stop",
                                                                  10, 5, 15)),
    ("chat, tool call", chat_body(None, finish="tool_calls", tool_calls=[{"id": "t"}]),
     ('[{"id":"t"}]', "tool_calls", 10, 5, 15)),
    ("completions", {"object": "text_completion", "model": "m", "usage": usage(3, 4),
                     "choices": [{"text": "once upon", "finish_reason": "length"}]},
     ("once upon", "length", 3, 4, 7)),
    ("responses", {"object": "response", "model": "m", "status": "completed",
                   "usage": {"input_tokens": 8, "output_tokens": 2, "total_tokens": 10},
                   "output": [{"type": "reasoning", "summary": []},
                              {"type": "message", "content": [
                                  {"type": "output_text", "text": "Hel"},
                                  {"type": "output_text", "text": "lo"}]}]},
     ("Hello", "completed", 8, 2, 10)),
    ("responses, incomplete", {"object": "response", "status": "incomplete",
                               "incomplete_details": {"reason": "max_output_tokens"},
                               "output": []}, ("", "max_output_tokens", None, None, None)),
    ("embeddings", {"object": "list", "model": "e", "usage": {"prompt_tokens": 4,
                                                              "total_tokens": 4},
                    "data": [{"embedding": [0.1] * 8}]}, ("embedding[8]", "", 4, None, 4)),
    ("embeddings, base64 x2", {"object": "list", "data": [
        {"embedding": "AAAAAAAAAAAAAAAA"}, {"embedding": "AAAAAAAAAAAAAAAA"}]},
     ("2 x embedding[3]", "", None, None, None)),
]


@pytest.mark.parametrize(("body", "expected"), [a[1:] for a in ANSWERS],
                         ids=[a[0] for a in ANSWERS])
def test_answer_per_endpoint(body: dict[str, Any], expected: tuple[Any, ...]) -> None:
    row = result_row(result("r", body))
    assert row[0] == "r" and row[2] == "ok" and row[8] == ""
    assert (row[3], row[4], row[5], row[6], row[7]) == expected


def test_non_2xx_result_row_shows_its_status_code() -> None:
    body = {"error": {"message": "Invalid image.", "type": "invalid_request_error"}}
    row = result_row(result("r", body, status=400))
    assert (row[2], row[3], row[8]) == ("400", "", "Invalid image.")


def test_error_rows() -> None:
    row = error_row(failure("r9", 9, "gave up after 5 attempts: 500", "server_error", 500))
    assert row[0] == "r9" and row[2] == "failed"
    assert row[8] == "server_error: gave up after 5 attempts: 500"
    bad = error_row(failure(None, 4, "invalid JSON", "invalid_line", None))
    assert bad[0] == "line-4" and bad[8] == "invalid_line: invalid JSON"


# --------------------------------------------------------------------------- CSV round trip

NASTY = ["plain", "comma, inside", 'a "quoted" word', "two\nlines", "crlf\r\nend",
         "  spaces  ", "naïve café ☕ 日本", "=1+1", ""]


def test_csv_round_trip(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl",
                          [result(f"id,{i}", chat_body(text)) for i, text in enumerate(NASTY)])
    errors = write_jsonl(tmp_path / "e.jsonl", [failure('odd "id"', 99, 'msg, with\n"all"')])
    out = tmp_path / "table.csv"
    res = cli(["export", str(results), "--to", "csv", "--errors", str(errors),
               "--output", str(out)])
    assert res.exit_code == 0, res.stderr
    rows = read_csv(out.read_bytes())
    assert [r["answer"] for r in rows] == NASTY + [""]
    assert [r["custom_id"] for r in rows] == [f"id,{i}" for i in range(len(NASTY))] + ['odd "id"']
    assert rows[-1]["status"] == "failed"
    assert rows[-1]["error"] == 'bad_request: msg, with\n"all"'
    assert rows[0]["prompt_tokens"] == "10" and rows[0]["total_tokens"] == "15"
    assert f"{len(NASTY) + 1} rows to {out} (1 failed, {len(NASTY)} ok)" in res.stderr


def test_jsonl_to_stdout_in_file_order(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl", [result("b", chat_body("B")),
                                                 result("a", chat_body("A"))])
    errors = write_jsonl(tmp_path / "e.jsonl", [failure("c", 3)])
    res = cli(["export", str(results), "--to", "jsonl", "--errors", str(errors)])
    assert res.exit_code == 0, res.stderr
    rows = [orjson.loads(x) for x in res.stdout_bytes.splitlines()]
    assert [(r["custom_id"], r["status"]) for r in rows] == [("b", "ok"), ("a", "ok"),
                                                              ("c", "failed")]
    assert list(rows[0]) == list(COLUMNS)
    assert rows[0]["prompt_tokens"] == 10 and rows[2]["prompt_tokens"] is None


def test_errors_file_beside_the_results_is_found(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "job.results.jsonl", [result("a", chat_body("A"))])
    write_jsonl(tmp_path / "job.errors.jsonl", [failure("b", 2)])
    res = cli(["export", str(results), "--to", "jsonl"])
    assert [orjson.loads(x)["custom_id"] for x in res.stdout_bytes.splitlines()] == ["a", "b"]
    assert "errors from" in res.stderr


# --------------------------------------------------------------------------- input order


def test_input_order_with_errors_missing_and_strangers(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [
        chat_line(1), chat_line(2),
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "bare"}]},  # line-3
        b"{broken\n",                                                           # line-4
        chat_line(5), chat_line(6),
        b"\n",                                                                  # blank, 7
        chat_line(8, model="gpt-4.1"),
    ])
    results = write_jsonl(tmp_path / "r.jsonl", [
        result("req-6", chat_body("six")), result("stranger", chat_body("?")),
        result("line-3", chat_body("three")), result("req-1", chat_body("one")),
        result("req-2", chat_body("two")),
    ])
    errors = write_jsonl(tmp_path / "e.jsonl", [
        failure(None, 4, "invalid JSON", "invalid_line", None),
        failure("req-2", 2, "an old failure"),  # the ok result wins
        failure("req-5", 5, "Invalid image."),
    ])
    res = cli(["export", str(results), "--errors", str(errors), "--input", str(job),
               "--to", "jsonl", "--chunk-size", "2"])
    assert res.exit_code == 0, res.stderr
    rows = [orjson.loads(x) for x in res.stdout_bytes.splitlines()]
    assert [(r["custom_id"], r["status"], r["answer"]) for r in rows] == [
        ("req-1", "ok", "one"), ("req-2", "ok", "two"), ("line-3", "ok", "three"),
        ("line-4", "failed", ""), ("req-5", "failed", ""), ("req-6", "ok", "six"),
        ("req-8", "missing", ""), ("stranger", "ok", "?"),
    ]
    assert rows[4]["model"] == "gpt-4o-mini"  # filled in from the input line
    assert rows[6]["model"] == "gpt-4.1"
    assert "8 rows (2 failed, 1 missing, 5 ok)" in res.stderr


@pytest.mark.parametrize(("chunk_size", "max_open"), [(10_000, 256), (100, 256), (7, 3)],
                         ids=["in memory", "spilled runs", "runs merged in groups"])
def test_shuffled_results_come_back_in_input_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_size: int, max_open: int) -> None:
    monkeypatch.setattr(ordering, "_MAX_OPEN_RUNS", max_open)  # the shared external sort
    n = 1000
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    done = [i for i in range(n) if i % 10]  # every tenth request has no outcome
    random.Random(7).shuffle(done)
    results = write_jsonl(tmp_path / "r.jsonl", [result(f"req-{i}", chat_body(f"answer {i}"))
                                                 for i in done])
    rows = list(iter_rows(results, input_path=job, chunk_size=chunk_size))
    assert [r[0] for r in rows] == [f"req-{i}" for i in range(n)]
    assert [r[2] for r in rows] == ["ok" if i % 10 else "missing" for i in range(n)]
    assert all(r[3] == f"answer {i}" for i, r in enumerate(rows) if i % 10)


def test_spill_files_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(50)])
    results = write_jsonl(tmp_path / "r.jsonl", [result(f"req-{i}", chat_body("x"))
                                                 for i in reversed(range(50))])
    assert len(list(iter_rows(results, input_path=job, chunk_size=5))) == 50
    assert list((tmp_path / "tmp").iterdir()) == []


def test_unreadable_lines_are_skipped_with_a_warning(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl", [result("a", chat_body("A")), b'{"torn":\n'])
    res = cli(["export", str(results), "--to", "csv"])
    assert res.exit_code == 0
    assert [r["custom_id"] for r in read_csv(res.stdout_bytes)] == ["a"]
    assert "skipped 1 lines" in res.stderr


def test_missing_files_are_usage_errors(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl", [result("a", chat_body("A"))])
    for args in (["/nonexistent.jsonl"], [str(results), "--input", "/nonexistent.jsonl"],
                 [str(results), "--errors", "/nonexistent.jsonl"]):
        assert cli(["export", *args]).exit_code == 2


def test_output_may_not_overwrite_an_input(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl", [result("a", chat_body("A"))])
    res = cli(["export", str(results), "--output", str(results)])
    assert res.exit_code == 2 and "being read" in " ".join(res.output.replace("│", " ").split())
    assert len(results.read_bytes().splitlines()) == 1  # untouched


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl", [result("a", chat_body("A"))])
    res = cli(["export", str(results), "--output", str(tmp_path / "no" / "such" / "t.csv")])
    assert res.exit_code == 2 and "cannot write" in res.stderr
