"""GAE's results: per-image scores of each method (:class:`GAEResult`), their table, paired test and plot.

:mod:`relprop.evaluation.metrics` computes them (:class:`~relprop.evaluation.metrics.GAE`)
and re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["SCORES", "GAEResult", "Table", "WilcoxonResult"]

SCORES = ("lc_r", "lc_f", "lc", "c", "gae")


class Table(list):
    """The scores' table: rows ``{"method", "score", "mean", "ci95", "n"}``; ``str()`` gives the text table."""

    def __str__(self) -> str:
        lines = [f"{'method':<20} " + " ".join(f"{s:>17}" for s in SCORES)]
        methods = list(dict.fromkeys(r["method"] for r in self))
        for m in methods:
            cells = {r["score"]: r for r in self if r["method"] == m}
            lines.append(f"{m:<20} " + " ".join(f"{cells[s]['mean']:>8.3f} ± {cells[s]['ci95']:<6.3f}" for s in SCORES))
        return "\n".join(lines)


class WilcoxonResult(NamedTuple):
    """A paired Wilcoxon signed-rank test's outcome.

    Attributes:
        statistic: the test statistic.
        pvalue: its p-value.
    """

    statistic: float
    pvalue: float


@dataclass
class GAEResult:
    """GAE's scores of every method, one value per positive image.

    Made by [`GAE.evaluate`][relprop.metrics.GAE.evaluate]; ``result[method][score]`` is
    ``result.scores[method][score]``.

    Attributes:
        scores: ``{method: {score: tensor}}``, one value per positive image, score in
            ``lc_r, lc_f, lc, c, gae``.
        failures: ``(method, batch index, message)`` of every batch a method failed on.
        images: ``{method: tensor}``, the data index of each scored positive image (a batch a
            method failed on has none).
    """

    scores: dict[str, dict[str, Tensor]]
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    images: dict[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, method: str) -> dict[str, Tensor]:
        return self.scores[method]

    @classmethod
    def merge(cls, results: Sequence[GAEResult]) -> GAEResult:
        """Join the results of disjoint shards (``GAE.evaluate(..., shard=...)``) into one.

        Args:
            results: the shards' results.

        Returns:
            One result: each method's scores concatenated and ordered by data index, failures
            by batch.

        Raises:
            InputError: no results, a result without data indices, or results that overlap.
        """
        if not results:
            raise InputError("GAEResult.merge needs at least one result")
        names = list(dict.fromkeys(m for r in results for m in r.scores))
        scores: dict[str, dict[str, Tensor]] = {}
        images: dict[str, Tensor] = {}
        for m in names:
            parts = [r for r in results if m in r.scores]
            if any(m not in r.images for r in parts):
                raise InputError(f"method {m!r}: a result without data indices cannot be merged")
            idx = torch.cat([r.images[m] for r in parts])
            if len(torch.unique(idx)) != len(idx):
                raise InputError(f"method {m!r}: the results overlap (an image is scored twice)")
            order = torch.argsort(idx)
            images[m] = idx[order]
            scores[m] = {s: torch.cat([r.scores[m][s] for r in parts])[order] for s in SCORES}
        failures = sorted((f for r in results for f in r.failures), key=lambda f: (f[1], names.index(f[0])))
        return cls(scores, failures, images)

    def table(self) -> Table:
        """Summarise each score: mean ± half-width of the 95% t-interval.

        Returns:
            The [`Table`][relprop.metrics.Table], one row per method and score.
        """
        from scipy import stats

        rows = Table()
        for m, sc in self.scores.items():
            for s in SCORES:
                v = sc[s].double()
                n = v.numel()
                mean = float(v.mean()) if n else math.nan
                ci = float(stats.t.ppf(0.975, n - 1) * v.std() / math.sqrt(n)) if n > 1 else math.nan
                rows.append({"method": m, "score": s, "mean": mean, "ci95": ci, "n": n})
        return rows

    def wilcoxon(self, a: str, b: str, score: str = "gae") -> WilcoxonResult:
        """Test whether two methods' scores differ: paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon``).

        Pairs are the positive images both methods were scored on.

        Args:
            a: one method.
            b: the other.
            score: the score compared (``lc_r, lc_f, lc, c, gae``).

        Returns:
            The [`WilcoxonResult`][relprop.metrics.WilcoxonResult]; p = 1 when all differences
            are zero.

        Raises:
            InputError: a method without scores, an unknown score, or unpaired scores of
                different lengths.
        """
        from scipy import stats

        for m in (a, b):
            if m not in self.scores:
                raise InputError(f"no scores for method {m!r}; the result has: {', '.join(self.scores)}")
        if score not in SCORES:
            raise InputError(f"unknown score {score!r}; expected one of {', '.join(SCORES)}")
        x, y = self.scores[a][score].double(), self.scores[b][score].double()
        if a in self.images and b in self.images:  # pair on the images both methods were scored on
            ia, ib = self.images[a], self.images[b]
            keep_a, keep_b = torch.isin(ia, ib), torch.isin(ib, ia)
            x = x[keep_a][torch.argsort(ia[keep_a])]
            y = y[keep_b][torch.argsort(ib[keep_b])]
        elif x.shape != y.shape:
            raise InputError(f"methods {a!r} and {b!r} have different numbers of scores")
        x, y = x.numpy(), y.numpy()
        if not (x - y).any():
            return WilcoxonResult(0.0, 1.0)
        r = stats.wilcoxon(x, y)
        return WilcoxonResult(float(r.statistic), float(r.pvalue))

    def plot(self, path: str) -> None:
        """Draw a bar plot (mean and 95% interval of LC, C, GAE per method) and write it as a PNG.

        Args:
            path: where to write it.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.table()
        methods = list(self.scores)
        fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(methods)), 3))
        width = 0.25
        for j, s in enumerate(("lc", "c", "gae")):
            r = [next(x for x in rows if x["method"] == m and x["score"] == s) for m in methods]
            ax.bar(
                [i + (j - 1) * width for i in range(len(methods))],
                [x["mean"] for x in r],
                width,
                yerr=[0 if math.isnan(x["ci95"]) else x["ci95"] for x in r],
                label=s.upper(),
            )
        ax.set_xticks(range(len(methods)), methods)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
