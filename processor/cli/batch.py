"""``run --via batch|auto`` and the ``batches`` command: parse, pick, render. The work is
in :mod:`processor.batchapi`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..batchapi import BatchConfig, BatchState, run_batch_job, work_dir
from ..batchapi.status import cancel_running, refresh, rows
from ..client.http import DEFAULT_BASE_URL
from ..errors import BatchProcError
from ..jobs import count_lines
from ..run.config import JobConfig
from ..run.runner import default_paths
from ..stats import Stats
from .exits import EXIT_USAGE, error_exit
from .options import resolve_keys

__all__ = ["AUTO_REQUESTS", "AUTO_SECONDS", "batch_config", "choose_via", "register_batches",
           "run_batch"]

#: ``--via auto`` sends a job through the Batch API from this many requests ...
AUTO_REQUESTS = 20_000
#: ... or when --rpm / --tpm put its least online time over this many seconds.
AUTO_SECONDS = 2 * 3600.0
VIAS = ("online", "batch", "auto")


def batch_state(input_path: Path, output: Path | None) -> BatchState | None:
    """The job's batch state, if a Batch API run left one (read-only)."""
    out = output or default_paths(input_path)[0]
    try:
        return BatchState.load(work_dir(out) / "state.json")
    except (BatchProcError, OSError):  # the run's own checks say what is wrong
        return None


def choose_via(via: str, input_path: Path, output: Path | None, config: JobConfig) -> str:
    """``online`` or ``batch`` for ``--via`` (``auto``: see :data:`AUTO_REQUESTS`).

    A job with batches still running is never sent online: that would answer them twice.
    """
    if via not in VIAS:
        raise typer.BadParameter(f"must be one of {', '.join(VIAS)}", param_hint="--via")
    state = batch_state(input_path, output)
    unfinished = state is not None and not state.finished
    if via == "online" and unfinished:
        typer.echo(f"error: {input_path} has parts with the Batch API (`batchproc batches "
                   f"{input_path}`): collect them with --via batch, or cancel them with "
                   "`batchproc batches --cancel` and then collect", err=True)
        raise typer.Exit(EXIT_USAGE)
    if via != "auto":
        return via
    if unfinished:
        return "batch"
    if config.shard is not None:  # a worker's share of online work
        return "online"
    requests = count_lines(input_path)
    if requests >= AUTO_REQUESTS:
        return "batch"
    if config.rpm or config.tpm:
        from ..cost import TokenCounter
        from ..tools.estimate import estimate_job

        est = estimate_job(input_path, counter=TokenCounter(allow_download=False),
                           rpm=config.rpm, tpm=config.tpm, endpoint=config.endpoint)
        if est.min_seconds is not None and est.min_seconds > AUTO_SECONDS:
            return "batch"
    return "online"


def batch_config(queue_tokens: int | None, poll_every: float, poll_max: float, detach: bool,
                 fallback_online: bool, part_requests: int) -> BatchConfig:
    if poll_max < poll_every:
        raise typer.BadParameter("--batch-poll-max must be at least --batch-poll-every")
    return BatchConfig(queue_tokens=queue_tokens, poll_every=poll_every, poll_max=poll_max,
                       detach=detach, fallback_online=fallback_online,
                       part_requests=part_requests)


async def run_batch(input_path: Path, config: JobConfig, batch: BatchConfig,
                    output: Path | None, errors: Path | None,
                    on_progress: Callable[[Stats], None] | None) -> Stats:
    """:func:`run_batch_job` for the ``run`` command; a detached run says how to collect."""
    stats, state = await run_batch_job(input_path, config, batch, output=output, errors=errors,
                                       on_progress=on_progress, handle_signals=True)
    if batch.detach and not state.finished and stats.stopped is None:
        waiting = sum(p.active or p.pending for p in state.parts)
        typer.echo(f"detached: {waiting} parts with the Batch API; collect with the same "
                   f"command (without --detach to wait), see them with `batchproc batches "
                   f"{input_path}`", err=True)
    return stats


def batches(
    input_path: Annotated[Path, typer.Argument(metavar="JOBS.jsonl", help="The job file.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="The run's results file, if not the default.")] = None,
    cancel: Annotated[bool, typer.Option(
        "--cancel", help="Cancel every batch still running (what they answered is collected "
        "by the next run).")] = False,
    refresh_: Annotated[bool, typer.Option(
        "--refresh", help="Ask the server for each running batch's status now.")] = False,
    base_url: Annotated[str | None, typer.Option(
        help=f"API base URL (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL}).")] = None,
    api_key_env: Annotated[str, typer.Option(help="Variable holding the API key.")]
    = "OPENAI_API_KEY",
    plain: Annotated[bool, typer.Option("--plain", help="Plain lines, not a table.")] = False,
) -> None:
    """Show each Batch API part of a job (status, counts), or cancel what still runs."""
    state = batch_state(input_path, output)
    if state is None:
        typer.echo(f"no Batch API run for {input_path} (run it with --via batch)", err=True)
        raise typer.Exit(1)
    if cancel or refresh_:
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key, keys = resolve_keys(None, api_key_env, None)
        config = JobConfig(base_url=base, api_key=key, api_keys=keys)
        try:
            if cancel:
                done = asyncio.run(cancel_running(
                    state, config, work_dir(output or default_paths(input_path)[0])))
                for part, status in done:
                    typer.echo(f"{part.key}: {part.batch_id} -> {status}", err=True)
                typer.echo(f"cancelled {len(done)} batches; rerun the job's command to collect "
                           "what they answered", err=True)
            else:
                asyncio.run(refresh(state, config))
        except BatchProcError as exc:
            message, code = error_exit(exc)
            typer.echo(message, err=True)
            raise typer.Exit(code) from None
    _render(rows(state), plain or not sys.stdout.isatty())


def _render(table: list[dict[str, Any]], plain: bool) -> None:
    heads = ["part", "model", "requests", "step", "batch", "status", "completed", "failed",
             "note"]
    if plain:
        for row in table:
            typer.echo("  ".join(f"{h}={row[h]}" for h in heads if row[h] not in (None, "")))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for head in heads:  # the note wraps; the rest keep their width
        t.add_column(head, no_wrap=head != "note", min_width=None if head == "note" else
                     len(head))
    for row in table:
        t.add_row(*("" if row[h] is None else str(row[h]) for h in heads))
    Console().print(t)


def register_batches(app: typer.Typer) -> None:
    app.command("batches")(batches)
