"""relprop beside the other LRP tools, on the models of issue 24: time, memory, coverage and map agreement.

    DYNAMICLRP_PATH=/path/to/dynamicLRP nice -n 19 .venv/bin/python benchmarks/peers.py \\
        [--dynamiclrp PATH] [--models vgg16,resnet50,vit_b_16,gpt2,roberta] [--tools relprop,dynamiclrp,lxt,zennit]
        [--batches 1,8] [--batch-8 vgg16,resnet50,vit_b_16] [--repeats 5] [--json out.json] [--markdown out.md]
        [--append] [--quick]

Tools (each (model, tool) pair runs in a fresh subprocess, so that one tool's imports, caches and kept graphs
never reach another's memory reading):

* ``relprop``: ``relprop.trace(model, rules).explain(inputs, target)``: ``rules.Epsilon()`` (LRP-ε, ε = 1e-6) on
  every model, ``rules.AttnLRP()`` on the transformers, ``rules.EpsilonPlusFlat()`` on VGG16;
* ``dynamiclrp``: DynamicLRP (github.com/keeinlev/dynamicLRP, MIT; Lee and Arias, arXiv 2512.07010), *never
  vendored here*: clone it yourself and pass its path (``--dynamiclrp PATH`` or ``DYNAMICLRP_PATH``; the repository
  root or its ``src``); without it the tool is skipped with a message. It needs ``einops`` (imported by its
  MosaicBERT module). Its ``LRPEngine()`` (ε, its default) and ``LRPEngine(use_attn_lrp=True)`` (its AttnLRP) are
  called as its README does: forward with autograd on, then ``engine.run(scores)`` with the one-hot target as the
  starting relevance; the map is the relevance of the input leaf (``params_to_interpret``: the image, or the
  word-embedding output fed as ``inputs_embeds``). It walks the autograd graph of the parameters, so they require
  gradients during its calls (switched on and off outside the timer; the gradient pass runs frozen);
* ``lxt``: LXT 2.1 (``pip install --no-deps lxt==2.1``) through ``benchmarks/lxt_oracle.py``: its GPT-2 AttnLRP
  map on GPT-2, its BERT map attempted on RoBERTa; it has no patch for CNNs or timm's ViT;
* ``zennit``: Zennit 0.5.1 on VGG16 (no batch norm, so no canonizer is needed): ε on every convolution and
  linear layer (ε = 1e-6) and its ``EpsilonPlusFlat`` composite. Its ResNet canonizer is written for
  torchvision's ResNet (``benchmarks/speed.py`` has those rows), not timm's.

Models (random weights after ``torch.manual_seed(0)``, float32, eval mode, ``torch.set_num_threads(1)``): timm
``vgg16``, ``resnet50``, ``vit_base_patch16_224`` (224² images), GPT-2 small (64 tokens, the next token
explained) and RoBERTa-base (``RobertaForSequenceClassification(RobertaConfig())``, 128 tokens): the models and
inputs of ``benchmarks/speed.py`` (``build_case``), RoBERTa added here. Batch 1 and 8 on the three image models,
1 on the language models (the issue's table); ``--batches`` and ``--batch-8`` narrow that. ``--append`` adds
the run to an existing ``--json`` (a list of runs, each with its command) and ``--markdown``.

Per (model, tool, batch): the gradient pass (``speed.method_calls``: forward + input gradient of the target
scores, the unit) and every method of the tool: one warm-up call each, one call whose memory is read
(``speed.peak_memory_mb``: the process's RSS high-water mark above the RSS before the call), then ``--repeats``
interleaved rounds; the median. ``process MB``: the RSS held right before the call (model, libraries, whatever
the tool keeps between calls) plus the call's peak; for the gradient pass the RSS after building the model plus
its peak. ``worker max RSS``: the subprocess's own ``ru_maxrss`` at the end (tracing and warm-ups included).

Agreement: per-sample cosine between flattened maps at batch 1 (text: token relevance, the word-embedding
output's relevance summed over the hidden dimension). On VGG16 every tool also explains a bias-free copy
(biases zeroed), where ε means the same on every tool; elsewhere the pairs compare whatever each tool's rule
set does (marked as coinciding or not in the table).

``--quick``: tiny stand-ins of the same families (``speed.build_case(..., quick=True)``) and one repeat; a smoke
test, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402 - benchmarks/ is put on the path above

import relprop  # noqa: E402
from relprop import rules  # noqa: E402

MODELS = ["vgg16", "resnet50", "vit_b_16", "gpt2", "roberta"]
TOOLS = ["relprop", "dynamiclrp", "lxt", "zennit"]
SPEED_NAMES = {"vgg16": "timm_vgg16", "resnet50": "timm_resnet50", "vit_b_16": "timm_vit_b_16", "gpt2": "gpt2"}
MODEL_BATCHES = {"vgg16": (1, 8), "resnet50": (1, 8), "vit_b_16": (1, 8), "gpt2": (1,), "roberta": (1,)}
TRANSFORMERS = {"vit_b_16", "gpt2", "roberta"}
EPS, ATTN, EPF = "LRP-ε", "AttnLRP", "EpsilonPlusFlat"
GRADIENT = speed.GRADIENT
DYNAMICLRP_URL = "https://github.com/keeinlev/dynamicLRP"
SKIP_DYNAMICLRP = (
    "DynamicLRP skipped: no checkout given. It is not bundled with relprop; fetch it yourself "
    f"(git clone {DYNAMICLRP_URL}; pip install einops) and pass --dynamiclrp PATH or set DYNAMICLRP_PATH."
)
#: pairs of (tool, method) whose maps are compared, and whether their rules coincide
AGREEMENT = [
    (("relprop", EPS), ("dynamiclrp", EPS), {"vgg16"}),
    (("relprop", EPS), ("zennit", EPS), {"vgg16"}),
    (("dynamiclrp", EPS), ("zennit", EPS), {"vgg16"}),
    (("relprop", EPF), ("zennit", EPF), {"vgg16"}),
    (("relprop", ATTN), ("lxt", ATTN), {"gpt2", "roberta", "vit_b_16"}),
    (("relprop", ATTN), ("dynamiclrp", ATTN), set()),
]


# -- where a tool applies ----------------------------------------------------------------------------------------


def not_applicable(model: str, tool: str) -> str | None:
    """Why ``tool`` is not run on ``model`` (None where it is)."""
    if tool == "lxt" and model not in TRANSFORMERS:
        return "n/a: LXT's patches are for transformers"
    if tool == "lxt" and model == "vit_b_16":
        return "n/a: LXT 2.1 has no patch for timm's ViT (its vit_torch patch is for torchvision's)"
    if tool == "zennit" and model != "vgg16":
        if model == "resnet50":
            return "n/a here: Zennit's ResNet canonizer is for torchvision's ResNet (see speed.py's tv_resnet50 rows)"
        return "n/a: Zennit has no transformer composite"
    return None


def dynamiclrp_source(path: str | None, env: dict[str, str] | None = None) -> tuple[Path | None, str | None]:
    """The folder holding DynamicLRP's ``lrp_engine`` package, or None and the message saying why it is skipped."""
    env = os.environ if env is None else env
    given = path or env.get("DYNAMICLRP_PATH")
    if not given:
        return None, SKIP_DYNAMICLRP
    root = Path(given).expanduser().resolve()
    for candidate in (root / "src", root):
        if (candidate / "lrp_engine" / "__init__.py").is_file():
            return candidate, None
    return None, f"DynamicLRP skipped: no lrp_engine package under {root} (expected a checkout of {DYNAMICLRP_URL})."


