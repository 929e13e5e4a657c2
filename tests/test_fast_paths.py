"""The hot path's shortcuts keep every guarantee: each shortcut against the slow path it
skips, at its edges (bench/ab_cpu.py measures what they save)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.client.answers import MAX_DEPTH, classify
from processor.client.masking import Masker
from processor.errors import ServerError
from processor.limits.limiter import Limiter
from processor.run.keys import KeyPool, Lane
from processor.stats import Stats
from processor.store import writer
from processor.store.ledger import LEDGER_ENTRY, ledger_path
from processor.store.writer import ResultWriter

KEY = "sk-proj-abc123DEF456ghi789"
HEADERS = {"x-request-id": "req_1"}


def nested(depth: int, pad: int = 0) -> bytes:
    """A JSON object whose deepest list is ``depth`` containers down (the object is 1),
    padded with a string of ``pad`` bytes."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"pad":"' + b"x" * pad + b'","a":' + inner + b"}"


@pytest.mark.parametrize("pad", [0, 5000], ids=["small-counted", "large-walked"])
def test_depth_limit_holds_on_both_sides_of_the_size_shortcut(pad: int) -> None:
    assert classify(200, nested(MAX_DEPTH, pad), HEADERS).status == 200
    with pytest.raises(ServerError, match=f"nested deeper than {MAX_DEPTH} levels"):
        classify(200, nested(MAX_DEPTH + 1, pad), HEADERS)


def test_brackets_in_strings_do_not_make_a_shallow_answer_deep() -> None:
    # More brackets than the limit, all inside a string: the count says "maybe", the walk
    # says shallow.
    raw = orjson.dumps({"data": "[{" * 300, "choices": []})
    assert len(raw) < 4096
    assert classify(200, raw, HEADERS).body["data"] == "[{" * 300


@pytest.mark.parametrize("masker", [None, Masker(), Masker(["short"])],
                         ids=["none", "empty", "only-short-secrets"])
def test_nothing_to_mask_leaves_the_answer_as_sent(masker: Masker | None) -> None:
    raw = orjson.dumps({"data": [{"embedding": [0.5]}], "echo": "\\u0073k-proj-abc"})
    response = classify(200, raw, {"x-request-id": KEY}, masker)
    assert response.body == orjson.loads(raw) and response.request_id == KEY


def test_a_key_is_masked_raw_escaped_and_in_the_request_id() -> None:
    masker = Masker([KEY])
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    raw = (b'{"data":[],"a":"' + KEY.encode() + b'","b":{"c":["' + escaped.encode()
           + b'"]},"' + escaped.encode() + b'":1}')
    response = classify(200, raw, {"x-request-id": f"req-{KEY}"}, masker)
    assert KEY not in orjson.dumps(response.body).decode()
    assert response.body["a"] == "***" and response.body["b"]["c"] == ["***"]
    assert response.body["***"] == 1 and response.request_id == "req-***"


class _ShortWrites:
    """``os`` for the writer, where every write takes at most ``most`` bytes."""

    def __init__(self, most: int) -> None:
        self.most, self.calls = most, 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self.calls += 1
        return os.write(fd, bytes(data[: self.most]))

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_short_writes_are_carried_on_to_whole_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _ShortWrites(most=7)
    monkeypatch.setattr(writer, "os", fake)
    results = tmp_path / "r.jsonl"
    w = ResultWriter(results, tmp_path / "e.jsonl")
    w.write_result({"custom_id": "a", "error": None}, hashed_line=42)
    w.write_result({"custom_id": "b", "error": None}, hashed_line=43)
    w.close()
    assert results.read_bytes() == (b'{"custom_id":"a","error":null}\n'
                                    b'{"custom_id":"b","error":null}\n')
    entries = list(LEDGER_ENTRY.iter_unpack(ledger_path(results).read_bytes()))
    assert [digest for _, digest in entries] == [42, 43]
    assert fake.calls > 4


def test_learning_settles_for_good_once_nothing_is_auto() -> None:
    auto = Limiter.per_minute(None, None, auto_requests=True)
    pool = KeyPool([Lane(None, auto)], Stats())
    assert pool.learning
    auto.stop_learning()
    assert not pool.learning
    assert not KeyPool([Lane(None, Limiter.per_minute(100, None))], Stats()).learning


def test_learning_settles_with_limiters_per_model_when_no_model_can_learn() -> None:
    from processor.limits.models import LimitPlan, ModelLimit, ModelLimiters
    from tests.test_model_limits import _local

    def pool(plan: LimitPlan) -> tuple[KeyPool, ModelLimiters[Limiter]]:
        models = ModelLimiters(plan, _local)
        return KeyPool([Lane(None, models.get(None), models=models)], Stats()), models

    # The flags given (nothing auto): settled at once, whatever models come later.
    fixed, models = pool(LimitPlan(ModelLimit(100, 1000), auto_rpm=False, auto_tpm=False))
    assert not fixed.learning and fixed._settled
    models.get("gpt-4o")
    assert not fixed.learning
    # auto: every new model learns, so it never settles; a new model learns again.
    auto, models = pool(LimitPlan())
    assert auto.learning
    for limiter in models.all():
        limiter.stop_learning()
    assert not auto.learning and not auto._settled
    models.get("gpt-4o")
    assert auto.learning
