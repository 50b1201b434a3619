"""Segmentation: ``relprop.targets.region(cls, mask=None)`` explains a class over a region of pixels.

- the start relevance of a region target, checked by hand on a tiny fake output (both
  starts, the contrastive pass over the other classes at the same pixels, the predicted
  region when no mask is given), its errors, and its splitting with ``batch_size``;
- torchvision's ``fcn_resnet50``, ``deeplabv3_mobilenet_v3_large`` and
  ``lraspp_mobilenet_v3_large`` (dict output ``"out"``) on random weights under absLRP and
  LRP-ε in strict mode: relevance shaped like the input, finite, non-zero;
- a planted object: a tiny fully convolutional net trained here (seed fixed, a few seconds)
  to segment a bright square on noise; explaining class 1 over its predicted region puts
  most of the positive relevance on the square.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import _pytree as pytree

import relprop
from relprop import rules
from relprop.targets import region, split_target, start_relevance

pytestmark = pytest.mark.usefixtures("one_thread")


def _start(out: dict, target: object, *, start: str, contrastive: bool) -> list[Tensor | None]:
    flat, spec = pytree.tree_flatten(out)
    return start_relevance(
        out, flat, spec, target, start=start, contrastive=contrastive, contrastive_given=False, batch=1
    ).relevance


# one sample, 3 classes, 2×2 pixels: out[0, c] per class
LOGITS = torch.tensor(
    [
        [
            [[1.0, 5.0], [0.0, 2.0]],  # class 0
            [[3.0, 1.0], [4.0, 2.5]],  # class 1
            [[2.0, 0.0], [1.0, 3.0]],  # class 2
        ]
    ]
)
# predicted classes: [[1, 0], [1, 2]]


def test_region_start_by_hand() -> None:
    out = {"out": LOGITS.clone(), "aux": torch.ones(1, 3, 2, 2)}
    mask = torch.tensor([[1, 1], [0, 0]])  # the top row
    # value start (classic sets): the class-1 channel on the mask, zero elsewhere
    (rel, aux) = _start(out, region(1, mask), start="value", contrastive=False)
    assert aux is None
    expected = torch.zeros(1, 1, 3, 2, 2)
    expected[0, 0, 1, 0] = torch.tensor([3.0, 1.0])
    assert torch.equal(rel, expected)
    # onehot start (absLRP without contrast): 1/2 on each of the two pixels of class 1
    (rel, _) = _start(out, region(1, mask), start="onehot", contrastive=False)
    expected = torch.zeros(1, 1, 3, 2, 2)
    expected[0, 0, 1, 0] = 0.5
    assert torch.equal(rel, expected)
    # contrastive: the negative pass is classes 0 and 2 over the same two pixels, Σ = 1
    (rel, _) = _start(out, region(1, mask), start="onehot", contrastive=True)
    negative = torch.zeros(1, 3, 2, 2)
    negative[0, [0, 2], 0] = 0.25
    assert torch.equal(rel[0], expected[0]) and torch.equal(rel[1], negative)
    # mask None: the pixels predicted as class 1, (0, 0) and (1, 0): logits 3 and 4
    (rel, _) = _start(out, region(1), start="value", contrastive=False)
    expected = torch.zeros(1, 1, 3, 2, 2)
    expected[0, 0, 1, :, 0] = torch.tensor([3.0, 4.0])
    assert torch.equal(rel, expected)
    # a per-sample (batch, H, W) bool mask, and a class given as a one-element list
    (rel, _) = _start(
        out, region([2], torch.tensor([[[False, False], [False, True]]])), start="value", contrastive=False
    )
    assert rel.sum() == 3.0 and rel[0, 0, 2, 1, 1] == 3.0


def test_region_on_a_plain_tensor_output_matches_the_callable() -> None:
    """Non-contrastive, a region is the callable that sums the class channel over the mask."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1)).eval().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    mask = torch.rand(2, 8, 8) > 0.5
    graph = relprop.trace(model, rules.Epsilon(1e-9))
    by_region = graph.explain(x, relprop.region(3, mask))
    by_callable = graph.explain(x, lambda out: (out[:, 3] * mask).sum((1, 2)))
    assert torch.allclose(by_region, by_callable, atol=1e-12)
    # chunked: the mask and the classes are split with the batch
    per_sample = relprop.region([3, 1], mask)
    whole = graph.explain(x, per_sample)
    assert torch.allclose(graph.explain(x, per_sample, batch_size=1), whole, atol=1e-12)
    absolute = relprop.trace(model)
    assert torch.allclose(absolute.explain(x, per_sample, batch_size=1), absolute.explain(x, per_sample), atol=1e-12)
    part = split_target(per_sample, 1, 2, 2)
    assert part.cls == [1] and torch.equal(part.mask, mask[1:2])


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (region(3), "out of range"),
        (region(-1), "out of range"),
        (region(1.5), "one int class index"),
        (region([0, 1, 2]), "one int class index"),
        (region(1, torch.ones(4, 4)), "mask is shaped"),
        (region(1, torch.ones(3, 2, 2)), "mask is shaped"),
        (region(1, torch.full((2, 2), 0.5)), "only 0 and 1"),
        (region(1, torch.zeros(2, 2, dtype=torch.bool)), "selects no pixel of sample 0"),
    ],
)
def test_region_errors(target: object, match: str) -> None:
    out = {"out": LOGITS.clone()}
    with pytest.raises(relprop.TargetError, match=match):
        _start(out, target, start="onehot", contrastive=True)


