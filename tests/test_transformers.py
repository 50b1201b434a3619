"""Hugging Face transformers: token relevance for sequence classifiers and decoder LMs.

Small random configs (no downloads), float64.  For every model and for absLRP,
a conservative set (LRP-ε), AttnLRP and AttnLRP with CP-LRP inside attention:
strict binding covers every node, relevance is (batch, tokens), finite, non-zero
per sample, exactly 0 at padded positions (already in the raw walk, before
relprop's own zeroing by the attention mask), and each sample of the batch is
explained as if it were alone.  On BERT with zero biases, LRP-ε and
``AttnLRP(cp=True)`` conserve the target logit end to end: Σ over every embedding
lookup (word, position, token type) = the logit; AttnLRP without CP does not (its
softmax rule absorbs part of it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import rules

pytestmark = pytest.mark.slow

transformers = pytest.importorskip("transformers")

VOCAB = 100
TOKENS = 8
PAD = 3  # padded positions of the second sample
TOKEN = 7  # the next token explained for decoders


@dataclass
class Case:
    model: nn.Module
    decoder: bool
    #: module path of the word embeddings, and of the other lookups that must get relevance
    words: str
    others: tuple[str, ...] = ()


def _encoder_config(cls: Any, **extra: Any) -> Any:
    return cls(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
        **extra,
    )


def _bert() -> Case:
    model = transformers.BertForSequenceClassification(_encoder_config(transformers.BertConfig))
    return Case(
        model,
        False,
        "bert.embeddings.word_embeddings",
        ("bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings"),
    )


def _distilbert() -> Case:
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB,
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    model = transformers.DistilBertForSequenceClassification(config)
    return Case(
        model,
        False,
        "distilbert.embeddings.word_embeddings",
        ("distilbert.embeddings.position_embeddings",),
    )


def _roberta() -> Case:
    # position ids are computed from the token ids: that lookup must not count as tokens
    model = transformers.RobertaForSequenceClassification(_encoder_config(transformers.RobertaConfig, pad_token_id=1))
    return Case(
        model,
        False,
        "roberta.embeddings.word_embeddings",
        ("roberta.embeddings.position_embeddings",),
    )


def _electra() -> Case:
    model = transformers.ElectraForSequenceClassification(
        _encoder_config(transformers.ElectraConfig, embedding_size=16)
    )
    return Case(model, False, "electra.embeddings.word_embeddings", ("electra.embeddings.position_embeddings",))


def _albert() -> Case:
    model = transformers.AlbertForSequenceClassification(_encoder_config(transformers.AlbertConfig, embedding_size=16))
    return Case(model, False, "albert.embeddings.word_embeddings", ("albert.embeddings.position_embeddings",))


def _deberta() -> Case:
    config = _encoder_config(
        transformers.DebertaV2Config,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=8,
        max_relative_positions=16,
    )
    model = transformers.DebertaV2ForSequenceClassification(config)
    return Case(model, False, "deberta.embeddings.word_embeddings")


def _gpt2_config(**extra: Any) -> Any:
    return transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0, **extra
    )


def _gpt2() -> Case:
    config = _gpt2_config(use_cache=False)
    return Case(transformers.GPT2LMHeadModel(config), True, "transformer.wte", ("transformer.wpe",))


def _llama_config(**extra: Any) -> Any:
    return transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        **extra,
    )


def _llama() -> Case:
    config = _llama_config(use_cache=False)
    return Case(transformers.LlamaForCausalLM(config), True, "model.embed_tokens")


MODELS: dict[str, Callable[[], Case]] = {
    "bert": _bert,
    "distilbert": _distilbert,
    "roberta": _roberta,
    "electra": _electra,
    "albert": _albert,
    "deberta_v2": _deberta,
    "gpt2": _gpt2,
    "llama": _llama,
}

RULE_SETS: dict[str, Callable[[], Any]] = {
    "abslrp": rules.AbsLRP,
    "epsilon": lambda: rules.Epsilon(1e-9),
    "attnlrp": rules.AttnLRP,
    "attnlrp_cp": lambda: rules.AttnLRP(cp=True),
}


def _inputs(decoder: bool, left: bool = True) -> dict[str, Tensor]:
    """A batch of two; the second sample padded (encoders: right, decoders: left by default)."""
    ids = torch.randint(4, VOCAB, (2, TOKENS))
    mask = torch.ones(2, TOKENS, dtype=torch.long)
    pad = slice(0, PAD) if decoder and left else slice(TOKENS - PAD, TOKENS)
    ids[1, pad], mask[1, pad] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def _target(case: Case) -> Any:
    return relprop.targets.next_token(TOKEN) if case.decoder else [0, 2]


def _padded(case: Case, left: bool = True) -> slice:
    return slice(0, PAD) if case.decoder and left else slice(TOKENS - PAD, TOKENS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest) -> Case:
    torch.manual_seed(0)
    built = MODELS[request.param]()
    built.model.double().eval()
    return built


def _alone(inputs: dict[str, Tensor], i: int) -> dict[str, Tensor]:
    return {k: v[i : i + 1] for k, v in inputs.items()}


@pytest.mark.parametrize("rule_set", list(RULE_SETS))
def test_model(case: Case, rule_set: str) -> None:
    torch.manual_seed(1)
    inputs = _inputs(case.decoder)
    graph = relprop.trace(case.model, rules=RULE_SETS[rule_set](), strict=True)
    expl = graph.explanation(inputs, _target(case))
    R = expl.relevance

    # strict: every node on the relevance path has a rule; nothing passed by gradient
    summary = graph.summary()
    assert "passed by their gradient" not in summary
    assert all(b.source in ("default", "structural") for b in graph.bindings)

    # (batch, tokens), finite, non-zero for every sample, the word embeddings' relevance
    assert isinstance(R, Tensor) and R.shape == (2, TOKENS) and R.dtype == torch.float64
    assert torch.isfinite(R).all()
    assert (R.abs().sum(1) > 0).all()
    assert torch.equal(R, expl.inputs["input_ids"])
    assert torch.equal(R, expl.embeddings[case.words])

    # padding: exactly zero, already in the walk (the model's own masking gives it)
    pad = _padded(case)
    assert torch.all(R[1, pad] == 0)
    assert torch.all(expl.passes["input_ids"][:, 1, pad] == 0)
    assert (R[0] != 0).all()

    # position / token-type lookups receive relevance, reported apart from the tokens
    for path in case.others:
        assert path in expl.embeddings, (path, list(expl.embeddings))
        assert torch.isfinite(expl.embeddings[path]).all() and expl.embeddings[path].abs().sum() > 0

    # each sample explained as if alone
    for i in range(2):
        alone = graph.explanation(_alone(inputs, i), _target(case) if case.decoder else _target(case)[i])
        got, want = alone.passes["input_ids"][:, 0], expl.passes["input_ids"][:, i]
        error = (got - want).abs().sum(-1) / want.abs().sum(-1)
        assert (error < 1e-6).all(), (i, error)
        assert torch.equal(alone.relevance[0] == 0, R[i] == 0)


def _bert_without_biases(sharpen: float = 1.0) -> tuple[Case, dict[str, Tensor], list[int], Tensor]:
    """BERT (float64) with every bias zeroed, a batch with token types, targets and their logits.

    ``sharpen`` multiplies the query and key weights: a random BERT attends almost
    uniformly, and the softmax rule absorbs nothing where its input is constant along a row.
    """
    torch.manual_seed(0)
    case = _bert()
    model = case.model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            if name.endswith(("query.weight", "key.weight")):
                p.mul_(sharpen)
    torch.manual_seed(2)
    inputs = _inputs(False)
    inputs["token_type_ids"] = torch.randint(0, 2, (2, TOKENS))
    targets = [1, 2]
    with torch.no_grad():
        logits = model(**inputs).logits[torch.arange(2), targets]
    return case, inputs, targets, logits


def test_bert_epsilon_conserves_the_logit() -> None:
    """LRP-ε (ε = 1e-9, biases zeroed): Σ over all embedding lookups = the target logit.

    LayerNorm gets the ε-rule on its linear map with σ held constant (the mean stays part
    of the map): with a zero bias that map conserves, as the identity rule it replaced did.

    Tokens carry the word embeddings' share; the rest went to the position and
    token-type embeddings (reported in ``Explanation.embeddings``).  Position ids
    are one (1, tokens) tensor shared by the batch: that lookup's relevance is the
    batch's sum, so conservation is checked per sample on single samples and on
    the batch total.
    """
    case, inputs, targets, logits = _bert_without_biases()
    graph = relprop.trace(case.model, rules=rules.Epsilon(1e-9))
    expl = graph.explanation(inputs, targets)
    assert set(expl.embeddings) == {case.words, *case.others}
    total = sum(v.sum() for v in expl.embeddings.values())
    torch.testing.assert_close(total, logits.sum(), rtol=1e-6, atol=1e-10)
    # the tokens do not hold all of it: the other lookups receive a real share
    assert not torch.isclose(expl.relevance.sum(), logits.sum(), rtol=1e-3)
    for i in range(2):
        one = graph.explanation(_alone(inputs, i), targets[i])
        got = sum(v.sum() for v in one.embeddings.values())
        torch.testing.assert_close(got, logits[i], rtol=1e-6, atol=1e-10)
        assert torch.equal(one.relevance, one.inputs["input_ids"])


def test_bert_cp_attnlrp_conserves_the_logit_and_attnlrp_does_not() -> None:
    """AttnLRP(cp=True) (ε = 1e-12, biases zeroed): Σ over all embedding lookups = the logit.

    LayerNorm is its linear map with σ held constant under the ε-rule (conservative
    without bias), GELU and the pooler's tanh pass by identity, attention holds its
    probabilities constant.  Without CP, the softmax rule absorbs a share (Prop. 3.1:
    Σ_i R_x,i = Σ_i x_i R_i − (Σ_i x_i s_i) Σ_j R_j per row), so the sum differs.
    """
    case, inputs, targets, logits = _bert_without_biases(sharpen=10.0)
    graph = relprop.trace(case.model, rules=rules.AttnLRP(1e-12, cp=True))
    expl = graph.explanation(inputs, targets)
    assert set(expl.embeddings) == {case.words, *case.others}
    total = sum(v.sum() for v in expl.embeddings.values())
    torch.testing.assert_close(total, logits.sum(), rtol=1e-8, atol=1e-12)
    for i in range(2):
        one = graph.explanation(_alone(inputs, i), targets[i])
        got = sum(v.sum() for v in one.embeddings.values())
        torch.testing.assert_close(got, logits[i], rtol=1e-8, atol=1e-12)

    attn = relprop.trace(case.model, rules=rules.AttnLRP(1e-12)).explanation(inputs, targets)
    absorbed = logits.sum() - sum(v.sum() for v in attn.embeddings.values())
    assert absorbed.abs() > 1e-3 * logits.sum().abs(), absorbed  # 10⁵ × the tolerance above


def test_next_token_helper_equals_the_lambda() -> None:
    torch.manual_seed(0)
    case = _gpt2()
    case.model.double().eval()
    inputs = _inputs(True)
    graph = relprop.trace(case.model)
    by_helper = graph.explain(inputs, relprop.targets.next_token(TOKEN))
    by_lambda = graph.explain(inputs, lambda out: out.logits[:, -1, TOKEN])
    assert torch.equal(by_helper, by_lambda)
    # one token per sample
    per_sample = graph.explain(inputs, relprop.targets.next_token([TOKEN, 11]))
    assert torch.allclose(per_sample[0], by_helper[0], rtol=1e-10, atol=0)
    assert not torch.allclose(per_sample[1], by_helper[1])
    assert "next_token" in relprop.targets.__all__ and relprop.targets.next_token.__doc__
    assert relprop.next_token is relprop.targets.next_token


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoder_right_padding(name: str) -> None:
    """Right padding: next_token(attention_mask=...) explains each sample's last real token."""
    torch.manual_seed(0)
    case = MODELS[name]()
    case.model.double().eval()
    inputs = _inputs(True, left=False)
    graph = relprop.trace(case.model, rules=rules.Epsilon(1e-9))
    target = relprop.targets.next_token(TOKEN, attention_mask=inputs["attention_mask"])
    expl = graph.explanation(inputs, target)
    pad = _padded(case, left=False)
    assert torch.all(expl.passes["input_ids"][:, 1, pad] == 0)  # causal: nothing flows back
    assert (expl.relevance[1, : TOKENS - PAD] != 0).all()
    # the second sample's target is at its last real position, as if its padding were cut off
    alone = graph.explain({k: v[1:, : TOKENS - PAD] for k, v in inputs.items()}, relprop.targets.next_token(TOKEN))
    torch.testing.assert_close(expl.relevance[1, : TOKENS - PAD], alone[0], rtol=1e-6, atol=1e-12)


