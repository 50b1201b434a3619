"""The public object: a model traced for explanation.

``relprop.trace(model)`` returns a :class:`Graph`; ``graph.explain(x, target)``
traces ``model`` on the first input signature it sees (cached afterwards),
binds rules, runs one forward and one backward walk, and returns relevance
shaped like the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from relprop.rules.sets import AbsLRP, RuleSet

from . import engine, targets
from .binding import Binding, Bound, OverrideKey, bind
from .errors import InputError, RuleError
from .tracing import eval_mode, normalize_inputs, signature_of, trace_program

__all__ = ["Graph", "Explanation", "trace"]


@dataclass
class Explanation:
    """Everything one explain produced.

    ``relevance`` is what :meth:`Graph.explain` returns.  ``inputs`` holds the
    relevance of every input that received some (keyed like the input: position
    for tuples, name for dicts); ``passes`` the same before the contrastive
    passes are combined, with the pass dimension first.

    Token ids (integer inputs): a token's relevance is read at the output of the
    embedding lookup indexed by those ids (the word embeddings) and summed over
    the hidden dimension.  Other lookups on the way — position embeddings (indexed
    by a buffer or by positions computed from the ids), token-type embeddings —
    receive relevance too; they are not tokens, so they are not added to the token
    relevance.  ``embeddings`` holds the relevance of *every* lookup, keyed by the
    module path of the embedding (``"bert.embeddings.position_embeddings"``),
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
    #: node name -> relevances its rule gave each input (``record=True`` only)
    records: dict[str, list[Tensor | None]] = field(default_factory=dict)
    #: node name -> relevance of the node's output (``record=True`` only)
    node_relevance: dict[str, Any] = field(default_factory=dict)
    #: embedding module path -> relevance of that lookup, summed over the hidden dimension
    #: and shaped like its indices (see below)
    embeddings: dict[str, Tensor] = field(default_factory=dict)


class Graph:
    """A model prepared for relevance propagation (see :func:`trace`)."""

    def __init__(
        self,
        model: nn.Module,
        rules: RuleSet | None = None,
        overrides: Mapping[OverrideKey, Any] | None = None,
        strict: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"relprop.trace expects a torch.nn.Module, got {type(model).__name__}")
        rules = AbsLRP() if rules is None else rules
        if isinstance(rules, type) and issubclass(rules, RuleSet):
            rules = rules()
        if not isinstance(rules, RuleSet):
            raise RuleError(
                f"rules must be a rule set such as relprop.rules.AbsLRP() or "
                f"relprop.rules.Epsilon(1e-6); got {rules!r}"
            )
        self.model = model
        self.rules = rules
        self.overrides = dict(overrides or {})
        self.strict = strict
        self._cache: dict[tuple, Bound] = {}
        self._last: Bound | None = None
        #: how many times the model was traced (one per new input signature)
        self.trace_count = 0

    # -- tracing ---------------------------------------------------------------------------

    def _bound(self, args: tuple, kwargs: dict) -> Bound:
        key = signature_of(self.model, args, kwargs)
        bound = self._cache.get(key)
        batch = _batch(pytree.tree_leaves((args, kwargs)))
        if bound is not None and bound.program.static_batch not in (None, batch):
            # the model fixed the batch size when it was traced: one trace per batch size
            key = (*key, batch)
            bound = self._cache.get(key)
        if bound is None:
            program = trace_program(self.model, args, kwargs)
            self.trace_count += 1
            bound = bind(program, self.model, self.rules, self.overrides, self.strict)
            self._cache[key] = bound
        self._last = bound
        return bound

    # -- explaining ------------------------------------------------------------------------

    def explain(
        self, inputs: Any, target: Any = None, *, contrastive: bool | None = None
    ) -> Any:
        """Relevance of ``inputs`` for ``target``.

        Returns a tensor shaped like a tensor input (or (batch, tokens) for token
        ids), a tuple for tuple inputs (None where an input received none), and for
        dict inputs the relevance of ``input_ids`` if it received some, else of the
        first entry that did (all of them are in :meth:`explanation`'s ``inputs``).

        Token ids get the relevance of their word-embedding lookup summed over the
        hidden dimension, shaped (batch, tokens), exactly 0 where a given
        ``attention_mask`` is 0; position and token-type embeddings are reported
        separately, in :meth:`explanation`'s ``embeddings`` (see :class:`Explanation`).
        For a decoder language model pass ``use_cache=False`` (in the config or the
        inputs) and a target that selects one logit, e.g.
        ``relprop.targets.next_token(token_id)``.
        """
        return self.explanation(inputs, target, contrastive=contrastive).relevance

    def explanation(
        self,
        inputs: Any,
        target: Any = None,
        *,
        contrastive: bool | None = None,
        record: bool = False,
    ) -> Explanation:
        """Like :meth:`explain`, returning an :class:`Explanation` with the details."""
        args, kwargs = normalize_inputs(inputs)
        labels = _check_inputs(self.model, args, kwargs)
        use_contrastive = self.rules.contrastive if contrastive is None else bool(contrastive)
        # rules differentiate locally: leave inference mode, and copy inference tensors
        with torch.inference_mode(False), eval_mode(self.model):
            args, kwargs = pytree.tree_map(_normal_tensor, (args, kwargs))
            bound = self._bound(args, kwargs)
            program = bound.program
            flat = _flatten_like(args, kwargs, program.in_spec)
            batch = _batch(flat)
            _check_token_ids(bound, self.model, flat)
            env = engine.forward(bound, self.model, flat)
            out_node = list(program.graph.nodes)[-1]
            flat_out = list(pytree.tree_leaves(env[out_node]))
            out_obj = pytree.tree_unflatten(flat_out, program.out_spec)
            start = targets.start_relevance(
                out_obj,
                flat_out,
                program.out_spec,
                target,
                start=self.rules.start,
                contrastive=use_contrastive,
                contrastive_given=contrastive is not None,
                batch=batch,
            )
            walk = engine.backward(bound, env, start.relevance, batch, record=record)
        return self._assemble(inputs, labels, walk, start, out_obj)

    def _assemble(
        self, inputs: Any, labels: list[Any], walk: engine.Walk, start: targets.Start, out: Any
    ) -> Explanation:
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
        embeddings = {path: combine(R) for path, R in walk.embeddings.items()}
        if mask is not None:
            embeddings = {k: _zero_padding(v, mask) for k, v in embeddings.items()}
        if isinstance(inputs, Tensor):
            relevance: Any = combined.get(labels[0], _zeros_like(inputs))
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

    # -- inspection ------------------------------------------------------------------------

    def summary(self, inputs: Any = None) -> str:
        """One line per graph node: op, module path and class, category, bound rule.

        Uses the last traced input signature, or traces ``inputs`` if given.
        """
        if inputs is not None:
            args, kwargs = normalize_inputs(inputs)
            _check_inputs(self.model, args, kwargs)
            with eval_mode(self.model):
                self._bound(args, kwargs)
        if self._last is None:
            raise InputError(
                "nothing traced yet: call explain(x, target) first, or summary(x) with an "
                "example input"
            )
        return format_summary(self._last, self.rules)

    @property
    def bindings(self) -> list[Binding]:
        """The bound nodes of the last traced signature: node, category, rule, why."""
        if self._last is None:
            raise InputError("nothing traced yet: call explain(x, target) or summary(x) first")
        return list(self._last.bindings.values())

    def __repr__(self) -> str:
        return f"relprop.Graph({type(self.model).__name__}, rules={self.rules!r}, strict={self.strict})"


