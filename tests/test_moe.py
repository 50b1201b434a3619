"""Mixture of experts: the MoE decoders of transformers explain strict (issue 21, point 1).

- the experts' grouped matrix product (``transformers::grouped_mm_fallback``, a custom op
  whose Python implementation loops over ``offs.tolist()``) is a declared weighted layer;
  its ε and z⁺ relevances equal the explicit per-row sums written here;
- a router's top-k weights are held constant at the product with the experts' output, so
  with zero biases AttnLRP(cp) and LRP-ε conserve relevance: the tokens' relevance sums to
  the explained logit, the model's own output (the oracle);
- ``relprop.register_weighted_op`` declares a user's opaque custom op a weighted layer.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import transformers as T
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.rules import ops

_COMMON = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)

MOE: dict[str, Callable[[], nn.Module]] = {
    "mixtral": lambda: T.MixtralForCausalLM(
        T.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, num_key_value_heads=2, **_COMMON)
    ),
    "qwen3_moe": lambda: T.Qwen3MoeForCausalLM(
        T.Qwen3MoeConfig(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            decoder_sparse_step=1,
            head_dim=8,
            norm_topk_prob=True,
            num_key_value_heads=2,
            **_COMMON,
        )
    ),
    "olmoe": lambda: T.OlmoeForCausalLM(
        T.OlmoeConfig(num_experts=4, num_experts_per_tok=2, num_key_value_heads=2, eos_token_id=None, **_COMMON)
    ),
    # sigmoid router scores, a shared expert, a dense first layer, latent attention
    "deepseek_v3": lambda: T.DeepseekV3ForCausalLM(
        T.DeepseekV3Config(
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            moe_intermediate_size=24,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            kv_lora_rank=16,
            q_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=8,
            num_key_value_heads=4,
            **_COMMON,
        )
    ),
    # softmax over the top-k logits, attention sinks
    "gpt_oss": lambda: T.GptOssForCausalLM(
        T.GptOssConfig(
            num_local_experts=4, num_experts_per_tok=2, head_dim=8, sliding_window=8, num_key_value_heads=2, **_COMMON
        )
    ),
}

RULE_SETS: dict[str, Callable[[], relprop.rules.RuleSet]] = {
    "abslrp": rules.AbsLRP,
    "attnlrp": rules.AttnLRP,
    "attnlrp_cp": lambda: rules.AttnLRP(cp=True),
    "epsilon": rules.Epsilon,
}

IDS = torch.tensor([[5, 17, 33, 2, 60, 41, 8], [9, 1, 22, 48, 13, 30, 55]])
TOKEN = 3


@pytest.fixture(scope="module", params=list(MOE))
def moe(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    """The model with zero biases (and zero attention sinks): one export serves every test."""
    torch.manual_seed(0)
    model = MOE[request.param]().eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("bias") or "sinks" in key:
                p.zero_()
    return request.param, model


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("rule_set", list(RULE_SETS))
def test_moe_explains_strict(moe: tuple[str, nn.Module], rule_set: str) -> None:
    name, model = moe
    before, config = _state(model), model.config.to_dict()
    graph = relprop.trace(model, rules=RULE_SETS[rule_set](), strict=True)
    R = graph.explain(IDS, relprop.targets.next_token(TOKEN))
    assert R.shape == IDS.shape
    assert torch.isfinite(R).all() and (R != 0).any(dim=1).all()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert model.config.to_dict() == config and not model.training
    summary = str(graph.summary())
    assert "dense" in summary  # the experts' products are weighted layers


@pytest.mark.slow
@pytest.mark.parametrize("rule_set", ["attnlrp_cp", "epsilon"])
def test_moe_conserves_with_zero_biases(moe: tuple[str, nn.Module], rule_set: str) -> None:
    name, model = moe
    if name == "gpt_oss":
        pytest.skip("gpt-oss's experts compute (up + 1) * glu: the constant 1 takes relevance as a bias does")
    with torch.no_grad():
        logit = model(IDS).logits[:, -1, TOKEN]
    R = relprop.trace(model, rules=RULE_SETS[rule_set](), strict=True).explain(IDS, relprop.targets.next_token(TOKEN))
    # float32 (the experts' eager kernel takes no float64): the sum is the logit to rounding
    torch.testing.assert_close(R.sum(1), logit, rtol=2e-3, atol=2e-4)


def test_router_weights_get_no_relevance() -> None:
    """The router's logits receive nothing: its top-k weights are held at the product."""
    torch.manual_seed(0)
    model = MOE["mixtral"]().eval()
    for rule_set in ("attnlrp", "attnlrp_cp", "epsilon"):
        graph = relprop.trace(model, rules=RULE_SETS[rule_set](), strict=True)
        ex = graph.explanation(IDS, relprop.targets.next_token(TOKEN), record=True)
        rows = [line.split() for line in graph.summary().splitlines()[2:]]
        routers = [r[0] for r in rows if r[1].startswith("aten.linear") and r[2].endswith("mlp.gate")]
        assert len(routers) == 2, "each layer's router is on the relevance path"
        for name in routers:
            r = ex.node_relevance.get(name)
            assert r is None or torch.count_nonzero(r) == 0, (rule_set, name)
        experts = [r[0] for r in rows if r[1].startswith("transformers.grouped_mm")]
        assert all(torch.count_nonzero(ex.node_relevance[name]) > 0 for name in experts)


