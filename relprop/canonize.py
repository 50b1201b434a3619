"""Canonization by the graph: per-channel affine maps folded into the weighted layer before them.

A batch norm in eval mode, ``y = γ (z − μ) / √(σ² + ε) + β``, is a per-channel affine map
``y = s ⊙ z + t``.  Where ``z`` is the output of a weighted layer ``z = W x + b`` read by
nothing else, the two are one layer ``y = (s W) x + (s b + t)``; LRP's rules are defined on
that layer, not on the pre-norm ``z`` (whose values the shift can bring arbitrarily close to
zero, so that an ε- or αβ-rule dividing by them blows up).  This is what every LRP tool's
*canonizers* do to a copy of the model (Zennit's ``SequentialMergeBatchNorm``, Motzkus et al.'s
and Pahde et al.'s canonizers); here it is read off the exported graph instead, for any model
and without changing it:

- a :class:`Fold` is a weighted op (``linear``, ``addmm``, a convolution or transposed
  convolution without groups) whose output has one reader, followed by a chain of
  per-channel affine steps, each the only reader of the step before: an eval batch norm
  (``_native_batch_norm_legit_no_training`` and its ``getitem``, or ``batch_norm`` with
  ``training=False``), a multiplication or division by a constant (a number, or a tensor that
  varies along the layer's output channels only), an addition or subtraction of one;
- binding gives the chain's last node the weighted layer's rule, and the rule sees the layer
  with folded weight and bias (:meth:`Fold.arguments`, computed from the live parameters at
  every explain) and the chain's output as the layer's output; the layer and the steps get
  no rule of their own.

``docs/semantics.md`` §Canonization says which rule sets fold and what happens to the
per-channel maps that cannot be folded.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx
from torch.utils import _pytree as pytree

from relprop.rules.norms import BATCH_NORMS, eval_batch_norm
from relprop.rules.ops import op_name

from .analysis import input_leaves

__all__ = ["Fold", "find_folds"]

#: weighted ops that fold: op name -> (weight, bias) positions and the weight's output dimension
_LAYERS = {
    "aten.linear": (1, 2, 0),
    "aten.conv1d": (1, 2, 0),
    "aten.conv2d": (1, 2, 0),
    "aten.conv3d": (1, 2, 0),
    "aten.conv_transpose1d": (1, 2, 1),
    "aten.conv_transpose2d": (1, 2, 1),
    "aten.conv_transpose3d": (1, 2, 1),
    "aten.convolution": (1, 2, 0),
    "aten._convolution": (1, 2, 0),
    "aten.addmm": (2, 0, 1),
}

#: a step's per-channel scale and shift from the values of the nodes it reads
Affine = Callable[[Callable[[Any], Any]], tuple[Any, Any]]


@dataclass(eq=False)
class Fold:
    """A weighted layer and the per-channel affine steps after it, seen as one layer."""

    layer: fx.Node
    #: the node whose value is the folded layer's output (the last step)
    output: fx.Node
    #: the layer and the steps' nodes in graph order (``output`` last)
    nodes: list[fx.Node]
    #: per step, a function of a value reader giving its (scale, shift)
    steps: list[Affine]
    #: the non-live nodes the steps read (parameters, statistics, constants)
    constants: list[fx.Node]
    #: (weight, bias) argument positions of the layer, the weight's output-channel dimension
    positions: tuple[int, int, int]

    @property
    def inputs(self) -> list[fx.Node]:
        """The graph nodes the rule sees as inputs: the layer's own."""
        return input_leaves(self.layer)

    @property
    def reads(self) -> list[fx.Node]:
        """Every node whose value :meth:`arguments` reads."""
        return [*self.inputs, *self.constants]

    def describe(self) -> str:
        """The ops it stands for, for :func:`relprop.summary.format_summary`."""
        names = [op_name(n.target).removeprefix("aten.") for n in self.nodes if n.target is not operator.getitem]
        return f"{names[0]} with {' + '.join(names[1:])} folded"

    def affine(self, value: Callable[[Any], Any]) -> tuple[Any, Any]:
        """The composed per-channel (scale, shift) of the steps: y = scale ⊙ z + shift."""
        scale: Any = 1.0
        shift: Any = 0.0
        for step in self.steps:
            s, t = step(value)
            scale, shift = s * scale, s * shift + t
        return scale, shift

    def arguments(self, env: dict[fx.Node, Any]) -> tuple[list[Any], pytree.TreeSpec, list[Any]]:
        """The layer's flattened arguments with the folded weight and bias: (leaves, spec, values).

        ``leaves`` holds graph nodes where the layer reads one (the folded weight and a bias
        that is a node keep their node, with the folded value); a folded bias where the layer
        has none is a constant leaf.  ``values`` are the leaves' values.
        """

        def value(a: Any) -> Any:
            return env[a] if isinstance(a, fx.Node) else a

        iw, ib, out_dim = self.positions
        args = list(self.layer.args)
        w = value(args[iw])
        b = value(args[ib]) if len(args) > ib else None
        scale, shift = self.affine(value)
        shape = [1] * w.dim()
        shape[out_dim] = -1
        s = torch.as_tensor(scale, dtype=w.dtype, device=w.device)
        w2 = w * (s.reshape(shape) if s.dim() else s)
        b2 = (shift if b is None else b * scale + shift) + torch.zeros((), dtype=w.dtype, device=w.device)
        if b2.dim() == 0:
            b2 = b2.expand(w.shape[out_dim]).contiguous()
        b_node = args[ib] if len(args) > ib and isinstance(args[ib], fx.Node) else None
        if b_node is None:
            while len(args) <= ib:
                args.append(None)
            args[ib] = b2
        leaves, spec = pytree.tree_flatten((tuple(args), dict(self.layer.kwargs)))
        weight = args[iw]
        values = [w2 if x is weight else b2 if b_node is not None and x is b_node else value(x) for x in leaves]
        return leaves, spec, values


