"""What the run log costs: the ``big`` benchmark's 1,000,000 requests with and without it.

    python bench/runlog_overhead.py [--n 1000000] [--repeat 3] [--workdir DIR] [--batchproc B]
    python bench/runlog_overhead.py --micro
    python bench/runlog_overhead.py --instructions [--batchproc B]

``--micro`` times the engine's one call per attempt in-process instead: the run log's
``attempt()`` (build the event, serialise it, buffer it; a write per 1 MiB) against the
no-op sink's, per call.

``--instructions`` counts the client's instructions under valgrind (callgrind), which the
machine's load does not change: jobs of 1,000 and 4,000 requests with and without the
log; the difference divided by 3,000 is the instructions per request (start-up and
imports cancel out), and their ratio the overhead. About 6 minutes.

The job is the ``big`` scenario's (bench/run.py): bare embedding lines, limits far above
what one process reaches, no latency, against ``batchproc mock-server`` on loopback.
Runs alternate (log, no log, log, no log, ...) so a change in the machine's load hits
both alike; CPU time (user + system, from ``os.wait4``) and wall time are compared by
their medians. Prints one JSON line per run, then the medians and the overhead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_VENV_PY = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != _VENV_PY.parent.parent.resolve() and _VENV_PY.exists():
    os.execv(str(_VENV_PY), [str(_VENV_PY), __file__, *sys.argv[1:]])

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jobgen  # noqa: E402
import orjson  # noqa: E402
from _harness import BATCHPROC, MockServer, check_outputs, client_env, run_measured  # noqa: E402

HIGH_RPM = 6_000_000.0
HIGH_TPM = 10_000_000_000.0


def micro(n: int = 500_000) -> None:
    """Microseconds per ``attempt()`` call: the run log's and the no-op sink's."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from processor.client.answers import Response
    from processor.jobs import Job
    from processor.run.events import NO_EVENTS
    from processor.store.runlog import RunLog

    work = Path(tempfile.mkdtemp(prefix="runlog-micro-"))
    log = RunLog(work / "m.run.jsonl", clock=time.monotonic).open()
    job = Job("line-123456", 123456, "/v1/embeddings", {"model": "text-embedding-3-small"},
              tokens=14, attempts=1, model="text-embedding-3-small", sent_at=time.monotonic())
    answer = Response(200, {"object": "list", "usage": {"prompt_tokens": 14,
                                                        "total_tokens": 14}}, "req-1")
    row: dict[str, float] = {"calls": n}
    for name, sink in (("runlog_us", log), ("noop_us", NO_EVENTS)):
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for _ in range(n):
                sink.attempt(job, 1.0, 1.002, answer, None)
            best = min(best, (time.process_time() - t0) / n * 1e6)
        row[name] = round(best, 3)
    log.close()
    row["log_bytes_per_event"] = round((work / "m.run.jsonl").stat().st_size / (3 * n), 1)
    (work / "m.run.jsonl").unlink()
    print(orjson.dumps(row).decode())


def instructions(batchproc: str, work: Path) -> None:
    """Instructions per request with and without the run log (callgrind), and the ratio."""
    import re
    import subprocess

    sizes = (1000, 4000)
    jobs = {n: jobgen.bare_embedding_job(work / f"i{n}.jsonl", n, seed=7) for n in sizes}
    counts: dict[tuple[int, bool], int] = {}
    with MockServer(work / "instr.server.log", rpm=HIGH_RPM, tpm=HIGH_TPM) as server:
        for n in sizes:
            for with_log in (False, True):
                for p in work.glob("instr-out.*"):
                    p.unlink()
                cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                       *_python_of(batchproc), str(jobs[n].path), "--base-url",
                       server.base_url, "--quiet", "-o", str(work / "instr-out.results.jsonl"),
                       "--errors", str(work / "instr-out.errors.jsonl"), "--rpm",
                       f"{HIGH_RPM:.0f}", "--tpm", f"{HIGH_TPM:.0f}", "--endpoint",
                       jobs[n].endpoint]
                cmd += ["--run-log", str(work / "instr-out.run.jsonl")] if with_log \
                    else ["--no-run-log"]
                done = subprocess.run(cmd, env=_env_of(batchproc), capture_output=True,
                                      text=True, timeout=1800, check=False)
                found = re.search(r"Collected : (\d+)", done.stderr)
                assert found and done.returncode == 0, done.stderr[-2000:]
                counts[(n, with_log)] = int(found.group(1))
                print(orjson.dumps({"n": n, "with_log": with_log,
                                    "instructions": counts[(n, with_log)]}).decode(), flush=True)
    span = sizes[1] - sizes[0]
    per = {w: (counts[(sizes[1], w)] - counts[(sizes[0], w)]) / span for w in (False, True)}
    print(orjson.dumps({"instructions_per_request_without": round(per[False]),
                        "instructions_per_request_with": round(per[True]),
                        "overhead_pct": round((per[True] / per[False] - 1) * 100, 2)}).decode())


