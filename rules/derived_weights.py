"""absLRP's derived weights: |W|, 2W⁺ and [W, |W|], and the cache that keeps them per Graph.

Linear and convolution layers multiply by a weight derived from theirs (Eq. 12 of the
paper needs Wᵀg and |W|ᵀg; after a ReLU, x ≥ 0 and the two fold into (2W⁺)ᵀg).  A Graph
keeps derived weights between explains in its :class:`~relprop.rules.base.RuleCache`
(``ctx.hints.cache``) within a budget (``AbsLRP(weight_cache=...)``); the others are
derived at every explain, block by block of outputs where they are large.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import Tensor

from .base import Context
from .products import input_product, input_product_in_blocks, supports

__all__ = [
    "ABSOLUTE",
    "DOUBLE_POSITIVE",
    "WITH_ABSOLUTE",
    "Derivation",
    "DerivedWeights",
    "check_weight_cache",
    "derived_factor",
    "derived_product",
    "weight_budget",
    "weight_cache_bytes",
]


class Derivation:
    """A weight absLRP derives from a layer's weight W: |W|, 2W⁺ or [W, |W|].

    ``copies``: how many weights the derived one holds along the input dimension
    (dimension 1 of linear and convolution weights); ``fill(w, out)`` writes it into
    ``out``.  Calling it returns a new tensor, or fills ``out`` (a block of rows).
    """

    def __init__(self, name: str, copies: int, fill: Callable[[Tensor, Tensor], Any]) -> None:
        self.name = name
        self.copies = copies
        self.fill = fill

    def __call__(self, w: Tensor, out: Tensor | None = None) -> Tensor:
        if out is None:
            out = w.new_empty(w.shape[0], self.copies * w.shape[1], *w.shape[2:])
        self.fill(w, out)
        return out

    def nbytes(self, w: Tensor) -> int:
        return self.copies * w.numel() * w.element_size()

    def __repr__(self) -> str:
        return self.name


def _fill_with_absolute(w: Tensor, out: Tensor) -> None:
    n = w.shape[1]
    out.narrow(1, 0, n).copy_(w)
    torch.abs(w, out=out.narrow(1, n, n))


def _fill_double_positive(w: Tensor, out: Tensor) -> None:
    torch.clamp_min(w, 0, out=out).mul_(2)


ABSOLUTE = Derivation("|W|", 1, lambda w, out: torch.abs(w, out=out))
DOUBLE_POSITIVE = Derivation("2W⁺", 1, _fill_double_positive)  # W + |W|
WITH_ABSOLUTE = Derivation("[W, |W|]", 2, _fill_with_absolute)

#: ``weight_cache="auto"``: keep derived weights up to this share of the model's parameter
#: bytes, and up to :data:`AUTO_FLOOR` bytes whatever the model (see :class:`~relprop.rules.AbsLRP`)
AUTO_FRACTION = 1 / 8
AUTO_FLOOR = 64 << 20
#: derived weights not kept are built block by block of output features or channels of at
#: most this many bytes (in float32/float64: the blocks' sums are not rounded to less), on
#: the CPU and on other devices
BLOCK_BYTES = {"cpu": 4 << 20}
DEFAULT_BLOCK_BYTES = 64 << 20


def check_weight_cache(value: Any, owner: str = "AbsLRP") -> Any:
    """``value`` if it is a valid ``weight_cache`` option, else :class:`~relprop.RuleError`."""
    if isinstance(value, bool) or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0:
        return value
    from relprop.errors import RuleError

    raise RuleError(
        f"{owner}(weight_cache=...) must be 'auto' (the default: derived weights kept up to "
        f"max({AUTO_FLOOR >> 20} MiB, {AUTO_FRACTION:g} × the model's parameter bytes)), True (keep all), "
        f"False (keep none) or a budget in bytes (a number ≥ 0); got {value!r}"
    )


def weight_budget(value: Any, parameter_bytes: int) -> float:
    """The bytes of derived weights a ``weight_cache`` option allows (inf: no bound)."""
    if value is True:
        return math.inf
    if value is False:
        return 0
    if isinstance(value, str):  # "auto"
        return max(AUTO_FLOOR, AUTO_FRACTION * parameter_bytes)
    return float(value)


class DerivedWeights:
    """absLRP's derived weights (|W|, 2W⁺, [W, |W|]) kept for one Graph, within a budget.

    Lives in the Graph's :class:`~relprop.rules.base.RuleCache` (``ctx.hints.cache``), so it is
    freed with the Graph and shared by all its traces.  Keyed by the weight's graph input
    (a parameter's placeholder, the same in every trace) and the derivation; only weights
    that are graph inputs are kept (a weight computed in the graph is new at every explain).
    An entry is used only while the weight is the same tensor, unchanged: the same storage,
    layout, dtype and device, and the same in-place version counter (optimizer steps bump
    it).  It holds the weight it was computed from, so that memory cannot be reused by
    another tensor; a stale entry is dropped when its weight is next seen.

    Entries are admitted first come, first kept: one that would take the total over the
    asking rule's budget is not kept (its weight is derived on the fly at every explain)
    and nothing is evicted, so a walk that needs more than the budget keeps the same
    layers every time instead of evicting each one before its next use.
    """

    def __init__(self) -> None:
        #: (placeholder name, derivation) -> (weight, version, derived weight)
        self.entries: dict[tuple[str, Derivation], tuple[Tensor, int, Tensor]] = {}
        self.nbytes = 0

    @classmethod
    def of(cls, ctx: Context) -> DerivedWeights:
        store = ctx.hints.cache.get(cls)
        if store is None:
            store = ctx.hints.cache[cls] = cls()
        return store

    def get(self, key: tuple[str, Derivation], w: Tensor) -> Tensor | None:
        """The derived weight kept for ``key`` if it was made from ``w`` as it is now; drops a stale one."""
        hit = self.entries.get(key)
        if hit is None:
            return None
        old, version, derived = hit  # ``old`` shares w's version counter: compare the number
        if (
            old.data_ptr() == w.data_ptr()
            and version == w._version
            and old.shape == w.shape
            and old.stride() == w.stride()
            and old.dtype == w.dtype
            and old.device == w.device
        ):
            return derived
        self.drop(key)
        return None

    def fits(self, nbytes: int, budget: float) -> bool:
        return self.nbytes + nbytes <= budget

    def put(self, key: tuple[str, Derivation], w: Tensor, derived: Tensor) -> None:
        self.drop(key)
        self.entries[key] = (w, w._version, derived)
        self.nbytes += derived.numel() * derived.element_size()

    def drop(self, key: tuple[str, Derivation]) -> None:
        hit = self.entries.pop(key, None)
        if hit is not None:
            self.nbytes -= hit[2].numel() * hit[2].element_size()

    def __len__(self) -> int:
        return len(self.entries)


def derived_product(
    ctx: Context, w: Tensor, derive: Derivation, g: Tensor, weight_cache: Any, kept_only: bool = False
) -> Tensor | None:
    """Jᵀg with ``derive(w)`` as the op's weight (:func:`input_product`); None if unsupported.

    The derived weight comes from the graph's :class:`DerivedWeights`, or is derived here
    and kept there if the budget of ``weight_cache`` allows.  Otherwise (None with
    ``kept_only``) it is dropped after the product; if larger than a block, it is built and
    multiplied block by block of output features or channels (:func:`input_product_in_blocks`:
    bounded memory, and no fresh memory for the allocator to map at every explain).
    """
    if not supports(ctx, derive.copies):  # nothing derived for a product done elsewhere
        return None
    store, key, kept = _lookup(ctx, ctx.node.args[1] if len(ctx.node.args) > 1 else None, w, derive)
    if kept is not None:
        return input_product(ctx, kept, g, derive.copies)
    keep = _may_keep(ctx, store, key, w, derive, weight_cache)
    if kept_only and not keep:
        return None
    block = BLOCK_BYTES.get(w.device.type, DEFAULT_BLOCK_BYTES)
    if not keep and derive.nbytes(w) > block and w.dtype in (torch.float32, torch.float64):
        out = input_product_in_blocks(ctx, w, derive, g, derive.copies, block)
        if out is not None:
            return out
    derived = derive(w)
    out = input_product(ctx, derived, g, derive.copies)
    if keep and out is not None:
        assert key is not None
        store.put(key, w, derived)
    return out


def derived_factor(ctx: Context, w: Tensor, node: Any, derive: Derivation, weight_cache: Any) -> Tensor:
    """``derive(w)`` for the weight ``w`` given to the node as the graph argument ``node``: from
    the graph's :class:`DerivedWeights`, or derived here (and kept if ``weight_cache`` allows)."""
    store, key, kept = _lookup(ctx, node, w, derive)
    if kept is not None:
        return kept
    derived = derive(w)
    if _may_keep(ctx, store, key, w, derive, weight_cache):
        assert key is not None
        store.put(key, w, derived)
    return derived


def _lookup(
    ctx: Context, node: Any, w: Tensor, derive: Derivation
) -> tuple[DerivedWeights, tuple[str, Derivation] | None, Tensor | None]:
    """The graph's store, the key of ``derive(w)`` (None unless ``node`` is a placeholder: only
    graph inputs are the same tensor at every explain) and its kept value if it holds one."""
    key = (node.name, derive) if isinstance(node, torch.fx.Node) and node.op == "placeholder" else None
    store = DerivedWeights.of(ctx)
    return store, key, None if key is None else store.get(key, w)


def _may_keep(ctx: Context, store: DerivedWeights, key: Any, w: Tensor, derive: Derivation, weight_cache: Any) -> bool:
    budget = weight_budget(weight_cache, ctx.hints.cache.parameter_bytes)
    return key is not None and not w.requires_grad and store.fits(derive.nbytes(w), budget)


def weight_cache_bytes(graph: Any) -> int:
    """Bytes of the derived weights absLRP keeps for ``graph`` (a :class:`~relprop.Graph`)."""
    store = graph.rule_cache.get(DerivedWeights)
    return 0 if store is None else store.nbytes
