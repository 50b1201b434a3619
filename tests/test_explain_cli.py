"""``relprop explain``: outputs on a folder tree, resuming, failures, safe loading, torchrun."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import relprop
from relprop.apps import cli, cmd_explain, distributed, images, loading, outputs
from relprop.apps.models import load_digits_model, load_digits_test
from relprop.rules import registry

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
#: test image index -> where it goes under the input folder (a tree with a nested folder)
LAYOUT = {0: "a/0.png", 1: "a/1.png", 2: "b/c/2.png", 3: "b/c/3.png", 4: "b/4.png", 5: "5.png", 6: "a/6.png"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The first test digits as greyscale PNGs in a folder tree."""
    root = tmp_path_factory.mktemp("explain") / "imgs"
    raw = load_digits_test(raw=True).tensors[0]
    for i, rel in LAYOUT.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((raw[i].numpy() * 255).round().astype(np.uint8)).save(root / rel)
    return root


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory) -> dict[str, Path]:
    """The vgg digits model as a state dict, a checkpoint dict, a .safetensors file and a pickled module."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    model = load_digits_model("vgg")
    files = {k: d / n for k, n in [("state", "vgg.pt"), ("ckpt", "ckpt.pth"), ("st", "vgg.safetensors")]}
    torch.save(model.state_dict(), files["state"])
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, files["ckpt"])
    save_file(model.state_dict(), str(files["st"]))
    files["whole"] = d / "whole.pt"
    torch.save(model, files["whole"])
    return files


def _explain(*args: str) -> int:
    return cli.main(["explain", *map(str, args), "--no-progress"])


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_outputs_on_a_folder_tree(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _explain(tree, "--model", "vgg", "--out", out, "--batch-size", "3") == 0
    x = load_digits_test().tensors[0][list(LAYOUT)]
    model = load_digits_model("vgg")
    expected = relprop.trace(model, registry.rule_set("abslrp")).explain(x)
    predicted = model(x).argmax(1)
    lines = _lines(out)
    assert [r["npy"] for r in lines] == sorted(rel.replace(".png", ".npy") for rel in LAYOUT.values())
    by_npy = {r["npy"]: r for r in lines}
    preprocess = images.preprocess_for("digits", loading.load_model_spec("vgg").data)
    for j, rel in enumerate(LAYOUT.values()):
        assert torch.equal(preprocess(images.read_image(str(tree / rel))), x[j])  # the PNG gives the same input
        R = np.load(out / rel.replace(".png", ".npy"))
        assert R.dtype == np.float32 and R.shape == (3, 32, 32)
        # equal up to rounding: the command explains other batches (sums in another order)
        torch.testing.assert_close(torch.from_numpy(R), expected[j], rtol=0, atol=1e-5 * float(expected[j].abs().max()))
        with Image.open(out / rel) as pic:
            assert pic.format == "PNG" and pic.width >= 128
        r = by_npy[rel.replace(".png", ".npy")]
        assert r["path"] == str(tree / rel) and r["png"] == rel
        assert r["predicted"] == r["target"] == int(predicted[j]) and r["predicted_name"] == str(int(predicted[j]))
        assert r["model"] == "vgg" and r["rules"] == "abslrp" and r["weights"] is None
        with torch.no_grad():
            assert r["score"] == pytest.approx(float(model(x[j : j + 1])[0, r["target"]]), rel=1e-4)
        assert 0 < r["probability"] <= 1
    assert not list(out.rglob(".*")), "no temporary or part files left"


def test_target_and_rules(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        _explain(tree / "a", tree / "5.png", "--model", "vit", "--target", "3", "--rules", "LRP-ε", "--out", out) == 0
    )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == ["0.npy", "1.npy", "5.npy", "6.npy"]
    x = load_digits_test().tensors[0][[0, 1, 5, 6]]
    expected = relprop.trace(load_digits_model("vit"), registry.rule_set("epsilon")).explain(x, 3)
    got = torch.stack([torch.from_numpy(np.load(out / f"{i}.npy")) for i in (0, 1, 5, 6)])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert {(r["target"], r["target_name"], r["rules"]) for r in _lines(out)} == {(3, "3", "epsilon")}


def test_rerun_skips_force_recomputes(tree: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _explain(tree, "--model", "vgg", "--out", out) == 0
    files = sorted(out.rglob("*.npy")) + sorted(out.rglob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    capsys.readouterr()
    assert _explain(tree, "--model", "vgg", "--out", out) == 0
    assert "0 explained, 7 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    (out / "b/c/2.npy").unlink()
    (out / "a/6.png").unlink()
    assert _explain(tree, "--model", "vgg", "--out", out) == 0
    assert "2 explained, 5 already done" in capsys.readouterr().out
    assert len(_lines(out)) == 7
    assert _explain(tree, "--model", "vgg", "--target", "1", "--out", out) == 0  # another target: recomputed
    assert "7 explained, 0 already done" in capsys.readouterr().out
    assert {r["target"] for r in _lines(out)} == {1}
    assert _explain(tree, "--model", "vgg", "--target", "1", "--out", out, "--force") == 0
    assert "7 explained, 0 already done" in capsys.readouterr().out
    assert len(_lines(out)) == 7 and not (out / outputs.PARTS).exists()


def test_interrupted_run_leaves_no_partial_files_and_resumes(tree: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    calls = []
    real = cmd_explain.draw

    def draw(path, *args):
        calls.append(path)
        if len(calls) == 4:
            Path(path).write_bytes(b"half a PNG")
            raise KeyboardInterrupt
        real(path, *args)

    monkeypatch.setattr(cmd_explain, "draw", draw)
    with pytest.raises(KeyboardInterrupt):
        _explain(tree, "--model", "vgg", "--out", out, "--batch-size", "2")
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "temporary files removed"
    assert len(list(out.rglob("*.npy"))) == len(list(out.rglob("*.png"))) == 3
    assert not (out / "predictions.jsonl").exists()
    part = [json.loads(line) for f in (out / outputs.PARTS).glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(part) == 2  # the first batch's lines; the third image's outputs have no line yet
    monkeypatch.setattr(cmd_explain, "draw", real)
    assert _explain(tree, "--model", "vgg", "--out", out) == 0
    lines = _lines(out)
    assert len(lines) == 7 and len({r["npy"] for r in lines}) == 7
    assert not (out / outputs.PARTS).exists()


def test_write_failure_is_listed_and_leaves_nothing(tree: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    real = cmd_explain.draw

    def draw(path, *args):
        if Path(path).name == ".4.png.tmp":
            Path(path).write_bytes(b"half a PNG")
            raise OSError("disk full")
        real(path, *args)

    monkeypatch.setattr(cmd_explain, "draw", draw)
    assert _explain(tree, "--model", "vgg", "--out", out) == 1
    assert f"{tree / 'b/4.png'}: cannot write its outputs: disk full" in capsys.readouterr().err
    assert not (out / "b/4.npy").exists() and not (out / "b/4.png").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert len(_lines(out)) == 6


def _bad_tree(tree: Path, root: Path) -> Path:
    shutil.copytree(tree, root)
    (root / "a" / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "b" / "big.png")
    return root


def test_bad_images_are_listed_the_others_done(tree: Path, tmp_path: Path, vgg_files, capsys) -> None:
    imgs = _bad_tree(tree, tmp_path / "imgs")
    out = tmp_path / "out"
    args = [imgs, "--model", "relprop.apps.models:DigitsVGG", "--weights", vgg_files["state"], "--out", out]
    args += ["--mean", "0.3054", "--std", "0.3237", "--batch-size", "4"]
    assert _explain(*args) == 1
    captured = capsys.readouterr()
    assert "7 explained, 0 already done (skipped), 2 failed" in captured.out
    assert f"{imgs / 'a/broken.png'}: cannot read the image" in captured.err
    assert f"{imgs / 'b/big.png'}: the model cannot take this image (input (3, 40, 40)" in captured.err
    assert "without --size N" in captured.err and "Traceback" not in captured.err
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == [str(imgs / "a/broken.png"), str(imgs / "b/big.png")]
    lines = _lines(out)
    assert len(lines) == 7 and lines[0]["weights"] == str(vgg_files["state"])
    # the same images as the shipped spec gives (a state dict via --weights, the digits' mean/std by hand)
    ref = tmp_path / "ref"
    assert _explain(tree, "--model", "vgg", "--out", ref) == 0
    for rel in LAYOUT.values():
        npy = rel.replace(".png", ".npy")
        np.testing.assert_allclose(np.load(out / npy), np.load(ref / npy), rtol=1e-4, atol=1e-9)
    assert _explain(*args) == 1  # a re-run retries the failures only
    assert "0 explained, 7 already done (skipped), 2 failed" in capsys.readouterr().out
    assert _explain(*args, "--size", "32") == 1  # resized, the model takes every image; one is unreadable
    assert "1 explained, 7 already done (skipped), 1 failed" in capsys.readouterr().out
    assert [json.loads(line)["path"] for line in (out / "failures.jsonl").read_text().splitlines()] == [
        str(imgs / "a/broken.png")
    ]
    (imgs / "a/broken.png").unlink()
    assert _explain(*args, "--size", "32") == 0
    assert not (out / "failures.jsonl").exists() and len(_lines(out)) == 8


def test_safe_loading_of_weights(tree: Path, tmp_path: Path, vgg_files, capsys) -> None:
    for key in ("st", "ckpt"):  # .safetensors; a checkpoint dict with a DDP 'module.' prefix
        out = tmp_path / key
        args = ["--model", "relprop.apps.models:DigitsVGG", "--weights", vgg_files[key], "--size", "32"]
        assert _explain(tree / "b", *args, "--mean", "0.3054", "--std", "0.3237", "--out", out) == 0
        assert len(_lines(out)) == 3
    state = loading.load_state_dict(str(vgg_files["st"]))
    assert set(state) == set(load_digits_model("vgg").state_dict())
    capsys.readouterr()
    cases = [
        (["--model", vgg_files["whole"]], f"--model {vgg_files['whole']} is a pickled module.*--allow-pickle"),
        (["--model", vgg_files["state"]], "holds a state dict.*pass it as --weights"),
        (["--model", vgg_files["st"]], "a .safetensors file holds weights only"),
        (["--model", "relprop.apps.models:DigitsResNet", "--weights", vgg_files["st"]], "does not fit"),
        (
            ["--model", "relprop.apps.models:DigitsVGG", "--weights", vgg_files["whole"]],
            "not a plain state dict.*relprop.apps.models.DigitsVGG",
        ),
        (["--model", "vgg", "--weights", tmp_path / "missing.pt"], "missing.pt does not exist"),
        (["--model", "timm:no_such_model"], "timm has no model 'no_such_model'"),
        (["--model", "alexnet"], "is not a shipped model"),
        (["--model", "vgg", "--target", "cat"], "--target 'cat' is not a class"),
        (["--model", "vgg", "--size", "64"], "the digits model has its own preprocessing"),
        (["--model", "relprop.apps.models:DigitsVGG", "--target", "cat"], "needs class names"),
    ]
    for extra, message in cases:
        assert _explain(tree / "b", "--out", tmp_path / "bad", *extra) == 1
        err = capsys.readouterr().err
        assert err.count("relprop: error:") == 1 and re.search(message, err), (extra, err)
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").rglob("*.npy"))
    out = tmp_path / "pickled"
    assert _explain(tree / "b", "--model", vgg_files["whole"], "--allow-pickle", "--size", "32", "--out", out) == 0


def test_evaluate_refuses_a_pickled_module_without_allow_pickle(tree: Path, tmp_path: Path, vgg_files, capsys) -> None:
    data = tmp_path / "data"  # evaluate reads class sub-folders
    for i, rel in LAYOUT.items():
        (data / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / rel, data / f"c{i % 2}" / f"{i}.png")
    args = ["evaluate", "--model", str(vgg_files["whole"]), "--data", str(data), "--methods", "constant"]
    args += ["--mean", "0.3054", "--std", "0.3237", "--steps", "2", "--batch-size", "4", "--no-progress"]
    args += ["--out-dir", str(tmp_path / "ev")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"--model {vgg_files['whole']} is a pickled module" in err and "Pass --allow-pickle" in err
    assert cli.main([*args, "--allow-pickle"]) == 0
    assert (tmp_path / "ev" / "gae.json").is_file()


def test_class_names_file_and_timm(tmp_path: Path, tree: Path, capsys) -> None:
    import timm

    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    out = tmp_path / "named"
    assert _explain(tree / "b", "--model", "vgg", "--classes", names, "--target", "class 2", "--out", out) == 0
    assert {(r["target"], r["target_name"]) for r in _lines(out)} == {(2, "class 2")}
    model = timm.create_model("test_resnet", pretrained=False)
    weights = tmp_path / "test_resnet.pt"
    torch.save(model.state_dict(), weights)
    data = loading.load_model_spec("timm:test_resnet").data
    assert images.preprocess_for("timm", data)(images.read_image(str(tree / "b/4.png"))).shape == (3, 160, 160)
    capsys.readouterr()
    out = tmp_path / "timm"
    args = [tree / "b" / "4.png", "--model", "timm:test_resnet", "--size", "48", "--out", out]
    assert _explain(*args, "--rules", "epsilon") == 0
    assert "random weights" in capsys.readouterr().err
    assert np.load(out / "4.npy").shape == (3, 48, 48)  # timm's preprocessing, --size replacing its input size
    assert _explain(*args, "--weights", weights, "--force") == 0
    assert "random weights" not in capsys.readouterr().err
    bad = tmp_path / "few.txt"
    bad.write_text("a\nb\n")
    assert _explain(tree / "b", "--model", "vgg", "--classes", bad, "--out", tmp_path / "few") == 1
    assert "2 class names for a model with 10 outputs" in capsys.readouterr().err


def test_discovery(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ["x/a.png", "x/b.JPG", "x/.hidden.png", ".cache/c.png", "notes.txt", "out/old.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    found = images.discover([str(root)], exclude=root / "out")
    assert [(i.key, Path(i.path).relative_to(root).as_posix()) for i in found] == [
        ("x/a", "x/a.png"),
        ("x/b", "x/b.JPG"),
    ]
    assert [i.key for i in images.discover([str(root / "x/a.png")])] == ["a"]
    (root / "x/a.jpg").write_bytes(b"")
    with pytest.raises(relprop.InputError, match="would both write the outputs x/a.png"):
        images.discover([str(root)])
    with pytest.raises(relprop.InputError, match="no such file or folder"):
        images.discover([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(relprop.InputError, match="no image files"):
        images.discover([str(tmp_path / "empty")])


def test_distributed_helpers_in_one_process() -> None:
    world = distributed.World()
    assert not world.distributed and world.main
    items = list(range(10))
    assert distributed.shard(items, world) == items
    shares = [distributed.shard(items, distributed.World(r, 3)) for r in range(3)]
    assert sorted(sum(shares, [])) == items and shares[1] == [1, 4, 7]
    assert distributed.broadcast("x", world) == "x" and distributed.gather(1, world) == [1]
    assert distributed.all_gather(2, world) == [2]
    distributed.barrier(world)
    with distributed.session("cpu") as w:
        assert w == distributed.World(device="cpu")


def _launch(*args: object, n: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node n ARGS`` in a fresh environment (no torchrun variables)."""
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def _torchrun(*args: object, n: int = 2) -> subprocess.CompletedProcess:
    return _launch("-m", "relprop", "explain", *args, "--no-progress", "--device", "cpu", n=n)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tree: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    imgs = Path(shutil.copytree(tree, tmp_path / "imgs"))  # a copy: bad images join it below
    assert _explain(imgs, "--model", "vgg", "--out", one, "--batch-size", "2") == 0
    run = _torchrun(imgs, "--model", "vgg", "--out", two, "--batch-size", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "7 explained, 0 already done (skipped), 0 failed" in run.stdout and "on 2 processes" in run.stdout
    assert run.stdout.count("relprop explain:") == 1  # rank 0 reports
    for rel in LAYOUT.values():
        npy = rel.replace(".png", ".npy")
        np.testing.assert_allclose(np.load(two / npy), np.load(one / npy), rtol=1e-4, atol=1e-9)
        assert (two / rel).is_file()

    def strip(lines: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("score", "probability")} for r in lines]

    assert strip(_lines(two)) == strip(_lines(one))
    for a, b in zip(_lines(two), _lines(one), strict=True):
        assert a["score"] == pytest.approx(b["score"], rel=1e-4)
    # resumed (one launch less than a resume and a failing run apart): the images done are skipped, the 3 whose
    # outputs are gone and a new one are done, and a failing image makes the status of every rank, hence
    # torchrun's, non-zero (a run without failures exits with 0: above)
    for rel in ["a/0.npy", "b/c/3.png", "5.npy"]:
        (two / rel).unlink()
    (imgs / "a" / "broken.png").write_bytes(b"not an image")  # as in _bad_tree
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(imgs / "b" / "big.png")
    run = _torchrun(imgs, "--model", "vgg", "--out", two)
    assert run.returncode != 0 and f"{imgs / 'a/broken.png'}: cannot read the image" in run.stderr
    assert "4 explained, 4 already done (skipped), 1 failed" in run.stdout, run.stdout + run.stderr
    lines = _lines(two)
    assert len(lines) == 8 and len({r["path"] for r in lines}) == 8
    assert not (two / outputs.PARTS).exists()


