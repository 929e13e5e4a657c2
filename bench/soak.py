"""The soak scenario (issue 9): a long job through faults, one outage and SIGKILLs.

    python bench/run.py --scenario soak [--quick]

The mock server answers with 50 +- 25 ms latency, 1% 500s, 1% 503s, 0.5% resets, 0.2%
hangs and 0.5% cut-off bodies, and goes down once (an outage of a minute, 20 s with
``--quick``: half the requests get a load balancer's 502 page, half a reset). batchproc
runs the job as a user would, and is SIGKILLed at random moments a few times; the same
command is then rerun at once (exit 75, "rerun later", too), until it exits 0, or exits 1
with every line accounted for (what failed for good stays failed: no ``--retry-failed``),
or the rerun budget is spent.

The row says what a user would check the morning after: missing answers (input ids with
neither a result nor an error) and duplicated answers (both must be 0), requests failed
for good (ids only in the errors file), peak RSS, kills and reruns, and the wall time
against its lower bound: the rate-limit bound plus the outage.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jobgen
from _harness import BATCHPROC, ClientRun, MockServer, client_env, count_ids, run_measured

Row = dict[str, Any]
#: the exit code of a run stopped on a spent daily budget: rerun later (at once, here).
EXIT_LATER = 75
EXIT_FAILED = 1


@dataclass(frozen=True)
class SoakPlan:
    """The size of a soak run and what is thrown at it."""

    n: int
    rpm: float
    tpm: float
    outage_at: float
    """Seconds after the server starts (the first run starts right after it)."""
    outage_for: float
    kills: int
    kill_after: tuple[float, float]
    """A killed run is killed this many seconds after its start (uniform)."""
    max_runs: int
    timeout: float = 5.0
    """The client's ``--timeout``: how long a hung request holds a slot."""
    faults: dict[str, float] = field(default_factory=lambda: {
        "fail-500": 0.01, "fail-503": 0.01, "reset": 0.005, "hang": 0.002,
        "truncate": 0.005})


FULL = SoakPlan(n=100_000, rpm=30_000.0, tpm=20_000_000.0, outage_at=90.0, outage_for=60.0,
                kills=8, kill_after=(5.0, 45.0), max_runs=30)
QUICK = SoakPlan(n=10_000, rpm=12_000.0, tpm=10_000_000.0, outage_at=20.0, outage_for=20.0,
                 kills=4, kill_after=(3.0, 15.0), max_runs=20)


@dataclass
class Tally:
    """Per-id counts of the results and errors files, against the input's ids."""

    n_results: int = 0
    n_errors: int = 0
    n_missing: int = 0
    n_duplicates: int = 0
    n_failed: int = 0
    n_both: int = 0
    n_invalid_json: int = 0
    n_unexpected: int = 0


def tally(results: Path, errors: Path, prefix: str, n: int) -> Tally:
    """Missing (neither file), duplicated (answered twice or more), failed for good
    (only in the errors file) and answered-and-failed ids; lines that are not JSON."""
    out = Tally()
    answered, failed = bytearray(n + 1), bytearray(n + 1)
    out.n_results, bad_results, odd_results = count_ids(results, prefix, answered)
    out.n_errors, bad_errors, odd_errors = count_ids(errors, prefix, failed)
    out.n_invalid_json = bad_results + bad_errors
    out.n_unexpected = odd_results + odd_errors
    for i in range(1, n + 1):
        a, e = answered[i], failed[i]
        if a == 0 and e == 0:
            out.n_missing += 1
        elif a == 0:
            out.n_failed += 1
        elif e:
            out.n_both += 1
        if a > 1:
            out.n_duplicates += 1
    return out


@dataclass
class _Run:
    exit_code: int
    killed: bool
    wall_s: float
    client: ClientRun


