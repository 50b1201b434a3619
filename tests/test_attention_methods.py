"""Rollout, LLAttention and TIBAV (relprop.evaluation.attention_methods): hand computations on a
tiny ViT written out in this file, then the same methods on the digits, timm and torchvision ViTs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from model_state import assert_unchanged, snapshot
from torch import Tensor, nn

import relprop
from relprop import methods as RM
from relprop.errors import InputError
from relprop.evaluation import attention_methods as AM

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, HEADS, HEAD_DIM, TOKENS = 4, 2, 2, 5  # 2x2 patches of a 4x4 image: a 2x2 grid and a class token


class TinyViT(nn.Module):
    """Patch embedding (2x2 patches), class token, positions, ``depth`` blocks h + proj(attention(h))
    with 2 heads, a linear head on the class token; attention fused (SDPA) or written out."""

    def __init__(self, depth: int = 2, fused: bool = True, classes: int = 3) -> None:
        super().__init__()
        self.fused = fused
        self.patch = nn.Conv2d(3, DIM, 2, 2)
        self.cls = nn.Parameter(torch.randn(1, 1, DIM))
        self.pos = nn.Parameter(torch.randn(1, TOKENS, DIM))
        self.qkv = nn.ModuleList(nn.Linear(DIM, 3 * DIM) for _ in range(depth))
        self.proj = nn.ModuleList(nn.Linear(DIM, DIM) for _ in range(depth))
        self.head = nn.Linear(DIM, classes)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        h = torch.cat([self.cls.expand(b, -1, -1), self.patch(x).flatten(2).transpose(1, 2)], 1) + self.pos
        for qkv, proj in zip(self.qkv, self.proj):
            q, k, v = qkv(h).reshape(b, TOKENS, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
            if self.fused:
                o = F.scaled_dot_product_attention(q, k, v)
            else:
                o = torch.softmax((q * HEAD_DIM**-0.5) @ k.transpose(-2, -1), -1) @ v
            h = h + proj(o.transpose(1, 2).reshape(b, TOKENS, DIM))
        return self.head(h[:, 0])


def tiny_vit(fused: bool = True, seed: int = 3) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT(fused=fused).double().eval()


# ------------------------------------------------------------ the oracle: the forward and LRP written out


def reference(model: TinyViT, x: Tensor) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """The logits and, per block, h (its input), q, k, v (B, heads, N, d), A = softmax(q·kᵀ/√d)
    on the autograd graph, o = A·v, the merged o (B, N, D) and u = proj(o)."""
    b = x.shape[0]
    w, c = model.patch.weight, model.patch.bias
    patches = torch.stack([x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] for i in range(2) for j in range(2)], 1)
    emb = torch.einsum("bpcuv,dcuv->bpd", patches, w) + c
    h = torch.cat([model.cls.expand(b, 1, DIM), emb], 1) + model.pos
    blocks = []
    for qkv, proj in zip(model.qkv, model.proj):
        z = (h @ qkv.weight.T + qkv.bias).reshape(b, TOKENS, 3, HEADS, HEAD_DIM)
        q, k, v = (z[:, :, i].transpose(1, 2) for i in range(3))
        A = torch.softmax(q @ k.transpose(-2, -1) / HEAD_DIM**0.5, -1)
        o = A @ v
        merged = o.transpose(1, 2).reshape(b, TOKENS, DIM)
        u = merged @ proj.weight.T + proj.bias
        blocks.append(dict(h=h, q=q, k=k, v=v, A=A, o=o, merged=merged, u=u, qkv=qkv.weight, proj=proj.weight))
        h = h + u
    return h[:, 0] @ model.head.weight.T + model.head.bias, blocks


def stab(y: Tensor, eps: float) -> Tensor:
    return torch.where(y >= 0, y + eps, y - eps)


def alpha1beta0(x: Tensor, w: Tensor, R: Tensor) -> Tensor:
    """LRP-α1β0 on y = x·wᵀ (+ b, left out): R_i = Σ_j (x_i⁺w_ij⁺ + x_i⁻w_ij⁻) / (z⁺_j + 1e-9) R_j."""
    xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
    s = R / (xp @ wp.T + xn @ wn.T + 1e-9)
    return xp * (s @ wp) + xn * (s @ wn)


def oracle_lrp(model: TinyViT, blocks: list[dict[str, Tensor]], target: Tensor) -> list[Tensor]:
    """R_A per block: AttnLRP (ε = 1e-6) with α1β0 on the linear layers, from the one-hot target.

    Head α1β0, the class token, then per block (last first): the residual sum by the ε-rule,
    proj α1β0, at o = A·v R_A = ½ A ⊙ (R_o/stab(o))vᵀ and R_v = ½ v ⊙ Aᵀ(R_o/stab(o)); the softmax
    rule R_s = s ⊙ (R_A − A Σ_j R_A) and the uniform rule at s = (q/√d)kᵀ (halves of R_s/s);
    then qkv α1β0 onto the block's input."""
    eps, b = 1e-6, target.shape[0]
    last = blocks[-1]
    R_top = F.one_hot(target, model.head.weight.shape[0]).double()
    R_h = torch.zeros_like(last["h"])
    R_h[:, 0] = alpha1beta0((last["h"] + last["u"])[:, 0], model.head.weight, R_top)
    found = []
    for blk in reversed(blocks):
        h, u, q, k, v, A, o = (blk[n].detach() for n in ("h", "u", "q", "k", "v", "A", "o"))
        R_in, R_u = h * R_h / stab(h + u, eps), u * R_h / stab(h + u, eps)
        R_o = alpha1beta0(blk["merged"].detach(), blk["proj"], R_u).reshape(b, TOKENS, HEADS, HEAD_DIM).transpose(1, 2)
        g = R_o / stab(o, eps)
        R_A = 0.5 * A * (g @ v.transpose(-2, -1))
        R_v = 0.5 * v * (A.transpose(-2, -1) @ g)
        ratio_s = R_A - A * R_A.sum(-1, keepdim=True)  # R_s / s, the softmax rule divided by its input
        R_q = 0.5 * q * (ratio_s @ k) / HEAD_DIM**0.5
        R_k = 0.5 * k * (ratio_s.transpose(-2, -1) @ q) / HEAD_DIM**0.5
        R_qkv = torch.stack([R_q, R_k, R_v], 2).transpose(1, 3).reshape(b, TOKENS, 3 * DIM)
        R_h = R_in + alpha1beta0(h, blk["qkv"], R_qkv)
        found.append(R_A)
    return found[::-1]