# -- models ------------------------------------------------------------------------------------------------------


def build(model: str, quick: bool) -> speed.Case:
    """The model called ``model``: ``speed.build_case``'s, or RoBERTa-base (a tiny one with ``quick``)."""
    if model != "roberta":
        case = speed.build_case(SPEED_NAMES[model], quick)
        case.name = model
        return case
    import transformers

    torch.manual_seed(0)
    small = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    config = transformers.RobertaConfig(**small) if quick else transformers.RobertaConfig()
    net = transformers.RobertaForSequenceClassification(config).eval()
    return speed.Case(model, net, speed._text_inputs(config.vocab_size, 16 if quick else 128), text=True)


# -- the tools' calls --------------------------------------------------------------------------------------------


def _one_hot(scores: Tensor, target: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(target, scores.shape[-1]).to(scores.dtype)


class DynamicCall:
    """One DynamicLRP explanation per call, as its README runs it; returns the input leaf's relevance."""

    def __init__(self, engine_cls: Any, kwargs: dict[str, Any], case: speed.Case, inputs: Any, target: Tensor):
        self.engine_cls, self.kwargs, self.case, self.inputs, self.target = engine_cls, kwargs, case, inputs, target
        self.engine: Any = None

    def __call__(self) -> Tensor:
        model, case = self.case.model, self.case
        if case.text:
            with torch.no_grad():
                leaf = model.get_input_embeddings()(self.inputs["input_ids"])
        else:
            leaf = self.inputs.detach().clone()
        leaf.requires_grad_(True)
        if self.engine is None:  # its first run records the graph's order; later runs reuse it
            self.engine = self.engine_cls(params_to_interpret=[leaf], **self.kwargs)
        with torch.enable_grad():
            out = model(inputs_embeds=leaf, attention_mask=self.inputs["attention_mask"]) if case.text else model(leaf)
        scores = speed._scores(case, out)
        self.engine.starting_relevance = _one_hot(scores, self.target)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = self.engine.run(scores)
        if not (isinstance(result, tuple) and len(result) == 2):
            said = " ".join(printed.getvalue().split())[:200]
            raise RuntimeError(f"its graph walk stopped without relevance ({said or 'nothing printed'})")
        found = (_tensor(r) for r in result[1])
        relevance = next((r for r in found if r is not None and r.shape == leaf.shape), None)
        if relevance is None:
            raise RuntimeError("no relevance for the input")
        return relevance.detach().sum(-1) if case.text else relevance.detach()


def _tensor(relevance: Any) -> Tensor | None:
    """A relevance DynamicLRP returns: a tensor, or (where the leaf feeds a sum) a completed promise holding it."""
    if isinstance(relevance, Tensor):
        return relevance
    rin = getattr(relevance, "rin", None) if getattr(relevance, "complete", False) else None
    return rin if isinstance(rin, Tensor) else None


@contextlib.contextmanager
def _trainable(model: nn.Module) -> Iterator[None]:
    """Parameters require gradients inside (DynamicLRP walks their autograd nodes); frozen again after."""
    model.requires_grad_(True)
    try:
        yield
    finally:
        model.requires_grad_(False)


def tool_calls(
    tool: str, case: speed.Case, inputs: Any, target: Tensor, dynamiclrp: Path | None
) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]], dict[str, str]]:
    """The tool's methods on ``case``: zero-argument calls returning the map, their setups, and setup errors."""
    model = case.model
    calls: dict[str, Callable[[], Any]] = {}
    setups: dict[str, Callable[[], Any]] = {}
    errors: dict[str, str] = {}
    transformer = case.name in TRANSFORMERS
    if tool == "relprop":
        makers: dict[str, Callable[[], rules.RuleSet]] = {EPS: rules.Epsilon}
        if transformer:
            makers[ATTN] = rules.AttnLRP
        if case.name == "vgg16":
            makers[EPF] = rules.EpsilonPlusFlat
        graphs = {m: relprop.trace(model, make()) for m, make in makers.items()}
        every = speed.method_calls(case, inputs, target, graphs)
        calls = {m: every[m] for m in graphs}
    elif tool == "dynamiclrp":
        if dynamiclrp is None:
            raise RuntimeError(SKIP_DYNAMICLRP)
        sys.path.insert(0, str(dynamiclrp))
        from lrp_engine import LRPEngine  # type: ignore[import-not-found]

        variants = {EPS: {}} | ({ATTN: {"use_attn_lrp": True}} if transformer else {})
        for method, kwargs in variants.items():
            calls[method] = DynamicCall(LRPEngine, kwargs, case, inputs, target)
            setups[method] = lambda: _trainable(model)
    elif tool == "lxt":
        import lxt_oracle

        target_of: Any = relprop.targets.next_token(target.tolist()) if case.decoder else target
        try:
            copy = lxt_oracle.lxt_gpt2(model) if case.name == "gpt2" else lxt_oracle.lxt_bert(model)
        except Exception as err:  # noqa: BLE001 - a tool failing on a model is a coverage result
            errors[ATTN] = _reason(err)
        else:
            calls[ATTN] = lambda: lxt_oracle.token_gradient_x_input(copy, inputs, target_of)
    elif tool == "zennit":
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat, LayerMapComposite
        from zennit.rules import Epsilon
        from zennit.types import Convolution, Linear

        scores = speed._scores(case, speed.method_calls(case, inputs, target, {})["forward"]())
        classes = scores.shape[-1]
        epsilon = LayerMapComposite([(Convolution, Epsilon(1e-6)), (Linear, Epsilon(1e-6))])
        for method, composite in ((EPS, epsilon), (EPF, EpsilonPlusFlat())):
            attributor = Gradient(model, composite)
            calls[method] = speed._zennit_call(attributor, inputs, target, classes)
            setups[method] = lambda a=attributor: a
    else:
        raise ValueError(f"unknown tool {tool!r}; choose from {', '.join(TOOLS)}")
    return calls, setups, errors


