"""Write the smoke profile's bundled instruction data: our own Dolly-shaped rows, all eight categories.

databricks-dolly-15k rows have ``instruction``, ``context`` (empty for most categories), ``response``
and ``category`` (one of Dolly's eight). These rows are written here from templates about invented
towns, rivers and people, drawn with a fixed seed: none is copied from Dolly. Run from the repo root:

    python labs/llama2-sft/make_smoke_data.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]
from sft import CATEGORIES  # noqa: E402  (Dolly's eight categories)

OUT = Path(__file__).parent / "data" / "smoke"
TOWNS = ["Aldmoor", "Brackenfield", "Cresthaven", "Dunmere", "Elderwick", "Fallowmere", "Glenhollow", "Harrowgate"]
RIVERS = ["Stone Brook", "Willow Run", "Amber River", "Cold Water", "Lark Stream", "Silver Reach"]
CRAFTS = ["weaving", "pottery", "cheese making", "boat building", "glass blowing", "clock making"]
FESTIVALS = ["Lantern Festival", "Harvest Fair", "River Regatta", "Winter Market", "Kite Day"]
PEOPLE = ["Mira Holt", "Tobin Ash", "Lena Voss", "Oren Pike", "Sela Marsh", "Ivo Dunn"]
FRUITS = ["apple", "pear", "plum", "cherry", "quince"]
TOOLS = ["hammer", "saw", "chisel", "plane", "file"]
ANIMALS = ["otter", "heron", "badger", "kestrel", "hare"]


def row(rng: random.Random, category: str) -> dict:
    town, river, craft = rng.choice(TOWNS), rng.choice(RIVERS), rng.choice(CRAFTS)
    fest, person, year = rng.choice(FESTIVALS), rng.choice(PEOPLE), rng.randint(1420, 1890)
    people = rng.randint(2, 40) * 1000
    if category == "open_qa":
        return {
            "instruction": f"What is {town} known for?",
            "context": "",
            "response": f"{town} is known for its {craft} and for the {fest} held every year by the {river}.",
        }
    if category == "general_qa":
        return {
            "instruction": f"Why do towns like {town} grow along rivers such as the {river}?",
            "context": "",
            "response": f"Rivers such as the {river} gave towns like {town} water, fish and a road for trade, "
            f"so markets and crafts like {craft} grew beside them.",
        }
    if category == "classification":
        items = rng.sample(FRUITS, 2) + rng.sample(TOOLS, 2)
        rng.shuffle(items)
        fruits = ", ".join(i for i in items if i in FRUITS)
        tools = ", ".join(i for i in items if i in TOOLS)
        return {
            "instruction": f"Classify each of these as a fruit or a tool: {', '.join(items)}.",
            "context": "",
            "response": f"Fruits: {fruits}. Tools: {tools}.",
        }
    context = (
        f"{town} was founded in {year} on the banks of the {river}. About {people:,} people live there today. "
        f"The town is famous for {craft}, and every year it holds the {fest}. {person} wrote its first history."
    )
    if category == "closed_qa":
        return {
            "instruction": f"When was {town} founded, according to the passage?",
            "context": context,
            "response": f"{town} was founded in {year}.",
        }
    if category == "information_extraction":
        return {
            "instruction": f"Extract the river, the craft and the festival of {town} from the text.",
            "context": context,
            "response": f"River: {river}. Craft: {craft}. Festival: {fest}.",
        }
    if category == "summarization":
        return {
            "instruction": f"Summarize the passage about {town} in one sentence.",
            "context": context,
            "response": f"{town}, founded in {year} by the {river}, is a town of {people:,} known for {craft}.",
        }
    if category == "brainstorming":
        ideas = rng.sample(
            [
                f"a {craft} workshop",
                f"a walk along the {river}",
                f"the {fest}",
                "a museum visit",
                "a picnic",
                f"a talk by {person}",
            ],
            3,
        )
        return {
            "instruction": f"Give me three ideas for a day out in {town}.",
            "context": "",
            "response": f"1. {ideas[0].capitalize()}. 2. {ideas[1].capitalize()}. 3. {ideas[2].capitalize()}.",
        }
    animal = rng.choice(ANIMALS)
    return {  # creative_writing
        "instruction": f"Write a short poem about a {animal} by the {river}.",
        "context": "",
        "response": f"By the {river} the {animal} waits,\nthe water slow, the evening late;\n"
        f"in {town} the lanterns glow,\nand {craft} keeps the old town so.",
    }


def main() -> None:
    rng = random.Random(13)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [{**row(rng, c), "category": c} for _ in range(36) for c in CATEGORIES]  # 288 rows
    rng.shuffle(rows)
    for name, part in (("train", rows[:256]), ("test", rows[256:])):
        with (OUT / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    print(f"wrote {len(rows[:256])} train and {len(rows[256:])} test rows to {OUT}")


if __name__ == "__main__":
    main()
