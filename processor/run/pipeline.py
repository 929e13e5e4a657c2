"""``stream_results``: the engine for data pipelines, requests in and records out.

No files: requests come from any iterable (dicts in either input shape, or JSON
lines), and each result or error record is yielded as soon as it is final, in
completion order. Memory stays bounded: the engine pulls requests only as capacity
allows, and a full output queue holds the engine back until the caller reads on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import orjson

from ..errors import JobFormatError
from ..jobs import BadLine, Job, parse_line
from ..stats import Stats
from .config import JobConfig
from .parts import build_parts

__all__ = ["stream_results"]

_DONE = object()


class _QueueSink:
    """A sink that hands records to the caller through a bounded queue."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.queue = queue

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None:
        self.queue.put_nowait(record)

    def write_error(self, record: dict[str, Any]) -> None:
        self.queue.put_nowait(record)

    def maybe_sync(self) -> None:
        pass


def _jobs(requests: Iterable[Mapping[str, Any] | bytes | str], endpoint: str
          ) -> Iterator[Job | BadLine]:
    for number, request in enumerate(requests, 1):
        raw = request if isinstance(request, bytes) else (
            request.encode() if isinstance(request, str) else orjson.dumps(request))
        try:
            yield parse_line(raw, number, endpoint)
        except JobFormatError as exc:
            yield BadLine(number, exc.message)


async def stream_results(
    requests: Iterable[Mapping[str, Any] | bytes | str],
    config: JobConfig | None = None,
    *,
    stats: Stats | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Send ``requests`` under ``config``'s limits; yield each record once final.

    Args:
        requests: request bodies or Batch API lines (dicts, or JSON text). A request's
            ``custom_id`` names it, else ``line-<N>`` by its 1-based position.
        config: limits and client settings (the ``run`` command's).
        stats: live counters to update (a fresh :class:`Stats` if not given).

    Yields:
        Records in the OpenAI Batch output shape: results (``error`` is None) and final
        failures (``error`` says why), in completion order.

    To stop early, close the generator (``async with contextlib.aclosing(...)``, or
    ``await gen.aclose()``): the run then stops admitting and abandons what is in
    flight. A ``break`` alone leaves that to the garbage collector.
    """
    cfg = config or JobConfig()
    parts = build_parts(cfg)
    # Records wait in the queue for the reader; while more than ``max_in_flight`` wait,
    # no new request is taken, so a slow reader holds the engine back.
    queue: asyncio.Queue[Any] = asyncio.Queue()
    room = asyncio.Event()
    room.set()

    async def wait_for_room() -> None:
        while queue.qsize() >= cfg.max_in_flight and not engine.stopping:
            room.clear()
            await room.wait()

    cache = await asyncio.to_thread(parts.open_cache)  # None without cache_path
    async with contextlib.AsyncExitStack() as stack:
        if cache is not None:
            stack.push_async_callback(asyncio.to_thread, cache.close)
        client = await stack.enter_async_context(parts.client())
        await stack.enter_async_context(parts.limits())
        engine = parts.engine(client, _QueueSink(queue), stats=stats or Stats(),
                              before_admit=wait_for_room, cache=cache)

        async def run() -> None:
            try:
                await engine.run(_jobs(requests, cfg.endpoint))
            finally:
                queue.put_nowait(_DONE)

        task = asyncio.create_task(run())
        try:
            while (item := await queue.get()) is not _DONE:
                room.set()
                yield item
            await task
        finally:
            if not task.done():  # the caller stopped reading: wind the run down
                engine.stop("the caller stopped reading")
                engine.abandon_in_flight()
                room.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
