"""Each rule against its closed form, in float64, with slow explicit oracles.

Every weighted layer is written as an explicit matrix ``M`` (outputs × inputs) and
a bias ``b``, so that ``y = M x + b``; for a convolution the matrix is assembled
entry by entry from the patches of :func:`torch.nn.functional.unfold`.  The
oracles then apply the textbook formula of each rule to the contributions
``Z[j, i] = x_i M_ji``, with loops or explicit broadcasting, sharing no code with
relprop.  Rules run through the public API only: ``relprop.trace(layer,
rules=relprop.rules.LRP(rule))`` with the output relevance given as a float
``target`` (used as-is, one pass).
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


# -- explicit matrices -----------------------------------------------------------------------


def conv_matrix(weight: Tensor, in_shape: tuple[int, int, int], stride: int, padding: int) -> Tensor:
    """The matrix M (C_out·L, C_in·H·W) of a 2-d convolution, one patch entry at a time."""
    c, h, w = in_shape
    out_c, _, kh, kw = weight.shape
    # number each input element 1..n; padding reads as 0
    index = torch.arange(1, c * h * w + 1, dtype=DT).reshape(1, c, h, w)
    cols = F.unfold(index, (kh, kw), padding=padding, stride=stride)[0].round().long() - 1  # (C·kh·kw, L)
    flat_w = weight.reshape(out_c, -1)
    n_rows, n_pos = cols.shape
    M = torch.zeros(out_c, n_pos, c * h * w, dtype=DT)
    for r in range(n_rows):
        for pos in range(n_pos):
            i = int(cols[r, pos])
            if i >= 0:
                M[:, pos, i] += flat_w[:, r]
    return M.reshape(out_c * n_pos, c * h * w)


def linear_case(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(5, 4).to(DT).eval()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 5, generator=g, dtype=DT))
        layer.bias.copy_(0.3 * torch.randn(4, generator=g, dtype=DT))
    x = torch.randn(3, 5, generator=g, dtype=DT)
    return {"layer": layer, "x": x, "M": layer.weight.detach().clone(), "b": layer.bias.detach().clone()}


def conv_case(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1).to(DT).eval()
    with torch.no_grad():
        layer.weight.copy_(0.5 * torch.randn(3, 2, 3, 3, generator=g, dtype=DT))
        layer.bias.copy_(0.3 * torch.randn(3, generator=g, dtype=DT))
    x = torch.randn(2, 2, 5, 5, generator=g, dtype=DT)
    M = conv_matrix(layer.weight.detach(), (2, 5, 5), stride=2, padding=1)
    L = M.shape[0] // 3
    b = layer.bias.detach().repeat_interleave(L)
    # the oracle's matrix is the convolution
    assert torch.allclose(layer(x).detach().flatten(1), x.flatten(1) @ M.T + b, atol=1e-12)
    return {"layer": layer, "x": x, "M": M, "b": b}


CASES = {"linear": linear_case, "conv": conv_case}


# -- closed forms ----------------------------------------------------------------------------


def stab(z: Tensor, eps: float) -> Tensor:
    """z + ε·sign(z), sign(0) = +1."""
    return torch.where(z >= 0, z + eps, z - eps)


def contributions(x: Tensor, M: Tensor) -> Tensor:
    """Z[b, j, i] = x[b, i] · M[j, i]."""
    return x[:, None, :] * M[None, :, :]


def spread(Z: Tensor, R: Tensor, den: Tensor) -> Tensor:
    """R_i = Σ_j Z_ji R_j / den_j."""
    return (Z * (R / den)[:, :, None]).sum(1)


def oracle_epsilon(x: Tensor, M: Tensor, b: Tensor, R: Tensor, eps: float) -> Tensor:
    Z = contributions(x, M)
    return spread(Z, R, stab(Z.sum(-1) + b, eps))


def oracle_alpha_beta(x: Tensor, M: Tensor, b: Tensor, R: Tensor, alpha: float, beta: float, eps: float) -> Tensor:
    # Bach et al. 2015, Eq. 60: the bias is a contribution of its sign (b⁺ in z⁺, b⁻ in z⁻)
    Z = contributions(x, M)
    Zp, Zn = Z.clamp(min=0), Z.clamp(max=0)
    pos = spread(Zp, R, Zp.sum(-1) + b.clamp(min=0) + eps)
    neg = spread(Zn, R, Zn.sum(-1) + b.clamp(max=0) - eps)
    return alpha * pos - beta * neg


def oracle_gamma(x: Tensor, M: Tensor, b: Tensor, R: Tensor, gamma: float, eps: float) -> Tensor:
    # Montavon et al. 2019, Eq. 7, generalized to signed inputs (Andéol et al. 2021): at a unit
    # with output z_j > 0 every contribution z_ij is reinforced by γ z_ij⁺ (bias b + γb⁺), at a
    # unit with z_j < 0 by γ z_ij⁻ (bias b + γb⁻); units with z_j = 0 pass nothing
    Z = contributions(x, M)
    z = Z.sum(-1) + b
    Zu, Zd = Z + gamma * Z.clamp(min=0), Z + gamma * Z.clamp(max=0)
    up = spread(Zu, R * (z > 0), stab(Zu.sum(-1) + b + gamma * b.clamp(min=0), eps))
    down = spread(Zd, R * (z < 0), stab(Zd.sum(-1) + b + gamma * b.clamp(max=0), eps))
    return up + down


def oracle_flat(x: Tensor, M: Tensor, R: Tensor, eps: float, connect: Tensor) -> Tensor:
    # uniform over each output's receptive field (connect[j, i] = 1 where i feeds j)
    Z = connect[None].expand(x.shape[0], -1, -1)
    return spread(Z, R, Z.sum(-1) + eps)


def oracle_wsquare(x: Tensor, M: Tensor, R: Tensor, eps: float) -> Tensor:
    Z = (M**2)[None].expand(x.shape[0], -1, -1)
    return spread(Z, R, Z.sum(-1) + eps)


def oracle_zbox(x: Tensor, M: Tensor, R: Tensor, low: Tensor, high: Tensor, eps: float) -> Tensor:
    # Montavon et al. 2017: z_ij = x_i w_ij − l_i w⁺_ij − h_i w⁻_ij
    Z = contributions(x, M) - contributions(low, M.clamp(min=0)) - contributions(high, M.clamp(max=0))
    return spread(Z, R, stab(Z.sum(-1), eps))


def oracle_abs(x: Tensor, M: Tensor, b: Tensor, R: Tensor) -> Tensor:
    # Eq. 12 of the paper: R_i ∝ Σ_j 2 (x_i w_ij)⁺ R_j / |y_j|, then Σ|R| = 1 per sample
    Z = contributions(x, M)
    y = Z.sum(-1) + b
    raw = spread(2 * Z.clamp(min=0), R, y.abs() + 1e-9)
    return raw / raw.abs().sum(1, keepdim=True)


def connectivity(M: Tensor, case: str, layer: nn.Module) -> Tensor:
    if case == "linear":
        return torch.ones_like(M)
    return conv_matrix(torch.ones_like(layer.weight.detach()), (2, 5, 5), stride=2, padding=1)


def relevance_of(layer: nn.Module, x: Tensor, R_out: Tensor, rule_set: rules.RuleSet) -> Tensor:
    g = relprop.trace(layer, rules=rule_set)
    return g.explain(x, R_out)


# (rule, oracle(x, M, b, R, low, high, connect)); ε of each rule given explicitly
LOW, HIGH = -1.5, 2.0
RULES: dict[str, tuple[Callable[[], rules.Rule], Callable[..., Tensor]]] = {
    "epsilon": (
        lambda: rules.EpsilonRule(0.1),
        lambda x, M, b, R, lo, hi, con: oracle_epsilon(x, M, b, R, 0.1),
    ),
    "epsilon_tiny": (
        lambda: rules.EpsilonRule(1e-12),
        lambda x, M, b, R, lo, hi, con: oracle_epsilon(x, M, b, R, 1e-12),
    ),
    "zplus": (
        lambda: rules.ZPlusRule(epsilon=1e-9),
        lambda x, M, b, R, lo, hi, con: oracle_alpha_beta(x, M, b, R, 1.0, 0.0, 1e-9),
    ),
    "alpha2beta1": (
        lambda: rules.AlphaBetaRule(2.0, 1.0, epsilon=1e-9),
        lambda x, M, b, R, lo, hi, con: oracle_alpha_beta(x, M, b, R, 2.0, 1.0, 1e-9),
    ),
    "gamma": (
        lambda: rules.GammaRule(0.25, epsilon=1e-6),
        lambda x, M, b, R, lo, hi, con: oracle_gamma(x, M, b, R, 0.25, 1e-6),
    ),
    "flat": (
        lambda: rules.FlatRule(epsilon=1e-9),
        lambda x, M, b, R, lo, hi, con: oracle_flat(x, M, R, 1e-9, con),
    ),
    "wsquare": (
        lambda: rules.WSquareRule(epsilon=1e-9),
        lambda x, M, b, R, lo, hi, con: oracle_wsquare(x, M, R, 1e-9),
    ),
    "zbox": (
        lambda: rules.ZBoxRule(LOW, HIGH, epsilon=1e-9),
        lambda x, M, b, R, lo, hi, con: oracle_zbox(x, M, R, lo, hi, 1e-9),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(RULES))
def test_weighted_rule_matches_closed_form(case: str, name: str) -> None:
    c = CASES[case]()
    layer, x, M, b = c["layer"], c["x"], c["M"], c["b"]
    if name == "zbox":  # inputs inside the box
        x = LOW + (HIGH - LOW) * torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    out = layer(x).detach()
    R_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=DT)
    make, oracle = RULES[name]
    got = relevance_of(layer, x, R_out, rules.LRP(make()))
    xf = x.flatten(1)
    lo, hi = torch.full_like(xf, LOW), torch.full_like(xf, HIGH)
    want = oracle(xf, M, b, R_out.flatten(1), lo, hi, connectivity(M, case, layer)).reshape(x.shape)
    assert got.shape == x.shape
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-11), (got - want).abs().max()


def test_zbox_per_channel_bounds_on_conv() -> None:
    """Bounds as tensors broadcasting against one sample, e.g. per channel (C, 1, 1)."""
    c = conv_case(1)
    layer, M = c["layer"], c["M"]
    low = torch.tensor([-1.0, -0.5], dtype=DT).reshape(2, 1, 1)
    high = torch.tensor([0.5, 2.0], dtype=DT).reshape(2, 1, 1)
    u = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(4), dtype=DT)
    x = low + (high - low) * u
    R_out = torch.randn(layer(x).shape, generator=torch.Generator().manual_seed(5), dtype=DT)
    got = relevance_of(layer, x, R_out, rules.LRP(rules.ZBoxRule(low, high)))
    lo, hi = low.expand(2, 5, 5).flatten()[None].expand(2, -1), high.expand(2, 5, 5).flatten()[None].expand(2, -1)
    want = oracle_zbox(x.flatten(1), M, R_out.flatten(1), lo, hi, 1e-9).reshape(x.shape)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-11)


def test_alpha_beta_rejects_non_conservative_parameters() -> None:
    with pytest.raises(relprop.RuleError, match="alpha - beta = 1"):
        rules.AlphaBetaRule(2.0, 0.5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_abslrp_rule_matches_eq12(case: str) -> None:
    c = CASES[case]()
    layer, x, M, b = c["layer"], c["x"], c["M"], c["b"]
    out = layer(x).detach()
    R_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(8), dtype=DT)
    got = relevance_of(layer, x, R_out, rules.AbsLRP(contrastive=False))
    want = oracle_abs(x.flatten(1), M, b, R_out.flatten(1)).reshape(x.shape)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (got - want).abs().max()
    assert torch.allclose(got.flatten(1).abs().sum(1), torch.ones(x.shape[0], dtype=DT))


# -- ops without weights ---------------------------------------------------------------------


class Fn(nn.Module):
    def __init__(self, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Tensor) -> Tensor:
        return self.fn(*args)


@pytest.mark.parametrize(
    "name, fn, shape, inverse",
    [
        ("reshape", lambda x: x.reshape(x.shape[0], -1), (2, 3, 4), lambda R, x: R.reshape(x.shape)),
        ("permute", lambda x: x.permute(0, 2, 1), (2, 3, 4), lambda R, x: R.permute(0, 2, 1)),
        ("transpose", lambda x: x.transpose(1, 2), (2, 3, 3), lambda R, x: R.transpose(1, 2)),
    ],
)
def test_pass_moves_relevance_unchanged(name: str, fn: Callable, shape: tuple, inverse: Callable) -> None:
    x = torch.randn(shape, dtype=DT)
    R_out = torch.randn(fn(x).shape, dtype=DT)
    g = relprop.trace(Fn(fn).eval(), rules=rules.Epsilon())
    got = g.explain(x, R_out)
    assert torch.equal(got, inverse(R_out, x)), name
    assert all(isinstance(b.rule, rules.Pass) for b in g.bindings)


def test_pass_on_cat_splits_relevance_by_position() -> None:
    a, b = torch.randn(2, 3, dtype=DT), torch.randn(2, 5, dtype=DT)
    R_out = torch.randn(2, 8, dtype=DT)
    Ra, Rb = relprop.trace(Fn(lambda u, v: torch.cat([u, v], 1)).eval(), rules=rules.ZPlus()).explain((a, b), R_out)
    assert torch.equal(Ra, R_out[:, :3]) and torch.equal(Rb, R_out[:, 3:])


@pytest.mark.parametrize(
    "name, fn",
    [
        ("scale", lambda x: x * 0.5),
        ("div", lambda x: x / 4.0),
        ("neg", lambda x: -x),
        ("gelu", F.gelu),
        ("tanh", torch.tanh),
        ("rms_norm", lambda x: torch.ops.aten.rms_norm(x, [4], None, 1e-6)),
    ],
)
def test_classic_sets_pass_elementwise_ops_by_identity(name: str, fn: Callable) -> None:
    """The identity rule: R_x = R (not the gradient, which would not conserve relevance)."""
    x = torch.randn(3, 4, dtype=DT)
    R_out = torch.randn(3, 4, dtype=DT)
    got = relprop.trace(Fn(fn).eval(), rules=rules.Epsilon(1e-9)).explain(x, R_out)
    assert torch.equal(got, R_out), name


def test_a_broadcasting_scale_splits_relevance_in_proportion() -> None:
    """x (B, 1) · c (5,): the identity is impossible; R_x = Σ_j x c_j R_j / (x c_j) = Σ_j R_j."""
    c = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=DT)
    x = torch.tensor([[2.0], [-0.5], [0.0]], dtype=DT)
    R_out = torch.randn(3, 5, dtype=DT)
    got = relprop.trace(Fn(lambda u: u * c).eval(), rules=rules.Epsilon(1e-9)).explain(x, R_out)
    want = torch.where(x != 0, R_out.sum(1, keepdim=True), 0.0)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)


def test_division_by_a_relevant_tensor_gives_the_numerator_all_relevance() -> None:
    """x / d(x) with d held constant: R_x = R where x ≠ 0, and exactly zero (no NaN) where x = 0."""
    x = torch.tensor([[1.0, 0.0, -2.0], [0.0, 3.0, 0.5]], dtype=DT)
    R_out = torch.tensor([[0.5, 0.7, -1.0], [0.2, 2.0, 0.25]], dtype=DT)
    fn = Fn(lambda u: u / (u.pow(2).sum(1, keepdim=True) + 1.0)).eval()
    g = relprop.trace(fn, rules=rules.Epsilon(1e-9), strict=False)
    e = g.explanation(x, R_out, record=True)
    div = next(b for b in g.bindings if b.info.category == "div")
    numerator, denominator = e.records[div.info.node.name]
    assert denominator is None
    assert torch.isfinite(e.relevance).all()
    assert torch.allclose(e.relevance, torch.where(x != 0, R_out, 0.0), rtol=1e-12, atol=0)


def test_sum_rule_on_a_residual_add() -> None:
    """y = x + f(x): the add splits R in proportion to x and f(x) (ε-rule on the sum)."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(4, 4, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            return x + self.f(x)

    torch.manual_seed(0)
    model = Residual().to(DT).eval()
    x = torch.randn(3, 4, dtype=DT)
    R_out = torch.randn(3, 4, dtype=DT)
    eps = 0.05
    g = relprop.trace(model, rules=rules.Epsilon(eps))
    e = g.explanation(x, R_out, record=True)
    add = next(b.info.node.name for b in g.bindings if b.info.category == "add")
    W = model.f.weight.detach()
    fx = x @ W.T
    den = stab(x + fx, eps)
    R_x_direct, R_f = e.records[add]
    assert torch.allclose(R_x_direct[0], x * R_out / den, rtol=1e-12, atol=1e-14)
    assert torch.allclose(R_f[0], fx * R_out / den, rtol=1e-12, atol=1e-14)
    # the branch then applies the ε-rule of the linear map; the two paths add up at x
    want = x * R_out / den + oracle_epsilon(x, W, torch.zeros(4, dtype=DT), fx * R_out / den, eps)
    assert torch.allclose(e.relevance, want, rtol=1e-12, atol=1e-14)


