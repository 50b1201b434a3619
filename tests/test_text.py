"""relprop.text: sub-word pieces merged into words, and the HTML / ANSI / PNG renderings.

The tokenizers are built offline with fixed vocabularies (and merges), so the pieces of
the test sentence are known and the word sums can be written down by hand.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import relprop
import relprop.text as text
from relprop.text import Word

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

SENTENCE = "I hate unbelievable movies!"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- tokenizers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory: pytest.TempPathFactory) -> transformers.PreTrainedTokenizerFast:
    """BERT-style WordPiece (``##``): [CLS] i hate un ##believ ##able movie ##s ! [SEP]."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "hate", "un", "##believ", "##able"]
    vocab += ["movie", "##s", "!", "the", "act", "##or", "<", ">", "b"]
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return transformers.BertTokenizerFast(str(path))


@pytest.fixture(scope="module")
def bytelevel() -> transformers.PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE (``Ġ``), ``<|endoftext|>`` as end and pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    merges = [("Ġ", "h"), ("Ġh", "a"), ("Ġha", "t"), ("Ġhat", "e")]
    merges += [("Ġ", "m"), ("Ġm", "o"), ("Ġmo", "v"), ("Ġmov", "i"), ("Ġmovi", "e")]
    merges += [("Ġ", "u"), ("Ġu", "n"), ("b", "e"), ("be", "l"), ("a", "b"), ("ab", "l"), ("abl", "e")]
    merges += [("i", "e"), ("ie", "v")]
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    bpe = Tokenizer(models.BPE(vocab, merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def _sentencepiece(split: bool) -> transformers.PreTrainedTokenizerFast:
    """SentencePiece-style Unigram (``▁``) with <s> ... </s>; ``split=False`` as in Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0), ("<pad>", 0.0)]
    vocab += [(p, -1.0) for p in ["▁I", "▁hate", "▁un", "believ", "able", "▁movie", "s", "!"]]
    vocab += [(c, -10.0) for c in "▁abcdefghijklmnopqrstuvwxyzI"]
    uni = Tokenizer(models.Unigram(vocab, unk_id=0))
    uni.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=split)
    uni.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=split)
    uni.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=uni, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def sentencepiece() -> transformers.PreTrainedTokenizerFast:
    return _sentencepiece(split=True)


def _positions(enc: dict, fill: float = 1000.0) -> torch.Tensor:
    """Relevance = the token's position, and ``fill`` at padded positions."""
    ids = enc["input_ids"]
    R = torch.arange(ids.shape[1], dtype=torch.float32).expand(ids.shape).clone()
    R[enc["attention_mask"] == 0] = fill
    return R


def _summary(ws: list[Word]) -> list[tuple[str, float, bool]]:
    return [(w.text, w.relevance, w.is_special) for w in ws]


# -- merging ---------------------------------------------------------------------------------


def test_wordpiece_merges_continuations(wordpiece) -> None:
    enc = wordpiece([SENTENCE], return_tensors="pt")
    assert wordpiece.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "[CLS]", "i", "hate", "un", "##believ", "##able", "movie", "##s", "!", "[SEP]"
    ]  # fmt: skip
    expected = [
        ("[CLS]", 0.0, True), ("i", 1.0, False), ("hate", 2.0, False), ("unbelievable", 3.0 + 4 + 5, False),
        ("movies", 6.0 + 7, False), ("!", 8.0, False), ("[SEP]", 9.0, True),
    ]  # fmt: skip
    ws = text.words(wordpiece, enc, _positions(enc))
    assert len(ws) == 1 and _summary(ws[0]) == expected
    assert ws[0][3].tokens == (3, 4, 5) and ws[0][3].pieces == ("un", "##believ", "##able")
    assert [w.space for w in ws[0]] == [False, True, True, True, True, False, True]  # "movies!" glued
    # without word_ids (a plain dict): the ## markers give the same words
    assert _summary(text.words(wordpiece, dict(enc), _positions(enc), sample=0)) == expected


def test_bytelevel_merges_at_word_starts(bytelevel) -> None:
    enc = bytelevel([SENTENCE], return_tensors="pt")
    assert bytelevel.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "I", "Ġhate", "Ġun", "bel", "iev", "able", "Ġmovie", "s", "!"
    ]  # fmt: skip
    R = _positions(enc)
    expected = [
        ("I", 0.0, False), ("hate", 1.0, False), ("unbelievable", 2.0 + 3 + 4 + 5, False),
        ("movies", 6.0 + 7, False), ("!", 8.0, False),
    ]  # fmt: skip
    assert _summary(text.words(bytelevel, enc, R, sample=0)) == expected  # word_ids split "!" off
    # markers only: a piece without Ġ continues its word, so "!" stays attached
    assert _summary(text.words(bytelevel, dict(enc), R, sample=0)) == [
        *expected[:3], ("movies!", 6.0 + 7 + 8, False)
    ]  # fmt: skip


def test_sentencepiece_merges_at_word_starts(sentencepiece) -> None:
    enc = sentencepiece([SENTENCE], return_tensors="pt")
    assert sentencepiece.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "<s>", "▁I", "▁hate", "▁un", "believ", "able", "▁movie", "s", "!", "</s>"
    ]  # fmt: skip
    expected = [
        ("<s>", 0.0, True), ("I", 1.0, False), ("hate", 2.0, False), ("unbelievable", 3.0 + 4 + 5, False),
        ("movies!", 6.0 + 7 + 8, False), ("</s>", 9.0, True),
    ]  # fmt: skip
    R = _positions(enc)
    assert _summary(text.words(sentencepiece, enc, R, sample=0)) == expected
    assert _summary(text.words(sentencepiece, dict(enc), R, sample=0)) == expected
    # Llama-style Metaspace(split=False): every piece has word id 0; the ▁ markers still split
    llama = _sentencepiece(split=False)
    enc2 = llama([SENTENCE], return_tensors="pt")
    assert set(enc2.word_ids(0)) == {None, 0}
    assert _summary(text.words(llama, enc2, _positions(enc2), sample=0)) == expected


