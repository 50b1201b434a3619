"""Graph analysis (relprop.analysis) on small graphs, built by hand or exported from tiny modules.

Each expectation follows from the graph as built: which slices cover which indices,
which pad a crop undoes, which lookups read the ids, which nodes reach the output.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import relprop
from relprop import analysis
from relprop.binding import bind
from relprop.programs import Program
from relprop.rules import AbsLRP
from relprop.tracing import export_program

aten = torch.ops.aten
BIG = 2**63 - 1  # what torch.export writes for an open slice end


class Builder:
    """An fx graph as torch.export writes it: aten call nodes with ``meta["val"]``."""

    def __init__(self) -> None:
        self.graph = fx.Graph()
        self.user_inputs: list[str] = []

    def input(self, name: str, val: torch.Tensor) -> fx.Node:
        self.user_inputs.append(name)
        return self.state(name, val)

    def state(self, name: str, val: torch.Tensor) -> fx.Node:
        """A placeholder that is no user input (a parameter or buffer)."""
        n = self.graph.placeholder(name)
        n.meta["val"] = val
        return n

    def op(self, target: Any, *args: Any, module: str | None = None) -> fx.Node:
        vals = fx.node.map_arg(args, lambda a: a.meta["val"])
        n = self.graph.call_function(target, args)
        n.meta["val"] = target(*vals)
        if module is not None:
            n.meta["nn_module_stack"] = {"L__self__": ("", "Model"), module: (module, "Block")}
        return n

    def program(self, *outputs: fx.Node) -> Program:
        self.graph.output(tuple(outputs))
        return Program(self.graph, None, None, {}, self.user_inputs, list(self.user_inputs))


def _export(model: nn.Module, *args: torch.Tensor) -> tuple[Program, dict[str, fx.Node]]:
    program = export_program(model.eval(), args, {})
    return program, {n.name: n for n in program.graph.nodes}


def _splits(program: Program) -> dict[str, bool]:
    """Select-like node name -> does it move relevance (split) rather than pool."""
    nodes = list(program.graph.nodes)
    same = analysis.equivalents(nodes)
    return {n.name: analysis.splits(n, same) for n in nodes if "slice" in n.name or "select" in n.name}


def _sources(program: Program) -> analysis.Sources:
    return analysis.live_nodes(program, list(program.graph.nodes))


# -- split or pool ---------------------------------------------------------------------


def test_two_slices_covering_a_dim_split_it() -> None:
    b = Builder()
    x = b.input("x", torch.randn(4, 6))
    left = b.op(aten.slice.Tensor, x, 1, 0, 2)
    right = b.op(aten.slice.Tensor, x, 1, 2, BIG)
    program = b.program(b.op(aten.cat.default, [right, left], 1))
    assert _splits(program) == {left.name: True, right.name: True}


def test_one_slice_dropping_part_pools() -> None:
    b = Builder()
    x = b.input("x", torch.randn(4, 6))
    part = b.op(aten.slice.Tensor, x, 1, 0, 3)
    program = b.program(part)
    assert _splits(program) == {part.name: False}


def test_slices_leaving_a_gap_pool() -> None:
    b = Builder()
    x = b.input("x", torch.randn(4, 6))
    left = b.op(aten.slice.Tensor, x, 1, 0, 2)  # columns 0, 1
    right = b.op(aten.slice.Tensor, x, 1, 3, 6)  # columns 3, 4, 5: column 2 is dropped
    program = b.program(left, right)
    assert _splits(program) == {left.name: False, right.name: False}


def test_slices_along_two_dims_pool() -> None:
    # rows 0:2 and 2:4 cover dim 0, but a third slice reads dim 1: no single dim is split
    b = Builder()
    x = b.input("x", torch.randn(4, 6))
    top = b.op(aten.slice.Tensor, x, 0, 0, 2)
    bottom = b.op(aten.slice.Tensor, x, 0, 2, 4)
    cols = b.op(aten.slice.Tensor, x, 1, 0, 6)
    program = b.program(top, bottom, cols)
    assert _splits(program) == {top.name: False, bottom.name: False, cols.name: False}


def test_selects_over_all_indices_split() -> None:
    b = Builder()
    x = b.input("x", torch.randn(3, 5))
    # index -1 is index 2: together with 0 and 1 every row is read
    rows = [b.op(aten.select.int, x, 0, i) for i in (0, 1, -1)]
    program = b.program(b.op(aten.stack.default, rows))
    assert _splits(program) == {r.name: True for r in rows}


def test_selects_missing_an_index_pool() -> None:
    b = Builder()
    x = b.input("x", torch.randn(3, 5))
    rows = [b.op(aten.select.int, x, 0, i) for i in (0, 2)]  # row 1 is dropped
    program = b.program(*rows)
    assert _splits(program) == {r.name: False for r in rows}


def test_gather_beside_covering_slices_pools() -> None:
    # the slices split x; the gather keeps column 0 of x, whatever the slices do
    b = Builder()
    x = b.input("x", torch.randn(4, 6))
    left = b.op(aten.slice.Tensor, x, 1, 0, 3)
    right = b.op(aten.slice.Tensor, x, 1, 3, BIG)
    column = b.op(aten.gather.default, x, 1, torch.zeros(4, 1, dtype=torch.long))
    program = b.program(left, right, column)
    same = analysis.equivalents(list(program.graph.nodes))
    assert analysis.splits(left, same) and analysis.splits(right, same)
    assert not analysis.splits(column, same)


def test_strided_slices_split() -> None:
    b = Builder()
    x = b.input("x", torch.randn(2, 6))
    even = b.op(aten.slice.Tensor, x, 1, 0, BIG, 2)
    odd = b.op(aten.slice.Tensor, x, 1, 1, BIG, 2)
    program = b.program(even, odd)
    assert _splits(program) == {even.name: True, odd.name: True}


class PatchMerge(nn.Module):
    """Swin's patch merging: four strided sub-grids of the spatial dims, concatenated."""

    def __init__(self, parts: int = 4) -> None:
        super().__init__()
        self.parts = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grids = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return torch.cat(grids[: self.parts], -1)


