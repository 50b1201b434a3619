"""The model zoo: relprop runs unmodified on timm, torchvision and Hugging Face models.

Random weights, small inputs.  For every model and rule set: relevance shaped
like the input, finite, non-zero for every sample; strict binding covers every
node; absLRP's positive pass has Σ|R| = 1 per sample at the input; each sample
of a batch of two (different targets) is explained as if it were alone; and the
model is left exactly as it was.

Which rule sets run on which model (``RULES_FOR``): the CNNs get absLRP, LRP-ε and
ε-z⁺-flat; the transformers also get AttnLRP and AttnLRP with CP-LRP inside attention
(``AttnLRP(cp=True)``).  In float64 with zero biases, ``AttnLRP(cp=True)`` conserves
the target logit on a timm ViT (``test_timm_vit_cp_attnlrp_conserves_the_logit``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from custom_ops import Cumulative
from torch import Tensor, nn

import relprop
from relprop import rules

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

timm = pytest.importorskip("timm")
tv = pytest.importorskip("torchvision.models")
transformers = pytest.importorskip("transformers")


@dataclass
class Case:
    """A zoo model with an input batch of two and one target per sample."""

    model: nn.Module
    inputs: Any
    targets: list[int]
    #: select/slice nodes that pool (keep a part, drop the rest): the class-token readouts
    poolings: int = 0


def _image(size: int) -> Tensor:
    return torch.randn(2, 3, size, size)


def _bert() -> Case:
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(1, 64, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    ids[1, 5:], mask[1, 5:] = 0, 0  # the second row is padded
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return Case(model, inputs, [0, 2], poolings=1)


def _tv_vit() -> nn.Module:
    model = tv.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision initialises the head to zero
    nn.init.normal_(model.heads.head.bias, std=0.2)
    return model


class TorchEncoder(nn.Module):
    """``nn.TransformerEncoder`` (batch first, causal mask), read out at the last token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype)
        return self.head(self.encoder(self.embed(x), mask=mask, is_causal=True)[:, -1])


