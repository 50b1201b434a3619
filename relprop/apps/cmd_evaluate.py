"""``relprop evaluate``: the GAE table of attribution methods on models and data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .loading import load_model

if TYPE_CHECKING:
    from relprop.evaluation.comparison import Comparison

    from .distributed import World

__all__ = ["add_parser", "run_evaluate"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="rank attribution methods with GAE on the shipped digits models (or your own)",
        description="Evaluate attribution methods with the GAE metric (Vukadin et al. 2024, section 3.2): "
        "LC, C and GAE per method and model with 95 % intervals, and a paired Wilcoxon test of each "
        "method's GAE against absLRP. Writes the table to the terminal and, in --out-dir, gae.csv, "
        "gae.json and gae.png. Defaults: the three shipped digits models, their test split, every "
        "method that can run (Captum, grad-cam methods need the 'evaluate' extra). On several processes: "
        "torchrun --nproc-per-node N -m relprop evaluate ... (the GAE batches are shared out; the same files).",
    )
    ev.add_argument(
        "--model",
        action="append",
        metavar="NAME|MODULE:ATTR|FILE",
        help="a shipped model (vgg, resnet, vit), an importable 'module:attr' or 'file.py:attr' (an nn.Module "
        "or a function returning one), imagenet, timm:NAME, or a file saved with torch.save(model) (needs "
        "--allow-pickle); repeat for several "
        "(default: vgg, resnet, vit)",
    )
    ev.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow a --model FILE saved with torch.save(model): unpickling it runs code from the file",
    )
    ev.add_argument(
        "--data",
        metavar="DIR|MODULE:ATTR",
        help="images in class sub-folders (DIR/<class>/<image>), or 'module:attr' naming a Dataset of "
        "(image, label) (default: the shipped digits test split; required with your own model)",
    )
    ev.add_argument("--size", type=int, help="resize the folder's images to SIZE x SIZE (even)")
    ev.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1: grayscale, 3: RGB (default: 3)")
    ev.add_argument("--mean", type=float, nargs="+", help="normalize the folder's images: mean per channel")
    ev.add_argument("--std", type=float, nargs="+", help="normalize the folder's images: std per channel")
    ev.add_argument("--methods", help="comma-separated method names (default: every method that can run)")
    ev.add_argument(
        "--abslrp-variant",
        choices=("vgg", "resnet"),
        help="absLRP's variant for every model: vgg = AbsLRP(maxpool_divide=False) (the authors' rule set for "
        "VGGs), resnet = AbsLRP() (theirs for ResNets); default: the shipped models' own (vgg: vgg, resnet and "
        "vit: resnet), resnet for your own models. The methods 'absLRP (no maxpool division)' and 'absLRP "
        "(maxpool division)' run one variant each, whatever this says",
    )
    ev.add_argument("--max-images", type=int, metavar="N", help="use only the first N images")
    ev.add_argument("--batch-size", type=int, default=16, help="images per batch, a multiple of 4 (default: 16)")
    ev.add_argument("--steps", type=int, default=10, help="perturbation steps T (default: 10)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the positive-image sampling (default: 0)")
    ev.add_argument(
        "--quadrant-classes",
        choices=("label", "predicted"),
        default="label",
        help="classes behind the mosaic score map: the dataset labels (the authors' code; C is unbounded for "
        "a misclassified positive image) or the predicted classes (the paper's text; C <= 1) (default: label)",
    )
    ev.add_argument(
        "--granularity",
        choices=("feature", "pixel"),
        default="feature",
        help="rank, mask and compare per input feature C x H x W (the authors' code) or per pixel, channels "
        "summed (default: feature)",
    )
    ev.add_argument(
        "--grouping",
        choices=("consecutive", "authors"),
        default="consecutive",
        help="each mosaic holds its own four images, or the authors' indexing at batch sizes over 4 "
        "(default: consecutive; the same at batch size 4)",
    )
    ev.add_argument(
        "--quantus",
        nargs="*",
        metavar="METRIC",
        help="also run Quantus metrics (default when given without names: ROAD Focus LocalLipschitzEstimate)",
    )
    ev.add_argument("--out-dir", default="relprop-evaluation", help="output folder (default: %(default)s)")
    ev.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    ev.set_defaults(run=run_evaluate)


def _load_data(args: argparse.Namespace) -> object:
    import importlib

    from torch.utils.data import Dataset

    from relprop.errors import InputError
    from relprop.evaluation.comparison import image_folder

    spec = args.data
    if Path(spec).is_dir():
        return image_folder(spec, size=args.size, channels=args.channels, mean=args.mean, std=args.std)
    if ":" in spec:
        where, attr = spec.rsplit(":", 1)
        try:
            obj = getattr(importlib.import_module(where), attr)
        except (ImportError, AttributeError) as e:
            raise InputError(f"--data {spec}: {e}") from e
        obj = obj() if callable(obj) and not isinstance(obj, Dataset) else obj
        if not hasattr(obj, "__len__") or not hasattr(obj, "__getitem__"):
            raise InputError(f"--data {spec} gave a {type(obj).__name__}, expected a Dataset of (image, label)")
        return obj
    raise InputError(f"--data {spec!r} is neither a folder nor a 'module:attr'")


def run_evaluate(args: argparse.Namespace) -> int:
    """``relprop evaluate``: GAE table of every method on every model; CSV, JSON and PNG in --out-dir.

    Under torchrun (``torchrun --nproc-per-node N -m relprop evaluate ...``) every process scores
    its share of the GAE batches (gloo, on the CPU; each batch's randomness depends only on the seed
    and its index), rank 0 merges the per-image scores by data index (``GAEResult.merge``), runs the
    Quantus metrics if asked, and writes the same files as one process.
    """
    from . import distributed

    with distributed.session("cpu") as world:
        return _evaluate(args, world)


def _merged(result: Comparison, world: World) -> Comparison | None:
    """One process's Comparison from every rank's shard (on rank 0; None on the others)."""
    import dataclasses

    from relprop.evaluation.metrics import GAEResult

    from . import distributed

    if not world.distributed:
        return result
    parts = distributed.gather(result, world)
    if not world.main:
        return None
    gae = {name: GAEResult.merge([p.gae[name] for p in parts]) for name in result.gae}
    seconds = {name: max(p.seconds[name] for p in parts) for name in result.seconds}
    return dataclasses.replace(parts[0], gae=gae, seconds=seconds)


def _evaluate(args: argparse.Namespace, world: World) -> int:
    from relprop.apps import models
    from relprop.errors import InputError
    from relprop.evaluation.comparison import ABSLRP_RULE_SETS, DIGITS_ABSLRP_VARIANTS, compare

    specs = args.model or list(models.DIGITS_MODELS)
    loaded = [load_model(s, allow_pickle=args.allow_pickle) for s in specs]
    nets = dict(loaded)
    if len(nets) < len(loaded):
        raise InputError(f"two --model values have the same name ({', '.join(n for n, _ in loaded)}); name them apart")
    own = [s for s in specs if s not in models.DIGITS_MODELS]
    if own and not args.data:
        raise InputError(f"--data is needed with your own model ({', '.join(own)}): a folder or 'module:attr'")
    data = _load_data(args) if args.data else models.load_digits_test()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    variants = {
        name: args.abslrp_variant or (DIGITS_ABSLRP_VARIANTS[s] if s in models.DIGITS_MODELS else "resnet")
        for s, (name, _) in zip(specs, loaded)
    }
    for name, variant in variants.items() if world.main else ():
        print(f"absLRP on {name}: {ABSLRP_RULE_SETS[variant]} (variant {variant})")
    quantus: tuple[str, ...] = ()
    if args.quantus is not None:
        from relprop.evaluation.quantus_metrics import QUANTUS_METRICS

        quantus = tuple(args.quantus) or QUANTUS_METRICS
    result = compare(
        nets,
        data,
        methods,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        max_images=args.max_images,
        quantus_metrics=quantus if world.main else (),
        progress=args.progress and world.main,
        abslrp_variant=variants,
        shard=(world.rank, world.size) if world.distributed else None,
        granularity=args.granularity,
        quadrant_classes=args.quadrant_classes,
        grouping=args.grouping,
    )
    result = _merged(result, world)
    if result is None:
        return 0
    print(result)
    for model, res in result.gae.items():
        for method, batch, message in res.failures:
            print(f"relprop: warning: {method} failed on batch {batch} of {model}: {message}", file=sys.stderr)
    for model, (count, largest) in result.unbounded_c().items():
        print(
            f"relprop: note: on {model}, C > 1 for up to {count} positive image(s) per method (largest {largest:.3g}): "
            "with the label-based score map (the authors' code) a positive image the model misclassifies has an "
            "unbounded C and can dominate the means; --quadrant-classes predicted bounds C by 1",
            file=sys.stderr,
        )
    for model, res in result.quantus.items():
        for method, metric, message in res.failures:
            print(f"relprop: warning: {method} failed in Quantus {metric} on {model}: {message}", file=sys.stderr)
    result.to_csv(out / "gae.csv")
    result.to_json(out / "gae.json")
    result.plot(out / "gae.png")
    print(f"wrote {out / 'gae.csv'}, {out / 'gae.json'}, {out / 'gae.png'}")
    return 0
