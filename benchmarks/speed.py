"""Speed and memory of relprop against one gradient pass (and Zennit), in one run on the same inputs.

    .venv/bin/python benchmarks/speed.py [--models timm_vgg16,timm_resnet50,timm_vit_b_16,bert,tv_vgg16,...]
                                         [--batches 1,8] [--repeats 5] [--device cpu|cuda|auto] [--threads N]
                                         [--json out.json] [--markdown out.md] [--quick] [--weight-cache-rows]

Models (all by default; random weights, nothing is downloaded; float32, eval mode, parameters frozen):

* ``timm_vgg16``, ``timm_resnet50``, ``timm_vit_b_16`` (``vit_base_patch16_224``): timm, 224×224 inputs;
* ``bert``: ``BertForSequenceClassification(BertConfig())`` (BERT-base sized: 12 layers, hidden 768),
  random token ids, sequence length 128, input ``dict(input_ids, attention_mask)``;
* ``tv_vgg16``, ``tv_resnet50``: torchvision (``weights=None``), the models Zennit's canonizers are written
  for; only these rows have the Zennit column;
* ``llama``: ``LlamaForCausalLM`` (:func:`llama_config`: 12 layers, hidden 768, MLP 3072, 12 query and 4
  key/value heads, vocabulary 32000, untied output layer; 153.0M parameters), random token ids, sequence
  length 128, input ``dict(input_ids, attention_mask)``, ``use_cache=False``; the target is the next token;
* ``minilm``: the shipped sentiment model (``relprop.apps.sentiment.load_sentiment_model()``: all-MiniLM-L6-v2,
  6 layers, hidden 384; needs the ``text`` extra), random token ids, sequence length 128;
* ``tv_vit_b_16``: torchvision's ``vit_b_16(weights=None)`` (the ViT LXT's ``cp_LRP`` patch is written
  for), 224×224 inputs.

Opt-in (``--models gpt2``; not in the default list): ``gpt2``: ``GPT2LMHeadModel(GPT2Config())`` (GPT-2
small: 12 layers, hidden 768, vocabulary 50257, tied output layer; its projections are Hugging Face's
``Conv1D``, exported as ``addmm(b, x, W)`` with the weight the second factor), random token ids, sequence
length 64, explained like ``llama`` (the next token; AttnLRP timed too).

Methods, for every model and batch size (weights drawn after ``torch.manual_seed(0)``; one fixed input per
(model, batch) from a generator seeded with the batch size; target = the predicted class of each sample, the
same for every method; for ``llama`` the predicted next token, explained by relprop through
``relprop.targets.next_token(ids)``, the logit at the last position):

* ``forward``: ``model(x)`` under ``torch.no_grad()``;
* ``gradient`` (the unit): forward + ``torch.autograd.grad`` of the sum of the target logits w.r.t. the
  input. For BERT and Llama the gradient is taken w.r.t. the word-embedding output: the lookup is done under
  ``no_grad`` and fed as ``inputs_embeds`` (the same tensor relprop reads token relevance at);
* ``absLRP``: ``relprop.trace(model, rules.AbsLRP()).explain(x, target)`` (contrastive, the default; derived
  weights kept within the default ``weight_cache="auto"`` budget);
* ``absLRP weight_cache=True`` (decoder rows; every row with ``--weight-cache-rows``): the same with every
  derived weight kept;
* ``LRP-eps``: ``relprop.trace(model, rules.Epsilon()).explain(x, target)`` (ε = 1e-6);
* ``AttnLRP`` (transformer rows: ``bert``, ``minilm``, ``timm_vit_b_16``, ``tv_vit_b_16``):
  ``rules.AttnLRP()``, on ``tv_vit_b_16`` ``rules.AttnLRP(cp=True)`` (the rules of LXT's patch there);
* ``LXT AttnLRP`` (``bert``, ``minilm``, ``tv_vit_b_16``): LXT 2.1 (the AttnLRP authors' library, ``pip
  install --no-deps lxt==2.1``) on a copy of the model with its rules attached as its own patches place them
  (``benchmarks/lxt_oracle.py``: BERT's AttnLRP, torchvision ViT's ``cp_LRP``), run as LXT runs: forward,
  then gradient × input of the target logits w.r.t. the input (the word-embedding output for text). The
  copy is made before the warm-up, outside the timer;
* ``EpsilonPlusFlat`` (torchvision rows): relprop's ``rules.EpsilonPlusFlat()``, the same rules as Zennit's;
* ``zennit EpsilonPlusFlat`` (torchvision rows): ``zennit.attribution.Gradient`` with
  ``zennit.composites.EpsilonPlusFlat(canonizers=[VGGCanonizer() | ResNetCanonizer()])`` called with the
  one-hot target. Its composite (hooks, canonizers) is attached around each of its calls but outside the
  timer and the memory reset (as relprop's cached trace is outside its steady-state time), and detached
  while the other methods run.

Timing: one warm-up call per method (for relprop the first call also traces), one call per method whose
peak memory is recorded, then ``--repeats`` rounds in which every method runs once (interleaved, so a noisy
machine slows all methods alike); the table reports the median. Threads: ``torch.set_num_threads`` = every
core the process may use (``os.sched_getaffinity``), or ``--threads``.

Columns: ``median s`` (median wall time of one call), ``× gradient`` (median / the gradient row's median,
same model and batch), ``peak MB`` (below), ``memory × gradient`` (peak / the gradient row's peak), ``kept
MB``, ``process peak MB`` and ``process × gradient`` (below), ``target`` (the targets that apply to the row)
and pass / **FAIL**.

Peak memory (``peak MB``): the memory one call needs beyond the model: the extra memory of the call above what
is already held (model, inputs, relprop's traces, the derived weights absLRP keeps), plus what the method itself
keeps between calls (``kept MB``: absLRP's derived weights, counted in bytes; built by the warm-up and held at
every later call, so a part of every steady-state call's peak). ``process peak MB``: the process's peak in one
call as if the method ran alone: what the process held after building the model, before any method ran
(``base_mb`` in ``cases``; the libraries and the model), plus ``peak MB`` (the issue's "peak RSS including the
model"; relprop's traces themselves are left out). How a call's own peak is read: on the CPU, the process's
resident-set high-water mark (``VmHWM``, reset before the call by writing 5 to ``/proc/self/clear_refs``)
minus the resident set before the call, measured on a separate call with glibc's mmap threshold at 64 KiB
so that every tensor gets its own mapping and the resident set tracks live memory (tracemalloc does not see
torch's allocator, and ``ru_maxrss`` cannot be reset). Where the kernel does not allow the reset the column
is empty. Timed calls run with the threshold fixed at 32 MiB,
glibc's own steady state (a 64 KiB threshold would add page faults to every call, in proportion to what
each method allocates). CUDA: ``torch.cuda.max_memory_allocated()`` after
``reset_peak_memory_stats()``, minus the memory allocated before the call.

Trace time: per model and rule set, the first ``explain`` (export + rule binding + one explain) minus the
median steady-state ``explain`` at the same batch size. ``trace_count`` is read after the warm-up and again
after every explain at every batch size: a second explain on the same signature (and, the batch dimension
being dynamic, at another batch size) must not trace again. ``weight cache MB``: the derived weights
absLRP keeps at the end (2·W⁺ where the layer's input is non-negative, else [W, |W|]; within the
``weight_cache`` budget); the peak columns include them (``kept MB``, above).

Targets (issue 5), checked on the rows they name: absLRP ≤ 2.5× gradient and LRP-ε ≤ 1.5× at batch 8 on
the three timm image models and BERT; both faster than Zennit where Zennit runs; peak memory ≤ 2× the
gradient pass's (checked at every batch size); tracing ViT-B/16 under 3 s; no second trace. Issue 10: on
decoders (``llama``) absLRP's process peak ≤ 1.5× the gradient pass's, at every batch size; AttnLRP ≤ 1.3×
LXT's time at batch 8 where LXT runs (column ``× LXT``: the row's median / the LXT row's).

Devices: ``--device auto`` (default) runs on the CPU and, when CUDA is available, again on the GPU.

``--quick`` swaps in tiny models of the same families (narrow 7-conv VGGs and one-bottleneck-per-stage ResNets
built from timm's and torchvision's classes, vit_tiny at depth 2, all at 32×32; a 2-layer BERT with hidden 64
and a 2-layer Llama with hidden 64 and vocabulary 1000, both at sequence length 16; a 2-layer BERT with hidden 48
for ``minilm``; torchvision's ``VisionTransformer`` with 2 layers, hidden 64 at 32×32) and one repeat: a smoke test
of the whole pipeline in seconds, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import relprop
from relprop import rules

ALL_MODELS = [
    "timm_vgg16",
    "timm_resnet50",
    "timm_vit_b_16",
    "bert",
    "tv_vgg16",
    "tv_resnet50",
    "llama",
    "minilm",
    "tv_vit_b_16",
]
TARGET_MODELS = {"timm_vgg16", "timm_resnet50", "timm_vit_b_16", "bert"}  # the rows the ratio targets name
DECODER_MODELS = {"llama"}  # the rows the process-peak target names
EXTRA_MODELS = ["gpt2"]  # run only when named in --models
ALIASES = {"vgg16": "timm_vgg16", "resnet50": "timm_resnet50", "vit_b_16": "timm_vit_b_16", "vit": "timm_vit_b_16"}
GRADIENT = "gradient"
ABSLRP_ALL = "absLRP weight_cache=True"  # every derived weight kept (decoder rows, or --weight-cache-rows)
RELPROP_METHODS: dict[str, Callable[[], rules.RuleSet]] = {
    "absLRP": rules.AbsLRP,
    ABSLRP_ALL: lambda: rules.AbsLRP(weight_cache=True),
    "LRP-eps": rules.Epsilon,
    "EpsilonPlusFlat": rules.EpsilonPlusFlat,
    "AttnLRP": rules.AttnLRP,  # per model: Case.attnlrp
}
ZENNIT = "zennit EpsilonPlusFlat"
LXT = "LXT AttnLRP"
LXT_TARGET = 1.3  # AttnLRP's time / LXT's, at batch 8
TIME_TARGETS = {"absLRP": 2.5, "LRP-eps": 1.5}
MEMORY_TARGET = 2.0
PROCESS_TARGET = 1.5  # decoders: absLRP's process peak (model and kept derived weights included) / the gradient's
VIT_TRACE_TARGET_S = 3.0
TARGET_BATCH = 8
QUICK_VGG: list[Any] = [16, "M", 32, "M", 32, 32, "M", 64, "M", 64, "M"]  # the --quick VGGs' layers


# -- machine and devices -----------------------------------------------------------------------------------------


def resolve_devices(choice: str, cuda_available: bool | None = None) -> list[str]:
    """Devices to run on: ``auto`` is the CPU plus CUDA when available; ``cuda`` requires it."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if choice == "auto":
        return ["cpu", "cuda"] if cuda_available else ["cpu"]
    if choice == "cuda" and not cuda_available:
        raise SystemExit("--device cuda: no CUDA device is available")
    if choice not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu, cuda or auto, got {choice!r}")
    return [choice]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(devices: list[str]) -> dict[str, Any]:
    """A description of the machine the numbers come from."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    if "cuda" in devices:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


# -- memory ------------------------------------------------------------------------------------------------------


def _mallopt(mmap_threshold: int, trim_threshold: int) -> None:
    """Set glibc's mmap and trim thresholds (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD (setting it turns off glibc's dynamic threshold)
        libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD


