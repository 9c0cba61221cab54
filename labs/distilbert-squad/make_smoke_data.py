"""Write the smoke profile's bundled SQuAD-format data: our own passages about invented towns.

Each passage strings together facts (founder, year, river, product, festival, population) in a
shuffled order, long enough to span two or three 96-token windows; each question asks for one fact,
so answers fall at the start, middle and end of contexts. Same columns as SQuAD v1.1 on the Hub
(id, title, context, question, answers{text, answer_start}). Run from the repo root:

    python labs/distilbert-squad/make_smoke_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "smoke"
TOWNS = [
    "Alderford",
    "Brightwater",
    "Caldmoor",
    "Dunmere",
    "Eastvale",
    "Fernhollow",
    "Glenbrook",
    "Harrowgate",
    "Ironwell",
    "Juniper Bay",
    "Kestrel Point",
    "Larkspur",
    "Millbrook",
    "Northwick",
    "Oakhurst",
    "Pinecrest",
]
NAMES = [
    "Maria Keller",
    "Tomas Reyes",
    "Ada Lindqvist",
    "Omar Haddad",
    "Lena Petrova",
    "Kwame Mensah",
    "Sofia Rossi",
    "Jonas Berg",
]
RIVERS = ["Silver River", "Amber Creek", "Willow River", "Stone Brook", "Cedar River"]
PRODUCTS = ["wool blankets", "glass lanterns", "apple cider", "copper kettles", "wooden clocks", "blue cheese"]
FESTIVALS = ["the Lantern Festival", "the Harvest Fair", "the River Race", "the Winter Market"]
FILLER = [
    "Visitors often arrive by the old coach road.",
    "The weather is mild for most of the year.",
    "Many houses are built from grey stone.",
    "A small museum tells the history of the region.",
    "The market square fills up every Saturday morning.",
]


def passage(rng: random.Random, town: str) -> tuple[str, list[tuple[str, str]]]:
    """A context and its (question, answer) pairs; every answer occurs once in the context."""
    facts = {
        "founder": (rng.choice(NAMES), f"{town} was founded by {{}}.", f"Who founded {town}?"),
        "year": (str(rng.randint(1500, 1950)), "The town was established in {}.", f"When was {town} established?"),
        "river": (rng.choice(RIVERS), f"{town} lies on the banks of the {{}}.", f"Which river does {town} lie on?"),
        "product": (rng.choice(PRODUCTS), "It is famous for its {}.", f"What is {town} famous for?"),
        "festival": (
            rng.choice(FESTIVALS),
            "Every autumn the town celebrates {}.",
            f"What does {town} celebrate every autumn?",
        ),
        "population": (
            f"{rng.randint(2, 90)} thousand",
            "About {} people live there today.",
            f"How many people live in {town}?",
        ),
    }
    sentences = [template.format(answer) for answer, template, _ in facts.values()] + rng.sample(FILLER, 3)
    rng.shuffle(sentences)
    context = " ".join(sentences)
    return context, [(question, answer) for answer, _, question in facts.values()]


def rows(rng: random.Random, towns: list[str]) -> list[dict]:
    out = []
    for town in towns:
        context, qas = passage(rng, town)
        for k, (question, answer) in enumerate(qas):
            start = context.index(answer)
            out.append(
                {
                    "id": f"{town.lower().replace(' ', '-')}-{k}",
                    "title": town,
                    "context": context,
                    "question": question,
                    "answers": {"text": [answer], "answer_start": [start]},
                }
            )
    return out


def main() -> None:
    rng = random.Random(7)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, towns in (("train", TOWNS[:12]), ("validation", TOWNS[12:])):
        data = rows(rng, towns)
        with (OUT / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in data)
        print(f"{split}: {len(data)} questions")


if __name__ == "__main__":
    main()
