"""Attribution methods compared by the GAE evaluation (:mod:`relprop.metrics`).

Vukadin et al. 2024 (arXiv 2412.09311) compare absLRP with other LRP rule sets,
gradient methods and CAM methods using GAE. Each method here is a
:data:`relprop.metrics.Method`: ``method(model, x, target) -> relevance`` shaped
like ``x`` (N, C, H, W), finite and detached::

    methods, skipped = relprop.methods.build_methods(model)            # every method that can run
    methods, _ = relprop.methods.build_methods(model, ["absLRP", "GradCAM"])
    R = methods["absLRP"](model, x, target)

Captum (``pip install 'relprop[captum]'``) and grad-cam (``pip install 'relprop[cam]'``)
are optional: they are imported only when one of their methods is built.

Choices (documented, not prescribed by the paper):

* **relprop rule sets**, each the rule set of an entry of :mod:`relprop.rules.registry`
  (the method's name is the entry's display name; the entry's names and aliases work
  too, ``"epsilon"`` is ``LRP-ε``), explained with the set's own defaults:
  ``absLRP`` = :class:`~relprop.rules.AbsLRP` (contrastive by
  default: target pass minus the pass from all other classes); ``cLRP`` (contrastive
  LRP, Gu et al. 2018) = LRP-α1β0 made contrastive (``AlphaBeta(1, 0, contrastive=True)``),
  i.e. relprop's two-pass contrastive mode ``R = R_target - R_others`` (``Explanation.passes[0] -
  passes[1]``), not Gu et al.'s negated-weight dual; ``LRP-ε`` = :class:`~relprop.rules.Epsilon`
  with relprop's default ε = 1e-6; ``LRP-α1β0`` / ``LRP-α2β1`` =
  :class:`~relprop.rules.AlphaBeta` (1, 0) / (2, 1). The last three are not contrastive
  and start from the target logit. ``RAP`` (Nam et al., AAAI 2020) = :class:`~relprop.rules.RAP`
  (from the target logit); ``cRAP`` = RAP made contrastive as cLRP is
  (``RAP(contrastive=True)``). Each traces the model once (cached per model).
* **absLRP's variant** (``abslrp_variant``): the authors explain VGGs with
  ``AbsLRP(maxpool_divide=False)`` (``"vgg"``) and ResNets with ``AbsLRP()`` (``"resnet"``,
  the default); ``absLRP`` is the variant asked for. ``absLRP (no maxpool division)`` and
  ``absLRP (maxpool division)`` are absLRP in one variant each, whatever ``abslrp_variant``
  says, for both side by side; they run only when named (``"absLRP-VGG"`` and
  ``"absLRP-ResNet"`` name them too).
* **Captum**: ``Saliency`` |∂f_c/∂x| (``abs=True``); ``InputXGradient`` x·∂f_c/∂x;
  ``IntegratedGradients`` with a zero baseline (the data mean for standardized
  inputs) and ``n_steps=16`` (GAE calls each method on ~5·batch images per batch,
  so fewer steps than captum's 50; completeness error is small for ReLU nets) in
  internal batches of N images; ``Deconvolution`` (Zeiler & Fergus 2014: the gradient with
  every ReLU passing the positive part of the gradient from above, whatever its input);
  ``SmoothGrad`` = ``NoiseTunnel(Saliency)``, 16
  samples, σ = 0.15·(max(x) − min(x)) of the batch (Smilkov et al. 2017: 10–20 % of
  the input range), the noise drawn from torch's RNG re-seeded with ``seed`` at
  every call inside :func:`torch.random.fork_rng` (deterministic, the global RNG is
  untouched); ``DeepLIFT`` (rescale rule) with a zero baseline; ``GuidedGradCAM``
  and ``LayerGradCam`` on the CAM layer (:func:`find_cam_layer`), LayerGradCam with
  ``relu_attributions=True`` (Grad-CAM's ReLU) upsampled bilinearly with
  ``LayerAttribution.interpolate`` to H×W, GuidedGradCAM with captum's default
  nearest upsampling.
* **grad-cam** (``pytorch_grad_cam``): ``GradCAM``, ``HiResCAM``, ``GradCAM++``,
  ``LayerCAM`` on the CAM layer with ``ClassifierOutputTarget(target)``; they return
  maps min-max scaled to [0, 1] per image (their own normalization, kept).
* **CAM layer** (:func:`find_cam_layer`, found on the first input of each image
  shape): for a CNN, the last module with a spatial output at or after the last
  ``nn.Conv2d`` (the block holding it: ``features`` of a VGG, the last residual
  block of a ResNet, not its 1×1 shortcut convolution); for a ViT (tokens (N, 1+h*w, D)
  after a patch-embedding convolution), the last token layer whose patch tokens
  still reach the output (the first LayerNorm of the last block), read as an
  (N, D, h, w) map without the class token. A model without ``nn.Conv2d`` has no CAM
  methods (skipped). CAM maps (one value per pixel) are repeated over the C channels.
* **Baselines**: ``constant`` (1 everywhere) and ``random`` (uniform, generator
  seeded with ``seed``), from :mod:`relprop.metrics`.
* **Attention** (ViTs): ``Rollout``, ``LLAttention``, ``TIBAV`` from the traced graph's
  attention (:mod:`relprop.evaluation.attention_methods`); skipped on models without attention.
* **The model is left as it was**, without copying it: every method runs the model
  with all modules in eval mode and, for captum and grad-cam, with parameters
  temporarily frozen (``requires_grad=False``; the gradient comes from the input).
  grad-cam itself calls ``model.eval()`` and ``model.zero_grad()`` and accumulates
  parameter gradients; captum's DeepLIFT / Deconvolution hook the nonlinearities.
  Afterwards each module's training flag, each parameter's ``requires_grad`` and
  ``.grad`` are restored, and as a safety net any hook or module attribute added
  during the call is removed (captum 0.9 and grad-cam 1.5.7 remove their own hooks;
  DeepLIFT's ``module.input``/``output`` attributes stay behind on a module the
  backward pass does not reach). DeepLIFT refuses a model that calls one
  nonlinearity module twice (captum's limitation; GAE records it as a failure).
* x and the model must have the same dtype (float32 or float64) and device.

The names are implemented in :mod:`relprop.evaluation.methods`; the module loads on first use
(``import relprop`` does not import it).
"""

from .evaluation.methods import (
    ABSLRP_VARIANT_METHODS,
    ABSLRP_VARIANTS,
    ATTENTION_METHODS,
    BASELINES,
    CAM_METHODS,
    CAPTUM_METHODS,
    LAYER_METHODS,
    METHOD_NAMES,
    RELPROP_METHODS,
    RELPROP_RULE_SETS,
    CamLayer,
    TokenGrid,
    build_methods,
    cam_method,
    captum_method,
    check_variant,
    constant_method,
    find_cam_layer,
    get_method,
    lrp_method,
    random_method,
    relprop_method,
    resolve_name,
)

__all__ = [
    "ABSLRP_VARIANT_METHODS",
    "ABSLRP_VARIANTS",
    "ATTENTION_METHODS",
    "BASELINES",
    "build_methods",
    "cam_method",
    "CAM_METHODS",
    "CamLayer",
    "captum_method",
    "CAPTUM_METHODS",
    "check_variant",
    "constant_method",
    "find_cam_layer",
    "get_method",
    "LAYER_METHODS",
    "lrp_method",
    "METHOD_NAMES",
    "random_method",
    "relprop_method",
    "RELPROP_METHODS",
    "RELPROP_RULE_SETS",
    "resolve_name",
    "TokenGrid",
]