def test_word_sums_conserve_the_kept_relevance(wordpiece, bytelevel, sentencepiece) -> None:
    for tok in (wordpiece, bytelevel, sentencepiece):
        enc = tok([SENTENCE, "I hate"], return_tensors="pt", padding=True)
        R = torch.randn(enc["input_ids"].shape, dtype=torch.float64)
        for b, ws in enumerate(text.words(tok, enc, R)):
            kept = R[b][enc["attention_mask"][b] == 1]
            assert sum(w.relevance for w in ws) == pytest.approx(kept.sum().item())
            assert sorted(t for w in ws for t in w.tokens) == enc["attention_mask"][b].nonzero().flatten().tolist()


def test_special_tokens_are_never_merged(bytelevel, wordpiece, sentencepiece) -> None:
    # <|endoftext|> inside the text gets a word id from the tokenizer, but is still its own record
    enc = bytelevel(["I hate<|endoftext|>movies"], return_tensors="pt")
    assert bytelevel.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "I", "Ġhate", "<|endoftext|>", "m", "o", "v", "ie", "s"
    ]  # fmt: skip
    ws = text.words(bytelevel, enc, _positions(enc), sample=0)
    assert _summary(ws) == [
        ("I", 0.0, False), ("hate", 1.0, False), ("<|endoftext|>", 2.0, True), ("movies", 3.0 + 4 + 5 + 6 + 7, False)
    ]  # fmt: skip
    assert _summary(text.words(bytelevel, dict(enc), _positions(enc), sample=0)) == _summary(ws)
    # a sentence pair: [CLS] a [SEP] b [SEP], each special token alone
    enc = wordpiece(["i hate"], ["the actor"], return_tensors="pt")
    ws = text.words(wordpiece, enc, _positions(enc), sample=0)
    assert [w.text for w in ws] == ["[CLS]", "i", "hate", "[SEP]", "the", "actor", "[SEP]"]
    assert [w.is_special for w in ws] == [True, False, False, True, False, False, True]
    # the unknown token stands for text: part of its word, not special
    enc = wordpiece(["i hate zebras"], return_tensors="pt")
    ws = text.words(wordpiece, enc, _positions(enc), sample=0)
    assert [(w.text, w.is_special) for w in ws][3] == ("[UNK]", False)


