"""Write the lab's second dataset (data/foreign/*.jsonl): English -> Romanian pairs made differently.

``tests/test_labs.py`` runs the smoke profile and the broken override on it (``lab.yaml``
``foreign_data``); ``expected/smoke.yaml``'s checks that hold only on the bundled pairs must SKIP
there and none may fail. The bundled pairs (``make_smoke_data.py``) come from one subject x verb x
object x time grid; these are written by hand, one by one: travel and everyday phrases, questions
and imperatives, of uneven length (two pairs longer than the smoke profile's 64 tokens, so the cut
counts are not 0), 54 training and 12 validation pairs (an uneven last evaluation batch of 4), with
an ``id`` field the lab does not read.

    python labs/deepspeed-zero/make_foreign_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

TRAIN = [
    ("Where is the train station?", "Unde este gara?"),
    ("The museum opens at nine.", "Muzeul se deschide la ora nouă."),
    ("I would like a cup of tea, please.", "Aș dori o ceașcă de ceai, vă rog."),
    ("How much does this ticket cost?", "Cât costă acest bilet?"),
    ("It is raining in Bucharest.", "Plouă în București."),
    ("The river flows through the city.", "Râul curge prin oraș."),
    ("We are going to the mountains in winter.", "Mergem la munte iarna."),
    ("My brother plays the piano.", "Fratele meu cântă la pian."),
    ("The shop is closed on Sunday.", "Magazinul este închis duminica."),
    ("Please speak more slowly.", "Vă rog să vorbiți mai încet."),
    ("The children are playing in the park.", "Copiii se joacă în parc."),
    ("This soup is very hot.", "Această supă este foarte fierbinte."),
    ("Do you have a map of the city?", "Aveți o hartă a orașului?"),
    ("The bus leaves in ten minutes.", "Autobuzul pleacă în zece minute."),
    ("She works at the hospital.", "Ea lucrează la spital."),
    ("The library has many old books.", "Biblioteca are multe cărți vechi."),
    ("We need two rooms for three nights.", "Avem nevoie de două camere pentru trei nopți."),
    ("The sea is calm this morning.", "Marea este liniștită în această dimineață."),
    ("Where can I buy bread?", "De unde pot cumpăra pâine?"),
    ("The concert starts at eight in the evening.", "Concertul începe la ora opt seara."),
    ("My grandparents live in a village.", "Bunicii mei locuiesc într-un sat."),
    ("The cat sleeps on the sofa.", "Pisica doarme pe canapea."),
    ("I forgot my umbrella at home.", "Mi-am uitat umbrela acasă."),
    ("The road to the airport is long.", "Drumul spre aeroport este lung."),
    ("Could you help me, please?", "Mă puteți ajuta, vă rog?"),
    ("The students take an exam today.", "Studenții dau un examen astăzi."),
    ("Our team won the match.", "Echipa noastră a câștigat meciul."),
    ("The flowers in the garden are red.", "Florile din grădină sunt roșii."),
    ("He reads the newspaper every morning.", "El citește ziarul în fiecare dimineață."),
    ("The bridge is very old.", "Podul este foarte vechi."),
    ("I am learning Romanian.", "Învăț limba română."),
    ("The train is late again.", "Trenul întârzie din nou."),
    ("We have dinner at seven.", "Luăm cina la ora șapte."),
    ("The pharmacy is next to the bank.", "Farmacia este lângă bancă."),
    ("It is cold in the north.", "Este frig în nord."),
    ("The church bells ring at noon.", "Clopotele bisericii bat la prânz."),
    ("My phone has no battery left.", "Telefonul meu nu mai are baterie."),
    ("The market sells fresh vegetables.", "Piața vinde legume proaspete."),
    ("Turn left at the next corner.", "Faceți la stânga la următorul colț."),
    ("The film was very interesting.", "Filmul a fost foarte interesant."),
    ("I have lived here for five years.", "Locuiesc aici de cinci ani."),
    ("The water in the lake is cold.", "Apa din lac este rece."),
    ("Where is the nearest pharmacy?", "Unde este cea mai apropiată farmacie?"),
    ("The birds fly south in autumn.", "Păsările zboară spre sud toamna."),
    ("This street is very quiet.", "Această stradă este foarte liniștită."),
    ("The waiter brings the bill.", "Chelnerul aduce nota."),
    ("We visited the castle yesterday.", "Am vizitat castelul ieri."),
    ("The snow covers the hills.", "Zăpada acoperă dealurile."),
    ("My sister is a teacher in Cluj.", "Sora mea este profesoară la Cluj."),
    ("The hotel has a small pool.", "Hotelul are o piscină mică."),
    ("Please close the door.", "Vă rog să închideți ușa."),
    ("The wind is strong today.", "Vântul este puternic astăzi."),
    (
        "Good evening, we booked a table for four people at half past seven, but two of our friends are "
        "late because their train from Constanța was delayed by almost an hour near Medgidia.",
        "Bună seara, am rezervat o masă pentru patru persoane la ora șapte și jumătate, dar doi dintre "
        "prietenii noștri întârzie pentru că trenul lor din Constanța a avut o întârziere de aproape o oră "
        "lângă Medgidia.",
    ),
    ("I will call you tomorrow evening.", "Te voi suna mâine seară."),
]
VALIDATION = [
    ("The post office is across the street.", "Oficiul poștal este vizavi."),
    ("We take the train to Brașov.", "Luăm trenul spre Brașov."),
    ("The coffee is too sweet.", "Cafeaua este prea dulce."),
    ("Where are the toilets?", "Unde sunt toaletele?"),
    ("The sun sets late in summer.", "Soarele apune târziu vara."),
    ("My friend speaks three languages.", "Prietenul meu vorbește trei limbi."),
    ("The taxi is waiting outside.", "Taxiul așteaptă afară."),
    ("The garden needs water.", "Grădina are nevoie de apă."),
    ("They are building a new school.", "Ei construiesc o școală nouă."),
    ("The museum is free on Mondays.", "Muzeul este gratuit lunea."),
    (
        "If you arrive after midnight, ring the bell at the side entrance and the night porter will give you "
        "the key to your room on the third floor.",
        "Dacă ajungeți după miezul nopții, sunați la intrarea laterală și portarul de noapte vă va da cheia "
        "camerei de la etajul trei.",
    ),
    ("I lost my keys.", "Mi-am pierdut cheile."),
]


def main() -> None:
    out = Path(__file__).resolve().parent / "data" / "foreign"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", TRAIN), ("validation", VALIDATION)):
        rows = [{"id": f"{name[0]}{i:02d}", "en": en, "ro": ro} for i, (en, ro) in enumerate(part, 1)]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        print(f"{name}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
