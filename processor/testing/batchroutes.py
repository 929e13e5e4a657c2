"""The mock server's ``/v1/files`` and ``/v1/batches`` routes (the state is
:mod:`.batchjobs`): upload, list, read and download files; create, read, list and cancel
batches, with OpenAI's shapes, statuses and error bodies. ``GET /batch-stats`` returns
the counters (uploads, creates, polls, downloads per file)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from .batchjobs import KINDS, MAX_FILE_BYTES, BatchStore, MockBatch, MockFile
from .bodies import error_body

__all__ = ["BATCHES_KEY", "add_batch_routes"]

BATCHES_KEY = web.AppKey("batches", BatchStore)
_JSON = "application/json"
_Auth = Callable[[web.Request, bool], bytes | None]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


def _error(status: int, message: str, code: str | None = None,
           param: str | None = None) -> web.Response:
    return web.Response(status=status, content_type=_JSON,
                        body=error_body(message, "invalid_request_error", code, param))


def _page(items: list[dict[str, Any]], request: web.Request, default: int) -> web.Response:
    """A list page (newest first) after the ``after`` id, at most ``limit`` items."""
    try:
        limit = int(request.query.get("limit", default))
    except ValueError:
        return _error(400, "Invalid 'limit': expected an integer.", None, "limit")
    if not 1 <= limit <= 10_000:
        return _error(400, "Invalid 'limit': out of range.", None, "limit")
    after = request.query.get("after")
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return _json({"object": "list", "data": page,
                  "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None,
                  "has_more": len(items) > limit})


class _Routes:
    def __init__(self, store: BatchStore, auth: _Auth) -> None:
        self.store = store
        self.auth = auth

    def guard(self, handler: _Handler) -> _Handler:
        """Count the call and check the key first."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            self.store.stats.call_times.append(self.store.clock())
            problem = self.auth(request, False)
            if problem is not None:
                return web.Response(status=401, body=problem, content_type=_JSON)
            return await handler(request)

        return guarded

    def _file(self, request: web.Request) -> MockFile | web.Response:
        fid = request.match_info["file_id"]
        f = self.store.files.get(fid)
        return f if f is not None else _error(404, f"No such File object: {fid}", None, "id")

    def _batch(self, request: web.Request) -> MockBatch | web.Response:
        bid = request.match_info["batch_id"]
        b = self.store.batches.get(bid)
        return b if b is not None else _error(404, f"No batch found with id '{bid}'.", None,
                                              "batch_id")

    async def upload(self, request: web.Request) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/"):
            return _error(400, "Expected a multipart/form-data body.")
        purpose = filename = None
        data = bytearray()
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or "upload.jsonl"
                while chunk := await part.read_chunk(1 << 16):
                    data += chunk
                    if len(data) > MAX_FILE_BYTES:
                        return _error(413, "File is larger than the 200 MB limit of purpose "
                                      "'batch'.", "file_too_large", "file")
        if purpose is None or filename is None:
            name = "purpose" if purpose is None else "file"
            return _error(400, f"Missing required parameter: '{name}'.",
                          "missing_required_parameter", name)
        if purpose not in ("batch", "fine-tune", "assistants", "vision", "user_data"):
            return _error(400, f"Invalid value for 'purpose': '{purpose}'.", None, "purpose")
        self.store.stats.uploads += 1
        return _json(self.store.add_file(filename, purpose, bytes(data)).shape())

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        purpose = request.query.get("purpose")
        files = [f.shape() for f in reversed(self.store.files.values())
                 if purpose in (None, f.purpose)]
        self.store.stats.lists += 1
        return _page(files, request, 10_000)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        f = self._file(request)
        return f if isinstance(f, web.Response) else _json(f.shape())

    async def content(self, request: web.Request) -> web.StreamResponse:
        f = self._file(request)
        if isinstance(f, web.Response):
            return f
        downloads = self.store.stats.downloads
        downloads[f.id] = downloads.get(f.id, 0) + 1
        return web.Response(body=f.data, content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.StreamResponse:
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(data.get(name), str):
                return _error(400, f"Missing required parameter: '{name}'.",
                              "missing_required_parameter", name)
        if data["completion_window"] != "24h":
            return _error(400, "Invalid value for 'completion_window': only '24h' is "
                          "supported.", "invalid_value", "completion_window")
        if data["endpoint"] not in KINDS:
            return _error(400, f"Invalid value for 'endpoint': '{data['endpoint']}'.",
                          "invalid_value", "endpoint")
        metadata = data.get("metadata")
        if metadata is not None and not (
                isinstance(metadata, dict) and len(metadata) <= 16
                and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                        and len(v) <= 512 for k, v in metadata.items())):
            return _error(400, "Invalid 'metadata': at most 16 string pairs (keys up to 64, "
                          "values up to 512 characters).", "invalid_value", "metadata")
        f = self.store.files.get(data["input_file_id"])
        if f is None or f.purpose != "batch":
            return _error(400, f"Invalid 'input_file_id': '{data['input_file_id']}'.",
                          "invalid_value", "input_file_id")
        made = self.store.create(f, data["endpoint"], metadata)
        if isinstance(made, tuple):
            self.store.stats.creates_refused += 1
            return _error(400, made[1], made[0])
        self.store.stats.creates += 1
        return _json(self.store.shape(made))

    async def get_batch(self, request: web.Request) -> web.StreamResponse:
        b = self._batch(request)
        if isinstance(b, web.Response):
            return b
        self.store.stats.polls += 1
        return _json(self.store.shape(b))

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        b = self._batch(request)
        if isinstance(b, web.Response):
            return b
        self.store.stats.cancels += 1
        self.store.cancel(b)
        return _json(self.store.shape(b))

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        self.store.stats.lists += 1
        items = [self.store.shape(b) for b in reversed(self.store.batches.values())]
        return _page(items, request, 20)

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return _json(self.store.stats.to_dict())


def add_batch_routes(app: web.Application, store: BatchStore, auth: _Auth) -> None:
    """Register the Files and Batches routes on ``app`` (``app[BATCHES_KEY]``: the store)."""
    routes = _Routes(store, auth)
    app[BATCHES_KEY] = store
    g = routes.guard
    app.router.add_post("/v1/files", g(routes.upload))
    app.router.add_get("/v1/files", g(routes.list_files))
    app.router.add_get("/v1/files/{file_id}", g(routes.get_file))
    app.router.add_get("/v1/files/{file_id}/content", g(routes.content))
    app.router.add_post("/v1/batches", g(routes.create))
    app.router.add_get("/v1/batches", g(routes.list_batches))
    app.router.add_get("/v1/batches/{batch_id}", g(routes.get_batch))
    app.router.add_post("/v1/batches/{batch_id}/cancel", g(routes.cancel))
    app.router.add_get("/batch-stats", routes.stats)
