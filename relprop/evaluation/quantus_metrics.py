"""Quantus metrics for relprop methods: ROAD, Focus and LocalLipschitzEstimate.

The "other metrics" tables of Vukadin et al. 2024 (arXiv 2412.09311) score each
attribution method with Quantus (``pip install 'relprop[quantus]'``, quantus
0.6.0).  This module exposes any relprop :data:`~relprop.metrics.Method` as a
Quantus ``explain_func`` and runs the three metrics over a data set::

    from relprop.evaluation.methods import relprop_method, random_method
    from relprop.evaluation.quantus_metrics import evaluate_quantus
    res = evaluate_quantus(model, {"absLRP": relprop_method(), "random": random_method()}, test_set)
    print(res.table())

Settings (small, documented; override any Quantus constructor argument with
``metric_kwargs={"ROAD": {...}}``):

* Every metric sees the *pixel map*: the relevance summed over channels
  (``channels="sum"``), as relprop's heatmaps and GAE do.  The target of every
  explanation is the dataset label (the Quantus convention).
* **ROAD** (MoRF order, lower is better): ``percentages = 10, 20, ..., 90`` % of
  the pixels, ranked by the pixel map, are replaced by Quantus' noisy linear
  imputation (``noise=0.01``, all channels of a pixel together); a perturbed image
  scores 1 while the model still predicts its label.  The per-image score is the
  mean over the percentages (a normalised area under that image's MoRF curve);
  the mean over images is the mean of Quantus' accuracy curve, which is kept in
  :attr:`QuantusResult.road_curves`.
* **Focus** (higher is better): for each consecutive group of 4 images of a
  batch, one member (drawn with the seed) is the anchor; its label is the target
  class.  Its mosaic holds the anchor, another image of the same label and two
  images of other labels (the Quantus / Arias-Duart convention: 2 target-class
  quadrants out of 4), drawn from the batch and from one cached image per label of
  earlier batches, placed in random quadrants and combined at half resolution by
  :func:`relprop.metrics.mosaic`.  If no second image of the label is available the
  mosaic has one target quadrant and three others.  Images beyond a multiple of 4
  in a batch make no mosaic; groups without any image of another label are skipped.
* **LocalLipschitzEstimate** (lower is better): ``nr_samples=10`` Gaussian input
  perturbations with ``perturb_std=0.1`` (Quantus' default; the digits inputs
  are standardised, so 0.1 is a tenth of the data's spread); maps are divided by
  their own maximum |value| per image (Quantus' default divides a whole batch by
  one maximum, which made a score depend on its batch neighbours).

Quantus' own defaults are ``percentages = 1, 3, ..., 99`` and ``nr_samples=200``
(pass them in ``metric_kwargs`` for a full-size run).  Cost per batch and method:
ROAD 1 explanation and one sparse solve per image and percentage; Focus 1
explanation of the mosaics; LocalLipschitzEstimate ``1 + nr_samples`` explanations.

Determinism: the NumPy and torch global generators are seeded from
``(seed, batch, metric)`` before each Quantus call, so every method sees the same
perturbations whatever other methods or metrics run, and restored afterwards.

Quantus runs with ``disable_warnings=True`` and Python warnings silenced during
its calls; a method's exception inside Quantus is recorded in
:attr:`QuantusResult.failures`.  Quantus refuses a batch whose attributions are
all equal (``AssertionError``, e.g. :func:`relprop.metrics.constant_method`):
that is recorded as a failure too.

Quantus 0.6.0 problems worked around here (nothing in Quantus is patched):

* ``ROAD`` ranks C*H*W attribution entries but its ``noisy_linear_imputation``
  indexes H*W pixels, so any 3-channel input raised ``IndexError``; ROAD here gets
  a perturbation function that turns the ranked entries into the top pixels.
* ``ROAD.custom_postprocess`` averages only the first batch it saw and keeps no
  per-image values; a local subclass keeps the (images, percentages) matrix.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from .metrics import Method, mosaic

__all__ = [
    "DEFAULT_SETTINGS",
    "HIGHER_IS_BETTER",
    "QUANTUS_METRICS",
    "QuantusResult",
    "QuantusTable",
    "as_explain_func",
    "evaluate_quantus",
    "explain_func",
    "focus_mosaics",
    "pixel_imputation",
]

QUANTUS_METRICS = ("ROAD", "Focus", "LocalLipschitzEstimate")
HIGHER_IS_BETTER = {"ROAD": False, "Focus": True, "LocalLipschitzEstimate": False}
CHANNELS = ("keep", "sum", "sum_broadcast")
#: Quantus constructor arguments used by :func:`evaluate_quantus` (see the module docstring)
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "ROAD": {"percentages": tuple(range(10, 100, 10)), "noise": 0.01},
    "Focus": {},
    "LocalLipschitzEstimate": {"nr_samples": 10, "perturb_std": 0.1},
}
_PIP_HINT = "pip install 'relprop[quantus]'"


def _quantus() -> Any:
    try:
        import quantus
    except ImportError as e:
        raise InputError(f"the Quantus metrics need the quantus package: {_PIP_HINT}") from e
    return quantus


# ---------------------------------------------------------------- explain_func


@functools.lru_cache(maxsize=1)
def _default_method() -> Method:
    from .methods import relprop_method

    return relprop_method()


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def explain_func(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    *,
    method: Method | None = None,
    device: str | torch.device | None = None,
    channels: str = "keep",
    **kwargs: Any,
) -> np.ndarray:
    """A Quantus ``explain_func``: relevance of ``inputs`` (N, C, H, W) for ``targets`` as a NumPy array.

    ``inputs``: array or tensor, channel first (Quantus passes float32 NumPy);
    ``targets``: N class indices (or one for all).  ``method``: a relprop
    :data:`~relprop.metrics.Method` (default absLRP, :func:`relprop.metrics.relprop_method`);
    ``device``: where the inputs go (default: the model's device).  ``channels``:
    ``"keep"`` returns the method's (N, C, H, W) map, ``"sum"`` the pixel map
    (N, 1, H, W), ``"sum_broadcast"`` the pixel map repeated over the C channels.
    """
    if kwargs:
        raise InputError(f"unexpected explain_func arguments {sorted(kwargs)}; it takes method, device and channels")
    if channels not in CHANNELS:
        raise InputError(f"channels must be one of {', '.join(CHANNELS)}; got {channels!r}")
    if method is None:
        method = _default_method()
    if not callable(method):
        raise InputError(f"method must be a callable (model, x, target) -> relevance, got {type(method).__name__}")
    dev = torch.device(device) if device is not None else _model_device(model)
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    x = inputs.detach() if isinstance(inputs, Tensor) else torch.as_tensor(np.asarray(inputs), dtype=dtype)
    x = x.to(dev)
    if x.dim() != 4:
        raise InputError(f"explain_func expects (N, C, H, W) inputs, got shape {tuple(x.shape)}")
    t = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, Tensor) else targets)).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(x.shape[0])
    if t.numel() != x.shape[0]:
        raise InputError(f"got {t.numel()} targets for {x.shape[0]} inputs")
    a = method(model, x, t.to(dev))
    if not isinstance(a, Tensor) or a.shape != x.shape:
        got = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise InputError(f"the method returned {got} for inputs of shape {tuple(x.shape)}; expected the same shape")
    a = a.detach()
    if not torch.isfinite(a).all():
        raise InputError("the method returned non-finite relevance")
    if channels != "keep":
        a = a.sum(1, keepdim=True)
        if channels == "sum_broadcast":
            a = a.expand(x.shape).contiguous()
    return a.cpu().numpy()


def as_explain_func(method: Method, channels: str = "keep") -> Callable[..., np.ndarray]:
    """``explain_func`` bound to ``method`` (and ``channels``), to pass to a Quantus metric."""

    def func(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        kwargs.setdefault("channels", channels)
        return explain_func(model, inputs, targets, method=method, **kwargs)

    return func


# ---------------------------------------------------------------- ROAD helpers


def pixel_imputation(arr: np.ndarray, indices: np.ndarray, noise: float = 0.01, **kwargs: Any) -> np.ndarray:
    """ROAD perturbation for (C, H, W) images: Quantus' noisy linear imputation of whole pixels.

    ``indices`` are flat (C*H*W) attribution entries in ROAD's ranking order (as
    ROAD passes them); the first ``len(indices) // C`` distinct pixels they name are
    imputed in every channel.
    """
    from quantus.functions.perturb_func import noisy_linear_imputation

    c, h, w = arr.shape
    pix = np.asarray(indices, dtype=np.int64) % (h * w)
    _, first = np.unique(pix, return_index=True)
    top = pix[np.sort(first)][: len(pix) // c]
    if len(top) == 0:
        return arr.copy()
    return noisy_linear_imputation(arr, top, noise=noise)


@functools.lru_cache(maxsize=1)
def _road_class() -> type:
    quantus = _quantus()

    class _ROAD(quantus.ROAD):  # keeps the per-image matrix of every batch
        def custom_postprocess(self, **kwargs: Any) -> None:
            self.evaluation_scores = np.concatenate([np.asarray(s) for s in self.evaluation_scores], axis=0)

    return _ROAD


def _normalise_per_image(a: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Each map divided by its own max |value|; an all-zero map stays zero."""
    mx = np.abs(a).reshape(a.shape[0], -1).max(1).reshape((-1,) + (1,) * (a.ndim - 1))
    return np.divide(a, mx, out=np.zeros_like(a), where=mx > 0)


