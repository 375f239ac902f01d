"""The package's layers, checked from its import graph (issue 31, ``../shared/DESIGN.md``).

Each subpackage sits on a floor; a module may import its own subpackage and the floors
below it, never a floor above nor a neighbour on its own floor. Every import counts, those
inside functions too: a lazy import upwards is still an upward dependency.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "bloodlib"

#: Floor of each top-level part of the package, bottom up. ``bloodlib`` itself (its
#: ``__init__``: the class names and image formats every layer shares) sits just above
#: ``core``, whose log filter it installs, and below everything else.
FLOORS: dict[str, float] = {
    "core": 0,
    "bloodlib": 0.5,
    "data": 1,
    "evaluate": 1,
    "models": 2,
    "predict": 3,
    "train": 4,
    "study": 5,
    "teach": 5,
    "cli": 6,
    "__main__": 7,
}

#: Size limits a reader can hold in their head (issue 31).
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to (``bloodlib.data.split`` -> data)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every bloodlib module or package ``path`` imports, wherever the import statement is.

    ``from PKG import NAME`` imports the module ``PKG.NAME`` when there is one (``modules``),
    else a name inside ``PKG``.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, *([base] if base else [])])
            for a in node.names:
                full = f"{base}.{a.name}"
                found.add(full if full in modules else base)
    return {m for m in found if m == "bloodlib" or m.startswith("bloodlib.")}


def layer_violations(package: Path) -> list[str]:
    """``"importer -> imported"`` for each import that reaches up, or sideways across parts."""
    problems = []
    paths = sorted(package.rglob("*.py"))
    modules = {_module_name(p, package) for p in paths}
    for path in paths:
        module = _module_name(path, package)
        own = _part(module)
        for target in sorted(_imports(path, module, path.name == "__init__.py", modules)):
            other = _part(target)
            if other == own or other not in FLOORS:
                continue  # the same part, or a name inside bloodlib's __init__ (CLASSES...)
            if own not in FLOORS:
                problems.append(f"{module}: part {own!r} has no floor in FLOORS")
            elif FLOORS[other] >= FLOORS[own]:
                problems.append(f"{module} -> {target}")
    return problems


def test_no_module_imports_a_higher_or_a_neighbouring_layer():
    assert layer_violations(PACKAGE) == []


def test_every_part_of_the_package_has_a_floor():
    parts = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__pycache__"}
    assert parts <= set(FLOORS)


def test_the_check_catches_a_lower_layer_importing_a_higher_one(tmp_path):
    copy = tmp_path / "bloodlib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    io = copy / "core" / "io.py"
    # Inside a function, as lazy imports are: it still counts.
    io.write_text(io.read_text() + "\n\ndef _f():\n    from bloodlib.teach import plots\n")
    assert layer_violations(copy) == ["bloodlib.core.io -> bloodlib.teach.plots"]


def test_the_check_catches_neighbours_on_one_floor(tmp_path):
    copy = tmp_path / "bloodlib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "data" / "x.py").write_text("from bloodlib.evaluate import reject\n")
    assert layer_violations(copy) == ["bloodlib.data.x -> bloodlib.evaluate.reject"]


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_modules_and_functions_stay_small_enough_to_read():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(PACKAGE.parent)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for fn in _functions(ast.parse(text)):
            n = fn.end_lineno - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                too_long.append(f"{name}:{fn.lineno} {fn.name}: {n} lines")
    assert too_long == []
