"""Packing: which requests may share one HTTP request, the API's limits per request, and
how a stream of requests is cut into packs (pure; the engine and the estimate share it).

Two endpoints take a list where a request usually holds one item:

- ``/v1/embeddings``: ``input`` may be a list of texts (or of token arrays); the answer's
  ``data[i]`` (by its ``index``) is the vector of ``input[i]``;
- ``/v1/completions`` (legacy): ``prompt`` may be a list of prompts; the answer's
  ``choices`` are indexed ``prompt * n + j``.

Consecutive requests to one such endpoint whose bodies are equal but for that field (the
model, ``dimensions``, ``encoding_format``, ``user``, ``max_tokens`` ...) may go as one
request. A request is never packed (it goes alone, as written) when its field is
already a list of texts (it is its own batch), is empty, is neither a text nor one token
array, asks for a stream, or is by our count longer than one input may be.

:data:`PACK_LIMITS` holds the limits per request by model (longest prefix wins, on the
base model name: fine-tunes and ``provider/`` names count as their base model); models
not in it get the conservative :data:`DEFAULT_LIMITS` of their endpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from .images import base_model_name
from .walker import Endpoint, endpoint_kind

__all__ = ["DEFAULT_LIMITS", "PACK_LIMITS", "PackLimits", "Packs", "pack_field", "pack_key",
           "pack_limits", "parse_pack"]


@dataclass(frozen=True, slots=True)
class PackLimits:
    """What one request may hold.

    Attributes:
        max_inputs: items in the list.
        max_tokens: tokens of all items together (for completions: prompts plus their
            completion budgets, as the rate limiter charges them).
        max_input_tokens: tokens of one item (longer ones go alone, unpacked).
    """

    max_inputs: int
    max_tokens: int
    max_input_tokens: int


_OPENAI_EMBEDDINGS = PackLimits(2048, 300_000, 8192)
#: model prefix -> limits per request. The embedding rows are OpenAI's documented limits
#: (2,048 inputs, 300,000 tokens in all, 8,192 per input); the completion rows are ours
#: (OpenAI documents no cap on the ``prompt`` list: 20 prompts per request is what its
#: rate-limit guide shows) with the models' context lengths per prompt.
PACK_LIMITS: dict[str, PackLimits] = {
    "text-embedding-3-small": _OPENAI_EMBEDDINGS,
    "text-embedding-3-large": _OPENAI_EMBEDDINGS,
    "text-embedding-ada-002": _OPENAI_EMBEDDINGS,
    "gpt-3.5-turbo-instruct": PackLimits(20, 300_000, 4096),
    "davinci-002": PackLimits(20, 300_000, 16_384),
    "babbage-002": PackLimits(20, 300_000, 16_384),
}
#: limits for models not in :data:`PACK_LIMITS` (other servers' models, Azure deployment
#: names): small enough for the common self-hosted servers (text-embeddings-inference
#: takes 32 inputs per request by default).
DEFAULT_LIMITS: dict[Endpoint, PackLimits] = {
    Endpoint.EMBEDDINGS: PackLimits(32, 16_384, 8192),
    Endpoint.COMPLETIONS: PackLimits(20, 16_384, 4096),
}
_FIELDS = {Endpoint.EMBEDDINGS: "input", Endpoint.COMPLETIONS: "prompt"}


def parse_pack(value: str | int | None) -> int | str | None:
    """``--pack``: ``off``/``0``/``1``/None: no packing; ``auto``; or a size N >= 2.

    Raises:
        ValueError: anything else.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("off", "0", "1", "no", "none"):
        return None
    if text == "auto":
        return "auto"
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"--pack takes a number of inputs per request or 'auto', "
                         f"not {value!r}") from None
    if size < 0:
        raise ValueError(f"--pack must be at least 2 (or 'auto'/'off'), got {size}")
    return None if size <= 1 else size


