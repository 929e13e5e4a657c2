"""Outputs that cannot be written: one clear message, the summary, exit 74, whole files,
and a rerun after the cause is gone completes with every id exactly once.

Tests run as root, so a read-only folder is simulated: a file-size limit
(RLIMIT_FSIZE, writes then fail with EFBIG) in a real subprocess, ENOSPC injected
in-process at chosen points, and a folder no one may create files in (/sys).
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from processor.cli.app import app
from processor.errors import OutputError
from processor.store import writer
from processor.store.ledger import LEDGER_ENTRY, ledger_path
from processor.store.resume import repair_torn_tail
from processor.store.writer import ResultWriter
from tests.conftest import chat_line, write_jsonl
from tests.test_cli import server_url  # noqa: F401 - the fixture, served from a thread

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def whole_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes() if path.exists() else b""
    assert data == b"" or data.endswith(b"\n"), f"{path} ends in a partial line"
    return [orjson.loads(line) for line in data.splitlines()]


def flat(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


async def start_limited(job: Path, base_url: str, limit: int | None,
                        *extra: str) -> asyncio.subprocess.Process:
    """The real CLI in a subprocess whose files cannot grow past ``limit`` bytes."""
    def preexec() -> None:
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli.app", str(job), "--base-url", base_url,
        "--max-in-flight", "4", "--plain", *extra, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, preexec_fn=preexec)


async def test_full_disk_mid_run_then_rerun(mock_api: Any, tmp_path: Path) -> None:
    api = await mock_api(seed=2)
    n = 40
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    results = tmp_path / "job.results.jsonl"
    proc = await start_limited(job, api.base_url, 6000)
    _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 74, text
    assert "Traceback" not in text
    assert "Stopped in" in text  # the summary
    assert text.count(f"cannot write the output files: {results}: File too large") == 1, text
    done = whole_lines(results)
    assert 0 < len(done) < n
    assert ledger_path(results).stat().st_size % LEDGER_ENTRY.size == 0
    assert not list(tmp_path.glob("*.torn-*")) and not list(tmp_path.glob("*.lock"))
    # Space is freed: the rerun completes, every id exactly once.
    proc = await start_limited(job, api.base_url, None)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    counts = Counter(r["custom_id"] for r in whole_lines(results))
    assert counts == Counter(f"req-{i}" for i in range(n))


async def test_torn_tail_that_cannot_be_saved(mock_api: Any, tmp_path: Path) -> None:
    """The side file does not fit: it is removed, nothing is cut, exit 74; then repaired."""
    api = await mock_api(seed=2)
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
    results = tmp_path / "job.results.jsonl"
    torn = b'{"id":"batch_req_1","custom_id":"req-0","response":{"body":"' + b"x" * 9000
    results.write_bytes(torn)
    proc = await start_limited(job, api.base_url, 4096)
    _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 74, text
    assert "Traceback" not in text
    assert "torn last line" in text and "nothing was cut" in text and "File too large" in text
    assert results.read_bytes() == torn  # untouched
    assert not list(tmp_path.glob("*.torn-*"))  # no empty or partial side file
    assert api.stats.requests == 0
    proc = await start_limited(job, api.base_url, None)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    (side,) = tmp_path.glob("*.torn-*")
    assert side.read_bytes() == torn
    assert Counter(r["custom_id"] for r in whole_lines(results)) == Counter(
        f"req-{i}" for i in range(3))


def test_ledger_write_fails(server_url: str, tmp_path: Path,  # noqa: F811
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger entry goes before its result: when it cannot be written, the answer is
    not written either (nor counted), the run stops with 74, and a rerun sends it."""
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(5)])
    results = tmp_path / "job.results.jsonl"
    real_write = writer._Appender.write

    def write(self: Any, data: bytes) -> None:
        if self.path.name.endswith(".ledger"):
            real_write(self, data[:7])  # a short write, then the disk is full
            raise OutputError(self.path, ENOSPC)
        real_write(self, data)

    monkeypatch.setattr(writer._Appender, "write", write)
    argv = ["run", str(job), "--base-url", server_url, "--plain", "--rpm", "6000"]
    result = CliRunner().invoke(app, argv)
    out = flat(result.output)
    assert result.exit_code == 74, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert "0 ok" in out  # the summary: no answer was written without its ledger entry
    assert f"{ledger_path(results)}: No space left on device" in out
    assert whole_lines(results) == []
    monkeypatch.undo()
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert Counter(r["custom_id"] for r in whole_lines(results)) == Counter(
        f"req-{i}" for i in range(5))


