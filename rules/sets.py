"""Rule sets: which rule each kind of op gets.

A rule set maps op categories (see :mod:`relprop.rules.ops`) to rule objects.
:class:`AbsLRP` is relprop's default.  The classic LRP sets share one layout
(:class:`LRP`): a *layer rule* for weighted ops, with optional replacements for
dense layers, convolutions and the first weighted layer, and conservative rules
for everything else.  Composites are built by naming the slots::

    Epsilon(0.25, conv=AlphaBeta(1, 0), first=ZBox(-3, 3))   # "ε dense, αβ conv, z^B input"
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .abslrp import AbsAttentionRule, AbsRule, check_weight_cache
from .attnlrp import AttnLRPAttentionRule, SoftmaxRule
from .base import NodeInfo, Rule
from .categories import WEIGHTED_CATEGORIES, Category
from .lrp import (
    AlphaBetaRule,
    AttentionValueRule,
    BilinearRule,
    EpsilonRule,
    FlatRule,
    GammaRule,
    Pass,
    WSquareRule,
    ZBoxRule,
    ZPlusRule,
    weighted_layer,
)
from .norms import eval_batch_norm
from .rap import RAPInputRule, RAPOutputRule, RAPRule, feeds_output
from .taylor import TaylorRule

__all__ = [
    "RuleSet",
    "AbsLRP",
    "AttnLRP",
    "LRP",
    "Epsilon",
    "ZPlus",
    "AlphaBeta",
    "Gamma",
    "Flat",
    "WSquare",
    "ZBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "RAP",
    "as_rule",
]


class RuleSet:
    """Base class: ``rule_for(info)`` returns the rule for a node, or None when uncovered.

    ``contrastive`` is the default of ``explain(..., contrastive=None)``;
    ``start`` says how the output relevance starts for one target: ``"onehot"``
    (1 at the target) or ``"value"`` (the target's output value, classic LRP).
    """

    contrastive: bool = False
    start: str = "value"
    #: fold per-channel affine maps (eval batch norm, ...) into the weighted layer before
    #: them at binding (:mod:`relprop.canonize`, docs/semantics.md §Canonization)
    canonize: bool = False

    def rule_for(self, info: NodeInfo) -> Rule | None:
        raise NotImplementedError

    @property
    def layer(self) -> Rule:
        """The rule this set applies to weighted layers (used when a set is an override)."""
        raise NotImplementedError

    def suggestion(self) -> str:
        """Source text of a rule that would cover an unknown computing op."""
        return "relprop.rules.Pass()"

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


_MOVES = {Category.MOVE, Category.SPLIT, Category.MASK, Category.GETITEM}
#: categories the LRP sets pass by the identity (or the gradient, for pooling selects)
_ELEMENTWISE_PASS = {
    Category.POOL_SELECT,
    Category.ACTIVATION,
    Category.NORM,
    Category.SOFTMAX,
    Category.MAXPOOL,
    Category.SCALE,
    Category.RESCALE,
}


class AbsLRP(RuleSet):
    """absLRP (Vukadin et al. 2024): the absolute-magnitude rule at every computing op.

    ``maxpool_divide=False`` gives the reference's VGG variant (no division by |y|
    at max pooling).  Contrastive by default: the explanation is the positive
    pass (from the target) minus the negative pass (from all other classes).

    ``weight_cache``: linear and convolution layers multiply by a weight derived from
    theirs — 2·W⁺ where the layer's input is non-negative, else [W, |W|] (one product
    for Wᵀg and |W|ᵀg) — which a Graph may keep between explains instead of deriving
    it again.  Keeping all of them costs about twice the weights' memory; deriving them
    at every explain costs little (on a 2-core CPU, keeping none was within a few per
    cent of keeping all, the noise of the measurement, on ViT-B/16, BERT-base, ResNet-50,
    VGG16 and a 153M-parameter Llama; ``benchmarks/speed.py``).

    - ``"auto"`` (default): keep derived weights while their total stays within
      max(64 MiB, ⅛ of the model's parameter bytes): all of a small model's, a small
      share of a large one's (a language model is not held twice);
    - ``True``: keep all;
    - ``False``: keep none;
    - a number: a budget in bytes.

    Layers are kept first come (in walk order), and none is evicted.  The others derive
    their weight at every explain and drop it after their product (a linear layer with a
    signed input derives only |W| and takes Wᵀg and |W|ᵀg as two products); one larger
    than a few MiB is built and multiplied block by block of output features or channels,
    so that not even one layer's copy exists at once.  The numbers are the same either way
    up to rounding (the order of summation differs).  The kept weights belong to the Graph
    (``graph.rule_cache``), are shared by all its traces, and are freed with it or by
    ``graph.rule_cache.clear()``; a weight changed in place or replaced is derived again.

    Args:
        maxpool_divide: divide by |y| at max pooling; False gives the authors' VGG variant.
        contrastive: explain the target pass minus the pass from all other classes (the
            default of ``explain(..., contrastive=None)``).
        eps: the stabiliser added to |y| in the division.
        weight_cache: how many derived weights a Graph keeps: ``"auto"``, True, False or a
            budget in bytes (above).

    Raises:
        RuleError: ``weight_cache`` is not ``"auto"``, a bool or a byte budget.
    """

    start = "onehot"

    def __init__(
        self, maxpool_divide: bool = True, contrastive: bool = True, eps: float = 1e-9, weight_cache: Any = "auto"
    ):
        self.maxpool_divide = maxpool_divide
        self.contrastive = contrastive
        self.eps = eps
        self.weight_cache = check_weight_cache(weight_cache)
        self._rule = AbsRule(eps=eps, weight_cache=weight_cache)
        self._maxpool = AbsRule(divide=maxpool_divide, eps=eps, weight_cache=weight_cache)
        self._attention = AbsAttentionRule(eps=eps)
        self._pass = Pass()

    @property
    def layer(self) -> Rule:
        return self._rule

    def rule_for(self, info: NodeInfo) -> Rule | None:
        c = info.category
        if c in _MOVES or c == Category.RESCALE:
            return self._pass
        if c == Category.MAXPOOL:
            return self._maxpool
        if c == Category.ATTENTION:
            return self._attention
        if c is None or c == Category.EMBEDDING:
            return None
        return self._rule

    def suggestion(self) -> str:
        return "relprop.rules.AbsRule()"


def as_rule(value: Any) -> Rule:
    """Make a rule of what the user gives.

    Args:
        value: a [`Rule`][relprop.rules.Rule], a rule set (its layer rule), a rule class that
            takes no arguments, or a function ``(ctx, R) -> list of input relevances``.

    Returns:
        The rule.

    Raises:
        RuleError: ``value`` is none of these, or a rule class that needs arguments.
    """
    from .base import FunctionRule

    if isinstance(value, Rule):
        return value
    if isinstance(value, RuleSet):
        return value.layer
    if isinstance(value, type) and issubclass(value, (Rule, RuleSet)):
        try:
            made = value()
        except TypeError as err:
            from relprop.errors import RuleError

            raise RuleError(
                f"{value.__name__} needs arguments ({err}); pass an instance, e.g. {value.__name__}(...)"
            ) from None
        return made if isinstance(made, Rule) else made.layer
    if callable(value):
        return FunctionRule(value)
    from relprop.errors import RuleError

    raise RuleError(
        f"expected a rule (a relprop.rules.Rule, a rule set, or a function (ctx, R) -> list), got {value!r}"
    )


class LRP(RuleSet):
    """Classic, conservative LRP: ``layer`` on weighted ops, conservative rules elsewhere.

    - dense layers use ``dense`` (default ``layer``), convolutions ``conv`` (default
      ``layer``), the first weighted layer(s) of the input ``first`` when given;
    - layer and group norm: their standard deviation held constant, the linear map
      left (:mod:`relprop.rules.norms`) by the dense rule (as AttnLRP does);
    - sums and average pooling: ε-rule (proportional); products of two
      relevance-carrying tensors: :class:`BilinearRule`, a sigmoid gate held constant
      (signal-take-all, docs/semantics.md §Recurrent networks); attention:
      :class:`AttentionValueRule`;
    - canonization (``canonize=True``, the default): an eval batch norm or another
      per-channel affine map right after a weighted layer is folded into that layer, whose
      rule then sees the folded weights (:mod:`relprop.canonize`); a batch norm that cannot be
      folded gets the ε-rule on its affine map (its shift absorbs relevance as a bias does);
      ``canonize=False``: batch norm passes relevance by the identity rule;
    - activations, RMSNorm, softmax and scaling by a constant: the identity
      rule, R_x = R (:class:`Pass`; conservative, unlike their gradients);
    - max pooling, selects, selections (amin, median, topk, ...) and data movement:
      relevance passes by the gradient (winner-takes-all, or moved unchanged);
      log-sum-exp: by the gradient (softmax weights), log_softmax: the identity;
    - other linear ops (cumsum, interpolation, scatter_add, ...): the ε-rule; pointwise
      functions of several relevant inputs and any other op: the ε-rule of the op's
      linearisation (:class:`~relprop.rules.taylor.TaylorRule`).

    Args:
        layer: the rule on weighted layers (a rule, a rule class or a rule set's layer rule).
        dense: the rule on dense layers (default ``layer``).
        conv: the rule on convolutions (default ``layer``).
        first: the rule on the first weighted layer(s) of the input, when given.
        epsilon: the ε of the ε-rule on sums, pooling and other linear ops.
        contrastive: explain the target pass minus the pass from all other classes.
        canonize: fold batch norms and per-channel affine maps into the layer before them.

    Raises:
        RuleError: a rule argument that is not a rule, or ``canonize`` not a bool.
    """

    def __init__(
        self,
        layer: Any,
        *,
        dense: Any = None,
        conv: Any = None,
        first: Any = None,
        epsilon: float = 1e-9,
        contrastive: bool = False,
        canonize: bool = True,
    ) -> None:
        if not isinstance(canonize, bool):
            from relprop.errors import RuleError

            raise RuleError(
                f"canonize= must be True or False (fold batch norms into their layer or not); got {canonize!r}"
            )
        self._layer = as_rule(layer)
        self.canonize = canonize
        self.dense = None if dense is None else as_rule(dense)
        self.conv = None if conv is None else as_rule(conv)
        self.first = None if first is None else as_rule(first)
        self.epsilon = epsilon
        self.contrastive = contrastive
        self._sum = EpsilonRule(epsilon)
        self._bilinear = BilinearRule(epsilon, hold_gates=True)
        self._attention = AttentionValueRule(epsilon)
        self._taylor = TaylorRule(epsilon if epsilon > 0 else 1e-12)
        self._pass = Pass()
        self._numerator = Pass(inputs=(0,))

    @property
    def layer(self) -> Rule:
        return self._layer

    def rule_for(self, info: NodeInfo) -> Rule | None:
        c = info.category
        if c in WEIGHTED_CATEGORIES:
            if info.first and self.first is not None:
                return self.first
            slot = self.dense if c == Category.DENSE else self.conv
            return slot if slot is not None else self._layer
        if c == Category.NORM and weighted_layer(info):
            return self.dense if self.dense is not None else self._layer
        if c == Category.NORM and self.canonize and eval_batch_norm(info.node):
            return self._sum  # not folded: the ε-rule on its affine map
        if c in (Category.ADD, Category.AVGPOOL, Category.LINEAR):
            return self._sum
        if c in (Category.POINTWISE, Category.GENERIC):
            return self._taylor
        if c in (Category.MATMUL, Category.MUL):
            return self._bilinear
        if c == Category.ATTENTION:
            return self._attention
        if c == Category.DIV:
            return self._numerator
        if c in _MOVES or c in _ELEMENTWISE_PASS or c in (Category.SELECTION, Category.LOGSUMEXP):
            return self._pass
        return None

    def suggestion(self) -> str:
        return "relprop.rules.EpsilonRule()"

    def __repr__(self) -> str:
        parts = [repr(self._layer)]
        for name in ("dense", "conv", "first"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)!r}")
        if not self.canonize:
            parts.append("canonize=False")
        return f"{type(self).__name__}({', '.join(parts)})"


class AttnLRP(LRP):
    """AttnLRP (Achtibat et al., ICML 2024); with ``cp=True``, CP-LRP inside attention.

    - weighted layers, sums and average pooling: the ε-rule; layer norm: the ε-rule on
      its linear map with the standard deviation held constant (RMSNorm: identity);
    - products of two relevance-carrying tensors (q·kᵀ, attention·V, gates such as
      SwiGLU's silu(a)·b): the uniform rule, each factor half (Eq. 7);
    - softmax: the softmax rule (Prop. 3.1, :class:`SoftmaxRule`);
      ``scaled_dot_product_attention``: all three steps (:class:`AttnLRPAttentionRule`);
    - elementwise non-linearities (GELU, SiLU, tanh, ...): the identity rule (Eq. 9);
    - ``cp=True`` (Ali et al., ICML 2022): attention probabilities held constant, all
      relevance to the values (:class:`AttentionValueRule`), as LXT does for ViTs.

    Starts from the target logit; not contrastive unless asked.  Slots as in :class:`LRP`
    (``AttnLRP(dense=rules.GammaRule(0.25))``: γ on linear layers).

    Args:
        epsilon: the ε of the ε-rule (finite, >= 0).
        cp: hold the attention probabilities constant (CP-LRP).
        contrastive: explain the target pass minus the pass from all other classes.
        **slots: ``dense``, ``conv``, ``first`` and ``canonize`` as in
            [`LRP`][relprop.rules.LRP].

    Raises:
        RuleError: ``cp`` not a bool, or ``epsilon`` not a finite number >= 0.
    """

    def __init__(self, epsilon: float = 1e-6, cp: bool = False, *, contrastive: bool = False, **slots: Any) -> None:
        from relprop.errors import RuleError

        if not isinstance(cp, bool):
            raise RuleError(f"AttnLRP(cp=...) must be True or False (CP-LRP inside attention or not); got {cp!r}")
        number = isinstance(epsilon, (int, float)) and not isinstance(epsilon, bool)
        if not number or not 0 <= epsilon < float("inf"):
            raise RuleError(
                f"AttnLRP(epsilon=...) must be a finite number >= 0 (the ε-rule stabiliser); got {epsilon!r}"
            )
        super().__init__(EpsilonRule(epsilon), epsilon=epsilon, contrastive=contrastive, **slots)
        self.cp = cp
        self._bilinear = BilinearRule(epsilon, hold_softmax=cp)
        self._attention = AttentionValueRule(epsilon) if cp else AttnLRPAttentionRule(epsilon)
        self._softmax = SoftmaxRule()

    def rule_for(self, info: NodeInfo) -> Rule | None:
        if info.category == Category.SOFTMAX:
            return self._softmax
        return super().rule_for(info)

    def __repr__(self) -> str:
        parts = [f"epsilon={self.epsilon!r}", f"cp={self.cp!r}"]
        for name in ("dense", "conv", "first"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)!r}")
        if not self.canonize:
            parts.append("canonize=False")
        return f"AttnLRP({', '.join(parts)})"


class Epsilon(LRP):
    """LRP-ε on weighted layers, and the same ε on sums.

    Args:
        epsilon: the stabiliser ε.
        **slots: ``dense``, ``conv``, ``first``, ``epsilon``, ``contrastive`` and ``canonize``
            as in [`LRP`][relprop.rules.LRP].
    """

    def __init__(self, epsilon: float = 1e-6, **slots: Any) -> None:
        super().__init__(EpsilonRule(epsilon), epsilon=epsilon, **slots)


class ZPlus(LRP):
    """LRP-z⁺ (α1β0) on weighted layers.

    Args:
        **slots: ``dense``, ``conv``, ``first``, ``epsilon``, ``contrastive`` and ``canonize``
            as in [`LRP`][relprop.rules.LRP].
    """

    def __init__(self, **slots: Any) -> None:
        super().__init__(ZPlusRule(), **slots)


class AlphaBeta(LRP):
    """LRP-αβ on weighted layers (α − β = 1).

    Args:
        alpha: the weight of the positive contributions.
        beta: the weight of the negative contributions.
        **slots: ``dense``, ``conv``, ``first``, ``epsilon``, ``contrastive`` and ``canonize``
            as in [`LRP`][relprop.rules.LRP].
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, **slots: Any) -> None:
        super().__init__(AlphaBetaRule(alpha, beta), **slots)


class Gamma(LRP):
    """LRP-γ on weighted layers.

    Args:
        gamma: how much the positive contributions are favoured.
        **slots: ``dense``, ``conv``, ``first``, ``epsilon``, ``contrastive`` and ``canonize``
            as in [`LRP`][relprop.rules.LRP].
    """

    def __init__(self, gamma: float = 0.25, **slots: Any) -> None:
        super().__init__(GammaRule(gamma), **slots)


class Flat(LRP):
    """The flat rule on weighted layers (mostly useful as ``first=Flat()``).

    Args:
        **slots: ``dense``, ``conv``, ``first``, ``epsilon``, ``contrastive`` and ``canonize``
            as in [`LRP`][relprop.rules.LRP].
    """

    def __init__(self, **slots: Any) -> None:
        super().__init__(FlatRule(), **slots)


class WSquare(LRP):
    """The w²-rule on weighted layers (mostly useful as ``first=WSquare()``).

    Args:
        **slots: ``dense``, ``conv``, ``first``, ``epsilon``, ``contrastive`` and ``canonize``
            as in [`LRP`][relprop.rules.LRP].
    """

    def __init__(self, **slots: Any) -> None:
        super().__init__(WSquareRule(), **slots)


class ZBox(LRP):
    """The z^B-rule on weighted layers (mostly useful as ``first=ZBox(low, high)``).

    Args:
        low: the lowest input value (a number, or a tensor broadcastable to the input).
        high: the highest input value.
        **slots: ``dense``, ``conv``, ``first``, ``epsilon``, ``contrastive`` and ``canonize``
            as in [`LRP`][relprop.rules.LRP].
    """

    def __init__(self, low: float | Tensor, high: float | Tensor, **slots: Any) -> None:
        super().__init__(ZBoxRule(low, high), **slots)


class RAP(LRP):
    """RAP, Relative Attributing Propagation (Nam et al., AAAI 2020); ``contrastive=True``: cRAP.

    The paper's rules (:mod:`relprop.rules.rap`, docs/semantics.md §RAP):

    - the weighted layer at the model's output: its contributions as relative (absolute)
      influence, R_i = |Σ_j z_ij R_j| / Σ_i |Σ_j z_ij R_j| · Σ_j R_j (:class:`RAPOutputRule`);
    - the other convolutions: positive relevance to the positive contributions and, by their
      share of the total magnitude, to the negative ones; negative relevance to the negative
      contributions; then the uncertain shift (:class:`RAPRule`); dense layers (and layer and
      group norm's linear map) send negative relevance along the paths of the positive, as
      the authors' fully connected layers do (``RAPRule(separate=False)``);
    - the input layer: z^B with each sample's min and max as bounds (:class:`RAPInputRule`);
    - sums, average and max pooling: the z-rule (zero where the output is zero); ReLU, batch
      norm and other activations: the identity; ops the paper's CNNs do not have (products,
      attention, ...) as in :class:`LRP`.

    Starts from the target logit; ``contrastive=True`` (cRAP, made contrastive as cLRP is)
    explains the target pass minus the pass from all other classes, each started at Σ = 1.

    Args:
        contrastive: cRAP: the target pass minus the pass from all other classes.
    """

    def __init__(self, contrastive: bool = False) -> None:
        super().__init__(
            RAPRule(), dense=RAPRule(separate=False), first=RAPInputRule(), contrastive=contrastive, canonize=False
        )
        self._output = RAPOutputRule()
        self._zero = EpsilonRule(0.0)

    def rule_for(self, info: NodeInfo) -> Rule | None:
        c = info.category
        if c in WEIGHTED_CATEGORIES and feeds_output(info.node):
            return self._output
        if c in (Category.ADD, Category.AVGPOOL, Category.MAXPOOL):
            return self._zero
        return super().rule_for(info)

    def suggestion(self) -> str:
        return "relprop.rules.EpsilonRule(0.0)"

    def __repr__(self) -> str:
        return f"RAP(contrastive={self.contrastive!r})"


def EpsilonPlus(epsilon: float = 1e-6, canonize: bool = True) -> LRP:  # noqa: N802 - preset named like a rule set
    """Build the preset: ε for dense layers, z⁺ for convolutions.

    Args:
        epsilon: the ε of the dense layers' ε-rule.
        canonize: fold batch norms into the layer before them.

    Returns:
        The [`LRP`][relprop.rules.LRP] rule set.
    """
    return Epsilon(epsilon, conv=ZPlusRule(), canonize=canonize)


def EpsilonPlusFlat(epsilon: float = 1e-6, canonize: bool = True) -> LRP:  # noqa: N802
    """Build the preset: ε for dense layers, z⁺ for convolutions, flat for the first layer.

    Args:
        epsilon: the ε of the dense layers' ε-rule.
        canonize: fold batch norms into the layer before them.

    Returns:
        The [`LRP`][relprop.rules.LRP] rule set.
    """
    return Epsilon(epsilon, conv=ZPlusRule(), first=FlatRule(), canonize=canonize)


def EpsilonAlpha2Beta1(epsilon: float = 1e-6, canonize: bool = True) -> LRP:  # noqa: N802
    """Build the preset: ε for dense layers, α2β1 for convolutions.

    Args:
        epsilon: the ε of the dense layers' ε-rule.
        canonize: fold batch norms into the layer before them.

    Returns:
        The [`LRP`][relprop.rules.LRP] rule set.
    """
    return Epsilon(epsilon, conv=AlphaBetaRule(2.0, 1.0), canonize=canonize)


def EpsilonAlpha2Beta1Flat(epsilon: float = 1e-6, canonize: bool = True) -> LRP:  # noqa: N802
    """Build the preset: ε for dense layers, α2β1 for convolutions, flat for the first layer.

    Args:
        epsilon: the ε of the dense layers' ε-rule.
        canonize: fold batch norms into the layer before them.

    Returns:
        The [`LRP`][relprop.rules.LRP] rule set.
    """
    return Epsilon(epsilon, conv=AlphaBetaRule(2.0, 1.0), first=FlatRule(), canonize=canonize)


def EpsilonGammaBox(  # noqa: N802
    low: float | Tensor, high: float | Tensor, gamma: float = 0.25, epsilon: float = 1e-6, canonize: bool = True
) -> LRP:
    """Build the preset: ε for dense layers, γ for convolutions, z^B for the first layer.

    Args:
        low: the lowest input value, for z^B (a number, or a tensor broadcastable to the input).
        high: the highest input value.
        gamma: the convolutions' γ.
        epsilon: the ε of the dense layers' ε-rule.
        canonize: fold batch norms into the layer before them.

    Returns:
        The [`LRP`][relprop.rules.LRP] rule set.
    """
    return Epsilon(epsilon, conv=GammaRule(gamma), first=ZBoxRule(low, high), canonize=canonize)