def _timing_malloc() -> None:
    """glibc's steady state under its default dynamic threshold: blocks under 32 MiB are reused, not re-faulted."""
    _mallopt(32 << 20, 64 << 20)


def _memory_malloc() -> None:
    """Every block over 64 KiB gets its own mapping, so the resident set tracks live memory."""
    _mallopt(64 << 10, 1 << 20)


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(key)


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmHWM") <= _status_mb("VmRSS") + 1.0
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: str) -> float | None:
    """Extra memory one call of ``fn`` needs above what is held before it (None where unmeasurable)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    _memory_malloc()
    try:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            before = _status_mb("VmRSS")
        except OSError:
            return None
        if not _reset_hwm():
            fn()
            return None
        fn()
        return max(_status_mb("VmHWM") - before, 0.0)
    finally:
        _timing_malloc()


def timed(fn: Callable[[], Any], device: str) -> float:
    """Wall-clock seconds of one call (synchronized on CUDA)."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


# -- models ------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A model ready to benchmark: how to build it, its inputs and its Zennit canonizer (if any)."""

    name: str
    model: nn.Module
    make_inputs: Callable[[int], Any]
    text: bool = False
    canonizer: Callable[[], Any] | None = None
    #: a causal language model: the target is the next token's logit (``relprop.targets.next_token``)
    decoder: bool = False
    #: a transformer: the AttnLRP rule set to time (the variant LXT's patch for the model applies)
    attnlrp: Callable[[], rules.RuleSet] | None = None
    #: LXT's rules on a copy of the model (``lxt_oracle``), when LXT has a patch for its family
    lxt: Callable[[nn.Module], nn.Module] | None = None


