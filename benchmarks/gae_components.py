"""Why GAE's local consistency differs between the digits models: its parts, and the logit under masking.

GAE = LC · C with LC = relu(LC_R + LC_F) / 2 (``relprop.evaluation.metrics``). LC_R compares,
step by step, how far the MoRF and LeRF inputs' logits part (``d^o``) with how far the
method's maps of those inputs part from the unperturbed map (``d^A``). This prints, for
each shipped digits model:

* the mean LC_R, LC_F, LC, C and GAE of a few methods (T = 10, seed 0, batch 16, the
  README's settings) and the share of positive images with LC_R < 0;
* ``d^o_t`` (LeRF − MoRF logit of the predicted class over the unperturbed logit, t = 1..T-1)
  per test image: quantiles of its largest |value| and the share of images where it is
  negative at some step; ``d^A`` (a difference of two similarities) lies in [−1, 1], and
  LC_R = 1 − 2 dice(d^A, d^o) compares magnitudes;
* the mean logit under MoRF and LeRF masking relative to the unperturbed logit, per saved
  state t = 0..T-1 (means: per-image swings of both signs cancel in them).

    .venv/bin/python benchmarks/gae_components.py [--images 360] [--models vgg,resnet,vit]
"""

from __future__ import annotations

import argparse

import torch

from relprop import methods, models
from relprop.evaluation import metrics
from relprop.evaluation.comparison import DIGITS_ABSLRP_VARIANTS
from relprop.evaluation.metrics import perturb

METHODS = ("InputXGradient", "GuidedGradCAM", "cLRP")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=360, help="first N test images (a multiple of 16)")
    p.add_argument("--models", default="vgg,resnet,vit")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    x, y = models.load_digits_test()[: args.images]
    data = torch.utils.data.TensorDataset(x, y)
    print("| model | method | LC_R | LC_R < 0 | LC_F | LC | C | GAE |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    curves, swings = {}, {}
    for name in args.models.split(","):
        model = models.load_digits_model(name)
        chosen = {"absLRP": methods.relprop_method(variant=DIGITS_ABSLRP_VARIANTS[name])}
        chosen |= {m: methods.get_method(m) for m in METHODS}
        result = metrics.GAE(steps=10, seed=0).evaluate(model, chosen, data, batch_size=16, progress=False)
        for method in chosen:
            s = {k: float(v.double().mean()) for k, v in result[method].items() if k in metrics.SCORES}
            negative = float((result[method]["lc_r"] < 0).double().mean())
            cells = f"{s['lc_r']:+.3f} | {negative:.2f} | {s['lc_f']:+.3f} | "
            cells += f"{s['lc']:.3f} | {s['c']:.3f} | {s['gae']:.3f}"
            print(f"| {name} | {method} | {cells} |")
        with torch.no_grad():
            target = model(x).argmax(1)
        morf, lerf = (perturb(model, x, target, 10, order) for order in ("morf", "lerf"))
        o0 = morf.outputs[0]
        curves[name] = ((morf.outputs / o0).mean(1), (lerf.outputs / o0).mean(1))
        d_o = metrics.output_differences(morf.outputs, lerf.outputs)
        swings[name] = (torch.quantile(d_o.abs().amax(1), torch.tensor([0.1, 0.5, 0.9])), (d_o < 0).any(1))
    print("\nd^o per test image (predicted class):\n")
    print("| model | max_t abs(d^o_t): 10 % / median / 90 % | images with d^o_t < 0 at some t |")
    print("|---|---:|---:|")
    for name, (q, neg) in swings.items():
        print(f"| {name} | {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} | {float(neg.double().mean()):.2f} |")
    print("\nmean logit / unperturbed logit at the saved states t = 0..9 (all images, predicted class):\n")
    print("| model | order | " + " | ".join(f"t={t}" for t in range(10)) + " |")
    print("|---|---|" + "---:|" * 10)
    for name, (m, le) in curves.items():
        for order, c in (("MoRF", m), ("LeRF", le), ("d^o = LeRF − MoRF", le - m)):
            print(f"| {name} | {order} | " + " | ".join(f"{v:+.2f}" for v in c.tolist()) + " |")


if __name__ == "__main__":
    main()
