"""absLRP: Relative Absolute Magnitude LRP (Vukadin et al., ACM TIST 2024, arXiv 2412.09311).

For a node y = f(x1..xn; θ) with output relevance R_y (DESIGN.md, "absLRP"):

    g     = R_y / (|y| + ε)
    y_abs = f(|x1|..|xn|; |θ|)
    R_xi  = xi ⊙ ∂⟨y + y_abs, g⟩/∂xi          (inputs as independent leaves)
    R_xi /= Σ|R_xi|  per sample

For a linear map this is Eq. 12 of the paper up to a constant factor:
x ⊙ (Wᵀg) + |x| ⊙ (|W|ᵀg) = 2 Σ_j (x_i w_ij)⁺ g_j.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch import Tensor

from .base import Context, Layout, Relevance, Rule, mark_owned, sample_l1, vjp
from .categories import WEIGHTED_CATEGORIES
from .local import abs_input, is_masked, local_call, masked_softmax, unmasked
from .ops import MAXPOOL, MOVE, op_name
from .products import input_product, input_product_in_blocks, supports

__all__ = ["AbsRule", "AbsAttentionRule", "DerivedWeights", "abs_step", "weight_cache_bytes"]


def _divide(R: Relevance, y: Any, eps: float, nonnegative: bool = False, inplace: bool = False) -> Relevance:
    """g = R / (|y| + ε); ``nonnegative``: y ≥ 0 is known, |y| = y; ``inplace``: into R."""
    if isinstance(R, (list, tuple)):
        return [None if r is None else r / (o.abs() + eps) for r, o in zip(R, y)]
    den = (y + eps) if nonnegative else y.abs().add_(eps)
    return R.div_(den) if inplace else R / den


def _unit_l1(R: Tensor, layout: Any, batch: int) -> Tensor:
    """R rescaled in place per pass and sample to Σ|R| = 1 (all-zero stays zero).

    ``R`` must be a tensor the caller owns (a contribution it just computed).
    """
    total = sample_l1(R, layout, batch)
    return R.div_(total.clamp_min_(torch.finfo(R.dtype).tiny))


#: ops whose output is never negative (ReLU, sigmoid, softmax, ...), and ops that keep
#: a non-negative input non-negative (data movement, max and average pooling)
_NONNEGATIVE = {f"aten.{n}" for n in ("relu", "relu6", "sigmoid", "hardsigmoid", "softmax", "_softmax", "abs")}
_KEEPS_SIGN = (MOVE - {"aten.pad", "aten.constant_pad_nd"}) | MAXPOOL | {"aten.adaptive_avg_pool2d", "aten.avg_pool2d"}


def _nonnegative(node: Any) -> bool:
    """Whether a graph node's value is ≥ 0 by construction (so |x| = x), looking through moves."""
    while getattr(node, "op", None) == "call_function":
        name = op_name(node.target)
        if name in _NONNEGATIVE:
            return True
        if name not in _KEEPS_SIGN or not node.args or not isinstance(node.args[0], torch.fx.Node):
            return False
        node = node.args[0]
    return False


def abs_step(
    f: Callable[..., Any],
    f_abs: Callable[..., Any],
    xs: Sequence[Tensor],
    xs_abs: Sequence[Tensor],
    g: Relevance,
    layouts: Sequence[Any],
    batch: int,
    keep: Sequence[Tensor | None] | None = None,
) -> list[Tensor]:
    """One absLRP step given g = R_y / |y|: x ⊙ Jᵀg + |x| ⊙ J_absᵀg, unit L1 per sample.

    ``keep`` (per input, optional) marks the entries that may receive relevance:
    scores an attention mask removed (-inf) get exactly zero.
    """
    r = vjp(f, xs, g)
    ra = vjp(f_abs, xs_abs, g)
    out = []
    for i, (x, xa, a, b, layout) in enumerate(zip(xs, xs_abs, r, ra, layouts)):
        contribution = x * a + xa * b
        mask = keep[i] if keep is not None else None
        if mask is not None:
            contribution = torch.where(mask, contribution, torch.zeros((), dtype=x.dtype))
        out.append(_unit_l1(contribution, layout, batch))
    return out


