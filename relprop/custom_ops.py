"""Custom operators traced into ATen ops, where their implementation allows it.

``torch.export`` keeps a ``torch.library`` custom operator as one opaque node.  Where the
op has an implementation in Python (``@torch.library.custom_op``) or a
``CompositeImplicitAutograd`` kernel, :func:`inline_custom_ops` traces that implementation
with the node's own example values (fake tensors with the export's symbolic sizes,
functionalized) and puts the ATen ops it ran in place of the node, so binding rules them
like any other code.  An implementation that cannot be traced so — one that reads tensor
values to decide its control flow or sizes (``offs.tolist()``), creates tensor constants, or
fails for another reason — leaves the node as it is: it is then covered only where it is
declared a weighted layer (:func:`relprop.register_weighted_op`) or given a rule.  Declared
ops are never traced (their declaration is the faster, exact description).

The same holds for an ATen op that relprop's tables give no category
(:func:`relprop.rules.ops.uncovered_reason`) but that PyTorch decomposes in Python
(``torch._decomp.decomposition_table``, or this module's for the LSTM and the Elman RNN):
the recurrent ops ``aten.lstm``, ``aten.gru``, ``aten.rnn_tanh`` and
``aten.rnn_relu``, which carry the ``nondeterministic_seeded`` tag for their dropout
between layers, are traced into their cell computations (linear maps, sigmoids, tanh,
elementwise products and sums, one step after the other).  A decomposition
that still draws random numbers (a recurrent op in training mode with dropout between
layers) is not inlined, nor one over a dynamic size it would have to fix (the unrolled
time steps: torch.export already fixes the sequence length of these ops, see
docs/semantics.md §Recurrent networks).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import fx
from torch.utils import _pytree as pytree

from .lowering import replace_node, splice
from .recurrent import RECURRENT, linear

__all__ = ["has_candidates", "inline_custom_ops", "implementation"]

log = logging.getLogger(__name__)

#: namespaces whose ops relprop's tables and ATen's metadata describe
_KNOWN = {"aten", "prims"}
#: nested custom ops: how many rounds of inlining at most
_DEPTH = 4


def implementation(op: Any) -> Callable[..., Any] | None:
    """The Python-traceable implementation of a custom op, or None."""
    if not isinstance(op, torch._ops.OpOverload) or op.namespace in _KNOWN:
        return None
    from torch._library.custom_ops import OPDEFS

    opdef = OPDEFS.get(op._schema.name)
    if opdef is not None and getattr(opdef, "_init_fn", None) is not None:
        return opdef._init_fn
    if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd"):
        return op.decompose
    return None


def _decomposition(n: fx.Node) -> Callable[..., Any] | None:
    """PyTorch's Python decomposition of an ATen op that relprop gives no category, or None."""
    from relprop.rules.ops import recurrent_dropout, uncovered_reason

    op = n.target
    if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten" or uncovered_reason(n) is None:
        return None
    if recurrent_dropout(n) is not None:
        return None  # random: PyTorch's decomposition would leave the dropout out
    from torch._decomp import decomposition_table

    fn = RECURRENT.get(op) or decomposition_table.get(op)
    if fn is None:
        return None

    def plain(*args: Any, **kwargs: Any) -> Any:
        # without oneDNN: the LSTM decomposition would otherwise call one fused mkldnn_rnn_layer op on the CPU
        enabled = torch._C._get_mkldnn_enabled()
        torch._C._set_mkldnn_enabled(False)
        try:
            with _SymbolicLinear():
                return fn(*args, **kwargs)
        finally:
            torch._C._set_mkldnn_enabled(enabled)

    return plain


def inline_custom_ops(graph: fx.Graph, keep: Collection[str] = ()) -> list[str]:
    """Replace every traceable custom-op node of ``graph`` by the ATen ops of its
    implementation (module docstring); in place.  Ops named in ``keep`` (``ns.name``: those a
    rule is registered for) stay single nodes.  Returns the ops inlined."""
    from relprop.rules.ops import op_name

    done: list[str] = []
    for _ in range(_DEPTH):
        changed = False
        for n in list(graph.nodes):
            if not _candidate(n, keep):
                continue
            if (fn := implementation(n.target)) is not None:
                sub = _trace(fn, n)
            else:
                sub = _trace(_decomposition(n), n, remove="mutations")
                if sub is not None and _random(sub):
                    continue  # still draws random numbers: the node stays, uncovered_reason says why
            if sub is not None and _inline(graph, n, sub):
                done.append(op_name(n.target))
                changed = True
        if not changed:
            break
    if done:
        graph.eliminate_dead_code()
    return done


