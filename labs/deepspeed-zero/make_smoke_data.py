"""Write the smoke profile's English -> Romanian pairs (data/smoke/*.jsonl): ``{"en": ..., "ro": ...}``.

The full profile reads WMT16 ro-en (rows ``{"translation": {"en": ..., "ro": ...}}``, flattened to
these two columns by ``zero.load_pairs``). These are our own: short sentences
from a subject x verb x object x time grid with their Romanian translations, so the tiny model has
a regular mapping to learn. 168 training and 24 validation pairs (disjoint), fixed order.

    python labs/deepspeed-zero/make_smoke_data.py
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

SUBJECTS = [
    ("The boy", "Băiatul"),
    ("The girl", "Fata"),
    ("The teacher", "Profesorul"),
    ("My mother", "Mama mea"),
    ("The doctor", "Doctorul"),
    ("Our neighbour", "Vecinul nostru"),
]
VERBS_OBJECTS = [
    ("reads a book", "citește o carte"),
    ("buys an apple", "cumpără un măr"),
    ("writes a letter", "scrie o scrisoare"),
    ("sees the house", "vede casa"),
    ("opens the window", "deschide fereastra"),
    ("drinks a coffee", "bea o cafea"),
    ("washes the car", "spală mașina"),
    ("finds the key", "găsește cheia"),
]
TIMES = [("today", "astăzi"), ("tomorrow", "mâine"), ("in the morning", "dimineața"), ("every day", "în fiecare zi")]


def pairs() -> list[dict]:
    rows = []
    for (s_en, s_ro), (v_en, v_ro), (t_en, t_ro) in itertools.product(SUBJECTS, VERBS_OBJECTS, TIMES):
        rows.append({"en": f"{s_en} {v_en} {t_en}.", "ro": f"{s_ro} {v_ro} {t_ro}."})
    random.Random(15).shuffle(rows)
    return rows


def main() -> None:
    rows = pairs()
    out = Path(__file__).resolve().parent / "data" / "smoke"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:168]), ("validation", rows[168:192])):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        print(f"{name}: {len(part)} pairs")


if __name__ == "__main__":
    main()
