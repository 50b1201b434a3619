"""A language model's generated answer explained token by token.

    model, tok = relprop.models.load_language_model()
    ex = relprop.text.explain_generation(model, tok, "The capital of France is", max_new_tokens=4)
    ex.generated                    # [' Paris', '.', '\\n', '\\n']
    ex.relevance                    # (4 generated, all tokens): row g explains generated token g
    ex.to_html("answer.html"); ex.save_png("answer.png"); ex.to_json("answer.json")

Generated token ``g`` stands at position ``p = prompt_length + g``; it is explained by
its logit at position ``p - 1`` (the prediction that produced it), over every earlier
token, prompt and generated.  All of them come from **one** forward and backward walk of
one trace: the sequence (less its last token) is repeated once per generated token along
the batch and each sample gets its own target, the logit of its token at its position
(:func:`relprop.targets.next_token` with per-sample ids and a per-sample *prefix mask*, the
same selection as right padding: each sample's last marked position).  Causal attention
makes row ``g`` the explanation of the prefix ``ids[:p]`` alone; positions ``>= p`` hold
exactly 0.
"""

from __future__ import annotations

import html
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..chunking import check_batch_size
from ..errors import InputError, TargetError
from ..graph import Graph, trace
from ..rules.sets import AttnLRP, RuleSet
from ..targets import next_token
from ..tracing import eval_mode
from .text import Word, _colours, _special_ids, to_html

__all__ = ["GenerationExplanation", "explain_generation"]


