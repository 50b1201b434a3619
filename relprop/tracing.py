"""Capturing a model as a functional ATen graph with ``torch.export``.

``trace_program`` turns ``model(*args, **kwargs)`` into a :class:`Program`: the graph
(export's own, lowered by :mod:`relprop.lowering`, or the full decomposition), where
each placeholder's value comes from, and which output dimension is the batch.  The batch
of every input and the sequence of token ids and masks (:func:`dynamic_dims`) are
exported as dynamic where the model allows it, so one trace serves every batch size and
prompt length (:meth:`Program.accepts` says for which inputs it holds).  Exports are
shared in memory by every Graph of a model and kept on disk across processes
(:mod:`relprop.diskcache`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.export import Dim
from torch.utils import _pytree as pytree

from . import diskcache
from .errors import InputError, TraceError
from .lowering import lower
from .packed import PackedAsPadded
from .programs import CACHE_ARG, Program, grown_shape, program_from

_log = logging.getLogger("relprop")

__all__ = [
    "dynamic_dims",
    "find_trace",
    "signature_of",
    "structure_of",
    "trace_program",
    "export_program",
    "eval_mode",
    "user_stacklevel",
]


def dynamic_dims(x: Any) -> tuple[int, ...]:
    """The dimensions of an input that relprop traces as dynamic.

    The batch (dim 0) of every tensor, and the sequence (dim 1) of two-dimensional integer
    and boolean tensors (token ids, attention masks, position ids): one trace then serves
    every batch size and every prompt length.  Image sizes stay fixed.
    """
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return ()
    if x.dim() == 2 and not (x.is_floating_point() or x.is_complex()):
        return (0, 1)
    return (0,)


def _describe(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        dynamic = dynamic_dims(x)
        shape = tuple(None if d in dynamic else size for d, size in enumerate(x.shape))
        return ("tensor", shape, x.dtype, x.device)
    if isinstance(x, (int, float, bool, str, type(None))):
        return (type(x).__name__, x)
    raise InputError(
        f"explain() got an input of type {type(x).__name__}; expected tensors (and plain numbers "
        "or strings as constant arguments)."
    )


def signature_of(model: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """The cache key of a trace: input structure, shapes except their dynamic dimensions
    (:func:`dynamic_dims`), dtypes, devices.

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
            stacklevel=user_stacklevel(),
        )
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def user_stacklevel() -> int:
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


def _dynamic_shapes(args: tuple, kwargs: dict, dims: Any) -> Any:
    """``torch.export``'s ``dynamic_shapes`` marking ``dims(x)`` of every tensor input."""

    def spec(x: Any) -> Any:
        marked = dims(x) if isinstance(x, torch.Tensor) else ()
        return {d: Dim.AUTO for d in marked} or None

    dargs = tuple(pytree.tree_map(spec, a) for a in args)
    dkwargs = {k: pytree.tree_map(spec, v) for k, v in kwargs.items()}
    # keyword-only inputs are keyed by name; otherwise positional then keyword, in order
    return dkwargs if not args else dargs + tuple(dkwargs.values())


def _export(model: nn.Module, args: tuple, kwargs: dict, shapes: Any) -> Any:
    """``torch.export.export``'s own program (before any decomposition)."""
    # packed sequences are exported as padded batches (relprop.packed), where the model has a
    # recurrent module that might take one
    packed = PackedAsPadded() if any(isinstance(m, nn.RNNBase) for m in model.modules()) else contextlib.nullcontext()
    with warnings.catch_warnings(), packed:
        warnings.simplefilter("ignore")
        return torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=False)


@dataclass
class _Capture:
    """An export brought to the form relprop binds, and where it came from."""

    ep: Any
    graph: torch.fx.Graph
    decomposed: bool
    #: read from the disk cache (:mod:`relprop.diskcache`) instead of exported
    read: bool


