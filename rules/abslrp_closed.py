"""absLRP in closed form: the step of :mod:`~relprop.rules.abslrp` for ops whose Jacobians are known.

The rule is x ⊙ Jᵀg + |x| ⊙ J_absᵀg with g = R_y / (|y| + ε) (Vukadin et al. 2024,
arXiv 2412.09311; :func:`~relprop.rules.abslrp.abs_step` computes it by autograd).  The
forms here give the same numbers (to rounding) without re-running the op on |x| or
differentiating it: elementwise ops (ReLU, GELU, eval batch norm, add, layer norm, as one
factor k = x ⊙ diag J + |x| ⊙ diag J_abs), max pooling (routing to the argmax), weighted
layers (transposed products with derived weights, Eq. 12) and attention.  Each is tested
against the definition (tests/test_fast_paths.py).

They never write into the caller's relevance unless ``ctx.hints.owns_relevance``, and
return None where they do not apply (the generic path then runs).  Sums of products are
not fused (no addcmul): x·a + |x|·a must cancel to exactly 0 for x < 0, as it does in the
generic path, or rounding noise divided by ε = 1e-9 downstream shows up.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import Tensor

from .attention import apply_mask, attention_inputs, is_masked, masked_softmax
from .base import Context, Layout, Relevance, mark_owned, unit_l1
from .derived_weights import ABSOLUTE, DOUBLE_POSITIVE, WITH_ABSOLUTE, derived_product
from .ops import MAXPOOL, MOVE, op_name
from .products import input_product

__all__ = ["attention_closed_form", "closed_form", "diagonal_step", "nonnegative", "result", "weighted"]


#: ops whose output is never negative (ReLU, sigmoid, softmax, ...), and ops that keep
#: a non-negative input non-negative (data movement, max and average pooling)
_NONNEGATIVE = {f"aten.{n}" for n in ("relu", "relu6", "sigmoid", "hardsigmoid", "softmax", "_softmax", "abs")}
_KEEPS_SIGN = (MOVE - {"aten.pad", "aten.constant_pad_nd"}) | MAXPOOL | {"aten.adaptive_avg_pool2d", "aten.avg_pool2d"}


def nonnegative(node: Any) -> bool:
    """Whether a graph node's value is ≥ 0 by construction (so |x| = x), looking through moves."""
    while getattr(node, "op", None) == "call_function":
        name = op_name(node.target)
        if name in _NONNEGATIVE:
            return True
        if name not in _KEEPS_SIGN or not node.args or not isinstance(node.args[0], torch.fx.Node):
            return False
        node = node.args[0]
    return False


def result(ctx: Context, contributions: dict[int, Tensor]) -> list[Tensor | None]:
    """Per input: the (owned) contribution rescaled to unit L1 per sample, None if not live.

    Where only a scale-free rule reads the relevance (``ctx.hints.free(i)``) the rescaling
    is left to that rule: the same numbers after its own normalization, one pass less.
    Not for float16, whose range is too small for unnormalized relevance.
    """
    out: list[Tensor | None] = [None] * len(ctx.inputs)
    for i, c in contributions.items():
        if ctx.hints.free(i) and c.dtype in (torch.float32, torch.float64):
            out[i] = mark_owned(c)
        else:
            out[i] = mark_owned(unit_l1(c, ctx.info.in_layouts[i], ctx.batch))
    return out


def weighted(ctx: Context, g: Tensor, weight_cache: Any = "auto") -> list[Tensor | None] | None:
    """Linear and convolution: x ⊙ Wᵀg + |x| ⊙ |W|ᵀg from backward products (Eq. 12).

    Where x ≥ 0 by construction (after a ReLU or a max pooling), x = |x| and the sum is
    x ⊙ (W + |W|)ᵀg = x ⊙ (2W⁺)ᵀg: one product instead of two.  The derived weights
    come from the graph's :class:`~relprop.rules.derived_weights.DerivedWeights` within ``weight_cache``'s budget.
    """
    w = ctx.args()[0][1]
    x = ctx.inputs[0]
    if nonnegative(ctx.input_nodes[0]):
        c = derived_product(ctx, w, DOUBLE_POSITIVE, g, weight_cache)
        return None if c is None else result(ctx, {0: c.mul_(x)})
    # signed x: Wᵀg and |W|ᵀg from one product with [W, |W|] (one larger GEMM is faster);
    # a linear layer whose [W, |W|] is not kept takes two, with W as it is and |W| (half the
    # memory to write at every explain; a convolution's product costs more than its weight)
    linear = op_name(ctx.op) == "aten.linear"
    both = derived_product(ctx, w, WITH_ABSOLUTE, g, weight_cache, kept_only=linear)
    if both is not None:
        a, b = both.chunk(2, dim=-1 if linear else 2)
    else:
        a = input_product(ctx, w, g)
        if a is None:
            return None
        b = derived_product(ctx, w, ABSOLUTE, g, weight_cache)
        if b is None:
            return None
    return result(ctx, {0: (a * x).add_(b.mul_(x.abs()))})


