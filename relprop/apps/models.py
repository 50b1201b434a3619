"""The implementation of :mod:`relprop.models` (the public module; its docstring describes it)."""

from __future__ import annotations

import io
import json
from importlib import resources

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..errors import InputError
from .imagenet import load_imagenet_model  # EfficientNet-Lite0 (ImageNet), relprop.models.load_imagenet_model
from .language import load_language_model  # SmolLM2-135M-Instruct, relprop.models.load_language_model

__all__ = [
    "DIGITS_MODELS",
    "DigitsResNet",
    "DigitsVGG",
    "DigitsViT",
    "digit_mosaics",
    "digits_accuracy",
    "load_digits_model",
    "load_digits_test",
    "load_imagenet_model",
    "load_language_model",
    "mosaic_recognition",
    "normalize_digits",
]

SIZE = 32
CLASSES = 10
#: mean and std of the upsampled training images in [0, 1] (all channels are equal)
MEAN = 0.3054
STD = 0.3237
TEST_FILE = "digits_test.pt"
META_FILE = "digits_models.json"


class DigitsVGG(nn.Module):
    """VGG-style: conv/ReLU pairs and max pooling in three blocks, then a 2-layer head.

    Args:
        classes: output classes.
        width: channels of the first block (doubled per block).
    """

    def __init__(self, classes: int = CLASSES, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Linear(4 * w * (SIZE // 8) ** 2, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv–BN, a residual add, ReLU (1×1 conv–BN shortcut on stride/width change)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """A small ResNet: conv–BN–ReLU stem, three stages of basic blocks, global average pool, linear.

    Args:
        classes: output classes.
        width: channels of the first stage (doubled per stage).
    """

    def __init__(self, classes: int = CLASSES, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = BasicBlock(w, w)
        self.layer2 = BasicBlock(w, 2 * w, 2)
        self.layer3 = BasicBlock(2 * w, 4 * w, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class Attention(nn.Module):
    """Multi-head self-attention via ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """A small ViT: 4×4 patch embedding, class token, learned positions, pre-norm blocks.

    Args:
        classes: output classes.
        patch: the patches' side in pixels.
        dim: the token width.
        depth: transformer blocks.
        heads: attention heads per block.
        mlp: the hidden width of each block's MLP.
    """

    def __init__(
        self, classes: int = CLASSES, patch: int = 4, dim: int = 64, depth: int = 4,
        heads: int = 4, mlp: int = 128,
    ) -> None:  # fmt: skip
        super().__init__()
        n = (SIZE // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


#: the shipped models, by name
DIGITS_MODELS: dict[str, type[nn.Module]] = {
    "vgg": DigitsVGG,
    "resnet": DigitsResNet,
    "vit": DigitsViT,
}


def normalize_digits(images: Tensor) -> Tensor:
    """Turn digit images into model inputs, normalized as the shipped models expect.

    Args:
        images: (N, 32, 32) or (N, 1, 32, 32) images in [0, 1] (or uint8).

    Returns:
        (N, 3, 32, 32) normalized float32.
    """
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return ((images.float() - MEAN) / STD).expand(-1, 3, -1, -1).contiguous()


def _data_file(name: str) -> bytes:
    return resources.files("relprop.data").joinpath(name).read_bytes()


def _meta() -> dict:
    return json.loads(_data_file(META_FILE))


def load_digits_model(name: str) -> nn.Module:
    """Load a shipped digits classifier (float32, eval mode).

    Args:
        name: ``"vgg"``, ``"resnet"`` or ``"vit"``.

    Returns:
        The model, taking (N, 3, 32, 32) images normalized as
        [`load_digits_test`][relprop.models.load_digits_test] gives them and returning
        (N, 10) logits.

    Raises:
        InputError: ``name`` is not a shipped model.
    """
    if name not in DIGITS_MODELS:
        raise InputError(f"unknown digits model {name!r}; the shipped models are: {', '.join(DIGITS_MODELS)}")
    model = DIGITS_MODELS[name]()
    state = torch.load(io.BytesIO(_data_file(f"digits_{name}.pt")), map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def load_digits_test(raw: bool = False) -> TensorDataset:
    """Load the shipped test split of the digits.

    Args:
        raw: return the images as (N, 32, 32) intensities in [0, 1] (where the strokes are)
            instead of model inputs.

    Returns:
        ``TensorDataset(images, labels)``: ``images`` (N, 3, 32, 32) float32, normalized as
        the models expect (or raw, as above); ``labels`` (N,) int64.
    """
    data = torch.load(io.BytesIO(_data_file(TEST_FILE)), map_location="cpu", weights_only=True)
    images = data["images"]
    x = images.float() / 255 if raw else normalize_digits(images)
    return TensorDataset(x, data["labels"].long())


def digits_accuracy(name: str) -> float:
    """Look up the test accuracy recorded for a shipped digits model.

    Args:
        name: ``"vgg"``, ``"resnet"`` or ``"vit"``.

    Returns:
        The accuracy on the shipped test split, from ``digits_models.json``.

    Raises:
        InputError: ``name`` is not a shipped model.
    """
    if name not in DIGITS_MODELS:
        raise InputError(f"unknown digits model {name!r}; the shipped models are: {', '.join(DIGITS_MODELS)}")
    return float(_meta()["models"][name]["test_accuracy"])


def digit_mosaics(x: Tensor, y: Tensor, n: int = 500, avg_pool: bool = False) -> tuple[Tensor, Tensor]:
    """Build ``n`` seeded 2×2 mosaics of four different digits at half resolution, as GAE builds them.

    Generator seed 0: per mosaic, ``randperm(10)[:4]`` gives the classes of the quadrants
    (top-left, top-right, bottom-left, bottom-right) and ``randint`` an image of each; each
    image is downsampled as GAE does ([`downsample`][relprop.metrics.downsample], nearest:
    the even rows and columns) or, with ``avg_pool``, by 2×2 average pooling.

    Args:
        x: images (N, 3, 32, 32).
        y: their labels (N,).
        n: how many mosaics.
        avg_pool: downsample by 2×2 average pooling instead.

    Returns:
        The mosaics (n, 3, 32, 32) and their quadrants' labels (n, 4).
    """
    from ..evaluation.metrics import arrange_mosaic, downsample

    g = torch.Generator().manual_seed(0)
    by_class = [torch.nonzero(y == c).flatten() for c in range(CLASSES)]
    idx = torch.empty(n, 4, dtype=torch.int64)
    for i in range(n):
        for q, c in enumerate(torch.randperm(CLASSES, generator=g)[:4].tolist()):
            idx[i, q] = by_class[c][int(torch.randint(len(by_class[c]), (1,), generator=g))]
    chosen = x[idx.flatten()]
    small = F.avg_pool2d(chosen, 2) if avg_pool else downsample(chosen)
    return arrange_mosaic(small), y[idx]


@torch.no_grad()
def mosaic_recognition(model: nn.Module, x: Tensor, y: Tensor, n: int = 500, avg_pool: bool = False) -> float:
    """Measure how often a model recognises a digit in GAE's mosaics.

    Args:
        model: a digits classifier.
        x: images (N, 3, 32, 32).
        y: their labels (N,).
        n: how many mosaics ([`digit_mosaics`][relprop.models.digit_mosaics]).
        avg_pool: as for ``digit_mosaics``.

    Returns:
        The share of the mosaics whose predicted class is one of their four quadrants' labels.
    """
    model.eval()
    m, labels = digit_mosaics(x, y, n, avg_pool)
    return (labels == model(m).argmax(1, keepdim=True)).any(1).float().mean().item()
