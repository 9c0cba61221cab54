"""Write the smoke profile's preference pairs: ``data/smoke/train.jsonl`` (160) and ``test.jsonl`` (32).

A visitor desk in Corrin Vale, a mountain village we made up: a visitor asks about one of 24 places
(8 kinds of question), and two answers are compared. The chosen answer helps: it answers the
question that was asked, about that place, politely. The rejected one does not, in one of three
ways: it dismisses the visitor ("No idea, ask someone else.", half of them), stays vague ("It depends
on the day.", a third) or answers about something else (another place and question, the rest).
Eight training pairs (5 %) carry the other label on purpose: labelers disagree (InstructGPT's
training labelers agreed with each other on 72.6 % of comparisons, Ouyang et al. 2022), so an AI
judge's agreement with these human labels is below 1 for a reason. The held-out pairs have clean
labels.

Rows are in TRL's explicit-prompt preference format (``prompt``, ``chosen``, ``rejected``) with the
Anthropic HH-RLHF turn markers: the prompt is ``"\\n\\nHuman: <question>\\n\\nAssistant:"`` and each
completion starts with a space. The same seed writes the same files (``python make_smoke_data.py``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "smoke"
SEED = 11

PLACES = [
    "museum", "bakery", "library", "ferry", "railway station", "cable car", "swimming pool", "post office",
    "pharmacy", "market", "cinema", "lighthouse", "campsite", "youth hostel", "bike rental", "tourist office",
    "clinic", "town hall", "art gallery", "chapel", "botanical garden", "climbing hall", "ice rink", "cheese dairy",
]  # fmt: skip
STREETS = ["Birch Lane", "Quarry Road", "Mill Street", "Station Square", "Ridge Walk", "Harbour Row", "Old Bridge Road"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = ["seven", "eight", "half past eight", "nine", "ten", "eleven", "noon"]
PRICES = ["three francs", "four francs", "six francs", "eight francs", "nine francs", "twelve francs"]
SIDES = ["north", "south", "east", "west", "garden", "street"]
AREAS = ["café", "shop", "upper floor", "reading room", "changing rooms", "exhibition hall"]
NAMES = ["hello", "desk", "info", "visits", "team", "office"]

#: (question, helpful answer) templates; {p} is the place, {q} another place, the rest drawn per row.
KINDS = {
    "hours": ("When does the {p} open?", "The {p} opens at {time} from {d1} to {d2}."),
    "where": ("Where is the {p}?", "The {p} is on {street}, next to the {q}."),
    "price": ("What does a visit to the {p} cost?", "A visit to the {p} costs {price}; children under {age} go free."),
    "closed": ("Which day is the {p} closed?", "The {p} is closed on {day}s for cleaning."),
    "access": (
        "Can I reach the {p} with a wheelchair?",
        "Yes, the {p} has a ramp at the {side} entrance and a lift inside.",
    ),
    "dogs": ("Are dogs allowed in the {p}?", "Dogs on a lead are welcome in the {p}, but not in the {area}."),
    "booking": (
        "Do I need to book the {p} in advance?",
        "Booking the {p} is only needed for groups of more than {n} people.",
    ),
    "contact": ("How can I contact the {p}?", "You can call the {p} on {phone} or write to {name}@corrinvale.example."),
}
DISMISSIVE = [
    "No idea, ask someone else.",
    "Not my problem, look it up yourself.",
    "Why would I know that?",
    "Figure it out, it is not hard.",
    "I don't know and I don't care.",
    "Ask at the desk next door.",
]
VAGUE = [
    "It depends on the day.",
    "Maybe, it changes a lot.",
    "Sometimes yes, sometimes no.",
    "That varies, really.",
    "Hard to say, it is different every season.",
]
#: Training pairs whose human label is the other way round (labeler disagreement), by index.
FLIPPED = 8


def fill(template: str, place: str, rng: random.Random) -> str:
    other = rng.choice([p for p in PLACES if p != place])
    d1, d2 = sorted(rng.sample(range(7), 2))
    values = dict(
        p=place,
        q=other,
        time=rng.choice(TIMES),
        d1=DAYS[d1],
        d2=DAYS[d2],
        street=rng.choice(STREETS),
        price=rng.choice(PRICES),
        age=rng.choice([6, 8, 10, 12]),
        day=rng.choice(DAYS),
        side=rng.choice(SIDES),
        area=rng.choice(AREAS),
        n=rng.choice([8, 10, 12, 15, 20]),
        phone=f"0{rng.randint(21, 79)} {rng.randint(100, 999)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
        name=rng.choice(NAMES),
    )
    return template.format(**values)


def rejected_answer(kind: str, place: str, rng: random.Random) -> tuple[str, str]:
    """``(how it fails, text)``: dismissive, off-topic (another place or question) or vague."""
    how = rng.choices(["dismissive", "off_topic", "vague"], weights=[50, 15, 35])[0]
    if how == "dismissive":
        return how, rng.choice(DISMISSIVE)
    if how == "vague":
        return how, rng.choice(VAGUE)
    other_kind = rng.choice([k for k in KINDS if k != kind])
    other_place = rng.choice([p for p in PLACES if p != place])
    return how, fill(KINDS[other_kind][1], other_place, rng)


def rows(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """``(train, test)``: 160 and 32 pairs, every (place, kind) once, split at random."""
    rng = random.Random(seed)
    combos = [(place, kind) for place in PLACES for kind in KINDS]
    rng.shuffle(combos)
    made = []
    for place, kind in combos:
        question, answer = KINDS[kind]
        how, bad = rejected_answer(kind, place, rng)
        made.append(
            {
                "prompt": f"\n\nHuman: {fill(question, place, rng)}\n\nAssistant:",
                "chosen": " " + fill(answer, place, rng),
                "rejected": " " + bad,
                "kind": kind,
                "rejected_how": how,
            }
        )
    train, test = made[:160], made[160:]
    for row in rng.sample(train, FLIPPED):  # labeler disagreement: the worse answer was picked
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        row["rejected_how"] = "label_flipped:" + row["rejected_how"]
    return train, test


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, split in zip(("train", "test"), rows()):
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in split:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{OUT / name}.jsonl: {len(split)} pairs")


if __name__ == "__main__":
    main()
