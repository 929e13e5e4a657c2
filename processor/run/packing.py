"""The engine's side of packing (``--pack``): a stage between reading lines and admission
that sends consecutive packable requests as one, and splits a pack whose failure
points at one of its inputs.

:class:`Packer` reads the source, readies each line as usual (a bad line is reported on
its own) and cuts the requests into packs with :class:`~processor.cost.packing.Packs`;
a pack of two or more goes as one :class:`PackedJob`, admitted once (one request
against RPM) for the sum of its parts' tokens (against TPM). It holds one pack at most:
a partial pack goes as soon as a line does not match it, a line goes alone, or the
input ends (reading never waits in batchproc: lines come from a file or an iterable).

A packed request that fails in a way that may be one input's fault (a 400, 413 or 422
naming no other parameter, a request too large, an answer over ``--max-response-mb``, or
an answer whose items cannot be matched to the inputs) is split in halves, each admitted
and charged again, down to single lines sent as written: one bad input costs only its
own line, which gets the server's own message. A failure of the whole request (429, 5xx,
a timeout, a wrong key or model) goes through the retry policy as one request; written
off, each line gets its own error record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from ..cost.packing import Packs, pack_field
from ..errors import APIError, BadRequest, ResponseTooLarge, ServerError
from ..jobs import BadLine, Job
from ..limits.counter import Unit
from ..stats import Stats
from .keys import Lane

if TYPE_CHECKING:
    from .admission import Stage

__all__ = ["PackedJob", "Packer", "UnmappedAnswer", "parts_of", "split_pack"]

log = logging.getLogger(__name__)

#: statuses of a refusal that may be one input's fault (with no other ``param`` named).
_INPUT_STATUSES = (400, 413, 422)


@dataclass(slots=True)
class PackedJob(Job):
    """Several requests sent as one; ``parts`` are the lines, in the list's order, and
    ``counts`` their exact prompt tokens where known (how usage is shared out)."""

    parts: list[Job] = field(default_factory=list)
    counts: list[int | None] = field(default_factory=list)


class UnmappedAnswer(ServerError):
    """A 2xx answer to a packed request whose items do not match its inputs one to one."""


def packed_job(parts: list[Job], counts: list[int | None] | None = None) -> PackedJob:
    """One request carrying ``parts`` (all with the same pack key); costs their sum."""
    first = parts[0]
    name = pack_field(first.url)
    assert name is not None and len(parts) > 1
    body = dict(first.body)
    body[name] = [part.body[name] for part in parts]
    job = PackedJob(custom_id=f"{first.custom_id} (+{len(parts) - 1} packed)", line=first.line,
                    url=first.url, body=body, model=first.model, parts=parts,
                    counts=counts or [None] * len(parts))
    job.payload = orjson.dumps(body)
    job.tokens = sum(part.tokens for part in parts)
    job.prompt_tokens = sum(part.prompt_tokens for part in parts)
    return job


def _inherit(part: Job, pack: Job) -> Job:
    """``part`` as its pack left it: the pack's history, and its model if it fell back."""
    part.history = list(pack.history)
    part.attempts = 0
    if pack.fallback_from is not None and part.model != pack.model:
        part.fallback_from, part.model = pack.fallback_from, pack.model
        part.body = dict(part.body, model=pack.model)
        part.payload = orjson.dumps(part.body)
    return part


def parts_of(job: Job) -> list[Job]:
    """The lines ``job`` carries (itself, if it is not a pack), each with the pack's
    attempts and history (for their error records)."""
    if not isinstance(job, PackedJob):
        return [job]
    out = []
    for part in job.parts:
        _inherit(part, job)
        part.attempts = job.attempts
        out.append(part)
    return out