@pytest.mark.slow
def test_torchrun_evaluate_matches_one_process(tmp_path: Path) -> None:
    args = ["--model", "vgg", "--methods", "absLRP,constant", "--max-images", "24", "--batch-size", "8"]
    args += ["--steps", "2", "--no-progress"]  # 3 GAE batches: rank 0 scores two, rank 1 one
    assert cli.main(["evaluate", *args, "--out-dir", str(tmp_path / "one")]) == 0
    run = _launch("-m", "relprop", "evaluate", *args, "--out-dir", tmp_path / "two")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("wrote ") == 1  # rank 0 writes and reports
    one, two = (json.loads((tmp_path / d / "gae.json").read_text()) for d in ("one", "two"))
    assert {p.name for p in (tmp_path / "two").iterdir()} == {"gae.csv", "gae.json", "gae.png"}
    assert len(one["gae"]) == len(two["gae"]) == 2
    for a, b in zip(one["gae"], two["gae"], strict=True):
        assert a.keys() == b.keys() and a["n"] == b["n"] == 6
        for key, value in a.items():  # equal up to rounding (one thread per process under torchrun)
            assert b[key] == (pytest.approx(value, rel=1e-5, abs=1e-7) if isinstance(value, float) else value), key


SESSION_SCRIPT = """
import sys, time
from relprop.apps import distributed
with distributed.session("cpu") as world:
    if sys.argv[1] == "fail" and world.rank == 1:
        raise RuntimeError("rank 1 fails")
    parts = distributed.gather(world.rank, world)
    if world.main:
        time.sleep(1)  # rank 0 still works while rank 1 is done
        print("gathered", parts)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_torchrun_session_ends_together_or_fails_fast(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "session.py"
    script.write_text(SESSION_SCRIPT)
    run = _launch(script, mode, timeout=120)
    if mode == "ok":
        assert run.returncode == 0 and "gathered [0, 1]" in run.stdout, run.stdout + run.stderr
    else:  # rank 0 waits in the gather; rank 1's teardown ends it well before the 2 h timeout
        assert run.returncode != 0 and "rank 1 fails" in run.stderr, run.stdout + run.stderr