def diagonal_step(ctx: Context, R: Relevance, eps: float | None) -> list[Tensor | None] | None:
    """The absLRP step of an op whose Jacobians J, J_abs are diagonal (elementwise ops).

    x ⊙ Jᵀg + |x| ⊙ J_absᵀg = R ⊙ k / (|y| + ε) with k = x ⊙ diag J + |x| ⊙ diag J_abs,
    a factor the size of one activation that is shared by all passes (``eps=None``:
    no division by |y|).  Only ops with one output that carries relevance.
    """
    form = _DIAGONAL.get(op_name(ctx.op))
    R0, *rest = R if isinstance(R, (list, tuple)) else [R]
    if form is None or R0 is None or any(r is not None for r in rest):
        return None
    factors = form(ctx)
    if factors is None:
        return None
    if eps is not None:
        y = ctx.output[0] if isinstance(ctx.output, (list, tuple)) else ctx.output
        den = (y + eps) if nonnegative(ctx.node) else y.abs().add_(eps)
        factors = {i: k.div_(den) for i, k in factors.items()}
    last = list(factors)[-1]  # R is no longer needed once the last product is formed
    inplace = ctx.hints.owns_relevance and isinstance(R, Tensor)
    return result(ctx, {i: R0.mul_(k) if inplace and i == last else R0 * k for i, k in factors.items()})


def _relu(ctx: Context) -> dict[int, Tensor] | None:
    """relu: J = [x > 0], J_abs = [|x| > 0], so k = x·[x > 0] + |x| = relu(x) + |x|."""
    if ctx.live_inputs != [0]:
        return None
    return {0: ctx.inputs[0].abs().add_(ctx.output)}


def _gelu(ctx: Context) -> dict[int, Tensor] | None:
    """gelu: k = x·gelu'(x) + |x|·gelu'(|x|), the derivatives from aten's own backward kernel."""
    args, kwargs = ctx.args()
    if ctx.live_inputs != [0] or len(args) != 1:
        return None
    x, approximate = args[0], kwargs.get("approximate", "none")
    ones = x.new_ones(()).expand_as(x)
    xa = x.abs()
    k = torch.ops.aten.gelu_backward(ones, x, approximate=approximate).mul_(x)
    return {0: k.add_(torch.ops.aten.gelu_backward(ones, xa, approximate=approximate).mul_(xa))}


def _batch_norm(ctx: Context) -> dict[int, Tensor] | None:
    """Eval batch norm y = a·x + c per channel, a = γ/√(var + ε); f_abs has |γ|, so J_abs = |a|.

    k = x·a + |x|·|a| = 2·(x·a)⁺.
    """
    args, kwargs = ctx.args()
    if ctx.live_inputs != [0] or kwargs or len(args) != 7 or args[0].dim() < 2:
        return None
    x, weight, var, eps = args[0], args[1], args[4], args[6]
    a = torch.rsqrt(var + eps).mul_(2)
    if weight is not None:
        a = a * weight
    return {0: (x * a.reshape((x.shape[1],) + (1,) * (x.dim() - 2))).clamp_min_(0)}


def _add(ctx: Context) -> dict[int, Tensor] | None:
    """x1 + x2: J = J_abs = 1 for each addend, so k = x + |x| = 2·x⁺.

    Only plain additions whose live inputs have the output's shape and dtype;
    broadcasting and ``alpha`` take the generic path.
    """
    args, kwargs = ctx.args()
    y = ctx.output
    xs = {i: ctx.inputs[i] for i in ctx.live_inputs}
    if kwargs or len(args) != 2 or any(x.shape != y.shape or x.dtype != y.dtype for x in xs.values()):
        return None
    return {i: x.clamp_min(0).mul_(2) for i, x in xs.items()}


def _layer_norm(ctx: Context) -> dict[int, Tensor] | None:
    """layer norm with constant statistics: J = w/σ(x), J_abs = |w|/σ(|x|) (docs/semantics.md §Normalisations)."""
    args, kwargs = ctx.args()
    if ctx.live_inputs != [0]:
        return None
    x, shape = args[0], args[1]
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    xa = x.abs()
    k = x / torch.sqrt(x.var(dim=dims, keepdim=True, unbiased=False) + eps)
    ka = xa / torch.sqrt(xa.var(dim=dims, keepdim=True, unbiased=False) + eps)
    if w is not None:
        k, ka = k.mul_(w), ka.mul_(w.abs())
    return {0: k.add_(ka)}


