"""The codebase's shape, enforced: small functions and classes, the library apart from the rest."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "relprop").rglob("*.py"), *(ROOT / "rules").rglob("*.py")])
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250


def _docstring_lines(node: ast.AST) -> int:
    """Lines taken by the docstrings of ``node`` and of the definitions inside it."""
    total = 0
    for inner in ast.walk(node):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and ast.get_docstring(inner):
            first = inner.body[0]
            total += first.end_lineno - first.lineno + 1
    return total


def _definitions(path: Path) -> list[tuple[str, str, int]]:
    """(kind, name, lines) of every function and class; docstrings do not count (they document
    the arguments, return value and errors, and the API reference shows them)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            found.append((kind, node.name, node.end_lineno - node.lineno + 1 - _docstring_lines(node)))
    return found


def test_sources_found():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"relprop/graph.py", "rules/abslrp.py", "relprop/evaluation/metrics.py", "relprop/apps/cli.py"} <= names


def test_no_long_functions_or_classes():
    too_long = []
    for path in SOURCES:
        for kind, name, lines in _definitions(path):
            limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
            if lines > limit:
                too_long.append(f"{path.relative_to(ROOT)}: {kind} {name} has {lines} lines (at most {limit})")
    assert not too_long, "\n".join(too_long)


def test_the_shape_check_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f'def f():\n    """Doc\n    string."""\n{body}\n')
    assert _definitions(path) == [("function", "f", MAX_FUNCTION_LINES + 1)]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(out.stdout.split())


def test_import_relprop_loads_the_library_only():
    loaded = _modules_after("import relprop")
    assert "relprop.graph" in loaded and "relprop.rules.abslrp" in loaded
    apart = sorted(m for m in loaded if m.startswith(("relprop.evaluation", "relprop.apps")))
    assert not apart, f"import relprop loaded {apart}"


@pytest.mark.parametrize(
    ("public", "home"),
    [
        ("metrics", "relprop.evaluation.metrics"),
        ("methods", "relprop.evaluation.methods"),
        ("text", "relprop.apps.text"),
        ("viz", "relprop.apps.viz"),
        ("models", "relprop.apps.models"),
    ],
)
def test_public_modules_expose_their_homes_public_names(public, home):
    """``relprop.<public>`` is a plain module: its ``__all__`` is its home's, the same objects,
    and ``relprop.<public>`` after ``import relprop`` imports it."""
    code = (
        "import importlib, relprop\n"
        f"mod = relprop.{public}\n"
        f"assert mod.__name__ == 'relprop.{public}' and mod is importlib.import_module('relprop.{public}')\n"
        f"home = importlib.import_module('{home}')\n"
        "assert sorted(mod.__all__) == sorted(home.__all__), set(mod.__all__) ^ set(home.__all__)\n"
        "assert all(getattr(mod, n) is getattr(home, n) for n in home.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("old", ["comparison", "quantus_metrics", "cli", "sentiment", "example", "_moved"])
def test_old_module_aliases_are_gone(old):
    import importlib

    import relprop

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"relprop.{old}")
    assert not hasattr(relprop, old)


def test_unknown_attribute_is_an_attribute_error():
    import relprop

    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        relprop.nonexistent  # noqa: B018


def test_development_page_layout_names_every_module():
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    layout = page[page.index("## Repository layout") :]
    missing = [p.relative_to(ROOT).as_posix() for p in SOURCES if p.name != "__init__.py" and p.name not in layout]
    assert not missing, f"docs/development.md's Repository layout does not name {missing}"


def test_semantics_citations_name_existing_sections():
    import re

    doc = (ROOT / "docs" / "semantics.md").read_text(encoding="utf-8")
    headings = [line[3:].strip() for line in doc.splitlines() if line.startswith("## ")]
    assert "absLRP" in headings and "Contrastive" in headings
    files = [*SOURCES, *(ROOT / "tests").glob("*.py"), ROOT / "README.md"]
    cited = 0
    for path in files:
        text = " ".join(path.read_text(encoding="utf-8").split())
        for after in re.findall(r"docs/semantics\.md §(.{0,60})", text):
            cited += 1
            assert any(after.startswith(h) for h in headings), f"{path.name} cites §{after!r}: no such section"
    assert cited >= 10
