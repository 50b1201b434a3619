"""AttnLRP (Achtibat et al., ICML 2024) and the norms as linear maps, against independent oracles.

Float64 throughout.  No expected value comes from relprop: the oracles are

- explicit Jacobian matrices of the normalisations with σ held constant, built here with
  ``torch.autograd.functional.jacobian`` of a function written in this file, and the
  textbook formula of each rule applied to the contributions ``x_i A_ji``;
- the softmax rule R_x = x ⊙ (R − s Σ_j R_j) (Prop. 3.1) and the closed form of what it
  absorbs, computed here from the model's own forward values;
- the same attention written out op by op (matmul, softmax, matmul), whose per-op rules
  must compose to the fused ``scaled_dot_product_attention`` rule;
- gradient × input with the gradient divided by 4 at q and k and by 2 at v (how LXT
  implements AttnLRP), computed by autograd with tensor hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import rules

DT = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def stab(z: Tensor, eps: float) -> Tensor:
    """z + ε·sign(z), sign(0) = +1."""
    return torch.where(z >= 0, z + eps, z - eps)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Fn(nn.Module):
    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Tensor) -> Tensor:
        return self.fn(*args)


def node_names(graph: relprop.Graph, category: str) -> list[str]:
    return [b.info.node.name for b in graph.bindings if b.info.category == category]


# -- LayerNorm and GroupNorm as linear maps with σ held constant ------------------------------


def layer_norm_map(weight: Tensor, dims: tuple[int, ...], eps: float) -> Callable[[Tensor], Tensor]:
    """x ↦ w ⊙ (x − mean(x)) / σ, σ computed from x and held constant (the mean is not)."""

    def f(x: Tensor) -> Tensor:
        sigma = torch.sqrt(x.detach().var(dim=dims, keepdim=True, unbiased=False) + eps)
        return weight * (x - x.mean(dim=dims, keepdim=True)) / sigma

    return f


def group_norm_map(weight: Tensor, groups: int, eps: float) -> Callable[[Tensor], Tensor]:
    """One sample (C, H, W): per group of channels, w_c ⊙ (x − mean) / σ with σ held constant."""

    def f(x: Tensor) -> Tensor:
        g = x.reshape(groups, -1)
        sigma = torch.sqrt(g.detach().var(dim=-1, keepdim=True, unbiased=False) + eps)
        y = ((g - g.mean(dim=-1, keepdim=True)) / sigma).reshape(x.shape)
        return y * weight.reshape(-1, *([1] * (x.dim() - 1)))

    return f


def jacobians(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """A[b, j, i] = ∂f(x_b)_j / ∂x_b,i: one explicit matrix per sample."""
    n = x[0].numel()
    return torch.stack([torch.autograd.functional.jacobian(f, xb).reshape(n, n) for xb in x])


def spread(Z: Tensor, R: Tensor, den: Tensor) -> Tensor:
    """R_i = Σ_j Z_ji R_j / den_j, per sample (Z: (B, out, in))."""
    return (Z * (R / den)[:, :, None]).sum(1)


def norm_oracle(name: str, x: Tensor, A: Tensor, b: Tensor, R: Tensor) -> Tensor:
    """The textbook rule on the explicit map y = A x + b (x, R flattened per sample)."""
    Z = x[:, None, :] * A  # Z[b, j, i] = x_i A_ji
    if name in ("epsilon", "attnlrp"):
        return spread(Z, R, stab(Z.sum(-1) + b, 0.1))
    if name in ("zplus", "alpha2beta1"):
        alpha, beta = (1.0, 0.0) if name == "zplus" else (2.0, 1.0)
        Zp, Zn = Z.clamp(min=0), Z.clamp(max=0)  # the bias by its sign (Bach et al. 2015, Eq. 60)
        pos = spread(Zp, R, Zp.sum(-1) + b.clamp(min=0) + 1e-9)
        return alpha * pos - beta * spread(Zn, R, Zn.sum(-1) + b.clamp(max=0) - 1e-9)
    if name == "gamma":
        # Montavon et al. 2019, Eq. 7, generalized to signed inputs (Andéol et al. 2021): at a
        # unit with z_j > 0 every contribution is reinforced by γ z_ij⁺ (bias b + γb⁺), at a unit
        # with z_j < 0 by γ z_ij⁻ (bias b + γb⁻); LayerNorm's inputs and outputs take both signs
        g = 0.25
        z = Z.sum(-1) + b
        Zu, Zd = Z + g * Z.clamp(min=0), Z + g * Z.clamp(max=0)
        up = spread(Zu, R * (z > 0), stab(Zu.sum(-1) + b + g * b.clamp(min=0), 1e-6))
        down = spread(Zd, R * (z < 0), stab(Zd.sum(-1) + b + g * b.clamp(max=0), 1e-6))
        return up + down
    if name == "flat":  # uniform over each output's receptive field (its row or group)
        C = (A != 0).to(DT)
        return spread(C, R, C.sum(-1) + 1e-9)
    if name == "wsquare":
        W2 = A**2
        return spread(W2, R, W2.sum(-1) + 1e-9)
    raise AssertionError(name)


NORM_RULE_SETS: dict[str, Callable[[], rules.RuleSet]] = {
    "epsilon": lambda: rules.Epsilon(0.1),
    "attnlrp": lambda: rules.AttnLRP(0.1),
    "zplus": rules.ZPlus,
    "alpha2beta1": lambda: rules.AlphaBeta(2.0, 1.0),
    "gamma": lambda: rules.Gamma(0.25),
    "flat": rules.Flat,
    "wsquare": rules.WSquare,
}


def norm_case(kind: str) -> tuple[nn.Module, Tensor, Callable[[Tensor], Tensor]]:
    """A norm with random weight and bias, an input, and its held-σ map for one sample."""
    g = gen(1)
    if kind == "layer_norm_1d":
        norm, x = nn.LayerNorm(5), torch.randn(2, 3, 5, generator=g, dtype=DT)
    elif kind == "layer_norm_2d":
        norm, x = nn.LayerNorm((3, 4)), torch.randn(2, 2, 3, 4, generator=g, dtype=DT)
    else:
        norm, x = nn.GroupNorm(2, 4), torch.randn(2, 4, 2, 3, generator=g, dtype=DT)
    norm = norm.to(DT).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=g, dtype=DT))
        norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=g, dtype=DT))
    w = norm.weight.detach()
    if isinstance(norm, nn.GroupNorm):
        f = group_norm_map(w, 2, norm.eps)
    else:
        dims = tuple(range(-len(norm.normalized_shape), 0))
        f = layer_norm_map(w, dims, norm.eps)
    return norm, x, f


def bias_of(norm: nn.Module, x: Tensor) -> Tensor:
    """The norm's bias broadcast to one sample, flattened."""
    b = norm.bias.detach()
    if isinstance(norm, nn.GroupNorm):
        b = b.reshape(-1, *([1] * (x.dim() - 2)))
    return b.expand(x.shape[1:]).flatten()


