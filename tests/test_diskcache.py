"""The on-disk cache of exported programs (relprop.diskcache): keys, round trips, safety, concurrency."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.export import Dim
from torch.utils import _pytree as pytree

from relprop import diskcache

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------


def _tiny_llama(hidden: int = 32) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


LLAMA_SHAPES = {"input_ids": {0: Dim.AUTO, 1: Dim.AUTO}, "use_cache": None}


def _llama_inputs(batch: int = 2, length: int = 7, dtype: torch.dtype = torch.long) -> dict:
    return {"input_ids": torch.randint(0, 64, (batch, length)).to(dtype), "use_cache": False}


class Scaled(nn.Module):
    """A linear layer times a tensor attribute that is neither parameter nor buffer (a lifted constant)."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3, dtype=dtype)
        self.scale = torch.tensor([1.0, 2.0, 3.0], dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x)) * self.scale


class SmallConv(nn.Module):
    """A strided convolution: exported with dynamic height and width it carries shape guards."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1, dtype=torch.float64)
        self.norm = nn.BatchNorm2d(4, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)).relu().flatten(1)


def _export(model: nn.Module, args: tuple, kwargs: dict, shapes: Any) -> torch.export.ExportedProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=False)


def _graph_text(gm: torch.fx.GraphModule) -> list:
    """Nodes in order: op, target, args (other nodes by position), value shape and dtype, module stack.

    get_attr of a subgraph is written as that subgraph's text: the deserializer renames the node.
    """
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    out = []
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            attr = getattr(gm, n.target)
            target: Any = _graph_text(attr) if isinstance(attr, torch.fx.GraphModule) else n.target
        elif n.op == "placeholder":
            target = n.name
        else:
            target = str(n.target)
        args = pytree.tree_map_only(torch.fx.Node, lambda a: ("node", index[a]), (n.args, n.kwargs))
        # the deserializer gives output nodes a value the export leaves out
        val = None if n.op == "output" else n.meta.get("val")
        val = pytree.tree_map_only(torch.Tensor, lambda t: (str(tuple(t.shape)), t.dtype), val)
        stack = n.meta.get("nn_module_stack")
        out.append((n.op, target, str(args), str(val), str(stack)))
    return out


def _run(ep: torch.export.ExportedProgram, model: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Execute the graph with the live model's parameters and buffers, as relprop feeds it."""
    user = iter(pytree.tree_leaves((args, kwargs)))
    feed = []
    for spec in ep.graph_signature.input_specs:
        kind = spec.kind.name
        if kind == "PARAMETER":
            feed.append(model.get_parameter(spec.target))
        elif kind == "BUFFER":
            feed.append(model.get_buffer(spec.target))
        elif kind == "CONSTANT_TENSOR":
            feed.append(ep.constants[spec.target])
        else:
            feed.append(next(user))
    with torch.no_grad():
        out = torch.fx.Interpreter(ep.graph_module).run(*feed)
    return pytree.tree_unflatten(list(out), ep.call_spec.out_spec)


def _entry(key: str) -> Path:
    return diskcache.cache_dir() / "programs" / f"{key}.pt2"


def _split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    assert data.startswith(b"RELPROP-PROGRAM\n")
    end = data.index(b"\n", 16)
    return json.loads(data[16:end]), data[end + 1 :]


def _rewrite_program(path: Path, edit: Any) -> None:
    """Change the program JSON of an entry and give it a matching header (as a forger could)."""
    header, payload = _split(path)
    program = json.loads(payload[: header["program"]])
    edit(program)
    new_program = json.dumps(program).encode()
    payload = new_program + payload[header["program"] :]
    header.update(program=len(new_program), size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    path.write_bytes(b"RELPROP-PROGRAM\n" + json.dumps(header).encode() + b"\n" + payload)


def _python(code: str, cwd: Path, **env: str) -> str:
    """Run ``code`` in a fresh interpreter; its last output line."""
    run_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)]), **env}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=run_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("RELPROP_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def llama() -> tuple[nn.Module, dict, torch.export.ExportedProgram]:
    model = _tiny_llama()
    kwargs = _llama_inputs()
    return model, kwargs, _export(model, (), kwargs, LLAMA_SHAPES)


@pytest.fixture(scope="module")
def scaled() -> tuple[nn.Module, tuple, torch.export.ExportedProgram]:
    model = Scaled().eval()
    args = (torch.randn(2, 4, dtype=torch.float64),)
    return model, args, _export(model, args, {}, ({0: Dim.AUTO},))


# -- where the cache lives -------------------------------------------------------------


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RELPROP_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert diskcache.cache_dir() == Path.home() / ".cache" / "relprop"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert diskcache.cache_dir() == tmp_path / "xdg" / "relprop"
    monkeypatch.setenv("RELPROP_CACHE_DIR", str(tmp_path / "own"))
    assert diskcache.cache_dir() == tmp_path / "own"


def test_discard_forgets_only_the_stores_put_off_for_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scaled: tuple
) -> None:
    model, args, ep = scaled
    for name in ("kept", "dropped"):
        monkeypatch.setenv("RELPROP_CACHE_DIR", str(tmp_path / name))
        key = diskcache.key_of(model, args, {}, ({0: Dim.AUTO},), "training-ir")
        assert key is not None
        diskcache.store(key, ep, wait=False)
    assert diskcache.discard(tmp_path / "dropped") == 1
    assert diskcache.discard(tmp_path / "dropped") == 0
    diskcache.flush()
    assert any(p.is_file() for p in (tmp_path / "kept").rglob("*"))
    assert not any(p.is_file() for p in (tmp_path / "dropped").rglob("*"))
    monkeypatch.setenv("RELPROP_CACHE_DIR", str(tmp_path / "kept"))
    assert diskcache.load(key) is not None


