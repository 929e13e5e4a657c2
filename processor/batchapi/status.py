"""The ``batches`` command's work: a row per part, a fresh look at the running batches,
and cancelling them. None of it writes the state file (a run may hold it): the next run
sees the new statuses when it polls, and collects what cancelled batches answered."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..client.files import FilesAPI
from ..limits.limiter import Limiter
from ..run.config import JobConfig
from .calls import BatchCalls
from .driver import CANCELLED
from .run import batch_client
from .state import BatchState, PartState

__all__ = ["cancel_running", "refresh", "rows"]


def rows(state: BatchState) -> list[dict[str, Any]]:
    """One dict per part: part, model, requests, step, batch, status, counts, note."""
    return [{"part": p.key, "model": p.model, "requests": p.requests, "step": p.step,
             "batch": p.batch_id, "status": p.status,
             "completed": p.counts.get("completed"), "failed": p.counts.get("failed"),
             "note": p.note or ""} for p in state.parts]


def _calls(state: BatchState, cfg: JobConfig) -> tuple[BatchCalls, Any]:
    client = batch_client(cfg)
    limiter = Limiter.per_minute(cfg.rpm, None)
    return BatchCalls(FilesAPI(client), limiter, state), client


async def refresh(state: BatchState, cfg: JobConfig) -> None:
    """Poll each running batch once (the state in memory only)."""
    calls, client = _calls(state, cfg)
    async with client:
        for part in state.parts:
            if part.active and part.batch_id:
                _update(part, await calls.poll(part.batch_id))


async def cancel_running(state: BatchState, cfg: JobConfig,
                         folder: Path) -> list[tuple[PartState, str]]:
    """Cancel every batch of ``state`` not yet ended; return each part with its new status.

    Each batch id is noted in ``folder``'s :data:`~.driver.CANCELLED` first: the run that
    collects it keeps what it answered and does not resubmit the rest (a later run sends
    it).
    """
    calls, client = _calls(state, cfg)
    done: list[tuple[PartState, str]] = []
    async with client:
        for part in state.parts:
            if part.active and part.batch_id:
                _note_cancel(folder, part.batch_id)
                batch = await calls.cancel(part.batch_id)
                _update(part, batch)
                done.append((part, str(batch.get("status"))))
    return done


def _update(part: PartState, batch: dict[str, Any]) -> None:
    part.status = str(batch.get("status"))
    counts = batch.get("request_counts")
    if isinstance(counts, dict):
        part.counts = {k: v for k, v in counts.items() if isinstance(v, int)}


def _note_cancel(folder: Path, batch_id: str) -> None:
    """Note ``batch_id`` in the cancelled list (before the cancel is sent)."""
    with open(folder / CANCELLED, "a") as f:
        f.write(batch_id + "\n")
        f.flush()
        os.fsync(f.fileno())
