"""Relevance as a picture: a zero-centred diverging colour map, alone or over the input.

    R = relprop.trace(model).explain(x, target)           # (B, C, H, W)
    relprop.viz.save("heatmap.png", R, x)                 # inputs above, overlays below
    relprop.viz.save_one("cat.png", R[0], x[0])           # one image and its heatmap, titled
    relprop.viz.figure(R[0], x[0], layout="overlay")      # the same as a Pillow image

Red is positive relevance, blue negative, white zero.  The colour limits are
symmetric, ``±`` the ``clip`` percentile of ``|R|`` per sample (default 99.5, so that
a few extreme pixels do not wash out the map; values beyond it saturate;
``clip=None`` or ``100``: ``±max|R|``), so white always means zero.

Layouts (:data:`LAYOUTS`): the panels drawn per sample, ``"heatmap"``, ``"overlay"``
(the heatmap over the dimmed greyscale input), ``"side-by-side"`` (the input, then
its heatmap), or any ``+``-joined sequence of ``image``, ``heatmap`` and ``overlay``
(``"image+overlay"``, ``"image+heatmap+overlay"``).  :func:`figure` and
:func:`save_one` draw one sample's panels left to right; :func:`save` draws one
column per sample, its panels top to bottom; :func:`table` one row per sample.

Shapes: ``(H, W)``; ``(C, H, W)``, summed over channels; a batch ``(B, C, H, W)``
(or ``(B, H, W)`` with ``batch=True``) is rendered as a grid, ``ncols`` per row
(default: all in one row).  Relevance and images may be torch tensors or numpy
arrays.  Everything is numpy and Pillow; no matplotlib state is touched.

The names are implemented in :mod:`relprop.apps.viz`; the module loads on first use
(``import relprop`` does not import it).
"""

from .apps.viz import (
    DEFAULT_CLIP,
    LAYOUTS,
    colorize,
    figure,
    heatmap,
    overlay,
    save,
    save_one,
    save_rows,
    table,
    to_maps,
)

__all__ = [
    "colorize",
    "DEFAULT_CLIP",
    "figure",
    "heatmap",
    "LAYOUTS",
    "overlay",
    "save",
    "save_one",
    "save_rows",
    "table",
    "to_maps",
]
