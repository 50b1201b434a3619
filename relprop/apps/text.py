"""The implementation of :mod:`relprop.text` (the public module; its docstring describes it)."""

from __future__ import annotations

import html
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError
from .viz import _as_numpy, _to_uint8, colorize

if TYPE_CHECKING:  # loaded on first use by __getattr__ (it imports this module)
    from .generation import GenerationExplanation, explain_generation

__all__ = [
    "GenerationExplanation",
    "Word",
    "explain_generation",
    "render",
    "to_ansi",
    "to_html",
    "to_png",
    "words",
]

Scheme = Literal["wordpiece", "bytelevel", "sentencepiece", "none"]
#: the piece marker of each scheme: "##" continues a word, "Ġ" and "▁" start one
MARKERS: dict[str, str] = {"wordpiece": "##", "bytelevel": "Ġ", "sentencepiece": "▁"}
#: words glued to the one before when nothing else tells whether a space was there
_CLOSING = set(".,!?;:%)]}")


@dataclass(frozen=True)
class Word:
    """One word (or one special token) of a sample and its summed relevance.

    Attributes:
        text: the word as it reads in the text.
        relevance: the summed relevance of its pieces.
        is_special: whether it is a special token (``[CLS]``, ``</s>``, ...).
    """

    text: str
    relevance: float
    is_special: bool
    #: positions of its pieces in the (padded) sequence, i.e. columns of R
    tokens: tuple[int, ...]
    #: the pieces as the tokenizer spells them (``un``, ``##believ``, ``##able``)
    pieces: tuple[str, ...] = ()
    #: whether whitespace precedes it in the text (so ``movie`` ``!`` renders as ``movie!``)
    space: bool = True


# -- inputs ----------------------------------------------------------------------------------


