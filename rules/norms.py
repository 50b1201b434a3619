"""Normalisations as the linear maps they are once their scale is held constant.

Layer norm and group norm compute y = w ⊙ (x − μ(x)) / σ(x) + b.  Holding the
standard deviation σ constant (and only σ: the mean stays part of the map) leaves
an affine map of x, per row (layer norm) or per group (group norm):

    y_j = Σ_i x_i A_ij + b_j,   A_jj = (1 − 1/N) w_j / σ,   A_ij = −w_j / (N σ)  (i ≠ j)

with N the number of entries normalised together.  This is how AttnLRP treats
LayerNorm (Achtibat et al., ICML 2024; LXT's ``layer_norm_forward`` detaches σ and
lets the gradient × input framework propagate the rest), and how the classic rule
sets treat it too: the set's weighted rule (ε, z⁺, αβ, γ, ...) applied to A.

Every column of A has one diagonal entry and N − 1 equal off-diagonal entries, so
A is stored as two tensors shaped like x, stacked in one tensor ``W`` (2, *x.shape):
``W[0]`` the diagonal entries D_j, ``W[1]`` the off-diagonal entries C_j.  A weight
rule that maps each entry of A by the same function h (h(A) = A⁺, |A|, A + γA⁺, A²,
1) maps the stack the same way, entry by entry, and the products stay O(N):

    f(x; W)_j  = (D_j − C_j) x_j + C_j Σ_i x_i
    (Wᵀg)_i   = (D_i − C_i) g_i + Σ_j C_j g_j

RMSNorm (no centering) has a diagonal A: every rule on it is the identity up to
its stabiliser, so the rule sets give it the identity rule, the same as its
written-out form ``x · rsqrt(mean(x²) + ε) · w`` (a rescaling by a statistic).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import Context
from .ops import op_name

__all__ = ["BATCH_NORMS", "CENTERING_NORMS", "NormMap", "eval_batch_norm", "norm_map"]

#: normalisations whose held-constant form is a (non-diagonal) linear map
CENTERING_NORMS = frozenset({"aten.layer_norm", "aten.native_layer_norm", "aten.group_norm", "aten.native_group_norm"})

#: batch norms on running statistics: op name -> positions of (weight, bias, running mean,
#: running var, eps); ``aten.batch_norm`` only with ``training=False`` (argument 5)
BATCH_NORMS = {
    "aten._native_batch_norm_legit_no_training": (1, 2, 3, 4, 6),
    "aten.batch_norm": (1, 2, 3, 4, 7),
}


def eval_batch_norm(node: Any) -> bool:
    """Whether a graph node is a batch norm on running statistics: a per-channel affine map."""
    name = op_name(node.target)
    if name not in BATCH_NORMS:
        return False
    args = node.args
    _, _, im, iv, ie = BATCH_NORMS[name]
    if len(args) <= ie or node.kwargs or args[im] is None or args[iv] is None:
        return False
    return name != "aten.batch_norm" or not args[5]


def _get(args: tuple, i: int, default: Any = None) -> Any:
    return args[i] if len(args) > i and args[i] is not None else default


class NormMap:
    """A normalisation node as x ↦ f(x; W) + b with σ constant (see the module docstring).

    ``x`` is the relevance-carrying input, ``w`` the stacked (D, C) entries of A,
    ``b`` the bias broadcast against x (or None), ``index`` the input's position.
    """

    def __init__(self, x: Tensor, a: Tensor, c: Tensor, b: Tensor | None, groups: int | None, dims: tuple[int, ...]):
        self.index = 0
        self.x = x
        self.b = b
        self._a, self._c = a, c  # D − C and C, broadcastable against x
        self._groups = groups  # group norm: the number of groups along dimension 1
        self._dims = dims  # layer norm: the normalised dimensions

    @property
    def w(self) -> Tensor:
        """The stacked entries (D, C) of A, each shaped like x (built when a weight rule asks)."""
        return torch.stack([(self._a + self._c).expand_as(self.x), self._c.expand_as(self.x)])

    def jt_of_a(self, g: Tensor) -> Tensor:
        """Aᵀg per pass for the map itself, without building :attr:`w` (the ε-rule's product)."""
        return self._a * g + self._sum(self._c * g)

    def _sum(self, t: Tensor) -> Tensor:
        """Σ over each row or group of ``t`` (shaped like x, or (P, *x.shape)), broadcast back."""
        if self._groups is None:
            shift = t.dim() - self.x.dim()
            return t.sum(dim=tuple(d + shift for d in self._dims), keepdim=True)
        lead = t.shape[: t.dim() - self.x.dim() + 1]  # (P, n) or (n,)
        grouped = t.reshape(*lead, self._groups, -1)
        return grouped.sum(-1, keepdim=True).expand_as(grouped).reshape(t.shape)

    def f(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        """Σ_i x_i A_ij (+ b) for the map with stacked entries ``w``."""
        d, c = w[0], w[1]
        y = (d - c) * x + c * self._sum(x)
        return y if b is None else y + b

    def jt(self, w: Tensor, g: Tensor) -> Tensor:
        """Aᵀg per pass: g (P, *x.shape) -> (P, *x.shape)."""
        d, c = w[0], w[1]
        return (d - c) * g + self._sum(c * g)


def norm_map(ctx: Context) -> NormMap | None:
    """The linear map of a layer-norm or group-norm node whose only live input is x, else None."""
    name = op_name(ctx.op)
    if name not in CENTERING_NORMS or ctx.live_inputs != [0]:
        return None
    args, kwargs = ctx.args()
    x = args[0]
    if name in ("aten.layer_norm", "aten.native_layer_norm"):
        shape = list(args[1])
        w, b = _get(args, 2, kwargs.get("weight")), _get(args, 3, kwargs.get("bias"))
        eps = _get(args, 4, kwargs.get("eps", 1e-5))
        dims = tuple(range(x.dim() - len(shape), x.dim()))
        n = 1
        for s in shape:
            n *= s
        sigma = torch.sqrt(x.var(dim=dims, keepdim=True, unbiased=False) + eps)
        a = (w if w is not None else x.new_ones(())) / sigma
        return NormMap(x, a, a / -n, b, None, dims)
    # group norm: aten.group_norm(x, groups, w, b, eps) / native_group_norm(x, w, b, N, C, HxW, groups, eps)
    if name == "aten.group_norm":
        groups = args[1]
        w, b = _get(args, 2, kwargs.get("weight")), _get(args, 3, kwargs.get("bias"))
        eps = _get(args, 4, kwargs.get("eps", 1e-5))
    else:
        w, b, groups, eps = args[1], args[2], args[6], args[7]
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, groups, -1)
    n = grouped.shape[-1]
    sigma = torch.sqrt(grouped.var(dim=-1, keepdim=True, unbiased=False) + eps)
    sigma = sigma.expand(batch, groups, n).reshape(x.shape)
    per_channel = (channels,) + (1,) * (x.dim() - 2)
    a = (w.reshape(per_channel) if w is not None else x.new_ones(())) / sigma
    return NormMap(x, a, a / -n, None if b is None else b.reshape(per_channel), groups, ())
