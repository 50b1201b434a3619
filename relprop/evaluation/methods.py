"""The implementation of :mod:`relprop.methods` (the public module; its docstring describes it)."""

from __future__ import annotations

import hashlib
import importlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..errors import InputError, RuleError
from ..rules import registry
from .attention_methods import ATTENTION_METHODS, attention_method, attention_unavailable
from .metrics import Method

__all__ = [
    "ATTENTION_METHODS",
    "BASELINES",
    "CAM_METHODS",
    "CAPTUM_METHODS",
    "CamLayer",
    "LAYER_METHODS",
    "METHOD_NAMES",
    "RELPROP_METHODS",
    "RELPROP_RULE_SETS",
    "TokenGrid",
    "build_methods",
    "check_variant",
    "ABSLRP_VARIANTS",
    "ABSLRP_VARIANT_METHODS",
    "cam_method",
    "captum_method",
    "constant_method",
    "find_cam_layer",
    "get_method",
    "lrp_method",
    "random_method",
    "relprop_method",
    "resolve_name",
]

#: the registry's rule sets compared as methods (:mod:`relprop.rules.registry`)
RELPROP_RULE_SETS = ("abslrp", "clrp", "epsilon", "alpha1beta0", "alphabeta", "rap", "crap", "attnlrp")
#: their method names: the entries' display names (absLRP, cLRP, LRP-ε, LRP-α1β0, LRP-α2β1, RAP, cRAP)
RELPROP_METHODS: tuple[str, ...] = tuple(registry.entry(n).display for n in RELPROP_RULE_SETS)
#: Captum's methods (``pip install 'relprop[captum]'``)
CAPTUM_METHODS = (
    "Saliency",
    "InputXGradient",
    "IntegratedGradients",
    "SmoothGrad",
    "DeepLIFT",
    "Deconvolution",
    "GuidedGradCAM",
    "LayerGradCam",
)
#: grad-cam's methods (``pip install 'relprop[cam]'``)
CAM_METHODS = ("GradCAM", "HiResCAM", "GradCAM++", "LayerCAM")
#: the baselines: the same value everywhere, uniform noise
BASELINES = ("constant", "random")
#: every method, in display order
METHOD_NAMES: tuple[str, ...] = RELPROP_METHODS + CAPTUM_METHODS + CAM_METHODS + BASELINES + ATTENTION_METHODS
#: methods that need a spatial feature map (a model with an ``nn.Conv2d``)
LAYER_METHODS = ("GuidedGradCAM", "LayerGradCam") + CAM_METHODS

CAPTUM_HINT = "pip install 'relprop[captum]'"
CAM_HINT = "pip install 'relprop[cam]'"
IG_STEPS = 16
SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_NOISE = 0.15

_GRADCAM_CLASSES = {
    "GradCAM": "GradCAM",
    "HiResCAM": "HiResCAM",
    "GradCAM++": "GradCAMPlusPlus",
    "LayerCAM": "LayerCAM",
}


# ---------------------------------------------------------------- names


def _key(name: str) -> str:
    k = name.lower().replace("ε", "eps").replace("epsilon", "eps").replace("α", "alpha").replace("β", "beta")
    return "".join(ch for ch in k if ch not in "-_ ")


#: absLRP in one explicit variant each (:data:`ABSLRP_VARIANTS`), whatever ``abslrp_variant`` says:
#: to show both side by side; built only when named
ABSLRP_VARIANT_METHODS = {"absLRP (no maxpool division)": "vgg", "absLRP (maxpool division)": "resnet"}
_BY_KEY = {_key(n): n for n in (*METHOD_NAMES, *ABSLRP_VARIANT_METHODS)}
_BY_KEY.update({"abslrpvgg": "absLRP (no maxpool division)", "abslrpresnet": "absLRP (maxpool division)"})


def _rule_set_method(name: str) -> str | None:
    """The relprop method whose registry entry ``name`` spells (None: none)."""
    try:
        display = registry.entry(name).display
    except RuleError:
        return None
    return display if display in RELPROP_METHODS else None


