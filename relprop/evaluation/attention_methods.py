"""Attention-based attribution methods for Vision Transformers, read off the traced graph.

The absLRP paper (Vukadin et al. 2024, arXiv 2412.09311, Tables 5-6) compares absLRP on
ViTs with three methods built from the attention probabilities.  Each is a
:data:`relprop.metrics.Method` ``method(model, x, target) -> map shaped like x``::

    method = attention_method("TIBAV")
    R = method(vit, x, target)                 # (N, C, H, W), the patch map over channels

* ``Rollout`` (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
  §3): per block the attention probabilities averaged over heads, A, with the residual
  connection added, Ā = 0.5·A + 0.5·I (their Eq.; rows of A sum to 1, so this is also
  (A + I) with rows renormalised, as the Transformer-Explainability code writes it);
  C = Ā_B · … · Ā_2 · Ā_1 (the recursion Ã(l_i) = Ā(l_i) Ã(l_{i-1}): later blocks on the
  left, so row 0 of C is how the output's class token draws on the input tokens).
* ``LLAttention``: the last block's attention, heads averaged, row 0 (the class token).
* ``TIBAV`` (Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention
  Visualization", CVPR 2021, Eqs. 13-14): per block Ā = I + E_h[(∇A ⊙ R_A)⁺], with ∇A the
  gradient of the target logit with respect to the probabilities A (the total derivative,
  through every later block) and R_A the LRP relevance at A; C multiplies the blocks as
  Rollout does (the authors' code, ``compute_rollout_attention``: ``joint = Ā_b · joint``;
  their Eq. 13 writes the product as Ā¹·…·Āᴮ), rows not renormalised.

All three take row 0 of C without its own column (the class token's attention to the
patches), reshape it to the patch grid (h, w), upsample it bilinearly to the image
(``align_corners=False``, as the authors' ``interpolate(scale_factor=16, mode="bilinear")``)
and repeat it over the channels.  The maps are not normalised.

**R_A** (TIBAV): relprop's walk with :func:`tibav_rules`, ``AttnLRP(ε = 1e-6)`` with LRP-α1β0
on linear layers (and layer norms' linear maps), started from the one-hot target (1 at the
target logit, as the authors' ``generate_LRP``).  It is the relprop rule set closest to
the authors' (``modules/layers_ours.py`` of github.com/hila-chefer/Transformer-Explainability):
α1β0 on linear layers with the bias left out, each factor of both attention products
half of the ε-rule's share, the ε-rule at residual sums.  It departs from theirs in the
softmax (AttnLRP's softmax rule instead of the identity: it changes only what flows on
into queries and keys), layer norm (α1β0 on its linear map with σ held, theirs the
identity) and the residual sums (plain ε-rule; theirs rescales each operand's share to
its |sum|).  From the relevance R_o the walk gives the product o = A·V, R_A is their
rule there: R_A = ½ · A ⊙ ((R_o / stab(o)) Vᵀ), stab(o) = o + ε·sign(o).  The walk records
the relevance of those products only (``graph.explanation(..., record={names})``); TIBAV
explains :data:`TIBAV_BATCH` samples at a time.

**Reading the graph** (no module names or classes): the model is exported as relprop's
other methods export it (:func:`relprop.tracing.trace_program`).  An attention is a
``scaled_dot_product_attention`` node (its probabilities recomputed from its arguments
with :mod:`relprop.rules.attention`: scale, mask, causal, grouped-query heads), or a
softmax whose output, through data movement, is the left operand of a matrix product
(o = A·V).  Every attention must be self-attention over the same N tokens, with the
batch first in its probabilities ((B, heads, N, N) or (B·heads, N, N)), the blocks in
graph order.  **Tokens**: one class token at position 0, then the patches row by row:
N = 1 + h·w, with (h, w) the spatial output of the last convolution before the first
attention (the patch embedding), or, without one, the grid of N − 1 patches with the
image's aspect ratio.  A model with no class token (N = h·w), with more leading tokens
(distillation or register tokens: N > 1 + h·w), with windowed attention or without any
attention is refused with an :class:`~relprop.InputError` that says which.

The model is left as it is (training flags, ``requires_grad``, ``.grad`` and hooks as
before, :func:`relprop.methods._preserved`): the graph is evaluated here, with the
parameters read live and detached; gradients flow from the input only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from ..engine import run_graph
from ..errors import InputError, RelpropError
from ..programs import Program
from ..rules.attention import attention_inputs, repeat_kv
from ..rules.base import stabilize
from ..rules.ops import ATTENTION, CONV, MATMUL, MOVE, SOFTMAX, op_name
from ..targets import main_output_index
from ..tracing import eval_mode, trace_program
from .metrics import Method

__all__ = [
    "ATTENTION_METHODS",
    "EPSILON",
    "TIBAV_BATCH",
    "AttentionGraph",
    "Site",
    "attention_graph",
    "attention_method",
    "attention_unavailable",
    "find_sites",
    "joint_attention",
    "rollout",
    "tibav_rules",
    "token_grid",
]

#: the attention-based methods, in display order
ATTENTION_METHODS = ("Rollout", "LLAttention", "TIBAV")
#: TIBAV's ε: of its rule set (:func:`tibav_rules`) and of the split at o = A·V
EPSILON = 1e-6
#: TIBAV explains at most this many samples at a time (one walk and its gradients per chunk)
TIBAV_BATCH = 8
#: names a module's forward refers to when it computes attention (the screen without an input)
_ATTENTION_NAMES = ("softmax", "scaled_dot_product_attention", "attention_forward", "multi_head_attention")


# ---------------------------------------------------------------- the graph


class Site(NamedTuple):
    """One attention of the graph: the node whose value is the probabilities A (the SDPA
    node itself where they are fused) and the node computing o = A·V."""

    probs: fx.Node
    product: fx.Node
    fused: bool
    tokens: int


class AttentionGraph(NamedTuple):
    """A traced model's attentions, in graph (block) order, and its patch grid (h, w)."""

    program: Program
    sites: list[Site]
    grid: tuple[int, int]


