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


class _Block(nn.Module):
    """Conv, eval batch norm, ReLU, max pooling and a residual add, as in ResNets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4, affine=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        return self.head(h.flatten(1))


class _Encoder(nn.Module):
    """Layer norm, GELU (both variants) and residual adds, as in transformers."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 6)
        self.norm2 = nn.LayerNorm(6, elementwise_affine=False)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(6 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + nn.functional.gelu(self.fc(self.norm(x)))
        h = h + nn.functional.gelu(self.fc2(self.norm2(h)), approximate="tanh")
        return self.head(h.flatten(1))


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = torch.randn(m.num_features, generator=g)
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
            if m.affine:
                m.weight.data = torch.randn(m.num_features, generator=g)
        if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            m.weight.data = torch.randn(m.normalized_shape, generator=g)
    return model.double().eval()


@pytest.mark.parametrize("contrastive", [True, False])
@pytest.mark.parametrize("maxpool_divide", [True, False])
@pytest.mark.parametrize("case", ["block", "encoder"])
def test_abslrp_closed_forms_match_generic_path(
    case: str, maxpool_divide: bool, contrastive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ReLU, batch norm, add, max pooling, layer norm, GELU: closed form = autograd path."""
    torch.manual_seed(0)
    if case == "block":
        model = _randomize(_Block())
        x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
        x[0, :, :2] = 0.0  # exact zeros at ReLUs
        x[1, :, :, :4] = 0.5  # ties inside max-pooling windows
    else:
        model = _randomize(_Encoder())
        x = torch.randn(3, 4, 6, dtype=torch.float64)
    rules = relprop.rules.AbsLRP(maxpool_divide=maxpool_divide)
    fast = relprop.trace(model, rules).explain(x, [0, 2, 1], contrastive=contrastive)
    seen: list[str] = []
    for name in ("closed_form", "diagonal_step"):  # record which nodes had a closed form, use none
        form = getattr(abslrp, name)
        monkeypatch.setattr(
            abslrp, name,
            lambda ctx, *a, form=form: seen.append(str(ctx.op)) if form(ctx, *a) is not None else None,
        )
    monkeypatch.setattr(abslrp.AbsRule, "_weighted", lambda self, ctx, g: None)
    slow = relprop.trace(model, rules).explain(x, [0, 2, 1], contrastive=contrastive)
    expected = {
        "block": ["relu", "batch_norm", "add", "max_pool2d"],
        "encoder": ["layer_norm", "gelu", "add"],
    }[case]
    assert all(any(op in s for s in seen) for op in expected), seen
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=0)


def test_epsilon_add_fast_path_matches_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop.rules import lrp

    torch.manual_seed(0)
    model = _randomize(_Block())
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    fast = relprop.trace(model, relprop.rules.Epsilon(1e-6)).explain(x, [0, 2, 1])
    calls = []
    monkeypatch.setattr(lrp, "_plain_add", lambda ctx, R: calls.append(ctx.op) and False)
    slow = relprop.trace(model, relprop.rules.Epsilon(1e-6)).explain(x, [0, 2, 1])
    assert calls and fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=0)


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.head(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], 8).mean(1))


@pytest.mark.parametrize("case", ["plain", "float_mask", "bool_mask", "causal"])
def test_attention_closed_form_matches_autograd(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _SelfAttention().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    inputs: dict = {"x": x}
    if case == "bool_mask":
        inputs["mask"] = torch.ones(2, 1, 5, 5, dtype=torch.bool)
        inputs["mask"][1, :, :, 3:] = False
    if case == "float_mask":
        inputs["mask"] = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
        inputs["mask"][1, :, :, 3:] = torch.finfo(torch.float64).min
    if case == "causal":
        inputs["causal"] = True
    fast = relprop.trace(model).explain(inputs, [0, 2])
    monkeypatch.setattr(abslrp, "attention_closed_form", lambda ctx, R, eps: None)
    slow = relprop.trace(model).explain(inputs, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=0), (fast - slow).abs().max()


def test_cached_absolute_weights_follow_weight_changes() -> None:
    """|W| is cached per trace; in-place updates and replaced tensors must be seen."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    graph = relprop.trace(model)
    before = graph.explain(x, [0, 1])
    assert len(abslrp._ABS_WEIGHTS) >= 2
    with torch.no_grad():
        model[0].weight.add_(torch.randn_like(model[0].weight))
    after_inplace = graph.explain(x, [0, 1])
    abslrp._ABS_WEIGHTS.clear()
    assert torch.equal(after_inplace, graph.explain(x, [0, 1]))
    model[3].weight.data = torch.randn_like(model[3].weight)
    after_replace = graph.explain(x, [0, 1])
    abslrp._ABS_WEIGHTS.clear()
    assert torch.equal(after_replace, graph.explain(x, [0, 1]))
    assert not torch.allclose(before, after_inplace) and not torch.allclose(after_inplace, after_replace)