def resolve_name(name: str) -> str:
    """Find the method name in [`METHOD_NAMES`][relprop.methods.METHOD_NAMES] that ``name`` spells.

    Matching ignores case, ``-``, ``_`` and spaces; ε, α, β may be written
    ``eps``/``epsilon``, ``alpha``, ``beta`` (``"lrp-alpha1beta0"``). A name of
    [`relprop.rules.registry`][relprop.rules.registry] whose rule set is a method also works
    (``"epsilon"``, ``"alphabeta"``: ``LRP-ε``, ``LRP-α2β1``).

    Args:
        name: the name as written.

    Returns:
        The method's name as in ``METHOD_NAMES``.

    Raises:
        InputError: no method has that name (the message lists the valid names).
    """
    found = _BY_KEY.get(_key(str(name))) or _rule_set_method(name)
    if found is None:
        valid = ", ".join((*METHOD_NAMES, *ABSLRP_VARIANT_METHODS))
        raise InputError(f"unknown attribution method {name!r}; valid names: {valid}")
    return found


def _import(module: str, hint: str) -> Any:
    """Import an optional dependency; a missing one raises InputError with the install hint."""
    top = module.split(".")[0]
    try:
        importlib.import_module(top)
        return importlib.import_module(module)
    except ImportError as err:
        raise InputError(f"{top} is not installed ({err}); {hint}") from None


def _missing(module: str, hint: str) -> str | None:
    try:
        _import(module, hint)
    except InputError as err:
        return str(err)
    return None


# ---------------------------------------------------------------- keeping the model as it was


@contextmanager
def _preserved(model: nn.Module, freeze: bool) -> Iterator[None]:
    """Eval mode (and frozen parameters if ``freeze``) inside; everything restored afterwards."""
    modules = list(model.modules())
    flags = [m.training for m in modules]
    params = list(model.parameters())
    state = [(p.requires_grad, p.grad) for p in params]
    attrs = [set(vars(m)) for m in modules]
    hooks = [{k: set(v) for k, v in vars(m).items() if "hooks" in k and isinstance(v, dict)} for m in modules]
    try:
        for m in modules:
            m.training = False
        if freeze:
            for p in params:
                p.requires_grad_(False)
        yield
    finally:
        for m, flag, before, hk in zip(modules, flags, attrs, hooks):
            m.training = flag
            for k in set(vars(m)) - before:
                delattr(m, k)
            for k, keys in hk.items():
                d = getattr(m, k)
                for h in [h for h in d if h not in keys]:
                    del d[h]
        for p, (req, grad) in zip(params, state):
            p.requires_grad_(req)
            p.grad = grad


def _input(x: Tensor, requires_grad: bool = True) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"attribution methods take float images shaped (N, C, H, W), got {shape}")
    return x.detach().clone().requires_grad_(requires_grad)


def _target(target: Tensor, x: Tensor) -> Tensor:
    t = torch.as_tensor(target, device=x.device).reshape(-1).long()
    if t.numel() != x.shape[0]:
        raise InputError(f"target must hold one class index per image ({x.shape[0]}), got {t.numel()}")
    return t


def _finish(a: Tensor, x: Tensor) -> Tensor:
    """Relevance detached, in x's dtype and device, CAM maps (N, 1 or none, H, W) repeated over C."""
    a = a.detach().to(dtype=x.dtype, device=x.device)
    if a.dim() == 3:
        a = a.unsqueeze(1)
    if a.shape[1] == 1 and x.shape[1] != 1:
        a = a.expand(-1, x.shape[1], -1, -1)
    return a.contiguous()


# ---------------------------------------------------------------- CAM layer


class TokenGrid:
    """Reshape ViT tokens (N, T, D) to a feature map (N, D, h, w), dropping the first ``T - h*w`` tokens.

    The dropped tokens are class and register tokens; [`inverse`][relprop.methods.TokenGrid.inverse]
    puts a map back.

    Args:
        h: the grid's height in patches.
        w: its width.
    """

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w

    def __call__(self, tokens: Tensor) -> Tensor:
        n, t, d = tokens.shape
        return tokens[:, t - self.h * self.w :].transpose(1, 2).reshape(n, d, self.h, self.w)

    def inverse(self, grid: Tensor, tokens: Tensor) -> Tensor:
        """Put a feature map back into token form.

        Args:
            grid: the map (N, D, h, w).
            tokens: the tokens it was made from (N, T, D), whose first ``T - h*w`` are kept.

        Returns:
            Tokens (N, T, D).
        """
        n, t, d = tokens.shape
        patches = grid.reshape(n, d, self.h * self.w).transpose(1, 2)
        return torch.cat([tokens[:, : t - self.h * self.w], patches], dim=1)

    def __repr__(self) -> str:
        return f"TokenGrid({self.h}, {self.w})"


