"""RAP and cRAP (relprop.rules.RAP; Nam et al., AAAI 2020) against explicit forms written here.

Every weighted layer is an explicit matrix M (outputs × inputs), read off the layer by probing
it with basis vectors, and the oracles apply RAP's steps to the contributions
Z[b, j, i] = x[b, i] · M[j, i] with explicit broadcasting and per-sample loops, sharing no code
with relprop:

- the output layer: relevance as relative (absolute) influence, R_i ∝ |Σ_j Z_ji R_j|, Σ kept;
- hidden layers: positive relevance to the positive contributions (z⁺/P) and, by their share
  of the total magnitude, to the negative ones (|z⁻|/T); negative relevance to the negative
  contributions (|z⁻|/N + |z⁻|/T) — or along the paths of the positive (dense layers, as the
  authors' fully connected layers do); then the uncertain shift;
- the input layer: z^B with the sample's own min and max as bounds;
- ReLU and batch norm: identity; sums and pooling: the z-rule.

Single rules run through ``relprop.trace(layer, rules=relprop.rules.LRP(rule))`` with the output
relevance given as a float target; whole networks through ``relprop.rules.RAP()``.
``benchmarks/rap_oracle.py`` compares with the authors' code itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.rules.rap import RAPInputRule, RAPOutputRule, RAPRule

DT = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


# -- explicit forms ----------------------------------------------------------------------------


def matrix(f, in_shape: tuple[int, ...]) -> Tensor:
    """The matrix (outputs, inputs) of the linear map x ↦ f(x) − f(0), one basis vector at a time."""
    n = int(torch.tensor(in_shape).prod())
    zero = f(torch.zeros(1, *in_shape, dtype=DT)).flatten()
    cols = [f(torch.eye(n, dtype=DT)[i].reshape(1, *in_shape)).flatten() - zero for i in range(n)]
    return torch.stack(cols, 1)


def div(a: Tensor, b: Tensor) -> Tensor:
    """a / b, 0 where b = 0."""
    return torch.where(b == 0, torch.zeros((), dtype=DT), a / torch.where(b == 0, 1.0, b))


def contributions(x: Tensor, M: Tensor) -> Tensor:
    """Z[b, j, i] = x[b, i] · M[j, i]."""
    return x[:, None, :] * M[None]


def oracle_output(x: Tensor, M: Tensor, R: Tensor) -> Tensor:
    """Absolute influence: c_i = Σ_j Z_ji R_j; R_i = |c_i| / Σ_i |c_i| · Σ_j R_j, per sample."""
    c = (contributions(x, M) * R[:, :, None]).sum(1).abs()
    return c / c.sum(1, keepdim=True) * R.sum(1, keepdim=True)


def uncertain_shift(Ri: Tensor, R: Tensor) -> Tensor:
    """Per sample: (Σ Ri − Σ R) / #nonzero taken off every nonzero entry of Ri."""
    out = Ri.clone()
    for b in range(Ri.shape[0]):
        nz = Ri[b] != 0
        out[b][nz] -= (Ri[b].sum() - R[b].sum()) / nz.sum()
    return out


def oracle_hidden(x: Tensor, M: Tensor, R: Tensor, separate: bool) -> Tensor:
    """RAP's relative-influence split of R over the contributions, then the uncertain shift."""
    Z = contributions(x, M)
    Zp, Zn = Z.clamp(min=0), (-Z).clamp(min=0)  # positive contributions, |negative| ones
    P, N = Zp.sum(2, keepdim=True), Zn.sum(2, keepdim=True)
    T = P + N
    R = R[:, :, None]
    Rp, Rn = R.clamp(min=0), R.clamp(max=0)
    if separate:
        parts = Zp * div(Rp, P) + Zn * div(Rp, T) + Zn * div(Rn, N) + Zn * div(Rn, T)
    else:
        parts = Zp * div(R, P) + Zn * div(R, T)
    return uncertain_shift(parts.sum(1), R[:, :, 0])


def oracle_input(x: Tensor, M: Tensor, R: Tensor) -> Tensor:
    """z^B with L = min x, H = max x of each sample."""
    low, high = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    Z = contributions(x, M) - contributions(low.expand_as(x), M.clamp(min=0))
    Z = Z - contributions(high.expand_as(x), M.clamp(max=0))
    return (Z * div(R, Z.sum(2))[:, :, None]).sum(1)


