"""Bringing ``torch.export``'s own graph to the ATen form relprop binds, without a retrace.

``torch.export.export`` returns a graph at the level of the user's code (the "training
IR"): functional except for in-place ops on intermediates (``relu_``, ``add_``), with
composite ops (``batch_norm``, ``dropout``, ``to``, ``contiguous``) and ``no_grad``
regions as higher-order ops.  ``ExportedProgram.run_decompositions({})`` turns it into
the functional ATen graph relprop's rules were written for, but it traces the whole
model again: on a 135M-parameter LLM it costs twice the export itself.

:func:`lower` does the few rewrites relprop needs in place, in one pass over the graph:

- a ``wrap_with_set_grad_enabled`` region is inlined (its values are the same);
- an in-place op on an intermediate that nothing else aliases becomes its functional
  form, and the later readers of the mutated value read the new node;
- ``batch_norm(training=False)``, ``dropout(train=False)``, ``contiguous`` and ``to``
  become what the decomposition gives (``_native_batch_norm_legit_no_training``, the
  input itself, ``clone``, ``_to_copy`` or the input itself).

On either graph, lowered or decomposed, :func:`rewrite_copies` replaces ``copy(x, src)``
(a functionalized ``copy_``, which has no derivative) by ``src`` expanded to ``x``.

Every other op is left as export wrote it (``reshape``, ``flatten``, ``linear``, ...; the
rule tables cover them by name).  Where the graph holds something this pass does not
handle (another higher-order op, a mutation of an input or buffer, an in-place op on a
view) :func:`lower` returns the reason and relprop runs the full decomposition instead.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

__all__ = ["lower", "replace_node", "rewrite_copies", "splice"]

_aten = torch.ops.aten
_SET_GRAD = "wrap_with_set_grad_enabled"


def lower(ep: Any) -> tuple[fx.Graph | None, str]:
    """A rewritten copy of ``ep``'s graph (see the module docstring); ``ep`` is unchanged.

    Returns ``(graph, "")``, or ``(None, why)`` where the graph holds something this pass
    does not handle (the caller then runs the full decomposition on ``ep``).
    """
    if any(spec.kind.name != "USER_OUTPUT" for spec in ep.graph_signature.output_specs):
        return None, "the forward mutates an input or a buffer"
    gm = ep.graph_module
    graph = fx.Graph()
    copies: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, copies))
    for node, copy in copies.items():
        copy.name = node.name  # the signature names placeholders ("input", which fx would rename)
    why = _lower(gm, graph)
    return (None, why) if why is not None else (graph, "")


def _lower(gm: fx.GraphModule, graph: fx.Graph) -> str | None:
    if (why := _inline_regions(gm, graph)) is not None:
        return why
    order = {n: i for i, n in enumerate(graph.nodes)}
    for n in list(graph.nodes):
        if n.op != "call_function" or not isinstance(n.target, torch._ops.OpOverload):
            if n.op == "call_function" and isinstance(n.target, torch._ops.HigherOrderOperator):
                return f"a higher-order op {n.target.name()}"
            continue
        if n.target._schema.is_mutable:
            if (why := _functionalize(graph, n, order)) is not None:
                return why
            continue
        rewrite = _REWRITES.get(n.target)
        if rewrite is not None and (why := rewrite(graph, n)) is not None:
            return why
    graph.eliminate_dead_code()
    return None


def _inline_regions(gm: fx.GraphModule, graph: fx.Graph) -> str | None:
    """Inline every ``wrap_with_set_grad_enabled(enabled, submodule, *args)`` region."""
    while True:
        regions = [n for n in graph.nodes if n.op == "call_function" and _hop_name(n.target) == _SET_GRAD]
        if not regions:
            return None
        for n in regions:
            sub = n.args[1]
            if not (isinstance(sub, fx.Node) and sub.op == "get_attr"):
                return "a no_grad region whose body is not a submodule"
            body = getattr(gm, sub.target).graph
            if any(m.op == "get_attr" for m in body.nodes):
                return "a no_grad region that reads module attributes"
            result = splice(graph, n, body, n.args[2:])
            if not replace_node(graph, n, result):
                return "a no_grad region whose outputs are not unpacked"
            if not sub.users:
                graph.erase_node(sub)


def splice(graph: fx.Graph, at: fx.Node, body: fx.Graph, inputs: Any, meta: dict | None = None) -> Any:
    """Copy ``body``'s ops into ``graph`` before ``at``, its placeholders bound to ``inputs`` in
    order (``meta`` added to every copy's); returns ``body``'s output in ``graph``'s nodes."""
    values: dict[fx.Node, Any] = {}
    given = iter(inputs)
    result: Any = None
    with graph.inserting_before(at):
        for m in body.nodes:
            if m.op == "placeholder":
                values[m] = next(given)
            elif m.op == "output":
                result = fx.map_arg(m.args[0], values.__getitem__)
            else:
                values[m] = graph.node_copy(m, values.__getitem__)
                if meta:
                    values[m].meta = {**m.meta, **meta}
    return result


def replace_node(graph: fx.Graph, n: fx.Node, result: Any) -> bool:
    """``n``'s uses read ``result`` (a node, or a tuple whose entries replace ``n``'s getitems) and
    ``n`` goes; False (nothing changed) where a tuple's user is not a getitem."""
    if isinstance(result, (tuple, list)):
        users = list(n.users)
        if not all(u.op == "call_function" and u.target is operator.getitem for u in users):
            return False
        for user in users:
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
    elif isinstance(result, fx.Node):
        n.replace_all_uses_with(result)
    else:
        return False
    graph.erase_node(n)
    return True


def _hop_name(target: Any) -> str | None:
    return target.name() if isinstance(target, torch._ops.HigherOrderOperator) else None


def _functional(op: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    """The out-of-place twin of an in-place op that writes its first argument only."""
    schema = op._schema
    name = schema.name.split("::", 1)[-1]
    if not name.endswith("_") or name.startswith("_"):
        return None
    writes = [a.alias_info is not None and a.alias_info.is_write for a in schema.arguments]
    if not writes or not writes[0] or any(writes[1:]):
        return None
    packet = getattr(getattr(torch.ops, op.namespace), name[:-1], None)
    twin = getattr(packet, op._overloadname, None) if packet is not None else None
    if twin is None or twin._schema.is_mutable:
        return None
    if [a.name for a in twin._schema.arguments] != [a.name for a in schema.arguments]:
        return None
    return twin


def _aliases(node: fx.Node) -> bool:
    """Whether ``node``'s output may share memory with one of its inputs (a view)."""
    target = node.target
    if node.op != "call_function":
        return node.op != "get_attr"
    if target is operator.getitem:  # one output of a multi-output op
        parent = node.args[0]
        return not isinstance(parent, fx.Node) or _aliases(parent)
    if not isinstance(target, torch._ops.OpOverload):
        return True
    return any(r.alias_info is not None for r in target._schema.returns)


def _functionalize(graph: fx.Graph, n: fx.Node, order: dict[fx.Node, int]) -> str | None:
    """``y = op_(x, ...)`` -> ``y = op(x, ...)``, and readers of ``x`` after ``n`` read ``y``."""
    twin = _functional(n.target)
    if twin is None:
        return f"the in-place op {n.target}"
    x = n.args[0]
    if not isinstance(x, fx.Node) or x.op == "placeholder" or _aliases(x):
        return f"{n.target} writes into an input, a parameter or a view"
    if any(u is not n and u.op == "call_function" and _aliases(u) for u in x.users):
        return f"{n.target} writes into a tensor that is also viewed"
    with graph.inserting_before(n):
        y = graph.create_node("call_function", twin, n.args, n.kwargs, name=twin._opname)
    y.meta = dict(n.meta)
    n.replace_all_uses_with(y)
    for user in list(x.users):
        if user is not n and order.get(user, -1) > order[n]:
            user.replace_input_with(x, y)
    order[y] = order[n]
    graph.erase_node(n)
    return None


def _kw(n: fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
    """``n``'s arguments by name (positional ones named by ``names``, then keywords)."""
    values = dict(zip(names, n.args))
    values.update(n.kwargs)
    return values


def _replace_with_input(graph: fx.Graph, n: fx.Node) -> None:
    n.replace_all_uses_with(n.args[0])
    graph.erase_node(n)


def _batch_norm(graph: fx.Graph, n: fx.Node) -> str | None:
    a = _kw(n, ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"))
    if a.get("training") or a.get("running_mean") is None or a.get("running_var") is None:
        return "a batch norm that uses batch statistics"
    args = (a["input"], a.get("weight"), a.get("bias"), a["running_mean"], a["running_var"], a["momentum"], a["eps"])
    with graph.inserting_before(n):
        op = _aten._native_batch_norm_legit_no_training.default
        norm = graph.create_node("call_function", op, args, name=op._opname)
        out = graph.create_node("call_function", operator.getitem, (norm, 0), name="getitem")
    val = n.meta.get("val")
    norm.meta = dict(n.meta)
    out.meta = dict(n.meta)
    if isinstance(val, torch.Tensor):
        norm.meta["val"] = (val, val.new_empty((0,)), val.new_empty((0,)))
    n.replace_all_uses_with(out)
    graph.erase_node(n)
    return None


def _dropout(graph: fx.Graph, n: fx.Node) -> str | None:
    if _kw(n, ("input", "p", "train")).get("train"):
        return "a dropout in training mode"
    _replace_with_input(graph, n)
    return None


def _contiguous(graph: fx.Graph, n: fx.Node) -> str | None:
    n.target = _aten.clone.default
    n.args = n.args[:1]
    n.kwargs = {"memory_format": torch.contiguous_format}
    return None


def rewrite_copies(graph: fx.Graph) -> None:
    """Every ``copy(x, src)`` (functionalized ``x.copy_(src)``, which has no derivative) becomes
    ``src`` expanded to ``x``'s shape and cloned, or cast to ``x``'s dtype; in place."""
    for n in list(graph.nodes):
        if n.op == "call_function" and n.target is _aten.copy.default:
            _copy(graph, n)


def _copy(graph: fx.Graph, n: fx.Node) -> None:
    x, src = n.args[0], n.args[1]
    val = n.meta.get("val")
    before = src.meta.get("val") if isinstance(src, fx.Node) else None
    if not isinstance(val, torch.Tensor) or not isinstance(before, torch.Tensor):
        return  # left as it is: a rule that needs its derivative says so
    if _sizes(val) == _sizes(before):  # src already has x's shape: x is not read at all
        n.args = (src,)
    else:
        with graph.inserting_before(n):
            expanded = graph.create_node("call_function", _aten.expand_as.default, (src, x), name="expand_as")
        expanded.meta = dict(n.meta)
        n.args = (expanded,)
    if val.dtype == before.dtype:
        n.target, n.kwargs = _aten.clone.default, {}
    else:
        n.target, n.kwargs = _aten._to_copy.default, {"dtype": val.dtype}


def _sizes(t: torch.Tensor) -> tuple[Any, ...]:
    """A tensor's sizes as numbers or symbolic expressions (compared without guarding)."""
    return tuple(d.node.expr if isinstance(d, torch.SymInt) else int(d) for d in t.shape)


def _to(graph: fx.Graph, n: fx.Node) -> str | None:
    """``x.to(...)``: the input itself where nothing changes, else ``_to_copy``."""
    x, val = n.args[0], n.meta.get("val")
    before = x.meta.get("val") if isinstance(x, fx.Node) else None
    if not isinstance(val, torch.Tensor) or not isinstance(before, torch.Tensor):
        return f"{n.target} of a value without metadata"
    kw = {**dict(zip(_TO_ARGS[n.target], n.args[1:])), **n.kwargs}
    same = val.dtype == before.dtype and val.device == before.device and val.layout == before.layout
    if same and not kw.get("copy"):
        _replace_with_input(graph, n)
        return None
    n.target = _aten._to_copy.default
    n.args = (x,)
    n.kwargs = {"dtype": val.dtype, "layout": val.layout, "device": val.device}
    return None


_TO_ARGS = {
    _aten.to.dtype: ("dtype", "non_blocking", "copy", "memory_format"),
    _aten.to.dtype_layout: ("dtype", "layout", "device", "pin_memory", "non_blocking", "copy", "memory_format"),
    _aten.to.device: ("device", "dtype", "non_blocking", "copy", "memory_format"),
    _aten.to.other: ("other", "non_blocking", "copy", "memory_format"),
}

_REWRITES = {
    _aten.batch_norm.default: _batch_norm,
    _aten.dropout.default: _dropout,
    _aten.contiguous.default: _contiguous,
    **dict.fromkeys(_TO_ARGS, _to),
}