class CamLayer(NamedTuple):
    """The layer CAM methods read.

    Attributes:
        name: its module name.
        module: the module.
        grid: for token layers, the reshape to a feature map; None for convolutional layers.
    """

    name: str
    module: nn.Module
    grid: TokenGrid | None = None


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def find_cam_layer(model: nn.Module, x: Tensor) -> CamLayer:
    """The layer CAM methods read, found by one forward pass on ``x[:1]`` (and one backward for ViTs).

    * Let ``conv`` be the last ``nn.Conv2d`` (in execution order) with a spatial
      output (h*w > 1). No such layer -> InputError.
    * ViT-like: if modules after ``conv`` output tokens (N, T, D) with D = conv's
      channels and T = h*w or 1 + h*w (+ class token), the layer is the last such
      module whose patch tokens still affect the output (nonzero gradient), read
      through :class:`TokenGrid` (class token dropped). For a pre-norm ViT this is
      the first LayerNorm of the last block (the patch tokens of the last block's
      output do not reach the class token).
    * CNN: the last module (in execution order) with a spatial 4-D output at or after
      ``conv``: the block or stage containing the last convolution (``features`` of a
      VGG, the last residual block of a ResNet) rather than the bare convolution,
      which in a ResNet may be a 1×1 shortcut convolution.

    Args:
        model: the model.
        x: an input batch (only its first sample is used).

    Returns:
        The [`CamLayer`][relprop.methods.CamLayer]: the module and how to read its output.

    Raises:
        InputError: the model has no convolution with a spatial output.
    """
    records: list[tuple[str, nn.Module, Tensor]] = []

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, inp: Any, out: Any) -> None:
            if isinstance(out, Tensor):
                records.append((name, module, out))

        return fn

    xg = _input(x[:1])
    with _preserved(model, freeze=True), torch.inference_mode(False), torch.enable_grad():
        handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if m is not model]
        try:
            out = model(xg)
        finally:
            for h in handles:
                h.remove()
        convs = [
            i for i, (_, m, o) in enumerate(records)
            if isinstance(m, nn.Conv2d) and o.dim() == 4 and o.shape[2] * o.shape[3] > 1
        ]  # fmt: skip
        if not convs:
            raise InputError("the model has no nn.Conv2d with a spatial output; CAM methods need a feature map")
        ci = convs[-1]
        _, _, co = records[ci]
        d, h, w = co.shape[1:]
        later = records[ci + 1 :]
        tokens = [
            r for r in later
            if r[2].dim() == 3 and r[2].shape[2] == d and r[2].shape[1] in (h * w, h * w + 1) and r[2].requires_grad
        ]  # fmt: skip
        if tokens and isinstance(out, Tensor):
            score = out.reshape(out.shape[0], -1).max(dim=1).values.sum()
            grads = torch.autograd.grad(score, [r[2] for r in tokens], allow_unused=True)
            used = [r for r, g in zip(tokens, grads) if g is not None and g[:, -h * w :].abs().sum() > 0]
            if not used:
                raise InputError("no token layer of this ViT-like model reaches its output; CAM methods cannot run")
            name, module, _ = used[-1]
            return CamLayer(name, module, TokenGrid(h, w))
        spatial = [r for r in [records[ci], *later] if r[2].dim() == 4 and r[2].shape[2] * r[2].shape[3] > 1]
        name, module, _ = spatial[-1]
        return CamLayer(name, module)


class _LayerCache:
    """The CAM layer of each model (given, or found on the first input of each image shape)."""

    def __init__(self, layer: nn.Module | CamLayer | None) -> None:
        self.layer = layer
        self.cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, CamLayer]] = weakref.WeakKeyDictionary()

    def __call__(self, model: nn.Module, x: Tensor) -> CamLayer:
        if isinstance(self.layer, CamLayer):
            return self.layer
        if isinstance(self.layer, nn.Module):
            return CamLayer(type(self.layer).__name__, self.layer)
        per = self.cache.setdefault(model, {})
        key = tuple(x.shape[1:])
        if key not in per:
            per[key] = find_cam_layer(model, x)
        return per[key]


@contextmanager
def _captum_layer(layer: CamLayer) -> Iterator[nn.Module]:
    """The module captum should hook: the layer itself, or for token layers an identity
    module that sees the tokens as a (N, D, h, w) map (a temporary hook routes them through it)."""
    if layer.grid is None:
        yield layer.module
        return
    grid = layer.grid
    view = nn.Identity()

    def hook(module: nn.Module, inp: Any, out: Tensor) -> Tensor:
        return grid.inverse(view(grid(out)), out)

    handle = layer.module.register_forward_hook(hook)
    try:
        yield view
    finally:
        handle.remove()


