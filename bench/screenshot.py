"""Make docs/report.png, the README's picture of ``batchproc report``, the way the browser
test renders it.

    python bench/screenshot.py [--out docs/report.png] [--keep DIR]

Runs a 600-request chat job through ``batchproc`` against ``batchproc mock-server`` on
loopback with faults (5xx, resets, hangs, a 10-second outage) and a lower limit than
the flag (429s until the client learns it), interrupts it with SIGINT after 25 s, reruns
it to the end (two runs in one log) while another client spends part of the same
budget (429s), writes the report and screenshots its top in headless Chromium
(tests/chromium.py: no network). About a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
from _harness import BATCHPROC, MockServer, client_env  # noqa: E402

from tests.chromium import Chromium  # noqa: E402


def write_job(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            model = "gpt-4o" if i % 5 == 0 else "gpt-4o-mini"
            f.write(orjson.dumps({
                "custom_id": f"ticket-{i:05d}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "max_tokens": 120, "messages": [
                    {"role": "user", "content": f"Summarise support ticket {i} in one line."}]},
            }) + b"\n")


async def shoot(url: str, out: Path, height: int) -> bytes:
    async with Chromium() as browser:
        page = await browser.page()
        await page.open(url)
        await page.call("Emulation.setDeviceMetricsOverride", width=1000, height=height,
                        deviceScaleFactor=1, mobile=False)
        shot = await page.call("Page.captureScreenshot", format="png",
                               clip={"x": 0, "y": 0, "width": 1000, "height": height,
                                     "scale": 1})
        assert not page.console_errors and not page.exceptions
        return base64.b64decode(shot["data"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="batchproc-shot-"))
    work.mkdir(parents=True, exist_ok=True)
    job = work / "tickets.jsonl"
    write_job(job, 600)
    for p in list(work.glob("tickets.*")) + list(work.glob("other.*")):
        if p != job:
            p.unlink()
    server = MockServer(work / "server.log", rpm=600, tpm=400_000, latency_ms=120,
                        initial_fill=0.1,
                        faults={"latency-jitter-ms": 200, "fail-500": 0.03, "reset": 0.01,
                                "hang": 0.004, "outage-at": 12, "outage-for": 10},
                        seed=4)
    with server:
        cmd = [BATCHPROC, str(job), "--base-url", server.base_url, "--quiet", "--rpm", "1000",
               "--tpm", "100000", "--timeout", "5", "--max-in-flight", "40"]
        first = subprocess.Popen(cmd, env=client_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            first.wait(25)
        except subprocess.TimeoutExpired:
            first.send_signal(signal.SIGINT)
            first.wait(60)
        time.sleep(1)
        # Another client spends the same budget for a while: 429s, then a slower pace.
        other = work / "other.jsonl"
        write_job(other, 300)
        rival = subprocess.Popen(
            [BATCHPROC, str(other), "--base-url", server.base_url, "--quiet", "--rpm", "400",
             "--run-log", str(work / "other.run.jsonl")],
            env=client_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            subprocess.run(cmd, env=client_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=300, check=False)
        finally:
            if rival.poll() is None:
                rival.send_signal(signal.SIGINT)
            rival.wait(60)
    html = work / "tickets.report.html"
    subprocess.run([BATCHPROC, "report", str(job), "--output", str(html)], env=client_env(),
                   check=True, timeout=120)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(asyncio.run(shoot(html.resolve().as_uri(), args.out, args.height)))
    print(f"{args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB) from {html}")


if __name__ == "__main__":
    main()