# -- round trips -----------------------------------------------------------------------


def test_round_trip_llama_with_dynamic_dims(cache: Path, llama: tuple) -> None:
    model, kwargs, ep = llama
    key = diskcache.key_of(model, (), kwargs, LLAMA_SHAPES, "training-ir")
    assert key is not None
    assert diskcache.load(key) is None
    diskcache.store(key, ep)
    loaded = diskcache.load(key)
    assert loaded is not None

    assert _graph_text(loaded.graph_module) == _graph_text(ep.graph_module)
    assert loaded.graph_signature == ep.graph_signature
    assert loaded.call_spec.in_spec == ep.call_spec.in_spec
    assert loaded.call_spec.out_spec == ep.call_spec.out_spec
    assert str(loaded.range_constraints) == str(ep.range_constraints)
    assert len(loaded.range_constraints) == 2  # batch and sequence stay symbolic
    ids = next(n for n in loaded.graph.nodes if n.name == "input_ids").meta["val"]
    assert all(isinstance(d, torch.SymInt) for d in ids.shape)
    stacks = [n.meta["nn_module_stack"] for n in loaded.graph.nodes if n.op == "call_function"]
    assert any(path == "model.layers.1.mlp" and cls.endswith("LlamaMLP") for s in stacks for path, cls in s.values())

    # no weights on disk: the state dict comes back as meta tensors, and the entry holds no constant bytes
    assert set(loaded.state_dict) == set(ep.state_dict)
    assert all(t.is_meta and t.shape == ep.state_dict[k].shape for k, t in loaded.state_dict.items())
    header, payload = _split(_entry(key))
    assert header["size"] - header["program"] - header["meta"] == 0
    assert model.model.embed_tokens.weight.detach().numpy().tobytes()[:256] not in payload

    # the graph runs on the live model's parameters, at a batch and length it was not traced with
    other = _llama_inputs(3, 5)
    expected = model(**other).logits
    assert torch.equal(_run(loaded, model, (), other).logits, expected)
    assert diskcache.fits(loaded, (), other)
    assert not diskcache.fits(loaded, (), {**other, "input_ids": other["input_ids"].int()})


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_lifted_constants_are_stored_with_their_values(cache: Path, dtype: torch.dtype) -> None:
    model = Scaled(dtype).eval()
    args = (torch.randn(2, 4, dtype=dtype),)
    ep = _export(model, args, {}, ({0: Dim.AUTO},))
    key = diskcache.key_of(model, args, {}, ({0: Dim.AUTO},), "training-ir")
    diskcache.store(key, ep)
    loaded = diskcache.load(key)
    assert loaded is not None
    assert set(loaded.constants) == set(ep.constants)
    for name, t in ep.constants.items():
        assert loaded.constants[name].dtype == t.dtype and torch.equal(loaded.constants[name], t)
    x = (torch.randn(5, 4, dtype=dtype),)
    assert torch.equal(_run(loaded, model, x, {}), model(*x))


def test_decomposed_program_round_trip(cache: Path) -> None:
    """The decomposed batch norm has three outputs of which the graph uses one; no getitem is added on load."""
    model, x = SmallConv().eval(), (torch.randn(2, 3, 8, 8, dtype=torch.float64),)
    ep = _export(model, x, {}, ({0: Dim.AUTO},)).run_decompositions({})
    key = diskcache.key_of(model, x, {}, ({0: Dim.AUTO},), "decomposed")
    diskcache.store(key, ep)
    loaded = diskcache.load(key)
    assert loaded is not None
    assert _graph_text(loaded.graph_module) == _graph_text(ep.graph_module)
    assert torch.equal(_run(loaded, model, x, {}), model(*x))


