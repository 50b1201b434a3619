"""The architecture table: one tiny random-weight model per family, explained strict.

Whisper, Wav2Vec2, Mamba, T5, SigLIP, Pix2Struct, Gemma-3 (text), Qwen3, Llama-3.2,
GPT-2, RoBERTa, ModernBERT, EfficientNetV2 and CLIP, built from their ``*Config``
classes (nothing downloaded; timm's ``efficientnetv2_rw_t`` without pretrained
weights), each explained with ``strict=True`` under ``AbsLRP()``, ``AttnLRP()`` and
``Epsilon()``.  For every model and rule set: each input the table names receives
relevance shaped like it ((batch, tokens) for token ids), finite and non-zero for every
sample of a batch of two; ``explain``'s result is the documented entry (``input_ids``
where it received relevance, else the first input that did); no node was passed by its
gradient; and the model is left as it was (parameters, buffers, training flags, hooks,
``requires_grad``, its config).

How each kind of model is asked (``Case``):

- decoders (Mamba, Gemma-3, Qwen3, Llama-3.2, GPT-2): ``input_ids``, target the
  next-token logit ``relprop.targets.next_token(TOKEN)``; relevance on the ids;
- encoder–decoders (T5, Whisper, Pix2Struct): the encoder input and
  ``decoder_input_ids``, target the last decoder position's logit of ``TOKEN``
  (``next_token``); relevance on the encoder input (token ids, log-mel features,
  flattened patches) and on the decoder ids;
- audio: Whisper's ``input_features`` (log-mel, above), Wav2Vec2's raw waveform
  ``input_values`` for a class logit;
- CLIP / SigLIP: ``input_ids`` and ``pixel_values``, target image i's score with text i
  (the diagonal of ``logits_per_image``, drawn to score positively: ``_matching_pairs``;
  absLRP's contrast: image i with the other texts); relevance on the pixels and on the
  text ids;
- classifiers (RoBERTa, ModernBERT, EfficientNetV2): a class logit per sample.

Mixtral and Qwen3-MoE (sparse mixture-of-experts routing) are here as they appear in the
table; tests/test_moe.py checks them (and OLMoE, DeepSeek-V3, gpt-oss) in depth.  Mamba's
sequential scan fixes the sequence length at export (relprop warns: it traces each new
length again).  Each model is built once per module; its three rule sets share one
torch.export capture (relprop's per-model cache), so the 2nd and 3rd only rebind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import Tensor, nn

import relprop
from relprop import rules

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

VOCAB = 64
TOKENS = 6
DECODER_TOKENS = 4
TOKEN = 7  # the next token explained for decoders and encoder–decoders
NEXT = relprop.targets.next_token(TOKEN)
CLASSES = [0, 2]  # the class logit explained per sample, for classifiers


@dataclass
class Case:
    """A tiny model, a batch of two inputs, the target, and the inputs that must get relevance."""

    model: nn.Module
    inputs: dict[str, Tensor]
    target: Any
    relevance_on: tuple[str, ...]
    #: the model's output tensors before any explanation
    output: list[Tensor] = field(default_factory=list)


def _ids(tokens: int = TOKENS) -> Tensor:
    return torch.randint(3, VOCAB, (2, tokens))


def _image(size: int) -> Tensor:
    return torch.randn(2, 3, size, size)


def image_text_score(out: Any) -> Tensor:
    """Image i's score with text i: the diagonal of ``logits_per_image`` (images × texts)."""
    return out.logits_per_image.diagonal()


def _matching_pairs(model: nn.Module, draw: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """Images and texts (a batch of two) where image i scores positively with text i.

    The score is a product with a constant (CLIP: cos × exp(logit_scale); SigLIP: the same
    plus a bias), which absLRP's rule gives ``2 (x c)⁺ g``: a pair with a negative cosine
    has no positive contribution and gets no relevance in absLRP's positive pass (as a
    class whose logit is negative in every head does).  A matching pair scores positively;
    random weights need a few draws to give one.
    """
    for _ in range(20):
        inputs = draw()
        with torch.no_grad():
            if (image_text_score(model(**inputs)) > 0).all():
                return inputs
    raise AssertionError("no image-text batch with positive scores in 20 draws")


#: a small decoder block shared by the decoder-only language models
_DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "max_position_embeddings": 32,
}


def _decoder(model: nn.Module) -> Case:
    return Case(model, {"input_ids": _ids()}, NEXT, ("input_ids",))


