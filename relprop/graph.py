"""The public object: a model traced for explanation.

``relprop.trace(model)`` returns a :class:`Graph`; ``graph.explain(x, target)``
traces ``model`` on the first input signature it sees (cached afterwards),
binds rules, runs one forward and one backward walk, and returns relevance
shaped like the input.  The Graph is a facade: inputs are checked in
:mod:`relprop.inputs`, traced in :mod:`relprop.tracing`, bound in
:mod:`relprop.binding`, walked by :mod:`relprop.engine`, started from the target in
:mod:`relprop.targets`, chunked in :mod:`relprop.chunking` and assembled in
:mod:`relprop.explanation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from relprop.rules.base import RuleCache
from relprop.rules.sets import AbsLRP, RuleSet

from . import chunking, engine, targets
from .binding import Binding, Bound, OverrideKey, bind, registered_ops
from .errors import InputError, RuleError
from .explanation import Explanation, assemble
from .inputs import (
    batch_of,
    check_inputs,
    check_recorded,
    check_token_ids,
    flatten_like,
    normal_tensors,
    normalize_inputs,
    record_names,
)
from .programs import Program
from .summary import format_summary
from .tracing import eval_mode, find_trace, signature_of, trace_program

__all__ = ["Graph", "Explanation", "trace"]


class Graph:
    """A model prepared for relevance propagation; made by [`trace`][relprop.trace], which
    documents the arguments."""

    def __init__(
        self,
        model: nn.Module,
        rules: RuleSet | None = None,
        overrides: Mapping[OverrideKey, Any] | None = None,
        strict: bool = True,
        cache: bool = True,
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
        #: read and write traced programs in the disk cache (:mod:`relprop.diskcache`)
        self.cache = bool(cache)
        #: how many of this Graph's traces were read from the disk cache instead of exported
        self.cache_reads = 0
        #: input signature -> the engine's plans of its traces (:func:`~relprop.tracing.find_trace`)
        self._plans: dict[tuple, list[engine.Plan]] = {}
        self._last: engine.Plan | None = None
        #: what rules keep between explains (absLRP's derived weights), shared by all traces
        self.rule_cache = RuleCache()
        #: how many times the model was traced (one per new input signature); an export
        #: shared with another Graph of the same model (tracing.trace_program) counts too
        self.trace_count = 0

    # -- tracing ---------------------------------------------------------------------------

    def _plan(self, args: tuple, kwargs: dict) -> engine.Plan:
        """The plan of this input signature: traced, bound and planned on first sight."""
        key = signature_of(self.model, args, kwargs)
        plan = find_trace(self._plans, key, args, kwargs)
        if plan is None:
            program = trace_program(self.model, args, kwargs, disk=self.cache)
            self.trace_count += 1
            self.cache_reads += program.read
            bound = self._bind(program, args, kwargs)
            self.rule_cache.parameter_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            plan = engine.plan(bound, self.rule_cache)
            self._plans.setdefault(key, []).append(plan)
        self._last = plan
        return plan

    def _bind(self, program: Program, args: tuple, kwargs: dict) -> Bound:
        """Bind the rules.  On export's own graph an op without a rule sends the binding to the
        decomposed graph (the decomposition may write it out in ops that have rules)."""
        program = program.with_opaque(registered_ops(self.overrides))
        bound = bind(program, self.model, self.rules, self.overrides, strict=False)
        if bound.unbound and not program.decomposed:
            program = trace_program(self.model, args, kwargs, decompose=True, disk=self.cache)
            program = program.with_opaque(registered_ops(self.overrides))
            bound = bind(program, self.model, self.rules, self.overrides, strict=False)
        if bound.unbound and self.strict:
            bind(program, self.model, self.rules, self.overrides, strict=True)  # raises MissingRuleError
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
        """Explain the model's output on ``inputs`` for ``target``: the relevance of the inputs.

        Token ids get the relevance of their word-embedding lookup summed over the
        hidden dimension, shaped (batch, tokens), exactly 0 where a given
        ``attention_mask`` is 0; position and token-type embeddings are reported
        separately, in :meth:`explanation`'s ``embeddings`` (see :class:`Explanation`).
        For a decoder language model pass a target that selects one logit, e.g.
        ``relprop.targets.next_token(token_id)``; a model whose forward takes
        ``use_cache`` (Hugging Face causal LMs) is traced with ``use_cache=False``
        without changing the model or its config (an explicit ``use_cache=True`` too,
        with a warning: the key/value cache is not an output relprop explains).

        With ``batch_size`` every tensor input is split along dim 0, and so is a per-sample
        target (a sequence or tensor of class indices, a float target tensor, ``next_token``
        with per-sample ids or an attention mask).  All chunks share one trace (the batch is
        dynamic); a model whose forward fixes its batch size is traced once per chunk size,
        i.e. for ``batch_size`` and for the smaller last chunk.

        Args:
            inputs: what the model's forward takes: a tensor, a tuple of positional
                arguments, or a dict of keyword arguments (Hugging Face encodings:
                ``dict(enc)``).
            target: what to explain: None (each sample's predicted class), a class index,
                one index per sample (sequence or tensor), a float tensor shaped like the
                output (the start relevance itself), a callable ``out -> scores`` selecting
                one score per sample, or a target object such as
                [`next_token`][relprop.targets.next_token] or
                [`region`][relprop.targets.region].
            contrastive: override the rule set's contrastive explanation (absLRP's target
                pass against the other classes); None keeps the rule set's choice.
            batch_size: explain at most this many samples at a time and concatenate (the
                result is the same; memory is bounded by the chunk).

        Returns:
            The relevance: a tensor shaped like a tensor input (or (batch, tokens) for token
            ids); a tuple for tuple inputs (None where an input received none); for dict
            inputs the relevance of ``input_ids`` if it received some, else of the first
            entry that did (all of them are in [`explanation`][relprop.Graph.explanation]'s
            ``inputs``).

        Raises:
            InputError: the inputs cannot be explained (not tensors, wrong dtype, token ids
                outside the vocabulary, non-finite outputs) or ``batch_size`` is not a
                positive integer.
            TargetError: the target does not fit the output, or a callable target cannot be
                split into chunks.
            TraceError: ``torch.export`` cannot capture the model.
            MissingRuleError: in strict mode, an op on the relevance path has no rule.
            NonFiniteRelevanceError: relevance became NaN or infinite at a node.
        """
        return self.explanation(inputs, target, contrastive=contrastive, batch_size=batch_size).relevance

    def explanation(
        self,
        inputs: Any,
        target: Any = None,
        *,
        contrastive: bool | None = None,
        record: bool | Iterable[str] = False,
        batch_size: int | None = None,
    ) -> Explanation:
        """Explain like [`explain`][relprop.Graph.explain], returning every detail of the walk.

        With ``batch_size``, every field is the concatenation over the chunks and equal
        to one explain of the whole batch, up to rounding.  One exception: an entry of
        ``embeddings`` shared by the whole batch ((1, tokens), position ids) is the sum
        over the chunks; absLRP normalizes such a lookup over all the samples that share
        it, so there it depends on the chunking (conservative rule sets give the same
        sum).

        Args:
            inputs: as for [`explain`][relprop.Graph.explain].
            target: as for [`explain`][relprop.Graph.explain].
            contrastive: as for [`explain`][relprop.Graph.explain].
            record: True keeps every node's relevance in ``records`` and
                ``node_relevance``; a set of node names (as [`summary`][relprop.Graph.summary]
                prints them) keeps only those nodes', which keeps the memory of one explain.
            batch_size: as for [`explain`][relprop.Graph.explain]; cannot be combined with
                ``record``.

        Returns:
            The [`Explanation`][relprop.Explanation]: the relevance as ``explain`` returns
            it, every input's, both passes, the output, the embeddings' and the records.

        Raises:
            InputError: as for ``explain``; also ``record`` with chunking, or a recorded
                name that is not a node of the graph.
            TargetError: as for ``explain``.
            TraceError: as for ``explain``.
            MissingRuleError: as for ``explain``.
            NonFiniteRelevanceError: as for ``explain``.
        """
        record = record_names(record)
        args, kwargs = normalize_inputs(inputs)
        labels = check_inputs(self.model, args, kwargs)
        if batch_size is not None:
            size = chunking.check_batch_size(batch_size)
            total = batch_of(pytree.tree_leaves((args, kwargs)))
            if total > size:
                if record:
                    raise InputError(
                        "record cannot be combined with batch_size: the recorded per-node "
                        "relevances are kept per walk and are not all batch-first; explain a batch "
                        f"of at most {size} samples with record instead"
                    )
                parts, shared = [], set()
                for rows, c_args, c_kwargs, c_target in chunking.chunks(args, kwargs, target, size, total):
                    parts.append(self._run(c_args, c_kwargs, c_target, contrastive, False))
                    shared |= chunking.shared_lookups(self._last.bound, parts[-1][0], rows)
                return assemble(inputs, labels, *chunking.concatenate(parts, shared, total))
        return assemble(inputs, labels, *self._run(args, kwargs, target, contrastive, record))

    def _run(
        self, args: tuple, kwargs: dict, target: Any, contrastive: bool | None, record: bool | frozenset[str]
    ) -> tuple[engine.Walk, targets.Start, Any]:
        """Trace if needed, run the forward and the walk on validated inputs."""
        use_contrastive = self.rules.contrastive if contrastive is None else bool(contrastive)
        # rules differentiate locally: leave inference mode, and copy inference tensors
        with torch.inference_mode(False), eval_mode(self.model):
            args, kwargs = normal_tensors((args, kwargs))
            plan = self._plan(args, kwargs)
            program = plan.bound.program
            if not isinstance(record, bool):
                check_recorded(record, plan.bound)
            flat = flatten_like(args, kwargs, program.in_spec)
            batch = batch_of(flat)
            check_token_ids(plan.bound, self.model, flat)
            env = engine.forward(plan, self.model, flat)
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
            walk = engine.backward(plan, env, start.relevance, batch, record=record)
        return walk, start, out_obj

    # -- inspection ------------------------------------------------------------------------

    def summary(self, inputs: Any = None) -> str:
        """Describe the traced graph: one line per node with its op, module, category and rule.

        Args:
            inputs: an example input to trace first (as for ``explain``); None uses the
                last traced input signature.

        Returns:
            The table as text, one line per graph node: op, module path and class,
            category, bound rule (and why).

        Raises:
            InputError: nothing was traced yet and no ``inputs`` were given, or the inputs
                cannot be explained.
            TraceError: ``torch.export`` cannot capture the model.
        """
        if inputs is not None:
            args, kwargs = normalize_inputs(inputs)
            check_inputs(self.model, args, kwargs)
            with eval_mode(self.model):
                self._plan(args, kwargs)
        if self._last is None:
            raise InputError("nothing traced yet: call explain(x, target) first, or summary(x) with an example input")
        return format_summary(self._last.bound, self.rules)

    @property
    def bindings(self) -> list[Binding]:
        """The bound nodes of the last traced signature: node, category, rule, why."""
        if self._last is None:
            raise InputError("nothing traced yet: call explain(x, target) or summary(x) first")
        return list(self._last.bound.bindings.values())

    def __repr__(self) -> str:
        cache = "" if self.cache else ", cache=False"
        return f"relprop.Graph({type(self.model).__name__}, rules={self.rules!r}, strict={self.strict}{cache})"


def trace(
    model: nn.Module,
    rules: RuleSet | None = None,
    *,
    overrides: Mapping[OverrideKey, Any] | None = None,
    strict: bool = True,
    cache: bool = True,
) -> Graph:
    """Prepare ``model`` for relevance propagation.

    Tracing itself happens on the first [`Graph.explain`][relprop.Graph.explain]; prompts
    of any length and batches of any size share one trace where the model allows.  The
    disk cache, ``$RELPROP_CACHE_DIR`` (default ``~/.cache/relprop``), lets another
    process explaining the same model read the traced program instead of exporting it
    again; it is keyed by the model's code, structure and configuration, the input
    signature and the library versions, and parameter values are never written.

    Args:
        model: the model; explained in eval mode, and left as it was.
        rules: a rule set from [`relprop.rules`][relprop.rules] (an instance, or a class
            that takes no arguments); default [`AbsLRP`][relprop.rules.AbsLRP].
        overrides: ``{key: rule}`` with keys a module-name glob, an ``nn.Module``
            subclass, or an ATen op; precedence name > class > op > rule set.
        strict: raise on ops no rule covers (default), or pass relevance through them by
            their gradient and list them in [`Graph.summary`][relprop.Graph.summary].
        cache: read and write traced programs in the disk cache; False does neither.

    Returns:
        The [`Graph`][relprop.Graph] to explain with.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        RuleError: ``rules`` is not a rule set.
    """
    return Graph(model, rules, overrides, strict, cache)