def test_schema_conversion_matches_torch(llama: tuple) -> None:
    """The fast JSON-to-schema conversion gives what torch's own ``_dict_to_dataclass`` gives."""
    from torch._export.serde import schema
    from torch._export.serde import serialize as serde

    _, _, ep = llama
    no_tensors = {"serialize_state_dict": False, "serialize_constants": False, "serialize_example_inputs": False}
    tree = json.loads(serde.serialize(ep, **no_tensors).exported_program)
    assert diskcache._schema_of(schema.ExportedProgram, tree) == serde._dict_to_dataclass(schema.ExportedProgram, tree)


def test_guards_survive_and_fits_checks_them(cache: Path) -> None:
    model, shapes = SmallConv().eval(), ({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},)
    x = (torch.randn(2, 3, 16, 16, dtype=torch.float64),)
    ep = _export(model, x, {}, shapes)
    assert ep._guards_code  # e.g. "(1 + (((-1) + L['x'].size()[3]) // 2)) != 1"
    key = diskcache.key_of(model, x, {}, shapes, "training-ir")
    diskcache.store(key, ep)
    loaded = diskcache.load(key)
    assert loaded is not None and loaded._guards_code == ep._guards_code
    other = (torch.randn(3, 3, 12, 10, dtype=torch.float64),)
    assert diskcache.fits(loaded, other, {})
    assert torch.equal(_run(loaded, model, other, {}), model(*other))
    tiny = (torch.randn(2, 3, 2, 2, dtype=torch.float64),)  # an output size of 1: the export's guards fail
    assert diskcache.key_of(model, tiny, {}, shapes, "training-ir") == key
    assert not diskcache.fits(loaded, tiny, {})


# -- keys ------------------------------------------------------------------------------


def test_key_is_stable_across_processes(tmp_path: Path, llama: tuple) -> None:
    model, kwargs, _ = llama
    here = diskcache.key_of(model, (), kwargs, LLAMA_SHAPES, "training-ir")
    code = """
        import torch, transformers
        from torch.export import Dim
        from relprop import diskcache
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = transformers.LlamaForCausalLM(config).eval()
        kwargs = {"input_ids": torch.zeros(2, 7, dtype=torch.long), "use_cache": False}
        shapes = {"input_ids": {0: Dim.AUTO, 1: Dim.AUTO}, "use_cache": None}
        print(diskcache.key_of(model, (), kwargs, shapes, "training-ir"))
    """
    assert _python(code, tmp_path, PYTHONHASHSEED="12345") == here


