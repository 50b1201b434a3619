"""A torchvision segmentation model explained for a class over a region of pixels.

    .venv/bin/python examples/segmentation.py [--model lraspp|fcn] [--size 128] [--png segmentation.png]

torchvision's ``lraspp_mobilenet_v3_large`` (or ``fcn_resnet50``), built with random
weights (``weights=None, weights_backbone=None``: nothing is downloaded), unmodified.
Its output is a dict whose ``"out"`` holds the logits, (batch, classes, H, W).
``relprop.targets.region(cls, mask)`` explains the sum of the class-``cls`` logit over
the mask's pixels; with ``mask=None`` over the pixels predicted as ``cls``.  Under absLRP
(contrastive) the negative pass starts from all the other classes at the same pixels.

The inputs are two of the embedded example's synthetic images (one bright shape on
noise, ``relprop.apps.example.make_shapes``), enlarged to ``--size``, with their shape masks.  The picture shows the
inputs, then the relevance of each sample's most frequent predicted class over its
predicted pixels (absLRP), over the shape's pixels (absLRP), and over the shape's pixels
with LRP-ε.  The weights are random, so the explanations show what the untrained net
looks at, not a meaningful segmentation; with trained weights the same calls apply.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torchvision.models import segmentation

import relprop
from relprop import rules
from relprop.apps.example import make_shapes

MODELS = {"lraspp": "lraspp_mobilenet_v3_large", "fcn": "fcn_resnet50"}


def main() -> None:
    parser = argparse.ArgumentParser(description="a segmentation model explained for a class over a region")
    parser.add_argument("--model", choices=MODELS, default="lraspp", help="torchvision model (default: %(default)s)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--png", default="segmentation.png", help="where to write the picture (default: %(default)s)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = getattr(segmentation, MODELS[args.model])(weights=None, weights_backbone=None).eval()
    images, _, masks = make_shapes(2, seed=0)  # (2, 3, 32, 32) in [0, 1], (2, 32, 32) bool
    images = F.interpolate(images, size=(args.size, args.size), mode="nearest")
    masks = F.interpolate(masks[:, None].float(), size=(args.size, args.size), mode="nearest")[:, 0] > 0

    with torch.no_grad():
        predicted = model(images)["out"].argmax(1)  # (2, H, W)
    classes = predicted.flatten(1).mode(1).values  # each sample's most frequent predicted class

    start = time.perf_counter()
    absolute = relprop.trace(model, rules.AbsLRP())
    rows = {
        "absLRP, predicted": absolute.explain(images, relprop.targets.region(classes)),
        "absLRP, shape": absolute.explain(images, relprop.targets.region(classes, masks)),
        "LRP-eps, shape": relprop.trace(model, rules.Epsilon(1e-6)).explain(
            images, relprop.targets.region(classes, masks)
        ),
    }
    seconds = time.perf_counter() - start

    for label, R in rows.items():
        inside = (R.clamp_min(0).sum(1) * masks).flatten(1).sum(1) / R.clamp_min(0).flatten(1).sum(1)
        print(f"{label:18s} positive relevance on the shape: {[round(float(v), 2) for v in inside]}")
    area = masks.float().flatten(1).mean(1)
    print(f"{'':18s} the shape's share of the image:    {[round(float(v), 3) for v in area]}")
    titles = [f"class {int(c)}" for c in classes]
    relprop.viz.save_rows(args.png, rows, images, titles=titles, clip=99.0)
    print(f"explained in {seconds:.1f} s; wrote {args.png}")


if __name__ == "__main__":
    main()
