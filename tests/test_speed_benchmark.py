"""The speed benchmark (benchmarks/speed.py) runs end to end in --quick mode and reports what issue 5 asks for.

Runs on the CPU only: the CUDA path is checked through the device-selection logic, not executed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import relprop

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("zennit")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("relprop_speed_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


speed = _load()


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, Path]:
    # a separate process: the benchmark tunes glibc's allocator for its memory readings
    out = tmp_path_factory.mktemp("speed")
    js, md = out / "speed.json", out / "speed.md"
    args = ["--quick", "--device", "cpu", "--threads", "1", "--batches", "1,8"]
    args += ["--json", str(js), "--markdown", str(md)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(js.read_text()), js, md


#: the transformer rows: AttnLRP timed, and LXT beside it where LXT has a patch for the model
ATTNLRP_MODELS = {"bert", "minilm", "timm_vit_b_16", "tv_vit_b_16"}
LXT_MODELS = {"bert", "minilm", "tv_vit_b_16"}


def _expected_methods(model: str) -> list[str]:
    methods = ["forward", "gradient", "absLRP", "LRP-eps"]
    if model in ("tv_vgg16", "tv_resnet50"):
        methods += ["EpsilonPlusFlat", "zennit EpsilonPlusFlat"]
    if model in speed.DECODER_MODELS:
        methods.append(speed.ABSLRP_ALL)
    if model in ATTNLRP_MODELS:
        methods.append("AttnLRP")
    if model in LXT_MODELS:
        methods.append(speed.LXT)
    return methods


def test_every_row_is_there_and_measured(quick: tuple[dict[str, Any], Path, Path]) -> None:
    result, _, _ = quick
    rows = result["rows"]
    keys = [(r["model"], r["batch"], r["method"]) for r in rows]
    expected = [(m, b, meth) for m in speed.ALL_MODELS for b in (1, 8) for meth in _expected_methods(m)]
    assert sorted(keys) == sorted(expected)
    for r in rows:
        assert r["error"] is None, r
        assert r["device"] == "cpu"
        assert len(r["times_s"]) == 1
        assert r["median_s"] > 0 and math.isfinite(r["median_s"]), r
        assert r["ratio"] > 0 and math.isfinite(r["ratio"]), r
        if r["method"] == "gradient":
            assert r["ratio"] == 1.0
    # peak memory is measured on Linux (VmHWM can be reset); ratios are finite where the gradient used memory
    if Path("/proc/self/clear_refs").exists():
        for r in rows:
            assert r["peak_mb"] is not None and r["peak_mb"] >= 0, r
            if r["memory_ratio"] is not None:
                assert math.isfinite(r["memory_ratio"]) and r["memory_ratio"] >= 0
            # absLRP's kept derived weights are part of its peak
            assert (r["kept_mb"] > 0) == r["method"].startswith("absLRP") and r["peak_mb"] >= r["kept_mb"], r
            # the process peak: what the process held with the model loaded + the call's peak
            base = next(c["base_mb"] for c in result["cases"] if c["model"] == r["model"])
            assert r["process_peak_mb"] == pytest.approx(base + r["peak_mb"]), r
            assert math.isfinite(r["process_ratio"]) and r["process_ratio"] > 0, r
    cases = {c["model"]: c for c in result["cases"]}
    assert set(cases) == set(speed.ALL_MODELS)
    assert all(c["parameters"] > 0 and c["parameter_mb"] > 0 for c in cases.values())


def test_targets_are_evaluated_on_the_rows_they_name(quick: tuple[dict[str, Any], Path, Path]) -> None:
    result, _, _ = quick
    for r in result["rows"]:
        named = r["method"] in ("absLRP", "LRP-eps") and r["batch"] == 8 and r["model"] in speed.TARGET_MODELS
        limit = {"absLRP": "≤2.5× grad", "LRP-eps": "≤1.5× grad"}.get(r["method"])
        assert (limit is not None and limit in r["target"]) == named, r
        if r["method"] in ("absLRP", "LRP-eps"):
            assert isinstance(r["passed"], bool)
            assert ("< zennit" in r["target"]) == (r["model"] in ("tv_vgg16", "tv_resnet50"))
        elif r["method"] in ("forward", "gradient", "zennit EpsilonPlusFlat", speed.ABSLRP_ALL, speed.LXT):
            assert r["passed"] is None and r["target"] == ""
        # AttnLRP against LXT's own implementation, at batch 8 where LXT runs
        versus_lxt = r["method"] == "AttnLRP" and r["batch"] == 8 and r["model"] in LXT_MODELS
        assert ("≤1.3× LXT" in r["target"]) == versus_lxt, r
        if r["method"] == "AttnLRP":
            assert (r["lxt_ratio"] is not None) == (r["model"] in LXT_MODELS), r
            assert isinstance(r["passed"], bool) == versus_lxt, r
        decoder = r["method"] == "absLRP" and r["model"] in speed.DECODER_MODELS
        assert ("process ≤1.5×" in r["target"]) == decoder, r


def test_trace_time_and_no_retrace(quick: tuple[dict[str, Any], Path, Path]) -> None:
    result, _, _ = quick
    traces = {(t["model"], t["method"]): t for t in result["traces"]}
    expected = {(m, meth) for m in speed.ALL_MODELS for meth in _expected_methods(m) if meth in speed.RELPROP_METHODS}
    assert set(traces) == expected
    for t in traces.values():
        # one trace at the first explain, none for the warm-up, memory and timed explains at batch 1 and 8
        assert t["trace_count_after_warmup"] == 1 and t["trace_count_final"] == 1, t
        assert t["explains"] == 2 * 3
        # the <3 s trace target is a timing (load-dependent): evaluated, not asserted here
        assert t["passed"] is (t["trace_s"] < 3.0 if "trace <3 s" in t["target"] else True), t
        assert t["first_explain_s"] > 0 and t["trace_s"] is not None and t["trace_s"] >= 0
        assert "no retrace" in t["target"]
        assert ("trace <3 s" in t["target"]) == (t["model"] == "timm_vit_b_16")
        # absLRP keeps derived weights (a quick model's all fit in the default budget), the other sets none
        assert (t["weight_cache_mb"] is not None and t["weight_cache_mb"] > 0) == t["method"].startswith("absLRP")


def test_outputs_written(quick: tuple[dict[str, Any], Path, Path]) -> None:
    result, js, md = quick
    assert json.loads(js.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    text = md.read_text()
    assert "| device | model | batch | method | median s | × gradient | × LXT | peak MB" in text
    assert text.count("| cpu | ") == len(result["rows"]) + len(result["traces"])
    assert "--quick" in text and result["machine"]["torch"] in text
    assert result["machine"]["cpu"] and result["machine"]["torch_threads"] == 1


def test_evaluate_targets_pass_and_fail() -> None:
    def row(model: str, method: str, median: float, ratio: float, mem: float, batch: int = 8) -> Any:
        return speed.Row("cpu", model, batch, method, median_s=median, ratio=ratio, peak_mb=1.0, memory_ratio=mem)

    rows = [
        row("timm_vgg16", "absLRP", 2.4, 2.4, 1.9),
        row("timm_resnet50", "absLRP", 2.6, 2.6, 1.0),
        row("bert", "LRP-eps", 1.4, 1.4, 2.1),
        row("timm_vgg16", "absLRP", 9.0, 9.0, 1.0, batch=1),  # only memory is a target at batch 1
        row("tv_vgg16", "absLRP", 2.0, 2.0, 1.0),
        row("tv_vgg16", "zennit EpsilonPlusFlat", 1.5, 1.5, 1.0),
        row("tv_vgg16", "LRP-eps", 1.0, 1.0, 1.0),
    ]
    speed.evaluate_targets(rows, [])
    assert [r.passed for r in rows] == [True, False, False, True, False, None, True]
    assert rows[4].target == "mem ≤2.0×, < zennit"
    # decoders: absLRP's process peak (model and kept derived weights included) ≤ 1.5× the gradient pass's
    rows = [row("llama", "absLRP", 5.0, 5.0, 1.9, batch=b) for b in (1, 8)]
    rows += [row("llama", speed.ABSLRP_ALL, 5.0, 5.0, 9.0), row("bert", "absLRP", 2.0, 2.0, 1.0)]
    for r, process in zip(rows, (1.49, 1.51, 3.0, 3.0)):
        r.process_ratio = process
    speed.evaluate_targets(rows, [])
    assert [r.passed for r in rows] == [True, False, None, True]
    assert rows[0].target == "mem ≤2.0×, process ≤1.5×" and rows[2].target == ""
    # AttnLRP: at most 1.3× LXT's time at batch 8
    rows = [row("bert", "AttnLRP", 1.2, 1.2, 1.0), row("minilm", "AttnLRP", 1.4, 1.4, 1.0)]
    rows += [row("bert", "AttnLRP", 9.0, 9.0, 1.0, batch=1), row("bert", speed.LXT, 1.0, 1.0, 1.0)]
    for r, lxt in zip(rows, (1.29, 1.31, 9.0, None)):
        r.lxt_ratio = lxt
    speed.evaluate_targets(rows, [])
    assert [r.passed for r in rows] == [True, False, None, None]
    assert rows[0].target == "≤1.3× LXT"


def test_peak_includes_what_abslrp_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """absLRP's derived weights, held between calls, are added to every call's peak (and the process peak)."""
    from relprop.rules.abslrp import weight_cache_bytes

    graphs: list[relprop.Graph] = []
    trace = speed.relprop.trace
    monkeypatch.setattr(speed.relprop, "trace", lambda *a, **k: graphs.append(trace(*a, **k)) or graphs[-1])
    # in this process, leave glibc's allocator alone: the call runs, its own peak reads as 0
    monkeypatch.setattr(speed, "peak_memory_mb", lambda fn, device: (fn(), 0.0)[1])
    rows, _, info = speed.run_case(speed.build_case("llama", True), [1, 2], 1, "cpu", lambda line: None)
    kept = {repr(g.rules): weight_cache_bytes(g) / 2**20 for g in graphs}
    assert info["parameters"] > 0 and info["base_mb"] > 0
    for r in rows:
        assert r.error is None
        expected = kept.get(repr(speed.RELPROP_METHODS[r.method]()), 0.0) if r.method in speed.RELPROP_METHODS else 0.0
        assert r.kept_mb == r.peak_mb == expected, r
        assert r.process_peak_mb == info["base_mb"] + expected
        assert (expected > 0) == r.method.startswith("absLRP"), r


def test_trace_targets() -> None:
    def trace(model: str, trace_s: float, final: int) -> Any:
        return speed.Trace("cpu", model, "absLRP", trace_s + 0.1, 0.1, trace_s, 1, 1, final, 6)

    traces = [trace("timm_vit_b_16", 2.9, 1), trace("timm_vit_b_16", 3.1, 1)]
    traces += [trace("bert", 9.0, 1), trace("bert", 1.0, 2)]
    speed.evaluate_targets([], traces)
    assert [t.passed for t in traces] == [True, False, True, False]


def test_device_selection() -> None:
    """The GPU path is chosen when CUDA is present (checked without one)."""
    assert speed.resolve_devices("auto", cuda_available=False) == ["cpu"]
    assert speed.resolve_devices("auto", cuda_available=True) == ["cpu", "cuda"]
    assert speed.resolve_devices("cuda", cuda_available=True) == ["cuda"]
    assert speed.resolve_devices("cpu", cuda_available=True) == ["cpu"]
    with pytest.raises(SystemExit):
        speed.resolve_devices("cuda", cuda_available=False)
