"""The implementation of :mod:`relprop.viz` (the public module; its docstring describes it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError

__all__ = [
    "DEFAULT_CLIP",
    "LAYOUTS",
    "colorize",
    "figure",
    "heatmap",
    "overlay",
    "save",
    "save_one",
    "save_rows",
    "table",
    "to_maps",
]

#: default colour limit: this percentile of |R|, per sample (``clip=None`` or 100: max|R|)
DEFAULT_CLIP = 99.5
#: the named layouts and their panels (any ``+``-joined sequence of the panel names works too)
LAYOUTS: dict[str, tuple[str, ...]] = {
    "heatmap": ("heatmap",),
    "overlay": ("overlay",),
    "side-by-side": ("image", "heatmap"),
}
PANELS = ("image", "heatmap", "overlay")

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
    """Turn relevance into a stack of 2-D maps.

    Args:
        R: relevance: (H, W); (C, H, W), summed over channels; a batch (B, C, H, W).
        batch: read a 3-D ``R`` as a batch (B, H, W) instead of (C, H, W).

    Returns:
        (B, H, W) float64 maps.

    Raises:
        InputError: relevance or image of a shape, type or value that cannot be drawn (not
            numeric, empty, NaN or Inf, images that do not match the maps), or an option
            out of range.
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
    """Per-map colour limit: the ``clip`` percentile of |R| (max|R| where that is 0), or max|R| (``clip=None``)."""
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
    """Colour values with the diverging map: blue (-1), white (0), red (+1).

    Args:
        v: values in [-1, 1], any shape.

    Returns:
        RGB floats in [0, 1], shaped ``v.shape + (3,)``.
    """
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


# -- layouts and text -----------------------------------------------------------------------


def _panels(layout: str) -> tuple[str, ...]:
    """The panels a layout names: one of :data:`LAYOUTS` or a ``+``-joined sequence of :data:`PANELS`."""
    if not isinstance(layout, str):
        raise InputError(f"layout is a string, got {type(layout).__name__}")
    panels = LAYOUTS.get(layout) or tuple(p.strip() for p in layout.split("+"))
    if not panels or any(p not in PANELS for p in panels):
        raise InputError(
            f"unknown layout {layout!r}; expected one of {', '.join(map(repr, LAYOUTS))} "
            f"or a '+'-joined sequence of {', '.join(PANELS)}"
        )
    return panels


def _panel_tiles(
    panel: str, maps: np.ndarray, img: np.ndarray | None, alpha: float, clip: float | None, gray: bool = True
) -> np.ndarray:
    """(B, H, W, 3) uint8: the panel ``panel`` of every sample."""
    if panel == "heatmap":
        return _to_uint8(colorize(_scaled(maps, clip)))
    if img is None:
        raise InputError(f"the {panel!r} panel needs the image; pass image= or use layout='heatmap'")
    if panel == "image":
        return _to_uint8(img)
    return _blend(maps, img, alpha, clip, gray)


