"""One walk over a request body: the parts its prompt is made of.

:func:`walk` reads a request once and returns a :class:`Prompt`: the texts a tokenizer
would count, the tokens known without one (message framing, token arrays, the share of
parts no tokenizer reads), and the image tokens. A token count is then a
:class:`TextCounter` summed over those texts: :func:`chars_estimate` gives the character
estimate, ``len(encoding.encode_ordinary(text))`` the exact count. Both counts are the
same walk, so they cannot disagree about what a request contains (tools, roles, names,
tool calls), and pricing a request for both reads the body once.

Request shapes (by the endpoint's last path segments):

- chat: ``messages`` (string or list-of-parts content, ``name``, ``tool_calls`` and any
  other field as JSON text), ``tools`` / ``functions`` as JSON text; the OpenAI cookbook's
  framing of 3 tokens per message, 1 per ``name`` and 3 to prime the reply.
- Responses: ``instructions`` as a system message, ``input`` (a string: one user message;
  a list: messages with ``role`` and ``content``, or bare parts), ``tools``; framed as chat.
- completions ``prompt`` and embeddings ``input``: strings, lists of strings, token
  arrays (one token per number), lists of token arrays.
- anything else: an unknown shape, charged by the size of its JSON.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from .images import REMOTE_IMAGE_SIZE, image_part_tokens

__all__ = [
    "CHARS_PER_TOKEN",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "Endpoint",
    "Prompt",
    "TextCounter",
    "chars_estimate",
    "endpoint_kind",
    "walk",
]

#: a text's estimate is its length in characters / 4, rounded up (OpenAI's rule of thumb,
#: and how its limiter estimates input before tokenizing).
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
#: the role of a message the request implies (Responses ``instructions``, string input).
IMPLIED_ROLE_TOKENS = 1

#: Counts the tokens of one text.
TextCounter = Callable[[str], int]
_Size = tuple[int, int]
_IMAGE_PARTS = ("image_url", "input_image")


def chars_estimate(text: str) -> int:
    """The character estimate of ``text``: ``ceil(len / 4)`` (no tokenizer)."""
    return -(-len(text) // CHARS_PER_TOKEN)


class Endpoint(enum.Enum):
    """The request shapes :func:`walk` knows, by endpoint."""

    CHAT = "chat"
    RESPONSES = "responses"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    OTHER = "other"


# Module aliases: looking a member up on an Enum class costs ~70 ns on Python 3.11, and
# the per-request path compares kinds several times.
_CHAT = Endpoint.CHAT
_RESPONSES = Endpoint.RESPONSES
_COMPLETIONS = Endpoint.COMPLETIONS
_EMBEDDINGS = Endpoint.EMBEDDINGS


@functools.lru_cache(maxsize=256)  # a job has a few endpoints; called once per request
def endpoint_kind(endpoint: str) -> Endpoint:
    """The shape of requests to ``endpoint`` (a URL path such as ``/v1/chat/completions``;
    a query string and trailing slashes are ignored, as the job reader does)."""
    endpoint = endpoint.split("?", 1)[0].rstrip("/")
    if endpoint.endswith("/embeddings"):
        return Endpoint.EMBEDDINGS
    if endpoint.endswith("/chat/completions"):  # before /completions, which it also ends
        return Endpoint.CHAT
    if endpoint.endswith("/completions"):
        return Endpoint.COMPLETIONS
    if endpoint.endswith("/responses"):
        return Endpoint.RESPONSES
    return Endpoint.OTHER


class Prompt:
    """The parts of one request's prompt, as :func:`walk` found them.

    Attributes:
        texts: text a tokenizer counts: contents, names, roles, tool calls and tools as
            JSON.
        fixed: tokens known without a tokenizer: framing, token arrays, and the character
            estimate of what no tokenizer reads (audio and file parts, unknown shapes).
        images: image tokens, by :func:`processor.cost.images.image_part_tokens`.
        known: whether the shape is one we know; an exact count of an unknown one means
            nothing.
    """

    # A plain slotted class, not a dataclass: one is built per request on the hot path.
    __slots__ = ("fixed", "images", "known", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.fixed = 0
        self.images = 0
        self.known = True

    def tokens(self, count: TextCounter) -> int:
        """The prompt tokens with ``count`` as the text counter (images included)."""
        return self.fixed + self.images + sum(map(count, self.texts))


def walk(
    body: Mapping[str, Any], endpoint: Endpoint, remote: _Size = REMOTE_IMAGE_SIZE
) -> Prompt:
    """The parts of the prompt of ``body`` sent to an ``endpoint`` of that kind.

    Never raises on odd shapes: what is not text is counted by the size of its JSON.

    Args:
        body: the JSON request body.
        endpoint: the kind of endpoint (:func:`endpoint_kind`).
        remote: the size assumed for images given by URL (never fetched).

    Raises:
        ImageFormatError: a ``data:`` image whose header cannot be read.
    """
    prompt = Prompt()
    if endpoint is _EMBEDDINGS or endpoint is _COMPLETIONS:
        value = body.get("input" if endpoint is _EMBEDDINGS else "prompt")
        if isinstance(value, str):  # the common case, without a call
            prompt.texts.append(value)
        else:
            _inputs(prompt, value)
    elif endpoint is _CHAT and isinstance(messages := body.get("messages"), list):
        _chat(prompt, body, messages, remote)
    elif endpoint is _RESPONSES:
        _responses(prompt, body, remote)
    else:  # another endpoint, or chat without a list of messages
        prompt.known = False
        prompt.fixed += chars_estimate(_json(dict(body)))
    return prompt


def _json(value: Any) -> str:
    """The compact JSON of a value that is not text, as it went over the wire."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson's nesting limit, lone surrogates, ...
        try:
            return str(value)
        except RecursionError:  # nested past Python's limit: the API refuses it anyway
            return ""


