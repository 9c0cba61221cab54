"""Write the smoke profile's bundled reviews: our own short restaurant and hotel reviews, five star levels.

Each review joins a few sentences whose wording fits its star level, drawn with a fixed seed, so a
tiny BERT can learn the task in a few epochs. Labels are the Yelp Review Full names ("1 star" …
"5 stars"), as strings, so the smoke run exercises the label2id mapping. Run from the repo root:

    python labs/bert-yelp/make_smoke_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "smoke"
LABELS = ["1 star", "2 star", "3 stars", "4 stars", "5 stars"]  # yelp_review_full's ClassLabel names
THINGS = ["the food", "the service", "our waiter", "the room", "the coffee", "the pasta", "the staff", "the price"]
WORDS = [
    ["awful", "disgusting", "rude", "filthy", "the worst I have had"],
    ["disappointing", "bland", "slow", "overpriced", "below average"],
    ["okay", "fine", "average", "acceptable", "nothing special"],
    ["good", "tasty", "friendly", "pleasant", "better than expected"],
    ["amazing", "outstanding", "perfect", "wonderful", "the best in town"],
]
ENDINGS = [
    ["Never again.", "Avoid this place."],
    ["I probably will not return.", "Not worth the money."],
    ["It was an ordinary evening.", "Maybe I will come back."],
    ["I would come back.", "Recommended."],
    ["I cannot wait to come back!", "Highly recommended!"],
]


def review(rng: random.Random, stars: int) -> str:
    things = rng.sample(THINGS, 2)
    first, second = rng.sample(WORDS[stars], 2)
    return f"{things[0].capitalize()} was {first} and {things[1]} was {second}. {rng.choice(ENDINGS[stars])}"


def main(per_label: dict[str, int] | None = None) -> None:
    rng = random.Random(2024)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, n in (per_label or {"train": 24, "test": 8}).items():
        rows = [{"text": review(rng, stars), "label": LABELS[stars]} for stars in range(5) for _ in range(n)]
        rng.shuffle(rows)
        with (OUT / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"{split}: {len(rows)} reviews")


if __name__ == "__main__":
    main()
