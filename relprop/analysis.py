"""What the graph says about relevance, before any rule is chosen.

Binding (:mod:`relprop.binding`) asks the exported graph four questions, answered here:

- **Which nodes are sources?**  Float user inputs, and embedding lookups: a lookup whose
  indices are an integer user input (up to data movement) is a *token* source, its
  relevance summed over the hidden dimension being that input's; other lookups (position
  ids, token types from a buffer) are sources too, reported as embeddings only
  (:func:`live_nodes`, :class:`Sources`).
- **Which nodes carry relevance?**  *Live* nodes are the floating-point values computed
  from a source, except the outputs of constant-like ops (``zeros_like``) and of
  normalisation statistics (``rsqrt`` of a variance), which carry none
  (:func:`live_nodes`).  *Relevant* nodes are the live ones on a path from a source to
  the output: only they get rules (:func:`relevant_nodes`).
- **Does a select move relevance or pool it?**  A select/slice is a *split* where it is
  one of a set that together cover their input along one dimension, or a crop removing
  exactly what a pad upstream added; otherwise it keeps a part and drops the rest, a
  pooling (:func:`splits`, :func:`is_split`, :func:`undoes_pad`).
- **Which weighted layers come first?**  Those with no weighted layer upstream of their
  relevance-carrying input, where rule sets may apply an input-layer rule
  (:func:`first_weighted`).

It also reads module paths off the ``nn_module_stack`` that ``torch.export`` records
(:func:`module_stack`, :func:`clean_path`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from relprop.rules.ops import SELECT, is_constant, is_statistic, op_name

from .errors import InputError
from .programs import Program

__all__ = [
    "Sources",
    "clean_path",
    "direct_input",
    "embedding_path",
    "equivalents",
    "first_weighted",
    "floating",
    "input_leaves",
    "is_lookup",
    "is_split",
    "live_nodes",
    "module_stack",
    "no_input",
    "pad_matches",
    "relevant_nodes",
    "slice_bounds",
    "splits",
    "stack_entries",
    "undoes_pad",
]


def floating(val: Any) -> bool:
    """Whether a node's value (``meta["val"]``) is, or holds, a floating-point tensor."""
    if isinstance(val, torch.Tensor):
        return val.is_floating_point()
    if isinstance(val, (tuple, list)):
        return any(floating(v) for v in val)
    return False


def input_leaves(node: fx.Node) -> list[fx.Node]:
    """The graph nodes among a node's flattened arguments, in order (repeats kept)."""
    leaves = torch.utils._pytree.tree_leaves((node.args, node.kwargs))
    return [x for x in leaves if isinstance(x, fx.Node)]


# -- module paths ----------------------------------------------------------------------


def module_stack(node: fx.Node) -> list[tuple[str, str]]:
    """(module path, class name) per module call a node was traced in, outermost first."""
    return stack_entries(node.meta.get("nn_module_stack") or {})


def stack_entries(stack: dict[str, Any]) -> list[tuple[str, str]]:
    """(module path, class name) per level of an ``nn_module_stack``, outermost first."""
    return [
        (path, cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))) for path, cls in stack.values()
    ]


def clean_path(path: str) -> str:
    """A module path as ``named_modules`` spells it (``L['self'].features.0`` -> ``features.0``)."""
    return path.replace("L['self'].", "").replace("L__self__.", "")


def embedding_path(node: fx.Node) -> str:
    """The module path of an embedding lookup (its node name where it has none)."""
    stack = module_stack(node)
    return clean_path(stack[-1][0]) if stack else node.name


# -- selects: split or pool ------------------------------------------------------------


def equivalents(nodes: list[fx.Node]) -> dict[fx.Node, list[fx.Node]]:
    """Call nodes grouped with the nodes that compute the same op on the same arguments.

    ``x[..., 0::2, 0::2]`` and ``x[..., 0::2, 1::2]`` export as two chains whose first
    slices are identical; grouping them lets the second slices be seen as one split.
    Every call node maps to its group (itself included), in graph order.
    """
    canon: dict[fx.Node, fx.Node] = {}
    first: dict[Any, fx.Node] = {}
    groups: dict[fx.Node, list[fx.Node]] = {}

    def key(x: Any) -> Any:
        if isinstance(x, fx.Node):
            return ("node", canon.get(x, x))
        if isinstance(x, (list, tuple)):
            return (type(x).__name__, *(key(v) for v in x))
        if isinstance(x, dict):
            return ("dict", *((k, key(v)) for k, v in sorted(x.items())))
        try:
            hash(x)
        except TypeError:
            return ("id", id(x))
        return (type(x).__name__, x)

    for n in nodes:
        if n.op != "call_function":
            continue
        k = (n.target, key(n.args), key(n.kwargs))
        c = first.setdefault(k, n)
        canon[n] = c
        groups.setdefault(c, []).append(n)
    return {n: groups[c] for n, c in canon.items()}


