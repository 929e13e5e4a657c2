"""What a request costs in tokens (prompt + max completion), as pure functions.

This first version holds only the character-based estimate (about 4 characters per
token, the way OpenAI's own limiter estimates input). ``TokenCounter`` adds exact
counts with tiktoken where an encoding is available.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_TOKENS",
    "Cost",
    "estimate_request_cost",
]

CHARS_PER_TOKEN = 4
#: completion budget charged when a chat/responses request states no max_tokens.
DEFAULT_MAX_TOKENS = 1024
#: the API's own default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: flat image estimate until exact image math is in (85 low detail, 765 a 1024x1024 high).
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_DEFAULT = 765
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3


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


def _chars(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _image_estimate(part: Mapping[str, Any]) -> int:
    image = part.get("image_url")
    detail = image.get("detail", "auto") if isinstance(image, Mapping) else part.get("detail")
    return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_DEFAULT


def _content_estimate(content: Any) -> tuple[int, int]:
    """(text tokens, image tokens) of a message content: a string or a list of parts."""
    if isinstance(content, str):
        return _chars(content), 0
    if isinstance(content, list):
        text = images = 0
        for part in content:
            if isinstance(part, str):
                text += _chars(part)
            elif isinstance(part, Mapping):
                kind = part.get("type")
                if kind in ("image_url", "input_image"):
                    images += _image_estimate(part)
                elif isinstance(part.get("text"), str):
                    text += _chars(part["text"])
                else:
                    text += _chars(str(part))
        return text, images
    if content is None:
        return 0, 0
    return _chars(str(content)), 0


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value >= 0:
            return value
    return default


def _n(body: Mapping[str, Any]) -> int:
    n = body.get("n", 1)
    return n if isinstance(n, int) and n > 0 else 1


def estimate_request_cost(
    body: Mapping[str, Any], endpoint: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> Cost:
    """Estimate a request's cost from characters alone (no tokenizer).

    Args:
        body: the JSON request body.
        endpoint: the URL path, e.g. ``/v1/chat/completions``.
        default_max_tokens: completion budget when the body states none.

    Returns:
        The :class:`Cost`; never raises on odd shapes (falls back to the body's size).
    """
    if endpoint.endswith("/embeddings"):
        return Cost(_embedding_input_estimate(body.get("input")), 0)
    if endpoint.endswith("/chat/completions"):
        messages = body.get("messages")
        if isinstance(messages, list):
            text = REPLY_PRIMING
            images = 0
            for message in messages:
                if not isinstance(message, Mapping):
                    text += _chars(str(message))
                    continue
                text += TOKENS_PER_MESSAGE
                for key, value in message.items():
                    if key == "content":
                        t, i = _content_estimate(value)
                        text += t
                        images += i
                    elif isinstance(value, str):
                        text += _chars(value)
                        if key == "name":
                            text += TOKENS_PER_NAME
                    elif value is not None:
                        text += _chars(str(value))
            completion = _max_tokens(body, default_max_tokens) * _n(body)
            return Cost(text + images, completion, images)
    if endpoint.endswith("/completions"):
        prompt = body.get("prompt")
        completion = _max_tokens(body, COMPLETIONS_DEFAULT_MAX_TOKENS) * _n(body)
        return Cost(_embedding_input_estimate(prompt), completion)
    if endpoint.endswith("/responses"):
        text, images = _responses_input_estimate(body.get("input"))
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            text += _chars(instructions)
        completion = _max_tokens(body, default_max_tokens)
        return Cost(text + images, completion, images)
    # Unknown shape: charge the whole body's size, plus a completion budget.
    return Cost(_chars(str(dict(body))), _max_tokens(body, default_max_tokens) * _n(body))


def _embedding_input_estimate(value: Any) -> int:
    """Strings, lists of strings, token arrays, lists of token arrays."""
    if value is None:
        return 0
    if isinstance(value, str):
        return _chars(value)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_embedding_input_estimate(v) for v in value)
    return _chars(str(value))


def _responses_input_estimate(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        return _chars(value), 0
    if isinstance(value, list):
        text = images = 0
        for item in value:
            if isinstance(item, Mapping) and "content" in item:
                t, i = _content_estimate(item.get("content"))
                text += t + TOKENS_PER_MESSAGE
                images += i
            else:
                t, i = _content_estimate([item])
                text += t
                images += i
        return text, images
    return _content_estimate(value)
