"""batchproc sort: results in input order through an external sort, in bounded memory."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from processor.cli.app import app
from processor.tools.ordering import in_input_order, sort_results
from tests.conftest import chat_line, write_jsonl


def result(custom_id: str, answer: str = "a") -> dict[str, object]:
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": "r", "body": {"answer": answer}},
            "error": None}


@pytest.mark.parametrize("chunk", [1, 3, 1000], ids=["chunk1", "chunk3", "one-run"])
def test_results_come_back_in_input_order(tmp_path: Path, chunk: int) -> None:
    n = 40
    lines: list[dict[str, object] | bytes] = []
    for i in range(n):
        if i % 3 == 0:  # bare lines are named line-<N>
            lines.append({"model": "m", "messages": [{"role": "user", "content": str(i)}]})
        else:
            lines.append(chat_line(i))
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    ids = [f"line-{i + 1}" if i % 3 == 0 else f"req-{i}" for i in range(n)]
    answered = [cid for k, cid in enumerate(ids) if k != 7]  # one never answered
    random.Random(chunk).shuffle(answered)
    results = write_jsonl(tmp_path / "r.jsonl",
                          [result(c) for c in answered] + [result("stray"), result(ids[3])])
    out = tmp_path / "sorted.jsonl"
    stats = sort_results(results, job, out, chunk=chunk)
    got = [orjson.loads(line)["custom_id"] for line in out.read_bytes().splitlines()]
    assert got == [c for k, c in enumerate(ids) if k != 7] + ["stray"]
    assert (stats.written, stats.missing, stats.unmatched, stats.duplicates) == (40, 1, 1, 1)


def test_sort_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    results = write_jsonl(tmp_path / "r.jsonl", [result("req-0")])
    with pytest.raises(ValueError):
        sort_results(results, job, results)


def test_cli_sort(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(5)])
    results = write_jsonl(tmp_path / "job.results.jsonl",
                          [result(f"req-{i}") for i in (4, 2, 0, 3, 1)])
    run = CliRunner().invoke(app, ["sort", str(results), "--input", str(job)])
    assert run.exit_code == 0, run.output
    out = tmp_path / "job.results.sorted.jsonl"
    assert [orjson.loads(x)["custom_id"] for x in out.read_bytes().splitlines()] == [
        f"req-{i}" for i in range(5)]
    assert list(in_input_order(results, job)) == out.read_bytes().splitlines(keepends=True)
