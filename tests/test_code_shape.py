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


def _definitions(path: Path) -> list[tuple[str, str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            found.append((kind, node.name, node.end_lineno - node.lineno + 1))
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
    path.write_text(f"def f():\n{body}\n")
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
    ("old", "home", "name"),
    [
        ("metrics", "relprop.evaluation.metrics", "GAE"),
        ("methods", "relprop.evaluation.methods", "build_methods"),
        ("comparison", "relprop.evaluation.comparison", "compare"),
        ("quantus_metrics", "relprop.evaluation.quantus_metrics", "evaluate_quantus"),
        ("text", "relprop.apps.text", "render"),
        ("viz", "relprop.apps.viz", "heatmap"),
        ("models", "relprop.apps.models", "load_digits_model"),
        ("cli", "relprop.apps.cli", "main"),
        ("sentiment", "relprop.apps.sentiment", "load_sentiment_model"),
        ("example", "relprop.apps.example", "load_example"),
    ],
)
def test_old_module_names_still_work(old, home, name):
    code = (
        "import importlib, relprop\n"
        f"old = importlib.import_module('relprop.{old}')\n"
        f"home = importlib.import_module('{home}')\n"
        f"assert old is home is getattr(relprop, '{old}'), (old, home)\n"
        f"from relprop.{old} import {name}\n"
        f"assert {name} is getattr(home, '{name}')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_unknown_attribute_is_an_attribute_error():
    import relprop

    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        relprop.nonexistent  # noqa: B018


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Repository layout") :]
    missing = [p.relative_to(ROOT).as_posix() for p in SOURCES if p.name != "__init__.py" and p.name not in layout]
    assert not missing, f"README's Repository layout does not name {missing}"


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
