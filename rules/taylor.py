"""The ε-rule of an op's linearisation: the classic sets' default for ops without a closed form.

For a node y = f(x1..xn) with output relevance R_y, the contributions of the inputs are
taken from the first-order Taylor expansion along the ray from 0 to x (gradient × input):

    z_i   = x_i ⊙ ∂y/∂x_i                    (per input entry and output entry)
    R_xi  = x_i ⊙ J_iᵀ (R_y / stab(Σ_j J_j x_j))

with stab(z) = z + ε sign(z).  Σ_j J_j x_j is one forward-mode derivative of f at x in
the direction x.  For a linear op it is y minus the constants, so this is the ε-rule of
Bach et al. (2015, Eq. 58); for a product of two tensors each factor gets half (AttnLRP's
uniform rule, Achtibat et al. 2024, Eq. 7); for maximum, where or clamp it routes the
relevance to the input that was chosen.  It conserves relevance up to ε.
docs/semantics.md §Classic rule sets lists where the classic sets use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Context, Relevance, Rule, stabilize, vjp
from .local import local_call

__all__ = ["TaylorRule", "directional_derivative"]


def directional_derivative(fn: Callable[..., Any], primals: Sequence[Tensor]) -> list[Tensor | None]:
    """Σ_j J_j x_j: the derivative of ``fn`` at ``primals`` in the direction of ``primals``.

    One forward-mode pass; where an op has no forward-mode formula, the same number by
    differentiating a vector-Jacobian product (double backward).  One entry per output
    (None for outputs that are not floating tensors).
    """
    xs = tuple(p.detach() for p in primals)
    try:
        _, tangents = torch.func.jvp(fn, xs, xs)
    except (RuntimeError, NotImplementedError):
        return _by_double_backward(fn, xs)
    return [t if _floating(t) else None for t in _as_list(tangents)]


def _by_double_backward(fn: Callable[..., Any], xs: tuple[Tensor, ...]) -> list[Tensor | None]:
    with torch.enable_grad():
        leaves = [x.clone().requires_grad_(True) for x in xs]
        outs = _as_list(fn(*leaves))
        floats = [i for i, o in enumerate(outs) if _floating(o) and o.requires_grad]
        vs = [torch.zeros_like(outs[i], requires_grad=True) for i in floats]
        grads = torch.autograd.grad([outs[i] for i in floats], leaves, vs, create_graph=True, allow_unused=True)
        total = sum(((g * x).sum() for g, x in zip(grads, xs) if g is not None), torch.zeros(()))
        if not total.requires_grad:  # the op is constant in its inputs
            return [torch.zeros_like(o) if i in floats else None for i, o in enumerate(outs)]
        jx = torch.autograd.grad(total, vs, allow_unused=True)
    result: list[Tensor | None] = [None] * len(outs)
    for i, j in zip(floats, jx):
        result[i] = torch.zeros_like(outs[i]) if j is None else j.detach()
    return result


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _floating(t: Any) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


class TaylorRule(Rule):
    """R_xi = x_i ⊙ J_iᵀ (R / stab(Σ_j J_j x_j)): the ε-rule of the op's linearisation at x.

    The classic rule sets' default for pointwise functions of several relevant inputs and
    for ops no other category covers (module docstring).
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        live = ctx.live_inputs
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        if not live:
            return out
        xs = [ctx.inputs[i] for i in live]

        def f(*v: Tensor) -> Any:
            return local_call(ctx, dict(zip(live, v)))

        jx = directional_derivative(f, xs)
        rs = _as_list(R)
        g = [None if r is None or d is None else r / stabilize(d, self.epsilon) for r, d in zip(rs, jx)]
        grads = vjp(f, xs, g if isinstance(R, (list, tuple)) else g[0])
        for i, x, r in zip(live, xs, grads):
            out[i] = x * r
        return out
