"""Token deletion on SmolLM2: how fast the explained next token's log-probability falls (issue 21, point 5).

For every prompt of ``benchmarks/data/llm_prompts.jsonl`` the model's own greedy next token is explained by
relprop's ``AttnLRP``, ``AttnLRP(cp=True)``, ``Epsilon`` and ``AbsLRP`` (``relprop.targets.next_token``),
by input × gradient (the input embeddings times the gradient of that logit, summed over the hidden
dimension) and by random orders (``--seeds`` seeds).  The prompt's tokens are then perturbed in steps of
``1/--steps`` of the prompt, most relevant first (MoRF, signed relevance, largest first) and least relevant
first (LeRF), and the target's log-probability read after every step (the same token, at the last position).

The score is the area between the two curves (Blücher et al., used by the AttnLRP paper as its faithfulness
measure): ``ABPC = ∫₀¹ (LeRF(f) − MoRF(f)) df`` over the fraction ``f`` of perturbed tokens (trapezoids), on the
target's log-probability in nats, not normalised further (a larger area: the order found the tokens the
prediction rests on).  ``ABPC (p/p₀)`` is the same area on the probability divided by the unperturbed
prompt's probability (1 at f = 0), a normalised view.  Means over the held-out prompts with bootstrap 95 %
confidence intervals (``--bootstrap`` resamples of the prompts); the random row averages its seeds per prompt.

Perturbation, chosen on the train split only: ``remove`` (the tokens are deleted, the prompt gets shorter;
everything deleted leaves one ``<|endoftext|>`` token) or ``replace`` (each token replaced by
``<|endoftext|>``, the length kept).  The setting kept is the one where the methods stand out more from
random on the train prompts: the larger mean over the non-random methods of (mean ABPC − random's) / its
standard deviation over the train prompts.

absLRP is contrastive (the target's pass minus a pass from all other 49151 logits, each scaled to Σ = 1):
``contrast`` = Σ|R_pos − R_neg| / Σ|R_pos| at the tokens, median and range over the held-out prompts, with
cos(R_pos, R_neg).

    nice -n 19 .venv/bin/python benchmarks/llm_faithfulness.py --threads 1   # SmolLM2, ~20 min on 2 shared cores
    .venv/bin/python benchmarks/llm_faithfulness.py --quick           # tiny random Llama, random prompts
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import relprop

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
PROMPTS = HERE / "data" / "llm_prompts.jsonl"
STEM = "llm-faithfulness-cpu"
SETTINGS = ("remove", "replace")
RANDOM = "random"

#: relprop's rule sets, by the name in the table
RULE_SETS: dict[str, Callable[[], relprop.rules.RuleSet]] = {
    "AttnLRP": lambda: relprop.rules.AttnLRP(),
    "AttnLRP(cp=True)": lambda: relprop.rules.AttnLRP(cp=True),
    "Epsilon": lambda: relprop.rules.Epsilon(),
    "AbsLRP": lambda: relprop.rules.AbsLRP(),
}
IXG = "Input×Gradient"


# -- model and prompts -------------------------------------------------------------------------------------------


def tiny_model() -> Any:
    """The long-prompt benchmark's tiny random Llama (2 layers, hidden 64, vocabulary 1000), for
    ``--quick``."""
    import transformers

    sys.path.insert(0, str(HERE))
    from llm_long_prompts import tiny_config

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(tiny_config()).eval().requires_grad_(False)


def load(quick: bool, prompts_file: Path) -> tuple[Any, list[dict[str, Any]], int]:
    """(model, prompts with ``ids``, the filler token id)."""
    if quick:
        model = tiny_model()
        gen = torch.Generator().manual_seed(0)
        prompts = [
            dict(id=i, split="train" if i < 2 else "test", prompt=f"random ids {i}")
            for i in range(6)  # 2 train, 4 held out
        ]
        for p in prompts:
            n = int(torch.randint(10, 17, (1,), generator=gen))
            p["ids"] = torch.randint(1, 1000, (1, n), generator=gen)
        return model, prompts, 0
    model, tok = relprop.models.load_language_model()
    model.requires_grad_(False)
    prompts = [json.loads(line) for line in prompts_file.read_text().splitlines() if line.strip()]
    for p in prompts:
        p["ids"] = tok(p["prompt"], return_tensors="pt").input_ids
    filler = tok.convert_tokens_to_ids("<|endoftext|>")
    return model, prompts, int(filler)


# -- relevance ---------------------------------------------------------------------------------------------------


def input_x_gradient(model: Any, ids: torch.Tensor, target: int) -> torch.Tensor:
    """(tokens,): input embeddings × ∂ logit / ∂ embeddings, summed over the hidden dimension."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    embeds.requires_grad_(True)
    with torch.enable_grad():
        score = model(inputs_embeds=embeds).logits[0, -1, target]
        (grad,) = torch.autograd.grad(score, embeds)
    return (embeds * grad).sum(-1)[0].detach()


