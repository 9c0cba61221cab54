"""Write the lm-foundations lab's second, differently made corpus: ``data/foreign/train.txt`` and ``test.txt``.

Where the bundled corpus (make_smoke_data.py) is template sentences of one grammar, lower-case, this
one is a lighthouse keeper's log: 48 whole sentences written for this lab by its authors (dedicated
to the public domain, CC0 1.0), with capitals, digits, times and punctuation, from 3 to 30 words
long. A log repeats itself, so the training file draws 360 lines from the first 40 sentences with a
skew (a few daily entries very often, most rarely); the held-out file draws 48 lines from all 48, so
a sixth of its lines are sentences training never saw.

    python labs/lm-foundations/make_foreign_data.py
"""

from __future__ import annotations

import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "foreign"

SENTENCES = [
    "Lamp lit at 6 pm.",
    "Lamp out at 7 am.",
    "Wind NW, fresh; sea moderate.",
    "Wind SW, light; sea calm.",
    "Fog from 2 am until noon, horn sounded every 30 seconds.",
    "Trimmed the wicks and polished the lens.",
    "Wound the clockwork of the turning gear twice in the night.",
    "Oil delivered by the supply boat: 40 gallons.",
    "Painted the iron railing on the gallery.",
    "A schooner passed close to the reef at dusk, showing no lights.",
    "Heavy rain all day.",
    "Cleaned the soot from the chimney of the lamp.",
    "Gulls on the gallery again.",
    "The relief keeper arrived with letters and fresh bread.",
    "Storm from the east; the spray reached the lantern room, 90 feet above the sea.",
    "Logged three fishing boats returning before the tide.",
    "Replaced a cracked pane in the lantern.",
    "Calm and clear, stars bright.",
    "Mended the boat's oar.",
    "Whitewashed the tower's base.",
    "The inspector came on Tuesday and found the log in good order.",
    "Ice on the rocks this morning.",
    "Saw a whale spouting to the south.",
    "Ship's bell heard in the fog, but no ship seen.",
    "Lamp lit at 5 pm, early dark.",
    "Carried water up from the cistern.",
    "Wind N, strong; hail at 4 pm.",
    "Checked the fog horn's bellows and greased the valves.",
    "The lens turns once every 20 seconds, as the chart says.",
    "Read by the lamp until the watch was over.",
    "A steamer signalled her thanks with three short blasts.",
    "Fixed the latch of the store room.",
    "Planted potatoes in the sheltered garden behind the keeper's house.",
    "The barometer is falling fast.",
    "Wind backing to the west.",
    "Lamp out at 6 am.",
    "Swept the stairs, 114 steps.",
    "The cat caught a rat in the oil store.",
    "Quiet night.",
    "Wrote to the board asking for a new wick and spare glass.",
    # Only in the held-out file:
    "Thick snow; could not see the reef.",
    "A seal slept on the landing stage all afternoon.",
    "Lamp lit at 7 pm, wind E, light.",
    "The supply boat turned back because of the swell.",
    "Heard gunfire at sea, far off, and logged the hour: 11 pm.",
    "Polished the brass and trimmed the wicks.",
    "Wind S, fresh; rain at night.",
    "Found a bottle on the shore with no message in it.",
]
SEEN = 40


def main() -> None:
    rng = random.Random(1887)
    weights = [1.0 / (1 + i % 13) for i in range(SEEN)]  # a few entries very often, most rarely
    train = rng.choices(SENTENCES[:SEEN], weights=weights, k=360)
    test = rng.choices(SENTENCES, k=48)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train", train), ("test", test)):
        (OUT / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{OUT / name}.txt: {len(lines)} lines")


if __name__ == "__main__":
    main()