class TorchAttention(nn.Module):
    """``nn.MultiheadAttention`` called directly (with its weights: the explicit softmax path)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        a, _ = self.attention(h, h, h)
        return self.head(self.norm(h + a).mean(1))


ZOO: dict[str, Callable[[], Case]] = {
    "timm_vgg16": lambda: Case(timm.create_model("vgg16", num_classes=10), _image(32), [3, 7]),
    "timm_resnet50": lambda: Case(timm.create_model("resnet50", num_classes=10), _image(64), [3, 7]),
    "timm_vit_base_patch16_224": lambda: Case(
        timm.create_model("vit_base_patch16_224", num_classes=10, img_size=64, depth=4),
        _image(64),
        [3, 7],
        poolings=1,
    ),
    "tv_resnet18": lambda: Case(tv.resnet18(num_classes=10), _image(64), [3, 7]),
    "tv_mobilenet_v2": lambda: Case(tv.mobilenet_v2(num_classes=10), _image(64), [3, 7]),
    "tv_convnext_tiny": lambda: Case(tv.convnext_tiny(num_classes=10), _image(64), [3, 7]),
    "tv_swin_t": lambda: Case(tv.swin_t(num_classes=10), _image(64), [3, 7]),
    "tv_densenet121": lambda: Case(tv.densenet121(num_classes=10), _image(64), [3, 7]),
    "hf_bert": _bert,
    # transformers beyond ViT-B, Swin-T and BERT, small configs
    "timm_deit_tiny_distilled": lambda: Case(
        timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32, depth=2),
        _image(32),
        # classes whose logit is positive in both heads: the two heads' mean is a sum, where
        # absLRP's positive pass keeps only positive addends (a class negative in both heads
        # gets Σ|R| = 0 in that pass, as in the reference's rule for sums)
        [6, 1],
        poolings=2,  # the class token and the distillation token
    ),
    "timm_swin_tiny": lambda: Case(  # two blocks per stage: the second has the shifted-window mask
        timm.create_model(
            "swin_tiny_patch4_window7_224", num_classes=10, img_size=56, depths=(2, 2), num_heads=(2, 4), embed_dim=32
        ),
        _image(56),
        [3, 7],
    ),
    "timm_eva02_tiny": lambda: Case(
        timm.create_model("eva02_tiny_patch14_224", num_classes=10, img_size=28, depth=2),
        _image(28),
        [3, 7],
        poolings=1,
    ),
    "tv_vision_transformer": lambda: Case(_tv_vit(), _image(32), [3, 7], poolings=1),
    "torch_transformer_encoder": lambda: Case(TorchEncoder(), torch.randn(2, 5, 6), [3, 7], poolings=1),
    "torch_multihead_attention": lambda: Case(TorchAttention(), torch.randn(2, 5, 6), [3, 7]),
}

RULE_SETS: dict[str, Callable[[], Any]] = {
    "abslrp": rules.AbsLRP,
    "epsilon": lambda: rules.Epsilon(1e-6),
    "epsilon_plus_flat": rules.EpsilonPlusFlat,
    "attnlrp": rules.AttnLRP,
    "attnlrp_cp": lambda: rules.AttnLRP(cp=True),
}

_CLASSIC = ("abslrp", "epsilon", "epsilon_plus_flat")
_ATTENTION = ("attnlrp", "attnlrp_cp")
_TRANSFORMERS = ("timm_vit_base_patch16_224", "tv_swin_t", "hf_bert")
_NEW_TRANSFORMERS = (
    "timm_deit_tiny_distilled",
    "timm_swin_tiny",
    "timm_eva02_tiny",
    "tv_vision_transformer",
    "torch_transformer_encoder",
    "torch_multihead_attention",
)
#: the rule sets each model runs with: the CNNs do not need AttnLRP; the transformers added
#: for it skip ε-z⁺-flat (its first-layer and convolution rules are the CNNs' business)
RULES_FOR: dict[str, tuple[str, ...]] = {
    **{name: _CLASSIC for name in ZOO},
    **{name: _CLASSIC + _ATTENTION for name in _TRANSFORMERS},
    **{name: ("abslrp", "epsilon") + _ATTENTION for name in _NEW_TRANSFORMERS},
}


@contextlib.contextmanager
def _one_export_per_model(model: nn.Module) -> Iterator[None]:
    """Share torch.export's capture of ``model`` between its rule sets (test speed only).

    Each ``relprop.trace`` still binds its own rules; only the rule-independent
    capture of this one model, the slow part for deep models, is memoized.
    """
    import relprop.graph as graph_module
    from relprop.tracing import signature_of

    original = getattr(graph_module, "trace_program", None)
    if original is None:
        yield
        return
    programs: dict[Any, Any] = {}

    def memoized(traced: nn.Module, args: tuple, kwargs: dict, **options: Any) -> Any:
        if traced is not model:
            return original(traced, args, kwargs, **options)
        key = (signature_of(traced, args, kwargs), tuple(sorted(options.items())))
        if key not in programs:
            programs[key] = original(traced, args, kwargs, **options)
        return programs[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(graph_module, "trace_program", memoized)
        yield


@pytest.fixture(scope="module")
def _built() -> Iterator[dict[str, Any]]:
    """The zoo model under test, kept (with its memoized export) while consecutive tests use it.

    ``test_zoo`` is parametrized over (model, rule set) pairs grouped by model; a
    module-scoped fixture parametrized indirectly by such pairs would be rebuilt per test.
    """
    held: dict[str, Any] = {"name": None, "case": None, "stack": contextlib.ExitStack()}
    yield held
    held["stack"].close()


@pytest.fixture
def case(request: pytest.FixtureRequest, _built: dict[str, Any]) -> Case:
    name = request.param
    if _built["name"] != name:
        _built["stack"].close()
        _built.update(name=None, case=None, stack=contextlib.ExitStack())
        torch.manual_seed(0)
        built = ZOO[name]()
        built.model.eval()
        _built["stack"].enter_context(_one_export_per_model(built.model))
        _built.update(name=name, case=built)
    return _built["case"]


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
    }


def _output(case: Case) -> Tensor:
    with torch.no_grad():
        out = case.model(**case.inputs) if isinstance(case.inputs, dict) else case.model(case.inputs)
    return out.logits if hasattr(out, "logits") else out


def _main_input(case: Case) -> Tensor:
    return case.inputs["input_ids"] if isinstance(case.inputs, dict) else case.inputs


def _sample(inputs: Any, i: int) -> Any:
    if isinstance(inputs, dict):
        return {k: v[i : i + 1] for k, v in inputs.items()}
    return inputs[i : i + 1]


@pytest.mark.parametrize(
    "case, rule_set",
    [(name, rule_set) for name in ZOO for rule_set in RULES_FOR[name]],
    indirect=["case"],
)
def test_zoo(case: Case, rule_set: str) -> None:
    before, out_before = _snapshot(case.model), _output(case)

    graph = relprop.trace(case.model, rules=RULE_SETS[rule_set](), strict=True)
    expl = graph.explanation(case.inputs, case.targets)
    R = expl.relevance

    # shaped like the input (token ids: one relevance per token), finite, non-zero per sample
    x = _main_input(case)
    assert isinstance(R, Tensor) and R.shape == x.shape and R.dtype == torch.float32
    assert torch.isfinite(R).all()
    assert (R.flatten(1).abs().sum(1) > 0).all()
    assert expl.classes is not None and expl.classes.tolist() == case.targets
    if isinstance(case.inputs, dict):  # token ids: the relevance read at the word embedding
        assert torch.equal(R, expl.inputs["input_ids"])

    # strict binding covered every node on the relevance path, by the rule set or structure
    assert graph.bindings
    # canonized folds read "default; <norm> folded in"
    assert all(b.source.split(";")[0] in ("default", "structural") for b in graph.bindings)
    assert "passed by their gradient" not in graph.summary()

    key = "input_ids" if isinstance(case.inputs, dict) else 0
    if rule_set == "abslrp":
        # the positive pass (from the target) reaches the input with Σ|R| = 1 per sample
        positive = expl.passes[key][0]
        assert expl.contrastive and expl.passes[key].shape[0] == 2
        torch.testing.assert_close(positive.flatten(1).abs().sum(1), torch.ones(2))
    if rule_set in ("abslrp",) + _ATTENTION:
        # a batch of two with different targets: each sample explained as if alone (per
        # pass: a contrastive map is a small difference of two unit maps)
        for i, t in enumerate(case.targets):
            alone = graph.explanation(_sample(case.inputs, i), t).passes[key][:, 0]
            together = expl.passes[key][:, i]
            error = (alone - together).flatten(1).abs().sum(1) / together.abs().flatten(1).sum(1)
            assert (error < 1e-3).all(), (i, error)

    # selects and slices: only the class-token poolings compute, every split or crop moves
    pooling = [b.info.node.name for b in graph.bindings if b.info.category == "pool_select"]
    assert len(pooling) == case.poolings, pooling

    # the model is exactly as it was: parameters, buffers, flags, output
    after = _snapshot(case.model)
    assert after["grad"] == before["grad"] and after["training"] == before["training"]
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v) and after["state"][k].dtype == v.dtype, k
    assert torch.equal(_output(case), out_before)


def test_bert_padding_gets_no_relevance() -> None:
    """Padded tokens are masked out of every attention: absLRP gives them exactly zero."""
    torch.manual_seed(0)
    case = _bert()
    case.model.eval()
    R = relprop.trace(case.model).explain(case.inputs, case.targets)
    assert R.shape == (2, 8)
    assert torch.all(R[1, 5:] == 0)
    assert (R[:, :5] != 0).all()


def test_timm_vit_cp_attnlrp_conserves_the_logit() -> None:
    """AttnLRP with CP-LRP inside attention, float64, every bias, the position embedding and
    the class token zeroed: Σ over the pixels = the target logit.

    Every rule on the way conserves: ε (tiny) on the patch convolution, the linear layers,
    LayerNorm's linear map and the residual sums; the identity on GELU; the attention
    probabilities held constant.  Without CP the softmax rule absorbs part of the logit.
    """
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, depth=2).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("pos_embed", "cls_token"):
                p.zero_()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = [3, 7]
    with torch.no_grad():
        logits = model(x)[torch.arange(2), targets]
    R = relprop.trace(model, rules.AttnLRP(1e-12, cp=True)).explain(x, targets)
    torch.testing.assert_close(R.sum((1, 2, 3)), logits, rtol=1e-8, atol=1e-12)
    R_attn = relprop.trace(model, rules.AttnLRP(1e-12)).explain(x, targets)
    assert not torch.allclose(R_attn.sum((1, 2, 3)), logits, rtol=1e-2)


# -- ops outside the rule tables: a custom operator ----------------------------------------------


class WithUnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.block = Cumulative()
        self.out = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.block(self.inp(x)))


def test_unknown_op_strict_raises_with_fix() -> None:
    model = WithUnknownOp().eval()
    x = torch.randn(2, 4)
    with pytest.raises(relprop.MissingRuleError) as info:
        relprop.trace(model).explain(x, [0, 2])
    message = str(info.value)
    assert "relprop_test.running_total" in message and "custom operator" in message
    assert "'block'" in message and "Cumulative" in message
    assert 'relprop.register_rule("relprop_test::running_total"' in message


@pytest.mark.parametrize("rule_set", ["abslrp", "epsilon"])
def test_unknown_op_lenient_passes_by_gradient(rule_set: str) -> None:
    model = WithUnknownOp().eval()
    x = torch.randn(2, 4)
    graph = relprop.trace(model, rules=RULE_SETS[rule_set](), strict=False)
    expl = graph.explanation(x, [0, 2], record=True)
    assert expl.relevance.shape == x.shape and torch.isfinite(expl.relevance).all()
    summary = graph.summary()
    assert "passed by their gradient for want of a rule (strict=False): relprop_test.running_total.default" in summary
    (binding,) = [b for b in graph.bindings if "running_total" in str(b.info.node.target)]
    assert binding.source.startswith("gradient") and binding.info.module_path == "block"
    # the gradient of a cumulative sum along dim 1 is the reversed cumulative sum
    name = binding.info.node.name
    R_out = expl.node_relevance[name]
    (R_in,) = expl.records[name]
    torch.testing.assert_close(R_in, R_out.flip(-1).cumsum(-1).flip(-1))


def test_unknown_op_registered_rule_is_used() -> None:
    """The register_rule line the error suggests makes the model explainable in strict mode."""
    model = WithUnknownOp().eval()
    relprop.register_rule("relprop_test::running_total", rules.AbsRule())
    try:
        graph = relprop.trace(model)
        R = graph.explain(torch.randn(2, 4), [0, 2])
    finally:
        relprop.unregister_rule("relprop_test::running_total")
    assert torch.isfinite(R).all() and (R.abs().sum(1) > 0).all()
    (binding,) = [b for b in graph.bindings if "running_total" in str(b.info.node.target)]
    assert binding.source == "op relprop_test.running_total" and isinstance(binding.rule, rules.AbsRule)


# -- graph structures the zoo relies on, in isolation ------------------------------------------


def _categories(model: nn.Module, x: Tensor) -> dict[str, list[str]]:
    graph = relprop.trace(model.eval())
    R = graph.explain(x, 0)
    assert torch.isfinite(R).all() and R.abs().sum() > 0
    found: dict[str, list[str]] = {}
    for b in graph.bindings:
        found.setdefault(str(b.info.category), []).append(str(b.info.node.target))
    return found


class ShapeMask(nn.Module):
    """A mask built from ``new_zeros``/``zeros_like`` (Swin's window mask): a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        mask = x.new_zeros(x.shape[1:])
        mask[1:] = -100.0
        h = self.lin(x)
        return torch.softmax(h + mask + torch.zeros_like(h), dim=-1)


def test_shape_only_ops_carry_no_relevance() -> None:
    found = _categories(ShapeMask(), torch.randn(2, 4))
    targets = [t for ts in found.values() for t in ts]
    assert not any("zeros" in t or "fill" in t or "copy" in t for t in targets), found
    assert found["add"] == ["aten.add.Tensor"] * 2 and "softmax" in found


class PatchMerge(nn.Module):
    """Swin's patch merging: four strided 2-D slices, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        parts = [x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]]
        return self.lin(torch.cat(parts, -1)).mean((1, 2))


def test_strided_2d_slices_are_a_split() -> None:
    found = _categories(PatchMerge(), torch.randn(2, 3, 4, 4))
    assert "pool_select" not in found and len(found["split"]) == 8, found


class PadCrop(nn.Module):
    """Pad to a multiple of a window, compute per position, crop back (Swin's windows)."""

    def __init__(self, crop_more: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.crop_more = crop_more

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        h = self.lin(torch.nn.functional.pad(x, (0, 0, 0, 2)))
        h = h[:, : n - 1] if self.crop_more else h[:, :n]
        return h.sum(1)


def test_crop_of_padding_moves_other_crops_pool() -> None:
    x = torch.randn(2, 5, 3)
    assert "pool_select" not in _categories(PadCrop(), x)
    assert len(_categories(PadCrop(crop_more=True), x)["pool_select"]) == 1


class FixedBatch(nn.Module):
    """A forward that hard-codes the batch size it was written for."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        n = 2 if x.shape[0] == 2 else x.shape[0]
        return self.lin(x.view(n, 4))


def test_model_that_fixes_its_batch_is_traced_per_batch_size() -> None:
    graph = relprop.trace(FixedBatch().eval())
    for batch in (2, 3, 1):
        x = torch.randn(batch, 4)
        R = graph.explain(x, 0)
        assert R.shape == x.shape and torch.isfinite(R).all()
    assert graph.trace_count == 3
