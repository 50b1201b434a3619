"""Search for a transformer rule set that beats both absLRP and AttnLRP (issue 10, point 6).

    .venv/bin/python benchmarks/transformer_rules.py [--split train|test|both] [--candidates a,b,...]
                                                     [--tasks reviews,digits] [--limit N] [--json PATH]
                                                     [--quick]

Every candidate is scored on two transformers that ship with relprop:

* the **MiniLM sentiment model** (``relprop.apps.sentiment``) on the reviews: ``pointing`` (the
  top word of the predicted class's relevance is a marked sentiment word) and ``polarity``
  (it also has the predicted polarity), as in ``benchmarks/pointing.py``;
* the **digits ViT** (``relprop.models``): ``deletion`` = mean over 16 steps of
  (LeRF − MoRF), the target probability when the least (LeRF) minus when the most (MoRF)
  relevant pixels are set to the background first, 64 pixels per step (higher: the map
  ranks the pixels the model uses; Samek et al. 2017, Blücher et al. 2024), and ``strokes``,
  the median over images of the share of positive relevance on stroke pixels divided by the
  share of stroke pixels (1 = no preference; the measure of ``tests/test_digits_models.py``).

Splits: ``train`` = the reviews' train split (360) and 300 digits training images
(``examples/train_digits.make_split``, needs scikit-learn; drawn with seed 0); ``test`` =
the held-out reviews (200) and the shipped digits test split (360).  Candidates are chosen
on ``train`` and reported on ``test``; the rule of choice, fixed before looking at ``test``:
a candidate must beat both absLRP and AttnLRP on train pointing *and* on train deletion.

Experimental rules that are not part of relprop (defined below): :class:`RelativeEpsilon`,
:class:`MeanHeldLayerNorm`, :class:`SoftmaxIdentityAttention`.  Writes JSON (default
``benchmarks/results/transformer-rules.json``) and prints markdown tables.
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
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.rules.attention import apply_mask, attention_inputs
from relprop.rules.base import Context, Relevance, Rule, stabilize
from relprop.rules.lrp import _first, _Layer
from relprop.rules.norms import norm_map

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SDPA = "aten.scaled_dot_product_attention"


# -- experimental rules (tried, not shipped) ---------------------------------------------------


class RelativeEpsilon(Rule):
    """ε-rule with ε = c · rms(z) per token (the LRP tutorial's "0.25 std" stabiliser)."""

    def __init__(self, c: float) -> None:
        self.c = c

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        y = _first(ctx.output)
        eps = self.c * y.pow(2).mean(-1, keepdim=True).sqrt()
        g = _first(R) / torch.where(y >= 0, y + eps, y - eps)
        layer = norm_map(ctx) if ctx.info.category == "norm" else _Layer(ctx)
        out[layer.index] = layer.x * layer.jt(layer.w, g)
        return out


class MeanHeldLayerNorm(Rule):
    """ε-rule on layer norm with mean *and* σ held constant (the mean absorbs like a bias)."""

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        args, _ = ctx.args()
        x, w = ctx.inputs[0], args[2]
        eps = args[4] if len(args) > 4 else 1e-5
        sigma = torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps)
        scale = (w if w is not None else 1.0) / sigma
        return [x * scale * _first(R) / stabilize(_first(ctx.output), 1e-6)] + [None] * (len(ctx.inputs) - 1)


class SoftmaxIdentityAttention(Rule):
    """SDPA with the uniform rule at both products and the identity rule through the softmax."""

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        q, k, v, mask, causal, scale, _ = attention_inputs(ctx)
        prod = (q * scale) @ k.transpose(-2, -1)
        p = torch.softmax(apply_mask(prod, mask, causal), -1)
        g = R / stabilize(ctx.output, 1e-6)
        gs = p * (g @ v.transpose(-2, -1)) * 0.5 / stabilize(prod, 1e-6) * 0.5 * scale
        rel = [q * (gs @ k), k * (gs.transpose(-2, -1) @ q), v * (p.transpose(-2, -1) @ g) * 0.5]
        return rel + [None] * (len(ctx.inputs) - 3)


# -- candidates --------------------------------------------------------------------------------

