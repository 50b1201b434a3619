"""An on-disk cache of ``torch.export`` programs, shared between processes.

Exporting a large model takes seconds; a second process explaining the same model
loads the program from ``cache_dir() / "programs"`` instead.  An entry is keyed by
:func:`key_of`, a sha256 of everything the export depends on (library versions, the
source files of the model's classes, the model's structure and constant tensors, the
input signature, the caller's variant), and holds the program WITHOUT its parameter and
buffer values: relprop reads those live from the model.

Use::

    key = key_of(model, args, kwargs, dynamic_shapes, "training-ir")
    ep = load(key) if key is not None else None
    if ep is None or not fits(ep, args, kwargs):  # "*" dims may still have been specialized or guarded
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
        if key is not None:
            store(key, ep)

Entry format (``programs/<key>.pt2``)::

    b"RELPROP-PROGRAM\\n"
    header: one line of JSON {"format", "key", "torch", "size", "sha256", "program", "meta"}
    payload: program JSON | meta JSON | raw bytes of the constant tensors

``program`` is torch's own JSON schema of an ExportedProgram (``torch._export.serde``);
``meta`` describes the state dict (shapes and dtypes only: it is rebuilt as meta
tensors) and the constants (dtype, shape, stride, device, offset into the raw bytes).
Non-persistent buffers (which export puts among the constants) are stored as meta
tensors too.  Nothing is unpickled on load, and before torch's deserializer sees the
JSON every operator name is checked to resolve to a registered op (torch would
otherwise call any ``torch.*`` callable a node names), every symbolic expression to
hold only numbers, shape symbols and sympy arithmetic (torch parses them with
``sympy.sympify``, which evaluates Python), and every shape guard to hold only input
sizes and arithmetic (``ep.module()`` compiles guards with ``exec``).  A file whose
header, checksum or contents do not check out is deleted and reported as a miss.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import enum
import functools
import hashlib
import inspect
import json
import logging
import math
import operator
import os
import re
import sys
import sysconfig
import tempfile
import threading
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["cache_dir", "discard", "fits", "flush", "key_of", "load", "store"]

log = logging.getLogger("relprop")

#: bumped when the entry layout or what a key covers changes
FORMAT = 1
_MAGIC = b"RELPROP-PROGRAM\n"
_SUFFIX = ".pt2"
_KEY = re.compile(r"[0-9a-f]{64}")
_HEADER_LIMIT = 1 << 16

#: torch's (de)serializer keeps global state (the current deserializer): one at a time
_SERDE_LOCK = threading.Lock()


def cache_dir() -> Path:
    """``$RELPROP_CACHE_DIR``, else ``$XDG_CACHE_HOME/relprop``, else ``~/.cache/relprop``."""
    own = os.environ.get("RELPROP_CACHE_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "relprop"
    return Path.home() / ".cache" / "relprop"


def _programs() -> Path:
    return cache_dir() / "programs"


# -- the key ---------------------------------------------------------------------------


class _Unkeyable(Exception):
    """The model or input cannot be fingerprinted reliably: do not cache."""


#: source file path -> sha256 of its bytes; files are taken not to change under a running process
_FILE_DIGESTS: dict[str, str] = {}
#: module name -> digests of the files its globals come from (see _module_deps)
_MODULE_DEPS: dict[str, tuple] = {}
_DIGEST_LOCK = threading.Lock()

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_STDLIB_DIR = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep

#: module attributes that are torch's own bookkeeping (hooks are checked separately)
_SKIPPED_PREFIXES = ("_forward_hooks", "_forward_pre_hooks", "_backward_", "_state_dict_", "_load_state_dict_")
_SKIPPED = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_is_full_backward_hook"}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _file_digest(path: str) -> str:
    with _DIGEST_LOCK:
        digest = _FILE_DIGESTS.get(path)
    if digest is None:
        try:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as err:
            raise _Unkeyable(f"cannot read source file {path}: {err}") from None
        with _DIGEST_LOCK:
            _FILE_DIGESTS[path] = digest
    return digest


def _source_file(obj: Any) -> str | None:
    """The existing source file of a class or function, or None."""
    try:
        path = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
    return path if path and os.path.isfile(path) else None


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


def _code(obj: Any) -> tuple:
    """The name of a class or function and a digest of its source file (and its module's imports)."""
    path = _source_file(obj)
    if path is None:
        raise _Unkeyable(f"no source file for {_name(obj)}")
    return (_name(obj), _file_digest(path), _module_deps(getattr(obj, "__module__", None)))


def _module_deps(module_name: str | None) -> tuple:
    """Digests of the files a module's globals (imported functions, classes, modules) live in.

    One level deep, outside torch and the standard library (covered by the versions), so
    that a helper a model's file imports from another file of the user's is covered too.
    """
    if module_name is None:
        return ()
    with _DIGEST_LOCK:
        deps = _MODULE_DEPS.get(module_name)
    if deps is not None:
        return deps
    module = sys.modules.get(module_name)
    found: dict[str, str] = {}
    for value in list(vars(module).values()) if module is not None else []:
        if isinstance(value, types.ModuleType):
            path, name = getattr(value, "__file__", None), value.__name__
        elif isinstance(value, (type, types.FunctionType)):
            path, name = _source_file(value), getattr(value, "__module__", None)
        else:
            continue
        if not path or not isinstance(name, str) or name == module_name or name in found:
            continue
        path = os.path.abspath(path)
        if path.startswith((_TORCH_DIR, _STDLIB_DIR)) or not os.path.isfile(path):
            continue
        try:
            found[name] = _file_digest(path)
        except _Unkeyable:  # best effort: the file the class lives in is required, these are extra
            continue
    deps = tuple(sorted(found.items()))
    with _DIGEST_LOCK:
        _MODULE_DEPS[module_name] = deps
    return deps


def _class_code(cls: type) -> tuple:
    """The code of a module class: every class of its MRO except ``nn.Module`` and ``object``.

    Classes before ``nn.Module`` must have a source file; mixins after it are hashed where
    they have one and named otherwise.
    """
    parts = []
    before = True
    for base in cls.__mro__:
        if base is nn.Module:
            before = False
            continue
        if base is object:
            continue
        if before:
            parts.append(_code(base))
        else:
            path = _source_file(base)
            parts.append((_name(base), _file_digest(path) if path else None))
    return tuple(parts)


def _tensor_digest(t: torch.Tensor) -> str:
    if type(t) not in (torch.Tensor, nn.Parameter) or t.layout != torch.strided or t.is_meta or t.is_quantized:
        raise _Unkeyable(f"a tensor of type {type(t).__name__} / layout {t.layout} cannot be hashed")
    flat = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def _is_hf_config(value: Any) -> bool:
    return type(value).__module__.startswith("transformers.") and callable(getattr(value, "to_json_string", None))


class _Describer:
    """Turns attribute values into nested tuples of plain values (stable across processes)."""

    def __init__(self) -> None:
        self.configs: dict[int, tuple] = {}  # id -> description, within one key_of call

    def __call__(self, value: Any, where: str, depth: int = 0) -> Any:
        if depth > 24:
            raise _Unkeyable(f"{where} is nested too deeply")
        if value is None or isinstance(value, (bool, int, float, str)):
            if isinstance(value, enum.Enum):
                return ("enum", _name(type(value)), self(value.value, where, depth + 1))
            return (type(value).__name__, repr(value))
        if isinstance(value, enum.Enum):
            return ("enum", _name(type(value)), self(value.value, where, depth + 1))
        if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
            return (type(value).__name__, str(value))
        if isinstance(value, torch.Size):
            return ("Size", tuple(value))
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), str(value.dtype), str(value.device), _tensor_digest(value))
        if isinstance(value, (tuple, list)):
            return (_name(type(value)), tuple(self(v, where, depth + 1) for v in value))
        if isinstance(value, dict):
            items = [(self(k, where, depth + 1), self(v, where, depth + 1)) for k, v in value.items()]
            return (_name(type(value)), tuple(sorted(items, key=repr)))
        if isinstance(value, (set, frozenset)):
            return (type(value).__name__, tuple(sorted((self(v, where, depth + 1) for v in value), key=repr)))
        if isinstance(value, nn.Module):
            raise _Unkeyable(f"{where} holds a module that is not a registered submodule")
        if _is_hf_config(value):
            return self.config(value)
        quantizer = getattr(sys.modules.get("transformers.quantizers"), "HfQuantizer", None)
        if quantizer is not None and isinstance(value, quantizer):  # model.hf_quantizer: its configuration
            config = getattr(value, "quantization_config", None)
            settings = config.to_dict() if hasattr(config, "to_dict") else None
            return ("hf-quantizer", _name(type(value)), json.dumps(settings, sort_keys=True, default=str))
        if isinstance(value, functools.partial):
            parts = (value.func, value.args, value.keywords)
            return ("partial", *(self(p, where, depth + 1) for p in parts))
        if isinstance(value, types.MethodType):
            return ("method", self(value.__func__, where, depth + 1), _name(type(value.__self__)))
        if isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)) or (
            callable(value) and type(value).__module__ in ("torch._ops", "builtins") and _source_file(value) is None
        ):
            self_ = getattr(value, "__self__", None)
            owner = None if self_ is None or isinstance(self_, types.ModuleType) else _name(type(self_))
            return ("builtin", _name(value), owner)
        if isinstance(value, (type, types.FunctionType)):
            path = _source_file(value)
            if path is None and isinstance(value, type) and value.__module__ == "builtins":
                return ("class", _name(value))
            return ("code", _code(value))
        raise _Unkeyable(f"{where} is a {_name(type(value))}, which the cache cannot fingerprint")

    def config(self, config: Any) -> tuple:
        """A Hugging Face config: its full JSON and its private plain attributes (e.g. the attention backend)."""
        known = self.configs.get(id(config))
        if known is None:
            try:
                text = config.to_json_string(use_diff=False)
            except TypeError:
                text = config.to_json_string()
            private = []
            pretrained = getattr(sys.modules.get("transformers"), "PretrainedConfig", None)
            if pretrained is not None and isinstance(config, pretrained):  # not GenerationConfig: a hash() in there
                for k, v in sorted(vars(config).items()):
                    if k.startswith("_") and "hash" not in k and (v is None or isinstance(v, (bool, int, float, str))):
                        private.append((k, repr(v)))
            known = ("config", _name(type(config)), text, tuple(private))
            self.configs[id(config)] = known
        return known


