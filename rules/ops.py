"""Which ATen ops do what, as far as relevance is concerned.

Binding sorts every graph node into a :class:`~relprop.rules.categories.Category`
(:func:`categorize`); rule sets map categories to rules.  Notes on the sorting:

- select/slice/narrow: ``split`` where it is one of a set that together covers its input
  along one dimension, or a crop that removes exactly what a pad upstream added;
  ``pool_select`` where it keeps a part and drops the rest (a pooling: it computes).
- mul/div by a plain number or a normalisation statistic is ``rescale`` (relevance
  passes unchanged, as docs/semantics.md §Products prescribes for q·scale; ``neg`` is the
  rescaling by −1 of rotary embeddings' ``rotate_half``); by a constant tensor ``scale``.
- ``statistic`` ops (``STATISTIC``: square roots, reciprocals, variances, powers with a
  negative or fractional exponent) are normalization statistics: like ``CONSTANT``
  ops their outputs carry no relevance, so ``x * rsqrt(mean(x²) + eps)`` (RMSNorm
  written out, as Hugging Face Llama does) or ``(x - u) / sqrt(var + eps)`` is a
  scaling of ``x`` by a constant, exactly the rule of docs/semantics.md §Normalisations for normalization
  statistics.  Models use roots of a live tensor for nothing else in practice; a
  positive integer power (``x ** 2``, ``x ** 3`` in a tanh-GELU) still computes.
  The multiplication or division by such a statistic is a ``rescale`` (a positive
  number per row): relevance passes unchanged, so the written-out RMSNorm
  ``w * (x * rsqrt(mean(x²) + eps))`` explains exactly like ``aten.rms_norm``.
- weighted ops whose live input is not argument 0 (``addmm(bias, x, W)``, as
  GPT-2's ``Conv1D`` exports) are listed in ``WEIGHTED_LAYOUT``.
- ``mask``: masked_fill / where with a constant fill (moves relevance where kept)

Ops in ``CONSTANT`` (``new_zeros``, ``zeros_like``, ...) read only their input's
shape: binding keeps their outputs off the relevance path (e.g. Swin's window mask).
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from .categories import COMPUTING, Category

aten = torch.ops.aten

__all__ = [
    "CATEGORIES",
    "COMPUTING",
    "categorize",
    "is_constant",
    "is_statistic",
    "op_name",
    "packet_name",
    "uncovered_reason",
    "WEIGHTED_ARGS",
    "WEIGHTED_LAYOUT",
    "BIASED_PRODUCTS",
    "DECLARED_WEIGHTED",
    "is_weighted",
    "register_weighted_op",
    "weighted_args",
]


def _names(*names: str) -> set[str]:
    return {f"aten.{n}" for n in names}


MOVE = _names(
    "view",
    "_unsafe_view",
    "reshape",
    "permute",
    "transpose",
    "t",
    "flatten",
    "unflatten",
    "unsqueeze",
    "squeeze",
    "expand",
    "expand_as",
    "contiguous",
    "clone",
    "cat",
    "stack",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "alias",
    "_to_copy",
    "to",
    "type_as",
    "dropout",
    "detach",
    "lift_fresh_copy",
    "movedim",
    "repeat",
    "pad",
    "constant_pad_nd",
    "roll",
    "flip",
    "tensor_split",
    "unfold",
    "pixel_shuffle",
    "pixel_unshuffle",
    "channel_shuffle",
    "native_dropout",
    "feature_dropout",
    "alpha_dropout",
    "repeat_interleave",
)
#: data movement added to the list above: each output entry is a copy of one input entry
#: (or a constant), so the gradient moves relevance and conserves it
MOVE |= _names(
    "slice_scatter",
    "select_scatter",
    "diagonal_scatter",
    "as_strided_scatter",
    "scatter",
    "index_copy",
    "masked_scatter",
    "index_fill",
    "upsample_nearest1d",
    "upsample_nearest2d",
    "upsample_nearest3d",
    "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d",
    "_upsample_nearest_exact3d",
    "diagonal",
    "diag_embed",
    "diag",
    "tril",
    "triu",
    "im2col",
    "narrow_copy",
    "as_strided",
    "sort",
    "msort",
    "max_unpool2d",
    "max_unpool3d",
    "rot90",
    "block_diag",
    "reflection_pad1d",
    "reflection_pad2d",
    "reflection_pad3d",
    "replication_pad1d",
    "replication_pad2d",
    "replication_pad3d",
    "circular_pad",
    "_pad_circular",
    "broadcast_to",
    "unsafe_split",
    "unsafe_chunk",
    "unsafe_split_with_sizes",
    "hsplit",
    "vsplit",
    "dsplit",
    "hstack",
    "vstack",
    "dstack",
    "column_stack",
    "atleast_1d",
    "atleast_2d",
    "atleast_3d",
    "ravel",
    "view_as",
    "reshape_as",
    "copy",
    "squeeze_copy",
    "unsqueeze_copy",
    "expand_copy",
    "permute_copy",
    "view_copy",
    "t_copy",
    "transpose_copy",
    "diagonal_copy",
    "select_copy",
    "slice_copy",
    "unfold_copy",
    "alias_copy",
    "_reshape_alias",
    "index_put",  # accumulate=True is a sum: see categorize
)
SELECT = _names("select", "slice", "narrow", "index", "index_select", "gather", "take", "take_along_dim")
#: linear in their relevant inputs jointly (not weighted layers): the ε-rule is their
#: LRP, absLRP's generic rule applies
LINEAR = _names(
    "cumsum",
    "trace",
    "scatter_add",
    "index_add",
    "upsample_linear1d",
    "upsample_bilinear2d",
    "upsample_bicubic2d",
    "upsample_trilinear3d",
    "_upsample_bilinear2d_aa",
    "_upsample_bicubic2d_aa",
    "col2im",
    "sum_to_size",
    "nansum",
    "nanmean",
    "lerp",
    "grid_sampler_2d",
    "grid_sampler_3d",
    "addcdiv",
    "diff",
)
#: scatters and index ops that reduce: their category follows the ``reduce`` argument
#: (``_REDUCTIONS``); ``scatter`` with no ``reduce`` moves data
REDUCING = _names("scatter_reduce", "index_reduce", "scatter")
_REDUCTIONS = {
    "sum": Category.LINEAR,
    "add": Category.LINEAR,
    "mean": Category.LINEAR,
    "amax": Category.SELECTION,
    "amin": Category.SELECTION,
    "prod": Category.GENERIC,
    "multiply": Category.GENERIC,
}
#: products: of two relevant tensors ``matmul`` (uniform rule), else linear in the one
PRODUCT = _names("dot", "vdot", "mv", "outer", "ger", "inner", "kron", "cross", "linalg_cross", "tensordot")
#: keep some entries chosen by value and drop the rest
SELECTION = _names("amin", "min", "median", "nanmedian", "kthvalue", "mode", "topk", "cummax", "cummin")
LOGSUMEXP = _names("logsumexp", "log_softmax", "_log_softmax", "logcumsumexp", "special_log_softmax")
WEIGHTED = _names(
    "linear",
    "addmm",
    "conv1d",
    "conv2d",
    "conv3d",
    "convolution",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "_convolution",
)
CONV = WEIGHTED - _names("linear", "addmm")
MATMUL = _names("matmul", "mm", "bmm", "einsum")
#: matrix products with an added bias, β·bias + α·(first @ second): a layer whose weight is the
#: constant factor, whichever of the two it is
BIASED_PRODUCTS = _names("addmm", "baddbmm")
ADD = _names("add", "sub", "rsub")
MUL = _names("mul")
DIV = _names("div")
#: multiplication by a plain number written as its own op
RESCALE = _names("neg")
ACTIVATION = _names(
    "relu",
    "relu6",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "mish",
    "softplus",
    "prelu",
    "pow",
)
NORM = _names(
    "_native_batch_norm_legit_no_training",
    "batch_norm",
    "layer_norm",
    "native_layer_norm",
    "group_norm",
    "native_group_norm",
    "rms_norm",
    "instance_norm",
)
SOFTMAX = _names("softmax", "_softmax", "_safe_softmax")
ATTENTION = _names("scaled_dot_product_attention")
MAXPOOL = _names(
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool2d_with_indices",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "amax",
    "max",
)
AVGPOOL = _names(
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "_adaptive_avg_pool2d",
    "mean",
    "sum",
)
EMBEDDING = _names("embedding")
#: ops whose output depends on the shape, dtype or device of their input, never on its
#: values (``x.new_zeros(...)``, ``torch.zeros_like(x)``): their output carries no relevance
CONSTANT = _names(
    "new_zeros",
    "new_ones",
    "new_full",
    "new_empty",
    "new_empty_strided",
    "zeros_like",
    "ones_like",
    "full_like",
    "empty_like",
    "rand_like",
    "randn_like",
    "randint_like",
)
MASK = _names("masked_fill", "where")
#: normalization statistics: their outputs carry no relevance (see the module docstring)
STATISTIC = _names("rsqrt", "sqrt", "reciprocal", "var", "std", "var_mean", "std_mean")

CATEGORIES = frozenset(Category)

#: for weighted ops: (input, weight, bias) argument positions
WEIGHTED_ARGS = (0, 1, 2)
#: weighted ops whose arguments are not (input, weight, bias): op -> their positions
WEIGHTED_LAYOUT: dict[str, tuple[int, int, int | None]] = {"aten.addmm": (1, 2, 0)}
#: ops declared weighted layers (linear in their input for a fixed weight, and in their weight
#: for a fixed input), whatever their namespace: op -> (input, weight, bias) positions, bias None
#: where there is none.  :func:`register_weighted_op` adds to it.  Grouped matrix products
#: (``out[s] = input[s] @ weight[e(s)]``, rows sorted by group, ``offs`` the cumulative row
#: counts: the experts of mixture-of-experts layers) are the ones relprop declares: ATen's
#: ``_grouped_mm`` and transformers' ``grouped_mm_fallback``, the custom op its MoE experts
#: export as (its Python implementation loops over ``offs.tolist()``, so it cannot be traced
#: into ATen ops with symbolic sizes).
DECLARED_WEIGHTED: dict[str, tuple[int, int, int | None]] = {
    "aten._grouped_mm": (0, 1, 3),
    "transformers.grouped_mm_fallback": (0, 1, None),
}


def weighted_args(target: Any) -> tuple[int, int, int | None]:
    """(input, weight, bias) argument positions of a weighted op (bias None: it has none)."""
    name = op_name(target)
    return DECLARED_WEIGHTED.get(name) or WEIGHTED_LAYOUT.get(name, WEIGHTED_ARGS)


def is_weighted(target: Any) -> bool:
    """Whether an op is a weighted layer: one of ``WEIGHTED`` or declared (``DECLARED_WEIGHTED``)."""
    name = op_name(target)
    return name in WEIGHTED or name in DECLARED_WEIGHTED


def register_weighted_op(op: Any, *, input: int = 0, weight: int = 1, bias: int | None = None) -> None:
    """Declare an operator a weighted layer, so every rule set rules it as one.

    For an operator relprop cannot see into (a custom operator whose implementation is not
    traceable, a C++ kernel) that computes a layer: linear in its ``input`` argument for a
    fixed ``weight`` and linear in ``weight`` for a fixed input, plus an optional ``bias``
    argument added to the output (positions in the op's schema).  The op must be
    differentiable (have an autograd formula): the rules take its products with the op's own
    backward, and call it with rewritten weights (z⁺, |w|, ...).  ``op``: ``"ns::name"``, an
    ``OpOverload`` or its packet.  Declaring an op that is not linear so gives wrong relevance.

    Args:
        op: the operator: ``"ns::name"``, an ``OpOverload`` or its packet.
        input: the position of the input argument in the op's schema.
        weight: the position of the weight argument.
        bias: the position of the bias argument added to the output, or None.

    Raises:
        RuleError: ``op`` is not an operator, or the positions are not distinct integers >= 0.
    """
    from relprop.errors import RuleError

    if isinstance(op, str):
        name = packet_name(op)
    elif isinstance(op, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        name = op_name(op)
    else:
        raise RuleError(f"register_weighted_op takes an operator ('ns::name' or torch.ops.ns.name); got {op!r}")
    positions = [input, weight] + ([] if bias is None else [bias])
    if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in positions) or len(set(positions)) < len(
        positions
    ):
        raise RuleError(
            f"register_weighted_op({name!r}): input, weight and bias must be distinct argument positions (ints >= 0); "
            f"got input={input!r}, weight={weight!r}, bias={bias!r}"
        )
    DECLARED_WEIGHTED[name] = (input, weight, bias)


def packet_name(op: str) -> str:
    """``"ns::name"``, ``"ns.name"`` or ``"ns.name.overload"`` -> ``"ns.name"`` (:func:`op_name`'s form)."""
    name = op.replace("::", ".")
    return name.rsplit(".", 1)[0] if name.count(".") > 1 else name


def is_statistic(node: Any) -> bool:
    """Whether a node computes a normalization statistic (its output carries no relevance).

    Roots, reciprocals and variances; ``pow`` when its exponent is a plain number that is
    negative or not an integer (``x ** -0.5``, ``x ** 0.5``) — where they normalize: where
    their value (through ops whose only graph input it is, such as ``+ eps``, a root or a
    view) goes into elementwise ops only, as in ``x * rsqrt(var + eps)``.  One whose value
    reaches the model's output or an op that is not elementwise (a model returning a
    variance or ``sqrt(x)``, statistics pooling ``cat([mean, std])`` into a linear layer)
    normalizes nothing: it computes like any other op.
    """
    return _statistic_op(node) and not _computes(node)


def _statistic_op(node: Any) -> bool:
    name = op_name(node.target)
    if name in STATISTIC:
        return True
    if name == "aten.pow" and len(node.args) > 1:
        e = node.args[1]
        if isinstance(e, (int, float)) and not isinstance(e, bool):
            return e < 0 or float(e) != int(e)
    return False


def _computes(node: Any) -> bool:
    """Whether ``node``'s value reaches the graph's output, or an op that is not elementwise,
    through ops whose only graph input it is (comparisons and masks do not use the value)."""
    for user in getattr(node, "users", ()):
        if user.op == "output":
            return True
        if user.op != "call_function" or not _floating_value(user.meta.get("val")):
            continue
        if set(user.all_input_nodes) == {node}:
            if _computes(user):
                return True
        elif torch.Tag.pointwise not in getattr(user.target, "tags", ()):
            return True
    return False


def _floating_value(val: Any) -> bool:
    """Whether a node's value holds a floating tensor (True where unknown)."""
    if val is None:
        return True
    if isinstance(val, (tuple, list)):
        return any(_floating_value(v) for v in val if v is not None)
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def op_name(target: Any) -> str:
    """``aten.linear.default`` -> ``"aten.linear"``; other callables by their name."""
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return str(packet)
    return getattr(target, "__name__", str(target))


def is_constant(target: Any) -> bool:
    """Whether an op's output ignores its inputs' values (it then carries no relevance)."""
    return op_name(target) in CONSTANT


def full_op_name(target: Any) -> str:
    """``aten.linear.default`` -> ``"aten.linear.default"``."""
    if getattr(target, "overloadpacket", None) is not None:
        return str(target)
    return op_name(target)


def _slot_of(node: Any, position: int) -> int | None:
    """Index among the node's graph-node arguments (the ``live`` flags) of argument ``position``."""
    from torch import fx
    from torch.utils import _pytree as pytree

    if position >= len(node.args) or not isinstance(node.args[position], fx.Node):
        return None
    before = pytree.tree_leaves(list(node.args[:position]))
    return sum(isinstance(x, fx.Node) for x in before)


def _by_statistic(node: Any) -> bool:
    """Whether a mul/div scales by a normalization statistic (looking through data movement)."""
    from torch import fx

    for operand in node.args[:2]:
        while isinstance(operand, fx.Node) and op_name(operand.target) in MOVE and operand.args:
            operand = operand.args[0]
        if isinstance(operand, fx.Node) and operand.op == "call_function" and is_statistic(operand):
            return True
    return False


def categorize(node: Any, live: list[bool], split: bool) -> Category | None:
    """The category of a call_function node, given which tensor inputs are live.

    ``split`` says whether a select-like node is one of a set of selects that together
    cover their input along one dimension.  Ops named in this module's tables first;
    every other ATen op by its metadata (:func:`_by_metadata`).  None where no category
    fits (:func:`uncovered_reason` says why).
    """
    if node.target is operator.getitem:
        return Category.GETITEM
    name = op_name(node.target)
    known = _by_name(node, name, live, split)
    return known if known is not _UNKNOWN else _by_metadata(node, sum(live))


_UNKNOWN: Any = object()


def _by_name(node: Any, name: str, live: list[bool], split: bool) -> Any:
    """The category of an op in this module's tables, else ``_UNKNOWN``."""
    n_live = sum(live)
    if name in REDUCING and _reduce(node) is not None:
        return _REDUCTIONS.get(_reduce(node), Category.GENERIC)
    if name in MOVE:
        return Category.LINEAR if name == "aten.index_put" and _accumulates(node) else Category.MOVE
    if name in SELECT:
        return Category.SPLIT if split else Category.POOL_SELECT
    if name in WEIGHTED or name in DECLARED_WEIGHTED:
        return _weighted_category(node, name, live)
    if name in BIASED_PRODUCTS and sum(live) == 1:  # baddbmm with one live factor or its bias
        return _weighted_category(node, name, live)
    if name in MATMUL or name in PRODUCT:
        if n_live > 1:
            return Category.MATMUL
        return Category.DENSE if name in MATMUL and _matrices(node) else Category.LINEAR
    if name in ADD:
        return Category.ADD
    if name in RESCALE:
        return Category.RESCALE
    if name in MUL or name in DIV:
        return _product_category(node, name, live)
    if name in ACTIVATION:
        return Category.ACTIVATION if n_live == 1 else Category.POINTWISE
    if name in EMBEDDING and live and live[0]:
        return Category.MOVE  # rows gathered from a live table (not a lookup of token ids)
    for category, names in (
        (Category.NORM, NORM),
        (Category.SOFTMAX, SOFTMAX),
        (Category.ATTENTION, ATTENTION),
        (Category.MAXPOOL, MAXPOOL),
        (Category.AVGPOOL, AVGPOOL),
        (Category.EMBEDDING, EMBEDDING),
        (Category.MASK, MASK),
        (Category.LINEAR, LINEAR),
        (Category.SELECTION, SELECTION),
        (Category.LOGSUMEXP, LOGSUMEXP),
    ):
        if name in names:
            return category
    return _UNKNOWN


def _weighted_category(node: Any, name: str, live: list[bool]) -> Category | None:
    """A weighted op: a layer where its input alone is live; ``linear`` where its bias alone
    is (a sum of the bias and a constant, as ``addmm(x, A, B)``); else None (relevance would
    flow into its weights: no rule set covers it).  A matrix product with a bias
    (``BIASED_PRODUCTS``) is a layer whichever factor is live, the other its weight
    (``addmm(b, x, W)`` as GPT-2's ``Conv1D`` exports it, or ``addmm(b, W, x)``)."""
    if sum(live) != 1:
        return None
    position, _, bias = weighted_args(node.target)
    if name in BIASED_PRODUCTS and _live_factor(node, live) is not None:
        return Category.DENSE
    slot = _slot_of(node, position)
    if slot is not None and live[slot]:
        return Category.CONV if name in CONV else Category.DENSE
    slot = None if bias is None else _slot_of(node, bias)
    return Category.LINEAR if slot is not None and live[slot] else None


def _live_factor(node: Any, live: list[bool]) -> int | None:
    """The argument position (1 or 2) of the live factor of ``addmm``/``baddbmm``, if one is."""
    for position in (1, 2):
        slot = _slot_of(node, position)
        if slot is not None and live[slot]:
            return position
    return None


def _product_category(node: Any, name: str, live: list[bool]) -> Category:
    """mul / div: of two relevant tensors, by a relevant divisor, by a constant or a number."""
    if name in DIV and len(live) > 1 and live[1]:
        return Category.DIV
    if sum(live) > 1:
        return Category.MUL
    numbers = [a for a in node.args[:2] if isinstance(a, (int, float)) and not isinstance(a, bool)]
    return Category.RESCALE if numbers or _by_statistic(node) else Category.SCALE


def _by_metadata(node: Any, n_live: int) -> Category | None:
    """The category of an ATen op no table names, from its tags and schema.

    Views (the schema's return aliases an input) and ``view_copy`` ops move data;
    ``pointwise`` ops are activations (one relevant input) or pointwise functions of
    several; every other deterministic op with a real floating output is ``generic``.
    """
    if uncovered_reason(node) is not None:
        return None
    tags = set(getattr(node.target, "tags", ()))
    if torch.Tag.view_copy in tags or _is_view(node.target):
        return Category.MOVE
    if torch.Tag.pointwise in tags:
        return Category.ACTIVATION if n_live == 1 else Category.POINTWISE
    return Category.GENERIC


def uncovered_reason(node: Any) -> str | None:
    """Why an op not named in the tables gets no category (None: it gets one)."""
    if not isinstance(node.target, torch._ops.OpOverload):
        return f"{op_name(node.target)} is not an ATen operator"
    if node.target.namespace != "aten":
        return (
            f"it is a custom operator (namespace '{node.target.namespace}') whose implementation relprop "
            "cannot trace into ATen ops (it has none in Python, or one that depends on tensor values): relprop "
            "cannot know what it computes or whether it is differentiable (if it is a weighted layer, declare it "
            "with relprop.register_weighted_op)"
        )
    tags = set(node.target.tags)
    if (why := _recurrent_reason(node)) is not None:
        return why
    if torch.Tag.nondeterministic_seeded in tags:
        return "it draws random numbers: its output is not a function of its inputs"
    values = [node.meta.get("val")] + [a.meta.get("val") for a in node.all_input_nodes]
    for v in values:
        for t in v if isinstance(v, (tuple, list)) else [v]:
            if isinstance(t, torch.Tensor) and t.is_complex():
                return "it computes with complex numbers, which carry no sign for relevance"
    return None


#: recurrent ops (relprop.custom_ops traces them into their cells) and
#: the position of their ``num_layers`` argument: ``dropout`` and ``train`` follow it
_RECURRENT = {"aten.lstm": 4, "aten.gru": 4, "aten.rnn_tanh": 4, "aten.rnn_relu": 4}


def recurrent_dropout(node: Any) -> str | None:
    """Why a recurrent op (``aten.lstm`` ...) draws random numbers, or None where it does not.

    Its ``nondeterministic_seeded`` tag is for the dropout between layers: in eval mode
    (``train=False``), with dropout 0 or with one layer it is deterministic.  (PyTorch's
    own decomposition leaves that dropout out, so this is checked before inlining it.)
    """
    name = op_name(node.target)
    if name not in _RECURRENT:
        return None
    at = _RECURRENT[name] + (1 if node.target._overloadname == "data" else 0)  # .data: (data, batch_sizes, ...)
    layers, dropout, train = (list(node.args[at : at + 3]) + [None] * 3)[:3]
    if train and dropout and isinstance(layers, int) and layers > 1:
        return (
            f"it is a recurrent op in training mode (train=True) with dropout p={dropout} between its {layers} "
            "layers, which draws random numbers: its output is not a function of its inputs (explain it in "
            "eval mode, or with dropout=0)"
        )
    return None


def _recurrent_reason(node: Any) -> str | None:
    """Why a recurrent op was not traced into its cells (:mod:`relprop.custom_ops`), or None for another op."""
    if op_name(node.target) not in _RECURRENT:
        return None
    return recurrent_dropout(node) or (
        "it is a recurrent op that relprop traces into its cell computations with PyTorch's decomposition "
        "(torch._decomp), and that trace failed here (a packed sequence, whose batch sizes are tensor "
        "values, or a sequence length left dynamic)"
    )


def _is_view(target: Any) -> bool:
    """Whether the op's first return aliases an input without writing to it (a view)."""
    returns = getattr(getattr(target, "_schema", None), "returns", ())
    info = returns[0].alias_info if returns else None
    return info is not None and not info.is_write


def _reduce(node: Any) -> str | None:
    """The ``reduce`` argument of a scatter or index reduction (None: it has none)."""
    value = node.args[4] if len(node.args) > 4 else node.kwargs.get("reduce")
    return value if isinstance(value, str) else None


def _accumulates(node: Any) -> bool:
    """``index_put(..., accumulate=True)``: a sum, not a move."""
    flag = node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False)
    return bool(flag)


def _matrices(node: Any) -> bool:
    """Whether both operands of a matmul are at least 2-D (a weighted layer's shapes)."""
    vals = [a.meta.get("val") if hasattr(a, "meta") else None for a in node.args[:2]]
    return all(isinstance(v, torch.Tensor) and v.dim() >= 2 for v in vals)