#: how a candidate explains: (rule set, overrides, contrastive, start) with start "target"
#: (the class index) or "margin" (float target: z_t − mean of the other logits, as-is)
Candidate = tuple[Callable[[], rules.RuleSet], dict[Any, Any], bool | None, str]


def _c(make: Callable[[], rules.RuleSet], overrides: dict | None = None, contrastive: bool | None = None,
       start: str = "target") -> Candidate:  # fmt: skip
    return (make, overrides or {}, contrastive, start)


def candidates(low: float, high: float) -> dict[str, Candidate]:
    """Every combination tried; ``low``/``high``: the digits' normalised pixel range (for z^B)."""
    attn, cp = rules.AttnLRPAttentionRule(), rules.AttentionValueRule()
    cands: dict[str, Candidate] = {
        "absLRP": _c(rules.AbsLRP),
        "absLRP, not contrastive": _c(rules.AbsLRP, contrastive=False),
        "AttnLRP": _c(rules.AttnLRP),
        "AttnLRP(cp)": _c(lambda: rules.AttnLRP(cp=True)),
        "LRP-ε": _c(lambda: rules.Epsilon(1e-6)),
        "AttnLRP, contrastive": _c(rules.AttnLRP, contrastive=True),
        "AttnLRP(cp), contrastive": _c(lambda: rules.AttnLRP(cp=True), contrastive=True),
        "AttnLRP on the margin z_t − mean z_other": _c(rules.AttnLRP, start="margin"),
        "absLRP + AttnLRP attention": _c(rules.AbsLRP, {SDPA: attn}),
        "absLRP, not contrastive, + AttnLRP attention": _c(rules.AbsLRP, {SDPA: attn}, contrastive=False),
        "absLRP + CP attention": _c(rules.AbsLRP, {SDPA: cp}),
        "AttnLRP + absLRP attention": _c(rules.AttnLRP, {SDPA: rules.AbsAttentionRule()}),
        "AttnLRP + absLRP at adds": _c(rules.AttnLRP, {"aten.add.Tensor": rules.AbsRule()}),
        "AttnLRP + identity through softmax": _c(rules.AttnLRP, {SDPA: SoftmaxIdentityAttention()}),
        "AttnLRP, z⁺ dense": _c(lambda: rules.AttnLRP(dense=rules.ZPlusRule())),
        "AttnLRP, ε = 0.01": _c(lambda: rules.AttnLRP(0.01)),
        "AttnLRP, ε = 0.1": _c(lambda: rules.AttnLRP(0.1)),
        "AttnLRP, ε = 1": _c(lambda: rules.AttnLRP(1.0)),
        "AttnLRP, LayerNorm identity": _c(rules.AttnLRP, {nn.LayerNorm: rules.Pass()}),
        "AttnLRP, LayerNorm mean held": _c(rules.AttnLRP, {nn.LayerNorm: MeanHeldLayerNorm()}),
        "AttnLRP(cp), LayerNorm mean held": _c(lambda: rules.AttnLRP(cp=True), {nn.LayerNorm: MeanHeldLayerNorm()}),
    }
    for c in (0.1, 0.25, 1.0):
        cands[f"AttnLRP, relative ε = {c}·rms dense"] = _c(lambda c=c: rules.AttnLRP(dense=RelativeEpsilon(c)))
    for g in (0.05, 0.1, 0.25):
        cands[f"AttnLRP, γ = {g} dense"] = _c(lambda g=g: rules.AttnLRP(dense=rules.GammaRule(g)))
    cands["AttnLRP(cp), γ = 0.1 dense"] = _c(lambda: rules.AttnLRP(cp=True, dense=rules.GammaRule(0.1)))
    for g in (0.1, 0.25, 0.5, 1.0):
        cands[f"AttnLRP, γ = {g} first"] = _c(lambda g=g: rules.AttnLRP(first=rules.GammaRule(g)))
        cands[f"AttnLRP(cp), γ = {g} first"] = _c(lambda g=g: rules.AttnLRP(cp=True, first=rules.GammaRule(g)))
    cands["AttnLRP, z^B first"] = _c(lambda: rules.AttnLRP(first=rules.ZBoxRule(low, high)))
    cands["AttnLRP, flat first"] = _c(lambda: rules.AttnLRP(first=rules.FlatRule()))
    return cands