def test_patch_merging_chains_split() -> None:
    program, nodes = _export(PatchMerge(), torch.randn(2, 4, 4, 3))
    # each grid exports as a chain slice(batch, full) -> slice(dim 1) -> slice(dim 2)
    batch = [n for n in nodes.values() if n.op == "call_function" and n.args[0] is nodes["x"]]
    assert len(batch) == 4 and all(n.args[1:3] == (0, 0) for n in batch)
    same = analysis.equivalents(list(program.graph.nodes))
    # the four full slices of the (symbolic) batch dim compute the same thing
    assert all(same[n] == batch for n in batch)
    # the second slices are only equivalent in pairs (even rows, odd rows); the third
    # slices of each pair's group cover dim 2 together: every slice moves relevance
    splits = _splits(program)
    assert len(splits) == 12 and all(splits.values())


def test_patch_merging_missing_a_grid_pools_its_pair() -> None:
    # grids (even, even), (odd, even), (even, odd): the odd rows are only read at even columns
    program, nodes = _export(PatchMerge(parts=3), torch.randn(2, 4, 4, 3))
    splits = _splits(program)
    odd_rows = [n for n in nodes.values() if "slice" in n.name and n.args[1:3] == (1, 1)]
    (odd_even,) = [u for n in odd_rows for u in n.users if u.op == "call_function"]
    assert odd_even.args[1:3] == (2, 0)
    assert splits.pop(odd_even.name) is False
    assert len(splits) == 8 and all(splits.values())