def _module_part(path: str, m: nn.Module, describe: _Describer) -> tuple:
    for hooks in _HOOKS:
        if getattr(m, hooks, None):
            raise _Unkeyable(f"module {path or '<root>'} has {hooks}")
    if "forward" in vars(m):
        raise _Unkeyable(f"module {path or '<root>'} has an instance-level forward")
    attrs = []
    for key, value in sorted(vars(m).items()):
        if key in _SKIPPED or key.startswith(_SKIPPED_PREFIXES):
            continue
        attrs.append((key, describe(value, f"{path or '<root>'}.{key}")))
    tensors = []
    for kind, table in (("param", m._parameters), ("buffer", m._buffers)):
        for name, t in table.items():
            if t is None:
                tensors.append((kind, name, None))
                continue
            persistent = kind == "param" or name not in m._non_persistent_buffers_set
            tensors.append((kind, name, _name(type(t)), tuple(t.shape), str(t.dtype), str(t.device), persistent))
    return (path, type(m).__qualname__, _class_code(type(m)), tuple(attrs), tuple(tensors))


def _dims(entry: Any, t: torch.Tensor, where: str) -> tuple:
    """The shape of a tensor input with its dynamic dimensions written "*" (and how they were declared).

    A dynamic dimension of size 0 or 1 keeps its size: torch.export specializes those.
    """
    if entry is None:
        marks: dict[int, Any] = {}
    elif isinstance(entry, dict):
        marks = {int(k): v for k, v in entry.items()}
    elif isinstance(entry, (tuple, list)):
        marks = dict(enumerate(entry))
    else:
        raise _Unkeyable(f"dynamic_shapes entry for {where} is a {type(entry).__name__}")
    out = []
    for d, size in enumerate(t.shape):
        spec = marks.get(d)
        if spec is None or isinstance(spec, int) or str(spec) == str(torch.export.Dim.STATIC) or size < 2:
            out.append(int(size))
        else:
            text = str(spec)
            if " at 0x" in text:
                raise _Unkeyable(f"dynamic_shapes entry for {where} has no stable description")
            name = getattr(spec, "__name__", None)
            out.append(("*", _name(type(spec)), text, name, getattr(spec, "min", None), getattr(spec, "max", None)))
    if any(d < 0 or d >= t.dim() for d in marks):
        raise _Unkeyable(f"dynamic_shapes entry for {where} names a dimension the tensor lacks")
    return tuple(out)