#: bilinear upsampling 2 -> 4 with align_corners=False: sample points -0.25 (clamped), 0.25, 0.75, 1.25
UP = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]], dtype=torch.float64)


def image_map(row: Tensor) -> Tensor:
    """(B, 4) class-token row on the 2x2 grid -> (B, 3, 4, 4), upsampled by hand."""
    return (UP @ row.reshape(-1, 2, 2) @ UP.T)[:, None].expand(-1, 3, -1, -1)


def expected(method: str, model: TinyViT, x: Tensor, target: Tensor) -> Tensor:
    logits, blocks = reference(model, x)
    eye = torch.eye(TOKENS, dtype=torch.float64)
    means = [blk["A"].detach().mean(1) for blk in blocks]
    if method == "LLAttention":
        return image_map(means[-1][:, 0, 1:])
    if method == "Rollout":
        bars = [0.5 * a + 0.5 * eye for a in means]
    else:
        score = logits.gather(1, target[:, None]).sum()
        grads = torch.autograd.grad(score, [blk["A"] for blk in blocks])
        R_A = oracle_lrp(model, blocks, target)
        bars = [eye + (g * r).clamp(min=0).mean(1) for g, r in zip(grads, R_A)]
    return image_map((bars[1] @ bars[0])[:, 0, 1:]).detach()


# ------------------------------------------------------------ hand computations


def test_rollout_of_given_matrices() -> None:
    a1 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    a2 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # Ā1 row 0 = [.5, .5, 0], Ā2 row 0 = [.5, 0, .5]: (Ā2·Ā1) row 0 = .5·[.5, .5, 0] + .5·[0, 0, 1]
    C = AM.rollout([a1[None], a2[None]])
    assert torch.allclose(C[0, 0], torch.tensor([0.25, 0.25, 0.5]))
    assert torch.allclose(C[0, 1], torch.tensor([0.0, 1.0, 0.0]))  # row 1 of both is e1
    assert torch.allclose(C.sum(-1), torch.ones(1, 3))  # products of row-stochastic matrices
    # the joint of given matrices: later blocks on the left
    m1, m2 = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert torch.equal(AM.joint_attention([m1[None], m2[None]])[0], torch.tensor([[1.0, 2.0], [3.0, 7.0]]))


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "softmax"])
@pytest.mark.parametrize("method", AM.ATTENTION_METHODS)
def test_tiny_vit_by_hand(method: str, fused: bool) -> None:
    model = tiny_vit(fused)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    got = AM.attention_method(method)(model, x, target)
    want = expected(method, model, x, target)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert want.abs().amax() > 1e-3
    # written-out attention: the walk's ε-rule at q·kᵀ divides by stab(s), SDPA's rule by s
    tol = 1e-10 if fused or method != "TIBAV" else 1e-5
    assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().amax())), (got - want).abs().max()


def test_tibav_gradient_and_relevance_both_matter() -> None:
    """TIBAV is neither rollout of R_A alone nor of the gradient alone: flipping the gradient's
    sign changes the map (the positive part is taken of the product)."""
    model = tiny_vit()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    a = AM.attention_method("TIBAV")(model, x, torch.tensor([0, 1]))
    with torch.no_grad():
        model.head.weight.neg_()
        model.head.bias.neg_()
    b = AM.attention_method("TIBAV")(model, x, torch.tensor([0, 1]))
    assert not torch.allclose(a, b)


