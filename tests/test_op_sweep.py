"""Every differentiable operator of PyTorch's ``op_db`` as a one-op model, explained strictly.

Issue 12, point 2.  Per OpInfo with ``supports_autograd``: its first float32 sample (the
first whose input is a non-empty floating tensor and whose output holds a non-empty floating
tensor) becomes ``x -> op(x[0], *args, **kwargs)``'s first floating output ``.reshape(1, -1)``,
``x`` the sample input with a batch dimension of one and the sample's other tensors buffers
(constants to export).  The model is exported once (shared by the rule sets: relprop caches
exports per model) and explained in strict mode with target 0 by :class:`AbsLRP` (contrastive
where the output has more than one value), :class:`Epsilon` and ``EpsilonPlusFlat``.

Each op is then *explained* (finite relevance shaped like ``x``), or *refused*: a
:class:`relprop.RelpropError` with a documented reason (complex numbers, random numbers, no
input that can receive relevance, relevance into computed weights), or it *crashes* (any
other exception, or a refusal without a documented reason): a failure.  Ops whose model does
not export, or whose sample has no floating input or output, are counted apart, not in the
denominator.  At least 90 % must be explained by each rule set.

``python -m pytest -q -s tests/test_op_sweep.py`` prints one summary line per rule set;
``RELPROP_SWEEP_REPORT=path.json`` also writes the outcome of every op.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

import relprop
from relprop import rules
from relprop.tracing import trace_program

pytest.importorskip("expecttest")  # op_db's module imports it

pytestmark = pytest.mark.slow

RULE_SETS: dict[str, Callable[[], rules.RuleSet]] = {
    "AbsLRP": rules.AbsLRP,
    "Epsilon": rules.Epsilon,
    "EpsilonPlusFlat": rules.EpsilonPlusFlat,
}
#: the reasons a refusal may give (docs/semantics.md §Binding and overrides), by a pattern
#: of its message
REASONS = {
    "complex": re.compile(r"complex numbers"),
    "random": re.compile(r"draws random numbers"),
    "no relevance path": re.compile(r"no input of the model can receive relevance"),
    "computed weights": re.compile(r"relevance would flow into its weights"),
    "custom operator": re.compile(r"custom operator|not an ATen operator"),
    "integer-valued": re.compile(r"integer values|integer-valued"),
}
#: how many samples of an op to look at for one that fits
MAX_SAMPLES = 20
MIN_EXPLAINED = 0.90


class OneOp(nn.Module):
    """``x -> op(x[0], *args, **kwargs)``'s output ``out_index`` reshaped to (1, -1)."""

    def __init__(self, op: Callable, sample: Any, out_index: int) -> None:
        super().__init__()
        self.op = op
        leaves, self.spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
        self.where = next(i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor))
        self.plain: dict[int, Any] = {}
        for i, leaf in enumerate(leaves):
            if i == self.where:
                continue
            if isinstance(leaf, torch.Tensor):
                self.register_buffer(f"c{i}", leaf.detach().clone())
            else:
                self.plain[i] = leaf
        self.n = len(leaves)
        self.out_index = out_index
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaves = [
            x[0] if i == self.where else self.plain[i] if i in self.plain else getattr(self, f"c{i}")
            for i in range(self.n)
        ]
        inp, args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        out = pytree.tree_leaves(self.op(inp, *args, **kwargs))[self.out_index]
        return out.reshape(1, -1)


@dataclass
class Sweep:
    """The outcome of every op: skipped (why), or per rule set explained / refused / crashed."""

    skipped: dict[str, str] = field(default_factory=dict)
    explained: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, dict[str, str]] = field(default_factory=dict)  # set -> op -> reason
    crashed: dict[str, dict[str, str]] = field(default_factory=dict)  # set -> op -> error

    def total(self, name: str) -> int:
        return len(self.explained[name]) + len(self.refused[name]) + len(self.crashed[name])

    def skips(self) -> str:
        reasons = Counter(self.skipped.values())
        return "not counted: " + ", ".join(f"{r} {k}" for r, k in sorted(reasons.items(), key=lambda rk: -rk[1]))

    def line(self, name: str) -> str:
        n, m = len(self.explained[name]), self.total(name)
        reasons = Counter(self.refused[name].values())
        by = ", ".join(f"{r} {k}" for r, k in sorted(reasons.items(), key=lambda rk: -rk[1])) or "none"
        line = (
            f"{name}: explained {n} of {m} ({100 * n / max(m, 1):.1f} %), "
            f"documented refusals {len(self.refused[name])}, by reason: {by}"
        )
        if self.crashed[name]:
            line += f"; CRASHED {len(self.crashed[name])}: {', '.join(sorted(self.crashed[name]))}"
        return line


def _op_id(op: Any) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def _tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _floating(x: Any) -> bool:
    return _tensor(x) and x.layout == torch.strided and x.is_floating_point() and x.numel() > 0


