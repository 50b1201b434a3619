"""The public object: a model traced for explanation.

``relprop.trace(model)`` returns a :class:`Graph`; ``graph.explain(x, target)``
traces ``model`` on the first input signature it sees (cached afterwards),
binds rules, runs one forward and one backward walk, and returns relevance
shaped like the input.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from relprop.rules.base import RuleCache
from relprop.rules.sets import AbsLRP, RuleSet

from . import engine, targets
from .binding import Binding, Bound, OverrideKey, bind
from .errors import InputError, RuleError, TargetError
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
                f"rules must be a rule set such as relprop.rules.AbsLRP() or relprop.rules.Epsilon(1e-6); got {rules!r}"
            )
        self.model = model
        self.rules = rules
        self.overrides = dict(overrides or {})
        self.strict = strict
        self._cache: dict[tuple, Bound] = {}
        self._last: Bound | None = None
        #: what rules keep between explains (absLRP's derived weights), shared by all traces
        self.rule_cache = RuleCache()
        #: how many times the model was traced (one per new input signature); an export
        #: shared with another Graph of the same model (tracing.trace_program) counts too
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
            self.rule_cache.parameter_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            bound.cache = self.rule_cache
            self._cache[key] = bound
        self._last = bound
        return bound

    # -- explaining ------------------------------------------------------------------------

    def explain(
        self,
        inputs: Any,
        target: Any = None,
        *,
        contrastive: bool | None = None,
        batch_size: int | None = None,
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

        ``batch_size``: explain at most this many samples at a time and concatenate
        (the result is the same; memory is bounded by the chunk).  Every tensor input
        is split along dim 0, and so is a per-sample target (a sequence or tensor of
        class indices, a float target tensor, ``next_token`` with per-sample ids or an
        attention mask); other callable targets cannot be split and raise
        :class:`~relprop.TargetError`.  All chunks share one trace (the batch is
        dynamic); a model whose forward fixes its batch size is traced once per chunk
        size, i.e. for ``batch_size`` and for the smaller last chunk.
        """
        return self.explanation(inputs, target, contrastive=contrastive, batch_size=batch_size).relevance

    def explanation(
        self,
        inputs: Any,
        target: Any = None,
        *,
        contrastive: bool | None = None,
        record: bool = False,
        batch_size: int | None = None,
    ) -> Explanation:
        """Like :meth:`explain`, returning an :class:`Explanation` with the details.

        With ``batch_size``, every field is the concatenation over the chunks and equal
        to one explain of the whole batch, up to rounding.  One exception: an entry of
        ``embeddings`` shared by the whole batch ((1, tokens), position ids) is the sum
        over the chunks; absLRP normalizes such a lookup over all the samples that share
        it, so there it depends on the chunking (conservative rule sets give the same
        sum).  ``record=True`` cannot be combined with chunking.
        """
        args, kwargs = normalize_inputs(inputs)
        labels = _check_inputs(self.model, args, kwargs)
        if batch_size is not None:
            size = _check_batch_size(batch_size)
            total = _batch(pytree.tree_leaves((args, kwargs)))
            if total > size:
                if record:
                    raise InputError(
                        "record=True cannot be combined with batch_size: the recorded per-node "
                        "relevances are kept per walk and are not all batch-first; explain a batch "
                        f"of at most {size} samples with record=True instead"
                    )
                return self._chunked(inputs, args, kwargs, labels, target, contrastive, size, total)
        walk, start, out_obj = self._run(args, kwargs, target, contrastive, record)
        return self._assemble(inputs, labels, walk, start, out_obj)

    def _run(
        self, args: tuple, kwargs: dict, target: Any, contrastive: bool | None, record: bool
    ) -> tuple[engine.Walk, targets.Start, Any]:
        """Trace if needed, run the forward and the walk on validated inputs."""
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
        return walk, start, out_obj

    def _chunked(
        self,
        inputs: Any,
        args: tuple,
        kwargs: dict,
        labels: list[Any],
        target: Any,
        contrastive: bool | None,
        size: int,
        total: int,
    ) -> Explanation:
        """Explain ``total`` samples ``size`` at a time and concatenate the walks."""
        _check_splittable(args, kwargs, total)
        walks: list[engine.Walk] = []
        starts: list[targets.Start] = []
        outs: list[Any] = []
        shared: set[str] = set()
        for lo in range(0, total, size):
            hi = min(lo + size, total)
            c_args, c_kwargs = pytree.tree_map(functools.partial(_rows, lo=lo, hi=hi), (args, kwargs))
            c_target = _target_rows(target, lo, hi, total)
            walk, start, out = self._run(c_args, c_kwargs, c_target, contrastive, False)
            assert self._last is not None
            shared |= _shared_lookups(self._last, walk, hi - lo)
            walks.append(walk)
            starts.append(start)
            outs.append(out)
        walk = engine.Walk(
            inputs={i: torch.cat([w.inputs[i] for w in walks], dim=1) for i in walks[0].inputs},
            embeddings={
                key: (
                    torch.stack([w.embeddings[key] for w in walks]).sum(0)
                    if key in shared
                    else torch.cat([w.embeddings[key] for w in walks], dim=1)
                )
                for key in walks[0].embeddings
            },
        )
        classes = [s.classes for s in starts]
        start = targets.Start(
            relevance=[],
            classes=None if any(c is None for c in classes) else torch.cat(classes),  # type: ignore[arg-type]
            passes=starts[0].passes,
        )
        return self._assemble(inputs, labels, walk, start, _cat_outputs(outs, total))

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
            raise InputError("nothing traced yet: call explain(x, target) first, or summary(x) with an example input")
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
        op = full_op_name(n.target) if b.region is None else b.region.describe()
        rows.append((n.name, op, module, str(info.category), repr(b.rule), b.source))
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(rows[0]))]
    lines = [f"relprop graph, rule set {rules!r}; {len(rows) - 1} nodes on the relevance path"]
    for r in rows:
        lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip())
    if bound.unbound:
        lines.append(
            "passed by their gradient for want of a rule (strict=False): " + ", ".join(sorted(set(bound.unbound)))
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


def _check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as a positive int, or an InputError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int (samples per chunk), got {batch_size!r}")
    return int(batch_size)


def _check_splittable(args: tuple, kwargs: dict, total: int) -> None:
    """Every tensor input must hold the batch in dim 0 to be split into chunks."""
    for key, value in [*enumerate(args), *kwargs.items()]:
        for x in pytree.tree_leaves(value):
            if isinstance(x, Tensor) and (x.dim() == 0 or x.shape[0] != total):
                name = f"input {key!r}" if isinstance(key, str) else f"input {key}"
                raise InputError(
                    f"batch_size splits every tensor input along dim 0, but {name} is shaped "
                    f"{tuple(x.shape)} while the batch has {total} samples; expected the batch "
                    "first in every tensor input (or explain without batch_size)"
                )


def _rows(x: Any, lo: int, hi: int) -> Any:
    return x[lo:hi] if isinstance(x, Tensor) else x


def _target_rows(target: Any, lo: int, hi: int, total: int) -> Any:
    """The part of ``target`` that belongs to samples ``lo:hi`` (TargetError if it cannot be split)."""
    if target is None or isinstance(target, (bool, int)):
        return target
    if isinstance(target, Tensor):
        if target.dim() == 0:
            return target
        if target.shape[0] != total:
            raise TargetError(
                f"with batch_size, a target tensor is split along dim 0 and must have one row per "
                f"sample ({total}); got shape {tuple(target.shape)}"
            )
        return target[lo:hi]
    if isinstance(target, targets.NextToken):
        ids = target.token_id
        if isinstance(ids, Tensor) and ids.dim() == 1 or isinstance(ids, (list, tuple)):
            if len(ids) != total:
                raise TargetError(
                    f"next_token got {len(ids)} token ids but the batch has {total} samples; "
                    "expected one id, or one per sample"
                )
            ids = ids[lo:hi]
        mask = target.attention_mask
        if isinstance(mask, Tensor) and mask.dim() > 0 and mask.shape[0] == total:
            mask = mask[lo:hi]
        return targets.NextToken(ids, target.position, mask)
    if callable(target):
        raise TargetError(
            "a callable target cannot be split into chunks with batch_size: it sees one chunk's "
            "output at a time and may select scores per sample of the whole batch. Use "
            "relprop.targets.next_token(...), class indices or a float target tensor, or call "
            "explain per chunk yourself."
        )
    if isinstance(target, Sequence) or (hasattr(target, "__len__") and hasattr(target, "__getitem__")):
        if isinstance(target, (str, Mapping)):
            return target
        if len(target) != total:
            raise TargetError(
                f"target has {len(target)} class indices but the batch has {total} samples; "
                "expected one index per sample (or a single int for all)."
            )
        return target[lo:hi]
    return target  # not understood: the explain of the first chunk raises the usual error


def _shared_lookups(bound: Bound, walk: engine.Walk, rows: int) -> set[str]:
    """Keys of ``walk.embeddings`` whose lookup is shared by the whole batch (summed over it)."""
    shared = set()
    by_path = {path: node for node, path in bound.embeddings.items()}
    for key, R in walk.embeddings.items():
        if R.shape[1] != 1:
            continue
        if rows > 1:
            shared.add(key)
            continue
        node = by_path.get(key.split(":", 1)[0])
        index = node.args[1].meta.get("val") if node is not None else None
        first = index.shape[0] if isinstance(index, Tensor) and index.dim() > 0 else None
        if isinstance(first, int) and bound.program.batch_symbols:
            shared.add(key)  # a fixed size in a graph with a symbolic batch: not per sample
    return shared


def _cat_outputs(outs: list[Any], total: int) -> Any:
    """The model outputs of the chunks, batch-first tensors concatenated."""
    flats = [pytree.tree_flatten(o) for o in outs]
    spec = flats[0][1]
    leaves = []
    for parts in zip(*(f for f, _ in flats)):
        first = parts[0]
        if isinstance(first, Tensor) and first.dim() > 0 and sum(p.shape[0] for p in parts) == total:
            leaves.append(torch.cat(parts))
        else:
            leaves.append(first)
    return pytree.tree_unflatten(leaves, spec)


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
