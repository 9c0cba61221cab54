"""Write the smoke profile's bundled sentences: short film-review sentences we wrote, SST-2 style.

SST-2 (GLUE) is one sentence per row with a binary label (0 negative, 1 positive); the full profile
trains on it. These 400 sentences (320 train, 80 test, half of each label) are built from phrases
whose wording carries the sentiment, a few of them negated ("not ... at all"), drawn with a fixed
seed, so a tiny RoBERTa can move its loss in a few dozen steps. Labels are written as the names
``negative`` / ``positive`` (the profile's ``label_names``), so the smoke run maps them to ids.
Run from the repo root:

    python labs/peft-methods/make_smoke_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "smoke"
LABELS = ["negative", "positive"]  # GLUE SST-2's ClassLabel names, ids 0 and 1
SUBJECTS = [
    "the film",
    "the plot",
    "the acting",
    "the script",
    "the ending",
    "the music",
    "the director's cut",
    "the lead actor",
    "the dialogue",
    "this sequel",
    "the camera work",
    "the whole cast",
]
WORDS = [
    ["dull", "clumsy", "tedious", "lifeless", "a mess", "painfully slow", "forgettable", "badly written"],
    ["moving", "sharp", "delightful", "gripping", "a joy", "beautifully shot", "unforgettable", "clever"],
]
NEGATED = [["moving", "clever", "funny"], ["boring", "dull", "bad"]]  # "not X at all" flips the label
ENDINGS = [
    ["I wanted my money back.", "Skip it.", "A waste of two hours."],
    ["I would watch it again.", "Go see it.", "Worth every minute."],
]


def sentence(rng: random.Random, label: int) -> str:
    first, second = rng.sample(SUBJECTS, 2)
    if rng.random() < 0.2:  # negation: the label's sentiment through the other side's words
        return f"{first.capitalize()} was not {rng.choice(NEGATED[label])} at all. {rng.choice(ENDINGS[label])}"
    a, b = rng.sample(WORDS[label], 2)
    return f"{first.capitalize()} is {a}, and {second} is {b}. {rng.choice(ENDINGS[label])}"


def main(per_label: dict[str, int] | None = None) -> None:
    rng = random.Random(2025)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, n in (per_label or {"train": 160, "test": 40}).items():
        rows = [{"sentence": sentence(rng, label), "label": LABELS[label]} for label in (0, 1) for _ in range(n)]
        rng.shuffle(rows)
        with (OUT / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"{split}: {len(rows)} sentences")


if __name__ == "__main__":
    main()
