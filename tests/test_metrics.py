"""GAE metric (relprop.metrics): every formula against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import relprop
from relprop import metrics as M


def t(*rows: object) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------ formulas


def test_normalize_map() -> None:
    # [-1, 2, 4]: positive part [0, 2, 4], max 4 -> [0, 0.5, 1]; all-negative -> zeros
    out = M.normalize_map(t([-1.0, 2.0, 4.0], [-1.0, -2.0, 0.0]))
    assert torch.allclose(out, t([0.0, 0.5, 1.0], [0.0, 0.0, 0.0]))


def test_sim() -> None:
    # [1,0] vs [0,1]: |a-b|_1 = 2, |a|_1+|b|_1 = 2 -> 1 - 1 = 0
    # [2,1] vs [1,1]: |a-b|_1 = 1, sums 3 + 2 = 5 -> 1 - 0.2 = 0.8
    # zero vs zero: defined as identical -> 1
    out = M.sim(t([1.0, 0.0], [2.0, 1.0], [0.0, 0.0]), t([0.0, 1.0], [1.0, 1.0], [0.0, 0.0]))
    assert torch.allclose(out, t(0.0, 0.8, 1.0))


def test_output_differences() -> None:
    # o_0 = 2; MoRF o = 1, 0; LeRF o = 2, 1 -> d_o = [(2-1)/2, (1-0)/2] = [0.5, 0.5]
    d = M.output_differences(t([2.0], [1.0], [0.0]), t([2.0], [2.0], [1.0]))
    assert torch.allclose(d, t([0.5, 0.5]))


def test_attribution_differences() -> None:
    # A0 = [1,0]; step 1: LeRF [1,0] (sim 1), MoRF [0,1] (sim 0) -> 1
    # step 2: LeRF [2,1] vs A0: |[-1,-1]| = 2, sums 1+3 = 4 -> 0.5; MoRF [1,0] -> 1 => 0.5 - 1 = -0.5
    a0 = t([1.0, 0.0])
    a_l = torch.stack([t([1.0, 0.0]), t([2.0, 1.0])])
    a_m = torch.stack([t([0.0, 1.0]), t([1.0, 0.0])])
    assert torch.allclose(M.attribution_differences(a0, a_m, a_l), t([1.0, -0.5]))


def test_lc_robustness() -> None:
    # row 0: d_o=[.5,.5], d_a=[1,0]: |d_o-d_a|_1 = .5+.5 = 1; |d_o|+|d_a| = 1+1 -> 1 - 2*1/2 = 0
    # row 1: equal -> 1;  row 2: d_a = 0 -> 1 - 2*|d_o|/|d_o| = -1;  row 3: both 0 -> 1
    d_o = t([0.5, 0.5], [0.3, -0.2], [0.5, 0.1], [0.0, 0.0])
    d_a = t([1.0, 0.0], [0.3, -0.2], [0.0, 0.0], [0.0, 0.0])
    assert torch.allclose(M.lc_robustness(d_o, d_a), t(0.0, 1.0, -1.0, 1.0))


def test_saliency_difference() -> None:
    # LeRF maps [3,1] + [1,1] = [4,2] -> /6 = [2/3, 1/3]; MoRF [0,2] + [0,2] = [0,4] -> [0,1]
    # I_c = [2/3, 1/3 - 1] = [2/3, -2/3]
    lerf = torch.stack([t([3.0, 1.0]), t([1.0, 1.0])])
    morf = torch.stack([t([0.0, 2.0]), t([0.0, 2.0])])
    assert torch.allclose(M.saliency_difference(morf, lerf), t([2 / 3, -2 / 3]))


def test_lc_faithfulness() -> None:
    # A0 = [1, .5, 0], sign(I_c) = [1, -1, 1]: 1 - .5 + 0 = .5; |A0|_1 = 1.5 -> 1/3; zero map -> 0
    out = M.lc_faithfulness(t([1.0, 0.5, 0.0], [0.0, 0.0, 0.0]), t([0.3, -0.1, 5.0], [1.0, 1.0, 1.0]))
    assert torch.allclose(out, t(1 / 3, 0.0))


def test_local_consistency() -> None:
    # (0.4 + 0.2)/2 = 0.3;  (-0.8 + 0.2)/2 = -0.3 -> clipped to 0
    assert torch.allclose(M.local_consistency(t(0.4, -0.8), t(0.2, 0.2)), t(0.3, 0.0))


def test_mosaic_layout_half_resolution() -> None:
    # image 0 = [[1,3],[5,7]] -> 2x2 average 4; images 1..3 constant 2, 3, 4
    # quadrants: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    x = torch.stack(
        [
            t([1.0, 3.0], [5.0, 7.0]),
            torch.full((2, 2), 2.0, dtype=torch.float64),
            torch.full((2, 2), 3.0, dtype=torch.float64),
            torch.full((2, 2), 4.0, dtype=torch.float64),
        ]
    )
    out = M.mosaic(x.unsqueeze(1))
    assert out.shape == (1, 1, 2, 2)
    assert torch.allclose(out[0, 0], t([4.0, 2.0], [3.0, 4.0]))
    # 3 channels, 6x4 images, two groups: image 4g+i's channel ch is filled with 100*g + 10*i + ch
    vals = torch.tensor(
        [[100 * g + 10 * i + c for c in range(3)] for g in range(2) for i in range(4)], dtype=torch.float64
    )
    x3 = vals.reshape(8, 3, 1, 1).expand(8, 3, 6, 4)
    out3 = M.mosaic(x3)
    assert out3.shape == (2, 3, 6, 4)
    assert out3[1, 2, 0, 0] == 102 and out3[1, 2, 0, 3] == 112 and out3[1, 2, 5, 0] == 122 and out3[1, 2, 5, 3] == 132
    assert (out3[0, 1, :3, 2:] == 11).all()  # top-right block is 3x2 (half of 6x4)
    with pytest.raises(relprop.InputError):
        M.mosaic(torch.zeros(4, 1, 3, 4))


def test_score_map() -> None:
    # s = [.5, .3, .2], quadrant classes [0,1,2,0], positive 0 (c_p = 0, s_p = .5):
    # q1: 2*.3/.5 - 1 = 0.2;  q2: 2*.2/.5 - 1 = -0.2;  q3 (class 0 too): 2*1 - 1 = 1;  q0: 1
    s = M.score_map(t([0.5, 0.3, 0.2]), torch.tensor([[0, 1, 2, 0]]), torch.tensor([0]), (4, 2))
    expected = t([1.0, 0.2], [1.0, 0.2], [-0.2, 1.0], [-0.2, 1.0])
    assert torch.allclose(s[0], expected)


def test_contrastiveness() -> None:
    # A = [[1,.5],[0,.5]], S = [[1,.2],[-.2,1]]: 1 + .1 + 0 + .5 = 1.6, |A|_1 = 2 -> 0.8
    # A = [[0,1],[0,0]], S = [[1,-.5],[..]]: -0.5 -> clipped 0;  zero map -> 0
    a = torch.stack([t([1.0, 0.5], [0.0, 0.5]), t([0.0, 1.0], [0.0, 0.0]), torch.zeros(2, 2, dtype=torch.float64)])
    s = torch.stack([t([1.0, 0.2], [-0.2, 1.0]), t([1.0, -0.5], [1.0, 1.0]), torch.ones(2, 2, dtype=torch.float64)])
    assert torch.allclose(M.contrastiveness(a, s), t(0.8, 0.0, 0.0))


@pytest.mark.parametrize(
    ("probs", "classes", "expected"),
    [
        # constant map: C = max(0, mean S) = max(0, (1 + sum_i (2 r_i - 1))/4) = max(0, (sum r_i - 1)/2)
        # with r_i = s[c_i]/s[c_p] over the 3 negative quadrants
        ([0.5, 0.3, 0.2], [0, 1, 2, 0], 0.5),  # r = .6, .4, 1 -> (2 - 1)/2
        ([0.5, 0.3, 0.2], [0, 1, 2, 2], 0.2),  # r = .6, .4, .4 -> (1.4 - 1)/2
        ([0.8, 0.1, 0.1], [0, 1, 2, 1], 0.0),  # r = 3 * .125 = .375 -> negative -> 0
    ],
)
def test_constant_map_contrastiveness(probs: list[float], classes: list[int], expected: float) -> None:
    s = M.score_map(t(probs), torch.tensor([classes]), torch.tensor([0]), (4, 4))
    c = M.contrastiveness(torch.ones(1, 4, 4, dtype=torch.float64), s)
    assert torch.allclose(c, t(expected))


# ------------------------------------------------------------ perturbation


class Linear4(nn.Module):
    """f(x) = 4 x0 + 3 x1 + 2 x2 + x3 on a 1x2x2 image (pixels in row-major order)."""

    def forward(self, x: Tensor) -> Tensor:
        w = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=x.dtype)
        return (x.flatten(1) * w).sum(1, keepdim=True)


class Coupled(nn.Module):
    """f(x) = 2.5 x0 + x1 (1 + 2 x2) + 0.5 x3: masking x1 kills x2's gradient."""

    def forward(self, x: Tensor) -> Tensor:
        v = x.flatten(1)
        return (2.5 * v[:, 0] + v[:, 1] * (1 + 2 * v[:, 2]) + 0.5 * v[:, 3]).unsqueeze(1)