class Rotary(nn.Module):
    """``x * cos + rotate_half(x) * sin``: x is also read whole."""

    def __init__(self, halves: int = 2) -> None:
        super().__init__()
        self.halves = halves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        upper, lower = x[..., d // 2 :], x[..., : d // 2]
        if self.halves == 1:  # the upper half twice: the lower half is dropped
            lower = x[..., d // 2 :]
        rotated = torch.cat([-upper, lower], dim=-1)
        return x * 0.5 + rotated * 0.25


def test_rotary_halves_split_although_x_is_read_whole() -> None:
    program, nodes = _export(Rotary(), torch.randn(2, 3, 8))
    assert len(nodes["x"].users) == 3  # mul, and the two halves
    splits = _splits(program)
    assert len(splits) == 2 and all(splits.values())


def test_rotary_with_one_half_pools() -> None:
    program, _ = _export(Rotary(halves=1), torch.randn(2, 3, 8))
    splits = _splits(program)
    assert len(splits) == 2 and not any(splits.values())


class Rows(nn.Module):
    def __init__(self, first: int | None) -> None:
        super().__init__()
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[: self.first, :2] * 2


def test_full_slice_of_a_symbolic_batch_dim_splits() -> None:
    program, nodes = _export(Rows(None), torch.randn(3, 4))
    assert not isinstance(nodes["x"].meta["val"].shape[0], int)  # the batch is symbolic
    batch = next(n for n in nodes.values() if n.op == "call_function" and n.args[0] is nodes["x"])
    assert batch.args[1] == 0
    splits = _splits(program)
    assert splits.pop(batch.name) is True
    assert list(splits.values()) == [False]  # the columns :2 of 4


def test_partial_slice_of_a_symbolic_batch_dim_pools() -> None:
    program, nodes = _export(Rows(1), torch.randn(3, 4))
    batch = next(n for n in nodes.values() if n.op == "call_function" and n.args[0] is nodes["x"])
    assert batch.args[1:3] == (0, 0)
    assert _splits(program)[batch.name] is False


def test_non_select_ops_do_not_split() -> None:
    b = Builder()
    x = b.input("x", torch.randn(4, 6))
    y = b.op(aten.relu.default, x)
    program = b.program(y)
    assert analysis.splits(y, analysis.equivalents(list(program.graph.nodes))) is False


def test_slice_bounds() -> None:
    b = Builder()
    x = b.input("x", torch.randn(4, 10))
    assert analysis.slice_bounds(b.op(aten.slice.Tensor, x, 1, -3, BIG), 10) == (7, 10)
    assert analysis.slice_bounds(b.op(aten.slice.Tensor, x, 1, 2, -1), 10) == (2, 9)
    assert analysis.slice_bounds(b.op(aten.slice.Tensor, x, 1, 0, 99), 10) == (0, 10)
    assert analysis.slice_bounds(b.op(aten.slice.Tensor, x, 1, 0, BIG), None) == (0, None)
    assert analysis.slice_bounds(b.op(aten.slice.Tensor, x, 1, 0, 3), None) == (0, 3)
    assert analysis.slice_bounds(b.op(aten.narrow.default, x, 1, 2, 5), 10) == (2, 7)


# -- pad and crop ----------------------------------------------------------------------


class Window(nn.Module):
    """Pads the tokens to a multiple of 4, computes, crops back."""

    def __init__(self, crop: tuple[int, int] = (0, 5), pad: bool = True) -> None:
        super().__init__()
        self.crop, self.pad = crop, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, 0, 1, 2))  # tokens: one before, two after (5 -> 8)
        return (x * 2)[:, self.crop[0] : self.crop[1]]


class Outer(nn.Module):
    def __init__(self, window: nn.Module, pad_outside: bool = False) -> None:
        super().__init__()
        self.window, self.pad_outside = window, pad_outside

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_outside:
            x = F.pad(x, (0, 0, 1, 2))
        return self.window(x) + 1


def _crop(program: Program) -> tuple[fx.Node, bool]:
    """The one slice of tokens (dim 1) in the graph, and whether it undoes a pad."""
    (crop,) = [n for n in program.graph.nodes if "slice" in n.name and n.args[1] == 1]
    return crop, analysis.undoes_pad(crop)