def _dynamic_entries(model: nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any) -> list[Any]:
    """One dynamic-shapes entry per leaf of ``(args, kwargs)``, in flattening order."""
    values = [*args, *kwargs.values()]
    if dynamic_shapes is None:
        tops: list[Any] = [None] * len(values)
    elif isinstance(dynamic_shapes, dict):
        names = list(kwargs)
        if args:
            bound = inspect.signature(model.forward).bind_partial(*args).arguments
            names = [*bound, *kwargs]
        unknown = set(dynamic_shapes) - set(names)
        if unknown or len(names) != len(values):
            raise _Unkeyable(f"dynamic_shapes names inputs that were not given: {sorted(unknown)}")
        tops = [dynamic_shapes.get(n) for n in names]
    elif isinstance(dynamic_shapes, (tuple, list)):
        if len(dynamic_shapes) != len(values):
            raise _Unkeyable("dynamic_shapes has not one entry per input")
        tops = list(dynamic_shapes)
    else:
        raise _Unkeyable(f"dynamic_shapes is a {type(dynamic_shapes).__name__}")
    entries: list[Any] = []
    for value, top in zip(values, tops):
        leaves, spec = pytree.tree_flatten(value)
        if top is None:
            entries += [None] * len(leaves)
        elif isinstance(value, torch.Tensor):
            entries.append(top)
        else:
            entries += spec.flatten_up_to(top)
    return entries