class AbsRule(Rule):
    """The absLRP rule for any op (linear, conv, norms, activations, products, pooling).

    ``divide=False`` skips the division by |y| (the reference's max-pooling rule
    for VGG: ``AbsLRP(maxpool_divide=False)``).  ``weight_cache``: how much memory of
    derived weights linear and convolution layers may keep between explains (see
    :class:`~relprop.rules.AbsLRP`).
    """

    scale_free = True  # every result is rescaled to unit L1 per pass and sample

    def __init__(self, divide: bool = True, eps: float = 1e-9, weight_cache: Any = "auto") -> None:
        self.divide = divide
        self.eps = eps
        self.weight_cache = check_weight_cache(weight_cache, type(self).__name__)

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        dense = ctx.info.category in WEIGHTED_CATEGORIES
        if not dense:
            fast = diagonal_step(ctx, R, self.eps if self.divide else None)
            if fast is not None:
                return fast
        g = _divide(R, ctx.output, self.eps, _nonnegative(ctx.node), ctx.owns_relevance) if self.divide else R
        fast = self._weighted(ctx, g) if dense else closed_form(ctx, g)
        if fast is not None:
            return fast
        live = ctx.live_inputs
        xs = [ctx.inputs[i] for i in live]
        xs_abs = [abs_input(ctx, x) for x in xs]

        def f(*v: Tensor) -> Any:
            return local_call(ctx, dict(zip(live, v)))

        def f_abs(*v: Tensor) -> Any:
            return local_call(ctx, dict(zip(live, v)), absolute=True)

        layouts = [ctx.info.in_layouts[i] for i in live]
        keep = [unmasked(ctx, x) for x in xs]
        rel = abs_step(f, f_abs, xs, xs_abs, g, layouts, ctx.batch, keep)
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        for i, r in zip(live, rel):
            out[i] = r
        return out

    def _weighted(self, ctx: Context, g: Tensor) -> list[Tensor | None] | None:
        return _weighted(ctx, g, self.weight_cache)


# Closed forms of one absLRP step, x ⊙ Jᵀg + |x| ⊙ J_absᵀg, for ops whose Jacobians are
# known: the same numbers as the generic path (to rounding) without re-running the op
# on |x| or differentiating it.  They never write into the caller's relevance, and
# return None where they do not apply (the generic path then runs).  Sums of products
# are not fused (no addcmul): x·a + |x|·a must cancel to exactly 0 for x < 0, as it
# does in the generic path, or rounding noise divided by ε = 1e-9 downstream shows up.


def _result(ctx: Context, contributions: dict[int, Tensor]) -> list[Tensor | None]:
    """Per input: the (owned) contribution rescaled to unit L1 per sample, None if not live.

    Where only a scale-free rule reads the relevance (``ctx.free_scale``) the rescaling
    is left to that rule: the same numbers after its own normalization, one pass less.
    Not for float16, whose range is too small for unnormalized relevance.
    """
    out: list[Tensor | None] = [None] * len(ctx.inputs)
    for i, c in contributions.items():
        if ctx.free_scale[i] and c.dtype in (torch.float32, torch.float64):
            out[i] = mark_owned(c)
        else:
            out[i] = mark_owned(_unit_l1(c, ctx.info.in_layouts[i], ctx.batch))
    return out


def _weighted(ctx: Context, g: Tensor, weight_cache: Any = "auto") -> list[Tensor | None] | None:
    """Linear and convolution: x ⊙ Wᵀg + |x| ⊙ |W|ᵀg from backward products (Eq. 12).

    Where x ≥ 0 by construction (after a ReLU or a max pooling), x = |x| and the sum is
    x ⊙ (W + |W|)ᵀg = x ⊙ (2W⁺)ᵀg: one product instead of two.  The derived weights
    come from the graph's :class:`DerivedWeights` within ``weight_cache``'s budget.
    """
    w = ctx.args()[0][1]
    x = ctx.inputs[0]
    if _nonnegative(ctx.input_nodes[0]):
        c = _derived_product(ctx, w, _DOUBLE_POSITIVE, g, weight_cache)
        return None if c is None else _result(ctx, {0: c.mul_(x)})
    # signed x: Wᵀg and |W|ᵀg from one product with [W, |W|] (one larger GEMM is faster);
    # a linear layer whose [W, |W|] is not kept takes two, with W as it is and |W| (half the
    # memory to write at every explain; a convolution's product costs more than its weight)
    linear = op_name(ctx.op) == "aten.linear"
    both = _derived_product(ctx, w, _WITH_ABSOLUTE, g, weight_cache, kept_only=linear)
    if both is not None:
        a, b = both.chunk(2, dim=-1 if linear else 2)
    else:
        a = input_product(ctx, w, g)
        if a is None:
            return None
        b = _derived_product(ctx, w, _ABSOLUTE, g, weight_cache)
        if b is None:
            return None
    return _result(ctx, {0: (a * x).add_(b.mul_(x.abs()))})


