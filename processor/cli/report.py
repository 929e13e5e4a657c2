"""The ``report`` command: a job's run log as one HTML file, or its headline figures in
the terminal (``--summary``) or as JSON (``--json``). The work is in
:mod:`processor.tools.report`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from ..errors import ConfigError
from ..run.runner import default_paths
from ..store.paths import check_distinct, check_output
from ..store.runlog import run_log_path
from ..tools.report import aggregate, format_headline, headline, render_page
from .commands import io_failure
from .exits import EXIT_FAILED

__all__ = ["find_log", "register"]


def _looks_like_log(path: Path) -> bool:
    """The first non-blank line of ``path`` is a run-log event."""
    with open(path, "rb") as f:
        # At most 1 MiB at a time: a job's first line may be a huge image, and a log
        # line never is that long at its start.
        while line := f.readline(1 << 20):
            if len(line) == 1 << 20 and not line.endswith(b"\n"):
                return line.startswith(b'{"ev":"')  # as the log's events begin
            if line.strip():
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    return False
                return isinstance(event, dict) and isinstance(event.get("ev"), str)
    return path.name.endswith(".run.jsonl")


def find_log(source: Path) -> Path:
    """The run log ``source`` names: the log itself, or a job (or results) file whose
    log is ``<stem>.run.jsonl`` beside its results.

    Raises:
        typer.BadParameter: no such file, or no log where the job's would be.
    """
    if not source.is_file():
        raise typer.BadParameter(f"no such file: {source}", param_hint="JOBS_OR_LOG")
    try:
        if _looks_like_log(source):
            return source
    except OSError as exc:
        raise io_failure(exc, source) from None
    if source.name.endswith(".results.jsonl"):
        log = run_log_path(source)
    else:
        log = run_log_path(default_paths(source)[0])
    if not log.is_file():
        raise typer.BadParameter(
            f"{source} is not a run log, and there is none at {log} (was the job run with "
            "--no-run-log, or with --output / --run-log elsewhere? name the log itself)",
            param_hint="JOBS_OR_LOG")
    return log


def _default_output(log: Path) -> Path:
    name = log.name
    stem = name[: -len(".run.jsonl")] if name.endswith(".run.jsonl") and \
        len(name) > len(".run.jsonl") else name
    return log.with_name(f"{stem}.report.html")


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""

    @app.command("report")
    def report(
        source: Annotated[Path, typer.Argument(
            metavar="JOBS_OR_LOG", help="A run log (<stem>.run.jsonl), or the job file (or "
            "results file) whose log it is.")],
        output: Annotated[Path | None, typer.Option(
            "--output", "-o", help="The HTML file (default: <stem>.report.html beside the "
            "log; not written with --summary / --json unless given).")] = None,
        summary: Annotated[bool, typer.Option(
            "--summary", help="Print the headline figures.")] = False,
        as_json: Annotated[bool, typer.Option(
            "--json", help="Print the headline figures as JSON (for pipelines).")] = False,
    ) -> None:
        """Draw a job's run log: rates against the limits, in flight, latency, errors,
        progress, failures by reason, answers by key and model, headline figures."""
        log = find_log(source)
        target = output if output is not None else (
            None if summary or as_json else _default_output(log))
        partial = None
        if target is not None:
            partial = target.with_name(f".{target.name}.partial")
            if target.name.endswith(".jsonl") and target.exists():
                raise typer.BadParameter(
                    f"{target} is a JSONL file (a job, results or a log?): the report is "
                    "HTML; give another name", param_hint="--output")
            try:
                check_output(target, "--output", "give a file")
                check_distinct([("the run log", log)],
                               [("--output", target), ("--output's temporary file", partial)])
            except ConfigError as exc:
                raise typer.BadParameter(str(exc), param_hint="--output") from None
        try:
            agg = aggregate(log)
        except OSError as exc:
            raise io_failure(exc, log) from None
        if not agg.events:
            typer.echo(f"error: {log} holds no run-log events", err=True)
            raise typer.Exit(EXIT_FAILED)
        figures = headline(agg)
        if as_json:
            sys.stdout.buffer.write(orjson.dumps(figures, option=orjson.OPT_APPEND_NEWLINE))
            sys.stdout.flush()
        if summary:
            typer.echo(format_headline(figures))
        if target is None or partial is None:
            return
        try:
            partial.write_text(render_page(agg, log.name), encoding="utf-8")
            os.replace(partial, target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise io_failure(exc, target) from None
        typer.echo(f"report: {target}", err=True)
