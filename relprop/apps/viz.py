"""Relevance as a picture: a zero-centred diverging colour map, alone or over the input.

    R = relprop.trace(model).explain(x, target)      # (B, C, H, W)
    relprop.viz.save("heatmap.png", R, x)            # inputs above, overlays below

Red is positive relevance, blue negative, white zero.  The colour limits are
symmetric, ``±max|R|`` per sample (or ``±`` the ``clip`` percentile of ``|R|``,
values beyond it saturate), so white always means zero.

Shapes: ``(H, W)``; ``(C, H, W)``, summed over channels; a batch ``(B, C, H, W)``
(or ``(B, H, W)`` with ``batch=True``) is rendered as a grid, ``ncols`` per row
(default: all in one row).  Relevance and images may be torch tensors or numpy
arrays.  Everything is numpy and Pillow; no matplotlib state is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError

__all__ = ["colorize", "heatmap", "overlay", "save", "save_rows", "to_maps"]

#: grey between the tiles of a grid (not white, which means zero relevance)
PAD_VALUE = 160
#: brightness of the greyscale image under an overlay (dimmed so the colours stand out)
DIM = 0.7


# -- shapes ----------------------------------------------------------------------------------


def _as_numpy(a: Any, what: str) -> np.ndarray:
    """A real-valued numpy array from a tensor / array-like, or an InputError."""
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch here
        a = a.detach()
        if a.is_floating_point():
            a = a.double()  # also bfloat16 and float16, which numpy lacks or handles poorly
        a = a.cpu().numpy()
    try:
        arr = np.asarray(a)
    except Exception as e:  # noqa: BLE001 - any conversion failure is the caller's input
        raise InputError(f"{what} must be a tensor or array, got {type(a).__name__}") from e
    if arr.dtype == object or np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{what} must be numeric, got an array of dtype {arr.dtype}")
    return arr


def to_maps(R: Any, batch: bool | None = None) -> np.ndarray:
    """Relevance as a stack of 2-D maps, (B, H, W) float64.

    ``(H, W)`` is one map, ``(C, H, W)`` one map summed over channels, ``(B, C, H, W)``
    a batch; ``batch=True`` reads a 3-D input as ``(B, H, W)`` instead.
    """
    r = _as_numpy(R, "relevance").astype(np.float64)
    shape = tuple(r.shape)
    if batch is None:
        batch = r.ndim == 4
    if r.ndim == 2 and not batch:
        r = r[None]
    elif r.ndim == 3 and not batch:
        r = r.sum(0)[None]
    elif r.ndim == 3 and batch:
        pass
    elif r.ndim == 4 and batch:
        r = r.sum(1)
    else:
        raise InputError(
            f"relevance shaped {shape} cannot be drawn; expected (H, W), (C, H, W) or a batch "
            "(B, C, H, W) (or (B, H, W) with batch=True)"
        )
    if 0 in r.shape:
        raise InputError(f"relevance shaped {shape} is empty; expected at least one pixel")
    if not np.isfinite(r).all():
        raise InputError(f"relevance shaped {shape} contains NaN or Inf; expected finite values")
    return r


def _images(image: Any, n: int, hw: tuple[int, int]) -> np.ndarray:
    """Images as (B, H, W, 3) float in [0, 1], matched to ``n`` maps of size ``hw``."""
    a = _as_numpy(image, "image")
    shape = tuple(a.shape)
    integer = np.issubdtype(a.dtype, np.integer)
    a = a.astype(np.float64)
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise InputError(
            f"image shaped {shape} cannot be drawn; expected (H, W), (C, H, W), (H, W, C) or a batch of those"
        )
    if a.shape[2:] == hw and a.shape[1] in (1, 3, 4):  # channels first
        a = a.transpose(0, 2, 3, 1)
    elif not (a.shape[1:3] == hw and a.shape[3] in (1, 3, 4)):  # channels last
        raise InputError(
            f"image shaped {shape} does not match relevance of spatial size {hw}; expected "
            f"(C, H, W) or (H, W, C) with H, W = {hw} and 1, 3 or 4 channels"
        )
    a = a[..., :3] if a.shape[3] >= 3 else np.repeat(a, 3, axis=3)
    if a.shape[0] == 1 and n > 1:
        a = np.repeat(a, n, axis=0)
    if a.shape[0] != n:
        raise InputError(f"{a.shape[0]} images for {n} relevance maps; expected as many")
    if not np.isfinite(a).all():
        raise InputError(f"image shaped {shape} contains NaN or Inf")
    if integer:
        return np.clip(a / 255.0, 0.0, 1.0)
    out = np.empty_like(a)
    for i, img in enumerate(a):  # floats in [0, 1] as they are; other ranges min-max scaled
        lo, hi = img.min(), img.max()
        if lo >= 0.0 and hi <= 1.0:
            out[i] = img
        else:
            out[i] = (img - lo) / (hi - lo) if hi > lo else 0.5
    return out


# -- colours ---------------------------------------------------------------------------------


def _limits(maps: np.ndarray, clip: float | None) -> np.ndarray:
    """Per-map colour limit: max|R|, or the ``clip`` percentile of |R| (max|R| where that is 0)."""
    flat = np.abs(maps.reshape(len(maps), -1))
    largest = flat.max(1)
    if clip is None:
        return largest
    if not 0 < clip <= 100:
        raise InputError(f"clip is a percentile of |R|; expected 0 < clip <= 100, got {clip}")
    lim = np.percentile(flat, clip, axis=1)
    return np.where(lim > 0, lim, largest)


def _scaled(maps: np.ndarray, clip: float | None) -> np.ndarray:
    """Maps scaled to [-1, 1] by their symmetric per-map limit (all-zero maps stay 0)."""
    lim = _limits(maps, clip)[:, None, None]
    safe = np.where(lim > 0, lim, 1.0)
    return np.clip(maps / safe, -1.0, 1.0)


def colorize(v: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] to RGB floats in [0, 1]: blue (-1), white (0), red (+1)."""
    v = np.clip(np.asarray(v, dtype=np.float64), -1.0, 1.0)
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    return np.stack([1.0 - neg, 1.0 - pos - neg, 1.0 - pos], axis=-1)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


