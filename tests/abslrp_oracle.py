"""An independent, slow oracle for absLRP, written from the semantics only
(docs/semantics.md §absLRP): a second implementation of the rule, op by op on the
module tree, that the tests compare relprop's graph walk against.

It does not import relprop. A model is walked module by module (the way the absLRP
authors' code works on the ``nn.Module`` tree): the walker re-executes the model's
forward op by op on a :class:`Tape`, which records, for every op, its inputs and a
closure computing it. Relevance is then propagated backwards over the tape:

* a *computing* op ``y = f(x1..xn; θ)`` gets the absLRP rule, evaluated locally with
  autograd on fresh leaves::

      g      = R_y / (|y| + 1e-9)            (max pooling may skip the division)
      y_abs  = f(|x1|..|xn|; |θ|)
      R_xi   = xi ⊙ ∂⟨y + y_abs, g⟩/∂xi,     then Σ|R_xi| = 1 per sample

* a *data movement* op passes relevance by its own gradient (vjp);
* ``alias`` passes relevance unchanged (q·scale in attention);
* where a tensor feeds several ops, the relevances add up.

Relevance tensors carry the passes first: shape (P, batch, ...). The contrastive
explanation starts the positive pass from the one-hot of the target and the negative
pass from ones on all other classes, each summing to 1.

Walkers exist for ``nn.Sequential`` stacks of standard layers, timm ``VGG``, timm
``ResNet`` (basic and bottleneck blocks), timm ``VisionTransformer`` (class token,
``Attention``) and ``nn.MultiheadAttention``; each asserts the structure it assumes,
and :func:`explain` checks that the walked forward reproduces ``model(x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-9

Fn = Callable[..., Tensor]


@dataclass
class Op:
    """One recorded op: its tape inputs, their values, its outputs and how to propagate."""

    kind: str  # "rule", "move" or "alias"
    inputs: list[int]
    values: list[Tensor]
    outputs: list[int]
    f: Callable[..., Tensor | tuple[Tensor, ...]]
    f_abs: Fn | None = None
    divide: bool = True
    name: str = ""


@dataclass
class Tape:
    """Records a forward pass op by op (tensors are identified by object identity)."""

    ops: list[Op] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    index: dict[int, int] = field(default_factory=dict)

    def leaf(self, x: Tensor) -> Tensor:
        """Register an input of the model; returns a detached copy to walk with."""
        x = x.detach().clone()
        self._add(x)
        return x

    def _add(self, t: Tensor) -> int:
        self.tensors.append(t)
        self.index[id(t)] = len(self.tensors) - 1
        return len(self.tensors) - 1

    def _ids(self, xs: Sequence[Tensor]) -> list[int]:
        ids = []
        for x in xs:
            if id(x) not in self.index:
                raise KeyError("an op input is not on the tape (walker bug)")
            ids.append(self.index[id(x)])
        return ids

    def rule(self, name: str, f: Fn, f_abs: Fn, *xs: Tensor, divide: bool = True) -> Tensor:
        """A computing op: y = f(xs); its abs variant f_abs is applied to |xs| by the rule."""
        with torch.no_grad():
            y = f(*xs)
        op = Op("rule", self._ids(xs), list(xs), [], f, f_abs, divide, name)
        op.outputs = [self._add(y)]
        self.ops.append(op)
        return y

    def move(self, name: str, f: Callable[..., Tensor | tuple[Tensor, ...]], *xs: Tensor):
        """A data movement op (one or several outputs); relevance passes by its gradient."""
        with torch.no_grad():
            out = f(*xs)
        outs = list(out) if isinstance(out, tuple) else [out]
        op = Op("move", self._ids(xs), list(xs), [], f, None, True, name)
        op.outputs = [self._add(o) for o in outs]
        self.ops.append(op)
        return out

    def alias(self, name: str, f: Fn, x: Tensor) -> Tensor:
        """An op whose output relevance goes to its input unchanged (same shape)."""
        with torch.no_grad():
            y = f(x)
        assert y.shape == x.shape
        op = Op("alias", self._ids([x]), [x], [], f, None, True, name)
        op.outputs = [self._add(y)]
        self.ops.append(op)
        return y

    # -- backward ----------------------------------------------------------------------

    def propagate(self, start: Tensor, output: Tensor) -> dict[int, Tensor]:
        """Relevance (P, batch, ...) of every tape tensor, from ``start`` at ``output``."""
        R: dict[int, Tensor] = {self.index[id(output)]: start}
        for op in reversed(self.ops):
            outs = [R.get(i) for i in op.outputs]
            if all(r is None for r in outs):
                continue
            for i, r in zip(op.inputs, self._backward(op, outs)):
                if r is not None:
                    R[i] = R[i] + r if i in R else r
        return R

    def _backward(self, op: Op, outs: list[Tensor | None]) -> list[Tensor | None]:
        xs = [v.detach().clone().requires_grad_(True) for v in op.values]
        if op.kind == "alias":
            return [outs[0]]
        passes = next(r for r in outs if r is not None).shape[0]
        with torch.enable_grad():
            y = op.f(*xs)
            ys = list(y) if isinstance(y, tuple) else [y]
            if op.kind == "move":
                per_pass = []
                for p in range(passes):
                    grads = [torch.zeros_like(t) if r is None else r[p] for t, r in zip(ys, outs)]
                    per_pass.append(torch.autograd.grad(ys, xs, grads, retain_graph=True, allow_unused=True))
                return [_stack([g[i] for g in per_pass]) for i in range(len(xs))]
            assert op.f_abs is not None and len(ys) == 1
            y_abs = op.f_abs(*[x.abs() for x in xs])
            total = ys[0] + y_abs
            Ry = outs[0]
            assert Ry is not None
            result: list[list[Tensor]] = [[] for _ in xs]
            for p in range(passes):
                g = Ry[p] / (ys[0].detach().abs() + EPS) if op.divide else Ry[p]
                grads = torch.autograd.grad(total, xs, g, retain_graph=True, allow_unused=True)
                for i, (x, gr) in enumerate(zip(xs, grads)):
                    r = torch.zeros_like(x) if gr is None else x.detach() * gr
                    result[i].append(unit_l1(r))
        return [torch.stack(r) for r in result]


def _stack(parts: list[Tensor | None]) -> Tensor | None:
    if any(p is None for p in parts):
        return None
    return torch.stack(parts)  # type: ignore[arg-type]


def unit_l1(r: Tensor) -> Tensor:
    """Rescale per sample (first dimension) so that Σ|r| = 1 (zero stays zero)."""
    total = r.abs().flatten(1).sum(1)
    total = torch.where(total > 0, total, torch.ones_like(total))
    return r / total.view(-1, *([1] * (r.dim() - 1)))


# -- ops of standard modules ---------------------------------------------------------------


def conv2d(tape: Tape, m: nn.Conv2d, x: Tensor) -> Tensor:
    """Convolution (zero padding)."""
    assert m.padding_mode == "zeros"

    def f(t: Tensor, w: Tensor = m.weight, b: Tensor | None = m.bias) -> Tensor:
        return F.conv2d(t, w, b, m.stride, m.padding, m.dilation, m.groups)

    b_abs = None if m.bias is None else m.bias.detach().abs()
    return tape.rule("conv2d", f, lambda t: f(t, m.weight.detach().abs(), b_abs), x)


def linear_w(tape: Tape, weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """Affine map x Wᵀ + b."""
    w, b = weight.detach(), None if bias is None else bias.detach()
    b_abs = None if b is None else b.abs()
    return tape.rule("linear", lambda t: F.linear(t, w, b), lambda t: F.linear(t, w.abs(), b_abs), x)


def linear(tape: Tape, m: nn.Linear, x: Tensor) -> Tensor:
    """nn.Linear."""
    return linear_w(tape, m.weight, m.bias, x)


def batch_norm(tape: Tape, m: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """Eval batch norm; the abs variant keeps the running statistics and takes |γ|, |β|."""
    assert not m.training and m.running_mean is not None
    mean, var = m.running_mean, m.running_var
    w, b = m.weight.detach(), m.bias.detach()

    def f(t: Tensor, w: Tensor = w, b: Tensor = b) -> Tensor:
        return F.batch_norm(t, mean, var, w, b, False, 0.0, m.eps)

    return tape.rule("batch_norm", f, lambda t: f(t, w.abs(), b.abs()), x)


def layer_norm(tape: Tape, m: nn.LayerNorm, x: Tensor) -> Tensor:
    """Layer norm with mean and variance held constant (each variant uses its own input's)."""
    dims = tuple(range(-len(m.normalized_shape), 0))
    w = None if m.weight is None else m.weight.detach()
    b = None if m.bias is None else m.bias.detach()

    def make(w: Tensor | None, b: Tensor | None) -> Fn:
        def f(t: Tensor) -> Tensor:
            c = t.detach()
            mu = c.mean(dims, keepdim=True)
            var = c.var(dims, keepdim=True, unbiased=False)
            y = (t - mu) / torch.sqrt(var + m.eps)
            if w is not None:
                y = y * w
            if b is not None:
                y = y + b
            return y

        return f

    return tape.rule(
        "layer_norm",
        make(w, b),
        make(None if w is None else w.abs(), None if b is None else b.abs()),
        x,
    )


def elementwise(tape: Tape, name: str, fn: Fn, x: Tensor) -> Tensor:
    """An activation y = fn(x); its abs variant is fn(|x|)."""
    return tape.rule(name, fn, fn, x)


def max_pool2d(tape: Tape, m: nn.MaxPool2d, x: Tensor, divide: bool) -> Tensor:
    """Max pooling; ``divide=False`` is the reference's VGG variant (g = R_y)."""

    def f(t: Tensor) -> Tensor:
        return F.max_pool2d(t, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)

    return tape.rule("max_pool2d", f, f, x, divide=divide)


def adaptive_avg_pool2d(tape: Tape, x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Adaptive average pooling (also when it upsamples)."""

    def f(t: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(t, size)

    return tape.rule("adaptive_avg_pool2d", f, f, x)


def softmax(tape: Tape, x: Tensor, dim: int = -1) -> Tensor:
    """Softmax exp(x - max) / Σ exp(x - max) with max and denominator held constant."""

    def f(t: Tensor) -> Tensor:
        c = t.detach()
        top = c.amax(dim, keepdim=True)
        den = torch.exp(c - top).sum(dim, keepdim=True)
        return torch.exp(t - top) / den

    return tape.rule("softmax", f, f, x)


def matmul(tape: Tape, a: Tensor, b: Tensor) -> Tensor:
    """a @ b, both inputs independent leaves."""
    return tape.rule("matmul", torch.matmul, torch.matmul, a, b)


def add(tape: Tape, a: Tensor, b: Tensor) -> Tensor:
    """a + b (a residual merge): both inputs are independent leaves."""
    return tape.rule("add", torch.add, torch.add, a, b)


def add_constant(tape: Tape, x: Tensor, c: Tensor) -> Tensor:
    """x + c with c a parameter (which receives no relevance); abs variant |x| + |c|."""
    c = c.detach()
    return tape.rule("add_constant", lambda t: t + c, lambda t: t + c.abs(), x)


def select_token(tape: Tape, x: Tensor, index: int = 0) -> Tensor:
    """x[:, index] keeping one token and dropping the rest: a pooling, it gets the rule."""

    def f(t: Tensor) -> Tensor:
        return t[:, index]

    return tape.rule("select_token", f, f, x)


def sdpa(tape: Tape, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Scaled dot-product attention decomposed: (q·scale)·kᵀ → softmax → attn·v."""
    qs = tape.alias("q*scale", lambda t: t * scale, q)
    kt = tape.move("transpose", lambda t: t.transpose(-2, -1), k)
    attn = softmax(tape, matmul(tape, qs, kt), -1)
    return matmul(tape, attn, v)


PASSING = (nn.Dropout, nn.Identity)


def module(tape: Tape, m: nn.Module, x: Tensor, maxpool_divide: bool = True) -> Tensor:
    """One standard leaf module (or a Sequential of them)."""
    if isinstance(m, nn.Sequential):
        for child in m:
            x = module(tape, child, x, maxpool_divide)
        return x
    if isinstance(m, PASSING):
        assert not m.training
        return x
    if isinstance(m, nn.Conv2d):
        return conv2d(tape, m, x)
    if isinstance(m, nn.Linear):
        return linear(tape, m, x)
    if isinstance(m, nn.BatchNorm2d):
        return batch_norm(tape, m, x)
    if isinstance(m, nn.LayerNorm):
        return layer_norm(tape, m, x)
    if isinstance(m, nn.ReLU):
        return elementwise(tape, "relu", F.relu, x)
    if isinstance(m, nn.GELU):
        return elementwise(tape, "gelu", lambda t: F.gelu(t, approximate=m.approximate), x)
    if isinstance(m, nn.MaxPool2d):
        return max_pool2d(tape, m, x, maxpool_divide)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return adaptive_avg_pool2d(tape, x, m.output_size)
    if isinstance(m, nn.Flatten):
        return tape.move("flatten", lambda t: t.flatten(m.start_dim, m.end_dim), x)
    if isinstance(m, nn.MultiheadAttention):
        return multihead_attention(tape, m, x)
    raise NotImplementedError(f"oracle has no walker for {type(m).__name__}")


def multihead_attention(tape: Tape, m: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """Self-attention ``m(x, x, x, need_weights=False)`` with batch_first=True."""
    assert m.batch_first and m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn
    B, N, E = x.shape
    H = m.num_heads
    D = E // H
    qkv = linear_w(tape, m.in_proj_weight, m.in_proj_bias, x)
    q, k, v = tape.move("split", lambda t: tuple(t.split(E, dim=-1)), qkv)

    def heads(t: Tensor) -> Tensor:
        return t.reshape(B, N, H, D).transpose(1, 2)

    q, k, v = (tape.move("heads", heads, t) for t in (q, k, v))
    o = sdpa(tape, q, k, v, D**-0.5)
    o = tape.move("merge", lambda t: t.transpose(1, 2).reshape(B, N, E), o)
    return linear(tape, m.out_proj, o)


# -- timm families ---------------------------------------------------------------------------


def _pool_flatten(tape: Tape, pool: nn.Module, x: Tensor) -> Tensor:
    """timm SelectAdaptivePool2d with average pooling."""
    assert pool.pool_type in ("avg", "fast", "fastavg"), pool.pool_type
    if isinstance(pool.pool, nn.AdaptiveAvgPool2d):
        x = adaptive_avg_pool2d(tape, x, pool.pool.output_size)
    else:  # FastAdaptiveAvgPool: mean over H, W
        flat = bool(getattr(pool.pool, "flatten", True))
        x = tape.rule("mean", lambda t: t.mean((2, 3), keepdim=not flat), lambda t: t.mean((2, 3), keepdim=not flat), x)
    return module(tape, pool.flatten, x)


def timm_vgg(tape: Tape, m: nn.Module, x: Tensor, maxpool_divide: bool) -> Tensor:
    """timm VGG: features, ConvMlp pre-logits (upsampling small maps to 7x7), head."""
    x = module(tape, m.features, x, maxpool_divide)
    pre = m.pre_logits
    k = pre.input_kernel_size
    if x.shape[-2] < k or x.shape[-1] < k:
        x = adaptive_avg_pool2d(tape, x, (max(k, x.shape[-2]), max(k, x.shape[-1])))
    for child in (pre.fc1, pre.act1, pre.drop, pre.fc2, pre.act2):
        x = module(tape, child, x, maxpool_divide)
    x = _pool_flatten(tape, m.head.global_pool, x)
    x = module(tape, m.head.drop, x)
    x = linear(tape, m.head.fc, x)
    return module(tape, m.head.flatten, x)


def timm_resnet(tape: Tape, m: nn.Module, x: Tensor, maxpool_divide: bool = True) -> Tensor:
    """timm ResNet with BasicBlock or Bottleneck blocks (no SE, no anti-aliasing)."""
    for child in (m.conv1, m.bn1, m.act1, m.maxpool):
        x = module(tape, child, x, maxpool_divide)
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in layer:
            x = residual_block(tape, blk, x, maxpool_divide)
    x = _pool_flatten(tape, m.global_pool, x)
    assert not m.drop_rate
    return linear(tape, m.fc, x)


def residual_block(tape: Tape, blk: nn.Module, x: Tensor, maxpool_divide: bool = True) -> Tensor:
    """Basic (2 convs) or bottleneck (3 convs) residual block: out = act(branch(x) + shortcut)."""
    assert getattr(blk, "se", None) is None and getattr(blk, "drop_path", None) is None
    names = ["conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2"]
    if hasattr(blk, "conv3"):
        names = ["conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3"]
    h = x
    for name in names:
        h = module(tape, getattr(blk, name), h, maxpool_divide)
    shortcut = x if blk.downsample is None else module(tape, blk.downsample, x, maxpool_divide)
    out = add(tape, h, shortcut)
    act = blk.act3 if hasattr(blk, "conv3") else blk.act2
    return module(tape, act, out, maxpool_divide)


def timm_attention(tape: Tape, a: nn.Module, x: Tensor) -> Tensor:
    """timm Attention: qkv linear, unbind into heads, attention, proj."""
    for name in ("q_norm", "k_norm", "norm"):
        assert isinstance(getattr(a, name), nn.Identity), name
    assert getattr(a, "gate", None) is None
    B, N, C = x.shape
    qkv = linear(tape, a.qkv, x)
    parts = tape.move(
        "qkv_heads",
        lambda t: t.reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0),
        qkv,
    )
    q, k, v = parts
    o = sdpa(tape, q, k, v, a.scale)
    o = tape.move("merge", lambda t: t.transpose(1, 2).reshape(B, N, a.attn_dim), o)
    o = linear(tape, a.proj, o)
    return module(tape, a.proj_drop, o)


def timm_vit(tape: Tape, m: nn.Module, x: Tensor, maxpool_divide: bool = True) -> Tensor:
    """timm VisionTransformer, class-token pooling, pre-norm blocks without layer scale."""
    assert m.global_pool == "token" and m.reg_token is None and not m.no_embed_class
    assert not m.dynamic_img_size and m.attn_pool is None
    pe = m.patch_embed
    x = conv2d(tape, pe.proj, x)
    x = tape.move("patches", lambda t: t.flatten(2).transpose(1, 2), x)
    x = module(tape, pe.norm, x)
    cls = m.cls_token.detach().expand(x.shape[0], -1, -1)
    x = tape.move("cat_cls", lambda t: torch.cat([cls, t], dim=1), x)
    x = add_constant(tape, x, m.pos_embed)
    for child in (m.pos_drop, m.patch_drop, m.norm_pre):
        x = module(tape, child, x)
    for blk in m.blocks:
        for name in ("ls1", "ls2", "drop_path1", "drop_path2"):
            assert isinstance(getattr(blk, name), nn.Identity), name
        h = timm_attention(tape, blk.attn, layer_norm(tape, blk.norm1, x))
        x = add(tape, x, h)
        h = layer_norm(tape, blk.norm2, x)
        mlp = blk.mlp
        for child in (mlp.fc1, mlp.act, mlp.drop1, mlp.norm, mlp.fc2, mlp.drop2):
            h = module(tape, child, h)
        x = add(tape, x, h)
    x = module(tape, m.norm, x)
    x = select_token(tape, x, 0)
    x = module(tape, m.fc_norm, x)
    x = module(tape, m.head_drop, x)
    return module(tape, m.head, x)


Walker = Callable[[Tape, nn.Module, Tensor, bool], Tensor]


def sequential(tape: Tape, m: nn.Module, x: Tensor, maxpool_divide: bool) -> Tensor:
    """An nn.Sequential of standard layers."""
    return module(tape, m, x, maxpool_divide)


def walker_for(model: nn.Module) -> Walker:
    """Pick the walker for a model by its class."""
    name = type(model).__name__
    if isinstance(model, nn.Sequential):
        return sequential
    walkers: dict[str, Walker] = {
        "VGG": timm_vgg,
        "ResNet": timm_resnet,
        "VisionTransformer": timm_vit,
    }
    if name not in walkers:
        raise NotImplementedError(f"oracle has no walker for {name}")
    return walkers[name]


# -- explanation ------------------------------------------------------------------------------


def start_relevance(logits: Tensor, target: Tensor) -> Tensor:
    """(2, batch, classes): one-hot of the target; ones on every other class, Σ = 1 each."""
    onehot = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    others = (1 - onehot) / (logits.shape[-1] - 1)
    return torch.stack([onehot, others])


@dataclass
class OracleResult:
    """Positive and negative pass at the input, their difference, and the logits."""

    passes: Tensor  # (2, batch, ...)
    logits: Tensor
    ops: int

    @property
    def relevance(self) -> Tensor:
        return self.passes[0] - self.passes[1]


def explain(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    maxpool_divide: bool = True,
    walker: Walker | None = None,
) -> OracleResult:
    """Contrastive absLRP of ``model`` at ``x`` for ``target`` (one class per sample)."""
    assert not model.training, "put the model in eval mode"
    walk = walker or walker_for(model)
    tape = Tape()
    x0 = tape.leaf(x)
    with torch.no_grad():
        logits = walk(tape, model, x0, maxpool_divide)
        expected = model(x)
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((logits - expected).abs().max() / scale).item()
    tol = 1e-9 if x.dtype == torch.float64 else 1e-4
    assert err < tol, f"the walked forward does not reproduce model(x): rel. error {err:.2e}"
    R = tape.propagate(start_relevance(logits, target), logits)
    passes = R.get(tape.index[id(x0)])
    assert passes is not None, "no relevance reached the input"
    return OracleResult(passes=passes, logits=logits, ops=len(tape.ops))