_DIAGONAL = {
    "aten.relu": _relu,
    "aten.gelu": _gelu,
    "aten._native_batch_norm_legit_no_training": _batch_norm,
    "aten.add": _add,
    "aten.layer_norm": _layer_norm,
}


def closed_form(ctx: Context, g: Relevance) -> list[Tensor | None] | None:
    """The absLRP step of ``ctx``'s node in closed form given g = R / |y|, or None."""
    if op_name(ctx.op) != "aten.max_pool2d" or ctx.live_inputs != [0] or not isinstance(g, Tensor):
        return None
    return _max_pool2d(ctx, g)


def _max_pool2d(ctx: Context, g: Tensor) -> list[Tensor | None] | None:
    """max_pool2d: g routed to the argmax of x, and to the argmax of |x| for f_abs."""
    args, kwargs = ctx.args()
    if kwargs:
        return None
    x = ctx.inputs[0]
    pool = torch.ops.aten.max_pool2d_with_indices
    if nonnegative(ctx.input_nodes[0]):  # |x| = x: both passes route alike, 2·x ⊙ route(g)
        return result(ctx, {0: _route(g, pool(x, *args[1:])[1], x).mul_(x).mul_(2)})
    xa = x.abs()
    c = _route(g, pool(x, *args[1:])[1], x).mul_(x)
    return result(ctx, {0: c.add_(_route(g, pool(xa, *args[1:])[1], x).mul_(xa))})


def _route(g: Tensor, index: Tensor, x: Tensor) -> Tensor:
    """Σ of g over the pooling windows whose maximum sits at each entry of x (P, *x.shape)."""
    P = g.shape[0]
    out = g.new_zeros(P, *x.shape[:-2], x.shape[-2] * x.shape[-1])
    out.scatter_add_(-1, index.flatten(-2).expand(P, *index.shape[:-2], -1), g.flatten(-2))
    return out.reshape(P, *x.shape)


def attention_closed_form(ctx: Context, R: Relevance, eps: float) -> list[Tensor | None] | None:
    """:class:`~relprop.rules.abslrp.AbsAttentionRule`'s three steps with the products' Jacobians written out.

    The same numbers as the autograd path (to rounding), without re-running the products
    on absolute values: for o = p·v, p ≥ 0 gives p ⊙ (g (v + |v|)ᵀ) and (v + |v|) ⊙ (pᵀg);
    the softmax (statistics constant) has J = diag(p), J_abs = diag(softmax(|s|)).
    None for grouped-query attention (the autograd path handles the repeat).
    """
    q, k, v, mask, causal, scale, groups = attention_inputs(ctx)
    if groups != 1 or not isinstance(R, Tensor):
        return None
    live, B = ctx.live, ctx.batch
    layout = Layout(0) if ctx.info.out_layout is not None else None
    out: list[Tensor | None] = [None] * len(ctx.inputs)
    qs = q * scale
    prod = qs @ k.transpose(-2, -1)
    s = apply_mask(prod, mask, causal)
    p = masked_softmax(s, -1)
    g = R / ctx.output.abs().add_(eps)
    v2 = v.clamp_min(0).mul_(2)  # v + |v|
    if live[2]:
        out[2] = unit_l1(v2 * (p.transpose(-2, -1) @ g), layout, B)
    if not (live[0] or live[1]):
        return out
    # p's relevance (Eq. for o = p·v) and the softmax step, and g = R_s / |q·kᵀ| for the
    # product below, as one factor on g_o·(v + |v|)ᵀ: the two rescalings in between are
    # per pass and sample, and the steps below normalize what they return anyway
    masked = is_masked(s)
    s_abs = torch.where(masked, s, s.abs())
    factor = (s * p).add_(masked_softmax(s_abs, -1).mul_(s_abs))
    factor = torch.where(masked, torch.zeros((), dtype=s.dtype), factor)
    factor = factor.mul_(p).div_(p + eps).div_(prod.abs().add_(eps))
    g = (g @ v2.transpose(-2, -1)).mul_(factor)
    # the products with a tensor and its absolute value as one product each ([k, |k|])
    if live[0]:
        a, b = (g @ torch.cat([k, k.abs()], -1)).chunk(2, -1)
        out[0] = unit_l1((a * qs).add_(b.mul_(qs.abs())), layout, B)
    if live[1]:
        a, b = (g.transpose(-2, -1) @ torch.cat([qs, qs.abs()], -1)).chunk(2, -1)
        out[1] = unit_l1((a * k).add_(b.mul_(k.abs())), layout, B)
    return out
