"""Every op family the rule sets cover binds in strict mode and gives finite relevance.

Plus closed forms of absLRP at ops whose local form holds statistics constant
(group norm) and at a plain product, written out by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop
from relprop import rules

DT = torch.float64


class Fn(nn.Module):
    def __init__(self, fn: Callable, *modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.mods)


def _head(width: int) -> nn.Linear:
    return nn.Linear(width, 3)


# (name, input shape, forward) — each ends in a (batch, 3) head
CASES: list[tuple[str, tuple[int, ...], Callable[[], nn.Module]]] = [
    (
        "conv1d+group_norm",
        (2, 4, 9),
        lambda: Fn(lambda x, c, g, h: h(F.relu(g(c(x))).mean(-1)), nn.Conv1d(4, 6, 3), nn.GroupNorm(2, 6), _head(6)),
    ),
    (
        "conv2d+batch_norm+avg_pool",
        (2, 3, 8, 8),
        lambda: Fn(
            lambda x, c, b, h: h(F.avg_pool2d(b(c(x)), 2).flatten(1)),
            nn.Conv2d(3, 2, 3, padding=1),
            nn.BatchNorm2d(2),
            _head(32),
        ),
    ),
    (
        "adaptive_avg+max_pool",
        (2, 3, 8, 8),
        lambda: Fn(
            lambda x, c, h: h(F.adaptive_avg_pool2d(F.max_pool2d(c(x), 2), 1).flatten(1)),
            nn.Conv2d(3, 4, 3, padding=1),
            _head(4),
        ),
    ),
    (
        "activations",
        (2, 5),
        lambda: Fn(
            lambda x, a, h: h(
                F.hardswish(a(x))
                + F.hardsigmoid(x).mean(-1, keepdim=True)
                + F.silu(x).sum(-1, keepdim=True)
                + torch.tanh(x)
                + torch.sigmoid(x)
            ),
            nn.Linear(5, 5),
            _head(5),
        ),
    ),
    (
        "layer_norm+gelu+div",
        (2, 4, 6),
        lambda: Fn(lambda x, ln, h: h((F.gelu(ln(x)) / 2.0).mean(1)), nn.LayerNorm(6), _head(6)),
    ),
    (
        "einsum+bmm+mul",
        (2, 4, 6),
        lambda: Fn(
            lambda x, a, h: h(torch.einsum("bij,bkj->bik", a(x), x).bmm(x).mean(1) * torch.sigmoid(x).mean(1)),
            nn.Linear(6, 6),
            _head(6),
        ),
    ),
    ("sub", (2, 6), lambda: Fn(lambda x, a, h: h(a(x) - x), nn.Linear(6, 6), _head(6))),
    (
        "matmul_const",
        (2, 6),
        lambda: Fn(lambda x, a, h: h(F.relu(a(x)) @ a.weight.T.detach()), nn.Linear(6, 6), _head(6)),
    ),
    ("embedding", (2, 5), None),
    (
        "softmax+slice_pool",
        (2, 5, 6),
        lambda: Fn(lambda x, a, h: h(torch.softmax(a(x), -1)[:, 1:].mean(1)), nn.Linear(6, 6), _head(6)),
    ),
]


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(11, 6), nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(ids)).mean(1))


@pytest.mark.parametrize("rule_set", [rules.AbsLRP(), rules.Epsilon(1e-6), rules.EpsilonPlusFlat()], ids=repr)
@pytest.mark.parametrize(("name", "shape", "make"), CASES, ids=[c[0] for c in CASES])
def test_op_families_bind_and_explain(name: str, shape: tuple, make: Callable | None, rule_set) -> None:
    torch.manual_seed(0)
    if make is None:
        model, x = Tokens().to(DT).eval(), torch.randint(0, 11, shape)
    else:
        model, x = make().to(DT).eval(), torch.randn(*shape, dtype=DT)
    g = relprop.trace(model, rule_set)
    e = g.explanation(x, [0, 2], record=True)
    R = e.relevance
    assert R.shape == (x.shape if x.is_floating_point() else x.shape[:2])
    # absLRP keeps positive contributions only: a sample can legitimately get zero
    assert torch.isfinite(R).all() and R.abs().sum() > 0
    assert "passed by their gradient" not in g.summary()
    if isinstance(rule_set, rules.AbsLRP):
        for b in g.bindings:
            if isinstance(b.rule, rules.AbsRule):
                for r in e.records[b.info.node.name]:
                    if r is not None:
                        totals = r.abs().flatten(2).sum(-1)
                        assert torch.allclose(totals, torch.ones_like(totals)) or (totals == 0).any()


def test_abslrp_group_norm_closed_form() -> None:
    """R_x ∝ x ⊙ (w/σ) g + |x| ⊙ (|w|/σ_|x|) g with g = R_y/|y|, statistics constant."""
    torch.manual_seed(1)
    gn = nn.GroupNorm(2, 4).to(DT)
    with torch.no_grad():
        gn.weight.copy_(torch.tensor([1.5, -0.5, 2.0, 0.7]))
        gn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    x = torch.randn(2, 4, 3, dtype=DT)
    R_y = torch.rand(2, 4, 3, dtype=DT)
    R = relprop.trace(Fn(lambda v, m: m(v), gn).eval(), rules.AbsLRP(contrastive=False)).explain(x, R_y)

    def sigma(v: torch.Tensor) -> torch.Tensor:
        var = v.reshape(2, 2, -1).var(-1, unbiased=False, keepdim=True)
        return torch.sqrt(var + gn.eps).expand(2, 2, 6).reshape(2, 4, 3)

    w = gn.weight.detach().reshape(1, 4, 1)
    y = gn(x).detach()
    g = R_y / (y.abs() + 1e-9)
    expected = x * (w / sigma(x)) * g + x.abs() * (w.abs() / sigma(x.abs())) * g
    expected = expected / expected.abs().flatten(1).sum(1).reshape(2, 1, 1)
    assert torch.allclose(R, expected, atol=1e-12)


def test_abslrp_product_closed_form() -> None:
    """y = a ⊙ b: each factor gets 2 (ab)⁺ g, normalized per sample (Eq. 12 with both as inputs)."""
    torch.manual_seed(2)
    a_lin, b_lin = nn.Linear(3, 4).to(DT), nn.Linear(3, 4).to(DT)
    model = Fn(lambda v, p, q: p(v) * q(v), a_lin, b_lin).eval()
    x = torch.randn(2, 3, dtype=DT)
    e = relprop.trace(model, rules.AbsLRP(contrastive=False)).explanation(x, torch.ones(2, 4, dtype=DT), record=True)
    a, b = a_lin(x).detach(), b_lin(x).detach()
    g = 1.0 / ((a * b).abs() + 1e-9)
    expected = 2 * (a * b).clamp(min=0) * g
    expected = expected / expected.sum(1, keepdim=True)
    mul = next(name for name in e.records if name.startswith("mul"))
    R_a, R_b = e.records[mul]
    assert torch.allclose(R_a[0], expected, atol=1e-12) and torch.allclose(R_b[0], expected, atol=1e-12)
