"""One trace for every prompt length and batch size (dynamic token dimensions).

The oracle is a static trace of the same model at each length (``dynamic_dims``
patched to mark nothing dynamic): the explanation from the one dynamic trace must
equal it, in float64 to 1e-6 of the largest relevance (1e-12 where all are 0).  Models that fix their
sequence length, or that bound it by a branch on the length, must still explain
correctly, by tracing again.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from length_models import Branchy, FixedLength
from torch import nn

import relprop
from relprop import tracing
from relprop.targets import next_token

transformers = pytest.importorskip("transformers")


def _llama() -> nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval().double()


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=128,
        num_labels=3,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).eval().double()


def _static(model: nn.Module, rules: relprop.rules.RuleSet, inputs: dict, target: object) -> torch.Tensor:
    """The oracle: a fresh static trace of exactly these sizes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracing, "dynamic_dims", lambda x: ())
        graph = relprop.trace(model, rules)
        out = graph.explain(inputs, target)
        assert graph._last.bound.program.batch_symbols == set()
        return out


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max() <= 1e-6 * b.abs().max() + 1e-12


@pytest.mark.parametrize(
    ("make", "rules", "mask"),
    [
        (_llama, relprop.rules.AttnLRP, False),
        (_llama, relprop.rules.AbsLRP, False),
        (_bert, relprop.rules.AbsLRP, True),
        (_bert, relprop.rules.Epsilon, True),
    ],
    ids=["llama-attnlrp", "llama-abslrp", "bert-abslrp", "bert-epsilon"],
)
def test_one_trace_for_every_length_equals_static_traces(make, rules, mask) -> None:
    model = make()
    graph = relprop.trace(model, rules())
    generator = torch.Generator().manual_seed(1)
    for batch, length in [(1, 5), (1, 17), (1, 64), (3, 7), (1, 1)]:
        ids = torch.randint(3, 97, (batch, length), generator=generator)
        inputs = {"input_ids": ids}
        if mask:
            inputs["attention_mask"] = torch.ones_like(ids)
            if batch > 1:  # padding in the batch: the mask is an input, not a constant
                inputs["attention_mask"][0, -2:] = 0
        target = next_token(ids[:, -1].tolist()) if not mask else torch.arange(batch) % 3
        R = graph.explain(inputs, target)
        assert graph.trace_count == 1, (batch, length)
        _close(R, _static(model, rules(), inputs, target))
    assert not graph._last.bound.program.decomposed  # export's own graph, lowered


def test_a_model_that_fixes_the_length_is_traced_per_length_with_one_warning() -> None:
    torch.manual_seed(0)
    model = FixedLength(6).double().eval()
    graph = relprop.trace(model, relprop.rules.Epsilon())
    ids = torch.randint(0, 50, (2, 6))
    with pytest.warns(UserWarning, match="fixes the sequence length"):
        R = graph.explain(ids, 1)
    _close(R, _static(model, relprop.rules.Epsilon(), ids, 1))
    program = graph._last.bound.program
    assert any(d == 1 for _, d, _ in program.fixed)
    assert program.batch_symbols  # the batch stays dynamic
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per model class
        graph.explain(torch.randint(0, 50, (5, 6)), 1)
    assert graph.trace_count == 1
    model.head = nn.Linear(4 * 9, 3).double()  # a model for length 9: new structure, new trace
    graph.explain(torch.randint(0, 50, (2, 9)), 0)
    assert graph.trace_count == 2


def test_a_length_outside_the_traced_range_is_traced_again() -> None:
    torch.manual_seed(0)
    model = Branchy().double().eval()
    graph = relprop.trace(model, relprop.rules.Epsilon())
    long_ids, short_ids = torch.randint(0, 50, (2, 9)), torch.randint(0, 50, (2, 3))
    R_long = graph.explain(long_ids, 2)
    assert graph.trace_count == 1
    R_short = graph.explain(short_ids, 2)  # the long trace guards length > 4: not this one
    assert graph.trace_count == 2
    _close(R_short, _static(model, relprop.rules.Epsilon(), short_ids, 2))
    _close(R_long, _static(model, relprop.rules.Epsilon(), long_ids, 2))
    graph.explain(torch.randint(0, 50, (1, 12)), 0)
    graph.explain(torch.randint(0, 50, (1, 2)), 0)
    assert graph.trace_count == 2  # each side's trace serves its lengths


def test_float_inputs_keep_a_fixed_size() -> None:
    """Image-like inputs: only the batch is dynamic; a new image size is a new trace."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    graph = relprop.trace(model.double().eval(), relprop.rules.Epsilon())
    graph.explain(torch.randn(2, 3, 8, 8, dtype=torch.float64), 0)
    graph.explain(torch.randn(5, 3, 8, 8, dtype=torch.float64), 0)
    assert graph.trace_count == 1
    graph.explain(torch.randn(2, 3, 10, 10, dtype=torch.float64), 0)
    assert graph.trace_count == 2
