"""A traced model as relprop keeps it: the graph, how to feed it, and for which inputs it holds.

:class:`Program` is what :mod:`relprop.tracing` makes of an export (:func:`program_from`):
the graph relprop binds, where each placeholder's value comes from (parameters and
buffers by name, read live; constants), which symbolic sizes are the batch, and the
export's ranges and guards on the input sizes, against which :meth:`Program.accepts`
checks new inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch.utils import _pytree as pytree

from .custom_ops import has_candidates, inline_custom_ops
from .errors import TraceError
from .inputs import flatten_like
from .lowering import rewrite_copies

__all__ = ["CACHE_ARG", "Program", "grown_shape", "program_from"]

_log = logging.getLogger("relprop")

#: the forward argument that makes Hugging Face models return a key/value cache
CACHE_ARG = "use_cache"


@dataclass
class Program:
    """A traced model: the graph and how to feed it."""

    graph: torch.fx.Graph
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    #: placeholder name -> ("param" | "buffer", fully qualified name) or ("const", tensor)
    state: dict[str, tuple[str, Any]]
    #: placeholder names of the user inputs, in flattening order of (args, kwargs)
    user_inputs: list[str]
    #: names of the user inputs as the user sees them ("x", "input_ids", "args[1]")
    input_labels: list[str]
    #: symbolic sizes that stand for the batch (empty where the batch was specialized)
    batch_symbols: set = field(default_factory=set)
    #: batch size the graph was specialized to, where it could not be made dynamic
    static_batch: int | None = None
    #: (input position, dim, size) of every dimension relprop asked to be dynamic
    #: (:func:`dynamic_dims`) that the trace fixed to a size; positions in ``in_spec`` order
    fixed: tuple[tuple[int, int, int], ...] = ()
    #: the graph is ``run_decompositions({})``'s (else export's own, :mod:`relprop.lowering`)
    decomposed: bool = False
    #: symbol -> (lowest, highest) size export allows it (``ExportedProgram.range_constraints``)
    ranges: dict = field(default_factory=dict)
    #: the export's guards on input sizes, as Python (``L['x'].size()[0] != 2``)
    guards: tuple[str, ...] = ()
    #: the forward's positional argument names (the guards name inputs by them)
    arg_names: tuple[str, ...] = ()
    #: arguments relprop added to the export call (``use_cache=False``)
    added: dict = field(default_factory=dict)
    #: the dimensions the trace was asked to make dynamic (:func:`dynamic_dims` or fewer)
    dims: Callable[[Any], tuple[int, ...]] = field(default=lambda x: ())
    #: read from the disk cache (:mod:`relprop.diskcache`), not exported in this process
    read: bool = False
    #: the ops (``ns.name``) whose implementation was traced into ``graph`` (:mod:`relprop.custom_ops`)
    inlined: tuple[str, ...] = ()
    #: the graph with those ops left as single nodes (None: nothing was inlined)
    opaque: torch.fx.Graph | None = None

    def with_opaque(self, ops: set[str]) -> Program:
        """This program on a graph where ``ops`` stay single nodes though their implementation
        could be traced (a rule is registered for them: it applies to the op, not to the ops of
        its implementation); itself where none of ``ops`` was inlined."""
        if self.opaque is None or not ops & set(self.inlined):
            return self
        graph = _copy_graph(self.opaque)
        inlined = inline_custom_ops(graph, keep=ops)
        rewrite_copies(graph)
        return dataclasses.replace(self, graph=graph, inlined=tuple(dict.fromkeys(inlined)), opaque=None)

    def accepts(self, args: tuple, kwargs: dict) -> bool:
        """Whether this trace holds for the inputs ``(args, kwargs)``.

        Every traced input size must match: a fixed size exactly; a symbol, with the input
        sized as the trace saw it (a size of 1 counts as 2, :func:`grown_shape`), within its range
        and the same wherever it occurs; a size derived from symbols (``2*s0``) equal to its
        value; and the export's guards on sizes (``L['x'].size()[0] != 2``) must hold.
        """
        grown = pytree.tree_map(lambda x: _stand_in(x, self.dims(x)), (args, kwargs))
        sizes: dict[Any, int] = {}
        derived: list[tuple[Any, int]] = []
        real, flat = flatten_like(args, kwargs, self.in_spec), flatten_like(*grown, self.in_spec)
        for val, x, y in zip(self._input_values, real, flat):
            if not isinstance(val, torch.Tensor):
                continue
            if not isinstance(x, torch.Tensor) or x.dim() != val.dim():
                return False
            for want, size, got in zip(val.shape, x.shape, y.shape):
                expr = want.node.expr if isinstance(want, torch.SymInt) else sympy.Integer(int(want))
                if expr.is_number:  # a fixed size: the input's own, never grown
                    if int(expr) != size:
                        return False
                elif expr.is_Symbol:
                    low, high = self.ranges.get(expr, (0, None))
                    if sizes.setdefault(expr, got) != got or got < low or (high is not None and got > high):
                        return False
                else:
                    derived.append((expr, got))
        if any(expr.free_symbols <= sizes.keys() and int(expr.subs(sizes)) != got for expr, got in derived):
            return False
        return self._guards_hold(*grown)

    @functools.cached_property
    def _input_values(self) -> list[Any]:
        """The traced value (``meta["val"]``) of each user input, in ``user_inputs`` order."""
        placeholders = {n.name: n for n in self.graph.nodes if n.op == "placeholder"}
        return [placeholders[name].meta.get("val") for name in self.user_inputs]

    def _guards_hold(self, args: tuple, kwargs: dict) -> bool:
        """Whether the export's guards hold for inputs of these sizes (True where one cannot be read)."""
        if not self.guards:
            return True
        inputs = {**dict(zip(self.arg_names, args)), **self.added, **kwargs}
        scope = {"__builtins__": {}, "L": inputs, "math": math, "abs": abs, "min": min, "max": max, "int": int}
        try:
            return all(eval(guard, scope) for guard in self.guards)  # noqa: S307 - size expressions of torch.export
        except Exception as err:  # noqa: BLE001 - a guard on something else than sizes: sizes decide
            _log.debug("relprop: cannot evaluate an export guard (%s); the input sizes decide", err)
            return True


