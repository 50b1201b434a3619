"""relprop: layer-wise relevance propagation for any PyTorch model.

    import relprop
    graph = relprop.trace(model)          # rule set: relprop.rules.AbsLRP()
    R = graph.explain(x, target)          # relevance shaped like x
    print(graph.summary())                # every node, its module and its rule

Hugging Face models take dict inputs (``graph.explain(dict(enc), target)``, token
relevance shaped (batch, tokens)); decoder LMs take a next-token target,
``relprop.targets.next_token(token_id)``; segmentation models a class over a region
of pixels, ``relprop.targets.region(cls, mask=None)``.

``import relprop`` loads the library alone; the evaluation stack (:mod:`relprop.evaluation`:
GAE, the compared methods) and the applications (:mod:`relprop.apps`: the command line,
pictures, shipped models) load on first use, also under their old names
(``relprop.metrics``, ``relprop.viz``, ...).
"""

from typing import Any

from . import _moved, rules, targets
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

__version__ = "0.1.0"

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

_moved.install()


def __getattr__(name: str) -> Any:
    """``relprop.metrics``, ``relprop.viz``, ...: the evaluation stack and the applications,
    imported on first use from :mod:`relprop.evaluation` and :mod:`relprop.apps`."""
    if name in _moved.MOVED:
        module = _moved.load(name)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'relprop' has no attribute {name!r}")