def test_key_follows_the_model_source_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed model file, or a changed helper file it imports from, gives a new key in a new process."""
    (tmp_path / "tiny_helpers.py").write_text("def shift(x):\n    return x + 1.0\n")
    model_file = tmp_path / "tiny_model.py"
    model_file.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from tiny_helpers import shift

            SCALE = 2.0


            def helper(x):
                return x * SCALE


            class TinyNet(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lin = nn.Linear(4, 3)

                def forward(self, x):
                    return shift(helper(self.lin(x)))
            """
        )
    )
    # transformers is imported here too: its version is part of a key wherever it is imported
    code = """
        import torch, tiny_model, transformers
        from relprop import diskcache
        print(diskcache.key_of(tiny_model.TinyNet(), (torch.ones(2, 4),), {}, None, "v"))
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        here = diskcache.key_of(importlib.import_module("tiny_model").TinyNet(), (torch.ones(2, 4),), {}, None, "v")
    finally:
        sys.modules.pop("tiny_model", None)
        sys.modules.pop("tiny_helpers", None)
    first = _python(code, tmp_path, PYTHONHASHSEED="7")
    assert first == here
    model_file.write_text(model_file.read_text().replace("SCALE = 2.0", "SCALE = 3.0"))
    second = _python(code, tmp_path)
    assert second not in ("None", first)
    (tmp_path / "tiny_helpers.py").write_text("def shift(x):\n    return x + 2.0\n")
    third = _python(code, tmp_path)
    assert third not in ("None", first, second)


def test_key_changes_with_what_the_export_depends_on(llama: tuple) -> None:
    model, kwargs, _ = llama

    def key(m: nn.Module = model, kw: dict = kwargs, shapes: Any = LLAMA_SHAPES, variant: str = "training-ir") -> str:
        k = diskcache.key_of(m, (), kw, shapes, variant)
        assert k is not None
        return k

    base = key()
    assert key(kw=_llama_inputs(3, 9)) == base  # dynamic dims are "*"
    assert key(kw=_llama_inputs(1, 7)) != base  # a dynamic dim of size 1 is specialized by export
    assert key(kw=_llama_inputs(dtype=torch.int32)) != base
    assert key(variant="decomposed") != base
    static = key(shapes=None)
    assert static != base
    assert key(kw=_llama_inputs(2, 8), shapes=None) != static
    assert key(m=_tiny_llama(hidden=48)) != base  # parameter shapes
    assert key(m=_tiny_llama().double()) != base
    eager = _tiny_llama()
    eager.config._attn_implementation = "eager"  # a private config attribute, not in its JSON
    assert key(m=eager) != base


def test_key_covers_constant_tensor_values() -> None:
    model, x = Scaled().eval(), (torch.randn(2, 4, dtype=torch.float64),)
    base = diskcache.key_of(model, x, {}, None, "v")
    assert base is not None and diskcache.key_of(model, x, {}, None, "v") == base
    model.scale = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert diskcache.key_of(model, x, {}, None, "v") != base
    model.lin.eps_like = 0.5  # a plain attribute
    assert diskcache.key_of(model, x, {}, None, "v") not in (None, base)


def test_no_key_for_models_that_cannot_be_fingerprinted() -> None:
    x = (torch.randn(2, 4, dtype=torch.float64),)

    def key(model: nn.Module) -> str | None:
        return diskcache.key_of(model, x, {}, None, "v")

    model = Scaled()
    assert key(model) is not None
    handle = model.lin.register_forward_hook(lambda m, i, o: o * 2)
    assert key(model) is None
    handle.remove()
    handle = model.register_forward_pre_hook(lambda m, i: i)
    assert key(model) is None
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        assert key(model) is None
    finally:
        handle.remove()
    assert key(model) is not None

    patched = Scaled()
    patched.forward = lambda x: x  # type: ignore[method-assign]
    assert key(patched) is None

    odd = Scaled()
    odd.helper = object()  # an attribute the cache cannot describe
    assert key(odd) is None

    namespace: dict[str, Any] = {"nn": nn}
    exec("class Repl(nn.Module):\n    def forward(self, x):\n        return x * 2\n", namespace)
    assert key(namespace["Repl"]()) is None


def test_keys_of_real_models_are_stable_in_process() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18().eval()
    x = (torch.randn(2, 3, 32, 32),)
    first = diskcache.key_of(model, x, {}, ({0: Dim.AUTO},), "v")
    assert first is not None and first == diskcache.key_of(model, x, {}, ({0: Dim.AUTO},), "v")


# -- bad entries and safety ------------------------------------------------------------


@pytest.fixture
def stored(cache: Path, scaled: tuple) -> tuple[str, Path]:
    model, args, ep = scaled
    key = diskcache.key_of(model, args, {}, ({0: Dim.AUTO},), "training-ir")
    diskcache.store(key, ep)
    assert _entry(key).exists()
    return key, _entry(key)


def test_truncated_entry_is_discarded(stored: tuple[str, Path]) -> None:
    key, path = stored
    path.write_bytes(path.read_bytes()[:-10])
    assert diskcache.load(key) is None
    assert not path.exists()


def test_flipped_byte_is_discarded(stored: tuple[str, Path]) -> None:
    key, path = stored
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert diskcache.load(key) is None
    assert not path.exists()


def test_entry_under_another_key_is_discarded(stored: tuple[str, Path]) -> None:
    key, path = stored
    other = "0" * 64
    _entry(other).write_bytes(path.read_bytes())
    assert diskcache.load(other) is None
    assert not _entry(other).exists()
    assert diskcache.load(key) is not None


def test_forged_operator_is_not_loaded(stored: tuple[str, Path]) -> None:
    """torch's deserializer would resolve any torch.* callable a node names, and the graph would call it."""
    key, path = stored

    def edit(program: dict) -> None:
        node = next(n for n in program["graph_module"]["graph"]["nodes"] if "relu" in n["target"])
        node["target"] = "torch.save"

    _rewrite_program(path, edit)
    assert diskcache.load(key) is None
    assert not path.exists()


