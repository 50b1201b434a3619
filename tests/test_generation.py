"""relprop.text.explain_generation: a generated answer explained token by token in one walk.

A tiny random Llama (float64) and a whitespace tokenizer stand-in: each row of the batched
explanation equals the one-token explanation of its own prefix (causal attention), greedy
generation equals ``model.generate``, one trace serves everything.  One slow test runs the
command line on the real SmolLM2.
"""

from __future__ import annotations

import html
import json
from typing import Any

import pytest
import torch
from PIL import Image

import relprop
from relprop.errors import InputError, TargetError
from relprop.targets import next_token
from relprop.text import GenerationExplanation, explain_generation

transformers = pytest.importorskip("transformers")

VOCAB = 64
BOS, EOS = 0, 1


class WordTokenizer:
    """A whitespace tokenizer over the words ``w2`` .. ``w63``; ``<s>`` (BOS) and ``</s>`` (EOS) special."""

    all_special_ids = [BOS, EOS]
    eos_token_id = EOS

    def __init__(self) -> None:
        self.pieces = ["<s>", "</s>"] + [f"w{i}" for i in range(2, VOCAB)]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [self.pieces.index(w) for w in text.split()]
        return {"input_ids": ([BOS] if add_special_tokens else []) + ids}

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.pieces[i] for i in ids]

    def decode(self, ids: list[int], **_: Any) -> str:
        return "".join(
            p if i in self.all_special_ids else " " + p for i, p in zip(ids, self.convert_ids_to_tokens(ids))
        )


PROMPT = "w5 w9 w12 w40 w7"


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    """2 layers, 4 heads, 2 key/value heads, SwiGLU, RMSNorm with random weights, no biases; float64."""
    torch.manual_seed(3)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer()


@pytest.fixture(scope="module")
def explained(llama: torch.nn.Module, tok: WordTokenizer) -> tuple[GenerationExplanation, relprop.Graph]:
    graph = relprop.trace(llama, relprop.rules.AttnLRP())
    return explain_generation(llama, tok, PROMPT, max_new_tokens=5, graph=graph), graph


def test_shape_tokens_and_zeros_from_each_position(explained: tuple) -> None:
    ex, _ = explained
    assert ex.prompt_length == 6 and ex.tokens[:6] == ["<s>", " w5", " w9", " w12", " w40", " w7"]
    G, T = len(ex.generated), len(ex.tokens)
    assert 1 <= G <= 5 and T == 6 + G and ex.generated == ex.tokens[6:] and ex.ids.shape == (T,)
    assert ex.relevance.shape == (G, T) and ex.relevance.dtype == torch.float64
    for g in range(G):
        p = ex.position(g)
        assert (ex.relevance[g, p:] == 0).all() and ex.relevance[g, :p].abs().sum() > 0
    assert ex.answer == "".join(ex.generated) and ex.special == [0]
    top = ex.top(2)
    assert len(top) == G and all(
        len(t) == 2 and t[0][2] >= t[1][2] and t[0][0] < ex.position(g) for g, t in enumerate(top)
    )


@pytest.mark.parametrize("rules", [relprop.rules.AttnLRP(), relprop.rules.Epsilon(1e-6)], ids=["attnlrp", "epsilon"])
def test_each_row_is_the_one_token_explanation_of_its_prefix(llama, tok, rules) -> None:
    """The batched walk equals explaining each token alone on its prefix (an independent path)."""
    continuation = [23, 7, 41, 1, 60]
    ex = explain_generation(llama, tok, PROMPT, rules=rules, continuation=continuation)
    assert ex.ids.tolist()[6:] == continuation and ex.rules == repr(rules)
    single = relprop.trace(llama, rules)
    for g, token in enumerate(continuation):
        p = ex.position(g)
        alone = single.explain({"input_ids": ex.ids[None, :p]}, next_token(token))[0]
        torch.testing.assert_close(ex.relevance[g, :p], alone, rtol=1e-9, atol=1e-12)


def test_cp_lrp_conserves_each_generated_logit(llama, tok) -> None:
    """Llama has no biases: AttnLRP(cp) with a tiny ε gives each row the sum of its token's logit."""
    ex = explain_generation(llama, tok, PROMPT, 4, relprop.rules.AttnLRP(epsilon=1e-12, cp=True))
    with torch.no_grad():
        logits = llama(input_ids=ex.ids[None]).logits[0]
    P = ex.prompt_length
    target = logits[torch.arange(P - 1, len(ex.ids) - 1), ex.ids[P:]]
    torch.testing.assert_close(ex.relevance.sum(1), target, rtol=1e-6, atol=1e-9)


def test_greedy_tokens_equal_generate(llama, tok, explained) -> None:
    ex, _ = explained
    prompt = torch.tensor([tok(PROMPT)["input_ids"]])
    out = llama.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False)
    assert ex.ids.tolist() == out[0].tolist()


