"""Token relevance as words: sub-word pieces merged, rendered as HTML, ANSI or PNG.

    enc = tok(texts, return_tensors="pt", padding=True)
    R = relprop.trace(model, relprop.rules.AttnLRP()).explain(dict(enc), target)  # (batch, tokens)
    relprop.text.render(tok, enc, R)                               # coloured words, printed
    relprop.text.render(tok, enc, R, path="words.html")            # or .png; format from the suffix
    ws = relprop.text.words(tok, enc, R)                           # per sample, a list of Word
    ex = relprop.text.explain_generation(model, tok, prompt, 8)    # an answer, token by token

**Words.**  The relevance of the pieces of one word is summed.  With a fast
tokenizer's :class:`~transformers.BatchEncoding` the words are the tokenizer's own
(``word_ids()``, ``sequence_ids()`` and offsets), refined by the piece markers where
the tokenizer does not split words itself (SentencePiece models with ``split=False``).
Without them (``dict(enc)``, a slow tokenizer, a tensor of ids) the markers alone
decide: WordPiece ``##`` continues a word, byte-level BPE ``Ġ`` and SentencePiece
``▁`` start one.  So punctuation is a word of its own where the tokenizer splits it
off (BERT's ``movie !``) and may stay attached to its word in the marker-only path
of byte-level and SentencePiece tokenizers (``movie!``).  Special tokens (``[CLS]``,
``[SEP]``, ``<s>``, ``</s>``, ``<|endoftext|>``, ...; not the unknown token, which
stands for text) are records of their own, never merged.  Padded positions
(``attention_mask == 0``; without a mask, positions holding the pad token) are
dropped.

**Colours.**  :func:`relprop.viz.colorize`: red positive, blue negative, white zero,
on a symmetric scale ``±max|R|`` per sample over its words (special tokens, whose
relevance can be large, saturate rather than set the scale unless
``include_special=True``); ``shared=True`` uses one scale for the batch, ``limit=``
a fixed one.

The names are implemented in :mod:`relprop.apps.text`; the module loads on first use
(``import relprop`` does not import it).
"""

from .apps.text import (
    GenerationExplanation,
    Word,
    explain_generation,
    render,
    to_ansi,
    to_html,
    to_png,
    words,
)

__all__ = [
    "explain_generation",
    "GenerationExplanation",
    "render",
    "to_ansi",
    "to_html",
    "to_png",
    "Word",
    "words",
]