def _shape(node: Any) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, Tensor) else None


def _moved_product(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(operand, product): the matrix product whose left operand is ``node`` up to data movement."""
    frontier = [node]
    while frontier:
        n = frontier.pop()
        for user in n.users:
            name = op_name(user.target)
            if name in MATMUL and user.args and user.args[0] is n and len(user.args) > 1:
                return n, user
            if name in MOVE and user.args and user.args[0] is n:
                frontier.append(user)
    return None


def find_sites(graph: fx.Graph) -> list[Site]:
    """The attentions of an exported graph (see the module docstring), in graph order."""
    sites: list[Site] = []
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if name in ATTENTION:
            q, k = (_shape(a) for a in node.args[:2])
            if q is None or k is None or q[-2] != k[-2]:
                raise InputError(
                    f"attention node '{node.name}' attends from {q and q[-2]} to {k and k[-2]} tokens; "
                    "attention methods need self-attention over one set of tokens"
                )
            sites.append(Site(node, node, True, int(q[-2])))
        elif name in SOFTMAX:
            found = _moved_product(node)
            shape = _shape(found[0]) if found else None
            if found is None or shape is None or len(shape) < 3 or shape[-1] != shape[-2]:
                continue  # a softmax that is not a square attention matrix (a classifier's, ...)
            sites.append(Site(found[0], found[1], False, int(shape[-1])))
    return sites


def token_grid(graph: fx.Graph, sites: Sequence[Site], image: tuple[int, int]) -> tuple[int, int]:
    """The patch grid (h, w) of N = 1 + h·w tokens: the last convolution before the first
    attention, else N − 1 patches in the image's aspect ratio; InputError otherwise."""
    tokens = {s.tokens for s in sites}
    if len(tokens) != 1:
        raise InputError(
            f"the attentions run over different numbers of tokens ({sorted(tokens)}: windowed or "
            "hierarchical attention); attention methods need every block to attend over all tokens"
        )
    (n,) = tokens
    grid = None
    for node in graph.nodes:
        if node is sites[0].probs or node is sites[0].product:
            break
        shape = _shape(node)
        if op_name(node.target) in CONV and shape is not None and len(shape) == 4:
            grid = (int(shape[2]), int(shape[3]))
    if grid is None:
        H, W = image
        grid = next(((h, (n - 1) // h) for h in range(1, n) if (n - 1) % h == 0 and h * W == (n - 1) // h * H), None)
        if grid is None:
            raise InputError(
                f"the attention runs over {n} tokens, which is not one class token and a grid of "
                f"patches in the image's aspect ratio ({H}x{W}), and no convolution gives the patch grid"
            )
    extra = n - grid[0] * grid[1]
    if extra == 0:
        raise InputError(
            f"the attention runs over {n} tokens, exactly the {grid[0]}x{grid[1]} patches: the model has "
            "no class token, and attention methods read the class token's row (position 0)"
        )
    if extra != 1:
        raise InputError(
            f"the attention runs over {n} tokens for {grid[0]}x{grid[1]} patches: {extra} tokens besides "
            "the patches (distillation or register tokens?); attention methods assume exactly one class "
            "token, at position 0"
        )
    return grid


def _check_image(x: Any) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"attention methods take float images shaped (N, C, H, W), got {shape}")


def attention_graph(model: nn.Module, x: Tensor) -> AttentionGraph:
    """Trace ``model`` on ``x`` (cached, shared with relprop's explains) and find its attentions."""
    _check_image(x)
    with torch.inference_mode(False), eval_mode(model):
        program = trace_program(model, (x.detach().clone(),), {})
    sites = find_sites(program.graph)
    if not sites:
        raise InputError(
            "the model has no attention: no scaled_dot_product_attention node and no softmax that "
            "feeds a matrix product in its graph; attention methods need a Vision Transformer"
        )
    return AttentionGraph(program, sites, token_grid(program.graph, sites, tuple(x.shape[-2:])))


def _names(code: Any) -> set[str]:
    """The global and attribute names a function's code refers to, nested code included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


def _mentions_attention(model: nn.Module) -> bool:
    """Whether some module's forward refers to a softmax or an attention function by name."""
    for cls in {type(m) for m in model.modules()}:
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        if code is None:
            return True  # not Python code: cannot tell
        if any(word in name for name in _names(code) for word in _ATTENTION_NAMES):
            return True
    return False


def attention_unavailable(model: nn.Module, x: Tensor | None = None) -> str | None:
    """Why the attention methods cannot run on ``model`` (None: they can).

    With an input ``x`` the answer is exact: the model is traced on it and its attentions
    and patch grid are looked for (:func:`attention_graph`).  Without one it is a screen:
    a model none of whose modules' ``forward`` refers to a softmax or an attention
    function (``scaled_dot_product_attention``, ``multi_head_attention_forward``, ...) has
    no attention; one that passes is checked exactly when a method first runs on it.
    """
    if x is None:
        if _mentions_attention(model):
            return None
        return (
            "the model has no attention (none of its modules calls a softmax or an attention "
            "function); attention methods need a Vision Transformer"
        )
    from .methods import _preserved

    try:
        with _preserved(model, freeze=False):
            attention_graph(model, x)
    except RelpropError as err:
        return str(err)
    return None


# ---------------------------------------------------------------- evaluating it


class _Captured(NamedTuple):
    """At one attention: the probabilities A, o = A·V as a function of A, and o's value."""

    probs: Tensor
    product: Callable[[Tensor], Tensor]
    output: Tensor


def _fused(op: Callable[..., Tensor], args: tuple, kwargs: dict) -> _Captured:
    """scaled_dot_product_attention decomposed: A = softmax(scores), o = A·V, with o laid out in
    memory as the op lays out its output (the graph's views after it rely on those strides)."""
    att = attention_inputs(_Args(args, kwargs))  # type: ignore[arg-type]
    p = torch.softmax(att.scores(), -1)
    p = torch.where(torch.isnan(p), torch.zeros((), dtype=p.dtype, device=p.device), p)  # rows masked out
    values = repeat_kv(att.v, att.groups)
    with torch.no_grad():
        layout = op(*args, **kwargs)
    return _Captured(p, lambda a: a @ values, torch.empty_like(layout).copy_(p @ values))


class _Args(NamedTuple):
    """What :func:`relprop.rules.attention.attention_inputs` reads of a rule's context."""

    positional: tuple
    keywords: dict

    def args(self) -> tuple[tuple, dict]:
        return self.positional, self.keywords


def _last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    last: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        for a in n.all_input_nodes:
            last[a] = n
    drops: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last.items():
        drops.setdefault(user, []).append(value)
    return drops


def run_attention(model: nn.Module, ag: AttentionGraph, x: Tensor, grad: bool) -> tuple[Tensor, list[_Captured]]:
    """Evaluate the traced graph on ``x``: the main output (N, classes) and, per attention,
    what :class:`_Captured` holds.  ``grad``: ``x`` requires grad, so that every A is on the
    autograd graph of the output (parameters are read detached: the model is not touched)."""
    program = ag.program
    product_of = {s.product: s for s in ag.sites}
    captured: dict[fx.Node, _Captured] = {}

    def call(n: fx.Node, args: tuple, kwargs: dict) -> Any:
        site = product_of.get(n)
        if site is not None and site.fused:
            captured[n] = _fused(n.target, args, kwargs)
            return captured[n].output
        out = n.target(*args, **kwargs)
        if site is not None:
            rest, target = args[1:], n.target
            captured[n] = _Captured(args[0], lambda a, r=rest, k=kwargs, f=target: f(a, *r, **k), out)
        return out

    inputs = [x.detach().clone().requires_grad_(grad)]
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        env = run_graph(program, model, inputs, _last_uses(program.graph), call)
    flat = list(pytree.tree_leaves(env[next(n for n in program.graph.nodes if n.op == "output")]))
    main = flat[main_output_index(pytree.tree_unflatten(flat, program.out_spec), flat)]
    if not isinstance(main, Tensor) or main.dim() != 2 or main.shape[0] != x.shape[0]:
        shape = tuple(main.shape) if isinstance(main, Tensor) else type(main).__name__
        raise InputError(
            f"attention methods explain a class score: the model's output must be (N, classes), got {shape}"
        )
    return main, [captured[s.product] for s in ag.sites]


def _heads_mean(a: Tensor, batch: int, tokens: int) -> Tensor:
    """(B, N, N): an attention-shaped tensor ((B, heads, N, N) or (B·heads, N, N)) averaged over heads."""
    if a.dim() < 3 or a.shape[0] % batch:
        raise InputError(
            f"attention probabilities shaped {tuple(a.shape)} do not hold the batch of {batch} first; "
            "attention methods need (B, heads, N, N) or (B·heads, N, N)"
        )
    return a.reshape(batch, -1, tokens, tokens).mean(1)


# ---------------------------------------------------------------- the methods' arithmetic


def joint_attention(matrices: Sequence[Tensor]) -> Tensor:
    """C = M_B · … · M_2 · M_1 for per-block (B, N, N) matrices M_1 … M_B (later blocks on the left)."""
    joint = matrices[0]
    for m in matrices[1:]:
        joint = m @ joint
    return joint


def rollout(attentions: Sequence[Tensor]) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): Π_b (0.5·A_b + 0.5·I), later blocks on the left.

    ``attentions``: per block, the head-averaged probabilities (B, N, N), first block first.
    """
    eye = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype, device=attentions[0].device)
    return joint_attention([0.5 * a + 0.5 * eye for a in attentions])


def _class_row_map(joint: Tensor, grid: tuple[int, int], x: Tensor) -> Tensor:
    """Row 0 of C without column 0, on the patch grid, upsampled bilinearly to x's size, over channels."""
    from .methods import _finish

    h, w = grid
    row = joint[:, 0, 1:].reshape(-1, 1, h, w)
    return _finish(F.interpolate(row, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False), x)


def tibav_rules() -> Any:
    """The rule set of TIBAV's R_A: ``AttnLRP(ε = 1e-6)`` with LRP-α1β0 on dense layers, the
    bias left out of z⁺ as in Chefer et al.'s code."""
    from relprop.rules import AttnLRP
    from relprop.rules.lrp import AlphaBetaRule

    return AttnLRP(EPSILON, dense=AlphaBetaRule(1.0, 0.0, bias=False))


def _tibav_matrices(model: nn.Module, ag: AttentionGraph, x: Tensor, target: Tensor, graph: Any) -> list[Tensor]:
    """Per block I + E_h[(∇A ⊙ R_A)⁺] (Chefer et al. 2021, Eq. 13), (B, N, N)."""
    out, caps = run_attention(model, ag, x, grad=True)
    score = out.gather(1, target[:, None].to(out.device)).sum()
    grads = torch.autograd.grad(score, [c.probs for c in caps], allow_unused=True)
    onehot = F.one_hot(target, out.shape[1]).to(out.dtype)
    with torch.inference_mode(False):
        walk = graph.explanation(x.detach(), onehot, record={s.product.name for s in ag.sites}).node_relevance
    batch, n = x.shape[0], ag.sites[0].tokens
    eye = torch.eye(n, dtype=out.dtype, device=out.device)
    matrices = []
    for site, cap, g in zip(ag.sites, caps, grads):
        R_o = walk.get(site.product.name)
        a = cap.probs.detach()
        if R_o is None or g is None:  # no relevance or no gradient reaches this attention
            matrices.append(eye.expand(batch, n, n))
            continue
        with torch.inference_mode(False), torch.enable_grad():
            leaf = a.clone().requires_grad_(True)
            ratio = R_o[0].to(a.dtype) / stabilize(cap.output.detach(), EPSILON)
            (back,) = torch.autograd.grad(cap.product(leaf), leaf, ratio)
        R_A = 0.5 * a * back
        matrices.append(eye + _heads_mean((g.detach() * R_A).clamp(min=0), batch, n))
    return matrices


# ---------------------------------------------------------------- methods


def _resolve(name: str) -> str:
    key = "".join(ch for ch in str(name).lower() if ch not in "-_ ")
    for known in ATTENTION_METHODS:
        if key == known.lower():
            return known
    raise InputError(f"unknown attention method {name!r}; those are: {', '.join(ATTENTION_METHODS)}")


def attention_method(name: str, *, rules: Any = None) -> Method:
    """``Rollout``, ``LLAttention`` or ``TIBAV`` as a :data:`relprop.metrics.Method` (module docstring).

    ``rules``: TIBAV's rule set for R_A (default :func:`tibav_rules`); the others take none.
    """
    import relprop

    name = _resolve(name)
    if rules is not None and name != "TIBAV":
        raise InputError(f"{name} reads attention probabilities only; rules apply to TIBAV")
    graphs: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()

    def compute(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        ag = attention_graph(model, x)
        batch, n = x.shape[0], ag.sites[0].tokens
        if name == "TIBAV":
            if model not in graphs:
                graphs[model] = relprop.trace(model, rules=tibav_rules() if rules is None else rules)
            chunks = zip(x.split(TIBAV_BATCH), t.split(TIBAV_BATCH))
            joint = torch.cat([joint_attention(_tibav_matrices(model, ag, xs, ts, graphs[model])) for xs, ts in chunks])
            return _class_row_map(joint, ag.grid, x)
        with torch.no_grad():
            _, caps = run_attention(model, ag, x, grad=False)
            means = [_heads_mean(c.probs, batch, n) for c in caps]
        joint = means[-1] if name == "LLAttention" else rollout(means)
        return _class_row_map(joint, ag.grid, x)

    def method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        from .methods import _preserved, _target

        _check_image(x)
        t = _target(target, x)
        with _preserved(model, freeze=False):
            return compute(model, x, t)

    method.__name__ = name
    return method
