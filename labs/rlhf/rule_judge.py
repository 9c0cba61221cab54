"""The smoke profile's AI judge: a local OpenAI-compatible server that answers by a fixed rule.

The full profile asks a real chat model (any OpenAI-compatible endpoint) to judge by the principle in
``judge.principle``. The smoke profile has no model to ask, so the lab's replay server
(:class:`labkit.lab.replay.ReplayServer`) answers instead, by the same principle written as code
(:func:`score`): an answer helps when it takes up the words of the question that was asked, gives
a concrete detail (a time, a day, a price, a place, a way to reach someone), and neither dismisses
the asker nor stays vague (short lists of such phrases). It reads the question and the answers
out of the judge's own request (:mod:`judge` writes them between fixed headings), so the client
path is the real one: HTTP, JSON replies, validation, the cache. Before its answers the script
(``data/smoke/judge_script.jsonl``, its first 17 requests) replays what real endpoints do: a reply
that is not JSON, one with the wrong keys, one that names no answer (the first three requests), a 429
and a 500; the judge counts and survives each. Rejected replies are not cached, so a rerun asks those
requests again, first: the replay answers them with the same three faults (a rerun from the cache
labels as the first run did).

It is a stand-in, not a language model: it cannot tell a wrong fact from a right one, and on a tie it
says "A", the position bias real judges have too (the lab shows each pair in a random order).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: Phrases that dismiss the asker, whatever else the answer says.
DISMISSIVE = (
    "no idea",
    "no clue",
    "not a clue",
    "don't know",
    "do not know",
    "ask someone",
    "ask at the desk",
    "look it up",
    "figure it out",
    "not my job",
    "not my problem",
    "why would i know",
    "don't care",
)
#: Phrases that leave the question open.
VAGUE = ("depends", "maybe", "sometimes", "varies", "hard to say", "different every", "changes a lot", "not sure")
#: A concrete detail: a number, a time or day, a price, a place in a street or building, a way to reach someone.
CONCRETE = re.compile(
    r"\d|@|\b((mon|tues|wednes|thurs|fri|satur|sun)days?|noon|midnight|mornings?|evenings?|nights?|o'clock|"
    r"half past|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|francs?|euros?|dollars?|"
    r"road|street|lane|square|row|walk|floor|entrance|door|lift|ramp|lead|call|phone|write|email|book)\b"
)
#: Words too common to show that an answer takes up its question.
STOPWORDS = frozenset(
    "about after also been before being could does doing from have here into just many more most much "
    "need over should some such than that their them then there these they this those very want what "
    "when where which while will with would your yours tell know like please there's what's".split()
)
WORD = re.compile(r"[a-z][a-z']+")


def content_words(text: str) -> set[str]:
    """Lower-case words of 4 letters or more that are not :data:`STOPWORDS`."""
    return {w for w in WORD.findall(text.lower()) if len(w) >= 4 and w not in STOPWORDS}


def last_question(conversation: str) -> str:
    """The last ``Human:`` turn of an HH-style conversation (the whole text when it has none)."""
    turns = re.split(r"\n\nHuman:", "\n\n" + conversation.strip()) if "Human:" in conversation else [conversation]
    return turns[-1].split("\n\nAssistant:")[0].strip()


def relevance(question: str, answer: str) -> float:
    """The share of the question's content words the answer takes up (a word counts when an answer
    word starts with its first five letters or it with the answer word's: ``open`` ~ ``opens``,
    ``closed`` ~ ``close``); 0.5 when the question has none."""
    wanted, said = content_words(question), content_words(answer)
    if not wanted:
        return 0.5
    return sum(any(s.startswith(w[:5]) or w.startswith(s[:5]) for s in said) for w in wanted) / len(wanted)


def score(question: str, answer: str) -> int:
    """The principle as a rule, 0 (useless or dismissive) to 10: 4 points for neither dismissing the
    asker (:data:`DISMISSIVE`) nor staying vague (:data:`VAGUE`), 3 for a concrete detail
    (:data:`CONCRETE`), up to 3 for taking up the question's words (:func:`relevance`)."""
    text = answer.lower()
    polite = not any(phrase in text for phrase in DISMISSIVE + VAGUE)
    return 4 * polite + 3 * bool(CONCRETE.search(text)) + round(3 * relevance(question, answer))


def section(text: str, heading: str, next_heading: str | None) -> str:
    start = text.index(heading) + len(heading)
    end = text.index(next_heading, start) if next_heading else len(text)
    return text[start:end].strip()


def respond(body: dict) -> str:
    """The judge's reply (JSON text) to a request written by :mod:`judge`: a preference between
    "Answer A" and "Answer B", or a score for one "Answer"."""
    from judge import ANSWER, ANSWER_A, ANSWER_B, CONVERSATION, INSTRUCTION

    user = body["messages"][-1]["content"]
    question = last_question(section(user, CONVERSATION, ANSWER_A if ANSWER_A in user else ANSWER))
    if ANSWER_A in user:
        a = score(question, section(user, ANSWER_A, ANSWER_B))
        b = score(question, section(user, ANSWER_B, INSTRUCTION))
        preferred = "B" if b > a else "A"  # a tie goes to A: position bias
        return json.dumps({"preferred": preferred, "reason": f"rule scores A {a}, B {b}"})
    value = score(question, section(user, ANSWER, INSTRUCTION))
    return json.dumps({"score": value, "reason": "rule: question words taken up, minus dismissive phrases"})


def script(path: Path) -> list[dict]:
    """The replay script: ``{"respond": true}`` entries (answered by :func:`respond`) between faults."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