# -- products ----------------------------------------------------------------------------------


def test_bilinear_rule_gives_each_factor_half_of_an_elementwise_product() -> None:
    a, b = torch.randn(2, 5, dtype=DT), torch.randn(2, 5, dtype=DT)
    R_out = torch.randn(2, 5, dtype=DT)
    eps = 0.01
    Ra, Rb = relprop.trace(Fn(lambda u, v: u * v).eval(), rules=rules.Epsilon(eps)).explain((a, b), R_out)
    want = 0.5 * a * b * R_out / stab(a * b, eps)
    assert torch.allclose(Ra, want, rtol=1e-12) and torch.allclose(Rb, want, rtol=1e-12)


def test_bilinear_rule_on_a_matmul_of_two_relevant_tensors() -> None:
    a, b = torch.randn(2, 3, 4, dtype=DT), torch.randn(2, 4, 5, dtype=DT)
    R_out = torch.randn(2, 3, 5, dtype=DT)
    eps = 0.01
    Ra, Rb = relprop.trace(Fn(lambda u, v: u @ v).eval(), rules=rules.Epsilon(eps)).explain((a, b), R_out)
    y = a @ b
    want_a, want_b = torch.zeros_like(a), torch.zeros_like(b)
    for s in range(2):
        for n in range(3):
            for k in range(4):
                for m in range(5):
                    share = 0.5 * a[s, n, k] * b[s, k, m] * R_out[s, n, m] / stab(y[s, n, m], eps)
                    want_a[s, n, k] += share
                    want_b[s, k, m] += share
    assert torch.allclose(Ra, want_a, rtol=1e-12) and torch.allclose(Rb, want_b, rtol=1e-12)


