"""GAE.evaluate against an independent, per-sample implementation of the authors' GAE.

The oracle below is written from the description of the authors' code (section 3.2 of
Vukadin et al. 2024 as implemented in their ``abslrp_gae/gae/gae.py``; see the module
docstring of relprop.metrics): one image, one step, one mosaic at a time, plain loops,
no relprop.metrics function.  It runs end to end on a small CNN trained here in float64
(a planted-evidence task) with Input×Gradient, absLRP and a constant map, and every score of every positive
image must agree with relprop's batched implementation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.evaluation import metrics as M

EPS = 1e-9
STEPS = 10


def generator(seed: int, batch: int) -> torch.Generator:
    """The documented seeding of a batch's positive-image draw."""
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + batch) % 2**64)


# ------------------------------------------------------------ the oracle, one sample at a time


def ranking(model: nn.Module, x: Tensor, c: int, pixel: bool) -> tuple[float, Tensor]:
    """Logit f_c(x) and the L1-normalised |x * d|f_c|/dx| of one image (C, H, W)."""
    xg = x.clone().requires_grad_(True)
    out = model(xg.unsqueeze(0))[0, c]
    out.abs().backward()  # the mean over a batch of one
    m = (xg.grad * x).abs()
    if pixel:
        m = m.sum(0)
    return float(out.detach()), m / (m.abs().sum() + EPS)


