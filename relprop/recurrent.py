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
``batch_first``, ``proj_size``, with or without biases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["RECURRENT", "linear"]

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


def _layers(
    input: Tensor,
    hx: Sequence[Tensor],
    params: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
    layer: Callable[..., tuple[Tensor, list[Tensor]]],
) -> tuple[Tensor, list[Tensor]]:
    """Run ``layer`` over the layers and directions; returns the output and the final states
    (one list per state, in PyTorch's (layer, direction) order)."""
    x = input.transpose(0, 1) if batch_first else input
    dirs = 2 if bidirectional else 1
    per = len(params) // (num_layers * dirs)
    finals: list[list[Tensor]] = [[] for _ in hx]
    for i in range(num_layers):
        outs = []
        for d in range(dirs):
            k = i * dirs + d
            p = list(params[k * per : (k + 1) * per])
            w_ih, w_hh = p[0], p[1]
            bias = _aten.add.Tensor(p[2], p[3]) if has_biases else None
            w_hr = p[-1] if per in (3, 5) else None  # proj_size: W_hr last
            w = _aten.cat.default([w_ih, w_hh], 1)
            y, states = layer(x, [h[k] for h in hx], w, bias, w_hr, d == 1)
            outs.append(y)
            for got, s in zip(finals, states):
                got.append(s)
        x = outs[0] if dirs == 1 else _aten.cat.default(outs, 2)
    out = x.transpose(0, 1) if batch_first else x
    return out, [_aten.stack.default(s, 0) for s in finals]


def _lstm_layer(
    x: Tensor, state: list[Tensor], w: Tensor, bias: Tensor | None, w_hr: Tensor | None, reverse: bool
) -> tuple[Tensor, list[Tensor]]:
    h, c = state
    steps = list(x.unbind(0))
    T = _steps(x)
    ys: list[Any] = [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        z = linear(_aten.cat.default([steps[t], h], 1), w, bias)
        i, f, g, o = z.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if w_hr is not None:
            h = linear(h, w_hr, None)
        ys[t] = h
    return _aten.stack.default(ys, 0), [h, c]


def _lstm(
    input: Tensor,
    hx: Sequence[Tensor],
    params: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``aten.lstm.input`` (module docstring)."""
    out, (h, c) = _layers(input, hx, params, has_biases, num_layers, bidirectional, batch_first, _lstm_layer)
    return out, h, c


def _rnn(activation: Callable[[Tensor], Tensor]) -> Callable[..., tuple[Tensor, Tensor]]:
    def layer(
        x: Tensor, state: list[Tensor], w: Tensor, bias: Tensor | None, w_hr: Tensor | None, reverse: bool
    ) -> tuple[Tensor, list[Tensor]]:
        (h,) = state
        steps = list(x.unbind(0))
        T = _steps(x)
        ys: list[Any] = [None] * T
        for t in reversed(range(T)) if reverse else range(T):
            h = activation(linear(_aten.cat.default([steps[t], h], 1), w, bias))
            ys[t] = h
        return _aten.stack.default(ys, 0), [h]

    def rnn(
        input: Tensor,
        hx: Tensor,
        params: Sequence[Tensor],
        has_biases: bool,
        num_layers: int,
        dropout: float,
        train: bool,
        bidirectional: bool,
        batch_first: bool,
    ) -> tuple[Tensor, Tensor]:
        out, (h,) = _layers(input, [hx], params, has_biases, num_layers, bidirectional, batch_first, layer)
        return out, h

    return rnn


#: recurrent op -> its implementation here (the GRU: PyTorch's decomposition)
RECURRENT: dict[Any, Callable[..., Any]] = {
    _aten.lstm.input: _lstm,
    _aten.rnn_tanh.input: _rnn(torch.tanh),
    _aten.rnn_relu.input: _rnn(torch.relu),
}