def test_samples_are_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_vit()
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0])
    for name in AM.ATTENTION_METHODS:
        method = AM.attention_method(name)
        both = method(model, x, t)
        assert torch.allclose(both[1:2], method(model, x[1:2], t[1:2]), atol=1e-12), name
    monkeypatch.setattr(AM, "TIBAV_BATCH", 3)  # TIBAV in chunks of 3 and 1
    assert torch.allclose(AM.attention_method("TIBAV")(model, x, t), both, atol=1e-12)


# ------------------------------------------------------------ real ViTs


def digits_vit() -> tuple[nn.Module, Tensor]:
    x, _ = relprop.models.load_digits_test().tensors
    return relprop.models.load_digits_model("vit"), x[:2]


def timm_vit(**kwargs: object) -> tuple[nn.Module, Tensor]:
    timm = pytest.importorskip("timm")
    config = dict(pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5, **kwargs)
    return timm.create_model("vit_tiny_patch16_224", **config).eval(), torch.randn(2, 3, 32, 32)


def torchvision_vit() -> tuple[nn.Module, Tensor]:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: no gradient, no relevance
    return model.eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("make", [digits_vit, timm_vit, torchvision_vit], ids=["digits", "timm", "torchvision"])
def test_real_vits(make) -> None:
    model, x = make()
    model.train()  # handed back in training mode
    p0 = next(model.parameters())
    p0.grad = torch.full_like(p0, 0.5)
    before = snapshot(model)
    assert AM.attention_unavailable(model) is None and AM.attention_unavailable(model, x) is None
    target = torch.tensor([1, 3])
    for name in AM.ATTENTION_METHODS:
        a = AM.attention_method(name)(model, x, target)
        assert a.shape == x.shape and a.dtype == x.dtype and not a.requires_grad, name
        assert torch.isfinite(a).all() and a.abs().sum() > 0, name
        assert torch.equal(a[:, 0], a[:, -1]), name  # one map repeated over the channels
        assert_unchanged(model, before)


def test_timm_fused_and_written_out_attention_agree() -> None:
    model, x = timm_vit()
    unfused, _ = timm_vit()
    unfused.load_state_dict(model.state_dict())
    for m in unfused.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    t = torch.tensor([0, 4])
    for name in AM.ATTENTION_METHODS:
        a, b = AM.attention_method(name)(model, x, t), AM.attention_method(name)(unfused, x, t)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(a.abs().amax())), name


def test_build_methods_includes_them_on_a_vit() -> None:
    model, x = timm_vit()
    built, skipped = RM.build_methods(model, ["Rollout", "llattention", "TIBAV", "random"])
    assert set(built) == {*AM.ATTENTION_METHODS, "random"} and skipped == {}
    assert set(AM.ATTENTION_METHODS) <= set(RM.METHOD_NAMES)
    assert RM.get_method("TIBAV")(model, x, torch.tensor([0, 1])).shape == x.shape


# ------------------------------------------------------------ refusals


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def test_a_cnn_is_refused() -> None:
    model, x = TinyCNN().eval(), torch.randn(2, 3, 8, 8)
    assert "no attention" in AM.attention_unavailable(model)
    assert "no attention" in AM.attention_unavailable(model, x)
    for name in AM.ATTENTION_METHODS:
        with pytest.raises(InputError, match="no attention"):
            AM.attention_method(name)(model, x, torch.tensor([0, 1]))
    built, skipped = RM.build_methods(model)
    assert "random" in built and not set(built) & set(AM.ATTENTION_METHODS)
    assert all("no attention" in skipped[name] for name in AM.ATTENTION_METHODS)
    with pytest.raises(InputError, match="'TIBAV' cannot run.*no attention"):
        RM.build_methods(model, ["TIBAV"])


def test_no_class_token_or_extra_tokens_are_refused() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, x = timm_vit(class_token=False, global_pool="avg")
    with pytest.raises(InputError, match="no class token"):
        AM.attention_method("Rollout")(model, x, torch.tensor([0, 1]))
    model, x = timm_vit(reg_tokens=4)
    assert "5 tokens besides" in AM.attention_unavailable(model, x)


def test_names_and_inputs() -> None:
    assert AM.attention_method("tibav").__name__ == "TIBAV"
    with pytest.raises(InputError, match="unknown attention method"):
        AM.attention_method("rollouts")
    with pytest.raises(InputError, match="rules apply to TIBAV"):
        AM.attention_method("Rollout", rules=relprop.rules.Epsilon())
    model = tiny_vit()
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        AM.attention_method("Rollout")(model, torch.randn(3, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2]))