@pytest.mark.parametrize("kind", ["layer_norm_1d", "layer_norm_2d", "group_norm"])
@pytest.mark.parametrize("name", sorted(NORM_RULE_SETS))
def test_norm_is_the_linear_map_with_sigma_held_constant(kind: str, name: str) -> None:
    """Each weighted rule on the explicit Jacobian of x ↦ w ⊙ (x − μ(x)) / σ (σ constant)."""
    norm, x, f = norm_case(kind)
    A = jacobians(f, x)  # (B, n, n)
    b = bias_of(norm, x)
    y = norm(x).detach()
    # the oracle's map is the norm: A x + b = y (σ is constant at x, the mean is linear)
    torch.testing.assert_close((A @ x.flatten(1)[:, :, None])[..., 0] + b, y.flatten(1), rtol=1e-12, atol=1e-12)
    R_out = torch.randn(y.shape, generator=gen(7), dtype=DT)
    graph = relprop.trace(norm, NORM_RULE_SETS[name]())
    got = graph.explain(x, R_out)
    want = norm_oracle(name, x.flatten(1), A, b, R_out.flatten(1)).reshape(x.shape)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert [b.info.category for b in graph.bindings] == ["norm"]


@pytest.mark.parametrize("kind", ["layer_norm_1d", "group_norm"])
def test_norm_then_linear_head_composes_the_two_epsilon_rules(kind: str) -> None:
    """norm → flatten → linear head, from the target logit: ε on the head, then on A."""
    norm, x, f = norm_case(kind)
    head = nn.Linear(x[0].numel(), 3).to(DT)
    model = nn.Sequential(norm, nn.Flatten(), head).eval()
    eps = 0.05
    got = relprop.trace(model, rules.AttnLRP(eps)).explain(x, [2, 0])
    h = norm(x).detach().flatten(1)
    logits = head(h).detach()
    R_top = torch.zeros_like(logits)
    R_top[0, 2], R_top[1, 0] = logits[0, 2], logits[1, 0]
    W, bh = head.weight.detach(), head.bias.detach()
    Zh = h[:, None, :] * W
    R_h = spread(Zh, R_top, stab(Zh.sum(-1) + bh, eps))
    A, b = jacobians(f, x), bias_of(norm, x)
    Z = x.flatten(1)[:, None, :] * A
    want = spread(Z, R_h, stab(Z.sum(-1) + b, eps)).reshape(x.shape)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("shape", [(5,), (3, 4)])
