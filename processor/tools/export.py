"""Turn a run's results and errors files into one table: a row per request, CSV or JSONL.

Without an input file, rows come in file order: results, then errors. With one, they
come in the input's order, each line matched to its row, and lines that have neither
a result nor an error get a ``missing`` row. That is done without holding the results
in memory: the input is read once to map each explicit ``custom_id`` to its line
(lines without one are ``line-<N>`` and cost nothing), the rows are sorted by that line
in chunks of ``chunk_size`` spilled to temporary files, and the runs are merged
(``heapq.merge``) while the input is read a second time. Memory is the id map, O(input
lines with a ``custom_id``, ~100 bytes each), plus one chunk of rows.
"""

from __future__ import annotations

import base64
import binascii
import csv
import heapq
import itertools
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..jobs import iter_raw_lines
from .ordering import sorted_runs

__all__ = ["CHUNK_SIZE", "COLUMNS", "ExportStats", "error_row", "iter_rows", "result_row",
           "write_csv", "write_jsonl"]

COLUMNS = ("custom_id", "model", "status", "answer", "finish_reason", "prompt_tokens",
           "completion_tokens", "total_tokens", "error")
CHUNK_SIZE = 50_000
_UNKNOWN = sys.maxsize  # sort key of rows whose id is not in the input: after all lines
_LINE_ID = re.compile(r"line-([1-9][0-9]*)")

Row = list[Any]
_Item = tuple[int, int, Row]  # (input line, sequence in the files, row)


@dataclass(slots=True)
class ExportStats:
    """Rows written by status, and lines of the results/errors files that were not JSON."""

    by_status: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0

    @property
    def rows(self) -> int:
        return sum(self.by_status.values())


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _usage(body: Mapping[str, Any]) -> list[int | None]:
    """prompt, completion and total tokens; Responses' input/output names included."""
    usage = _map(body.get("usage"))
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    total = _int(usage.get("total_tokens"))
    if total is None and prompt is not None:
        total = prompt + (completion or 0)
    return [prompt, completion, total]


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with content parts
        return "".join(_str(_map(part).get("text")) for part in content)
    if isinstance(content, str):
        return content
    if isinstance(message.get("refusal"), str):
        return str(message["refusal"])
    calls = message.get("tool_calls")
    return orjson.dumps(calls).decode() if calls else ""


