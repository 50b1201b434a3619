"""Long prompts on language models: AttnLRP's time and peak memory against a gradient pass, bf16 against float32.

Issue 21, point 4.  Models: SmolLM2-135M-Instruct (the shipped weights) and a Llama-3.2-1B-shaped model (random
weights, the real shape — hidden 2048, 32 heads, 8 key/value heads, MLP 8192, vocabulary 128256, tied
embeddings, llama3 RoPE scaling — but ``--layers`` decoder layers, 4 by default instead of 16: on two shared
cores the 16-layer model at 2048 tokens does not fit the time).  Every job of :data:`PLAN` (model, dtype,
prompt length, method; random token ids) runs in a fresh worker process:

* ``attnlrp``: relprop's ``AttnLRP`` explanation of the next-token logit (``relprop.targets.next_token``), or
* ``lxt``: LXT 2.1's AttnLRP (``benchmarks/lxt_oracle.py``'s ``lxt_llama``: LXT's ``llama.attnLRP`` patch map
  bound to a frozen copy of the model, its attention wrapper active only around the copy's forward),

each beside the **gradient pass** in the same process: the gradient of the same logit with respect to the
input embeddings (autograd; parameters frozen, the model called with ``inputs_embeds``).  Ratios are taken
within one process.  The model computes the logits of every position (what ``model(input_ids)`` does), in
all three methods.

Per process: load the model, read the resident set (``base MB``); the gradient pass once (its warm-up and
its memory reading); the method once (warm-up: relprop's first explanation includes the torch.export trace,
reported as ``first s``), once for its memory; then ``repeats`` (3) timed calls of each, alternating (the
median is reported).  Jobs marked ``single`` (the 1B shape at 2048 tokens) take their one timed run from the
memory call.

Peak memory (``peak MB``): what one call needs above the memory held before it, read as the process's
resident-set high-water mark (``VmHWM``, reset by writing 5 to ``/proc/self/clear_refs``) minus the
resident set before the call, with glibc's mmap threshold at 64 KiB so that every tensor gets its own
mapping and the resident set tracks live memory (torch's CPU allocator does not cache; tracemalloc does not
see it; ``ru_maxrss`` cannot be reset).  The gradient's peak is read before anything else ran in the
process, the method's after its warm-up (what relprop's trace keeps is held, reported as ``held MB``, not
part of the call's peak).  ``process ×``: (base + method peak) / (base + gradient peak), the model counted.

Agreement: SmolLM2 on a real text prompt (a passage repeated to 512 tokens), float32 and bfloat16 models
(the bf16 one loaded with ``dtype=torch.bfloat16``), the fp32 model's greedy next token explained by both:
the cosine of the two (tokens,) maps, for AttnLRP and, as a reference, for input × gradient.

Goals (the issue): peak memory ≤ 1.5× and time ≤ 1.3× the gradient pass's; bf16 maps agree with float32
(cosine ≥ 0.99).  ``--profile``: torch.profiler's top operators of one steady-state AttnLRP explanation
(SmolLM2, fp32, 512 tokens) and of one gradient pass.  ``--no-agreement`` (and no ``--profile``) keeps the
agreement (profile) already in the results file.

    nice -n 19 .venv/bin/python benchmarks/llm_long_prompts.py --profile     # an hour or more on 2 shared cores
    .venv/bin/python benchmarks/llm_long_prompts.py --quick                   # tiny random Llama, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import relprop

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
STEM = "llm-long-prompts-cpu"
TIME_GOAL, MEMORY_GOAL, COSINE_GOAL = 1.3, 1.5, 0.99
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

#: a real text (public-domain style facts), repeated to the prompt length for the bf16/fp32 agreement
PASSAGE = (
    "The river Danube rises in the Black Forest of Germany and flows east for almost three thousand "
    "kilometres, through Vienna, Bratislava, Budapest and Belgrade, before it reaches the Black Sea in "
    "Romania. Four capital cities lie on its banks, more than on any other river in the world. In the "
    "Middle Ages it was the main road of trade between western Europe and Constantinople, and boats "
    "carried salt, wine, grain and timber along it. Today barges still move goods between the ports, and "
    "a canal links the Danube to the Main and the Rhine, so that a ship can sail from the North Sea to "
    "the Black Sea. The delta of the river is one of the largest wetlands in Europe and is home to "
    "pelicans, herons and more than three hundred other kinds of birds. "
)
AGREEMENT_TAIL = " The river that flows through Vienna and Budapest is called the"


# -- models ------------------------------------------------------------------------------------------------------


def llama_1b_config(layers: int) -> Any:
    """Llama-3.2-1B's shape (hidden 2048, 32 heads, 8 key/value heads, MLP 8192, vocabulary 128256, tied
    embeddings, llama3 RoPE scaling) with ``layers`` decoder layers (the real model has 16)."""
    import transformers

    return transformers.LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        use_cache=False,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def tiny_config() -> Any:
    """A tiny random Llama (2 layers, hidden 64, vocabulary 1000): ``--quick`` and the smoke test."""
    import transformers

    return transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def build_model(name: str, dtype: torch.dtype, layers: int) -> Any:
    """``smollm2`` (shipped weights), ``llama1b`` (random weights, ``layers`` layers) or ``tiny``."""
    import transformers

    if name == "smollm2":
        model, _ = relprop.models.load_language_model(dtype=dtype)
    else:
        torch.manual_seed(0)
        config = llama_1b_config(layers) if name == "llama1b" else tiny_config()
        model = transformers.LlamaForCausalLM(config).to(dtype)
    model.eval().requires_grad_(False)
    return model


def model_label(name: str, layers: int) -> str:
    return {"smollm2": "SmolLM2-135M", "tiny": "tiny Llama"}.get(name, f"Llama-3.2-1B shape, {layers} layers")


# -- memory (as benchmarks/speed.py reads it) --------------------------------------------------------------------


def _mallopt(mmap_threshold: int, trim_threshold: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(key)


def resident_mb() -> float | None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        return _status_mb("VmRSS")
    except OSError:
        return None


def measured_call(fn: Callable[[], Any]) -> tuple[float, float | None, float | None]:
    """(seconds, peak MB above what was held before, the process's high-water mark MB) of one call of ``fn``."""
    _mallopt(64 << 10, 1 << 20)
    try:
        before = resident_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            reset = _status_mb("VmHWM") <= _status_mb("VmRSS") + 1.0
        except OSError:
            reset = False
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        if not reset or before is None:
            return seconds, None, None
        hwm = _status_mb("VmHWM")
        return seconds, max(hwm - before, 0.0), hwm
    finally:
        _mallopt(32 << 20, 64 << 20)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- the methods -------------------------------------------------------------------------------------------------


def gradient_call(model: Any, ids: torch.Tensor, target: int) -> Callable[[], torch.Tensor]:
    """∂ logit(target at the last position) / ∂ input embeddings, by autograd."""
    embed = model.get_input_embeddings()

    def gradient() -> torch.Tensor:
        with torch.no_grad():
            embeds = embed(ids)
        embeds.requires_grad_(True)
        with torch.enable_grad():
            score = model(inputs_embeds=embeds).logits[:, -1, target].sum()
            (grad,) = torch.autograd.grad(score, embeds)
        return grad

    return gradient


def input_x_gradient(model: Any, ids: torch.Tensor, target: int) -> torch.Tensor:
    """Token relevance (batch, tokens): embeddings × gradient, summed over the hidden dimension."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    grad = gradient_call(model, ids, target)()
    return (embeds * grad).sum(-1).float()


def attnlrp_call(graph: relprop.Graph, ids: torch.Tensor, target: int) -> Callable[[], torch.Tensor]:
    aim = relprop.targets.next_token(target)

    def explain() -> torch.Tensor:
        return graph.explain(dict(input_ids=ids), aim)

    return explain


def lxt_call(copy: Any, ids: torch.Tensor, target: int) -> Callable[[], torch.Tensor]:
    sys.path.insert(0, str(HERE))
    import lxt_oracle

    aim = relprop.targets.next_token(target)

    def explain() -> torch.Tensor:
        return lxt_oracle.token_gradient_x_input(copy, dict(input_ids=ids), aim)

    return explain


# -- one worker: a (model, dtype, length, method) cell ------------------------------------------------------------


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Gradient and ``job['method']`` in this process (see the module's docstring)."""
    _mallopt(32 << 20, 64 << 20)
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    dtype = DTYPES[job["dtype"]]
    model = build_model(job["model"], dtype, job["layers"])
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(job["length"])
    ids = torch.randint(0, vocab, (1, job["length"]), generator=gen)
    target = int(torch.randint(0, vocab, (1,), generator=gen))  # the timing does not depend on which logit
    base = resident_mb()
    grad = gradient_call(model, ids, target)
    out: dict[str, Any] = dict(job, parameters=sum(p.numel() for p in model.parameters()), base_mb=base)
    # the gradient's first call is its warm-up and its memory reading (nothing to trace)
    out["gradient_memory_s"], out["gradient_peak_mb"], out["gradient_hwm_mb"] = measured_call(grad)
    before = resident_mb()
    if job["method"] == "attnlrp":
        graph = relprop.trace(model, rules=relprop.rules.AttnLRP())
        method = attnlrp_call(graph, ids, target)
    else:
        sys.path.insert(0, str(HERE))
        import lxt_oracle

        method = lxt_call(lxt_oracle.lxt_llama(model), ids, target)
    out["method_first_s"] = timed(method)
    after = resident_mb()
    out["held_mb"] = None if before is None or after is None else max(after - before, 0.0)
    out["method_memory_s"], out["method_peak_mb"], out["method_hwm_mb"] = measured_call(method)
    if job["method"] == "attnlrp":
        out["trace_count"] = graph.trace_count
    grad_times, method_times = [], []
    for _ in range(job["repeats"]):
        grad_times.append(timed(grad))
        method_times.append(timed(method))
    if job["single"]:
        grad_times, method_times = [out["gradient_memory_s"]], [out["method_memory_s"]]
    out["gradient_times_s"], out["method_times_s"] = grad_times, method_times
    return out


def agreement(model_name: str, length: int, threads: int) -> dict[str, Any]:
    """Cosine of the bf16 and fp32 token maps (AttnLRP and input × gradient) on a real text prompt."""
    torch.set_num_threads(threads)
    fp32 = build_model(model_name, torch.float32, 0)
    if model_name == "smollm2":
        _, tok = relprop.models.load_language_model()
        tail = tok(AGREEMENT_TAIL, return_tensors="pt").input_ids
        text = tok(PASSAGE * (length // 100 + 2), return_tensors="pt").input_ids
        ids = torch.cat([text[:, : length - tail.shape[1]], tail], 1)
        prompt = "PASSAGE repeated, cut to fit, + AGREEMENT_TAIL"
    else:
        ids = torch.randint(1, fp32.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
        prompt = "random token ids"
    with torch.no_grad():
        target = int(fp32(ids).logits[0, -1].argmax())
    maps: dict[str, dict[str, torch.Tensor]] = {}
    for name, dtype in DTYPES.items():
        model = fp32 if dtype == torch.float32 else build_model(model_name, dtype, 0)
        graph = relprop.trace(model, rules=relprop.rules.AttnLRP())
        maps[name] = {
            "AttnLRP": attnlrp_call(graph, ids, target)()[0].float(),
            "input×gradient": input_x_gradient(model, ids, target)[0],
        }
        del graph
    rows = []
    for method in ("AttnLRP", "input×gradient"):
        a, b = maps["float32"][method], maps["bfloat16"][method]
        cos = float(F.cosine_similarity(a.double(), b.double(), dim=0))
        top = set(a.abs().topk(10).indices.tolist()) & set(b.abs().topk(10).indices.tolist())
        rows.append(dict(method=method, cosine=cos, top10_overlap=len(top), passed=cos >= COSINE_GOAL))
    return dict(model=model_name, tokens=int(ids.shape[1]), target=target, prompt=prompt, rows=rows)


def profile(model_name: str, length: int, threads: int, top: int = 12) -> dict[str, Any]:
    """torch.profiler's top operators of one steady-state AttnLRP explain and one gradient pass: by self CPU time,
    and by the memory they allocate (``profile_memory``: the bytes each operator's outputs take, summed)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(threads)
    model = build_model(model_name, torch.float32, 0)
    gen = torch.Generator().manual_seed(length)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen)
    target = 42
    calls = {
        "gradient": gradient_call(model, ids, target),
        "AttnLRP": attnlrp_call(relprop.trace(model, rules=relprop.rules.AttnLRP()), ids, target),
    }
    result: dict[str, Any] = dict(model=model_name, tokens=length)
    for name, fn in calls.items():
        fn()
        with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        allocated = [e for e in events if e.self_cpu_memory_usage > 0]
        total_mb = sum(e.self_cpu_memory_usage for e in allocated) / 2**20
        by_memory = sorted(allocated, key=lambda e: e.self_cpu_memory_usage, reverse=True)[: top // 2]
        result[name] = dict(
            total_s=total / 1e6,
            top=[
                dict(op=e.key, self_s=e.self_cpu_time_total / 1e6, share=e.self_cpu_time_total / total, calls=e.count)
                for e in ranked
            ],
            allocated_mb=total_mb,
            top_memory=[dict(op=e.key, mb=e.self_cpu_memory_usage / 2**20, calls=e.count) for e in by_memory],
        )
    return result


# -- the run -----------------------------------------------------------------------------------------------------


#: the full run's cells, in this order (a run cut short keeps the first): (model, dtype, tokens, methods)
PLAN = [
    ("smollm2", "float32", 512, ("attnlrp", "lxt")),
    ("smollm2", "bfloat16", 512, ("attnlrp", "lxt")),
    ("llama1b", "float32", 512, ("attnlrp", "lxt")),
    ("smollm2", "float32", 2048, ("attnlrp",)),
    ("llama1b", "bfloat16", 512, ("attnlrp",)),
    ("llama1b", "float32", 2048, ("attnlrp",)),
    ("smollm2", "bfloat16", 2048, ("attnlrp",)),
    ("smollm2", "float32", 2048, ("lxt",)),
    ("llama1b", "bfloat16", 2048, ("attnlrp",)),
]


def cells(quick: bool, layers: int, big_lengths: list[int]) -> list[dict[str, Any]]:
    """The (model, dtype, length, method) jobs, in :data:`PLAN`'s order; the 1B shape at ``big_lengths`` only."""
    if quick:
        return [
            dict(model="tiny", layers=2, dtype="float32", length=32, repeats=1, single=False, method=m)
            for m in ("attnlrp", "lxt")
        ]
    out = []
    for model, dtype, length, methods in PLAN:
        if model == "llama1b" and length not in big_lengths:
            continue
        big = model == "llama1b" and length >= 2048
        for method in methods:
            out.append(dict(model=model, layers=layers, dtype=dtype, length=length, repeats=1 if big else 3))
            out[-1].update(single=big, method=method)
    return out


def run_job(job: dict[str, Any], inline: bool) -> dict[str, Any]:
    """``job`` in a fresh process (or here, with ``inline``); an ``error`` entry when it fails."""
    if inline:
        try:
            return worker(job)
        except Exception as e:  # noqa: BLE001 - a cell that fails is reported, the others still run
            return dict(job, error=f"{type(e).__name__}: {e}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return dict(job, error=f"exit {done.returncode}: {done.stderr[-1500:]}")
    return json.loads(lines[-1])


def summarise(raw: dict[str, Any]) -> dict[str, Any] | None:
    """One table row from a worker's measurements."""
    if raw.get("error"):
        return None
    g, m = statistics.median(raw["gradient_times_s"]), statistics.median(raw["method_times_s"])
    gp, mp, base = raw["gradient_peak_mb"], raw["method_peak_mb"], raw["base_mb"]
    mem = None if gp is None or mp is None or gp <= 0 else mp / gp
    proc = None if gp is None or mp is None or base is None else (base + mp) / (base + gp)
    return dict(
        model=model_label(raw["model"], raw["layers"]),
        dtype=raw["dtype"],
        tokens=raw["length"],
        method="AttnLRP (relprop)" if raw["method"] == "attnlrp" else "AttnLRP (LXT 2.1)",
        gradient_s=g,
        method_s=m,
        time_ratio=m / g,
        first_s=raw["method_first_s"],
        runs=len(raw["method_times_s"]),
        gradient_peak_mb=gp,
        method_peak_mb=mp,
        memory_ratio=mem,
        base_mb=base,
        held_mb=raw["held_mb"],
        process_ratio=proc,
        time_passed=m / g <= TIME_GOAL,
        memory_passed=None if mem is None else mem <= MEMORY_GOAL,
    )


def machine(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        torch_threads=threads,
        niceness=os.nice(0),
        torch=torch.__version__,
        python=platform.python_version(),
    )


def _f(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def _ok(passed: bool | None) -> str:
    return "" if passed is None else ("yes" if passed else "**no**")


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Long prompts: AttnLRP against a gradient pass (CPU)",
        "",
        f"`{result['command']}` — {m['cpu']}, {m['cores']} cores, torch {m['torch']} on {m['torch_threads']} threads,"
        f" niceness {m['niceness']} (a machine shared with other jobs: ratios are within one process).",
        "",
        f"Goals: time ≤ {TIME_GOAL}×, peak memory ≤ {MEMORY_GOAL}× the gradient pass's (input-embedding gradient of "
        "the same next-token logit, autograd). `peak MB`: one call's peak above what the process held before it "
        "(VmHWM); `process ×`: with the model (base) counted; `held MB`: what the method keeps after its first call "
        "(relprop's trace, LXT's model copy); `first s`: the first call (relprop: torch.export trace included).",
        "",
        "| model | dtype | tokens | method | gradient s | method s | × time | first s | runs "
        "| grad peak MB | method peak MB | × memory | process × | held MB | time goal | memory goal |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['tokens']} | {r['method']} | {r['gradient_s']:.2f} "
            f"| {r['method_s']:.2f} | {r['time_ratio']:.2f} | {r['first_s']:.2f} | {r['runs']} "
            f"| {_f(r['gradient_peak_mb'], '.0f')} | {_f(r['method_peak_mb'], '.0f')} | {_f(r['memory_ratio'], '.2f')} "
            f"| {_f(r['process_ratio'], '.2f')} | {_f(r['held_mb'], '.0f')} | {_ok(r['time_passed'])} "
            f"| {_ok(r['memory_passed'])} |"
        )
    for e in result["errors"]:
        lines.append(f"\nFailed: {e['model']} {e['dtype']} {e['length']} {e['method']}: `{e['error'][-300:]}`")
    a = result.get("agreement")
    if a:
        lines += [
            "",
            f"## bf16 against float32 ({a['model']}, {a['tokens']} tokens: {a['prompt']}; target token {a['target']})",
            "",
            f"Measured by `{a.get('command', result['command'])}`.",
            "",
            "| method | cosine | top-10 overlap | cosine ≥ 0.99 |",
            "|---|---:|---:|---|",
        ]
        for r in a["rows"]:
            lines.append(f"| {r['method']} | {r['cosine']:.4f} | {r['top10_overlap']}/10 | {_ok(r['passed'])} |")
    p = result.get("profile")
    if p:
        lines += ["", f"## Profile ({p['model']}, float32, {p['tokens']} tokens; torch.profiler, self CPU time)", ""]
        if p.get("command"):
            lines += [f"Measured by `{p['command']}`.", ""]
        for name in ("AttnLRP", "gradient"):
            lines += [
                f"{name}: {p[name]['total_s']:.2f} s profiled",
                "",
                "| op | self s | share | calls |",
                "|---|---:|---:|---:|",
            ]
            for t in p[name]["top"]:
                lines.append(f"| `{t['op']}` | {t['self_s']:.3f} | {t['share']:.1%} | {t['calls']} |")
            if "top_memory" in p[name]:
                lines += [
                    "",
                    f"{name}: {p[name]['allocated_mb']:.0f} MB allocated by operators in one call (freed or not); "
                    "the largest:",
                    "",
                    "| op | MB allocated | calls |",
                    "|---|---:|---:|",
                ]
                for t in p[name]["top_memory"]:
                    lines.append(f"| `{t['op']}` | {t['mb']:.0f} | {t['calls']} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny random Llama, 32 tokens, in this process")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .json and .md")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the Llama-3.2-1B-shaped model")
    p.add_argument("--big-lengths", default="512,2048", help="prompt lengths for the 1B-shaped model")
    p.add_argument("--no-lxt", action="store_true")
    p.add_argument("--no-agreement", action="store_true")
    p.add_argument("--profile", action="store_true", help="also profile AttnLRP and the gradient (SmolLM2, 512)")
    p.add_argument("--profile-tokens", type=int, default=512, help="prompt length of the profile")
    p.add_argument("--profile-only", action="store_true", help="only the profile, into the existing results")
    p.add_argument("--only", default="", help="run only cells whose model name contains this (smollm2, llama1b)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    big = [int(n) for n in args.big_lengths.split(",") if n]
    jobs = [c for c in cells(args.quick, args.layers, big) if args.only in c["model"]]
    command = "benchmarks/llm_long_prompts.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
    result: dict[str, Any] = dict(
        command=command.strip(),
        machine=machine(args.threads),
        goals=dict(time=TIME_GOAL, memory=MEMORY_GOAL, cosine=COSINE_GOAL),
        rows=[],
        raw=[],
        errors=[],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = STEM + ("-quick" if args.quick else "")
    if args.profile_only:  # a profile added to the results already there
        result = json.loads((args.out / f"{stem}.json").read_text())
        result["profile"] = profile("tiny" if args.quick else "smollm2", args.profile_tokens, args.threads)
        result["profile"]["command"] = command.strip()
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(markdown(result))
        return result

    def write() -> str:
        text = markdown(result)
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(text)
        return text

    # kept from the results already there unless measured again (--no-agreement, no --profile)
    earlier = args.out / f"{stem}.json"
    if earlier.exists() and not args.quick:
        with contextlib.suppress(ValueError):
            old = json.loads(earlier.read_text())
            for key in ("agreement", "profile"):
                if key in old:
                    result[key] = old[key]
                    result[key].setdefault("command", old.get("profile_command" if key == "profile" else "command"))
    # the agreement and the profile first: cheap, and a run cut short keeps them
    if not args.no_agreement:
        result["agreement"] = agreement("tiny" if args.quick else "smollm2", 32 if args.quick else 512, args.threads)
        result["agreement"]["command"] = result["command"]
        write()
    if args.profile:
        result["profile"] = profile("tiny" if args.quick else "smollm2", args.profile_tokens, args.threads)
        result["profile"]["command"] = result["command"]
        write()
    for cell in jobs:
        if cell["method"] == "lxt" and args.no_lxt:
            continue
        job = dict(cell, threads=args.threads)
        t0 = time.perf_counter()
        raw = run_job(job, inline=args.quick)
        print(f"  {cell['model']} {cell['dtype']} {cell['length']} {cell['method']}: {time.perf_counter() - t0:.0f} s")
        (result["errors"] if raw.get("error") else result["raw"]).append(raw)
        result["rows"] = [r for r in map(summarise, result["raw"]) if r is not None]
        write()
    text = write()
    print(text)
    return result


if __name__ == "__main__":
    main()
