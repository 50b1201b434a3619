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

import math
from typing import Any

import torch
import torch.fx
from torch import Tensor

from .attention import apply_mask, attention_inputs, is_masked
from .base import Context, Layout, Relevance, mark_owned, unit_l1
from .categories import Category
from .derived_weights import ABSOLUTE, DOUBLE_POSITIVE, WITH_ABSOLUTE, derived_factor, derived_product
from .local import local_call
from .ops import MAXPOOL, MOVE, op_name
from .products import constant_factor, factor_product, feeds_output, input_product, sparse_rows, supports

__all__ = [
    "attention_closed_form",
    "closed_form",
    "diagonal_step",
    "nonnegative",
    "output_layer",
    "result",
    "weighted",
]


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
    normalized: set[int] = set()  # one tensor handed to several inputs is rescaled once
    for i, c in contributions.items():
        if id(c) in normalized or (ctx.hints.free(i) and c.dtype in (torch.float32, torch.float64)):
            out[i] = mark_owned(c)
        else:
            out[i] = mark_owned(unit_l1(c, ctx.info.in_layouts[i], ctx.batch))
            normalized.add(id(c))
    return out


def weighted(ctx: Context, g: Tensor, weight_cache: Any = "auto") -> list[Tensor | None] | None:
    """Linear and convolution: x ⊙ Wᵀg + |x| ⊙ |W|ᵀg from backward products (Eq. 12).

    Where x ≥ 0 by construction (after a ReLU or a max pooling), x = |x| and the sum is
    x ⊙ (W + |W|)ᵀg = x ⊙ (2W⁺)ᵀg: one product instead of two.  The derived weights
    come from the graph's :class:`~relprop.rules.derived_weights.DerivedWeights` within ``weight_cache``'s budget.
    """
    if not supports(ctx):
        return _factor_layer(ctx, g, weight_cache)
    c = _weighted(ctx, ctx.inputs[0], g, weight_cache)
    return None if c is None else result(ctx, {0: c})


def _factor_layer(ctx: Context, g: Tensor, weight_cache: Any) -> list[Tensor | None] | None:
    """:func:`weighted` for a matrix product with a constant factor W (``addmm(b, x, W)`` as
    GPT-2's ``Conv1D``, ``addmm(b, W, x)``, ``baddbmm``, ``mm``, ``matmul``): Wᵀg and |W|ᵀg
    (or (2W⁺)ᵀg for x ≥ 0) as products with the transposed factor."""
    if len(ctx.live_inputs) != 1:
        return None
    index = ctx.live_inputs[0]
    found = constant_factor(ctx, index)
    if found is None:
        return None
    w, node = found
    x = ctx.inputs[index]
    if nonnegative(ctx.input_nodes[index]):
        c = factor_product(ctx, index, derived_factor(ctx, w, node, DOUBLE_POSITIVE, weight_cache), g)
        return None if c is None else result(ctx, {index: c.mul_(x)})
    a = factor_product(ctx, index, w, g)
    if a is None:
        return None
    b = factor_product(ctx, index, derived_factor(ctx, w, node, ABSOLUTE, weight_cache), g)
    assert b is not None  # the same product as ``a``'s with a weight of the same shape
    return result(ctx, {index: _signed(a, b, x)})


def _weighted(ctx: Context, x: Tensor, g: Tensor, weight_cache: Any) -> Tensor | None:
    """x ⊙ Wᵀg + |x| ⊙ |W|ᵀg of :func:`weighted`, unnormalized (``x`` may be rows of the input)."""
    w = ctx.args()[0][1]
    if nonnegative(ctx.input_nodes[0]):
        c = derived_product(ctx, w, DOUBLE_POSITIVE, g, weight_cache)
        return None if c is None else c.mul_(x)
    # signed x: Wᵀg and |W|ᵀg from one product with [W, |W|] (one larger GEMM is faster);
    # a linear layer whose [W, |W|] is not kept takes two, with W as it is and |W| (half the
    # memory to write at every explain; a convolution's product costs more than its weight)
    linear = op_name(ctx.op) == "aten.linear"
    both = derived_product(ctx, w, WITH_ABSOLUTE, g, weight_cache, kept_only=linear)
    if both is not None:
        return _signed(*both.chunk(2, dim=-1 if linear else 2), x)
    a = input_product(ctx, w, g)
    if a is None:
        return None
    b = derived_product(ctx, w, ABSOLUTE, g, weight_cache)
    return None if b is None else _signed(a, b, x)