def _input_part(model: nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any, describe: _Describer) -> tuple:
    leaves, spec = pytree.tree_flatten((args, kwargs))
    structure = str(spec)
    if " at 0x" in structure:
        raise _Unkeyable("the input structure has no stable description")
    entries = _dynamic_entries(model, args, kwargs, dynamic_shapes)
    if len(entries) != len(leaves):
        raise _Unkeyable("dynamic_shapes does not match the inputs")
    parts = []
    for i, (x, entry) in enumerate(zip(leaves, entries)):
        if isinstance(x, torch.Tensor):
            if type(x) not in (torch.Tensor, nn.Parameter) or x.layout != torch.strided:
                raise _Unkeyable(f"input {i} is a {type(x).__name__} with layout {x.layout}")
            layout = (x.is_contiguous(), x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
            parts.append(
                ("tensor", str(x.dtype), str(x.device), _dims(entry, x, f"input {i}"), layout, x.requires_grad)
            )
        elif entry is not None:
            raise _Unkeyable(f"dynamic_shapes gives a shape for input {i}, which is not a tensor")
        elif x is None or isinstance(x, (bool, int, float, str, torch.dtype, torch.device, enum.Enum)):
            parts.append(describe(x, f"input {i}"))
        else:
            raise _Unkeyable(f"input {i} is a {_name(type(x))}")
    return (structure, tuple(parts))


def _versions(model: nn.Module) -> tuple:
    here = Path(__file__).resolve().parent
    own = tuple(_file_digest(str(here / name)) for name in ("tracing.py", "diskcache.py", "packed.py", "recurrent.py"))
    packages = {"torch", "transformers"} | {type(m).__module__.split(".")[0] for m in model.modules()}
    versions = []
    for name in sorted(packages):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None) if module is not None else None
        if version is not None:
            versions.append((name, str(version)))
    return (FORMAT, f"{sys.version_info.major}.{sys.version_info.minor}", tuple(versions), own)


def _global_state() -> tuple:
    """Process-wide switches that change what export records."""
    autocast = tuple(
        (device, torch.is_autocast_enabled(device), str(torch.get_autocast_dtype(device))) for device in ("cpu", "cuda")
    )
    return (str(torch.get_default_dtype()), torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocast)


def key_of(model: nn.Module, args: tuple, kwargs: dict, dynamic_shapes: Any, variant: str) -> str | None:
    """The cache key (sha256 hex) of ``torch.export.export(model, args, kwargs, dynamic_shapes=...)``.

    None where the model cannot be fingerprinted reliably: hooks, an instance-level
    ``forward``, a class without a source file, an attribute of an unknown type.  The
    training flags are not part of the key: relprop exports in eval mode.
    """
    try:
        for hooks in _GLOBAL_HOOKS:
            if getattr(nn.modules.module, hooks, None):
                raise _Unkeyable(f"global module hooks ({hooks}) are registered")
        describe = _Describer()
        modules = tuple(_module_part(p, m, describe) for p, m in model.named_modules(remove_duplicate=False))
        config = getattr(model, "config", None)
        top = describe.config(config) if _is_hf_config(config) else None
        parts = (
            _versions(model),
            _global_state(),
            modules,
            top,
            _input_part(model, args, kwargs, dynamic_shapes, describe),
            str(variant),
        )
    except _Unkeyable as why:
        log.debug("relprop disk cache: not caching %s: %s", type(model).__name__, why)
        return None
    except Exception as err:  # noqa: BLE001 - a fingerprint that fails must never break a trace
        log.debug("relprop disk cache: not caching %s: %s: %s", type(model).__name__, type(err).__name__, err)
        return None
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()


# -- entries ---------------------------------------------------------------------------


def _entry(key: str) -> Path:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"a disk cache key is a sha256 hex digest, got {key!r}")
    return _programs() / f"{key}{_SUFFIX}"


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None) if name.startswith("torch.") else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _plain_tensor(t: Any, name: str) -> torch.Tensor:
    if type(t) not in (torch.Tensor, nn.Parameter) or t.layout != torch.strided or t.is_meta or t.is_quantized:
        raise TypeError(f"constant {name} is a {type(t).__name__}; only plain tensors are stored")
    return t


def _encode(key: str, ep: torch.export.ExportedProgram) -> bytes:
    """The bytes of an entry: header, program JSON, meta JSON, constant bytes."""
    from torch._export.serde import serialize as serde

    specs = ep.graph_signature.input_specs
    kinds = {s.kind.name for s in specs}
    if kinds - {"USER_INPUT", "PARAMETER", "BUFFER", "CONSTANT_TENSOR", "TOKEN"}:
        raise TypeError(f"inputs of kind {sorted(kinds)} are not stored")
    buffers = {s.target for s in specs if s.kind.name == "BUFFER"}
    state = []
    for name, t in ep.state_dict.items():
        param = isinstance(t, nn.Parameter)
        state.append([name, list(t.shape), list(t.stride()), str(t.dtype), param, bool(t.requires_grad)])
    constants, chunks, offset = [], [], 0
    for name, t in ep.constants.items():
        t = _plain_tensor(t, name)
        entry = {"name": name, "dtype": str(t.dtype), "shape": list(t.shape), "stride": list(t.stride())}
        if name in buffers:  # a non-persistent buffer: read live like the state dict, not stored
            entry["meta"] = True
        else:
            data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            entry.update(device=str(t.device), requires_grad=bool(t.requires_grad), offset=offset, nbytes=len(data))
            chunks.append(data)
            offset += len(data)
        constants.append(entry)
    with _SERDE_LOCK:
        artifact = serde.serialize(
            ep, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False
        )
    program = artifact.exported_program
    _check_program(json.loads(program))  # never write what load would refuse
    getitems = {
        path: sorted(n.name for n in m.graph.nodes if n.op == "call_function" and n.target is operator.getitem)
        for path, m in ep.graph_module.named_modules()
        if isinstance(m, torch.fx.GraphModule)
    }
    meta = json.dumps({"state": state, "constants": constants, "getitems": getitems}).encode("utf-8")
    payload = b"".join([program, meta, *chunks])
    header = {
        "format": FORMAT,
        "key": key,
        "torch": torch.__version__,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "program": len(program),
        "meta": len(meta),
    }
    return _MAGIC + json.dumps(header).encode("utf-8") + b"\n" + payload


