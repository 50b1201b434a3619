"""Recurrent networks: ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` explained (issue 22, points 1-3).

The recurrent ops are traced into their cell computations (:mod:`relprop.custom_ops`);
the classic rule sets hold sigmoid gates constant
("signal-take-all", :func:`relprop.rules.gates.sigmoid_gate`).  Checked here: a two-step
LSTM against numbers computed by hand from the formulas; Arras et al.'s reference
implementation of LRP for LSTMs (fixture ``../shared/reference/lrp_lstm_bidi.pt``); the
recurrent zoo under absLRP, ε and AttnLRP; the refusal of a recurrent op in training mode
with dropout.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SHARED
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.errors import MissingRuleError

LSTM_FIXTURE = SHARED / "reference" / "lrp_lstm_bidi.pt"


# -- a two-step LSTM by hand ---------------------------------------------------------------------

#: gate rows of the LSTM (PyTorch's order i, f, g, o): input weight, hidden weight, bias
GATES = {"i": (0.5, -0.3, 0.1), "f": (0.8, 0.2, -0.2), "g": (1.2, -0.7, 0.05), "o": (-0.4, 0.9, 0.3)}
V = 1.5  # output weight
XS = (0.7, -1.1)  # the two inputs
EPS = 0.01


class TinyLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(1, 1, batch_first=True)
        self.out = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            rows = [GATES[k] for k in "ifgo"]
            self.rnn.weight_ih_l0.copy_(torch.tensor([[r[0]] for r in rows]))
            self.rnn.weight_hh_l0.copy_(torch.tensor([[r[1]] for r in rows]))
            self.rnn.bias_ih_l0.copy_(torch.tensor([r[2] for r in rows]))
            self.rnn.bias_hh_l0.zero_()
            self.out.weight.fill_(V)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)
        return self.out(y[:, -1])


def _stab(z: float) -> float:
    return z + (EPS if z >= 0 else -EPS)


def _by_hand() -> tuple[float, float, float]:
    """LRP-ε with signal-take-all through the two steps; returns (y, R_x1, R_x2)."""

    def sig(z: float) -> float:
        return 1 / (1 + math.exp(-z))

    def pre(k: str, x: float, h: float) -> float:
        wx, wh, b = GATES[k]
        return wx * x + wh * h + b

    h, c = 0.0, 0.0  # h_0 = c_0 = 0
    steps = []
    for x in XS:
        z = {k: pre(k, x, h) for k in "ifgo"}
        kept = sig(z["f"]) * c  # f ⊙ c_{t-1}
        new = sig(z["i"]) * math.tanh(z["g"])  # i ⊙ g
        steps.append({"x": x, "h_prev": h, "zg": z["g"], "kept": kept, "new": new, "c": kept + new})
        c = kept + new
        h = sig(z["o"]) * math.tanh(c)
    y = V * h
    R_h = V * h / _stab(y) * y  # the output layer's ε-rule, from the target score y
    R_c = R_h  # o ⊙ tanh(c): all to c (the gate held), tanh: the identity
    R_x: list[float] = [0.0, 0.0]
    for t in (1, 0):
        s = steps[t]
        R_kept = s["kept"] / _stab(s["c"]) * R_c  # the sum c = f ⊙ c_prev + i ⊙ g: ε-rule
        R_g = s["new"] / _stab(s["c"]) * R_c  # i ⊙ g: all to g; tanh: the identity
        wx, wh, _ = GATES["g"]
        R_x[t] = wx * s["x"] / _stab(s["zg"]) * R_g  # one linear map of [x_t, h_{t-1}]: ε-rule
        R_h_prev = wh * s["h_prev"] / _stab(s["zg"]) * R_g
        R_c = R_kept + R_h_prev  # c_{t-1} receives through f ⊙ c_{t-1} and through h_{t-1}
    return y, R_x[0], R_x[1]


def test_two_step_lstm_equals_the_hand_computation() -> None:
    """LRP-ε through a two-step LSTM (hidden size 1) equals the formulas worked by hand:
    the gates i, f, o receive nothing, the signals g and c_{t-1} everything."""
    torch.set_default_dtype(torch.float64)
    try:
        model = TinyLSTM().eval()
        x = torch.tensor([[[XS[0]], [XS[1]]]])
        y, r1, r2 = _by_hand()
        assert model(x).item() == pytest.approx(y, rel=1e-12)
        graph = relprop.trace(model, rules=rules.Epsilon(EPS), strict=True)
        R = graph.explain(x, 0)
    finally:
        torch.set_default_dtype(torch.float32)
    assert R.shape == (1, 2, 1)
    assert R[0, 0, 0].item() == pytest.approx(r1, rel=1e-9, abs=1e-12)
    assert R[0, 1, 0].item() == pytest.approx(r2, rel=1e-9, abs=1e-12)


def test_gates_are_recognised() -> None:
    """Every elementwise product of an LSTM and a GRU cell has a sigmoid gate (or one minus it)
    as one operand; no other operand of those products is one."""
    from relprop.rules.gates import sigmoid_gate
    from relprop.tracing import export_program

    for rnn in (nn.LSTM(3, 2, batch_first=True), nn.GRU(3, 2, batch_first=True)):
        program = export_program(_Last(rnn).eval(), (torch.randn(2, 3, 3),), {}, disk=False)
        muls = [n for n in program.graph.nodes if n.op == "call_function" and "aten.mul.Tensor" in str(n.target)]
        assert muls
        for n in muls:
            gates = [sigmoid_gate(a) for a in n.args[:2]]
            assert sum(gates) == 1, (n.name, gates)
    # the classic sets hold them (signal-take-all), AttnLRP splits the product (its uniform rule)
    x = torch.randn(2, 3, 3)
    model = _Last(nn.LSTM(3, 2, batch_first=True)).eval()
    assert "hold_gates=Tr" in relprop.trace(model, rules=rules.Epsilon(), strict=True).summary(x)
    assert "hold_gates" not in relprop.trace(model, rules=rules.AttnLRP(), strict=True).summary(x)


class _Last(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.out = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.rnn(x)
        return self.out(y[:, -1] if self.rnn.batch_first else y[-1])


# -- the reference: Arras et al.'s LRP for LSTMs ---------------------------------------------------


class BidiLSTM(nn.Module):
    """The fixture's classifier as ``nn.LSTM(bidirectional=True)``: the score
    ``Why · [h_left[T-1]; h_right[T-1]]`` is one linear map (``Why = [Why_Left, Why_Right]``)."""

    def __init__(self, fixture: dict) -> None:
        super().__init__()
        W, E = fixture["model"], fixture["embeddings"]
        e, d = W["Wxh_Left"].shape[1], W["Whh_Left"].shape[1]
        self.d = d
        self.embed = nn.Embedding(*E.shape)
        self.lstm = nn.LSTM(e, d, bidirectional=True, batch_first=True)
        self.why = nn.Linear(2 * d, W["Why_Left"].shape[0], bias=False)

        def reorder(w: Tensor) -> Tensor:  # the reference's gates i, g, f, o -> PyTorch's i, f, g, o
            i, g, f, o = w.chunk(4, 0)
            return torch.cat([i, f, g, o], 0)

        with torch.no_grad():
            self.embed.weight.copy_(E)
            for side, suffix in (("Left", ""), ("Right", "_reverse")):
                getattr(self.lstm, f"weight_ih_l0{suffix}").copy_(reorder(W[f"Wxh_{side}"]))
                getattr(self.lstm, f"weight_hh_l0{suffix}").copy_(reorder(W[f"Whh_{side}"]))
                getattr(self.lstm, f"bias_ih_l0{suffix}").copy_(reorder(W[f"bxh_{side}"]))
                getattr(self.lstm, f"bias_hh_l0{suffix}").copy_(reorder(W[f"bhh_{side}"]))
            self.why.weight.copy_(torch.cat([W["Why_Left"], W["Why_Right"]], 1))

    def forward(self, ids: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.why(torch.cat([out[:, -1, : self.d], out[:, 0, self.d :]], -1))


def test_bidirectional_lstm_equals_the_reference() -> None:
    """LRP-ε (ε = 0.001) on the fixture's bidirectional LSTM gives, per case, token and
    per-dimension embedding relevances equal to the reference's ``Rx + Rx_rev``."""
    if not LSTM_FIXTURE.exists():
        pytest.skip(f"reference fixture {LSTM_FIXTURE} not present")
    fixture = torch.load(LSTM_FIXTURE, weights_only=False)
    assert fixture["eps"] == 0.001 and fixture["bias_factor"] == 0
    torch.set_default_dtype(torch.float64)
    try:
        model = BidiLSTM(fixture).eval()
        graph = relprop.trace(model, rules=rules.Epsilon(fixture["eps"]), strict=True)
        worst = 0.0
        for case in fixture["cases"]:
            ids = case["ids"][None]
            scores = model(ids)[0]
            torch.testing.assert_close(scores, case["scores"], rtol=0, atol=1e-12)
            ex = graph.explanation(ids, case["target"], record=["embedding"])
            got = ex.node_relevance["embedding"][0, 0]  # the one pass, the one sample
            want = case["Rx"] + case["Rx_rev"]
            assert got.shape == want.shape
            cosine = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), 0).item()
            assert cosine >= 0.9999, (case["ids"].tolist(), cosine)
            torch.testing.assert_close(ex.relevance[0], want.sum(-1), rtol=0, atol=1e-12)
            worst = max(worst, (got - want).abs().max().item())
        assert worst < 1e-12, worst
    finally:
        torch.set_default_dtype(torch.float32)


