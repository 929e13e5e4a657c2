"""The response cache's cost per request on a large file (issue 12).

Builds a cache of ``--entries`` answers (default 1,000,000 chat answers of about 700
bytes, written straight into the schema :mod:`processor.store.cache` makes), then times,
one call at a time with ``perf_counter_ns``:

- ``lookup hit``: :meth:`ResponseCache.get` of a stored key (random order);
- ``lookup miss``: of a key not stored;
- ``hit, parsed``: a hit plus ``orjson.loads`` of its body, what a cache hit costs the run
  before its result line is written;
- ``store (caller)``: :meth:`ResponseCache.put` on the run's thread (serialising the
  body and handing it to the writer);
- ``store (writer)``: the writer thread's commit, per answer (``BEGIN IMMEDIATE``,
  ``INSERT``, ``COMMIT`` of 256-answer batches), from its total time.

Usage::

    python bench/cache.py                     # 1,000,000 entries in a temp folder
    python bench/cache.py --entries 100000 --keep /tmp/c.sqlite
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from processor.store.cache import ResponseCache, connect  # noqa: E402
from processor.store.cacheadmin import file_bytes  # noqa: E402


def answer(i: int) -> dict[str, object]:
    text = f"Answer {i}: " + " ".join(f"word{(i * 7 + k) % 997}" for k in range(60))
    return {"id": f"chatcmpl-{i:032x}", "object": "chat.completion", "created": 1_760_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 90, "total_tokens": 130},
            "system_fingerprint": "fp_0123456789"}


def key(i: int) -> bytes:
    return i.to_bytes(8, "big") * 2


def build(path: Path, n: int) -> float:
    start = time.perf_counter()
    conn = connect(path)
    now = time.time()
    for lo in range(0, n, 50_000):
        rows = [(key(i), 200, f"req_{i:x}", "gpt-4o-mini", 40, 90, now, orjson.dumps(answer(i)))
                for i in range(lo, min(n, lo + 50_000))]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO responses (key, status, request_id, model, "
                         "prompt_tokens, completion_tokens, created, body) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - start


def figures(samples: list[int]) -> str:
    us = sorted(s / 1000 for s in samples)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    return f"median {statistics.median(us):7.1f} us   p99 {p99:7.1f} us   (n={len(us):,})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, help="build (or reuse) the file here")
    args = parser.parse_args()
    folder = "" if args.keep else tempfile.mkdtemp(prefix="bench-cache-")
    path = args.keep or Path(folder) / "responses.sqlite"
    if not path.exists():
        took = build(path, args.entries)
        print(f"built {args.entries:,} entries in {took:.1f}s: {file_bytes(path) / 2**20:,.0f} MiB")
    n = sqlite3.connect(path).execute("SELECT count(*) FROM responses").fetchone()[0]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rng = random.Random(1)
    cache = ResponseCache(path)
    hit, miss, parsed = [], [], []
    clock = time.perf_counter_ns
    for _ in range(args.samples):
        k = key(rng.randrange(n))
        t0 = clock()
        found = cache.get(k)
        t1 = clock()
        assert found is not None
        hit.append(t1 - t0)
        t0 = clock()
        found = cache.get(key(rng.randrange(n)))  # another key: not in SQLite's page cache
        assert found is not None
        orjson.loads(found.body)
        parsed.append(clock() - t0)
        t0 = clock()
        none = cache.get(key(n + rng.randrange(1 << 40)))
        miss.append(clock() - t0)
        assert none is None
    cache.close()
    # Stores: new keys, through the same writer a run uses.
    cache = ResponseCache(path)
    bodies = [answer(n + i) for i in range(args.samples)]
    put = []
    start = time.perf_counter()
    for lo in range(0, len(bodies), 1000):
        # 1,000 at a time, then wait for the writer: a run's answers arrive at the
        # server's pace, far below what the caller can put (else puts past
        # MAX_PENDING are dropped, and the figure would flatter the writer).
        for i in range(lo, min(lo + 1000, len(bodies))):
            t0 = clock()
            cache.put(key(n + i), 200, "req", bodies[i], "gpt-4o-mini", 40, 90)
            put.append(clock() - t0)
        while cache._pending:
            time.sleep(0.001)
    t0 = time.perf_counter()
    cache.close()
    drained = time.perf_counter() - t0
    total = time.perf_counter() - start
    print(f"cache: {n:,} entries, {file_bytes(path) / 2**20:,.0f} MiB; "
          f"{args.samples:,} samples each")
    print(f"  lookup hit      {figures(hit)}")
    print(f"  lookup miss     {figures(miss)}")
    print(f"  hit, parsed     {figures(parsed)}")
    print(f"  store (caller)  {figures(put)}")
    print(f"  store (writer)  {cache.write_seconds / max(1, cache.stored) * 1e6:7.1f} us per "
          f"answer on the writer thread ({cache.stored:,} stored in "
          f"{cache.write_seconds:.2f}s of commits, 256 or 100 ms per transaction; "
          f"dropped {cache.dropped}; {total:.1f}s wall, {drained:.2f}s to close)")
    print(f"  load average before: {load}")
    if args.keep is None:
        for suffix in ("", "-wal", "-shm"):
            with_suffix = Path(str(path) + suffix)
            if with_suffix.exists():
                os.remove(with_suffix)
        os.rmdir(folder)


if __name__ == "__main__":
    main()