def _ids_of(encoding: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, T) token ids and the (B, T) attention mask (or None) of an encoding."""
    if isinstance(encoding, Mapping):
        if "input_ids" not in encoding:
            raise InputError(f"the encoding has no 'input_ids'; keys: {sorted(map(str, encoding))}")
        ids, mask = encoding["input_ids"], encoding.get("attention_mask")
    elif hasattr(encoding, "shape") or isinstance(encoding, (list, tuple)):
        ids, mask = encoding, None
    else:
        raise InputError(
            "encoding must be what the tokenizer returned (a BatchEncoding or dict with 'input_ids') "
            f"or a tensor of token ids; got {type(encoding).__name__}"
        )
    try:
        a = _as_numpy(ids, "input_ids")
    except InputError as e:
        raise InputError(f"{e}; for a batch of texts, tokenize with padding=True (and return_tensors='pt')") from None
    if not (np.issubdtype(a.dtype, np.integer) and a.ndim in (1, 2)):
        raise InputError(
            f"input_ids must be integer token ids shaped (tokens,) or (batch, tokens); got {a.dtype} {tuple(a.shape)}"
        )
    a = a.reshape(1, -1) if a.ndim == 1 else a
    if mask is None:
        return a.astype(np.int64), None
    m = _as_numpy(mask, "attention_mask")
    m = m.reshape(1, -1) if m.ndim == 1 else m
    if m.shape != a.shape:
        raise InputError(f"attention_mask shaped {tuple(m.shape)} does not match input_ids shaped {tuple(a.shape)}")
    return a.astype(np.int64), m != 0


def _relevance(R: Any, shape: tuple[int, int]) -> np.ndarray:
    """R as (B, T) float64 matching the token ids, or an InputError."""
    if hasattr(R, "relevance") and not hasattr(R, "shape"):  # a relprop Explanation
        R = R.relevance
    if isinstance(R, (Mapping, str, bytes)) or R is None:
        raise InputError(f"R must be token relevance, a tensor or array shaped (batch, tokens); got {type(R).__name__}")
    r = _as_numpy(R, "relevance").astype(np.float64)
    if r.ndim == 1 and shape[0] == 1:
        r = r[None]
    if tuple(r.shape) != shape:
        hint = " (summed over the hidden dimension?)" if r.ndim == 3 and r.shape[:2] == shape else ""
        raise InputError(
            f"relevance shaped {tuple(r.shape)} does not match the encoding's tokens {shape}; expected (batch, "
            f"tokens) as returned by explain for these input_ids{hint}"
        )
    if not np.isfinite(r).all():
        raise InputError(f"relevance shaped {tuple(r.shape)} contains NaN or Inf; expected finite values")
    return r


_SCHEMES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _scheme(tokenizer: Any) -> str:
    """The piece-marker convention of a tokenizer's vocabulary (the most frequent marker)."""
    try:
        return _SCHEMES[tokenizer]
    except (KeyError, TypeError):
        pass
    counts = dict.fromkeys(MARKERS, 0)
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary: markers unknown
        vocab = {}
    for piece in vocab:
        if isinstance(piece, str):
            if piece.startswith("##"):
                counts["wordpiece"] += 1
            elif piece.startswith("Ġ"):
                counts["bytelevel"] += 1
            elif piece.startswith("▁"):
                counts["sentencepiece"] += 1
    best = max(counts, key=counts.__getitem__)
    scheme = best if counts[best] > 0 else "none"
    try:
        _SCHEMES[tokenizer] = scheme
    except TypeError:
        pass
    return scheme


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids of the special tokens, not counting the unknown token (which stands for text)."""
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids |= {int(i) for i, t in decoder.items() if getattr(t, "special", False)}
    unk = getattr(tokenizer, "unk_token_id", None)
    ids.discard(-1 if unk is None else int(unk))
    return ids


def _starts(piece: str, scheme: str) -> bool:
    """Whether a piece starts a new word by its marker."""
    if scheme == "wordpiece":
        return not piece.startswith("##")
    if scheme in MARKERS:
        return piece.startswith(MARKERS[scheme])
    return True


def _text(tokenizer: Any, ids: list[int], pieces: list[str], scheme: str) -> str:
    """A word's text: the tokenizer's decoding of its pieces, else the pieces without markers."""
    try:
        text = str(tokenizer.decode(ids, clean_up_tokenization_spaces=False)).strip()
    except Exception:  # noqa: BLE001 - fall back to the pieces themselves
        text = ""
    if text:
        return text
    if scheme == "wordpiece":
        text = "".join(p[2:] if p.startswith("##") else p for p in pieces)
    elif scheme in MARKERS:
        text = "".join(pieces).replace(MARKERS[scheme], " ").strip()
    return text or "".join(pieces)


def _sample_words(
    tokenizer: Any, ids: np.ndarray, keep: np.ndarray, r: np.ndarray, enc: Any, scheme: str, special: set[int]
) -> list[Word]:
    """The words of one sample (see :func:`words`)."""
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    for i, p in zip(ids, pieces):
        if p is None:
            raise InputError(f"token id {int(i)} is not in the tokenizer's vocabulary; is it the model's tokenizer?")
    wids = seqs = offs = None
    if enc is not None:
        wids, seqs, offs = enc.word_ids, enc.sequence_ids, enc.offsets
    groups: list[list[int]] = []
    keys: list[Any] = []
    for t in range(len(ids)):
        if not keep[t]:
            continue
        if int(ids[t]) in special:
            groups.append([t])
            keys.append("special")
            continue
        key = (seqs[t], wids[t]) if wids is not None else None
        start = _starts(pieces[t], scheme)
        if wids is None:
            new = start or not groups or keys[-1] == "special"
        else:
            new = not groups or keys[-1] != key or key[1] is None or start
        if new:
            groups.append([t])
            keys.append(key)
        else:
            groups[-1].append(t)
    out: list[Word] = []
    for g, key in zip(groups, keys):
        is_special = key == "special"
        ps = [pieces[t] for t in g]
        text = _text(tokenizer, [int(ids[t]) for t in g], ps, scheme)
        if not out:
            space = False
        elif is_special or out[-1].is_special:
            space = True
        elif scheme in ("bytelevel", "sentencepiece"):
            space = ps[0].startswith(MARKERS[scheme])
        elif offs is not None:
            prev = out[-1].tokens[-1]
            space = seqs[g[0]] != seqs[prev] or offs[g[0]][0] > offs[prev][1]
        else:
            space = not (text and set(text) <= _CLOSING)
        out.append(Word(text, float(r[g].sum()), is_special, tuple(g), tuple(ps), space))
    return out


@overload
def words(
    tokenizer: Any, encoding: Any, R: Any, *, sample: None = None, scheme: Scheme | None = None
) -> list[list[Word]]: ...


@overload
def words(tokenizer: Any, encoding: Any, R: Any, *, sample: int, scheme: Scheme | None = None) -> list[Word]: ...


def words(
    tokenizer: Any,
    encoding: Any,
    R: Any,
    *,
    sample: int | None = None,
    scheme: Scheme | None = None,
) -> list[list[Word]] | list[Word]:
    """Merge token relevance into words: per sample, a list of [`Word`][relprop.text.Word] in text order.

    Args:
        tokenizer: the model's Hugging Face tokenizer.
        encoding: what ``tokenizer(texts, return_tensors="pt", padding=True)`` returned
            (its ``word_ids()`` are used when it comes from a fast tokenizer), ``dict(enc)``,
            or a tensor of token ids.
        R: relevance shaped like ``input_ids``, (batch, tokens) (an
            [`Explanation`][relprop.Explanation] is read for its ``relevance``).
        sample: only that sample's list.
        scheme: the piece markers, ``"wordpiece"``, ``"bytelevel"``, ``"sentencepiece"`` or
            ``"none"`` (default: read from the vocabulary).

    Returns:
        One list of words per sample, or the one list of ``sample``.

    Raises:
        InputError: the encoding has no token ids, the relevance is not shaped like them or
            not finite, a token id is not in the tokenizer's vocabulary, ``scheme`` is unknown
            or ``sample`` is not in the batch.
    """
    if not callable(getattr(tokenizer, "convert_ids_to_tokens", None)):
        raise InputError(
            "tokenizer must be a Hugging Face tokenizer (with convert_ids_to_tokens); got " + type(tokenizer).__name__
        )
    if scheme is not None and scheme not in (*MARKERS, "none"):
        raise InputError(f"scheme must be one of {sorted((*MARKERS, 'none'))} or None; got {scheme!r}")
    ids, mask = _ids_of(encoding)
    r = _relevance(R, ids.shape)
    special = _special_ids(tokenizer)
    if mask is None:
        pad = getattr(tokenizer, "pad_token_id", None)
        mask = ids != pad if pad is not None else np.ones(ids.shape, bool)
    encs = getattr(encoding, "encodings", None) if isinstance(encoding, Mapping) else None
    if not (isinstance(encs, list) and len(encs) == len(ids) and all(len(e.ids) == ids.shape[1] for e in encs)):
        encs = None
    scheme = scheme or _scheme(tokenizer)
    rows = range(len(ids))
    if sample is not None:
        if not isinstance(sample, (int, np.integer)) or not -len(ids) <= sample < len(ids):
            raise InputError(f"sample {sample!r} is not in a batch of {len(ids)}")
        rows = [int(sample) % len(ids)]
    out = [_sample_words(tokenizer, ids[b], mask[b], r[b], encs[b] if encs else None, scheme, special) for b in rows]
    return out[0] if sample is not None else out


# -- colours ---------------------------------------------------------------------------------


def _batch(ws: Any) -> list[list[Word]]:
    """One sample's words or a batch of them, as a batch."""
    if isinstance(ws, Sequence) and not isinstance(ws, (str, bytes)):
        if all(isinstance(w, Word) for w in ws):
            return [list(ws)]
        if all(isinstance(s, Sequence) and all(isinstance(w, Word) for w in s) for s in ws):
            return [list(s) for s in ws]
    raise InputError(
        "expected the words of relprop.text.words (a list of Word, or one per sample); got " + type(ws).__name__
    )


