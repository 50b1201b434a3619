"""A custom operator relprop cannot know: a running total registered with torch.library,
computed in NumPy (so relprop cannot trace its implementation into ATen ops)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


@torch.library.custom_op("relprop_test::running_total", mutates_args=())
def running_total(x: Tensor) -> Tensor:
    """cumsum along dim 1, as an opaque custom operator."""
    return torch.from_numpy(np.cumsum(x.detach().cpu().numpy(), axis=1)).to(x.device)


@running_total.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


def _backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
    return grad.flip(1).cumsum(1).flip(1)


running_total.register_autograd(_backward)

OP = "relprop_test.running_total"


class Cumulative(nn.Module):
    """A module whose forward is the custom operator."""

    def forward(self, x: Tensor) -> Tensor:
        return running_total(x)
