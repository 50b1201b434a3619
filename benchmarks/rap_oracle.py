"""The RAP authors' code as an oracle for ``relprop.rules.RAP()``, side by side on small CNNs.

    git clone https://github.com/wjNam/Relative_Attributing_Propagation /tmp/rap-reference
    .venv/bin/python benchmarks/rap_oracle.py --reference /tmp/rap-reference [--samples 8] [--json out.json]

The reference (Nam et al., AAAI 2020) is not a package: its ``modules/`` folder holds layer classes
with a ``RAP_relprop`` method and a VGG and a ResNet built from them.  This script imports that folder
from the checkout given (nothing of it is copied here), builds with its layers

- a VGG-like CNN (three conv/ReLU blocks with max pooling, three fully connected layers, so that
  negative relevance reaches a hidden dense layer), and
- a ResNet with bottleneck blocks (``modules.resnet.ResNet(Bottleneck, [1, 1, 1, 1])``, their
  ResNet-50 with one block per stage; their basic block cannot run ``RAP_relprop``),

copies the same random weights (and random batch-norm statistics) into plain PyTorch models
(torchvision's ``ResNet`` for the second), and explains one image at a time with both, in float64:
the reference's ``model.RAP_relprop(one_hot(target))`` against
``relprop.trace(model, relprop.rules.RAP()).explain(x, target)``.  It prints, per model, the
smallest per-image cosine similarity, the largest absolute difference relative to the map's
largest entry, and the relevance sums (both conserve the target logit).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import relprop


def load_reference(path: str) -> tuple[Any, Any]:
    """The reference's ``modules.layers`` and ``modules.resnet`` from a checkout at ``path``."""
    root = Path(path)
    if not (root / "modules" / "layers.py").is_file():
        sys.exit(f"{root} is not a checkout of wjNam/Relative_Attributing_Propagation (no modules/layers.py)")
    sys.path.insert(0, str(root))
    return importlib.import_module("modules.layers"), importlib.import_module("modules.resnet")


class PlainVGG(nn.Module):
    """The VGG-like CNN in plain PyTorch modules (what relprop explains)."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(2 * w * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def reference_vgg(L: Any, width: int = 8, classes: int = 10) -> nn.Module:
    """The same network built from the reference's layers, with its ``RAP_relprop``."""
    w = width

    class RefVGG(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = L.Sequential(
                L.Conv2d(3, w, 3, padding=1), L.ReLU(), L.Conv2d(w, w, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                L.Conv2d(w, 2 * w, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                L.Conv2d(2 * w, 2 * w, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
            )  # fmt: skip
            self.classifier = L.Sequential(
                L.Linear(2 * w * 4 * 4, 32), L.ReLU(), L.Linear(32, 32), L.ReLU(), L.Linear(32, classes)
            )

        def forward(self, x: Tensor) -> Tensor:
            return self.classifier(torch.flatten(self.features(x), 1))

        def RAP_relprop(self, R: Tensor) -> Tensor:  # noqa: N802 - the reference's method name
            R = self.classifier.RAP_relprop(R)
            R = R.reshape_as(self.features[-1].Y)
            return self.features.RAP_relprop(R)

    return RefVGG()


def _randomize_batch_norms(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=gen, dtype=m.weight.dtype)
            m.bias.data = 0.2 * torch.randn(n, generator=gen, dtype=m.bias.dtype)
            m.running_mean.data = 0.2 * torch.randn(n, generator=gen, dtype=m.running_mean.dtype)
            m.running_var.data = 0.5 + torch.rand(n, generator=gen, dtype=m.running_var.dtype)


def model_pairs(L: Any, ref_resnet: Any, seed: int) -> dict[str, tuple[nn.Module, nn.Module]]:
    """{name: (plain model, reference model)} with the same weights, float64, eval mode."""
    import torchvision

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    plain_vgg = PlainVGG().double()
    for m in plain_vgg.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype)
    ref_vgg = reference_vgg(L).double()
    ref_vgg.load_state_dict(plain_vgg.state_dict())
    plain_resnet = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], 10).double()
    _randomize_batch_norms(plain_resnet, gen)
    ref = ref_resnet.ResNet(ref_resnet.Bottleneck, [1, 1, 1, 1], num_classes=10).double()
    ref.load_state_dict(plain_resnet.state_dict())
    return {"vgg": (plain_vgg.eval(), ref_vgg.eval()), "resnet": (plain_resnet.eval(), ref.eval())}


def reference_rap(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """The reference's RAP map of one image (1, C, H, W) for class ``target``."""
    out = model(x)
    one_hot = torch.zeros_like(out)
    one_hot[0, target] = 1.0
    return model.RAP_relprop(one_hot).detach()


def compare(plain: nn.Module, ref: nn.Module, x: Tensor) -> dict[str, Any]:
    """Per image: cosine, max |difference| / max |reference|, and both relevance sums."""
    graph = relprop.trace(plain, relprop.rules.RAP())
    with torch.no_grad():
        targets = plain(x).argmax(1)
    ours = graph.explain(x, targets)
    rows = []
    for i in range(x.shape[0]):
        theirs = reference_rap(ref, x[i : i + 1].clone(), int(targets[i]))[0]
        a, b = ours[i].flatten(), theirs.flatten()
        cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))
        rows.append(
            {"cosine": cos, "max_rel_diff": rel, "sum_relprop": float(a.sum()), "sum_reference": float(b.sum())}
        )
    return {
        "images": len(rows),
        "min_cosine": min(r["cosine"] for r in rows),
        "max_rel_diff": max(r["max_rel_diff"] for r in rows),
        "per_image": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default=os.environ.get("RAP_REFERENCE"), help="checkout of the authors' repo")
    parser.add_argument("--samples", type=int, default=8, help="random images per model (default: 8)")
    parser.add_argument("--size", type=int, default=32, help="image size (default: 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if not args.reference:
        parser.error("--reference DIR (or RAP_REFERENCE) is needed: a checkout of the authors' repository")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    L, ref_resnet = load_reference(args.reference)
    x = torch.randn(args.samples, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 1))
    results = {}
    for name, (plain, ref) in model_pairs(L, ref_resnet, args.seed).items():
        res = compare(plain, ref, x.double())
        results[name] = res
        sums = [f"{r['sum_relprop']:.4g}/{r['sum_reference']:.4g}" for r in res["per_image"][:3]]
        print(
            f"{name}: {res['images']} images, min cosine {res['min_cosine']:.10f}, "
            f"max |diff|/max|ref| {res['max_rel_diff']:.2e}, sums relprop/reference {', '.join(sums)} ..."
        )
        if not math.isfinite(res["min_cosine"]):
            return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
