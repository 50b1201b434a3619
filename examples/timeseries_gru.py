"""A GRU that classifies signals by their planted events, explained: the relevance sits on the events.

    .venv/bin/python examples/timeseries_gru.py [--quick] [--png timeseries_gru.png]

Data (generated, seeded): 64 time steps of noise on a slow random wave.  Half the signals
(class 1, "event") have one or two planted **events**, bumps 9 steps wide at random places;
the other half (class 0, "none") have none.  Only the events tell the classes apart.

Model: ``nn.GRU(1, 32, batch_first=True)`` → ``Linear(32, 2)`` on the last step, trained
with Adam for a few seconds on CPU.  It is explained with ``relprop.rules.Epsilon()`` (the
classic ε-rule with the GRU's sigmoid gates held, signal-take-all, as in Arras et al.) and
``relprop.rules.AttnLRP()`` (its uniform rule at the gates), for the class "event".

The picture (``--png``): four held-out signals with events (shaded), the ε relevance per
time step below each (red: for "event", blue: against).  Printed: the held-out accuracy and,
per rule set, the share of the absolute relevance that falls on the event steps beside those
steps' share of all steps (means over the held-out signals with events).  Measured (one
thread, ``--quick``: training ~1 s, each explanation ~5 s, the tracing of 64 unrolled
steps): held-out accuracy 1.00; ε puts 0.95 of the absolute relevance on the event steps,
which are 0.20 of the steps; AttnLRP only 0.14: its uniform rule sends half of every gate
product into the gates, whose relevance through the recurrence is large and of both signs.
That is why the picture shows ε (the rule of Arras et al.).  Where a signal has two
events, the model has mostly decided at the first, and ε gives the second little.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

import relprop
from relprop import rules

STEPS, WIDTH, HIDDEN = 64, 9, 32
CLASSES = ("none", "event")
RULE_SETS = {"LRP-ε (Epsilon())": rules.Epsilon, "AttnLRP (AttnLRP())": rules.AttnLRP}


def make_signals(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, events)``: signals ``(n, STEPS, 1)``, classes ``(n,)``, event steps ``(n, STEPS)`` (bool)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(STEPS, dtype=torch.float32)
    y = torch.randint(0, 2, (n,), generator=g)
    phase, freq = torch.rand(n, 1, generator=g) * 6.3, 0.05 + 0.1 * torch.rand(n, 1, generator=g)
    x = 0.4 * torch.sin(freq * t + phase) + 0.25 * torch.randn(n, STEPS, generator=g)
    events = torch.zeros(n, STEPS, dtype=torch.bool)
    half = WIDTH // 2
    for i in torch.nonzero(y)[:, 0].tolist():
        count = 1 + int(torch.rand(1, generator=g) < 0.5)
        for _ in range(count):
            c = int(torch.randint(half, STEPS - half, (1,), generator=g))
            x[i] += 2.0 * torch.exp(-0.5 * ((t - c) / 1.5) ** 2)
            events[i, c - half : c + half + 1] = True
    return x[..., None], y, events


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(1, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, len(CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def train(samples: int = 2000, epochs: int = 8, seed: int = 0) -> GRUClassifier:
    torch.manual_seed(seed)
    x, y, _ = make_signals(samples, seed)
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        perm = torch.randperm(samples)
        for start in range(0, samples, 64):
            i = perm[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def relevance(model: nn.Module, x: Tensor, y: Tensor | int, make=rules.Epsilon) -> Tensor:
    """Relevance of class ``y`` per time step, ``(n, STEPS)``."""
    graph = relprop.trace(model, rules=make(), strict=True)
    return graph.explain(x, y)[..., 0]


def event_share(R: Tensor, events: Tensor) -> tuple[float, float]:
    """(share of the absolute relevance on event steps, share of the steps that are event steps),
    each a mean over the signals (so that no one signal's large relevance dominates)."""
    mass = R.abs()
    per_signal = (mass * events).sum(1) / mass.sum(1).clamp_min(1e-30)
    return per_signal.mean().item(), events.float().mean().item()


def plot(x: Tensor, events: Tensor, maps: dict[str, Tensor], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = x.shape[0]
    fig, axes = plt.subplots(1 + len(maps), n, figsize=(3.6 * n, 2.0 * (1 + len(maps))), sharex=True, squeeze=False)
    t = list(range(STEPS))
    for j in range(n):
        rows = [("signal", x[j, :, 0].tolist())] + [(name, R[j].tolist()) for name, R in maps.items()]
        for k, (name, values) in enumerate(rows):
            ax = axes[k, j]
            for s in torch.nonzero(events[j])[:, 0].tolist():
                ax.axvspan(s - 0.5, s + 0.5, color="gold", alpha=0.35, lw=0)
            if k == 0:
                ax.plot(t, values, color="black", lw=1.2)
                ax.set_title("planted events shaded", fontsize=10)
            else:
                ax.bar(t, values, width=0.9, color=["tab:red" if v >= 0 else "tab:blue" for v in values])
                ax.axhline(0, color="grey", lw=0.5)
            if j == 0:
                ax.set_ylabel(name if k else "signal", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time step")
    fig.suptitle("GRU classifier, class 'event': relevance per time step (red: for, blue: against)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train, explain, plot; returns the held-out accuracy, the event steps' share of the steps
    and, per rule set, the share of the relevance on them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="train on fewer signals for fewer epochs (< 60 s)")
    parser.add_argument("--png", default="timeseries_gru.png", help="where to write the picture (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a GRU this small trains faster on one thread than on two
    start = time.perf_counter()
    model = train(*((800, 5) if args.quick else (3000, 8)))
    print(f"trained in {time.perf_counter() - start:.1f} s")
    x, y, events = make_signals(200, seed=1)  # held out: another seed
    results = {"accuracy": accuracy(model, x, y)}
    print(f"held-out accuracy {results['accuracy']:.3f} (200 signals)")
    x, events = x[y == 1], events[y == 1]
    for name, make in RULE_SETS.items():
        R = relevance(model, x, 1, make)
        share, steps = event_share(R, events)
        results[name], results["event steps"] = share, steps
        print(f"{name}: {share:.2f} of |relevance| on the event steps, which are {steps:.2f} of the steps")
        if make is rules.Epsilon:
            shown = R[:4].detach()
    plot(x[:4], events[:4], {"LRP-ε relevance": shown}, args.png)
    print(f"wrote {args.png}; total {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
