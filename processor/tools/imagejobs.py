"""Build a vision job: one chat request per image in a folder, as Batch API JSONL.

Files are recognised by their header bytes (:func:`processor.cost.images.image_size_from_bytes`),
not by their names: a ``.png`` holding a JPEG is sent as ``image/jpeg``, and a ``.jpg``
holding text, a truncated header or an impossible size is skipped with a note. Images
are read, encoded and written one at a time, so memory holds one image, never the folder.

Resizing (``max_side``) needs Pillow, the optional ``images`` extra; nothing else does.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ..cost.images import ImageFormatError, base_model_name, image_size_from_bytes
from ..errors import ConfigError

__all__ = [
    "DETAILS",
    "PILLOW_HINT",
    "ImageJobStats",
    "image_request",
    "iter_files",
    "read_image",
    "sniff_format",
    "write_image_jobs",
]

DETAILS = ("low", "high", "auto")
PILLOW_HINT = "pip install 'batchproc[images]'"
_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
#: models that refuse ``max_tokens`` and want ``max_completion_tokens`` (reasoning models).
_COMPLETION_TOKENS_MODELS = ("o1", "o3", "o4", "gpt-5")


@dataclass(slots=True)
class ImageJobStats:
    """What :func:`write_image_jobs` did.

    Attributes:
        written: requests written (one per image).
        skipped: files that were not readable images.
        resized: images shrunk to ``max_side`` before encoding.
    """

    written: int = 0
    skipped: int = 0
    resized: int = 0


def sniff_format(data: bytes) -> str | None:
    """``png``, ``jpeg``, ``gif`` or ``webp`` from the magic bytes, else ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def iter_files(
    folder: Path,
    *,
    exclude: frozenset[Path] = frozenset(),
    on_error: Callable[[Path, OSError], None] | None = None,
) -> Iterator[Path]:
    """Every file under ``folder``, depth first, sorted by name at each level.

    Hidden entries (``.DS_Store``, ``.git/``) are left out, and directory symlinks are
    not followed (no loops). ``exclude`` holds resolved paths to leave out, such as the
    output file when it sits inside ``folder``. A subfolder that cannot be listed goes
    to ``on_error`` (and is skipped) if given, else raises.
    """
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")),
                             key=lambda e: e.name)
    except OSError as exc:
        if on_error is None:
            raise
        on_error(folder, exc)
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from iter_files(path, exclude=exclude, on_error=on_error)
        elif entry.is_file() and path.resolve() not in exclude:
            yield path


def read_image(path: Path) -> tuple[bytes, str, int, int]:
    """The bytes, format and (width, height) of the image at ``path``.

    Only 16 bytes are read from a file that is not an image at all, so a stray video in
    the folder costs nothing.

    Raises:
        ImageFormatError: not a PNG, JPEG, GIF or WebP, or a header we cannot read.
    """
    with open(path, "rb") as f:
        head = f.read(16)
        fmt = sniff_format(head)
        if fmt is None:
            what = "an empty file" if not head else f"starts {head[:8]!r}"
            raise ImageFormatError(f"not a PNG, JPEG, GIF or WebP image ({what})")
        data = head + f.read()
    width, height = image_size_from_bytes(data)
    return data, fmt, width, height


def _resize(data: bytes, fmt: str, max_side: int, what: str) -> tuple[bytes, str]:
    """Shrink to fit ``max_side`` x ``max_side`` (aspect kept), in the same format if
    Pillow can write it, else PNG."""
    try:
        from PIL import Image  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ConfigError(
            f"--max-side {max_side}: {what} needs resizing, but Pillow is not installed; "
            f"install it with: {PILLOW_HINT}"
        ) from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            out_img = img
            if fmt == "jpeg" and img.mode not in ("RGB", "L"):
                out_img = img.convert("RGB")
            options: dict[str, Any] = {}
            if fmt == "jpeg":
                options["quality"] = 90
            for key in ("exif", "icc_profile"):  # keep orientation and colours
                if fmt in ("jpeg", "webp") and img.info.get(key):
                    options[key] = img.info[key]
            buffer = io.BytesIO()
            try:
                out_img.save(buffer, format=fmt.upper(), **options)
            except (KeyError, OSError):  # e.g. a Pillow built without WebP support
                buffer = io.BytesIO()
                out_img.save(buffer, format="PNG")
                fmt = "png"
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageFormatError(f"cannot decode it to resize: {exc}") from exc
    return buffer.getvalue(), fmt


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name become lone surrogates
        return False
    return True


def image_request(
    custom_id: str,
    data_url: str,
    *,
    prompt: str,
    model: str,
    detail: str = "auto",
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """One Batch API line: a chat completion with the prompt and one image.

    Reasoning models (o1, o3, o4, gpt-5) get ``max_completion_tokens``, since they
    refuse ``max_tokens``; every other model gets ``max_tokens``.
    """
    content = [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": data_url, "detail": detail}},
    ]
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if max_tokens is not None:
        reasoning = base_model_name(model).startswith(_COMPLETION_TOKENS_MODELS)
        body["max_completion_tokens" if reasoning else "max_tokens"] = max_tokens
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_image_jobs(
    folder: Path,
    out: IO[bytes],
    *,
    prompt: str,
    model: str,
    detail: str = "auto",
    max_side: int | None = None,
    max_tokens: int | None = None,
    on_note: Callable[[str], None] = lambda note: None,
    exclude: frozenset[Path] = frozenset(),
) -> ImageJobStats:
    """Write one request line per image under ``folder`` to ``out``, in sorted path order.

    Args:
        folder: walked recursively (see :func:`iter_files`).
        out: a binary stream; each line is written as soon as its image is encoded.
        prompt: the text sent with every image.
        model: the model named in every body.
        detail: ``low``, ``high`` or ``auto``.
        max_side: shrink images whose longer side exceeds this (needs Pillow).
        max_tokens: the completion budget of each request (omitted when ``None``).
        on_note: called with one line per skipped file.
        exclude: resolved paths to leave out (the output file).

    Returns:
        The counts.

    Raises:
        ConfigError: an image needs resizing and Pillow is not installed.
    """
    if detail not in DETAILS:
        raise ConfigError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    if max_side is not None and max_side < 1:
        raise ConfigError(f"--max-side must be at least 1, got {max_side}")
    stats = ImageJobStats()

    def unlistable(path: Path, exc: OSError) -> None:
        stats.skipped += 1
        on_note(f"skipped folder {path.relative_to(folder).as_posix()}: {exc.strerror}")

    for path in iter_files(folder, exclude=exclude, on_error=unlistable):
        custom_id = path.relative_to(folder).as_posix()
        if not custom_id.isprintable() or not _is_utf8(custom_id):
            stats.skipped += 1
            on_note(f"skipped {custom_id!r}: its name is not printable UTF-8 (a JSON custom_id)")
            continue
        try:
            data, fmt, width, height = read_image(path)
            if max_side is not None and max(width, height) > max_side:
                what = f"{custom_id} ({width}x{height})"
                data, fmt = _resize(data, fmt, max_side, what)
                stats.resized += 1
        except (ImageFormatError, OSError) as exc:
            stats.skipped += 1
            on_note(f"skipped {custom_id}: {exc}")
            continue
        url = f"data:{_MEDIA_TYPES[fmt]};base64," + base64.b64encode(data).decode("ascii")
        line = image_request(
            custom_id, url, prompt=prompt, model=model, detail=detail, max_tokens=max_tokens
        )
        out.write(orjson.dumps(line) + b"\n")
        stats.written += 1
    return stats