def test_epsilon_on_layer_norm_without_bias_conserves_per_row(shape: tuple[int, ...]) -> None:
    """Zero bias, ε → 0: Σ_i x_i A_ji = y_j exactly, so Σ R_x = Σ R per normalised row."""
    norm = nn.LayerNorm(shape).to(DT).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape, generator=gen(2), dtype=DT))
        norm.bias.zero_()
    x = 3.0 * torch.randn(2, 4, *shape, generator=gen(3), dtype=DT) + 1.0
    R_out = torch.randn(x.shape, generator=gen(4), dtype=DT)
    dims = tuple(range(-len(shape), 0))
    for rule_set in (rules.Epsilon(1e-12), rules.AttnLRP(1e-12)):
        got = relprop.trace(norm, rule_set).explain(x, R_out)
        torch.testing.assert_close(got.sum(dims), R_out.sum(dims), rtol=1e-8, atol=1e-10)
        # and it is not the identity rule: the relevance moved within the rows
        assert not torch.allclose(got, R_out, rtol=1e-3)


def test_rms_norm_passes_by_identity_under_attnlrp() -> None:
    """RMSNorm (no centring) is a diagonal map: the identity rule."""
    x = torch.randn(3, 4, dtype=DT)
    R_out = torch.randn(3, 4, dtype=DT)
    w = torch.randn(4, dtype=DT)
    model = Fn(lambda u: torch.ops.aten.rms_norm(u, [4], w, 1e-6)).eval()
    for cp in (False, True):
        assert torch.equal(relprop.trace(model, rules.AttnLRP(cp=cp)).explain(x, R_out), R_out)


# -- the softmax rule --------------------------------------------------------------------------


class SoftmaxHead(nn.Module):
    """linear → (mask) → softmax along ``dim`` → linear head on the flattened probabilities."""

    def __init__(self, dim: int, mask: Tensor | None = None) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.head = nn.Linear(20, 3)
        self.dim = dim
        self.register_buffer("mask", mask)

    def logits_in(self, x: Tensor) -> Tensor:
        z = self.lin(x)
        return z if self.mask is None else z.masked_fill(self.mask, float("-inf"))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.softmax(self.logits_in(x), self.dim).flatten(1))


SOFTMAX_CASES = {
    "last_dim": (-1, None),
    "middle_dim": (1, None),
    "masked": (-1, torch.tensor([[False, True, False, False, True]] * 2 + [[False] * 5] * 2)),
}


@pytest.mark.parametrize("case", sorted(SOFTMAX_CASES))
def test_softmax_rule_and_what_it_absorbs(case: str) -> None:
    dim, mask = SOFTMAX_CASES[case]
    torch.manual_seed(3)
    model = SoftmaxHead(dim, mask).to(DT).eval()
    x = torch.randn(2, 4, 5, dtype=DT)
    graph = relprop.trace(model, rules.AttnLRP(1e-9))
    expl = graph.explanation(x, [1, 2], record=True)
    (name,) = node_names(graph, "softmax")
    assert isinstance(next(b.rule for b in graph.bindings if b.info.node.name == name), rules.SoftmaxRule)
    R_out = expl.node_relevance[name][0]
    (R_in,) = expl.records[name]
    R_in = R_in[0]
    z = model.logits_in(x).detach()
    s = torch.softmax(z, dim)

    # Prop. 3.1: R_x = x ⊙ (R − s Σ_j R_j) along the softmax dimension; masked entries get 0
    masked = torch.isinf(z)
    want = z * (R_out - s * R_out.sum(dim, keepdim=True))
    want = torch.where(masked, torch.zeros_like(want), want)
    assert torch.isfinite(R_in).all()
    torch.testing.assert_close(R_in, want, rtol=1e-10, atol=1e-12)
    if mask is not None:
        assert masked.any() and torch.equal(R_in[masked], torch.zeros_like(R_in[masked]))
        assert torch.equal(R_out[masked], torch.zeros_like(R_out[masked]))  # s = 0 there

    # absorbed per row: Σ_j R_j − [Σ_i x_i R_i − (Σ_i x_i s_i) Σ_j R_j] (unmasked entries)
    zf = torch.where(masked, torch.zeros_like(z), z)
    sum_R = R_out.sum(dim)
    closed = sum_R - ((zf * R_out).sum(dim) - (zf * s).sum(dim) * sum_R)
    torch.testing.assert_close(R_out.sum(dim) - R_in.sum(dim), closed, rtol=1e-9, atol=1e-12)
    assert closed.abs().max() > 1e-3  # not conservative: there is something to absorb


