"""The transposed-product fast path of weighted ops equals the autograd path exactly."""

from __future__ import annotations

import dataclasses
import operator

import pytest
import torch
from torch import nn

import relprop
from relprop.rules import abslrp, abslrp_closed, derived_weights


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1),
        lambda: nn.Conv2d(4, 8, (3, 5), stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=2),
        lambda: nn.Conv1d(4, 6, 4, stride=3),
        lambda: nn.Conv3d(2, 3, 2, stride=2),
        lambda: nn.Conv2d(4, 6, 3, padding="same"),
    ],
)
def test_weighted_fast_path_matches_autograd(conv, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = conv()
    n = layer.weight.dim() - 2
    x = torch.randn(2, layer.in_channels, *([11] * n), dtype=torch.float64)
    model = nn.Sequential(layer, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).double()
    model(x)
    model.eval()
    fast = relprop.trace(model).explain(x, [0, 2])
    monkeypatch.setattr(abslrp.AbsRule, "_weighted", lambda self, ctx, g: None)
    slow = relprop.trace(model).explain(x, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-14, rtol=0)


@pytest.mark.parametrize(
    "rule_set",
    [
        relprop.rules.Epsilon(1e-6),
        relprop.rules.EpsilonPlusFlat(),
        relprop.rules.AlphaBeta(2.0, 1.0),
        relprop.rules.ZBox(-1.0, 1.0),
    ],
    ids=repr,
)
def test_classic_rules_fast_path_matches_autograd(rule_set, monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop.rules import lrp

    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    model = (
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
        .double()
        .eval()
    )
    fast = relprop.trace(model, rule_set).explain(x, [0, 2])
    monkeypatch.setattr(lrp, "layer_product", lambda ctx, i, w, g: None)
    slow = relprop.trace(model, rule_set).explain(x, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-12, rtol=1e-10)


class _Block(nn.Module):
    """Conv, eval batch norm, ReLU, max pooling and a residual add, as in ResNets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4, affine=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.head = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        return self.head(h.flatten(1))


class _NewGELU(nn.Module):
    """GELU's tanh form written out, as GPT-2's ``NewGELUActivation``: one region of ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * torch.pow(x, 3.0))))


class _Encoder(nn.Module):
    """Layer norm, GELU (both variants), residual adds, and a gated SiLU unit with a constant
    scale and a division by a constant, as in transformers and Llama-style decoders."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 6)
        self.norm2 = nn.LayerNorm(6, elementwise_affine=False)
        self.fc2 = nn.Linear(6, 6)
        self.gate = nn.Linear(6, 6)
        self.up = nn.Linear(6, 6)
        self.register_buffer("scale", torch.randn(4, 6))
        self.new_gelu = _NewGELU()
        self.head = nn.Linear(6 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + nn.functional.gelu(self.fc(self.norm(x)))
        h = h + nn.functional.gelu(self.fc2(self.norm2(h)), approximate="tanh")
        h = h + nn.functional.silu(self.gate(h)) * self.up(h) * self.scale / self.scale.flip(0)
        h = torch.tanh(h) + nn.functional.softplus(h) + self.new_gelu(h)
        return self.head(h.flatten(1))


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean = torch.randn(m.num_features, generator=g)
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
            if m.affine:
                m.weight.data = torch.randn(m.num_features, generator=g)
        if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            m.weight.data = torch.randn(m.normalized_shape, generator=g)
    return model.double().eval()


@pytest.mark.parametrize("contrastive", [True, False])
@pytest.mark.parametrize("maxpool_divide", [True, False])
@pytest.mark.parametrize("case", ["block", "encoder"])
def test_abslrp_closed_forms_match_generic_path(
    case: str, maxpool_divide: bool, contrastive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ReLU, batch norm, add, max pooling, layer norm, GELU: closed form = autograd path."""
    torch.manual_seed(0)
    if case == "block":
        model = _randomize(_Block())
        x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
        x[0, :, :2] = 0.0  # exact zeros at ReLUs
        x[1, :, :, :4] = 0.5  # ties inside max-pooling windows
    else:
        model = _randomize(_Encoder())
        x = torch.randn(3, 4, 6, dtype=torch.float64)
    rules = relprop.rules.AbsLRP(maxpool_divide=maxpool_divide)
    fast = relprop.trace(model, rules).explain(x, [0, 2, 1], contrastive=contrastive)
    seen: list[str] = []
    for name in ("closed_form", "diagonal_step"):  # record which nodes had a closed form, use none
        form = getattr(abslrp_closed, name)

        def spy(ctx, *a, form=form):  # noqa: ANN001, ANN202
            # the closed form must leave R for the generic path
            ctx.hints = dataclasses.replace(ctx.hints, owns_relevance=False)
            if form(ctx, *a) is not None:
                seen.append(str(ctx.op))

        monkeypatch.setattr(abslrp_closed, name, spy)
    monkeypatch.setattr(abslrp.AbsRule, "_weighted", lambda self, ctx, g: None)
    slow = relprop.trace(model, rules).explain(x, [0, 2, 1], contrastive=contrastive)
    expected = {
        "block": ["relu", "batch_norm", "add", "max_pool2d"],
        "encoder": ["layer_norm", "gelu", "add", "silu", "mul", "div", "tanh", "softplus", "Region"],
    }[case]
    assert all(any(op in s for s in seen) for op in expected), seen
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=0)


