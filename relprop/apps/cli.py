"""The ``relprop`` command.

    relprop                      # = relprop example: an ImageNet model on real photos
    relprop --model digits       # the shipped digits models
    relprop example --model vit --out heat.png --rules zplus --target 3 --no-overlay
    relprop example --model shapes --target circle   # the small shapes CNN
    relprop explain-text "I hate this movie. However, I loved the leading actor!" --html words.html
    relprop explain-text "some sentence" --model path/to/hf-model-folder --target 1
    relprop evaluate                     # GAE of every method on the shipped digits models
    relprop evaluate --model mymodels:net --data images/ --size 64 --methods absLRP,Saliency
    relprop explain photos/ --model imagenet --out heat/    # a heatmap PNG and .npy per image
    torchrun --nproc-per-node 4 -m relprop explain photos/ --model imagenet --out heat/

Subcommands are registered in :func:`build_parser`; ``relprop`` with no
subcommand runs ``relprop example`` (its options work without the subcommand too).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import cmd_evaluate, cmd_example, cmd_explain, cmd_text
from .options import RULES, TEXT_RULES
from .options import parse_target as _target  # noqa: F401  (old private name, used by tests)
from .options import rule_factories as _rules  # noqa: F401  (old private name, used by examples)

__all__ = ["COMMANDS", "RULES", "TEXT_RULES", "build_parser", "main"]

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


#: subcommand name -> function adding its subparser (one module per subcommand)
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "example": cmd_example.add_parser,
    "explain-text": cmd_text.add_parser,
    "evaluate": cmd_evaluate.add_parser,
    "explain": cmd_explain.add_parser,
}

if __name__ == "__main__":
    sys.exit(main())
