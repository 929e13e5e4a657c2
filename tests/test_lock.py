"""One run per job: a second run of the same job refuses (exit 75), naming the holder."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from processor.errors import JobLocked
from processor.run.runner import JobConfig, run_job
from processor.store.lock import JobLock
from processor.store.paths import lock_path
from processor.testing import MockStats
from tests.conftest import chat_line, read_jsonl, start_cli, until, write_jsonl


def test_second_lock_names_the_holder_and_release_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.lock"
    with JobLock([path]):
        pid, host = path.read_text().split()[:2]
        assert (int(pid), host) == (os.getpid(), socket.gethostname())
        with pytest.raises(JobLocked) as info:  # another open file: refused, even here
            JobLock([path]).acquire()
        assert info.value.pid == os.getpid() and info.value.host == socket.gethostname()
        assert f"PID {os.getpid()} on {socket.gethostname()}" in str(info.value)
    assert not path.exists()
    with JobLock([path]):  # free again
        assert path.exists()


def test_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl.lock"
    path.write_text("999999999 ghost-host 2020-01-01T00:00:00+0000\n")
    with JobLock([path]):
        assert path.read_text().split()[0] == str(os.getpid())


def test_all_or_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.lock", tmp_path / "b.lock"
    with JobLock([b]):
        with pytest.raises(JobLocked):
            JobLock([a, b]).acquire()
        # ``a`` was let go when ``b`` was refused.
        with JobLock([a]):
            pass


def test_file_system_without_locks_runs_unguarded(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", flock)
    path = tmp_path / "r.jsonl.lock"
    with JobLock([path]):
        assert path.exists()
    assert not path.exists()


def test_lock_path_is_shared_by_every_name_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert lock_path(tmp_path / "alias" / "r.jsonl") == lock_path(tmp_path / "real" / "r.jsonl")
    assert lock_path(tmp_path / "real" / "." / "r.jsonl") == tmp_path / "real" / "r.jsonl.lock"


async def test_python_api_refuses_a_job_held_by_another_run(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    with JobLock([lock_path(tmp_path / "job.errors.jsonl")]):
        with pytest.raises(JobLocked):
            await run_job(job, JobConfig(base_url="http://127.0.0.1:9/v1"))
    # Refused before the resume scan: nothing was created.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.jsonl"]


async def _wait_for(path: Path, proc: asyncio.subprocess.Process) -> None:
    await until(lambda: path.exists() and bool(path.read_text().strip()), f"lock {path}",
                alive=proc)


class _Gate:
    """Holds every API request at the mock server until :meth:`open` (a middleware).

    The first run's request then stays in flight for as long as the test needs, however
    slowly the other CLIs start on a loaded machine: no latency to outlast.
    """

    def __init__(self) -> None:
        self.arrived = 0
        self.opened = asyncio.Event()
        self.first_arrived = asyncio.Event()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST":
            self.arrived += 1
            self.first_arrived.set()
            await self.opened.wait()
        return await handler(request)


async def test_two_processes_second_refuses_with_75(mock_api: Any, tmp_path: Path) -> None:
    gate = _Gate()
    api = await mock_api(seed=3, middlewares=[gate.middleware])
    try:
        await _second_refuses(gate, api.stats, api.base_url, tmp_path)
    finally:
        gate.opened.set()  # the server closes without waiting on held requests


async def _second_refuses(gate: _Gate, stats: MockStats, base_url: str,
                          tmp_path: Path) -> None:
    n = 12
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    results = tmp_path / "job.results.jsonl"
    first = await start_cli(job, base_url, max_in_flight=1)
    await _wait_for(lock_path(results), first)
    await asyncio.wait_for(gate.first_arrived.wait(), 60)  # its first request is in flight
    second = await start_cli(job, base_url)
    _, err = await second.communicate()
    text = err.decode()
    assert second.returncode == 75, text
    assert f"PID {first.pid} on {socket.gethostname()}" in text
    # Another run whose errors file is this run's ledger: refused (it would corrupt it),
    # by its name before any lock is taken (so also when no run holds it).
    ledger = await start_cli(job, base_url, "-o", str(tmp_path / "o2.jsonl"),
                             "--errors", str(tmp_path / "job.results.jsonl.ledger"))
    _, err = await ledger.communicate()
    assert ledger.returncode == 2 and "give another name" in err.decode(), err.decode()
    # Another results file but the same errors file: also refused.
    third = await start_cli(job, base_url, "-o", str(tmp_path / "other.jsonl"))
    _, err = await third.communicate()
    assert third.returncode == 75, err.decode()
    assert f"PID {first.pid}" in err.decode()
    assert first.returncode is None and gate.arrived == 1  # refused runs sent nothing
    # Graceful: what is in flight is written. The signal is pending in the first run
    # before its answer is let through, so it stops admitting before it reads that answer.
    first.send_signal(signal.SIGINT)
    gate.opened.set()
    _, err = await first.communicate()
    assert first.returncode == 130, err.decode()
    done = [r["custom_id"] for r in read_jsonl(results)]
    assert done and "req-0" in done, err.decode()
    rest = await start_cli(job, base_url)
    _, err = await rest.communicate()
    assert rest.returncode == 0, err.decode()
    counts = Counter(r["custom_id"] for r in read_jsonl(results))
    assert counts == Counter(f"req-{i}" for i in range(n))
    assert stats.requests == n  # nothing sent twice
    assert not (tmp_path / "other.jsonl").exists()
    assert not list(tmp_path.glob("*.lock"))  # released on exit


async def test_killed_run_leaves_a_lock_the_next_run_takes_over(mock_api: Any,
                                                                tmp_path: Path) -> None:
    api = await mock_api(latency_ms=50, seed=4)
    n = 20
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    results = tmp_path / "job.results.jsonl"
    first = await start_cli(job, api.base_url, max_in_flight=1)
    await _wait_for(lock_path(results), first)
    first.send_signal(signal.SIGKILL)
    await first.communicate()
    assert lock_path(results).read_text().split()[0] == str(first.pid)  # left behind
    again = await start_cli(job, api.base_url)
    _, err = await again.communicate()
    assert again.returncode == 0, err.decode()
    counts = Counter(r["custom_id"] for r in read_jsonl(results))
    assert counts == Counter(f"req-{i}" for i in range(n))
    assert not lock_path(results).exists()
