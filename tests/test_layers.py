"""The import layers of processor/: each package imports only its own floor or lower.

Every module under processor/ is parsed with :mod:`ast` (nothing is imported), each of
its imports resolved (relative ones too, and those inside functions or under
``TYPE_CHECKING``) and checked against :data:`FLOORS`. ``processor/__init__.py`` is the
public facade: it may import everything, and nothing inside may import it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "processor"

#: floor of each top-level module or package of processor/.
FLOORS = {
    "_types": 0, "errors": 0, "stats": 0, "idset": 0, "durations": 0, "shown": 0,
    "jobs": 1, "shards": 1,
    "cost": 2,
    "limits": 3,
    "client": 4,
    "store": 5,
    "run": 6,
    "batchapi": 6,
    "tools": 7,
    "cli": 8,
}
#: the mock server is an independent opponent: it imports only these of processor, and
#: only the CLI (its ``mock-server`` command) imports it.
TESTING_MAY_IMPORT = {"errors", "_types"}
TESTING_IMPORTED_BY = {"cli"}
#: pairs a floor above allows that must still not import each other.
FORBIDDEN = {("tools", "run"), ("run", "batchapi"), ("tools", "batchapi")}

#: known violations, (importer, imported module), that other branches are fixing.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path = ROOT) -> str:
    """``processor/limits/counter.py`` -> ``processor.limits.counter``; a package's __init__
    is the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """``(line, module imported)`` for every import in ``source`` (anywhere in the tree).

    ``from . import x`` names the submodule ``x`` when ``known`` holds it, else the package.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found += [(node.lineno, sub) for sub in subs] or [(node.lineno, target)]
    return found


def area(module: str) -> str:
    """The floor table's key for a module of processor ("processor" for the facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (both in processor), or None."""
    src, dst = area(importer), area(imported)
    if src == "processor":
        return None  # the public facade re-exports everything
    if dst == "processor":
        return "imports the package facade (processor/__init__.py), which imports everything"
    for name in (src, dst):
        if name not in FLOORS and name != "testing":
            return f"{name} has no floor in tests/test_layers.py's FLOORS"
    if src == dst:
        return None
    if src == "testing":
        return None if dst in TESTING_MAY_IMPORT else "testing/ may import only errors, _types"
    if dst == "testing":
        return None if src in TESTING_IMPORTED_BY else "only cli/ may import testing/"
    if (src, dst) in FORBIDDEN:
        return f"{src}/ must not import {dst}/"
    if FLOORS[dst] > FLOORS[src]:
        return f"floor {FLOORS[src]} ({src}) imports floor {FLOORS[dst]} ({dst})"
    return None


def violations(root: Path = ROOT) -> list[str]:
    files = sorted(root.rglob("*.py"))
    known = {module_name(p, root) for p in files}
    out = []
    for path in files:
        module = module_name(path, root)
        for line, imported in imports(path.read_text(), module, path.name == "__init__.py",
                                      known):
            if imported.split(".")[0] != root.name:
                continue  # the standard library and third parties
            why = violation(module, imported)
            if why and (module, imported) not in ALLOWED:
                out.append(f"{path.relative_to(root.parent)}:{line}: {module} -> {imported}: {why}")
    return out


def test_every_module_imports_only_its_floor_or_lower() -> None:
    found = violations()
    assert not found, "import-layer violations:\n" + "\n".join(found)


def test_allow_list_holds_only_real_violations() -> None:
    # An allowed pair that no longer occurs (or is no violation) must leave the list.
    files = sorted(ROOT.rglob("*.py"))
    known = {module_name(p) for p in files}
    occurring = {(module_name(p), imported) for p in files
                 for _, imported in imports(p.read_text(), module_name(p),
                                            p.name == "__init__.py", known)}
    stale = [pair for pair in ALLOWED if pair not in occurring or not violation(*pair)]
    assert not stale, f"no longer violations, drop from ALLOWED: {stale}"


