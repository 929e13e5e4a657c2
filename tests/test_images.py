"""Image sizes from headers and image token maths (processor.cost.images)."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from processor.cost import images
from processor.cost.images import (
    IMAGE_MODELS,
    ImageFormatError,
    base_model_name,
    image_model,
    image_part_tokens,
    image_size_from_bytes,
    image_size_from_data_url,
    image_tokens,
)

# --------------------------------------------------------------------------- builders


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """Signature + IHDR only: all the reader looks at."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)


def png_1x1() -> bytes:
    """A complete, valid 1x1 greyscale PNG."""
    idat = _png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
    return png_header(1, 1) + idat + _png_chunk(b"IEND", b"")


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b";"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg(width: int, height: int, *, padding: int = 0, sof: int = 0xC0) -> bytes:
    """SOI, JFIF APP0, ``padding`` bytes of APP1 segments, DHT, SOF, SOS, EOI."""
    out = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    while padding > 0:
        size = min(padding, 65000)
        out += _segment(0xE1, b"\x00" * size)
        padding -= size
    out += _segment(0xC4, b"\x00" * 17 + b"\x00")  # a DHT: same C0-CF range, no size
    out += b"\xff"  # a fill byte before the next marker
    out += _segment(sof, struct.pack(">BHHB3B", 8, height, width, 1, 1, 0x11, 0))
    out += _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x00" * 4 + b"\xff\xd9"
    return out


def _riff(chunk: bytes, payload: bytes) -> bytes:
    body = b"WEBP" + chunk + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8(width: int, height: int) -> bytes:
    return _riff(b"VP8 ", b"\x30\x01\x00\x9d\x01\x2a" + struct.pack("<HH", width, height))


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    return _riff(b"VP8L", b"\x2f" + struct.pack("<I", bits) + b"\x00")


def webp_vp8x(width: int, height: int) -> bytes:
    sides = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return _riff(b"VP8X", b"\x00\x00\x00\x00" + sides)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


# --------------------------------------------------------------------------- token maths

TOKENS = [
    # (width, height, detail, model, tokens)
    (150, 150, "high", "gpt-4o", 255),
    (513, 150, "high", "gpt-4o", 425),
    (512, 512, "high", "gpt-4o", 255),
    (1024, 1024, "high", "gpt-4o", 765),
    (2048, 4096, "high", "gpt-4o", 1105),
    (4096, 8192, "low", "gpt-4o", 85),
    (1024, 1024, "auto", "gpt-4o", 765),
    (1024, 1024, "original", "gpt-4o", 765),
    (1024, 1024, "high", "gpt-4o-mini", 2833 + 5667 * 4),
    (1024, 1024, "low", "gpt-4o-mini-2024-07-18", 2833),
    (1024, 1024, "high", "o1", 75 + 150 * 4),
    (2048, 4096, "high", "o3", 75 + 150 * 6),
    (1024, 1024, "high", "gpt-5", 70 + 140 * 4),
    (1024, 1024, "high", "gpt-4.1", 765),
    (1024, 1024, "high", "ft:gpt-4o-mini:acme::abc123", 2833 + 5667 * 4),
    (1024, 1024, "high", "some-other-vendor-model", 765),
    (1024, 1024, "high", "gpt-4.1-mini", 1659),
    (1800, 2400, "high", "gpt-4.1-mini", 2353),
    (1800, 2400, "high", "gpt-4.1-nano", 3572),
    (1024, 1024, "low", "gpt-4.1-mini", 1659),
    (1024, 1024, "high", "o4-mini", 1762),
    (1024, 1024, "high", "gpt-5-mini-2025-08-07", 1659),
    (32, 32, "high", "gpt-5-nano", 3),
    (65535, 1, "high", "gpt-4.1-mini", 2489),  # capped at 1536 patches
]


@pytest.mark.parametrize(
    ("width", "height", "detail", "model", "expected"),
    TOKENS,
    ids=[f"{w}x{h}-{d}-{m}" for w, h, d, m, _ in TOKENS],
)
def test_image_tokens(width: int, height: int, detail: str, model: str, expected: int) -> None:
    assert image_tokens(width, height, detail, model) == expected


def test_tile_and_patch_counts_are_bounded() -> None:
    sides = [1, 31, 32, 33, 511, 512, 513, 767, 768, 769, 2047, 2048, 2049, 5000, 65535]
    for w in sides:
        for h in sides:
            assert 85 + 170 <= image_tokens(w, h, "high", "gpt-4o") <= 85 + 170 * 8
            assert 2 <= image_tokens(w, h, "high", "gpt-4.1-mini") <= 2489  # 1536 x 1.62


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-1, 5)], ids=str)
def test_image_tokens_rejects_non_positive_sizes(width: int, height: int) -> None:
    with pytest.raises(ValueError):
        image_tokens(width, height)


