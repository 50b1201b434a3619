"""Relevance through data movement without autograd: the inverse permutation of the entries.

A view or reshape moves entries and nothing else, so the relevance of its input is the
relevance of its output moved back: a reshape to the input's shape, the inverse
permutation of a ``permute`` or ``transpose``, and for ``unbind`` the outputs' relevances
stacked.  These are exactly the gradients autograd would compute (the same numbers), without
running the op forward again to differentiate it.

``unbind`` writes the stacked relevance in the memory order of the op's input: a
transformer that splits one projection into queries, keys and values (``qkv.reshape(...)
.permute(...).unbind(0)``) then receives the projection's relevance by views alone, not
by a copy of a permuted tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .ops import op_name

if TYPE_CHECKING:  # base imports this module (Pass): annotations only
    from .base import Context, Relevance

__all__ = ["empty_in_layout", "moved"]


def empty_in_layout(x: Tensor, passes: int, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialized (passes, *x.shape) tensor whose entries lie in ``x``'s memory order
    (the pass dimension outermost), so the views that made ``x`` undo to contiguous views."""
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d) if x.shape[d] > 1 else 0)
    buf = x.new_empty(passes, *(x.shape[d] for d in order), dtype=dtype)
    return buf.permute(0, *(1 + order.index(d) for d in range(x.dim())))


def _reshape(ctx: Context, R: Tensor) -> Tensor:
    x = ctx.inputs[0]
    return R.reshape(R.shape[0], *x.shape)


def _permute(ctx: Context, R: Tensor) -> Tensor:
    dims = [d % ctx.inputs[0].dim() for d in ctx.args()[0][1]]
    inverse = sorted(range(len(dims)), key=dims.__getitem__)
    return R.permute(0, *(1 + d for d in inverse))


def _transpose(ctx: Context, R: Tensor) -> Tensor:
    args = ctx.args()[0]
    n = ctx.inputs[0].dim()
    a, b = (args[1] % n, args[2] % n) if len(args) == 3 else (0, 1)  # t(x): the two dimensions
    return R.transpose(1 + a, 1 + b)


_SAME_ORDER = ("aten.view", "aten._unsafe_view", "aten.reshape", "aten.flatten", "aten.unflatten")
_SAME_ORDER += ("aten.unsqueeze", "aten.squeeze")
_SINGLE: dict[str, Callable[[Context, Tensor], Tensor]] = dict.fromkeys(_SAME_ORDER, _reshape)
_SINGLE.update({"aten.permute": _permute, "aten.transpose": _transpose, "aten.t": _transpose})


def moved(ctx: Context, R: Relevance) -> list[Tensor | None] | None:
    """The relevance of a data-movement op's input (the only live one), or None for other ops."""
    name = op_name(ctx.op)
    if ctx.live_inputs != [0] or name not in _SINGLE and name != "aten.unbind":
        return None
    x = ctx.inputs[0]
    out: list[Tensor | None] = [None] * len(ctx.inputs)
    if name == "aten.unbind":
        out[0] = _unbind(ctx, x, R)
        return None if out[0] is None else out
    if not isinstance(R, Tensor) or R.shape[1:] != ctx.output.shape:
        return None
    out[0] = _SINGLE[name](ctx, R)
    return out


def _unbind(ctx: Context, x: Tensor, R: Relevance) -> Tensor | None:
    """The outputs' relevances stacked along the unbound dimension (zeros where none)."""
    args, kwargs = ctx.args()
    if kwargs or not isinstance(R, (list, tuple)) or len(R) != x.shape[args[1] % x.dim() if len(args) > 1 else 0]:
        return None
    given = [r for r in R if r is not None]
    if not given:
        return None
    dim = 1 + (args[1] % x.dim() if len(args) > 1 else 0)
    out = empty_in_layout(x, given[0].shape[0], given[0].dtype)
    for i, r in enumerate(R):
        target = out.select(dim, i)
        if r is None:
            target.zero_()
        else:
            target.copy_(r)
    return out