def _grid(tiles: np.ndarray, ncols: int | None, pad: int) -> np.ndarray:
    """(N, H, W, 3) uint8 tiles on a grey grid; a single tile comes back without a border."""
    n, h, w, _ = tiles.shape
    if n == 1:
        return tiles[0]
    cols = n if ncols is None else max(1, min(int(ncols), n))
    rows = -(-n // cols)
    out = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), PAD_VALUE, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + h, x : x + w] = t
    return out


# -- public ----------------------------------------------------------------------------------


def heatmap(
    R: Any,
    *,
    clip: float | None = None,
    batch: bool | None = None,
    ncols: int | None = None,
    pad: int = 2,
) -> np.ndarray:
    """Relevance as an RGB image, (H, W, 3) uint8; a batch as a grid of tiles.

    ``clip``: a percentile of |R| (e.g. 99.5) to use as the colour limit instead of
    max|R|, so that a few extreme pixels do not wash out the rest.
    """
    maps = to_maps(R, batch)
    return _grid(_to_uint8(colorize(_scaled(maps, clip))), ncols, pad)


def _blend(maps: np.ndarray, img: np.ndarray, alpha: float, clip: float | None, gray: bool) -> np.ndarray:
    """(B, H, W, 3) uint8 tiles: the colour of ``maps`` over ``img`` ((B, H, W, 3) in [0, 1])."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha is an opacity; expected 0 <= alpha <= 1, got {alpha}")
    if gray:
        lum = DIM * (img @ np.array([0.299, 0.587, 0.114]))
        img = np.repeat(lum[..., None], 3, axis=-1)
    v = _scaled(maps, clip)
    a = alpha * np.abs(v)[..., None]
    return _to_uint8((1.0 - a) * img + a * colorize(v))


def overlay(
    R: Any,
    image: Any,
    alpha: float = 0.7,
    *,
    clip: float | None = None,
    gray: bool = True,
    batch: bool | None = None,
    ncols: int | None = None,
    pad: int = 2,
) -> np.ndarray:
    """The heatmap over the input image, (H, W, 3) uint8; a batch as a grid of tiles.

    ``image``: (C, H, W) or (H, W, C) (or a batch of them, or one image for all maps),
    float in [0, 1] (other float ranges, such as normalized inputs, are min-max
    scaled), or uint8.  The colour's opacity is ``alpha`` at the colour limit and
    falls with |R|, so where relevance is zero the image shows through unchanged.
    ``gray``: draw the image in dimmed greyscale so its own colours do not read as
    relevance (``gray=False``: the image as it is).
    """
    maps = to_maps(R, batch)
    img = _images(image, len(maps), maps.shape[1:])
    return _grid(_blend(maps, img, alpha, clip, gray), ncols, pad)


def _titled(grid: np.ndarray, titles: Sequence[str], tile: int, pad: int) -> Image.Image:
    """``grid`` with one caption per column above it (tiles ``tile`` wide, ``pad`` apart)."""
    img = Image.fromarray(grid)
    font = ImageFont.load_default()
    band = 16
    out = Image.new("RGB", (img.width, img.height + band), (255, 255, 255))
    out.paste(img, (0, band))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(titles):
        left, top, right, bottom = draw.textbbox((0, 0), str(text), font=font)
        x = pad + i * (tile + pad) + (tile - (right - left)) // 2 - left
        y = (band - (bottom - top)) // 2 - top
        draw.text((x, y), str(text), fill=(0, 0, 0), font=font)
    return out


def save(
    path: str | PathLike[str],
    R: Any,
    image: Any = None,
    *,
    overlay: bool = True,
    alpha: float = 0.7,
    clip: float | None = None,
    scale: int | None = None,
    titles: Sequence[str] | None = None,
    batch: bool | None = None,
) -> Image.Image:
    """Write relevance as a PNG at ``path``; returns the Pillow image written.

    One column per sample.  Without ``image``: the heatmaps.  With ``image``: the
    inputs above, and below them the heatmap over the input (``overlay=True``) or
    the bare heatmap (``overlay=False``).  ``scale``: integer nearest-neighbour
    upscaling (default: tiles at least 128 pixels tall).  ``titles``: one short
    caption per sample, drawn above its column.
    """
    maps = to_maps(R, batch)
    n, h, w = maps.shape
    if titles is not None and len(titles) != n:
        raise InputError(f"{len(titles)} titles for {n} relevance maps; expected as many")
    if scale is None:
        scale = -(-128 // max(h, w))
    scale = int(scale)
    if scale < 1:
        raise InputError(f"scale is an integer upscaling factor; expected >= 1, got {scale}")
    tiles = _to_uint8(colorize(_scaled(maps, clip)))
    if image is not None:
        img = _images(image, n, (h, w))
        maps_row = _blend(maps, img, alpha, clip, gray=True) if overlay else tiles
        tiles = np.concatenate([_to_uint8(img), maps_row])
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    pad = 2 * scale if len(tiles) > 1 else 0
    grid = _grid(tiles, n, pad)
    pic = _titled(grid, titles, w * scale, pad) if titles else Image.fromarray(grid)
    pic.save(path, format="PNG")
    return pic


def save_rows(
    path: str | PathLike[str],
    rows: Mapping[str, Any],
    image: Any,
    *,
    overlay: bool = True,
    alpha: float = 0.7,
    clip: float | None = None,
    scale: int | None = None,
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """Several explanations of the same inputs in one PNG: the inputs in the top row,
    then one row per entry of ``rows`` (label -> relevance of the batch), the label
    written left of its row.  Other arguments as in :func:`save`."""
    if not rows:
        raise InputError("rows is empty; expected at least one label -> relevance entry")
    all_maps = [to_maps(R, None) for R in rows.values()]
    n, h, w = all_maps[0].shape
    for label, maps in zip(rows, all_maps):
        if maps.shape != (n, h, w):
            raise InputError(f"row {label!r} has maps shaped {maps.shape[1:]} x {len(maps)}; expected {(h, w)} x {n}")
    if titles is not None and len(titles) != n:
        raise InputError(f"{len(titles)} titles for {n} relevance maps; expected as many")
    scale = int(-(-128 // max(h, w)) if scale is None else scale)
    if scale < 1:
        raise InputError(f"scale is an integer upscaling factor; expected >= 1, got {scale}")
    img = _images(image, n, (h, w))
    tiles = [_to_uint8(img)]
    for maps in all_maps:
        tiles.append(_blend(maps, img, alpha, clip, gray=True) if overlay else _to_uint8(colorize(_scaled(maps, clip))))
    stack = np.concatenate(tiles)
    if scale > 1:
        stack = stack.repeat(scale, axis=1).repeat(scale, axis=2)
    pad = 2 * scale
    grid = _grid(stack, n, pad)
    pic = _titled(grid, titles, w * scale, pad) if titles else Image.fromarray(grid)
    font = ImageFont.load_default()
    labels = ["input", *rows]
    draw = ImageDraw.Draw(pic)
    margin = max(int(draw.textlength(str(t), font=font)) for t in labels) + 2 * pad
    out = Image.new("RGB", (pic.width + margin, pic.height), (255, 255, 255))
    out.paste(pic, (margin, 0))
    draw = ImageDraw.Draw(out)
    top = pic.height - grid.shape[0]
    for r, text in enumerate(labels):
        left, t, right, bottom = draw.textbbox((0, 0), str(text), font=font)
        y = top + pad + r * (h * scale + pad) + (h * scale - (bottom - t)) // 2 - t
        draw.text((pad, y), str(text), fill=(0, 0, 0), font=font)
    out.save(path, format="PNG")
    return out
