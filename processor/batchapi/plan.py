"""Splitting a job into parts within the Batch API's limits: at most 50,000 requests and
200 MB per file, one endpoint and one model per part (and, with a queue quota, no more
enqueued tokens than it allows). Each part is a Batch input file in the work folder plus
a ``.meta.jsonl`` beside it (each request's input line, line hash, attempts, metadata,
history), so collecting a part needs neither the input nor memory for the whole job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..jobs import BadLine, Job
from .state import BatchState, PartState, meta_row

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "Limits", "Meta", "PartWriter", "iter_requests",
           "plan_parts", "read_meta", "request_line", "resubmit_part"]

MAX_REQUESTS = 50_000
#: 200 MB, the Files API's limit for purpose "batch", less a margin for the multipart
#: framing and rounding (MB or MiB: the smaller).
MAX_BYTES = 200 * 1000 * 1000 - (1 << 20)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one part may hold."""

    requests: int = MAX_REQUESTS
    bytes: int = MAX_BYTES
    tokens: int | None = None


@dataclass(slots=True)
class Meta:
    """What a part's ``.meta.jsonl`` says of one request."""

    line: int
    hashed: int
    attempts: int
    metadata: Any
    history: list[dict[str, Any]] = field(default_factory=list)


def request_line(custom_id: str, url: str, payload: bytes) -> bytes:
    """One Batch input line around an already serialised body."""
    return (b'{"custom_id":' + orjson.dumps(custom_id) + b',"method":"POST","url":'
            + orjson.dumps(url) + b',"body":' + payload + b"}\n")


class PartWriter:
    """Writes one part's input and meta files; :meth:`close` returns its state."""

    def __init__(self, folder: Path, key: str, url: str, model: str,
                 origin: str | None = None) -> None:
        self.folder, self.key, self.url, self.model, self.origin = folder, key, url, model, origin
        self.requests = self.bytes = self.tokens = 0
        self._input: IO[bytes] = open(folder / f"{key}.jsonl", "wb")
        self._meta: IO[bytes] = open(folder / f"{key}.meta.jsonl", "wb")

    def fits(self, size: int, tokens: int, limits: Limits) -> bool:
        if not self.requests:
            return True  # a part holds at least one request, whatever its size
        return (self.requests < limits.requests and self.bytes + size <= limits.bytes
                and (limits.tokens is None or self.tokens + tokens <= limits.tokens))

    def add(self, line: bytes, meta: bytes, tokens: int) -> None:
        self._input.write(line)
        self._meta.write(meta)
        self.requests += 1
        self.bytes += len(line)
        self.tokens += tokens

    def close(self) -> PartState:
        for f in (self._input, self._meta):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        return PartState(self.key, f"{self.key}.jsonl", self.url, self.model, self.requests,
                         self.bytes, self.tokens, origin=self.origin)


def plan_parts(items: Iterable[Job | BadLine], state: BatchState, folder: Path,
               prepare: Callable[[Job | BadLine], Job | None], limits: Limits,
               covered: Callable[[str], bool]) -> list[PartState]:
    """Write new parts for the ``items`` not yet in any part; return their states.

    Args:
        items: the job's requests still to answer (the resume filter applied).
        state: gives the parts their keys.
        folder: the work folder.
        prepare: serialises and costs a job, or reports it (a bad line, say) and
            returns None: the online path's own checks.
        limits: what one part may hold.
        covered: whether a custom_id is already in a part not yet collected.
    """
    open_parts: dict[tuple[str, str], PartWriter] = {}
    done: list[PartState] = []
    try:
        for item in items:
            job = prepare(item)
            if job is None or covered(job.custom_id):
                continue
            model = job.model or str(job.body.get("model") or "")
            line = request_line(job.custom_id, job.url, job.payload)
            tokens = job.prompt_tokens or job.tokens
            group = (job.url, model)
            writer = open_parts.get(group)
            if writer is not None and not writer.fits(len(line), tokens, limits):
                done.append(writer.close())
                del open_parts[group]
                writer = None
            if writer is None:
                writer = open_parts[group] = PartWriter(folder, state.new_key(), job.url, model)
            writer.add(line, meta_row(job.custom_id, job.line, job.line_hash, job.attempts,
                                      job.metadata, job.history), tokens)
    finally:
        done += [w.close() for w in open_parts.values()]
    return sorted(done, key=lambda p: p.key)


def read_meta(folder: Path, part: PartState) -> dict[str, Meta]:
    """custom_id -> :class:`Meta` of every request of ``part``."""
    out: dict[str, Meta] = {}
    with open(folder / f"{part.key}.meta.jsonl", "rb") as f:
        for raw in f:
            cid, line, hashed, attempts, metadata, history = orjson.loads(raw)
            out[cid] = Meta(line, hashed, attempts, metadata, history)
    return out


def iter_requests(folder: Path, part: PartState) -> Iterator[tuple[str, bytes]]:
    """``(custom_id, input line)`` of every request of ``part``, in order."""
    with open(folder / part.file, "rb") as f:
        for raw in f:
            head = raw[: raw.find(b',"method":')] + b"}"
            yield orjson.loads(head)["custom_id"], raw


def resubmit_part(folder: Path, state: BatchState, old: PartState,
                  chosen: dict[str, Meta]) -> PartState:
    """A new part holding ``chosen`` requests of ``old`` (their lines copied as they were),
    with their updated :class:`Meta` (attempts, history)."""
    writer = PartWriter(folder, state.new_key(), old.url, old.model, origin=old.key)
    share = old.tokens / max(old.requests, 1)
    try:
        for cid, line in iter_requests(folder, old):
            meta = chosen.get(cid)
            if meta is not None:
                writer.add(line, meta_row(cid, meta.line, meta.hashed, meta.attempts,
                                          meta.metadata, meta.history), round(share))
    finally:
        part = writer.close()
    return part
