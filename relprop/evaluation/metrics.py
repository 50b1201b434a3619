"""The implementation of :mod:`relprop.metrics` (the public module; its docstring describes it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .results import SCORES, GAEResult, Table, WilcoxonResult

__all__ = [
    "EPS",
    "GAE",
    "GAEResult",
    "Method",
    "Perturbation",
    "Table",
    "WilcoxonResult",
    "attribution_differences",
    "arrange_mosaic",
    "batch_generator",
    "contrastiveness",
    "dice",
    "downsample",
    "impact_map",
    "l1_normalize",
    "lc_faithfulness",
    "lc_robustness",
    "local_consistency",
    "mask_features",
    "max_normalize",
    "mosaic",
    "normalize_map",
    "output_differences",
    "perturb",
    "quadrant_scores",
    "ranking_map",
    "sample_positive",
    "score_map",
]

Method = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""An attribution method: ``method(model, x, target) -> relevance`` shaped like ``x``
(N, C, H, W), finite and detached; ``target`` holds one class per sample."""
GRANULARITIES = ("feature", "pixel")
GROUPINGS = ("consecutive", "authors")
QUADRANT_CLASSES = ("label", "predicted")
#: added to every denominator, as in the authors' code
EPS = 1e-9


def _flat(a: Tensor) -> Tensor:
    return a.reshape(a.shape[0], -1)


