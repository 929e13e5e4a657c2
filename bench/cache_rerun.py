"""A rerun answered from the response cache (issue 12): how fast a job goes when every
answer is stored, against the first run that sent it.

Starts the mock server on loopback (in this process), runs a job of ``--lines`` chat
requests with ``--cache`` (no limits, ``--max-in-flight`` 100), then the same job again
into another results file: every line is a cache hit. Prints both wall times and the
server's request count (the rerun must add none).

Usage::

    python bench/cache_rerun.py --lines 20000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from processor import JobConfig, run_job  # noqa: E402
from processor.testing import STATS_KEY, MockConfig, build_app  # noqa: E402


async def main(lines: int) -> None:
    app = build_app(MockConfig(seed=1))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    folder = Path(tempfile.mkdtemp(prefix="bench-rerun-"))
    try:
        job = folder / "job.jsonl"
        job.write_bytes(b"".join(orjson.dumps({"custom_id": f"r{i}", "body": {
            "model": "gpt-4o-mini", "max_tokens": 32,
            "messages": [{"role": "user", "content": f"Question {i}: what is {i} + 1?"}],
        }}) + b"\n" for i in range(lines)))
        cfg = JobConfig(base_url=str(server.make_url("/v1")), auto_rpm=False, auto_tpm=False,
                        cache_path=str(folder / "c.sqlite"), allow_download=False)
        stats = app[STATS_KEY]
        timings = []
        for name in ("first", "rerun"):
            start = time.perf_counter()
            done = await run_job(job, cfg, output=folder / f"{name}.jsonl",
                                 errors=folder / f"{name}.errors.jsonl")
            wall = time.perf_counter() - start
            timings.append(wall)
            print(f"{name:6s} {wall:6.2f}s  {lines / wall:8,.0f} lines/s  ok {done.ok:,}  "
                  f"cached {done.cached:,}  server requests so far {stats.requests:,}")
        print(f"rerun / first: {timings[1] / timings[0]:.2f}")
    finally:
        await server.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().lines))
