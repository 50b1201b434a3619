"""Compare attribution methods with GAE across models: the paper's tables in miniature.

Vukadin et al. 2024 (arXiv 2412.09311), section 4, rank attribution methods by
GAE (local consistency x contrastiveness) and test each against absLRP with the
paired Wilcoxon signed-rank test. :func:`compare` does the same for any models
and any image data set::

    from relprop.evaluation import comparison
    from relprop.apps import models
    nets = {name: models.load_digits_model(name) for name in ("vgg", "resnet", "vit")}
    result = comparison.compare(nets, models.load_digits_test())
    print(result)                       # LC, C, GAE per method and model, p vs absLRP
    result.to_csv("gae.csv"); result.to_json("gae.json"); result.plot("gae.png")

``relprop evaluate`` is the command-line front end. Methods come from
:mod:`relprop.methods` (relprop rule sets, Captum, grad-cam, baselines); the
Quantus metrics (ROAD, Focus, LocalLipschitzEstimate) from
:mod:`relprop.evaluation.quantus_metrics` when asked for.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from ..errors import InputError
from .metrics import GAE, GAEResult

__all__ = [
    "ABSLRP_RULE_SETS",
    "DIGITS_ABSLRP_VARIANTS",
    "Comparison",
    "compare",
    "image_folder",
    "REFERENCE",
    "SIGNIFICANCE",
]

#: the method every other one is tested against (the paper's reference)
REFERENCE = "absLRP"
#: significance level of the Wilcoxon test marks
SIGNIFICANCE = 0.05
_SUMMARY = ("lc", "c", "gae")
#: absLRP's variant of the shipped digits models, recorded (not guessed from module names): the VGG
#: as the authors explain VGGs (no division by |y| at max pooling), the ResNet as they explain
#: ResNets; the ViT has no max pooling, so it takes the default
DIGITS_ABSLRP_VARIANTS = {"vgg": "vgg", "resnet": "resnet", "vit": "resnet"}
#: each variant's rule set, as printed
ABSLRP_RULE_SETS = {"vgg": "AbsLRP(maxpool_divide=False)", "resnet": "AbsLRP()"}


@dataclass
class Comparison:
    """GAE results per model (``gae[model]`` a :class:`~relprop.metrics.GAEResult`),
    optional Quantus results per model, methods skipped per model with the reason,
    the seconds each model's evaluation took, absLRP's variant per model, and the GAE
    settings (``settings``: steps, seed, batch size, granularity, quadrant classes, grouping,
    image limit)."""

    gae: dict[str, GAEResult]
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    quantus: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reference: str = REFERENCE
    abslrp_variants: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def unbounded_c(self) -> dict[str, tuple[int, float]]:
        """Per model with label-based score maps: (most positive images with C > 1 for one
        method, largest C). A positive image whose dataset label is not the class the model
        predicts has an unbounded score map there (the authors' code); empty when none."""
        if self.settings.get("quadrant_classes", "label") != "label":
            return {}
        out = {}
        for model, res in self.gae.items():
            cs = [v["c"] for v in res.scores.values() if len(v["c"])]
            counts = [int((c > 1).sum()) for c in cs]
            if counts and max(counts):
                out[model] = (max(counts), max(float(c.max()) for c in cs))
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per (model, method): mean and 95% interval of LC, C and GAE, the
        number of positive images, the Wilcoxon p-value of GAE against the reference
        method (None for the reference itself or when it was not run), and the number
        of batches the method failed on."""
        out = []
        for model, res in self.gae.items():
            table = res.table()
            fails: dict[str, int] = {}
            for m, _, _ in res.failures:
                fails[m] = fails.get(m, 0) + 1
            for method in res.scores:
                row: dict[str, Any] = {"model": model, "method": method}
                for r in table:
                    if r["method"] == method and r["score"] in _SUMMARY:
                        row[r["score"]] = r["mean"]
                        row[f"{r['score']}_ci95"] = r["ci95"]
                        row["n"] = r["n"]
                p = None
                if method != self.reference and self.reference in res.scores and row["n"]:
                    p = res.wilcoxon(self.reference, method).pvalue
                row["p_vs_" + self.reference] = p
                row["failed_batches"] = fails.get(method, 0)
                out.append(row)
        return out

    def quantus_rows(self) -> list[dict[str, Any]]:
        """One row per (model, method, Quantus metric): mean, 95% interval, n."""
        out = []
        for model, res in self.quantus.items():
            for r in res.table():
                out.append({"model": model, **dict(r)})
        return out

    def __str__(self) -> str:
        key = "p_vs_" + self.reference
        lines = []
        rows = self.rows()
        w = max([20, *(len(r["method"]) for r in rows), *(len(m) for sk in self.skipped.values() for m in sk)])
        if self.settings:
            shown = {k.replace("_", " "): "all" if v is None else v for k, v in self.settings.items()}
            lines.append("GAE: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        for model in self.gae:
            variant = self.abslrp_variants.get(model)
            shown = f"; absLRP: {ABSLRP_RULE_SETS[variant]} ({variant})" if variant in ABSLRP_RULE_SETS else ""
            lines.append(f"model {model} ({self.seconds.get(model, math.nan):.0f} s{shown})")
            lines.append(f"  {'method':<{w}} {'LC':>15} {'C':>15} {'GAE':>15} {'n':>5}  p vs {self.reference}")
            for r in (r for r in rows if r["model"] == model):
                cells = " ".join(f"{r[s]:>7.3f} ± {r[s + '_ci95']:<5.3f}" for s in _SUMMARY)
                p = r[key]
                mark = "" if p is None else f"{p:.2g}{' *' if p < SIGNIFICANCE else ''}"
                fail = f"  (failed on {r['failed_batches']} batches)" if r["failed_batches"] else ""
                lines.append(f"  {r['method']:<{w}} {cells} {r['n']:>5}  {mark}{fail}")
            for m, why in self.skipped.get(model, {}).items():
                lines.append(f"  {m:<{w}} skipped: {why}")
        lines.append(f"* GAE differs from {self.reference}'s at p < {SIGNIFICANCE} (paired Wilcoxon signed-rank test)")
        for model, res in self.quantus.items():
            lines.append(f"model {model}, Quantus metrics")
            lines.extend("  " + line for line in str(res.table()).splitlines())
        return "\n".join(lines)

    def to_csv(self, path: str | Path) -> None:
        """The rows of :meth:`rows` as CSV (and the Quantus rows beside, ``*_quantus.csv``)."""
        _write_csv(Path(path), self.rows())
        if self.quantus:
            p = Path(path)
            _write_csv(p.with_name(p.stem + "_quantus" + p.suffix), self.quantus_rows())

    def to_json(self, path: str | Path) -> None:
        """Rows, skipped methods, failures (model, method, batch, message) and timings as JSON."""
        failures = [
            {"model": model, "method": m, "batch": b, "message": msg}
            for model, res in self.gae.items()
            for m, b, msg in res.failures
        ]
        failures += [
            {"model": model, "method": m, "metric": metric, "message": msg}
            for model, res in self.quantus.items()
            for m, metric, msg in res.failures
        ]
        doc = {
            "reference": self.reference,
            "gae": self.rows(),
            "quantus": self.quantus_rows(),
            "skipped": self.skipped,
            "failures": failures,
            "seconds": self.seconds,
            "abslrp_variants": self.abslrp_variants,
            "settings": self.settings,
        }
        Path(path).write_text(json.dumps(doc, indent=2, allow_nan=True) + "\n")

    def plot(self, path: str | Path) -> None:
        """Bar plot PNG: one panel per model, LC, C and GAE (mean and 95% interval) per method."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows()
        models = list(self.gae)
        n_methods = max(len(self.gae[m].scores) for m in models) if models else 1
        fig, axes = plt.subplots(len(models), 1, figsize=(max(6, 0.9 * n_methods), 2.8 * len(models)), squeeze=False)
        width = 0.27
        for ax, model in zip(axes[:, 0], models):
            mine = [r for r in rows if r["model"] == model]
            xs = range(len(mine))
            for j, s in enumerate(_SUMMARY):
                ax.bar(
                    [i + (j - 1) * width for i in xs],
                    [r[s] for r in mine],
                    width,
                    yerr=[0 if math.isnan(r[s + "_ci95"]) else r[s + "_ci95"] for r in mine],
                    label=s.upper(),
                )
            ax.set_xticks(list(xs), [r["method"] for r in mine], rotation=35, ha="right", fontsize=8)
            ax.set_title(model, fontsize=10)
            ax.set_ylim(0, 1)
        axes[0, 0].legend(ncols=3, fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def compare(
    models: Mapping[str, nn.Module],
    data: Dataset | Mapping[str, Dataset],
    methods: Sequence[str] | None = None,
    *,
    steps: int = 10,
    seed: int = 0,
    batch_size: int = 16,
    max_images: int | None = None,
    quantus_metrics: Sequence[str] = (),
    progress: bool = True,
    abslrp_variant: str | Mapping[str, str | None] | None = None,
    shard: tuple[int, int] | None = None,
    granularity: str = "feature",
    quadrant_classes: str = "label",
    grouping: str = "consecutive",
) -> Comparison:
    """Evaluate ``methods`` (names from :data:`relprop.methods.METHOD_NAMES`; None: every
    method that can run on each model) with GAE on every model.

    ``data``: one image data set of (image, label) for all models, or one per model
    name. ``max_images``: use only the first images of each data set. The user's
    models are not modified (each method is checked for that in its tests).
    ``abslrp_variant``: absLRP's variant (:func:`relprop.methods.relprop_method`), one for
    every model or a mapping model name -> variant: ``"vgg"`` (``AbsLRP(maxpool_divide=False)``,
    the authors' rule set for VGGs) or ``"resnet"`` (``AbsLRP()``, theirs for ResNets); a
    model without one (None) gets ``"resnet"``. ``Comparison.abslrp_variants`` records them.
    ``shard=(rank, world_size)``: score only this rank's GAE batches (``GAE.evaluate``'s ``shard``);
    ``GAEResult.merge`` of every rank's ``gae[model]`` is one process's result.
    ``granularity``, ``quadrant_classes``, ``grouping``: :class:`~relprop.metrics.GAE`'s
    options (defaults: as the authors' code computes GAE); ``Comparison.settings`` records them.
    """
    from .methods import build_methods

    variants = _abslrp_variants(models, abslrp_variant)
    if not models:
        raise InputError("no models to evaluate")
    if max_images is not None and max_images < 4:
        raise InputError(f"max_images must be at least 4 (one group of four), got {max_images}")
    if isinstance(data, Mapping):
        missing = [m for m in models if m not in data]
        if missing:
            raise InputError(f"no data set for model(s) {', '.join(missing)}; data has {', '.join(data)}")
    gae = GAE(steps=steps, seed=seed, granularity=granularity, quadrant_classes=quadrant_classes, grouping=grouping)
    settings = dict(steps=steps, seed=seed, batch_size=batch_size, granularity=granularity)
    settings |= dict(quadrant_classes=quadrant_classes, grouping=grouping, max_images=max_images)
    out = Comparison(gae={}, settings=settings)
    for name, model in models.items():
        ds = data[name] if isinstance(data, Mapping) else data
        if max_images is not None and len(ds) > max_images:
            ds = Subset(ds, range(max_images))
        built, skipped = build_methods(model, methods, seed=seed, abslrp_variant=variants[name])
        if not built:
            raise InputError(f"no method can run on model {name!r}: {skipped}")
        start = time.perf_counter()
        out.gae[name] = gae.evaluate(model, built, ds, batch_size, progress=progress, shard=shard)
        if quantus_metrics:
            from .quantus_metrics import evaluate_quantus

            out.quantus[name] = evaluate_quantus(
                model, built, ds, metrics=tuple(quantus_metrics), batch_size=batch_size, seed=seed, progress=progress
            )
        out.seconds[name] = time.perf_counter() - start
        out.skipped[name] = skipped
        out.abslrp_variants[name] = variants[name]
    return out


def _abslrp_variants(models: Mapping[str, nn.Module], chosen: Any) -> dict[str, str]:
    """absLRP's variant per model name ("resnet" where none is given); bad values -> InputError."""
    from .methods import check_variant

    if chosen is None or isinstance(chosen, str):
        per = dict.fromkeys(models, chosen)
    elif isinstance(chosen, Mapping):
        unknown = [m for m in chosen if m not in models]
        if unknown:
            raise InputError(f"abslrp_variant names model(s) {', '.join(map(str, unknown))} not being evaluated")
        per = {m: chosen.get(m) for m in models}
    else:
        raise InputError(f"abslrp_variant must be 'vgg', 'resnet', None or a mapping model -> variant, got {chosen!r}")
    for variant in per.values():
        check_variant(variant)
    return {m: v or "resnet" for m, v in per.items()}


def image_folder(
    root: str | Path,
    size: int | None = None,
    channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Dataset:
    """Images in class sub-folders (``root/<class>/<image>``, torchvision's ImageFolder
    layout) as (C, H, W) float tensors in [0, 1], optionally resized to ``size`` x
    ``size``, converted to ``channels`` (1: grayscale, 3: RGB) and normalized with
    ``mean``/``std`` (one value, or one per channel). Labels are the folders' indices
    in sorted order."""
    from torchvision import datasets

    from ..apps.images import image_transform, per_channel

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder {root} does not exist or is not a directory")
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if size is not None and (size < 2 or size % 2):
        raise InputError(f"size must be even (GAE halves each image into a mosaic quadrant), got {size}")
    m, s = per_channel("mean", mean, channels), per_channel("std", std, channels)
    transform = image_transform("L" if channels == 1 else "RGB", size, m, s)
    try:
        ds = datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise InputError(f"cannot read images from {root}: {e} (expected {root}/<class>/<image files>)") from e
    if size is None:  # all images must then share one even size: read the headers only
        from PIL import Image

        sizes: dict[tuple[int, int], str] = {}
        for path, _ in ds.samples:
            with Image.open(path) as im:
                sizes.setdefault(im.size, path)
            if len(sizes) > 1:
                (a, pa), (b, pb) = list(sizes.items())[:2]
                raise InputError(f"images differ in size ({pa} is {a}, {pb} is {b}); pass size= (--size) to resize")
        (w, h), path = next(iter(sizes.items()))
        if w % 2 or h % 2:
            raise InputError(f"images are {w}x{h}; GAE needs an even width and height: pass size= (--size)")
    return ds
