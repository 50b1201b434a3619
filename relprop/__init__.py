"""relprop: layer-wise relevance propagation for any PyTorch model.

    import relprop
    graph = relprop.trace(model)          # rule set: relprop.rules.AbsLRP()
    R = graph.explain(x, target)          # relevance shaped like x
    print(graph.summary())                # every node, its module and its rule

Hugging Face models take dict inputs (``graph.explain(dict(enc), target)``, token
relevance shaped (batch, tokens)); decoder LMs take a next-token target,
``relprop.targets.next_token(token_id)``; segmentation models a class over a region
of pixels, ``relprop.targets.region(cls, mask=None)``.

``import relprop`` loads the library alone.  The public modules built on it load on first
use (``relprop.text`` after ``import relprop`` imports it): :mod:`relprop.text` (token
relevance as words, generated answers), :mod:`relprop.viz` (heatmaps),
:mod:`relprop.metrics` (GAE), :mod:`relprop.methods` (the compared attribution methods) and
:mod:`relprop.models` (shipped and offline models).  They expose the public names of
:mod:`relprop.apps` and :mod:`relprop.evaluation`, where the rest (the command line, the
comparison, Quantus' metrics) lives.
"""

import importlib
from importlib import metadata
from typing import Any

from . import rules, targets
from .binding import register_rule, unregister_rule
from .errors import (
    InputError,
    MissingRuleError,
    NonFiniteRelevanceError,
    RelpropError,
    RuleError,
    TargetError,
    TraceError,
)
from .graph import Explanation, Graph, trace
from .rules.ops import register_weighted_op
from .targets import next_token, region

try:
    __version__ = metadata.version("relprop")
except metadata.PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Explanation",
    "Graph",
    "InputError",
    "MissingRuleError",
    "NonFiniteRelevanceError",
    "RelpropError",
    "RuleError",
    "TargetError",
    "TraceError",
    "next_token",
    "region",
    "register_rule",
    "register_weighted_op",
    "rules",
    "targets",
    "trace",
    "unregister_rule",
]

#: the public modules imported on first use (the evaluation stack and the applications)
LAZY_MODULES = ("metrics", "methods", "models", "text", "viz")


def __getattr__(name: str) -> Any:
    """``relprop.text``, ``relprop.viz``, ``relprop.metrics``, ``relprop.methods``,
    ``relprop.models``: imported on first attribute access."""
    if name in LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'relprop' has no attribute {name!r}")
