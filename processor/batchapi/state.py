"""The state file of a job run through the Batch API: each part, its file and batch ids,
its step and its batch's status, written atomically *before* each step takes effect.

A part moves ``planned`` -> ``uploading`` -> ``uploaded`` -> ``creating`` ->
``submitted`` -> ``done``. ``uploading`` and ``creating`` are intents: a run that finds
one on resume looks on the server (the file by its name, the batch by its metadata)
before doing the step again, so a crash between the call and its record never uploads a
part twice or creates a second batch for it.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError, OutputError

__all__ = ["FINAL", "STATE_VERSION", "BatchState", "PartState", "drop_files", "meta_row",
           "save_atomic", "work_dir"]

STATE_VERSION = 1
#: batch statuses after which nothing changes.
FINAL = ("completed", "expired", "failed", "cancelled")


def work_dir(results: Path) -> Path:
    """The work folder beside the results: ``x.results.jsonl`` -> ``x.batch/``."""
    name = results.name
    for suffix in (".results.jsonl", ".jsonl"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return results.with_name(name + ".batch")


@dataclass(slots=True)
class PartState:
    """One part of the job: a Batch input file and the batch made of it.

    Attributes:
        key: ``p0001``..., unique within the job.
        file: the part's Batch input file, in the work folder (``<key>.jsonl``; its
            ``<key>.meta.jsonl`` holds each request's line, hash and attempts).
        url / model: the endpoint and model of every request in it.
        requests / bytes / tokens: its size; ``tokens``: the prompt tokens it enqueues.
        step: see the module docstring.
        gen: the batch generation (a new batch of the same file after a refused one).
        intent_at: wall time of the last intent (bounds the search on resume).
        origin: the part whose unanswered requests this one resubmits.
        lost: its batches the server no longer knew (404 when polled).
    """

    key: str
    file: str
    url: str
    model: str
    requests: int
    bytes: int
    tokens: int
    step: str = "planned"
    gen: int = 1
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    intent_at: float = 0.0
    origin: str | None = None
    note: str | None = None
    lost: int = 0

    @property
    def active(self) -> bool:
        """A batch exists and has not ended."""
        return self.step == "submitted"

    @property
    def pending(self) -> bool:
        """Not yet submitted (waits for upload, create, or queue room)."""
        return self.step in ("planned", "uploading", "uploaded", "creating")


@dataclass(slots=True)
class BatchState:
    """Everything a rerun needs to pick up a Batch API run where it was.

    Attributes:
        job: the job's name (the input file's), shown in batch metadata.
        run_id: random, in file names and metadata: tells this job's batches from others'.
        parts: every part, in order.
        next_part: the number of the next part's key.
        queue_tokens: enqueued-token quotas learned per model from refusals.
        calls: API calls made, by kind (uploads, creates, polls, downloads, cancels, lists).
        online: part keys whose requests go online (``--fallback-online``) and are not
            all done yet.
    """

    job: str
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    version: int = STATE_VERSION
    created_at: float = field(default_factory=time.time)
    parts: list[PartState] = field(default_factory=list)
    next_part: int = 1
    queue_tokens: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    online: list[str] = field(default_factory=list)

    def new_key(self) -> str:
        key = f"p{self.next_part:04d}"
        self.next_part += 1
        return key

    def count(self, kind: str) -> None:
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def part(self, key: str) -> PartState:
        return next(p for p in self.parts if p.key == key)

    def enqueued(self, model: str) -> int:
        """Tokens of this job's active batches of ``model``."""
        return sum(p.tokens for p in self.parts if p.active and p.model == model)

    @property
    def finished(self) -> bool:
        return all(p.step == "done" for p in self.parts) and not self.online

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes, where: Path) -> BatchState:
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}"
                                 if isinstance(data, dict) else "not an object")
            known = {f.name for f in fields(PartState)}
            parts = [PartState(**{k: v for k, v in p.items() if k in known})
                     for p in data.pop("parts")]
            for part in parts:  # its files are named by its key: never another path
                if not re.fullmatch(r"p\d{4,9}", part.key) or part.file != f"{part.key}.jsonl":
                    raise ValueError(f"odd part {part.key!r}")
            top = {f.name for f in fields(cls)}
            return cls(parts=parts, **{k: v for k, v in data.items() if k in top})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{where}: not a batchproc batch state file ({exc}); move the "
                              "folder aside to start over") from None

    @classmethod
    def load(cls, path: Path) -> BatchState | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return cls.from_json(raw, path)

    def save(self, path: Path) -> None:
        """Write atomically: a temporary file, fsynced, renamed over the old one, and the
        folder fsynced, so a crash leaves the old state or the new one, never a mix."""
        save_atomic(path, self.to_json())


def save_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp + fsync + rename + folder fsync)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(path, exc) from exc


def meta_row(custom_id: str, line: int, hashed: int, attempts: int, metadata: Any,
             history: list[dict[str, Any]]) -> bytes:
    """One line of a part's ``.meta.jsonl``: what the online path keeps in a Job."""
    return orjson.dumps([custom_id, line, hashed, attempts, metadata, history]) + b"\n"


def drop_files(folder: Path, part: PartState) -> None:
    """Remove a done part's input and meta files (recorded as done first: nothing reads
    them again)."""
    for name in (f"{part.key}.jsonl", f"{part.key}.meta.jsonl"):
        (folder / name).unlink(missing_ok=True)
