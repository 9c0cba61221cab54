"""Write the lab's second ("foreign") dataset: other Dolly-shaped rows, another balance of categories.

``tests/test_labs.py`` runs the smoke profile on it (``lab.yaml`` ``foreign_data``) to show that the
verdict holds off the bundled path: the checks that count the bundled rows are skipped, the
mechanics checks (the mask, the 4-bit layers, loss falls, the reload) still pass, and
``learning_rate=0`` still fails. So it is made differently from ``make_smoke_data.py`` on purpose:

* other subjects (a harbour, ships, the weather, a workshop), other sentence shapes and lengths;
* other size: 120 training rows (not 256) and 12 held-out rows (not 32);
* another balance: six of Dolly's eight categories, skewed (open_qa 34, brainstorming 26,
  creative_writing 22, closed_qa 18, summarization 12, general_qa 8; no classification and no
  information_extraction), so the held-out rows are not a mirror of the training mix;
* a few responses too long for ``max_length: 256`` (the inverted task's input: cut, counted in
  ``data.lengths.*.inputs_cut``; the completion is never cut), some non-ASCII text (é, –, °).

Deterministic (a fixed seed): rerun from the repo root to regenerate::

    python labs/llama2-sft/make_foreign_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "foreign"
#: Training rows per category (held-out rows: two of each of the six, in another order).
TRAIN = {
    "open_qa": 34,
    "brainstorming": 26,
    "creative_writing": 22,
    "closed_qa": 18,
    "summarization": 12,
    "general_qa": 8,
}
HARBOURS = ["Port Quillan", "Saltmarsh Quay", "Kelpwick", "Ravenhithe", "Tern Point", "Mossbay"]
SHIPS = ["Grey Gull", "Patience", "Lantern Maid", "Northern Rose", "Seaborne Café", "Old Anchor"]
CARGO = ["coal", "oysters", "wool bales", "slate", "barley", "rope", "timber"]
WINDS = ["a north-easterly gale", "a soft westerly", "sea fog", "a sudden squall", "a flat calm"]
KEEPERS = ["Agnes Moll", "Piet Varga", "Rosalind Eke", "Hamid Trask", "Noor Bellweather"]
TOOLS = ["a caulking iron", "a marlinspike", "an adze", "a sail needle", "a brass sextant"]


def open_qa(rng: random.Random) -> dict:
    ship, harbour, cargo = rng.choice(SHIPS), rng.choice(HARBOURS), rng.choice(CARGO)
    if rng.random() < 0.5:
        return {
            "instruction": f"What did the {ship} carry out of {harbour}?",
            "context": "",
            "response": f"The {ship} carried {cargo} out of {harbour}, most weeks between March and October.",
        }
    return {
        "instruction": f"Who keeps the light at {harbour}?",
        "context": "",
        "response": f"{rng.choice(KEEPERS)} keeps the light at {harbour} and logs every ship that passes it.",
    }


def general_qa(rng: random.Random) -> dict:
    wind = rng.choice(WINDS)
    return {
        "instruction": f"Why do small boats stay in harbour during {wind}?",
        "context": "",
        "response": f"During {wind} the sea can turn quickly, and a small boat has little room for mistakes – "
        "so skippers wait, mend nets and listen to the forecast until it passes.",
    }


def brainstorming(rng: random.Random) -> dict:
    harbour = rng.choice(HARBOURS)
    ideas = rng.sample(
        [
            "watch the boats come in at dawn",
            "climb to the lighthouse",
            f"eat {rng.choice(['oysters', 'smoked fish', 'chips'])} on the quay",
            "visit the rope walk",
            "take the ferry across the bay",
            "look for seals on the sandbar",
            "read the old harbour log",
        ],
        rng.randint(3, 5),
    )
    return {
        "instruction": f"List some things to do on a rainy weekend in {harbour}.",
        "context": "",
        "response": "\n".join(f"- {idea.capitalize()}" for idea in ideas),
    }


def creative_writing(rng: random.Random) -> dict:
    ship, wind, harbour = rng.choice(SHIPS), rng.choice(WINDS), rng.choice(HARBOURS)
    lines = [
        f"The {ship} left {harbour} before the tide had turned.",
        f"By noon {wind} had found her, and the crew reefed the mainsail.",
        f"{rng.choice(KEEPERS)} watched from the lamp room and counted the minutes.",
        "At dusk a single light showed off the point, and then a second.",
        "She came home late, salt-white and quiet, with every hand aboard.",
    ]
    if rng.random() < 0.2:  # a long story: the inverted task's input, cut to fit max_length
        lines = lines * rng.randint(6, 8)
    return {
        "instruction": f"Write a short story about the {ship} caught in {wind}.",
        "context": "",
        "response": " ".join(lines),
    }


def passage(rng: random.Random) -> tuple[str, dict]:
    facts = {
        "harbour": rng.choice(HARBOURS),
        "year": rng.randint(1702, 1911),
        "depth": rng.randint(3, 14),
        "tool": rng.choice(TOOLS),
        "temp": rng.randint(4, 19),
        "keeper": rng.choice(KEEPERS),
    }
    text = (
        "The harbour at {harbour} was dredged in {year} to a depth of {depth} metres at low water. "
        "Shipwrights there still work with {tool}, and the water in the basin rarely rises above {temp} °C. "
        "{keeper} kept the harbour log for thirty years."
    ).format(**facts)
    return text, facts


def closed_qa(rng: random.Random) -> dict:
    text, facts = passage(rng)
    return {
        "instruction": f"How deep is the harbour at {facts['harbour']} at low water?",
        "context": text,
        "response": f"{facts['depth']} metres.",
    }


def summarization(rng: random.Random) -> dict:
    text, facts = passage(rng)
    return {
        "instruction": "Summarize this paragraph in a sentence.",
        "context": text,
        "response": f"{facts['harbour']}'s harbour, dredged in {facts['year']}, is {facts['depth']} m deep "
        f"and its shipwrights still use {facts['tool']}.",
    }


MAKERS = {
    "open_qa": open_qa,
    "general_qa": general_qa,
    "brainstorming": brainstorming,
    "creative_writing": creative_writing,
    "closed_qa": closed_qa,
    "summarization": summarization,
}


def main() -> None:
    rng = random.Random(2026)
    OUT.mkdir(parents=True, exist_ok=True)
    train = [{**MAKERS[c](rng), "category": c} for c, n in TRAIN.items() for _ in range(n)]
    rng.shuffle(train)
    test = [{**MAKERS[c](rng), "category": c} for _ in range(2) for c in reversed(TRAIN)]
    for name, rows in (("train", train), ("test", test)):
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    print(f"wrote {len(train)} train and {len(test)} test rows to {OUT}")


if __name__ == "__main__":
    main()
