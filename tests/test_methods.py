"""Attribution method adapters (relprop.methods): contract on the digits models, hand-computed oracles."""

from __future__ import annotations

import re
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from model_state import assert_unchanged, hooks, snapshot
from torch import Tensor, nn

import relprop
from relprop import methods as RM
from relprop.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

pytest.importorskip("captum")
pytest.importorskip("pytorch_grad_cam")


class TinyCNN(nn.Module):
    """conv-ReLU-conv(stride 2)-ReLU feature map (5, 4, 4) on 8x8 inputs, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(5 * 4 * 4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def tiny_cnn(dtype: torch.dtype = torch.float32) -> TinyCNN:
    torch.manual_seed(1)
    return TinyCNN().to(dtype).eval()


def mlp() -> nn.Module:
    """No conv layer: (N, 3, 2, 2) -> 3 classes."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    x, y = relprop.models.load_digits_test().tensors
    return x[:2], y[:2]


# ------------------------------------------------------------ contract on the shipped models


@pytest.mark.parametrize("arch", ["vgg", "resnet", "vit"])
def test_every_method_on_digits_models(arch: str, digits: tuple[Tensor, Tensor]) -> None:
    x, y = digits
    model = relprop.models.load_digits_model(arch)
    if arch == "resnet":
        model.train()  # batch norm in training mode would update running statistics
    p0 = next(model.parameters())
    p0.grad = torch.full_like(p0, 0.5)  # a user's gradient must survive (grad-cam calls zero_grad)
    p0.requires_grad_(False)  # and a frozen parameter stays frozen
    methods, skipped = RM.build_methods(model, seed=3)
    no_attention = set() if arch == "vit" else set(RM.ATTENTION_METHODS)  # CNNs: no attention
    assert set(skipped) == no_attention and tuple(methods) == tuple(n for n in RM.METHOD_NAMES if n not in no_attention)
    again, _ = RM.build_methods(model, ["random"], seed=3)
    before = snapshot(model)
    rng = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, method in methods.items():
            a = method(model, x, y)
            assert a.shape == x.shape and a.dtype == x.dtype and not a.requires_grad, name
            assert torch.isfinite(a).all(), name
            assert a.abs().sum() > 0, name
            if name not in RM.RELPROP_METHODS:  # (relprop's own determinism is tested with the rules)
                b = (again["random"] if name == "random" else method)(model, x, y)
                assert torch.equal(a, b), f"{name} is not deterministic"
            assert_unchanged(model, before, name)
    assert torch.equal(torch.get_rng_state(), rng)


def test_find_cam_layer(digits: tuple[Tensor, Tensor]) -> None:
    x, _ = digits
    vgg = relprop.models.load_digits_model("vgg")
    assert RM.find_cam_layer(vgg, x) == ("features", vgg.features, None)
    resnet = relprop.models.load_digits_model("resnet")
    assert RM.find_cam_layer(resnet, x)[:2] == ("layer3", resnet.layer3)  # not the 1x1 shortcut conv
    vit = relprop.models.load_digits_model("vit")
    name, module, grid = RM.find_cam_layer(vit, x)
    assert (name, module, (grid.h, grid.w)) == ("blocks.3.norm1", vit.blocks[3].norm1, (8, 8))
    with pytest.raises(InputError, match="Conv2d"):
        RM.find_cam_layer(mlp(), torch.randn(2, 3, 2, 2))


# ------------------------------------------------------------ oracles


def logit_grad(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)
    return g


def test_saliency_and_input_x_gradient() -> None:
    model, x, t = tiny_cnn(), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    g = logit_grad(model, x, t)
    assert torch.allclose(RM.captum_method("Saliency")(model, x, t), g.abs())
    assert torch.allclose(RM.captum_method("InputXGradient")(model, x, t), x * g)


def test_integrated_gradients_linear_completeness() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double()
    x, t = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    a = RM.get_method("IntegratedGradients")(model, x, t)
    w = model[1].weight[t].reshape(x.shape).detach()
    assert torch.allclose(a, x * w, atol=1e-10)  # (x - 0) * w_c


def test_deeplift_sums_to_output_difference() -> None:
    model = mlp()
    x, t = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    a = RM.captum_method("DeepLIFT")(model, x, t)
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, t[:, None]).squeeze(1)
    assert torch.allclose(a.sum((1, 2, 3)), delta, atol=1e-5)
    assert not torch.allclose(a, RM.captum_method("InputXGradient")(model, x, t))  # rescale rule, not gradient


