"""``relprop explain``: heatmaps and relevance files for your own images, on one process or many.

    relprop explain photos/ --model imagenet --out heat/
    relprop explain digits/ --model vgg --target 3 --rules epsilon
    relprop explain imgs/ --model timm:resnet18 --weights resnet18.safetensors
    relprop explain imgs/ --model mymodels:Net --weights net.pt --size 64 --mean 0.5 --std 0.5
    torchrun --nproc-per-node 4 -m relprop explain photos/ --model imagenet --out heat/

Outputs, for an image at ``<rel>/<name>.<ext>`` under a given folder (``<name>.<ext>`` given
directly): ``OUT/<rel>/<name>.npy``, the relevance (float32, shaped like the model input, e.g.
(3, H, W)), and ``OUT/<rel>/<name>.png``, the image as the model sees it beside its heatmap,
titled with the prediction and the explained class.  ``OUT/predictions.jsonl``: one JSON object
per image, sorted by output name: ``path`` (the image as found), ``png`` and ``npy`` (relative
to OUT), ``model``, ``weights``, ``rules``, ``predicted`` and ``predicted_name``, ``target`` and
``target_name`` (the class explained), ``score`` (the model's output for the target) and
``probability`` (its softmax).  ``OUT/failures.jsonl`` (only when some image failed): ``path``
and ``error`` per failed image.

Resuming (:mod:`relprop.apps.outputs`): each image's two files are written to hidden temporary
files and renamed into place only when both are complete. Then its prediction line is appended
to a part file (``OUT/.relprop-explain/<run>-rank<r>.jsonl``, flushed per batch). At the end
rank 0 merges predictions.jsonl and the part files (de-duplicated by output file, the newest
line wins), writes predictions.jsonl atomically and removes the part files. A re-run skips an
image whose .png, .npy and prediction line (same image path, model, weights, rules and target)
exist, so an interrupted run loses nothing it finished; ``--force`` recomputes everything.

Failures: an image that cannot be read or that the model cannot take is reported with its
file; the other images are still done, the failures are listed at the end and the exit status
is 1.  A bad --model, --weights, --target or option fails at once, before any image.

Distributed (:mod:`relprop.apps.distributed`): under torchrun, rank 0 finds the images and the
ones still to do, every rank takes its strided share (each image exactly once) and writes its
own files; OUT must be one folder every process sees (on several nodes, a shared file system).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import RULES, parse_target, rules_name
from .outputs import FAILURES, PREDICTIONS, Store, write_atomic

if TYPE_CHECKING:
    from .distributed import World

__all__ = ["Store", "add_parser", "run_explain"]

#: failures printed at the end (all of them are in failures.jsonl)
SHOWN_FAILURES = 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "explain",
        help="explain your own images with a model: a heatmap PNG and a relevance .npy per image",
        description="Explain images with a model: for each image a PNG (the image beside its heatmap) and "
        "a .npy (the relevance, float32, shaped like the model input) in --out, mirroring the input "
        "folders, and OUT/predictions.jsonl (one line per image: path, predicted class and name, target, "
        "score). A re-run skips images already done (--force recomputes); unreadable images or images "
        "the model cannot take are listed at the end (exit status 1) while the others are done. Runs "
        "on several processes with torchrun: torchrun --nproc-per-node N -m relprop explain ...",
        epilog="Safe loading: --weights is read with torch.load(weights_only=True) or as .safetensors; a "
        "--model FILE saved with torch.save(model) runs code from the file when loaded, so it needs "
        "--allow-pickle. Preprocessing: imagenet and the digits models (vgg, resnet, vit) use their own; "
        "timm:NAME uses timm's data config (--size/--mean/--std replace its values); your own model "
        "gets RGB in [0, 1], resized to --size and normalized with --mean/--std when given (without "
        "--size each image keeps its size, which must be one the model takes).",
    )
    ex.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    ex.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="vgg, resnet, vit (shipped digits models), imagenet (EfficientNet-Lite0), timm:NAME (random "
        "weights unless --weights), 'module:attr' or 'file.py:attr' (an nn.Module or a function returning "
        "one), or a file saved with torch.save(model) (needs --allow-pickle)",
    )
    ex.add_argument("--weights", metavar="FILE", help="a state dict (torch.save(model.state_dict())) or .safetensors")
    ex.add_argument(
        "--allow-pickle", action="store_true", help="allow --model FILE, a pickled module (runs code from it)"
    )
    ex.add_argument(
        "--target", metavar="CLASS|NAME", help="class to explain, an index or a name (default: the predicted class)"
    )
    ex.add_argument("--classes", metavar="FILE", help="class names, one per line (default: the model's, or indices)")
    ex.add_argument("--rules", type=rules_name, choices=RULES, default="abslrp", help="rule set (default: %(default)s)")
    ex.add_argument("--size", type=int, metavar="N", help="resize images to N x N (your own models, timm)")
    ex.add_argument("--mean", type=float, nargs="+", help="normalize: mean per channel (your own models, timm)")
    ex.add_argument("--std", type=float, nargs="+", help="normalize: std per channel (your own models, timm)")
    ex.add_argument("--channels", type=int, choices=(1, 3), default=3, help="your own models: 1 grey, 3 RGB")
    ex.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per batch (default: 16)")
    ex.add_argument("--workers", type=int, default=0, metavar="N", help="image-reading processes (default: 0)")
    ex.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available; torchrun: cuda:LOCAL_RANK)")
    ex.add_argument("--out", default="relprop-explain", metavar="DIR", help="output folder (default: %(default)s)")
    ex.add_argument("--force", action="store_true", help="recompute images whose outputs exist")
    ex.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    ex.set_defaults(run=run_explain)


# -- the model and its images ----------------------------------------------------------------


@dataclass
class Explainer:
    """A loaded model with its rule set, preprocessing, class names and target."""

    spec: str
    weights: str | None
    rules: str
    loaded: Any
    preprocess: Any
    names: list[str] | None
    target: int | None
    device: str
    graph: Any = None
    #: whether every image is resized to one size (else each keeps its own)
    sized: bool = True
    checked: bool = False

    def matches(self, record: dict, path: str) -> bool:
        """Whether a prediction line was made by these settings for the image at ``path``."""
        same = (record.get(k) for k in ("path", "model", "weights", "rules"))
        if tuple(same) != (path, self.spec, self.weights, self.rules):
            return False
        wanted = record.get("predicted") if self.target is None else self.target
        return record.get("target") == wanted

    def name(self, index: int) -> str:
        return self.names[index] if self.names is not None else str(index)

    def check_output(self, logits: Any) -> None:
        """Once: the output is (batch, classes) and fits --classes and --target (else a fatal InputError)."""
        from relprop.errors import InputError

        if self.checked:
            return
        if logits.dim() != 2:
            raise InputError(
                f"--model {self.spec} gives an output shaped {tuple(logits.shape)}; relprop explain takes "
                "classifiers, (batch, classes)"
            )
        classes = logits.shape[1]
        if self.names is not None and len(self.names) != classes:
            raise InputError(f"{len(self.names)} class names for a model with {classes} outputs; expected as many")
        if self.target is not None and self.target >= classes:
            raise InputError(f"--target {self.target} is not a class of a model with {classes} outputs")
        self.checked = True


def _logits(out: Any) -> Any:
    """The explained output: a tensor, the first element of a tuple, or ``logits`` of a dict."""
    from collections.abc import Mapping

    if isinstance(out, (tuple, list)):
        out = out[0]
    elif isinstance(out, Mapping):
        out = out["logits"] if "logits" in out else next(iter(out.values()))
    return out.detach().float()


def _class_names(args: argparse.Namespace, loaded: Any) -> list[str] | None:
    from relprop.errors import InputError

    if args.classes is None:
        return loaded.classes
    try:
        lines = Path(args.classes).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"--classes {args.classes}: cannot read it: {e}") from e
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise InputError(f"--classes {args.classes} has no class names (expected one per line)")
    return names


def _target(value: str | None, names: list[str] | None) -> int | None:
    from relprop.errors import TargetError

    if names is not None or value is None:
        return parse_target(value, names or [])
    if not value.isdigit():
        raise TargetError(f"--target {value!r}: a class name needs class names (--classes FILE); or give an index")
    return int(value)


def build_explainer(args: argparse.Namespace, device: str) -> Explainer:
    """Load the model, its preprocessing and class names; check --target.  Fails before any image."""
    import relprop
    from relprop.chunking import check_batch_size
    from relprop.errors import InputError
    from relprop.rules import registry

    from .images import preprocess_for
    from .loading import load_model_spec

    check_batch_size(args.batch_size)
    if args.workers < 0:
        raise InputError(f"--workers must be 0 (read images in this process) or more, got {args.workers}")
    loaded = load_model_spec(args.model, weights=args.weights, allow_pickle=args.allow_pickle)
    preprocess = preprocess_for(loaded.kind, loaded.data, args.size, args.mean, args.std, args.channels)
    names = _class_names(args, loaded)
    target = _target(args.target, names)
    model = loaded.model.to(device)
    graph = relprop.trace(model, registry.rule_set(args.rules))
    sized = loaded.kind != "user" or args.size is not None
    return Explainer(args.model, args.weights, args.rules, loaded, preprocess, names, target, device, graph, sized)


# -- explaining ------------------------------------------------------------------------------


class _Images:
    """A Dataset of this rank's images: (index, input tensor or None, error message or None)."""

    def __init__(self, items: Sequence[Any], preprocess: Any) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        from relprop.errors import InputError

        from .images import read_image

        try:
            image = read_image(self.items[i].path)
        except InputError as e:
            return i, None, str(e)
        try:
            return i, self.preprocess(image), None
        except Exception as e:  # noqa: BLE001 - a transform can fail in many ways on one odd image
            return i, None, f"cannot preprocess the image: {type(e).__name__}: {_short(e)}"


