"""Resume: torn tails, what earlier runs wrote, moving old outputs aside (store.resume)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.jobs import DEFAULT_ENDPOINT, Job, line_hash
from processor.store.ledger import ledger_entry
from processor.store.records import error_record, result_record
from processor.store.resume import ScanInterrupted, load_state, move_aside, repair_torn_tail
from processor.store.writer import ResultWriter
from tests.conftest import start_cli


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def result_line(cid: str) -> bytes:
    job = Job(custom_id=cid, line=1, url=DEFAULT_ENDPOINT, body={})
    return line(result_record(job, 200, "req_1", {"id": "chatcmpl-1", "choices": []}))


def error_line(cid: str | None, code: str, line_no: int = 1) -> bytes:
    return line(error_record(custom_id=cid, line=line_no, code=code, message="m"))


def assert_valid_jsonl(path: Path) -> list[Any]:
    data = path.read_bytes()
    if not data:
        return []
    assert data.endswith(b"\n")
    return [orjson.loads(x) for x in data.split(b"\n")[:-1]]


# --------------------------------------------------------------------------- repair_torn_tail


@pytest.mark.parametrize(
    ("whole", "torn"),
    [
        (result_line("a") + result_line("b"), b'{"id":"batch_req_x","custom_id":"c","resp'),
        (result_line("a"), b"{"),
        (b"", b'{"custom_id":"only-line-torn"'),
        (result_line("a"), b'{"custom_id":"x","body":"' + b"y" * 200_000),
        (result_line("a") * 3_000, b'{"custom_id":"tail"'),
        (result_line("a"), b"\r"),
    ],
    ids=["two-whole-one-torn", "one-byte", "no-whole-line", "tail-over-64k",
         "long-file", "stray-cr"],
)
def test_repair_moves_the_partial_line_aside(tmp_path: Path, whole: bytes, torn: bytes) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(whole + torn)
    side = repair_torn_tail(path)
    assert side is not None
    assert side.parent == path.parent
    assert side.name.startswith("results.jsonl.torn-")
    assert side.read_bytes() == torn
    assert path.read_bytes() == whole
    assert_valid_jsonl(path)


@pytest.mark.parametrize(
    "content",
    [result_line("a"), result_line("a") + result_line("b"), b"\n", b""],
    ids=["one-line", "two-lines", "just-newline", "empty"],
)
def test_repair_leaves_a_whole_file_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(content)
    assert repair_torn_tail(path) is None
    assert path.read_bytes() == content
    assert list(tmp_path.iterdir()) == [path]


def test_repair_missing_file(tmp_path: Path) -> None:
    assert repair_torn_tail(tmp_path / "nope.jsonl") is None
    assert list(tmp_path.iterdir()) == []


def test_repair_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    whole = result_line("a")
    path.write_bytes(whole + b'{"par')
    assert repair_torn_tail(path) is not None
    assert repair_torn_tail(path) is None
    assert path.read_bytes() == whole


def test_appending_after_repair_gives_valid_jsonl(tmp_path: Path) -> None:
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    results.write_bytes(result_line("a") + b'{"id":"batch_req_1","cus')
    repair_torn_tail(results)
    w = ResultWriter(results, errors)
    w.write_result(orjson.loads(result_line("b")))
    w.close()
    assert [r["custom_id"] for r in assert_valid_jsonl(results)] == ["a", "b"]


# --------------------------------------------------------------------------- load_state


def test_load_state_collects_done_failed_and_bad_lines(tmp_path: Path) -> None:
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    results.write_bytes(
        result_line("a")
        + result_line("b")
        # Another writer's layout (spaces, other key order) is still read.
        + b'{"response": {"status_code": 200}, "custom_id": "c", "id": "x"}\n'
        + b"garbage line\n"
        + result_line("a")
    )
    errors.write_bytes(
        error_line("f1", "bad_request", 4)
        + error_line("f2", "rate_limited", 5)
        + error_line(None, "invalid_line", 7)
        + error_line("bad-with-id", "invalid_line", 9)
        + error_line(None, "server_error", 11)  # no id: nothing to mark
        + b"[1, 2]\n"
        + b"{not json\n"
    )
    state = load_state(results, errors)
    assert len(state.done) == 3
    assert all(cid in state.done for cid in ("a", "b", "c"))
    assert len(state.failed) == 2
    assert "f1" in state.failed and "f2" in state.failed
    assert "bad-with-id" not in state.failed  # invalid lines are not failed requests
    assert state.bad_lines == {7, 9}
    assert state.invalid_lines == 2  # "garbage line" and "{not json"
    assert state.torn == []
    assert not state.empty


@pytest.mark.parametrize(
    ("results", "errors", "empty"),
    [
        (None, None, True),
        (b"", b"", True),
        (result_line("a"), None, False),
        (None, error_line("x", "bad_request"), False),
        (None, error_line(None, "invalid_line", 3), False),
    ],
    ids=["missing", "empty-files", "one-result", "one-error", "one-bad-line"],
)
def test_load_state_empty(
    tmp_path: Path, results: bytes | None, errors: bytes | None, empty: bool
) -> None:
    rpath, epath = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    if results is not None:
        rpath.write_bytes(results)
    if errors is not None:
        epath.write_bytes(errors)
    assert load_state(rpath, epath).empty is empty


def test_load_state_repairs_torn_tails_first(tmp_path: Path) -> None:
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    # The torn line is the start of a record for "c": it must not count as done.
    results.write_bytes(result_line("a") + b'{"id":"batch_req_9","custom_id":"c","respo')
    errors.write_bytes(error_line("f", "bad_request") + b'{"id":"batch_req_8","custom_')
    state = load_state(results, errors)
    assert "a" in state.done and "c" not in state.done
    assert "f" in state.failed
    assert len(state.torn) == 2
    assert {p.name.split(".torn-")[0] for p in state.torn} == {"results.jsonl", "errors.jsonl"}
    assert state.invalid_lines == 0
    assert [r["custom_id"] for r in assert_valid_jsonl(results)] == ["a"]
    assert [r["custom_id"] for r in assert_valid_jsonl(errors)] == ["f"]


def test_load_state_many_results(tmp_path: Path) -> None:
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    results.write_bytes(b"".join(result_line(f"r{i}") for i in range(5_000)))
    state = load_state(results, errors)
    assert len(state.done) == 5_000
    assert all(f"r{i}" in state.done for i in range(5_000))


def test_load_state_reads_the_ledger(tmp_path: Path) -> None:
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    w = ResultWriter(results, errors)
    w.write_result(orjson.loads(result_line("a")), line_hash(b'{"a":1}'))
    w.write_result(orjson.loads(result_line("b")))
    w.write_result(orjson.loads(result_line("gone")), line_hash(b'{"g":1}'))
    w.close()
    # The last result line is lost (torn off), but its ledger entry is there.
    data = results.read_bytes()
    results.write_bytes(data[: data.rindex(b'{"id"')] + b'{"id":"batch_')
    state = load_state(results, errors)
    assert state.has_ledger
    assert state.done.get("a") == line_hash(b'{"a":1}') % 2**32  # kept as 32 bits
    assert state.done.get("b") == 0  # answered, but no hash was recorded
    assert state.done.get("gone") is None  # the ledger alone does not make it done
    assert len(state.done) == 2


def test_load_state_without_ledger(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_bytes(result_line("a"))
    state = load_state(results, tmp_path / "errors.jsonl")
    assert not state.has_ledger
    assert "a" in state.done


# --------------------------------------------------------------------------- move_aside


def test_move_aside_missing_file(tmp_path: Path) -> None:
    assert move_aside(tmp_path / "nope.jsonl") is None
    assert list(tmp_path.iterdir()) == []


def test_move_aside_renames_and_keeps_the_content(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"precious\n")
    target = move_aside(path)
    assert target is not None
    assert not path.exists()
    assert target.parent == tmp_path
    assert target.name.startswith("results.jsonl.") and target.name.endswith(".bak")
    assert target.read_bytes() == b"precious\n"


def test_move_aside_twice_in_the_same_second_does_not_clobber(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20240101T000000")
    path = tmp_path / "results.jsonl"
    targets = []
    for n in range(4):
        path.write_bytes(f"run {n}\n".encode())
        targets.append(move_aside(path))
    assert [t.name for t in targets if t is not None] == [
        "results.jsonl.20240101T000000.bak",
        "results.jsonl.20240101T000000.1.bak",
        "results.jsonl.20240101T000000.2.bak",
        "results.jsonl.20240101T000000.3.bak",
    ]
    assert [t.read_bytes() for t in targets if t is not None] == [
        f"run {n}\n".encode() for n in range(4)
    ]
    assert not path.exists()


def test_move_aside_never_overwrites_an_existing_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20240101T000000")
    existing = tmp_path / "results.jsonl.20240101T000000.bak"
    existing.write_bytes(b"older backup\n")
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"current\n")
    target = move_aside(path)
    assert target == tmp_path / "results.jsonl.20240101T000000.1.bak"
    assert existing.read_bytes() == b"older backup\n"
    assert target.read_bytes() == b"current\n"


def test_two_torn_tails_in_one_second_keep_both_pieces(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a":1}\n{"partial":')
    first = repair_torn_tail(path)
    path.write_bytes(path.read_bytes() + b'{"second":')
    second = repair_torn_tail(path)
    assert first is not None and second is not None and first != second
    assert first.read_bytes() == b'{"partial":' and second.read_bytes() == b'{"second":'
    assert path.read_bytes() == b'{"a":1}\n'


def test_load_state_reads_the_top_level_custom_id_of_other_writers(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_bytes(
        b'{"response":{"body":{"custom_id":"inner"}},"custom_id":"outer"}\n'
        b'{"id":"batch_req_1","custom_id":"ours","response":{}}\n'
    )
    state = load_state(results, tmp_path / "e.jsonl")
    assert "outer" in state.done and "ours" in state.done and "inner" not in state.done


# --------------------------------------------------------------------------- stopping the scan


def test_load_state_stops_when_asked(tmp_path: Path) -> None:
    results, errors = tmp_path / "results.jsonl", tmp_path / "errors.jsonl"
    data = result_line("a") * 10
    results.write_bytes(data)
    flag = threading.Event()
    assert "a" in load_state(results, errors, stop=flag).done
    flag.set()
    with pytest.raises(ScanInterrupted):
        load_state(results, errors, stop=flag)
    assert results.read_bytes() == data  # nothing written


def _big_resumed_job(tmp_path: Path, n: int) -> Path:
    """A bare job of ``n`` lines, every one answered (results and ledger), written fast."""
    job = tmp_path / "job.jsonl"
    lines = [b'{"model":"gpt-4o-mini","input":"doc %d"}\n' % i for i in range(1, n + 1)]
    job.write_bytes(b"".join(lines))
    with open(tmp_path / "job.results.jsonl", "wb") as out, \
            open(tmp_path / "job.results.jsonl.ledger", "wb") as ledger:
        for i, raw in enumerate(lines, 1):
            out.write(b'{"id":"batch_req_%d","custom_id":"line-%d","response":{"status_code":'
                      b'200,"request_id":"","body":{}},"error":null}\n' % (i, i))
            ledger.write(ledger_entry(f"line-{i}", line_hash(raw)))
    return job


async def _until_scanning(proc: asyncio.subprocess.Process) -> float:
    """Read stderr until the run says it reads the earlier outputs; return when."""
    assert proc.stderr is not None
    loop = asyncio.get_running_loop()
    for _ in range(200):  # bounded
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        if b"reading the earlier outputs" in line or not line:
            break
    return loop.time()


@pytest.mark.slow
async def test_a_signal_during_the_start_up_scan_stops_it_at_once(tmp_path: Path) -> None:
    sig, code = signal.SIGINT, 130
    job = _big_resumed_job(tmp_path, 300_000)
    url = "http://127.0.0.1:9/v1"  # never reached: everything is done
    loop = asyncio.get_running_loop()
    # How long the whole scan takes on this machine now (nothing left to send: exit 0).
    proc = await start_cli(job, url, "--verbose")
    started = await _until_scanning(proc)
    _, err = await proc.communicate()
    scan = loop.time() - started
    assert proc.returncode == 0, err.decode()
    assert "300,000 skipped" in err.decode()
    # Again, with a signal as soon as the scan has begun.
    proc = await start_cli(job, url, "--verbose")
    await _until_scanning(proc)
    proc.send_signal(sig)
    signalled = loop.time()
    _, err = await proc.communicate()
    stopped = loop.time() - signalled
    assert proc.returncode == code, err.decode()
    assert "nothing was sent" in err.decode()
    assert "Traceback" not in err.decode()
    # It did not sit out the scan: compared with the scan's own length, not a fixed time.
    assert stopped < scan / 3, (stopped, scan)