def _python_of(batchproc: str) -> list[str]:
    """The interpreter command behind a ``batchproc`` wrapper script: valgrind must run
    the interpreter itself, not the shell of a wrapper."""
    return [sys.executable, "-m", "processor.cli"]


def _env_of(batchproc: str) -> dict[str, str]:
    env = client_env()
    text = Path(batchproc).read_text(errors="replace")
    found = __import__("re").search(r"PYTHONPATH=(\S+)", text)
    if found:
        env["PYTHONPATH"] = found.group(1)
    return env


def main() -> None:
    if "--micro" in sys.argv:
        micro()
        return
    if "--instructions" in sys.argv:
        args = [a for a in sys.argv[1:] if a != "--instructions"]
        batchproc = args[args.index("--batchproc") + 1] if "--batchproc" in args else BATCHPROC
        instructions(batchproc, Path(tempfile.mkdtemp(prefix="runlog-instr-")))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--batchproc", default=BATCHPROC,
                        help="the client to run (a frozen copy, so that edits made meanwhile "
                        "do not reach later runs)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="runlog-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    job = jobgen.bare_embedding_job(work / "big.jsonl", args.n, seed=7)
    print(f"generated {job.n:,} lines in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    rows: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for i in range(args.repeat):
        for with_log in (True, False) if i % 2 == 0 else (False, True):
            tag = f"{'log' if with_log else 'nolog'}-{i}"
            results, errors = work / f"{tag}.results.jsonl", work / f"{tag}.errors.jsonl"
            runlog = work / f"{tag}.run.jsonl"
            with MockServer(work / f"{tag}.server.log", rpm=HIGH_RPM, tpm=HIGH_TPM) as server:
                cmd = [args.batchproc, str(job.path), "--base-url", server.base_url, "--quiet",
                       "-o", str(results), "--errors", str(errors), "--rpm", f"{HIGH_RPM:.0f}",
                       "--tpm", f"{HIGH_TPM:.0f}", "--endpoint", job.endpoint]
                cmd += ["--run-log", str(runlog)] if with_log else ["--no-run-log"]
                load = os.getloadavg()[0]
                run = run_measured(cmd, log_path=work / f"{tag}.client.log", env=client_env())
            check = check_outputs(results, errors, job.id_prefix, job.n)
            row = {"run": tag, "with_log": with_log, "cpu_s": round(run.cpu_s, 2),
                   "wall_s": round(run.wall_s, 2), "peak_rss_mb": round(run.peak_rss_mb, 1),
                   "exit": run.exit_code, "missing": check.n_missing,
                   "duplicates": check.n_duplicates, "load_1m_before": round(load, 2)}
            if with_log:
                row["log_mb"] = round(runlog.stat().st_size / 1e6, 1)
                with open(runlog, "rb") as f:
                    row["log_lines"] = sum(1 for _ in f)
            print(orjson.dumps(row).decode(), flush=True)
            rows[with_log].append(row)
            for p in (results, errors, runlog, results.with_name(results.name + ".ledger")):
                p.unlink(missing_ok=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("cpu_s", "wall_s")}
           for k, v in rows.items()}
    summary = {
        "n": job.n, "repeat": args.repeat,
        "cpu_s_median_with": med[True]["cpu_s"], "cpu_s_median_without": med[False]["cpu_s"],
        "wall_s_median_with": med[True]["wall_s"], "wall_s_median_without": med[False]["wall_s"],
        "cpu_overhead_pct": round((med[True]["cpu_s"] / med[False]["cpu_s"] - 1) * 100, 2),
        "wall_overhead_pct": round((med[True]["wall_s"] / med[False]["wall_s"] - 1) * 100, 2),
    }
    print(orjson.dumps(summary).decode(), flush=True)
    job.path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