def masked_order(p: M.Perturbation) -> list[int]:
    zero = p.inputs[:, 0, 0].flatten(1) == 0  # (T+1, 4)
    return [int((zero[i] & ~zero[i - 1]).nonzero()) for i in range(1, zero.shape[0])]


def test_perturbation_linear_order_and_outputs() -> None:
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    target = torch.tensor([0])
    morf = M.perturb(Linear4(), x, target, 4, "morf")
    lerf = M.perturb(Linear4(), x, target, 4, "lerf")
    # |x * grad| = w = [4,3,2,1]: MoRF removes 0,1,2,3; LeRF 3,2,1,0
    assert masked_order(morf) == [0, 1, 2, 3]
    assert masked_order(lerf) == [3, 2, 1, 0]
    # outputs: 10, 10-4=6, 6-3=3, 3-2=1, 0  and 10, 9, 7, 4, 0
    assert torch.allclose(morf.outputs[:, 0], t(10.0, 6.0, 3.0, 1.0, 0.0))
    assert torch.allclose(lerf.outputs[:, 0], t(10.0, 9.0, 7.0, 4.0, 0.0))
    assert torch.allclose(morf.maps[0, 0], t([4.0, 3.0], [2.0, 1.0]))
    # d_o = (LeRF - MoRF)/10 = [.3, .4, .3, 0]
    assert torch.allclose(M.output_differences(morf.outputs, lerf.outputs), t([0.3, 0.4, 0.3, 0.0]))


