"""What TLS costs the shared limiter: admission latency through Redis on loopback, plain
(``redis://``) against TLS (``rediss://``, a throwaway CA made by ``openssl``), and one
real run through each.

    PYTHONPATH=$PWD .venv/bin/python bench/redis_tls.py [--quick]

Starts its own ``redis-server`` processes (no persistence, a temporary folder, free
loopback ports; the TLS one listens only on TLS) and a mock server (``batchproc
mock-server``), runs the real CLI and prints, for each: one ``RedisLimiter.acquire``
(the Lua script, one round trip) median and p99, alone and with four callers at once;
and a run of N requests at a limit above what the machine reaches (wall time, exit code).
Everything goes to 127.0.0.1; only processes started here are signalled (by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import BATCHPROC, MockServer, client_env  # noqa: E402
from bench.redis_limiter import job, latency  # noqa: E402
from tests.redisfix import RedisServer, free_port, make_tls_files  # noqa: E402


def one_run(folder: Path, url: str, n: int, name: str) -> tuple[int, float]:
    path = job(folder / f"{name}.jsonl", [("gpt-4o-mini", n)])
    with MockServer(folder / f"{name}.log") as mock:
        start = time.monotonic()
        proc = subprocess.run([BATCHPROC, str(path), "--base-url", mock.base_url, "--rpm",
                               "1000000", "--tpm", "10000000000", "--max-in-flight", "64",
                               "--limiter", url, "--quiet"], env=client_env(),
                              capture_output=True)
        return proc.returncode, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer calls and requests")
    a = parser.parse_args()
    calls, n = (2000, 1000) if a.quick else (10000, 5000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = make_tls_files(folder / "tls")
        servers = {"redis://": RedisServer(free_port(), folder),
                   "rediss://": RedisServer(free_port(), folder / "tls", tls=files)}
        for server in servers.values():
            server.start()
        try:
            for scheme, server in servers.items():
                url = server.url + (f"?ssl_ca_certs={files.ca}" if server.tls else "")
                lat = asyncio.run(latency(url, calls))
                code, wall = one_run(folder, url, n, scheme.strip(":/"))
                print(f"{scheme:10} acquire median {lat['median_us']:.0f} us, p99 "
                      f"{lat['p99_us']:.0f} us; four callers median {lat['median4_us']:.0f} us"
                      f", p99 {lat['p99_4_us']:.0f} us; a run of {n:,} requests: exit {code},"
                      f" {wall:.1f} s ({n / wall:,.0f}/s)", flush=True)
        finally:
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    main()
