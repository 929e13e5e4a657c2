"""Results in input order, in bounded memory: an external sort-merge join.

Results are written in completion order. To put them in input order without holding
either file in memory, both files are reduced to ``(custom_id, position)`` pairs,
sorted on disk in runs of ``chunk`` pairs, merge-joined on the id, re-sorted on disk by
input line, and finally each result line is read back from its byte offset. Memory is
bounded by ``chunk`` (plus one open file per run); disk use is a few dozen bytes per
line.
"""

from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..jobs import iter_raw_lines

__all__ = ["SortStats", "in_input_order", "sort_results", "sorted_runs"]

T = TypeVar("T")
_NOT_IN_INPUT = 1 << 62  # results whose id is not in the input go last
_MAX_OPEN_RUNS = 256  # beyond this many spill files, merge them in groups first


class SortStats:
    """What a sort did: lines written, input lines without a result, stray results."""

    __slots__ = ("written", "missing", "unmatched", "duplicates")

    def __init__(self) -> None:
        self.written = 0
        self.missing = 0
        self.unmatched = 0
        self.duplicates = 0


def sorted_runs(items: Iterable[T], chunk: int, tmp: Path, prefix: str = "run"
                ) -> list[Iterator[T]]:
    """Sort ``items`` (tuples, in their natural order) in runs of ``chunk`` on disk.

    Returns readers of the runs, for ``heapq.merge``. Everything fitting in one chunk
    stays in memory; beyond ``_MAX_OPEN_RUNS`` runs, groups are merged first so that
    the number of open files stays bounded. Items read back from disk are tuples of
    JSON values (lists stay lists).
    """
    chunk = max(1, chunk)
    runs: list[Path] = []
    names = itertools.count()

    def spill(sorted_items: Iterable[Any]) -> Path:
        path = tmp / f"{prefix}-{next(names)}.run"
        with open(path, "wb") as f:
            f.writelines(orjson.dumps(item) + b"\n" for item in sorted_items)
        return path

    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= chunk:
            buffer.sort()
            runs.append(spill(buffer))
            buffer = []
    buffer.sort()
    if not runs:
        return [iter(buffer)]
    if buffer:
        runs.append(spill(buffer))
    while len(runs) > _MAX_OPEN_RUNS:
        group, runs = runs[:_MAX_OPEN_RUNS], runs[_MAX_OPEN_RUNS:]
        runs.append(spill(heapq.merge(*map(_read_run, group))))
        for path in group:
            path.unlink()
    return [_read_run(path) for path in runs]


def _read_run(path: Path) -> Iterator[Any]:
    with open(path, "rb") as f:
        for line in f:
            yield tuple(orjson.loads(line))


def _input_ids(input_path: Path) -> Iterator[tuple[str, int]]:
    for number, raw in iter_raw_lines(input_path):
        custom_id = f"line-{number}"
        if b'"custom_id"' in raw:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
                custom_id = obj["custom_id"]
        yield custom_id, number


def _result_ids(results: Path) -> Iterator[tuple[str, int]]:
    offset = 0
    with open(results, "rb") as f:
        for raw in f:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
                yield obj["custom_id"], offset
            offset += len(raw)


def in_input_order(
    results: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    *,
    chunk: int = 100_000,
    stats: SortStats | None = None,
    tmpdir: str | None = None,
) -> Iterator[bytes]:
    """Yield the result lines of ``results`` in the order of their requests in ``input_path``.

    Results whose id is not in the input come last, in file order. A second result for
    the same id is left out (counted in ``stats.duplicates``).
    """
    stats = stats or SortStats()
    results_path, source = Path(results), Path(input_path)
    with tempfile.TemporaryDirectory(prefix="batchproc-sort-", dir=tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        by_id_in = heapq.merge(*sorted_runs(_input_ids(source), chunk, tmp, "in"))
        by_id_out = heapq.merge(*sorted_runs(_result_ids(results_path), chunk, tmp, "out"))
        pairs = _join(by_id_in, by_id_out, stats)
        ordered = heapq.merge(*sorted_runs(pairs, chunk, tmp, "pos"))
        with open(results_path, "rb") as f:
            for _, offset in ordered:
                f.seek(offset)
                yield f.readline()
                stats.written += 1


def _join(inputs: Iterator[tuple[str, int]], outputs: Iterator[tuple[str, int]],
          stats: SortStats) -> Iterator[tuple[int, int]]:
    """Merge-join two id-sorted streams into (input line, result offset) pairs."""
    out = next(outputs, None)
    last_id: str | None = None

    def strays(bound: str | None) -> Iterator[tuple[int, int]]:
        """Results sorting before ``bound`` (all, if None): repeats, or not in the input."""
        nonlocal out
        while out is not None and (bound is None or out[0] < bound):
            if out[0] == last_id:
                stats.duplicates += 1
            else:
                stats.unmatched += 1
                yield _NOT_IN_INPUT + stats.unmatched, out[1]
            out = next(outputs, None)

    for custom_id, line in inputs:
        yield from strays(custom_id)
        if out is not None and out[0] == custom_id:
            yield line, out[1]
            last_id = custom_id
            out = next(outputs, None)
        else:
            stats.missing += 1
    yield from strays(None)


def sort_results(
    results: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    chunk: int = 100_000,
) -> SortStats:
    """Write ``results`` in input order to ``output`` (which may not be ``results``)."""
    if Path(output).resolve() == Path(results).resolve():
        raise ValueError("write the sorted results to another file than the results")
    stats = SortStats()
    with open(output, "wb") as out:
        for line in in_input_order(results, input_path, chunk=chunk, stats=stats):
            out.write(line if line.endswith(b"\n") else line + b"\n")
    return stats
