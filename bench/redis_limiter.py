"""The shared limiter's figures: admission latency through Redis on loopback, four workers
sharing one Redis budget, and a two-model job at each model's own limit.

    PYTHONPATH=$PWD .venv/bin/python bench/redis_limiter.py [--quick]

Starts its own ``redis-server`` (``--save '' --appendonly no``, a temporary folder, a
free loopback port) and mock servers (``batchproc mock-server``), runs the real CLI in
subprocesses and prints:

- admission latency: one ``RedisLimiter.acquire`` (the Lua script, one round trip)
  per request, median and p99, alone and with four callers at once;
- four workers (``--shard K/4``, the full flags, ``--limiter redis://...``) against a
  server whose limits equal the flags: the combined rate as a share of the limit
  (server-side, first to last admission), 429s, every id answered exactly once;
- a two-model job (limits 3,000 and 600 requests/min) with ``auto`` limits and with
  the bigger model's flags: each model's rate as a share of its own limit, 429s.

Everything goes to 127.0.0.1; only processes started here are signalled (by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import BATCHPROC, HOST, MockServer, client_env, free_port  # noqa: E402
from processor.limits import Counter, Unit  # noqa: E402
from processor.limits.redis import RedisBudget, RedisLimiter  # noqa: E402

REDIS = "/usr/bin/redis-server"


class Redis:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly",
             "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


async def latency(url: str, n: int) -> dict[str, float]:
    budget = RedisBudget(url, namespace="bench-latency")
    limiter = RedisLimiter(budget, [budget.key("k", "m")],
                           [Counter(Unit.REQUESTS, 1e9), Counter(Unit.TOKENS, 1e12)], [])
    await limiter.acquire(10)
    await asyncio.sleep(0.05)
    alone = []
    for _ in range(n):
        t = time.perf_counter()
        await limiter.acquire(100)
        alone.append(time.perf_counter() - t)
    together: list[float] = []

    async def caller() -> None:
        for _ in range(n // 4):
            t = time.perf_counter()
            await limiter.acquire(100)
            together.append(time.perf_counter() - t)

    await asyncio.gather(*(caller() for _ in range(4)))
    await budget.aclose()

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1e6

    return {"median_us": statistics.median(alone) * 1e6, "p99_us": q(alone, 0.99),
            "median4_us": statistics.median(together) * 1e6, "p99_4_us": q(together, 0.99)}


def job(path: Path, models: list[tuple[str, int]]) -> Path:
    """Interleave the models' lines in proportion (so that they end together)."""
    total = sum(n for _, n in models)
    with open(path, "wb") as f:
        i = 0
        left = dict(models)
        while i < total:
            for model, n in models:
                share = max(1, round(n / min(m for _, m in models)))
                for _ in range(share):
                    if left[model] > 0:
                        left[model] -= 1
                        body = {"model": model, "max_tokens": 16,
                                "messages": [{"role": "user", "content": f"question {i}"}]}
                        f.write(orjson.dumps({"custom_id": f"req-{i}", "body": body}) + b"\n")
                        i += 1
    return path


