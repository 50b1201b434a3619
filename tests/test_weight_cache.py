"""absLRP's derived-weight cache (``AbsLRP(weight_cache=...)``): bounded, per Graph, and invisible in the numbers.

Linear and convolution layers multiply by a weight derived from theirs (2W⁺, [W, |W|] or |W|); a Graph keeps
these between explains within a budget and derives the others on the fly (linear layers block by block).
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
import torch
from torch import nn

import relprop
from relprop import rules
from relprop.rules import abslrp, derived_weights, products

DT = torch.float64


class _Mixed(nn.Module):
    """Every way a weight is derived: [W, |W|] (signed input), 2W⁺ (after a ReLU), |W| (grouped convolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)  # signed input: [W, |W|]
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)  # after a ReLU: 2W⁺
        self.conv3 = nn.Conv2d(4, 4, 3, groups=2)  # signed, grouped: W and |W| in two products
        self.fc1 = nn.Linear(4 * 4 * 4, 48)  # signed: [W, |W|]
        self.fc2 = nn.Linear(48, 40)  # after a ReLU: 2W⁺
        self.fc3 = nn.Linear(40, 5)  # signed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(torch.relu(self.conv1(x)))
        h = self.conv3(h).flatten(1)
        return self.fc3(self.fc2(torch.relu(self.fc1(h))))


WEIGHTED = 6  # layers of _Mixed that derive a weight


def _mixed() -> tuple[nn.Module, torch.Tensor, list[int]]:
    torch.manual_seed(0)
    return _Mixed().to(DT).eval(), torch.randn(3, 3, 6, 6, dtype=DT), [0, 3, 4]


def _llama() -> tuple[nn.Module, dict[str, torch.Tensor], Any]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        max_position_embeddings=32,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config).to(DT).eval()
    ids = torch.randint(4, 96, (2, 9))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, relprop.targets.next_token([5, 7])


MODELS = {"mixed": _mixed, "llama": _llama}


