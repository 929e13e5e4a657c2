"""What the mock server refuses in an embeddings request's ``input``, as OpenAI does: an
empty text, too many inputs, one input longer than the model takes, or too many tokens
in all (a 400 with OpenAI's error body; the messages are the real API's)."""

from __future__ import annotations

from typing import Any

from .bodies import error_body
from .pricing import _sequence_tokens

__all__ = ["embeddings_problem"]

_INVALID = ("'$.input' is invalid. Please check the API reference: "
            "https://platform.openai.com/docs/api-reference.")


def embeddings_problem(data: dict[str, Any], limits: tuple[int, int, int]) -> bytes | None:
    """The 400 body for an ``input`` the API would refuse, or None.

    Args:
        data: the request body.
        limits: (most inputs, most tokens in all, most tokens per input).
    """
    max_inputs, max_tokens, max_input_tokens = limits
    raw = data.get("input")
    items = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    if any(item == "" or item == [] for item in items):
        return error_body(_INVALID, "invalid_request_error", None)
    if len(items) > max_inputs:
        return error_body(
            f"Invalid 'input': array too long. Expected an array with maximum length "
            f"{max_inputs}, but got an array with length {len(items)} instead.",
            "invalid_request_error", "array_above_max_length", "input")
    tokens = _sequence_tokens(raw)
    longest = max(tokens, default=0)
    if longest > max_input_tokens:
        # The real message names no input: the client cannot tell which one it was.
        return error_body(
            f"This model's maximum context length is {max_input_tokens} tokens, however you "
            f"requested {longest} tokens ({longest} in your prompt; 0 for the completion). "
            "Please reduce your prompt; or completion length.", "invalid_request_error", None)
    if sum(tokens) > max_tokens:
        return error_body(f"Requested {sum(tokens)} tokens, max {max_tokens} tokens per request",
                          "invalid_request_error", "max_tokens_per_request")
    return None