def test_bilinear_rule_holds_a_softmax_operand_constant() -> None:
    s, v = torch.randn(2, 3, 4, dtype=DT), torch.randn(2, 4, 5, dtype=DT)
    R_out = torch.randn(2, 3, 5, dtype=DT)
    eps = 0.01
    Rs, Rv = relprop.trace(Fn(lambda u, w: u.softmax(-1) @ w).eval(), rules=rules.Epsilon(eps)).explain((s, v), R_out)
    p = s.softmax(-1)
    y = p @ v
    want = torch.zeros_like(v)
    for i in range(2):
        for n in range(3):
            for k in range(4):
                for m in range(5):
                    want[i, k, m] += p[i, n, k] * v[i, k, m] * R_out[i, n, m] / stab(y[i, n, m], eps)
    assert Rs is None or torch.equal(Rs, torch.zeros_like(s))
    assert torch.allclose(Rv, want, rtol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_value_rule_holds_the_attention_probabilities_constant(causal: bool) -> None:
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 2, 4, 3, generator=g, dtype=DT) for _ in range(3))
    R_out = torch.randn(2, 2, 4, 3, generator=g, dtype=DT)
    eps = 0.01
    model = Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal)).eval()
    Rq, Rk, Rv = relprop.trace(model, rules=rules.Epsilon(eps)).explain((q, k, v), R_out)
    # p = softmax(q kᵀ / √d), with the causal mask; o = p v
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(3)
    if causal:
        scores = scores.masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), float("-inf"))
    p = scores.softmax(-1)
    o = p @ v
    want = torch.zeros_like(v)
    for n in range(4):
        for m in range(4):
            want[:, :, m, :] += p[:, :, n, m, None] * v[:, :, m, :] * R_out[:, :, n, :] / stab(o[:, :, n, :], eps)
    assert Rq is None and Rk is None
    assert torch.allclose(Rv, want, rtol=1e-12, atol=1e-14)
    assert torch.allclose(Rv.sum(), (R_out * o / stab(o, eps)).sum())


