"""The driver: upload and create each part (within the enqueued-token quota), poll the
batches with a growing interval, and collect each one as it ends. Every step's intent is
recorded in the state file before the step is taken (see :mod:`.state`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import APIError, BadRequest, ServerError
from ..stats import Stats
from .calls import BatchCalls, is_queue_full
from .collect import Collector
from .plan import resubmit_part
from .quota import quota_of, split_part, too_big
from .runlog import BatchEvents
from .state import FINAL, BatchState, PartState, drop_files

__all__ = ["CANCELLED", "BatchConfig", "Driver", "cancelled_by_user"]

#: the file in the work folder listing the batches ``batches --cancel`` cancelled.
CANCELLED = "cancelled.txt"


def cancelled_by_user(folder: Path) -> set[str]:
    """The batch ids the user cancelled (``batches --cancel``)."""
    try:
        return set((folder / CANCELLED).read_text().split())
    except FileNotFoundError:
        return set()

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchConfig:
    """How a job goes through the Batch API (the ``run --via batch`` flags).

    Attributes:
        queue_tokens: enqueued tokens per model to stay under (None: learned from
            the server's refusals).
        poll_every / poll_max: the first poll interval, doubled after each round to
            ``poll_max`` seconds.
        detach: submit (and collect what has ended) and return, without waiting.
        fallback_online: send the requests of expired, failed or cancelled batches
            online instead of in a new part.
        part_requests: the most requests per part (the API's limit: 50,000).
    """

    queue_tokens: int | None = None
    poll_every: float = 5.0
    poll_max: float = 300.0
    detach: bool = False
    fallback_online: bool = False
    part_requests: int = 50_000


def count_lost(part: PartState, max_attempts: int) -> None:
    """Count a batch of ``part`` the server no longer knows; after ``max_attempts`` of
    them, stop (resumable) rather than upload the part yet again.

    Raises:
        ServerError: ``part`` lost that many batches (the caller saves the count).
    """
    part.lost += 1
    if part.lost >= max(max_attempts, 1):
        raise ServerError(
            f"part {part.key}: {part.lost} of its batches were not found when polled "
            f"(the last {part.batch_id}); not submitting it again (a key of another "
            "organisation or project sees none of this job's batches: use the key that "
            "made them)")


class Driver:
    """Moves every part of the state to ``done`` (or, detached, as far as it can now)."""

    #: the run log's view of the waits (set by the run; default: none).
    events: BatchEvents = BatchEvents()

    def __init__(self, state: BatchState, folder: Path, calls: BatchCalls,
                 collector: Collector, config: BatchConfig, stats: Stats,
                 on_progress: Callable[[Stats], None] | None = None) -> None:
        self.state = state
        self.folder = folder
        self.calls = calls
        self.collector = collector
        self.config = config
        self.stats = stats
        self.on_progress = on_progress
        self.stop = asyncio.Event()
        #: models whose creates wait for one of our batches of that model to end.
        self._blocked: set[str] = set()
        #: requests of batches the user cancelled (``batches --cancel``), left unsent.
        self.left = 0

    @property
    def path(self) -> Path:
        return self.folder / "state.json"

    def save(self) -> None:
        self.state.save(self.path)

    async def run(self) -> None:
        """Submit, poll and collect until every part is done, stopped, or (detached)
        everything that can be submitted now is."""
        interval = self.config.poll_every
        for part in self.state.parts:  # batches an earlier run created: waited for now
            if part.active:
                self.events.batch_waits(part)
        while not self.stop.is_set():
            created = await self.submit_ready()
            active = [p for p in self.state.parts if p.active]
            if self.stop.is_set() or not (active or any(p.pending for p in self.state.parts)):
                return
            if self.config.detach:  # one look at what was there before, then go
                due = [p for p in active if p.key not in created]
                if due:
                    await self.poll(due)
                    await self.submit_ready()
                return
            if created:
                interval = self.config.poll_every
            if not await self._sleep(interval):
                return
            interval = min(interval * 2, self.config.poll_max)
            active = [p for p in self.state.parts if p.active]
            if active:
                await self.poll(active)
            # A model with none of our batches left: try its waiting parts again.
            self._blocked &= {p.model for p in self.state.parts if p.active}

    async def _sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless stopped first; False if stopped."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return True
        return False

    # -- submitting ------------------------------------------------------------------

    async def submit_ready(self) -> set[str]:
        """Upload every pending part; create the batches the quota has room for.
        Returns the keys of the parts whose batches were created now."""
        created: set[str] = set()
        for part in self.state.parts:
            if self.stop.is_set():
                break
            if part.pending and part.file_id is None:
                await self._upload(part)
        for part in list(self.state.parts):  # a part split here adds parts: next round
            if self.stop.is_set():
                break
            if part.pending and part.file_id is None:
                continue  # split from a part too big just now: uploaded next round
            if part.pending and part.model not in self._blocked and self._room(part):
                if await self._create(part):
                    created.add(part.key)
            elif part.pending and part.file_id is not None:
                limit = self.config.queue_tokens or self.state.queue_tokens.get(part.model)
                self.events.queue_waits(part, self.state.enqueued(part.model), limit)
        return created

    def _filename(self, part: PartState) -> str:
        return f"{self.state.job[:120]}.{self.state.run_id}.{part.key}.jsonl"

    async def _upload(self, part: PartState) -> None:
        name = self._filename(part)
        if part.step == "uploading":  # a crash after the intent: was it uploaded?
            found = await self.calls.find_file(name, part.bytes)
            if found is not None:
                part.file_id, part.step = found, "uploaded"
                self.save()
                return
        part.step, part.intent_at = "uploading", time.time()
        self.save()
        uploaded = await self.calls.upload(self.folder / part.file, name)
        part.file_id, part.step = str(uploaded["id"]), "uploaded"
        self.save()

    def _room(self, part: PartState) -> bool:
        limit = self.config.queue_tokens or self.state.queue_tokens.get(part.model)
        enqueued = self.state.enqueued(part.model)
        # With nothing of ours enqueued, try anyway: nothing of ours can make room.
        return limit is None or enqueued == 0 or enqueued + part.tokens <= limit

    def _metadata(self, part: PartState) -> dict[str, str]:
        return {"batchproc_job": self.state.job[:500],
                "batchproc_part": f"{self.state.run_id}.{part.key}.{part.gen}"}

    async def _create(self, part: PartState) -> bool:
        meta = self._metadata(part)
        if part.step == "creating":  # a crash after the intent: was it created?
            found = await self.calls.find_batch(meta["batchproc_part"], part.intent_at)
            if found is not None:
                self._submitted(part, found)
                return True
        part.step, part.intent_at = "creating", time.time()
        self.save()
        assert part.file_id is not None
        try:
            batch = await self.calls.create(part.file_id, part.url, meta)
        except APIError as exc:
            if not is_queue_full(exc):
                raise
            if not await self._queue_full(part, exc.message):
                part.step = "uploaded"
                self.save()
            return False
        self._submitted(part, batch)
        return True

    def _submitted(self, part: PartState, batch: dict[str, Any]) -> None:
        part.batch_id, part.step, part.note = str(batch["id"]), "submitted", None
        part.status = str(batch.get("status") or "validating")
        self.stats.attempts += part.requests
        self.save()
        self.events.queue_room(part)
        self.events.batch_waits(part)

    async def _queue_full(self, part: PartState, message: str) -> bool:
        """The enqueued-token quota refused ``part``: learn it, wait for room; or, if
        the part alone passes it, split it (True: ``part`` is done, split)."""
        stated = quota_of(message)
        enqueued = self.state.enqueued(part.model)
        limit = stated or enqueued or part.tokens
        if self.config.queue_tokens is None:
            self.state.queue_tokens[part.model] = limit
        if too_big(part, stated, enqueued - (part.tokens if part.active else 0)):
            new = await asyncio.to_thread(split_part, self.folder, self.state, part, limit)
            self.save()
            drop_files(self.folder, part)
            self.events.queue_room(part)
            self.events.split(part, new, limit)
            return True
        part.note = f"waiting for queue room ({enqueued:,} of {limit:,} tokens enqueued)"
        self._blocked.add(part.model)
        self.events.queue_waits(part, enqueued, limit)
        log.info("part %s: enqueued-token quota for %s full; waiting for room", part.key,
                 part.model)
        return False

    # -- polling and collecting ------------------------------------------------------

    async def poll(self, parts: list[PartState]) -> None:
        for part in parts:
            if self.stop.is_set():
                return
            assert part.batch_id is not None
            try:
                batch = await self.calls.poll(part.batch_id)
            except BadRequest as exc:
                if exc.status != 404:
                    raise
                # The batch is gone (deleted, another organisation's key): its requests
                # go again in a new batch of the same part, uploaded again if need be.
                log.warning("part %s: batch %s not found; submitting the part again",
                            part.key, part.batch_id)
                self.events.batch_ended(part, "not found")
                try:
                    count_lost(part, self.collector.policy.max_attempts)
                finally:
                    self.save()
                part.note = f"batch {part.batch_id} not found: submitted again"
                part.step, part.file_id, part.batch_id = "planned", None, None
                part.status, part.gen = None, part.gen + 1
                continue
            part.status = str(batch.get("status"))
            counts = batch.get("request_counts")
            if isinstance(counts, dict):
                part.counts = {k: v for k, v in counts.items() if isinstance(v, int)}
            if part.status in FINAL:
                await self.finish(part, batch)
        self.save()
        if self.on_progress is not None:
            self.on_progress(self.stats)

    async def finish(self, part: PartState, batch: dict[str, Any]) -> None:
        """Collect an ended batch; resubmit what it left unanswered."""
        errors = batch.get("errors")
        entries = errors.get("data") if isinstance(errors, dict) else None
        if (part.status == "failed" and isinstance(entries, list) and entries
                and all(isinstance(e, dict) and is_queue_full(e) for e in entries)):
            # Refused for the quota after creation: the same file, a new batch later.
            self.events.batch_ended(part, "failed", why="queue full")
            if not await self._queue_full(part, str(entries[0].get("message") or "")):
                part.step, part.batch_id, part.gen = "uploaded", None, part.gen + 1
                self.save()
            return
        files: list[Path] = []
        for kind in ("output_file_id", "error_file_id"):
            file_id = batch.get(kind)
            if isinstance(file_id, str) and file_id:
                dest = self.folder / f"{part.key}.g{part.gen}.{kind[:-8]}.jsonl"
                if not dest.exists():  # a complete earlier download is kept
                    await self.calls.download(file_id, dest)
                files.append(dest)
        by_user = part.batch_id in cancelled_by_user(self.folder)
        got = await asyncio.to_thread(self.collector.collect, part, batch, files, not by_user)
        self.events.batch_ended(part, part.status)
        new: PartState | None = None
        if got.again and by_user:
            # The user's cancel: what ran is kept, the rest waits for the next run.
            self.left += len(got.again)
        elif got.again:
            new = await asyncio.to_thread(resubmit_part, self.folder, self.state, part,
                                          got.again)
            if self.config.fallback_online:
                new.step = "online"
                self.state.online.append(new.key)
        part.step = "done"
        part.note = (f"{got.answered:,} ok, {got.failed:,} failed, {got.retried:,} retry, "
                     f"{got.unanswered:,} unanswered" + (f" -> {new.key}" if new else ""))
        if new is not None:
            self.state.parts.append(new)
        self._blocked.discard(part.model)
        self.save()
        for path in files:
            path.unlink(missing_ok=True)
        drop_files(self.folder, part)
        log.info("part %s (%s): %s", part.key, part.status, part.note)
