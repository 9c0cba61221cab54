"""Prompt + completion as token ids with the completion's exact loss mask, and chat-template prompts.

Used by llama2-sft (Alpaca-style prompts through TRL) and the GLM chat labs (the chat template).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from labkit.errors import LabError


@dataclass
class Encoded:
    """A prompt + completion as token ids, the completion's mask, and whether the input was cut."""

    input_ids: list[int]
    completion_mask: list[int]
    input_cut: bool


#: What a decoder writes for bytes that are not a whole UTF-8 character (a cut inside one).
REPLACEMENT = "\ufffd"


def cut_ids(tokenizer, ids: list[int], n: int, text: str) -> list[int]:
    """The first ``n`` of ``ids`` (the tokens of ``text``), ending on a whole character.

    A byte-level tokenizer (GLM-4's, Llama's byte fallback) writes a rare character as several
    tokens; cutting between them would leave part of a character, which decodes as U+FFFD. The cut
    moves back (by up to 8 tokens, to none at all) to the last token that ends a character; where
    none does, or ``text`` itself holds U+FFFD, it stays at ``n``.
    """
    if len(ids) <= n or REPLACEMENT in text:
        return ids[:n]
    for k in range(n, max(n - 9, -1), -1):
        if not tokenizer.decode(ids[:k]).endswith(REPLACEMENT):
            return ids[:k]
    return ids[:n]


def encode(
    render: Callable[[str], str],
    text: str,
    completion: str | list[int],
    tokenizer,
    max_length: int,
    prompt_special_tokens: bool = True,
) -> Encoded | None:
    """Token ids of ``render(text)`` + ``completion`` + EOS and the mask of the completion tokens.

    The prompt and the completion are tokenized **separately** and joined, so the mask falls exactly
    on the completion and its EOS: tokenizing the joined text and searching for a template instead
    misplaces it when the tokenizer merges across the boundary (SentencePiece after a newline).
    ``completion`` is text, or its token ids as they are to be learned (an answer already cut to a
    length: :func:`tokenize_chat`; never decoded and tokenized again).
    ``prompt_special_tokens`` adds the tokenizer's own (Llama's ``<s>``); a chat template that writes
    its special tokens itself wants ``False``. If prompt and completion do not fit ``max_length``,
    ``text`` (the prompt's variable part) is cut at a token boundary that ends a whole character
    (:func:`cut_ids`); the completion never is.

    Returns:
        The encoding, or ``None`` when even an empty ``text`` leaves no room for the completion.
    """
    if isinstance(completion, str):
        completion = tokenizer(completion, add_special_tokens=False)["input_ids"]
    completion_ids = list(completion) + [tokenizer.eos_token_id]

    def prompt_ids(t: str) -> list[int]:
        return tokenizer(render(t), add_special_tokens=prompt_special_tokens)["input_ids"]

    prompt = prompt_ids(text)
    cut = False
    if len(prompt) + len(completion_ids) > max_length:
        room = max_length - len(completion_ids) - len(prompt_ids(""))
        if room < 0:
            return None
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        while True:  # decoding and re-tokenizing can shift a token or two: shrink until it fits
            prompt = prompt_ids(tokenizer.decode(cut_ids(tokenizer, pieces, room, text)))
            if len(prompt) + len(completion_ids) <= max_length or room == 0:
                break
            room -= 1
        if len(prompt) + len(completion_ids) > max_length:
            return None
        cut = True
    return Encoded(prompt + completion_ids, [0] * len(prompt) + [1] * len(completion_ids), cut)


def chat_prompt(tokenizer, content: str) -> str:
    """The tokenizer's chat-template prompt for one user turn holding ``content``, ready for the reply.

    Raises:
        LabError: the tokenizer has no chat template (names the tokenizer and what to do).
    """
    if not tokenizer.chat_template:
        raise LabError(
            f"the tokenizer of {tokenizer.name_or_path} has no chat template: the prompts are written with it. "
            "Use a chat model's tokenizer (GLM-4-9B-chat's has one) or set tokenizer.chat_template."
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def tokenize_chat(rows, columns: tuple[str, str], tokenizer, max_input: int, max_output: int, policy: str):
    """Rows as ``input_ids`` / ``attention_mask`` / ``labels`` for a one-turn chat: the prompt is the
    chat template around ``columns[0]`` (masked with -100), the answer ``columns[1]`` and the
    end-of-text token are the targets (:func:`encode`).

    Lengths as the course's ``max_input_length`` / ``max_output_length``: an answer longer than
    ``max_output`` tokens is cut (counted) on its token ids, at the last token within the limit
    that ends a whole character (:func:`cut_ids`: the target never ends in part of a character and
    never exceeds ``max_output``), a prompt longer than ``max_input`` has its text cut the same way
    (counted), a prompt with no room even for an empty text is an error under ``policy == "fail"``
    or a counted drop.

    Returns:
        ``(datasets.Dataset, {"answers_cut": n, "prompts_cut": n, "dropped_no_room": n})``.

    Raises:
        LabError: a row whose prompt leaves no room, under ``fail`` (names the row).
    """
    from datasets import Dataset

    prompt_col, answer_col = columns
    ids, masks, labels = [], [], []
    counts = {"answers_cut": 0, "prompts_cut": 0, "dropped_no_room": 0}
    for i, row in enumerate(rows):
        answer = tokenizer(row[answer_col], add_special_tokens=False)["input_ids"]
        counts["answers_cut"] += len(answer) > max_output
        answer = cut_ids(tokenizer, answer, max_output, row[answer_col])
        budget = max_input + len(answer) + 1  # the prompt limit, the (cut) answer and its end-of-text
        enc = encode(lambda t: chat_prompt(tokenizer, t), row[prompt_col], answer, tokenizer, budget, False)
        if enc is None:
            if policy == "fail":
                raise LabError(
                    f"row {i}: the chat prompt alone exceeds max_input_length={max_input}: raise it, or set "
                    "data.bad_text=drop to drop such rows (counted)."
                )
            counts["dropped_no_room"] += 1
            continue
        counts["prompts_cut"] += enc.input_cut
        ids.append(enc.input_ids)
        masks.append([1] * len(enc.input_ids))
        labels.append([t if m else -100 for t, m in zip(enc.input_ids, enc.completion_mask)])
    return Dataset.from_dict({"input_ids": ids, "attention_mask": masks, "labels": labels}), counts