# -- rule sets ---------------------------------------------------------------------------------


def preset_model() -> nn.Module:
    return (
        nn.Sequential(
            nn.Conv2d(2, 3, 3),
            nn.ReLU(),
            nn.Conv2d(3, 2, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * 2 * 2, 6),
            nn.ReLU(),
            nn.Linear(6, 3),
        )
        .to(DT)
        .eval()
    )


def bound_rules(rule_set: rules.RuleSet) -> dict[str, rules.Rule]:
    """Module path -> rule of every weighted node of the preset model."""
    g = relprop.trace(preset_model(), rules=rule_set)
    g.explain(torch.randn(2, 2, 6, 6, dtype=DT), 0)
    bound = {b.info.module_path: b.rule for b in g.bindings if b.info.category in ("dense", "conv")}
    others = {b.info.category: type(b.rule) for b in g.bindings if b.info.category not in ("dense", "conv")}
    assert others == {"activation": rules.Pass, "move": rules.Pass}, others
    return bound


def test_epsilon_plus_flat_binds_flat_first_zplus_conv_epsilon_dense() -> None:
    bound = bound_rules(rules.EpsilonPlusFlat(0.3))
    assert type(bound["0"]) is rules.FlatRule
    assert type(bound["2"]) is rules.ZPlusRule
    assert type(bound["5"]) is rules.EpsilonRule and bound["5"].epsilon == 0.3
    assert type(bound["7"]) is rules.EpsilonRule and bound["7"].epsilon == 0.3


