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

from relprop.rules.base import NodeInfo, Pass, Rule
from relprop.rules.categories import COMPUTING, WEIGHTED_CATEGORIES, Category
from relprop.rules.ops import categorize, full_op_name, is_weighted, op_name, packet_name, uncovered_reason
from relprop.rules.sets import RuleSet, as_rule

from .analysis import (
    Sources,
    clean_path,
    embedding_path,
    equivalents,
    first_weighted,
    input_leaves,
    live_nodes,
    module_stack,
    no_input,
    relevant_nodes,
    splits,
    stack_entries,
)
from .canonize import Fold, find_folds
from .errors import MissingRuleError, RuleError
from .layouts import batch_layouts
from .programs import Program
from .regions import Region, find_regions

__all__ = ["register_rule", "unregister_rule", "registered_ops", "bind", "Bound", "Binding", "OverrideKey"]

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
    or as a decorator on a [`Rule`][relprop.rules.Rule] subclass or a function
    ``(ctx, R) -> list of input relevances``.  Registrations apply to traces made
    afterwards, for every rule set; overrides given to [`trace`][relprop.trace] win over
    them.

    Args:
        key: an ATen or custom op (``"aten.cumsum"``, ``"ns::op"``, ``torch.ops.aten.cumsum``),
            an ``nn.Module`` subclass, or a module-name glob (``"encoder.layer.*.attention"``).
        rule: the rule (a [`Rule`][relprop.rules.Rule] instance or class, or a function);
            None returns a decorator that registers what it decorates.

    Returns:
        ``rule``, or the decorator when ``rule`` is None.

    Raises:
        RuleError: ``key`` is none of the above, or ``rule`` is not a rule.
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
    """Remove a registration made by [`register_rule`][relprop.register_rule].

    Args:
        key: the key it was registered under (no error if there is none).

    Raises:
        RuleError: ``key`` is not an op, an ``nn.Module`` subclass or a module-name glob.
    """
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
    #: a weighted layer with the per-channel affine steps after it folded in, ruled at the
    #: steps' output (:mod:`relprop.canonize`); ``info`` is then the layer's
    fold: Fold | None = None

    @property
    def inputs(self) -> list[fx.Node]:
        """The graph nodes whose values the rule sees as ``ctx.inputs``, in that order."""
        if self.region is not None:
            return list(self.region.leaves)
        if self.fold is not None:
            return self.fold.inputs
        return input_leaves(self.info.node)

    @property
    def reads(self) -> list[fx.Node]:
        """Every graph node whose value the rule's context is built from."""
        return self.fold.reads if self.fold is not None else self.inputs


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


def bind(
    program: Program,
    model: nn.Module,
    rule_set: RuleSet,
    overrides: Mapping[OverrideKey, Any],
    strict: bool,
) -> Bound:
    """Give every node on the relevance path of ``program`` its rule.

    The graph analysis (:mod:`relprop.analysis`) finds the relevance sources (float
    inputs, embedding lookups) and the relevant nodes: live nodes on a path from a
    source to the output.  Each relevant node is categorized and matched, most
    specific first, against ``overrides`` and the global registrations (module-name
    globs, then module classes, for computing ops only; then ops), else gets
    ``rule_set``'s default for its category (see the module docstring).  ``getitem``
    nodes pass relevance structurally.  A node no rule covers raises
    :class:`~relprop.MissingRuleError` where ``strict``, else passes relevance by its
    gradient and is listed in :attr:`Bound.unbound`.  Embedding lookups get no rule:
    they are sources.  Each rule's ``check`` runs on its node's :class:`NodeInfo`.

    Raises :class:`~relprop.InputError` where no input can receive relevance.
    """
    nodes = list(program.graph.nodes)
    sources = live_nodes(program, nodes)
    relevant = relevant_nodes(program, nodes, sources.live, sources.embeddings)
    if not any(n in relevant for n in [*sources.token_sources, *sources.float_sources.values()]):
        no_input(program, nodes)
    embeddings = {n: embedding_path(n) for n in nodes if n in sources.embeddings and n in relevant}
    bindings: dict[fx.Node, Binding] = {}
    unbound: list[str] = []
    norm_overrides = _merge(overrides)
    for n, (info, stack, region) in _node_infos(program, nodes, sources, relevant).items():
        if n.target is operator.getitem:
            bindings[n] = Binding(info, Pass(), "structural")
            continue
        rule, source = _match(info, stack, model, norm_overrides, rule_set)
        if rule is None:
            if strict:
                raise MissingRuleError(_missing_message(info, rule_set))
            rule, source = Pass(), "gradient (no rule; strict=False)"
            unbound.append(full_op_name(n.target))
        rule.check(info)
        bindings[n] = Binding(info, rule, source, region)
    if getattr(rule_set, "canonize", False):
        _fold(bindings, nodes, sources.live & relevant)
    return Bound(
        program,
        bindings,
        sources.float_sources,
        sources.token_sources,
        unbound,
        embeddings,
        sources.direct_tokens,
    )


