"""relprop.evaluation.comparison and ``relprop evaluate``: the GAE comparison across methods and models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch import nn
from torch.utils.data import Subset, TensorDataset

import relprop
from relprop import models
from relprop.apps import cli
from relprop.evaluation import comparison

METHODS = ["absLRP", "constant", "random"]


@pytest.fixture(scope="module")
def digits() -> TensorDataset:
    return models.load_digits_test()


@pytest.fixture(scope="module")
def small_run(digits: TensorDataset) -> comparison.Comparison:
    nets = {"vgg": models.load_digits_model("vgg")}
    return comparison.compare(nets, digits, METHODS, steps=3, max_images=32, progress=False)


def test_rows_agree_with_the_gae_result(small_run: comparison.Comparison) -> None:
    rows = small_run.rows()
    assert [(r["model"], r["method"]) for r in rows] == [("vgg", m) for m in METHODS]
    res = small_run.gae["vgg"]
    for r in rows:
        v = res[r["method"]]["gae"].double().numpy()
        assert r["n"] == len(v) == 8  # one positive image per group of four
        assert r["gae"] == pytest.approx(v.mean())
        # 95% t-interval, computed here from SciPy directly
        assert r["gae_ci95"] == pytest.approx(stats.t.ppf(0.975, 7) * v.std(ddof=1) / np.sqrt(8), nan_ok=True)
        assert r["failed_batches"] == 0
    by = {r["method"]: r for r in rows}
    assert by["absLRP"]["p_vs_absLRP"] is None
    # constant and random maps get GAE 0 (LC_R = -1 for a map that never changes; noise is inconsistent)
    assert by["constant"]["gae"] == 0 and by["random"]["gae"] < 0.01
    a, b = res["absLRP"]["gae"].numpy(), res["constant"]["gae"].numpy()
    assert by["constant"]["p_vs_absLRP"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert by["absLRP"]["gae"] > 0.02


def test_text_csv_json_and_plot(small_run: comparison.Comparison, tmp_path: Path) -> None:
    text = str(small_run)
    assert "model vgg" in text and "absLRP" in text and "p vs absLRP" in text
    small_run.to_csv(tmp_path / "g.csv")
    with (tmp_path / "g.csv").open() as f:
        got = list(csv.DictReader(f))
    assert [r["method"] for r in got] == METHODS
    assert float(got[0]["gae"]) == pytest.approx(small_run.rows()[0]["gae"])
    small_run.to_json(tmp_path / "g.json")
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["reference"] == "absLRP" and len(doc["gae"]) == 3 and doc["failures"] == []
    small_run.plot(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.width > 300


def test_deterministic_for_a_seed(digits: TensorDataset) -> None:
    nets = {"resnet": models.load_digits_model("resnet")}
    run = [
        comparison.compare(nets, digits, ["absLRP", "random"], steps=2, max_images=16, progress=False) for _ in range(2)
    ]
    for m in ("absLRP", "random"):
        assert torch.equal(run[0].gae["resnet"][m]["gae"], run[1].gae["resnet"][m]["gae"])


def test_bad_arguments(digits: TensorDataset) -> None:
    nets = {"vgg": models.load_digits_model("vgg")}
    with pytest.raises(relprop.InputError, match="no models"):
        comparison.compare({}, digits)
    with pytest.raises(relprop.InputError, match="max_images"):
        comparison.compare(nets, digits, ["absLRP"], max_images=3)
    with pytest.raises(relprop.InputError, match="no data set for model"):
        comparison.compare(nets, {"resnet": digits}, ["absLRP"])
    with pytest.raises(relprop.InputError, match="multiple of 4"):
        comparison.compare(nets, digits, ["absLRP"], batch_size=6, max_images=8, progress=False)
    with pytest.raises(relprop.InputError, match="at least 4 images"):
        comparison.compare(nets, Subset(digits, range(3)), ["absLRP"], progress=False)
    bad = TensorDataset(digits.tensors[0][:8], torch.full((8,), 10))
    with pytest.raises(relprop.InputError, match="label 10 of sample 0"):
        comparison.compare(nets, bad, ["absLRP"], progress=False)


def test_gae_options_reach_gae_and_are_recorded(digits: TensorDataset, small_run: comparison.Comparison) -> None:
    """Oracle: GAE run directly with the same options on the same images and methods."""
    from relprop import methods
    from relprop.evaluation import metrics

    net = models.load_digits_model("vgg")
    options = dict(granularity="pixel", quadrant_classes="predicted", grouping="authors")
    names = ["absLRP", "constant"]
    run = comparison.compare({"vgg": net}, digits, names, steps=3, max_images=32, progress=False, **options)
    assert run.settings == dict(steps=3, seed=0, batch_size=16, max_images=32, **options)
    assert small_run.settings["granularity"] == "feature" and small_run.settings["quadrant_classes"] == "label"
    direct = metrics.GAE(steps=3, seed=0, **options).evaluate(
        net, {"absLRP": methods.relprop_method(variant="resnet"), "constant": methods.constant_method()},
        Subset(digits, range(32)), 16, progress=False,
    )  # fmt: skip
    for m in ("absLRP", "constant"):
        for key in metrics.SCORES:
            assert torch.equal(run.gae["vgg"][m][key], direct[m][key]), (m, key)
    assert not torch.equal(run.gae["vgg"]["absLRP"]["lc"], small_run.gae["vgg"]["absLRP"]["lc"])
    assert "GAE: steps 3, seed 0, batch size 16, granularity pixel, quadrant classes predicted" in str(run)
    with pytest.raises(relprop.InputError, match="granularity"):
        comparison.compare({"vgg": net}, digits, ["constant"], max_images=8, granularity="voxel")


def test_misclassified_positives_make_label_based_c_unbounded(digits: TensorDataset) -> None:
    """A group whose labels are all wrong: its positive is misclassified, so its label-based
    score map exceeds 1 (s[label] is small); with predicted classes C stays <= 1."""
    x, y = digits.tensors[0][:8], digits.tensors[1][:8].clone()
    y[:4] = (y[:4] + 1) % 10
    wrong = TensorDataset(x, y)
    nets = {"vgg": models.load_digits_model("vgg")}
    label = comparison.compare(nets, wrong, ["constant", "absLRP"], steps=2, progress=False)
    count, largest = label.unbounded_c()["vgg"]
    c = label.gae["vgg"]["constant"]["c"]
    assert count == 1 and c[0] > 1 and c[1] <= 1 and largest >= float(c[0])
    predicted = comparison.compare(nets, wrong, ["constant"], steps=2, progress=False, quadrant_classes="predicted")
    assert predicted.unbounded_c() == {} and (predicted.gae["vgg"]["constant"]["c"] <= 1).all()


def _record_abslrp(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """maxpool_divide of every absLRP rule set traced from now on."""
    seen: list[bool] = []
    trace = relprop.trace

    def spy(model, rules=None, **kwargs):
        if isinstance(rules, relprop.rules.AbsLRP):
            seen.append(rules.maxpool_divide)
        return trace(model, rules=rules, **kwargs)

    monkeypatch.setattr(relprop, "trace", spy)
    return seen


def test_abslrp_variant_per_model(digits: TensorDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    nets = {"vgg": models.load_digits_model("vgg"), "resnet": models.load_digits_model("resnet")}
    seen = _record_abslrp(monkeypatch)
    names = ["absLRP", "absLRP (no maxpool division)", "absLRP (maxpool division)"]
    run = comparison.compare(nets, digits, names, steps=2, max_images=8, progress=False, abslrp_variant={"vgg": "vgg"})
    assert run.abslrp_variants == {"vgg": "vgg", "resnet": "resnet"}  # a model not named: AbsLRP()
    assert seen == [False, False, True, True, False, True]  # per model: absLRP, then the two named variants
    vgg = run.gae["vgg"]
    assert torch.equal(vgg["absLRP"]["gae"], vgg["absLRP (no maxpool division)"]["gae"])
    assert not torch.equal(vgg["absLRP"]["lc"], vgg["absLRP (maxpool division)"]["lc"])
    assert "model vgg" in str(run) and "absLRP: AbsLRP(maxpool_divide=False) (vgg)" in str(run)
    assert "absLRP: AbsLRP() (resnet)" in str(run)
    rows = [line for line in str(run).splitlines() if "±" in line]
    assert len({line.index("±") for line in rows}) == 1  # columns aligned for the long method names
    seen.clear()
    comparison.compare(nets, digits, ["absLRP"], steps=2, max_images=8, progress=False, abslrp_variant="vgg")
    assert seen == [False, False]


def test_bad_abslrp_variants(digits: TensorDataset) -> None:
    nets = {"vgg": models.load_digits_model("vgg")}
    for bad in ("alexnet", {"vgg": "densenet"}):
        with pytest.raises(relprop.InputError, match="unknown absLRP variant .* expected one of vgg, resnet"):
            comparison.compare(nets, digits, ["absLRP"], max_images=8, abslrp_variant=bad)
    with pytest.raises(relprop.InputError, match="names model.*vit.*not being evaluated"):
        comparison.compare(nets, digits, ["absLRP"], max_images=8, abslrp_variant={"vit": "vgg"})
    with pytest.raises(relprop.InputError, match="must be 'vgg', 'resnet', None or a mapping"):
        comparison.compare(nets, digits, ["absLRP"], max_images=8, abslrp_variant=3)


# -- the user's own images ------------------------------------------------------------------


def _folder(root: Path, sizes: list[tuple[int, int]], classes: int = 2, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.png")
    return root


def test_image_folder_rgb_gray_resize_normalize(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", [(20, 20)] * 6, mode="L")
    ds = comparison.image_folder(root)
    x, y = ds[0]
    assert x.shape == (3, 20, 20) and y == 0 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[0], x[1])  # grey images replicated to RGB
    g, _ = comparison.image_folder(root, size=8, channels=1)[0]
    assert g.shape == (1, 8, 8)
    n, _ = comparison.image_folder(root, mean=[0.5], std=[0.25])[0]
    assert torch.allclose(n, (x - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(relprop.InputError, match="even"):
        comparison.image_folder(root, size=7)
    with pytest.raises(relprop.InputError, match="channels"):
        comparison.image_folder(root, channels=2)
    with pytest.raises(relprop.InputError, match="std"):
        comparison.image_folder(root, std=[0.0])
    with pytest.raises(relprop.InputError, match="does not exist"):
        comparison.image_folder(tmp_path / "missing")


def test_image_folder_size_errors(tmp_path: Path) -> None:
    mixed = _folder(tmp_path / "mixed", [(20, 20), (22, 20)])
    with pytest.raises(relprop.InputError, match="differ in size.*--size"):
        comparison.image_folder(mixed)
    assert comparison.image_folder(mixed, size=16)[1][0].shape == (3, 16, 16)
    odd = _folder(tmp_path / "odd", [(21, 21)] * 4)
    with pytest.raises(relprop.InputError, match="21x21.*even"):
        comparison.image_folder(odd)


class GrayNet(nn.Module):
    """A small grayscale CNN for the user's-own-model path (2 classes, any even size)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_gray_net() -> nn.Module:
    torch.manual_seed(0)
    return GrayNet()


