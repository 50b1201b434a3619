"""From ``target`` to the relevance the backward walk starts with.

``target`` (Captum's convention, extended):

- None: the predicted class (argmax of the main output) per sample;
- an int, or a sequence / 1-D integer tensor with one class per sample;
- a float tensor shaped like the main output: the initial relevance, as-is;
- a callable ``output -> selected scores`` for outputs that are not
  (batch, classes), e.g. ``lambda out: out.logits[:, -1, token_id]``, or the
  same made by :func:`next_token` (``relprop.targets.next_token(token_id)``);
- :func:`region` (``relprop.targets.region(cls, mask=None)``) for segmentation
  models: the class-``cls`` logit summed over a region of pixels.

The *main* output is the model's output tensor, the first element of a tuple, or
the ``logits`` entry of a dict / Hugging Face ``ModelOutput``.  One pass starts
at the selected scores; a contrastive explanation adds a second pass started
from every other entry of the same rows (all other classes; for a callable with a
``class_dim`` attribute, such as :func:`region`, the other entries along that
dimension at the same positions), each pass rescaled to Σ = 1 per sample
(docs/semantics.md §Contrastive).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from .errors import InputError, TargetError
from .rules.products import sparse_rows

__all__ = [
    "NextToken",
    "Region",
    "Start",
    "main_output_index",
    "next_token",
    "region",
    "split_target",
    "start_relevance",
]


@dataclass
class Start:
    """Initial relevance per flat output (P, *shape) or None, and the chosen classes."""

    relevance: list[Tensor | None]
    classes: Tensor | None
    passes: int


def main_output_index(out_obj: Any, flat: list[Any]) -> int:
    """Index in ``flat`` of the main output tensor."""
    main: Any = out_obj
    if isinstance(out_obj, Mapping):
        main = out_obj["logits"] if "logits" in out_obj else next(iter(out_obj.values()))
    elif isinstance(out_obj, (tuple, list)):
        main = out_obj[0] if out_obj else None
    elif hasattr(out_obj, "logits"):
        main = out_obj.logits
    for i, v in enumerate(flat):
        if v is main:
            return i
    raise TargetError(
        f"cannot find the model's main output in {type(out_obj).__name__}; expected a tensor, a "
        "tuple whose first element is a tensor, or a dict/ModelOutput with 'logits'. Pass a "
        "callable target to select the scores to explain."
    )


def _selection(
    out_obj: Any, flat: list[Any], spec: pytree.TreeSpec, target: Any, batch: int
) -> tuple[list[Tensor | None], Tensor | None]:
    """Selection weights per flat output (d selected / d output) and class indices if any."""
    if callable(target) and not isinstance(target, Tensor):
        return _callable_selection(flat, spec, target, batch), None
    i = main_output_index(out_obj, flat)
    main: Tensor = flat[i]
    weights: list[Tensor | None] = [None] * len(flat)
    if main.dim() != 2:
        raise TargetError(
            f"the model's output is shaped {tuple(main.shape)}, not (batch, classes), so a class "
            "index does not say what to explain; pass target as a callable that selects one "
            "score per sample, e.g. target=lambda out: out.logits[:, -1, token_id]."
        )
    classes = _class_indices(main, target, batch)
    weights[i] = torch.nn.functional.one_hot(classes, main.shape[1]).to(main.dtype)
    return weights, classes


def _class_indices(main: Tensor, target: Any, batch: int) -> Tensor:
    n_classes = main.shape[1]
    if target is None:
        return main.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise TargetError(f"target must be a class index, got the bool {target}")
    if isinstance(target, Tensor) and target.dim() == 0:
        target = target.item()
    if isinstance(target, int):
        classes = torch.full((batch,), target, dtype=torch.long, device=main.device)
    elif isinstance(target, (Sequence, Tensor)) and not isinstance(target, str):
        t = torch.as_tensor(target) if not isinstance(target, Tensor) else target
        if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
            raise TargetError(
                f"target as a sequence must be one integer class index per sample; got "
                f"{'a float' if t.is_floating_point() else str(t.dtype)} tensor shaped {tuple(t.shape)}"
            )
        if len(t) != batch:
            raise TargetError(
                f"target has {len(t)} class indices but the batch has {batch} samples; expected "
                "one index per sample (or a single int for all)."
            )
        classes = t.to(device=main.device, dtype=torch.long)
    else:
        raise TargetError(
            f"target of type {type(target).__name__} is not understood; expected None, an int, "
            "a sequence of ints, a float tensor shaped like the output, or a callable."
        )
    bad = (classes < 0) | (classes >= n_classes)
    if bad.any():
        j = int(bad.nonzero()[0])
        raise TargetError(
            f"target class {int(classes[j])} (sample {j}) is out of range: the model has "
            f"{n_classes} classes, so expected 0 <= target < {n_classes}."
        )
    return classes


def _callable_selection(
    flat: list[Any], spec: pytree.TreeSpec, target: Callable[[Any], Any], batch: int
) -> list[Tensor | None]:
    with torch.enable_grad():
        leaves = [
            v.detach().requires_grad_(True) if isinstance(v, Tensor) and v.is_floating_point() else v for v in flat
        ]
        try:
            scores = target(pytree.tree_unflatten(leaves, spec))
        except TargetError:
            raise
        except Exception as err:  # noqa: BLE001 - user code: report what failed
            raise TargetError(f"the target callable failed on the model output: {err!r}") from err
        if not isinstance(scores, Tensor) or not scores.requires_grad:
            raise TargetError(
                "the target callable must return scores (a tensor) computed from the model "
                f"output, e.g. out.logits[:, -1, token_id]; got {type(scores).__name__}"
            )
        if scores.dim() == 0 or scores.shape[0] != batch:
            raise TargetError(
                f"the target callable returned shape {tuple(scores.shape)}; expected the batch "
                f"({batch}) first, one or more scores per sample."
            )
        tensors = [v for v in leaves if isinstance(v, Tensor) and v.requires_grad]
        grads = torch.autograd.grad(scores.sum(), tensors, allow_unused=True)
    it = iter(grads)
    weights = [next(it) if isinstance(v, Tensor) and v.requires_grad else None for v in leaves]
    weights = [None if w is None or not w.any() else w for w in weights]
    if all(w is None for w in weights):
        raise TargetError("the target callable's scores do not depend on the model output")
    return weights


def _per_sample(weights: list[Tensor | None]) -> Tensor:
    """Σ|w| per sample over all outputs, shaped (B,)."""
    totals = [w.abs().reshape(w.shape[0], -1).sum(1) for w in weights if w is not None]
    return torch.stack(totals).sum(0)


def _unit(weights: list[Tensor | None], what: str) -> list[Tensor | None]:
    total = _per_sample(weights)
    _check_selects(total, what)
    out = []
    for w in weights:
        out.append(None if w is None else w / total.reshape(-1, *[1] * (w.dim() - 1)))
    return out


def start_relevance(
    out_obj: Any,
    flat: list[Any],
    spec: pytree.TreeSpec,
    target: Any,
    *,
    start: str,
    contrastive: bool,
    contrastive_given: bool,
    batch: int,
) -> Start:
    """The relevance at each flat output for both passes (docs/semantics.md §Contrastive)."""
    if isinstance(target, Tensor) and target.is_floating_point():
        i = main_output_index(out_obj, flat)
        if tuple(target.shape) != tuple(flat[i].shape):
            raise TargetError(
                f"a float target is the initial relevance and must be shaped like the model "
                f"output {tuple(flat[i].shape)}; got {tuple(target.shape)}"
            )
        if contrastive and contrastive_given:
            raise TargetError(
                "a float target is used as the initial relevance as-is; it cannot be combined "
                "with contrastive=True (give class indices instead)"
            )
        rel: list[Tensor | None] = [None] * len(flat)
        rel[i] = target.to(dtype=flat[i].dtype, device=flat[i].device)[None]
        _check_finite(flat, [None if r is None else r[0] for r in rel])
        return Start(rel, None, 1)
    weights, classes = _selection(out_obj, flat, spec, target, batch)
    dim = getattr(target, "class_dim", -1) if callable(target) and not isinstance(target, Tensor) else -1
    if start == "onehot" or contrastive:
        rows = _row_start(flat, weights, contrastive, dim)
        if rows is not None:
            return Start(rows, classes, 2 if contrastive else 1)
    _check_finite(flat, weights)
    if contrastive:
        positive = _unit(weights, "target")
        negative = _unit(_others(weights, target), "contrast (all other classes)")
        rel = [None if p is None else torch.stack([p, n]) for p, n in zip(positive, negative)]
        return Start(rel, classes, 2)
    if start == "onehot":
        positive = _unit(weights, "target")
    else:
        positive = [None if w is None else w * v.detach() for w, v in zip(weights, flat)]
    return Start([None if p is None else p[None] for p in positive], classes, 1)


def _others(weights: list[Tensor | None], target: Any) -> list[Tensor | None]:
    """The contrastive pass's selection: ones on every other entry of the rows the target selects.

    A row runs along the last dimension (the classes of a (batch, classes) output, the
    vocabulary of a language model), or along the target's ``class_dim`` if it has one
    (:class:`Region`: the classes of a (batch, classes, H, W) output at the same pixels).
    """
    dim = getattr(target, "class_dim", -1) if callable(target) and not isinstance(target, Tensor) else -1
    others: list[Tensor | None] = []
    for w in weights:
        if w is None:
            others.append(None)
            continue
        row = (w != 0).any(dim=dim, keepdim=True)
        others.append((row & (w == 0)).to(w.dtype))
    return others


def _check_finite(flat: list[Any], weights: list[Tensor | None]) -> None:
    """An InputError naming the samples whose explained output rows hold NaN or Inf.

    Relevance started from such a row is NaN everywhere: nothing would be explained, and
    nothing downstream would say why.
    """
    for w, v in zip(weights, flat):
        if w is None or not isinstance(v, Tensor) or v.dim() == 0 or not v.is_floating_point():
            continue
        used = (w != 0).reshape(w.shape[0], -1).any(1)
        bad = used & ~torch.isfinite(v).reshape(v.shape[0], -1).all(1)
        if bad.any():
            _not_finite(bad.nonzero().flatten().tolist())


def _not_finite(samples: list[int]) -> None:
    raise InputError(
        f"the model's output is not finite (NaN or Inf) for sample(s) {samples[:10]}: there is "
        "nothing to explain there. The model itself produced it on this input (e.g. an attention "
        "mask that fills a whole row with -inf, or an overflow in a lower precision); expected a "
        "finite output for every explained sample."
    )


def _check_selects(total: Tensor, what: str) -> None:
    """A TargetError for the first sample whose selection total is zero."""
    if (total == 0).any():
        j = int((total == 0).nonzero()[0])
        raise TargetError(f"the {what} selects nothing for sample {j}")


def _row_start(
    flat: list[Any], weights: list[Tensor | None], contrastive: bool, dim: int
) -> list[Tensor | None] | None:
    """The one-hot start (and the contrast) computed on the rows the selection touches, or None.

    A language model's target selects one position of a (batch, tokens, vocabulary) output:
    every step of :func:`start_relevance` (the finiteness check, the contrast, the rescaling)
    works on those rows alone, the same numbers as on the whole output.  Only where every
    selection is zero outside at most half of its rows (over all but the last dimension) and
    the contrast runs along the last dimension; None otherwise.
    """
    if any(w is not None and dim not in (-1, w.dim() - 1) for w in weights):
        return None
    parts: list[tuple[Tensor, Tensor, Tensor] | None] = []  # (rows, their samples, their values)
    for w in weights:
        if w is None:
            parts.append(None)
            continue
        if w.dim() < 3:
            return None
        rows = w.reshape(-1, w.shape[-1])
        kept = sparse_rows(rows)
        if kept is None:
            return None
        parts.append((kept, kept // (rows.shape[0] // w.shape[0]), rows.index_select(0, kept)))
    batch = next(w.shape[0] for w in weights if w is not None)
    for part, v in zip(parts, flat):
        if part is not None and isinstance(v, Tensor) and v.is_floating_point():
            kept, samples, _ = part
            bad = ~torch.isfinite(v.reshape(-1, v.shape[-1]).index_select(0, kept)).all(1)
            if bad.any():
                _not_finite(samples[bad].unique().tolist())
    passes = [[None if p is None else p[2] for p in parts]]
    if contrastive:  # every other entry of each selected row
        passes.append([None if p is None else (p[2] == 0).to(p[2].dtype) for p in parts])
    for values, what in zip(passes, ("target", "contrast (all other classes)")):
        total = torch.zeros(batch, dtype=torch.float64, device=next(v.device for v in values if v is not None))
        for part, vals in zip(parts, values):
            if part is not None:
                total.index_add_(0, part[1], vals.abs().sum(1, dtype=torch.float64))
        _check_selects(total, what)
        for j, (part, vals) in enumerate(zip(parts, values)):
            if part is not None:
                values[j] = vals / total.index_select(0, part[1]).to(vals.dtype)[:, None]
    out: list[Tensor | None] = []
    for j, (w, part) in enumerate(zip(weights, parts)):
        if w is None or part is None:
            out.append(None)
            continue
        rel = w.new_zeros(len(passes), *w.shape)
        for p, values in enumerate(passes):
            rel[p].view(-1, w.shape[-1]).index_copy_(0, part[0], values[j])
        out.append(rel)
    return out


class NextToken:
    """Target of a decoder language model: the logit of ``token_id`` at one position.

    Made by :func:`next_token`; calling it on the model output returns one score
    per sample, ``logits[b, position_b, token_b]``.
    """

    def __init__(self, token_id: Any, position: int = -1, attention_mask: Tensor | None = None) -> None:
        self.token_id = token_id
        self.position = position
        self.attention_mask = attention_mask

    def __call__(self, out: Any) -> Tensor:
        logits = _logits(out)
        if logits.dim() != 3:
            raise TargetError(
                f"next_token expects logits shaped (batch, tokens, vocabulary); the model's output "
                f"is shaped {tuple(logits.shape)}"
            )
        batch, length, vocab = logits.shape
        ids = torch.as_tensor(self.token_id, device=logits.device)
        if ids.is_floating_point() or ids.dim() > 1 or (ids.dim() == 1 and len(ids) != batch):
            raise TargetError(
                f"next_token needs one int token id, or one per sample ({batch}); got {_describe(self.token_id, ids)}"
            )
        ids = ids.to(torch.long).expand(batch)
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            j = int(bad.nonzero()[0])
            raise TargetError(
                f"next_token: token id {int(ids[j])} (sample {j}) is outside the model's vocabulary "
                f"of {vocab} tokens; expected 0 <= token_id < {vocab}"
            )
        if self.attention_mask is not None:
            mask = self.attention_mask.to(logits.device)
            if mask.shape != (batch, length):
                raise TargetError(
                    f"next_token: attention_mask shaped {tuple(mask.shape)} does not fit the logits "
                    f"{tuple(logits.shape)}"
                )
            steps = torch.arange(length, device=logits.device).expand(batch, length)
            positions = torch.where(mask != 0, steps, -1).amax(dim=1).clamp_min(0)
        else:
            if not -length <= self.position < length:
                raise TargetError(f"next_token: position {self.position} is outside {length} tokens")
            positions = torch.full((batch,), self.position % length, device=logits.device)
        rows = torch.arange(batch, device=logits.device)
        return logits[rows, positions, ids]

    def rows(self, lo: int, hi: int, total: int) -> NextToken:
        """The target of samples ``lo:hi`` of a batch of ``total`` (per-sample ids and mask split)."""
        ids = self.token_id
        if isinstance(ids, Tensor) and ids.dim() == 1 or isinstance(ids, (list, tuple)):
            if len(ids) != total:
                raise TargetError(
                    f"next_token got {len(ids)} token ids but the batch has {total} samples; "
                    "expected one id, or one per sample"
                )
            ids = ids[lo:hi]
        mask = self.attention_mask
        if isinstance(mask, Tensor) and mask.dim() > 0 and mask.shape[0] == total:
            mask = mask[lo:hi]
        return NextToken(ids, self.position, mask)

    def __repr__(self) -> str:
        return f"next_token({self.token_id!r}, position={self.position})"


def _describe(value: Any, ids: Tensor) -> str:
    """``value`` for an error message: its repr if short, else its type and shape."""
    text = repr(value)
    if len(text) <= 80:
        return text
    return f"a {type(value).__name__} of shape {tuple(ids.shape)} and dtype {ids.dtype}"


def _logits(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TargetError(f"next_token cannot find logits in the model output {type(out).__name__}")


def next_token(
    token_id: int | Sequence[int] | Tensor, *, position: int = -1, attention_mask: Tensor | None = None
) -> NextToken:
    """A target for decoder language models: the next-token logit of ``token_id``.

    ``graph.explain(inputs, relprop.targets.next_token(token_id))`` explains
    ``out.logits[:, -1, token_id]``, the score of ``token_id`` as the token that
    follows the input; it is the same as ``target=lambda out: out.logits[:, -1, token_id]``.

    Args:
        token_id: one id for all samples, or one per sample (sequence or 1-D tensor).
        position: the position whose prediction is explained (default the last);
            with left padding (``tokenizer.padding_side = "left"``) the last position is
            every sample's last real token.
        attention_mask: with right padding, pass the batch's attention mask and
            each sample's last unpadded position is used instead of ``position``.

    Returns:
        The target, a [`NextToken`][relprop.targets.NextToken] to pass to ``explain``.

    Raises:
        TargetError: when explained, a token id outside the vocabulary or an attention
            mask that does not fit the inputs.
    """
    return NextToken(token_id, position, attention_mask)


class Region:
    """Target of a segmentation model: the logit of class ``cls`` summed over a region of pixels.

    Made by :func:`region`; calling it on the model output returns one score per sample,
    ``Σ_{(h, w) in mask_b} out[b, cls_b, h, w]``.  ``class_dim = 1``: a contrastive pass
    starts from all the other classes at the same pixels.
    """

    #: the dimension of the output holding the classes (for the contrastive pass)
    class_dim = 1

    def __init__(self, cls: Any, mask: Any = None) -> None:
        self.cls = cls
        self.mask = mask

    def __call__(self, out: Any) -> Tensor:
        logits = _segmentation_logits(out)
        if logits.dim() != 4:
            raise TargetError(
                f"region expects segmentation logits shaped (batch, classes, height, width); the model's "
                f"output is shaped {tuple(logits.shape)}"
            )
        batch, _, height, width = logits.shape
        classes = self._classes(batch, logits)
        mask = self._pixels(batch, logits, classes)
        empty = ~mask.reshape(batch, -1).any(1)
        if empty.any():
            j = int(empty.nonzero()[0])
            where = "the mask" if self.mask is not None else f"the prediction (no pixel's argmax is {int(classes[j])})"
            raise TargetError(
                f"region: {where} selects no pixel of sample {j}; expected at least one pixel per sample "
                "(pass mask= to choose the pixels)"
            )
        index = classes.reshape(batch, 1, 1, 1).expand(batch, 1, height, width)
        picked = logits.gather(1, index)[:, 0]
        return (picked * mask.to(picked.dtype)).reshape(batch, -1).sum(1)

    def _classes(self, batch: int, logits: Tensor) -> Tensor:
        """One class index per sample, checked against the output's classes."""
        n_classes = logits.shape[1]
        cls = self.cls
        if isinstance(cls, bool) or isinstance(cls, str):
            raise TargetError(f"region needs a class index (an int, or one per sample); got {cls!r}")
        try:
            ids = torch.as_tensor(cls, device=logits.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TargetError(f"region needs a class index (an int, or one per sample); got {cls!r}") from err
        if (
            ids.is_floating_point()
            or ids.dtype == torch.bool
            or ids.dim() > 1
            or (ids.dim() == 1 and len(ids) != batch)
        ):
            raise TargetError(f"region needs one int class index, or one per sample ({batch}); got {cls!r}")
        ids = ids.to(torch.long).expand(batch)
        bad = (ids < 0) | (ids >= n_classes)
        if bad.any():
            j = int(bad.nonzero()[0])
            raise TargetError(
                f"region: class {int(ids[j])} (sample {j}) is out of range: the model has {n_classes} "
                f"classes, so expected 0 <= cls < {n_classes}"
            )
        return ids

    def _pixels(self, batch: int, logits: Tensor, classes: Tensor) -> Tensor:
        """The region as a (batch, H, W) bool tensor: the mask, or the pixels predicted as the class."""
        if self.mask is None:
            return logits.detach().argmax(dim=1) == classes.reshape(batch, 1, 1)
        size = tuple(logits.shape[2:])
        mask = torch.as_tensor(self.mask, device=logits.device)
        if mask.dim() == 2:
            mask = mask.expand(batch, *mask.shape)
        if mask.dim() != 3 or tuple(mask.shape) != (batch, *size):
            raise TargetError(
                f"region: the mask is shaped {tuple(torch.as_tensor(self.mask).shape)}; expected (height, width) "
                f"= {size} or (batch, height, width) = {(batch, *size)}, the size of the model's output"
            )
        if mask.dtype != torch.bool:
            if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
                raise TargetError("region: the mask must be bool or hold only 0 and 1")
            mask = mask != 0
        return mask

    def rows(self, lo: int, hi: int, total: int) -> Region:
        """The target of samples ``lo:hi`` of a batch of ``total`` (per-sample classes and masks split)."""
        cls = self.cls
        if isinstance(cls, Tensor) and cls.dim() == 1 or isinstance(cls, (list, tuple)):
            if len(cls) != total:
                raise TargetError(
                    f"region got {len(cls)} classes but the batch has {total} samples; expected one class, "
                    "or one per sample"
                )
            cls = cls[lo:hi]
        mask = self.mask
        if mask is not None:
            shape = tuple(torch.as_tensor(mask).shape)
            if len(shape) == 3:
                if shape[0] != total:
                    raise TargetError(
                        f"region: the mask is shaped {shape} but the batch has {total} samples; expected "
                        "(height, width) or (batch, height, width)"
                    )
                mask = mask[lo:hi]
        return Region(cls, mask)

    def __repr__(self) -> str:
        mask = "None" if self.mask is None else f"<{tuple(torch.as_tensor(self.mask).shape)}>"
        return f"region({self.cls!r}, mask={mask})"


def _segmentation_logits(out: Any) -> Tensor:
    """The logits of a segmentation model: the output, its ``out`` (torchvision) or ``logits`` entry."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        for key in ("out", "logits"):
            if key in out:
                return out[key]
        first = next(iter(out.values()), None)
        if isinstance(first, Tensor):
            return first
    elif hasattr(out, "logits"):
        return out.logits
    elif isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TargetError(
        f"region cannot find segmentation logits in the model output {type(out).__name__}; expected a "
        "tensor, a dict with 'out' (torchvision) or 'logits', or a tuple whose first element is a tensor"
    )


def region(cls: int | Sequence[int] | Tensor, mask: Any = None) -> Region:
    """A target for segmentation models: class ``cls`` over a region of pixels.

    ``graph.explain(x, relprop.targets.region(cls, mask))`` explains the sum over the
    region's pixels of the class-``cls`` logit: the start relevance is the ``cls`` channel
    of the output restricted to the region (torchvision's ``fcn_*``, ``deeplabv3_*`` and
    ``lraspp_*`` return a dict: its ``"out"`` is explained).

    With a contrastive rule set (absLRP) the negative pass starts from all the other
    classes over the same pixels.

    Args:
        cls: one class for all samples, or one per sample (sequence or 1-D tensor).
        mask: the pixels, a bool or 0/1 tensor shaped (H, W) (the same for every
            sample) or (batch, H, W), the size of the output; None (default): each sample's
            pixels predicted as ``cls`` (argmax over the classes).

    Returns:
        The target, a [`Region`][relprop.targets.Region] to pass to ``explain``.

    Raises:
        TargetError: when explained, a wrong mask shape, a class out of range, an output
            that is not (batch, classes, H, W) or an empty region.
    """
    return Region(cls, mask)


def split_target(target: Any, lo: int, hi: int, total: int) -> Any:
    """The part of ``target`` that belongs to samples ``lo:hi`` of ``total`` (for chunked explains).

    Class indices, float target tensors, :class:`NextToken` and :class:`Region` are split per sample; a
    single class, None and strings stay as they are; other callables cannot be split
    and raise :class:`~relprop.TargetError`.
    """
    if target is None or isinstance(target, (bool, int)):
        return target
    if isinstance(target, Tensor):
        if target.dim() == 0:
            return target
        if target.shape[0] != total:
            raise TargetError(
                f"with batch_size, a target tensor is split along dim 0 and must have one row per "
                f"sample ({total}); got shape {tuple(target.shape)}"
            )
        return target[lo:hi]
    if isinstance(target, (NextToken, Region)):
        return target.rows(lo, hi, total)
    if callable(target):
        raise TargetError(
            "a callable target cannot be split into chunks with batch_size: it sees one chunk's "
            "output at a time and may select scores per sample of the whole batch. Use "
            "relprop.targets.next_token(...), relprop.targets.region(...), class indices or a float "
            "target tensor, or call "
            "explain per chunk yourself."
        )
    if isinstance(target, Sequence) or (hasattr(target, "__len__") and hasattr(target, "__getitem__")):
        if isinstance(target, (str, Mapping)):
            return target
        if len(target) != total:
            raise TargetError(
                f"target has {len(target)} class indices but the batch has {total} samples; "
                "expected one index per sample (or a single int for all)."
            )
        return target[lo:hi]
    return target  # not understood: the explain of the first chunk raises the usual error
