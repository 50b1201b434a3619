"""Registering a rule for an op relprop does not know.

Every ATen operator has a category and a rule (docs/semantics.md §Op taxonomy), but a
custom operator (``torch.library.custom_op``) is opaque: relprop cannot know what it
computes.  The model below uses one, a running total.  In strict mode (the default)
relprop refuses to guess and names the op, the module it came from, and the line that
would register a rule.  We register one: a small rule object that applies the ε-rule,
R_x = x ⊙ Jᵀ(R / (y + ε sign y)), through the op's own vector-Jacobian product.

Run: ``.venv/bin/python examples/custom_rule.py``
"""

from __future__ import annotations

import torch
from torch import nn

import relprop
from relprop.rules import Context, Rule, stabilize, vjp


@torch.library.custom_op("relprop_example::running_total", mutates_args=())
def running_total(x: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(x, dim=1)


@running_total.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


running_total.register_autograd(lambda ctx, grad: grad.flip(1).cumsum(1).flip(1))


class RunningTotal(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return running_total(x)


class CumsumEpsilon(Rule):
    """ε-rule through the op's gradient: every summand gets its share of each partial sum."""

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.epsilon = epsilon

    def relevance(self, ctx: Context, R: torch.Tensor) -> list[torch.Tensor | None]:
        x = ctx.inputs[0]
        g = R / stabilize(ctx.output, self.epsilon)  # R carries a leading pass dimension
        (jt_g,) = vjp(lambda v: ctx.call({0: v}), [x], g)
        return [x * jt_g] + [None] * (len(ctx.inputs) - 1)


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), RunningTotal(), nn.Linear(6, 3)).eval()
    x = torch.rand(2, 6)

    try:
        relprop.trace(model, relprop.rules.Epsilon(1e-9)).explain(x, 0)
    except relprop.MissingRuleError as err:
        print("strict mode says:\n", err, "\n")

    relprop.register_rule("relprop_example::running_total", CumsumEpsilon())
    graph = relprop.trace(model, relprop.rules.Epsilon(1e-9))
    R = graph.explain(x, 0)
    print(graph.summary(), "\n")
    # the ε-rule with a tiny ε conserves relevance up to what the biases absorb
    print("sum of input relevance:", R.sum(1).tolist())
    print("target logit:          ", model(x)[:, 0].tolist())


if __name__ == "__main__":
    main()
