"""Transposed products Jᵀg of weighted ops, without a second forward.

For a linear or convolution op z = f(x; W), Jᵀg with respect to x depends only
on W, so the rules that need ``Wᵀg`` and ``|W|ᵀg`` (absLRP, DESIGN.md
"Performance principles") get them from one backward product each, with the
pass dimension folded into the batch.  Ops not listed return None and the
caller falls back to autograd.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Context
from .ops import op_name

__all__ = ["input_product"]

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


def input_product(ctx: Context, weight: Tensor, g: Tensor, copies: int = 1) -> Tensor | None:
    """Jᵀg of x ↦ f(x; weight) for the node's op, g shaped (P, *out); None if unsupported.

    ``copies`` > 1: ``weight`` is that many weights of the op concatenated along their
    input dimension (dimension 1), and the products come back concatenated the same
    way (along x's last dimension for linear, its channels for convolutions): one
    larger product instead of several.  Grouped convolutions take only one weight.
    """
    name = op_name(ctx.op)
    args, kwargs = ctx.args()
    if kwargs or ctx.live_inputs != [0]:
        return None
    x = args[0]
    if name == "aten.linear":
        return g @ weight
    transposed = _TRANSPOSED.get(name)
    if transposed is None:
        return None
    stride, padding, dilation, groups = (list(args[3:7]) + [1, 0, 1, 1][len(args[3:7]) :])[:4]
    if isinstance(padding, str) or (copies > 1 and groups != 1):  # "same"/"valid": autograd
        return None
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
