"""Fuzz: every input line, however odd, is either a request ready to send or exactly one
error record; nothing between reading a line and sending it raises (item 5 of issue 9)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.cost import TokenCounter
from processor.jobs import DEFAULT_ENDPOINT, Job, iter_jobs
from processor.limits.limiter import Limiter
from processor.run.engine import Engine

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"])},
                          optional={"content": json_values, "name": json_values}),
    json_values,
), max_size=3)
bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(["gpt-4o-mini", "text-embedding-3-small"]),
                        json_values)},
    optional={"messages": messages, "input": json_values, "prompt": json_values,
              "max_tokens": json_values, "max_completion_tokens": json_values,
              "n": json_values, "metadata": json_values, "custom_id": json_values},
)
urls = st.one_of(st.sampled_from(["/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                                  "/v1/responses", "/v1/x"]), json_values)
batch_lines = st.fixed_dictionaries(
    {"body": st.one_of(bodies, json_values)},
    optional={"custom_id": json_values, "url": urls, "method": json_values,
              "metadata": json_values},
)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["bare", "batch", "deep", "raw", "bigint"]))
    if shape == "raw":
        return draw(st.binary(max_size=60)).replace(b"\n", b" ") + b"\n"
    if shape == "bigint":  # beyond 64 bits: orjson reads these as floats
        n = draw(st.integers(min_value=2**64, max_value=10**400))
        key = draw(st.sampled_from(["max_tokens", "n", "seed", "temperature"]))
        return (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], '
                b'"%s": %d}\n' % (key.encode(), n))
    obj = draw(bodies if shape == "bare" else batch_lines)
    if shape == "deep":
        # orjson reads up to 1024 levels and writes at most 254.
        where = draw(st.sampled_from(["content", "metadata", "extra"]))
        body = obj["body"] if isinstance(obj.get("body"), dict) else obj
        if where == "content":
            body["messages"] = [{"role": "user", "content": _DEEP}]
        else:
            body[where] = _DEEP
        # Written by hand: orjson itself refuses to write what it will read here.
        depth = draw(st.integers(200, 1000))
        deep = b"[" * depth + b'"x"' + b"]" * depth
        return orjson.dumps(obj).replace(orjson.dumps(_DEEP), deep, 1) + b"\n"
    return orjson.dumps(obj) + b"\n"


_DEEP = "\x00deep\x00"


class Sink:
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def write_result(self, record: dict[str, Any], hashed_line: int | None = None) -> None:
        raise AssertionError("nothing is sent here")

    def write_error(self, record: dict[str, Any]) -> None:
        orjson.dumps(record)  # every record must serialise
        self.errors.append(record)

    def maybe_sync(self) -> None:
        pass


COUNTER = TokenCounter(allow_download=False)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(lines(), min_size=1, max_size=8))
def test_every_line_is_sendable_or_one_error_record(tmp_path_factory: Any,
                                                    raw_lines: list[bytes]) -> None:
    path: Path = tmp_path_factory.mktemp("fuzz") / "job.jsonl"
    path.write_bytes(b"".join(raw_lines))
    sink = Sink()
    engine = Engine(_NoClient(), Limiter.per_minute(None, None), sink,
                    cost=lambda job: COUNTER.cost(job.body, job.url))
    prepared = []
    items = list(iter_jobs(path, default_endpoint=DEFAULT_ENDPOINT))
    assert len(items) == len(raw_lines)
    for item in items:
        before = len(sink.errors)
        job = engine.outcomes.prepare(item)
        if job is None:
            assert len(sink.errors) == before + 1
            assert sink.errors[-1]["error"]["line"] == item.line
        else:
            assert isinstance(job, Job) and len(sink.errors) == before
            assert orjson.loads(job.payload) == job.body
            orjson.dumps(job.metadata)
            prepared.append(job)
    assert len(prepared) + len(sink.errors) == len(raw_lines)


class _NoClient:
    async def post(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        raise AssertionError("nothing is sent here")
