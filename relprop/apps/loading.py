"""Loading a model named on the command line (``--model``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_model"]


def load_model(spec: str) -> tuple[str, object]:
    """A model from ``--model``: shipped name, ``module:attr``, ``file.py:attr`` or a torch.save file."""
    import importlib
    import importlib.util

    import torch
    from torch import nn

    from relprop.apps import models
    from relprop.errors import InputError

    if spec in models.DIGITS_MODELS:
        return spec, models.load_digits_model(spec)
    if ":" in spec and not Path(spec).is_file():
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
        name = attr
    elif Path(spec).is_file():
        obj = torch.load(spec, map_location="cpu", weights_only=False)
        name = Path(spec).stem
    else:
        raise InputError(
            f"--model {spec!r} is not a shipped model ({', '.join(models.DIGITS_MODELS)}), "
            "a 'module:attr' or 'file.py:attr', or an existing file"
        )
    if not isinstance(obj, nn.Module):
        raise InputError(f"--model {spec} gave a {type(obj).__name__}, expected a torch.nn.Module")
    return name, obj.eval()