#: entry path -> (key, program): stores put off until :func:`flush` (at the latest when the
#: interpreter exits); the path is the cache folder's when the store was asked for
_PENDING: dict[Path, tuple[str, torch.export.ExportedProgram]] = {}
_PENDING_LOCK = threading.Lock()


def store(key: str, ep: torch.export.ExportedProgram, wait: bool = True) -> None:
    """Write ``ep`` (without its parameter and buffer values) under ``key``; atomic, never raises for I/O.

    A program that cannot be serialized, or a cache folder that cannot be written,
    leaves the cache as it was (logged at debug level).  ``wait=False`` puts the write
    off until :func:`flush`, which runs when the interpreter exits: serializing a large
    program takes seconds, which the first explanation should not wait for (and a thread
    would slow it down just as much, through the GIL).  The pending program keeps no
    parameter alive (its state dict is replaced by meta tensors); the caller must leave
    its graph unchanged.
    """
    path = _entry(key)
    if not wait:
        with _PENDING_LOCK:
            _PENDING[path] = (key, _without_state(ep))
        _flush_at_exit()
        return
    _write(path, key, ep)


def _write(path: Path, key: str, ep: torch.export.ExportedProgram) -> None:
    try:
        blob = _encode(key, ep)
    except Exception as err:  # noqa: BLE001 - not cacheable: the caller keeps its program
        log.debug("relprop disk cache: not storing %s: %s: %s", key, type(err).__name__, err)
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp", delete=False) as f:
            tmp = f.name
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as err:
        log.debug("relprop disk cache: cannot write %s: %s", path, err)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


@functools.cache
def _flush_at_exit() -> None:
    atexit.register(flush)


def discard(folder: Path | None = None) -> int:
    """Forget the stores put off by ``store(..., wait=False)`` for entries under ``folder``
    (every one if None) without writing them; returns how many.  For a process that does not
    want the programs it traced written when it exits (and held until then)."""
    with _PENDING_LOCK:
        paths = [p for p in _PENDING if folder is None or Path(folder) in p.parents]
        for p in paths:
            del _PENDING[p]
    return len(paths)


def flush() -> None:
    """Write every store put off by ``store(..., wait=False)`` now."""
    while True:
        with _PENDING_LOCK:
            if not _PENDING:
                return
            path, (key, ep) = _PENDING.popitem()
        _write(path, key, ep)


