"""What one explain produced: :class:`Explanation`, and its assembly from a walk."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .engine import Walk
from .targets import Start
from .tracing import user_stacklevel

__all__ = ["Explanation", "assemble"]


@dataclass
class Explanation:
    """Everything one explain produced; returned by [`Graph.explanation`][relprop.Graph.explanation].

    Attributes:
        relevance: what [`Graph.explain`][relprop.Graph.explain] returns.
        inputs: the relevance of every input that received some (keyed like the input:
            position for tuples, name for dicts).
        passes: the same before the contrastive passes are combined, with the pass
            dimension first.
        output: the model's output.
        classes: the target classes chosen per sample (None where the target selects none).
        contrastive: whether the explanation is contrastive (target pass minus the pass
            from the other classes).

    Token ids (integer inputs): a token's relevance is read at the output of the
    embedding lookup indexed by those ids (the word embeddings) and summed over
    the hidden dimension.  Other lookups on the way — position embeddings (indexed
    by a buffer or by positions computed from the ids), token-type embeddings —
    receive relevance too; they are not tokens, so they are not added to the token
    relevance.  ``embeddings`` holds the relevance of *every* lookup, keyed by the
    module path of the embedding (e.g. ``"embeddings.position"``),
    shaped like the lookup's indices: (batch, tokens), or (1, tokens) summed over
    the batch where one index tensor is shared by the whole batch (position ids).
    With a conservative rule set, the output relevance is the sum over all entries
    of ``embeddings`` (plus what biases absorb).  The word embeddings' entry equals
    the token relevance.

    Padding: for dict inputs with an ``attention_mask`` shaped like the token ids,
    the token relevance in ``relevance`` and ``inputs`` (and the entries of
    ``embeddings`` shaped like the mask) is set to exactly 0 where the mask is 0.
    The models relprop is tested on already give padded positions exactly 0 by
    their own attention masks (tests/test_transformers.py checks ``passes``); the
    zeroing is a guarantee on top.  ``passes`` and the (1, tokens) entries of shared
    lookups are left as the walk produced them.
    """

    relevance: Any
    inputs: dict[Any, Tensor]
    passes: dict[Any, Tensor]
    output: Any
    classes: Tensor | None
    contrastive: bool
    #: node name -> relevances its rule gave each input (recorded nodes only: ``record=``)
    records: dict[str, list[Tensor | None]] = field(default_factory=dict)
    #: node name -> relevance of the node's output (recorded nodes only: ``record=``)
    node_relevance: dict[str, Any] = field(default_factory=dict)
    #: embedding module path -> relevance of that lookup, summed over the hidden dimension
    #: and shaped like its indices (see below)
    embeddings: dict[str, Tensor] = field(default_factory=dict)


def assemble(inputs: Any, labels: list[Any], walk: Walk, start: Start, out: Any) -> Explanation:
    """The :class:`Explanation` of one walk: passes combined, padding zeroed, the result picked."""
    passes: dict[Any, Tensor] = {}
    combined: dict[Any, Tensor] = {}

    def combine(R: Tensor) -> Tensor:
        return R[0] - R[1] if start.passes == 2 else R[0]

    mask = _attention_mask(inputs)
    for i, R in walk.inputs.items():
        key = labels[i]
        passes[key] = R
        combined[key] = combine(R)
        value = inputs.get(key) if isinstance(inputs, Mapping) and isinstance(key, str) else None
        if mask is not None and isinstance(value, Tensor) and not value.is_floating_point():
            combined[key] = _zero_padding(combined[key], mask)
    if start.passes == 2:
        _check_contrast(passes)
    embeddings = {path: combine(R) for path, R in walk.embeddings.items()}
    if mask is not None:
        embeddings = {k: _zero_padding(v, mask) for k, v in embeddings.items()}
    if isinstance(inputs, Tensor):
        relevance: Any = combined.get(labels[0], torch.zeros_like(inputs))
    elif isinstance(inputs, Mapping):
        first = "input_ids" if "input_ids" in combined else next((k for k in labels if k in combined), None)
        relevance = combined[first] if first is not None else None
    else:
        relevance = tuple(combined.get(k) for k in labels)
    return Explanation(
        relevance=relevance,
        inputs=combined,
        passes=passes,
        output=out,
        classes=start.classes,
        contrastive=start.passes == 2,
        records=walk.records,
        node_relevance=walk.outputs,
        embeddings=embeddings,
    )


#: a contrastive explanation whose passes differ by less than this share of the positive
#: pass (per sample) is mostly cancellation: :func:`_check_contrast` warns
VANISHING_CONTRAST = 0.01
_contrast_warned = False


def contrast(passes: Mapping[Any, Tensor]) -> Tensor | None:
    """Per sample, Σ|R⁺ − R⁻| / Σ|R⁺| over every input of a two-pass walk (None: no input
    with a batch dimension received relevance)."""
    diff: Tensor | None = None
    positive: Tensor | None = None
    for R in passes.values():
        if not isinstance(R, Tensor) or R.dim() < 2 or R.shape[0] != 2:
            continue
        d = (R[0] - R[1]).abs().reshape(R.shape[1], -1).sum(1).double()
        p = R[0].abs().reshape(R.shape[1], -1).sum(1).double()
        diff, positive = (d, p) if diff is None or positive is None else (diff + d, positive + p)
    if diff is None or positive is None:
        return None
    return diff / positive.clamp_min(torch.finfo(torch.float64).tiny)


def _check_contrast(passes: Mapping[Any, Tensor]) -> None:
    """Warn (once per process) where a contrastive explanation's passes nearly cancel."""
    global _contrast_warned
    if _contrast_warned:
        return
    ratio = contrast(passes)
    if ratio is None or not bool((ratio < VANISHING_CONTRAST).any()):
        return
    _contrast_warned = True
    low = float(ratio.min())
    warnings.warn(
        f"the contrastive explanation's two passes nearly cancel: for sample {int(ratio.argmin())} the "
        f"difference is {100 * low:.2g} % of the positive pass (Σ|R⁺ − R⁻| / Σ|R⁺|; warned below "
        f"{100 * VANISHING_CONTRAST:.0f} %): the map is small and made of what the target's pass and the "
        "other classes' pass do not share (docs/semantics.md §Contrastive). For language models and deep "
        "transformers relprop.rules.AttnLRP() explains without a contrast; contrastive=False gives absLRP's "
        "positive pass alone; explanation(...).passes holds both passes.",
        stacklevel=user_stacklevel(),
    )


def _attention_mask(inputs: Any) -> Tensor | None:
    """The ``attention_mask`` of dict inputs (an integer or bool tensor), else None."""
    if not isinstance(inputs, Mapping):
        return None
    mask = inputs.get("attention_mask")
    if isinstance(mask, Tensor) and not mask.is_floating_point() and mask.dim() == 2:
        return mask
    return None


def _zero_padding(R: Tensor, mask: Tensor) -> Tensor:
    """R with exactly 0 where the attention mask is 0 (only where R is shaped like the mask)."""
    if R.shape != mask.shape:
        return R
    return torch.where(mask.to(R.device) != 0, R, torch.zeros((), dtype=R.dtype, device=R.device))
