"""Transposed products Jᵀg of weighted ops, without a second forward.

For a linear or convolution op z = f(x; W), Jᵀg with respect to x depends only
on W, so the rules that need ``Wᵀg`` and ``|W|ᵀg`` (absLRP, docs/semantics.md §Computation
"Performance principles") get them from one backward product each, with the
pass dimension folded into the batch.  Matrix products with a constant factor
(``addmm``, ``baddbmm``, ``mm``, ``bmm``, ``matmul``: x·W or W·x, as GPT-2's ``Conv1D``
exports ``addmm(b, x, W)``) get theirs from one product with the transposed factor
(:func:`layer_product`).  At a linear layer whose output is the graph's output, the
relevance the walk starts from is zero outside the positions the target explains (a
language model's last token): only its rows that are not all zero are multiplied.  Ops
not listed return None and the caller falls back to autograd (which runs the op forward
again to differentiate it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Context
from .ops import op_name

__all__ = [
    "constant_factor",
    "factor_product",
    "feeds_output",
    "input_product",
    "input_product_in_blocks",
    "layer_product",
    "sparse_rows",
    "supports",
]

_TRANSPOSED = {
    "aten.conv1d": F.conv_transpose1d,
    "aten.conv2d": F.conv_transpose2d,
    "aten.conv3d": F.conv_transpose3d,
}


def _tuple(v: object, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = list(v)  # type: ignore[call-overload]
    return v * n if len(v) == 1 else v


def supports(ctx: Context, copies: int = 1) -> bool:
    """Whether :func:`input_product` computes ``ctx``'s product (with ``copies`` weights in one)."""
    args, kwargs = ctx.args()
    if kwargs or ctx.live_inputs != [0]:
        return False
    name = op_name(ctx.op)
    if name == "aten.linear":
        return True
    if name not in _TRANSPOSED:
        return False
    padding = args[4] if len(args) > 4 else 0
    groups = args[6] if len(args) > 6 else 1
    return not isinstance(padding, str) and (copies == 1 or groups == 1)  # "same"/"valid": autograd


def feeds_output(ctx: Context) -> bool:
    """Whether the node's value is an output of the graph: its relevance is the one the walk starts
    from, zero outside what the target explains (e.g. all positions but a language model's last)."""
    return any(user.op == "output" for user in getattr(getattr(ctx, "node", None), "users", ()))


def sparse_rows(rows: Tensor) -> Tensor | None:
    """The indices of the rows of the 2-D ``rows`` that are not all zero, if they are at most
    half of them (a relevance zero outside what a target explains); else None."""
    kept = rows.ne(0).any(1).nonzero().squeeze(1)
    return kept if 2 * kept.numel() <= rows.shape[0] else None


def _rows_product(g: Tensor, weight: Tensor) -> Tensor:
    """``g @ weight`` (over g's last dimension), multiplying only the rows of g that are not all
    zero when they are at most half of them: the others give rows of zeros."""
    rows = g.reshape(-1, g.shape[-1])
    kept = sparse_rows(rows)
    if kept is None:
        return g @ weight
    out = rows.new_zeros(rows.shape[0], weight.shape[-1])
    out.index_copy_(0, kept, rows.index_select(0, kept) @ weight)
    return out.reshape(*g.shape[:-1], weight.shape[-1])


def input_product(ctx: Context, weight: Tensor, g: Tensor, copies: int = 1) -> Tensor | None:
    """Jᵀg of x ↦ f(x; weight) for the node's op, g shaped (P, *out); None if unsupported.

    ``copies`` > 1: ``weight`` is that many weights of the op concatenated along their
    input dimension (dimension 1), and the products come back concatenated the same
    way (along x's last dimension for linear, its channels for convolutions): one
    larger product instead of several.  Grouped convolutions take only one weight.
    """
    if not supports(ctx, copies):
        return None
    name = op_name(ctx.op)
    args, _ = ctx.args()
    x = args[0]
    if name == "aten.linear":
        return _rows_product(g, weight) if feeds_output(ctx) else g @ weight
    transposed = _TRANSPOSED[name]
    stride, padding, dilation, groups = (list(args[3:7]) + [1, 0, 1, 1][len(args[3:7]) :])[:4]
    n = x.dim() - 2
    stride, padding, dilation = _tuple(stride, n), _tuple(padding, n), _tuple(dilation, n)
    # the transposed convolution can be ambiguous in size by up to stride - 1: pad to x
    extra = []
    for i in range(n):
        kernel = dilation[i] * (weight.shape[2 + i] - 1) + 1
        extra.append(x.shape[2 + i] - ((g.shape[3 + i] - 1) * stride[i] - 2 * padding[i] + kernel))
    P = g.shape[0]
    folded = g.reshape(P * x.shape[0], *g.shape[2:])
    r = transposed(folded, weight, None, stride, padding, extra, groups, dilation)
    return r.reshape(P, x.shape[0], copies * x.shape[1], *x.shape[2:])


