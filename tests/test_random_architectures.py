"""Random everyday architectures, assembled from a grammar of blocks (issue 12, point 6).

Hypothesis draws a stack of blocks — grouped and dilated convolutions, batch / group /
layer / RMS norms, a dozen activations, squeeze-and-excitation gates, concatenation,
interpolation, pixel (un)shuffle, residuals, attention written three ways (the module,
the fused op, the formula), GLU — and checks, per model:

- strict mode explains it, or stops with a :class:`relprop.MissingRuleError` that names an op;
- ``strict=False`` always explains it: finite, shaped like the input, not all zero;
- the ε-based sets (LRP-ε, with a flat first layer, AttnLRP with CP-LRP) conserve relevance
  on a bias-free float64 model: the input relevance sums to the explained logit (the
  oracle is the model's own output);
- the model is untouched (parameters, buffers, training flag, hooks).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import relprop
from relprop import rules

pytestmark = pytest.mark.slow

C, SIZE, CLASSES = 4, 8, 3

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardswish": nn.Hardswish,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "mish": nn.Mish,
    "relu6": nn.ReLU6,
    "selu": nn.SELU,
}


class ChannelNorm(nn.Module):
    """LayerNorm or RMSNorm over the channels of an image (channels last inside)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(C, bias=False) if kind == "layer" else nn.RMSNorm(C)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(kind: str) -> nn.Module:
    if kind == "batch":
        bn = nn.BatchNorm2d(C)
        bn.bias.data.zero_()
        return bn
    if kind == "group":
        return nn.GroupNorm(2, C, affine=True)
    return ChannelNorm(kind)


class ConvBlock(nn.Module):
    def __init__(self, grouped: bool, dilation: int, norm: str | None, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=dilation, dilation=dilation, groups=C if grouped else 1, bias=False)
        self.norm = _norm(norm) if norm is not None else nn.Identity()
        self.act = ACTIVATIONS[act]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class SqueezeExcite(nn.Module):
    """EfficientNet's gate (SiLU inside: a ReLU bottleneck of a bias-free model can die
    entirely, and the relevance of a zero output has nowhere to go under any rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(C, C, 1, bias=False)
        self.expand = nn.Conv2d(C, C, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.merge = nn.Conv2d(2 * C, C, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(torch.cat([x, self.branch(x)], dim=1))


class Resample(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        small = F.avg_pool2d(x, 2)
        if self.mode == "nearest":
            return F.interpolate(small, scale_factor=2, mode="nearest")
        return F.interpolate(small, scale_factor=2, mode=self.mode, align_corners=False)


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4 * C, 4 * C, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(F.pixel_unshuffle(x, 2)), 2)


class Residual(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return x + self.inner(x)


class Attention(nn.Module):
    """Self-attention over the pixels, written three ways."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        if how == "module":
            self.mha = nn.MultiheadAttention(C, 2, bias=False, batch_first=True)
        else:
            self.qkv = nn.Linear(C, 3 * C, bias=False)
            self.proj = nn.Linear(C, C, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        if self.how == "module":
            o = self.mha(t, t, t, need_weights=False)[0]
        else:
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            if self.how == "fused":
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                o = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1) @ v
            o = self.proj(o)
        return o.transpose(1, 2).reshape(b, c, h, w)


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, 2 * C, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(self.conv(x), dim=1)


class Net(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(C, CLASSES, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


conv_blocks = st.builds(
    ConvBlock,
    grouped=st.booleans(),
    dilation=st.sampled_from([1, 2]),
    norm=st.sampled_from([None, "batch", "group", "layer", "rms"]),
    act=st.sampled_from(sorted(ACTIVATIONS)),
)
plain_blocks = st.one_of(
    conv_blocks,
    st.builds(SqueezeExcite),
    st.builds(Concat),
    st.builds(Resample, st.sampled_from(["nearest", "bilinear", "bicubic"])),
    st.builds(Shuffle),
    st.builds(Attention, st.sampled_from(["module", "fused", "formula"])),
    st.builds(Gated),
)
blocks = st.one_of(plain_blocks, st.builds(Residual, plain_blocks))
nets = st.builds(Net, st.lists(blocks, min_size=1, max_size=4))


def _snapshot(model: nn.Module) -> tuple:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()]
    return state, [m.training for m in model.modules()], hooks


def _unchanged(model: nn.Module, before: tuple) -> None:
    state, training, hooks = _snapshot(model)
    assert training == before[1] and hooks == before[2]
    assert state.keys() == before[0].keys()
    for k in state:
        assert torch.equal(state[k], before[0][k]), k


def _prepare(net: Net) -> tuple[Net, Tensor]:
    torch.manual_seed(0)
    model = copy.deepcopy(net).double().eval()
    for m in model.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    return model, x


SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(nets)
def test_strict_explains_or_names_an_op(net: Net) -> None:
    model, x = _prepare(net)
    before = _snapshot(model)
    for rule_set in (rules.AbsLRP(), rules.Epsilon(1e-9), rules.EpsilonPlusFlat()):
        try:
            R = relprop.trace(model, rule_set).explain(x, [0, 1])
        except relprop.MissingRuleError as err:
            assert "no rule for op" in str(err) and "." in str(err).split("no rule for op ", 1)[1].split()[0]
            continue
        assert R.shape == x.shape and torch.isfinite(R).all()
    _unchanged(model, before)


@SETTINGS
@given(nets)
def test_lenient_always_explains(net: Net) -> None:
    model, x = _prepare(net)
    before = _snapshot(model)
    for rule_set in (rules.AbsLRP(), rules.AttnLRP()):
        R = relprop.trace(model, rule_set, strict=False).explain(x, [0, 2])
        assert R.shape == x.shape and torch.isfinite(R).all()
        assert (R.abs().flatten(1).sum(1) > 0).all()
    _unchanged(model, before)


@SETTINGS
@given(nets)
def test_classic_sets_conserve_without_biases(net: Net) -> None:
    model, x = _prepare(net)
    before = _snapshot(model)
    with torch.no_grad():
        logits = model(x)
    target = [0, 2]
    chosen = logits[torch.arange(2), target]
    # z⁺ and αβ are left out: they drop the relevance of a neuron none of whose
    # contributions is positive, which signed inputs make common
    for rule_set in (rules.Epsilon(1e-12), rules.Epsilon(1e-12, first=rules.FlatRule()), rules.AttnLRP(1e-12, cp=True)):
        R = relprop.trace(model, rule_set).explain(x, target)
        totals = R.flatten(1).sum(1)
        torch.testing.assert_close(totals, chosen, rtol=1e-6, atol=1e-12)
    _unchanged(model, before)
