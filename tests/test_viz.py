"""relprop.viz: the diverging colour map, shapes, overlays, PNG output, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import relprop
from relprop.apps import viz  # the implementation: the tests read its private helpers

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


def _signed_map() -> np.ndarray:
    """4×5 map: +1 at (0, 0), -1 at (3, 4), +0.5 at (1, 1), zero elsewhere."""
    r = np.zeros((4, 5))
    r[0, 0], r[3, 4], r[1, 1] = 1.0, -1.0, 0.5
    return r


def test_colour_map_is_zero_centred() -> None:
    img = viz.heatmap(_signed_map())
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert tuple(img[2, 2]) == WHITE  # zero -> white
    assert tuple(img[0, 0]) == RED  # the largest positive -> saturated red
    assert tuple(img[3, 4]) == BLUE  # the largest negative -> saturated blue
    assert tuple(img[1, 1]) == (255, 128, 128)  # half way -> half-saturated red
    assert tuple(viz.colorize(np.array(0.0)).tolist()) == (1.0, 1.0, 1.0)


def test_positive_is_red_dominant_and_negative_blue_dominant() -> None:
    rng = np.random.default_rng(0)
    r = rng.normal(size=(16, 16))
    img = viz.heatmap(r).astype(int)
    pos, neg = r > 0.05, r < -0.05
    assert (img[pos][:, 0] > img[pos][:, 2]).all()
    assert (img[neg][:, 2] > img[neg][:, 0]).all()


def test_colour_limits_are_symmetric() -> None:
    r = _signed_map()
    r[3, 4] = -0.25  # with clip=None the limit stays max|R| = 1, so -0.25 is a pale blue
    img = viz.heatmap(r, clip=None)
    assert tuple(img[3, 4]) == (191, 191, 255)
    # flipping the sign swaps red and blue exactly
    assert np.array_equal(viz.heatmap(-r), viz.heatmap(r)[..., ::-1])
    # scaling does not change the picture
    assert np.array_equal(viz.heatmap(7.0 * r), viz.heatmap(r))


def test_percentile_clip_saturates_the_extremes() -> None:
    r = np.linspace(-1, 1, 101).reshape(1, 101)
    r[0, -1] = 100.0  # one outlier would wash everything else out
    plain, clipped = viz.heatmap(r, clip=None), viz.heatmap(r, clip=98)
    assert tuple(plain[0, 80]) != RED and tuple(clipped[0, 99]) == RED
    assert tuple(clipped[0, -1]) == RED and tuple(clipped[0, 50]) == WHITE
    sparse = np.zeros((10, 10))
    sparse[0, 0], sparse[0, 1] = 1.0, 0.5  # the 50th percentile of |R| is 0: fall back to max
    assert tuple(viz.heatmap(sparse, clip=50)[0, 1]) == (255, 128, 128)
    with pytest.raises(relprop.InputError, match="percentile"):
        viz.heatmap(r, clip=0)


def test_all_zero_relevance_is_white() -> None:
    assert (viz.heatmap(np.zeros((3, 6, 6))) == 255).all()


def test_channels_are_summed() -> None:
    r = torch.randn(3, 8, 9)
    assert np.array_equal(viz.heatmap(r), viz.heatmap(r.sum(0)))
    assert viz.to_maps(r).shape == (1, 8, 9)


def test_tensor_and_array_inputs_agree() -> None:
    r = torch.randn(3, 8, 8)
    assert np.array_equal(viz.heatmap(r), viz.heatmap(r.numpy()))
    assert viz.heatmap(r.to(torch.bfloat16)).shape == (8, 8, 3)
    assert viz.heatmap(r.double().requires_grad_()).shape == (8, 8, 3)


def test_batch_is_a_row_or_a_grid() -> None:
    r = torch.randn(5, 3, 8, 10)
    row = viz.heatmap(r)
    assert row.shape == (8 + 2 * 2, 5 * 10 + 6 * 2, 3)
    grid = viz.heatmap(r, ncols=2, pad=1)
    assert grid.shape == (3 * 8 + 4, 2 * 10 + 3, 3)
    # each tile is coloured on its own scale, like a single map
    assert np.array_equal(row[2:10, 2:12], viz.heatmap(r[0]))
    assert np.array_equal(row[2:10, 14:24], viz.heatmap(r[1]))
    # a 3-D input is (C, H, W) unless batch=True says (B, H, W)
    assert viz.heatmap(r[:, 0]).shape == (8, 10, 3)
    assert viz.heatmap(r[:, 0], batch=True).shape == row.shape


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(5), "cannot be drawn"),
        (np.zeros((1, 1, 1, 2, 2)), "cannot be drawn"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "NaN or Inf"),
        (np.array([["a", "b"]]), "numeric"),
        ("relevance", "numeric"),
        (np.ones((2, 2), dtype=complex), "numeric"),
    ],
)
def test_bad_relevance_raises_input_error(bad: object, match: str) -> None:
    with pytest.raises(relprop.InputError, match=match) as info:
        viz.heatmap(bad)
    assert isinstance(info.value, ValueError)


def test_overlay_shows_the_image_where_relevance_is_zero() -> None:
    image = torch.rand(3, 6, 7)
    r = torch.zeros(3, 6, 7)
    r[:, 0, 0] = 1.0
    r[:, 5, 6] = -1.0
    out = viz.overlay(r, image, alpha=1.0, gray=False)
    expected = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(out[1:5], expected[1:5])
    assert tuple(out[0, 0]) == RED and tuple(out[5, 6]) == BLUE
    half = viz.overlay(r, image, alpha=0.5, gray=False).astype(int)
    assert half[0, 0, 0] > half[0, 0, 2] and half[5, 6, 2] > half[5, 6, 0]
    assert viz.overlay(r, image).shape == (6, 7, 3)


def test_overlay_accepts_layouts_and_broadcasts_one_image() -> None:
    r = torch.randn(4, 3, 8, 8)
    chw = torch.rand(3, 8, 8)
    hwc_uint8 = (chw.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    a = viz.overlay(r, chw)
    b = viz.overlay(r, hwc_uint8)
    assert a.shape == viz.heatmap(r).shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # normalized inputs (outside [0, 1]) are min-max scaled, not clipped
    assert viz.overlay(r, chw * 4 - 2).shape == a.shape
    assert viz.overlay(r[0, 0], chw[0]).shape == (8, 8, 3)


@pytest.mark.parametrize(
    "image, match",
    [
        (torch.rand(3, 9, 8), "does not match"),
        (torch.rand(2, 3, 8, 8), "2 images for 4"),
        (torch.rand(8), "cannot be drawn"),
    ],
)
def test_overlay_bad_image_raises_input_error(image: torch.Tensor, match: str) -> None:
    with pytest.raises(relprop.InputError, match=match):
        viz.overlay(torch.randn(4, 3, 8, 8), image)


def test_overlay_bad_alpha() -> None:
    with pytest.raises(relprop.InputError, match="alpha"):
        viz.overlay(torch.randn(8, 8), torch.rand(3, 8, 8), alpha=1.5)


def test_save_writes_a_readable_png(tmp_path) -> None:
    r = torch.zeros(3, 3, 8, 8)
    r[:, :, :4] = 1.0  # top half positive
    r[:, :, 4:] = -1.0  # bottom half negative
    path = tmp_path / "heat.png"
    pic = viz.save(path, r)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        scale = 16  # tiles at least 128 pixels
        pad = 2 * scale
        assert img.size == (3 * 8 * scale + 4 * pad, 8 * scale + 2 * pad)
        assert img.size == pic.size
        px = np.asarray(img)
    top, bottom = px[pad + 10, pad + 10], px[pad + 8 * scale - 10, pad + 10]
    assert tuple(top) == RED and tuple(bottom) == BLUE


def test_save_with_image_and_titles(tmp_path) -> None:
    r, x = torch.randn(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    path = tmp_path / "over.png"
    viz.save(path, r, x, titles=["a", "b"], scale=4)
    with Image.open(path) as img:
        pad = 8
        assert img.size == (2 * 64 + 3 * pad, 16 + 2 * 64 + 3 * pad)
    viz.save(tmp_path / "bare.png", r, x, overlay=False, scale=1)
    with Image.open(tmp_path / "bare.png") as img:
        bare = np.asarray(img)
    assert np.array_equal(bare[2 + 16 + 2 : -2, 2:18], viz.heatmap(r[0]))
    with pytest.raises(relprop.InputError, match="titles"):
        viz.save(tmp_path / "t.png", r, x, titles=["only one"])
    viz.save(tmp_path / "one.png", r[0])
    with Image.open(tmp_path / "one.png") as img:
        assert img.size == (128, 128)


def test_no_pyplot_state_leaks(tmp_path) -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    r = torch.randn(2, 3, 8, 8)
    viz.heatmap(r)
    viz.overlay(r, torch.rand(2, 3, 8, 8))
    viz.save(tmp_path / "x.png", r, torch.rand(2, 3, 8, 8), titles=["a", "b"])
    assert plt.get_fignums() == before


# -- percentile clipping and layouts -----------------------------------------------------------


def _ramp_with_outlier() -> np.ndarray:
    """3×67 = 201 pixels: 0, 1, ..., 199 and one outlier 1000 (in place of 200)."""
    r = np.arange(201, dtype=float).reshape(3, 67)
    r[-1, -1] = 1000.0
    return r


def test_default_clip_is_the_99_5th_percentile_by_hand() -> None:
    r = _ramp_with_outlier()
    # sorted |R| = 0..199, 1000; numpy's linear percentile sits at index 0.995 * (201 - 1) = 199 -> 199
    assert viz.DEFAULT_CLIP == 99.5
    limit = 199.0
    img = viz.heatmap(r)
    at_100 = divmod(100, 67)  # the pixel of value 100
    fade = round(255 * (1 - 100 / limit))  # 127
    assert tuple(img[at_100]) == (255, fade, fade)
    assert tuple(img[divmod(199, 67)]) == RED and tuple(img[-1, -1]) == RED  # 199 and the outlier saturate
    assert np.array_equal(img, viz.heatmap(r, clip=99.5))
    # clip=None and clip=100: the old max|R| limit, where the outlier washes 100 out to a pale pink
    old = viz.heatmap(r, clip=None)
    assert np.array_equal(old, viz.heatmap(r, clip=100))
    pale = int(np.round(255 * (1 - 100 / 1000)))
    assert tuple(old[at_100]) == (255, pale, pale)
    # per sample: a map ten times larger, or with its outlier elsewhere, gets its own limit
    batch = viz.heatmap(np.stack([r, 10 * r, -r]), batch=True, pad=0)
    assert np.array_equal(batch[:, :67], img) and np.array_equal(batch[:, 67:134], img)
    assert np.array_equal(batch[:, 134:], img[..., ::-1])  # negative: blue, the same scale


def test_save_layouts_stack_panels_per_sample(tmp_path) -> None:
    r, x = torch.randn(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    pad = 4  # 2 * scale
    for layout, rows in [("heatmap", 1), ("overlay", 1), ("side-by-side", 2), ("image+heatmap+overlay", 3)]:
        pic = viz.save(tmp_path / f"{layout}.png", r, x, layout=layout, scale=2)
        assert pic.size == (3 * 32 + 4 * pad, rows * 32 + (rows + 1) * pad), layout
    px = np.asarray(viz.save(tmp_path / "h.png", r, x, layout="heatmap", scale=1))
    assert np.array_equal(px[2:18, 2:18], viz.heatmap(r[0]))
    # the old switch is a layout: overlay=False is "side-by-side", the default with an image "image+overlay"
    a = np.asarray(viz.save(tmp_path / "a.png", r, x, overlay=False))
    assert np.array_equal(a, np.asarray(viz.save(tmp_path / "b.png", r, x, layout="side-by-side")))
    a = np.asarray(viz.save(tmp_path / "c.png", r, x))
    assert np.array_equal(a, np.asarray(viz.save(tmp_path / "d.png", r, x, layout="image+overlay")))
    with pytest.raises(relprop.InputError, match="unknown layout"):
        viz.save(tmp_path / "e.png", r, x, layout="image+banana")
    with pytest.raises(relprop.InputError, match="needs the image"):
        viz.save(tmp_path / "f.png", r, layout="overlay")


def test_figure_is_one_image_and_its_heatmap(tmp_path) -> None:
    r, x = torch.randn(3, 32, 32), torch.rand(3, 32, 32)
    pic = viz.figure(r, x, legend=False)  # side-by-side, upscaled to 224 (x7), 8-pixel gaps
    band = viz._band(1, [], viz._font(14)).height
    assert pic.size == (2 * (224 + 8) + 8, band + 224 + 2)
    px = np.asarray(pic)
    heat = viz.heatmap(r).repeat(7, axis=0).repeat(7, axis=1)
    assert np.array_equal(px[band + 1 : band + 225, 8 + 232 : 8 + 232 + 224], heat)
    image = np.round(x.permute(1, 2, 0).double().numpy() * 255).astype(np.uint8).repeat(7, axis=0).repeat(7, axis=1)
    assert np.array_equal(px[band + 1 : band + 225, 8 : 8 + 224], image)
    for layout, panels in [("heatmap", 1), ("overlay", 1), ("image+heatmap+overlay", 3)]:
        assert viz.figure(r, x, layout=layout, legend=False).width == panels * 232 + 8
    titled = viz.figure(r, x, title="cat.png: Egyptian cat (36%)")
    assert titled.width == pic.width and titled.height > pic.height + 40  # a title above, the colour bar below
    assert viz.figure(r, layout="heatmap", legend=False, size=64).size == (64 + 16, band + 64 + 2)
    one = viz.save_one(tmp_path / "one.png", r[None], x, layout="overlay")
    with Image.open(tmp_path / "one.png") as img:
        assert img.size == one.size and np.array_equal(np.asarray(img), np.asarray(one))
    with pytest.raises(relprop.InputError, match="one sample"):
        viz.figure(torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    with pytest.raises(relprop.InputError, match="needs the image"):
        viz.figure(r, layout="side-by-side")


def test_table_has_a_row_per_sample(tmp_path) -> None:
    x = torch.rand(2, 3, 16, 16)
    cols = {"absLRP": torch.randn(2, 3, 16, 16), "LRP-ε": torch.randn(2, 3, 16, 16)}
    pic = viz.table(x, cols, scale=4, legend=False)
    header = viz._band(1, [], viz._font(14)).height
    assert pic.size == (3 * (64 + 4) + 4, header + 2 * (64 + 4))
    px = np.asarray(pic)
    tile = viz.heatmap(cols["absLRP"][1]).repeat(4, axis=0).repeat(4, axis=1)
    y = header + 68
    assert np.array_equal(px[y : y + 64, 4 + 68 : 4 + 68 + 64], tile)
    titled = viz.table(x, cols, layout={"absLRP": "overlay"}, row_titles=["a", "b"], scale=4)
    assert titled.width == pic.width and titled.height > pic.height + 2 * header
    with pytest.raises(relprop.InputError, match="row titles"):
        viz.table(x, cols, row_titles=["a"])
    with pytest.raises(relprop.InputError, match="column 'bad'"):
        viz.table(x, {**cols, "bad": torch.randn(3, 3, 16, 16)})
    with pytest.raises(relprop.InputError, match="'heatmap' or 'overlay'"):
        viz.table(x, cols, layout="side-by-side")
