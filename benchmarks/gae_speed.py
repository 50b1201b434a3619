"""GAE throughput: images per second of the GAE evaluation with absLRP on the shipped digits models.

The GAE metric explains every image many times (the mosaics, then 2T+1 perturbed copies per
image), so it is a realistic load for the engine.  For each shipped model (vgg, resnet, vit)
this runs ``GAE(steps=10, seed=0).evaluate`` with absLRP alone on the 360-image test split,
batch 16, and reports seconds, images per second and the mean GAE score (which must not change
between versions of the engine).

    .venv/bin/python benchmarks/gae_speed.py --json gae-speed.json

To compare with an older checkout, run the same script with ``PYTHONPATH`` pointing at it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import relprop
from relprop import methods, metrics, models


def run(names: list[str], threads: int) -> dict[str, dict[str, float]]:
    torch.set_num_threads(threads)
    data = models.load_digits_test()
    out: dict[str, dict[str, float]] = {}
    for name in names:
        model = models.load_digits_model(name)
        method = {"absLRP": methods.relprop_method(relprop.rules.AbsLRP())}
        t0 = time.perf_counter()
        result = metrics.GAE(steps=10, seed=0).evaluate(model, method, data, batch_size=16, progress=False)
        seconds = time.perf_counter() - t0
        score = float(result["absLRP"]["gae"].double().mean())
        out[name] = {"seconds": seconds, "images_per_s": len(data) / seconds, "gae_mean": score}
        print(f"{name}: {seconds:.1f} s, {len(data) / seconds:.1f} images/s, mean GAE {score:.6f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vgg,resnet,vit")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    print(f"relprop from {os.path.dirname(relprop.__file__)}", file=sys.stderr)
    out = run(args.models.split(","), args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
