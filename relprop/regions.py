"""Elementwise activations written out as several ops, seen as the one function they are.

``torch.export`` flattens a module such as GPT-2's ``NewGELUActivation``,
``0.5 · x · (1 + tanh(√(2/π) (x + 0.044715 x³)))``, into eight ATen ops.  Ruled op by op,
the product gets the uniform rule, the constant 1 absorbs relevance and the sum splits it,
where a rule set means the activation's rule (the identity rule of AttnLRP, Eq. 9; absLRP's
rule on the module, as its authors apply it to activation modules).  A *region* is one call
of a module (not the model itself) whose ops on the relevance path are all elementwise,
read exactly one relevance-carrying tensor x from outside, hand exactly one tensor y shaped
like x to the rest of the graph, and are not affine in x (a module adding a bias or scaling
is no activation).  Binding gives the region's output one rule of category ``activation``
with x as its relevance-carrying input; the region's other inputs (parameters, constants)
are inputs that carry none, and the region's own ops get no rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from relprop.rules.ops import op_name

__all__ = ["Region", "find_regions"]

#: elementwise ops that are affine in their tensor inputs (or only move them)
_AFFINE = {
    "aten.add",
    "aten.sub",
    "aten.rsub",
    "aten.mul",
    "aten.div",
    "aten.neg",
    "aten._to_copy",
    "aten.clone",
    "aten.alias",
    "aten.contiguous",
    "aten.to",
    "aten.detach",
    "aten.type_as",
}
#: same-shape copies and casts, allowed in a region although ATen does not tag them pointwise
_COPIES = {"aten._to_copy", "aten.clone", "aten.alias", "aten.contiguous", "aten.to", "aten.detach", "aten.type_as"}


@dataclass(eq=False)
class Region:
    """One call of a module that computes an elementwise function y = f(x) of one tensor.

    Calling the region evaluates f on ``(x, *others)``, the values of :attr:`leaves`, so a
    rule can re-run it like an op (absLRP runs it on |x| with absolute parameters).
    """

    output: fx.Node
    #: the region's ops in topological order, ``output`` last
    nodes: list[fx.Node]
    #: the region's inputs from outside: the relevance-carrying x first, then the others
    leaves: list[fx.Node]
    module_path: str
    module_class: str
    #: the module-stack entries down to and including the region's module
    stack: dict[str, Any] = field(default_factory=dict)

    @property
    def __name__(self) -> str:  # noqa: A003 - read by op_name() like an op's name
        return f"region:{self.module_class}"

    def __call__(self, *values: Any) -> Any:
        env: dict[fx.Node, Any] = dict(zip(self.leaves, values))
        for n in self.nodes:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), env.__getitem__)
            env[n] = n.target(*args, **kwargs)
        return env[self.output]

    def describe(self) -> str:
        """The ops it stands for, for :func:`relprop.graph.format_summary`."""
        names = sorted({op_name(n.target).removeprefix("aten.") for n in self.nodes})
        return f"{len(self.nodes)} elementwise ops ({', '.join(names)})"


def _elementwise(n: fx.Node) -> bool:
    target = n.target
    if op_name(target) in _COPIES:
        return True
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags


def _shape(n: fx.Node) -> Any:
    val = n.meta.get("val")
    return (tuple(val.shape), val.dtype) if isinstance(val, torch.Tensor) else None


def _candidate(key: str, members: list[fx.Node], live: set[fx.Node], position: dict[fx.Node, int]) -> Region | None:
    inside = set(members)
    if len(members) < 2 or not all(n.op == "call_function" and _elementwise(n) for n in members):
        return None
    outside_live = {a for n in members for a in n.all_input_nodes if a not in inside and a in live}
    if len(outside_live) != 1:
        return None
    (x,) = outside_live
    exits = [n for n in members if any(u not in inside for u in n.users)]
    if len(exits) != 1 or _shape(exits[0]) is None or _shape(exits[0]) != _shape(x):
        return None
    region_tensors = inside | {x}
    nonlinear = any(
        op_name(n.target) not in _AFFINE or sum(a in region_tensors for a in n.all_input_nodes) > 1 for n in members
    )
    if not nonlinear:
        return None
    others = sorted({a for n in members for a in n.all_input_nodes if a not in inside and a is not x}, key=position.get)
    stack = members[-1].meta.get("nn_module_stack") or {}
    keys = list(stack)
    kept = dict(list(stack.items())[: keys.index(key) + 1])
    path, cls = kept[key]
    cls = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return Region(exits[0], members, [x, *others], path, cls.rsplit(".", 1)[-1], kept)


def find_regions(nodes: list[fx.Node], live: set[fx.Node]) -> dict[fx.Node, Region]:
    """Output node -> region, for every module call that computes an elementwise activation.

    Only live nodes (computed from a relevance source) belong to regions; the outermost
    module call that qualifies wins, and regions never overlap.
    """
    position = {n: i for i, n in enumerate(nodes)}
    calls: dict[str, list[fx.Node]] = {}
    depth: dict[str, int] = {}
    for n in nodes:
        if n.op != "call_function" or n not in live:
            continue
        stack = n.meta.get("nn_module_stack") or {}
        for level, (key, (path, _)) in enumerate(stack.items()):
            if not path:  # the model itself
                continue
            calls.setdefault(key, []).append(n)
            depth[key] = level
    regions: dict[fx.Node, Region] = {}
    taken: set[fx.Node] = set()
    for key in sorted(calls, key=lambda k: depth[k]):
        members = calls[key]
        if taken.intersection(members):
            continue
        region = _candidate(key, members, live, position)
        if region is not None:
            regions[region.output] = region
            taken.update(members)
    return regions
