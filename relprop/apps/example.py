"""The embedded example: a small CNN that tells squares, circles and triangles apart.

It ships inside the package (``relprop/data/``), so ``relprop`` with no arguments
and :func:`load_example` work without a download::

    ex = relprop.apps.example.load_example()
    R = relprop.trace(ex.model).explain(ex.images, ex.labels)

The task is synthetic and generated deterministically by :func:`make_shapes`: one
filled shape of a random colour and size on a noisy background, 32×32 RGB.  The
class evidence sits inside the shape, so a good heatmap is easy to judge (the
``masks`` say where the shape is).  ``examples/train_embedded_example.py``
reproduces the weights.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources

import torch
from torch import Tensor, nn

__all__ = ["CLASS_NAMES", "Example", "ShapesNet", "load_example", "make_shapes"]

#: the classes of the embedded example, in output order
CLASS_NAMES: tuple[str, ...] = ("square", "circle", "triangle")

SIZE = 32
WEIGHTS = "shapes_cnn.pt"
IMAGES = "shapes_examples.pt"
META = "shapes.json"


class ShapesNet(nn.Module):
    """Three conv–BN–ReLU–maxpool blocks and a linear classifier (~16k parameters)."""

    def __init__(self, classes: int = len(CLASS_NAMES), width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]

        self.features = nn.Sequential(*block(3, w), *block(w, 2 * w), *block(2 * w, 2 * w))
        self.classifier = nn.Linear(2 * w * (SIZE // 8) ** 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@dataclass
class Example:
    """The embedded example: an eval-mode model and a few images it classifies.

    ``images``: (N, 3, 32, 32) float32 in [0, 1]; ``labels``: (N,) int64 class
    indices into ``class_names``; ``masks``: (N, 32, 32) bool, True on the shape.
    """

    model: nn.Module
    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    masks: Tensor


def make_shapes(n: int, seed: int, size: int = SIZE) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` synthetic images, deterministic in ``seed``: (images, labels, masks).

    Each image is Gaussian noise around a random dark grey with one filled shape
    (class 0 square, 1 circle, 2 triangle) of random size, position and bright
    colour.  Images are float32 in [0, 1], quantized to 1/255 so they survive a
    round trip through uint8.
    """
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    labels = torch.randint(0, len(CLASS_NAMES), (n,), generator=g)
    r = u(5.0, 10.0, n, 1, 1)
    cx = u(0.0, 1.0, n, 1, 1) * (size - 1 - 2 * r) + r
    cy = u(0.0, 1.0, n, 1, 1) * (size - 1 - 2 * r) + r
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dx, dy = xs - cx, ys - cy
    square = (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r)
    circle = dx**2 + dy**2 <= r**2
    # an upright isosceles triangle: apex at the top, base at the bottom
    height = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
    triangle = (height >= 0) & (height <= 1) & (dx.abs() <= height * r)
    lab = labels.view(n, 1, 1)
    masks = torch.where(lab == 0, square, torch.where(lab == 1, circle, triangle))

    background = u(0.05, 0.45, n, 1, 1, 1) + 0.12 * torch.randn(n, 3, size, size, generator=g)
    colour = u(0.55, 1.0, n, 3, 1, 1)
    shape = colour + 0.05 * torch.randn(n, 3, size, size, generator=g)
    images = torch.where(masks.unsqueeze(1), shape, background).clamp(0, 1)
    images = (images * 255).round() / 255
    return images.float(), labels, masks


def _data_file(name: str) -> bytes:
    return resources.files("relprop.data").joinpath(name).read_bytes()


def _load_pt(name: str) -> dict:
    return torch.load(io.BytesIO(_data_file(name)), map_location="cpu", weights_only=True)


def load_example() -> Example:
    """Load the embedded example (model in eval mode, a handful of images)."""
    meta = json.loads(_data_file(META))
    model = ShapesNet(classes=len(meta["class_names"]), width=meta["width"])
    model.load_state_dict(_load_pt(WEIGHTS))
    model.eval()
    data = _load_pt(IMAGES)
    return Example(
        model=model,
        images=data["images"].float() / 255,
        labels=data["labels"].long(),
        class_names=tuple(meta["class_names"]),
        masks=data["masks"].bool(),
    )
