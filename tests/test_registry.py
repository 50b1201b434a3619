"""The registry of named rule sets (relprop.rules.registry): the CLI's and relprop.methods' names, the docs' table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import relprop
from relprop import rules
from relprop.rules import registry

ROOT = Path(__file__).resolve().parents[1]
HEADING = "Named rule sets"


def _params(obj: Any) -> Any:
    """A rule set or rule as nested (class name, attributes): compared with ==, so 2 == 2.0."""
    if isinstance(obj, (rules.RuleSet, rules.Rule)):
        return type(obj).__name__, {k: _params(v) for k, v in sorted(vars(obj).items())}
    return obj


def _same(built: rules.RuleSet, want: rules.RuleSet) -> None:
    assert type(built) is type(want)
    assert repr(built) == repr(want)
    assert (built.contrastive, built.start) == (want.contrastive, want.start)
    assert _params(built) == _params(want)
    assert {k: repr(v) for k, v in vars(built).items()} == {k: repr(v) for k, v in vars(want).items()}


#: every entry, built here from relprop.rules directly (not through the registry)
EXPECTED = {
    "abslrp": lambda: rules.AbsLRP(),
    "abslrp-vgg": lambda: rules.AbsLRP(maxpool_divide=False),
    "attnlrp": lambda: rules.AttnLRP(),
    "attnlrp-cp": lambda: rules.AttnLRP(cp=True),
    "epsilon": lambda: rules.Epsilon(1e-6),
    "zplus": lambda: rules.ZPlus(),
    "alphabeta": lambda: rules.AlphaBeta(2, 1),
    "alpha1beta0": lambda: rules.AlphaBeta(1.0, 0.0),
    "clrp": lambda: rules.AlphaBeta(1.0, 0.0, contrastive=True),
    "epsilon-plus-flat": lambda: rules.EpsilonPlusFlat(),
    "rap": lambda: rules.RAP(),
    "crap": lambda: rules.RAP(contrastive=True),
}

#: the CLI's `--rules` before the registry (relprop/apps/cli.py `_rules()`): same objects, same repr
CLI_BEFORE = {
    "abslrp": lambda: rules.AbsLRP(),
    "attnlrp": lambda: rules.AttnLRP(),
    "attnlrp-cp": lambda: rules.AttnLRP(cp=True),
    "epsilon": lambda: rules.Epsilon(1e-6),
    "zplus": lambda: rules.ZPlus(),
    "alphabeta": lambda: rules.AlphaBeta(2, 1),
    "epsilon-plus-flat": lambda: rules.EpsilonPlusFlat(),
}

#: relprop.methods' rule sets before the registry (`lrp_method`), and the explain option it used
METHODS_BEFORE = {
    "absLRP": (lambda: rules.AbsLRP(), None),
    "cLRP": (lambda: rules.AlphaBeta(1.0, 0.0), True),
    "LRP-ε": (lambda: rules.Epsilon(), None),
    "LRP-α1β0": (lambda: rules.AlphaBeta(1.0, 0.0), None),
    "LRP-α2β1": (lambda: rules.AlphaBeta(2.0, 1.0), None),
}


def test_every_entry_is_pinned() -> None:
    assert registry.names() == tuple(EXPECTED)
    assert tuple(e.name for e in registry.ENTRIES) == registry.names()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rule_set_equals_the_one_built_directly(name: str) -> None:
    built = registry.rule_set(name)
    _same(built, EXPECTED[name]())
    e = registry.entry(name)
    assert e.contrastive == built.contrastive
    # the expression shown in the README builds the same rule set
    _same(eval(e.expression, dict(vars(rules))), built)
    _same(e.factory(), built)
    _same(e.build(), built)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_a_fresh_rule_set_per_call(name: str) -> None:
    a, b = registry.rule_set(name), registry.rule_set(name)
    assert a is not b
    shared = [k for k, v in vars(a).items() if isinstance(v, (rules.Rule, rules.RuleSet)) and v is vars(b)[k]]
    assert not shared


@pytest.mark.parametrize("name", list(CLI_BEFORE))
def test_cli_names_unchanged(name: str) -> None:
    from relprop.apps import cli

    assert name in cli.RULES and registry.resolve(name) == name
    _same(registry.rule_set(name), CLI_BEFORE[name]())
    _same(cli._rules()[name](), CLI_BEFORE[name]())


def test_every_cli_choice_resolves() -> None:
    from relprop.apps import cli

    assert cli.RULES == registry.names()
    assert set(cli._rules()) == set(cli.RULES)
    for name in cli.RULES:
        assert registry.resolve(name) == name
    assert cli.TEXT_RULES in cli.RULES


@pytest.mark.parametrize("method", list(METHODS_BEFORE))
def test_relprop_method_names_resolve_to_the_same_rule_sets(method: str) -> None:
    from relprop import methods as RM

    assert method in RM.RELPROP_METHODS
    e = registry.entry(method)
    assert e.display == method and e.name in RM.RELPROP_RULE_SETS
    make, contrastive = METHODS_BEFORE[method]
    before, now = make(), registry.rule_set(method)
    # same class and parameters (LRP-α2β1: alpha=2 == 2.0; the repr differs, the CLI's ints kept);
    # cLRP: the contrastive=True lrp_method passed to explain is now the rule set's default
    want = _params(before)
    if contrastive is not None:
        want[1]["contrastive"] = contrastive
    assert type(now) is type(before) and _params(now) == want
    # every spelling relprop.methods accepts for it reaches the same entry
    for spelling in (method, method.lower(), method.replace("-", "_"), e.name):
        assert RM.resolve_name(spelling) == method
        assert registry.entry(spelling) is e


def test_methods_keys_agree_with_the_registry() -> None:
    from relprop import methods as RM

    assert RM.RELPROP_METHODS == ("absLRP", "cLRP", "LRP-ε", "LRP-α1β0", "LRP-α2β1", "RAP", "cRAP", "AttnLRP")
    for spelling, method in {
        "LRP-eps": "LRP-ε",
        "lrp-epsilon": "LRP-ε",
        "epsilon": "LRP-ε",
        "lrp-alpha1beta0": "LRP-α1β0",
        "LRP alpha2 beta1": "LRP-α2β1",
        "alphabeta": "LRP-α2β1",
        "LRP-αβ": "LRP-α2β1",
        "CLRP": "cLRP",
        "abslrp": "absLRP",
        "rap": "RAP",
        "crap": "cRAP",
        "c-rap": "cRAP",
        "attnlrp": "AttnLRP",
    }.items():
        assert RM.resolve_name(spelling) == method, spelling
        assert registry.entry(spelling).display == method, spelling


def test_aliases_and_spellings() -> None:
    assert registry.resolve("LRP-ε") == registry.resolve("eps") == registry.resolve("EPSILON") == "epsilon"
    assert registry.resolve("LRP-z+") == registry.resolve("lrp-zplus") == registry.resolve("LRP-z⁺") == "zplus"
    assert registry.resolve("LRP-α2β1") == registry.resolve("alpha2beta1") == "alphabeta"
    assert registry.resolve("epsilon_plus_flat") == registry.resolve("EpsilonPlusFlat") == "epsilon-plus-flat"
    assert registry.resolve("CP-LRP") == registry.resolve("attnlrp_cp") == "attnlrp-cp"
    for e in registry.ENTRIES:
        for spelling in e.spellings:
            assert registry.entry(spelling) is e, spelling


def test_overrides() -> None:
    _same(registry.rule_set("epsilon", epsilon=0.25), rules.Epsilon(0.25))
    _same(registry.rule_set("alphabeta", alpha=3, beta=2), rules.AlphaBeta(3, 2))
    _same(registry.rule_set("abslrp", weight_cache=False), rules.AbsLRP(weight_cache=False))
    _same(registry.rule_set("attnlrp-cp", epsilon=1e-3), rules.AttnLRP(1e-3, cp=True))
    _same(registry.rule_set("epsilon"), rules.Epsilon(1e-6))  # the override did not stick
    with pytest.raises(relprop.RuleError, match="'zplus'.*foo"):
        registry.rule_set("zplus", foo=1)


@pytest.mark.parametrize("bad", ["nope", "lrp", "", "abslrp2", 3, None])
def test_unknown_name_lists_the_valid_names(bad: Any) -> None:
    valid = ", ".join(EXPECTED)
    with pytest.raises(relprop.RuleError, match="unknown rule set") as info:
        registry.rule_set(bad)
    assert f"valid names: {valid}" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(relprop.RuleError, match="valid names: abslrp, "):
        registry.resolve(bad)


def test_exported_from_relprop_rules() -> None:
    assert rules.registry is registry and rules.rule_set is registry.rule_set
    assert {"registry", "rule_set"} <= set(rules.__all__)


def test_markdown_table_lists_every_name() -> None:
    lines = registry.markdown_table().splitlines()
    assert lines[0] == "| name | display name | rule set | description |" and lines[1] == "|---|---|---|---|"
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert all(len(r) == 4 for r in rows), "a cell holds a '|'"
    assert [r[0] for r in rows] == [f"`{n}`" for n in registry.names()]
    for row, e in zip(rows, registry.ENTRIES):
        assert row == [f"`{e.name}`", e.display, f"`{e.expression}`", e.description]
        assert e.description and "\n" not in e.description and e.display


def _docs_table() -> tuple[str, list[str]] | None:
    """The table under the heading "Named rule sets" (any level) of the docs pages or README.md:
    (the page, its table lines)."""
    for page in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        lines = page.read_text(encoding="utf-8").splitlines()
        heads = [i for i, ln in enumerate(lines) if ln.startswith("#") and ln.lstrip("#").strip() == HEADING]
        if not heads:
            continue
        table: list[str] = []
        for ln in lines[heads[0] + 1 :]:
            if ln.startswith("#"):
                break
            if ln.startswith("|"):
                table.append(ln.rstrip())
            elif table:
                break
        return page.relative_to(ROOT).as_posix(), table
    return None


def test_docs_table_is_the_registry() -> None:
    found = _docs_table()
    assert found is not None, f"no page has a heading {HEADING!r} (paste registry.markdown_table() under it)"
    page, table = found
    assert table, f"no table after {HEADING!r} in {page}"
    assert table == registry.markdown_table().splitlines(), (
        f"{page}'s named rule sets differ from relprop.rules.registry.markdown_table(); paste it again"
    )