def output_layer(ctx: Context, R: Relevance, eps: float, weight_cache: Any = "auto") -> list[Tensor | None] | None:
    """:func:`weighted` at a linear layer whose output is the graph's output, on the rows of R
    that are not all zero (a language model's target position; the others give zero).

    The relevance the walk starts from is zero outside what the target explains: dividing
    by |y| and multiplying there would be most of the work on a vocabulary-sized output.
    None where more than half the rows are non-zero, or for other layers.
    """
    if op_name(ctx.op) != "aten.linear" or not isinstance(R, Tensor) or ctx.live_inputs != [0]:
        return None
    if not feeds_output(ctx) or R.dim() < 3:
        return None
    rows = R.reshape(-1, R.shape[-1])
    kept = sparse_rows(rows)
    if kept is None:
        return None
    x = ctx.inputs[0]
    y = ctx.output.reshape(-1, R.shape[-1])
    at = kept % y.shape[0]  # the sample row of each (pass, row) kept
    g = rows.index_select(0, kept).div_(y.index_select(0, at).abs_().add_(eps))
    c = _weighted(ctx, x.reshape(-1, x.shape[-1]).index_select(0, at), g, weight_cache)
    if c is None:
        return None
    out = c.new_zeros(rows.shape[0], x.shape[-1])
    out.index_copy_(0, kept, c)
    return result(ctx, {0: out.reshape(R.shape[0], *x.shape)})


def diagonal_step(ctx: Context, R: Relevance, eps: float | None) -> list[Tensor | None] | None:
    """The absLRP step of an op whose Jacobians J, J_abs are diagonal (elementwise ops).

    x ⊙ Jᵀg + |x| ⊙ J_absᵀg = R ⊙ k / (|y| + ε) with k = x ⊙ diag J + |x| ⊙ diag J_abs,
    a factor the size of one activation that is shared by all passes (``eps=None``:
    no division by |y|).  Only ops with one output that carries relevance.
    """
    form = _DIAGONAL.get(op_name(ctx.op))
    if form is None and ctx.info.category == Category.ACTIVATION:
        form = _elementwise
    R0, *rest = R if isinstance(R, (list, tuple)) else [R]
    if form is None or R0 is None or any(r is not None for r in rest):
        return None
    factors = form(ctx)
    if factors is None:
        return None
    if eps is not None:
        y = ctx.output[0] if isinstance(ctx.output, (list, tuple)) else ctx.output
        den = (y + eps) if nonnegative(ctx.node) else y.abs().add_(eps)
        divided = {id(k): k.div_(den) for k in {id(k): k for k in factors.values()}.values()}
        factors = {i: divided[id(k)] for i, k in factors.items()}
    last = list(factors)[-1]  # R is no longer needed once the last product is formed
    inplace = ctx.hints.owns_relevance and isinstance(R, Tensor)
    made: dict[int, Tensor] = {}  # id(factor) -> contribution: inputs that share a factor share it
    for i, k in factors.items():
        if id(k) not in made:
            made[id(k)] = R0.mul_(k) if inplace and i == last else R0 * k
    return result(ctx, {i: made[id(k)] for i, k in factors.items()})


