"""Loading a model named on the command line (``--model SPEC``, ``--weights FILE``), safely by default.

SPEC (``relprop explain`` and ``relprop evaluate``):

* ``vgg``, ``resnet``, ``vit``: the shipped digits models (:mod:`relprop.apps.models`);
* ``imagenet``: EfficientNet-Lite0 with ImageNet weights (:func:`relprop.apps.imagenet.load_imagenet_model`);
* ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)``; nothing is downloaded, so its
  weights are random unless ``--weights`` is given (:attr:`LoadedModel.warning` says so);
* ``module:attr`` or ``file.py:attr``: an ``nn.Module`` or a function returning one (this imports
  and runs that Python code: it is code you name, not data);
* ``FILE``: a whole module saved with ``torch.save(model)``.  Unpickling it runs code from the
  file, so it is refused unless ``allow_pickle=True`` (``--allow-pickle``); the refusal says what
  the file holds and what to do instead.

Safe loading, as ``torch.load`` is by default since PyTorch 2.6: ``--weights FILE`` is a state
dict read with ``torch.load(weights_only=True)`` (no code runs) or a ``.safetensors`` file; a
checkpoint dict holding the state dict under ``state_dict``, ``model_state_dict`` or ``model``
works too, and a ``module.`` prefix on every key (``DistributedDataParallel``) is dropped.  The
state dict must fit the model exactly (``load_state_dict(strict=True)``).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relprop.errors import InputError

__all__ = ["LoadedModel", "load_model", "load_model_spec", "load_state_dict"]

#: where checkpoint dicts usually keep the state dict
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass
class LoadedModel:
    """A model from ``--model``: its name, the module (eval mode) and what is known about its data.

    ``kind``: ``"digits"``, ``"imagenet"``, ``"timm"`` or ``"user"``.  ``classes``: class names by
    index where the spec knows them (None: unknown).  ``data``: the spec's preprocessing
    (digits: size, mean, std; timm: timm's resolved data config; imagenet: ``{"transform": ...}``).
    ``warning``: something the user should be told (e.g. random weights), or None.
    """

    name: str
    model: Any
    kind: str
    classes: list[str] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None


def load_model(spec: str, *, allow_pickle: bool = False) -> tuple[str, object]:
    """``(name, model)`` from ``--model SPEC`` (see the module docstring); eval mode; warnings to stderr."""
    import sys

    loaded = load_model_spec(spec, allow_pickle=allow_pickle)
    if loaded.warning:
        print(f"relprop: warning: {loaded.warning}", file=sys.stderr)
    return loaded.name, loaded.model


def load_model_spec(spec: str, *, weights: str | None = None, allow_pickle: bool = False) -> LoadedModel:
    """The model of ``--model SPEC`` (and ``--weights FILE``), or an InputError naming what is wrong."""
    from torch import nn

    from relprop.apps import models

    if spec in models.DIGITS_MODELS:
        loaded = LoadedModel(
            spec,
            models.load_digits_model(spec),
            "digits",
            [str(c) for c in range(models.CLASSES)],
            {"size": models.SIZE, "mean": (models.MEAN,), "std": (models.STD,)},
        )
    elif spec == "imagenet":
        loaded = _imagenet()
    elif spec.startswith("timm:"):
        loaded = _timm(spec, weights)
    elif ":" in spec and not Path(spec).is_file():
        loaded = LoadedModel(spec.rsplit(":", 1)[1], _import(spec), "user")
    elif Path(spec).is_file():
        loaded = LoadedModel(Path(spec).stem, _unpickle_model(spec, allow_pickle), "user")
    else:
        raise InputError(
            f"--model {spec!r} is not a shipped model ({', '.join(models.DIGITS_MODELS)}), 'imagenet', "
            "'timm:NAME', a 'module:attr' or 'file.py:attr', or an existing file"
        )
    if not isinstance(loaded.model, nn.Module):
        raise InputError(f"--model {spec} gave a {type(loaded.model).__name__}, expected a torch.nn.Module")
    if weights is not None:
        _apply_weights(loaded.model, weights, spec)
    loaded.model.eval()
    return loaded


def _imagenet() -> LoadedModel:
    try:
        from relprop.apps.imagenet import load_imagenet_model
    except ImportError as e:  # the module itself is missing (an older installation)
        raise InputError(f"--model imagenet is not available in this installation: {e}") from e
    try:
        model, transform, classes = load_imagenet_model()
    except (ImportError, FileNotFoundError) as e:
        raise InputError(f"--model imagenet: {e}") from e
    return LoadedModel("imagenet", model, "imagenet", list(classes), {"transform": transform})


def _timm(spec: str, weights: str | None) -> LoadedModel:
    name = spec[len("timm:") :]
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError as e:
        raise InputError(f"--model {spec} needs timm: pip install timm (or relprop[models])") from e
    if not name or not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:8] if name else []
        hint = f"; similar names: {', '.join(close)}" if close else "; timm.list_models() lists them"
        raise InputError(f"--model {spec}: timm has no model {name!r}{hint}")
    model = timm.create_model(name, pretrained=False)
    warning = None
    if weights is None:
        warning = (
            f"--model {spec} has random weights (relprop downloads nothing); "
            "pass --weights FILE (a state dict or .safetensors file) for trained ones"
        )
    return LoadedModel(name, model, "timm", None, resolve_data_config({}, model=model), warning)


def _import(spec: str) -> Any:
    """``module:attr`` or ``file.py:attr``: the attribute, called if it is a function (not a module)."""
    import importlib
    import importlib.util

    from torch import nn

    where, attr = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            if not Path(where).is_file():
                raise InputError(f"--model {spec}: file {where} does not exist")
            loader = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as e:
        raise InputError(f"--model {spec}: cannot import {where}: {e}") from e
    if not hasattr(module, attr):
        raise InputError(f"--model {spec}: {where} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if not isinstance(obj, nn.Module) and callable(obj):
        obj = obj()
    return obj


def _torch_load_safe(path: str) -> Any:
    """``torch.load(path, weights_only=True)``; a pickle that needs code raises ``pickle.UnpicklingError``."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on a file that is not its format
        raise InputError(f"cannot read {path} as a file written by torch.save: {e}") from e


def _refused_global(e: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused, from its message (``GLOBAL module.Class``)."""
    import re

    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    return f"it refers to {found.group(1)}" if found else "torch.load(weights_only=True) refused it"


def _unpickle_model(path: str, allow_pickle: bool) -> Any:
    """A whole module saved with ``torch.save(model)``: only with ``allow_pickle``."""
    import torch

    if path.endswith(".safetensors"):
        raise InputError(
            f"--model {path}: a .safetensors file holds weights only; pass it as --weights {path} with a "
            "--model that builds the architecture ('module:attr', 'file.py:attr' or 'timm:NAME')"
        )
    if not allow_pickle:
        try:
            obj = _torch_load_safe(path)
        except pickle.UnpicklingError:
            raise InputError(
                f"--model {path} is a pickled module: loading it runs code from the file "
                "(torch.load(weights_only=False)). Pass --allow-pickle if you trust the file, or save "
                "its state dict (torch.save(model.state_dict(), FILE)) and pass it as --weights FILE with a "
                "--model that builds the architecture ('module:attr', 'file.py:attr' or 'timm:NAME')"
            ) from None
        _refuse_state_dict(path, obj)
        return obj
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - unpickling can raise anything the file's code raises
        raise InputError(f"cannot load --model {path} (torch.load): {type(e).__name__}: {e}") from e
    _refuse_state_dict(path, obj)
    return obj


def _refuse_state_dict(path: str, obj: Any) -> None:
    if isinstance(obj, Mapping):
        raise InputError(
            f"--model {path} holds a state dict (weights), not a model; pass it as --weights {path} with a "
            "--model that builds the architecture ('module:attr', 'file.py:attr' or 'timm:NAME')"
        )


def load_state_dict(path: str) -> dict[str, Any]:
    """The tensors of ``--weights FILE`` (a state dict, a checkpoint holding one, or ``.safetensors``)."""
    from torch import Tensor

    if not Path(path).is_file():
        raise InputError(f"--weights {path} does not exist")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise InputError(f"--weights {path}: reading .safetensors needs: pip install safetensors") from e
        try:
            return dict(load_file(path, device="cpu"))
        except Exception as e:  # noqa: BLE001 - safetensors' own error types
            raise InputError(f"cannot read --weights {path} as a .safetensors file: {e}") from e
    try:
        obj = _torch_load_safe(path)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"--weights {path} is not a plain state dict: it pickles objects whose loading runs code "
            f"({_refused_global(e)}). Save only the tensors (torch.save(model.state_dict(), FILE)) or a "
            ".safetensors file; a whole pickled module goes to --model FILE --allow-pickle"
        ) from None
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        obj = inner if inner is not None else obj
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(
            f"--weights {path} holds a {type(obj).__name__}, expected a state dict of tensors "
            f"(torch.save(model.state_dict(), FILE)), or a checkpoint dict with one under {', '.join(CHECKPOINT_KEYS)}"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _apply_weights(model: Any, path: str, spec: str) -> None:
    state = load_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"--weights {path} does not fit --model {spec}: {e}") from e