def run(model: nn.Module, rule_set: rules.RuleSet, x: Tensor, target) -> Tensor:
    return relprop.trace(model, rules=rule_set).explain(x, target)


# -- single rules ------------------------------------------------------------------------------


def layer_case(kind: str, signed: bool) -> tuple[nn.Module, Tensor]:
    g = torch.Generator().manual_seed(3)
    if kind == "linear":
        layer = nn.Linear(6, 5).to(DT).eval()
        x = torch.randn(3, 6, generator=g, dtype=DT)
    else:
        layer = nn.Conv2d(2, 3, 3, stride=2, padding=1).to(DT).eval()
        x = torch.randn(2, 2, 5, 5, generator=g, dtype=DT)
    x = x if signed else x.clamp(min=0)  # after a ReLU: non-negative with exact zeros
    return layer, x


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("separate", [True, False])
def test_hidden_rule_matches_the_explicit_form(kind: str, signed: bool, separate: bool) -> None:
    layer, x = layer_case(kind, signed)
    R = torch.randn(layer(x).shape, dtype=DT)  # relevance of both signs, as below an uncertain shift
    got = run(layer, rules.LRP(RAPRule(separate=separate)), x, R)
    M = matrix(layer, tuple(x.shape[1:]))
    want = oracle_hidden(x.flatten(1), M, R.flatten(1), separate)
    assert torch.allclose(got.flatten(1), want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got.flatten(1).sum(1), R.flatten(1).sum(1), rtol=1e-10)  # the shift conserves
    if separate and not signed:  # without the shift, R⁻ would reach negative contributions only
        assert not torch.allclose(got, run(layer, rules.LRP(RAPRule(separate=False)), x, R))


def test_hidden_rule_separates_relevant_from_irrelevant() -> None:
    """One unit, x ≥ 0: R⁺ goes to every contribution, R⁻ only to the negative contributions."""
    layer = nn.Linear(3, 1, bias=False).to(DT).eval()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -1.0, 1.0]], dtype=DT))
    x = torch.tensor([[1.0, 1.0, 0.0]], dtype=DT)  # z = (2, -1, 0): P = 2, N = 1, T = 3
    pos = run(layer, rules.LRP(RAPRule()), x, torch.tensor([[1.0]], dtype=DT))
    # before the shift: (2/2, 1/3, 0) = (1, 1/3, 0), Σ = 4/3; the shift takes 1/6 off both nonzero entries
    assert torch.allclose(pos, torch.tensor([[1 - 1 / 6, 1 / 3 - 1 / 6, 0.0]], dtype=DT), rtol=1e-12)
    neg = run(layer, rules.LRP(RAPRule()), x, torch.tensor([[-1.0]], dtype=DT))
    # before the shift: (0, -(1/1 + 1/3), 0); the excess -1/3 goes back to the one nonzero entry
    assert torch.allclose(neg, torch.tensor([[0.0, -1.0, 0.0]], dtype=DT), rtol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_output_rule_matches_the_explicit_form(kind: str) -> None:
    layer, x = layer_case(kind, signed=True)
    R = torch.randn(layer(x).shape, dtype=DT)
    got = run(layer, rules.LRP(RAPOutputRule()), x, R)
    want = oracle_output(x.flatten(1), matrix(layer, tuple(x.shape[1:])), R.flatten(1))
    assert torch.allclose(got.flatten(1), want, rtol=1e-10, atol=1e-12)


def test_output_rule_is_the_papers_first_step_for_one_target() -> None:
    """The authors' first step: the z-rule with the bias split over the positive and negative
    contributions (in proportion to their totals), then absolute influence normalisation."""
    layer, x = layer_case("linear", signed=False)
    with torch.no_grad():
        layer.bias.fill_(0.7)
        y = layer(x)
    t = 2
    z = x * layer.weight[t].detach()
    pos, neg = z.clamp(min=0), z.clamp(max=0)
    Pos, Neg = pos.sum(1, keepdim=True), neg.sum(1, keepdim=True)
    b = layer.bias[t].detach()
    R = z + b * Pos / (Pos + Neg) * div(pos, Pos) + b * Neg / (Pos + Neg) * div(neg, Neg)
    assert torch.allclose(R.sum(1), y[:, t])  # the z-rule with the bias conserves the logit
    want = R.abs() / R.abs().sum(1, keepdim=True) * R.sum(1, keepdim=True)
    got = run(layer, rules.RAP(), x, t)  # the only layer: the output layer
    assert torch.allclose(got, want, rtol=1e-12)
    assert torch.allclose(got, z.abs() / z.abs().sum(1, keepdim=True) * y[:, t : t + 1], rtol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_input_rule_matches_zbox_with_the_samples_own_bounds(kind: str) -> None:
    layer, x = layer_case(kind, signed=True)
    R = torch.randn(layer(x).shape, dtype=DT)
    got = run(layer, rules.LRP(rules.ZPlusRule(), first=RAPInputRule()), x, R)
    want = oracle_input(x.flatten(1), matrix(layer, tuple(x.shape[1:])), R.flatten(1))
    assert torch.allclose(got.flatten(1), want, rtol=1e-7, atol=1e-10)  # ε = 1e-9 stabilises the ratio


# -- whole networks ----------------------------------------------------------------------------


def mlp() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 4)).to(DT).eval()