def _limits(batch: list[list[Word]], shared: bool, limit: float | None, include_special: bool) -> list[float]:
    """The symmetric colour limit of each sample (0: nothing to colour)."""
    if limit is not None:
        if not (isinstance(limit, (int, float)) and np.isfinite(limit) and limit > 0):
            raise InputError(f"limit is the |relevance| that saturates the colours; expected > 0, got {limit!r}")
        return [float(limit)] * len(batch)
    lims = []
    for ws in batch:
        lim = max((abs(w.relevance) for w in ws if include_special or not w.is_special), default=0.0)
        lims.append(lim if lim > 0 else max((abs(w.relevance) for w in ws), default=0.0))
    return [max(lims, default=0.0)] * len(batch) if shared else lims


def _colours(ws: list[Word], lim: float) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """(background, text) RGB of each word: the diverging colour, and black or white over it."""
    v = np.array([w.relevance for w in ws], dtype=np.float64) / (lim if lim > 0 else 1.0)
    rgb = _to_uint8(colorize(v)).reshape(-1, 3)
    out = []
    for c in rgb:
        bg = (int(c[0]), int(c[1]), int(c[2]))
        lum = (0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]) / 255.0
        out.append((bg, (255, 255, 255) if lum < 0.5 else (0, 0, 0)))
    return out


