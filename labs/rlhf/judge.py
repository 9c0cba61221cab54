"""RLAIF (course chapter 11): an AI judge behind any OpenAI-compatible chat API.

Where RLHF asks people which of two answers is better, RLAIF asks a language model, with a written
principle instead of labeling guidelines (Bai et al. 2022, "Constitutional AI", arXiv:2212.08073;
Lee et al. 2023, "RLAIF", arXiv:2309.00267). The judge here does three jobs:

* :func:`label_pairs`: it labels preference pairs (each shown in a random order, against position
  bias), giving a preference set in the lab's format for a reward model or DPO, and its agreement
  with the human labels;
* :func:`reward_function`: it scores single completions 0-10 as a reward function for
  ``GRPOTrainer`` (the reward model replaced by the judge, as RLAIF's "direct" variant);
* :func:`win_rate`: it compares held-out generations before and after a stage (the DPO paper's
  GPT-4 win rates, Rafailov et al. 2023, sec. 6.2).

The client is chatglm-private-data's (:mod:`labkit.lab.chatapi`): the key from ``OPENAI_API_KEY`` at
run time and never written, 429/5xx retried with backoff, every valid reply cached by the hash of
its request (a re-run pays for nothing twice; a rejected reply is asked again), every reply
validated (:func:`validate_preference`, :func:`validate_score`) and the rejected ones counted by
reason in ``judge_report.json``. TRL's own judges (``trl.judges``) were removed in TRL 1.1; this one
needs nothing from TRL.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import LabError
from labkit.lab.chatapi import ApiCounts, ask, client_for

#: The headings of a judge request (the smoke's rule judge reads the texts back between them).
CONVERSATION = "Conversation so far:\n"
ANSWER_A = "\n\nAnswer A:\n"
ANSWER_B = "\n\nAnswer B:\n"
ANSWER = "\n\nAnswer:\n"
INSTRUCTION = "\n\nInstruction:\n"
PREFER = (
    "Which answer is better under the principle? Reply with one JSON object: "
    '{"preferred": "A" or "B", "reason": "<one sentence>"}.'
)
SCORE = (
    "Rate the answer from 0 (useless or dismissive) to 10 (fully helpful) under the principle. Reply with one "
    'JSON object: {"score": <integer 0-10>, "reason": "<one sentence>"}.'
)
#: Why a judge reply was not used.
REASONS = {
    "not_json": "not a JSON object",
    "schema": "a JSON object without the asked-for key",
    "bad_value": "a value outside the asked-for ones (A/B, or an integer 0-10)",
}


@dataclass
class JudgeReport:
    """What judging cost and gave (``judge_report.json``): the API counters, replies used and rejected
    (by reason), per task."""

    api: ApiCounts = field(default_factory=ApiCounts)
    asked: Counter = field(default_factory=Counter)  # by task: label, score, compare
    rejected: Counter = field(default_factory=Counter)  # by reason
    rejected_by_task: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            **self.api.as_dict(),
            "asked": dict(self.asked),
            "replies_rejected": dict(self.rejected),
            "replies_rejected_by_task": dict(self.rejected_by_task),
        }


def validate_preference(reply: str) -> tuple[str | None, str | None]:
    """``("A" | "B", None)`` for a valid reply, ``(None, reason)`` otherwise (a key of :data:`REASONS`)."""
    try:
        data = json.loads(reply)
    except (TypeError, ValueError):
        return None, "not_json"
    if not isinstance(data, dict) or "preferred" not in data:
        return None, "schema"
    choice = data["preferred"]
    if not isinstance(choice, str) or choice.strip().upper() not in ("A", "B"):
        return None, "bad_value"
    return choice.strip().upper(), None


def validate_score(reply: str) -> tuple[int | None, str | None]:
    """``(0..10, None)`` for a valid reply, ``(None, reason)`` otherwise (a key of :data:`REASONS`)."""
    try:
        data = json.loads(reply)
    except (TypeError, ValueError):
        return None, "not_json"
    if not isinstance(data, dict) or "score" not in data:
        return None, "schema"
    value = data["score"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 0 <= value <= 10:
        return None, "bad_value"
    return int(value), None


class Judge:
    """The judge: ``cfg`` is the profile's ``judge`` section (``model``, ``principle``, ``temperature``,
    ``max_tokens``, ``timeout_s``, ``max_retries``), ``url`` the endpoint, ``cache`` the reply folder.

    Raises:
        LabError: ``OPENAI_API_KEY`` is not set (:func:`labkit.lab.chatapi.client_for`).
    """

    def __init__(self, cfg: dict, url: str | None, cache: Path):
        self.cfg, self.cache = cfg, Path(cache)
        self.report = JudgeReport()
        self.client = client_for(url, cfg["timeout_s"], cfg["max_retries"], self.report.api)

    def _ask(self, task: str, user: str, validate) -> tuple:
        """``validate(reply)`` of the reply to ``user``; a reply it rejects is counted and not cached."""
        self.report.asked[task] += 1
        messages = [{"role": "system", "content": self.cfg["principle"]}, {"role": "user", "content": user}]
        reply = ask(
            self.client,
            self.cfg,
            messages,
            self.cache,
            self.report.api,
            model_setting="judge.model",
            valid=lambda text: validate(text)[1] is None,
        )
        value, why = validate(reply)
        if why:
            self._rejected(task, why)
        return value, why

    def _rejected(self, task: str, reason: str) -> None:
        self.report.rejected[reason] += 1
        self.report.rejected_by_task[task] += 1

    def prefer(self, prompt: str, a: str, b: str, task: str = "label") -> str | None:
        """``"A"`` or ``"B"``: the answer the judge prefers for ``prompt``; ``None`` when its reply is
        rejected (counted)."""
        user = f"{CONVERSATION}{prompt}{ANSWER_A}{a.strip()}{ANSWER_B}{b.strip()}{INSTRUCTION}{PREFER}"
        return self._ask(task, user, validate_preference)[0]

    def score(self, prompt: str, completion: str) -> int | None:
        """0..10 for ``completion`` after ``prompt``; ``None`` when the reply is rejected (counted)."""
        user = f"{CONVERSATION}{prompt}{ANSWER}{completion.strip()}{INSTRUCTION}{SCORE}"
        return self._ask("score", user, validate_score)[0]


def label_pairs(judge: Judge, rows: list[dict], seed: int) -> tuple[list[dict], dict]:
    """The judge's labels for preference ``rows`` (``prompt``, ``chosen``, ``rejected``: the human labels).

    Each pair is shown in a random order (``seed``): half with the human-chosen answer as A. A pair
    whose reply is rejected is left out (counted).

    Returns:
        ``(AI-labelled rows (prompt, chosen, rejected as the judge prefers), summary)``: pairs labelled,
        agreement with the human labels, share of "A" answers (position bias: 0.5 is none), left out.

    Raises:
        LabError: every reply was rejected (names the reasons and what to check).
    """
    rng = random.Random(seed)
    labelled, agree, said_a, left_out = [], 0, 0, 0
    for row in rows:
        human_first = rng.random() < 0.5
        a, b = (row["chosen"], row["rejected"]) if human_first else (row["rejected"], row["chosen"])
        choice = judge.prefer(row["prompt"], a, b, task="label")
        if choice is None:
            left_out += 1
            continue
        said_a += choice == "A"
        agrees = (choice == "A") == human_first
        agree += agrees
        chosen, rejected = (row["chosen"], row["rejected"]) if agrees else (row["rejected"], row["chosen"])
        labelled.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
    n = len(labelled)
    if rows and not n:
        raise LabError(
            f"the judge ({judge.cfg['model']}) gave no usable label for {len(rows)} pair(s): every reply was "
            f"rejected ({dict(judge.report.rejected)}; judge_report.json). Check judge.model, or use a model "
            "that answers with one JSON object"
        )
    return labelled, {
        "pairs": len(rows),
        "labelled": n,
        "left_out": left_out,
        "agreement_with_human_labels": agree / n if n else None,
        "position_a_share": said_a / n if n else None,
    }


def win_rate(judge: Judge, prompts: list[str], before: list[str], after: list[str], seed: int) -> dict:
    """How often the judge prefers ``after`` to ``before`` (the same held-out prompts), each pair in
    a random order; identical answers are ties without asking, ties count 1/2, rejected replies are
    left out (counted).

    Returns:
        ``{"win_rate", "wins", "losses", "ties", "left_out"}`` (``win_rate`` None when nothing was judged).
    """
    rng = random.Random(seed)
    wins = losses = ties = left_out = 0
    for prompt, b, a in zip(prompts, before, after):
        after_first = rng.random() < 0.5
        if a.strip() == b.strip():
            ties += 1
            continue
        choice = judge.prefer(prompt, *((a, b) if after_first else (b, a)), task="compare")
        if choice is None:
            left_out += 1
        elif (choice == "A") == after_first:
            wins += 1
        else:
            losses += 1
    judged = wins + losses + ties
    return {
        "win_rate": (wins + ties / 2) / judged if judged else None,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "left_out": left_out,
    }


def check_rewards(name: str, rewards, n: int) -> list[float | None]:
    """``rewards`` as GRPOTrainer needs them: one float (or ``None``: no reward) per completion.

    Raises:
        LabError: a single number (one value that would be broadcast to the whole batch), a sequence
            of another length, or a value that is not a finite number: one line naming the reward
            function, what it returned and what is needed.
    """
    if hasattr(rewards, "tolist") and not isinstance(rewards, (list, tuple)):
        rewards = rewards.tolist()  # a tensor or an array: its values
    if isinstance(rewards, (int, float)) or not isinstance(rewards, (list, tuple)):
        raise LabError(
            f"reward function {name!r} returned one value ({rewards!r}) for a batch of {n} completions: it would be "
            "given to every completion alike (broadcast), so no completion could be better than another. Return a "
            f"list of {n} rewards, one per completion, in the order of `completions`"
        )
    if len(rewards) != n:
        raise LabError(
            f"reward function {name!r} returned {len(rewards)} reward(s) for {n} completions: return exactly one "
            "per completion, in the order of `completions` (None where there is none)"
        )
    bad = [r for r in rewards if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)))]
    bad += [r for r in rewards if isinstance(r, float) and not math.isfinite(r)]
    if bad:
        raise LabError(f"reward function {name!r} returned {bad[0]!r} among its rewards: each must be a finite number")
    return [None if r is None else float(r) for r in rewards]


def checked(name: str, func: Callable) -> Callable:
    """``func`` as a GRPO reward function whose output is checked (:func:`check_rewards`) on every call."""

    def reward(prompts, completions, **kwargs):
        return check_rewards(name, func(prompts=prompts, completions=completions, **kwargs), len(completions))

    reward.__name__ = name
    return reward


def reward_function(judge: Judge) -> Callable:
    """A GRPO reward function: the judge's 0..10 score of each completion, divided by 10 (0..1);
    ``None`` where the judge's reply is rejected (GRPOTrainer ignores those)."""

    def ai_judge(prompts, completions, **kwargs):
        scores = [judge.score(p, c) for p, c in zip(prompts, completions)]
        return [None if s is None else s / 10 for s in scores]

    return checked("ai_judge", ai_judge)


def endpoint(cfg: dict, repo_root: Path):
    """The judge's endpoint as a context manager giving its URL: ``base_url`` a URL, that endpoint;
    ``null``, ``OPENAI_BASE_URL`` (else OpenAI's); ``replay``, the smoke's rule judge (:mod:`rule_judge`)
    on a local replay server: its script of faults (``judge.replies``) first, then the rule's answers.

    Raises:
        LabError: ``replay`` without its script.
    """
    import contextlib

    if cfg["base_url"] != "replay":
        return contextlib.nullcontext(cfg["base_url"])
    from labkit.lab.replay import ReplayServer

    from rule_judge import respond, script

    path = repo_root / (cfg["replies"] or "")
    if not path.is_file():
        raise LabError(f"judge.replies={cfg['replies']!r}: the replay judge's script is not there")
    os.environ.setdefault("OPENAI_API_KEY", "replay")  # the replay checks a key is sent, not which
    return ReplayServer(script(path), responder=respond, then={"respond": True})