def relevances(
    model: Any, graphs: dict[str, relprop.Graph], ids: torch.Tensor, target: int, seeds: int, pid: int
) -> tuple[dict[str, list[torch.Tensor]], dict[str, float]]:
    """Every method's (tokens,) scores (random: one per seed), and absLRP's two passes compared."""
    aim = relprop.targets.next_token(target)
    scores: dict[str, list[torch.Tensor]] = {}
    contrast: dict[str, float] = {}
    for name, graph in graphs.items():
        ex = graph.explanation(dict(input_ids=ids), aim)
        scores[name] = [ex.relevance[0].detach().double()]
        if ex.contrastive:
            pos, neg = ex.passes["input_ids"][0, 0].double(), ex.passes["input_ids"][1, 0].double()
            contrast = dict(
                contrast=float((pos - neg).abs().sum() / pos.abs().sum()),
                cos=float(F.cosine_similarity(pos, neg, dim=0)),
            )
    scores[IXG] = [input_x_gradient(model, ids, target).double()]
    n = ids.shape[1]
    scores[RANDOM] = [
        torch.rand(n, generator=torch.Generator().manual_seed(1000 * pid + s)).double() for s in range(seeds)
    ]
    return scores, contrast


# -- perturbation ------------------------------------------------------------------------------------------------


def perturbed(ids: torch.Tensor, order: torch.Tensor, m: int, setting: str, filler: int) -> torch.Tensor:
    """``ids`` (1, n) with the first ``m`` positions of ``order`` removed or replaced by ``filler``."""
    n = ids.shape[1]
    hit = torch.zeros(n, dtype=torch.bool)
    hit[order[:m]] = True
    if setting == "replace":
        return torch.where(hit, torch.full_like(ids[0], filler), ids[0])
    kept = ids[0][~hit]
    return kept if kept.numel() else torch.tensor([filler])


def curves(
    model: Any,
    ids: torch.Tensor,
    target: int,
    scores: dict[str, list[torch.Tensor]],
    steps: int,
    setting: str,
    filler: int,
) -> dict[str, np.ndarray]:
    """method -> (orders, 2, steps + 1) target log-probabilities: [MoRF, LeRF] after each step."""
    n = ids.shape[1]
    counts = [round(k * n / steps) for k in range(steps + 1)]
    orders = []  # (method, order index, direction)
    for name, maps in scores.items():
        for i, r in enumerate(maps):
            morf = torch.argsort(r, descending=True, stable=True)
            lerf = torch.argsort(r, descending=False, stable=True)
            orders += [(name, i, 0, morf), (name, i, 1, lerf)]
    out = {name: np.zeros((len(maps), 2, steps + 1)) for name, maps in scores.items()}
    for k, m in enumerate(counts):
        batch = torch.stack([perturbed(ids, order, m, setting, filler) for *_, order in orders])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=batch).logits[:, -1].double(), -1)[:, target]
        for (name, i, d, _), v in zip(orders, logp.tolist()):
            out[name][i, d, k] = v
    return out


