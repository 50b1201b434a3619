"""relprop's GAE side by side with the authors' GlobalEvaluationMetric.

The authors' repository (github.com/davor10105/relative-absolute-magnitude-propagation)
has no licence: nothing of it is copied here.  Give the path of a checkout (the
folder that holds ``abslrp_gae``) and this script imports it, runs both on the same
model, data order and positive images, and prints per method the largest absolute
difference, over the positive images, of LC, C and GAE (relprop calling each method once
per batch, as ``GAE.evaluate`` does, and calling it in the authors' chunks of k images,
which removes the float32 differences that batch sizes make in a method's output)::

    git -C MIRROR archive HEAD | tar -x -C /tmp/authors
    .venv/bin/python benchmarks/gae_authors.py --authors /tmp/authors

To make the runs comparable, while the authors' code runs (and only then) their
module's ``DataLoader`` is made not to shuffle (it still drops the last partial
batch) and ``torch.multinomial`` draws from relprop's per-batch generator
(:func:`relprop.metrics.batch_generator`), so both draw the same quadrants if they
compute the same probabilities; the script checks that they chose the same images.
Their code runs on the CPU (``GlobalEvaluationMetric(device="cpu")``); methods are
relprop :data:`~relprop.metrics.Method` callables wrapped as their ``RelevancyMethod``.

Runs: (a) the shipped shapes CNN (``relprop.apps.example``) on ``make_shapes(N, seed=0)``
with Input×Gradient, absLRP and constant; (b) the digits VGG on the first N test
images with the same methods; each at batch size 4 (default grouping) and 16
(``grouping="authors"``).  ``--seeds S`` adds Input×Gradient's mean LC on the shapes
data over GAE seeds 0..S-1 (batch size 4) for both implementations.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import relprop
from relprop import methods as RM
from relprop import metrics as M
from relprop.apps.example import load_example, make_shapes
from relprop.apps.models import load_digits_model, load_digits_test


def input_x_gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """x ⊙ ∂f_c/∂x."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xg).gather(1, target.reshape(-1, 1)).sum(), xg)
    return (xg * g).detach()


def methods() -> dict[str, M.Method]:
    return {
        "InputXGradient": input_x_gradient,
        "absLRP": RM.relprop_method(relprop.rules.AbsLRP()),
        "constant": RM.constant_method(),
    }


@contextlib.contextmanager
def patched(module: Any, seed: int, draws: list[Tensor]) -> Iterator[None]:
    """The authors' module with an unshuffled DataLoader, no progress bar and relprop's per-batch draws."""
    real_loader, real_tqdm, real_multinomial = module.DataLoader, module.tqdm, torch.multinomial
    batch = iter(range(10**9))

    def loader(dataset: Any, batch_size: int, shuffle: bool = False, drop_last: bool = False) -> DataLoader:
        return real_loader(dataset, batch_size, shuffle=False, drop_last=drop_last)

    def multinomial(p: Tensor, num_samples: int, *args: Any, **kwargs: Any) -> Tensor:
        out = real_multinomial(p, num_samples, generator=M.batch_generator(seed, next(batch)))
        draws.append(out.flatten().clone())
        return out

    module.DataLoader, module.tqdm, torch.multinomial = loader, (lambda it: it), multinomial
    try:
        yield
    finally:
        module.DataLoader, module.tqdm, torch.multinomial = real_loader, real_tqdm, real_multinomial


def authors_run(
    authors: Path, model: nn.Module, ms: Mapping[str, M.Method], data: TensorDataset, batch: int, steps: int, seed: int
) -> tuple[dict[str, dict[str, Tensor]], Tensor]:
    """Their GlobalEvaluationMetric on ``data`` in order; returns their results and the drawn quadrants."""
    if str(authors) not in sys.path:
        sys.path.insert(0, str(authors))
    gae_mod = importlib.import_module("abslrp_gae.gae.gae")
    base = importlib.import_module("abslrp_gae.abslrp.relevancy_methods").RelevancyMethod

    def adapter(method: M.Method) -> Any:
        class Adapter(base):  # type: ignore[misc, valid-type]
            def _generate_relevancy(self, x: Tensor, y: Tensor | None) -> Tensor:
                return method(self.model, x.detach(), y)

        return Adapter(model, device="cpu")

    draws: list[Tensor] = []
    with patched(gae_mod, seed, draws):
        metric = gae_mod.GlobalEvaluationMetric(num_masking_steps=steps, device="cpu")
        res = metric.run({n: adapter(m) for n, m in ms.items()}, model, data, batch)
    return res, torch.cat(draws)


def authors_layout(authors: Path, batch: int = 16) -> str:
    """Which images the authors' ``_create_mosaic`` puts into each mosaic of a batch (image j filled with j)."""
    if str(authors) not in sys.path:
        sys.path.insert(0, str(authors))
    metric = importlib.import_module("abslrp_gae.gae.gae").GlobalEvaluationMetric(device="cpu")
    small = torch.arange(float(batch)).reshape(batch, 1, 1, 1).expand(batch, 1, 2, 2)
    mos = metric._create_mosaic(small)
    held = [[int(m[0, r, c]) for r, c in ((0, 0), (0, 2), (2, 0), (2, 2))] for m in mos]
    return f"  authors' mosaics of a batch of {batch} hold images {held}; the positives are drawn from groups 4g..4g+3"


