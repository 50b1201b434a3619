"""Relevance through data movement (rules/moves.py) equals the gradient autograd computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relprop
from relprop.rules import moves


class _Views(nn.Module):
    """A projection split into three heads as vision transformers do (reshape, permute,
    unbind), then transpose, flatten, unsqueeze/squeeze, view and t."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 3 * 2 * 4)
        self.head = nn.Linear(5 * 2 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        h = torch.tanh(q) * torch.sigmoid(k) + v  # (B, 2, N, 4)
        h = h.transpose(1, 2).flatten(2).unsqueeze(1).squeeze(1)  # (B, N, 8)
        h = h.contiguous().view(B, N * 8)
        return self.head(h.t().t())


@pytest.mark.parametrize(
    "rules", [relprop.rules.Epsilon(1e-9), relprop.rules.AbsLRP(), relprop.rules.AttnLRP()], ids=repr
)
def test_moves_equal_the_gradient(rules, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = _Views().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    calls: list[str] = []
    fast_moved = moves.moved

    def spy(ctx, R):  # noqa: ANN001, ANN202
        out = fast_moved(ctx, R)
        if out is not None:
            calls.append(str(ctx.op))
        return out

    monkeypatch.setattr(relprop.rules.base, "moved", spy)
    fast = relprop.trace(model, rules).explain(x, [0, 2])
    for op in ("unbind", "permute", "reshape", "transpose", "view"):
        assert any(op in c for c in calls), (op, calls)
    monkeypatch.setattr(relprop.rules.base, "moved", lambda ctx, R: None)
    slow = relprop.trace(model, rules).explain(x, [0, 2])
    assert fast.abs().sum() > 0
    assert torch.equal(fast, slow)


def test_unbind_writes_in_the_input_memory_order() -> None:
    """Undoing the permute that made the unbound tensor is then a view of a contiguous tensor."""
    qkv = torch.randn(2, 5, 3, 2, 4)
    x = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d), as a vision transformer's q, k, v
    buf = moves.empty_in_layout(x, passes=2)
    assert buf.shape == (2, *x.shape)
    assert buf.permute(0, 2, 4, 1, 3, 5).is_contiguous()
    assert moves.empty_in_layout(qkv, passes=2).is_contiguous()
