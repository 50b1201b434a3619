"""absLRP: Relative Absolute Magnitude LRP (Vukadin et al., ACM TIST 2024, arXiv 2412.09311).

For a node y = f(x1..xn; θ) with output relevance R_y (DESIGN.md, "absLRP"):

    g     = R_y / (|y| + ε)
    y_abs = f(|x1|..|xn|; |θ|)
    R_xi  = xi ⊙ ∂⟨y + y_abs, g⟩/∂xi          (inputs as independent leaves)
    R_xi /= Σ|R_xi|  per sample

For a linear map this is Eq. 12 of the paper up to a constant factor:
x ⊙ (Wᵀg) + |x| ⊙ (|W|ᵀg) = 2 Σ_j (x_i w_ij)⁺ g_j.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Context, Layout, Relevance, Rule, sample_l1, vjp
from .local import abs_input, is_masked, local_call, masked_softmax, unmasked
from .products import input_product

__all__ = ["AbsRule", "AbsAttentionRule", "abs_step"]


def _divide(R: Relevance, y: Any, eps: float) -> Relevance:
    if isinstance(R, (list, tuple)):
        return [None if r is None else r / (o.abs() + eps) for r, o in zip(R, y)]
    return R / (y.abs() + eps)


def _unit_l1(R: Tensor, layout: Any, batch: int) -> Tensor:
    """R rescaled per pass and sample to Σ|R| = 1 (all-zero stays zero)."""
    total = sample_l1(R, layout, batch)
    return R / total.clamp_min(torch.finfo(R.dtype).tiny)


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
        out.append(_unit_l1(contribution, layout, batch))
    return out


class AbsRule(Rule):
    """The absLRP rule for any op (linear, conv, norms, activations, products, pooling).

    ``divide=False`` skips the division by |y| (the reference's max-pooling rule
    for VGG: ``AbsLRP(maxpool_divide=False)``).
    """

    def __init__(self, divide: bool = True, eps: float = 1e-9) -> None:
        self.divide = divide
        self.eps = eps

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        g = _divide(R, ctx.output, self.eps) if self.divide else R
        if ctx.info.category in ("dense", "conv"):
            fast = self._weighted(ctx, g)
            if fast is not None:
                return fast
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


    def _weighted(self, ctx: Context, g: Tensor) -> list[Tensor | None] | None:
        """x ⊙ Wᵀg + |x| ⊙ |W|ᵀg from two backward products (Eq. 12), or None."""
        w = ctx.args()[0][1]
        a = input_product(ctx, w, g)
        if a is None:
            return None
        b = input_product(ctx, w.abs(), g)
        x = ctx.inputs[0]
        R = _unit_l1(x * a + x.abs() * b, ctx.info.in_layouts[0], ctx.batch)
        return [R] + [None] * (len(ctx.inputs) - 1)


class AbsAttentionRule(Rule):
    """absLRP through ``scaled_dot_product_attention``, decomposed (DESIGN.md).

    s = (q·scale)·kᵀ (+ mask) → p = softmax(s) → o = p·v, the rule at each
    product and at the softmax; the relevance of q·scale goes to q unchanged.
    Masked-out scores receive no relevance; grouped-query attention repeats k, v.
    """

    def __init__(self, eps: float = 1e-9) -> None:
        self.eps = eps

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        q, k, v, mask, causal, scale, groups = attention_inputs(ctx)
        live = ctx.live
        B = ctx.batch
        layout = Layout(0) if ctx.info.out_layout is not None else None
        eps = self.eps

        def repeat(t: Tensor) -> Tensor:
            return t.repeat_interleave(groups, dim=-3) if groups > 1 else t

        with torch.no_grad():
            s = apply_mask((q * scale) @ repeat(k).transpose(-2, -1), mask, causal)
            p = masked_softmax(s, -1)
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        # o = p · v
        def mm(a: Tensor, b: Tensor) -> Tensor:
            return a @ repeat(b)

        xs, xs_abs, lay = [p], [p.abs()], [layout]
        if live[2]:
            xs, xs_abs, lay = [p, v], [p.abs(), v.abs()], [layout, layout]
            rel = abs_step(mm, mm, xs, xs_abs, R / (ctx.output.abs() + eps), lay, B)
            out[2] = rel[1]
        else:
            rel = abs_step(lambda a: mm(a, v), lambda a: mm(a, v.abs()), xs, xs_abs,
                           R / (ctx.output.abs() + eps), lay, B)
        if not (live[0] or live[1]):
            return out
        R_p = rel[0]
        # p = softmax(s): statistics constant; masked entries stay masked in the abs pass
        s_abs = torch.where(is_masked(s), s, s.abs())
        (R_s,) = abs_step(
            lambda a: masked_softmax(a, -1),
            lambda a: masked_softmax(a, -1),
            [s], [s_abs], R_p / (p.abs() + eps), [layout], B, [~is_masked(s)],
        )
        # s = (q·scale) · kᵀ ; the mask is a constant offset: relevance passes to the product
        qs = q * scale
        with torch.no_grad():
            prod = qs @ repeat(k).transpose(-2, -1)
        g = R_s / (prod.abs() + eps)
        R_qs, R_k = abs_step(
            lambda a, b: a @ repeat(b).transpose(-2, -1),
            lambda a, b: a @ repeat(b).transpose(-2, -1),
            [qs, k], [qs.abs(), k.abs()], g, [layout, layout], B,
        )
        if live[0]:
            out[0] = R_qs
        if live[1]:
            out[1] = R_k
        return out


def attention_inputs(ctx: Context) -> tuple:
    """(q, k, v, mask, is_causal, scale, kv_repeat) of a scaled_dot_product_attention node."""
    args, kwargs = ctx.args()
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    q, k, v = bound["query"], bound["key"], bound["value"]
    scale = bound.get("scale")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    groups = q.shape[-3] // k.shape[-3] if q.dim() >= 3 and k.shape[-3] != q.shape[-3] else 1
    return q, k, v, bound.get("attn_mask"), bool(bound.get("is_causal", False)), scale, groups


def apply_mask(s: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """Scores with an SDPA mask applied: boolean masks keep True, float masks add."""
    if causal:
        L, S = s.shape[-2], s.shape[-1]
        keep = torch.ones(L, S, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill(~mask, float("-inf"))
        else:
            s = s + mask
    return s