# -- the command ----------------------------------------------------------------------------


def test_evaluate_command_on_a_shipped_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ev"
    args = ["evaluate", "--model", "vgg", "--methods", "absLRP,constant", "--max-images", "16", "--steps", "2"]
    assert cli.main([*args, "--out-dir", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "model vgg" in text and "absLRP" in text and "constant" in text
    assert {p.name for p in out.iterdir()} == {"gae.csv", "gae.json", "gae.png"}
    doc = json.loads((out / "gae.json").read_text())
    assert [r["method"] for r in doc["gae"]] == ["absLRP", "constant"] and doc["gae"][0]["n"] == 4
    assert "absLRP on vgg: AbsLRP(maxpool_divide=False) (variant vgg)" in text  # the shipped VGG's own
    assert doc["abslrp_variants"] == {"vgg": "vgg"}
    assert doc["settings"]["quadrant_classes"] == "label" and doc["settings"]["max_images"] == 16
    assert cli.main([*args, "--out-dir", str(out), "--no-progress", "--quadrant-classes", "predicted"]) == 0
    assert json.loads((out / "gae.json").read_text())["settings"]["quadrant_classes"] == "predicted"


def test_evaluate_command_abslrp_variant(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_abslrp(monkeypatch)
    args = ["evaluate", "--model", "vgg", "--model", "resnet", "--methods", "absLRP", "--max-images", "8"]
    args += ["--steps", "2", "--out-dir", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "absLRP on vgg: AbsLRP(maxpool_divide=False) (variant vgg)" in text
    assert "absLRP on resnet: AbsLRP() (variant resnet)" in text
    assert seen == [False, True]
    seen.clear()
    assert cli.main([*args, "--abslrp-variant", "resnet"]) == 0
    assert "absLRP on vgg: AbsLRP() (variant resnet)" in capsys.readouterr().out and seen == [True, True]
    assert json.loads((tmp_path / "gae.json").read_text())["abslrp_variants"] == {"vgg": "resnet", "resnet": "resnet"}
    with pytest.raises(SystemExit):
        cli.main([*args, "--abslrp-variant", "alexnet"])
    err = capsys.readouterr().err
    assert "invalid choice: 'alexnet'" in err and "vgg" in err and "resnet" in err


def test_evaluate_command_on_your_own_grayscale_model(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "imgs", [(12, 12)] * 8, mode="L")
    spec = f"{Path(__file__).resolve()}:make_gray_net"
    args = ["evaluate", "--model", spec, "--data", str(root), "--channels", "1", "--methods", "absLRP,random"]
    args += ["--steps", "2", "--batch-size", "8", "--out-dir", str(tmp_path / "o"), "--no-progress"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "model make_gray_net" in text and "absLRP on make_gray_net: AbsLRP() (variant resnet)" in text
    rows = json.loads((tmp_path / "o" / "gae.json").read_text())["gae"]
    assert [r["n"] for r in rows] == [2, 2]


def test_evaluate_command_errors(tmp_path: Path, capsys) -> None:
    spec = f"{Path(__file__).resolve()}:make_gray_net"
    assert cli.main(["evaluate", "--model", spec, "--out-dir", str(tmp_path)]) == 1
    assert "--data is needed" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", "alexnet", "--out-dir", str(tmp_path)]) == 1
    assert "not a shipped model (vgg, resnet, vit)" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", f"{Path(__file__).resolve()}:nothing", "--out-dir", str(tmp_path)]) == 1
    assert "no attribute 'nothing'" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", "vgg", "--methods", "absLRP,Magic", "--out-dir", str(tmp_path)]) == 1
    assert "Magic" in capsys.readouterr().err
    args = ["evaluate", "--model", "vgg", "--batch-size", "6", "--methods", "absLRP", "--out-dir", str(tmp_path)]
    assert cli.main(args) == 1
    assert "multiple of 4" in capsys.readouterr().err
