"""The public contract: inputs, targets, errors, caching, dtypes, and the user's model left alone."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import relprop
from relprop import rules


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).eval()


def mlp(d_in: int = 6, classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, 8), nn.ReLU(), nn.Linear(8, classes)).eval()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) * 0.5 + self.b(y)


class TokenModel(nn.Module):
    """Embedding + mean pooling + head; the mask arrives as a keyword argument."""

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        return {"logits": self.head(h.mean(1))}


class IntNoEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.to(torch.float32))


class SequenceModel(nn.Module):
    """Outputs (batch, tokens, vocab), like a language model."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
        "params": {k: id(p) for k, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["params"] == before["params"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert after["requires_grad"] == before["requires_grad"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


# -- shapes and return types --------------------------------------------------------------


def test_tensor_input_gives_relevance_shaped_like_it() -> None:
    x = torch.randn(3, 3, 8, 8)
    R = relprop.trace(small_cnn()).explain(x, [0, 1, 2])
    assert R.shape == x.shape and R.dtype == x.dtype and torch.isfinite(R).all()


def test_tuple_input_gives_a_tuple() -> None:
    x, y = torch.randn(2, 3), torch.randn(2, 5)
    R = relprop.trace(TwoInputs().eval()).explain((x, y), 1)
    assert isinstance(R, tuple) and R[0].shape == x.shape and R[1].shape == y.shape


def test_dict_input_with_token_ids_gives_token_relevance() -> None:
    ids = torch.randint(0, 20, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    g = relprop.trace(TokenModel().eval())
    e = g.explanation({"input_ids": ids, "attention_mask": mask}, 0)
    assert e.relevance.shape == (2, 5)
    assert set(e.inputs) == {"input_ids"}
    # masked tokens are multiplied by zero: they get no relevance
    assert torch.equal(e.relevance[1, 3:], torch.zeros(2))


def test_int_input_without_embedding_is_an_input_error() -> None:
    with pytest.raises(relprop.InputError, match="embedding"):
        relprop.trace(IntNoEmbedding().eval()).explain(torch.randint(0, 3, (2, 4)), 0)


# -- targets ------------------------------------------------------------------------------


def test_target_forms_agree() -> None:
    torch.manual_seed(1)
    model, x = mlp().double(), torch.randn(3, 6, dtype=torch.float64)
    g = relprop.trace(model)
    pred = model(x).argmax(1)
    by_none = g.explain(x)
    by_list = g.explain(x, pred.tolist())
    by_tensor = g.explain(x, pred)
    assert torch.equal(by_none, by_list) and torch.equal(by_none, by_tensor)
    by_int = g.explain(x, 2)
    assert torch.equal(by_int, g.explain(x, [2, 2, 2]))


def test_float_target_is_the_initial_relevance() -> None:
    model, x = mlp().double(), torch.randn(2, 6, dtype=torch.float64)
    g = relprop.trace(model, rules.Epsilon(1e-12))
    start = torch.zeros(2, 4, dtype=torch.float64)
    start[:, 1] = 1.0
    R_float = g.explain(x, start)
    # classic LRP starts at the output value; one-hot scaled by 1/value gives the same map
    R_idx = g.explain(x, 1) / model(x)[:, 1:2].detach()
    assert torch.allclose(R_float, R_idx, atol=1e-10)
    with pytest.raises(relprop.TargetError, match="contrastive"):
        g.explain(x, start, contrastive=True)


def test_callable_target_for_sequence_outputs() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    model = SequenceModel().double().eval()
    g = relprop.trace(model)
    R = g.explain(x, lambda out: out[:, -1, 5])
    assert R.shape == x.shape
    # only the last position feeds the selected score
    assert torch.equal(R[:, :2], torch.zeros_like(R[:, :2])) and R[:, 2].abs().sum() > 0
    with pytest.raises(relprop.TargetError, match="callable"):
        g.explain(x, 5)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (4, "out of range"),
        (-1, "out of range"),
        ([0, 1], "3 samples"),
        ([[0], [1], [2]], "one integer class index per sample"),
        (torch.tensor([0.5, 1.0, 2.0]), "shaped like the model output"),
        ("cat", "not understood"),
    ],
)
def test_bad_targets(target: object, match: str) -> None:
    g = relprop.trace(mlp())
    with pytest.raises(relprop.TargetError, match=match) as info:
        g.explain(torch.randn(3, 6), target)
    assert isinstance(info.value, ValueError)


# -- bad inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.full((2, 6), float("nan")), "NaN"),
        (torch.tensor([[float("inf")] * 6] * 2), "Inf"),
        (torch.zeros(0, 6), "empty batch"),
        (torch.randn(2, 7), "cannot run on the given input"),
        ("text", "expected a tensor"),
    ],
)
def test_bad_inputs(x: object, match: str) -> None:
    g = relprop.trace(mlp())
    with pytest.raises(relprop.InputError, match=match) as info:
        g.explain(x, 0)
    assert isinstance(info.value, ValueError)


