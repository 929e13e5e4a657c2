"""What an image in a request costs in tokens, without decoding the image.

Two steps, both pure:

1. The size: :func:`image_size_from_bytes` reads only the header of a PNG, JPEG, GIF or
   WebP; :func:`image_size_from_data_url` base64-decodes only as much of a ``data:`` URL
   as that header needs. Remote URLs are never fetched: they are priced at an assumed
   size (:data:`REMOTE_IMAGE_SIZE`, configurable).
2. The price: :func:`image_tokens` applies OpenAI's documented rules for the model,
   taken from :data:`IMAGE_MODELS`.

A header we cannot read raises :class:`ImageFormatError`, so that the caller can report
the request as a bad input line instead of sending something the API will refuse.
"""

from __future__ import annotations

import base64
import binascii
import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

__all__ = [
    "IMAGE_MODELS",
    "IMAGE_MODELS_AS_OF",
    "REMOTE_IMAGE_SIZE",
    "ImageFormatError",
    "ImageModel",
    "base_model_name",
    "image_model",
    "image_part_tokens",
    "image_size_from_bytes",
    "image_size_from_data_url",
    "image_tokens",
]

#: a side longer than this is treated as a corrupt header, not a real image.
MAX_SIDE = 65535
#: the size assumed for images we do not fetch (http(s) URLs, file ids). At ``detail:
#: high`` on gpt-4o this prices at 765 tokens, the old flat estimate.
REMOTE_IMAGE_SIZE = (1024, 1024)
#: base64 characters decoded first from a data: URL (a multiple of 4: 3 KiB of bytes), enough
#: for PNG, GIF, WebP and most JPEGs; each further round doubles what has been decoded.
_FIRST_CHUNK = 4 * 1024


class ImageFormatError(ValueError):
    """Bytes that are not a PNG, JPEG, GIF or WebP whose size we can read."""


class _Truncated(ImageFormatError):
    """The header stops early; more bytes may complete it."""


@dataclass(frozen=True, slots=True)
class ImageModel:
    """How one model family prices an image."""

    prefix: str
    """Model names starting with this use the row (the longest matching prefix wins)."""
    kind: Literal["tile", "patch"]
    """``tile``: base + tokens per 512 px tile; ``patch``: 32 px patches x multiplier."""
    base: int = 0
    """Tile models: tokens for every image, and all a ``detail: low`` image costs."""
    tile: int = 0
    """Tile models: tokens per 512 px tile at ``detail: high``."""
    multiplier: float = 1.0
    """Patch models: tokens per patch."""


#: When :data:`IMAGE_MODELS` was last checked against OpenAI's "Images and vision" guide
#: (section "Calculating costs"). Newer models fall back to the longest matching prefix.
IMAGE_MODELS_AS_OF = "2025-08 (GPT-5 launch); recorded 2026-11-30"

IMAGE_MODELS: tuple[ImageModel, ...] = (
    ImageModel("gpt-4o", "tile", 85, 170),
    ImageModel("chatgpt-4o", "tile", 85, 170),
    ImageModel("gpt-4.1", "tile", 85, 170),
    ImageModel("gpt-4.5", "tile", 85, 170),
    # The guide lists gpt-5 and gpt-5-chat-latest at 70/140, not the 85/170 of gpt-4o.
    ImageModel("gpt-5", "tile", 70, 140),
    ImageModel("gpt-4o-mini", "tile", 2833, 5667),
    ImageModel("o1", "tile", 75, 150),
    ImageModel("o1-pro", "tile", 75, 150),
    ImageModel("o3", "tile", 75, 150),
    ImageModel("computer-use-preview", "tile", 65, 129),
    ImageModel("gpt-4.1-mini", "patch", multiplier=1.62),
    ImageModel("gpt-4.1-nano", "patch", multiplier=2.46),
    ImageModel("gpt-5-mini", "patch", multiplier=1.62),
    ImageModel("gpt-5-nano", "patch", multiplier=2.46),
    ImageModel("o4-mini", "patch", multiplier=1.72),
)
_DEFAULT_MODEL = IMAGE_MODELS[0]
_BY_PREFIX = sorted(IMAGE_MODELS, key=lambda row: len(row.prefix), reverse=True)


