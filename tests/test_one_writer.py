"""One writer per fact of a run's :class:`~processor.stats.Stats`.

The engine publishes the stats: its counters, why the run stopped and when it ended are
written only by the engine's modules (through ``Stats``' own methods). What the input
holds against earlier runs (``stats.input``, an :class:`~processor.stats.InputTally`:
skipped, changed, still bad, total...) is written only by the resume/edit filter,
``processor/store/inputfilter.py``; ``Stats`` shows those facts read-only.

Every module under processor/ is parsed with :mod:`ast` (nothing imported), and every
assignment (``=``, ``+=``, tuple targets, subscripts) and in-place mutation
(``.append``...) is checked against those owners; so is every call of a ``Stats`` method
that changes it.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from processor.stats import INPUT_FACTS, InputTally, Stats

ROOT = Path(__file__).resolve().parent.parent / "processor"

#: the one writer of the input's facts.
INPUT_OWNER = "store/inputfilter.py"
#: the engine: the writers of every other fact of Stats (stats.py holds its methods).
ENGINE = {"stats.py", "run/engine.py", "run/admission.py", "run/attempts.py",
          "run/outcomes.py", "run/keys.py", "run/outage.py", "run/singleflight.py",
          # The engine of a --via batch run (it never runs beside the online engine on
          # the same stats).
          "batchapi/run.py", "batchapi/driver.py", "batchapi/collect.py"}
#: Stats methods that change it; ``note`` (an append-only log of messages for the
#: summary) may be called by anyone who runs the engine.
MUTATORS = {name for name, fn in vars(Stats).items()
            if inspect.isfunction(fn) and not name.startswith("_")} - {"as_dict"}
ANYONE_MAY = {"note"}
STATS_FIELDS = set(Stats.__dataclass_fields__) - {"input"}
#: writes to attributes of the same names on other objects: (module, attribute) -> what.
OTHER_OBJECTS = {
    ("run/admission.py", "changed"): "Waits.changed, an asyncio.Event",
    ("run/engine.py", "changed"): "Waits.changed, an asyncio.Event",
    ("store/edits.py", "superseded"): "ResumeState.superseded, the moved ids",
    ("tools/imagejobs.py", "skipped"): "the jobs-from-images command's own counters",
    ("tools/merge.py", "superseded"): "MergeReport's own count of error records left out",
    ("testing/app.py", "stats"): "the mock server's own counters (MockStats)",
    ("tools/report/aggregate.py", "total"): "a report timeline bucket's lines in all",
    ("tools/report/aggregate.py", "skipped"): "a report's row for one run of the log",
}
_IN_PLACE = {"append", "extend", "insert", "pop", "remove", "clear", "add", "discard",
             "update", "setdefault", "sort", "reverse"}


def _written(node: ast.AST) -> list[ast.Attribute]:
    """The attributes an assignment or an in-place call writes (``a.b[c] = x``: ``a.b``)."""
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr in _IN_PLACE):
        targets = [node.func.value]
    out: list[ast.Attribute] = []
    while targets:
        t = targets.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            targets += t.elts
        elif isinstance(t, ast.Starred):
            targets.append(t.value)
        else:
            while isinstance(t, ast.Subscript):
                t = t.value
            if isinstance(t, ast.Attribute):
                out.append(t)
    return out


def _is_stats(expr: ast.expr) -> bool:
    """``stats``, ``self.stats``, ``x.stats``: the run's stats by the only name it goes by."""
    return (isinstance(expr, ast.Name) and expr.id == "stats") or (
        isinstance(expr, ast.Attribute) and expr.attr == "stats")


def violations(source: str, module: str) -> list[str]:
    """Second writers in ``source`` (``module``: its path under processor/)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        for attr in _written(node):
            where = f"{module}:{getattr(node, 'lineno', '?')}: {ast.unparse(attr)}"
            if attr.attr in INPUT_FACTS and module != INPUT_OWNER and \
                    (module, attr.attr) not in OTHER_OBJECTS:
                found.append(f"{where}: the input's facts are {INPUT_OWNER}'s")
            if attr.attr in STATS_FIELDS and _is_stats(attr.value) and module not in ENGINE \
                    and (module, "stats") not in OTHER_OBJECTS:
                found.append(f"{where}: Stats fields are the engine's")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in MUTATORS - ANYONE_MAY and _is_stats(node.func.value)
                and module not in ENGINE and (module, "stats") not in OTHER_OBJECTS):
            found.append(f"{module}:{node.lineno}: {ast.unparse(node.func)}(): the engine's")
        if isinstance(node, ast.Name) and node.id == "InputTally" and \
                module not in (INPUT_OWNER, "stats.py"):
            found.append(f"{module}:{node.lineno}: InputTally is made by {INPUT_OWNER} only")
    return found


def test_every_fact_of_a_run_has_one_writer() -> None:
    found: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        found += violations(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    assert found == []


@pytest.mark.parametrize(("module", "source"), [
    ("run/runner.py", "stats.skipped += 1"),
    ("run/runner.py", "t = stats.input\nt.skipped += 1"),
    ("run/engine.py", "self.stats.input.still_bad = 3"),
    ("store/edits.py", "stats.input.changed_examples.append(cid)"),
    ("run/runner.py", "stats.stopped, stats.stop_reason = reason, message"),
    ("run/runner.py", "stats.finished = now"),
    ("run/runner.py", "stats.failures['x'] += 1"),
    ("run/runner.py", "stats.stop(reason, 'why')"),
    ("cli/app.py", "stats.finish(0.0)"),
    ("run/pipeline.py", "self.stats.output_error = 'disk full'"),
    ("run/runner.py", "tally = InputTally()"),
], ids=["input-fact", "aliased-tally", "engine-writes-input", "input-list", "stop-tuple",
        "finished", "subscript", "stop-call", "finish-call", "output-error", "second-tally"])
def test_a_second_writer_is_found(module: str, source: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize(("module", "source"), [
    ("store/inputfilter.py", "tally.skipped += 1\ntally.changed_examples.append(c)"),
    ("run/engine.py", "self.stats.output_error = failure"),
    ("run/runner.py", "stats.note('results: x')\nn = stats.skipped + stats.ok"),
    ("run/attempts.py", "job.attempts += 1"),
])
def test_the_owners_and_readers_pass(module: str, source: str) -> None:
    assert violations(source, module) == []


@pytest.mark.parametrize("fact", INPUT_FACTS)
def test_stats_shows_the_input_facts_read_only(fact: str) -> None:
    tally = InputTally()
    stats = Stats(input=tally)
    with pytest.raises(AttributeError):
        setattr(stats, fact, 1)
    value = [7] if isinstance(getattr(tally, fact), list) else 7
    setattr(tally, fact, value)
    assert getattr(stats, fact) == value and stats.as_dict()[fact] == value
