"""Named rule sets: one registry for the command line, :mod:`relprop.methods` and the README.

Each entry maps a canonical name (lowercase with hyphens, the ``relprop --rules`` spelling)
to the factory of its rule set, the display name used in tables and by
:mod:`relprop.methods` (``"absLRP"``, ``"LRP-ε"``, ``"LRP-α2β1"``, ...), other accepted
spellings, whether the set is contrastive by default, and a one-line description::

    from relprop.rules import registry
    registry.rule_set("epsilon")                 # a fresh Epsilon(epsilon=1e-6)
    registry.rule_set("LRP-ε", epsilon=0.25)     # display names and aliases work; overrides go to the factory
    registry.names()                             # ("abslrp", "abslrp-vgg", "attnlrp", ...)
    print(registry.markdown_table())             # the README's table

Names match ignoring case, ``-``, ``_`` and spaces; ε, α, β, ⁺ may be written ``eps`` /
``epsilon``, ``alpha``, ``beta``, ``+`` / ``plus``.  An unknown name raises
:class:`relprop.RuleError` listing the valid names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relprop.errors import RuleError

from .sets import RAP, AbsLRP, AlphaBeta, AttnLRP, Epsilon, EpsilonPlusFlat, RuleSet, ZPlus

__all__ = ["RuleSetEntry", "ENTRIES", "entry", "markdown_table", "names", "resolve", "rule_set"]


@dataclass(frozen=True)
class RuleSetEntry:
    """One named rule set.

    ``factory``: a :func:`functools.partial` of a rule-set class (or preset function) with
    the entry's parameters; ``factory(**overrides)`` builds a fresh rule set.
    """

    name: str
    factory: functools.partial
    display: str
    description: str
    contrastive: bool = False
    aliases: tuple[str, ...] = ()

    def build(self, **overrides: Any) -> RuleSet:
        """A fresh rule set; ``overrides`` replace or add keyword arguments of the factory."""
        try:
            return self.factory(**overrides)
        except TypeError as err:
            raise RuleError(f"rule set {self.name!r} ({self.expression}): bad parameters {overrides}: {err}") from None

    @property
    def expression(self) -> str:
        """The rule set as source text, e.g. ``AlphaBeta(alpha=2, beta=1)`` (names from :mod:`relprop.rules`)."""
        args = ", ".join(f"{k}={_literal(v)}" for k, v in self.factory.keywords.items())
        return f"{self.factory.func.__name__}({args})"

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every accepted name: the canonical one, the display name and the aliases."""
        return (self.name, self.display, *self.aliases)


def _literal(value: Any) -> str:
    text = repr(value)
    return text.replace("e-0", "e-") if isinstance(value, float) else text


def _entry(name: str, factory: Callable[..., RuleSet], display: str, description: str, **kw: Any) -> RuleSetEntry:
    params = kw.pop("params", {})
    return RuleSetEntry(name, functools.partial(factory, **params), display, description, **kw)


