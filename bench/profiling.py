"""Profile a client run: py-spy (sampling, attached as the parent), else pyinstrument.

Both give a list of ``(function, own_samples_share)``: the share of samples in which
that function was the innermost Python frame, i.e. where the CPU time itself went.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from _harness import VENV_BIN


def _short(path: str) -> str:
    for marker in ("site-packages/", "/processor/", "lib/python3"):
        i = path.find(marker)
        if i >= 0:
            return path[i + (len(marker) if marker == "site-packages/" else 1):]
    return path


@dataclass
class Profile:
    """Samples (or milliseconds) by innermost function and line, by area, and inclusive
    counts for the project's own functions."""

    total: int = 0
    by_func: Counter[str] = field(default_factory=Counter)
    by_line: Counter[str] = field(default_factory=Counter)
    by_area: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)


def _area(frames: list[str]) -> str:
    """Where a sample's time went, by the innermost frame (imports win: start-up)."""
    if any("_find_and_load" in f for f in frames):
        return "start-up imports"
    if any("tiktoken" in f for f in frames):
        return "tiktoken (encoding load, counting)"
    leaf = frames[-1]
    if "processor/" in leaf:
        return "processor (own code)"
    if any(m in leaf for m in ("aiohttp/", "yarl/", "multidict/", "propcache/")):
        return "aiohttp / yarl / multidict"
    if any(m in leaf for m in ("asyncio/", "selectors.py", "socket.py")):
        return "asyncio event loop"
    if any(m in leaf for m in ("typer/", "click/", "rich/")):
        return "typer / click / rich"
    return "other (stdlib, json, ...)"


def parse_pyspy_raw(path: Path) -> Profile:
    """Read py-spy's ``--format raw`` output (collapsed stacks).

    Each line is ``frame;frame;...;innermost COUNT`` with frames ``func (file:line)``.
    """
    prof = Profile()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        prof.total += n
        frames = stack.split(";")
        func, _, where = frames[-1].partition(" (")
        file, _, lineno = where.rstrip(")").rpartition(":")
        prof.by_func[f"{func} ({_short(file)})"] += n
        prof.by_line[f"{func} ({_short(file)}:{lineno})"] += n
        prof.by_area[_area(frames)] += n
        own = set()
        for frame in frames:
            f, _, w = frame.partition(" (")
            # cli.py and module bodies wrap everything: they would top the list.
            if "processor/" in w and "processor/cli/" not in w and f != "<module>":
                own.add(f"{f} ({_short(w.rstrip(')').rpartition(':')[0])})")
        for name in own:
            prof.inclusive[name] += n
    return prof


def pyspy(cmd: Sequence[str], out: Path, log: Path, env: dict[str, str],
          rate: int = 200) -> bool:
    """Run ``cmd`` under ``py-spy record``; False if py-spy is missing or cannot sample."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        return False
    args = [str(spy), "record", "--format", "raw", "-o", str(out), "--rate", str(rate),
            "--nonblocking", "--", *cmd]
    with open(log, "wb") as f:
        proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=1800,
                              check=False)
    return proc.returncode == 0 and out.exists() and out.stat().st_size > 0


def pyinstrument(module_args: Sequence[str], out: Path, log: Path, env: dict[str, str]) -> bool:
    """Run ``python -m pyinstrument -r json -m processor.cli.app ...``; False on failure."""
    args = [str(VENV_BIN / "python"), "-m", "pyinstrument", "-r", "json", "-o", str(out),
            "-m", "processor.cli.app", *module_args]
    with open(log, "wb") as f:
        proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=1800,
                              check=False)
    return proc.returncode in (0, 1) and out.exists() and out.stat().st_size > 0


def parse_pyinstrument_json(path: Path) -> Profile:
    """Own time (ms) by function from pyinstrument's JSON tree (time minus children)."""
    data = orjson.loads(path.read_bytes())
    prof = Profile()
    todo: list[tuple[dict[str, Any], list[str]]] = [(data["root_frame"], [])]
    while todo:
        frame, parents = todo.pop()
        children = frame.get("children", [])
        name = f"{frame.get('function')} ({_short(str(frame.get('file_path_short', '')))})"
        frames = [*parents, f"{frame.get('function')} ({frame.get('file_path', '')})"]
        ms = int((frame["time"] - sum(c["time"] for c in children)) * 1000)
        prof.total += ms
        prof.by_func[name] += ms
        prof.by_line[f"{name[:-1]}:{frame.get('line_no')})"] += ms
        prof.by_area[_area(frames)] += ms
        path_ = str(frame.get("file_path", ""))
        if "processor/" in path_ and "processor/cli/" not in path_ and not any(
                name in p for p in parents):
            prof.inclusive[name] += int(frame["time"] * 1000)
        todo.extend((c, frames) for c in children)
    return prof


def top(counter: Counter[str], total: int, k: int = 15) -> list[tuple[str, float]]:
    return [(name, n / total) for name, n in counter.most_common(k)] if total else []


def render(title: str, items: list[tuple[str, float]]) -> str:
    lines = [title]
    lines += [f"  {i:2d}. {share:6.1%}  {name}" for i, (name, share) in enumerate(items, 1)]
    return "\n".join(lines)