def _image_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else "gpt-4o"


def _inputs(prompt: Prompt, value: Any) -> None:
    """Strings, lists of strings, token arrays, lists of token arrays (a loop: JSON may
    nest deeper than Python's recursion limit)."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            prompt.texts.append(value)
        elif isinstance(value, list):
            if all(isinstance(v, int) for v in value):
                prompt.fixed += len(value)
            else:
                stack.extend(value)
        elif value is not None:
            prompt.fixed += chars_estimate(_json(value))


def _tools(prompt: Prompt, body: Mapping[str, Any]) -> None:
    # The server renders tool definitions in its own format; their JSON approximates it.
    for key in ("tools", "functions"):
        value = body.get(key)
        if value:
            prompt.texts.append(_json(value))


def _chat(prompt: Prompt, body: Mapping[str, Any], messages: list[Any], remote: _Size) -> None:
    if "tools" in body or "functions" in body:
        _tools(prompt, body)
    texts = prompt.texts
    fixed = REPLY_PRIMING
    for message in messages:
        # `type(...) is dict` first: JSON gives dicts, and the ABC check costs more
        if not (type(message) is dict or isinstance(message, Mapping)):
            fixed += chars_estimate(_json(message))
            continue
        fixed += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                texts.append(value)
                if key == "name":
                    fixed += TOKENS_PER_NAME
            elif key == "content":
                _content(prompt, value, body, remote)
            elif value is not None:  # tool_calls, function_call, audio, ...
                texts.append(_json(value))
    prompt.fixed += fixed


def _responses(prompt: Prompt, body: Mapping[str, Any], remote: _Size) -> None:
    # Counted as chat: instructions a system message, a string input one user message.
    prompt.fixed += REPLY_PRIMING
    if "tools" in body or "functions" in body:
        _tools(prompt, body)
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        prompt.fixed += TOKENS_PER_MESSAGE + IMPLIED_ROLE_TOKENS
        prompt.texts.append(instructions)
    value = body.get("input")
    if isinstance(value, str):
        prompt.fixed += TOKENS_PER_MESSAGE + IMPLIED_ROLE_TOKENS
        prompt.texts.append(value)
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Mapping) and "content" in item:
            prompt.fixed += TOKENS_PER_MESSAGE
            _content(prompt, item["content"], body, remote)
            role = item.get("role")
            if isinstance(role, str):
                prompt.texts.append(role)
        else:  # a bare part: input_text, input_image, function_call_output, ...
            _part(prompt, item, body, remote)


def _content(prompt: Prompt, content: Any, body: Mapping[str, Any], remote: _Size) -> None:
    """A message's content: a string, or a list of parts."""
    if isinstance(content, str):
        prompt.texts.append(content)
    elif isinstance(content, list):
        for part in content:
            _part(prompt, part, body, remote)
    elif content is not None:
        prompt.texts.append(_json(content))


def _part(prompt: Prompt, part: Any, body: Mapping[str, Any], remote: _Size) -> None:
    if isinstance(part, str):
        prompt.texts.append(part)
    elif isinstance(part, Mapping):
        if part.get("type") in _IMAGE_PARTS:
            model = _image_model(body)  # images are priced by the request's model
            prompt.images += image_part_tokens(part, model, remote_assumption=remote)
            return
        text = part.get("text")
        if isinstance(text, str):
            prompt.texts.append(text)
        else:  # audio, files, ...: no tokenizer reads them; both counts take the estimate
            prompt.fixed += chars_estimate(_json(part))
    # numbers, None, nested lists as parts: not content the API accepts; nothing to count