def mlp_oracle(net: nn.Sequential, x: Tensor, start: Tensor) -> Tensor:
    """RAP through Linear-ReLU-Linear-ReLU-Linear module by module; ``start`` the output's relevance."""
    W = [net[i].weight.detach() for i in (0, 2, 4)]
    a1 = net[1](net[0](x))
    a2 = net[3](net[2](a1))
    R2 = oracle_output(a2, W[2], start)  # the output layer; ReLU: identity
    R1 = oracle_hidden(a1, W[1], R2, separate=False)  # a hidden dense layer
    return oracle_input(x, W[0], R1)  # the input layer


def test_rap_on_a_relu_mlp() -> None:
    net, x = mlp(), torch.randn(5, 6, dtype=DT)
    with torch.no_grad():
        y = net(x)
    t = torch.tensor([0, 1, 2, 3, 1])
    start = F.one_hot(t, 4).to(DT) * y  # RAP starts from the target logit
    got = run(net, rules.RAP(), x, t)
    assert torch.allclose(got, mlp_oracle(net, x, start), rtol=1e-7, atol=1e-12)
    assert torch.allclose(got.sum(1), y.gather(1, t[:, None])[:, 0], rtol=1e-7)  # conserves the logit


def test_crap_is_the_target_pass_minus_the_other_classes_pass() -> None:
    net, x = mlp(), torch.randn(5, 6, dtype=DT)
    t = torch.tensor([0, 1, 2, 3, 1])
    one_hot = F.one_hot(t, 4).to(DT)
    others = (1 - one_hot) / 3  # each pass starts at Σ = 1
    want = mlp_oracle(net, x, one_hot) - mlp_oracle(net, x, others)
    got = run(net, rules.RAP(contrastive=True), x, t)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-12)
    assert torch.allclose(relprop.trace(net, rules=rules.rule_set("cRAP")).explain(x, t), got, rtol=1e-12)
    # the target pass is RAP's map over the logit (positive logits: same map up to the scale)
    with torch.no_grad():
        y = net(x).gather(1, t[:, None])
    e = relprop.trace(net, rules=rules.RAP(contrastive=True)).explanation(x, t)
    target_pass = next(iter(e.passes.values()))[0]
    rap = run(net, rules.RAP(), x, t)
    keep = y[:, 0] > 0
    assert torch.allclose(target_pass[keep] * y[keep], rap[keep], rtol=1e-7, atol=1e-12)


