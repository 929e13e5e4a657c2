"""The batchproc benchmark suite (issue 4).

    python bench/run.py [--scenario NAME ...] [--repeat K] [--quick] [--profile]
                        [--profile-only] [--keep DIR] [--markdown FILE]

Each scenario starts ``batchproc mock-server`` on a free loopback port, writes its job
file (seeded, so the same every time), runs ``batchproc JOB --base-url ... --quiet`` as
a subprocess with no API key, and prints one JSON line per run to stdout. Wall time is
measured around the subprocess; CPU time and peak RSS come from ``os.wait4``. A table
of medians and the issue's targets goes to stderr at the end.

``big`` and ``resume`` run once whatever ``--repeat`` says (they take minutes);
``--quick`` shrinks them (200k lines instead of 1M). ``soak`` (issue 9, bench/soak.py:
faults, an outage and SIGKILLs, rerun until done) runs only when named, once: about 6
minutes, 2 with ``--quick``. ``--profile`` then runs the
``ceiling`` client under py-spy (pyinstrument if py-spy cannot sample) and prints the
top 15 functions by own time (``--profile-only``: just that).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_VENV_PY = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != _VENV_PY.parent.parent.resolve() and _VENV_PY.exists():
    # `python bench/run.py` with another interpreter: rerun under the project's venv,
    # which has processor (for cost_of), aiohttp and orjson.
    os.execv(str(_VENV_PY), [str(_VENV_PY), __file__, *sys.argv[1:]])

import argparse  # noqa: E402
import functools  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import jobgen  # noqa: E402
import orjson  # noqa: E402
import profiling  # noqa: E402
import soak as soak_scenario  # noqa: E402
import summary  # noqa: E402
from _harness import (  # noqa: E402
    BATCHPROC,
    VENV_BIN,
    ClientRun,
    MockServer,
    check_outputs,
    client_env,
    run_measured,
)
from jobgen import JobFile  # noqa: E402

Row = dict[str, Any]
BENCH = Path(__file__).resolve().parent

# "High limits": far above what one process on loopback can do, so the limiter code
# runs but never binds.
HIGH_RPM = 6_000_000.0
HIGH_TPM = 10_000_000_000.0


@dataclass
class Ctx:
    """What a scenario run needs: a scratch folder, the size mode, the run's index."""

    workdir: Path
    quick: bool
    seed: int
    keep: bool
    run: int = 0
    jobs: dict[str, JobFile] = field(default_factory=dict)

    def job(self, key: str, make: Callable[[Path], JobFile]) -> JobFile:
        """Generate a job file once per bench invocation; repeats reuse it."""
        if key not in self.jobs:
            t0 = time.monotonic()
            self.jobs[key] = make(self.workdir / f"{key}.jsonl")
            log(f"  generated {key}: {self.jobs[key].n:,} lines in {time.monotonic() - t0:.1f}s")
        return self.jobs[key]

    def tag(self, name: str) -> str:
        return f"{name}-{self.run}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lower_bound(n: int, tokens: int, rpm: float | None, tpm: float | None) -> float | None:
    """max(N / RPM, tokens / TPM) x 60: the fastest the limits allow (None if unlimited)."""
    terms = [n / rpm if rpm else 0.0, tokens / tpm if tpm else 0.0]
    return max(terms) * 60.0 if rpm or tpm else None


def _limit_flags(rpm: float | None, tpm: float | None) -> list[str]:
    flags = []
    if rpm:
        flags += ["--rpm", f"{rpm:.0f}"]
    if tpm:
        flags += ["--tpm", f"{tpm:.0f}"]
    return flags


@dataclass
class Measured:
    row: Row
    run: ClientRun
    server: MockServer
    stats: dict[str, Any]


