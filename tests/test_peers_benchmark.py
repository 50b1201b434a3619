"""The peer benchmark (benchmarks/peers.py): its measurement runs relprop on a tiny model, and DynamicLRP is skipped
with a message when no checkout is given. No network; DynamicLRP itself is never needed here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peers  # noqa: E402 - benchmarks/ is put on the path above


def test_measure_runs_relprop_on_a_tiny_vgg(monkeypatch: pytest.MonkeyPatch, frozen_gc: None) -> None:
    # in this process, but with glibc's allocator left as it is (the benchmark's workers tune it for their readings)
    monkeypatch.setattr(peers.speed, "_mallopt", lambda *_: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the benchmark's workers run (and fast on a busy machine)
    try:
        result = peers.measure("vgg16", "relprop", [1], repeats=1, quick=True)
    finally:
        torch.set_num_threads(threads)
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["gradient", peers.EPS, peers.EPF]
    for row in rows:
        assert row["error"] is None and row["median_s"] > 0 and row["ratio"] > 0
        assert row["peak_mb"] is None or row["peak_mb"] >= 0
    assert rows[0]["ratio"] == 1.0 and rows[1]["tool"] == "relprop"
    found = result["maps"]
    assert set(found) == {peers.EPS, peers.EPF, f"{peers.EPS} bias-free", f"{peers.EPF} bias-free"}
    assert found[peers.EPS].shape == (1, 3, 32, 32)
    assert peers.cosine(found[peers.EPS], found[peers.EPS]) == pytest.approx(1.0)
    table = peers.agreement({("vgg16", "relprop"): found, ("vgg16", "zennit"): found})
    assert [(a["a"], a["b"], a["rules_coincide"]) for a in table] == [
        (f"relprop {peers.EPS}", f"zennit {peers.EPS}", True),
        (f"relprop {peers.EPF}", f"zennit {peers.EPF}", True),
    ]
    assert all(a["cosine"] == pytest.approx(1.0) for a in table)
    assert peers.parse_args(["--worker", "vgg16", "relprop", "--quick"]).repeats == 1


def test_dynamiclrp_absent_is_skipped_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, why = peers.dynamiclrp_source(None, env={})
    assert src is None and why == peers.SKIP_DYNAMICLRP
    assert "--dynamiclrp" in why and "DYNAMICLRP_PATH" in why and peers.DYNAMICLRP_URL in why
    src, why = peers.dynamiclrp_source(str(tmp_path), env={})
    assert src is None and why is not None and "no lrp_engine package" in why
    (tmp_path / "src" / "lrp_engine").mkdir(parents=True)
    (tmp_path / "src" / "lrp_engine" / "__init__.py").write_text("")
    assert peers.dynamiclrp_source(None, env={"DYNAMICLRP_PATH": str(tmp_path)}) == (tmp_path / "src", None)

    monkeypatch.delenv("DYNAMICLRP_PATH", raising=False)
    logged: list[str] = []
    result = peers.run(peers.parse_args(["--quick", "--models", "vgg16", "--tools", "dynamiclrp"]), log=logged.append)
    assert logged == [peers.SKIP_DYNAMICLRP] and result["rows"] == []
    assert result["coverage"] == {"vgg16": {"dynamiclrp": peers.SKIP_DYNAMICLRP}}
    assert peers.SKIP_DYNAMICLRP in peers.markdown(result)


def test_coverage_and_not_applicable() -> None:
    assert peers.not_applicable("vgg16", "lxt") is not None
    assert peers.not_applicable("gpt2", "lxt") is None and peers.not_applicable("vgg16", "zennit") is None
    rows = [
        peers._row("gpt2", "relprop", 1, peers.EPS),
        peers._row("gpt2", "lxt", 1, peers.ATTN, error="ValueError: no patch"),
    ]
    table = peers.coverage(rows, {("gpt2", "zennit"): "n/a"})
    assert table == {"gpt2": {"relprop": "runs", "lxt": "fails: AttnLRP: ValueError: no patch", "zennit": "n/a"}}