def _input_labels(args: tuple, kwargs: dict) -> list[str]:
    labels: list[str] = []
    for i, a in enumerate(args):
        n = len(pytree.tree_leaves(a))
        labels += [f"args[{i}]"] if n == 1 else [f"args[{i}][{j}]" for j in range(n)]
    for k, v in kwargs.items():
        n = len(pytree.tree_leaves(v))
        labels += [k] if n == 1 else [f"{k}[{j}]" for j in range(n)]
    return labels


def grown_shape(x: torch.Tensor, dims: tuple[int, ...]) -> list[int]:
    """``x``'s shape as relprop traces it: a size of 1 in one of ``dims`` (dynamic ones) becomes 2,
    so that torch.export keeps the dimension dynamic (it fixes sizes 0 and 1)."""
    return [2 if d in dims and size == 1 else size for d, size in enumerate(x.shape)]


def _stand_in(x: Any, dims: tuple[int, ...]) -> Any:
    """A meta tensor of ``x``'s traced shape (:func:`grown_shape`), or ``x`` itself if not a tensor."""
    return torch.empty(grown_shape(x, dims), dtype=x.dtype, device="meta") if isinstance(x, torch.Tensor) else x


def program_from(
    ep: Any,
    graph: torch.fx.Graph,
    args: tuple,
    kwargs: dict,
    added: bool = False,
    decomposed: bool = True,
    dims: Callable[[Any], tuple[int, ...]] = lambda x: (),
) -> Program:
    """The :class:`Program` of an export ``ep`` of ``model(*args, **kwargs)`` with graph ``graph``.

    ``added``: the export was called with ``use_cache=False`` added to ``kwargs``
    (:func:`_without_cache`); that input is removed again (:func:`_drop_kwarg`).
    ``dims``: the dimensions the export was asked to make dynamic; those it fixed go to
    :attr:`Program.fixed`.  Raises :class:`TraceError` where one was fixed to a size that
    is not the input's (a size of 1 traced as 2).
    """
    sig = ep.graph_signature
    state: dict[str, tuple[str, Any]] = {}
    user_inputs: list[str] = []
    for spec in sig.input_specs:
        name = spec.arg.name
        kind = spec.kind.name
        if kind == "PARAMETER":
            state[name] = ("param", spec.target)
        elif kind == "BUFFER":
            state[name] = ("buffer", spec.target)
        elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
            state[name] = ("const", ep.constants[spec.target])
        elif kind == "USER_INPUT":
            user_inputs.append(name)
        else:  # TOKEN and future kinds
            raise TraceError(f"torch.export produced an input of kind {kind} that relprop cannot feed")
    _keep_user_outputs(graph, sig)
    opaque, inlined = _inline(graph)
    in_spec = ep.call_spec.in_spec
    if added:
        in_spec = _drop_kwarg(graph, in_spec, user_inputs, state, CACHE_ARG)
    symbols: set = set()
    static_batch = None
    fixed: list[tuple[int, int, int]] = []
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    for i, (name, x) in enumerate(zip(user_inputs, flatten_like(args, kwargs, in_spec))):
        val = placeholders[name].meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() == 0:
            continue
        for d in dims(x):
            size = val.shape[d]
            if _symbolic(size):
                if d == 0:
                    symbols.add(size.node.expr)
                continue
            if int(size) != x.shape[d]:
                raise TraceError(f"the model fixed dimension {d} of an input to the traced size {int(size)}")
            fixed.append((i, d, int(size)))
        if static_batch is None and not (
            isinstance(val.shape[0], torch.SymInt) and not val.shape[0].node.expr.is_number
        ):
            static_batch = int(val.shape[0])
    if symbols:
        static_batch = None
    return Program(
        graph=graph,
        in_spec=in_spec,
        out_spec=ep.call_spec.out_spec,
        state=state,
        user_inputs=user_inputs,
        input_labels=_input_labels(args, kwargs),
        batch_symbols=symbols,
        static_batch=static_batch,
        fixed=tuple(fixed),
        decomposed=decomposed,
        ranges=_ranges(ep),
        guards=tuple(getattr(ep, "_guards_code", None) or ()),
        arg_names=tuple(ep.module_call_graph[0].signature.forward_arg_names) if ep.module_call_graph else (),
        added={CACHE_ARG: False} if added else {},
        dims=dims,
        inlined=inlined,
        opaque=opaque,
    )


