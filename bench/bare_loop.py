"""The ceiling: a bare aiohttp loop POSTing a job's bodies as fast as a server answers.

One ``ClientSession``, a semaphore of 100 (and a pool of 100 connections), the same
body bytes batchproc sends (``orjson.dumps(body)``), no accounting, no parsing, no
files written. Prints one JSON line: ``{"n", "ok", "elapsed_s", "requests_per_s"}``.

    python bench/bare_loop.py --url http://127.0.0.1:PORT/v1 --job JOB.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson


def load_payloads(path: str, default_endpoint: str) -> list[tuple[str, bytes]]:
    """(endpoint, body bytes) per line: Batch lines give ``url``/``body``, else the line."""
    out: list[tuple[str, bytes]] = []
    with open(path, "rb") as f:
        for raw in f:
            obj = orjson.loads(raw)
            if "body" in obj:
                out.append((obj.get("url", default_endpoint), orjson.dumps(obj["body"])))
            else:
                obj.pop("custom_id", None)
                obj.pop("metadata", None)
                out.append((default_endpoint, orjson.dumps(obj)))
    return out


async def blast(base: str, payloads: list[tuple[str, bytes]], concurrency: int) -> dict[str, float]:
    root = base.rstrip("/").removesuffix("/v1")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(endpoint: str, body: bytes) -> None:
            nonlocal ok
            async with sem, session.post(root + endpoint, data=body) as resp:
                await resp.read()
                ok += resp.status == 200

        t0 = time.perf_counter()
        await asyncio.gather(*(one(e, b) for e, b in payloads))
        elapsed = time.perf_counter() - t0
    n = len(payloads)
    return {"n": n, "ok": ok, "elapsed_s": round(elapsed, 4),
            "requests_per_s": round(n / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--job", required=True, help="the JSONL job whose bodies to send")
    parser.add_argument("--endpoint", default="/v1/embeddings", help="for bare lines")
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    payloads = load_payloads(args.job, args.endpoint)
    result = asyncio.run(blast(args.url, payloads, args.concurrency))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