def test_epsilon_add_fast_path_matches_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop.rules import lrp

    torch.manual_seed(0)
    model = _randomize(_Block())
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    fast = relprop.trace(model, relprop.rules.Epsilon(1e-6)).explain(x, [0, 2, 1])
    calls = []
    monkeypatch.setattr(lrp, "_plain_add", lambda ctx, R: calls.append(ctx.op) and False)
    slow = relprop.trace(model, relprop.rules.Epsilon(1e-6)).explain(x, [0, 2, 1])
    assert calls and fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=0)


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        o = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.head(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], 8).mean(1))


def _attention_inputs(case: str) -> dict:
    """x (2, 5, 8) and the case's mask: none, float or bool masking the second sample's last
    two keys, or causal."""
    inputs: dict = {"x": torch.randn(2, 5, 8, dtype=torch.float64)}
    if case == "bool_mask":
        inputs["mask"] = torch.ones(2, 1, 5, 5, dtype=torch.bool)
        inputs["mask"][1, :, :, 3:] = False
    if case == "float_mask":
        inputs["mask"] = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
        inputs["mask"][1, :, :, 3:] = torch.finfo(torch.float64).min
    if case == "causal":
        inputs["causal"] = True
    return inputs


@pytest.mark.parametrize("case", ["plain", "float_mask", "bool_mask", "causal"])
def test_attention_closed_form_matches_autograd(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _SelfAttention().double().eval()
    inputs = _attention_inputs(case)
    fast = relprop.trace(model).explain(inputs, [0, 2])
    monkeypatch.setattr(abslrp_closed, "attention_closed_form", lambda ctx, R, eps: None)
    slow = relprop.trace(model).explain(inputs, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=0), (fast - slow).abs().max()


def test_cached_absolute_weights_follow_weight_changes() -> None:
    """Derived weights are kept per Graph; in-place updates and replaced tensors must be seen."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    graph = relprop.trace(model)
    before = graph.explain(x, [0, 1])
    assert len(graph.rule_cache[derived_weights.DerivedWeights]) >= 2
    with torch.no_grad():
        model[0].weight.add_(torch.randn_like(model[0].weight))
    after_inplace = graph.explain(x, [0, 1])
    graph.rule_cache.clear()
    assert torch.equal(after_inplace, graph.explain(x, [0, 1]))
    model[3].weight.data = torch.randn_like(model[3].weight)
    after_replace = graph.explain(x, [0, 1])
    graph.rule_cache.clear()
    assert torch.equal(after_replace, graph.explain(x, [0, 1]))
    assert not torch.allclose(before, after_inplace) and not torch.allclose(after_inplace, after_replace)


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))


def _tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        _ResBlock(4),
        _ResBlock(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    for m in model.modules():  # non-trivial statistics, so BN is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
    return model.double().eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_unnormalized_handoff_gives_the_same_relevance(batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rules that skip normalizing relevance only a scale-free rule reads change nothing.

    Oracle: the same explanation with every hand-off normalized (the rule as written).
    """
    from relprop import engine

    model = _tiny_resnet()
    x = torch.randn(batch, 3, 8, 8, dtype=torch.float64) * torch.tensor([1.0, 30.0, 0.01][:batch]).view(-1, 1, 1, 1)
    seen: list[dict] = []
    real = engine._free_scale

    def spy(bound):  # noqa: ANN001, ANN202
        flags = real(bound)
        seen.append(flags)
        return flags

    monkeypatch.setattr(engine, "_free_scale", spy)
    targets = list(range(batch))
    fast = relprop.trace(model).explain(x, targets)
    skipped = sum(sum(row) for row in seen[-1].values())
    assert skipped >= 8, seen[-1]  # BN, ReLU and the residual adds hand on unnormalized relevance
    # the shortcut (read by conv1 and the add) is never handed on unnormalized
    monkeypatch.setattr(engine, "_free_scale", lambda bound: {})
    slow = relprop.trace(model).explain(x, targets)
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-15), (fast - slow).abs().max()


