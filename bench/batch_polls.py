"""The Batch API path's API calls: how many polls (and uploads, creates, downloads) a job
costs, and that they stay within ``--rpm``.

Starts ``batchproc mock-server`` (its Batch API on a time scale) in a subprocess, writes a
job of ``--lines`` chat requests, runs ``batchproc run --via batch`` on it and prints one
JSON object: the parts, the calls by kind (the client's count and the server's), the
wall time, and the worst excess of any run of calls over the limiter's allowance (a
burst of one second's worth plus ``rpm / 60`` per second; at most 0 when ``--rpm``
holds, up to timing noise). Then the calls a real 24h window
would cost with the default interval (5 s doubling to 300 s), per batch, by how long the
batch takes.

    python bench/batch_polls.py --lines 120000 --rpm 120
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def polls_for(seconds: float, first: float = 5.0, cap: float = 300.0) -> int:
    """Polls a batch that ends after ``seconds`` costs: every ``first`` s, doubling to ``cap``."""
    t, n, interval = 0.0, 0, first
    while t < seconds:
        t += interval
        n += 1
        interval = min(interval * 2, cap)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=120_000)
    ap.add_argument("--rpm", type=float, default=120.0)
    ap.add_argument("--batch-seconds", type=float, default=3.0)
    ap.add_argument("--poll-every", type=float, default=0.5)
    ap.add_argument("--poll-max", type=float, default=2.0)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT), BATCHPROC_OFFLINE="1")
    env.pop("OPENAI_API_KEY", None)
    port = free_port()
    mock = subprocess.Popen(
        [sys.executable, "-m", "processor.cli", "mock-server", "--port", str(port),
         "--batch-seconds", str(args.batch_seconds)],
        env=env, stderr=subprocess.PIPE)
    try:
        assert mock.stderr is not None
        mock.stderr.readline()  # "mock server listening on ..."
        with tempfile.TemporaryDirectory() as tmp:
            job = Path(tmp) / "job.jsonl"
            template = ('{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions",'
                        '"body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":'
                        '"Question %d?"}],"max_tokens":8}}\n')
            job.write_text("".join(template % (i, i) for i in range(args.lines)))
            start = time.monotonic()
            run = subprocess.run(
                [sys.executable, "-m", "processor.cli", "run", str(job), "--base-url",
                 f"http://127.0.0.1:{port}/v1", "--via", "batch", "--plain", "--rpm",
                 str(args.rpm), "--batch-poll-every", str(args.poll_every),
                 "--batch-poll-max", str(args.poll_max)],
                env=env, capture_output=True, text=True)
            wall = time.monotonic() - start
            state = json.loads((Path(tmp) / "job.batch" / "state.json").read_text())
            results = sum(1 for _ in open(Path(tmp) / "job.results.jsonl"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/batch-stats") as resp:
            server = json.loads(resp.read())
    finally:
        mock.terminate()
        mock.wait()
    times, rate = server["call_times"], args.rpm / 60
    # The limiter's promise: any run of calls from i to j fits its burst (one second of
    # the rate, at least one call) plus the rate over the time between them.
    burst = max(rate, 1.0)
    excess = max((j - i + 1 - burst - rate * (times[j] - times[i])
                  for i in range(len(times)) for j in range(i, len(times))), default=0.0)
    print(json.dumps({
        "lines": args.lines, "exit": run.returncode, "results": results,
        "parts": len(state["parts"]), "wall_s": round(wall, 1), "rpm": args.rpm,
        "client_calls": state["calls"],
        "server_calls": {k: server[k] for k in ("uploads", "creates", "polls", "lists",
                                                "cancels", "calls")}
        | {"downloads": sum(server["downloads"].values())},
        "poll_interval_s": [args.poll_every, args.poll_max],
        "worst_excess_over_rpm_allowance": round(excess, 3),
        "real_window_polls_per_batch": {f"{h}h": polls_for(h * 3600) for h in (1, 6, 24)},
    }, indent=1))
    if run.returncode:
        print(run.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