def _margin(z: Tensor, pred: Tensor) -> Tensor:
    """Initial relevance z_t − mean of the other logits, spread on the logits (as-is)."""
    w = torch.full_like(z, -1.0 / (z.shape[1] - 1))
    w.scatter_(1, pred[:, None], 1.0)
    return w * z


def _explainer(model: nn.Module, cand: Candidate) -> Callable[[Any, Tensor, Tensor], Tensor]:
    make, overrides, contrastive, start = cand
    graph = relprop.trace(model, make(), overrides=overrides)

    def explain(inputs: Any, pred: Tensor, logits: Tensor) -> Tensor:
        target = _margin(logits, pred) if start == "margin" else pred
        return graph.explain(inputs, target, contrastive=contrastive)

    return explain


# -- the reviews -------------------------------------------------------------------------------


def reviews(split: str, names: list[str], cands: dict[str, Candidate], limit: int | None) -> dict[str, dict]:
    from relprop.apps.sentiment import (
        balanced,
        encode,
        gradient_x_input,
        load_reviews,
        load_sentiment_model,
        pointing_hits,
    )

    model, tok = load_sentiment_model()
    rows = balanced(load_reviews("train" if split == "train" else "heldout"), limit)
    batches = [rows[i : i + 60] for i in range(0, len(rows), 60)]
    encs = [encode(tok, [r["text"] for r in b]) for b in batches]
    with torch.no_grad():
        logits = [model(**e).logits for e in encs]
    # z^B's bounds are the digits' pixel range: an image-only candidate
    methods = {n: _explainer(model, cands[n]) for n in names if "z^B" not in n}
    if "absLRP" in names:
        methods["gradient × input"] = lambda e, p, z: gradient_x_input(model, e, p)
    out = {}
    for name, explain in methods.items():
        hit: list[bool] = []
        matched: list[bool] = []
        start = time.perf_counter()
        for b, e, z in zip(batches, encs, logits):
            p = z.argmax(1)
            h, m, _ = pointing_hits(b, e, explain(dict(e), p, z), p)
            hit, matched = hit + h, matched + m
        out[name] = dict(pointing=sum(hit) / len(hit), polarity=sum(matched) / len(hit))
        print(f"  reviews {split:5s} {name:48s} pointing {out[name]['pointing']:.3f} polarity "
              f"{out[name]['polarity']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return out


# -- the digits ViT -----------------------------------------------------------------------------


def digits_images(split: str, limit: int | None) -> tuple[Tensor, Tensor]:
    """(normalised images, raw intensities in [0, 1]) of the split."""
    from relprop import models

    if split == "train":
        sys.path.insert(0, str(ROOT / "examples"))
        from train_digits import make_split

        images, _, _, _ = make_split()
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: limit or 300]
        return models.normalize_digits(images[pick]), images[pick].float() / 255
    x, _ = models.load_digits_test()[:]
    raw = models.load_digits_test(raw=True)[:][0]
    return (x, raw) if limit is None else (x[:limit], raw[:limit])


def deletion(model: nn.Module, x: Tensor, pred: Tensor, R: Tensor, background: float, steps: int = 16) -> float:
    """Mean over steps of (LeRF − MoRF) target probability, pixels ranked by Σ_channels R."""
    order = R.sum(1).flatten(1).argsort(1, descending=True)
    per_step = order.shape[1] // steps

    def curve(rank: Tensor) -> Tensor:
        probs = []
        with torch.no_grad():
            for s in range(steps + 1):
                xm = x.clone().flatten(2)
                sel = rank[:, : s * per_step]
                xm.scatter_(2, sel[:, None, :].expand(-1, x.shape[1], -1), background)
                probs.append(torch.softmax(model(xm.view_as(x)), 1).gather(1, pred[:, None])[:, 0])
        return torch.stack(probs, 1)

    return float((curve(order.flip(1)) - curve(order)).mean())


