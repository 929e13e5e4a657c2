"""The mock server's own token charge (processor.testing.pricing), row by row.

Expected numbers are worked out by hand from the rule (characters / 4 rounded up once per
prompt, plus max_tokens x n) and from OpenAI's image price examples, not from any code.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from processor.testing import cost_of
from processor.testing.pricing import image_size, price

TESTING = Path(__file__).resolve().parent.parent / "processor" / "testing"


def png(width: int, height: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", width, height)
            + b"\x08\x02\x00\x00\x00" + b"\x00" * 4)


def data_url(raw: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


def image(raw: bytes | str, detail: str | None = None) -> dict[str, Any]:
    url = raw if isinstance(raw, str) else data_url(raw)
    inner: dict[str, Any] = {"url": url} | ({"detail": detail} if detail else {})
    return {"type": "image_url", "image_url": inner}


def chat(*contents: Any, model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": c} for c in contents],
            **extra}


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
TOOLS_CHARS = len(json.dumps(TOOLS, separators=(",", ":")))

ROWS: list[tuple[str, str, dict[str, Any], int, int]] = [
    # (id, kind, body, prompt tokens, completion tokens)
    ("chat-text", "chat", chat("hello there"), 3, 0),
    ("chat-rounded-once", "chat", chat("a", "b", "c"), 1, 0),
    ("chat-budget-times-n", "chat", chat("hello there", max_tokens=7, n=2), 3, 14),
    ("chat-max-completion-first", "chat",
     chat("hi", max_completion_tokens=5, max_tokens=9), 1, 5),
    ("chat-name", "chat", {"model": "m", "messages": [
        {"role": "user", "name": "bob", "content": "hi"}]}, 2, 0),
    ("chat-tools", "chat", chat("hi", tools=TOOLS), math.ceil((2 + TOOLS_CHARS) / 4), 0),
    ("chat-text-part", "chat", chat([{"type": "text", "text": "abcdefgh"}]), 2, 0),
    ("completions-default-16", "completions", {"model": "m", "prompt": "abcdefgh"}, 2, 16),
    ("completions-per-prompt", "completions",
     {"model": "m", "prompt": ["one", "two"], "max_tokens": 3, "n": 2}, 2, 12),
    ("completions-token-array", "completions", {"model": "m", "prompt": [1, 2, 3]}, 3, 16),
    ("completions-token-arrays", "completions", {"model": "m", "prompt": [[1, 2], [3]]}, 3, 32),
    ("embeddings-text", "embeddings", {"model": "e", "input": "hello"}, 2, 0),
    ("embeddings-each-input", "embeddings", {"model": "e", "input": ["a", "bb", "ccc"]}, 3, 0),
    ("embeddings-tokens", "embeddings", {"model": "e", "input": [[1, 2, 3], [4]]}, 4, 0),
    ("responses-instructions", "responses",
     {"model": "m", "input": "what is up", "instructions": "be brief",
      "max_output_tokens": 4}, 5, 4),
    ("responses-parts", "responses", {"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "abcd"}]}]}, 1, 0),
    # images: 150 x 150 is one 512 px tile; 4000 x 3000 -> 2048 x 1536 -> 1024 x 768: 4 tiles
    ("image-high", "chat", chat([image(png(150, 150), "high")]), 85 + 170, 0),
    ("image-auto-is-high", "chat", chat([image(png(150, 150))]), 255, 0),
    ("image-low", "chat", chat([image(png(4000, 3000), "low")]), 85, 0),
    ("image-big", "chat", chat([image(png(4000, 3000), "high")]), 85 + 4 * 170, 0),
    ("image-1024", "chat", chat([image(png(1024, 1024))]), 765, 0),
    ("image-remote", "chat", chat([image("https://example.com/a.png")]), 765, 0),
    ("image-and-text", "chat",
     chat([{"type": "text", "text": "abcd"}, image(png(150, 150))]), 1 + 255, 0),
    ("image-4o-mini", "chat", chat([image(png(150, 150))], model="gpt-4o-mini"), 8500, 0),
    ("image-o1", "chat", chat([image(png(150, 150))], model="o1"), 225, 0),
    ("image-gpt-5", "chat", chat([image(png(150, 150))], model="gpt-5"), 210, 0),
    # patches: 1024 x 1024 = 1024 patches x 1.62 = 1658.88; the guide's 1800 x 2400 example
    # shrinks to 1452 patches (x 1.62 = 2352.24); 150 px = 5 x 5 patches x 2.46 = 61.5
    ("patch-1024", "chat", chat([image(png(1024, 1024))], model="gpt-4.1-mini"), 1659, 0),
    ("patch-shrunk", "chat", chat([image(png(1800, 2400))], model="gpt-4.1-mini"), 2353, 0),
    ("patch-nano", "chat", chat([image(png(150, 150))], model="gpt-4.1-nano"), 62, 0),
    ("responses-image", "responses", {"model": "gpt-4o", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": data_url(png(150, 150)), "detail": "low"}]}]},
     85, 0),
]


@pytest.mark.parametrize(("kind", "body", "prompt", "completion"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_price(kind: str, body: dict[str, Any], prompt: int, completion: int) -> None:
    charged = price(body, kind)
    assert (charged.prompt, charged.completion) == (prompt, completion)
    assert charged.total == prompt + completion


@pytest.mark.parametrize(
    ("endpoint", "body", "total"),
    [("/v1/chat/completions", chat("hello there", max_tokens=7), 10),
     ("/openai/deployments/d/chat/completions", chat("hello there"), 3),
     ("/v1/completions", {"prompt": "abcd"}, 17),
     ("/v1/embeddings", {"input": "abcd"}, 1),
     ("/v1/responses", {"input": "abcd", "max_output_tokens": 2}, 3)],
    ids=["chat", "azure-chat", "completions", "embeddings", "responses"],
)
def test_cost_of_by_path(endpoint: str, body: dict[str, Any], total: int) -> None:
    assert cost_of(body, endpoint) == total


def test_cost_of_unknown_endpoint() -> None:
    with pytest.raises(ValueError, match="does not serve"):
        cost_of({"input": "x"}, "/v1/moderations")


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + b"\xff\xff" + sof


@pytest.mark.parametrize(
    ("raw", "size"),
    [(png(640, 480), (640, 480)),
     (b"GIF89a" + struct.pack("<HH", 300, 200) + b"\x00" * 4, (300, 200)),
     (b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x0a\x00\x00\x00" + b"\x00" * 4
      + (639).to_bytes(3, "little") + (479).to_bytes(3, "little"), (640, 480)),
     (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 10 + struct.pack("<HH", 320, 240),
      (320, 240)),
     (b"RIFF\x00\x00\x00\x00WEBPVP8L" + b"\x00\x00\x00\x00\x2f"
      + ((99) | (49 << 14)).to_bytes(4, "little"), (100, 50)),
     (_jpeg(120, 80), (120, 80))],
    ids=["png", "gif", "webp-vp8x", "webp-vp8", "webp-vp8l", "jpeg"],
)
def test_image_size(raw: bytes, size: tuple[int, int]) -> None:
    assert image_size(raw) == size


@pytest.mark.parametrize(
    "url",
    ["data:image/png;base64,AAAA", "data:image/png;base64,!!!", "data:image/png,raw",
     data_url(png(0, 10)), data_url(png(10, 10)[:20]), data_url(b"\xff\xd8\xff\xe0\x00")],
    ids=["not-an-image", "bad-base64", "not-base64", "zero-side", "cut-header", "cut-jpeg"],
)
def test_unreadable_image_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        price(chat([image(url)]), "chat")


def test_the_server_prices_on_its_own() -> None:
    # The server's charge is written apart from the client's costing code: an end-to-end
    # test that finds no 429 then means both agree, not that one copies the other.
    banned = {"tokens", "images", "cost", "estimate"}
    for path in TESTING.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = set((node.module or "").split("."))
                names = {alias.name for alias in node.names}
                assert not (parts | names) & banned, f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not set(alias.name.split(".")) & banned, path.name


# -- the client against the server's own charge ------------------------------------------

_DESCRIPTION = "Look up a product in the catalogue by its name and return all its fields. "
_BIG_TOOLS = [{"type": "function", "function": {
    "name": f"lookup_{k}", "description": _DESCRIPTION * 3,
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}
    for k in range(4)]
AGREEMENT: list[Any] = [
    pytest.param("/v1/chat/completions", lambda i: chat(f"Question number {i}?", max_tokens=20,
                                                        model="gpt-4o-mini"), id="chat"),
    pytest.param("/v1/chat/completions", lambda i: chat(
        [{"type": "text", "text": f"Describe {i}"}, image(png(150 + i, 150))], max_tokens=20),
        id="chat-image"),
    pytest.param("/v1/embeddings", lambda i: {"model": "text-embedding-3-small",
                                              "input": [f"doc {i}", "another"]}, id="embeddings"),
    pytest.param("/v1/completions", lambda i: {"model": "gpt-3.5-turbo-instruct",
                                               "prompt": f"Say {i}", "max_tokens": 20},
                 id="completions"),
    pytest.param("/v1/responses", lambda i: {"model": "gpt-4o-mini", "input": f"Question {i}?",
                                             "instructions": "be brief",
                                             "max_output_tokens": 20}, id="responses"),
    pytest.param("/v1/chat/completions", lambda i: chat(
        f"Question {i}?", max_tokens=10, tools=_BIG_TOOLS, model="gpt-4o-mini"),
        id="chat-tools"),
    pytest.param("/v1/responses", lambda i: {"model": "gpt-4o-mini", "input": f"Question {i}?",
                                             "max_output_tokens": 10, "tools": _BIG_TOOLS},
                 id="responses-tools"),
    pytest.param("/v1/completions", lambda i: {"model": "gpt-3.5-turbo-instruct",
                                               "prompt": [f"p{i}-{j}" for j in range(8)],
                                               "max_tokens": 20},
                 id="completions-batch"),
]


@pytest.mark.parametrize(("endpoint", "make"), AGREEMENT)
async def test_client_within_the_servers_limit_gets_no_429(
    mock_api: Any, tmp_path: Path, endpoint: str, make: Any
) -> None:
    # Both sides told the same TPM, the server's bucket empty at start: a client that
    # charges each request at least what the server charges never meets a 429.
    from processor import JobConfig, run_job
    from tests.conftest import write_jsonl

    n = 20
    bodies = [make(i) for i in range(n)]
    tpm = max(cost_of(b, endpoint) for b in bodies) * 60 * 40  # about 40 requests a second
    api = await mock_api(tpm=tpm, initial_fill=0.0)
    job = write_jsonl(tmp_path / "job.jsonl", [
        {"custom_id": f"r{i}", "method": "POST", "url": endpoint, "body": b}
        for i, b in enumerate(bodies)])
    stats = await run_job(job, JobConfig(
        base_url=api.base_url, tpm=tpm, rpm=None, auto_rpm=False, auto_tpm=False,
        allow_download=False, max_attempts=30, backoff_base=0.01, backoff_cap=0.05))
    assert stats.ok == n
    assert api.stats.n_429 == 0


def test_hostile_shapes_are_priced_not_crashed() -> None:
    deep: Any = "x"
    for _ in range(900):  # deeper than orjson writes, within what it reads
        deep = [deep]
    assert price(chat("hi", tools=deep), "chat").prompt >= 1
    assert price({"model": "m", "input": deep}, "embeddings").prompt >= 1
    thin = price(chat([image(png(1, 100_000))], model="gpt-4.1-mini"), "chat").prompt
    assert thin == 2489  # a 1 px wide strip: capped at 1536 patches (x 1.62), never 0
    odd = {"model": 7, "n": "2", "max_tokens": True, "messages": [None, 3, {"content": 5}]}
    assert price(odd, "chat").completion == 0