# -- attention written out: absorbed only at the softmax, conserved under CP-LRP -------------


class ExplicitAttention(nn.Module):
    """Two layers of two-head self-attention written out (no biases), residual, linear head."""

    def __init__(self, dim: int = 6, heads: int = 2, tokens: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim, bias=False) for _ in range(2))
        self.head = nn.Linear(tokens * dim, classes, bias=False)

    def scores(self, layer: int, h: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _ = h.shape
        q, k, v = self.qkv[layer](h).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.head_dim)), v

    def block(self, layer: int, h: Tensor) -> Tensor:
        s, v = self.scores(layer, h)
        o = torch.softmax(s, dim=-1) @ v
        return h + o.transpose(1, 2).reshape(h.shape)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block(1, self.block(0, x))
        return self.head(h.flatten(1))


def _tensors(R: object) -> list[Tensor]:
    return [R] if isinstance(R, Tensor) else [r for r in R if r is not None]  # type: ignore[attr-defined]


def test_attnlrp_absorbs_exactly_the_softmax_rules_closed_form() -> None:
    """Zero biases, ε tiny: every rule but the softmax rule conserves, so
    logit − Σ R_input = Σ over the softmax nodes of Σ_j R_j − [Σ_i x_i R_i − (Σ_i x_i s_i) Σ_j R_j]."""
    torch.manual_seed(4)
    model = ExplicitAttention().to(DT).eval()
    x = torch.randn(2, 4, 6, dtype=DT)
    targets = [0, 2]
    graph = relprop.trace(model, rules.AttnLRP(1e-12))
    expl = graph.explanation(x, targets, record=True)
    names = node_names(graph, "softmax")
    assert len(names) == 2
    # the softmax inputs of each layer, from the model's own forward
    with torch.no_grad():
        s0, _ = model.scores(0, x)
        s1, _ = model.scores(1, model.block(0, x))
        logits = model(x)[torch.arange(2), targets]
    absorbed = torch.zeros(2, dtype=DT)
    for name, z in zip(names, (s0, s1)):
        R = expl.node_relevance[name][0]  # (B, heads, N, N)
        s = torch.softmax(z, -1)
        per_row = R.sum(-1) - ((z * R).sum(-1) - (z * s).sum(-1) * R.sum(-1))
        absorbed += per_row.sum((1, 2))
    total = expl.relevance.sum((1, 2))
    torch.testing.assert_close(logits - total, absorbed, rtol=1e-8, atol=1e-9)
    assert absorbed.abs().min() > 1e-3 * logits.abs().max()
    # node by node: every rule but the softmax rule hands on what it receives (the batch is
    # not dimension 0 of every tensor here: q, k, v are unbound from a (3, B, ...) stack)
    for name, given in expl.records.items():
        if name not in names:
            out = sum(r.sum() for r in _tensors(expl.node_relevance[name]))
            handed = sum(r.sum() for r in _tensors(given))
            torch.testing.assert_close(handed, out, rtol=1e-8, atol=1e-10, msg=name)

    # CP-LRP inside attention: the probabilities are constants, the rest conserves exactly
    cp = relprop.trace(model, rules.AttnLRP(1e-12, cp=True))
    R_cp = cp.explanation(x, targets, record=True)
    torch.testing.assert_close(R_cp.relevance.sum((1, 2)), logits, rtol=1e-9, atol=1e-10)
    for name in node_names(cp, "softmax"):  # nothing reaches the held probabilities
        assert name not in R_cp.node_relevance or not R_cp.node_relevance[name].abs().sum()


# -- scaled_dot_product_attention: fused rule = the per-op rules = LXT's modified gradient ---