def _store(graph: relprop.Graph) -> derived_weights.DerivedWeights:
    return graph.rule_cache.get(derived_weights.DerivedWeights, derived_weights.DerivedWeights())


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to rounding: a layer whose [W, |W|] is not kept takes Wᵀg and |W|ᵀg as two products, and blocks
    sum in another order."""
    return bool(torch.allclose(a, b, rtol=1e-10, atol=1e-14)) and a.abs().sum() > 0


def _twice(model: nn.Module, x: Any, target: Any, weight_cache: Any) -> tuple[relprop.Graph, torch.Tensor]:
    """Two explains with one Graph (the second uses what the first kept); both must agree exactly."""
    graph = relprop.trace(model, rules.AbsLRP(weight_cache=weight_cache))
    first = graph.explain(x, target)
    second = graph.explain(x, target)
    assert torch.equal(first, second)
    return graph, first


@pytest.mark.parametrize("name", list(MODELS))
def test_cached_uncached_and_budgeted_explains_agree(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, target = MODELS[name]()
    graph, kept_all = _twice(model, x, target, True)
    total, count = _store(graph).nbytes, len(_store(graph))
    assert count >= (WEIGHTED if name == "mixed" else 2 * 7 + 1) and total > 0
    assert kept_all.abs().sum() > 0

    graph, none = _twice(model, x, target, False)
    assert len(_store(graph)) == 0
    assert _same(none, kept_all), (none - kept_all).abs().max()

    graph, half = _twice(model, x, target, total // 2)
    assert 0 < _store(graph).nbytes <= total // 2 and 0 < len(_store(graph)) < count
    assert _same(half, kept_all), (half - kept_all).abs().max()

    # derived weights not kept are built and multiplied in blocks of outputs: summation order only
    monkeypatch.setitem(derived_weights.BLOCK_BYTES, "cpu", 600)
    calls: list[str] = []
    blocks = derived_weights.input_product_in_blocks
    monkeypatch.setattr(
        derived_weights, "input_product_in_blocks", lambda ctx, *a: calls.append(str(ctx.op)) or blocks(ctx, *a)
    )
    graph, blocked = _twice(model, x, target, False)
    assert "aten.linear.default" in calls and len(_store(graph)) == 0
    if name == "mixed":
        assert "aten.conv2d.default" in calls
    assert _same(blocked, kept_all), (blocked - kept_all).abs().max()


def test_budget_is_respected_first_come_and_nothing_is_evicted() -> None:
    model, x, target = _mixed()
    sizes: list[int] = []
    for budget in (0, 1, 2000, 5000, 12000, 10**9):
        graph = relprop.trace(model, rules.AbsLRP(weight_cache=budget))
        graph.explain(x, target)
        store = _store(graph)
        kept = dict(store.entries)
        assert store.nbytes == sum(d.numel() * d.element_size() for _, _, d in kept.values()) <= budget
        graph.explain(x, target)  # the same layers stay kept, the same tensors
        assert store.entries.keys() == kept.keys() and all(store.entries[k][2] is kept[k][2] for k in kept)
        sizes.append(len(kept))
    assert sizes[0] == sizes[1] == 0 and sizes == sorted(sizes) and sizes[-1] == WEIGHTED
    derived = {k[1].name for k in store.entries}
    assert derived == {"[W, |W|]", "2W⁺", "|W|"}


def test_auto_budget() -> None:
    assert derived_weights.weight_budget("auto", 0) == derived_weights.AUTO_FLOOR == 64 << 20
    assert derived_weights.weight_budget("auto", 1 << 32) == (1 << 32) / 8
    assert derived_weights.weight_budget(True, 0) == float("inf") and derived_weights.weight_budget(False, 1 << 40) == 0
    assert derived_weights.weight_budget(1e6, 0) == 1e6
    model, x, target = _mixed()
    graph = relprop.trace(model)  # the default: "auto"; a small model keeps all its derived weights
    assert graph.rules.weight_cache == "auto"
    graph.explain(x, target)
    assert graph.rule_cache.parameter_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert len(_store(graph)) == WEIGHTED


def test_auto_bounds_by_the_model_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(derived_weights, "AUTO_FLOOR", 0)
    model, x, target = _mixed()
    graph = relprop.trace(model)
    graph.explain(x, target)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert 0 < _store(graph).nbytes <= params / 8 and len(_store(graph)) < WEIGHTED


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))).mean(1)


def test_one_cache_per_graph_shared_by_its_traces_and_freed_with_it() -> None:
    torch.manual_seed(0)
    model = _Tokens().to(DT).eval()
    graph = relprop.trace(model, rules.AbsLRP(weight_cache=True))
    graph.explain(torch.randn(2, 3, 8, dtype=DT), [0, 1])
    store = _store(graph)
    kept = {k: v[2] for k, v in store.entries.items()}
    graph.explain(torch.randn(2, 5, 8, dtype=DT), [0, 1])  # another length: another trace, the same weights
    assert graph.trace_count == 2 and len(graph._plans) == 2
    assert {k: v[2] for k, v in store.entries.items()} == kept and len(kept) == 2
    # another Graph of the same model keeps its own
    other = relprop.trace(model, rules.AbsLRP(weight_cache=False))
    other.explain(torch.randn(2, 3, 8, dtype=DT), [0, 1])
    assert len(_store(other)) == 0
    refs = [weakref.ref(t) for t in kept.values()]
    del graph, store, kept
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_rule_keeps_within_its_own_budget() -> None:
    """Overrides may carry their own option; the Graph's one store counts all entries."""
    model, x, target = _mixed()
    graph = relprop.trace(model, rules.AbsLRP(weight_cache=True), overrides={"fc1": rules.AbsRule(weight_cache=False)})
    graph.explain(x, target)
    assert len(_store(graph)) == WEIGHTED - 1
    assert not any("fc1" in name for name, _ in _store(graph).entries)


class _ConstantMatmul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) @ self.w


