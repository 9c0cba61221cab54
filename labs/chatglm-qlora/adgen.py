"""Steps 1-2 (course chapter 9): AdvertiseGen rows, chat-template prompts, the exact loss mask.

The course builds each example by hand: ``[gMASK] sop`` + the attribute string + the summary +
``eos``, labels -100 on the prompt (``tokenize_func``). Here the prompt is the tokenizer's own chat
template applied to the attribute string (the format the model was tuned to chat in, and the one
generation uses), the summary is tokenized separately and followed by the end-of-text token, and
the mask is exact by construction (``labkit.qlora.encode``).

Lengths, as the course's ``max_input_length`` / ``max_output_length``: a summary longer than
``max_output_length`` tokens is cut (counted); an attribute string whose prompt exceeds
``max_input_length`` is cut at a token boundary (counted); a prompt with no room even for an empty
attribute string is an error or a counted drop.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from labkit.data import check_texts, load_hub_or_json, subsample
from labkit.errors import LabError
from labkit.qlora import encode

COLUMNS = ("content", "summary")


def load_adgen(cfg: dict, repo_root: Path) -> tuple[DatasetDict, dict]:
    """``DatasetDict(train, validation)`` of AdvertiseGen rows and ``{split: {column: rows dropped}}``.

    Raises:
        LabError: a missing file or column, or an empty ``content`` or ``summary`` under
            ``bad_text: fail`` (names the file, line and column).
    """
    if cfg["source"] == "hub":
        dsd = DatasetDict()
        dropped = {}
        for split in ("train", "validation"):
            rows = load_dataset(cfg["hub_dataset"], split=split, revision=cfg["hub_revision"])
            dsd[split], counts = check_texts(rows, COLUMNS, cfg["bad_text"], f"{cfg['hub_dataset']} split {split}")
            dropped.update({split: counts} if counts else {})
    else:
        dsd, dropped = load_hub_or_json(cfg, repo_root, ("train", "validation"), COLUMNS, COLUMNS)
    sizes = {"train": cfg["train_samples"], "validation": cfg["eval_samples"]}
    return subsample(dsd, sizes, cfg["shuffle_seed"]), dropped


def chat_prompt(tokenizer, content: str) -> str:
    """The chat template's prompt for one user turn holding ``content``, ready for the reply.

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


def tokenize_rows(rows, tokenizer, max_input: int, max_output: int, policy: str) -> tuple[Dataset, dict]:
    """Rows as ``input_ids`` / ``attention_mask`` / ``labels`` (-100 on the prompt), with counts.

    Returns:
        ``(dataset, {"summaries_cut": n, "contents_cut": n, "dropped_no_room": n})``.

    Raises:
        LabError: under ``bad_text: fail``, a row whose prompt leaves no room (names the row).
    """
    ids, masks, labels = [], [], []
    counts = {"summaries_cut": 0, "contents_cut": 0, "dropped_no_room": 0}
    for i, row in enumerate(rows):
        summary = tokenizer(row["summary"], add_special_tokens=False)["input_ids"]
        if len(summary) > max_output:
            counts["summaries_cut"] += 1
        summary_text = tokenizer.decode(summary[:max_output])
        budget = max_input + len(summary[:max_output]) + 1  # prompt limit + the (cut) summary and its eos
        enc = encode(lambda t: chat_prompt(tokenizer, t), row["content"], summary_text, tokenizer, budget, False)
        if enc is None:
            if policy == "fail":
                raise LabError(
                    f"row {i}: the chat prompt alone exceeds max_input_length={max_input}: raise it, or set "
                    "data.bad_text=drop to drop such rows (counted)."
                )
            counts["dropped_no_room"] += 1
            continue
        counts["contents_cut"] += enc.input_cut
        ids.append(enc.input_ids)
        masks.append([1] * len(enc.input_ids))
        labels.append([t if m else -100 for t, m in zip(enc.input_ids, enc.completion_mask)])
    return Dataset.from_dict({"input_ids": ids, "attention_mask": masks, "labels": labels}), counts
