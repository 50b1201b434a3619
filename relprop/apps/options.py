"""Options shared by the ``relprop`` subcommands: rule-set names and class targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relprop.errors import RuleError
from relprop.rules import registry

__all__ = ["RULES", "TEXT_RULES", "parse_target", "rule_factories", "rules_name"]


def rule_factories() -> dict[str, Callable[[], object]]:
    """``--rules`` name -> factory of a fresh rule set (from :mod:`relprop.rules.registry`)."""
    return {e.name: e.factory for e in registry.ENTRIES}


def rules_name(value: str) -> str:
    """``--rules`` value -> the registry's canonical name (aliases and display names such as
    ``LRP-ε`` work); an unknown value is returned as given for argparse to reject among the choices."""
    try:
        return registry.resolve(value)
    except RuleError:
        return value


#: the rule sets ``--rules`` accepts: the registry's names (README, "Named rule sets")
RULES: tuple[str, ...] = registry.names()


#: the rule set ``explain-text`` uses by default: it points at the sentiment words of the held-out
#: reviews most often (README, "Which rule set for transformers")
TEXT_RULES = "attnlrp"


def parse_target(value: str | None, names: Sequence[str]) -> int | None:
    """``--target``: a class index or name among ``names`` (None: the predicted class)."""
    from relprop.errors import TargetError

    if value is None:
        return None
    if value in names:
        return list(names).index(value)
    try:
        index = int(value)
    except ValueError:
        index = -1
    if not 0 <= index < len(names):
        if len(names) <= 20:
            choices = "one of " + ", ".join(f"{i} ({n})" for i, n in enumerate(names))
        else:
            choices = f"an index 0..{len(names) - 1} or a class name such as {names[0]!r}"
        raise TargetError(f"--target {value!r} is not a class; expected {choices}")
    return index
