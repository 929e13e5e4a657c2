"""estimate: token, cost and time figures of a job, checked against the documented rules."""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from processor.cli.commands import register
from processor.cost import TokenCounter
from processor.errors import ConfigError
from processor.tools.estimate import (
    PRICES,
    Price,
    estimate_job,
    load_prices,
    min_seconds,
    price_for,
)
from tests.conftest import write_jsonl

CHAT = "/v1/chat/completions"


def png_data_url(width: int, height: int) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


def line(custom_id: str, messages: list[dict[str, Any]], max_tokens: int,
         model: str = "gpt-4o") -> dict[str, Any]:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def image_message(url: str, text: str = "a" * 12) -> dict[str, Any]:
    return {"role": "user", "content": [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": url, "detail": "high"}},
    ]}


def chars(n: int) -> int:
    return math.ceil(n / 4)


# The job, and its figures worked out by hand from the documented rules: every chat
# request is 3 tokens to prime the reply, plus per message 3 + ceil(len/4) of each string
# field (role, content); a 150x150 image at detail high on gpt-4o is 85 + 170 x 1 tile.
KNOWN_JOB = [
    line("r1", [{"role": "user", "content": "x" * 40}], 100),
    line("r2", [{"role": "system", "content": "y" * 10}, {"role": "user", "content": "z" * 7}],
         50),
    line("r3", [image_message(png_data_url(150, 150))], 20),
]
IMAGE = 85 + 170 * 1 * 1
PROMPTS = [
    3 + (3 + chars(4) + chars(40)),
    3 + (3 + chars(6) + chars(10)) + (3 + chars(4) + chars(7)),
    3 + (3 + chars(4) + chars(12)) + IMAGE,
]
COMPLETIONS = [100, 50, 20]
TOTALS = [p + c for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]


def offline() -> TokenCounter:
    # no tiktoken encoding for gpt-4o: the character estimate, the same on every machine
    return TokenCounter(allow_download=False)


@pytest.fixture
def known_job(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "job.jsonl", KNOWN_JOB)


def cli(args: list[str]) -> Any:
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, args)


def test_known_job_figures(known_job: Path) -> None:
    est = estimate_job(known_job, counter=offline())
    assert IMAGE == 255 and PROMPTS == [17, 17, 265]
    assert est.requests == 3 and est.bad_lines == 0
    assert est.prompt_tokens == sum(PROMPTS)
    assert est.max_completion_tokens == sum(COMPLETIONS)
    assert est.image_tokens == IMAGE
    assert est.total_tokens == sum(TOTALS)
    # gpt-4o: $2.50 in, $10.00 out per million
    assert est.cost_usd == pytest.approx((sum(PROMPTS) * 2.50 + sum(COMPLETIONS) * 10.0) / 1e6)
    assert est.unpriced_models == []
    assert (est.min_seconds, est.binding_limit) == (None, None)


def test_figures_are_what_the_engine_charges(known_job: Path) -> None:
    counter = offline()
    est = estimate_job(known_job, counter=counter)
    charged = sum(counter.cost(item["body"], CHAT).total for item in KNOWN_JOB)
    assert est.total_tokens == charged


@pytest.mark.parametrize(("rpm", "tpm", "seconds", "binding"), [
    (None, None, None, None),
    (6, None, 3 / 6 * 60, "rpm"),
    (None, sum(TOTALS), 60.0, "tpm"),
    (6, 1000, 30.0, "rpm"),
    (600, 300, sum(TOTALS) / 300 * 60, "tpm"),
], ids=["no limits", "rpm only", "tpm only", "rpm binds", "tpm binds"])
def test_binding_limit(known_job: Path, rpm: float | None, tpm: float | None,
                       seconds: float | None, binding: str | None) -> None:
    est = estimate_job(known_job, counter=offline(), rpm=rpm, tpm=tpm)
    assert est.binding_limit == binding
    assert est.min_seconds == (None if seconds is None else pytest.approx(seconds))
    assert min_seconds(3, sum(TOTALS), rpm, tpm) == (est.min_seconds, binding)


def test_requests_over_the_whole_tpm_are_counted_apart(known_job: Path) -> None:
    tpm = TOTALS[2] - 1  # only the image request cannot fit
    est = estimate_job(known_job, counter=offline(), tpm=tpm)
    assert est.too_large == 1 and est.requests == 3
    assert est.min_seconds == pytest.approx((TOTALS[0] + TOTALS[1]) / tpm * 60)


LYING_PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\njunk").decode()


def test_bad_lines_and_lying_images_never_crash(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "job.jsonl", [
        KNOWN_JOB[0],
        b"{not json\n",
        KNOWN_JOB[1],
        line("liar", [image_message(LYING_PNG)], 10),
        line("bad-b64", [image_message("data:image/png;base64,@@@@")], 10),
        line("r1", [{"role": "user", "content": "dup id"}], 10),
    ])
    est = estimate_job(path, counter=offline())
    assert est.requests == 2
    assert est.bad_lines == 4 and est.bad_line_numbers == [2, 4, 5, 6]
    assert est.prompt_tokens == PROMPTS[0] + PROMPTS[1]


