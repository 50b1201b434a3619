"""``relprop example``: explain the shipped digits models (or the shapes CNN) and write a PNG."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from relprop.rules import registry

from .options import RULES, parse_target, rules_name

__all__ = ["add_parser", "run_example"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "example",
        help="explain real photos with an ImageNet model (or the shipped digits models) and write a PNG (the default)",
        description="Explain scikit-image's sample photos (a cat, a coffee cup, an astronaut, a rocket, ...) "
        "with EfficientNet-Lite0 trained on ImageNet (shipped offline) for their predicted classes, with "
        "absLRP and the classic EpsilonPlusFlat composite, print the predictions and write one PNG (red "
        "positive, blue negative, white zero). --model digits explains one test image of each digit with "
        "the three digits models that ship inside the package (a VGG-style CNN, a ResNet and a ViT); "
        "vgg, resnet or vit one of them; shapes the small shapes CNN.",
    )
    ex.add_argument(
        "--model",
        choices=("photos", "digits", "all", "vgg", "resnet", "vit", "shapes"),
        default="photos",
        help="what to explain (default: %(default)s: ImageNet photos; digits (or all): the three digits models)",
    )
    ex.add_argument(
        "--out",
        default="relprop-example.png",
        metavar="PATH",
        help="where to write the PNG (default: %(default)s)",
    )
    ex.add_argument(
        "--rules",
        type=rules_name,
        choices=RULES,
        default=None,
        help="rule set (default: abslrp; for the photos abslrp and epsilon-plus-flat side by side)",
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


def _run_digits(args: argparse.Namespace, out: Path) -> int:
    """``relprop example`` on the shipped digits models: one test image per digit."""
    import torch

    import relprop
    from relprop.apps import models, viz

    x, y = models.load_digits_test().tensors
    raw = models.load_digits_test(raw=True).tensors[0]
    idx = torch.stack([(y == c).nonzero()[0, 0] for c in range(models.CLASSES)])
    images, strokes = x[idx], raw[idx] > 0.5
    names = [str(c) for c in range(models.CLASSES)]
    target = parse_target(args.target, names)
    chosen_by = list(models.DIGITS_MODELS) if args.model in ("all", "digits") else [args.model]
    rule_set = registry.rule_set(args.rules)
    print(f"relprop example: one test image per digit, rules {rule_set!r}")
    print(f"  {'model':<7} {'test acc':>8}  {'predicted':<11} {'on strokes':>10}  time")
    rows = {}
    for name in chosen_by:
        model = models.load_digits_model(name)
        with torch.no_grad():
            predicted = model(images).argmax(1)
        chosen = predicted if target is None else torch.full_like(predicted, target)
        graph = relprop.trace(model, rules=rule_set)
        start = time.perf_counter()
        R = graph.explain(images, chosen)
        first = time.perf_counter() - start
        start = time.perf_counter()
        graph.explain(images, chosen)
        again = time.perf_counter() - start
        pos = R.sum(1).clamp(min=0).flatten(1)
        share = float(((pos * strokes.flatten(1)).sum(1) / pos.sum(1).clamp(min=1e-30)).mean())
        guess = "".join(str(int(p)) for p in predicted)
        print(
            f"  {name:<7} {models.digits_accuracy(name):>8.3f}  {guess:<11} {share:>10.2f}  "
            f"trace + explain {first:.2f} s, again {again * 1000:.0f} ms"
        )
        rows[name] = R
    print(
        f"  true digits {''.join(names)}; 'on strokes': share of the positive relevance on the "
        f"strokes, which cover {float(strokes.float().mean()):.2f} of each image"
    )
    if target is not None:
        print(f"  explained class {target} for every image")
    viz.save_rows(out, rows, raw[idx].unsqueeze(1), overlay=args.overlay, titles=[f"digit {n}" for n in names])
    print(f"wrote {out}")
    return 0


def _run_photos(args: argparse.Namespace, out: Path) -> int:
    """``relprop example`` on real photos: the ImageNet model, absLRP and a classic composite."""
    from .imagenet import imagenet_classes
    from .photos import RULES as PHOTO_RULES
    from .photos import run_photos

    rules = PHOTO_RULES if args.rules is None else (args.rules,)
    target = parse_target(args.target, imagenet_classes())
    print("relprop example: EfficientNet-Lite0 (ImageNet) on scikit-image's sample photos")
    run_photos(out, rules, layout="overlay" if args.overlay else "heatmap", target=target)
    print("  (relprop --model digits: the shipped digits models)")
    return 0


def run_example(args: argparse.Namespace) -> int:
    """``relprop example``: explain the shipped digits models (or the shapes example) and write the PNG."""
    import torch

    import relprop
    from relprop.apps import viz
    from relprop.apps.example import load_example

    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"cannot write {out}: directory {out.parent} does not exist")
    if args.model == "photos":
        return _run_photos(args, out)
    if args.rules is None:
        args.rules = "abslrp"
    if args.model != "shapes":
        return _run_digits(args, out)
    ex = load_example()
    target = parse_target(args.target, ex.class_names)
    with torch.no_grad():
        predicted = ex.model(ex.images).argmax(1)
    chosen = predicted if target is None else torch.full_like(predicted, target)

    rule_set = registry.rule_set(args.rules)
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
