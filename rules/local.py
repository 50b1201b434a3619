"""Local forms of ops: the function a rule differentiates at one node.

Most ops are their own local form.  Normalizations and softmax are not: their
statistics (mean, variance, max, denominator) are computed from the input but
treated as constants (docs/semantics.md §Normalisations; the absLRP reference does the same), so the
local form is linear in the input up to the elementwise exponential.

``local_call(ctx, replace, absolute)`` evaluates the local form with the live
inputs replaced; with ``absolute=True`` it evaluates absLRP's ``f_abs``: weights,
biases and scalar factors in absolute value, batch-norm running statistics
unchanged, and the normalization statistics taken from the (absolute) input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .attention import is_masked, masked_softmax
from .ops import op_name

if TYPE_CHECKING:  # base imports this module (Pass): annotations only
    from .base import Context

__all__ = ["abs_input", "local_call", "unmasked"]

_ARITHMETIC = {"aten.add", "aten.sub", "aten.rsub", "aten.mul", "aten.div"}
_SOFTMAX = {"aten.softmax", "aten._softmax", "aten._safe_softmax"}
#: ops over attention scores that keep masked-out entries masked: softmax, and the max a
#: softmax written out subtracts for stability (gpt-oss's attention sinks)
_MASKED = _SOFTMAX | {"aten.amax", "aten.max", "aten.logsumexp"}
_BATCH_NORM = {"aten._native_batch_norm_legit_no_training", "aten.batch_norm"}


def _abs_arguments(ctx: Context) -> Callable[[int, Any], Any]:
    """The leaf transform of f_abs: |tensor| for float tensors (but running stats), |scalar|."""
    args, _ = ctx.args()
    keep: set[int] = set()
    name = op_name(ctx.op)
    if name in _BATCH_NORM:
        keep = {id(args[3]), id(args[4])}
    arithmetic = name in _ARITHMETIC

    def transform(pos: int, value: Any) -> Any:
        if isinstance(value, Tensor):
            if value.is_floating_point() and id(value) not in keep:
                return value.abs()
            return value
        if arithmetic and isinstance(value, float):
            return abs(value)
        return value

    return transform


def _norm_dims(x: Tensor, normalized_shape: Any) -> tuple[int, ...]:
    return tuple(range(x.dim() - len(normalized_shape), x.dim()))


def _layer_norm(x: Tensor, shape: Any, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
    dims = _norm_dims(x, shape)
    xd = x.detach()
    mu = xd.mean(dim=dims, keepdim=True)
    var = xd.var(dim=dims, keepdim=True, unbiased=False)
    y = (x - mu) / torch.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def _group_norm(x: Tensor, groups: int, w: Tensor | None, b: Tensor | None, eps: float) -> Tensor:
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    xd = xg.detach()
    mu = xd.mean(dim=-1, keepdim=True)
    var = xd.var(dim=-1, keepdim=True, unbiased=False)
    y = ((xg - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


def _rms_norm(x: Tensor, shape: Any, w: Tensor | None, eps: float | None) -> Tensor:
    dims = _norm_dims(x, shape)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    rms = torch.sqrt(x.detach().pow(2).mean(dim=dims, keepdim=True) + eps)
    y = x / rms
    return y * w if w is not None else y


def _local(ctx: Context, x: Tensor, transform: Callable[[int, Any], Any] | None) -> Any:
    """Local forms of the ops whose statistics are held constant, else None."""
    name = op_name(ctx.op)
    args, kwargs = ctx.args()

    def t(v: Any) -> Any:
        return transform(-1, v) if transform is not None else v

    if name == "aten.layer_norm":
        shape, w, b = args[1], _get(args, 2), _get(args, 3)
        eps = _get(args, 4, kwargs.get("eps", 1e-5))
        return _layer_norm(x, shape, t(w), t(b), eps)
    if name == "aten.native_layer_norm":
        y = _layer_norm(x, args[1], t(args[2]), t(args[3]), args[4])
        return (y, None, None)
    if name == "aten.group_norm":
        w, b = _get(args, 2), _get(args, 3)
        eps = _get(args, 4, kwargs.get("eps", 1e-5))
        return _group_norm(x, args[1], t(w), t(b), eps)
    if name == "aten.native_group_norm":
        return (_group_norm(x, args[6], t(args[1]), t(args[2]), args[7]), None, None)
    if name == "aten.rms_norm":
        return _rms_norm(x, args[1], t(_get(args, 2)), _get(args, 3, kwargs.get("eps")))
    if name in _SOFTMAX:
        return masked_softmax(x, args[1])
    return None


def _get(args: tuple, i: int, default: Any = None) -> Any:
    return args[i] if len(args) > i else default


def local_call(ctx: Context, replace: dict[int, Tensor], absolute: bool = False) -> Any:
    """Evaluate the node's local form with ``replace`` (input index -> value).

    With ``absolute=True`` the replaced inputs must already be absolute values;
    parameters and scalars are taken in absolute value here.
    """
    transform = _abs_arguments(ctx) if absolute else None
    live = ctx.live_inputs
    if len(live) == 1 and live[0] == 0 and 0 in replace:
        out = _local(ctx, replace[0], transform)
        if out is not None:
            return out
    return ctx.call(replace, transform)


def abs_input(ctx: Context, x: Tensor) -> Tensor:
    """The input of f_abs: |x|, except that a softmax or a max keeps masked-out entries masked."""
    if op_name(ctx.op) in _MASKED:
        return torch.where(is_masked(x), x, x.abs())
    return x.abs()


def unmasked(ctx: Context, x: Tensor) -> Tensor | None:
    """For a softmax or a max, the inputs an attention mask did not remove (-inf or ~min); else None."""
    if op_name(ctx.op) in _MASKED:
        return ~is_masked(x)
    return None