def _short(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _batches(items: Sequence[Any], ex: Explainer, args: argparse.Namespace) -> Iterator[list]:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _Images(items, ex.preprocess), batch_size=args.batch_size, num_workers=args.workers, collate_fn=list
    )
    yield from loader


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the tracebacks torch.export's fake tensors log when the model refuses an input
    (the error itself is raised and reported, naming the image)."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _explain_group(ex: Explainer, xs: list) -> tuple[Any, Any]:
    """(relevance, logits) of images of one shape, on the CPU."""
    import torch

    x = torch.stack(xs).to(ex.device)
    with _quiet_export():
        e = ex.graph.explanation(x, ex.target)
    return e.relevance.detach().float().cpu(), _logits(e.output).cpu()


def _model_error(ex: Explainer, x: Any, e: Exception) -> str:
    hint = "" if ex.sized else " (without --size N each image keeps its own size)"
    return (
        f"the model cannot take this image (input {tuple(x.shape)}, {ex.preprocess.description}){hint}: "
        f"{type(e).__name__}: {_short(e)}"
    )


def explain_batch(ex: Explainer, batch: list, items: Sequence[Any], store: Store) -> tuple[list[dict], list]:
    """Explain and write one batch: its prediction lines and its failures ``(path, error)``."""
    failures = [(items[i].path, err) for i, x, err in batch if x is None]
    groups: dict[tuple, list] = {}
    for i, x, _ in batch:
        if x is not None:
            groups.setdefault(tuple(x.shape), []).append((i, x))
    records = []
    for group in groups.values():
        try:
            results = [(group, _explain_group(ex, [x for _, x in group]))]
        except Exception:  # noqa: BLE001 - find the image(s) the model cannot take, one at a time
            results = []
            for i, x in group:
                try:
                    results.append(([(i, x)], _explain_group(ex, [x])))
                except Exception as e:  # noqa: BLE001 - any model error is this image's failure
                    failures.append((items[i].path, _model_error(ex, x, e)))
        for members, (R, logits) in results:
            ex.check_output(logits)
            for j, (i, x) in enumerate(members):
                try:
                    records.append(_write_one(ex, store, items[i], x, R[j], logits[j]))
                except OSError as e:
                    failures.append((items[i].path, f"cannot write its outputs: {e}"))
    return records, failures


