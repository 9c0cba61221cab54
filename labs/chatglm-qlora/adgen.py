"""Step 1 (course chapter 9): AdvertiseGen rows; steps 2-6 are in ``run.py``.

The course builds each example by hand: ``[gMASK] sop`` + the attribute string + the summary +
``eos``, labels -100 on the prompt (``tokenize_func``). Here the prompt is the tokenizer's own chat
template applied to the attribute string (the format the model was tuned to chat in, and the one
generation uses), the summary is tokenized separately and followed by the end-of-text token, and
the mask is exact by construction (``labkit.lab.llm.prompts.tokenize_chat``).

Lengths, as the course's ``max_input_length`` / ``max_output_length``: a summary longer than
``max_output_length`` tokens is cut (counted); an attribute string whose prompt exceeds
``max_input_length`` is cut at a token boundary (counted); a prompt with no room even for an empty
attribute string is an error or a counted drop.
"""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict, load_dataset

from labkit.lab.data import check_texts, load_hub_or_files, subsample

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
        dsd, dropped = load_hub_or_files(cfg, repo_root, ("train", "validation"), COLUMNS, COLUMNS)
    sizes = {"train": cfg["train_samples"], "validation": cfg["eval_samples"]}
    return subsample(dsd, sizes, cfg["shuffle_seed"]), dropped