def test_wrong_shape_after_a_good_trace_is_an_input_error() -> None:
    g = relprop.trace(mlp())
    g.explain(torch.randn(2, 6), 0)
    with pytest.raises(relprop.InputError, match=r"\(2, 9\)"):
        g.explain(torch.randn(2, 9), 0)


# -- caching ------------------------------------------------------------------------------


def test_trace_is_cached_per_signature_and_batch_is_dynamic() -> None:
    g = relprop.trace(small_cnn())
    g.explain(torch.randn(2, 3, 8, 8))
    g.explain(torch.randn(2, 3, 8, 8))
    g.explain(torch.randn(5, 3, 8, 8))
    g.explain(torch.randn(1, 3, 8, 8))
    assert g.trace_count == 1
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    g1 = relprop.trace(pooled.eval())
    g1.explain(torch.randn(2, 3, 8, 8))
    g1.explain(torch.randn(2, 3, 12, 12))
    assert g1.trace_count == 2
    model = small_cnn()
    g2 = relprop.trace(model)
    g2.explain(torch.randn(2, 3, 8, 8))
    model.double()
    g2.explain(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert g2.trace_count == 2


def test_batch_samples_are_independent() -> None:
    """Explaining a batch equals explaining each sample alone (per-sample normalization)."""
    model = small_cnn().double()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    g = relprop.trace(model)
    batch = g.explain(x, [0, 1, 2])
    for i in range(3):
        alone = g.explain(x[i : i + 1], i)
        assert torch.allclose(batch[i : i + 1], alone, atol=1e-12)


# -- the user's model ---------------------------------------------------------------------


def test_model_is_not_modified() -> None:
    model = small_cnn()
    model.train()
    model[0].register_forward_hook(lambda *a: None)
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    out_before = model(x).detach().clone()
    model.train()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="eval mode"):
        relprop.trace(model).explain(x, 1)
    assert_unchanged(model, before)
    assert model.training
    model.eval()
    assert torch.equal(model(x), out_before)


def test_model_is_not_modified_when_explain_fails_half_way() -> None:
    model = small_cnn()
    model.train()
    before = snapshot(model)

    def broken(ctx: rules.Context, R: torch.Tensor) -> list:
        raise RuntimeError("rule failed on purpose")

    g = relprop.trace(model, overrides={nn.ReLU: broken})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="on purpose"):
            g.explain(torch.randn(2, 3, 8, 8), 0)
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())


# -- dtypes -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_follow_the_model_and_agree_with_float64(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    model = small_cnn().double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ref = relprop.trace(model).explain(x, [1, 3])
    low = copy.deepcopy(model).to(dtype)
    R = relprop.trace(low).explain(x.to(dtype), [1, 3])
    assert R.dtype == dtype and torch.isfinite(R).all()
    cos = torch.nn.functional.cosine_similarity(R.double().flatten(1), ref.flatten(1))
    assert (cos > (0.999 if dtype == torch.float32 else 0.9)).all(), cos


# -- rule matching ------------------------------------------------------------------------


def _sources(g: relprop.Graph) -> dict[str, tuple[str, str]]:
    return {b.info.node.name: (type(b.rule).__name__, b.source) for b in g.bindings}


def test_override_precedence_name_over_class_over_op() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    g = relprop.trace(
        model,
        rules.Epsilon(),
        overrides={
            torch.ops.aten.linear.default: rules.GammaRule(),
            nn.Linear: rules.ZPlusRule(),
            "2": rules.FlatRule(),
        },
    )
    g.explain(torch.randn(2, 4), 0)
    src = _sources(g)
    assert src["linear"] == ("ZPlusRule", "class Linear")
    assert src["linear_1"] == ("FlatRule", "name '2'")
    g2 = relprop.trace(model, rules.Epsilon(), overrides={"aten.linear": rules.GammaRule()})
    g2.explain(torch.randn(2, 4), 0)
    assert _sources(g2)["linear"] == ("GammaRule", "op aten.linear")
    assert _sources(g2)["relu"] == ("Pass", "default")


def test_module_overrides_leave_data_movement_alone() -> None:
    g = relprop.trace(small_cnn(), overrides={"*": rules.EpsilonRule()})
    g.explain(torch.randn(2, 3, 8, 8), 0)
    src = _sources(g)
    assert src["flatten"] == ("Pass", "default")
    assert src["conv2d"] == ("EpsilonRule", "name '*'")


