"""Write the shipped review set, ``relprop/data/reviews.jsonl``.

    .venv/bin/python examples/make_reviews.py

Short English reviews of movies, restaurants, products, hotels, books, games and
services, labelled positive (1) or negative (0), with the words that carry the
sentiment marked.  About a fifth are hand-written (below, ``HAND``); the rest come
from a dozen sentence templates with different syntax (plain statements,
negations, contrast with "but"/"although", questions, exclamations, comparisons,
long sentences with neutral padding) filled with domain-specific subjects,
aspects and sentiment words.  Everything is seeded, so a rerun writes the same
file.

Each line is a JSON object::

    {"id": 17, "text": "The pasta was not bad at all.", "label": 1,
     "words": ["not", "bad"], "polarity": [1, 1], "domain": "restaurant",
     "source": "template:negation", "split": "train"}

``words`` are the sentiment words as they appear in ``text`` (whole words, no
contractions); ``polarity[i]`` is the sentiment that ``words[i]`` expresses in the
sentence (a negated positive word counts as negative, like its "not").  In
contrast sentences both clauses are marked, each with its own polarity; the
label follows the clause that wins ("but" clause, main clause of "although").
The split is fixed: a seeded, label-balanced 200 sentences are ``heldout``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "relprop" / "data" / "reviews.jsonl"
HELDOUT = 200
SEED = 7

# -- vocabulary ------------------------------------------------------------------------------

POS_ADJ = [
    "great",
    "excellent",
    "wonderful",
    "amazing",
    "fantastic",
    "superb",
    "brilliant",
    "delightful",
    "lovely",
    "outstanding",
    "impressive",
    "terrific",
    "marvelous",
    "perfect",
    "enjoyable",
    "good",
]
NEG_ADJ = [
    "terrible",
    "awful",
    "horrible",
    "dreadful",
    "disappointing",
    "bad",
    "poor",
    "mediocre",
    "lousy",
    "dull",
    "pathetic",
    "atrocious",
    "miserable",
    "unpleasant",
    "disgraceful",
    "weak",
]
POS_VERB = ["loved", "enjoyed", "adored", "liked", "appreciated"]
NEG_VERB = ["hated", "disliked", "despised", "loathed", "regretted"]
INTENS = ["", "", "really ", "truly ", "absolutely ", "quite ", "very ", "honestly ", "just "]

# domain -> (subjects, aspects, extra positive adjectives, extra negative adjectives, contexts)
DOMAINS: dict[str, tuple[list[str], list[str], list[str], list[str], list[str]]] = {
    "movie": (
        ["this movie", "the film", "the sequel", "this documentary", "the show", "this thriller"],
        ["the plot", "the acting", "the soundtrack", "the ending", "the dialogue", "the cast", "the script"],
        ["gripping", "moving", "hilarious", "captivating"],
        ["boring", "tedious", "predictable", "pointless"],
        ["on a Friday night", "with my family", "at the cinema", "last weekend", "on the plane"],
    ),
    "restaurant": (
        ["this restaurant", "the diner", "this cafe", "the bistro", "this pizza place", "the bakery"],
        ["the food", "the service", "the pasta", "the waiter", "the dessert", "the coffee", "the soup"],
        ["delicious", "tasty", "fresh", "friendly"],
        ["bland", "rude", "greasy", "stale"],
        ["for lunch", "on our anniversary", "with coworkers", "after the concert", "on a rainy Sunday"],
    ),
    "product": (
        ["this phone", "the blender", "these headphones", "the laptop", "this vacuum", "the charger", "this kettle"],
        ["the battery", "the screen", "the sound", "the build quality", "the design", "the keyboard", "the motor"],
        ["reliable", "sturdy", "sleek", "durable"],
        ["flimsy", "useless", "faulty", "cheap"],
        ["after two weeks", "since Christmas", "for my daughter", "at work", "for the office"],
    ),
    "hotel": (
        ["this hotel", "the resort", "the hostel", "this inn", "the motel", "the guesthouse"],
        ["the room", "the staff", "the breakfast", "the bed", "the view", "the pool", "the lobby"],
        ["comfortable", "spotless", "welcoming", "cozy"],
        ["dirty", "noisy", "filthy", "cramped"],
        ["for three nights", "during our honeymoon", "on a business trip", "in July", "over the holidays"],
    ),
    "book": (
        ["this book", "the novel", "this memoir", "the sequel", "this cookbook"],
        ["the writing", "the characters", "the story", "the chapters", "the translation", "the recipes"],
        ["gripping", "beautiful", "clever", "inspiring"],
        ["boring", "confusing", "shallow", "clumsy"],
        ["on holiday", "in one sitting", "for my book club", "on the train", "over a month"],
    ),
    "game": (
        ["this game", "the expansion", "this puzzle game", "the racing game"],
        ["the controls", "the graphics", "the levels", "the music", "the multiplayer", "the story mode"],
        ["addictive", "polished", "smooth", "fun"],
        ["buggy", "clunky", "repetitive", "frustrating"],
        ["with friends", "on the weekend", "every evening", "on my console", "for hours"],
    ),
    "service": (
        ["this airline", "the bank", "the delivery company", "this gym", "the plumber", "the salon"],
        ["the support", "the staff", "the delivery", "the booking", "the trainer", "the haircut"],
        ["helpful", "friendly", "quick", "professional"],
        ["rude", "slow", "unhelpful", "careless"],
        ["last month", "twice this year", "on Monday", "after moving house", "in the spring"],
    ),
}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(phrase: str) -> str:
    """'the film' -> 'film' (for 'What a … film!')."""
    return phrase.split(" ", 1)[1]


# -- templates: each returns (text, label, words, polarity) ---------------------------------


def t_plain(r: random.Random, d: str, label: int):
    subj, asp, pa, na, _ = DOMAINS[d]
    adj = r.choice((POS_ADJ + pa) if label else (NEG_ADJ + na))
    who = r.choice(subj + asp)
    verb = "were" if who.startswith("these") else r.choice(["was", "is"])
    return f"{_cap(who)} {verb} {r.choice(INTENS)}{adj}.", label, [adj], [label]


def t_verb(r: random.Random, d: str, label: int):
    subj, asp, _, _, ctx = DOMAINS[d]
    verb = r.choice(POS_VERB if label else NEG_VERB)
    tail = r.choice(["", f" {r.choice(ctx)}", "", " from start to finish"])
    who = r.choice(["I", "We", "My wife", "My friends", "My kids", "We both"])
    return f"{who} {verb} {r.choice(subj + asp)}{tail}.", label, [verb], [label]


def t_negation(r: random.Random, d: str, label: int):
    """'X was not bad' (positive) / 'X was not good' (negative): both words marked."""
    subj, asp, pa, na, _ = DOMAINS[d]
    adj = r.choice((NEG_ADJ[:8] + na) if label else (POS_ADJ + pa))
    who = r.choice(asp + subj)
    neg = r.choice(["not", "never"])
    verb = "were" if who.startswith("these") else "was"
    tail = r.choice(["", " at all", "", " in the end"]) if label else r.choice(["", " at all", ""])
    return f"{_cap(who)} {verb} {neg} {adj}{tail}.", label, [neg, adj], [label, label]


def t_contrast(r: random.Random, d: str, label: int):
    """'A was <neg>, but B was <pos>.' -- the label follows the 'but' clause."""
    subj, asp, pa, na, _ = DOMAINS[d]
    a, b = r.sample(asp, 2)
    first = r.choice((NEG_ADJ + na) if label else (POS_ADJ + pa))
    second = r.choice((POS_ADJ + pa) if label else (NEG_ADJ + na))
    if r.random() < 0.5:
        text = f"{_cap(a)} was {first}, but {b} was {r.choice(INTENS)}{second}."
        return text, label, [first, second], [1 - label, label]
    text = f"Although {a} was {first}, {b} was {r.choice(INTENS)}{second}."
    return text, label, [first, second], [1 - label, label]


def t_exclaim(r: random.Random, d: str, label: int):
    subj, _, pa, na, _ = DOMAINS[d]
    adj = r.choice((POS_ADJ + pa) if label else (NEG_ADJ + na))
    noun = _noun(r.choice(subj))
    return f"What {_article(adj)} {adj} {noun}!", label, [adj], [label]


def t_long(r: random.Random, d: str, label: int):
    subj, asp, pa, na, ctx = DOMAINS[d]
    adj = r.choice((POS_ADJ + pa) if label else (NEG_ADJ + na))
    s, c = r.choice(subj), r.choice(ctx)
    forms = [
        f"We tried {s} {c} because a colleague mentioned it, and {r.choice(asp)} turned out to be {adj}.",
        f"I went to {s} {c} without expecting much, and to be fair it was {adj}.",
        f"After reading a few reviews I picked {s} {c}, and overall it felt {adj}.",
        f"My brother suggested {s}, so we gave it a go {c}; {r.choice(asp)} was {adj}.",
    ]
    return r.choice(forms), label, [adj], [label]


def t_recommend(r: random.Random, d: str, label: int):
    subj, *_ = DOMAINS[d]
    s = r.choice(subj)
    if label:
        forms = [
            (f"I would recommend {s} to anyone.", ["recommend"]),
            (f"I highly recommend {s}.", ["highly", "recommend"]),
            (f"I will definitely come back to {s}.", ["definitely", "come", "back"]),
            (f"Worth every penny, {s}.", ["worth"]),
        ]
    else:
        forms = [
            (f"I would never recommend {s} to anyone.", ["never", "recommend"]),
            (f"Avoid {s} if you can.", ["avoid"]),
            (f"I want my money back from {s}.", ["money", "back"]),
            (f"Do not waste your money on {s}.", ["waste"]),
        ]
    text, words = r.choice(forms)
    return text, label, words, [label] * len(words)


def t_superlative(r: random.Random, d: str, label: int):
    subj, *_ = DOMAINS[d]
    sup = "best" if label else "worst"
    noun = _noun(r.choice(subj))
    verb = {
        "movie": "seen",
        "restaurant": "visited",
        "product": "owned",
        "hotel": "stayed in",
        "book": "read",
        "game": "played",
        "service": "used",
    }[d]
    return f"Easily the {sup} {noun} I have ever {verb}.", label, [sup], [label]


def t_question(r: random.Random, d: str, label: int):
    subj, asp, pa, na, _ = DOMAINS[d]
    adj = r.choice((POS_ADJ + pa) if label else (NEG_ADJ + na))
    s = r.choice(subj)
    return f"Who knew {s} could be this {adj}?", label, [adj], [label]


def t_nothing(r: random.Random, d: str, label: int):
    """'Nothing about X was good' (negative) / 'Nothing about X was bad' (positive)."""
    subj, asp, pa, na, _ = DOMAINS[d]
    adj = r.choice((NEG_ADJ[:8] + na) if label else (POS_ADJ + pa))
    return f"Nothing about {r.choice(asp + subj)} was {adj}.", label, ["nothing", adj], [label, label]


def t_two_aspects(r: random.Random, d: str, label: int):
    subj, asp, pa, na, _ = DOMAINS[d]
    a, b = r.sample(asp, 2)
    x, y = r.sample((POS_ADJ + pa) if label else (NEG_ADJ + na), 2)
    return f"{_cap(a)} was {x} and {b} was {y}.", label, [x, y], [label, label]


def t_comparison(r: random.Random, d: str, label: int):
    subj, *_ = DOMAINS[d]
    s = r.choice(subj)
    comp = r.choice(["better", "nicer"]) if label else r.choice(["worse", "weaker"])
    other = r.choice(["the last one", "I expected", "the reviews said", "its competitors"])
    text = f"{_cap(s)} is {'much ' if r.random() < 0.5 else 'far '}{comp} than {other}."
    return text, label, [comp], [label]


TEMPLATES = {
    "plain": (t_plain, 80),
    "verb": (t_verb, 40),
    "negation": (t_negation, 70),
    "contrast": (t_contrast, 40),
    "exclaim": (t_exclaim, 30),
    "long": (t_long, 70),
    "recommend": (t_recommend, 30),
    "superlative": (t_superlative, 20),
    "question": (t_question, 20),
    "nothing": (t_nothing, 20),
    "two_aspects": (t_two_aspects, 40),
    "comparison": (t_comparison, 20),
}

# -- hand-written sentences: (text, label, words, polarity, domain) --------------------------

HAND: list[tuple[str, int, list[str], list[int], str]] = [
    ("I hate this movie and i never want to see it again!", 0, ["hate", "never"], [0, 0], "movie"),
    ("However, I loved the leading actor so much!", 1, ["loved"], [1], "movie"),
    ("The pizza arrived cold and soggy.", 0, ["cold", "soggy"], [0, 0], "restaurant"),
    (
        "Our waiter was attentive and the steak was cooked to perfection.",
        1,
        ["attentive", "perfection"],
        [1, 1],
        "restaurant",
    ),
    ("The screen cracked within a week.", 0, ["cracked"], [0], "product"),
    ("Battery life is phenomenal, easily two days on a charge.", 1, ["phenomenal"], [1], "product"),
    ("The room smelled of smoke and the sheets were stained.", 0, ["smelled", "stained"], [0, 0], "hotel"),
    (
        "Staff went out of their way to help us, a pleasure from check-in to check-out.",
        1,
        ["help", "pleasure"],
        [1, 1],
        "hotel",
    ),
    ("I fell asleep halfway through.", 0, ["asleep"], [0], "movie"),
    ("I laughed from the first scene to the last.", 1, ["laughed"], [1], "movie"),
    ("The instructions made no sense and two parts were missing.", 0, ["no", "sense", "missing"], [0, 0, 0], "product"),
    ("Setup took five minutes and it has worked flawlessly ever since.", 1, ["flawlessly"], [1], "product"),
    ("A total waste of two hours.", 0, ["waste"], [0], "movie"),
    ("Every bite was a joy.", 1, ["joy"], [1], "restaurant"),
    ("We waited forty minutes for a lukewarm burger.", 0, ["waited", "lukewarm"], [0, 0], "restaurant"),
    ("The chef clearly cares about every plate, and it shows.", 1, ["cares"], [1], "restaurant"),
    ("The story drags on and the ending is a mess.", 0, ["drags", "mess"], [0, 0], "book"),
    ("I could not put it down.", 1, ["could", "not", "put", "down"], [1, 1, 1, 1], "book"),
    ("The headphones broke after a month of gentle use.", 0, ["broke"], [0], "product"),
    ("These headphones sound incredible for the price.", 1, ["incredible"], [1], "product"),
    ("Customer support hung up on me twice.", 0, ["hung", "up"], [0, 0], "service"),
    ("The agent solved my problem in minutes and was genuinely kind.", 1, ["solved", "kind"], [1, 1], "service"),
    ("The game crashes every time I open the map.", 0, ["crashes"], [0], "game"),
    ("Hours of fun, and the soundtrack is gorgeous.", 1, ["fun", "gorgeous"], [1, 1], "game"),
    ("Overpriced, cramped and loud.", 0, ["overpriced", "cramped", "loud"], [0, 0, 0], "hotel"),
    ("Spacious rooms, a stunning view and a fabulous breakfast.", 1, ["stunning", "fabulous"], [1, 1], "hotel"),
    ("The plot holes were so big that nothing made sense.", 0, ["holes", "nothing", "sense"], [0, 0, 0], "movie"),
    ("A heartwarming film that the whole family will adore.", 1, ["heartwarming", "adore"], [1, 1], "movie"),
    ("The coffee tasted burnt and the croissant was stale.", 0, ["burnt", "stale"], [0, 0], "restaurant"),
    ("Best croissant in town, flaky and buttery.", 1, ["best"], [1], "restaurant"),
    ("It stopped charging after the first update.", 0, ["stopped"], [0], "product"),
    ("Sturdy, quiet and very easy to clean.", 1, ["sturdy", "quiet", "easy"], [1, 1, 1], "product"),
    ("The front desk ignored us for ten minutes.", 0, ["ignored"], [0], "hotel"),
    ("We felt at home from the moment we arrived.", 1, ["home"], [1], "hotel"),
    ("Predictable, slow and far too long.", 0, ["predictable", "slow", "long"], [0, 0, 0], "movie"),
    ("The performances are stunning and the script is sharp.", 1, ["stunning", "sharp"], [1, 1], "movie"),
    ("The characters are flat and the dialogue is painful.", 0, ["flat", "painful"], [0, 0], "book"),
    ("A beautifully written novel that stayed with me for weeks.", 1, ["beautifully"], [1], "book"),
    ("The delivery was late, and the box was crushed.", 0, ["late", "crushed"], [0, 0], "service"),
    ("The package arrived early and perfectly wrapped.", 1, ["early", "perfectly"], [1, 1], "service"),
    ("I regret buying this vacuum.", 0, ["regret"], [0], "product"),
    ("Honestly the happiest purchase I made this year.", 1, ["happiest"], [1], "product"),
    ("The levels feel unfinished and the controls are sluggish.", 0, ["unfinished", "sluggish"], [0, 0], "game"),
    ("Clever puzzles and a charming art style.", 1, ["clever", "charming"], [1, 1], "game"),
    ("The salon butchered my hair.", 0, ["butchered"], [0], "service"),
    ("My stylist listened carefully and the cut looks fantastic.", 1, ["fantastic"], [1], "service"),
    ("The soup was so salty that I could not finish it.", 0, ["salty", "not", "finish"], [0, 0, 0], "restaurant"),
    ("Generous portions, fair prices and a warm welcome.", 1, ["generous", "fair", "warm"], [1, 1, 1], "restaurant"),
    ("Mold in the bathroom and a broken air conditioner.", 0, ["mold", "broken"], [0, 0], "hotel"),
    ("The pool was clean and the staff were a delight.", 1, ["clean", "delight"], [1, 1], "hotel"),
    ("The jokes fell flat and the pacing was a disaster.", 0, ["flat", "disaster"], [0, 0], "movie"),
    ("A smart, funny and touching film.", 1, ["smart", "funny", "touching"], [1, 1, 1], "movie"),
    (
        "The laptop overheats and the fan is unbearably loud.",
        0,
        ["overheats", "unbearably", "loud"],
        [0, 0, 0],
        "product",
    ),
    ("Fast, light and the keyboard is a dream to type on.", 1, ["fast", "dream"], [1, 1], "product"),
    ("The trainer spent the whole session on his phone.", 0, ["phone"], [0], "service"),
    ("The gym is spotless and the classes are motivating.", 1, ["spotless", "motivating"], [1, 1], "service"),
    ("The recipes never work and the photos are misleading.", 0, ["never", "work", "misleading"], [0, 0, 0], "book"),
    ("Every recipe I tried turned out perfectly.", 1, ["perfectly"], [1], "book"),
    ("Pay to win, full of ads and constantly crashing.", 0, ["ads", "crashing"], [0, 0], "game"),
    ("The multiplayer is a blast with friends.", 1, ["blast"], [1], "game"),
    ("The blender leaks and smells like burning plastic.", 0, ["leaks", "burning"], [0, 0], "product"),
    ("This kettle boils fast and looks elegant on the counter.", 1, ["fast", "elegant"], [1, 1], "product"),
    ("The acting was fine, but the story was a complete mess.", 0, ["fine", "mess"], [1, 0], "movie"),
    ("The hotel is old, but the staff made our stay unforgettable.", 1, ["old", "unforgettable"], [0, 1], "hotel"),
    ("The food looked pretty, but it had no flavor at all.", 0, ["pretty", "no", "flavor"], [1, 0, 0], "restaurant"),
    ("It is expensive, but worth every cent.", 1, ["expensive", "worth"], [0, 1], "product"),
    ("Although the first chapters are slow, the ending is brilliant.", 1, ["slow", "brilliant"], [0, 1], "book"),
    ("Although the graphics are pretty, the game is boring.", 0, ["pretty", "boring"], [1, 0], "game"),
    ("The service was slow, yet the food made up for it.", 1, ["slow", "made", "up"], [0, 1, 1], "restaurant"),
    ("Nice design, shame it stopped working after three days.", 0, ["nice", "shame", "stopped"], [1, 0, 0], "product"),
    ("I did not expect much, and I was blown away.", 1, ["blown", "away"], [1, 1], "movie"),
    ("I wanted to like it, but I was bored stiff.", 0, ["like", "bored"], [1, 0], "movie"),
    ("Never again.", 0, ["never"], [0], "hotel"),
    ("Simply wonderful.", 1, ["wonderful"], [1], "restaurant"),
    ("Meh.", 0, ["meh"], [0], "movie"),
    ("Flawless.", 1, ["flawless"], [1], "product"),
    ("The worst customer service I have ever experienced, hands down.", 0, ["worst"], [0], "service"),
    ("Five minutes in and I was already hooked.", 1, ["hooked"], [1], "game"),
    ("The driver was rude and took the longest possible route.", 0, ["rude", "longest"], [0, 0], "service"),
    (
        "Our guide was knowledgeable, patient and hilarious.",
        1,
        ["knowledgeable", "patient", "hilarious"],
        [1, 1, 1],
        "service",
    ),
]


def _check(text: str, words: list[str]) -> None:
    for w in words:
        if not re.search(rf"\b{re.escape(w)}\b", text, flags=re.IGNORECASE):
            raise AssertionError(f"marked word {w!r} not in {text!r}")


def generate() -> list[dict]:
    r = random.Random(SEED)
    rows: list[dict] = []
    seen: set[str] = set()

    def add(text, label, words, polarity, domain, source):
        if text.lower() in seen:
            return False
        _check(text, words)
        assert len(words) == len(polarity)
        seen.add(text.lower())
        rows.append(
            dict(
                text=text,
                label=label,
                words=[w.lower() for w in words],
                polarity=polarity,
                domain=domain,
                source=source,
            )
        )
        return True

    for text, label, words, polarity, domain in HAND:
        add(text, label, words, polarity, domain, "hand")
    domains = list(DOMAINS)
    for name, (make, count) in TEMPLATES.items():
        for label in (0, 1):
            made, tries = 0, 0
            while made < count // 2 and tries < 50 * count:
                tries += 1
                d = domains[(made + tries) % len(domains)] if r.random() < 0.5 else r.choice(domains)
                text, lab, words, pol = make(r, d, label)
                made += add(text, lab, words, pol, d, f"template:{name}")
    # balance labels exactly (hand-written set may be off by a few)
    by = {0: [x for x in rows if x["label"] == 0], 1: [x for x in rows if x["label"] == 1]}
    n = min(len(by[0]), len(by[1]))
    keep = {id(x) for lab in (0, 1) for x in by[lab][:n]}
    rows = [x for x in rows if id(x) in keep]
    # fixed split: a seeded, label-balanced held-out set
    split = random.Random(SEED + 1)
    for lab in (0, 1):
        members = [x for x in rows if x["label"] == lab]
        held = set(map(id, split.sample(members, HELDOUT // 2)))
        for x in members:
            x["split"] = "heldout" if id(x) in held else "train"
    for i, x in enumerate(rows):
        x["id"] = i
    return [{k: x[k] for k in ("id", "text", "label", "words", "polarity", "domain", "source", "split")} for x in rows]


def main() -> None:
    rows = generate()
    OUT.write_text("".join(json.dumps(x) + "\n" for x in rows))
    n = len(rows)
    pos = sum(x["label"] for x in rows)
    held = sum(x["split"] == "heldout" for x in rows)
    hand = sum(x["source"] == "hand" for x in rows)
    print(f"wrote {OUT}: {n} sentences ({pos} positive, {n - pos} negative), {held} held out, {hand} hand-written")


if __name__ == "__main__":
    main()