class ResidualCNN(nn.Module):
    """conv-BN-ReLU stem, a residual block (conv-BN + shortcut, ReLU), max pool, average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        out = F.relu(self.bn(self.conv(h)) + h)
        return self.head(self.pool(out).mean((2, 3)))


def residual_cnn() -> ResidualCNN:
    torch.manual_seed(7)
    net = ResidualCNN().to(DT)
    for bn in (net.stem[1], net.bn):
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def maxpool_z_rule(x: Tensor, R: Tensor) -> Tensor:
    """2×2 max pooling by the z-rule: each window's R to its largest entry (x_max · R / y = R), 0 if y = 0."""
    out = torch.zeros_like(x)
    B, C, H, W = x.shape
    for b in range(B):
        for c in range(C):
            for i in range(0, H, 2):
                for j in range(0, W, 2):
                    win = x[b, c, i : i + 2, j : j + 2]
                    k = int(win.argmax())
                    if win.flatten()[k] != 0:
                        out[b, c, i + k // 2, j + k % 2] = R[b, c, i // 2, j // 2]
    return out


def residual_oracle(net: ResidualCNN, x: Tensor, start: Tensor) -> Tensor:
    with torch.no_grad():
        h = net.stem(x)
        r = net.bn(net.conv(h))
        out = F.relu(r + h)
        pooled = net.pool(out)
        feat = pooled.mean((2, 3))
    R_feat = oracle_output(feat, net.head.weight.detach(), start)
    R_pooled = pooled / pooled.sum((2, 3), keepdim=True) * R_feat[:, :, None, None]  # mean: the z-rule
    R_out = maxpool_z_rule(out, R_pooled)  # ReLU: identity
    total = r + h
    R_r, R_h = div(r * R_out, total), div(h * R_out, total)  # the residual sum: the z-rule
    M_conv = matrix(net.conv, (4, 6, 6))  # batch norm: identity
    R_h = R_h + oracle_hidden(h.flatten(1), M_conv, R_r.flatten(1), separate=True).reshape(h.shape)
    M_stem = matrix(net.stem[0], (3, 6, 6))  # ReLU, batch norm: identity
    return oracle_input(x.flatten(1), M_stem, R_h.flatten(1)).reshape(x.shape)


def test_rap_on_a_residual_cnn() -> None:
    net, x = residual_cnn(), torch.randn(3, 3, 6, 6, dtype=DT)
    with torch.no_grad():
        y = net(x)
    t = y.argmax(1)
    got = run(net, rules.RAP(), x, t)
    want = residual_oracle(net, x, F.one_hot(t, 3).to(DT) * y)
    assert torch.allclose(got, want, rtol=1e-7, atol=1e-12)
    assert torch.allclose(got.sum((1, 2, 3)), y.gather(1, t[:, None])[:, 0], rtol=1e-7)
    for i in range(3):  # samples are explained independently
        assert torch.allclose(run(net, rules.RAP(), x[i : i + 1], t[i : i + 1]), got[i : i + 1], rtol=1e-9)


def test_rap_binds_the_papers_rules() -> None:
    g = relprop.trace(residual_cnn(), rules=rules.RAP())
    g.explain(torch.randn(2, 3, 6, 6, dtype=DT), 0)
    bound = {b.info.module_path or b.info.category: b.rule for b in g.bindings}
    assert type(bound["stem.0"]) is RAPInputRule
    assert type(bound["conv"]) is RAPRule and bound["conv"].separate
    assert type(bound["head"]) is RAPOutputRule
    by_category = {b.info.category: b.rule for b in g.bindings}
    for category in ("add", "maxpool", "avgpool"):
        rule = by_category[category]
        assert type(rule) is rules.EpsilonRule and rule.epsilon == 0.0, category
    assert type(by_category["norm"]) is rules.Pass and type(by_category["activation"]) is rules.Pass
    dense = relprop.trace(mlp(), rules=rules.RAP())
    dense.explain(torch.randn(2, 6, dtype=DT), 0)
    layers = {b.info.module_path: b.rule for b in dense.bindings if b.info.category == "dense"}
    assert [type(r) for r in layers.values()] == [RAPInputRule, RAPRule, RAPOutputRule]
    assert layers["2"].separate is False  # dense layers: R⁻ along the paths of R⁺


class Reshaped(nn.Module):
    """The output layer's result reaches the output through data movement only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).reshape(x.shape[0], 2, 2).flatten(1)


def test_the_output_layer_is_found_through_data_movement() -> None:
    torch.manual_seed(1)
    net = Reshaped().to(DT).eval()
    g = relprop.trace(net, rules=rules.RAP())
    g.explain(torch.randn(2, 6, dtype=DT), 1)
    assert type(next(b.rule for b in g.bindings if b.info.module_path == "body.2")) is RAPOutputRule


def test_rap_and_crap_are_named_rule_sets() -> None:
    assert repr(rules.rule_set("rap")) == "RAP(contrastive=False)" and not rules.rule_set("RAP").contrastive
    assert repr(rules.rule_set("cRAP")) == "RAP(contrastive=True)" and rules.rule_set("crap").contrastive
    assert rules.RAP().start == "value"
