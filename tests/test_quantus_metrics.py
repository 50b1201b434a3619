"""Quantus metrics (relprop.evaluation.quantus_metrics): explain_func convention, ROAD/Focus/LLE runs and oracles."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import relprop
from relprop.evaluation import quantus_metrics as Q
from relprop.methods import constant_method, random_method
from relprop.metrics import Method

quantus = pytest.importorskip("quantus")

SETTINGS = {"ROAD": {"percentages": [25, 50, 75]}, "LocalLipschitzEstimate": {"nr_samples": 2}}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return relprop.models.load_digits_model("vgg")


@pytest.fixture(scope="module")
def graph(model: nn.Module) -> relprop.Graph:
    """One absLRP trace shared by the tests (tracing dominates their run time)."""
    return relprop.trace(model)


@pytest.fixture(scope="module")
def lrp(graph: relprop.Graph) -> Method:
    """relprop absLRP as a method."""
    return lambda model, x, target: graph.explain(x, target)


@pytest.fixture(scope="module")
def data() -> TensorDataset:
    """8 test images, two of each of the labels 0..3, in an interleaved order."""
    x, y = relprop.models.load_digits_test().tensors
    idx = [int(i) for c in range(4) for i in (y == c).nonzero().flatten()[:2]]
    order = [idx[i] for i in (0, 2, 4, 6, 1, 3, 5, 7)]
    return TensorDataset(x[order], y[order])


def fixed_method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Input-independent, non-uniform map: its explanation never changes, so LLE must be 0."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(x.shape[1:], generator=g).expand(x.shape).to(x)


def wrong_shape_method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return torch.ones(x.shape[0], 5)


@pytest.fixture(scope="module")
def result(model: nn.Module, data: TensorDataset, lrp: Method) -> Q.QuantusResult:
    methods = {
        "absLRP": lrp,
        "random": random_method(0),
        "fixed": fixed_method,
        "constant": constant_method(),
        "bad_shape": wrong_shape_method,
    }
    return Q.evaluate_quantus(model, methods, data, batch_size=8, seed=0, progress=False, metric_kwargs=SETTINGS)


# ------------------------------------------------------------ explain_func


def test_explain_func_matches_relprop(model: nn.Module, data: TensorDataset, graph: relprop.Graph, lrp: Method) -> None:
    x, y = data.tensors[0][:4], data.tensors[1][:4]
    want = graph.explain(x, y).detach().numpy()
    # Quantus passes float32 NumPy arrays, channel first, and int64 NumPy targets; default method: absLRP
    got = Q.explain_func(model, x.numpy(), y.numpy(), device="cpu")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    pix = Q.explain_func(model, x, y, method=lrp, channels="sum")
    assert pix.shape == (4, 1, 32, 32)
    np.testing.assert_allclose(pix, want.sum(1, keepdims=True), rtol=1e-4, atol=1e-5)
    spread = Q.as_explain_func(lrp, channels="sum_broadcast")(model, x.numpy(), y.numpy())
    assert spread.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(spread, np.broadcast_to(want.sum(1, keepdims=True), spread.shape), rtol=1e-4, atol=1e-5)
    # Quantus' own attribution checks accept the output
    quantus.helpers.asserts.assert_attributions(x_batch=x.numpy(), a_batch=pix)


def test_explain_func_bad_arguments(model: nn.Module, data: TensorDataset) -> None:
    x, y = data.tensors[0][:2].numpy(), data.tensors[1][:2].numpy()
    with pytest.raises(relprop.InputError, match="method"):
        Q.explain_func(model, x, y, method="Saliency")
    with pytest.raises(relprop.InputError, match="unexpected explain_func arguments"):
        Q.explain_func(model, x, y, xai_lib="captum")
    with pytest.raises(relprop.InputError, match="returned"):
        Q.explain_func(model, x, y, method=wrong_shape_method)


def test_quantus_metric_with_our_explain_func(model: nn.Module, data: TensorDataset, lrp: Method) -> None:
    x, y = data.tensors[0][:4].numpy(), data.tensors[1][:4].numpy()
    metric = quantus.LocalLipschitzEstimate(nr_samples=2, disable_warnings=True)
    scores = np.asarray(metric(model=model, x_batch=x, y_batch=y, explain_func=Q.as_explain_func(lrp)))
    assert scores.shape == (4,) and np.isfinite(scores).all() and (scores > 0).all()
    fixed = metric(model=model, x_batch=x, y_batch=y, explain_func=Q.as_explain_func(fixed_method))
    np.testing.assert_allclose(fixed, 0.0, atol=1e-12)


# ------------------------------------------------------------ ROAD and Focus helpers


def test_pixel_imputation_replaces_top_pixels() -> None:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(3, 6, 6))
    a = np.broadcast_to(rng.normal(size=(1, 6, 6)), arr.shape).reshape(-1)  # a pixel map spread over channels
    k = 3 * 9  # ROAD's count of entries for 25 % of 36 pixels
    ranked = np.argsort(-a)[:k]
    np.random.seed(0)
    out = Q.pixel_imputation(arr, ranked, noise=0.01)
    changed = (out != arr).any(0)
    top = np.argsort(-a[:36])[:9]
    assert changed.sum() == 9 and set(np.flatnonzero(changed)) == set(top)
    assert (out != arr)[:, changed].all()  # every channel of those pixels
    # ties between pixels (ROAD's entries of one pixel need not be adjacent): still 25 % of the pixels
    tied = np.arange(108) % 36 < 20  # pixels 0..19 tie at 1 in every channel, the rest at 0
    ranked = np.argsort(-tied.astype(float), kind="stable")[:k]  # 27 entries naming 20 distinct pixels
    out = Q.pixel_imputation(arr, ranked, noise=0.01)
    changed = (out != arr).any(0).reshape(-1)
    assert changed.sum() == 9 and changed[:20].sum() == 9


def test_focus_mosaics_layout() -> None:
    x = torch.arange(8, dtype=torch.float32).reshape(8, 1, 1, 1).expand(8, 2, 4, 4).contiguous()
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mos, targets, pos = Q.focus_mosaics(x, y, np.random.default_rng(0))
    assert mos.shape == (2, 2, 4, 4) and len(pos) == 2
    for m, t, p in zip(mos, targets, pos):
        quads = [m[0, :2, :2], m[0, :2, 2:], m[0, 2:, :2], m[0, 2:, 2:]]
        labels = [int(y[int(q[0, 0])]) for q in quads]  # image i is constant i
        assert p == tuple(int(c == int(t)) for c in labels) and sum(p) == 2
    # no second image of a label: one target quadrant;  a single label: no mosaic
    _, _, pos = Q.focus_mosaics(x[:4], y[:4], np.random.default_rng(0))
    assert sum(pos[0]) == 1
    mos, _, pos = Q.focus_mosaics(x[:4], torch.zeros(4, dtype=torch.long), np.random.default_rng(0))
    assert mos.shape[0] == 0 and pos == []


# ------------------------------------------------------------ evaluate_quantus


def test_table_rows_and_finite(result: Q.QuantusResult) -> None:
    rows = result.table()
    assert [(r["method"], r["metric"]) for r in rows] == [
        (m, k) for m in ("absLRP", "random", "fixed", "constant", "bad_shape") for k in Q.QUANTUS_METRICS
    ]
    for m in ("absLRP", "random", "fixed"):
        assert result[m]["ROAD"].shape == (8,) and result[m]["LocalLipschitzEstimate"].shape == (8,)
        assert result[m]["Focus"].shape == (2,)
        for v in result[m].values():
            assert torch.isfinite(v).all()
    text = str(rows)
    assert "absLRP" in text and "Focus" in text and len(text.splitlines()) == 6
    assert result.to_rows()[0].keys() >= {"method", "metric", "mean", "ci95", "n", "higher_is_better"}


def test_oracles(result: Q.QuantusResult) -> None:
    # an explanation that never changes has Lipschitz estimate 0; random noise does not
    assert torch.equal(result["fixed"]["LocalLipschitzEstimate"], torch.zeros(8, dtype=torch.float64))
    assert (result["random"]["LocalLipschitzEstimate"] > 0.5).all()
    # ROAD: per-image score is the mean of 0/1 outcomes over the 3 percentages; its mean is the curve's mean
    for m in ("absLRP", "random"):
        v = result[m]["ROAD"]
        assert torch.allclose(v * 3, (v * 3).round()) and ((v >= 0) & (v <= 1)).all()
        assert result.road_curves[m].shape == (3,)
        assert float(v.mean()) == pytest.approx(float(result.road_curves[m].mean()))
    # removing the most relevant absLRP pixels destroys the prediction sooner than removing random ones
    assert result["absLRP"]["ROAD"].mean() < result["random"]["ROAD"].mean()
    # random maps put about half their positive relevance on the 2 target quadrants; absLRP more
    assert result["random"]["Focus"].mean() == pytest.approx(0.5, abs=0.1)
    assert result["absLRP"]["Focus"].mean() > 0.6


def test_failures_recorded(result: Q.QuantusResult) -> None:
    bad = [f for f in result.failures if f[0] == "bad_shape"]
    assert sorted(f[1] for f in bad) == sorted(Q.QUANTUS_METRICS)
    assert all("returned (" in f[2] and "InputError" in f[2] for f in bad)
    assert all(result["bad_shape"][k].numel() == 0 for k in Q.QUANTUS_METRICS)
    # Quantus refuses a batch of identical attributions (documented): recorded, not dropped
    const = [f for f in result.failures if f[0] == "constant"]
    assert len(const) == 3 and all("AssertionError" in f[2] for f in const)
    assert {f[0] for f in result.failures} == {"bad_shape", "constant"}
    assert [r["n"] for r in result.table() if r["method"] == "bad_shape"] == [0, 0, 0]


def test_focus_oracle_mask(model: nn.Module, data: TensorDataset, capsys: pytest.CaptureFixture[str]) -> None:
    """A method that returns exactly the target-label quadrants has Focus 1 (and Quantus prints nothing)."""
    x, y = data.tensors
    small = F.avg_pool2d(x, 2)

    def oracle(model: nn.Module, xm: Tensor, target: Tensor) -> Tensor:
        h = xm.shape[2] // 2
        out = torch.zeros_like(xm)
        for i in range(xm.shape[0]):
            for r in range(2):
                for c in range(2):
                    q = xm[i, :, r * h : (r + 1) * h, c * h : (c + 1) * h]
                    j = int(((small - q) ** 2).flatten(1).sum(1).argmin())
                    out[i, :, r * h : (r + 1) * h, c * h : (c + 1) * h] = float(y[j] == target[i])
        return out

    # batches of 4 (labels 0..3 twice): the second batch finds same-label partners among the first's images
    res = Q.evaluate_quantus(model, {"oracle": oracle}, data, metrics="Focus", batch_size=4, progress=False)
    assert res.failures == [] and res["oracle"]["Focus"].shape == (2,)
    assert torch.allclose(res["oracle"]["Focus"], torch.ones(2, dtype=torch.float64), atol=1e-6)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_deterministic_and_independent_of_other_methods(
    model: nn.Module, data: TensorDataset, result: Q.QuantusResult, lrp: Method
) -> None:
    state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    again = Q.evaluate_quantus(
        model, {"absLRP": lrp, "random": random_method(0)}, data, batch_size=8, seed=0, progress=False,
        metric_kwargs=SETTINGS,
    )  # fmt: skip
    assert np.array_equal(np.random.get_state()[1], state)  # the global generators are restored
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    for m in ("absLRP", "random"):
        for k in Q.QUANTUS_METRICS:
            assert torch.equal(again[m][k], result[m][k]), (m, k)
    lle = {}
    for seed in (0, 1):  # one metric alone: the same perturbations as in the full run for the same seed
        res = Q.evaluate_quantus(
            model, {"absLRP": lrp}, data, metrics="LocalLipschitzEstimate", batch_size=8, seed=seed,
            progress=False, metric_kwargs=SETTINGS,
        )  # fmt: skip
        lle[seed] = res["absLRP"]["LocalLipschitzEstimate"]
    assert torch.equal(lle[0], result["absLRP"]["LocalLipschitzEstimate"])
    assert not torch.equal(lle[1], lle[0])


# ------------------------------------------------------------ bad input


def test_unknown_metric(model: nn.Module, data: TensorDataset) -> None:
    with pytest.raises(relprop.InputError, match="ROAD, Focus, LocalLipschitzEstimate"):
        Q.evaluate_quantus(model, {"r": random_method()}, data, metrics=["ROAD", "Faithfulness"], progress=False)


def test_bad_metric_kwargs(model: nn.Module, data: TensorDataset) -> None:
    with pytest.raises(relprop.InputError, match="invalid Quantus arguments for ROAD"):
        Q.evaluate_quantus(model, {"r": random_method()}, data, metric_kwargs={"ROAD": {"percentage": [5]}})
    with pytest.raises(relprop.InputError, match="unknown metric"):
        Q.evaluate_quantus(model, {"r": random_method()}, data, metric_kwargs={"IROF": {}})


def test_focus_needs_four_images(model: nn.Module, data: TensorDataset) -> None:
    with pytest.raises(relprop.InputError, match="Focus needs .*4 images"):
        Q.evaluate_quantus(model, {"r": random_method()}, data, metrics="Focus", max_images=3, progress=False)
    with pytest.raises(relprop.InputError, match="Focus needs"):
        Q.evaluate_quantus(model, {"r": random_method()}, data, metrics="Focus", batch_size=2, progress=False)
    one_label = TensorDataset(data.tensors[0][:4], torch.zeros(4, dtype=torch.long))
    with pytest.raises(relprop.InputError, match="two labels"):
        Q.evaluate_quantus(model, {"r": random_method()}, one_label, metrics="Focus", progress=False)


def test_missing_quantus(model: nn.Module, data: TensorDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "quantus", None)
    with pytest.raises(relprop.InputError, match=r"pip install 'relprop\[quantus\]'"):
        Q.evaluate_quantus(model, {"r": random_method()}, data, metrics="ROAD", progress=False)
