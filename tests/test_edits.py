"""Edited inputs between runs, through the real CLI: fixed bad lines, moved lines, changed
requests, unsendable lines (processor.store.edits, runner's resume filter)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.idset import IdSet
from processor.jobs import line_hash
from processor.store.edits import explicit_id, find_changes, supersede
from processor.store.resume import load_state
from processor.store.writer import ResultWriter
from tests.conftest import Turnstile, chat_line, read_jsonl, start_cli, until, write_jsonl
from tests.test_cli import invoke, server_url  # noqa: F401 - the fixture

BLANK = b"\n"


def bare(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}],
            "max_tokens": 8}


def run(job: Path, url: str, *extra: str) -> tuple[int, str]:
    return invoke("run", str(job), "--base-url", url, "--rpm", "6000", "--plain", *extra)


def answers(job: Path) -> dict[str, list[str]]:
    """custom_id -> the answers' texts (the mock echoes the question)."""
    out: dict[str, list[str]] = {}
    for rec in read_jsonl(job.with_name(job.name.replace(".jsonl", ".results.jsonl"))):
        text = rec["response"]["body"]["choices"][0]["message"]["content"]
        out.setdefault(rec["custom_id"], []).append(text.removeprefix("Mock answer to: "))
    return out


def errors(job: Path) -> list[dict[str, Any]]:
    return read_jsonl(job.with_name(job.name.replace(".jsonl", ".errors.jsonl")))


# --------------------------------------------------------------------------- bad lines


def test_a_fixed_bad_line_is_sent_on_the_rerun(server_url: str, tmp_path: Path) -> None:  # noqa: F811
    lines: list[Any] = [chat_line(i) for i in range(5)]
    lines[2] = b'{"custom_id": "req-2", "body": oops}\n'
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    code, out = run(job, server_url)
    assert code == 1, out
    (err,) = errors(job)
    assert err["error"]["code"] == "invalid_line" and err["error"]["line"] == 3
    assert err["error"]["input_hash"] == f"{line_hash(lines[2]):016x}"
    lines[2] = chat_line(2)
    write_jsonl(job, lines)
    code, out = run(job, server_url)
    assert code == 0, out
    assert sorted(answers(job)) == [f"req-{i}" for i in range(5)]
    assert ("1 line(s) reported bad before are no longer in the input (fixed or removed); "
            "1 request(s) now valid were sent from lines reported bad before (lines 3)") in out
    # Nothing more on a third run.
    code, out = run(job, server_url)
    assert code == 0 and "0 ok" in out, out


def test_deleting_a_bad_line_sends_the_line_that_moved_up(server_url: str,  # noqa: F811
                                                          tmp_path: Path) -> None:
    lines: list[Any] = [chat_line(0), b"not json\n", chat_line(2), chat_line(3)]
    job = write_jsonl(tmp_path / "job.jsonl", lines[:2])  # req-2, req-3 not there yet
    assert run(job, server_url)[0] == 1
    write_jsonl(job, [lines[0], lines[2], lines[3]])  # the bad line is gone; req-2 on line 2
    code, out = run(job, server_url)
    assert code == 0, out
    assert sorted(answers(job)) == ["req-0", "req-2", "req-3"]


def test_identical_bad_lines_are_reported_once_each(server_url: str,  # noqa: F811
                                                    tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0), BLANK, chat_line(1), BLANK])
    assert run(job, server_url)[0] == 1
    assert [e["error"]["line"] for e in errors(job)] == [2, 4]
    # A third blank line appears: only it is new.
    write_jsonl(job, [chat_line(0), BLANK, chat_line(1), BLANK, BLANK])
    code, out = run(job, server_url)
    assert code == 1 and "1 bad lines" in out, out
    assert [e["error"]["line"] for e in errors(job)] == [2, 4, 5]
    # Still bad on the rerun: not every request answered, so not 0.
    assert run(job, server_url)[0] == 1


