"""The mock server's faults: random per-request failures, and one outage window.

Each fault is what a client meets on the real internet: a 500/503 from the API, a reset
connection, an answer that never comes, a body cut off mid-stream (the headers promised
more bytes than arrive before the connection closes), and an outage during which a load
balancer answers ``502 Bad Gateway`` in HTML or drops connections.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import itertools
import random

from aiohttp import web

from .config import MockConfig, OutageMode

__all__ = ["Fault", "Faults", "abort", "hang", "send_truncated"]

_HANG_SECONDS = 3600.0
_HANG_POLL = 0.5


class Fault(enum.IntEnum):
    """One request's fate, in the order of :class:`MockConfig`'s probabilities."""

    FAIL_500 = 0
    FAIL_503 = 1
    RESET = 2
    HANG = 3
    TRUNCATE = 4
    NONE = 5


class Faults:
    """Draws each request's :class:`Fault` and knows when the outage is on.

    Args:
        config: the probabilities and the outage window.
        rng: the server's seeded random source.
        started: the clock's reading when the server started (the outage counts from it).
    """

    def __init__(self, config: MockConfig, rng: random.Random, started: float) -> None:
        self.rng = rng
        self.cumulative = list(itertools.accumulate(
            (config.fail_500, config.fail_503, config.reset, config.hang, config.truncate)))
        self.mode = config.outage_mode
        self._pending: tuple[float, float] | None = None  # (at, for) until the first request
        if config.outage_at is None or config.outage_for <= 0:
            self.outage = (0.0, 0.0)
        elif config.outage_from_first_request:
            self.outage = (0.0, 0.0)
            self._pending = (config.outage_at, config.outage_for)
        else:
            begin = started + config.outage_at
            self.outage = (begin, begin + config.outage_for)

    def draw(self) -> Fault:
        """The fault to inject in one request (no draw at all when none are configured)."""
        if self.cumulative[-1] == 0:
            return Fault.NONE
        return Fault(bisect.bisect_right(self.cumulative, self.rng.random()))

    def outage_action(self, now: float) -> OutageMode | None:
        """During the outage, what this request gets (502 or reset); else ``None``."""
        if self._pending is not None:  # the first request: the outage's clock starts now
            at, length = self._pending
            self._pending = None
            self.outage = (now + at, now + at + length)
        begin, end = self.outage
        if not begin <= now < end:
            return None
        if self.mode is OutageMode.MIXED:
            return OutageMode.RESET if self.rng.random() < 0.5 else OutageMode.BAD_GATEWAY
        return self.mode


def abort(request: web.Request) -> web.Response:
    """Reset the connection (RST, no answer); the returned response is never sent."""
    if request.transport is not None:
        request.transport.abort()
    # The client is gone: aiohttp fails to write this and drops it quietly.
    return web.Response(status=500)


async def hang(request: web.Request) -> web.Response:
    """Answer nothing: wait up to an hour, or until the client goes away."""
    # serve() and TestServer cancel handlers on disconnect (handler_cancellation); polling
    # the transport covers runners that do not.
    for _ in range(int(_HANG_SECONDS / _HANG_POLL)):
        if request.transport is None or request.transport.is_closing():
            break
        await asyncio.sleep(_HANG_POLL)
    return web.Response(status=500)


async def send_truncated(request: web.Request, status: int, body: bytes,
                         headers: dict[str, str]) -> web.StreamResponse:
    """Send the headers with the full ``Content-Length``, half the body, then close.

    The client reads fewer bytes than promised before the connection ends, as when a
    proxy or the API dies mid-answer: aiohttp raises ``ClientPayloadError``.
    """
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        # close() (not abort()) sends what is buffered, then FIN: the half body arrives.
        request.transport.close()
    # aiohttp then finds the transport closing and writes nothing more (no error logged).
    return response
