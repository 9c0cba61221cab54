"""Write the moe lab's bundled smoke text: ``data/smoke/train.jsonl`` and ``data/smoke/test.jsonl``.

Short passages in the manner of an old almanac and book of country sayings, on four subjects
(weather and seasons, the farm and household, rivers and the sea, the town and its market), so a
router has something to tell apart. Every sentence is assembled here from fragments written for
this lab (no third-party text), deterministically: the same files on every run of this script.
Each line is ``{"text": ..., "topic": ...}``; the lab reads ``text``.

    python labs/moe/make_smoke_data.py     # rewrites the two files (their fingerprint is in expected/smoke.yaml)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "smoke"
TRAIN_PER_TOPIC, TEST_PER_TOPIC = 60, 10

TOPICS = {
    "weather": {
        "subjects": [
            "A red sky at evening",
            "The first frost of the year",
            "A ring about the moon",
            "The west wind in March",
            "A wet and heavy April",
            "The long dry summer",
            "Fog that lies low in the valley",
            "Thunder before the harvest",
        ],
        "verbs": ["promises", "brings", "foretells", "warns of", "is followed by", "makes ready for"],
        "objects": [
            "a clear and quiet morning",
            "rain before the week is out",
            "a hard winter on the hills",
            "late blossom on the apple trees",
            "a poor crop of hay",
            "snow upon the northern road",
            "warm nights and heavy dew",
            "a sudden gale along the coast",
        ],
        "endings": [
            "as the old shepherds say.",
            "or so the almanac tells us.",
            "and the careful farmer marks it well.",
            "though the young seldom believe it.",
            "and the swallows fly low to show it.",
        ],
    },
    "farm": {
        "subjects": [
            "The good wife of the farm",
            "The old plough horse",
            "The miller at the bridge",
            "A patient gardener",
            "The boy who keeps the geese",
            "The dairy maid",
            "The thresher in the barn",
            "A prudent household",
        ],
        "verbs": ["sets aside", "counts out", "carries home", "mends", "stores", "sweeps out"],
        "objects": [
            "the seed corn for spring",
            "the butter and the cheese",
            "a sack of barley meal",
            "the broken gate by the orchard",
            "apples in the cool loft",
            "the dust of the granary",
            "candles against the dark months",
            "wool for the winter coats",
        ],
        "endings": [
            "before the sun is high.",
            "and wastes nothing that can be kept.",
            "for thrift is the mother of plenty.",
            "while the kettle sings on the hearth.",
            "and sleeps well when the work is done.",
        ],
    },
    "sea": {
        "subjects": [
            "The ferryman on the broad river",
            "A fishing boat from the harbour",
            "The keeper of the lighthouse",
            "A barge loaded with timber",
            "The tide along the mud flats",
            "An old sailor on the quay",
            "The river in full flood",
            "A small ship bound for the islands",
        ],
        "verbs": ["waits for", "rides upon", "watches", "carries", "drifts toward", "fights against"],
        "objects": [
            "the turning of the tide",
            "a cargo of salt and rope",
            "the lamps of the distant port",
            "the sandbar at the river mouth",
            "a cold wind off the water",
            "the nets spread out to dry",
            "the bell upon the channel buoy",
            "the grey line of the far shore",
        ],
        "endings": [
            "as the gulls cry overhead.",
            "and no man hurries the sea.",
            "until the moon pulls the water home.",
            "while the rigging creaks in the dark.",
            "for the river keeps its own time.",
        ],
    },
    "town": {
        "subjects": [
            "The baker in the market square",
            "A tinker with his cart",
            "The clerk of the town hall",
            "The innkeeper by the north gate",
            "A weaver from the lower street",
            "The blacksmith at his forge",
            "The market on a Saturday",
            "A pedlar come from the city",
        ],
        "verbs": ["sells", "weighs out", "bargains over", "sets out", "calls his price for", "shows"],
        "objects": [
            "fresh loaves at a penny each",
            "pots and pans and copper kettles",
            "the tax rolls of the parish",
            "a cup of ale to weary travellers",
            "bolts of linen dyed in blue",
            "horseshoes and iron nails",
            "eggs and honey from the farms",
            "ribbons, buttons and printed songs",
        ],
        "endings": [
            "and the whole street hears of it.",
            "before the church bell rings noon.",
            "for an honest weight makes a steady trade.",
            "while the children watch from the steps.",
            "and counts his coins by candlelight.",
        ],
    },
}


def sentence(rng: random.Random, parts: dict) -> str:
    return " ".join(rng.choice(parts[k]) for k in ("subjects", "verbs", "objects", "endings"))


def passages(rng: random.Random, topic: str, n: int) -> list[dict]:
    """``n`` passages of two or three sentences on ``topic``, none repeated."""
    seen, rows = set(), []
    while len(rows) < n:
        text = " ".join(sentence(rng, TOPICS[topic]) for _ in range(rng.choice((2, 3))))
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "topic": topic})
    return rows


def main() -> None:
    rng = random.Random(12)
    train, test = [], []
    for topic in TOPICS:
        rows = passages(rng, topic, TRAIN_PER_TOPIC + TEST_PER_TOPIC)
        train += rows[:TRAIN_PER_TOPIC]
        test += rows[TRAIN_PER_TOPIC:]
    rng.shuffle(train)
    rng.shuffle(test)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"wrote {len(train)} + {len(test)} passages to {OUT}")


if __name__ == "__main__":
    main()