def _value(w: Word) -> str:
    return f"{w.relevance:+.4g}"


# -- renderers -------------------------------------------------------------------------------


def to_html(
    ws: Sequence[Word] | Sequence[Sequence[Word]],
    *,
    shared: bool = False,
    limit: float | None = None,
    include_special: bool = False,
    legend: bool = True,
    document: bool = True,
) -> str:
    """Render words as HTML: each on its colour, its value (and pieces) in the ``title`` on hover.

    One paragraph per sample.

    Args:
        ws: the words of [`words`][relprop.text.words] (one list, or one per sample).
        shared: one colour scale for the whole batch instead of one per sample.
        limit: a fixed colour limit (the |relevance| that saturates the colours).
        include_special: let special tokens set the colour scale too (by default they
            saturate rather than set it).
        legend: state each sample's scale, ``±limit``.
        document: a whole self-contained document, or (False) a ``<div>`` fragment with
            inline styles.

    Returns:
        The HTML.

    Raises:
        InputError: ``ws`` are not words, or ``limit`` is not positive.
    """
    batch = _batch(ws)
    lims = _limits(batch, shared, limit, include_special)
    paras = []
    for sample, lim in zip(batch, lims):
        parts = []
        for w, (bg, fg) in zip(sample, _colours(sample, lim)):
            title = _value(w) + (" = " + " + ".join(w.pieces) if len(w.pieces) > 1 else "")
            style = f"background-color:#{bg[0]:02x}{bg[1]:02x}{bg[2]:02x};color:#{fg[0]:02x}{fg[1]:02x}{fg[2]:02x};"
            style += "padding:0 2px;border-radius:3px;"
            if w.is_special:
                style += "font-family:monospace;font-size:85%;outline:1px dashed #999;"
            cls = "relprop-special" if w.is_special else "relprop-word"
            span = (
                f'<span class="{cls}" style="{style}" title="{html.escape(title, quote=True)}">'
                f"{html.escape(w.text)}</span>"
            )
            parts.append((" " if w.space and parts else "") + span)
        if legend:
            parts.append(f' <span style="color:#888;font-size:80%">(±{lim:.3g})</span>')
        paras.append('<p style="margin:0.5em 0">' + "".join(parts) + "</p>")
    body = '<div class="relprop-text" style="font-family:sans-serif;line-height:1.9">\n' + "\n".join(paras) + "\n</div>"
    if not document:
        return body
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>relprop: word relevance</title></head>\n'
        f'<body style="background:#fff;margin:1em">\n{body}\n</body>\n</html>\n'
    )


def _printable(s: str) -> str:
    """Text safe for a terminal: control characters (escape sequences) replaced."""
    return "".join(c if c.isprintable() else "\ufffd" for c in s)


