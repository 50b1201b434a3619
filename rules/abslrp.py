"""absLRP: Relative Absolute Magnitude LRP (Vukadin et al., ACM TIST 2024, arXiv 2412.09311).

The rule as the paper defines it.  For a node y = f(x1..xn; θ) with output relevance R_y
(docs/semantics.md §absLRP):

    g     = R_y / (|y| + ε)
    y_abs = f(|x1|..|xn|; |θ|)
    R_xi  = xi ⊙ ∂⟨y + y_abs, g⟩/∂xi          (inputs as independent leaves)
    R_xi /= Σ|R_xi|  per sample

For a linear map this is Eq. 12 of the paper up to a constant factor:
x ⊙ (Wᵀg) + |x| ⊙ (|W|ᵀg) = 2 Σ_j (x_i w_ij)⁺ g_j.  Normalisations and softmax keep
their statistics constant (:mod:`~relprop.rules.local`); attention is the same rule
at each of its products and at its softmax (:class:`AbsAttentionRule`).

The rules try the closed forms of :mod:`~relprop.rules.abslrp_closed` first (the same
numbers without autograd, each tested against :func:`abs_step`); linear and convolution
layers keep derived weights per Graph (:mod:`~relprop.rules.derived_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import abslrp_closed as closed
from .attention import apply_mask as apply_mask  # moved to .attention; importable here as before
from .attention import attention_inputs, is_masked, masked_softmax, repeat_kv
from .base import Context, Layout, Relevance, Rule, unit_l1, vjp
from .categories import WEIGHTED_CATEGORIES
from .derived_weights import DerivedWeights as DerivedWeights  # moved to .derived_weights, as before
from .derived_weights import check_weight_cache
from .derived_weights import weight_cache_bytes as weight_cache_bytes
from .local import abs_input, local_call, unmasked

__all__ = [
    "AbsRule",
    "AbsAttentionRule",
    "DerivedWeights",
    "abs_step",
    "attention_step",
    "node_step",
    "weight_cache_bytes",
]


def _divide(R: Relevance, y: Any, eps: float, nonnegative: bool = False, inplace: bool = False) -> Relevance:
    """g = R / (|y| + ε); ``nonnegative``: y ≥ 0 is known, |y| = y; ``inplace``: into R."""
    if isinstance(R, (list, tuple)):
        return [None if r is None else r / (o.abs() + eps) for r, o in zip(R, y)]
    den = (y + eps) if nonnegative else y.abs().add_(eps)
    return R.div_(den) if inplace else R / den


def abs_step(
    f: Callable[..., Any],
    f_abs: Callable[..., Any],
    xs: Sequence[Tensor],
    xs_abs: Sequence[Tensor],
    g: Relevance,
    layouts: Sequence[Any],
    batch: int,
    keep: Sequence[Tensor | None] | None = None,
) -> list[Tensor]:
    """One absLRP step given g = R_y / |y|: x ⊙ Jᵀg + |x| ⊙ J_absᵀg, unit L1 per sample.

    ``keep`` (per input, optional) marks the entries that may receive relevance:
    scores an attention mask removed (-inf) get exactly zero.
    """
    r = vjp(f, xs, g)
    ra = vjp(f_abs, xs_abs, g)
    out = []
    for i, (x, xa, a, b, layout) in enumerate(zip(xs, xs_abs, r, ra, layouts)):
        contribution = x * a + xa * b
        mask = keep[i] if keep is not None else None
        if mask is not None:
            contribution = torch.where(mask, contribution, torch.zeros((), dtype=x.dtype))
        out.append(unit_l1(contribution, layout, batch))
    return out


def node_step(ctx: Context, g: Relevance) -> list[Tensor | None]:
    """The absLRP step of ``ctx``'s node given g = R_y / |y|: :func:`abs_step` through its local form."""
    live = ctx.live_inputs
    xs = [ctx.inputs[i] for i in live]
    xs_abs = [abs_input(ctx, x) for x in xs]

    def f(*v: Tensor) -> Any:
        return local_call(ctx, dict(zip(live, v)))

    def f_abs(*v: Tensor) -> Any:
        return local_call(ctx, dict(zip(live, v)), absolute=True)

    layouts = [ctx.info.in_layouts[i] for i in live]
    keep = [unmasked(ctx, x) for x in xs]
    rel = abs_step(f, f_abs, xs, xs_abs, g, layouts, ctx.batch, keep)
    out: list[Tensor | None] = [None] * len(ctx.inputs)
    for i, r in zip(live, rel):
        out[i] = r
    return out