def _write_one(ex: Explainer, store: Store, item: Any, x: Any, R: Any, logits: Any) -> dict:
    """Write one image's .npy and .png; its prediction line."""
    predicted = int(logits.argmax())
    target = predicted if ex.target is None else ex.target
    probability = float(logits.softmax(0)[target])
    record = {
        "path": item.path,
        "png": f"{item.key}.png",
        "npy": f"{item.key}.npy",
        "model": ex.spec,
        "weights": ex.weights,
        "rules": ex.rules,
        "predicted": predicted,
        "predicted_name": ex.name(predicted),
        "target": target,
        "target_name": ex.name(target),
        "score": float(logits[target]),
        "probability": probability,
    }
    p = float(logits.softmax(0)[predicted])
    title = f"{Path(item.path).name}: predicted {ex.name(predicted)} ({p:.0%}), explained {ex.name(target)}"
    picture = ex.preprocess.picture(x)
    store.save(item.key, R.numpy().astype("float32"), lambda path: draw(path, R, picture, title))
    return record


def draw(path: Path, R: Any, image: Any, title: str) -> None:
    """The PNG of one image: the image beside its heatmap, titled (relprop.viz)."""
    from relprop.apps import viz

    viz.figure(R, image, title=title).save(path, format="PNG")


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Plan:
    """What rank 0 found: the run's id, the images still to do, and how many were skipped."""

    run: str
    todo: list
    skipped: int