# ---------------------------------------------------------------- relprop

#: absLRP as the authors apply it per architecture (``relprop_method(variant=...)``): their
#: VGG rule set skips the division by |y| at max pooling, their ResNet rule set divides
ABSLRP_VARIANTS = {"vgg": {"maxpool_divide": False}, "resnet": {"maxpool_divide": True}}


def check_variant(variant: str | None) -> None:
    """Check an absLRP variant.

    Args:
        variant: None, ``"vgg"`` or ``"resnet"``.

    Raises:
        InputError: anything else.
    """
    if variant is not None and variant not in ABSLRP_VARIANTS:
        raise InputError(
            f"unknown absLRP variant {variant!r}; expected one of {', '.join(ABSLRP_VARIANTS)} "
            "(vgg: AbsLRP(maxpool_divide=False), resnet: AbsLRP())"
        )


def relprop_method(rules: Any = None, *, variant: str | None = None, **explain_kwargs: Any) -> Method:
    """Make a method that explains with a relprop rule set; it traces once per model.

    Args:
        rules: the rule set; None: absLRP, in the authors' ``variant`` for the architecture
            family (``"vgg"``: ``AbsLRP(maxpool_divide=False)``, the variant of their VGG
            tables; ``"resnet"`` or None: ``AbsLRP()``). The variant is an explicit choice,
            never guessed from the model.
        variant: as above; only with ``rules=None``.
        **explain_kwargs: passed to [`Graph.explain`][relprop.Graph.explain].

    Returns:
        The [`Method`][relprop.metrics.Method]: ``method(model, x, target) -> relevance``
        shaped like ``x``, detached.

    Raises:
        InputError: an unknown variant, or a variant given with ``rules``.
    """
    import relprop

    check_variant(variant)
    if variant is not None and rules is not None:
        raise InputError("give either rules or an absLRP variant, not both")
    if rules is None:
        rules = relprop.rules.AbsLRP(**ABSLRP_VARIANTS.get(variant or "resnet", {}))
    cache: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()

    def method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        if model not in cache:
            cache[model] = relprop.trace(model, rules=rules)
        return cache[model].explain(x, target, **explain_kwargs)

    return method


def constant_method(value: float = 1.0) -> Method:
    """Make the constant baseline: the same value everywhere.

    Args:
        value: the value.

    Returns:
        The [`Method`][relprop.metrics.Method].
    """

    def method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return torch.full_like(x, value)

    return method


def random_method(seed: int = 0) -> Method:
    """Make the random baseline: uniform noise in [0, 1).

    The noise is drawn from a generator seeded with ``seed`` and a digest of the input, so the
    same input gets the same map in any process and order (GAE sharded over
    ``torch.distributed`` ranks scores it as one process does).

    Args:
        seed: the seed.

    Returns:
        The [`Method`][relprop.metrics.Method].
    """

    def method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        data = x.detach().cpu().contiguous().numpy().tobytes()
        digest = int.from_bytes(hashlib.blake2b(data, digest_size=7).digest(), "little")
        gen = torch.Generator().manual_seed(seed * 1_000_003 + digest)
        return torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)

    return method


def lrp_method(name: str, *, variant: str | None = None) -> Method:
    """Make one of the relprop rule sets a method by name: absLRP, cLRP, LRP-ε, LRP-α1β0, LRP-α2β1, RAP, cRAP.

    The rule set is a fresh one from its [`relprop.rules.registry`][relprop.rules.registry]
    entry, explained with the set's defaults (absLRP, cLRP and cRAP contrastive, the others
    from the target logit).

    Args:
        name: the method's name (matched as in [`resolve_name`][relprop.methods.resolve_name]).
        variant: absLRP's per-architecture variant
            ([`relprop_method`][relprop.methods.relprop_method]), except for the names of
            [`ABSLRP_VARIANT_METHODS`][relprop.methods.ABSLRP_VARIANT_METHODS], which fix it.

    Returns:
        The [`Method`][relprop.metrics.Method].

    Raises:
        InputError: the name is not a relprop rule set, or an unknown variant.
    """
    name = resolve_name(name)
    if name in ABSLRP_VARIANT_METHODS:
        name, variant = "absLRP", ABSLRP_VARIANT_METHODS[name]
    if name not in RELPROP_METHODS:
        raise InputError(f"{name!r} is not a relprop rule set; those are: {', '.join(RELPROP_METHODS)}")
    if variant is not None and name == "absLRP":
        inner = relprop_method(variant=variant)
    else:
        inner = relprop_method(registry.rule_set(name))

    def method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        with _preserved(model, freeze=False):
            return _finish(inner(model, x, _target(target, x)), x)

    return method


