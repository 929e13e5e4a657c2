"""Time ``batchproc merge`` of a four-way split of a 1,000,000-line job.

Writes the job and four shard results files (each result about 420 bytes, like a short
chat answer) to a temporary folder, then runs the real CLI in a subprocess, first in
the shards' order, then in input order (--job, the external sort), and prints the wall
time and the peak memory of each.

    PYTHONPATH=$PWD .venv/bin/python bench/merge.py [--lines 1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from processor.shards import Shard, shard_of
from processor.store.shardfiles import shard_paths


def _write(folder: Path, lines: int) -> Path:
    job = folder / "job.jsonl"
    shards = [open(shard_paths(job, Shard(k, 4))[0], "wb") for k in range(1, 5)]
    with open(job, "wb") as f:
        for i in range(lines):
            cid = f"req-{i}"
            f.write(orjson.dumps({"custom_id": cid, "method": "POST",
                                  "url": "/v1/chat/completions",
                                  "body": {"model": "gpt-4o-mini", "max_tokens": 16,
                                           "messages": [{"role": "user",
                                                         "content": f"Question {i}?"}]}})
                    + b"\n")
        # Shards finish in their own order: each writes its ids in reverse.
        for i in reversed(range(lines)):
            cid = f"req-{i}"
            record = {"id": f"batch_req_{i:032x}", "custom_id": cid,
                      "response": {"status_code": 200, "request_id": f"req_{i:024x}",
                                   "body": {"id": f"chatcmpl-{i}", "object": "chat.completion",
                                            "model": "gpt-4o-mini",
                                            "choices": [{"index": 0, "message": {
                                                "role": "assistant",
                                                "content": f"Answer number {i}."},
                                                "finish_reason": "stop"}],
                                            "usage": {"prompt_tokens": 12,
                                                      "completion_tokens": 5,
                                                      "total_tokens": 17}}},
                      "error": None}
            shards[shard_of(cid, 4) - 1].write(orjson.dumps(record) + b"\n")
    for f in shards:
        f.close()
    return job


def _run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one ``batchproc merge``."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "processor.cli", "merge", *args],
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"merge exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    lines = parser.parse_args().lines
    with tempfile.TemporaryDirectory(prefix="bench-merge-", dir=os.getcwd()) as tmp:
        folder = Path(tmp)
        job = _write(folder, lines)
        size = sum(p.stat().st_size for p in folder.glob("*.shard-*.results.jsonl"))
        print(f"{lines:,} results in 4 shards, {size / 1e6:,.0f} MB")
        wall, peak = _run(["--job", str(job), "--no-sort"])
        print(f"merge --job --no-sort: {wall:.1f} s ({lines / wall:,.0f} lines/s), "
              f"peak RSS {peak:.0f} MB")
        wall, peak = _run(["--job", str(job)])
        print(f"merge --job (input order): {wall:.1f} s ({lines / wall:,.0f} lines/s), "
              f"peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