def _scale_for(h: int, w: int, scale: int | None, least: int) -> int:
    """The integer upscaling factor: ``scale``, or the smallest that makes the long side at least ``least``."""
    scale = int(-(-least // max(h, w)) if scale is None else scale)
    if scale < 1:
        raise InputError(f"scale is an integer upscaling factor; expected >= 1, got {scale}")
    return scale


def _upscaled(tiles: np.ndarray, scale: int) -> np.ndarray:
    return tiles.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else tiles


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _centred(draw: ImageDraw.ImageDraw, x: int, width: int, y: int, text: str, font: Any) -> None:
    """``text`` centred in [x, x + width), its top at ``y``."""
    left, top, right, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((x + (width - (right - left)) // 2 - left, y - top), text, fill=(0, 0, 0), font=font)


def _clip_text(clip: float | None) -> str:
    return "max |R|" if clip is None or clip == 100 else f"the {clip:g}th percentile of |R|"


def _wrapped(text: str, width: int, font: Any) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` pixels wide (a longer word stays whole)."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _legend(width: int, note: str, font: Any) -> Image.Image:
    """A colour bar (blue, white, red) ``width`` wide, -/0/+ under it, then ``note`` wrapped to the width."""
    bar_w = max(64, min(width - 16, 320))
    bar = _to_uint8(colorize(np.linspace(-1.0, 1.0, bar_w)))[None].repeat(10, axis=0)
    line = (font.size if hasattr(font, "size") else 10) + 4
    lines = _wrapped(note, max(width - 8, 120), font)
    out = Image.new("RGB", (max(width, bar_w + 16), 17 + line * (1 + len(lines)) + 4), (255, 255, 255))
    x0 = (out.width - bar_w) // 2
    out.paste(Image.fromarray(bar), (x0, 4))
    draw = ImageDraw.Draw(out)
    draw.rectangle((x0 - 1, 3, x0 + bar_w, 14), outline=(PAD_VALUE,) * 3)
    for text, x in (("-", x0), ("0", x0 + bar_w // 2), ("+", x0 + bar_w)):
        _centred(draw, x - 20, 40, 17, text, font)
    for i, text in enumerate(lines):
        _centred(draw, 0, out.width, 17 + line * (i + 1), text, font)
    return out


def _stack(parts: Sequence[Image.Image]) -> Image.Image:
    """Pictures top to bottom on white, centred."""
    out = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), (255, 255, 255))
    y = 0
    for p in parts:
        out.paste(p, ((out.width - p.width) // 2, y))
        y += p.height
    return out


def _band(width: int, texts: Sequence[tuple[int, int, str]], font: Any) -> Image.Image:
    """A white band ``width`` wide with each ``(x, w, text)`` centred in [x, x + w)."""
    line = font.size + 6 if hasattr(font, "size") else 16
    out = Image.new("RGB", (width, line), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for x, w, text in texts:
        _centred(draw, x, w, 3, str(text), font)
    return out


def _caption(width: int, text: str, font: Any) -> Image.Image:
    """``text`` centred in a white band ``width`` wide, wrapped onto more lines where it is wider."""
    return _stack([_band(width, [(0, width, line)], font) for line in _wrapped(str(text), width - 8, font)])


# -- public ----------------------------------------------------------------------------------


def heatmap(
    R: Any,
    *,
    clip: float | None = DEFAULT_CLIP,
    batch: bool | None = None,
    ncols: int | None = None,
    pad: int = 2,
) -> np.ndarray:
    """Draw relevance as an RGB image; a batch as a grid of tiles.

    Args:
        R: relevance: (H, W); (C, H, W), summed over channels; a batch (B, C, H, W).
        clip: the percentile of |R| used as each map's colour limit (default 99.5), so that
            a few extreme pixels do not wash out the rest; None or 100: max|R|.
        batch: read a 3-D ``R`` as a batch (B, H, W) instead of (C, H, W).
        ncols: tiles per row of the grid (default: about square).
        pad: pixels between tiles.

    Returns:
        (H, W, 3) uint8.

    Raises:
        InputError: relevance or image of a shape, type or value that cannot be drawn (not
            numeric, empty, NaN or Inf, images that do not match the maps), or an option
            out of range.
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
    clip: float | None = DEFAULT_CLIP,
    gray: bool = True,
    batch: bool | None = None,
    ncols: int | None = None,
    pad: int = 2,
) -> np.ndarray:
    """Draw the heatmap over the input image; a batch as a grid of tiles.

    The colour's opacity is ``alpha`` at the colour limit and falls with |R|, so where
    relevance is zero the image shows through unchanged.

    Args:
        R: relevance: (H, W); (C, H, W), summed over channels; a batch (B, C, H, W).
        image: the input: (C, H, W) or (H, W, C) (or a batch of them, or one image for all
            maps), float in [0, 1] (other float ranges, such as normalized inputs, are
            min-max scaled), or uint8.
        alpha: the colour's opacity at the colour limit, in [0, 1].
        clip: the percentile of |R| used as each map's colour limit (default 99.5), so that
            a few extreme pixels do not wash out the rest; None or 100: max|R|.
        gray: draw the image in dimmed greyscale so its own colours do not read as
            relevance (False: the image as it is).
        batch: read a 3-D ``R`` as a batch (B, H, W) instead of (C, H, W).
        ncols: tiles per row of the grid (default: about square).
        pad: pixels between tiles.

    Returns:
        (H, W, 3) uint8.

    Raises:
        InputError: relevance or image of a shape, type or value that cannot be drawn (not
            numeric, empty, NaN or Inf, images that do not match the maps), or an option
            out of range.
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
    layout: str | None = None,
    overlay: bool = True,
    alpha: float = 0.7,
    clip: float | None = DEFAULT_CLIP,
    scale: int | None = None,
    titles: Sequence[str] | None = None,
    batch: bool | None = None,
) -> Image.Image:
    """Write relevance as a PNG: one column per sample, its panels top to bottom.

    Args:
        path: where to write it.
        R: relevance: (H, W); (C, H, W), summed over channels; a batch (B, C, H, W).
        image: the input: (C, H, W) or (H, W, C) (or a batch of them, or one image for all
            maps), float in [0, 1] (other float ranges, such as normalized inputs, are
            min-max scaled), or uint8.
        layout: the panels (see [`LAYOUTS`][relprop.viz.LAYOUTS]); default ``"heatmap"``
            without ``image``; with it, ``"image+overlay"`` (the input above the heatmap
            over it) or, with ``overlay=False``, ``"side-by-side"`` (the input above the
            bare heatmap).
        overlay: with ``image`` and no ``layout``, draw the heatmap over the input.
        alpha: as for [`overlay`][relprop.viz.overlay].
        clip: the percentile of |R| used as each map's colour limit (default 99.5), so that
            a few extreme pixels do not wash out the rest; None or 100: max|R|.
        scale: integer nearest-neighbour upscaling (default: tiles at least 128 pixels tall).
        titles: one short caption per sample, drawn above its column.
        batch: read a 3-D ``R`` as a batch (B, H, W) instead of (C, H, W).

    Returns:
        The Pillow image written.

    Raises:
        InputError: relevance or image of a shape, type or value that cannot be drawn (not
            numeric, empty, NaN or Inf, images that do not match the maps), or an option
            out of range.
    """
    maps = to_maps(R, batch)
    n, h, w = maps.shape
    if layout is None:
        layout = "heatmap" if image is None else ("image+overlay" if overlay else "side-by-side")
    panels = _panels(layout)
    if titles is not None and len(titles) != n:
        raise InputError(f"{len(titles)} titles for {n} relevance maps; expected as many")
    scale = _scale_for(h, w, scale, 128)
    img = None if image is None else _images(image, n, (h, w))
    tiles = _upscaled(np.concatenate([_panel_tiles(p, maps, img, alpha, clip) for p in panels]), scale)
    pad = 2 * scale if len(tiles) > 1 else 0
    grid = _grid(tiles, n, pad)
    pic = _titled(grid, titles, w * scale, pad) if titles else Image.fromarray(grid)
    pic.save(path, format="PNG")
    return pic


def figure(
    R: Any,
    image: Any = None,
    *,
    layout: str | None = None,
    title: str | None = None,
    alpha: float = 0.7,
    clip: float | None = DEFAULT_CLIP,
    gray: bool = True,
    size: int = 224,
    legend: bool = True,
) -> Image.Image:
    """Draw one sample and its relevance as a picture readable at a glance.

    The panels of ``layout`` left to right, each captioned, ``title`` above them, and under
    them a colour bar stating the colour limit.

    Args:
        R: relevance of one sample: (H, W), (C, H, W) or a batch of one.
        image: its input, as for [`overlay`][relprop.viz.overlay].
        layout: the panels (see [`LAYOUTS`][relprop.viz.LAYOUTS]); default
            ``"side-by-side"``: the input, then its heatmap (``"heatmap"`` without ``image``).
        title: a line above the panels.
        alpha: as for [`overlay`][relprop.viz.overlay].
        clip: the percentile of |R| used as each map's colour limit (default 99.5), so that
            a few extreme pixels do not wash out the rest; None or 100: max|R|.
        gray: as for [`overlay`][relprop.viz.overlay].
        size: panels are upscaled by an integer factor (nearest neighbour) until their long
            side is at least ``size`` pixels.
        legend: draw the colour bar.

    Returns:
        The Pillow RGB image.

    Raises:
        InputError: relevance or image of a shape, type or value that cannot be drawn (not
            numeric, empty, NaN or Inf, images that do not match the maps), or an option
            out of range; or more than one sample.
    """
    maps = to_maps(R, None)
    if len(maps) != 1:
        raise InputError(f"figure draws one sample; got {len(maps)} relevance maps (use save() or table())")
    _, h, w = maps.shape
    panels = _panels(layout or ("heatmap" if image is None else "side-by-side"))
    img = None if image is None else _images(image, 1, (h, w))
    scale = _scale_for(h, w, None, size)
    tiles = [_upscaled(_panel_tiles(p, maps, img, alpha, clip, gray), scale)[0] for p in panels]
    gap, th, tw = 8, h * scale, w * scale
    row = Image.new("RGB", (len(tiles) * (tw + gap) + gap, th + 2), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    for i, tile in enumerate(tiles):
        x = gap + i * (tw + gap)
        row.paste(Image.fromarray(tile), (x, 1))
        draw.rectangle((x - 1, 0, x + tw, th + 1), outline=(PAD_VALUE,) * 3)
    font = _font(14)
    captions = {"image": "input", "heatmap": "relevance", "overlay": "relevance over the input"}
    parts = [_band(row.width, [(gap + i * (tw + gap), tw, captions[p]) for i, p in enumerate(panels)], font), row]
    if title:
        parts.insert(0, _caption(row.width, title, _font(16)))
    if legend:
        lim = float(_limits(maps, clip)[0])
        note = f"red: positive, blue: negative relevance; colours saturate at {_clip_text(clip)} (±{lim:.3g})"
        parts.append(_legend(row.width, note, _font(12)))
    return _stack(parts)


def save_one(path: str | PathLike[str], R: Any, image: Any = None, **options: Any) -> Image.Image:
    """Write [`figure`][relprop.viz.figure] (one sample, its relevance, title and colour bar) as a PNG.

    Args:
        path: where to write it.
        R: as for [`figure`][relprop.viz.figure].
        image: as for [`figure`][relprop.viz.figure].
        **options: the other arguments of [`figure`][relprop.viz.figure].

    Returns:
        The Pillow image written.

    Raises:
        InputError: as for [`figure`][relprop.viz.figure].
    """
    pic = figure(R, image, **options)
    pic.save(path, format="PNG")
    return pic


def _table_columns(
    columns: Mapping[str, Any], layout: str | Mapping[str, str], n: int, hw: tuple[int, int]
) -> list[tuple[str, np.ndarray, str]]:
    """``(label, maps, panel)`` per column of :func:`table`, checked against ``n`` images of size ``hw``."""
    out = []
    for label, R in columns.items():
        maps = to_maps(R, None)
        if maps.shape != (n, *hw):
            raise InputError(f"column {label!r} has {len(maps)} maps of {maps.shape[1:]}; expected {n} of {hw}")
        panel = layout if isinstance(layout, str) else layout.get(label, "heatmap")
        if panel not in ("heatmap", "overlay"):
            raise InputError(f"column {label!r}: layout {panel!r}; expected 'heatmap' or 'overlay'")
        out.append((label, maps, panel))
    return out


def table(
    images: Any,
    columns: Mapping[str, Any],
    *,
    layout: str | Mapping[str, str] = "heatmap",
    row_titles: Sequence[str] | None = None,
    alpha: float = 0.7,
    clip: float | None = DEFAULT_CLIP,
    scale: int | None = None,
    legend: bool = True,
) -> Image.Image:
    """Draw several explanations of a batch as one picture: one row per sample.

    Each row: the input, then one panel per entry of ``columns``.  Column labels on top,
    ``row_titles`` above each row, a colour bar below; every map on its own colour scale.

    Args:
        images: the inputs, as for [`overlay`][relprop.viz.overlay].
        columns: ``{label: relevance of the batch}``.
        layout: ``"heatmap"`` or ``"overlay"``, or ``{label: one of them}``.
        row_titles: one title per sample.
        alpha: as for [`overlay`][relprop.viz.overlay].
        clip: the percentile of |R| used as each map's colour limit (default 99.5), so that
            a few extreme pixels do not wash out the rest; None or 100: max|R|.
        scale: integer nearest-neighbour upscaling.
        legend: draw the colour bar.

    Returns:
        The Pillow image.

    Raises:
        InputError: relevance or image of a shape, type or value that cannot be drawn (not
            numeric, empty, NaN or Inf, images that do not match the maps), or an option
            out of range; or no columns.
    """
    if not columns:
        raise InputError("columns is empty; expected at least one label -> relevance entry")
    first = to_maps(next(iter(columns.values())), None)
    n, h, w = first.shape
    cols = _table_columns(columns, layout, n, (h, w))
    if row_titles is not None and len(row_titles) != n:
        raise InputError(f"{len(row_titles)} row titles for {n} samples; expected as many")
    img = _images(images, n, (h, w))
    scale = _scale_for(h, w, scale, 128)
    tiles = [_to_uint8(img)] + [_panel_tiles(p, maps, img, alpha, clip) for _, maps, p in cols]
    gap, th, tw = 4, h * scale, w * scale
    width = len(tiles) * (tw + gap) + gap
    font = _font(14)
    xs = [gap + j * (tw + gap) for j in range(len(tiles))]
    parts = [_band(width, [(x, tw, t) for x, t in zip(xs, ["input", *columns])], font)]
    for i in range(n):
        if row_titles is not None:
            parts.append(_caption(width, row_titles[i], font))
        row = np.full((th + gap, width, 3), PAD_VALUE, np.uint8)
        for x, t in zip(xs, tiles):
            row[:th, x : x + tw] = _upscaled(t[i : i + 1], scale)[0]
        parts.append(Image.fromarray(row))
    if legend:
        note = f"red: positive, blue: negative relevance; each map's colours saturate at {_clip_text(clip)}"
        parts.append(_legend(width, note, font))
    return _stack(parts)


def save_rows(
    path: str | PathLike[str],
    rows: Mapping[str, Any],
    image: Any,
    *,
    overlay: bool = True,
    alpha: float = 0.7,
    clip: float | None = DEFAULT_CLIP,
    scale: int | None = None,
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """Write several explanations of the same inputs as one PNG, one row per explanation.

    The inputs in the top row, then one row per entry of ``rows``, the label written left
    of its row.

    Args:
        path: where to write it.
        rows: ``{label: relevance of the batch}``.
        image: the inputs, as for [`overlay`][relprop.viz.overlay].
        overlay: draw the heatmaps over the inputs.
        alpha: as for [`overlay`][relprop.viz.overlay].
        clip: the percentile of |R| used as each map's colour limit (default 99.5), so that
            a few extreme pixels do not wash out the rest; None or 100: max|R|.
        scale: as for [`save`][relprop.viz.save].
        titles: one caption per sample, above its column.

    Returns:
        The Pillow image written.

    Raises:
        InputError: relevance or image of a shape, type or value that cannot be drawn (not
            numeric, empty, NaN or Inf, images that do not match the maps), or an option
            out of range; or no rows.
    """
    if not rows:
        raise InputError("rows is empty; expected at least one label -> relevance entry")
    all_maps = [to_maps(R, None) for R in rows.values()]
    n, h, w = all_maps[0].shape
    for label, maps in zip(rows, all_maps):
        if maps.shape != (n, h, w):
            raise InputError(f"row {label!r} has maps shaped {maps.shape[1:]} x {len(maps)}; expected {(h, w)} x {n}")
    if titles is not None and len(titles) != n:
        raise InputError(f"{len(titles)} titles for {n} relevance maps; expected as many")
    scale = _scale_for(h, w, scale, 128)
    img = _images(image, n, (h, w))
    panel = "overlay" if overlay else "heatmap"
    stack = _upscaled(
        np.concatenate([_to_uint8(img)] + [_panel_tiles(panel, m, img, alpha, clip) for m in all_maps]), scale
    )
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