def _image_inputs(size: int) -> Callable[[int], Tensor]:
    def make(batch: int) -> Tensor:
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))

    return make


def _text_inputs(vocab: int, seq: int) -> Callable[[int], dict[str, Tensor]]:
    def make(batch: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch, seq), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return make


def build_case(name: str, quick: bool) -> Case:
    """The model called ``name`` (a tiny stand-in of the same family with ``quick``), random weights."""
    import timm
    import torchvision

    torch.manual_seed(0)
    size = 32 if quick else 224
    if name == "timm_vgg16":
        if quick:
            from timm.models.vgg import VGG

            model = VGG(QUICK_VGG, num_classes=10, mlp_ratio=1 / 64)
        else:
            model = timm.create_model("vgg16", pretrained=False)
    elif name == "timm_resnet50":
        if quick:
            from timm.models.resnet import Bottleneck, ResNet

            model = ResNet(Bottleneck, (1, 1, 1, 1), num_classes=10, stem_width=16, channels=(16, 32, 64, 128))
        else:
            model = timm.create_model("resnet50", pretrained=False)
    elif name == "timm_vit_b_16":
        model = (
            timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=10)
            if quick
            else timm.create_model("vit_base_patch16_224", pretrained=False)
        )
        return Case(name, model.eval(), _image_inputs(size), attnlrp=rules.AttnLRP)
    elif name == "tv_vit_b_16":
        if quick:
            model = torchvision.models.VisionTransformer(32, 8, 2, 2, 64, 128, num_classes=10)
        else:
            model = torchvision.models.vit_b_16(weights=None)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts the head at zero
        cp = lambda: rules.AttnLRP(cp=True)  # noqa: E731 - LXT's cp_LRP patch is the rule set for this ViT
        return Case(name, model.eval(), _image_inputs(size), attnlrp=cp, lxt=_lxt("lxt_vit_cp"))
    elif name in ("bert", "minilm"):
        import transformers

        if name == "minilm" and not quick:
            from relprop.apps.sentiment import load_sentiment_model

            model, _ = load_sentiment_model()
            config = model.config
        else:
            small = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128)
            if name == "minilm":
                small = dict(hidden_size=48, num_attention_heads=2, intermediate_size=96)
            config = (
                transformers.BertConfig(vocab_size=1000, num_hidden_layers=2, **small)
                if quick
                else (transformers.BertConfig())
            )
            model = transformers.BertForSequenceClassification(config)
        inputs = _text_inputs(config.vocab_size, 16 if quick else 128)
        return Case(name, model.eval(), inputs, text=True, attnlrp=rules.AttnLRP, lxt=_lxt("lxt_bert"))
    elif name == "llama":
        import transformers

        model = transformers.LlamaForCausalLM(llama_config(quick))
        vocab = model.config.vocab_size
        return Case(name, model.eval(), _text_inputs(vocab, 16 if quick else 128), text=True, decoder=True)
    elif name == "gpt2":
        import transformers

        config = (
            transformers.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=2, n_positions=64)
            if quick
            else transformers.GPT2Config()
        )
        model = transformers.GPT2LMHeadModel(config)
        inputs = _text_inputs(config.vocab_size, 16 if quick else 64)
        return Case(name, model.eval(), inputs, text=True, decoder=True, attnlrp=rules.AttnLRP)
    elif name in ("tv_vgg16", "tv_resnet50"):
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer

        if name == "tv_vgg16":
            model = _small_tv_vgg() if quick else torchvision.models.vgg16(weights=None)
            canonizer: Callable[[], Any] = VGGCanonizer
        else:
            if quick:
                from torchvision.models.resnet import Bottleneck, ResNet

                model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16)
            else:
                model = torchvision.models.resnet50(weights=None)
            canonizer = ResNetCanonizer
        return Case(name, model.eval(), _image_inputs(size), canonizer=canonizer)
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(ALL_MODELS + EXTRA_MODELS)}")
    return Case(name, model.eval(), _image_inputs(size))