@dataclass
class GenerationExplanation:
    """The relevance of every earlier token for each generated token (see :func:`explain_generation`)."""

    #: every token's text (``tokenizer.decode`` of its id), prompt then generated
    tokens: list[str]
    #: the generated (or given) continuation's tokens, ``tokens[prompt_length:]``
    generated: list[str]
    #: how many of ``tokens`` are the prompt's
    prompt_length: int
    #: the token ids of the whole sequence, shaped (tokens,)
    ids: Tensor
    #: (generated, tokens): row g is generated token g's relevance; exactly 0 at and after its position
    relevance: Tensor
    #: the continuation decoded as one text
    answer: str = ""
    #: the rule set that explained it
    rules: str = ""
    #: positions of special tokens (BOS, EOS, ...): drawn outlined and kept out of the colour scale
    special: list[int] = field(default_factory=list)

    def position(self, g: int) -> int:
        """The position of generated token ``g`` in :attr:`tokens`."""
        return self.prompt_length + g

    def top(self, k: int = 3) -> list[list[tuple[int, str, float]]]:
        """Per generated token, its ``k`` most relevant earlier tokens as (position, token, relevance)."""
        out = []
        for g in range(len(self.generated)):
            row = self.relevance[g, : self.position(g)].double()
            order = torch.argsort(row, descending=True)[: max(0, int(k))]
            out.append([(int(i), self.tokens[int(i)], float(row[i])) for i in order])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: tokens, ids, positions, the relevance rows."""
        return {
            "prompt_length": self.prompt_length,
            "tokens": list(self.tokens),
            "generated": list(self.generated),
            "ids": [int(i) for i in self.ids],
            "answer": self.answer,
            "rules": self.rules,
            "special": list(self.special),
            "positions": [self.position(g) for g in range(len(self.generated))],
            "relevance": [[float(v) for v in row] for row in self.relevance.double()],
        }

    def to_json(self, path: str | PathLike[str] | None = None) -> str:
        """:meth:`to_dict` as JSON text, also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    # -- pictures --------------------------------------------------------------------------

    def _words(self, g: int) -> list[Word]:
        """Generated token ``g``'s context (every earlier token) as :class:`~relprop.text.Word` records."""
        special = set(self.special)
        row = self.relevance[g].double()
        out = []
        for i in range(self.position(g)):
            t = self.tokens[i]
            out.append(Word(_shown(t), float(row[i]), i in special, (i,), (t,), space=t[:1].isspace() or i in special))
        return out

    def to_html(self, path: str | PathLike[str] | None = None) -> str:
        """A self-contained page: per generated token its context coloured (red for, blue against,
        scale ±max|R| of the row without special tokens), then the generated × tokens table.

        Returns the HTML, also written to ``path`` if given.
        """
        rows = []
        for g, tok in enumerate(self.generated):
            context = to_html(self._words(g), document=False)
            rows.append(
                f'<div style="margin:0.8em 0"><div><b>{g + 1}. {html.escape(_shown(tok, True))}</b> '
                f'<span style="color:#888">at position {self.position(g)}</span></div>{context}</div>'
            )
        page = (
            '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
            "<title>relprop: generated answer explained</title></head>\n"
            '<body style="background:#fff;margin:1em;font-family:sans-serif">\n'
            f"<h2>{html.escape(_shown(''.join(self.tokens[: self.prompt_length]), True))}"
            f"<b>{html.escape(_shown(self.answer, True))}</b></h2>\n"
            f"<p>Each generated token explained by its logit at the position before it, over every earlier "
            f"token (red for, blue against; rules {html.escape(self.rules)}).</p>\n"
            + "\n".join(rows)
            + "\n<h3>All tokens (columns) for each generated token (rows); grey: at or after its position</h3>\n"
            + self._table()
            + "\n</body>\n</html>\n"
        )
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def _table(self) -> str:
        """The heatmap as an HTML table, each row on its own scale (as above); later positions grey."""
        head = "".join(
            f'<th style="writing-mode:vertical-rl;font-weight:normal;padding:2px">{html.escape(_shown(t, True))}</th>'
            for t in self.tokens
        )
        body = []
        for g, tok in enumerate(self.generated):
            words = self._words(g)
            cells = []
            for w, (bg, fg) in zip(words, _colours(words, _limit(words))):
                cells.append(
                    f'<td title="{w.relevance:+.4g}" style="background:#{bg[0]:02x}{bg[1]:02x}{bg[2]:02x};'
                    f'color:#{fg[0]:02x}{fg[1]:02x}{fg[2]:02x};padding:2px 4px;font-size:75%">{w.relevance:+.2g}</td>'
                )
            cells += ['<td style="background:#eee"></td>'] * (len(self.tokens) - len(words))
            body.append(f'<tr><th style="text-align:right;padding:2px 6px">{html.escape(_shown(tok, True))}</th>')
            body[-1] += "".join(cells) + "</tr>"
        return (
            '<div style="overflow-x:auto"><table style="border-collapse:collapse;font-family:monospace">'
            f"<tr><th></th>{head}</tr>" + "".join(body) + "</table></div>"
        )

    def save_png(self, path: str | PathLike[str], *, dpi: int = 120) -> None:
        """The heatmap as a PNG: generated tokens (rows) × all tokens (columns), red for, blue
        against, one scale ±max|R| centred at 0 (special tokens left out of it); later positions grey."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import TwoSlopeNorm
        from matplotlib.figure import Figure

        R = self.relevance.double().numpy()
        n_gen, n_tok = R.shape
        later = np.arange(n_tok)[None, :] >= np.array([self.position(g) for g in range(n_gen)])[:, None]
        keep = ~later.copy()
        keep[:, self.special] = False
        lim = float(np.abs(R[keep]).max()) if keep.any() else 0.0
        lim = lim if lim > 0 else float(np.abs(R).max()) or 1.0
        fig = Figure(figsize=(min(2.0 + 0.28 * n_tok, 60.0), min(1.6 + 0.3 * n_gen, 60.0)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        cmap = _cmap()
        image = ax.imshow(np.ma.masked_array(R, later), cmap=cmap, norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto")
        ax.set_xticks(range(n_tok), [_label(t) for t in self.tokens], rotation=90, fontsize=8)
        ax.set_yticks(range(n_gen), [_label(t) for t in self.generated], fontsize=8)
        for tick in ax.get_xticklabels()[self.prompt_length :]:
            tick.set_fontweight("bold")
        ax.axvline(self.prompt_length - 0.5, color="#444", linewidth=0.8)
        ax.set_xlabel("token (prompt | generated)")
        ax.set_ylabel("generated token")
        fig.colorbar(image, ax=ax, shrink=0.8, label="relevance")
        fig.savefig(path, format="png", dpi=dpi)


def _cmap() -> Any:
    """relprop's diverging map (blue, white, red; :func:`relprop.viz.colorize`), grey where masked."""
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("relprop", [(0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0)])
    return cmap.with_extremes(bad="#e6e6e6")


def _limit(words: list[Word]) -> float:
    """A row's colour scale: ±max|R| over its non-special tokens (all of them if that is 0)."""
    lim = max((abs(w.relevance) for w in words if not w.is_special), default=0.0)
    return lim or max((abs(w.relevance) for w in words), default=0.0)


def _shown(token: str, keep_space: bool = False) -> str:
    """A token as text on a page: line breaks and tabs visible, leading space kept or dropped."""
    text = token.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    text = text if keep_space else text.strip()
    return text if text.strip() else repr(token)


def _label(token: str) -> str:
    """A token as a matplotlib tick label: surrounding space dropped, no mathtext."""
    return _shown(token).replace("$", r"\$")


# -- explaining ------------------------------------------------------------------------------


