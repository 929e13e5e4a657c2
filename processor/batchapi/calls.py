"""The Batch API's calls, each admitted by the run's limiter (every call counts against
RPM), counted in the state, and retried on failures worth retrying (429, 5xx, resets)
with the run's backoff. A refusal no retry can fix is raised to the driver."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ..client.answers import Response
from ..client.files import FilesAPI
from ..client.masking import Masker
from ..errors import APIError, RateLimited, RetryableAPIError, ServerError
from ..limits.limiter import Limiter
from ..run.retry import RetryPolicy, server_hint
from .runlog import BatchEvents
from .state import BatchState

__all__ = ["BatchCalls", "is_queue_full", "safe_id"]

log = logging.getLogger(__name__)
T = TypeVar("T")
#: attempts per call before the error goes to the driver.
CALL_ATTEMPTS = 6


def is_queue_full(exc: APIError | dict[str, Any]) -> bool:
    """Whether an error (a refused create, or a failed batch's error entry) is the
    enqueued-token quota (``token_limit_exceeded``, "Enqueued token limit reached")."""
    if isinstance(exc, APIError):
        code, message = exc.code, exc.message
    else:
        code, message = exc.get("code"), str(exc.get("message") or "")
    return code == "token_limit_exceeded" or "enqueued token limit" in message.lower()


class BatchCalls:
    """Upload, create, poll, list, download and cancel, under the limiter.

    Args:
        api: the Files / Batches calls.
        limiter: the run's limiter (``--rpm`` and what the server says).
        state: where calls are counted (kinds: uploads, creates, polls, lists,
            downloads, cancels).
        policy: attempts and backoff between them.
        sleep: injected for tests.
    """

    #: the run log's view of the waits (set by the run; default: none).
    events: BatchEvents = BatchEvents()

    def __init__(self, api: FilesAPI, limiter: Limiter, state: BatchState,
                 policy: RetryPolicy | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.api = api
        self.limiter = limiter
        self.state = state
        self.policy = policy or RetryPolicy(CALL_ATTEMPTS, base=1.0, cap=30.0)
        self.sleep = sleep

    def _obj(self, resp: Response) -> dict[str, Any]:
        return _object(resp, self.api.client.masker)

    async def _admit(self) -> None:
        while (wait := self.limiter.try_acquire(0)) > 0:
            self.events.limits_wait(wait)
            await self.sleep(wait)

    async def _call(self, kind: str, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            attempt += 1
            await self._admit()
            self.state.count(kind)
            try:
                return await call()
            except RetryableAPIError as exc:
                if isinstance(exc, RateLimited):
                    self.limiter.rate_limited(server_hint(exc))
                if attempt >= max(self.policy.max_attempts, 1):
                    raise
                delay = self.policy.delay(exc, attempt)
                log.info("%s failed (%s); again in %.1fs", kind, exc.message, delay)
                self.events.call_retry(kind, exc.kind, delay, isinstance(exc, RateLimited))
                await self.sleep(delay)

    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        resp = await self._call("uploads", lambda: self.api.upload(path, filename))
        made = self._obj(resp)
        safe_id(made.get("id"), "file")
        return made

    async def create(self, file_id: str, endpoint: str,
                     metadata: dict[str, str]) -> dict[str, Any]:
        payload = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h",
                   "metadata": metadata}
        made = self._obj(await self._call("creates",
                                          lambda: self.api.post("/v1/batches", payload)))
        safe_id(made.get("id"), "batch")
        return made

    async def poll(self, batch_id: str) -> dict[str, Any]:
        batch_id = safe_id(batch_id, "batch")
        return self._obj(await self._call("polls",
                                          lambda: self.api.get(f"/v1/batches/{batch_id}")))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        batch_id = safe_id(batch_id, "batch")
        return self._obj(await self._call(
            "cancels", lambda: self.api.post(f"/v1/batches/{batch_id}/cancel")))

    async def download(self, file_id: str, dest: Path) -> int:
        file_id = safe_id(file_id, "file")
        return await self._call("downloads", lambda: self.api.download(
            f"/v1/files/{file_id}/content", dest))

    async def find_file(self, filename: str, size: int) -> str | None:
        """The id of an uploaded batch file named ``filename`` of ``size`` bytes, if any."""
        after: str | None = None
        for _ in range(100):  # at most 100 pages
            params = {"purpose": "batch", "limit": "1000", "order": "desc"}
            if after:
                params["after"] = after
            page = self._obj(await self._call("lists", partial(self.api.get, "/v1/files",
                                                             params)))
            for f in _items(page):
                if f.get("filename") == filename and f.get("bytes") == size:
                    return safe_id(f.get("id"), "file")
            if not page.get("has_more") or not page.get("last_id"):
                return None
            after = str(page["last_id"])
        return None

    async def find_batch(self, part_key: str, since: float) -> dict[str, Any] | None:
        """The batch whose metadata names ``part_key``, looking back to ``since`` (wall
        time, seconds) in the newest-first list."""
        after: str | None = None
        for _ in range(1000):
            params = {"limit": "100"}
            if after:
                params["after"] = after
            page = self._obj(await self._call("lists", partial(self.api.get, "/v1/batches",
                                                             params)))
            items = _items(page)
            for b in items:
                meta = b.get("metadata")
                if isinstance(meta, dict) and meta.get("batchproc_part") == part_key:
                    safe_id(b.get("id"), "batch")
                    return b
            oldest = items[-1].get("created_at") if items else None
            if (not page.get("has_more") or not page.get("last_id")
                    or (isinstance(oldest, (int, float)) and oldest < since - 300)):
                return None
            after = str(page["last_id"])
        return None


_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def safe_id(value: object, what: str) -> str:
    """An id the server gave, checked before it goes into a URL or a file: letters,
    digits, ``_`` and ``-`` only (never ``../``, ``?``, ``#``, a host)."""
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    raise ServerError(f"the server gave an odd {what} id: {str(value)[:80]!r}")


def _object(resp: Response, masker: Masker) -> dict[str, Any]:
    """The answer's JSON object, with anything secret in it masked (a hostile server
    could echo the key into a status or a message that the state file keeps)."""
    body = resp.body
    if not isinstance(body, dict):
        raise ServerError("the answer is not a JSON object", status=resp.status)
    masked = masker.tree(body) if masker else body
    return masked if isinstance(masked, dict) else body


def _items(page: dict[str, Any]) -> list[dict[str, Any]]:
    data = page.get("data")
    return [x for x in data if isinstance(x, dict)] if isinstance(data, list) else []