def test_region_needs_a_segmentation_output() -> None:
    graph = relprop.trace(nn.Linear(4, 3).eval())
    with pytest.raises(relprop.TargetError, match=r"\(batch, classes, height, width\)"):
        graph.explain(torch.randn(2, 4), relprop.region(1))
    with pytest.raises(relprop.TargetError, match="no pixel"):
        relprop.trace(nn.Conv2d(3, 2, 1).eval()).explain(torch.randn(1, 3, 4, 4), relprop.region(1, torch.zeros(4, 4)))
    with pytest.raises(relprop.TargetError, match="batch has 3 samples"):
        split_target(region(1, torch.ones(2, 4, 4)), 0, 1, 3)


# -- torchvision segmentation models ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
@pytest.mark.parametrize("rule_set", [rules.AbsLRP(), rules.Epsilon(1e-6)], ids=["abslrp", "epsilon"])
def test_torchvision_segmentation(name: str, rule_set: rules.RuleSet) -> None:
    segmentation = pytest.importorskip("torchvision.models.segmentation")
    torch.manual_seed(0)
    model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        predicted = model(x)["out"].argmax(1)
    cls = int(predicted.flatten().mode().values)  # the most frequent predicted class: a region exists
    R = relprop.trace(model, rule_set).explain(x, relprop.region(cls))
    assert R.shape == x.shape
    assert torch.isfinite(R).all() and R.abs().sum() > 0


# -- a planted object ------------------------------------------------------------------------------


class TinySegmenter(nn.Module):
    """A fully convolutional net returning ``{"out": logits}`` like torchvision's.

    ``upsample``: a stride-2 convolution and bilinear upsampling back to the input size
    (``F.interpolate``); otherwise stride 1 throughout, with a dilated convolution.
    """

    def __init__(self, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        if upsample:
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        else:
            self.conv2 = nn.Conv2d(8, 16, 3, padding=2, dilation=2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        logits = self.head(h)
        if self.upsample:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": logits}


SIZE = 32


def _squares(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Noise images with one bright square each (side 5-10) and their masks (class 1 = square)."""
    x = torch.randn(n, 3, SIZE, SIZE, generator=generator) * 0.5
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        side = int(torch.randint(5, 11, (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, SIZE - side + 1, (2,), generator=generator))
        masks[i, top : top + side, left : left + side] = 1
    x = x + 1.5 * masks[:, None].float()
    return x, masks


def _train(upsample: bool) -> TinySegmenter:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = TinySegmenter(upsample)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        x, masks = _squares(16, generator)
        loss = F.cross_entropy(model(x)["out"], masks, weight=torch.tensor([1.0, 3.0]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["stride1", "interpolate"])
def segmenter(request: pytest.FixtureRequest) -> TinySegmenter:
    return _train(request.param)


def _planted() -> tuple[Tensor, Tensor]:
    """A test image with an 8×8 square at rows 10-17, columns 14-21, and the square's mask."""
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(1, 3, SIZE, SIZE, generator=generator) * 0.5
    square = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    square[10:18, 14:22] = True
    return x + 1.5 * square.float(), square


def positive_share(R: Tensor, square: Tensor, dilate: int = 2) -> tuple[float, float]:
    """(share of the positive relevance inside the dilated square, the dilated square's area share)."""
    near = F.max_pool2d(square[None, None].float(), 2 * dilate + 1, stride=1, padding=dilate)[0, 0] > 0
    positive = R[0].clamp_min(0).sum(0)
    return float(positive[near].sum() / positive.sum()), float(near.float().mean())


@pytest.mark.parametrize("rule_set", [rules.AbsLRP(), rules.Epsilon(1e-6)], ids=["abslrp", "epsilon"])
def test_relevance_concentrates_on_the_planted_square(segmenter: TinySegmenter, rule_set: rules.RuleSet) -> None:
    x, square = _planted()
    with torch.no_grad():
        predicted = segmenter(x)["out"].argmax(1)[0] == 1
    iou = float((predicted & square).sum() / (predicted | square).sum())
    assert iou > 0.6, f"the tiny segmenter did not learn the squares (IoU {iou:.2f})"
    R = relprop.trace(segmenter, rule_set).explain(x, relprop.region(1))
    assert R.shape == x.shape and torch.isfinite(R).all()
    share, area = positive_share(R, square)
    assert share >= 3 * area, f"positive relevance inside the square: {share:.2f}, its area share {area:.2f}"
