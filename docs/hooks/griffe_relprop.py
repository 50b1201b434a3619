"""Griffe extension for relprop's API reference (mkdocs.yml: mkdocstrings' ``extensions``).

1. ``relprop.rules`` is the folder ``rules/`` (``pyproject.toml``: ``package-dir``), not
   ``relprop/rules/``: griffe, reading the source tree, would not find it.  Once ``relprop`` is
   loaded, ``rules/`` is loaded as its submodule ``relprop.rules`` (so that ``from ..errors``
   inside it and ``relprop.rules.X`` references resolve as they do when installed).
2. Docstrings name other objects with Sphinx roles (``:func:`relprop.trace```,
   ``:class:`~relprop.rules.AbsLRP```): each becomes a cross reference to the object's
   entry in the reference, shown as code (the last component with ``~``); names outside
   the reference (private helpers, other libraries) stay code without a link.  A trailing
   ``::`` that introduces an indented code block becomes ``:``.
3. An attribute documented by ``#:`` comments above it gets them as its docstring.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|const):`(~?)([^`<>]+?)`")
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)


class RelpropRules(griffe.Extension):
    """Loads ``rules/`` as ``relprop.rules``; turns Sphinx roles into cross references."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "relprop" or pkg.filepath is None or isinstance(pkg.filepath, list):
            return
        folder = Path(pkg.filepath).parent.parent / "rules"
        rules = loader._load_module("rules", folder / "__init__.py", submodules=False, parent=pkg)
        pkg.set_member("rules", rules)
        for path in sorted(folder.glob("*.py")):
            if path.stem != "__init__":
                rules.set_member(path.stem, loader._load_module(path.stem, path, submodules=False, parent=rules))
        loader.expand_exports(rules)
        for obj in _walk(pkg):
            _rewrite(obj)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is None and obj.is_attribute:
        _comment_docstring(obj)
    if obj.docstring is not None:
        text = _ROLE.sub(lambda m: _reference(obj, m[2].strip(), short=bool(m[1])), obj.docstring.value)
        obj.docstring.value = _LITERAL.sub(r"\1:", text)


def _comment_docstring(attr: griffe.Object) -> None:
    """An attribute documented by ``#:`` comment lines right above it (the Sphinx convention the
    code uses) gets them as its docstring."""
    if not attr.lineno or not isinstance(attr.filepath, Path):
        return
    lines = _lines(attr.filepath)
    found: list[str] = []
    i = attr.lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        found.insert(0, lines[i].lstrip()[2:].strip())
        i -= 1
    if found:
        attr.docstring = griffe.Docstring(" ".join(found), lineno=attr.lineno, parent=attr)


@functools.cache
def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _reference(obj: griffe.Object, name: str, short: bool) -> str:
    shown = name.rsplit(".", 1)[-1] if short else name
    target = _resolve(obj, name)
    return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'


def _resolve(obj: griffe.Object, name: str) -> str:
    """The full path of ``name`` as written in ``obj``'s docstring (a relative name is looked up
    in the object's scope, then its parents')."""
    if "." in name and name.split(".", 1)[0] in {"relprop", "torch", "transformers"}:
        return name
    scope: griffe.Object | None = obj
    while scope is not None:
        head = name.split(".", 1)[0]
        if head in scope.members:
            return f"{scope.path}.{name}"
        scope = scope.parent
    return name