# ---------------------------------------------------------------- Focus mosaics


def focus_mosaics(
    x: Tensor, y: Tensor, rng: np.random.Generator, pool: Mapping[int, Tensor] | None = None
) -> tuple[Tensor, Tensor, list[tuple[int, int, int, int]]]:
    """Focus mosaics of the consecutive groups of 4 images of ``x`` (N, C, H, W) with labels ``y`` (N,).

    Returns ``(mosaics (k, C, H, W), targets (k,), positions)``; ``positions[i]``
    is 1 for each quadrant (top-left, top-right, bottom-left, bottom-right) whose
    image has the target label.  ``pool`` (label -> image) adds images from
    outside the batch as partners and distractors.  See the module docstring.
    """
    extra = list(pool.items()) if pool else []
    px = torch.cat([x, torch.stack([v.to(x) for _, v in extra])]) if extra else x
    py = torch.cat([y, torch.tensor([k for k, _ in extra], dtype=y.dtype, device=y.device)]) if extra else y
    labels = py.cpu().numpy()
    mos, targets, positions = [], [], []
    for g in range(x.shape[0] // 4):
        anchor = 4 * g + int(rng.integers(4))
        c = labels[anchor]
        same = np.flatnonzero((labels == c) & (np.arange(len(labels)) != anchor))
        others = np.flatnonzero(labels != c)
        if len(others) == 0:
            continue
        chosen = [anchor]
        if len(same):
            chosen.append(int(rng.choice(same)))
        need = 4 - len(chosen)
        chosen += [int(i) for i in rng.choice(others, size=need, replace=len(others) < need)]
        order = [chosen[i] for i in rng.permutation(4)]
        mos.append(mosaic(px[order]))
        targets.append(int(c))
        positions.append(tuple(int(labels[i] == c) for i in order))
    if not mos:
        return x.new_zeros((0,) + tuple(x.shape[1:])), torch.zeros(0, dtype=torch.long), []
    return torch.cat(mos), torch.tensor(targets, dtype=torch.long), positions


# ---------------------------------------------------------------- results


def _ci95(v: np.ndarray) -> float:
    from scipy import stats

    n = len(v)
    return float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan


class QuantusTable(list):
    """Rows ``{"method", "metric", "mean", "ci95", "n"}``; ``str()`` gives the text table."""

    def __str__(self) -> str:
        metrics = list(dict.fromkeys(r["metric"] for r in self))
        head = [f"{m}{' ↑' if HIGHER_IS_BETTER.get(m, True) else ' ↓'}" for m in metrics]
        width = max([17] + [len(h) for h in head])
        lines = [f"{'method':<20} " + " ".join(f"{h:>{width}}" for h in head)]
        for meth in dict.fromkeys(r["method"] for r in self):
            cells = {r["metric"]: r for r in self if r["method"] == meth}
            out = []
            for m in metrics:
                r = cells[m]
                out.append(f"{r['mean']:>8.3f} ± {r['ci95']:<6.3f}".rjust(width))
            lines.append(f"{meth:<20} " + " ".join(out))
        return "\n".join(lines)


@dataclass
class QuantusResult:
    """``result[method][metric]``: per-image scores (float64 tensor; Focus: per mosaic).

    ``failures``: ``(method, metric, message)``; ``road_curves[method]``: ROAD
    accuracy at each of ``settings["ROAD"]["percentages"]``; ``settings``: the
    Quantus arguments used.
    """

    scores: dict[str, dict[str, Tensor]]
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    road_curves: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, method: str) -> dict[str, Tensor]:
        return self.scores[method]

    def table(self) -> QuantusTable:
        """Mean ± half-width of the 95% t-interval of each metric per method."""
        rows = QuantusTable()
        for meth, sc in self.scores.items():
            for metric, v in sc.items():
                a = v.double().numpy()
                n = len(a)
                rows.append(
                    {"method": meth, "metric": metric, "mean": float(a.mean()) if n else math.nan, "ci95": _ci95(a),
                     "n": n}
                )  # fmt: skip
        return rows

    def to_rows(self) -> list[dict[str, Any]]:
        """The table as plain dicts (for CSV/JSON), with ``higher_is_better`` per row."""
        return [{**r, "higher_is_better": HIGHER_IS_BETTER.get(r["metric"], True)} for r in self.table()]


