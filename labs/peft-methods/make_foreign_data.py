"""Write the lab's second dataset: 80 opinions on everyday things, written by hand, as CSV.

It differs from the bundled film reviews in every way the loader sees: another domain (kettles,
bicycles, trains, apps, books, repair shops), other wording and lengths (4 to 30 words, some with
commas and quotes, so the CSV quotes fields), another format (CSV with a header ``review,label``,
not JSON lines), another text column name (``review``, not ``sentence``), labels written as ids
(``0`` negative, ``1`` positive) instead of names, a smaller size (60 train + 20 test rows) and an
uneven balance (34 positive / 26 negative in train, 12 / 8 in test). ``lab.yaml`` ``foreign_data``
points the smoke profile at it; the tests run the smoke and the broken override on it.

    python labs/peft-methods/make_foreign_data.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "foreign"

POSITIVE = [
    "The kettle boils in under two minutes and the lid never sticks.",
    "Best bicycle I have owned: light, quiet, and the gears shift like butter.",
    "Friendly staff at the repair shop fixed my phone screen while I waited.",
    "This cookbook actually works. Every recipe I tried came out right the first time.",
    "The night train was on time, the bunks were clean and I slept well.",
    "Great app, simple to use, and it has never crashed on me.",
    "My new boots kept my feet dry through a week of rain.",
    "The library's reading room is calm, bright and full of good chairs.",
    "Solid little radio with a warm sound and a battery that lasts for days.",
    "I love this backpack; the straps are padded and the pockets make sense.",
    "Delivery came a day early and the parcel was packed with care.",
    "A lovely hotel by the harbour, with the kindest receptionist I have met.",
    "The vacuum cleaner is light enough to carry upstairs and picks up everything.",
    "Five stars for the plumber, who came on a Sunday and charged a fair price.",
    "Such a comfortable mattress. My back pain is gone after two weeks.",
    "The museum audio guide was clear, short and genuinely interesting.",
    "Brilliant customer service: they replaced the broken blender without any fuss.",
    "This tent went up in five minutes and stayed dry in a storm.",
    "The bakery down the road makes the best rye bread in town.",
    "Sturdy ladder, easy to fold, and it feels safe at the top.",
    "My tablet's new case fits perfectly and the stand is very handy.",
    "The ferry crossing was smooth and the cafe on board was surprisingly good.",
    "An excellent dictionary app with examples for every word.",
    "The gym is spotless, never crowded in the morning, and the coaches are helpful.",
    "Our new dishwasher is so quiet we forget it is running.",
    "The tailor shortened my trousers perfectly and had them ready the next day.",
    "Wonderful guidebook, accurate maps and honest tips about where to eat.",
    "The electric toothbrush is gentle and the charge lasts two weeks.",
    "Clean buses, polite drivers, and the timetable is finally reliable.",
    "This garden hose does not kink, which is a small miracle.",
    "The headphones are comfortable for hours and the noise cancelling really works.",
    "Fast, cheap and cheerful: the print shop did my posters in an hour.",
    "I am delighted with the rice cooker; perfect rice every single time.",
    "The swimming pool is warm, the lanes are wide and the changing rooms are clean.",
    '"Worth every penny", my father said about the reading lamp, and he is right.',
    "Helpful pharmacist, short queue, and they had the medicine in stock.",
    "The car wash left my old van looking almost new.",
    "Simple, sturdy, beautiful: this wooden chair will outlive me.",
    "The language course is well paced and the teacher makes every lesson fun.",
    "A superb umbrella that survived a windy week on the coast.",
    "Our neighbours recommended this dentist, and she was gentle and thorough.",
    "The coffee grinder is consistent, easy to clean and not too loud.",
    "I would happily stay at this guesthouse again; breakfast was a feast.",
    "The bike lock is heavy but it gives real peace of mind.",
    "Quick refund, polite emails, no arguments. Very good shop.",
    "The sewing machine threads itself and handles thick denim easily.",
]
NEGATIVE = [
    "The kettle leaks from the bottom and the switch broke after a month.",
    "Worst train journey ever: two hours late and no heating in winter.",
    "The app logs me out every day and loses my settings.",
    "My boots split at the seam after one walk in the hills.",
    "Rude staff, dirty tables, and the soup was cold.",
    "The parcel arrived crushed and nobody answered my emails.",
    "This printer jams on every third page and the ink costs a fortune.",
    "The hotel room smelled of smoke and the shower barely worked.",
    "I returned the vacuum cleaner; it lost suction within a week.",
    "The plumber did not turn up, twice, and still sent an invoice.",
    "A flimsy tent that collapsed in the first gust of wind.",
    "The phone case cracked when I dropped it from the sofa.",
    "Terrible customer service: three calls, three different answers.",
    "The gym's machines are broken and the showers are never warm.",
    "This cookbook's recipes are full of mistakes, and the photos lie.",
    "The bus skipped our stop again, and the driver shrugged.",
    "Noisy dishwasher, plates still dirty, and the door squeaks.",
    "The mattress sagged in the middle after only three months.",
    "Overpriced, slow and unhelpful: avoid this repair shop.",
    "The headphones hurt my ears and the left side crackles.",
    "Our order was wrong, then late, then wrong again.",
    "The garden chairs rusted through in a single summer.",
    "I regret buying this blender. It is loud and it burns the motor smell into everything.",
    "The guidebook sent us to restaurants that closed years ago.",
    "Cheap plastic ladder that wobbles on the second step.",
    "The language app repeats the same five words and charges monthly for it.",
    "Do not book this ferry: cancelled without notice and no refund.",
    "The hairdryer overheats and switches itself off after two minutes.",
    "The umbrella turned inside out and snapped on the first windy day.",
    "Disappointing bakery; the bread was stale by lunchtime.",
    "My tablet charger stopped working after a week and the shop refused to swap it.",
    "The museum was crowded, the labels were tiny, and the cafe was closed.",
    "A useless bike lock; the key broke inside it.",
    "The coffee grinder spills grounds everywhere and is painfully loud.",
]


def main() -> None:
    rng = random.Random(7)
    pos, neg = POSITIVE[:], NEGATIVE[:]
    rng.shuffle(pos)
    rng.shuffle(neg)
    splits = {"train": pos[:34] + neg[:26], "test": pos[34:46] + neg[26:34]}
    labels = {text: 1 for text in POSITIVE} | {text: 0 for text in NEGATIVE}
    OUT.mkdir(parents=True, exist_ok=True)
    for split, texts in splits.items():
        rng.shuffle(texts)
        with (OUT / f"{split}.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "label"])
            writer.writerows([text, labels[text]] for text in texts)
        print(f"{split}: {len(texts)} opinions ({sum(labels[t] for t in texts)} positive)")


if __name__ == "__main__":
    main()
