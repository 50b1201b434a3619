"""The embedded example and the ``relprop`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import relprop
from relprop.apps import cli
from relprop.apps.example import CLASS_NAMES, Example, load_example, make_shapes


@pytest.fixture(scope="module")
def example() -> Example:
    return load_example()


def _object_ratio(R: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image: mean positive relevance per pixel on the shape / off the shape."""
    pos = R.sum(1).clamp(min=0)
    inside = (pos * masks).sum((1, 2)) / masks.sum((1, 2))
    outside = (pos * ~masks).sum((1, 2)) / (~masks).sum((1, 2))
    return inside / outside


# -- the embedded example ------------------------------------------------------------------


def test_example_loads(example: Example) -> None:
    n = len(example.images)
    assert 3 <= n <= 16
    assert example.images.shape == (n, 3, 32, 32) and example.images.dtype == torch.float32
    assert 0 <= example.images.min() and example.images.max() <= 1
    assert example.labels.shape == (n,) and example.masks.shape == (n, 32, 32)
    assert example.class_names == CLASS_NAMES
    assert not example.model.training
    assert set(example.labels.tolist()) == set(range(len(CLASS_NAMES)))
    params = sum(p.numel() for p in example.model.parameters())
    assert 1_000 <= params <= 100_000
    data = Path(relprop.__file__).parent / "data"
    assert sum(f.stat().st_size for f in data.glob("shapes*")) < 1_000_000


def test_example_model_classifies_its_images(example: Example) -> None:
    with torch.no_grad():
        predicted = example.model(example.images).argmax(1)
    assert (predicted == example.labels).all()


def test_example_model_accuracy_on_fresh_images(example: Example) -> None:
    """Measured 0.999 on the 2000 test images of the training script; here 500 others."""
    x, y, _ = make_shapes(500, seed=12345)
    with torch.no_grad():
        acc = (example.model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.97
    meta = json.loads((Path(relprop.__file__).parent / "data" / "shapes.json").read_text())
    assert meta["test_accuracy"] >= 0.97


def test_make_shapes_is_deterministic() -> None:
    a, b = make_shapes(8, seed=5), make_shapes(8, seed=5)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], make_shapes(8, seed=6)[0])
    x, _, m = a
    # the shape is brighter than its background: the evidence is where the mask is
    lum = x.mean(1)
    assert ((lum * m).sum((1, 2)) / m.sum((1, 2)) > (lum * ~m).sum((1, 2)) / (~m).sum((1, 2))).all()


def test_abslrp_puts_positive_relevance_on_the_object(example: Example) -> None:
    """Measured: shipped images 1.3-25 (pooled 5.1); 60 fresh ones median 11.6, 58/60 > 1.5.

    A randomly initialised ShapesNet gets a median of 3.8 on the same fresh images,
    and spatially shuffled relevance about 1, so this check can fail.
    """
    graph = relprop.trace(example.model, rules=relprop.rules.AbsLRP())
    R = graph.explain(example.images, example.labels)
    assert R.shape == example.images.shape
    ratio = _object_ratio(R, example.masks)
    assert (ratio > 1.0).all(), ratio

    x, y, m = make_shapes(60, seed=3)
    ratio = _object_ratio(graph.explain(x, y), m)
    assert ratio.median() > 6.0, ratio
    assert (ratio > 1.5).float().mean() >= 0.9, ratio


# -- the command ---------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        px = np.asarray(img.convert("RGB"))
    # red and blue both appear: the heatmap row is drawn
    red = (px[..., 0] > 200) & (px[..., 2] < 120)
    assert red.any()
    return img.size


@pytest.mark.slow
def test_default_run_explains_real_photos(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "EfficientNet-Lite0" in out and "relprop-example.png" in out
    assert "967 espresso" in out and "872 tripod" in out
    assert "absLRP" in out and "EpsilonPlusFlat" in out
    w, h = _png_size(tmp_path / "relprop-example.png")
    assert w > 3 * 224 and h > 6 * 224  # photo + two maps per row, six photos


def test_digits_run_explains_the_shipped_digits_models(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--model", "digits"]) == 0
    out = capsys.readouterr().out
    assert "AbsLRP" in out and "relprop-example.png" in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:5]}
    assert set(lines) == {"vgg", "resnet", "vit"}
    for name, cells in lines.items():
        assert float(cells[1]) == pytest.approx(relprop.models.digits_accuracy(name), abs=1e-3)
        # one test image per digit: the models get them right
        assert cells[2] == "0123456789"
        # positive relevance concentrates on the strokes (about 0.3 of each image)
        assert float(cells[3]) > 0.45, cells
    w, h = _png_size(tmp_path / "relprop-example.png")
    # 10 columns of 128-pixel tiles after a label margin; inputs + 3 model rows, a caption band
    assert 10 * 128 + 11 * 8 < w < 10 * 128 + 11 * 8 + 100 and h == 16 + 4 * 128 + 5 * 8


