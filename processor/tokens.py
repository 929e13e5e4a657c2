"""Compatibility alias: request costs moved to :mod:`processor.cost`."""

from __future__ import annotations

from .cost.counter import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_TOKENS,
    Cost,
    TokenCounter,
    estimate_request_cost,
)
from .cost.encodings import encoding_name_for_model
from .cost.walker import CHARS_PER_TOKEN, REPLY_PRIMING, TOKENS_PER_MESSAGE, TOKENS_PER_NAME

__all__ = [
    "CHARS_PER_TOKEN",
    "COMPLETIONS_DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "Cost",
    "TokenCounter",
    "encoding_name_for_model",
    "estimate_request_cost",
]