def _lxt(maker: str) -> Callable[[nn.Module], nn.Module]:
    """``benchmarks/lxt_oracle.py``'s ``maker`` (imported when called: LXT is optional)."""

    def make(model: nn.Module) -> nn.Module:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import lxt_oracle

        return getattr(lxt_oracle, maker)(model)

    return make


def llama_config(quick: bool) -> Any:
    """The Llama-style decoder: 12 layers, hidden 768, MLP 3072, 12 query and 4 key/value heads, vocabulary
    32000, untied output layer: 153.0M parameters (``--quick``: 2 layers, hidden 64, vocabulary 1000)."""
    import transformers

    size = (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
        )
        if quick
        else dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            vocab_size=32000,
        )
    )
    return transformers.LlamaConfig(
        **size,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def _small_tv_vgg() -> nn.Module:
    """torchvision's VGG class with narrow layers (its fixed 4096-wide head alone takes seconds to initialize)."""
    from torchvision.models.vgg import VGG, make_layers

    with torch.device("meta"):
        model = VGG(make_layers(QUICK_VGG), num_classes=10)
    model.features = model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    width = QUICK_VGG[-2]
    model.classifier = nn.Sequential(
        *(nn.Linear(width, 32), nn.ReLU(True), nn.Dropout()),
        *(nn.Linear(32, 32), nn.ReLU(True), nn.Dropout()),
        nn.Linear(32, 10),
    )
    return model


def _to(inputs: Any, device: str) -> Any:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


def _scores(case: Case, out: Any) -> Tensor:
    """(batch, classes): the logits, or for a decoder those of the token after the last."""
    logits = _logits(out)
    return logits[:, -1] if case.decoder else logits


# -- methods -----------------------------------------------------------------------------------------------------


def method_calls(
    case: Case, inputs: Any, target: Tensor, graphs: dict[str, relprop.Graph], lxt: nn.Module | None = None
) -> dict[str, Callable[[], Any]]:
    """One zero-argument callable per method, each running that method once on ``inputs``.

    ``lxt``: LXT's copy of the model (its rules attached), timed as LXT runs: gradient × input.
    """
    model = case.model
    classes: Any = relprop.targets.next_token(target.tolist()) if case.decoder else target.tolist()

    def forward() -> Any:
        with torch.no_grad():
            return model(**inputs) if case.text else model(inputs)

    def gradient() -> Tensor:
        if case.text:
            with torch.no_grad():
                embeds = model.get_input_embeddings()(inputs["input_ids"])
            embeds.requires_grad_(True)
            out = _scores(case, model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"]))
            (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), embeds)
            return grad
        x = inputs.detach().requires_grad_(True)
        out = _logits(model(x))
        (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
        return grad

    calls: dict[str, Callable[[], Any]] = {"forward": forward, GRADIENT: gradient}
    for method, graph in graphs.items():
        calls[method] = _explainer(graph, inputs, classes)
    if lxt is not None:
        calls[LXT] = _lxt_call(lxt, case, inputs, target)
    return calls


def _lxt_call(copy: nn.Module, case: Case, inputs: Any, target: Tensor) -> Callable[[], Tensor]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import lxt_oracle

    def explain() -> Tensor:
        if case.text:
            return lxt_oracle.token_gradient_x_input(copy, inputs, target)
        return lxt_oracle.gradient_x_input(copy, inputs, target)

    return explain


def _explainer(graph: relprop.Graph, inputs: Any, classes: Any) -> Callable[[], Tensor]:
    def explain() -> Tensor:
        return graph.explain(inputs, classes)

    return explain


def _zennit_call(attributor: Any, inputs: Tensor, target: Tensor, classes: int) -> Callable[[], Tensor]:
    onehot = torch.nn.functional.one_hot(target, classes).to(inputs.dtype)

    def explain() -> Tensor:
        _, relevance = attributor(inputs, onehot)
        return relevance

    return explain


# -- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One (device, model, batch, method) measurement."""

    device: str
    model: str
    batch: int
    method: str
    median_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    ratio: float | None = None
    #: memory one call needs beyond the model: ``kept_mb`` + the call's own peak above what is held before it
    peak_mb: float | None = None
    memory_ratio: float | None = None
    #: what the method keeps between calls (absLRP's derived weights), MB
    kept_mb: float | None = None
    #: the process's peak in that call: what it held with the model loaded, before any method ran, + ``peak_mb``
    process_peak_mb: float | None = None
    process_ratio: float | None = None
    #: AttnLRP rows: median / the LXT row's median (same model and batch)
    lxt_ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    error: str | None = None


@dataclass
class Trace:
    """Trace time and trace counts of one (device, model, rule set)."""

    device: str
    model: str
    method: str
    first_explain_s: float
    steady_explain_s: float | None
    trace_s: float | None
    batch: int
    trace_count_after_warmup: int
    trace_count_final: int = 0
    explains: int = 0
    #: derived weights (|W|, 2W⁺, [W, |W|]) absLRP keeps while the trace lives, MB
    weight_cache_mb: float | None = None
    target: str = ""
    passed: bool | None = None


def run_case(
    case: Case,
    batches: list[int],
    repeats: int,
    device: str,
    log: Callable[[str], None],
    weight_cache_rows: bool = False,
) -> tuple[list[Row], list[Trace], dict[str, Any]]:
    """Measure every method on ``case`` at every batch size; also returns the model's size and base memory."""
    model = case.model.to(device).requires_grad_(False)
    base = resident_mb(device)
    info = {
        "device": device,
        "model": case.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameter_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "base_mb": base,
    }
    makers = {**RELPROP_METHODS, "AttnLRP": case.attnlrp}
    graphs = {m: relprop.trace(model, make()) for m, make in makers.items() if make is not None}
    if case.canonizer is None:
        del graphs["EpsilonPlusFlat"]
    lxt, lxt_error = None, None
    if case.lxt is not None:
        try:
            lxt = case.lxt(model)
        except Exception as err:  # noqa: BLE001 - LXT missing or failing: its row says so
            lxt_error = f"{type(err).__name__}: {err}"[:300]
    if not (case.decoder or weight_cache_rows):
        del graphs[ABSLRP_ALL]
    traces: dict[str, Trace] = {}
    explains = dict.fromkeys(graphs, 0)
    rows: list[Row] = []
    zennit: Any = None
    if case.canonizer is not None:
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat

        zennit = Gradient(model, EpsilonPlusFlat(canonizers=[case.canonizer()]))
    for batch in batches:
        inputs = _to(case.make_inputs(batch), device)
        with torch.no_grad():
            out = _scores(case, model(**inputs) if case.text else model(inputs))
        target = out.argmax(1)
        calls = method_calls(case, inputs, target, graphs, lxt)
        # Zennit's hooks and canonizers are attached only around its own calls, outside the timer
        setups: dict[str, Callable[[], Any]] = dict.fromkeys(calls, contextlib.nullcontext)
        if zennit is not None:
            calls[ZENNIT] = _zennit_call(zennit, inputs, target, out.shape[1])
            setups[ZENNIT] = lambda: zennit
        batch_rows = {m: Row(device, case.name, batch, m) for m in calls}
        if lxt_error is not None:
            batch_rows[LXT] = Row(device, case.name, batch, LXT, error=lxt_error)
        live = {}
        for method, fn in calls.items():  # warm-up (relprop: the first call traces)
            try:
                with setups[method]():
                    t = timed(fn, device)
            except Exception as err:  # noqa: BLE001 - a failing method is reported, the run goes on
                batch_rows[method].error = f"{type(err).__name__}: {err}"[:300]
                log(f"  {case.name} b{batch} {method}: FAILED {batch_rows[method].error}")
                continue
            live[method] = fn
            if method in graphs:
                explains[method] += 1
                if method not in traces:
                    traces[method] = Trace(device, case.name, method, t, None, None, batch, graphs[method].trace_count)
        for method, fn in live.items():
            row = batch_rows[method]
            with setups[method]():
                row.peak_mb = peak_memory_mb(fn, device)
            # what the method keeps between calls (absLRP's derived weights) is held before the call, so the
            # reading above leaves it out: it is added, as it is part of every call's peak
            row.kept_mb = weight_cache_mb(graphs[method]) if method in graphs else 0.0
            if row.peak_mb is not None:
                row.peak_mb += row.kept_mb
                if base is not None:
                    row.process_peak_mb = base + row.peak_mb
            if method in explains:
                explains[method] += 1
        for _ in range(repeats):
            for method, fn in live.items():
                with setups[method]():
                    batch_rows[method].times_s.append(timed(fn, device))
                if method in explains:
                    explains[method] += 1
        for row in batch_rows.values():
            if row.times_s:
                row.median_s = statistics.median(row.times_s)
        for method, tr in traces.items():
            if tr.batch == batch and tr.steady_explain_s is None and batch_rows[method].median_s is not None:
                tr.steady_explain_s = batch_rows[method].median_s
                tr.trace_s = max(tr.first_explain_s - tr.steady_explain_s, 0.0)
        _ratios(list(batch_rows.values()))
        for row in batch_rows.values():
            log(_row_line(row))
        rows.extend(batch_rows.values())
    for method, tr in traces.items():
        tr.trace_count_final = graphs[method].trace_count
        tr.explains = explains[method]
        if method.startswith("absLRP"):  # the other rule sets keep no derived weights
            tr.weight_cache_mb = weight_cache_mb(graphs[method])
    return rows, list(traces.values()), info


def weight_cache_mb(graph: relprop.Graph) -> float:
    """Memory of the derived weights absLRP keeps for ``graph`` (included in the peak columns)."""
    from relprop.rules.abslrp import weight_cache_bytes

    return weight_cache_bytes(graph) / 2**20


def resident_mb(device: str) -> float | None:
    """What the process holds now (CPU: resident set after a trim; CUDA: allocated), MB."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() / 2**20
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        return _status_mb("VmRSS")
    except OSError:
        return None


def _ratios(rows: list[Row]) -> None:
    grad = next((r for r in rows if r.method == GRADIENT), None)
    lxt = next((r for r in rows if r.method == LXT and r.median_s), None)
    for row in rows:
        if row.method == "AttnLRP" and lxt is not None and row.median_s is not None:
            row.lxt_ratio = row.median_s / lxt.median_s
        if grad is None:
            continue
        if row.median_s is not None and grad.median_s:
            row.ratio = row.median_s / grad.median_s
        if row.peak_mb is not None and grad.peak_mb:
            row.memory_ratio = row.peak_mb / grad.peak_mb
        if row.process_peak_mb is not None and grad.process_peak_mb:
            row.process_ratio = row.process_peak_mb / grad.process_peak_mb


def evaluate_targets(rows: list[Row], traces: list[Trace]) -> None:
    """Fill ``target`` and ``passed`` on the rows and traces the issue's targets name."""
    zennit = {(r.device, r.model, r.batch): r.median_s for r in rows if r.method == ZENNIT and r.median_s}
    for row in rows:
        checks: list[tuple[str, bool]] = []
        limit = TIME_TARGETS.get(row.method)
        if limit is not None and row.model in TARGET_MODELS and row.batch == TARGET_BATCH and row.ratio is not None:
            checks.append((f"≤{limit}× grad", row.ratio <= limit))
        if limit is not None and row.memory_ratio is not None:
            checks.append((f"mem ≤{MEMORY_TARGET}×", row.memory_ratio <= MEMORY_TARGET))
        if row.method == "absLRP" and row.model in DECODER_MODELS and row.process_ratio is not None:
            checks.append((f"process ≤{PROCESS_TARGET}×", row.process_ratio <= PROCESS_TARGET))
        if row.method == "AttnLRP" and row.batch == TARGET_BATCH and row.lxt_ratio is not None:
            checks.append((f"≤{LXT_TARGET}× LXT", row.lxt_ratio <= LXT_TARGET))
        z = zennit.get((row.device, row.model, row.batch))
        if limit is not None and z is not None and row.median_s is not None:
            checks.append(("< zennit", row.median_s < z))
        if row.error and (row.method in RELPROP_METHODS or row.method == LXT):
            checks.append(("runs", False))
        if checks:
            row.target = ", ".join(c for c, _ in checks)
            row.passed = all(ok for _, ok in checks)
    for tr in traces:
        checks = [("no retrace", tr.trace_count_final == 1 and tr.trace_count_after_warmup == 1)]
        if tr.model == "timm_vit_b_16" and tr.trace_s is not None:
            checks.append((f"trace <{VIT_TRACE_TARGET_S:g} s", tr.trace_s < VIT_TRACE_TARGET_S))
        tr.target = ", ".join(c for c, _ in checks)
        tr.passed = all(ok for _, ok in checks)


# -- output ------------------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def _verdict(passed: bool | None) -> str:
    return "" if passed is None else ("pass" if passed else "**FAIL**")


def _row_line(row: Row) -> str:
    if row.error:
        return f"  {row.device} {row.model} b{row.batch} {row.method}: error {row.error}"
    vs_lxt = f", {_fmt(row.lxt_ratio, '.2f')}× LXT" if row.lxt_ratio is not None else ""
    return (
        f"  {row.device} {row.model} b{row.batch} {row.method}: {_fmt(row.median_s, '.4f')} s "
        f"({_fmt(row.ratio, '.2f')}× grad{vs_lxt}), "
        f"peak {_fmt(row.peak_mb, '.1f')} MB ({_fmt(row.memory_ratio, '.2f')}×; "
        f"kept {_fmt(row.kept_mb, '.0f')} MB), "
        f"process peak {_fmt(row.process_peak_mb, '.0f')} MB ({_fmt(row.process_ratio, '.2f')}×)"
    )


def markdown(result: dict[str, Any]) -> str:
    """The results as markdown: machine, the table, trace times."""
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['usable_cores']} cores used of {m['logical_cores']} "
        f"(torch threads {m['torch_threads']}), {m.get('memory_gb', '?')} GB RAM"
        + (f", GPU {m['gpu']} (CUDA {m['cuda']})" if "gpu" in m else "")
        + f"; Python {m['python']}, torch {m['torch']}; {m['platform']}.",
        f"Settings: repeats {result['repeats']}, float32, eval mode"
        + (", **--quick** (tiny stand-in models)" if result["quick"] else "")
        + ".",
        "",
        "| device | model | batch | method | median s | × gradient | × LXT | peak MB | memory × gradient | kept MB "
        "| process peak MB | process × gradient | target | |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["rows"]:
        if r["error"]:
            lines.append(
                f"| {r['device']} | {r['model']} | {r['batch']} | {r['method']} | error: {r['error']} "
                f"| | | | | | | | {r['target']} | {_verdict(r['passed'])} |"
            )
            continue
        lines.append(
            f"| {r['device']} | {r['model']} | {r['batch']} | {r['method']} | {_fmt(r['median_s'], '.4f')} "
            f"| {_fmt(r['ratio'], '.2f')} | {_fmt(r.get('lxt_ratio'), '.2f')} "
            f"| {_fmt(r['peak_mb'], '.1f')} | {_fmt(r['memory_ratio'], '.2f')} "
            f"| {_fmt(r.get('kept_mb'), '.0f')} | {_fmt(r.get('process_peak_mb'), '.0f')} "
            f"| {_fmt(r.get('process_ratio'), '.2f')} "
            f"| {r['target']} | {_verdict(r['passed'])} |"
        )
    lines += [
        "",
        "| device | model | rule set | trace s | first explain s | steady explain s | weight cache MB "
        "| trace_count (warm-up → end, explains) | target | |",
        "|---|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for t in result["traces"]:
        lines.append(
            f"| {t['device']} | {t['model']} | {t['method']} | {_fmt(t['trace_s'], '.2f')} "
            f"| {_fmt(t['first_explain_s'], '.2f')} | {_fmt(t['steady_explain_s'], '.3f')} "
            f"| {_fmt(t.get('weight_cache_mb'), '.0f')} "
            f"| {t['trace_count_after_warmup']} → {t['trace_count_final']} ({t['explains']} explains) "
            f"| {t['target']} | {_verdict(t['passed'])} |"
        )
    lines.append("")
    lines.append(f"Total wall time {result['wall_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def run(
    models: list[str],
    batches: list[int],
    repeats: int,
    device: str = "auto",
    quick: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    weight_cache_rows: bool = False,
) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-able dict (``rows``, ``traces``, ``machine``, settings)."""
    _timing_malloc()
    devices = resolve_devices(device)
    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    saved = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(max(int(threads or 1), 1))
    torch.set_default_dtype(torch.float32)
    t0 = time.perf_counter()
    rows: list[Row] = []
    traces: list[Trace] = []
    cases: list[dict[str, Any]] = []
    try:
        for dev in devices:
            for name in models:
                log(f"{dev} {name}{' (quick)' if quick else ''}")
                case = build_case(name, quick)
                r, t, info = run_case(case, batches, repeats, dev, log, weight_cache_rows)
                rows += r
                traces += t
                cases.append(info)
                del case
                gc.collect()
                if dev == "cuda":
                    torch.cuda.empty_cache()
        info = machine(devices)
    finally:
        torch.set_num_threads(saved[0])
        torch.set_default_dtype(saved[1])
    evaluate_targets(rows, traces)
    return {
        "machine": info,
        "quick": quick,
        "repeats": repeats,
        "batches": batches,
        "models": models,
        "devices": devices,
        "weight_cache_rows": weight_cache_rows,
        "cases": cases,
        "rows": [asdict(r) for r in rows],
        "traces": [asdict(t) for t in traces],
        "wall_s": time.perf_counter() - t0,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models", default=",".join(ALL_MODELS), help="comma-separated, from: " + ", ".join(ALL_MODELS + EXTRA_MODELS)
    )
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; 1 with --quick)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable core)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny stand-in models, one repeat (smoke test)")
    p.add_argument(
        "--weight-cache-rows",
        action="store_true",
        help=f"add the row '{ABSLRP_ALL}' (every derived weight kept) to every model, not only decoders",
    )
    return p.parse_args(argv)


def _freeze_imports() -> None:
    """Import the model libraries now and move everything imported out of the garbage collector's
    reach (``gc.freeze``): the benchmark collects garbage before each memory reading, and scanning
    the objects of torch, transformers and timm again each time was most of a ``--quick`` run."""
    import importlib

    for name in ("timm", "torchvision", "transformers", "zennit"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point: run, print the markdown table, write --json / --markdown."""
    args = parse_args(argv)
    _freeze_imports()
    models = [ALIASES.get(m.strip(), m.strip()) for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in ALL_MODELS + EXTRA_MODELS:
            raise SystemExit(f"unknown model {m!r}; choose from {', '.join(ALL_MODELS + EXTRA_MODELS)}")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    result = run(
        models, batches, repeats, args.device, args.quick, args.threads, weight_cache_rows=args.weight_cache_rows
    )
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