class Attention(nn.Module):
    """Self-attention without biases, fused (SDPA) or written out, with a constant mask."""

    def __init__(
        self,
        mask: Tensor | None = None,
        causal: bool = False,
        kv_heads: int = 2,
        explicit: bool = False,
        dim: int = 8,
        heads: int = 2,
        tokens: int = 5,
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(tokens * dim, 3, bias=False)
        self.register_buffer("mask", mask)
        self.causal, self.explicit = causal, explicit

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape

        def split(t: Tensor, heads: int) -> Tensor:
            return t.view(b, n, heads, self.head_dim).transpose(1, 2)

        return split(self.q(x), self.heads), split(self.k(x), self.kv_heads), split(self.v(x), self.kv_heads)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if not self.explicit:
            gqa = self.heads != self.kv_heads
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal, enable_gqa=gqa)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        s = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        n = q.shape[-2]
        if self.causal:
            s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        if self.mask is not None and self.mask.dtype == torch.bool:
            s = s.masked_fill(~self.mask, float("-inf"))
        elif self.mask is not None:
            s = s + self.mask
        return torch.softmax(s, dim=-1) @ v

    def head(self, o: Tensor) -> Tensor:
        return self.out(o.transpose(1, 2).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.attend(*self.project(x)))


def _bool_mask() -> Tensor:
    keep = torch.ones(2, 5, 5, dtype=torch.bool)  # per head
    keep[0, :, 3:] = False  # head 0 never sees the last two tokens
    keep[1, 1, 0] = False
    return keep


def _float_mask() -> Tensor:
    bias = -torch.rand(5, 5, generator=gen(5), dtype=DT) * 2.0  # a relative-position-like bias
    bias[2, 4] = float("-inf")
    return bias


ATTENTION_CASES: dict[str, Callable[[], dict]] = {
    "plain": lambda: {},
    "bool_mask": lambda: {"mask": _bool_mask()},
    "float_mask": lambda: {"mask": _float_mask()},
    "causal": lambda: {"causal": True},
    "gqa": lambda: {"kv_heads": 1},
    "gqa_causal": lambda: {"kv_heads": 1, "causal": True},
}


def _pair(case: str) -> tuple[Attention, Attention]:
    torch.manual_seed(6)
    fused = Attention(**ATTENTION_CASES[case]()).to(DT).eval()
    explicit = Attention(**ATTENTION_CASES[case](), explicit=True).to(DT).eval()
    explicit.load_state_dict(fused.state_dict())
    return fused, explicit


def lxt_relevance(model: Attention, x: Tensor, targets: list[int]) -> Tensor:
    """Gradient × input with the gradient divided by 4 at q and k and by 2 at v (LXT's AttnLRP)."""
    x = x.clone().requires_grad_(True)
    q, k, v = model.project(x)
    q.register_hook(lambda g: g / 4)
    k.register_hook(lambda g: g / 4)
    v.register_hook(lambda g: g / 2)
    logits = model.head(model.attend(q, k, v))
    logits[torch.arange(x.shape[0]), targets].sum().backward()
    assert x.grad is not None
    return (x * x.grad).detach()


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_sdpa_rule_equals_the_per_op_rules_and_lxts_modified_gradient(case: str) -> None:
    fused, explicit = _pair(case)
    x = torch.randn(2, 5, 8, generator=gen(8), dtype=DT)
    targets = [0, 2]
    torch.testing.assert_close(fused(x), explicit(x), rtol=1e-12, atol=1e-12)
    for cp in (False, True):
        g_fused = relprop.trace(fused, rules.AttnLRP(1e-12, cp=cp))
        g_explicit = relprop.trace(explicit, rules.AttnLRP(1e-12, cp=cp))
        R_fused = g_fused.explain(x, targets)
        R_explicit = g_explicit.explain(x, targets)
        assert node_names(g_fused, "attention") and not node_names(g_explicit, "attention")
        assert torch.isfinite(R_fused).all() and R_fused.abs().sum() > 0
        torch.testing.assert_close(R_fused, R_explicit, rtol=1e-9, atol=1e-12)
        if not cp:
            torch.testing.assert_close(R_fused, lxt_relevance(fused, x, targets), rtol=1e-8, atol=1e-11)
        else:  # CP-LRP conserves the logit (no biases)
            logits = fused(x).detach()[torch.arange(2), targets]
            torch.testing.assert_close(R_fused.sum((1, 2)), logits, rtol=1e-9, atol=1e-11)