@pytest.mark.parametrize("cache", [True, False])
def test_matrix_products_with_a_parameter_keep_their_derived_factor(
    cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A matmul with a parameter takes transposed products with 2W⁺ (its input is a ReLU's): derived
    at the first explain and kept in the graph's store within the budget, derived again at every
    explain where nothing may be kept; the map is the autograd definition's."""
    torch.manual_seed(0)
    derived: list[str] = []
    for d in (derived_weights.WITH_ABSOLUTE, derived_weights.DOUBLE_POSITIVE, derived_weights.ABSOLUTE):
        monkeypatch.setattr(d, "fill", lambda w, out, fill=d.fill, name=d.name: derived.append(name) or fill(w, out))
    model = _ConstantMatmul().eval()
    graph = relprop.trace(model, rules.AbsLRP(weight_cache=cache))
    x = torch.randn(2, 8, dtype=DT)
    R = graph.explain(x, [0, 2])
    assert "dense" in [b.info.category for b in graph.bindings]
    assert derived == ["2W⁺"] and len(_store(graph)) == (1 if cache else 0)
    assert torch.equal(graph.explain(x, [0, 2]), R)
    assert derived == (["2W⁺"] if cache else ["2W⁺", "2W⁺"])
    monkeypatch.setattr(abslrp.AbsRule, "_weighted", lambda self, ctx, g: None)  # the definition, by autograd
    assert torch.allclose(relprop.trace(model, rules.AbsLRP()).explain(x, [0, 2]), R, rtol=1e-12, atol=1e-15)


class _Node:
    """Just enough of a Context for products.input_product: the op, its arguments, which input is live."""

    def __init__(self, op: Any, *args: Any) -> None:
        self.op, self._args, self.live_inputs = op, args, [0]

    def args(self) -> tuple[tuple, dict]:
        return self._args, {}


@pytest.mark.parametrize(
    "derive", [derived_weights.WITH_ABSOLUTE, derived_weights.DOUBLE_POSITIVE, derived_weights.ABSOLUTE], ids=repr
)
@pytest.mark.parametrize("block", [1, 200, 1000, 10**6])
def test_blocks_give_one_product(derive: derived_weights.Derivation, block: int) -> None:
    torch.manual_seed(0)
    w, g = torch.randn(13, 7, dtype=DT), torch.randn(2, 3, 4, 13, dtype=DT)
    ctx: Any = _Node(torch.ops.aten.linear.default, torch.randn(3, 4, 7, dtype=DT), w)
    got = products.input_product_in_blocks(ctx, w, derive, g, derive.copies, block)
    assert got is not None and got.shape == (2, 3, 4, 7 * derive.copies)
    assert torch.allclose(got, g @ derive(w), rtol=1e-12, atol=1e-14)
    # a strided convolution: blocks of output channels
    x, w = torch.randn(3, 5, 9, 8, dtype=DT), torch.randn(6, 5, 3, 3, dtype=DT)
    ctx = _Node(torch.ops.aten.conv2d.default, x, w, None, [2, 2], [1, 1])
    g = torch.randn(2, 3, 6, 5, 4, dtype=DT)
    whole = products.input_product(ctx, derive(w), g, derive.copies)
    got = products.input_product_in_blocks(ctx, w, derive, g, derive.copies, block)
    assert whole is not None and got is not None and got.shape == whole.shape == (2, 3, 5 * derive.copies, 9, 8)
    assert torch.allclose(got, whole, rtol=1e-12, atol=1e-14)
    grouped = _Node(torch.ops.aten.conv2d.default, x[:, :4], w[:, :2], None, [1, 1], [0, 0], [1, 1], 2)
    assert products.input_product_in_blocks(grouped, w[:, :2], derived_weights.ABSOLUTE, g, 1, block) is None


def test_weight_changes_are_seen() -> None:
    model, x, target = _mixed()
    graph = relprop.trace(model, rules.AbsLRP(weight_cache=True))
    graph.explain(x, target)
    with torch.no_grad():
        model.fc1.weight.mul_(-1.5)
        model.conv2.weight.add_(0.1)
    model.conv1.weight = nn.Parameter(torch.randn_like(model.conv1.weight))
    fresh = relprop.trace(model, rules.AbsLRP(weight_cache=True)).explain(x, target)
    assert torch.equal(graph.explain(x, target), fresh)
    assert _store(graph).nbytes == sum(d.numel() * d.element_size() for _, _, d in _store(graph).entries.values())
    assert len(_store(graph)) == WEIGHTED  # stale entries replaced, not added


@pytest.mark.parametrize("bad", ["yes", "AUTO", -1, float("nan"), float("inf"), None, [1]], ids=repr)
def test_bad_options_name_what_is_expected(bad: Any) -> None:
    with pytest.raises(relprop.RuleError, match=r"AbsLRP\(weight_cache=\.\.\.\) must be 'auto'.*budget in bytes"):
        rules.AbsLRP(weight_cache=bad)
    with pytest.raises(relprop.RuleError, match=r"AbsRule\(weight_cache=\.\.\.\)"):
        rules.AbsRule(weight_cache=bad)


@pytest.mark.parametrize("good", ["auto", True, False, 0, 1 << 30, 2.5e9])
def test_good_options(good: Any) -> None:
    assert rules.AbsLRP(weight_cache=good).weight_cache == good
