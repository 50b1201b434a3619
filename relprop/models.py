"""Small models trained on real data (handwritten digits), shipped with the package.

No pretrained ImageNet weights can be downloaded everywhere relprop runs, so three
small classifiers of the three architecture families the absLRP paper studies are
trained on scikit-learn's 8×8 handwritten digits (1797 images, 10 classes),
upsampled to 32×32 and replicated to 3 channels::

    model = relprop.models.load_digits_model("vgg")     # or "resnet", "vit"
    test = relprop.models.load_digits_test()            # TensorDataset (images, labels)
    x, y = test.tensors
    R = relprop.trace(model).explain(x[:8], y[:8])

The test split (a fixed, seeded, stratified 20 %) ships in ``relprop/data/`` as
uint8, so nothing here needs scikit-learn; ``examples/train_digits.py``
reproduces the split and the weights, and ``digits_models.json`` records each
model's measured test accuracy.

The names are implemented in :mod:`relprop.apps.models`; the module loads on first use
(``import relprop`` does not import it).
"""

from .apps.models import (
    DIGITS_MODELS,
    DigitsResNet,
    DigitsVGG,
    DigitsViT,
    digit_mosaics,
    digits_accuracy,
    load_digits_model,
    load_digits_test,
    load_imagenet_model,
    load_language_model,
    mosaic_recognition,
    normalize_digits,
)

__all__ = [
    "digit_mosaics",
    "digits_accuracy",
    "DIGITS_MODELS",
    "DigitsResNet",
    "DigitsVGG",
    "DigitsViT",
    "load_digits_model",
    "load_digits_test",
    "load_imagenet_model",
    "load_language_model",
    "mosaic_recognition",
    "normalize_digits",
]