@pytest.mark.parametrize(
    "preset, first, conv",
    [
        (rules.EpsilonPlus, rules.ZPlusRule, rules.ZPlusRule),
        (rules.EpsilonAlpha2Beta1, rules.AlphaBetaRule, rules.AlphaBetaRule),
        (rules.EpsilonAlpha2Beta1Flat, rules.FlatRule, rules.AlphaBetaRule),
        (lambda: rules.EpsilonGammaBox(-1.0, 1.0), rules.ZBoxRule, rules.GammaRule),
    ],
)
def test_presets_bind_their_rules(preset: Callable, first: type, conv: type) -> None:
    bound = bound_rules(preset())
    assert type(bound["0"]) is first and type(bound["2"]) is conv
    assert type(bound["5"]) is rules.EpsilonRule and type(bound["7"]) is rules.EpsilonRule
    if conv is rules.AlphaBetaRule:
        assert (bound["2"].alpha, bound["2"].beta) == (2.0, 1.0)


def test_flat_first_layer_also_applies_to_a_first_dense_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(DT).eval()
    g = relprop.trace(model, rules=rules.EpsilonPlusFlat())
    g.explain(torch.randn(2, 4, dtype=DT), 0)
    got = {b.info.module_path: type(b.rule) for b in g.bindings if b.info.category == "dense"}
    assert got == {"0": rules.FlatRule, "2": rules.EpsilonRule}


