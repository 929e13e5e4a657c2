"""The ``jobs-from-images``, ``estimate`` and ``export`` commands, added to an app by
:func:`register`. They only parse options and render; the work is in
:mod:`processor.tools.imagejobs`, :mod:`processor.tools.estimate` and
:mod:`processor.tools.export`."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import IO, Annotated

import orjson
import typer

from ..cost import DEFAULT_MAX_TOKENS, TokenCounter
from ..cost.packing import parse_pack
from ..errors import ConfigError
from ..jobs import DEFAULT_ENDPOINT
from ..store.paths import check_distinct, check_output
from ..tools.estimate import PRICES, PRICES_AS_OF, Estimate, estimate_job, load_prices
from ..tools.export import CHUNK_SIZE, ExportStats, iter_rows, write_csv, write_jsonl
from ..tools.imagejobs import write_image_jobs
from .exits import EXIT_FAILED, EXIT_IOERR, EXIT_USAGE
from .options import parse_shard_option

__all__ = ["register"]



class Detail(str, Enum):
    low = "low"
    high = "high"
    auto = "auto"


class Format(str, Enum):
    csv = "csv"
    jsonl = "jsonl"


def io_failure(exc: OSError, output: Path | None, done: str = "") -> typer.Exit:
    """Exit 74 with one line naming the file (the output unless the error names another)."""
    name = exc.filename or (output if output is not None else "stdout")
    return _fail(f"{name}: {exc.strerror or exc}{done}", EXIT_IOERR)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def check_output_paths(output: Path, reads: list[tuple[str, Path]]) -> None:
    """``--output`` (written as ``<output>.partial``, then renamed) must be a file or new,
    and none of the files read.

    Raises:
        typer.BadParameter: with the reason (a usage error, exit 2).
    """
    partial = output.with_name(output.name + ".partial")
    try:
        hint = "give a file, or leave out --output to write to stdout"
        check_output(output, "--output", hint)
        check_output(partial, "--output's temporary file", hint)
        check_distinct(reads, [("--output", output), ("--output's temporary file", partial)])
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from None


def parse_limit(value: str | None, name: str) -> float | None:
    """A --rpm/--tpm value: ``30_000`` and ``30,000`` work; 0, off and auto mean none given."""
    if value is None or value.lower() in ("", "none", "off", "0", "auto"):
        return None
    try:
        number = float(value.replace("_", "").replace(",", ""))
    except ValueError:
        raise typer.BadParameter(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise typer.BadParameter(f"{name} must be a positive number, got {value!r}")
    return number


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[bytes]]:
    """stdout, or ``path`` written as ``<path>.partial`` and renamed once complete."""
    if path is None:
        stream = typer.get_binary_stream("stdout")
        yield stream
        stream.flush()
        return
    partial = path.with_name(path.name + ".partial")
    try:
        f = open(partial, "wb")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with f:
            yield f
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def jobs_from_images(
    folder: Annotated[Path, typer.Argument(
        metavar="FOLDER", help="Folder of images, walked recursively in sorted order.")],
    prompt: Annotated[str, typer.Option(help="The text sent with every image.")],
    model: Annotated[str, typer.Option(help="The model, e.g. gpt-4o-mini.")],
    detail: Annotated[Detail, typer.Option(help="Image detail: low, high or auto.")]
    = Detail.auto,
    max_side: Annotated[int | None, typer.Option(
        min=1, help="Shrink images whose longer side exceeds this many pixels (needs Pillow, "
        "the 'images' extra of batchproc).")] = None,
    max_tokens: Annotated[int, typer.Option(
        min=1, help="Completion budget of each request.")] = 300,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the job here (default: stdout).")] = None,
) -> None:
    """Write a JSONL job with one vision request per image in FOLDER (custom_id = its path)."""
    if not folder.is_dir():
        raise typer.BadParameter(f"not a folder: {folder}", param_hint="FOLDER")
    exclude: frozenset[Path] = frozenset()
    if output is not None:  # the output may sit inside FOLDER: never read it back
        check_output_paths(output, [])
        partial = output.with_name(output.name + ".partial")
        exclude = frozenset({output.resolve(), partial.resolve()})
    try:
        with _output(output) as out:
            stats = write_image_jobs(
                folder, out, prompt=prompt, model=model, detail=detail.value,
                max_side=max_side, max_tokens=max_tokens,
                on_note=lambda note: typer.echo(note, err=True), exclude=exclude,
            )
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise io_failure(exc, output, _NOT_WRITTEN if output is not None else "") from None
    resized = f", {stats.resized} resized" if stats.resized else ""
    where = f" to {output}" if output is not None else ""
    typer.echo(f"{stats.written} images written{where}, {stats.skipped} skipped{resized}",
               err=True)
    if not stats.written:
        raise _fail(f"no PNG, JPEG, GIF or WebP images found in {folder}", EXIT_FAILED)


def estimate(
    jobs: Annotated[Path, typer.Argument(metavar="JOBS.jsonl", help="The JSONL job file.")],
    rpm: Annotated[str | None, typer.Option(help="Requests per minute the run will use.")]
    = None,
    tpm: Annotated[str | None, typer.Option(help="Tokens per minute the run will use.")]
    = None,
    prices: Annotated[Path | None, typer.Option(
        help="JSON file of model prefix -> {input, output} USD per 1M tokens, overriding or "
        f"extending the built-in list prices (as of {PRICES_AS_OF}).")] = None,
    endpoint: Annotated[str, typer.Option(help="Endpoint for lines that name none.")]
    = DEFAULT_ENDPOINT,
    default_max_tokens: Annotated[int, typer.Option(
        min=0, help="Completion tokens charged when a request states no max_tokens.")]
    = DEFAULT_MAX_TOKENS,
    encodings_dir: Annotated[Path | None, typer.Option(
        help="Folder with tiktoken files for exact counts offline (as for run).")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never download a tiktoken encoding: count with what is local, else by "
        "characters.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    pack: Annotated[str, typer.Option(
        help="Count requests as `run --pack N` sends them (N, 'auto' or 'off'): the least "
        "time is then the packed bound.")] = "off",
    shard: Annotated[str | None, typer.Option(
        metavar="K/N", help="Only the share of worker K of N (as run --shard K/N takes).")]
    = None,
    via: Annotated[str, typer.Option(
        help="'online', or 'batch': at the Batch API's price (half), within its 24h "
        "window.")] = "online",
) -> None:
    """Count, price and time a job without sending anything (an upper bound)."""
    try:
        pack_size = parse_pack(pack)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--pack") from None
    split = parse_shard_option(shard)
    if via not in ("online", "batch"):
        raise typer.BadParameter("must be online or batch", param_hint="--via")
    if not jobs.is_file():
        raise typer.BadParameter(f"no such file: {jobs}", param_hint="JOBS.jsonl")
    try:
        table = PRICES | load_prices(prices) if prices is not None else PRICES
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    counter = TokenCounter(encodings_dir=encodings_dir, allow_download=not offline,
                           default_max_tokens=default_max_tokens)
    result = estimate_job(jobs, counter=counter, prices=table, rpm=parse_limit(rpm, "--rpm"),
                          tpm=parse_limit(tpm, "--tpm"), endpoint=endpoint, pack=pack_size,
                          shard=split)
    if via == "batch":
        result.at_batch_price()
    if json_out:
        if result.min_seconds is not None:
            result.min_seconds = round(result.min_seconds, 3)
        typer.echo(orjson.dumps(result.to_dict()).decode())
    else:
        _render(result)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _usd(amount: float) -> str:
    if amount >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.6f}" if amount >= 1e-6 or amount == 0 else "< $0.000001"


def _render(est: Estimate) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [
        ("requests", f"{est.requests:,}" + (
            f" in {est.http_requests:,} HTTP requests (--pack {est.pack})" if est.pack else "")),
        ("bad lines", f"{est.bad_lines:,}" + (
            f" (lines {', '.join(map(str, est.bad_line_numbers[:10]))}"
            f"{', ...' if est.bad_lines > 10 else ''})" if est.bad_lines else "")),
        ("prompt tokens", f"{est.prompt_tokens:,} (images {est.image_tokens:,})"),
        ("max completion tokens", f"{est.max_completion_tokens:,}"),
        ("cost (USD, upper bound)", f"{_usd(est.cost_usd)} at list prices as of "
         f"{est.prices_as_of}"),
    ]
    if est.unpriced_models:
        rows.append(("unpriced (not in cost)", ", ".join(est.unpriced_models)))
    if est.via == "batch":
        rows[4] = ("cost (USD, upper bound)", f"{_usd(est.cost_usd)} at the Batch API's price "
                   f"(half the list prices as of {est.prices_as_of})")
        rows.append(("time", "within the 24h completion window (the Batch API's bound, not "
                     "the rate limit; --rpm only paces its few calls)"))
    elif est.min_seconds is None:
        rows.append(("least time", "no --rpm/--tpm given"))
    else:
        rows.append(("least time", f"{_duration(est.min_seconds)} ({est.binding_limit} binds)"))
    if est.too_large:
        rows.append(("too large", f"{est.too_large:,} requests exceed the whole --tpm and "
                     "would fail unsent"))
    rows.append(("token counts", est.token_counts))
    summary = Table(show_header=False, box=None)
    for name, value in rows:
        summary.add_row(name, value)
    models = Table("model", "requests", "prompt", "max completion", "USD", box=None)
    for model, t in sorted(est.by_model.items()):
        cost = "-" if t.cost_usd is None else _usd(t.cost_usd)
        models.add_row(model, f"{t.requests:,}", f"{t.prompt_tokens:,}",
                       f"{t.max_completion_tokens:,}", cost)
    console = Console()
    console.print(summary)
    if est.by_model:
        console.print()
        console.print(models)


def export(
    results: Annotated[Path, typer.Argument(
        metavar="RESULTS.jsonl", help="The results file of a run.")],
    to: Annotated[Format, typer.Option(help="Output format.")] = Format.csv,
    input_path: Annotated[Path | None, typer.Option(
        "--input", help="The job file: rows in its order, 'missing' rows for lines with no "
        "outcome.")] = None,
    errors: Annotated[Path | None, typer.Option(
        help="The errors file (default: <stem>.errors.jsonl beside RESULTS, if present).")]
    = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the table here (default: stdout).")] = None,
    chunk_size: Annotated[int, typer.Option(
        min=1, help="Rows sorted in memory at once with --input.")] = CHUNK_SIZE,
) -> None:
    """Write a run's results and errors as a table, one row per request (CSV or JSONL)."""
    for path, hint in ((results, "RESULTS.jsonl"), (errors, "--errors"), (input_path, "--input")):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint=hint)
    if errors is None and results.name.endswith(".results.jsonl"):
        sibling = results.with_name(results.name[: -len(".results.jsonl")] + ".errors.jsonl")
        if sibling.is_file():
            errors = sibling
            typer.echo(f"errors from {sibling}", err=True)
    if output is not None:
        check_output_paths(output, [(hint, p) for p, hint in ((results, "RESULTS.jsonl"),
                                    (errors, "--errors"), (input_path, "--input")) if p])
    stats = ExportStats()
    rows = iter_rows(results, errors, input_path=input_path, chunk_size=chunk_size, stats=stats)
    try:
        with _output(output) as out:
            (write_csv if to is Format.csv else write_jsonl)(rows, out)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise io_failure(exc, output, _NOT_WRITTEN if output is not None else "") from None
    counts = ", ".join(f"{n} {status}" for status, n in sorted(stats.by_status.items()))
    where = f" to {output}" if output is not None else ""
    typer.echo(f"{stats.rows} rows{where}" + (f" ({counts})" if counts else ""), err=True)
    if stats.unreadable:
        typer.echo(f"warning: skipped {stats.unreadable} lines that are not JSON records",
                   err=True)


_NOT_WRITTEN = " (the output was not written; its temporary file was removed)"


def register(app: typer.Typer) -> None:
    """Add ``jobs-from-images``, ``estimate`` and ``export`` to ``app``."""
    app.command("jobs-from-images")(jobs_from_images)
    app.command("estimate")(estimate)
    app.command("export")(export)