def _node_infos(
    program: Program, nodes: list[fx.Node], sources: Sources, relevant: set[fx.Node]
) -> dict[fx.Node, tuple[NodeInfo, list[tuple[str, str]], Region | None]]:
    """Per node to bind, in graph order: its info, module stack and region (if any).

    Nodes to bind are the relevant call nodes other than embedding lookups and the
    inner ops of regions (:mod:`relprop.regions`), whose outputs stand for them.
    """
    live, lookups = sources.live, sources.embeddings
    layouts = batch_layouts(nodes, live, program.batch_symbols, program.static_batch)
    same = equivalents(nodes)
    regions = find_regions(nodes, live & relevant)
    inside = {m for r in regions.values() for m in r.nodes if m is not r.output}
    facts: dict[fx.Node, tuple[list[fx.Node], list[bool], Any]] = {}
    for n in nodes:
        if n.op != "call_function" or n not in live:
            continue
        region = regions.get(n)
        leaves = region.leaves if region is not None else input_leaves(n)
        flags = [x in live for x in leaves]
        if region is not None:
            category = Category.ACTIVATION
        else:
            category = categorize(n, flags, splits(n, same)) if n not in lookups else Category.EMBEDDING
        facts[n] = (leaves, flags, category)
    first = first_weighted(
        {n: [x for x in leaves if x in live] for n, (leaves, _, _) in facts.items()},
        {n for n, (_, _, category) in facts.items() if category in WEIGHTED_CATEGORIES},
    )
    infos = {}
    for n, (leaves, flags, category) in facts.items():
        if n not in relevant or n in lookups or n in inside:
            continue
        region = regions.get(n)
        stack = module_stack(n) if region is None else stack_entries(region.stack)
        path, cls = (clean_path(stack[-1][0]), stack[-1][1]) if stack else ("", "")
        info = NodeInfo(
            node=n,
            category=category,
            live=flags,
            module_path=path,
            module_class=cls.rsplit(".", 1)[-1],
            first=n in first,
            out_layout=layouts.get(n),
            in_layouts=[layouts.get(x) for x in leaves],
        )
        infos[n] = (info, stack, region)
    return infos


def _fold(bindings: dict[fx.Node, Binding], nodes: list[fx.Node], live: set[fx.Node]) -> None:
    """Canonization (:mod:`relprop.canonize`): each weighted layer followed by per-channel
    affine steps that bound by default is replaced by one binding at the steps' output, with
    the layer's rule, seeing the folded layer.  A step a user override matched stays unfolded."""
    weighted = {n for n, b in bindings.items() if b.info.category in WEIGHTED_CATEGORIES and b.region is None}
    for output, fold in find_folds(nodes, live, weighted).items():
        steps = [bindings.get(m) for m in fold.nodes[1:]]
        if any(b is None or b.region is not None or b.source not in ("default", "structural") for b in steps):
            continue
        layer = bindings[fold.layer]
        for m in fold.nodes:
            del bindings[m]
        what = ", ".join(dict.fromkeys(b.info.module_path or op_name(b.info.node.target) for b in steps))
        bindings[output] = Binding(layer.info, layer.rule, f"{layer.source}; {what} folded in", fold=fold)


def registered_ops(overrides: Mapping[OverrideKey, Any]) -> set[str]:
    """The ops (``ns.name``) that a global registration or ``overrides`` gives a rule."""
    keys = list(_REGISTRY) + [_normalize_key(k) for k in overrides]
    return {packet_name(k[1]) for k in keys if k[0] == "op"}


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
        paths = [clean_path(p) for p, _ in reversed(stack)]
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


def _why_uncovered(info: NodeInfo) -> str:
    """The documented reason no rule covers a node (docs/semantics.md §Binding and overrides)."""
    if info.category is None:
        reason = uncovered_reason(info.node)
        if reason is not None:
            return reason
        if is_weighted(info.node.target):
            return "relevance would flow into its weights (a weight that is itself computed from an input)"
        return "its category is unknown"
    return f"the rule set has no rule for its category '{info.category}'"


def _register_key(target: Any) -> str:
    """The string :func:`register_rule` takes for an op: ``aten.x.default`` or ``ns::x``."""
    name = full_op_name(target)
    namespace = getattr(target, "namespace", "aten")
    return name if namespace == "aten" else f"{namespace}::{name.split('.', 1)[1].rsplit('.', 1)[0]}"


def _missing_message(info: NodeInfo, rule_set: RuleSet) -> str:
    op = full_op_name(info.node.target)
    where = f"module '{info.module_path}' ({info.module_class})" if info.module_path else "the model's own forward"
    return (
        f"no rule for op {op} (node '{info.node.name}', traced in {where}) in rule set "
        f"{type(rule_set).__name__}: {_why_uncovered(info)}. Register one, e.g.:\n"
        f'    relprop.register_rule("{_register_key(info.node.target)}", {rule_set.suggestion()})\n'
        "or pass overrides={...} to relprop.trace, or strict=False to pass relevance through "
        "such ops by their gradient."
    )
