"""LXT 2.1 (the AttnLRP authors' library) as an oracle: its own rule functions on copies of a model.

    import lxt_oracle                                   # benchmarks/ on sys.path, or load it by path
    m = lxt_oracle.lxt_bert(model)                      # BERT family (transformers 5): LXT's BERT AttnLRP
    m = lxt_oracle.lxt_vit_cp(model)                    # torchvision ViT: LXT's vit_torch.cp_LRP map
    m = lxt_oracle.lxt_llama(model)                     # Llama (transformers 5): LXT's llama.attnLRP map
    m = lxt_oracle.lxt_gpt2(model)                      # GPT-2 (transformers 5): LXT's gpt2.attnLRP map
    R = lxt_oracle.gradient_x_input(m, x, target)       # float input: relevance shaped like x
    R = lxt_oracle.token_gradient_x_input(m, enc, target)  # token ids: (batch, tokens)

LXT computes AttnLRP as gradient × input with modified gradients, so its relevance is the
input times the gradient of the target score (classic LRP's start: the target logit).
``target``: a class index, one per sample (sequence or 1-D tensor) into (batch, classes)
logits, or a callable ``output -> (batch,) scores`` (``relprop.targets.next_token(t)`` is one).
Token relevance is read at the word-embedding output and summed over the hidden dimension,
as relprop reads it.

Every ``lxt_*`` function returns a deep copy in eval mode with frozen parameters (only the
input gets a gradient); the model passed in is never changed.  LXT's patch maps replace
*class* methods process-wide (``nn.LayerNorm.forward`` for every LayerNorm); here each map
entry is instead bound to the matching *instances* of the copy (``types.MethodType``).
LXT's attention patch for decoders (``patch_attention``) replaces module-level functions of
``modeling_llama`` / ``modeling_gpt2`` (and, as LXT 2.1 writes it, breaks them on
transformers 5); :func:`lxt_attention` does it only inside a ``with`` block (the copies from
:func:`lxt_llama` and :func:`lxt_gpt2` enter it around each forward; not thread-safe) and
always restores the originals.  LXT's BERT patch swaps in its own transformers-4 copy of
``modeling_bert``; :func:`lxt_bert` puts the same rule functions where that copy marks them.

Needs ``pip install --no-deps lxt==2.1`` (and transformers / torchvision, which it imports).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "INSTALL",
    "import_lxt",
    "attach",
    "lxt_bert",
    "lxt_vit_cp",
    "lxt_llama",
    "lxt_gpt2",
    "lxt_attention",
    "lxt_llama_attention",
    "gradient_x_input",
    "token_gradient_x_input",
]

INSTALL = "pip install --no-deps lxt==2.1"

Target = int | Sequence[int] | Tensor | Callable[[Any], Tensor]


@functools.cache
def import_lxt() -> types.SimpleNamespace:
    """LXT's modules: ``rules``, ``patches`` and the patch maps ``bert``, ``vit_cp``, ``llama``, ``gpt2``.

    ``import lxt.efficient`` imports LXT's copies of transformers-4 model files; its BERT
    copy imports ``find_pruneable_heads_and_indices``, which transformers 5 removed from
    ``transformers.pytorch_utils``.  The name is stubbed for the import only (that copy is
    never run) and removed again.  Raises :class:`ImportError` with the install line.
    """
    try:
        import lxt  # noqa: F401
    except ImportError as err:
        raise ImportError(f"LXT is not installed; {INSTALL}") from err
    import transformers.pytorch_utils as pu

    stub = not hasattr(pu, "find_pruneable_heads_and_indices")
    if stub:
        pu.find_pruneable_heads_and_indices = None
    try:
        import lxt.efficient.models.bert as bert
        import lxt.efficient.models.gpt2 as gpt2
        import lxt.efficient.models.llama as llama
        import lxt.efficient.models.vit_torch as vit_torch
        import lxt.efficient.patches as patches
        import lxt.efficient.rules as rules
    finally:
        if stub:
            del pu.find_pruneable_heads_and_indices
    return types.SimpleNamespace(
        rules=rules,
        patches=patches,
        bert=bert.attnLRP,
        vit_cp=vit_torch.cp_LRP,
        llama=llama.attnLRP,
        gpt2=gpt2.attnLRP,
    )


def _frozen_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def attach(model: nn.Module, patch_map: Mapping[Any, Any]) -> int:
    """Bind the class entries of an LXT patch map to the matching instances of ``model`` (in place).

    An entry ``cls: partial(patch_method, fn, method_name=..., keep_original=...)`` replaces
    ``method_name`` on every instance whose class inherits that method from ``cls`` unchanged
    (the instances LXT's class patch would reach).  Other entries (module-level patches) are
    skipped.  Returns the number of methods bound.
    """
    lxt = import_lxt()
    count = 0
    for target, patch in patch_map.items():
        if not (isinstance(target, type) and isinstance(patch, functools.partial)):
            continue
        if patch.func is not lxt.patches.patch_method:
            continue
        fn = patch.args[0]
        name = patch.keywords.get("method_name", "forward")
        keep = patch.keywords.get("keep_original", False)
        for mod in model.modules():
            if not isinstance(mod, target) or getattr(type(mod), name) is not getattr(target, name):
                continue
            if name in vars(mod):
                raise RuntimeError(f"{type(mod).__name__}.{name} of this instance is already replaced")
            if keep:
                setattr(mod, f"original_{name}", getattr(mod, name))
            setattr(mod, name, types.MethodType(fn, mod))
            count += 1
    return count


def _implicit(owner: nn.Module, attr: str) -> None:
    """LXT's identity rule (``identity_rule_implicit``) on the activation ``owner.attr``."""
    lxt = import_lxt()
    act = getattr(owner, attr)
    if isinstance(act, nn.Module):
        if "forward" not in vars(act):  # a shared activation module is patched once
            act.original_forward = act.forward
            act.forward = types.MethodType(lxt.patches.non_linear_forward, act)
    else:
        setattr(owner, attr, functools.partial(lxt.rules.identity_rule_implicit, act))


def lxt_bert(model: nn.Module) -> nn.Module:
    """A copy of a transformers-5 BERT model with LXT's BERT AttnLRP rules.

    As LXT's ``models/bert.py`` (its ``attnLRP`` map and the lines it marks ``LXT``):
    ``layer_norm_forward`` on every LayerNorm, ``dropout_forward`` on dropout,
    ``divide_gradient(·, 2)`` on query, key and the attention output (uniform rule on both
    attention products), ``identity_rule_implicit`` on the intermediate activation, the
    pooler's tanh and the MLM head's transform.  Softmax is left to autograd (the softmax
    rule).  The divisions sit on the projections' outputs, which reach the attention
    function only through reshapes, so they act as LXT's do on eager and SDPA attention.
    """
    from transformers.models.bert import modeling_bert as mb

    lxt = import_lxt()
    m = _frozen_copy(model)
    attach(m, lxt.bert)
    half = lxt.rules.divide_gradient
    found = False
    for mod in m.modules():
        if isinstance(mod, mb.BertSelfAttention):
            found = True
            for lin in (mod.query, mod.key):
                lin.register_forward_hook(lambda _m, _i, out: half(out, 2))
            mod.register_forward_hook(lambda _m, _i, out: (half(out[0], 2), *out[1:]))
        elif isinstance(mod, mb.BertIntermediate):
            _implicit(mod, "intermediate_act_fn")
        elif isinstance(mod, mb.BertPooler):
            _implicit(mod, "activation")
        elif isinstance(mod, mb.BertPredictionHeadTransform):
            _implicit(mod, "transform_act_fn")
    if not found:
        raise ValueError(f"lxt_bert: {type(model).__name__} has no BertSelfAttention (not a BERT model)")
    return m


def lxt_vit_cp(model: nn.Module) -> nn.Module:
    """A copy of a torchvision ``VisionTransformer`` with LXT's ``vit_torch.cp_LRP`` map.

    AttnLRP outside attention (identity rule on GELU, LayerNorm with σ detached, gradient
    elsewhere) and CP-LRP inside (``nn.MultiheadAttention``'s query and key detached).
    """
    m = _frozen_copy(model)
    if attach(m, import_lxt().vit_cp) == 0:
        raise ValueError(f"lxt_vit_cp: {type(model).__name__} has no GELU, LayerNorm or MultiheadAttention")
    return m


@contextlib.contextmanager
def lxt_attention(module: types.ModuleType) -> Iterator[None]:
    """LXT's attention wrapper (q, k gradients ÷ 4, v ÷ 2) on a transformers modeling module, inside the block.

    What LXT's ``patch_attention(module)`` does (it wraps ``eager_attention_forward`` and
    every entry of ``ALL_ATTENTION_FUNCTIONS`` with ``wrap_attention_forward``), except that
    the wrapped functions go into a new ``AttentionInterface`` (LXT's plain dict has no
    ``get_interface``, which transformers 5 calls) and the originals are restored on exit.
    """
    wrap = import_lxt().patches.wrap_attention_forward
    eager, functions = module.eager_attention_forward, module.ALL_ATTENTION_FUNCTIONS
    wrapped = type(functions)()
    for key in functions:
        wrapped[key] = wrap(functions[key])
    module.eager_attention_forward, module.ALL_ATTENTION_FUNCTIONS = wrap(eager), wrapped
    try:
        yield
    finally:
        module.eager_attention_forward, module.ALL_ATTENTION_FUNCTIONS = eager, functions


def lxt_llama_attention() -> contextlib.AbstractContextManager[None]:
    """:func:`lxt_attention` on ``modeling_llama``."""
    from transformers.models.llama import modeling_llama

    return lxt_attention(modeling_llama)


def _decoder(model: nn.Module, patch_map: Mapping[Any, Any], module: types.ModuleType, name: str) -> nn.Module:
    m = _frozen_copy(model)
    if attach(m, patch_map) == 0:
        raise ValueError(f"{name}: {type(model).__name__} has none of the modules LXT's map patches")
    forward = m.forward

    def patched_forward(*args: Any, **kwargs: Any) -> Any:
        with lxt_attention(module):
            return forward(*args, **kwargs)

    m.forward = patched_forward
    return m


def lxt_llama(model: nn.Module) -> nn.Module:
    """A copy of a transformers-5 Llama model with LXT's ``llama.attnLRP`` map.

    ``gated_mlp_forward`` on every ``LlamaMLP`` (identity rule on the activation, uniform
    rule on the gate product), ``rms_norm_forward`` on every ``LlamaRMSNorm`` (1/rms
    detached), ``dropout_forward`` on dropout; the copy's forward runs inside
    :func:`lxt_attention` (the wrapped functions are only looked up during the forward;
    the backward needs nothing patched).
    """
    from transformers.models.llama import modeling_llama

    return _decoder(model, import_lxt().llama, modeling_llama, "lxt_llama")


def lxt_gpt2(model: nn.Module) -> nn.Module:
    """A copy of a transformers-5 GPT-2 model with LXT's ``gpt2.attnLRP`` map.

    LXT's GPT-2 ``mlp_forward`` on every ``GPT2MLP`` (identity rule on the whole activation
    module), ``layer_norm_forward``, ``dropout_forward``; the forward inside :func:`lxt_attention`.
    """
    from transformers.models.gpt2 import modeling_gpt2

    return _decoder(model, import_lxt().gpt2, modeling_gpt2, "lxt_gpt2")


def _scores(out: Any, target: Target) -> Tensor:
    """One score per sample: ``target(out)``, or the target classes of the (batch, classes) logits."""
    if callable(target):
        return target(out)
    logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
    idx = torch.as_tensor(target, device=logits.device, dtype=torch.long).expand(logits.shape[0])
    return logits.gather(1, idx[:, None]).squeeze(1)


def gradient_x_input(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """Input × ∂score/∂input for a float input (LXT's relevance), shaped like ``x``."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        scores = _scores(model(x), target)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return (x * grad).detach()


def token_gradient_x_input(model: nn.Module, inputs: Mapping[str, Tensor], target: Target) -> Tensor:
    """Token relevance (batch, tokens): word-embedding output × gradient, summed over the hidden dimension.

    ``inputs``: the tokenizer's dict (``input_ids`` and e.g. ``attention_mask``); the model
    is called with ``inputs_embeds`` (a Hugging Face model with ``get_input_embeddings``).
    """
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
    embeds.requires_grad_(True)
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    with torch.enable_grad():
        scores = _scores(model(inputs_embeds=embeds, **rest), target)
        (grad,) = torch.autograd.grad(scores.sum(), embeds)
    return (embeds * grad).sum(-1).detach()