def test_epsilon_plus_flat_computes_the_composition_of_its_rules() -> None:
    """conv (flat, first) → ReLU (identity) → flatten → linear (ε): composed oracles."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4))
    model = model.to(DT).eval()
    x = torch.randn(2, 2, 5, 5, dtype=DT)
    eps = 0.01
    got = relprop.trace(model, rules=rules.EpsilonPlusFlat(eps)).explain(x, [1, 3])
    conv, lin = model[0], model[3]
    h = F.relu(conv(x)).detach().flatten(1)
    R_top = torch.zeros(2, 4, dtype=DT)
    logits = model(x).detach()
    R_top[0, 1], R_top[1, 3] = logits[0, 1], logits[1, 3]  # classic LRP starts at the target's value
    R_h = oracle_epsilon(h, lin.weight.detach(), lin.bias.detach(), R_top, eps)
    connect = conv_matrix(torch.ones_like(conv.weight), (2, 5, 5), stride=2, padding=1)
    want = oracle_flat(x.flatten(1), connect, R_h, 1e-9, connect).reshape(x.shape)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_contrastive_start_one_hot_and_all_other_classes() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5)).to(DT).eval()
    x = torch.randn(3, 4, dtype=DT)
    target = torch.tensor([0, 3, 4])
    for rule_set in (rules.AbsLRP(), rules.Epsilon(1e-9, contrastive=True)):
        g = relprop.trace(model, rules=rule_set)
        e = g.explanation(x, target, record=True)
        assert e.contrastive
        start = e.node_relevance["linear_1"]  # the logits node
        onehot = F.one_hot(target, 5).to(DT)
        assert start.shape == (2, 3, 5)
        assert torch.equal(start[0], onehot)
        assert torch.allclose(start[1], (1 - onehot) / 4, rtol=0, atol=1e-15)
        assert torch.allclose(start.sum(-1), torch.ones(2, 3, dtype=DT))
        # the explanation is positive pass minus negative pass
        assert torch.allclose(e.relevance, e.passes[0][0] - e.passes[0][1])


def test_classic_start_is_the_target_value() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5)).to(DT).eval()
    x = torch.randn(3, 4, dtype=DT)
    e = relprop.trace(model, rules=rules.ZPlus()).explanation(x, [1, 2, 0], record=True)
    logits = model(x).detach()
    want = torch.zeros(1, 3, 5, dtype=DT)
    want[0, [0, 1, 2], [1, 2, 0]] = logits[[0, 1, 2], [1, 2, 0]]
    assert not e.contrastive and torch.equal(e.node_relevance["linear_1"], want)


def test_gamma_matches_zennit_on_signed_inputs() -> None:
    """The generalized γ-rule equals Zennit 0.5's ``Gamma`` where inputs and outputs take both signs.

    Two linear layers with no activation between them, so the second layer's input is signed
    and both signs of output occur; the initial relevance is a random tensor (as-is).
    """
    zennit = pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)).to(DT).eval()
    x = torch.randn(3, 6, dtype=DT)
    R_out = torch.randn(3, 4, dtype=DT)
    composite = LayerMapComposite([(nn.Linear, Gamma(gamma=0.25, stabilizer=1e-6))])
    with Gradient(model, composite) as attributor:
        _, want = attributor(x.clone().requires_grad_(True), R_out)
    got = relprop.trace(model, rules.Gamma(0.25)).explain(x, R_out)
    assert zennit is not None and (x < 0).any()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
