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
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .base import Context, Relevance, Rule, as_list, stabilize, vjp
from .local import local_call

__all__ = ["TaylorRule", "directional_derivative"]


def directional_derivative(fn: Callable[..., Any], primals: Sequence[Tensor]) -> list[Tensor | None]:
    """Σ_j J_j x_j: the derivative of ``fn`` at ``primals`` in the direction of ``primals``.

    One forward-mode pass; where an op has no forward-mode formula, the same number by
    differentiating a vector-Jacobian product (double backward), and where it has no second
    derivative either, from one vector-Jacobian product per output entry.  One entry per
    output (None for outputs that are not floating tensors).  A floating output left without
    a tangent counts as no formula (``scatter_reduce(..., "prod")`` has none and says
    nothing; ``torch.func.jvp`` would read it as a zero derivative).
    """
    xs = tuple(p.detach() for p in primals)
    try:
        with fwAD.dual_level():
            outs = as_list(fn(*(fwAD.make_dual(x, x) for x in xs)))
            tangents = [fwAD.unpack_dual(o).tangent if _floating(o) else None for o in outs]
    except (RuntimeError, NotImplementedError):
        return _by_double_backward(fn, xs)
    if any(_floating(o) and t is None for o, t in zip(outs, tangents)):
        return _by_double_backward(fn, xs)
    return tangents


def _by_double_backward(fn: Callable[..., Any], xs: tuple[Tensor, ...]) -> list[Tensor | None]:
    """Σ_j J_j x_j by differentiating a vector-Jacobian product; zero for a floating output
    that does not depend on the inputs."""
    with torch.enable_grad():
        leaves = [x.clone().requires_grad_(True) for x in xs]
        outs = as_list(fn(*leaves))
        result: list[Tensor | None] = [torch.zeros_like(o) if _floating(o) else None for o in outs]
        floats = [i for i, o in enumerate(outs) if _floating(o) and o.requires_grad]
        if not floats:
            return result
        vs = [torch.zeros_like(outs[i], requires_grad=True) for i in floats]
        grads = torch.autograd.grad(
            [outs[i] for i in floats], leaves, vs, create_graph=True, retain_graph=True, allow_unused=True
        )
        total = sum(((g * x).sum() for g, x in zip(grads, xs) if g is not None), torch.zeros(()))
        if not total.requires_grad:  # the op is constant in its inputs
            return result
        try:
            jx = torch.autograd.grad(total, vs, allow_unused=True)
        except (RuntimeError, NotImplementedError):  # no second derivative
            return _by_entries(fn, xs, outs, result)
    for i, j in zip(floats, jx):
        if j is not None:
            result[i] = j.detach()
    return result


def _by_entries(
    fn: Callable[..., Any], xs: tuple[Tensor, ...], outs: list[Any], result: list[Tensor | None]
) -> list[Tensor | None]:
    """(J x)_j = ⟨Jᵀe_j, x⟩: one vector-Jacobian product per output entry, in blocks."""
    for i, o in enumerate(outs):
        if not (_floating(o) and o.requires_grad):
            continue
        n, blocks = o.numel(), []
        for start in range(0, n, _BLOCK):
            k = min(_BLOCK, n - start)
            basis = torch.zeros(k, n, dtype=o.dtype, device=o.device)
            basis[torch.arange(k), torch.arange(start, start + k)] = 1
            cotangents = [basis.reshape(k, *o.shape) if j == i else None for j in range(len(outs))]
            grads = vjp(fn, xs, cotangents)  # the k products batched like passes
            blocks.append(sum((g * x).reshape(k, -1).sum(1) for g, x in zip(grads, xs)))
        result[i] = torch.cat(blocks).reshape(o.shape).detach()
    return result


#: output entries per batched vector-Jacobian product in :func:`_by_entries`
_BLOCK = 256


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
        rs = as_list(R)
        g = [None if r is None or d is None else r / stabilize(d, self.epsilon) for r, d in zip(rs, jx)]
        grads = vjp(f, xs, g if isinstance(R, (list, tuple)) else g[0])
        for i, x, r in zip(live, xs, grads):
            out[i] = x * r
        return out
