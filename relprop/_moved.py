"""The modules that moved into subpackages, still importable under their old names.

``relprop.metrics`` is :mod:`relprop.evaluation.metrics` (the same module object, so
``import relprop.metrics``, ``from relprop.metrics import GAE`` and ``relprop.metrics.GAE``
all work), loaded on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

#: old name (under ``relprop.``) -> the module's home
MOVED = {
    "metrics": "relprop.evaluation.metrics",
    "methods": "relprop.evaluation.methods",
    "comparison": "relprop.evaluation.comparison",
    "quantus_metrics": "relprop.evaluation.quantus_metrics",
    "cli": "relprop.apps.cli",
    "text": "relprop.apps.text",
    "viz": "relprop.apps.viz",
    "sentiment": "relprop.apps.sentiment",
    "models": "relprop.apps.models",
    "example": "relprop.apps.example",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``relprop.<old>`` as the module at its new home."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.partition(".")
        if prefix == "relprop" and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name.partition(".")[2]])

    def exec_module(self, module: ModuleType) -> None:
        return None  # already executed at its home


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())


def load(name: str) -> ModuleType:
    """``relprop.<name>`` for a moved module (its home, imported on first use)."""
    return importlib.import_module(MOVED[name])
