"""Extractive question answering on SQuAD (course chapter 4): features, labels and answer spans.

Long contexts are split into several features of ``max_length`` tokens that overlap by ``stride``
tokens (``return_overflowing_tokens``), so an answer cut by one window is whole in the next.
``return_offsets_mapping`` links every token back to its characters in the context, which serves
twice: to label each training feature with the answer's start and end token (or the [CLS] token, 0,
when the answer is not wholly inside that feature), and to turn predicted token spans back into
context text after inference. Follows the Hugging Face question-answering notebook that the
course uses.
"""

from __future__ import annotations

import collections

import numpy as np

from labkit.errors import LabError


def is_squad_answers(value) -> bool:
    """SQuAD's ``answers`` of one row: ``{"text": [str, ...], "answer_start": [int >= 0, ...]}``, the
    lists of one length, at least one non-empty answer (SQuAD v1.1: every question has one)."""
    if not isinstance(value, dict):
        return False
    texts, starts = value.get("text"), value.get("answer_start")
    return (
        isinstance(texts, list)
        and isinstance(starts, list)
        and 0 < len(texts) == len(starts)
        and all(isinstance(t, str) and t for t in texts)
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in starts)
    )


def misplaced_answer(context: str, answers: dict) -> str | None:
    """Why an answer is not where ``answer_start`` says (the training labels are cut from
    ``context[answer_start : answer_start + len(text)]``: :func:`prepare_train_features`), else ``None``:
    what the context holds there, and where the text does occur, if anywhere."""
    for text, start in zip(answers["text"], answers["answer_start"], strict=True):
        found = context[start : start + len(text)]
        if found != text:
            at = context.find(text)
            where = f"it occurs at {at}" if at >= 0 else "it does not occur in the context"
            return f"answer {text!r} is not at answer_start {start} (the context has {found!r} there; {where})"
    return None


def truncate_questions(examples: dict, tokenizer, max_question_tokens: int) -> int:
    """Cut questions longer than ``max_question_tokens`` tokens (in place); returns how many were cut.

    A question must leave room for context: without this, a question longer than
    ``max_length - stride`` makes the tokenizer fail to produce overlapping windows.
    """
    cut = 0
    for i, question in enumerate(examples["question"]):
        question = question.lstrip()  # leading spaces in some SQuAD questions waste the window
        enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > max_question_tokens:
            question = question[: enc["offset_mapping"][max_question_tokens - 1][1]]
            cut += 1
        examples["question"][i] = question
    return cut


def check_window(max_length: int, stride: int, max_question_tokens: int) -> None:
    """Raise :class:`LabError` unless a window keeps more than ``stride`` context tokens."""
    room = max_length - max_question_tokens - 3  # [CLS] question [SEP] context [SEP]
    if room <= stride:
        raise LabError(
            f"max_length {max_length} leaves {room} context tokens after a {max_question_tokens}-token "
            f"question, not more than stride {stride}: raise max_length or lower stride / "
            "max_question_tokens"
        )


def tokenize_windows(examples: dict, tokenizer, max_length: int, stride: int):
    """Question + context windows with overflow, offsets and padding to ``max_length``."""
    return tokenizer(
        examples["question"],
        examples["context"],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def prepare_train_features(examples: dict, tokenizer, max_length: int, stride: int) -> dict:
    """Training features: ``input_ids``, ``attention_mask``, ``start_positions``, ``end_positions``.

    A feature whose window does not wholly contain the (first) answer is labelled (0, 0), the [CLS]
    token, meaning "no answer in this window".
    """
    enc = tokenize_windows(examples, tokenizer, max_length, stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    enc["start_positions"], enc["end_positions"] = [], []
    for i, offsets in enumerate(offsets_all):
        answer = examples["answers"][sample_map[i]]
        start_char = answer["answer_start"][0]
        end_char = start_char + len(answer["text"][0])
        sequence_ids = enc.sequence_ids(i)
        context = [k for k, s in enumerate(sequence_ids) if s == 1]
        first, last = context[0], context[-1]
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            enc["start_positions"].append(0)
            enc["end_positions"].append(0)
            continue
        start = first
        while start <= last and offsets[start][0] <= start_char:
            start += 1
        end = last
        while end >= first and offsets[end][1] >= end_char:
            end -= 1
        enc["start_positions"].append(start - 1)
        enc["end_positions"].append(end + 1)
    return enc


def prepare_validation_features(examples: dict, tokenizer, max_length: int, stride: int) -> dict:
    """Inference features: ``example_id`` per feature and offsets kept only for context tokens."""
    enc = tokenize_windows(examples, tokenizer, max_length, stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    enc["example_id"] = []
    for i in range(len(enc["input_ids"])):
        sequence_ids = enc.sequence_ids(i)
        enc["example_id"].append(examples["id"][sample_map[i]])
        enc["offset_mapping"][i] = [o if sequence_ids[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][i])]
    return enc


def postprocess_predictions(
    examples, features, start_logits: np.ndarray, end_logits: np.ndarray, n_best: int = 20, max_answer_length: int = 30
) -> dict[str, str]:
    """Best answer text per example id from the features' start/end logits ``(n_features, max_length)``.

    For each feature the ``n_best`` highest start and end logits are paired; spans outside the
    context, reversed, or longer than ``max_answer_length`` tokens are skipped; the span with the
    highest start + end logit over all of an example's features wins and is cut from the context
    through the offsets. An example with no valid span gets "".
    """
    by_example = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        by_example[example_id].append(i)
    answers = {}
    for example in examples:
        best_score, best_text = None, ""
        for i in by_example[example["id"]]:
            offsets = features[i]["offset_mapping"]
            starts = np.argsort(start_logits[i])[-1 : -n_best - 1 : -1]
            ends = np.argsort(end_logits[i])[-1 : -n_best - 1 : -1]
            for s in starts:
                for e in ends:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = start_logits[i][s] + end_logits[i][e]
                    if best_score is None or score > best_score:
                        best_score, best_text = score, example["context"][offsets[s][0] : offsets[e][1]]
        answers[example["id"]] = best_text
    return answers
