"""A real run through the CLI against the mock server (429s, 5xx, resets, hangs, a bad
line, a hostile custom_id), then ``batchproc report``, then the HTML opened in headless
Chromium with no network: every chart drawn, nothing fetched, no script error, nothing
injected. Skipped (visibly) only when there is no Chromium binary."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.tools.report import CHARTS
from processor.tools.report.timeline import Timeline
from tests.chromium import Chromium, find_chromium
from tests.conftest import chat_line, start_cli, write_jsonl

KEY = "sk-report-test-0123456789abcdef"
HOSTILE_ID = "<img src=x onerror=\"document.title='pwned'\">"

#: per chart: what must be drawn with data (series name -> least points / bars).
DRAWN = """
(() => {
  const out = {};
  for (const svg of document.querySelectorAll('svg.chart')) {
    const series = {};
    for (const path of svg.querySelectorAll('path.series')) {
      series[path.dataset.series] = (path.getAttribute('d').match(/[ML]/g) || []).length;
    }
    for (const g of svg.querySelectorAll('g.series.bars')) {
      series[g.dataset.series] = g.querySelectorAll('rect').length;
    }
    const box = svg.getBoundingClientRect();
    out[svg.dataset.chart] = {series, width: box.width, height: box.height};
  }
  return out;
})()
"""


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "processor.cli", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def browser() -> Any:
    if find_chromium() is None:
        pytest.skip("no chromium binary (Debian's chromium package): the report's browser "
                    "test cannot run")
    async with Chromium() as chromium:
        yield chromium


async def test_report_of_a_real_run_renders_in_chromium(tmp_path: Path, mock_api: Any,
                                                        browser: Chromium) -> None:
    api = await mock_api(latency_ms=20, latency_jitter_ms=30, fail_500=0.08, reset=0.04,
                         hang=0.03, seed=5, overloaded_models=frozenset({"busy-model"}))
    lines: list[Any] = [chat_line(i) for i in range(60)]
    lines += [chat_line(100 + i, model="busy-model") for i in range(3)] + [b"{oops\n"]
    lines[60] = dict(lines[60], custom_id=HOSTILE_ID)  # written off: in the failures table
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    proc = await start_cli(job, api.base_url, "--timeout", "0.5", "--max-attempts", "3",
                           "--outage-window", "0", "--api-key", KEY, "--header",
                           f"X-Api-Key: {KEY}-hdr", max_in_flight=8)
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode in (0, 1), err.decode()
    log = tmp_path / "job.run.jsonl"
    assert KEY.encode() not in log.read_bytes()
    events = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    statuses = {e.get("st") for e in events if e["ev"] == "a"}
    kinds = {e.get("er") for e in events if e["ev"] == "a"}
    assert {200, 429, 500} <= statuses and "connection_error" in kinds

    code, out, err = await run_cli("report", str(job))
    assert code == 0, err
    html = tmp_path / "job.report.html"
    assert f"report: {html}" in err
    page_text = html.read_text()
    assert KEY not in page_text and "<img src=x" not in page_text
    code, out, _ = await run_cli("report", str(log), "--json")
    figures = orjson.loads(out)
    assert figures["answered"] >= 50 and figures["failures"]["rate_limited"] == 3
    assert figures["failures"]["invalid_line"] == 1 and figures["n429"] >= 9

    page = await browser.page()
    await page.open(html.resolve().as_uri())
    drawn = await page.evaluate(DRAWN)
    assert set(drawn) == set(CHARTS)
    for chart in drawn.values():
        assert chart["width"] > 300 and chart["height"] > 80
    least = {"requests": ["sent", "answered"], "tokens": ["charged", "used"],
             "in_flight": ["in flight"], "latency": ["p50", "p90", "p99"],
             "errors": ["429", "5xx", "timeout / connection"], "progress": ["done"],
             "eta": ["eta"]}
    for key, names in least.items():
        for name in names:
            assert drawn[key]["series"].get(name, 0) >= 1, (key, name, drawn[key])
    # Data, not a single dot: the run spans several buckets.
    assert drawn["requests"]["series"]["sent"] >= 3
    # One point per time bucket that holds a progress event (written about once a second,
    # and once more at the end, which may fall in the same bucket as the last tick).
    assert drawn["progress"]["series"]["done"] >= min(3, progress_buckets(events))
    text = await page.evaluate("document.body.innerText")
    assert HOSTILE_ID in text and "rate_limited" in text and "invalid_line" in text
    assert await page.evaluate("document.title") != "pwned"
    assert await page.evaluate("document.querySelectorAll('img, script').length") == 0
    assert page.console_errors == [] and page.exceptions == []
    assert page.requests == [html.resolve().as_uri()]  # nothing else fetched


def progress_buckets(events: list[dict[str, Any]]) -> int:
    """How many of the report's time buckets hold a progress event (the bucket width is
    the timeline's, widened to hold the whole run as the report does)."""
    timeline = Timeline()
    for event in events:
        timeline.at(float(event.get("td") or event.get("t") or 0.0))
    return len({int(e["t"] / timeline.width) for e in events if e["ev"] == "p"})
