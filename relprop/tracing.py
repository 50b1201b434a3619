"""Capturing a model as a functional ATen graph with ``torch.export``.

``trace_program`` turns ``model(*args, **kwargs)`` into a :class:`Program`: the
decomposed fx graph, where each placeholder's value comes from, and which
output dimension is the batch.  The batch dimension of every input is exported
as dynamic where the model allows it, so one trace serves every batch size.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn
from torch.export import Dim
from torch.utils import _pytree as pytree

from .errors import InputError, TraceError

__all__ = [
    "Program",
    "keyed_by_batch",
    "signature_of",
    "structure_of",
    "trace_program",
    "export_program",
    "eval_mode",
]


def _describe(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape[1:]), x.dtype, x.device)
    if isinstance(x, (int, float, bool, str, type(None))):
        return (type(x).__name__, x)
    raise InputError(
        f"explain() got an input of type {type(x).__name__}; expected tensors (and plain numbers "
        "or strings as constant arguments)."
    )


def signature_of(model: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """The cache key of a trace: input structure, shapes except the batch, dtypes, devices.

    The dtypes and devices of the model's parameters are part of it, so moving or
    casting the model gives a fresh trace.
    """
    leaves, spec = pytree.tree_flatten((args, kwargs))
    params = tuple(sorted({(p.dtype, p.device) for p in model.parameters()}, key=str))
    return (str(spec), tuple(_describe(x) for x in leaves), params)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the body with every submodule in eval mode; restore each flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    if model.training:
        warnings.warn(
            "relprop explains the model in eval mode (dropout off, batch norm on running "
            "statistics); the model is handed back in training mode.",
            stacklevel=_user_stacklevel(),
        )
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _user_stacklevel() -> int:
    """The warnings stacklevel of the first frame outside relprop and contextlib."""
    import inspect
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    level = 1
    frame = inspect.currentframe()
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not name.startswith(here) and not name.endswith("contextlib.py"):
            return level - 1
        frame = frame.f_back
        level += 1
    return 1


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


def _input_labels(args: tuple, kwargs: dict) -> list[str]:
    labels: list[str] = []
    for i, a in enumerate(args):
        n = len(pytree.tree_leaves(a))
        labels += [f"args[{i}]"] if n == 1 else [f"args[{i}][{j}]" for j in range(n)]
    for k, v in kwargs.items():
        n = len(pytree.tree_leaves(v))
        labels += [k] if n == 1 else [f"{k}[{j}]" for j in range(n)]
    return labels


def _dynamic_batch(args: tuple, kwargs: dict) -> tuple:
    def spec(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return {0: Dim.AUTO}
        return None

    return (
        tuple(pytree.tree_map(spec, a) for a in args),
        {k: pytree.tree_map(spec, v) for k, v in kwargs.items()},
    )


def _export(model: nn.Module, args: tuple, kwargs: dict, dynamic: bool) -> Any:
    shapes: Any = None
    if dynamic:
        dargs, dkwargs = _dynamic_batch(args, kwargs)
        # keyword-only inputs are keyed by name; otherwise positional then keyword, in order
        shapes = dkwargs if not args else dargs + tuple(dkwargs.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=False)
        return ep.run_decompositions({})


#: model -> {(input signature, structure[, batch]): Program}; weak in the model, so the
#: cache never keeps a model alive.  A Program holds no reference to the model: parameters
#: and buffers are read live from the model at every forward (engine._state_value).
_PROGRAMS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Program]] = weakref.WeakKeyDictionary()
_PROGRAMS_LOCK = threading.Lock()


_NOT_PLAIN = object()


def _plain(value: Any) -> Any:
    """``value`` as a hashable key if it is a number, string or short sequence of them."""
    if isinstance(value, (int, float, bool, str, type(None))):
        return value
    if isinstance(value, (tuple, list)) and len(value) <= 16:
        items = tuple(_plain(v) for v in value)
        if all(v is not _NOT_PLAIN for v in items):
            return (type(value).__name__, items)
    return _NOT_PLAIN


def structure_of(model: nn.Module) -> tuple:
    """A cheap fingerprint of everything the exported graph depends on besides the inputs.

    Per submodule: its path and class, an instance-level ``forward`` if one was patched
    in, its hooks, its plain (number/string) attributes such as ``eps`` or ``p`` (they
    are baked into the graph as constants), its tensor attributes that are not
    parameters or buffers (lifted as constants) by identity, and the shape, dtype and
    device of its parameters and buffers (their values are read live at explain time).
    Replacing a submodule, patching a forward, adding a hook or changing such an
    attribute therefore gives a new export.
    """
    parts: list[Any] = []
    for name, m in model.named_modules(remove_duplicate=False):
        attrs = []
        for key, value in m.__dict__.items():
            if (
                key in ("training", "_parameters", "_buffers", "_modules")
                or key.startswith("_forward")
                or key.startswith("_backward")
                or key.startswith("_state_dict")
                or key.startswith("_load_state_dict")
            ):
                continue
            if isinstance(value, torch.Tensor):
                attrs.append((key, "tensor", id(value), tuple(value.shape), value.dtype))
            elif (plain := _plain(value)) is not _NOT_PLAIN:
                attrs.append((key, plain))
            elif callable(value) and key == "forward":
                attrs.append((key, "forward", id(value)))
        tensors = [
            (k, tuple(t.shape), t.dtype, t.device.type)
            for k, t in [*m._parameters.items(), *m._buffers.items()]
            if t is not None
        ]
        hooks = tuple(tuple(getattr(m, h, {}).keys()) for h in ("_forward_hooks", "_forward_pre_hooks"))
        parts.append((name, type(m), tuple(attrs), tuple(tensors), hooks))
    hooks = tuple(
        tuple(getattr(nn.modules.module, h, {}).keys()) for h in ("_global_forward_hooks", "_global_forward_pre_hooks")
    )
    return (tuple(parts), hooks)


_T = TypeVar("_T")


def keyed_by_batch(cache: Mapping[tuple, _T], key: tuple, batch: int | None) -> tuple[tuple, _T | None]:
    """The key and entry of a signature in a cache of traces (programs, or plans of them).

    Traces are keyed by :func:`signature_of`; a model that fixed its batch size when it
    was traced (``static_batch``) has one trace per batch size, under ``(*key, batch)``.
    An entry is a :class:`Program` or has one as ``.bound.program``.
    """
    entry = cache.get(key)
    if entry is not None and _program(entry).static_batch not in (None, batch):
        key = (*key, batch)
        entry = cache.get(key)
    return key, entry


def _program(entry: Any) -> Program:
    return entry if isinstance(entry, Program) else entry.bound.program


def trace_program(model: nn.Module, args: tuple, kwargs: dict) -> Program:
    """The :class:`Program` of ``model(*args, **kwargs)``, exported once per model and signature.

    Exports are shared by every :class:`~relprop.Graph` of the same model (rule sets,
    overrides and binding are per Graph; the capture is not): a cache weak in the
    model, keyed by :func:`signature_of` and :func:`structure_of`, so that a model
    changed structurally between traces is exported again.  Models that fix their
    batch size are cached per batch size.
    """
    key = (signature_of(model, args, kwargs), structure_of(model))
    try:
        hash(key)
    except TypeError:  # an attribute that defeats the fingerprint: do not share
        return export_program(model, args, kwargs)
    batch = _batch_size(args, kwargs)
    with _PROGRAMS_LOCK:
        key, program = keyed_by_batch(_PROGRAMS.get(model) or {}, key, batch)
    if program is not None:
        return program
    program = export_program(model, args, kwargs)
    with _PROGRAMS_LOCK:
        _PROGRAMS.setdefault(model, {})[key] = program
    return program


def export_program(model: nn.Module, args: tuple, kwargs: dict) -> Program:
    """Export ``model(*args, **kwargs)`` to a :class:`Program` (no caching).

    The batch dimension (dim 0 of every tensor input) is exported as dynamic where
    the model allows; a model that specializes it gets a graph for that batch
    size only.  A batch of one is traced as a batch of two (by repetition) so that
    the graph stays dynamic.  A model whose forward takes ``use_cache`` (Hugging Face
    causal LMs) is traced with ``use_cache=False`` (see :func:`_without_cache`).
    """
    traced_args, traced_kwargs, added = _without_cache(model, args, kwargs)
    ex_args, ex_kwargs = traced_args, traced_kwargs
    batch = _batch_size(args, kwargs)
    if batch == 1:
        ex_args, ex_kwargs = pytree.tree_map(_repeat2, (traced_args, traced_kwargs))
    try:
        program = _program_from(_export(model, ex_args, ex_kwargs, dynamic=True), args, kwargs, added)
        if program.static_batch is not None and batch == 1:
            raise TraceError("the model fixed the batch size of the repeated input")
    except Exception:  # noqa: BLE001 - fall back to a static trace of the real batch
        try:
            program = _program_from(_export(model, traced_args, traced_kwargs, dynamic=False), args, kwargs, added)
        except Exception as err:  # noqa: BLE001
            _raise_trace_error(model, traced_args, traced_kwargs, err)
    return program


#: the forward argument that makes Hugging Face models return a key/value cache
_CACHE_ARG = "use_cache"


def _without_cache(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict, bool]:
    """The arguments to trace with, and whether ``use_cache=False`` was added to them.

    A Hugging Face causal LM returns its key/value cache (a ``DynamicCache`` object,
    which torch.export cannot capture) unless it is called with ``use_cache=False``.
    Where the model's forward takes a ``use_cache`` argument, relprop passes
    ``use_cache=False`` to its own trace only: the model, its config and the user's
    inputs are left as they are, and the explained outputs (the logits) are the same.
    An added argument is removed from the :class:`Program` again (:func:`_drop_kwarg`),
    so the trace is fed the user's inputs.  A ``use_cache=True`` the user passed is
    traced as ``False`` too, with a warning (the cache is not part of the output).
    """
    forward = getattr(model, "forward", None)
    try:
        signature = inspect.signature(forward)  # type: ignore[arg-type]
        if _CACHE_ARG not in signature.parameters:
            return args, kwargs, False
        given = signature.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):  # no signature, or inputs the forward does not take
        return args, kwargs, False
    if _CACHE_ARG not in given:
        return args, {**kwargs, _CACHE_ARG: False}, True
    if given[_CACHE_ARG] is False:
        return args, kwargs, False
    if given[_CACHE_ARG]:
        warnings.warn(
            "relprop traces the model with use_cache=False: a key/value cache is not an output "
            "relprop can explain (the logits are the same); the output a target sees has no "
            "past_key_values.",
            stacklevel=_user_stacklevel(),
        )
    if _CACHE_ARG in kwargs:  # True, or None (the config's default)
        return args, {**kwargs, _CACHE_ARG: False}, False
    at = list(signature.parameters).index(_CACHE_ARG)  # passed positionally
    return (*args[:at], False, *args[at + 1 :]), kwargs, False


def _repeat2(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == 1:
        return torch.cat([x, x])
    return x


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for x in pytree.tree_leaves((args, kwargs)):
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return None


def _raise_trace_error(model: nn.Module, args: tuple, kwargs: dict, err: Exception) -> None:
    try:
        with torch.no_grad():
            out = model(*args, **kwargs)
    except Exception as eager:  # noqa: BLE001
        shapes = [
            f"{tuple(x.shape)} {x.dtype}" for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)
        ]
        raise InputError(
            f"the model cannot run on the given input (tensor inputs: {', '.join(shapes)}): "
            f"{type(eager).__name__}: {_first_line(eager)}. Expected an input the model's own "
            "forward accepts."
        ) from None
    odd = _non_tensor_outputs(out)
    if odd:
        raise TraceError(
            f"torch.export could not capture {type(model).__name__}: its output holds "
            f"{', '.join(odd)}, which relprop cannot take apart into tensors.\n"
            "relprop explains models whose forward returns tensors, or tuples, lists, dicts or "
            "Hugging Face ModelOutputs of tensors: return the tensors the target needs instead "
            "of other objects. The full export error is chained below."
        ) from err
    raise TraceError(
        f"torch.export could not capture {type(model).__name__}: {type(err).__name__}: "
        f"{_first_line(err)}\n"
        "relprop needs a model that torch.export.export(model, args, strict=False) can capture. "
        "Things to try: remove data-dependent Python control flow from forward (or use "
        "torch.cond), and return tensors (or tuples/dicts of tensors) instead of other objects. "
        "The full export error is chained below."
    ) from err


def _non_tensor_outputs(out: Any, limit: int = 3) -> list[str]:
    """Where an eager output holds objects other than tensors and plain values: "out[1] (Foo)"."""
    try:
        leaves = pytree.tree_flatten_with_path(out)[0]
    except Exception:  # noqa: BLE001 - an output pytree cannot even walk
        return [f"out ({type(out).__name__})"]
    odd = [
        f"out{pytree.keystr(path)} ({type(x).__name__})"
        for path, x in leaves
        if not isinstance(x, (torch.Tensor, int, float, bool, str, type(None)))
    ]
    return odd[:limit] + ([f"{len(odd) - limit} more"] if len(odd) > limit else [])


def _first_line(err: Exception, limit: int = 400) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[:limit] + "..."


def _program_from(ep: Any, args: tuple, kwargs: dict, added: bool = False) -> Program:
    """The :class:`Program` of an export of ``model(*args, **kwargs)``.

    ``added``: the export was called with ``use_cache=False`` added to ``kwargs``
    (:func:`_without_cache`); that input is removed again (:func:`_drop_kwarg`).
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
    graph = ep.graph_module.graph
    _keep_user_outputs(graph, sig)
    in_spec = ep.call_spec.in_spec
    if added:
        in_spec = _drop_kwarg(graph, in_spec, user_inputs, state, _CACHE_ARG)
    symbols: set = set()
    static_batch = None
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    for name in user_inputs:
        val = placeholders[name].meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() > 0:
            size = val.shape[0]
            if isinstance(size, torch.SymInt) and not size.node.expr.is_number:
                symbols.add(size.node.expr)
            elif static_batch is None:  # an int, or a symbol export specialized to a number
                static_batch = int(size)
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
    )


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