def test_one_trace_for_the_generation_and_batch_size_chunks(llama, tok, explained) -> None:
    ex, graph = explained
    assert graph.trace_count == 1
    chunked = explain_generation(llama, tok, PROMPT, 5, graph=graph, batch_size=2)
    torch.testing.assert_close(chunked.relevance, ex.relevance, rtol=1e-12, atol=1e-14)
    longer = explain_generation(llama, tok, PROMPT + " w3 w4", 3, graph=graph)
    assert longer.relevance.shape == (3, 11) and graph.trace_count == 1


def test_the_model_is_left_as_it_was(llama, tok) -> None:
    config, generation = llama.config.to_dict(), llama.generation_config.to_dict()
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    explain_generation(llama, tok, PROMPT, 2)
    assert llama.config.to_dict() == config and llama.generation_config.to_dict() == generation
    assert not llama.training and all(torch.equal(v, state[k]) for k, v in llama.state_dict().items())
    llama.train()
    try:
        with pytest.warns(UserWarning, match="eval mode"):
            ex = explain_generation(llama, tok, PROMPT, 2)
        assert llama.training and all(m.training for m in llama.modules())
    finally:
        llama.eval()
    assert ex.relevance.shape[0] >= 1


class TinyLM(torch.nn.Module):
    """Logits as a plain tensor, or (``key``) under another name in a dict."""

    def __init__(self, key: str | None = None) -> None:
        super().__init__()
        self.key = key
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> Any:
        logits = self.head(self.embed(input_ids))
        return logits if self.key is None else {self.key: logits}


def test_errors(llama, tok) -> None:
    for bad in (0, -2, "3", True, 1.5):
        with pytest.raises(InputError, match="max_new_tokens"):
            explain_generation(llama, tok, PROMPT, max_new_tokens=bad)
    for empty in ("", "   ", [], torch.zeros(0, dtype=torch.long)):
        with pytest.raises(InputError, match="empty|no tokens"):
            explain_generation(llama, tok, empty, 2)
    with pytest.raises(InputError, match="continuation"):
        explain_generation(llama, tok, PROMPT, continuation="")
    with pytest.raises(InputError, match="vocabulary"):
        explain_generation(llama, tok, PROMPT, continuation=[5, VOCAB])
    with pytest.raises(InputError, match="one text or one sequence"):
        explain_generation(llama, tok, torch.ones(2, 3, dtype=torch.long), 2)
    with pytest.raises(InputError, match="tokenizer"):
        explain_generation(llama, None, PROMPT, 2)
    with pytest.raises(InputError, match="rules or graph"):
        explain_generation(llama, tok, PROMPT, 2, relprop.rules.AttnLRP(), graph=relprop.trace(llama))
    with pytest.raises(InputError, match="batch_size"):
        explain_generation(llama, tok, PROMPT, 2, batch_size=0)
    without = TinyLM("scores").eval()
    with pytest.raises(TargetError, match="logits"):
        explain_generation(without, tok, PROMPT, 2)
    with pytest.raises(TargetError, match="logits"):
        explain_generation(without, tok, PROMPT, continuation=[3])


def test_a_model_returning_the_logits_tensor(tok) -> None:
    ex = explain_generation(TinyLM().eval(), tok, PROMPT, 3, relprop.rules.Epsilon())
    assert ex.relevance.shape == (3, 9) and (ex.relevance[:, -1] == 0).all()


def test_ids_without_a_tokenizer(llama) -> None:
    ex = explain_generation(llama, None, [5, 9, 12], continuation=torch.tensor([[4, 6]]))
    assert ex.tokens == ["5", "9", "12", "4", "6"] and ex.relevance.shape == (2, 5)


def test_html_png_and_json_hold_the_tokens(explained, tmp_path) -> None:
    ex, _ = explained
    page = ex.to_html(tmp_path / "g.html")
    assert page == (tmp_path / "g.html").read_text(encoding="utf-8")
    assert all(html.escape(t.strip()) in page for t in ex.tokens) and page.count("<tr>") == len(ex.generated) + 1
    ex.save_png(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 100
    text = ex.to_json(tmp_path / "g.json")
    data = json.loads((tmp_path / "g.json").read_text(encoding="utf-8"))
    assert data == json.loads(text) == ex.to_dict()
    assert data["tokens"] == ex.tokens and data["generated"] == ex.generated and data["prompt_length"] == 6
    assert torch.tensor(data["relevance"]).shape == ex.relevance.shape


def test_cli_refuses_generate_without_a_language_model(capsys: pytest.CaptureFixture[str]) -> None:
    from relprop.apps import cli

    assert cli.main(["explain-text", "--generate", "2", "some text"]) == 1
    assert "--generate needs a language model" in capsys.readouterr().err