def test_perturbation_ranking_recomputed_each_step() -> None:
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    target = torch.tensor([0])
    # at x = 1: |x*grad| = [2.5, 1 + 2 = 3, 2 x1 = 2, 0.5] -> static order x1, x0, x2, x3
    # MoRF: mask x1; now grad x2 = 2 x1 = 0 -> ranking x0 (2.5), x3 (.5), x2 (0): order 1, 0, 3, 2
    morf = M.perturb(Coupled(), x, target, 4, "morf")
    assert masked_order(morf) == [1, 0, 3, 2]
    # LeRF: mask x3 (.5), then x2 (2); now grad x1 = 1 + 0 = 1 < 2.5 -> x1, then x0: 3, 2, 1, 0
    # (a static ranking would give 3, 2, 0, 1)
    lerf = M.perturb(Coupled(), x, target, 4, "lerf")
    assert masked_order(lerf) == [3, 2, 1, 0]
    # f: 6 -> 5.5 -> 2.5 + 1 = 3.5 -> 2.5 -> 0
    assert torch.allclose(lerf.outputs[:, 0], t(6.0, 5.5, 3.5, 2.5, 0.0))


def test_perturbation_fractions() -> None:
    # 16 pixels, T = 3: masked totals round(16/3) = 5, round(32/3) = 11, 16
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2)).double()
    p = M.perturb(model, x.double(), torch.tensor([0, 1]), 3, "morf")
    zeros = (p.inputs == 0).all(2).flatten(2).sum(2)  # (T+1, B) masked pixels
    assert zeros.tolist() == [[0, 0], [5, 5], [11, 11], [16, 16]]


# ------------------------------------------------------------ evaluate


