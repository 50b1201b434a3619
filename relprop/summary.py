"""``Graph.summary()``: one line per node on the relevance path, its category and its rule."""

from __future__ import annotations

from relprop.rules.ops import full_op_name
from relprop.rules.sets import RuleSet

from .binding import Bound

__all__ = ["format_summary"]


def format_summary(bound: Bound, rules: RuleSet) -> str:
    """The table :meth:`relprop.Graph.summary` prints for ``bound``."""
    rows = [("node", "op", "module", "category", "rule", "matched by")]
    for n in bound.program.graph.nodes:
        if n.op == "placeholder":
            if n in bound.float_sources.values():
                rows.append((n.name, "input", "", "source", "relevance read here", ""))
            continue
        if n in bound.embeddings:
            what = "token relevance read here" if n in bound.token_sources else "embedding relevance read here"
            rows.append((n.name, full_op_name(n.target), bound.embeddings[n], "embedding", what, ""))
            continue
        b = bound.bindings.get(n)
        if b is None:
            continue
        info = b.info
        module = f"{info.module_path} ({info.module_class})" if info.module_path else info.module_class
        op = b.region.describe() if b.region is not None else b.fold.describe() if b.fold is not None else None
        op = op or full_op_name(n.target)
        rows.append(
            (n.name, op, module, str(info.category) if info.category is not None else "none", repr(b.rule), b.source)
        )
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(rows[0]))]
    lines = [f"relprop graph, rule set {rules!r}; {len(rows) - 1} nodes on the relevance path"]
    for r in rows:
        lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip())
    if bound.unbound:
        lines.append(
            "passed by their gradient for want of a rule (strict=False): " + ", ".join(sorted(set(bound.unbound)))
        )
    return "\n".join(lines)
