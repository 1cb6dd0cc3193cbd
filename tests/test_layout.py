"""The code's shape stays easy to read (STYLE.md): modules of at most 600 lines, functions of
at most 80, and only public names imported across packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "autotune"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.py") if "__pycache__" not in path.parts)


def _package_of(path: Path) -> str:
    """The dotted package a file belongs to (``autotune.study`` for autotune/study/_loop.py);
    files outside autotune/ are their own package."""
    if PACKAGE not in path.parents:
        return str(path)
    return ".".join(path.parent.relative_to(REPO).parts)


def _private_imports(path: Path) -> list[str]:
    """``from X import _name`` where X is in another package than ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("autotune"):
            continue
        source = node.module or ""
        for alias in node.names:
            target = f"{source}.{alias.name}"
            if not alias.name.startswith("_"):
                continue
            # The package holding the imported name: a module (autotune._score) lives in the
            # package above it; a name defined in a module lives in that module's package.
            is_module = (REPO / Path(*target.split("."))).with_suffix(".py").exists()
            owner = source if is_module else source.rpartition(".")[0]
            if owner != _package_of(path):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
    return found


@pytest.mark.parametrize("path", _modules(PACKAGE), ids=lambda p: str(p.relative_to(REPO)))
def test_module_and_functions_are_short(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{node.name} has {length} lines"


def test_no_private_name_crosses_a_package() -> None:
    crossings = [
        crossing
        for root in (PACKAGE, REPO / "tests", REPO / "benchmarks")
        for path in _modules(root)
        for crossing in _private_imports(path)
    ]
    assert crossings == []