def _val(n: Any) -> Any:
    return n.meta.get("val") if isinstance(n, fx.Node) else None


def _layer_positions(n: fx.Node) -> tuple[tuple[int, int, int], int] | None:
    """(weight, bias, weight's output dim) and the output's channel dimension, or None."""
    name = op_name(n.target)
    if name not in _LAYERS:
        return None
    iw, ib, out_dim = _LAYERS[name]
    args = n.args
    out = _val(n)
    if not isinstance(out, Tensor) or out.dim() == 0 or n.kwargs:
        return None
    if name in ("aten.addmm", "aten.linear"):  # channels last; addmm only without beta, alpha
        return None if name == "aten.addmm" and len(args) > 3 else ((iw, ib, out_dim), out.dim() - 1)
    if name in ("aten.convolution", "aten._convolution"):
        transposed, groups = args[6], args[8]
        if transposed and groups != 1:
            return None
        return (iw, ib, 1 if transposed else 0), 1
    if "transpose" in name:
        groups = args[6] if len(args) > 6 else 1
        if groups != 1:
            return None
    return (iw, ib, out_dim), 1


def _per_channel(c: Any, out: Tensor, channel: int) -> bool:
    """Whether ``c`` (a node's value or a number) varies along ``out``'s channel dim only."""
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return True
    if not isinstance(c, Tensor) or c.dim() > out.dim() or not c.dtype.is_floating_point:
        return False
    offset = out.dim() - c.dim()
    for d, size in enumerate(c.shape):
        if size != 1 and (d + offset != channel or size != out.shape[channel]):
            return False
    return True


def _flat(c: Any) -> Any:
    """A per-channel constant as a (C,) tensor, or a 0-d tensor / number when it is one value."""
    if isinstance(c, Tensor):
        return c.reshape(-1) if c.numel() > 1 else c.reshape(())
    return c