def strokes(R: Tensor, raw: Tensor) -> float:
    """Median over images of (share of positive relevance on strokes) / (share of stroke pixels)."""
    pos = R.sum(1).flatten(1).clamp(min=0)
    on = (raw > 0.5).flatten(1).float()
    return float(((pos * on).sum(1) / pos.sum(1).clamp(min=1e-12) / on.mean(1)).median())


def digits_vit(split: str, names: list[str], cands: dict[str, Candidate], limit: int | None) -> dict[str, dict]:
    from relprop import models

    model = models.load_digits_model("vit")
    x, raw = digits_images(split, limit)
    background = float(models.normalize_digits(torch.zeros(1, 32, 32))[0, 0, 0, 0])
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    out = {}
    for name in names:
        explain = _explainer(model, cands[name])
        start = time.perf_counter()
        R = torch.cat([explain(x[i : i + 60], pred[i : i + 60], logits[i : i + 60]) for i in range(0, len(x), 60)])
        out[name] = dict(deletion=deletion(model, x, pred, R, background), strokes=strokes(R, raw))
        print(f"  digits  {split:5s} {name:48s} deletion {out[name]['deletion']:+.3f} strokes "
              f"{out[name]['strokes']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return out


def chosen(train: dict[str, dict]) -> list[str]:
    """Candidates that beat absLRP and AttnLRP on train pointing and train deletion."""
    r, d = train["reviews"], train["digits"]
    best = [
        n for n in d
        if n in r and all(r[n]["pointing"] > r[b]["pointing"] and d[n]["deletion"] > d[b]["deletion"]
                          for b in ("absLRP", "AttnLRP"))
    ]  # fmt: skip
    return best


def table(results: dict[str, dict]) -> str:
    splits = [s for s in ("train", "test") if s in results]
    head = "| candidate | " + " | ".join(
        f"{s} pointing | {s} polarity | {s} ViT deletion | {s} ViT strokes" for s in splits
    )
    lines = [head + " |", "|---|" + "---|" * (4 * len(splits))]
    names = list(dict.fromkeys(n for s in splits for part in results[s].values() for n in part))
    for n in names:
        cells = []
        for s in splits:
            r, d = results[s]["reviews"].get(n), results[s]["digits"].get(n)
            cells += [f"{r['pointing']:.3f}" if r else "–", f"{r['polarity']:.3f}" if r else "–"]
            cells += [f"{d['deletion']:+.3f}" if d else "–", f"{d['strokes']:.2f}" if d else "–"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("train", "test", "both"), default="both")
    parser.add_argument("--candidates", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most N sentences / images per split")
    parser.add_argument("--json", default=str(HERE / "results" / "transformer-rules.json"))
    parser.add_argument("--quick", action="store_true", help="absLRP and AttnLRP on 24 sentences / images")
    parser.add_argument("--tasks", default="reviews,digits", help="comma-separated: reviews, digits (default: both)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from relprop import models

    low = float(models.normalize_digits(torch.zeros(1, 32, 32))[0, 0, 0, 0])
    high = float(models.normalize_digits(torch.ones(1, 32, 32))[0, 0, 0, 0])
    cands = candidates(low, high)
    names = ["absLRP", "AttnLRP"] if args.quick else (args.candidates.split(",") if args.candidates else list(cands))
    unknown = [n for n in names if n not in cands]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {', '.join(cands)}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or set(tasks) - {"reviews", "digits"}:
        parser.error(f"--tasks takes reviews and/or digits, not {args.tasks!r}")
    limit = 24 if args.quick else args.limit
    splits = ["train", "test"] if args.split == "both" else [args.split]
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for split in splits:
        results[split] = dict(
            reviews=reviews(split, names, cands, limit) if "reviews" in tasks else {},
            digits=digits_vit(split, names, cands, limit) if "digits" in tasks else {},
        )
    out = dict(
        command=" ".join([".venv/bin/python", "benchmarks/transformer_rules.py", *(argv or sys.argv[1:])]),
        results=results,
        chosen_on_train=chosen(results["train"]) if "train" in results else None,
        wall_seconds=time.perf_counter() - start,
    )
    print(table(results))
    print(f"\nchosen on train (beat absLRP and AttnLRP on pointing and deletion): {out['chosen_on_train']}")
    Path(args.json).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.json} ({out['wall_seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
