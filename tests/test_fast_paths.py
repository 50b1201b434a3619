"""The transposed-product fast path of weighted ops equals the autograd path exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relprop
from relprop.rules import abslrp


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
        lambda: nn.Conv2d(4, 8, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=2),
        lambda: nn.Conv1d(4, 6, 4, stride=3),
        lambda: nn.Conv3d(2, 3, 2, stride=2),
        lambda: nn.Conv2d(4, 6, 3, padding="same"),
    ],
)
def test_weighted_fast_path_matches_autograd(conv, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = conv()
    n = layer.weight.dim() - 2
    x = torch.randn(2, layer.in_channels, *([11] * n), dtype=torch.float64)
    model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).double()
    model(x)
    model.eval()
    fast = relprop.trace(model).explain(x, [0, 2])
    monkeypatch.setattr(abslrp.AbsRule, "_weighted", lambda self, ctx, g: None)
    slow = relprop.trace(model).explain(x, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-14, rtol=0)


@pytest.mark.parametrize("rule_set", [relprop.rules.Epsilon(1e-6), relprop.rules.EpsilonPlusFlat(),
                                      relprop.rules.AlphaBeta(2.0, 1.0), relprop.rules.ZBox(-1.0, 1.0)], ids=repr)
def test_classic_rules_fast_path_matches_autograd(rule_set, monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop.rules import lrp

    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    ).double().eval()
    fast = relprop.trace(model, rule_set).explain(x, [0, 2])
    monkeypatch.setattr(lrp, "input_product", lambda ctx, w, g: None)
    slow = relprop.trace(model, rule_set).explain(x, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-12, rtol=1e-10)
