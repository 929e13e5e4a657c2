"""Helpers of the Batch API tests: the mock server with its Batch API, the CLI in a
subprocess, and job files."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from processor.testing import BATCHES_KEY, STATS_KEY, BatchMockConfig, MockConfig, MockStats
from processor.testing.batchjobs import BatchStore

#: the Batch flags of every test run: a fast poll.
FAST = ("--batch-poll-every", "0.1", "--batch-poll-max", "0.4")


@dataclass
class BatchMock:
    base_url: str
    store: BatchStore
    stats: MockStats

    @property
    def counts(self) -> dict[str, Any]:
        return self.store.stats.to_dict()


@pytest.fixture
async def batch_api() -> AsyncIterator[Callable[..., Any]]:
    """``api = await batch_api(batch={"seconds": 1}, rpm=...)``: a mock server on loopback."""
    servers: list[TestServer] = []

    async def start(batch: dict[str, Any] | None = None, **config: Any) -> BatchMock:
        app = __import__("processor.testing", fromlist=["build_app"]).build_app(
            MockConfig(**config), batch=BatchMockConfig(**(batch or {"seconds": 1.0})))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return BatchMock(str(server.make_url("/v1")), app[BATCHES_KEY], app[STATS_KEY])

    yield start
    for server in servers:
        await server.close()


class HeldClock:
    """The mock's Batch API clock (``api.store.clock = HeldClock()``), held still until
    the test lets it run: a batch then runs as far as the test says, however long the
    CLI takes to start on a loaded machine, not as far as the wall clock got."""

    def __init__(self) -> None:
        self.at = 0.0
        self.since: float | None = None  # None: held

    def __call__(self) -> float:
        return self.at + (0.0 if self.since is None else time.monotonic() - self.since)

    def advance(self, seconds: float) -> None:
        self.at += seconds

    def run(self) -> None:
        """Let time flow from here on."""
        self.at, self.since = self(), time.monotonic()


def job_lines(n: int, *, model: str = "gpt-4o-mini", prefix: str = "r",
              models: Iterable[str] | None = None) -> bytes:
    """``n`` chat lines, fast (one format per line): custom_ids ``r0``..."""
    pick = list(models) if models else [model]
    template = ('{"custom_id":"%s%d","method":"POST","url":"/v1/chat/completions","body":'
                '{"model":"%s","messages":[{"role":"user","content":"Question %d?"}],'
                '"max_tokens":8}}\n')
    return "".join(template % (prefix, i, pick[i % len(pick)], i)
                   for i in range(n)).encode()


def write_job(path: Path, n: int, **kw: Any) -> Path:
    path.write_bytes(job_lines(n, **kw))
    return path


async def start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=base | (env or {}))


async def cli(*args: str, env: dict[str, str] | None = None,
              timeout: float = 90.0) -> tuple[int, str, str]:
    """Run ``batchproc ARGS``; return (exit code, stdout, stderr)."""
    proc = await start(*args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_batch(job: Path, api: BatchMock, *extra: str,
                    env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await cli("run", str(job), "--base-url", api.base_url, "--via", "batch", "--plain",
                     *FAST, *extra, env=env)


def ids_of(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [orjson.loads(line)["custom_id"] for line in path.read_bytes().splitlines()]


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def state_of(job: Path) -> dict[str, Any]:
    stem = job.name.removesuffix(".jsonl")
    return dict(orjson.loads((job.with_name(stem + ".batch") / "state.json").read_bytes()))