def test_crop_removing_the_pad_undoes_it() -> None:
    program, _ = _export(Outer(Window(crop=(1, 6))), torch.randn(2, 5, 3))
    crop, undoes = _crop(program)
    assert undoes
    assert _splits(program)[crop.name] is True  # a lone slice, yet it moves relevance


def test_crop_not_matching_the_pad_pools() -> None:
    for crop in [(0, 5), (1, 5), (2, 7)]:
        program, _ = _export(Outer(Window(crop=crop)), torch.randn(2, 5, 3))
        crop_node, undoes = _crop(program)
        assert not undoes, crop
        assert _splits(program)[crop_node.name] is False, crop


def test_crop_of_a_pad_in_another_module_pools() -> None:
    # the pad happens in Outer, the crop in Outer.window: window attention crops what it
    # padded itself
    program, _ = _export(Outer(Window(crop=(1, 6), pad=False), pad_outside=True), torch.randn(2, 5, 3))
    assert not _crop(program)[1]


def test_crop_of_a_hand_built_pad() -> None:
    b = Builder()
    x = b.input("x", torch.randn(2, 3, 5))
    padded = b.op(aten.constant_pad_nd.default, x, [2, 1], 0.0)  # last dim: 5 -> 8
    y = b.op(aten.mul.Tensor, padded, 2.0)
    assert analysis.undoes_pad(b.op(aten.slice.Tensor, y, 2, 2, 7))
    assert analysis.undoes_pad(b.op(aten.slice.Tensor, y, -1, 2, -1))
    assert not analysis.undoes_pad(b.op(aten.slice.Tensor, y, 2, 2, 7, 2))  # strided
    assert not analysis.undoes_pad(b.op(aten.slice.Tensor, y, 1, 0, 3))  # dim 1 was not padded


# -- sources ---------------------------------------------------------------------------


class Tokens(nn.Module):
    """Word embeddings of ``ids`` (as given, viewed, or offset) plus position embeddings."""

    def __init__(self, ids: str = "direct", positions: str = "none") -> None:
        super().__init__()
        self.words = nn.Embedding(12, 4)
        self.positions = nn.Embedding(8, 4)
        self.register_buffer("position_ids", torch.arange(8).unsqueeze(0))
        self.ids, self.pos = ids, positions

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.ids == "direct":
            words = self.words(ids)
        elif self.ids == "view":
            words = self.words(ids.reshape(-1)).reshape(ids.shape[0], ids.shape[1], 4)
        else:  # offset
            words = self.words(ids + 2)
        if self.pos == "buffer":
            position_ids = self.position_ids[:, : ids.shape[1]]
        elif self.pos == "expanded":  # expanded to the batch size, read off the ids
            position_ids = self.position_ids[:, : ids.shape[1]].expand(ids.shape[0], -1)
        elif self.pos == "from_ids":  # RoBERTa: counted over the non-padding ids
            mask = (ids != 0).long()
            position_ids = torch.cumsum(mask, 1) * mask
        else:
            return words
        return words + self.positions(position_ids)


def _lookups(nodes: dict[str, fx.Node]) -> tuple[fx.Node, fx.Node | None]:
    """(the word lookup, the position lookup or None), from the weights they read."""
    found = {n.args[0].name: n for n in nodes.values() if n.op == "call_function" and n.name.startswith("embedding")}
    return found["p_words_weight"], found.get("p_positions_weight")


@pytest.mark.parametrize("ids", ["direct", "view"])
def test_lookup_of_the_ids_is_a_direct_token_source(ids: str) -> None:
    program, nodes = _export(Tokens(ids), torch.randint(0, 8, (2, 5)))
    words, _ = _lookups(nodes)
    sources = _sources(program)
    assert sources.float_sources == {}
    assert sources.token_sources == {words: 0}
    assert sources.direct_tokens == {words}
    assert sources.embeddings == {words}
    assert analysis.direct_input(words.args[1], {nodes["ids"]: 0}) == 0
    assert analysis.is_lookup(words)


