"""Global Attribution Evaluation (GAE), Vukadin et al. 2024 (arXiv 2412.09311), section 3.2.

GAE scores an attribution method on a positive image drawn from each group of
four images: ``GAE = LC * C`` with local consistency ``LC`` (robustness and
faithfulness under Most/Least-Relevant-First perturbation) and contrastiveness
``C`` (how much of the explanation of a 2x2 mosaic lands on the positive image's
quadrant rather than on quadrants of competing classes).

Every formula is a separate, batched, pure function (dimension 0 is the batch).
Maps are reduced over the channel dimension (summed) to one value per pixel;
perturbation zero-masks whole pixels (all channels).

Readings of points that section 3.2 leaves open (documented choices):

* ``o_t`` is the target *logit* ``f_c`` of the perturbed input.
* ``c_i`` (class of quadrant ``i``) is the model's *predicted* class of image
  ``i``, as the paper says; the authors' script uses the dataset label instead.
* ``I_c`` uses the |input x gradient| maps of the perturbed inputs of steps
  ``1..T`` (the same maps that rank the features).
* 0/0 ratios: ``sim`` of two all-zero maps is 1, ``LC_R`` with ``d^o = d^A = 0``
  is 1, ``LC_F`` and ``C`` of an all-zero map are 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

__all__ = [
    "GAE",
    "GAEResult",
    "Method",
    "Perturbation",
    "Table",
    "WilcoxonResult",
    "contrastiveness",
    "local_consistency",
    "lc_faithfulness",
    "lc_robustness",
    "mosaic",
    "normalize_map",
    "output_differences",
    "attribution_differences",
    "perturb",
    "sample_positive",
    "saliency_difference",
    "score_map",
    "sim",
]

Method = Callable[[nn.Module, Tensor, Tensor], Tensor]
SCORES = ("lc_r", "lc_f", "lc", "c", "gae")


def _flat(a: Tensor) -> Tensor:
    return a.reshape(a.shape[0], -1)


# ---------------------------------------------------------------- formulas


def normalize_map(a: Tensor) -> Tensor:
    """Positive part of each map divided by its maximum (section 3.2: "all maps
    are the positive part of the explanation, divided by its maximum").

    ``a``: (B, ...). A map with no positive entry becomes all zeros.
    """
    pos = a.clamp(min=0)
    mx = _flat(pos).amax(dim=1).reshape((-1,) + (1,) * (a.dim() - 1))
    return torch.where(mx > 0, pos / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(pos))


def sim(a: Tensor, b: Tensor) -> Tensor:
    """Similarity of maps, section 3.2: ``1 - ||a - b||_1 / (||a||_1 + ||b||_1)``.

    ``a``, ``b``: (B, ...) -> (B,). Two all-zero maps have similarity 1.
    """
    num = _flat(a - b).abs().sum(1)
    den = _flat(a).abs().sum(1) + _flat(b).abs().sum(1)
    return torch.where(den > 0, 1 - num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))


def _input_x_grad(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Target logits ``f_c(x)`` (B,) and pixel maps ``sum_ch |x * d|f_c(x)|/dx|`` (B, H, W)."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = model(xg)
        logit = out.gather(1, target.reshape(-1, 1)).squeeze(1)
        (grad,) = torch.autograd.grad(logit.abs().sum(), xg)
    return logit.detach(), (xg.detach() * grad).abs().sum(1)


@dataclass
class Perturbation:
    """Result of :func:`perturb`; the step index ``t`` runs 0..T (t = 0: unperturbed).

    ``inputs`` (T+1, B, C, H, W), ``outputs`` (T+1, B) target logits ``o_t``,
    ``maps`` (T+1, B, H, W) |input x gradient| of each (perturbed) input.
    """

    inputs: Tensor
    outputs: Tensor
    maps: Tensor


def perturb(model: nn.Module, x: Tensor, target: Tensor, steps: int, order: str) -> Perturbation:
    """MoRF/LeRF zero-masking perturbation of section 3.2.

    At step ``t = 1..T`` the total number of masked pixels becomes
    ``round(t/T * H*W)``: the pixels still unmasked are ranked by
    ``|x_{t-1} * d|f_c(x_{t-1})|/dx|`` (summed over channels) computed on the
    current perturbed input, and the highest (``order="morf"``) or lowest
    (``order="lerf"``) are set to 0 in every channel.
    """
    if order not in ("morf", "lerf"):
        raise InputError(f"perturbation order must be 'morf' or 'lerf', got {order!r}")
    b, _, h, w = x.shape
    n = h * w
    masked = torch.zeros(b, n, dtype=torch.bool, device=x.device)
    cur = x.detach().clone()
    o, m = _input_x_grad(model, cur, target)
    inputs, outputs, maps = [cur], [o], [m]
    for t in range(1, steps + 1):
        k = round(t / steps * n) - int(masked[0].sum())
        score = _flat(m).clone()
        fill = -math.inf if order == "morf" else math.inf
        score[masked] = fill
        if k > 0:
            idx = score.topk(k, dim=1, largest=(order == "morf")).indices
            masked = masked.scatter(1, idx, True)
        cur = x.detach() * (~masked).reshape(b, 1, h, w).to(x.dtype)
        o, m = _input_x_grad(model, cur, target)
        inputs.append(cur)
        outputs.append(o)
        maps.append(m)
    return Perturbation(torch.stack(inputs), torch.stack(outputs), torch.stack(maps))


def output_differences(o_morf: Tensor, o_lerf: Tensor) -> Tensor:
    """``d^o_t = (o^LeRF_t - o^MoRF_t) / o_0`` for t = 1..T (section 3.2).

    ``o_morf``, ``o_lerf``: (T+1, B) with row 0 the unperturbed output -> (B, T).
    """
    o0 = o_morf[0]
    o0 = torch.where(o0 == 0, torch.full_like(o0, 1e-12), o0)
    return ((o_lerf[1:] - o_morf[1:]) / o0).T


def attribution_differences(a0: Tensor, a_morf: Tensor, a_lerf: Tensor) -> Tensor:
    """``d^A_t = sim(A_0, A^LeRF_t) - sim(A_0, A^MoRF_t)`` (section 3.2).

    ``a0``: (B, ...) normalized map of the unperturbed input; ``a_morf``,
    ``a_lerf``: (T, B, ...) normalized maps of the perturbed inputs -> (B, T).
    """
    out = [sim(a0, a_lerf[t]) - sim(a0, a_morf[t]) for t in range(a_morf.shape[0])]
    return torch.stack(out, dim=1)


def lc_robustness(d_o: Tensor, d_a: Tensor) -> Tensor:
    """``LC_R = 1 - 2 ||d^o - d^A||_1 / (||d^o||_1 + ||d^A||_1)`` (section 3.2). (B, T) -> (B,)."""
    num = (d_o - d_a).abs().sum(1)
    den = d_o.abs().sum(1) + d_a.abs().sum(1)
    return torch.where(den > 0, 1 - 2 * num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))


def saliency_difference(maps_morf: Tensor, maps_lerf: Tensor) -> Tensor:
    """``I_c``: L1-normalised sum of the LeRF maps minus that of the MoRF maps (section 3.2).

    ``maps_*``: (T, B, ...) |input x gradient| maps of the perturbed inputs -> (B, ...).
    """

    def l1(s: Tensor) -> Tensor:
        n = _flat(s).abs().sum(1).reshape((-1,) + (1,) * (s.dim() - 1))
        return torch.where(n > 0, s / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(s))

    return l1(maps_lerf.sum(0)) - l1(maps_morf.sum(0))


def lc_faithfulness(a0: Tensor, i_c: Tensor) -> Tensor:
    """``LC_F = sum(A_0 * sign(I_c)) / ||A_0||_1`` (section 3.2). (B, ...) -> (B,); 0 for a zero map."""
    num = _flat(a0 * torch.sign(i_c)).sum(1)
    den = _flat(a0).abs().sum(1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def local_consistency(lc_r: Tensor, lc_f: Tensor) -> Tensor:
    """``LC = max(0, (LC_R + LC_F) / 2)`` (section 3.2)."""
    return ((lc_r + lc_f) / 2).clamp(min=0)


def sample_positive(mosaic_logits: Tensor, classes: Tensor, generator: torch.Generator) -> Tensor:
    """Quadrant of the positive image of each mosaic (section 3.2).

    Quadrant ``i`` is drawn with probability proportional to ``softmax(z)[c_i]``,
    ``z`` the mosaic's logits (k, K) and ``c_i`` = ``classes[:, i]`` (k, 4) the
    predicted class of image ``i``. Returns (k,) quadrant indices.
    """
    p = torch.softmax(mosaic_logits.detach().double(), 1).gather(1, classes)
    return torch.multinomial(p / p.sum(1, keepdim=True), 1, generator=generator).squeeze(1)


def mosaic(x: Tensor) -> Tensor:
    """2x2 mosaics of consecutive groups of four images at half resolution (section 3.2).

    ``x``: (4k, C, H, W), H and W even -> (k, C, H, W). Image ``4g + i`` of a group
    goes to quadrant ``i``: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right;
    each image is downsampled by 2x2 average pooling.
    """
    n, c, h, w = x.shape
    if n % 4 or h % 2 or w % 2:
        raise InputError(
            f"the GAE mosaic needs groups of 4 images whose height and width are even (each image is "
            f"halved into one quadrant); got images shaped {tuple(x.shape)}"
        )
    small = F.avg_pool2d(x, 2).reshape(n // 4, 2, 2, c, h // 2, w // 2)
    # (k, row, col, C, h, w) -> (k, C, row, h, col, w)
    return small.permute(0, 3, 1, 4, 2, 5).reshape(n // 4, c, h, w)


def score_map(probs: Tensor, classes: Tensor, positive: Tensor, size: tuple[int, int]) -> Tensor:
    """Contrastiveness score map ``S`` (section 3.2).

    ``probs``: (k, K) softmax of each positive image's own logits; ``classes``:
    (k, 4) class of each quadrant (the predicted class here; the authors' code uses
    the dataset label); ``positive``: (k,) quadrant of the positive image.
    Quadrant ``i`` gets 1 if it is the positive one, else ``2 s[c_i] / s[c_p] - 1``.
    Returns (k, H, W) with ``size = (H, W)``.
    """
    k = probs.shape[0]
    s_i = probs.gather(1, classes)
    c_p = classes.gather(1, positive.reshape(-1, 1))
    s_p = probs.gather(1, c_p)
    vals = 2 * s_i / s_p - 1
    vals = vals.scatter(1, positive.reshape(-1, 1), 1.0)
    h, w = size
    quads = vals.reshape(k, 2, 2, 1, 1).expand(k, 2, 2, h // 2, w // 2)
    return quads.permute(0, 1, 3, 2, 4).reshape(k, h, w)


def contrastiveness(a_mosaic: Tensor, s: Tensor) -> Tensor:
    """``C = max(0, sum(A ⊙ S) / ||A||_1)`` (section 3.2); 0 for an all-zero map. (k, ...) -> (k,)."""
    num = _flat(a_mosaic * s).sum(1)
    den = _flat(a_mosaic).abs().sum(1)
    c = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    return c.clamp(min=0)


# ---------------------------------------------------------------- methods

_METHOD_FACTORIES = ("relprop_method", "constant_method", "random_method")


def __getattr__(name: str) -> Any:
    """The method factories live in :mod:`relprop.evaluation.methods`; these names stay importable here."""
    if name in _METHOD_FACTORIES:
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- evaluation


class Table(list):
    """Rows ``{"method", "score", "mean", "ci95", "n"}``; ``str()`` gives the text table."""

    def __str__(self) -> str:
        lines = [f"{'method':<20} " + " ".join(f"{s:>17}" for s in SCORES)]
        methods = list(dict.fromkeys(r["method"] for r in self))
        for m in methods:
            cells = {r["score"]: r for r in self if r["method"] == m}
            lines.append(f"{m:<20} " + " ".join(f"{cells[s]['mean']:>8.3f} ± {cells[s]['ci95']:<6.3f}" for s in SCORES))
        return "\n".join(lines)


class WilcoxonResult(NamedTuple):
    statistic: float
    pvalue: float


@dataclass
class GAEResult:
    """``result[method][score]``: one value per positive image (tensor), score in
    ``lc_r, lc_f, lc, c, gae``. ``images[method]``: the data index of each of those
    positive images (a batch a method failed on has none). ``failures``:
    ``(method, batch index, message)``."""

    scores: dict[str, dict[str, Tensor]]
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    images: dict[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, method: str) -> dict[str, Tensor]:
        return self.scores[method]

    def table(self) -> Table:
        """Mean ± half-width of the 95% t-interval of each score."""
        from scipy import stats

        rows = Table()
        for m, sc in self.scores.items():
            for s in SCORES:
                v = sc[s].double()
                n = v.numel()
                mean = float(v.mean()) if n else math.nan
                ci = float(stats.t.ppf(0.975, n - 1) * v.std() / math.sqrt(n)) if n > 1 else math.nan
                rows.append({"method": m, "score": s, "mean": mean, "ci95": ci, "n": n})
        return rows

    def wilcoxon(self, a: str, b: str, score: str = "gae") -> WilcoxonResult:
        """Paired Wilcoxon signed-rank test of ``score`` between methods ``a`` and ``b``
        (scipy.stats.wilcoxon); p = 1 when all differences are zero."""
        from scipy import stats

        for m in (a, b):
            if m not in self.scores:
                raise InputError(f"no scores for method {m!r}; the result has: {', '.join(self.scores)}")
        if score not in SCORES:
            raise InputError(f"unknown score {score!r}; expected one of {', '.join(SCORES)}")
        x, y = self.scores[a][score].double(), self.scores[b][score].double()
        if a in self.images and b in self.images:  # pair on the images both methods were scored on
            ia, ib = self.images[a], self.images[b]
            keep_a, keep_b = torch.isin(ia, ib), torch.isin(ib, ia)
            x = x[keep_a][torch.argsort(ia[keep_a])]
            y = y[keep_b][torch.argsort(ib[keep_b])]
        elif x.shape != y.shape:
            raise InputError(f"methods {a!r} and {b!r} have different numbers of scores")
        x, y = x.numpy(), y.numpy()
        if not (x - y).any():
            return WilcoxonResult(0.0, 1.0)
        r = stats.wilcoxon(x, y)
        return WilcoxonResult(float(r.statistic), float(r.pvalue))

    def plot(self, path: str) -> None:
        """Bar plot (mean and 95% interval of LC, C, GAE per method) written as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.table()
        methods = list(self.scores)
        fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(methods)), 3))
        width = 0.25
        for j, s in enumerate(("lc", "c", "gae")):
            r = [next(x for x in rows if x["method"] == m and x["score"] == s) for m in methods]
            ax.bar(
                [i + (j - 1) * width for i in range(len(methods))],
                [x["mean"] for x in r],
                width,
                yerr=[0 if math.isnan(x["ci95"]) else x["ci95"] for x in r],
                label=s.upper(),
            )
        ax.set_xticks(range(len(methods)), methods)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def _check_map(a: Any, like: Tensor, name: str, what: str) -> Tensor:
    if not isinstance(a, Tensor) or a.shape != like.shape:
        shape = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise InputError(f"method {name!r} returned {shape} for {what}; expected shape {tuple(like.shape)}")
    if not torch.isfinite(a).all():
        raise InputError(f"method {name!r} returned non-finite values for {what}")
    return a.detach()


