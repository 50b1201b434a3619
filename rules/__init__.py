"""Rules and rule sets of relprop (installed as ``relprop.rules``).

Rule sets (``relprop.trace(model, rules=...)``): :class:`AbsLRP` (default), :class:`RAP`,
:class:`AttnLRP` (transformers), :class:`Epsilon`, :class:`ZPlus`, :class:`AlphaBeta`, :class:`Gamma`, :class:`Flat`,
:class:`WSquare`, :class:`ZBox`, and the presets :func:`EpsilonPlus`,
:func:`EpsilonPlusFlat`, :func:`EpsilonAlpha2Beta1`, :func:`EpsilonAlpha2Beta1Flat`,
:func:`EpsilonGammaBox`.  Named rule sets (the ``relprop --rules`` names, the
README's table): :mod:`relprop.rules.registry`, ``rule_set("epsilon")``.

Rules (for overrides and custom registrations): :class:`AbsRule`,
:class:`AbsAttentionRule`, :class:`Pass`, :class:`EpsilonRule`, :class:`ZPlusRule`,
:class:`AlphaBetaRule`, :class:`GammaRule`, :class:`FlatRule`, :class:`WSquareRule`,
:class:`ZBoxRule`, :class:`BilinearRule`, :class:`AttentionValueRule`, :class:`SoftmaxRule`,
:class:`AttnLRPAttentionRule`; write your own
by subclassing :class:`Rule`, which sees a node through a :class:`Context` (the engine's
optimisation hints, which a rule may ignore, in ``ctx.hints``: :class:`Hints`).
"""

from . import registry
from .abslrp import AbsAttentionRule, AbsRule
from .attnlrp import AttnLRPAttentionRule, SoftmaxRule
from .base import Context, FunctionRule, Hints, Layout, NodeInfo, Pass, Rule, stabilize, vjp
from .categories import Category
from .lrp import (
    AlphaBetaRule,
    AttentionValueRule,
    BilinearRule,
    EpsilonRule,
    FlatRule,
    GammaRule,
    WSquareRule,
    ZBoxRule,
    ZPlusRule,
)
from .registry import rule_set
from .sets import (
    LRP,
    RAP,
    AbsLRP,
    AlphaBeta,
    AttnLRP,
    Epsilon,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    Flat,
    Gamma,
    RuleSet,
    WSquare,
    ZBox,
    ZPlus,
    as_rule,
)

__all__ = [
    "AbsAttentionRule",
    "AbsLRP",
    "AbsRule",
    "AlphaBeta",
    "AlphaBetaRule",
    "AttentionValueRule",
    "AttnLRP",
    "AttnLRPAttentionRule",
    "BilinearRule",
    "Category",
    "Context",
    "Epsilon",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "EpsilonRule",
    "Flat",
    "FlatRule",
    "FunctionRule",
    "Gamma",
    "GammaRule",
    "Hints",
    "LRP",
    "Layout",
    "NodeInfo",
    "Pass",
    "RAP",
    "Rule",
    "RuleSet",
    "SoftmaxRule",
    "WSquare",
    "WSquareRule",
    "ZBox",
    "ZBoxRule",
    "ZPlus",
    "ZPlusRule",
    "as_rule",
    "registry",
    "rule_set",
    "stabilize",
    "vjp",
]
