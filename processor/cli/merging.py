"""The ``merge`` command: parses, checks paths, takes the shards' locks and renders; the
work is in :mod:`processor.tools.merge`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError, JobLocked, OutputError
from ..store.lock import JobLock
from ..store.paths import check_distinct, check_input, check_output, identity, lock_path
from ..store.shardfiles import ShardFiles, find_shard_files, split_problems, stem_of
from ..tools.merge import MergeReport, merge_files
from .commands import io_failure
from .exits import EXIT_FAILED, EXIT_LATER

__all__ = ["merge"]


def merge(
    results: Annotated[list[Path] | None, typer.Argument(
        metavar="[RESULTS.jsonl]...", help="The shards' results files.")] = None,
    errors: Annotated[list[Path] | None, typer.Option(
        "--errors", help="A shard's errors file (repeatable).")] = None,
    job: Annotated[Path | None, typer.Option(
        "--job", help="Find the shards' files beside this job by their default names "
        "(<stem>.shard-K-of-N.results.jsonl / .errors.jsonl), and put the merged files in "
        "its order (see --no-sort).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Merged results (with --job, default "
        "<stem>.merged.results.jsonl beside it).")] = None,
    errors_output: Annotated[Path | None, typer.Option(
        help="Merged errors (default: beside --output, .results. -> .errors.).")] = None,
    input_path: Annotated[Path | None, typer.Option(
        "--input", help="Put the merged files in this job's order (an external sort, "
        "bounded memory).")] = None,
    no_sort: Annotated[bool, typer.Option(
        "--no-sort", help="With --job: keep the shards' order (faster).")] = False,
    chunk_size: Annotated[int, typer.Option(
        min=1000, help="Pairs sorted in memory at a time with --input / --job.")] = 100_000,
) -> None:
    """Combine the shards of a job (--shard K/N) into one results and one errors file,
    checking that no id is answered twice and that every line is whole (exit 1 if not)."""
    problems: list[str] = []
    if job is not None:
        if results or errors:
            raise typer.BadParameter("give the files, or --job to find them, not both",
                                     param_hint="--job")
        files = _discover(job, problems)
        results = [f.results for f in files]
        errors = [f.errors for f in files if f.errors.is_file()]
        if input_path is None and not no_sort:
            input_path = job
        if output is None:
            output = job.with_name(f"{stem_of(job)}.merged.results.jsonl")
    if not results:
        raise typer.BadParameter("give the shards' results files, or --job JOBS.jsonl",
                                 param_hint="RESULTS.jsonl")
    if output is None:
        raise typer.BadParameter("give --output (the merged results file)", param_hint="--output")
    errors = list(errors or [])
    errors_output = errors_output or _errors_beside(output)
    _check_paths(results, errors, input_path, output, errors_output)
    problems += split_problems(list(results))
    try:
        with _locked([*results, *errors]):
            report = merge_files(list(results), errors, output, errors_output,
                                 input_path=input_path, chunk=chunk_size)
    except JobLocked as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_LATER) from None
    except OSError as exc:
        raise io_failure(exc, output, " (the merged files were not written)") from None
    _render(report, output, errors_output, input_path, problems)
    if problems or report.problems:
        raise typer.Exit(EXIT_FAILED)


def _discover(job: Path, problems: list[str]) -> list[ShardFiles]:
    try:
        check_input(job, "job (--job)")
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--job") from None
    splits = find_shard_files(job)
    if not splits:
        raise typer.BadParameter(
            f"no shard outputs beside {job} (looked for {stem_of(job)}.shard-K-of-N."
            "results.jsonl); give the files instead", param_hint="--job")
    if len(splits) > 1:
        raise typer.BadParameter(
            f"{job} was split more than one way (into {', '.join(map(str, sorted(splits)))} "
            "workers): give the files of one split", param_hint="--job")
    ((n, files),) = splits.items()
    have = {f.shard.k for f in files}
    missing = [str(k) for k in range(1, n + 1) if k not in have]
    if missing:
        problems.append(f"shard(s) {', '.join(missing)} of {n} have no results file beside "
                        f"{job}: the merged files lack their lines")
    return files


def _errors_beside(output: Path) -> Path:
    name = output.name
    if ".results." in name:
        head, _, tail = name.rpartition(".results.")
        return output.with_name(f"{head}.errors.{tail}")
    stem = name[:-6] if name.endswith(".jsonl") else output.stem
    return output.with_name(f"{stem}.errors.jsonl")


def _check_paths(results: list[Path], errors: list[Path], input_path: Path | None,
                 output: Path, errors_output: Path) -> None:
    reads: list[tuple[str, Path]] = []
    seen: dict[object, Path] = {}
    for role, paths in (("RESULTS", results), ("--errors", errors)):
        for path in paths:
            try:
                check_input(path, f"{role} file")
            except ConfigError as exc:
                raise typer.BadParameter(str(exc), param_hint=role) from None
            other = seen.setdefault(identity(path), path)
            if other is not path:
                raise typer.BadParameter(
                    f"{path} is given twice ({other}): its records would all look repeated",
                    param_hint=role)
            reads.append((f"{role} {path}", path))
    if input_path is not None:
        try:
            check_input(input_path, "job (--input)")
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="--input") from None
        reads.append(("--input", input_path))
    writes: list[tuple[str, Path]] = []
    for role, path in (("--output", output), ("--errors-output", errors_output)):
        writes.append((role, path))
        writes.append((f"{role}'s temporary file", path.with_name(path.name + ".partial")))
    try:
        for role, path in writes:
            check_output(path, role, "give a file")
        check_distinct(reads, writes)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--output") from None


@contextlib.contextmanager
def _locked(paths: list[Path]) -> Iterator[None]:
    """Hold the lock of every input a run writes (a running shard is refused: its files
    are not finished). A lock that cannot be created (a read-only folder, where no run
    can write either) is skipped."""
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(lock_path(p) for p in paths):
            lock = JobLock([path])
            try:
                lock.acquire()
            except OutputError:
                continue
            stack.callback(lock.release)
        yield


def _render(report: MergeReport, output: Path, errors_output: Path, input_path: Path | None,
            problems: list[str]) -> None:
    def say(text: str) -> None:
        typer.echo(text, err=True)

    order = f", in the order of {input_path}" if input_path is not None else ""
    say(f"merged {report.results_written:,} results into {output} and "
        f"{report.errors_written:,} error records into {errors_output}{order}")
    if report.missing is not None:
        say(f"  {report.missing:,} input lines have no result"
            + (f"; {report.unmatched:,} results are for ids not in the input (put last)"
               if report.unmatched else ""))
    if report.superseded:
        say(f"  {report.superseded:,} error records left out: their id has a result (the "
            f"result wins), e.g. {', '.join(report.superseded_ids[:5])}")
    if report.duplicates:
        say(f"problem: {report.duplicates:,} results repeat an id answered already (only the "
            "first of each was kept): the shards overlap. Repeated ids"
            + (f" (the first {len(report.duplicate_ids)})"
               if report.duplicates > len(report.duplicate_ids) else "") + ":")
        for line in report.duplicate_ids:
            say(f"  {line}")
    if report.failed_twice:
        say(f"problem: {report.failed_twice:,} ids have error records in more than one errors "
            f"file (the shards overlap): {', '.join(report.failed_twice_ids)}")
    if report.broken_count:
        say(f"problem: {report.broken_count:,} lines are not whole JSON records and were not "
            "merged:")
        for line in report.broken:
            say(f"  {line}")
    for problem in problems:
        say(f"problem: {problem}")