_SLICES = ("aten.select", "aten.slice", "aten.narrow")
_PADS = ("aten.pad", "aten.constant_pad_nd")


def splits(node: fx.Node, equivalents: dict[fx.Node, list[fx.Node]]) -> bool:
    """Whether a select-like node moves relevance (a split, or a crop undoing a pad).

    False for any other node; a select-like node for which it is False pools.
    """
    return op_name(node.target) in SELECT and (is_split(node, equivalents) or undoes_pad(node))


def is_split(node: fx.Node, equivalents: dict[fx.Node, list[fx.Node]]) -> bool:
    """Whether a select/slice is one of a set that together cover its input along one dim.

    The input's consumers count together with those of nodes equivalent to the input
    (``equivalents``, from :func:`equivalents`).  Consumers that read the whole tensor
    do not matter: in rotary embeddings ``x * cos + cat(-x[..., d/2:], x[..., :d/2]) * sin``
    the two slices split ``x`` (they move relevance) although ``x`` also feeds the product
    with ``cos``.  Slices along two different dims never split.  A symbolic (batch) size
    is covered only by a full slice.  Other select-like ops (``index``, ``gather``) never
    split: what they keep is not read off their arguments.
    """
    src = node.args[0]
    if op_name(node.target) not in _SLICES or not isinstance(src, fx.Node):
        return False
    val = src.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return False
    sources = equivalents.get(src, [src])
    dims: set[int] = set()
    covered: set[int] = set()
    for user in (u for s in sources for u in s.users):
        name = op_name(user.target)
        if name not in _SLICES or user.args[0] not in sources:
            continue  # a consumer of the whole tensor: it neither splits nor pools
        if any(isinstance(a, fx.Node) for a in user.args[1:]):
            return False  # bounds computed at run time (tensor_split by a tensor): not known to cover
        dim = user.args[1] if len(user.args) > 1 else 0
        dim = dim % val.dim()
        dims.add(dim)
        size = val.shape[dim]
        if not isinstance(size, int):
            # a symbolic (batch) size: only a full slice covers it
            if name == "aten.slice" and slice_bounds(user, None) == (0, None):
                covered.add(-1)
                continue
            return False
        if name == "aten.select":
            covered.add(user.args[2] % size)
        else:
            start, end = slice_bounds(user, size)
            step = user.args[4] if len(user.args) > 4 else 1
            covered.update(range(start, end, step))
    if len(dims) != 1:
        return False
    size = val.shape[dims.pop()]
    return covered == {-1} if not isinstance(size, int) else covered == set(range(size))


def undoes_pad(node: fx.Node, limit: int = 256) -> bool:
    """Whether a slice crops away exactly what a pad upstream in the same module added.

    Window attention pads its input to a multiple of the window and crops the
    result back; the crop moves relevance, it pools nothing.  The search walks up
    from the slice's input through nodes traced in the slice's innermost module,
    ``limit`` nodes at most.
    """
    if op_name(node.target) != "aten.slice" or not isinstance(node.args[0], fx.Node):
        return False
    val = node.args[0].meta.get("val")
    step = node.args[4] if len(node.args) > 4 else 1
    if not isinstance(val, torch.Tensor) or step != 1 or any(isinstance(a, fx.Node) for a in node.args[1:]):
        return False
    rank = val.dim()
    dim = (node.args[1] if len(node.args) > 1 else 0) % rank
    size = val.shape[dim]
    if not isinstance(size, int):
        return False
    start, end = slice_bounds(node, size)
    home = module_stack(node)[-1][0] if module_stack(node) else None
    seen: set[fx.Node] = set()
    todo = [node.args[0]]
    while todo and len(seen) < limit:
        n = todo.pop()
        if n in seen or n.op != "call_function":
            continue
        seen.add(n)
        if home is not None and home not in {p for p, _ in module_stack(n)}:
            continue
        if op_name(n.target) in _PADS and pad_matches(n, rank, dim, size, start, end):
            return True
        todo.extend(n.all_input_nodes)
    return False


