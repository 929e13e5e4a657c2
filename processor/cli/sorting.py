"""``batchproc sort``: results in input order, in bounded memory (over
:mod:`processor.tools.ordering`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..store.paths import check_distinct, check_output
from .commands import io_failure

__all__ = ["register_sort"]


def sort(
    results: Annotated[Path, typer.Argument(metavar="RESULTS.jsonl", help="A results file.")],
    input_path: Annotated[Path, typer.Option(
        "--input", help="The job file whose order to follow.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Where to write (default: <results stem>.sorted.jsonl).")]
    = None,
    chunk_size: Annotated[int, typer.Option(
        min=1000, help="Pairs sorted in memory at a time (memory bound).")] = 100_000,
) -> None:
    """Write results in input order, in bounded memory (an external sort on disk)."""
    from ..tools.ordering import sort_results

    for path in (results, input_path):
        if not path.is_file():
            raise typer.BadParameter(f"no such file: {path}")
    if output is None:
        stem = results.name.removesuffix(".jsonl")
        output = results.with_name(f"{stem}.sorted.jsonl")
    try:
        check_output(output, "--output", "give a file")
        check_distinct([("RESULTS.jsonl", results), ("--input", input_path)],
                       [("--output", output)])
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from None
    before = _stamp(output)
    try:
        stats = sort_results(results, input_path, output, chunk=chunk_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except OSError as exc:
        written = _stamp(output) not in (None, before)
        if written:  # a cut-off copy would look complete (an untouched old one is kept)
            output.unlink(missing_ok=True)
        raise io_failure(exc, output, " (the partial output was removed)" if written else ""
                         ) from None
    typer.echo(
        f"wrote {stats.written:,} results in input order to {output}; "
        f"{stats.missing:,} input lines have no result"
        + (f", {stats.unmatched:,} results are not in the input (put last)"
           if stats.unmatched else "")
        + (f", {stats.duplicates:,} repeated results left out" if stats.duplicates else ""),
        err=True,
    )


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def register_sort(app: typer.Typer) -> None:
    """Add the ``sort`` command to ``app``."""
    app.command("sort")(sort)