# -- the checker itself, on a made-up tree -------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "processor"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("processor.limits.counter", "from ..stats import x", "processor.stats"),
        ("processor.limits.counter", "from . import server", "processor.limits.server"),
        ("processor.limits.counter", "from .server import Mirror", "processor.limits.server"),
        ("processor.limits", "from .counter import Counter", "processor.limits.counter"),
        ("processor.limits", "from . import nothing_such", "processor.limits"),
        ("processor.run.engine", "from .. import Limiter", "processor"),
        ("processor.jobs", "import processor.run.engine as e", "processor.run.engine"),
        ("processor.jobs", "def f():\n    from .run import engine\n", "processor.run.engine"),
        ("processor.jobs", "if TYPE_CHECKING:\n    from .cli.app import x\n", "processor.cli.app"),
        ("processor.jobs", "import os, json", "os"),
    ],
    ids=["up-one", "sibling-module", "sibling-name", "package-init", "package-name", "facade",
         "absolute", "inside-function", "type-checking", "stdlib"],
)
def test_imports_resolve(module: str, source: str, expected: str) -> None:
    known = {"processor.limits.server", "processor.limits.counter", "processor.run.engine",
             "processor.cli.app"}
    found = imports(source, module, module == "processor.limits", known)
    line = source.count("\n", 0, source.find("import")) + 1
    assert found[0] == (line, expected)


@pytest.mark.parametrize(
    ("importer", "imported", "expected"),
    [
        ("processor.jobs", "processor.errors", None),
        ("processor.limits.limiter", "processor.limits.counter", None),
        ("processor.run.engine", "processor.limits", None),
        ("processor.cli.app", "processor.testing", None),
        ("processor.testing.app", "processor._types", None),
        ("processor", "processor.cli.app", None),
        ("processor.limits.limiter", "processor.client.http", "floor 3 (limits) imports floor 4"),
        ("processor.jobs", "processor.store.lock", "floor 1 (jobs) imports floor 5"),
        ("processor.tools.export", "processor.run.engine", "tools/ must not import run/"),
        ("processor.testing.app", "processor.stats", "testing/ may import only"),
        ("processor.run.engine", "processor.testing", "only cli/ may import testing/"),
        ("processor.run.engine", "processor", "package facade"),
        ("processor.newthing", "processor.errors", "newthing has no floor"),
    ],
    ids=["down", "same-package", "lower-package", "cli-testing", "testing-types", "facade-out",
         "up", "jobs-store", "tools-run", "testing-stats", "run-testing", "facade-in", "unknown"],
)
def test_violation_rules(importer: str, imported: str, expected: str | None) -> None:
    why = violation(importer, imported)
    assert (why is None) if expected is None else (why is not None and expected in why)


def test_violations_are_listed_with_file_and_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "errors.py": "",
        "limits/counter.py": "import math\nfrom ..errors import X\n",
        "limits/limiter.py": "def late():\n    from ..run import engine\n",
        "run/engine.py": "from .. import errors\n",
        "tools/export.py": "from ..run.engine import Engine\n",
    })
    assert violations(root) == [
        "processor/limits/limiter.py:2: processor.limits.limiter -> processor.run.engine: "
        "floor 3 (limits) imports floor 6 (run)",
        "processor/tools/export.py:1: processor.tools.export -> processor.run.engine: "
        "tools/ must not import run/",
    ]


def test_every_module_under_400_lines_and_every_class_under_250() -> None:
    """The house rule of issue 10: a module that grows past 400 lines, or a class past 250,
    is a concept asking for a room of its own."""
    root = Path(str(importlib.import_module("processor").__file__)).parent
    too_big: list[str] = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = len(source.splitlines())
        if lines >= 400:
            too_big.append(f"{path.relative_to(root.parent)}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size >= 250:
                    too_big.append(f"{path.relative_to(root.parent)}: class {node.name} "
                                   f"{size} lines")
    assert not too_big, "\n".join(too_big)
