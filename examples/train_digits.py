"""Train the three shipped digits models (``relprop.models``) and the shipped test split.

Data: scikit-learn's 8×8 handwritten digits (1797 images, 10 classes), intensities
0–16 scaled to [0, 1], bilinearly upsampled to 32×32, quantized to uint8 and
replicated to 3 channels at load time; normalized with the training mean/std
(``relprop.models.MEAN``/``STD``).  Split: stratified 80/20, ``random_state=0``
(1437 train / 360 test).  Training: AdamW with a one-cycle (cosine) schedule,
label smoothing 0.05, batch 64, random shifts of up to ±2 pixels, and (vgg, resnet) 30 % of the images shrunk to
16×16 in a random quadrant so the GAE metric's 2×2 half-resolution mosaics stay
recognisable; seed 0, CPU, deterministic algorithms.

Measured test accuracy (360 images; float16 weights as shipped), training time
on 2 CPU cores shared with other jobs:

    vgg     (DigitsVGG,    167,642 params, 20 epochs): 1.0000 (360/360), ~17 s
    resnet  (DigitsResNet,  78,042 params, 15 epochs): 0.9972 (359/360), ~23 s
    vit     (DigitsViT,    142,026 params, 60 epochs): 0.9778 (352/360), ~110-130 s

On 90 mosaics of four test images at half resolution, the predicted class is
one of the four quadrants' labels for 78 % (vgg), 86 % (resnet) and 53 % (vit)
of them (about 34 % by chance).

Re-running reproduces the files bit for bit on the same torch/CPU (checked for
vgg, vit and the test split with torch 2.14.1).

Run from the repository root (needs scikit-learn; writes relprop/data/)::

    python examples/train_digits.py            # all three
    python examples/train_digits.py vit        # one
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from relprop import models as M

OUT = Path(__file__).resolve().parent.parent / "relprop" / "data"
SEED = 0
# name: (epochs, learning rate, weight decay, share of half-size images, see quarter());
# the ViT trained with half-size images put its absLRP relevance on the background
# (median stroke concentration 0.96), so it is trained without them.
HPARAMS = {
    "vgg": (20, 2e-3, 1e-4, 0.3),
    "resnet": (15, 3e-3, 1e-4, 0.3),
    "vit": (60, 2e-3, 5e-2, 0.0),
}


def make_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels); images (N, 32, 32) uint8."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(M.SIZE, M.SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    idx = torch.arange(len(y)).numpy()
    tr, te = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=SEED)
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    return x[tr], y[tr], x[te], y[te]


def shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by a random integer offset, filling with the background value."""
    n = x.shape[0]
    pad = max_shift
    bg = float(x.min())
    xp = F.pad(x, (pad, pad, pad, pad), value=bg)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    return torch.stack([xp[i, :, dy[i] : dy[i] + M.SIZE, dx[i] : dx[i] + M.SIZE] for i in range(n)])


def quarter(x: torch.Tensor, g: torch.Generator, p: float = 0.3) -> torch.Tensor:
    """Shrink a random ``p`` of the images to half size, each in a random quadrant.

    This teaches the models the digits at half resolution in any quadrant, as in
    the 2×2 mosaics of the GAE contrastiveness score.
    """
    pick = torch.rand(x.shape[0], generator=g) < p
    if not pick.any():
        return x
    h = M.SIZE // 2
    small = F.interpolate(x[pick], size=(h, h), mode="bilinear", align_corners=False, antialias=True)
    out = x.clone()
    canvas = torch.full_like(x[pick], float(x.min()))
    quadrant = torch.randint(0, 4, (int(pick.sum()),), generator=g)
    for j, q in enumerate(quadrant.tolist()):
        r, c = divmod(q, 2)
        canvas[j, :, r * h : (r + 1) * h, c * h : (c + 1) * h] = small[j]
    out[pick] = canvas
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def train(name: str, xtr, ytr, xte, yte) -> dict:
    epochs, lr, wd, p_half = HPARAMS[name]
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    model = M.DIGITS_MODELS[name]()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * ((len(ytr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), 64):
            b = perm[i : i + 64]
            xb = shift(xtr[b], g)
            if p_half > 0:
                xb = quarter(xb, g, p_half)
            loss = F.cross_entropy(model(xb), ytr[b], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 5 == 0:
            print(f"  {name} epoch {epoch + 1}: loss {loss.item():.3f} test {accuracy(model, xte, yte):.4f}")
    seconds = time.time() - t0
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, OUT / f"digits_{name}.pt")
    shipped = M.load_digits_model(name)  # the float16 round trip, as users get it
    acc = accuracy(shipped, xte, yte)
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: test accuracy {acc:.4f}, {params} parameters, {seconds:.0f} s")
    return {
        "class": type(model).__name__,
        "test_accuracy": round(acc, 4),
        "parameters": params,
        "epochs": epochs,
        "half_size_share": p_half,
        "train_seconds": round(seconds, 1),
    }


def main(names: list[str]) -> None:
    torch.use_deterministic_algorithms(True)
    xtr8, ytr, xte8, yte = make_split()
    mean, std = (xtr8.float() / 255).mean().item(), (xtr8.float() / 255).std().item()
    print(f"train mean {mean:.4f} std {std:.4f} (relprop.models: {M.MEAN} / {M.STD})")
    torch.save({"images": xte8.clone(), "labels": yte.to(torch.uint8)}, OUT / M.TEST_FILE)
    xtr, xte = M.normalize_digits(xtr8), M.normalize_digits(xte8)
    meta_path = OUT / M.META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"models": {}}
    meta.update(
        dataset="sklearn.datasets.load_digits, 8x8 -> 32x32 bilinear, 3 channels",
        split="stratified 80/20, random_state=0",
        train_size=len(ytr),
        test_size=len(yte),
        mean=M.MEAN,
        std=M.STD,
        classes=list(range(10)),
    )
    for name in names:
        meta["models"][name] = train(name, xtr, ytr, xte, yte)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1:] or list(M.DIGITS_MODELS))