# -- causal LMs as Hugging Face builds them: use_cache on ------------------------------------

CONFIGS: dict[str, Callable[..., Any]] = {"gpt2": _gpt2_config, "llama": _llama_config}


def _default_lm(name: str) -> nn.Module:
    """A causal LM from ``AutoModelForCausalLM.from_config``, its config's use_cache left on."""
    torch.manual_seed(0)
    config = CONFIGS[name]()
    assert config.use_cache is True
    return transformers.AutoModelForCausalLM.from_config(config).double().eval()


@pytest.mark.parametrize("rule_set", ["abslrp", "attnlrp"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_lm_with_the_cache_on_is_explained_unmodified(name: str, rule_set: str) -> None:
    """No use_cache=False needed: the same relevance as with it, the model left as it was."""
    model = _default_lm(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    torch.manual_seed(1)
    inputs = _inputs(True)
    target = relprop.targets.next_token(TOKEN)
    expl = relprop.trace(model, rules=RULE_SETS[rule_set]()).explanation(inputs, target)
    off = relprop.trace(model, rules=RULE_SETS[rule_set]()).explain({**inputs, "use_cache": False}, target)
    assert torch.equal(expl.relevance, off)
    assert expl.relevance.shape == (2, TOKENS) and (expl.relevance.abs().sum(1) > 0).all()
    # the shared trace is fed the user's inputs only: no use_cache placeholder
    program = relprop.tracing.trace_program(model, (), inputs)
    assert program.input_labels == ["input_ids", "attention_mask"] and len(program.user_inputs) == 2
    assert not [n for n in program.graph.nodes if n.op == "placeholder" and "cache" in n.name]
    assert expl.output.past_key_values is None and expl.output.logits.shape == (2, TOKENS, VOCAB)
    # a single sample (traced as a repeated batch of two) and a batch of another size
    one = relprop.trace(model, rules=RULE_SETS[rule_set]()).explain(_alone(inputs, 0), target)
    torch.testing.assert_close(one[0], off[0], rtol=1e-6, atol=1e-12)
    # unmodified: config (use_cache still on), parameters and buffers, eval flag
    assert model.config.use_cache is True and model.config.to_dict() == config
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert not model.training
    with torch.no_grad():
        assert model(**inputs).past_key_values is not None  # the model still caches when called


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_lm_given_use_cache_true_is_traced_without_the_cache(name: str) -> None:
    """An explicit use_cache=True: traced as False, with a warning; the same relevance."""
    model = _default_lm(name)
    torch.manual_seed(1)
    inputs = _inputs(True)
    target = relprop.targets.next_token(TOKEN)
    off = relprop.trace(model).explain({**inputs, "use_cache": False}, target)
    with pytest.warns(UserWarning, match="use_cache=False"):
        on = relprop.trace(model).explain({**inputs, "use_cache": True}, target)
    assert torch.equal(on, off)
    assert model.config.use_cache is True


class _Box:
    def __init__(self, value: Tensor) -> None:
        self.value = value


class _ReturnsAnObject(nn.Module):
    """Takes use_cache like a Hugging Face model, yet returns another object either way."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor, use_cache: bool = True) -> dict[str, Any]:
        y = self.lin(x)
        return {"logits": y, "state": _Box(y)}


class _CachingWrapper(nn.Module):
    """Calls a causal LM with use_cache=True itself: the cache is part of its output."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor) -> Any:
        return self.lm(input_ids=input_ids, use_cache=True)


def test_other_non_tensor_outputs_still_raise_a_trace_error() -> None:
    with pytest.raises(relprop.TraceError) as info:
        relprop.trace(_ReturnsAnObject().eval()).explain(torch.randn(2, 3), lambda out: out["logits"][:, 0])
    message = str(info.value)
    assert "torch.export could not capture _ReturnsAnObject" in message
    assert "out['state'] (_Box)" in message and "return the tensors" in message
    assert "use_cache" not in message

    wrapper = _CachingWrapper(_default_lm("gpt2")).eval()
    with pytest.raises(relprop.TraceError) as info:
        relprop.trace(wrapper).explain(_inputs(True)["input_ids"], relprop.targets.next_token(TOKEN))
    message = str(info.value)
    assert "torch.export could not capture _CachingWrapper" in message
    assert "out['past_key_values'] (DynamicCache)" in message


# -- bad input -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert() -> Case:
    torch.manual_seed(0)
    built = _bert()
    built.model.double().eval()
    return built


def test_token_id_outside_the_vocabulary(bert: Case) -> None:
    inputs = _inputs(False)
    graph = relprop.trace(bert.model)
    graph.explain(inputs, [0, 1])  # a valid call first: the cached trace must check too
    inputs["input_ids"][0, 2] = VOCAB + 5
    with pytest.raises(relprop.InputError) as info:
        graph.explain(inputs, [0, 1])
    message = str(info.value)
    assert f"vocabulary size {VOCAB}" in message and str(VOCAB + 5) in message
    assert "bert.embeddings.word_embeddings" in message and "tokenizer" in message
    # and on a first call (before any trace)
    with pytest.raises(relprop.InputError, match=f"vocabulary size {VOCAB}"):
        relprop.trace(bert.model).explain(inputs, [0, 1])


def test_negative_token_id(bert: Case) -> None:
    inputs = _inputs(False)
    inputs["input_ids"][1, 0] = -1
    with pytest.raises(relprop.InputError, match="token id -1"):
        relprop.trace(bert.model).explain(inputs, [0, 1])


def test_target_class_outside_the_head(bert: Case) -> None:
    with pytest.raises(relprop.TargetError) as info:
        relprop.trace(bert.model).explain(_inputs(False), [0, 3])
    message = str(info.value)
    assert "target class 3 (sample 1) is out of range" in message and "3 classes" in message


def test_next_token_outside_the_vocabulary() -> None:
    torch.manual_seed(0)
    case = _gpt2()
    case.model.double().eval()
    with pytest.raises(relprop.TargetError, match=f"outside the model's vocabulary of {VOCAB}"):
        relprop.trace(case.model).explain(_inputs(True), relprop.targets.next_token(VOCAB))


def test_class_index_on_lm_logits_says_use_next_token() -> None:
    torch.manual_seed(0)
    case = _gpt2()
    case.model.double().eval()
    with pytest.raises(relprop.TargetError, match="callable"):
        relprop.trace(case.model).explain(_inputs(True), 3)


def test_empty_input(bert: Case) -> None:
    empty = {"input_ids": torch.zeros(2, 0, dtype=torch.long), "attention_mask": torch.zeros(2, 0, dtype=torch.long)}
    with pytest.raises(relprop.InputError, match="empty"):
        relprop.trace(bert.model).explain(empty, [0, 1])


# -- the ops these models brought in ---------------------------------------------------------


class _Seq(nn.Module):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("rule_set", ["abslrp", "epsilon", "zplus"])
def test_conv1d_addmm_is_a_linear_layer(rule_set: str) -> None:
    """GPT-2's Conv1D exports as addmm(bias, x, W): the same relevance as the nn.Linear."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(5, 4).double()
    with torch.no_grad():
        conv.bias.normal_()
    linear = nn.Linear(4, 5).double()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    head = nn.Linear(5, 3).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    make = {"abslrp": rules.AbsLRP, "epsilon": lambda: rules.Epsilon(1e-9), "zplus": rules.ZPlus}[rule_set]
    g_conv = relprop.trace(_Seq(conv, nn.ReLU(), head).eval(), rules=make())
    got = g_conv.explain(x, [0, 2])
    want = relprop.trace(_Seq(linear, nn.ReLU(), head).eval(), rules=make()).explain(x, [0, 2])
    assert any("addmm" in str(b.info.node.target) and b.info.category == "dense" for b in g_conv.bindings)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert got.abs().sum() > 0


class _WrittenRMSNorm(nn.Module):
    """RMSNorm as Hugging Face Llama writes it: pow, mean, rsqrt, mul."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: Tensor) -> Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + 1e-6))


class _NativeRMSNorm(nn.Module):
    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.aten.rms_norm(x, [x.shape[-1]], self.weight, 1e-6)


@pytest.mark.parametrize("rule_set", ["abslrp", "epsilon"])
def test_written_out_rms_norm_holds_its_statistic_constant(rule_set: str) -> None:
    """x · rsqrt(mean(x²) + ε): the root is a statistic (no relevance), like aten.rms_norm's."""
    torch.manual_seed(0)
    w = torch.randn(6, dtype=torch.float64)
    inner, head = nn.Linear(4, 6).double(), nn.Linear(6, 3).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    make = rules.AbsLRP if rule_set == "abslrp" else (lambda: rules.Epsilon(1e-9))
    g = relprop.trace(_Seq(inner, _WrittenRMSNorm(w), head).eval(), rules=make())
    got = g.explain(x, [0, 2])
    want = relprop.trace(_Seq(inner, _NativeRMSNorm(w), head).eval(), rules=make()).explain(x, [0, 2])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    from relprop.rules.ops import op_name

    names = {op_name(b.info.node.target) for b in g.bindings}
    assert not names & {"aten.pow", "aten.mean", "aten.rsqrt"}, names


def test_rotary_halves_are_a_split() -> None:
    """rotate_half slices q into two halves: data movement, never a pooling; neg is a rescale."""
    torch.manual_seed(0)
    case = _llama()
    case.model.double().eval()
    graph = relprop.trace(case.model)
    graph.explain(_inputs(True), relprop.targets.next_token(TOKEN))
    categories = [b.info.category for b in graph.bindings]
    assert "pool_select" not in categories
    negs = [b for b in graph.bindings if "neg" in str(b.info.node.target)]
    assert negs and all(b.info.category == "rescale" for b in negs)
