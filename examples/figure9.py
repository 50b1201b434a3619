"""The paper's Figure 9 on a real pretrained encoder: a BERT sentiment classifier explained.

    .venv/bin/python examples/figure9.py [--rules attnlrp|abslrp|...] [--html figure9.html] [--png PATH]

Vukadin et al. (2024), Figure 9, explain a BERT sentiment classifier on
"I hate this movie and i never want to see it again! However, I loved the
leading actor so much!".  Here the model is all-MiniLM-L6-v2 with relprop's
sentiment head (``relprop.apps.sentiment.load_sentiment_model``; needs
``pip install "relprop[text]"``), unmodified, with the rule set relprop recommends for
transformers (``--rules attnlrp``, the default: README, "Which rule set for
transformers") or the paper's own (``--rules abslrp``).  Printed as ANSI-coloured words
(red: for the explained class, blue: against it), and written as HTML (and PNG with
``--png``):

* each of the two sentences on its own, explaining its predicted class;
* the whole text, explaining ``negative`` and then ``positive`` (the two rows show
  which words speak for which class).
"""

from __future__ import annotations

import argparse

import torch

import relprop
from relprop import text
from relprop.apps.cli import RULES, TEXT_RULES, _rules
from relprop.apps.sentiment import CLASS_NAMES, load_sentiment_model

SENTENCES = [
    "I hate this movie and i never want to see it again!",
    "However, I loved the leading actor so much!",
]


def main() -> None:
    parser = argparse.ArgumentParser(description="the paper's Figure 9 sentences, explained")
    parser.add_argument("--rules", choices=RULES, default=TEXT_RULES, help="rule set (default: %(default)s)")
    parser.add_argument("--html", default="figure9.html", help="where to write the HTML (default: %(default)s)")
    parser.add_argument("--png", default=None, help="also write the words as a PNG")
    args = parser.parse_args()

    model, tok = load_sentiment_model()
    graph = relprop.trace(model, _rules()[args.rules]())
    whole = " ".join(SENTENCES)
    rows = [*SENTENCES, whole, whole]
    enc = tok(rows, return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    predicted = probs.argmax(1)
    targets = torch.cat([predicted[:2], torch.tensor([0, 1])])
    R = graph.explain(dict(enc), targets)

    for i, t in enumerate(targets.tolist()):
        p = int(predicted[i])
        print(f"predicted {CLASS_NAMES[p]} ({float(probs[i, p]):.2f}), explaining {CLASS_NAMES[t]}:")
        text.render(tok, enc, R, "ansi", sample=i)
    text.render(tok, enc, R, "html", path=args.html)
    print(f"wrote {args.html}")
    if args.png:
        text.render(tok, enc, R, "png", path=args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
