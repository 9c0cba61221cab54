"""Write the lm-foundations lab's bundled corpus: ``data/smoke/train.txt`` and ``data/smoke/test.txt``.

A village chronicle: one sentence per line, every sentence assembled here from fragments written for
this lab by its authors, who dedicate the fragments and the generated files to the public domain
(CC0 1.0; no third-party text). Deterministic: the same files on every run of this script.

The grammar is built so that context beyond two words matters, which is the point of chapter 2:
what a worker does at the end of a sentence (``grinds the barley``) depends on who the worker is
(``the miller``) five or more words earlier, past a trigram's window, while the words in between
(``went down to the river at dawn and``) say nothing about it. A trigram model cannot see that far;
a Transformer with the whole sentence as context can. Rare visitors' names (each used once or twice)
give the vocabulary's unknown-word token (``<UNK>``) something to stand for.

    python labs/lm-foundations/make_smoke_data.py     # rewrites the two files (fingerprint in expected/smoke.yaml)
"""

from __future__ import annotations

import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "smoke"
TRAIN_SENTENCES, TEST_SENTENCES = 2400, 240

#: Each worker with what only that worker does (verb, objects): the long-range dependency.
WORKERS = {
    "miller": ("grinds", ["the corn", "the barley", "the wheat"]),
    "baker": ("bakes", ["the bread", "the loaves", "a honey cake"]),
    "smith": ("forges", ["the nails", "a horseshoe", "a new blade"]),
    "weaver": ("weaves", ["the linen", "a woollen cloth", "a blanket"]),
    "fisher": ("mends", ["the nets", "the lines", "an old boat"]),
    "shepherd": ("counts", ["the sheep", "the lambs", "the goats"]),
    "potter": ("shapes", ["a clay jug", "the bowls", "a tall vase"]),
    "carpenter": ("planes", ["the boards", "a door", "an oak table"]),
}
PLACES = ["the river", "the market", "the mill pond", "the old bridge", "the hill", "the church", "the well", "the inn"]
TIMES = ["at dawn", "at noon", "in the evening", "before the rain", "after supper", "on sunday", "in the spring"]
MOTIONS = ["went down to", "walked up to", "hurried to", "came back from", "sat by"]
WEATHER = ["the wind is cold", "the snow falls", "the rain will not stop", "the road is flooded", "the sky is dark"]
FEELINGS = ["glad", "tired", "quiet", "proud", "hungry"]
#: Visitors' names, made from syllables: 288 names over about 400 uses, so many occur once in training
#: (below the unknown-word cutoff: <UNK>) and the held-out text meets names training never saw.
NAMES = [
    a + b
    for a in (
        "al",
        "bran",
        "cor",
        "dun",
        "el",
        "fen",
        "gil",
        "hal",
        "is",
        "jor",
        "kes",
        "lor",
        "mab",
        "nel",
        "os",
        "pel",
        "quen",
        "row",
    )
    for b in (
        "a",
        "o",
        "wyn",
        "ric",
        "ette",
        "mund",
        "ard",
        "is",
        "an",
        "ella",
        "ton",
        "ley",
        "wick",
        "ith",
        "elm",
        "ory",
    )
]


def sentence(rng: random.Random) -> str:
    worker = rng.choice(list(WORKERS))
    verb, objects = WORKERS[worker]
    obj, place, time = rng.choice(objects), rng.choice(PLACES), rng.choice(TIMES)
    kind = rng.randrange(6)
    if kind == 0:
        return f"the {worker} {rng.choice(MOTIONS)} {place} {time} and {verb} {obj} ."
    if kind == 1:
        return f"when {rng.choice(WEATHER)} , the {worker} stays at home and {verb} {obj} ."
    if kind == 2:
        return f"every day the {worker} {verb} {obj} for the people of the village ."
    if kind == 3:
        return f"the {worker} was {rng.choice(FEELINGS)} {time} , so the {worker} {verb} {obj} ."
    if kind == 4:
        name = rng.choice(NAMES)
        return f"a traveller named {name} met the {worker} at {place} and watched as the {worker} {verb} {obj} ."
    return f"at {place} {time} the {worker} {verb} {obj} and then {rng.choice(MOTIONS)} {rng.choice(PLACES)} ."


def main() -> None:
    rng = random.Random(20260207)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", TRAIN_SENTENCES), ("test", TEST_SENTENCES)):
        lines = [sentence(rng) for _ in range(count)]
        (OUT / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{OUT / name}.txt: {count} sentences, {sum(len(s.split()) for s in lines)} words")


if __name__ == "__main__":
    main()