def abpc(c: np.ndarray, normalise: bool = False) -> float:
    """Area between the LeRF and MoRF curves over f ∈ [0, 1], averaged over the orders (random's seeds).
    ``normalise``: on p / p₀ instead of log p."""
    y = np.exp(c - c[:, :, :1]) if normalise else c
    gap = y[:, 1] - y[:, 0]
    steps = gap.shape[1] - 1
    return float(((gap[:, 1:] + gap[:, :-1]) / 2).sum(1).mean() / steps)


def bootstrap(values: list[float], resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of the mean over a bootstrap of ``values``."""
    v = np.asarray(values)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def separation(areas: dict[str, list[float]]) -> float:
    """How far the non-random methods stand out from random: mean over methods of mean(Δ) / sd(Δ), Δ the
    per-prompt difference of ABPC to random's."""
    rand = np.asarray(areas[RANDOM])
    vals = []
    for name, a in areas.items():
        if name == RANDOM:
            continue
        d = np.asarray(a) - rand
        vals.append(d.mean() / (d.std(ddof=1) + 1e-12) if len(d) > 1 else d.mean())
    return float(np.mean(vals))


# -- the run -----------------------------------------------------------------------------------------------------


def machine(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=threads, niceness=os.nice(0), torch=torch.__version__)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Token deletion on a language model (CPU)",
        "",
        f"`{result['command']}` — {result['model']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"niceness {m['niceness']}.",
        "",
        f"Held-out prompts: {result['n_test']} (train: {result['n_train']}); perturbation: "
        f"**{result['setting']}** (chosen on the train split: separation "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["train_separation"].items())
        + f"); {result['steps']} steps of 1/{result['steps']} of the prompt; random: {result['seeds']} seeds. "
        "ABPC = ∫ (LeRF − MoRF) df of the target's log-probability (nats); ABPC (p/p₀): of the probability "
        "divided by the unperturbed one. 95 % bootstrap intervals over prompts.",
        "",
        "| method | ABPC (nats) | 95 % CI | ABPC (p/p₀) | 95 % CI | MoRF mean log p | LeRF mean log p "
        "| Δ to random (nats) | 95 % CI |",
        "|---|---:|---|---:|---|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['abpc']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['abpc_norm']:.3f} "
            f"| [{r['ci_norm'][0]:.3f}, {r['ci_norm'][1]:.3f}] | {r['morf_mean']:.3f} | {r['lerf_mean']:.3f} "
            f"| {r['vs_random']:+.3f} | [{r['vs_random_ci'][0]:+.3f}, {r['vs_random_ci'][1]:+.3f}] |"
        )
    c = result.get("abslrp_contrast")
    if c:
        lines += [
            "",
            f"absLRP's two passes on the held-out prompts: contrast Σ|R_pos − R_neg| / Σ|R_pos| median "
            f"{c['median']:.2e} (range {c['min']:.2e}–{c['max']:.2e}); cos(R_pos, R_neg) median "
            f"{c['cos_median']:.7f}: the map absLRP returns is the small difference of two nearly equal passes.",
        ]
    same = [
        (a["method"], b["method"])
        for i, a in enumerate(result["rows"])
        for b in result["rows"][i + 1 :]
        if a["per_prompt"] == b["per_prompt"]
    ]
    for a, b in same:
        lines += ["", f"{a} and {b} give the same curves on every prompt (the same token orders)."]
    lines += ["", "Train split, ABPC (nats) per setting:", "", "| method | " + " | ".join(SETTINGS) + " |"]
    lines.append("|---|" + "---:|" * len(SETTINGS))
    for name in result["train_abpc"][SETTINGS[0]]:
        lines.append(f"| {name} | " + " | ".join(f"{result['train_abpc'][s][name]:.3f}" for s in SETTINGS) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny random Llama and 6 random-id prompts")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .json and .md")
    p.add_argument("--prompts", type=Path, default=PROMPTS)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seeds", type=int, default=5, help="random orders per prompt")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.bootstrap = 5, 2, 200
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, prompts, filler = load(args.quick, args.prompts)
    graphs = {name: relprop.trace(model, rules=make()) for name, make in RULE_SETS.items()}
    # per prompt: target, scores, curves under each setting (train) or the chosen one (test)
    for p in prompts:
        with torch.no_grad():
            p["target"] = int(model(input_ids=p["ids"]).logits[0, -1].argmax())
        p["scores"], p["contrast"] = relevances(model, graphs, p["ids"], p["target"], args.seeds, p["id"])
    train = [p for p in prompts if p["split"] == "train"]
    test = [p for p in prompts if p["split"] == "test"]
    methods = [*RULE_SETS, IXG, RANDOM]
    train_abpc: dict[str, dict[str, float]] = {}
    sep: dict[str, float] = {}
    for setting in SETTINGS:
        areas = {name: [] for name in methods}
        for p in train:
            c = curves(model, p["ids"], p["target"], p["scores"], args.steps, setting, filler)
            for name in methods:
                areas[name].append(abpc(c[name]))
        train_abpc[setting] = {name: float(np.mean(a)) for name, a in areas.items()}
        sep[setting] = separation(areas)
    setting = max(SETTINGS, key=lambda s: sep[s])
    per: dict[str, dict[str, list[float]]] = {k: {name: [] for name in methods} for k in ("abpc", "norm", "mo", "le")}
    for p in test:
        c = curves(model, p["ids"], p["target"], p["scores"], args.steps, setting, filler)
        for name in methods:
            per["abpc"][name].append(abpc(c[name]))
            per["norm"][name].append(abpc(c[name], normalise=True))
            per["mo"][name].append(float(c[name][:, 0].mean()))
            per["le"][name].append(float(c[name][:, 1].mean()))
    rows = []
    rand = np.asarray(per["abpc"][RANDOM])
    for name in methods:
        mean, lo, hi = bootstrap(per["abpc"][name], args.bootstrap)
        nmean, nlo, nhi = bootstrap(per["norm"][name], args.bootstrap)
        dmean, dlo, dhi = bootstrap(list(np.asarray(per["abpc"][name]) - rand), args.bootstrap)
        rows.append(
            dict(
                method=name if name != RANDOM else f"random ({args.seeds} seeds)",
                abpc=mean,
                ci=[lo, hi],
                abpc_norm=nmean,
                ci_norm=[nlo, nhi],
                morf_mean=float(np.mean(per["mo"][name])),
                lerf_mean=float(np.mean(per["le"][name])),
                vs_random=dmean,
                vs_random_ci=[dlo, dhi],
                per_prompt=per["abpc"][name],
            )
        )
    contrasts = [p["contrast"]["contrast"] for p in test if p["contrast"]]
    coss = [p["contrast"]["cos"] for p in test if p["contrast"]]
    command = "benchmarks/llm_faithfulness.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = dict(
        command=command.strip(),
        model="tiny random Llama" if args.quick else "SmolLM2-135M-Instruct (float32)",
        machine=machine(args.threads),
        setting=setting,
        train_separation=sep,
        train_abpc=train_abpc,
        steps=args.steps,
        seeds=args.seeds,
        bootstrap=args.bootstrap,
        n_train=len(train),
        n_test=len(test),
        filler=filler,
        rows=rows,
        abslrp_contrast=dict(
            median=statistics.median(contrasts),
            min=min(contrasts),
            max=max(contrasts),
            cos_median=statistics.median(coss),
            per_prompt=contrasts,
        )
        if contrasts
        else None,
        prompts=[
            dict(id=p["id"], split=p["split"], prompt=p["prompt"], tokens=int(p["ids"].shape[1]), target=p["target"])
            for p in prompts
        ],
        seconds=time.perf_counter() - t0,
    )
    text = markdown(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = STEM + ("-quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(text)
    return result


if __name__ == "__main__":
    main()
