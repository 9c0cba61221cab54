"""Write the lab's second preference set: ``data/foreign/train.csv`` (96) and ``test.csv`` (24).

Made differently from the bundled pairs (``make_smoke_data.py``), so that a run on it checks that
the verdicts hold off the bundled path (``lab.yaml`` ``foreign_data``):

* another place and voice: the front desk of Hollin Ridge Observatory, a made-up observatory and
  planetarium, with its own things (shows, telescope nights, a meteorite room) and question kinds;
* another format: CSV, and TRL's **implicit-prompt** preference format (columns ``chosen`` and
  ``rejected`` only, each the whole HH-style conversation; the prompt is their shared beginning);
* multi-turn: a third of the conversations have an earlier exchange before the question;
* another mix: rejected answers are off-topic 35 %, dismissive 35 % (in other words than the
  bundled set's), vague 30 %; no label flipped on purpose.

The same seed writes the same files (``python make_foreign_data.py``).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "foreign"
SEED = 5

THINGS = [
    "planetarium show", "telescope night", "rooftop terrace", "meteorite room", "solar viewing", "star party",
    "school visit", "evening lecture", "guided tour", "gift shop", "night bus", "astronomy course",
    "moon walk", "dome cinema", "children's workshop", "camera club", "sunset talk", "comet exhibition",
    "radio telescope tour", "family evening",
]  # fmt: skip
TIMES = ["six", "seven", "half past seven", "eight", "nine", "ten"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PRICES = ["five euros", "seven euros", "ten euros", "twelve euros", "fifteen euros"]
KINDS = {
    "start": ("What time does the {t} start?", "The {t} starts at {time} in the evening, every {day}."),
    "ticket": ("How much is a ticket for the {t}?", "A ticket for the {t} is {price}; students pay half."),
    "children": (
        "Can children join the {t}?",
        "Children from {age} years can join the {t} with an adult.",
    ),
    "cloudy": (
        "What happens to the {t} if it is cloudy?",
        "If it is cloudy the {t} moves indoors to the dome, at the same time.",
    ),
    "bring": ("What should I bring to the {t}?", "For the {t} bring warm clothes and a red torch, no white light."),
    "meet": ("Where do we meet for the {t}?", "We meet for the {t} at the east gate, ten minutes before."),
}
OPENERS = [
    ("Hello, I am planning a visit next week.", "Welcome! Happy to help you plan it."),
    ("Hi, is this the observatory desk?", "Yes, this is the front desk of Hollin Ridge Observatory."),
    ("Good evening, I have a question.", "Good evening, go ahead."),
]
DISMISSIVE = [
    "Not a clue, sorry.",
    "Look it up on the website.",
    "That is not my job.",
    "No clue. Try the front desk tomorrow.",
]
VAGUE = ["It varies a bit.", "Depends on the weather, I guess.", "Hard to say in advance.", "Maybe, maybe not."]


def fill(template: str, thing: str, rng: random.Random) -> str:
    return template.format(
        t=thing,
        time=rng.choice(TIMES),
        day=rng.choice(DAYS),
        price=rng.choice(PRICES),
        age=rng.choice([6, 8, 10, 12]),
    )


def conversation(question: str, rng: random.Random) -> str:
    """An HH-style conversation up to the assistant's turn, with an earlier exchange a third of the time."""
    if rng.random() < 1 / 3:
        hello, reply = rng.choice(OPENERS)
        return f"\n\nHuman: {hello}\n\nAssistant: {reply}\n\nHuman: {question}\n\nAssistant:"
    return f"\n\nHuman: {question}\n\nAssistant:"


def rows(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """``(train, test)``: 96 and 24 conversations pairs, every (thing, kind) once, split at random."""
    rng = random.Random(seed)
    combos = [(thing, kind) for thing in THINGS for kind in KINDS]
    rng.shuffle(combos)
    made = []
    for thing, kind in combos:
        question, answer = KINDS[kind]
        prompt = conversation(fill(question, thing, rng), rng)
        how = rng.choices(["off_topic", "dismissive", "vague"], weights=[35, 35, 30])[0]
        if how == "dismissive":
            bad = rng.choice(DISMISSIVE)
        elif how == "vague":
            bad = rng.choice(VAGUE)
        else:
            other = rng.choice([k for k in KINDS if k != kind])
            bad = fill(KINDS[other][1], rng.choice([t for t in THINGS if t != thing]), rng)
        made.append({"chosen": f"{prompt} {fill(answer, thing, rng)}", "rejected": f"{prompt} {bad}"})
    return made[:96], made[96:]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, split in zip(("train", "test"), rows()):
        with (OUT / f"{name}.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["chosen", "rejected"])
            writer.writeheader()
            writer.writerows(split)
        print(f"{OUT / name}.csv: {len(split)} pairs")


if __name__ == "__main__":
    main()