def test_offset_ids_make_their_lookup_a_derived_token_source() -> None:
    program, nodes = _export(Tokens("offset"), torch.randint(0, 8, (2, 5)))
    words, _ = _lookups(nodes)
    sources = _sources(program)
    assert analysis.direct_input(words.args[1], {nodes["ids"]: 0}) is None  # ids + 2
    assert sources.token_sources == {words: 0}
    assert sources.direct_tokens == set()


@pytest.mark.parametrize("ids", ["direct", "offset"])
@pytest.mark.parametrize("positions", ["buffer", "expanded"])
def test_positions_from_a_buffer_are_an_embedding_not_tokens(ids: str, positions: str) -> None:
    program, nodes = _export(Tokens(ids, positions), torch.randint(0, 8, (2, 5)))
    words, pos = _lookups(nodes)
    sources = _sources(program)
    assert sources.token_sources == {words: 0}
    assert sources.embeddings == {words, pos}
    assert {words, pos} <= sources.live


def test_positions_from_the_ids_are_no_tokens_beside_a_direct_lookup() -> None:
    program, nodes = _export(Tokens("direct", "from_ids"), torch.randint(1, 8, (2, 5)))
    words, pos = _lookups(nodes)
    sources = _sources(program)
    assert sources.token_sources == {words: 0}  # pos is indexed by ints computed from ids
    assert sources.embeddings == {words, pos}


def test_int_input_reaching_no_lookup_is_no_source() -> None:
    b = Builder()
    x = b.input("x", torch.randn(2, 4))
    mask = b.input("mask", torch.ones(2, 4, dtype=torch.bool))
    y = b.op(aten.where.self, mask, x, b.op(aten.zeros_like.default, x))
    sources = _sources(b.program(y))
    assert sources.float_sources == {0: x}
    assert sources.token_sources == {} and sources.embeddings == set()
    assert mask not in sources.live and y in sources.live


# -- live and relevant nodes -----------------------------------------------------------


def test_branch_not_reaching_the_output_is_live_not_relevant() -> None:
    b = Builder()
    x = b.input("x", torch.randn(2, 4))
    y = b.input("y", torch.randn(2, 4))
    dead = b.op(aten.relu.default, y)
    dead2 = b.op(aten.add.Tensor, dead, x)  # reads x too, and still reaches nothing
    out = b.op(aten.mul.Tensor, x, 2.0)
    program = b.program(out)
    nodes = list(program.graph.nodes)
    sources = _sources(program)
    assert sources.float_sources == {0: x, 1: y}
    assert sources.live == {x, y, dead, dead2, out}
    assert analysis.relevant_nodes(program, nodes, sources.live, sources.embeddings) == {x, out}


class RMSNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) + torch.zeros_like(x)


def test_statistics_and_constant_like_ops_are_not_live() -> None:
    program, nodes = _export(RMSNorm(), torch.randn(2, 3, 4))
    by_op = {analysis.op_name(n.target): n for n in nodes.values() if n.op == "call_function"}
    sources = _sources(program)
    assert by_op["aten.rsqrt"] not in sources.live
    assert by_op["aten.zeros_like"] not in sources.live
    # the variance is computed from x (live) but feeds only the statistic: not relevant
    variance = {by_op[k] for k in ("aten.pow", "aten.mean")}
    assert variance <= sources.live
    relevant = analysis.relevant_nodes(program, list(nodes.values()), sources.live, sources.embeddings)
    (out,) = [n for n in nodes.values() if n.op == "output"]
    final = out.args[0][0]  # x * rsqrt(...) + zeros_like(x)
    assert relevant == {nodes["x"], by_op["aten.mul"], final}