def soak(ctx: Any, log: Callable[[str], None], lower_bound: Callable[..., float | None]) -> Row:
    """Run the soak once (``ctx`` is bench/run.py's ``Ctx``); return its row."""
    plan = QUICK if ctx.quick else FULL
    label = "10k" if ctx.quick else "100k"
    job = ctx.job(f"soak-{label}", lambda p: jobgen.chat_job(p, plan.n, seed=ctx.seed + 6))
    tag = ctx.tag("soak")
    results = ctx.workdir / f"{tag}.results.jsonl"
    errors = ctx.workdir / f"{tag}.errors.jsonl"
    for p in ctx.workdir.glob(f"{tag}.*"):
        p.unlink()
    rng = random.Random(ctx.seed + 7)
    server = MockServer(
        ctx.workdir / f"{tag}.server.log", rpm=plan.rpm, tpm=plan.tpm, latency_ms=25,
        initial_fill=0, seed=ctx.seed,
        faults=plan.faults | {"latency-jitter-ms": 50.0, "outage-at": plan.outage_at,
                              "outage-for": plan.outage_for},
        options=["--outage-mode", "mixed"])
    cmd = [BATCHPROC, str(job.path), "--base-url", "", "--quiet", "-o", str(results),
           "--errors", str(errors), "--rpm", f"{plan.rpm:.0f}", "--tpm", f"{plan.tpm:.0f}",
           "--timeout", f"{plan.timeout:g}"]
    runs: list[_Run] = []
    with server:
        cmd[3] = server.base_url
        t0 = time.monotonic()
        while len(runs) < plan.max_runs:
            kills = sum(r.killed for r in runs)
            kill_at = rng.uniform(*plan.kill_after) if kills < plan.kills else None
            client = run_measured(cmd, log_path=ctx.workdir / f"{tag}.client-{len(runs)}.log",
                                  env=client_env(), timeout=kill_at or 6 * 3600.0)
            killed = kill_at is not None and client.exit_code == -signal.SIGKILL
            runs.append(_Run(client.exit_code, killed, client.wall_s, client))
            at = time.monotonic() - t0
            log(f"  run {len(runs)}: exit {client.exit_code}"
                + (f" (SIGKILL after {kill_at:.1f}s)" if killed else "")
                + f", {client.wall_s:.1f}s, at {at:.0f}s")
            if killed or client.exit_code == EXIT_LATER:
                continue
            if client.exit_code == 0:
                break
            if client.exit_code == EXIT_FAILED:
                # Finished with failures: a rerun skips them; only missing lines need one.
                if tally(results, errors, job.id_prefix, job.n).n_missing == 0:
                    break
                continue
            log(f"  stopping: unexpected exit {client.exit_code}; "
                f"see {ctx.workdir / f'{tag}.client-{len(runs) - 1}.log'}")
            break
        wall = time.monotonic() - t0
        stats = server.stats()
    check = tally(results, errors, job.id_prefix, job.n)
    rate_bound = lower_bound(job.n, job.total_tokens, plan.rpm, plan.tpm) or 0.0
    bound = rate_bound + plan.outage_for
    cpu = sum(r.client.cpu_s for r in runs)
    row: Row = {
        "scenario": "soak",
        "n": job.n,
        "rpm": plan.rpm,
        "tpm": plan.tpm,
        "wall_s": round(wall, 3),
        "lower_bound_s": round(bound, 3),
        "efficiency": round(bound / wall, 4),
        "rate_bound_s": round(rate_bound, 3),
        "outage_s": plan.outage_for,
        "n_missing": check.n_missing,
        "n_duplicates": check.n_duplicates,
        "n_failed": check.n_failed,
        "n_answered_and_failed": check.n_both,
        "n_errors": check.n_errors,
        "n_invalid_json": check.n_invalid_json,
        "n_unexpected": check.n_unexpected,
        "n_429": stats.get("n_429"),
        "kills": sum(r.killed for r in runs),
        "reruns": len(runs) - 1,
        "finished": bool(runs) and runs[-1].exit_code in (0, EXIT_FAILED)
        and check.n_missing == 0,
        "exit_codes": [r.exit_code for r in runs],
        "peak_rss_mb": round(max(r.client.peak_rss_mb for r in runs), 1),
        "client_cpu_s": round(cpu, 3),
        "cpu_us_per_request": round(cpu / job.n * 1e6, 1),
        "requests_per_s": round(job.n / wall, 1),
        "server_requests": stats.get("requests"),
        "server_5xx": stats.get("n_5xx"),
        "server_resets": stats.get("resets"),
        "server_hangs": stats.get("hangs"),
        "server_truncated": stats.get("truncated"),
        "server_outage": stats.get("outage"),
        "quick": ctx.quick,
        "repeat": ctx.run,
    }
    if not ctx.keep:
        for p in ctx.workdir.glob(f"{tag}.*"):
            p.unlink(missing_ok=True)
    return row
