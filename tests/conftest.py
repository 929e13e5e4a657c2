"""Shared fixtures: the mock OpenAI server on loopback, and job-file builders."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings

from processor.testing import STATS_KEY, MockConfig, MockStats, build_app

# Tests reach loopback only: the CLI in subprocesses (and CliRunner) never downloads a
# tiktoken encoding, and in-process code that would is refused at tiktoken's fetch.
os.environ["BATCHPROC_OFFLINE"] = "1"


def _no_download(blobpath: str) -> bytes:
    if blobpath.startswith(("http://", "https://")):
        raise ConnectionError(f"tests are offline: not fetching {blobpath}")
    with open(blobpath, "rb") as f:
        return f.read()


import tiktoken.load  # noqa: E402

tiktoken.load.read_file = _no_download

# Property tests judge the product, not this machine's speed: no per-example deadline, and
# no health check on how long making the examples took (both fail on a loaded machine).
settings.register_profile("batchproc", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("batchproc")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """In CI (``CI`` set, as ``.ci/run`` runs) a skip is a failure: CI installs everything
    the tests need (redis-server, chromium, Pillow), so a skip there hides a missing step."""
    report = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
    return report


@dataclass
class MockAPI:
    """A running mock server: its base URL and live stats."""

    base_url: str
    stats: MockStats
    server: TestServer
    config: MockConfig

    @property
    def root(self) -> str:
        """The server's URL without ``/v1`` (Azure-style base URLs)."""
        return self.base_url.removesuffix("/v1")


@pytest.fixture
async def mock_api() -> AsyncIterator[Callable[..., Any]]:
    """Start mock servers on 127.0.0.1 (random ports): ``api = await mock_api(rpm=...)``."""
    servers: list[TestServer] = []

    async def start(*, clock: Callable[[], float] | None = None,
                    middlewares: Iterable[Any] = (), **config: Any) -> MockAPI:
        mock_config = MockConfig(**config)
        app = build_app(mock_config, clock=clock)
        app.middlewares.extend(middlewares)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return MockAPI(str(server.make_url("/v1")), app[STATS_KEY], server, mock_config)

    yield start
    for server in servers:
        await server.close()


class FirstRequestClock:
    """The mock server's clock, standing still at 0 until its first API request.

    Pass it with its middleware (``mock_api(clock=c, middlewares=[c.middleware])``): the
    server's buckets then start as ``initial_fill`` says at the first request, however
    long the client took to start on a loaded machine (time that would refill them).
    """

    def __init__(self) -> None:
        self.t0: float | None = None

    def __call__(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.t0 is None and request.method == "POST":
            self.t0 = time.monotonic()
        response: web.StreamResponse = await handler(request)
        return response


class Turnstile:
    """Lets through as many API requests as the test allows and holds the rest until it
    allows more (``mock_api(middlewares=[t.middleware])``): a run then keeps going, and
    holding its locks, for as long as the test needs it, however slowly other processes
    start on a loaded machine, instead of finishing the job meanwhile."""

    def __init__(self) -> None:
        self.passes = 0
        self.changed = asyncio.Event()

    def allow(self, n: int) -> None:
        self.passes += n
        self.changed.set()

    def open(self) -> None:
        self.allow(10**9)

    def hold(self) -> None:
        """Let no more through (until allowed)."""
        self.passes = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST":
            while self.passes <= 0:
                self.changed.clear()
                await self.changed.wait()
            self.passes -= 1
        response: web.StreamResponse = await handler(request)
        return response


@pytest.fixture
def turnstile(mock_api: Any) -> Iterator[Turnstile]:
    """A :class:`Turnstile` opened when the test ends, before the mock servers close
    (a server waits for the requests it holds: a failed test would hang, not fail)."""
    gate = Turnstile()
    yield gate
    gate.open()


def chat_line(i: int, *, model: str = "gpt-4o-mini", max_tokens: int = 16,
              text: str | None = None) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": text or f"Question number {i}?"}],
            "max_tokens": max_tokens,
        },
    }


def write_jsonl(path: Path, lines: Iterable[dict[str, Any] | bytes]) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else orjson.dumps(line) + b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def until(check: Callable[[], bool], what: str, *,
                alive: asyncio.subprocess.Process | None = None, timeout: float = 60.0) -> None:
    """Poll ``check`` every 10 ms until it holds. ``timeout`` only bounds a hang: a CLI
    starting on a loaded machine may take seconds before it does anything at all, so no
    test counts on a few. With ``alive``, that process ending first fails at once."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert alive is None or alive.returncode is None, f"it ended before {what}"
        assert loop.time() < end, f"no {what} within {timeout:.0f}s"
        await asyncio.sleep(0.01)


async def read_until(proc: asyncio.subprocess.Process, words: str) -> bytes:
    """Read ``proc``'s stderr until a line holds ``words`` (``--verbose`` runs say when
    they begin to stop, say); return what was read, to join with the rest."""
    assert proc.stderr is not None
    seen = b""
    while words.encode() not in seen:
        line = await asyncio.wait_for(proc.stderr.readline(), 60)  # a bound for a hang
        assert line, f"it ended without saying {words!r}: {seen.decode()}"
        seen += line
    return seen


async def start_cli(job: Path, base_url: str, *extra: str,
                    max_in_flight: int = 4) -> asyncio.subprocess.Process:
    """Run ``batchproc JOB`` as a user would, in a subprocess (no key: loopback needs none)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli.app", str(job), "--base-url", base_url,
        "--max-in-flight", str(max_in_flight), "--plain", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )


# The hostile server (redirects, echoes, huge/endless bodies, outages, absurd headers)
# and its foreign host: ``api = await hostile_api(redirect(301))``; see tests/hostile.py.
from tests.hostile import hostile_api  # noqa: E402, F401

# A real redis-server on loopback for the shared limiter: see tests/redisfix.py.
from tests.redisfix import redis_server, tls_files, tls_redis  # noqa: E402, F401
