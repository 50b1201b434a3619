"""Elementwise activations written out as several ops are ruled as the one op they are.

Oracles: the same model with the activation as one ATen op (``aten.gelu`` with
``approximate="tanh"`` is GPT-2's ``gelu_new`` to rounding, ``aten.silu`` is x·σ(x),
``aten.gelu`` is the erf form), and the identity rule written by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import rules

DT = torch.float64


class TanhGELU(nn.Module):
    """GPT-2's ``gelu_new``, written out as transformers writes it."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class ErfGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class WrittenSiLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


class Snake(nn.Module):
    """x + sin²(a·x)/a with a learnable a: an activation with a parameter."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.sin(self.a * x).pow(2) / self.a


class Affine(nn.Module):
    """2x + b: elementwise but affine, so no activation (a bias must still absorb relevance)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.linspace(-1.0, 1.0, width))

    def forward(self, x: Tensor) -> Tensor:
        return x * 2.0 + self.b


class Net(nn.Module):
    def __init__(self, act: nn.Module, twice: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.act, self.out = nn.Linear(5, 6), act, nn.Linear(6, 3)
        self.twice = twice

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.inp(x))
        return self.out(self.act(h) if self.twice else h)


def _pair(written: nn.Module, fused: nn.Module, twice: bool = False) -> tuple[nn.Module, nn.Module]:
    return Net(written, twice).to(DT).eval(), Net(fused, twice).to(DT).eval()


SETS = {
    "abslrp": rules.AbsLRP,
    "attnlrp": rules.AttnLRP,
    "epsilon": lambda: rules.Epsilon(1e-9),
}


@pytest.mark.parametrize("rule_set", list(SETS))
@pytest.mark.parametrize(
    "written, fused",
    [
        (TanhGELU, lambda: nn.GELU(approximate="tanh")),
        (ErfGELU, nn.GELU),
        (WrittenSiLU, nn.SiLU),
    ],
    ids=["gelu_new", "erf_gelu", "silu"],
)
def test_written_out_activation_explains_like_the_op(rule_set: str, written, fused) -> None:
    a, b = _pair(written(), fused(), twice=True)
    x = torch.randn(4, 5, dtype=DT)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-12, atol=1e-12)  # the same function
    ga = relprop.trace(a, SETS[rule_set]())
    got = ga.explain(x, [0, 1, 2, 0])
    want = relprop.trace(b, SETS[rule_set]()).explain(x, [0, 1, 2, 0])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert got.abs().sum() > 0
    # one rule per call of the activation, none for the ops inside it
    acts = [bd for bd in ga.bindings if bd.info.module_class == type(a.act).__name__]
    assert len(acts) == 2 and all(bd.region is not None and bd.info.category == "activation" for bd in acts)
    assert len({bd.region.module_path for bd in acts}) == 1 and acts[0].region is not acts[1].region
    assert all(bd.source == "default" for bd in ga.bindings)
    assert "elementwise ops" in ga.summary()


def test_identity_rule_through_a_written_out_activation() -> None:
    """AttnLRP's identity rule: the activation's input gets exactly its output's relevance."""
    model = Net(TanhGELU()).to(DT).eval()
    x = torch.randn(3, 5, dtype=DT)
    graph = relprop.trace(model, rules.AttnLRP())
    e = graph.explanation(x, [0, 1, 2], record=True)
    (act,) = [bd for bd in graph.bindings if bd.region is not None]
    (R_in,) = [r for r in e.records[act.info.node.name] if r is not None]
    torch.testing.assert_close(R_in, e.node_relevance[act.info.node.name], rtol=0, atol=0)
    # a class override reaches the activation as one op
    custom = relprop.trace(model, rules.AttnLRP(), overrides={TanhGELU: rules.AbsRule()})
    custom.explain(x, [0, 1, 2])
    (act,) = [bd for bd in custom.bindings if bd.region is not None]
    assert act.source == "class TanhGELU" and isinstance(act.rule, rules.AbsRule)


def test_parameters_of_an_activation_are_inputs_without_relevance() -> None:
    model = Net(Snake(6)).to(DT).eval()
    x = torch.randn(3, 5, dtype=DT)
    graph = relprop.trace(model, rules.AbsLRP())
    R = graph.explain(x, [0, 1, 2])
    (act,) = [bd for bd in graph.bindings if bd.region is not None]
    assert act.info.live[0] and not any(act.info.live[1:]) and len(act.region.leaves) >= 2
    assert torch.isfinite(R).all() and (R.abs().sum(1) > 0).all()
    # absLRP's f_abs takes the parameter in absolute value: flipping the sign of a changes f,
    # and Snake(−a)(x) = x + sin²(a x)/(−a) differs from Snake(a)(x)
    with torch.no_grad():
        model.act.a.neg_()
    assert not torch.allclose(graph.explain(x, [0, 1, 2]), R)


def test_affine_modules_are_not_activations() -> None:
    """A module computing 2x + b is ruled op by op: under LRP-ε the bias absorbs its share.
    Canonization folds it into the linear layer before it instead (a per-channel scale and
    shift, docs/semantics.md §Canonization): no region either way."""
    model = Net(Affine(6)).to(DT).eval()
    x = torch.randn(3, 5, dtype=DT)
    graph = relprop.trace(model, rules.Epsilon(1e-9, canonize=False))
    graph.explain(x, [0, 1, 2])
    assert not any(bd.region is not None for bd in graph.bindings)
    assert "add" in {bd.info.category for bd in graph.bindings}
    folded = relprop.trace(model, rules.Epsilon(1e-9))
    folded.explain(x, [0, 1, 2])
    assert not any(bd.region is not None for bd in folded.bindings)
    (fold,) = [bd.fold for bd in folded.bindings if bd.fold is not None]
    assert fold.describe() == "linear with mul + add folded"


def test_the_model_itself_is_never_a_region() -> None:
    graph = relprop.trace(TanhGELU().to(DT).eval(), rules.AttnLRP())
    x = torch.randn(2, 3, dtype=DT)
    R = graph.explain(x, torch.ones(2, 3, dtype=DT))
    assert not any(bd.region is not None for bd in graph.bindings)
    assert R.shape == x.shape


def test_gpt2_gelu_new_is_one_activation() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=16, use_cache=False, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).to(DT).eval()
    graph = relprop.trace(model, rules.AttnLRP())
    graph.explain({"input_ids": torch.randint(0, 40, (2, 5))}, relprop.next_token(3))
    regions = [bd for bd in graph.bindings if bd.region is not None]
    assert len(regions) == 2 and {bd.info.module_class for bd in regions} == {"NewGELUActivation"}
    assert all(len(bd.region.nodes) == 8 for bd in regions)
