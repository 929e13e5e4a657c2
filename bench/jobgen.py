"""Deterministic job files for the benchmarks (a seeded ``random.Random`` per file).

Every generator returns a :class:`JobFile`: where it is, how many lines, how the
lines' ids look (``<id_prefix><N>``, N from 1), and the job's total token cost by the
mock server's own formula (:func:`processor.testing.cost_of`).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from processor.testing import cost_of

CHAT_URL = "/v1/chat/completions"
EMBED_URL = "/v1/embeddings"
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"

# English-looking text tokenizes at roughly the 4 characters per token that both the
# client's estimate and the server's formula assume.
_WORDS = (
    "the of and to in is for on that with as by it at from this be are or an was have not "
    "which but all can more one about time also new data when will other would there their "
    "system model request limit batch token minute answer server client queue retry error "
    "report result value table water river city music garden history market energy light "
    "paper window travel summer winter animal forest planet ocean bridge engine signal"
).split()


@dataclass(frozen=True)
class JobFile:
    """A generated job.

    Attributes:
        path: the JSONL file.
        n: its number of lines (all valid requests).
        id_prefix: ids are ``<id_prefix>1 .. <id_prefix><n>`` (``line-`` for bare bodies).
        endpoint: the endpoint of every line.
        total_tokens: sum of ``cost_of(body, endpoint)`` over the lines.
    """

    path: Path
    n: int
    id_prefix: str
    endpoint: str
    total_tokens: int


def text(rng: random.Random, n_chars: int) -> str:
    """About ``n_chars`` characters of words (exactly ``n_chars`` once long enough)."""
    parts: list[str] = []
    size = 0
    while size < n_chars:
        word = rng.choice(_WORDS)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)[:n_chars].rstrip() or "hi"


def _write(path: Path, lines: Any) -> None:
    with open(path, "wb", buffering=1 << 20) as f:
        for line in lines:
            f.write(line)


def chat_job(
    path: Path,
    n: int,
    *,
    seed: int,
    prompt_chars: tuple[int, int] = (20, 80),
    max_tokens: tuple[int, int] = (50, 50),
    model: str = CHAT_MODEL,
) -> JobFile:
    """Batch-shaped chat lines ``{"custom_id": "req-N", "method", "url", "body"}``.

    Prompt lengths and ``max_tokens`` are drawn uniformly from the given ranges.
    """
    rng = random.Random(seed)
    total = 0

    def lines() -> Any:
        nonlocal total
        for i in range(1, n + 1):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": text(rng, rng.randint(*prompt_chars))}],
                "max_tokens": rng.randint(*max_tokens),
            }
            total += cost_of(body, CHAT_URL)
            record = {"custom_id": f"req-{i}", "method": "POST", "url": CHAT_URL, "body": body}
            yield orjson.dumps(record) + b"\n"

    _write(path, lines())
    return JobFile(path, n, "req-", CHAT_URL, total)


def embedding_job(path: Path, n: int, *, seed: int, model: str = EMBED_MODEL) -> JobFile:
    """Batch-shaped embedding lines with ids ``emb-N`` and short inputs."""
    rng = random.Random(seed)
    total = 0

    def lines() -> Any:
        nonlocal total
        for i in range(1, n + 1):
            body = {"model": model, "input": f"document {i} about {text(rng, 40)}"}
            total += cost_of(body, EMBED_URL)
            record = {"custom_id": f"emb-{i}", "method": "POST", "url": EMBED_URL, "body": body}
            yield orjson.dumps(record) + b"\n"

    _write(path, lines())
    return JobFile(path, n, "emb-", EMBED_URL, total)


def bare_embedding_job(path: Path, n: int, *, seed: int, model: str = EMBED_MODEL) -> JobFile:
    """Bare bodies ``{"model": ..., "input": ...}`` (no custom_id: ids are ``line-N``).

    Built from a few hundred precomputed phrases so a million lines take seconds.
    """
    rng = random.Random(seed)
    phrases = [text(rng, rng.randint(12, 40)) for _ in range(512)]
    total = 0

    def lines() -> Any:
        nonlocal total
        for i in range(1, n + 1):
            body = {"model": model, "input": f"doc {i} {phrases[rng.randrange(512)]}"}
            total += cost_of(body, EMBED_URL)
            yield orjson.dumps(body) + b"\n"

    _write(path, lines())
    return JobFile(path, n, "line-", EMBED_URL, total)


def done_results(
    path: Path,
    job: JobFile,
    n_done: int,
    *,
    seed: int,
    ledger: tuple[Path, Callable[[str, bytes], bytes]] | None = None,
) -> None:
    """Write result records for lines 1 .. ``n_done`` of a bare embedding ``job`` in the
    OpenAI Batch output shape, as batchproc writes them (ids ``line-N``).

    With ``ledger = (path, entry)``, also write batchproc's ledger beside the results:
    ``entry(custom_id, raw_input_line)`` per record, as batchproc notes each answer.
    """
    rng = random.Random(seed)
    vector = [round(rng.uniform(-0.5, 0.5), 6) for _ in range(8)]
    ledger_file = open(ledger[0], "wb", buffering=1 << 20) if ledger else None
    try:
        with open(job.path, "rb") as src, open(path, "wb", buffering=1 << 20) as out:
            for i, raw in enumerate(src, 1):
                if i > n_done:
                    break
                body = orjson.loads(raw)
                cid = f"{job.id_prefix}{i}"
                record = {
                    "id": "batch_req_" + uuid.UUID(int=rng.getrandbits(128)).hex,
                    "custom_id": cid,
                    "response": {
                        "status_code": 200,
                        "request_id": f"req_{rng.getrandbits(128):032x}",
                        "body": {
                            "object": "list",
                            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                            "model": body.get("model", EMBED_MODEL),
                            "usage": {"prompt_tokens": 9, "total_tokens": 9},
                        },
                    },
                    "error": None,
                }
                out.write(orjson.dumps(record) + b"\n")
                if ledger_file is not None and ledger is not None:
                    ledger_file.write(ledger[1](cid, raw))
    finally:
        if ledger_file is not None:
            ledger_file.close()