def pack_field(url: str) -> str | None:
    """The body field that takes a list at ``url`` (``input`` / ``prompt``), or None."""
    return _FIELDS.get(endpoint_kind(url))


def pack_limits(model: str | None, url: str) -> PackLimits | None:
    """The limits of one request to ``model`` at ``url`` (None: that endpoint never packs)."""
    kind = endpoint_kind(url)
    default = DEFAULT_LIMITS.get(kind)
    if default is None or not model:
        return default
    name = base_model_name(model)
    best = max((p for p in PACK_LIMITS if name.startswith(p)), key=len, default=None)
    return default if best is None else PACK_LIMITS[best]


def _item_kind(value: Any) -> str | None:
    """``text`` or ``tokens`` for one packable item; None for anything else."""
    if isinstance(value, str):
        return "text" if value else None  # an empty text is refused: alone, it costs itself
    if isinstance(value, list) and value and all(
            type(v) is int and v >= 0 for v in value):
        return "tokens"
    return None


def pack_key(url: str, body: Mapping[str, Any]) -> Hashable | None:
    """What requests must share to go in one pack, or None if this one goes alone.

    The endpoint, whether the item is a text or a token array (one list cannot mix
    them), and every other field of the body (compared as canonical JSON).
    """
    name = pack_field(url)
    if name is None or body.get("stream"):
        return None
    kind = _item_kind(body.get(name))
    if kind is None:
        return None
    rest = {k: v for k, v in body.items() if k != name}
    try:
        canonical = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return url, kind, canonical


T = TypeVar("T")


class Packs(Generic[T]):
    """Cuts a stream of requests into packs, in order; holds at most one pack.

    A pack closes when it is full (``size`` items, or the model's ``max_inputs``), when
    the next request would take it over its token budget (the model's ``max_tokens``,
    and ``budget()``: the tokens one request may carry under the rate limits), when the
    next request may not join it (another key, or one that goes alone), and at
    :meth:`flush`.

    Args:
        size: items per pack at most; None: ``auto``, as many as the limits allow.
        budget: tokens one pack may hold under the rate limits (None: no such limit);
            read when a pack opens, so a limit learned during the run applies.
    """

    __slots__ = ("size", "budget", "_items", "_key", "_tokens", "_max_items", "_max_tokens")

    def __init__(self, size: int | None, budget: Callable[[], float | None] | None = None
                 ) -> None:
        if size is not None and size < 2:
            raise ValueError(f"a pack holds at least 2 items, got {size}")
        self.size = size
        self.budget = budget
        self._items: list[T] = []
        self._key: Hashable | None = None
        self._tokens = 0
        self._max_items = 0
        self._max_tokens = math.inf

    def add(self, item: T, url: str, body: Mapping[str, Any], model: str | None,
            tokens: int) -> list[list[T]]:
        """Take one request (``tokens``: its admission cost); return the packs now
        complete, in input order (a request that goes alone is a pack of one)."""
        key = pack_key(url, body)
        limits = pack_limits(model, url) if key is not None else None
        if key is None or limits is None or tokens > limits.max_input_tokens:
            return self.flush() + [[item]]
        out: list[list[T]] = []
        if self._items and (key != self._key or len(self._items) >= self._max_items
                            or self._tokens + tokens > self._max_tokens):
            out = self.flush()
        if not self._items:
            self._key = key
            self._max_items = min(self.size or limits.max_inputs, limits.max_inputs)
            limit = self.budget() if self.budget is not None else None
            self._max_tokens = min(float(limits.max_tokens),
                                   limit if limit is not None else math.inf)
        self._items.append(item)
        self._tokens += tokens
        if len(self._items) >= self._max_items or self._tokens >= self._max_tokens:
            out += self.flush()
        return out

    def flush(self) -> list[list[T]]:
        """The pack being filled, if any (ends it)."""
        if not self._items:
            return []
        items, self._items, self._tokens, self._key = self._items, [], 0, None
        return [items]

    def __len__(self) -> int:
        return len(self._items)
