"""The classic LRP rules (Bach et al. 2015; Montavon et al. 2019, "Layer-Wise Relevance
Propagation: An Overview") and the rules that move relevance through non-weighted ops.

Weighted rules (:class:`ZPlusRule`, :class:`AlphaBetaRule`, :class:`GammaRule`,
:class:`FlatRule`, :class:`WSquareRule`, :class:`ZBoxRule`) apply to ops with a
weight: linear, convolution, and a matmul with a constant operand.  They all
work through the op itself with modified weights, so one implementation covers
every such op: for z = f(x; W), Jᵀg is the vector-Jacobian product of f.
:class:`Pass` (the identity and gradient rule every rule set uses) lives in
:mod:`~relprop.rules.base` and is importable from here too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .attention import attention_inputs, masked_softmax, unrepeat_kv
from .base import Context, NodeInfo, Pass, Relevance, Rule, epsilon_relevance, stabilize, stable_ratio, vjp
from .categories import WEIGHTED_CATEGORIES, Category
from .gates import routing_weights, sigmoid_gate, softmax_weights
from .norms import CENTERING_NORMS, NormMap, norm_map
from .ops import BIASED_PRODUCTS, is_weighted, op_name, weighted_args
from .products import layer_product

__all__ = [
    "Pass",
    "EpsilonRule",
    "ZPlusRule",
    "AlphaBetaRule",
    "GammaRule",
    "FlatRule",
    "WSquareRule",
    "ZBoxRule",
    "BilinearRule",
    "AttentionValueRule",
]


def _plain_add(ctx: Context, R: Relevance) -> bool:
    """``a + b`` without ``alpha`` whose live inputs have the output's shape and dtype."""
    if op_name(ctx.op) != "aten.add" or not isinstance(R, Tensor):
        return False
    args, kwargs = ctx.args()
    y = ctx.output
    live = [ctx.inputs[i] for i in ctx.live_inputs]
    return not kwargs and len(args) == 2 and all(x.shape == y.shape and x.dtype == y.dtype for x in live)


class EpsilonRule(Rule):
    """LRP-ε: R_x = x ⊙ Jᵀ(R / (y + ε sign(y))) (Bach et al. 2015, Eq. 58).

    For a linear op with no bias and ε → 0 it conserves relevance; on sums and
    average pooling it distributes relevance in proportion to the contributions.
    On layer and group norm it applies to the linear map left when the standard
    deviation is held constant (:mod:`relprop.rules.norms`).

    Args:
        epsilon: ε, added with the sign of y to the denominator.
    """

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = epsilon

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        live = ctx.live_inputs
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        norm = norm_map(ctx) if ctx.info.category == Category.NORM else None
        if norm is not None:
            R0, y = _first(R), _first(ctx.output)
            out[0] = norm.x * norm.jt_of_a(stable_ratio(R0, y, self.epsilon))
            return out
        if ctx.info.category in WEIGHTED_CATEGORIES:
            layer = _Layer(ctx)
            product = layer_product(ctx, layer.index, layer.w, stable_ratio(R, ctx.output, self.epsilon))
            if product is not None:  # Wᵀ(R / z) from one transposed product, no second forward
                out[layer.index] = layer.x * product
                return out
        if _plain_add(ctx, R):  # J = 1 for each addend: x ⊙ (R / stab(y)), no autograd
            g = stable_ratio(R, ctx.output, self.epsilon)
            for i in live:
                out[i] = ctx.inputs[i] * g
            return out
        for i, r in zip(live, epsilon_relevance(ctx, R, live, self.epsilon)):
            out[i] = r
        return out


def _first(R: Relevance) -> Any:
    """The relevance (or value) of a node's first output."""
    return R[0] if isinstance(R, (list, tuple)) else R


def weighted_layer(info: NodeInfo) -> bool:
    """Whether a node is a linear map a weight rule applies to: a weighted op, or a layer or
    group norm with its standard deviation held constant (:mod:`relprop.rules.norms`)."""
    if info.category in WEIGHTED_CATEGORIES:
        return True
    return info.category == Category.NORM and op_name(info.node.target) in CENTERING_NORMS and info.live[:1] == [True]