def base_model_name(model: str) -> str:
    """The public model a name refers to: ``ft:gpt-4o-mini:org::id`` -> ``gpt-4o-mini``.

    Also drops a ``provider/`` prefix (``openai/gpt-4o``) and lower-cases.
    """
    if model.startswith("ft:"):
        model = model[3:].split(":", 1)[0]
    return model.rsplit("/", 1)[-1].lower()


def image_model(model: str) -> ImageModel:
    """The :data:`IMAGE_MODELS` row for ``model``: longest prefix, else gpt-4o's rules."""
    name = base_model_name(model)
    for row in _BY_PREFIX:
        if name.startswith(row.prefix):
            return row
    return _DEFAULT_MODEL


def image_tokens(width: int, height: int, detail: str = "auto", model: str = "gpt-4o") -> int:
    """The input tokens an image of this size costs on ``model``.

    Tile models: ``low`` costs the base. Anything else is priced as ``high``: fit within
    2048 x 2048, then shrink so the shortest side is 768, count 512 px tiles. ``auto`` lets
    OpenAI choose, so we charge ``high``, the upper bound. The scaling is done in exact
    fractions, never rounded to pixels, which can only round a tile count up.

    Patch models ignore ``detail`` (the guide gives no low-detail rule for them): count
    32 px patches; past 1536, shrink as documented until at most 1536 fit; x multiplier,
    rounded up.

    Raises:
        ValueError: a side is not positive.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    row = image_model(model)
    if row.kind == "patch":
        # exact product: 1024 * 1.62 must not become 1658.8800000000001 and round up wrongly
        return math.ceil(_patches(width, height) * Fraction(repr(row.multiplier)))
    if detail == "low":
        return row.base
    w, h = Fraction(width), Fraction(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return row.base + row.tile * math.ceil(w / 512) * math.ceil(h / 512)


def _patches(width: int, height: int) -> int:
    patches = -(-width // 32) * -(-height // 32)
    if patches <= 1536:
        return patches
    # The guide's algorithm: shrink by r so the area holds 1536 patches, then shrink a bit
    # more so the side that overshoots most is a whole number of patches.
    r = math.sqrt(32 * 32 * 1536 / (width * height))
    fw, fh = width * r / 32, height * r / 32
    r *= min(math.floor(f) / f if f >= 1 else 1.0 for f in (fw, fh))
    # the 1e-9 keeps float noise (33.000000001) from adding a whole row of patches
    pw = max(1, math.ceil(width * r / 32 - 1e-9))
    ph = max(1, math.ceil(height * r / 32 - 1e-9))
    return min(pw * ph, 1536)


def image_size_from_bytes(data: bytes) -> tuple[int, int]:
    """(width, height) from the header of a PNG, JPEG, GIF or WebP.

    Raises:
        ImageFormatError: another format, a truncated header, or a header claiming a side
            of 0 or over 65535 pixels.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _need(data, 24)
        if data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d":
            raise ImageFormatError("PNG does not start with an IHDR chunk")
        size = _be(data, 16, 4), _be(data, 20, 4)
    elif data.startswith(b"\xff\xd8"):
        size = _jpeg_size(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        _need(data, 10)
        size = _le(data, 6, 2), _le(data, 8, 2)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp_size(data)
    else:
        raise ImageFormatError(f"not a PNG, JPEG, GIF or WebP image (starts {data[:8]!r})")
    if not (0 < size[0] <= MAX_SIDE and 0 < size[1] <= MAX_SIDE):
        raise ImageFormatError(f"image header claims an impossible size {size[0]}x{size[1]}")
    return size


def _need(data: bytes, n: int) -> None:
    if len(data) < n:
        raise _Truncated(f"image header truncated ({len(data)} bytes, need {n})")


def _be(data: bytes, at: int, n: int) -> int:
    return int.from_bytes(data[at : at + n], "big")


def _le(data: bytes, at: int, n: int) -> int:
    return int.from_bytes(data[at : at + n], "little")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    # Walk the marker segments until a start-of-frame. SOF0-SOF15 are C0-CF except C4
    # (DHT), C8 (JPG) and CC (DAC), which share the range but carry no frame size.
    pos = 2
    while True:
        pos = data.find(b"\xff", pos)  # tolerate junk between segments, as decoders do
        if pos < 0:
            raise _Truncated("JPEG ends before its frame header")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        _need(data, pos + 1)
        marker = data[pos]
        pos += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        if marker in (0xD9, 0xDA):
            raise ImageFormatError("JPEG has no frame header before its image data")
        _need(data, pos + 2)
        length = _be(data, pos, 2)
        if length < 2:
            raise ImageFormatError("JPEG segment with a length under 2")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            _need(data, pos + 7)  # length, precision, height, width
            return _be(data, pos + 5, 2), _be(data, pos + 3, 2)
        pos += length


def _webp_size(data: bytes) -> tuple[int, int]:
    _need(data, 16)
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sides
        _need(data, 30)
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageFormatError("WebP VP8 frame without its start code")
        return _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2F, then 14-bit (side - 1) fields
        _need(data, 25)
        if data[20] != 0x2F:
            raise ImageFormatError("WebP VP8L chunk without its signature")
        bits = _le(data, 21, 4)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (side - 1) canvas fields
        _need(data, 30)
        return _le(data, 24, 3) + 1, _le(data, 27, 3) + 1
    raise ImageFormatError(f"unknown WebP chunk {chunk!r}")


def image_size_from_data_url(url: str) -> tuple[int, int]:
    """(width, height) of the image in a ``data:`` URL, decoding only what the header needs.

    The first 4 KiB of base64 is decoded; if the header runs on (a JPEG's frame header can
    follow large EXIF or ICC segments), the next span, as long as everything so far, is
    decoded and appended: at most twice what the header needs, and no byte twice.

    Raises:
        ImageFormatError: not a data: URL, bad base64, or see :func:`image_size_from_bytes`.
    """
    comma = url.find(",", 0, 1024)
    if url[:5].lower() != "data:" or comma < 0:
        raise ImageFormatError("not a data: URL")
    if not url[5:comma].lower().endswith(";base64"):
        return image_size_from_bytes(urllib.parse.unquote_to_bytes(url[comma + 1 :]))
    try:
        return _size_from_base64(url, comma + 1)
    except binascii.Error:
        # base64 wrapped with whitespace cannot be cut at fixed offsets: strip it once
        cleaned = "".join(url[comma + 1 :].split())
        if len(cleaned) == len(url) - comma - 1:
            raise ImageFormatError("data: URL holds invalid base64") from None
        try:
            return _size_from_base64(cleaned, 0)
        except binascii.Error:
            raise ImageFormatError("data: URL holds invalid base64") from None


def _size_from_base64(text: str, start: int) -> tuple[int, int]:
    decoded = bytearray()
    pos, step = start, _FIRST_CHUNK
    while True:
        stop = min(pos + step, len(text))
        piece = text[pos:stop]
        if stop == len(text):
            piece += "=" * (-len(piece) % 4)  # tolerate missing padding at the very end
        decoded += base64.b64decode(piece, validate=True)
        try:
            return image_size_from_bytes(bytes(decoded))
        except _Truncated:
            if stop == len(text):
                raise ImageFormatError("image data ends inside its header") from None
        pos, step = stop, stop - start


def image_part_tokens(
    part: Mapping[str, Any],
    model: str,
    *,
    remote_assumption: tuple[int, int] = REMOTE_IMAGE_SIZE,
) -> int:
    """The tokens of one image content part, on ``model``.

    Understands chat parts ``{"type": "image_url", "image_url": {"url", "detail"}}`` and
    Responses parts ``{"type": "input_image", "image_url": "...", "detail": ...}``. The
    size of a ``data:`` URL is read from its header; anything else (an http(s) URL, a
    ``file_id``) is not fetched and is priced as ``remote_assumption``.

    Raises:
        ImageFormatError: a data: URL whose image header cannot be read.
    """
    image = part.get("image_url")
    detail: Any = part.get("detail")
    if isinstance(image, Mapping):
        url = image.get("url")
        detail = image.get("detail", detail)
    else:
        url = image
    if isinstance(url, str) and url[:5].lower() == "data:":
        width, height = image_size_from_data_url(url)
    else:
        width, height = remote_assumption
    return image_tokens(width, height, detail if isinstance(detail, str) else "auto", model)
