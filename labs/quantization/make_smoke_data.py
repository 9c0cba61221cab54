"""Write the smoke profile's bundled texts (deterministic; rerun to regenerate).

    python labs/quantization/make_smoke_data.py

- ``data/smoke/wiki_train.txt``: stand-in for wikitext-2-raw-v1 ``train`` (the calibration set of the
  course's GPTQ step, and the text the tiny OPT is briefly trained on), in wikitext's layout
  (`` = Title = `` headings, one paragraph per line).
- ``data/smoke/wiki_test.txt``: held-out articles, the stand-in for the wikitext-2 ``test`` slice that
  perplexity is measured on.
- ``data/smoke/custom_calibration.txt``: the "own dataset" of the course's custom-calibration step,
  another domain (kitchen notes), one sample per line.

The articles are generated from templates about invented towns and rivers, so that a model of
~0.5 M parameters learns them in seconds and perplexity moves measurably when weights are quantized.
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data" / "smoke"
TOWNS = "Aldmoor Brenford Caskell Dunmere Elsworth Farrowby Glenholt Harrowgate Ivybridge Kestrel".split()
RIVERS = "Avon Brook Calder Derwent Esk Frome Greta Hodder".split()
TRADES = "wool salt timber copper grain cloth glass paper".split()
CENTURIES = "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split()
SENTENCES = [
    "{town} is a market town on the River {river} .",
    "The town grew in the {century} century on the {trade} trade .",
    "By the {century} century {town} had a bridge over the {river} and a weekly market .",
    "The population of {town} was {pop} at the last census .",
    "A railway station opened in {year} , linking {town} with {other} .",
    "The parish church of St {saint} dates from the {century} century .",
    "{town} lies {miles} miles north of {other} , where the {river} meets the sea .",
    "Its {trade} mills closed in {year} , and the town turned to tourism .",
    "The {river} floods the lower streets of {town} most winters .",
    "{town} is twinned with {other} , a town of similar size .",
]
SAINTS = "Mary John Peter Andrew Michael Cuthbert Giles Oswald".split()
DISHES = "bread soup stew porridge pie dumplings pancakes broth".split()
KITCHEN = [
    "Knead the {dish} dough for {n} minutes , then rest it under a cloth .",
    "Season the {dish} with salt and pepper before serving .",
    "Simmer the {dish} for {n} minutes on a low heat , stirring often .",
    "Bake the {dish} at {t} degrees until golden , about {n} minutes .",
    "Serve the {dish} warm with butter and a little honey .",
]


def article(rng: random.Random, town: str) -> str:
    fill = {
        "town": town,
        "other": rng.choice([t for t in TOWNS if t != town]),
        "river": rng.choice(RIVERS),
        "trade": rng.choice(TRADES),
        "century": rng.choice(CENTURIES),
        "pop": f"{rng.randint(2, 90)},{rng.randint(100, 999)}",
        "year": str(rng.randint(1830, 1960)),
        "miles": str(rng.randint(3, 40)),
        "saint": rng.choice(SAINTS),
    }
    paragraphs = []
    for _ in range(rng.randint(2, 4)):
        paragraphs.append(" " + " ".join(rng.choice(SENTENCES).format(**fill) for _ in range(rng.randint(3, 6))))
    return "\n".join([f" = {town} = ", *paragraphs])


def kitchen_note(rng: random.Random) -> str:
    return " ".join(
        rng.choice(KITCHEN).format(dish=rng.choice(DISHES), n=rng.randint(5, 60), t=rng.choice([180, 200, 220]))
        for _ in range(rng.randint(2, 5))
    )


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    train = [article(rng, rng.choice(TOWNS)) for _ in range(160)]
    test = [article(rng, rng.choice(TOWNS)) for _ in range(16)]
    (HERE / "wiki_train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (HERE / "wiki_test.txt").write_text("\n".join(test) + "\n", encoding="utf-8")
    (HERE / "custom_calibration.txt").write_text(
        "\n".join(kitchen_note(rng) for _ in range(64)) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
