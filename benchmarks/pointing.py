"""Text quality on the shipped reviews: which words each method points at, relprop's rule sets beside LXT.

    .venv/bin/python benchmarks/pointing.py [--split heldout|train] [--limit N] [--json PATH] [--no-lxt]
    .venv/bin/python benchmarks/pointing.py --model lstm     # the recurrent model

Model: ``relprop.apps.sentiment.load_sentiment_model()`` (all-MiniLM-L6-v2 + the shipped
sentiment head; needs ``pip install "relprop[text]"``).  Data: a split of
``relprop/data/reviews.jsonl`` (``heldout``: 200 sentences, 100 per class, the default;
``train``: 360), sentiment words marked.

For every sentence and method, the relevance of the **predicted** class is read per token
at the word-embedding output (summed over the hidden dimension), sub-word pieces are summed
into words (``relprop.apps.sentiment.word_scores``; [CLS], [SEP] and padding are left out), and
the sentence counts as a hit when its highest-relevance word is one of its marked sentiment
words.  Columns:

* ``pointing``: share of hits (the headline number);
* ``polarity``: the top word is marked *and* carries the predicted class's polarity
  (stricter; matters for contrast sentences, where both clauses are marked);
* ``pointing | correct``: pointing on the sentences the model classifies correctly;
* ``time``: seconds for all sentences, after one untimed warm-up batch per method (relprop
  traces there; LXT's copy is made there).

Methods: relprop's ``absLRP`` (contrastive, the library default), ``AttnLRP``,
``AttnLRP (cp)``, ``LRP-ε`` (ε = 1e-6), each ``relprop.trace(model, rules).explain``;
``gradient × input`` (plain autograd at the embeddings); ``AttnLRP (LXT)``: LXT 2.1's own
rule functions attached to a copy of the same model where LXT's BERT patch places them
(``benchmarks/lxt_oracle.py``; needs ``pip install --no-deps lxt==2.1``); ``random word``:
the expected pointing of a word drawn uniformly from the sentence (exact, no sampling).

``--model lstm``: ``relprop.apps.sentiment.load_sentiment_lstm()`` instead (MiniLM's word
embeddings → bidirectional LSTM → linear, ``examples/train_sentiment_lstm.py``; sentences
padded on the left to 32 tokens), with ``absLRP`` (and its positive pass alone,
``AbsLRP(contrastive=False)``), ``LRP-ε`` (``Epsilon()``, ε = 1e-6 is
its default too), ``AttnLRP``, ``gradient × input`` (at the embedding output) and
``random word``; the same scoring.  Default JSON: ``results/pointing-lstm-<split>.json``.

Prints a markdown table and writes JSON (default ``benchmarks/results/pointing-<split>.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import relprop
from relprop import rules
from relprop.apps.sentiment import (
    CLASS_NAMES,
    balanced,
    encode,
    gradient_x_input,
    load_reviews,
    load_sentiment_lstm,
    load_sentiment_model,
    pointing_hits,
)

BATCH = 50
HERE = Path(__file__).resolve().parent

#: relprop's rule sets in the table, by the name the table shows
RULE_SETS: dict[str, Callable[[], rules.RuleSet]] = {
    "absLRP (relprop)": rules.AbsLRP,
    "AttnLRP (relprop)": rules.AttnLRP,
    "AttnLRP cp (relprop)": lambda: rules.AttnLRP(cp=True),
    "LRP-ε (relprop)": lambda: rules.Epsilon(1e-6),
}


#: the rule sets of the recurrent model's table (``--model lstm``)
LSTM_RULE_SETS: dict[str, Callable[[], rules.RuleSet]] = {
    "absLRP (relprop)": rules.AbsLRP,
    "absLRP, positive pass (relprop)": lambda: rules.AbsLRP(contrastive=False),
    "LRP-ε (relprop)": rules.Epsilon,
    "AttnLRP (relprop)": rules.AttnLRP,
}


def _embedding_gradient_x_input(model: Any, enc: Any, target: torch.Tensor) -> torch.Tensor:
    """Gradient × input at the output of ``model.embed`` (a module whose forward returns logits)."""
    embeds = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
    model(inputs_embeds=embeds).gather(1, target[:, None]).sum().backward()
    return (embeds * embeds.grad).sum(-1).detach()


def _lxt_method(model: Any) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """LXT's AttnLRP on a copy of ``model`` (the copy's logits are checked against the model's)."""
    sys.path.insert(0, str(HERE))
    import lxt_oracle

    copy = lxt_oracle.lxt_bert(model)

    def explain(enc: Any, pred: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if not torch.allclose(copy(**enc).logits, model(**enc).logits, atol=1e-4):
                raise RuntimeError("the LXT-patched copy changed the model's logits")
        return lxt_oracle.token_gradient_x_input(copy, dict(enc), pred)

    return explain


def measure(
    split: str = "heldout", limit: int | None = None, lxt: bool = True, verbose: bool = True, which: str = "minilm"
) -> dict:
    torch.manual_seed(0)
    recurrent = which == "lstm"
    model, tok = load_sentiment_lstm() if recurrent else load_sentiment_model()
    logits = (lambda enc: model(**enc)) if recurrent else (lambda enc: model(**enc).logits)
    rows = balanced(load_reviews(split), limit)
    labels = torch.tensor([r["label"] for r in rows])
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    encs = [encode(tok, [r["text"] for r in b]) for b in batches]
    with torch.no_grad():
        preds = [logits(enc).argmax(1) for enc in encs]

    methods: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {}
    for name, make in (LSTM_RULE_SETS if recurrent else RULE_SETS).items():
        graph = relprop.trace(model, make())
        methods[name] = lambda enc, pred, graph=graph: graph.explain(dict(enc), pred)
    grad_x_input = _embedding_gradient_x_input if recurrent else gradient_x_input
    methods["gradient × input"] = lambda enc, pred: grad_x_input(model, enc, pred)
    lxt_error = None
    if lxt and not recurrent:
        try:
            methods["AttnLRP (LXT 2.1)"] = _lxt_method(model)
        except Exception as e:  # report, do not hide
            lxt_error = f"{type(e).__name__}: {e}"

    pred = torch.cat(preds)
    correct = (pred == labels).tolist()
    results: dict[str, dict[str, Any]] = {}
    chance: list[float] = []
    for name, explain in methods.items():
        hit: list[bool] = []
        matched: list[bool] = []
        chance = []
        seconds = 0.0
        try:
            explain(encs[0], preds[0])  # warm-up: tracing, first-call allocations
            for b, enc, p in zip(batches, encs, preds):
                start = time.perf_counter()
                R = explain(enc, p)
                seconds += time.perf_counter() - start
                h, m, c = pointing_hits(b, enc, R, p)
                hit, matched, chance = hit + h, matched + m, chance + c
        except Exception as e:
            if not name.endswith("(LXT 2.1)"):
                raise
            lxt_error = f"{type(e).__name__}: {e}"
            continue
        results[name] = _row(hit, matched, correct, seconds)
    n = len(rows)
    results["random word"] = dict(
        pointing=sum(chance) / n,
        polarity=None,
        pointing_correct=sum(c for c, ok in zip(chance, correct) if ok) / max(1, sum(correct)),
        seconds=0.0,
    )
    out = dict(
        command=" ".join([".venv/bin/python", "benchmarks/pointing.py", *sys.argv[1:]]),
        model=(
            "SentimentRNN: MiniLM word embeddings (frozen) -> bidirectional LSTM -> linear (relprop sentiment_lstm.pt)"
            if recurrent
            else "all-MiniLM-L6-v2 + relprop sentiment head (BertForSequenceClassification)"
        ),
        classes=list(CLASS_NAMES),
        split=split,
        sentences=n,
        accuracy=sum(correct) / n,
        explained="predicted class",
        lxt_error=lxt_error,
        results=results,
    )
    if verbose:
        print(table(out))
    return out


def _row(hit: list[bool], matched: list[bool], correct: list[bool], seconds: float) -> dict[str, Any]:
    n = len(hit)
    return dict(
        pointing=sum(hit) / n,
        polarity=sum(matched) / n,
        pointing_correct=sum(h for h, c in zip(hit, correct) if c) / max(1, sum(correct)),
        seconds=seconds,
    )


def table(out: dict) -> str:
    lines = [
        f"Reviews, {out['split']} split: {out['sentences']} sentences, model accuracy {out['accuracy']:.3f}; "
        f"relevance of the {out['explained']}.",
        "",
        "| method | pointing | polarity | pointing (correctly classified) | time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, r in out["results"].items():
        pol = "–" if r["polarity"] is None else f"{r['polarity']:.3f}"
        lines.append(f"| {name} | {r['pointing']:.3f} | {pol} | {r['pointing_correct']:.3f} | {r['seconds']:.1f} |")
    if out["lxt_error"]:
        lines.append(f"\nAttnLRP (LXT 2.1) could not run: {out['lxt_error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout", help="which reviews")
    parser.add_argument("--limit", type=int, default=None, help="use only N sentences of the split (balanced)")
    parser.add_argument("--json", default=None, help="where to write JSON (default: results/pointing-<split>.json)")
    parser.add_argument("--no-lxt", action="store_true", help="skip AttnLRP (LXT)")
    parser.add_argument(
        "--model", choices=("minilm", "lstm"), default="minilm", help="MiniLM + head, or the recurrent model"
    )
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    out = measure(args.split, args.limit, lxt=not args.no_lxt, which=args.model)
    out["wall_seconds"] = time.perf_counter() - start
    stem = f"pointing-lstm-{args.split}" if args.model == "lstm" else f"pointing-{args.split}"
    path = Path(args.json) if args.json else HERE / "results" / f"{stem}.json"
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwall time {out['wall_seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