def test_old_records_without_a_hash_match_bad_lines_by_number_only(
    server_url: str, tmp_path: Path  # noqa: F811
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0), BLANK, chat_line(2)])
    old = {"id": "batch_req_1", "custom_id": None, "response": None,
           "error": {"code": "invalid_line", "message": "blank line", "line": 2}}
    old3 = dict(old, error=dict(old["error"], line=3))  # line 3 is valid now
    (tmp_path / "job.errors.jsonl").write_bytes(orjson.dumps(old) + b"\n" + orjson.dumps(old3)
                                                + b"\n")
    code, out = run(job, server_url)
    assert code == 1 and "are still bad (lines 2)" in " ".join(out.split()), out
    assert sorted(answers(job)) == ["req-0", "req-2"]  # req-2 on line 3 is sent
    assert len(errors(job)) == 2  # the blank line 2 was not reported again


# --------------------------------------------------------------------------- unsendable input


@pytest.mark.parametrize(
    "line",
    [
        # orjson reads 1024 levels but writes at most 254.
        b'{"custom_id": "deep", "body": {"model": "m", "messages": [{"role": "user", '
        b'"content": "x"}], "extra": ' + b"[" * 300 + b"]" * 300 + b"}}\n",
        b'{"custom_id": "deep-meta", "metadata": ' + b"[" * 300 + b"]" * 300
        + b', "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}\n',
        b'{"custom_id": "huge-int", "body": {"model": "m", "messages": [{"role": "user", '
        b'"content": "x"}], "max_tokens": 123456789012345678901234567890}}\n',
        b'{"custom_id": "url", "url": "/v1/chat/completions\\r\\nX-Evil: 1", "body": '
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}}\n',
    ],
    ids=["body-nested-300", "metadata-nested-300", "int-beyond-64-bits", "url-with-crlf"],
)
def test_a_line_that_parses_but_cannot_be_sent_is_one_error_record(
    server_url: str, tmp_path: Path, line: bytes  # noqa: F811
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0), line, chat_line(2)])
    code, out = run(job, server_url)
    assert "Traceback" not in out
    assert sorted(answers(job)) in (["req-0", "req-2"], ["huge-int", "req-0", "req-2"]), out
    errs = errors(job)
    if "huge-int" in answers(job):
        assert code == 0 and errs == [], out  # read as a float: sent as one
    else:
        assert code == 1, out
        (err,) = errs
        assert err["error"]["code"] == "invalid_line" and err["error"]["line"] == 2
        # The rerun does not report it again.
        code, out = run(job, server_url)
        assert code == 1 and len(errors(job)) == 1 and "still bad" in out, out


# --------------------------------------------------------------------------- bare jobs


def test_inserting_a_line_in_a_bare_job_refuses_then_resend_changed(
    server_url: str, tmp_path: Path  # noqa: F811
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [bare(f"q{i}") for i in range(6)])
    assert run(job, server_url)[0] == 0
    write_jsonl(job, [bare("new")] + [bare(f"q{i}") for i in range(6)])
    code, out = run(job, server_url)
    assert code == 2, out
    assert "6 line(s) without a custom_id differ" in out and "lines 1, 2, 3, 4, 5, ..." in out
    assert "--resend-changed" in out and "--fresh" in out
    assert len(answers(job)) == 6  # nothing was sent or moved
    code, out = run(job, server_url, "--resend-changed")
    assert code == 0, out
    assert "reported bad" not in out  # no bad line was fixed: lines only moved
    got = answers(job)
    assert got == {f"line-{n}": [text] for n, text in
                   enumerate(["new"] + [f"q{i}" for i in range(6)], 1)}
    sides = {p.name.split(".superseded-")[0] for p in tmp_path.glob("*.superseded-*")}
    assert sides == {"job.results.jsonl", "job.results.jsonl.ledger"}
    side = next(tmp_path.glob("job.results.jsonl.superseded-*"))
    assert len(side.read_bytes().splitlines()) == 6  # the old answers, kept
    assert "6 changed line(s) are sent again" in out
    assert run(job, server_url)[0] == 0  # and it is stable


def test_appending_to_a_bare_job_needs_no_flag(server_url: str, tmp_path: Path) -> None:  # noqa: F811
    job = write_jsonl(tmp_path / "job.jsonl", [bare(f"q{i}") for i in range(3)])
    assert run(job, server_url)[0] == 0
    write_jsonl(job, [bare(f"q{i}") for i in range(5)])
    code, out = run(job, server_url)
    assert code == 0 and "3 skipped" in out, out
    assert len(answers(job)) == 5