def _first_fit(op: Any) -> tuple[Any, int] | str:
    """The op's first sample with a non-empty float input and output, and the output's index
    among the output's leaves; else why there is none."""
    why = "no sample"
    try:
        samples: Iterator[Any] = iter(op.sample_inputs("cpu", torch.float32, requires_grad=False))
        for _, sample in zip(range(MAX_SAMPLES), samples):
            leaves = pytree.tree_leaves(sample.input)
            tensors = [t for t in pytree.tree_leaves((sample.input, sample.args, sample.kwargs)) if _tensor(t)]
            if any(t.layout != torch.strided for t in tensors):
                why = "sparse input"
                continue
            if not leaves or not _floating(leaves[0]):
                why = "no float input"
                continue
            if not bool(leaves[0].isfinite().all()):
                why = "no finite input"
                continue
            with torch.no_grad():
                out = op.op(sample.input, *sample.args, **sample.kwargs)
            index = next((i for i, o in enumerate(pytree.tree_leaves(out)) if _floating(o)), None)
            if index is None:
                why = "no float output"
                continue
            if not bool(pytree.tree_leaves(out)[index].isfinite().all()):
                why = "no finite output"
                continue
            return sample, index
    except Exception as err:  # noqa: BLE001 - the sample or the eager op fails: not relprop's
        return f"eager failure ({type(err).__name__})"
    return why


def _reason(err: Exception, op_names: list[str]) -> str | None:
    """The documented reason of a refusal, or None where the message gives none."""
    text = str(err)
    for reason, pattern in REASONS.items():
        if pattern.search(text):
            if isinstance(err, relprop.MissingRuleError) and not any(n in text for n in op_names):
                return None  # a refusal must name the op
            return reason
    return None


def _aten_ops(model: nn.Module, x: torch.Tensor) -> list[str]:
    program = trace_program(model, (x,), {})
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


def _explain(name: str, model: nn.Module, x: torch.Tensor, values: int) -> torch.Tensor:
    graph = relprop.trace(model, RULE_SETS[name](), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return graph.explain(x, 0, contrastive=None if values > 1 else False)


def run_sweep(ops: list[Any]) -> Sweep:
    sweep = Sweep()
    for name in RULE_SETS:
        sweep.explained[name], sweep.refused[name], sweep.crashed[name] = [], {}, {}
    for op in ops:
        key = _op_id(op)
        fit = _first_fit(op)
        if isinstance(fit, str):
            sweep.skipped[key] = fit
            continue
        sample, index = fit
        model = OneOp(op.op, sample, index)
        x = pytree.tree_leaves(sample.input)[0].detach().clone().unsqueeze(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                names = _aten_ops(model, x)
                values = model(x).numel()
        except relprop.RelpropError:
            sweep.skipped[key] = "does not export"
            continue
        for name in RULE_SETS:
            _classify(sweep, name, key, names, model, x, values)
    return sweep


def _classify(
    sweep: Sweep, name: str, key: str, names: list[str], model: nn.Module, x: torch.Tensor, values: int
) -> None:
    try:
        R = _explain(name, model, x, values)
    except relprop.RelpropError as err:
        reason = _reason(err, names)
        if reason is None:
            sweep.crashed[name][key] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        else:
            sweep.refused[name][key] = reason
        return
    except Exception as err:  # noqa: BLE001 - the test reports it
        sweep.crashed[name][key] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        return
    if not isinstance(R, torch.Tensor) or R.shape != x.shape:
        sweep.crashed[name][key] = f"relevance shaped {getattr(R, 'shape', type(R))}, input {tuple(x.shape)}"
    elif not bool(torch.isfinite(R).all()):
        sweep.crashed[name][key] = "relevance not finite"
    else:
        sweep.explained[name].append(key)


def _selected_ops() -> list[Any]:
    from torch.testing._internal.common_methods_invocations import op_db

    only = os.environ.get("RELPROP_SWEEP_ONLY")
    chosen = [op for op in op_db if op.supports_autograd]
    if only:
        wanted = set(only.split(","))
        chosen = [op for op in chosen if op.name in wanted or _op_id(op) in wanted]
    return chosen


@pytest.fixture(scope="module")
def sweep(one_thread: None) -> Sweep:
    result = run_sweep(_selected_ops())
    print("\n" + result.skips())
    path = os.environ.get("RELPROP_SWEEP_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(vars(result), f, indent=1, sort_keys=True)
    return result


@pytest.mark.parametrize("name", list(RULE_SETS))
def test_op_db_sweep(sweep: Sweep, name: str) -> None:
    print("\n" + sweep.line(name))
    assert not sweep.crashed[name], sweep.line(name) + "\n" + json.dumps(sweep.crashed[name], indent=1)
    total = sweep.total(name)
    assert total > 0
    assert len(sweep.explained[name]) >= math.ceil(MIN_EXPLAINED * total), sweep.line(name)