def test_register_rule_globally_and_as_decorator() -> None:
    from custom_ops import Cumulative

    model = nn.Sequential(nn.Linear(4, 4), Cumulative(), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 4)
    with pytest.raises(relprop.MissingRuleError) as info:
        relprop.trace(model).explain(x, 0)
    msg = str(info.value)
    assert "relprop_test.running_total.default" in msg and "'1' (Cumulative)" in msg
    assert "custom operator" in msg
    assert 'relprop.register_rule("relprop_test::running_total", relprop.rules.AbsRule())' in msg

    try:

        @relprop.register_rule("relprop_test::running_total")
        class CumsumRule(rules.AbsRule):
            pass

        g = relprop.trace(model)
        R = g.explain(x, 0)
        assert torch.isfinite(R).all()
        assert _sources(g)["running_total"] == ("CumsumRule", "op relprop_test.running_total")
    finally:
        relprop.unregister_rule("relprop_test::running_total")
    with pytest.raises(relprop.MissingRuleError):
        relprop.trace(model).explain(x, 0)
    g = relprop.trace(model, strict=False)
    g.explain(x, 0)
    assert "relprop_test.running_total.default" in g.summary().splitlines()[-1]


def test_bad_rule_objects_are_reported() -> None:
    with pytest.raises(relprop.RuleError):
        relprop.trace(mlp(), rules="abslrp")  # type: ignore[arg-type]
    with pytest.raises(relprop.RuleError, match="cannot match"):
        relprop.trace(mlp(), overrides={3: rules.Pass()}).explain(torch.randn(2, 6))
    with pytest.raises(relprop.RuleError, match="weighted ops"):
        relprop.trace(mlp(), overrides={nn.ReLU: rules.ZPlusRule()}).explain(torch.randn(2, 6))

    def wrong(ctx: rules.Context, R: torch.Tensor) -> list:
        return [R[:, :1] for _ in ctx.inputs]

    with pytest.raises(relprop.RuleError, match="expected"):
        relprop.trace(mlp(), overrides={nn.ReLU: wrong}).explain(torch.randn(2, 6))


def test_summary_lists_every_node_with_module_and_rule() -> None:
    g = relprop.trace(small_cnn())
    with pytest.raises(relprop.InputError, match="nothing traced"):
        g.summary()
    text = g.summary(torch.randn(2, 3, 8, 8))
    assert "aten.conv2d.default" in text and "0 (Conv2d)" in text and "AbsRule" in text
    assert "5 (Linear)" in text


def test_untraceable_model_gets_a_trace_error() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.lin(x)
            return -self.lin(x)

    with pytest.raises(relprop.TraceError, match="torch.export could not capture DataDependent"):
        relprop.trace(DataDependent().eval()).explain(torch.ones(2, 3), 0)


def test_explain_works_under_no_grad_and_inference_mode() -> None:
    model, x = mlp().double(), torch.randn(2, 6, dtype=torch.float64)
    g = relprop.trace(model)
    ref = g.explain(x, 1)
    with torch.no_grad():
        assert torch.equal(g.explain(x, 1), ref)
    with torch.inference_mode():
        x_inf = x.clone()
        R = g.explain(x_inf, 1)
    assert torch.equal(R, ref)


class TokenMajorPacked(nn.Module):
    """A Linear on a token-major (N*B, E) tensor, as nn.MultiheadAttention's out_proj gets."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.head = nn.Linear(4, 4), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        h = self.lin(x.transpose(0, 1).reshape(n * b, e)).view(n, b, e).transpose(0, 1)
        return self.head(h.flatten(1))


@pytest.mark.parametrize(
    "model_fn", [TokenMajorPacked, lambda: nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)]
)
def test_packed_batches_keep_samples_independent(model_fn) -> None:
    torch.manual_seed(4)
    model = model_fn().double().eval()
    if isinstance(model, nn.TransformerEncoderLayer):
        model = nn.Sequential(model, nn.Flatten(), nn.Linear(12, 3)).double().eval()
    x = torch.randn(3, 3, 4, dtype=torch.float64)
    g = relprop.trace(model)
    batch = g.explanation(x, [0, 1, 2]).passes[0]
    alone = torch.cat([g.explanation(x[i : i + 1], i).passes[0] for i in range(3)], dim=1)
    assert torch.allclose(batch, alone, atol=1e-12)


def test_a_non_finite_model_output_is_an_input_error() -> None:
    """Relevance started from a NaN output row would be NaN everywhere: say so, naming the sample."""

    class Divides(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) / (x[:, :1] != 0)  # inf where the first feature is 0

    x = torch.randn(3, 3)
    x[1, 0] = 0.0
    graph = relprop.trace(Divides().eval())
    for rule_set in (None, relprop.rules.Epsilon()):
        with pytest.raises(relprop.InputError, match=r"not finite \(NaN or Inf\) for sample\(s\) \[1\]"):
            relprop.trace(Divides().eval(), rule_set).explain(x, 0)
    with pytest.raises(relprop.InputError, match=r"sample\(s\) \[1\]"):
        graph.explain(x, torch.ones(3, 2))  # a float target: the initial relevance as-is
    x[1, 0] = 1.0
    assert torch.isfinite(graph.explain(x, 0)).all()
