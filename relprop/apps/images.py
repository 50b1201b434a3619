"""Images for ``relprop explain``: finding them, reading them, and preprocessing them for a model.

* **Finding** (:func:`discover`): each INPUT is an image file or a folder searched recursively
  (symbolic links to folders are not followed; hidden files and folders, and the output folder,
  are skipped) for the suffixes in :data:`IMAGE_SUFFIXES`, in sorted order.  An image at
  ``<rel>/<name>.<ext>`` under a folder gets the output key ``<rel>/<name>``; a file given
  directly gets ``<name>``.  Two images with one key (``a.png`` and ``a.jpg``) are an error.
* **Preprocessing** (:func:`preprocess_for`), per model spec: ``imagenet`` uses its own
  transform; the digits models convert to greyscale, resize to 32 x 32 and normalize with their
  mean/std (then repeat the channel three times, as they were trained); ``timm:NAME`` uses timm's
  evaluation transform of the model's data config (input size, interpolation, crop, mean/std),
  where ``--size``/``--mean``/``--std`` replace the config's values; your own model gets the
  image as RGB (``--channels 1``: greyscale) in [0, 1], resized to ``--size`` x ``--size`` and
  normalized with ``--mean``/``--std`` when given.  Without ``--size`` each image keeps its own
  size, so it must be one the model takes: an image that is not fails with an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from relprop.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "Item",
    "Preprocess",
    "discover",
    "image_transform",
    "per_channel",
    "preprocess_for",
    "read_image",
]

#: the suffixes a folder is searched for (case-insensitive)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


@dataclass(frozen=True)
class Item:
    """One image: its ``path`` (as found: the INPUT joined with the path below it) and its output ``key``."""

    path: str
    key: str


def _walk(root: Path, exclude: Path | None) -> list[Path]:
    """The image files under ``root``, sorted, skipping hidden entries and ``exclude``."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or _outside(here / d, exclude)))
        found += [here / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _outside(path: Path, exclude: Path) -> bool:
    try:
        return path.resolve() != exclude
    except OSError:
        return True


def discover(inputs: Sequence[str], exclude: str | Path | None = None) -> list[Item]:
    """The images of the INPUT arguments (files or folders), each with its output key; sorted by key."""
    skip = Path(exclude).resolve() if exclude is not None else None
    items: dict[str, Item] = {}
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = [(p, p.relative_to(path).with_suffix("").as_posix()) for p in _walk(path, skip)]
            if not found:
                raise InputError(f"{given}: no image files found in this folder ({', '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            found = [(path, path.stem)]
        else:
            raise InputError(f"{given}: no such file or folder (expected image files or folders of them)")
        for file, key in found:
            item = Item(str(file), key)
            other = items.setdefault(key, item)
            if other.path != item.path:
                raise InputError(
                    f"{other.path} and {item.path} would both write the outputs {key}.png and {key}.npy; "
                    "rename one, or explain them in separate runs (--out)"
                )
    return [items[k] for k in sorted(items)]


def read_image(path: str) -> Any:
    """The image at ``path``, decoded (a Pillow image), or an InputError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise InputError(f"cannot read the image: {e}") from e


@dataclass
class Preprocess:
    """Image -> model input: ``transform`` (Pillow image -> (C, H, W) float tensor); ``mean``/``std``
    undo the normalization for the picture (:meth:`picture`); ``description`` for the user."""

    transform: Callable[[Any], Tensor]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    description: str

    def __call__(self, image: Any) -> Tensor:
        return self.transform(image)

    def picture(self, x: Tensor) -> Tensor:
        """The input ``x`` (C, H, W) as the model sees it, back in [0, 1] (C, H, W)."""
        x = x.detach().float().cpu()
        if self.mean is not None and self.std is not None:
            x = x * torch.tensor(self.std)[:, None, None] + torch.tensor(self.mean)[:, None, None]
        return x.clamp(0, 1)


def per_channel(label: str, values: Sequence[float] | None, channels: int) -> tuple[float, ...] | None:
    """``values`` (one, or one per channel; std positive) as one value per channel; ``label`` names
    them in errors (``"--mean"``, ``"std"``)."""
    if values is None:
        return None
    if len(values) not in (1, channels):
        raise InputError(f"{label} needs 1 or {channels} values (one per channel), got {len(values)}")
    if label.lstrip("-") == "std" and any(v <= 0 for v in values):
        raise InputError(f"{label} values must be positive, got {list(values)}")
    return tuple(values) * (channels // len(values))


def _convert(mode: str, image: Any) -> Any:
    return image.convert(mode)


def _repeat(times: int, x: Tensor) -> Tensor:
    return x.expand(times, -1, -1).contiguous()


def image_transform(mode: str, size: int | None, mean: Any, std: Any, repeat: int = 1) -> Callable[[Any], Tensor]:
    """convert(mode), resize, to [0, 1], normalize, repeat the channel: picklable (for DataLoader workers)."""
    from torchvision import transforms

    steps: list[Any] = [transforms.Lambda(partial(_convert, mode))]
    if size is not None:
        steps.append(transforms.Resize((size, size), antialias=True))
    steps.append(transforms.ToTensor())
    if mean is not None or std is not None:
        channels = 1 if mode == "L" else 3
        steps.append(transforms.Normalize(mean or (0.0,) * channels, std or (1.0,) * channels))
    if repeat > 1:
        steps.append(transforms.Lambda(partial(_repeat, repeat)))
    return transforms.Compose(steps)


def preprocess_for(
    kind: str,
    data: dict[str, Any],
    size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int = 3,
) -> Preprocess:
    """The preprocessing of a model of ``kind`` (see :class:`~relprop.apps.loading.LoadedModel`)."""
    if size is not None and size < 1:
        raise InputError(f"--size must be a positive number of pixels, got {size}")
    if kind in ("digits", "imagenet"):
        given = [f"--{n}" for n, v in (("size", size), ("mean", mean), ("std", std)) if v is not None]
        if given or channels != 3:
            given += ["--channels"] if channels != 3 else []
            raise InputError(
                f"{', '.join(given)}: the {kind} model has its own preprocessing; these options are for "
                "timm:NAME and your own models"
            )
    if kind == "imagenet":
        tf = data["transform"]
        return Preprocess(tf, tuple(tf.mean), tuple(tf.std), repr(tf))
    if kind == "digits":
        m, s = tuple(data["mean"]) * 3, tuple(data["std"]) * 3
        transform = image_transform("L", data["size"], data["mean"], data["std"], repeat=3)
        return Preprocess(transform, m, s, f"greyscale, {data['size']}x{data['size']}, mean {m[0]}, std {s[0]}")
    if kind == "timm":
        return _timm_preprocess(data, size, mean, std)
    if channels not in (1, 3):
        raise InputError(f"--channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    m, s = per_channel("--mean", mean, channels), per_channel("--std", std, channels)
    if (m is None) != (s is None):
        m, s = m or (0.0,) * channels, s or (1.0,) * channels
    desc = f"{'greyscale' if channels == 1 else 'RGB'} in [0, 1], {f'{size}x{size}' if size else 'own size'}"
    desc += f", mean {list(m)}, std {list(s)}" if m is not None else ", not normalized"
    return Preprocess(image_transform("L" if channels == 1 else "RGB", size, m, s), m, s, desc)


def _timm_preprocess(
    data: dict[str, Any], size: int | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Preprocess:
    from timm.data import create_transform
    from torchvision import transforms

    config = dict(data)
    channels = int(config["input_size"][0])
    if size is not None:
        config["input_size"] = (channels, size, size)
    if mean is not None:
        config["mean"] = per_channel("--mean", mean, channels)
    if std is not None:
        config["std"] = per_channel("--std", std, channels)
    transform = transforms.Compose(
        [
            transforms.Lambda(partial(_convert, "RGB" if channels == 3 else "L")),
            create_transform(**config, is_training=False),
        ]
    )
    desc = ", ".join(f"{k} {v}" for k, v in config.items())
    return Preprocess(transform, tuple(config["mean"]), tuple(config["std"]), f"timm: {desc}")
