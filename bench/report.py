"""How long ``batchproc report`` takes on a big run log, and in how much memory.

    python bench/report.py [--events 1000000] [--workdir DIR]

Writes a run log of ``--events`` events (and one a tenth of that size) shaped like a
real one: two runs (the first killed), one attempt event per request with 3% 429s,
2% 5xx and 0.5% timeouts, a progress event per second, pauses, an outage, failures with
long ids and messages; then runs ``batchproc report LOG -o report.html`` on each as a
subprocess and prints wall time, CPU time and peak RSS (``os.wait4``), and the HTML's
size. The two peaks should be close: the report streams the log into fixed-size buckets.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_VENV_PY = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != _VENV_PY.parent.parent.resolve() and _VENV_PY.exists():
    os.execv(str(_VENV_PY), [str(_VENV_PY), __file__, *sys.argv[1:]])

import argparse  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import orjson  # noqa: E402
from _harness import BATCHPROC, client_env, run_measured  # noqa: E402


def write_log(path: Path, n_events: int, seed: int = 1) -> None:
    """A run log of about ``n_events`` events at 2,000 requests a minute per run."""
    rng = random.Random(seed)
    rate = 2000 / 60.0
    with open(path, "wb") as f:
        written = 0
        for run in (1, 2):
            f.write(orjson.dumps({
                "ev": "start", "run": run, "at": 1_760_000_000.0 + run * 86_400, "t": 0.0,
                "v": "0.1.0", "limits": {"rpm": 2000, "tpm": 400_000}, "total": n_events,
                "cfg": {"keys": ["A", "B"]}, "resume": {"done": 0, "failed": 0}}) + b"\n")
            t = 0.0
            next_p = 1.0
            per_run = n_events // 2 if run == 1 else n_events - written
            i = 0
            while i < per_run:
                t += rng.expovariate(rate)
                lat = rng.lognormvariate(-0.7, 0.5)
                roll = rng.random()
                event = {"ev": "a", "id": f"req-{run}-{i:08d}", "n": 1, "ta": round(t, 3),
                         "ts": round(t, 3), "td": round(t + lat, 3), "te": 180,
                         "k": "A" if i % 2 else "B", "m": "gpt-4o-mini"}
                if roll < 0.03:
                    event.update(st=429, er="rate_limited")
                elif roll < 0.05:
                    event.update(st=500, er="server_error")
                elif roll < 0.055:
                    event.update(st=None, er="connection_error")
                else:
                    event.update(st=200, tp=120, tc=rng.randint(5, 60))
                f.write(orjson.dumps(event) + b"\n")
                i += 1
                if roll < 0.001:
                    f.write(orjson.dumps({"ev": "fail", "t": round(t + lat, 3),
                                          "id": f"req-{run}-{i:08d}-" + "x" * 80, "line": i,
                                          "code": rng.choice(["server_error", "rate_limited",
                                                              "bad_request"]),
                                          "msg": "a long message " * 10}) + b"\n")
                    i += 1
                if roll < 0.03:
                    f.write(orjson.dumps({"ev": "pause", "t": round(t + lat, 3), "r": "429",
                                          "until": round(t + lat + 1, 3), "key": "A"}) + b"\n")
                    i += 1
                if t >= next_p:
                    f.write(orjson.dumps({"ev": "p", "t": round(t, 3), "done": written + i,
                                          "total": n_events, "ok": written + i, "fail": 0,
                                          "fl": 20, "rq": 3,
                                          "eta": round((n_events - written - i) / rate, 1)}
                                         ) + b"\n")
                    next_p += 1.0
                    i += 1
            written += per_run
            if run == 2:
                f.write(orjson.dumps({"ev": "end", "t": round(t, 3), "reason": "completed",
                                      "elapsed": round(t, 3)}) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="report-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    for n in (args.events // 10, args.events):
        log = work / f"bench-{n}.run.jsonl"
        t0 = time.monotonic()
        write_log(log, n)
        with open(log, "rb") as f:
            lines = sum(1 for _ in f)
        print(f"wrote {lines:,} events ({log.stat().st_size / 1e6:.0f} MB) in "
              f"{time.monotonic() - t0:.1f}s", file=sys.stderr)
        html = work / f"bench-{n}.report.html"
        run = run_measured([BATCHPROC, "report", str(log), "-o", str(html)],
                           log_path=work / f"bench-{n}.log", env=client_env())
        print(orjson.dumps({
            "events": lines, "log_mb": round(log.stat().st_size / 1e6, 1),
            "exit": run.exit_code, "wall_s": round(run.wall_s, 2), "cpu_s": round(run.cpu_s, 2),
            "peak_rss_mb": round(run.peak_rss_mb, 1),
            "html_kb": round(html.stat().st_size / 1024, 1) if html.exists() else None,
            "load_1m": round(os.getloadavg()[0], 2)}).decode(), flush=True)
        log.unlink()


if __name__ == "__main__":
    main()
