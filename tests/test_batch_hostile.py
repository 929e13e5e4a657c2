"""A hostile Batch API: redirects, ids that are paths, echoed keys, statuses it makes up.
The key stays with its host and out of every file; odd ids never reach a URL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.batchkit import cli, write_job

pytestmark = pytest.mark.slow  # the CLI in subprocesses

KEY = "sk-hostile-batch-key-0123456789"


@pytest.fixture
async def hostile_batch() -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []

    async def start(batch_id: str = "batch_1", status: str = "in_progress",
                    upload_status: int = 200) -> tuple[str, list[str]]:
        seen: list[str] = []

        async def any_route(request: web.Request) -> web.StreamResponse:
            seen.append(f"{request.method} {request.path_qs}")
            await request.read()
            if request.path == "/v1/files" and request.method == "POST":
                if upload_status != 200:
                    raise web.HTTPTemporaryRedirect("http://127.0.0.2:9/v1/files")
                return web.json_response({"id": "file-1", "object": "file", "bytes": 1,
                                          "filename": "x", "purpose": "batch"})
            if request.path == "/v1/batches" and request.method == "POST":
                return web.json_response({"id": batch_id, "object": "batch",
                                          "status": "validating"})
            if request.path.startswith("/v1/batches/"):
                return web.json_response({"id": batch_id, "object": "batch",
                                          "status": status.replace("KEY", KEY),
                                          "request_counts": {"total": 1, "completed": KEY}})
            return web.json_response({"error": {"message": "no"}}, status=404)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_route)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/v1")), seen

    yield start
    for server in servers:
        await server.close()


async def _run(job: Path, base: str, *extra: str) -> tuple[int, str]:
    code, out, err = await cli("run", str(job), "--base-url", base, "--via", "batch",
                               "--plain", "--batch-poll-every", "0.05", "--batch-poll-max",
                               "0.05", *extra, env={"OPENAI_API_KEY": KEY})
    return code, out + err


async def test_a_batch_id_that_is_a_path_never_reaches_a_url(
        tmp_path: Path, hostile_batch: Any) -> None:
    base, seen = await hostile_batch(batch_id="../files/file-1/content")
    code, text = await _run(write_job(tmp_path / "j.jsonl", 3), base)
    assert code == 75 and "odd batch id" in text
    assert not any("content" in s for s in seen) and KEY not in text


async def test_a_redirected_upload_is_not_followed(tmp_path: Path,
                                                   hostile_batch: Any) -> None:
    base, seen = await hostile_batch(upload_status=307)
    code, text = await _run(write_job(tmp_path / "j.jsonl", 3), base)
    assert code == 1 and "not followed" in text
    assert seen == ["POST /v1/files"] and KEY not in text


async def test_an_echoed_key_and_made_up_status_stay_out_of_the_state(
        tmp_path: Path, hostile_batch: Any) -> None:
    base, _ = await hostile_batch(status="weird-KEY")
    job = write_job(tmp_path / "j.jsonl", 3)
    code, text = await _run(job, base, "--detach")
    assert code == 0, text
    code, text = await _run(job, base, "--detach")  # polls once: the odd status is kept
    assert code == 0, text
    state = (tmp_path / "j.batch" / "state.json").read_bytes()
    assert KEY.encode() not in state and b"weird-" in state
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes()
    assert orjson.loads(state)["parts"][0]["step"] == "submitted"
