"""The recurrent ops written as their cell computations, for :mod:`relprop.custom_ops` to trace.

The GRU is traced by PyTorch's decomposition; the LSTM and the Elman RNN (``aten.lstm``,
``aten.rnn_tanh``, ``aten.rnn_relu``) by the implementations here,
which compute the same values but write each step's pre-activation as **one** linear map
of ``[x_t, h_{t-1}]`` with the bias ``b_ih + b_hh``, where PyTorch's decomposition adds two
(``W_ih x_t + b_ih`` for all steps at once, plus ``W_hh h_{t-1} + b_hh``).  The value is the
same; the ε-rule is not: on one linear map its stabiliser enters once, with the whole
pre-activation as denominator, as in Arras et al.'s reference implementation of LRP for
LSTMs.  Cell updates are written ``f ⊙ c_{t-1} + i ⊙ g`` and ``o ⊙ tanh(c_t)``, the
products :func:`relprop.rules.gates.sigmoid_gate` recognises.  Layers, both directions,
``batch_first``, ``proj_size``, with or without biases.  A packed batch
(:mod:`relprop.packed`) runs the same cells, and the GRU's as PyTorch's decomposition writes
it (:func:`gru_cell`), with each sample's state held after its last step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["RECURRENT", "gru_cell", "layers", "linear", "lstm_cell", "rnn_cell"]

_aten = torch.ops.aten


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` by ``mm``/``addmm``, keeping symbolic sizes symbolic (ATen's C++ ``linear`` of
    a 3-d input fixes its leading sizes to their traced values)."""
    flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    wt = _aten.t.default(weight)
    y = _aten.mm.default(flat, wt) if bias is None else _aten.addmm.default(bias, flat, wt)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0])


def _steps(x: Tensor) -> int:
    size = x.shape[0]
    if isinstance(size, torch.SymInt):
        raise ValueError("the sequence length is dynamic: the time steps cannot be unrolled")
    return int(size)


#: a cell: (input at step t, states) -> new states, the first being the step's output
Cell = Callable[[Tensor, list[Tensor]], list[Tensor]]
#: (one layer and direction's parameters, has_biases) -> its cell
CellFactory = Callable[[Sequence[Tensor], bool], Cell]


def lstm_cell(p: Sequence[Tensor], has_biases: bool) -> Cell:
    """The LSTM step: one linear map of ``[x_t, h_{t-1}]``, ``c_t = f ⊙ c_{t-1} + i ⊙ g``,
    ``h_t = o ⊙ tanh(c_t)`` (projected by ``W_hr`` where ``proj_size`` is set)."""
    w = _aten.cat.default([p[0], p[1]], 1)
    bias = _aten.add.Tensor(p[2], p[3]) if has_biases else None
    w_hr = p[-1] if len(p) in (3, 5) else None  # proj_size: W_hr last

    def cell(x: Tensor, state: list[Tensor]) -> list[Tensor]:
        h, c = state
        i, f, g, o = linear(_aten.cat.default([x, h], 1), w, bias).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return [h if w_hr is None else linear(h, w_hr, None), c]

    return cell


def rnn_cell(activation: Callable[[Tensor], Tensor]) -> CellFactory:
    """The Elman RNN step ``h_t = act(W [x_t, h_{t-1}] + b)``."""

    def factory(p: Sequence[Tensor], has_biases: bool) -> Cell:
        w = _aten.cat.default([p[0], p[1]], 1)
        bias = _aten.add.Tensor(p[2], p[3]) if has_biases else None

        def cell(x: Tensor, state: list[Tensor]) -> list[Tensor]:
            return [activation(linear(_aten.cat.default([x, state[0]], 1), w, bias))]

        return cell

    return factory


def gru_cell(p: Sequence[Tensor], has_biases: bool) -> Cell:
    """The GRU step as PyTorch's decomposition writes it: ``r``, ``z`` from ``W_ih x + W_hh h``,
    ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``, ``h_t = (h_{t-1} − n) ⊙ z + n``."""
    b_ih, b_hh = (p[2], p[3]) if has_biases else (None, None)

    def cell(x: Tensor, state: list[Tensor]) -> list[Tensor]:
        (h,) = state
        xr, xz, xn = linear(x, p[0], b_ih).chunk(3, 1)
        hr, hz, hn = linear(h, p[1], b_hh).chunk(3, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + hn * r)
        return [(h - n) * z + n]

    return cell


