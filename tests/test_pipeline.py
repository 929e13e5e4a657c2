"""stream_results: requests in, records out, for data pipelines (no files)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from processor import JobConfig, stream_results
from tests.conftest import chat_line


def cfg(api: Any, **kw: Any) -> JobConfig:
    return JobConfig(base_url=api.base_url, allow_download=False, backoff_base=0.01,
                     backoff_cap=0.05, **kw)


async def test_every_request_yields_one_record(mock_api: Any) -> None:
    api = await mock_api(latency_ms=5, fail_500=0.2, seed=4)
    requests: list[Any] = [chat_line(i) for i in range(20)]
    requests += [orjson.dumps(chat_line(i)).decode() for i in range(20, 25)]  # JSON text
    requests += [{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bare"}],
                  "metadata": {"row": 26}}]
    requests += [{"model": "gpt-4o-mini"}]  # no messages: a bad request, line 27
    records = [r async for r in stream_results(requests, cfg(api, max_attempts=10))]
    ok = {r["custom_id"]: r for r in records if r["error"] is None}
    bad = [r for r in records if r["error"] is not None]
    assert sorted(ok) == sorted([f"req-{i}" for i in range(25)] + ["line-26"])
    assert ok["line-26"]["metadata"] == {"row": 26}
    assert [(b["error"]["code"], b["error"]["line"]) for b in bad] == [("invalid_line", 27)]
    assert all(r["response"]["status_code"] == 200 for r in ok.values())


async def test_a_slow_reader_holds_the_engine_back_and_can_stop(mock_api: Any) -> None:
    api = await mock_api()
    requests = (chat_line(i) for i in range(1000))
    seen = 0
    stream = stream_results(requests, cfg(api, max_in_flight=2, rpm=60_000))
    async with contextlib.aclosing(stream):
        async for _record in stream:
            seen += 1
            if seen == 3:
                await asyncio.sleep(0.3)  # the reader lags: the engine must wait for it
                # At most: read + queued (max_in_flight) + in flight (max_in_flight),
                # and a little slack for records that finished while we slept.
                assert api.stats.requests <= seen + 2 + 2 + 2
            if seen == 5:
                break  # the caller stops reading: the run winds down, nothing hangs
    sent = api.stats.requests
    await asyncio.sleep(0.2)
    assert api.stats.requests == sent < 20