def _whisper() -> Case:
    config = transformers.WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=8,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=8,  # the encoder reads 2 × 8 frames (its second conv has stride 2)
        max_target_positions=16,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        decoder_start_token_id=2,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    inputs = {"input_features": torch.randn(2, 8, 16), "decoder_input_ids": _ids(DECODER_TOKENS)}
    return Case(
        transformers.WhisperForConditionalGeneration(config), inputs, NEXT, ("input_features", "decoder_input_ids")
    )


def _wav2vec2() -> Case:
    config = transformers.Wav2Vec2Config(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        classifier_proj_size=16,
        num_labels=3,
    )
    inputs = {"input_values": torch.randn(2, 400)}  # 400 samples of waveform: 39 frames
    return Case(transformers.Wav2Vec2ForSequenceClassification(config), inputs, CLASSES, ("input_values",))


def _mamba() -> Case:
    config = transformers.MambaConfig(
        vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4
    )
    return _decoder(transformers.MambaForCausalLM(config))


def _t5() -> Case:
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    inputs = {"input_ids": _ids(), "decoder_input_ids": _ids(DECODER_TOKENS)}
    return Case(transformers.T5ForConditionalGeneration(config), inputs, NEXT, ("input_ids", "decoder_input_ids"))


def _siglip() -> Case:
    config = transformers.SiglipConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": TOKENS,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
    )
    model = transformers.SiglipModel(config).eval()
    inputs = _matching_pairs(model, lambda: {"input_ids": _ids(), "pixel_values": _image(16)})
    return Case(model, inputs, image_text_score, ("input_ids", "pixel_values"))


def _pix2struct() -> Case:
    patch = 4 * 4 * 3  # 4×4 RGB patches, flattened after their (row, column)
    config = transformers.Pix2StructConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 16,
            "d_kv": 8,
            "d_ff": 32,
            "num_layers": 1,
            "num_heads": 2,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 16,
            "pad_token_id": 0,
            "decoder_start_token_id": 0,
        },
        vision_config={
            "hidden_size": 16,
            "patch_embed_hidden_size": patch,
            "d_ff": 32,
            "d_kv": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "seq_len": 16,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 16,
        },
    )
    rows, columns = torch.meshgrid(torch.arange(1, 3), torch.arange(1, 4), indexing="ij")
    positions = torch.stack([rows.flatten(), columns.flatten()], -1).float().expand(2, -1, -1)
    patches = torch.cat([positions, torch.randn(2, 6, patch)], -1)  # a 2×3 grid of patches
    inputs = {
        "flattened_patches": patches,
        "attention_mask": torch.ones(2, 6),
        "decoder_input_ids": _ids(DECODER_TOKENS),
    }
    return Case(
        transformers.Pix2StructForConditionalGeneration(config),
        inputs,
        NEXT,
        ("flattened_patches", "decoder_input_ids"),
    )


def _gemma3() -> Case:
    config = transformers.Gemma3TextConfig(
        **_DECODER, sliding_window=4, layer_types=["sliding_attention", "full_attention"]
    )
    return _decoder(transformers.Gemma3ForCausalLM(config))


def _qwen3() -> Case:
    return _decoder(transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**_DECODER)))


def _llama32() -> Case:
    """Llama-3.2's shape: llama3 rope scaling, θ = 500000, tied embeddings, grouped-query attention."""
    config = transformers.LlamaConfig(
        **{**_DECODER, "max_position_embeddings": 131072},
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
    )
    return _decoder(transformers.LlamaForCausalLM(config))


def _gpt2() -> Case:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    return _decoder(transformers.GPT2LMHeadModel(config))


def _roberta() -> Case:
    config = transformers.RobertaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        pad_token_id=1,
    )
    inputs = {"input_ids": _ids(), "attention_mask": torch.ones(2, TOKENS, dtype=torch.long)}
    return Case(transformers.RobertaForSequenceClassification(config), inputs, CLASSES, ("input_ids",))


def _modernbert() -> Case:
    config = transformers.ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        global_attn_every_n_layers=2,
        local_attention=4,
        num_labels=3,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    inputs = {"input_ids": _ids(), "attention_mask": torch.ones(2, TOKENS, dtype=torch.long)}
    return Case(transformers.ModernBertForSequenceClassification(config), inputs, CLASSES, ("input_ids",))


def _efficientnetv2() -> Case:
    model = timm.create_model("efficientnetv2_rw_t", pretrained=False, num_classes=10)
    return Case(model, {"x": _image(32)}, CLASSES, ("x",))