def _without_state(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """A shallow copy of ``ep`` whose state dict holds meta tensors (all :func:`_encode` reads of it)."""
    light = copy.copy(ep)
    state = {}
    for name, t in ep.state_dict.items():
        meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
        state[name] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    light._state_dict = state
    return light


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(key: str) -> torch.export.ExportedProgram | None:
    """The program stored under ``key``, or None (a miss, or an entry that does not check out).

    Its state dict holds meta tensors of the right shapes and dtypes (relprop reads the
    values from the live model); constants hold their stored values.  A corrupt,
    truncated or mismatched entry is deleted.
    """
    path = _entry(key)
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        log.debug("relprop disk cache: cannot read %s: %s", path, err)
        return None
    try:
        return _decode(key, data)
    except Exception as err:  # noqa: BLE001 - a bad entry is a miss; the caller exports and rewrites it
        log.debug("relprop disk cache: discarding %s: %s: %s", path, type(err).__name__, err)
        _discard(path, stat)
        return None


def _discard(path: Path, stat: os.stat_result) -> None:
    """Delete a bad entry, unless another process replaced it meanwhile."""
    try:
        now = os.stat(path)
        if (now.st_ino, now.st_dev, now.st_mtime_ns) == (stat.st_ino, stat.st_dev, stat.st_mtime_ns):
            os.unlink(path)
    except OSError:
        pass


def _decode(key: str, data: bytes) -> torch.export.ExportedProgram:
    if not data.startswith(_MAGIC):
        raise ValueError("not a relprop program entry")
    end = data.find(b"\n", len(_MAGIC), len(_MAGIC) + _HEADER_LIMIT)
    if end < 0:
        raise ValueError("no header")
    header = json.loads(data[len(_MAGIC) : end])
    payload = memoryview(data)[end + 1 :]
    if header.get("format") != FORMAT or header.get("key") != key:
        raise ValueError("the header is for another format or key")
    if header.get("size") != len(payload) or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError("the payload is truncated or corrupt")
    n_program, n_meta = int(header["program"]), int(header["meta"])
    tree = json.loads(bytes(payload[:n_program]))
    meta = json.loads(bytes(payload[n_program : n_program + n_meta]))
    blob = payload[n_program + n_meta :]
    _check_program(tree)

    state: dict[str, torch.Tensor] = {}
    for name, shape, stride, dtype, param, requires_grad in meta["state"]:
        t = torch.empty_strided(shape, stride, dtype=_dtype(dtype), device="meta")
        state[name] = nn.Parameter(t, requires_grad=requires_grad) if param else t
    constants: dict[str, Any] = {}
    for c in meta["constants"]:
        dtype, shape, stride = _dtype(c["dtype"]), c["shape"], c["stride"]
        if c.get("meta"):
            constants[c["name"]] = torch.empty_strided(shape, stride, dtype=dtype, device="meta")
            continue
        constants[c["name"]] = _tensor_from(blob, c["offset"], c["nbytes"], dtype, shape, stride, c)
    with _SERDE_LOCK:
        return _deserialize(tree, state, constants, meta["getitems"])


def _deserialize(tree: Any, state: dict, constants: dict, getitems: dict[str, list]) -> torch.export.ExportedProgram:
    """torch's ``ExportedProgramDeserializer.deserialize``, made fast for large graphs.

    Two costs of torch's own path are avoided: its JSON-to-schema conversion resolves
    type hints per object (:func:`_schema_of` caches them per class), and it parses the
    same symbolic expression with sympy once per tensor size that holds it (parses are
    memoized per deserializer: a parse registers its symbols idempotently).  The
    ``getitem`` nodes torch adds for unused outputs of multi-output ops are removed again
    (``getitems``: the names the export had, per graph module).
    """
    from torch._export.serde import schema
    from torch._export.serde import serialize as serde
    from torch._export.verifier import load_verifier
    from torch.fx.experimental.symbolic_shapes import ValueRanges
    from torch.utils._sympy.numbers import int_oo

    program = _schema_of(schema.ExportedProgram, tree)
    if program.schema_version.major != schema.SCHEMA_VERSION[0]:
        raise ValueError(f"schema version {program.schema_version} is not torch's {schema.SCHEMA_VERSION}")
    ranges = {
        k: ValueRanges(serde._int_to_sympy_int(v.min_val, -int_oo), serde._int_to_sympy_int(v.max_val, int_oo))
        for k, v in program.range_constraints.items()
    }
    graph_deserializer = serde.GraphModuleDeserializer()
    parse = graph_deserializer._parse_sym_expr
    parsed: dict[tuple, Any] = {}

    def parse_once(expr: Any, hint: Any = None) -> Any:
        key = (expr, hint)
        if key not in parsed:
            parsed[key] = parse(expr, hint)
        return parsed[key]

    graph_deserializer._parse_sym_expr = parse_once  # type: ignore[method-assign]
    res = graph_deserializer.deserialize(program.graph_module, state, constants, None, ranges)
    _drop_added_getitems(res.graph_module, getitems)
    range_constraints = serde.ExportedProgramDeserializer().deserialize_range_constraints(ranges, res.names_to_symbols)
    ep = torch.export.ExportedProgram(
        root=res.graph_module,
        graph=res.graph_module.graph,
        graph_signature=res.signature,
        state_dict=res.state_dict,
        range_constraints=range_constraints,
        module_call_graph=res.module_call_graph,
        example_inputs=None,
        constants=res.constants,
        verifiers=[load_verifier(v) for v in program.verifiers],
    )
    ep._guards_code = program.guards_code
    _lists_as_lists(ep.graph_module)
    return ep


def _drop_added_getitems(gm: torch.fx.GraphModule, getitems: dict[str, list]) -> None:
    for path, module in gm.named_modules():
        if not isinstance(module, torch.fx.GraphModule) or path not in getitems:
            continue
        keep = set(getitems[path])
        dropped = False
        for node in reversed(list(module.graph.nodes)):
            if node.op == "call_function" and node.target is operator.getitem and not node.users:
                if node.name not in keep:
                    module.graph.erase_node(node)
                    dropped = True
        if dropped:
            module.recompile()


def _lists_as_lists(gm: torch.fx.GraphModule) -> None:
    """Give ops that return ``Tensor[]`` (split, unbind) a list ``meta["val"]`` as export does (not a tuple)."""
    for module in gm.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            val = node.meta.get("val")
            if node.op != "call_function" or not isinstance(val, tuple):
                continue
            schema = getattr(node.target, "_schema", None)
            returns = schema.returns if schema is not None else ()
            if len(returns) == 1 and isinstance(returns[0].type, torch.ListType):
                node.meta["val"] = list(val)


def _schema_of(cls: Any, data: Any) -> Any:
    """JSON data as the ``torch._export.serde.schema`` type ``cls``, as torch's ``_dict_to_dataclass`` reads it."""
    return _converter(cls)(data)


@functools.cache
def _converter(cls: Any) -> Any:
    """A function from JSON data to ``cls``; built once per schema type (type hints are slow to resolve)."""
    from torch._export.serde import schema
    from torch._export.serde.union import _Union

    if isinstance(cls, str):
        cls = getattr(schema, cls, cls)
    if isinstance(cls, typing.ForwardRef):
        return _converter(cls.__forward_arg__)
    origin = typing.get_origin(cls)
    if origin is typing.Annotated:
        return _converter(cls.__origin__)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(cls):
        first, _ = typing.get_args(cls)
        return lambda data: None if data is None else _converter(first)(data)
    if isinstance(cls, type) and (dataclasses.is_dataclass(cls) or issubclass(cls, _Union)):
        hints = typing.get_type_hints(cls, globalns=vars(schema))
        fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        if issubclass(cls, _Union):

            def union(data: dict) -> Any:
                ((name, value),) = data.items()
                return cls.create(**{name: _converter(fields[name])(value)})

            return union
        return lambda data: cls(**{f: _converter(t)(data[f]) for f, t in fields.items() if f in data})
    args = typing.get_args(cls)

    def other(data: Any) -> Any:
        if isinstance(data, list):
            return [_converter(args[0])(d) for d in data] if data else data
        if isinstance(data, dict):
            return {k: _converter(args[1])(v) for k, v in data.items()}
        return float(data) if cls is float else data

    return other


def _tensor_from(blob: memoryview, offset: int, nbytes: int, dtype: torch.dtype, shape: list, stride: list, c: dict):
    """A constant tensor from its raw bytes (copied, so it owns its memory)."""
    count = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if offset < 0 or nbytes != count * itemsize or offset + nbytes > len(blob):
        raise ValueError(f"constant {c['name']} does not fit the stored bytes")
    if nbytes == 0:
        flat = torch.empty(shape, dtype=dtype)
    else:
        raw = torch.frombuffer(bytearray(blob[offset : offset + nbytes]), dtype=torch.uint8)
        flat = raw.view(dtype).reshape(shape)
    t = flat
    if list(flat.stride()) != list(stride) and count > 0:
        from torch._prims_common import is_non_overlapping_and_dense

        strided = torch.empty_strided(shape, stride, dtype=dtype)
        if is_non_overlapping_and_dense(strided):
            t = strided.copy_(flat)
    t = t.to(torch.device(c["device"]))
    return t.requires_grad_(True) if c.get("requires_grad") else t


# -- checking the program JSON before torch's deserializer sees it ----------------------------

_EXPR_NAMES = {
    # torch.utils._sympy.functions, as torch's deserializer names them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity", "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_exp", "OpaqueUnaryFn_log",
    # sympy classes and constants that the serializer's srepr() writes
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "floor", "ceiling",
    "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair", "BooleanTrue",
    "BooleanFalse", "true", "false", "True", "False", "Infinity", "NegativeInfinity", "IntInfinity",
    "NegativeIntInfinity", "oo", "zoo", "nan", "NaN", "ComplexInfinity", "int_oo", "Zero", "One",
    "NegativeOne", "Half",
}  # fmt: skip
#: the assumptions srepr() writes as keyword arguments: Symbol('s0', positive=True, integer=True)
_EXPR_KEYWORDS = {
    "positive", "negative", "nonpositive", "nonnegative", "nonzero", "zero", "integer", "real", "finite",
    "infinite", "rational", "irrational", "even", "odd", "prime", "composite", "commutative", "complex",
    "imaginary", "extended_real", "extended_positive", "extended_negative", "extended_nonnegative",
    "extended_nonpositive", "extended_nonzero", "precision",
}  # fmt: skip
_NUMBER = r"-?\d{1,20}(?:\.\d{1,20})?(?:e[+-]?\d{1,3})?"
_SYMBOL = r"[a-z]{1,4}\d{1,9}"
_EXPR_TOKEN = re.compile(
    rf"\s*(?:(?P<num>{_NUMBER})|'(?P<str>{_SYMBOL}|{_NUMBER})'|(?P<kw>[a-z_]+)=(?!=)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\*\*|<=|>=|==|!=|[-+*/%(),<>&|~]))\s*"
)


def _check_expr(text: str) -> None:
    """A symbolic shape expression: numbers, shape symbols, whitelisted sympy names, arithmetic.

    torch parses these with ``sympy.sympify`` (an ``eval``): with only these tokens there
    is no attribute access, no string but a symbol's name, and no call but to sympy.
    """
    if len(text) > 4096:
        raise ValueError("a symbolic expression is too long")
    pos = 0
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"unexpected symbolic expression {text[:80]!r}")
        name, kw = m.group("name"), m.group("kw")
        if name is not None and name not in _EXPR_NAMES and not re.fullmatch(_SYMBOL, name):
            raise ValueError(f"unexpected name {name!r} in symbolic expression {text[:80]!r}")
        if kw is not None and kw not in _EXPR_KEYWORDS:
            raise ValueError(f"unexpected keyword {kw!r} in symbolic expression {text[:80]!r}")
        pos = m.end()