def format_summary(bound: Bound, rules: RuleSet) -> str:
    from relprop.rules.ops import full_op_name

    rows = [("node", "op", "module", "category", "rule", "matched by")]
    for n in bound.program.graph.nodes:
        if n.op == "placeholder":
            if n in bound.float_sources.values():
                rows.append((n.name, "input", "", "source", "relevance read here", ""))
            continue
        if n in bound.embeddings:
            what = "token relevance read here" if n in bound.token_sources else "embedding relevance read here"
            rows.append((n.name, full_op_name(n.target), bound.embeddings[n], "embedding", what, ""))
            continue
        b = bound.bindings.get(n)
        if b is None:
            continue
        info = b.info
        module = f"{info.module_path} ({info.module_class})" if info.module_path else info.module_class
        rows.append((n.name, full_op_name(n.target), module, str(info.category), repr(b.rule), b.source))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(rows[0]))]
    lines = [f"relprop graph, rule set {rules!r}; {len(rows) - 1} nodes on the relevance path"]
    for r in rows:
        lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip())
    if bound.unbound:
        lines.append(
            "passed by their gradient for want of a rule (strict=False): "
            + ", ".join(sorted(set(bound.unbound)))
        )
    return "\n".join(lines)


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


def _check_token_ids(bound: Bound, model: nn.Module, flat: list[Any]) -> None:
    """Token ids outside a word embedding's vocabulary: a tokenizer that does not fit the model."""
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


def _normal_tensor(x: Any) -> Any:
    return x.clone() if isinstance(x, Tensor) and x.is_inference() else x


def _zeros_like(x: Tensor) -> Tensor:
    return torch.zeros_like(x)


def _check_inputs(model: nn.Module, args: tuple, kwargs: dict) -> list[Any]:
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
        if not isinstance(x, Tensor):
            continue
        tensors += 1
        name = f"input {label!r}" if isinstance(label, str) else f"input {label}"
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
    if tensors == 0:
        raise InputError("explain() got no tensor input; expected at least one tensor")
    return labels


def _flatten_like(args: tuple, kwargs: dict, in_spec: pytree.TreeSpec) -> list[Any]:
    flat, spec = pytree.tree_flatten((args, kwargs))
    if spec != in_spec and kwargs:
        keys = in_spec.children_specs[1].context
        flat, spec = pytree.tree_flatten((args, {k: kwargs[k] for k in keys}))
    return flat


def _batch(flat: list[Any]) -> int:
    return next(int(x.shape[0]) for x in flat if isinstance(x, Tensor) and x.dim() > 0)


def trace(
    model: nn.Module,
    rules: RuleSet | None = None,
    *,
    overrides: Mapping[OverrideKey, Any] | None = None,
    strict: bool = True,
) -> Graph:
    """Prepare ``model`` for relevance propagation.

    ``rules``: a rule set from :mod:`relprop.rules` (default :class:`~relprop.rules.AbsLRP`).
    ``overrides``: ``{key: rule}`` with keys a module-name glob, an ``nn.Module``
    subclass, or an ATen op; precedence name > class > op > rule set.
    ``strict``: raise on ops no rule covers (default) or pass relevance through them
    by their gradient and list them in :meth:`Graph.summary`.

    Tracing itself happens on the first :meth:`Graph.explain` (per input signature).
    """
    return Graph(model, rules, overrides, strict)