def _clip() -> Case:
    eot = VOCAB - 1  # the end-of-text token, where CLIP reads a text out
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": TOKENS,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": eot,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        projection_dim=16,
    )

    def inputs() -> dict[str, Tensor]:
        ids = torch.randint(3, eot, (2, TOKENS))
        ids[:, -1] = eot
        return {"input_ids": ids, "pixel_values": _image(16)}

    model = transformers.CLIPModel(config).eval()
    return Case(model, _matching_pairs(model, inputs), image_text_score, ("input_ids", "pixel_values"))


_MOE = {**_DECODER, "num_hidden_layers": 1}


def _mixtral() -> Case:
    config = transformers.MixtralConfig(**_MOE, num_local_experts=4, num_experts_per_tok=2)
    return _decoder(transformers.MixtralForCausalLM(config))


def _qwen3_moe() -> Case:
    config = transformers.Qwen3MoeConfig(
        **_MOE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1
    )
    return _decoder(transformers.Qwen3MoeForCausalLM(config))


MODELS: dict[str, Callable[[], Case]] = {
    "whisper": _whisper,
    "wav2vec2": _wav2vec2,
    "mamba": _mamba,
    "t5": _t5,
    "siglip": _siglip,
    "pix2struct": _pix2struct,
    "gemma3_text": _gemma3,
    "qwen3": _qwen3,
    "llama3.2": _llama32,
    "gpt2": _gpt2,
    "roberta": _roberta,
    "modernbert": _modernbert,
    "efficientnetv2": _efficientnetv2,
    "clip": _clip,
    "mixtral": _mixtral,
    "qwen3_moe": _qwen3_moe,
}

RULE_SETS: dict[str, Callable[[], Any]] = {
    "abslrp": rules.AbsLRP,
    "attnlrp": rules.AttnLRP,
    "epsilon": rules.Epsilon,
}

#: models expected to fail, and why (every rule set)
XFAIL: dict[str, str] = {}


def _params() -> list[Any]:
    params = []
    for name in MODELS:
        for rule_set in RULE_SETS:
            reason = XFAIL.get(name)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(name, rule_set, marks=marks, id=f"{name}-{rule_set}"))
    return params


@pytest.fixture(scope="module")
def _built() -> Iterator[dict[str, Case]]:
    """The models built so far: each once per module, shared by its three rule sets."""
    built: dict[str, Case] = {}
    yield built
    built.clear()


@pytest.fixture
def case(request: pytest.FixtureRequest, _built: dict[str, Case]) -> Case:
    name = request.param
    if name not in _built:
        _built.clear()  # the previous model is done with: its tests are consecutive
        torch.manual_seed(0)
        built = MODELS[name]()
        built.model.eval()
        # one forward before the snapshots: transformers registers its output-capturing hooks
        # on some modules at the first forward (Wav2Vec2's encoder layers)
        built.output = _outputs(built)
        _built[name] = built
    return _built[name]


def _outputs(case: Case) -> list[Tensor]:
    with torch.no_grad():
        out = case.model(**case.inputs)
    return [v for v in (out.to_tuple() if hasattr(out, "to_tuple") else (out,)) if isinstance(v, Tensor)]


def _config(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    return config.to_dict() if config is not None else None


@pytest.mark.parametrize(("case", "rule_set"), _params(), indirect=["case"])
def test_architecture(case: Case, rule_set: str) -> None:
    before, config = snapshot(case.model), _config(case.model)

    graph = relprop.trace(case.model, rules=RULE_SETS[rule_set](), strict=True)
    expl = graph.explanation(case.inputs, case.target)

    # every input the table names: shaped like it ((batch, tokens) for ids), finite,
    # non-zero for every sample
    for key in case.relevance_on:
        x, R = case.inputs[key], expl.inputs.get(key)
        assert R is not None, (key, list(expl.inputs))
        assert R.shape == x.shape and R.dtype == torch.float32, (key, tuple(R.shape))
        assert torch.isfinite(R).all(), key
        assert (R.flatten(1).abs().sum(1) > 0).all(), key
    # explain's result: input_ids where they received relevance, else the first input that did
    first = "input_ids" if "input_ids" in expl.inputs else next(k for k in case.inputs if k in expl.inputs)
    assert torch.equal(expl.relevance, expl.inputs[first])

    # strict: every node on the relevance path bound by a rule, none passed by its gradient
    assert graph.bindings
    assert "passed by their gradient" not in graph.summary()

    # the model as it was: parameters, buffers, flags, hooks, requires_grad, config
    assert_unchanged(case.model, before, f"explaining {type(case.model).__name__}")
    assert _config(case.model) == config
    assert all(torch.equal(a, b) for a, b in zip(_outputs(case), case.output, strict=True))