def points_at_input(exc: APIError) -> bool:
    """Whether a packed request's failure may be the fault of one of its inputs."""
    if isinstance(exc, (UnmappedAnswer, ResponseTooLarge)):  # halves answer in less
        return True
    if not isinstance(exc, BadRequest):
        return False
    if exc.code == "request_too_large":  # a 429 "Request too large": more than a limit
        return True
    if exc.status not in _INPUT_STATUSES:
        return False
    error = exc.body.get("error") if isinstance(exc.body, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    # The real API names the parameter it refuses; one that is not the list (model,
    # dimensions, encoding_format) would refuse every half too.
    return not isinstance(param, str) or param.lstrip("$.").startswith(("input", "prompt"))


def split_pack(job: Job, exc: APIError, requeue_at: Callable[[Job, float], None]) -> bool:
    """Split a packed ``job`` whose failure ``exc`` may be one input's: its halves go back
    to the requeue (a half of one line is that line, sent as written). False: ``job`` is
    not a pack, or the failure is the whole request's (the policy decides)."""
    if not isinstance(job, PackedJob) or not points_at_input(exc):
        return False
    parts = job.parts
    middle = len(parts) // 2
    for half, counts in ((parts[:middle], job.counts[:middle]),
                         (parts[middle:], job.counts[middle:])):
        if len(half) == 1:
            requeue_at(_inherit(half[0], job), 0.0)
        else:
            requeued = packed_job([_inherit(part, job) for part in half], counts)
            requeued.history = list(job.history)
            requeued.fallback_from = job.fallback_from
            requeue_at(requeued, 0.0)
    log.info("split a pack of %d after %s: %s", len(parts), exc.kind, exc.message[:200])
    return True


class Packer:
    """The packing stage: lines in, requests out (packs and lines that go alone).

    Args:
        size: most inputs per request; None: ``auto`` (as many as the model's limits
            allow within one TPM burst).
        prepare: readies a line for the wire (None: it was reported bad).
        lanes: the keys, whose token counters bound a pack's tokens.
        stats: where the summary note goes.
        exact: a line's exact prompt tokens, None where unknown (usage is shared out by
            them: see :mod:`processor.run.unpacking`).
    """

    def __init__(self, size: int | None, prepare: Callable[[Job | BadLine], Job | None],
                 lanes: list[Lane], stats: Stats,
                 exact: Callable[[Job], int | None] | None = None) -> None:
        self.size = size
        self._prepare = prepare
        self._exact = exact
        self.lanes = lanes
        self.stats = stats
        self.lines = 0
        self.packs = 0
        self._model: str | None = None
        self._stage: Stage | None = None

    def budget(self) -> float | None:
        """Tokens one request may carry: the smallest burst of the keys' token counters
        (a pack never holds more than the counter allows at once); None: no TPM."""
        sizes = [c.size for lane in self.lanes
                 for c in lane.limiter_for(self._model).counters
                 if c.unit is Unit.TOKENS and c.refill]
        return min(sizes) if sizes else None

    def prepare(self, item: Job | BadLine) -> Job | None:
        """Admission's ``prepare``: what :meth:`source` yields is ready already."""
        assert isinstance(item, Job)
        return item

    def source(self, items: Iterator[Job | BadLine]) -> Iterator[Job]:
        """Ready requests in input order, consecutive packable ones as one."""
        packs: Packs[Job] = Packs(self.size, self.budget)
        for item in items:
            job = self._prepare(item)
            if job is None:
                continue
            self._model = job.model  # the counters budget() asks: this model's
            for group in packs.add(job, job.url, job.body, job.model, job.tokens):
                yield self._request(group)
        for group in packs.flush():
            yield self._request(group)

    def _request(self, group: list[Job]) -> Job:
        if len(group) == 1:
            return group[0]
        job = packed_job(group, [self._count(job) for job in group])
        if self._stage is None:  # no stage takes lines out: every pack made is sent
            self._sent(job)
        return job

    def around(self, stage: Stage | None) -> Stage | None:
        """Admission's stage: ``stage`` (cache hits and followers leave a pack there),
        then the packs that still go are counted, so the summary counts what was sent
        (None without a stage: packs are counted as made)."""
        self._stage = stage
        return self if stage is not None else None

    def take(self, job: Job) -> Job | None:
        assert self._stage is not None
        found = self._stage.take(job)
        if found is not None:
            self._sent(found)
        return found

    def room(self) -> bool:
        assert self._stage is not None
        return self._stage.room()

    def _sent(self, job: Job) -> None:
        if isinstance(job, PackedJob):
            self.lines += len(job.parts)
            self.packs += 1

    def _count(self, job: Job) -> int | None:
        if self._exact is None:
            return None
        try:
            return self._exact(job)
        except Exception:  # noqa: BLE001 - only a weight: the admission count stands in
            return None

    def report(self) -> None:
        """Note in the summary how many lines went packed."""
        if self.packs:
            self.stats.note(f"packed: {self.lines:,} lines sent in {self.packs:,} requests "
                            f"({self.lines / self.packs:.1f} per request)")