def test_breaking_an_answered_bare_line_refuses(server_url: str, tmp_path: Path) -> None:  # noqa: F811
    job = write_jsonl(tmp_path / "job.jsonl", [bare(f"q{i}") for i in range(3)])
    assert run(job, server_url)[0] == 0
    write_jsonl(job, [bare("q0"), b"{broken\n", bare("q2")])
    code, out = run(job, server_url)
    assert code == 2 and "(lines 2)" in out, out
    code, out = run(job, server_url, "--resend-changed")
    assert code == 1, out  # the broken line is reported
    assert sorted(answers(job)) == ["line-1", "line-3"]
    assert [e["error"]["line"] for e in errors(job)] == [2]


# --------------------------------------------------------------------------- explicit ids


def test_a_changed_request_with_an_id_keeps_its_answer_unless_asked(
    server_url: str, tmp_path: Path  # noqa: F811
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    assert run(job, server_url)[0] == 0
    write_jsonl(job, [chat_line(0), chat_line(1, text="edited"), chat_line(2)])
    code, out = run(job, server_url)
    assert code == 0 and "input changed: 1 line(s)" in out, out
    assert answers(job)["req-1"] == ["Question number 1?"]
    code, out = run(job, server_url, "--resend-changed")
    assert code == 0, out
    assert answers(job) == {"req-0": ["Question number 0?"], "req-1": ["edited"],
                            "req-2": ["Question number 2?"]}
    side = next(tmp_path.glob("job.results.jsonl.superseded-*"))
    assert [orjson.loads(x)["custom_id"] for x in side.read_bytes().splitlines()] == ["req-1"]


def test_a_failed_request_that_changed_is_sent_again(server_url: str, tmp_path: Path) -> None:  # noqa: F811
    # 2,000 tokens against a 1,000 TPM limit: failed for good, unsent.
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0), chat_line(1, max_tokens=2000)])
    code, out = run(job, server_url, "--tpm", "1000")
    assert code == 1 and errors(job)[0]["error"]["code"] == "request_too_large", out
    code, out = run(job, server_url, "--tpm", "1000")
    assert code == 1 and "not sent again" in out, out  # unchanged: skipped as before
    write_jsonl(job, [chat_line(0), chat_line(1, max_tokens=20)])
    code, out = run(job, server_url, "--tpm", "1000")
    assert code == 0, out
    assert "1 request(s) that failed for good before have changed" in out
    assert sorted(answers(job)) == ["req-0", "req-1"]


def test_without_a_ledger_the_summary_says_edits_cannot_be_seen(
    server_url: str, tmp_path: Path  # noqa: F811
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [bare("q0"), bare("q1")])
    assert run(job, server_url)[0] == 0
    (tmp_path / "job.results.jsonl.ledger").unlink()
    write_jsonl(job, [bare("x"), bare("q1")])
    code, out = run(job, server_url)
    assert code == 0 and "cannot be detected" in out, out


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"custom_id": "a", "body": {}}\n', "a"),
        (b'{"body": {}, "custom_id": "b"}\n', "b"),
        (b'{"custom_id": "a", "custom_id": "c"}\n', "c"),  # the last one wins, as in parsing
        (b'{"model": "m", "metadata": {"custom_id": "x"}}\n', None),
        (b'{"custom_id": 5}\n', None),
        (b'{"custom_id": ""}\n', None),
        (b'{"custom_id": "a", oops\n', "a"),  # a broken line still says whose it is
        (b'{"custom_id": "\\u00e9t\\u00e9"}\n', "\u00e9t\u00e9"),
    ],
)
def test_explicit_id(raw: bytes, expected: str | None) -> None:
    assert explicit_id(raw) == expected


def test_find_changes_and_supersede(tmp_path: Path) -> None:
    src = tmp_path / "job.jsonl"
    results, errs = tmp_path / "r.jsonl", tmp_path / "e.jsonl"
    old = [orjson.dumps(bare(f"q{i}")) + b"\n" for i in range(4)]
    w = ResultWriter(results, errs)
    for n, raw in enumerate(old, 1):
        w.write_result({"id": f"batch_req_{n}", "custom_id": f"line-{n}", "response": {}},
                       line_hash(raw))
    w.close()
    src.write_bytes(old[0] + orjson.dumps(bare("edited")) + b"\n" + old[2] + b"\xef\n"
                    + b'{"custom_id": "z", "body": {}}\n')
    state = load_state(results, errs)
    changes = find_changes(src, state, explicit=False)
    assert (changes.positional, changes.lines) == (2, [2, 4])
    assert "line-2" in changes.ids and "line-1" not in changes.ids
    moved = supersede(results, errs, changes.ids)
    assert [(side.name.split(".superseded")[0], n) for side, n in moved] == [
        ("r.jsonl", 2), ("r.jsonl.ledger", 2)]
    state = load_state(results, errs)
    assert "line-1" in state.done and "line-2" not in state.done
    assert find_changes(src, state, explicit=True).total == 0
    assert "line-3" in state.done and "line-4" not in state.done