#: a guard's input size: L['x'].size()[1], L['x'].stride()[0], L['kw']['k'].storage_offset(), L['x'][0]
_GUARD_SOURCE = (
    r"""L(?:\[(?:'[A-Za-z_]\w*'|"[A-Za-z_]\w*"|\d+)\])+"""  # the input
    r"(?:\.(?:size|stride)\(\)\[\d+\]|\.storage_offset\(\))?"  # one of its sizes
)
_GUARD_CALLS = {
    "torch.sym_float", "torch.sym_int", "torch.sym_max", "torch.sym_min", "torch._sym_sqrt", "torch.sym_ite",
    "torch.sym_not", "abs", "max", "min", "int", "float", "round", "and", "or", "not", "True", "False", "None",
}  # fmt: skip
_GUARD_TOKEN = re.compile(
    rf"\s*(?:(?P<source>{_GUARD_SOURCE})|(?P<num>{_NUMBER})|(?P<name>[A-Za-z_][\w.]*)"
    r"|(?P<op>//|\*\*|<=|>=|==|!=|[-+*/%(),<>]))\s*"
)


def _check_guard(text: str) -> None:
    """A shape guard (Python that ``ep.module()`` and :func:`fits` evaluate): input sizes, numbers, arithmetic.

    Names are limited to the size functions torch's guard printer writes and ``math`` functions.
    """
    if len(text) > 4096:
        raise ValueError("a guard is too long")
    pos = 0
    while pos < len(text):
        m = _GUARD_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"unexpected guard {text[:80]!r}")
        name = m.group("name")
        if name is not None and name not in _GUARD_CALLS and not re.fullmatch(r"math\.[a-z][a-z0-9]*", name):
            raise ValueError(f"unexpected name {name!r} in guard {text[:80]!r}")
        pos = m.end()