class SideBranch(nn.Module):
    """A ReLU computed but unused: the backward pass never reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.relu, self.aux = nn.Linear(12, 3), nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        self.aux(x)
        return self.lin(self.relu(x))


def test_deeplift_leaves_no_attributes_on_unreached_modules() -> None:
    # captum's DeepLift sets aux.input / aux.output and deletes them only in aux's backward hook
    model = SideBranch().eval()
    before = snapshot(model)
    RM.captum_method("DeepLIFT")(model, torch.randn(2, 3, 2, 2), torch.tensor([0, 1]))
    assert not {"input", "output"} & set(vars(model.aux))
    assert_unchanged(model, before, "DeepLIFT")


def vjp(fn, x: Tensor, g: Tensor) -> Tensor:
    """The transposed Jacobian of a linear op at x applied to g (the op's backward, nothing else)."""
    xg = x.detach().clone().requires_grad_(True)
    (out,) = torch.autograd.grad(fn(xg), xg, g)
    return out


def test_deconvolution_matches_hand_computation() -> None:
    """Deconvolution (Zeiler & Fergus): backward through the linear ops, each ReLU passing the
    positive part of the gradient from above whatever its forward input."""
    model, x, t = tiny_cnn(torch.float64), torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    c1, c2, head = model.features[0], model.features[2], model.head[1]
    with torch.no_grad():
        h1 = F.conv2d(x, c1.weight, c1.bias, padding=1)
        h2 = F.conv2d(F.relu(h1), c2.weight, c2.bias, 2, 1)
    g = head.weight.detach()[t].reshape(4, 5, 4, 4)  # d logit_t / d (flattened feature map)
    g = vjp(lambda a: F.conv2d(a, c2.weight.detach(), None, 2, 1), h1, F.relu(g))  # ReLU: relu(upstream)
    want = vjp(lambda a: F.conv2d(a, c1.weight.detach(), None, padding=1), x, F.relu(g))
    got = RM.captum_method("Deconvolution")(model, x, t)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert (h2 < 0).any() and not torch.allclose(got, logit_grad(model, x, t))  # not the gradient
    net = mlp()  # (the forward input does not matter: the same map for any x)
    W1, W2 = net[1].weight.detach(), net[3].weight.detach()
    a = RM.get_method("Deconvolution")(net, torch.randn(3, 3, 2, 2), torch.tensor([0, 1, 2]))
    for i, c in enumerate([0, 1, 2]):
        assert torch.allclose(a[i], (F.relu(W2[c]) @ W1).reshape(3, 2, 2), atol=1e-6)


def test_smoothgrad_seed_and_zero_noise() -> None:
    model, x, t = tiny_cnn(), torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    rng = torch.get_rng_state()
    a = RM.captum_method("SmoothGrad", seed=1)(model, x, t)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, RM.captum_method("SmoothGrad", seed=1)(model, x, t))
    assert not torch.allclose(a, RM.captum_method("SmoothGrad", seed=2)(model, x, t))
    zero = RM.captum_method("SmoothGrad", stdevs=0.0, nt_samples=2)(model, x, t)
    assert torch.allclose(zero, logit_grad(model, x, t).abs(), atol=1e-6)


def hand_gradcam(model: nn.Module, feats: Tensor, head: nn.Module, t: Tensor) -> Tensor:
    """ReLU(sum_k mean(dy_c/dA_k) A_k) of the feature map ``feats`` (N, K, h, w) -> (N, 1, h, w)."""
    a = feats.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(head(a).gather(1, t[:, None]).sum(), a)
    return torch.relu((g.mean((2, 3), keepdim=True) * a.detach()).sum(1, keepdim=True))


def minmax(a: Tensor) -> Tensor:
    lo = a.amin((1, 2, 3), keepdim=True)
    return (a - lo) / (a.amax((1, 2, 3), keepdim=True) - lo)


def test_layer_gradcam_and_gradcam_match_hand_computation() -> None:
    model, x = tiny_cnn(), torch.randn(4, 3, 8, 8)
    c1, c2 = model.features[0], model.features[2]
    feats = F.relu(F.conv2d(F.relu(F.conv2d(x, c1.weight, c1.bias, padding=1)), c2.weight, c2.bias, 2, 1))
    cams = [hand_gradcam(model, feats, model.head, torch.full((4,), c)) for c in range(3)]
    spread = torch.stack([c.amax((1, 2, 3)) - c.amin((1, 2, 3)) for c in cams], 1)
    t = spread.argmax(1)  # per image, a class whose map is not constant
    cam = torch.stack([cams[int(c)][i] for i, c in enumerate(t)])
    assert (cam.amax((1, 2, 3)) > cam.amin((1, 2, 3)) + 1e-3).all()
    up = F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)
    a = RM.captum_method("LayerGradCam")(model, x, t)
    assert torch.allclose(a, up.expand(-1, 3, -1, -1), atol=1e-6)
    g = RM.cam_method("GradCAM")(model, x, t)
    assert torch.equal(g[:, 0], g[:, 2])
    assert torch.allclose(g[:, :1], minmax(up), atol=1e-4)  # grad-cam's own min-max scaling