def _capture(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    shapes: Any,
    variant: str,
    decompose: bool,
    disk: bool,
    reread: bool = True,
) -> _Capture:
    """Export's own graph rewritten by :func:`relprop.lowering.lower` where it can be (about
    one export's cost), else ``run_decompositions({})``'s (a second trace of the model).

    With ``disk``, each program is read from the disk cache where it is there (unless not
    ``reread``) and stored there after an export; ``variant`` names the dynamic dimensions
    asked for.
    """
    ep, read = None, False
    if not decompose:
        # lowering copies export's program and never changes it: its store can wait until exit
        ep, read = _cached(
            model,
            args,
            kwargs,
            shapes,
            f"{variant}/export",
            disk,
            reread,
            lambda: _export(model, args, kwargs, shapes),
            later=True,
        )
        graph, why = lower(ep)
        if graph is not None:
            return _Capture(ep, graph, False, read)
        _log.debug("relprop: full decomposition (%s)", why)

    def decomposition() -> Any:
        fresh = ep if ep is not None and not read else _export(model, args, kwargs, shapes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fresh.run_decompositions({})

    # program_from changes the decomposed graph itself: store it now
    full, read = _cached(model, args, kwargs, shapes, f"{variant}/decomposed", disk, reread, decomposition, later=False)
    return _Capture(full, full.graph_module.graph, True, read)


def _cached(
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    shapes: Any,
    variant: str,
    disk: bool,
    reread: bool,
    make: Callable[[], Any],
    later: bool,
) -> tuple[Any, bool]:
    """``(program, read)``: the disk cache's entry for this export where there is one (and
    ``reread``), else ``make()``, stored in the cache where it can be (at exit if ``later``)."""
    key = diskcache.key_of(model, args, kwargs, shapes, variant) if disk else None
    if key is not None and reread:
        ep = diskcache.load(key)
        if ep is not None:
            return ep, True
    ep = make()
    if key is not None:
        diskcache.store(key, ep, wait=not later)
    return ep, False


#: model -> {(input signature, structure, decompose): [Program, ...]}; weak in the model, so the
#: cache never keeps a model alive.  A Program holds no reference to the model: parameters
#: and buffers are read live from the model at every forward (engine._state_value).
_PROGRAMS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[Program]]] = weakref.WeakKeyDictionary()
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


def find_trace(cache: Mapping[tuple, list[_T]], key: tuple, args: tuple, kwargs: dict) -> _T | None:
    """The first trace under ``key`` (a :func:`signature_of`) that accepts ``(args, kwargs)``.

    An entry is a :class:`Program` or has one as ``.bound.program`` (:meth:`Program.accepts`).
    """
    for entry in cache.get(key, ()):
        if _program(entry).accepts(args, kwargs):
            return entry
    return None


def _program(entry: Any) -> Program:
    return entry if isinstance(entry, Program) else entry.bound.program


def trace_program(
    model: nn.Module, args: tuple, kwargs: dict, *, decompose: bool = False, disk: bool = True
) -> Program:
    """The :class:`Program` of ``model(*args, **kwargs)``, exported once per model and signature.

    Exports are shared by every :class:`~relprop.Graph` of the same model (rule sets,
    overrides and binding are per Graph; the capture is not): a cache weak in the
    model, keyed by :func:`signature_of` and :func:`structure_of`, so that a model
    changed structurally between traces is exported again.  Inputs the trace does not
    accept (a size it fixed, or outside the range of a dynamic one) get a trace of
    their own under the same key (:func:`find_trace`).
    ``decompose``: the full decomposition; ``disk``: use the disk cache (:func:`export_program`).
    """
    key = (signature_of(model, args, kwargs), structure_of(model), decompose)
    try:
        hash(key)
    except TypeError:  # an attribute that defeats the fingerprint: do not share
        return export_program(model, args, kwargs, decompose=decompose, disk=disk)

    with _PROGRAMS_LOCK:
        program = find_trace(_PROGRAMS.get(model) or {}, key, args, kwargs)
    if program is not None:
        return program
    program = export_program(model, args, kwargs, decompose=decompose, disk=disk)
    with _PROGRAMS_LOCK:
        _PROGRAMS.setdefault(model, {}).setdefault(key, []).append(program)
    return program