def test_unnormalized_handoff_chains_are_bounded_and_respect_shared_values() -> None:
    """No chain of unnormalized hand-offs is longer than the cap; values read twice are normalized."""
    from relprop import engine

    model = _tiny_resnet()
    graph = relprop.trace(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph.explain(x, [0, 1])
    ((plan,),) = graph._plans.values()
    bound = plan.bound
    flags = engine._free_scale(bound)
    readers: dict = {}
    for b in bound.bindings.values():
        for a, live in zip(b.inputs, b.info.live):
            if live:
                readers[a] = readers.get(a, 0) + 1
    for n, row in flags.items():
        for a, free in zip(bound.bindings[n].inputs, row):
            if free:
                assert readers[a] == 1, (n, a)
    # follow the longest run of consecutive unnormalized hand-offs
    longest = 0
    for n in flags:
        run, node = 0, n
        while node in flags and any(flags[node]):
            run += 1
            a = next(a for a, f in zip(bound.bindings[node].inputs, flags[node]) if f)
            node = a.args[0] if a.target is operator.getitem else a
        longest = max(longest, run)
    assert 2 <= longest <= engine._FREE_SCALE_DEPTH


def test_recorded_walk_is_unchanged_by_in_place_reuse() -> None:
    """Rules reuse relevance tensors they own in place; a recorded walk must see none of it.

    Oracle: for a node read by one consumer, the relevance recorded as that node's
    output is exactly what the consumer recorded for it (mutation would break this),
    and recording does not change the input relevance.
    """
    model = _tiny_resnet()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = relprop.trace(model)
    plain = graph.explain(x, [0, 1])
    ex = graph.explanation(x, [0, 1], record=True)
    assert torch.allclose(ex.relevance, plain, rtol=1e-12, atol=1e-15)
    ((plan,),) = graph._plans.values()
    bound = plan.bound
    checked = 0
    for n, b in bound.bindings.items():
        if n.name not in ex.records or n.target is operator.getitem:
            continue
        for a, r in zip(b.inputs, ex.records[n.name]):
            if r is not None and a.target is not operator.getitem and a.name in ex.node_relevance:
                consumers = [c for c in a.users if c in bound.bindings]
                if len(consumers) == 1:
                    assert torch.equal(ex.node_relevance[a.name], r), (n.name, a.name)
                    checked += 1
    assert checked >= 10


@pytest.mark.parametrize("rules", [relprop.rules.AbsLRP, relprop.rules.EpsilonPlusFlat])
def test_recording_some_nodes_keeps_exactly_what_recording_all_keeps(rules: type) -> None:
    """``record={names}`` keeps those nodes' relevances and no others, equal to ``record=True``'s.

    Oracle: the full recording (every node, nothing reused in place) of the same explain;
    the final relevance equals the unrecorded one.  Every third node is kept, so kept
    nodes sit next to unkept ones whose rules may reuse their tensors in place.
    """
    model = _tiny_resnet()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    graph = relprop.trace(model, rules())
    full = graph.explanation(x, [0, 1, 2], record=True)
    names = set(list(full.node_relevance)[::3])
    some = graph.explanation(x, [0, 1, 2], record=names)
    assert set(some.node_relevance) == names and set(some.records) <= names

    def same(a: object, b: object) -> bool:  # a tensor, None, or one entry per output
        if isinstance(a, (list, tuple)):
            return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
        return (a is None and b is None) or (isinstance(a, torch.Tensor) and torch.equal(a, b))

    for name in names:
        assert same(some.node_relevance[name], full.node_relevance[name]), name
        assert same(some.records.get(name, []), full.records.get(name, [])), name
    assert torch.allclose(some.relevance, graph.explain(x, [0, 1, 2]), rtol=1e-12, atol=1e-15)
    assert not graph.explanation(x, [0, 1, 2], record=set()).node_relevance


def test_recording_unknown_nodes_or_other_values_is_refused() -> None:
    graph = relprop.trace(_tiny_resnet())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(relprop.InputError, match=r"no node 'conv2d_9'.*close: conv2d.*summary\(\) lists"):
        graph.explanation(x, [0, 1], record={"conv2d_9"})
    with pytest.raises(relprop.InputError, match=r"collection of node names, not str 'relu'.*record=\{'relu'\}"):
        graph.explanation(x, [0, 1], record="relu")
    with pytest.raises(relprop.InputError, match="takes node names"):
        graph.explanation(x, [0, 1], record=[3])


def test_a_rule_handing_one_tensor_to_two_inputs_is_not_overwritten() -> None:
    """A custom rule may return the same tensor for two inputs: neither consumer may overwrite it.

    Oracle: both branches are identical (the same module applied twice to the same
    tensor), so their relevances must be equal, and equal to one branch's alone.
    """
    from relprop.rules import FunctionRule

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.head = nn.Linear(3 * 6 * 6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.bn(self.conv(x)))
            b = torch.relu(self.bn(self.conv(x)))
            return self.head(torch.relu(a * b).flatten(1))

    torch.manual_seed(0)
    model = Twice().double().eval()
    model.bn.running_var.uniform_(0.5, 2.0)
    model.bn.running_mean.uniform_(-0.5, 0.5)
    handed: list[bool] = []

    def share(ctx, R):  # noqa: ANN001, ANN202 - the whole relevance to both factors
        handed.append(ctx.hints.owns_relevance)
        return [R, R]

    graph = relprop.trace(model, relprop.rules.AbsLRP(), overrides={"aten.mul": FunctionRule(share)})
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    recorded = graph.explanation(x, [0, 1], record=True).relevance  # nothing is reused in place
    got = graph.explain(x, [0, 1])
    assert handed == [False, True]  # the relu above the product handed on a tensor it owned
    assert torch.allclose(got, recorded, rtol=1e-12, atol=1e-15)


class _Products(nn.Module):
    """A weighted product written as a matrix product with a parameter, in each form models use."""

    def __init__(self, form: str) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.form = form
        self.w = nn.Parameter(torch.randn(6, 5, generator=g))  # (in, out), as Hugging Face's Conv1D
        self.b = nn.Parameter(torch.randn(5, generator=g))
        self.w_left = nn.Parameter(torch.randn(7, 4, generator=g))  # the weight as the first factor
        self.w_batched = nn.Parameter(torch.randn(4, 6, 5, generator=g))
        self.b_left = nn.Parameter(torch.randn(7, 1, generator=g))
        self.b_batched = nn.Parameter(torch.randn(4, 1, 5, generator=g))
        self.head = nn.Linear(5 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 4, 6)
        rows = x.reshape(-1, 6)
        if self.form == "addmm":  # GPT-2's Conv1D
            h = torch.addmm(self.b, rows, self.w).view(x.shape[0], 4, 5)
        elif self.form == "addmm_alpha":
            h = torch.addmm(self.b, rows, self.w, beta=0.5, alpha=2.0).view(x.shape[0], 4, 5)
        elif self.form == "mm":
            h = torch.mm(rows, self.w).view(x.shape[0], 4, 5)
        elif self.form == "relu_mm":  # a non-negative input: one product with 2W⁺ under absLRP
            h = torch.mm(torch.relu(rows), self.w).view(x.shape[0], 4, 5)
        elif self.form == "matmul":
            h = x @ self.w
        elif self.form == "weight_first":
            h = (self.w_left @ x)[:, :4, :5]
        elif self.form == "addmm_weight_first":  # W·x + b with the samples' rows as columns
            cols = x.transpose(0, 1).reshape(4, -1)  # (4, B·6)
            h = torch.addmm(self.b_left, self.w_left, cols)[:4].reshape(4, -1, 6).transpose(0, 1)[..., :5]
        elif self.form == "baddbmm":
            h = torch.baddbmm(self.b_batched, x.transpose(0, 1), self.w_batched).transpose(0, 1)
        else:  # bmm
            h = torch.bmm(x.transpose(0, 1), self.w_batched).transpose(0, 1)
        return self.head(torch.relu(h).flatten(1))


_FORMS = ["addmm", "addmm_alpha", "mm", "relu_mm", "matmul", "weight_first", "addmm_weight_first", "bmm", "baddbmm"]


@pytest.mark.parametrize("form", _FORMS)
@pytest.mark.parametrize(
    "rule_set",
    [
        relprop.rules.Epsilon(1e-6),
        relprop.rules.AttnLRP(),
        relprop.rules.EpsilonPlus(),
        relprop.rules.AlphaBeta(2.0, 1.0),
        relprop.rules.Gamma(0.25),
    ],
    ids=repr,
)
def test_matrix_product_fast_path_matches_autograd(form: str, rule_set, monkeypatch: pytest.MonkeyPatch) -> None:
    """addmm/mm/bmm/matmul with a parameter, whichever factor holds it: the transposed product
    (no second forward) equals the autograd path, in float64, and is the path taken."""
    from relprop.rules import lrp, products

    torch.manual_seed(0)
    model = _Products(form).double().eval()
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    taken: list[str] = []

    def spy(ctx, i, w, g):  # noqa: ANN001, ANN202
        r = products.layer_product(ctx, i, w, g)
        if r is not None and "linear" not in str(ctx.op):
            taken.append(str(ctx.op))
        return r

    monkeypatch.setattr(lrp, "layer_product", spy)
    fast = relprop.trace(model, rule_set).explain(x, [0, 2])
    assert taken, "the product's fast path was not taken"
    monkeypatch.setattr(lrp, "layer_product", lambda ctx, i, w, g: None)
    slow = relprop.trace(model, rule_set).explain(x, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=1e-11), (fast - slow).abs().max()


@pytest.mark.parametrize("form", _FORMS)
def test_abslrp_matrix_product_fast_path_matches_autograd(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """absLRP at a matrix product with a parameter (either factor, with or without a bias, after
    a ReLU or signed): Wᵀg and |W|ᵀg by transposed products equal the autograd definition."""
    torch.manual_seed(0)
    model = _Products(form).double().eval()
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    taken: list[str] = []
    factor_layer = abslrp_closed._factor_layer

    def spy(ctx, g, cache):  # noqa: ANN001, ANN202
        r = factor_layer(ctx, g, cache)
        if r is not None:
            taken.append(str(ctx.op))
        return r

    monkeypatch.setattr(abslrp_closed, "_factor_layer", spy)
    rules = relprop.rules.AbsLRP()
    fast = relprop.trace(model, rules).explain(x, [0, 2])
    assert taken, "the product's fast path was not taken"
    monkeypatch.setattr(abslrp.AbsRule, "_weighted", lambda self, ctx, g: None)
    slow = relprop.trace(model, rules).explain(x, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=1e-11), (fast - slow).abs().max()


@pytest.mark.parametrize("rule_set", [relprop.rules.Epsilon(1e-6), relprop.rules.AttnLRP()], ids=repr)
def test_gpt2_conv1d_fast_path_matches_autograd(rule_set, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2 (Hugging Face ``Conv1D``: ``addmm(b, x, W)``, W shaped (in, out)): every Conv1D takes the
    transposed product, and the map equals the autograd path's in float64."""
    transformers = pytest.importorskip("transformers")
    from relprop.rules import lrp, products

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(0, 50, (2, 7))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    target = relprop.targets.next_token([3, 11])
    taken: list[str] = []

    def spy(ctx, i, w, g):  # noqa: ANN001, ANN202
        r = products.layer_product(ctx, i, w, g)
        if r is not None and "addmm" in str(ctx.op):
            taken.append(ctx.node.name)
        return r

    monkeypatch.setattr(lrp, "layer_product", spy)
    fast = relprop.trace(model, rule_set).explain(inputs, target)
    assert len(taken) == 4 * config.n_layer  # c_attn, c_proj, c_fc, mlp.c_proj
    monkeypatch.setattr(lrp, "layer_product", lambda ctx, i, w, g: None)
    slow = relprop.trace(model, rule_set).explain(inputs, target)
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=1e-11), (fast - slow).abs().max()


class _GroupedAttention(nn.Module):
    """Grouped-query attention: 4 query heads share 2 key/value heads."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv = nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 2).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 2, 2).permute(2, 0, 3, 1, 4)
        o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.head(o.transpose(1, 2).reshape(b, n, 8).mean(1))


@pytest.mark.parametrize("case", ["plain", "float_mask", "bool_mask", "causal", "grouped"])
def test_attention_value_rule_product_matches_autograd(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ε-rule's attention (probabilities held): pᵀg from one product equals autograd's vjp of v ↦ p·v."""
    from relprop.rules import lrp
    from relprop.rules.attention import attention_inputs, masked_softmax, repeat_kv
    from relprop.rules.base import stabilize, vjp

    def by_autograd(self, ctx, R):  # noqa: ANN001, ANN202 - the rule as it was written before
        att = attention_inputs(ctx)
        out = [None] * len(ctx.inputs)
        if not ctx.live[2]:
            return out
        with torch.no_grad():
            p = masked_softmax(att.scores(), -1)
        g = R / stabilize(ctx.output, self.epsilon)
        (r,) = vjp(lambda a: p @ repeat_kv(a, att.groups), [att.v], g)
        out[2] = att.v * r
        return out

    torch.manual_seed(0)
    model = (_GroupedAttention() if case == "grouped" else _SelfAttention()).double().eval()
    inputs = _attention_inputs(case)
    rule_set = relprop.rules.Epsilon(1e-6)
    graph = relprop.trace(model, rule_set)
    fast = graph.explain(inputs, [0, 2])
    assert "AttentionValueRule" in graph.summary()
    monkeypatch.setattr(lrp.AttentionValueRule, "relevance", by_autograd)
    slow = relprop.trace(model, rule_set).explain(inputs, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-13, rtol=1e-11), (fast - slow).abs().max()


def _alpha_beta_every_term(layer, R, alpha, beta, eps, bias):  # noqa: ANN001, ANN202
    """The αβ-rule with every product of x⁺ and x⁻ formed, as it was written before."""
    x, w, b = layer.x, layer.w, (layer.b if bias else None)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    with torch.no_grad():
        zp = layer.f(xp, wp, None if b is None else b.clamp(min=0)) + layer.f(xn, wn)
        zn = layer.f(xp, wn, None if b is None else b.clamp(max=0)) + layer.f(xn, wp)
    gp = R / (zp + eps)
    rel = alpha * (xp * layer.jt(wp, gp) + xn * layer.jt(wn, gp))
    if beta:
        gn = R / (zn - eps)
        rel = rel - beta * (xp * layer.jt(wn, gn) + xn * layer.jt(wp, gn))
    return rel


@pytest.mark.parametrize(
    "rule_set",
    [
        relprop.rules.EpsilonPlus(),
        relprop.rules.EpsilonPlusFlat(),
        relprop.rules.AlphaBeta(2.0, 1.0),
        relprop.rules.EpsilonAlpha2Beta1(),
    ],
    ids=repr,
)
def test_alpha_beta_leaves_out_the_products_of_a_nonnegative_input(rule_set, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a ReLU, x⁻ = 0: the αβ-rule's products with it (and z⁻ where β = 0) are left out, and the
    map is exactly the one with every product formed."""
    from relprop.rules import lrp

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )
    model = model.double().eval()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    calls: list[int] = []
    f = lrp._Layer.f
    monkeypatch.setattr(lrp._Layer, "f", lambda self, *a: calls.append(1) or f(self, *a))
    fast = relprop.trace(model, rule_set).explain(x, [0, 2])
    fewer = len(calls)
    calls.clear()
    monkeypatch.setattr(lrp, "_alpha_beta", _alpha_beta_every_term)
    slow = relprop.trace(model, rule_set).explain(x, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.equal(fast, slow)
    assert fewer < len(calls), (fewer, len(calls))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])  # the output layer's input ≥ 0, or signed
@pytest.mark.parametrize(
    "rule_set", [relprop.rules.Epsilon(1e-6), relprop.rules.EpsilonPlus(), relprop.rules.AbsLRP()], ids=repr
)
def test_output_layer_multiplies_only_the_rows_the_target_explains(
    rule_set, activation: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relevance a walk starts from is zero outside the explained positions (a language model's
    last): the output layer's product is formed for those rows only (absLRP also divides there
    only), and equals the whole product."""
    from relprop.rules import products

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), activation(), nn.Linear(8, 5)).double().eval()
    x = torch.randn(2, 7, 6, dtype=torch.float64)

    def target(out: torch.Tensor) -> torch.Tensor:
        return out[:, -1, 1]

    kept: list[int] = []
    rows = products._rows_product

    def spy(g, w):  # noqa: ANN001, ANN202
        kept.append(int(g.reshape(-1, g.shape[-1]).ne(0).any(1).sum()))
        return rows(g, w)

    monkeypatch.setattr(products, "_rows_product", spy)
    ruled: list[bool] = []
    output_layer = abslrp_closed.output_layer

    def rows_spy(*a):  # noqa: ANN002, ANN202
        r = output_layer(*a)
        ruled.append(r is not None)
        return r

    monkeypatch.setattr(abslrp_closed, "output_layer", rows_spy)
    fast = relprop.trace(model, rule_set).explain(x, target)
    assert kept and max(kept) <= 2 * 2  # the last position of each sample (per pass)
    assert any(ruled) == isinstance(rule_set, relprop.rules.AbsLRP)  # absLRP's rows path ran
    monkeypatch.setattr(products, "feeds_output", lambda ctx: False)
    monkeypatch.setattr(abslrp_closed, "feeds_output", lambda ctx: False)
    slow = relprop.trace(model, rule_set).explain(x, target)
    assert fast.abs().sum() > 0
    assert torch.allclose(fast, slow, atol=1e-14, rtol=1e-12), (fast - slow).abs().max()


def test_rows_product_equals_the_whole_product() -> None:
    from relprop.rules import products

    torch.manual_seed(0)
    w = torch.randn(5, 3, dtype=torch.float64)
    for nonzero in ([1], [0, 4], [0, 1, 2, 3, 4, 5]):  # few rows; more than half: the whole product
        g = torch.zeros(2, 3, 5, dtype=torch.float64)
        g.view(-1, 5)[nonzero] = torch.randn(len(nonzero), 5, dtype=torch.float64)
        assert torch.allclose(products._rows_product(g, w), g @ w, atol=1e-15, rtol=0)
