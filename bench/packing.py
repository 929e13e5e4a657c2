"""Packed embeddings against their bound (issue 12, packing).

    python bench/packing.py [--lines 20000] [--rpm 3000] [--pack 100] [--append]

Starts ``batchproc mock-server --rpm RPM`` on a free loopback port, writes a job of
LINES embeddings lines (short seeded texts, text-embedding-3-small), and runs
``batchproc JOB --rpm RPM --tpm off --pack N --quiet`` as a user would. Prints one JSON
line: the wall time, the packed bound (requests sent / RPM; what
``batchproc estimate --pack N`` says), the unpacked bound (LINES / RPM), the efficiency
(bound / time from the first request to the end), the requests the server counted, its
429s, and the outputs' check (each id once, and its own vector). ``--append`` adds the
row to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _harness import BATCHPROC, MockServer, check_outputs, client_env, run_measured

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processor.testing.bodies import text_vector  # noqa: E402

_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
          "november oscar papa quebec romeo sierra tango uniform victor whiskey").split()


def write_job(path: Path, lines: int, seed: int = 12) -> dict[str, str]:
    """``lines`` embeddings lines ``e1 .. eN``; returns id -> text."""
    rng = random.Random(seed)
    texts = {}
    with open(path, "wb") as f:
        for i in range(1, lines + 1):
            text = " ".join(rng.choices(_WORDS, k=rng.randint(4, 16))) + f" #{i}"
            texts[f"e{i}"] = text
            f.write(orjson.dumps({"custom_id": f"e{i}", "method": "POST",
                                  "url": "/v1/embeddings",
                                  "body": {"model": "text-embedding-3-small", "input": text}})
                    + b"\n")
    return texts


def wrong_vectors(results: Path, texts: dict[str, str]) -> int:
    """Results whose vector is not the mock's vector of their own line's text."""
    wrong = 0
    with open(results, "rb") as f:
        for raw in f:
            record = orjson.loads(raw)
            vector = record["response"]["body"]["data"][0]["embedding"]
            want = text_vector(texts[record["custom_id"]], len(vector))
            if any(abs(a - b) > 1e-9 for a, b in zip(vector, want, strict=True)):
                wrong += 1
    return wrong


def run(lines: int, rpm: float, pack: str, work: Path) -> dict[str, Any]:
    job = work / "job.jsonl"
    texts = write_job(job, lines)
    with MockServer(work / "mock.log", rpm=rpm) as server:
        estimate = orjson.loads(run_estimate(job, rpm, pack))
        cmd = [BATCHPROC, str(job), "--base-url", server.base_url, "--rpm", f"{rpm:g}",
               "--tpm", "off", "--pack", pack, "--quiet"]
        measured = run_measured(cmd, log_path=work / "client.log", env=client_env(),
                                watch_port=server.port)
        stats = server.stats()
    check = check_outputs(work / "job.results.jsonl", work / "job.errors.jsonl", "e", lines)
    bound = float(estimate["min_seconds"])
    # The client's own run time (its summary's "Finished in"): from the run's start,
    # after Python's start-up and imports, to the last record written.
    said = re.search(r"Finished in ([0-9.]+)s", (work / "client.log").read_text())
    run_s = float(said.group(1)) if said else measured.wall_s
    return {
        "scenario": "packed-embeddings", "lines": lines, "rpm": rpm, "pack": pack,
        "exit": measured.exit_code, "wall_s": round(measured.wall_s, 2),
        "run_s": run_s, "bound_s": round(bound, 2),
        "unpacked_bound_s": round(lines / rpm * 60, 1),
        "efficiency": round(bound / run_s, 3) if run_s > 0 else None,
        "requests": stats["requests"], "estimated_requests": estimate["http_requests"],
        "n_429": stats["n_429"], "missing": check.n_missing,
        "duplicated": check.n_duplicates, "errors": check.n_errors,
        "wrong_vectors": wrong_vectors(work / "job.results.jsonl", texts),
        "cpu_s": round(measured.cpu_s, 2), "peak_rss_mb": round(measured.peak_rss_mb, 1),
    }


def run_estimate(job: Path, rpm: float, pack: str) -> bytes:
    import subprocess

    return subprocess.run([BATCHPROC, "estimate", str(job), "--json", "--offline", "--rpm",
                           f"{rpm:g}", "--pack", pack], check=True, capture_output=True,
                          env=client_env()).stdout


def markdown(row: dict[str, Any], command: str) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (
        f"\n## Packed embeddings (issue 12)\n\n"
        f"`{command}` ({today}; the mock server enforces the same RPM; 2 cores shared).\n\n"
        "| lines | RPM | --pack | requests sent | unpacked bound | packed bound | wall "
        "| run | efficiency | 429s | missing | duplicated | wrong vectors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {row['lines']:,} | {row['rpm']:g} | {row['pack']} | {row['requests']} "
        f"| {row['unpacked_bound_s']:g} s | {row['bound_s']:g} s | {row['wall_s']:g} s "
        f"| {row['run_s']:g} s | {row['efficiency']} | {row['n_429']} "
        f"| {row['missing']} | {row['duplicated']} | {row['wrong_vectors']} |\n\n"
        "*wall*: from launch to exit (Python start-up and imports included); *run*: the "
        "client's own \"Finished in\" (from the run's start to the last record); "
        "efficiency: packed bound / run. The bound is what `batchproc estimate JOB --rpm "
        f"{row['rpm']:g} --pack {row['pack']}` says (requests / RPM); the unpacked run of "
        "the same job would take at least the unpacked bound (the unpacked runs above "
        "reach 0.98-1.0 of their bound).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--pack", default="100")
    parser.add_argument("--append", action="store_true", help="add the row to RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        started = time.monotonic()
        row = run(args.lines, args.rpm, args.pack, Path(tmp))
        row["bench_s"] = round(time.monotonic() - started, 1)
    print(orjson.dumps(row).decode())
    if args.append:
        command = "python bench/packing.py " + " ".join(sys.argv[1:]).replace(
            "--append", "").strip()
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(markdown(row, command.strip()))


if __name__ == "__main__":
    main()