def pad_matches(pad: fx.Node, rank: int, dim: int, size: int, start: int, end: int) -> bool:
    """Whether ``pad`` made dim ``dim`` (of ``size``) by adding what ``[start:end]`` crops."""
    out = pad.meta.get("val")
    widths = list(pad.args[1]) if len(pad.args) > 1 else []
    i = rank - 1 - dim
    if not isinstance(out, torch.Tensor) or out.dim() != rank or out.shape[dim] != size:
        return False
    if len(widths) < 2 * i + 2:
        return False
    left, right = widths[2 * i], widths[2 * i + 1]
    return bool(left or right) and (start, end) == (left, size - right)


def slice_bounds(node: fx.Node, size: int | None) -> tuple[int, Any]:
    """(start, end) of a slice or narrow, clamped to ``size``.

    With ``size`` None (a symbolic size) the bounds are as written, ``end`` None
    where the slice runs to the end.
    """
    args = list(node.args) + [None] * 5
    if op_name(node.target) == "aten.narrow":
        start, length = args[2], args[3]
        return (start, start + length) if size is not None else (start, None)
    start = args[2] if args[2] is not None else 0
    end = args[3]
    if size is None:
        big = end is None or (isinstance(end, int) and end >= 2**62)
        return (start, None if big else end)
    start = start + size if start < 0 else start
    end = size if end is None else (end + size if end < 0 else min(end, size))
    return (max(start, 0), end)


# -- sources and relevance -------------------------------------------------------------

#: ops an index tensor may pass through and still be "the token ids" of a user input
_INDEX_MOVES = {
    "aten.view",
    "aten._unsafe_view",
    "aten.reshape",
    "aten.flatten",
    "aten.unsqueeze",
    "aten.squeeze",
    "aten.expand",
    "aten.contiguous",
    "aten.clone",
    "aten._to_copy",
    "aten.to",
    "aten.alias",
    "aten.detach",
    "aten.lift_fresh_copy",
}


#: ops that read a tensor's shape, not its values: what they compute is no token id
#: (``pids[:, :L].expand(ids.shape[0], -1)`` reads the batch size off the ids)
_SHAPE_READS = {"aten.sym_size", "aten.sym_numel", "aten.sym_stride", "aten.sym_storage_offset"}


def direct_input(index: Any, inputs: Mapping[fx.Node, int]) -> int | None:
    """The user input an index tensor is, up to data movement (else None).

    ``inputs`` maps placeholders to user-input indices.
    """
    while isinstance(index, fx.Node):
        if index in inputs:
            return inputs[index]
        if index.op != "call_function" or op_name(index.target) not in _INDEX_MOVES:
            return None
        index = index.args[0] if index.args else None
    return None


def is_lookup(n: fx.Node) -> bool:
    """An embedding lookup: ``aten.embedding(weight, indices)`` with integer indices."""
    if op_name(n.target) != "aten.embedding" or len(n.args) < 2:
        return False
    weight, index = n.args[0], n.args[1]
    return isinstance(weight, fx.Node) and isinstance(index, fx.Node) and not floating(index.meta.get("val"))


@dataclass
class Sources:
    """Where relevance can come from, and which nodes carry it (:func:`live_nodes`)."""

    #: user-input index -> float placeholder receiving relevance
    float_sources: dict[int, fx.Node] = field(default_factory=dict)
    #: embedding lookup -> user-input index whose token ids it looks up
    token_sources: dict[fx.Node, int] = field(default_factory=dict)
    #: floating-point nodes computed from a source (the sources included)
    live: set[fx.Node] = field(default_factory=set)
    #: every embedding lookup whose weight carries no relevance (token sources included)
    embeddings: set[fx.Node] = field(default_factory=set)
    #: token sources whose indices are the user input itself, up to data movement
    direct_tokens: set[fx.Node] = field(default_factory=set)