def test_vit_token_cam_matches_hand_computation(digits: tuple[Tensor, Tensor]) -> None:
    x, t = digits
    vit = relprop.models.load_digits_model("vit")
    seen: list[Tensor] = []
    handle = vit.blocks[3].norm1.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        xg = x.clone().requires_grad_(True)
        out = vit(xg).gather(1, t[:, None]).sum()
    finally:
        handle.remove()
    tokens = seen[0]
    (g,) = torch.autograd.grad(out, tokens)
    grid = RM.TokenGrid(8, 8)
    feats, grads = grid(tokens.detach()), grid(g)  # class token dropped
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True))
    up = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(RM.captum_method("LayerGradCam")(vit, x, t)[:, :1], up, atol=1e-5)
    assert torch.allclose(RM.cam_method("GradCAM")(vit, x, t)[:, :1], minmax(up), atol=1e-4)
    assert hooks(vit) == hooks(relprop.models.load_digits_model("vit"))


def test_relprop_rule_sets() -> None:
    model, x, t = tiny_cnn(), torch.randn(3, 3, 8, 8), torch.tensor([2, 0, 1])
    rules = relprop.rules
    names = ["absLRP", "cLRP", "LRP-eps", "lrp-alpha1beta0", "LRP-α2β1", "rap", "crap", "attnlrp"]
    m, _ = RM.build_methods(model, names)
    assert list(m) == ["absLRP", "cLRP", "LRP-ε", "LRP-α1β0", "LRP-α2β1", "RAP", "cRAP", "AttnLRP"]
    expected = {
        "absLRP": relprop.trace(model, rules=rules.AbsLRP()).explain(x, t),
        "LRP-ε": relprop.trace(model, rules=rules.Epsilon(1e-6)).explain(x, t),
        "LRP-α2β1": relprop.trace(model, rules=rules.AlphaBeta(2.0, 1.0)).explain(x, t),
        "RAP": relprop.trace(model, rules=rules.RAP()).explain(x, t, contrastive=False),
        "AttnLRP": relprop.trace(model, rules=rules.AttnLRP()).explain(x, t, contrastive=False),
    }
    e = relprop.trace(model, rules=rules.RAP()).explanation(x, t, contrastive=True)
    passes = next(iter(e.passes.values()))
    expected["cRAP"] = passes[0] - passes[1]
    e = relprop.trace(model, rules=rules.AlphaBeta(1.0, 0.0)).explanation(x, t, contrastive=True)
    passes = next(iter(e.passes.values()))
    expected["cLRP"] = passes[0] - passes[1]
    expected["LRP-α1β0"] = relprop.trace(model, rules=rules.AlphaBeta(1.0, 0.0)).explain(x, t, contrastive=False)
    for name, want in expected.items():
        assert torch.allclose(m[name](model, x, t), want, atol=1e-6), name
    assert not torch.allclose(expected["cLRP"], expected["LRP-α1β0"], atol=1e-3)


def test_relprop_methods_come_from_the_registry() -> None:
    from relprop.rules import registry

    assert RM.RELPROP_METHODS == tuple(registry.entry(n).display for n in RM.RELPROP_RULE_SETS)
    assert [RM.resolve_name(n) for n in RM.RELPROP_RULE_SETS] == list(RM.RELPROP_METHODS)
    model, x, t = tiny_cnn(), torch.randn(3, 3, 8, 8), torch.tensor([2, 0, 1])
    by_registry, _ = RM.build_methods(model, list(RM.RELPROP_RULE_SETS))
    by_display, _ = RM.build_methods(model, list(RM.RELPROP_METHODS))
    assert list(by_registry) == list(RM.RELPROP_METHODS)
    for name in RM.RELPROP_METHODS:
        assert torch.equal(by_registry[name](model, x, t), by_display[name](model, x, t)), name
    for name in ("zplus", "epsilon-plus-flat"):  # rule sets of the registry that are not compared methods
        with pytest.raises(InputError, match="valid names: absLRP, cLRP"):
            RM.resolve_name(name)
    with pytest.raises(InputError, match="not a relprop rule set"):
        RM.lrp_method("Saliency")