def _check_target(target: str) -> None:
    """An operator a node calls: a registered torch op, or a symbolic-size op torch's deserializer knows."""
    from torch._export.serde.serialize import _SYM_OPS

    parts = target.split(".")
    if not all(p.isidentifier() for p in parts):
        raise ValueError(f"unexpected operator {target!r}")
    if parts[:2] == ["torch", "ops"] and len(parts) in (4, 5):  # torch.ops.<namespace>.<op>[.<overload>]
        obj: Any = torch.ops
        for p in parts[2:]:
            obj = getattr(obj, p)
        if isinstance(obj, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
            return
    roots = {"_operator": operator, "math": math, "torch": torch}
    if parts[0] in roots and len(parts) == 2 and not parts[1].startswith("_"):
        obj = getattr(roots[parts[0]], parts[1], None)
        if obj is not None and obj in _SYM_OPS:
            return
    raise ValueError(f"operator {target!r} is not a registered op")


def _walk(tree: Any) -> Iterator[tuple[str, Any]]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                yield k, v
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)


def _check_program(tree: Any) -> None:
    """Refuse program JSON that would make torch evaluate or call anything but ops.

    Checked: node targets (the deserializer resolves any ``torch.*`` callable), symbolic
    expressions (parsed with ``sympy.sympify``) and guards (``ep.module()`` runs them with ``exec``).
    """
    for k, v in _walk(tree):
        if k == "target" and isinstance(v, str) or k == "as_operator":
            if not isinstance(v, str):
                raise ValueError("an operator is not named by a string")
            _check_target(v)
        elif k == "expr_str":
            if not isinstance(v, str):
                raise ValueError("a symbolic expression is not a string")
            _check_expr(v)
        elif k == "guards_code":
            if not isinstance(v, list) or not all(isinstance(g, str) for g in v):
                raise ValueError("guards are not strings")
            for guard in v:
                _check_guard(guard)
        elif k in ("as_custom_obj", "as_custom_objs"):
            raise ValueError("custom objects are not loaded")


# -- using a loaded program ------------------------------------------------------------


def fits(ep: torch.export.ExportedProgram, args: tuple, kwargs: dict) -> bool:
    """Whether ``(args, kwargs)`` is an input ``ep`` was traced for.

    A key writes dynamic dimensions as "*", but an export may still have specialized
    or bounded them (a model that checks a size): check the actual inputs against the
    program's input structure, static sizes, dtypes and range constraints before using a
    loaded program.
    """
    try:
        flat, spec = pytree.tree_flatten_with_path((args, kwargs))
        if spec != ep.call_spec.in_spec:
            return False
        ep._check_input_constraints(flat)
        users = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
        for name, (_, x) in zip(users, flat):
            val = vals.get(name)
            if isinstance(val, torch.Tensor) and (
                not isinstance(x, torch.Tensor) or x.dtype != val.dtype or x.device.type != val.device.type
            ):
                return False
        return _guards_hold(ep, args, kwargs)
    except Exception:  # noqa: BLE001 - any mismatch is a miss
        return False


def _guards_hold(ep: torch.export.ExportedProgram, args: tuple, kwargs: dict) -> bool:
    """Whether the export's shape guards (``L['x'].size()[2] != 1``...) hold for these inputs."""
    guards = list(getattr(ep, "_guards_code", None) or [])
    if not guards:
        return True
    names = ep.module_call_graph[0].signature.forward_arg_names if ep.module_call_graph else None
    if names is None or len(names) < len(args):
        return False
    inputs = {**dict(zip(names, args)), **kwargs}
    namespace = {"__builtins__": {}, "L": inputs, "torch": torch, "math": math}
    namespace.update(abs=abs, max=max, min=min, int=int, float=float, round=round)
    for guard in guards:
        _check_guard(guard)
        if not eval(guard, namespace):  # noqa: S307 - checked to hold sizes, numbers and arithmetic only
            return False
    return True