def to_ansi(
    ws: Sequence[Word] | Sequence[Sequence[Word]],
    *,
    color: bool = True,
    values: bool | None = None,
    shared: bool = False,
    limit: float | None = None,
    include_special: bool = False,
    legend: bool = True,
) -> str:
    """Render words as terminal text, one line per sample, on 24-bit ANSI background colours.

    Args:
        ws: the words of [`words`][relprop.text.words] (one list, or one per sample).
        color: colour the words; False gives plain text.
        values: follow each word by its relevance in brackets (default: only in plain text,
            where colour cannot show it).
        shared: one colour scale for the whole batch instead of one per sample.
        limit: a fixed colour limit (the |relevance| that saturates the colours).
        include_special: let special tokens set the colour scale too (by default they
            saturate rather than set it).
        legend: state each sample's scale, ``±limit``.

    Returns:
        The text.

    Raises:
        InputError: ``ws`` are not words, or ``limit`` is not positive.
    """
    batch = _batch(ws)
    lims = _limits(batch, shared, limit, include_special)
    values = (not color) if values is None else values
    lines = []
    for sample, lim in zip(batch, lims):
        parts = []
        for w, (bg, fg) in zip(sample, _colours(sample, lim)):
            text = _printable(w.text) + (f"[{_value(w)}]" if values else "")
            if color:
                text = f"\x1b[48;2;{bg[0]};{bg[1]};{bg[2]}m\x1b[38;2;{fg[0]};{fg[1]};{fg[2]}m{text}\x1b[0m"
            parts.append((" " if w.space and parts else "") + text)
        if legend:
            scale = f"(±{lim:.3g})"
            parts.append(" " + (f"\x1b[2m{scale}\x1b[0m" if color else scale))
        lines.append("".join(parts))
    return "\n".join(lines)


def _font(size: int | None) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if size is None:
        return ImageFont.load_default()
    if size < 1:
        raise InputError(f"font_size is in pixels; expected >= 1, got {size}")
    return ImageFont.load_default(size=size)


def _safe(draw: ImageDraw.ImageDraw, text: str, font: Any) -> str:
    """Text the font can draw (a bitmap font takes Latin-1 only)."""
    try:
        draw.textlength(text, font=font)
        return text
    except UnicodeEncodeError:
        return text.encode("latin-1", "replace").decode("latin-1")


def to_png(
    path: str | PathLike[str] | None,
    ws: Sequence[Word] | Sequence[Sequence[Word]],
    *,
    width: int = 800,
    font_size: int | None = None,
    shared: bool = False,
    limit: float | None = None,
    include_special: bool = False,
    legend: bool = True,
) -> Image.Image:
    """Render words as a picture and write it as a PNG.

    Words are laid out left to right on their colours in Pillow's default font and
    wrapped at ``width`` pixels (the image is narrower when the text is shorter);
    samples below one another.  Special tokens are outlined in grey.

    Args:
        path: where to write the PNG; None writes nothing.
        ws: the words of [`words`][relprop.text.words] (one list, or one per sample).
        width: the most pixels a line takes (at least 64).
        font_size: the font's size in pixels (default: Pillow's default font).
        shared: one colour scale for the whole batch instead of one per sample.
        limit: a fixed colour limit (the |relevance| that saturates the colours).
        include_special: let special tokens set the colour scale too (by default they
            saturate rather than set it).
        legend: state each sample's scale, ``±limit``.

    Returns:
        The Pillow image.

    Raises:
        InputError: ``ws`` are not words, or ``width``, ``font_size`` or ``limit`` are out of
            range.
    """
    batch = _batch(ws)
    lims = _limits(batch, shared, limit, include_special)
    if not isinstance(width, int) or width < 64:
        raise InputError(f"width is in pixels; expected an integer >= 64, got {width!r}")
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), "Ágjy|", font=font)
    text_h, margin, px, py, line_gap, sample_gap = bottom - top, 8, 3, 2, 4, 10
    line_h = text_h + 2 * py
    space_w = max(3, int(round(probe.textlength(" ", font=font))))
    # layout: (x, y, w, text, background, foreground, special) per box
    boxes: list[tuple[int, int, int, str, tuple[int, int, int] | None, tuple[int, int, int], bool]] = []
    y, right_most = margin, 0
    for sample, lim in zip(batch, lims):
        items = [
            (_safe(probe, w.text, font), bg, fg, w.is_special, w.space)
            for w, (bg, fg) in zip(sample, _colours(sample, lim))
        ]
        if legend:
            items.append((f"(±{lim:.3g})", None, (136, 136, 136), False, True))
        x = margin
        for text, bg, fg, special, space in items:
            w = int(np.ceil(probe.textlength(text, font=font))) + 2 * px
            if x > margin and space:
                x += space_w
            if x > margin and x + w > width - margin:
                x, y = margin, y + line_h + line_gap
            boxes.append((x, y, w, text, bg, fg, special))
            x += w
            right_most = max(right_most, x)
        y += line_h + sample_gap
    size = (max(right_most + margin, 2 * margin), y - sample_gap + margin)
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for x, y, w, text, bg, fg, special in boxes:
        if bg is not None:
            draw.rectangle([x, y, x + w - 1, y + line_h - 1], fill=bg, outline=(150, 150, 150) if special else None)
        draw.text((x + px - left, y + py - top), text, fill=fg, font=font)
    if path is not None:
        img.save(path, format="PNG")
    return img


