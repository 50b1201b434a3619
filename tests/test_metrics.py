"""GAE metric (relprop.metrics): every formula against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import relprop
from relprop import methods as RM
from relprop.evaluation import metrics as M


def t(*rows: object) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------ formulas (section 3.2)


def test_normalisations() -> None:
    # L1: [1, -3] / 4;  max|.|: [1, -4] / 4;  the 1e-9 of the authors' code keeps zero maps zero
    assert torch.allclose(M.l1_normalize(t([1.0, -3.0], [0.0, 0.0])), t([0.25, -0.75], [0.0, 0.0]))
    assert torch.allclose(M.max_normalize(t([1.0, -4.0], [0.0, 0.0])), t([0.25, -1.0], [0.0, 0.0]))
    assert M.l1_normalize(t([2.0, 2.0]))[0, 0] == 2 / (4 + 1e-9)


def test_normalize_map() -> None:
    # [-1, 2, 4]: positive part [0, 2, 4], max 4 -> [0, .5, 1]
    # [-8, 2, 4]: /8 -> [-1, .25, .5] -> positive part [0, .25, .5] -> /.5 -> [0, .5, 1]
    # all-negative -> zeros
    out = M.normalize_map(t([-1.0, 2.0, 4.0], [-8.0, 2.0, 4.0], [-1.0, -2.0, 0.0]))
    assert torch.allclose(out, t([0.0, 0.5, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.0]))


def test_dice() -> None:
    # [1,0] vs [0,1]: |a-b|_1 = 2, |a|_1+|b|_1 = 2 -> 1
    # [2,1] vs [1,1]: |a-b|_1 = 1, sums 3 + 2 = 5 -> 0.2;  zero vs zero: 0 / 1e-9 = 0
    out = M.dice(t([1.0, 0.0], [2.0, 1.0], [0.0, 0.0]), t([0.0, 1.0], [1.0, 1.0], [0.0, 0.0]))
    assert torch.allclose(out, t(1.0, 0.2, 0.0))


def test_output_differences() -> None:
    # o_0 = 2; MoRF o = 1, 0; LeRF o = 2, 1 -> d_o = [2/2 - 1/2, 1/2 - 0/2] = [.5, .5]
    # o_0 = -2 (signed logits): MoRF -1, -4; LeRF -2, 0 -> [1 - .5, 0 - 2] = [.5, -2]
    d = M.output_differences(t([2.0, -2.0], [1.0, -1.0], [0.0, -4.0]), t([2.0, -2.0], [2.0, -2.0], [1.0, 0.0]))
    assert torch.allclose(d, t([0.5, 0.5], [0.5, -2.0]))


def test_attribution_differences() -> None:
    # d^A_t = dice(A0, MoRF_t) - dice(A0, LeRF_t), A0 = [1,0]
    # step 1: MoRF [0,1] (dice 1), LeRF [1,0] (dice 0) -> 1
    # step 2: MoRF [1,0] (0); LeRF [2,1]: |[-1,-1]|_1 = 2, sums 1+3 = 4 -> .5 => 0 - .5 = -.5
    a0 = t([1.0, 0.0])
    a_l = torch.stack([t([1.0, 0.0]), t([2.0, 1.0])])
    a_m = torch.stack([t([0.0, 1.0]), t([1.0, 0.0])])
    assert torch.allclose(M.attribution_differences(a0, a_m, a_l), t([1.0, -0.5]))


def test_lc_robustness() -> None:
    # 1 - 2 dice(d_a, d_o)
    # row 0: d_o=[.5,.5], d_a=[1,0]: |d_o-d_a|_1 = .5+.5 = 1; |d_o|+|d_a| = 1+1 -> 1 - 2*1/2 = 0
    # row 1: equal -> 1;  row 2: d_a = 0 -> 1 - 2*|d_o|/|d_o| = -1;  row 3: both 0 -> 1 - 0 = 1
    d_o = t([0.5, 0.5], [0.3, -0.2], [0.5, 0.1], [0.0, 0.0])
    d_a = t([1.0, 0.0], [0.3, -0.2], [0.0, 0.0], [0.0, 0.0])
    assert torch.allclose(M.lc_robustness(d_o, d_a), t(0.0, 1.0, -1.0, 1.0))


def test_impact_map() -> None:
    # row 0: LeRF maps [3,1,0] + [1,1,0] = [4,2,0] -> /6 = [2/3, 1/3, 0]; MoRF [0,4,0] -> [0,1,0]
    #        difference [2/3, -2/3, 0] -> sign [1, -1, 0]
    # row 1: LeRF sum [4, 2] -> [2/3, 1/3]; MoRF sum [2, .5] -> [.8, .2]: difference [-.13, .13]
    #        -> [-1, 1] (without the L1 normalisation it would be [1, 1])
    lerf = torch.stack([t([3.0, 1.0, 0.0], [4.0, 2.0, 0.0]), t([1.0, 1.0, 0.0], [0.0, 0.0, 0.0])])
    morf = torch.stack([t([0.0, 2.0, 0.0], [2.0, 0.5, 0.0]), t([0.0, 2.0, 0.0], [0.0, 0.0, 0.0])])
    assert torch.equal(M.impact_map(morf, lerf), t([1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]))


def test_lc_faithfulness() -> None:
    # A0 = [1, .5, 0], I_c = [1, -1, 1]: 1 - .5 + 0 = .5; sum A0 = 1.5 -> 1/3; zero map -> 0
    out = M.lc_faithfulness(t([1.0, 0.5, 0.0], [0.0, 0.0, 0.0]), t([1.0, -1.0, 1.0], [1.0, 1.0, 1.0]))
    assert torch.allclose(out, t(1 / 3, 0.0))


def test_local_consistency() -> None:
    # relu(0.4 + 0.2)/2 = 0.3;  relu(-0.8 + 0.2)/2 -> 0
    assert torch.allclose(M.local_consistency(t(0.4, -0.8), t(0.2, 0.2)), t(0.3, 0.0))


def test_downsample_takes_even_rows_and_columns() -> None:
    x = torch.arange(24.0, dtype=torch.float64).reshape(1, 1, 4, 6)
    assert torch.equal(M.downsample(x)[0, 0], t([0.0, 2.0, 4.0], [12.0, 14.0, 16.0]))
    with pytest.raises(relprop.InputError, match="even"):
        M.downsample(torch.zeros(4, 1, 3, 4))


def test_mosaic_layout_half_resolution() -> None:
    # image 0 = [[1,3],[5,7]] -> nearest downsampling keeps 1; images 1..3 constant 2, 3, 4
    # quadrants: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    x = torch.stack([t([1.0, 3.0], [5.0, 7.0])] + [torch.full((2, 2), v, dtype=torch.float64) for v in (2, 3, 4)])
    out = M.mosaic(x.unsqueeze(1))
    assert out.shape == (1, 1, 2, 2)
    assert torch.equal(out[0, 0], t([1.0, 2.0], [3.0, 4.0]))
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
    with pytest.raises(relprop.InputError, match="groups of 4"):
        M.mosaic(torch.zeros(6, 1, 4, 4))


def test_mosaic_authors_grouping() -> None:
    # 8 images (k = 2), image j filled with j. consecutive: mosaic m quadrant q = image 4m + q;
    # authors: image q*k + m, so mosaic 0 = [0, 2, 4, 6], mosaic 1 = [1, 3, 5, 7]
    x = torch.arange(8.0, dtype=torch.float64).reshape(8, 1, 1, 1).expand(8, 1, 2, 2)
    corners = [(0, 0), (0, 1), (1, 0), (1, 1)]
    cons, auth = M.mosaic(x), M.mosaic(x, "authors")
    assert [[int(cons[m, 0, r, c]) for r, c in corners] for m in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [[int(auth[m, 0, r, c]) for r, c in corners] for m in range(2)] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert torch.equal(M.mosaic(x[:4], "authors"), M.mosaic(x[:4]))  # the same at batch size 4
    with pytest.raises(relprop.InputError, match="grouping"):
        M.mosaic(x, "rows")


def test_quadrant_scores() -> None:
    # s = [.5, .3, .2], quadrant classes [0,1,2,0]
    # positive 0 (c_p = 0, s_p = .5): 2*.5/.5 - 1 = 1, 2*.3/.5 - 1 = .2, 2*.2/.5 - 1 = -.2, 1
    # positive 1 (c_p = 1, s_p = .3): 2*.5/.3 - 1 = 7/3, 1, 2*.2/.3 - 1 = 1/3, 7/3 (above 1: s_i > s_p)
    s = t([0.5, 0.3, 0.2], [0.5, 0.3, 0.2])
    v = M.quadrant_scores(s, torch.tensor([[0, 1, 2, 0]] * 2), torch.tensor([0, 1]))
    assert torch.allclose(v, t([1.0, 0.2, -0.2, 1.0], [7 / 3, 1.0, 1 / 3, 7 / 3]))


def test_score_map() -> None:
    # quadrant values [1, .2, -.2, 1] on 4x4: 2x2 quadrants, then the 2x2 centre square
    # (rows 1-2, columns 1-2) set to 1
    s = M.score_map(t([1.0, 0.2, -0.2, 1.0]), (4, 4))
    expected = t([1.0, 1.0, 0.2, 0.2], [1.0, 1.0, 1.0, 0.2], [-0.2, 1.0, 1.0, 1.0], [-0.2, -0.2, 1.0, 1.0])
    assert s.shape == (1, 4, 4) and torch.equal(s[0], expected)
    # 6x4: quadrants 3x2, centre rows 2-3 and columns 1-2
    s = M.score_map(t([0.5, 0.2, -0.2, 0.7]), (6, 4))[0]
    assert s[0, 0] == 0.5 and s[0, 3] == 0.2 and s[5, 0] == -0.2 and s[5, 3] == 0.7
    assert (s[2:4, 1:3] == 1).all() and s[1, 1] == 0.5 and s[4, 2] == 0.7 and s[2, 0] == 0.5 and s[3, 3] == 0.7


def test_score_map_authors_grouping() -> None:
    # values (2, 4) = 10*g + i for image 4g+i; authors: mosaic m quadrant q shows image q*2 + m
    v = torch.tensor([[0.0, 1, 2, 3], [10, 11, 12, 13]], dtype=torch.float64)
    s = M.score_map(v, (6, 6), "authors")
    corners = [(0, 0), (0, 5), (5, 0), (5, 5)]
    assert [[float(s[m, r, c]) for r, c in corners] for m in range(2)] == [[0, 2, 10, 12], [1, 3, 11, 13]]
    assert (s[:, 2:4, 2:4] == 1).all()


def test_contrastiveness() -> None:
    # A = [[1,.5],[0,.5]], S = [[1,.2],[-.2,1]]: 1 + .1 + 0 + .5 = 1.6, sum A = 2 -> 0.8
    # A = [[0,1],[0,0]], S = [[1,-.5],[..]]: -0.5 -> clipped 0;  zero map -> 0
    a = torch.stack([t([1.0, 0.5], [0.0, 0.5]), t([0.0, 1.0], [0.0, 0.0]), torch.zeros(2, 2, dtype=torch.float64)])
    s = torch.stack([t([1.0, 0.2], [-0.2, 1.0]), t([1.0, -0.5], [1.0, 1.0]), torch.ones(2, 2, dtype=torch.float64)])
    assert torch.allclose(M.contrastiveness(a, s), t(0.8, 0.0, 0.0))
    # per feature: a (k, C, H, W) against S (k, 1, H, W): channel 0 as above, channel 1 all ones (sum S = 2)
    a2 = torch.stack([a[0], torch.ones(2, 2, dtype=torch.float64)]).unsqueeze(0)
    assert torch.allclose(M.contrastiveness(a2, s[:1, None]), t((1.6 + 2.0) / 6))


@pytest.mark.parametrize(
    ("probs", "classes", "expected"),
    [
        # constant map on 8x8: C = max(0, mean S); each 4x4 quadrant has 15 cells of its value
        # v_i = 2 r_i - 1 (r_i = s[c_i]/s[c_p]; positive quadrant 1) and one centre cell of 1
        # -> (15 sum_i v_i + 4) / 64
        ([0.5, 0.3, 0.2], [0, 1, 2, 0], 34 / 64),  # r = .6, .4, 1 -> v sum = 1 + .2 - .2 + 1 = 2
        ([0.5, 0.3, 0.2], [0, 1, 2, 2], 16 / 64),  # r = .6, .4, .4 -> v sum = .8
        ([0.8, 0.1, 0.1], [0, 1, 2, 1], 0.0),  # r = .125 -> v sum = 1 - 3 * .75 = -1.25 -> negative -> 0
    ],
)
def test_constant_map_contrastiveness(probs: list[float], classes: list[int], expected: float) -> None:
    v = M.quadrant_scores(t(probs), torch.tensor([classes]), torch.tensor([0]))
    c = M.contrastiveness(torch.ones(1, 8, 8, dtype=torch.float64), M.score_map(v, (8, 8)))
    assert torch.allclose(c, t(expected))


def test_sample_positive_proportions_and_seed() -> None:
    # mosaic logits [0, 0, ln 3] at quadrant classes [0, 1, 2, 2]: softmax of [0, 0, ln 3, ln 3]
    # = [1, 1, 3, 3] / 8
    z = torch.tensor([[0.0, 0.0, float(torch.log(torch.tensor(3.0)))]]).expand(20000, 3)
    classes = torch.tensor([[0, 1, 2, 2]]).expand(20000, 4)
    q = M.sample_positive(z, classes, M.batch_generator(0, 0))
    freq = torch.bincount(q, minlength=4).double() / 20000
    assert torch.allclose(freq, t(1 / 8, 1 / 8, 3 / 8, 3 / 8), atol=0.015)
    assert torch.equal(q, M.sample_positive(z, classes, M.batch_generator(0, 0)))
    assert not torch.equal(q, M.sample_positive(z, classes, M.batch_generator(0, 1)))
    assert not torch.equal(q, M.sample_positive(z, classes, M.batch_generator(1, 0)))


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


def states(p: M.Perturbation) -> list[list[float]]:
    return p.inputs[:, 0].flatten(1).tolist()


def test_ranking_map() -> None:
    # f = w.x with w = [4, 3, 2, 1]; loss = mean |f| over the batch: the map |x * df/dx| / B,
    # L1-normalised, so B drops out: x = [1, 1, 1, 1] -> [4, 3, 2, 1]/10; x = [-1, 0, 2, 1] (f = 1):
    # |[-4, 0, 4, 1]| / 9.  Outputs keep their sign: x = -[1, 1, 1, 1] -> f = -10
    x = t([1.0, 1.0, 1.0, 1.0], [-1.0, 0.0, 2.0, 1.0], [-1.0, -1.0, -1.0, -1.0]).reshape(3, 1, 2, 2)
    o, m = M.ranking_map(Linear4(), x, torch.tensor([0, 0, 0]))
    assert torch.allclose(o, t(10.0, 1.0, -10.0))
    assert m.shape == (3, 1, 2, 2)
    assert torch.allclose(m.flatten(1), t([0.4, 0.3, 0.2, 0.1], [4 / 9, 0.0, 4 / 9, 1 / 9], [0.4, 0.3, 0.2, 0.1]))
    # per pixel: 3 channels summed, f = sum over channels of w.x
    x3 = torch.ones(1, 3, 2, 2, dtype=torch.float64) * t(1.0, 2.0, 1.0).reshape(1, 3, 1, 1)
    _, mp = M.ranking_map(lambda v: Linear4()(v.sum(1, keepdim=True)), x3, torch.tensor([0]), "pixel")
    assert mp.shape == (1, 2, 2) and torch.allclose(mp.flatten(1), t([0.4, 0.3, 0.2, 0.1]))


def test_mask_features() -> None:
    x = t(1.0, 2.0, 3.0, 4.0).reshape(1, 1, 2, 2)
    maps = t(0.1, 0.4, 0.2, 0.3).reshape(1, 1, 2, 2)
    assert M.mask_features(x, maps, 2, largest=True).flatten().tolist() == [1, 0, 3, 0]
    assert M.mask_features(x, maps, 2, largest=False).flatten().tolist() == [0, 2, 0, 4]
    # whole pixels: a (B, H, W) map masks every channel of the chosen pixels
    x2 = torch.cat([x, 10 * x], 1)
    out = M.mask_features(x2, maps[:, 0], 1, largest=True)
    assert out[0, 0].flatten().tolist() == [1, 0, 3, 4] and out[0, 1].flatten().tolist() == [10, 0, 30, 40]


def test_perturbation_linear_order_and_outputs() -> None:
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    target = torch.tensor([0])
    morf = M.perturb(Linear4(), x, target, 4, "morf")
    lerf = M.perturb(Linear4(), x, target, 4, "lerf")
    # fractions .25, .5, .75 of 4 features: k = 1, 2, 3 masked by topk of the current map
    # MoRF: map [4,3,2,1] -> x0; map [0,3,2,1] -> top 2 = x1, x2 (the masked x0 ranks last);
    # LeRF: map [4,3,2,1] -> x3; map [4,3,2,0] -> bottom 2 = x3 (again), x2; then x3, x2, x1
    assert states(morf) == [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert states(lerf) == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    # outputs: 10, 6, 1, 0 and 10, 9, 7, 4
    assert torch.allclose(morf.outputs[:, 0], t(10.0, 6.0, 1.0, 0.0))
    assert torch.allclose(lerf.outputs[:, 0], t(10.0, 9.0, 7.0, 4.0))
    assert torch.allclose(morf.maps[1, 0, 0], t([0.0, 0.5], [2 / 6, 1 / 6]))
    # d_o = LeRF/10 - MoRF/10 = [.3, .6, .4]
    assert torch.allclose(M.output_differences(morf.outputs, lerf.outputs), t([0.3, 0.6, 0.4]))


def test_perturbation_ranking_recomputed_each_step() -> None:
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    target = torch.tensor([0])
    # at x = 1: |x*grad| = [2.5, 1 + 2 = 3, 2 x1 = 2, 0.5]
    # LeRF: mask x3; then bottom 2 of [2.5, 3, 2, 0]: x3, x2; now grad x1 = 1 + 0 = 1 < 2.5, so
    # bottom 3 of [2.5, 1, 0, 0] adds x1 (a static ranking would mask x0 instead)
    lerf = M.perturb(Coupled(), x, target, 4, "lerf")
    assert states(lerf) == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    # f: 6 -> 5.5 -> 2.5 + 1 = 3.5 -> 2.5
    assert torch.allclose(lerf.outputs[:, 0], t(6.0, 5.5, 3.5, 2.5))
    # MoRF: mask x1 (3); now grad x2 = 2 x1 = 0: top 2 of [2.5, 0, 0, .5] = x0, x3 (x2, statically
    # second, survives)
    morf = M.perturb(Coupled(), x, target, 3, "morf")
    assert states(morf) == [[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 1, 0]]


def test_perturbation_fractions_float32() -> None:
    # 10 features, T = 10: int(p * 10) with p = torch.linspace(0.1, 1, 10) in float32 gives
    # 1, 1, 2, 3, 4, 6, 7, 8, 9 (0.2 is 0.19999999 in float32; exact fractions would give 1..9).
    # LeRF re-selects the masked (zero) features, so it masks that many in total; MoRF ranks them
    # last and masks that many more each step: 1, 2, 4, all.
    x = torch.rand(2, 1, 2, 5, generator=torch.Generator().manual_seed(0)).double() + 0.1
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 2)).double()
    target = torch.tensor([0, 1])
    lerf = M.perturb(model, x, target, 10, "lerf")
    morf = M.perturb(model, x, target, 10, "morf")
    zeros = (lerf.inputs == 0).flatten(2).sum(2)  # (T, B)
    assert zeros[:, 0].tolist() == zeros[:, 1].tolist() == [0, 1, 1, 2, 3, 4, 6, 7, 8, 9]
    zeros = (morf.inputs == 0).flatten(2).sum(2)
    assert zeros[:, 0].tolist() == zeros[:, 1].tolist() == [0, 1, 2, 4, 7, 10, 10, 10, 10, 10]


def test_perturbation_pixels() -> None:
    # 3 channels, f = sum over channels of w.x: per pixel the ranking is [4, 3, 2, 1]; whole pixels go
    x = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    model = lambda v: Linear4()(v.sum(1, keepdim=True))  # noqa: E731
    p = M.perturb(model, x, torch.tensor([0]), 4, "lerf", granularity="pixel")
    assert p.maps.shape == (4, 1, 2, 2)
    for c in range(3):
        assert p.inputs[:, 0, c].flatten(1).tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    with pytest.raises(relprop.InputError, match="granularity"):
        M.perturb(model, x, torch.tensor([0]), 4, "lerf", granularity="channel")


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
        "abslrp": RM.relprop_method(relprop.rules.AbsLRP()),
        "constant": RM.constant_method(),
        "random": RM.random_method(0),
    }
    res = M.GAE(steps=10, seed=0).evaluate(model, methods, images(), batch_size=8, progress=False)
    assert res.failures == []
    for m in methods:
        for s in ("lc_r", "lc_f", "lc", "c", "gae"):
            v = res[m][s]
            assert v.shape == (2,) and torch.isfinite(v).all()
        assert (res[m]["lc_r"].abs() <= 1 + 1e-6).all() and (res[m]["lc_f"].abs() <= 1 + 1e-6).all()
        assert ((res[m]["lc"] >= 0) & (res[m]["lc"] <= 1 + 1e-6)).all()
        # C >= 0; with dataset labels as quadrant classes it can exceed 1 (s[y_i] > s[y_p])
        assert (res[m]["c"] >= 0).all() and (res[m]["gae"] >= 0).all()
        assert torch.allclose(res[m]["gae"], res[m]["lc"] * res[m]["c"])
    # constant map: A_t never changes, so d^A = 0 and LC_R = 1 - 2|d_o|/(|d_o| + 1e-9) = -1;
    # LC = relu(-1 + LC_F)/2 = 0 since LC_F < 1, hence GAE = 0 whatever C is
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


def test_evaluate_options() -> None:
    model, data = tiny_cnn(), images(8)
    ms = {"abslrp": RM.relprop_method(relprop.rules.AbsLRP())}

    def run(batch_size: int = 4, **kw: object) -> dict[str, Tensor]:
        return M.GAE(steps=3, seed=2, **kw).evaluate(model, ms, data, batch_size, progress=False)["abslrp"]

    base = run()
    # at batch size 4 the authors' grouping is the consecutive one
    for s in M.SCORES:
        assert torch.equal(base[s], run(grouping="authors")[s])
    # quadrant classes from the predictions: C <= 1 (s[c_i] <= s[c_p] for the predicted c_p)
    pred = run(quadrant_classes="predicted")
    assert torch.equal(pred["lc"], base["lc"]) and (pred["c"] <= 1 + 1e-6).all()
    # labels equal to the predictions: the two readings agree
    with torch.no_grad():
        y = model(data.tensors[0]).argmax(1)
    same = M.GAE(steps=3, seed=2).evaluate(model, ms, TensorDataset(data.tensors[0], y), 4, progress=False)
    assert torch.equal(same["abslrp"]["c"], pred["c"])
    # whole pixels: other maps, other numbers
    assert not torch.equal(run(granularity="pixel")["lc"], base["lc"])
    assert not torch.equal(run(8, grouping="authors")["c"], run(8)["c"])


def test_shards_merge_to_the_whole() -> None:
    model, data = tiny_cnn(), images(16)
    ms = {"abslrp": RM.relprop_method(relprop.rules.AbsLRP()), "constant": RM.constant_method()}
    gae = M.GAE(steps=3, seed=7)
    whole = gae.evaluate(model, ms, data, batch_size=4, progress=False)
    parts = [gae.evaluate(model, ms, data, batch_size=4, progress=False, shard=(r, 3)) for r in (2, 0, 1)]
    assert sorted(len(p.images["constant"]) for p in parts) == [1, 1, 2]  # batches 0, 3 | 1 | 2
    merged = M.GAEResult.merge(parts)
    for m in ms:
        assert torch.equal(merged.images[m], whole.images[m])
        assert (merged.images[m] // 4).tolist() == [0, 1, 2, 3]
        for s in M.SCORES:
            assert torch.equal(merged[m][s], whole[m][s])
    with pytest.raises(relprop.InputError, match="overlap"):
        M.GAEResult.merge([whole, parts[0]])
    for bad in ((3, 3), (0, 0), (1,), "0/2"):
        with pytest.raises(relprop.InputError, match="shard"):
            gae.evaluate(model, ms, data, batch_size=4, progress=False, shard=bad)  # type: ignore[arg-type]


def test_evaluate_deterministic_and_grayscale_loader() -> None:
    model = tiny_cnn(1)
    data = DataLoader(images(12, 1), batch_size=4)
    runs = [
        M.GAE(steps=3, seed=5).evaluate(model, {"rand": RM.random_method(3)}, data, progress=False) for _ in range(2)
    ]
    for s in ("lc_r", "lc_f", "c", "gae"):
        assert runs[0]["rand"][s].shape == (3,)
        assert torch.equal(runs[0]["rand"][s], runs[1]["rand"][s])


# ------------------------------------------------------------ errors


def test_errors() -> None:
    model, gae = tiny_cnn(), M.GAE(steps=2)
    const = {"constant": RM.constant_method()}
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
    for kw in ({"steps": 1}, {"granularity": "channel"}, {"quadrant_classes": "true"}, {"grouping": "rows"}):
        with pytest.raises(relprop.InputError, match=next(iter(kw))):
            M.GAE(**kw)  # type: ignore[arg-type]


def test_failing_method_recorded() -> None:
    calls = {"n": 0}

    def flaky(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        calls["n"] += 1
        if calls["n"] == 1:  # the first call (mosaic of batch 0) fails
            raise RuntimeError("boom")
        return x.abs()

    res = M.GAE(steps=2).evaluate(
        tiny_cnn(), {"flaky": flaky, "constant": RM.constant_method()}, images(8), batch_size=4, progress=False
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