def _inline(graph: torch.fx.Graph) -> tuple[torch.fx.Graph | None, tuple[str, ...]]:
    """Custom ops traced into ``graph`` and ``copy`` rewritten, in place; returns the graph as it
    was before (None where nothing was inlined: copied only where something may be) and the ops
    inlined."""
    opaque = _copy_graph(graph) if has_candidates(graph) else None
    inlined = tuple(dict.fromkeys(inline_custom_ops(graph))) if opaque is not None else ()
    rewrite_copies(graph)
    return (opaque if inlined else None), inlined


def _copy_graph(graph: torch.fx.Graph) -> torch.fx.Graph:
    """A copy of ``graph`` with the same node names (placeholders are found by name)."""
    copy, copies = torch.fx.Graph(), {}
    copy.output(copy.graph_copy(graph, copies))
    for old, new in copies.items():
        if new.name != old.name:  # fx renames nodes that shadow a builtin ('input' -> 'input_1')
            new.name = old.name
    return copy


def _ranges(ep: Any) -> dict:
    """symbol -> (lowest, highest or None) of the export's range constraints."""
    return {symbol: (_finite(vr.lower) or 0, _finite(vr.upper)) for symbol, vr in ep.range_constraints.items()}


def _finite(bound: Any) -> int | None:
    """A range bound as an int; None for (torch's integer or sympy's) infinity."""
    try:
        return int(bound)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None


def _symbolic(size: Any) -> bool:
    return isinstance(size, torch.SymInt) and not size.node.expr.is_number


def _keep_user_outputs(graph: torch.fx.Graph, sig: Any) -> None:
    """Drop the outputs that are in-place updates of buffers or inputs, not the model's own.

    A forward that mutates a buffer (batch norm with ``training=True`` called functionally,
    a step counter) is exported with the new values as extra outputs ahead of the user's;
    relprop never writes them back (explaining leaves the model as it was).
    """
    kinds = [spec.kind.name for spec in sig.output_specs]
    if all(kind == "USER_OUTPUT" for kind in kinds):
        return
    out = next(n for n in graph.nodes if n.op == "output")
    values = out.args[0]
    out.args = (type(values)(v for v, kind in zip(values, kinds) if kind == "USER_OUTPUT"),)
    graph.eliminate_dead_code()


def _drop_kwarg(
    graph: torch.fx.Graph, in_spec: pytree.TreeSpec, user_inputs: list[str], state: dict, key: str
) -> pytree.TreeSpec:
    """Remove the keyword input ``key`` that relprop added to its export call.

    Its placeholder leaves ``user_inputs`` (so the flat inputs are the user's own) and
    the graph (a constant argument has no users; one that had would be fed its traced
    value as a constant); the returned ``in_spec`` is the export's without ``key``.
    """
    args, kwargs = pytree.tree_unflatten(list(range(in_spec.num_leaves)), in_spec)
    index = kwargs.pop(key)
    name = user_inputs.pop(index)
    node = next(n for n in graph.nodes if n.op == "placeholder" and n.name == name)
    if node.users:
        state[name] = ("const", False)
    else:
        graph.erase_node(node)
    return pytree.tree_flatten((args, kwargs))[1]