def in_own_mosaic(images: Tensor, batch: int, grouping: str) -> str:
    """How many positive images lie in the mosaic explained for them."""
    k, j = batch // 4, images % batch
    g = j // 4
    inside = (j // 4 == g) if grouping == "consecutive" else ((j - g) % k == 0) & ((j - g) // k < 4) & (j >= g)
    return f"{int(inside.sum())}/{len(images)} positive images in their own mosaic"


def per_call(method: M.Method, size: int) -> M.Method:
    """``method`` applied to chunks of ``size`` inputs: the calls the authors' code makes (k images each)."""

    def chunked(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return torch.cat([method(model, x[i : i + size], target[i : i + size]) for i in range(0, len(x), size)])

    return chunked


KEYS = {"lc": "local_consistency", "c": "contrastiveness", "gae": "gae"}


def max_diff(ours: M.GAEResult, theirs: Mapping[str, Mapping[str, Tensor]], m: str) -> str:
    d = {k: float((ours[m][k].double() - theirs[m][v].double()).abs().max()) for k, v in KEYS.items()}
    return f"LC {d['lc']:.1e}  C {d['c']:.1e}  GAE {d['gae']:.1e}"


def compare(
    authors: Path, model: nn.Module, data: TensorDataset, batch: int, grouping: str, steps: int, seed: int
) -> list[str]:
    """Both implementations on the same data; one line per method with the largest differences, relprop
    with each method called once per batch (as GAE.evaluate does) and in the authors' chunks of k images."""
    ms = methods()
    gae = M.GAE(steps=steps, seed=seed, grouping=grouping)
    t0 = time.perf_counter()
    ours = gae.evaluate(model, ms, data, batch, progress=False)
    t1 = time.perf_counter()
    theirs, draws = authors_run(authors, model, ms, data, batch, steps, seed)
    t2 = time.perf_counter()
    chunked = gae.evaluate(model, {n: per_call(m, batch // 4) for n, m in ms.items()}, data, batch, progress=False)
    name = next(iter(ms))
    same = torch.equal(ours.images[name] % 4, draws)
    lines = [
        f"  batch {batch}, grouping {grouping!r}: {len(draws)} positive images, same draws: {same},"
        f" {in_own_mosaic(ours.images[name], batch, grouping)} (relprop {t1 - t0:.1f} s, authors {t2 - t1:.1f} s)"
    ]
    for m in ms:
        mean = {k: float(ours[m][k].double().mean()) for k in KEYS}
        lines.append(
            f"    {m:<15} max |Δ| {max_diff(ours, theirs, m)};  per call: {max_diff(chunked, theirs, m)}"
            f"   (means LC {mean['lc']:.3f}  C {mean['c']:.3f}  GAE {mean['gae']:.3f})"
        )
    return lines


def lc_over_seeds(authors: Path, model: nn.Module, data: TensorDataset, seeds: int, steps: int) -> str:
    """Input×Gradient's mean LC per GAE seed (batch size 4): mean ± sd over the seeds, both implementations,
    and the largest per-image |Δ| of LC over all seeds (relprop batched and per call)."""
    ms = {"InputXGradient": input_x_gradient}
    one = {"InputXGradient": per_call(input_x_gradient, 1)}
    ours, theirs, worst, worst_call = [], [], 0.0, 0.0
    for s in range(seeds):
        r = M.GAE(steps=steps, seed=s).evaluate(model, ms, data, 4, progress=False)["InputXGradient"]["lc"].double()
        c = M.GAE(steps=steps, seed=s).evaluate(model, one, data, 4, progress=False)["InputXGradient"]["lc"].double()
        res, _ = authors_run(authors, model, ms, data, 4, steps, s)
        a = res["InputXGradient"]["local_consistency"].double()
        ours.append(float(r.mean()))
        theirs.append(float(a.mean()))
        worst, worst_call = max(worst, float((r - a).abs().max())), max(worst_call, float((c - a).abs().max()))

    def fmt(v: list[float]) -> str:
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"

    return (
        f"  Input×Gradient mean LC (batch 4) over seeds 0..{seeds - 1}: relprop {fmt(ours)}, authors {fmt(theirs)};"
        f" largest per-image |Δ| LC {worst:.1e}, per call {worst_call:.1e}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--authors", type=Path, required=True, help="checkout of the authors' repository")
    ap.add_argument("--n", type=int, default=64, help="images per data set (a multiple of 16)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=0, help="also Input×Gradient's LC over this many seeds (shapes)")
    args = ap.parse_args(argv)
    if not (args.authors / "abslrp_gae" / "gae" / "gae.py").is_file():
        ap.error(f"{args.authors} holds no abslrp_gae/gae/gae.py")
    x, y, _ = make_shapes(args.n, seed=0)
    digits = load_digits_test()
    runs: list[tuple[str, nn.Module, TensorDataset]] = [
        ("shapes CNN (relprop.apps.example), make_shapes(n, seed=0)", load_example().model, TensorDataset(x, y)),
        ("digits VGG, first n test images", load_digits_model("vgg"), TensorDataset(*digits[: args.n])),
    ]
    print(authors_layout(args.authors))
    for title, model, data in runs:
        print(f"{title}, n = {args.n}, T = {args.steps}, seed {args.seed}")
        for batch, grouping in ((4, "consecutive"), (16, "authors")):
            print("\n".join(compare(args.authors, model, data, batch, grouping, args.steps, args.seed)), flush=True)
    if args.seeds:
        print(lc_over_seeds(args.authors, runs[0][1], runs[0][2], args.seeds, args.steps))


if __name__ == "__main__":
    main()
