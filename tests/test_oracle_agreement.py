"""relprop's absLRP against an independent, module-by-module oracle (``abslrp_oracle``).

The oracle is written from the semantics only (docs/semantics.md §absLRP) and walks
the ``nn.Module`` tree with local autograd, the way the absLRP authors' code does. First it is checked
against the authors' own maps (the fixtures in ``../shared/reference``): that makes it
a faithful stand-in for the reference. Then relprop is compared with it on models of
the same families that are not in the fixtures: small explicit VGG / ResNet / ViT
networks (batch norm, max pooling both ways, residual merges with a downsampling
shortcut, ``nn.MultiheadAttention``, an ``nn.Identity`` on the logits), and timm
``vgg11_bn``, ``resnet18`` and ``vit_small_patch16_224`` at small sizes.

Everything in float64, batch 2, one target per sample; per sample the cosine of each
pass must be ≥ 0.999 and of the combined map ≥ 0.99. Norm layers get random affine
parameters and running statistics (timm initializes them to identities, and zero-inits
the last batch norm of each residual branch, which would leave branches untested).
Run with ``-s`` to see the measured cosines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import abslrp_oracle as oracle
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED
from torch import Tensor, nn

import relprop
from relprop import rules

pytestmark = pytest.mark.slow

PASS_MIN = 0.999
COMBINED_MIN = 0.99
TARGETS = torch.tensor([1, 7])


def cosines(a: Tensor, b: Tensor) -> list[float]:
    """Per-sample cosine similarity of flattened maps, in float64.

    Each map is first scaled by its max |value|: the combined map of a random-weight
    model can be tiny (its norm ~1e-9), below the norm clamp of
    ``F.cosine_similarity``, which would then report a spuriously low value.
    """
    a, b = (unit_max(t.detach().double().flatten(1)) for t in (a, b))
    return F.cosine_similarity(a, b, dim=1).tolist()


def unit_max(t: Tensor) -> Tensor:
    """Rows scaled to max |value| = 1 (all-zero rows stay zero)."""
    top = t.abs().amax(1, keepdim=True)
    return t / torch.where(top > 0, top, torch.ones_like(top))


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.9f}" for v in values) + "]"


def check(name: str, measured: dict[str, list[float]]) -> None:
    """Print the cosines and assert the thresholds (the message carries all of them)."""
    report = f"{name}: " + "  ".join(f"{k}={fmt(v)}" for k, v in measured.items())
    print("\n" + report)
    for which, values in measured.items():
        bound = COMBINED_MIN if which == "combined" else PASS_MIN
        assert min(values) >= bound, f"{which} below {bound}: {report}"


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Random affine parameters (both signs) and running statistics for every norm layer."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            if m.weight is not None:
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.5 + 0.8)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


# -- the oracle against the authors' maps ------------------------------------------------------


@pytest.mark.parametrize("name, samples", [("vgg16", 1), ("vit_tiny_patch16_224", 2)], ids=["vgg16", "vit_tiny"])
def test_oracle_reproduces_reference(name: str, samples: int) -> None:
    """The oracle itself matches the authors' maps (VGG16 on one sample, to save time)."""
    path = SHARED / "reference" / f"abslrp_{name}.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture not found at {path} (absent outside the shared workspace)")
    timm = pytest.importorskip("timm")
    fixture = torch.load(path)
    torch.manual_seed(int(fixture.get("seed", 0)))
    model = timm.create_model(name, pretrained=False).eval()
    fingerprint = torch.stack([p.double().pow(2).sum() for p in model.parameters()])
    if fingerprint.shape != fixture["fingerprint"].shape or not torch.allclose(
        fingerprint, fixture["fingerprint"].double(), rtol=1e-5
    ):
        pytest.fail(
            f"weight fingerprint of {name} differs: fixture made with {fixture.get('versions')}, "
            f"this run has torch {torch.__version__}, timm {timm.__version__}",
            pytrace=False,
        )
    model.double()
    x = fixture["x"][:samples].double()
    target = fixture["target_targets"][:samples].long()
    result = oracle.explain(model, x, target, maxpool_divide=name != "vgg16")
    check(
        f"oracle vs reference {name}",
        {
            "positive": cosines(result.passes[0], fixture["positive_targets"][:samples]),
            "negative": cosines(result.passes[1], fixture["negative_targets"][:samples]),
            "combined": cosines(result.relevance, fixture["relevance_targets"][:samples]),
        },
    )


# -- small explicit models -----------------------------------------------------------------------


