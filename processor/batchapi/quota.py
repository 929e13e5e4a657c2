"""The enqueued-token quota: the limit a refusal states, and a part too big for it.

A part waits for room while batches of its model hold the quota. But a part that the
quota refuses while none of this job's batches are enqueued, and whose own tokens pass
the limit the refusal states, would wait forever: it is split into parts of at most
:data:`SPLIT_SHARE` of the limit (our token count and the server's differ a little),
each holding at least one request, their attempts and history carried.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .plan import PartWriter, iter_requests, read_meta
from .state import BatchState, PartState, meta_row

__all__ = ["SPLIT_SHARE", "quota_of", "split_part", "too_big"]

#: parts split from a too-big one hold at most this share of the quota.
SPLIT_SHARE = 0.8

log = logging.getLogger(__name__)
_LIMIT = re.compile(r"limit:\s*([\d,_]+)\s*enqueued", re.IGNORECASE)


def quota_of(message: str) -> int | None:
    """The enqueued-token limit a refusal's message states (None: it states none)."""
    match = _LIMIT.search(message)
    return int(re.sub(r"[,_]", "", match.group(1))) if match else None


def too_big(part: PartState, limit: int | None, others: int) -> bool:
    """``part`` can never fit: nothing else of the job is enqueued (``others``: tokens
    of its model's other batches), it holds several requests and passes ``limit``."""
    return limit is not None and others == 0 and part.requests > 1 and part.tokens > limit


def split_part(folder: Path, state: BatchState, old: PartState,
               limit: int) -> list[PartState]:
    """``old``'s requests in new parts (added to ``state``, ``old`` marked done) of at
    most :data:`SPLIT_SHARE` of ``limit`` tokens each (by its average per request; one
    request at least), in order, their meta carried. The caller saves the state."""
    share = old.tokens / max(old.requests, 1)
    per = max(1, int(limit * SPLIT_SHARE // max(share, 1.0)))
    metas = read_meta(folder, old)
    parts: list[PartState] = []
    writer: PartWriter | None = None
    try:
        for cid, line in iter_requests(folder, old):
            if writer is not None and writer.requests >= per:
                parts.append(writer.close())
                writer = None
            if writer is None:
                writer = PartWriter(folder, state.new_key(), old.url, old.model, origin=old.key)
            m = metas[cid]
            writer.add(line, meta_row(cid, m.line, m.hashed, m.attempts, m.metadata,
                                      m.history), round(share))
    finally:
        if writer is not None:
            parts.append(writer.close())
    old.step, old.note = "done", (f"{old.tokens:,} tokens, more than the {limit:,} the queue "
                                  f"holds: split into {parts[0].key}..{parts[-1].key}")
    state.parts += parts
    log.info("part %s: %s", old.key, old.note)
    return parts