def measure(
    ctx: Ctx,
    scenario: str,
    job: JobFile,
    *,
    rpm: float | None,
    tpm: float | None,
    server: MockServer,
    client_flags: Sequence[str] = (),
    results: Path | None = None,
    n_send: int | None = None,
    after: Callable[[MockServer], Row] | None = None,
    before: Callable[[MockServer], None] | None = None,
    binding: bool = True,
) -> Measured:
    """Run the client once against ``server`` (started and stopped here); return a row.

    ``after`` runs while the server is still up (the ceiling's bare loop uses it).
    ``binding=False`` for limits set high on purpose: no lower bound, no efficiency.
    """
    tag = ctx.tag(scenario)
    given = results
    results = results or ctx.workdir / f"{tag}.results.jsonl"
    errors = ctx.workdir / f"{tag}.errors.jsonl"
    for p in ctx.workdir.glob(f"{tag}.*"):
        if p != given:  # a kept folder's old outputs would make this run a resume
            p.unlink()
    extra: Row = {}
    with server:
        if before is not None:
            before(server)
        cmd = [BATCHPROC, str(job.path), "--base-url", server.base_url, "--quiet",
               "-o", str(results), "--errors", str(errors), *_limit_flags(rpm, tpm)]
        if job.endpoint != jobgen.CHAT_URL:
            cmd += ["--endpoint", job.endpoint]
        cmd += list(client_flags)
        load = os.getloadavg()[0]
        run = run_measured(cmd, log_path=ctx.workdir / f"{tag}.client.log", env=client_env(),
                           watch_port=server.port)
        stats = server.stats()
        if after is not None:
            extra = after(server)
    check = check_outputs(results, errors, job.id_prefix, job.n)
    if not ctx.keep:
        # results, errors, and any side files the client keeps beside them
        for p in ctx.workdir.glob(f"{tag}.*"):
            p.unlink(missing_ok=True)
    n = job.n if n_send is None else n_send
    bound = lower_bound(n, job.total_tokens, rpm, tpm) if binding else None
    row: Row = {
        "scenario": scenario,
        "n": n,
        "rpm": rpm,
        "tpm": tpm,
        "wall_s": round(run.wall_s, 3),
        "lower_bound_s": round(bound, 3) if bound is not None else None,
        "efficiency": round(bound / run.wall_s, 4) if bound is not None else None,
        # The same, leaving out the process start-up (imports) before the first request.
        "efficiency_after_start": (
            round(bound / (run.wall_s - run.time_to_first_request_s), 4)
            if bound is not None and run.time_to_first_request_s is not None else None),
        "n_429": stats.get("n_429"),
        "n_missing": check.n_missing,
        "n_duplicates": check.n_duplicates,
        "n_errors": check.n_errors,
        "client_cpu_s": round(run.cpu_s, 3),
        "cpu_us_per_request": round(run.cpu_s / n * 1e6, 1) if n else None,
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "requests_per_s": round(n / run.wall_s, 1),
        "time_to_first_request_s": (round(run.time_to_first_request_s, 3)
                                    if run.time_to_first_request_s is not None else None),
        "server_requests": stats.get("requests"),
        "exit_code": run.exit_code,
        "n_invalid_json": check.n_invalid_json,
        "n_unexpected": check.n_unexpected,
        "repeat": ctx.run,
        "load_1m_before": round(load, 2),
    }
    if check.error_codes:
        row["error_codes"] = check.error_codes
    if run.exit_code != 0:
        row["client_stderr_tail"] = run.stderr_tail[-400:]
    row.update(extra)
    return Measured(row, run, server, stats)


# -- scenarios -------------------------------------------------------------------------


def steady(ctx: Ctx, rpm: float = 6_000.0, name: str = "steady") -> Row:
    """2,000 short chat requests; RPM binds (server starts with empty buckets).

    At 6,000 RPM (a high OpenAI tier) the job takes 20 s; ``steady-short`` runs the same
    at 12,000 RPM (10 s), where the fixed start-up of the process (~0.25 s: Python and
    aiohttp imports) weighs twice as much.
    """
    job = ctx.job("chat-2k", lambda p: jobgen.chat_job(p, 2000, seed=ctx.seed))
    tpm = 10_000_000.0
    server = MockServer(ctx.workdir / f"{name}.server.log", rpm=rpm, tpm=tpm, latency_ms=50,
                        initial_fill=0)
    return measure(ctx, name, job, rpm=rpm, tpm=tpm, server=server).row


def steady_short(ctx: Ctx) -> Row:
    """Like steady at 12,000 RPM: a 10 s job."""
    return steady(ctx, rpm=12_000.0, name="steady-short")


