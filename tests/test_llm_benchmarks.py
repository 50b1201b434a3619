"""The two language-model benchmarks (benchmarks/llm_long_prompts.py, benchmarks/llm_faithfulness.py) run end to
end in --quick mode, on a tiny random Llama (not SmolLM2), and write what they report."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"relprop_{name}_benchmark", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_long_prompts_quick(tmp_path: Path, frozen_gc: None) -> None:
    pytest.importorskip("lxt")
    bench = _load("llm_long_prompts")
    result = bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert result["errors"] == []
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"AttnLRP (relprop)", "AttnLRP (LXT 2.1)"}
    for r in result["rows"]:
        assert r["model"] == "tiny Llama" and r["tokens"] == 32
        assert r["gradient_s"] > 0 and math.isfinite(r["time_ratio"]) and r["time_ratio"] > 0
        assert r["time_passed"] == (r["time_ratio"] <= bench.TIME_GOAL)
    raw = next(r for r in result["raw"] if r["method"] == "attnlrp")
    assert raw["trace_count"] == 1  # the warm-up traced, the memory and timed calls did not
    cos = {r["method"]: r["cosine"] for r in result["agreement"]["rows"]}
    assert set(cos) == {"AttnLRP", "input×gradient"} and all(0.9 < c <= 1.0 + 1e-9 for c in cos.values())
    saved = json.loads((tmp_path / "llm-long-prompts-cpu-quick.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    text = (tmp_path / "llm-long-prompts-cpu-quick.md").read_text()
    assert "| model | dtype | tokens | method |" in text and "--quick" in text


def test_faithfulness_quick(tmp_path: Path) -> None:
    bench = _load("llm_faithfulness")
    result = bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    names = [r["method"] for r in result["rows"]]
    assert names == ["AttnLRP", "AttnLRP(cp=True)", "Epsilon", "AbsLRP", "Input×Gradient", "random (2 seeds)"]
    assert result["setting"] in bench.SETTINGS and result["n_test"] == 4 and result["n_train"] == 2
    for r in result["rows"]:
        assert r["ci"][0] <= r["abpc"] <= r["ci"][1], r
        assert len(r["per_prompt"]) == 4 and all(math.isfinite(v) for v in r["per_prompt"])
    assert result["rows"][-1]["vs_random"] == 0.0
    assert 0 < result["abslrp_contrast"]["median"] < 2
    text = (tmp_path / "llm-faithfulness-cpu-quick.md").read_text()
    assert "| method | ABPC (nats) |" in text and text.count("\n| ") >= 6


def test_abpc_and_perturbation() -> None:
    import numpy as np
    import torch

    bench = _load("llm_faithfulness")
    # MoRF falls from 0 to -2 at f = 0.5 and stays, LeRF stays at 0: trapezoids 0.5·1 + 0.5·2 = 1.5
    curves = np.array([[[0.0, -2.0, -2.0], [0.0, 0.0, 0.0]]])
    assert bench.abpc(curves) == pytest.approx(1.5)
    ids = torch.tensor([[5, 6, 7, 8]])
    order = torch.tensor([2, 0, 1, 3])
    assert bench.perturbed(ids, order, 2, "remove", 0).tolist() == [6, 8]
    assert bench.perturbed(ids, order, 2, "replace", 0).tolist() == [0, 6, 0, 8]
    assert bench.perturbed(ids, order, 4, "remove", 0).tolist() == [0]