class GAE:
    """The GAE metric (section 3.2) with ``steps`` perturbation steps and a seeded
    generator for the positive-image sampling."""

    def __init__(self, steps: int = 10, seed: int = 0) -> None:
        if steps < 1:
            raise InputError(f"steps must be >= 1, got {steps}")
        self.steps = steps
        self.seed = seed

    def _batches(self, data: Any, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
        from torch.utils.data import DataLoader

        if isinstance(data, DataLoader):
            if data.batch_size is not None and data.batch_size % 4:
                raise InputError(f"data loader batch size must be divisible by 4, got {data.batch_size}")
            return data
        if batch_size < 4 or batch_size % 4:
            raise InputError(f"batch_size must be a positive multiple of 4, got {batch_size}")
        if len(data) < 4:
            raise InputError(f"GAE needs at least 4 images, the dataset has {len(data)}")
        return DataLoader(data, batch_size=batch_size, shuffle=False)

    def evaluate(
        self,
        model: nn.Module,
        methods: Mapping[str, Method],
        data: Any,
        batch_size: int = 16,
        progress: bool = True,
    ) -> GAEResult:
        """Score every method on the positive image of each group of four images.

        Images beyond a multiple of 4 in the last batch are left out.
        """
        from tqdm.auto import tqdm

        gen = torch.Generator().manual_seed(self.seed)
        model.eval()
        acc: dict[str, dict[str, list[Tensor]]] = {m: {s: [] for s in SCORES} for m in methods}
        index: dict[str, list[Tensor]] = {m: [] for m in methods}
        failures: list[tuple[str, int, str]] = []
        seen = 0
        for bi, (x, y) in enumerate(tqdm(self._batches(data, batch_size), desc="GAE", disable=not progress)):
            x = torch.as_tensor(x)
            y = torch.as_tensor(y)
            if x.dim() != 4:
                raise InputError(f"GAE needs image batches shaped (N, C, H, W); batch {bi} is {tuple(x.shape)}")
            with torch.no_grad():
                logits = model(x)
            k_cls = logits.shape[1]
            bad = ((y < 0) | (y >= k_cls)).nonzero().flatten()
            if len(bad):
                i = int(bad[0])
                raise InputError(f"label {int(y[i])} of sample {seen + i} is outside 0..{k_cls - 1}")
            n = x.shape[0] - x.shape[0] % 4
            first = seen
            seen += x.shape[0]
            if n == 0:
                continue
            x, logits = x[:n], logits[:n]
            k = n // 4
            preds = logits.argmax(1)
            classes = preds.reshape(k, 4)
            mos = mosaic(x)
            with torch.no_grad():
                positive = sample_positive(model(mos), classes, gen)
            pidx = torch.arange(k) * 4 + positive
            xp, cp = x[pidx], preds[pidx]
            with torch.no_grad():
                s = score_map(torch.softmax(logits[pidx], 1), classes, positive, (x.shape[2], x.shape[3]))
            morf = perturb(model, xp, cp, self.steps, "morf")
            lerf = perturb(model, xp, cp, self.steps, "lerf")
            d_o = output_differences(morf.outputs, lerf.outputs)
            i_c = saliency_difference(morf.maps[1:], lerf.maps[1:])
            t = self.steps
            for name, method in methods.items():
                try:
                    a_mos = method(model, mos, cp)
                    allx = torch.cat([xp, morf.inputs[1:].flatten(0, 1), lerf.inputs[1:].flatten(0, 1)])
                    a_all = method(model, allx, cp.repeat(2 * t + 1))
                except Exception as e:  # a method's own failure: recorded, not dropped
                    failures.append((name, bi, f"{type(e).__name__}: {e}"))
                    continue
                a_mos = normalize_map(_check_map(a_mos, mos, name, f"the mosaics of batch {bi}").sum(1))
                a_all = normalize_map(_check_map(a_all, allx, name, f"the perturbed inputs of batch {bi}").sum(1))
                a0 = a_all[:k]
                a_m = a_all[k : k * (t + 1)].reshape(t, k, *a0.shape[1:])
                a_l = a_all[k * (t + 1) :].reshape(t, k, *a0.shape[1:])
                lc_r = lc_robustness(d_o, attribution_differences(a0, a_m, a_l))
                lc_f = lc_faithfulness(a0, i_c)
                lc = local_consistency(lc_r, lc_f)
                c = contrastiveness(a_mos, s)
                for key, v in zip(SCORES, (lc_r, lc_f, lc, c, lc * c)):
                    acc[name][key].append(v.detach().float())
                index[name].append(first + pidx)
        if seen < 4:
            raise InputError(f"GAE needs at least 4 images, the data has {seen}")
        scores = {m: {s: torch.cat(v) if v else torch.empty(0) for s, v in d.items()} for m, d in acc.items()}
        images = {m: torch.cat(v) if v else torch.empty(0, dtype=torch.long) for m, v in index.items()}
        return GAEResult(scores, failures, images)