class AbsRule(Rule):
    """The absLRP rule for any op (linear, conv, norms, activations, products, pooling).

    Args:
        divide: divide by |y|; False skips the division (the reference's max-pooling rule
            for VGG: ``AbsLRP(maxpool_divide=False)``).
        eps: the stabiliser added to |y| in the division.
        weight_cache: how much memory of derived weights linear and convolution layers may
            keep between explains (see [`AbsLRP`][relprop.rules.AbsLRP]).
    """

    scale_free = True  # every result is rescaled to unit L1 per pass and sample

    def __init__(self, divide: bool = True, eps: float = 1e-9, weight_cache: Any = "auto") -> None:
        self.divide = divide
        self.eps = eps
        self.weight_cache = check_weight_cache(weight_cache, type(self).__name__)

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        dense = ctx.info.category in WEIGHTED_CATEGORIES
        if dense and self.divide:
            fast = closed.output_layer(ctx, R, self.eps, self.weight_cache)
            if fast is not None:
                return fast
        if not dense:
            fast = closed.diagonal_step(ctx, R, self.eps if self.divide else None)
            if fast is not None:
                return fast
        if self.divide:
            g = _divide(R, ctx.output, self.eps, closed.nonnegative(ctx.node), ctx.hints.owns_relevance)
        else:
            g = R
        fast = self._weighted(ctx, g) if dense else closed.closed_form(ctx, g)
        if fast is not None:
            return fast
        return node_step(ctx, g)

    def _weighted(self, ctx: Context, g: Tensor) -> list[Tensor | None] | None:
        return closed.weighted(ctx, g, self.weight_cache)


class AbsAttentionRule(Rule):
    """absLRP through ``scaled_dot_product_attention``, decomposed (docs/semantics.md §Attention).

    s = (q·scale)·kᵀ (+ mask) → p = softmax(s) → o = p·v, the rule at each
    product and at the softmax; the relevance of q·scale goes to q unchanged.
    Masked-out scores receive no relevance; grouped-query attention repeats k, v.

    Args:
        eps: the stabiliser added to |y| in the divisions.
    """

    scale_free = True

    def __init__(self, eps: float = 1e-9) -> None:
        self.eps = eps

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        fast = closed.attention_closed_form(ctx, R, self.eps)
        if fast is not None:
            return fast
        return attention_step(ctx, R, self.eps)


def _softmax(s: Tensor) -> Tensor:
    return masked_softmax(s, -1)


def attention_step(ctx: Context, R: Relevance, eps: float) -> list[Tensor | None]:
    """:class:`AbsAttentionRule` by its definition: :func:`abs_step` at o = p·v, p = softmax(s), s = q·kᵀ."""
    att = attention_inputs(ctx)
    q, k, v, groups = att.q, att.k, att.v, att.groups
    live, B = ctx.live, ctx.batch
    layout = Layout(0) if ctx.info.out_layout is not None else None
    with torch.no_grad():
        s = att.scores()
        p = masked_softmax(s, -1)
    out: list[Tensor | None] = [None] * len(ctx.inputs)

    # o = p · v
    def mm(a: Tensor, b: Tensor) -> Tensor:
        return a @ repeat_kv(b, groups)

    g = R / (ctx.output.abs() + eps)
    if live[2]:
        R_p, out[2] = abs_step(mm, mm, [p, v], [p.abs(), v.abs()], g, [layout, layout], B)
    else:
        (R_p,) = abs_step(lambda a: mm(a, v), lambda a: mm(a, v.abs()), [p], [p.abs()], g, [layout], B)
    if not (live[0] or live[1]):
        return out
    # p = softmax(s): statistics constant; masked entries stay masked in the abs pass
    s_abs = torch.where(is_masked(s), s, s.abs())
    (R_s,) = abs_step(_softmax, _softmax, [s], [s_abs], R_p / (p.abs() + eps), [layout], B, [~is_masked(s)])
    # s = (q·scale) · kᵀ ; the mask is a constant offset: relevance passes to the product
    qs = q * att.scale
    with torch.no_grad():
        prod = qs @ repeat_kv(k, groups).transpose(-2, -1)

    def scores(a: Tensor, b: Tensor) -> Tensor:
        return a @ repeat_kv(b, groups).transpose(-2, -1)

    g = R_s / (prod.abs() + eps)
    R_qs, R_k = abs_step(scores, scores, [qs, k], [qs.abs(), k.abs()], g, [layout, layout], B)
    if live[0]:
        out[0] = R_qs
    if live[1]:
        out[1] = R_k
    return out