def _run(x: Tensor, state: list[Tensor], cell: Cell, reverse: bool, mask: Tensor | None) -> tuple[Tensor, list[Tensor]]:
    """One direction of one layer over the steps of ``x`` (T, B, ...).  Where ``mask`` (T, B)
    is off, a sample's states are held and its output is zero (a padded step)."""
    steps = list(x.unbind(0))
    T = _steps(x)
    ys: list[Any] = [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        new = cell(steps[t], state)
        if mask is None:
            state = new
            ys[t] = new[0]
            continue
        on = mask[t].unsqueeze(1)
        state = [torch.where(on, n, s) for n, s in zip(new, state)]
        ys[t] = torch.where(on, new[0], torch.zeros_like(new[0]))
    return _aten.stack.default(ys, 0), state


def _reversal(mask: Tensor) -> Tensor:
    """The step order that reverses each sample within its length (padding stays in place)."""
    t = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1)
    lengths = mask.sum(0, keepdim=True)
    return torch.where(t < lengths, lengths - 1 - t, t)


def _flip(x: Tensor, order: Tensor) -> Tensor:
    """``x`` (T, B, ...) with each sample's steps in ``order`` (T, B) (an involution here)."""
    index = order.reshape(*order.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 0, index)


def layers(
    input: Tensor,
    hx: Sequence[Tensor],
    params: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
    factory: CellFactory,
    mask: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Run the cells over the layers and directions; returns the output and the final states
    (one tensor per state, in PyTorch's (layer, direction) order).  ``mask`` (T, B): the steps
    each sample has (a packed batch, :mod:`relprop.packed`): the backward direction runs forward
    over each sample's steps reversed within its length, so that every sample starts from
    ``h0`` at its own last step, as when it is alone; after its length its states are held."""
    x = input.transpose(0, 1) if batch_first else input
    dirs = 2 if bidirectional else 1
    flip = _reversal(mask) if mask is not None and bidirectional else None
    per = len(params) // (num_layers * dirs)
    finals: list[list[Tensor]] = [[] for _ in hx]
    for i in range(num_layers):
        outs = []
        for d in range(dirs):
            k = i * dirs + d
            cell = factory(list(params[k * per : (k + 1) * per]), has_biases)
            if mask is not None and d == 1:  # each sample reversed within its length: starts at h0
                y, states = _run(_flip(x, flip), [h[k] for h in hx], cell, False, mask)
                y = _flip(y, flip)
            else:
                y, states = _run(x, [h[k] for h in hx], cell, d == 1, mask)
            outs.append(y)
            for got, s in zip(finals, states):
                got.append(s)
        x = outs[0] if dirs == 1 else _aten.cat.default(outs, 2)
    out = x.transpose(0, 1) if batch_first else x
    return out, [_aten.stack.default(s, 0) for s in finals]


def _op(factory: CellFactory) -> Callable[..., Any]:
    """``aten.lstm.input``-style op (input, hx, params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first) by the cells of ``factory``."""

    def op(input: Tensor, hx: Any, params: Sequence[Tensor], has_biases: bool, num_layers: int, dropout: float,
           train: bool, bidirectional: bool, batch_first: bool) -> Any:  # fmt: skip
        states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
        out, finals = layers(input, states, params, has_biases, num_layers, bidirectional, batch_first, factory)
        return (out, *finals)

    return op


#: recurrent op -> its implementation here (the GRU: PyTorch's decomposition)
RECURRENT: dict[Any, Callable[..., Any]] = {
    _aten.lstm.input: _op(lstm_cell),
    _aten.rnn_tanh.input: _op(rnn_cell(torch.tanh)),
    _aten.rnn_relu.input: _op(rnn_cell(torch.relu)),
}