def live_nodes(program: Program, nodes: list[fx.Node]) -> Sources:
    """Relevance sources and the nodes that carry relevance (floats computed from a source).

    Sources are float user inputs and embedding lookups.  A lookup whose indices are an
    integer user input (up to data movement) is a *token* source: its relevance, summed
    over the hidden dimension, is that input's relevance.  Only where no lookup reads any
    input directly (ids offset or taken modulo first) are the lookups indexed by ints
    computed from an input its token sources, so that position ids computed from the ids
    or from an attention mask never count as tokens.  Every other lookup (position ids,
    token types from a buffer, ...) is a source too, so that the relevance it receives is
    not lost, but it is reported only as an embedding
    (``Explanation.embeddings``), never as tokens.

    "Computed from an input" follows values, not shapes: an index expanded to the
    batch size read off the ids (``sym_size``) is not computed from them.  Constant-like
    ops (:func:`relprop.rules.ops.is_constant`) and normalisation statistics
    (:func:`relprop.rules.ops.is_statistic`) are never live.
    """
    placeholders = {n.name: n for n in nodes if n.op == "placeholder"}
    float_sources: dict[int, fx.Node] = {}
    int_inputs: dict[fx.Node, int] = {}
    for i, name in enumerate(program.user_inputs):
        val = placeholders[name].meta.get("val")
        if isinstance(val, torch.Tensor):
            if val.is_floating_point():
                float_sources[i] = placeholders[name]
            elif not val.is_complex():
                int_inputs[placeholders[name]] = i
    token_sources: dict[fx.Node, int] = {}
    derived: dict[fx.Node, int] = {}  # lookups indexed by ints computed from a user input
    int_origin = dict(int_inputs)
    embeddings: set[fx.Node] = set()
    live: set[fx.Node] = set(float_sources.values())
    for n in nodes:
        if n.op != "call_function":
            continue
        ins = n.all_input_nodes
        if n not in int_origin and op_name(n.target) not in _SHAPE_READS:
            origins = [int_origin[a] for a in ins if a in int_origin]
            if origins and not floating(n.meta.get("val")):
                int_origin[n] = origins[0]
        if is_lookup(n) and n.args[0] not in live:
            origin = direct_input(n.args[1], int_inputs)
            if origin is not None:
                token_sources[n] = origin
            elif n.args[1] in int_origin:
                derived[n] = int_origin[n.args[1]]
            embeddings.add(n)
            live.add(n)
            continue
        if is_constant(n.target) or is_statistic(n):
            continue
        if any(a in live for a in ins) and floating(n.meta.get("val")):
            live.add(n)
    # no lookup reads an input directly (ids offset, taken modulo, ...): the lookups indexed
    # by ints computed from the inputs are the tokens
    if not token_sources:
        token_sources.update(derived)
    inputs = {placeholders[name]: i for i, name in enumerate(program.user_inputs)}
    direct = {n for n in token_sources if direct_input(n.args[1], inputs) is not None}
    return Sources(float_sources, token_sources, live, embeddings, direct)


def relevant_nodes(program: Program, nodes: list[fx.Node], live: set[fx.Node], sources: Any) -> set[fx.Node]:
    """Live nodes on a path to the output; :class:`~relprop.InputError` if there are none.

    The walk goes up from the output through live nodes and stops at ``sources``
    (embedding lookups: their indices and weights carry no relevance).
    """
    output = nodes[-1]
    relevant: set[fx.Node] = set()
    stack = [a for a in output.all_input_nodes if a in live]
    while stack:
        n = stack.pop()
        if n in relevant:
            continue
        relevant.add(n)
        if n not in sources:
            stack.extend(a for a in n.all_input_nodes if a in live)
    if not relevant:
        no_input(program, nodes)
    return relevant


def no_input(program: Program, nodes: list[fx.Node]) -> None:
    """Raise :class:`~relprop.InputError`: no input can receive relevance (naming the dtypes)."""
    placeholders = {n.name: n for n in nodes if n.op == "placeholder"}
    kinds = ", ".join(
        f"{label}: {placeholders[name].meta['val'].dtype}"
        for label, name in zip(program.input_labels, program.user_inputs)
        if isinstance(placeholders[name].meta.get("val"), torch.Tensor)
    )
    raise InputError(
        "no input of the model can receive relevance: expected a floating-point input, or "
        f"integer token ids that reach an embedding lookup; got {kinds or 'no tensor inputs'}."
    )


def first_weighted(inputs: Mapping[fx.Node, list[fx.Node]], weighted: Collection[fx.Node]) -> set[fx.Node]:
    """The weighted nodes with no weighted node upstream of them.

    ``inputs`` maps each node, in topological order, to its relevance-carrying inputs;
    "upstream" follows those edges only (a node missing from ``inputs`` is upstream of
    nothing).
    """
    after: set[fx.Node] = set()  # weighted nodes and everything computed from one
    first: set[fx.Node] = set()
    for n, ins in inputs.items():
        upstream = any(x in after for x in ins)
        if n in weighted or upstream:
            after.add(n)
        if n in weighted and not upstream:
            first.add(n)
    return first
