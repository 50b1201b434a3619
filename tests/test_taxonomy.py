"""The op taxonomy on named ops (issue 12, point 3) and the Taylor rule's closed forms.

Each named op sits in a tiny float64 model, ``x -> Linear (no bias) -> op -> Linear (no
bias)``, and is explained in strict mode by AbsLRP, Epsilon, EpsilonPlusFlat and AttnLRP:
relevance shaped like the input and finite; for the classic sets conservative, relevance
over the input summing to the explained logit (computed by the model itself) within 1e-6
relative (ε = 1e-10 so that the stabiliser absorbs nothing measurable); and the op's line
of ``graph.summary()`` names its expected category.  Plus the ops the op_db sweep
(``tests/test_op_sweep.py``) found miscategorised: scatter and index reductions by their
``reduce``, a weighted op with only its bias live, an embedding table that is itself live,
and roots and variances that normalize nothing.

:class:`~relprop.rules.taylor.TaylorRule` against its closed form on inputs small enough to
work out by hand: maximum routes relevance to the larger operand, a product of two relevant
factors gives each half, a linear op gets the ε-rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.rules import taylor
from relprop.rules.taylor import TaylorRule

DT = torch.float64
EPS = 1e-10


def _idx(*values: int) -> Tensor:
    return torch.tensor(values)


# (id, shape of the op's input without the batch, op, ATen op in the graph, its category)
CASES: list[tuple[str, tuple[int, ...], Callable[[Tensor], Tensor], str, str]] = [
    # scatters: the output's entries are copies of the input's (move), or sums of them (linear)
    (
        "slice_scatter",
        (2, 4),
        lambda h: torch.slice_scatter(h, h[:, :, 2:4], dim=2, start=0, end=2),
        "aten.slice_scatter",
        "move",
    ),
    (
        "select_scatter",
        (3, 4),
        lambda h: torch.select_scatter(h, h[:, 0], dim=1, index=1),
        "aten.select_scatter",
        "move",
    ),
    (
        "diagonal_scatter",
        (4, 4),
        lambda h: torch.diagonal_scatter(h, h[:, 0], dim1=1, dim2=2),
        "aten.diagonal_scatter",
        "move",
    ),
    (
        "scatter",
        (1, 4),
        lambda h: torch.scatter(h, 2, _idx(1, 0, 3, 2).view(1, 1, 4), h.flip(-1)),
        "aten.scatter",
        "move",
    ),
    (
        "scatter_add",
        (1, 4),
        lambda h: torch.scatter_add(h, 2, _idx(1, 0, 1, 2).view(1, 1, 4), h.flip(-1)),
        "aten.scatter_add",
        "linear",
    ),
    (
        "scatter_reduce_sum",
        (1, 4),
        lambda h: torch.scatter_reduce(h, 2, _idx(1, 0, 1, 2).view(1, 1, 4), h.flip(-1), "sum"),
        "aten.scatter_reduce",
        "linear",
    ),
    (
        "scatter_reduce_amax",
        (1, 4),
        lambda h: torch.scatter_reduce(h, 2, _idx(1, 0, 1, 2).view(1, 1, 4), h.flip(-1), "amax"),
        "aten.scatter_reduce",
        "selection",
    ),
    (
        "scatter_reduce_prod",
        (1, 4),
        lambda h: torch.scatter_reduce(h, 2, _idx(1, 0, 1, 2).view(1, 1, 4), h.flip(-1), "prod"),
        "aten.scatter_reduce",
        "generic",
    ),
    ("index_add", (3, 4), lambda h: torch.index_add(h, 1, _idx(2, 0), h[:, :2]), "aten.index_add", "linear"),
    ("index_copy", (3, 4), lambda h: torch.index_copy(h, 1, _idx(2, 0), h[:, 1:]), "aten.index_copy", "move"),
    (
        "index_reduce_mean",
        (3, 4),
        lambda h: torch.index_reduce(h, 1, _idx(2, 0), h[:, 1:], "mean"),
        "aten.index_reduce",
        "linear",
    ),
    (
        "index_reduce_amin",
        (3, 4),
        lambda h: torch.index_reduce(h, 1, _idx(2, 0), h[:, 1:], "amin"),
        "aten.index_reduce",
        "selection",
    ),
    (
        "masked_scatter",
        (2, 3),
        lambda h: torch.masked_scatter(h, torch.tensor([[True, False, True]]), h.flip(-1)),
        "aten.masked_scatter",
        "move",
    ),
    (
        "index_put",
        (3, 4),
        lambda h: torch.index_put(h, (_idx(0), _idx(2)), h[0, 0]),
        "aten.index_put",
        "move",
    ),
    (
        "index_put_accumulate",
        (3, 4),
        lambda h: torch.index_put(h, (_idx(0), _idx(2)), h[0, 0], accumulate=True),
        "aten.index_put",
        "linear",
    ),
    # a gated linear unit: a product, neither linear nor pointwise (it splits its input)
    ("glu", (8,), lambda h: F.glu(h, -1), "aten.glu", "generic"),
    # interpolation: nearest copies entries (move), the others are linear in the input
    (
        "nearest1d",
        (2, 3),
        lambda h: F.interpolate(h, scale_factor=2, mode="nearest"),
        "aten.upsample_nearest1d",
        "move",
    ),
    (
        "nearest2d",
        (2, 3, 3),
        lambda h: F.interpolate(h, scale_factor=2, mode="nearest"),
        "aten.upsample_nearest2d",
        "move",
    ),
    (
        "nearest3d",
        (1, 2, 2, 2),
        lambda h: F.interpolate(h, scale_factor=2, mode="nearest"),
        "aten.upsample_nearest3d",
        "move",
    ),
    ("linear1d", (2, 3), lambda h: F.interpolate(h, scale_factor=2, mode="linear"), "aten.upsample_linear1d", "linear"),
    (
        "bilinear2d",
        (2, 3, 3),
        lambda h: F.interpolate(h, scale_factor=2, mode="bilinear"),
        "aten.upsample_bilinear2d",
        "linear",
    ),
    (
        "bicubic2d",
        (2, 3, 3),
        lambda h: F.interpolate(h, scale_factor=2, mode="bicubic"),
        "aten.upsample_bicubic2d",
        "linear",
    ),
    (
        "trilinear3d",
        (1, 2, 2, 2),
        lambda h: F.interpolate(h, scale_factor=2, mode="trilinear"),
        "aten.upsample_trilinear3d",
        "linear",
    ),
    ("pixel_shuffle", (4, 2, 2), lambda h: F.pixel_shuffle(h, 2), "aten.pixel_shuffle", "move"),
    ("pixel_unshuffle", (1, 4, 4), lambda h: F.pixel_unshuffle(h, 2), "aten.pixel_unshuffle", "move"),
    ("logsumexp", (3, 4), lambda h: torch.logsumexp(h, -1), "aten.logsumexp", "logsumexp"),
    ("log_softmax", (3, 4), lambda h: F.log_softmax(h, -1), "aten.log_softmax", "logsumexp"),
    ("cumsum", (3, 4), lambda h: torch.cumsum(h, -1), "aten.cumsum", "linear"),
    # products of vectors: with a constant operand linear, of two relevant ones a matmul
    (
        "matmul_vectors",
        (4,),
        lambda h: torch.matmul(h[0], torch.arange(1.0, 5.0, dtype=DT)).reshape(1, 1),
        "aten.matmul",
        "linear",
    ),
    ("dot", (4,), lambda h: torch.dot(torch.arange(1.0, 5.0, dtype=DT), h[0]).reshape(1, 1), "aten.dot", "linear"),
    ("dot_relevant", (4,), lambda h: torch.dot(h[0], h[0].flip(0)).reshape(1, 1), "aten.dot", "matmul"),
    ("mv", (4,), lambda h: torch.mv(torch.ones(3, 4, dtype=DT), h[0]).reshape(1, -1), "aten.mv", "linear"),
    ("matmul_relevant", (4,), lambda h: torch.matmul(h[0], h[0].flip(0)).reshape(1, 1), "aten.matmul", "matmul"),
    # a weighted op whose bias alone is live adds a constant to it; a table gathered from
    # is moved, not looked up
    (
        "addmm_bias",
        (3, 4),
        lambda h: torch.addmm(h[0], torch.ones(3, 2, dtype=DT), torch.full((2, 4), 0.5, dtype=DT)),
        "aten.addmm",
        "linear",
    ),
    ("embedding_table", (5, 3), lambda h: F.embedding(_idx(4, 0, 2), h[0]), "aten.embedding", "move"),
    # statistics that normalize nothing compute: features (statistics pooling), outputs
    ("std_feature", (3, 4), lambda h: torch.cat([h.mean(-1), h.std(-1)], -1), "aten.std", "generic"),
    ("sqrt_feature", (4,), lambda h: (h * h).sqrt(), "aten.sqrt", "activation"),
    # a normalization statistic carries none: RMSNorm written out scales by it
    (
        "rms_norm_written_out",
        (4,),
        lambda h: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6),
        "aten.mul",
        "rescale",
    ),
]
IDS = [c[0] for c in CASES]


class Tiny(nn.Module):
    """``x (1, 6) -> Linear -> reshape (1, *shape) -> op -> flatten -> Linear -> (1, 3)``, no biases."""

    def __init__(self, shape: tuple[int, ...], fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.shape, self.fn = shape, fn
        self.pre = nn.Linear(6, math.prod(shape), bias=False, dtype=DT)
        width = fn(torch.zeros(1, *shape, dtype=DT)).numel()
        self.head = nn.Linear(width, 3, bias=False, dtype=DT)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pre(x).reshape(x.shape[0], *self.shape)
        return self.head(self.fn(h).reshape(x.shape[0], -1))


@cache
def _model(case: str) -> Tiny:
    """One model per case, shared by the rule sets (and so is its export)."""
    _, shape, fn, _, _ = CASES[IDS.index(case)]
    torch.manual_seed(IDS.index(case))
    return Tiny(shape, fn).eval()


def _input(case: str) -> Tensor:
    return torch.randn(1, 6, dtype=DT, generator=torch.Generator().manual_seed(100 + IDS.index(case)))


RULE_SETS: dict[str, Callable[[], rules.RuleSet]] = {
    "AbsLRP": rules.AbsLRP,
    "Epsilon": lambda: rules.Epsilon(EPS),
    "EpsilonPlusFlat": lambda: rules.EpsilonPlusFlat(EPS),
    "AttnLRP": lambda: rules.AttnLRP(EPS),
}
CONSERVATIVE = {"Epsilon", "EpsilonPlusFlat", "AttnLRP"}
#: cases that add a constant (its share of the relevance is absorbed, as the ε-rule prescribes)
WITH_CONSTANTS = {"addmm_bias"}


@pytest.mark.parametrize("case", IDS)
def test_named_op_category(case: str, one_thread: None) -> None:
    _, _, _, op, category = CASES[IDS.index(case)]
    graph = relprop.trace(_model(case), rules.AbsLRP(), strict=True)
    lines = [line for line in graph.summary(_input(case)).splitlines() if f" {op}." in f" {line}"]
    assert lines, f"{op} is not on the relevance path:\n{graph.summary()}"
    for line in lines:
        assert f" {category} " in line, f"{op}: expected category {category!r}:\n{line}"
    assert {str(b.info.category) for b in graph.bindings if str(b.info.node.target).startswith(op + ".")} == {category}


@pytest.mark.parametrize("name", list(RULE_SETS))
@pytest.mark.parametrize("case", IDS)
def test_named_op_explains(case: str, name: str, one_thread: None) -> None:
    model, x = _model(case), _input(case)
    R = relprop.trace(model, RULE_SETS[name](), strict=True).explain(x, 0)
    assert R.shape == x.shape
    assert torch.isfinite(R).all()
    if name in CONSERVATIVE and case not in WITH_CONSTANTS:
        with torch.no_grad():
            logit = float(model(x)[0, 0])
        assert float(R.sum()) == pytest.approx(logit, rel=1e-6, abs=1e-12)


# -- the Taylor rule's closed forms ---------------------------------------------------------------


class Fn(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def _relevance(fn: Callable[[Tensor], Tensor], x: list[float], R: list[float], **overrides: rules.Rule) -> Tensor:
    """Relevance of ``x`` (one sample) for the output relevance ``R`` (used as given), classic ε."""
    graph = relprop.trace(Fn(fn), rules.Epsilon(1e-12), overrides=overrides, strict=True)
    return graph.explain(torch.tensor([x], dtype=DT), torch.tensor([R], dtype=DT))[0]


def test_taylor_maximum_routes_to_the_larger() -> None:
    model = Fn(lambda x: torch.maximum(x[:, :2], x[:, 2:]))
    graph = relprop.trace(model, rules.Epsilon(1e-12), strict=True)
    x = torch.tensor([[3.0, -1.0, 1.0, 2.0]], dtype=DT)  # max(3, 1) = 3, max(-1, 2) = 2
    R = graph.explain(x, torch.tensor([[1.0, 5.0]], dtype=DT))[0]
    (maximum,) = [b for b in graph.bindings if "maximum" in str(b.info.node.target)]
    assert str(maximum.info.category) == "pointwise" and isinstance(maximum.rule, TaylorRule)
    torch.testing.assert_close(R, torch.tensor([1.0, 0.0, 0.0, 5.0], dtype=DT))


def test_taylor_product_halves() -> None:
    # x_a ⊙ x_b: Σ_j J_j x_j = 2 a b, so each factor gets a b · R / (2 a b) = R / 2
    R = _relevance(lambda x: x[:, :2] * x[:, 2:], [2.0, -3.0, 0.5, 4.0], [1.0, 6.0], **{"aten.mul": TaylorRule(1e-12)})
    torch.testing.assert_close(R, torch.tensor([0.5, 3.0, 0.5, 3.0], dtype=DT))


def test_taylor_product_with_a_constant_is_whole() -> None:
    # a ⊙ c with c constant: Σ_j J_j x_j = c a = y, the relevant factor gets all of R
    c = torch.tensor([[2.0, -0.5]], dtype=DT)
    R = _relevance(lambda x: x * c, [1.5, 4.0], [2.0, -1.0], **{"aten.mul": TaylorRule(1e-12)})
    torch.testing.assert_close(R, torch.tensor([2.0, -1.0], dtype=DT))


def test_taylor_of_a_linear_op_is_the_epsilon_rule() -> None:
    # cumsum: y_j = Σ_{i≤j} x_i, so R_i = x_i Σ_{j≥i} R_j / y_j (ε = 1e-12: negligible here)
    x, R_out = [1.0, 2.0, -4.0, 0.5], [1.0, -2.0, 3.0, 0.5]
    y = [1.0, 3.0, -1.0, -0.5]
    expected = torch.tensor([x[i] * sum(R_out[j] / y[j] for j in range(i, 4)) for i in range(4)], dtype=DT)
    taylor = _relevance(lambda v: torch.cumsum(v, -1), x, R_out, **{"aten.cumsum": TaylorRule(1e-12)})
    epsilon = _relevance(lambda v: torch.cumsum(v, -1), x, R_out)
    torch.testing.assert_close(taylor, expected)
    torch.testing.assert_close(epsilon, expected)


def test_taylor_of_a_dense_layer_is_the_epsilon_rule() -> None:
    layer = nn.Linear(3, 2, bias=False, dtype=DT)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]], dtype=DT))
    x, R_out = [2.0, 1.0, 4.0], [1.0, 2.0]
    W = layer.weight.detach()
    z = W * torch.tensor(x, dtype=DT)  # z_ji = W_ji x_i
    expected = (z / z.sum(1, keepdim=True) * torch.tensor(R_out, dtype=DT)[:, None]).sum(0)
    taylor = _relevance(layer, x, R_out, **{"aten.linear": TaylorRule(1e-12)})
    torch.testing.assert_close(taylor, expected)


def test_taylor_derivative_fallbacks_agree() -> None:
    # Σ_j J_j x_j by forward mode, by double backward and entry by entry: the same numbers
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 3, dtype=DT, generator=g), torch.randn(2, 3, dtype=DT, generator=g)]

    def f(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return a * b.sin(), (a.exp() @ b.T)

    forward = taylor.directional_derivative(f, xs)
    double = taylor._by_double_backward(f, tuple(xs))
    with torch.enable_grad():
        leaves = [x.clone().requires_grad_(True) for x in xs]
        entries = taylor._by_entries(f, tuple(xs), list(f(*leaves)), [None, None])
    for a, b, c in zip(forward, double, entries):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_taylor_derivative_without_forward_formula() -> None:
    # scatter_reduce's product has no forward-mode formula (its tangent is silently absent)
    index = _idx(1, 0, 1, 2)
    a, b = torch.tensor([1.5, -2.0, 0.5, 3.0], dtype=DT), torch.tensor([2.0, 0.25, -1.0, 4.0], dtype=DT)

    def f(u: Tensor, v: Tensor) -> Tensor:
        return torch.scatter_reduce(u, 0, index, v, "prod")

    (jx,) = taylor.directional_derivative(f, [a, b])
    h = 1e-6
    expected = (f(a * (1 + h), b * (1 + h)) - f(a * (1 - h), b * (1 - h))) / (2 * h)
    torch.testing.assert_close(jx, expected)