def test_padding_is_dropped(wordpiece, bytelevel) -> None:
    enc = wordpiece([SENTENCE, "the actor"], return_tensors="pt", padding=True)
    R = _positions(enc, fill=float("1e6"))
    ws = text.words(wordpiece, enc, R)
    assert _summary(ws[1]) == [("[CLS]", 0.0, True), ("the", 1.0, False), ("actor", 5.0, False), ("[SEP]", 4.0, True)]
    assert all("[PAD]" not in w.text for w in ws[1])
    # left padding with pad == end token: the mask decides, a real <|endoftext|> is kept
    bytelevel.padding_side = "left"
    try:
        enc = bytelevel([SENTENCE, "I hate<|endoftext|>"], return_tensors="pt", padding=True)
    finally:
        bytelevel.padding_side = "right"
    R = _positions(enc, fill=float("1e6"))
    ws = text.words(bytelevel, enc, R, sample=1)
    n = enc["input_ids"].shape[1]
    assert _summary(ws) == [("I", n - 3.0, False), ("hate", n - 2.0, False), ("<|endoftext|>", n - 1.0, True)]
    assert ws[0].tokens == (n - 3,)  # positions are columns of the padded R
    # without an attention mask, the pad token marks padding
    enc = wordpiece([SENTENCE, "the actor"], return_tensors="pt", padding=True)
    ws = text.words(wordpiece, enc["input_ids"], _positions(enc, fill=0.0), sample=1)
    assert [w.text for w in ws] == ["[CLS]", "the", "actor", "[SEP]"]


def test_inputs_in_other_forms(wordpiece) -> None:
    enc = wordpiece([SENTENCE], return_tensors="pt")
    R = _positions(enc)
    want = _summary(text.words(wordpiece, enc, R, sample=0))
    np_enc = wordpiece([SENTENCE], return_tensors="np")
    assert _summary(text.words(wordpiece, np_enc, R.numpy(), sample=0)) == want
    assert _summary(text.words(wordpiece, enc, R[0], sample=0)) == want  # (tokens,) for a batch of one
    assert _summary(text.words(wordpiece, enc, SimpleNamespace(relevance=R), sample=0)) == want
    bf = text.words(wordpiece, enc, R.to(torch.bfloat16), sample=0)
    assert [w.relevance for w in bf] == [r for _, r, _ in want]
    assert text.words(wordpiece, enc, R, sample=-1) == text.words(wordpiece, enc, R, sample=0)


# -- colours ---------------------------------------------------------------------------------


def _w(t: str, r: float, special: bool = False) -> Word:
    return Word(t, r, special, (0,), (t,))


def _backgrounds(html: str) -> list[str]:
    return re.findall(r"background-color:#([0-9a-f]{6})", html)


def test_colours_zero_white_positive_red_negative_blue() -> None:
    ws = [_w("up", 2.0), _w("zero", 0.0), _w("down", -2.0), _w("half", 1.0), _w("weak", -0.5)]
    assert _backgrounds(text.to_html(ws)) == ["ff0000", "ffffff", "0000ff", "ff8080", "bfbfff"]
    # the same map as relprop.viz
    from relprop.viz import colorize

    assert tuple(np.round(colorize(np.array(-0.25)) * 255).astype(int)) == (0xBF, 0xBF, 0xFF)
    ansi = text.to_ansi(ws)
    assert "\x1b[48;2;255;0;0m" in ansi and "\x1b[48;2;255;255;255m" in ansi and "\x1b[48;2;0;0;255m" in ansi
    # readable text: white on saturated colours, black on pale ones
    assert "\x1b[48;2;255;0;0m\x1b[38;2;255;255;255mup" in ansi
    assert "\x1b[48;2;255;255;255m\x1b[38;2;0;0;0mzero" in ansi