class Derivation:
    """A weight absLRP derives from a layer's weight W: |W|, 2W⁺ or [W, |W|].

    ``copies``: how many weights the derived one holds along the input dimension
    (dimension 1 of linear and convolution weights); ``fill(w, out)`` writes it into
    ``out``.  Calling it returns a new tensor, or fills ``out`` (a block of rows).
    """

    def __init__(self, name: str, copies: int, fill: Callable[[Tensor, Tensor], Any]) -> None:
        self.name = name
        self.copies = copies
        self.fill = fill

    def __call__(self, w: Tensor, out: Tensor | None = None) -> Tensor:
        if out is None:
            out = w.new_empty(w.shape[0], self.copies * w.shape[1], *w.shape[2:])
        self.fill(w, out)
        return out

    def nbytes(self, w: Tensor) -> int:
        return self.copies * w.numel() * w.element_size()

    def __repr__(self) -> str:
        return self.name


def _fill_with_absolute(w: Tensor, out: Tensor) -> None:
    n = w.shape[1]
    out.narrow(1, 0, n).copy_(w)
    torch.abs(w, out=out.narrow(1, n, n))


def _fill_double_positive(w: Tensor, out: Tensor) -> None:
    torch.clamp_min(w, 0, out=out).mul_(2)


_ABSOLUTE = Derivation("|W|", 1, lambda w, out: torch.abs(w, out=out))
_DOUBLE_POSITIVE = Derivation("2W⁺", 1, _fill_double_positive)  # W + |W|
_WITH_ABSOLUTE = Derivation("[W, |W|]", 2, _fill_with_absolute)

#: ``weight_cache="auto"``: keep derived weights up to this share of the model's parameter
#: bytes, and up to :data:`AUTO_FLOOR` bytes whatever the model (see :class:`~relprop.rules.AbsLRP`)
AUTO_FRACTION = 1 / 8
AUTO_FLOOR = 64 << 20
#: derived weights not kept are built block by block of output features or channels of at
#: most this many bytes (in float32/float64: the blocks' sums are not rounded to less), on
#: the CPU and on other devices
BLOCK_BYTES = {"cpu": 4 << 20}
DEFAULT_BLOCK_BYTES = 64 << 20


def check_weight_cache(value: Any, owner: str = "AbsLRP") -> Any:
    """``value`` if it is a valid ``weight_cache`` option, else :class:`~relprop.RuleError`."""
    if isinstance(value, bool) or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0:
        return value
    from relprop.errors import RuleError

    raise RuleError(
        f"{owner}(weight_cache=...) must be 'auto' (the default: derived weights kept up to "
        f"max({AUTO_FLOOR >> 20} MiB, {AUTO_FRACTION:g} × the model's parameter bytes)), True (keep all), "
        f"False (keep none) or a budget in bytes (a number ≥ 0); got {value!r}"
    )


def weight_budget(value: Any, parameter_bytes: int) -> float:
    """The bytes of derived weights a ``weight_cache`` option allows (inf: no bound)."""
    if value is True:
        return math.inf
    if value is False:
        return 0
    if isinstance(value, str):  # "auto"
        return max(AUTO_FLOOR, AUTO_FRACTION * parameter_bytes)
    return float(value)


class DerivedWeights:
    """absLRP's derived weights (|W|, 2W⁺, [W, |W|]) kept for one Graph, within a budget.

    Lives in the Graph's :class:`~relprop.rules.base.RuleCache` (``ctx.cache``), so it is
    freed with the Graph and shared by all its traces.  Keyed by the weight's graph input
    (a parameter's placeholder, the same in every trace) and the derivation; only weights
    that are graph inputs are kept (a weight computed in the graph is new at every explain).
    An entry is used only while the weight is the same tensor, unchanged: the same storage,
    layout, dtype and device, and the same in-place version counter (optimizer steps bump
    it).  It holds the weight it was computed from, so that memory cannot be reused by
    another tensor; a stale entry is dropped when its weight is next seen.

    Entries are admitted first come, first kept: one that would take the total over the
    asking rule's budget is not kept (its weight is derived on the fly at every explain)
    and nothing is evicted, so a walk that needs more than the budget keeps the same
    layers every time instead of evicting each one before its next use.
    """

    def __init__(self) -> None:
        #: (placeholder name, derivation) -> (weight, version, derived weight)
        self.entries: dict[tuple[str, Derivation], tuple[Tensor, int, Tensor]] = {}
        self.nbytes = 0

    @classmethod
    def of(cls, ctx: Context) -> DerivedWeights:
        store = ctx.cache.get(cls)
        if store is None:
            store = ctx.cache[cls] = cls()
        return store

    def get(self, key: tuple[str, Derivation], w: Tensor) -> Tensor | None:
        """The derived weight kept for ``key`` if it was made from ``w`` as it is now; drops a stale one."""
        hit = self.entries.get(key)
        if hit is None:
            return None
        old, version, derived = hit  # ``old`` shares w's version counter: compare the number
        if (
            old.data_ptr() == w.data_ptr()
            and version == w._version
            and old.shape == w.shape
            and old.stride() == w.stride()
            and old.dtype == w.dtype
            and old.device == w.device
        ):
            return derived
        self.drop(key)
        return None

    def fits(self, nbytes: int, budget: float) -> bool:
        return self.nbytes + nbytes <= budget

    def put(self, key: tuple[str, Derivation], w: Tensor, derived: Tensor) -> None:
        self.drop(key)
        self.entries[key] = (w, w._version, derived)
        self.nbytes += derived.numel() * derived.element_size()

    def drop(self, key: tuple[str, Derivation]) -> None:
        hit = self.entries.pop(key, None)
        if hit is not None:
            self.nbytes -= hit[2].numel() * hit[2].element_size()

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.entries)


