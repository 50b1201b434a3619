"""Where each sample of the batch sits in every tensor of a traced graph.

absLRP normalizes relevance per sample, so every tensor on the relevance path
needs its batch layout.  The batch dimension of every input is exported as a
symbolic size; a tensor's batch dimension is the one whose size contains that
symbol.  When the batch is packed together with other dimensions into one
(``(B*heads, N, D)``, or token-major ``(N*B, E)`` as in ``nn.MultiheadAttention``),
the shapes alone do not say in which order: the order is followed through the
reshapes that made the packed dimension.
"""

from __future__ import annotations

import math
from typing import Any

import sympy
import torch
from torch import fx

from relprop.rules.base import Layout
from relprop.rules.ops import op_name

__all__ = ["batch_layouts"]

_RESHAPES = {"aten.view", "aten._unsafe_view", "aten.reshape", "aten.flatten", "aten.unflatten"}


def _expr(size: Any) -> Any:
    return size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(int(size))


def _val(node: Any) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if isinstance(val, (tuple, list)):
        val = next((v for v in val if isinstance(v, torch.Tensor)), None)
    return val if isinstance(val, torch.Tensor) else None


def _batch_dim(val: torch.Tensor, symbols: set) -> int | None:
    for d, size in enumerate(val.shape):
        if isinstance(size, torch.SymInt):
            expr = size.node.expr
            if expr in symbols or any(s in symbols for s in getattr(expr, "free_symbols", ())):
                return d
    return None


def _inner_through_reshape(src: torch.Tensor, layout: Layout, out: torch.Tensor, d: int) -> int | None:
    """Stride of the batch index inside packed dim ``d`` of a row-major reshape of ``src``."""
    shape_in = [_expr(s) for s in src.shape]
    shape_out = [_expr(s) for s in out.shape]
    inner_in: Any = layout.inner
    if inner_in is None:  # batch-major packing: each sample owns size / batch entries
        size = shape_in[layout.dim]
        inner_in = size / next(iter(size.free_symbols))
    stride_batch = inner_in * math.prod(shape_in[layout.dim + 1 :], start=sympy.Integer(1))
    stride_dim = math.prod(shape_out[d + 1 :], start=sympy.Integer(1))
    inner = sympy.simplify(stride_batch / stride_dim)
    return int(inner) if inner.is_Integer and inner > 0 else None


def batch_layouts(
    nodes: list[fx.Node], live: set[fx.Node], symbols: set, static_batch: int | None
) -> dict[fx.Node, Layout | None]:
    """The batch layout of every live node's (first tensor) output."""
    layouts: dict[fx.Node, Layout | None] = {}
    for n in nodes:
        if n not in live:
            continue
        val = _val(n)
        if val is None:
            layouts[n] = None
            continue
        if not symbols:
            layouts[n] = _static_layout(val, static_batch)
            continue
        d = _batch_dim(val, symbols)
        if d is None:
            layouts[n] = None
            continue
        if val.shape[d].node.expr in symbols:
            layouts[n] = Layout(d)
            continue
        layouts[n] = Layout(d, _packed_inner(n, val, d, layouts))
    return layouts


def _packed_inner(n: fx.Node, val: torch.Tensor, d: int, layouts: dict) -> int | None:
    """The batch stride inside a packed dim, followed from the op's input (None: batch-major)."""
    sources = [a for a in n.all_input_nodes if layouts.get(a) is not None]
    if not sources:
        return None
    src = sources[0]
    src_layout, src_val = layouts[src], _val(src)
    if op_name(n.target) in _RESHAPES and src_val is not None:
        return _inner_through_reshape(src_val, src_layout, val, d)
    # any other op keeps the packing of an input whose packed dim has the same size
    expr = val.shape[d].node.expr
    for a in sources:
        lay, a_val = layouts[a], _val(a)
        if a_val is not None and isinstance(a_val.shape[lay.dim], torch.SymInt):
            if a_val.shape[lay.dim].node.expr == expr:
                return lay.inner
    return None


def _static_layout(val: torch.Tensor, static_batch: int | None) -> Layout | None:
    if static_batch is None or static_batch <= 1:
        return None
    for d, size in enumerate(val.shape):
        if isinstance(size, int) and size % static_batch == 0:
            return Layout(d)
    return None
