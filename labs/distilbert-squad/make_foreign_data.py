"""Write the lab's second dataset (``data/foreign/``), made unlike the bundled smoke data.

The bundled questions (``make_smoke_data.py``) are generated from one template: invented towns,
six facts each, every context about 90 tokens. These are written by hand: seven passages on other
subjects (a lighthouse, a ferry, a chess club, a bakery cooperative, an observatory; an orchard and
a tram line for validation) of very different lengths (158 to 642 characters: one 64-token
window to several), 5 to 10 questions each, some answers in a context's last words, and 9 of the
11 validation questions with two or three reference answers, as in SQuAD's validation split. 38
training and 11 validation questions. Run from the repo root (``tests/test_labs.py`` runs the
smoke profile on it through ``lab.yaml`` ``foreign_data``):

    python labs/distilbert-squad/make_foreign_data.py

Raises:
    ValueError: an answer that is not in its passage, or that occurs in it more than once (its
        ``answer_start`` would be ambiguous).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "data" / "foreign"

# (title, context, [(question, [answers, the first one the span the others are variants of])])
TRAIN = [
    (
        "Gull Rock lighthouse",
        "The Gull Rock lighthouse stands on a granite ledge two miles off the northern cape. It was "
        "lit for the first time on 3 March 1874, after six summers of building, because storms stopped "
        "the masons every winter. The tower is 41 metres tall and painted in red and white bands. Its "
        "lamp first burned whale oil, then paraffin from 1902, and it was electrified in 1958. The last "
        "keeper, a former sailor called Agnes Mulder, left the rock in 1987, when the light became "
        "automatic. Today the old keepers' cottage is a small museum reached by boat on calm days, and "
        "the fog signal, silent since 2005, is kept for the tourists.",
        [
            ("When was the Gull Rock lighthouse lit for the first time?", ["3 March 1874"]),
            ("How tall is the tower?", ["41 metres"]),
            ("What did the lamp burn first?", ["whale oil"]),
            ("In which year was the light electrified?", ["1958"]),
            ("Who was the last keeper?", ["Agnes Mulder"]),
            ("Why did the masons stop working every winter?", ["storms"]),
            ("How do visitors reach the museum?", ["by boat on calm days"]),
            ("What is kept for the tourists?", ["the fog signal"]),
            ("Since when has the fog signal been silent?", ["2005"]),
        ],
    ),
    (
        "River ferry",
        "A cable ferry called the Marigold carries cars across the Vell river at Ostby. It holds "
        "eight cars and runs every twenty minutes from dawn until ten at night.",
        [
            ("What is the ferry called?", ["Marigold"]),
            ("Which river does the ferry cross?", ["the Vell river"]),
            ("How many cars does the ferry hold?", ["eight"]),
            ("How often does the ferry run?", ["every twenty minutes"]),
            ("Until when does the ferry run?", ["ten at night"]),
        ],
    ),
    (
        "Chess club",
        "The Knight's Gambit chess club meets on Tuesday evenings in the back room of the public "
        "library. It was founded in 1931 by a schoolteacher, Pavel Novak, with four boards donated by a "
        "local carpenter. The club's best player, Ines Duarte, became a national champion at the age of "
        "seventeen. Members pay twelve euros a year, and beginners are taught on the first Tuesday of "
        "every month.",
        [
            ("When does the chess club meet?", ["Tuesday evenings"]),
            ("Where does the club meet?", ["the back room of the public library"]),
            ("Who founded the chess club?", ["Pavel Novak"]),
            ("Who donated the first boards?", ["a local carpenter"]),
            ("At what age did Ines Duarte become a national champion?", ["seventeen"]),
            ("How much do members pay a year?", ["twelve euros"]),
        ],
    ),
    (
        "Bakery cooperative",
        "Twelve bakers in the valley formed the Rye and Barley cooperative in 2011 so that they could buy "
        "flour together. The cooperative owns a stone mill beside the old railway station, grinds about "
        "three tonnes of grain a week, and sells its sourdough at four markets. Its most famous loaf is "
        "a dark caraway bread baked only on Fridays. The members elect a chair every two years; the "
        "current chair is Tomasz Wierzbicki, who runs the smallest bakery of the twelve. A training "
        "kitchen opened in 2019 teaches apprentices, and each apprentice stays for eighteen months.",
        [
            ("How many bakers formed the cooperative?", ["Twelve"]),
            ("Why did the bakers form the cooperative?", ["so that they could buy flour together"]),
            ("Where is the stone mill?", ["beside the old railway station"]),
            ("How much grain does the mill grind a week?", ["about three tonnes"]),
            ("Which bread is baked only on Fridays?", ["a dark caraway bread"]),
            ("Who is the current chair?", ["Tomasz Wierzbicki"]),
            ("When did the training kitchen open?", ["2019"]),
            ("How long does each apprentice stay?", ["eighteen months"]),
        ],
    ),
    (
        "Mountain observatory",
        "High on Mount Tarrel, at 2,870 metres, an observatory with a single 1.2-metre telescope watches "
        "variable stars. The astronomers sleep in a hut below the dome and drive up a gravel road that "
        "snow closes from November to April. During those months supplies arrive by helicopter. The "
        "telescope's mirror was cast in Jena and polished for two years before it was installed in 1976. "
        "Its best-known discovery is a pulsating star, named Tarrel 7, whose brightness doubles every "
        "nine hours. Students from three universities use the telescope, and on clear nights the "
        "observers measure several hundred stars before the sun rises over the eastern ridge.",
        [
            ("How high is the observatory?", ["2,870 metres"]),
            ("How wide is the telescope?", ["1.2-metre"]),
            ("When is the gravel road closed?", ["from November to April"]),
            ("How do supplies arrive in winter?", ["by helicopter"]),
            ("Where was the mirror cast?", ["Jena"]),
            ("When was the mirror installed?", ["1976"]),
            ("How often does the brightness of Tarrel 7 double?", ["every nine hours"]),
            ("Where does the sun rise?", ["over the eastern ridge"]),
            ("How many universities send students?", ["three"]),
            ("What is the name of the pulsating star?", ["Tarrel 7"]),
        ],
    ),
]

VALIDATION = [
    (
        "Quince orchard",
        "The Hallam family has grown quinces on the south slope above Redmill since 1902. The orchard "
        "has about four hundred trees, and the fruit is picked by hand in late October. Most of the crop "
        "is boiled into a firm paste that is sold in wooden boxes at Christmas.",
        [
            ("Since when have the Hallams grown quinces?", ["1902", "since 1902"]),
            ("How many trees does the orchard have?", ["about four hundred", "four hundred"]),
            ("When is the fruit picked?", ["late October", "in late October"]),
            ("What is most of the crop made into?", ["a firm paste", "firm paste", "paste"]),
            ("How is the paste sold?", ["in wooden boxes", "wooden boxes"]),
        ],
    ),
    (
        "Harbour tram",
        "The harbour tram of Port Selwyn opened in 1911 and still runs on its original narrow track. Its "
        "green cars were built in Glasgow and seat thirty passengers each. The line is four kilometres "
        "long, climbs from the fish market to the cathedral square, and a single ride costs two dollars. "
        "In 1967 the council wanted to replace the trams with buses, but a petition signed by nine "
        "thousand residents saved them. The depot at the top of the hill repairs the cars with parts "
        "made in its own workshop.",
        [
            ("When did the harbour tram open?", ["1911", "in 1911"]),
            ("Where were the cars built?", ["Glasgow", "in Glasgow"]),
            ("How long is the line?", ["four kilometres"]),
            ("How much does a ride cost?", ["two dollars"]),
            ("What saved the trams?", ["a petition signed by nine thousand residents", "a petition"]),
            ("Where are the spare parts made?", ["in its own workshop", "its own workshop"]),
        ],
    ),
]


def rows(passages: list, prefix: str) -> list[dict]:
    """SQuAD-format rows (id, title, context, question, answers{text, answer_start}).

    Raises:
        ValueError: an answer absent from its context or present more than once.
    """
    out = []
    for p, (title, context, questions) in enumerate(passages):
        for q, (question, answers) in enumerate(questions):
            starts = []
            for answer in answers:
                start = context.find(answer)
                if start < 0 or context.find(answer, start + 1) >= 0:
                    raise ValueError(f"{title}: answer {answer!r} must occur exactly once in its context")
                starts.append(start)
            out.append(
                {
                    "id": f"{prefix}-{p}-{q}",
                    "title": title,
                    "context": context,
                    "question": question,
                    "answers": {"text": answers, "answer_start": starts},
                }
            )
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, passages in (("train", TRAIN), ("validation", VALIDATION)):
        data = rows(passages, name)
        (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
        print(f"{OUT / name}.jsonl: {len(data)} questions")


if __name__ == "__main__":
    main()