def _derived_product(
    ctx: Context, w: Tensor, derive: Derivation, g: Tensor, weight_cache: Any, kept_only: bool = False
) -> Tensor | None:
    """Jᵀg with ``derive(w)`` as the op's weight (:func:`input_product`); None if unsupported.

    The derived weight comes from the graph's :class:`DerivedWeights`, or is derived here
    and kept there if the budget of ``weight_cache`` allows.  Otherwise (None with
    ``kept_only``) it is dropped after the product; if larger than a block, it is built and
    multiplied block by block of output features or channels (:func:`input_product_in_blocks`:
    bounded memory, and no fresh memory for the allocator to map at every explain).
    """
    if not supports(ctx, derive.copies):  # nothing derived for a product done elsewhere
        return None
    node = ctx.node.args[1] if len(ctx.node.args) > 1 else None
    key = (node.name, derive) if isinstance(node, torch.fx.Node) and node.op == "placeholder" else None
    store = DerivedWeights.of(ctx)
    if key is not None:
        kept = store.get(key, w)
        if kept is not None:
            return input_product(ctx, kept, g, derive.copies)
    nbytes = derive.nbytes(w)
    budget = weight_budget(weight_cache, ctx.cache.parameter_bytes)
    keep = key is not None and not w.requires_grad and store.fits(nbytes, budget)
    if kept_only and not keep:
        return None
    block = BLOCK_BYTES.get(w.device.type, DEFAULT_BLOCK_BYTES)
    if not keep and nbytes > block and w.dtype in (torch.float32, torch.float64):
        out = input_product_in_blocks(ctx, w, derive, g, derive.copies, block)
        if out is not None:
            return out
    derived = derive(w)
    out = input_product(ctx, derived, g, derive.copies)
    if keep and out is not None:
        store.put(key, w, derived)
    return out


def weight_cache_bytes(graph: Any) -> int:
    """Bytes of the derived weights absLRP keeps for ``graph`` (a :class:`~relprop.Graph`)."""
    store = graph.rule_cache.get(DerivedWeights)
    return 0 if store is None else store.nbytes


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
        den = (y + eps) if _nonnegative(ctx.node) else y.abs().add_(eps)
        factors = {i: k.div_(den) for i, k in factors.items()}
    last = list(factors)[-1]  # R is no longer needed once the last product is formed
    inplace = ctx.owns_relevance and isinstance(R, Tensor)
    return _result(ctx, {i: R0.mul_(k) if inplace and i == last else R0 * k for i, k in factors.items()})


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
    """layer norm with constant statistics: J = w/σ(x), J_abs = |w|/σ(|x|) (DESIGN.md)."""
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
    if _nonnegative(ctx.input_nodes[0]):  # |x| = x: both passes route alike, 2·x ⊙ route(g)
        return _result(ctx, {0: _route(g, pool(x, *args[1:])[1], x).mul_(x).mul_(2)})
    xa = x.abs()
    c = _route(g, pool(x, *args[1:])[1], x).mul_(x)
    return _result(ctx, {0: c.add_(_route(g, pool(xa, *args[1:])[1], x).mul_(xa))})


def _route(g: Tensor, index: Tensor, x: Tensor) -> Tensor:
    """Σ of g over the pooling windows whose maximum sits at each entry of x (P, *x.shape)."""
    P = g.shape[0]
    out = g.new_zeros(P, *x.shape[:-2], x.shape[-2] * x.shape[-1])
    out.scatter_add_(-1, index.flatten(-2).expand(P, *index.shape[:-2], -1), g.flatten(-2))
    return out.reshape(P, *x.shape)


