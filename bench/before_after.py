"""Before and after in one sitting: the benchmark suite on two source trees, back to back.

    python bench/before_after.py BEFORE_TREE AFTER_TREE [--labels A B] [--out FILE]
                                 [-- RUN_ARGS ...]

Each tree runs its own ``bench/run.py`` (default arguments ``--quick --repeat 3``) under
its own ``.venv/bin/python`` with ``PYTHONPATH`` set to the tree, so each drives its own
CLI and its own mock server. The rows of both (one JSON line per run, tagged ``tree``)
go to ``--out`` (default ``bench/before-after-run.jsonl``), and a markdown table of the
medians, before → after, to stdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
Row = dict[str, Any]


def run_tree(tree: Path, label: str, args: list[str]) -> list[Row]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [str(tree / ".venv" / "bin" / "python"), str(tree / "bench" / "run.py"), *args]
    print(f"# {label}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, cwd=tree)
    rows = []
    for line in proc.stdout.splitlines():
        if line.startswith(b"{"):
            row = orjson.loads(line)
            row["tree"] = label
            rows.append(row)
    return rows


def _median(rows: list[Row], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def table(rows: list[Row], before: str, after: str) -> str:
    """The medians per scenario, ``before → after``."""
    lines = [f"| scenario | runs | efficiency {before} → {after} | 429s | missing / dup | "
             f"cpu µs/req | req/s | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    for scenario in scenarios:
        a = [r for r in rows if r["scenario"] == scenario and r["tree"] == before]
        b = [r for r in rows if r["scenario"] == scenario and r["tree"] == after]

        def pair(key: str, digits: int = 0, rows_a: list[Row] = a,
                 rows_b: list[Row] = b) -> str:
            return f"{_fmt(_median(rows_a, key), digits)} → {_fmt(_median(rows_b, key), digits)}"

        missing = sum(r.get("n_missing") or 0 for r in a + b)
        dups = sum(r.get("n_duplicates") or 0 for r in a + b)
        lines.append(f"| {scenario} | {len(b)} | {pair('efficiency', 3)} | {pair('n_429')} | "
                     f"{missing} / {dups} | {pair('cpu_us_per_request')} | "
                     f"{pair('requests_per_s')} | {pair('peak_rss_mb', 1)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--labels", nargs=2, default=None, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--out", type=Path, default=BENCH / "before-after-run.jsonl")
    # Everything after ``--`` goes to bench/run.py as it is (a "*" positional after the
    # trees took nothing and left ``-- --quick ...`` unrecognized).
    argv = sys.argv[1:] if argv is None else argv
    ours, run_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) \
        if "--" in argv else (argv, [])
    args = ap.parse_args(ours)
    args.run_args = run_args or ["--quick", "--repeat", "3"]
    labels = args.labels or [args.before.name, args.after.name]
    rows: list[Row] = []
    for tree, label in zip((args.before, args.after), labels, strict=True):
        rows += run_tree(tree.resolve(), label, args.run_args)
    args.out.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    print(table(rows, *labels))


if __name__ == "__main__":
    main()