#: every named rule set, in table order
ENTRIES: tuple[RuleSetEntry, ...] = (
    _entry(
        "abslrp",
        AbsLRP,
        "absLRP",
        "relative absolute-magnitude LRP at every computing op, contrastive (target pass minus the pass "
        "from all other classes); relprop's default (Vukadin et al., ACM TIST 2024, arXiv 2412.09311)",
        contrastive=True,
    ),
    _entry(
        "abslrp-vgg",
        AbsLRP,
        "absLRP-VGG",
        "absLRP without dividing by the output's magnitude at max pooling: the reference implementation's "
        "VGG variant (Vukadin et al. 2024)",
        params={"maxpool_divide": False},
        contrastive=True,
    ),
    _entry(
        "attnlrp",
        AttnLRP,
        "AttnLRP",
        "ε-rule, uniform rule on products of two relevance-carrying tensors, softmax rule: the rule set "
        "for transformers (Achtibat et al., ICML 2024)",
    ),
    _entry(
        "attnlrp-cp",
        AttnLRP,
        "CP-LRP",
        "AttnLRP with the attention probabilities held constant, all relevance to the values "
        "(CP-LRP, Ali et al., ICML 2022; LXT's cp_LRP)",
        params={"cp": True},
    ),
    _entry(
        "epsilon",
        Epsilon,
        "LRP-ε",
        "LRP-ε on weighted layers and sums, ε = 1e-6 (Bach et al., PLoS ONE 2015)",
        params={"epsilon": 1e-6},
    ),
    _entry(
        "zplus",
        ZPlus,
        "LRP-z⁺",
        "LRP-z⁺: only the positive contributions on weighted layers (Montavon et al., Pattern Recognition 2017)",
    ),
    _entry(
        "alphabeta",
        AlphaBeta,
        "LRP-α2β1",
        "LRP-αβ with α = 2, β = 1 on weighted layers (Bach et al., PLoS ONE 2015)",
        params={"alpha": 2, "beta": 1},
        aliases=("LRP-αβ", "alpha2beta1"),
    ),
    _entry(
        "alpha1beta0",
        AlphaBeta,
        "LRP-α1β0",
        "LRP-αβ with α = 1, β = 0: only the positive contributions (Bach et al., PLoS ONE 2015)",
        params={"alpha": 1.0, "beta": 0.0},
    ),
    _entry(
        "clrp",
        AlphaBeta,
        "cLRP",
        "LRP-α1β0 explained contrastively: target pass minus the pass from all other classes "
        "(after Gu et al., ACCV 2018, not their negated-weight dual)",
        params={"alpha": 1.0, "beta": 0.0, "contrastive": True},
        contrastive=True,
    ),
    _entry(
        "epsilon-plus-flat",
        EpsilonPlusFlat,
        "EpsilonPlusFlat",
        "ε on dense layers, z⁺ on convolutions, flat on the first layer "
        "(Zennit's composite; Kohlbrenner et al., IJCNN 2020)",
    ),
    _entry(
        "rap",
        RAP,
        "RAP",
        "Relative Attributing Propagation: the output layer's contributions as absolute influence, positive "
        "and negative relevance propagated apart by relative influence, uncertain relevance shifted away "
        "(Nam et al., AAAI 2020)",
    ),
    _entry(
        "crap",
        RAP,
        "cRAP",
        "RAP explained contrastively: target pass minus the pass from all other classes (as cLRP)",
        params={"contrastive": True},
        contrastive=True,
    ),
)


def _key(name: str) -> str:
    k = name.lower().replace("ε", "eps").replace("epsilon", "eps").replace("α", "alpha").replace("β", "beta")
    k = k.replace("⁺", "plus").replace("+", "plus")
    return "".join(ch for ch in k if ch not in "-_ ")


def _index() -> dict[str, RuleSetEntry]:
    index: dict[str, RuleSetEntry] = {}
    for e in ENTRIES:
        for spelling in e.spellings:
            other = index.setdefault(_key(spelling), e)
            if other is not e:  # pragma: no cover - a registry bug, caught by the tests
                raise AssertionError(f"{spelling!r} names both {other.name!r} and {e.name!r}")
    return index


_BY_KEY = _index()


def names() -> tuple[str, ...]:
    """List the canonical names of the rule sets.

    Returns:
        The names in table order (the choices of ``relprop --rules``).
    """
    return tuple(e.name for e in ENTRIES)


def entry(name: str) -> RuleSetEntry:
    """Look up a named rule set.

    Args:
        name: its canonical name, display name or an alias.

    Returns:
        The [`RuleSetEntry`][relprop.rules.registry.RuleSetEntry].

    Raises:
        RuleError: an unknown name (the message lists the valid names).
    """
    found = _BY_KEY.get(_key(str(name))) if isinstance(name, str) else None
    if found is None:
        raise RuleError(f"unknown rule set {name!r}; valid names: {', '.join(names())}")
    return found


def resolve(name: str) -> str:
    """Find the canonical name that ``name`` spells.

    Args:
        name: a canonical name, display name or alias.

    Returns:
        The canonical name.

    Raises:
        RuleError: an unknown name (the message lists the valid names).
    """
    return entry(name).name


def rule_set(name: str, **overrides: Any) -> RuleSet:
    """Build a fresh rule set by name.

    Args:
        name: a canonical name, display name or alias (``"epsilon"``, ``"LRP-ε"``).
        **overrides: passed to its factory (``rule_set("epsilon", epsilon=0.25)``).

    Returns:
        The rule set.

    Raises:
        RuleError: an unknown name.
    """
    return entry(name).build(**overrides)


def markdown_table() -> str:
    """Write the named rule sets as a Markdown table (the docs show it).

    Returns:
        The table: name | display name | rule set expression | description.
    """
    lines = ["| name | display name | rule set | description |", "|---|---|---|---|"]
    for e in ENTRIES:
        lines.append(f"| `{e.name}` | {e.display} | `{e.expression}` | {e.description} |")
    return "\n".join(lines)