def test_bad_line_numbers_are_capped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "job.jsonl", [b"[]\n"] * 150 + [KNOWN_JOB[0]])
    est = estimate_job(path, counter=offline())
    assert est.bad_lines == 150 and est.requests == 1
    assert est.bad_line_numbers == list(range(1, 101))


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-4o", Price(2.50, 10.00)),
    ("gpt-4o-2024-08-06", Price(2.50, 10.00)),
    ("gpt-4o-mini", Price(0.15, 0.60)),  # the longest prefix wins over gpt-4o
    ("gpt-4o-mini-2024-07-18", Price(0.15, 0.60)),
    ("ft:gpt-4o-mini:acme::abc123", Price(0.15, 0.60)),
    ("openai/gpt-4.1-nano", Price(0.10, 0.40)),
    ("o3-mini", Price(1.10, 4.40)),
    ("text-embedding-3-small", Price(0.02, 0.0)),
    ("llama-3-70b", None),
])
def test_price_lookup(model: str, expected: Price | None) -> None:
    assert price_for(model) == expected


def test_price_overrides_via_cli(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [
        line("a", [{"role": "user", "content": "x" * 40}], 100),  # 17 + 100, overridden
        line("b", [{"role": "user", "content": "x" * 40}], 100, model="gpt-4o-mini"),  # built-in
        line("c", [{"role": "user", "content": "x" * 40}], 100, model="acme-large"),  # added
        line("d", [{"role": "user", "content": "x" * 40}], 100, model="mystery-1"),  # unknown
    ])
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o": {"input": 1, "output": 2}, "acme-": {"input": 3}}))
    result = cli(["estimate", str(job), "--prices", str(prices), "--json", "--offline"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    expected = (17 * 1 + 100 * 2) + (17 * 0.15 + 100 * 0.60) + (17 * 3 + 100 * 0)
    assert data["cost_usd"] == pytest.approx(expected / 1e6)
    assert data["unpriced_models"] == ["mystery-1"]
    assert data["by_model"]["mystery-1"]["cost_usd"] is None
    assert data["requests"] == 4  # unpriced requests still count for tokens and time


@pytest.mark.parametrize("content", [
    "[1, 2]", '{"gpt-4o": {"output": 1}}', '{"gpt-4o": {"input": -1}}',
    '{"gpt-4o": {"input": "cheap"}}', "not json",
])
def test_bad_prices_file(tmp_path: Path, known_job: Path, content: str) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    with pytest.raises(ConfigError):
        load_prices(prices)
    result = cli(["estimate", str(known_job), "--prices", str(prices)])
    assert result.exit_code == 2 and "prices" in result.stderr


def test_json_output_keys_and_values(known_job: Path) -> None:
    result = cli(["estimate", str(known_job), "--json", "--offline", "--rpm", "6",
                  "--tpm", "1,000"])
    assert result.exit_code == 0, result.stderr
    data = orjson.loads(result.stdout)  # exactly one JSON object on stdout
    assert {"requests", "bad_lines", "prompt_tokens", "max_completion_tokens", "image_tokens",
            "cost_usd", "min_seconds", "binding_limit", "unpriced_models",
            "bad_line_numbers"} <= set(data)
    assert (data["requests"], data["prompt_tokens"], data["image_tokens"]) == (3, 299, 255)
    assert (data["min_seconds"], data["binding_limit"]) == (30.0, "rpm")
    assert data["prices_as_of"] == "2025-06"


def test_human_output(known_job: Path) -> None:
    result = cli(["estimate", str(known_job), "--offline", "--tpm", str(sum(TOTALS))])
    assert result.exit_code == 0, result.stderr
    for text in ("requests", "3", "prompt tokens", "299 (images 255)", "1m 00s (tpm binds)",
                 "as of 2025-06", "gpt-4o"):
        assert text in result.stdout


def test_default_max_tokens_and_endpoint(tmp_path: Path) -> None:
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"model": "gpt-4o", "messages": [
        {"role": "user", "content": "hi"}]}])  # states no max_tokens
    result = cli(["estimate", str(chat), "--json", "--offline", "--default-max-tokens", "7"])
    assert orjson.loads(result.stdout)["max_completion_tokens"] == 7
    embed = write_jsonl(tmp_path / "embed.jsonl", [{"model": "text-embedding-3-small",
                                                    "input": "x" * 8}])
    result = cli(["estimate", str(embed), "--json", "--offline", "--endpoint", "/v1/embeddings"])
    data = orjson.loads(result.stdout)
    assert (data["prompt_tokens"], data["max_completion_tokens"]) == (2, 0)
    assert data["cost_usd"] == pytest.approx(2 * PRICES["text-embedding-3-small"].input / 1e6)


def test_missing_file() -> None:
    result = cli(["estimate", "/nonexistent/job.jsonl"])
    assert result.exit_code == 2
