"""What a user passes to ``explain``: splitting it into arguments and checking it.

Every check raises one :class:`~relprop.InputError` that says what was wrong and
what was expected; nothing here modifies the inputs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .errors import InputError

__all__ = [
    "normalize_inputs",
    "check_inputs",
    "check_token_ids",
    "flatten_like",
    "batch_of",
    "normal_tensors",
    "input_name",
    "record_names",
    "check_recorded",
]


def normalize_inputs(inputs: Any) -> tuple[tuple, dict]:
    """Split what the user passed into positional and keyword arguments.

    A tensor is one positional argument, a tuple or list is the positional
    arguments, a mapping (``dict``, Hugging Face ``BatchEncoding``) is keyword
    arguments.
    """
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    if isinstance(inputs, Mapping):
        return (), {str(k): v for k, v in inputs.items()}
    raise InputError(
        f"explain() got inputs of type {type(inputs).__name__}; expected a tensor, a tuple of "
        "positional arguments, or a dict of keyword arguments (model(**inputs))."
    )


def input_name(label: Any) -> str:
    """How errors name an input: ``input 'input_ids'`` or ``input 0``."""
    return f"input {label!r}" if isinstance(label, str) else f"input {label}"


def check_inputs(model: nn.Module, args: tuple, kwargs: dict) -> list[Any]:
    """Validate the inputs; return a label per flat leaf (position or name)."""
    labels: list[Any] = []
    leaves: list[tuple[Any, Any]] = []
    for key, value in [*enumerate(args), *kwargs.items()]:
        parts = pytree.tree_leaves(value)
        leaves += [(key if len(parts) == 1 else (key, j), x) for j, x in enumerate(parts)]
    device = next((p.device for p in model.parameters()), None)
    tensors = 0
    for label, x in leaves:
        labels.append(label)
        if isinstance(x, Tensor):
            tensors += 1
            _check_tensor(input_name(label), x, device)
    if tensors == 0:
        raise InputError("explain() got no tensor input; expected at least one tensor")
    return labels


def _check_tensor(name: str, x: Tensor, device: torch.device | None) -> None:
    if x.dim() == 0:
        raise InputError(f"{name} is a scalar; expected a batch (batch first)")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {tuple(x.shape)}); expected at least one sample")
    if x.numel() == 0:
        raise InputError(
            f"{name} is empty (shape {tuple(x.shape)}): nothing to explain; expected at least "
            "one entry (token) per sample, e.g. an empty string tokenized without special tokens"
        )
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = "NaN" if torch.isnan(x).any() else "Inf"
        raise InputError(f"{name} contains {bad}; expected finite values")
    if device is not None and x.device != device:
        raise InputError(
            f"{name} is on {x.device} but the model is on {device}; move the input to the "
            "model's device (explain does not move the model)"
        )


def check_token_ids(bound: Any, model: nn.Module, flat: list[Any]) -> None:
    """Token ids outside a word embedding's vocabulary: a tokenizer that does not fit the model.

    ``bound`` is a :class:`~relprop.binding.Bound`; ``flat`` the flattened user inputs.
    """
    program = bound.program
    for node, i in bound.token_sources.items():
        if node not in bound.direct_tokens:
            continue
        weight = node.args[0]
        kind, ref = program.state.get(getattr(weight, "name", ""), ("", None))
        if kind not in ("param", "buffer"):
            continue
        size = (model.get_parameter(ref) if kind == "param" else model.get_buffer(ref)).shape[0]
        ids = flat[i]
        if not isinstance(ids, Tensor) or ids.numel() == 0:
            continue
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= size:
            bad = high if high >= size else low
            path = bound.embeddings.get(node, node.name)
            raise InputError(
                f"input {program.input_labels[i]!r} holds token id {bad}, but the model's "
                f"vocabulary (embedding '{path}') has {size} entries, so ids must be in "
                f"0..{size - 1}: the tokenizer does not match the model (vocabulary size {size})."
            )


def flatten_like(args: tuple, kwargs: dict, in_spec: pytree.TreeSpec) -> list[Any]:
    """The leaves of ``(args, kwargs)`` in the order of the traced signature ``in_spec``."""
    flat, spec = pytree.tree_flatten((args, kwargs))
    if spec != in_spec and kwargs:
        keys = in_spec.children_specs[1].context
        flat, spec = pytree.tree_flatten((args, {k: kwargs[k] for k in keys}))
    return flat


def batch_of(flat: list[Any]) -> int:
    """The batch size: dim 0 of the first tensor input that has one."""
    return next(int(x.shape[0]) for x in flat if isinstance(x, Tensor) and x.dim() > 0)


def normal_tensors(tree: Any) -> Any:
    """``tree`` with inference tensors copied (rules differentiate locally)."""
    return pytree.tree_map(lambda x: x.clone() if isinstance(x, Tensor) and x.is_inference() else x, tree)


def record_names(record: Any) -> bool | frozenset[str]:
    """``explanation(record=...)`` as the walk takes it: a bool, or the set of node names."""
    if isinstance(record, bool):
        return record
    if isinstance(record, str) or not isinstance(record, Iterable):
        raise InputError(
            f"record must be True, False or a collection of node names, not {type(record).__name__} "
            f"{record!r} (one node: record={{{record!r}}})"
        )
    names = frozenset(record)
    odd = [n for n in names if not isinstance(n, str)]
    if odd:
        raise InputError(f"record takes node names (str), got {odd[0]!r}; Graph.summary() lists the names")
    return names


def check_recorded(names: frozenset[str], bound: Any) -> None:
    """Every name in ``names`` is a node of the traced graph that a fold did not absorb."""
    program = bound.program
    known = {n.name for n in program.graph.nodes}
    for output, binding in bound.bindings.items():
        if binding.fold is None:
            continue
        inside = sorted(names & {m.name for m in binding.fold.nodes if m is not output})
        if inside:
            raise InputError(
                f"record: node {inside[0]!r} is folded with the per-channel affine ops after it into node "
                f"{output.name!r} (canonization, docs/semantics.md §Canonization), which carries the folded "
                f"layer's relevance; record {output.name!r}, or trace with a rule set made with canonize=False"
            )
    missing = sorted(names - known)
    if missing:
        close = difflib.get_close_matches(missing[0], known, n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise InputError(
            f"record: the traced graph has no node {missing[0]!r}{hint}; Graph.summary() lists the node names"
        )
