"""The rule interface and the helpers every rule shares.

A rule maps the relevance of one graph node's output to relevance of its tensor
inputs.  It sees the node through a :class:`Context`: the input values, which
of them carry relevance ("live"), the output, and :meth:`Context.call`, which
re-runs the node's op with some inputs replaced.  Relevance tensors carry an
extra leading *pass* dimension ``P`` (two for contrastive explanations) in
front of the tensor's own shape.  What the engine lets a rule skip or reuse at a node
(optimisation hints a rule may ignore) comes as ``ctx.hints`` (:class:`Hints`).

Also here: :class:`Pass`, the structural rule (identity or gradient) of every rule set,
and the ε-rule's ratio (:func:`stable_ratio`, :func:`epsilon_relevance`) it shares with
the classic rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from .categories import Category
from .local import local_call
from .moves import moved

__all__ = [
    "Context",
    "Hints",
    "Layout",
    "NodeInfo",
    "Pass",
    "Relevance",
    "Rule",
    "RuleCache",
    "FunctionRule",
    "vjp",
    "stabilize",
    "stable_ratio",
    "epsilon_relevance",
    "sample_l1",
    "as_list",
    "unit_l1",
    "owned",
    "mark_owned",
]

#: relevance of a node's output: a tensor (P, *shape), or one entry per output of a
#: multi-output op (None where that output received no relevance)
Relevance = Any


@dataclass(frozen=True)
class Layout:
    """Where the batch sits in a tensor.

    The dimension ``dim`` has size ``batch``, or packs the batch with other entries into
    ``outer * batch * inner`` entries, row-major: entry ``e`` belongs to sample
    ``(e // inner) % batch``.

    Attributes:
        dim: the dimension holding the batch.
        inner: the entries per sample packed inside it; None means batch-major packing
            (``inner = size // batch``, e.g. ``(B*heads, N, D)``); token-major packing
            (``(N*B, E)``, as ``nn.MultiheadAttention`` makes) has ``inner=1``.
    """

    dim: int
    inner: int | None = 1


@dataclass
class NodeInfo:
    """What binding learned about a node, shared by all explains of one trace.

    Attributes:
        node: the ``torch.fx`` node.
        category: its op category (a [`Category`][relprop.rules.Category] value), or None.
        module_path: the path of the module that made it.
        module_class: that module's class name.
        first: whether it is a first weighted layer of the input.
    """

    node: Any  # torch.fx.Node
    category: str | None
    #: per flattened argument leaf that is a graph node: does it carry relevance?
    live: list[bool]
    module_path: str = ""
    module_class: str = ""
    first: bool = False
    #: batch layout of the output and of each node-valued input leaf (None: no batch)
    out_layout: Any = None
    in_layouts: list[Any] = field(default_factory=list)


class RuleCache(dict):
    """What rules keep between explains of one :class:`~relprop.Graph`, freed with it.

    One per Graph, shared by all its traces (one per input signature); rules reach it
    as ``ctx.hints.cache`` (:class:`Hints`).  A dict: each rule keys its entries by something
    of its own (absLRP keeps its derived weights under
    :class:`~relprop.rules.derived_weights.DerivedWeights`).  ``parameter_bytes`` is the memory
    of the model's parameters, for rules that size what they keep by the model's.
    """

    def __init__(self, parameter_bytes: int = 0) -> None:
        super().__init__()
        self.parameter_bytes = parameter_bytes

    def __repr__(self) -> str:
        return f"RuleCache({len(self)} entries, parameter_bytes={self.parameter_bytes})"


@dataclass(frozen=True)
class Hints:
    """Optimisation hints the engine gives a rule for one node of one walk; a rule may ignore them.

    Attributes:
        free_scale: per input, may the relevance be returned at any positive scale per pass
            and sample?  True where the only reader of that relevance is a ``scale_free`` rule
            (which normalizes what it returns), so normalizing it first would be wasted work.
        owns_relevance: may the rule overwrite the relevance it is given?  True where that
            tensor was allocated by a rule for this node alone and nothing else (a recorded
            walk, another input) holds it.
        cache: what rules keep between explains of the Graph; a Context made outside the
            engine has an empty one.
    """

    free_scale: tuple[bool, ...] = ()
    owns_relevance: bool = False
    cache: RuleCache = field(default_factory=RuleCache)

    def free(self, i: int) -> bool:
        """Tell whether input ``i``'s relevance may be returned unnormalized (see ``free_scale``).

        Args:
            i: the input's index.

        Returns:
            True if it may.
        """
        return i < len(self.free_scale) and self.free_scale[i]


class Context:
    """A node as a rule sees it, at explain time; the engine makes one per node and walk.

    Attributes:
        info: what binding learned about the node ([`NodeInfo`][relprop.rules.NodeInfo]).
        node: the graph node.
        inputs: the values of the graph nodes feeding the op, in slot order.
        input_nodes: those graph nodes.
        live: per input, whether it carries relevance.
        output: the op's output value.
        batch: the number of samples.
    """

    def __init__(
        self,
        info: NodeInfo,
        nodes: list[Any],
        leaves: list[Any],
        spec: pytree.TreeSpec,
        slots: list[int],
        output: Any,
        batch: int,
        op: Any = None,
        hints: Hints | None = None,
    ) -> None:
        self.info = info
        self.node = info.node
        #: the op the rule applies to: the node's target, or a callable standing for several
        #: nodes (an elementwise activation written out as several ops, relprop.regions)
        self.op = info.node.target if op is None else op
        self._leaves = leaves
        self._spec = spec
        #: positions in ``leaves`` of the inputs that are graph nodes
        self.slots = slots
        #: the graph nodes feeding the op, and their values, in slot order
        self.input_nodes: list[Any] = [nodes[i] for i in slots]
        self.inputs: list[Any] = [leaves[i] for i in slots]
        self.live: list[bool] = info.live
        self.output = output
        self.batch = batch
        #: what the engine lets the rule skip or reuse at this node (:class:`Hints`)
        self.hints = Hints() if hints is None else hints

    @property
    def live_inputs(self) -> list[int]:
        """Indices (into ``inputs``) of the inputs that carry relevance."""
        return [i for i, flag in enumerate(self.live) if flag]

    def args(self) -> tuple[tuple, dict]:
        """Rebuild the op's arguments.

        Returns:
            ``(args, kwargs)`` as the op was called.
        """
        return pytree.tree_unflatten(self._leaves, self._spec)

    def call(
        self,
        replace: dict[int, Any] | None = None,
        transform: Callable[[int, Any], Any] | None = None,
    ) -> Any:
        """Run the op again with inputs replaced.

        Args:
            replace: maps input indices (as in ``inputs``) to new values.
            transform: ``transform(leaf_position, value)`` rewrites every other argument leaf
                (parameters, constants, scalars), e.g. to take absolute weights.

        Returns:
            The op's output.
        """
        leaves = list(self._leaves)
        if transform is not None:
            for pos, value in enumerate(leaves):
                leaves[pos] = transform(pos, value)
        for idx, value in (replace or {}).items():
            leaves[self.slots[idx]] = value
        args, kwargs = pytree.tree_unflatten(leaves, self._spec)
        return self.op(*args, **kwargs)


class Rule:
    """Base class of rules.  Subclasses implement :meth:`relevance`.

    ``relevance(ctx, R)`` returns one entry per ``ctx.inputs``: a tensor shaped
    ``(P, *input.shape)`` for inputs that carry relevance, None for the others.
    ``check(info)`` may raise :class:`relprop.RuleError` at binding time when the
    rule cannot apply to a node.

    ``scale_free = True`` declares that the rule's result does not change when its
    output relevance is multiplied by a positive number per pass and sample (it
    rescales what it returns, as absLRP does); the engine then lets the rules upstream
    skip normalizing the relevance they hand to it (:attr:`Hints.free_scale`).
    """

    scale_free: bool = False

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        """Propagate the relevance of the node's output to its inputs.

        Args:
            ctx: the node as the rule sees it: its inputs, output, layout and hints.
            R: the output's relevance, ``(P, *output.shape)`` (P passes).

        Returns:
            One entry per ``ctx.inputs``: a tensor shaped ``(P, *input.shape)`` for inputs
            that carry relevance, None for the others.
        """
        raise NotImplementedError

    def check(self, info: NodeInfo) -> None:
        """Refuse, at binding time, a node the rule cannot apply to (default: accept all).

        Args:
            info: the node.

        Raises:
            RuleError: the rule cannot apply to this node.
        """
        return None

    def __call__(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        return self.relevance(ctx, R)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and v is not None)
        return f"{type(self).__name__}({params})"


class FunctionRule(Rule):
    """A rule from a plain function.

    Args:
        fn: ``fn(ctx, R) -> list of relevances``, as [`Rule.relevance`][relprop.rules.Rule.relevance].
    """

    def __init__(self, fn: Callable[[Context, Relevance], list[Tensor | None]]) -> None:
        self._fn = fn
        self.name = getattr(fn, "__name__", "rule")

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        return self._fn(ctx, R)

    def __repr__(self) -> str:
        return f"FunctionRule({self.name})"


def mark_owned(t: Tensor) -> Tensor:
    """Mark a relevance tensor the calling rule allocated itself (see :func:`owned`)."""
    t._relprop_owned = True  # type: ignore[attr-defined]
    return t


def owned(t: Any) -> bool:
    """Whether ``t`` was marked by :func:`mark_owned`: no view or other holder shares it."""
    return isinstance(t, Tensor) and getattr(t, "_relprop_owned", False)


def as_list(x: Any) -> list[Any]:
    """``x`` as a list: the entries of a tuple or list, else ``[x]`` (one output per entry)."""
    return list(x) if isinstance(x, (tuple, list)) else [x]


def vjp(fn: Callable[..., Any], primals: Sequence[Tensor], cotangent: Relevance) -> list[Tensor]:
    """Compute the vector-Jacobian products of ``fn`` at ``primals``, one per pass.

    Args:
        fn: the function, of the primals.
        primals: its inputs.
        cotangent: (P, *out.shape) (or one such entry per output, None for outputs without one).

    Returns:
        Per primal, a tensor (P, *primal.shape).
    """
    cots = as_list(cotangent)
    passes = next(c.shape[0] for c in cots if c is not None)
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_(True) for p in primals]
        outs = as_list(fn(*leaves))
        pairs = [(o, c) for o, c in zip(outs, cots) if c is not None and isinstance(o, Tensor) and o.requires_grad]
        if not pairs:
            return [torch.zeros((passes, *p.shape), dtype=p.dtype, device=p.device) for p in primals]
        outs_, cots_ = [o for o, _ in pairs], [c for _, c in pairs]
        if passes == 1:
            grads = torch.autograd.grad(outs_, leaves, [c[0] for c in cots_], allow_unused=True)
            return [_grad_or_zeros(g, x).unsqueeze(0) for g, x in zip(grads, leaves)]
        try:  # all passes in one vmapped backward: no per-pass walk, no stacking
            grads = torch.autograd.grad(
                outs_, leaves, cots_, allow_unused=True, is_grads_batched=True, retain_graph=True
            )
        except RuntimeError:  # an op without a batching rule: one backward per pass
            results: list[list[Tensor]] = [[] for _ in leaves]
            for p in range(passes):
                per_pass = torch.autograd.grad(
                    outs_, leaves, [c[p] for c in cots_], retain_graph=p < passes - 1, allow_unused=True
                )
                for i, g in enumerate(per_pass):
                    results[i].append(_grad_or_zeros(g, leaves[i]))
            return [torch.stack(r) for r in results]
    return [
        torch.zeros((passes, *x.shape), dtype=x.dtype, device=x.device) if _absent(g) else g
        for g, x in zip(grads, leaves)
    ]


def _absent(g: Tensor | None) -> bool:
    """No gradient, or autograd's immutable ZeroTensor (sgn, sign: zero derivative)."""
    return g is None or g._is_zerotensor()


def _grad_or_zeros(g: Tensor | None, x: Tensor) -> Tensor:
    return torch.zeros_like(x) if _absent(g) else g


def stabilize(z: Tensor, eps: float) -> Tensor:
    """Stabilise an ε-rule denominator: ``z + eps * sign(z)`` with sign(0) = +1 (Bach et al. 2015).

    ``copysign`` is several times faster than a ``where`` on the CPU; ``z + 0.0`` turns a
    −0.0 into +0.0 first, so that it too counts as positive.

    Args:
        z: the denominator.
        eps: ε.

    Returns:
        The stabilised denominator, shaped like ``z``.
    """
    return z.new_full((), eps).copysign(z + 0.0).add_(z)


def sample_l1(R: Tensor, layout: Any, batch: int) -> Tensor:
    """Σ|R| per pass and per sample, shaped to broadcast against ``R`` (P, *shape)."""
    P = R.shape[0]
    if layout is None or batch == 1 or R.dim() == 1:
        return _abs_sum(R, 1)
    d = 1 + layout.dim
    size = R.shape[d]
    if d == 1 and size == batch:  # the common layout: samples along the first dimension
        return _abs_sum(R, 2)
    inner = size // batch if layout.inner is None else layout.inner
    outer = size // (batch * inner)
    moved = R.abs().movedim(d, -1)
    total = moved.reshape(P, -1, outer, batch, inner).sum(dim=(1, 2, 4))  # (P, B)
    if size != batch:  # one total per entry of the packed dimension
        owner = (torch.arange(size, device=R.device) // inner) % batch
        total = total[:, owner]
    shape = [1] * R.dim()
    shape[0], shape[d] = P, size
    return total.reshape(shape)


def _abs_sum(R: Tensor, start: int) -> Tensor:
    """Σ|R| over the dimensions from ``start`` on (kept as size 1).

    |R| summed along one flattened dimension (``sum``'s cascade is accurate on long rows, and
    several times faster on the CPU than the fused 1-norm or a reduction over several dimensions).
    """
    n = R.dim() - start
    if n == 0:
        return R.abs()
    flat = R.abs().reshape(*R.shape[:start], -1)
    return flat.sum(-1).reshape(*R.shape[:start], *([1] * n))


def unit_l1(R: Tensor, layout: Any, batch: int) -> Tensor:
    """R rescaled in place per pass and sample to Σ|R| = 1 (all-zero stays zero).

    ``R`` must be a tensor the caller owns (a contribution it just computed).
    """
    total = sample_l1(R, layout, batch)
    return R.div_(total.clamp_min_(torch.finfo(R.dtype).tiny))


def stable_ratio(R: Relevance, y: Any, eps: float) -> Relevance:
    """R / (y + ε sign y); with ε = 0, zero where y = 0 (no contribution, no relevance)."""
    if isinstance(R, (list, tuple)):
        return [None if r is None else _stable_divide(r, o, eps) for r, o in zip(R, y)]
    return _stable_divide(R, y, eps)


def _stable_divide(R: Tensor, y: Tensor, eps: float) -> Tensor:
    den = stabilize(y, eps)
    if eps:
        return R / den
    return torch.where(den == 0, torch.zeros((), dtype=R.dtype, device=R.device), R / den)


def epsilon_relevance(ctx: Context, R: Relevance, live: list[int], eps: float, share: float = 1.0) -> list:
    """The ε-rule, x ⊙ Jᵀ(R / stab(y)), for the ``live`` inputs, the others held at their values."""
    y = ctx.output
    g = stable_ratio(R, y, eps)
    xs = [ctx.inputs[i] for i in live]
    r = vjp(lambda *v: local_call(ctx, dict(zip(live, v))), xs, g)
    return [share * x * ri for x, ri in zip(xs, r)]


#: categories whose ops act elementwise: :class:`Pass` is the identity there
_ELEMENTWISE = frozenset({Category.ACTIVATION, Category.NORM, Category.SOFTMAX, Category.SCALE, Category.RESCALE})
#: categories where :class:`Pass` is the identity when the output has the input's shape
#: (log_softmax, like softmax; logsumexp itself passes by its gradient, the softmax weights)
_IDENTITY = _ELEMENTWISE | {Category.LOGSUMEXP}


def _identity(ctx: Context, R: Relevance, live: list[int]) -> Tensor | None:
    """R itself where the identity rule applies: an elementwise op (or log_softmax) of one
    relevant input whose output has the input's shape."""
    if ctx.info.category not in _IDENTITY or len(ctx.live_inputs) != 1:
        return None
    first = R[0] if isinstance(R, (list, tuple)) else R
    if first is not None and first.shape[1:] == ctx.inputs[live[0]].shape:
        return first
    return None


def _owned_move(ctx: Context, R: Relevance, r: Tensor) -> Tensor:
    """``r`` marked as the next rule's to overwrite where it may be: a fresh tensor (a copy),
    or a view of the relevance this rule was allowed to overwrite (nothing else holds it)."""
    given = [t for t in as_list(R) if isinstance(t, Tensor)]
    if ctx.hints.owns_relevance or not any(
        t.untyped_storage().data_ptr() == r.untyped_storage().data_ptr() for t in given
    ):
        mark_owned(r)
    return r


class Pass(Rule):
    """Relevance passes through the op unchanged (the structural rule of every rule set).

    - Elementwise ops (categories ``activation``, ``norm``, ``softmax``, ``scale``, ``rescale``):
      the identity rule R_x = R (the identity rule of AttnLRP for elementwise
      non-linearities, Achtibat et al. 2024).  It conserves relevance, unlike the
      gradient (GELU', w/σ of a norm, c of a scale, −1 of ``neg``).  A scale that
      broadcasts its input to a larger shape splits R in proportion to the
      contributions (the ε-rule with ε = 0, Bach et al. 2015, Eq. 58).  ``log_softmax``
      (category ``logsumexp``) is the identity too.
    - Everything else (data movement, max pooling, selects, ops without a rule):
      by the op's gradient, R_x = Jᵀ R: exact for data movement, winner-takes-all
      for max pooling.

    ``inputs`` restricts relevance to those input positions (e.g. ``(0,)`` for a
    division whose denominator is treated as a constant); the others are held at
    their values and R is split by the ε-rule with ε = 0.

    Args:
        inputs: the input positions that receive relevance (default: all that carry it).
    """

    def __init__(self, inputs: Sequence[int] | None = None) -> None:
        self.inputs = None if inputs is None else tuple(inputs)

    def relevance(self, ctx: Context, R: Relevance) -> list[Tensor | None]:
        live = [i for i in ctx.live_inputs if self.inputs is None or i in self.inputs]
        out: list[Tensor | None] = [None] * len(ctx.inputs)
        if not live:
            return out
        same_shape = _identity(ctx, R, live)
        if same_shape is not None:
            out[live[0]] = same_shape
            return out
        if self.inputs is None:
            fast = moved(ctx, R)
            if fast is not None:
                return [None if r is None else _owned_move(ctx, R, r) for r in fast]
        if ctx.info.category in _ELEMENTWISE and len(ctx.live_inputs) == 1:
            rel = epsilon_relevance(ctx, R, live, 0.0)
        elif len(ctx.live_inputs) > len(live):  # others held constant: scale by the local ratio
            rel = epsilon_relevance(ctx, R, live, 0.0)
        else:
            rel = vjp(lambda *v: local_call(ctx, dict(zip(live, v))), [ctx.inputs[i] for i in live], R)
        for i, r in zip(live, rel):
            out[i] = r
        return out