def _per_sample(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcasting against ``like``."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ---------------------------------------------------------------- normalisations


def l1_normalize(a: Tensor) -> Tensor:
    """Divide each map by its L1 norm + eps (section 3.2, the ranking maps and ``I_c``).

    Args:
        a: maps (B, ...).

    Returns:
        The normalised maps, shaped like ``a``.
    """
    return a / (_per_sample(_flat(a).abs().sum(1), a) + EPS)


def max_normalize(a: Tensor) -> Tensor:
    """Divide each map by its max |value| + eps (section 3.2, ``I_c``).

    Args:
        a: maps (B, ...).

    Returns:
        The normalised maps, shaped like ``a``.
    """
    return a / (_per_sample(_flat(a).abs().amax(1), a) + EPS)


def normalize_map(a: Tensor) -> Tensor:
    """Normalise a relevance map as GAE compares it: ``max_normalize(relu(max_normalize(a)))``.

    Section 3.2: "the positive part of the explanation, divided by its maximum" (the authors
    max-normalise a method's map, then take its positive part and max-normalise again).

    Args:
        a: maps (B, ...).

    Returns:
        The normalised maps, shaped like ``a``; a map with no positive entry becomes all zeros.
    """
    return max_normalize(max_normalize(a).clamp(min=0))


def dice(a: Tensor, b: Tensor) -> Tensor:
    """Compute ``Σ|a - b| / (Σ|a| + Σ|b| + eps)`` per sample; section 3.2's ``sim(a, b) = 1 - dice(a, b)``.

    Args:
        a: maps (B, ...).
        b: maps shaped like ``a``.

    Returns:
        (B,); two all-zero maps give 0.
    """
    a, b = _flat(a), _flat(b)
    return (a - b).abs().sum(1) / (a.abs().sum(1) + b.abs().sum(1) + EPS)


# ---------------------------------------------------------------- perturbation (LC)


def ranking_map(model: nn.Module, x: Tensor, target: Tensor, granularity: str = "feature") -> tuple[Tensor, Tensor]:
    """Compute the outputs and the ranking maps of the perturbation step (section 3.2).

    The map is ``|x ⊙ ∂L/∂x|`` with ``L = mean_b |f_c(x_b)|``, per feature or summed over
    channels, each map divided by its sum + eps.

    Args:
        model: the classifier.
        x: images (B, C, H, W).
        target: the class ``c`` of each image (B,).
        granularity: ``"feature"`` (maps (B, C, H, W)) or ``"pixel"`` (summed over channels,
            (B, H, W)).

    Returns:
        ``(o, maps)``: the outputs ``o = f_c(x)`` (B,) and the ranking maps.
    """
    _check_choice("granularity", granularity, GRANULARITIES)
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        o = model(xg).gather(1, target.reshape(-1, 1)).squeeze(1)
        (grad,) = torch.autograd.grad(o.abs().mean(), xg)
    m = (grad * xg.detach()).abs()
    if granularity == "pixel":
        m = m.sum(1)
    return o.detach(), l1_normalize(m)


def mask_features(x: Tensor, maps: Tensor, k: int, largest: bool) -> Tensor:
    """Zero the ``k`` entries of each map that ``topk`` ranks highest (MoRF) or lowest (LeRF).

    Already-masked entries are ranked like the others (section 3.2, perturbation step).

    Args:
        x: images (B, C, H, W).
        maps: ranking maps (B, C, H, W) (features) or (B, H, W) (whole pixels).
        k: how many entries to zero per map.
        largest: True: the highest ranked (MoRF); False: the lowest (LeRF).

    Returns:
        A copy of ``x`` with those entries set to 0.
    """
    idx = _flat(maps).topk(k, dim=1, largest=largest).indices
    if maps.shape == x.shape:
        return _flat(x).scatter(1, idx, 0.0).reshape(x.shape)
    if maps.shape != x.shape[:1] + x.shape[2:]:
        raise InputError(f"maps shaped {tuple(maps.shape)} do not fit inputs shaped {tuple(x.shape)}")
    hit = torch.zeros(_flat(maps).shape, dtype=torch.bool, device=x.device).scatter(1, idx, True)
    return x.masked_fill(hit.reshape(x.shape[0], 1, *x.shape[2:]), 0.0)


@dataclass
class Perturbation:
    """The T saved states of [`perturb`][relprop.metrics.perturb], t = 0..T-1 (t = 0 unperturbed; t/T masked).

    Attributes:
        inputs: the inputs (T, B, C, H, W).
        outputs: the logits ``o_t`` (T, B).
        maps: the ranking maps ([`ranking_map`][relprop.metrics.ranking_map]) of each state
            (T, B, ...).
    """

    inputs: Tensor
    outputs: Tensor
    maps: Tensor


def perturb(
    model: nn.Module, x: Tensor, target: Tensor, steps: int, order: str, granularity: str = "feature"
) -> Perturbation:
    """Run the MoRF or LeRF perturbation of section 3.2.

    For ``p`` in ``torch.linspace(1/T, 1, T)`` (float32), save the state (input,
    [`ranking_map`][relprop.metrics.ranking_map]), then, if ``p < 1``, zero the ``int(p * n)``
    top- or bottom-ranked entries of the current map
    ([`mask_features`][relprop.metrics.mask_features]), ``n`` entries per map.

    Args:
        model: the classifier.
        x: images (B, C, H, W).
        target: the class of each image (B,).
        steps: T, the saved states (state 0 unperturbed).
        order: ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
        granularity: as for [`ranking_map`][relprop.metrics.ranking_map].

    Returns:
        The [`Perturbation`][relprop.metrics.Perturbation]: the T saved states.
    """
    _check_choice("perturbation order", order, ("morf", "lerf"))
    cur = x.detach().clone()
    inputs, outputs, maps = [], [], []
    for p in torch.linspace(1 / steps, 1, steps, dtype=torch.float32):
        o, m = ranking_map(model, cur, target, granularity)
        inputs.append(cur)
        outputs.append(o)
        maps.append(m)
        if p < 1:
            cur = mask_features(cur, m, int(p * _flat(m).shape[1]), largest=order == "morf")
    return Perturbation(torch.stack(inputs), torch.stack(outputs), torch.stack(maps))


def output_differences(o_morf: Tensor, o_lerf: Tensor) -> Tensor:
    """Compute ``d^o_t = o^LeRF_t / (o_0 + eps) - o^MoRF_t / (o_0 + eps)`` for t = 1..T-1 (section 3.2).

    Args:
        o_morf: outputs under MoRF (T, B), row 0 the unperturbed output.
        o_lerf: outputs under LeRF (T, B).

    Returns:
        (B, T-1).
    """
    o0 = o_morf[0] + EPS
    return (o_lerf[1:] / o0 - o_morf[1:] / o0).T


def attribution_differences(a0: Tensor, a_morf: Tensor, a_lerf: Tensor) -> Tensor:
    """Compute ``d^A_t = dice(A_0, A^MoRF_t) - dice(A_0, A^LeRF_t)`` (section 3.2).

    The same as ``sim(A_0, A^LeRF_t) - sim(A_0, A^MoRF_t)``.

    Args:
        a0: the normalised map of the unperturbed input (B, ...).
        a_morf: those of the MoRF-perturbed inputs (T-1, B, ...).
        a_lerf: those of the LeRF-perturbed inputs (T-1, B, ...).

    Returns:
        (B, T-1).
    """
    out = [dice(a0, a_morf[t]) - dice(a0, a_lerf[t]) for t in range(a_morf.shape[0])]
    return torch.stack(out, dim=1) if out else a0.new_zeros(a0.shape[0], 0)


def lc_robustness(d_o: Tensor, d_a: Tensor) -> Tensor:
    """Compute ``LC_R = 1 - 2 dice(d^A, d^o)`` (section 3.2).

    Args:
        d_o: output differences (B, T-1).
        d_a: attribution differences (B, T-1).

    Returns:
        (B,).
    """
    return 1 - 2 * dice(d_a, d_o)


def impact_map(maps_morf: Tensor, maps_lerf: Tensor) -> Tensor:
    """Compute the combined impact map ``I_c = sign(maxnorm(l1norm(Σ_t M^LeRF_t) - l1norm(Σ_t M^MoRF_t)))``.

    Args:
        maps_morf: the ranking maps of all T saved MoRF states (step 0 included), (T, B, ...).
        maps_lerf: those of the LeRF states.

    Returns:
        (B, ...).
    """
    return torch.sign(max_normalize(l1_normalize(maps_lerf.sum(0)) - l1_normalize(maps_morf.sum(0))))


def lc_faithfulness(a0: Tensor, i_c: Tensor) -> Tensor:
    """Compute ``LC_F = Σ(I_c ⊙ A_0) / (Σ A_0 + eps)`` (section 3.2).

    Args:
        a0: the normalised map of the unperturbed input (B, ...).
        i_c: the impact map (B, ...).

    Returns:
        (B,).
    """
    return _flat(i_c * a0).sum(1) / (_flat(a0).sum(1) + EPS)


def local_consistency(lc_r: Tensor, lc_f: Tensor) -> Tensor:
    """Compute ``LC = relu(LC_R + LC_F) / 2`` (section 3.2).

    Args:
        lc_r: local-consistency robustness (B,).
        lc_f: local-consistency faithfulness (B,).

    Returns:
        (B,).
    """
    return (lc_f + lc_r).clamp(min=0) / 2


# ---------------------------------------------------------------- mosaics (C)


def downsample(x: Tensor) -> Tensor:
    """Halve the images' resolution for the mosaic: ``F.interpolate(x, (H/2, W/2))`` (section 3.2).

    Nearest neighbour: the even rows and columns.

    Args:
        x: images (N, C, H, W).

    Returns:
        (N, C, H/2, W/2).

    Raises:
        InputError: H or W is odd.
    """
    n, c, h, w = x.shape
    if h % 2 or w % 2:
        raise InputError(
            f"the GAE mosaic needs images whose height and width are even (each image is halved "
            f"into one quadrant); got images shaped {tuple(x.shape)}"
        )
    return F.interpolate(x, (h // 2, w // 2))


def arrange_mosaic(small: Tensor, grouping: str = "consecutive") -> Tensor:
    """Arrange half-resolution images into 2x2 mosaics (section 3.2).

    Quadrants 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.

    Args:
        small: images (N = 4k, C, h, w).
        grouping: ``"consecutive"``: mosaic ``m`` quadrant ``q`` is image ``4m + q``;
            ``"authors"``: image ``qk + m``.

    Returns:
        (k, C, 2h, 2w).

    Raises:
        InputError: N is not a multiple of 4, or an unknown grouping.
    """
    _check_choice("grouping", grouping, GROUPINGS)
    n, c, h, w = small.shape
    if n % 4 or n == 0:
        raise InputError(f"a GAE mosaic needs groups of 4 images; got {n} images")
    k = n // 4
    if grouping == "consecutive":
        parts = small.reshape(k, 2, 2, c, h, w)  # (m, row, col, ...)
    else:
        parts = small.reshape(2, 2, k, c, h, w).permute(2, 0, 1, 3, 4, 5)
    # (m, row, col, C, h, w) -> (m, C, row, h, col, w)
    return parts.permute(0, 3, 1, 4, 2, 5).reshape(k, c, 2 * h, 2 * w)


def mosaic(x: Tensor, grouping: str = "consecutive") -> Tensor:
    """Build the 2x2 mosaics of section 3.2.

    [`downsample`][relprop.metrics.downsample], then
    [`arrange_mosaic`][relprop.metrics.arrange_mosaic].

    Args:
        x: images (4k, C, H, W).
        grouping: as for [`arrange_mosaic`][relprop.metrics.arrange_mosaic].

    Returns:
        (k, C, H, W).

    Raises:
        InputError: as for [`arrange_mosaic`][relprop.metrics.arrange_mosaic].
    """
    if x.shape[0] % 4:
        raise InputError(f"the GAE mosaic needs groups of 4 images; got images shaped {tuple(x.shape)}")
    return arrange_mosaic(downsample(x), grouping)


def batch_generator(seed: int, batch: int) -> torch.Generator:
    """Make the CPU generator of one batch's positive-image draw (section 3.2).

    Seeded from ``(seed, batch)`` only: ``(seed * 0x9E3779B97F4A7C15 + batch) mod 2**64``.

    Args:
        seed: GAE's seed.
        batch: the batch's index.

    Returns:
        The seeded ``torch.Generator``.
    """
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + batch) % 2**64)


def sample_positive(mosaic_logits: Tensor, classes: Tensor, generator: torch.Generator) -> Tensor:
    """Draw the positive image of each group (section 3.2).

    Quadrant ``i`` is drawn with probability ``softmax_i(z[c_1], ..., z[c_4])``
    (= ``softmax(z)[c_i] / Σ_j softmax(z)[c_j]``), computed in the logits' dtype on the CPU,
    one ``torch.multinomial`` call.

    Args:
        mosaic_logits: the mosaics' logits ``z`` (k, K).
        classes: the predicted class of each image of the group (k, 4).
        generator: the batch's generator ([`batch_generator`][relprop.metrics.batch_generator]).

    Returns:
        (k,) quadrant indices.
    """
    p = mosaic_logits.detach().cpu().gather(1, classes.cpu()).softmax(-1)
    return torch.multinomial(p, 1, generator=generator).flatten()


def quadrant_scores(probs: Tensor, classes: Tensor, positive: Tensor) -> Tensor:
    """Score each quadrant: ``2 s[c_i] / s[c_p] - 1`` (1 for the positive; section 3.2).

    Args:
        probs: the softmax ``s`` of each positive image's own logits (k, K).
        classes: the class of each image of the group (dataset label or prediction) (k, 4).
        positive: the quadrant of the positive image (k,).

    Returns:
        (k, 4).
    """
    s_i = probs.gather(1, classes)
    s_p = s_i.gather(1, positive.reshape(-1, 1))
    return 2 * s_i / s_p - 1


def score_map(values: Tensor, size: tuple[int, int], grouping: str = "consecutive") -> Tensor:
    """Build the score map ``S``: each image's quadrant filled with its score, the centre set to 1.

    Image ``4g + i``'s quadrant is filled with ``values[g, i]``
    ([`arrange_mosaic`][relprop.metrics.arrange_mosaic] with ``grouping``), then the 2x2
    centre square set to 1: the authors' code sets ``S[..., H/2-1:H/2+1, W/2-1:W/2+1] = 1``
    (its comment says "centre lines"; the slice is the square where the two centre rows and
    columns cross).

    Args:
        values: the quadrant scores (k, 4).
        size: ``(H, W)`` of the mosaic.
        grouping: as for [`arrange_mosaic`][relprop.metrics.arrange_mosaic].

    Returns:
        (k, H, W).
    """
    h, w = size
    k = values.shape[0]
    tiles = values.reshape(4 * k, 1, 1, 1).expand(4 * k, 1, h // 2, w // 2)
    s = arrange_mosaic(tiles, grouping)[:, 0].clone()
    s[:, h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1] = 1.0
    return s


def contrastiveness(a_mosaic: Tensor, s: Tensor) -> Tensor:
    """Compute ``C = relu(Σ(S ⊙ A) / (Σ A + eps))`` (section 3.2).

    Args:
        a_mosaic: the normalised maps of the mosaics (k, ...).
        s: the score maps, broadcasting to ``a_mosaic``.

    Returns:
        (k,).
    """
    return (_flat(s * a_mosaic).sum(1) / (_flat(a_mosaic).sum(1) + EPS)).clamp(min=0)


# ---------------------------------------------------------------- evaluation


def _check_map(a: Any, like: Tensor, name: str, what: str) -> Tensor:
    if not isinstance(a, Tensor) or a.shape != like.shape:
        shape = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise InputError(f"method {name!r} returned {shape} for {what}; expected shape {tuple(like.shape)}")
    if not torch.isfinite(a).all():
        raise InputError(f"method {name!r} returned non-finite values for {what}")
    return a.detach()


@dataclass
class _Batch:
    """What the scores of every method on one batch share (``k`` positive images)."""

    index: Tensor  # (k,) data index of each positive image
    mosaics: Tensor  # (k, C, H, W)
    target: Tensor  # (k,) predicted class of each positive image
    score: Tensor  # (k, H, W) score map S
    inputs: Tensor  # (k + 2 (T-1) k, C, H, W): positives, MoRF states 1..T-1, LeRF states 1..T-1
    d_o: Tensor  # (k, T-1) output differences
    i_c: Tensor  # (k, ...) combined impact map


class GAE:
    """The GAE metric (section 3.2); the module docstring lists every choice.

    Args:
        steps: T >= 2 saved perturbation states.
        seed: seeds the positive-image draws ([`batch_generator`][relprop.metrics.batch_generator]).
        granularity: ``"feature"`` (default) or ``"pixel"``.
        quadrant_classes: ``"label"`` (default) or ``"predicted"``.
        grouping: ``"consecutive"`` (default) or ``"authors"``.

    Raises:
        InputError: ``steps`` is not an integer >= 2, or an option is not one of its choices.
    """

    def __init__(
        self,
        steps: int = 10,
        seed: int = 0,
        granularity: str = "feature",
        quadrant_classes: str = "label",
        grouping: str = "consecutive",
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise InputError(f"steps must be an integer >= 2 (state 0 is the unperturbed input), got {steps!r}")
        _check_choice("granularity", granularity, GRANULARITIES)
        _check_choice("quadrant_classes", quadrant_classes, QUADRANT_CLASSES)
        _check_choice("grouping", grouping, GROUPINGS)
        self.steps, self.seed = steps, seed
        self.granularity, self.quadrant_classes, self.grouping = granularity, quadrant_classes, grouping

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

    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, first: int, bi: int) -> _Batch | None:
        """Positive images, mosaics, score map and perturbations of batch ``bi`` (data indices from ``first``)."""
        with torch.no_grad():
            logits = model(x)
        y = y.to(logits.device)
        bad = ((y < 0) | (y >= logits.shape[1])).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise InputError(f"label {int(y[i])} of sample {first + i} is outside 0..{logits.shape[1] - 1}")
        n = x.shape[0] - x.shape[0] % 4
        if n == 0:
            return None
        x, y, logits, k = x[:n], y[:n], logits[:n], n // 4
        preds = logits.argmax(1)
        mos = mosaic(x, self.grouping)
        with torch.no_grad():
            positive = sample_positive(model(mos), preds.reshape(k, 4), batch_generator(self.seed, bi))
        positive = positive.to(preds.device)
        pidx = torch.arange(k, device=preds.device) * 4 + positive
        xp, cp = x[pidx], preds[pidx]
        classes = (y if self.quadrant_classes == "label" else preds).reshape(k, 4)
        vals = quadrant_scores(logits[pidx].softmax(-1), classes, positive)
        s = score_map(vals, (x.shape[2], x.shape[3]), self.grouping)
        morf = perturb(model, xp, cp, self.steps, "morf", self.granularity)
        lerf = perturb(model, xp, cp, self.steps, "lerf", self.granularity)
        inputs = torch.cat([xp, morf.inputs[1:].flatten(0, 1), lerf.inputs[1:].flatten(0, 1)])
        d_o = output_differences(morf.outputs, lerf.outputs)
        return _Batch(first + pidx.cpu(), mos, cp, s, inputs, d_o, impact_map(morf.maps, lerf.maps))

    def _scores(self, b: _Batch, a_mos: Tensor, a_all: Tensor) -> dict[str, Tensor]:
        """LC_R, LC_F, LC, C and GAE of one method from its maps of the mosaics and of ``b.inputs``."""
        s = b.score
        if self.granularity == "pixel":
            a_mos, a_all = a_mos.sum(1), a_all.sum(1)
        else:
            s = s[:, None]
        a_mos, a_all = normalize_map(a_mos), normalize_map(a_all)
        k, t1 = len(b.target), self.steps - 1
        a0 = a_all[:k]
        a_m = a_all[k : k * (t1 + 1)].reshape(t1, *a0.shape)
        a_l = a_all[k * (t1 + 1) :].reshape(t1, *a0.shape)
        lc_r = lc_robustness(b.d_o.to(a0.device), attribution_differences(a0, a_m, a_l))
        lc_f = lc_faithfulness(a0, b.i_c.to(a0.device))
        lc = local_consistency(lc_r, lc_f)
        c = contrastiveness(a_mos, s.to(a_mos.device))
        return dict(zip(SCORES, (lc_r, lc_f, lc, c, lc * c)))

    def _score_methods(
        self, model: nn.Module, methods: Mapping[str, Method], b: _Batch, bi: int, out: _Accumulator
    ) -> None:
        """Every method's scores on batch ``bi``; a method that raises is recorded as a failure."""
        targets = b.target.repeat(len(b.inputs) // len(b.target))
        for name, method in methods.items():
            try:
                a_mos = method(model, b.mosaics, b.target)
                a_all = method(model, b.inputs, targets)
            except Exception as e:  # a method's own failure: recorded, not dropped
                out.failures.append((name, bi, f"{type(e).__name__}: {e}"))
                continue
            a_mos = _check_map(a_mos, b.mosaics, name, f"the mosaics of batch {bi}")
            a_all = _check_map(a_all, b.inputs, name, f"the perturbed inputs of batch {bi}")
            for key, v in self._scores(b, a_mos, a_all).items():
                out.scores[name][key].append(v.detach().cpu())
            out.images[name].append(b.index)

    def evaluate(
        self,
        model: nn.Module,
        methods: Mapping[str, Method],
        data: Any,
        batch_size: int = 16,
        progress: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> GAEResult:
        """Score every method on the positive image of each group of four images.

        Images beyond a multiple of 4 in a batch are left out.  A method that raises on a
        batch is recorded in the result's ``failures`` instead of stopping the evaluation.

        Args:
            model: the classifier the methods explain.
            methods: ``{name: method}``, each a [`Method`][relprop.metrics.Method]
                (e.g. from [`build_methods`][relprop.methods.build_methods]).
            data: a dataset of (image, label) or a DataLoader, in a fixed order.
            batch_size: images per batch, a positive multiple of 4 (a DataLoader's own
                batch size must be one too).
            progress: show a progress bar.
            shard: ``(rank, world)`` scores only the batches ``b`` with
                ``b % world == rank`` (each batch's draw depends on ``(seed, b)`` only), so
                ``GAEResult.merge`` of all ranks' results equals one process's result when
                every rank reads the same batches.

        Returns:
            The [`GAEResult`][relprop.metrics.GAEResult]: per method and score, one value per
            positive image.

        Raises:
            InputError: fewer than 4 images, a batch size that is not a multiple of 4,
                batches that are not (N, C, H, W), a label outside the model's classes, a
                method returning a map of the wrong shape or non-finite values, or a bad
                ``shard``.
        """
        from tqdm.auto import tqdm

        rank, world = _check_shard(shard)
        model.eval()
        out = _Accumulator.of(methods)
        seen = 0
        for bi, (x, y) in enumerate(tqdm(self._batches(data, batch_size), desc="GAE", disable=not progress)):
            x, y = torch.as_tensor(x), torch.as_tensor(y)
            if x.dim() != 4:
                raise InputError(f"GAE needs image batches shaped (N, C, H, W); batch {bi} is {tuple(x.shape)}")
            first, seen = seen, seen + x.shape[0]
            if bi % world != rank:
                continue
            b = self._prepare(model, x, y, first, bi)
            if b is not None:
                self._score_methods(model, methods, b, bi, out)
        if seen < 4:
            raise InputError(f"GAE needs at least 4 images, the data has {seen}")
        return out.result()


def _check_shard(shard: Any) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and all(type(v) is int for v in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise InputError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    return shard[0], shard[1]


@dataclass
class _Accumulator:
    scores: dict[str, dict[str, list[Tensor]]]
    images: dict[str, list[Tensor]]
    failures: list[tuple[str, int, str]] = field(default_factory=list)

    @classmethod
    def of(cls, methods: Iterable[str]) -> _Accumulator:
        return cls({m: {s: [] for s in SCORES} for m in methods}, {m: [] for m in methods})

    def result(self) -> GAEResult:
        scores = {m: {s: torch.cat(v) if v else torch.empty(0) for s, v in d.items()} for m, d in self.scores.items()}
        images = {m: torch.cat(v) if v else torch.empty(0, dtype=torch.long) for m, v in self.images.items()}
        return GAEResult(scores, self.failures, images)