# ---------------------------------------------------------------- captum


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's RNG seeded with ``seed`` inside, restored afterwards."""
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def captum_method(name: str, *, layer: nn.Module | CamLayer | None = None, seed: int = 0, **kwargs: Any) -> Method:
    """Make a Captum method by name (see [`CAPTUM_METHODS`][relprop.methods.CAPTUM_METHODS]).

    Args:
        name: the method.
        layer: the CAM layer of GuidedGradCAM and LayerGradCam (default:
            [`find_cam_layer`][relprop.methods.find_cam_layer]).
        seed: seeds SmoothGrad's noise.
        **kwargs: passed to the Captum method's ``attribute``.

    Returns:
        The [`Method`][relprop.metrics.Method].

    Raises:
        InputError: an unknown name, or Captum is not installed (with the install hint).
    """
    name = resolve_name(name)
    if name not in CAPTUM_METHODS:
        raise InputError(f"{name!r} is not a captum method; those are: {', '.join(CAPTUM_METHODS)}")
    attr = _import("captum.attr", CAPTUM_HINT)
    layers = _LayerCache(layer)

    def run(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        if name == "Saliency":
            return attr.Saliency(model).attribute(x, target=t, **{"abs": True, **kwargs})
        if name == "InputXGradient":
            return attr.InputXGradient(model).attribute(x, target=t, **kwargs)
        if name == "IntegratedGradients":
            opts = {"baselines": 0.0, "n_steps": IG_STEPS, "internal_batch_size": n, **kwargs}
            return attr.IntegratedGradients(model).attribute(x, target=t, **opts)
        if name == "SmoothGrad":
            stdev = SMOOTHGRAD_NOISE * float(x.detach().max() - x.detach().min())
            opts = {"nt_samples": SMOOTHGRAD_SAMPLES, "nt_samples_batch_size": 1, "stdevs": stdev, **kwargs}
            with _seeded(seed, x.device):
                return attr.NoiseTunnel(attr.Saliency(model)).attribute(x, target=t, nt_type="smoothgrad", **opts)
        if name == "DeepLIFT":
            return attr.DeepLift(model).attribute(x, target=t, **{"baselines": 0.0, **kwargs})
        if name == "Deconvolution":
            return attr.Deconvolution(model).attribute(x, target=t, **kwargs)
        with _captum_layer(layers(model, x)) as module:
            if name == "GuidedGradCAM":
                return attr.GuidedGradCam(model, module).attribute(x, target=t, **kwargs)
            cam = attr.LayerGradCam(model, module).attribute(x, target=t, **{"relu_attributions": True, **kwargs})
        return attr.LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")

    def method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        t = _target(target, x)
        with _preserved(model, freeze=True), torch.inference_mode(False), torch.enable_grad():
            xg = _input(x)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"(?s).*hooks", category=UserWarning)
                warnings.filterwarnings("ignore", message=r"(?s).*in-place", category=UserWarning)
                a = run(model, xg, t)
        return _finish(a, x)

    return method


# ---------------------------------------------------------------- grad-cam


