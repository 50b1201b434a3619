"""Transposed products Jᵀg of weighted ops, without a second forward.

For a linear or convolution op z = f(x; W), Jᵀg with respect to x depends only
on W, so the rules that need ``Wᵀg`` and ``|W|ᵀg`` (absLRP, docs/semantics.md §Computation
"Performance principles") get them from one backward product each, with the
pass dimension folded into the batch.  Ops not listed return None and the
caller falls back to autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Context
from .ops import op_name

__all__ = ["input_product", "input_product_in_blocks", "supports"]

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
        return g @ weight
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
