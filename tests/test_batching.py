"""Sharing exports between rule sets, explaining large batches in chunks, freeing values.

- ``relprop.trace(model, rules=A)`` and ``rules=B`` share one ``torch.export`` of the
  model per input signature (a cache weak in the model); a model changed structurally
  is exported again, and the cache never keeps a model alive.
- ``explain(x, target, batch_size=N)`` explains at most N samples at a time and gives
  what one explain of the whole batch gives.
- The forward keeps only the values the walk reads.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from test_api import small_cnn
from test_zoo import FixedBatch
from torch import Tensor, nn

import relprop
from relprop import engine, rules

# -- helpers ------------------------------------------------------------------------------


class LayerNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.lin(x)))


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[nn.Module]]:
    """Every model torch.export.export is called on, in order."""
    calls: list[nn.Module] = []
    original = torch.export.export

    def counting(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        calls.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counting)
    yield calls


def _fresh(model: nn.Module, rule_set: Any, x: Any, target: Any, **kw: Any) -> Any:
    """The explanation by a trace that shares nothing with earlier ones (a copy of the model)."""
    import copy

    return relprop.trace(copy.deepcopy(model), rules=rule_set).explanation(x, target, **kw)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-13)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# -- one export per model and signature ---------------------------------------------------


def test_rule_sets_share_one_export(exports: list[nn.Module]) -> None:
    model = (
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        .double()
        .eval()
    )
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    graphs = [relprop.trace(model, rules=r) for r in (rules.AbsLRP(), rules.Epsilon(1e-6), rules.ZPlus())]
    results = [g.explain(x, [0, 1, 2]) for g in graphs]
    assert [m for m in exports if m is model] == [model]
    assert all(g.trace_count == 1 for g in graphs)
    # the shared capture gives what a capture of its own gives
    for g, R in zip(graphs, results):
        assert torch.equal(R, _fresh(model, g.rules, x, [0, 1, 2]).relevance)
    # other batch sizes and rule sets: still the one export
    relprop.trace(model, rules=rules.Epsilon(1e-3)).explain(x[:1], 0)
    assert [m for m in exports if m is model] == [model]
    # a new input signature is a new export
    relprop.trace(model).explain(torch.randn(2, 3, 12, 12, dtype=torch.float64))
    assert [m for m in exports if m is model] == [model, model]


def test_structural_change_is_exported_again(exports: list[nn.Module]) -> None:
    torch.manual_seed(1)
    model = LayerNormNet().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    before = relprop.trace(model).explain(x, 1)

    def count() -> int:
        return sum(m is model for m in exports)

    n = count()
    # new parameter values: read live, no new export, and the explanation follows them
    with torch.no_grad():
        model.lin.weight.mul_(-1)
    after_values = relprop.trace(model).explain(x, 1)
    assert count() == n
    assert not torch.allclose(before, after_values)
    assert torch.equal(after_values, _fresh(model, None, x, 1).relevance)
    # a replaced submodule
    model.norm = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).double()
    replaced = relprop.trace(model).explain(x, 1)
    assert count() == n + 1
    assert torch.equal(replaced, _fresh(model, None, x, 1).relevance)
    # back to the original structure: the first export serves again
    model.norm = nn.LayerNorm(8).double()
    relprop.trace(model).explain(x, 1)
    assert count() == n + 1
    # a constant baked into the graph (an nn.Module attribute)
    model.norm.eps = 0.5
    changed = relprop.trace(model).explain(x, 1)
    assert count() == n + 2
    assert torch.equal(changed, _fresh(model, None, x, 1).relevance)
    # a forward hook changes what the model computes
    handle = model.head.register_forward_hook(lambda m, i, o: o * 2)
    try:
        relprop.trace(model).explain(x, 1)
        assert count() == n + 3
    finally:
        handle.remove()


def test_list_and_tuple_attributes_are_part_of_the_fingerprint(exports: list[nn.Module]) -> None:
    class Shifted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.shift = [1, 0]  # a list attribute, as torchvision's swin_t has

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(torch.roll(x, self.shift[0], dims=1))

    model = Shifted().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    relprop.trace(model).explain(x, 0)
    relprop.trace(model, rules=rules.Epsilon(1e-6)).explain(x, 0)
    assert sum(m is model for m in exports) == 1
    model.shift = [2, 0]
    R = relprop.trace(model, rules=rules.Epsilon(1e-6)).explain(x, 0)
    assert sum(m is model for m in exports) == 2
    assert torch.equal(R, _fresh(model, rules.Epsilon(1e-6), x, 0).relevance)


def test_export_cache_does_not_keep_the_model_alive() -> None:
    model = small_cnn()
    graph = relprop.trace(model)
    graph.explain(torch.randn(2, 3, 8, 8))
    ref = weakref.ref(model)
    del model, graph
    gc.collect()
    assert ref() is None


# -- chunks ------------------------------------------------------------------------------


@pytest.mark.parametrize("contrastive", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 7, 100])
def test_chunks_equal_one_batch_cnn(contrastive: bool, batch_size: int) -> None:
    model = small_cnn().double()
    x = torch.randn(7, 3, 8, 8, dtype=torch.float64)
    target = [0, 1, 2, 3, 4, 0, 1]
    graph = relprop.trace(model)
    whole = graph.explanation(x, target, contrastive=contrastive)
    parts = graph.explanation(x, target, contrastive=contrastive, batch_size=batch_size)
    assert parts.relevance.shape == x.shape
    assert _same(whole.relevance, parts.relevance)
    assert _same(whole.inputs, parts.inputs) and _same(whole.passes, parts.passes)
    assert _same(whole.output, parts.output)
    assert torch.equal(whole.classes, parts.classes)
    assert parts.contrastive == contrastive
    # the last chunk (of another size) reuses the dynamic-batch trace
    assert graph.trace_count == 1


def test_chunks_with_per_sample_targets() -> None:
    model = small_cnn().double()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    graph = relprop.trace(model, rules=rules.Epsilon(1e-6))
    for target in (None, 2, torch.tensor([4, 3, 2, 1, 0]), (0, 0, 1, 1, 2), torch.randn(5, 5, dtype=torch.float64)):
        whole = graph.explanation(x, target)
        parts = graph.explanation(x, target, batch_size=2)
        assert _same(whole.relevance, parts.relevance), target
        assert _same(whole.classes, parts.classes)


def test_chunks_equal_one_batch_tiny_bert() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config).double().eval()
    ids = torch.randint(1, 50, (5, 7))
    mask = torch.ones(5, 7, dtype=torch.long)
    ids[1, 4:], mask[1, 4:] = 0, 0
    ids[4, 2:], mask[4, 2:] = 0, 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    for rule_set, contrastive in ((rules.AbsLRP(), True), (rules.AbsLRP(), False), (rules.Epsilon(1e-9), None)):
        graph = relprop.trace(model, rules=rule_set)
        whole = graph.explanation(inputs, [0, 1, 2, 0, 1], contrastive=contrastive)
        for batch_size in (1, 2):
            parts = graph.explanation(inputs, [0, 1, 2, 0, 1], contrastive=contrastive, batch_size=batch_size)
            assert parts.relevance.shape == ids.shape
            assert _same(whole.relevance, parts.relevance)
            assert _same(whole.inputs, parts.inputs) and _same(whole.passes, parts.passes)
            assert _same(whole.output.logits, parts.output.logits)
            assert (parts.relevance[mask == 0] == 0).all()
            assert whole.embeddings.keys() == parts.embeddings.keys()
            for key, R in whole.embeddings.items():
                assert R.shape == parts.embeddings[key].shape, key
                # a lookup shared by the batch (position ids, (1, tokens)) is summed over the
                # chunks; absLRP normalizes it over whatever shares it, so only a conservative
                # rule set gives the same sum chunked
                if R.shape[0] == len(ids) or isinstance(rule_set, rules.Epsilon):
                    assert _same(R, parts.embeddings[key]), key
        assert graph.trace_count == 1


def test_chunks_of_tuple_inputs_and_next_token() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            return (self.a(x) + self.b(y))[:, None, :].expand(-1, 2, -1)

    model = Two().double().eval()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    graph = relprop.trace(model, rules=rules.Epsilon(1e-6))
    target = relprop.targets.next_token([0, 1, 2, 0, 1])
    whole = graph.explain((x, y), target)
    parts = graph.explain((x, y), target, batch_size=2)
    assert _same(whole, parts)


def test_bad_batch_size_and_unsplittable_targets() -> None:
    graph = relprop.trace(small_cnn())
    x = torch.randn(4, 3, 8, 8)
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(relprop.InputError, match="batch_size must be a positive int"):
            graph.explain(x, 0, batch_size=bad)
    with pytest.raises(relprop.TargetError, match="callable target cannot be split"):
        graph.explain(x, lambda out: out[:, 0], batch_size=2)
    with pytest.raises(relprop.TargetError, match="3 class indices but the batch has 4"):
        graph.explain(x, [0, 1, 2], batch_size=2)
    for record in (True, {"relu"}):
        with pytest.raises(relprop.InputError, match="record cannot be combined with batch_size"):
            graph.explanation(x, 0, record=record, batch_size=2)
    # a callable target is fine where no split happens
    R = graph.explain(x, lambda out: out[:, 0], batch_size=4)
    assert R.shape == x.shape
    assert graph.explanation(x, 0, record=True, batch_size=8).records


def test_inputs_without_batch_first_cannot_be_split() -> None:
    class Bias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: Tensor, shift: Tensor) -> Tensor:
            return self.lin(x + shift)

    graph = relprop.trace(Bias().eval())
    with pytest.raises(relprop.InputError, match="splits every tensor input along dim 0"):
        graph.explain((torch.randn(4, 4), torch.randn(1, 4)), 0, batch_size=2)


def test_static_batch_models_trace_per_chunk_size() -> None:
    """A model that fixes its batch size is traced once per chunk size (documented)."""
    model = FixedBatch().double().eval()
    graph = relprop.trace(model, rules=rules.Epsilon(1e-6))
    x = torch.randn(5, 4, dtype=torch.float64)
    parts = graph.explain(x, 1, batch_size=2)  # chunks of 2, 2, 1
    assert graph.trace_count == 2  # batch 2 (the model fixes it), batch 1
    whole = graph.explain(x, 1)
    assert graph.trace_count == 3
    assert _same(whole, parts)


# -- memory ------------------------------------------------------------------------------


def test_forward_keeps_only_what_rules_read() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3), nn.Softmax(-1)).eval()
    graph = relprop.trace(model)
    x = torch.randn(2, 6)
    graph.explain(x)
    plan = graph._last
    assert plan is not None
    bound = plan.bound
    flat = [x]
    env = engine.forward(plan, model, flat)
    needed = set(bound.bindings) | {a for n in bound.bindings for a in n.all_input_nodes}
    output = list(bound.program.graph.nodes)[-1]
    needed |= {output, *output.all_input_nodes}
    assert set(env) <= needed
    # every node a rule reads is there
    assert needed <= set(env)