def small_vgg() -> nn.Module:
    """VGG-style: conv / batch norm / ReLU / max pool, adaptive pooling, MLP head, Identity."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, 10),
        nn.Identity(),
    )


class Block(nn.Module):
    """Basic residual block; a 1x1 conv + batch norm shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.down is None else self.down(x)
        h += shortcut
        return self.relu2(h)


class SmallResNet(nn.Module):
    """Stem with max pooling, two basic blocks (one downsampling), average pool, fc, Identity."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        self.blocks = nn.ModuleList([Block(8, 8, 1), Block(8, 16, 2)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)
        self.out = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for blk in self.blocks:
            x = blk(x)
        return self.out(self.fc(torch.flatten(self.pool(x), 1)))


def walk_small_resnet(tape: oracle.Tape, m: nn.Module, x: Tensor, maxpool_divide: bool) -> Tensor:
    """Oracle walk of :class:`SmallResNet`."""
    x = oracle.module(tape, m.stem, x, maxpool_divide)
    for blk in m.blocks:
        h = x
        for child in (blk.conv1, blk.bn1, blk.relu1, blk.conv2, blk.bn2):
            h = oracle.module(tape, child, h)
        shortcut = x if blk.down is None else oracle.module(tape, blk.down, x)
        x = oracle.module(tape, blk.relu2, oracle.add(tape, h, shortcut))
    x = oracle.module(tape, m.pool, x)
    x = tape.move("flatten", lambda t: torch.flatten(t, 1), x)
    return oracle.module(tape, m.out, oracle.linear(tape, m.fc, x))


class SmallViT(nn.Module):
    """Patch conv, class token, position embedding, pre-norm blocks with
    ``nn.MultiheadAttention`` and a GELU MLP, final norm, class-token pooling, head."""

    def __init__(self, dim: int = 16, heads: int = 2, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.5)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            blk = nn.Module()
            blk.norm1 = nn.LayerNorm(dim)
            blk.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            blk.norm2 = nn.LayerNorm(dim)
            blk.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.blocks.append(blk)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for blk in self.blocks:
            h = blk.norm1(x)
            x = x + blk.attn(h, h, h, need_weights=False)[0]
            x = x + blk.mlp(blk.norm2(x))
        return self.head(self.norm(x)[:, 0])


def walk_small_vit(tape: oracle.Tape, m: nn.Module, x: Tensor, maxpool_divide: bool) -> Tensor:
    """Oracle walk of :class:`SmallViT`."""
    x = oracle.conv2d(tape, m.patch, x)
    x = tape.move("patches", lambda t: t.flatten(2).transpose(1, 2), x)
    cls = m.cls.detach().expand(x.shape[0], -1, -1)
    x = tape.move("cat_cls", lambda t: torch.cat([cls, t], dim=1), x)
    x = oracle.add_constant(tape, x, m.pos)
    for blk in m.blocks:
        h = oracle.multihead_attention(tape, blk.attn, oracle.layer_norm(tape, blk.norm1, x))
        x = oracle.add(tape, x, h)
        h = oracle.module(tape, blk.mlp, oracle.layer_norm(tape, blk.norm2, x))
        x = oracle.add(tape, x, h)
    x = oracle.select_token(tape, oracle.layer_norm(tape, m.norm, x), 0)
    return oracle.linear(tape, m.head, x)


# -- cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    """A model, its input size, the absLRP variant and (for own models) the oracle walker."""

    build: Callable[[], nn.Module]
    size: int
    maxpool_divide: bool = True
    walker: oracle.Walker | None = None


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return build


def _unfused(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """timm attention on its explicit path: q * scale, q @ kᵀ, softmax, attn @ v."""

    def unfused() -> nn.Module:
        model = build()
        for blk in model.blocks:
            blk.attn.fused_attn = False
        return model

    return unfused


CASES: dict[str, Case] = {
    "small_vgg[maxpool_divide=False]": Case(small_vgg, 16, maxpool_divide=False),
    "small_vgg[maxpool_divide=True]": Case(small_vgg, 16, maxpool_divide=True),
    "small_resnet": Case(SmallResNet, 16, walker=walk_small_resnet),
    "small_vit_mha": Case(SmallViT, 16, walker=walk_small_vit),
    # a 32x32 input reaches the head as 1x1 and ConvMlp upsamples it to 7x7
    "timm_vgg11_bn": Case(_timm("vgg11_bn", mlp_ratio=1 / 16), 32, maxpool_divide=False),
    "timm_resnet18": Case(_timm("resnet18"), 32),
    "timm_vit_small": Case(_timm("vit_small_patch16_224", img_size=32, depth=2), 32),
    "timm_vit_small[fused_attn=False]": Case(_unfused(_timm("vit_small_patch16_224", img_size=32, depth=2)), 32),
}


def _model_and_input(case: Case) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = randomize_norms(case.build()).eval().double()
    return model, torch.randn(2, 3, case.size, case.size, dtype=torch.float64)


@pytest.mark.parametrize(
    "name",
    list(CASES),
)
def test_relprop_matches_oracle(name: str) -> None:
    """Positive pass, negative pass and combined map agree per sample with the oracle."""
    case = CASES[name]
    model, x = _model_and_input(case)
    t0 = time.perf_counter()
    expected = oracle.explain(model, x, TARGETS, maxpool_divide=case.maxpool_divide, walker=case.walker)
    t1 = time.perf_counter()
    graph = relprop.trace(model, rules=rules.AbsLRP(maxpool_divide=case.maxpool_divide))
    e = graph.explanation(x, TARGETS)
    t2 = time.perf_counter()
    print(f"\n{name}: oracle {t1 - t0:.1f} s ({expected.ops} ops), relprop {t2 - t1:.1f} s")
    torch.testing.assert_close(e.output, expected.logits)
    passes = e.passes[0]
    assert passes.shape == (2, *x.shape)
    check(
        f"relprop vs oracle {name}",
        {
            "positive": cosines(passes[0], expected.passes[0]),
            "negative": cosines(passes[1], expected.passes[1]),
            "combined": cosines(e.relevance, expected.relevance),
        },
    )


def test_relprop_matches_oracle_mha_per_sample() -> None:
    """Explained one sample at a time (no packing ambiguity), relprop's
    ``nn.MultiheadAttention`` path matches the oracle: the rest of the path is right."""
    model, x = _model_and_input(CASES["small_vit_mha"])
    expected = oracle.explain(model, x, TARGETS, walker=walk_small_vit)
    graph = relprop.trace(model)
    parts = [graph.explanation(x[i : i + 1], TARGETS[i : i + 1]).passes[0] for i in range(2)]
    passes = torch.cat(parts, dim=1)
    check(
        "relprop (per sample) vs oracle small_vit_mha",
        {
            "positive": cosines(passes[0], expected.passes[0]),
            "negative": cosines(passes[1], expected.passes[1]),
            "combined": cosines(passes[0] - passes[1], expected.relevance),
        },
    )


# -- the comparison can fail --------------------------------------------------------------------


def test_oracle_tells_semantics_apart() -> None:
    """The thresholds see a wrong rule: each variant below moves the oracle's own maps
    under them (dividing at max pooling; passing the position-embedding add by its
    gradient; giving q·scale the rule instead of passing its relevance to q)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    vgg = randomize_norms(small_vgg()).eval().double()
    no_div = oracle.explain(vgg, x, TARGETS, maxpool_divide=False)
    div = oracle.explain(vgg, x, TARGETS, maxpool_divide=True)
    found = {"max-pool division": cosines(no_div.passes[0], div.passes[0])}

    vit = randomize_norms(SmallViT()).eval().double()
    right = oracle.explain(vit, x, TARGETS, walker=walk_small_vit)

    def pos_by_gradient(tape: oracle.Tape, t: Tensor, c: Tensor) -> Tensor:
        return tape.move("add", lambda u: u + c.detach(), t)

    def scale_with_rule(tape: oracle.Tape, q: Tensor, k: Tensor, v: Tensor, s: float) -> Tensor:
        qs = tape.rule("q*scale", lambda t: t * s, lambda t: t * abs(s), q)
        kt = tape.move("transpose", lambda t: t.transpose(-2, -1), k)
        attn = oracle.softmax(tape, oracle.matmul(tape, qs, kt), -1)
        return oracle.matmul(tape, attn, v)

    for label, attr, variant in [
        ("position add by gradient", "add_constant", pos_by_gradient),
        ("q*scale with the rule", "sdpa", scale_with_rule),
    ]:
        original = getattr(oracle, attr)
        setattr(oracle, attr, variant)
        try:
            wrong = oracle.explain(vit, x, TARGETS, walker=walk_small_vit)
        finally:
            setattr(oracle, attr, original)
        found[label] = cosines(right.passes[0], wrong.passes[0])
    print("\npositive-pass cosines of wrong variants: " + "  ".join(f"{k}={fmt(v)}" for k, v in found.items()))
    for label, values in found.items():
        assert min(values) < PASS_MIN, f"{label} is not detected: {fmt(values)}"
