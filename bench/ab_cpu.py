"""Client CPU of two source trees, interleaved A/B against one mock server.

    python bench/ab_cpu.py TREE_A TREE_B [--runs N] [--n 20000] [--profile DIR]

Each tree needs ``.venv/bin/batchproc`` (a wrapper that runs that tree's ``processor``).
One mock server (this tree's, no latency, no limits) answers both; the job is 20,000
embeddings (``jobgen.embedding_job``, seed 2), run with no limits and ``--quiet``, fresh
outputs each time. Runs alternate A, B, A, B ... (``--runs`` each), so a busy neighbour on
a shared machine slows both alike. For each run: user and system CPU of the client
(``os.wait4``), wall time and requests/s; then the medians per tree and B's change.
One JSON line per run goes to stdout, the medians to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jobgen
import orjson
from _harness import MockServer, check_outputs, client_env


def run_once(tree: Path, job: jobgen.JobFile, url: str, work: Path, tag: str,
             extra: list[str]) -> dict[str, float | str]:
    out, err = work / f"{tag}.results.jsonl", work / f"{tag}.errors.jsonl"
    for p in work.glob(f"{tag}.*"):
        p.unlink()
    cmd = [str(tree / ".venv" / "bin" / "batchproc"), str(job.path), "--base-url", url,
           "--quiet", "-o", str(out), "--errors", str(err), *extra]
    if job.endpoint != jobgen.CHAT_URL:
        cmd += ["--endpoint", job.endpoint]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=client_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    check = check_outputs(out, err, job.id_prefix, job.n)
    if status or check.n_missing or check.n_duplicates or check.n_results != job.n:
        raise SystemExit(f"{tree}: exit {status}, {check}")
    return {"tree": str(tree), "user_s": round(usage.ru_utime, 3),
            "sys_s": round(usage.ru_stime, 3), "wall_s": round(wall, 3),
            "requests_per_s": round(job.n / wall, 1),
            "cpu_us_per_request": round((usage.ru_utime + usage.ru_stime) / job.n * 1e6, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs=2, type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--client-flag", action="append", default=[],
                    help="a flag passed to both clients (repeatable)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ab-cpu-") as tmp:
        work = Path(tmp)
        job = jobgen.embedding_job(work / "emb.jsonl", args.n, seed=2)
        rows: dict[str, list[dict[str, float | str]]] = {"A": [], "B": []}
        with MockServer(work / "server.log", latency_ms=0) as server:
            for i in range(args.runs):
                for label, tree in (("A", args.trees[0]), ("B", args.trees[1])):
                    row = run_once(tree.resolve(), job, server.base_url, work, f"{label}{i}",
                                   args.client_flag)
                    row["label"] = label
                    rows[label].append(row)
                    sys.stdout.write(orjson.dumps(row).decode() + "\n")
                    sys.stdout.flush()
    med = {label: {k: statistics.median(float(r[k]) for r in rs)
                   for k in ("user_s", "sys_s", "cpu_us_per_request", "requests_per_s")}
           for label, rs in rows.items()}
    for label in ("A", "B"):
        m = med[label]
        print(f"{label} {args.trees[0 if label == 'A' else 1]}: median of {args.runs}: user "
              f"{m['user_s']:.3f}s sys {m['sys_s']:.3f}s cpu {m['cpu_us_per_request']:.1f} "
              f"us/req {m['requests_per_s']:,.0f} req/s", file=sys.stderr)
    a, b = med["A"], med["B"]
    print(f"B vs A: cpu {b['cpu_us_per_request'] / a['cpu_us_per_request'] - 1:+.1%}, "
          f"req/s {b['requests_per_s'] / a['requests_per_s'] - 1:+.1%}", file=sys.stderr)


if __name__ == "__main__":
    main()
