"""Requests held for their model's counters: one line per bucket, each served by a task.

A mixed job keeps every model at its own limit at once: a request that must wait for
gpt-4o's counters waits in gpt-4o's line, and the admission loop goes on to the next
request, which gpt-4o-mini's counters may admit at once. Each line keeps its order
(first held, first sent) and is served by one task that sleeps exactly as long as the
line's head must wait, then sends it. Requests held count toward the admission loop's
bound on what it holds, so memory stays bounded however slow one model is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from ..jobs import Job
from ..stats import StopReason
from .circuit import Circuit
from .keys import Lane
from .policy import Stop

__all__ = ["HeldLines"]


class _Run(Protocol):
    @property
    def stopping(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    def halt(self, stop: Stop) -> None: ...

    def send(self, job: Job, lane: Lane) -> None: ...


class _Waits(Protocol):
    changed: asyncio.Event

    async def change(self, timeout: float | None) -> None: ...


class HeldLines:
    """The lines of held requests, by bucket.

    Args:
        run: the engine (stop state, in-flight count, sending).
        waits: the engine's waits (``changed`` is set when a held request is sent).
        capacity: waits until some key admits a request (spent there); None if stopped.
        cap: the most requests in flight now.
        circuit: the outage circuit (held requests wait while it is open), or None.
    """

    def __init__(self, run: _Run, waits: _Waits,
                 capacity: Callable[[Job], Awaitable[Lane | None]],
                 cap: Callable[[], int], circuit: Circuit | None) -> None:
        self.run = run
        self.waits = waits
        self.capacity = capacity
        self.cap = cap
        self.circuit = circuit
        self.lines: dict[str, deque[Job]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.count = 0
        self.error: BaseException | None = None

    def __len__(self) -> int:
        return self.count

    def waiting(self, bucket: str) -> bool:
        """Whether requests of ``bucket`` are held (a new one must queue behind them)."""
        return bucket in self.lines

    def hold(self, bucket: str, job: Job) -> None:
        """Hold ``job`` in its bucket's line, to be sent once the counters admit it."""
        line = self.lines.get(bucket)
        if line is None:
            line = self.lines[bucket] = deque()
            self.tasks[bucket] = asyncio.get_running_loop().create_task(self._serve(bucket, line))
        line.append(job)
        self.count += 1

    async def _slot(self) -> None:
        """Wait for a free in-flight slot, and while the server is down (the circuit open:
        only the admission loop's probes go then)."""
        run = self.run
        while not run.stopping and (run.in_flight >= self.cap() or (
                self.circuit is not None and not self.circuit.closed)):
            await self.waits.change(None)

    async def _serve(self, bucket: str, line: deque[Job]) -> None:
        run = self.run
        try:
            while line and not run.stopping:
                await self._slot()
                if run.stopping:
                    break
                lane = await self.capacity(line[0])
                if lane is None:
                    break  # stopped: what is held was never sent; a rerun picks it up
                # Spent: it goes, once a slot is free (another line may have taken it).
                await self._slot()
                if run.stopping:
                    break
                job = line.popleft()
                self.count -= 1
                run.send(job, lane)
                self.waits.changed.set()
        except Exception as exc:  # noqa: BLE001 - kept and raised by close()
            self.error = exc
            run.halt(Stop(StopReason.ERROR, f"admission failed: {type(exc).__name__}: {exc}"))
        finally:
            self.count -= len(line)
            del self.lines[bucket]
            del self.tasks[bucket]
            self.waits.changed.set()

    async def close(self) -> None:
        """End every line's task (a stopped run leaves its held requests unsent) and
        raise what one of them failed with."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.error is not None:
            raise self.error
