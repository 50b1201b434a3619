"""Explaining a large batch a chunk at a time (``explain(..., batch_size=N)``).

The inputs and the target are split along the batch, each chunk is explained on its
own, and the walks are concatenated: equal to one explain of the whole batch, except
for lookups shared by the whole batch (position ids), which absLRP normalises over all
the samples sharing them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from .binding import Bound
from .engine import Walk
from .errors import InputError
from .inputs import input_name
from .targets import Start, split_target

__all__ = ["check_batch_size", "chunks", "shared_lookups", "concatenate"]


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int, or an InputError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int (samples per chunk), got {batch_size!r}")
    return int(batch_size)


def _check_splittable(args: tuple, kwargs: dict, total: int) -> None:
    """Every tensor input must hold the batch in dim 0 to be split into chunks."""
    for key, value in [*enumerate(args), *kwargs.items()]:
        for x in pytree.tree_leaves(value):
            if isinstance(x, Tensor) and (x.dim() == 0 or x.shape[0] != total):
                raise InputError(
                    f"batch_size splits every tensor input along dim 0, but {input_name(key)} is shaped "
                    f"{tuple(x.shape)} while the batch has {total} samples; expected the batch "
                    "first in every tensor input (or explain without batch_size)"
                )


def chunks(args: tuple, kwargs: dict, target: Any, size: int, total: int) -> Iterator[tuple[int, tuple, dict, Any]]:
    """(rows, args, kwargs, target) of each chunk of at most ``size`` samples."""
    _check_splittable(args, kwargs, total)
    for lo in range(0, total, size):
        hi = min(lo + size, total)
        part = pytree.tree_map(lambda x, lo=lo, hi=hi: x[lo:hi] if isinstance(x, Tensor) else x, (args, kwargs))
        yield hi - lo, part[0], part[1], split_target(target, lo, hi, total)


def shared_lookups(bound: Bound, walk: Walk, rows: int) -> set[str]:
    """Keys of ``walk.embeddings`` whose lookup is shared by the whole batch (summed over it)."""
    shared = set()
    by_path = {path: node for node, path in bound.embeddings.items()}
    for key, R in walk.embeddings.items():
        if R.shape[1] != 1:
            continue
        if rows > 1:
            shared.add(key)
            continue
        node = by_path.get(key.split(":", 1)[0])
        index = node.args[1].meta.get("val") if node is not None else None
        first = index.shape[0] if isinstance(index, Tensor) and index.dim() > 0 else None
        if isinstance(first, int) and bound.program.batch_symbols:
            shared.add(key)  # a fixed size in a graph with a symbolic batch: not per sample
    return shared


def concatenate(parts: list[tuple[Walk, Start, Any]], shared: set[str], total: int) -> tuple[Walk, Start, Any]:
    """One walk, start and output from those of the chunks (shared lookups summed)."""
    walks = [w for w, _, _ in parts]
    walk = Walk(
        inputs={i: torch.cat([w.inputs[i] for w in walks], dim=1) for i in walks[0].inputs},
        embeddings={
            key: (
                torch.stack([w.embeddings[key] for w in walks]).sum(0)
                if key in shared
                else torch.cat([w.embeddings[key] for w in walks], dim=1)
            )
            for key in walks[0].embeddings
        },
    )
    classes = [s.classes for _, s, _ in parts]
    start = Start(
        relevance=[],
        classes=None if any(c is None for c in classes) else torch.cat(classes),  # type: ignore[arg-type]
        passes=parts[0][1].passes,
    )
    return walk, start, _cat_outputs([o for _, _, o in parts], total)


def _cat_outputs(outs: list[Any], total: int) -> Any:
    """The model outputs of the chunks, batch-first tensors concatenated."""
    flats = [pytree.tree_flatten(o) for o in outs]
    spec = flats[0][1]
    leaves = []
    for pieces in zip(*(f for f, _ in flats)):
        first = pieces[0]
        if isinstance(first, Tensor) and first.dim() > 0 and sum(p.shape[0] for p in pieces) == total:
            leaves.append(torch.cat(pieces))
        else:
            leaves.append(first)
    return pytree.tree_unflatten(leaves, spec)