def cam_method(name: str, layer: nn.Module | CamLayer | None = None) -> Method:
    """Make a ``pytorch_grad_cam`` method by name (see [`CAM_METHODS`][relprop.methods.CAM_METHODS]).

    Args:
        name: the method.
        layer: the layer it reads (default: [`find_cam_layer`][relprop.methods.find_cam_layer]).

    Returns:
        The [`Method`][relprop.metrics.Method].

    Raises:
        InputError: an unknown name, or grad-cam is not installed (with the install hint).
    """
    name = resolve_name(name)
    if name not in CAM_METHODS:
        raise InputError(f"{name!r} is not a grad-cam method; those are: {', '.join(CAM_METHODS)}")
    lib = _import("pytorch_grad_cam", CAM_HINT)
    targets_mod = _import("pytorch_grad_cam.utils.model_targets", CAM_HINT)
    cls = getattr(lib, _GRADCAM_CLASSES[name])
    layers = _LayerCache(layer)

    def method(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        t = _target(target, x)
        cam_layer = layers(model, x)
        with _preserved(model, freeze=True), torch.inference_mode(False), torch.enable_grad():
            xg = _input(x)  # parameters are frozen: the gradient must come from the input
            cam = cls(model=model, target_layers=[cam_layer.module], reshape_transform=cam_layer.grid)
            try:
                maps = cam(input_tensor=xg, targets=[targets_mod.ClassifierOutputTarget(int(c)) for c in t])
            finally:
                cam.activations_and_grads.release()
                cam.outputs = None
        return _finish(torch.from_numpy(maps), x)

    return method


# ---------------------------------------------------------------- all methods


def get_method(name: str, *, seed: int = 0, abslrp_variant: str | None = None) -> Method:
    """Make one method by name, without checking that it suits a model.

    Args:
        name: any of [`METHOD_NAMES`][relprop.methods.METHOD_NAMES] (matched as in
            [`resolve_name`][relprop.methods.resolve_name]).
        seed: seeds SmoothGrad's noise and the random baseline.
        abslrp_variant: absLRP's per-architecture variant
            ([`relprop_method`][relprop.methods.relprop_method]).

    Returns:
        The [`Method`][relprop.metrics.Method].

    Raises:
        InputError: an unknown name or variant, or the method's package is not installed.
    """
    name = resolve_name(name)
    if name in RELPROP_METHODS or name in ABSLRP_VARIANT_METHODS:
        return lrp_method(name, variant=abslrp_variant)
    if name in CAPTUM_METHODS:
        return captum_method(name, seed=seed)
    if name in CAM_METHODS:
        return cam_method(name)
    if name in ATTENTION_METHODS:
        return attention_method(name)
    if name == "constant":
        return constant_method(1.0)
    return random_method(seed)


def _unavailable(name: str, model: nn.Module) -> str | None:
    """Why ``name`` cannot run on ``model`` (None: it can)."""
    if name in CAPTUM_METHODS:
        why = _missing("captum.attr", CAPTUM_HINT)
        if why:
            return why
    if name in CAM_METHODS:
        why = _missing("pytorch_grad_cam", CAM_HINT)
        if why:
            return why
    if name in LAYER_METHODS and not _has_conv(model):
        return "the model has no nn.Conv2d layer, so there is no feature map for CAM methods"
    if name in ATTENTION_METHODS:
        return attention_unavailable(model)
    return None


def build_methods(
    model: nn.Module, names: Sequence[str] | None = None, *, seed: int = 0, abslrp_variant: str | None = None
) -> tuple[dict[str, Method], dict[str, str]]:
    """Build the attribution methods usable on ``model``, by name.

    Names are matched as in [`resolve_name`][relprop.methods.resolve_name]; the explicit absLRP
    variants ([`ABSLRP_VARIANT_METHODS`][relprop.methods.ABSLRP_VARIANT_METHODS]) come right
    after ``absLRP``.

    Args:
        model: the model the methods will explain.
        names: the methods; None: every method, those that cannot run (optional package not
            installed, no convolution for CAM methods) skipped with the reason.
        seed: seeds SmoothGrad's noise and the random baseline.
        abslrp_variant: absLRP's per-architecture variant, ``"vgg"`` or ``"resnet"``
            ([`relprop_method`][relprop.methods.relprop_method]).

    Returns:
        ``(methods, skipped)``: the methods by name in
        [`METHOD_NAMES`][relprop.methods.METHOD_NAMES] order, each a
        [`Method`][relprop.metrics.Method], and ``{name: reason}`` of those left out.

    Raises:
        InputError: with ``names`` given, an unknown name or a method that cannot run (the
            message names the reason and what to install, or the valid names); an unknown
            ``abslrp_variant``.
    """
    check_variant(abslrp_variant)
    if isinstance(names, str):
        names = [names]
    wanted = set(METHOD_NAMES if names is None else (resolve_name(n) for n in names))
    methods: dict[str, Method] = {}
    skipped: dict[str, str] = {}
    n = METHOD_NAMES.index("absLRP") + 1
    for name in (*METHOD_NAMES[:n], *ABSLRP_VARIANT_METHODS, *METHOD_NAMES[n:]):
        if name not in wanted:
            continue
        why = _unavailable(name, model)
        if why is not None:
            if names is not None:
                raise InputError(f"method {name!r} cannot run on this model: {why}")
            skipped[name] = why
            continue
        methods[name] = get_method(name, seed=seed, abslrp_variant=abslrp_variant)
    return methods, skipped