def test_forged_symbolic_expression_is_not_evaluated(stored: tuple[str, Path], tmp_path: Path) -> None:
    """torch parses symbolic sizes with sympy.sympify, which evaluates Python."""
    key, path = stored
    marker = tmp_path / "pwned"

    def edit(program: dict) -> None:
        stack = [program]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if "expr_str" in node:
                    node["expr_str"] = f"__import__('pathlib').Path({str(marker)!r}).touch()"
                    return
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        raise AssertionError("no symbolic expression in the program")

    _rewrite_program(path, edit)
    assert diskcache.load(key) is None
    assert not marker.exists()
    assert not path.exists()


def test_forged_guard_is_not_loaded(cache: Path) -> None:
    """``ep.module()`` compiles an export's guards with ``exec``."""
    model, shapes = SmallConv().eval(), ({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},)
    x = (torch.randn(2, 3, 16, 16, dtype=torch.float64),)
    key = diskcache.key_of(model, x, {}, shapes, "training-ir")
    diskcache.store(key, _export(model, x, {}, shapes))

    def edit(program: dict) -> None:
        program["guards_code"] = ["__import__('os').getpid() > 0"]

    _rewrite_program(_entry(key), edit)
    assert diskcache.load(key) is None
    assert not _entry(key).exists()


def test_unwritable_cache_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scaled: tuple) -> None:
    model, args, ep = scaled
    key = diskcache.key_of(model, args, {}, ({0: Dim.AUTO},), "training-ir")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RELPROP_CACHE_DIR", str(blocker / "cache"))
    diskcache.store(key, ep)  # the folder cannot be created
    assert diskcache.load(key) is None


def test_refused_write_is_a_no_op(cache: Path, monkeypatch: pytest.MonkeyPatch, scaled: tuple) -> None:
    """A folder that exists but refuses new files (read-only; simulated, as root may write anywhere)."""
    model, args, ep = scaled
    key = diskcache.key_of(model, args, {}, ({0: Dim.AUTO},), "training-ir")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(diskcache.tempfile, "NamedTemporaryFile", refuse)
    diskcache.store(key, ep)
    assert diskcache.load(key) is None
    assert list((cache / "programs").iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_cache_is_a_no_op(cache: Path, scaled: tuple) -> None:
    model, args, ep = scaled
    key = diskcache.key_of(model, args, {}, ({0: Dim.AUTO},), "training-ir")
    (cache / "programs").mkdir(parents=True)
    os.chmod(cache / "programs", 0o500)
    try:
        diskcache.store(key, ep)
        assert diskcache.load(key) is None
        assert list((cache / "programs").iterdir()) == []
    finally:
        os.chmod(cache / "programs", 0o700)


def test_concurrent_stores_leave_one_entry(cache: Path, tmp_path: Path) -> None:
    (tmp_path / "race_model.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn


            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.a = nn.Linear(8, 8, dtype=torch.float64)
                    self.b = nn.Linear(8, 2, dtype=torch.float64)

                def forward(self, x):
                    return self.b(self.a(x).tanh())
            """
        )
    )
    go = tmp_path / "go"
    code = f"""
        import sys, time, torch, race_model, transformers
        from relprop import diskcache
        model, x = race_model.Net().eval(), (torch.ones(2, 8, dtype=torch.float64),)
        ep = torch.export.export(model, x, strict=False)
        key = diskcache.key_of(model, x, {{}}, None, "training-ir")
        print("ready", flush=True)
        while not __import__("os").path.exists({str(go)!r}):
            time.sleep(0.01)
        diskcache.store(key, ep)
        print(key)
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        keys = {p.communicate(timeout=120)[0].strip() for p in procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    (key,) = keys
    sys.path.insert(0, str(tmp_path))
    try:
        import race_model

        model = race_model.Net().eval()
        assert diskcache.key_of(model, (torch.ones(2, 8, dtype=torch.float64),), {}, None, "training-ir") == key
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("race_model", None)
    loaded = diskcache.load(key)
    assert loaded is not None
    assert [p.name for p in (cache / "programs").iterdir()] == [f"{key}.pt2"]
    x = torch.randn(2, 8, dtype=torch.float64)
    assert torch.equal(_run(loaded, model, (x,), {}), model(x))


def test_store_and_load_are_fast_enough(cache: Path, llama: tuple) -> None:
    """Loading must be well below exporting (here a tiny model, so a loose bound)."""
    model, kwargs, ep = llama
    key = diskcache.key_of(model, (), kwargs, LLAMA_SHAPES, "timing")
    diskcache.store(key, ep)
    diskcache.load(key)  # imports
    start = time.perf_counter()
    assert diskcache.load(key) is not None
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    _export(model, (), kwargs, LLAMA_SHAPES)
    exported = time.perf_counter() - start
    assert loaded < exported
