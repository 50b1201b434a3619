"""Gates: operands of a product that weigh the other operand instead of carrying content.

Two kinds are recognised from the graph, looking back from a product's operand:

- **softmax weights**: a softmax output (attention probabilities), reached through data
  movement, gathers and selections (``index``, ``gather``, ``topk``'s values) and a
  renormalisation (the numerator of a division, a rescaling by a number);
- **routing weights**: softmax or sigmoid weights of which a selection by value keeps
  some: ``topk`` (or a gather or index with indices from ``topk``, ``sort``, ``argsort``)
  comes between the weights' op and the product (Mixtral, Qwen3-MoE, OLMoE, DeepSeek-V3:
  ``topk(softmax(logits))``, ``gather(sigmoid(logits), topk indices)``) or before the
  weights' op (gpt-oss: ``softmax(topk(logits))``).  Slices and fixed gathers do not count:
  ``a[:, :d] * sigmoid(a[:, d:])`` is a gated unit, not a router.  These are a
  mixture-of-experts router's weights: they decide how much of each chosen expert's output
  enters the sum;
- **sigmoid gates**: a sigmoid output, or one minus it, reached the same way (data
  movement, selections, rescaling by a number): the gates of a recurrent cell (an LSTM's
  input, forget and output gates, a GRU's reset and update gates,
  :mod:`relprop.custom_ops` traces ``aten.lstm`` and ``aten.gru`` into them), a
  squeeze-and-excitation gate ``x * sigmoid(fc(pool(x)))``, a GLU's ``sigmoid(b)``.  A
  value in (0, 1) that decides how much of the other operand passes.

:class:`~relprop.rules.lrp.BilinearRule` holds softmax weights constant where its set asks
(CP-LRP), sigmoid gates constant where its set asks (the classic sets: "signal-take-all",
Arras et al. 2017) and routing weights constant in every set that uses it, so that the
experts' outputs receive all relevance (docs/semantics.md §Products, its part on mixture
of experts, and §Recurrent networks).
"""

from __future__ import annotations

import operator
from typing import Any

from .ops import MOVE, SELECT, SELECTION, SOFTMAX, op_name

__all__ = ["softmax_weights", "routing_weights", "sigmoid_gate"]

#: ops a gate's value passes through unchanged in kind: data movement, gathers, selections
_THROUGH = MOVE | SELECT | SELECTION
_SIGMOID = {"aten.sigmoid"}


def _chosen(index: Any) -> bool:
    """Whether an index tensor comes from a selection by value (``topk``'s indices), through
    data movement and integer arithmetic on it (``perm // k``)."""
    seen = 0
    while hasattr(index, "target") and getattr(index, "op", None) == "call_function" and seen < 32:
        seen += 1
        name = op_name(index.target)
        if name in SELECTION or name in ("aten.sort", "aten.argsort"):
            return True
        if index.target is operator.getitem or name in MOVE or name in ("aten.floor_divide", "aten.div"):
            index = index.args[0]
            continue
        return False
    return False


def _trace_back(node: Any) -> tuple[Any, bool]:
    """The op a value comes from, looking through data movement, gathers, selections,
    renormalisation and rescaling by numbers; and whether a selection was passed."""
    selected = False
    while hasattr(node, "target") and getattr(node, "op", None) == "call_function":
        name = op_name(node.target)
        if node.target is operator.getitem:
            node = node.args[0]
            continue
        if name in _THROUGH and node.args:
            selected |= name in SELECTION or (name in SELECT and any(_chosen(a) for a in node.all_input_nodes[1:]))
            node = node.args[0]
            continue
        if name in ("aten.div", "aten.mul") and len(node.args) == 2:
            a, b = node.args
            number = [isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)]
            if name == "aten.div" and hasattr(a, "target"):  # renormalisation: the numerator
                node = a
                continue
            if any(number):  # a rescaling by a number (a routed scaling factor)
                node = b if number[0] else a
                continue
        return node, selected
    return node, selected


def softmax_weights(node: Any) -> bool:
    """Whether ``node``'s value is softmax weights (module docstring)."""
    source, _ = _trace_back(node)
    return hasattr(source, "target") and op_name(source.target) in SOFTMAX


def routing_weights(node: Any) -> bool:
    """Whether ``node``'s value is a router's top-k weights (module docstring)."""
    source, selected = _trace_back(node)
    if not hasattr(source, "target") or op_name(source.target) not in SOFTMAX | _SIGMOID:
        return False
    if selected:
        return True
    before = source.args[0] if source.args else None
    _, chosen = _trace_back(before)
    return chosen


def sigmoid_gate(node: Any) -> bool:
    """Whether ``node``'s value is a sigmoid gate: a sigmoid output or one minus it (module docstring)."""
    source, _ = _trace_back(node)
    if not hasattr(source, "target"):
        return False
    name = op_name(source.target)
    if name == "aten.rsub" and len(source.args) >= 2 and source.args[1] == 1:  # 1 - σ, written rsub(σ, 1)
        source, _ = _trace_back(source.args[0])
    elif name == "aten.sub" and len(source.args) >= 2 and source.args[0] == 1:  # 1 - σ
        source, _ = _trace_back(source.args[1])
    return hasattr(source, "target") and op_name(source.target) in _SIGMOID