def test_scale_per_sample_shared_fixed_and_special_tokens() -> None:
    batch = [[_w("a", 2.0), _w("b", -1.0)], [_w("c", 1.0), _w("d", 0.0)]]
    assert _backgrounds(text.to_html(batch)) == ["ff0000", "8080ff", "ff0000", "ffffff"]  # ±max|R| per sample
    assert _backgrounds(text.to_html(batch, shared=True)) == ["ff0000", "8080ff", "ff8080", "ffffff"]
    assert _backgrounds(text.to_html(batch, limit=4.0)) == ["ff8080", "bfbfff", "ffbfbf", "ffffff"]
    # a large [CLS] saturates rather than washing out the words, unless asked
    ws = [_w("[CLS]", 10.0, True), _w("word", 1.0)]
    assert _backgrounds(text.to_html(ws)) == ["ff0000", "ff0000"]
    assert _backgrounds(text.to_html(ws, include_special=True)) == ["ff0000", "ffe6e6"]
    assert _backgrounds(text.to_html([_w("x", 0.0), _w("y", 0.0)])) == ["ffffff", "ffffff"]  # all zero: white
    assert "(±2)" in text.to_ansi(batch, color=False) and "(±1)" in text.to_ansi(batch, color=False)


# -- HTML ------------------------------------------------------------------------------------


def test_html_is_escaped_and_has_values_on_hover(wordpiece) -> None:
    ws = [_w("<b>", 0.25), _w('say "hi" & go', -0.125), Word("movies", 0.5, False, (1, 2), ("movie", "##s"))]
    out = text.to_html(ws)
    assert "<b>" not in out and "&lt;b&gt;" in out
    assert "say &quot;hi&quot; &amp; go" in out
    assert 'title="+0.25"' in out and 'title="-0.125"' in out and 'title="+0.5 = movie + ##s"' in out
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>") and 'charset="utf-8"' in out
    frag = text.to_html(ws, document=False)
    assert frag.startswith("<div") and frag.endswith("</div>") and "<html" not in frag
    # from a tokenizer: "<", "b", ">" are escaped too
    enc = wordpiece(["i hate <b>"], return_tensors="pt")
    out = text.render(wordpiece, enc, _positions(enc), "html", document=False)
    assert "&lt;" in out and "&gt;" in out and "<b>" not in out
    assert out.count('class="relprop-special"') == 2


# -- ANSI ------------------------------------------------------------------------------------


def test_ansi_has_escape_codes_and_the_words_in_order(wordpiece, bytelevel, sentencepiece) -> None:
    for tok in (wordpiece, bytelevel, sentencepiece):
        enc = tok([SENTENCE, "I hate"], return_tensors="pt", padding=True)
        R = torch.randn(enc["input_ids"].shape)
        out = text.to_ansi(text.words(tok, enc, R), legend=False)
        assert "\x1b[48;2;" in out and "\x1b[38;2;" in out and out.count("\x1b[0m") > 5
        lines = ANSI.sub("", out).split("\n")
        assert len(lines) == 2
        first = re.sub(r"\[CLS\]|\[SEP\]|<s>|</s>", "", lines[0]).strip()
        assert first.lower() == SENTENCE.lower()
    plain = text.to_ansi([_w("good", 1.5), _w("bad", -0.5)], color=False)
    assert "\x1b" not in plain and plain == "good[+1.5] bad[-0.5] (±1.5)"
    assert text.to_ansi([_w("evil\x1b[31m", 1.0)], legend=False).count("\x1b") == 3  # no escape from the text


# -- PNG -------------------------------------------------------------------------------------


