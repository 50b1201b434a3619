"""Packed sequences (``pack_padded_sequence``) exported as masked recurrence over the padded batch.

``torch.export`` cannot capture a packed sequence: ``_pack_padded_sequence`` returns a tensor
whose size is the sum of the lengths, and the recurrent ops read the number of samples still
running at each step from it.  While relprop exports a model, :class:`PackedAsPadded` (a
``TorchFunctionMode``) keeps the batch padded instead, so every size is the padded input's:

- ``_pack_padded_sequence(x, lengths)`` returns ``x`` time-major, flattened to (T·B, ...), and
  a stand-in for ``batch_sizes`` remembered with the mask ``step < length`` (T, B);
- ``lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu`` on such data run the cells of
  :mod:`relprop.recurrent` over all T steps and **hold** each sample's state where its mask is
  off (``torch.where``): its final state is the one after its last step (forward) or after
  step 0 (backward, which so starts at its last step), as in a packed run;
- ``_pad_packed_sequence`` sets the padding positions to ``padding_value`` and returns the
  lengths.

The values are those of the packed run; a padding step's input only reaches states that a
``where`` discards, so selects pass it no relevance: padding gets exactly zero, and each
sample's relevance is the one it gets alone.  The padded output has the input's length T
(PyTorch's: the longest sample's); a graph assertion refuses a batch whose longest sample is
shorter than T when ``pad_packed_sequence`` is called without ``total_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .recurrent import CellFactory, gru_cell, layers, lstm_cell, rnn_cell

__all__ = ["PackedAsPadded"]

_VF = torch._C._VariableFunctions
#: the size checks of PyTorch's recurrent modules that read ``batch_sizes``
_EXPECTED = [(nn.RNNBase, "get_expected_hidden_size"), (nn.LSTM, "get_expected_cell_size")]


class _Longest(int):
    """The padded length standing in for "the longest sample's length"."""


class _Sizes:
    """What relprop keeps for a packed batch: the mask (T, B) and the batch size B."""

    def __init__(self, mask: Tensor, stand_in: Tensor) -> None:
        self.mask = mask
        self.stand_in = stand_in  # the ``batch_sizes`` tensor handed to PyTorch's Python code
        self.batch = mask.shape[1]


class PackedAsPadded(TorchFunctionMode):
    """Export packed sequences as masked padded recurrence (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[int, _Sizes] = {}

    def __enter__(self) -> PackedAsPadded:
        # the modules' argument checks read ``int(batch_sizes[0])``, which would fix a dynamic
        # batch size: for a padded batch relprop answers from the mask's size instead
        self._saved = {(cls, name): cls.__dict__[name] for cls, name in _EXPECTED}
        for cls, name in _EXPECTED:
            setattr(cls, name, self._expected(cls.__dict__[name]))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for (cls, name), fn in self._saved.items():
            setattr(cls, name, fn)
        super().__exit__(*exc)

    def _expected(self, original: Any) -> Any:
        sizes = self._sizes

        def expected(module: nn.RNNBase, input: Tensor, batch_sizes: Tensor | None) -> Any:
            got = sizes.get(id(batch_sizes)) if batch_sizes is not None else None
            if got is None:
                return original(module, input, batch_sizes)
            layers, _, hidden = original(module, input.new_empty(1, 1, input.shape[-1]), None)
            return (layers, got.batch, hidden)

        return expected

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is _VF._pack_padded_sequence:
            return self._pack(*args, **kwargs)
        if func is _VF._pad_packed_sequence:
            return self._pad(*args, **kwargs)
        if func in _CELLS and len(args) > 1 and id(args[1]) in self._sizes:
            return self._recurrent(_CELLS[func], *args)
        if func is Tensor.size and args and id(args[0]) in self._sizes and args[1:] == (0,):
            # ``pad_packed_sequence``'s default length (``batch_sizes.size(0)``): marked, so that
            # :meth:`_pad` tells it from a ``total_length`` the caller gave
            return _Longest(self._sizes[id(args[0])].mask.shape[0])
        if func is Tensor.__getitem__ and args and id(args[0]) in self._sizes:
            # ``max_batch_size = batch_sizes[0]``: the batch size, symbolic where it is dynamic
            sizes = self._sizes[id(args[0])]
            if args[1] == 0:
                return sizes.batch
            raise NotImplementedError(
                "relprop traces packed sequences as padded batches: only batch_sizes[0] can be read"
            )
        return func(*args, **kwargs)

    def _pack(self, x: Tensor, lengths: Tensor, batch_first: bool) -> tuple[Tensor, Tensor]:
        steps = x.transpose(0, 1) if batch_first else x
        T, B = steps.shape[0], steps.shape[1]
        lengths = lengths.to(steps.device)
        mask = torch.arange(T, device=steps.device).unsqueeze(1) < lengths.unsqueeze(0)
        stand_in = torch.full((T,), 0, dtype=torch.int64)
        self._sizes[id(stand_in)] = _Sizes(mask, stand_in)
        return steps.reshape(T * B, *steps.shape[2:]), stand_in

    def _pad(
        self, data: Tensor, batch_sizes: Tensor, batch_first: bool, padding_value: float, total_length: int
    ) -> tuple[Tensor, Tensor]:
        sizes = self._sizes.get(id(batch_sizes))
        if sizes is None:
            raise NotImplementedError("relprop cannot pad a packed sequence it did not pack")
        mask = sizes.mask
        T, B = mask.shape
        out = data.reshape(T, B, *data.shape[1:])
        keep = mask.reshape(T, B, *([1] * (out.dim() - 2)))
        out = torch.where(keep, out, torch.full((), padding_value, dtype=out.dtype, device=out.device))
        lengths = mask.sum(0).cpu()
        if isinstance(total_length, _Longest):  # PyTorch pads to the longest sample: it must fill T
            torch._assert_async(
                lengths.max() == T,
                "relprop explains a packed batch padded to its longest sample: the input is longer "
                "than every sequence in it (pass total_length= to pad_packed_sequence, or trim the padding)",
            )
        elif total_length > T:
            pad = out.new_full((total_length - T, *out.shape[1:]), padding_value)
            out = torch.cat([out, pad], 0)
        return (out.transpose(0, 1) if batch_first else out), lengths

    def _recurrent(self, factory: CellFactory, data: Tensor, batch_sizes: Tensor, hx: Any, *rest: Any) -> Any:
        params, has_biases, num_layers, _dropout, train, bidirectional = rest
        if train and _dropout > 0 and num_layers > 1:
            raise NotImplementedError("a recurrent layer in training mode with dropout draws random numbers")
        mask = self._sizes[id(batch_sizes)].mask
        T, B = mask.shape
        x = data.reshape(T, B, *data.shape[1:])
        states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
        out, finals = layers(x, states, params, has_biases, num_layers, bidirectional, False, factory, mask)
        out = out.reshape(T * B, *out.shape[2:])
        return (out, *finals)


#: the recurrent functions PyTorch's modules call -> the cells of a packed batch
_CELLS: dict[Any, CellFactory] = {
    _VF.lstm: lstm_cell,
    _VF.gru: gru_cell,
    _VF.rnn_tanh: rnn_cell(torch.tanh),
    _VF.rnn_relu: rnn_cell(torch.relu),
}
