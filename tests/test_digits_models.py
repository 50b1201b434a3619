"""The shipped digits models (relprop.models): load, accuracy, explainable, sensible maps."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

import relprop
from relprop.apps import models as M

NAMES = list(M.DIGITS_MODELS)


@pytest.fixture(scope="module")
def test_split():
    x, y = M.load_digits_test().tensors
    raw = M.load_digits_test(raw=True).tensors[0]
    return x, y, raw


@pytest.fixture(scope="module", params=NAMES)
def loaded(request):
    return request.param, M.load_digits_model(request.param)


def test_test_split_shape(test_split):
    x, y, raw = test_split
    assert x.shape == (360, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (360,) and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(10))
    assert torch.bincount(y).min() >= 35  # stratified
    assert raw.shape == (360, 32, 32) and 0 <= raw.min() and raw.max() <= 1
    assert abs(x.mean().item()) < 0.15 and abs(x.std().item() - 1) < 0.15


def test_unknown_model_name():
    with pytest.raises(relprop.InputError, match="vgg, resnet, vit"):
        M.load_digits_model("alexnet")


def test_reaches_stated_accuracy(loaded, test_split):
    name, model = loaded
    x, y, _ = test_split
    assert not model.training
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    stated = M.digits_accuracy(name)
    assert stated >= 0.95
    assert acc >= stated - 0.005, f"{name}: {acc:.4f} < stated {stated:.4f}"


@pytest.mark.parametrize("rules", [relprop.rules.AbsLRP, relprop.rules.Epsilon])
def test_explained_by_relprop(loaded, test_split, rules):
    name, model = loaded
    x, y, _ = test_split
    R = relprop.trace(model, rules()).explain(x[:4], y[:4])
    R = torch.as_tensor(R)
    assert R.shape == x[:4].shape
    assert torch.isfinite(R).all()
    assert R.abs().sum() > 0


def test_abslrp_relevance_on_strokes(loaded, test_split):
    """Positive absLRP relevance is denser on the digit's strokes than on the background.

    Concentration = (share of positive relevance on stroke pixels) / (share of
    pixels that are strokes); 1 means no preference.  A map spread evenly, or
    one put on the background, fails.  Measured medians (30 images): vgg 2.2,
    resnet 1.7, vit 2.3; share of images above 1: 0.97, 0.9, 0.93.
    """
    name, model = loaded
    x, y, raw = test_split
    idx = torch.arange(0, 360, 12)  # 30 images covering all classes
    R = torch.as_tensor(relprop.trace(model).explain(x[idx], y[idx]))
    pos = R.sum(1).clamp(min=0).flatten(1)
    strokes = (raw[idx] > 0.5).flatten(1).float()
    share = (pos * strokes).sum(1) / pos.sum(1).clamp(min=1e-12)
    area = strokes.mean(1)
    concentration = share / area
    assert concentration.median() > 1.3, f"{name}: median concentration {concentration.median():.2f}"
    assert (concentration > 1).float().mean() >= 0.7, f"{name}: {concentration.tolist()}"


def test_recognises_half_resolution_mosaics(loaded, test_split):
    """The GAE mosaics stay recognisable: the prediction is one of the four quadrants' digits.

    A uniformly random guess gets 0.4.  The rate is the one recorded in
    digits_models.json (measured by examples/train_digits.py on the same mosaics).
    """
    name, model = loaded
    x, y, _ = test_split
    mosaics, labels = M.digit_mosaics(x, y, 500)
    assert mosaics.shape == (500, *x.shape[1:])
    assert (labels[:, :, None] != labels[:, None, :]).sum() == 500 * 12  # four different digits
    with torch.no_grad():
        rate = (labels == model(mosaics).argmax(1, keepdim=True)).any(1).float().mean().item()
    assert rate >= 0.75, f"{name}: {rate:.3f} of the mosaics recognised"
    meta = json.loads(resources.files("relprop.data").joinpath(M.META_FILE).read_text())
    recorded = meta["models"][name]["mosaic_recognition"]
    assert abs(rate - recorded) <= 0.01, f"{name}: {rate:.3f}, recorded {recorded}"