def test_embedding_weights_are_not_followed_past_the_lookup() -> None:
    program, nodes = _export(Tokens("direct"), torch.randint(0, 8, (2, 5)))
    words, _ = _lookups(nodes)
    sources = _sources(program)
    relevant = analysis.relevant_nodes(program, list(nodes.values()), sources.live, sources.embeddings)
    assert relevant == {words}


def test_no_input_receiving_relevance_names_the_dtypes() -> None:
    b = Builder()
    ids = b.input("ids", torch.zeros(2, 3, dtype=torch.long))
    program = b.program(b.op(aten.mul.Tensor, b.op(aten._to_copy.default, ids), 2.0))
    nodes = list(program.graph.nodes)
    sources = _sources(program)
    assert sources.live == set()  # a float computed from ints carries no relevance
    with pytest.raises(relprop.InputError, match=r"ids: torch\.int64"):
        analysis.relevant_nodes(program, nodes, sources.live, sources.embeddings)


class PositionsOnly(nn.Module):
    """Only a lookup of a buffer reaches the output: the ids get no relevance."""

    def __init__(self) -> None:
        super().__init__()
        self.positions = nn.Embedding(8, 4)
        self.register_buffer("position_ids", torch.arange(8).unsqueeze(0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.positions(self.position_ids[:, : ids.shape[1]]) + ids.unsqueeze(-1).float()


def test_bind_refuses_a_graph_whose_inputs_get_no_relevance() -> None:
    program, nodes = _export(PositionsOnly(), torch.zeros(2, 3, dtype=torch.long))
    sources = _sources(program)
    (pos,) = sources.embeddings
    assert sources.token_sources == {} and sources.float_sources == {}
    relevant = analysis.relevant_nodes(program, list(nodes.values()), sources.live, sources.embeddings)
    assert pos in relevant  # relevance reaches the position lookup, no input
    with pytest.raises(relprop.InputError, match=r"args\[0\]: torch\.int64"):
        bind(program, PositionsOnly(), AbsLRP(), {}, True)


# -- first weighted layers, module paths ----------------------------------------------


def test_first_weighted() -> None:
    b = Builder()
    x = b.input("x", torch.randn(2, 4))
    w = b.state("w", torch.randn(4, 4))
    lin1 = b.op(aten.linear.default, x, w)
    act = b.op(aten.relu.default, lin1)
    lin2 = b.op(aten.linear.default, act, w)
    side = b.op(aten.linear.default, x, w)  # a second branch from the input
    total = b.op(aten.add.Tensor, lin2, side)
    inputs = {lin1: [x], act: [lin1], lin2: [act], side: [x], total: [lin2, side]}
    assert analysis.first_weighted(inputs, {lin1, lin2, side}) == {lin1, side}
    # an edge that carries no relevance is not followed: lin2 then has no weighted op upstream
    inputs[act] = []
    assert analysis.first_weighted(inputs, {lin1, lin2, side}) == {lin1, lin2, side}


def test_module_paths() -> None:
    b = Builder()
    x = b.input("x", torch.randn(2, 4))
    y = b.op(aten.relu.default, x, module="L['self'].blocks.0")
    assert analysis.module_stack(y) == [("", "Model"), ("L['self'].blocks.0", "Block")]
    assert analysis.module_stack(x) == []
    assert analysis.clean_path("L['self'].blocks.0") == "blocks.0"
    assert analysis.clean_path("L__self__.features.3") == "features.3"
    assert analysis.stack_entries({"k": ("a.b", nn.Linear)}) == [("a.b", "Linear")]
    assert analysis.embedding_path(y) == "blocks.0"
    assert analysis.embedding_path(b.op(aten.relu.default, x)) == "relu_default_1"


def test_input_leaves_keep_order_and_repeats() -> None:
    b = Builder()
    x = b.input("x", torch.randn(2, 4))
    y = b.input("y", torch.randn(2, 4))
    cat = b.op(aten.cat.default, [y, x, y], 1)
    assert analysis.input_leaves(cat) == [y, x, y]
    assert cat.all_input_nodes == [y, x]
