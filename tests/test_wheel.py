"""The package as users install it: the wheel built by ``python -m build``, installed (not editable)
into a folder of its own, runs ``relprop --model digits`` and a Python explanation.

Missing package data or modules cannot hide behind the editable install: the wheel's relprop is
imported from its own folder, by an interpreter that does not see the source tree nor the
editable install (``-I``, then the folder put first on ``sys.path``; torch and the other
dependencies come from this environment's site-packages).  No network: the build is
``--no-isolation`` (setuptools from this environment) and the install ``--no-deps --no-index``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = {"digits_models.json", "digits_test.pt", "digits_vgg.pt", "reviews.jsonl", "shapes_cnn.pt"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build", reason="python -m build: pip install build (the test extra)")
    out = tmp_path_factory.mktemp("dist")
    # a copy of the sources, so that the build writes no build/ or egg-info into the checkout
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE", "relprop", "rules"):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # setuptools' deprecations (the license table stops building on 2027-02-18) are warnings, not errors
    assert "deprecat" not in (done.stdout + done.stderr).lower(), done.stdout[-4000:] + done.stderr[-4000:]
    (found,) = out.glob("relprop-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def _run(installed: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -I -S``: no source tree, no ``PYTHON*`` variables, no site-packages and so no .pth
    files (the editable install's finder is one); then the wheel's folder first on ``sys.path`` and
    this environment's site-packages after it (torch and the other dependencies)."""
    site = sysconfig.get_paths()["purelib"]
    boot = f"import sys; sys.path[:0] = [{str(installed)!r}]; sys.path.append({site!r})\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", boot + args[0], *args[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_wheel_holds_the_modules_and_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"relprop/__init__.py", "relprop/graph.py", "relprop/text.py", "relprop/apps/cli.py"} <= names
    assert {"relprop/rules/__init__.py", "relprop/rules/abslrp.py", "relprop/evaluation/metrics.py"} <= names
    assert {f"relprop/data/{n}" for n in DATA} <= names
    assert any(n.startswith("relprop/data/") and n.endswith(".png") for n in names) or not list(
        (ROOT / "relprop" / "data").glob("*.png")
    )
    assert not [n for n in names if n.startswith(("tests/", "rules/", "examples/", "benchmarks/"))]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in text and "License-File: LICENSE" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "relprop = relprop.apps.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_a_python_explanation_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    code = (
        "import relprop, relprop.models, torch\n"
        f"assert relprop.__file__.startswith({str(installed)!r}), relprop.__file__\n"
        f"assert relprop.rules.__file__.startswith({str(installed)!r}), relprop.rules.__file__\n"
        "assert relprop.__version__ == '0.1.0', relprop.__version__\n"
        "model = relprop.models.load_digits_model('vgg')\n"
        "x, y = relprop.models.load_digits_test().tensors\n"
        "R = relprop.trace(model).explain(x[:2], y[:2])\n"
        "assert R.shape == x[:2].shape and torch.isfinite(R).all()\n"
        "print('ok', tuple(R.shape))\n"
    )
    done = _run(installed, tmp_path, code)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ok (2, 3, 32, 32)" in done.stdout


def test_the_command_line_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    code = (
        "import sys, runpy\n"
        f"import relprop; assert relprop.__file__.startswith({str(installed)!r}), relprop.__file__\n"
        "sys.argv = ['relprop', '--model', 'digits']\n"
        "runpy.run_module('relprop', run_name='__main__')\n"
    )
    done = _run(installed, tmp_path, code)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), (done.stdout[-2000:], sorted(p.name for p in tmp_path.iterdir()))
