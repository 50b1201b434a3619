"""Where absLRP's contrast fades on EfficientNet-Lite0: the two passes layer by layer.

absLRP explains ``R_pos − R_neg``: a pass started at the target class minus a pass started
at all other classes, each normalised per node (docs/semantics.md §Contrastive). On the
shipped ImageNet model the pixel maps of the two passes are nearly equal, so the map the
default ``relprop`` run shows is a small difference. This prints, for scikit-image's
photos explained for their predicted class:

* ``contrast`` = Σ|R_pos − R_neg| / Σ|R_pos| at the pixels, at the input of the head's
  1×1 convolution (the last 7×7 map with 320 channels) and at the head's output (the
  7×7×1280 map that global pooling reads);
* ``cos(pos, neg)``: cosine of the two pixel maps;
* ``corr``: correlation over the 7×7 grid between the head's contrast (summed over
  channels) and the pixel contrast summed over channels and over each 32×32 block: how far
  the pixel map's sign regions are the head's, carried down;
* ``float64``: cosine of the float32 contrastive map with the float64 one (rounding?).

For comparison, the pixel contrast and cos(pos, neg) of the shipped digits models on the
first 64 test images (each with its absLRP variant: VGG without the max-pooling division),
and on the digits ViT the contrast (median over those images) along the residual stream:
at every ``add`` whose relevance is shaped like the token sequence (B, 65, 64), in walk
order (from the output to the input), then at the pixels.  At a fork absLRP adds the
unit-normalised relevances of the consumers, so the shortcut and the block's branch weigh
the same (docs/semantics.md §Per-sample normalisation).

    .venv/bin/python benchmarks/abslrp_contrast.py
    .venv/bin/python benchmarks/abslrp_contrast.py --llm   # SmolLM2's token contrast
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import relprop
import relprop.explanation
from relprop.apps.imagenet import load_imagenet_model
from relprop.apps.photos import PHOTOS, load_photo


def contrast(R: Tensor) -> Tensor:
    """Σ|R_pos − R_neg| / Σ|R_pos| per sample of a (2, B, ...) relevance (relprop's own measure,
    the one its vanishing-contrast warning reads)."""
    return relprop.explanation.contrast({"R": R})


def head_nodes(node_relevance: dict[str, Tensor]) -> tuple[str, str]:
    """(head output, head input): in walk order (output first), the first 7×7 map with 1280
    channels and the first with 320 channels."""
    maps = [(k, v) for k, v in node_relevance.items() if isinstance(v, Tensor) and v.dim() == 5]
    out = next(k for k, v in maps if v.shape[2:] == (1280, 7, 7))
    inp = next(k for k, v in maps if v.shape[2:] == (320, 7, 7))
    return out, inp


def main() -> None:
    torch.set_num_threads(2)
    model, transform, classes = load_imagenet_model()
    x = torch.stack([transform(load_photo(p)) for p in PHOTOS])
    with torch.no_grad():
        target = model(x).argmax(1)
    ex = relprop.trace(model, relprop.rules.AbsLRP()).explanation(x, target, record=True)
    pixels = next(iter(ex.passes.values()))
    out, inp = head_nodes(ex.node_relevance)
    head = ex.node_relevance[out]
    blocks = F.avg_pool2d((pixels[0] - pixels[1]).sum(1, keepdim=True), 32)[:, 0].flatten(1)
    grid = (head[0] - head[1]).sum(1).flatten(1)
    model64 = load_imagenet_model()[0].double()
    r64 = relprop.trace(model64, relprop.rules.AbsLRP()).explain(x.double(), target)
    r32 = pixels[0] - pixels[1]
    cos = F.cosine_similarity(pixels[0].flatten(1), pixels[1].flatten(1))
    cos64 = F.cosine_similarity(r32.double().flatten(1), r64.flatten(1))
    rows = zip(PHOTOS, target.tolist(), contrast(head), contrast(ex.node_relevance[inp]), contrast(pixels), cos, cos64)
    print(f"head output: {out}, head input: {inp}")
    print("| photo | class | contrast at head output | at head input | at pixels | cos(pos, neg) | corr | float64 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for b, (photo, c, h, i, p, cs, c64) in enumerate(rows):
        corr = float(torch.corrcoef(torch.stack([grid[b], blocks[b]]))[0, 1])
        print(f"| {photo} | {c} {classes[c]} | {h:.3f} | {i:.3f} | {p:.3f} | {cs:.4f} | {corr:+.2f} | {c64:.5f} |")
    digits()


def digits() -> None:
    from relprop.apps.models import load_digits_model, load_digits_test
    from relprop.evaluation.comparison import DIGITS_ABSLRP_VARIANTS
    from relprop.evaluation.methods import ABSLRP_VARIANTS

    x, _ = load_digits_test()[:64]
    print("\n| digits model | pixel contrast: median (min – max) | cos(pos, neg): median |")
    print("|---|---:|---:|")
    for name in ("vgg", "resnet", "vit"):
        model = load_digits_model(name)
        with torch.no_grad():
            target = model(x).argmax(1)
        rules = relprop.rules.AbsLRP(**ABSLRP_VARIANTS[DIGITS_ABSLRP_VARIANTS[name]])
        ex = relprop.trace(model, rules).explanation(x, target, record=name == "vit")
        pixels = next(iter(ex.passes.values()))
        c = contrast(pixels)
        cos = F.cosine_similarity(pixels[0].flatten(1), pixels[1].flatten(1))
        print(f"| {name} | {c.median():.3f} ({c.min():.3f} – {c.max():.3f}) | {cos.median():.4f} |")
    # ex: the ViT's, every node recorded
    stream = [(k, v) for k, v in ex.node_relevance.items() if k.startswith("add") and v.shape[2:] == (65, 64)]
    cells = [f"{k} {float(contrast(v).median()):.4f}" for k, v in [*stream, ("pixels", pixels)]]
    print("\ndigits ViT, contrast along the residual stream (output to input): " + ", ".join(cells))


#: prompts for the language-model figures (their greedy next token is explained)
PROMPTS = (
    "The capital of France is",
    "Alice lives in Paris and Bob lives in Rome. Question: Where does Bob live? Answer: Bob lives in",
    "The opposite of hot is",
    "Two plus two equals",
    "The first month of the year is",
)


def language() -> None:
    """SmolLM2: absLRP's contrast on the tokens (the negative pass starts from ~49k other tokens)."""
    from relprop.apps.language import load_language_model

    model, tok = load_language_model()
    graph = relprop.trace(model, relprop.rules.AbsLRP())
    print("\n| SmolLM2 prompt | next token | token contrast | cos(pos, neg) |")
    print("|---|---|---:|---:|")
    for prompt in PROMPTS:
        enc = dict(tok(prompt, return_tensors="pt"))
        with torch.no_grad():
            token = int(model(**enc).logits[0, -1].argmax())
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex = graph.explanation(enc, relprop.targets.next_token(token))
        R = ex.passes["input_ids"]
        cos = F.cosine_similarity(R[0].flatten(1), R[1].flatten(1))
        print(f"| {prompt[:40]}… | {tok.decode(token)!r} | {float(contrast(R)):.2e} | {float(cos):.6f} |")


if __name__ == "__main__":
    import sys

    if "--llm" in sys.argv:
        language()
    else:
        main()
