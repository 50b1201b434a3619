"""How much of absLRP's time is matrix products: the floor no elementwise work can lower.

For each model, one process: the median of three gradient passes (forward + input gradient,
as in ``speed.py``), then one contrastive absLRP explain under ``torch.profiler``; prints the
self time of the products (``mm``, ``addmm``, ``addmm_``, ``bmm``, ``baddbmm``, convolutions and
the forward's fused attention) inside that explain as a multiple of the gradient pass, next to
the explain's own multiple (timed without the profiler), and the explain's distance from that
floor (explain / products).

    .venv/bin/python benchmarks/product_floor.py --models timm_vit_b_16,bert --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import relprop

#: every matrix product and convolution kernel: the forward's, the walk's (with derived weights
#: built block by block, ``addmm_``), the attention's
PRODUCTS = (
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_convolution",
    "aten::mkldnn_convolution",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
)


def measure(name: str, batch: int) -> dict[str, float]:
    from speed import _scores, build_case, method_calls  # the same models, targets and gradient pass as speed.py

    case = build_case(name, quick=False)
    model = case.model.requires_grad_(False)
    inputs = case.make_inputs(batch)
    with torch.no_grad():
        out = model(**inputs) if case.text else model(inputs)
    target = _scores(case, out).argmax(1)
    graph = relprop.trace(model)
    calls = method_calls(case, inputs, target, {"absLRP": graph})
    calls["absLRP"]()  # trace
    grads = []
    for _ in range(3):
        t0 = time.perf_counter()
        calls["gradient"]()
        grads.append(time.perf_counter() - t0)
    gradient = statistics.median(grads)
    t0 = time.perf_counter()
    calls["absLRP"]()
    explain = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        calls["absLRP"]()
    products = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in PRODUCTS) / 1e6
    profiled = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
    return {
        "gradient_s": gradient,
        "absLRP_x_grad": explain / gradient,
        "products_x_grad": products / gradient,
        "products_share": products / profiled,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="timm_vit_b_16,bert")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    for name in args.models.split(","):
        r = measure(name, args.batch)
        print(
            f"{name} b{args.batch}: gradient {r['gradient_s']:.2f} s; absLRP {r['absLRP_x_grad']:.2f}x; "
            f"its matrix products alone {r['products_x_grad']:.2f}x "
            f"({100 * r['products_share']:.0f} % of its profiled time; absLRP / floor "
            f"{r['absLRP_x_grad'] / r['products_x_grad']:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
