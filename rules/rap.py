"""RAP: Relative Attributing Propagation (Nam, Gur, Choi, Wolf, Lee, AAAI 2020, arXiv 1904.00605).

RAP explains a ReLU network's decision by the *relative influence* of each unit on the layer
above, and separates relevant (positive) from irrelevant (negative) relevance.  The paper's
steps, with z_ij = x_i w_ij the contribution of input i to output unit j (bias excluded),
z⁺ / z⁻ its positive / negative part, and per unit j

    P_j = Σ_i z⁺_ij,    N_j = Σ_i |z⁻_ij|,    T_j = P_j + N_j = Σ_i |z_ij|

(docs/semantics.md §RAP states them with the rule set):

1. **The output layer** (the weighted layer whose output is the model's output,
   :class:`RAPOutputRule`): the contributions to the explained output, c_i = Σ_j z_ij R_j
   (one target unit t started at its logit: c_i = y_t z_it), become relative (absolute)
   influence, R_i = |c_i| / Σ_i |c_i| · Σ_j R_j.  The authors first apply the z-rule with the
   bias shared over the positive and the negative contributions in proportion; for one unit
   that multiplies every contribution by the same factor y_t / (y_t − b_t), which the
   normalisation removes, so R_i = |z_it| / Σ_i |z_it| · y_t: every unit with a large
   contribution, of either sign, becomes relevant in proportion to its magnitude.  For several
   units (the contrastive pass) the contributions are weighted by R_j, as the authors' code
   weights them by its target vector, so that no logit near zero is divided by.
2. **Hidden weighted layers** (:class:`RAPRule`): positive relevance R⁺_j = max(R_j, 0) goes
   to the positive contributions in proportion, z⁺_ij / P_j, and also to the negative ones by
   their share of the total magnitude, |z⁻_ij| / T_j; negative relevance R⁻_j = min(R_j, 0)
   goes to the negative contributions, |z⁻_ij| / N_j + |z⁻_ij| / T_j ("separating relevant
   and irrelevant attributions").  Summed over i this hands down more than R_j; the
   difference is *uncertain relevance*, and the last step shifts it away uniformly over the
   units that received relevance (the *uncertain shift*):
   R_i ← R_i − (Σ_i R_i − Σ_j R_j) / #{i : R_i ≠ 0}, so that each layer conserves relevance.
3. **The input layer** (:class:`RAPInputRule`): the z^B-rule with the input's own bounds,
   L = min x and H = max x per sample.

Everything else passes relevance as the authors' layers do: ReLU and batch norm by the
identity, sums, average and max pooling by the z-rule (in proportion to the addends or
inputs, zero where the output is zero).  Numbers follow the authors' public code
(github.com/wjNam/Relative_Attributing_Propagation, ``modules/layers.py``): their
``first_prop`` + ``redistribute`` (step 1), ``pos_prop`` + ``shift_rel`` (step 2) and
``final_backward`` (step 3).  Their fully connected layers send R⁻ along the same paths as
R⁺ (z⁺_ij / P_j + |z⁻_ij| / T_j); :class:`RAPRule` does that with ``separate=False``, which
:class:`~relprop.rules.RAP` uses on dense layers, as their code does.  Where their code
assumes non-negative inputs (after a ReLU) relprop takes the contributions by their sign,
whatever the sign of x, and shifts once per layer (docs/semantics.md §RAP).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor

from .base import Context, Layout, Relevance
from .categories import Category
from .lrp import ZBoxRule, _first, _Layer, _Weighted
from .norms import NormMap, norm_map
from .ops import MOVE, op_name

__all__ = ["RAPInputRule", "RAPOutputRule", "RAPRule", "feeds_output"]


def feeds_output(node: Any) -> bool:
    """Whether a graph node's value reaches the graph's output through data movement only."""
    seen: set[Any] = set()
    todo = [node]
    while todo:
        for user in todo.pop().users:
            if user.op == "output":
                return True
            moves = user.op == "call_function" and (user.target is operator.getitem or op_name(user.target) in MOVE)
            if moves and user not in seen:
                seen.add(user)
                todo.append(user)
    return False


def _safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """a / b, and 0 where b = 0 (the authors' ``safe_divide``)."""
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    return torch.where(b == 0, zero, a / torch.where(b == 0, torch.ones_like(b), b))


def sample_totals(t: Tensor, layout: Layout | None, batch: int) -> Tensor:
    """Σ of ``t`` (P, *shape) per pass and sample: (P, batch), or (P, 1) without a batch layout."""
    P = t.shape[0]
    if layout is None or batch == 1 or t.dim() == 1:
        return t.reshape(P, -1).sum(1, keepdim=True)
    d = 1 + layout.dim
    size = t.shape[d]
    moved = t.movedim(d, -1)
    if size == batch:
        return moved.reshape(P, -1, batch).sum(1)
    inner = size // batch if layout.inner is None else layout.inner
    return moved.reshape(P, -1, size // (batch * inner), batch, inner).sum(dim=(1, 2, 4))


def spread(totals: Tensor, like: Tensor, layout: Layout | None, batch: int) -> Tensor:
    """Per-sample values (P, batch) or (P, 1) shaped to broadcast against ``like`` (P, *shape)."""
    P = like.shape[0]
    if totals.shape[1] == 1 or layout is None or like.dim() == 1:
        return totals[:, :1].reshape(P, *([1] * (like.dim() - 1)))
    d = 1 + layout.dim
    size = like.shape[d]
    if size != batch:  # packed: entry e belongs to sample (e // inner) % batch
        inner = size // batch if layout.inner is None else layout.inner
        totals = totals[:, (torch.arange(size, device=like.device) // inner) % batch]
    shape = [1] * like.dim()
    shape[0], shape[d] = P, size
    return totals.reshape(shape)


def _layer(ctx: Context) -> _Layer | NormMap | None:
    return norm_map(ctx) if ctx.info.category == Category.NORM else _Layer(ctx)


def _layouts(ctx: Context, index: int) -> tuple[Any, Any]:
    layouts = ctx.info.in_layouts
    return (layouts[index] if index < len(layouts) else None), ctx.info.out_layout


class RAPRule(_Weighted):
    """RAP's propagation through a hidden weighted layer (step 2 of :mod:`relprop.rules.rap`).

    With P_j, N_j, T_j the sums of positive contributions, of negative contributions'
    magnitudes and of both (bias excluded), R⁺ = max(R, 0), R⁻ = min(R, 0):

        R_i = Σ_j z⁺_ij R⁺_j / P_j + |z⁻_ij| R⁺_j / T_j + |z⁻_ij| R⁻_j / N_j + |z⁻_ij| R⁻_j / T_j
        R_i ← R_i − (Σ_i R_i − Σ_j R_j) / #{i : R_i ≠ 0}      (on the R_i ≠ 0; per sample)

    (a quotient with a zero denominator is zero).  ``separate=False`` sends R⁻ along the
    paths of R⁺, R_i = Σ_j z⁺_ij R_j / P_j + |z⁻_ij| R_j / T_j, as the authors' fully
    connected layers do.  The shift (the paper's uncertain relevance) makes every layer
    conserve relevance per sample: Σ_i R_i = Σ_j R_j.
    """

    def __init__(self, separate: bool = True) -> None:
        super().__init__(0.0)
        self.separate = separate

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        layer = _layer(ctx)
        if layer is None:
            return super().relevance(ctx, R)
        R0 = _first(R)
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        rel = self.layer_relevance(layer, R0)
        into, from_ = _layouts(ctx, layer.index)
        out[layer.index] = _shift(rel, R0, into, from_, ctx.batch)
        return out

    def layer_relevance(self, layer: _Layer | NormMap, R: Tensor) -> Tensor:
        """R_i before the shift: the relative-influence split of R over the contributions."""
        x, w = layer.x, layer.w
        xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
        signed = bool((x < 0).any())
        with torch.no_grad():
            P = layer.f(xp, wp) + (layer.f(xn, wn) if signed else 0)
            N = -(layer.f(xp, wn) + (layer.f(xn, wp) if signed else 0))
        T = P + N
        if self.separate:
            Rp, Rn = R.clamp(min=0), R.clamp(max=0)
            g_pos = _safe_divide(Rp, P)
            g_neg = _safe_divide(Rp, T) + _safe_divide(Rn, N) + _safe_divide(Rn, T)
        else:
            g_pos, g_neg = _safe_divide(R, P), _safe_divide(R, T)
        # Σ_j z⁺_ij g_j and Σ_j |z⁻_ij| h_j through transposed products with W⁺ and W⁻
        rel = xp * layer.jt(wp, g_pos) - xp * layer.jt(wn, g_neg)
        if signed:
            rel = rel + xn * layer.jt(wn, g_pos) - xn * layer.jt(wp, g_neg)
        return rel


def _shift(rel: Tensor, R: Tensor, into: Any, from_: Any, batch: int) -> Tensor:
    """The uncertain shift: (Σ rel − Σ R) / #{rel ≠ 0} taken off every nonzero entry, per sample."""
    nonzero = rel != 0
    excess = sample_totals(rel, into, batch) - sample_totals(R, from_, batch)
    count = sample_totals(nonzero.to(rel.dtype), into, batch)
    step = _safe_divide(excess, count)
    return rel - spread(step, rel, into, batch) * nonzero


class RAPOutputRule(_Weighted):
    """RAP's first step, at the output layer: relevance as relative (absolute) influence.

        c_i = x_i Σ_j w_ij R_j = Σ_j z_ij R_j,     R_i = |c_i| / Σ_i |c_i| · Σ_j R_j   (per sample)

    For one target unit t (R = y_t at t) this is the authors' z-rule with the bias shared over
    the contributions followed by their normalisation: R_i = |z_it| / Σ_i |z_it| · y_t.
    Conserves relevance (Σ_i R_i = Σ_j R_j); the sign of the total is kept, the split is
    by magnitude only.
    """

    def __init__(self) -> None:
        super().__init__(0.0)

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        layer = _layer(ctx)
        if layer is None:
            return super().relevance(ctx, R)
        R0 = _first(R)
        into, from_ = _layouts(ctx, layer.index)
        c = (layer.x * layer.jt(layer.w, R0)).abs()
        share = _safe_divide(
            spread(sample_totals(R0, from_, ctx.batch), c, into, ctx.batch),
            spread(sample_totals(c, into, ctx.batch), c, into, ctx.batch),
        )
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        out[layer.index] = c * share
        return out


class RAPInputRule(_Weighted):
    """RAP's last step, at the input layer: the z^B-rule (Montavon et al. 2017) with the bounds
    L = min x, H = max x of each sample's input, as the authors' code takes them:

        R_i = Σ_j (x_i w_ij − L w⁺_ij − H w⁻_ij) / Σ_i (x_i w_ij − L w⁺_ij − H w⁻_ij) · R_j
    """

    def __init__(self, epsilon: float = 1e-9) -> None:
        super().__init__(epsilon)

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        layer = _layer(ctx)
        if layer is None:
            return super().relevance(ctx, R)
        x = layer.x
        into, _ = _layouts(ctx, layer.index)
        if into is not None and ctx.batch > 1 and x.shape[into.dim] == ctx.batch:
            flat = x.movedim(into.dim, 0).reshape(ctx.batch, -1)
            shape = [1] * x.dim()
            shape[into.dim] = ctx.batch
            low, high = flat.amin(1).reshape(shape), flat.amax(1).reshape(shape)
        else:
            low, high = x.amin(), x.amax()
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        out[layer.index] = ZBoxRule(low, high, self.epsilon).layer_relevance(layer, _first(R))
        return out
