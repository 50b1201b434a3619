"""absLRP's vanishing contrast is reported (issue 21, point 6).

When a contrastive explanation's positive pass (the target) and negative pass (all other
classes) nearly cancel, the map is small and made of what the passes do not share; relprop
warns once, naming the number, and suggests AttnLRP.  The oracle for the number is the two
passes the explanation returns, compared here by hand.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import relprop
import relprop.explanation as explanation_module
from relprop import rules


def _classifier(spread: float) -> nn.Module:
    """x -> 64 classes whose weight rows are one row plus ``spread`` times noise."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 64))
    with torch.no_grad():
        base = torch.randn(1, 16)
        model[2].weight.copy_(base + spread * torch.randn(64, 16))
        model[2].bias.zero_()
    return model.double().eval()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explanation_module, "_contrast_warned", False)


def test_vanishing_contrast_warns_once_with_the_number(fresh: None) -> None:
    model = _classifier(spread=1e-4)
    x = torch.randn(3, 8, dtype=torch.float64)
    graph = relprop.trace(model, rules=rules.AbsLRP(), cache=False)
    with pytest.warns(UserWarning, match="nearly cancel") as caught:
        ex = graph.explanation(x, target=5)
    R0, R1 = ex.passes[next(iter(ex.passes))]
    ratio = (R0 - R1).abs().sum(1) / R0.abs().sum(1)
    assert float(ratio.max()) < 0.01
    message = str(caught[0].message)
    worst = int(ratio.argmin())
    assert f"sample {worst}" in message and f"{100 * float(ratio.min()):.2g} %" in message
    assert "AttnLRP" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph.explanation(x, target=5)  # once per process


def test_distinct_classes_do_not_warn(fresh: None) -> None:
    model = _classifier(spread=1.0)
    x = torch.randn(3, 8, dtype=torch.float64)
    graph = relprop.trace(model, rules=rules.AbsLRP(), cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = graph.explanation(x, target=5)
    R0, R1 = ex.passes[next(iter(ex.passes))]
    assert float(((R0 - R1).abs().sum(1) / R0.abs().sum(1)).min()) >= 0.01
    with warnings.catch_warnings():  # a set that is not contrastive never warns
        warnings.simplefilter("error")
        relprop.trace(_classifier(spread=1e-4), rules=rules.Epsilon(), cache=False).explain(x, target=5)
