"""Attention: the decomposed SDPA rule against the same attention written out op by op.

docs/semantics.md §Attention decomposes ``scaled_dot_product_attention`` into (q·scale)·kᵀ → softmax →
attn·v with the rule at each step and the relevance of q·scale passed to q
unchanged.  A model that writes those steps out explicitly (its q·scale is a product with a
plain number, which passes relevance unchanged) must get exactly the same relevance: an
oracle that shares no code path with the SDPA rule.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import rules


class Attention(nn.Module):
    """One-head-group self-attention, SDPA or explicit, with optional masks."""

    def __init__(self, dim: int = 8, heads: int = 2, kv_heads: int | None = None, explicit: bool = False) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, self.kv_heads * self.head_dim)
        self.v = nn.Linear(dim, self.kv_heads * self.head_dim)
        self.out = nn.Linear(dim, 3)
        self.explicit = explicit

    def split(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        q = self.split(self.q(x), self.heads)
        k = self.split(self.k(x), self.kv_heads)
        v = self.split(self.v(x), self.kv_heads)
        if self.explicit:
            groups = self.heads // self.kv_heads
            if groups > 1:
                k = k.repeat_interleave(groups, dim=1)
                v = v.repeat_interleave(groups, dim=1)
            s = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
            if causal:
                n = x.shape[1]
                keep = torch.ones(n, n, dtype=torch.bool).tril()
                s = s.masked_fill(~keep, float("-inf"))
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            o = s.softmax(-1) @ v
        else:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.heads != self.kv_heads
            )
        h = o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.out(h.mean(1))


@pytest.mark.parametrize("case", ["plain", "bool_mask", "causal", "gqa"])
def test_sdpa_rule_equals_the_explicit_decomposition(case: str) -> None:
    torch.manual_seed(0)
    kv = 1 if case == "gqa" else None
    sdpa = Attention(kv_heads=kv).double().eval()
    explicit = Attention(kv_heads=kv, explicit=True).double().eval()
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    kwargs: dict = {}
    if case == "bool_mask":
        mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
        mask[1, :, :, 3:] = False  # the second sample's last two tokens are padding
        kwargs["mask"] = mask
    if case == "causal":
        kwargs["causal"] = True
    assert torch.allclose(sdpa(x, **kwargs), explicit(x, **kwargs))
    inputs = {"x": x, **kwargs}
    R_sdpa = relprop.trace(sdpa).explain(inputs, [0, 2])
    # the explicit q·scale (a product with a plain number) passes relevance unchanged, as in SDPA
    g = relprop.trace(explicit)
    R_explicit = g.explain(inputs, [0, 2])
    muls = {b.info.category for b in g.bindings if b.info.node.target == torch.ops.aten.mul.Tensor}
    assert muls == {"rescale"}
    assert R_sdpa.shape == x.shape and torch.isfinite(R_sdpa).all()
    assert torch.allclose(R_sdpa, R_explicit, atol=1e-10), (R_sdpa - R_explicit).abs().max()


def test_masked_keys_get_no_relevance_through_attention() -> None:
    """A padded token reached only through masked attention receives exactly zero."""

    class ValuesOnly(Attention):
        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            q = self.split(self.q(x[:, :1]), self.heads)  # the query is the first token only
            k = self.split(self.k(x), self.kv_heads)
            v = self.split(self.v(x), self.kv_heads)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.out(o.flatten(1).reshape(x.shape[0], -1))

    torch.manual_seed(1)
    model = ValuesOnly().double().eval()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    mask = torch.ones(2, 1, 1, 4, dtype=torch.bool)
    mask[:, :, :, 2:] = False
    for rule_set in (rules.AbsLRP(), rules.Epsilon(1e-9)):
        R = relprop.trace(model, rule_set).explain({"x": x, "mask": mask}, 1)
        assert torch.equal(R[:, 2:], torch.zeros_like(R[:, 2:])), type(rule_set).__name__
        assert R[:, :2].abs().sum() > 0


def test_attention_value_rule_conserves_relevance() -> None:
    torch.manual_seed(2)

    class NoBias(Attention):
        def __init__(self) -> None:
            super().__init__()
            for lin in (self.q, self.k, self.v, self.out):
                lin.bias = None

    model = NoBias().double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    R = relprop.trace(model, rules.Epsilon(1e-12)).explain(x, [0, 1, 2])
    logits = model(x).detach()
    assert torch.allclose(R.sum((1, 2)), logits[torch.arange(3), [0, 1, 2]], atol=1e-8)