def run(args: list[str], client: str = BATCHPROC) -> subprocess.Popen[bytes]:
    env = client_env()
    if client != BATCHPROC:
        env.pop("PYTHONPATH", None)  # the other build's own code, not this tree's
    return subprocess.Popen([client, *args, "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def model_rates(stats: dict[str, Any]) -> dict[str, float]:
    return {m: (v["admitted"] - 1) / (v["last"] - v["first"]) * 60
            for m, v in stats["models"].items() if v["admitted"] > 1}


def four_workers(folder: Path, redis: Redis | None, limit: int, n: int) -> dict[str, Any]:
    tpm = 10_000_000
    name = "four" if redis else "four-alone"
    path = job(folder / f"{name}.jsonl", [("gpt-4o-mini", n)])
    with MockServer(folder / f"{name}.log", rpm=limit, tpm=tpm, initial_fill=0.0) as mock:
        flags = ["--base-url", mock.base_url, "--rpm", str(limit), "--tpm", str(tpm),
                 "--max-in-flight", "64"] + (["--limiter", redis.url] if redis else [])
        start = time.monotonic()
        procs = [run([str(path), *flags, "--shard", f"{k}/4"]) for k in range(1, 5)]
        codes = [p.wait(3600) for p in procs]
        wall = time.monotonic() - start
        stats = mock.stats()
    merged = folder / f"{name}.merged.jsonl"
    merge = subprocess.run([BATCHPROC, "merge", "--job", str(path), "-o", str(merged)],
                           env=client_env(), capture_output=True)
    ids = [orjson.loads(line)["custom_id"] for line in merged.read_bytes().splitlines()]
    rate = model_rates(stats)["gpt-4o-mini"]
    return {"limit": limit, "n": n, "codes": codes, "merge": merge.returncode,
            "exactly_once": sorted(ids) == sorted(f"req-{i}" for i in range(n)),
            "ok": stats["ok"], "n_429": stats["n_429"], "rate": rate,
            "efficiency": rate / limit, "wall_s": wall, "wall_efficiency": n / wall * 60 / limit}


def two_models(folder: Path, redis: Redis, how: str, big: int, small: int,
               seconds: float, client: str = BATCHPROC) -> dict[str, Any]:
    n_big, n_small = int(big * seconds / 60), int(small * seconds / 60)
    path = job(folder / f"two-{how}.jsonl", [("gpt-4o-mini", n_big), ("gpt-4o", n_small)])
    opts = ["--limit", f"gpt-4o-mini={big}/40_000_000", "--limit", f"gpt-4o={small}/8_000_000"]
    with MockServer(folder / f"mock-{how}.log", initial_fill=0.02, options=opts) as mock:
        flags = ["--base-url", mock.base_url, "--max-in-flight", "64"]
        if not how.endswith("auto"):
            flags += ["--rpm", str(big), "--tpm", "40000000"]
        if "redis" in how:
            flags += ["--limiter", redis.url, "--limiter-namespace", f"two-{how}"]
        code = run([str(path), *flags], client).wait(3600)
        stats = mock.stats()
    rates = model_rates(stats)
    return {"how": how, "code": code, "ok": stats["ok"], "n": n_big + n_small,
            "n_429": stats["n_429"], "big": rates["gpt-4o-mini"] / big,
            "small": rates["gpt-4o"] / small}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs (~1 min in all)")
    parser.add_argument("--before", metavar="BATCHPROC", help="also run the two-model job "
                        "with this client (e.g. an older build), for comparison")
    a = parser.parse_args()
    seconds = 15.0 if a.quick else 45.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis = Redis(folder)
        try:
            lat = asyncio.run(latency(redis.url, 2000 if a.quick else 10000))
            print(f"admission through Redis (loopback), per request: median "
                  f"{lat['median_us']:.0f} µs, p99 {lat['p99_us']:.0f} µs; four callers at "
                  f"once: median {lat['median4_us']:.0f} µs, p99 {lat['p99_4_us']:.0f} µs")
            limit = 3000
            four = four_workers(folder, redis, limit, int(limit * seconds / 60))
            print(f"four workers, --rpm {limit} each, one Redis: {four['n']} requests, exit "
                  f"codes {four['codes']}, merge {four['merge']}, exactly once "
                  f"{four['exactly_once']}, 429s {four['n_429']}, combined "
                  f"{four['rate']:.0f}/min = {four['efficiency']:.1%} of the limit (server "
                  f"side, first to last admission); {four['wall_efficiency']:.1%} over the "
                  f"whole wall time ({four['wall_s']:.1f} s, process start included)")
            alone = four_workers(folder, None, limit, int(limit * seconds / 60))
            print(f"the same without --limiter (each worker on its own counters): exactly "
                  f"once {alone['exactly_once']}, 429s {alone['n_429']}, combined "
                  f"{alone['rate']:.0f}/min = {alone['efficiency']:.1%} of the limit; "
                  f"{alone['wall_efficiency']:.1%} over the whole wall time")
            for how in ("auto", "flags", "flags+redis"):
                two = two_models(folder, redis, how, 3000, 600, seconds)
                print(f"two models (3,000 and 600 /min), {how}: {two['ok']}/{two['n']} ok, "
                      f"exit {two['code']}, 429s {two['n_429']}; gpt-4o-mini at "
                      f"{two['big']:.1%} of its limit, gpt-4o at {two['small']:.1%}")
            for how in ("auto", "flags") if a.before else ():
                two = two_models(folder, redis, f"before-{how}", 3000, 600, seconds, a.before)
                print(f"  with {a.before}, {how}: {two['ok']}/{two['n']} ok, exit "
                      f"{two['code']}, 429s {two['n_429']}; gpt-4o-mini at {two['big']:.1%} "
                      f"of its limit, gpt-4o at {two['small']:.1%}")
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