def has_candidates(graph: fx.Graph) -> bool:
    """Whether ``graph`` holds a node :func:`inline_custom_ops` would try to trace (cheap: no tracing)."""
    return any(_candidate(n, ()) for n in graph.nodes)


def _candidate(n: fx.Node, keep: Collection[str]) -> bool:
    """A custom op with an implementation, or an uncovered ATen op with a decomposition, that is
    neither declared weighted nor named in ``keep``."""
    from relprop.rules.ops import is_weighted, op_name

    if n.op != "call_function" or is_weighted(n.target) or op_name(n.target) in keep:
        return False
    return implementation(n.target) is not None or _decomposition(n) is not None


class _SymbolicLinear(torch.overrides.TorchFunctionMode):
    """``F.linear`` as :func:`relprop.recurrent.linear` while a decomposition is traced."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.nn.functional.linear, torch._C._nn.linear) and args and args[0].dim() >= 2:
            return linear(*args, **kwargs)
        return func(*args, **kwargs)


def _random(gm: fx.GraphModule) -> bool:
    """Whether a traced implementation draws random numbers."""
    return any(
        m.op == "call_function"
        and isinstance(m.target, torch._ops.OpOverload)
        and torch.Tag.nondeterministic_seeded in m.target.tags
        for m in gm.graph.nodes
    )


def _trace(fn: Callable[..., Any], n: fx.Node, remove: str = "mutations_and_views") -> fx.GraphModule | None:
    """``fn`` traced on ``n``'s example values (functionalized), or None where it cannot be.

    ``remove="mutations"`` keeps views as views (ATen decompositions: their ``unbind``,
    ``split`` and ``transpose`` stay data movement, as in export's own graph).
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    leaves, spec = pytree.tree_flatten((n.args, n.kwargs))
    nodes = [i for i, x in enumerate(leaves) if isinstance(x, fx.Node)]
    vals = [leaves[i].meta.get("val") for i in nodes]
    if not vals or not all(isinstance(v, torch.Tensor) for v in vals):
        return None
    fake_mode = torch._guards.detect_fake_mode(vals)
    if fake_mode is None:
        return None

    def call(*tensors: torch.Tensor) -> Any:
        filled = list(leaves)
        for i, t in zip(nodes, tensors):
            filled[i] = t
        args, kwargs = pytree.tree_unflatten(filled, spec)
        return fn(*args, **kwargs)

    try:
        with fake_mode:
            gm = make_fx(torch.func.functionalize(call, remove=remove))(*vals)
    except Exception as err:  # data-dependent control flow, unsupported ops: the node stays opaque
        log.debug("custom op %s not traced: %s", n.target, err)
        return None
    if any(m.op in ("get_attr", "call_module") for m in gm.graph.nodes):
        return None  # tensor constants or submodules: nothing to feed them from
    return gm


def _inline(graph: fx.Graph, n: fx.Node, gm: fx.GraphModule) -> bool:
    """Put ``gm``'s ops in place of ``n`` (its outputs replace ``n``'s, or its getitems'); the
    copies keep ``n``'s module path.  False (and ``graph`` unchanged) where ``n``'s uses do not fit."""
    out = next(m for m in gm.graph.nodes if m.op == "output").args[0]
    if isinstance(out, (tuple, list)):
        if not all(u.op == "call_function" and u.target is operator.getitem for u in n.users):
            return False
    elif not isinstance(out, fx.Node):
        return False
    inputs = [x for x in pytree.tree_leaves((n.args, n.kwargs)) if isinstance(x, fx.Node)]
    keep = {k: n.meta[k] for k in ("nn_module_stack", "stack_trace", "source_fn_stack") if k in n.meta}
    return replace_node(graph, n, splice(graph, n, gm.graph, inputs, keep))
