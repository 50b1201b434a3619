"""Packed sequences: ``pack_padded_sequence`` → ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` →
``pad_packed_sequence`` explained (issue 22, point 1; :mod:`relprop.packed`).

Checked: the traced program computes the model's values (PyTorch's packed run is the
oracle); padding gets exactly zero relevance; each sample's relevance equals the one it gets
alone, unpadded (ε and AttnLRP, float64); a batch of full-length samples gets the relevance of
the same model without packing (ε and AttnLRP: absLRP rescales at the batch reorder of
``enforce_sorted=False``, an ``index_select`` it treats as computing, so its maps differ);
new batch sizes and lengths reuse the trace; a batch padded beyond its longest sample is
refused unless ``total_length`` says how long to pad; the user's model is unchanged.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import relprop
from relprop import rules
from relprop.errors import InputError

VOCAB, EMBED, HIDDEN = 20, 8, 6


class Packed(nn.Module):
    """Embedding → packed recurrent layer → (summed padded output or last state) → Linear."""

    def __init__(
        self,
        kind: type[nn.RNNBase] = nn.LSTM,
        head: str = "sum",
        sort: bool = False,
        batch_first: bool = True,
        total_length: bool = False,
        **kw: object,
    ) -> None:
        super().__init__()
        self.head, self.sort, self.batch_first, self.total_length = head, sort, batch_first, total_length
        self.emb = nn.Embedding(VOCAB, EMBED)
        self.rnn = kind(EMBED, HIDDEN, batch_first=batch_first, **kw)
        width = (kw.get("proj_size") or HIDDEN) * (2 if kw.get("bidirectional") else 1)
        self.fc = nn.Linear(width if head == "sum" else (kw.get("proj_size") or HIDDEN), 3)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        e = self.emb(ids) if self.batch_first else self.emb(ids).transpose(0, 1)
        packed = pack_padded_sequence(e, lengths, batch_first=self.batch_first, enforce_sorted=self.sort)
        out, state = self.rnn(packed)
        if self.head == "state":
            h = state[0] if isinstance(state, tuple) else state
            return self.fc(h[-1])
        total = ids.shape[1] if self.total_length else None
        padded, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=total)
        return self.fc(padded.sum(1 if self.batch_first else 0))


class Unpacked(Packed):
    """The same model without packing (for batches of full-length samples)."""

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        out, state = self.rnn(self.emb(ids) if self.batch_first else self.emb(ids).transpose(0, 1))
        if self.head == "state":
            h = state[0] if isinstance(state, tuple) else state
            return self.fc(h[-1])
        return self.fc(out.sum(1 if self.batch_first else 0))


ZOO = {
    "lstm": dict(kind=nn.LSTM),
    "lstm-sorted-state": dict(kind=nn.LSTM, head="state", sort=True),
    "lstm-2layer-bidi-dropout": dict(kind=nn.LSTM, num_layers=2, bidirectional=True, dropout=0.3),
    "lstm-proj-time-major": dict(kind=nn.LSTM, proj_size=4, batch_first=False),
    "gru": dict(kind=nn.GRU),
    "gru-bidi": dict(kind=nn.GRU, bidirectional=True),
    "gru-state": dict(kind=nn.GRU, head="state", num_layers=2),
    "rnn-tanh": dict(kind=nn.RNN),
    "rnn-relu-bidi": dict(kind=nn.RNN, nonlinearity="relu", bidirectional=True),
}

IDS = torch.tensor([[3, 7, 1, 9, 4], [5, 2, 8, 0, 0], [6, 11, 0, 0, 0]])
LENGTHS = torch.tensor([5, 3, 2])
TARGETS = [0, 2, 1]


def _model(name: str, cls: type[Packed] = Packed) -> Packed:
    torch.manual_seed(0)
    return cls(**ZOO[name]).eval().double()


#: each sample alone: under ε every cell and option, under AttnLRP both bidirectional cells
EPS = [n for n in ZOO if n not in ("lstm", "gru")]
ATTN = ["lstm-2layer-bidi-dropout", "gru-bidi"]


@pytest.mark.parametrize("name, rule_set", [(n, "epsilon") for n in EPS] + [(n, "attnlrp") for n in ATTN])
def test_padding_gets_zero_and_each_sample_equals_itself_alone(name: str, rule_set: str) -> None:
    model = _model(name)
    graph = relprop.trace(model, rules.rule_set(rule_set))
    e = graph.explanation((IDS, LENGTHS), TARGETS)
    # the traced program computes PyTorch's packed run
    torch.testing.assert_close(e.output, model(IDS, LENGTHS), rtol=0, atol=1e-12)
    R = e.relevance[0]
    assert R.shape == IDS.shape
    for b, length in enumerate(LENGTHS.tolist()):
        assert (R[b, length:] == 0).all(), (b, R[b])
        assert R[b, :length].abs().sum() > 0
        alone = graph.explanation((IDS[b : b + 1, :length], LENGTHS[b : b + 1]), TARGETS[b])
        torch.testing.assert_close(alone.output, model(IDS[b : b + 1, :length], LENGTHS[b : b + 1]))
        torch.testing.assert_close(R[b, :length], alone.relevance[0][0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "name, rule_set", [("gru-bidi", "epsilon"), ("gru-bidi", "attnlrp"), ("lstm-2layer-bidi-dropout", "epsilon")]
)
def test_full_length_batches_equal_the_model_without_packing(name: str, rule_set: str) -> None:
    ids, lengths = IDS[:1].repeat(2, 1), torch.tensor([5, 5])
    packed = relprop.trace(_model(name), rules.rule_set(rule_set)).explain((ids, lengths), [0, 2])[0]
    plain = relprop.trace(_model(name, Unpacked), rules.rule_set(rule_set)).explain((ids, lengths), [0, 2])[0]
    torch.testing.assert_close(packed, plain, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["gru-bidi", "lstm-2layer-bidi-dropout"])
def test_abslrp_explains_packed_batches_strictly(name: str) -> None:
    graph = relprop.trace(_model(name), rules.AbsLRP())
    e = graph.explanation((IDS, LENGTHS), TARGETS)
    assert "passed by their gradient" not in graph.summary()
    assert torch.isfinite(e.passes[0]).all() and e.passes[0][0].abs().sum() > 0
    for b, length in enumerate(LENGTHS.tolist()):
        assert (e.passes[0][:, b, length:] == 0).all()


def test_new_batch_sizes_and_lengths_reuse_the_trace() -> None:
    graph = relprop.trace(_model("gru-bidi"), rules.Epsilon())
    graph.explain((IDS, LENGTHS), TARGETS)
    graph.explain((IDS[:2], LENGTHS[:2]), 0)
    graph.explain((torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([5])), 0)
    graph.explain((IDS.flip(0), LENGTHS.flip(0)), 1)
    assert graph.trace_count == 1


def test_padding_beyond_the_longest_sample_needs_total_length() -> None:
    ids, lengths = IDS[1:], LENGTHS[1:]  # longest 3 of 5 steps
    graph = relprop.trace(_model("lstm"), rules.Epsilon())
    with pytest.raises(InputError, match="total_length"):
        graph.explain((ids, lengths), 0)
    torch.manual_seed(0)
    model = Packed(nn.LSTM, total_length=True).eval().double()
    R = relprop.trace(model, rules.Epsilon()).explain((ids, lengths), [2, 1])[0]
    assert (R[0, 3:] == 0).all() and (R[1, 2:] == 0).all()
    alone = relprop.trace(model, rules.Epsilon()).explain((ids[:1, :3], lengths[:1]), 2)[0]
    torch.testing.assert_close(R[0, :3], alone[0], rtol=1e-9, atol=1e-12)


def test_the_model_and_pytorch_are_unchanged() -> None:
    model = _model("lstm-2layer-bidi-dropout")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checks = {name: nn.RNNBase.__dict__[name] for name in ("get_expected_hidden_size",)}
    cell = nn.LSTM.__dict__["get_expected_cell_size"]
    relprop.trace(model, rules.AttnLRP()).explain((IDS, LENGTHS), TARGETS)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(nn.RNNBase.__dict__[name] is fn for name, fn in checks.items())
    assert nn.LSTM.__dict__["get_expected_cell_size"] is cell
    # PyTorch's own packed run still works (and so the mode is gone)
    out = model(IDS, LENGTHS)
    assert out.shape == (3, 3)