def make_plan(args: argparse.Namespace, ex: Explainer, store: Store) -> Plan:
    """Find the images; leave out those done by the same settings (unless --force)."""
    from .images import discover

    items = discover(args.inputs, exclude=store.root)
    run = f"{time.time_ns():020d}"
    if args.force:
        return Plan(run, items, 0)
    records, _, _ = store.records()
    todo = []
    for item in items:
        record = records.get(item.key)
        done = record is not None and ex.matches(record, item.path) and all(p.is_file() for p in store.paths(item.key))
        if not done:
            todo.append(item)
    return Plan(run, todo, len(items) - len(todo))


def _agree(world: World, make: Callable[[], Any]) -> Any:
    """``make()`` on rank 0, its result on every rank; an error on rank 0 is raised on every rank."""
    from relprop.errors import RelpropError

    from . import distributed

    result: Any = None
    if world.main:
        try:
            result = make()
        except (RelpropError, OSError) as e:
            result = e
    result = distributed.broadcast(result, world)
    if isinstance(result, (RelpropError, OSError)):
        raise result
    return result


def _process(args: argparse.Namespace, ex: Explainer, store: Store, plan: Plan, world: World) -> tuple[int, list]:
    """This rank's share of the plan, batch by batch: (images done, failures)."""
    from tqdm import tqdm

    from . import distributed

    mine = distributed.shard(plan.todo, world)
    label = f"rank {world.rank}/{world.size}: " if world.distributed else ""
    bar = tqdm(total=len(mine), desc=f"{label}explain", unit="img", disable=not args.progress or not world.main)
    done, failures = 0, []
    try:
        for batch in _batches(mine, ex, args):
            records, failed = explain_batch(ex, batch, mine, store)
            if records:
                store.append(plan.run, world.rank, records)
            done += len(records)
            failures += failed
            bar.update(len(batch))
    finally:
        bar.close()
        store.close()
    return done, failures


def _report(args: argparse.Namespace, store: Store, plan: Plan, totals: list, seconds: float, world: World) -> int:
    """Rank 0: merge the predictions, write failures.jsonl, print the summary; the exit status."""
    done = sum(n for n, _ in totals)
    failures = sorted(f for _, fs in totals for f in fs)
    lines = store.merge()
    failures_file = store.root / FAILURES
    if failures:
        write_atomic(failures_file, "".join(json.dumps({"path": p, "error": e}) + "\n" for p, e in failures))
    else:
        failures_file.unlink(missing_ok=True)
    rate = f", {done / seconds:.1f} images/s" if done and seconds > 0 else ""
    procs = f" on {world.size} processes" if world.distributed else ""
    print(
        f"relprop explain: {done} explained, {plan.skipped} already done (skipped), {len(failures)} failed "
        f"in {seconds:.1f} s{rate}{procs}; {store.root / PREDICTIONS}: {lines} images"
    )
    if failures:
        print(f"relprop: error: {len(failures)} images failed:", file=sys.stderr)
        for path, error in failures[:SHOWN_FAILURES]:
            print(f"  {path}: {error}", file=sys.stderr)
        if len(failures) > SHOWN_FAILURES:
            print(f"  ... and {len(failures) - SHOWN_FAILURES} more", file=sys.stderr)
        print(f"  (all of them in {failures_file})", file=sys.stderr)
    return 1 if failures else 0


def run_explain(args: argparse.Namespace) -> int:
    """``relprop explain``: explain every image (this rank's share under torchrun); 1 if any failed."""
    from . import distributed

    with distributed.session(args.device) as world:
        ex = build_explainer(args, world.device)
        if ex.loaded.warning and world.main:
            print(f"relprop: warning: {ex.loaded.warning}", file=sys.stderr)
        store = Store(Path(args.out))
        store.root.mkdir(parents=True, exist_ok=True)
        plan = _agree(world, lambda: make_plan(args, ex, store))
        start = time.perf_counter()
        done, failures = _process(args, ex, store, plan, world)
        totals = distributed.all_gather((done, failures), world)
        seconds = time.perf_counter() - start
        status = _report(args, store, plan, totals, seconds, world) if world.main else 0
        status = max(status, int(any(fs for _, fs in totals)))
    return status