def render(
    tokenizer: Any,
    encoding: Any,
    R: Any,
    format: Literal["ansi", "html", "png"] | None = None,
    path: str | PathLike[str] | None = None,
    *,
    sample: int | None = None,
    scheme: Scheme | None = None,
    shared: bool = False,
    limit: float | None = None,
    include_special: bool = False,
    legend: bool = True,
    **options: Any,
) -> str | Image.Image:
    """Show token relevance as coloured words: [`words`][relprop.text.words] and a rendering in one call.

    Args:
        tokenizer: as for [`words`][relprop.text.words].
        encoding: as for [`words`][relprop.text.words].
        R: as for [`words`][relprop.text.words].
        format: ``"ansi"`` (terminal text; printed when there is no ``path``), ``"html"``
            or ``"png"``; default from ``path``'s suffix (``.html``/``.htm``, ``.png``),
            else ``"ansi"``.
        path: where to write it.
        sample: only that sample.
        scheme: as for [`words`][relprop.text.words].
        shared: one colour scale for the whole batch instead of one per sample.
        limit: a fixed colour limit (the |relevance| that saturates the colours).
        include_special: let special tokens set the colour scale too (by default they
            saturate rather than set it).
        legend: state each sample's scale, ``±limit``.
        **options: passed on to [`to_ansi`][relprop.text.to_ansi] (``color``, ``values``;
            ``color`` defaults to off when ``NO_COLOR`` is set),
            [`to_html`][relprop.text.to_html] (``document``) or
            [`to_png`][relprop.text.to_png] (``width``, ``font_size``).

    Returns:
        The text (ANSI or HTML), or the Pillow image for ``"png"``.

    Raises:
        InputError: an unknown format or suffix, or what [`words`][relprop.text.words]
            and the rendering raise.
    """
    if format is None:
        suffix = Path(path).suffix.lower() if path is not None else ""
        format = {".html": "html", ".htm": "html", ".png": "png"}.get(suffix, "ansi")
    if format not in ("ansi", "html", "png"):
        raise InputError(f"format must be 'ansi', 'html' or 'png'; got {format!r}")
    ws = words(tokenizer, encoding, R, sample=sample, scheme=scheme)
    common = dict(shared=shared, limit=limit, include_special=include_special, legend=legend)
    allowed = {"ansi": {"color", "values"}, "html": {"document"}, "png": {"width", "font_size"}}[format]
    if set(options) - allowed:
        raise InputError(
            f"options {sorted(set(options) - allowed)} do not apply to format {format!r}; it takes {sorted(allowed)}"
        )
    if format == "png":
        return to_png(path, ws, **common, **options)
    if format == "html":
        out = to_html(ws, **common, **options)
    else:
        if options.get("color") is None:
            options["color"] = not os.environ.get("NO_COLOR")
        out = to_ansi(ws, **common, **options)
        if path is None:
            print(out)
    if path is not None:
        Path(path).write_text(out, encoding="utf-8")
    return out


def __getattr__(name: str) -> Any:
    """``explain_generation`` and ``GenerationExplanation`` from :mod:`relprop.apps.generation`
    (which builds on this module), loaded on first use."""
    if name in ("explain_generation", "GenerationExplanation"):
        from . import generation

        return getattr(generation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