def test_png_is_written_readable_and_grows_with_text(tmp_path: Path) -> None:
    short = [_w("good", 1.0), _w("bad", -1.0), _w("so", 0.0)]
    path = tmp_path / "short.png"
    img = text.to_png(path, short)
    with Image.open(path) as read:
        assert read.format == "PNG" and read.size == img.size
        pixels = np.asarray(read.convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert (255, 0, 0) in colours and (0, 0, 255) in colours and (255, 255, 255) in colours
    longer = text.to_png(tmp_path / "longer.png", short * 4)
    assert longer.width > img.width and longer.height == img.height  # one line, wider
    wrapped = text.to_png(None, short * 40, width=300)
    assert wrapped.width <= 300 and wrapped.height > img.height  # wrapped onto more lines
    two = text.to_png(None, [short, short])
    assert two.height > img.height  # samples stacked
    assert text.to_png(None, short, font_size=24).height > img.height


# -- the entry point -------------------------------------------------------------------------


def test_render_formats_and_paths(wordpiece, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    enc = wordpiece([SENTENCE, "the actor"], return_tensors="pt", padding=True)
    R = _positions(enc)
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = text.render(wordpiece, enc, R)  # the documented call: printed in colour
    assert out in capsys.readouterr().out and "\x1b[48;2;" in out and "unbelievable" in out
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b" not in text.render(wordpiece, enc, R)
    capsys.readouterr()
    html_path = tmp_path / "w.html"
    out = text.render(wordpiece, enc, R, path=html_path)  # format from the suffix, not printed
    assert html_path.read_text(encoding="utf-8") == out and out.startswith("<!DOCTYPE html>")
    assert capsys.readouterr().out == ""
    img = text.render(wordpiece, enc, R, path=tmp_path / "w.png", width=400)
    assert isinstance(img, Image.Image) and Image.open(tmp_path / "w.png").size == img.size
    txt = tmp_path / "w.txt"
    out = text.render(wordpiece, enc, R, "ansi", txt, sample=1, color=False)
    assert txt.read_text(encoding="utf-8") == out and out.startswith("[CLS][+0] the[+1] actor[+5]")
    assert isinstance(text.render(wordpiece, enc, R, "png"), Image.Image)


# -- errors ----------------------------------------------------------------------------------


def test_errors(wordpiece) -> None:
    enc = wordpiece([SENTENCE, "the actor"], return_tensors="pt", padding=True)
    R = _positions(enc)
    with pytest.raises(relprop.InputError, match="does not match the encoding"):
        text.words(wordpiece, enc, R[:, :-1])
    with pytest.raises(relprop.InputError, match="summed over the hidden"):
        text.words(wordpiece, enc, R[..., None].expand(-1, -1, 8))
    bad = R.clone()
    bad[0, 2] = float("nan")
    with pytest.raises(relprop.InputError, match="NaN"):
        text.words(wordpiece, enc, bad)
    with pytest.raises(relprop.InputError, match="relevance"):
        text.words(wordpiece, enc, "not relevance")
    with pytest.raises(relprop.InputError, match="numeric"):
        text.words(wordpiece, enc, np.array([["a"] * R.shape[1]] * 2))
    with pytest.raises(relprop.InputError, match="encoding"):
        text.words(wordpiece, 42, R)
    with pytest.raises(relprop.InputError, match="input_ids"):
        text.words(wordpiece, {"attention_mask": enc["attention_mask"]}, R)
    with pytest.raises(relprop.InputError, match="integer token ids"):
        text.words(wordpiece, {"input_ids": R}, R)
    with pytest.raises(relprop.InputError, match="padding=True"):
        text.words(wordpiece, wordpiece([SENTENCE, "the actor"]), R)  # ragged lists of ids
    with pytest.raises(relprop.InputError, match="attention_mask"):
        text.words(wordpiece, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"][:, :3]}, R)
    with pytest.raises(relprop.InputError, match="tokenizer"):
        text.words(object(), enc, R)
    with pytest.raises(relprop.InputError, match="not in the tokenizer's vocabulary"):
        text.words(wordpiece, enc["input_ids"] + 10_000, R)
    with pytest.raises(relprop.InputError, match="sample"):
        text.words(wordpiece, enc, R, sample=2)
    with pytest.raises(relprop.InputError, match="scheme"):
        text.words(wordpiece, enc, R, scheme="bpe")  # type: ignore[arg-type]
    with pytest.raises(relprop.InputError, match="format"):
        text.render(wordpiece, enc, R, "svg")  # type: ignore[arg-type]
    with pytest.raises(relprop.InputError, match="do not apply"):
        text.render(wordpiece, enc, R, "html", width=100)
    with pytest.raises(relprop.InputError, match="limit"):
        text.to_html([_w("a", 1.0)], limit=0.0)
    with pytest.raises(relprop.InputError, match="words"):
        text.to_ansi(["a", "b"])
    with pytest.raises(relprop.InputError, match="width"):
        text.to_png(None, [_w("a", 1.0)], width=10)
    assert issubclass(relprop.InputError, ValueError)
