"""What the mock server answers: OpenAI's response shapes and error bodies."""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import random
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

__all__ = ["Answers", "error_body", "text_vector"]

RATE_LIMIT_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."
BAD_JSON = "We could not parse the JSON body of your request: it is not valid JSON."
# The real message quotes the key, masked; this one quotes no part of it.
BAD_KEY = (
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys."
)
SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)
#: what a load balancer (nginx here) sends when the API behind it is down.
BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}})


class Answers:
    """Builds the 200 bodies of each endpoint; ids and lengths drawn from ``rng``.

    Args:
        rng: the server's seeded random source.
        embedding_dim: the vector length unless a request sets ``dimensions``.
    """

    def __init__(self, rng: random.Random, embedding_dim: int) -> None:
        self.rng = rng
        self.embedding_dim = embedding_dim
        self.ids = itertools.count(rng.getrandbits(96) << 32)

    def request_id(self) -> str:
        return f"req_{next(self.ids):032x}"

    def builder(self, kind: str) -> Callable[[dict[str, Any], str, int], dict[str, Any]]:
        """The answer of endpoint ``kind``: ``(body, model, prompt_tokens) -> dict``."""
        built: Callable[[dict[str, Any], str, int], dict[str, Any]]
        built = getattr(self, "_" + kind)
        return built

    def _completion_tokens(self, data: Mapping[str, Any]) -> int:
        drawn = 5 + int(self.rng.random() * 36)
        for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
            value = data.get(key)
            if isinstance(value, int) and value >= 0:
                return min(value, drawn)
        return drawn

    def _head(self, prefix: str, kind: str, model: str) -> dict[str, Any]:
        ident = f"{prefix}{next(self.ids):x}"
        return {"id": ident, "object": kind, "created": int(time.time()), "model": model}

    def _chat(self, data: dict[str, Any], model: str, prompt: int) -> dict[str, Any]:
        n = _n(data)
        message = {"role": "assistant", "content": _reply_text(data["messages"])}
        choices = [
            {"index": i, "message": message, "finish_reason": "stop", "logprobs": None}
            for i in range(n)
        ]
        usage = _usage(prompt, self._completion_tokens(data) * n)
        head = self._head("chatcmpl-", "chat.completion", model)
        return head | {"choices": choices, "usage": usage, "system_fingerprint": "fp_mock"}

    def _completions(self, data: dict[str, Any], model: str, prompt: int) -> dict[str, Any]:
        # One choice per prompt (a list of texts or token arrays is a batch of prompts) per n.
        raw = data["prompt"]
        prompts = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        texts = [_reply_text(p, "Mock completion of: ") for p in prompts for _ in range(_n(data))]
        choices = [
            {"index": i, "text": t, "finish_reason": "length", "logprobs": None}
            for i, t in enumerate(texts)
        ]
        usage = _usage(prompt, self._completion_tokens(data) * len(choices))
        return self._head("cmpl-", "text_completion", model) | {"choices": choices, "usage": usage}

    def _embeddings(self, data: dict[str, Any], model: str, prompt: int) -> dict[str, Any]:
        raw = data["input"]
        items = raw if isinstance(raw, list) and not isinstance(raw[0], int) else [raw]
        dim = data.get("dimensions")
        dim = dim if isinstance(dim, int) and 0 < dim <= 4096 else self.embedding_dim
        out = []
        for i, item in enumerate(items):
            vector: Any = text_vector(item, dim)
            if data.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            out.append({"object": "embedding", "index": i, "embedding": vector})
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        return {"object": "list", "data": out, "model": model, "usage": usage}

    def _responses(self, data: dict[str, Any], model: str, prompt: int) -> dict[str, Any]:
        out = self._completion_tokens(data)
        text = {"type": "output_text", "text": _reply_text(data["input"]), "annotations": []}
        rid = next(self.ids)
        message = {
            "type": "message",
            "id": f"msg_{rid:x}",
            "status": "completed",
            "role": "assistant",
        }
        usage = {"input_tokens": prompt, "output_tokens": out, "total_tokens": prompt + out}
        head = {"id": f"resp_{rid:x}", "object": "response", "created_at": int(time.time())}
        output = [message | {"content": [text]}]
        return head | {"status": "completed", "model": model, "output": output, "usage": usage}


def _n(data: Mapping[str, Any]) -> int:
    n = data.get("n", 1)
    return n if isinstance(n, int) and n > 0 else 1


def _usage(prompt: int, out: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}


def text_vector(item: Any, dim: int) -> list[float]:
    """The mock's embedding of one input (a text, or a token array): a unit vector drawn
    from a generator seeded by a hash of the input, so each input has its own vector and
    a test can tell which input a vector belongs to."""
    data = item.encode() if isinstance(item, str) else orjson.dumps(item)
    rng = random.Random(int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little"))
    raw = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _reply_text(value: Any, prefix: str = "Mock answer to: ") -> str:
    """The prefix plus the first 40 characters of the last user text in ``value``."""
    text = ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):  # messages, or responses input items
        for message in reversed(value):
            if isinstance(message, str):
                text = message
            elif isinstance(message, Mapping) and message.get("role", "user") == "user":
                content = message.get("content")
                parts = content if isinstance(content, list) else [{"text": content}]
                texts = [p["text"] for p in parts if isinstance(p, Mapping) and "text" in p]
                text = next((t for t in texts if isinstance(t, str)), "")
            else:
                continue
            break
    return prefix + text[:40]