def test_lxt_oracle_sees_queries_and_keys() -> None:
    """The oracle is not degenerate: q and k receive relevance, so a wrong factor would show."""
    fused, _ = _pair("plain")
    x = torch.randn(2, 5, 8, generator=gen(8), dtype=DT)
    full = lxt_relevance(fused, x, [0, 2])
    with torch.no_grad():
        fused.q.weight.mul_(2.0)  # changes only the attention pattern, through q
    assert not torch.allclose(lxt_relevance(fused, x, [0, 2]), 2.0 * full, rtol=1e-3)
    cp = relprop.trace(fused, rules.AttnLRP(1e-12, cp=True)).explain(x, [0, 2])
    attn = relprop.trace(fused, rules.AttnLRP(1e-12)).explain(x, [0, 2])
    assert not torch.allclose(cp, attn, rtol=1e-3)


# -- the uniform rule on a gate ----------------------------------------------------------------


class SwiGLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6, bias=False), nn.Linear(4, 6, bias=False)
        self.out = nn.Linear(6, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.silu(self.a(x)) * self.b(x))


@pytest.mark.parametrize("cp", [False, True])
def test_uniform_rule_gives_each_factor_of_a_gate_half(cp: bool) -> None:
    torch.manual_seed(7)
    model = SwiGLU().to(DT).eval()
    x = torch.randn(3, 4, dtype=DT)
    eps = 1e-9
    graph = relprop.trace(model, rules.AttnLRP(eps, cp=cp))
    expl = graph.explanation(x, [0, 1, 2], record=True)
    (mul,) = node_names(graph, "mul")
    (silu,) = node_names(graph, "activation")
    R = expl.node_relevance[mul][0]
    R_gate, R_value = (r[0] for r in expl.records[mul])
    h = (F.silu(model.a(x)) * model.b(x)).detach()
    half = 0.5 * h * R / stab(h, eps)  # each factor half (Eq. 7), here ≈ R / 2
    torch.testing.assert_close(R_gate, half, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(R_value, half, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(R_gate, R / 2, rtol=1e-5, atol=1e-12)  # up to ε / |h|
    # identity through silu (Eq. 9): not its gradient
    assert torch.equal(expl.records[silu][0][0], expl.node_relevance[silu][0])
    assert torch.equal(expl.node_relevance[silu][0], R_gate)


# -- the rule set's arguments, repr and contrastive explanations ---------------------------------


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"cp": "yes"}, "cp"),
        ({"cp": 1}, "cp"),
        ({"cp": None}, "cp"),
        ({"epsilon": -1}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"epsilon": "0.1"}, "epsilon"),
    ],
)
def test_attnlrp_rejects_bad_arguments(kwargs: dict, argument: str) -> None:
    with pytest.raises(relprop.RuleError, match=argument) as info:
        rules.AttnLRP(**kwargs)
    assert isinstance(info.value, ValueError)


def test_attnlrp_repr_and_defaults() -> None:
    assert repr(rules.AttnLRP()) == "AttnLRP(epsilon=1e-06, cp=False)"
    assert repr(rules.AttnLRP(0.25, cp=True)) == "AttnLRP(epsilon=0.25, cp=True)"
    assert repr(rules.AttnLRP(epsilon=0)) == "AttnLRP(epsilon=0, cp=False)"
    r = rules.AttnLRP()
    assert not r.contrastive and r.start == "value"


def test_attnlrp_contrastive_is_positive_minus_negative() -> None:
    torch.manual_seed(8)
    model = ExplicitAttention().to(DT).eval()
    x = torch.randn(3, 4, 6, dtype=DT)
    target = torch.tensor([0, 2, 1])
    for rule_set in (rules.AttnLRP(), rules.AttnLRP(cp=True), rules.AttnLRP(contrastive=True)):
        graph = relprop.trace(model, rule_set)
        expl = graph.explanation(x, target, contrastive=True, record=True)
        assert expl.contrastive and expl.passes[0].shape == (2, 3, 4, 6)
        torch.testing.assert_close(expl.relevance, expl.passes[0][0] - expl.passes[0][1], rtol=0, atol=0)
        start = expl.node_relevance[node_names(graph, "dense")[-1]]  # the head's output: the logits
        onehot = F.one_hot(target, 3).to(DT)
        assert torch.equal(start[0], onehot)
        torch.testing.assert_close(start[1], (1 - onehot) / 2, rtol=0, atol=1e-15)
        # each pass is the non-contrastive explanation of its start
        positive = graph.explain(x, onehot, contrastive=False)
        torch.testing.assert_close(expl.passes[0][0], positive, rtol=1e-12, atol=1e-14)
    assert relprop.trace(model, rules.AttnLRP(contrastive=True)).explanation(x, target).contrastive
