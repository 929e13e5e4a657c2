"""What the mock server charges a request, in tokens: its own formula, not the client's.

OpenAI's limiter charges a request *before* running it, from the request alone: an
estimate of the prompt from its characters (about 4 per token) plus the most the answer
may produce (``max_tokens`` or ``max_completion_tokens``, times ``n``). This module writes
that down independently of :mod:`processor.cost` (it imports nothing from the client),
so that an end-to-end test against the mock server can catch a client costing bug:

- chat: the characters of every message's text (string content, text parts, ``name``,
  the JSON of ``tool_calls``) and of the ``tools`` / ``functions`` definitions, divided by
  4 and rounded up once for the whole prompt; images at their documented price;
  plus the completion budget x ``n`` (none stated: none charged);
- responses: likewise for ``input``, ``instructions`` and ``tools``, plus
  ``max_output_tokens``;
- completions: each prompt on its own (characters / 4 rounded up, or the length of a
  token array), plus ``max_tokens`` (the API's default 16) x ``n`` x the number of prompts;
- embeddings: the input tokens alone, counted as for completions.

Images (OpenAI's "Images and vision" guide): tile models cost ``base`` at ``detail: low``
and otherwise ``base + tile x (512 px tiles)`` after fitting in 2048 x 2048 and shrinking
the short side to 768; patch models cost ``ceil(multiplier x 32 px patches)``, at most
1536 patches. The size is read from a ``data:`` URL's header; a remote image cannot be
fetched here and is priced as the guide's 1024 x 1024 example.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

__all__ = ["Price", "image_price", "image_size", "price"]

_PER_TOKEN = 4
_COMPLETIONS_DEFAULT = 16
_REMOTE = (1024, 1024)
# prefix -> (base, tile) for tile models, or (0, multiplier) written as a float for patch
# models; the longest matching prefix wins, unknown models price as gpt-4o.
_TILES: dict[str, tuple[int, int]] = {
    "gpt-4o": (85, 170), "chatgpt-4o": (85, 170), "gpt-4.1": (85, 170),
    "gpt-4.5": (85, 170), "gpt-5": (70, 140), "gpt-4o-mini": (2833, 5667),
    "o1": (75, 150), "o3": (75, 150), "computer-use-preview": (65, 129),
}
_PATCHES: dict[str, float] = {
    "gpt-4.1-mini": 1.62, "gpt-4.1-nano": 2.46, "gpt-5-mini": 1.62, "gpt-5-nano": 2.46,
    "o4-mini": 1.72,
}


@dataclass(frozen=True, slots=True)
class Price:
    """A request's charge: ``prompt`` (reported as ``usage.prompt_tokens``) + ``completion``."""

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def price(body: Mapping[str, Any], kind: str) -> Price:
    """The tokens the mock server charges ``body`` on endpoint ``kind``.

    Args:
        body: the JSON request body.
        kind: ``chat``, ``completions``, ``embeddings`` or ``responses``.

    Raises:
        ValueError: an inline (``data:``) image whose header cannot be read.
    """
    model = body.get("model")
    model = model if isinstance(model, str) else ""
    if kind == "embeddings":
        return Price(sum(_sequence_tokens(body.get("input"))), 0)
    if kind == "completions":
        prompts = _sequence_tokens(body.get("prompt"))
        return Price(sum(prompts), _budget(body, _COMPLETIONS_DEFAULT) * _n(body) * len(prompts))
    chars = images = 0
    if kind == "chat":
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else [messages]:
            if not isinstance(message, Mapping):
                chars += len(_json(message))
                continue
            c, i = _content(message.get("content"), model)
            chars, images = chars + c, images + i
            for key in ("name", "tool_calls", "function_call"):
                value = message.get(key)
                if value is not None:
                    chars += len(value) if isinstance(value, str) else len(_json(value))
        completion = _budget(body, 0) * _n(body)
    else:  # responses
        items = body.get("input")
        for item in items if isinstance(items, list) else [items]:
            content = item.get("content") if isinstance(item, Mapping) else None
            c, i = _content(content if content is not None else [item], model)
            chars, images = chars + c, images + i
        instructions = body.get("instructions")
        chars += len(instructions) if isinstance(instructions, str) else 0
        completion = _budget(body, 0)
    for key in ("tools", "functions"):
        if body.get(key):
            chars += len(_json(body[key]))
    return Price(math.ceil(chars / _PER_TOKEN) + images, completion)


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):  # nested deeper than orjson writes
        try:
            return str(value)
        except RecursionError:
            return ""


