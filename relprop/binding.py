"""Matching graph nodes to rules.

Every node on the relevance path (from a relevance source to the output) gets a
rule.  Candidates, most specific first:

1. a module-name glob (``"features.0"``, ``"blocks.*.attn"``), matched against
   the module paths the node was traced in (innermost first);
2. a module class (``torch.nn.Linear``), matched by ``isinstance`` the same way;
3. an op (``torch.ops.aten.linear.default``, its packet ``torch.ops.aten.linear``,
   or the strings ``"aten.linear"`` / ``"aten.linear.default"``);
4. the rule set's default for the node's category.

Per-trace overrides win over global registrations of the same kind.  Module
overrides only replace the rules of *computing* ops: data movement inside a
module keeps passing relevance unchanged.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from relprop.rules.base import NodeInfo, Rule, RuleCache
from relprop.rules.categories import COMPUTING, WEIGHTED_CATEGORIES, Category
from relprop.rules.lrp import Pass
from relprop.rules.ops import SELECT, categorize, full_op_name, is_constant, is_statistic, op_name
from relprop.rules.sets import RuleSet, as_rule

from .errors import InputError, MissingRuleError, RuleError
from .layouts import batch_layouts
from .regions import Region, find_regions
from .tracing import Program

__all__ = ["register_rule", "unregister_rule", "bind", "Bound", "Binding", "OverrideKey"]

#: global registrations: normalized key -> rule
_REGISTRY: dict[tuple[str, Any], Rule] = {}

OverrideKey = Any  # str | type[nn.Module] | OpOverload | OpOverloadPacket


def _normalize_key(key: OverrideKey) -> tuple[str, Any]:
    if isinstance(key, type) and issubclass(key, nn.Module):
        return ("class", key)
    if isinstance(key, torch._ops.OpOverload):
        return ("op", str(key))
    if isinstance(key, torch._ops.OpOverloadPacket):
        return ("op", str(key))
    if isinstance(key, str):
        if key.startswith("aten.") or "::" in key:
            return ("op", key.replace("::", "."))
        return ("name", key)
    raise RuleError(
        f"cannot match rules by {key!r}; expected a module-name glob (str), an nn.Module "
        "subclass, or an ATen op (torch.ops.aten.linear, 'aten.linear.default')"
    )


def register_rule(key: OverrideKey, rule: Any = None) -> Any:
    """Register ``rule`` globally for an op, a module class, or a module-name glob.

    Usable directly, ``relprop.register_rule("aten.cumsum", relprop.rules.Pass())``,
    or as a decorator on a :class:`~relprop.rules.Rule` subclass or a function
    ``(ctx, R) -> list of input relevances``.  Registrations apply to traces made
    afterwards.
    """
    norm = _normalize_key(key)
    if rule is not None:
        _REGISTRY[norm] = as_rule(rule)
        return rule

    def decorator(obj: Any) -> Any:
        _REGISTRY[norm] = as_rule(obj)
        return obj

    return decorator


def unregister_rule(key: OverrideKey) -> None:
    """Remove a global registration (no error if there is none)."""
    _REGISTRY.pop(_normalize_key(key), None)


@dataclass
class Binding:
    """The rule of one node and why it was chosen."""

    info: NodeInfo
    rule: Rule
    source: str  # "name 'features.0'", "class Linear", "op aten.linear", "default", ...
    #: an elementwise activation written out as several ops, ruled as one op at its output
    #: (:mod:`relprop.regions`); the rule then sees the region's inputs, not the node's
    region: Region | None = None

    @property
    def inputs(self) -> list[fx.Node]:
        """The graph nodes whose values the rule sees as ``ctx.inputs``, in that order."""
        if self.region is not None:
            return list(self.region.leaves)
        return [x for x in _leaves(self.info.node) if isinstance(x, fx.Node)]


@dataclass
class Bound:
    """A program with rules bound: what the engine walks."""

    program: Program
    bindings: dict[fx.Node, Binding]
    #: user-input index -> float placeholder receiving relevance
    float_sources: dict[int, fx.Node]
    #: embedding node -> user-input index whose token ids it looks up
    token_sources: dict[fx.Node, int]
    #: ops passed by their gradient for want of a rule (strict=False)
    unbound: list[str] = field(default_factory=list)
    #: every embedding lookup on the relevance path (token sources included) -> module path
    embeddings: dict[fx.Node, str] = field(default_factory=dict)
    #: token sources whose indices are the user input itself (vocabulary checks apply)
    direct_tokens: set[fx.Node] = field(default_factory=set)
    #: node -> values the forward may drop after computing it (engine._releases, cached)
    releases: dict[fx.Node, list[fx.Node]] | None = field(default=None, repr=False)
    #: node -> per input, may its relevance skip normalization (engine._free_scale, cached)
    free_scale: dict[fx.Node, list[bool]] | None = field(default=None, repr=False)
    #: what rules keep between explains (``ctx.cache``): the Graph's, shared by its traces
    cache: RuleCache = field(default_factory=RuleCache, repr=False)


def _floating(val: Any) -> bool:
    if isinstance(val, torch.Tensor):
        return val.is_floating_point()
    if isinstance(val, (tuple, list)):
        return any(_floating(v) for v in val)
    return False


def _module_stack(node: fx.Node) -> list[tuple[str, str]]:
    return _stack_entries(node.meta.get("nn_module_stack") or {})


def _stack_entries(stack: dict[str, Any]) -> list[tuple[str, str]]:
    """(module path, class name) per level of an ``nn_module_stack``, outermost first."""
    return [
        (path, cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))) for path, cls in stack.values()
    ]


def _clean_path(path: str) -> str:
    return path.replace("L['self'].", "").replace("L__self__.", "")


def _equivalents(nodes: list[fx.Node]) -> dict[fx.Node, list[fx.Node]]:
    """Call nodes grouped with the nodes that compute the same op on the same arguments.

    ``x[..., 0::2, 0::2]`` and ``x[..., 0::2, 1::2]`` export as two chains whose first
    slices are identical; grouping them lets the second slices be seen as one split.
    """
    canon: dict[fx.Node, fx.Node] = {}
    first: dict[Any, fx.Node] = {}
    groups: dict[fx.Node, list[fx.Node]] = {}

    def key(x: Any) -> Any:
        if isinstance(x, fx.Node):
            return ("node", canon.get(x, x))
        if isinstance(x, (list, tuple)):
            return (type(x).__name__, *(key(v) for v in x))
        if isinstance(x, dict):
            return ("dict", *((k, key(v)) for k, v in sorted(x.items())))
        try:
            hash(x)
        except TypeError:
            return ("id", id(x))
        return (type(x).__name__, x)

    for n in nodes:
        if n.op != "call_function":
            continue
        k = (n.target, key(n.args), key(n.kwargs))
        c = first.setdefault(k, n)
        canon[n] = c
        groups.setdefault(c, []).append(n)
    return {n: groups[c] for n, c in canon.items()}


_SLICES = ("aten.select", "aten.slice", "aten.narrow")


def _is_split(node: fx.Node, equivalents: dict[fx.Node, list[fx.Node]]) -> bool:
    """Whether a select/slice is one of a set that together cover its input along one dim.

    The input's consumers count together with those of nodes equivalent to the input.
    Consumers that read the whole tensor do not matter: in rotary embeddings
    ``x * cos + cat(-x[..., d/2:], x[..., :d/2]) * sin`` the two slices split ``x``
    (they move relevance) although ``x`` also feeds the product with ``cos``.
    """
    src = node.args[0]
    if not isinstance(src, fx.Node):
        return False
    val = src.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return False
    sources = equivalents.get(src, [src])
    dims: set[int] = set()
    covered: set[int] = set()
    for user in (u for s in sources for u in s.users):
        name = op_name(user.target)
        if name not in _SLICES or user.args[0] not in sources:
            continue  # a consumer of the whole tensor: it neither splits nor pools
        dim = user.args[1] if len(user.args) > 1 else 0
        dim = dim % val.dim()
        dims.add(dim)
        size = val.shape[dim]
        if not isinstance(size, int):
            # a symbolic (batch) size: only a full slice covers it
            if name == "aten.slice" and _slice_bounds(user, None) == (0, None):
                covered.add(-1)
                continue
            return False
        if name == "aten.select":
            covered.add(user.args[2] % size)
        else:
            start, end = _slice_bounds(user, size)
            step = user.args[4] if len(user.args) > 4 else 1
            covered.update(range(start, end, step))
    if len(dims) != 1:
        return False
    size = val.shape[dims.pop()]
    return covered == {-1} if not isinstance(size, int) else covered == set(range(size))


_PADS = ("aten.pad", "aten.constant_pad_nd")


def _undoes_pad(node: fx.Node, limit: int = 256) -> bool:
    """Whether a slice crops away exactly what a pad upstream in the same module added.

    Window attention pads its input to a multiple of the window and crops the
    result back; the crop moves relevance, it pools nothing.
    """
    if op_name(node.target) != "aten.slice" or not isinstance(node.args[0], fx.Node):
        return False
    val = node.args[0].meta.get("val")
    step = node.args[4] if len(node.args) > 4 else 1
    if not isinstance(val, torch.Tensor) or step != 1:
        return False
    rank = val.dim()
    dim = (node.args[1] if len(node.args) > 1 else 0) % rank
    size = val.shape[dim]
    if not isinstance(size, int):
        return False
    start, end = _slice_bounds(node, size)
    home = _module_stack(node)[-1][0] if _module_stack(node) else None
    seen: set[fx.Node] = set()
    todo = [node.args[0]]
    while todo and len(seen) < limit:
        n = todo.pop()
        if n in seen or n.op != "call_function":
            continue
        seen.add(n)
        if home is not None and home not in {p for p, _ in _module_stack(n)}:
            continue
        if op_name(n.target) in _PADS and _pad_matches(n, rank, dim, size, start, end):
            return True
        todo.extend(n.all_input_nodes)
    return False


def _pad_matches(pad: fx.Node, rank: int, dim: int, size: int, start: int, end: int) -> bool:
    out = pad.meta.get("val")
    widths = list(pad.args[1]) if len(pad.args) > 1 else []
    i = rank - 1 - dim
    if not isinstance(out, torch.Tensor) or out.dim() != rank or out.shape[dim] != size:
        return False
    if len(widths) < 2 * i + 2:
        return False
    left, right = widths[2 * i], widths[2 * i + 1]
    return bool(left or right) and (start, end) == (left, size - right)


def _slice_bounds(node: fx.Node, size: int | None) -> tuple[int, Any]:
    args = list(node.args) + [None] * 5
    if op_name(node.target) == "aten.narrow":
        start, length = args[2], args[3]
        return (start, start + length) if size is not None else (start, None)
    start = args[2] if args[2] is not None else 0
    end = args[3]
    if size is None:
        big = end is None or (isinstance(end, int) and end >= 2**62)
        return (start, None if big else end)
    start = start + size if start < 0 else start
    end = size if end is None else (end + size if end < 0 else min(end, size))
    return (max(start, 0), end)


def _leaves(node: fx.Node) -> list[Any]:
    return torch.utils._pytree.tree_leaves((node.args, node.kwargs))


#: ops an index tensor may pass through and still be "the token ids" of a user input
_INDEX_MOVES = {
    "aten.view",
    "aten._unsafe_view",
    "aten.reshape",
    "aten.flatten",
    "aten.unsqueeze",
    "aten.squeeze",
    "aten.expand",
    "aten.contiguous",
    "aten.clone",
    "aten._to_copy",
    "aten.to",
    "aten.alias",
    "aten.detach",
    "aten.lift_fresh_copy",
}


def _direct_input(index: Any, inputs: dict[fx.Node, int]) -> int | None:
    """The user input an index tensor is, up to data movement (else None)."""
    while isinstance(index, fx.Node):
        if index in inputs:
            return inputs[index]
        if index.op != "call_function" or op_name(index.target) not in _INDEX_MOVES:
            return None
        index = index.args[0] if index.args else None
    return None


def _is_lookup(n: fx.Node) -> bool:
    """An embedding lookup: ``aten.embedding(weight, indices)`` with integer indices."""
    if op_name(n.target) != "aten.embedding" or len(n.args) < 2:
        return False
    weight, index = n.args[0], n.args[1]
    return isinstance(weight, fx.Node) and isinstance(index, fx.Node) and not _floating(index.meta.get("val"))


def _live_nodes(
    program: Program, nodes: list[fx.Node]
) -> tuple[dict[int, fx.Node], dict[fx.Node, int], set[fx.Node], set[fx.Node]]:
    """Relevance sources and the nodes that carry relevance (floats computed from a source).

    Sources are float user inputs and embedding lookups.  A lookup whose indices are an
    integer user input (up to data movement) is a *token* source: its relevance, summed
    over the hidden dimension, is that input's relevance.  Only where no lookup reads any
    input directly (ids offset or taken modulo first) are the lookups indexed by ints
    computed from an input its token sources, so that position ids computed from the ids
    or from an attention mask never count as tokens.  Every other lookup (position ids,
    token types from a buffer, ...) is a source too, so that the relevance it receives is
    not lost, but it is reported only as an embedding
    (``Explanation.embeddings``), never as tokens.
    """
    placeholders = {n.name: n for n in nodes if n.op == "placeholder"}
    float_sources: dict[int, fx.Node] = {}
    int_inputs: dict[fx.Node, int] = {}
    for i, name in enumerate(program.user_inputs):
        val = placeholders[name].meta.get("val")
        if isinstance(val, torch.Tensor):
            if val.is_floating_point():
                float_sources[i] = placeholders[name]
            elif not val.is_complex():
                int_inputs[placeholders[name]] = i
    token_sources: dict[fx.Node, int] = {}
    derived: dict[fx.Node, int] = {}  # lookups indexed by ints computed from a user input
    int_origin = dict(int_inputs)
    embeddings: set[fx.Node] = set()
    live: set[fx.Node] = set(float_sources.values())
    for n in nodes:
        if n.op != "call_function":
            continue
        ins = n.all_input_nodes
        if n not in int_origin:
            origins = [int_origin[a] for a in ins if a in int_origin]
            if origins and not _floating(n.meta.get("val")):
                int_origin[n] = origins[0]
        if _is_lookup(n) and n.args[0] not in live:
            origin = _direct_input(n.args[1], int_inputs)
            if origin is not None:
                token_sources[n] = origin
            elif n.args[1] in int_origin:
                derived[n] = int_origin[n.args[1]]
            embeddings.add(n)
            live.add(n)
            continue
        if is_constant(n.target) or is_statistic(n):
            continue
        if any(a in live for a in ins) and _floating(n.meta.get("val")):
            live.add(n)
    # no lookup reads an input directly (ids offset, taken modulo, ...): the lookups indexed
    # by ints computed from the inputs are the tokens
    if not token_sources:
        token_sources.update(derived)
    return float_sources, token_sources, live, embeddings


def _relevant_nodes(program: Program, nodes: list[fx.Node], live: set[fx.Node], sources: Any) -> set[fx.Node]:
    """Live nodes on a path to the output; an error if there are none."""
    output = nodes[-1]
    relevant: set[fx.Node] = set()
    stack = [a for a in output.all_input_nodes if a in live]
    while stack:
        n = stack.pop()
        if n in relevant:
            continue
        relevant.add(n)
        if n not in sources:
            stack.extend(a for a in n.all_input_nodes if a in live)
    if not relevant:
        _no_input(program, nodes)
    return relevant


def _no_input(program: Program, nodes: list[fx.Node]) -> None:
    placeholders = {n.name: n for n in nodes if n.op == "placeholder"}
    kinds = ", ".join(
        f"{label}: {placeholders[name].meta['val'].dtype}"
        for label, name in zip(program.input_labels, program.user_inputs)
        if isinstance(placeholders[name].meta.get("val"), torch.Tensor)
    )
    raise InputError(
        "no input of the model can receive relevance: expected a floating-point input, or "
        f"integer token ids that reach an embedding lookup; got {kinds or 'no tensor inputs'}."
    )


def bind(
    program: Program,
    model: nn.Module,
    rule_set: RuleSet,
    overrides: Mapping[OverrideKey, Any],
    strict: bool,
) -> Bound:
    nodes = list(program.graph.nodes)
    float_sources, token_sources, live, lookups = _live_nodes(program, nodes)
    relevant = _relevant_nodes(program, nodes, live, lookups)
    if not any(n in relevant for n in [*token_sources, *float_sources.values()]):
        _no_input(program, nodes)
    embeddings = {n: _embedding_path(n) for n in nodes if n in lookups and n in relevant}
    inputs = {n: i for i, name in enumerate(program.user_inputs) for n in nodes if n.name == name}
    direct = {n for n in token_sources if _direct_input(n.args[1], inputs) is not None}

    # first weighted layers: no weighted op upstream of their live input
    after_weighted: set[fx.Node] = set()
    layouts = batch_layouts(nodes, live, program.batch_symbols, program.static_batch)
    bindings: dict[fx.Node, Binding] = {}
    unbound: list[str] = []
    norm_overrides = _merge(overrides)
    equivalents = _equivalents(nodes)
    regions = find_regions(nodes, live & relevant)
    inside = {m for r in regions.values() for m in r.nodes if m is not r.output}
    for n in nodes:
        if n.op != "call_function" or n not in live:
            continue
        region = regions.get(n)
        node_leaves = region.leaves if region is not None else [x for x in _leaves(n) if isinstance(x, fx.Node)]
        flags = [x in live for x in node_leaves]
        upstream = any(x in after_weighted for x in node_leaves if x in live)
        split = op_name(n.target) in SELECT and (_is_split(n, equivalents) or _undoes_pad(n))
        if region is not None:
            category = Category.ACTIVATION
        else:
            category = categorize(n, flags, split) if n not in lookups else Category.EMBEDDING
        if category in WEIGHTED_CATEGORIES or upstream:
            after_weighted.add(n)
        if n not in relevant or n in lookups or n in inside:
            continue
        stack_ = _module_stack(n) if region is None else _stack_entries(region.stack)
        path, cls = (_clean_path(stack_[-1][0]), stack_[-1][1]) if stack_ else ("", "")
        info = NodeInfo(
            node=n,
            category=category,
            live=flags,
            module_path=path,
            module_class=cls.rsplit(".", 1)[-1],
            first=category in WEIGHTED_CATEGORIES and not upstream,
            out_layout=layouts.get(n),
            in_layouts=[layouts.get(x) for x in node_leaves],
        )
        if n.target is operator.getitem:
            bindings[n] = Binding(info, Pass(), "structural")
            continue
        rule, source = _match(info, stack_, model, norm_overrides, rule_set)
        if rule is None:
            if strict:
                raise MissingRuleError(_missing_message(info, rule_set))
            rule, source = Pass(), "gradient (no rule; strict=False)"
            unbound.append(full_op_name(n.target))
        rule.check(info)
        bindings[n] = Binding(info, rule, source, region)
    return Bound(program, bindings, float_sources, token_sources, unbound, embeddings, direct)


def _embedding_path(node: fx.Node) -> str:
    """The module path of an embedding lookup (its node name where it has none)."""
    stack = _module_stack(node)
    return _clean_path(stack[-1][0]) if stack else node.name


def _merge(overrides: Mapping[OverrideKey, Any]) -> dict[tuple[str, Any], Rule]:
    merged = dict(_REGISTRY)
    for key, rule in overrides.items():
        merged[_normalize_key(key)] = as_rule(rule)
    return merged


def _match(
    info: NodeInfo,
    stack: list[tuple[str, str]],
    model: nn.Module,
    overrides: dict[tuple[str, Any], Rule],
    rule_set: RuleSet,
) -> tuple[Rule | None, str]:
    if overrides and info.category in COMPUTING:
        names = [(k[1], r) for k, r in overrides.items() if k[0] == "name"]
        classes = [(k[1], r) for k, r in overrides.items() if k[0] == "class"]
        paths = [_clean_path(p) for p, _ in reversed(stack)]
        for path in paths:
            for pattern, rule in names:
                if fnmatch.fnmatchcase(path, pattern):
                    return rule, f"name '{pattern}'"
        for path in paths:
            module = _submodule(model, path)
            for cls, rule in classes:
                if module is not None and isinstance(module, cls):
                    return rule, f"class {cls.__name__}"
    if overrides:
        full, short = full_op_name(info.node.target), op_name(info.node.target)
        for key in (("op", full), ("op", short)):
            if key in overrides:
                return overrides[key], f"op {key[1]}"
    return rule_set.rule_for(info), "default"


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _missing_message(info: NodeInfo, rule_set: RuleSet) -> str:
    op = full_op_name(info.node.target)
    where = f"module '{info.module_path}' ({info.module_class})" if info.module_path else "the model's own forward"
    return (
        f"no rule for op {op} (node '{info.node.name}', traced in {where}) in rule set "
        f"{type(rule_set).__name__}. Register one, e.g.:\n"
        f'    relprop.register_rule("{op}", {rule_set.suggestion()})\n'
        "or pass overrides={...} to relprop.trace, or strict=False to pass relevance through "
        "such ops by their gradient."
    )
