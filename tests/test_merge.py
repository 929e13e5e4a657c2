"""``batchproc merge`` on hand-made shard files: repeats found by exact id, torn and
broken lines reported, the result winning over an error, paths that would destroy an
input refused, input order kept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

import processor.idset
from processor.cli.app import app
from processor.tools.merge import merge_files
from tests.conftest import chat_line, read_jsonl, write_jsonl


def result(cid: str) -> dict[str, Any]:
    return {"id": f"batch_req_{cid}", "custom_id": cid,
            "response": {"status_code": 200, "request_id": "r", "body": {"a": cid}},
            "error": None}


def error(cid: str | None, line: int, code: str = "server_error") -> dict[str, Any]:
    return {"id": f"batch_req_e{line}", "custom_id": cid, "response": None,
            "error": {"code": code, "message": "m", "line": line, "status": None,
                      "attempts": 1, "history": []}}


def merge(*args: str | Path) -> tuple[int, str]:
    out = CliRunner().invoke(app, ["merge", *map(str, args)])
    return out.exit_code, " ".join(re.sub("[\u2500-\u257f]", " ", out.output).split())


def ids(path: Path) -> list[str]:
    return [r["custom_id"] for r in read_jsonl(path)]


def test_an_id_answered_in_two_shards_is_reported_with_its_files(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [result(f"r{i}") for i in range(0, 50)])
    b = write_jsonl(tmp_path / "b.jsonl", [result(f"r{i}") for i in range(50, 100)]
                    + [result("r7"), result("r8"), result("r7")])
    code, out = merge(a, b, "-o", tmp_path / "m.jsonl")
    assert code == 1
    assert "3 results repeat an id answered already" in out
    assert "r7: in a.jsonl, b.jsonl" in out and "r8: in a.jsonl, b.jsonl" in out
    merged = ids(tmp_path / "m.jsonl")
    assert sorted(merged) == sorted(f"r{i}" for i in range(100))  # each once, the first kept
    assert read_jsonl(tmp_path / "m.jsonl")[7]["id"] == "batch_req_r7"


def test_a_result_wins_over_an_error_in_another_shard(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.results.jsonl", [result("x"), result("y")])
    ea = write_jsonl(tmp_path / "a.errors.jsonl", [error("z", 3), error(None, 9, "invalid_line")])
    eb = write_jsonl(tmp_path / "b.errors.jsonl", [error("x", 1), error("w", 4)])
    code, out = merge(a, "--errors", ea, "--errors", eb, "-o", tmp_path / "m.results.jsonl")
    assert code == 0, out
    assert "1 error records left out: their id has a result (the result wins), e.g. x" in out
    assert ids(tmp_path / "m.results.jsonl") == ["x", "y"]
    assert ids(tmp_path / "m.errors.jsonl") == ["z", None, "w"]  # bad lines kept


def test_an_id_failed_in_two_shards_is_a_problem(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [result("x")])
    ea = write_jsonl(tmp_path / "ea.jsonl", [error("z", 3), error("z", 3)])  # failed again
    eb = write_jsonl(tmp_path / "eb.jsonl", [error("q", 5)])
    code, out = merge(a, "--errors", ea, "--errors", eb, "-o", tmp_path / "m.jsonl")
    assert code == 0, out  # a repeat within one file is a request that failed again
    eb.write_bytes(eb.read_bytes() + orjson.dumps(error("z", 3)) + b"\n")
    code, out = merge(a, "--errors", ea, "--errors", eb, "-o", tmp_path / "m.jsonl")
    assert code == 1 and "1 ids have error records in more than one errors file" in out
    assert out.endswith(": z")


def test_torn_and_broken_lines_are_reported_not_merged(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(orjson.dumps(result("x")) + b"\n\nnot json\n[1, 2]\n"
                  + orjson.dumps(result("y")) + b"\n" + orjson.dumps(result("z"))[:-9])
    b = tmp_path / "b.jsonl"
    b.write_bytes(orjson.dumps(result("w")))  # whole, without its newline: merged
    code, out = merge(a, b, "-o", tmp_path / "m.jsonl")
    assert code == 1
    assert "3 lines are not whole JSON records and were not merged" in out
    assert "a.jsonl:3: not JSON" in out and "a.jsonl:4: not a result record" in out
    assert "a.jsonl:6: a partial last line (a run killed mid-write" in out
    assert ids(tmp_path / "m.jsonl") == ["x", "y", "w"]
    assert (tmp_path / "m.jsonl").read_bytes().endswith(b"}\n")


def test_fingerprint_matches_are_checked_by_exact_id(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A weak fingerprint: 1,000 ids meet in 7 values, so nearly every id "matches"
    # another; only the exact repeat may be reported, and nothing may be lost.
    monkeypatch.setattr(processor.idset, "fingerprint", lambda cid: len(cid) % 7 + 1)
    a = write_jsonl(tmp_path / "a.jsonl", [result(f"r{i}") for i in range(0, 500)])
    b = write_jsonl(tmp_path / "b.jsonl", [result(f"r{i}") for i in range(500, 1000)]
                    + [result("r3")])
    e = write_jsonl(tmp_path / "e.jsonl", [error(f"f{i}", i) for i in range(30)]
                    + [error("r5", 99)])
    report = merge_files([a, b], [e], tmp_path / "m.jsonl", tmp_path / "me.jsonl")
    assert report.duplicates == 1 and report.duplicate_ids == ["r3: in a.jsonl, b.jsonl"]
    assert sorted(ids(tmp_path / "m.jsonl")) == sorted(f"r{i}" for i in range(1000))
    assert report.superseded == 1 and report.superseded_ids == ["r5"]
    assert sorted(ids(tmp_path / "me.jsonl")) == sorted(f"f{i}" for i in range(30))
    assert report.failed_twice == 0


def test_input_order_for_results_and_errors(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | bytes] = []
    for i in range(30):
        lines.append(chat_line(i) if i % 3 else
                     {"model": "m", "messages": [{"role": "user", "content": str(i)}]})
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    order = [f"req-{i}" if i % 3 else f"line-{i + 1}" for i in range(30)]
    a = write_jsonl(tmp_path / "a.jsonl", [result(c) for c in reversed(order[::2])])
    b = write_jsonl(tmp_path / "b.jsonl", [result(c) for c in order[1::2] if c != "req-5"]
                    + [result("stray")])
    e = write_jsonl(tmp_path / "e.jsonl", [error(None, 17, "invalid_line"), error("req-5", 6),
                                           error("x", 2)])
    code, out = merge(a, b, "--errors", e, "--input", job, "-o", tmp_path / "m.jsonl")
    assert code == 0, out
    assert ids(tmp_path / "m.jsonl") == [c for c in order if c != "req-5"] + ["stray"]
    assert [r["error"]["line"] for r in read_jsonl(tmp_path / "m.errors.jsonl")] == [2, 6, 17]
    assert "1 input lines have no result; 1 results are for ids not in the input" in out


def test_paths_that_would_destroy_an_input_are_refused(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [result("x")])
    e = write_jsonl(tmp_path / "e.jsonl", [error("y", 1)])
    link = tmp_path / "link.jsonl"
    link.symlink_to(a)
    before = a.read_bytes(), e.read_bytes()
    for args, words in (
        ([a, "-o", a], "--output and RESULTS"),
        ([a, "-o", link], "--output and RESULTS"),
        ([a, "--errors", e, "-o", tmp_path / "m.jsonl", "--errors-output", e],
         "--errors-output and --errors"),
        ([a, "-o", tmp_path / "m.jsonl", "--errors-output", tmp_path / "m.jsonl"],
         "are the same file"),
        ([a, link, "-o", tmp_path / "m.jsonl"], "is given twice"),
        ([a, "-o", tmp_path], "is a folder"),
        ([a, "-o", tmp_path / "m.results.jsonl.ledger"], "named like the ledger"),
        ([a, "-o", tmp_path / "m.results.jsonl.shard"], "named like the marker"),
        ([tmp_path / "missing.jsonl", "-o", tmp_path / "m.jsonl"], "no such file"),
        (["-o", tmp_path / "m.jsonl"], "give the shards' results files"),
        ([a], "give --output"),
        ([a, "--job", tmp_path / "job.jsonl"], "not both"),
    ):
        code, out = merge(*args)
        assert code == 2 and words in out, (args, out)
    assert (a.read_bytes(), e.read_bytes()) == before


def test_job_finds_one_whole_split(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    code, out = merge("--job", job)
    assert code == 2 and "no shard outputs beside" in out
    write_jsonl(tmp_path / "job.shard-1-of-2.results.jsonl", [result("req-0")])
    code, out = merge("--job", job)
    assert code == 1 and "shard(s) 2 of 2 have no results file" in out
    assert ids(tmp_path / "job.merged.results.jsonl") == ["req-0"]
    write_jsonl(tmp_path / "job.shard-3-of-3.results.jsonl", [result("req-0")])
    code, out = merge("--job", job)
    assert code == 2 and "split more than one way (into 2, 3 workers)" in out