def server_shared(ctx: Ctx) -> Row:
    """The server's limit is the flag, but another batchproc spends 20% of it meanwhile.

    Unlike ``server-lower`` (where the server advertises its lower limit), nothing says
    the budget is shared: only the falling x-ratelimit-remaining headers show it.
    """
    job = ctx.job("chat-2k", lambda p: jobgen.chat_job(p, 2000, seed=ctx.seed))
    other = ctx.job("chat-other", lambda p: jobgen.chat_job(p, 4000, seed=ctx.seed + 9))
    rpm, tpm = 6_000.0, 10_000_000.0
    other_rpm = rpm * 0.2
    server = MockServer(ctx.workdir / "shared.server.log", rpm=rpm, tpm=tpm, latency_ms=50,
                        initial_fill=0)
    tag = ctx.tag("server-shared")
    procs: list[subprocess.Popen[bytes]] = []

    def start_other(srv: MockServer) -> None:
        out = ctx.workdir / f"{tag}.other"
        procs.append(subprocess.Popen(
            [BATCHPROC, str(other.path), "--base-url", srv.base_url, "--quiet",
             "-o", f"{out}.results.jsonl", "--errors", f"{out}.errors.jsonl",
             "--rpm", f"{other_rpm:.0f}", "--tpm", f"{tpm:.0f}"],
            env=client_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # let it reach its pace before the measured run starts

    def stop_other(srv: MockServer) -> Row:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        return {}

    m = measure(ctx, "server-shared", job, rpm=rpm, tpm=tpm, server=server,
                before=start_other, after=stop_other)
    row = m.row
    row["other_rpm"] = other_rpm
    return _against(row, job.n, rpm - other_rpm, "share")


def _against(row: Row, n: int, rpm: float, name: str) -> Row:
    """Add the bound of ``n`` requests at ``rpm`` and the wall time's ratio to it."""
    bound = n / rpm * 60.0
    row[f"{name}_lower_bound_s"] = round(bound, 3)
    row[f"wall_over_{name}_bound"] = round(row["wall_s"] / bound, 4)
    return row


def tight_tpm(ctx: Ctx) -> Row:
    """1,500 chat requests of mixed sizes; TPM binds."""
    job = ctx.job("chat-mixed-1500", lambda p: jobgen.chat_job(
        p, 1500, seed=ctx.seed + 1, prompt_chars=(20, 2000), max_tokens=(16, 512)))
    rpm, tpm = 100_000.0, 600_000.0
    server = MockServer(ctx.workdir / "tight.server.log", rpm=rpm, tpm=tpm, latency_ms=50,
                        initial_fill=0)
    row = measure(ctx, "tight-tpm", job, rpm=rpm, tpm=tpm, server=server).row
    row["total_tokens"] = job.total_tokens
    return row


def server_lower(ctx: Ctx) -> Row:
    """Like steady, but the server allows 20% less RPM than the client's flag."""
    job = ctx.job("chat-2k", lambda p: jobgen.chat_job(p, 2000, seed=ctx.seed))
    rpm, tpm = 12_000.0, 10_000_000.0
    server_rpm = rpm * 0.8
    server = MockServer(ctx.workdir / "lower.server.log", rpm=server_rpm, tpm=tpm,
                        latency_ms=50, initial_fill=0)
    row = measure(ctx, "server-lower", job, rpm=rpm, tpm=tpm, server=server).row
    row["server_rpm"] = server_rpm
    return _against(row, job.n, server_rpm, "server")


def faults(ctx: Ctx) -> Row:
    """2,000 chat requests through 5% 500s, 2% resets and 1% hangs; 2 s client timeout."""
    job = ctx.job("chat-2k", lambda p: jobgen.chat_job(p, 2000, seed=ctx.seed))
    server = MockServer(ctx.workdir / "faults.server.log", rpm=HIGH_RPM, tpm=HIGH_TPM,
                        latency_ms=50,
                        faults={"fail-500": 0.05, "reset": 0.02, "hang": 0.01}, seed=ctx.seed)
    m = measure(ctx, "faults", job, rpm=HIGH_RPM, tpm=HIGH_TPM, server=server,
                client_flags=["--timeout", "2"], binding=False)
    row = m.row
    row.update(server_5xx=m.stats.get("n_5xx"), server_resets=m.stats.get("resets"),
               server_hangs=m.stats.get("hangs"))
    return row


def ceiling(ctx: Ctx) -> Row:
    """20,000 embeddings, no limits, no latency: batchproc against a bare aiohttp loop."""
    job = ctx.job("emb-20k", lambda p: jobgen.embedding_job(p, 20_000, seed=ctx.seed + 2))
    server = MockServer(ctx.workdir / "ceiling.server.log", latency_ms=0)
    tag = ctx.tag("ceiling")

    def bare(srv: MockServer) -> Row:
        out = ctx.workdir / f"{tag}.bare.out"
        cmd = [str(VENV_BIN / "python"), str(BENCH / "bare_loop.py"), "--url", srv.base_url,
               "--job", str(job.path)]
        run = run_measured(cmd, log_path=ctx.workdir / f"{tag}.bare.log", env=client_env(),
                           stdout_path=out)
        result = orjson.loads(out.read_bytes())
        return {"bare_requests_per_s": result["requests_per_s"], "bare_ok": result["ok"],
                "bare_cpu_us_per_request": round(run.cpu_s / job.n * 1e6, 1)}

    row = measure(ctx, "ceiling", job, rpm=None, tpm=None, server=server, after=bare).row
    row["ceiling_ratio"] = round(row["requests_per_s"] / row["bare_requests_per_s"], 4)
    ttfr = row["time_to_first_request_s"]
    if ttfr is not None:
        # The same ratio without interpreter start-up and imports (the bare loop's rate
        # excludes its own start-up too).
        rate = job.n / (row["wall_s"] - ttfr)
        row["ceiling_ratio_excl_startup"] = round(rate / row["bare_requests_per_s"], 4)
    return row


def _big_size(ctx: Ctx) -> tuple[int, str]:
    return (200_000, "200k") if ctx.quick else (1_000_000, "1m")


def big(ctx: Ctx) -> Row:
    """Bare embedding lines, high limits, no latency: peak RSS at 100k lines and at 1M."""
    n_big, label = _big_size(ctx)
    rows = []
    for n, key in ((100_000, "100k"), (n_big, label)):
        job = ctx.job(f"bare-{key}", functools.partial(
            jobgen.bare_embedding_job, n=n, seed=ctx.seed + 3))
        server = MockServer(ctx.workdir / f"big-{key}.server.log", rpm=HIGH_RPM, tpm=HIGH_TPM,
                            latency_ms=0)
        log(f"  big: {n:,} lines ...")
        rows.append(measure(ctx, "big", job, rpm=HIGH_RPM, tpm=HIGH_TPM, server=server,
                            binding=False).row)
        if not ctx.keep:
            job.path.unlink(missing_ok=True)
            ctx.jobs.pop(f"bare-{key}")
    small, large = rows
    large["rss_100k_mb"] = small["peak_rss_mb"]
    large[f"rss_{label}_mb"] = large["peak_rss_mb"]
    large["rss_ratio"] = round(large["peak_rss_mb"] / small["peak_rss_mb"], 4)
    large["wall_100k_s"] = small["wall_s"]
    large["cpu_us_per_request_100k"] = small["cpu_us_per_request"]
    return large


def _ledger_writer(results: Path) -> tuple[Path, Callable[[str, bytes], bytes]] | None:
    """batchproc's ledger (id fingerprint + input-line hash per result)."""
    from processor.jobs import line_hash
    from processor.store.ledger import ledger_entry, ledger_path

    def entry(custom_id: str, raw: bytes) -> bytes:
        return ledger_entry(custom_id, line_hash(raw))

    return ledger_path(results), entry


def resume(ctx: Ctx) -> Row:
    """A 1M-line bare job whose results file already holds the first 900k answers."""
    n_lines, _ = _big_size(ctx)
    n_done = n_lines * 9 // 10
    job = ctx.job(f"bare-resume-{n_lines}", lambda p: jobgen.bare_embedding_job(
        p, n_lines, seed=ctx.seed + 4))
    results = ctx.workdir / f"{ctx.tag('resume')}.results.jsonl"
    results.unlink(missing_ok=True)
    ledger = _ledger_writer(results)
    t0 = time.monotonic()
    jobgen.done_results(results, job, n_done, seed=ctx.seed + 5, ledger=ledger)
    log(f"  wrote {n_done:,} done records in {time.monotonic() - t0:.1f}s "
        f"({results.stat().st_size / 1e6:.0f} MB)")
    server = MockServer(ctx.workdir / "resume.server.log", rpm=HIGH_RPM, tpm=HIGH_TPM,
                        latency_ms=0)
    row = measure(ctx, "resume", job, rpm=HIGH_RPM, tpm=HIGH_TPM, server=server,
                  results=results, n_send=n_lines - n_done, binding=False).row
    row["n_lines"] = n_lines
    row["n_done_before"] = n_done
    row["ledger"] = ledger is not None
    if not ctx.keep:
        job.path.unlink(missing_ok=True)
        ctx.jobs.pop(f"bare-resume-{n_lines}")
    return row


def soak(ctx: Ctx) -> Row:
    """100,000 chats (10,000 with --quick) through faults, one outage and SIGKILLs + reruns."""
    return soak_scenario.soak(ctx, log, lower_bound)


SCENARIOS: dict[str, Callable[[Ctx], Row]] = {
    "steady": steady,
    "steady-short": steady_short,
    "server-shared": server_shared,
    "tight-tpm": tight_tpm,
    "server-lower": server_lower,
    "faults": faults,
    "ceiling": ceiling,
    "big": big,
    "resume": resume,
    "soak": soak,
}
ONCE = {"big", "resume", "soak"}
#: scenarios run only when named with --scenario.
OPT_IN = {"soak"}


# -- profile ---------------------------------------------------------------------------


def profile(ctx: Ctx, k: int = 15) -> str:
    """The ceiling scenario's client under py-spy (else pyinstrument): top-k own time."""
    job = ctx.job("emb-20k", lambda p: jobgen.embedding_job(p, 20_000, seed=ctx.seed + 2))
    out_results = ctx.workdir / "profile.results.jsonl"
    out_errors = ctx.workdir / "profile.errors.jsonl"
    for p in ctx.workdir.glob("profile.*"):
        p.unlink()  # old outputs would turn the run into a resume
    with MockServer(ctx.workdir / "profile.server.log", latency_ms=0) as server:
        args = [str(job.path), "--base-url", server.base_url, "--quiet", "-o", str(out_results),
                "--errors", str(out_errors)]
        raw = ctx.workdir / "profile.pyspy.txt"
        t0 = time.monotonic()
        if profiling.pyspy([BATCHPROC, *args], raw, ctx.workdir / "profile.pyspy.log",
                           client_env()):
            tool, unit = "py-spy (200 Hz, non-idle samples)", "samples"
            prof = profiling.parse_pyspy_raw(raw)
        else:
            log("  py-spy could not record; falling back to pyinstrument")
            for p in (out_results, out_errors):
                p.unlink(missing_ok=True)
            raw = ctx.workdir / "profile.pyinstrument.json"
            t0 = time.monotonic()
            if not profiling.pyinstrument(args, raw, ctx.workdir / "profile.pyinst.log",
                                          client_env()):
                return "profile: neither py-spy nor pyinstrument could record"
            tool, unit = "pyinstrument (own time)", "ms"
            prof = profiling.parse_pyinstrument_json(raw)
        wall = time.monotonic() - t0
    total = prof.total
    text = "\n\n".join([
        f"profile of the ceiling client ({job.n:,} embeddings, no limits, 0 ms latency), "
        f"{tool}, {total:,} {unit}, wall {wall:.1f}s under the profiler",
        profiling.render(f"top {k} functions by own time:", profiling.top(prof.by_func, total, k)),
        profiling.render(f"top {k} lines by own time:", profiling.top(prof.by_line, total, k)),
        profiling.render("own time by area:", profiling.top(prof.by_area, total, 10)),
        profiling.render("processor functions, inclusive time:",
                         profiling.top(prof.inclusive, total, 12)),
    ])
    if ctx.keep:
        text += f"\n\nraw profile: {raw}"
    return text


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark batchproc against the mock server (JSON lines on stdout).")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="scenario to run (repeatable; default: all but soak)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per scenario (big and resume always run once)")
    parser.add_argument("--quick", action="store_true",
                        help="big/resume at 200k lines, not 1M; soak at 10k, not 100k")
    parser.add_argument("--profile", action="store_true",
                        help="after the scenarios, profile the ceiling client and print the "
                        "top 15 functions by own time")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the profile, no scenarios")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="work in DIR and keep job, output and log files")
    parser.add_argument("--markdown", metavar="FILE", type=Path,
                        help="also write the medians and targets as Markdown to FILE")
    args = parser.parse_args(argv)
    names = [] if args.profile_only else args.scenario or [
        name for name in SCENARIOS if name not in OPT_IN]
    # Byte-compile the package once, as `pip install` does: the client then starts
    # like an installed one even where PYTHONDONTWRITEBYTECODE is set.
    import compileall

    compileall.compile_dir(str(BENCH.parent / "processor"), quiet=1)

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = args.keep
    else:
        workdir = Path(tempfile.mkdtemp(prefix="batchproc-bench-"))
    ctx = Ctx(workdir=workdir, quick=args.quick, seed=args.seed, keep=args.keep is not None)
    rows: list[Row] = []
    try:
        for name in names:
            for i in range(1 if name in ONCE else max(1, args.repeat)):
                ctx.run = i
                log(f"[{name} #{i + 1}]")
                row = SCENARIOS[name](ctx)
                rows.append(row)
                sys.stdout.write(orjson.dumps(row).decode() + "\n")
                sys.stdout.flush()
        if args.profile or args.profile_only:
            log("[profile]")
            prof = profile(ctx)
            log(prof)
    finally:
        if not ctx.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if rows:
        merged = summary.medians(rows)
        log("\nmedians:\n" + summary.table(merged))
        if args.markdown:
            args.markdown.write_text(summary.markdown(merged) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