class PoolNet(nn.Module):
    """conv-ReLU-max pool-conv-ReLU-max pool, linear head: where absLRP's two variants differ."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def test_abslrp_variants() -> None:
    torch.manual_seed(4)
    model, x, t = PoolNet().eval(), torch.randn(3, 3, 8, 8), torch.tensor([2, 0, 1])
    divide = relprop.trace(model, rules=relprop.rules.AbsLRP()).explain(x, t)
    no_divide = relprop.trace(model, rules=relprop.rules.AbsLRP(maxpool_divide=False)).explain(x, t)
    assert not torch.allclose(divide, no_divide, atol=1e-4)  # the variants differ on this model
    for variant, want in (("vgg", no_divide), ("resnet", divide), (None, divide)):
        m, _ = RM.build_methods(model, ["absLRP"], abslrp_variant=variant)
        assert torch.allclose(m["absLRP"](model, x, t), want, atol=1e-6), variant
    names = ["absLRP", "abslrp-vgg", "absLRP (maxpool division)"]
    m, _ = RM.build_methods(model, names, abslrp_variant="vgg")
    assert list(m) == ["absLRP", "absLRP (no maxpool division)", "absLRP (maxpool division)"]
    assert torch.allclose(m["absLRP"](model, x, t), no_divide, atol=1e-6)
    assert torch.allclose(m["absLRP (no maxpool division)"](model, x, t), no_divide, atol=1e-6)
    assert torch.allclose(m["absLRP (maxpool division)"](model, x, t), divide, atol=1e-6)
    assert RM.resolve_name("absLRP-ResNet") == "absLRP (maxpool division)"
    everything, _ = RM.build_methods(model)  # the explicit variants run only when named
    assert not set(everything) & set(RM.ABSLRP_VARIANT_METHODS)
    for bad in ("alexnet", "VGG", ""):
        with pytest.raises(InputError, match="unknown absLRP variant.*expected one of vgg, resnet"):
            RM.build_methods(model, ["Saliency"], abslrp_variant=bad)
    with pytest.raises(InputError, match="unknown absLRP variant"):
        RM.relprop_method(variant="densenet")


def test_float64_batch_of_100() -> None:
    model = tiny_cnn(torch.float64)
    x, t = torch.randn(100, 3, 8, 8, dtype=torch.float64), torch.arange(100) % 3
    methods, skipped = RM.build_methods(model)
    assert set(skipped) == set(RM.ATTENTION_METHODS)
    for name, method in methods.items():
        a = method(model, x, t)
        assert a.shape == x.shape and a.dtype == torch.float64 and torch.isfinite(a).all(), name


# ------------------------------------------------------------ errors and skipped methods


def test_unknown_name() -> None:
    with pytest.raises(InputError, match="valid names: absLRP, cLRP"):
        RM.build_methods(tiny_cnn(), ["absLRP", "GradCam+++"])


def test_no_conv_layer() -> None:
    model = mlp()
    methods, skipped = RM.build_methods(model)
    assert set(skipped) == set(RM.LAYER_METHODS + RM.ATTENTION_METHODS)
    assert all("no nn.Conv2d" in skipped[n] for n in RM.LAYER_METHODS)
    assert list(methods) == [n for n in RM.METHOD_NAMES if n not in skipped]
    with pytest.raises(InputError, match="'GradCAM'.*no nn.Conv2d"):
        RM.build_methods(model, ["Saliency", "GradCAM"])
    a = methods["IntegratedGradients"](model, torch.randn(2, 3, 2, 2), torch.tensor([0, 2]))
    assert a.shape == (2, 3, 2, 2)


@pytest.mark.parametrize(
    ("package", "names", "hint"),
    [("captum", RM.CAPTUM_METHODS, "relprop[captum]"), ("pytorch_grad_cam", RM.CAM_METHODS, "relprop[cam]")],
)
def test_missing_package(monkeypatch: pytest.MonkeyPatch, package: str, names: tuple, hint: str) -> None:
    for mod in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, package, None)
    methods, skipped = RM.build_methods(tiny_cnn())
    assert set(skipped) == set(names + RM.ATTENTION_METHODS) and not set(methods) & set(names)
    assert all(f"pip install '{hint}'" in skipped[n] for n in names)
    pattern = re.escape(names[-1]) + ".*not installed.*" + re.escape(f"pip install '{hint}'")
    with pytest.raises(InputError, match=pattern):
        RM.build_methods(tiny_cnn(), ["absLRP", names[-1]])
    with pytest.raises(InputError, match="not installed"):
        RM.get_method(names[0])


def test_random_baseline_depends_on_the_input_and_seed_only() -> None:
    from relprop.evaluation.methods import random_method

    x = torch.arange(24.0).reshape(2, 3, 2, 2)
    a, b = random_method(0), random_method(0)
    first = a(None, x, torch.zeros(2, dtype=torch.long))
    a(None, x + 1, torch.zeros(2, dtype=torch.long))  # another call in between changes nothing
    assert torch.equal(first, a(None, x, torch.zeros(2, dtype=torch.long)))
    assert torch.equal(first, b(None, x.clone(), torch.zeros(2, dtype=torch.long)))  # another process/instance
    assert not torch.equal(first, random_method(1)(None, x, torch.zeros(2, dtype=torch.long)))
    assert not torch.equal(first, a(None, x + 1, torch.zeros(2, dtype=torch.long)))
    assert first.shape == x.shape and 0 <= first.min() and first.max() < 1