def test_fsync_fails_at_exit(server_url: str, tmp_path: Path,  # noqa: F811
                             monkeypatch: pytest.MonkeyPatch) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(writer.os, "fsync", fsync)
    result = CliRunner().invoke(app, ["run", str(job), "--base-url", server_url, "--plain"])
    out = flat(result.output)
    assert result.exit_code == 74, result.output
    assert isinstance(result.exception, SystemExit)
    # The ledger is synced first (no result without its entry, after a power cut too).
    assert f"{ledger_path(tmp_path / 'job.results.jsonl')}: Input/output error (fsync)" in out
    assert "3 ok" in out


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs")
def test_folder_that_refuses_new_files(tmp_path: Path) -> None:
    """sysfs refuses new files even to root: the run cannot create its outputs."""
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    result = CliRunner().invoke(app, ["run", str(job), "--base-url", "http://127.0.0.1:9/v1",
                                      "-o", "/sys/kernel/batchproc-test.jsonl"])
    assert result.exit_code == 74, result.output
    assert "/sys/kernel/batchproc-test.jsonl.lock" in flat(result.output)
    assert "nothing was sent" in flat(result.output)


# -- units --------------------------------------------------------------------

class _FullAfter:
    """The ``os`` module as the writer sees it, on a disk with ``room`` bytes left: a
    write past that is short (the bytes that fit), and the next one fails with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if not self.room:
            raise ENOSPC
        n = os.write(fd, bytes(data[: self.room]))
        self.room -= n
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_failed_write_is_cut_back_and_named(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "r.jsonl"
    results.write_bytes(b'{"custom_id":"old"}\n')
    monkeypatch.setattr(writer, "os", _FullAfter(100))
    w = ResultWriter(results, tmp_path / "e.jsonl")
    w.write_result({"custom_id": "a"})
    with pytest.raises(OutputError) as info:
        w.write_result({"custom_id": "b", "body": "x" * 500})
    assert str(info.value) == f"{results}: No space left on device"
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert w.failure is info.value
    w.close()
    assert [r["custom_id"] for r in whole_lines(results)] == ["old", "a"]
    assert results.read_bytes().endswith(b"\n")  # the short write's bytes were cut off


def test_torn_side_file_is_removed_when_it_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":')

    def fsync(fd: int) -> None:
        raise ENOSPC

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError, match="nothing was cut"):
        repair_torn_tail(path)
    assert path.read_bytes() == b'{"a":1}\n{"b":'
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]
    monkeypatch.undo()
    side = repair_torn_tail(path)
    assert side is not None and side.read_bytes() == b'{"b":'
    assert path.read_bytes() == b'{"a":1}\n'


def test_torn_side_file_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import processor.store.resume as resume

    monkeypatch.setattr(resume.time, "strftime", lambda fmt, *a: "T")
    path = tmp_path / "r.jsonl"
    taken = tmp_path / f"r.jsonl.torn-T-{os.getpid()}"
    taken.write_bytes(b"earlier")
    path.write_bytes(b'{"a":1}\n{"b":')
    side = repair_torn_tail(path)
    assert side is not None and side != taken
    assert taken.read_bytes() == b"earlier" and side.read_bytes() == b'{"b":'


async def test_full_disk_while_reporting_bad_lines(tmp_path: Path) -> None:
    """Bad lines are written at admission, outside any request: the same clean stop."""
    job = write_jsonl(tmp_path / "job.jsonl", [b'{"not": "a request %d"}\n' % i
                                               for i in range(60)])
    errors = tmp_path / "job.errors.jsonl"
    proc = await start_limited(job, "http://127.0.0.1:9/v1", 3000)
    _, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 74, text
    assert "Traceback" not in text and "Stopped in" in text
    assert f"cannot write the output files: {errors}: File too large" in text
    assert 0 < len(whole_lines(errors)) < 60
    proc = await start_limited(job, "http://127.0.0.1:9/v1", None)
    _, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()  # bad lines: exit 1, each reported once
    lines = Counter(r["error"]["line"] for r in whole_lines(errors))
    assert lines == Counter(range(1, 61))


@pytest.mark.parametrize("command", ["export", "sort"])
def test_other_commands_on_a_full_disk(tmp_path: Path, command: str) -> None:
    """export / sort: one line naming the file, exit 74, and no cut-off output left."""
    import subprocess

    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(200)])
    results = write_jsonl(tmp_path / "job.results.jsonl", [
        {"id": f"batch_req_{i}", "custom_id": f"req-{i}", "response": {
            "status_code": 200, "body": {"choices": [{"message": {"content": "x" * 50}}]}}}
        for i in reversed(range(200))])
    out = tmp_path / "out.file"
    argv = [command, str(results), "--input", str(job), "-o", str(out)]

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([sys.executable, "-m", "processor.cli.app", *argv], capture_output=True,
                          preexec_fn=preexec, timeout=60)
    text = proc.stderr.decode()
    assert proc.returncode == 74, text
    assert "Traceback" not in text
    assert "File too large" in text and str(out) in text
    assert not out.exists()
    assert not list(tmp_path.glob("out.file*"))  # nor its temporary file