def explain_generation(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Tensor | Sequence[int],
    max_new_tokens: int = 16,
    rules: RuleSet | None = None,
    continuation: str | Tensor | Sequence[int] | None = None,
    *,
    graph: Graph | None = None,
    batch_size: int | None = None,
    stop_at_eos: bool = True,
) -> GenerationExplanation:
    """Generate greedily after ``prompt`` and explain every generated token over all earlier tokens.

    One forward and one backward walk of one trace explain all generated tokens together.
    The model is run in eval mode and handed back unchanged.

    Args:
        model: a causal language model whose output has logits shaped (batch, tokens,
            vocabulary) (a Hugging Face ``...ForCausalLM``).
        tokenizer: its tokenizer; may be None when prompt and continuation are ids (tokens
            are then shown as their ids).
        prompt: text (tokenized by ``tokenizer`` with its special tokens), or token ids.
        max_new_tokens: how many tokens to generate greedily (argmax, with the model's
            key/value cache where its forward takes one); fewer if the end-of-sequence
            token comes first and ``stop_at_eos``: it is generated and explained, then
            generation stops.
        rules: the rule set (default [`AttnLRP`][relprop.rules.AttnLRP]).
        continuation: explain this answer (text, tokenized without special tokens, or ids)
            instead of generating one; ``max_new_tokens`` is then not used.
        graph: a [`trace`][relprop.trace] of ``model`` to reuse instead of ``rules`` (its
            trace serves every prompt length).
        batch_size: explain at most this many generated tokens per walk (bounds the
            memory; the same numbers).
        stop_at_eos: stop after the end-of-sequence token.

    Returns:
        The [`GenerationExplanation`][relprop.text.GenerationExplanation]: the tokens and,
        for every generated token, the relevance of every earlier token.

    Raises:
        InputError: ``model`` is not a module, both ``rules`` and ``graph`` are given or
            ``graph`` traces another model, an empty or malformed prompt or continuation
            (text without a tokenizer, negative ids), or a bad ``max_new_tokens`` or
            ``batch_size``.
        TargetError: the model's output has no logits shaped (batch, tokens, vocabulary).
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module (a causal language model); got {type(model).__name__}")
    if graph is not None:
        if rules is not None:
            raise InputError("give rules or graph, not both: a graph has its rule set already")
        if not isinstance(graph, Graph) or graph.model is not model:
            raise InputError("graph must be relprop.trace(model, ...) of this same model")
    else:
        graph = trace(model, AttnLRP() if rules is None else rules)
    if batch_size is not None:
        check_batch_size(batch_size)
    device = _device(model)
    prompt_ids = _token_ids(tokenizer, prompt, "prompt", special=True).to(device)
    vocab = _vocabulary(model)
    _check_vocabulary(prompt_ids, vocab, "prompt")
    if continuation is None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(
                f"max_new_tokens must be an int >= 1 (the number of tokens to generate); got {max_new_tokens!r}. "
                "To explain a given answer pass continuation= instead."
            )
        eos = _eos_ids(model, tokenizer) if stop_at_eos else set()
        new_ids = _greedy(model, prompt_ids, max_new_tokens, eos)
    else:
        new_ids = _token_ids(tokenizer, continuation, "continuation", special=False).to(device)
        _check_vocabulary(new_ids, vocab, "continuation")
    ids = torch.cat([prompt_ids, new_ids])
    strings = _strings(tokenizer, ids)
    special = _special_ids(tokenizer) if tokenizer is not None else set()
    P = len(prompt_ids)
    return GenerationExplanation(
        tokens=strings,
        generated=strings[P:],
        prompt_length=P,
        ids=ids.detach().to("cpu"),
        relevance=_explain_rows(graph, ids, P, batch_size),
        answer=_decode(tokenizer, ids[P:]),
        rules=repr(graph.rules),
        special=[i for i, t in enumerate(ids.tolist()) if t in special],
    )


def _explain_rows(graph: Graph, ids: Tensor, P: int, batch_size: int | None) -> Tensor:
    """(generated, tokens) relevance of ``ids[P:]``, each token for its logit at the position before it.

    One explain of a batch: sample g is the sequence less its last token, and its target the logit
    of ``ids[P + g]`` at position ``P + g - 1``, chosen by a prefix mask (``next_token`` takes
    each sample's last marked position, as for right padding).  Positions from ``P + g`` on are
    set to exactly 0 (causal attention leaves them none).
    """
    T, G = len(ids), len(ids) - P
    positions = torch.arange(P - 1, T - 1, device=ids.device)
    prefix = (torch.arange(T - 1, device=ids.device)[None, :] <= positions[:, None]).long()
    batch = ids[None, :-1].expand(G, T - 1).contiguous()
    R = graph.explain(
        _model_inputs(graph.model, batch), next_token(ids[P:], attention_mask=prefix), batch_size=batch_size
    )
    relevance = torch.zeros(G, T, dtype=R.dtype)
    relevance[:, : T - 1] = R.detach().to("cpu") * prefix.to("cpu", R.dtype)
    return relevance


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _token_ids(tokenizer: Any, value: Any, what: str, *, special: bool) -> Tensor:
    """``value`` (text or ids) as a 1-D long tensor of token ids, or an InputError."""
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"the {what} is empty; expected some text")
        if tokenizer is None or not callable(tokenizer):
            raise InputError(f"the {what} is text, so a tokenizer is needed (or pass token ids)")
        encoded = tokenizer(value, add_special_tokens=special)
        value = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    try:
        ids = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"the {what} must be text or token ids; got {type(value).__name__}") from err
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.numel() == 0:
        raise InputError(f"the {what} has no tokens; expected at least one")
    if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InputError(
            f"the {what} must be one text or one sequence of integer token ids; got a {ids.dtype} tensor shaped "
            f"{tuple(ids.shape)}"
        )
    if (ids < 0).any():
        raise InputError(f"the {what} holds negative token ids: {ids[ids < 0][:5].tolist()}")
    return ids.to(torch.long)


def _vocabulary(model: nn.Module) -> int | None:
    """The size of the model's input embedding, if it says."""
    try:
        return int(model.get_input_embeddings().num_embeddings)  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - a model without Hugging Face's accessor: the walk checks
        return None


def _check_vocabulary(ids: Tensor, vocab: int | None, what: str) -> None:
    if vocab is not None and (ids >= vocab).any():
        raise InputError(
            f"the {what} holds token id {int(ids.max())}, outside the model's vocabulary of {vocab}; is the "
            "tokenizer the model's?"
        )


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """The end-of-sequence ids: the generation config's, else the model config's, else the tokenizer's."""
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            return {int(e) for e in (eos if isinstance(eos, (list, tuple, set)) else [eos])}
    return set()


def _parameters(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _model_inputs(model: nn.Module, ids: Tensor) -> Any:
    """Token ids as the model takes them: ``{"input_ids": ids}`` where its forward names them so."""
    return {"input_ids": ids} if "input_ids" in _parameters(model) else ids


def _logits(out: Any) -> Tensor:
    """The (batch, tokens, vocabulary) logits of a model output (its ``.logits``, its ``"logits"``
    entry, or the output tensor itself), or a TargetError."""
    logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
    if isinstance(out, Mapping):
        logits = out.get("logits")
    if not isinstance(logits, Tensor):
        raise TargetError(
            f"explain_generation explains a causal language model's logits, but the model returned "
            f"{type(out).__name__} without .logits; expected a Hugging Face causal LM output (a dict "
            "with 'logits', or the logits tensor)"
        )
    if logits.dim() != 3:
        raise TargetError(f"the model's logits are shaped {tuple(logits.shape)}; expected (batch, tokens, vocabulary)")
    return logits


def _greedy(model: nn.Module, prompt: Tensor, steps: int, eos: set[int]) -> Tensor:
    """``steps`` greedy tokens after ``prompt`` (1-D ids), with the key/value cache where the model has one."""
    cached = {"past_key_values", "use_cache", "input_ids"} <= _parameters(model)
    seq, past, new = prompt[None], None, []
    with torch.no_grad(), eval_mode(model):
        for _ in range(steps):
            if cached:
                step = seq if past is None else seq[:, -1:]
                out = model(input_ids=step, past_key_values=past, use_cache=True)
                past = getattr(out, "past_key_values", None)
            else:
                inputs = _model_inputs(model, seq)
                out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
            token = _logits(out)[0, -1].argmax()
            new.append(token)
            seq = torch.cat([seq, token.reshape(1, 1)], dim=1)
            if int(token) in eos:
                break
    return torch.stack(new)


def _strings(tokenizer: Any, ids: Tensor) -> list[str]:
    """Each token's text: the tokenizer's decoding of it alone, else its piece, else its id."""
    out = []
    for i in ids.tolist():
        text = None
        if tokenizer is not None:
            try:
                text = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            except Exception:  # noqa: BLE001 - a stand-in tokenizer: fall back to its pieces
                try:
                    text = tokenizer.convert_ids_to_tokens([i])[0]
                except Exception:  # noqa: BLE001
                    text = None
        out.append(str(i) if not text else str(text))
    return out


def _decode(tokenizer: Any, ids: Tensor) -> str:
    if tokenizer is None:
        return " ".join(str(i) for i in ids.tolist())
    try:
        return str(tokenizer.decode(ids.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False))
    except Exception:  # noqa: BLE001
        return "".join(_strings(tokenizer, ids))
