"""``batchproc merge``: the shards' results and errors as one pair of files.

Streaming and in bounded memory: each results line is parsed once (a line that is not
whole JSON is reported, never copied: a torn tail from a killed shard shows up here),
its ``custom_id`` goes into a compact :class:`~processor.idset.IdSet` (sized from the
files' line counts, 12-24 bytes per id), and the line is copied out. Then the errors:
an error record whose id has a result (in any shard) is left out (the result wins,
the report counts it); bad-line records (no id) are always kept.

The id set holds 64-bit fingerprints, so a match may (about once in 370,000 merges of
ten million ids) be two different ids. Every match is therefore checked again by
exact id in a second pass over the inputs (only when there was a match): a false one
is put back, and only exact repeats are reported. At most :data:`SUSPECTS` matches
are kept for that check (beyond that, the inputs are plainly broken: the rest are
counted and left out).

With an input job, results are then put in its order by the external sort of
:mod:`processor.tools.ordering` (bounded by ``chunk``), and errors by the line number
each record names. Outputs are written beside themselves and renamed into place once
complete.
"""

from __future__ import annotations

import heapq
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..idset import IdSet
from ..jobs import count_lines
from ..store.records import read_custom_id, read_error
from .ordering import SortStats, in_input_order, sorted_runs

__all__ = ["SUSPECTS", "MergeReport", "merge_files"]

#: id matches kept for the exact second check.
SUSPECTS = 10_000
#: examples kept per kind of problem.
EXAMPLES = 20
_LAST = 1 << 62  # error records without a line number go last


@dataclass(slots=True)
class MergeReport:
    """What a merge read, wrote and found.

    Attributes:
        results_read / errors_read: records read from the inputs.
        results_written / errors_written: records in the merged files.
        duplicates: results left out because their id was answered already (exact).
        duplicate_ids: the first few such ids, as ``id: file, file``.
        superseded: error records left out because their id has a result.
        superseded_ids: the first few of those ids.
        failed_twice: ids with error records in more than one errors file.
        failed_twice_ids: the first few of those ids.
        broken: lines that are not whole JSON records, as ``file:line: why`` (first few).
        broken_count: how many.
        torn: files ending in a partial line (a killed run).
        unordered: with an input: input lines without a result, and results whose id
            is not in the input.
    """

    results_read: int = 0
    errors_read: int = 0
    results_written: int = 0
    errors_written: int = 0
    duplicates: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    superseded: int = 0
    superseded_ids: list[str] = field(default_factory=list)
    failed_twice: int = 0
    failed_twice_ids: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    broken_count: int = 0
    torn: list[Path] = field(default_factory=list)
    missing: int | None = None
    unmatched: int = 0

    @property
    def problems(self) -> bool:
        """Whether something needs a look: a repeated answer, a broken line, an id that
        failed in two files."""
        return bool(self.duplicates or self.broken_count or self.failed_twice)

    def _broken(self, path: Path, line: int, why: str) -> None:
        self.broken_count += 1
        if len(self.broken) < EXAMPLES:
            self.broken.append(f"{path}:{line}: {why}")


@dataclass(slots=True)
class _Suspect:
    kind: str  # "result" (dropped as a repeat), "error" (dropped: has a result), "twice"
    custom_id: str
    file: int
    offset: int


def _records(path: Path, report: MergeReport) -> Iterator[tuple[int, int, bytes, Any]]:
    """``(line number, offset, line with its newline, parsed object)`` of each whole JSON
    line; others are reported (a partial last line as torn)."""
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                if not raw.endswith(b"\n"):
                    report.torn.append(path)
                    report._broken(path, number, "a partial last line (a run killed "
                                   "mid-write: rerun that shard to repair and finish it)")
                else:
                    report._broken(path, number, "not JSON")
                continue
            yield number, start, raw if raw.endswith(b"\n") else raw + b"\n", obj


def _copy_results(paths: Sequence[Path], out: Any, seen: IdSet, suspects: list[_Suspect],
                  report: MergeReport) -> None:
    for index, path in enumerate(paths):
        for number, offset, raw, obj in _records(path, report):
            cid = obj.get("custom_id") if isinstance(obj, dict) else None
            if not isinstance(cid, str):
                report._broken(path, number, "not a result record (no custom_id)")
                continue
            report.results_read += 1
            if not seen.add(cid, index + 1):
                report.duplicates += 1
                if len(suspects) < SUSPECTS:
                    suspects.append(_Suspect("result", cid, index, offset))
                continue
            out.write(raw)
            report.results_written += 1


def _copy_errors(paths: Sequence[Path], out: Any, answered: IdSet, failed: IdSet,
                 suspects: list[_Suspect], report: MergeReport) -> None:
    for index, path in enumerate(paths):
        for number, offset, raw, obj in _records(path, report):
            if not isinstance(obj, dict):
                report._broken(path, number, "not an error record (not an object)")
                continue
            report.errors_read += 1
            cid, error = obj.get("custom_id"), obj.get("error")
            bad_line = isinstance(error, dict) and error.get("code") == "invalid_line"
            if isinstance(cid, str) and not bad_line:
                if cid in answered:
                    report.superseded += 1
                    if len(suspects) < SUSPECTS:
                        suspects.append(_Suspect("error", cid, index, offset))
                    continue
                where = failed.get(cid)
                if where is None:
                    failed.add(cid, index + 1)
                elif where != index + 1 and len(suspects) < SUSPECTS:
                    # A later record in the same file is a request that failed again.
                    suspects.append(_Suspect("twice", cid, index, offset))
            out.write(raw)
            report.errors_written += 1