# -- the grouped matrix product, against explicit sums ----------------------------------------


class Grouped(nn.Module):
    """y[s] = x[s] @ W[e(s)] with rows sorted by expert, as transformers' MoE experts export."""

    def __init__(self, weight: Tensor, offs: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.register_buffer("offs", offs)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.transformers.grouped_mm_fallback(x, self.weight, self.offs)


def _groups(offs: Tensor, rows: int) -> Tensor:
    return torch.bucketize(torch.arange(rows), offs, right=True)


@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_grouped_mm_rules_equal_explicit_sums(rule: str) -> None:
    """Each row (a sample here) explains output column 2: R_x[s, i] = z[s, i] / Σ_i z[s, i] · y[s, 2]
    with z = x[s, i] W[e(s), i, 2] (ε, ε = 0) or its positive part (z⁺)."""
    torch.manual_seed(1)
    x = torch.randn(7, 3, dtype=torch.float64)
    W = torch.randn(4, 3, 5, dtype=torch.float64)
    offs = torch.tensor([2, 2, 5, 7], dtype=torch.int32)  # expert 1 gets no rows
    groups = _groups(offs, 7)
    expected = torch.zeros_like(x)
    for s in range(7):
        z = x[s] * W[groups[s], :, 2]
        y = z.sum()
        if rule == "zplus":  # ZPlus's stabiliser: Σ z⁺ + 1e-9 (a row with no positive z gets 0)
            z = z.clamp(min=0)
        expected[s] = z / (z.sum() + (1e-9 if rule == "zplus" else 0.0)) * y
    rule_set = rules.Epsilon(0.0) if rule == "epsilon" else rules.ZPlus()
    got = relprop.trace(Grouped(W, offs).eval(), rules=rule_set, strict=True, cache=False).explain(x, target=2)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12)


# -- declaring a user's opaque custom op -------------------------------------------------------


@torch.library.custom_op("relprop_test::rowscale_mm", mutates_args=())
def rowscale_mm(x: Tensor, w: Tensor, counts: Tensor) -> Tensor:
    """x @ w for the first counts[0] rows, 2 x @ w for the rest: its size depends on a value."""
    n = int(counts[0])
    return torch.cat([x[:n] @ w, 2 * (x[n:] @ w)])


@rowscale_mm.register_fake
def _(x: Tensor, w: Tensor, counts: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], w.shape[1])


def _rowscale_backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
    x, w, counts = ctx.saved_tensors
    scale = torch.ones(x.shape[0], 1, dtype=x.dtype)
    scale[int(counts[0]) :] = 2
    return (grad * scale) @ w.T, x.T @ (grad * scale), None


def _rowscale_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


rowscale_mm.register_autograd(_rowscale_backward, setup_context=_rowscale_setup)


class RowScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
        self.register_buffer("counts", torch.tensor([2]))

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.relprop_test.rowscale_mm(x, self.w, self.counts)


def test_register_weighted_op() -> None:
    torch.manual_seed(2)
    model = RowScale().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(relprop.MissingRuleError, match="register_weighted_op"):
        relprop.trace(model, rules=rules.Epsilon(0.0), strict=True, cache=False).explain(x, target=0)
    relprop.register_weighted_op("relprop_test::rowscale_mm", input=0, weight=1)
    try:
        got = relprop.trace(model, rules=rules.Epsilon(0.0), strict=True, cache=False).explain(x, target=1)
        scale = torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0], dtype=torch.float64)[:, None]
        expected = scale * x * model.w[:, 1].detach()  # each row explains its column 1: z itself
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    finally:
        ops.DECLARED_WEIGHTED.pop("relprop_test.rowscale_mm", None)
    for bad in (dict(input=0, weight=0), dict(input=-1, weight=1), dict(input=0, weight=1, bias=True)):
        with pytest.raises(relprop.RuleError, match="distinct argument positions"):
            relprop.register_weighted_op("relprop_test::rowscale_mm", **bad)
    with pytest.raises(relprop.RuleError, match="takes an operator"):
        relprop.register_weighted_op(42)


# -- copy_ (no derivative in ATen) -------------------------------------------------------------


class CopyInto(nn.Module):
    """Writes a computed tensor into a slice of a fresh one (``copy_`` on a view)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(8, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = x.new_zeros(x.shape[0], 8)
        out[:, :4].copy_(self.a(x))
        out[:, 4:].copy_(torch.relu(x))
        return self.b(out)


@pytest.mark.parametrize("rule_set", ["abslrp", "epsilon"])
def test_copy_into_a_slice_explains(rule_set: str) -> None:
    torch.manual_seed(3)
    model = CopyInto().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    rule = rules.Epsilon(1e-12) if rule_set == "epsilon" else RULE_SETS[rule_set]()
    R = relprop.trace(model, rules=rule, strict=True, cache=False).explain(x, target=1)
    assert torch.isfinite(R).all() and R.shape == x.shape
    if rule_set == "epsilon":
        torch.testing.assert_close(R.sum(1), model(x)[:, 1].detach(), rtol=1e-6, atol=1e-9)