def tiny_cnn(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def images(n: int = 8, channels: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, channels, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_evaluate_end_to_end(tmp_path: object) -> None:
    model = tiny_cnn()
    methods = {
        "abslrp": M.relprop_method(relprop.rules.AbsLRP()),
        "constant": M.constant_method(),
        "random": M.random_method(0),
    }
    res = M.GAE(steps=10, seed=0).evaluate(model, methods, images(), batch_size=8, progress=False)
    assert res.failures == []
    for m in methods:
        for s in ("lc_r", "lc_f", "lc", "c", "gae"):
            v = res[m][s]
            assert v.shape == (2,) and torch.isfinite(v).all()
        assert (res[m]["lc_r"].abs() <= 1 + 1e-6).all() and (res[m]["lc_f"].abs() <= 1 + 1e-6).all()
        for s in ("lc", "c", "gae"):
            assert ((res[m][s] >= 0) & (res[m][s] <= 1 + 1e-6)).all()
        assert torch.allclose(res[m]["gae"], res[m]["lc"] * res[m]["c"])
    # constant map: A_t never changes, so d^A = 0 and LC_R = 1 - 2|d_o|/|d_o| = -1;
    # LC = max(0, (-1 + LC_F)/2) = 0 since LC_F <= 1, hence GAE = 0 whatever C is
    assert torch.allclose(res["constant"]["lc_r"], torch.full((2,), -1.0))
    assert (res["constant"]["gae"] == 0).all()
    rows = res.table()
    assert len(rows) == 15 and {"method", "score", "mean", "ci95", "n"} <= set(rows[0])
    assert "abslrp" in str(rows) and "±" in str(rows)
    w = res.wilcoxon("abslrp", "constant")
    assert 0 <= w.pvalue <= 1
    path = f"{tmp_path}/gae.png"
    res.plot(path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_deterministic_and_grayscale_loader() -> None:
    model = tiny_cnn(1)
    data = DataLoader(images(12, 1), batch_size=4)
    runs = [
        M.GAE(steps=3, seed=5).evaluate(model, {"rand": M.random_method(3)}, data, progress=False) for _ in range(2)
    ]
    for s in ("lc_r", "lc_f", "c", "gae"):
        assert runs[0]["rand"][s].shape == (3,)
        assert torch.equal(runs[0]["rand"][s], runs[1]["rand"][s])


# ------------------------------------------------------------ errors


def test_errors() -> None:
    model, gae = tiny_cnn(), M.GAE(steps=2)
    const = {"constant": M.constant_method()}
    with pytest.raises(relprop.InputError, match="multiple of 4"):
        gae.evaluate(model, const, images(), batch_size=6, progress=False)
    with pytest.raises(relprop.InputError, match="at least 4"):
        gae.evaluate(model, const, images(3), progress=False)
    bad = images()
    bad.tensors[1][2] = 7
    with pytest.raises(relprop.InputError, match="sample 2"):
        gae.evaluate(model, const, bad, batch_size=8, progress=False)
    with pytest.raises(relprop.InputError, match="'short'"):
        gae.evaluate(model, {"short": lambda m, x, c: x[:, :1]}, images(), progress=False)
    with pytest.raises(relprop.InputError, match="'nan'.*non-finite"):
        gae.evaluate(model, {"nan": lambda m, x, c: x * float("nan")}, images(), progress=False)


def test_failing_method_recorded() -> None:
    calls = {"n": 0}

    def flaky(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        calls["n"] += 1
        if calls["n"] == 1:  # the first call (mosaic of batch 0) fails
            raise RuntimeError("boom")
        return x.abs()

    res = M.GAE(steps=2).evaluate(
        tiny_cnn(), {"flaky": flaky, "constant": M.constant_method()}, images(8), batch_size=4, progress=False
    )
    assert [(m, b) for m, b, _ in res.failures] == [("flaky", 0)]
    assert "boom" in res.failures[0][2]
    assert res["flaky"]["gae"].shape == (1,) and res["constant"]["gae"].shape == (2,)
    # the positive images are data indices: one per group of four, the failed batch has none
    groups = res.images["constant"] // 4
    assert groups.tolist() == [0, 1] and torch.equal(res.images["flaky"], res.images["constant"][1:])
    # tests pair methods on the images both were scored on (1 pair here), not by position
    assert res.wilcoxon("flaky", "constant").pvalue >= 0
    with pytest.raises(relprop.InputError, match="'nope'.*flaky"):
        res.wilcoxon("nope", "flaky")


def test_sample_positive_proportions_and_seed() -> None:
    # mosaic logits [0, 0, ln 3] -> softmax [.2, .2, .6]; quadrant classes [0, 1, 2, 2]
    # -> weights [.2, .2, .6, .6] / 1.6 = [1/8, 1/8, 3/8, 3/8]
    z = torch.tensor([[0.0, 0.0, float(torch.log(torch.tensor(3.0)))]]).expand(20000, 3)
    classes = torch.tensor([[0, 1, 2, 2]]).expand(20000, 4)
    q = M.sample_positive(z, classes, torch.Generator().manual_seed(0))
    freq = torch.bincount(q, minlength=4).double() / 20000
    assert torch.allclose(freq, t(1 / 8, 1 / 8, 3 / 8, 3 / 8), atol=0.015)
    assert torch.equal(q, M.sample_positive(z, classes, torch.Generator().manual_seed(0)))