def export_program(
    model: nn.Module, args: tuple, kwargs: dict, *, decompose: bool = False, disk: bool = True
) -> Program:
    """Export ``model(*args, **kwargs)`` to a :class:`Program` (no in-memory caching).

    The dimensions of :func:`dynamic_dims` (the batch, and the sequence of token ids and
    masks) are exported as dynamic where the model allows; a size of 1 there is traced
    as 2 (by repetition) so that the dimension stays dynamic.  A model that fixes one of
    them gets a graph for that size (:attr:`Program.fixed`); one that cannot be exported
    with a dynamic sequence is traced with the batch dynamic only, with a warning.  A
    model whose forward takes ``use_cache`` (Hugging Face causal LMs) is traced with
    ``use_cache=False`` (see :func:`_without_cache`).  The graph is export's own, brought
    to ATen form by :mod:`relprop.lowering`, or with ``decompose`` (or where lowering
    cannot) ``run_decompositions({})``'s.  With ``disk``, programs are read from and
    written to the disk cache (:mod:`relprop.diskcache`); an entry that does not hold for
    these inputs (a size it fixed) is exported again and replaced.
    """
    traced_args, traced_kwargs, added = _without_cache(model, args, kwargs)
    leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    sequence = any(1 in dynamic_dims(x) for x in leaves)
    attempts: list[Callable[[Any], tuple[int, ...]]] = [dynamic_dims] if sequence else []
    attempts += [_batch_only, _no_dims]
    failure: Exception | None = None
    last = TraceError("no export was tried")
    for dims in attempts:
        grown = pytree.tree_map(lambda x, dims=dims: _grow(x, dims(x)), (traced_args, traced_kwargs))
        shapes = _dynamic_shapes(*grown, dims) if dims is not _no_dims else None
        variant = dims.__name__.strip("_")
        try:
            got = _capture(model, *grown, shapes, variant, decompose, disk)
            program = program_from(got.ep, got.graph, args, kwargs, added, got.decomposed, dims)
            if got.read and not program.accepts(args, kwargs):  # stored for other sizes: replace it
                got = _capture(model, *grown, shapes, variant, decompose, disk, reread=False)
                program = program_from(got.ep, got.graph, args, kwargs, added, got.decomposed, dims)
            program.read = got.read
        except Exception as err:  # noqa: BLE001 - try fewer dynamic dimensions
            failure, last = failure or err, err
            continue
        if dims is not dynamic_dims and sequence and failure is not None:
            _warn_once(
                model,
                "it cannot be exported with a dynamic sequence length, so every new length is traced "
                f"again ({type(failure).__name__}: {_first_line(failure, 200)})",
            )
        elif any(d > 0 for _, d, _ in program.fixed):
            sizes = sorted({size for _, d, size in program.fixed if d > 0})
            _warn_once(
                model,
                f"its forward fixes the sequence length (to {', '.join(map(str, sizes))} here; torch.export "
                "specialized it), so every new length is traced again",
            )
        return program
    _raise_trace_error(model, traced_args, traced_kwargs, last)
    raise AssertionError("unreachable")


def _batch_only(x: Any) -> tuple[int, ...]:
    return dynamic_dims(x)[:1]


def _no_dims(x: Any) -> tuple[int, ...]:
    return ()


def _grow(x: Any, dims: tuple[int, ...]) -> Any:
    """``x`` repeated to its traced shape (:func:`~relprop.programs.grown_shape`)."""
    if not isinstance(x, torch.Tensor):
        return x
    return x.repeat(*(new // old for new, old in zip(grown_shape(x, dims), x.shape)))


_WARNED: set[type] = set()


def _warn_once(model: nn.Module, message: str) -> None:
    """A tracing warning, once per model class and process."""
    if type(model) in _WARNED:
        return
    _WARNED.add(type(model))
    warnings.warn(f"relprop traced {type(model).__name__} with fixed sizes: {message}", stacklevel=user_stacklevel())


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
        if CACHE_ARG not in signature.parameters:
            return args, kwargs, False
        given = signature.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):  # no signature, or inputs the forward does not take
        return args, kwargs, False
    if CACHE_ARG not in given:
        return args, {**kwargs, CACHE_ARG: False}, True
    if given[CACHE_ARG] is False:
        return args, kwargs, False
    if given[CACHE_ARG]:
        warnings.warn(
            "relprop traces the model with use_cache=False: a key/value cache is not an output "
            "relprop can explain (the logits are the same); the output a target sees has no "
            "past_key_values.",
            stacklevel=user_stacklevel(),
        )
    if CACHE_ARG in kwargs:  # True, or None (the config's default)
        return args, {**kwargs, CACHE_ARG: False}, False
    at = list(signature.parameters).index(CACHE_ARG)  # passed positionally
    return (*args[:at], False, *args[at + 1 :]), kwargs, False


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
