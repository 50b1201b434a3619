"""The disk cache as a user meets it: ``relprop.trace(model)`` in a second process, stale and
corrupt entries, ``cache=False``.  (:mod:`relprop.diskcache` itself: ``tests/test_diskcache.py``.)

The oracle is always an explanation from a fresh export in the same conditions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from length_models import Branchy
from torch import nn

import relprop
from relprop import diskcache

transformers = pytest.importorskip("transformers")

_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch, transformers, relprop
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    model = transformers.LlamaForCausalLM(cfg).eval().double()
    graph = relprop.trace(model, relprop.rules.AttnLRP(), cache=sys.argv[1] == "1")
    out = {}
    for length in (4, 11):
        ids = torch.arange(length).remainder(61)[None] + 1
        out[length] = graph.explain({"input_ids": ids}, relprop.targets.next_token(3)).tolist()
    print(json.dumps({"R": out, "reads": graph.cache_reads, "traces": graph.trace_count}))
    """
)


def _run(folder: Path, cache: bool = True) -> dict:
    env = {**os.environ, "RELPROP_CACHE_DIR": str(folder)}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "1" if cache else "0"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run_here(folder: Path, monkeypatch: pytest.MonkeyPatch, cache: bool = True) -> dict:
    """What ``_run`` reports, from ``_SCRIPT`` run in this process (which never wrote to ``folder``): the
    cost of a process start less; the writes a process does at exit are flushed at the end."""
    monkeypatch.setenv("RELPROP_CACHE_DIR", str(folder))
    monkeypatch.setattr(sys, "argv", ["-c", "1" if cache else "0"])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(_SCRIPT, {"__name__": "__main__"})
    diskcache.flush()
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _entries(folder: Path) -> list[Path]:
    return sorted((folder / "programs").glob("*.pt2")) if (folder / "programs").is_dir() else []


@pytest.fixture(scope="module")
def first_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A first process's run in an empty cache folder, and what it reported: the starting
    point of the tests below, each of which works on a copy of the folder (one process less
    per test than each starting from an empty folder)."""
    folder = tmp_path_factory.mktemp("first-process")
    first = _run(folder)
    assert first["reads"] == 0 and first["traces"] == 1
    assert len(_entries(folder)) == 1  # written when the first process exited
    return folder, first


def _copy(first_process: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    folder, first = first_process
    shutil.copytree(folder, tmp_path / "cache")
    return tmp_path / "cache", first


def test_a_second_process_reads_the_trace_and_explains_the_same(
    first_process: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, first = _copy(first_process, tmp_path)
    assert first["reads"] == 0 and first["traces"] == 1
    assert len(_entries(folder)) == 1  # written when the first process exited
    second = _run(folder)
    assert second["reads"] == 1 and second["traces"] == 1  # both lengths from the one program read
    for length, R in first["R"].items():
        assert torch.allclose(torch.tensor(second["R"][length]), torch.tensor(R), rtol=1e-12, atol=1e-15)


def test_cache_false_neither_reads_nor_writes(
    first_process: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = _copy(first_process, tmp_path)
    (entry,) = _entries(folder)
    stamp = entry.stat().st_mtime_ns
    off = _run_here(folder, monkeypatch, cache=False)
    assert off["reads"] == 0
    assert _entries(folder) == [entry] and entry.stat().st_mtime_ns == stamp


def test_a_corrupt_entry_is_ignored_and_rewritten(
    first_process: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, first = _copy(first_process, tmp_path)
    (entry,) = _entries(folder)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    again = _run(folder)
    assert again["reads"] == 0 and again["R"] == first["R"]
    assert _run_here(folder, monkeypatch)["reads"] == 1  # the rewritten entry is good


def _fresh(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return relprop.trace(model, relprop.rules.Epsilon(), cache=False).explain(ids, 1)


def test_an_entry_traced_for_other_sizes_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELPROP_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = Branchy().double().eval()
    relprop.trace(model, relprop.rules.Epsilon()).explain(torch.randint(0, 50, (2, 9)), 1)
    diskcache.flush()
    assert len(_entries(tmp_path)) == 1
    twin = Branchy().double().eval()  # the same code and shapes: the same key, another object
    twin.load_state_dict(model.state_dict())
    short = torch.randint(0, 50, (2, 3))
    graph = relprop.trace(twin, relprop.rules.Epsilon())
    R = graph.explain(short, 1)
    assert graph.cache_reads == 0  # the stored program guards length > 4
    assert torch.allclose(R, _fresh(twin, short), rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("ignore:relprop traced Sequential with fixed sizes")
def test_another_shape_of_weights_is_another_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELPROP_CACHE_DIR", str(tmp_path))
    ids = torch.randint(0, 50, (2, 6))
    for width, reads in [(4, 0), (4, 1), (5, 0)]:
        model = nn.Sequential(nn.Embedding(50, width), nn.Flatten(1), nn.Linear(6 * width, 3))
        graph = relprop.trace(model.eval(), relprop.rules.Epsilon())
        graph.explain(ids, 0)
        diskcache.flush()
        assert graph.cache_reads == reads, width
    assert len(_entries(tmp_path)) == 2
