"""jobs-from-images: sniffing real image files by header, the request shape, resizing."""

from __future__ import annotations

import base64
import io
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from processor.cli.commands import register
from processor.cost.images import image_size_from_data_url
from processor.tools import imagejobs
from processor.tools.imagejobs import image_request, write_image_jobs

PROMPT = "Describe this product."

# --------------------------------------------------------------------------- builders


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 30, 40)) -> bytes:
    """A complete, decodable 8-bit RGB PNG of one colour."""
    row = b"\x00" + bytes(rgb) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(row * height)) + _chunk(b"IEND", b""))


def gif(width: int, height: int) -> bytes:
    """A complete, decodable one-colour GIF.

    The LZW stream sends a clear code before every pixel, so codes stay 3 bits wide and
    no table is needed: valid, if not small.
    """
    codes = [4, 0] * (width * height) + [5]  # clear=4, pixel index 0, end=5
    bits = sum(code << (3 * i) for i, code in enumerate(codes))
    data = bits.to_bytes((3 * len(codes) + 7) // 8, "little")
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                      for i in range(0, len(data), 255))
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0)
            + b"\x10\x80\x60\xff\xff\xff"  # a two-colour palette
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
            + b"\x02" + blocks + b"\x00;")


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, JFIF APP0, SOF0 (the size), SOS, EOI: all a header reader looks at."""
    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    return (b"\xff\xd8" + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
            + segment(0xC0, struct.pack(">BHHB3B", 8, height, width, 1, 1, 0x11, 0))
            + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x00" * 4 + b"\xff\xd9")


def cli(args: list[str]) -> Any:
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, args)


def job_lines(stdout: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stdout.splitlines()]


def image_part(line: dict[str, Any]) -> dict[str, Any]:
    part = line["body"]["messages"][0]["content"][1]
    assert part["type"] == "image_url"
    return dict(part["image_url"])


# --------------------------------------------------------------------------- sniffing

_GIF = gif(10, 7)
# (file name, bytes, expected media type and size, or the note of a skipped file)
FILES: list[tuple[str, bytes, tuple[str, tuple[int, int]] | str]] = [
    ("a.png", png(64, 64), ("image/png", (64, 64))),
    ("b.gif", _GIF, ("image/gif", (10, 7))),
    ("c.jpg", jpeg_header(300, 200), ("image/jpeg", (300, 200))),
    ("lies.png", _GIF, ("image/gif", (10, 7))),  # the bytes decide, not the name
    ("notes.txt", b"hello, world\n", "not a PNG, JPEG, GIF or WebP image (starts b'hello, w')"),
    ("photo.jpg", b"<html>not a photo</html>", "not a PNG, JPEG, GIF or WebP image"),
    ("empty.png", b"", "an empty file"),
    ("truncated.png", png(64, 64)[:20], "image header truncated (20 bytes, need 24)"),
    ("zero.png", png(1, 1).replace(struct.pack(">II", 1, 1), struct.pack(">II", 0, 0), 1),
     "image header claims an impossible size 0x0"),
    ("cut.jpg", jpeg_header(300, 200)[:22], "image header truncated (22 bytes, need 24)"),
    ("nosof.jpg", b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20, "no frame header"),
]


@pytest.mark.parametrize(("name", "data", "expected"), FILES, ids=[f[0] for f in FILES])
def test_each_file_is_sniffed_by_its_header(tmp_path: Path, name: str, data: bytes,
                                            expected: Any) -> None:
    (tmp_path / name).write_bytes(data)
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", PROMPT, "--model", "gpt-4o"])
    if isinstance(expected, str):
        assert result.exit_code == 1  # nothing written
        assert f"skipped {name}: " in result.stderr and expected in result.stderr
        assert "0 images written, 1 skipped" in result.stderr
        assert result.stdout_bytes == b""
        return
    assert result.exit_code == 0, result.stderr
    [line] = job_lines(result.stdout_bytes)
    url = image_part(line)["url"]
    media, size = expected
    assert url.startswith(f"data:{media};base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == data  # sent byte for byte
    assert image_size_from_data_url(url) == size
    assert "1 images written, 0 skipped" in result.stderr


def test_all_files_together_in_sorted_recursive_order(tmp_path: Path) -> None:
    for name, data, _ in FILES:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "z.png").write_bytes(png(3, 3))
    (tmp_path / "sub" / "a.gif").write_bytes(_GIF)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # hidden: not even a note
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.png").write_bytes(png(2, 2))
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", PROMPT, "--model", "gpt-4o"])
    assert result.exit_code == 0, result.stderr
    ids = [line["custom_id"] for line in job_lines(result.stdout_bytes)]
    assert ids == ["a.png", "b.gif", "c.jpg", "lies.png", "sub/a.gif", "sub/deeper/z.png"]
    skipped = sum(1 for *_, e in FILES if isinstance(e, str))
    assert result.stderr.count("skipped ") == skipped
    assert ".DS_Store" not in result.stderr
    assert result.stderr.strip().endswith(f"6 images written, {skipped} skipped")


def test_request_shape_is_a_batch_api_chat_line(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(png(8, 8))
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", PROMPT, "--model",
                  "gpt-4o-mini", "--detail", "low", "--max-tokens", "42"])
    [line] = job_lines(result.stdout_bytes)
    assert line["custom_id"] == "x.png"
    assert (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
    body = line["body"]
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 42
    [message] = body["messages"]
    assert message["role"] == "user"
    assert message["content"][0] == {"type": "text", "text": PROMPT}
    assert image_part(line)["detail"] == "low"


@pytest.mark.parametrize(("model", "key"), [
    ("gpt-4o", "max_tokens"), ("gpt-4.1-mini", "max_tokens"), ("o3", "max_completion_tokens"),
    ("o4-mini", "max_completion_tokens"), ("gpt-5-mini", "max_completion_tokens"),
])
def test_reasoning_models_get_max_completion_tokens(model: str, key: str) -> None:
    body = image_request("a", "data:,", prompt="p", model=model, max_tokens=9)["body"]
    assert body[key] == 9 and {"max_tokens", "max_completion_tokens"} & set(body) == {key}


def test_bad_detail_is_refused(tmp_path: Path) -> None:
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", "p", "--model", "m",
                  "--detail", "medium"])
    assert result.exit_code == 2


def test_images_are_read_and_written_one_at_a_time(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png(4, 4))
    events: list[str] = []
    real_read = imagejobs.read_image

    def read(path: Path) -> tuple[bytes, str, int, int]:
        events.append("read " + path.name)
        return real_read(path)

    class Out(io.BytesIO):
        def write(self, data: Any) -> int:
            events.append("write")
            return super().write(data)

    monkeypatch.setattr(imagejobs, "read_image", read)
    stats = write_image_jobs(tmp_path, Out(), prompt="p", model="gpt-4o")
    assert stats.written == 3
    assert events == ["read 0.png", "write", "read 1.png", "write", "read 2.png", "write"]


def test_output_file_inside_the_folder_is_not_read_back(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(4, 4))
    out = tmp_path / "job.jsonl"
    out.write_bytes(b"stale\n")
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", "p", "--model", "gpt-4o",
                  "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes == b""
    assert [line["custom_id"] for line in job_lines(out.read_bytes())] == ["a.png"]
    assert "1 images written to" in result.stderr and "0 skipped" in result.stderr
    assert not (tmp_path / "job.jsonl.partial").exists()


def test_not_a_folder(tmp_path: Path) -> None:
    result = cli(["jobs-from-images", str(tmp_path / "nope"), "--prompt", "p", "--model", "m"])
    assert result.exit_code == 2 and "not a folder" in result.output


# --------------------------------------------------------------------------- resizing


def _no_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import PIL` raise ImportError, installed or not
    monkeypatch.setitem(sys.modules, "PIL", None)


def test_without_pillow_a_needed_resize_fails_clearly(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _no_pillow(monkeypatch)
    (tmp_path / "big.png").write_bytes(png(300, 200))
    out = tmp_path / "out" / "job.jsonl"
    out.parent.mkdir()
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", "p", "--model", "gpt-4o",
                  "--max-side", "100", "--output", str(out)])
    assert result.exit_code == 2
    assert "big.png (300x200) needs resizing" in result.stderr
    assert "pip install 'batchproc[images]'" in result.stderr
    assert list(out.parent.iterdir()) == []  # no partial job left behind


def test_without_pillow_no_resize_needed_works(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _no_pillow(monkeypatch)
    (tmp_path / "small.png").write_bytes(png(64, 64))
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", "p", "--model", "gpt-4o",
                  "--max-side", "768"])
    assert result.exit_code == 0, result.stderr
    [line] = job_lines(result.stdout_bytes)
    assert image_size_from_data_url(image_part(line)["url"]) == (64, 64)


def _pillow_jpeg(width: int, height: int) -> bytes:
    image_mod = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    image_mod.new("RGB", (width, height), (10, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "make", "media", "size"), [
    ("wide.png", lambda: png(300, 200), "image/png", (100, 67)),
    ("tall.jpg", lambda: _pillow_jpeg(120, 480), "image/jpeg", (25, 100)),
    ("anim.gif", lambda: gif(160, 40), "image/gif", (100, 25)),
    ("small.png", lambda: png(64, 64), "image/png", (64, 64)),  # small enough: untouched
])
def test_max_side_downsizes_keeping_aspect_and_format(tmp_path: Path, name: str, make: Any,
                                                      media: str, size: tuple[int, int]) -> None:
    pytest.importorskip("PIL")
    data = make()
    (tmp_path / name).write_bytes(data)
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", "p", "--model", "gpt-4o",
                  "--max-side", "100"])
    assert result.exit_code == 0, result.stderr
    [line] = job_lines(result.stdout_bytes)
    url = image_part(line)["url"]
    assert url.startswith(f"data:{media};base64,")
    assert image_size_from_data_url(url) == size
    if size == (64, 64):
        assert base64.b64decode(url.split(",", 1)[1]) == data
        assert "resized" not in result.stderr
    else:
        assert "1 resized" in result.stderr


def test_header_fine_but_body_broken_is_skipped_when_resizing(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    (tmp_path / "broken.png").write_bytes(png(300, 200)[:40])  # header whole, pixels gone
    (tmp_path / "ok.png").write_bytes(png(300, 200))
    result = cli(["jobs-from-images", str(tmp_path), "--prompt", "p", "--model", "gpt-4o",
                  "--max-side", "100"])
    assert result.exit_code == 0, result.stderr
    assert "skipped broken.png: cannot decode it to resize" in result.stderr
    assert [line["custom_id"] for line in job_lines(result.stdout_bytes)] == ["ok.png"]


def test_unlistable_subfolder_is_skipped_with_a_note(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "x.png").write_bytes(png(4, 4))
    (tmp_path / "ok.png").write_bytes(png(4, 4))
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    notes: list[str] = []
    out = io.BytesIO()
    stats = write_image_jobs(tmp_path, out, prompt="p", model="gpt-4o", on_note=notes.append)
    assert (stats.written, stats.skipped) == (1, 1)
    assert notes == ["skipped folder locked: Permission denied"]
