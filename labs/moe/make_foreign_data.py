"""Write the moe lab's second, differently made text set: ``data/foreign/train.txt`` and ``test.txt``.

Where the bundled smoke set (make_smoke_data.py) is JSON lines of template sentences on four
subjects, this one is plain text in a clockmaker's and bell-founder's notebook style: 36 whole
sentences written for this lab, shuffled into paragraphs of one to five sentences (a skewed mix of
lengths), one paragraph per block of lines, paragraphs separated by a blank line. Some paragraphs
wrap over two lines, as text files do; the lab joins a paragraph's lines with a space. Smaller and
lop-sided where the smoke set is balanced: 48 training paragraphs and 10 held-out ones.

    python labs/moe/make_foreign_data.py
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "foreign"

SENTENCES = [
    "The great clock in the tower loses a minute every week in cold weather.",
    "Brass wheels must be cleaned with a soft brush and never with sand.",
    "A pendulum swings slower when the rod grows long in the summer heat.",
    "The escapement lets the wheels turn one tooth at a time.",
    "Oil the pivots sparingly, for too much oil gathers dust and stops the works.",
    "The bell founder melts copper and tin in a furnace of hard brick.",
    "A bell that is cast too thin will crack in the first frost.",
    "The note of a bell can be lowered by turning metal from its lip.",
    "Sixteen parts of copper to five of tin give the sweetest tone.",
    "The mould is made of loam, horse hair and dung, and dried for a month.",
    "When the metal is poured the whole workshop falls silent.",
    "A watch spring is tempered blue and wound with great care.",
    "The apprentice files the teeth of each wheel by eye and by hand.",
    "Church clocks were once set each noon by the shadow on a sundial.",
    "The striking train counts the hours upon a notched wheel.",
    "A lantern clock hangs on a hook and needs a level wall.",
    "The weights of a long case clock fall six feet in eight days.",
    "Winding a clock too fast can snap the gut line that holds the weight.",
    "Ringers pull the ropes in changes and never ring the same order twice.",
    "The tenor bell is the heaviest and speaks last in every round.",
    "A cracked bell may be welded, but it rarely sings as it did.",
    "Salt air turns brass green within a single winter by the sea.",
    "The best lamp oil comes pressed from rape seed and burns without smoke.",
    "A clockmaker's lathe is turned by a bow of whalebone and cord.",
    "Jewelled bearings were first cut from rubies and sapphires.",
    "The hands of a clock are fitted last, after the chime is set true.",
    "Every tower clock keeps a book in which the keeper writes its errors.",
    "A dropped watch must be opened at once, before the balance is bent further.",
    "The founders sing while the bell cools, to mark the hours of the night.",
    "Frost on the tower stairs makes the winding a slow and careful job.",
    "A clock that ticks unevenly is said to be out of beat.",
    "Moving the clock by a finger's breadth can put it back in beat.",
    "The bell's clapper is hung from a leather baldric that must be renewed.",
    "Chimes are tuned against a fork of steel that never changes pitch.",
    "The keeper climbs one hundred and twelve steps to reach the works.",
    "An honest clock is worth more to a town than a fine gate.",
]
TRAIN, TEST = 48, 10
LENGTHS = (1, 2, 2, 3, 3, 3, 4, 5)  # sentences per paragraph: skewed towards three


def main() -> None:
    rng = random.Random(2024)
    paragraphs, seen = [], set()
    while len(paragraphs) < TRAIN + TEST:
        text = " ".join(rng.sample(SENTENCES, rng.choice(LENGTHS)))
        if text not in seen:
            seen.add(text)
            paragraphs.append(text)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", paragraphs[:TRAIN]), ("test", paragraphs[TRAIN:])):
        blocks = [textwrap.fill(p, width=rng.choice((80, 100, 400))) for p in part]
        (OUT / f"{name}.txt").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    print(f"wrote {TRAIN} + {TEST} paragraphs to {OUT}")


if __name__ == "__main__":
    main()