class _Weighted(Rule):
    """Base of the rules that rewrite the weights of a weighted op (or of a norm's linear map)."""

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.epsilon = epsilon

    def check(self, info: NodeInfo) -> None:
        from relprop.errors import RuleError

        if not weighted_layer(info):
            raise RuleError(
                f"{type(self).__name__} applies to weighted ops (linear, convolution, matmul with a "
                f"constant operand, layer and group norm), but node '{info.node.name}' is "
                f"{op_name(info.node.target)} (in module '{info.module_path}'); bind it to a weighted "
                "op or use EpsilonRule/Pass."
            )

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        layer = norm_map(ctx) if ctx.info.category == Category.NORM else _Layer(ctx)
        if layer is None:
            from relprop.errors import RuleError

            raise RuleError(f"{type(self).__name__} cannot read node '{ctx.node.name}' as a linear map")
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        out[layer.index] = self.layer_relevance(layer, _first(R))
        return out

    def layer_relevance(self, layer: _Layer | NormMap, R: Tensor) -> Tensor:
        raise NotImplementedError


class _Layer:
    """A weighted op seen as z = f(x; W, b) with x the relevance-carrying input."""

    def __init__(self, ctx: Context) -> None:
        args, _ = ctx.args()
        self.ctx = ctx
        self.index = ctx.live_inputs[0]
        self.x = ctx.inputs[self.index]
        if op_name(ctx.op) in BIASED_PRODUCTS:  # addmm/baddbmm(bias, x, W) or (bias, W, x)
            self.w = args[2] if args[1] is self.x else args[1]
            self.b = args[0]
        elif is_weighted(ctx.op):  # positions from weighted_args
            _, iw, ib = weighted_args(ctx.op)
            self.w, self.b = args[iw], (args[ib] if ib is not None and len(args) > ib else None)
        else:  # matmul with one constant factor, either one (x·W or W·x)
            self.w = args[1] if args[0] is self.x else args[0]
            self.b = None

    def f(self, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        """The op on input x with weight w and bias b (None: no bias)."""
        old_w, old_b = self.w, self.b

        def transform(pos: int, value: Any) -> Any:
            if value is old_w:
                return w
            if old_b is not None and value is old_b:
                return b if b is not None else torch.zeros_like(old_b)
            return value

        return self.ctx.call({self.index: x}, transform)

    def jt(self, w: Tensor, g: Tensor) -> Tensor:
        """Jᵀg of x ↦ f(x; w), per pass: (P, *x.shape)."""
        product = layer_product(self.ctx, self.index, w, g)
        if product is not None:
            return product
        (r,) = vjp(lambda v: self.f(v, w), [self.x], g)
        return r


class ZPlusRule(_Weighted):
    """LRP-z⁺: only positive contributions x_i w_ij > 0 (α1β0; Montavon 2019, Eq. 5).

    R_i = Σ_j (x_i w_ij)⁺ / (Σ_i (x_i w_ij)⁺ + b_j⁺) R_j: a positive bias is a positive
    contribution of a constant input and absorbs its share (Bach et al. 2015, Eq. 60; as Zennit).
    ``bias=False`` leaves the bias out (as Chefer et al.'s and the absLRP authors' code do).

    Args:
        epsilon: the stabiliser ε added (with the sign of the denominator) to every denominator.
        bias: count a positive bias as a contribution (False leaves the bias out).
    """

    def __init__(self, epsilon: float = 1e-9, bias: bool = True) -> None:
        super().__init__(epsilon)
        self.bias = bias

    def layer_relevance(self, layer: _Layer | NormMap, R: Tensor) -> Tensor:
        return _alpha_beta(layer, R, 1.0, 0.0, self.epsilon, self.bias)


class AlphaBetaRule(_Weighted):
    """LRP-αβ (Bach et al. 2015): α·positive − β·negative contributions, α − β = 1.

    R_i = Σ_j (α (x_i w_ij)⁺ / z⁺_j − β (x_i w_ij)⁻ / z⁻_j) R_j with z⁺_j = Σ_i (x_i w_ij)⁺ + b_j⁺
    and z⁻_j = Σ_i (x_i w_ij)⁻ + b_j⁻: the bias counts as the contribution of a constant input
    of its sign and absorbs its share (Bach et al. 2015, Eq. 60; Zennit computes the same).
    Without biases it conserves relevance only at units with contributions of both signs: a
    unit with no negative (positive) contribution passes on α·R_j (−β·R_j).  ``bias=False``
    leaves the bias out of z⁺ and z⁻ (as Chefer et al.'s and the absLRP authors' code do).

    Args:
        alpha: the weight α of the positive contributions.
        beta: the weight β of the negative contributions (α − β = 1).
        epsilon: the stabiliser ε added (with the sign of the denominator) to every denominator.
        bias: count the bias as a contribution of its sign (False leaves it out).

    Raises:
        RuleError: α − β ≠ 1.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, epsilon: float = 1e-9, bias: bool = True) -> None:
        from relprop.errors import RuleError

        if abs(alpha - beta - 1.0) > 1e-12:
            raise RuleError(f"AlphaBeta needs alpha - beta = 1 to conserve relevance; got alpha={alpha}, beta={beta}")
        super().__init__(epsilon)
        self.alpha, self.beta = alpha, beta
        self.bias = bias

    def layer_relevance(self, layer: _Layer | NormMap, R: Tensor) -> Tensor:
        return _alpha_beta(layer, R, self.alpha, self.beta, self.epsilon, self.bias)


def _alpha_beta(layer: _Layer | NormMap, R: Tensor, alpha: float, beta: float, eps: float, bias: bool) -> Tensor:
    x, w, b = layer.x, layer.w, (layer.b if bias else None)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    # x ≥ 0 (after a ReLU): every product with x⁻ = 0 is zero, and is left out (half the products)
    signed = bool((x < 0).any())
    with torch.no_grad():  # the bias's positive part joins z⁺, its negative part z⁻
        zp = layer.f(xp, wp, None if b is None else b.clamp(min=0))
        if signed:
            zp = zp + layer.f(xn, wn)
        zn = None
        if beta:
            zn = layer.f(xp, wn, None if b is None else b.clamp(max=0))
            if signed:
                zn = zn + layer.f(xn, wp)
    gp = R / (zp + eps)
    rel = xp * layer.jt(wp, gp)
    if signed:
        rel = rel + xn * layer.jt(wn, gp)
    rel = alpha * rel
    if beta:
        assert zn is not None
        gn = R / (zn - eps)
        neg = xp * layer.jt(wn, gn)
        if signed:
            neg = neg + xn * layer.jt(wp, gn)
        rel = rel - beta * neg
    return rel


class GammaRule(_Weighted):
    """LRP-γ, generalized to signed inputs (Montavon 2019, Eq. 7; Andéol et al. 2021).

    Each contribution z_ij = x_i w_ij is reinforced where it has the sign of its unit's
    output z_j: for z_j > 0, R_i = Σ_j (z_ij + γ z_ij⁺) / Σ_i (z_ij + γ z_ij⁺) R_j, i.e. weights
    W + γW⁺ on x⁺ and W + γW⁻ on x⁻ (bias b + γb⁺); for z_j < 0 the same with the roles of
    the signs swapped.  The denominators keep the sign of z_j and are at least |z_j|, so
    relevance cannot blow up on signed inputs (transformers).  For non-negative inputs
    and positive outputs this is the original rule (weights W + γW⁺); Zennit 0.5's
    ``Gamma`` computes the same.

    Args:
        gamma: γ, how much contributions of the output's sign are reinforced.
        epsilon: the stabiliser ε added (with the sign of the denominator) to every denominator.
    """

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6) -> None:
        super().__init__(epsilon)
        self.gamma = gamma

    def layer_relevance(self, layer: _Layer | NormMap, R: Tensor) -> Tensor:
        x, w, b, gamma = layer.x, layer.w, layer.b, self.gamma
        up, down = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
        b_up = None if b is None else b + gamma * b.clamp(min=0)
        b_down = None if b is None else b + gamma * b.clamp(max=0)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        signed = bool((x < 0).any())
        zero = torch.zeros((), dtype=R.dtype, device=R.device)
        with torch.no_grad():
            z = layer.f(x, w, b)
            z_up = layer.f(xp, up, b_up) + (layer.f(xn, down) if signed else 0)
            z_down = layer.f(xp, down, b_down) + (layer.f(xn, up) if signed else 0)
        g_up = torch.where(z > 0, R / stabilize(z_up, self.epsilon), zero)
        g_down = torch.where(z < 0, R / stabilize(z_down, self.epsilon), zero)
        rel = xp * (layer.jt(up, g_up) + layer.jt(down, g_down))
        if signed:
            rel = rel + xn * (layer.jt(down, g_up) + layer.jt(up, g_down))
        return rel


class FlatRule(_Weighted):
    """Flat rule: relevance spread uniformly over each output's receptive field.

    Args:
        epsilon: the stabiliser ε added (with the sign of the denominator) to every denominator.
    """

    def layer_relevance(self, layer: _Layer | NormMap, R: Tensor) -> Tensor:
        ones_x, ones_w = torch.ones_like(layer.x), torch.ones_like(layer.w)
        with torch.no_grad():
            z = layer.f(ones_x, ones_w)
        return layer.jt(ones_w, R / stabilize(z, self.epsilon))


class WSquareRule(_Weighted):
    """w²-rule (Montavon et al. 2017): R_i = Σ_j w_ij² / Σ_i w_ij² R_j.

    Args:
        epsilon: the stabiliser ε added (with the sign of the denominator) to every denominator.
    """

    def layer_relevance(self, layer: _Layer | NormMap, R: Tensor) -> Tensor:
        w2 = layer.w.pow(2)
        with torch.no_grad():
            z = layer.f(torch.ones_like(layer.x), w2)
        return layer.jt(w2, R / stabilize(z, self.epsilon))


class ZBoxRule(_Weighted):
    """z^B-rule for inputs bounded in [low, high] (Montavon et al. 2017, Eq. 8 of the overview).

    ``low`` and ``high`` are numbers or tensors that broadcast against one input
    sample (e.g. per-channel bounds of a normalized image, shaped (C, 1, 1)).

    Args:
        low: the lowest input value (a number or a tensor broadcasting against one sample).
        high: the highest input value.
        epsilon: the stabiliser ε added (with the sign of the denominator) to every denominator.
    """

    def __init__(self, low: float | Tensor, high: float | Tensor, epsilon: float = 1e-9) -> None:
        super().__init__(epsilon)
        self.low, self.high = low, high

    def layer_relevance(self, layer: _Layer | NormMap, R: Tensor) -> Tensor:
        x, w = layer.x, layer.w
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        with torch.no_grad():
            z = layer.f(x, w) - layer.f(low, wp) - layer.f(high, wn)
        g = R / stabilize(z, self.epsilon)
        return x * layer.jt(w, g) - low * layer.jt(wp, g) - high * layer.jt(wn, g)


class BilinearRule(Rule):
    """A product of two relevance-carrying tensors (attention scores, gating).

    Each operand receives an equal share, by the ε-rule (AttnLRP's uniform rule,
    Achtibat et al. 2024, Eq. 7).  With ``hold_softmax`` (the default) an operand that
    is softmax weights (attention probabilities) is held constant instead and the
    other receives all relevance (CP-LRP, Ali et al. 2022, "XAI for Transformers").
    With ``hold_gates`` an operand that is a sigmoid gate (an LSTM's or GRU's gates, a
    squeeze-and-excitation gate) is held constant and the signal receives all relevance
    ("signal-take-all", Arras et al. 2017; docs/semantics.md §Recurrent networks).
    A router's top-k weights (mixture of experts) are always held constant
    (:mod:`relprop.rules.gates`).  Where every operand would be held, none is.  All
    conserve relevance.

    Args:
        epsilon: the stabiliser ε added (with the sign of the denominator) to every denominator.
        hold_softmax: hold an operand that is softmax weights constant (CP-LRP).
        hold_gates: hold an operand that is a sigmoid gate constant (signal-take-all).
    """

    def __init__(self, epsilon: float = 1e-9, hold_softmax: bool = True, hold_gates: bool = False) -> None:
        self.epsilon = epsilon
        self.hold_softmax = hold_softmax
        self.hold_gates = hold_gates

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        live = ctx.live_inputs
        keep = [i for i in live if not self._held(ctx.input_nodes[i])]
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        if not keep:
            keep = live
        if len(keep) == 1 and len(live) > 1 and ctx.info.category == Category.MUL:
            # the others held: an elementwise scaling of the kept operand by constants, whose
            # relevance is R itself where no broadcast intervenes (as for a scale, §Products)
            first = R[0] if isinstance(R, (list, tuple)) else R
            if first is not None and first.shape[1:] == ctx.inputs[keep[0]].shape:
                out[keep[0]] = first
                return out
        share = 1.0 / len(keep)
        for i, r in zip(keep, epsilon_relevance(ctx, R, keep, self.epsilon, share)):
            out[i] = r
        return out

    def _held(self, node: Any) -> bool:
        return (
            routing_weights(node)
            or (self.hold_softmax and softmax_weights(node))
            or (self.hold_gates and sigmoid_gate(node))
        )

    def __repr__(self) -> str:
        parts = [f"epsilon={self.epsilon!r}", f"hold_softmax={self.hold_softmax!r}"]
        if self.hold_gates:
            parts.append("hold_gates=True")
        return f"BilinearRule({', '.join(parts)})"


class AttentionValueRule(Rule):
    """``scaled_dot_product_attention`` with the attention probabilities held constant.

    All relevance goes to the values by the ε-rule on o = p·v; queries and keys
    receive none (the "AH-rule" of Ali et al. 2022).  Conserves relevance.

    Args:
        epsilon: the stabiliser ε added (with the sign of the denominator) to every denominator.
    """

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.epsilon = epsilon

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        att = attention_inputs(ctx)
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        if not ctx.live[2]:
            return out
        with torch.no_grad():
            p = masked_softmax(att.scores(), -1)
        g = R / stabilize(ctx.output, self.epsilon)
        r = unrepeat_kv(torch.matmul(p.mT, g), att.groups)  # Jᵀg of v ↦ p·v: one product, no second forward
        out[2] = att.v * r
        return out
