"""Custom operators with a traceable Python implementation are ruled like any other code.

``torch.export`` keeps a ``torch.library`` custom op as one node; relprop traces its
implementation into ATen ops (``relprop/custom_ops.py``).  The oracle: the same model
written without the custom op (its body inlined by hand) gets the same explanation under
every rule family, strict.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import rules


@torch.library.custom_op("relprop_ct::gated", mutates_args=())
def gated(x: Tensor, w: Tensor) -> Tensor:
    """gelu(x) · w + Σ x, written with an in-place add (functionalized when traced)."""
    out = F.gelu(x) * w
    out.add_(x.sum(-1, keepdim=True))
    return out


@gated.register_fake
def _(x: Tensor, w: Tensor) -> Tensor:
    return torch.empty_like(x)


def _gated_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    ctx.save_for_backward(*inputs)


def _gated_backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    x, w = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
    with torch.enable_grad():
        y = F.gelu(x) * w + x.sum(-1, keepdim=True)
    return torch.autograd.grad(y, (x, w), grad)


gated.register_autograd(_gated_backward, setup_context=_gated_setup)


@torch.library.custom_op("relprop_ct::outer", mutates_args=())
def outer(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Two outputs, one of them through another custom op (nested)."""
    return torch.ops.relprop_ct.gated(x, w), x.flip(-1) * 2


@outer.register_fake
def _(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(x)


class WithOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        y, z = torch.ops.relprop_ct.outer(h, self.w)
        return self.head(torch.cat([y, z], -1))


class Written(WithOps):
    """The same computation in plain PyTorch."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        y = F.gelu(h) * self.w + h.sum(-1, keepdim=True)
        z = h.flip(-1) * 2
        return self.head(torch.cat([y, z], -1))


@pytest.mark.parametrize("rule_set", ["abslrp", "epsilon", "attnlrp", "epsilon_plus_flat"])
def test_traceable_custom_ops_equal_the_written_model(rule_set: str) -> None:
    make = {
        "abslrp": rules.AbsLRP,
        "epsilon": rules.Epsilon,
        "attnlrp": rules.AttnLRP,
        "epsilon_plus_flat": rules.EpsilonPlusFlat,
    }[rule_set]
    torch.manual_seed(0)
    model = WithOps().double().eval()
    plain = Written().double().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x), plain(x))
    graph = relprop.trace(model, rules=make(), strict=True, cache=False)
    got = graph.explain(x, target=[0, 1, 2, 0, 1])
    expected = relprop.trace(plain, rules=make(), strict=True, cache=False).explain(x, target=[0, 1, 2, 0, 1])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    summary = graph.summary()
    assert "relprop_ct" not in summary and "aten.gelu" in summary
    assert " WithOps" in summary or "(WithOps)" in summary  # the inlined ops keep the caller's module


def test_traced_custom_op_reuses_the_trace_for_other_batches() -> None:
    torch.manual_seed(1)
    model = WithOps().double().eval()
    graph = relprop.trace(model, rules=rules.Epsilon(), strict=True, cache=False)
    for n in (3, 6):
        R = graph.explain(torch.randn(n, 4, dtype=torch.float64), target=0)
        assert R.shape == (n, 4) and torch.isfinite(R).all()
    assert graph.trace_count == 1


def test_a_rule_registered_for_a_traceable_op_applies_to_the_op() -> None:
    """A rule given for the custom op itself (override or global) keeps it one node with that rule,
    inside an enclosing custom op whose implementation is still traced."""
    torch.manual_seed(2)
    model = WithOps().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    rule = rules.EpsilonRule(1e-6)
    graph = relprop.trace(model, rules=rules.Epsilon(), strict=True, cache=False, overrides={"relprop_ct::gated": rule})
    R = graph.explain(x, target=0)
    summary = graph.summary()
    assert "relprop_ct.gated.default" in summary and "op relprop_ct.gated" in summary
    assert "relprop_ct.outer" not in summary
    assert torch.isfinite(R).all()
    inlined = relprop.trace(model, rules=rules.Epsilon(), strict=True, cache=False)
    inlined.explain(x, target=0)
    assert "relprop_ct" not in inlined.summary()
    relprop.register_rule("relprop_ct::gated", rule)
    try:
        registered = relprop.trace(model, rules=rules.Epsilon(), strict=True, cache=False)
        torch.testing.assert_close(registered.explain(x, target=0), R)
        assert "relprop_ct.gated.default" in registered.summary()
    finally:
        relprop.unregister_rule("relprop_ct::gated")


def test_examples_custom_rule_runs_with_an_input_named_input() -> None:
    """``examples/custom_rule.py``: a registered rule for an opaque op on an ``nn.Sequential``,
    whose forward's argument is named ``input`` (a builtin: the graph copy kept for registered
    rules once renamed it ``input_1`` and lost the model's input)."""
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "custom_rule.py"
    runpy.run_path(str(example), run_name="__main__")
