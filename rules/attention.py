"""What the attention rules of every rule family share: a ``scaled_dot_product_attention``
node's arguments, its masks, and the softmax with constant statistics.

absLRP (:mod:`~relprop.rules.abslrp`), the classic rules (:mod:`~relprop.rules.lrp`) and
AttnLRP (:mod:`~relprop.rules.attnlrp`) all decompose the op into
s = (q·scale)·kᵀ (+ mask), p = softmax(s), o = p·v, and read it from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # base imports this module (through local): annotations only
    from .base import Context

__all__ = [
    "Attention",
    "apply_mask",
    "attention_inputs",
    "is_masked",
    "masked_softmax",
    "repeat_kv",
    "unrepeat_kv",
]


class Attention(NamedTuple):
    """The arguments of a ``scaled_dot_product_attention`` node (unpacks as a 7-tuple)."""

    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None
    causal: bool
    scale: float
    #: grouped-query attention: how many query heads share each key/value head
    groups: int

    def scores(self) -> Tensor:
        """s = (q·scale)·kᵀ with the mask applied (keys repeated for grouped-query attention)."""
        keys = repeat_kv(self.k, self.groups)
        return apply_mask((self.q * self.scale) @ keys.transpose(-2, -1), self.mask, self.causal)


def attention_inputs(ctx: Context) -> Attention:
    """(q, k, v, mask, is_causal, scale, kv_repeat) of a scaled_dot_product_attention node."""
    args, kwargs = ctx.args()
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound: dict[str, Any] = dict(zip(names, args))
    bound.update(kwargs)
    q, k, v = bound["query"], bound["key"], bound["value"]
    scale = bound.get("scale")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    groups = q.shape[-3] // k.shape[-3] if q.dim() >= 3 and k.shape[-3] != q.shape[-3] else 1
    return Attention(q, k, v, bound.get("attn_mask"), bool(bound.get("is_causal", False)), scale, groups)


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


def is_masked(x: Tensor) -> Tensor:
    """Entries that an attention mask removed: -inf, or below half the dtype's minimum."""
    return x <= torch.finfo(x.dtype).min / 2


def masked_softmax(x: Tensor, dim: int) -> Tensor:
    """softmax with max and denominator treated as constants (docs/semantics.md §Softmax).

    A row that a mask removed entirely (a padded query under a causal mask) is all
    zeros, as ``scaled_dot_product_attention`` computes it, not 0/0.
    """
    m = x.detach().amax(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).min)
    e = torch.exp(x - m)
    den = e.detach().sum(dim=dim, keepdim=True)
    return e / torch.where(den > 0, den, torch.ones((), dtype=den.dtype, device=den.device))


def repeat_kv(t: Tensor, groups: int) -> Tensor:
    """Grouped-query attention: each key/value head serves ``groups`` query heads."""
    return t.repeat_interleave(groups, dim=-3) if groups > 1 else t


def unrepeat_kv(t: Tensor, groups: int) -> Tensor:
    """The gradient of :func:`repeat_kv`: the ``groups`` copies of each head summed."""
    if groups == 1:
        return t
    *lead, heads, n, d = t.shape
    return t.reshape(*lead, heads // groups, groups, n, d).sum(-3)
