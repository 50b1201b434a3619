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
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch.utils import _pytree as pytree

__all__ = ["inline_custom_ops", "implementation"]

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


def inline_custom_ops(graph: fx.Graph) -> list[str]:
    """Replace every traceable custom-op node of ``graph`` by the ATen ops of its
    implementation (module docstring); in place.  Returns the ops inlined."""
    from relprop.rules.ops import is_weighted, op_name

    done: list[str] = []
    for _ in range(_DEPTH):
        changed = False
        for n in list(graph.nodes):
            if n.op != "call_function" or is_weighted(n.target):
                continue
            fn = implementation(n.target)
            if fn is None:
                continue
            sub = _trace(fn, n)
            if sub is not None and _inline(graph, n, sub):
                done.append(op_name(n.target))
                changed = True
        if not changed:
            break
    if done:
        graph.eliminate_dead_code()
    return done


def _trace(fn: Callable[..., Any], n: fx.Node) -> fx.GraphModule | None:
    """``fn`` traced on ``n``'s example values (functionalized), or None where it cannot be."""
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
            gm = make_fx(torch.func.functionalize(call, remove="mutations_and_views"))(*vals)
    except Exception as err:  # data-dependent control flow, unsupported ops: the node stays opaque
        log.debug("custom op %s not traced: %s", n.target, err)
        return None
    if any(m.op in ("get_attr", "call_module") for m in gm.graph.nodes):
        return None  # tensor constants or submodules: nothing to feed them from
    return gm


def _inline(graph: fx.Graph, n: fx.Node, gm: fx.GraphModule) -> bool:
    """Put ``gm``'s ops in place of ``n`` (its outputs replace ``n``'s, or its getitems')."""
    out = next(m for m in gm.graph.nodes if m.op == "output").args[0]
    if isinstance(out, (tuple, list)):
        if not all(u.op == "call_function" and u.target is operator.getitem for u in n.users):
            return False
    elif not isinstance(out, fx.Node):
        return False
    leaves = [x for x in pytree.tree_leaves((n.args, n.kwargs)) if isinstance(x, fx.Node)]
    inputs = iter(leaves)
    env: dict[fx.Node, Any] = {}
    result: Any = None
    keep = {k: n.meta[k] for k in ("nn_module_stack", "stack_trace", "source_fn_stack") if k in n.meta}
    with graph.inserting_before(n):
        for m in gm.graph.nodes:
            if m.op == "placeholder":
                env[m] = next(inputs)
            elif m.op == "output":
                result = fx.map_arg(m.args[0], env.__getitem__)
            else:
                copy = graph.node_copy(m, env.__getitem__)
                copy.meta = {**dict(m.meta), **keep}
                env[m] = copy
    if isinstance(result, (tuple, list)):
        for user in list(n.users):
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
    else:
        n.replace_all_uses_with(result)
    graph.erase_node(n)
    return True