def _dim(vector: Any) -> str:
    if isinstance(vector, list):
        return str(len(vector))
    if isinstance(vector, str):  # encoding_format=base64: float32s
        try:
            return str(len(base64.b64decode(vector)) // 4)
        except binascii.Error:
            pass
    return "?"


def _answer(body: Mapping[str, Any]) -> tuple[str, str]:
    """(answer, finish_reason) of a chat, completions, responses or embeddings body."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices:
        first = _map(choices[0])
        message = first.get("message")
        text = _message_text(message) if isinstance(message, Mapping) else _str(first.get("text"))
        return text, _str(first.get("finish_reason"))
    output = body.get("output")
    if isinstance(output, list):
        parts = (part for item in output for part in _list(_map(item).get("content")))
        text = "".join(_str(p.get("text")) for p in map(_map, parts)
                       if p.get("type") == "output_text")
        reason = _map(body.get("incomplete_details")).get("reason")
        return text, _str(reason) or _str(body.get("status"))
    data = body.get("data")
    if isinstance(data, list) and data:
        label = f"embedding[{_dim(_map(data[0]).get('embedding'))}]"
        return (label if len(data) == 1 else f"{len(data)} x {label}"), ""
    return "", ""


def result_row(record: Mapping[str, Any]) -> Row:
    """The row of one results-file record; a non-2xx answer's status is its code."""
    response = _map(record.get("response"))
    body = _map(response.get("body"))
    status = _int(response.get("status_code"))
    ok = (status is None or 200 <= status < 300) and not record.get("error")
    error = ""
    if not ok:
        error = _str(_map(body.get("error")).get("message")) or _str(
            _map(record.get("error")).get("message"))
    answer, finish = _answer(body) if ok else ("", "")
    label = "ok" if ok else str(status) if status is not None else "failed"
    return [_str(record.get("custom_id")), _str(body.get("model")), label, answer, finish,
            *_usage(body), error]


def error_row(record: Mapping[str, Any]) -> Row:
    """The row of one errors-file record: status ``failed``, error ``<code>: <message>``."""
    error = _map(record.get("error"))
    body = _map(_map(record.get("response")).get("body"))
    custom_id = _str(record.get("custom_id"))
    line = _int(error.get("line"))
    if not custom_id and line is not None:
        custom_id = f"line-{line}"
    code, message = _str(error.get("code")), _str(error.get("message"))
    text = f"{code}: {message}" if code and message else code or message
    return [custom_id, _str(body.get("model")), "failed", "", "", *_usage(body), text]


def _records(
    path: Path, make_row: Callable[[Mapping[str, Any]], Row], stats: ExportStats
) -> Iterator[tuple[Row, int | None]]:
    """(row, line the record names, if any) per record of ``path``, lazily."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                stats.unreadable += 1
                continue
            yield make_row(record), _int(_map(record.get("error")).get("line"))


def iter_rows(
    results: str | os.PathLike[str],
    errors: str | os.PathLike[str] | None = None,
    *,
    input_path: str | os.PathLike[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
    stats: ExportStats | None = None,
) -> Iterator[Row]:
    """The table's rows (values in :data:`COLUMNS` order), lazily.

    Args:
        results: the results JSONL.
        errors: the errors JSONL, if any.
        input_path: the job file: rows then follow its line order, one per request (an
            ``ok`` row wins over a failed one for the same line), ``missing`` for lines
            that have neither. Rows of ids not in the input come last, in file order.
        chunk_size: rows sorted in memory at once (input order only).
        stats: filled in as rows are produced.
    """
    stats = stats if stats is not None else ExportStats()
    sources = [(Path(results), result_row)]
    if errors is not None:
        sources.append((Path(errors), error_row))
    records = itertools.chain.from_iterable(_records(p, f, stats) for p, f in sources)
    rows = (row for row, _ in records) if input_path is None else \
        _in_input_order(records, Path(input_path), chunk_size)
    for row in rows:
        stats.by_status[row[2]] += 1
        yield row


def _input_ids(raw: bytes, number: int) -> tuple[str, str]:
    """(custom_id, model) of an input line, the way the job reader names it."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    obj = _map(obj)
    custom_id = obj.get("custom_id")
    body = _map(obj.get("body")) if "body" in obj else obj
    name = custom_id if isinstance(custom_id, str) and custom_id else f"line-{number}"
    return name, _str(body.get("model"))


def _in_input_order(
    records: Iterable[tuple[Row, int | None]], input_path: Path, chunk_size: int
) -> Iterator[Row]:
    explicit: dict[str, int] = {}
    for number, raw in iter_raw_lines(input_path):
        if b'"custom_id"' in raw:
            custom_id, _ = _input_ids(raw, number)
            if not _LINE_ID.fullmatch(custom_id):
                explicit.setdefault(custom_id, number)

    def key(row: Row, hint: int | None) -> int:
        if hint is not None:  # an error record names its input line
            return hint
        if row[0] in explicit:
            return explicit[row[0]]
        match = _LINE_ID.fullmatch(row[0])
        return int(match.group(1)) if match else _UNKNOWN

    items = ((key(row, hint), seq, row) for seq, (row, hint) in enumerate(records))
    with tempfile.TemporaryDirectory(prefix="batchproc-export-") as tmp:
        # (line, seq) is unique: rows themselves are never compared.
        merged = heapq.merge(*sorted_runs(items, chunk_size, Path(tmp)))
        yield from _join(merged, input_path)


def _join(merged: Iterator[_Item], input_path: Path) -> Iterator[Row]:
    """Walk the input and the sorted rows together, one row per input line."""
    pending = next(merged, None)
    for number, raw in iter_raw_lines(input_path):
        group: list[_Item] = []
        while pending is not None and pending[0] <= number:
            group.append(pending)
            pending = next(merged, None)
        custom_id, model = _input_ids(raw, number)
        mine = [item for item in group if item[2][0] == custom_id]
        if mine:
            # ok beats a non-2xx answer beats an error; among equals the later record
            best = min(mine, key=lambda item: (_rank(item[2][2]), -item[1]))[2]
            best[1] = best[1] or model
            yield best
        elif raw.strip():
            yield [custom_id, model, "missing", "", "", None, None, None, ""]
        yield from (item[2] for item in group if item[2][0] != custom_id)
    while pending is not None:
        yield pending[2]
        pending = next(merged, None)


def _rank(status: str) -> int:
    return 0 if status == "ok" else 2 if status == "failed" else 1


def write_csv(rows: Iterable[Row], out: IO[bytes]) -> None:
    """Write a header and the rows as UTF-8 CSV (RFC 4180 quoting, CRLF line ends)."""

    class _Utf8:
        def write(self, text: str) -> int:
            return out.write(text.encode("utf-8"))

    writer = csv.writer(_Utf8())
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])


def write_jsonl(rows: Iterable[Row], out: IO[bytes]) -> None:
    """Write one JSON object per row, keyed by :data:`COLUMNS`."""
    for row in rows:
        out.write(orjson.dumps(dict(zip(COLUMNS, row, strict=True))) + b"\n")