def test_example_subcommand_equals_the_default(tmp_path, capsys) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert cli.main(["--model", "vgg", "--out", str(a)]) == 0
    assert cli.main(["example", "--model", "vgg", "--out", str(b)]) == 0
    with Image.open(a) as ia, Image.open(b) as ib:
        assert np.array_equal(np.asarray(ia), np.asarray(ib))
        assert ia.size[1] == 16 + 2 * 128 + 3 * 8  # inputs and one model row


def test_shapes_example(tmp_path, capsys) -> None:
    assert cli.main(["--model", "shapes", "--out", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "predicted" in out and "6/6 predicted correctly" in out
    w, h = _png_size(tmp_path / "s.png")
    # 6 columns of 128-pixel tiles, two rows (inputs, overlays), a caption band
    assert w == 6 * 128 + 7 * 8 and h == 16 + 2 * 128 + 3 * 8


@pytest.mark.parametrize("rules", cli.RULES)
def test_every_rule_set_runs(rules: str, tmp_path, capsys) -> None:
    path = tmp_path / "h.png"
    assert cli.main(["example", "--model", "shapes", "--rules", rules, "--no-overlay", "--out", str(path)]) == 0
    _png_size(path)


def test_rules_come_from_the_registry(tmp_path, capsys) -> None:
    from relprop.rules import registry

    assert cli.RULES == registry.names()
    old = ("abslrp", "attnlrp", "attnlrp-cp", "epsilon", "zplus", "alphabeta", "epsilon-plus-flat")
    assert set(old) <= set(cli.RULES)
    parser = cli.build_parser()
    for typed, name in {"LRP-ε": "epsilon", "LRP-α2β1": "alphabeta", "EpsilonPlusFlat": "epsilon-plus-flat"}.items():
        assert parser.parse_args(["example", "--rules", typed]).rules == name
        assert parser.parse_args(["explain-text", "x", "--rules", typed]).rules == name
    assert parser.parse_args(["example"]).rules is None  # abslrp (digits) or abslrp + epsilon-plus-flat (photos)
    assert parser.parse_args(["explain-text", "x"]).rules == cli.TEXT_RULES
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["example", "--rules", "nope"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and all(n in err for n in cli.RULES)
    assert cli.main(["--model", "shapes", "--rules", "LRP-ε", "--out", str(tmp_path / "e.png")]) == 0
    assert repr(relprop.rules.Epsilon(1e-6)) in capsys.readouterr().out


def test_target_by_name(tmp_path, capsys) -> None:
    assert cli.main(["--model", "shapes", "--target", "circle", "--out", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    assert out.count("explained circle") == 6
    assert cli._target("2", CLASS_NAMES) == 2 and cli._target("circle", CLASS_NAMES) == 1
    assert cli._target(None, CLASS_NAMES) is None
    assert cli.main(["--model", "vgg", "--target", "3", "--out", str(tmp_path / "d.png")]) == 0
    assert "explained class 3 for every image" in capsys.readouterr().out


def test_bad_target_is_an_error_not_a_traceback(tmp_path, capsys) -> None:
    assert cli.main(["--model", "shapes", "--target", "hexagon", "--out", str(tmp_path / "t.png")]) == 1
    err = capsys.readouterr().err
    assert "relprop: error" in err and "hexagon" in err and "circle" in err
    assert not (tmp_path / "t.png").exists()
    assert cli.main(["--model", "digits", "--target", "10", "--out", str(tmp_path / "t.png")]) == 1
    err = capsys.readouterr().err
    assert "not a class" in err and "9 (9)" in err
    assert cli.main(["--target", "kitten", "--out", str(tmp_path / "t.png")]) == 1  # the photos' ImageNet classes
    err = capsys.readouterr().err
    assert "not a class" in err and "an index 0..999 or a class name" in err
    for bad in ("3", "-1"):
        with pytest.raises(relprop.TargetError, match="not a class"):
            cli._target(bad, CLASS_NAMES)


def test_unwritable_path_is_an_error(tmp_path, capsys) -> None:
    assert cli.main(["--model", "digits", "--out", str(tmp_path / "missing" / "dir" / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "relprop: error" in err and "does not exist" in err


def test_bad_option_and_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--rules", "nope"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "example" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["evaluat"])
    assert info.value.code == 2


def test_console_script(tmp_path) -> None:
    script = Path(sys.executable).parent / "relprop"
    if not script.exists():
        pytest.skip(f"no relprop console script next to {sys.executable} (package not installed)")
    # the entry point answers; a whole run through it: docs/getting-started.md's `relprop --model digits`
    # (tests/test_docs_examples.py) and the installed wheel (tests/test_wheel.py)
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "explain" in done.stdout and "evaluate" in done.stdout
