"""What "the model is left as it was" means in the tests: a snapshot of a module and its check."""

from __future__ import annotations

import torch
from torch import nn


def hooks(model: nn.Module) -> list[int]:
    """Number of hooks of each kind on each submodule."""
    return [len(v) for m in model.modules() for k, v in vars(m).items() if "hooks" in k and isinstance(v, dict)]


def snapshot(model: nn.Module) -> dict:
    """Parameters and buffers, training flags, requires_grad, .grad, hooks and attribute names."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": hooks(model),
        "attrs": [sorted(vars(m)) for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict, name: str = "the method") -> None:
    """Fail, naming what changed, if ``model`` differs from its :func:`snapshot` ``before``."""
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{name} changed {k}"
    for key in ("training", "requires_grad", "hooks", "attrs"):
        assert after[key] == before[key], f"{name} changed {key}"
    for g0, g1 in zip(before["grad"], after["grad"]):
        assert (g0 is None) == (g1 is None) and (g0 is None or torch.equal(g0, g1)), f"{name} changed .grad"
