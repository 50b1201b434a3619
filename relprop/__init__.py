"""relprop: layer-wise relevance propagation for any PyTorch model.

    import relprop
    graph = relprop.trace(model)          # rule set: relprop.rules.AbsLRP()
    R = graph.explain(x, target)          # relevance shaped like x
    print(graph.summary())                # every node, its module and its rule
"""

from . import example, rules, viz
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
    "register_rule",
    "rules",
    "trace",
    "unregister_rule",
    "viz",
    "example",
]