MODELS = [
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
    ("gpt-4.1", "gpt-4.1"),
    ("o1-pro", "o1-pro"),
    ("ft:gpt-4.1-nano:org:name:id", "gpt-4.1-nano"),
    ("openai/GPT-4o-mini", "gpt-4o-mini"),
    ("llama-3", "gpt-4o"),
]


@pytest.mark.parametrize(("model", "prefix"), MODELS, ids=[m for m, _ in MODELS])
def test_image_model_longest_prefix(model: str, prefix: str) -> None:
    assert image_model(model).prefix == prefix


def test_table_rows_are_consistent() -> None:
    prefixes = [row.prefix for row in IMAGE_MODELS]
    assert len(prefixes) == len(set(prefixes))
    for row in IMAGE_MODELS:
        assert (row.base > 0 and row.tile > 0) if row.kind == "tile" else row.multiplier > 1


@pytest.mark.parametrize(
    ("name", "base"),
    [("ft:gpt-4o-mini:org::id", "gpt-4o-mini"), ("GPT-4o", "gpt-4o"), ("a/b/gpt-5", "gpt-5")],
    ids=["fine-tune", "case", "provider"],
)
def test_base_model_name(name: str, base: str) -> None:
    assert base_model_name(name) == base


# --------------------------------------------------------------------------- headers

HEADERS = [
    ("png-1x1", png_1x1(), (1, 1)),
    ("png-header-only", png_header(1800, 2400), (1800, 2400)),
    ("gif", gif(513, 150), (513, 150)),
    ("jpeg", jpeg(640, 480), (640, 480)),
    ("jpeg-progressive-sof2", jpeg(300, 200, sof=0xC2), (300, 200)),
    ("jpeg-after-app-segments", jpeg(1024, 768, padding=200_000), (1024, 768)),
    ("webp-vp8", webp_vp8(400, 300), (400, 300)),
    ("webp-vp8l", webp_vp8l(16383, 1), (16383, 1)),
    ("webp-vp8x", webp_vp8x(2048, 4096), (2048, 4096)),
]


@pytest.mark.parametrize(("data", "size"), [h[1:] for h in HEADERS], ids=[h[0] for h in HEADERS])
def test_image_size_from_bytes(data: bytes, size: tuple[int, int]) -> None:
    assert image_size_from_bytes(data) == size


BAD = [
    ("empty", b""),
    ("text", b"hello, world"),
    ("png-truncated", png_header(10, 10)[:20]),
    ("png-zero-width", png_header(0, 10)),
    ("png-too-wide", png_header(70_000, 10)),
    ("png-no-ihdr", png_header(10, 10).replace(b"IHDR", b"IDAT")),
    ("gif-truncated", gif(10, 10)[:8]),
    ("gif-zero-height", gif(10, 0)),
    ("jpeg-truncated-before-sof", jpeg(10, 10, padding=1000)[:500]),
    ("jpeg-truncated-in-sof", jpeg(10, 10)[: jpeg(10, 10).index(b"\xff\xc0") + 7]),
    ("jpeg-zero-height", jpeg(10, 0)),
    ("jpeg-no-sof", b"\xff\xd8" + _segment(0xE0, b"JFIF\x00") + b"\xff\xda\x00\x02\xff\xd9"),
    ("jpeg-bad-length", b"\xff\xd8\xff\xe0\x00\x01"),
    ("webp-truncated", webp_vp8(10, 10)[:27]),
    ("webp-zero", webp_vp8(0, 10)),
    ("webp-vp8-no-start-code", webp_vp8(10, 10).replace(b"\x9d\x01\x2a", b"\x00\x00\x00")),
    (
        "webp-vp8l-no-signature",
        webp_vp8l(10, 10).replace(b"VP8L\x06\x00\x00\x00\x2f", b"VP8L\x06\x00\x00\x00\x00"),
    ),
    ("webp-vp8x-too-big", webp_vp8x(100_000, 10)),
    ("webp-unknown-chunk", _riff(b"ABCD", b"\x00" * 20)),
]