# -- the recurrent zoo ----------------------------------------------------------------------------


class Classifier(nn.Module):
    """Embedding -> recurrent layer -> linear on the last step."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 6)
        self.rnn = rnn
        size = getattr(rnn, "proj_size", 0) or rnn.hidden_size
        self.head = nn.Linear(size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, ids: Tensor) -> Tensor:
        if self.rnn.batch_first:
            y, _ = self.rnn(self.embed(ids))
            return self.head(y[:, -1])
        y, _ = self.rnn(self.embed(ids).transpose(0, 1))  # (T, batch, features)
        return self.head(y[-1])


ZOO = {
    "gru": lambda: nn.GRU(6, 5, batch_first=True),
    "rnn_tanh": lambda: nn.RNN(6, 5, batch_first=True),
    "rnn_relu_seq_first": lambda: nn.RNN(6, 5, nonlinearity="relu"),
    "lstm_2_layers_dropout": lambda: nn.LSTM(6, 5, num_layers=2, dropout=0.3, batch_first=True),
    "gru_bidirectional": lambda: nn.GRU(6, 5, batch_first=True, bidirectional=True),
    "lstm_proj": lambda: nn.LSTM(6, 5, proj_size=3, batch_first=True, bidirectional=True),
}

RULE_SETS = {"abslrp": rules.AbsLRP, "epsilon": lambda: rules.Epsilon(1e-6), "attnlrp": rules.AttnLRP}


@pytest.mark.filterwarnings("ignore:relprop explains the model in eval mode")
@pytest.mark.filterwarnings("ignore:relprop traced Classifier with fixed sizes")
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_explains_strict(name: str) -> None:
    """Each recurrent model explains strict under absLRP, ε and AttnLRP: finite, shaped like the
    tokens, and the model is handed back unchanged (parameters, training flag)."""
    torch.manual_seed(0)
    model = Classifier(ZOO[name]())
    model.train()  # relprop explains in eval mode and hands it back in training mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 30, (2, 5))
    for make in RULE_SETS.values():
        graph = relprop.trace(model, rules=make(), strict=True)
        ex = graph.explanation(ids, 1)
        R = ex.relevance
        assert R.shape == ids.shape
        assert torch.isfinite(R).all()
        # the first pass (from the target): relevance reaches the tokens (absLRP's contrastive
        # difference can vanish: its two passes may coincide)
        assert next(iter(ex.passes.values()))[0].abs().sum() > 0
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.filterwarnings("ignore:relprop traced Classifier with fixed sizes")
def test_epsilon_conserves_through_a_bias_free_lstm() -> None:
    """Without biases, LRP-ε's token relevances sum to the explained score (the gates absorb none)."""
    torch.manual_seed(1)
    model = Classifier(nn.LSTM(6, 5, num_layers=2, bias=False, batch_first=True)).eval()
    model.head.bias.data.zero_()
    ids = torch.randint(0, 30, (3, 4))
    graph = relprop.trace(model, rules=rules.Epsilon(1e-9), strict=True)
    R = graph.explain(ids, 2)
    torch.testing.assert_close(R.sum(1), model(ids)[:, 2], rtol=1e-4, atol=1e-5)


# -- refusal ----------------------------------------------------------------------------------------


class TrainingLSTM(nn.Module):
    """Calls the recurrent op in training mode (``train=True``) with dropout between layers."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 2, num_layers=2, dropout=0.5, batch_first=True)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(2, x.shape[0], 2)
        params = list(self.rnn._flat_weights)
        y = torch.ops.aten.lstm.input(x, [h, h], params, True, 2, self.dropout, True, False, True)[0]
        return y[:, -1]


def test_training_mode_with_dropout_is_refused_with_the_reason() -> None:
    graph = relprop.trace(TrainingLSTM(0.5), rules=rules.Epsilon(), strict=True)
    with pytest.raises(MissingRuleError, match=r"training mode \(train=True\) with dropout p=0.5 between its 2"):
        graph.explain(torch.randn(2, 4, 3), 0)
    # the same op with dropout 0 is deterministic: explained
    graph = relprop.trace(TrainingLSTM(0.0), rules=rules.Epsilon(), strict=True)
    R = graph.explain(torch.randn(2, 4, 3), 0)
    assert torch.isfinite(R).all()