def _elementwise(ctx: Context) -> dict[int, Tensor] | None:
    """Any other elementwise activation (an op, or a region of ops written out, as GPT-2's
    tanh GELU): diag J = f'(x) and diag J_abs = f_abs'(|x|) by one unbatched backward each,
    k = x·f'(x) + |x|·f_abs'(|x|).  Only where the output has the input's shape and dtype."""
    live = ctx.live_inputs
    y = ctx.output
    if len(live) != 1 or not isinstance(y, Tensor) or ctx.inputs[live[0]].shape != y.shape:
        return None
    i = live[0]
    x = ctx.inputs[i]
    if x.dtype != y.dtype or not x.is_floating_point():
        return None
    slopes = []
    for value, absolute in ((x, False), (x.abs(), True)):
        with torch.enable_grad():
            leaf = value.detach().requires_grad_(True)
            out = local_call(ctx, {i: leaf}, absolute=absolute)
            if not isinstance(out, Tensor) or not out.requires_grad:
                return None
            (slope,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
        if slope._is_zerotensor():  # a constant function's (sgn): autograd's immutable zeros
            slope = slope.clone()
        slopes.append(slope)
    return {i: slopes[0].mul_(x).add_(slopes[1].mul_(x.abs()))}


def _relu(ctx: Context) -> dict[int, Tensor] | None:
    """relu: J = [x > 0], J_abs = [|x| > 0], so k = x·[x > 0] + |x| = relu(x) + |x|."""
    if ctx.live_inputs != [0]:
        return None
    return {0: ctx.inputs[0].abs().add_(ctx.output)}


def _gelu(ctx: Context) -> dict[int, Tensor] | None:
    """gelu: k = x·gelu'(x) + |x|·gelu'(|x|) = 2x·gelu'(x) + max(-x, 0).

    gelu(x) = x·c(x) with c(x) + c(-x) = 1 (Φ, or the tanh form), so gelu'(-x) = 1 - gelu'(x)
    and for x < 0 the second term is |x| - |x|·gelu'(x): one derivative (aten's own backward
    kernel) instead of two.
    """
    args, kwargs = ctx.args()
    if ctx.live_inputs != [0] or len(args) != 1:
        return None
    x, approximate = args[0], kwargs.get("approximate", "none")
    slope = torch.ops.aten.gelu_backward(torch.ones_like(x), x, approximate=approximate)
    return {0: _odd_gate(x, slope)}


def _silu(ctx: Context) -> dict[int, Tensor] | None:
    """silu(x) = x·σ(x), σ(x) + σ(-x) = 1: k = 2x·silu'(x) + max(-x, 0), as for :func:`_gelu`."""
    args, kwargs = ctx.args()
    if ctx.live_inputs != [0] or len(args) != 1 or kwargs:
        return None
    x = args[0]
    return {0: _odd_gate(x, torch.ops.aten.silu_backward(torch.ones_like(x), x))}


def _odd_gate(x: Tensor, slope: Tensor) -> Tensor:
    """x·f'(x) + |x|·f'(|x|) for f(x) = x·c(x) with c(x) + c(-x) = 1, given ``slope`` = f'(x)."""
    return torch.addcmul(x.clamp_max(0).neg_(), slope, x, value=2)


def _scaled(ctx: Context) -> dict[int, Tensor] | None:
    """x·c or x/c with c constant, or a·b with both live: k = x·J + |x|·J_abs = 2·y⁺ for each
    live factor (J = c, J_abs = |c|: x·c + |x|·|c| = 2(x·c)⁺), one tensor for all of them.

    Only where every live input has the output's shape and dtype (no broadcast live factor),
    and for a division only its dividend.
    """
    args, kwargs = ctx.args()
    y, live = ctx.output, ctx.live_inputs
    if kwargs or len(args) != 2 or not isinstance(y, Tensor):
        return None
    if op_name(ctx.op) == "aten.div" and live != [0]:
        return None
    if any(ctx.inputs[i].shape != y.shape or ctx.inputs[i].dtype != y.dtype for i in live):
        return None
    k = y.clamp_min(0).mul_(2)
    return dict.fromkeys(live, k)


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
    """layer norm with constant statistics: J = w/σ(x), J_abs = |w|/σ(|x|) (docs/semantics.md §Normalisations).

    1/σ from aten's fused ``native_layer_norm`` (its reciprocal standard deviation).
    """
    args, kwargs = ctx.args()
    if ctx.live_inputs != [0]:
        return None
    x, shape = args[0], list(args[1])
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
    xa = x.abs()
    k = x * torch.ops.aten.native_layer_norm(x, shape, None, None, eps)[2]
    ka = xa.mul_(torch.ops.aten.native_layer_norm(xa, shape, None, None, eps)[2])
    if w is not None:
        k, ka = k.mul_(w), ka.mul_(w.abs())
    return {0: k.add_(ka)}


_DIAGONAL = {
    "aten.relu": _relu,
    "aten.gelu": _gelu,
    "aten._native_batch_norm_legit_no_training": _batch_norm,
    "aten.add": _add,
    "aten.layer_norm": _layer_norm,
    "aten.silu": _silu,
    "aten.mul": _scaled,
    "aten.div": _scaled,
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
    The passes are laid out beside the query positions, so every product is one batched
    product over the heads with no copy of the score-sized factors.  None for grouped-query
    attention (the autograd path handles the repeat) and for batch dimensions that broadcast.
    """
    q, k, v, mask, causal, scale, groups = attention_inputs(ctx)
    if groups != 1 or not isinstance(R, Tensor) or q.dim() < 3 or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return None
    live, B, P = ctx.live, ctx.batch, R.shape[0]
    layout = Layout(0) if ctx.info.out_layout is not None else None
    lead, Tq, Tk, d, dv = q.shape[:-2], q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    N = math.prod(lead)
    out: list[Tensor | None] = [None] * len(ctx.inputs)
    qs = (q * scale).reshape(N, Tq, d)
    k3, v3 = k.reshape(N, Tk, d), v.reshape(N, Tk, dv)
    prod = torch.bmm(qs, k3.transpose(1, 2))
    s = apply_mask(prod.view(*lead, Tq, Tk), mask, causal).reshape(N, Tq, Tk)
    masked = is_masked(s) if (mask is not None or causal) else None
    p = torch.softmax(s, -1)
    if masked is not None:  # a row the mask removed entirely is zeros, not 0/0
        p = p.nan_to_num_(0.0)
    # g = R / (|o| + ε), laid out (N, Tq, P, dv): the passes beside the query positions
    g = torch.empty(N, Tq, P, dv, dtype=R.dtype, device=R.device)
    torch.div(R.reshape(P, N, Tq, dv).permute(1, 2, 0, 3), ctx.output.abs().add_(eps).reshape(N, Tq, 1, dv), out=g)
    v2 = v3.clamp_min(0).mul_(2)  # v + |v|
    if live[2]:  # (v + |v|) ⊙ (pᵀ g)
        pg = torch.bmm(p.transpose(1, 2), g.view(N, Tq, P * dv)).view(N, Tk, P, dv)
        rv = torch.empty(P, N, Tk, dv, dtype=R.dtype, device=R.device)
        torch.mul(pg.permute(2, 0, 1, 3), v2, out=rv)
        out[2] = unit_l1(rv.view(P, *v.shape), layout, B)
    if not (live[0] or live[1]):
        return out
    # p's relevance (Eq. for o = p·v) and the softmax step, and g = R_s / |q·kᵀ| for the
    # product below, as one factor on g_o·(v + |v|)ᵀ: the two rescalings in between are
    # per pass and sample, and the steps below normalize what they return anyway
    s_abs = s.abs() if masked is None else torch.where(masked, s, s.abs())
    factor = torch.softmax(s_abs, -1).mul_(s_abs).add_(s * p)
    if masked is not None:
        factor = factor.masked_fill_(masked, 0.0)
    factor = factor.mul_(p).div_(p.add_(eps)).div_(prod.abs_().add_(eps))
    G = torch.bmm(g.view(N, Tq * P, dv), v2.transpose(1, 2)).view(N, Tq, P, Tk).mul_(factor.view(N, Tq, 1, Tk))
    # x ⊙ a + |x| ⊙ b = x ⊙ (a + sign(x) b), a, b from one product with [x', |x'|] each
    if live[0]:
        ab = torch.bmm(G.view(N, Tq * P, Tk), torch.cat([k3, k3.abs()], -1)).view(N, Tq, P, 2 * d)
        ab = ab.permute(2, 0, 1, 3)
        out[0] = unit_l1(_signed(ab[..., :d], ab[..., d:], qs).view(P, *q.shape), layout, B)
    if live[1]:
        # Gᵀ with the passes beside the key positions: (N, P·Tk, Tq) is a view of G
        Gt = G.permute(0, 2, 3, 1).reshape(N, P * Tk, Tq)
        ab = torch.bmm(Gt, torch.cat([qs, qs.abs()], -1)).view(N, P, Tk, 2 * d)
        ab = ab.transpose(0, 1)
        out[1] = unit_l1(_signed(ab[..., :d], ab[..., d:], k3).view(P, *k.shape), layout, B)
    return out


def _signed(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """x ⊙ a + |x| ⊙ b as x ⊙ (a + sign(x) ⊙ b), for products ``a``, ``b`` just computed: in
    place into ``a`` where it is contiguous, else into a new contiguous tensor (``a`` a view,
    e.g. one half of one product with [W, |W|]).

    Where a = b and x < 0 the sum is exactly 0, as x·a + |x|·b is (sign(x)·b is exact).
    """
    if a.is_contiguous():
        return a.addcmul_(b, torch.sign(x)).mul_(x)
    out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    return torch.addcmul(a, b, torch.sign(x), out=out).mul_(x)