def _step(u: fx.Node, cur: fx.Node, live: set[fx.Node], channel: int) -> tuple[fx.Node, Affine, list] | None:
    """The per-channel affine step ``u`` applies to ``cur``: (its output node, affine, constants)."""
    out = _val(cur)
    name = op_name(u.target)
    if name in BATCH_NORMS:
        return _batch_norm_step(u, cur, live, channel)
    if name not in ("aten.add", "aten.sub", "aten.mul", "aten.div") or len(u.args) < 2:
        return None
    a, b = u.args[0], u.args[1]
    if (a is cur) == (b is cur):
        return None
    other = b if a is cur else a
    if isinstance(other, fx.Node) and other in live:
        return None
    if not _per_channel(_val(other) if isinstance(other, fx.Node) else other, out, channel):
        return None
    if _shape(u) != _shape(cur):
        return None
    constants = [other] if isinstance(other, fx.Node) else []
    alpha = u.kwargs.get("alpha", 1)
    if set(u.kwargs) - {"alpha"} or len(u.args) > 2:
        return None
    if name == "aten.mul":
        return u, lambda v: (_flat(v(other)), 0.0), constants
    if name == "aten.div":
        if a is not cur:
            return None
        return u, lambda v: (1.0 / _flat(v(other)), 0.0), constants
    if name == "aten.add":
        return u, lambda v: (1.0, alpha * _flat(v(other))), constants
    if a is cur:  # sub: cur − alpha·c
        return u, lambda v: (1.0, -alpha * _flat(v(other))), constants
    return u, lambda v: (-alpha, _flat(v(other))), constants  # c − alpha·cur


def _shape(n: fx.Node) -> Any:
    v = _val(n)
    return (tuple(v.shape), v.dtype) if isinstance(v, Tensor) else None


def _batch_norm_step(u: fx.Node, cur: fx.Node, live: set[fx.Node], channel: int) -> Any:
    """An eval batch norm of ``cur`` along the layer's channel dimension (dimension 1)."""
    name = op_name(u.target)
    iw, ib, im, iv, ie = BATCH_NORMS[name]
    args = u.args
    if channel != 1 or args[0] is not cur or not eval_batch_norm(u):
        return None
    w, b, mean, var, eps = args[iw], args[ib], args[im], args[iv], args[ie]
    params = [p for p in (w, b, mean, var) if isinstance(p, fx.Node)]
    if any(p in live for p in params):
        return None
    output = u
    if name == "aten._native_batch_norm_legit_no_training":
        users = list(u.users)
        if len(users) != 1 or users[0].target is not operator.getitem or users[0].args[1] != 0:
            return None
        output = users[0]
    if _shape(output) != _shape(cur):
        return None

    def affine(v: Callable[[Any], Any]) -> tuple[Any, Any]:
        scale = torch.rsqrt(v(var) + eps)
        if w is not None:
            scale = scale * v(w)
        shift = -v(mean) * scale
        if b is not None:
            shift = shift + v(b)
        return scale, shift

    return output, affine, params


def find_folds(nodes: list[fx.Node], live: set[fx.Node], weighted: set[fx.Node]) -> dict[fx.Node, Fold]:
    """Output node -> :class:`Fold`, for every weighted layer in ``weighted`` followed by
    per-channel affine steps (see the module docstring); ``live``: the relevance-carrying nodes."""
    folds: dict[fx.Node, Fold] = {}
    for n in nodes:
        if n not in weighted:
            continue
        found = _layer_positions(n)
        if found is None:
            continue
        positions, channel = found
        cur, members, steps, constants = n, [n], [], []
        while len(cur.users) == 1:
            (u,) = cur.users
            step = _step(u, cur, live, channel)
            if step is None:
                break
            output, affine, consts = step
            members += [u] if output is u else [u, output]
            steps.append(affine)
            constants += consts
            cur = output
        if steps:
            folds[cur] = Fold(n, cur, members, steps, constants, positions)
    return folds