@pytest.mark.parametrize("data", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_headers_raise(data: bytes) -> None:
    with pytest.raises(ImageFormatError):
        image_size_from_bytes(data)


def test_image_format_error_is_a_value_error() -> None:
    assert issubclass(ImageFormatError, ValueError)


# --------------------------------------------------------------------------- data URLs


def _wrap(text: str, width: int = 76) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


DATA_URLS = [
    ("png", data_url(png_1x1()), (1, 1)),
    ("jpeg", data_url(jpeg(640, 480), "image/jpeg"), (640, 480)),
    ("uppercase-scheme", "DATA:image/gif;BASE64," + data_url(gif(7, 9)).split(",")[1], (7, 9)),
    ("missing-padding", data_url(gif(7, 9)).rstrip("="), (7, 9)),
    (
        "mime-wrapped",
        "data:image/gif;base64," + _wrap(data_url(gif(7, 9)).split(",")[1], 4),
        (7, 9),
    ),
    ("percent-encoded", "data:image/gif," + "".join(f"%{b:02x}" for b in gif(3, 4)), (3, 4)),
    (
        "jpeg-sof-past-first-chunk",
        data_url(jpeg(1024, 768, padding=300_000), "image/jpeg"),
        (1024, 768),
    ),
]


@pytest.mark.parametrize(("url", "size"), [d[1:] for d in DATA_URLS], ids=[d[0] for d in DATA_URLS])
def test_image_size_from_data_url(url: str, size: tuple[int, int]) -> None:
    assert image_size_from_data_url(url) == size


BAD_URLS = [
    ("not-data", "https://example.com/cat.png"),
    ("no-comma", "data:image/png;base64"),
    ("bad-base64", "data:image/png;base64,!!!!notbase64!!!!"),
    ("not-an-image", data_url(b"just some text, not an image at all")),
    ("truncated-png", data_url(png_header(10, 10)[:18])),
    ("jpeg-ends-before-sof", data_url(jpeg(10, 10, padding=100_000)[:90_000], "image/jpeg")),
]


@pytest.mark.parametrize("url", [b[1] for b in BAD_URLS], ids=[b[0] for b in BAD_URLS])
def test_bad_data_urls_raise(url: str) -> None:
    with pytest.raises(ImageFormatError):
        image_size_from_data_url(url)


@pytest.fixture
def decoded_chars(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many base64 characters each b64decode call gets."""
    seen: list[int] = []
    real: Callable[..., bytes] = base64.b64decode

    def spy(text: Any, *args: Any, **kwargs: Any) -> bytes:
        seen.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", spy)  # what processor.cost.images calls
    return seen


def test_data_url_decodes_only_a_prefix(decoded_chars: list[int]) -> None:
    url = data_url(png_header(800, 600) + b"\x00" * 3_000_000)
    assert image_size_from_data_url(url) == (800, 600)
    assert decoded_chars == [images._FIRST_CHUNK]


def test_data_url_decodes_progressively_and_never_twice(decoded_chars: list[int]) -> None:
    head = jpeg(1024, 768, padding=300_000)  # the frame header sits ~300 kB in
    url = data_url(head + b"\x00" * 3_000_000, "image/jpeg")
    assert image_size_from_data_url(url) == (1024, 768)
    assert decoded_chars[0] == images._FIRST_CHUNK
    # each round decodes a fresh span as long as all before it: contiguous doubling
    assert decoded_chars[1:] == [images._FIRST_CHUNK * 2**i for i in range(len(decoded_chars) - 1)]
    assert sum(decoded_chars) <= 2 * len(head) * 4 // 3  # at most twice what was needed


# --------------------------------------------------------------------------- content parts

PNG_150 = data_url(png_header(150, 150))
PARTS = [
    (
        "chat-data-high",
        {"type": "image_url", "image_url": {"url": PNG_150, "detail": "high"}},
        "gpt-4o",
        255,
    ),
    ("chat-data-auto", {"type": "image_url", "image_url": {"url": PNG_150}}, "gpt-4o", 255),
    (
        "chat-data-low",
        {"type": "image_url", "image_url": {"url": PNG_150, "detail": "low"}},
        "gpt-4o",
        85,
    ),
    ("chat-remote", {"type": "image_url", "image_url": {"url": "https://x/y.png"}}, "gpt-4o", 765),
    ("chat-url-string", {"type": "image_url", "image_url": PNG_150}, "gpt-4o", 255),
    ("chat-data-patch", {"type": "image_url", "image_url": {"url": PNG_150}}, "gpt-4.1-mini", 41),
    ("responses-data", {"type": "input_image", "image_url": PNG_150, "detail": "high"}, "o1", 225),
    ("responses-low", {"type": "input_image", "image_url": PNG_150, "detail": "low"}, "o1", 75),
    ("responses-file-id", {"type": "input_image", "file_id": "file-abc"}, "gpt-4o", 765),
    (
        "responses-odd-detail",
        {"type": "input_image", "image_url": PNG_150, "detail": 7},
        "gpt-4o",
        255,
    ),
]


@pytest.mark.parametrize(
    ("part", "model", "expected"), [p[1:] for p in PARTS], ids=[p[0] for p in PARTS]
)
def test_image_part_tokens(part: dict[str, Any], model: str, expected: int) -> None:
    assert image_part_tokens(part, model) == expected


def test_remote_assumption_is_configurable() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}
    assert image_part_tokens(part, "gpt-4o", remote_assumption=(512, 512)) == 255
    assert image_part_tokens(part, "gpt-4o", remote_assumption=(2048, 4096)) == 1105


def test_unreadable_data_url_part_raises() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(ImageFormatError):
        image_part_tokens(part, "gpt-4o")