def _confirm(results: Sequence[Path], errors: Sequence[Path], suspects: list[_Suspect],
             out: Any, err_out: Any, report: MergeReport) -> None:
    """Check every fingerprint match by exact id; put back what was wrongly left out."""
    ids = {s.custom_id for s in suspects}
    in_results: dict[str, list[int]] = {cid: [] for cid in ids}
    in_errors: dict[str, set[int]] = {cid: set() for cid in ids}
    for index, path in enumerate(results):
        with open(path, "rb") as f:
            for raw in f:
                cid = read_custom_id(raw)[0]
                if cid in in_results:
                    in_results[cid].append(index)
    for index, path in enumerate(errors):
        with open(path, "rb") as f:
            for raw in f:
                read = read_error(raw)
                if read is not None and isinstance(read[0], str) and read[0] in in_errors:
                    in_errors[read[0]].add(index)
    names = [p.name for p in results]
    twice: set[str] = set()
    listed: set[str] = set()
    # Whether an id has a result in the output: written in the first pass unless every
    # occurrence of it was held back as a match (then the first held back goes in).
    held = Counter(s.custom_id for s in suspects if s.kind == "result")
    kept = {cid: len(in_results[cid]) > held[cid] for cid in ids}
    for s in suspects:
        found = in_results[s.custom_id]
        if s.kind == "result":
            if kept[s.custom_id]:
                if len(report.duplicate_ids) < EXAMPLES and s.custom_id not in listed:
                    listed.add(s.custom_id)
                    files = ", ".join(dict.fromkeys(names[i] for i in found))
                    report.duplicate_ids.append(f"{s.custom_id}: in {files}")
                continue
            kept[s.custom_id] = True
            report.duplicates -= 1  # two ids with one fingerprint: not a repeat
            report.results_written += 1
            out.write(_line_at(results[s.file], s.offset))
        elif s.kind == "error":
            if found:
                if len(report.superseded_ids) < EXAMPLES:
                    report.superseded_ids.append(s.custom_id)
                continue
            report.superseded -= 1
            report.errors_written += 1
            err_out.write(_line_at(errors[s.file], s.offset))
        elif len(in_errors[s.custom_id]) >= 2 and s.custom_id not in twice:
            twice.add(s.custom_id)
            report.failed_twice += 1
            if len(report.failed_twice_ids) < EXAMPLES:
                report.failed_twice_ids.append(s.custom_id)


def _line_at(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.readline()
    return raw if raw.endswith(b"\n") else raw + b"\n"


def _error_positions(path: Path) -> Iterator[tuple[int, int]]:
    """``(input line, offset)`` of each record of a merged errors file."""
    offset = 0
    unnumbered = 0
    with open(path, "rb") as f:
        for raw in f:
            read = read_error(raw)
            line = read[1].get("line") if read is not None else None
            if type(line) is not int:
                unnumbered += 1
                line = _LAST + unnumbered
            yield line, offset
            offset += len(raw)


def _write_sorted(lines: Iterator[bytes], target: Path) -> int:
    n = 0
    with open(target, "wb") as f:
        for raw in lines:
            f.write(raw if raw.endswith(b"\n") else raw + b"\n")
            n += 1
    return n


def _errors_in_order(path: Path, chunk: int, tmp: Path) -> Iterator[bytes]:
    ordered = heapq.merge(*sorted_runs(_error_positions(path), chunk, tmp, "err"))
    with open(path, "rb") as f:
        for _, offset in ordered:
            f.seek(offset)
            yield f.readline()


def merge_files(
    results: Sequence[Path],
    errors: Sequence[Path],
    output: Path,
    errors_output: Path,
    *,
    input_path: Path | None = None,
    chunk: int = 100_000,
) -> MergeReport:
    """Merge shard outputs into ``output`` and ``errors_output``.

    The caller has checked the paths (no output is an input) and holds the inputs'
    locks. Each output is written to ``<name>.partial`` and renamed into place when
    complete; on an exception, the partial files are removed and earlier outputs are
    left as they were.

    Raises:
        OSError: an input cannot be read or an output written.
    """
    report = MergeReport()
    partials = [p.with_name(p.name + ".partial") for p in (output, errors_output)]
    unsorted = [p.with_name(f"{p.name}.unsorted-{os.getpid()}") for p in (output, errors_output)]
    first = unsorted if input_path is not None else partials
    try:
        expected = sum(count_lines(p) for p in results)
        answered = IdSet(capacity=expected, values=True)
        failed = IdSet(capacity=sum(count_lines(p) for p in errors), values=True)
        suspects: list[_Suspect] = []
        with open(first[0], "wb") as out, open(first[1], "wb") as err_out:
            _copy_results(results, out, answered, suspects, report)
            _copy_errors(errors, err_out, answered, failed, suspects, report)
            if suspects:
                _confirm(results, errors, suspects, out, err_out, report)
        del answered, failed
        if input_path is not None:
            stats = SortStats()
            tmp = unsorted[0].with_name(f"{output.name}.sort-{os.getpid()}")
            tmp.mkdir()
            try:
                _write_sorted(in_input_order(unsorted[0], input_path, chunk=chunk, stats=stats,
                                             tmpdir=str(tmp)), partials[0])
                _write_sorted(_errors_in_order(unsorted[1], chunk, tmp), partials[1])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            report.missing, report.unmatched = stats.missing, stats.unmatched
        for partial, final in zip(partials, (output, errors_output), strict=True):
            os.replace(partial, final)
    finally:
        for path in (*partials, *unsorted):
            path.unlink(missing_ok=True)
    return report