def test_supersede_moves_nothing_and_leaves_no_files_when_nothing_matches(
    tmp_path: Path,
) -> None:
    results, errs = tmp_path / "r.jsonl", tmp_path / "e.jsonl"
    results.write_bytes(b'{"id":"batch_req_1","custom_id":"a"}\n')
    assert supersede(results, errs, IdSet()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


# --------------------------------------------------------------------------- kill -9, then edit


@pytest.mark.slow
async def test_sigkill_then_edit_the_last_answers_is_noticed(
        mock_api: Any, tmp_path: Path, turnstile: Turnstile) -> None:
    """The lines answered just before a kill -9 are the ones whose bookkeeping could lag."""
    # 60 answers at most: the kill comes before the end
    api = await mock_api(latency_ms=5, middlewares=[turnstile.middleware])
    n = 400
    job = write_jsonl(tmp_path / "job.jsonl", [bare(f"q{i}") for i in range(n)])
    results = tmp_path / "job.results.jsonl"
    turnstile.allow(60)
    proc = await start_cli(job, api.base_url)
    await until(lambda: results.exists() and results.read_bytes().count(b"\n") >= 40,
                "40 answers written", alive=proc)
    proc.send_signal(signal.SIGKILL)
    await proc.communicate()
    whole = results.read_bytes()
    whole = whole[: whole.rfind(b"\n") + 1]
    answered = [int(orjson.loads(x)["custom_id"].removeprefix("line-"))
                for x in whole.splitlines()]
    assert 0 < len(answered) < n
    edited = sorted(answered)[-3:]  # the last answered lines
    texts = [f"q{i}" if i + 1 not in edited else f"edited {i}" for i in range(n)]
    write_jsonl(job, [bare(t) for t in texts])
    turnstile.open()
    proc = await start_cli(job, api.base_url)
    _, err = await proc.communicate()
    assert proc.returncode == 2, err.decode()
    assert f"{len(edited)} line(s) without a custom_id differ" in err.decode()
    proc = await start_cli(job, api.base_url, "--resend-changed")
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    got = answers(job)
    assert got == {f"line-{i + 1}": [t] for i, t in enumerate(texts)}


def test_a_line_bad_only_where_it_was_is_sent_once_valid(server_url: str,  # noqa: F811
                                                         tmp_path: Path) -> None:
    # Reported as a repeated custom_id; its first line is gone (never answered), so the
    # same bytes are a valid request now and must be sent, not taken for the bad line.
    line = orjson.dumps(chat_line(1)) + b"\n"
    job = write_jsonl(tmp_path / "job.jsonl", [line])
    record = {"id": "batch_req_1", "custom_id": "req-1", "response": None,
              "error": {"code": "invalid_line", "message": "duplicate custom_id 'req-1'",
                        "line": 5, "input_hash": f"{line_hash(line):016x}"}}
    (tmp_path / "job.errors.jsonl").write_bytes(orjson.dumps(record) + b"\n")
    code, out = run(job, server_url)
    assert code == 0, out
    assert answers(job) == {"req-1": ["Question number 1?"]}


def test_a_bad_line_fixed_after_lines_moved_is_counted_by_content(
    server_url: str, tmp_path: Path  # noqa: F811
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [bare("q0"), b"{oops\n", bare("q2")])
    assert run(job, server_url)[0] == 1
    write_jsonl(job, [bare("new"), bare("q0"), bare("fixed"), bare("q2")])
    code, out = run(job, server_url, "--resend-changed")
    assert code == 0, out
    assert "1 line(s) reported bad before are no longer in the input" in out
    assert answers(job) == {"line-1": ["new"], "line-2": ["q0"], "line-3": ["fixed"],
                            "line-4": ["q2"]}