def _content(content: Any, model: str) -> tuple[int, int]:
    """(characters, image tokens) of a message content or a list of input parts."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), 0
    chars = images = 0
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, str):
            chars += len(part)
        elif isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image"):
            images += _image_part(part, model)
        elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
            chars += len(part["text"])
        else:
            chars += len(_json(part))
    return chars, images


def _sequence_tokens(value: Any) -> list[int]:
    """Tokens of each input of an embeddings / completions request (never fewer than 1)."""
    if isinstance(value, str) or (isinstance(value, list) and value
                                  and all(isinstance(v, int) for v in value)):
        value = [value]
    out = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            out.append(max(1, math.ceil(len(item) / _PER_TOKEN)))
        elif isinstance(item, list) and all(isinstance(v, int) for v in item):
            out.append(max(1, len(item)))
        elif item is not None:
            out.append(max(1, math.ceil(len(_json(item)) / _PER_TOKEN)))
    return out


def _budget(body: Mapping[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return default


def _n(body: Mapping[str, Any]) -> int:
    n = body.get("n", 1)
    return n if isinstance(n, int) and n > 0 else 1


# -- images ----------------------------------------------------------------------------


def _image_part(part: Mapping[str, Any], model: str) -> int:
    image = part.get("image_url")
    detail = part.get("detail")
    if isinstance(image, Mapping):
        detail = image.get("detail", detail)
        image = image.get("url")
    if isinstance(image, str) and image[:5].lower() == "data:":
        width, height = image_size(_data_url_bytes(image))
    else:
        width, height = _REMOTE
    return image_price(width, height, detail if isinstance(detail, str) else "auto", model)


def image_price(width: int, height: int, detail: str, model: str) -> int:
    """The documented token price of a ``width`` x ``height`` image on ``model``."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):
        name = name[3:].split(":", 1)[0]
    prefix = max((p for p in (*_TILES, *_PATCHES) if name.startswith(p)), key=len,
                 default="gpt-4o")
    if prefix in _PATCHES:
        return math.ceil(round(_patch_count(width, height) * _PATCHES[prefix], 6))
    base, tile = _TILES[prefix]
    if detail == "low":
        return base
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return base + tile * math.ceil(round(w, 6) / 512) * math.ceil(round(h, 6) / 512)


def _patch_count(width: int, height: int) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= 1536:
        return patches
    # The guide: scale so that 1536 patches cover the area, then a bit more so the side
    # that overshoots most is a whole number of patches.
    r = math.sqrt(32 * 32 * 1536 / (width * height))
    r *= min(math.floor(f) / f if f >= 1 else 1.0 for f in (width * r / 32, height * r / 32))
    # a side thinner than one patch still takes one
    return min(1536, max(1, math.ceil(round(width * r / 32, 6)))
               * max(1, math.ceil(round(height * r / 32, 6))))


def _data_url_bytes(url: str) -> bytes:
    head, sep, data = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise ValueError("the image is not a base64 data: URL")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the image's base64 data is invalid") from None


def _u(data: bytes, at: int, n: int, order: Literal["big", "little"] = "big") -> int:
    if len(data) < at + n:
        raise ValueError("the image ends inside its header")
    return int.from_bytes(data[at:at + n], order)


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header of a PNG, GIF, WebP or JPEG.

    Raises:
        ValueError: none of those, a header cut short, or a side of 0.
    """
    width, height = _header_size(data)
    if width <= 0 or height <= 0:
        raise ValueError(f"the image claims a size of {width}x{height}")
    return width, height


def _header_size(data: bytes) -> tuple[int, int]:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _u(data, 16, 4), _u(data, 20, 4)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _u(data, 6, 2, "little"), _u(data, 8, 2, "little")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return _u(data, 26, 2, "little") & 0x3FFF, _u(data, 28, 2, "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = _u(data, 21, 4, "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if chunk == b"VP8X":
            return 1 + _u(data, 24, 3, "little"), 1 + _u(data, 27, 3, "little")
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    raise ValueError("the image is not a PNG, JPEG, GIF or WebP")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    at = 2
    while True:
        while _u(data, at, 1) == 0xFF and _u(data, at + 1, 1) == 0xFF:
            at += 1  # fill bytes
        if _u(data, at, 1) != 0xFF:
            raise ValueError("the JPEG's markers are corrupt")
        marker = _u(data, at + 1, 1)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return _u(data, at + 7, 2), _u(data, at + 5, 2)
        at += 2 + _u(data, at + 2, 2)
