"""The rules AttnLRP adds to the classic ones (Achtibat et al., "AttnLRP: Attention-Aware
Layer-Wise Relevance Propagation for Transformers", ICML 2024).

- :class:`SoftmaxRule`: the softmax rule (Prop. 3.1), R_x = x ⊙ (R − s Σ_j R_j) along the
  softmax dimension: gradient × input through the softmax, with its full Jacobian.  It is
  not conservative: per row, Σ_i R_x,i = Σ_i x_i R_i − (Σ_i x_i s_i) Σ_j R_j, not Σ_j R_j.
- :class:`AttnLRPAttentionRule`: ``scaled_dot_product_attention`` decomposed into
  s = (q·scale)·kᵀ + mask, p = softmax(s), o = p·v: the uniform rule (Eq. 7: each factor of
  a product of two relevance-carrying tensors gets half) at both products, the softmax
  rule in between, the mask a constant offset that absorbs nothing where it is 0.

Computed as LXT computes them (gradient × input with modified gradients): the products'
relevance is never divided by the scores, so masked and near-zero scores are exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attention import apply_mask, attention_inputs, is_masked, repeat_kv, unrepeat_kv
from .base import Context, Relevance, Rule, stabilize

__all__ = ["SoftmaxRule", "AttnLRPAttentionRule", "softmax_relevance"]


def softmax_relevance(x: Tensor, s: Tensor, R: Tensor, dim: int) -> Tensor:
    """AttnLRP's softmax rule (Prop. 3.1): x ⊙ (R − s ⊙ Σ_j R_j), entries a mask removed get 0.

    ``x`` the softmax input, ``s`` its output, ``R`` (P, *s.shape) the output relevance,
    ``dim`` the softmax dimension of x (negative or not).
    """
    d = dim % x.dim() + 1  # in R, after the pass dimension
    rel = x * (R - s * R.sum(dim=d, keepdim=True))
    return torch.where(is_masked(x), torch.zeros((), dtype=rel.dtype, device=rel.device), rel)


class SoftmaxRule(Rule):
    """AttnLRP's softmax rule: R_x = x ⊙ (R − s Σ_j R_j) (Achtibat et al. 2024, Prop. 3.1).

    Exactly what gradient × input gives through the softmax.  Not conservative: per row
    Σ_i R_x,i = Σ_i x_i R_i − (Σ_i x_i s_i) Σ_j R_j (Σ R_x = Σ R only where x is constant
    along the row's relevant entries); the difference is what the rule absorbs.
    """

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        args, _ = ctx.args()
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        if ctx.live_inputs != [0]:
            from relprop.errors import RuleError

            raise RuleError(f"SoftmaxRule expects one relevance-carrying input, node '{ctx.node.name}' has {ctx.live}")
        x, s = ctx.inputs[0], ctx.output
        out[0] = softmax_relevance(x, s.to(x.dtype), R.to(x.dtype), args[1])
        return out


class AttnLRPAttentionRule(Rule):
    """AttnLRP through ``scaled_dot_product_attention`` (Achtibat et al. 2024).

    With g_o = R / stab(o):  R_v = ½ v ⊙ pᵀg_o;  g_p = ½ g_o vᵀ;  g_s = p ⊙ (g_p − Σ_j p_j g_p,j)
    (the softmax's gradient, so R_s = s ⊙ g_s is the softmax rule);  R_q = ½ q ⊙ scale·g_s k,
    R_k = ½ k ⊙ scale·g_sᵀ q (the uniform rule on q·kᵀ; the mask is a constant offset and
    q·scale passes relevance to q).  LXT computes the same through autograd by dividing the
    gradients of q and k by 4 and of v by 2.  Grouped-query attention sums the shared heads.

    Args:
        epsilon: the ε of the ε-rule at the output ``o``.
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        q, k, v, mask, causal, scale, groups = attention_inputs(ctx)
        live = ctx.live
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        kr, vr = repeat_kv(k, groups), repeat_kv(v, groups)
        s = apply_mask((q * scale) @ kr.transpose(-2, -1), mask, causal)
        p = torch.softmax(s, -1)
        p = torch.where(torch.isnan(p), torch.zeros((), dtype=p.dtype, device=p.device), p)  # all-masked rows
        g = R / stabilize(ctx.output, self.epsilon)
        if live[2]:
            out[2] = v * unrepeat_kv(p.transpose(-2, -1) @ g, groups).mul_(0.5)
        if not (live[0] or live[1]):
            return out
        gp = (g @ vr.transpose(-2, -1)).mul_(0.5)
        gs = p * (gp - (p * gp).sum(-1, keepdim=True))
        gs = gs.mul_(0.5 * scale)
        if live[0]:
            out[0] = q * (gs @ kr)
        if live[1]:
            out[1] = k * unrepeat_kv(gs.transpose(-2, -1) @ q, groups)
        return out
