"""A packed request's answer, split into one answer per line (pure).

Each line gets the body an unpacked request would have had: for embeddings
``{"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": ...}],
"model": ..., "usage": {"prompt_tokens": p, "total_tokens": p}}``; for legacy
completions its ``n`` choices, indexed ``0 .. n-1``, and its ``usage``. Items are
matched by their ``index``, never by position; an answer that does not hold exactly one
item per input (``n`` per prompt) is not split at all (:class:`UnmappedAnswer`).

Usage is shared out so the shares sum to the server's total: by each line's own
prompt count (tiktoken's exact count when its encoding is at hand, else the admission
count), which *is* the line's share when those counts sum to the server's total, else
proportional to them (largest remainder). Completion tokens are shared by the length of each line's
choices' text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client.answers import Response
from ..cost.walker import Endpoint, endpoint_kind
from ..jobs import Job
from .packing import PackedJob, UnmappedAnswer

__all__ = ["shares", "unpack"]


def shares(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` cut in parts proportional to ``weights`` (equal parts if they are all 0),
    summing exactly to ``total`` (largest remainder); the weights themselves when they
    already sum to ``total``."""
    if sum(weights) == total and all(w >= 0 for w in weights):
        return list(weights)
    clean = [max(0, w) for w in weights]
    whole = sum(clean)
    if whole == 0:
        clean, whole = [1] * len(weights), len(weights)
    exact = [total * w / whole for w in clean]
    out = [int(x) for x in exact]
    rest = total - sum(out)
    for i in sorted(range(len(exact)), key=lambda i: out[i] - exact[i])[:max(0, rest)]:
        out[i] += 1
    return out


def _fail(job: PackedJob, response: Response, why: str) -> UnmappedAnswer:
    return UnmappedAnswer(f"the answer to a request packing {len(job.parts)} lines {why}",
                          status=response.status, request_id=response.request_id)


def _by_index(items: Any, count: int, job: PackedJob, response: Response, what: str
              ) -> list[dict[str, Any]]:
    """``items`` ordered by their ``index`` (0 .. count-1, each once)."""
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else "no list of"
        raise _fail(job, response, f"holds {got} {what} for {count}")
    ordered: list[dict[str, Any] | None] = [None] * count
    for item in items:
        index = item.get("index") if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < count or ordered[index] is not None:
            raise _fail(job, response, f"has {what} with a missing, repeated or out-of-range "
                                       f"index ({index!r})")
        ordered[index] = item
    return [item for item in ordered if item is not None]


def _int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def unpack(job: PackedJob, response: Response) -> list[tuple[Job, Response]]:
    """One ``(line, answer)`` per part of ``job``, in the parts' order.

    Raises:
        UnmappedAnswer: the answer's items do not match the inputs one to one.
    """
    body = response.body
    parts = job.parts
    if not isinstance(body, dict):
        raise _fail(job, response, "is not an object")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    prompt_total = _int(usage.get("prompt_tokens")) if usage else None
    # Each line's exact count where known (its admission count may be the larger
    # character estimate), else its admission count.
    weights = [p.prompt_tokens if c is None else c
               for p, c in zip(parts, job.counts or [None] * len(parts), strict=True)]
    prompts = shares(prompt_total, weights) if prompt_total is not None else None
    pieces: list[dict[str, Any]] = []
    if endpoint_kind(job.url) is Endpoint.EMBEDDINGS:
        data = _by_index(body.get("data"), len(parts), job, response, "embeddings")
        for i, item in enumerate(data):
            piece = dict(body, data=[dict(item, index=0)])
            if prompts is not None:
                piece["usage"] = {"prompt_tokens": prompts[i], "total_tokens": prompts[i]}
            pieces.append(piece)
    else:
        n = job.body.get("n", 1)
        n = n if type(n) is int and n > 0 else 1
        choices = _by_index(body.get("choices"), len(parts) * n, job, response, "choices")
        groups = [choices[i * n:(i + 1) * n] for i in range(len(parts))]
        completion_total = _int(usage.get("completion_tokens")) if usage else None
        outs = (shares(completion_total, [sum(len(str(c.get("text", ""))) for c in group)
                                          for group in groups])
                if completion_total is not None else None)
        for i, group in enumerate(groups):
            piece = dict(body, choices=[dict(c, index=j) for j, c in enumerate(group)])
            if prompts is not None and outs is not None:
                piece["usage"] = {"prompt_tokens": prompts[i], "completion_tokens": outs[i],
                                  "total_tokens": prompts[i] + outs[i]}
            pieces.append(piece)
    if usage is not None and (prompts is None or "usage" not in pieces[0]):
        for piece in pieces:
            piece.pop("usage", None)  # a usage that cannot be shared is not copied whole
    if job.fallback_from is not None:  # the pack fell back to another model: so did its lines
        for part in parts:
            part.fallback_from, part.model = job.fallback_from, job.model
    return [(part, Response(response.status, piece, response.request_id, response.ratelimit))
            for part, piece in zip(parts, pieces, strict=True)]