def states(model: nn.Module, x: Tensor, c: int, morf: bool, pixel: bool) -> list[tuple[Tensor, float, Tensor]]:
    """The STEPS saved (input, output, map) of one image's MoRF or LeRF perturbation."""
    fractions = torch.linspace(1 / STEPS, 1, STEPS)
    cur, out = x.clone(), []
    for t in range(STEPS):
        o, m = ranking(model, cur, c, pixel)
        out.append((cur, o, m))
        if t == STEPS - 1:
            break
        k = int(fractions[t] * m.numel())
        chosen = m.reshape(1, -1).topk(k, dim=1, largest=morf).indices[0]
        cur = cur.clone()
        if pixel:  # every channel of the chosen pixels
            cur[:, chosen // x.shape[2], chosen % x.shape[2]] = 0.0
        else:
            cur.view(-1)[chosen] = 0.0
    return out


def relevance(method: M.Method, model: nn.Module, x: Tensor, c: int, pixel: bool) -> Tensor:
    r = method(model, x.unsqueeze(0), torch.tensor([c]))[0].detach()
    if pixel:
        r = r.sum(0)
    r = (r / (r.abs().max() + EPS)).clamp(min=0)
    return r / (r.max() + EPS)


def dice(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().sum() / (a.abs().sum() + b.abs().sum() + EPS))


def local_consistency(model: nn.Module, method: M.Method, x: Tensor, c: int, pixel: bool) -> tuple[float, float]:
    """LC_R and LC_F of one positive image."""
    morf, lerf = states(model, x, c, True, pixel), states(model, x, c, False, pixel)
    o0 = morf[0][1]
    r0 = relevance(method, model, x, c, pixel)
    d_o, d_a = [], []
    for t in range(1, STEPS):
        d_o.append(lerf[t][1] / (o0 + EPS) - morf[t][1] / (o0 + EPS))
        r_m, r_l = relevance(method, model, morf[t][0], c, pixel), relevance(method, model, lerf[t][0], c, pixel)
        d_a.append(dice(r0, r_m) - dice(r0, r_l))
    lc_r = 1 - 2 * dice(torch.tensor(d_a, dtype=torch.float64), torch.tensor(d_o, dtype=torch.float64))
    sum_l = sum(s[2] for s in lerf)
    sum_m = sum(s[2] for s in morf)
    diff = sum_l / (sum_l.abs().sum() + EPS) - sum_m / (sum_m.abs().sum() + EPS)
    impact = torch.sign(diff / (diff.abs().max() + EPS))
    lc_f = float((impact * r0).sum() / (r0.sum() + EPS))
    return lc_r, lc_f


def make_mosaic(quadrants: list[Tensor]) -> Tensor:
    """2x2 mosaic of four images, each reduced to its even rows and columns."""
    c, h, w = quadrants[0].shape
    out = torch.zeros(c, h, w, dtype=quadrants[0].dtype)
    for q, img in enumerate(quadrants):
        r, col = divmod(q, 2)
        out[:, r * h // 2 : (r + 1) * h // 2, col * w // 2 : (col + 1) * w // 2] = img[:, ::2, ::2]
    return out


def oracle(model: nn.Module, methods: dict[str, M.Method], x: Tensor, y: Tensor, batch: int, opts: dict) -> dict:
    """Per positive image (data index) and method: (lc_r, lc_f, lc, c, gae)."""
    pixel, authors = opts.get("granularity") == "pixel", opts.get("grouping") == "authors"
    use_labels = opts.get("quadrant_classes", "label") == "label"
    _, _, h, w = x.shape
    result: dict = {}
    for b in range(len(x) // batch):
        xb, yb = x[b * batch : (b + 1) * batch], y[b * batch : (b + 1) * batch]
        k = batch // 4
        logits = [model(img.unsqueeze(0))[0].detach() for img in xb]
        pred = [int(z.argmax()) for z in logits]
        members = [[q * k + m if authors else 4 * m + q for q in range(4)] for m in range(k)]
        mosaics = [make_mosaic([xb[j] for j in members[m]]) for m in range(k)]
        probs = []
        for g in range(k):  # group g = images 4g..4g+3, drawn with mosaic g's logits
            z = model(mosaics[g].unsqueeze(0))[0].detach()
            probs.append(torch.softmax(torch.stack([z[pred[4 * g + i]] for i in range(4)]), 0))
        pos = [
            4 * g + int(q)
            for g, q in enumerate(torch.multinomial(torch.stack(probs), 1, generator=generator(opts["seed"], b)))
        ]
        value = {}  # score of each image j, relative to its group's positive
        for j in range(batch):
            g = j // 4
            s = torch.softmax(logits[pos[g]], 0)
            cls = [int(yb[i]) if use_labels else pred[i] for i in range(batch)]
            value[j] = 2 * s[cls[j]] / s[cls[pos[g]]] - 1
        for g in range(k):
            score = torch.zeros(h, w, dtype=x.dtype)
            for q, j in enumerate(members[g]):
                r, col = divmod(q, 2)
                score[r * h // 2 : (r + 1) * h // 2, col * w // 2 : (col + 1) * w // 2] = value[j]
            score[h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1] = 1.0
            c_p = pred[pos[g]]
            for name, method in methods.items():
                lc_r, lc_f = local_consistency(model, method, xb[pos[g]], c_p, pixel)
                lc = max(0.0, lc_r + lc_f) / 2
                r_mos = relevance(method, model, mosaics[g], c_p, pixel)
                if not pixel:
                    r_mos = r_mos.sum(0)  # the score map is the same in every channel
                cont = max(0.0, float((score * r_mos).sum() / (r_mos.sum() + EPS)))
                result[(name, b * batch + pos[g])] = (lc_r, lc_f, lc, cont, lc * cont)
    return result


# ------------------------------------------------------------ the comparison


def input_x_gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, target.reshape(-1, 1)).sum(), xg)
    return (xg * g).detach()


def planted(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """8x8 RGB noise; class c has a bright 3x3 square in channel c at a random place."""
    x = 0.3 * torch.randn(n, 3, 8, 8, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    for i in range(n):
        r, c = torch.randint(0, 6, (2,), generator=gen).tolist()
        x[i, int(y[i]), r : r + 3, c : c + 3] += 2.0
    return x, y


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, dict[str, M.Method], Tensor, Tensor]:
    """A small CNN trained here to find the square, then in float64; 16 fresh images, one with a wrong label."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 3),
    )
    xt, yt = planted(128, gen)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model = model.double().eval()
    x, y = planted(16, gen)
    x = x.double()
    assert (model(x).argmax(1) == y).float().mean() >= 0.75  # it has learnt the task
    y[5] = (y[5] + 1) % 3  # a wrong label: the label and predicted readings of the score map differ
    graph = relprop.trace(model, rules=relprop.rules.AbsLRP())
    methods: dict[str, M.Method] = {
        "InputXGradient": input_x_gradient,
        "absLRP": lambda m, x, t: graph.explain(x, t),
        "constant": lambda m, x, t: torch.ones_like(x),
    }
    return model, methods, x, y


@pytest.mark.parametrize(
    ("batch", "opts"),
    [
        (4, {"seed": 0}),  # the authors' GAE exactly
        (16, {"seed": 1, "grouping": "authors"}),  # their indexing at their README's batch size
        (8, {"seed": 2, "granularity": "pixel", "quadrant_classes": "predicted"}),
    ],
)
def test_gae_matches_the_per_sample_oracle(setup: tuple, batch: int, opts: dict) -> None:
    model, methods, x, y = setup
    want = oracle(model, methods, x, y, batch, opts)
    got = M.GAE(steps=STEPS, **opts).evaluate(model, methods, torch.utils.data.TensorDataset(x, y), batch, False)
    assert got.failures == []
    for name in methods:
        assert sorted(i for n, i in want if n == name) == got.images[name].tolist()
        for row, idx in enumerate(got.images[name].tolist()):
            expected = torch.tensor(want[(name, idx)], dtype=torch.float64)
            actual = torch.stack([got[name][s][row] for s in M.SCORES]).double()
            assert torch.allclose(actual, expected, rtol=1e-6, atol=1e-6), (name, idx, actual, expected)
    # the scores are not all trivial: absLRP has positive LC and C somewhere, the constant map GAE 0
    assert (got["absLRP"]["lc"] > 0).any() and (got["absLRP"]["c"] > 0).any()
    assert (got["constant"]["gae"] == 0).all()
