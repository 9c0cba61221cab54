"""Write the lab's second ("foreign") texts: other articles, calibration sets and held-out text.

``tests/test_labs.py`` runs the smoke profile on them (``lab.yaml`` ``foreign_data``: the profile's
four text sources pointed here) to show that the verdict holds off the bundled path: the checks
tied to the bundled texts are skipped, every mechanics check (saved configs, footprints, GPTQ and
AWQ within a few percent of fp16) still passes, and ``gptq.bits=2`` still fails. So they are made
differently from ``make_smoke_data.py`` on purpose:

- ``data/foreign/articles_train.txt`` (the ``wikitext`` source: the tiny OPT trains on it and
  ``gptq_wikitext`` calibrates on it): natural-history articles about invented birds and mountain
  passes, with other sentence shapes, numbers with units and parentheses; about 70 % of the bundled
  size, in plain paragraphs (no `` = Title = `` headings).
- ``data/foreign/articles_test.txt`` (``eval``): held-out articles of the same kind, blank lines
  between them (kept, as wikitext's test split keeps its blank rows).
- ``data/foreign/weather_calibration.txt`` (``custom``): shipping-forecast lines, another domain.
- ``data/foreign/letters_calibration.txt`` (``pileval``, AWQ's set): short letters, a third text
  (the bundled profile reuses its training text here).

Deterministic (a fixed seed): rerun from the repo root to regenerate::

    python labs/quantization/make_foreign_data.py
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data" / "foreign"
BIRDS = "dusky piper|ridge wren|amber shrike|cinder lark|marsh tanager|pale warbler|stone chat".split("|")
PASSES = "Korran Pass|Veldt Saddle|Ostry Gap|Maren Col|Tallis Notch".split("|")
HABITATS = "scree slopes|alder thickets|reed beds|high meadows|pine forest|river shingle".split("|")
FOODS = "beetles|seeds|berries|spiders|mayflies|snails".split("|")
COLOURS = "slate grey|rust brown|olive|buff|ash white|soot black".split("|")
BIRD_SENTENCES = [
    "The {bird} ({length} cm) breeds in {habitat} between {low} and {high} m above sea level .",
    "Its plumage is {colour} above and paler below ; the bill is short and dark .",
    "Pairs raise {eggs} chicks a year , and both parents feed them on {food} .",
    "In winter most {bird}s move down to {habitat} , and a few reach the coast .",
    "Surveys in {year} counted about {count} pairs , fewer than in the previous decade .",
    "The song is a dry trill , repeated every {secs} seconds from a low perch .",
    "Local names for the {bird} include ' {nick} ' , after its call .",
]
PASS_SENTENCES = [
    "{pass_} crosses the range at {high} m and is closed by snow from {month} to April .",
    "A mule track over {pass_} is first recorded in {year} ; the present road dates from {year2} .",
    "The {bird} and the {bird2} both nest near the summit of {pass_} .",
    "Walkers need about {hours} hours from the valley floor to the top of {pass_} .",
]
NICKS = "chip-chip|tsee|little bell|rattler|whistler".split("|")
MONTHS = "October|November|December".split("|")
SEA_AREAS = "Harl|Outer Fenn|Mossgate|Coldbank|Irra Deep|Southern Sole".split("|")
WINDS = "north|northeast|east|southeast|south|southwest|west|northwest".split("|")
STATES = "smooth|slight|moderate|rough|very rough".split("|")
WEATHER = "fair|rain|showers|fog patches|drizzle later".split("|")
VISIBILITY = "good|moderate|poor|very poor".split("|")
GREETINGS = "Dear Ines|Dear Mr Abara|Dear Tomasz|Hello Ruth|Dear all".split("|")
LETTER_SENTENCES = [
    "Thank you for the parcel , which arrived on {day} in good order .",
    "The garden is full of {food} this year and the ridge wren is back by the gate .",
    "We hope to walk over {pass_} in {month} if the road stays open .",
    "Please send the survey forms by {day} ; we still need {count} more .",
    "My sister sends her regards and asks after the dog .",
    "The meeting has moved to {day} at {hour} o'clock in the village hall .",
]
DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday".split("|")


def fill(rng: random.Random) -> dict:
    low = rng.randint(2, 14) * 100
    bird, bird2 = rng.sample(BIRDS, 2)
    return {
        "bird": bird,
        "bird2": bird2,
        "pass_": rng.choice(PASSES),
        "habitat": rng.choice(HABITATS),
        "food": rng.choice(FOODS),
        "colour": rng.choice(COLOURS),
        "length": rng.randint(9, 24),
        "low": low,
        "high": low + rng.randint(4, 16) * 100,
        "eggs": rng.randint(2, 6),
        "year": rng.randint(1780, 2019),
        "year2": rng.randint(1880, 1990),
        "count": rng.randint(40, 900),
        "secs": rng.randint(2, 9),
        "nick": rng.choice(NICKS),
        "month": rng.choice(MONTHS),
        "hours": rng.randint(2, 7),
        "day": rng.choice(DAYS),
        "hour": rng.randint(1, 9),
    }


def article(rng: random.Random) -> str:
    """One article: two to five paragraphs, one per line, about a bird or a pass."""
    f = fill(rng)
    pool = BIRD_SENTENCES if rng.random() < 0.65 else PASS_SENTENCES + BIRD_SENTENCES[:3]
    paragraphs = [
        " ".join(rng.choice(pool).format(**f) for _ in range(rng.randint(2, 7))) for _ in range(rng.randint(2, 5))
    ]
    return "\n".join(paragraphs)


def forecast(rng: random.Random) -> str:
    a, b = rng.sample(WINDS, 2)
    sea, weather, visibility = (rng.choice(words).capitalize() for words in (STATES, WEATHER, VISIBILITY))
    return (
        f"{rng.choice(SEA_AREAS)} : {a} {rng.randint(3, 5)} to {rng.randint(6, 8)} , backing {b} later . "
        f"{sea} . {weather} . {visibility} ."
    )


def letter(rng: random.Random) -> str:
    f = fill(rng)
    body = " ".join(rng.choice(LETTER_SENTENCES).format(**f) for _ in range(rng.randint(2, 4)))
    return f"{rng.choice(GREETINGS)} , {body} Yours , {rng.choice(['Ada', 'Bram', 'Celia', 'Dov'])}"


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    train = "\n".join(article(rng) for _ in range(80)) + "\n"
    test = "\n\n".join(article(rng) for _ in range(12)) + "\n"
    (HERE / "articles_train.txt").write_text(train, encoding="utf-8")
    (HERE / "articles_test.txt").write_text(test, encoding="utf-8")
    (HERE / "weather_calibration.txt").write_text("\n".join(forecast(rng) for _ in range(90)) + "\n", encoding="utf-8")
    (HERE / "letters_calibration.txt").write_text("\n".join(letter(rng) for _ in range(50)) + "\n", encoding="utf-8")
    for path in sorted(HERE.iterdir()):
        print(f"{path.name}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
