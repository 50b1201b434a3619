"""The ``relprop`` command.

    relprop                      # = relprop example: explain the embedded example
    relprop example --out heat.png --rules zplus --target circle --no-overlay

Subcommands are registered in :func:`build_parser`; ``relprop`` with no
subcommand runs ``relprop example`` (its options work without the subcommand too).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["COMMANDS", "RULES", "build_parser", "main"]


def _rules() -> dict[str, Callable[[], object]]:
    from relprop import rules

    return {
        "abslrp": lambda: rules.AbsLRP(),
        "epsilon": lambda: rules.Epsilon(1e-6),
        "zplus": lambda: rules.ZPlus(),
        "alphabeta": lambda: rules.AlphaBeta(2, 1),
        "epsilon-plus-flat": lambda: rules.EpsilonPlusFlat(),
    }


#: the rule sets ``--rules`` accepts
RULES: tuple[str, ...] = ("abslrp", "epsilon", "zplus", "alphabeta", "epsilon-plus-flat")
DEFAULT_COMMAND = "example"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subparser per subcommand."""
    from relprop import __version__

    parser = argparse.ArgumentParser(
        prog="relprop",
        description="Layer-wise relevance propagation (absLRP) for PyTorch models. "
        "Without a subcommand, runs 'relprop example'.",
    )
    parser.add_argument("--version", action="version", version=f"relprop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS.values():
        add(sub)
    return parser


def _add_example(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "example",
        help="explain the embedded example model and write a heatmap PNG (the default)",
        description="Explain the embedded example (a small CNN that tells squares, circles "
        "and triangles apart) and write a heatmap PNG: inputs above, relevance below "
        "(red positive, blue negative, white zero).",
    )
    ex.add_argument(
        "--out",
        default="relprop-example.png",
        metavar="PATH",
        help="where to write the PNG (default: %(default)s)",
    )
    ex.add_argument(
        "--rules",
        choices=RULES,
        default="abslrp",
        help="rule set (default: %(default)s)",
    )
    ex.add_argument(
        "--target",
        default=None,
        metavar="CLASS",
        help="class to explain for every image, an index or a name (default: each image's predicted class)",
    )
    ex.add_argument(
        "--no-overlay",
        dest="overlay",
        action="store_false",
        help="draw the bare heatmap instead of the heatmap over the input",
    )
    ex.set_defaults(run=run_example)


def _target(value: str | None, names: Sequence[str]) -> int | None:
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
        choices = ", ".join(f"{i} ({n})" for i, n in enumerate(names))
        raise TargetError(f"--target {value!r} is not a class; expected one of {choices}")
    return index


def run_example(args: argparse.Namespace) -> int:
    """``relprop example``: explain the embedded example and write the PNG."""
    import torch

    import relprop
    from relprop import viz
    from relprop.example import load_example

    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"cannot write {out}: directory {out.parent} does not exist")
    ex = load_example()
    target = _target(args.target, ex.class_names)
    with torch.no_grad():
        predicted = ex.model(ex.images).argmax(1)
    chosen = predicted if target is None else torch.full_like(predicted, target)

    rule_set = _rules()[args.rules]()
    graph = relprop.trace(ex.model, rules=rule_set)
    start = time.perf_counter()
    R = graph.explain(ex.images, chosen)
    first = time.perf_counter() - start
    start = time.perf_counter()
    graph.explain(ex.images, chosen)
    again = time.perf_counter() - start

    names = ex.class_names
    titles = [names[int(c)] for c in chosen]
    viz.save(out, R, ex.images, overlay=args.overlay, titles=titles)

    n = len(ex.images)
    correct = int((predicted == ex.labels).sum())
    print(f"relprop example: {n} images of the embedded shapes CNN, rules {rule_set!r}")
    for i in range(n):
        line = f"  image {i}: true {names[int(ex.labels[i])]:<8}  predicted {names[int(predicted[i])]}"
        if target is not None:
            line += f"  explained {names[target]}"
        print(line)
    print(f"  {correct}/{n} predicted correctly")
    print(f"  trace + explain {first:.2f} s; explain again {again * 1000:.0f} ms")
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``relprop`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, DEFAULT_COMMAND)
    parser = build_parser()
    args = parser.parse_args(argv)
    from relprop.errors import RelpropError

    try:
        return int(args.run(args))
    except (RelpropError, OSError) as e:
        print(f"relprop: error: {e}", file=sys.stderr)
        return 1


#: subcommand name -> function adding its subparser (later issues add evaluate, explain-text)
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {"example": _add_example}

if __name__ == "__main__":
    sys.exit(main())