def _reason(err: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:240]


# -- one (model, tool) in this process ---------------------------------------------------------------------------


def _targets(case: speed.Case, inputs: Any) -> Tensor:
    with torch.no_grad():
        out = case.model(**inputs) if case.text else case.model(inputs)
    return speed._scores(case, out).argmax(-1)


def _rss_mb() -> float | None:
    return speed.resident_mb("cpu")


def measure(
    model: str, tool: str, batches: list[int], repeats: int, quick: bool = False, dynamiclrp: Path | None = None
) -> dict[str, Any]:
    """Time and memory of ``tool``'s methods and of the gradient pass on ``model``; the maps at the first batch.

    Returns ``rows`` (one per batch and method, the gradient pass included), ``maps`` (method → map at
    ``batches[0]``; on VGG16 also of a bias-free copy, under ``"<method> bias-free"``) and ``worker_max_rss_mb``.
    """
    speed._timing_malloc()
    case = build(model, quick)
    case.model.requires_grad_(False)
    base = _rss_mb()
    rows: list[dict[str, Any]] = []
    maps: dict[str, Tensor] = {}
    for batch in batches:
        inputs = case.make_inputs(batch)
        target = _targets(case, inputs)
        calls = {GRADIENT: speed.method_calls(case, inputs, target, {})[GRADIENT]}
        setups: dict[str, Callable[[], Any]] = {GRADIENT: contextlib.nullcontext}
        try:
            extra, extra_setups, errors = tool_calls(tool, case, inputs, target, dynamiclrp)
        except Exception as err:  # noqa: BLE001 - the tool could not be set up: every method fails alike
            extra, extra_setups, errors = {}, {}, {"setup": _reason(err)}
        calls |= extra
        setups |= {m: extra_setups.get(m, contextlib.nullcontext) for m in extra}
        found = {m: _row(model, tool, batch, m) for m in calls} | {
            m: _row(model, tool, batch, m, error=e) for m, e in errors.items()
        }
        live: dict[str, Callable[[], Any]] = {}
        for method, fn in calls.items():  # the gradient pass first: its memory is read before any tool state exists
            try:
                with setups[method]():
                    out = fn()
                    held = base if method == GRADIENT else _rss_mb()
                    peak = speed.peak_memory_mb(fn, "cpu")
            except Exception as err:  # noqa: BLE001 - a failing method is reported, the run goes on
                found[method]["error"] = _reason(err)
                continue
            live[method] = fn
            found[method]["peak_mb"] = peak
            found[method]["process_mb"] = None if held is None or peak is None else held + peak
            if batch == batches[0] and method != GRADIENT:
                maps[method] = out.detach().float().cpu()
        times: dict[str, list[float]] = {m: [] for m in live}
        for _ in range(repeats):
            for method, fn in live.items():
                with setups[method]():
                    times[method].append(speed.timed(fn, "cpu"))
        for method, ts in times.items():
            found[method]["times_s"] = ts
            found[method]["median_s"] = statistics.median(ts) if ts else None
        _ratios(list(found.values()))
        rows += found.values()
        del calls, live, extra
    if model == "vgg16":
        maps |= _bias_free_maps(case, tool, batches[0], dynamiclrp)
    return {"rows": rows, "maps": maps, "worker_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _bias_free_maps(case: speed.Case, tool: str, batch: int, dynamiclrp: Path | None) -> dict[str, Tensor]:
    """Every method's map on the model with its biases zeroed (fresh traces and engines)."""
    with torch.no_grad():
        for name, p in case.model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    inputs = case.make_inputs(batch)
    target = _targets(case, inputs)
    maps: dict[str, Tensor] = {}
    with contextlib.suppress(Exception):
        calls, setups, _ = tool_calls(tool, case, inputs, target, dynamiclrp)
        for method, fn in calls.items():
            with contextlib.suppress(Exception), setups.get(method, contextlib.nullcontext)():
                maps[f"{method} bias-free"] = fn().detach().float().cpu()
    return maps


def _row(model: str, tool: str, batch: int, method: str, error: str | None = None) -> dict[str, Any]:
    return {
        "model": model,
        "tool": "–" if method == GRADIENT else tool,
        "batch": batch,
        "method": method,
        "median_s": None,
        "times_s": [],
        "ratio": None,
        "peak_mb": None,
        "memory_ratio": None,
        "process_mb": None,
        "process_ratio": None,
        "error": error,
    }


def _ratios(rows: list[dict[str, Any]]) -> None:
    grad = next(r for r in rows if r["method"] == GRADIENT)
    for row in rows:
        for value, unit, key in (
            ("median_s", "median_s", "ratio"),
            ("peak_mb", "peak_mb", "memory_ratio"),
            ("process_mb", "process_mb", "process_ratio"),
        ):
            if row[value] is not None and grad[unit]:
                row[key] = row[value] / grad[unit]


# -- the whole run: one subprocess per (model, tool) -------------------------------------------------------------


def _worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    dynamiclrp = Path(args.dynamiclrp) if args.dynamiclrp else None
    model, tool = args.worker
    result = measure(model, tool, _batches(args.batches, model), args.repeats, args.quick, dynamiclrp)
    torch.save(result.pop("maps"), args.maps)
    Path(args.out).write_text(json.dumps(result) + "\n")


def _batches(spec: str, model: str, batch_8: str = ",".join(MODELS)) -> list[int]:
    """The batch sizes ``model`` runs at: those asked for and in the issue's table (8 only on ``batch_8``)."""
    asked = [int(b) for b in spec.split(",") if b.strip()]
    found = [b for b in asked if b in MODEL_BATCHES[model] and (b != 8 or model in batch_8.split(","))]
    return found or [min(asked)]


def run_pair(
    model: str, tool: str, args: argparse.Namespace, dynamiclrp: Path | None, folder: Path
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Run ``measure`` for one (model, tool) in a fresh subprocess; a crash or timeout becomes an error row."""
    out, maps = folder / f"{model}-{tool}.json", folder / f"{model}-{tool}.pt"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", model, tool, "--out", str(out)]
    cmd += ["--maps", str(maps), "--batches", ",".join(map(str, _batches(args.batches, model, args.batch_8)))]
    cmd += ["--repeats", str(args.repeats)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--dynamiclrp", str(dynamiclrp)] if dynamiclrp else []
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout, check=False)
        failure = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[-1][:240]
    except subprocess.TimeoutExpired:
        failure = f"timed out after {args.worker_timeout} s"
    if failure is not None or not out.exists():
        row = _row(
            model, tool, _batches(args.batches, model, args.batch_8)[0], "(worker)", error=f"worker failed: {failure}"
        )
        return {"rows": [row], "worker_max_rss_mb": None, "wall_s": time.perf_counter() - t0}, {}
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result, torch.load(maps)


def cosine(a: Tensor, b: Tensor) -> float:
    """Mean over samples of the cosine between the flattened maps."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def agreement(maps: dict[tuple[str, str], dict[str, Tensor]]) -> list[dict[str, Any]]:
    """Cosines between the maps of the pairs in ``AGREEMENT``, where both ran (bias-free on VGG16)."""
    found = []
    for (tool_a, method_a), (tool_b, method_b), coincide in AGREEMENT:
        for model in MODELS:
            suffix = " bias-free" if model == "vgg16" else ""
            a = maps.get((model, tool_a), {}).get(method_a + suffix)
            b = maps.get((model, tool_b), {}).get(method_b + suffix)
            if a is None or b is None or a.shape != b.shape:
                continue
            found.append(
                {
                    "model": model + (" (bias-free)" if suffix else ""),
                    "a": f"{tool_a} {method_a}",
                    "b": f"{tool_b} {method_b}",
                    "cosine": cosine(a, b),
                    "rules_coincide": model in coincide,
                }
            )
    return found


def coverage(rows: list[dict[str, Any]], skipped: dict[tuple[str, str], str]) -> dict[str, dict[str, str]]:
    """model → tool → "runs" or the first one-line reason it did not."""
    table: dict[str, dict[str, str]] = {}
    for (model, tool), why in skipped.items():
        table.setdefault(model, {})[tool] = why
    for row in rows:
        if row["method"] == GRADIENT:
            continue
        cell = table.setdefault(row["model"], {})
        label = f"{row['method']}: {row['error']}" if row["error"] else None
        prior = cell.get(row["tool"])
        if label and (prior is None or prior.startswith("runs")):
            cell[row["tool"]] = "fails: " + label
        elif not label and prior is None:
            cell[row["tool"]] = "runs"
    return table


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every (model, tool) pair in its own subprocess; returns the JSON-able result."""
    dynamiclrp, why = dynamiclrp_source(args.dynamiclrp)
    if why and "dynamiclrp" in args.tools:
        log(why)
    rows: list[dict[str, Any]] = []
    maps: dict[tuple[str, str], dict[str, Tensor]] = {}
    skipped: dict[tuple[str, str], str] = {}
    workers: dict[str, float | None] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="relprop-peers-") as tmp:
        for model in args.models:
            for tool in args.tools:
                reason = not_applicable(model, tool) or (why if tool == "dynamiclrp" else None)
                if reason:
                    skipped[(model, tool)] = reason
                    continue
                log(f"{model} × {tool} …")
                result, found = run_pair(model, tool, args, dynamiclrp, Path(tmp))
                maps[(model, tool)] = found
                workers[f"{model} × {tool}"] = result["worker_max_rss_mb"]
                for row in result["rows"]:
                    row["worker_max_rss_mb"] = result["worker_max_rss_mb"]
                    log("  " + _row_line(row))
                rows += result["rows"]
                log(f"  ({result['wall_s']:.0f} s)")
    info = speed.machine(["cpu"])
    info["torch_threads"] = 1
    return {
        "machine": info,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "quick": args.quick,
        "repeats": args.repeats,
        "batches": {m: _batches(args.batches, m, args.batch_8) for m in args.models},
        "models": args.models,
        "tools": args.tools,
        "dynamiclrp": _dynamiclrp_version(dynamiclrp) if dynamiclrp else why,
        "rows": rows,
        "coverage": coverage(rows, skipped),
        "agreement": agreement(maps),
        "worker_max_rss_mb": workers,
        "wall_s": time.perf_counter() - t0,
    }


def _dynamiclrp_version(src: Path) -> str:
    """The checkout's commit, where it is a git work tree."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        if head:
            return f"{DYNAMICLRP_URL} @ {head}"
    return f"{DYNAMICLRP_URL} (checkout at {src})"


# -- output ------------------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def _row_line(row: dict[str, Any]) -> str:
    head = f"{row['model']} b{row['batch']} {row['tool']} {row['method']}"
    if row["error"]:
        return f"{head}: error {row['error']}"
    return (
        f"{head}: {_fmt(row['median_s'], '.3f')} s ({_fmt(row['ratio'], '.2f')}× grad), "
        f"peak {_fmt(row['peak_mb'], '.0f')} MB ({_fmt(row['memory_ratio'], '.2f')}×), "
        f"process {_fmt(row['process_mb'], '.0f')} MB ({_fmt(row['process_ratio'], '.2f')}×)"
    )


COLUMNS = [
    ("relprop", EPS),
    ("dynamiclrp", EPS),
    ("relprop", ATTN),
    ("dynamiclrp", ATTN),
    ("lxt", ATTN),
    ("relprop", EPF),
    ("zennit", EPF),
    ("zennit", EPS),
]
TOOL_NAMES = {"relprop": "relprop", "dynamiclrp": "DynamicLRP", "lxt": "LXT", "zennit": "Zennit"}


def _cell(rows: list[dict[str, Any]], key: str, spec: str) -> str:
    if not rows:
        return ""
    row = rows[0]
    if row["error"]:
        return "fails"
    return _fmt(row[key], spec) + " ×"


def markdown(result: dict[str, Any]) -> str:
    """The results as markdown: machine, time and memory tables, coverage, agreement."""
    m = result["machine"]
    load = result.get("load_average")
    lines = [
        f"Machine: {m['cpu']}, {m['usable_cores']} cores shared with other jobs (load average at the end "
        f"{_fmt(load[0] if load else None, '.2f')}), torch threads 1, {m.get('memory_gb', '?')} GB RAM; "
        f"Python {m['python']}, torch {m['torch']}; {m['platform']}.",
        f"Settings: median of {result['repeats']} after a warm-up, float32, random weights"
        + (", **--quick** (tiny stand-in models)" if result["quick"] else "")
        + f"; DynamicLRP: {result['dynamiclrp'].rstrip('.')}.",
        "",
        "Time, as a multiple of the gradient pass measured in the same process:",
        "",
        "| model | batch | gradient s | " + " | ".join(f"{TOOL_NAMES[t]} {me}" for t, me in COLUMNS) + " |",
        "|---|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    rows = result["rows"]
    keys = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda k: (MODELS.index(k[0]), k[1]))
    for model, batch in keys:
        here = [r for r in rows if r["model"] == model and r["batch"] == batch]
        grads = [r for r in here if r["method"] == GRADIENT and r["tool"] == "–" and r["median_s"]]
        grad = statistics.median(r["median_s"] for r in grads) if grads else None
        cells = [_cell([r for r in here if (r["tool"], r["method"]) == c], "ratio", ".2f") for c in COLUMNS]
        lines.append(f"| {model} | {batch} | {_fmt(grad, '.3f')} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Memory of one call (RSS high-water mark above the RSS before it), and the process's peak in that call "
        "(what the process held before it + that), each as a multiple of the gradient pass's:",
        "",
        "| model | batch | tool | method | median s | × grad | call peak MB | × grad | process MB | × grad "
        "| worker max RSS MB |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["error"]:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['tool']} | {r['method']} | fails: {r['error']} | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['tool']} | {r['method']} | {_fmt(r['median_s'], '.3f')} "
            f"| {_fmt(r['ratio'], '.2f')} | {_fmt(r['peak_mb'], '.0f')} | {_fmt(r['memory_ratio'], '.2f')} "
            f"| {_fmt(r['process_mb'], '.0f')} | {_fmt(r['process_ratio'], '.2f')} "
            f"| {_fmt(r.get('worker_max_rss_mb'), '.0f')} |"
        )
    lines += ["", "Coverage:", "", "| model | " + " | ".join(TOOL_NAMES[t] for t in TOOLS) + " |"]
    lines.append("|---|" + "---|" * len(TOOLS))
    for model in MODELS:
        cell = result["coverage"].get(model)
        if cell:
            lines.append(f"| {model} | " + " | ".join(cell.get(t, "not run") for t in TOOLS) + " |")
    lines += [
        "",
        "Map agreement (cosine per sample at batch 1; rules coincide: the same rule on every layer in both tools):",
        "",
        "| model | map A | map B | cosine | rules coincide |",
        "|---|---|---|---:|---|",
    ]
    for a in result["agreement"]:
        lines.append(
            f"| {a['model']} | {a['a']} | {a['b']} | {a['cosine']:.6f} | {'yes' if a['rules_coincide'] else 'no'} |"
        )
    lines += ["", f"Total wall time {result['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dynamiclrp", default=None, help="a checkout of DynamicLRP (default: $DYNAMICLRP_PATH)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, from: " + ", ".join(TOOLS))
    p.add_argument("--batches", default="1,8", help="intersected with each model's (8 only on the image models)")
    p.add_argument(
        "--batch-8",
        default="vgg16,resnet50,vit_b_16",
        help="the models that also run at batch 8 when --batches has it (default: the three image models)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 1 with --quick)")
    p.add_argument("--worker-timeout", type=int, default=1800, help="seconds per (model, tool) subprocess")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument(
        "--append",
        action="store_true",
        help="add this run to --json's list of runs and after --markdown's text, instead of replacing them",
    )
    p.add_argument("--quick", action="store_true", help="tiny stand-in models, one repeat (smoke test)")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--maps", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.worker:
        return args
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for name, given, known in (("model", args.models, MODELS), ("tool", args.tools, TOOLS)):
        for g in given:
            if g not in known:
                raise SystemExit(f"unknown {name} {g!r}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Entry point: run, print the markdown, write --json / --markdown."""
    args = parse_args(argv)
    if args.worker:
        _worker(args)
        return None
    result = run(args)
    text = markdown(result)
    print(text)
    command = "benchmarks/peers.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    text = f"Command: `{command}`\n\n{text}"
    if args.json:
        runs = json.loads(args.json.read_text())["runs"] if args.append and args.json.exists() else []
        args.json.write_text(json.dumps({"runs": [*runs, {"command": command, **result}]}, indent=1) + "\n")
    if args.markdown:
        before = args.markdown.read_text() + "\n" if args.append and args.markdown.exists() else ""
        args.markdown.write_text(before + text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
