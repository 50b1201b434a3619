"""A real ImageNet classifier explained on real photos, offline: the default ``relprop`` run.

    from relprop.apps.photos import run_photos
    result = run_photos("relprop-photos.png")    # prints the predictions, writes one PNG

The photos are scikit-image's sample photographs (shipped inside scikit-image, nothing
is downloaded); the model is EfficientNet-Lite0 (:func:`relprop.models.load_imagenet_model`).
Each photo is explained for its predicted class with absLRP and a classic LRP
composite (EpsilonPlusFlat); the picture has one row per photo: the photo as the model
sees it (224 × 224 centre crop), then one relevance map per rule set over the dimmed
photo, each map's colours saturating at the 99.5th percentile of its own |R|.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from relprop.rules import registry

from ..errors import InputError
from ..graph import trace
from . import viz

__all__ = ["PHOTOS", "Prediction", "PhotosResult", "load_photo", "run_photos"]

#: scikit-image's sample photos that the model classifies sensibly, in picture order
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "motorcycle")
#: the rule sets compared by default: absLRP and Zennit's classic composite
RULES = ("abslrp", "epsilon-plus-flat")


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one photo: the top class and the five most probable."""

    photo: str
    index: int
    label: str
    probability: float
    top5: tuple[tuple[int, str, float], ...]

    def __str__(self) -> str:
        others = ", ".join(f"{i} {name} {p:.0%}" for i, name, p in self.top5[1:])
        return f"{self.photo:<11} {self.index:>4} {self.label} ({self.probability:.0%}); then {others}"


@dataclass
class PhotosResult:
    """What :func:`run_photos` did: predictions, relevance per rule set, seconds per step, the PNG."""

    predictions: list[Prediction]
    relevance: dict[str, Tensor]
    seconds: dict[str, float] = field(default_factory=dict)
    path: Path | None = None


def load_photo(name: str) -> Image.Image:
    """The scikit-image sample photo ``name`` (``"motorcycle"``: the left stereo image) as an RGB PIL image."""
    from skimage import data

    if name == "motorcycle":
        return Image.fromarray(data.stereo_motorcycle()[0]).convert("RGB")
    loader = getattr(data, name, None)
    if loader is None or name.startswith("_"):
        raise InputError(f"scikit-image has no sample image {name!r}; the photos used here are {', '.join(PHOTOS)}")
    return Image.fromarray(loader()).convert("RGB")


def _predict(logits: Tensor, photos: Sequence[str], classes: Sequence[str]) -> list[Prediction]:
    probs = logits.softmax(1)
    top = probs.topk(5, dim=1)
    out = []
    for name, p, idx in zip(photos, top.values.tolist(), top.indices.tolist()):
        top5 = tuple((i, classes[i], q) for i, q in zip(idx, p))
        out.append(Prediction(name, idx[0], classes[idx[0]], p[0], top5))
    return out


def _posterized(pic: Image.Image, bits: int = 5) -> Image.Image:
    """``pic`` with ``bits`` bits per channel, spread over 0..255 (black and white stay exact): PNGs compress ~3x."""
    levels = (1 << bits) - 1
    lut = [round(round(v * levels / 255) * 255 / levels) for v in range(256)]
    return pic.point(lut * len(pic.getbands()))


def run_photos(
    out: str | PathLike[str] | None = "relprop-photos.png",
    rules: Sequence[str] = RULES,
    photos: Sequence[str] = PHOTOS,
    *,
    clip: float | None = viz.DEFAULT_CLIP,
    layout: str = "overlay",
    target: int | None = None,
    echo: Callable[[str], None] | None = print,
) -> PhotosResult:
    """Explain the sample ``photos`` for their predicted classes with each rule set of ``rules``.

    Prints (through ``echo``; ``None``: silent) each photo's top class, its probability
    and the next four, and the seconds taken; writes one PNG at ``out`` (``None``: no
    picture): one row per photo, the photo then one ``layout`` panel (``"overlay"``, the
    map over the dimmed photo, or ``"heatmap"``) per rule set, stored with 5 bits per
    colour channel (a third of the size, no visible difference).  Rule sets by registry
    name (``relprop.rules.registry``).  ``target``: explain this class for every photo
    instead of each photo's predicted class.
    """
    from .imagenet import load_imagenet_model

    say = echo or (lambda _: None)
    entries = [registry.entry(r) for r in rules]  # unknown names fail before any work
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    model, transform, classes = load_imagenet_model()
    x = torch.stack([transform(load_photo(p)) for p in photos])
    seconds["load"] = time.perf_counter() - t
    with torch.no_grad():
        predictions = _predict(model(x), photos, classes)
    for p in predictions:
        say(str(p))
    chosen = torch.tensor([p.index if target is None else target for p in predictions])
    relevance: dict[str, Tensor] = {}
    for entry in entries:
        t = time.perf_counter()
        relevance[entry.display] = trace(model, entry.build()).explain(x, chosen)
        seconds[entry.name] = time.perf_counter() - t
        say(f"{entry.display}: {len(photos)} photos explained in {seconds[entry.name]:.1f} s")
    result = PhotosResult(predictions, relevance, seconds)
    if out is not None:
        titles = [f"{p.photo}: {p.index} {p.label} ({p.probability:.0%})" for p in predictions]
        if target is not None:
            titles = [f"{t}; explained: {target} {classes[target]}" for t in titles]
        pic = viz.table(transform.unnormalize(x), relevance, layout=layout, row_titles=titles, clip=clip, scale=1)
        result.path = Path(out)
        _posterized(pic).save(result.path, format="PNG", optimize=True)
        say(f"wrote {result.path} ({pic.width} x {pic.height})")
    return result