#: matrix products: op -> argument positions of its two factors (out = [β·c +] α·a @ b)
_FACTORS = {
    "aten.mm": (0, 1),
    "aten.bmm": (0, 1),
    "aten.matmul": (0, 1),
    "aten.addmm": (1, 2),
    "aten.baddbmm": (1, 2),
}


def constant_factor(ctx: Context, index: int) -> tuple[Tensor, object] | None:
    """The other factor of the matrix product that ``ctx.inputs[index]`` is a factor of, and its
    graph argument (a node, e.g. a parameter's placeholder); None for other ops."""
    factors = _FACTORS.get(op_name(ctx.op))
    if factors is None:
        return None
    args, _ = ctx.args()
    if len(args) <= factors[1]:
        return None
    x = ctx.inputs[index]
    first, second = factors
    for mine, other in ((first, second), (second, first)):
        if args[mine] is x and args[other] is not x and isinstance(args[other], Tensor):
            graph_args = ctx.node.args
            return args[other], graph_args[other] if len(graph_args) > other else None
    return None


def factor_product(ctx: Context, index: int, weight: Tensor, g: Tensor) -> Tensor | None:
    """Jᵀg of x ↦ the node's matrix product with its other factor replaced by ``weight``.

    x is ``ctx.inputs[index]``, one factor of ``mm``, ``bmm``, ``matmul``, ``addmm`` or
    ``baddbmm`` (either one: x·W or W·x), g shaped (P, *out): ``α g·Wᵀ`` or ``α Wᵀ·g``
    with the pass dimension P as one more batch dimension.  None for other ops, for
    vectors, and where W's batch dimensions would broadcast x's (the product would need
    a sum over them); the bias of ``addmm``/``baddbmm`` does not enter Jᵀg.
    """
    factors = _FACTORS.get(op_name(ctx.op))
    if factors is None:
        return None
    args, kwargs = ctx.args()
    alpha = kwargs.get("alpha", 1)
    if set(kwargs) - {"alpha", "beta"} or len(args) != factors[1] + 1:
        return None
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        return None
    x = ctx.inputs[index]
    a, b = (args[i] for i in factors)
    if a is x and b is not x:
        left = True  # out = x·W
    elif b is x and a is not x:
        left = False  # out = W·x
    else:
        return None
    if not isinstance(weight, Tensor) or x.dim() < 2 or weight.dim() < 2:
        return None
    try:
        if torch.broadcast_shapes(x.shape[:-2], weight.shape[:-2]) != x.shape[:-2]:
            return None
    except RuntimeError:
        return None
    if left and weight.dim() == 2 and feeds_output(ctx):
        r = _rows_product(g, weight.mT)
    else:
        r = torch.matmul(g, weight.mT) if left else torch.matmul(weight.mT, g)
    return r if alpha == 1 else r * alpha


def layer_product(ctx: Context, index: int, weight: Tensor, g: Tensor) -> Tensor | None:
    """Jᵀg of a weighted op with respect to its input ``ctx.inputs[index]``, for the weight
    ``weight``: :func:`input_product` for linear and convolution layers (input 0),
    :func:`factor_product` for matrix products with a constant factor; None otherwise."""
    if index == 0:
        product = input_product(ctx, weight, g)
        if product is not None:
            return product
    return factor_product(ctx, index, weight, g)


def input_product_in_blocks(
    ctx: Context, weight: Tensor, derive: Callable[..., Tensor], g: Tensor, copies: int, block_bytes: int
) -> Tensor | None:
    """:func:`input_product` with the weight ``derive(weight)``, derived block by block of outputs.

    Jᵀg is a sum over the op's outputs, so it is the sum over blocks of output features
    (linear) or output channels (convolution) of the product with that block of the derived
    weight: at most ``block_bytes`` of it exist at a time, in one buffer refilled per block
    (``derive(part, out=buffer)``), small enough for the allocator to reuse rather than map
    fresh memory.  The same numbers as one product up to the order of summation.  None where
    :func:`input_product` does not apply, and for grouped convolutions.
    """
    if not supports(ctx, copies):
        return None
    args, _ = ctx.args()
    linear = op_name(ctx.op) == "aten.linear"
    if not linear and (args[6] if len(args) > 6 else 1) != 1:
        return None
    rows = max(1, block_bytes // (copies * weight[:1].numel() * weight.element_size()))
    g2 = g.reshape(-1, g.shape[-1]) if linear else g
    out: Tensor | None = None
    buffer: Tensor | None = None
    for start in range(0, weight.shape[0], rows):
        part = weight[start : start + rows]
        if buffer is None or buffer.shape[0] != part.shape[0]:
            buffer = derive(part)
        else:
            derive(part, out=buffer)
        if linear:
            gp = g2[:, start : start + part.shape[0]]
            out = torch.mm(gp, buffer) if out is None else out.addmm_(gp, buffer)
        else:
            r = input_product(ctx, buffer, g.narrow(2, start, part.shape[0]), copies)
            assert r is not None
            out = r if out is None else out.add_(r)
    assert out is not None
    return out.reshape(*g.shape[:-1], out.shape[-1]) if linear else out
