"""Running a bound program: one forward, then one walk backwards through the rules.

:func:`plan` prepares a bound program once per trace (what the forward may drop, which
relevances may skip normalisation, the rules' cache); :func:`forward` evaluates the graph
once and keeps the values rules read.  The
walk visits nodes in reverse topological order; each node's rule maps the
relevance of its output to its inputs, and relevances reaching a tensor from
several consumers add up.  Relevance tensors carry a leading pass dimension, so
both passes of a contrastive explanation share one forward and one walk.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from relprop.rules.base import Context, Hints, Layout, RuleCache, mark_owned, owned
from relprop.rules.categories import SEPARABLE

from .binding import Bound
from .errors import InputError, NonFiniteRelevanceError, RuleError
from .programs import Program

__all__ = ["Plan", "plan", "forward", "run_graph", "backward", "Walk"]

#: checks a traced program makes on its inputs at run time (``torch._assert_async``)
_ASSERTIONS = {torch.ops.aten._assert_async.msg, torch.ops.aten._assert_async.default}


@dataclass
class Plan:
    """What the engine prepares once per trace and reuses on every explain."""

    bound: Bound
    #: node -> values the forward may drop once that node is computed (:func:`_releases`)
    releases: dict[fx.Node, list[fx.Node]]
    #: node -> per input, may its relevance be handed on unnormalized (:func:`_free_scale`)
    free_scale: dict[fx.Node, list[bool]]
    #: what rules keep between explains (absLRP's derived weights): the Graph's, shared
    #: by all its traces
    cache: RuleCache = field(default_factory=RuleCache)


def plan(bound: Bound, cache: RuleCache | None = None) -> Plan:
    """The :class:`Plan` of ``bound``; ``cache`` is shared with the other traces of a Graph."""
    return Plan(bound, _releases(bound), _free_scale(bound), RuleCache() if cache is None else cache)


def _state_value(model: nn.Module, kind: str, ref: Any) -> Any:
    if kind == "param":
        return model.get_parameter(ref).detach()
    if kind == "buffer":
        return model.get_buffer(ref).detach()
    return ref


def _releases(bound: Bound) -> dict[fx.Node, list[fx.Node]]:
    """Node -> values the forward can drop once that node is computed.

    The walk reads the values of bound nodes (their rule's ``ctx.output``), of their
    inputs (``ctx.inputs``) and of the outputs; every other value is dropped right
    after its last consumer in the forward has run.
    """
    nodes = list(bound.program.graph.nodes)
    keep: set[fx.Node] = set(bound.bindings)
    for n, binding in bound.bindings.items():
        keep.update(n.all_input_nodes)
        keep.update(binding.reads)
    keep.add(nodes[-1])
    keep.update(nodes[-1].all_input_nodes)
    last: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        for a in n.all_input_nodes:
            last[a] = n
    releases: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        if n in keep:
            continue
        releases.setdefault(last.get(n, n), []).append(n)
    return releases


#: at most this many rules in a row hand on unnormalized relevance (bounds its range)
_FREE_SCALE_DEPTH = 3


def _free_scale(bound: Bound) -> dict[fx.Node, list[bool]]:
    """Node -> per input, whether its rule may hand that input's relevance on unnormalized.

    True where the input's value is read (for relevance) by this node alone and its
    producer's rule is ``scale_free``, so the producer normalizes whatever scale it
    gets.  A per-sample scale is only safe through a producer that keeps samples apart:
    its output and live inputs have the batch along dimension 0 (the same size), or the
    relevance has no batch layout at all (then the scale is one number per pass).
    Chains are cut after :data:`_FREE_SCALE_DEPTH` steps.
    """
    nodes = list(bound.program.graph.nodes)
    readers: dict[fx.Node, int] = {}
    for n in nodes[-1].all_input_nodes:  # relevance may start at an output
        readers[n] = readers.get(n, 0) + 1
    for binding in bound.bindings.values():
        for a, live in zip(binding.inputs, binding.info.live):
            if live:
                readers[a] = readers.get(a, 0) + 1
    sources = set(bound.float_sources.values()) | set(bound.embeddings) | set(bound.token_sources)

    def producer(a: fx.Node) -> fx.Node | None:
        if _structural(bound, a):  # one output of a multi-output op
            a = a.args[0]
            if not isinstance(a, fx.Node) or readers.get(a, 0) != 1:
                return None
        binding = bound.bindings.get(a)
        if a in sources or binding is None or not getattr(binding.rule, "scale_free", False):
            return None
        return a

    def per_sample(node: fx.Node) -> bool:
        info = bound.bindings[node].info
        layouts = [info.out_layout] + [lay for lay, live in zip(info.in_layouts, info.live) if live]
        if info.category not in SEPARABLE or any(lay != Layout(0) for lay in layouts):
            return False
        inputs = bound.bindings[node].inputs
        values = [node.meta.get("val")] + [a.meta.get("val") for a, live in zip(inputs, info.live) if live]
        values = [v[0] if isinstance(v, (tuple, list)) else v for v in values]
        sizes = {str(v.shape[0]) if isinstance(v, torch.Tensor) and v.dim() else None for v in values}
        return len(sizes) == 1 and None not in sizes

    depth: dict[fx.Node, int] = {}
    flags: dict[fx.Node, list[bool]] = {}
    for n in reversed(nodes):
        binding = bound.bindings.get(n)
        if binding is None or _structural(bound, n):
            continue
        d = depth.get(n, 0)
        row = []
        for a, live, layout in zip(binding.inputs, binding.info.live, binding.info.in_layouts):
            p = producer(a) if live and d < _FREE_SCALE_DEPTH and readers.get(a) == 1 else None
            ok = p is not None and (layout is None or (layout == Layout(0) and per_sample(p)))
            if ok:
                depth[p] = d + 1
            row.append(ok)
        if any(row):
            flags[n] = row
    return flags


def forward(plan: Plan, model: nn.Module, flat_inputs: list[Any]) -> dict[fx.Node, Any]:
    """Evaluate the graph on the user inputs.

    Returns the values the walk reads (see :func:`_releases`); the others are freed
    as soon as the forward no longer needs them.
    """
    with torch.no_grad():
        return run_graph(plan.bound.program, model, flat_inputs, plan.releases)


def run_graph(
    program: Program,
    model: nn.Module,
    flat_inputs: list[Any],
    releases: dict[fx.Node, list[fx.Node]],
    call: Callable[[fx.Node, tuple, dict], Any] | None = None,
) -> dict[fx.Node, Any]:
    """Evaluate ``program``'s graph: parameters and buffers read live from ``model``
    (detached), user inputs from ``flat_inputs``; after each node the values in
    ``releases[node]`` are dropped.  ``call(node, args, kwargs)``, when given, computes each
    op instead of ``node.target(*args, **kwargs)`` (to capture or replace values).  Runs in
    the caller's grad mode."""
    env: dict[fx.Node, Any] = {}
    user = {name: i for i, name in enumerate(program.user_inputs)}
    for n in program.graph.nodes:
        if n.op == "placeholder":
            if n.name in program.state:
                kind, ref = program.state[n.name]
                env[n] = _state_value(model, kind, ref)
            else:
                env[n] = flat_inputs[user[n.name]]
        elif n.op == "call_function":
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
            try:
                env[n] = n.target(*args, **kwargs) if call is None else call(n, args, kwargs)
            except RuntimeError as err:
                if n.target in _ASSERTIONS:  # the traced program's check on these inputs
                    raise InputError(f"the inputs fail a check of the traced model: {err}") from None
                raise
        elif n.op == "output":
            env[n] = fx.node.map_arg(n.args[0], env.__getitem__)
        for dead in releases.get(n, ()):
            env.pop(dead, None)
    return env


@dataclass
class Walk:
    """What the backward walk produced."""

    #: user-input index -> relevance (P, *input.shape), or (P, batch, tokens) for token ids
    inputs: dict[int, Tensor]
    #: node name -> relevance each input received from this node's rule (recorded walks)
    records: dict[str, list[Tensor | None]] = field(default_factory=dict)
    #: node name -> relevance of the node's output (recorded walks)
    outputs: dict[str, Any] = field(default_factory=dict)
    #: embedding module path -> relevance of the lookup's output summed over the hidden
    #: dimension, (P, *indices.shape)
    embeddings: dict[str, Tensor] = field(default_factory=dict)


def _add(store: dict[fx.Node, Any], node: fx.Node, R: Any, index: int | None = None, inplace: bool = True) -> None:
    """Accumulate ``R`` into ``store[node]`` (in place into a tensor the walk owns, with ``inplace``)."""
    if index is not None:  # one output of a multi-output node
        slots = store.setdefault(node, [None] * len(node.meta["val"]))
        slots[index] = R if slots[index] is None else slots[index] + R
        return
    if node not in store:
        store[node] = R
        return
    held = store[node]
    if inplace and owned(held) and held.shape == R.shape and held.dtype == R.dtype and held is not R:
        held.add_(R)  # nothing else holds it: accumulate in place
    else:
        store[node] = mark_owned(held + R)


def backward(
    plan: Plan,
    env: dict[fx.Node, Any],
    start: list[Tensor | None],
    batch: int,
    record: bool | frozenset[str] = False,
) -> Walk:
    """Walk the graph backwards from ``start`` (one entry per flat output).

    Consumes ``env``: values are released as soon as no rule needs them.  ``record``: True
    keeps every node's relevance in the :class:`Walk`, a set of node names only those nodes'.
    """
    bound = plan.bound
    program = bound.program
    nodes = list(program.graph.nodes)
    output = nodes[-1]
    rel: dict[fx.Node, Any] = {}
    for node, R in zip(pytree.tree_leaves(output.args[0]), start):
        if R is not None and isinstance(node, fx.Node) and (node in bound.bindings or _is_source(bound, node)):
            _add(rel, node, R)
    walk = Walk(inputs={})
    placeholders = {p: i for i, p in bound.float_sources.items()}
    every = record is True
    names = frozenset() if isinstance(record, bool) else record
    # a recorded walk shows every relevance normalized, as the rules define it
    free_scale = {} if every or names else plan.free_scale
    totals: list[tuple[fx.Node, Tensor]] = []  # per rule run, the sum of what it handed on
    for n in reversed(nodes):
        # every consumer of n comes later in the graph and has been visited: only n's own
        # rule still reads its value, so it is dropped as soon as that rule has run
        value = env.pop(n, None)
        if n not in rel:
            continue
        R = rel.pop(n)
        keep = every or n.name in names
        if keep:
            walk.outputs[n.name] = R
        if n in placeholders:
            walk.inputs[placeholders[n]] = R
            continue
        if n in bound.embeddings:
            tokens = R.sum(-1)
            path = bound.embeddings[n]
            if path in walk.embeddings and walk.embeddings[path].shape == tokens.shape:
                walk.embeddings[path] = walk.embeddings[path] + tokens
            else:  # one module looked up twice with differently shaped indices
                walk.embeddings[path if path not in walk.embeddings else f"{path}:{n.name}"] = tokens
            if n in bound.token_sources:
                i = bound.token_sources[n]
                walk.inputs[i] = tokens if i not in walk.inputs else walk.inputs[i] + tokens
            continue
        binding = bound.bindings.get(n)
        if binding is None:
            continue
        if _structural(bound, n):
            _add(rel, n.args[0], R, n.args[1])
            continue
        hints = Hints(tuple(free_scale.get(n, ())), not every and not keep and owned(R), plan.cache)
        ctx = _context(binding, env, value, batch, hints)
        result = binding.rule(ctx, R)
        _check(binding, ctx, result)
        sums = [_total(r) for r in result if r is not None]
        if sums:
            totals.append((n, sum(sums[1:], sums[0])))
        if keep:
            walk.records[n.name] = list(result)
        if not every:  # a kept tensor, or one handed to two inputs, is owned by none of them
            handed = [r for r in result if r is not None]
            for r in handed:
                if owned(r) and (keep or sum(x is r for x in handed) > 1):
                    r._relprop_owned = False
        for node, r, live in zip(ctx.input_nodes, result, binding.info.live):
            if r is not None and live:
                _add(rel, node, r, inplace=not every)  # a recorded walk keeps every tensor as handed
        # release this node's values and relevances before the next rule runs
        del value, ctx, result, R
    _finite(bound, totals)
    return walk


def _context(binding: Any, env: dict[fx.Node, Any], value: Any, batch: int, hints: Hints) -> Context:
    """The node as its rule sees it: the op's arguments (a region's inputs; a fold's layer
    with the folded weight and bias) and their values from ``env``."""
    n, region = binding.info.node, binding.region
    if binding.fold is not None:
        leaves, spec, values = binding.fold.arguments(env)
    else:
        leaves, spec = pytree.tree_flatten(((*region.leaves,), {}) if region is not None else (n.args, n.kwargs))
        values = [env[x] if isinstance(x, fx.Node) else x for x in leaves]
    slots = [i for i, x in enumerate(leaves) if isinstance(x, fx.Node)]
    return Context(binding.info, leaves, values, spec, slots, value, batch, op=region, hints=hints)


def _total(r: Tensor) -> Tensor:
    """Σ r as a 0-d tensor (accumulated in float32 for half types): NaN or ±inf where ``r``
    holds one (or where finite values overflow float32's range, itself a failure)."""
    return r.sum(dtype=torch.float32) if r.dtype in (torch.float16, torch.bfloat16) else r.sum()


def _finite(bound: Bound, totals: list[tuple[fx.Node, Tensor]]) -> None:
    """Raise :class:`NonFiniteRelevanceError` at the first rule (in walk order) whose relevance
    is not finite: the one where it became so, since every rule before it handed on finite
    relevance.  One synchronisation for the whole walk."""
    if not totals:
        return
    finite = torch.isfinite(torch.stack([t.float() if t.device.type == "mps" else t.double() for _, t in totals]))
    if bool(finite.all()):
        return
    n = totals[int((~finite).nonzero()[0])][0]
    binding = bound.bindings[n]
    info = binding.info
    where = f"module '{info.module_path}' ({info.module_class})" if info.module_path else "the model's own forward"
    dtype = n.meta.get("val").dtype if isinstance(n.meta.get("val"), Tensor) else None
    raise NonFiniteRelevanceError(
        f"relevance became NaN or infinite at node '{n.name}' ({info.node.target}, traced in {where}), "
        f"rule {binding.rule!r} (matched by {binding.source}); every rule before it in the walk handed on "
        f"finite relevance. What helps: a larger stabiliser (e.g. rules.Epsilon(0.01) or the set's "
        f"epsilon=), a rule that cannot divide by near-zero outputs there (z+, gamma: rules.EpsilonPlusFlat(), "
        f"rules.EpsilonGammaBox(...)), or float64 (model.double() and a float64 input"
        f"{'' if dtype is None else f'; this node computes in {dtype}'}). graph.summary() lists every node's rule."
    )


def _structural(bound: Bound, node: fx.Node) -> bool:
    """A ``getitem`` that moves relevance to one output of its multi-output op (not the
    output of a fold, which stands for the whole folded layer)."""
    if node.target is not operator.getitem:
        return False
    binding = bound.bindings.get(node)
    return binding is None or binding.fold is None


def _is_source(bound: Bound, node: fx.Node) -> bool:
    return node in bound.embeddings or node in bound.float_sources.values()


def _check(binding: Any, ctx: Context, result: Any) -> None:
    rule = binding.rule
    where = f"{rule!r} at node '{ctx.node.name}' ({ctx.node.target})"
    if not isinstance(result, (list, tuple)) or len(result) != len(ctx.inputs):
        raise RuleError(
            f"{where} returned {type(result).__name__} of length "
            f"{len(result) if isinstance(result, (list, tuple)) else '-'}; expected a list with one "
            f"entry per input ({len(ctx.inputs)})"
        )
    for i, (r, x) in enumerate(zip(result, ctx.inputs)):
        if r is None:
            continue
        if not isinstance(r, Tensor) or not isinstance(x, Tensor) or r.shape[1:] != x.shape:
            raise RuleError(
                f"{where} returned relevance shaped {tuple(getattr(r, 'shape', ()))} for input {i}; "
                f"expected (passes, *{tuple(getattr(x, 'shape', ()))})"
            )