class AbsAttentionRule(Rule):
    """absLRP through ``scaled_dot_product_attention``, decomposed (DESIGN.md).

    s = (q·scale)·kᵀ (+ mask) → p = softmax(s) → o = p·v, the rule at each
    product and at the softmax; the relevance of q·scale goes to q unchanged.
    Masked-out scores receive no relevance; grouped-query attention repeats k, v.
    """

    scale_free = True

    def __init__(self, eps: float = 1e-9) -> None:
        self.eps = eps

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        fast = attention_closed_form(ctx, R, self.eps)
        if fast is not None:
            return fast
        q, k, v, mask, causal, scale, groups = attention_inputs(ctx)
        live = ctx.live
        B = ctx.batch
        layout = Layout(0) if ctx.info.out_layout is not None else None
        eps = self.eps

        def repeat(t: Tensor) -> Tensor:
            return t.repeat_interleave(groups, dim=-3) if groups > 1 else t

        with torch.no_grad():
            s = apply_mask((q * scale) @ repeat(k).transpose(-2, -1), mask, causal)
            p = masked_softmax(s, -1)
        out: list[Tensor | None] = [None] * len(ctx.inputs)

        # o = p · v
        def mm(a: Tensor, b: Tensor) -> Tensor:
            return a @ repeat(b)

        xs, xs_abs, lay = [p], [p.abs()], [layout]
        if live[2]:
            xs, xs_abs, lay = [p, v], [p.abs(), v.abs()], [layout, layout]
            rel = abs_step(mm, mm, xs, xs_abs, R / (ctx.output.abs() + eps), lay, B)
            out[2] = rel[1]
        else:
            rel = abs_step(
                lambda a: mm(a, v), lambda a: mm(a, v.abs()), xs, xs_abs, R / (ctx.output.abs() + eps), lay, B
            )
        if not (live[0] or live[1]):
            return out
        R_p = rel[0]
        # p = softmax(s): statistics constant; masked entries stay masked in the abs pass
        s_abs = torch.where(is_masked(s), s, s.abs())
        (R_s,) = abs_step(
            lambda a: masked_softmax(a, -1),
            lambda a: masked_softmax(a, -1),
            [s],
            [s_abs],
            R_p / (p.abs() + eps),
            [layout],
            B,
            [~is_masked(s)],
        )
        # s = (q·scale) · kᵀ ; the mask is a constant offset: relevance passes to the product
        qs = q * scale
        with torch.no_grad():
            prod = qs @ repeat(k).transpose(-2, -1)
        g = R_s / (prod.abs() + eps)
        R_qs, R_k = abs_step(
            lambda a, b: a @ repeat(b).transpose(-2, -1),
            lambda a, b: a @ repeat(b).transpose(-2, -1),
            [qs, k],
            [qs.abs(), k.abs()],
            g,
            [layout, layout],
            B,
        )
        if live[0]:
            out[0] = R_qs
        if live[1]:
            out[1] = R_k
        return out


def attention_closed_form(ctx: Context, R: Relevance, eps: float) -> list[Tensor | None] | None:
    """:class:`AbsAttentionRule`'s three steps with the products' Jacobians written out.

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
        out[2] = _unit_l1(v2 * (p.transpose(-2, -1) @ g), layout, B)
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
        out[0] = _unit_l1((a * qs).add_(b.mul_(qs.abs())), layout, B)
    if live[1]:
        a, b = (g.transpose(-2, -1) @ torch.cat([qs, qs.abs()], -1)).chunk(2, -1)
        out[1] = _unit_l1((a * k).add_(b.mul_(k.abs())), layout, B)
    return out


def attention_inputs(ctx: Context) -> tuple:
    """(q, k, v, mask, is_causal, scale, kv_repeat) of a scaled_dot_product_attention node."""
    args, kwargs = ctx.args()
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    q, k, v = bound["query"], bound["key"], bound["value"]
    scale = bound.get("scale")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    groups = q.shape[-3] // k.shape[-3] if q.dim() >= 3 and k.shape[-3] != q.shape[-3] else 1
    return q, k, v, bound.get("attn_mask"), bool(bound.get("is_causal", False)), scale, groups


def apply_mask(s: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """Scores with an SDPA mask applied: boolean masks keep True, float masks add."""
    if causal:
        L, S = s.shape[-2], s.shape[-1]
        keep = torch.ones(L, S, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            s = s.masked_fill(~mask, float("-inf"))
        else:
            s = s + mask
    return s