# ---------------------------------------------------------------- evaluation


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            yield


def _reseed(device: torch.device, seed: int, *keys: int) -> None:
    """Seed NumPy's global generator, torch's CPU generator and (for CUDA) ``device``'s generator."""
    s = int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])
    np.random.seed(s)
    torch.default_generator.manual_seed(s)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(s)


def _batches(data: Any, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        return data
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _metric_names(metrics: str | Sequence[str]) -> list[str]:
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    bad = [m for m in names if m not in QUANTUS_METRICS]
    if bad or not names:
        raise InputError(f"unknown Quantus metric(s) {bad}; the valid names are: {', '.join(QUANTUS_METRICS)}")
    return list(dict.fromkeys(names))


def evaluate_quantus(
    model: nn.Module,
    methods: Mapping[str, Method],
    data: Any,
    *,
    metrics: str | Sequence[str] = QUANTUS_METRICS,
    batch_size: int = 16,
    seed: int = 0,
    max_images: int | None = None,
    progress: bool = True,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> QuantusResult:
    """Score every method with the Quantus ``metrics`` on the (image, label) ``data``.

    ``data``: a Dataset or DataLoader of (N, C, H, W) images and class labels;
    ``max_images``: stop after that many images.  A method that fails on a batch
    is recorded in ``failures`` (its scores for that batch are missing).
    ``metric_kwargs[metric]`` overrides Quantus constructor arguments.
    """
    names = _metric_names(metrics)
    _check_request(methods, metric_kwargs)
    if "Focus" in names:
        _check_focus_size(data, batch_size, max_images)
    quantus = _quantus()
    settings = _settings(quantus, names, metric_kwargs)
    device = _model_device(model)
    model.eval()
    run = _Run(
        quantus=quantus,
        model=model,
        methods=methods,
        names=names,
        settings=settings,
        device=device,
        seed=seed,
        rng=np.random.default_rng(seed),
        tally=_Tally.empty(methods, names),
    )
    np_state = np.random.get_state()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices), _quiet():
            _score_batches(run, data, batch_size, max_images, progress)
    finally:
        np.random.set_state(np_state)
    return _result(run.tally, names, settings)


def _check_request(methods: Mapping[str, Method], metric_kwargs: Mapping[str, Mapping[str, Any]] | None) -> None:
    """An :class:`InputError` for no methods, or ``metric_kwargs`` naming an unknown metric."""
    if not methods:
        raise InputError("no methods to evaluate")
    unknown = sorted(set(metric_kwargs or {}) - set(QUANTUS_METRICS))
    if unknown:
        raise InputError(f"metric_kwargs for unknown metric(s) {unknown}; valid: {', '.join(QUANTUS_METRICS)}")


def _check_focus_size(data: Any, batch_size: int, max_images: int | None) -> None:
    """An :class:`InputError` where Focus cannot make mosaics: fewer than 4 images, or batches under 4."""
    from torch.utils.data import DataLoader

    bs = data.batch_size if isinstance(data, DataLoader) else batch_size
    try:
        total: int | None = len(data.dataset if isinstance(data, DataLoader) else data)
    except TypeError:  # an iterable data set without a length
        total = None
    if max_images is not None:
        total = max_images if total is None else min(total, max_images)
    if (bs is not None and bs < 4) or (total is not None and total < 4):
        raise InputError(
            f"Focus needs mosaics of 4 images: at least 4 images and a batch size of at least 4 "
            f"(got {total} images, batch size {bs})"
        )


def _settings(
    quantus: Any, names: list[str], metric_kwargs: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """The Quantus arguments per metric (defaults updated by ``metric_kwargs``), checked by building each metric.

    A wrong ``metric_kwargs`` entry is the caller's error, not a method's: :class:`InputError`.
    """
    settings = {m: {**DEFAULT_SETTINGS[m], **dict((metric_kwargs or {}).get(m, {}))} for m in names}
    with _quiet():
        for m in names:
            try:
                _build_metric(quantus, m, settings[m])
            except (TypeError, ValueError) as e:
                raise InputError(f"invalid Quantus arguments for {m} {settings[m]}: {e}") from e
    return settings


@dataclass
class _Tally:
    """What :func:`evaluate_quantus` collects over the batches."""

    #: method -> metric -> per-batch score arrays
    vals: dict[str, dict[str, list[np.ndarray]]]
    #: method -> per-batch ROAD (images, percentages) matrices
    road_rows: dict[str, list[np.ndarray]]
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    #: images scored so far, and Focus mosaics built
    seen: int = 0
    n_mosaics: int = 0

    @classmethod
    def empty(cls, methods: Mapping[str, Method], names: list[str]) -> _Tally:
        return cls({k: {m: [] for m in names} for k in methods}, {k: [] for k in methods})


@dataclass
class _Run:
    """The fixed inputs of one :func:`evaluate_quantus` call, and its tally."""

    quantus: Any
    model: nn.Module
    methods: Mapping[str, Method]
    names: list[str]
    settings: dict[str, dict[str, Any]]
    device: torch.device
    seed: int
    #: draws the Focus mosaics
    rng: np.random.Generator
    tally: _Tally
    #: one image per label from earlier batches: partners for Focus mosaics
    pool: dict[int, Tensor] = field(default_factory=dict)


def _score_batches(run: _Run, data: Any, batch_size: int, max_images: int | None, progress: bool) -> None:
    """Score every batch of ``data`` (up to ``max_images`` images) into ``run.tally``."""
    from tqdm.auto import tqdm

    tally = run.tally
    for bi, (x, y) in enumerate(tqdm(_batches(data, batch_size), desc="Quantus", disable=not progress)):
        if max_images is not None and tally.seen >= max_images:
            break
        x, y = _labelled_batch(run, x, y, max_images)
        tally.seen += x.shape[0]
        for metric in run.names:
            _score_metric(run, bi, metric, x, y)
        if "Focus" in run.names:
            run.pool.update({int(y[i]): x[i].clone() for i in range(x.shape[0])})


def _labelled_batch(run: _Run, x: Any, y: Any, max_images: int | None) -> tuple[Tensor, Tensor]:
    """The batch as tensors, cut to ``max_images``; an :class:`InputError` for a label the model lacks."""
    x, y = torch.as_tensor(x), torch.as_tensor(y).long().reshape(-1)
    seen = run.tally.seen
    if max_images is not None:
        x, y = x[: max_images - seen], y[: max_images - seen]
    with torch.no_grad():
        k_cls = run.model(x.to(run.device)).shape[1]
    bad = ((y < 0) | (y >= k_cls)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise InputError(f"label {int(y[i])} of sample {seen + i} is outside 0..{k_cls - 1}")
    return x, y


def _score_metric(run: _Run, bi: int, metric: str, x: Tensor, y: Tensor) -> None:
    """Score batch ``bi`` with one metric for every method; a method's exception becomes a failure."""
    tally = run.tally
    if metric == "Focus":
        xb, yb, pos = focus_mosaics(x, y, run.rng, run.pool)
        tally.n_mosaics += len(pos)
        if not pos:
            return
    else:
        xb, yb, pos = x, y, None
    args = {"x_batch": xb.cpu().numpy(), "y_batch": yb.cpu().numpy(), "device": str(run.device)}
    for name, method in run.methods.items():
        _reseed(run.device, run.seed, bi, QUANTUS_METRICS.index(metric))
        try:
            v = _run_metric(run.quantus, metric, run.settings[metric], run.model, method, args, pos)
        except Exception as e:  # a method's own failure: recorded, not dropped
            tally.failures.append((name, metric, f"batch {bi}: {type(e).__name__}: {e}"))
            continue
        if metric == "ROAD":
            tally.road_rows[name].append(v)
            v = v.mean(1)
        tally.vals[name][metric].append(np.asarray(v, dtype=np.float64).reshape(-1))


def _result(tally: _Tally, names: list[str], settings: dict[str, dict[str, Any]]) -> QuantusResult:
    """The :class:`QuantusResult` of a finished tally; an :class:`InputError` if nothing could be scored."""
    if tally.seen == 0:
        raise InputError("the data has no images")
    if "Focus" in names and tally.n_mosaics == 0:
        raise InputError("no Focus mosaic could be built: Focus needs groups of 4 images and at least two labels")
    scores = {
        k: {m: torch.from_numpy(np.concatenate(v)) if v else torch.empty(0, dtype=torch.float64) for m, v in d.items()}
        for k, d in tally.vals.items()
    }
    curves = {k: np.concatenate(r).mean(0) for k, r in tally.road_rows.items() if r}
    return QuantusResult(scores, tally.failures, curves, settings)


_CHANNELS_OF = {"ROAD": "sum_broadcast", "Focus": "sum", "LocalLipschitzEstimate": "sum"}


def _build_metric(quantus: Any, metric: str, settings: Mapping[str, Any]) -> Any:
    """A fresh Quantus metric object with the module's settings (``settings`` win)."""
    kw = {"disable_warnings": True, "display_progressbar": False, **settings}
    if metric == "ROAD":
        return _road_class()(**{"perturb_func": pixel_imputation, **kw})
    if metric == "Focus":
        return quantus.Focus(**kw)
    return quantus.LocalLipschitzEstimate(**{"normalise_func": _normalise_per_image, **kw})


def _run_metric(
    quantus: Any,
    metric: str,
    settings: Mapping[str, Any],
    model: nn.Module,
    method: Method,
    args: Mapping[str, Any],
    positions: list[tuple[int, int, int, int]] | None,
) -> np.ndarray:
    """One Quantus call on one batch -> per-image scores (ROAD: (images, percentages) 0/1 matrix)."""
    n = len(args["x_batch"])
    extra = {"custom_batch": positions} if metric == "Focus" else {}
    out = _build_metric(quantus, metric, settings)(
        model=model,
        explain_func=explain_func,
        explain_func_kwargs={"method": method, "channels": _CHANNELS_OF[metric]},
        batch_size=n,
        **args,
        **extra,
    )
    out = np.asarray(out, dtype=np.float64)
    if out.shape[0] != n:
        raise RuntimeError(f"Quantus {metric} returned {out.shape[0]} scores for {n} inputs")
    return out
