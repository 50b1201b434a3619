"""Small token models whose traces depend on the prompt length (tests of dynamic sizes and the cache)."""

from __future__ import annotations

import torch
from torch import nn


class Branchy(nn.Module):
    """Takes a different path for prompts longer than 4 tokens: a trace holds on one side only."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 4)
        self.short = nn.Linear(4, 3)
        self.long = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids).mean(1)
        return self.long(h) if ids.shape[1] > 4 else self.short(h)


class FixedLength(nn.Module):
    """Flattens the (tokens, hidden) block into one vector: fixes the length to the traced one."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 4)
        self.head = nn.Linear(4 * length, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).flatten(1))
