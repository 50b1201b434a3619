"""relprop: layer-wise relevance propagation for any PyTorch model.

    import relprop
    graph = relprop.trace(model)          # rule set: relprop.rules.AbsLRP()
    R = graph.explain(x, target)          # relevance shaped like x
    print(graph.summary())                # every node, its module and its rule

Hugging Face models take dict inputs (``graph.explain(dict(enc), target)``, token
relevance shaped (batch, tokens)); decoder LMs take a next-token target,
``relprop.targets.next_token(token_id)``.
"""

from . import comparison, example, methods, metrics, models, quantus_metrics, rules, targets, text, viz
from .binding import register_rule, unregister_rule
from .errors import (
    InputError,
    MissingRuleError,
    RelpropError,
    RuleError,
    TargetError,
    TraceError,
)
from .graph import Explanation, Graph, trace
from .targets import next_token

__version__ = "0.1.0"

__all__ = [
    "Explanation",
    "Graph",
    "InputError",
    "MissingRuleError",
    "RelpropError",
    "RuleError",
    "TargetError",
    "TraceError",
    "next_token",
    "register_rule",
    "rules",
    "targets",
    "trace",
    "unregister_rule",
    "comparison",
    "methods",
    "metrics",
    "models",
    "quantus_metrics",
    "text",
    "viz",
    "example",
]
